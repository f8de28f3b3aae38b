"""The profile has the last word: the active sites after the vendor-default trial's profile.

0.23's rules (`autotune.target`) say which sites fire on a setup; on an unknown real system they
are a model and the profile is the truth. The default trial's profile removes a site the rules
call active when it shows no CMO task there, and adds one the rules call inert when it shows
CMO tasks there, with a note saying the rule disagreed (kept in summary.json so it can be
reported). An added site fires in the target's arithmetic from then on (`Setup.observed`), so its
effective bytes, configs and window timings count it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from autotune import target
from autotune.search.measure import SiteTiming, profile_inert
from autotune.search.space import SearchSpace, SiteSpace, site_levels
from autotune.target import Setup

# summary.json / study attribute holding the sites the profile added -> the note.
ATTR_ADDED = "sites_added_by_profile"


@dataclass(frozen=True)
class ProfiledSpace:
    """The search space after the default trial's profile, and what it changed."""

    space: SearchSpace
    removed: dict[str, str]  # site the rules call active but that issued no CMO -> reason
    added: dict[str, str]  # site the rules call inert but that issued CMOs -> note


def fired(timings: Mapping[str, SiteTiming]) -> set[str]:
    """Sites with CMO prefetches in a trial's profile."""
    return {site for site, t in timings.items() if t.prefetches > 0}


def observed_setup(setup: Setup, sites: Iterable[str]) -> Setup:
    """`setup` with those of `sites` the rules call inert (and that have a weight) marked as
    seen firing: the target then lets them fire."""
    inert = target.inert_sites(replace(setup, observed=()))
    wholes = target.site_weight_bytes(setup)
    seen = {*setup.observed, *(s for s in sites if s in inert and wholes.get(s, 0) > 0)}
    if seen == set(setup.observed):
        return setup
    return replace(setup, observed=tuple(s for s in target.SITES if s in seen))


def space_setup(setup: Setup, space: SearchSpace) -> Setup:
    """The setup a search space implies: its sites the rules call inert were seen firing."""
    return observed_setup(setup, space.names)


def _note(site: str, count: int, rule: str) -> str:
    return (
        f"the default trial's profile shows {count} CMO prefetches at {site}, but vllm-ascend "
        f"0.23's rules call it inert here ({rule}); it is searched, as the profile says. If "
        "this server runs a stock vllm-ascend 0.23.x, please report it (summary.json → "
        f"{ATTR_ADDED})"
    )


def profile_space(
    static: SearchSpace, timings: Mapping[str, SiteTiming], setup: Setup
) -> ProfiledSpace:
    """The space the default trial's profile gives: `static` without the sites that issued no
    CMO task, plus the sites the rules call inert that did, each with its ladder."""
    removed = profile_inert(timings, static)
    seen = observed_setup(setup, fired(timings))
    added: dict[str, str] = {}
    sites: list[SiteSpace] = []
    for site in target.SITES:
        if site in static.names and site not in removed:
            sites.append(static.site(site))
        elif site in seen.observed and site not in setup.observed and site in static.inert:
            low, high = target.effective_range(site, seen)
            if high <= 0:
                continue
            added[site] = _note(site, timings[site].prefetches, static.inert[site])
            sites.append(SiteSpace(site, site_levels(low, high)))
    inert = {s: r for s, r in {**static.inert, **removed}.items() if s not in added}
    return ProfiledSpace(SearchSpace(sites=tuple(sites), inert=inert), removed, added)
