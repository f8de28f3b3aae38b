"""How many trials each search needs to come within 0.5 % of the grid optimum, on the simulator.

Methods, each run for several seeds (the seed drives the simulated bench noise and the sampler):

- ours       `autotune run`'s Tuner: probe, profile-guided seed, guided search (real pipeline:
             simulated profiles are written, read and analysed each trial);
- ours-tpe   the same Tuner with Optuna's TPE (multivariate) as the sampler after the seed;
- ours-gp    the same Tuner with Optuna's GPSampler after the seed (needs the `gp` extra: torch);
- tpe-raw    plain Optuna TPE (Optuna 5 defaults) on the five raw ratios in [0, 1];
- random     Optuna's RandomSampler on the same raw ratios;
- vendor     the vendor-doc sweep: prefetch off, the defaults, then one ratio for every key from
             1.0 down to 0.1.

A method's incumbent after k trials is the config it would hand to the user; it counts as "within"
when the noiseless modelled throughput of that config (`simulate_throughput`) is within 0.5 % of
the optimum of an exhaustive grid over the effective-bytes ladder. Reported: the median over seeds
of the first k at which that holds (">B" when not within the budget B).

Usage: python bench/search_efficiency.py [--seeds 20] [--quick] [--jobs 2] [--methods ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from autotune import target
from autotune.rundir import RunDir, TrialRecord
from autotune.search import SearchOptions, Tuner
from autotune.search.grid import grid_optimum as search_grid_optimum
from autotune.workloads.base import Workload
from autotune.workloads.simulate import SimulateBackend, simulate_throughput

WITHIN = 0.005
EXTRA = {"enable_flashcomm1": True}
CASES: tuple[tuple[str, int], ...] = (
    ("Qwen3-32B-W8A8", 32),
    ("Qwen3-32B-W8A8", 72),
    ("Qwen3-32B-W8A8", 128),
    ("Qwen3-30B-A3B-W8A8", 72),
    ("Qwen3-30B-A3B-W8A8", 144),
    ("Qwen3-235B-A22B-W8A8", 72),
)
QUICK_CASES: tuple[tuple[str, int], ...] = (
    ("Qwen3-32B-W8A8", 72),
    ("Qwen3-32B-W8A8", 128),
    ("Qwen3-30B-A3B-W8A8", 144),
    ("Qwen3-235B-A22B-W8A8", 72),
)
METHODS: tuple[str, ...] = (
    "ours",
    "ours-tpe",
    "ours-gp",
    "ours-random",
    "tpe-raw",
    "random",
    "vendor",
)
DEFAULT_METHODS: tuple[str, ...] = ("ours", "tpe-raw", "random", "vendor")
# Our runs write and parse a profile per trial, so they get the budget of `autotune run`; the
# others cost microseconds a trial and get a long one.
OURS_BUDGET = 12
RAW_KEYS: tuple[tuple[str, str], ...] = tuple(
    (module, key) for module, keys in target.MODULE_KEYS.items() for key in keys
)


def workload(model: str, mns: int) -> Workload:
    # One profiled step keeps the bench fast; the analysis reads it the same way as eight.
    return Workload(model=model, max_num_seqs=mns, profile_steps=1)


@lru_cache(maxsize=32)
def grid_optimum(model: str, mns: int) -> float:
    """Best noiseless throughput over the effective-bytes ladder of every site that can matter."""
    return search_grid_optimum(workload(model, mns), EXTRA)


def noisy(w: Workload, config: dict[str, Any], seed: int, noise: float) -> float:
    """A bench throughput with the simulator's noise model: one seeded Gaussian factor per run."""
    blob = json.dumps(config, sort_keys=True).encode()
    h = int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")
    eps = float(np.clip(np.random.default_rng([seed, h, 0]).normal(0.0, noise), -0.5, 0.5))
    return simulate_throughput(w, config) / (1.0 + eps)


def raw_config(ratios: dict[str, float]) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    for module, key in RAW_KEYS:
        table.setdefault(module, {})[key] = round(ratios[f"{module}.{key}"], 6)
    return {"weight_prefetch_config": {"enabled": True, "prefetch_ratio": table}, **EXTRA}


def run_optuna_raw(
    w: Workload, seed: int, budget: int, noise: float, sampler: str
) -> list[dict[str, Any]]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    smp: optuna.samplers.BaseSampler = (
        optuna.samplers.TPESampler(seed=seed)
        if sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    study = optuna.create_study(direction="maximize", sampler=smp)
    incumbents: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    for _ in range(budget):
        trial = study.ask()
        ratios = {f"{m}.{k}": trial.suggest_float(f"{m}.{k}", 0.0, 1.0) for m, k in RAW_KEYS}
        cfg = raw_config(ratios)
        value = noisy(w, cfg, seed, noise)
        study.tell(trial, value)
        if best is None or value > best[0]:
            best = (value, cfg)
        incumbents.append(best[1])
    return incumbents


def vendor_configs() -> list[dict[str, Any]]:
    out = [target.disabled_config(EXTRA), target.vendor_default_config(EXTRA)]
    for r in (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1):
        out.append(raw_config({f"{m}.{k}": r for m, k in RAW_KEYS}))
    return out


def run_vendor(w: Workload, seed: int, budget: int, noise: float) -> list[dict[str, Any]]:
    incumbents: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    for cfg in vendor_configs()[:budget]:
        value = noisy(w, cfg, seed, noise)
        if best is None or value > best[0]:
            best = (value, cfg)
        incumbents.append(best[1])
    return incumbents


class _Incumbents:
    """A RunObserver that records the incumbent config after every measured trial."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []

    def phase(self, message: str) -> None:
        pass

    def trial_started(self, number: int, role: str, effective_bytes: Any) -> None:
        pass

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        if record.state == "complete" and best is not None:
            self.configs.append(best.config)


def run_ours(
    w: Workload, seed: int, budget: int, noise: float, sampler: str
) -> list[dict[str, Any]]:
    obs = _Incumbents()
    with tempfile.TemporaryDirectory(prefix="autotune-bench-") as tmp:
        tuner = Tuner(
            workload=w,
            backend=SimulateBackend(w, seed=seed, noise=noise),
            rundir=RunDir(Path(tmp) / "run"),
            options=SearchOptions(
                trials=budget, sampler=sampler, seed=seed, keep_profiles="none", extra=EXTRA
            ),
            study_name="bench",
            observer=obs,
        )
        tuner.run()
    return obs.configs


RUNNERS: dict[str, Callable[[Workload, int, int, float], list[dict[str, Any]]]] = {
    "ours": lambda w, s, b, n: run_ours(w, s, b, n, "guided"),
    "ours-tpe": lambda w, s, b, n: run_ours(w, s, b, n, "tpe"),
    "ours-gp": lambda w, s, b, n: run_ours(w, s, b, n, "gp"),
    "ours-random": lambda w, s, b, n: run_ours(w, s, b, n, "random"),
    "tpe-raw": lambda w, s, b, n: run_optuna_raw(w, s, b, n, "tpe"),
    "random": lambda w, s, b, n: run_optuna_raw(w, s, b, n, "random"),
    "vendor": run_vendor,
}


@dataclass(frozen=True)
class Job:
    method: str
    model: str
    mns: int
    seed: int
    budget: int
    noise: float
    within: float = WITHIN


def run_job(job: Job) -> tuple[Job, int | None, bool, list[float]]:
    """(job, first trial count within the target or None, final pick within, gap % per trial)."""
    w = workload(job.model, job.mns)
    optimum = _PRIMED.get((job.model, job.mns)) or grid_optimum(job.model, job.mns)
    incumbents = RUNNERS[job.method](w, job.seed, job.budget, job.noise)
    hit: int | None = None
    cache: dict[str, float] = {}
    within: list[bool] = []
    gaps: list[float] = []
    for cfg in incumbents:
        blob = json.dumps(cfg, sort_keys=True)
        if blob not in cache:
            cache[blob] = simulate_throughput(w, cfg)
        within.append(cache[blob] >= (1.0 - job.within) * optimum)
        gaps.append(100.0 * (1.0 - cache[blob] / optimum))
    hit = next((k for k, ok in enumerate(within, start=1) if ok), None)
    final = bool(within and within[-1])
    return job, hit, final, gaps


def median_trials(hits: Sequence[int | None], budget: int) -> str:
    values = [budget + 1 if h is None else h for h in hits]
    med = statistics.median(values)
    return f">{budget}" if med > budget else f"{med:g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None, help="seeds per case (20; --quick: 5)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and seeds (~1 min)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget", type=int, default=40, help="trials per run of the others")
    parser.add_argument("--noise", type=float, default=0.01, help="bench noise (relative std)")
    parser.add_argument("--within", type=float, default=WITHIN, help="target gap (0.005 = 0.5 %%)")
    parser.add_argument(
        "--cases", nargs="+", default=None, help="MODEL:SEQS, e.g. Qwen3-32B-W8A8:72"
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument(
        "--gaps", action="store_true", help="also print the mean gap of the pick after k trials"
    )
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        cases = tuple((c.split(":")[0], int(c.split(":")[1])) for c in args.cases)
    seeds = args.seeds if args.seeds is not None else (5 if args.quick else 20)
    jobs = [
        Job(
            m,
            model,
            mns,
            seed,
            OURS_BUDGET if m.startswith("ours") else args.budget,
            args.noise,
            args.within,
        )
        for model, mns in cases
        for m in args.methods
        for seed in range(seeds)
    ]
    start = time.perf_counter()
    # Grid optima first, once per case, so worker processes do not all recompute them.
    with multiprocessing.Pool(args.jobs) as pool:
        optima = dict(zip(cases, pool.starmap(grid_optimum, cases), strict=True))
    with multiprocessing.Pool(args.jobs, initializer=_prime, initargs=(optima,)) as pool:
        results = pool.map(run_job, jobs, chunksize=1)
    hits: dict[tuple[str, str, int], list[int | None]] = {}
    finals: dict[tuple[str, str, int], list[bool]] = {}
    gaps: dict[tuple[str, str, int], list[list[float]]] = {}
    budgets: dict[str, int] = {}
    for job, hit, final, gap in results:
        key = (job.method, job.model, job.mns)
        hits.setdefault(key, []).append(hit)
        finals.setdefault(key, []).append(final)
        gaps.setdefault(key, []).append(gap)
        budgets[job.method] = job.budget
    print(
        f"median trials to within {args.within:.1%} of the grid optimum; in brackets the share of "
        f"seeds whose final pick is within ({seeds} seeds, noise {args.noise:.1%}, budgets "
        + ", ".join(f"{m} {budgets[m]}" for m in args.methods)
        + "; SIMULATED)"
    )
    header = f"{'model':<22} {'seqs':>5} " + " ".join(f"{m:>12}" for m in args.methods)
    print(header)
    for model, mns in cases:
        row = f"{model:<22} {mns:>5} "
        for m in args.methods:
            key = (m, model, mns)
            share = sum(finals[key]) / len(finals[key])
            row += f" {median_trials(hits[key], budgets[m]):>5} ({share:4.0%})"
        print(row)
    if args.gaps:
        print("mean gap (%) to the grid optimum of the pick after k trials, k = 3 4 6 8 12")
        for model, mns in cases:
            for m in args.methods:
                runs = gaps[(m, model, mns)]
                cells = [
                    statistics.fmean(g[min(k, len(g)) - 1] for g in runs if g)
                    for k in (3, 4, 6, 8, 12)
                ]
                print(f"{model:<22} {mns:>5} {m:<12} " + " ".join(f"{c:6.2f}" for c in cells))
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


# Grid optima computed once in the parent, handed to every worker.
_PRIMED: dict[tuple[str, int], float] = {}


def _prime(optima: dict[tuple[str, int], float]) -> None:
    _PRIMED.update(optima)


if __name__ == "__main__":
    sys.exit(main())
