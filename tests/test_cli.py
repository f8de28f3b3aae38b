"""CLI wiring: help and --version work, and errors are one clean line with exit code 2.

The `autotune run` cases run the real command in a subprocess on the simulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune import __version__
from autotune.cli import app

runner = CliRunner()
SIM = ("--backend", "simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72")


def autotune(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`autotune ARGS` as a user runs it: its own process, its own process group."""
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"} if env is None else env,
        cwd=cwd,
        start_new_session=True,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr)
    assert "Traceback" not in result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error: …` line of a refused command (exit 2, no traceback, nothing on stdout)."""
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "analyze" in result.output


def test_version() -> None:
    result = autotune("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"autotune {__version__}\n"


def test_out_naming_an_existing_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    db = tmp_path / "shared.db"
    for more in ((), ("--storage", f"sqlite:///{db}")):
        line = one_error_line(autotune("run", *SIM, "--trials", "3", "--out", str(out), *more))
        assert f"--out {out} is a file, not a directory" in line
        # Nothing was written: the file is untouched and no study was created.
        assert out.read_text() == "mine\n"
        assert not db.exists()
    line = one_error_line(autotune("run", "--resume", "--out", str(out)))
    assert f"--out {out} is a file" in line


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--profile-steps", "0", "--profile-steps must be a positive integer, got 0"),
        ("--output-len", "1", "--output-len must be at least 2"),
    ],
)
def test_errors_name_flags_as_typed(tmp_path: Path, flag: str, value: str, says: str) -> None:
    line = one_error_line(autotune("run", *SIM, "--out", str(tmp_path / "r"), flag, value))
    assert says in line
    assert not (tmp_path / "r").exists()


def test_resume_with_fewer_trials_than_measured_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = autotune("run", *SIM, "--trials", "4", "--out", str(out), "--json")
    assert first.returncode == 0, first.stderr
    run_json = (out / "run.json").read_text()
    measured = json.loads(first.stdout)["trials"]["measured"]
    assert measured == 4
    line = one_error_line(autotune("run", "--resume", "--out", str(out), "--trials", "3"))
    assert "--resume --trials 3" in line and "already measured 4 trials" in line
    assert "give 4 or more" in line
    assert (out / "run.json").read_text() == run_json  # the recorded budget is unchanged
    same = autotune("run", "--resume", "--out", str(out), "--trials", "4", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["trials"]["measured"] == 4


def test_every_recorded_reason_survives_a_resume(tmp_path: Path) -> None:
    """Why each best_config.json key is there is what the run first recorded, after any resume."""
    cases = {
        # Your own key: no "you asked for --flashcomm1" after the resume.
        "own": (("--additional-config", '{"enable_flashcomm1": true}'), "from your"),
        # The simulator's default deployment.
        "sim": ((), "the simulator models the vendor's Qwen3-Dense recipe"),
    }
    for name, (more, reason) in cases.items():
        out = tmp_path / name
        first = autotune("run", *SIM, "--trials", "3", "--out", str(out), *more)
        assert first.returncode == 0, first.stderr
        before = json.loads((out / "summary.json").read_text())
        assert before["best_config_keys"]["enable_flashcomm1"].startswith(reason)
        again = autotune("run", "--resume", "--out", str(out), "--trials", "4")
        assert again.returncode == 0, again.stderr
        after = json.loads((out / "summary.json").read_text())
        assert after["trials"]["measured"] == 4
        why = before["best_config_keys"]["enable_flashcomm1"]
        assert after["best_config_keys"]["enable_flashcomm1"] == why
        assert (after["inert_sites"], after["probe_note"]) == (
            before["inert_sites"],
            before["probe_note"],
        )
        # The terminal's end says the same.
        assert "you asked for --flashcomm1" not in again.stdout
        assert f"enable_flashcomm1: {why}" in again.stdout
