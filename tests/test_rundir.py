"""The run directory: atomic writes, trials.csv, and load_run for reports."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.rundir import (
    MIB,
    RunDir,
    RunRecord,
    TrialRecord,
    atomic_write_json,
    atomic_write_text,
    load_run,
    trials_csv,
)

SITES = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down", "moe.gate_up")


def _record(number: int, role: str, tput: float | None, **kw: object) -> TrialRecord:
    return TrialRecord(
        number=number,
        role=role,
        state=str(kw.pop("state", "complete")),
        config={"weight_prefetch_config": {"enabled": role != "baseline"}},
        effective_bytes={"attn.qkv": 2 * MIB, "mlp.down": 8 * MIB} if role != "baseline" else {},
        objective=tput,
        throughput=tput,
        throughputs=[] if tput is None else [tput - 1, tput, tput + 1],
        **kw,  # type: ignore[arg-type]
    )


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x" / "a.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_atomic_write_keeps_old_file_when_serialising_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_trials_csv_has_mib_per_site_and_spread() -> None:
    rows = list(
        csv.DictReader(
            io.StringIO(
                trials_csv(
                    [
                        _record(0, "baseline", 100.0),
                        _record(1, "default", 101.0, late_sites=["mlp.down"], feasible=False),
                        _record(2, "search", 101.0, state="duplicate", duplicate_of=1),
                    ],
                    SITES,
                )
            )
        )
    )
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["attn.qkv_mib"] == "2.000"
    assert rows[1]["mlp.down_mib"] == "8.000"
    assert rows[1]["late_sites"] == "mlp.down"
    assert rows[1]["feasible"] == "false"
    assert rows[1]["throughput_min"] == "100.000"
    assert rows[2]["duplicate_of"] == "1"


def test_load_run_reads_records_summary_and_profiles(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run")
    rundir.prepare(resume=False)
    rundir.write_run({"backend": "simulate", "simulated": True})
    prof = rundir.trial_dir(1) / "profile"
    prof.mkdir(parents=True)
    for rec in (
        _record(0, "baseline", 100.0),
        _record(1, "default", 103.0, profile="trials/001/profile"),
    ):
        rundir.write_trial(rec)
    rundir.write_summary({"simulated": True, "best": {"trial": 1}})
    rundir.write_best({"weight_prefetch_config": {"enabled": True}})
    run = load_run(rundir.path)
    assert run.simulated
    assert [t.number for t in run.trials] == [0, 1]
    assert run.best_trial is not None and run.best_trial.throughput == 103.0
    assert run.profiles == {1: prof}
    assert run.best_config == {"weight_prefetch_config": {"enabled": True}}


def test_prepare_refuses_to_overwrite_and_resume_needs_a_run(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("x")
    with pytest.raises(AutotuneError, match="--resume"):
        RunDir(tmp_path / "old").prepare(resume=False)
    with pytest.raises(AutotuneError, match="no autotune run"):
        RunDir(tmp_path / "old").prepare(resume=True)
    assert (tmp_path / "old" / "keep.txt").read_text() == "x"


def test_prune_profiles_keeps_the_wanted_ones(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    records = []
    for n in range(3):
        d = rundir.trial_dir(n) / "profile"
        d.mkdir(parents=True)
        records.append(_record(n, "search", 100.0 + n, profile=f"trials/{n:03d}/profile"))
    assert rundir.prune_profiles(records, keep={0, 2}) == [1]
    assert not (rundir.trial_dir(1) / "profile").exists()
    assert (rundir.trial_dir(2) / "profile").exists()
    assert records[1].profile is None


def test_load_run_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="no autotune run"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(AutotuneError, match="not valid JSON"):
        load_run(tmp_path)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask


def test_storage_of_names_the_own_study_relative_to_the_run(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run")
    rundir.path.mkdir()
    own = f"sqlite:///{(tmp_path / 'run' / 'study.db').resolve()}"
    assert rundir.storage_of({"storage": "study.db"}) is None
    assert rundir.storage_of({}) is None
    assert rundir.storage_url_of({"storage": "study.db"}) == own
    explicit = "postgresql+psycopg2://u@db:5432/autotune"
    assert rundir.storage_of({"storage": explicit}) == explicit
    # Runs written before named their study.db by absolute path; a copy whose own study.db is
    # beside run.json uses that one, not the original's.
    legacy = "sqlite:////elsewhere/original-run/study.db"
    assert rundir.storage_of({"storage": legacy}) == legacy
    rundir.study_db.touch()
    assert rundir.storage_of({"storage": legacy}) is None
    assert (
        rundir.storage_of({"storage": "sqlite:////shared/team.db"}) == "sqlite:////shared/team.db"
    )


def test_a_summary_without_a_best_trial_has_none() -> None:
    # Ctrl-C during the first trial: summary.json is written with "best": null.
    record = RunRecord(
        path=Path("."), run={}, summary={"best": None}, trials=[], best_config=None, profiles={}
    )
    assert record.best_trial is None
