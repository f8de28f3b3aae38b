"""The real backend: one `vllm serve` per trial, warmed up, benchmarked, profiled and stopped.

One trial (vllm-ascend 0.23 reads its prefetch config once per process, so every config needs its
own server): start `vllm serve` in its own process group on a loopback port, wait for /health,
warm up, run `vllm bench serve` --repeats times, profile a burst between /start_profile and
/stop_profile, stop the group, wait for NPU memory. `command.sh` in the trial directory replays it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError
from autotune.rundir import atomic_write_json, atomic_write_text
from autotune.workloads import npu
from autotune.workloads.base import TrialResult, Workload
from autotune.workloads.bench import BenchSpec, bench_argv, read_result, run_bench
from autotune.workloads.collect import find_profile
from autotune.workloads.deployment import LaunchOptions, read_serve_args
from autotune.workloads.process import free_port, port_in_use
from autotune.workloads.server import HOST, TrialFailure, VllmServer
from autotune.workloads.vllm_env import SIMULATE_HINT, VllmEnv, check_env, find_vllm, query_versions

# Prompts per bench as a multiple of max-num-seqs, as the simulator's bench.
BENCH_WAVES = 4
# Decode steps skipped after /start_profile beyond the prefill steps, so only full decode is kept.
PROFILE_DELAY_MARGIN = 4
SERVER_LOG = "server.log"
COMMAND_FILE = "command.sh"
LAUNCH_FILE = "launch.json"
PROF_DIR = "prof"


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

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        """AutotuneError (one line) unless `vllm` runs vllm-ascend 0.23.x and the model is local."""
        self.launch.check()
        model = Path(self.workload.model).expanduser()
        if not (model / "config.json").is_file():
            raise AutotuneError(
                f"--model {self.workload.model}: the vllm-ascend backend serves a local model "
                "directory (with config.json); presets work only with --backend simulate"
            )
        exe = find_vllm(self.launch.vllm)
        env = query_versions(exe)
        self.version = check_env(env)
        self.env = env

    def target_version(self) -> str:
        """The vllm-ascend version behind `vllm` (and vLLM's own), as checked by `check`."""
        if self.env is None:
            self.check()
        assert self.env is not None
        return f"{self.version} (vllm {self.env.vllm_version or 'unknown'})"

    # -- one trial ---------------------------------------------------------------------------

    @property
    def num_prompts(self) -> int:
        return self.launch.num_prompts or BENCH_WAVES * self.workload.max_num_seqs

    def profiler_config(self, prof_dir: Path) -> dict[str, Any]:
        """--profiler-config: a few steady decode steps, no stacks, no frontend trace."""
        w = self.workload
        prefill_steps = math.ceil(w.max_num_seqs * w.input_len / w.max_num_batched_tokens)
        return {
            "profiler": "torch",
            "torch_profiler_dir": str(prof_dir),
            "torch_profiler_with_stack": False,
            "ignore_frontend": True,
            "delay_iterations": prefill_steps + PROFILE_DELAY_MARGIN,
            "max_iterations": w.profile_steps,
        }

    def serve_argv(self, config: Mapping[str, Any], port: int, prof_dir: Path) -> list[str]:
        """`vllm serve MODEL …`: autotune's settings, then the user's --serve-args."""
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
        if not w.graph_mode and not s.enforce_eager:
            argv += ["--enforce-eager"]
        if s.max_num_batched_tokens is None:
            argv += ["--max-num-batched-tokens", str(w.max_num_batched_tokens)]
        argv += [
            "--additional-config",
            json.dumps(dict(config), separators=(",", ":")),
            "--profiler-config",
            json.dumps(self.profiler_config(prof_dir), separators=(",", ":")),
            *s.argv,
        ]
        return argv

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
        """One trial for real; TrialFailure (with the log's tail) when it cannot be measured."""
        out_dir = out_dir.resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        port = self.launch.port or free_port()
        prof_dir = out_dir / PROF_DIR
        base_url = f"http://{HOST}:{port}"
        vllm = str(self._exe())
        spec = self.bench_spec()
        n = self.workload.max_num_seqs
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
                result=out_dir / f"bench_r{k}.json",
            )
            for k in range(repeats)
        ]
        burst = bench_argv(
            vllm, base_url, spec, num_prompts=n, output_len=spec.output_len, result=None
        )
        serve = self.serve_argv(config, port, prof_dir)
        self._write_command(out_dir, serve, warmup, benches, burst if profile else None, port)

        timings: dict[str, Any] = {}
        launch: dict[str, Any] = {
            "port": port,
            "vllm": vllm,
            "python": str(self.env.python) if self.env else None,
            "vllm_version": self.env.vllm_version if self.env else None,
            "vllm_ascend_version": self.version or None,
            "timings_s": timings,
        }
        log = out_dir / SERVER_LOG
        if port_in_use(port):
            log.write_text(f"autotune: port {port} on {HOST} is already in use\n", "utf-8")
            raise TrialFailure(
                f"port {port} on {HOST} is already in use; free it or pick another --port "
                "(without --port autotune picks a free one)"
            )
        env = {**os.environ, **self.launch.serve_env}
        idle_mb = npu.read_hbm_mb()
        t0 = time.monotonic()
        server = VllmServer(
            serve, env=env, log=log, port=port, stop_timeout_s=self.launch.stop_timeout_s
        )
        results: list[dict[str, Any]] = []
        paths: list[Path] = []
        try:
            timings["startup"] = server.wait_healthy(self.launch.startup_timeout_s)
            bench_env = dict(os.environ)
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
            for k, argv in enumerate(benches):
                path = out_dir / f"bench_r{k}.json"
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
                results.append(read_result(path, num_prompts=self.num_prompts, log=blog))
                paths.append(path)
            if profile:
                t = time.monotonic()
                server.post("/start_profile", timeout_s=60)
                run_bench(
                    burst,
                    env=bench_env,
                    log=out_dir / "profile_burst.log",
                    server=server,
                    timeout_s=timeout,
                    what="profiled burst",
                )
                # Parsing may run inside /stop_profile: allow it the bench's time.
                server.post("/stop_profile", timeout_s=timeout)
                timings["profile"] = time.monotonic() - t
        finally:
            t = time.monotonic()
            server.stop()
            timings["stop"] = time.monotonic() - t
            launch["npu_memory"] = npu.wait_memory_back(idle_mb)
            timings["total"] = time.monotonic() - t0
            atomic_write_json(out_dir / LAUNCH_FILE, launch)
        found, reason = find_profile(prof_dir) if profile else (None, "not profiled")
        return TrialResult(
            benches=results,
            bench_paths=paths,
            profile_dir=found,
            simulated=False,
            logs=[log],
            unprofiled=reason,
        )

    def _exe(self) -> Path:
        if self.env is None:
            self.check()
        assert self.env is not None
        return self.env.executable

    def _write_command(
        self,
        out_dir: Path,
        serve: list[str],
        warmup: list[str],
        benches: list[list[str]],
        burst: list[str] | None,
        port: int,
    ) -> None:
        """command.sh: the trial's commands with their environment, runnable by hand."""
        q = shlex.join
        lines = [
            "#!/bin/sh",
            "# One autotune trial, replayable by hand: serve, wait, warm up, bench, profile, stop.",
            "# The rest of the environment is inherited from the shell that runs this.",
            "set -e",
            f"cd {shlex.quote(str(out_dir))}",
        ]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.launch.serve_env.items()]
        lines += [
            f"{q(serve)} > {SERVER_LOG} 2>&1 &",
            "SERVER=$!",
            "trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT",
            f"until curl -sf -o /dev/null http://{HOST}:{port}/health; do",
            '  kill -0 "$SERVER" || { echo "vllm serve exited"; exit 1; }',
            "  sleep 2",
            "done",
            f"{q(warmup)} > warmup.log",
        ]
        lines += [f"{q(argv)} > bench_r{k}.log" for k, argv in enumerate(benches)]
        if burst is not None:
            lines += [
                f"curl -sf -X POST http://{HOST}:{port}/start_profile",
                f"{q(burst)} > profile_burst.log",
                f"curl -sf -X POST http://{HOST}:{port}/stop_profile",
            ]
        path = out_dir / COMMAND_FILE
        atomic_write_text(path, "\n".join(lines) + "\n")
        path.chmod(0o755)


__all__ = ["SIMULATE_HINT", "VllmAscendBackend"]
