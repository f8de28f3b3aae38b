"""bench/search_efficiency.py's case options: bad input is one line and exit code 2, before any
work starts; the held-out hardware file loads as its comment says."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.hardware import PRESETS, load_hardware

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "search_efficiency.py"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--methods", "vendor", "--seeds", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cases", "tests/data/qwen3-8b-w8a8"], "expected MODEL:SEQS"),
        (["--cases", "tests/data/qwen3-8b-w8a8:many"], "expected MODEL:SEQS"),
        (["--cases", "tests/data/no-such-model:96"], "no-such-model"),
        (["--cases", "Qwen3-32B-W8A8:72", "--hardware", "no-such.toml"], "no-such.toml"),
        (["--cases", "Qwen3-32B-W8A8:72", "--hardware", "910X"], "unknown hardware '910X'"),
        (["--cases", "Qwen3-32B-W8A8:72", "--tp", "1"], "--tp 2 or more"),
    ],
)
def test_a_bad_case_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = _bench(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("search_efficiency: ")
    assert message in lines[0]


def test_hardware_and_a_hardware_family_exclude_each_other() -> None:
    proc = _bench("--hardware", "910B4", "--hardware-family", "2")
    assert proc.returncode == 2
    assert "--hardware and --hardware-family exclude each other" in proc.stderr


def test_the_held_out_hardware_raises_only_the_fixed_costs() -> None:
    hw = load_hardware(ROOT / "bench" / "heldout_fixed_cost.toml")
    base = PRESETS["910B2"]
    assert (hw.t_sync_us, hw.t0_cmo_us) == (4.0, 2.0)
    assert (base.t_sync_us, base.t0_cmo_us) == (1.5, 0.5)
    assert hw == dataclasses.replace(base, name=hw.name, t_sync_us=4.0, t0_cmo_us=2.0)
