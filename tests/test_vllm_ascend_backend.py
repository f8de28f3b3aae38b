"""The vllm-ascend backend refuses cleanly on a machine that cannot run it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.workloads.base import Workload
from autotune.workloads.vllm_ascend import VllmAscendBackend

W = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72)


def test_check_without_vllm_on_path_names_the_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AutotuneError, match="--backend simulate") as info:
        VllmAscendBackend(W).check()
    assert "\n" not in str(info.value)


def test_check_with_vllm_but_no_vllm_ascend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ.get("PATH", ""))
    with pytest.raises(AutotuneError, match=r"vllm-ascend.*--backend simulate"):
        VllmAscendBackend(W).check()


def test_run_says_the_launcher_is_not_available(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="launcher is not available"):
        VllmAscendBackend(W).run({}, tmp_path, repeats=1, profile=True)
