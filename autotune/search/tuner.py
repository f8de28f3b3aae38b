"""The Tuner: runs the probe, the seed and the study one trial at a time, and records each."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.lateness import tolerance_ns
from autotune.overlap import analyze, late_sites, site_segments
from autotune.profile import load_profiles
from autotune.rundir import STUDY_DB, RunDir, TrialRecord
from autotune.search.guide import seed_bytes
from autotune.search.measure import (
    SiteTiming,
    lateness_by_site,
    profile_step_ms,
    site_timings,
)
from autotune.search.observed import ATTR_ADDED, observed_setup, profile_space, space_setup
from autotune.search.options import (
    ATTR_ROLE,
    ATTR_SPACE,
    ATTR_WORKLOAD,
    OBJECTIVES,
    NullObserver,
    RunObserver,
    SearchOptions,
)
from autotune.search.sampler import ATTR_LATE, ATTR_SEGMENTS, GuidedSampler, make_sampler
from autotune.search.space import SearchSpace, static_space
from autotune.search.storage import open_study, shown_url
from autotune.search.summary import best_record, build_summary, site_json
from autotune.search.workers import (
    ATTR_DUPLICATE_OF,
    ATTR_EFFECTIVE,
    ATTR_HOST,
    ATTR_RECORD,
    ATTR_RUN,
    ATTR_WORKER,
    HOST,
    POLL_S,
    fail_stale,
    heartbeat,
    is_measured,
    quiet_ask,
    retried_number,
    study_records,
    worker_id,
)
from autotune.workloads.base import Backend, TrialResult, Workload, setup_of

# Stop proposing after this many consecutive duplicates: the sampler has nothing new to offer.
MAX_CONSECUTIVE_DUPLICATES = 40
# With --keep-profiles best, the profiles of this many top trials stay until the run ends.
PROFILES_KEPT_DURING_RUN = 3
# Abort the run after this many consecutive failed search trials.
MAX_CONSECUTIVE_FAILURES = 3
# A worker joining a study waits this long for its creator to record the workload.
JOIN_WAIT_S = 60.0
# Polls a worker waits for another worker's next step in the probe (analysing the default trial,
# queueing a failed probe trial again) before doing it itself or giving up.
ANALYSE_WAIT_POLLS = 20
PROBE_ROLES = ("baseline", "default")
# Polls a trial waits for an earlier running trial to record its effective bytes (it does right
# after it is asked; one that never does was stopped in between).
UNKNOWN_WAIT_POLLS = 50


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


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _bench_floats(benches: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out: list[float] = []
    for bench in benches:
        value = bench.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


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
        self.workload = workload
        self.backend = backend
        self.rundir = rundir
        self.options = options
        self.study_name = study_name
        self.storage_given = storage_url is not None
        self.storage_url = storage_url or rundir.default_storage_url()
        self.resume = resume
        self.observer: RunObserver = observer or NullObserver()
        self.setup = setup_of(workload)
        self.direction = OBJECTIVES[options.objective]
        self.sampler = make_sampler(
            options.sampler, options.seed, options.objective, options.constraint
        )
        self.space = static_space(self.setup)
        self.extra = dict(options.extra)
        self.records: dict[int, TrialRecord] = {}
        self._started = 0.0
        self.study: Study | None = None
        self._opened = False
        self.storage: BaseStorage | None = None
        # Shared: other workers (other hosts) may run trials of the same study at the same time.
        self.shared = shared
        self.heartbeat_s = heartbeat_s if shared else None
        self.created = False

    # -- public ------------------------------------------------------------------------------

    def open(self) -> Study:
        """Open the storage and the run directory; continue the study with --resume.

        Nothing is written before the storage opens, so a bad --storage leaves no trace.
        """
        if self.study is not None and self._opened:
            return self.study
        # Compiling the probe configs checks the extra keys before anything is written.
        target.disabled_config(self.extra)
        if self.resume:
            self.rundir.prepare(resume=True)
        elif self.storage_given:
            # A remote storage is checked before the run directory is created.
            joined = self._open()
            if self.shared:
                self._start_shared(joined)
        if not self.resume:
            try:
                self.rundir.prepare(resume=False)
            except AutotuneError:
                self._drop_new_study()
                raise
        study = self.study or self._open()
        if self.resume:
            self._restore(study)
        else:
            if not self.shared:
                study.set_user_attr(ATTR_WORKLOAD, asdict(self.workload))
            self.rundir.write_run(self._run_json())
        self._set_space(study)
        self._opened = True
        return study

    def run(self) -> RunOutcome:
        """Run (or continue) the study until --trials measured trials or --timeout."""
        study = self.open()
        self._started = time.monotonic()
        stopped = "trials"
        try:
            if self.shared:
                self._shared_probe(study)
            else:
                self._ensure_probe(study, "baseline", target.disabled_config(self.extra))
                self._ensure_probe(study, "default", target.vendor_default_config(self.extra))
                if ATTR_SPACE not in study.user_attrs:
                    self._analyse_probe(study)
            self._set_space(study)
            stopped = self._search(study) if self.space.sites else "no-active-sites"
        except KeyboardInterrupt:
            stopped = "interrupted"
            raise
        finally:
            # What was measured stays readable; the summary says why the run has not finished.
            self._write_tables(stopped="" if stopped == "trials" else stopped)
        return self._finish(stopped)

    def _open(self) -> Study:
        handle = open_study(
            self.storage_url,
            self.study_name,
            self.direction,
            self.sampler,
            resume=self.resume,
            join=self.shared,
            heartbeat_s=self.heartbeat_s,
        )
        self.study, self.storage, self.created = handle.study, handle.storage, handle.created
        return self.study

    def _start_shared(self, study: Study) -> None:
        """The creator records the workload and queues the probe once for every worker; a worker
        that joins checks that it runs the same workload and backend."""
        if self.created:
            study.set_user_attr(ATTR_WORKLOAD, asdict(self.workload))
            for role, config in (
                ("baseline", target.disabled_config(self.extra)),
                ("default", target.vendor_default_config(self.extra)),
            ):
                params = self.space.params_of(target.effective_bytes(config, self.setup))
                study.enqueue_trial(params, user_attrs={ATTR_ROLE: role})
            # Written last: a joining worker waits for it, and then finds the probe queued.
            shown = {k: v for k, v in self._run_json().items() if k != "storage"}
            study.set_user_attr(ATTR_RUN, shown)
            return
        deadline = time.monotonic() + JOIN_WAIT_S
        while ATTR_RUN not in study.user_attrs:
            if time.monotonic() > deadline:
                raise AutotuneError(
                    f"study {self.study_name!r} holds no autotune run: its creator recorded no "
                    "workload; choose another --study-name"
                )
            time.sleep(POLL_S)
        attrs = study.user_attrs
        theirs = attrs.get(ATTR_WORKLOAD, {})
        mine = asdict(self.workload)
        differ = [k for k in mine if k in theirs and theirs[k] != mine[k]]
        if differ:
            pairs = ", ".join(f"{k}={theirs[k]!r} (here {mine[k]!r})" for k in differ)
            raise AutotuneError(
                f"study {self.study_name!r} tunes another workload: {pairs}; "
                "start every worker with the same flags"
            )
        backend = attrs[ATTR_RUN].get("backend")
        if backend and backend != self.backend.name:
            raise AutotuneError(
                f"study {self.study_name!r} runs --backend {backend}, not {self.backend.name}"
            )

    def _drop_new_study(self) -> None:
        """Delete the study this run just created (still empty), so a failed start leaves its name
        free in a shared --storage; open_study refused any existing one, so it is ours."""
        if self.study is None or self.storage is None or not self.created:
            return
        # The error being raised matters more; a left-over study only takes a name.
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=self.study_name, storage=self.storage)
        self.study = None
        self.storage = None

    def _run_json(self) -> dict[str, Any]:
        return {
            "workload": asdict(self.workload),
            "backend": self.backend.name,
            "simulated": self.backend.simulated,
            "vllm_ascend_version": self.backend.target_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "study_name": self.study_name,
            "storage": self.recorded_storage,
            "shared": self.shared,
            "host": HOST,
            "options": {
                k: (dict(v) if isinstance(v, Mapping) else v)
                for k, v in asdict(self.options).items()
            },
        }

    @property
    def recorded_storage(self) -> str:
        """The storage as run.json and summary.json name it: the own study relative to the run
        directory (so it follows a copy or a move), an explicit --storage as given."""
        return self.storage_url if self.storage_given else STUDY_DB

    # -- phases ------------------------------------------------------------------------------

    def _set_space(self, study: Study) -> None:
        data = study.user_attrs.get(ATTR_SPACE)
        if data is not None:
            self.space = SearchSpace.from_json(data)
        self.setup = space_setup(setup_of(self.workload), self.space)
        if isinstance(self.sampler, GuidedSampler):
            self.sampler.space = self.space if data is not None else None

    def _trials(self, study: Study, *states: TrialState) -> list[FrozenTrial]:
        return study.get_trials(deepcopy=False, states=states or None)

    def _has_role(self, study: Study, role: str, *states: TrialState) -> bool:
        return any(t.user_attrs.get(ATTR_ROLE) == role for t in self._trials(study, *states))

    def _ensure_probe(self, study: Study, role: str, config: dict[str, Any]) -> None:
        if self._has_role(study, role, TrialState.COMPLETE):
            return
        if not self._has_role(study, role, TrialState.WAITING):
            params = self.space.params_of(target.effective_bytes(config, self.setup))
            study.enqueue_trial(params, user_attrs={ATTR_ROLE: role})
        self._run_next(study, probe_config=config)

    def _shared_probe(self, study: Study) -> None:
        """Run queued trials until some worker has analysed the default trial: the creator queued
        the probe once, so each probe trial runs on whichever worker takes it first."""
        complete_polls = missing_polls = 0
        while ATTR_SPACE not in study.user_attrs:
            trials = self._trials(study)
            if any(t.state == TrialState.WAITING for t in trials):
                record = self._run_next(study, probe_config=None)
                if (
                    record.role == "default"
                    and record.state == "complete"
                    and ATTR_SPACE not in study.user_attrs
                ):
                    self._analyse_probe(study)
                continue
            done = {str(t.user_attrs.get(ATTR_ROLE)) for t in trials if is_measured(t)}
            busy = {
                str(t.user_attrs.get(ATTR_ROLE)) for t in trials if t.state == TrialState.RUNNING
            }
            if "default" in done:
                # Its worker analyses it right after; if that worker died in between, we do.
                complete_polls += 1
                if complete_polls >= ANALYSE_WAIT_POLLS:
                    self._analyse_probe(study)
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
                    f"the {missing[0]} trial of study {self.study_name!r} did not finish "
                    f"({why}); start a fresh study"
                )
            fail_stale(study)
            time.sleep(POLL_S)

    def _analyse_probe(self, study: Study) -> None:
        done = self._trials(study, TrialState.COMPLETE)
        default = next(t for t in done if t.user_attrs.get(ATTR_ROLE) == "default")
        baseline = next((t for t in done if t.user_attrs.get(ATTR_ROLE) == "baseline"), None)
        unprofiled = default.user_attrs.get("unprofiled")
        if unprofiled:
            self._static_probe(study, str(unprofiled))
            return
        timings = {
            site: SiteTiming(**data) for site, data in default.user_attrs.get("timings", {}).items()
        }
        profiled = profile_space(self.space, timings, self.setup)
        space = profiled.space
        if profiled.added:
            study.set_user_attr(ATTR_ADDED, profiled.added)
            study.set_user_attr("probe_note", "; ".join(profiled.added.values()))
            self.observer.phase("note: " + "; ".join(profiled.added.values()))
        wanted, reasons = seed_bytes(
            space,
            timings,
            baseline.user_attrs if baseline is not None else {},
            default.user_attrs,
            late_is_infeasible=self.options.constraint,
        )
        seed = space.quantise(wanted)
        study.set_user_attr(ATTR_SPACE, space.to_json())
        study.set_user_attr("seed_bytes", seed)
        study.set_user_attr("seed_reasons", reasons)
        self.space = space
        if space.sites and self.options.seed_trial:
            study.enqueue_trial(space.params_of(seed), user_attrs={ATTR_ROLE: "seed"})
        self.observer.phase(
            "active sites: "
            + (", ".join(space.names) or "none")
            + (f"; inert: {', '.join(sorted(space.inert))}" if space.inert else "")
        )

    def _static_probe(self, study: Study, reason: str) -> None:
        """Without the default trial's profile, the active sites are those of the target's
        static rules and there is no profile-guided seed; the run says so."""
        note = (
            f"the default trial was not profiled ({reason}); active sites follow the static "
            "rules of vllm-ascend 0.23 and there is no profile-guided seed"
        )
        # The space is the marker other workers wait for, so it is written last.
        study.set_user_attr("probe_note", note)
        study.set_user_attr(ATTR_SPACE, self.space.to_json())
        self.observer.phase(note)
        self.observer.phase("active sites: " + (", ".join(self.space.names) or "none"))

    @property
    def measured(self) -> int:
        """Trials measured so far (duplicates and failures not counted)."""
        return sum(1 for r in self.records.values() if r.state == "complete")

    def _budget(self, study: Study) -> tuple[int, int, bool]:
        """Measured trials of the study, trials running elsewhere, and whether any is queued.

        --trials is the study's budget: with several workers each starts a trial only while the
        measured and the running trials leave room for it.
        """
        if not self.shared:
            return self.measured, 0, False
        # As study.optimize does before each trial: dead workers' trials are failed and queued.
        fail_stale(study)
        trials = self._trials(study)
        measured = sum(1 for t in trials if is_measured(t))
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        return measured, running, waiting

    def _search(self, study: Study) -> str:
        duplicates_in_a_row = 0
        failures_in_a_row = 0
        while True:
            measured, running, waiting = self._budget(study)
            if measured >= self.options.trials:
                return "trials"
            if (
                self.options.timeout_s is not None
                and time.monotonic() - self._started >= self.options.timeout_s
            ):
                return "timeout"
            if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
                return "exhausted"
            seen = {self.space.key(r.effective_bytes) for r in self._complete(study)}
            if len(seen) >= self.space.size():
                return "exhausted"
            if not waiting and measured + running >= self.options.trials:
                # The budget is taken by trials running elsewhere; one of them may die and come
                # back queued (`_budget` fails stale trials), so wait rather than stop.
                time.sleep(POLL_S)
                continue
            self._enqueue_guided(study)
            record = self._run_next(study, probe_config=None)
            duplicates_in_a_row = duplicates_in_a_row + 1 if record.state == "duplicate" else 0
            failures_in_a_row = failures_in_a_row + 1 if record.state == "failed" else 0
            if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise AutotuneError(
                    f"{failures_in_a_row} trials failed in a row (last: {record.error}); "
                    f"see {self.rundir.relative(self.rundir.trial_dir(record.number))}"
                )

    def _enqueue_guided(self, study: Study) -> None:
        """Queue the guide's next candidate unless a trial is already waiting."""
        if not isinstance(self.sampler, GuidedSampler) or self._trials(study, TrialState.WAITING):
            return
        params = self.sampler.guided_params(study)
        if params is not None:
            study.enqueue_trial(params, user_attrs={ATTR_ROLE: "guided"})

    # -- one trial ---------------------------------------------------------------------------

    def _complete(self, study: Study | None = None) -> list[TrialRecord]:
        records = self._all_records(study) if study is not None else list(self.records.values())
        return [r for r in records if r.state in ("complete", "duplicate")]

    def _all_records(self, study: Study | None = None) -> list[TrialRecord]:
        """This worker's records, and with a shared study every other worker's finished ones."""
        study = study or self.study
        if not self.shared or study is None:
            return self._ordered()
        return study_records(self._trials(study), self.records)

    def _run_next(self, study: Study, *, probe_config: dict[str, Any] | None) -> TrialRecord:
        trial = quiet_ask(study, self.space.distributions())
        with heartbeat(self.storage if self.shared else None, study, trial.number):
            return self._run_trial(study, trial, probe_config)

    def _run_trial(
        self, study: Study, trial: optuna.Trial, probe_config: dict[str, Any] | None
    ) -> TrialRecord:
        role = str(trial.user_attrs.get(ATTR_ROLE, "search"))
        if probe_config is None and role in PROBE_ROLES:
            probe_config = (
                target.disabled_config(self.extra)
                if role == "baseline"
                else target.vendor_default_config(self.extra)
            )
        if probe_config is not None:
            config = probe_config
        else:
            wanted = self.space.bytes_of_params(trial.params)
            # Inert sites are written explicitly as off, so every key is in the JSON.
            bytes_by_site = {site: 0 for site in target.SITES}
            bytes_by_site.update(wanted)
            config = target.compile_config(bytes_by_site, self.setup, self.extra)
        target.validate_config(config)
        eff = target.effective_bytes(config, self.setup)
        key = self.space.key(eff)
        # First: other workers look at the bytes of running trials to avoid measuring them twice.
        trial.set_user_attr(ATTR_EFFECTIVE, eff)
        if ATTR_ROLE not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROLE, role)
        # A retry of a dead worker's trial inherits its attributes: this worker takes over.
        trial.set_user_attr(ATTR_HOST, HOST)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        retry_of = trial.user_attrs.get("retry_of")
        if self.shared and retry_of is None:
            frozen = next((t for t in self._trials(study) if t.number == trial.number), None)
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
            simulated=self.backend.simulated,
            host=HOST,
        )
        trial.set_user_attr("config", config)
        self.rundir.write_trial_config(trial.number, config)

        try:
            earlier = self._same_as(study, key, trial.number) if probe_config is None else None
        except KeyboardInterrupt:
            # Stopped while waiting for a twin's result: leave nothing running.
            self._interrupted(study, trial, record, role, 0.0)
            raise
        if earlier is not None:
            return self._tell_duplicate(study, trial, record, earlier)

        self.records[trial.number] = record
        self.rundir.write_trial(record)
        self.observer.trial_started(trial.number, role, eff)
        start = time.monotonic()
        try:
            result = self.backend.run(
                config,
                self.rundir.trial_dir(trial.number),
                repeats=self.options.repeats,
                profile=True,
            )
            self._measure(trial, record, result, config)
        except KeyboardInterrupt:
            self._interrupted(study, trial, record, role, time.monotonic() - start)
            raise
        except AutotuneError as exc:
            record.state = "failed"
            record.error = str(exc)
            record.duration_s = time.monotonic() - start
            trial.set_user_attr("error", str(exc))
            trial.set_user_attr(ATTR_RECORD, record.to_json())
            study.tell(trial, state=TrialState.FAIL)
            self.rundir.write_trial(record)
            if role in ("baseline", "default"):
                raise AutotuneError(f"the {role} trial failed: {exc}") from None
            self.observer.trial_finished(record, self.best())
            return record
        record.duration_s = time.monotonic() - start
        # The record goes to disk before the study hears of it: an interruption in between leaves a
        # RUNNING trial, which a resume fails and runs again.
        self.records[record.number] = record
        self.rundir.write_trial(record)
        self._tell(study, trial, record)
        self._after_trial(record)
        return record

    def _interrupted(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, role: str, took: float
    ) -> None:
        """Fail a trial stopped by Ctrl-C; with a shared study queue it again for another worker
        (a --resume of this one sees it queued already)."""
        record.state = "failed"
        record.error = "interrupted"
        record.duration_s = took
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, state=TrialState.FAIL)
        self.rundir.write_trial(record)
        if self.shared:
            study.enqueue_trial(
                dict(trial.params), user_attrs={ATTR_ROLE: role, "retry_of": trial.number}
            )

    def _same_as(self, study: Study, key: tuple[int, ...], number: int) -> TrialRecord | None:
        """The measured trial with the same effective bytes, if any.

        With a shared study a trial with the same bytes may be running on another worker; the
        lower-numbered one runs and this one waits for its result.
        """
        polls = 0
        while True:
            for r in self._all_records(study):
                if r.state == "complete" and self.space.key(r.effective_bytes) == key:
                    return r
            if not self.shared:
                return None
            earlier = [
                t
                for t in self._trials(study, TrialState.RUNNING, TrialState.WAITING)
                if t.number < number
            ]
            twin = any(
                t.state == TrialState.RUNNING
                and ATTR_EFFECTIVE in t.user_attrs
                and self.space.key(t.user_attrs[ATTR_EFFECTIVE]) == key
                for t in earlier
            )
            # A trial asked a moment before this one may not have recorded its bytes yet, and
            # one queued before it is about to be taken; neither is waited for long.
            unknown = polls < UNKNOWN_WAIT_POLLS and any(
                t.state == TrialState.WAITING or ATTR_EFFECTIVE not in t.user_attrs for t in earlier
            )
            if not twin and not unknown:
                return None
            polls += 1
            fail_stale(study)
            time.sleep(POLL_S / 5 if unknown and not twin else POLL_S)

    def _tell_duplicate(
        self, study: Study, trial: optuna.Trial, record: TrialRecord, earlier: TrialRecord
    ) -> TrialRecord:
        for name in (
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
        ):
            setattr(record, name, getattr(earlier, name))
        record.state = "duplicate"
        record.duplicate_of = earlier.number
        trial.set_user_attr(ATTR_DUPLICATE_OF, earlier.number)
        self._set_constraints(trial, record)
        self.records[trial.number] = record
        self.rundir.write_trial(record)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, record.objective)
        self.observer.trial_finished(record, self.best())
        return record

    def _measure(
        self,
        trial: optuna.Trial,
        record: TrialRecord,
        result: TrialResult,
        config: Mapping[str, Any],
    ) -> None:
        record.throughputs = _bench_floats(result.benches, "output_throughput")
        record.tpots_ms = _bench_floats(result.benches, "median_tpot_ms")
        record.throughput = _median(record.throughputs)
        record.tpot_ms = _median(record.tpots_ms)
        record.objective = (
            record.throughput if self.options.objective == "throughput" else record.tpot_ms
        )
        if record.objective is None:
            key = (
                "output_throughput" if self.options.objective == "throughput" else "median_tpot_ms"
            )
            raise AutotuneError(f"trial {trial.number}: the bench result has no {key}")
        record.bench_files = [self.rundir.relative(p) for p in result.bench_paths]
        record.logs = [self.rundir.relative(p) for p in result.logs]
        record.simulated = result.simulated
        if result.profile_dir is not None:
            self._read_profile(trial, record, result.profile_dir, config)
        else:
            record.unprofiled = result.unprofiled or "the backend returned no profile"
        if record.unprofiled:
            # Measured but not profiled: the numbers stand, the overlap is unknown.
            trial.set_user_attr("unprofiled", record.unprofiled)
        trial.set_user_attr("lateness_us", record.lateness_us)
        record.feasible = not record.late_sites
        trial.set_user_attr(ATTR_LATE, record.late_sites)
        record.state = "complete"

    def _read_profile(
        self, trial: optuna.Trial, record: TrialRecord, path: Path, config: Mapping[str, Any]
    ) -> None:
        """Overlap, step time and window timings from the trial's profile; an unreadable one
        leaves the trial unprofiled with the reader's one-line reason."""
        try:
            profiles = load_profiles(path)
            overlap = analyze(
                profiles, late_tolerance_ns=tolerance_ns(self.options.late_tolerance_us)
            )
        except AutotuneError as exc:
            record.unprofiled = f"the profile is unreadable: {exc}"
            return
        # The reader keeps what precedes a cut in a trace file; a cut-off profile is not trusted.
        cut = [p for p in profiles if p.truncated]
        if cut:
            # The reader's first warning of a cut-off file says where it was cut.
            record.unprofiled = f"the profile is truncated: {cut[0].warnings[0]}"
            return
        record.profile = self.rundir.relative(path)
        record.step_ms = profile_step_ms(profiles)
        trial.set_user_attr("step_ms", record.step_ms)
        segments = site_segments(profiles)
        trial.set_user_attr(
            ATTR_SEGMENTS, {s: [g.total_ns, g.work_ns] for s, g in segments.items()}
        )
        record.sites = {s.site: site_json(s) for s in overlap.sites}
        record.lateness_us = lateness_by_site(overlap)
        record.late_sites = late_sites(overlap)
        # The profile has the last word: a site the rules call inert that fired moved bytes.
        setup = observed_setup(self.setup, {s.site for s in overlap.sites if s.count > 0})
        timings = site_timings(overlap, config, setup)
        record.effective_bytes = target.effective_bytes(config, setup)
        trial.set_user_attr(ATTR_EFFECTIVE, record.effective_bytes)
        trial.set_user_attr("timings", {s: asdict(t) for s, t in timings.items()})
        trial.set_user_attr("fill_bytes", {s: t.fill_bytes for s, t in timings.items()})

    def _set_constraints(self, trial: optuna.Trial, record: TrialRecord) -> None:
        if not self.options.constraint:
            return
        tol = self.options.late_tolerance_us
        for site in self.space.names:
            trial.set_constraint(f"late:{site}", record.lateness_us.get(site, 0.0) - tol)

    def _tell(self, study: Study, trial: optuna.Trial, record: TrialRecord) -> None:
        self._set_constraints(trial, record)
        trial.set_user_attr("throughputs", record.throughputs)
        trial.set_user_attr("tpots_ms", record.tpots_ms)
        trial.set_user_attr(ATTR_RECORD, record.to_json())
        study.tell(trial, record.objective)

    def _after_trial(self, record: TrialRecord) -> None:
        self._prune_profiles()
        self._write_tables()
        self.observer.trial_finished(record, self.best())

    # -- bookkeeping -------------------------------------------------------------------------

    def _restore(self, study: Study) -> None:
        """Reload records; fail interrupted trials and queue them again so they are not lost."""
        self.records = {r.number: r for r in self.rundir.read_trials()}
        self._check_study_matches(study)
        finished = {t.number for t in self._trials(study, TrialState.COMPLETE)}
        for record in self.records.values():
            # Only what the study recorded as finished counts; anything else runs again.
            if (
                record.state in ("complete", "duplicate", "running")
                and record.number not in finished
            ):
                record.state = "failed"
                record.error = record.error or "interrupted"
                self.rundir.write_trial(record)
        retried = {t.user_attrs.get("retry_of") for t in self._trials(study)}
        for t in self._trials(study, TrialState.RUNNING, TrialState.FAIL):
            if self.shared and t.number not in self.records:
                continue  # another worker's trial: its heartbeat decides whether it is dead
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
            elif not t.user_attrs.get("interrupted"):
                continue
            role = t.user_attrs.get(ATTR_ROLE, "search")
            if t.number in retried or (role in PROBE_ROLES and not self.shared):
                continue  # a lone run re-queues its probe trials in their own phase
            study.enqueue_trial(dict(t.params), user_attrs={ATTR_ROLE: role, "retry_of": t.number})

    def _check_study_matches(self, study: Study) -> None:
        """Refuse a study that is not this run directory's: its trials and trials/ must agree,
        or a resume would number, skip or mix up trials."""
        in_study = {t.number: t for t in self._trials(study)}
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
        if not self.storage_given:
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
                f"--resume: study {self.study_name!r} in {shown_url(self.storage_url)} does not "
                f"match {self.rundir.path}: {problems[0]}{more}; resume the run directory this "
                "study belongs to"
            )

    def best(self, records: Sequence[TrialRecord] | None = None) -> TrialRecord | None:
        """The best measured trial of the whole study, by the pick rule (`pick_best`)."""
        pool = list(records) if records is not None else self._all_records()
        return best_record(pool, self.options.objective, late_is_infeasible=self.options.constraint)

    def _role(self, role: str, records: Sequence[TrialRecord] | None = None) -> TrialRecord | None:
        pool = records if records is not None else self._all_records()
        done = [r for r in pool if r.role == role and r.state == "complete"]
        return min(done, key=lambda r: r.number) if done else None

    def _prune_profiles(self, *, final: bool = False) -> None:
        keep = self.options.keep_profiles
        if keep == "all":
            return
        wanted: set[int] = set()
        if keep == "best":
            records = self._all_records()
            for r in (self._role("baseline", records), self._role("default", records)):
                if r is not None:
                    wanted.add(r.number)
            # Estimates move as trials arrive, so the runners-up keep theirs until the end.
            best = self.best(records)
            sign = 1.0 if self.direction == StudyDirection.MAXIMIZE else -1.0
            ranked = sorted(
                (r for r in records if r.estimate is not None),
                key=lambda r: -sign * (r.estimate or 0.0),
            )
            wanted.update(r.number for r in ranked[: 0 if final else PROFILES_KEPT_DURING_RUN])
            if best is not None:
                wanted.add(best.number)
        # The default trial's profile is read again only through its stored timings, so "none"
        # may drop it too.
        self.rundir.prune_profiles(sorted(self.records.values(), key=lambda r: r.number), wanted)

    def _ordered(self) -> list[TrialRecord]:
        return [self.records[n] for n in sorted(self.records)]

    def _write_tables(self, stopped: str = "") -> None:
        records = self._all_records()
        self.rundir.write_trials_csv(
            records, target.SITES, late_tolerance_us=self.options.late_tolerance_us
        )
        self._write_outputs(records, finished=False, stopped=stopped)

    def _write_outputs(
        self, records: Sequence[TrialRecord], *, finished: bool, stopped: str
    ) -> tuple[dict[str, Any], TrialRecord | None]:
        """summary.json and best_config.json for `records`; the summary and the best trial."""
        best = self.best(records)
        summary = self._summary(finished=finished, stopped=stopped, records=records, best=best)
        self.rundir.write_summary(summary)
        if best is not None:
            self.rundir.write_best(best.config)
        return summary, best

    def _finish(self, stopped: str) -> RunOutcome:
        self._prune_profiles(final=True)
        records = self._all_records()
        summary, best = self._write_outputs(records, finished=True, stopped=stopped)
        return RunOutcome(
            records=records,
            space=self.space,
            best=best,
            baseline=self._role("baseline", records),
            default=self._role("default", records),
            summary=summary,
            stopped=stopped,
        )

    def _summary(
        self,
        *,
        finished: bool,
        stopped: str,
        records: Sequence[TrialRecord],
        best: TrialRecord | None,
    ) -> dict[str, Any]:
        return build_summary(
            records=records,
            best=best,
            baseline=self._role("baseline", records),
            default=self._role("default", records),
            space=self.space,
            workload=self.workload,
            backend=self.backend.name,
            simulated=self.backend.simulated,
            options=self.options,
            study_name=self.study_name,
            storage_url=self.recorded_storage,
            finished=finished,
            stopped=stopped,
            rundir=self.rundir,
            probe_note=str(self.study.user_attrs.get("probe_note", "")) if self.study else "",
            added=self.study.user_attrs.get(ATTR_ADDED, {}) if self.study else {},
        )
