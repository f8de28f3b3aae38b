"""Heartbeats of a worker's running trial, and the sweep that fails trials whose heartbeat stopped.

Only an RDB storage opened with `--heartbeat` has them (journal storage does not): after the
storage's grace period without a beat, another worker's sweep fails the trial and queues it again.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import Study


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
