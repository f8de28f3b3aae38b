"""The timeline engine: the compute stream and the single prefetch stream sharing HBM.

A CMO shares HBM bandwidth with the op it runs beside (fluid sharing: the two demands are scaled
down together when they exceed the peak), and a matmul reads the prefix of its weight a CMO has
already brought into L2 at the L2 rate, with a hit fraction that falls once the prefetched bytes
resident exceed the usable L2. The engine also records what it ran, as tasks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from autotune.hardware import Hardware
from autotune.workloads.sim.layer import Op

COMPUTE_STREAM = 2
PREFETCH_STREAM = 5
HCCL_STREAM = 8  # vllm-ascend's HCCL collectives run on a stream of their own
DEVICE_ID = 0
# Prefetch-stream costs (not on the compute stream's critical path) [est].
PF_WAIT_NS = 100.0  # event wait on the prefetch stream before a CMO starts
PF_RECORD_NS = 50.0  # event record after the last CMO of a join
SIGNAL_NS = 50.0  # record -> join wake-up latency


@dataclass(slots=True)
class Cmo:
    """One CMO prefetch: its plan, its run on the prefetch stream, and its planned window/join."""

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
    # The compute-stream kernels it was issued to hide behind: from the first kernel after its
    # record up to the last one before its join or the matmul that reads its weight.
    window_start: float = -1.0
    window_end: float = -1.0
    window_open: bool = True
    join_start: float = -1.0
    join_end: float = -1.0
    # The part of its join the compute stream spent waiting on this CMO: (start, end) ns.
    stall_span: tuple[float, float] | None = None


@dataclass(slots=True)
class Task:
    """One device task as the engine ran it (ns, relative to the profile's start)."""

    stream: int
    kind: str  # op | record | wait | cmo | hccl
    start: float
    end: float
    op: Op | None
    step: int
    layer: int
    name: str = ""  # hccl tasks: the task type ("Notify Wait", "SDMA", ...)
    group: int = -1  # hccl tasks and the compute-stream record/wait around them: the collective


class Engine:
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
        self.queue: deque[Cmo] = deque()
        self.active: Cmo | None = None
        self.live: list[Cmo] = []  # started, not yet consumed by their matmul
        self.cmos: list[Cmo] = []
        self.record = record
        self.tasks: list[Task] = []

    # -- prefetch stream ------------------------------------------------------------------

    def _next_start(self) -> float:
        if self.active is not None or not self.queue:
            return math.inf
        return max(self.pf_free, self.queue[0].record_end) + PF_WAIT_NS

    def _activate(self, t: float) -> None:
        c = self.queue.popleft()
        if self.record:
            wait_start = max(self.pf_free, c.record_start)
            self.tasks.append(Task(PREFETCH_STREAM, "wait", wait_start, t, None, c.step, c.layer))
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
            self.tasks.append(Task(PREFETCH_STREAM, "cmo", c.start, t, None, c.step, c.layer))

    def done_bytes(self, c: Cmo) -> float:
        if c.start < 0:
            return 0.0
        return c.nbytes * min(1.0, max(0.0, 1.0 - c.remaining / c.work))

    def resident(self, weight: str) -> float:
        return max((self.done_bytes(c) for c in self.live if c.weight == weight), default=0.0)

    def outstanding(self) -> float:
        return sum(self.resident(w) for w in {c.weight for c in self.live})

    def issue(self, c: Cmo) -> None:
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

    def matmul(self, t: float, op: Op, dur_scale: float) -> float:
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
