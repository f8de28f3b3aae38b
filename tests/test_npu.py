"""NPU memory: read from `npu-smi info`, waited for only where npu-smi exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autotune.workloads import npu

INFO = Path(__file__).parent / "data" / "npu-smi" / "info_910b.txt"


def test_hbm_is_summed_over_chips_without_hugepages() -> None:
    assert npu.hbm_used_mb(INFO.read_text()) == 3161 + 52000
    assert npu.hbm_used_mb("no npu here") is None


def test_without_npu_smi_nothing_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert npu.read_hbm_mb() is None
    assert npu.wait_memory_back(npu.read_hbm_mb()) == ""


def test_waits_until_memory_is_back_or_says_it_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in npu-smi on PATH that prints the fixture (the NPU it describes is not here).
    smi = tmp_path / "npu-smi"
    smi.write_text(f"#!/bin/sh\ncat {INFO}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert npu.read_hbm_mb() == 55161
    assert npu.wait_memory_back(55161 - npu.SLACK_MB) == ""
    warning = npu.wait_memory_back(1000, wait_s=0.01)
    assert "did not come back" in warning and "55161 MB in use" in warning
