"""The search space: per active site, a short ladder of effective prefetch byte sizes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution

from autotune import target
from autotune.rundir import MIB
from autotune.target import Setup

# At most this many non-zero byte sizes per site: trials cost minutes, so the ladder is short.
MAX_LEVELS = 16
# Candidate ladder steps, in MiB: the smallest that keeps a site within MAX_LEVELS is used.
_STEPS_MIB: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16, 32, 64, 128)


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

    def filling(self, nbytes: float) -> int:
        """Index of the smallest level of at least `nbytes` (the top one if none is): the
        window-filling level, since a step short of the knee mostly costs more than one past it."""
        return next((i for i, b in enumerate(self.levels) if b >= nbytes), len(self.levels) - 1)

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
