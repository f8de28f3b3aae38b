"""What a trial says: window timings and inert sites from its profile, and robust estimates."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune import target
from autotune.overlap import OverlapResult
from autotune.profile import Profile
from autotune.rundir import TrialRecord
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


def profile_step_ms(profiles: Sequence[Profile]) -> float | None:
    """Median over ranks of the profiled decode step: device-task span / steps, in ms."""
    spans: list[float] = []
    for prof in profiles:
        if prof.tasks.empty:
            continue
        span = int(prof.tasks["end_ns"].max()) - int(prof.tasks["start_ns"].min())
        spans.append(span / max(1, prof.steps or 1) / 1e6)
    return float(statistics.median(spans)) if spans else None


@dataclass(frozen=True)
class _Fit:
    """The bench figure (as y: 1/throughput or TPOT) regressed on the profiled step time."""

    line: bool  # a usable line (else y proportional to the step)
    slope: float
    sxx: float
    s2: float  # residual variance
    keep: float  # share of a trial's residual its repeats say is real
    steps: dict[int, float]  # trial -> profiled step ms
    repeat_var: dict[int, float]  # trial -> variance of its median's y, from its repeats
    estimated_y: dict[int, float]


def _to_y(v: float, objective: str) -> float:
    return 1.0 / v if objective == "throughput" else v


def _fit(records: Sequence[TrialRecord], objective: str) -> tuple[dict[int, float], _Fit | None]:
    measured = {
        r.number: r.objective
        for r in records
        if r.state == "complete" and r.objective is not None and r.objective > 0
    }
    pts = [
        (r.number, float(r.step_ms), r)
        for r in records
        if r.number in measured and r.step_ms is not None and r.step_ms > 0
    ]
    if not pts:
        return measured, None
    xs = [x for _, x, _ in pts]
    ys = [_to_y(measured[n], objective) for n, _, _ in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    line = len(pts) >= 3 and slope > 0
    if line:
        fitted = [my + slope * (x - mx) for x in xs]
        dof = len(pts) - 2
    else:
        ratio = statistics.median(y / x for x, y in zip(xs, ys, strict=True))
        fitted = [ratio * x for x in xs]
        dof = len(pts) - 1
    resid = [y - f for y, f in zip(ys, fitted, strict=True)]
    s2 = sum(e * e for e in resid) / dof if dof > 0 else 0.0
    # Noise of one trial's median from the spread of its repeats (pooled).
    keep = 0.0
    repeat_var: dict[int, float] = {}
    for n, _, r in pts:
        reps = r.throughputs if objective == "throughput" else r.tpots_ms
        ys_r = [_to_y(v, objective) for v in reps if v > 0]
        if len(ys_r) >= 2:
            repeat_var[n] = statistics.variance(ys_r) / len(ys_r)
    if repeat_var and s2 > 0:
        keep = min(1.0, max(0.0, 1.0 - statistics.fmean(repeat_var.values()) / s2))
    est = {n: f + keep * (y - f) for (n, _, _), y, f in zip(pts, ys, fitted, strict=True)}
    steps = {n: x for n, x, _ in pts}
    return measured, _Fit(line, slope, sxx, s2, keep, steps, repeat_var, est)


def estimates(records: Sequence[TrialRecord], objective: str) -> dict[int, float]:
    """Per measured trial, its objective estimated from every trial's bench and profile.

    A bench's run-to-run noise (~1 %) is as large as the prefetch effects, while the profiled
    decode step measures the same thing far more steadily. So the bench figure (as 1/throughput,
    or TPOT; both grow linearly with the step time) is regressed on the step time over all
    trials, and each trial gets the fitted value, moved back towards its own measurement by the
    share of the residual that the spread over its repeats cannot explain (none with one repeat).
    When the line is not usable (fewer than three trials, or a slope the noise made negative) the
    bench figure is taken as proportional to the step time instead. Trials without a profile keep
    their measurement.
    """
    measured, fit = _fit(records, objective)
    out = dict(measured)
    if fit is None:
        return out
    for n, y in fit.estimated_y.items():
        if y > 0:
            out[n] = 1.0 / y if objective == "throughput" else y
    return out


def beyond_noise(records: Sequence[TrialRecord], objective: str, better: int, worse: int) -> bool:
    """Whether trial `better`'s estimate beats trial `worse`'s by more than twice the noise of
    their repeats, for the share of each estimate taken from them (`estimates`).

    The rest of an estimate comes from the fitted line at the trial's profiled step time, which
    ranks trials by a measurement far steadier than one bench run, so it adds no noise here.
    """
    _, fit = _fit(records, objective)
    if fit is None or better not in fit.estimated_y or worse not in fit.estimated_y:
        return False
    # y is lower-is-better for both objectives (1/throughput, TPOT).
    diff = fit.estimated_y[worse] - fit.estimated_y[better]
    pooled = statistics.fmean(fit.repeat_var.values()) if fit.repeat_var else 0.0
    var = fit.keep**2 * (fit.repeat_var.get(better, pooled) + fit.repeat_var.get(worse, pooled))
    return bool(diff > 2.0 * math.sqrt(var))


def lateness_by_site(result: OverlapResult) -> dict[str, float]:
    """Median lateness in µs per site with prefetches (> 0: the prefetch ends after its window)."""
    return {s.site: -s.slack_us_median for s in result.sites if s.count > 0}
