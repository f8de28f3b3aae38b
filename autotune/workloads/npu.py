"""Waiting for NPU memory to come back after a server stops (only where `npu-smi` exists).

vllm-ascend frees device memory some seconds after its processes exit; the next trial's server
would otherwise start with less HBM than the one before.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

# Slack over the idle usage measured before the trial, and how long to wait for it.
SLACK_MB = 2048
WAIT_S = 120.0
POLL_S = 2.0

# A chip row of `npu-smi info`: it carries the Bus-Id, and its last "used / total" is HBM (MB).
_CHIP_ROW = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d")
_PAIR = re.compile(r"(\d+)\s*/\s*(\d+)")


def hbm_used_mb(text: str) -> int | None:
    """Total HBM in use (MB) over the chips in `npu-smi info` output; None if none is shown."""
    total = None
    for line in text.splitlines():
        if not _CHIP_ROW.search(line):
            continue
        pairs = _PAIR.findall(line)
        if pairs:
            total = (total or 0) + int(pairs[-1][0])
    return total


@dataclass(frozen=True)
class Device:
    """One NPU device (chip) of `npu-smi info`, numbered as ASCEND_RT_VISIBLE_DEVICES counts."""

    index: int
    used_mb: int
    total_mb: int


def devices(text: str) -> list[Device]:
    """The devices of `npu-smi info` output, in its order, with their HBM use (MB)."""
    out: list[Device] = []
    for line in text.splitlines():
        if not _CHIP_ROW.search(line):
            continue
        pairs = _PAIR.findall(line)
        if pairs:
            used, total = pairs[-1]
            out.append(Device(len(out), int(used), int(total)))
    return out


def read_hbm_mb() -> int | None:
    """HBM in use now, or None without `npu-smi` (or when it cannot be read)."""
    exe = shutil.which("npu-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "info"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return hbm_used_mb(done.stdout) if done.returncode == 0 else None


def wait_memory_back(idle_mb: int | None, *, wait_s: float = WAIT_S) -> str:
    """Wait until HBM use is back within SLACK_MB of `idle_mb`; "" when it is, else a warning."""
    if idle_mb is None:
        return ""
    deadline = time.monotonic() + wait_s
    used = read_hbm_mb()
    while used is not None and used > idle_mb + SLACK_MB:
        if time.monotonic() >= deadline:
            return (
                f"NPU memory did not come back within {wait_s:g} s: {used} MB in use, "
                f"{idle_mb} MB before the trial"
            )
        time.sleep(POLL_S)
        used = read_hbm_mb()
    return ""
