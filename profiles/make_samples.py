"""Builds the sample profiles in this folder (run from anywhere: `python profiles/make_samples.py`).

Every sample is one or two dense W8A8 decode layers laid out as in docs/analysis.md, with
hand-picked times (µs offsets in LAYER below) so the per-site numbers in each README can be checked
by hand. Formats follow msprof's writers: Ascend Hardware events with `ts` as a 3-decimal µs string.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OS_PID = 4242
HW_PID = (OS_PID << 10) | (14 << 5) | 0  # device 0
CANN_PID = (OS_PID << 10) | (7 << 5) | 31
COMPUTE, PREFETCH = 2, 7
T0 = 1_776_130_000_000_000_000  # ns, local epoch
LAYER_US = 250  # a new layer starts every 250 µs

# Compute-stream ops of one layer: (kind, op type, start µs, end µs). Kernel names follow the
# aclnn `aclnn<Api>_<impl>_<OpType>` pattern; comm ops are hcom tasks.
OPS: list[tuple[str, str, float, float]] = [
    ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AddRmsNorm", 0, 10),
    ("hcom_allGather__512_0_1", "hcom_allGather_", 10, 20),
    ("aclnnAscendQuant_AscendQuantV2_AscendQuantV2", "AscendQuantV2", 21, 27),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "QuantBatchMatmulV3", 28, 48),
    ("aclnnRmsNorm_RmsNorm_RmsNorm", "RmsNorm", 48, 52),
    ("split_qkv_rmsnorm_rope_kernel", "SplitQkvRmsNormRope", 52, 56),
    (
        "aclnnFusedInferAttentionScoreV3_FusedInferAttentionScore_FusedInferAttentionScore",
        "FusedInferAttentionScore",
        56,
        96,
    ),
    ("aclnnAscendQuant_AscendQuantV2_AscendQuantV2", "AscendQuantV2", 97, 100),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "QuantBatchMatmulV3", 103, 123),
    ("hcom_reduceScatter__512_0_1", "hcom_reduceScatter_", 123, 133),
    ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AddRmsNorm", 133.2, 140),
    ("hcom_allGather__512_0_1", "hcom_allGather_", 140, 150),
    ("aclnnAscendQuant_AscendQuantV2_AscendQuantV2", "AscendQuantV2", 150, 153),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "QuantBatchMatmulV3", 153, 193),
    ("aclnnSwiGlu_SwiGlu_SwiGlu", "SwiGlu", 193.2, 200),
    ("aclnnAscendQuant_AscendQuantV2_AscendQuantV2", "AscendQuantV2", 200.8, 203.8),
    (
        "aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3",
        "QuantBatchMatmulV3",
        205.5,
        235.5,
    ),
    ("hcom_reduceScatter__512_0_1", "hcom_reduceScatter_", 235.5, 245.5),
]
# Prefetches: (site, compute record start µs, CMO start, CMO end, join wait start, join wait end).
# The record takes 0.1 µs; the prefetch stream waits from record+0.2 to CMO start-0.1 and records
# 0.1 µs after the CMO ends. join None = joined by a later prefetch's wait (mlp.gate_up).
PREFETCHES: list[tuple[str, float, float, float, tuple[float, float] | None]] = [
    ("attn.qkv", 20, 20.5, 25.5, (27, 27.5)),
    ("attn.o", 96, 96.5, 102.5, (100, 103)),
    ("mlp.gate_up", 133, 133.5, 148.5, None),
    ("mlp.down", 193, 193.5, 199.5, (200, 200.5)),
    ("attn.o", 200.6, 201, 205, (204, 205.5)),
]


def ns(us: float) -> int:
    return round(us * 1000)


def layer_tasks(layer: int) -> list[dict[str, Any]]:
    """Device tasks of one layer: dicts with stream, name, kind, op, start, end (ns)."""
    base = T0 + ns(layer * LAYER_US)
    out: list[dict[str, Any]] = []
    for name, op, b, e in OPS:
        kind = "comm" if name.startswith("hcom_") else "kernel"
        out.append(
            dict(stream=COMPUTE, name=name, kind=kind, op=op, start=base + ns(b), end=base + ns(e))
        )
    for _site, rec, cb, ce, join in PREFETCHES:
        out.append(
            dict(
                stream=COMPUTE,
                name="record",
                kind="record",
                op="",
                start=base + ns(rec),
                end=base + ns(rec + 0.1),
            )
        )
        out.append(
            dict(
                stream=PREFETCH,
                name="wait",
                kind="wait",
                op="",
                start=base + ns(rec + 0.2),
                end=base + ns(cb - 0.1),
            )
        )
        out.append(
            dict(
                stream=PREFETCH,
                name="cmo",
                kind="cmo",
                op="",
                start=base + ns(cb),
                end=base + ns(ce),
            )
        )
        out.append(
            dict(
                stream=PREFETCH,
                name="record",
                kind="record",
                op="",
                start=base + ns(ce + 0.1),
                end=base + ns(ce + 0.2),
            )
        )
        if join:
            out.append(
                dict(
                    stream=COMPUTE,
                    name="wait",
                    kind="wait",
                    op="",
                    start=base + ns(join[0]),
                    end=base + ns(join[1]),
                )
            )
    out.sort(key=lambda t: (t["start"], t["stream"]))
    return out


def us_str(t: int, tab: bool = False) -> str:
    return f"{t // 1000}.{t % 1000:03d}" + ("\t" if tab else "")


def hw_event(t: dict[str, Any], task_id: int, legacy: bool) -> dict[str, Any]:
    kind = t["kind"]
    if kind == "kernel":
        name, ttype = t["name"], ("KERNEL_AIVEC" if legacy else "AI_VECTOR_CORE")
        if "Matmul" in t["name"] or "Attention" in t["name"]:
            ttype = "KERNEL_AICORE" if legacy else ("MIX_AIC" if "Attention" in name else "AI_CORE")
    elif kind == "comm":
        name, ttype = t["name"], "COMMUNICATION"
    elif kind == "cmo":
        name = ttype = "SDMA_SQE" if legacy else "CMO"
    elif kind == "sdma":
        name = ttype = "SDMA_SQE"
    elif kind == "wait":
        name, ttype = "EVENT_WAIT", ("EVENT_WAIT_SQE" if legacy else "EVENT_WAIT")
    else:
        name, ttype = "EVENT_RECORD", ("EVENT_RECORD_SQE" if legacy else "EVENT_RECORD")
    args = {
        "Model Id": 4294967295,
        "Task Type": ttype,
        ("Stream Id" if legacy else "Physic Stream Id"): t["stream"],
        "Task Id": task_id,
        "Batch Id": 0,
        "Subtask Id": 4294967295,
        "connection_id": 5000 + task_id,
    }
    return {
        "name": name,
        "pid": HW_PID,
        "tid": t["stream"],
        "ts": us_str(t["start"], legacy),
        "dur": (t["end"] - t["start"]) / 1000,
        "ph": "X",
        "args": args,
    }


def meta(pid: int, key: str, value: str, tid: int = 0) -> dict[str, Any]:
    arg = {"process_name": "name", "process_labels": "labels", "thread_name": "name"}[key]
    return {"name": key, "pid": pid, "tid": tid, "ph": "M", "args": {arg: value}}


def trace_events(layers: int, legacy: bool, steps: bool) -> list[dict[str, Any]]:
    ev: list[dict[str, Any]] = [
        meta(OS_PID, "process_name", "Python"),
        meta(OS_PID, "process_labels", "CPU"),
    ]
    for layer in range(layers):
        b = T0 + ns(layer * LAYER_US)
        if steps:
            ev.append(
                {
                    "ph": "X",
                    "name": f"ProfilerStep#{5 + layer}",
                    "pid": OS_PID,
                    "tid": OS_PID,
                    "ts": us_str(b - 30_000),
                    "dur": 248.0,
                    "cat": "cpu_op",
                    "args": {"Sequence number": -1, "Fwd thread id": 0},
                }
            )
        ev.append(
            {
                "ph": "X",
                "name": "vllm::prefetch_preprocess",
                "pid": OS_PID,
                "tid": OS_PID,
                "ts": us_str(b - 25_000),
                "dur": 3.1,
                "cat": "cpu_op",
                "args": {"Sequence number": -1, "Fwd thread id": 0},
            }
        )
    ev.append(meta(CANN_PID, "process_name", "CANN"))
    ev.append(
        {
            "name": "AscendCL@aclrtCmoAsync",
            "pid": CANN_PID,
            "tid": OS_PID,
            "ts": us_str(T0 - 24_000),
            "dur": 2.5,
            "ph": "X",
            "args": {
                "Thread Id": OS_PID,
                "Mode": "ACL_RTS",
                "level": "acl",
                "id": "aclrtCmoAsync",
                "item_id": "0",
                "connection_id": 7001,
            },
        }
    )
    ev += [
        meta(HW_PID, "process_name", "Ascend Hardware"),
        meta(HW_PID, "process_labels", "NPU 0"),
        meta(HW_PID, "thread_name", f"Stream {COMPUTE}", COMPUTE),
        meta(HW_PID, "thread_name", f"Stream {PREFETCH}", PREFETCH),
    ]
    task_id = 0
    for layer in range(layers):
        tasks = layer_tasks(layer)
        if legacy:
            # A TensorMove-style SDMA copy on the compute stream after the layer: not a prefetch.
            b = T0 + ns(layer * LAYER_US)
            tasks.append(
                dict(
                    stream=COMPUTE,
                    name="sdma",
                    kind="sdma",
                    op="",
                    start=b + ns(246),
                    end=b + ns(248),
                )
            )
        for t in tasks:
            task_id += 1
            ev.append(hw_event(t, task_id, legacy))
    return ev


def write_trace(path: Path, events: list[dict[str, Any]]) -> str:
    text = "[\n" + ",\n".join(json.dumps(e) for e in events) + "\n]\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text


def profiler_info(root: Path, level: str, rank: int | str = 0) -> None:
    info = {
        "config": {
            "common_config": {"activities": ["ProfilerActivity.CPU", "ProfilerActivity.NPU"]},
            "experimental_config": {"_profiler_level": level, "_export_type": ["text"]},
        },
        "rank_id": rank,
        "torch_npu_version": "2.14.0",
        "cann_version": "8.5.0",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "profiler_info_0.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


def kernel_details(path: Path, layers: int) -> None:
    head = (
        "Step Id,Device_id,Model ID,Task ID,Stream ID,Name,Type,OP State,Accelerator Core,"
        "Start Time(us),Duration(us),Wait Time(us),Block Num"
    )
    rows = [head]
    for layer in range(layers):
        for t in layer_tasks(layer):
            if t["kind"] not in ("kernel", "comm"):
                continue
            comm = t["kind"] == "comm"
            core = (
                "COMMUNICATION"
                if comm
                else ("AI_CORE" if "Matmul" in t["name"] else "AI_VECTOR_CORE")
            )
            rows.append(
                ",".join(
                    [
                        str(5 + layer),
                        "0",
                        "4294967295",
                        "N/A" if comm else "1",
                        "N/A" if comm else str(COMPUTE),
                        t["name"],
                        t["op"],
                        "N/A" if comm else "dynamic",
                        core,
                        us_str(t["start"], True),
                        f"{(t['end'] - t['start']) / 1000:.3f}",
                        "0.000000",
                        "0" if comm else "40",
                    ]
                )
            )
    path.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")


# The db export's tables this folder's samples use (formats doc §4.2), indented as the db
# stores its schema text.
DB_TABLES = """
        CREATE TABLE STRING_IDS (id INTEGER PRIMARY KEY, value TEXT);
        CREATE TABLE TASK (startNs INTEGER, endNs INTEGER, deviceId INTEGER, connectionId INTEGER,
            globalTaskId INTEGER, globalPid INTEGER, taskType INTEGER, contextId INTEGER,
            streamId INTEGER, taskId INTEGER, modelId INTEGER);
        CREATE TABLE COMPUTE_TASK_INFO (name INTEGER, globalTaskId INTEGER PRIMARY KEY,
            blockNum INTEGER, mixBlockNum INTEGER, taskType INTEGER, opType INTEGER);
        CREATE TABLE STEP_TIME (id INTEGER, startNs INTEGER, endNs INTEGER);
"""


def string_ids(con: sqlite3.Connection) -> Callable[[str], int]:
    """The STRING_IDS id of a string, interned on first use (the db stores strings once)."""
    ids: dict[str, int] = {}

    def sid(s: str) -> int:
        if s not in ids:
            ids[s] = len(ids) + 1
            con.execute("INSERT INTO STRING_IDS VALUES (?, ?)", (ids[s], s))
        return ids[s]

    return sid


def build_db(path: Path, layers: int) -> None:
    """The db export: TASK + STRING_IDS + COMPUTE_TASK_INFO + STEP_TIME (formats doc §4.2)."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.executescript(DB_TABLES)
    sid = string_ids(con)

    gid = 0
    for layer in range(layers):
        b = T0 + ns(layer * LAYER_US)
        con.execute("INSERT INTO STEP_TIME VALUES (?, ?, ?)", (5 + layer, b - 30_000, b + ns(248)))
        for t in layer_tasks(layer):
            gid += 1
            kind = t["kind"]
            rts = {
                "kernel": "KERNEL_AIVEC",
                "comm": "COMMUNICATION",
                "cmo": "CMO",
                "wait": "EVENT_WAIT",
                "record": "EVENT_RECORD",
            }[kind]
            if kind == "kernel" and ("Matmul" in t["name"] or "Attention" in t["name"]):
                rts = "KERNEL_MIX_AIC" if "Attention" in t["name"] else "KERNEL_AICORE"
            con.execute(
                "INSERT INTO TASK VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    t["start"],
                    t["end"],
                    0,
                    9000 + gid,
                    gid,
                    OS_PID,
                    sid(rts),
                    4294967295,
                    t["stream"],
                    gid,
                    4294967295,
                ),
            )
            if kind in ("kernel", "comm") and not t["name"].startswith("hcom_"):
                core = (
                    "AI_CORE"
                    if rts == "KERNEL_AICORE"
                    else ("MIX_AIC" if rts == "KERNEL_MIX_AIC" else "AI_VECTOR_CORE")
                )
                con.execute(
                    "INSERT INTO COMPUTE_TASK_INFO VALUES (?,?,?,?,?,?)",
                    (sid(t["name"]), gid, 40, 0, sid(core), sid(t["op"])),
                )
    con.commit()
    con.execute("VACUUM")
    con.close()


def main() -> None:
    # (a) current naming, 2 layers (one per step), kernel_details.csv beside the trace.
    a = HERE / "dense_current_ascend_pt"
    profiler_info(a, "Level1", 0)
    write_trace(
        a / "ASCEND_PROFILER_OUTPUT" / "trace_view.json", trace_events(2, legacy=False, steps=True)
    )
    kernel_details(a / "ASCEND_PROFILER_OUTPUT" / "kernel_details.csv", 2)
    # (b) older naming, 1 layer, no step markers, Level0.
    b = HERE / "dense_legacy_ascend_pt"
    profiler_info(b, "Level0", "1")
    (b / "profiler_info_0.json").rename(b / "profiler_info_1.json")
    write_trace(
        b / "ASCEND_PROFILER_OUTPUT" / "trace_view.json", trace_events(1, legacy=True, steps=False)
    )
    # (c) the (a) trace cut off inside the first task of layer 2.
    c = HERE / "truncated_ascend_pt"
    profiler_info(c, "Level1", 0)
    full = (
        "[\n"
        + ",\n".join(json.dumps(e) for e in trace_events(2, legacy=False, steps=True))
        + "\n]\n"
    )
    cut = full.index('"ts": "' + us_str(T0 + ns(LAYER_US)) + '"') + 20
    out = c / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(full[:cut], encoding="utf-8")
    # (d) db export of the (a) timeline.
    d = HERE / "dense_db_ascend_pt"
    profiler_info(d, "Level1", 0)
    (d / "ASCEND_PROFILER_OUTPUT").mkdir(parents=True, exist_ok=True)
    build_db(d / "ASCEND_PROFILER_OUTPUT" / "ascend_pytorch_profiler_0.db", 2)


if __name__ == "__main__":
    main()
