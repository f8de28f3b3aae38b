"""What a trial's profile says: window timings, inert sites, lateness and the profiled step."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune import target
from autotune.overlap import OverlapResult
from autotune.profile import Profile
from autotune.search.space import SearchSpace
from autotune.target import Setup

NO_CMO_REASON = "issued no CMO task in the default trial"


@dataclass(frozen=True)
class SiteTiming:
    """One site's windows and CMO speed in one trial's profile."""

    site: str
    prefetches: int
    window_ns: float  # median window length
    bandwidth: float  # median CMO bytes per ns
    fill_bytes: int  # bytes of the tuned weight that exactly fill the window (0 if unknown)


def site_timings(
    result: OverlapResult, config: Mapping[str, Any], setup: Setup
) -> dict[str, SiteTiming]:
    """Per site with prefetches: window length, CMO bandwidth and the window-filling bytes.

    A site may prefetch several weights (attn.o also fires on down_proj): the fill is the largest
    size of the tuned weight whose every firing fits its window.
    """
    frame = result.prefetches
    if frame.empty:
        return {}
    moved = {
        (p.site, p.weight): p for p in target.resolve_prefetches(config, setup, setup.max_num_seqs)
    }
    tuned = target.site_weight_bytes(setup)
    out: dict[str, SiteTiming] = {}
    for site, rows in frame[frame["site"] != ""].groupby("site"):
        site = str(site)
        durations = (rows["end_ns"] - rows["start_ns"]).astype("float64")
        windows = (rows["window_end_ns"] - rows["window_start_ns"]).astype("float64")
        speeds: list[float] = []
        fills: list[float] = []
        for weight, part in rows.groupby("weight"):
            prefetch = moved.get((site, str(weight)))
            if prefetch is None:
                continue
            dur = durations.loc[part.index]
            dur = dur[dur > 0]
            if dur.empty:
                continue
            bw = float(statistics.median(prefetch.bytes / dur))
            speeds.append(bw)
            win = float(statistics.median(windows.loc[part.index]))
            # Bytes of this weight the window hides, as a share of it, applied to the tuned weight.
            share = max(win, 0.0) * bw / prefetch.weight_bytes
            fills.append(share * tuned.get(site, 0))
        out[site] = SiteTiming(
            site=site,
            prefetches=len(rows),
            window_ns=float(statistics.median(windows)) if len(windows) else 0.0,
            bandwidth=float(statistics.median(speeds)) if speeds else 0.0,
            fill_bytes=int(min(fills)) if fills else 0,
        )
    return out


def profile_inert(timings: Mapping[str, SiteTiming], space: SearchSpace) -> dict[str, str]:
    """Active sites that issued no CMO task in the default trial -> the reason."""
    return {
        site: NO_CMO_REASON
        for site in space.names
        if site not in timings or timings[site].prefetches == 0
    }


@dataclass(frozen=True)
class StepStats:
    """A trial's profiled decode step: its mean and the standard error of that mean (ms)."""

    mean_ms: float
    se_ms: float | None  # None: too few steps to show a spread
    steps: int


def _robust_sd(values: Sequence[float]) -> float:
    """Standard deviation from the median absolute deviation: one odd step does not set it."""
    med = statistics.median(values)
    return 1.4826 * float(statistics.median(abs(v - med) for v in values))


def step_stats(profiles: Sequence[Profile], result: OverlapResult) -> StepStats | None:
    """The profiled decode step, median over ranks: device-task span / steps (ms), and the
    standard error of that mean from the spread of the complete steps the step markers record
    (`result.step_times`; the ranks run in lockstep, so it is the median rank's, not divided
    again by the ranks)."""
    means: list[float] = []
    counts: list[int] = []
    for prof in profiles:
        if prof.tasks.empty:
            continue
        steps = max(1, prof.steps or 1)
        span = int(prof.tasks["end_ns"].max()) - int(prof.tasks["start_ns"].min())
        means.append(span / steps / 1e6)
        counts.append(steps)
    if not means:
        return None
    by_rank: dict[int, list[float]] = {}
    for t in result.step_times:
        if t.complete:
            by_rank.setdefault(t.rank, []).append(float(t.end_ns - t.start_ns))
    errors = [_robust_sd(d) / math.sqrt(len(d)) / 1e6 for d in by_rank.values() if len(d) >= 3]
    se = float(statistics.median(errors)) if errors else None
    return StepStats(float(statistics.median(means)), se, int(statistics.median(counts)))


def lateness_by_site(result: OverlapResult) -> dict[str, float]:
    """Median lateness in µs per site with prefetches (> 0: the prefetch ends after its window)."""
    return {s.site: -s.slack_us_median for s in result.sites if s.count > 0}
