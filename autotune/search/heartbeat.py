"""Heartbeats of a worker's running trial, and the sweep that fails trials whose heartbeat stopped.

Only an RDB storage opened with `--heartbeat` has them (journal storage does not). A beat that
cannot be recorded is logged, and the thread tries again at the next one: after the storage's
grace period without any, another worker's sweep fails the trial and queues it again.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import Study

log = logging.getLogger(__name__)


def heartbeat_interval(storage: BaseStorage | None) -> int | None:
    if isinstance(storage, RDBStorage):
        interval = storage.get_heartbeat_interval()
        return int(interval) if interval is not None else None
    return None


class _Beats:
    """Records one trial's heartbeat and logs when it cannot (once per run of failures)."""

    def __init__(self, storage: RDBStorage, study: Study, number: int, interval: int) -> None:
        self.storage = storage
        self.study = study
        self.number = number
        self.interval = interval
        self.trial_id: int | None = None
        self.missed = 0

    def beat(self) -> None:
        try:
            if self.trial_id is None:
                study_id = self.storage.get_study_id_from_name(self.study.study_name)
                self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                    study_id, self.number
                )
            self.storage.record_heartbeat(self.trial_id)
        except Exception as exc:  # the storage's own errors: a lost connection, a refused write
            self.missed += 1
            if self.missed == 1:
                log.warning(
                    "warning: trial %d: its heartbeat could not be recorded (%s); trying again "
                    "every %d s. Without one for %d s another worker fails this trial and runs it "
                    "again",
                    self.number,
                    _first_line(exc),
                    self.interval,
                    _grace_s(self.storage),
                )
            return
        if self.missed:
            log.warning(
                "warning: trial %d: heartbeat recorded again after %d missed",
                self.number,
                self.missed,
            )
            self.missed = 0


@contextmanager
def heartbeat(storage: BaseStorage | None, study: Study, number: int) -> Iterator[None]:
    """Record the trial's heartbeat until the block ends, when the storage has heartbeats on.

    The first beat is recorded before the block starts: Optuna never fails a trial without one.
    """
    interval = heartbeat_interval(storage)
    if interval is None or not isinstance(storage, RDBStorage):
        yield
        return
    beats = _Beats(storage, study, number, interval)
    beats.beat()
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            beats.beat()

    thread = threading.Thread(target=run, name=f"heartbeat-{number}", daemon=True)
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


def _grace_s(storage: RDBStorage) -> int:
    interval = storage.get_heartbeat_interval() or 0
    return int(storage.grace_period or 2 * interval)


def _first_line(exc: BaseException) -> str:
    """The first line of the error's root cause (Optuna wraps the database's own error)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
