"""The guided sampler: a walk over the effective-bytes ladder around the best trial."""

from __future__ import annotations

import importlib.util
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import AutotuneError
from autotune.rundir import MIB, TrialRecord
from autotune.search.measure import estimates
from autotune.search.options import ATTR_ROLE
from autotune.search.space import SearchSpace


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
        busy = _running_keys(study, self.space, trial.number)
        key = propose(points, self.space, busy)
        if key is None:
            params = self._fallback.sample_relative(study, trial, search_space)
            key = self.space.key({s: float(v) * MIB for s, v in params.items()})
            tried = {p.key for p in points} | busy
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


def _running_keys(study: Study, space: SearchSpace, number: int) -> set[tuple[int, ...]]:
    """Points other workers of a shared study are measuring right now."""
    return {
        space.key(t.user_attrs["effective_bytes"])
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.number != number and "effective_bytes" in t.user_attrs
    }


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


def propose(
    points: Sequence[_Point], space: SearchSpace, busy: set[tuple[int, ...]] | None = None
) -> tuple[int, ...] | None:
    """The next untried ladder point (not `busy` elsewhere), or None when the local
    neighbourhood is exhausted."""
    if not points:
        return None
    tried = {p.key for p in points} | (busy or set())
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
