"""Write a simulated trial as a torch_npu profiler directory and `vllm bench serve` results.

The layout and formats are those torch_npu 2.x / msprof write after parsing (Level1, text export
with the db): `*_ascend_pt/{profiler_info_<rank>.json, profiler_metadata.json,
ASCEND_PROFILER_OUTPUT/{trace_view.json, kernel_details.csv, ascend_pytorch_profiler_<rank>.db,
analyse.done}}`. Every file says it is simulated.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from autotune.rundir import atomic_file, atomic_write_text
from autotune.workloads.sim.steps import SimTrial

_UINT32_MAX = 4294967295
_AH_SORT, _CANN_SORT, _HCCL_SORT = 14, 7, 15  # msprof process sort indices
TORCH_NPU_VERSION = "2.10.0"
CANN_VERSION = "9.0.1"

KERNEL_DETAILS_HEADER: tuple[str, ...] = (
    "Step Id",
    "Device_id",
    "Model ID",
    "Task ID",
    "Stream ID",
    "Name",
    "Type",
    "OP State",
    "Accelerator Core",
    "Start Time(us)",
    "Duration(us)",
    "Wait Time(us)",
    "Block Num",
    "Mix Block Num",
    "HF32 Eligible",
    "Input Shapes",
    "Input Data Types",
    "Input Formats",
    "Output Shapes",
    "Output Data Types",
    "Output Formats",
    "Context ID",
    "aicore_time(us)",
    "aic_total_cycles",
    "aic_mac_time(us)",
    "aic_mac_ratio",
    "aic_scalar_time(us)",
    "aic_scalar_ratio",
    "aic_mte1_time(us)",
    "aic_mte1_ratio",
    "aic_mte2_time(us)",
    "aic_mte2_ratio",
    "aic_fixpipe_time(us)",
    "aic_fixpipe_ratio",
    "aic_icache_miss_rate",
    "aiv_time(us)",
    "aiv_total_cycles",
    "aiv_vec_time(us)",
    "aiv_vec_ratio",
    "aiv_scalar_time(us)",
    "aiv_scalar_ratio",
    "aiv_mte2_time(us)",
    "aiv_mte2_ratio",
    "aiv_mte3_time(us)",
    "aiv_mte3_ratio",
    "aiv_icache_miss_rate",
    "cube_utilization(%)",
)

# Plausible pipe-utilisation ratios for the PMU tail (modelled; the simulator has no PMU).
_AIC_RATIOS = (("mac", 0.35), ("scalar", 0.05), ("mte1", 0.2), ("mte2", 0.85), ("fixpipe", 0.05))
_AIV_RATIOS = (("vec", 0.3), ("scalar", 0.1), ("mte2", 0.6), ("mte3", 0.3))


def us_str(ns: int) -> str:
    """Integer ns as the profiler's µs string with exactly 3 decimals (ns-exact)."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return f"{sign}{ns // 1000}.{ns % 1000:03d}"


def dir_name(worker: str, pid: int, start_ns: int) -> str:
    """`{worker}_{pid}_{YYYYmmddHHMMSSmmm}_ascend_pt` (timestamp in UTC)."""
    stamp = datetime.fromtimestamp(start_ns // 1_000_000_000, UTC).strftime("%Y%m%d%H%M%S")
    return f"{worker}_{pid}_{stamp}{(start_ns // 1_000_000) % 1000:03d}_ascend_pt"


class _Row(NamedTuple):
    """One device task, absolute Unix-epoch ns."""

    device: int
    stream: int
    task_id: int
    name: str
    type: str  # Task Type / Accelerator Core
    rt_type: str  # runtime task type (db TASK.taskType)
    op_type: str
    start: int
    end: int
    conn: int
    in_shapes: str
    out_shapes: str
    in_types: str
    out_types: str
    kind: str  # kernel | cmo | record | wait | comm (autotune.workloads.sim.steps.TASK_COLUMNS)
    group: int  # a comm task's collective


_ROW_COLUMNS = (
    "device", "stream", "task_id", "name", "type", "rt_type", "op_type", "start_ns", "end_ns",
    "connection_id", "in_shapes", "out_shapes", "in_types", "out_types", "kind", "group",
)  # fmt: skip


def _rows(trial: SimTrial, base_ns: int) -> list[_Row]:
    t = trial.tasks
    cols = [t[c].tolist() for c in _ROW_COLUMNS]
    cols[7] = (t["start_ns"].to_numpy() + base_ns).tolist()
    cols[8] = (t["end_ns"].to_numpy() + base_ns).tolist()
    return [_Row(*vals) for vals in zip(*cols, strict=True)]


def write_profile(trial: SimTrial, parent: Path, *, base_ns: int, pid: int, rank: int = 0) -> Path:
    """Write rank `rank`'s `*_ascend_pt` directory under `parent`; returns it.

    Task times in `trial.tasks` are relative ns; `base_ns` (Unix-epoch ns) is added to them.
    """
    root = parent / dir_name(f"simulated-rank{rank}", pid, base_ns)
    out = root / "ASCEND_PROFILER_OUTPUT"
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(trial, base_ns)
    steps = [(k + 1, s + base_ns, e + base_ns) for k, (s, e) in enumerate(trial.step_spans)]
    _write_info(trial, root, rank, base_ns, steps)
    coll = _collective_rows(trial, rows, base_ns)
    _write_trace(trial, out / "trace_view.json", pid, rows, coll, steps)
    _write_kernel_details(trial, out / "kernel_details.csv", rows, coll, steps)
    _write_db(trial, out / f"ascend_pytorch_profiler_{rank}.db", pid, rank, rows, coll, steps)
    atomic_write_text(out / "analyse.done", "")
    return root


def _model_id(trial: SimTrial) -> int:
    # Eager single-op tasks carry UINT32_MAX; graph replay tasks carry their model id.
    return 1 if trial.workload.graph_mode else _UINT32_MAX


def _device(rows: list[_Row]) -> int:
    return rows[0].device if rows else 0


def _write_info(
    trial: SimTrial, root: Path, rank: int, base_ns: int, steps: list[tuple[int, int, int]]
) -> None:
    w = trial.workload
    common = {
        "activities": ["ProfilerActivity.CPU", "ProfilerActivity.NPU"],
        "schedule": {"wait": 0, "warmup": 0, "active": len(steps), "repeat": 1, "skip_first": 0},
        "record_shapes": True,
        "profile_memory": False,
        "with_stack": False,
        "with_flops": False,
        "with_modules": False,
    }
    experimental = {
        "_profiler_level": "Level1",
        "_aic_metrics": "ACL_AICORE_PIPE_UTILIZATION",
        "_l2_cache": False,
        "_msprof_tx": False,
        "_mstx": False,
        "_op_attr": False,
        "_data_simplification": True,
        "_export_type": ["text"],
        "_record_op_args": False,
        "_gc_detect_threshold": None,
        "_host_sys": [],
        "_sys_io": False,
        "_sys_interconnection": False,
    }
    workload = {
        "model": w.model, "max_num_seqs": w.max_num_seqs, "tp": w.tp, "ep": w.ep,
        "flashcomm1": w.flashcomm1, "graph_mode": w.graph_mode,
    }  # fmt: skip
    info: dict[str, Any] = {
        "config": {"common_config": common, "experimental_config": experimental},
        "start_info": {"syscnt_enable": False, "freq": 100.0, "start_cnt": 0,
                       "start_monotonic": 0, "collectionTimeBegin": base_ns},
        "end_info": {"collectionTimeEnd": steps[-1][2] if steps else base_ns,
                     "MonotonicTimeEnd": 0},
        "torch_npu_version": TORCH_NPU_VERSION,
        "cann_version": CANN_VERSION,
        "rank_id": rank,
        "autotune_simulated": True,
        "note": trial.notes[0],
        "autotune_hardware": trial.hardware.summary(),
        "autotune_workload": workload,
        # What shaped this profile, so that it can be made again: the effects and their seed.
        "autotune_realism": {**trial.realism.to_json(), "seed": trial.seed,
                             "profiled_contexts": trial.contexts},
    }  # fmt: skip
    _dump(root / f"profiler_info_{rank}.json", info)
    meta = {
        "ENV_VARIABLES": {
            "VLLM_ASCEND_ENABLE_FLASHCOMM1": "1" if w.flashcomm1 else "0",
            "ASCEND_RT_VISIBLE_DEVICES": ",".join(str(i) for i in range(w.tp)),
        },
        "parallel_group_info": {
            "tp": {"group_name": "tp", "group_rank": rank, "global_ranks": list(range(w.tp))},
        },
        "autotune_simulated": True,
        "note": trial.notes[0],
    }
    _dump(root / "profiler_metadata.json", meta)


def _dump(path: Path, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")


def _meta(kind: str, pid: int, tid: int, key: str, value: Any) -> dict[str, Any]:
    """A trace metadata ("M") event."""
    return {"name": kind, "pid": pid, "tid": tid, "ph": "M", "args": {key: value}}


def _write_trace(
    trial: SimTrial,
    path: Path,
    pid: int,
    rows: list[_Row],
    coll: list[_Row],
    steps: list[tuple[int, int, int]],
) -> None:
    device = _device(rows)
    tid = pid  # the Python main thread
    hw_pid = (pid << 10) | (_AH_SORT << 5) | device
    cann_pid = (pid << 10) | (_CANN_SORT << 5) | 31  # host layers use device 31
    ev: list[dict[str, Any]] = [
        _meta("process_name", pid, 0, "name", "Python"),
        _meta("process_labels", pid, 0, "labels", "CPU"),
        _meta("process_sort_index", pid, 0, "sort_index", 0),
        _meta("thread_name", pid, tid, "name", f"Thread {tid}"),
        _meta("thread_sort_index", pid, tid, "sort_index", tid),
    ]
    for n, s, e in steps:
        ev.append({
            "ph": "X", "name": f"ProfilerStep#{n}", "pid": pid, "tid": tid, "ts": us_str(s),
            "dur": (e - s) / 1000, "cat": "cpu_op",
            "args": {"Sequence number": -1, "Fwd thread id": 0},
        })  # fmt: skip
    ev += [
        _meta("process_name", cann_pid, 0, "name", "CANN"),
        _meta("process_labels", cann_pid, 0, "labels", "CPU"),
        _meta("process_sort_index", cann_pid, 0, "sort_index", _CANN_SORT),
        _meta("thread_name", cann_pid, tid, "name", f"Thread {tid}"),
        _meta("process_name", hw_pid, 0, "name", "Ascend Hardware"),
        _meta("process_labels", hw_pid, 0, "labels", f"NPU {device}"),
        _meta("process_sort_index", hw_pid, 0, "sort_index", _AH_SORT),
    ]
    for stream in sorted({r.stream for r in rows}):
        ev.append(_meta("thread_name", hw_pid, stream, "name", f"Stream {stream}"))
        ev.append(_meta("thread_sort_index", hw_pid, stream, "sort_index", stream))
    model_id = _model_id(trial)
    counts = _element_counts(trial)
    ev += _hccl_events(coll, counts, (pid << 10) | (_HCCL_SORT << 5) | device, model_id)
    # Device events are formatted directly (same JSON as json.dumps would write, much faster);
    # names and task types are plain ASCII, without quotes or backslashes.
    parts = [json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in ev]
    for r in rows:
        parts.append(
            f'{{"name":"{r.name}","pid":{hw_pid},"tid":{r.stream},"ts":"{us_str(r.start)}",'
            f'"dur":{(r.end - r.start) / 1000!r},"ph":"X","args":{{"Model Id":{model_id},'
            f'"Task Type":"{r.type}","Physic Stream Id":{r.stream},"Task Id":{r.task_id},'
            f'"Batch Id":0,"Subtask Id":{_UINT32_MAX},"connection_id":{r.conn}}}}}'
        )
    with atomic_file(path) as tmp:
        tmp.write_text("[" + ",".join(parts) + "]", encoding="utf-8")


def _element_counts(trial: SimTrial) -> dict[int, int]:
    """Per collective: the bf16 elements each rank contributes."""
    c = trial.collectives
    return dict(zip(c["group"].tolist(), (c["bytes"] // 2).tolist(), strict=True))


def _hccl_events(
    coll: list[_Row], counts: dict[int, int], hccl_pid: int, model_id: int
) -> list[dict[str, Any]]:
    """The HCCL process of the trace: one event per collective, as the real capture has them."""
    if not coll:
        return []
    ev = [
        _meta("process_name", hccl_pid, 0, "name", "HCCL"),
        _meta("process_labels", hccl_pid, 0, "labels", "NPU"),
        _meta("process_sort_index", hccl_pid, 0, "sort_index", _HCCL_SORT),
        _meta("thread_name", hccl_pid, 0, "name", "Group 0 Communication"),
        _meta("thread_sort_index", hccl_pid, 0, "sort_index", 0),
    ]
    for r in coll:
        ev.append({
            "name": r.name, "pid": hccl_pid, "tid": 0, "ts": us_str(r.start),
            "dur": (r.end - r.start) / 1000, "ph": "X",
            "args": {"connection_id": r.conn, "model id": model_id, "data_type": "BF16",
                     "alg_type": "MESH", "count": counts.get(r.group, 0)},
        })  # fmt: skip
    return ev


def _step_of(steps: list[tuple[int, int, int]], start: int) -> str:
    for n, s, e in steps:
        if s <= start <= e:
            return str(n)
    return ""


def _formats(r: _Row) -> tuple[str, str]:
    if r.op_type in ("QuantBatchMatmulV3", "GroupedMatmul"):
        return "ND;FRACTAL_NZ", "ND"
    n_in = r.in_types.count(";") + 1 if r.in_types else 1
    return ";".join(["ND"] * n_in), "ND"


def _pmu_cells(
    busy_us: float, cycles_per_us: float, ratios: tuple[tuple[str, float], ...]
) -> list[Any]:
    cells: list[Any] = [f"{busy_us:.3f}", int(busy_us * cycles_per_us)]
    for _, ratio in ratios:
        cells += [f"{busy_us * ratio:.3f}", f"{ratio:.3f}"]
    return [*cells, "0.010"]


def _csv_cells(cells: list[Any]) -> str:
    """Cells joined as csv.writer's default dialect would (minimal quoting)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(cells)
    return buf.getvalue()


def _collective_rows(trial: SimTrial, rows: list[_Row], base_ns: int) -> list[_Row]:
    """One row per collective that ran on the HCCL stream: its op, over the span of its tasks."""
    conn = {r.group: r.conn for r in rows if r.kind == "comm"}
    device = _device(rows)
    c = trial.collectives
    cols = zip(c["group"], c["name"], c["op_type"], c["start_ns"], c["end_ns"], strict=True)
    out = []
    for g, name, op_type, s, e in cols:
        start, end, group = int(s) + base_ns, int(e) + base_ns, int(g)
        no_shape = ("", "", "", "")
        out.append(_Row(device, -1, -1, name, "HCCL", "HCCL", op_type, start, end,
                        conn.get(group, 0), *no_shape, "collective", group))  # fmt: skip
    return out


def _write_kernel_details(
    trial: SimTrial,
    path: Path,
    rows: list[_Row],
    coll: list[_Row],
    steps: list[tuple[int, int, int]],
) -> None:
    """Compute and communication rows only: CMO, event and HCCL-stream tasks have no op_summary
    row; a collective on the HCCL stream has one (stream and task N/A), as in the real capture.

    Same bytes as csv.writer's default dialect (CRLF, minimal quoting); the per-kernel constant
    cells are formatted once per distinct kernel because kernels repeat every layer.
    """
    hw = trial.hardware
    mhz = hw.clock_ghz * 1000
    model_id = _model_id(trial)
    n_tail = len(KERNEL_DETAILS_HEADER) - 13
    n_aic = 2 + 2 * len(_AIC_RATIOS) + 1
    n_aiv = 2 + 2 * len(_AIV_RATIOS) + 1
    ops = [r for r in rows if r.kind == "kernel"]
    if coll:
        ops = sorted(ops + coll, key=lambda r: r.start)
    static: dict[tuple[str, ...], tuple[str, str, bool, bool, int]] = {}
    lines = [_csv_cells(list(KERNEL_DETAILS_HEADER))]
    prev_end: int | None = None
    for r in ops:
        # Wait Time: idle since the previous compute row of the device, as msprof computes it.
        wait = "0" if prev_end is None else f"{max(0, r.start - prev_end) / 1000:f}"
        prev_end = r.end
        step = _step_of(steps, r.start)
        timing = f"{us_str(r.start)}\t,{us_str(r.end - r.start)},{wait}"
        key = (r.name, r.type, r.op_type, r.in_shapes, r.in_types, r.out_shapes, r.out_types)
        cached = static.get(key)
        if cached is None:
            if r.type == "HCCL":
                core = "HCCL" if r.kind == "collective" else "COMMUNICATION"
                mid = _csv_cells([r.name, r.op_type, "N/A", core])
                post = _csv_cells([0, *["N/A"] * n_tail])
                cached = (mid, post, False, False, 0)
            else:
                cube = r.type in ("AI_CORE", "MIX_AIC")
                blocks = hw.cube_cores if cube else hw.vector_cores
                mix = hw.vector_cores if r.type == "MIX_AIC" else 0
                in_fmt, out_fmt = _formats(r)
                mid = _csv_cells([r.name, r.op_type, "dynamic", r.type])
                post = _csv_cells([blocks, mix, "NO", r.in_shapes, r.in_types, in_fmt,
                                   r.out_shapes, r.out_types, out_fmt, "N/A"])  # fmt: skip
                cached = (mid, post, cube, r.type in ("AI_VECTOR_CORE", "MIX_AIC"), blocks)
            static[key] = cached
        mid, post, cube, vector, blocks = cached
        if r.type == "HCCL":
            lines.append(f"{step},{r.device},{model_id},N/A,N/A,{mid},{timing},{post}")
            continue
        dur_us = (r.end - r.start) / 1000
        pmu = _pmu_cells(dur_us * 0.95, mhz * blocks, _AIC_RATIOS) if cube else ["N/A"] * n_aic
        pmu += (
            _pmu_cells(dur_us * 0.9, mhz * hw.vector_cores, _AIV_RATIOS)
            if vector
            else ["N/A"] * n_aiv
        )
        pmu.append(f"{_AIC_RATIOS[0][1] * 100:.3f}" if cube else "N/A")
        lines.append(
            f"{step},{r.device},{model_id},{r.task_id},{r.stream},{mid},{timing},{post},"
            + ",".join(map(str, pmu))
        )
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write("\r\n".join(lines) + "\r\n")


def _write_db(
    trial: SimTrial,
    path: Path,
    pid: int,
    rank: int,
    rows: list[_Row],
    coll: list[_Row],
    steps: list[tuple[int, int, int]],
) -> None:
    """The msprof/torch_npu db tables this tool and msprof-analyze read; same tasks as the trace."""
    strings: dict[str, int] = {}

    def sid(value: str) -> int:
        if value not in strings:
            strings[value] = len(strings) + 1
        return strings[value]

    hw = trial.hardware
    model_id = _model_id(trial)
    task_rows: list[tuple[int, ...]] = []
    cti_rows: list[tuple[int, ...]] = []
    pmu_rows: list[tuple[int, int, float]] = []
    comm_rows: list[tuple[int, int, int]] = []  # (collective, globalTaskId, task type)
    # Kernels repeat every layer: intern each distinct description once.
    cti_of: dict[tuple[str, ...], tuple[int, ...]] = {}
    for gid, r in enumerate(rows, start=1):
        task_rows.append((r.start, r.end, r.device, r.conn, gid, pid, sid(r.rt_type),
                          _UINT32_MAX, r.stream, r.task_id, model_id))  # fmt: skip
        if r.kind == "comm":
            comm_rows.append((r.group, gid, sid(_PLANE_TASK.get(r.name, r.name))))
        if r.kind != "kernel":
            continue
        cube = r.type in ("AI_CORE", "MIX_AIC")
        key = (r.name, r.type, r.op_type, r.in_types, r.in_shapes, r.out_types, r.out_shapes)
        cti = cti_of.get(key)
        if cti is None:
            in_fmt, out_fmt = _formats(r)
            blocks = 0 if r.type == "HCCL" else hw.cube_cores if cube else hw.vector_cores
            cti = cti_of[key] = (
                sid(r.name), blocks, hw.vector_cores if r.type == "MIX_AIC" else 0,
                sid(r.type), sid(r.op_type), sid(in_fmt), sid(r.in_types), sid(r.in_shapes),
                sid(out_fmt), sid(r.out_types), sid(r.out_shapes), sid(""), sid("dynamic"),
                sid("NO"), 0, 0,
            )  # fmt: skip
        cti_rows.append((cti[0], gid, *cti[1:]))
        dur_us = (r.end - r.start) / 1000
        if cube:
            pmu_rows.append((gid, sid("aic_total_time"), dur_us * 0.95))
            pmu_rows.append((gid, sid("aic_mac_time"), dur_us * 0.95 * _AIC_RATIOS[0][1]))
        elif r.type != "HCCL":
            pmu_rows.append((gid, sid("aiv_time"), dur_us * 0.9))
    meta = {
        "SCHEMA_VERSION": "1.0.8",
        "SCHEMA_VERSION_MAJOR": "1",
        "SCHEMA_VERSION_MINOR": "0",
        "SCHEMA_VERSION_MICRO": "8",
        "autotune_simulated": "true",
        "note": trial.notes[0],
        "autotune_hardware": hw.summary(),
    }
    api_types = [(20000, "acl"), (15000, "model"), (10000, "node"), (5500, "communication"),
                 (5000, "runtime"), (50001, "op"), (50002, "queue"), (50003, "trace"),
                 (50004, "mstx")]  # fmt: skip
    first = steps[0][1] if steps else 0
    last = steps[-1][2] if steps else 0
    with atomic_file(path) as tmp, closing(sqlite3.connect(tmp)) as con:
        cur = con.cursor()
        # Written once and never updated: skip the journal and fsyncs.
        cur.execute("PRAGMA journal_mode = OFF")
        cur.execute("PRAGMA synchronous = OFF")
        cur.executescript(_SCHEMA)
        cur.executemany("INSERT INTO TASK VALUES (?,?,?,?,?,?,?,?,?,?,?)", task_rows)
        cur.executemany(f"INSERT INTO COMPUTE_TASK_INFO VALUES ({','.join('?' * 17)})", cti_rows)
        cur.executemany("INSERT INTO TASK_PMU_INFO VALUES (?,?,?)", pmu_rows)
        cur.executemany("INSERT INTO STEP_TIME VALUES (?,?,?)", steps)
        _write_comm_tables(cur, sid, coll, _element_counts(trial), comm_rows)
        cur.executemany("INSERT INTO STRING_IDS VALUES (?,?)", [(v, k) for k, v in strings.items()])
        cur.execute("INSERT INTO RANK_DEVICE_MAP VALUES (?,?)", (rank, _device(rows)))
        cur.executemany("INSERT INTO META_DATA VALUES (?,?)", list(meta.items()))
        cur.executemany("INSERT INTO ENUM_API_TYPE VALUES (?,?)", api_types)
        cur.execute("INSERT INTO SESSION_TIME_INFO VALUES (?,?)", (first, last))
        cur.execute("INSERT INTO NPU_INFO VALUES (?,?)", (_device(rows), "Ascend910B"))
        cur.execute("INSERT INTO HOST_INFO VALUES (?,?)", (str(pid), "simulated"))
        con.commit()


# How the HCCL planes name the tasks the Ascend Hardware rows call "Write Value", ... (the real
# capture's COMMUNICATION_TASK_INFO).
_PLANE_TASK = {"Write Value": "Notify_Record", "Notify Wait": "Notify_Wait", "SDMA": "Memcpy"}


def _write_comm_tables(
    cur: sqlite3.Cursor,
    sid: Callable[[str], int],
    coll: list[_Row],
    counts: dict[int, int],
    comm_rows: list[tuple[int, int, int]],
) -> None:
    """COMMUNICATION_OP (one row per collective) and COMMUNICATION_TASK_INFO (per HCCL task)."""
    group_name = sid("simulated%tp_group")
    bf16 = sid("BF16")
    ops = [
        (sid(r.name), r.start, r.end, r.conn, group_name, r.group + 1, 0, 0, bf16, sid("MESH"),
         counts.get(r.group, 0), sid(r.op_type), 0)
        for r in coll
    ]  # fmt: skip
    op_name = {r.group: sid(r.name) for r in coll}
    sdma, on_chip = sid("SDMA"), sid("ON_CHIP")
    tasks = [
        (op_name.get(group, 0), gid, task_type, 0, group_name, 0, 65535, 0, 0, sdma, 0, bf16,
         on_chip, group + 1)
        for group, gid, task_type in comm_rows
    ]  # fmt: skip
    cur.executemany(f"INSERT INTO COMMUNICATION_OP VALUES ({','.join('?' * 13)})", ops)
    cur.executemany(f"INSERT INTO COMMUNICATION_TASK_INFO VALUES ({','.join('?' * 14)})", tasks)


_SCHEMA = """
CREATE TABLE STRING_IDS (id INTEGER PRIMARY KEY, value TEXT);
CREATE TABLE TASK (startNs INTEGER, endNs INTEGER, deviceId INTEGER, connectionId INTEGER,
    globalTaskId INTEGER, globalPid INTEGER, taskType INTEGER, contextId INTEGER,
    streamId INTEGER, taskId INTEGER, modelId INTEGER);
CREATE INDEX TaskIndex ON TASK (startNs, globalTaskId);
CREATE TABLE COMPUTE_TASK_INFO (name INTEGER, globalTaskId INTEGER PRIMARY KEY,
    blockNum INTEGER, mixBlockNum INTEGER, taskType INTEGER, opType INTEGER,
    inputFormats INTEGER, inputDataTypes INTEGER, inputShapes INTEGER, outputFormats INTEGER,
    outputDataTypes INTEGER, outputShapes INTEGER, attrInfo INTEGER, opState INTEGER,
    hf32Eligible INTEGER, gridDim INTEGER, blockDim INTEGER);
CREATE TABLE TASK_PMU_INFO (globalTaskId INTEGER, name INTEGER, value NUMERIC);
CREATE TABLE STEP_TIME (id INTEGER, startNs INTEGER, endNs INTEGER);
CREATE TABLE COMMUNICATION_OP (opName INTEGER, startNs INTEGER, endNs INTEGER,
    connectionId INTEGER, groupName INTEGER, opId INTEGER PRIMARY KEY, relay INTEGER,
    retry INTEGER, dataType INTEGER, algType INTEGER, count NUMERIC, opType INTEGER,
    waitNs INTEGER);
CREATE TABLE COMMUNICATION_TASK_INFO (name INTEGER, globalTaskId INTEGER, taskType INTEGER,
    planeId INTEGER, groupName INTEGER, notifyId INTEGER, rdmaType INTEGER, srcRank INTEGER,
    dstRank INTEGER, transportType INTEGER, size INTEGER, dataType INTEGER, linkType INTEGER,
    opId INTEGER);
CREATE TABLE META_DATA (name TEXT, value TEXT);
CREATE TABLE RANK_DEVICE_MAP (rankId INTEGER, deviceId INTEGER);
CREATE TABLE ENUM_API_TYPE (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE SESSION_TIME_INFO (startTimeNs INTEGER, endTimeNs INTEGER);
CREATE TABLE NPU_INFO (id INTEGER, name TEXT);
CREATE TABLE HOST_INFO (hostUid TEXT, hostName TEXT);
"""
