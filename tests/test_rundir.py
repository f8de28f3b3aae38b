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
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    check_output_file,
    load_run,
    profile_input,
    trials_csv,
    why_no_profile,
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


def test_atomic_file_written_by_name_replaces_only_when_the_block_ends(tmp_path: Path) -> None:
    # The simulator's profile files (the sqlite db among them) are written by name this way.
    path = tmp_path / "p.db"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        assert path.read_text() == "old"
        raise RuntimeError("writer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["p.db"]
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["p.db"]


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


def test_out_naming_a_file_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    for resume in (False, True):
        with pytest.raises(AutotuneError, match="is a file"):
            RunDir(out).prepare(resume=resume)
    with pytest.raises(AutotuneError, match="is a file, not a directory"):
        RunDir(out).check_new()
    assert out.read_text() == "mine"
    RunDir(tmp_path / "new").check_new()  # a directory still to create is fine
    assert not (tmp_path / "new").exists()


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
    assert json.loads((rundir.trial_dir(1) / "trial.json").read_text())["profile"] is None
    assert sorted(p.name for p in rundir.trial_dir(1).iterdir()) == ["trial.json"]


def test_prune_after_an_interrupted_prune_deletes_what_it_left(tmp_path: Path) -> None:
    # Interrupted between the rename and trial.json: the record names a profile that is gone,
    # and the renamed folder is still there. The next prune finishes the job.
    rundir = RunDir(tmp_path)
    left = rundir.trial_dir(1) / ".pruned-profile"
    (left / "x_ascend_pt" / "ASCEND_PROFILER_OUTPUT").mkdir(parents=True)
    (left / "x_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").write_text("[")
    record = _record(1, "search", 100.0, profile="trials/001/profile")
    rundir.write_run({"options": {"keep_profiles": "best"}})
    rundir.write_trial(record)
    # No report or analysis reads the half-deleted profile.
    assert load_run(rundir.path).profiles == {}
    with pytest.raises(AutotuneError, match=r"no profile to read: .* is missing"):
        profile_input(rundir.trial_dir(1))
    assert rundir.prune_profiles([record], keep=set()) == [1]
    assert not left.exists() and record.profile is None


def test_a_failed_trial_carries_no_measurement_in_trials_csv() -> None:
    # Interrupted after its first bench run: trial.json keeps what it measured; the table does not
    # count it.
    failed = _record(3, "search", 105.0, state="failed", error="interrupted", tpot_ms=9.0)
    (row,) = csv.DictReader(io.StringIO(trials_csv([failed], SITES)))
    assert row["state"] == "failed" and row["error"] == "interrupted"
    assert [row[k] for k in ("objective", "throughput", "throughput_min", "tpot_ms")] == [""] * 4
    assert row["repeats"] == "0"
    assert failed.throughput == 105.0  # the record itself is unchanged


def test_why_a_trial_has_no_profile() -> None:
    def why(keep: str | None = "best", **kw: object) -> str:
        return why_no_profile(_record(5, "search", 100.0, **kw), keep)

    assert why() == (
        "its profile was removed after the run (--keep-profiles best: only the baseline, vendor "
        "default and best trials keep theirs)"
    )
    assert why("none") == (
        "its profile was removed after the run (--keep-profiles none: no trial keeps its profile)"
    )
    assert why(unprofiled="no *_ascend_pt under prof/") == (
        "it was measured without a usable profile: no *_ascend_pt under prof/"
    )
    assert why(state="failed", error="vllm serve exited") == "the trial failed (vllm serve exited)"
    assert why(state="duplicate", duplicate_of=2) == (
        "it was not run (a duplicate): trials/002 ran the same effective bytes"
    )
    assert why(profile="trials/005/prof") == ""


def test_output_file_paths_are_checked_without_creating_folders(tmp_path: Path) -> None:
    check_output_file("--tasks", tmp_path / "t.csv")
    with pytest.raises(AutotuneError, match="is a directory"):
        check_output_file("--tasks", tmp_path)
    with pytest.raises(AutotuneError, match="does not exist"):
        check_output_file("--html", tmp_path / "missing" / "r.html")
    assert not (tmp_path / "missing").exists()


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


def test_profile_input_of_a_run_without_its_best_trial_here(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run")
    rundir.prepare(resume=False)
    rundir.write_run({"shared": True})
    rundir.write_trial(_record(0, "baseline", 100.0))
    with pytest.raises(AutotuneError, match="no best trial yet"):
        profile_input(rundir.path)
    # Another worker of the shared study ran the best trial: its profile is in its own --out.
    rundir.write_summary({"best": {"trial": 7}})
    with pytest.raises(AutotuneError, match=r"the best trial, 7, ran on another worker.*\(0\)"):
        profile_input(rundir.path)
    with pytest.raises(AutotuneError, match="has no profile to read: its profile was removed"):
        profile_input(rundir.path, trial=0)
