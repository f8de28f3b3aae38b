"""Several `autotune run` workers on one study: PostgreSQL (with a worker killed mid-trial) and a
journal file. Each worker is a real process in its own process group; the PostgreSQL server is
the throw-away one of test_storage_postgres. Trials are SIMULATED and made to last about a second
(`--sim-trial-seconds`) so the workers overlap as they would on NPU hosts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from test_storage_postgres import pg_url  # noqa: F401  (the module's PostgreSQL fixture)
from typer.testing import CliRunner

from autotune.cli import app

runner = CliRunner()

RUN = ["run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--backend", "simulate"]
WORKER_TIMEOUT_S = 300.0


def _worker(out: Path, storage: str, study: str, trials: int, trial_s: float) -> list[str]:
    return [
        sys.executable, "-m", "autotune", *RUN, "--trials", str(trials), "--storage", storage,
        "--study-name", study, "--out", str(out), "--keep-profiles", "all", "--json",
        "--heartbeat", "1", "--sim-trial-seconds", str(trial_s),
    ]  # fmt: skip


@contextlib.contextmanager
def _started(cmds: list[list[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start every command in its own process group; kill and reap whatever is left at the end."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for cmd in cmds:
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 0, err
    return out


def _local_trials(out: Path) -> dict[int, dict[str, object]]:
    """The trial records a worker's run directory holds, by number."""
    found = {}
    for path in sorted((out / "trials").glob("*/trial.json")):
        data = json.loads(path.read_text())
        found[int(data["number"])] = data
    return found


def _key(t: FrozenTrial) -> str:
    return json.dumps(t.user_attrs["effective_bytes"], sort_keys=True)


def _measured(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [
        t for t in trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]


def _within_budget(measured: int, budget: int) -> None:
    """The study's budget is met; workers that found room at the same instant may each add one
    (README: several hosts on one study)."""
    assert budget <= measured <= budget + 2, measured


def _check_study(study: optuna.Study, outs: list[Path], budget: int) -> None:
    trials = study.get_trials()
    by_worker = [_local_trials(out) for out in outs]
    # Every trial of the study is in exactly one worker's run directory, with its artifacts.
    numbers = [n for local in by_worker for n in local]
    assert sorted(numbers) == [t.number for t in trials], "a trial is missing or in two dirs"
    assert all(t.state != TrialState.RUNNING for t in trials)
    measured = _measured(trials)
    _within_budget(len(measured), budget)
    assert len({_key(t) for t in measured}) == len(measured), "an effective config ran twice"
    roles = [t.user_attrs["role"] for t in measured]
    assert roles.count("baseline") == roles.count("default") == roles.count("seed") == 1
    for out, local in zip(outs, by_worker, strict=True):
        for number, data in local.items():
            assert data["host"] == socket.gethostname()
            assert study.trials[number].user_attrs["host"] == socket.gethostname()
            if data["state"] != "complete":
                continue
            assert (out / "trials" / f"{number:03d}" / "config.json").is_file()
            assert data["bench_files"] and all((out / f).is_file() for f in data["bench_files"])
            assert data["profile"] and (out / str(data["profile"])).is_dir()


def _exports(outs: list[Path], storage: str, study: str) -> set[str]:
    cmds = [[sys.executable, "-m", "autotune", "export", str(out)] for out in outs]
    cmds.append([sys.executable, "-m", "autotune", "export", "--storage", storage,
                 "--study-name", study])  # fmt: skip
    printed = set()
    for cmd in cmds:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        printed.add(done.stdout)
    return printed


def _three_workers(tmp_path: Path, storage: str, study: str) -> None:
    outs = [tmp_path / f"host{k}" for k in range(3)]
    budget = 9
    with _started([_worker(out, storage, study, budget, 1.0) for out in outs]) as procs:
        summaries = [json.loads(_finish(p)) for p in procs]
    loaded = optuna.load_study(
        study_name=study,
        storage=storage
        if not storage.startswith("journal:")
        else optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(storage.removeprefix("journal:"))
        ),
    )
    _check_study(loaded, outs, budget)
    # Each worker ran some of the trials; every summary counts the whole study.
    assert all(_local_trials(out) for out in outs), "a worker ran nothing"
    assert all(s["trials"]["measured"] >= budget for s in summaries)
    printed = _exports(outs, storage, study)
    assert len(printed) == 1, printed
    assert "weight_prefetch_config" in printed.pop()
    # The report on any worker, or from the study alone, lists every trial of the study.
    html = tmp_path / "study.html"
    for args in (
        [str(outs[1])],
        ["--storage", storage, "--study-name", study, "--html", str(html)],
    ):
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 0, result.output
        page = Path(result.output.strip()).read_text()
        shown = {int(n) for n in re.findall(r"data-trial='(\d+)'", page)}
        assert shown == {t.number for t in loaded.get_trials()}
        assert "SIMULATED" in page


def test_three_workers_share_one_postgres_study(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    _three_workers(tmp_path, pg_url, "three")


def test_three_workers_share_one_journal_file(tmp_path: Path) -> None:
    _three_workers(tmp_path, f"journal:{tmp_path / 'study.log'}", "three")


def test_a_killed_worker_loses_nothing(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    outs = [tmp_path / f"host{k}" for k in range(3)]
    budget = 8
    study_name = "killed"
    with _started([_worker(out, pg_url, study_name, budget, 2.0) for out in outs]) as procs:
        victim = procs[0]
        tag = f"{socket.gethostname()}:{victim.pid}"
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        killed: int | None = None
        while killed is None and time.monotonic() < deadline:
            with contextlib.suppress(KeyError):
                study = optuna.load_study(study_name=study_name, storage=pg_url)
                for t in study.get_trials(states=(TrialState.RUNNING,)):
                    # The victim has taken this trial and is measuring it (2 s per trial).
                    if t.user_attrs.get("worker") == tag:
                        os.killpg(victim.pid, signal.SIGKILL)
                        killed = t.number
                        break
            time.sleep(0.3)
        assert killed is not None, "the first worker never ran a trial"
        victim.communicate()
        assert victim.returncode == -signal.SIGKILL
        for proc in procs[1:]:
            _finish(proc)
    study = optuna.load_study(study_name=study_name, storage=pg_url)
    trials = study.get_trials()
    dead = trials[killed]
    assert dead.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == dead.params and retry.user_attrs["role"] == dead.user_attrs["role"]
    survivors = {f"{socket.gethostname()}:{p.pid}" for p in procs[1:]}
    assert retry.user_attrs["worker"] in survivors
    assert all(t.state != TrialState.RUNNING for t in trials)
    measured = _measured(trials)
    _within_budget(len(measured), budget)
    assert len({_key(t) for t in measured}) == len(measured), "an effective config ran twice"


def test_a_worker_with_other_flags_is_refused(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    first = [*RUN, "--trials", "2", "--storage", storage, "--study-name", "s"]
    result = runner.invoke(app, [*first, "--out", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    other = [*first, "--max-num-seqs", "64", "--out", str(tmp_path / "b")]
    result = runner.invoke(app, other)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "max_num_seqs=72" in lines[0], result.output
    assert not (tmp_path / "b").exists()


def test_bad_journal_path_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    storage = f"journal:{tmp_path / 'missing' / 'study.log'}"
    result = runner.invoke(app, [*RUN, "--storage", storage, "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--storage" in lines[0] and "does not exist" in lines[0]
    assert not out.exists()


def test_ctrl_c_on_a_worker_hands_its_trial_to_another(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    outs = [tmp_path / "host0", tmp_path / "host1"]
    budget = 6
    with _started([_worker(out, storage, "stopped", budget, 2.0) for out in outs]) as procs:
        victim = procs[0]
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        stopped: int | None = None
        while stopped is None and time.monotonic() < deadline:
            for path in (outs[0] / "trials").glob("*/trial.json"):
                data = json.loads(path.read_text())
                if data["state"] == "running":
                    os.killpg(victim.pid, signal.SIGINT)
                    stopped = int(data["number"])
                    break
            time.sleep(0.2)
        assert stopped is not None, "the first worker never ran a trial"
        _, err = victim.communicate(timeout=WORKER_TIMEOUT_S)
        assert victim.returncode == 130, err
        _finish(procs[1])
    backend = optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
    study = optuna.load_study(study_name="stopped", storage=optuna.storages.JournalStorage(backend))
    trials = study.get_trials()
    assert trials[stopped].state == TrialState.FAIL
    assert (
        json.loads((outs[0] / "trials" / f"{stopped:03d}" / "trial.json").read_text())["error"]
        == "interrupted"
    )
    retry = [t for t in trials if t.user_attrs.get("retry_of") == stopped]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].number in _local_trials(outs[1])
    assert all(t.state not in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    _within_budget(len(_measured(trials)), budget)
