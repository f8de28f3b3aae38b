"""Several workers on one study: who ran a trial, heartbeats, stale trials, the study-wide view.

Optuna is the only coordination: the study's trials and attributes are what every worker reads.
A worker keeps its own trials' artifacts in its own run directory and records each finished
trial in the study too (trial attribute `record`), so any worker can answer a duplicate, rank the
best trial and report every trial of the study.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autotune.rundir import TrialRecord

HOST = socket.gethostname()
# Seconds between looks at the study while a worker waits for others (probe, budget, duplicate).
POLL_S = 0.5
# Trial attributes.
ATTR_HOST = "host"
ATTR_WORKER = "worker"
ATTR_RECORD = "record"
ATTR_DUPLICATE_OF = "duplicate_of"
ATTR_EFFECTIVE = "effective_bytes"
# Study attribute: run.json of the worker that created the study, without the storage URL.
ATTR_RUN = "run"


def worker_id() -> str:
    """This process as the study names it: host and process id."""
    return f"{HOST}:{os.getpid()}"


def quiet_ask(study: Study, fixed: Mapping[str, Any]) -> optuna.Trial:
    """study.ask, without Optuna's warning that heartbeats are meant for study.optimize: the
    workers record the heartbeat themselves (`heartbeat`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask(fixed_distributions=dict(fixed))


def heartbeat_interval(storage: BaseStorage | None) -> int | None:
    if isinstance(storage, RDBStorage):
        interval = storage.get_heartbeat_interval()
        return int(interval) if interval is not None else None
    return None


@contextmanager
def heartbeat(storage: BaseStorage | None, study: Study, number: int) -> Iterator[None]:
    """Record the trial's heartbeat until the block ends, when the storage has heartbeats on.

    The first beat is recorded before the block starts: Optuna never fails a trial without one.
    """
    interval = heartbeat_interval(storage)
    if interval is None or not isinstance(storage, RDBStorage):
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a lost connection: the next beat tries again
                continue

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: Study) -> None:
    """Fail the trials of workers whose heartbeat stopped; the storage's callback queues them
    again (RetryHeartbeatStaleTrialCallback). Nothing happens without heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retried_number(frozen: FrozenTrial) -> int | None:
    """The trial a heartbeat retry replaces (the first of the series), else None."""
    value = frozen.system_attrs.get("failed_trial")
    return int(value) if isinstance(value, int) else None


def is_measured(t: FrozenTrial) -> bool:
    """A finished trial that ran (not a duplicate answered from another trial)."""
    return t.state == TrialState.COMPLETE and t.user_attrs.get(ATTR_DUPLICATE_OF) is None


def study_records(
    trials: Sequence[FrozenTrial], local: Mapping[int, TrialRecord]
) -> list[TrialRecord]:
    """Every finished trial of the study as a record; this worker's own records win (they know
    where its artifacts are). Another worker's files are not here, so their paths are dropped."""
    out: dict[int, TrialRecord] = {}
    for t in trials:
        data = t.user_attrs.get(ATTR_RECORD)
        if t.number in local or not isinstance(data, dict):
            continue
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL):
            continue
        record = TrialRecord.from_json(data)
        record.profile = None
        record.bench_files = []
        record.logs = []
        if t.state == TrialState.FAIL and record.state != "failed":
            record.state = "failed"
            record.error = record.error or "failed by the study"
        out[t.number] = record
    out.update(local)
    return [out[n] for n in sorted(out)]
