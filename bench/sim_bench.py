"""Simulator speed, the realistic profile's step spread, and the modelled optimum for
Qwen3-32B-W8A8 TP4 batch 72 on 910B2.

Run: python bench/sim_bench.py. Every throughput here is SIMULATED (analytic model, estimated
hardware parameters), not measured on an NPU.
"""

from __future__ import annotations

import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.target import disabled_config, vendor_default_config
from autotune.workloads.base import Workload
from autotune.workloads.deployment import SIMULATED_EAGER_MAX_NUM_BATCHED_TOKENS
from autotune.workloads.simulate import (
    IDEAL,
    REALISTIC,
    Realism,
    SimulateBackend,
    simulate_throughput,
    simulate_trial,
    step_spread,
)

# Eager with 16384 batched tokens, where 0.23 fires every dense prefetch (the simulator's
# default is the vendor recipe's graph mode, where only the attention sites do).
WORKLOAD = Workload(
    model="Qwen3-32B-W8A8",
    max_num_seqs=72,
    tp=4,
    hardware="910B2",
    graph_mode=False,
    max_num_batched_tokens=SIMULATED_EAGER_MAX_NUM_BATCHED_TOKENS,
)


def config(qkv: float, o: float, gate_up: float, down: float) -> dict[str, Any]:
    """A full config; a module whose ratios are all 0 is off (0.23 reads a lone 0 as 'all')."""
    return {
        "weight_prefetch_config": {
            "enabled": True,
            "prefetch_ratio": {
                "attn": {"qkv": qkv, "o": o},
                "mlp": {"gate_up": gate_up, "down": down},
                "moe": {"gate_up": 0.8},
            },
        }
    }


def time_trial() -> None:
    for label, realism in (("realistic", REALISTIC), ("--ideal", IDEAL)):
        backend = SimulateBackend(WORKLOAD, seed=0, realism=realism)
        times, reads, tasks = [], [], 0
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: caches, first writes
            backend.run_trial(vendor_default_config(), Path(tmp), repeats=3, profile=True)
        for k in range(5):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                trial, result = backend.run_trial(
                    vendor_default_config(), Path(tmp) / f"t{k}", repeats=3, profile=True
                )
                times.append(time.perf_counter() - start)
                assert result.profile_dir is not None
                start = time.perf_counter()
                analyze(load_profiles(result.profile_dir))
                reads.append(time.perf_counter() - start)
                tasks = len(trial.tasks)
        print(
            f"one simulated trial ({label}), 64 layers x {WORKLOAD.profile_steps} profiled "
            f"steps ({tasks} tasks), all files, 3 bench repeats: median "
            f"{statistics.median(times) * 1e3:.0f} ms (min {min(times) * 1e3:.0f} ms); "
            f"reading and analysing its profile: median {statistics.median(reads) * 1e3:.0f} ms"
        )
    configs = [config(0.0, 0.0, g, d) for g in (0.1, 0.5, 1.0) for d in (0.1, 0.2, 0.3, 0.5)]
    simulate_throughput(WORKLOAD, configs[0])
    start = time.perf_counter()
    n = 0
    for _ in range(50):
        for c in configs:
            simulate_throughput(WORKLOAD, c)
            n += 1
    per = (time.perf_counter() - start) / n
    print(f"simulate_throughput: {per * 1e3:.2f} ms per call ({n} calls, cached plans)")


def profiled_step_spread(seeds: int = 16) -> None:
    """The profiled step (device span / steps, as the search reads it) over seeds."""
    cfg = vendor_default_config()
    for label, realism in (("realistic", REALISTIC), ("--ideal", IDEAL)):
        steps = []
        for seed in range(seeds):
            t = simulate_trial(WORKLOAD, cfg, realism=realism, seed=seed).tasks
            steps.append(float(t["end_ns"].max() - t["start_ns"].min()) / WORKLOAD.profile_steps)
        spread = statistics.stdev(steps) / statistics.mean(steps)
        print(
            f"profiled step over {seeds} seeds ({label}): relative std {spread * 100:.2f} % "
            f"of the mean of {WORKLOAD.profile_steps} steps"
            + (
                f"; documented {_documented(realism, cfg) * 100:.2f} %"
                if realism.step_jitter
                else ""
            )
        )


def _documented(realism: Realism, cfg: dict[str, Any]) -> float:
    trial = simulate_trial(WORKLOAD, cfg, realism=realism)
    return step_spread(trial) / math.sqrt(WORKLOAD.profile_steps)


def grid_optimum() -> None:
    attn = [0.0, 0.001, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    gate_up = [0.001, 0.05, 0.1, 0.2, 0.29, 1.0]
    down = [0.001, 0.05, 0.1, 0.15, 0.2, 0.225, 0.25, 0.275, 0.3, 0.35, 0.4, 0.5, 0.6, 1.0]
    start = time.perf_counter()
    best: tuple[float, tuple[float, ...]] = (0.0, ())
    n = 0
    for qkv, o, g, d in itertools.product(attn, attn, gate_up, down):
        if (qkv == 0.0) != (o == 0.0):
            continue  # a lone 0 means "the whole weight" in 0.23; keep the grid unambiguous
        thr = simulate_throughput(WORKLOAD, config(qkv, o, g, d))
        n += 1
        if thr > best[0]:
            best = (thr, (qkv, o, g, d))
    elapsed = time.perf_counter() - start
    off = simulate_throughput(WORKLOAD, disabled_config())
    default = simulate_throughput(WORKLOAD, vendor_default_config())
    thr, (qkv, o, g, d) = best
    print(f"grid: {n} configs in {elapsed:.1f} s")
    print(
        "MODELLED optimum (simulated, 910B2 estimates: HBM 1.6 TB/s, matmul 1.28 TB/s, "
        "CMO 1.36 TB/s, L2 read 4.0 TB/s, sync 1.5 us/prefetch; Qwen3-32B-W8A8 TP4, batch 72, "
        "eager, flashcomm1, 1024 in / 512 out):"
    )
    attn_txt = "attn off" if qkv == 0.0 else f"attn qkv={qkv} o={o}"
    print(f"  best {attn_txt}, mlp gate_up={g} down={d}: {thr:.1f} tok/s")
    print(f"  disabled {off:.1f} tok/s -> best is {100 * (thr / off - 1):+.2f} %")
    print(f"  vendor default {default:.1f} tok/s -> best is {100 * (thr / default - 1):+.2f} %")
    print(f"  vendor default vs disabled: {100 * (default / off - 1):+.2f} %")


if __name__ == "__main__":
    time_trial()
    profiled_step_spread()
    grid_optimum()
