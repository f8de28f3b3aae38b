"""The `autotune run` and `autotune export` jobs: command-line values to a Tuner and its view."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from autotune import target
from autotune._io import read_json
from autotune.errors import AutotuneError
from autotune.lateness import rule_text
from autotune.report.html import write_report, write_run_report
from autotune.report.terminal_run import (
    PlainRunView,
    TerminalRunView,
    past_rows,
    plural,
    print_result,
)
from autotune.rundir import BEST_FILE, RunDir, TrialRecord, load_run
from autotune.search import RunObserver, RunOutcome, SearchOptions, Tuner, static_space
from autotune.search.study_view import study_run
from autotune.workloads.base import Backend, Workload, check_counts, setup_of
from autotune.workloads.deployment import LaunchOptions, parse_serve_env, resolve
from autotune.workloads.preflight import Preflight, preflight
from autotune.workloads.vllm_args import read_serve_args, split_serve_args
from autotune.workloads.vllm_ascend import VllmAscendBackend

BACKENDS: tuple[str, ...] = ("vllm-ascend", "simulate")
EXPORT_FORMATS: tuple[str, ...] = ("additional-config", "vllm-args")
DEFAULT_TRIALS = 12


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
    heartbeat_s: int = 30  # shared database storage: seconds between a worker's heartbeats
    sim_trial_s: float = 0.0  # simulator: seconds each trial sleeps, standing in for NPU time
    ideal: bool = False  # simulator: profiles without the realistic effects
    check: bool = False  # --check: only the checks before the first trial, and the workload


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

    Parallelism, graph mode, max-num-batched-tokens and flashcomm1 are read from what `vllm serve`
    gets (--serve-args, --serve-env, --additional-config) and the flags; see deployment.resolve.
    """
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
                ("--allow-any-vllm", launch.allow_any_vllm),
                ("--require-profiles", launch.require_profiles),
            )
            if value
        ]
        if given:
            raise AutotuneError(
                f"{', '.join(given)} only apply to --backend vllm-ascend (the simulator starts no "
                "server)"
            )
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
        graph_mode=dep.graph.graphs,
        compile_mode=dep.graph.compile_mode,
        cudagraph_mode=dep.graph.cudagraph_mode,
        npugraph_ex=dep.graph.npugraph_ex,
        fuse_norm_quant=dep.graph.fuse_norm_quant,
        max_num_batched_tokens=dep.max_num_batched_tokens,
        flashcomm1=dep.flashcomm1,
        row_op=dep.row_op,
        **fields,
    )
    return workload, dep.added


# `autotune run` flags a resume takes from run.json when they are not given again.
RESUMED_WORKLOAD_FLAGS: tuple[str, ...] = (
    "model",
    "max_num_seqs",
    "tp",
    "ep",
    "hardware",
    "flashcomm1",
    "graph_mode",
    "max_num_batched_tokens",
    "input_len",
    "output_len",
    "profile_steps",
)
RESUMED_OPTION_FLAGS: dict[str, str] = {
    "trials": "trials",
    "timeout": "timeout_s",
    "objective": "objective",
    "late_tolerance_us": "late_tolerance_us",
    "repeats": "repeats",
    "confirm": "confirm",
    "sampler": "sampler",
    "seed": "seed",
    "keep_profiles": "keep_profiles",
}


def recorded_flags(values: Mapping[str, Any], given: set[str]) -> dict[str, Any]:
    """With --resume: every flag not given again takes the value run.json recorded, so the run
    continues as it was started (the trial budget included)."""
    out = values.get("out")
    if out is None:
        raise AutotuneError("--resume needs --out: the run directory to continue")
    rundir = RunDir(Path(out))
    rundir.prepare(resume=True)
    info = rundir.read_run()
    workload = info.get("workload") or {}
    options = info.get("options") or {}
    recorded: dict[str, Any] = {k: workload[k] for k in RESUMED_WORKLOAD_FLAGS if k in workload}
    launch = info.get("launch")
    if isinstance(launch, dict):
        # A real run reads its graph mode from --serve-args again, and passes
        # --max-num-batched-tokens to vllm serve only if it was given (runs recorded before
        # that was kept passed the workload's value).
        recorded.pop("graph_mode", None)
        recorded["max_num_batched_tokens"] = launch.get(
            "max_num_batched_tokens", workload.get("max_num_batched_tokens")
        )
    recorded.update({f: options[k] for f, k in RESUMED_OPTION_FLAGS.items() if k in options})
    if "constraint" in options:
        recorded["late_is_infeasible"] = bool(options["constraint"])
    if isinstance(info.get("backend"), str):
        recorded["backend"] = info["backend"]
    simulator = info.get("simulator")
    if isinstance(simulator, dict) and "noise" in simulator:
        recorded["noise"] = simulator["noise"]
    if isinstance(simulator, dict) and "ideal" in simulator:
        recorded["ideal"] = bool(simulator["ideal"])
    extra = options.get("extra")
    if isinstance(extra, dict):
        # enable_flashcomm1 comes back through --flashcomm1; the other keys as given.
        rest = {k: v for k, v in extra.items() if k != "enable_flashcomm1"}
        recorded["additional_config"] = json.dumps(rest) if rest else None
    recorded.update(_recorded_launch(launch, values, given, rundir))
    merged = dict(values)
    merged.update({k: v for k, v in recorded.items() if k not in given})
    return merged


def _recorded_launch(
    launch: Any, values: Mapping[str, Any], given: set[str], rundir: RunDir
) -> dict[str, Any]:
    """The server settings a real run was started with, as flag values. Given again, the
    deployment's (--serve-args, --serve-env) must be the same: trials on another deployment
    would not compare."""
    if not isinstance(launch, dict):
        return {}
    recorded: dict[str, Any] = {
        "serve_args": shlex.join(launch.get("serve_args") or ()) or None,
        "serve_env": [f"{k}={v}" for k, v in (launch.get("serve_env") or {}).items()] or None,
        "vllm": launch.get("vllm"),
        "port": launch.get("port"),
        "num_prompts": launch.get("num_prompts"),
        "analyse_timeout": launch.get("analyse_timeout_s", 1800.0),
        "allow_any_vllm": bool(launch.get("allow_any_vllm", False)),
        "require_profiles": bool(launch.get("require_profiles", False)),
    }
    for flag, now, then in (
        (
            "--serve-args",
            split_serve_args(values.get("serve_args")),
            tuple(launch.get("serve_args") or ()),
        ),
        (
            "--serve-env",
            parse_serve_env(values.get("serve_env") or []),
            dict(launch.get("serve_env") or {}),
        ),
    ):
        name = flag.removeprefix("--").replace("-", "_")
        if name in given and now != then:
            raise AutotuneError(
                f"--resume: the run in {rundir.path} was started with {flag} {then!r}, not {now!r}"
            )
    return recorded


def launch_from_flags(v: Mapping[str, Any]) -> LaunchOptions:
    """The real backend's server settings from `autotune run`'s flags."""
    return LaunchOptions(
        vllm=v.get("vllm"),
        serve_args=split_serve_args(v.get("serve_args")),
        serve_env=parse_serve_env(v.get("serve_env") or []),
        port=v.get("port"),
        startup_timeout_s=v.get("startup_timeout", 1800.0),
        bench_timeout_s=v.get("bench_timeout", 3600.0),
        stop_timeout_s=v.get("stop_timeout", 60.0),
        num_prompts=v.get("num_prompts"),
        max_num_batched_tokens=v.get("max_num_batched_tokens"),
        analyse_timeout_s=v.get("analyse_timeout", 1800.0),
        allow_any_vllm=bool(v.get("allow_any_vllm", False)),
        require_profiles=bool(v.get("require_profiles", False)),
    )


def request_from_flags(values: Mapping[str, Any], given: set[str]) -> RunRequest:
    """The RunRequest of `autotune run`'s flags (`given`: the flags on the command line)."""
    v = recorded_flags(values, given) if values.get("resume") else dict(values)
    extra = read_extra(v["additional_config"])
    backend = v["backend"]
    launch = launch_from_flags(v)
    workload, added = make_workload(
        model=v["model"],
        max_num_seqs=v["max_num_seqs"],
        extra=extra,
        backend=backend,
        launch=launch,
        flashcomm1=v["flashcomm1"],
        tp=v["tp"],
        ep=v["ep"],
        graph_mode=v["graph_mode"],
        max_num_batched_tokens=v.get("max_num_batched_tokens"),
        hardware=v["hardware"],
        input_len=v["input_len"],
        output_len=v["output_len"],
        profile_steps=v["profile_steps"],
    )
    repeats = v["repeats"]
    options = SearchOptions(
        trials=DEFAULT_TRIALS if v["trials"] is None else v["trials"],
        timeout_s=v["timeout"],
        objective=v["objective"],
        late_tolerance_us=v["late_tolerance_us"],
        constraint=v["late_is_infeasible"],
        repeats=repeats if repeats is not None else (1 if backend == "simulate" else 3),
        confirm=_confirm_rounds(v.get("confirm"), backend),
        sampler=v["sampler"],
        seed=v["seed"],
        keep_profiles=v["keep_profiles"],
        extra=extra,
    )
    return RunRequest(
        workload=workload,
        backend=backend,
        options=options,
        out=v["out"],
        storage=v["storage"],
        study_name=v["study_name"],
        resume=v["resume"],
        seed=v["seed"],
        noise=v["noise"],
        json_out=v["json_out"],
        launch=launch,
        added=added,
        heartbeat_s=v.get("heartbeat", 30),
        sim_trial_s=v.get("sim_trial_seconds", 0.0),
        ideal=bool(v.get("ideal", False)),
        check=bool(v.get("check", False)),
    )


# Confirmation rounds when --confirm is not given: on NPU a trial costs minutes and a bench run
# is as noisy as the effects, so the pick is re-measured; the simulator's runs cost nothing to
# repeat but are there to develop on, so it confirms only when asked.
DEFAULT_CONFIRM = {"vllm-ascend": 2, "simulate": 0}


def _confirm_rounds(value: Any, backend: str) -> int:
    if value is None:
        return DEFAULT_CONFIRM.get(backend, 0)
    return int(value)


def make_backend(
    name: str,
    workload: Workload,
    *,
    seed: int,
    noise: float,
    sim_trial_s: float = 0.0,
    launch: LaunchOptions | None = None,
    ideal: bool = False,
) -> Backend:
    """The backend behind `--backend`."""
    if name == "simulate":
        from autotune.workloads.simulate import IDEAL, REALISTIC, SimulateBackend

        realism = IDEAL if ideal else REALISTIC
        return SimulateBackend(
            workload, seed=seed, noise=noise, trial_s=sim_trial_s, realism=realism
        )
    if ideal:
        raise AutotuneError("--ideal only applies to --backend simulate")
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
    check_counts(
        (
            ("--tp", workload.tp),
            ("--ep", workload.ep),
            ("--input-len", workload.input_len),
            ("--output-len", workload.output_len),
            ("--profile-steps", workload.profile_steps),
            ("--max-num-batched-tokens", workload.max_num_batched_tokens),
        )
    )
    if workload.output_len < 2:
        raise AutotuneError(
            f"--output-len must be at least 2 (a decode step needs a second token), got "
            f"{workload.output_len}"
        )
    # Loads the model (preset or directory) and checks that it splits over tp/ep.
    static_space(setup_of(workload))
    # A deployment `vllm serve` would abort on never becomes a trial.
    target.check_setup(setup_of(workload))


def run_job(req: RunRequest, console: Console) -> dict[str, Any]:
    """Run or resume a study; draw progress unless --json; return the summary."""
    check_workload(req.workload)
    added = {key: value for key, (value, _) in req.added.items()}
    extra = {**added, **req.options.extra}
    target.disabled_config(extra)
    notes_by_key = {key: why for key, (_, why) in req.added.items()}
    options = SearchOptions(**{**req.options.__dict__, "extra": extra, "extra_notes": notes_by_key})
    options.check()
    req.launch.check()
    # Messages that are not the result go to stderr under --json, so stdout stays one JSON.
    notes = Console(stderr=True, highlight=False, soft_wrap=True) if req.json_out else console

    info: dict[str, Any] = {}
    if req.resume:
        if req.out is None:
            raise AutotuneError("--resume needs --out: the run directory to continue")
        rundir = RunDir(req.out)
        rundir.prepare(resume=True)
        info = rundir.read_run()
        _check_same_run(info, req)
        _check_budget(rundir, options.trials)
        options = replace(options, extra_notes=_recorded_notes(info, options.extra_notes))
        study_name = req.study_name or str(info.get("study_name", ""))
        storage = req.storage or rundir.storage_of(info)
        shared = bool(info.get("shared")) or req.storage is not None
    else:
        rundir = RunDir(req.out or default_out(req.workload))
        # Before the storage opens: a bad --out leaves no study behind.
        rundir.check_new()
        study_name = req.study_name or rundir.path.name
        storage = req.storage
        # An explicit --storage may hold a study other workers run too: join it if it exists.
        shared = storage is not None
    if req.heartbeat_s < 1:
        raise AutotuneError(f"--heartbeat must be at least 1 second, got {req.heartbeat_s}")

    backend = make_backend(
        req.backend,
        req.workload,
        seed=req.seed,
        noise=req.noise,
        sim_trial_s=req.sim_trial_s,
        launch=req.launch,
        ideal=req.ideal,
    )
    # On stderr under --json, so stdout stays one JSON.
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    found = _check_backend(backend, errors)
    if req.check:
        for line in workload_lines(req.workload, backend):
            notes.print(line, markup=False)
        notes.print(
            f"check passed{f' with {len(found.warnings)} warning(s)' if found.warnings else ''}: "
            "nothing found that would stop the first trial",
            markup=False,
        )
        return {
            "check": {"warnings": found.warnings, "notes": found.notes},
            "workload": asdict(req.workload),
        }
    if isinstance(backend, VllmAscendBackend):
        backend.progress = lambda message: notes.print(message, markup=False)
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
    if req.resume:
        _record_budget(rundir, info, options.trials)
    elif req.backend == "vllm-ascend":
        # Kept so that --resume runs the remaining trials with the same server settings.
        rundir.write_run({**rundir.read_run(), "launch": req.launch.to_json()})
    else:
        # Kept so that --resume measures the remaining trials with the same modelled noise and
        # profile effects (the seed is among the options).
        rundir.write_run(
            {**rundir.read_run(), "simulator": {"noise": req.noise, "ideal": req.ideal}}
        )
    if not req.json_out:
        for line in workload_lines(req.workload, backend):
            console.print(line, markup=False)
    notes.print(f"run directory: {rundir.path}", markup=False)
    try:
        if req.json_out:
            outcome = tuner.run()
        else:
            outcome = _run_with_view(tuner, console, options, backend.simulated)
    except KeyboardInterrupt:
        # On stderr, beside the "interrupted" line, also when stdout goes to a log.
        _after_interrupt(rundir, tuner, Console(stderr=True, highlight=False, soft_wrap=True))
        raise
    # The report only lays out what the run directory (and a shared study) holds: written last.
    write_report(study_run(rundir.path), rundir.path / "report.html")
    if not req.json_out:
        best = read_json(rundir.path / BEST_FILE) if (rundir.path / BEST_FILE).is_file() else None
        print_result(console, outcome.summary, best)
    return outcome.summary


def _check_backend(backend: Backend, errors: Console) -> Preflight:
    """The backend's checks before any trial; on the real backend the whole preflight, its
    warnings and notes printed, every error one line (the last one raised)."""
    if not isinstance(backend, VllmAscendBackend):
        backend.check()
        return Preflight()
    found = preflight(backend)
    for line in found.notes:
        errors.print(f"note: {line}", markup=False)
    for line in found.warnings:
        errors.print(f"warning: {line}", markup=False)
    for line in found.errors[:-1]:
        errors.print(f"error: {line}", markup=False)
    if found.errors:
        raise AutotuneError(found.errors[-1])
    return found


def _run_with_view(
    tuner: Tuner, console: Console, options: SearchOptions, simulated: bool
) -> RunOutcome:
    """Run the tuner under a live view on a terminal, one plain line per trial otherwise."""
    # A resumed run shows the whole study, not only this call's trials.
    history = past_rows(list(tuner.records.values()), options.objective, options.constraint)
    if not console.is_terminal:
        plain = PlainRunView(
            console, sites=tuner.space.names, simulated=simulated, objective=options.objective
        )
        console.print(rule_text(options.late_tolerance_us), markup=False)
        for record, best in history:
            plain.trial_finished(record, best)
        tuner.observer = _SpaceTracking(plain, tuner)
        return tuner.run()
    view = TerminalRunView(
        console,
        sites=tuner.space.names,
        budget=options.trials,
        simulated=simulated,
        done=tuner.measured,
        history=history,
        late_tolerance_us=options.late_tolerance_us,
    )
    tuner.observer = _SpaceTracking(view, tuner)
    with view:
        return tuner.run()


def workload_lines(workload: Workload, backend: Backend) -> list[str]:
    """What this run measures, stated before the first trial (as `autotune simulate` does)."""
    w = workload
    lines = [
        f"workload   {w.model} TP{w.tp} EP{w.ep}, max-num-seqs {w.max_num_seqs}, "
        f"flashcomm1 {'on' if w.flashcomm1 else 'off'}, {w.graph.text()}, "
        f"{w.input_len} in / {w.output_len} out, {w.profile_steps} profiled steps, "
        f"max-num-batched-tokens {w.max_num_batched_tokens}",
    ]
    if backend.simulated:
        hardware = getattr(backend, "hardware", None)
        summary = hardware.summary() if hardware is not None else w.hardware
        lines.append(f"backend    {backend.name} (SIMULATED), hardware {summary}")
        realism = getattr(backend, "realism", None)
        if realism is not None:
            lines.append(f"profiles   {realism.summary()}")
    else:
        lines.append(f"backend    {backend.name} {backend.target_version()}")
    return lines


def _check_budget(rundir: RunDir, trials: int) -> None:
    """--trials is the total, so a resume cannot ask for fewer than the run already measured."""
    measured = sum(1 for r in rundir.read_trials() if r.searched)
    if trials < measured:
        raise AutotuneError(
            f"--resume --trials {trials}: the run in {rundir.path} already measured "
            f"{plural(measured, 'trial')}; --trials is the total (probe included), so give "
            f"{measured} or more"
        )


def _recorded_notes(info: Mapping[str, Any], notes: Mapping[str, str]) -> dict[str, str]:
    """Why autotune added each config key, as the run first recorded it: a resume rebuilds the
    keys from run.json, so its own reasons (e.g. "you asked for --flashcomm1") would be wrong."""
    options = info.get("options")
    recorded = options.get("extra_notes") if isinstance(options, dict) else None
    return dict(recorded) if isinstance(recorded, dict) else dict(notes)


def _record_budget(rundir: RunDir, info: dict[str, Any], trials: int) -> None:
    """A resume with a new --trials total keeps it in run.json for the next resume."""
    options = info.get("options")
    if isinstance(options, dict) and options.get("trials") != trials:
        info["options"] = {**options, "trials": trials}
        rundir.write_run(info)


def resume_command(rundir: RunDir) -> str:
    """The command that continues this run (run.json holds everything else)."""
    return rundir.resume_command()


def _after_interrupt(rundir: RunDir, tuner: Tuner, notes: Console) -> None:
    """Ctrl-C: a report of what was measured, and how to continue."""
    try:
        write_run_report(rundir.path)
        wrote = "summary.json, trials.csv and report.html (marked unfinished)"
    except (AutotuneError, OSError) as exc:
        wrote = f"summary.json and trials.csv (report.html failed: {exc})"
    notes.print(
        f"stopped after {plural(tuner.measured, 'measured trial')}; wrote {wrote} in {rundir.path}",
        markup=False,
    )
    notes.print(f"resume with: {resume_command(rundir)}", markup=False)


class _SpaceTracking:
    """Passes progress to the view, narrowing its columns once the probe found the active sites."""

    def __init__(self, view: TerminalRunView | PlainRunView, tuner: Tuner) -> None:
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
        for k in (
            "model",
            "max_num_seqs",
            "tp",
            "ep",
            "flashcomm1",
            "graph_mode",
            "compile_mode",
            "cudagraph_mode",
        )
        if k in stored and stored[k] != mine[k]
    ]
    if differ:
        pairs = ", ".join(f"{k}={stored[k]!r} (asked {mine[k]!r})" for k in differ)
        raise AutotuneError(f"--resume: the run in {req.out} was started with {pairs}")
    simulator = info.get("simulator")
    if isinstance(simulator, dict) and bool(simulator.get("ideal", False)) != req.ideal:
        raise AutotuneError(
            f"--resume: the run in {req.out} was started "
            f"{'with' if simulator.get('ideal') else 'without'} --ideal"
        )
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


def export_note(run_dir: Path) -> str:
    """One line for stderr when the exported config is not a finished measurement ("" if it is)."""
    record = load_run(run_dir)
    parts = []
    if record.simulated:
        parts.append("SIMULATED: this config comes from a model, not from measurements on an NPU")
    if not record.summary.get("finished", False):
        resume = resume_command(RunDir(run_dir))
        parts.append(f"the run has not finished (best so far); continue it with: {resume}")
    return "; ".join(parts)


_ = RunObserver  # the view classes above implement it
