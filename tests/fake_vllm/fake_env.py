"""Builds a throw-away "vLLM environment" around the fake `vllm` (tests/fake_vllm/vllm).

The environment is a venv without pip (its own interpreter, as a real vLLM env has), holding
metadata-only records for vllm and vllm-ascend, so autotune asks *that* interpreter for the
versions exactly as on an NPU host, and stand-ins (tests/fake_vllm/site) for what autotune uses
of the serving interpreter: vLLM's `vllm serve` argument parser and torch_npu's offline
`analyse`. Its bin/ holds stand-ins for CANN's `msprof` and the driver's `npu-smi`
(tests/fake_vllm/bin). Its site-packages also loads the test venv's, so the fake can import
autotune's simulator to write its profiles.
"""

from __future__ import annotations

import json
import shutil
import site
import venv
from pathlib import Path

FAKE = Path(__file__).with_name("vllm")
SITE = Path(__file__).with_name("site")
TOOLS = Path(__file__).with_name("bin")
REPO_DATA = Path(__file__).parents[1] / "data" / "qwen3-32b-w8a8"


def _dist_info(site_dir: Path, name: str, version: str) -> None:
    info = site_dir / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "INSTALLER").write_text("autotune-tests\n", encoding="utf-8")


def _script(source: Path, exe: Path, python: Path) -> None:
    """Install a Python script with the environment's own interpreter in its shebang."""
    body = source.read_text(encoding="utf-8").split("\n", 1)[1]
    exe.write_text(f"#!{python}\n{body}", encoding="utf-8")
    exe.chmod(0o755)


def make_fake_env(
    root: Path,
    *,
    ascend_version: str | None = "0.23.0",
    vllm_version: str = "0.23.0+fake",
    msprof: bool = True,
    npu_smi: bool = True,
    torch_npu: bool = True,
) -> Path:
    """A venv at `root` whose bin/ holds the fake `vllm`; returns that bin directory."""
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(root)
    site_dir = next((root / "lib").glob("python3*/site-packages"))
    own = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (site_dir / "autotune_tests.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in own), encoding="utf-8"
    )
    _dist_info(site_dir, "vllm", vllm_version)
    if ascend_version is not None:
        _dist_info(site_dir, "vllm_ascend", ascend_version)
    shutil.copytree(SITE / "vllm", site_dir / "vllm")
    if torch_npu:
        shutil.copytree(SITE / "torch_npu", site_dir / "torch_npu")
    bin_dir = root / "bin"
    python = bin_dir / "python"
    _script(FAKE, bin_dir / "vllm", python)
    if npu_smi:
        _script(TOOLS / "npu-smi", bin_dir / "npu-smi", python)
    if msprof:
        shutil.copy2(TOOLS / "msprof", bin_dir / "msprof")
    return bin_dir


def make_small_model(directory: Path) -> Path:
    """The Qwen3-32B-W8A8 fixture with 4 layers: a quick profile for the fake to simulate."""
    shutil.copytree(REPO_DATA, directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["num_hidden_layers"] = 4
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory
