"""The best trial, gains over the reference trials, and the run summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.study import StudyDirection

from autotune.rundir import MIB, RunDir, TrialRecord
from autotune.search.measure import beyond_noise, estimates
from autotune.search.options import OBJECTIVES, SearchOptions
from autotune.search.space import SearchSpace
from autotune.search.storage import shown_url
from autotune.workloads.base import Workload

# Which rule picked the best trial (summary.json "pick_rule").
RULE_BEST = "best estimated objective (no late site)"
RULE_LATE_FASTER = "late but faster beyond the noise of the estimates"
RULE_ON_TIME = "on-time trial kept: the faster late one is within the noise"
RULE_STRICT = "late sites infeasible (--late-is-infeasible)"


def pick_best(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> tuple[TrialRecord | None, str]:
    """The best measured trial by its estimate (`estimates`) and the rule that picked it.

    Lateness guides, it does not veto: a late trial wins only when it beats the best on-time
    trial beyond the noise (`beyond_noise`); with `late_is_infeasible` only on-time trials count
    (when there is one). Updates every record's estimate.
    """
    est = estimates(records, objective)
    for r in records:
        r.estimate = est.get(r.number)
        if r.state == "duplicate" and r.duplicate_of is not None:
            r.estimate = est.get(r.duplicate_of)
    measured = [r for r in records if r.state == "complete" and r.estimate is not None]
    if not measured:
        return None, ""
    sign = 1.0 if OBJECTIVES[objective] == StudyDirection.MAXIMIZE else -1.0

    def top(pool: Sequence[TrialRecord]) -> TrialRecord:
        return max(pool, key=lambda r: (sign * (r.estimate or 0.0), -r.number))

    on_time = [r for r in measured if r.feasible is not False]
    if late_is_infeasible:
        return top(on_time or measured), RULE_STRICT
    best = top(measured)
    if best.feasible is not False:
        return best, RULE_BEST
    if not on_time:
        return best, RULE_LATE_FASTER
    rival = top(on_time)
    if beyond_noise(records, objective, best.number, rival.number):
        return best, RULE_LATE_FASTER
    return rival, RULE_ON_TIME


def best_record(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> TrialRecord | None:
    """The best measured trial (`pick_best`); updates every estimate."""
    return pick_best(records, objective, late_is_infeasible=late_is_infeasible)[0]


def site_json(summary: Any) -> dict[str, Any]:
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
    rule = pick_best(records, options.objective, late_is_infeasible=options.constraint)[1]
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
        "late_is_infeasible": options.constraint,
        "pick_rule": rule if best is not None else "",
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
