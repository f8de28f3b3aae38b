"""`autotune run` as a user drives it, through real processes on the simulator: a run directory
that is copied, moved, interrupted with SIGINT and resumed keeps its own study, its budget and
consistent trial numbers; files follow the umask; logs get one line per trial."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune.rundir import load_run
from autotune.workloads.base import Workload
from autotune.workloads.simulate import simulate_throughput

MODEL = ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72"]
# One profiled step keeps a simulated trial well under a second.
FAST = ["--backend", "simulate", "--profile-steps", "1"]


def autotune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own process group, as a user would, and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )


def study_numbers(run: Path) -> list[int]:
    """Numbers of the finished (complete) trials in the run's own study.db."""
    name = json.loads((run / "run.json").read_text())["study_name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run / 'study.db'}")
    done = (optuna.trial.TrialState.COMPLETE,)
    return sorted(t.number for t in study.get_trials(deepcopy=False, states=done))


def disk_numbers(run: Path) -> list[int]:
    return sorted(int(p.parent.name) for p in (run / "trials").glob("*/trial.json"))


def csv_numbers(run: Path) -> list[int]:
    with (run / "trials.csv").open() as fh:
        return sorted(int(row["trial"]) for row in csv.DictReader(fh))


def assert_numbers_agree(run: Path) -> None:
    finished = [t.number for t in load_run(run).trials if t.state in ("complete", "duplicate")]
    assert study_numbers(run) == finished
    assert disk_numbers(run) == csv_numbers(run)
    assert set(finished) <= set(disk_numbers(run))


def measured(run: Path) -> int:
    return int(json.loads((run / "summary.json").read_text())["trials"]["measured"])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_copied_and_moved_runs_resume_their_own_study(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = autotune("run", *MODEL, *FAST, "--trials", "5", "--out", str(run))
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "run.json").read_text())["storage"] == "study.db"
    original = (run / "study.db").read_bytes()

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(run), str(copy)], check=True)
    resumed = autotune("run", "--resume", "--out", str(copy), "--trials", "7")
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "study.db").read_bytes() == original, "the copy wrote into the original study"
    assert measured(copy) == 7
    assert_numbers_agree(copy)
    assert_numbers_agree(run)

    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    resumed = autotune("run", "--resume", "--out", str(moved), "--trials", "6")
    assert resumed.returncode == 0, resumed.stderr
    assert measured(moved) == 6
    assert_numbers_agree(moved)

    # A study that holds trials this directory does not (here: the copy's, with 7 trials)
    # is refused in one line, and nothing in the directory changes.
    shutil.copy2(copy / "study.db", moved / "study.db")
    before = snapshot(moved)
    refused = autotune("run", "--resume", "--out", str(moved), "--trials", "9")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "does not match" in lines[0] and "trial 6 is in the study but not in trials/" in lines[0]
    assert snapshot(moved) == before


def test_sigint_reports_and_resume_continues_to_the_budget(tmp_path: Path) -> None:
    # Default --out (runs/… under the working directory), stdout a pipe as in a log.
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "run", *MODEL, *FAST, "--trials", "14"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        umask=0o002,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("runs/*/trials/004/trial.json")):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (run,) = list((tmp_path / "runs").iterdir())
    rel = Path("runs") / run.name

    # The workload, then the run directory, come before the first trial.
    lines = out.splitlines()
    assert lines[0].startswith("workload   Qwen3-32B-W8A8 TP4 EP1, max-num-seqs 72, flashcomm1 on")
    # The simulator's default: the vendor recipe's graph mode and batched tokens.
    assert "graph FULL_DECODE_ONLY (VLLM_COMPILE, npugraph_ex), 1024 in / 512 out" in lines[0]
    assert lines[0].endswith("max-num-batched-tokens 40960")
    assert lines[1].startswith("backend    simulate (SIMULATED), hardware 910B2")
    assert lines[2].startswith("profiles   realistic: ")
    assert lines[3] == f"run directory: {rel}"
    # Without a terminal: one plain line per finished trial, in order.
    trial_lines = [line for line in lines if line.startswith("SIMULATED trial ")]
    finished = [t for t in load_run(run).trials if t.state != "failed"]
    assert len(trial_lines) == len(finished) >= 4
    first = trial_lines[0]
    # In the recipe's graph mode only the attention sites are searched.
    assert first.startswith("SIMULATED trial 0 baseline: MiB qkv/o 0/0; ")
    assert (
        "throughput " in first and "late sites: none" in first and "best so far: trial 0" in first
    )
    late = trial_lines[1].split("late sites: ")[1].split(";")[0].split(", ")
    assert "attn.o" in late  # the vendor default is late
    assert "late = median slack below 0 µs, ends after its window (tolerance 0 µs)" in lines

    # What was measured is written and marked unfinished; the exact resume command is printed.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is False and summary["stopped"] == "interrupted"
    report = (run / "report.html").read_text()
    assert "unfinished: interrupted; continue it with autotune run --resume --out" in report
    assert f"stopped after {measured(run)} measured trials" in err
    command = next(line for line in err.splitlines() if line.startswith("resume with: "))
    assert command == f"resume with: autotune run --resume --out {rel}"

    # Files follow the umask (0o002 here: group-writable, not 0600).
    for path in [run / "report.html", run / "study.db", *run.glob("*.json"), run / "trials.csv"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    for path in run.glob("trials/*/*.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path

    # export of an unfinished simulated run: the config alone on stdout, one note on stderr.
    exported = autotune("export", str(rel), cwd=tmp_path)
    assert exported.returncode == 0
    assert json.loads(exported.stdout) == json.loads((run / "best_config.json").read_text())
    note = exported.stderr.strip().splitlines()
    assert len(note) == 1 and "SIMULATED" in note[0] and "has not finished" in note[0]

    # The printed command, run as is, continues to the recorded budget of 14.
    args = shlex.split(command.removeprefix("resume with: "))
    assert args[0] == "autotune"
    resumed = autotune(*args[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert measured(run) == 14
    # Its log shows the whole study, the trials measured before the interruption included.
    shown = [line for line in resumed.stdout.splitlines() if line.startswith("SIMULATED trial ")]
    assert shown[: len(trial_lines)] == trial_lines
    assert len(shown) == len(load_run(run).trials)
    assert json.loads((run / "summary.json").read_text())["finished"] is True
    assert_numbers_agree(run)

    # --trials on resume sets a new total, kept for the next resume.
    resumed = autotune("run", "--resume", "--out", str(rel), "--trials", "16", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert measured(run) == 16
    assert json.loads((run / "run.json").read_text())["options"]["trials"] == 16
    resumed = autotune("run", "--resume", "--out", str(rel), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert measured(run) == 16
    assert_numbers_agree(run)


def test_resume_keeps_explicit_storage_as_given(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    run = tmp_path / "run"
    done = autotune("run", *MODEL, *FAST, "--trials", "3", "--out", str(run),
                    "--storage", f"sqlite:///{db}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "run.json").read_text())["storage"] == f"sqlite:///{db}"
    assert not (run / "study.db").exists()
    moved = tmp_path / "moved"
    shutil.move(str(run), str(moved))
    resumed = autotune("run", "--resume", "--out", str(moved), "--trials", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert measured(moved) == 4
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()
    assert count == 4


def test_resume_refuses_a_study_that_differs_from_trials_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = autotune("run", *MODEL, *FAST, "--trials", "3", "--out", str(run))
    assert done.returncode == 0, done.stderr
    path = run / "trials" / "002" / "trial.json"
    data = json.loads(path.read_text())
    data["effective_bytes"]["attn.qkv"] += 1
    path.write_text(json.dumps(data))
    before = snapshot(run)
    refused = autotune("run", "--resume", "--out", str(run), "--trials", "4")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "trial 2 differs between the study and trials/" in refused.stderr
    assert snapshot(run) == before


def test_resume_measures_with_the_recorded_simulator_noise(tmp_path: Path) -> None:
    # Noise 0 makes every simulated bench equal the noiseless model, so a resume that fell back
    # to the default noise (1 %) would show in its new trial.
    run = tmp_path / "run"
    first = autotune("run", *MODEL, *FAST, "--trials", "3", "--noise", "0", "--out", str(run))
    assert first.returncode == 0, first.stderr
    assert json.loads((run / "run.json").read_text())["simulator"] == {"noise": 0.0, "ideal": False}
    again = autotune("run", "--resume", "--out", str(run), "--trials", "4")
    assert again.returncode == 0, again.stderr
    trial = json.loads((run / "trials" / "003" / "trial.json").read_text())
    w = Workload(**json.loads((run / "run.json").read_text())["workload"])
    assert trial["throughput"] == pytest.approx(simulate_throughput(w, trial["config"]), rel=1e-9)


def test_an_unexpected_error_in_a_trial_leaves_it_failed_not_running(tmp_path: Path) -> None:
    # A file where the next trial's folder goes: writing the trial fails with an OSError the run
    # does not expect. The error surfaces, but the study holds the trial failed, with its reason.
    run = tmp_path / "run"
    done = autotune("run", *MODEL, *FAST, "--trials", "3", "--out", str(run))
    assert done.returncode == 0, done.stderr
    name = json.loads((run / "run.json").read_text())["study_name"]
    storage = f"sqlite:///{run / 'study.db'}"
    following = len(optuna.load_study(study_name=name, storage=storage).trials)
    (run / "trials" / f"{following:03d}").write_text("not a folder")
    resumed = autotune("run", "--resume", "--out", str(run), "--trials", "4")
    assert resumed.returncode not in (0, 2), resumed.stderr
    assert "FileExistsError" in resumed.stderr
    study = optuna.load_study(study_name=name, storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states.values(), states
    trial = study.trials[following]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert "unexpected error: FileExistsError" in trial.user_attrs["error"]
    # Nothing measured before is lost, and a resume once the folder is free goes on.
    (run / "trials" / f"{following:03d}").unlink()
    again = autotune("run", "--resume", "--out", str(run), "--trials", "4")
    assert again.returncode == 0, again.stderr
    assert measured(run) == 4
    assert_numbers_agree(run)
