"""Opening the Optuna study in its storage: SQLite by default, any RDB URL, or a journal file."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.samplers import BaseSampler
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.study import Study, StudyDirection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError

from autotune.errors import AutotuneError

# Seconds to wait for a database server before giving up (a firewalled host would otherwise hang).
DB_CONNECT_TIMEOUT_S = 10
# `--storage journal:PATH`: Optuna's journal file, for a shared filesystem without a database.
JOURNAL_PREFIX = "journal:"
# A trial whose worker has been silent for this many heartbeat intervals is failed and retried.
GRACE_INTERVALS = 3
# Seconds a journal lock may be held before another worker breaks it (a worker died holding it).
JOURNAL_LOCK_GRACE_S = 30
# Tries at opening an RDB storage while other workers create its tables.
SCHEMA_ATTEMPTS = 5


@dataclass(frozen=True)
class StudyHandle:
    """An opened study, its storage, and whether this call created it."""

    study: Study
    storage: BaseStorage
    created: bool


def shown_url(url: str) -> str:
    """The storage URL as messages and shared files show it: without its password."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide that we could find
        return url


def journal_path(url: str) -> Path | None:
    """The journal file of a `journal:PATH` storage, None for an RDB URL."""
    return Path(url.removeprefix(JOURNAL_PREFIX)).expanduser() if is_journal(url) else None


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_PREFIX)


def make_storage(url: str, *, heartbeat_s: int | None = None) -> BaseStorage:
    """The storage behind `url`; with `heartbeat_s` an RDB storage fails and retries the trials of
    workers silent for GRACE_INTERVALS heartbeats. AutotuneError for any problem."""
    shown = shown_url(url)
    path = journal_path(url)
    if path is not None:
        if not path.parent.is_dir():
            raise AutotuneError(
                f"cannot open --storage {shown}: directory {path.parent} does not exist"
            )
        try:
            # O_EXCL lock files work on NFSv3 and later, where fcntl locks (SQLite's) do not.
            lock = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
        except Exception as exc:
            raise AutotuneError(f"cannot open --storage {shown}: {_first_line(exc)}") from None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": DB_CONNECT_TIMEOUT_S}
    beat: dict[str, Any] = {}
    if heartbeat_s is not None:
        beat = {
            "heartbeat_interval": heartbeat_s,
            "grace_period": GRACE_INTERVALS * heartbeat_s,
            "heartbeat_stale_trial_callback": _retry_callback(),
        }
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" in Optuna 5; the warning would only clutter.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
        except (IntegrityError, ProgrammingError) as exc:
            # Workers starting together on an empty database race to create Optuna's tables;
            # the losers find them there on the next attempt.
            if attempt + 1 == SCHEMA_ATTEMPTS:
                raise AutotuneError(f"cannot open --storage {shown}: {_first_line(exc)}") from None
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:  # SQLAlchemy, driver and URL errors all mean "cannot use it"
            raise AutotuneError(f"cannot open --storage {shown}: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _retry_callback() -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Retried without limit: a trial dies with its worker, not because of its config.
        return RetryHeartbeatStaleTrialCallback(max_retry=None)


def open_study(
    storage_url: str,
    study_name: str,
    direction: StudyDirection,
    sampler: BaseSampler,
    *,
    resume: bool,
    join: bool = False,
    heartbeat_s: int | None = None,
) -> StudyHandle:
    """Create the study, or load it with `resume`, or (with `join`) load it when another worker
    created it first; AutotuneError for any storage problem."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db_file = storage_url.removeprefix("sqlite:///") if storage_url.startswith("sqlite:///") else ""
    journal = journal_path(storage_url)
    missing = (db_file and not Path(db_file).is_file()) or (journal and not journal.is_file())
    if resume and missing:
        # Opening would create an empty storage; there is nothing to continue.
        raise AutotuneError(
            f"--resume: no study named {study_name!r}: {db_file or journal} does not exist"
        )
    if not resume and db_file and Path(db_file).parent.is_dir():
        # SQLite creates its file 0644 whatever the umask; an empty file made here follows it,
        # and SQLite keeps an existing file's mode.
        Path(db_file).touch(exist_ok=True)
    shown = shown_url(storage_url)
    storage = make_storage(storage_url, heartbeat_s=heartbeat_s)
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:
        raise AutotuneError(f"cannot read --storage {shown}: {_first_line(exc)}") from None
    if resume or (join and study_name in names):
        if study_name not in names:
            raise AutotuneError(
                f"--resume: no study named {study_name!r} in {shown}; nothing to continue"
            )
        return StudyHandle(_load(study_name, storage, sampler, direction), storage, created=False)
    if study_name in names:
        raise AutotuneError(
            f"study {study_name!r} already exists in {shown}; pass --resume to continue it "
            "or choose another --study-name"
        )
    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage, sampler=sampler, direction=direction
        )
    except DuplicatedStudyError:
        if not join:
            raise AutotuneError(
                f"study {study_name!r} was just created in {shown} by another run; "
                "choose another --study-name"
            ) from None
        # Another worker created it between the listing and here: join it.
        return StudyHandle(_load(study_name, storage, sampler, direction), storage, created=False)
    return StudyHandle(study, storage, created=True)


def _load(
    study_name: str, storage: BaseStorage, sampler: BaseSampler, direction: StudyDirection
) -> Study:
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    if study.direction != direction:
        raise AutotuneError(
            f"study {study_name!r} optimises the other objective; "
            "pass the --objective it was started with"
        )
    return study


def load_existing(storage_url: str, study_name: str) -> Study:
    """An existing study for reading (export, report); AutotuneError when it is not there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shown = shown_url(storage_url)
    journal = journal_path(storage_url)
    if journal is not None and not journal.is_file():
        raise AutotuneError(f"--storage {shown}: {journal} does not exist")
    storage = make_storage(storage_url)
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:
        raise AutotuneError(f"cannot read --storage {shown}: {_first_line(exc)}") from None
    if study_name not in names:
        raise AutotuneError(f"no study named {study_name!r} in {shown}; check --study-name")
    return optuna.load_study(study_name=study_name, storage=storage)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
