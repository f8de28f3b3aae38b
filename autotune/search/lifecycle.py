"""The trial lifecycle: take the study's next trial, compile its config, answer it from a twin or
run it on the backend, read what it measured, and tell the study — or fail it.

Every trial this worker takes from the study ends here, told or failed, whatever stops it.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.rundir import TrialRecord
from autotune.search.context import RunContext, trials_of
from autotune.search.heartbeat import heartbeat
from autotune.search.ledger import Ledger
from autotune.search.options import ATTR_ROLE
from autotune.search.probe import PROBE_ROLES, probe_config
from autotune.search.readout import read_result
from autotune.search.workers import (
    ATTR_DUPLICATE_OF,
    ATTR_EFFECTIVE,
    ATTR_HOST,
    ATTR_RECORD,
    ATTR_WORKER,
    HOST,
    measured_twin,
    quiet_ask,
    retried_number,
    worker_id,
)

# A duplicate takes these measured fields from the trial it repeats.
_TAKEN_FROM_TWIN = (
    "objective",
    "step_ms",
    "throughput",
    "throughputs",
    "tpot_ms",
    "tpots_ms",
    "feasible",
    "lateness_us",
    "late_sites",
    "sites",
)


class TrialRunner:
    """Runs the study's trials one at a time for this worker."""

    def __init__(self, ctx: RunContext, ledger: Ledger) -> None:
        self.ctx = ctx
        self.ledger = ledger

    def run_next(self, study: Study, probe_config: dict[str, Any] | None = None) -> TrialRecord:
        """Take the next trial (a queued one first) and run it; with `probe_config`, run that
        config as it is. A failed probe trial raises AutotuneError, a failed search trial is
        returned failed."""
        trial = quiet_ask(study, self.ctx.space.distributions())
        with heartbeat(self.ctx.storage if self.ctx.shared else None, study, trial.number):
            return self._run(study, trial, probe_config)

    def _config(
        self, trial: optuna.Trial, role: str, probe: dict[str, Any] | None
    ) -> dict[str, Any]:
        if probe is None and role in PROBE_ROLES:
            probe = probe_config(role, self.ctx.extra)
        if probe is not None:
            return probe
        wanted = self.ctx.space.bytes_of_params(trial.params)
        # Inert sites are written explicitly as off, so every key is in the JSON.
        bytes_by_site = {site: 0 for site in target.SITES}
        bytes_by_site.update(wanted)
        return target.compile_config(bytes_by_site, self.ctx.setup, self.ctx.extra)

    def _start(
        self, study: Study, trial: optuna.Trial, role: str, config: dict[str, Any]
    ) -> TrialRecord:
        """Record who runs the trial and with what, in the study and in its folder."""
        eff = target.effective_bytes(config, self.ctx.setup)
        # First: other workers look at the bytes of running trials to avoid measuring them twice.
        trial.set_user_attr(ATTR_EFFECTIVE, eff)
        if ATTR_ROLE not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROLE, role)
        # A retry of a dead worker's trial inherits its attributes: this worker takes over.
        trial.set_user_attr(ATTR_HOST, HOST)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        retry_of = trial.user_attrs.get("retry_of")
        if self.ctx.shared and retry_of is None:
            frozen = next((t for t in trials_of(study) if t.number == trial.number), None)
            retry_of = retried_number(frozen) if frozen is not None else None
            if retry_of is not None:
                trial.set_user_attr("retry_of", retry_of)
        record = TrialRecord(
            number=trial.number,
            role=role,
            state="running",
            config=config,
            effective_bytes=eff,
            retry_of=retry_of,
            simulated=self.ctx.backend.simulated,
            host=HOST,
        )
        trial.set_user_attr("config", config)
        self.ctx.rundir.write_trial_config(trial.number, config)
        return record

    def _run(self, study: Study, trial: optuna.Trial, probe: dict[str, Any] | None) -> TrialRecord:
        ctx = self.ctx
        role = str(trial.user_attrs.get(ATTR_ROLE, "search"))
        config = self._config(trial, role, probe)
        target.validate_config(config)
        record = self._start(study, trial, role, config)
        try:
            earlier = self._same_as(study, record) if probe is None else None
        except KeyboardInterrupt:
            # Stopped while waiting for a twin's result: leave nothing running.
            self._interrupted(study, trial, record, 0.0)
            raise
        if earlier is not None:
            return self._tell_duplicate(study, trial, record, earlier)

        self.ledger.keep(record)
        ctx.observer.trial_started(trial.number, role, record.effective_bytes)
        start = time.monotonic()
        try:
            result = ctx.backend.run(
                config,
                ctx.rundir.trial_dir(trial.number),
                repeats=ctx.options.repeats,
                profile=True,
            )
            attrs = read_result(
                record, result, config, options=ctx.options, setup=ctx.setup, rundir=ctx.rundir
            )
        except KeyboardInterrupt:
            self._interrupted(study, trial, record, time.monotonic() - start)
            raise
        except AutotuneError as exc:
            self._fail(study, trial, record, str(exc), time.monotonic() - start)
            if role in PROBE_ROLES:
                raise AutotuneError(f"the {role} trial failed: {exc}") from None
            ctx.observer.trial_finished(record, self.ledger.best())
            return record
        record.duration_s = time.monotonic() - start
        # The record goes to disk before the study hears of it: an interruption in between leaves a
        # RUNNING trial, which a resume fails and runs again.
        self.ledger.keep(record)
        self._tell(study, trial, record, attrs)
        self.ledger.after_trial(record)
        return record

    def _same_as(self, study: Study, record: TrialRecord) -> TrialRecord | None:
        """The measured trial with the same effective bytes, if any; with a shared study one with
        those bytes may be running on another worker (`measured_twin`)."""
        space = self.ctx.space
        key = space.key(record.effective_bytes)

        def lookup() -> TrialRecord | None:
            for r in self.ledger.all_records(study):
                if r.state == "complete" and space.key(r.effective_bytes) == key:
                    return r
            return None

        if not self.ctx.shared:
            return lookup()
        return measured_twin(study, record.number, key, space, lookup)

    # -- telling the study --------------------------------------------------------------------

    def _set_constraints(self, trial: optuna.Trial, record: TrialRecord) -> None:
        options = self.ctx.options
        if not options.constraint:
            return
        for site in self.ctx.space.names:
            trial.set_constraint(
                f"late:{site}", record.lateness_us.get(site, 0.0) - options.late_tolerance_us
            )

    def _tell(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, attrs: dict[str, Any]
    ) -> None:
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        self._set_constraints(trial, record)
        trial.set_user_attr("throughputs", record.throughputs)
        trial.set_user_attr("tpots_ms", record.tpots_ms)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, record.objective)

    def _tell_duplicate(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, earlier: TrialRecord
    ) -> TrialRecord:
        for name in _TAKEN_FROM_TWIN:
            setattr(record, name, getattr(earlier, name))
        record.state = "duplicate"
        record.duplicate_of = earlier.number
        trial.set_user_attr(ATTR_DUPLICATE_OF, earlier.number)
        self._set_constraints(trial, record)
        self.ledger.keep(record)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, record.objective)
        self.ctx.observer.trial_finished(record, self.ledger.best())
        return record

    def _fail(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, error: str, took: float
    ) -> None:
        record.state = "failed"
        record.error = error
        record.duration_s = took
        trial.set_user_attr("error", error)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, state=TrialState.FAIL)
        self.ctx.rundir.write_trial(record)

    def _interrupted(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, took: float
    ) -> None:
        """Fail a trial stopped by Ctrl-C; with a shared study queue it again for another worker
        (a --resume of this one sees it queued already)."""
        record.state = "failed"
        record.error = "interrupted"
        record.duration_s = took
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, state=TrialState.FAIL)
        self.ctx.rundir.write_trial(record)
        if self.ctx.shared:
            study.enqueue_trial(
                dict(trial.params), user_attrs={ATTR_ROLE: record.role, "retry_of": trial.number}
            )
