"""The trial lifecycle: take the study's next trial, compile its config, answer it from a twin or
run it on the backend, read what it measured, and tell the study — or fail it.

Every trial this worker takes from the study ends here, told or failed, whatever stops it:
- the backend or the readout fails (AutotuneError): the trial fails with that reason;
- Ctrl-C: the trial fails as interrupted (on a shared study it is queued again), then the
  interruption goes on;
- any other error: the trial fails with the error as its reason before the error goes on;
- the study failed the trial under this worker (its heartbeat lapsed, so another worker's stale
  sweep failed it and queued it again): what this worker measured is kept in its own record, not
  told to the study a second time. When the retry is still queued this worker takes it and answers
  it with that measurement, so the config is not measured twice; otherwise the record says the
  retry ran elsewhere. The worker says so and goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.study import Study
from optuna.trial import TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.rundir import TrialRecord
from autotune.search.context import RunContext, trials_of
from autotune.search.heartbeat import heartbeat, heartbeat_interval
from autotune.search.ledger import Ledger
from autotune.search.options import ATTR_CONFIRMS, ATTR_ROLE, ATTR_ROUND, ROLE_CONFIRM
from autotune.search.probe import PROBE_ROLES, probe_config
from autotune.search.readout import Readout
from autotune.search.sampler import ATTR_LATE
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
    retry_queued_for,
    take_retry,
    worker_id,
)

log = logging.getLogger(__name__)

# A duplicate takes these measured fields from the trial it repeats.
_TAKEN_FROM_TWIN = (
    "objective",
    "step_ms",
    "step_se_ms",
    "profiled_steps",
    "segment_ms",
    "bench_s",
    "throughput",
    "throughputs",
    "tpot_ms",
    "tpots_ms",
    "feasible",
    "lateness_us",
    "late_sites",
    "sites",
)
# A retry answered by the measurement of the trial it replaces takes these too: its files.
_MEASUREMENT = (
    *_TAKEN_FROM_TWIN,
    "profile",
    "unprofiled",
    "bench_files",
    "logs",
    "simulated",
    "duration_s",
)


@dataclass
class _Measurement:
    """What a trial measured: its record and the attributes its readout stores in the study."""

    record: TrialRecord
    attrs: dict[str, Any]


@dataclass
class _Attempt:
    """One trial on its way through this worker."""

    trial: optuna.Trial
    role: str
    record: TrialRecord | None = None
    measured: _Measurement | None = None  # set once the backend's result has been read
    started: float | None = None  # monotonic time the backend run started
    finished: bool = False  # told or failed in the study

    @property
    def took(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0


class TrialRunner:
    """Runs the study's trials one at a time for this worker."""

    def __init__(self, ctx: RunContext, ledger: Ledger) -> None:
        self.ctx = ctx
        self.ledger = ledger
        self.readout = Readout(ctx.options, ctx.rundir)

    def run_next(self, study: Study, probe_config: dict[str, Any] | None = None) -> TrialRecord:
        """Take the next trial (a queued one first) and run it; with `probe_config`, run that
        config as it is. A failed probe trial raises AutotuneError, a failed search trial is
        returned failed."""
        trial = quiet_ask(study, self.ctx.space.distributions())
        return self._run(study, trial, probe_config)

    def _run(
        self,
        study: Study,
        trial: optuna.Trial,
        probe: dict[str, Any] | None,
        measured: _Measurement | None = None,
    ) -> TrialRecord:
        """Run `trial` to its end in the study, with its heartbeat; with `measured`, answer it with
        that measurement of its config instead of running it."""
        attempt = _Attempt(trial, str(trial.user_attrs.get(ATTR_ROLE, "search")))
        storage = self.ctx.storage if self.ctx.shared and measured is None else None
        try:
            with heartbeat(storage, study, trial.number):
                return self._attempt(study, attempt, probe, measured)
        except UpdateFinishedTrialError:
            if attempt.finished or attempt.record is None:
                raise
            return self._lapsed(study, attempt, attempt.record)
        except KeyboardInterrupt:
            if not attempt.finished:
                self._interrupted(study, attempt)
            raise
        except BaseException as exc:
            if not attempt.finished:
                self._abandon(study, attempt, exc)
            raise

    def _attempt(
        self,
        study: Study,
        attempt: _Attempt,
        probe: dict[str, Any] | None,
        measured: _Measurement | None,
    ) -> TrialRecord:
        ctx = self.ctx
        confirming = attempt.role == ROLE_CONFIRM
        config = self._config(study, attempt, probe)
        target.validate_config(config)
        record = self._start(study, attempt, config)
        if probe is None and measured is None and not confirming:
            earlier = self._same_as(study, record)
            if earlier is not None:
                return self._tell_duplicate(study, attempt, earlier)
        if confirming and measured is None:
            twin = _confirmed_elsewhere(study, attempt.trial)
            if twin is not None:
                # Two workers queued the same measurement at once: the earlier one runs.
                attempt.trial.set_user_attr("superseded", True)
                self._fail(study, attempt, f"superseded: trial {twin} takes this measurement")
                return record
        self.ledger.keep(record)
        if measured is not None:
            for name in _MEASUREMENT:
                setattr(record, name, getattr(measured.record, name))
            record.state = "complete"
            attempt.measured = _Measurement(record, measured.attrs)
        else:
            ctx.observer.trial_started(record.number, record.role, record.effective_bytes)
            attempt.started = time.monotonic()
            try:
                # A confirmation measures the bench again; the profile was read the first time.
                result = ctx.backend.run(
                    config,
                    ctx.rundir.trial_dir(record.number),
                    repeats=ctx.options.repeats,
                    profile=not confirming,
                )
                attrs = self.readout.read(
                    record, result, config, ctx.setup, profiled=not confirming
                )
                if confirming:
                    self._as_confirmation(study, record, attrs)
            except AutotuneError as exc:
                self._fail(study, attempt, str(exc))
                if record.role in PROBE_ROLES:
                    raise AutotuneError(f"the {record.role} trial failed: {exc}") from None
                ctx.observer.trial_finished(record, self.ledger.best())
                return record
            attempt.measured = _Measurement(record, attrs)
            record.duration_s = attempt.took
        # The record goes to disk before the study hears of it: an interruption in between leaves a
        # RUNNING trial, which a resume fails and runs again.
        self.ledger.keep(record)
        self._tell(study, attempt)
        self.ledger.after_trial(record)
        return record

    def _config(
        self, study: Study, attempt: _Attempt, probe: dict[str, Any] | None
    ) -> dict[str, Any]:
        if attempt.role == ROLE_CONFIRM:
            # Exactly the config the confirmed trial ran (a probe's is not a ladder point's).
            number = attempt.trial.user_attrs.get(ATTR_CONFIRMS)
            for t in trials_of(study):
                if t.number == number and isinstance(t.user_attrs.get("config"), dict):
                    return dict(t.user_attrs["config"])
            raise AutotuneError(f"confirmation of trial {number}: its config is not in the study")
        if probe is None and attempt.role in PROBE_ROLES:
            probe = probe_config(attempt.role, self.ctx.extra)
        if probe is not None:
            return probe
        wanted = self.ctx.space.bytes_of_params(attempt.trial.params)
        # Inert sites are written explicitly as off, so every key is in the JSON.
        bytes_by_site = {site: 0 for site in target.SITES}
        bytes_by_site.update(wanted)
        return target.compile_config(bytes_by_site, self.ctx.setup, self.ctx.extra)

    def _start(self, study: Study, attempt: _Attempt, config: dict[str, Any]) -> TrialRecord:
        """The trial's record, and who runs the trial and with what, in the study and its folder."""
        trial = attempt.trial
        eff = target.effective_bytes(config, self.ctx.setup)
        retry_of = trial.user_attrs.get("retry_of")
        derived = None
        if self.ctx.shared and retry_of is None:
            frozen = next((t for t in trials_of(study) if t.number == trial.number), None)
            retry_of = derived = retried_number(frozen) if frozen is not None else None
        record = attempt.record = TrialRecord(
            number=trial.number,
            role=attempt.role,
            state="running",
            config=config,
            effective_bytes=eff,
            retry_of=retry_of,
            simulated=self.ctx.backend.simulated,
            host=HOST,
        )
        if attempt.role == ROLE_CONFIRM:
            record.confirms = _int_attr(trial, ATTR_CONFIRMS)
            record.confirm_round = _int_attr(trial, ATTR_ROUND)
        # First: other workers look at the bytes of running trials to avoid measuring them twice.
        trial.set_user_attr(ATTR_EFFECTIVE, eff)
        if ATTR_ROLE not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROLE, attempt.role)
        # A retry of a dead worker's trial inherits its attributes: this worker takes over.
        trial.set_user_attr(ATTR_HOST, HOST)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        if derived is not None:
            trial.set_user_attr("retry_of", derived)
        trial.set_user_attr("config", config)
        self.ctx.rundir.write_trial_config(trial.number, config)
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

    def _as_confirmation(self, study: Study, record: TrialRecord, attrs: dict[str, Any]) -> None:
        """A confirmation is not profiled: it keeps the lateness the confirmed trial's profile
        showed, so the study's constraints and the tables treat the config alike."""
        subject = next(
            (r for r in self.ledger.all_records(study) if r.number == record.confirms), None
        )
        if subject is None:
            return
        record.lateness_us = dict(subject.lateness_us)
        record.late_sites = list(subject.late_sites)
        record.feasible = subject.feasible
        attrs["lateness_us"] = record.lateness_us
        attrs[ATTR_LATE] = record.late_sites

    # -- telling the study --------------------------------------------------------------------

    def _set_constraints(self, trial: optuna.Trial, record: TrialRecord) -> None:
        options = self.ctx.options
        if not options.constraint:
            return
        for site in self.ctx.space.names:
            trial.set_constraint(
                f"late:{site}", record.lateness_us.get(site, 0.0) - options.late_tolerance_us
            )

    def _tell(self, study: Study, attempt: _Attempt) -> None:
        assert attempt.measured is not None
        record, trial = attempt.measured.record, attempt.trial
        for name, value in attempt.measured.attrs.items():
            trial.set_user_attr(name, value)
        self._set_constraints(trial, record)
        trial.set_user_attr("throughputs", record.throughputs)
        trial.set_user_attr("tpots_ms", record.tpots_ms)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        _finish(study, attempt, TrialState.COMPLETE, record.objective)

    def _tell_duplicate(self, study: Study, attempt: _Attempt, earlier: TrialRecord) -> TrialRecord:
        record, trial = attempt.record, attempt.trial
        assert record is not None
        for name in _TAKEN_FROM_TWIN:
            setattr(record, name, getattr(earlier, name))
        record.state = "duplicate"
        record.duplicate_of = earlier.number
        trial.set_user_attr(ATTR_DUPLICATE_OF, earlier.number)
        self._set_constraints(trial, record)
        self.ledger.keep(record)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        _finish(study, attempt, TrialState.COMPLETE, record.objective)
        self.ctx.observer.trial_finished(record, self.ledger.best())
        return record

    def _fail(self, study: Study, attempt: _Attempt, error: str) -> None:
        record, trial = attempt.record, attempt.trial
        assert record is not None
        record.state = "failed"
        record.error = error
        record.duration_s = attempt.took
        self.ctx.rundir.write_trial(record)
        trial.set_user_attr("error", error)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        _finish(study, attempt, TrialState.FAIL)

    # -- when something else ends the trial ---------------------------------------------------

    def _interrupted(self, study: Study, attempt: _Attempt) -> None:
        """Fail a trial stopped by Ctrl-C; with a shared study queue it again for another worker
        (a --resume of this one sees it queued already)."""
        trial, record = attempt.trial, attempt.record
        if record is not None:
            record.state = "failed"
            record.error = "interrupted"
            record.duration_s = attempt.took
        try:
            trial.set_user_attr("interrupted", True)
            if record is not None:
                trial.set_user_attr(ATTR_RECORD, record.to_json())
            _finish(study, attempt, TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # the study failed it first, and its stale sweep queued it again
        if record is not None:
            self.ctx.rundir.write_trial(record)
        # A confirmation is queued again by the confirmation phase, in its round.
        if self.ctx.shared and attempt.finished and attempt.role != ROLE_CONFIRM:
            study.enqueue_trial(
                dict(trial.params), user_attrs={ATTR_ROLE: attempt.role, "retry_of": trial.number}
            )

    def _abandon(self, study: Study, attempt: _Attempt, exc: BaseException) -> None:
        """Fail the trial with an unexpected error as its reason, so that nothing is left running;
        the error itself goes on, so a failure to record this one is not reported over it."""
        if isinstance(exc, AutotuneError):
            error = str(exc)
        else:
            lines = str(exc).strip().splitlines()
            error = f"stopped by an unexpected error: {type(exc).__name__}" + (
                f": {lines[0]}" if lines else ""
            )
        record, trial = attempt.record, attempt.trial
        if record is not None:
            record.state = "failed"
            record.error = error
            record.duration_s = attempt.took
            with contextlib.suppress(Exception):
                self.ctx.rundir.write_trial(record)
        with contextlib.suppress(Exception):
            trial.set_user_attr("error", error)
            if record is not None:
                trial.set_user_attr(ATTR_RECORD, record.to_json())
        with contextlib.suppress(Exception):
            _finish(study, attempt, TrialState.FAIL)

    def _lapsed(self, study: Study, attempt: _Attempt, record: TrialRecord) -> TrialRecord:
        """The study failed the trial under this worker (a stale sweep: its heartbeat lapsed).

        A measurement already made is kept in this worker's record, not told to the study again;
        when the trial's retry is still queued, this worker takes it and answers it with that
        measurement. Either way the run goes on.
        """
        ctx = self.ctx
        why = "the study failed this trial while this worker ran it"
        if heartbeat_interval(ctx.storage) is not None:
            why += " (its heartbeat lapsed: the worker stalled or lost the database)"
        retry = retry_queued_for(study, record.number)
        answer = None
        if attempt.measured is not None and retry is not None and ctx.storage is not None:
            answer = take_retry(study, ctx.storage, retry)
        measurement = replace(record)  # as measured, before the record says what befell it
        if answer is not None:
            record.error = f"{why}; its retry, trial {answer.number}, takes this measurement"
            record.profile = None  # the retry's record owns the profile now
        elif attempt.measured is not None:
            elsewhere = (
                f"its retry, trial {retry.number}, was taken by another worker"
                if retry is not None
                else "it was not queued again"
            )
            record.error = f"{why}; {elsewhere}, so this measurement is kept here only"
        else:
            # Nothing measured here is lost; a failure here is kept with it.
            record.error = why + (f"; it failed here too: {record.error}" if record.error else "")
            record.duration_s = attempt.took
        record.state = "failed"
        self.ledger.keep(record)
        log.warning("warning: trial %d: %s", record.number, record.error)
        ctx.observer.trial_finished(record, self.ledger.best())
        if answer is not None and attempt.measured is not None:
            return self._run(study, answer, None, _Measurement(measurement, attempt.measured.attrs))
        if record.role in PROBE_ROLES and not ctx.shared:
            raise AutotuneError(f"the {record.role} trial failed: {record.error}")
        return record


def _int_attr(trial: optuna.Trial, name: str) -> int | None:
    value = trial.user_attrs.get(name)
    return value if isinstance(value, int) else None


def _confirmed_elsewhere(study: Study, trial: optuna.Trial) -> int | None:
    """An earlier trial queued for the same confirmation (round and trial) that is not failed."""
    attrs = trial.user_attrs
    for t in trials_of(study):
        if (
            t.number < trial.number
            and t.state != TrialState.FAIL
            and t.user_attrs.get(ATTR_ROLE) == ROLE_CONFIRM
            and t.user_attrs.get(ATTR_CONFIRMS) == attrs.get(ATTR_CONFIRMS)
            and t.user_attrs.get(ATTR_ROUND) == attrs.get(ATTR_ROUND)
        ):
            return t.number
    return None


def _finish(study: Study, attempt: _Attempt, state: TrialState, value: float | None = None) -> None:
    """Tell the study how the trial ended; UpdateFinishedTrialError when the study ended it first
    (another worker's stale sweep)."""
    told = study.tell(attempt.trial, value, state=state, skip_if_finished=True)
    if told.state != state:
        raise UpdateFinishedTrialError(f"trial {told.number} was already {told.state.name}")
    attempt.finished = True
