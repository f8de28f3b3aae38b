"""The simulator backend: an analytic decode-step twin of vllm-ascend 0.23 on one Ascend die.

Per decode step and layer it lays out the op sequence of docs/analysis.md on the compute stream
(roofline durations; quantize + int8 matmul for quantized linears, bf16 matmul otherwise) and the
CMO prefetches on the single prefetch stream. A CMO shares HBM bandwidth with the op it runs beside
(fluid sharing), the join waits when it ends late, and the next matmul reads the prefetched bytes
from L2 at a hit fraction that falls once the resident prefetched bytes exceed the usable L2. Which
prefetches fire, and how many bytes they move, comes from `autotune.target.resolve_prefetches`.
Everything here is MODELLED, not measured; the parameters are the estimates of `autotune.hardware`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autotune._io import read_text
from autotune.errors import AutotuneError
from autotune.hardware import Hardware, load_hardware
from autotune.models import STATIC_W8A8, ModelSpec, scheme_bits, weight_bytes
from autotune.target import (
    ResolvedPrefetch,
    Setup,
    check_setup,
    resolve_prefetches,
    row_op_of,
    sequence_parallel,
    spec_of,
    validate_config,
    vendor_default_config,
)
from autotune.workloads._sim_writer import write_profile
from autotune.workloads.base import TrialResult, Workload, setup_of

# Fixed base of simulated timestamps: local Unix-epoch ns (2026-04-14), never a float.
BASE_NS = 1_776_130_000_000_000_000
COMPUTE_STREAM = 2
PREFETCH_STREAM = 5
DEVICE_ID = 0
# vllm bench serve runs num_prompts = BENCH_WAVES x max_num_seqs prompts at that concurrency.
BENCH_WAVES = 4
# Share of t_sync each piece of one prefetch's synchronisation takes on the compute stream:
# the record task, the gap after it, the gap before the join and the join's minimum wait.
_REC_SHARE, _GAP_SHARE, _WAIT_SHARE = 0.2, 0.15, 0.5
# Prefetch-stream costs (not on the compute stream's critical path) [est].
_PF_WAIT_NS = 100.0  # event wait on the prefetch stream before a CMO starts
_PF_RECORD_NS = 50.0  # event record after the last CMO of a join
_SIGNAL_NS = 50.0  # record -> join wake-up latency
_UINT32_MAX = 4294967295
# Where the simulator joins mlp.gate_up: after SwiGLU (0.23) or after its norm (before #4168).
GATE_UP_JOINS: tuple[str, ...] = ("swiglu", "norm")
NOTE = (
    "SIMULATED by autotune's analytic model (hardware parameters are estimates); "
    "modelled, not measured on an NPU."
)


# ---------------------------------------------------------------------------------------------
# One layer's plan: compute-stream ops and where each prefetch is issued and joined


@dataclass(frozen=True, slots=True)
class _Op:
    """One compute-stream kernel with its isolated duration (ns) and HBM traffic (bytes)."""

    name: str  # kernel name as the profiler shows it
    op_type: str
    core: str  # accelerator core / task type: AI_CORE, AI_VECTOR_CORE, MIX_AIC, HCCL
    dur: float
    hbm: float
    weight: str = ""  # matmul: the weight it reads (a prefetch target)
    w_bytes: float = 0.0  # matmul: bytes of that weight it reads
    w_full: float = 0.0  # matmul: bytes of the whole weight (prefetch offsets are into it)
    compute: float = 0.0  # matmul: cube-bound time (ns)
    attention: bool = False  # duration grows with context
    in_shapes: str = ""
    out_shapes: str = ""
    in_types: str = ""
    out_types: str = ""


@dataclass(frozen=True, slots=True)
class _Issue:
    """Issue prefetch `index` (record on the compute stream) before the next op."""

    index: int


@dataclass(frozen=True, slots=True)
class _Join:
    """Compute-stream wait for every prefetch issued so far."""


_Item = _Op | _Issue | _Join


@dataclass(frozen=True)
class _Plan:
    items: tuple[_Item, ...]
    prefetches: tuple[ResolvedPrefetch, ...]
    window_last: tuple[int, ...]  # per prefetch: item index of the last op of its window
    gap: float  # ns between consecutive kernels
    t_sync: float  # ns


def _kname(api: str, op_type: str, impl: str | None = None) -> str:
    return f"aclnn{api}_{impl or op_type}_{op_type}"


class _Builder:
    """Builds one layer's (or one step's) op list with the roofline durations of the perf model."""

    def __init__(self, spec: ModelSpec, setup: Setup, hw: Hardware) -> None:
        self.spec, self.setup, self.hw = spec, setup, hw
        self.items: list[_Item] = []
        self.labels: dict[str, int] = {}
        self.b = setup.max_num_seqs
        # Sequence parallel (flashcomm1, and on dense models only above 1000 tokens) splits the
        # norms' rows over the TP ranks and swaps all-reduce for all-gather + reduce-scatter.
        # A dense decode step stays below that, so flashcomm1 only arms the gate_up hook there.
        self.sp = sequence_parallel(setup, self.b)
        self.t_norm = -(-self.b // setup.tp) if self.sp else self.b
        self.wb = weight_bytes(spec, setup.tp, setup.ep)

    def linear(
        self, scheme: str, weight: str, k: int, n: int, label: str, quant_bytes: float
    ) -> None:
        """A linear as its checkpoint scheme runs it: activation quantize + int8 matmul, or bf16."""
        b = self.b
        if scheme_bits(scheme) < 16:
            # Static W8A8 quantizes with a fixed scale; the dynamic flavours (W8A8_MIX outside
            # decode nodes) compute per-token scales.
            api, op_type = (
                ("AscendQuantV3", "AscendQuantV2")
                if scheme == STATIC_W8A8
                else ("DynamicQuant", "DynamicQuant")
            )
            self.vec(api, op_type, quant_bytes, f"{b},{k}", label)
            self.matmul("QuantMatmulV4", "QuantBatchMatmulV3", weight, self.wb[weight], k, n)
        else:
            self.matmul("Mm", "MatMulV2", weight, self.wb[weight], k, n, int8=False)

    def add(self, op: _Op, label: str = "") -> None:
        if label:
            self.labels[label] = len(self.items)
        self.items.append(op)

    def vec(self, api: str, op_type: str, nbytes: float, shape: str, label: str = "") -> None:
        hw = self.hw
        dur = hw.t0_vec_us * 1e3 + nbytes / hw.vec_gbs  # GB/s == bytes/ns
        self.add(
            _Op(
                _kname(api, op_type),
                op_type,
                "AI_VECTOR_CORE",
                dur,
                nbytes,
                in_shapes=shape,
                out_shapes=shape,
                in_types="DT_BF16",
                out_types="DT_BF16",
            ),
            label,
        )

    def comm(self, kind: str, dur_us: float, label: str = "") -> None:
        seq = len(self.items)
        self.add(_Op(f"hcom_{kind}__{seq}_0_1", f"hcom_{kind}_", "HCCL", dur_us * 1e3, 0.0), label)

    def matmul(
        self,
        api: str,
        op_type: str,
        weight: str,
        w_full: float,
        k: int,
        n: int,
        *,
        rows: int | None = None,
        read_frac: float = 1.0,
        int8: bool = True,
        label: str = "",
    ) -> None:
        hw = self.hw
        m = self.b if rows is None else rows
        peak = hw.peak_int8_tops * 1e12 * (1.0 if int8 else 0.5) * hw.eff_cube
        compute = 2.0 * m * k * n / peak * 1e9
        w_bytes = w_full * read_frac
        dur = hw.t0_mm_us * 1e3 + max(w_bytes / hw.mm_gbs, compute)
        dtype = "INT8" if int8 else "DT_BF16"
        self.add(
            _Op(
                _kname(api, op_type, "MatMulCommon" if op_type == "MatMulV2" else None),
                op_type,
                "AI_CORE",
                dur,
                w_bytes,
                weight=weight,
                w_bytes=w_bytes,
                w_full=w_full,
                compute=compute,
                in_shapes=f"{m},{k};{k},{n}",
                out_shapes=f"{m},{n}",
                in_types=f"{dtype};{dtype}",
                out_types="DT_BF16",
            ),
            label,
        )

    # -- the decoder layer of docs/analysis.md ------------------------------------------------

    def layer(self) -> None:
        spec, setup, hw, b = self.spec, self.setup, self.hw, self.b
        h, hd, tp = spec.hidden_size, spec.head_dim, setup.tp
        q_l = spec.num_attention_heads // tp * hd
        kv_heads = spec.num_key_value_heads
        kv_l = (kv_heads // tp if kv_heads >= tp else 1) * hd
        tn = self.t_norm
        sp = self.sp
        # Input norm with residual: read x and residual, write both (bf16).
        self.vec("AddRmsNorm", "AddRmsNorm", tn * h * 8 + h * 2, f"{tn},{h}", "input_norm")
        if sp:
            self.comm("allGather", hw.t_comm_us)
        self.linear(spec.attn_quant, "qkv_proj", h, q_l + 2 * kv_l, "quant_qkv", b * h * 3)
        self.vec("RmsNorm", "RmsNorm", b * (q_l + kv_l) * 4, f"{b},{q_l + kv_l}")
        self.vec("ApplyRotaryPosEmb", "ApplyRotaryPosEmb", b * (q_l + kv_l) * 4, f"{b},{q_l}")
        self.vec("ReshapeAndCache", "ReshapeAndCache", b * kv_l * 8, f"{b},{kv_l}")
        # Decode attention streams the batch's KV cache; its duration is set per context length.
        self.add(
            _Op(
                _kname("FusedInferAttentionScoreV3", "FusedInferAttentionScore"),
                "FusedInferAttentionScore",
                "MIX_AIC",
                hw.t0_mm_us * 1e3,
                0.0,
                attention=True,
                in_shapes=f"{b},1,{q_l}",
                out_shapes=f"{b},1,{q_l}",
                in_types="DT_BF16",
                out_types="DT_BF16",
            ),
            "attention",
        )
        self.linear(spec.o_quant, "o_proj", q_l, h, "quant_o", b * q_l * 3)
        self.comm("reduceScatter" if sp else "allReduce", hw.t_comm_us)
        self.vec("AddRmsNorm", "AddRmsNorm", tn * h * 8 + h * 2, f"{tn},{h}", "post_norm")
        if spec.has_experts:
            self._moe()
        else:
            self._mlp()

    def _mlp(self) -> None:
        spec, setup, hw, b = self.spec, self.setup, self.hw, self.b
        h, i_l = spec.hidden_size, spec.intermediate_size // setup.tp
        sp = self.sp
        if sp:
            self.comm("allGather", hw.t_comm_us)
        q = spec.mlp_quant
        self.linear(q, "gate_up_proj", h, 2 * i_l, "quant_gate_up", b * h * 3)
        self.vec("SwiGlu", "SwiGlu", b * i_l * 6, f"{b},{2 * i_l}", "swiglu")
        self.linear(q, "down_proj", i_l, h, "quant_down", b * i_l * 3)
        self.comm("reduceScatter" if sp else "allReduce", hw.t_comm_us)

    def _moe(self) -> None:
        spec, setup, hw, b = self.spec, self.setup, self.hw, self.b
        h, e, k = spec.hidden_size, spec.num_experts, spec.num_experts_per_tok
        ep = setup.ep
        inter = spec.moe_intermediate_size if ep > 1 else spec.moe_intermediate_size // setup.tp
        rows = b * k // ep if ep > 1 else b * k
        # Experts that receive at least one of the batch's b*k routed rows read their weights.
        active = 1.0 - (1.0 - 1.0 / e) ** (b * k)
        self.matmul("Mm", "MatMulV2", "gate", h * e * 2, h, e, int8=False)
        self.vec("MoeGatingTopK", "MoeGatingTopK", b * e * 4, f"{b},{e}", "gating")
        if ep > 1:
            self.comm("alltoAll", hw.t_dispatch_us, "dispatch")
        else:
            self.comm("allGather", hw.t_comm_us, "dispatch")
        self.vec("DynamicQuant", "DynamicQuant", rows * h * 3, f"{rows},{h}", "quant_moe")
        self.matmul(
            "GroupedMatmulV4",
            "GroupedMatmul",
            "w13",
            self.wb["w13"],
            h,
            2 * inter,
            rows=rows,
            read_frac=active,
        )
        self.vec(
            "DequantSwigluQuant",
            "DequantSwigluQuant",
            rows * inter * 9,
            f"{rows},{2 * inter}",
            "swiglu",
        )
        self.matmul(
            "GroupedMatmulV4",
            "GroupedMatmul",
            "w2",
            self.wb["w2"],
            inter,
            h,
            rows=rows,
            read_frac=active,
        )
        if ep > 1:
            self.comm("alltoAll", hw.t_combine_us)
        else:
            self.comm("reduceScatter", hw.t_comm_us)

    def head(self) -> None:
        """Ops before the first layer: the embedding lookup."""
        b, h = self.b, self.spec.hidden_size
        self.vec("Embedding", "GatherV2", b * h * 4, f"{b},{h}")

    def tail(self) -> None:
        """Ops after the last layer: final norm, vocab-parallel lm_head, logits gather, argmax."""
        spec, setup, b = self.spec, self.setup, self.b
        h, v_l = spec.hidden_size, -(-spec.vocab_size // setup.tp)
        self.vec("RmsNorm", "RmsNorm", b * h * 4, f"{b},{h}")
        self.matmul("Mm", "MatMulV2", "lm_head", v_l * h * 2, h, v_l, int8=False)
        self.comm("allGather", self.hw.t_comm_us)
        self.vec("ArgMax", "ArgMaxV2", b * v_l * 2 * setup.tp, f"{b},{v_l * setup.tp}")


# Where each (site, weight) is issued: the label of its window's first op, the label of the
# window's last op, and whether a join follows that last op (docs/analysis.md).
_SLOTS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("attn.qkv", "qkv_proj"): ("quant_qkv", "quant_qkv", True),
    ("attn.o", "o_proj"): ("quant_o", "quant_o", True),
    ("mlp.gate_up", "gate_up_proj"): ("post_norm", "quant_gate_up", False),
    ("mlp.down", "down_proj"): ("swiglu", "swiglu", True),
    ("attn.o", "down_proj"): ("quant_down", "quant_down", True),
    ("moe.gate_up", "w13"): ("gating", "quant_moe", True),
}


def _plan_layer(
    spec: ModelSpec,
    setup: Setup,
    hw: Hardware,
    prefetches: Sequence[ResolvedPrefetch],
    gate_up_join: str = "swiglu",
) -> _Plan:
    """Insert each firing prefetch's issue and join into the layer's op list."""
    bld = _Builder(spec, setup, hw)
    bld.layer()
    before: dict[int, list[int]] = {}
    joins: set[int] = set()
    last_label: list[str] = []
    for i, p in enumerate(prefetches):
        slot = _SLOTS.get((p.site, p.weight))
        if slot is None or slot[0] not in bld.labels:
            raise AutotuneError(
                f"simulator: no place for prefetch {p.site} of {p.weight} in a "
                f"{'MoE' if spec.has_experts else 'dense'} layer"
            )
        first, last, join = slot
        if gate_up_join == "norm" and p.site == "mlp.gate_up":
            last, join = first, True  # joined right after the post-attention norm
        elif last not in bld.labels:
            last = first  # no quantize before a bf16 gate_up: the window is the norm alone
        before.setdefault(bld.labels[first], []).append(i)
        last_label.append(last)
        # gate_up has no join of its own: the one after SwiGLU waits for it.
        joins.add(bld.labels["swiglu" if not join else last])
    items: list[_Item] = []
    position: dict[int, int] = {}
    for j, item in enumerate(bld.items):
        items.extend(_Issue(i) for i in before.get(j, ()))
        position[j] = len(items)
        items.append(item)
        if j in joins:
            items.append(_Join())
    window_last = tuple(position[bld.labels[lbl]] for lbl in last_label)
    gap = (hw.gap_graph_us if setup.graph_mode else hw.gap_eager_us) * 1e3
    return _Plan(tuple(items), tuple(prefetches), window_last, gap, hw.t_sync_us * 1e3)


def _plan_ops(spec: ModelSpec, setup: Setup, hw: Hardware, part: str) -> tuple[_Op, ...]:
    bld = _Builder(spec, setup, hw)
    getattr(bld, part)()
    return tuple(it for it in bld.items if isinstance(it, _Op))


# ---------------------------------------------------------------------------------------------
# The two-stream timeline engine


@dataclass(slots=True)
class _Cmo:
    index: int  # position in the layer's prefetch list
    site: str
    weight: str
    nbytes: float
    record_start: float
    record_end: float
    layer: int
    step: int
    work: float = 0.0  # bytes-equivalent at the CMO rate
    remaining: float = 0.0
    start: float = -1.0
    end: float = -1.0
    consumed: bool = False
    window_end: float = -1.0
    stall_span: tuple[float, float] | None = None  # the join wait charged to this prefetch


@dataclass(slots=True)
class _Task:
    stream: int
    kind: str  # "op" | "record" | "wait" | "cmo"
    start: float
    end: float
    op: _Op | None
    step: int
    layer: int


class _Engine:
    """Compute stream + the single prefetch stream, sharing HBM as a fluid of capacity B_peak."""

    def __init__(self, hw: Hardware, *, record: bool) -> None:
        self.peak = hw.hbm_peak_gbs  # GB/s == bytes/ns
        self.cmo_rate = min(hw.cmo_gbs, hw.hbm_peak_gbs)
        self.cmo_t0_work = hw.t0_cmo_us * 1e3 * self.cmo_rate  # fixed cost, as bytes of work
        self.l2_rate = hw.l2_read_gbs
        self.mm_rate = hw.mm_gbs
        self.c_eff = hw.c_eff_bytes
        self.gamma = hw.gamma
        self.pf_free = 0.0
        self.queue: deque[_Cmo] = deque()
        self.active: _Cmo | None = None
        self.live: list[_Cmo] = []  # started, not yet consumed by their matmul
        self.cmos: list[_Cmo] = []
        self.record = record
        self.tasks: list[_Task] = []

    # -- prefetch stream ------------------------------------------------------------------

    def _next_start(self) -> float:
        if self.active is not None or not self.queue:
            return math.inf
        return max(self.pf_free, self.queue[0].record_end) + _PF_WAIT_NS

    def _activate(self, t: float) -> None:
        c = self.queue.popleft()
        if self.record:
            wait_start = max(self.pf_free, c.record_start)
            self.tasks.append(_Task(PREFETCH_STREAM, "wait", wait_start, t, None, c.step, c.layer))
        # Lines already in L2 (the same weight's prefix fetched earlier) cost an L2 read only.
        resident = min(c.nbytes, self.resident(c.weight))
        c.work = (c.nbytes - resident) + resident * self.cmo_rate / self.l2_rate + self.cmo_t0_work
        c.remaining = c.work
        c.start = t
        self.active = c
        self.live.append(c)

    def _complete(self, t: float) -> None:
        c = self.active
        assert c is not None
        c.remaining = 0.0
        c.end = t
        self.pf_free = t
        self.active = None
        if self.record:
            self.tasks.append(_Task(PREFETCH_STREAM, "cmo", c.start, t, None, c.step, c.layer))

    def done_bytes(self, c: _Cmo) -> float:
        if c.start < 0:
            return 0.0
        return c.nbytes * min(1.0, max(0.0, 1.0 - c.remaining / c.work))

    def resident(self, weight: str) -> float:
        return max((self.done_bytes(c) for c in self.live if c.weight == weight), default=0.0)

    def outstanding(self) -> float:
        return sum(self.resident(w) for w in {c.weight for c in self.live})

    def issue(self, c: _Cmo) -> None:
        self.queue.append(c)
        self.cmos.append(c)

    # -- compute stream -------------------------------------------------------------------

    def run(self, t: float, dur: float, hbm: float) -> float:
        """Advance the compute stream through one segment; returns its end time."""
        if dur <= 0:
            return t
        demand = hbm / dur
        rem = 1.0
        while True:
            c = self.active
            if c is None:
                ts = max(self._next_start(), t)
                t_end = t + rem * dur
                if ts < t_end:
                    rem -= (ts - t) / dur
                    t = ts
                    self._activate(t)
                    continue
                return t_end
            total = demand + self.cmo_rate
            share = 1.0 if total <= self.peak else self.peak / total
            op_rate = share / dur
            c_rate = share * self.cmo_rate
            t_op = t + rem / op_rate
            t_c = t + c.remaining / c_rate
            if t_op < t_c:
                c.remaining -= c_rate * (t_op - t)
                return t_op
            rem = max(0.0, rem - op_rate * (t_c - t))
            t = t_c
            self._complete(t)
            if rem <= 1e-12:
                return t

    def drain(self, t: float) -> float:
        """Run the prefetch stream alone until every issued CMO is done; returns its end."""
        while self.active is not None or self.queue:
            c = self.active
            if c is None:
                self._activate(max(self._next_start(), t))
                continue
            t = max(t, c.start) + c.remaining / self.cmo_rate
            self._complete(t)
        return self.pf_free

    def matmul(self, t: float, op: _Op, dur_scale: float) -> float:
        """Run a matmul that reads `op.weight`, with whatever prefix of it sits in L2 now."""
        resident = self.resident(op.weight)
        hit = 0.0
        if resident > 0:
            total = self.outstanding()
            frac = 1.0 if total <= self.c_eff else (self.c_eff / total) ** self.gamma
            hit = frac * min(resident, op.w_full) * (op.w_bytes / op.w_full)
            # Bytes still in flight from a racing CMO arrive too late for this matmul.
            for c in self.live:
                if c.weight == op.weight:
                    c.consumed = True
            self.live = [c for c in self.live if not c.consumed]
        mem = (op.w_bytes - hit) / self.mm_rate + hit / self.l2_rate
        dur = op.dur - max(op.w_bytes / self.mm_rate, op.compute) + max(mem, op.compute)
        return self.run(t, dur * dur_scale, op.w_bytes - hit)


# ---------------------------------------------------------------------------------------------
# Running layers and steps


def _attn_dur(hw: Hardware, spec: ModelSpec, setup: Setup, ctx: float) -> tuple[float, float]:
    """Decode attention: (duration ns, HBM bytes) for a batch at mean context `ctx`."""
    tp, hd = setup.tp, spec.head_dim
    kv_heads = spec.num_key_value_heads
    kv_local = kv_heads // tp if kv_heads >= tp else 1
    kv_bytes = 2 * kv_local * hd * 2  # K and V, bf16, per token per layer per device
    nbytes = setup.max_num_seqs * ctx * kv_bytes
    return hw.t0_mm_us * 1e3 + nbytes / hw.mm_gbs, nbytes


def _run_ops(
    eng: _Engine,
    t: float,
    ops: Sequence[_Op],
    gap: float,
    step: int,
    layer: int,
    jitter: np.ndarray | None,
) -> float:
    for k, op in enumerate(ops):
        scale = 1.0 if jitter is None else float(jitter[k])
        start = t
        t = eng.matmul(t, op, scale) if op.weight else eng.run(t, op.dur * scale, op.hbm)
        if eng.record:
            eng.tasks.append(_Task(COMPUTE_STREAM, "op", start, t, op, step, layer))
        t = eng.run(t, gap, 0.0)
    return t


def _run_layer(
    eng: _Engine,
    plan: _Plan,
    t: float,
    attn: tuple[float, float],
    step: int,
    layer: int,
    jitter: np.ndarray | None,
) -> float:
    """One decoder layer from time t (the start of its first op); returns the next op's start."""
    rec_dur = _REC_SHARE * plan.t_sync
    gap_sync = _GAP_SHARE * plan.t_sync
    wait_min = _WAIT_SHARE * plan.t_sync
    pending: list[_Cmo] = []
    window_of: dict[int, list[_Cmo]] = {}
    k = 0  # op counter, for jitter
    for pos, item in enumerate(plan.items):
        if isinstance(item, _Issue):
            p = plan.prefetches[item.index]
            start = t
            t = eng.run(t, rec_dur, 0.0)
            if eng.record:
                eng.tasks.append(_Task(COMPUTE_STREAM, "record", start, t, None, step, layer))
            c = _Cmo(item.index, p.site, p.weight, float(p.bytes), start, t, layer, step)
            eng.issue(c)
            pending.append(c)
            window_of.setdefault(plan.window_last[item.index], []).append(c)
            t = eng.run(t, gap_sync, 0.0)
            continue
        if isinstance(item, _Join):
            start = t
            # The prefetch stream records right after its last CMO (the host queued it already).
            done = max(eng.drain(t), pending[-1].record_end) if pending else t
            t_end = max(start + wait_min, done + _PF_RECORD_NS + _SIGNAL_NS)
            if eng.record:
                eng.tasks.append(
                    _Task(PREFETCH_STREAM, "record", done, done + _PF_RECORD_NS, None, step, layer)
                )
                eng.tasks.append(_Task(COMPUTE_STREAM, "wait", start, t_end, None, step, layer))
            eng.pf_free = max(eng.pf_free, done + _PF_RECORD_NS)
            # The stall is charged once, to the prefetch that ends last (docs/analysis.md).
            if pending:
                last = max(pending, key=lambda c: (c.end, c.index))
                last.stall_span = (start, t_end)
            pending = []
            t = t_end
            t = eng.run(t, plan.gap, 0.0)
            continue
        op = item
        scale = 1.0 if jitter is None else float(jitter[k])
        k += 1
        start = t
        if op.attention:
            t = eng.run(t, attn[0] * scale, attn[1])
        elif op.weight:
            t = eng.matmul(t, op, scale)
        else:
            t = eng.run(t, op.dur * scale, op.hbm)
        if eng.record:
            eng.tasks.append(_Task(COMPUTE_STREAM, "op", start, t, op, step, layer))
        for c in window_of.get(pos, ()):
            c.window_end = t
        # A join follows its window after a short sync gap instead of a kernel gap.
        nxt = plan.items[pos + 1] if pos + 1 < len(plan.items) else None
        t = eng.run(t, gap_sync if isinstance(nxt, _Join) else plan.gap, 0.0)
    return t


# ---------------------------------------------------------------------------------------------
# Public API


@dataclass
class SimTrial:
    """One simulated trial: noiseless figures, device tasks and per-prefetch ground truth."""

    workload: Workload
    config: dict[str, Any]
    hardware: Hardware
    prefetches_per_layer: list[ResolvedPrefetch]
    tpot_ms: float  # mean decode step time over the whole output
    ttft_ms: float  # mean time to first token
    output_throughput: float  # tokens/s, noiseless
    duration_s: float  # noiseless benchmark duration
    step_ms: list[float]  # the profiled steps
    step_spans: list[tuple[int, int]]  # (start_ns, end_ns) of each profiled step
    prefetches: pd.DataFrame  # GROUND_TRUTH_COLUMNS
    tasks: pd.DataFrame  # TASK_COLUMNS of this module
    simulated: bool = True
    notes: list[str] = field(default_factory=list)


GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    "site",
    "weight",
    "bytes",
    "layer",
    "step",
    "start_ns",
    "end_ns",
    "window_end_ns",
    "slack_ns",
    "stall_ns",
    "late",
)

TASK_COLUMNS: tuple[str, ...] = (
    "device",
    "stream",
    "task_id",
    "name",
    "type",
    "rt_type",
    "op_type",
    "start_ns",
    "end_ns",
    "connection_id",
    "step",
    "layer",
    "in_shapes",
    "out_shapes",
    "in_types",
    "out_types",
)

# Runtime (host) task type of each accelerator core, as the db's TASK.taskType holds it.
_RT_TYPE = {
    "AI_CORE": "KERNEL_AICORE",
    "AI_VECTOR_CORE": "KERNEL_AIVEC",
    "MIX_AIC": "KERNEL_MIX_AIC",
    "HCCL": "HCCL",
}


def _check_workload(workload: Workload) -> None:
    for label, value in (
        ("max-num-seqs", workload.max_num_seqs),
        ("input length", workload.input_len),
        ("output length", workload.output_len),
        ("profile steps", workload.profile_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise AutotuneError(f"{label} must be a positive integer, got {value!r}")
    if workload.output_len < 2:
        raise AutotuneError("output length must be at least 2 tokens to have a decode step")
    if workload.gate_up_join not in GATE_UP_JOINS:
        raise AutotuneError(
            f"gate_up join {workload.gate_up_join!r} is not one of {', '.join(GATE_UP_JOINS)}"
        )


@dataclass(frozen=True, eq=False)
class _Static:
    """The config-independent parts of a workload: specs, head/tail ops, prefill time."""

    workload: Workload
    spec: ModelSpec
    setup: Setup
    hw: Hardware
    head: tuple[_Op, ...]
    tail: tuple[_Op, ...]
    fixed_ns: float  # head + tail + gaps + host overhead per step
    prefill_s: float  # one wave's prefill


def _hardware(workload: Workload, hardware: Hardware | None) -> Hardware:
    return hardware if hardware is not None else _load_hw(workload.hardware)


@lru_cache(maxsize=16)
def _load_hw(name: str) -> Hardware:
    return load_hardware(name)


@lru_cache(maxsize=64)
def _static(workload: Workload, hw: Hardware) -> _Static:
    _check_workload(workload)
    setup = setup_of(workload)
    spec = spec_of(setup)
    head = _plan_ops(spec, setup, hw, "head")
    tail = _plan_ops(spec, setup, hw, "tail")
    gap = (hw.gap_graph_us if setup.graph_mode else hw.gap_eager_us) * 1e3
    fixed = hw.step_overhead_us * 1e3 + sum(op.dur + gap for op in head + tail) - gap
    return _Static(
        workload, spec, setup, hw, head, tail, fixed, _prefill_seconds(spec, workload, hw)
    )


def _prefill_seconds(spec: ModelSpec, workload: Workload, hw: Hardware) -> float:
    """One wave's prefill: compute-bound roofline, prefetch effects ignored (simplification)."""
    tp, h, hd = workload.tp, spec.hidden_size, spec.head_dim
    if spec.has_experts:
        ffn = 3 * h * spec.moe_intermediate_size * spec.num_experts_per_tok
    else:
        ffn = 3 * h * spec.intermediate_size
    attn_w = h * (spec.num_attention_heads + spec.num_key_value_heads) * hd * 2
    params = spec.num_hidden_layers * (ffn + attn_w) / tp
    tokens = workload.max_num_seqs * workload.input_len
    attn_flops = (
        4
        * workload.max_num_seqs
        * workload.input_len**2
        / 2
        * spec.num_attention_heads
        / tp
        * hd
        * spec.num_hidden_layers
    )
    flops = 2 * params * tokens + attn_flops
    return float(flops / (hw.peak_int8_tops * 1e12 * hw.eff_cube))


def _layer_ns(stat: _Static, plan: _Plan, ctx: float) -> float:
    eng = _Engine(stat.hw, record=False)
    attn = _attn_dur(stat.hw, stat.spec, stat.setup, ctx)
    return _run_layer(eng, plan, 0.0, attn, 0, 0, None)


def _mean_ctx(workload: Workload) -> float:
    # Decode step s (0-based) attends over input_len + s + 1 tokens; steps 0..output_len-2.
    return workload.input_len + workload.output_len / 2


def _bench_figures(stat: _Static, tpot_ns: float) -> tuple[float, float, float]:
    """(noiseless output throughput tok/s, duration s, mean TTFT ms) of lockstep waves."""
    w = stat.workload
    out_len = w.output_len
    wave_s = stat.prefill_s + (out_len - 1) * tpot_ns * 1e-9
    duration = BENCH_WAVES * wave_s
    tokens = BENCH_WAVES * w.max_num_seqs * out_len
    # Chunked prefill hands out first tokens chunk by chunk; the mean waits about half a wave's
    # prefill plus one chunk.
    chunks = max(1, -(-w.max_num_seqs * w.input_len // w.max_num_batched_tokens))
    ttft_s = stat.prefill_s * (0.5 + 0.5 / chunks)
    return tokens / duration, duration, ttft_s * 1e3


def _prepare(
    workload: Workload, config: Mapping[str, Any], hardware: Hardware | None
) -> tuple[_Static, _Plan]:
    hw = _hardware(workload, hardware)
    stat = _static(workload, hw)
    pf = resolve_prefetches(config, stat.setup, num_tokens=workload.max_num_seqs)
    return stat, _plan_cached(stat, tuple(pf))


@lru_cache(maxsize=4096)
def _plan_cached(stat: _Static, prefetches: tuple[ResolvedPrefetch, ...]) -> _Plan:
    return _plan_layer(stat.spec, stat.setup, stat.hw, prefetches, stat.workload.gate_up_join)


def _tpot_ns(stat: _Static, plan: _Plan) -> float:
    """Mean decode step: attention is linear in context and never overlaps a CMO, so the step at
    the mean context is the mean step."""
    ctx = _mean_ctx(stat.workload)
    return stat.fixed_ns + stat.spec.num_hidden_layers * _layer_ns(stat, plan, ctx)


def simulate_throughput(
    workload: Workload, config: Mapping[str, Any], hardware: Hardware | None = None
) -> float:
    """Noiseless modelled output throughput (tokens/s) of one trial; writes nothing."""
    stat, plan = _prepare(workload, config, hardware)
    return _bench_figures(stat, _tpot_ns(stat, plan))[0]


def simulate_trial(
    workload: Workload,
    config: Mapping[str, Any],
    hardware: Hardware | None = None,
    *,
    jitter: float = 0.0,
    seed: int = 0,
    timeline: bool = True,
) -> SimTrial:
    """Simulate one trial: noiseless figures plus the profiled steps' tasks and ground truth.

    `jitter` is the relative standard deviation of each kernel's duration in the profiled steps
    (seeded), so the timeline is not perfectly periodic; the ground truth follows the jittered
    timeline exactly. `timeline=False` skips the profiled steps (no tasks, no ground truth).
    """
    stat, plan = _prepare(workload, config, hardware)
    tpot = _tpot_ns(stat, plan)
    thr, duration, ttft = _bench_figures(stat, tpot)
    rng = np.random.default_rng([seed, _config_hash(config)])
    eng = _Engine(stat.hw, record=True)
    gap = plan.gap
    n_layers = stat.spec.num_hidden_layers
    n_ops = sum(isinstance(it, _Op) for it in plan.items)
    first = max(0, (workload.output_len - 1) // 2 - workload.profile_steps // 2)
    spans: list[tuple[int, int]] = []
    t = 0.0
    for step in range(workload.profile_steps if timeline else 0):
        ctx = workload.input_len + first + step + 1
        attn = _attn_dur(stat.hw, stat.spec, stat.setup, ctx)
        step_start = t
        t += stat.hw.step_overhead_us * 1e3  # host scheduling before the first kernel

        def jit(n: int) -> np.ndarray | None:
            if jitter <= 0:
                return None
            return np.clip(1.0 + rng.normal(0.0, jitter, n), 0.5, 1.5)

        t = _run_ops(eng, t, stat.head, gap, step, -1, jit(len(stat.head)))
        for layer in range(n_layers):
            t = _run_layer(eng, plan, t, attn, step, layer, jit(n_ops))
        t = _run_ops(eng, t, stat.tail, gap, step, -1, jit(len(stat.tail)))
        t -= gap  # the step ends with its last kernel
        spans.append((round(step_start), round(t)))
    tasks = _tasks_frame(eng.tasks)
    truth = _truth_frame(eng.cmos)
    step_ms = [(e - s) / 1e6 for s, e in spans]
    return SimTrial(
        workload=workload,
        config=json.loads(json.dumps(dict(config))),
        hardware=stat.hw,
        prefetches_per_layer=list(plan.prefetches),
        tpot_ms=tpot / 1e6,
        ttft_ms=ttft,
        output_throughput=thr,
        duration_s=duration,
        step_ms=step_ms,
        step_spans=spans,
        prefetches=truth,
        tasks=tasks,
        notes=[NOTE, stat.hw.summary()],
    )


_SYNC_DESC = {
    "cmo": ("CMO", "CMO", "CMO", "", "", "", "", ""),
    "record": ("EVENT_RECORD", "EVENT_RECORD", "EVENT_RECORD", "", "", "", "", ""),
    "wait": ("EVENT_WAIT", "EVENT_WAIT", "EVENT_WAIT", "", "", "", "", ""),
}


def _describe(op: _Op) -> tuple[str, str, str, str, str, str, str, str]:
    return (op.name, op.core, _RT_TYPE[op.core], op.op_type, op.in_shapes, op.out_shapes,
            op.in_types, op.out_types)  # fmt: skip


def _tasks_frame(tasks: list[_Task]) -> pd.DataFrame:
    """Device tasks in time order, integer ns relative to the profile start (0)."""
    ordered = sorted(tasks, key=lambda x: (x.start, x.stream))
    task_ids = {COMPUTE_STREAM: 1000, PREFETCH_STREAM: 10}
    described: dict[int, tuple[str, str, str, str, str, str, str, str]] = {}
    records: list[tuple[Any, ...]] = []
    for conn, tk in enumerate(ordered, start=1):
        op = tk.op
        if op is None:
            desc = _SYNC_DESC[tk.kind]
        else:
            desc = described.get(id(op)) or described.setdefault(id(op), _describe(op))
        task_ids[tk.stream] += 1
        name, typ, rt, op_type, in_s, out_s, in_t, out_t = desc
        records.append((DEVICE_ID, tk.stream, task_ids[tk.stream], name, typ, rt, op_type,
                        round(tk.start), round(tk.end), conn, tk.step, tk.layer, in_s, out_s,
                        in_t, out_t))  # fmt: skip
    df = pd.DataFrame.from_records(records, columns=list(TASK_COLUMNS))
    ints = ("device", "stream", "task_id", "start_ns", "end_ns", "connection_id", "step", "layer")
    return df.astype(dict.fromkeys(ints, "int64"))


def _truth_frame(cmos: list[_Cmo]) -> pd.DataFrame:
    rows = []
    for c in cmos:
        start, end, wend = round(c.start), round(c.end), round(c.window_end)
        slack = wend - end
        stall = 0 if c.stall_span is None else round(c.stall_span[1]) - round(c.stall_span[0])
        rows.append(
            (
                c.site,
                c.weight,
                int(c.nbytes),
                c.layer,
                c.step,
                start,
                end,
                wend,
                slack,
                stall,
                slack < 0,
            )
        )
    df = pd.DataFrame(rows, columns=list(GROUND_TRUTH_COLUMNS))
    for col in GROUND_TRUTH_COLUMNS:
        if col not in ("site", "weight", "late"):
            df[col] = df[col].astype("int64")
    df["late"] = df["late"].astype(bool)
    return df


def _config_hash(config: Mapping[str, Any]) -> int:
    """Stable across runs and processes (unlike hash())."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


# ---------------------------------------------------------------------------------------------
# Benchmark results and the backend


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {
        f"mean_{prefix}_ms": float(np.mean(values)),
        f"median_{prefix}_ms": float(np.median(values)),
        f"std_{prefix}_ms": float(np.std(values)),
        f"p99_{prefix}_ms": float(np.percentile(values, 99)),
    }


def bench_result(
    trial: SimTrial, *, seed: int = 0, noise: float = 0.01, repeat: int = 0
) -> dict[str, Any]:
    """One `vllm bench serve --save-result` JSON for the trial, with seeded relative noise.

    One Gaussian factor (std `noise`) scales the whole run, so throughput and TPOT move
    together the way run-to-run variation does; per-request spread is drawn around it.
    """
    w = trial.workload
    rng = np.random.default_rng([seed, _config_hash(trial.config), repeat])
    eps = float(np.clip(rng.normal(0.0, noise), -0.5, 0.5)) if noise > 0 else 0.0
    n = BENCH_WAVES * w.max_num_seqs
    tpot = trial.tpot_ms * (1.0 + eps)
    duration = trial.duration_s * (1.0 + eps)
    spread = max(noise, 1e-4)
    tpots = tpot * (1.0 + rng.normal(0.0, spread / 2, n))
    # First tokens arrive chunk by chunk during each wave's prefill.
    ttfts = trial.ttft_ms * (1.0 + eps) * rng.uniform(0.5, 1.5, n)
    e2els = ttfts + (w.output_len - 1) * tpots
    itls = tpot * (1.0 + rng.normal(0.0, 2 * spread, min(20_000, n * (w.output_len - 1))))
    out_tokens = n * w.output_len
    in_tokens = n * w.input_len
    result: dict[str, Any] = {
        "date": datetime.fromtimestamp(BASE_NS // 10**9, UTC).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "vllm",
        "backend": "vllm",
        "label": None,
        "model_id": w.model,
        "tokenizer_id": w.model,
        "num_prompts": n,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": w.max_num_seqs,
        "duration": duration,
        "completed": n,
        "failed": 0,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": n / duration,
        "request_goodput": None,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "max_output_tokens_per_s": float(w.max_num_seqs / (tpot / 1e3)),
        "max_concurrent_requests": w.max_num_seqs,
    }
    result.update(_stats("ttft", ttfts))
    result.update(_stats("tpot", tpots))
    result.update(_stats("itl", itls))
    result.update(_stats("e2el", e2els))
    result["autotune_simulated"] = True
    result["autotune_note"] = NOTE
    result["autotune_hardware"] = trial.hardware.summary()
    return result


# Profiled steps start 60 s into the run, after warm-up.
PROFILE_BASE_NS = BASE_NS + 60 * 10**9
# Relative jitter of kernel durations in written profiles (real timelines are not periodic).
PROFILE_JITTER = 0.02


def fake_pid(config: Mapping[str, Any]) -> int:
    """A stable fake OS pid for the profile directory name."""
    return 10_000 + _config_hash(config) % 50_000


class SimulateBackend:
    """Backend that runs trials on the analytic model and writes the files a real trial writes."""

    name = "simulate"
    simulated = True

    def __init__(
        self,
        workload: Workload,
        *,
        seed: int = 0,
        noise: float = 0.01,
        hardware: Hardware | None = None,
        trial_s: float = 0.0,
    ) -> None:
        if not math.isfinite(noise) or noise < 0:
            raise AutotuneError(f"--noise must be a fraction >= 0, got {noise!r}")
        if not math.isfinite(trial_s) or trial_s < 0:
            raise AutotuneError(f"--sim-trial-seconds must be >= 0, got {trial_s!r}")
        # Wall time each trial takes at least, standing in for server start, bench and profile.
        self.trial_s = trial_s
        self.workload = workload
        self.seed = seed
        self.noise = noise
        self.hardware = _hardware(workload, hardware)
        _static(workload, self.hardware)  # bad model / sizes fail here, before any trial

    def target_version(self) -> str:
        """The simulator models vllm-ascend 0.23.0's prefetch code."""
        return "0.23.0 (modelled)"

    def check(self) -> None:
        """The simulator needs nothing from the machine."""

    def run(
        self, config: dict[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> TrialResult:
        started = time.monotonic()
        result = self.run_trial(config, out_dir, repeats=repeats, profile=profile)[1]
        time.sleep(max(0.0, self.trial_s - (time.monotonic() - started)))
        return result

    def run_trial(
        self, config: Mapping[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> tuple[SimTrial, TrialResult]:
        """`run`, also returning the simulated trial (its ground truth)."""
        validate_config(config)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise AutotuneError(f"repeats must be an integer >= 1, got {repeats!r}")
        trial = simulate_trial(
            self.workload,
            config,
            self.hardware,
            jitter=PROFILE_JITTER,
            seed=self.seed,
            timeline=profile,
        )
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            benches: list[dict[str, Any]] = []
            paths: list[Path] = []
            for k in range(repeats):
                bench = bench_result(trial, seed=self.seed, noise=self.noise, repeat=k)
                path = out_dir / f"bench_r{k}.json"
                path.write_text(json.dumps(bench, indent=2), encoding="utf-8")
                benches.append(bench)
                paths.append(path)
            prof_dir: Path | None = None
            if profile:
                prof_dir = out_dir / "prof"
                write_profile(trial, prof_dir, base_ns=PROFILE_BASE_NS, pid=fake_pid(trial.config))
        except OSError as exc:
            raise AutotuneError(f"cannot write simulated trial to {out_dir}: {exc}") from None
        return trial, TrialResult(
            benches=benches, bench_paths=paths, profile_dir=prof_dir, simulated=True
        )


# ---------------------------------------------------------------------------------------------
# `autotune simulate`


def read_config(path: Path | None) -> dict[str, Any]:
    """The --config file as an additional-config dict; None gives 0.23's defaults, prefetch on."""
    if path is None:
        return vendor_default_config()
    text = read_text(path, f"--config {path}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutotuneError(f"--config {path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AutotuneError(f"--config {path}: must hold a JSON object")
    try:
        validate_config(data)
    except AutotuneError as exc:
        raise AutotuneError(f"--config {path}: {exc}") from None
    return data


def simulate_once(
    workload: Workload,
    config: Mapping[str, Any],
    out_dir: Path,
    *,
    seed: int = 0,
    noise: float = 0.01,
) -> tuple[SimTrial, TrialResult]:
    """One simulated trial with a profile, as `autotune simulate` runs it.

    Refuses a deployment 0.23 would not start; the config's other keys pick o_proj's row op.
    """
    if not workload.row_op:
        workload = replace(workload, row_op=row_op_of(config))
    check_setup(setup_of(workload))
    backend = SimulateBackend(workload, seed=seed, noise=noise)
    return backend.run_trial(config, out_dir, repeats=1, profile=True)


def summary_lines(trial: SimTrial, result: TrialResult) -> list[str]:
    """Plain-text summary of a simulated trial; the first line says it is simulated."""
    w = trial.workload
    mode = "graph" if w.graph_mode else "eager"
    fc1 = "on" if w.flashcomm1 else "off"
    lines = [
        "SIMULATED trial: modelled by autotune's analytic decode-step model, "
        "not measured on an NPU.",
        f"hardware   {trial.hardware.summary()}",
        f"workload   {w.model} TP{w.tp} EP{w.ep}, max-num-seqs {w.max_num_seqs}, flashcomm1 {fc1}, "
        f"{mode}, {w.input_len} in / {w.output_len} out"
        + (", mlp.gate_up joined after its norm" if w.gate_up_join == "norm" else ""),
    ]
    fired = ", ".join(
        f"{p.site}({p.weight}) {p.bytes / 2**20:.2f} MiB" for p in trial.prefetches_per_layer
    )
    lines.append(f"prefetch   per layer: {fired or 'none'}")
    bench = result.benches[0]
    lines.append(
        f"result     output throughput {bench['output_throughput']:.1f} tok/s "
        f"(noiseless {trial.output_throughput:.1f}), mean TPOT {bench['mean_tpot_ms']:.3f} ms "
        f"(noiseless {trial.tpot_ms:.3f})"
    )
    truth = trial.prefetches
    if len(truth):
        per_site = truth.groupby("site", sort=False).agg(
            n=("late", "size"), late=("late", "sum"), stall=("stall_ns", "sum")
        )
        steps = max(1, len(trial.step_spans))
        parts = [
            f"{site} {int(r.late)}/{int(r.n)} late, stall {r.stall / steps / 1e3:.1f} µs/step"
            for site, r in per_site.iterrows()
        ]
        lines.append("profile    " + "; ".join(parts))
    lines.append(f"files      {', '.join(str(p) for p in result.bench_paths)}")
    if result.profile_dir is not None:
        for d in sorted(result.profile_dir.glob("*_ascend_pt")):
            lines.append(f"           {d}")
    return lines
