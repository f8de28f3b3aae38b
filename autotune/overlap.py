"""Prefetch <-> window <-> join matching and per-site metrics.

Input: classified tasks (autotune.profile). Output: `OverlapResult`, plain data that renderers
present. Vendor criterion: a prefetch must overlap the vector op it hides behind and end no
later than it. The rules are those of docs/analysis.md; each stream is matched with searchsorted.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.lateness import prefetch_late, rule_text, site_late
from autotune.profile.tasks import ROLE_COLUMN, ROLES, Profile
from autotune.target import SITES

# Columns of OverlapResult.prefetches (one row per prefetch task), in this order.
# An unattributed prefetch has site/weight/window_kind "", layer and window/join times -1,
# hidden_fraction 0.0, slack_ns 0, stall_ns 0 and late False.
PREFETCH_COLUMNS: tuple[str, ...] = (
    "rank",  # rank of the profile it came from (-1 when unknown)
    "device",
    "stream",  # the prefetch stream
    "step",  # index of the profiled step it falls in (0-based; 0 when there are no step markers)
    "layer",  # index of the decoder layer within the step (0-based), -1 when unattributed
    "site",  # attn.qkv | attn.o | mlp.gate_up | mlp.down | moe.gate_up | "" when unattributed
    # which weight the site's ratio prefetches here: qkv_proj|o_proj|down_proj|gate_up_proj|w13
    "weight",
    "start_ns",
    "end_ns",
    "window_kind",  # swiglu | norm | quant | gating | "" when no window
    "window_start_ns",
    "window_end_ns",
    "join_start_ns",  # compute-stream wait that waits for this prefetch; -1 when none
    "join_end_ns",
    "hidden_fraction",  # share of the prefetch's duration overlapping window work, 0..1
    "slack_ns",  # window_end - prefetch_end; negative = late
    "stall_ns",  # time the compute stream was blocked in the join charged to this prefetch
    "late",  # bool: slack_ns < -tolerance (autotune.lateness.prefetch_late)
)


@dataclass(frozen=True)
class SiteSummary:
    """Per-site aggregate over all profiled layers and steps."""

    site: str
    count: int  # prefetches attributed to the site
    late: int
    windows: int  # windows of this site's kind seen on the compute stream
    hidden_fraction_median: float
    slack_us_median: float
    slack_us_p90: float
    slack_us_min: float
    stall_us_total: float
    stall_us_per_step: float
    verdict: str  # "inert" (no prefetch), "late" (autotune.lateness.site_late) or "hidden"


@dataclass
class OverlapResult:
    """Everything the analysis found; renderers only present this."""

    prefetches: pd.DataFrame  # PREFETCH_COLUMNS
    sites: list[SiteSummary]
    unattributed: int  # prefetches with no window/site
    windows_without_prefetch: dict[str, int]  # site -> windows that had no prefetch
    unclassified_types: dict[str, int]  # task type -> count, summed over profiles
    steps: int  # profiled steps (>= 1)
    simulated: bool  # any input profile was written by the simulator
    warnings: list[str] = field(default_factory=list)
    late_tolerance_us: float = 0.0  # the tolerance the late flags and verdicts used
    join_us_total: float = 0.0  # time of every join (compute-stream wait on a prefetch stream)
    unattributed_stall_us: float = 0.0  # join time charged to no prefetch
    rank_steps: int = 1  # sum of the profiles' step counts (the per-step divisor)

    @property
    def unattributed_stall_us_per_step(self) -> float:
        """Unattributed join time per rank and step, like the sites' stall per step."""
        return self.unattributed_stall_us / max(self.rank_steps, 1)

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
            "sites": sites,
            "unattributed": int(self.unattributed),
            "windows_without_prefetch": {
                k: int(v) for k, v in self.windows_without_prefetch.items()
            },
            "unclassified_types": {str(k): int(v) for k, v in self.unclassified_types.items()},
            "warnings": [str(w) for w in self.warnings],
            "steps": int(self.steps),
            "simulated": bool(self.simulated),
            "late_tolerance_us": float(self.late_tolerance_us),
            "late_rule": rule_text(self.late_tolerance_us),
            "join_us_total": round(float(self.join_us_total), 4),
            "unattributed_stall_us": round(float(self.unattributed_stall_us), 4),
        }


def late_sites(result: OverlapResult) -> list[str]:
    """The sites `autotune.lateness.site_late` calls late, in site order (every view uses this)."""
    return [s.site for s in result.sites if s.verdict == "late"]


def _json_float(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(float(x), digits)


# ---------------------------------------------------------------------------------------------
# Roles and window kinds

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_ROLE = {role: i for i, role in enumerate(ROLES)}
_PREFETCH = _ROLE["prefetch"]
_WAIT = _ROLE["wait"]
_RECORD = _ROLE["record"]
_SWIGLU = _ROLE["vector:swiglu"]
_NORM = _ROLE["vector:norm"]
_QUANT = _ROLE["vector:quant"]
_GATING = _ROLE["vector:gating"]
_CUBE = _ROLE["cube"]
_COMM = _ROLE["comm"]
_COMPUTE = np.array([_ROLE[r] for r in ROLES if r.startswith("vector:")] + [_CUBE])

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

_INT_COLUMNS = {
    "rank",
    "device",
    "stream",
    "step",
    "layer",
    "start_ns",
    "end_ns",
    "window_start_ns",
    "window_end_ns",
    "join_start_ns",
    "join_end_ns",
    "slack_ns",
    "stall_ns",
}
_STR_COLUMNS = {"site", "weight", "window_kind"}


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


def _prefetch_waits(
    waits: I64,
    role: I64,
    stream: I64,
    start: I64,
    end: I64,
    cstream: int,
    pf_streams: set[int],
) -> I64:
    """The compute-stream waits (indices, in time order) that wait on a prefetch stream.

    A wait that was blocked was released by the record (on another stream of the device) that
    ended last within it. A wait that was not blocked waits on a prefetch stream when that
    stream has a record no earlier wait consumed. A wait consumes its stream's records ended by
    its end. Without records on the prefetch streams every compute-stream wait counts.
    """
    if not len(waits) or not pf_streams:
        return waits[:0]
    rec = np.flatnonzero((role == _RECORD) & (stream != cstream))
    if not np.isin(stream[rec], np.fromiter(pf_streams, dtype=np.int64)).any():
        return waits
    ends: dict[int, list[int]] = {}
    for i in rec[np.argsort(end[rec], kind="stable")].tolist():
        ends.setdefault(int(stream[i]), []).append(int(end[i]))
    used = dict.fromkeys(ends, 0)  # per stream: records consumed so far
    keep: list[int] = []
    for w in waits.tolist():
        ws, we = int(start[w]), int(end[w])
        by: int | None = None
        latest = ws
        for s, e in ends.items():
            k = bisect.bisect_right(e, we) - 1
            if k >= used[s] and e[k] > latest:
                by, latest = s, e[k]
        if by is None:
            by = next((s for s in pf_streams if s in ends and _unused(ends[s], used[s], we)), None)
        if by is None:
            continue
        used[by] = bisect.bisect_right(ends[by], we)
        if by in pf_streams:
            keep.append(w)
    return np.array(keep, dtype=np.int64)


def _unused(ends: list[int], used: int, t: int) -> bool:
    return used < len(ends) and ends[used] <= t


def _col(df: pd.DataFrame, name: str) -> I64:
    return df[name].to_numpy(dtype=np.int64)


def _compute_stream(role: I64, stream: I64) -> int:
    """The stream running the most vector and cube kernels (-1 when there are none)."""
    compute = np.isin(role, _COMPUTE)
    if not compute.any():
        return -1
    ids, counts = np.unique(stream[compute], return_counts=True)
    return int(ids[np.argmax(counts)])


def _attention_cubes(tasks: pd.DataFrame, ops: I64, cube: Bools) -> Bools:
    """Which of the compute-stream `ops` are attention kernels (only cube ops, marked by `cube`)."""
    is_attn = np.zeros(len(ops), dtype=bool)
    if cube.any():
        sub = tasks.iloc[ops[cube]]
        hit = sub["op_type"].astype(str).str.contains("Attention", regex=False) | sub[
            "name"
        ].astype(str).str.contains("Attention", regex=False)
        is_attn[cube] = hit.to_numpy(dtype=bool)
    return is_attn


def _analyze_device(
    tasks: pd.DataFrame,
    label: str,
    steps: int,
    rank: int,
    tolerance_ns: int,
    warnings: list[str],
    window_counts: dict[str, int],
    idle_windows: dict[str, int],
    stall_totals: list[int],
) -> dict[str, Any]:
    """Match the prefetches of one device of one profile; returns PREFETCH_COLUMNS as arrays.

    Adds the device's join time to stall_totals[0] and its unattributed part to stall_totals[1].
    """
    device = int(tasks["device"].iloc[0])
    where = f"{label} device {device}"
    role = pd.Categorical(tasks[ROLE_COLUMN], categories=list(ROLES)).codes.astype(np.int64)
    stream = _col(tasks, "stream")
    start = _col(tasks, "start_ns")
    end = _col(tasks, "end_ns")

    is_pf = role == _PREFETCH
    pf_order = np.argsort(start[is_pf], kind="stable")
    ps = start[is_pf][pf_order]
    pe = end[is_pf][pf_order]
    pstream = stream[is_pf][pf_order]
    n_pf = len(ps)
    if n_pf == 0:
        warnings.append(f"{where}: no prefetch stream (no CMO tasks)")

    cstream = _compute_stream(role, stream)
    if cstream < 0:
        warnings.append(f"{where}: no compute stream (no vector or cube kernels)")

    on_c = stream == cstream
    c_idx = np.flatnonzero(on_c)
    c_idx = c_idx[np.argsort(start[c_idx], kind="stable")]
    c_role = role[c_idx]
    ops = c_idx[(c_role != _RECORD) & (c_role != _WAIT) & (c_role != _PREFETCH)]
    recs = c_idx[c_role == _RECORD]
    waits = c_idx[c_role == _WAIT]

    op_role = role[ops]
    op_start = start[ops]
    op_end = end[ops]
    cube_ops = op_role == _CUBE
    is_attn = _attention_cubes(tasks, ops, cube_ops)

    # Joins: the compute-stream waits that wait on the prefetch stream.
    joins = _prefetch_waits(waits, role, stream, start, end, cstream, set(pstream.tolist()))
    join_start = start[joins]
    join_end = end[joins]

    win = _find_windows(op_role, is_attn)
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
    layer_step, by_gaps = _steps_of_layers(layer_t, steps)
    if by_gaps:
        warnings.append(
            f"{where}: {n_layers} layers do not split evenly into {steps} steps; "
            "step boundaries taken at the largest gaps"
        )
    step_first_layer = np.zeros(int(layer_step.max()) + 1 if n_layers else 1, dtype=np.int64)
    if n_layers:
        # layer_step is non-decreasing, so the first layer of each step is where it changes.
        change = np.flatnonzero(np.concatenate(([True], np.diff(layer_step) != 0)))
        step_first_layer[layer_step[change]] = change

    # Window -> prefetch: the last compute-stream record ended by the prefetch's start, then the
    # first window after it; without such a record, the first window whose first op ends after it.
    rec_end = np.maximum.accumulate(end[recs]) if len(recs) else np.zeros(0, dtype=np.int64)
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
            window_counts[name] = window_counts.get(name, 0) + int(of_kind.sum())
            idle_windows[name] = idle_windows.get(name, 0) + int((of_kind & ~matched).sum())

    win_s = np.where(ok, w_start[wi] if n_win else 0, -1)
    win_e = np.where(ok, w_end[wi] if n_win else 0, -1)

    # Join: the first join starting at/after the window's end (the one that cut the window, if
    # any). One join's stall is charged once, to the prefetch that ends last among those it
    # joins; a join no prefetch chose is unattributed stall.
    j = np.searchsorted(join_start, win_e, side="left").astype(np.int64)
    has_join = ok & (j < len(joins))
    ji = np.minimum(j, max(len(joins) - 1, 0))
    join_s = np.where(has_join, join_start[ji] if len(joins) else 0, -1)
    join_e = np.where(has_join, join_end[ji] if len(joins) else 0, -1)
    no_join = int((ok & ~has_join).sum())
    if no_join:
        warnings.append(f"{where}: {no_join} prefetch(es) with no join on the compute stream")

    stall = np.zeros(n_pf, dtype=np.int64)
    joined = np.flatnonzero(has_join)
    charged_join = np.zeros(len(joins), dtype=bool)
    if len(joined):
        order = joined[np.lexsort((ps[joined], pe[joined], j[joined]))]
        js = j[order]
        last_of_join = np.concatenate((js[1:] != js[:-1], [True]))
        charged = order[last_of_join]
        stall[charged] = join_e[charged] - join_s[charged]
        charged_join[j[charged]] = True
    join_dur = join_end - join_start
    stall_totals[0] += int(join_dur.sum())
    stall_totals[1] += int(join_dur[~charged_join].sum())

    # Hidden fraction: the window's ops are consecutive on one stream, so sum the overlaps op by op.
    overlap = np.zeros(n_pf, dtype=np.int64)
    if n_win and ok.any():
        f = win.first[wi]
        width = np.where(ok, win.last[wi] - f + 1, 0)
        for k in range(int(width.max())):
            use = k < width
            o = np.minimum(f + k, len(ops) - 1)
            part = np.minimum(pe, op_end[o]) - np.maximum(ps, op_start[o])
            overlap += np.where(use, np.maximum(part, 0), 0)
    dur = pe - ps
    inside = (ps >= win_s) & (ps <= win_e)
    hidden = np.where(dur > 0, overlap / np.maximum(dur, 1), inside.astype(np.float64))
    hidden = np.where(ok, hidden, 0.0)

    slack = np.where(ok, win_e - pe, 0)
    late = ok & prefetch_late(slack, tolerance_ns)

    # Step and layer: from the window; an unattributed prefetch takes the step of the layer it
    # falls in by time.
    gl = np.where(ok, win.layer[wi] if n_win else 0, -1)
    if n_layers:
        by_time = np.searchsorted(layer_t, ps, side="right") - 1
        step_layer = np.where(ok, gl, np.maximum(by_time, 0)).astype(np.int64)
        step = layer_step[np.minimum(step_layer, n_layers - 1)]
    else:
        step = np.zeros(n_pf, dtype=np.int64)
    layer = np.where(ok, gl - step_first_layer[step] if n_layers else 0, -1)

    site = np.array([_WINDOW_KINDS[c][0] for c in codes], dtype=object)
    weight = np.array([_WINDOW_KINDS[c][2] for c in codes], dtype=object)
    kind = np.array([_WINDOW_KINDS[c][1] for c in codes], dtype=object)
    blank = np.full(n_pf, "", dtype=object)
    return {
        "rank": np.full(n_pf, rank, dtype=np.int64),
        "device": np.full(n_pf, device, dtype=np.int64),
        "stream": pstream,
        "step": step,
        "layer": layer,
        "site": np.where(ok, site, blank),
        "weight": np.where(ok, weight, blank),
        "start_ns": ps,
        "end_ns": pe,
        "window_kind": np.where(ok, kind, blank),
        "window_start_ns": win_s,
        "window_end_ns": win_e,
        "join_start_ns": join_s,
        "join_end_ns": join_e,
        "hidden_fraction": hidden,
        "slack_ns": slack,
        "stall_ns": stall,
        "late": late,
    }


def _empty_prefetches() -> pd.DataFrame:
    cols: dict[str, pd.Series[Any]] = {}
    for c in PREFETCH_COLUMNS:
        if c in _INT_COLUMNS:
            cols[c] = pd.Series(dtype="int64")
        elif c == "hidden_fraction":
            cols[c] = pd.Series(dtype="float64")
        elif c == "late":
            cols[c] = pd.Series(dtype="bool")
        else:
            cols[c] = pd.Series(dtype="object")
    return pd.DataFrame(cols)


def _frame(parts: list[dict[str, Any]]) -> pd.DataFrame:
    if not parts or not any(len(p["start_ns"]) for p in parts):
        return _empty_prefetches()
    data: dict[str, Any] = {}
    for c in PREFETCH_COLUMNS:
        values = np.concatenate([p[c] for p in parts])
        if c in _INT_COLUMNS:
            data[c] = values.astype(np.int64)
        elif c == "hidden_fraction":
            data[c] = values.astype(np.float64)
        elif c == "late":
            data[c] = values.astype(bool)
        else:
            data[c] = pd.Series(values, dtype="object")
    return pd.DataFrame(data, columns=list(PREFETCH_COLUMNS))


def _summarise(
    df: pd.DataFrame,
    window_counts: dict[str, int],
    idle_windows: dict[str, int],
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
        slack = df["slack_ns"].to_numpy(dtype=np.int64)[mask]
        hidden = df["hidden_fraction"].to_numpy(dtype=np.float64)[mask]
        stall_ns = int(df["stall_ns"].to_numpy(dtype=np.int64)[mask].sum())
        late = int(df["late"].to_numpy(dtype=bool)[mask].sum())
        nan = float("nan")
        median_ns = float(np.median(slack)) if count else nan
        verdict = ("late" if site_late(median_ns, tol_ns) else "hidden") if count else "inert"
        out.append(
            SiteSummary(
                site=site,
                count=count,
                late=late,
                windows=windows,
                hidden_fraction_median=float(np.median(hidden)) if count else nan,
                slack_us_median=float(np.median(slack)) / 1000 if count else nan,
                slack_us_p90=float(np.percentile(slack, 90)) / 1000 if count else nan,
                slack_us_min=float(slack.min()) / 1000 if count else nan,
                stall_us_total=stall_ns / 1000,
                stall_us_per_step=stall_ns / 1000 / step_total,
                verdict=verdict,
            )
        )
    return out


def _label(p: Profile) -> str:
    return p.path.name or str(p.path)


def analyze(profiles: Sequence[Profile], *, late_tolerance_ns: int = 0) -> OverlapResult:
    """Match every prefetch to its window and join, attribute its site, and summarise per site.

    Stall per step is the total stall over all profiles divided by the sum of their step counts,
    i.e. per rank and step; `steps` is the largest step count of any one profile.
    """
    warnings: list[str] = []
    parts: list[dict[str, Any]] = []
    window_counts: dict[str, int] = {}
    idle_windows: dict[str, int] = {}
    unclassified: dict[str, int] = {}
    stall_totals = [0, 0]
    step_total = 0
    steps_max = 1
    if not profiles:
        warnings.append("no profiles to analyse")
    for p in profiles:
        label = _label(p)
        warnings.extend(w for w in p.warnings if w not in warnings)
        for t, n in p.unclassified_types.items():
            unclassified[t] = unclassified.get(t, 0) + int(n)
        if p.steps is None or p.steps < 1:
            steps = 1
            # The reader may have said so already.
            if not any("step markers" in w for w in p.warnings):
                warnings.append(f"{label}: no step markers; stall is per profile (one step)")
        else:
            steps = int(p.steps)
        step_total += steps
        steps_max = max(steps_max, steps)
        rank = -1 if p.rank is None else int(p.rank)
        if len(p.tasks) == 0:
            warnings.append(f"{label}: no tasks")
            continue
        for _, dev_tasks in p.tasks.groupby("device", sort=True):
            parts.append(
                _analyze_device(
                    dev_tasks.reset_index(drop=True),
                    label,
                    steps,
                    rank,
                    late_tolerance_ns,
                    warnings,
                    window_counts,
                    idle_windows,
                    stall_totals,
                )
            )
    df = _frame(parts)
    unattributed = int((df["site"].to_numpy(dtype=object) == "").sum())
    sites = _summarise(df, window_counts, idle_windows, max(step_total, 1), late_tolerance_ns)
    return OverlapResult(
        prefetches=df,
        sites=sites,
        unattributed=unattributed,
        windows_without_prefetch={s: idle_windows[s] for s in SITES if idle_windows.get(s, 0) > 0},
        unclassified_types=dict(sorted(unclassified.items(), key=lambda kv: (-kv[1], kv[0]))),
        steps=steps_max,
        simulated=any(p.simulated for p in profiles),
        warnings=warnings,
        late_tolerance_us=late_tolerance_ns / 1000,
        join_us_total=stall_totals[0] / 1000,
        unattributed_stall_us=stall_totals[1] / 1000,
        rank_steps=max(step_total, 1),
    )


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
    role = pd.Categorical(tasks[ROLE_COLUMN], categories=list(ROLES)).codes.astype(np.int64)
    stream = _col(tasks, "stream")
    start = _col(tasks, "start_ns")
    end = _col(tasks, "end_ns")
    cstream = _compute_stream(role, stream)
    if cstream < 0:
        return
    on_c = np.flatnonzero(stream == cstream)
    on_c = on_c[np.argsort(start[on_c], kind="stable")]
    ops = on_c[~np.isin(role[on_c], (_RECORD, _WAIT, _PREFETCH))]
    op_role = role[ops]
    cube = op_role == _CUBE
    is_attn = _attention_cubes(tasks, ops, cube)
    win = _find_windows(op_role, is_attn)
    plain_cube = np.flatnonzero(cube & ~is_attn).astype(np.int64)
    consumer = _first_after(plain_cube, win.last, len(ops))
    op_start, op_end = start[ops], end[ops]
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
