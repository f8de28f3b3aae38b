"""The run directory: one folder per `autotune run`, holding all a report or a resume needs.

Layout::

    <run>/
      study.db                  Optuna storage (default; `--storage` may point elsewhere)
      run.json                  what was asked: workload, backend, options, study name and storage
      trials/<NNN>/             one per Optuna trial number
        config.json             the compiled --additional-config of the trial
        trial.json              the trial's record (TrialRecord.to_json)
        bench_r<k>.json, logs, prof/ (kept per --keep-profiles)   written by the backend
      trials.csv                one row per trial
      best_config.json          exactly the JSON for `vllm serve --additional-config`
      summary.json              gains, inert and active sites, best trial, backend, simulated flag

Every file this module writes goes to a temporary name and is renamed, so an interruption never
leaves half a file; a pruned profile leaves its place by a rename before it is deleted. The
backend writes its own files in trials/<NNN>/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autotune._io import read_json, read_json_object
from autotune.errors import AutotuneError

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
BEST_FILE = "best_config.json"
TRIALS_CSV = "trials.csv"
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
CONFIG_FILE = "config.json"
STUDY_DB = "study.db"
PROFILE_DIR = "profile"

MIB = 1024 * 1024

# Trial roles, in the order a run produces them ("guided": a candidate of the profile guide;
# "confirm": a re-measurement of another trial's config in the confirmation phase).
ROLES: tuple[str, ...] = ("baseline", "default", "seed", "guided", "search", "confirm")
# Trial states as written to disk.
STATES: tuple[str, ...] = ("complete", "duplicate", "failed", "running")


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write by name; renamed onto `path` when the block ends
    without an error (readers see the old file or the whole new one), removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        # mkstemp creates 0600; a run directory is shared, so the file gets what open() would give.
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@dataclass
class TrialRecord:
    """One trial as the run directory records it."""

    number: int  # Optuna trial number; also the trials/<NNN> folder
    role: str  # baseline | default | seed | guided | search
    state: str  # complete | duplicate | failed | running
    config: dict[str, Any]  # the compiled additional-config
    effective_bytes: dict[str, int]  # per site, what 0.23 really prefetches (0 = nothing)
    objective: float | None = None  # the study's value (median over repeats)
    throughput: float | None = None  # median output tokens/s over repeats
    throughputs: list[float] = field(default_factory=list)  # one per repeat
    tpot_ms: float | None = None  # median of the repeats' median TPOT
    tpots_ms: list[float] = field(default_factory=list)
    step_ms: float | None = None  # profiled decode step (device span / steps), ms
    # Standard error of step_ms from the spread of the profiled steps (None: one step, no spread)
    step_se_ms: float | None = None
    profiled_steps: int = 0  # decode steps step_ms averages
    # Per site: the step time its segments take (window to consumer matmul, every layer), ms
    segment_ms: dict[str, float] = field(default_factory=dict)
    # Objective estimated from every trial's bench and profile (search.estimates); it moves as
    # trials arrive, so trials.csv carries it and trial.json does not.
    estimate: float | None = None
    feasible: bool | None = None  # every site's lateness within tolerance (None: not measured)
    lateness_us: dict[str, float] = field(default_factory=dict)  # per active site, > 0 is late
    late_sites: list[str] = field(default_factory=list)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # overlap SiteSummary per site
    duplicate_of: int | None = None
    retry_of: int | None = None
    error: str = ""
    profile: str | None = None  # kept profile directory, relative to the run directory
    unprofiled: str = ""  # why a measured trial has no usable profile ("" when it has one)
    bench_files: list[str] = field(default_factory=list)  # relative to the run directory
    bench_s: list[float] = field(default_factory=list)  # duration of each bench run, s
    # A confirmation (role "confirm"): the trial whose config it measures again, and its round.
    confirms: int | None = None
    confirm_round: int | None = None
    logs: list[str] = field(default_factory=list)
    simulated: bool = False
    duration_s: float = 0.0
    host: str = ""  # the host that ran the trial (several workers may share a study)

    @property
    def searched(self) -> bool:
        """Measured by the search: complete and not a confirmation (those are not in --trials)."""
        return self.state == "complete" and self.confirms is None

    def counted(self) -> TrialRecord:
        """The record as tables show it: what a failed (or interrupted) trial measured before it
        stopped does not count, so it carries no measurement."""
        if self.state != "failed":
            return self
        return replace(
            self, objective=None, estimate=None, throughput=None, throughputs=[], tpot_ms=None
        )

    @property
    def effective_mib(self) -> dict[str, float]:
        return {site: value / MIB for site, value in self.effective_bytes.items()}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["estimate"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class RunRecord:
    """Everything a report needs from one run directory."""

    path: Path
    run: dict[str, Any]  # run.json
    summary: dict[str, Any]  # summary.json ({} while the run has not finished once)
    trials: list[TrialRecord]
    best_config: dict[str, Any] | None
    profiles: dict[int, Path]  # trial number -> kept profile directory

    @property
    def simulated(self) -> bool:
        return bool(self.summary.get("simulated", self.run.get("simulated", False)))

    @property
    def best_trial(self) -> TrialRecord | None:
        number = (self.summary.get("best") or {}).get("trial")
        return next((t for t in self.trials if t.number == number), None)


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def study_db(self) -> Path:
        return self.path / STUDY_DB

    def default_storage_url(self) -> str:
        return f"sqlite:///{self.study_db.resolve()}"

    def storage_of(self, info: Mapping[str, Any]) -> str | None:
        """The explicit --storage run.json records, or None for the run's own study.db.

        run.json names the own study as plain `study.db`, so a copied or moved run directory
        keeps using the study beside it; runs written before that named it by absolute path.
        """
        stored = info.get("storage")
        if not isinstance(stored, str) or stored in ("", STUDY_DB):
            return None
        prefix = "sqlite:///"
        legacy = stored.startswith(prefix) and Path(stored[len(prefix) :]).name == STUDY_DB
        if legacy and self.study_db.is_file():
            return None
        return stored

    def storage_url_of(self, info: Mapping[str, Any]) -> str:
        """The storage URL to open for the study run.json records."""
        return self.storage_of(info) or self.default_storage_url()

    def check_new(self) -> None:
        """Refuse, before anything is written, an --out a new run cannot use: a file, or a
        directory that already holds files."""
        if self.path.exists() and not self.path.is_dir():
            raise AutotuneError(
                f"--out {self.path} is a file, not a directory; give a new or empty directory"
            )
        if self.path.is_dir() and any(self.path.iterdir()):
            raise AutotuneError(
                f"--out {self.path} already holds files; pass --resume to continue that run "
                "or choose another directory"
            )

    def prepare(self, *, resume: bool) -> None:
        """Create the directory for a new run, or check that a resumed one exists."""
        if resume:
            if self.path.exists() and not self.path.is_dir():
                raise AutotuneError(
                    f"--resume: --out {self.path} is a file; give the --out directory of an "
                    "earlier run"
                )
            if not (self.path / RUN_FILE).is_file():
                raise AutotuneError(
                    f"--resume: {self.path} holds no autotune run ({RUN_FILE} missing); "
                    "give the --out directory of an earlier run"
                )
            return
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AutotuneError(f"cannot create --out {self.path}: {exc.strerror or exc}") from None
        if not os.access(self.path, os.W_OK):
            raise AutotuneError(f"--out {self.path} is not writable")

    def resume_command(self) -> str:
        """The command that continues this run (run.json holds everything else)."""
        return f"autotune run --resume --out {shlex.quote(str(self.path))}"

    def trial_dir(self, number: int) -> Path:
        return self.path / TRIALS_DIR / f"{number:03d}"

    def relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.path.resolve()))
        except ValueError:
            return str(path)

    def write_run(self, data: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / RUN_FILE, dict(data))

    def read_run(self) -> dict[str, Any]:
        return read_json_object(self.path / RUN_FILE)

    def write_trial_config(self, number: int, config: Mapping[str, Any]) -> Path:
        path = self.trial_dir(number) / CONFIG_FILE
        atomic_write_json(path, dict(config))
        return path

    def write_trial(self, record: TrialRecord) -> None:
        atomic_write_json(self.trial_dir(record.number) / TRIAL_FILE, record.to_json())

    def read_trials(self) -> list[TrialRecord]:
        """Every trial record on disk, by number (trials without a record are skipped)."""
        out: list[TrialRecord] = []
        root = self.path / TRIALS_DIR
        if not root.is_dir():
            return out
        for sub in sorted(root.iterdir()):
            path = sub / TRIAL_FILE
            if sub.is_dir() and path.is_file():
                data = read_json(path)
                if isinstance(data, dict):
                    out.append(TrialRecord.from_json(data))
        return sorted(out, key=lambda t: t.number)

    def write_trials_csv(
        self,
        records: Sequence[TrialRecord],
        sites: Sequence[str],
        *,
        late_tolerance_us: float | None = None,
    ) -> None:
        text = trials_csv(records, sites, late_tolerance_us=late_tolerance_us)
        atomic_write_text(self.path / TRIALS_CSV, text)

    def write_best(self, config: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / BEST_FILE, dict(config))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, dict(summary))

    def prune_profiles(self, records: Iterable[TrialRecord], keep: Iterable[int]) -> list[int]:
        """Delete the profile folders of every trial not in `keep`; return the numbers pruned.

        The folder is renamed away first and deleted once trial.json no longer names it, so an
        interruption never leaves a trial naming a half-deleted profile (a left-over hidden
        `.pruned-*` folder goes at the next prune)."""
        wanted = set(keep)
        pruned: list[int] = []
        for record in records:
            if record.profile is None or record.number in wanted:
                continue
            target = self.path / record.profile
            # Hidden: profile discovery skips it while it is being deleted.
            doomed = target.with_name(f".pruned-{target.name}")
            if target.is_dir():
                shutil.rmtree(doomed, ignore_errors=True)
                target.rename(doomed)
            record.profile = None
            self.write_trial(record)
            shutil.rmtree(doomed, ignore_errors=True)
            pruned.append(record.number)
        return pruned


def trials_csv(
    records: Sequence[TrialRecord],
    sites: Sequence[str],
    *,
    late_tolerance_us: float | None = None,
) -> str:
    """trials.csv: one row per trial, effective MiB per site, measurements and lateness.

    `late_sites` follows autotune.lateness; `late_tolerance_us` is the tolerance it used."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "trial",
            "role",
            "state",
            "duplicate_of",
            "confirms",
            *[f"{site}_mib" for site in sites],
            "objective",
            "estimate",
            "throughput",
            "throughput_min",
            "throughput_max",
            "tpot_ms",
            "feasible",
            "late_sites",
            "late_tolerance_us",
            "repeats",
            "duration_s",
            "error",
            "unprofiled",
            "host",
        ]
    )
    for r in (record.counted() for record in records):
        tps = r.throughputs
        writer.writerow(
            [
                r.number,
                r.role,
                r.state,
                "" if r.duplicate_of is None else r.duplicate_of,
                "" if r.confirms is None else r.confirms,
                *[_num(r.effective_bytes.get(site, 0) / MIB, 3) for site in sites],
                _num(r.objective, 4),
                _num(r.estimate, 4),
                _num(r.throughput, 3),
                _num(min(tps) if tps else None, 3),
                _num(max(tps) if tps else None, 3),
                _num(r.tpot_ms, 4),
                "" if r.feasible is None else str(r.feasible).lower(),
                " ".join(r.late_sites),
                "" if late_tolerance_us is None else f"{late_tolerance_us:g}",
                len(tps),
                _num(r.duration_s, 2),
                r.error,
                r.unprofiled,
                r.host,
            ]
        )
    return buffer.getvalue()


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def load_run(run_dir: Path) -> RunRecord:
    """Read a run directory (finished or interrupted) for reports and `autotune export`."""
    rundir = RunDir(Path(run_dir))
    if not rundir.path.is_dir():
        raise AutotuneError(f"{rundir.path} is not a directory")
    if not (rundir.path / RUN_FILE).is_file():
        raise AutotuneError(f"{rundir.path} holds no autotune run ({RUN_FILE} missing)")
    run = rundir.read_run()
    summary_path = rundir.path / SUMMARY_FILE
    summary = read_json_object(summary_path) if summary_path.is_file() else {}
    best_path = rundir.path / BEST_FILE
    best = read_json_object(best_path) if best_path.is_file() else None
    trials = rundir.read_trials()
    profiles = {
        t.number: rundir.path / t.profile
        for t in trials
        if t.profile is not None and (rundir.path / t.profile).exists()
    }
    return RunRecord(
        path=rundir.path,
        run=run,
        summary=summary,
        trials=trials,
        best_config=best,
        profiles=profiles,
    )


# What each --keep-profiles value keeps, for the line that says a profile is gone.
KEPT_BY = {
    "best": "only the baseline, vendor default and best trials keep theirs",
    "none": "no trial keeps its profile",
}


def why_no_profile(trial: TrialRecord, keep_profiles: str | None) -> str:
    """Why a trial has no profile to read, in a few words ("" when it names one)."""
    if trial.profile is not None:
        return ""
    if trial.state == "failed":
        return f"the trial failed ({trial.error or 'no reason recorded'})"
    if trial.state == "duplicate":
        twin = trial.duplicate_of
        where = "" if twin is None else f": trials/{twin:03d} ran the same effective bytes"
        return f"it was not run (a duplicate){where}"
    if trial.state == "running":
        return "the trial has not finished"
    if trial.unprofiled:
        return f"it was measured without a usable profile: {trial.unprofiled}"
    kept = KEPT_BY.get(keep_profiles or "")
    flag = f"--keep-profiles {keep_profiles}" if keep_profiles else "--keep-profiles"
    return f"its profile was removed after the run ({flag}{': ' + kept if kept else ''})"


def check_output_file(flag: str, path: Path) -> None:
    """Refuse, before any work, an output file path that cannot be written as given: a
    directory, or a file in a folder that does not exist (it is not created)."""
    if path.is_dir():
        raise AutotuneError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise AutotuneError(
            f"{flag} {path}: the folder {parent} does not exist (autotune does not create it)"
        )
    if not os.access(parent, os.W_OK):
        raise AutotuneError(f"{flag} {path}: the folder {parent} is not writable")


@dataclass(frozen=True)
class ProfileInput:
    """What `autotune analyze PATH` reads: profiles of one trial of a run, or any folder."""

    path: Path  # where to look for *_ascend_pt folders (or the file given)
    trial: TrialRecord | None = None  # the run's trial whose profile this is
    best: bool = False  # that trial is the run's best
    note: str = ""  # which trial was read, and why that one


def profile_input(path: Path, trial: int | None = None) -> ProfileInput:
    """The profiles `analyze` reads at `path`: a run directory gives its best trial (`trial`
    picks another), trials/NNN that trial; a folder holding several trials of a run is refused,
    as their configs differ and one verdict over them would mean nothing."""
    if (path / RUN_FILE).is_file():
        return _run_trial(path, trial)
    if trial is not None:
        raise AutotuneError(
            f"--trial {trial}: {path} is not a run directory (no {RUN_FILE}); give the --out "
            "directory of an autotune run"
        )
    if (path / TRIAL_FILE).is_file():
        record = TrialRecord.from_json(read_json_object(path / TRIAL_FILE))
        run_dir = path.parent.parent
        keep = _keep_profiles(run_dir) if (run_dir / RUN_FILE).is_file() else None
        what = f"{path}: trial {record.number:03d} ({record.role})"
        return _trial_input(path, record, keep, what)
    if path.is_dir():
        _refuse_several_trials(path)
    return ProfileInput(path)


def _keep_profiles(run_dir: Path) -> str | None:
    options = read_json_object(run_dir / RUN_FILE).get("options")
    keep = options.get("keep_profiles") if isinstance(options, dict) else None
    return keep if isinstance(keep, str) else None


def _run_trial(run_dir: Path, number: int | None) -> ProfileInput:
    record = load_run(run_dir)
    best = record.best_trial
    have = ", ".join(str(t.number) for t in record.trials) or "none"
    if number is None and best is None:
        elsewhere = (record.summary.get("best") or {}).get("trial")
        if elsewhere is not None:
            raise AutotuneError(
                f"{run_dir}: the best trial, {elsewhere}, ran on another worker of the shared "
                f"study (its --out holds its profile); pass --trial N for one of this run's "
                f"trials ({have})"
            )
        raise AutotuneError(
            f"{run_dir}: the run has no best trial yet (no trial finished); pass --trial N to "
            "read one"
        )
    wanted = best.number if number is None and best is not None else number
    chosen = next((t for t in record.trials if t.number == wanted), None)
    if chosen is None:
        raise AutotuneError(
            f"--trial {number}: {run_dir} holds no trial {number} (trials here: {have})"
        )
    is_best = best is not None and best.number == chosen.number
    how = "the best trial" if is_best else "picked by --trial"
    if number is None:
        how += "; --trial N reads another"
    return _trial_input(
        RunDir(run_dir).trial_dir(chosen.number),
        chosen,
        _keep_profiles(run_dir),
        f"{run_dir}: trial {chosen.number:03d} ({chosen.role}, {how})",
        best=is_best,
        others=[t.number for t in record.trials if t.number in record.profiles],
    )


def _trial_input(
    trial_dir: Path,
    trial: TrialRecord,
    keep: str | None,
    what: str,
    *,
    best: bool = False,
    others: Sequence[int] = (),
) -> ProfileInput:
    """The trial's own profile; one clear line when it has none."""
    why = why_no_profile(trial, keep)
    if not _holds_profile(trial_dir):
        why = why or f"its profile folder {trial.profile} is missing"
        hint = f"; trials with a profile: {', '.join(f'{n:03d}' for n in others)}" if others else ""
        raise AutotuneError(f"{what} has no profile to read: {why}{hint}")
    note = f"reading {what}"
    if why:
        note += f"; its record says {why}"
    return ProfileInput(trial_dir, trial, best, note)


def _holds_profile(folder: Path) -> bool:
    from autotune.profile.discover import discover

    try:
        return bool(discover(folder))
    except AutotuneError:
        return False


def _trial_of(root: Path) -> Path | None:
    """The trials/NNN folder of a run that holds `root`, if any."""
    for folder in (root, *root.parents):
        if (
            folder.parent.name == TRIALS_DIR
            and (folder / TRIAL_FILE).is_file()
            and (folder.parent.parent / RUN_FILE).is_file()
        ):
            return folder
    return None


def _refuse_several_trials(path: Path) -> None:
    """Profiles of several trials (several configs) under one folder: no pooled verdict."""
    from autotune.profile.discover import discover

    try:
        found = discover(path)
    except AutotuneError:
        return  # the reader says what is missing
    trials = sorted({t for f in found if (t := _trial_of(f.root.resolve())) is not None})
    if len(trials) > 1:
        names = ", ".join(f"{t.parent.parent.name}/{TRIALS_DIR}/{t.name}" for t in trials)
        raise AutotuneError(
            f"{path} holds the profiles of {len(trials)} trials ({names}), each run with another "
            "config; one verdict over them would mean nothing: give one trials/NNN, or the run "
            "directory (its best trial) with --trial N for another"
        )
