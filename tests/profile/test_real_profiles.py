"""Readers and classifier on real Ascend 910B captures (profiles/real_910b_level1, see its README).

Counts are taken independently of the readers: every "X" event of the "Ascend Hardware" process of
trace_view.json, every row of the db's TASK table.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from autotune.profile import load_profiles
from autotune.profile.kernel_details import read_kernel_details

REAL = Path(__file__).resolve().parents[2] / "profiles" / "real_910b_level1"
OUT = "ASCEND_PROFILER_OUTPUT"


def trace_events(rank: int) -> list[dict[str, object]]:
    """The Ascend Hardware task events of one rank's trace_view.json, read with json alone."""
    events = json.loads((REAL / f"text/rank{rank}_ascend_pt/{OUT}/trace_view.json").read_text())
    hw = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and e["args"]["name"] == "Ascend Hardware"
    }
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in hw]


def db_rows(rank: int, sql: str) -> list[tuple[object, ...]]:
    db = REAL / f"db/rank{rank}_ascend_pt/{OUT}/ascend_pytorch_profiler_{rank}.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("rank", [0, 1])
def test_trace_view_has_every_task_with_exact_times(rank: int) -> None:
    (p,) = load_profiles(REAL / f"text/rank{rank}_ascend_pt")
    events = trace_events(rank)
    assert (p.rank, p.source, p.level, p.steps) == (rank, "trace_view", "Level1", 1)
    assert len(p.tasks) == len(events) == 535
    # Integer ns from the 3-decimal µs strings, never through a float.
    want = sorted(int(str(e["ts"]).replace(".", "")) for e in events)
    assert sorted(p.tasks["start_ns"].tolist()) == want


@pytest.mark.parametrize("rank", [0, 1])
def test_db_has_every_task(rank: int) -> None:
    (p,) = load_profiles(REAL / f"db/rank{rank}_ascend_pt")
    ((n, busy),) = db_rows(rank, "SELECT COUNT(*), SUM(endNs - startNs) FROM TASK")
    assert (p.rank, p.source, p.steps) == (rank, "db", 1)
    assert len(p.tasks) == n == 552
    assert int((p.tasks["end_ns"] - p.tasks["start_ns"]).sum()) == busy


@pytest.mark.parametrize("source", ["text", "db"])
def test_every_real_task_type_is_classified(source: str) -> None:
    for p in load_profiles(REAL / source):
        assert p.unclassified_types == {}
        t = p.tasks
        # No weight prefetch was issued: nothing is a prefetch, memcpys included.
        assert not (t["role"] == "prefetch").any()
        assert set(t[t["name"] == "MEMCPY_ASYNC"]["role"]) == {"other"}
        # HCCL's own tasks on its stream are communication.
        hccl = t[t["type"].isin(["Notify Wait", "Write Value", "SDMA"])]
        assert len(hccl) == 296 and set(hccl["role"]) == {"comm"} and set(hccl["stream"]) == {4}
        assert set(t[t["role"] == "cube"]["op_type"]) >= {"MatMulV2", "MatMulV3"}


def test_db_task_types_are_host_types() -> None:
    (p,) = load_profiles(REAL / "db/rank0_ascend_pt")
    types = set(p.tasks["type"])
    assert {"KERNEL_AICORE", "KERNEL_AIVEC", "MIX_AIV", "EVENT_RECORD", "EVENT_WAIT"} <= types
    assert {"MEMCPY_ASYNC", "STARS_COMMON"} <= types
    assert not types & {"EVENT_RECORD_SQE", "EVENT_WAIT_SQE", "AI_VECTOR_CORE"}


def test_memcpy_on_a_stream_without_compute_is_not_a_prefetch(tmp_path: Path) -> None:
    # Stream 3 runs no kernel; give its MEMCPY_ASYNC tasks the SDMA SQE type a CMO falls back to.
    root = tmp_path / "rank0_ascend_pt"
    shutil.copytree(REAL / "text/rank0_ascend_pt", root)
    trace = root / OUT / "trace_view.json"
    text = trace.read_text()
    events = json.loads(text)
    moved = 0
    for e in events:
        if e.get("name") == "MEMCPY_ASYNC" and e.get("tid") == 3:
            e["args"]["Task Type"] = "SDMA_SQE"
            moved += 1
    assert moved == 2
    trace.write_text(json.dumps(events))
    (p,) = load_profiles(root)
    memcpy = p.tasks[(p.tasks["name"] == "MEMCPY_ASYNC") & (p.tasks["stream"] == 3)]
    assert list(memcpy["type"]) == ["SDMA_SQE", "SDMA_SQE"]
    assert set(memcpy["role"]) == {"other"}


def test_level0_db_kernels_are_compute_by_host_type(tmp_path: Path) -> None:
    # A Level0 db has no COMPUTE_TASK_INFO: kernels keep only their host type. An SDMA SQE on the
    # kernels' stream is then still a copy, on a stream without kernels a prefetch.
    root = tmp_path / "rank0_ascend_pt"
    shutil.copytree(REAL / "db/rank0_ascend_pt", root)
    db = root / OUT / "ascend_pytorch_profiler_0.db"
    con = sqlite3.connect(db)
    con.execute("DROP TABLE COMPUTE_TASK_INFO")
    sid = con.execute("SELECT MAX(id) + 1 FROM STRING_IDS").fetchone()[0]
    con.execute("INSERT INTO STRING_IDS (id, value) VALUES (?, 'SDMA_SQE')", (sid,))
    t0 = con.execute("SELECT MIN(startNs) FROM TASK").fetchone()[0]
    for stream in (2, 9):
        con.execute(
            "INSERT INTO TASK (startNs, endNs, deviceId, connectionId, globalTaskId, globalPid, "
            "taskType, contextId, streamId, taskId, modelId) "
            "VALUES (?, ?, 0, 0, 0, 0, ?, 0, ?, 0, 0)",
            (t0 + 10, t0 + 20, sid, stream),
        )
    con.commit()
    con.close()
    (p,) = load_profiles(root)
    t = p.tasks
    sdma = t[t["type"] == "SDMA_SQE"].set_index("stream")["role"].to_dict()
    assert sdma == {2: "other", 9: "prefetch"}
    assert set(t[t["type"].str.startswith("KERNEL_")]["op_type"]) == {""}


@pytest.mark.parametrize("rank", [0, 1])
def test_kernel_details_crlf_and_tab_after_start(rank: int) -> None:
    path = REAL / f"text/rank{rank}_ascend_pt/{OUT}/kernel_details.csv"
    raw = path.read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and b"\t," in lines[1]  # CRLF lines, a tab after the start time
    kd = read_kernel_details(path)
    assert len(kd) == len(lines) - 2
    first = lines[1].decode().split(",")
    header = lines[0].decode().split(",")
    start = first[header.index("Start Time(us)")].strip()
    assert kd["start_ns"].iloc[0] == int(start.replace(".", ""))
    assert kd["stream"].iloc[0] == int(first[header.index("Stream ID")])
    # Every kernel of kernel_details gives its Type to the trace_view task it describes; the
    # all-reduce rows (Stream ID N/A) summarise HCCL tasks and match none.
    kernels = kd[kd["stream"] >= 0]
    assert set(kd[kd["stream"] < 0]["op_type"]) == {"hcom_allReduce_"} and len(kernels) == 187
    (p,) = load_profiles(REAL / f"text/rank{rank}_ascend_pt")
    got = p.tasks.merge(kernels, on=["stream", "start_ns", "name"], suffixes=("", "_kd"))
    assert len(got) == len(kernels)
    typed = got[got["op_type_kd"] != ""]
    assert (typed["op_type"] == typed["op_type_kd"]).all()
