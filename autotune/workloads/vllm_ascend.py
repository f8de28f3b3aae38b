"""The real backend: one `vllm serve` per trial, warmed up, benchmarked, profiled and stopped.

One trial (vllm-ascend 0.23 reads its prefetch config once per process, so every config needs its
own server): start `vllm serve` in its own process group on a loopback port, wait for /health,
warm up, run `vllm bench serve` --repeats times, profile a burst between /start_profile and
/stop_profile, stop the group, wait for NPU memory, parse the ranks torch_npu left raw (TP > 1).
The server runs in the mode the user's serve args give; autotune adds no mode and no token budget
of its own. `command.sh` in the trial directory replays it into a new folder.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError
from autotune.rundir import atomic_write_json, atomic_write_text
from autotune.workloads import npu
from autotune.workloads.base import TrialResult, Workload
from autotune.workloads.bench import BenchSpec, bench_argv, keep_result, partial_path, run_bench
from autotune.workloads.collect import (
    ANALYSE_CODE,
    ANALYSE_LOG,
    find_profile,
    parse_raw,
    rank_dirs,
)
from autotune.workloads.deployment import LaunchOptions
from autotune.workloads.process import free_port, port_in_use
from autotune.workloads.server import HOST, LOOPBACK, TrialFailure, VllmServer, loopback_env
from autotune.workloads.vllm_args import read_serve_args
from autotune.workloads.vllm_env import (
    SIMULATE_HINT,
    VllmEnv,
    check_env,
    find_vllm,
    query_versions,
    vllm_supported,
)

# Prompts per bench as a multiple of max-num-seqs, as the simulator's bench.
BENCH_WAVES = 4
# Decode steps skipped after /start_profile beyond the prefill steps, so only full decode is kept.
PROFILE_DELAY_MARGIN = 4
SERVER_LOG = "server.log"
COMMAND_FILE = "command.sh"
LAUNCH_FILE = "launch.json"
PROF_DIR = "prof"
# Stand-ins in command.sh's commands for the replay folder and port (shell variables there).
_OUT = "@@AUTOTUNE_OUT@@"
_PORT = "@@AUTOTUNE_PORT@@"


class VllmAscendBackend:
    """Runs trials with vllm-ascend 0.23 through `vllm serve` on this host."""

    name = "vllm-ascend"
    simulated = False

    def __init__(self, workload: Workload, launch: LaunchOptions | None = None) -> None:
        self.workload = workload
        self.launch = launch or LaunchOptions()
        self.serve = read_serve_args(self.launch.serve_args)
        self.env: VllmEnv | None = None
        self.version = ""
        # Where a line about a long step goes (the terminal, set by the run); silent by default.
        self.progress: Callable[[str], None] = lambda message: None

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        """AutotuneError (one line) unless `vllm` runs vllm-ascend 0.23.x (with vLLM 0.23.x, or
        --allow-any-vllm), the model is local and the profiled burst reaches the profiler."""
        self.launch.check()
        model = Path(self.workload.model).expanduser()
        if not (model / "config.json").is_file():
            raise AutotuneError(
                f"--model {self.workload.model}: the vllm-ascend backend serves a local model "
                "directory (with config.json); presets work only with --backend simulate"
            )
        self._check_output_len()
        exe = find_vllm(self.launch.vllm)
        env = query_versions(exe)
        self.version = check_env(env, allow_any_vllm=self.launch.allow_any_vllm)
        self.env = env

    def _check_output_len(self) -> None:
        w = self.workload
        config = self.profiler_config(Path(PROF_DIR))
        delay, prefill = config["delay_iterations"], self.prefill_steps
        # The burst lasts about prefill + output_len - 1 engine steps; the profiler needs
        # delay + profile-steps of them.
        need = delay - prefill + w.profile_steps + 1
        if w.output_len < need:
            raise AutotuneError(
                f"--output-len {w.output_len} is too short for the profiled burst: the profiler "
                f"starts {delay} engine steps after /start_profile ({prefill} prefill steps + "
                f"{PROFILE_DELAY_MARGIN}) and records --profile-steps {w.profile_steps}, so each "
                f"request must decode at least {need} tokens; raise --output-len to {need} or "
                "lower --profile-steps"
            )

    def target_version(self) -> str:
        """The vllm-ascend version behind `vllm` (and vLLM's own), as checked by `check`."""
        if self.env is None:
            self.check()
        assert self.env is not None
        vllm = self.env.vllm_version or "unknown"
        if self.launch.allow_any_vllm and not vllm_supported(self.env.vllm_version):
            return f"{self.version} (vllm {vllm}, an untested pair run with --allow-any-vllm)"
        return f"{self.version} (vllm {vllm})"

    # -- one trial ---------------------------------------------------------------------------

    @property
    def num_prompts(self) -> int:
        return self.launch.num_prompts or BENCH_WAVES * self.workload.max_num_seqs

    @property
    def prefill_steps(self) -> int:
        w = self.workload
        return math.ceil(w.max_num_seqs * w.input_len / w.max_num_batched_tokens)

    def profiler_config(self, prof_dir: Path | str) -> dict[str, Any]:
        """--profiler-config: a few steady decode steps, no stacks, no frontend trace."""
        return {
            "profiler": "torch",
            "torch_profiler_dir": str(prof_dir),
            "torch_profiler_with_stack": False,
            "ignore_frontend": True,
            "delay_iterations": self.prefill_steps + PROFILE_DELAY_MARGIN,
            "max_iterations": self.workload.profile_steps,
        }

    def serve_argv(
        self, config: Mapping[str, Any], port: int | str, prof_dir: Path | str
    ) -> list[str]:
        """`vllm serve MODEL …`: the trial's settings, then the user's --serve-args.

        No mode and no token budget of autotune's own: --enforce-eager and
        --max-num-batched-tokens come only from the user (the flag or --serve-args).
        """
        w, s = self.workload, self.serve
        argv = [
            str(self._exe()),
            "serve",
            str(Path(w.model).expanduser().resolve()),
            "--host",
            HOST,
            "--port",
            str(port),
            "--max-num-seqs",
            str(w.max_num_seqs),
        ]
        if s.tp is None:
            argv += ["--tensor-parallel-size", str(w.tp)]
        if w.ep > 1 and not s.expert_parallel:
            argv += ["--enable-expert-parallel"]
        if self.launch.max_num_batched_tokens is not None and s.max_num_batched_tokens is None:
            argv += ["--max-num-batched-tokens", str(self.launch.max_num_batched_tokens)]
        argv += [
            "--additional-config",
            json.dumps(dict(config), separators=(",", ":")),
            "--profiler-config",
            json.dumps(self.profiler_config(prof_dir), separators=(",", ":")),
            *s.argv,
        ]
        return argv

    def serve_env(self) -> dict[str, str]:
        """The server's environment: autotune's own plus --serve-env."""
        return {**os.environ, **self.launch.serve_env}

    def bench_spec(self) -> BenchSpec:
        w = self.workload
        return BenchSpec(
            model=str(Path(w.model).expanduser().resolve()),
            served_model_name=self.serve.served_model_name,
            input_len=w.input_len,
            output_len=w.output_len,
            max_concurrency=w.max_num_seqs,
        )

    def run(
        self, config: dict[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> TrialResult:
        """One trial for real; TrialFailure (with the log's root cause) when it cannot be
        measured. A profile that cannot be taken or parsed leaves the trial unprofiled."""
        out_dir = out_dir.resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        port = self.launch.port or free_port()
        prof_dir = out_dir / PROF_DIR
        vllm = str(self._exe())
        spec = self.bench_spec()
        n = self.workload.max_num_seqs
        base_url = f"http://{HOST}:{port}"
        finals = [out_dir / f"bench_r{k}.json" for k in range(repeats)]
        warmup = bench_argv(
            vllm, base_url, spec, num_prompts=n, output_len=spec.output_len, result=None
        )
        benches = [
            bench_argv(
                vllm,
                base_url,
                spec,
                num_prompts=self.num_prompts,
                output_len=spec.output_len,
                result=partial_path(final),
            )
            for final in finals
        ]
        burst = bench_argv(
            vllm, base_url, spec, num_prompts=n, output_len=spec.output_len, result=None
        )
        serve = self.serve_argv(config, port, prof_dir)
        self._write_command(out_dir, config, repeats, profile, port)

        timings: dict[str, Any] = {}
        launch: dict[str, Any] = {
            "port": port,
            "vllm": vllm,
            "python": str(self.env.python) if self.env else None,
            "vllm_version": self.env.vllm_version if self.env else None,
            "vllm_ascend_version": self.version or None,
            "allow_any_vllm": self.launch.allow_any_vllm,
            "timings_s": timings,
        }
        log = out_dir / SERVER_LOG
        if port_in_use(port):
            log.write_text(f"autotune: port {port} on {HOST} is already in use\n", "utf-8")
            raise TrialFailure(
                f"port {port} on {HOST} is already in use; free it or pick another --port "
                "(without --port autotune picks a free one)"
            )
        idle_mb = npu.read_hbm_mb()
        t0 = time.monotonic()
        server = VllmServer(
            serve,
            env=self.serve_env(),
            log=log,
            port=port,
            stop_timeout_s=self.launch.stop_timeout_s,
        )
        results: list[dict[str, Any]] = []
        unprofiled = "" if profile else "not profiled"
        try:
            timings["startup"] = server.wait_healthy(self.launch.startup_timeout_s)
            bench_env = loopback_env(os.environ)
            timeout = self.launch.bench_timeout_s
            timings["warmup"] = run_bench(
                warmup,
                env=bench_env,
                log=out_dir / "warmup.log",
                server=server,
                timeout_s=timeout,
                what="warm-up",
            )
            timings["bench"] = []
            for k, (argv, final) in enumerate(zip(benches, finals, strict=True)):
                blog = out_dir / f"bench_r{k}.log"
                timings["bench"].append(
                    run_bench(
                        argv,
                        env=bench_env,
                        log=blog,
                        server=server,
                        timeout_s=timeout,
                        what=f"bench {k + 1} of {repeats}",
                    )
                )
                results.append(keep_result(final, num_prompts=self.num_prompts, log=blog))
            if profile:
                t = time.monotonic()
                unprofiled = self._profile(server, burst, bench_env, out_dir)
                timings["profile"] = time.monotonic() - t
        finally:
            t = time.monotonic()
            server.stop()
            timings["stop"] = time.monotonic() - t
            launch["npu_memory"] = npu.wait_memory_back(idle_mb)
            timings["total"] = time.monotonic() - t0
            atomic_write_json(out_dir / LAUNCH_FILE, launch)
        found: Path | None = None
        if not unprofiled:
            unprofiled = self._parse(prof_dir, out_dir, launch)
            timings["total"] = time.monotonic() - t0
            atomic_write_json(out_dir / LAUNCH_FILE, launch)
        if not unprofiled:
            found, unprofiled = find_profile(prof_dir)
        return TrialResult(
            benches=results,
            bench_paths=finals,
            profile_dir=found,
            simulated=False,
            logs=[log],
            unprofiled=unprofiled,
        )

    def _profile(
        self, server: VllmServer, burst: list[str], env: Mapping[str, str], out_dir: Path
    ) -> str:
        """/start_profile, the burst, /stop_profile; "" or why the trial stays unprofiled.

        A profiler that cannot start (e.g. MSMONITOR_USE_DAEMON=1 makes vllm-ascend's profiler
        creation raise) leaves the measured trial unprofiled; a server that fails otherwise
        fails the trial.
        """
        try:
            server.post("/start_profile", timeout_s=60)
        except TrialFailure as exc:
            if not server.alive():
                raise
            return f"the profiler did not start: {exc}"
        run_bench(
            burst,
            env=env,
            log=out_dir / "profile_burst.log",
            server=server,
            timeout_s=self.launch.bench_timeout_s,
            what="profiled burst",
        )
        # At TP 1 torch_npu parses inside /stop_profile: allow it the bench's time.
        server.post("/stop_profile", timeout_s=self.launch.bench_timeout_s)
        return ""

    def _parse(self, prof_dir: Path, out_dir: Path, launch: dict[str, Any]) -> str:
        """Parse the ranks torch_npu left raw, in the serving interpreter; "" or why not."""
        python = self.env.python if self.env is not None else Path("python3")
        log = out_dir / ANALYSE_LOG
        total = len(rank_dirs(prof_dir))
        timeout = self.launch.analyse_timeout_s
        parsed = parse_raw(
            python,
            prof_dir,
            env=self.serve_env(),
            log=log,
            timeout_s=timeout,
            started=lambda ranks: self.progress(
                f"{out_dir.parent.name}/{out_dir.name}: parsing the raw profile of {ranks} of "
                f"{total} ranks with torch_npu's analyse (up to {timeout:g} s, "
                f"--analyse-timeout; log {log})"
            ),
        )
        launch["analyse"] = {"raw_ranks": parsed.ranks, "reason": parsed.reason}
        if parsed.ranks:
            launch["timings_s"]["analyse"] = parsed.seconds
            done = "parsed" if not parsed.reason else "not parsed"
            self.progress(
                f"{out_dir.parent.name}/{out_dir.name}: profile {done} in {parsed.seconds:.0f} s"
            )
        return parsed.reason

    def _exe(self) -> Path:
        if self.env is None:
            self.check()
        assert self.env is not None
        return self.env.executable

    def _write_command(
        self, out_dir: Path, config: Mapping[str, Any], repeats: int, profile: bool, port: int
    ) -> None:
        """command.sh: the trial's commands with their environment, runnable by hand.

        It never writes over the trial's files: it replays into a new folder beside the trial's
        (`trials/NNN-replay-<time>`), or into the new or empty folder given as its argument,
        found relative to where the script is, so a copied run directory replays into the copy.
        """
        vllm = str(self._exe())
        spec = self.bench_spec()
        n = self.workload.max_num_seqs
        url = f"http://{HOST}:{_PORT}"
        serve = self.serve_argv(config, _PORT, f"{_OUT}/{PROF_DIR}")

        def bench(prompts: int, result: Path | None) -> list[str]:
            return bench_argv(
                vllm, url, spec, num_prompts=prompts, output_len=spec.output_len, result=result
            )

        def q(argv: list[str]) -> str:
            return " ".join(_shell_word(a) for a in argv)

        curl = "curl -sf --noproxy '*'"
        no_proxy = ",".join(LOOPBACK)
        lines = [
            "#!/bin/sh",
            "# One autotune trial, replayable by hand: serve, wait, warm up, bench, profile, stop.",
            "# It writes into a new folder beside the trial's (<trial>-replay-<time>), or into the",
            "# new or empty folder given as its argument; never over the trial's recorded files.",
            "# PORT=N picks the port. The rest of the environment is the calling shell's.",
            "set -e",
            'HERE=$(cd "$(dirname "$0")" && pwd)',
            'OUT=${1:-"$HERE-replay-$(date +%Y%m%d-%H%M%S)"}',
            'if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then',
            '  echo "command.sh: $OUT is not empty; give a new or empty folder" >&2',
            "  exit 2",
            "fi",
            'mkdir -p "$OUT"',
            'cd "$OUT"',
            "OUT=$(pwd)",
            f"PORT=${{PORT:-{port}}}",
            f'export no_proxy="{no_proxy}${{no_proxy:+,$no_proxy}}"',
            f'export NO_PROXY="{no_proxy}${{NO_PROXY:+,$NO_PROXY}}"',
        ]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.launch.serve_env.items()]
        lines += [
            f"{q(serve)} > {SERVER_LOG} 2>&1 &",
            "SERVER=$!",
            "trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT",
            f'until {curl} -o /dev/null "http://{HOST}:$PORT/health"; do',
            '  kill -0 "$SERVER" || { echo "vllm serve exited; see $OUT/server.log"; exit 1; }',
            "  sleep 2",
            "done",
            f"{q(bench(n, None))} > warmup.log",
        ]
        lines += [
            f"{q(bench(self.num_prompts, Path(_OUT) / f'bench_r{k}.json'))} > bench_r{k}.log"
            for k in range(repeats)
        ]
        if profile:
            python = str(self.env.python) if self.env is not None else "python3"
            analyse = [python, "-c", ANALYSE_CODE, PROF_DIR, "$RAW"]
            lines += [
                f'{curl} -o /dev/null -X POST "http://{HOST}:$PORT/start_profile"',
                f"{q(bench(n, None))} > profile_burst.log",
                f'{curl} -o /dev/null -X POST "http://{HOST}:$PORT/stop_profile"',
                "# Ranks torch_npu left raw (TP > 1): parse them, as autotune does.",
                "RAW=0",
                f"for d in {PROF_DIR}/*_ascend_pt; do",
                '  [ -d "$d" ] && [ ! -d "$d/ASCEND_PROFILER_OUTPUT" ] && RAW=$((RAW + 1))',
                "done",
                f'[ "$RAW" -eq 0 ] || {" ".join(_shell_word(a) for a in analyse[:-1])} '
                f'"$RAW" > {ANALYSE_LOG} 2>&1',
            ]
        lines += ['echo "replayed into $OUT"']
        path = out_dir / COMMAND_FILE
        atomic_write_text(path, "\n".join(lines) + "\n")
        path.chmod(0o755)


def _shell_word(arg: str) -> str:
    """One argument for command.sh: quoted as is, or in double quotes where it names the replay
    folder or port, which the script sets."""
    if _OUT not in arg and _PORT not in arg:
        return shlex.quote(arg)
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in arg)
    return '"' + escaped.replace(_OUT, "$OUT").replace(_PORT, "$PORT") + '"'


__all__ = ["SIMULATE_HINT", "VllmAscendBackend"]
