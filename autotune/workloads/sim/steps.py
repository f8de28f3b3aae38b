"""Decode steps on the twin: the noiseless step behind the bench figures, and the profiled steps.

The bench side is the mean decode step (at the output's mean context) and the lockstep waves of
`vllm bench serve`. The profiled side runs the decode steps a profile would hold, with the
effects of `Realism`, and records every task and, per prefetch, the truth of the schedule it
built: its window (the kernels between its record and its join or consuming matmul), its join
and the part of that join spent waiting on it. Everything here is MODELLED, not measured.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.errors import AutotuneError
from autotune.hardware import Hardware, load_hardware
from autotune.lateness import DEFAULT_LATE_TOLERANCE_US, prefetch_late, tolerance_ns
from autotune.models import ModelSpec
from autotune.target import ResolvedPrefetch, Setup, resolve_prefetches, spec_of
from autotune.workloads.base import Workload, setup_of
from autotune.workloads.sim.engine import (
    COMPUTE_STREAM,
    DEVICE_ID,
    HCCL_STREAM,
    PF_RECORD_NS,
    PREFETCH_STREAM,
    SIGNAL_NS,
    Cmo,
    Engine,
    Task,
)
from autotune.workloads.sim.layer import (
    GATE_UP_JOINS,
    Issue,
    Join,
    Op,
    Plan,
    plan_layer,
    plan_ops,
    trans_data,
)
from autotune.workloads.sim.realism import REALISTIC, Realism
from autotune.workloads.vllm_ascend import PROFILE_DELAY_MARGIN

# vllm bench serve runs num_prompts = BENCH_WAVES x max_num_seqs prompts at that concurrency.
BENCH_WAVES = 4
# Share of t_sync each piece of one prefetch's synchronisation takes on the compute stream:
# the record task, the gap after it, the gap before the join and the join's minimum wait.
_REC_SHARE, _GAP_SHARE, _WAIT_SHARE = 0.2, 0.15, 0.5
# A collective on its own stream, as the compute stream sees it: a record (the real capture's
# records last 20 ns), the HCCL stream's wake-up after it (~0.35 µs in that capture), the HCCL
# stream's closing record, and the record -> wait wake-up. The collective's own tasks fill the
# rest of its duration, so the compute stream loses exactly what the collective kernel took.
_HCCL_REC_NS, _HCCL_WAKE_NS = 20.0, 300.0
# Fixed group number in collective names (hcom_allReduce__<group>_<k>_1, as the capture's).
_HCCL_GROUP = 586
NOTE = (
    "SIMULATED by autotune's analytic model (hardware parameters are estimates); "
    "modelled, not measured on an NPU."
)

GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    "site",
    "weight",
    "bytes",
    "layer",
    "step",
    "start_ns",
    "end_ns",
    "window_start_ns",
    "window_end_ns",
    "slack_ns",
    "join_start_ns",
    "join_end_ns",
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
    "kind",  # kernel | cmo | record | wait | comm (a task of a collective on the HCCL stream)
    "group",  # the collective a comm task (or the compute-stream record/wait around it) is of
)

COLLECTIVE_COLUMNS: tuple[str, ...] = ("group", "name", "op_type", "start_ns", "end_ns", "bytes")

# Runtime (host) task type of each accelerator core, as the db's TASK.taskType holds it.
_RT_TYPE = {
    "AI_CORE": "KERNEL_AICORE",
    "AI_VECTOR_CORE": "KERNEL_AIVEC",
    "MIX_AIC": "KERNEL_MIX_AIC",
    "HCCL": "HCCL",
}


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
    tasks: pd.DataFrame  # TASK_COLUMNS
    collectives: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(COLLECTIVE_COLUMNS))
    )  # COLLECTIVE_COLUMNS: the collectives that ran on the HCCL stream
    realism: Realism = REALISTIC
    seed: int = 0
    contexts: list[float] = field(default_factory=list)  # mean context of each profiled step
    simulated: bool = True
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The config-independent parts of a workload and the bench-side (noiseless) step


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
class Static:
    """The config-independent parts of a workload: specs, head/tail ops, prefill time."""

    workload: Workload
    spec: ModelSpec
    setup: Setup
    hw: Hardware
    head: tuple[Op, ...]
    tail: tuple[Op, ...]
    fixed_ns: float  # head + tail + gaps + host overhead per step
    prefill_s: float  # one wave's prefill


def hardware_of(workload: Workload, hardware: Hardware | None) -> Hardware:
    """`hardware`, else the workload's preset or TOML file."""
    return hardware if hardware is not None else _load_hw(workload.hardware)


@lru_cache(maxsize=16)
def _load_hw(name: str) -> Hardware:
    return load_hardware(name)


@lru_cache(maxsize=64)
def static_of(workload: Workload, hw: Hardware) -> Static:
    """The workload's Static (cached); AutotuneError for a workload no trial could run."""
    _check_workload(workload)
    setup = setup_of(workload)
    spec = spec_of(setup)
    head = plan_ops(spec, setup, hw, "head")
    tail = plan_ops(spec, setup, hw, "tail")
    gap = (hw.gap_graph_us if setup.graph_mode else hw.gap_eager_us) * 1e3
    fixed = hw.step_overhead_us * 1e3 + sum(op.dur + gap for op in head + tail) - gap
    return Static(
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


def _attn_dur(hw: Hardware, spec: ModelSpec, setup: Setup, ctx: float) -> tuple[float, float]:
    """Decode attention: (duration ns, HBM bytes) for a batch at mean context `ctx`."""
    tp, hd = setup.tp, spec.head_dim
    kv_heads = spec.num_key_value_heads
    kv_local = kv_heads // tp if kv_heads >= tp else 1
    kv_bytes = 2 * kv_local * hd * 2  # K and V, bf16, per token per layer per device
    nbytes = setup.max_num_seqs * ctx * kv_bytes
    return hw.t0_mm_us * 1e3 + nbytes / hw.mm_gbs, nbytes


def _mean_ctx(workload: Workload) -> float:
    # Decode step s (0-based) attends over input_len + s + 1 tokens; steps 0..output_len-2.
    return workload.input_len + workload.output_len / 2


def bench_figures(stat: Static, tpot_ns: float) -> tuple[float, float, float]:
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


def prepare(
    workload: Workload, config: Mapping[str, Any], hardware: Hardware | None
) -> tuple[Static, Plan]:
    """The workload's Static and the layer plan of `config` (both cached)."""
    hw = hardware_of(workload, hardware)
    stat = static_of(workload, hw)
    pf = resolve_prefetches(config, stat.setup, num_tokens=workload.max_num_seqs)
    return stat, _plan_cached(stat, tuple(pf))


@lru_cache(maxsize=4096)
def _plan_cached(stat: Static, prefetches: tuple[ResolvedPrefetch, ...]) -> Plan:
    return plan_layer(stat.spec, stat.setup, stat.hw, prefetches, stat.workload.gate_up_join)


def tpot_ns(stat: Static, plan: Plan) -> float:
    """Mean decode step: attention is linear in context and never overlaps a CMO, so the step at
    the mean context is the mean step."""
    runner = _Steps(stat, plan, Engine(stat.hw, record=False))
    attn = _attn_dur(stat.hw, stat.spec, stat.setup, _mean_ctx(stat.workload))
    layer = runner.layer(0.0, attn, 0, 0, None)
    return stat.fixed_ns + stat.spec.num_hidden_layers * layer


def simulate_throughput(
    workload: Workload, config: Mapping[str, Any], hardware: Hardware | None = None
) -> float:
    """Noiseless modelled output throughput (tokens/s) of one trial; writes nothing."""
    stat, plan = prepare(workload, config, hardware)
    return bench_figures(stat, tpot_ns(stat, plan))[0]


# ---------------------------------------------------------------------------------------------
# Running layers and steps


class _Steps:
    """Runs ops, layers and steps on one engine; with `realism` and `rng`, as a profile has them."""

    def __init__(
        self,
        stat: Static,
        plan: Plan,
        eng: Engine,
        realism: Realism | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.stat, self.plan, self.eng = stat, plan, eng
        self.realism = realism
        self.rng = rng
        r = realism
        graph = stat.setup.graph_mode
        # The profiler slows the host: its launch gaps in eager mode and its time between steps.
        host = 1.0 + (r.profiler_host if r is not None else 0.0)
        self.gap = plan.gap * (1.0 if graph else host)
        self.host = host
        self.task_ns = (r.profiler_task_us * 1e3) if r is not None else 0.0
        self.comm_stream = r is not None and r.comm_stream
        self.peers = max(1, stat.setup.tp - 1)
        self.hccl_free: float | None = None  # end of the HCCL stream's last task
        self.groups: list[Op] = []  # the collectives run on the HCCL stream, by group

    # -- noise ----------------------------------------------------------------------------

    def factors(self, n: int, step_factor: float) -> npt.NDArray[np.float64] | None:
        """Per-kernel duration factors of n kernels (None: all 1)."""
        r, rng = self.realism, self.rng
        if r is None or rng is None:
            return None
        if r.kernel_jitter <= 0 and r.kernel_outlier <= 0 and step_factor == 1.0:
            return None
        f = np.ones(n)
        if r.kernel_jitter > 0:
            f = np.clip(1.0 + rng.normal(0.0, r.kernel_jitter, n), 0.5, 1.5)
        if r.kernel_outlier > 0:
            long = rng.random(n) < r.kernel_outlier
            if long.any():
                f[long] *= rng.uniform(1.3, r.kernel_outlier_max, int(long.sum()))
        return f * step_factor

    # -- recording ------------------------------------------------------------------------

    def _task(
        self,
        kind: str,
        start: float,
        end: float,
        op: Op | None,
        step: int,
        layer: int,
        group: int = -1,
    ) -> None:
        if self.eng.record:
            task = Task(COMPUTE_STREAM, kind, start, end, op, step, layer, group=group)
            self.eng.tasks.append(task)

    def _collective(self, t: float, op: Op, dur: float, step: int, layer: int) -> float:
        """A collective on the HCCL stream, joined by a compute-stream wait; returns its end."""
        eng = self.eng
        rec = min(_HCCL_REC_NS, 0.1 * dur)
        t_rec = eng.run(t, rec, 0.0)
        t_end = eng.run(t_rec, dur - rec, 0.0)
        if not eng.record:
            return t_end
        group = len(self.groups)
        self.groups.append(op)
        self._task("record", t, t_rec, None, step, layer, group)
        self._task("wait", t_rec, t_end, None, step, layer, group)
        # The HCCL stream: its wait for the record, the collective's tasks, its own record.
        wake = min(_HCCL_WAKE_NS, 0.2 * dur)
        h_rec = min(_HCCL_REC_NS, 0.05 * dur)
        body_start = t_rec + wake
        body_end = t_end - min(SIGNAL_NS, 0.05 * dur) - h_rec
        tasks = eng.tasks
        # Its wait was queued when its last collective ended (the first: with the record).
        wait_from = t if self.hccl_free is None else min(self.hccl_free, t_rec)
        tasks.append(
            Task(HCCL_STREAM, "wait", wait_from, body_start, None, step, layer, group=group)
        )
        for name, s, e in _collective_tasks(body_start, body_end, self.peers):
            tasks.append(Task(HCCL_STREAM, "hccl", s, e, op, step, layer, name, group))
        end = body_end + h_rec
        tasks.append(Task(HCCL_STREAM, "record", body_end, end, None, step, layer, group=group))
        self.hccl_free = body_end + h_rec
        return t_end

    # -- ops, layers, steps ---------------------------------------------------------------

    def op(
        self,
        t: float,
        op: Op,
        scale: float,
        attn: tuple[float, float] | None,
        step: int,
        layer: int,
    ) -> float:
        """Run one compute-stream op from t; returns its end (before the gap after it)."""
        eng = self.eng
        if op.is_comm and self.comm_stream:
            return self._collective(t, op, op.dur * scale, step, layer)
        start = t
        if op.attention and attn is not None:
            t = eng.run(t, attn[0] * scale, attn[1])
        elif op.weight:
            t = eng.matmul(t, op, scale)
        else:
            t = eng.run(t, op.dur * scale, op.hbm)
        self._task("op", start, t, op, step, layer)
        return t

    def ops(
        self, t: float, ops: Sequence[Op], step: int, factors: npt.NDArray[np.float64] | None
    ) -> float:
        """Head or tail ops (no prefetches there) from t; returns the next op's start."""
        for k, op in enumerate(ops):
            scale = 1.0 if factors is None else float(factors[k])
            t = self.op(t, op, scale, None, step, -1)
            t = self.eng.run(t, self.gap + self.task_ns, 0.0)
        return t

    def layer(
        self,
        t: float,
        attn: tuple[float, float],
        step: int,
        layer: int,
        factors: npt.NDArray[np.float64] | None,
    ) -> float:
        """One decoder layer from t (the start of its first op); returns the next op's start."""
        eng, plan = self.eng, self.plan
        rec_dur = _REC_SHARE * plan.t_sync
        gap_sync = _GAP_SHARE * plan.t_sync
        wait_min = _WAIT_SHARE * plan.t_sync
        extra = self.task_ns
        pending: list[Cmo] = []  # issued since the last join
        k = 0  # op counter, for the factors
        items = plan.items
        for pos, item in enumerate(items):
            if isinstance(item, Issue):
                p = plan.prefetches[item.index]
                start = t
                t = eng.run(t, rec_dur, 0.0)
                self._task("record", start, t, None, step, layer)
                c = Cmo(item.index, p.site, p.weight, float(p.bytes), start, t, layer, step)
                eng.issue(c)
                pending.append(c)
                t = eng.run(t, gap_sync + extra, 0.0)
                continue
            if isinstance(item, Join):
                t = self._join(t, pending, wait_min, step, layer)
                pending = []
                t = eng.run(t, self.gap + extra, 0.0)
                continue
            op = item
            scale = 1.0 if factors is None else float(factors[k])
            k += 1
            # The matmul that reads a pending prefetch's weight ends its window.
            if op.weight:
                for c in pending:
                    if c.weight == op.weight:
                        c.window_open = False
            start = t
            t = self.op(t, op, scale, attn, step, layer)
            if not (op.is_comm and self.comm_stream):
                for c in pending:
                    if c.window_open:
                        if c.window_start < 0:
                            c.window_start = start
                        c.window_end = t
            # A join follows its window after a short sync gap instead of a kernel gap.
            nxt = items[pos + 1] if pos + 1 < len(items) else None
            t = eng.run(t, (gap_sync if isinstance(nxt, Join) else self.gap) + extra, 0.0)
        return t

    def _join(self, t: float, pending: list[Cmo], wait_min: float, step: int, layer: int) -> float:
        """The compute-stream wait for the pending prefetches; returns its end."""
        eng = self.eng
        start = t
        # The prefetch stream records right after its last CMO (the host queued it already).
        done = max(eng.drain(t), pending[-1].record_end) if pending else t
        t_end = max(start + wait_min, done + PF_RECORD_NS + SIGNAL_NS)
        if eng.record:
            eng.tasks.append(
                Task(PREFETCH_STREAM, "record", done, done + PF_RECORD_NS, None, step, layer)
            )
            self._task("wait", start, t_end, None, step, layer)
        eng.pf_free = max(eng.pf_free, done + PF_RECORD_NS)
        # The wait is spent on the CMOs in the order they run on the prefetch stream: each is
        # charged the stretch until it ends, the last one also the sync after it.
        order = sorted(pending, key=lambda c: (c.end, c.index))
        prev = start
        for i, c in enumerate(order):
            c.window_open = False
            c.join_start, c.join_end = start, t_end
            upto = t_end if i == len(order) - 1 else min(t_end, max(prev, c.end))
            c.stall_span = (prev, upto)
            prev = upto
        return t_end


def _collective_tasks(start: float, end: float, peers: int) -> list[tuple[str, float, float]]:
    """The HCCL stream's tasks of one mesh collective in [start, end], in the shapes of the real
    capture: a notify to the peers (Write Value), a wait for them (Notify Wait: where the skew
    between ranks shows), one SDMA per peer side by side on the same stream, a closing notify
    and wait."""
    span = max(end - start, 0.0)
    out = [
        ("Write Value", start, start + 0.06 * span),
        ("Notify Wait", start + 0.08 * span, start + 0.2 * span),
    ]
    t, length = start + 0.2 * span, 0.6 * span
    stagger = 0.05 * length / peers
    for i in range(peers):
        out.append(("SDMA", t + i * stagger, t + length - (peers - 1 - i) * stagger / 4))
    t += length
    out.append(("Write Value", t, t + 0.06 * span))
    out.append(("Notify Wait", t + 0.08 * span, end))
    return out


def config_hash(config: Mapping[str, Any]) -> int:
    """Stable across runs and processes (unlike hash())."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


def profiled_contexts(workload: Workload, realism: Realism) -> list[float]:
    """Mean context of the batch in each profiled decode step.

    With `launcher_steps`, the steps vllm-ascend's profiler keeps from the launcher's burst of
    max-num-seqs requests: it skips `delay_iterations` = prefill steps + PROFILE_DELAY_MARGIN
    iterations, by when a request prefilled in iteration p (evenly over the prefill steps) has
    decoded for the rest. Else the steps in the middle of the output (mean context = the bench's).
    """
    w = workload
    last = w.input_len + w.output_len - 1  # the last decode step's context
    if realism.launcher_steps:
        prefill = math.ceil(w.max_num_seqs * w.input_len / w.max_num_batched_tokens)
        first = w.input_len + PROFILE_DELAY_MARGIN + (prefill + 1) / 2
        return [min(first + k, last) for k in range(w.profile_steps)]
    mid = max(0, (w.output_len - 1) // 2 - w.profile_steps // 2)
    return [min(w.input_len + mid + k + 1, last) for k in range(w.profile_steps)]


def simulate_trial(
    workload: Workload,
    config: Mapping[str, Any],
    hardware: Hardware | None = None,
    *,
    realism: Realism = REALISTIC,
    seed: int = 0,
    timeline: bool = True,
) -> SimTrial:
    """Simulate one trial: noiseless bench figures plus the profiled steps and their truth.

    The profiled steps follow `realism` (seeded with `seed` and the config, so a seed gives the
    same profile on every run); the truth follows the jittered timeline exactly.
    `timeline=False` skips the profiled steps (no tasks, no truth).
    """
    realism.check()
    stat, plan = prepare(workload, config, hardware)
    tpot = tpot_ns(stat, plan)
    thr, duration, ttft = bench_figures(stat, tpot)
    rng = np.random.default_rng([seed, config_hash(config)])
    runner = _Steps(stat, plan, Engine(stat.hw, record=True), realism, rng)
    hw = stat.hw
    n_layers = stat.spec.num_hidden_layers
    n_ops = sum(isinstance(it, Op) for it in plan.items)
    tail = stat.tail
    if realism.kernel_names == "mixed":
        # A format conversion before the sampler, as the op cache names it (profile only).
        trans = trans_data(hw, stat.setup.max_num_seqs, stat.spec.hidden_size)
        tail = (*tail[:-1], trans, tail[-1])
    contexts = profiled_contexts(workload, realism) if timeline else []
    spans: list[tuple[int, int]] = []
    t = 0.0
    for step, ctx in enumerate(contexts):
        step_f = float(np.exp(rng.normal(0.0, realism.step_jitter))) if realism.step_jitter else 1.0
        host_f = float(np.exp(rng.normal(0.0, realism.host_jitter))) if realism.host_jitter else 1.0
        attn = _attn_dur(hw, stat.spec, stat.setup, ctx)
        step_start = t
        t += hw.step_overhead_us * 1e3 * host_f * runner.host  # host time before the first kernel
        t = runner.ops(t, stat.head, step, runner.factors(len(stat.head), step_f))
        for layer in range(n_layers):
            t = runner.layer(t, attn, step, layer, runner.factors(n_ops, step_f))
        t = runner.ops(t, tail, step, runner.factors(len(tail), step_f))
        t -= runner.gap + runner.task_ns  # the step ends with its last kernel
        spans.append((round(step_start), round(t)))
    eng = runner.eng
    style = realism.task_style(stat.setup.graph_mode)
    tasks = _tasks_frame(eng.tasks, style, mixed=realism.kernel_names == "mixed")
    return SimTrial(
        workload=workload,
        config=json.loads(json.dumps(dict(config))),
        hardware=hw,
        prefetches_per_layer=list(plan.prefetches),
        tpot_ms=tpot / 1e6,
        ttft_ms=ttft,
        output_throughput=thr,
        duration_s=duration,
        step_ms=[(e - s) / 1e6 for s, e in spans],
        step_spans=spans,
        prefetches=_truth_frame(eng.cmos),
        tasks=tasks,
        collectives=_collectives_frame(runner.groups, eng.tasks),
        realism=realism,
        seed=seed,
        contexts=contexts,
        notes=[NOTE, hw.summary(), realism.summary()],
    )


def step_spread(trial: SimTrial) -> float:
    """Relative std of one of the trial's profiled steps that its effects give
    (`Realism.step_spread` with this trial's host and kernel shares and kernel sizes)."""
    t = trial.tasks
    kernels = t[t["kind"] == "kernel"]
    dur = (kernels["end_ns"] - kernels["start_ns"]).to_numpy(dtype=np.float64)
    steps = len(trial.step_ms)
    total = sum(trial.step_ms) * 1e6
    if not steps or not dur.sum():
        return 0.0
    r = trial.realism
    host = trial.hardware.step_overhead_us * 1e3 * (1 + r.profiler_host) * steps / total
    n_eff = dur.sum() ** 2 / (dur**2).sum() / steps  # equally long kernels with this spread
    return r.step_spread(host, float(dur.sum() / total), float(n_eff))


# ---------------------------------------------------------------------------------------------
# Frames


def _sync_names(style: str) -> dict[str, tuple[str, str, str]]:
    """(name, Task Type, db task type) of the CMO, record and wait tasks in a naming style."""
    sqe = style != "host"
    cmo = {"host": ("CMO", "CMO", "CMO"), "sqe": ("CMO", "SDMA_SQE", "CMO")}.get(
        style, ("SDMA_SQE", "SDMA_SQE", "SDMA_SQE")
    )
    return {
        "cmo": cmo,
        "record": ("EVENT_RECORD", "EVENT_RECORD_SQE" if sqe else "EVENT_RECORD", "EVENT_RECORD"),
        "wait": ("EVENT_WAIT", "EVENT_WAIT_SQE" if sqe else "EVENT_WAIT", "EVENT_WAIT"),
    }


_Desc = tuple[str, str, str, str, str, str, str, str, str]


def _describe(op: Op, mixed: bool) -> _Desc:
    name = op.node_name if mixed and op.node_name else op.name
    return (name, op.core, _RT_TYPE[op.core], op.op_type, op.in_shapes, op.out_shapes,
            op.in_types, op.out_types, "kernel")  # fmt: skip


def _tasks_frame(tasks: list[Task], style: str, *, mixed: bool) -> pd.DataFrame:
    """Device tasks in time order, integer ns relative to the profile start (0)."""
    # Each distinct description once (kernels repeat every layer), then columns in bulk.
    sync = {k: (*v, "", "", "", "", "", k) for k, v in _sync_names(style).items()}
    table: list[_Desc] = []
    index: dict[object, int] = {}
    which = np.empty(len(tasks), dtype=np.int64)
    for i, tk in enumerate(tasks):
        key: object = tk.name if tk.kind == "hccl" else tk.kind if tk.op is None else id(tk.op)
        k = index.get(key)
        if k is None:
            if tk.kind == "hccl":
                desc: _Desc = (tk.name, tk.name, tk.name, "", "", "", "", "", "comm")
            elif tk.op is None:
                desc = sync[tk.kind]
            else:
                desc = _describe(tk.op, mixed)
            k = index[key] = len(table)
            table.append(desc)
        which[i] = k
    start = np.array([tk.start for tk in tasks], dtype=np.float64)
    stream = np.array([tk.stream for tk in tasks], dtype=np.int64)
    group = np.array([tk.group for tk in tasks], dtype=np.int64)
    order = np.lexsort((stream, start))
    stream, group, which = stream[order], group[order], which[order]
    task_id = np.zeros(len(order), dtype=np.int64)
    for s, base in ((COMPUTE_STREAM, 1000), (PREFETCH_STREAM, 10), (HCCL_STREAM, 800)):
        on = stream == s
        task_id[on] = base + 1 + np.arange(int(on.sum()))
    # The tasks of one collective share its connection id, as in the real capture.
    comm = np.array([d[-1] == "comm" for d in table], dtype=bool)[which]
    first = np.ones(len(order), dtype=bool)
    if comm.any():
        g = group[comm]
        _, at = np.unique(g, return_index=True)
        firsts = np.zeros(len(g), dtype=bool)
        firsts[at] = True
        first[comm] = firsts
    conn = np.cumsum(first)
    if comm.any():
        owner = {
            int(gr): int(c) for gr, c in zip(group[comm & first], conn[comm & first], strict=True)
        }
        conn[comm] = [owner[int(gr)] for gr in group[comm]]
    cols = list(zip(*table, strict=True)) if table else [()] * 9
    text = [np.array(c, dtype=object)[which] for c in cols]
    name, typ, rt, op_type, in_s, out_s, in_t, out_t, kind = text
    ordered = [tasks[i] for i in order]
    data = {
        "device": np.full(len(order), DEVICE_ID, dtype=np.int64),
        "stream": stream,
        "task_id": task_id,
        "name": name,
        "type": typ,
        "rt_type": rt,
        "op_type": op_type,
        "start_ns": np.array([round(tk.start) for tk in ordered], dtype=np.int64),
        "end_ns": np.array([round(tk.end) for tk in ordered], dtype=np.int64),
        "connection_id": conn.astype(np.int64),
        "step": np.array([tk.step for tk in ordered], dtype=np.int64),
        "layer": np.array([tk.layer for tk in ordered], dtype=np.int64),
        "in_shapes": in_s,
        "out_shapes": out_s,
        "in_types": in_t,
        "out_types": out_t,
        "kind": kind,
        "group": group,
    }
    return pd.DataFrame(data, columns=list(TASK_COLUMNS))


def _collectives_frame(groups: list[Op], tasks: list[Task]) -> pd.DataFrame:
    """One row per collective on the HCCL stream: its name and the span of its tasks."""
    spans: dict[int, tuple[float, float]] = {}
    for tk in tasks:
        if tk.kind == "hccl":
            s, e = spans.get(tk.group, (math.inf, -math.inf))
            spans[tk.group] = (min(s, tk.start), max(e, tk.end))
    rows = [
        (g, f"{op.op_type}_{_HCCL_GROUP}_{g}_1", op.op_type, round(s), round(e), int(op.comm_bytes))
        for g, op in enumerate(groups)
        for s, e in [spans[g]]
    ]
    df = pd.DataFrame(rows, columns=list(COLLECTIVE_COLUMNS))
    ints = ("group", "start_ns", "end_ns", "bytes")
    return df.astype(dict.fromkeys(ints, "int64"))


def _truth_frame(cmos: list[Cmo]) -> pd.DataFrame:
    """Per prefetch, what the schedule made of it (ns, relative to the profile start); late by
    the rule `autotune analyze` applies, at its default tolerance."""
    tol_ns = tolerance_ns(DEFAULT_LATE_TOLERANCE_US)
    rows = []
    for c in cmos:
        start, end, wend = round(c.start), round(c.end), round(c.window_end)
        slack = wend - end
        js, je = round(c.join_start), round(c.join_end)
        # Rounded at both ends, so the stalls of one join add up to its duration.
        stall = 0 if c.stall_span is None else round(c.stall_span[1]) - round(c.stall_span[0])
        rows.append((c.site, c.weight, int(c.nbytes), c.layer, c.step, start, end,
                     round(c.window_start), wend, slack, js, je, stall,
                     prefetch_late(slack, tol_ns)))  # fmt: skip
    df = pd.DataFrame(rows, columns=list(GROUND_TRUTH_COLUMNS))
    for col in GROUND_TRUTH_COLUMNS:
        if col not in ("site", "weight", "late"):
            df[col] = df[col].astype("int64")
    df["late"] = df["late"].astype(bool)
    return df
