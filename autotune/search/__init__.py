"""The search: probe, profile-guided seed, then an Optuna 5 study over effective prefetch bytes.

Order of trials in a study:

0. baseline — prefetch off (`enabled: false`), every other key as in the trials;
1. default — 0.23's default ratios; its profile tells which sites really issue CMO tasks (the others
   are inert here and leave the space) and how long each site's window is and how fast its CMO runs;
2. seed — per active site, off, the bytes that fill its window at the measured CMO bandwidth, or
   the default's bytes, whichever the two probes' profiles say is fastest (`guide.seed_site`);
3. … search trials: profile-guided candidates (`guide.candidates`) enqueued first, then the
   sampler's proposals, each compiled with `target.compile_config`.

The search space is, per active site, a short ladder of effective byte sizes (0 = off, then even
steps up to the whole weight or the 18 MiB mlp cap). Two trials that compile to the same effective
bytes are the same trial: the second one is not run; it takes the first one's result and is marked.
Lateness per site is reported with every trial and guides the moves; it is an Optuna constraint
(`trial.set_constraint`, feasible iff ≤ 0) only with `--late-is-infeasible`.

Nothing here prints: progress goes to a `RunObserver`.

Modules: `space` (the ladder of byte sizes), `measure` (what a trial's profile and bench say),
`guide` (the profile-guided seed and candidates), `sampler` (Optuna's samplers behind them),
`storage` (opening the study), `summary` (best trial and the rule that picked it, gains,
summary.json), `options` (flags and the observer protocol). Running a study: `tuner` (the Tuner:
opening, the study loop), `probe` (baseline, default, seed), `lifecycle` (one trial, from the
study to its record, whatever stops it), `readout` (a finished trial's bench and profile),
`ledger` (this worker's records and the files summing them up), `workers` (several workers on
one study), `heartbeat` (heartbeats and the stale sweep), `context` (what every part reads).
"""

from autotune.search.estimate import estimates
from autotune.search.guide import candidates, seed_site
from autotune.search.measure import NO_CMO_REASON, SiteTiming, profile_inert
from autotune.search.options import (
    KEEP_PROFILES,
    OBJECTIVES,
    SAMPLERS,
    NullObserver,
    RunObserver,
    SearchOptions,
)
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
    "candidates",
    "estimates",
    "gain",
    "open_study",
    "pick_rule",
    "profile_inert",
    "ranked_records",
    "seed_site",
    "shown_url",
    "site_levels",
    "static_space",
]
