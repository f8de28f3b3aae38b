"""The probe and the seed: the baseline (prefetch off) and vendor-default trials, and what the
default trial's profile says — which sites really issue CMO tasks (the search space) and the
profile-guided seed queued next.

A lone run runs the two probe trials itself; on a shared study the creator queued them once and
whichever workers take them run them, while the others wait for the space.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from optuna.study import Study
from optuna.trial import TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.rundir import TrialRecord
from autotune.search.context import RunContext, trials_of
from autotune.search.guide import seed_bytes
from autotune.search.heartbeat import fail_stale
from autotune.search.measure import SiteTiming
from autotune.search.observed import ATTR_ADDED, profile_space
from autotune.search.options import ATTR_ROLE, ATTR_SPACE
from autotune.search.workers import POLL_S, is_measured

PROBE_ROLES = ("baseline", "default")
# Polls a worker waits for another worker's next step in the probe (analysing the default trial,
# queueing a failed probe trial again) before doing it itself or giving up.
ANALYSE_WAIT_POLLS = 20

# Runs the next trial of the study (a queued one first); with a config, that config as it is.
RunNext = Callable[[Study, dict[str, Any] | None], TrialRecord]


def probe_config(role: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The additional-config of a probe trial: prefetch off, or 0.23's defaults."""
    if role == "baseline":
        return target.disabled_config(extra)
    return target.vendor_default_config(extra)


def queue_probe_trial(ctx: RunContext, study: Study, role: str) -> None:
    config = probe_config(role, ctx.extra)
    params = ctx.space.params_of(target.effective_bytes(config, ctx.setup))
    study.enqueue_trial(params, user_attrs={ATTR_ROLE: role})


def run_probe(ctx: RunContext, study: Study, run_next: RunNext) -> None:
    """Run the probe until the study holds the search space (the default trial analysed)."""
    if ctx.shared:
        _shared_probe(ctx, study, run_next)
        return
    for role in PROBE_ROLES:
        _ensure_probe(ctx, study, role, run_next)
    if ATTR_SPACE not in study.user_attrs:
        analyse_probe(ctx, study)


def _has_role(study: Study, role: str, *states: TrialState) -> bool:
    return any(t.user_attrs.get(ATTR_ROLE) == role for t in trials_of(study, *states))


def _ensure_probe(ctx: RunContext, study: Study, role: str, run_next: RunNext) -> None:
    if _has_role(study, role, TrialState.COMPLETE):
        return
    if not _has_role(study, role, TrialState.WAITING):
        queue_probe_trial(ctx, study, role)
    run_next(study, probe_config(role, ctx.extra))


def _shared_probe(ctx: RunContext, study: Study, run_next: RunNext) -> None:
    """Run queued trials until some worker has analysed the default trial: the creator queued
    the probe once, so each probe trial runs on whichever worker takes it first."""
    complete_polls = missing_polls = 0
    while ATTR_SPACE not in study.user_attrs:
        trials = trials_of(study)
        if any(t.state == TrialState.WAITING for t in trials):
            record = run_next(study, None)
            if (
                record.role == "default"
                and record.state == "complete"
                and ATTR_SPACE not in study.user_attrs
            ):
                analyse_probe(ctx, study)
            continue
        done = {str(t.user_attrs.get(ATTR_ROLE)) for t in trials if is_measured(t)}
        busy = {str(t.user_attrs.get(ATTR_ROLE)) for t in trials if t.state == TrialState.RUNNING}
        if "default" in done:
            # Its worker analyses it right after; if that worker died in between, we do.
            complete_polls += 1
            if complete_polls >= ANALYSE_WAIT_POLLS:
                analyse_probe(ctx, study)
                continue
        missing = [r for r in PROBE_ROLES if r not in done and r not in busy]
        # A failed probe trial is queued again right after it fails: give that a moment.
        missing_polls = missing_polls + 1 if missing else 0
        if missing_polls >= ANALYSE_WAIT_POLLS:
            failed = [
                t
                for t in trials
                if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_ROLE) in missing
            ]
            why = failed[-1].user_attrs.get("error", "failed") if failed else "not queued"
            raise AutotuneError(
                f"the {missing[0]} trial of study {ctx.study_name!r} did not finish "
                f"({why}); start a fresh study"
            )
        fail_stale(study)
        time.sleep(POLL_S)


def analyse_probe(ctx: RunContext, study: Study) -> None:
    """From the default trial's profile: the active sites (the space) and the seed, queued."""
    done = trials_of(study, TrialState.COMPLETE)
    default = next(t for t in done if t.user_attrs.get(ATTR_ROLE) == "default")
    baseline = next((t for t in done if t.user_attrs.get(ATTR_ROLE) == "baseline"), None)
    unprofiled = default.user_attrs.get("unprofiled")
    if unprofiled:
        _static_probe(ctx, study, str(unprofiled))
        return
    timings = {
        site: SiteTiming(**data) for site, data in default.user_attrs.get("timings", {}).items()
    }
    profiled = profile_space(ctx.space, timings, ctx.setup)
    space = profiled.space
    if profiled.added:
        study.set_user_attr(ATTR_ADDED, profiled.added)
        study.set_user_attr("probe_note", "; ".join(profiled.added.values()))
        ctx.observer.phase("note: " + "; ".join(profiled.added.values()))
    wanted, reasons = seed_bytes(
        space,
        timings,
        baseline.user_attrs if baseline is not None else {},
        default.user_attrs,
        late_is_infeasible=ctx.options.constraint,
    )
    seed = space.quantise(wanted)
    study.set_user_attr(ATTR_SPACE, space.to_json())
    study.set_user_attr("seed_bytes", seed)
    study.set_user_attr("seed_reasons", reasons)
    ctx.space = space
    if space.sites and ctx.options.seed_trial:
        study.enqueue_trial(space.params_of(seed), user_attrs={ATTR_ROLE: "seed"})
    ctx.observer.phase(
        "active sites: "
        + (", ".join(space.names) or "none")
        + (f"; inert: {', '.join(sorted(space.inert))}" if space.inert else "")
    )


def _static_probe(ctx: RunContext, study: Study, reason: str) -> None:
    """Without the default trial's profile, the active sites are those of the target's
    static rules and there is no profile-guided seed; the run says so."""
    note = (
        f"the default trial was not profiled ({reason}); active sites follow the static "
        "rules of vllm-ascend 0.23 and there is no profile-guided seed"
    )
    # The space is the marker other workers wait for, so it is written last.
    study.set_user_attr("probe_note", note)
    study.set_user_attr(ATTR_SPACE, ctx.space.to_json())
    ctx.observer.phase(note)
    ctx.observer.phase("active sites: " + (", ".join(ctx.space.names) or "none"))
