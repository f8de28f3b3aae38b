"""Prefetch <-> window <-> join matching, per-site and per-point metrics.

Input: classified tasks (autotune.profile). Output: `OverlapResult`, plain data that renderers
present. Vendor criterion: a prefetch must overlap the vector op it hides behind and end no
later than it. Two matchers: vllm-ascend 0.23's sites (the rules of docs/analysis.md, each
stream matched with searchsorted) and the general prefetch model of `autotune.points`; the
layout (`autotune.layouts`) decides which one reads a profile. Steps come from the recorded step
markers (`autotune.profile.steps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune import layouts
from autotune.lateness import rule_text, site_late
from autotune.points import (
    PREFETCH_COLUMNS,
    DeviceTimeline,
    Metrics,
    PointSummary,
    Sizes,
    Tied,
    before_issue,
    describe,
    device_timeline,
    match_general,
    metrics,
    prefetch_frame,
    settle,
    summarise_points,
    weight_cubes,
)
from autotune.profile.steps import step_index
from autotune.profile.tasks import Profile, ProfiledStep
from autotune.streams import COMM, CUBE, ROLE_CODE, Streams
from autotune.target import SITES

__all__ = [
    "PREFETCH_COLUMNS",
    "OverlapResult",
    "PointSummary",
    "SiteSegment",
    "SiteSummary",
    "StepTime",
    "analyze",
    "late_sites",
    "site_segments",
]


@dataclass(frozen=True)
class SiteSummary(Metrics):
    """Per-site aggregate over all profiled layers and steps (count: prefetches attributed to
    the site)."""

    site: str
    windows: int  # windows of this site's kind seen on the compute stream
    verdict: str  # "inert" (no prefetch), "late" (autotune.lateness.site_late) or "hidden"


@dataclass(frozen=True)
class StepTime:
    """One profiled step a profile holds: its device span (the per-step spread of the profile)."""

    rank: int
    step: int  # the marker's step number
    start_ns: int
    end_ns: int
    complete: bool  # False when the end of a cut-off file falls inside it

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "step": self.step,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_us": round((self.end_ns - self.start_ns) / 1000, 3),
            "complete": self.complete,
        }


@dataclass
class OverlapResult:
    """Everything the analysis found; renderers only present this."""

    prefetches: pd.DataFrame  # PREFETCH_COLUMNS
    sites: list[SiteSummary]  # the vllm-ascend labelling (empty under another layout)
    unattributed: int  # prefetches with no window/point
    windows_without_prefetch: dict[str, int]  # site -> windows that had no prefetch
    unclassified_types: dict[str, int]  # task type -> count, summed over profiles
    steps: int  # profiled steps (>= 1): the most any one profile holds
    simulated: bool  # any input profile was written by the simulator
    warnings: list[str] = field(default_factory=list)
    late_tolerance_us: float = 0.0  # the tolerance the late flags and verdicts used
    join_us_total: float = 0.0  # time of every join (compute-stream wait on a prefetch stream)
    unattributed_stall_us: float = 0.0  # join time charged to no prefetch
    rank_steps: int = 1  # sum of the profiles' complete steps (the per-step divisor)
    layout: str = "vllm-ascend"  # the layout that read the prefetches
    layout_reason: str = ""  # why (`--layout auto`), or that the user chose it
    points: list[PointSummary] = field(default_factory=list)
    # (profile path, device) -> the compute and prefetch streams the analysis read
    streams: dict[tuple[str, int], Streams] = field(default_factory=dict)
    step_times: list[StepTime] = field(default_factory=list)  # every step held, every rank
    unattributed_stall_us_counted: float | None = None  # the part inside complete steps

    @property
    def unattributed_stall_us_per_step(self) -> float:
        """Unattributed join time per rank and step, like the sites' stall per step."""
        counted = self.unattributed_stall_us_counted
        total = self.unattributed_stall_us if counted is None else counted
        return total / max(self.rank_steps, 1)

    def to_json(self) -> dict[str, Any]:
        """The `autotune analyze --json` object: plain Python types, null for an empty median."""
        sites = []
        for s in self.sites:
            sites.append(
                {
                    "site": s.site,
                    "count": s.count,
                    "late": s.late,
                    "windows": s.windows,
                    "windows_without_prefetch": self.windows_without_prefetch.get(s.site, 0),
                    "hidden_fraction_median": _json_float(s.hidden_fraction_median, 6),
                    "slack_us_median": _json_float(s.slack_us_median, 4),
                    "slack_us_p90": _json_float(s.slack_us_p90, 4),
                    "slack_us_min": _json_float(s.slack_us_min, 4),
                    "stall_us_total": _json_float(s.stall_us_total, 4),
                    "stall_us_per_step": _json_float(s.stall_us_per_step, 4),
                    "verdict": s.verdict,
                }
            )
        late = self.prefetches["late"].to_numpy(dtype=bool)
        return {
            "prefetches": len(self.prefetches),
            "late": int(late.sum()),
            "layout": self.layout,
            "layout_reason": self.layout_reason,
            "sites": sites,
            "points": [p.to_json() for p in self.points],
            "unattributed": int(self.unattributed),
            "windows_without_prefetch": {
                k: int(v) for k, v in self.windows_without_prefetch.items()
            },
            "unclassified_types": {str(k): int(v) for k, v in self.unclassified_types.items()},
            "warnings": [str(w) for w in self.warnings],
            "steps": int(self.steps),
            "step_times": [s.to_json() for s in self.step_times],
            "simulated": bool(self.simulated),
            "late_tolerance_us": float(self.late_tolerance_us),
            "late_rule": rule_text(self.late_tolerance_us),
            "join_us_total": round(float(self.join_us_total), 4),
            "unattributed_stall_us": round(float(self.unattributed_stall_us), 4),
        }

    def streams_of(self, profile: Profile, device: int) -> Streams | None:
        """The streams the analysis read on one device of `profile` (None: not analysed)."""
        return self.streams.get((str(profile.path), device))


def late_sites(result: OverlapResult) -> list[str]:
    """The sites `autotune.lateness.site_late` calls late, in site order (every view uses this)."""
    return [s.site for s in result.sites if s.verdict == "late"]


def _json_float(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(float(x), digits)


# ---------------------------------------------------------------------------------------------
# Roles and window kinds

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_SWIGLU = ROLE_CODE["vector:swiglu"]
_NORM = ROLE_CODE["vector:norm"]
_QUANT = ROLE_CODE["vector:quant"]
_GATING = ROLE_CODE["vector:gating"]
_CUBE = CUBE
_COMM = COMM

# (site, window kind, weight) of each window kind the walk can find; index = window code.
_WINDOW_KINDS: tuple[tuple[str, str, str], ...] = (
    ("attn.qkv", "quant", "qkv_proj"),
    ("attn.o", "quant", "o_proj"),
    ("attn.o", "quant", "down_proj"),
    ("mlp.gate_up", "norm", "gate_up_proj"),
    ("mlp.down", "swiglu", "down_proj"),
    ("moe.gate_up", "gating", "w13"),
)
_W_QKV, _W_O, _W_O_DOWN, _W_GATE_UP, _W_DOWN, _W_MOE = range(len(_WINDOW_KINDS))


def _last_before(sorted_idx: I64, q: I64) -> I64:
    """Per q: the largest element of sorted_idx strictly below q, or -1."""
    if len(sorted_idx) == 0:
        return np.full(len(q), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_idx, q, side="left") - 1
    return np.where(pos >= 0, sorted_idx[np.maximum(pos, 0)], -1).astype(np.int64)


def _first_after(sorted_idx: I64, q: I64, sentinel: int) -> I64:
    """Per q: the smallest element of sorted_idx strictly above q, or sentinel."""
    if len(sorted_idx) == 0:
        return np.full(len(q), sentinel, dtype=np.int64)
    pos = np.searchsorted(sorted_idx, q, side="right")
    last = len(sorted_idx) - 1
    return np.where(pos <= last, sorted_idx[np.minimum(pos, last)], sentinel).astype(np.int64)


@dataclass
class _Windows:
    """Windows of one compute stream, in time order; first/last index the stream's ops."""

    code: I64
    first: I64
    last: I64
    layer: I64  # layer index over the whole stream (0-based)
    anchors: I64  # op index of the first attention kernel of each layer
    partial_first: bool  # windows before the first attention kernel form a layer of their own


def _find_windows(roles: I64, is_attn: Bools) -> _Windows:
    """Apply the window rules of docs/analysis.md to one compute stream's ops (no record/wait)."""
    n = len(roles)
    idx = np.arange(n, dtype=np.int64)
    prev_role = np.concatenate(([-1], roles[:-1])).astype(np.int64)
    prev_attn = np.concatenate(([False], is_attn[:-1])).astype(bool)

    # A window runs up to the next cube op; the caller cuts it at the first join after its start.
    cubes = idx[roles == _CUBE]

    def extent(first: I64) -> I64:
        return _first_after(cubes, first, n) - 1

    attn = idx[is_attn]
    plain_cube = idx[(roles == _CUBE) & ~is_attn]
    norms = idx[roles == _NORM]

    # mlp.gate_up: the first norm after the cube op that follows an attention kernel; only the
    # last attention kernel before that norm counts, so a split attention yields one window.
    after_cube = _first_after(plain_cube, attn, n)
    gate_norm = _first_after(norms, after_cube, n)
    next_attn = _first_after(attn, attn, n)
    gate_up = np.unique(gate_norm[(gate_norm < n) & (gate_norm < next_attn)])

    # Layers are anchored on their first attention kernel: none since the last gate_up norm.
    prev_a = _last_before(attn, attn)
    anchors = attn[(prev_a < 0) | (_last_before(gate_up, attn) > prev_a)]

    quant = idx[roles == _QUANT]
    o_proj = quant[prev_attn[quant]]
    o_down = quant[prev_role[quant] == _SWIGLU]
    # attn.qkv: the quant right after the input norm (comm may sit between) and before the layer's
    # attention; the post-attention norm's quant (row 13) is excluded.
    prev_op = _last_before(idx[roles != _COMM], quant)
    after_norm = (prev_op >= 0) & (roles[np.maximum(prev_op, 0)] == _NORM)
    after_norm &= ~np.isin(prev_op, gate_up)
    before_attn = _last_before(gate_up, quant) >= _last_before(attn, quant)
    qkv = quant[after_norm & before_attn & ~prev_attn[quant] & (prev_role[quant] != _SWIGLU)]

    swiglu = idx[roles == _SWIGLU]
    gating = idx[roles == _GATING]

    parts = [
        (qkv, extent(qkv), _W_QKV),
        (o_proj, extent(o_proj), _W_O),
        (o_down, extent(o_down), _W_O_DOWN),
        (gate_up, extent(gate_up), _W_GATE_UP),
        (swiglu, extent(swiglu), _W_DOWN),
        (gating, extent(gating), _W_MOE),
    ]
    first = np.concatenate([p[0] for p in parts]).astype(np.int64)
    last = np.concatenate([p[1] for p in parts]).astype(np.int64)
    code = np.concatenate([np.full(len(p[0]), p[2], dtype=np.int64) for p in parts])
    order = np.argsort(first, kind="stable")
    first, last, code = first[order], last[order], code[order]

    # qkv belongs to the layer of the next attention kernel, every other window to the previous.
    layer = np.where(
        code == _W_QKV,
        np.searchsorted(anchors, first, side="left"),
        np.searchsorted(anchors, first, side="right") - 1,
    ).astype(np.int64)
    partial_first = bool(len(layer) and layer.min() < 0)
    if partial_first:
        layer += 1
    return _Windows(code, first, last, layer, anchors, partial_first)


def _steps_of_layers(layer_t: I64, steps: int) -> tuple[I64, bool]:
    """Step index of each layer: equal shares when they divide, else split at the largest gaps."""
    k = len(layer_t)
    if steps <= 1 or k <= 1:
        return np.zeros(k, dtype=np.int64), False
    if k % steps == 0:
        return (np.arange(k, dtype=np.int64) // (k // steps)).astype(np.int64), False
    gaps = np.diff(layer_t)
    cut = np.argsort(-gaps, kind="stable")[: steps - 1]
    starts = np.zeros(k, dtype=np.int64)
    starts[cut + 1] = 1
    return np.cumsum(starts).astype(np.int64), True


@dataclass
class _StepPlan:
    """How one profile's tasks map to steps: the steps it holds (from its markers), or only a
    step count (no marker times: layers are split into that many steps)."""

    held: list[ProfiledStep]
    count: int

    @property
    def complete(self) -> Bools:
        return np.array([s.complete for s in self.held], dtype=bool)

    @property
    def per_step(self) -> int:
        """The per-step divisor: complete steps held (at least 1), else the count."""
        if self.held:
            return max(int(self.complete.sum()), 1)
        return self.count

    def counted(self, step: I64) -> Bools:
        """Which rows (by step index) count towards per-step figures."""
        if not self.held:
            return np.ones(len(step), dtype=bool)
        complete = self.complete
        if not complete.any():  # only a cut-off step: it is all there is
            complete = np.ones(len(complete), dtype=bool)
        return (step >= 0) & complete[np.clip(step, 0, len(complete) - 1)]

    def begin_of(self, t: I64) -> I64:
        """Where the step of each time begins (int64 min before the first or without times)."""
        lowest = np.iinfo(np.int64).min
        if not self.held:
            return np.full(len(t), lowest, dtype=np.int64)
        begin = np.array([s.begin_ns for s in self.held], dtype=np.int64)
        k = self.of_times(t)
        return np.where(k >= 0, begin[np.maximum(k, 0)], lowest).astype(np.int64)

    def of_times(self, t: I64) -> I64:
        """Step index of each time (-1 before the first step); 0 without marker times."""
        if not self.held:
            return np.zeros(len(t), dtype=np.int64)
        return step_index(self.held, t)


def _plan(p: Profile, label: str, warnings: list[str]) -> _StepPlan:
    if p.profiled_steps:
        return _StepPlan(list(p.profiled_steps), len(p.profiled_steps))
    if p.steps is None or p.steps < 1:
        # The reader may have said so already.
        if not any("step markers" in w for w in p.warnings):
            warnings.append(f"{label}: no step markers; stall is per profile (one step)")
        return _StepPlan([], 1)
    return _StepPlan([], int(p.steps))


def _layer_steps(layer_t: I64, plan: _StepPlan) -> tuple[I64, bool]:
    """Step index of each layer (-1 before the first step), and whether it was guessed at the
    largest gaps (a step count without marker times that the layers do not divide)."""
    if plan.held:
        return plan.of_times(layer_t), False
    return _steps_of_layers(layer_t, plan.count)


def _layer_in_step(layer_step: I64) -> I64:
    """Index of each layer within its step (layer_step is non-decreasing)."""
    n = len(layer_step)
    if not n:
        return np.zeros(0, dtype=np.int64)
    change = np.concatenate(([True], np.diff(layer_step) != 0))
    first = np.maximum.accumulate(np.where(change, np.arange(n), 0))
    return (np.arange(n) - first).astype(np.int64)


@dataclass
class _Tally:
    """What the device matchers add up over devices and profiles."""

    window_counts: dict[str, int] = field(default_factory=dict)
    idle_windows: dict[str, int] = field(default_factory=dict)
    join_ns: int = 0  # every join
    unattributed_ns: int = 0  # joins charged to no prefetch
    unattributed_counted_ns: int = 0  # the part inside complete steps
    warnings: list[str] = field(default_factory=list)

    def joins(self, dt: DeviceTimeline, charged: Bools, plan: _StepPlan) -> None:
        idx = dt.joins.index
        dur = dt.end[idx] - dt.start[idx]
        free = dur[~charged]
        self.join_ns += int(dur.sum())
        self.unattributed_ns += int(free.sum())
        counted = plan.counted(plan.of_times(dt.start[idx]))[~charged]
        self.unattributed_counted_ns += int(free[counted].sum())


def _vllm_device(
    dt: DeviceTimeline, plan: _StepPlan, tolerance_ns: int, where: str, tally: _Tally
) -> dict[str, Any]:
    """vllm-ascend 0.23's sites on one device (docs/analysis.md): PREFETCH_COLUMNS as arrays
    (rank left for the caller), plus "counted" (inside a complete step)."""
    warnings = tally.warnings
    pf = dt.pf
    ps = dt.start[pf]
    n_pf = len(pf)
    op_role, op_start, op_end = dt.op_role, dt.op_start, dt.op_end
    joins = dt.joins.index
    join_start = dt.start[joins]
    recs = dt.recs

    win = _find_windows(op_role, dt.is_attn)
    # A window ends before the first join that follows its first op (cube ops already cut it).
    if len(win.first) and len(joins):
        nxt = np.searchsorted(join_start, op_start[win.first], side="left")
        has = nxt < len(joins)
        cut = (
            np.searchsorted(op_start, join_start[np.minimum(nxt, len(joins) - 1)], side="left") - 1
        )
        win.last = np.where(has, np.maximum(np.minimum(win.last, cut), win.first), win.last)
    n_win = len(win.first)
    if n_win and len(win.anchors) == 0:
        warnings.append(f"{where}: no attention kernel on the compute stream; layers are unknown")
    w_start = op_start[win.first]
    w_end = op_end[win.last]
    w_first_end = op_end[win.first]

    # Layer times (first attention kernel, or first window of a partial layer) -> steps.
    n_layers = int(win.layer.max()) + 1 if n_win else len(win.anchors)
    n_layers = max(n_layers, len(win.anchors) + int(win.partial_first))
    layer_t = np.full(n_layers, np.iinfo(np.int64).max, dtype=np.int64)
    if len(win.anchors):
        layer_t[np.arange(len(win.anchors)) + int(win.partial_first)] = op_start[win.anchors]
    if n_win:
        np.minimum.at(layer_t, win.layer, w_start)
    layer_step, by_gaps = _layer_steps(layer_t, plan)
    if by_gaps:
        warnings.append(
            f"{where}: {n_layers} layers do not split evenly into {plan.count} steps; "
            "step boundaries taken at the largest gaps"
        )
    layer_in_step = _layer_in_step(layer_step)

    # Window -> prefetch: the last compute-stream record ended by the prefetch's start, then the
    # first window after it; without such a record, the first window whose first op ends after it.
    rec_end = np.maximum.accumulate(dt.end[recs]) if len(recs) else np.zeros(0, dtype=np.int64)
    r = np.searchsorted(rec_end, ps, side="right") - 1
    by_rec = np.searchsorted(w_start, rec_end[np.maximum(r, 0)], side="left") if len(recs) else r
    by_start = np.searchsorted(w_first_end, ps, side="right")
    w = np.where(r >= 0, by_rec, by_start).astype(np.int64)
    ok = w < n_win
    wi = np.minimum(w, max(n_win - 1, 0))

    codes = win.code[wi] if n_win else np.zeros(n_pf, dtype=np.int64)
    if n_win:
        matched = np.zeros(n_win, dtype=bool)
        matched[w[ok]] = True
        for c, (name, _, _) in enumerate(_WINDOW_KINDS):
            of_kind = win.code == c
            tally.window_counts[name] = tally.window_counts.get(name, 0) + int(of_kind.sum())
            tally.idle_windows[name] = tally.idle_windows.get(name, 0) + int(
                (of_kind & ~matched).sum()
            )

    # Join: the first join starting at/after the window's end (the one that cut the window, if
    # any). One join's wait is shared among the prefetches it joins, each charged the stretch
    # until its CMO ends (autotune.points.charge_stalls); a join no prefetch chose is
    # unattributed stall.
    win_e = np.where(ok, w_end[wi] if n_win else 0, -1)
    j = np.searchsorted(join_start, win_e, side="left").astype(np.int64)
    has_join = ok & (j < len(joins))
    no_join = int((ok & ~has_join).sum())
    if no_join:
        warnings.append(f"{where}: {no_join} prefetch(es) with no join on the compute stream")

    # Step and layer: from the window; an unattributed prefetch takes the step of the layer it
    # falls in by time.
    gl = np.where(ok, win.layer[wi] if n_win else 0, -1)
    if n_layers:
        by_time = np.searchsorted(layer_t, ps, side="right") - 1
        step_layer = np.minimum(np.where(ok, gl, np.maximum(by_time, 0)), n_layers - 1)
        step = layer_step[step_layer]
        layer = np.where(ok, layer_in_step[step_layer], -1)
    else:
        step = plan.of_times(ps)
        layer = np.full(n_pf, -1, dtype=np.int64)

    # The point view of each prefetch: one CMO per issue, its consumer the next weight-reading
    # cube op after its window; 0.23's windows never hold a cube op.
    first = np.where(ok, win.first[wi] if n_win else 0, 0).astype(np.int64)
    last = np.where(ok, win.last[wi] if n_win else 0, -1).astype(np.int64)
    wc = weight_cubes(dt)
    pos = np.searchsorted(wc, last + 1, side="left")
    consumer = np.where(
        ok & (pos < len(wc)), wc[np.minimum(pos, max(len(wc) - 1, 0))] if len(wc) else 0, -1
    )
    issue = np.where(r >= 0, rec_end[np.maximum(r, 0)] if len(recs) else 0, ps)
    ones: I64 = np.ones(n_pf, dtype=np.int64)
    before, _ = before_issue(dt, first, issue, plan.begin_of(issue))
    tied = Tied(ok, first, last, issue, np.where(has_join, j, -1), consumer, ok)
    cols, charged = settle(
        dt, tolerance_ns, tied, describe(dt, before, first, last, consumer, ones, ones)
    )
    tally.joins(dt, charged, plan)
    for column, at in (("site", 0), ("window_kind", 1), ("weight", 2)):
        labels = np.array([kind[at] for kind in _WINDOW_KINDS], dtype=object)
        cols[column] = np.where(ok, labels[codes], "").astype(object)
    cols.update(step=step, layer=layer, counted=plan.counted(step))
    return cols


def _general_device(
    dt: DeviceTimeline, plan: _StepPlan, tolerance_ns: int, where: str, tally: _Tally
) -> dict[str, Any]:
    """The general prefetch model on one device (autotune.points), with steps and layers: a
    point's layer is its occurrence within the step."""
    cols, charged = match_general(dt, tolerance_ns, plan.begin_of)
    n_pf = len(cols["start_ns"])
    ok = cols["point"] != ""
    if n_pf and not ok.any():
        tally.warnings.append(f"{where}: no compute-stream ops to hide {n_pf} prefetch(es) behind")
    no_join = int((ok & (cols["join_start_ns"] < 0)).sum())
    if no_join:
        tally.warnings.append(f"{where}: {no_join} prefetch(es) with no join on the compute stream")
    tally.joins(dt, charged, plan)
    step = plan.of_times(np.where(ok, cols["issue_ns"], cols["start_ns"]))
    key = pd.Series(cols["point"].astype(str)) + "\x00" + pd.Series(step.astype(str))
    layer = key.groupby(key).cumcount().to_numpy(dtype=np.int64)
    cols["step"] = step
    cols["layer"] = np.where(ok, layer, -1)
    cols["counted"] = plan.counted(step)
    return cols


def _label(p: Profile) -> str:
    return p.path.name or str(p.path)


_MATCHERS = {"vllm-ascend": _vllm_device, "general": _general_device}


def analyze(
    profiles: Sequence[Profile],
    *,
    late_tolerance_ns: int = 0,
    layout: str = "vllm-ascend",
    sizes: Sizes | None = None,
) -> OverlapResult:
    """Match every prefetch to its window and join, and summarise per site and per point.

    `layout` is one of autotune.layouts.LAYOUTS; "auto" decides from the timeline and says why.
    `sizes` gives the bytes of each prefetch where they are known (the what-to-change estimate
    then has bytes and a setting, not only a share). Stall per step is the stall inside complete
    profiled steps over all profiles divided by the sum of their complete steps, i.e. per rank
    and step; `steps` is the largest step count of any one profile.
    """
    if layout not in layouts.LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {layouts.LAYOUTS}")
    warnings: list[str] = []
    unclassified: dict[str, int] = {}
    step_total = 0
    steps_max = 1
    devices: list[tuple[int, str, DeviceTimeline, _StepPlan]] = []
    streams: dict[tuple[str, int], Streams] = {}
    step_times: list[StepTime] = []
    if not profiles:
        warnings.append("no profiles to analyse")
    for p in profiles:
        label = _label(p)
        warnings.extend(w for w in p.warnings if w not in warnings)
        for t, n in p.unclassified_types.items():
            unclassified[t] = unclassified.get(t, 0) + int(n)
        plan = _plan(p, label, warnings)
        step_total += plan.per_step
        steps_max = max(steps_max, plan.per_step)
        rank = -1 if p.rank is None else int(p.rank)
        step_times += [
            StepTime(rank, s.number, s.start_ns, s.end_ns, s.complete) for s in plan.held
        ]
        if len(p.tasks) == 0:
            warnings.append(f"{label}: no tasks")
            continue
        for _, dev_tasks in p.tasks.groupby("device", sort=True):
            dt = device_timeline(dev_tasks.reset_index(drop=True))
            streams[(str(p.path), dt.device)] = dt.streams
            where = f"{label} device {dt.device}"
            if not len(dt.pf):
                warnings.append(f"{where}: no prefetch stream (no CMO tasks)")
            if dt.streams.compute < 0:
                warnings.append(f"{where}: no compute stream (no vector or cube kernels)")
            if dt.on_compute_cmo:
                warnings.append(
                    f"{where}: {dt.on_compute_cmo} CMO task(s) on the compute stream itself are "
                    "not prefetches (they block it)"
                )
            devices.append((rank, where, dt, plan))

    chosen = layout
    reason = "given with --layout" if layout != "auto" else ""
    runs: dict[str, tuple[list[dict[str, Any]], _Tally]] = {}

    def run(kind: str) -> tuple[list[dict[str, Any]], _Tally]:
        if kind not in runs:
            tally = _Tally()
            parts = []
            for rank, where, dt, plan in devices:
                cols = _MATCHERS[kind](dt, plan, late_tolerance_ns, where, tally)
                cols["rank"] = np.full(len(cols["start_ns"]), rank, dtype=np.int64)
                parts.append(cols)
            runs[kind] = (parts, tally)
        return runs[kind]

    if layout == "auto":
        gen = pd.concat([pd.DataFrame(c) for c in run("general")[0]] or [pd.DataFrame()])
        vll = pd.concat([pd.DataFrame(c) for c in run("vllm-ascend")[0]] or [pd.DataFrame()])
        decision = layouts.detect(
            gen if len(gen) else pd.DataFrame(columns=["group_n"]),
            vll if len(vll) else pd.DataFrame(columns=["site"]),
        )
        chosen, reason = decision.layout, f"auto: {decision.reason}"
    parts, tally = run("vllm-ascend" if chosen == "vllm-ascend" else "general")
    if chosen == "sglang":
        for cols in parts:
            k, n = cols["group_k"], cols["group_n"]
            names = [
                layouts.SGLANG_WEIGHTS.get(int(x), "") if m == 2 else ""
                for x, m in zip(k, n, strict=False)
            ]
            cols["weight"] = np.array(names, dtype=object)
    warnings.extend(w for w in tally.warnings if w not in warnings)
    df = prefetch_frame(parts)
    counted = (
        np.concatenate([c["counted"] for c in parts]).astype(bool)
        if len(df)
        else np.zeros(0, dtype=bool)
    )
    per_step = max(step_total, 1)
    unattributed = int((df["point"].to_numpy(dtype=object) == "").sum())
    sites: list[SiteSummary] = []
    idle: dict[str, int] = {}
    if chosen == "vllm-ascend":
        sites = _summarise(df, counted, tally.window_counts, per_step, late_tolerance_ns)
        idle = {s: tally.idle_windows[s] for s in SITES if tally.idle_windows.get(s, 0) > 0}
    points = summarise_points(
        df,
        counted,
        per_step,
        late_tolerance_ns,
        lambda site, weight: layouts.knob(chosen, site, weight),
        sizes,
    )
    return OverlapResult(
        prefetches=df,
        sites=sites,
        unattributed=unattributed,
        windows_without_prefetch=idle,
        unclassified_types=dict(sorted(unclassified.items(), key=lambda kv: (-kv[1], kv[0]))),
        steps=steps_max,
        simulated=any(p.simulated for p in profiles),
        warnings=warnings,
        late_tolerance_us=late_tolerance_ns / 1000,
        join_us_total=tally.join_ns / 1000,
        unattributed_stall_us=tally.unattributed_ns / 1000,
        rank_steps=per_step,
        layout=chosen,
        layout_reason=reason,
        points=points,
        streams=streams,
        step_times=step_times,
        unattributed_stall_us_counted=tally.unattributed_counted_ns / 1000,
    )


def _summarise(
    df: pd.DataFrame,
    counted: Bools,
    window_counts: dict[str, int],
    step_total: int,
    tol_ns: int,
) -> list[SiteSummary]:
    out: list[SiteSummary] = []
    site_col = df["site"].to_numpy(dtype=object)
    for site in SITES:
        mask = site_col == site
        count = int(mask.sum())
        windows = window_counts.get(site, 0)
        if count == 0 and windows == 0:
            continue
        measured, median_ns = metrics(df, np.flatnonzero(mask), counted, step_total)
        verdict = ("late" if site_late(median_ns, tol_ns) else "hidden") if count else "inert"
        out.append(SiteSummary(**measured, site=site, windows=windows, verdict=verdict))
    return out


@dataclass(frozen=True)
class SiteSegment:
    """One site's stretch of the compute stream, medians over its windows (ns).

    The segment runs from the end of the op before the window to the end of the matmul that
    consumes the prefetched weight: `work` is its window ops and that matmul, `other` the rest
    (kernel gaps, the event record, the join wait). Prefetching a site changes only this stretch,
    so segments of one site compare across trials, with or without a prefetch.
    """

    site: str
    windows: int
    total_ns: float
    work_ns: float
    other_ns: float


# The window whose consumer matmul each site's segment ends at (attn.o: its o_proj window).
_SEGMENT_CODES: dict[int, str] = {
    _W_QKV: "attn.qkv",
    _W_O: "attn.o",
    _W_GATE_UP: "mlp.gate_up",
    _W_DOWN: "mlp.down",
    _W_MOE: "moe.gate_up",
}


def _device_segments(tasks: pd.DataFrame, out: dict[str, list[tuple[int, int]]]) -> None:
    dt = device_timeline(tasks)
    if dt.streams.compute < 0:
        return
    ops, op_role = dt.ops, dt.op_role
    win = _find_windows(op_role, dt.is_attn)
    plain_cube = np.flatnonzero((op_role == _CUBE) & ~dt.is_attn).astype(np.int64)
    consumer = _first_after(plain_cube, win.last, len(ops))
    op_start, op_end = dt.op_start, dt.op_end
    op_dur = op_end - op_start
    busy = np.concatenate(([0], np.cumsum(op_dur)))
    for k in range(len(win.first)):
        site = _SEGMENT_CODES.get(int(win.code[k]))
        first, last_op = int(win.first[k]), int(consumer[k])
        if site is None or first == 0 or last_op >= len(ops):
            continue
        total = int(op_end[last_op] - op_end[first - 1])
        work = int(busy[int(win.last[k]) + 1] - busy[first]) + int(op_dur[last_op])
        out.setdefault(site, []).append((total, work))


def site_segments(profiles: Sequence[Profile]) -> dict[str, SiteSegment]:
    """Per site: the median compute-stream stretch from its window to its consumer matmul."""
    found: dict[str, list[tuple[int, int]]] = {}
    for p in profiles:
        for _, dev_tasks in p.tasks.groupby("device", sort=True):
            _device_segments(dev_tasks.reset_index(drop=True), found)
    out: dict[str, SiteSegment] = {}
    for site, rows in found.items():
        arr = np.array(rows, dtype=np.float64)
        total = float(np.median(arr[:, 0]))
        work = float(np.median(arr[:, 1]))
        out[site] = SiteSegment(site, len(rows), total, work, total - work)
    return out
