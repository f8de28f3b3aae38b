"""The Tuner: opens the study and the run directory, runs the probe, then the search loop until
the budget, the timeout or the space runs out, and returns what the run produced.

Its parts: `probe` (baseline, default and the seed), `lifecycle` (one trial from the study to
its record), `readout` (what a trial measured), `ledger` (records and the files summing them up),
`workers` and `heartbeat` (several workers on one study), `context` (what they all read).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.trial import TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.rundir import RunDir, TrialRecord
from autotune.search.confirm import run_confirmation
from autotune.search.context import RunContext, trials_of
from autotune.search.ledger import Ledger
from autotune.search.lifecycle import TrialRunner
from autotune.search.observed import space_setup
from autotune.search.options import (
    ATTR_ROLE,
    ATTR_SPACE,
    ATTR_WORKLOAD,
    NullObserver,
    RunObserver,
    SearchOptions,
)
from autotune.search.probe import PROBE_ROLES, queue_probe_trial, run_probe
from autotune.search.sampler import GuidedSampler, make_sampler
from autotune.search.space import SearchSpace
from autotune.search.storage import open_study
from autotune.search.workers import ATTR_RUN, HOST, POLL_S, join_study, study_budget
from autotune.workloads.base import Backend, Workload, setup_of

# Stop proposing after this many consecutive duplicates: the sampler has nothing new to offer.
MAX_CONSECUTIVE_DUPLICATES = 40
# Abort the run after this many consecutive failed search trials.
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class RunOutcome:
    """What a finished (or stopped) run produced."""

    records: list[TrialRecord]
    space: SearchSpace
    best: TrialRecord | None
    baseline: TrialRecord | None
    default: TrialRecord | None
    summary: dict[str, Any]
    stopped: str  # why the loop ended: trials | timeout | exhausted | no-active-sites


class Tuner:
    """Runs one study: probe, seed, search; writes the run directory as it goes."""

    def __init__(
        self,
        *,
        workload: Workload,
        backend: Backend,
        rundir: RunDir,
        options: SearchOptions,
        study_name: str,
        storage_url: str | None = None,
        resume: bool = False,
        observer: RunObserver | None = None,
        shared: bool = False,
        heartbeat_s: int | None = None,
    ) -> None:
        options.check()
        self.ctx = RunContext(
            workload=workload,
            backend=backend,
            rundir=rundir,
            options=options,
            study_name=study_name,
            storage_url=storage_url or rundir.default_storage_url(),
            storage_given=storage_url is not None,
            shared=shared,
            observer=observer or NullObserver(),
            sampler=make_sampler(
                options.sampler, options.seed, options.objective, options.constraint
            ),
        )
        self.resume = resume
        self.heartbeat_s = heartbeat_s if shared else None
        self.ledger = Ledger(self.ctx)
        self.trials = TrialRunner(self.ctx, self.ledger)
        self.created = False
        self._opened = False
        self._started = 0.0

    # -- what callers read --------------------------------------------------------------------

    @property
    def observer(self) -> RunObserver:
        return self.ctx.observer

    @observer.setter
    def observer(self, observer: RunObserver) -> None:
        self.ctx.observer = observer

    @property
    def records(self) -> dict[int, TrialRecord]:
        """This worker's trial records, by number."""
        return self.ledger.records

    @property
    def space(self) -> SearchSpace:
        return self.ctx.space

    @property
    def study(self) -> Study | None:
        return self.ctx.study

    @property
    def storage(self) -> BaseStorage | None:
        return self.ctx.storage

    @property
    def measured(self) -> int:
        """Trials measured so far (duplicates and failures not counted)."""
        return self.ledger.measured

    def best(self, records: Sequence[TrialRecord] | None = None) -> TrialRecord | None:
        """The best measured trial of the whole study, by the pick rule (`pick_best`)."""
        return self.ledger.best(records)

    # -- opening ------------------------------------------------------------------------------

    def open(self) -> Study:
        """Open the storage and the run directory; continue the study with --resume.

        Nothing is written before the storage opens, so a bad --storage leaves no trace.
        """
        ctx = self.ctx
        if ctx.study is not None and self._opened:
            return ctx.study
        # Compiling the probe configs checks the extra keys before anything is written.
        target.disabled_config(ctx.extra)
        if self.resume:
            ctx.rundir.prepare(resume=True)
        elif ctx.storage_given:
            # A remote storage is checked before the run directory is created.
            joined = self._open()
            if ctx.shared:
                self._start_shared(joined)
        if not self.resume:
            try:
                ctx.rundir.prepare(resume=False)
            except AutotuneError:
                self._drop_new_study()
                raise
        study = ctx.study or self._open()
        if self.resume:
            self.ledger.restore(study)
        else:
            if not ctx.shared:
                study.set_user_attr(ATTR_WORKLOAD, asdict(ctx.workload))
            ctx.rundir.write_run(self._run_json())
        self._set_space(study)
        self._opened = True
        return study

    def _open(self) -> Study:
        ctx = self.ctx
        handle = open_study(
            ctx.storage_url,
            ctx.study_name,
            ctx.direction,
            ctx.sampler,
            resume=self.resume,
            join=ctx.shared,
            heartbeat_s=self.heartbeat_s,
        )
        ctx.study, ctx.storage, self.created = handle.study, handle.storage, handle.created
        return handle.study

    def _start_shared(self, study: Study) -> None:
        """The creator records the workload and queues the probe once for every worker; a worker
        that joins checks that it runs the same workload and backend."""
        ctx = self.ctx
        if not self.created:
            join_study(study, ctx.study_name, ctx.workload, ctx.backend.name)
            return
        study.set_user_attr(ATTR_WORKLOAD, asdict(ctx.workload))
        for role in PROBE_ROLES:
            queue_probe_trial(ctx, study, role)
        # Written last: a joining worker waits for it, and then finds the probe queued.
        shown = {k: v for k, v in self._run_json().items() if k != "storage"}
        study.set_user_attr(ATTR_RUN, shown)

    def _drop_new_study(self) -> None:
        """Delete the study this run just created (still empty), so a failed start leaves its name
        free in a shared --storage; open_study refused any existing one, so it is ours."""
        ctx = self.ctx
        if ctx.study is None or ctx.storage is None or not self.created:
            return
        # The error being raised matters more; a left-over study only takes a name.
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=ctx.study_name, storage=ctx.storage)
        ctx.study = None
        ctx.storage = None

    def _run_json(self) -> dict[str, Any]:
        ctx = self.ctx
        return {
            "workload": asdict(ctx.workload),
            "backend": ctx.backend.name,
            "simulated": ctx.backend.simulated,
            "vllm_ascend_version": ctx.backend.target_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "study_name": ctx.study_name,
            "storage": ctx.recorded_storage,
            "shared": ctx.shared,
            "host": HOST,
            "options": {
                k: (dict(v) if isinstance(v, Mapping) else v)
                for k, v in asdict(ctx.options).items()
            },
        }

    @property
    def recorded_storage(self) -> str:
        """The storage as run.json and summary.json name it (`RunContext.recorded_storage`)."""
        return self.ctx.recorded_storage

    # -- the study loop -----------------------------------------------------------------------

    def run(self) -> RunOutcome:
        """Run (or continue) the study until --trials measured trials or --timeout."""
        study = self.open()
        self._started = time.monotonic()
        stopped = "trials"
        try:
            run_probe(self.ctx, study, self.trials.run_next)
            self._set_space(study)
            stopped = self._search(study) if self.ctx.space.sites else "no-active-sites"
            if stopped != "timeout" and self.ctx.options.confirm:
                run_confirmation(self.ctx, study, self.trials.run_next, self.ledger)
        except KeyboardInterrupt:
            stopped = "interrupted"
            raise
        finally:
            # What was measured stays readable; the summary says why the run has not finished.
            self.ledger.write_tables(stopped="" if stopped == "trials" else stopped)
        return self._finish(stopped)

    def _set_space(self, study: Study) -> None:
        data = study.user_attrs.get(ATTR_SPACE)
        if data is not None:
            self.ctx.space = SearchSpace.from_json(data)
        # Sites the default trial's profile added fire in the target's arithmetic from now on.
        self.ctx.setup = space_setup(setup_of(self.ctx.workload), self.ctx.space)
        if isinstance(self.ctx.sampler, GuidedSampler):
            self.ctx.sampler.space = self.ctx.space if data is not None else None

    def _budget(self, study: Study) -> tuple[int, int, bool]:
        """Measured trials of the study, trials running elsewhere, and whether any is queued.

        --trials is the study's budget: with several workers each starts a trial only while the
        measured and the running trials leave room for it.
        """
        if not self.ctx.shared:
            return self.ledger.measured, 0, False
        return study_budget(study)

    def _search(self, study: Study) -> str:
        options = self.ctx.options
        duplicates_in_a_row = 0
        failures_in_a_row = 0
        while True:
            measured, running, waiting = self._budget(study)
            if measured >= options.trials:
                return "trials"
            elapsed = time.monotonic() - self._started
            if options.timeout_s is not None and elapsed >= options.timeout_s:
                return "timeout"
            if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
                return "exhausted"
            space = self.ctx.space
            seen = {space.key(r.effective_bytes) for r in self.ledger.complete(study)}
            if len(seen) >= space.size():
                return "exhausted"
            if not waiting and measured + running >= options.trials:
                # The budget is taken by trials running elsewhere; one of them may die and come
                # back queued (`_budget` fails stale trials), so wait rather than stop.
                time.sleep(POLL_S)
                continue
            self._enqueue_guided(study)
            record = self.trials.run_next(study)
            duplicates_in_a_row = duplicates_in_a_row + 1 if record.state == "duplicate" else 0
            failures_in_a_row = failures_in_a_row + 1 if record.state == "failed" else 0
            if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                rundir = self.ctx.rundir
                raise AutotuneError(
                    f"{failures_in_a_row} trials failed in a row (last: {record.error}); "
                    f"see {rundir.relative(rundir.trial_dir(record.number))}"
                )

    def _enqueue_guided(self, study: Study) -> None:
        """Queue the guide's next candidate unless a trial is already waiting."""
        sampler = self.ctx.sampler
        if not isinstance(sampler, GuidedSampler) or trials_of(study, TrialState.WAITING):
            return
        params = sampler.guided_params(study)
        if params is not None:
            study.enqueue_trial(params, user_attrs={ATTR_ROLE: "guided"})

    def _finish(self, stopped: str) -> RunOutcome:
        self.ledger.prune_profiles(final=True)
        records = self.ledger.all_records()
        summary, best = self.ledger.write_outputs(records, finished=True, stopped=stopped)
        return RunOutcome(
            records=records,
            space=self.ctx.space,
            best=best,
            baseline=self.ledger.role("baseline", records),
            default=self.ledger.role("default", records),
            summary=summary,
            stopped=stopped,
        )
