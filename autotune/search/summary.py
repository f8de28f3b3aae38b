"""The best trial, gains over the reference trials, and the run summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from optuna.study import StudyDirection

from autotune.lateness import rule_text
from autotune.rundir import MIB, RunDir, TrialRecord
from autotune.search.measure import beyond_noise, estimates
from autotune.search.options import OBJECTIVES, SearchOptions
from autotune.search.space import SearchSpace
from autotune.search.storage import shown_url
from autotune.workloads.base import Workload

# Which rule picked the best trial (summary.json "picked_by").
RULE_BEST = "best estimated objective (no late site)"
RULE_LATE_FASTER = "late but faster beyond the noise of the estimates"
RULE_ON_TIME = "on-time trial kept: the faster late one is within the noise"
RULE_STRICT = "late sites infeasible (--late-is-infeasible)"


def pick_best(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> tuple[list[TrialRecord], str]:
    """Measured trials in pick order and the rule that put the first one first.

    By estimate (`estimates`), best first. Lateness guides, it does not veto: a late trial stays
    first only when it beats the best on-time trial beyond the noise (`beyond_noise`), else that
    on-time trial moves ahead of it; with `late_is_infeasible` on-time trials come first. Updates
    every trial's estimate.
    """
    est = estimates(records, objective)
    for r in records:
        r.estimate = est.get(r.number)
        if r.state == "duplicate" and r.duplicate_of is not None:
            r.estimate = est.get(r.duplicate_of)
    measured = [r for r in records if r.state == "complete" and r.estimate is not None]
    sign = 1.0 if OBJECTIVES[objective] == StudyDirection.MAXIMIZE else -1.0
    # Ties go to the earlier trial.
    ranked = sorted(measured, key=lambda r: (-sign * (r.estimate or 0.0), r.number))
    if not ranked:
        return ranked, ""
    if late_is_infeasible:
        return sorted(ranked, key=lambda r: r.feasible is False), RULE_STRICT
    first = ranked[0]
    if first.feasible is not False:
        return ranked, RULE_BEST
    rival = next((r for r in ranked if r.feasible is not False), None)
    if rival is None or beyond_noise(records, objective, first.number, rival.number):
        return ranked, RULE_LATE_FASTER
    return [rival, *(r for r in ranked if r is not rival)], RULE_ON_TIME


def ranked_records(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> list[TrialRecord]:
    """Measured trials in pick order (`pick_best`); updates every trial's estimate."""
    return pick_best(records, objective, late_is_infeasible=late_is_infeasible)[0]


def best_record(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> TrialRecord | None:
    """The best measured trial (`pick_best`); updates every estimate."""
    ranked = ranked_records(records, objective, late_is_infeasible=late_is_infeasible)
    return ranked[0] if ranked else None


def pick_rule(objective: str, late_tolerance_us: float, late_is_infeasible: bool = False) -> str:
    """How the best trial is chosen, in one line."""
    what = "throughput" if objective == "throughput" else "TPOT"
    high = "highest" if OBJECTIVES.get(objective) == StudyDirection.MAXIMIZE else "lowest"
    if late_is_infeasible:
        among = (
            f"among trials with no site late by more than {late_tolerance_us:g} µs (all trials "
            "if every one is late; --late-is-infeasible)"
        )
    else:
        among = (
            f"over all trials; one with a site late by more than {late_tolerance_us:g} µs wins "
            "only when it beats the best on-time trial beyond the noise of the estimates"
        )
    return (
        f"best = the {high} estimated {what} {among}; the estimate is the measured "
        f"{what} regressed on the profiled decode-step time over all trials, which evens out "
        "bench noise, so the best need not be the highest single measurement"
    )


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


def config_keys(config: Mapping[str, Any], notes: Mapping[str, str]) -> dict[str, str]:
    """Why each key of best_config.json is there (every key beside the prefetch ratios)."""
    out: dict[str, str] = {}
    wpc = config.get("weight_prefetch_config")
    if isinstance(wpc, Mapping):
        out["weight_prefetch_config"] = "the tuned prefetch"
        table = wpc.get("prefetch_ratio")
        for module, ratios in table.items() if isinstance(table, Mapping) else ():
            if isinstance(ratios, Mapping) and ratios and all(v == 0 for v in ratios.values()):
                out[f"weight_prefetch_config.prefetch_ratio.{module}"] = (
                    "all ratios 0: the module is off (0.23 turns a module off only when every "
                    "ratio is 0; one 0 beside non-zero ones means the whole weight). Written out "
                    "because a missing or empty module falls back to its default ratios"
                )
    for key in config:
        if key == "weight_prefetch_config":
            continue
        out[key] = notes.get(
            key, "from your --additional-config: every trial ran with it, so the tuning assumes it"
        )
    return out


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
    probe_note: str = "",
    added: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """summary.json: what the run found, against what, and where it is."""
    ranked, picked_by = pick_best(records, options.objective, late_is_infeasible=options.constraint)
    runner_up = next((r for r in ranked if best is None or r.number != best.number), None)
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
        "late_rule": rule_text(options.late_tolerance_us),
        "late_is_infeasible": options.constraint,
        "repeats": options.repeats,
        "sampler": options.sampler,
        "study": {"name": study_name, "storage": shown_url(storage_url)},
        "trials": {
            "measured": sum(1 for r in records if r.state == "complete"),
            "duplicates": sum(1 for r in records if r.state == "duplicate"),
            "failed": sum(1 for r in records if r.state == "failed"),
            "unprofiled": sum(1 for r in records if r.state == "complete" and r.unprofiled),
            "budget": options.trials,
        },
        "active_sites": list(space.names),
        "inert_sites": dict(sorted(space.inert.items())),
        "search_space": {s.site: [round(b / MIB, 4) for b in s.levels] for s in space.sites},
        "baseline": _trial_brief(baseline),
        "vendor_default": _trial_brief(default),
        "probe_note": probe_note,
        "sites_added_by_profile": dict(added or {}),
        "best": best_brief,
        "best_config_keys": config_keys(best.config, options.extra_notes) if best else {},
        "runner_up": _trial_brief(runner_up),
        "pick_rule": pick_rule(options.objective, options.late_tolerance_us, options.constraint),
        "picked_by": picked_by if best is not None else "",
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
