"""This worker's trial records and the files that sum them up: reloading them on --resume, the
study-wide view a shared study adds, the best trial, profiles kept or pruned, trials.csv,
summary.json and best_config.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.study import Study, StudyDirection
from optuna.trial import TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.rundir import TrialRecord
from autotune.search.confirm import confirmation_json
from autotune.search.context import RunContext, trials_of
from autotune.search.observed import ATTR_ADDED
from autotune.search.options import ATTR_ROLE, ROLE_CONFIRM
from autotune.search.probe import PROBE_ROLES
from autotune.search.storage import shown_url
from autotune.search.summary import best_record, build_summary
from autotune.search.workers import ATTR_EFFECTIVE, study_records

# With --keep-profiles best, the profiles of this many top trials stay until the run ends.
PROFILES_KEPT_DURING_RUN = 3


class Ledger:
    """The records of the trials this worker ran (by number), and what is written from them."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.records: dict[int, TrialRecord] = {}

    @property
    def measured(self) -> int:
        """Trials measured so far (duplicates, failures and confirmations not counted)."""
        return sum(1 for r in self.records.values() if r.searched)

    def keep(self, record: TrialRecord) -> None:
        """Hold `record` as this worker's and write its trial.json."""
        self.records[record.number] = record
        self.ctx.rundir.write_trial(record)

    def ordered(self) -> list[TrialRecord]:
        return [self.records[n] for n in sorted(self.records)]

    def all_records(self, study: Study | None = None) -> list[TrialRecord]:
        """This worker's records, and with a shared study every other worker's finished ones."""
        study = study or self.ctx.study
        if not self.ctx.shared or study is None:
            return self.ordered()
        return study_records(trials_of(study), self.records)

    def complete(self, study: Study | None = None) -> list[TrialRecord]:
        records = self.all_records(study) if study is not None else list(self.records.values())
        return [r for r in records if r.state in ("complete", "duplicate")]

    def best(self, records: Sequence[TrialRecord] | None = None) -> TrialRecord | None:
        """The best measured trial of the whole study, by the pick rule (`pick_best`)."""
        pool = list(records) if records is not None else self.all_records()
        options = self.ctx.options
        return best_record(pool, options.objective, late_is_infeasible=options.constraint)

    def role(self, role: str, records: Sequence[TrialRecord] | None = None) -> TrialRecord | None:
        """The first complete trial of `role` (baseline, default)."""
        pool = records if records is not None else self.all_records()
        done = [r for r in pool if r.role == role and r.state == "complete"]
        return min(done, key=lambda r: r.number) if done else None

    # -- after each trial and at the end ------------------------------------------------------

    def after_trial(self, record: TrialRecord) -> None:
        """A trial was told to the study: prune profiles, rewrite the tables, show it."""
        self.prune_profiles()
        self.write_tables()
        self.ctx.observer.trial_finished(record, self.best())

    def prune_profiles(self, *, final: bool = False) -> None:
        keep = self.ctx.options.keep_profiles
        if keep == "all":
            return
        wanted: set[int] = set()
        if keep == "best":
            records = self.all_records()
            for r in (self.role("baseline", records), self.role("default", records)):
                if r is not None:
                    wanted.add(r.number)
            # Estimates move as trials arrive, so the runners-up keep theirs until the end.
            best = self.best(records)
            sign = 1.0 if self.ctx.direction == StudyDirection.MAXIMIZE else -1.0
            ranked = sorted(
                (r for r in records if r.estimate is not None),
                key=lambda r: -sign * (r.estimate or 0.0),
            )
            wanted.update(r.number for r in ranked[: 0 if final else PROFILES_KEPT_DURING_RUN])
            if best is not None:
                wanted.add(best.number)
        # The default trial's profile is read again only through its stored timings, so "none"
        # may drop it too.
        self.ctx.rundir.prune_profiles(self.ordered(), wanted)

    def write_tables(self, stopped: str = "") -> None:
        records = self.all_records()
        self.ctx.rundir.write_trials_csv(
            records, target.SITES, late_tolerance_us=self.ctx.options.late_tolerance_us
        )
        self.write_outputs(records, finished=False, stopped=stopped)

    def write_outputs(
        self, records: Sequence[TrialRecord], *, finished: bool, stopped: str
    ) -> tuple[dict[str, Any], TrialRecord | None]:
        """summary.json and best_config.json for `records`; the summary and the best trial."""
        best = self.best(records)
        summary = self.summary(finished=finished, stopped=stopped, records=records, best=best)
        self.ctx.rundir.write_summary(summary)
        if best is not None:
            self.ctx.rundir.write_best(best.config)
        return summary, best

    def summary(
        self,
        *,
        finished: bool,
        stopped: str,
        records: Sequence[TrialRecord],
        best: TrialRecord | None,
    ) -> dict[str, Any]:
        ctx = self.ctx
        return build_summary(
            confirmation=confirmation_json(records, ctx.options, self.role("default", records)),
            records=records,
            best=best,
            baseline=self.role("baseline", records),
            default=self.role("default", records),
            space=ctx.space,
            workload=ctx.workload,
            backend=ctx.backend.name,
            simulated=ctx.backend.simulated,
            options=ctx.options,
            study_name=ctx.study_name,
            storage_url=ctx.recorded_storage,
            finished=finished,
            stopped=stopped,
            rundir=ctx.rundir,
            probe_note=str(ctx.study.user_attrs.get("probe_note", "")) if ctx.study else "",
            added=ctx.study.user_attrs.get(ATTR_ADDED, {}) if ctx.study else {},
        )

    # -- --resume -----------------------------------------------------------------------------

    def restore(self, study: Study) -> None:
        """Reload records; fail interrupted trials and queue them again so they are not lost."""
        self.records = {r.number: r for r in self.ctx.rundir.read_trials()}
        self.check_study_matches(study)
        finished = {t.number for t in trials_of(study, TrialState.COMPLETE)}
        for record in self.records.values():
            # Only what the study recorded as finished counts; anything else runs again.
            if (
                record.state in ("complete", "duplicate", "running")
                and record.number not in finished
            ):
                record.state = "failed"
                record.error = record.error or "interrupted"
                self.ctx.rundir.write_trial(record)
        retried = {t.user_attrs.get("retry_of") for t in trials_of(study)}
        for t in trials_of(study, TrialState.RUNNING, TrialState.FAIL):
            if self.ctx.shared and t.number not in self.records:
                continue  # another worker's trial: its heartbeat decides whether it is dead
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
            elif not t.user_attrs.get("interrupted"):
                continue
            role = t.user_attrs.get(ATTR_ROLE, "search")
            if t.number in retried or (role in PROBE_ROLES and not self.ctx.shared):
                continue  # a lone run re-queues its probe trials in their own phase
            if role == ROLE_CONFIRM:
                continue  # the confirmation phase queues its measurements again, in its round
            study.enqueue_trial(dict(t.params), user_attrs={ATTR_ROLE: role, "retry_of": t.number})

    def check_study_matches(self, study: Study) -> None:
        """Refuse a study that is not this run directory's: its trials and trials/ must agree,
        or a resume would number, skip or mix up trials."""
        ctx = self.ctx
        in_study = {t.number: t for t in trials_of(study)}
        problems: list[str] = []
        for number, record in sorted(self.records.items()):
            trial = in_study.get(number)
            if trial is None:
                problems.append(f"trials/{number:03d} is not in the study")
            elif (
                trial.user_attrs.get(ATTR_EFFECTIVE, record.effective_bytes)
                != (record.effective_bytes)
                or trial.user_attrs.get(ATTR_ROLE, record.role) != record.role
            ):
                problems.append(f"trial {number} differs between the study and trials/")
        if not ctx.storage_given:
            # The run's own study holds only this directory's trials (a shared --storage may
            # also hold other runs').
            problems += [
                f"trial {n} is in the study but not in trials/"
                for n, t in sorted(in_study.items())
                if t.state == TrialState.COMPLETE and n not in self.records
            ]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise AutotuneError(
                f"--resume: study {ctx.study_name!r} in {shown_url(ctx.storage_url)} does not "
                f"match {ctx.rundir.path}: {problems[0]}{more}; resume the run directory this "
                "study belongs to"
            )
