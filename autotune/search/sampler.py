"""Samplers: Optuna's over the effective-bytes space, with profile-guided candidates in front."""

from __future__ import annotations

import importlib.util
import itertools
import random
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autotune.errors import AutotuneError
from autotune.rundir import MIB
from autotune.search.guide import Observation, candidates
from autotune.search.space import SearchSpace

# Trial attributes the guide reads.
ATTR_SEGMENTS = "segments"
ATTR_LATE = "late_sites"


def observations(study: Study, space: SearchSpace) -> list[Observation]:
    """Every measured (not duplicate) trial with its per-site segment totals."""
    out: list[Observation] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("duplicate_of") is not None:
            continue
        segs = t.user_attrs.get(ATTR_SEGMENTS) or {}
        out.append(
            Observation(
                key=space.key(t.user_attrs.get("effective_bytes", {})),
                segments={s: float(v[0]) for s, v in segs.items()},
                late=frozenset(t.user_attrs.get(ATTR_LATE, [])),
            )
        )
    return out


def _fill_bytes(study: Study) -> dict[str, float]:
    """Window-filling bytes per site, as the vendor-default trial's profile measured them (one
    trial's figures, so the level they point at does not drift with each new trial)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("role") == "default":
            return {s: float(b) for s, b in t.user_attrs.get("fill_bytes", {}).items()}
    return {}


class GuidedSampler(BaseSampler):
    """Optuna's TPE (or GP) over the byte ladders, behind the profile-guided candidates.

    The Tuner asks `guided_params` before each search trial and enqueues the answer; when the
    guide has nothing untried to offer, the inner sampler proposes, steered to unmeasured points.
    """

    def __init__(
        self,
        seed: int | None = None,
        objective: str = "throughput",
        inner: BaseSampler | None = None,
        late_is_infeasible: bool = False,
    ) -> None:
        self.space: SearchSpace | None = None
        self.objective = objective
        self.late_is_infeasible = late_is_infeasible
        self._inner = inner or TPESampler(seed=seed, n_startup_trials=0, multivariate=True)
        self._random = RandomSampler(seed=seed)
        self._rng = random.Random(seed)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
        self._random.reseed_rng()
        self._rng.seed()

    def guided_params(self, study: Study) -> dict[str, float] | None:
        """The next profile-guided candidate (effective MiB per site), or None."""
        if self.space is None or not self.space.sites:
            return None
        found = candidates(
            observations(study, self.space),
            self.space,
            fill=_fill_bytes(study),
            late_is_infeasible=self.late_is_infeasible,
        )
        # Not a point another worker of a shared study is measuring right now.
        busy = _running_keys(study, self.space, -1)
        found = [k for k in found if k not in busy]
        if not found:
            return None
        return {s: b / MIB for s, b in self.space.bytes_of_key(found[0]).items()}

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {} if self.space is None else self.space.distributions()

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self.space is None or not search_space or "fixed_params" in trial.system_attrs:
            return {}
        params = self._inner.sample_relative(study, trial, search_space)
        if set(params) != set(self.space.names):
            params = {
                s: self._inner.sample_independent(study, trial, s, d)
                for s, d in search_space.items()
            }
        key = self.space.key({s: float(v) * MIB for s, v in params.items()})
        tried = {o.key for o in observations(study, self.space)}
        tried |= _running_keys(study, self.space, trial.number)
        if key in tried:
            # The inner sampler came back to a point measured (or being measured elsewhere):
            # try an unmeasured one instead.
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


def _gp(seed: int | None, startup: int) -> BaseSampler:
    # Optuna's GPSampler needs torch and scipy: the optional [gp] extra.
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("scipy") is None:
        raise AutotuneError("--sampler gp needs torch and scipy: pip install 'autotune[gp]'")
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)


def make_sampler(
    name: str, seed: int | None, objective: str = "throughput", late_is_infeasible: bool = False
) -> BaseSampler:
    """The sampler behind `--sampler`."""
    if name == "guided":
        return GuidedSampler(seed=seed, objective=objective, late_is_infeasible=late_is_infeasible)
    if name == "tpe":
        # Multivariate is the default for single-objective studies in Optuna 5; written out here.
        return TPESampler(seed=seed, multivariate=True, n_startup_trials=3)
    if name == "gp":
        return _gp(seed, 3)
    return RandomSampler(seed=seed)
