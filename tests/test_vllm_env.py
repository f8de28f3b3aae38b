"""Versions are asked of the interpreter that runs `vllm`, found from its shebang."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fake_vllm.fake_env import make_fake_env

from autotune.errors import AutotuneError
from autotune.workloads.vllm_env import (
    VllmEnv,
    check_env,
    find_vllm,
    interpreter_of,
    query_versions,
)


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_plain_shebang(tmp_path: Path) -> None:
    exe = _script(tmp_path / "vllm", f"#!{sys.executable}\nprint('x')\n")
    assert interpreter_of(exe) == Path(sys.executable)


def test_pip_long_path_shebang(tmp_path: Path) -> None:
    # pip writes this when the interpreter's path is too long for a "#!" line.
    exe = _script(
        tmp_path / "vllm",
        f"#!/bin/sh\n'''exec' '{sys.executable}' \"$0\" \"$@\"\n' '''\nprint('x')\n",
    )
    assert interpreter_of(exe) == Path(sys.executable)


def test_env_shebang_and_python_beside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python3"
    python.symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    exe = _script(bin_dir / "vllm", "#!/usr/bin/env python3\n")
    assert interpreter_of(exe) == python
    other = _script(bin_dir / "vllm-wrapper", "#!/bin/sh\nexec true\n")
    assert interpreter_of(other) == python  # the python beside it


def test_no_interpreter_is_one_line(tmp_path: Path) -> None:
    exe = _script(tmp_path / "vllm", "#!/bin/sh\nexit 0\n")
    with pytest.raises(AutotuneError, match="cannot tell which Python runs"):
        interpreter_of(exe)


def test_find_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = _script(tmp_path / "vllm", "#!/bin/sh\n")
    assert find_vllm(str(tmp_path)) == exe  # a bin directory will do
    assert find_vllm(str(exe)) == exe
    with pytest.raises(AutotuneError, match="--vllm /nonexistent: no executable vllm"):
        find_vllm("/nonexistent")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AutotuneError, match=r"vllm is not on PATH.*--vllm PATH"):
        find_vllm(None)


def test_versions_come_from_the_vllm_env_not_ours(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env")
    env = query_versions(bin_dir / "vllm")
    assert env.python == bin_dir / "python"
    assert (env.vllm_version, env.ascend_version) == ("0.23.0+fake", "0.23.0")
    assert check_env(env) == "0.23.0"


def test_check_env_messages() -> None:
    exe, py = Path("/x/bin/vllm"), Path("/x/bin/python")
    with pytest.raises(AutotuneError, match=r"0\.22\.1 .* older than 0\.23"):
        check_env(VllmEnv(exe, py, "0.22.0", "0.22.1"))
    with pytest.raises(AutotuneError, match="not installed in the environment of /x/bin/vllm"):
        check_env(VllmEnv(exe, py, "0.23.0", None))
    assert check_env(VllmEnv(exe, py, "0.23.0", "0.23.1rc1")) == "0.23.1rc1"


def test_the_vllm_version_is_checked_too() -> None:
    # vllm-ascend 0.23 runs with the vLLM 0.23 it is built against; another vLLM only
    # with an explicit override (before, any vLLM passed).
    exe, py = Path("/x/bin/vllm"), Path("/x/bin/python")
    for vllm in ("0.27.1+cpu", None):
        with pytest.raises(AutotuneError, match=r"tested against vLLM 0\.23\.x.*--allow-any-vllm"):
            check_env(VllmEnv(exe, py, vllm, "0.23.0"))
    assert check_env(VllmEnv(exe, py, "0.27.1+cpu", "0.23.0"), allow_any_vllm=True) == "0.23.0"
    # The override never lets a vllm-ascend without the feature through.
    with pytest.raises(AutotuneError, match=r"removed after 0\.23"):
        check_env(VllmEnv(exe, py, "0.24.0", "0.24.0"), allow_any_vllm=True)
