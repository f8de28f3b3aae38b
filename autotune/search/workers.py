"""Several workers on one study: joining it, who ran a trial, the study's budget, waiting for a
twin measured elsewhere, the retry of a failed trial, and the study-wide view.

Optuna is the only coordination: the study's trials and attributes are what every worker reads.
A worker keeps its own trials' artifacts in its own run directory and records each finished
trial in the study too (trial attribute `record`), so any worker can answer a duplicate, rank the
best trial and report every trial of the study. Heartbeats and the stale sweep are in
`heartbeat`.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import AutotuneError
from autotune.rundir import TrialRecord
from autotune.search.context import trials_of
from autotune.search.heartbeat import fail_stale
from autotune.search.options import ATTR_ROLE, ATTR_WORKLOAD, ROLE_CONFIRM
from autotune.search.space import SearchSpace
from autotune.workloads.base import Workload

HOST = socket.gethostname()
# Seconds between looks at the study while a worker waits for others (probe, budget, duplicate).
POLL_S = 0.5
# A worker joining a study waits this long for its creator to record the workload.
JOIN_WAIT_S = 60.0
# Polls a trial waits for an earlier running trial to record its effective bytes (it does right
# after it is asked; one that never does was stopped in between).
UNKNOWN_WAIT_POLLS = 50
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
    workers record the heartbeat themselves (`heartbeat.heartbeat`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask(fixed_distributions=dict(fixed))


def join_study(study: Study, study_name: str, workload: Workload, backend: str) -> None:
    """A worker joining a study waits for its creator to record the run, then checks that it runs
    the same workload and backend."""
    deadline = time.monotonic() + JOIN_WAIT_S
    while ATTR_RUN not in study.user_attrs:
        if time.monotonic() > deadline:
            raise AutotuneError(
                f"study {study_name!r} holds no autotune run: its creator recorded no "
                "workload; choose another --study-name"
            )
        time.sleep(POLL_S)
    attrs = study.user_attrs
    theirs = attrs.get(ATTR_WORKLOAD, {})
    mine = asdict(workload)
    differ = [k for k in mine if k in theirs and theirs[k] != mine[k]]
    if differ:
        pairs = ", ".join(f"{k}={theirs[k]!r} (here {mine[k]!r})" for k in differ)
        raise AutotuneError(
            f"study {study_name!r} tunes another workload: {pairs}; "
            "start every worker with the same flags"
        )
    theirs_backend = attrs[ATTR_RUN].get("backend")
    if theirs_backend and theirs_backend != backend:
        raise AutotuneError(f"study {study_name!r} runs --backend {theirs_backend}, not {backend}")


def study_budget(study: Study) -> tuple[int, int, bool]:
    """Measured trials of the study, trials running on any worker, and whether any is queued."""
    # As study.optimize does before each trial: dead workers' trials are failed and queued.
    fail_stale(study)
    trials = trials_of(study)
    measured = sum(1 for t in trials if is_measured(t))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    return measured, running, waiting


def measured_twin(
    study: Study,
    number: int,
    key: tuple[int, ...],
    space: SearchSpace,
    lookup: Callable[[], TrialRecord | None],
) -> TrialRecord | None:
    """What `lookup` finds measured with the same effective bytes as trial `number`, waiting
    while a lower-numbered trial with those bytes runs on another worker (it runs, this one takes
    its result)."""
    polls = 0
    while True:
        found = lookup()
        if found is not None:
            return found
        earlier = [
            t for t in trials_of(study, TrialState.RUNNING, TrialState.WAITING) if t.number < number
        ]
        twin = any(
            t.state == TrialState.RUNNING
            and ATTR_EFFECTIVE in t.user_attrs
            and space.key(t.user_attrs[ATTR_EFFECTIVE]) == key
            for t in earlier
        )
        # A trial asked a moment before this one may not have recorded its bytes yet, and
        # one queued before it is about to be taken; neither is waited for long.
        unknown = polls < UNKNOWN_WAIT_POLLS and any(
            t.state == TrialState.WAITING or ATTR_EFFECTIVE not in t.user_attrs for t in earlier
        )
        if not twin and not unknown:
            return None
        polls += 1
        fail_stale(study)
        time.sleep(POLL_S / 5 if unknown and not twin else POLL_S)


def retried_number(frozen: FrozenTrial) -> int | None:
    """The trial a heartbeat retry replaces (the first of the series), else None."""
    value = frozen.system_attrs.get("failed_trial")
    return int(value) if isinstance(value, int) else None


def queued_again_as(frozen: FrozenTrial) -> int | None:
    """The trial `frozen` runs again: the stale trial a heartbeat retry replaces (the last of
    its retry history), or the one a worker queued again itself (`retry_of`); else None."""
    history = frozen.system_attrs.get("retry_history")
    if isinstance(history, list) and history and isinstance(history[-1], int):
        return history[-1]
    value = frozen.user_attrs.get("retry_of")
    return value if isinstance(value, int) else None


def retry_queued_for(study: Study, number: int) -> FrozenTrial | None:
    """The trial queued to run trial `number` again, if any."""
    return next((t for t in trials_of(study) if queued_again_as(t) == number), None)


def take_retry(study: Study, storage: BaseStorage, retry: FrozenTrial) -> optuna.Trial | None:
    """Take the queued `retry` for this worker, as study.ask takes a queued trial; None when it is
    no longer queued (another worker took it)."""
    if retry.state != TrialState.WAITING:
        return None
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, retry.number)
    try:
        if not storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            return None
    except UpdateFinishedTrialError:
        return None  # taken and finished in the meantime
    return optuna.Trial(study, trial_id)


def is_measured(t: FrozenTrial) -> bool:
    """A finished search trial that ran (not a duplicate answered from another trial, not a
    confirmation)."""
    return (
        t.state == TrialState.COMPLETE
        and t.user_attrs.get(ATTR_DUPLICATE_OF) is None
        and t.user_attrs.get(ATTR_ROLE) != ROLE_CONFIRM
    )


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
