"""Opening the Optuna study in its storage (SQLite by default, any RDB URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.study import Study, StudyDirection
from sqlalchemy.engine import make_url

from autotune.errors import AutotuneError

# Seconds to wait for a database server before giving up (a firewalled host would otherwise hang).
DB_CONNECT_TIMEOUT_S = 10


def shown_url(url: str) -> str:
    """The storage URL as messages and shared files show it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide that we could find
        return url


def open_study(
    storage_url: str,
    study_name: str,
    direction: StudyDirection,
    sampler: BaseSampler,
    *,
    resume: bool,
) -> tuple[Study, optuna.storages.RDBStorage]:
    """Create (or with `resume` load) the study; AutotuneError for any storage problem."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db_file = storage_url.removeprefix("sqlite:///") if storage_url.startswith("sqlite:///") else ""
    if resume and db_file and not Path(db_file).is_file():
        # Opening would create an empty database; there is nothing to continue.
        raise AutotuneError(f"--resume: no study named {study_name!r}: {db_file} does not exist")
    if not resume and db_file and Path(db_file).parent.is_dir():
        # SQLite creates its file 0644 whatever the umask; an empty file made here follows it,
        # and SQLite keeps an existing file's mode.
        Path(db_file).touch(exist_ok=True)
    shown = shown_url(storage_url)
    engine_kwargs: dict[str, Any] = {}
    if storage_url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": DB_CONNECT_TIMEOUT_S}
    try:
        storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs)
    except Exception as exc:  # SQLAlchemy, driver and URL errors all mean "cannot use it"
        raise AutotuneError(f"cannot open --storage {shown}: {_first_line(exc)}") from None
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:
        raise AutotuneError(f"cannot read --storage {shown}: {_first_line(exc)}") from None
    if resume:
        if study_name not in names:
            raise AutotuneError(
                f"--resume: no study named {study_name!r} in {shown}; nothing to continue"
            )
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
        if study.direction != direction:
            raise AutotuneError(
                f"--resume: study {study_name!r} optimises the other objective; "
                "pass the --objective it was started with"
            )
        return study, storage
    if study_name in names:
        raise AutotuneError(
            f"study {study_name!r} already exists in {shown}; pass --resume to continue it "
            "or choose another --study-name"
        )
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=sampler, direction=direction
    )
    return study, storage


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
