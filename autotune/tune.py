"""The `autotune run` and `autotune export` jobs: command-line values to a Tuner and its view."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from autotune import target
from autotune._io import read_json
from autotune.errors import AutotuneError
from autotune.report.html import write_run_report
from autotune.report.terminal_run import TerminalRunView, print_result
from autotune.rundir import BEST_FILE, RUN_FILE, RunDir, TrialRecord, load_run
from autotune.search import RunObserver, SearchOptions, Tuner, static_space
from autotune.workloads.base import Backend, Workload, setup_of
from autotune.workloads.deployment import LaunchOptions, read_serve_args, resolve

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
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    # additional-config keys autotune adds for the deployment -> (value, why)
    added: Mapping[str, tuple[Any, str]] = field(default_factory=dict)


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
    backend: str = "simulate",
    launch: LaunchOptions | None = None,
    tp: int | None = None,
    ep: int | None = None,
    graph_mode: bool | None = None,
    max_num_batched_tokens: int | None = None,
    flashcomm1: bool | None = None,
    **fields: Any,
) -> tuple[Workload, dict[str, tuple[Any, str]]]:
    """The workload the trials really run with, and the config keys autotune adds (-> why).

    With --resume, values not given again default to the run's.
    """
    stored: dict[str, Any] = {}
    if resume and out is not None:
        rundir = RunDir(out)
        rundir.prepare(resume=True)
        stored = rundir.read_run().get("workload", {})
        model = model if model is not None else stored.get("model")
        max_num_seqs = max_num_seqs if max_num_seqs is not None else stored.get("max_num_seqs")
        tp = tp if tp is not None else stored.get("tp")
        ep = ep if ep is not None else stored.get("ep")
        graph_mode = graph_mode if graph_mode is not None else stored.get("graph_mode")
        if max_num_batched_tokens is None:
            max_num_batched_tokens = stored.get("max_num_batched_tokens")
    if model is None:
        raise AutotuneError("--model is required (a preset name or a local model directory)")
    if max_num_seqs is None:
        raise AutotuneError("--max-num-seqs is required")
    launch = launch or LaunchOptions()
    if backend == "simulate":
        given = [
            flag
            for flag, value in (
                ("--serve-args", launch.serve_args),
                ("--serve-env", launch.serve_env),
                ("--vllm", launch.vllm),
                ("--port", launch.port),
                ("--num-prompts", launch.num_prompts),
            )
            if value
        ]
        if given:
            raise AutotuneError(
                f"{', '.join(given)} only apply to --backend vllm-ascend (the simulator starts no "
                "server)"
            )
    if resume and flashcomm1 is None and "flashcomm1" in stored:
        # The trials so far ran with it; keep them comparable unless a source says otherwise.
        flashcomm1 = bool(stored["flashcomm1"]) if backend == "simulate" else None
    dep = resolve(
        simulated=backend == "simulate",
        serve=read_serve_args(launch.serve_args),
        serve_env=launch.serve_env,
        extra=extra,
        tp=tp,
        ep=ep,
        graph_mode=graph_mode,
        max_num_batched_tokens=max_num_batched_tokens,
        flashcomm1=flashcomm1,
    )
    workload = Workload(
        model=model,
        max_num_seqs=max_num_seqs,
        tp=dep.tp,
        ep=dep.ep,
        graph_mode=dep.graph_mode,
        max_num_batched_tokens=dep.max_num_batched_tokens,
        flashcomm1=dep.flashcomm1,
        **fields,
    )
    return workload, dep.added


def resume_launch(out: Path | None, given: LaunchOptions) -> LaunchOptions:
    """With --resume, the launch settings the run started with, unless given again the same.

    Server settings not given again are taken from the run; different ones would mix trials
    measured on different deployments, so they are refused.
    """
    if out is None or not (out / RUN_FILE).is_file():
        return given
    stored = RunDir(out).read_run().get("launch")
    if not isinstance(stored, dict):
        return given
    was = LaunchOptions(
        vllm=stored.get("vllm"),
        serve_args=tuple(stored.get("serve_args") or ()),
        serve_env=dict(stored.get("serve_env") or {}),
        port=stored.get("port"),
        startup_timeout_s=given.startup_timeout_s,
        bench_timeout_s=given.bench_timeout_s,
        stop_timeout_s=given.stop_timeout_s,
        num_prompts=stored.get("num_prompts"),
    )
    for flag, mine, theirs in (
        ("--serve-args", given.serve_args, was.serve_args),
        ("--serve-env", dict(given.serve_env), dict(was.serve_env)),
        ("--num-prompts", given.num_prompts, was.num_prompts),
    ):
        if mine and mine != theirs:
            raise AutotuneError(
                f"--resume: the run in {out} was started with {flag} {theirs!r}, not {mine!r}"
            )
    return LaunchOptions(
        vllm=given.vllm or was.vllm,
        serve_args=was.serve_args,
        serve_env=was.serve_env,
        port=given.port or was.port,
        startup_timeout_s=given.startup_timeout_s,
        bench_timeout_s=given.bench_timeout_s,
        stop_timeout_s=given.stop_timeout_s,
        num_prompts=was.num_prompts,
    )


def make_backend(
    name: str,
    workload: Workload,
    *,
    seed: int,
    noise: float,
    launch: LaunchOptions | None = None,
) -> Backend:
    """The backend behind `--backend`."""
    if name == "simulate":
        from autotune.workloads.simulate import SimulateBackend

        return SimulateBackend(workload, seed=seed, noise=noise)
    if name == "vllm-ascend":
        from autotune.workloads.vllm_ascend import VllmAscendBackend

        return VllmAscendBackend(workload, launch)
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
    added = {key: value for key, (value, _) in req.added.items()}
    extra = {**added, **req.options.extra}
    target.disabled_config(extra)
    notes = {key: why for key, (_, why) in req.added.items()}
    options = SearchOptions(**{**req.options.__dict__, "extra": extra, "extra_notes": notes})
    options.check()
    req.launch.check()

    if req.resume:
        if req.out is None:
            raise AutotuneError("--resume needs --out: the run directory to continue")
        rundir = RunDir(req.out)
        rundir.prepare(resume=True)
        info = rundir.read_run()
        _check_same_run(info, req)
        study_name = req.study_name or str(info.get("study_name", ""))
        storage = req.storage or info.get("storage")
    else:
        rundir = RunDir(req.out or default_out(req.workload))
        study_name = req.study_name or rundir.path.name
        storage = req.storage

    backend = make_backend(
        req.backend, req.workload, seed=req.seed, noise=req.noise, launch=req.launch
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
    )
    tuner.open()
    if req.backend == "vllm-ascend" and not req.resume:
        # Kept so that --resume runs the remaining trials with the same server settings.
        rundir.write_run({**rundir.read_run(), "launch": req.launch.to_json()})
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
    # The report only lays out what the run directory holds, so it is written last.
    write_run_report(rundir.path)
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


def export_text(run_dir: Path, fmt: str) -> str:
    """The best config of a run as `--additional-config` JSON or as a vllm argument."""
    if fmt not in EXPORT_FORMATS:
        raise AutotuneError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    record = load_run(run_dir)
    if record.best_config is None:
        raise AutotuneError(f"{run_dir} has no {BEST_FILE} yet: no trial has finished")
    target.validate_config(record.best_config)
    compact = json.dumps(record.best_config, separators=(",", ":"))
    if fmt == "vllm-args":
        return f"--additional-config {shlex.quote(compact)}"
    return json.dumps(record.best_config, indent=2)


_ = RunObserver  # the view classes above implement it
