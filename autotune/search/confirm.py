"""The confirmation phase: the winner, the runner-up and the vendor default measured again,
interleaved, until the winner beats both beyond the noise or the rounds (`--confirm N`) run out.

A round measures each of them once more (`--repeats` bench runs, no profile), in an order that
rotates from round to round, so drift over the phase hits all three alike. Each measurement is a
trial of the study (role "confirm"; attributes `confirms`, the trial it measures again, and
`confirm_round`), recorded like any other (trial.json, trials.csv, the study) but not counted in
`--trials`; its runs join those of the trial it measures again (`estimate.bench_runs`), so the
pick after the phase uses them. The winner and runner-up of each round are those of the
estimates after the previous one. A resumed run continues the phase where its records leave it.

Several workers on one study: each takes part once its search is over and no search trial is
running or queued anywhere. A round's measurements are queued in the study and run by whichever
worker takes them; a worker that finds one missing (its trial failed) queues it again, up to
`MAX_FAILURES` times; when two workers queued the same one at once, the later trial is not run
(the lifecycle fails it as superseded). A worker waits while a round's trials run elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from autotune.rundir import TrialRecord
from autotune.search.context import RunContext, trials_of
from autotune.search.heartbeat import fail_stale
from autotune.search.options import (
    ATTR_CONFIRMS,
    ATTR_ROLE,
    ATTR_ROUND,
    ROLE_CONFIRM,
    SearchOptions,
)
from autotune.search.summary import Pick, pick
from autotune.search.workers import POLL_S

if TYPE_CHECKING:
    from autotune.search.ledger import Ledger

# A trial whose measurement fails this many times in one round is left out of that round.
MAX_FAILURES = 2

# Runs the next queued trial of the study (the lifecycle's `run_next`).
RunNext = Callable[[Study, dict[str, Any] | None], TrialRecord]


def subjects(chosen: Pick, default: TrialRecord | None) -> list[int]:
    """What a round measures again: the winner, the runner-up and the vendor default."""
    if not chosen.ranked:
        return []
    out = [r.number for r in chosen.ranked[:2]]
    if default is not None and default.number not in out and default.number in chosen.est.y:
        out.append(default.number)
    return out


def settled(chosen: Pick, default: TrialRecord | None) -> bool:
    """Whether the winner beats the runner-up and the vendor default beyond the noise."""
    found = subjects(chosen, default)
    return all(chosen.est.beyond(found[0], other) for other in found[1:])


@dataclass(frozen=True)
class Status:
    """Where the confirmation phase stands, as the summary states it."""

    budget: int  # rounds allowed (--confirm)
    rounds: int  # rounds measured
    measurements: int  # confirmation trials that measured
    settled: bool

    def text(self) -> str:
        if self.budget == 0 and self.rounds == 0:
            return "no confirmation phase (--confirm 0)"
        rounds = f"{self.rounds} of {self.budget} confirmation round" + (
            "" if self.budget == 1 else "s"
        )
        if self.settled:
            return (
                f"{rounds}: the winner beats the runner-up and the vendor default beyond the noise"
            )
        if self.rounds < self.budget:
            return f"{rounds} run so far"
        return f"{rounds}: the winner could not be separated from the others at this noise"

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_rounds": self.budget,
            "rounds": self.rounds,
            "measurements": self.measurements,
            "settled": self.settled,
            "text": self.text(),
        }


def status(
    records: Sequence[TrialRecord], budget: int, chosen: Pick, default: TrialRecord | None
) -> Status:
    done = [r for r in records if r.confirms is not None and r.state == "complete"]
    rounds = {r.confirm_round for r in done if r.confirm_round is not None}
    return Status(
        budget=budget,
        rounds=len(rounds),
        measurements=len(done),
        settled=bool(chosen.ranked) and settled(chosen, default),
    )


def confirmation_json(
    records: Sequence[TrialRecord], options: SearchOptions, default: TrialRecord | None
) -> dict[str, Any] | None:
    """summary.json's account of the confirmation phase (None when the run has none)."""
    if not options.confirm and not any(r.confirms is not None for r in records):
        return None
    chosen = pick(records, options.objective, late_is_infeasible=options.constraint)
    return status(records, options.confirm, chosen, default).to_json()


def _rounds(trials: Sequence[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    out: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        if t.user_attrs.get(ATTR_ROLE) == ROLE_CONFIRM and isinstance(
            t.user_attrs.get(ATTR_ROUND), int
        ):
            out.setdefault(int(t.user_attrs[ATTR_ROUND]), []).append(t)
    return out


def _missing(trials: Sequence[FrozenTrial]) -> list[int]:
    """Trials a round measures again that have neither a measurement nor a pending trial, and
    have not failed `MAX_FAILURES` times."""
    out: list[int] = []
    members = dict.fromkeys(int(t.user_attrs[ATTR_CONFIRMS]) for t in trials)
    for n in members:
        mine = [t for t in trials if t.user_attrs.get(ATTR_CONFIRMS) == n]
        if any(t.state != TrialState.FAIL for t in mine):
            continue
        failed = [t for t in mine if not t.user_attrs.get("superseded")]
        if len(failed) < MAX_FAILURES:
            out.append(n)
    return out


def _search_busy(study: Study) -> bool:
    """A search trial (not a confirmation) is running or queued somewhere in the study."""
    return any(
        t.user_attrs.get(ATTR_ROLE) != ROLE_CONFIRM
        for t in trials_of(study, TrialState.RUNNING, TrialState.WAITING)
    )


def queue(ctx: RunContext, study: Study, subject: TrialRecord, round_: int) -> None:
    params = ctx.space.params_of(subject.effective_bytes)
    attrs = {ATTR_ROLE: ROLE_CONFIRM, ATTR_CONFIRMS: subject.number, ATTR_ROUND: round_}
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


def run_confirmation(ctx: RunContext, study: Study, run_next: RunNext, ledger: Ledger) -> Status:
    """Confirmation rounds until the winner is settled or `--confirm` rounds are measured."""
    options = ctx.options
    while True:
        if ctx.shared and _search_busy(study):
            # The pick is not final while search trials run; a queued one (a retry) is run here.
            if trials_of(study, TrialState.WAITING):
                run_next(study, None)
            else:
                fail_stale(study)
                time.sleep(POLL_S)
            continue
        rounds = _rounds(trials_of(study))
        done = 0
        if rounds:
            current = max(rounds)
            mine = rounds[current]
            by_number = {r.number: r for r in ledger.all_records(study)}
            for n in _missing(mine):
                if n in by_number:
                    queue(ctx, study, by_number[n], current)
            if any(t.state == TrialState.WAITING for t in trials_of(study)):
                run_next(study, None)
                continue
            if any(t.state == TrialState.RUNNING for t in trials_of(study)):
                fail_stale(study)
                time.sleep(POLL_S)
                continue
            done = current + 1
        all_records = ledger.all_records(study)
        default = ledger.role("default", all_records)
        chosen = pick(all_records, options.objective, late_is_infeasible=options.constraint)
        if settled(chosen, default) or done >= options.confirm:
            return status(all_records, options.confirm, chosen, default)
        found = subjects(chosen, default)
        if len(found) < 2:
            return status(all_records, options.confirm, chosen, default)
        shift = done % len(found)
        order = found[shift:] + found[:shift]
        by_number = {r.number: r for r in all_records}
        ctx.observer.phase(
            f"confirmation round {done + 1} of {options.confirm}: measuring trials "
            + ", ".join(str(n) for n in order)
            + " again (winner, runner-up, vendor default; interleaved)"
        )
        for n in order:
            queue(ctx, study, by_number[n], done)
