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
from typing import IO

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
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
def _started(
    cmds: list[list[str]], stderr: IO[str] | None = None
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start every command in its own process group; kill and reap whatever is left at the end.
    Their stderr goes to pipes, or to `stderr` (a file the test reads while they run)."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for cmd in cmds:
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr or subprocess.PIPE,
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
    assert all(d["state"] != "running" for local in by_worker for d in local.values())
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


def _retry_of(t: FrozenTrial) -> int | None:
    """The trial a heartbeat retry replaces directly (Optuna's retry history), else None."""
    history = t.system_attrs.get("retry_history")
    return int(history[-1]) if isinstance(history, list) and history else None


def _running_record(out: Path) -> int | None:
    """The trial a worker is measuring: its trial.json says running (written before it starts)."""
    for number, data in _local_trials(out).items():
        if data["state"] == "running":
            return number
    return None


def test_a_paused_worker_keeps_its_measurement_of_a_trial_failed_under_it(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A worker stalled past its heartbeat's grace (a frozen VM, an overloaded host: SIGSTOP here)
    has its trial failed by the other worker's stale sweep, which runs the retry. Woken, the
    first worker finishes measuring: it keeps that measurement in its own record (not a second
    trial of the study), says so, and goes on to the end of the budget."""
    outs = [tmp_path / "host0", tmp_path / "host1"]
    budget = 7
    name = "paused"
    with _started([_worker(out, pg_url, name, budget, 2.0) for out in outs]) as procs:
        sleeper, other = procs
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        lapsed = None
        while lapsed is None and time.monotonic() < deadline:
            assert sleeper.poll() is None, "the first worker ended before it measured a trial"
            lapsed = _running_record(outs[0])
            time.sleep(0.05)
        assert lapsed is not None, "the first worker never measured a trial"
        os.killpg(sleeper.pid, signal.SIGSTOP)
        try:
            # Silent for 3 heartbeats, its trial is failed by the other worker, which takes the
            # retry; only then does the first one wake.
            taken = None
            while taken is None and time.monotonic() < deadline:
                study = optuna.load_study(study_name=name, storage=pg_url)
                trials = study.get_trials()
                retries = [t for t in trials if _retry_of(t) == lapsed]
                if trials[lapsed].state == TrialState.FAIL and retries:
                    taken = retries[0].number if retries[0].state != TrialState.WAITING else None
                time.sleep(0.2)
            assert taken is not None, "the stalled trial was never failed and retried"
        finally:
            os.killpg(sleeper.pid, signal.SIGCONT)
        out, err = sleeper.communicate(timeout=WORKER_TIMEOUT_S)
        assert sleeper.returncode == 0, err
        assert "Traceback" not in err, err
        _finish(other)
    study = optuna.load_study(study_name=name, storage=pg_url)
    trials = study.get_trials()
    assert trials[lapsed].state == TrialState.FAIL
    retry = trials[taken]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"] == f"{socket.gethostname()}:{other.pid}"
    _check_study(study, outs, budget)
    # The worker kept what it measured, marked as failed by the study, and said so.
    kept = _local_trials(outs[0])[lapsed]
    assert kept["state"] == "failed"
    assert kept["throughput"] is not None and kept["bench_files"]
    assert f"trial {taken}" in kept["error"] and "heartbeat" in kept["error"]
    assert f"trial {lapsed}" in err and "heartbeat" in err, err
    assert json.loads(out)["trials"]["measured"] >= budget


# A database that refuses one trial's heartbeats, as one that has lost a worker's writes would.
REFUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION refuse_heartbeat() RETURNS trigger LANGUAGE plpgsql
AS $$ BEGIN RAISE EXCEPTION 'heartbeat refused by the test'; END $$
"""
REFUSE_TRIGGER = """
CREATE TRIGGER refuse_heartbeat BEFORE INSERT OR UPDATE ON trial_heartbeats
FOR EACH ROW WHEN (NEW.trial_id = {trial_id}) EXECUTE FUNCTION refuse_heartbeat()
"""


@contextlib.contextmanager
def _refuse_heartbeats(url: str, study_name: str, number: int) -> Iterator[None]:
    """The database refuses every heartbeat of one trial until the block ends."""
    storage = RDBStorage(url)
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    storage.remove_session()
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(REFUSE_FUNCTION))
            conn.execute(sqlalchemy.text(REFUSE_TRIGGER.format(trial_id=trial_id)))
        yield
    finally:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("DROP TRIGGER refuse_heartbeat ON trial_heartbeats"))
        engine.dispose()


def _sweep_until_failed(url: str, study_name: str, number: int, deadline: float) -> None:
    """What any other worker does before it takes a trial: fail the trials whose heartbeat is
    older than 3 intervals (1 s here) and queue them again."""
    storage = RDBStorage(
        url,
        heartbeat_interval=1,
        grace_period=3,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
    )
    study = optuna.load_study(study_name=study_name, storage=storage)
    while study.trials[number].state != TrialState.FAIL:
        assert time.monotonic() < deadline, f"trial {number} never went stale"
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.2)
    storage.remove_session()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_whose_heartbeat_is_refused_answers_the_retry_with_its_measurement(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The database refuses a worker's heartbeats: the worker says so on stderr. A stale sweep
    (the test, as a second worker would) fails its trial and queues the retry while it measures;
    the worker keeps its measurement in its own record and, the retry being still queued, takes
    it and answers it with that measurement: the config is measured once, and nothing is left
    running."""
    out = tmp_path / "host0"
    log = tmp_path / "host0.stderr"
    budget = 3
    name = "refused"
    with (
        log.open("w") as err_file,
        _started([_worker(out, pg_url, name, budget, 4.0)], stderr=err_file) as (proc,),
    ):
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        lapsed = None
        while lapsed is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            lapsed = _running_record(out)
            time.sleep(0.05)
        assert lapsed is not None, "the worker never measured a trial"
        with _refuse_heartbeats(pg_url, name, lapsed):
            # The next beat (1 s) is refused; the worker says so (checked below).
            refused = time.monotonic()
            while "its heartbeat could not be recorded" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                if time.monotonic() - refused > 3.0:
                    break
                time.sleep(0.1)
            # Stopped until the sweep has failed the trial, so that it cannot finish first.
            os.killpg(proc.pid, signal.SIGSTOP)
            try:
                _sweep_until_failed(pg_url, name, lapsed, deadline)
            finally:
                os.killpg(proc.pid, signal.SIGCONT)
            out_text, _ = proc.communicate(timeout=WORKER_TIMEOUT_S)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert f"trial {lapsed}: its heartbeat could not be recorded" in err, err
    assert "heartbeat refused by the test" in err, err
    study = optuna.load_study(study_name=name, storage=pg_url)
    trials = study.get_trials()
    assert trials[lapsed].state == TrialState.FAIL
    (retry,) = [t for t in trials if _retry_of(t) == lapsed]
    assert f"its retry, trial {retry.number}, takes this measurement" in err, err
    _check_study(study, [out], budget)
    # The retry holds the measurement made under the failed trial: measured once, by this worker.
    local = _local_trials(out)
    kept, answer = local[lapsed], local[retry.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"] == f"{socket.gethostname()}:{proc.pid}"
    assert retry.value == kept["throughput"] == answer["throughput"]
    assert kept["state"] == "failed" and "heartbeat" in kept["error"]
    assert answer["state"] == "complete"
    assert answer["bench_files"] == kept["bench_files"]
    assert all(f.startswith(f"trials/{lapsed:03d}/") for f in answer["bench_files"])
    assert not list((out / "trials" / f"{retry.number:03d}").glob("bench_*"))
    assert json.loads(out_text)["trials"]["measured"] == budget
