"""The simulator backend: trials on the analytic twin of vllm-ascend 0.23, in a real trial's files.

The twin lives in `autotune.workloads.sim`: the decode layer (`layer`), the timeline engine
(`engine`), the noiseless and the profiled decode steps (`steps`), the profile effects and their
sizes (`realism`), the bench JSON (`bench`) and the profiler directory (`writer`). This module
runs one trial on it as a backend does and re-exports what the rest of autotune calls.
Everything here is MODELLED, not measured; the parameters are the estimates of
`autotune.hardware` and `autotune.workloads.sim.realism`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotune._io import read_text
from autotune.errors import AutotuneError
from autotune.hardware import Hardware
from autotune.lateness import DEFAULT_LATE_TOLERANCE_US, rule_text
from autotune.rundir import CONFIG_FILE, atomic_write_text
from autotune.target import (
    check_setup,
    inert_sites,
    row_op_of,
    validate_config,
    vendor_default_config,
)
from autotune.workloads.base import TrialResult, Workload, setup_of
from autotune.workloads.sim.bench import BASE_NS, bench_result
from autotune.workloads.sim.realism import IDEAL, NOISELESS, REALISTIC, Realism, parse_realism
from autotune.workloads.sim.steps import (
    GROUND_TRUTH_COLUMNS,
    SimTrial,
    config_hash,
    hardware_of,
    simulate_throughput,
    simulate_trial,
    static_of,
    step_spread,
)
from autotune.workloads.sim.writer import write_profile

__all__ = [
    "GROUND_TRUTH_COLUMNS",
    "IDEAL",
    "NOISELESS",
    "PROFILE_BASE_NS",
    "REALISTIC",
    "Realism",
    "SimTrial",
    "SimulateBackend",
    "bench_result",
    "parse_realism",
    "read_config",
    "simulate_once",
    "simulate_throughput",
    "simulate_trial",
    "step_spread",
    "summary_lines",
    "write_profile",
]

# Profiled steps start 60 s into the run, after warm-up.
PROFILE_BASE_NS = BASE_NS + 60 * 10**9


def fake_pid(config: Mapping[str, Any]) -> int:
    """A stable fake OS pid for the profile directory name."""
    return 10_000 + config_hash(config) % 50_000


class SimulateBackend:
    """Backend that runs trials on the analytic model and writes the files a real trial writes."""

    name = "simulate"
    simulated = True

    def __init__(
        self,
        workload: Workload,
        *,
        seed: int = 0,
        noise: float = 0.01,
        hardware: Hardware | None = None,
        trial_s: float = 0.0,
        realism: Realism = REALISTIC,
    ) -> None:
        """`seed` draws the bench noise and the profile's effects (with the config), `noise` is
        the bench's run-to-run relative noise, `realism` the profile's effects (IDEAL: none)."""
        realism.check()
        if not math.isfinite(noise) or noise < 0:
            raise AutotuneError(f"--noise must be a fraction >= 0, got {noise!r}")
        if not math.isfinite(trial_s) or trial_s < 0:
            raise AutotuneError(f"--sim-trial-seconds must be >= 0, got {trial_s!r}")
        # Wall time each trial takes at least, standing in for server start, bench and profile.
        self.trial_s = trial_s
        self.workload = workload
        self.seed = seed
        self.noise = noise
        self.realism = realism
        self.hardware = hardware_of(workload, hardware)
        static_of(workload, self.hardware)  # bad model / sizes fail here, before any trial

    def target_version(self) -> str:
        """The simulator models vllm-ascend 0.23.0's prefetch code."""
        return "0.23.0 (modelled)"

    def check(self) -> None:
        """The simulator needs nothing from the machine."""

    def run(
        self, config: dict[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> TrialResult:
        started = time.monotonic()
        result = self.run_trial(config, out_dir, repeats=repeats, profile=profile)[1]
        time.sleep(max(0.0, self.trial_s - (time.monotonic() - started)))
        return result

    def run_trial(
        self, config: Mapping[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> tuple[SimTrial, TrialResult]:
        """`run`, also returning the simulated trial (its ground truth)."""
        validate_config(config)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise AutotuneError(f"repeats must be an integer >= 1, got {repeats!r}")
        trial = simulate_trial(
            self.workload,
            config,
            self.hardware,
            realism=self.realism,
            seed=self.seed,
            timeline=profile,
        )
        index = measurement_index(config, out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            benches: list[dict[str, Any]] = []
            paths: list[Path] = []
            for k in range(repeats):
                bench = bench_result(
                    trial, seed=self.seed, noise=self.noise, repeat=k, measurement=index
                )
                path = out_dir / f"bench_r{k}.json"
                atomic_write_text(path, json.dumps(bench, indent=2))
                benches.append(bench)
                paths.append(path)
            prof_dir: Path | None = None
            if profile:
                prof_dir = out_dir / "prof"
                write_profile(trial, prof_dir, base_ns=PROFILE_BASE_NS, pid=fake_pid(trial.config))
        except OSError as exc:
            raise AutotuneError(f"cannot write simulated trial to {out_dir}: {exc}") from None
        return trial, TrialResult(
            benches=benches, bench_paths=paths, profile_dir=prof_dir, simulated=True
        )


def measurement_index(config: Mapping[str, Any], out_dir: Path) -> int:
    """How many earlier trials of this run measured the same config: the trial folders numbered
    below `out_dir` beside it (trials/NNN) whose config.json holds it. Read from the run
    directory, so a resumed run counts the measurements made before it; 0 outside a run."""
    if not out_dir.name.isdigit() or not out_dir.parent.is_dir():
        return 0
    mine = config_hash(config)
    found = 0
    for folder in out_dir.parent.iterdir():
        if not folder.name.isdigit() or int(folder.name) >= int(out_dir.name):
            continue
        try:
            earlier = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(earlier, dict) and config_hash(earlier) == mine:
            found += 1
    return found


# ---------------------------------------------------------------------------------------------
# `autotune simulate`


def read_config(path: Path | None) -> dict[str, Any]:
    """The --config file as an additional-config dict; None gives 0.23's defaults, prefetch on."""
    if path is None:
        return vendor_default_config()
    text = read_text(path, f"--config {path}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutotuneError(f"--config {path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AutotuneError(f"--config {path}: must hold a JSON object")
    try:
        validate_config(data)
    except AutotuneError as exc:
        raise AutotuneError(f"--config {path}: {exc}") from None
    return data


def simulate_once(
    workload: Workload,
    config: Mapping[str, Any],
    out_dir: Path,
    *,
    seed: int = 0,
    noise: float = 0.01,
    realism: Realism = REALISTIC,
) -> tuple[SimTrial, TrialResult]:
    """One simulated trial with a profile, as `autotune simulate` runs it.

    Refuses a deployment 0.23 would not start; the config's other keys pick o_proj's row op.
    """
    if not workload.row_op:
        workload = replace(workload, row_op=row_op_of(config))
    check_setup(setup_of(workload))
    backend = SimulateBackend(workload, seed=seed, noise=noise, realism=realism)
    return backend.run_trial(config, out_dir, repeats=1, profile=True)


def summary_lines(trial: SimTrial, result: TrialResult) -> list[str]:
    """Plain-text summary of a simulated trial; the first line says it is simulated."""
    w = trial.workload
    fc1 = "on" if w.flashcomm1 else "off"
    lines = [
        "SIMULATED trial: modelled by autotune's analytic decode-step model, "
        "not measured on an NPU.",
        f"hardware   {trial.hardware.summary()}",
        f"effects    {trial.realism.summary()}, seed {trial.seed}",
        f"workload   {w.model} TP{w.tp} EP{w.ep}, max-num-seqs {w.max_num_seqs}, flashcomm1 {fc1}, "
        f"{w.graph.text()}, max-num-batched-tokens {w.max_num_batched_tokens}, "
        f"{w.input_len} in / {w.output_len} out"
        + (", mlp.gate_up joined after its norm" if w.gate_up_join == "norm" else ""),
    ]
    fired = ", ".join(
        f"{p.site}({p.weight}) {p.bytes / 2**20:.2f} MiB" for p in trial.prefetches_per_layer
    )
    lines.append(f"prefetch   per layer: {fired or 'none'}")
    by_reason: dict[str, list[str]] = {}
    for site, reason in inert_sites(setup_of(w)).items():
        by_reason.setdefault(reason, []).append(site)
    for reason, sites in by_reason.items():
        lines.append(f"inert      {', '.join(sites)}: {reason}")
    bench = result.benches[0]
    lines.append(
        f"result     output throughput {bench['output_throughput']:.1f} tok/s "
        f"(noiseless {trial.output_throughput:.1f}), mean TPOT {bench['mean_tpot_ms']:.3f} ms "
        f"(noiseless {trial.tpot_ms:.3f})"
    )
    truth = trial.prefetches
    if len(truth):
        per_site = truth.groupby("site", sort=False).agg(
            n=("late", "size"), late=("late", "sum"), stall=("stall_ns", "sum")
        )
        steps = max(1, len(trial.step_spans))
        parts = [
            f"{site} {int(r.late)}/{int(r.n)} late, stall {r.stall / steps / 1e3:.1f} µs/step"
            for site, r in per_site.iterrows()
        ]
        lines.append("profile    " + "; ".join(parts))
        lines.append(f"           {rule_text(DEFAULT_LATE_TOLERANCE_US)}")
    lines.append(f"files      {', '.join(str(p) for p in result.bench_paths)}")
    if result.profile_dir is not None:
        for d in sorted(result.profile_dir.glob("*_ascend_pt")):
            lines.append(f"           {d}")
    return lines
