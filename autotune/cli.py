"""The `autotune` command line: wiring only. Every command calls plain functions in its module."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from autotune.errors import AutotuneError
from autotune.lateness import DEFAULT_LATE_TOLERANCE_US, tolerance_ns

app = typer.Typer(
    name="autotune",
    help="Tune vllm-ascend 0.23 weight prefetch by measurement.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        from autotune import __version__

        typer.echo(f"autotune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Tune vllm-ascend 0.23 weight prefetch by measurement."""


# click's parameter sources that mean "not on the command line".
_UNGIVEN = ("DEFAULT", "DEFAULT_MAP")


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _clean_errors(fn: F) -> F:
    """Turn AutotuneError into one line on stderr and exit code 2; Ctrl-C into exit 130."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutotuneError as exc:
            _stderr().print(f"error: {exc}", markup=False)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            _stderr().print("interrupted", markup=False)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_clean_errors
def analyze(
    path: Annotated[
        Path,
        typer.Argument(
            help="A trace_view.json or profiler db, or any folder with *_ascend_pt dirs below it "
            "(a *_ascend_pt dir, a simulate --out dir, trials/NNN, a run dir: its best trial)."
        ),
    ],
    trial: Annotated[
        int | None,
        typer.Option("--trial", help="With a run directory: read this trial, not the best."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rules: Annotated[
        Path | None, typer.Option(help="TOML rules that extend or override the shipped classifier.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report.")
    ] = None,
    tasks: Annotated[
        Path | None,
        typer.Option(
            "--tasks", help="Also write the classified task table (one row per task) as CSV."
        ),
    ] = None,
    by_rank: Annotated[
        bool, typer.Option("--by-rank", help="One per-site table per rank, not one for all.")
    ] = False,
    tolerance_us: Annotated[
        float,
        typer.Option(
            help="A site is late when its median slack is below minus this many µs "
            "(default 0: it ends after its window, the vendor's criterion)."
        ),
    ] = DEFAULT_LATE_TOLERANCE_US,
    layout: Annotated[
        str,
        typer.Option(
            help="Which stack issued the prefetches: auto (decide from the timeline), "
            "vllm-ascend (0.23's sites), sglang, or generic (any npu_prefetch call)."
        ),
    ] = "auto",
) -> None:
    """Check that every CMO prefetch hides behind its window and ends before it."""
    import json
    import math

    from autotune.layouts import LAYOUTS
    from autotune.overlap import analyze as analyze_overlap
    from autotune.profile import load_profiles
    from autotune.report.html import write_analyze_report
    from autotune.report.terminal import print_overlap, profiles_line
    from autotune.rundir import check_output_file, profile_input
    from autotune.task_table import task_table, write_task_table

    if not math.isfinite(tolerance_us) or tolerance_us < 0:
        raise AutotuneError(f"--tolerance-us must be a number >= 0, got {tolerance_us}")
    if layout not in LAYOUTS:
        raise AutotuneError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    for flag, out_file in (("--tasks", tasks), ("--html", html)):
        if out_file is not None:
            check_output_file(flag, out_file)
    if not path.exists():
        raise AutotuneError(
            f"{path}: no such file or directory; pass a trace_view.json, a profiler db, "
            "or a folder with *_ascend_pt dirs below it"
        )
    source = profile_input(path, trial)
    if source.note:
        _stderr().print(f"note: {source.note}", markup=False)
    profiles = load_profiles(source.path, rules=rules)
    tol_ns = tolerance_ns(tolerance_us)
    result = analyze_overlap(profiles, late_tolerance_ns=tol_ns, layout=layout)
    ranks = sorted({-1 if p.rank is None else int(p.rank) for p in profiles})
    per_rank = {}
    if by_rank:
        for r in ranks:
            mine = [p for p in profiles if (-1 if p.rank is None else int(p.rank)) == r]
            per_rank[r] = analyze_overlap(mine, late_tolerance_ns=tol_ns, layout=result.layout)
    if json_out:
        doc = result.to_json()
        doc["profiles"] = [
            {
                "rank": p.rank,
                "path": str(p.path),
                "source": p.source,
                "tasks": len(p.tasks),
            }
            for p in profiles
        ]
        if by_rank:
            doc["by_rank"] = {str(r): res.to_json() for r, res in per_rank.items()}
        if source.trial is not None:
            doc["trial"] = {
                "number": source.trial.number,
                "role": source.trial.role,
                "best": source.best,
            }
        typer.echo(json.dumps(doc, allow_nan=False))
    else:
        console = Console(highlight=False, soft_wrap=True)
        console.print(profiles_line(profiles), markup=False)
        if by_rank:
            for r, res in per_rank.items():
                print_overlap(res, console, title=f"rank {r}" if r >= 0 else "rank unknown")
        else:
            print_overlap(result, console)
    if tasks is not None:
        table = task_table(profiles, result)
        write_task_table(table, tasks)
        _stderr().print(f"wrote {tasks} ({len(table)} tasks)", markup=False)
    if html is not None:
        meta = {"read": source.note.removeprefix("reading ")} if source.note else None
        try:
            write_analyze_report(result, list(profiles), html, meta=meta)
        except OSError as exc:
            raise AutotuneError(f"--html {html}: cannot write the report: {exc.strerror}") from None
        _stderr().print(f"wrote {html}", markup=False)


@app.command()
@_clean_errors
def run(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            help="\\[required] Preset (e.g. Qwen3-32B-W8A8) or a local model directory "
            "(--resume: the run's)."
        ),
    ] = None,
    max_num_seqs: Annotated[
        int | None,
        typer.Option(
            help="\\[required] vllm --max-num-seqs of the deployment (--resume: the run's)."
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="vllm-ascend (this host's NPUs) or simulate (runs anywhere).")
    ] = "vllm-ascend",
    trials: Annotated[
        int | None,
        typer.Option(
            help="Measured trials in the study, probe included; default 12, on --resume the "
            "recorded total (give it to set a new total)."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Start no new trial after this many seconds.")
    ] = None,
    objective: Annotated[
        str, typer.Option(help="throughput (tok/s, higher) or tpot (ms, lower).")
    ] = "throughput",
    late_tolerance_us: Annotated[
        float,
        typer.Option(help="A site is late when its median slack is below minus this many µs."),
    ] = DEFAULT_LATE_TOLERANCE_US,
    late_is_infeasible: Annotated[
        bool,
        typer.Option(
            "--late-is-infeasible",
            help="Vendor criterion as a hard rule: a trial with a late site cannot win.",
        ),
    ] = False,
    repeats: Annotated[
        int | None,
        typer.Option(help="Bench runs per trial (median). Default 1 simulated, 3 on NPU."),
    ] = None,
    confirm: Annotated[
        int | None,
        typer.Option(
            help="Confirmation rounds after the search: the winner, runner-up and vendor default "
            "measured again, interleaved, until the winner beats both beyond the noise. "
            "Default 2 on NPU, 0 simulated; 0 turns it off."
        ),
    ] = None,
    sampler: Annotated[
        str,
        typer.Option(
            help="guided (default: profile-guided candidates, then TPE), tpe, random, or gp "
            "(needs torch); tpe/random/gp follow the same probe and seed."
        ),
    ] = "guided",
    storage: Annotated[
        str | None, typer.Option(help="Optuna RDB storage URL; default sqlite:///<out>/study.db.")
    ] = None,
    study_name: Annotated[
        str | None, typer.Option(help="Study name; default the run dir's name.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out: flags not given again keep the run's values.",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Run directory; default runs/<model>-<max-num-seqs>-<time>.")
    ] = None,
    keep_profiles: Annotated[
        str, typer.Option(help="all, best (baseline, default and best) or none.")
    ] = "best",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print only the summary as JSON.")
    ] = False,
    additional_config: Annotated[
        str | None,
        typer.Option(help="Other --additional-config keys every trial runs with: JSON or a file."),
    ] = None,
    tp: Annotated[
        int | None,
        typer.Option(
            help="Tensor-parallel size. Default: from --serve-args, else 1 (simulate: 4)."
        ),
    ] = None,
    ep: Annotated[
        int | None,
        typer.Option(help="Expert-parallel size. Default: TP x DP with --enable-expert-parallel."),
    ] = None,
    flashcomm1: Annotated[
        bool | None,
        typer.Option(
            "--flashcomm1/--no-flashcomm1",
            help="enable_flashcomm1. Default: as your --additional-config / --serve-env say, "
            "else off (simulate: on).",
        ),
    ] = None,
    graph_mode: Annotated[
        bool | None,
        typer.Option(
            "--graph-mode/--no-graph-mode",
            help="vllm-ascend: must agree with the mode --serve-args give (autotune adds none). "
            "Simulator: models the vendor recipe's FULL_DECODE_ONLY graphs by default; "
            "--no-graph-mode models eager.",
        ),
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None,
        typer.Option(
            help="vllm --max-num-batched-tokens, passed to vllm serve when given. Default: from "
            "--serve-args, else vLLM's own (2048 on Ascend; simulate: the recipe's 40960 in "
            "graph mode, 16384 eager)."
        ),
    ] = None,
    input_len: Annotated[int, typer.Option(help="Bench prompt length.")] = 1024,
    output_len: Annotated[int, typer.Option(help="Bench output length.")] = 512,
    num_prompts: Annotated[
        int | None, typer.Option(help="Prompts per bench run. Default 4 x max-num-seqs.")
    ] = None,
    profile_steps: Annotated[int, typer.Option(help="Decode steps profiled per trial.")] = 8,
    serve_args: Annotated[
        str | None,
        typer.Option(
            help='Extra `vllm serve` arguments, e.g. "--dtype bfloat16 --block-size 128".'
        ),
    ] = None,
    serve_env: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for the server's environment (repeatable)."),
    ] = None,
    vllm: Annotated[
        str | None, typer.Option(help="The vllm executable (or its bin dir). Default: on PATH.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Server port on 127.0.0.1. Default: a free one per trial.")
    ] = None,
    startup_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the server's /health.")
    ] = 1800.0,
    bench_timeout: Annotated[
        float, typer.Option(help="Seconds one bench run may take before the trial fails.")
    ] = 3600.0,
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping a server.")
    ] = 60.0,
    analyse_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds torch_npu's offline analyse may take to parse a trial's raw profile "
            "(TP > 1)."
        ),
    ] = 1800.0,
    allow_any_vllm: Annotated[
        bool,
        typer.Option(
            "--allow-any-vllm",
            help="Run with a vLLM other than the 0.23.x vllm-ascend 0.23 is tested with (the run "
            "records it).",
        ),
    ] = False,
    require_profiles: Annotated[
        bool,
        typer.Option(
            "--require-profiles",
            help="What would leave trials unprofiled (no torch_npu or CANN msprof) is an error "
            "before the first trial.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Only check, in seconds, what the first trial would find (versions, serve args, "
            "devices, torch_npu, msprof) and print the workload read; same flags as a run.",
        ),
    ] = False,
    hardware: Annotated[
        str, typer.Option(help="Simulator: hardware preset or TOML file.")
    ] = "910B2",
    seed: Annotated[int, typer.Option(help="Simulator noise and sampler seed.")] = 0,
    noise: Annotated[float, typer.Option(help="Simulator: relative noise of a bench run.")] = 0.01,
    ideal: Annotated[
        bool,
        typer.Option(
            "--ideal",
            help="Simulator: profiles without the realistic effects (mid-output steps, comm on "
            "the compute stream, 2 % kernel jitter, no profiler overhead).",
        ),
    ] = False,
    heartbeat: Annotated[
        int,
        typer.Option(
            help="Database --storage: seconds between a worker's heartbeats; a trial silent "
            "for 3x this is failed and retried by another worker."
        ),
    ] = 30,
    sim_trial_seconds: Annotated[
        float,
        typer.Option(
            hidden=True, help="Simulator: each trial lasts at least this long (stands in for NPU)."
        ),
    ] = 0.0,
) -> None:
    """Find the best weight_prefetch_config by measurement and write it for `vllm serve`."""
    import json as _json

    from autotune.tune import request_from_flags, run_job

    # A resumed run takes every flag not given again from its run.json.
    given = {
        name
        for name in ctx.params
        # By name: typer may ship its own copy of click's ParameterSource.
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in _UNGIVEN
    }
    console = Console(highlight=False, soft_wrap=True)
    summary = run_job(request_from_flags(ctx.params, given), console)
    if json_out:
        typer.echo(_json.dumps(summary, indent=2))


RunDirArg = Annotated[
    Path | None,
    typer.Argument(help="The --out directory of an `autotune run` (or give --storage instead)."),
]
StorageOpt = Annotated[
    str | None, typer.Option(help="Read the study here (with --study-name), not a run dir's.")
]
StudyNameOpt = Annotated[str | None, typer.Option(help="The study to read from --storage.")]


@app.command()
@_clean_errors
def export(
    run_dir: RunDirArg = None,
    format: Annotated[
        str, typer.Option("--format", help="additional-config (JSON) or vllm-args.")
    ] = "additional-config",
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
) -> None:
    """Print the best config of a run (of its whole study when shared), ready for `vllm serve`."""
    from autotune.tune import export_note, export_text

    text = export_text(run_dir, format, storage=storage, study_name=study_name)
    note = export_note(run_dir) if run_dir is not None else ""
    typer.echo(text)
    if note:
        # stdout stays the config alone, ready for a pipe.
        _stderr().print(f"note: {note}", markup=False)


@app.command()
@_clean_errors
def report(
    run_dir: RunDirArg = None,
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    html: Annotated[
        Path | None, typer.Option(help="Where to write; default RUN_DIR/report.html.")
    ] = None,
) -> None:
    """Write (or rewrite) the self-contained HTML report of a run, or of a shared study."""
    from autotune.tune import report_job

    out = report_job(run_dir, storage=storage, study_name=study_name, html=html)
    typer.echo(str(out))


@app.command()
@_clean_errors
def simulate(
    model: Annotated[str, typer.Option(help="Preset (e.g. Qwen3-32B-W8A8) or a model directory.")],
    max_num_seqs: Annotated[int, typer.Option(help="vllm --max-num-seqs (the decode batch).")],
    config: Annotated[
        Path | None,
        typer.Option(help="additional-config JSON file; default: prefetch on, 0.23's ratios."),
    ] = None,
    hardware: Annotated[
        str, typer.Option(help="Hardware preset (910B2, 910B3, 910B4, A3) or TOML file.")
    ] = "910B2",
    tp: Annotated[int, typer.Option(help="Tensor-parallel size.")] = 4,
    ep: Annotated[int, typer.Option(help="Expert-parallel size.")] = 1,
    flashcomm1: Annotated[bool, typer.Option(help="enable_flashcomm1.")] = True,
    graph_mode: Annotated[
        bool,
        typer.Option(
            "--graph-mode/--no-graph-mode",
            help="Model the vendor recipe's FULL_DECODE_ONLY graphs (default) or, with "
            "--no-graph-mode, eager (--enforce-eager).",
        ),
    ] = True,
    max_num_batched_tokens: Annotated[
        int | None,
        typer.Option(
            help="vllm --max-num-batched-tokens. Default: the recipe's 40960 in graph mode, "
            "16384 eager."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory; default simulated/<model>-<N>.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    noise: Annotated[float, typer.Option(help="Relative noise of the bench result.")] = 0.01,
    steps: Annotated[int, typer.Option(help="Decode steps in the profile.")] = 8,
    ideal: Annotated[
        bool,
        typer.Option(
            "--ideal",
            help="A profile without the realistic effects (mid-output steps, comm on the compute "
            "stream, aclnn names, 2 % kernel jitter, no profiler overhead).",
        ),
    ] = False,
    realism: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=VALUE: set one profile effect (repeatable; README lists them), e.g. "
            "comm_stream=off or step_jitter=0.02; applied on top of --ideal when given."
        ),
    ] = None,
    gate_up_join: Annotated[
        str,
        typer.Option(
            help="Where mlp.gate_up is joined: swiglu (0.23) or norm (right after its norm)."
        ),
    ] = "swiglu",
) -> None:
    """Write one SIMULATED trial (bench JSON + profiler output) from the analytic model."""
    from autotune.workloads.base import Workload, check_counts
    from autotune.workloads.deployment import (
        ascend_compilation,
        simulated_graph,
        simulated_max_num_batched_tokens,
    )
    from autotune.workloads.simulate import (
        IDEAL,
        REALISTIC,
        parse_realism,
        read_config,
        simulate_once,
        summary_lines,
    )

    check_counts(
        (
            ("--max-num-seqs", max_num_seqs),
            ("--tp", tp),
            ("--ep", ep),
            ("--steps", steps),
            *(
                (("--max-num-batched-tokens", max_num_batched_tokens),)
                if max_num_batched_tokens is not None
                else ()
            ),
        )
    )
    cfg = read_config(config)
    graph = simulated_graph(graph_mode, ascend_compilation(cfg, f"--config {config}"))
    workload = Workload(
        model=model,
        max_num_seqs=max_num_seqs,
        tp=tp,
        ep=ep,
        hardware=hardware,
        flashcomm1=flashcomm1,
        graph_mode=graph.graphs,
        compile_mode=graph.compile_mode,
        cudagraph_mode=graph.cudagraph_mode,
        npugraph_ex=graph.npugraph_ex,
        fuse_norm_quant=graph.fuse_norm_quant,
        max_num_batched_tokens=max_num_batched_tokens or simulated_max_num_batched_tokens(graph),
        profile_steps=steps,
        gate_up_join=gate_up_join,
    )
    effects = parse_realism(realism or [], base=IDEAL if ideal else REALISTIC)
    out_dir = out if out is not None else Path("simulated") / f"{Path(model).name}-{max_num_seqs}"
    trial, result = simulate_once(workload, cfg, out_dir, seed=seed, noise=noise, realism=effects)
    console = Console(highlight=False, soft_wrap=True)
    lines = summary_lines(trial, result)
    console.print(lines[0], style="bold yellow", markup=False)
    for line in lines[1:]:
        console.print(line, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
