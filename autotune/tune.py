"""The `autotune run` and `autotune export` jobs: command-line values to a Tuner and its view."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from autotune import target
from autotune._io import read_json
from autotune.errors import AutotuneError
from autotune.report.html import write_report
from autotune.report.terminal_run import TerminalRunView, print_result
from autotune.rundir import BEST_FILE, RunDir, TrialRecord
from autotune.search import RunObserver, SearchOptions, Tuner, static_space
from autotune.search.study_view import study_run
from autotune.workloads.base import Backend, Workload, setup_of

BACKENDS: tuple[str, ...] = ("vllm-ascend", "simulate")
EXPORT_FORMATS: tuple[str, ...] = ("additional-config", "vllm-args")


@dataclass(frozen=True)
class RunRequest:
    """Everything `autotune run` was asked, after parsing."""

    workload: Workload
    backend: str
    options: SearchOptions
    out: Path | None
    storage: str | None
    study_name: str | None
    resume: bool
    seed: int
    noise: float
    json_out: bool
    heartbeat_s: int = 30  # shared database storage: seconds between a worker's heartbeats
    sim_trial_s: float = 0.0  # simulator: seconds each trial sleeps, standing in for NPU time


def read_extra(value: str | None) -> dict[str, Any]:
    """The other --additional-config keys: inline JSON or a JSON file; one-line error otherwise."""
    if value is None:
        return {}
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AutotuneError(f"--additional-config is not valid JSON: {exc}") from None
        where = "--additional-config"
    else:
        path = Path(value).expanduser()
        if not path.is_file():
            raise AutotuneError(
                f"--additional-config {path}: no such file (give a JSON file or inline JSON)"
            )
        data = read_json(path)
        where = f"--additional-config {path}"
    if not isinstance(data, dict):
        raise AutotuneError(f"{where} must hold a JSON object")
    if "weight_prefetch_config" in data:
        raise AutotuneError(f"{where} must not set weight_prefetch_config; the tuner writes it")
    return data


def make_workload(
    *,
    model: str | None,
    max_num_seqs: int | None,
    resume: bool,
    out: Path | None,
    extra: Mapping[str, Any],
    flashcomm1: bool,
    **fields: Any,
) -> Workload:
    """The workload from the flags; with --resume, model and max-num-seqs default to the run's."""
    if resume and (model is None or max_num_seqs is None) and out is not None:
        rundir = RunDir(out)
        rundir.prepare(resume=True)
        stored = rundir.read_run().get("workload", {})
        model = model if model is not None else stored.get("model")
        max_num_seqs = max_num_seqs if max_num_seqs is not None else stored.get("max_num_seqs")
    if model is None:
        raise AutotuneError("--model is required (a preset name or a local model directory)")
    if max_num_seqs is None:
        raise AutotuneError("--max-num-seqs is required")
    # The additional-config decides flashcomm1 when it sets it: the trials run with that JSON.
    fc1 = extra.get("enable_flashcomm1", flashcomm1)
    if not isinstance(fc1, bool):
        raise AutotuneError("--additional-config: enable_flashcomm1 must be true or false")
    return Workload(model=model, max_num_seqs=max_num_seqs, flashcomm1=fc1, **fields)


def make_backend(
    name: str, workload: Workload, *, seed: int, noise: float, sim_trial_s: float = 0.0
) -> Backend:
    """The backend behind `--backend`."""
    if name == "simulate":
        from autotune.workloads.simulate import SimulateBackend

        return SimulateBackend(workload, seed=seed, noise=noise, trial_s=sim_trial_s)
    if name == "vllm-ascend":
        from autotune.workloads.vllm_ascend import VllmAscendBackend

        return VllmAscendBackend(workload)
    raise AutotuneError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def default_out(workload: Workload) -> Path:
    """runs/<model>-<max-num-seqs>-<timestamp>."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(workload.model).name or workload.model)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{workload.max_num_seqs}-{stamp}"


def check_workload(workload: Workload) -> None:
    """One-line errors for values no trial could run with (the model is checked by the target)."""
    if workload.max_num_seqs <= 0:
        raise AutotuneError(
            f"--max-num-seqs must be a positive integer, got {workload.max_num_seqs}"
        )
    for flag, value in (
        ("--tp", workload.tp),
        ("--ep", workload.ep),
        ("--input-len", workload.input_len),
        ("--output-len", workload.output_len),
    ):
        if value <= 0:
            raise AutotuneError(f"{flag} must be a positive integer, got {value}")
    # Loads the model (preset or directory) and checks that it splits over tp/ep.
    static_space(setup_of(workload))


def run_job(req: RunRequest, console: Console) -> dict[str, Any]:
    """Run or resume a study; draw progress unless --json; return the summary."""
    check_workload(req.workload)
    extra = {"enable_flashcomm1": req.workload.flashcomm1, **req.options.extra}
    target.disabled_config(extra)
    options = SearchOptions(**{**req.options.__dict__, "extra": extra})
    options.check()

    if req.resume:
        if req.out is None:
            raise AutotuneError("--resume needs --out: the run directory to continue")
        rundir = RunDir(req.out)
        rundir.prepare(resume=True)
        info = rundir.read_run()
        _check_same_run(info, req)
        study_name = req.study_name or str(info.get("study_name", ""))
        storage = req.storage or info.get("storage")
        shared = bool(info.get("shared")) or req.storage is not None
    else:
        rundir = RunDir(req.out or default_out(req.workload))
        study_name = req.study_name or rundir.path.name
        storage = req.storage
        # An explicit --storage may hold a study other workers run too: join it if it exists.
        shared = storage is not None
    if req.heartbeat_s < 1:
        raise AutotuneError(f"--heartbeat must be at least 1 second, got {req.heartbeat_s}")

    backend = make_backend(
        req.backend, req.workload, seed=req.seed, noise=req.noise, sim_trial_s=req.sim_trial_s
    )
    backend.check()
    tuner = Tuner(
        workload=req.workload,
        backend=backend,
        rundir=rundir,
        options=options,
        study_name=study_name,
        storage_url=storage,
        resume=req.resume,
        shared=shared,
        heartbeat_s=req.heartbeat_s,
    )
    tuner.open()
    if req.json_out:
        outcome = tuner.run()
    else:
        view = TerminalRunView(
            console,
            sites=tuner.space.names,
            budget=options.trials,
            simulated=backend.simulated,
            done=tuner.measured,
            late_tolerance_us=options.late_tolerance_us,
        )
        tuner.observer = _SpaceTracking(view, tuner)
        with view:
            outcome = tuner.run()
    # The report only lays out what the run directory (and a shared study) holds: written last.
    write_report(study_run(rundir.path), rundir.path / "report.html")
    if not req.json_out:
        best = read_json(rundir.path / BEST_FILE) if (rundir.path / BEST_FILE).is_file() else None
        print_result(console, outcome.summary, best)
    return outcome.summary


class _SpaceTracking:
    """Passes progress to the view, narrowing its columns once the probe found the active sites."""

    def __init__(self, view: TerminalRunView, tuner: Tuner) -> None:
        self.view = view
        self.tuner = tuner

    def phase(self, message: str) -> None:
        self.view.set_sites(self.tuner.space.names)
        self.view.phase(message)

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None:
        self.view.trial_started(number, role, effective_bytes)

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        self.view.trial_finished(record, best)


def _check_same_run(info: Mapping[str, Any], req: RunRequest) -> None:
    """--resume must continue the same workload: a different one would mix measurements."""
    stored = info.get("workload", {})
    mine = req.workload.__dict__
    differ = [
        k
        for k in ("model", "max_num_seqs", "tp", "ep", "flashcomm1", "graph_mode")
        if k in stored and stored[k] != mine[k]
    ]
    if differ:
        pairs = ", ".join(f"{k}={stored[k]!r} (asked {mine[k]!r})" for k in differ)
        raise AutotuneError(f"--resume: the run in {req.out} was started with {pairs}")
    if info.get("backend") and info["backend"] != req.backend:
        raise AutotuneError(
            f"--resume: the run in {req.out} used --backend {info['backend']}, not {req.backend}"
        )


def export_text(
    run_dir: Path | None,
    fmt: str,
    *,
    storage: str | None = None,
    study_name: str | None = None,
) -> str:
    """The best config of a run (of its whole study when shared) as JSON or a vllm argument."""
    if fmt not in EXPORT_FORMATS:
        raise AutotuneError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    record = study_run(run_dir, storage=storage, study_name=study_name)
    if record.best_config is None:
        where = run_dir if run_dir is not None else f"study {study_name!r}"
        raise AutotuneError(f"{where} has no {BEST_FILE} yet: no trial has finished")
    target.validate_config(record.best_config)
    compact = json.dumps(record.best_config, separators=(",", ":"))
    if fmt == "vllm-args":
        return f"--additional-config {shlex.quote(compact)}"
    return json.dumps(record.best_config, indent=2)


def report_job(
    run_dir: Path | None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    html: Path | None = None,
) -> Path:
    """Write the HTML report of a run (of its whole study when shared); return its path."""
    record = study_run(run_dir, storage=storage, study_name=study_name)
    if html is None:
        html = record.path / "report.html" if run_dir is not None else Path(f"{study_name}.html")
    try:
        return write_report(record, html)
    except OSError as exc:
        raise AutotuneError(f"cannot write {html}: {exc.strerror or exc}") from None


_ = RunObserver  # the view classes above implement it
