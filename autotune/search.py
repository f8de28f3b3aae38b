"""The search: probe, profile-guided seed, then an Optuna 5 study over effective prefetch bytes.

Order of trials in a study:

0. baseline — prefetch off (`enabled: false`), every other key as in the trials;
1. default — 0.23's default ratios; its profile tells which sites really issue CMO tasks (the others
   are inert here and leave the space) and how long each site's window is and how fast its CMO runs;
2. seed — per active site, the bytes that exactly fill its window at the measured CMO bandwidth;
3. … search trials proposed by the sampler, each compiled with `target.compile_config`.

The search space is, per active site, a short ladder of effective byte sizes (0 = off, then even
steps up to the whole weight or the 18 MiB mlp cap). Two trials that compile to the same effective
bytes are the same trial: the second one is not run; it takes the first one's result and is marked.
Lateness per site is an Optuna constraint (`trial.set_constraint`, feasible iff ≤ 0).

Nothing here prints: progress goes to a `RunObserver`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from autotune import target
from autotune.errors import AutotuneError
from autotune.overlap import OverlapResult, analyze
from autotune.profile import Profile, load_profiles
from autotune.rundir import MIB, RunDir, TrialRecord
from autotune.target import Setup
from autotune.workloads.base import Backend, TrialResult, Workload, setup_of

# At most this many non-zero byte sizes per site: trials cost minutes, so the ladder is short.
MAX_LEVELS = 16
# Candidate ladder steps, in MiB: the smallest that keeps a site within MAX_LEVELS is used.
_STEPS_MIB: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16, 32, 64, 128)

OBJECTIVES: dict[str, StudyDirection] = {
    "throughput": StudyDirection.MAXIMIZE,  # output tokens/s
    "tpot": StudyDirection.MINIMIZE,  # median TPOT, ms
}
SAMPLERS: tuple[str, ...] = ("guided", "tpe", "random", "gp")
KEEP_PROFILES: tuple[str, ...] = ("all", "best", "none")

NO_CMO_REASON = "issued no CMO task in the default trial"
# Stop proposing after this many consecutive duplicates: the sampler has nothing new to offer.
MAX_CONSECUTIVE_DUPLICATES = 40
# With --keep-profiles best, the profiles of this many top trials stay until the run ends.
PROFILES_KEPT_DURING_RUN = 3
# Abort the run after this many consecutive failed search trials.
MAX_CONSECUTIVE_FAILURES = 3

# Study and trial attribute keys.
ATTR_ROLE = "role"
ATTR_SPACE = "space"
ATTR_WORKLOAD = "workload"


# ---------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class SiteSpace:
    """The byte sizes one site can take in the search; levels[0] is 0 (off)."""

    site: str
    levels: tuple[int, ...]

    @property
    def high(self) -> int:
        return self.levels[-1]

    def nearest(self, nbytes: float) -> int:
        """Index of the level closest to `nbytes`."""
        return min(range(len(self.levels)), key=lambda i: (abs(self.levels[i] - nbytes), i))

    def distribution(self) -> FloatDistribution:
        # Params are effective MiB, so the dashboard shows what was prefetched.
        return FloatDistribution(0.0, self.high / MIB)


def site_levels(low: int, high: int) -> tuple[int, ...]:
    """0 plus an even ladder of at most MAX_LEVELS sizes in [low, high], ending at `high`."""
    if high <= 0:
        return (0,)
    for step_mib in _STEPS_MIB:
        step = int(step_mib * MIB)
        if math.ceil(high / step) <= MAX_LEVELS:
            break
    sizes = [k * step for k in range(1, high // step + 1) if k * step >= low and k * step < high]
    return (0, *sizes, high)


@dataclass(frozen=True)
class SearchSpace:
    """Active sites and their byte ladders; sites left out are inert, with the reason."""

    sites: tuple[SiteSpace, ...]
    inert: dict[str, str]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.site for s in self.sites)

    def site(self, name: str) -> SiteSpace:
        return next(s for s in self.sites if s.site == name)

    def distributions(self) -> dict[str, BaseDistribution]:
        return {s.site: s.distribution() for s in self.sites}

    def size(self) -> int:
        return math.prod(len(s.levels) for s in self.sites)

    def quantise(self, bytes_by_site: Mapping[str, float]) -> dict[str, int]:
        """Every active site snapped to its nearest level (missing sites: 0)."""
        return {s.site: s.levels[s.nearest(bytes_by_site.get(s.site, 0))] for s in self.sites}

    def key(self, bytes_by_site: Mapping[str, float]) -> tuple[int, ...]:
        """Level indices of the active sites: equal keys are the same trial."""
        return tuple(s.nearest(bytes_by_site.get(s.site, 0)) for s in self.sites)

    def bytes_of_key(self, key: Sequence[int]) -> dict[str, int]:
        return {s.site: s.levels[i] for s, i in zip(self.sites, key, strict=True)}

    def params_of(self, bytes_by_site: Mapping[str, float]) -> dict[str, float]:
        """Optuna params (effective MiB) for a byte assignment, snapped to the ladder."""
        return {site: b / MIB for site, b in self.quantise(bytes_by_site).items()}

    def bytes_of_params(self, params: Mapping[str, Any]) -> dict[str, int]:
        return self.quantise({s: float(params.get(s, 0.0)) * MIB for s in self.names})

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": {s.site: list(s.levels) for s in self.sites},
            "inert": dict(self.inert),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchSpace:
        sites = tuple(SiteSpace(site, tuple(levels)) for site, levels in data["sites"].items())
        return cls(sites=sites, inert=dict(data["inert"]))


def static_space(setup: Setup) -> SearchSpace:
    """Sites that can matter on this setup by 0.23's code, before any profile is seen."""
    inert = target.inert_sites(setup)
    sites = []
    for site in target.SITES:
        if site in inert:
            continue
        low, high = target.effective_range(site, setup)
        if high <= 0:
            inert[site] = "The model has no weight for this site."
            continue
        sites.append(SiteSpace(site, site_levels(low, high)))
    return SearchSpace(sites=tuple(sites), inert=inert)


# ---------------------------------------------------------------------------------------------
# What a profile says


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
        return dict(measured)

    def to_y(v: float) -> float:
        return 1.0 / v if objective == "throughput" else v

    def from_y(y: float) -> float:
        return 1.0 / y if objective == "throughput" else y

    xs = [x for _, x, _ in pts]
    ys = [to_y(measured[n]) for n, _, _ in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    if len(pts) >= 3 and slope > 0:
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
    pooled: list[float] = []
    for _, _, r in pts:
        reps = r.throughputs if objective == "throughput" else r.tpots_ms
        ys_r = [to_y(v) for v in reps if v > 0]
        if len(ys_r) >= 2:
            pooled.append(statistics.variance(ys_r) / len(ys_r))
    if pooled and s2 > 0:
        keep = min(1.0, max(0.0, 1.0 - statistics.fmean(pooled) / s2))
    out = dict(measured)
    for (n, _, _), y, f in zip(pts, ys, fitted, strict=True):
        est = f + keep * (y - f)
        if est > 0:
            out[n] = from_y(est)
    return out


def lateness_by_site(result: OverlapResult) -> dict[str, float]:
    """Median lateness in µs per site with prefetches (> 0: the prefetch ends after its window)."""
    return {s.site: -s.slack_us_median for s in result.sites if s.count > 0}


# ---------------------------------------------------------------------------------------------
# Observers and options


class RunObserver(Protocol):
    """Receives progress; the terminal renderer implements it."""

    def phase(self, message: str) -> None: ...

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None: ...

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None: ...


class NullObserver:
    """Ignores progress."""

    def phase(self, message: str) -> None:
        pass

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None:
        pass

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        pass


@dataclass(frozen=True)
class SearchOptions:
    """How the study runs."""

    trials: int = 12  # measured trials in the study, probe and seed included
    timeout_s: float | None = None  # no new trial starts after this
    objective: str = "throughput"  # throughput | tpot
    late_tolerance_us: float = 2.0
    constraint: bool = True
    repeats: int = 1
    sampler: str = "guided"
    seed: int | None = 0
    keep_profiles: str = "best"
    extra: Mapping[str, Any] = field(default_factory=dict)  # other additional-config keys

    def check(self) -> None:
        if self.trials < 2:
            raise AutotuneError(
                f"--trials must be at least 2 (baseline and default), got {self.trials}"
            )
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise AutotuneError(f"--timeout must be positive, got {self.timeout_s}")
        if self.objective not in OBJECTIVES:
            raise AutotuneError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if not math.isfinite(self.late_tolerance_us) or self.late_tolerance_us < 0:
            raise AutotuneError("--late-tolerance-us must be a number >= 0")
        if self.repeats < 1:
            raise AutotuneError(f"--repeats must be at least 1, got {self.repeats}")
        if self.sampler not in SAMPLERS:
            raise AutotuneError(f"--sampler must be one of {', '.join(SAMPLERS)}")
        if self.keep_profiles not in KEEP_PROFILES:
            raise AutotuneError(f"--keep-profiles must be one of {', '.join(KEEP_PROFILES)}")


# ---------------------------------------------------------------------------------------------
# The guided sampler


@dataclass(frozen=True)
class _Point:
    key: tuple[int, ...]
    score: float  # estimated objective, higher is better whatever the direction
    feasible: bool
    fill: dict[str, int]
    lateness: dict[str, float]


def _record_of(t: FrozenTrial) -> TrialRecord:
    """The parts of a finished trial that `estimates` reads."""
    attrs = t.user_attrs
    return TrialRecord(
        number=t.number,
        role=str(attrs.get(ATTR_ROLE, "search")),
        state="complete",
        config={},
        effective_bytes={},
        objective=t.value,
        throughputs=[float(v) for v in attrs.get("throughputs", [])],
        tpots_ms=[float(v) for v in attrs.get("tpots_ms", [])],
        step_ms=attrs.get("step_ms"),
    )


def _points(study: Study, space: SearchSpace, objective: str) -> list[_Point]:
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and t.user_attrs.get("duplicate_of") is None
    ]
    est = estimates([_record_of(t) for t in done], objective)
    out: list[_Point] = []
    for t in done:
        eff = t.user_attrs.get("effective_bytes", {})
        out.append(
            _Point(
                key=space.key(eff),
                score=sign * est.get(t.number, float(t.value or 0.0)),
                feasible=all(v <= 0 for v in t.constraints.values()),
                fill={k: int(v) for k, v in t.user_attrs.get("fill_bytes", {}).items()},
                lateness={k: float(v) for k, v in t.user_attrs.get("lateness_us", {}).items()},
            )
        )
    return out


class GuidedSampler(BaseSampler):
    """Profile-guided local search over the byte ladders.

    From the best feasible trial so far (by `estimates`) it tries the point whose every site
    fills its window (from that trial's profile), then one ladder step per site (late sites down,
    the others up, then the other way), then each site off, then two steps; when that
    neighbourhood is exhausted it hands over to TPE (multivariate), steered to unmeasured points.
    """

    def __init__(self, seed: int | None = None, objective: str = "throughput") -> None:
        self.space: SearchSpace | None = None
        self.objective = objective
        self._fallback = TPESampler(seed=seed, n_startup_trials=0, multivariate=True)
        self._random = RandomSampler(seed=seed)
        self._rng = random.Random(seed)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()
        self._random.reseed_rng()
        self._rng.seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {} if self.space is None else self.space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self.space is None or not search_space or "fixed_params" in trial.system_attrs:
            return {}
        points = _points(study, self.space, self.objective)
        key = propose(points, self.space)
        if key is None:
            params = self._fallback.sample_relative(study, trial, search_space)
            key = self.space.key({s: float(v) * MIB for s, v in params.items()})
            tried = {p.key for p in points}
            if key in tried:
                # TPE came back to a point already measured: try an unmeasured one instead.
                key = _random_untried(self.space, tried, self._rng) or key
        return {s: b / MIB for s, b in self.space.bytes_of_key(key).items()}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


def _random_untried(
    space: SearchSpace, tried: set[tuple[int, ...]], rng: random.Random
) -> tuple[int, ...] | None:
    """A uniformly drawn ladder point not measured yet (None when every point is)."""
    if len(tried) >= space.size():
        return None
    for _ in range(1000):
        key = tuple(rng.randrange(len(s.levels)) for s in space.sites)
        if key not in tried:
            return key
    return next(
        (
            k
            for k in itertools.product(*[range(len(s.levels)) for s in space.sites])
            if k not in tried
        ),
        None,
    )


def propose(points: Sequence[_Point], space: SearchSpace) -> tuple[int, ...] | None:
    """The next untried ladder point, or None when the local neighbourhood is exhausted."""
    if not points:
        return None
    tried = {p.key for p in points}
    feasible = [p for p in points if p.feasible] or list(points)
    best = max(feasible, key=lambda p: p.score)
    current = space.bytes_of_key(best.key)
    candidates: list[tuple[int, ...]] = []

    # 1. Every site filling its window, as the incumbent's own profile measures it.
    if best.fill:
        candidates.append(space.key({s: best.fill.get(s, current[s]) for s in space.names}))

    order = sorted(
        range(len(space.sites)),
        key=lambda i: best.fill.get(space.sites[i].site, space.sites[i].high),
    )

    def moved(i: int, level: int) -> None:
        if 0 <= level < len(space.sites[i].levels) and level != best.key[i]:
            cand = list(best.key)
            cand[i] = level
            candidates.append(tuple(cand))

    # 2. One ladder step per site: the window-filling size is a little short of the best one
    #    when a late byte still pays, so sites grow first unless already late.
    #    Every site's preferred direction first, then the other one.
    for pass_ in (0, 1):
        for i in order:
            late = best.lateness.get(space.sites[i].site, 0.0) > 0
            direction = ((-1, 1) if late else (1, -1))[pass_]
            if best.key[i] + direction >= 1:
                moved(i, best.key[i] + direction)
    # 3. Each site off: a short window may not repay a prefetch's fixed cost. Smallest fill first.
    for i in order:
        moved(i, 0)
    # 4. Two ladder steps.
    for i in order:
        for direction in (1, -1):
            if best.key[i] + 2 * direction >= 1:
                moved(i, best.key[i] + 2 * direction)
    return next((c for c in candidates if c not in tried), None)


def make_sampler(name: str, seed: int | None, objective: str = "throughput") -> BaseSampler:
    """The sampler behind `--sampler`."""
    if name == "guided":
        return GuidedSampler(seed=seed, objective=objective)
    if name == "tpe":
        # Multivariate is the default for single-objective studies in Optuna 5; written out here.
        return TPESampler(seed=seed, multivariate=True, n_startup_trials=3)
    if name == "gp":
        # Optuna's GPSampler needs torch and scipy: the optional [gp] extra.
        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("scipy") is None:
            raise AutotuneError("--sampler gp needs torch and scipy: pip install 'autotune[gp]'")
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=3)
    return RandomSampler(seed=seed)


# ---------------------------------------------------------------------------------------------
# Storage


# Seconds to wait for a database server before giving up (a firewalled host would otherwise hang).
DB_CONNECT_TIMEOUT_S = 10


def shown_url(url: str) -> str:
    """The storage URL as messages and shared files show it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide that we could find
        return url


def open_study(
    storage_url: str,
    study_name: str,
    direction: StudyDirection,
    sampler: BaseSampler,
    *,
    resume: bool,
) -> tuple[Study, optuna.storages.RDBStorage]:
    """Create (or with `resume` load) the study; AutotuneError for any storage problem."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db_file = storage_url.removeprefix("sqlite:///") if storage_url.startswith("sqlite:///") else ""
    if resume and db_file and not Path(db_file).is_file():
        # Opening would create an empty database; there is nothing to continue.
        raise AutotuneError(f"--resume: no study named {study_name!r}: {db_file} does not exist")
    shown = shown_url(storage_url)
    engine_kwargs: dict[str, Any] = {}
    if storage_url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": DB_CONNECT_TIMEOUT_S}
    try:
        storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs)
    except Exception as exc:  # SQLAlchemy, driver and URL errors all mean "cannot use it"
        raise AutotuneError(f"cannot open --storage {shown}: {_first_line(exc)}") from None
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as exc:
        raise AutotuneError(f"cannot read --storage {shown}: {_first_line(exc)}") from None
    if resume:
        if study_name not in names:
            raise AutotuneError(
                f"--resume: no study named {study_name!r} in {shown}; nothing to continue"
            )
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
        if study.direction != direction:
            raise AutotuneError(
                f"--resume: study {study_name!r} optimises the other objective; "
                "pass the --objective it was started with"
            )
        return study, storage
    if study_name in names:
        raise AutotuneError(
            f"study {study_name!r} already exists in {shown}; pass --resume to continue it "
            "or choose another --study-name"
        )
    study = optuna.create_study(
        study_name=study_name, storage=storage, sampler=sampler, direction=direction
    )
    return study, storage


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# The tuner


@dataclass
class RunOutcome:
    """What a finished (or stopped) run produced."""

    records: list[TrialRecord]
    space: SearchSpace
    best: TrialRecord | None
    baseline: TrialRecord | None
    default: TrialRecord | None
    summary: dict[str, Any]
    stopped: str  # why the loop ended: trials | timeout | exhausted | no-active-sites


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _bench_floats(benches: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out: list[float] = []
    for bench in benches:
        value = bench.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


class Tuner:
    """Runs one study: probe, seed, search; writes the run directory as it goes."""

    def __init__(
        self,
        *,
        workload: Workload,
        backend: Backend,
        rundir: RunDir,
        options: SearchOptions,
        study_name: str,
        storage_url: str | None = None,
        resume: bool = False,
        observer: RunObserver | None = None,
    ) -> None:
        options.check()
        self.workload = workload
        self.backend = backend
        self.rundir = rundir
        self.options = options
        self.study_name = study_name
        self.storage_given = storage_url is not None
        self.storage_url = storage_url or rundir.default_storage_url()
        self.resume = resume
        self.observer: RunObserver = observer or NullObserver()
        self.setup = setup_of(workload)
        self.direction = OBJECTIVES[options.objective]
        self.sampler = make_sampler(options.sampler, options.seed, options.objective)
        self.space = static_space(self.setup)
        self.extra = dict(options.extra)
        self.records: dict[int, TrialRecord] = {}
        self._started = 0.0
        self.study: Study | None = None
        self._opened = False
        self.storage: optuna.storages.RDBStorage | None = None

    # -- public ------------------------------------------------------------------------------

    def open(self) -> Study:
        """Open the storage and the run directory; continue the study with --resume.

        Nothing is written before the storage opens, so a bad --storage leaves no trace.
        """
        if self.study is not None and self._opened:
            return self.study
        # Compiling the probe configs checks the extra keys before anything is written.
        target.disabled_config(self.extra)
        if self.resume:
            self.rundir.prepare(resume=True)
        elif self.storage_given:
            # A remote storage is checked before the run directory is created.
            self._open()
        if not self.resume:
            try:
                self.rundir.prepare(resume=False)
            except AutotuneError:
                self._drop_new_study()
                raise
        study = self.study or self._open()
        if self.resume:
            self._restore(study)
        else:
            study.set_user_attr(ATTR_WORKLOAD, asdict(self.workload))
            self.rundir.write_run(self._run_json())
        self._set_space(study)
        self._opened = True
        return study

    def run(self) -> RunOutcome:
        """Run (or continue) the study until --trials measured trials or --timeout."""
        study = self.open()
        self._started = time.monotonic()
        stopped = "trials"
        try:
            self._ensure_probe(study, "baseline", target.disabled_config(self.extra))
            self._ensure_probe(study, "default", target.vendor_default_config(self.extra))
            if ATTR_SPACE not in study.user_attrs:
                self._analyse_probe(study)
            self._set_space(study)
            stopped = self._search(study) if self.space.sites else "no-active-sites"
        finally:
            self._write_tables()
        return self._finish(stopped)

    def _open(self) -> Study:
        self.study, self.storage = open_study(
            self.storage_url, self.study_name, self.direction, self.sampler, resume=self.resume
        )
        return self.study

    def _drop_new_study(self) -> None:
        """Delete the study this run just created (still empty), so a failed start leaves its name
        free in a shared --storage; open_study refused any existing one, so it is ours."""
        if self.study is None or self.storage is None:
            return
        # The error being raised matters more; a left-over study only takes a name.
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=self.study_name, storage=self.storage)
        self.study = None
        self.storage = None

    def _run_json(self) -> dict[str, Any]:
        return {
            "workload": asdict(self.workload),
            "backend": self.backend.name,
            "simulated": self.backend.simulated,
            "vllm_ascend_version": self.backend.target_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "study_name": self.study_name,
            "storage": self.storage_url,
            "options": {
                k: (dict(v) if isinstance(v, Mapping) else v)
                for k, v in asdict(self.options).items()
            },
        }

    # -- phases ------------------------------------------------------------------------------

    def _set_space(self, study: Study) -> None:
        data = study.user_attrs.get(ATTR_SPACE)
        if data is not None:
            self.space = SearchSpace.from_json(data)
        if isinstance(self.sampler, GuidedSampler):
            self.sampler.space = self.space if data is not None else None

    def _trials(self, study: Study, *states: TrialState) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=states or None)

    def _has_role(self, study: Study, role: str, *states: TrialState) -> bool:
        return any(t.user_attrs.get(ATTR_ROLE) == role for t in self._trials(study, *states))

    def _ensure_probe(self, study: Study, role: str, config: dict[str, Any]) -> None:
        if self._has_role(study, role, TrialState.COMPLETE):
            return
        if not self._has_role(study, role, TrialState.WAITING):
            params = self.space.params_of(target.effective_bytes(config, self.setup))
            study.enqueue_trial(params, user_attrs={ATTR_ROLE: role})
        self._run_next(study, probe_config=config)

    def _analyse_probe(self, study: Study) -> None:
        default = next(
            t
            for t in self._trials(study, TrialState.COMPLETE)
            if t.user_attrs.get(ATTR_ROLE) == "default"
        )
        timings = {
            site: SiteTiming(**data) for site, data in default.user_attrs.get("timings", {}).items()
        }
        silent = profile_inert(timings, self.space)
        sites = tuple(s for s in self.space.sites if s.site not in silent)
        space = SearchSpace(sites=sites, inert={**self.space.inert, **silent})
        seed = space.quantise({s: timings[s].fill_bytes for s in space.names})
        study.set_user_attr(ATTR_SPACE, space.to_json())
        study.set_user_attr("seed_bytes", seed)
        self.space = space
        if space.sites:
            study.enqueue_trial(space.params_of(seed), user_attrs={ATTR_ROLE: "seed"})
        self.observer.phase(
            "active sites: "
            + (", ".join(space.names) or "none")
            + (f"; inert: {', '.join(sorted(space.inert))}" if space.inert else "")
        )

    @property
    def measured(self) -> int:
        """Trials measured so far (duplicates and failures not counted)."""
        return sum(1 for r in self.records.values() if r.state == "complete")

    def _search(self, study: Study) -> str:
        duplicates_in_a_row = 0
        failures_in_a_row = 0
        while self.measured < self.options.trials:
            if (
                self.options.timeout_s is not None
                and time.monotonic() - self._started >= self.options.timeout_s
            ):
                return "timeout"
            if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
                return "exhausted"
            seen = {self.space.key(r.effective_bytes) for r in self._complete()}
            if len(seen) >= self.space.size():
                return "exhausted"
            record = self._run_next(study, probe_config=None)
            duplicates_in_a_row = duplicates_in_a_row + 1 if record.state == "duplicate" else 0
            failures_in_a_row = failures_in_a_row + 1 if record.state == "failed" else 0
            if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise AutotuneError(
                    f"{failures_in_a_row} trials failed in a row (last: {record.error}); "
                    f"see {self.rundir.relative(self.rundir.trial_dir(record.number))}"
                )
        return "trials"

    # -- one trial ---------------------------------------------------------------------------

    def _complete(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.state in ("complete", "duplicate")]

    def _run_next(self, study: Study, *, probe_config: dict[str, Any] | None) -> TrialRecord:
        dists = self.space.distributions()
        trial = study.ask(fixed_distributions=dists)
        role = str(trial.user_attrs.get(ATTR_ROLE, "search"))
        if ATTR_ROLE not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROLE, role)
        if probe_config is not None:
            config = probe_config
        else:
            wanted = self.space.bytes_of_params(trial.params)
            # Inert sites are written explicitly as off, so every key is in the JSON.
            bytes_by_site = {site: 0 for site in target.SITES}
            bytes_by_site.update(wanted)
            config = target.compile_config(bytes_by_site, self.setup, self.extra)
        target.validate_config(config)
        eff = target.effective_bytes(config, self.setup)
        key = self.space.key(eff)
        record = TrialRecord(
            number=trial.number,
            role=role,
            state="running",
            config=config,
            effective_bytes=eff,
            retry_of=trial.user_attrs.get("retry_of"),
            simulated=self.backend.simulated,
        )
        trial.set_user_attr("effective_bytes", eff)
        trial.set_user_attr("config", config)
        self.rundir.write_trial_config(trial.number, config)

        earlier = self._same_as(key) if probe_config is None else None
        if earlier is not None:
            return self._tell_duplicate(study, trial, record, earlier)

        self.records[trial.number] = record
        self.rundir.write_trial(record)
        self.observer.trial_started(trial.number, role, eff)
        start = time.monotonic()
        try:
            result = self.backend.run(
                config,
                self.rundir.trial_dir(trial.number),
                repeats=self.options.repeats,
                profile=True,
            )
            self._measure(trial, record, result, config)
        except KeyboardInterrupt:
            record.state = "failed"
            record.error = "interrupted"
            record.duration_s = time.monotonic() - start
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            self.rundir.write_trial(record)
            raise
        except AutotuneError as exc:
            record.state = "failed"
            record.error = str(exc)
            record.duration_s = time.monotonic() - start
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            self.rundir.write_trial(record)
            if role in ("baseline", "default"):
                raise AutotuneError(f"the {role} trial failed: {exc}") from None
            self.observer.trial_finished(record, self.best())
            return record
        record.duration_s = time.monotonic() - start
        # The record goes to disk before the study hears of it: an interruption in between leaves a
        # RUNNING trial, which a resume fails and runs again.
        self.records[record.number] = record
        self.rundir.write_trial(record)
        self._tell(study, trial, record)
        self._after_trial(record)
        return record

    def _same_as(self, key: tuple[int, ...]) -> TrialRecord | None:
        for r in sorted(self.records.values(), key=lambda r: r.number):
            if r.state == "complete" and self.space.key(r.effective_bytes) == key:
                return r
        return None

    def _tell_duplicate(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, earlier: TrialRecord
    ) -> TrialRecord:
        for name in (
            "objective",
            "step_ms",
            "throughput",
            "throughputs",
            "tpot_ms",
            "tpots_ms",
            "feasible",
            "lateness_us",
            "late_sites",
            "sites",
        ):
            setattr(record, name, getattr(earlier, name))
        record.state = "duplicate"
        record.duplicate_of = earlier.number
        trial.set_user_attr("duplicate_of", earlier.number)
        self._set_constraints(trial, record)
        self.records[trial.number] = record
        self.rundir.write_trial(record)
        study.tell(trial, record.objective)
        self.observer.trial_finished(record, self.best())
        return record

    def _measure(
        self,
        trial: optuna.Trial,
        record: TrialRecord,
        result: TrialResult,
        config: Mapping[str, Any],
    ) -> None:
        record.throughputs = _bench_floats(result.benches, "output_throughput")
        record.tpots_ms = _bench_floats(result.benches, "median_tpot_ms")
        record.throughput = _median(record.throughputs)
        record.tpot_ms = _median(record.tpots_ms)
        record.objective = (
            record.throughput if self.options.objective == "throughput" else record.tpot_ms
        )
        if record.objective is None:
            key = (
                "output_throughput" if self.options.objective == "throughput" else "median_tpot_ms"
            )
            raise AutotuneError(f"trial {trial.number}: the bench result has no {key}")
        record.bench_files = [self.rundir.relative(p) for p in result.bench_paths]
        record.logs = [self.rundir.relative(p) for p in result.logs]
        record.simulated = result.simulated
        if result.profile_dir is not None:
            record.profile = self.rundir.relative(result.profile_dir)
            profiles = load_profiles(result.profile_dir)
            overlap = analyze(
                profiles, late_tolerance_ns=int(self.options.late_tolerance_us * 1000)
            )
            record.step_ms = profile_step_ms(profiles)
            trial.set_user_attr("step_ms", record.step_ms)
            record.sites = {s.site: _site_json(s) for s in overlap.sites}
            record.lateness_us = lateness_by_site(overlap)
            timings = site_timings(overlap, config, self.setup)
            trial.set_user_attr("timings", {s: asdict(t) for s, t in timings.items()})
            trial.set_user_attr("fill_bytes", {s: t.fill_bytes for s, t in timings.items()})
        trial.set_user_attr("lateness_us", record.lateness_us)
        tol = self.options.late_tolerance_us
        record.late_sites = sorted(s for s, v in record.lateness_us.items() if v > tol)
        record.feasible = not record.late_sites
        record.state = "complete"

    def _set_constraints(self, trial: optuna.Trial, record: TrialRecord) -> None:
        if not self.options.constraint:
            return
        tol = self.options.late_tolerance_us
        for site in self.space.names:
            trial.set_constraint(f"late:{site}", record.lateness_us.get(site, 0.0) - tol)

    def _tell(self, study: Study, trial: optuna.Trial, record: TrialRecord) -> None:
        self._set_constraints(trial, record)
        trial.set_user_attr("throughputs", record.throughputs)
        trial.set_user_attr("tpots_ms", record.tpots_ms)
        study.tell(trial, record.objective)

    def _after_trial(self, record: TrialRecord) -> None:
        self._prune_profiles()
        self._write_tables()
        self.observer.trial_finished(record, self.best())

    # -- bookkeeping -------------------------------------------------------------------------

    def _restore(self, study: Study) -> None:
        """Reload records; fail interrupted trials and queue them again so they are not lost."""
        self.records = {r.number: r for r in self.rundir.read_trials()}
        finished = {t.number for t in self._trials(study, TrialState.COMPLETE)}
        for record in self.records.values():
            # Only what the study recorded as finished counts; anything else runs again.
            if (
                record.state in ("complete", "duplicate", "running")
                and record.number not in finished
            ):
                record.state = "failed"
                record.error = record.error or "interrupted"
                self.rundir.write_trial(record)
        retried = {t.user_attrs.get("retry_of") for t in self._trials(study)}
        for t in self._trials(study, TrialState.RUNNING, TrialState.FAIL):
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
            elif not t.user_attrs.get("interrupted"):
                continue
            role = t.user_attrs.get(ATTR_ROLE, "search")
            if t.number in retried or role in ("baseline", "default"):
                continue  # probe trials are re-queued by their own phase
            study.enqueue_trial(dict(t.params), user_attrs={ATTR_ROLE: role, "retry_of": t.number})

    def best(self) -> TrialRecord | None:
        """The best measured trial: feasible first, then by estimated objective."""
        return best_record(list(self.records.values()), self.options.objective)

    def _role(self, role: str) -> TrialRecord | None:
        done = [r for r in self.records.values() if r.role == role and r.state == "complete"]
        return min(done, key=lambda r: r.number) if done else None

    def _prune_profiles(self, *, final: bool = False) -> None:
        keep = self.options.keep_profiles
        if keep == "all":
            return
        wanted: set[int] = set()
        if keep == "best":
            for r in (self._role("baseline"), self._role("default")):
                if r is not None:
                    wanted.add(r.number)
            # Estimates move as trials arrive, so the runners-up keep theirs until the end.
            best = self.best()
            sign = 1.0 if self.direction == StudyDirection.MAXIMIZE else -1.0
            ranked = sorted(
                (r for r in self.records.values() if r.estimate is not None),
                key=lambda r: -sign * (r.estimate or 0.0),
            )
            wanted.update(r.number for r in ranked[: 0 if final else PROFILES_KEPT_DURING_RUN])
            if best is not None:
                wanted.add(best.number)
        # The default trial's profile is read again only through its stored timings, so "none"
        # may drop it too.
        self.rundir.prune_profiles(sorted(self.records.values(), key=lambda r: r.number), wanted)

    def _ordered(self) -> list[TrialRecord]:
        return [self.records[n] for n in sorted(self.records)]

    def _write_tables(self) -> None:
        self.rundir.write_trials_csv(self._ordered(), target.SITES)
        summary = self._summary(finished=False, stopped="")
        self.rundir.write_summary(summary)
        best = self.best()
        if best is not None:
            self.rundir.write_best(best.config)

    def _finish(self, stopped: str) -> RunOutcome:
        self._prune_profiles(final=True)
        summary = self._summary(finished=True, stopped=stopped)
        self.rundir.write_summary(summary)
        best = self.best()
        if best is not None:
            self.rundir.write_best(best.config)
        return RunOutcome(
            records=self._ordered(),
            space=self.space,
            best=best,
            baseline=self._role("baseline"),
            default=self._role("default"),
            summary=summary,
            stopped=stopped,
        )

    def _summary(self, *, finished: bool, stopped: str) -> dict[str, Any]:
        return build_summary(
            records=self._ordered(),
            best=self.best(),
            baseline=self._role("baseline"),
            default=self._role("default"),
            space=self.space,
            workload=self.workload,
            backend=self.backend.name,
            simulated=self.backend.simulated,
            options=self.options,
            study_name=self.study_name,
            storage_url=self.storage_url,
            finished=finished,
            stopped=stopped,
            rundir=self.rundir,
        )


def best_record(records: Sequence[TrialRecord], objective: str) -> TrialRecord | None:
    """The feasible measured trial with the best estimate (`estimates`); updates every estimate."""
    est = estimates(records, objective)
    for r in records:
        r.estimate = est.get(r.number)
        if r.state == "duplicate" and r.duplicate_of is not None:
            r.estimate = est.get(r.duplicate_of)
    measured = [r for r in records if r.state == "complete" and r.estimate is not None]
    if not measured:
        return None
    pool = [r for r in measured if r.feasible is not False] or measured
    sign = 1.0 if OBJECTIVES[objective] == StudyDirection.MAXIMIZE else -1.0
    return max(pool, key=lambda r: (sign * (r.estimate or 0.0), -r.number))


def _site_json(summary: Any) -> dict[str, Any]:
    return {k: v for k, v in summary.__dict__.items() if k != "site"}


def gain(best: TrialRecord, ref: TrialRecord, objective: str) -> dict[str, float | None] | None:
    """Gain of `best` over `ref` in %: measured medians, the spread over repeats (low, high), and
    from the estimates (`estimated_pct`, None without them). Positive is better for both
    objectives (for TPOT: the share of TPOT saved)."""
    if objective == "throughput":
        b, r, mb, mr = best.throughputs, ref.throughputs, best.throughput, ref.throughput
    else:
        b, r, mb, mr = best.tpots_ms, ref.tpots_ms, best.tpot_ms, ref.tpot_ms
    if not b or not r or not mb or not mr:
        return None

    def rel(x: float, y: float) -> float:
        return 100.0 * (x / y - 1.0) if objective == "throughput" else 100.0 * (1.0 - x / y)

    est = None
    if best.estimate and ref.estimate:
        est = rel(best.estimate, ref.estimate)
    lows = (min(b), max(r)) if objective == "throughput" else (max(b), min(r))
    highs = (max(b), min(r)) if objective == "throughput" else (min(b), max(r))
    return {
        "pct": rel(mb, mr),
        "low_pct": rel(*lows),
        "high_pct": rel(*highs),
        "estimated_pct": est,
    }


def _trial_brief(r: TrialRecord | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {
        "trial": r.number,
        "role": r.role,
        "throughput": r.throughput,
        "throughputs": r.throughputs,
        "tpot_ms": r.tpot_ms,
        "estimate": r.estimate,
        "effective_mib": {s: round(v, 4) for s, v in r.effective_mib.items()},
        "late_sites": r.late_sites,
        "feasible": r.feasible,
    }


def build_summary(
    *,
    records: Sequence[TrialRecord],
    best: TrialRecord | None,
    baseline: TrialRecord | None,
    default: TrialRecord | None,
    space: SearchSpace,
    workload: Workload,
    backend: str,
    simulated: bool,
    options: SearchOptions,
    study_name: str,
    storage_url: str,
    finished: bool,
    stopped: str,
    rundir: RunDir,
) -> dict[str, Any]:
    """summary.json: what the run found, against what, and where it is."""
    best_brief = _trial_brief(best)
    if best_brief is not None and best is not None:
        best_brief["config"] = best.config
    return {
        "simulated": simulated,
        "note": "SIMULATED (modelled): numbers come from a model, not an NPU" if simulated else "",
        "backend": backend,
        "finished": finished,
        "stopped": stopped,
        "model": workload.model,
        "max_num_seqs": workload.max_num_seqs,
        "workload": dict(workload.__dict__),
        "objective": options.objective,
        "direction": OBJECTIVES[options.objective].name.lower(),
        "late_tolerance_us": options.late_tolerance_us,
        "constraint": options.constraint,
        "repeats": options.repeats,
        "sampler": options.sampler,
        "study": {"name": study_name, "storage": shown_url(storage_url)},
        "trials": {
            "measured": sum(1 for r in records if r.state == "complete"),
            "duplicates": sum(1 for r in records if r.state == "duplicate"),
            "failed": sum(1 for r in records if r.state == "failed"),
            "budget": options.trials,
        },
        "active_sites": list(space.names),
        "inert_sites": dict(sorted(space.inert.items())),
        "search_space": {s.site: [round(b / MIB, 4) for b in s.levels] for s in space.sites},
        "baseline": _trial_brief(baseline),
        "vendor_default": _trial_brief(default),
        "best": best_brief,
        "gain_over_baseline": gain(best, baseline, options.objective)
        if best and baseline
        else None,
        "gain_over_default": gain(best, default, options.objective) if best and default else None,
        "files": {
            "run_dir": str(rundir.path),
            "best_config": "best_config.json",
            "trials_csv": "trials.csv",
            "summary": "summary.json",
            "profiles": {str(r.number): r.profile for r in records if r.profile is not None},
        },
    }


def trial_dir_of(rundir: RunDir, number: int) -> Path:
    """Where trial `number` writes its files."""
    return rundir.trial_dir(number)
