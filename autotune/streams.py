"""Which stream does what on one device: the compute stream, the prefetch streams, and which
compute-stream waits wait for a prefetch stream (the joins).

One picker for every view: the overlap analysis uses it, its result carries the choice, and the
report draws the streams the analysis read.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.profile.tasks import ROLE_COLUMN, ROLES

I64 = npt.NDArray[np.int64]

ROLE_CODE: dict[str, int] = {role: i for i, role in enumerate(ROLES)}
PREFETCH = ROLE_CODE["prefetch"]
WAIT = ROLE_CODE["wait"]
RECORD = ROLE_CODE["record"]
CUBE = ROLE_CODE["cube"]
COMM = ROLE_CODE["comm"]
# Roles that make a stream a compute stream: vector kernels and cube kernels.
KERNEL_CODES = np.array([ROLE_CODE[r] for r in ROLES if r.startswith("vector:")] + [CUBE])
KERNEL_ROLES: tuple[str, ...] = (*tuple(r for r in ROLES if r.startswith("vector:")), "cube")


def role_codes(tasks: pd.DataFrame) -> I64:
    """The role column as integer codes (index into ROLES)."""
    codes = pd.Categorical(tasks[ROLE_COLUMN], categories=list(ROLES)).codes
    return np.asarray(codes, dtype=np.int64)


@dataclass(frozen=True)
class Streams:
    """The streams of one device: the compute stream and the prefetch streams."""

    compute: int  # -1 when the device runs no vector or cube kernel
    prefetch: tuple[int, ...]  # streams other than the compute stream with prefetch tasks


def pick_streams(role: I64, stream: I64) -> Streams:
    """Compute stream: the one running the most vector and cube kernels (ties: the lowest id).
    Prefetch streams: every other stream with a prefetch task, in id order."""
    kernels = np.isin(role, KERNEL_CODES)
    compute = -1
    if kernels.any():
        ids, counts = np.unique(stream[kernels], return_counts=True)
        compute = int(ids[np.argmax(counts)])
    pf = np.unique(stream[(role == PREFETCH) & (stream != compute)])
    return Streams(compute, tuple(int(s) for s in pf))


def device_streams(tasks: pd.DataFrame) -> Streams:
    """`pick_streams` for the tasks of one device."""
    return pick_streams(role_codes(tasks), tasks["stream"].to_numpy(dtype=np.int64))


@dataclass(frozen=True)
class Joins:
    """The compute-stream waits that wait for a prefetch stream, in time order."""

    index: I64  # task indices of the waits
    stream: I64  # the prefetch stream each waited for (-1: not known, the profile has no records)
    record_end: I64  # end of the last record of that stream it waited for (-1 when not known)


def prefetch_joins(
    waits: I64,
    role: I64,
    stream: I64,
    start: I64,
    end: I64,
    cstream: int,
    pf_streams: set[int],
) -> Joins:
    """The compute-stream `waits` (indices, in time order) that wait on a prefetch stream.

    A wait that was blocked was released by the record (on another stream of the device) that
    ended last within it. A wait that was not blocked waits on a prefetch stream when that
    stream has a record no earlier wait consumed. A wait consumes its stream's records ended by
    its end. Without records on the prefetch streams every compute-stream wait counts.
    """
    none = np.zeros(0, dtype=np.int64)
    if not len(waits) or not pf_streams:
        return Joins(none, none, none)
    rec = np.flatnonzero((role == RECORD) & (stream != cstream))
    if not np.isin(stream[rec], np.fromiter(pf_streams, dtype=np.int64)).any():
        unknown = np.full(len(waits), -1, dtype=np.int64)
        return Joins(waits, unknown, unknown.copy())
    ends: dict[int, list[int]] = {}
    for i in rec[np.argsort(end[rec], kind="stable")].tolist():
        ends.setdefault(int(stream[i]), []).append(int(end[i]))
    used = dict.fromkeys(ends, 0)  # per stream: records consumed so far
    keep: list[tuple[int, int, int]] = []
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
            keep.append((w, by, ends[by][used[by] - 1]))
    arr = np.array(keep, dtype=np.int64).reshape(-1, 3)
    return Joins(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy())


def _unused(ends: list[int], used: int, t: int) -> bool:
    return used < len(ends) and ends[used] <= t
