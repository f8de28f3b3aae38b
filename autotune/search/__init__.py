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

Modules: `space` (the ladder of byte sizes), `measure` (what a trial's profile and bench say),
`sampler` (the guided walk), `storage` (opening the study), `tuner` (running trials), `summary`
(best trial, gains, summary.json), `options` (flags and the observer protocol).
"""

from autotune.search.measure import NO_CMO_REASON, SiteTiming, estimates, profile_inert
from autotune.search.options import (
    KEEP_PROFILES,
    OBJECTIVES,
    SAMPLERS,
    NullObserver,
    RunObserver,
    SearchOptions,
)
from autotune.search.sampler import propose
from autotune.search.space import SearchSpace, SiteSpace, site_levels, static_space
from autotune.search.storage import open_study, shown_url
from autotune.search.summary import best_record, build_summary, gain, pick_rule, ranked_records
from autotune.search.tuner import RunOutcome, Tuner

__all__ = [
    "KEEP_PROFILES",
    "NO_CMO_REASON",
    "OBJECTIVES",
    "SAMPLERS",
    "NullObserver",
    "RunObserver",
    "RunOutcome",
    "SearchOptions",
    "SearchSpace",
    "SiteSpace",
    "SiteTiming",
    "Tuner",
    "best_record",
    "build_summary",
    "estimates",
    "gain",
    "open_study",
    "pick_rule",
    "profile_inert",
    "propose",
    "ranked_records",
    "shown_url",
    "site_levels",
    "static_space",
]
