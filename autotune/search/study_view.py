"""The whole study as one run record, for `export` and `report` on any worker of a shared study."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError
from autotune.rundir import RunDir, RunRecord, TrialRecord, load_run
from autotune.search.confirm import confirmation_json
from autotune.search.options import ATTR_SPACE, ATTR_WORKLOAD, SearchOptions
from autotune.search.space import SearchSpace, static_space
from autotune.search.storage import load_existing
from autotune.search.summary import best_record, build_summary
from autotune.search.workers import ATTR_RUN, study_records
from autotune.workloads.base import Workload, setup_of


def study_run(
    run_dir: Path | None, *, storage: str | None = None, study_name: str | None = None
) -> RunRecord:
    """A run directory, or the study behind it when several workers share one.

    With `run_dir` only, a run started without a shared `--storage` is read as it is on disk;
    a shared one is read from its study, this worker's trials keeping their local artifacts.
    Without `run_dir`, `storage` and `study_name` name the study.
    """
    local: RunRecord | None = None
    if run_dir is not None:
        local = load_run(run_dir)
        if not local.run.get("shared") and storage is None:
            return local
        storage = storage or local.run.get("storage")
        study_name = study_name or local.run.get("study_name")
    if not storage or not study_name:
        raise AutotuneError(
            "give a run directory, or --storage and --study-name of the study to read"
        )
    study = load_existing(str(storage), str(study_name))
    attrs = study.user_attrs
    run: dict[str, Any] = dict(attrs.get(ATTR_RUN) or (local.run if local else {}))
    if ATTR_WORKLOAD not in attrs or not run:
        raise AutotuneError(f"study {study_name!r} holds no autotune run")
    workload = Workload(**attrs[ATTR_WORKLOAD])
    known = {f.name for f in fields(SearchOptions)}
    options = SearchOptions(**{k: v for k, v in run.get("options", {}).items() if k in known})
    space = (
        SearchSpace.from_json(attrs[ATTR_SPACE])
        if ATTR_SPACE in attrs
        else static_space(setup_of(workload))
    )
    mine = {t.number: t for t in local.trials} if local else {}
    records = study_records(study.get_trials(deepcopy=False), mine)
    best = best_record(records, options.objective)
    path = local.path if local else Path.cwd()
    default = _first(records, "default")
    summary = build_summary(
        confirmation=confirmation_json(records, options, default),
        records=records,
        best=best,
        baseline=_first(records, "baseline"),
        default=default,
        space=space,
        workload=workload,
        backend=str(run.get("backend", "")),
        simulated=bool(run.get("simulated", False)),
        options=options,
        study_name=str(study_name),
        storage_url=str(storage),
        finished=bool(local.summary.get("finished", False)) if local else False,
        stopped=str(local.summary.get("stopped", "")) if local else "",
        rundir=RunDir(path),
    )
    return RunRecord(
        path=path,
        # The study keeps its run.json without the storage; the report reads the study there.
        run={**run, "study_name": study_name, "storage": storage},
        summary=summary,
        trials=records,
        best_config=best.config if best is not None else None,
        profiles=local.profiles if local else {},
    )


def _first(records: list[TrialRecord], role: str) -> TrialRecord | None:
    done = [r for r in records if r.role == role and r.state == "complete"]
    return min(done, key=lambda r: r.number) if done else None
