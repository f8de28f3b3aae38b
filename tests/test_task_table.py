"""`autotune analyze --tasks`: the classified task table, checked against independent counts."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from autotune.cli import app

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
REAL = PROFILES / "real_910b_level1"
OUT = "ASCEND_PROFILER_OUTPUT"
COLUMNS = [
    "rank", "device", "stream", "name", "type", "op_type", "start_ns", "end_ns", "role",
    "site", "layer", "step",
]  # fmt: skip


def _tasks_csv(path: Path, out: Path) -> tuple[str, list[dict[str, str]]]:
    res = CliRunner().invoke(app, ["analyze", str(path), "--tasks", str(out)])
    assert res.exit_code == 0, res.output
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return res.output, list(reader)


def _trace_keys(rank: int) -> Counter[tuple[int, int, str]]:
    events = json.loads((REAL / f"text/rank{rank}_ascend_pt/{OUT}/trace_view.json").read_text())
    hw = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and e["args"]["name"] == "Ascend Hardware"
    }
    return Counter(
        (int(e["tid"]), int(e["ts"].replace(".", "")), e["name"])
        for e in events
        if e.get("ph") == "X" and e.get("pid") in hw
    )


def _db_keys(rank: int) -> Counter[tuple[int, int, int]]:
    db = REAL / f"db/rank{rank}_ascend_pt/{OUT}/ascend_pytorch_profiler_{rank}.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT streamId, startNs, endNs FROM TASK").fetchall()
    finally:
        con.close()
    return Counter((int(s), int(b), int(e)) for s, b, e in rows)


def test_tasks_csv_of_real_trace_view_has_exactly_the_files_tasks(tmp_path: Path) -> None:
    output, rows = _tasks_csv(REAL / "text", tmp_path / "tasks.csv")
    assert "read 2 profile(s): rank 0 (trace_view, 535 tasks" in output
    assert "rank 1 (trace_view, 535 tasks" in output
    for rank in (0, 1):
        mine = [r for r in rows if r["rank"] == str(rank)]
        got = Counter((int(r["stream"]), int(r["start_ns"]), r["name"]) for r in mine)
        assert got == _trace_keys(rank)
        assert {r["device"] for r in mine} == {str(rank)}
    assert len(rows) == 2 * 535
    assert all(r["role"] and r["role"] != "prefetch" for r in rows)
    assert all(r["site"] == r["layer"] == r["step"] == "" for r in rows)


def test_tasks_csv_of_real_db_has_exactly_the_files_tasks(tmp_path: Path) -> None:
    _, rows = _tasks_csv(REAL / "db", tmp_path / "tasks.csv")
    assert len(rows) == 2 * 552
    for rank in (0, 1):
        got = Counter(
            (int(r["stream"]), int(r["start_ns"]), int(r["end_ns"]))
            for r in rows
            if r["rank"] == str(rank)
        )
        assert got == _db_keys(rank)
    types = {r["type"] for r in rows}
    assert {"KERNEL_AIVEC", "MEMCPY_ASYNC", "EVENT_WAIT"} <= types


def test_tasks_csv_marks_prefetch_sites(tmp_path: Path) -> None:
    # profiles/README.md: 2 layers of 5 prefetches each, every one attributed.
    _, rows = _tasks_csv(PROFILES / "dense_current_ascend_pt", tmp_path / "t.csv")
    pf = [r for r in rows if r["role"] == "prefetch"]
    assert len(pf) == 10
    assert Counter(r["site"] for r in pf) == {
        "attn.qkv": 2,
        "attn.o": 4,
        "mlp.gate_up": 2,
        "mlp.down": 2,
    }
    assert {(r["layer"], r["step"]) for r in pf} == {("0", "0"), ("0", "1")}
    assert all(r["site"] == r["layer"] == "" for r in rows if r["role"] != "prefetch")


def test_tasks_to_a_directory_is_one_clean_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["analyze", str(REAL / "db"), "--tasks", str(tmp_path)])
    assert res.exit_code == 2
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert (
        len(lines) == 1 and lines[0].startswith("error: --tasks") and "is a directory" in lines[0]
    )
