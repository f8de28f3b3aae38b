"""Builds the other-stack samples in this folder (run from anywhere:
`python profiles/make_other_stacks.py`).

Each sample is a few decode layers laid out as the stack's own source issues them (the op order,
the streams, where each prefetch is issued and joined; files and commits in each sample's
README), with hand-picked times (µs offsets below) so the README's numbers can be checked by
hand. Formats follow msprof's writers, as make_samples.py does: Ascend Hardware events with `ts`
as a 3-decimal µs string, kernel_details.csv with CRLF lines, the db's TASK / STRING_IDS /
COMPUTE_TASK_INFO / STEP_TIME / CANN_API tables.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from make_samples import DB_TABLES, meta, ns, profiler_info, string_ids, us_str, write_trace

HERE = Path(__file__).resolve().parent
OS_PID = 5151
HW_PID = (OS_PID << 10) | (14 << 5) | 0  # device 0
T0 = 1_776_200_000_000_000_000  # ns, local epoch
COMPUTE = 2

# Kernel names per op type: (name, accelerator core). aclnn kernels follow
# `aclnn<Api>_<impl>_<OpType>`; the names carry the op type where kernel_details.csv is absent.
KERNELS: dict[str, tuple[str, str]] = {
    "AddRmsNorm": ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AI_VECTOR_CORE"),
    "RmsNorm": ("aclnnRmsNorm_RmsNorm_RmsNorm", "AI_VECTOR_CORE"),
    "MatMulV2": ("aclnnMatmul_MatMulCommon_MatMulV2", "AI_CORE"),
    "BatchMatMulV2": ("aclnnBatchMatMul_BatchMatMulCommon_BatchMatMulV2", "AI_CORE"),
    "SwiGlu": ("aclnnSwiGlu_SwiGlu_SwiGlu", "AI_VECTOR_CORE"),
    "FusedInferAttentionScore": (
        "aclnnFusedInferAttentionScoreV3_FusedInferAttentionScore_FusedInferAttentionScore",
        "MIX_AIC",
    ),
    "SparseFlashAttention": (
        "aclnnSparseFlashAttention_SparseFlashAttention_SparseFlashAttention",
        "MIX_AIC",
    ),
    "KvRmsNormRopeCache": (
        "aclnnKvRmsNormRopeCache_KvRmsNormRopeCache_KvRmsNormRopeCache",
        "AI_VECTOR_CORE",
    ),
    "ApplyRotaryPosEmb": (
        "aclnnApplyRotaryPosEmb_ApplyRotaryPosEmb_ApplyRotaryPosEmb",
        "AI_VECTOR_CORE",
    ),
    "SplitQkvRmsNormRope": ("split_qkv_rmsnorm_rope_kernel", "AI_VECTOR_CORE"),
}
# Runtime (host) task type of each accelerator core, as the db's TASK.taskType holds it.
RT_TYPE = {
    "AI_VECTOR_CORE": "KERNEL_AIVEC",
    "AI_CORE": "KERNEL_AICORE",
    "MIX_AIC": "KERNEL_MIX_AIC",
}


@dataclass(frozen=True)
class Task:
    """One device task: stream, kind (kernel|comm|hccl|cmo|wait|record), op, µs times."""

    stream: int
    kind: str
    op: str  # op type of a kernel, "hcom_allReduce_" for a collective, HCCL's task type
    start: float
    end: float


def k(op: str, start: float, end: float) -> Task:
    return Task(COMPUTE, "kernel", op, start, end)


def rec(stream: int, start: float, end: float) -> Task:
    return Task(stream, "record", "", start, end)


def wait(stream: int, start: float, end: float) -> Task:
    return Task(stream, "wait", "", start, end)


def allreduce(start: float, end: float) -> Task:
    return Task(COMPUTE, "comm", "hcom_allReduce_", start, end)


def hccl_allreduce(hccl: int, r0: float) -> list[Task]:
    """A TP all-reduce as real 910B captures show it: HCCL's own stream waits for a compute
    record, runs Notify Wait / SDMA / Write Value and records; the compute stream waits."""
    return [
        rec(COMPUTE, r0, r0 + 0.1),
        wait(hccl, r0 - 0.2, r0 + 0.2),
        Task(hccl, "hccl", "Notify Wait", r0 + 0.2, r0 + 2),
        Task(hccl, "hccl", "SDMA", r0 + 2, r0 + 9),
        Task(hccl, "hccl", "Write Value", r0 + 9, r0 + 10),
        rec(hccl, r0 + 10, r0 + 10.1),
        wait(COMPUTE, r0 + 0.1, r0 + 10.2),
    ]


def shifted(tasks: list[Task], base: float) -> list[Task]:
    return [Task(t.stream, t.kind, t.op, t.start + base, t.end + base) for t in tasks]


# ---------------------------------------------------------------------------------------------
# SGLang on NPU, Qwen3 dense (BF16), TP > 1, decode, eager. One decoder layer as
# Qwen3DecoderLayer.forward issues it: input norm, QKV, split_qkv_rmsnorm_rope, attention, o_proj
# (no reduce), prepare_mlp: all-reduce, prepare_weight_cache([gate_up, down]) on the CMO stream,
# post-attention norm; the MLP (gate_up, SwiGLU, down + its all-reduce); wait_cmo_stream.
SGL_CMO, SGL_HCCL = 9, 5
SGLANG_LAYER: list[Task] = [
    k("AddRmsNorm", 0, 6),
    k("MatMulV2", 6, 20),
    k("SplitQkvRmsNormRope", 20, 24),
    k("FusedInferAttentionScore", 24, 44),
    k("MatMulV2", 44, 54),
    *hccl_allreduce(SGL_HCCL, 54.0),
    rec(COMPUTE, 64.2, 64.3),  # prepare_weight_cache: cmo_stream.wait_stream(current)
    wait(SGL_CMO, 64.0, 64.4),
    Task(SGL_CMO, "cmo", "CMO", 64.4, 104.4),  # gate_up_proj.weight, whole
    Task(SGL_CMO, "cmo", "CMO", 104.4, 124.4),  # down_proj.weight, whole
    k("AddRmsNorm", 64.5, 70.5),
    k("MatMulV2", 70.5, 100.5),
    k("SwiGlu", 100.5, 104.5),
    k("MatMulV2", 104.5, 119.5),
    *hccl_allreduce(SGL_HCCL, 119.5),
    rec(SGL_CMO, 124.5, 124.6),  # wait_cmo_stream: current.wait_stream(cmo_stream)
    wait(COMPUTE, 129.7, 130.5),
]
SGLANG_BASES = [0, 140, 320, 460]  # two steps of two layers
SGLANG_STEPS = [(10, -10, 300), (11, 300, 620)]  # ProfilerStep#N host spans, µs

# MindIE-LLM, DeepSeek-V3.2 sparse-attention decode: the o_proj prefetch is issued after
# sfa_preprocess and before the attention kernels, ratio 1 (the whole weight); the only join is
# prefetch_weight_postprocess after the model's final norm. sfa_preprocess is abridged to its
# q_a_proj / q_a_layernorm / kv_a_proj / kv_rmsnorm_rope_cache kernels; the MLP is dense.
MIE_PF = 10
MINDIE_LAYER: list[Task] = [
    k("AddRmsNorm", 0, 5),
    k("MatMulV2", 5, 12),
    k("RmsNorm", 12, 14),
    k("MatMulV2", 14, 20),
    k("KvRmsNormRopeCache", 20, 23),
    rec(COMPUTE, 23.0, 23.1),  # prefetch_weight_preprocess(o_proj.weight)
    wait(MIE_PF, 22.9, 23.2),
    Task(MIE_PF, "cmo", "SDMA_SQE", 23.3, 47.3),  # o_proj.weight, whole (ratio 1)
    k("SparseFlashAttention", 23.2, 43.2),
    k("BatchMatMulV2", 43.2, 49.2),  # sfa_postprocess: bmm with kv_b_proj_w_v
    k("MatMulV2", 49.2, 61.2),  # mla_epilog: o_proj
    allreduce(61.2, 71.2),
    k("AddRmsNorm", 71.2, 76.2),
    k("MatMulV2", 76.2, 96.2),
    k("SwiGlu", 96.2, 99.2),
    k("MatMulV2", 99.2, 109.2),
    allreduce(109.2, 117.2),
]
MINDIE_TAIL: list[Task] = [  # after the step's last layer, µs from the step start
    rec(MIE_PF, 200.0, 200.1),  # prefetch_weight_postprocess: current.wait_stream(prefetch)
    k("AddRmsNorm", 240, 245),  # the model's final norm
    wait(COMPUTE, 245.0, 245.6),
    k("MatMulV2", 245.6, 265.6),  # lm_head
]
MINDIE_STEP_BASES = [0, 300]
MINDIE_STEPS = [(20, -5, 295), (21, 295, 595)]

# A custom layout with two prefetch streams (BF16 dense model code calling torch_npu.npu_prefetch
# directly): qkv_proj on stream 8, issued before the input norm and joined before the QKV matmul;
# down_proj on stream 9, issued before SwiGLU and joined before the down matmul.
TWO_LAYER: list[Task] = [
    rec(COMPUTE, 0.0, 0.1),
    wait(8, -0.4, 0.2),
    Task(8, "cmo", "CMO", 0.2, 7.2),
    rec(8, 7.3, 7.4),
    k("AddRmsNorm", 0.5, 8.5),
    wait(COMPUTE, 8.5, 9.0),
    k("MatMulV2", 9.0, 21.0),
    k("RmsNorm", 21, 24),
    k("ApplyRotaryPosEmb", 24, 27),
    k("FusedInferAttentionScore", 27, 47),
    k("MatMulV2", 47, 57),
    allreduce(57, 67),
    k("AddRmsNorm", 67, 75),
    k("MatMulV2", 75, 105),
    rec(COMPUTE, 105.0, 105.1),
    wait(9, 104.8, 105.2),
    Task(9, "cmo", "CMO", 105.2, 114.2),
    rec(9, 114.3, 114.4),
    k("SwiGlu", 105.3, 111.3),
    wait(COMPUTE, 111.3, 114.5),
    k("MatMulV2", 114.5, 129.5),
    allreduce(129.5, 139.5),
]
TWO_BASES = [0, 150, 320, 470]
TWO_STEPS = [(40, -5, 315), (41, 315, 635)]

# A prefetch whose window holds a matmul: o_proj prefetched on stream 7 right after the QKV
# matmul, joined before o_proj, so it runs beside q/k norm, RoPE and the attention kernel.
MM_PF = 7
MATMUL_LAYER: list[Task] = [
    k("AddRmsNorm", 0, 6),
    k("MatMulV2", 6, 18),
    rec(COMPUTE, 18.0, 18.1),
    wait(MM_PF, 17.9, 18.3),
    Task(MM_PF, "cmo", "CMO", 18.4, 40.4),
    rec(MM_PF, 40.5, 40.6),
    k("RmsNorm", 18.2, 21.2),
    k("ApplyRotaryPosEmb", 21.2, 24.2),
    k("FusedInferAttentionScore", 24.2, 44.2),
    wait(COMPUTE, 44.2, 45.0),
    k("MatMulV2", 45.0, 55.0),
    allreduce(55.0, 65.0),
    k("AddRmsNorm", 65, 71),
    k("MatMulV2", 71, 86),
    k("SwiGlu", 86, 89),
    k("MatMulV2", 89, 97),
]
MATMUL_BASES = [0, 100, 240, 340]
MATMUL_STEPS = [(30, -40, 185), (31, 185, 420)]
LAUNCH_LEAD_US = 30  # the host launches each kernel this long before it starts on the device


# ---------------------------------------------------------------------------------------------
# Writers


def event(t: Task, task_id: int) -> dict[str, Any]:
    """An Ascend Hardware task event in msprof's layout."""
    if t.kind == "kernel":
        name, ttype = KERNELS[t.op]
    elif t.kind == "comm":
        name, ttype = "hcom_allReduce__512_0_1", "COMMUNICATION"
    elif t.kind in ("hccl", "cmo"):
        name = ttype = t.op
    else:
        name = ttype = "EVENT_WAIT" if t.kind == "wait" else "EVENT_RECORD"
    start, end = T0 + ns(t.start), T0 + ns(t.end)
    return {
        "name": name,
        "pid": HW_PID,
        "tid": t.stream,
        "ts": us_str(start),
        "dur": (end - start) / 1000,
        "ph": "X",
        "args": {
            "Model Id": 4294967295,
            "Task Type": ttype,
            "Physic Stream Id": t.stream,
            "Task Id": task_id,
            "Batch Id": 0,
            "Subtask Id": 4294967295,
            "connection_id": 6000 + task_id,
        },
    }


def trace(tasks: list[Task], steps: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    ev: list[dict[str, Any]] = [
        meta(OS_PID, "process_name", "Python"),
        meta(OS_PID, "process_labels", "CPU"),
    ]
    for number, b, e in steps:
        ev.append(
            {
                "ph": "X",
                "name": f"ProfilerStep#{number}",
                "pid": OS_PID,
                "tid": OS_PID,
                "ts": us_str(T0 + ns(b)),
                "dur": e - b,
                "cat": "cpu_op",
                "args": {"Sequence number": -1, "Fwd thread id": 0},
            }
        )
    ev += [
        meta(HW_PID, "process_name", "Ascend Hardware"),
        meta(HW_PID, "process_labels", "NPU 0"),
    ]
    for s in sorted({t.stream for t in tasks}):
        ev.append(meta(HW_PID, "thread_name", f"Stream {s}", s))
    ordered = sorted(tasks, key=lambda t: (t.start, t.stream))
    ev += [event(t, i + 1) for i, t in enumerate(ordered)]
    return ev


def kernel_details(path: Path, tasks: list[Task], steps: list[tuple[int, float, float]]) -> None:
    """kernel_details.csv (Level1 K2 header, PMU columns left out) with each kernel's Step Id:
    the step whose host span it was launched in (here: starts in)."""
    head = (
        "Step Id,Device_id,Model ID,Task ID,Stream ID,Name,Type,OP State,Accelerator Core,"
        "Start Time(us),Duration(us),Wait Time(us),Block Num"
    )
    rows = [head]
    for i, t in enumerate(sorted(tasks, key=lambda t: (t.start, t.stream))):
        if t.kind not in ("kernel", "comm"):
            continue
        step = next(n for n, b, e in steps if b <= t.start < e)
        comm = t.kind == "comm"
        name, core = ("hcom_allReduce__512_0_1", "COMMUNICATION") if comm else KERNELS[t.op]
        rows.append(
            ",".join(
                [
                    str(step),
                    "0",
                    "4294967295",
                    "N/A" if comm else str(i + 1),
                    "N/A" if comm else str(COMPUTE),
                    name,
                    t.op,
                    "N/A" if comm else "dynamic",
                    core,
                    us_str(T0 + ns(t.start), True),
                    f"{t.end - t.start:.3f}",
                    "0.000000",
                    "0" if comm else "40",
                ]
            )
        )
    path.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")


def build_db(path: Path, tasks: list[Task], steps: list[tuple[int, float, float]]) -> None:
    """The db export with the host side torch_npu links steps through: STEP_TIME (host spans) and
    the node-level CANN_API launch of every kernel, joined to TASK by connectionId."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.executescript(
        DB_TABLES
        + """
        CREATE TABLE ENUM_API_TYPE (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE CANN_API (startNs INTEGER, endNs INTEGER, type INTEGER, globalTid INTEGER,
            connectionId INTEGER PRIMARY KEY, name INTEGER);
        INSERT INTO ENUM_API_TYPE VALUES (10000, 'node'), (20000, 'acl');
    """
    )
    sid = string_ids(con)
    for number, b, e in steps:
        con.execute("INSERT INTO STEP_TIME VALUES (?, ?, ?)", (number, T0 + ns(b), T0 + ns(e)))
    for gid, t in enumerate(sorted(tasks, key=lambda t: (t.start, t.stream)), 1):
        conn = 9000 + gid
        if t.kind == "kernel":
            name, core = KERNELS[t.op]
            rts = RT_TYPE[core]
        elif t.kind == "comm":
            name, core, rts = "hcom_allReduce__512_0_1", "", "COMMUNICATION"
        else:
            name, core = "", ""
            rts = {"cmo": "CMO", "wait": "EVENT_WAIT", "record": "EVENT_RECORD"}.get(t.kind, t.op)
        start, end = T0 + ns(t.start), T0 + ns(t.end)
        con.execute(
            "INSERT INTO TASK VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (start, end, 0, conn, gid, OS_PID, sid(rts), 4294967295, t.stream, gid, 4294967295),
        )
        if t.kind == "kernel":
            con.execute(
                "INSERT INTO COMPUTE_TASK_INFO VALUES (?,?,?,?,?,?)",
                (sid(name), gid, 40, 0, sid(core), sid(t.op)),
            )
            launch = start - ns(LAUNCH_LEAD_US)
            con.execute(
                "INSERT INTO CANN_API VALUES (?,?,?,?,?,?)",
                (launch, launch + ns(2), 10000, OS_PID << 32 | OS_PID, conn, sid("launch")),
            )
    con.commit()
    con.execute("VACUUM")
    con.close()


def write(root: Path, events: list[dict[str, Any]]) -> None:
    profiler_info(root, "Level1", 0)
    write_trace(root / "ASCEND_PROFILER_OUTPUT" / "trace_view.json", events)


def main() -> None:
    sglang = [t for b in SGLANG_BASES for t in shifted(SGLANG_LAYER, b)]
    a = HERE / "sglang_qwen3_ascend_pt"
    write(a, trace(sglang, SGLANG_STEPS))
    kernel_details(a / "ASCEND_PROFILER_OUTPUT" / "kernel_details.csv", sglang, SGLANG_STEPS)

    mindie = [
        t
        for s in MINDIE_STEP_BASES
        for t in shifted(MINDIE_LAYER, s) + shifted(MINDIE_LAYER, s + 120) + shifted(MINDIE_TAIL, s)
    ]
    write(HERE / "mindie_o_proj_ascend_pt", trace(mindie, MINDIE_STEPS))

    two = [t for b in TWO_BASES for t in shifted(TWO_LAYER, b)]
    write(HERE / "two_streams_ascend_pt", trace(two, TWO_STEPS))

    mm = [t for b in MATMUL_BASES for t in shifted(MATMUL_LAYER, b)]
    d = HERE / "matmul_overlap_ascend_pt"
    profiler_info(d, "Level1", 0)
    (d / "ASCEND_PROFILER_OUTPUT").mkdir(parents=True, exist_ok=True)
    build_db(d / "ASCEND_PROFILER_OUTPUT" / "ascend_pytorch_profiler_0.db", mm, MATMUL_STEPS)
    print("wrote", a.name, "mindie_o_proj_ascend_pt two_streams_ascend_pt", d.name)


if __name__ == "__main__":
    main()
