"""A simulated trial's `vllm bench serve --save-result` JSON, with seeded run-to-run noise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from autotune.workloads.sim.steps import BENCH_WAVES, NOTE, SimTrial, config_hash

# Fixed base of simulated timestamps: local Unix-epoch ns (2026-04-14), never a float.
BASE_NS = 1_776_130_000_000_000_000


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {
        f"mean_{prefix}_ms": float(np.mean(values)),
        f"median_{prefix}_ms": float(np.median(values)),
        f"std_{prefix}_ms": float(np.std(values)),
        f"p99_{prefix}_ms": float(np.percentile(values, 99)),
    }


def bench_result(
    trial: SimTrial,
    *,
    seed: int = 0,
    noise: float = 0.01,
    repeat: int = 0,
    measurement: int = 0,
) -> dict[str, Any]:
    """One `vllm bench serve --save-result` JSON for the trial, with seeded relative noise.

    One Gaussian factor (std `noise`) scales the whole run, so throughput and TPOT move
    together the way run-to-run variation does; per-request spread is drawn around it. The draw
    is keyed on the seed, the config, the repeat and the `measurement`: the k-th time a run
    measures a config (a confirmation, a retry) it draws anew, as a real host would.
    """
    w = trial.workload
    key = [seed, config_hash(trial.config), repeat]
    rng = np.random.default_rng([*key, measurement] if measurement else key)
    eps = float(np.clip(rng.normal(0.0, noise), -0.5, 0.5)) if noise > 0 else 0.0
    n = BENCH_WAVES * w.max_num_seqs
    tpot = trial.tpot_ms * (1.0 + eps)
    duration = trial.duration_s * (1.0 + eps)
    spread = max(noise, 1e-4)
    tpots = tpot * (1.0 + rng.normal(0.0, spread / 2, n))
    # First tokens arrive chunk by chunk during each wave's prefill.
    ttfts = trial.ttft_ms * (1.0 + eps) * rng.uniform(0.5, 1.5, n)
    e2els = ttfts + (w.output_len - 1) * tpots
    itls = tpot * (1.0 + rng.normal(0.0, 2 * spread, min(20_000, n * (w.output_len - 1))))
    out_tokens = n * w.output_len
    in_tokens = n * w.input_len
    result: dict[str, Any] = {
        "date": datetime.fromtimestamp(BASE_NS // 10**9, UTC).strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": "vllm",
        "backend": "vllm",
        "label": None,
        "model_id": w.model,
        "tokenizer_id": w.model,
        "num_prompts": n,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": w.max_num_seqs,
        "duration": duration,
        "completed": n,
        "failed": 0,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": n / duration,
        "request_goodput": None,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "max_output_tokens_per_s": float(w.max_num_seqs / (tpot / 1e3)),
        "max_concurrent_requests": w.max_num_seqs,
    }
    result.update(_stats("ttft", ttfts))
    result.update(_stats("tpot", tpots))
    result.update(_stats("itl", itls))
    result.update(_stats("e2el", e2els))
    result["autotune_simulated"] = True
    result["autotune_note"] = NOTE
    result["autotune_hardware"] = trial.hardware.summary()
    # What drew this run's noise, so a replay can reproduce it.
    result["autotune_noise"] = {
        "seed": seed,
        "noise": noise,
        "repeat": repeat,
        "measurement": measurement,
    }
    return result
