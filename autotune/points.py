"""The general prefetch model: every CMO task on a stream other than the compute stream is a
prefetch, tied to where it was issued, the cube op that reads its weight, and the wait that joins
it; prefetches at the same position of every layer form a prefetch point.

- **issue**: the compute-stream point its stream waited for (the end of the event record the
  prefetch stream's last wait before it waited on). CMOs issued after one wait form a group.
- **consumer**: a Level1 profile holds no addresses, so the k-th CMO of a group goes with the
  k-th weight-reading cube op (not an attention kernel) from its window's first op on. It is
  *known* when the join comes before that op, or when the group has exactly as many CMOs as there
  are such ops before the join; otherwise the analysis says it cannot tell.
- **join**: the first compute-stream wait released by the prefetch stream at or after the record
  that follows the CMO — before the consumer (vllm-ascend) or after it (SGLang).
- **window**: the compute-stream ops from the issue to the earlier of the join and the consumer,
  whatever they are; a window that holds a cube op is **contention**.
- slack, lateness, hidden fraction and stall as for a vllm-ascend site (docs/analysis.md).

A point is named by what it sits between: "<op before the issue> → <first window op> ⇒
<consumer>", with "[k/n]" when its group issues n CMOs. The analysis returns data; renderers
only present it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.lateness import prefetch_late, site_late
from autotune.streams import (
    COMM,
    CUBE,
    PREFETCH,
    RECORD,
    WAIT,
    Joins,
    Streams,
    pick_streams,
    prefetch_joins,
    role_codes,
)

I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

# Columns of OverlapResult.prefetches (one row per prefetch task), in this order.
# An unattributed prefetch has site/weight/window_kind/point/consumer "", layer and window/join/
# consumer times -1, hidden_fraction 0.0, slack_ns 0, stall_ns 0 and the flags False.
PREFETCH_COLUMNS: tuple[str, ...] = (
    "rank",  # rank of the profile it came from (-1 when unknown)
    "device",
    "stream",  # the prefetch stream
    "step",  # index of the profiled step it falls in (0-based; -1 before the first step)
    "layer",  # index of the decoder layer within the step (0-based), -1 when unattributed
    "site",  # vllm-ascend: attn.qkv | attn.o | mlp.gate_up | mlp.down | moe.gate_up | ""
    # the weight it prefetches where the layout knows it: qkv_proj|o_proj|down_proj|gate_up_proj|w13
    "weight",
    "start_ns",
    "end_ns",
    "window_kind",  # vllm-ascend: swiglu | norm | quant | gating | "" when no window
    "window_start_ns",
    "window_end_ns",
    "join_start_ns",  # compute-stream wait that waits for this prefetch; -1 when none
    "join_end_ns",
    "hidden_fraction",  # share of the prefetch's duration overlapping window work, 0..1
    "slack_ns",  # window_end - prefetch_end; negative = late
    "stall_ns",  # time the compute stream was blocked in the join charged to this prefetch
    "late",  # bool: slack_ns < -tolerance (autotune.lateness.prefetch_late)
    "point",  # the prefetch point it belongs to ("" when unattributed)
    "issue_ns",  # compute-stream time it was issued at (its start record's end), -1 unknown
    "consumer",  # op type of the cube op that reads its weight ("" when none)
    "consumer_start_ns",  # -1 when none
    "consumer_known",  # bool: the position rule can tell its consumer
    "contention",  # bool: its window holds a cube op
)
INT_COLUMNS = {
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
    "issue_ns",
    "consumer_start_ns",
}
BOOL_COLUMNS = {"late", "consumer_known", "contention"}
FLOAT_COLUMNS = {"hidden_fraction"}


def empty_prefetches() -> pd.DataFrame:
    cols: dict[str, pd.Series[Any]] = {}
    for c in PREFETCH_COLUMNS:
        if c in INT_COLUMNS:
            cols[c] = pd.Series(dtype="int64")
        elif c in FLOAT_COLUMNS:
            cols[c] = pd.Series(dtype="float64")
        elif c in BOOL_COLUMNS:
            cols[c] = pd.Series(dtype="bool")
        else:
            cols[c] = pd.Series(dtype="object")
    return pd.DataFrame(cols)


def prefetch_frame(parts: list[dict[str, Any]]) -> pd.DataFrame:
    """One PREFETCH_COLUMNS table from per-device column arrays."""
    if not parts or not any(len(p["start_ns"]) for p in parts):
        return empty_prefetches()
    data: dict[str, Any] = {}
    for c in PREFETCH_COLUMNS:
        values = np.concatenate([p[c] for p in parts])
        if c in INT_COLUMNS:
            data[c] = values.astype(np.int64)
        elif c in FLOAT_COLUMNS:
            data[c] = values.astype(np.float64)
        elif c in BOOL_COLUMNS:
            data[c] = values.astype(bool)
        else:
            data[c] = pd.Series(values, dtype="object")
    return pd.DataFrame(data, columns=list(PREFETCH_COLUMNS))


# ---------------------------------------------------------------------------------------------
# One device's timeline


def _col(df: pd.DataFrame, name: str) -> I64:
    return df[name].to_numpy(dtype=np.int64)


def op_label(name: str, op_type: str) -> str:
    """How a point names an op: its op type (else its name); HCCL ops by their collective."""
    text = op_type or name
    if text.startswith("hcom_"):
        core = text[len("hcom_") :].split("_")[0]
        return core[:1].upper() + core[1:] if core else text
    return text


def _labels(
    names: pd.Series, types: npt.NDArray[np.object_], ops: I64
) -> tuple[npt.NDArray[np.object_], Bools]:
    """op_label of each op (tasks `ops`), and whether its name or op type says Attention;
    computed once per distinct name (a kernel name has one op type)."""
    if not len(ops):
        return np.empty(0, dtype=object), np.zeros(0, dtype=bool)
    if isinstance(names.dtype, pd.CategoricalDtype):  # the trace reader's names: already coded
        all_codes = np.asarray(names.cat.codes.to_numpy(), dtype=np.int64)
        codes, used = pd.factorize(all_codes[ops])
        uniques = names.cat.categories.to_numpy(dtype=object)[used]
    else:
        codes, uniques = pd.factorize(names.to_numpy(dtype=object)[ops])
    first = np.zeros(len(uniques), dtype=np.int64)
    first[codes[::-1]] = ops[::-1]  # a task of each name
    found = np.empty(len(uniques), dtype=object)
    attention = np.zeros(len(uniques), dtype=bool)
    for k, (name, i) in enumerate(zip(uniques, first.tolist(), strict=True)):
        op = str(types[i] or "")
        found[k] = op_label(str(name), op)
        attention[k] = "Attention" in str(name) or "Attention" in op
    return found[codes], attention[codes]


@dataclass
class DeviceTimeline:
    """One device of one profile, as every matcher reads it: streams, compute-stream ops in time
    order (record, wait and prefetch tasks left out), compute-stream records, joins and the
    prefetches in start order."""

    device: int
    role: I64
    stream: I64
    start: I64
    end: I64
    streams: Streams
    ops: I64  # task indices of the compute-stream ops
    is_attn: Bools  # per op: an attention kernel
    labels: npt.NDArray[np.object_]  # per op: op_label
    recs: I64  # task indices of the compute-stream records, in time order
    joins: Joins
    pf: I64  # task indices of the prefetches, by start
    on_compute_cmo: int  # CMO tasks on the compute stream itself (no prefetch: they block it)
    comm_end: I64  # ends of the collectives' tasks on other streams, sorted
    comm_labels: npt.NDArray[np.object_]  # their op labels ("HCCL" for HCCL's own tasks)

    @property
    def op_role(self) -> I64:
        return self.role[self.ops]

    @property
    def op_start(self) -> I64:
        return self.start[self.ops]

    @property
    def op_end(self) -> I64:
        return self.end[self.ops]


def device_timeline(tasks: pd.DataFrame) -> DeviceTimeline:
    """Read one device's classified tasks (a 0-based index)."""
    role = role_codes(tasks)
    stream = _col(tasks, "stream")
    start = _col(tasks, "start_ns")
    end = _col(tasks, "end_ns")
    streams = pick_streams(role, stream)
    cstream = streams.compute
    c_idx = np.flatnonzero(stream == cstream)
    c_idx = c_idx[np.argsort(start[c_idx], kind="stable")]
    c_role = role[c_idx]
    ops = c_idx[(c_role != RECORD) & (c_role != WAIT) & (c_role != PREFETCH)]
    recs = c_idx[c_role == RECORD]
    waits = c_idx[c_role == WAIT]
    cube = role[ops] == CUBE
    labels, attention = _labels(tasks["name"], tasks["op_type"].to_numpy(dtype=object), ops)
    names = tasks["name"].to_numpy(dtype=object)
    types = tasks["op_type"].to_numpy(dtype=object)
    is_attn = cube & attention  # an attention kernel: a cube op that says so
    is_pf = (role == PREFETCH) & (stream != cstream)
    pf = np.flatnonzero(is_pf)
    pf = pf[np.argsort(start[pf], kind="stable")]
    joins = prefetch_joins(waits, role, stream, start, end, cstream, set(streams.prefetch))
    comm = np.flatnonzero((role == COMM) & (stream != cstream))
    comm = comm[np.argsort(end[comm], kind="stable")]
    comm_labels = np.empty(len(comm), dtype=object)
    comm_labels[:] = [
        op_label(str(names[i]), str(types[i] or ""))
        if str(names[i]).startswith("hcom_")
        else "HCCL"
        for i in comm.tolist()
    ]
    return DeviceTimeline(
        device=int(tasks["device"].iloc[0]),
        role=role,
        stream=stream,
        start=start,
        end=end,
        streams=streams,
        ops=ops,
        is_attn=is_attn,
        labels=labels,
        recs=recs,
        joins=joins,
        pf=pf,
        on_compute_cmo=int(((role == PREFETCH) & (stream == cstream)).sum()),
        comm_end=end[comm],
        comm_labels=comm_labels,
    )


# ---------------------------------------------------------------------------------------------
# Metrics every matcher shares


def window_overlap(ps: I64, pe: I64, first: I64, last: I64, op_start: I64, op_end: I64) -> I64:
    """Per prefetch: ns of [ps, pe] covered by the consecutive ops first..last (none when
    last < first); the ops of one stream never overlap, so the overlaps add up."""
    overlap = np.zeros(len(ps), dtype=np.int64)
    width = np.maximum(last - first + 1, 0)
    n = len(op_start)
    for k in range(int(width.max()) if len(width) else 0):
        use = k < width
        o = np.clip(first + k, 0, max(n - 1, 0))
        part = np.minimum(pe, op_end[o]) - np.maximum(ps, op_start[o])
        overlap += np.where(use, np.maximum(part, 0), 0)
    return overlap


def hidden_fraction(ps: I64, pe: I64, overlap: I64, inside: Bools) -> npt.NDArray[np.float64]:
    """Share of each prefetch covered by its window; a zero-length one counts 1 when inside."""
    dur = pe - ps
    return np.where(dur > 0, overlap / np.maximum(dur, 1), inside.astype(np.float64))


def charge_stalls(
    joined: Bools, j: I64, ps: I64, pe: I64, join_s: I64, join_e: I64, n_joins: int
) -> tuple[I64, Bools]:
    """Each join's wait is shared among the prefetches it joins, in CMO end order: each gets the
    stretch from the previous one's end (or the join's start) until its own end, clipped to the
    join; the one that ends last also the sync after it. A join's stalls add up to its duration."""
    stall = np.zeros(len(ps), dtype=np.int64)
    charged_join = np.zeros(n_joins, dtype=bool)
    rows = np.flatnonzero(joined)
    if len(rows):
        order = rows[np.lexsort((ps[rows], pe[rows], j[rows]))]
        js = j[order]
        first_of_join = np.concatenate(([True], js[1:] != js[:-1]))
        last_of_join = np.concatenate((js[1:] != js[:-1], [True]))
        # Sorted by end within a join, so the clipped ends rise: the stretches tile the wait.
        upto = np.where(
            last_of_join, join_e[order], np.clip(pe[order], join_s[order], join_e[order])
        )
        since = np.where(first_of_join, join_s[order], np.roll(upto, 1))
        stall[order] = upto - since
        charged_join[js] = True
    return stall, charged_join


def before_issue(
    dt: DeviceTimeline, first: I64, issue: I64, step_begin: I64
) -> tuple[npt.NDArray[np.object_], Bools]:
    """What each issue follows: the compute-stream op before its window, or a collective on
    another stream that ended later (HCCL runs on its own stream in real captures); "step
    start" when that lies before the issue's step. Also whether it is a collective."""
    n_ops = len(dt.ops)
    lowest = np.iinfo(np.int64).min
    prev = first - 1
    has_op = (prev >= 0) & (prev < n_ops)
    pi = np.clip(prev, 0, max(n_ops - 1, 0))
    op_end = np.where(has_op, dt.op_end[pi] if n_ops else 0, lowest)
    c = np.searchsorted(dt.comm_end, issue, side="right") - 1
    has_comm = c >= 0
    ci = np.maximum(c, 0)
    comm_end = np.where(has_comm, dt.comm_end[ci] if len(dt.comm_end) else 0, lowest)
    by_comm = has_comm & (comm_end > op_end)
    when = np.maximum(op_end, comm_end)
    start = (when == lowest) | (when < step_begin)
    op_labels = dt.labels[pi] if n_ops else np.full(len(first), "", dtype=object)
    comm_labels = dt.comm_labels[ci] if len(dt.comm_labels) else np.full(len(first), "", object)
    labels = np.where(start, "step start", np.where(by_comm, comm_labels, op_labels))
    op_comm = (dt.op_role[pi] == COMM) if n_ops else np.zeros(len(first), dtype=bool)
    is_comm = ~start & (by_comm | op_comm)
    return labels.astype(object), is_comm


def describe(
    dt: DeviceTimeline,
    before: npt.NDArray[np.object_],
    first: I64,
    last: I64,
    consumer: I64,
    k: I64,
    n: I64,
) -> npt.NDArray[np.object_]:
    """Point names: what the issue follows, the window's first op, the consumer."""
    n_ops = len(dt.ops)
    if not len(first):
        return np.empty(0, dtype=object)
    top = max(n_ops - 1, 0)
    labels = dt.labels if n_ops else np.array([""], dtype=object)
    head = np.where(
        (first >= 0) & (first <= last) & (last < n_ops), labels[np.clip(first, 0, top)], "nothing"
    )
    cons = np.where((consumer >= 0) & (consumer < n_ops), labels[np.clip(consumer, 0, top)], "?")
    # Few distinct names: build each once.
    codes, uniques = _combine([before, head, cons, k, n])
    names = np.array(
        [f"{b} → {h} ⇒ {c}" + (f" [{kk}/{nn}]" if nn > 1 else "") for b, h, c, kk, nn in uniques],
        dtype=object,
    )
    return names[codes] if len(codes) else np.empty(0, dtype=object)


def _combine(columns: list[npt.NDArray[Any]]) -> tuple[I64, list[tuple[Any, ...]]]:
    """Row codes of the distinct value combinations of `columns` (in order of first
    appearance), and those combinations."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    values = []
    for col in columns:
        codes, uniques = pd.factorize(col)
        key = key * (len(uniques) + 1) + codes
        values.append(uniques)
    rows, first = pd.factorize(key)
    combos = []
    for k in first.tolist():
        combo = []
        for uniques in reversed(values):
            k, at = divmod(k, len(uniques) + 1)
            combo.append(uniques[at])
        combos.append(tuple(reversed(combo)))
    return np.asarray(rows, dtype=np.int64), combos


def weight_cubes(dt: DeviceTimeline) -> I64:
    """Op indices of the cube ops that read a weight (every cube op but attention kernels)."""
    return np.flatnonzero((dt.op_role == CUBE) & ~dt.is_attn).astype(np.int64)


def cube_between(dt: DeviceTimeline, first: I64, last: I64) -> Bools:
    """Whether ops first..last include a cube op (attention kernels too)."""
    cum = np.concatenate(([0], np.cumsum(dt.op_role == CUBE)))
    f = np.clip(first, 0, len(dt.ops))
    lst = np.clip(last + 1, 0, len(dt.ops))
    return (last >= first) & (cum[np.maximum(lst, f)] - cum[f] > 0)


@dataclass
class Tied:
    """What a matcher tied each prefetch of one device to (arrays in prefetch order)."""

    ok: Bools  # tied to a window at all
    first: I64  # op indices of its window: first..last (last < first: an empty window)
    last: I64
    issue: I64  # compute-stream time it was issued at
    join: I64  # index into the device's joins, -1 when none
    consumer: I64  # op index of its consumer, -1 when none
    consumer_known: Bools


def settle(
    dt: DeviceTimeline, tolerance_ns: int, tied: Tied, names: npt.NDArray[np.object_]
) -> tuple[dict[str, Any], Bools]:
    """The metrics of one device's prefetches once tied (both matchers end here): window times,
    hidden fraction, slack, lateness, the stall of each join shared among the prefetches it
    waited on (charge_stalls), consumer and contention. Returns PREFETCH_COLUMNS as arrays
    (rank, step, layer and the vllm-ascend labels left to the caller) and which joins were
    charged."""
    pf = dt.pf
    n_pf = len(pf)
    ps, pe = dt.start[pf], dt.end[pf]
    op_start, op_end = dt.op_start, dt.op_end
    if not len(dt.ops):  # nothing to hide behind: every prefetch unattributed
        op_start = op_end = np.zeros(1, dtype=np.int64)
    top = max(len(dt.ops) - 1, 0)
    ok = tied.ok
    js, je = dt.start[dt.joins.index], dt.end[dt.joins.index]
    has_join = ok & (tied.join >= 0)
    ji = np.maximum(tied.join, 0)
    join_s = np.where(has_join, js[ji] if len(js) else 0, -1)
    join_e = np.where(has_join, je[ji] if len(je) else 0, -1)
    # An empty window (the consumer right after the issue) sits at the issue.
    full = ok & (tied.last >= tied.first)
    win_s = np.where(full, op_start[np.clip(tied.first, 0, top)], np.where(ok, tied.issue, -1))
    win_e = np.where(full, op_end[np.clip(tied.last, 0, top)], np.where(ok, tied.issue, -1))
    first, last = np.where(ok, tied.first, 0), np.where(ok, tied.last, -1)
    overlap = window_overlap(ps, pe, first, last, op_start, op_end)
    inside = (ps >= win_s) & (ps <= win_e)
    slack = np.where(ok, win_e - pe, 0)
    stall, charged = charge_stalls(has_join, tied.join, ps, pe, join_s, join_e, len(js))
    has_cons = ok & (tied.consumer >= 0)
    ci = np.clip(tied.consumer, 0, top)
    blank = np.full(n_pf, "", dtype=object)
    labels = dt.labels[ci] if len(dt.ops) else blank
    cons_start = op_start[ci]
    cols = {
        "device": np.full(n_pf, dt.device, dtype=np.int64),
        "stream": dt.stream[pf],
        "site": blank,
        "weight": blank.copy(),
        "start_ns": ps,
        "end_ns": pe,
        "window_kind": blank.copy(),
        "window_start_ns": win_s,
        "window_end_ns": win_e,
        "join_start_ns": join_s,
        "join_end_ns": join_e,
        "hidden_fraction": np.where(ok, hidden_fraction(ps, pe, overlap, inside), 0.0),
        "slack_ns": slack,
        "stall_ns": stall,
        "late": ok & prefetch_late(slack, tolerance_ns),
        "point": np.where(ok, names, blank),
        "issue_ns": np.where(ok, tied.issue, -1),
        "consumer": np.where(has_cons, labels, blank).astype(object),
        "consumer_start_ns": np.where(has_cons, cons_start, -1),
        "consumer_known": ok & tied.consumer_known,
        "contention": ok & cube_between(dt, tied.first, tied.last),
    }
    return cols, charged


# ---------------------------------------------------------------------------------------------
# The general matcher


def match_general(
    dt: DeviceTimeline, tolerance_ns: int, step_begin: Callable[[I64], I64]
) -> tuple[dict[str, Any], Bools]:
    """Tie every prefetch of one device to its issue, consumer, join and window (module doc).

    `step_begin(times)` gives the begin of the profiled step each time falls in. Returns
    `settle`'s columns plus "group_k"/"group_n" (its place in its group) and "after_comm" (its
    issue follows a collective), and which joins were charged.
    """
    pf = dt.pf
    n_pf = len(pf)
    ps, pe, pstream = dt.start[pf], dt.end[pf], dt.stream[pf]
    op_start, op_end = dt.op_start, dt.op_end
    n_ops = len(dt.ops)
    ok = np.full(n_pf, n_ops > 0)

    # Groups: the CMOs after one wait of their stream; the anchor is that wait's end.
    anchor = ps.copy()
    group = np.arange(n_pf, dtype=np.int64) + (1 << 40)  # CMOs after no wait: alone
    waits = np.flatnonzero(dt.role == WAIT)
    for s in np.unique(pstream).tolist():
        mine = np.flatnonzero(pstream == s)
        w = waits[dt.stream[waits] == s]
        w = w[np.argsort(dt.start[w], kind="stable")]
        if not len(w):
            continue
        wi = np.searchsorted(dt.start[w], ps[mine], side="right") - 1
        has = wi >= 0
        anchor[mine[has]] = dt.end[w[wi[has]]]
        group[mine[has]] = w[wi[has]]
    order_in = pd.Series(np.arange(n_pf)).groupby(group).cumcount().to_numpy(dtype=np.int64)
    k: I64 = (order_in + 1).astype(np.int64)
    codes = np.asarray(pd.factorize(group)[0], dtype=np.int64)
    n: I64 = np.bincount(codes, minlength=1).astype(np.int64)[codes]

    # Issue: the last compute-stream record ended by the anchor; without one, the anchor.
    rec_end = np.maximum.accumulate(dt.end[dt.recs]) if len(dt.recs) else np.zeros(0, np.int64)
    r = np.searchsorted(rec_end, anchor, side="right") - 1
    by_rec = r >= 0
    issue = np.where(by_rec, rec_end[np.maximum(r, 0)] if len(rec_end) else 0, anchor)
    first = np.where(
        by_rec,
        np.searchsorted(op_start, issue, side="left"),
        np.searchsorted(op_end, issue, side="right"),
    ).astype(np.int64)

    # Consumer: the k-th weight-reading cube op from the first window op on.
    wc = weight_cubes(dt)
    c_pos = np.searchsorted(wc, first, side="left") + k - 1
    has_cons = ok & (c_pos < len(wc))
    consumer = np.where(has_cons, wc[np.minimum(c_pos, max(len(wc) - 1, 0))] if len(wc) else 0, -1)

    # Join: the first join of its stream at or after the issue that waited for a record ending
    # no earlier than this CMO (joins of an unknown stream: the first ending after it).
    j = np.full(n_pf, -1, dtype=np.int64)
    js, je = dt.start[dt.joins.index], dt.end[dt.joins.index]
    for s in np.unique(pstream).tolist():
        mine = np.flatnonzero(pstream == s)
        cand = np.flatnonzero((dt.joins.stream == s) | (dt.joins.stream == -1))
        if not len(cand):
            continue
        known = dt.joins.record_end[cand] >= 0
        done = np.where(known, dt.joins.record_end[cand], je[cand])
        done = np.maximum.accumulate(done)
        a = np.searchsorted(js[cand], issue[mine], side="left")
        b = np.searchsorted(done, pe[mine], side="left")
        pos = np.maximum(a, b)
        inside = pos < len(cand)
        j[mine[inside]] = cand[pos[inside]]
    has_join = ok & (j >= 0)
    ji = np.maximum(j, 0)
    join_s = np.where(has_join, js[ji] if len(js) else 0, -1)

    # Window: from the first op after the issue up to the earlier of the join and the consumer;
    # with neither, up to the next group's issue on the same stream.
    cut_join = np.searchsorted(op_start, join_s, side="left") - 1
    last = np.full(n_pf, n_ops - 1, dtype=np.int64)
    last = np.where(has_join, np.minimum(last, cut_join), last)
    last = np.where(has_cons, np.minimum(last, consumer - 1), last)
    loose = ok & ~has_join & ~has_cons
    if loose.any():
        nxt = _next_issue(issue, pstream, group)
        cap = np.searchsorted(op_start, nxt, side="left") - 1
        last = np.where(loose, np.minimum(last, cap), last)
    # The consumer is known when the join comes first, or when the group's CMOs match the
    # weight-reading cube ops before the join one for one.
    cons_s = (
        np.where(has_cons, op_start[np.clip(consumer, 0, max(n_ops - 1, 0))], -1)
        if n_ops
        else np.full(n_pf, -1, dtype=np.int64)
    )
    cubes_before_join = np.searchsorted(wc, cut_join + 1, side="left") - np.searchsorted(
        wc, first, side="left"
    )
    known = has_cons & has_join & ((join_s <= cons_s) | (cubes_before_join == n))
    before, after_comm = before_issue(dt, first, issue, step_begin(issue))
    cols, charged = settle(
        dt,
        tolerance_ns,
        Tied(ok, first, last, issue, np.where(has_join, j, -1), consumer, known),
        describe(dt, before, first, last, consumer, k, n),
    )
    cols.update(group_k=k, group_n=n, after_comm=ok & after_comm)
    return cols, charged


def _next_issue(issue: I64, stream: I64, group: I64) -> I64:
    """Per prefetch: the issue of the next group on its stream (int64 max when none)."""
    out = np.full(len(issue), np.iinfo(np.int64).max, dtype=np.int64)
    for s in np.unique(stream).tolist():
        mine = np.flatnonzero(stream == s)
        firsts = mine[np.concatenate(([True], group[mine][1:] != group[mine][:-1]))]
        starts = issue[firsts]
        pos = np.searchsorted(starts, issue[mine], side="right")
        has = pos < len(starts)
        out[mine[has]] = starts[pos[has]]
    return out


# ---------------------------------------------------------------------------------------------
# Points and what to change


@dataclass(frozen=True)
class Change:
    """What to change at one point: an estimate from this profile, never a measurement."""

    window_us: float  # median window length
    available_us: float  # median time from the CMO's start to its window's end (>= 0)
    cmo_us: float  # median CMO duration
    hide_share: float  # available / CMO: the share of today's bytes that would end in time
    stall_us_per_step: float  # the join stall charged to the point, what fitting it would remove
    knob: str  # what sets the prefetch size
    setting: str  # the suggested value ("" when the size is fixed)
    cmo_bytes: int | None = None  # bytes one prefetch moves now, when known
    weight_bytes: int | None = None  # the whole weight, when known
    gbps: float | None = None  # the CMO rate in this profile, bytes/ns = GB/s, when known
    bytes_hidden: int | None = None  # bytes that would end in time at that rate, when known

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate": True,
            "window_us": _round(self.window_us, 4),
            "available_us": _round(self.available_us, 4),
            "cmo_us": _round(self.cmo_us, 4),
            "hide_share": _round(self.hide_share, 4),
            "stall_us_per_step": _round(self.stall_us_per_step, 4),
            "cmo_bytes": self.cmo_bytes,
            "weight_bytes": self.weight_bytes,
            "cmo_gbps": None if self.gbps is None else _round(self.gbps, 3),
            "bytes_hidden": self.bytes_hidden,
            "knob": self.knob,
            "setting": self.setting,
        }


@dataclass(frozen=True)
class Metrics:
    """What a site and a prefetch point report alike, over their prefetches (all layers and
    steps); medians are NaN when there is none."""

    count: int
    late: int
    hidden_fraction_median: float
    slack_us_median: float
    slack_us_p90: float
    slack_us_min: float
    stall_us_total: float
    stall_us_per_step: float  # the stall inside complete steps over their number


def metrics(
    df: pd.DataFrame, rows: I64, counted: Bools, step_total: int
) -> tuple[dict[str, Any], float]:
    """Metrics of the prefetches `rows` of `df` (PREFETCH_COLUMNS), as keyword arguments, and
    their median slack in ns (what lateness.site_late judges)."""
    slack = df["slack_ns"].to_numpy(dtype=np.int64)[rows]
    hidden = df["hidden_fraction"].to_numpy(dtype=np.float64)[rows]
    stall = df["stall_ns"].to_numpy(dtype=np.int64)[rows]
    some = len(rows) > 0
    nan = math.nan
    median_ns = float(np.median(slack)) if some else nan
    measured = {
        "count": len(rows),
        "late": int(df["late"].to_numpy(dtype=bool)[rows].sum()),
        "hidden_fraction_median": float(np.median(hidden)) if some else nan,
        "slack_us_median": median_ns / 1000,
        "slack_us_p90": float(np.percentile(slack, 90)) / 1000 if some else nan,
        "slack_us_min": float(slack.min()) / 1000 if some else nan,
        "stall_us_total": int(stall.sum()) / 1000,
        "stall_us_per_step": int(stall[counted[rows]].sum()) / 1000 / max(step_total, 1),
    }
    return measured, median_ns


@dataclass(frozen=True)
class PointSummary(Metrics):
    """Per prefetch point: the same metrics as a site, over all layers and steps."""

    name: str  # "<op before> → <first window op> ⇒ <consumer>" [k/n]
    site: str  # the vllm-ascend site it is ("" when no vllm-ascend label applies)
    weight: str  # the weight it prefetches, where the layout knows it ("")
    streams: tuple[int, ...]  # prefetch stream(s)
    contention: int  # prefetches whose window holds a cube op
    consumer: str  # op type of its consumer ("?" when none)
    consumer_known: bool  # every prefetch's consumer follows from the position rule
    verdict: str  # "late" (autotune.lateness.site_late) or "hidden"
    change: Change

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "count": self.count,
            "late": self.late,
            "slack_us_median": _json_float(self.slack_us_median, 4),
            "hidden_fraction_median": _json_float(self.hidden_fraction_median, 6),
            "stall_us_total": _json_float(self.stall_us_total, 4),
            "stall_us_per_step": _json_float(self.stall_us_per_step, 4),
            "slack_us_p90": _json_float(self.slack_us_p90, 4),
            "slack_us_min": _json_float(self.slack_us_min, 4),
            "contention": self.contention,
            "consumer": self.consumer,
            "consumer_known": self.consumer_known,
            "streams": list(self.streams),
            "verdict": self.verdict,
            "change": self.change.to_json(),
        }
        if self.site:
            out["site"] = self.site
        if self.weight:
            out["weight"] = self.weight
        return out


def point_label(p: PointSummary) -> str:
    """How the views name a point: its vllm-ascend site and weight where it is one, else its
    position (what its issue follows, its first window op, its consumer)."""
    if p.site:
        return f"{p.site} ({p.weight})" if p.weight else p.site
    return f"{p.name} ({p.weight})" if p.weight else p.name


def _round(x: float, digits: int) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(float(x), digits)


def _json_float(x: float, digits: int) -> float | None:
    return None if math.isnan(x) else round(float(x), digits)


# (size of one prefetch in bytes, size of the whole weight) by (site, weight) or point name.
Sizes = Mapping[tuple[str, str] | str, tuple[int, int]]


@dataclass(frozen=True)
class Knob:
    """How a layout sizes a prefetch: the knob's name and how to write a new value."""

    name: str
    kind: str  # "ratio" (of the weight), "bytes" (a byte count), or "fixed" (no knob)


def summarise_points(
    df: pd.DataFrame,
    counted: Bools,
    step_total: int,
    tol_ns: int,
    knob_of: Any,
    sizes: Sizes | None = None,
) -> list[PointSummary]:
    """One PointSummary per point, in the order points first occur.

    `counted` marks the rows inside complete profiled steps (the per-step stall's numerator);
    `knob_of(site, weight)` gives the layout's Knob for a point."""
    out: list[PointSummary] = []
    if df.empty:
        return out
    key = df["point"].to_numpy(dtype=object)
    site = df["site"].to_numpy(dtype=object)
    weight_all = df["weight"].to_numpy(dtype=object)
    has_site = site != ""
    attributed = key != ""
    # vllm-ascend points are its sites' positions: one per (site, weight), named by their rows.
    group, _ = _combine([site, np.where(has_site, weight_all, ""), np.where(has_site, "", key)])
    rows_of = pd.Series(np.flatnonzero(attributed)).groupby(group[attributed], sort=False)
    start = df["start_ns"].to_numpy(dtype=np.int64)
    end = df["end_ns"].to_numpy(dtype=np.int64)
    win_end = df["window_end_ns"].to_numpy(dtype=np.int64)
    wins = win_end - df["window_start_ns"].to_numpy(dtype=np.int64)
    avail = np.maximum(win_end - start, 0)
    cont_all = df["contention"].to_numpy(dtype=bool)
    known_all = df["consumer_known"].to_numpy(dtype=bool)
    cons_all = df["consumer"].to_numpy(dtype=object)
    stream_all = df["stream"].to_numpy(dtype=np.int64)
    for _, rows in rows_of:
        mask = rows.to_numpy(dtype=np.int64)
        measured, median_ns = metrics(df, mask, counted, step_total)
        per_step = float(measured["stall_us_per_step"])
        name = _mode(key[mask])
        s, w = str(site[mask[0]]), str(_mode(weight_all[mask]))
        consumer = _mode(cons_all[mask][cons_all[mask] != ""])
        times = (
            float(np.median(wins[mask])) / 1000,
            float(np.median(avail[mask])) / 1000,
            float(np.median(end[mask] - start[mask])) / 1000,
        )
        change = _change(times, per_step, knob_of(s, w), _size(sizes, s, w, str(name)), s)
        out.append(
            PointSummary(
                **measured,
                name=str(name),
                site=s,
                weight=w,
                streams=tuple(int(x) for x in np.unique(stream_all[mask])),
                contention=int(cont_all[mask].sum()),
                consumer=str(consumer) if consumer else "?",
                consumer_known=bool(known_all[mask].all()),
                verdict="late" if site_late(median_ns, tol_ns) else "hidden",
                change=change,
            )
        )
    return out


def _mode(values: npt.NDArray[np.object_]) -> Any:
    """The most common value (the first seen among equals); None when there are none."""
    if not len(values):
        return None
    codes, uniques = pd.factorize(values)
    return uniques[int(np.argmax(np.bincount(codes)))]


def _size(sizes: Sizes | None, site: str, weight: str, name: str) -> tuple[int, int] | None:
    if not sizes:
        return None
    return sizes.get((site, weight)) or sizes.get(name)


# 0.23 clips mlp.* prefetches to 18 MiB (docs/analysis.md, effective bytes).
_MLP_CAP = 18 * 2**20


def _change(
    times: tuple[float, float, float],
    stall_us: float,
    knob: Knob,
    size: tuple[int, int] | None,
    site: str,
) -> Change:
    """What to change at a point: the bytes that would end within its window at this profile's
    CMO rate (the time from the CMO's start to the window's end, times that rate)."""
    window_us, available_us, cmo_us = times
    share = available_us / cmo_us if cmo_us > 0 else math.nan
    setting = ""
    if knob.kind != "fixed" and math.isfinite(share):
        setting = f"{'ratio' if knob.kind == 'ratio' else 'max_size'} × {share:.2f}"
    if size is None or not math.isfinite(share):
        return Change(window_us, available_us, cmo_us, share, stall_us, knob.name, setting)
    nbytes, whole = size
    gbps = nbytes / (cmo_us * 1000) if cmo_us > 0 else None
    hidden = int(min(nbytes * share, whole)) if whole else int(nbytes * share)
    if knob.kind == "ratio" and whole:
        ratio = max(hidden, 1) / whole
        setting = f"ratio {min(ratio, 1.0):.3g}"
        if site.startswith("mlp.") and hidden >= _MLP_CAP:
            setting += " (0.23 caps it at 18 MiB)"
    elif knob.kind == "bytes":
        setting = f"max_size {hidden}"
    return Change(
        window_us,
        available_us,
        cmo_us,
        share,
        stall_us,
        knob.name,
        setting,
        nbytes,
        whole,
        gbps,
        hidden,
    )
