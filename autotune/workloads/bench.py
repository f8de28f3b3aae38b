"""`vllm bench serve` against a trial's server: the command, running it, checking its result."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.workloads.process import POLL_S, Child
from autotune.workloads.server import VllmServer, failure

# Bench processes get this long to exit after SIGTERM.
BENCH_STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class BenchSpec:
    """What every bench of a study sends: the random dataset at the deployment's concurrency."""

    model: str  # model path: the bench reads its tokenizer
    served_model_name: str | None
    input_len: int
    output_len: int
    max_concurrency: int


def bench_argv(
    vllm: str,
    base_url: str,
    spec: BenchSpec,
    *,
    num_prompts: int,
    output_len: int,
    result: Path | None,
) -> list[str]:
    """The `vllm bench serve` argument list; `result` set: --save-result into that file."""
    argv = [
        vllm,
        "bench",
        "serve",
        "--backend",
        "vllm",
        "--base-url",
        base_url,
        "--model",
        spec.model,
    ]
    if spec.served_model_name:
        argv += ["--served-model-name", spec.served_model_name]
    argv += [
        "--dataset-name",
        "random",
        "--random-input-len",
        str(spec.input_len),
        "--random-output-len",
        str(output_len),
        "--ignore-eos",
        "--num-prompts",
        str(num_prompts),
        "--max-concurrency",
        str(spec.max_concurrency),
        "--request-rate",
        "inf",
        "--seed",
        "0",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,90,99",
        "--disable-tqdm",
    ]
    if result is not None:
        argv += [
            "--save-result",
            "--result-dir",
            str(result.parent),
            "--result-filename",
            result.name,
        ]
    return argv


def run_bench(
    argv: list[str],
    *,
    env: Mapping[str, str],
    log: Path,
    server: VllmServer,
    timeout_s: float,
    what: str,
) -> float:
    """Run one bench to its end (seconds taken); TrialFailure if it or the server fails."""
    start = time.monotonic()
    child = Child(argv, env=env, log=log)
    try:
        while True:
            code = child.wait(POLL_S)
            if code is not None:
                break
            if not server.alive():
                raise failure(
                    f"vllm serve exited with code {server.child.returncode} during the {what}",
                    server.log,
                )
            if time.monotonic() - start > timeout_s:
                raise failure(
                    f"the {what} did not finish within {timeout_s:g} s (--bench-timeout); "
                    "the server may hang",
                    server.log,
                )
    finally:
        child.stop(BENCH_STOP_GRACE_S)
    # A server that died under the bench fails it even when the bench itself exited 0 (the
    # warm-up saves no result whose counts would show it).
    if not server.alive():
        raise failure(
            f"vllm serve exited with code {server.child.returncode} during the {what}",
            server.log,
        )
    if code != 0:
        raise failure(f"the {what} (vllm bench serve) exited with code {code}", log)
    return time.monotonic() - start


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_result(
    path: Path, *, num_prompts: int, log: Path, shown: str | None = None
) -> dict[str, Any]:
    """The saved bench result; TrialFailure unless every request completed and none failed."""
    name = shown or path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise failure(f"vllm bench serve wrote no result file {name}", log) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise failure(f"bench result {name} is unreadable: {exc}", log) from None
    if not isinstance(data, dict):
        raise failure(f"bench result {name} is not a JSON object", log)
    completed, failed = data.get("completed"), data.get("failed", 0)
    if completed != num_prompts or failed not in (0, None):
        raise failure(
            f"bench {name}: {completed} of {num_prompts} requests completed, {failed} failed",
            log,
        )
    if not _finite(data.get("output_throughput")) or data["output_throughput"] <= 0:
        raise failure(f"bench {name} has no positive output_throughput", log)
    return data


def partial_path(final: Path) -> Path:
    """Where a bench saves its result before autotune checks it and gives it its final name."""
    return final.with_name(f".{final.name}.partial")


def keep_result(final: Path, *, num_prompts: int, log: Path) -> dict[str, Any]:
    """Check the result the bench saved under `partial_path(final)` and rename it to `final`:
    a result file under its final name is always whole and valid."""
    partial = partial_path(final)
    data = read_result(partial, num_prompts=num_prompts, log=log, shown=final.name)
    os.replace(partial, final)
    return data
