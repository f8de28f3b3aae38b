"""Reader of the db export (`ascend_pytorch_profiler[_N].db`, `msprof_*.db`): TASK rows, in ns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from autotune.errors import AutotuneError
from autotune.profile.tasks import TASK_COLUMNS, Profile, StepSpan, empty_tasks

# Every device task with its runtime task type; kernels also get their name and op type.
_QUERY = """
SELECT t.deviceId, t.streamId, t.startNs, t.endNs, t.connectionId,
       rts.value AS rtsType, nm.value AS name, op.value AS opType
FROM TASK t
LEFT JOIN STRING_IDS rts        ON rts.id = t.taskType
LEFT JOIN COMPUTE_TASK_INFO cti ON cti.globalTaskId = t.globalTaskId
LEFT JOIN STRING_IDS nm         ON nm.id = cti.name
LEFT JOIN STRING_IDS op         ON op.id = cti.opType
"""
# The same without COMPUTE_TASK_INFO (a db with no kernels, e.g. Level_none).
_QUERY_NO_CTI = """
SELECT t.deviceId, t.streamId, t.startNs, t.endNs, t.connectionId,
       rts.value AS rtsType, NULL AS name, NULL AS opType
FROM TASK t
LEFT JOIN STRING_IDS rts ON rts.id = t.taskType
"""


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _as_int(v: object, default: int) -> int:
    if isinstance(v, bool):
        return default
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v == v and abs(v) < 2**63:
        return int(v)
    if isinstance(v, str | bytes):
        try:
            return int(v)
        except ValueError:
            return default
    return default


def _as_str(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def read_db(path: Path) -> Profile:
    """Read the TASK table of one profiler db into an (unclassified) Profile."""
    if not path.is_file():
        raise AutotuneError(f"{path}: db file not found")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise AutotuneError(f"{path}: cannot open db ({exc})") from None
    try:
        try:
            tables = _tables(con)
        except sqlite3.DatabaseError as exc:
            raise AutotuneError(f"{path}: not an sqlite db ({exc})") from None
        if "TASK" not in tables:
            raise AutotuneError(
                f"{path}: no TASK table (not an Ascend profiler db, or exported without NPU tasks)"
            )
        if "STRING_IDS" not in tables:
            raise AutotuneError(f"{path}: no STRING_IDS table, cannot read task types")
        query = _QUERY if "COMPUTE_TASK_INFO" in tables else _QUERY_NO_CTI
        try:
            rows = con.execute(query).fetchall()
        except sqlite3.Error as exc:
            raise AutotuneError(f"{path}: cannot read TASK ({exc})") from None
        markers, steps, launches = _steps(con, tables, path)
    finally:
        con.close()

    warnings: list[str] = []
    dev, stream, name, ttype, op, start, end, conn = [], [], [], [], [], [], [], []
    bad = 0
    for d, s, b, e, c, rts, nm, opt in rows:
        b_i, e_i = _as_int(b, -1), _as_int(e, -1)
        if b_i < 0 or e_i < b_i:
            bad += 1
            continue
        t = _as_str(rts)
        dev.append(_as_int(d, -1))
        stream.append(_as_int(s, -1))
        ttype.append(t)
        name.append(_as_str(nm) or t)
        op.append(_as_str(opt))
        start.append(b_i)
        end.append(e_i)
        conn.append(_as_int(c, -1))
    if bad:
        warnings.append(f"{path}: skipped {bad} TASK rows with unusable startNs/endNs")
    if not start:
        raise AutotuneError(f"{path}: the TASK table has no usable rows")
    tasks = pd.DataFrame(
        {
            "device": np.array(dev, np.int64),
            "stream": np.array(stream, np.int64),
            "name": pd.Series(name, dtype=object),
            "type": pd.Series(ttype, dtype=object),
            "op_type": pd.Series(op, dtype=object),
            "start_ns": np.array(start, np.int64),
            "end_ns": np.array(end, np.int64),
            "connection_id": np.array(conn, np.int64),
            "source": pd.Series(["db"] * len(start), dtype=object),
        }
    )
    tasks = tasks[list(TASK_COLUMNS)] if len(tasks) else empty_tasks()
    starts = _device_starts(markers, launches, tasks)
    return Profile(
        path=path,
        source="db",
        tasks=tasks,
        steps=steps,
        step_markers=markers,
        step_starts=starts,
        step_source="the db's CANN_API kernel launches" if starts else "",
        warnings=warnings,
    )


# ENUM_API_TYPE id of node-level (kernel launch) CANN APIs, when the db has no ENUM_API_TYPE.
_NODE_API = 10000


def _steps(
    con: sqlite3.Connection, tables: set[str], path: Path
) -> tuple[list[StepSpan], int | None, list[tuple[int, int, int]]]:
    """STEP_TIME rows (host spans), their count, and the node-level CANN API launches
    (start, end, connectionId) when the db has them: what links a step to its device tasks."""
    if "STEP_TIME" not in tables:
        return [], None, []
    try:
        rows = con.execute("SELECT id, startNs, endNs FROM STEP_TIME").fetchall()
        launches: list[tuple[int, int, int]] = []
        if "CANN_API" in tables:
            node = _NODE_API
            if "ENUM_API_TYPE" in tables:
                found = con.execute("SELECT id FROM ENUM_API_TYPE WHERE name = 'node'").fetchone()
                node = _as_int(found[0], _NODE_API) if found else _NODE_API
            raw = con.execute(
                "SELECT startNs, endNs, connectionId FROM CANN_API WHERE type = ?", (node,)
            ).fetchall()
            launches = [(_as_int(a, -1), _as_int(b, -1), _as_int(c, -1)) for a, b, c in raw]
    except sqlite3.Error as exc:
        raise AutotuneError(f"{path}: cannot read STEP_TIME ({exc})") from None
    markers = []
    for number, start, end in rows:
        n, b, e = _as_int(number, -1), _as_int(start, -1), _as_int(end, -1)
        if n >= 0 and 0 <= b <= e:
            markers.append(StepSpan(n, b, e))
    markers.sort(key=lambda m: (m.start_ns, m.number))
    return markers, (len(rows) or None), launches


def _device_starts(
    markers: list[StepSpan], launches: list[tuple[int, int, int]], tasks: pd.DataFrame
) -> dict[int, int]:
    """Per step: the first device task launched inside its host span, as torch_npu's own step
    ranges have it (node-level APIs within the span, joined to TASK by connectionId)."""
    if not markers or not launches or tasks.empty:
        return {}
    api = np.array(launches, dtype=np.int64)
    bounds = np.array([m.start_ns for m in markers], dtype=np.int64)
    ends = np.array([m.end_ns for m in markers], dtype=np.int64)
    k = np.searchsorted(bounds, api[:, 0], side="right") - 1
    inside = (k >= 0) & (api[:, 1] <= ends[np.maximum(k, 0)]) & (api[:, 2] >= 0)
    step_of_conn = pd.Series(k[inside], index=api[inside, 2])
    step_of_conn = step_of_conn[~step_of_conn.index.duplicated(keep="first")]
    step = tasks["connection_id"].map(step_of_conn)
    linked = tasks.loc[step.notna(), "start_ns"].groupby(step[step.notna()].astype(int)).min()
    index = linked.index.to_numpy(dtype=np.int64).tolist()
    return {
        markers[i].number: t
        for i, t in zip(index, linked.to_numpy(dtype=np.int64).tolist(), strict=True)
    }
