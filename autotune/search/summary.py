"""The best trial, gains over the reference trials, and the run summary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.study import StudyDirection

from autotune.lateness import rule_text
from autotune.rundir import MIB, RunDir, TrialRecord
from autotune.search.estimate import Estimates, Noise, Z, bench_warnings, estimate
from autotune.search.options import OBJECTIVES, SearchOptions
from autotune.search.space import SearchSpace
from autotune.search.storage import shown_url
from autotune.workloads.base import Workload

# Which rule picked the best trial (summary.json "picked_by").
RULE_BEST = "best estimated objective (no late site)"
RULE_LATE_FASTER = "late but faster beyond the noise of the estimates"
RULE_ON_TIME = "on-time trial kept: the faster late one is within the noise"
RULE_ON_TIME_BLIND = "on-time trial kept: the benches are too short to tell the late one apart"
RULE_STRICT = "late sites infeasible (--late-is-infeasible)"


@dataclass
class Pick:
    """Measured trials in pick order, the rule that put the first one first, and the estimates
    (with their noise) the order comes from."""

    ranked: list[TrialRecord]
    rule: str
    est: Estimates


def pick(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> Pick:
    """Rank the measured trials and update every trial's estimate.

    By estimate (`estimate.estimate`), best first. Lateness guides, it does not veto: a late trial
    stays first only when it beats the best on-time trial beyond the noise (`Estimates.beyond`),
    else that on-time trial moves ahead of it; with `late_is_infeasible` on-time trials come
    first. Confirmations are not ranked: their runs count for the trial they measure again.
    """
    est = estimate(records, objective)
    values = est.values()
    for r in records:
        r.estimate = values.get(r.number)
        if r.state == "duplicate" and r.duplicate_of is not None:
            r.estimate = values.get(r.duplicate_of)
    measured = [r for r in records if r.number in values and r.state == "complete"]
    sign = 1.0 if OBJECTIVES[objective] == StudyDirection.MAXIMIZE else -1.0
    # Ties go to the earlier trial.
    ranked = sorted(measured, key=lambda r: (-sign * (r.estimate or 0.0), r.number))
    if not ranked:
        return Pick(ranked, "", est)
    if late_is_infeasible:
        return Pick(sorted(ranked, key=lambda r: r.feasible is False), RULE_STRICT, est)
    first = ranked[0]
    if first.feasible is not False:
        return Pick(ranked, RULE_BEST, est)
    rival = next((r for r in ranked if r.feasible is not False), None)
    if rival is None or est.beyond(first.number, rival.number):
        return Pick(ranked, RULE_LATE_FASTER, est)
    rule = RULE_ON_TIME_BLIND if est.blind else RULE_ON_TIME
    return Pick([rival, *(r for r in ranked if r is not rival)], rule, est)


def pick_best(
    records: Sequence[TrialRecord], objective: str, *, late_is_infeasible: bool = False
) -> tuple[list[TrialRecord], str]:
    """Measured trials in pick order and the rule that put the first one first (`pick`)."""
    chosen = pick(records, objective, late_is_infeasible=late_is_infeasible)
    return chosen.ranked, chosen.rule


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


def pick_rule(
    objective: str,
    late_tolerance_us: float,
    late_is_infeasible: bool = False,
    noise: Noise | None = None,
) -> str:
    """How the best trial is chosen, in one line; with `noise`, the noise the estimates used."""
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
    if noise is not None and noise.fit == "none":
        how = (
            f"the estimate is each trial's measured {what} pulled towards the mean of all trials "
            "by its own noise (no trial was profiled)"
        )
    else:
        how = (
            f"the estimate weighs each trial's measured {what} against the fit of the measured "
            f"{what} on the profiled decode-step time over all trials, each by its noise"
        )
    rule = f"best = the {high} estimated {what} {among}; {how}, so the best need not be the "
    rule += "highest single measurement"
    return rule if noise is None else f"{rule}; {noise.text()}"


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


# Confirmation rounds past which settling a margin is not worth proposing.
MAX_SETTLE_ROUNDS = 20


def confidence(
    chosen: Pick,
    best: TrialRecord | None,
    default: TrialRecord | None,
    *,
    repeats: int,
    resume: str,
    confirmation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json "confidence": the winner's margin over the runner-up and over the vendor
    default as an estimate with an interval, whether each is beyond the noise, the noise used,
    what the run's benches cannot carry, and the command that would settle an open margin
    (`resume`: the command that continues the run)."""
    est = chosen.est
    runner = next((r for r in chosen.ranked if best is None or r.number != best.number), None)
    out: dict[str, Any] = {
        "winner_vs_runner_up": None,
        "winner_vs_default": None,
        "interval": f"±{Z:g} standard errors, about 95 %",
        "noise": est.noise.to_json() if est.noise is not None else None,
        "verdict": [],
        "warnings": bench_warnings(est),
        "settle": "",
        "confirmation": dict(confirmation) if confirmation else None,
    }
    if best is None:
        return out
    verdict: list[str] = []
    needed: list[int] = []
    for key, label, other in (
        ("winner_vs_runner_up", "the runner-up", runner),
        ("winner_vs_default", "the vendor default", default),
    ):
        if other is None:
            continue
        if other.number == best.number:
            verdict.append(f"the winner is {label}")
            continue
        margin = est.margin(best.number, other.number)
        if margin is None:
            continue
        out[key] = margin.to_json()
        span = f"{margin.estimate_pct:+.2f} % ({margin.low_pct:+.2f} … {margin.high_pct:+.2f} %)"
        if est.blind:
            verdict.append(
                f"trial {best.number} against {label}, trial {other.number}: {span}, on benches "
                "too short to carry it: no verdict"
            )
            continue
        if margin.distinguishable:
            verdict.append(f"trial {best.number} against {label}, trial {other.number}: {span}")
            continue
        verdict.append(
            f"trial {best.number} and {label}, trial {other.number}, are indistinguishable at "
            f"this noise: {span}"
        )
        runs = est.runs_needed(best.number, other.number)
        if runs is not None:
            needed.append(runs - min(est.runs.get(best.number, 1), est.runs.get(other.number, 1)))
    out["verdict"] = verdict
    done = int((confirmation or {}).get("rounds", 0))
    if est.blind and verdict:
        out["settle"] = (
            "the benches are too short to tell anything apart and one run a config shows no "
            f"spread: lengthen them (more prompts, a longer --output-len), or measure the spread "
            f"with {resume} --confirm {done + 1} (or --repeats 3 in a new run)"
        )
        return out
    if needed:
        more = max(needed)
        # --confirm is the run's total of rounds: the ones already measured count.
        rounds = done + math.ceil(more / max(1, repeats))
        if rounds - done <= MAX_SETTLE_ROUNDS:
            out["settle"] = (
                f"about {more} more bench run{'' if more == 1 else 's'} of each would settle it: "
                f"{resume} --confirm {rounds} (or more --repeats in a new run)"
            )
        else:
            out["settle"] = (
                f"settling it would take more than {MAX_SETTLE_ROUNDS} more confirmation rounds: "
                "at this noise the difference is too small to matter"
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
    confirmation: Mapping[str, Any] | None = None,
    added: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """summary.json: what the run found, against what, how sure, and where it is."""
    chosen = pick(records, options.objective, late_is_infeasible=options.constraint)
    ranked, picked_by = chosen.ranked, chosen.rule
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
            "measured": sum(1 for r in records if r.searched),
            "confirmations": sum(
                1 for r in records if r.state == "complete" and r.confirms is not None
            ),
            "duplicates": sum(1 for r in records if r.state == "duplicate"),
            "failed": sum(1 for r in records if r.state == "failed"),
            "unprofiled": sum(1 for r in records if r.searched and r.unprofiled),
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
        "pick_rule": pick_rule(
            options.objective, options.late_tolerance_us, options.constraint, chosen.est.noise
        ),
        "picked_by": picked_by if best is not None else "",
        "gain_over_baseline": gain(best, baseline, options.objective)
        if best and baseline
        else None,
        "gain_over_default": gain(best, default, options.objective) if best and default else None,
        "confidence": confidence(
            chosen,
            best,
            default,
            repeats=options.repeats,
            resume=rundir.resume_command(),
            confirmation=confirmation,
        ),
        "files": {
            "run_dir": str(rundir.path),
            "best_config": "best_config.json",
            "trials_csv": "trials.csv",
            "summary": "summary.json",
            "profiles": {str(r.number): r.profile for r in records if r.profile is not None},
        },
    }
