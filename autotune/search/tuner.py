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
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autotune import target
from autotune.errors import AutotuneError
from autotune.lateness import tolerance_ns
from autotune.overlap import analyze, late_sites
from autotune.profile import load_profiles
from autotune.rundir import STUDY_DB, RunDir, TrialRecord
from autotune.search.measure import (
    SiteTiming,
    lateness_by_site,
    profile_inert,
    profile_step_ms,
    site_timings,
)
from autotune.search.options import (
    ATTR_ROLE,
    ATTR_SPACE,
    ATTR_WORKLOAD,
    OBJECTIVES,
    NullObserver,
    RunObserver,
    SearchOptions,
)
from autotune.search.sampler import GuidedSampler, make_sampler
from autotune.search.space import SearchSpace, static_space
from autotune.search.storage import open_study, shown_url
from autotune.search.summary import best_record, build_summary, site_json
from autotune.workloads.base import Backend, TrialResult, Workload, setup_of

# Stop proposing after this many consecutive duplicates: the sampler has nothing new to offer.
MAX_CONSECUTIVE_DUPLICATES = 40
# With --keep-profiles best, the profiles of this many top trials stay until the run ends.
PROFILES_KEPT_DURING_RUN = 3
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
        self.sampler = make_sampler(options.sampler, options.seed, options.objective)
        self.space = static_space(self.setup)
        self.extra = dict(options.extra)
        self.records: dict[int, TrialRecord] = {}
        self._started = 0.0
        self.study: Study | None = None
        self._opened = False
        self.storage: optuna.storages.RDBStorage | None = None

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
            self._open()
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
        self.study, self.storage = open_study(
            self.storage_url, self.study_name, self.direction, self.sampler, resume=self.resume
        )
        return self.study

    def _drop_new_study(self) -> None:
        """Delete the study this run just created (still empty), so a failed start leaves its name
        free in a shared --storage; open_study refused any existing one, so it is ours."""
        if self.study is None or self.storage is None:
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

    def _analyse_probe(self, study: Study) -> None:
        default = next(
            t
            for t in self._trials(study, TrialState.COMPLETE)
            if t.user_attrs.get(ATTR_ROLE) == "default"
        )
        unprofiled = default.user_attrs.get("unprofiled")
        if unprofiled:
            self._static_probe(study, str(unprofiled))
            return
        timings = {
            site: SiteTiming(**data) for site, data in default.user_attrs.get("timings", {}).items()
        }
        silent = profile_inert(timings, self.space)
        sites = tuple(s for s in self.space.sites if s.site not in silent)
        space = SearchSpace(sites=sites, inert={**self.space.inert, **silent})
        seed = space.quantise({s: timings[s].fill_bytes for s in space.names})
        study.set_user_attr(ATTR_SPACE, space.to_json())
        study.set_user_attr("seed_bytes", seed)
        self.space = space
        if space.sites:
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
        study.set_user_attr(ATTR_SPACE, self.space.to_json())
        study.set_user_attr("probe_note", note)
        self.observer.phase(note)
        self.observer.phase("active sites: " + (", ".join(self.space.names) or "none"))

    @property
    def measured(self) -> int:
        """Trials measured so far (duplicates and failures not counted)."""
        return sum(1 for r in self.records.values() if r.state == "complete")

    def _search(self, study: Study) -> str:
        duplicates_in_a_row = 0
        failures_in_a_row = 0
        while self.measured < self.options.trials:
            if (
                self.options.timeout_s is not None
                and time.monotonic() - self._started >= self.options.timeout_s
            ):
                return "timeout"
            if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
                return "exhausted"
            seen = {self.space.key(r.effective_bytes) for r in self._complete()}
            if len(seen) >= self.space.size():
                return "exhausted"
            record = self._run_next(study, probe_config=None)
            duplicates_in_a_row = duplicates_in_a_row + 1 if record.state == "duplicate" else 0
            failures_in_a_row = failures_in_a_row + 1 if record.state == "failed" else 0
            if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise AutotuneError(
                    f"{failures_in_a_row} trials failed in a row (last: {record.error}); "
                    f"see {self.rundir.relative(self.rundir.trial_dir(record.number))}"
                )
        return "trials"

    # -- one trial ---------------------------------------------------------------------------

    def _complete(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.state in ("complete", "duplicate")]

    def _run_next(self, study: Study, *, probe_config: dict[str, Any] | None) -> TrialRecord:
        dists = self.space.distributions()
        trial = study.ask(fixed_distributions=dists)
        role = str(trial.user_attrs.get(ATTR_ROLE, "search"))
        if ATTR_ROLE not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROLE, role)
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
        record = TrialRecord(
            number=trial.number,
            role=role,
            state="running",
            config=config,
            effective_bytes=eff,
            retry_of=trial.user_attrs.get("retry_of"),
            simulated=self.backend.simulated,
        )
        trial.set_user_attr("effective_bytes", eff)
        trial.set_user_attr("config", config)
        self.rundir.write_trial_config(trial.number, config)

        earlier = self._same_as(key) if probe_config is None else None
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
            record.state = "failed"
            record.error = "interrupted"
            record.duration_s = time.monotonic() - start
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            self.rundir.write_trial(record)
            raise
        except AutotuneError as exc:
            record.state = "failed"
            record.error = str(exc)
            record.duration_s = time.monotonic() - start
            trial.set_user_attr("error", str(exc))
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

    def _same_as(self, key: tuple[int, ...]) -> TrialRecord | None:
        for r in sorted(self.records.values(), key=lambda r: r.number):
            if r.state == "complete" and self.space.key(r.effective_bytes) == key:
                return r
        return None

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
        trial.set_user_attr("duplicate_of", earlier.number)
        self._set_constraints(trial, record)
        self.records[trial.number] = record
        self.rundir.write_trial(record)
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
        cut = [w for p in profiles for w in p.warnings if "cut off" in w]
        if cut:
            record.unprofiled = f"the profile is truncated: {cut[0]}"
            return
        record.profile = self.rundir.relative(path)
        record.step_ms = profile_step_ms(profiles)
        trial.set_user_attr("step_ms", record.step_ms)
        record.sites = {s.site: site_json(s) for s in overlap.sites}
        record.lateness_us = lateness_by_site(overlap)
        record.late_sites = late_sites(overlap)
        timings = site_timings(overlap, config, self.setup)
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
            if t.state == TrialState.RUNNING:
                study.tell(t.number, state=TrialState.FAIL)
            elif not t.user_attrs.get("interrupted"):
                continue
            role = t.user_attrs.get(ATTR_ROLE, "search")
            if t.number in retried or role in ("baseline", "default"):
                continue  # probe trials are re-queued by their own phase
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
                trial.user_attrs.get("effective_bytes", record.effective_bytes)
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

    def best(self) -> TrialRecord | None:
        """The best measured trial: feasible first, then by estimated objective."""
        return best_record(list(self.records.values()), self.options.objective)

    def _role(self, role: str) -> TrialRecord | None:
        done = [r for r in self.records.values() if r.role == role and r.state == "complete"]
        return min(done, key=lambda r: r.number) if done else None

    def _prune_profiles(self, *, final: bool = False) -> None:
        keep = self.options.keep_profiles
        if keep == "all":
            return
        wanted: set[int] = set()
        if keep == "best":
            for r in (self._role("baseline"), self._role("default")):
                if r is not None:
                    wanted.add(r.number)
            # Estimates move as trials arrive, so the runners-up keep theirs until the end.
            best = self.best()
            sign = 1.0 if self.direction == StudyDirection.MAXIMIZE else -1.0
            ranked = sorted(
                (r for r in self.records.values() if r.estimate is not None),
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
        self.rundir.write_trials_csv(
            self._ordered(), target.SITES, late_tolerance_us=self.options.late_tolerance_us
        )
        summary = self._summary(finished=False, stopped=stopped)
        self.rundir.write_summary(summary)
        best = self.best()
        if best is not None:
            self.rundir.write_best(best.config)

    def _finish(self, stopped: str) -> RunOutcome:
        self._prune_profiles(final=True)
        summary = self._summary(finished=True, stopped=stopped)
        self.rundir.write_summary(summary)
        best = self.best()
        if best is not None:
            self.rundir.write_best(best.config)
        return RunOutcome(
            records=self._ordered(),
            space=self.space,
            best=best,
            baseline=self._role("baseline"),
            default=self._role("default"),
            summary=summary,
            stopped=stopped,
        )

    def _summary(self, *, finished: bool, stopped: str) -> dict[str, Any]:
        return build_summary(
            records=self._ordered(),
            best=self.best(),
            baseline=self._role("baseline"),
            default=self._role("default"),
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
        )
