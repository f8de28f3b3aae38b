"""The db reader: TASK joined with STRING_IDS / COMPUTE_TASK_INFO, STEP_TIME steps, bad dbs."""

import sqlite3
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.profile import load_profiles
from autotune.profile.db import read_db

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
DB = PROFILES / "dense_db_ascend_pt/ASCEND_PROFILER_OUTPUT/ascend_pytorch_profiler_0.db"
T0 = 1_776_130_000_000_000_000


def test_db_tasks_exact() -> None:
    p = read_db(DB)
    assert p.steps == 2 and p.source == "db" and len(p.tasks) == 84
    t = p.tasks.sort_values("start_ns").reset_index(drop=True)
    first = t.iloc[0]
    assert (first["name"], first["op_type"], first["start_ns"], first["end_ns"]) == (
        "aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm",
        "AddRmsNorm",
        T0,
        T0 + 10_000,
    )
    cmo = t[t["type"] == "CMO"]
    assert cmo["start_ns"].tolist()[:2] == [T0 + 20_500, T0 + 96_500]
    assert set(cmo["stream"]) == {7} and set(cmo["op_type"]) == {""}
    assert str(t["start_ns"].dtype) == "int64"


def test_db_roles_match_trace_view() -> None:
    (db,) = load_profiles(PROFILES / "dense_db_ascend_pt")
    (tv,) = load_profiles(PROFILES / "dense_current_ascend_pt")
    cols = ["device", "stream", "start_ns", "end_ns", "role"]
    assert db.tasks[cols].equals(tv.tasks[cols])


def test_db_without_task_table(tmp_path: Path) -> None:
    bad = tmp_path / "ascend_pytorch_profiler_0.db"
    con = sqlite3.connect(bad)
    con.execute("CREATE TABLE STRING_IDS (id INTEGER, value TEXT)")
    con.commit()
    con.close()
    with pytest.raises(AutotuneError, match="no TASK table") as e:
        read_db(bad)
    assert str(bad) in str(e.value)


def test_not_a_db(tmp_path: Path) -> None:
    bad = tmp_path / "x.db"
    bad.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(AutotuneError):
        read_db(bad)
