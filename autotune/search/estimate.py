"""The noise model: each trial's objective estimated from every trial's bench and profile, with
its standard error, and the margin between two trials as an estimate with an interval.

Two measurements of a trial see the same effect with different noise: its bench runs (y =
1/throughput, or TPOT; one Gaussian-like factor per run) and its profiled decode step x (a few
steps of one burst, each step jittered). Over all profiled trials y is regressed on x (a line, or
y proportional to x while the line is not usable), and each trial's estimate is the
precision-weighted mean of its own bench figure and the fit at its profiled step:

    bench part  variance  v_b = (sigma_b * y)^2 / runs
    fit part    variance  v_f = (slope * se(x))^2 + tau^2
    estimate    = (v_f * y + v_b * fit(x)) / (v_b + v_f),   variance v_b * v_f / (v_b + v_f)

- sigma_b, the relative noise of one bench run: from the spread of the runs of configs measured
  more than once (repeats, confirmations), pooled with a stated prior (`PRIOR_BENCH_CV`, worth
  `PRIOR_BENCH_RUNS` runs); with one run per config, from the fit's residuals beyond the profile's
  noise, pooled with the same prior; never zero.
- se(x), the standard error of the profiled step: from the spread of its steps
  (`measure.step_stats`), else a stated prior per step (`PRIOR_STEP_CV`).
- tau, the misfit: what the profiled step does not explain beyond both noises (the profile sees
  early decode under the profiler, the bench averages the whole output), from the residuals.

A trial without a profile is estimated the same way with the population of trials in place of
the fit: its bench figure is pulled towards the mean of all trials by its own noise against the
spread of the trials, so it is ranked on the same scale as the others, not by a lucky draw.
Margins add the two trials' variances and the uncertainty of the fitted line they share; an
interval is `Z` standard errors each way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.rundir import TrialRecord
from autotune.search.guide import PARTNERS

# A bench run's relative noise when the run cannot measure it, and its weight in runs: serving
# benchmarks of a minute or more repeat within about 1 % on one host [est].
PRIOR_BENCH_CV = 0.01
PRIOR_BENCH_RUNS = 4
# Relative std of one profiled decode step when a profile shows no spread (one step): a real
# 910B capture's kernels repeat with 5.5 % CV, which a step of hundreds of kernels averages down
# to about 1 % [est].
PRIOR_STEP_CV = 0.01
# Standard errors each side of an interval, and what "beyond the noise" means (about 95 %).
Z = 2.0
# Bench runs shorter than this measure start-up and scheduling more than decode.
MIN_BENCH_S = 10.0
# Repeats spread wider than this (relative std of one run) cannot rank configs a few % apart.
WIDE_BENCH_CV = 0.03


def _pct(share: float, digits: int = 2) -> str:
    return f"{100 * share:.{digits}f} %"


def to_y(value: float, objective: str) -> float:
    """The bench figure as a lower-is-better quantity linear in the step time."""
    return 1.0 / value if objective == "throughput" else value


def from_y(y: float, objective: str) -> float:
    return 1.0 / y if objective == "throughput" else y


def bench_runs(records: Sequence[TrialRecord], objective: str) -> dict[int, list[float]]:
    """Per measured trial, y of every bench run of its config: its own repeats and those of the
    confirmations that measured it again."""
    out: dict[int, list[float]] = {}
    for r in records:
        if r.state != "complete" or r.objective is None or r.objective <= 0:
            continue
        reps = r.throughputs if objective == "throughput" else r.tpots_ms
        ys = [to_y(v, objective) for v in reps if v > 0] or [to_y(r.objective, objective)]
        owner = r.confirms if r.confirms is not None else r.number
        out.setdefault(owner, []).extend(ys)
    ranked = {r.number for r in records if r.state == "complete" and r.confirms is None}
    return {n: ys for n, ys in out.items() if n in ranked}


@dataclass(frozen=True)
class Noise:
    """The noise the estimates used, and where each figure came from."""

    bench_cv: float  # relative std of one bench run
    bench_from: str  # repeats | residuals | prior
    bench_dof: int  # degrees of freedom of the measured part (0: the prior alone)
    profile_cv: float | None  # median relative standard error of a trial's profiled step
    profile_from: str  # steps | prior | "" (no trial profiled)
    profile_basis: str  # segments (the prefetch sites' segments + the mean rest) | step
    misfit_cv: float  # relative std of the part of the bench the profiled step does not explain
    fit: str  # line | proportional | none
    profiled: int  # trials with a profiled step
    short_bench_s: float | None = None  # median bench duration, when below MIN_BENCH_S

    def text(self) -> str:
        """One line: what noise the estimates used."""
        how = {
            "repeats": f"from the spread of repeated runs ({self.bench_dof} degrees of freedom) "
            f"and a {_pct(PRIOR_BENCH_CV, 0)} prior",
            "residuals": "from the fit's residuals (one run per config) and a "
            f"{_pct(PRIOR_BENCH_CV, 0)} prior",
            "prior": "a stated prior: one run per config measures no spread",
        }[self.bench_from]
        parts = [f"bench {_pct(self.bench_cv)} per run ({how})"]
        if self.fit == "none" or self.profile_cv is None:
            parts.append(
                "no trial was profiled, so each estimate is its bench figure pulled "
                "towards the mean of all trials by its noise"
            )
        else:
            where = (
                "the spread of its steps"
                if self.profile_from == "steps"
                else (f"a {PRIOR_STEP_CV:.0%}-per-step prior")
            )
            what = (
                "profiled step over the prefetch segments"
                if self.profile_basis == "segments"
                else "profiled step"
            )
            parts.append(f"{what} ±{_pct(self.profile_cv)} per trial ({where})")
            parts.append(f"misfit {_pct(self.misfit_cv)} between profile and bench")
        return "noise: " + ", ".join(parts) + f"; intervals ±{Z:g} standard errors"

    def to_json(self) -> dict[str, Any]:
        return {
            "bench_cv": self.bench_cv,
            "bench_from": self.bench_from,
            "profile_cv": self.profile_cv,
            "profile_from": self.profile_from,
            "profile_basis": self.profile_basis,
            "misfit_cv": self.misfit_cv,
            "fit": self.fit,
            "profiled_trials": self.profiled,
            "text": self.text(),
        }


@dataclass(frozen=True)
class Margin:
    """How much better trial `better` is than trial `other`, in % (positive: better), with an
    interval of `Z` standard errors."""

    better: int
    other: int
    estimate_pct: float
    low_pct: float
    high_pct: float
    distinguishable: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "estimate_pct": self.estimate_pct,
            "low_pct": self.low_pct,
            "high_pct": self.high_pct,
            "distinguishable": self.distinguishable,
            "trial": self.other,
        }


@dataclass
class Estimates:
    """Per measured trial: its estimated y, the variance of that estimate, and what it shares with
    the others through the fitted line."""

    objective: str
    y: dict[int, float] = field(default_factory=dict)
    var: dict[int, float] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)  # bench runs behind each estimate
    # Shared-parameter terms: trial -> (weight on the fit, x - mean x (or x)) and the variances of
    # the fit's level and slope.
    lever: dict[int, tuple[float, float]] = field(default_factory=dict)
    level_var: float = 0.0
    slope_var: float = 0.0
    noise: Noise | None = None

    def value(self, n: int) -> float | None:
        y = self.y.get(n)
        return from_y(y, self.objective) if y is not None and y > 0 else None

    def values(self) -> dict[int, float]:
        return {n: v for n in self.y if (v := self.value(n)) is not None}

    def diff(self, better: int, other: int) -> tuple[float, float]:
        """y[other] - y[better] (> 0: `better` is better) and its standard error."""
        d = self.y[other] - self.y[better]
        var = self.var[better] + self.var[other]
        wb, xb = self.lever.get(better, (0.0, 0.0))
        wo, xo = self.lever.get(other, (0.0, 0.0))
        var += (wb - wo) ** 2 * self.level_var + (wb * xb - wo * xo) ** 2 * self.slope_var
        return d, math.sqrt(max(var, 0.0))

    @property
    def blind(self) -> bool:
        """The benches are too short to mean anything and no repeat shows their spread: the
        stated prior cannot speak for them, so nothing is told apart on them."""
        noise = self.noise
        return (
            noise is not None and noise.short_bench_s is not None and noise.bench_from != "repeats"
        )

    def beyond(self, better: int, other: int) -> bool:
        """Whether `better` beats `other` by more than `Z` standard errors of the difference."""
        if better not in self.y or other not in self.y or self.blind:
            return False
        d, sd = self.diff(better, other)
        return d > Z * sd

    def margin(self, better: int, other: int) -> Margin | None:
        """`better` against `other` in % of the objective (for TPOT: the share saved)."""
        if better not in self.y or other not in self.y:
            return None
        d, sd = self.diff(better, other)
        # throughput: y_o / y_b - 1 = d / y_b; TPOT: 1 - y_b / y_o = d / y_o
        scale = 100.0 / (self.y[better] if self.objective == "throughput" else self.y[other])
        distinguishable = abs(d) > Z * sd and not self.blind
        return Margin(
            better, other, d * scale, (d - Z * sd) * scale, (d + Z * sd) * scale, distinguishable
        )

    def runs_needed(self, better: int, other: int) -> int | None:
        """Bench runs per config that would make the two distinguishable at the present margin,
        the noise staying as it is (None when they are already, or the margin is nil)."""
        d, sd = self.diff(better, other)
        if abs(d) > Z * sd or d == 0:
            return None
        have = min(self.runs.get(better, 1), self.runs.get(other, 1))
        return math.ceil(have * (Z * sd / abs(d)) ** 2)


def _pooled_bench(runs: dict[int, list[float]]) -> tuple[float, int]:
    """Pooled relative variance of one run over configs run more than once, and its dof."""
    ss, dof = 0.0, 0
    for ys in runs.values():
        if len(ys) < 2:
            continue
        m = statistics.fmean(ys)
        ss += sum((v / m - 1.0) ** 2 for v in ys)
        dof += len(ys) - 1
    return (ss / dof if dof else 0.0), dof


def _with_prior(var: float, dof: int) -> float:
    prior = PRIOR_BENCH_CV**2
    return (dof * var + PRIOR_BENCH_RUNS * prior) / (dof + PRIOR_BENCH_RUNS)


def _median_bench_s(records: Sequence[TrialRecord]) -> float | None:
    durations = [d for r in records if r.state == "complete" for d in r.bench_s if d > 0]
    return float(statistics.median(durations)) if durations else None


def _moved_sites(records: Sequence[TrialRecord]) -> set[str]:
    """Sites some trial prefetches, and the sites whose segments their prefetch also reaches:
    the only segments a config can change."""
    moved = {s for r in records for s, b in r.effective_bytes.items() if b > 0}
    return moved | {d for d, partners in PARTNERS.items() if moved & set(partners)}


def _profile_points(
    profiled: Sequence[TrialRecord],
) -> tuple[list[tuple[int, float, TrialRecord]], dict[int, float], int, str]:
    """Each profiled trial's step as the profile measures it, x, with its standard error; how
    many errors came from the spread of steps; and what x is ("segments" or "step").

    A prefetch changes only its site's segments (window to consumer matmul, and those its ratio
    also prefetches for: `guide.PARTNERS`); the rest of the step (attention, experts,
    communication, host time, the segments of sites no trial prefetches) is the same config to
    config, and its noise (host jitter, the burst's context) is not the prefetch's. So where
    every trial holds
    the same sites' segments, x is the trial's segment time plus the rest averaged over all
    trials, and its error is the step's error on the segments' share of the step (the step-wide
    jitter of clock and HBM moves every kernel alike)."""
    se_step: dict[int, float] = {}
    from_steps = 0
    for r in profiled:
        step = float(r.step_ms or 0.0)
        if r.step_se_ms is not None and r.step_se_ms > 0:
            se_step[r.number] = float(r.step_se_ms)
            from_steps += 1
        else:
            se_step[r.number] = PRIOR_STEP_CV * step / math.sqrt(max(1, r.profiled_steps))
    sites = _moved_sites(profiled)
    for r in profiled:
        sites &= set(r.segment_ms)
    if len(profiled) < 2 or not sites:
        pts = [(r.number, float(r.step_ms or 0.0), r) for r in profiled]
        return pts, se_step, from_steps, "step"
    seg = {r.number: sum(r.segment_ms[s] for s in sites) for r in profiled}
    rest = statistics.fmean(float(r.step_ms or 0.0) - seg[r.number] for r in profiled)
    pts = [(r.number, seg[r.number] + rest, r) for r in profiled]
    se_x = {
        r.number: se_step[r.number] * min(1.0, seg[r.number] / float(r.step_ms or 1.0))
        for r in profiled
    }
    return pts, se_x, from_steps, "segments"


def estimate(records: Sequence[TrialRecord], objective: str) -> Estimates:
    """Every measured trial's estimate and its noise (module docstring)."""
    runs = bench_runs(records, objective)
    out = Estimates(objective)
    if not runs:
        return out
    measured = {n: float(statistics.median(ys)) for n, ys in runs.items()}
    out.runs = {n: len(ys) for n, ys in runs.items()}
    by_number = {r.number: r for r in records}
    profiled = [by_number[n] for n in measured if (by_number[n].step_ms or 0.0) > 0]
    pts, se_x, from_steps, basis = _profile_points(profiled)
    rep_var, rep_dof = _pooled_bench(runs)

    fit = "none"
    slope = 0.0
    fitted: dict[int, float] = {}
    resid_var = 0.0
    dof_f = 0
    mx = 0.0
    sxx = 0.0
    if pts:
        xs = [x for _, x, _ in pts]
        ys = [measured[n] for n, _, _ in pts]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        if len(pts) >= 3 and b > 0:
            fit, slope, dof_f = "line", b, len(pts) - 2
            fitted = {n: my + b * (x - mx) for n, x, _ in pts}
        else:
            fit = "proportional"
            slope = statistics.median(y / x for x, y in zip(xs, ys, strict=True))
            dof_f = len(pts) - 1
            fitted = {n: slope * x for n, x, _ in pts}
        resid = [measured[n] - fitted[n] for n, _, _ in pts]
        resid_var = sum(e * e for e in resid) / dof_f if dof_f > 0 else 0.0

    ref_y = statistics.fmean(measured[n] for n, _, _ in pts) if pts else 0.0
    prof_var = {n: (slope * se_x[n]) ** 2 for n, _, _ in pts}
    mean_prof = statistics.fmean(prof_var.values()) if prof_var else 0.0
    # Bench noise per run (relative variance).
    if rep_dof > 0:
        bench_var, bench_from, bench_dof = _with_prior(rep_var, rep_dof), "repeats", rep_dof
    elif fit != "none" and dof_f > 0 and ref_y > 0:
        beyond_profile = max(0.0, resid_var - mean_prof) / ref_y**2
        bench_var, bench_from, bench_dof = _with_prior(beyond_profile, dof_f), "residuals", dof_f
    else:
        bench_var, bench_from, bench_dof = PRIOR_BENCH_CV**2, "prior", 0
    v_b = {n: bench_var * measured[n] ** 2 / len(runs[n]) for n in measured}
    # What the profiled step does not explain beyond both noises.
    tau2 = 0.0
    if fit != "none" and dof_f > 0:
        tau2 = max(0.0, resid_var - statistics.fmean(v_b[n] for n, _, _ in pts) - mean_prof)
    if fit == "line":
        out.level_var = resid_var / len(pts)
        out.slope_var = resid_var / sxx if sxx else 0.0
    elif fit == "proportional":
        sx2 = sum(x * x for _, x, _ in pts)
        out.slope_var = resid_var / sx2 if sx2 else 0.0

    for n, x, _ in pts:
        vf = prof_var[n] + tau2
        w_fit = v_b[n] / (v_b[n] + vf)
        out.y[n] = (1.0 - w_fit) * measured[n] + w_fit * fitted[n]
        out.var[n] = (1.0 - w_fit) ** 2 * v_b[n] + w_fit**2 * vf
        out.lever[n] = (w_fit, x - mx if fit == "line" else x)

    # Trials without a profile: pulled towards the level of the trials by their own noise
    # against the spread of the configs. The level and spread come from the profiled trials'
    # estimates when there are some (a draw of its own must not lift the level it is pulled
    # towards), else from all the measurements, less their noise.
    rest = [n for n in measured if n not in out.y]
    if rest:
        if len(out.y) >= 2:
            values = list(out.y.values())
            spread = statistics.variance(values)
            between = spread
        else:
            values = list(measured.values())
            spread = statistics.variance(values) if len(values) >= 2 else 0.0
            between = spread - statistics.fmean(v_b.values())
        mean_y = statistics.fmean(values)
        # Configs are never taken as exactly alike: at least 0.1 % apart.
        between = max(between, (1e-3 * mean_y) ** 2)
        for n in rest:
            if len(measured) < 3:
                out.y[n], out.var[n] = measured[n], v_b[n]
                continue
            w_mean = v_b[n] / (v_b[n] + between)
            out.y[n] = (1.0 - w_mean) * measured[n] + w_mean * mean_y
            out.var[n] = (1.0 - w_mean) ** 2 * v_b[n] + w_mean**2 * (between + spread / len(values))

    profile_cv = None
    if pts:
        profile_cv = float(statistics.median(se_x[n] / x for n, x, _ in pts))
    median_s = _median_bench_s(records)
    out.noise = Noise(
        bench_cv=math.sqrt(bench_var),
        bench_from=bench_from,
        bench_dof=bench_dof,
        profile_cv=profile_cv,
        profile_from=("steps" if from_steps * 2 >= len(pts) else "prior") if pts else "",
        profile_basis=basis,
        misfit_cv=math.sqrt(tau2) / ref_y if ref_y > 0 else 0.0,
        fit=fit,
        profiled=len(pts),
        short_bench_s=median_s if median_s is not None and median_s < MIN_BENCH_S else None,
    )
    return out


def estimates(records: Sequence[TrialRecord], objective: str) -> dict[int, float]:
    """Per measured trial, its objective estimated from every trial's bench and profile."""
    return estimate(records, objective).values()


def bench_warnings(est: Estimates, gain_pct: float | None = None) -> list[str]:
    """Why the run's bench figures cannot carry a gain, if they cannot: benches too short, or
    repeats spread wider than the effects being measured."""
    noise = est.noise
    out: list[str] = []
    if noise is None:
        return out
    if noise.short_bench_s is not None:
        out.append(
            f"the bench runs lasted {noise.short_bench_s:.1f} s (median), under {MIN_BENCH_S:g} "
            "s: they measure start-up and scheduling more than decode, so their gains mean "
            "little; give the bench more prompts or a longer --output-len"
        )
    if noise.bench_from == "repeats" and noise.bench_cv > WIDE_BENCH_CV:
        size = f" (gain {gain_pct:+.2f} %)" if gain_pct is not None else ""
        out.append(
            f"repeated bench runs of one config differ by {noise.bench_cv:.1%} (std of one "
            f"run): too wide to rank configs a few % apart{size}"
        )
    return out
