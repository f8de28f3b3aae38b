"""The overlap analysis recovers the simulator's own ground truth from the profile it writes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.workloads.base import Workload
from autotune.workloads.simulate import PROFILE_BASE_NS, SimTrial, SimulateBackend

DENSE = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2)
DENSE_NO_FC1 = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, flashcomm1=False)
MOE = Workload(model="Qwen3-30B-A3B-W8A8", max_num_seqs=64, profile_steps=2)
# mlp.gate_up joined right after its norm (as before vllm-ascend #4168).
DENSE_NORM_JOIN = Workload(
    model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, gate_up_join="norm"
)


def cfg(**modules: dict[str, float]) -> dict[str, Any]:
    return {"weight_prefetch_config": {"enabled": True, "prefetch_ratio": modules}}


ATTN_OFF = {"qkv": 0.0, "o": 0.0}
CASES: list[tuple[str, Workload, dict[str, Any]]] = [
    ("dense-default", DENSE, cfg()),
    ("dense-best", DENSE, cfg(attn=ATTN_OFF, mlp={"gate_up": 1.0, "down": 0.25})),
    ("dense-small", DENSE, cfg(attn={"qkv": 0.05, "o": 0.02}, mlp={"gate_up": 0.05, "down": 0.1})),
    ("dense-mlp-off", DENSE, cfg(attn={"qkv": 0.5, "o": 1.0}, mlp={"gate_up": 0.0, "down": 0.0})),
    ("dense-no-fc1", DENSE_NO_FC1, cfg(mlp={"gate_up": 1.0, "down": 0.6})),
    ("dense-off", DENSE, {"weight_prefetch_config": {"enabled": False}}),
    ("dense-norm-join", DENSE_NORM_JOIN, cfg(attn=ATTN_OFF, mlp={"gate_up": 1.0, "down": 0.25})),
    ("dense-norm-join-small", DENSE_NORM_JOIN, cfg(mlp={"gate_up": 0.02, "down": 0.1})),
    ("moe-default", MOE, cfg()),
    ("moe-attn", MOE, cfg(attn={"qkv": 0.2, "o": 1.0}, moe={"gate_up": 0.5})),
]


def _simulate(tmp: Path, workload: Workload, config: dict[str, Any]) -> tuple[SimTrial, Path]:
    trial, result = SimulateBackend(workload, seed=11).run_trial(
        config, tmp, repeats=1, profile=True
    )
    assert result.profile_dir is not None
    return trial, result.profile_dir


def _per_site(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("site").agg(
        count=("late", "size"),
        late=("late", "sum"),
        slack=("slack_ns", "sum"),
        stall=("stall_ns", "sum"),
    )


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= max(0.01 * max(abs(a), abs(b)), 1.0)


@pytest.mark.parametrize(("label", "workload", "config"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("source", ["db", "trace_view"])
def test_analysis_recovers_ground_truth(
    tmp_path: Path, label: str, workload: Workload, config: dict[str, Any], source: str
) -> None:
    trial, prof = _simulate(tmp_path / "trial", workload, config)
    if source == "trace_view":
        for db in prof.glob("*_ascend_pt/ASCEND_PROFILER_OUTPUT/*.db"):
            db.unlink()
    profiles = load_profiles(prof)
    assert [p.source for p in profiles] == [source]
    assert profiles[0].simulated and profiles[0].steps == workload.profile_steps
    result = analyze(profiles)
    assert result.simulated and result.steps == workload.profile_steps
    assert result.unattributed == 0

    truth = trial.prefetches
    found = result.prefetches
    assert len(found) == len(truth)
    if truth.empty:
        return
    want, got = _per_site(truth), _per_site(found)
    assert list(want.index) == list(got.index)
    for site in want.index:
        w, g = want.loc[site], got.loc[site]
        assert int(w["count"]) == int(g["count"]), site
        assert int(w["late"]) == int(g["late"]), site
        assert _close(float(w["slack"]), float(g["slack"])), (site, w["slack"], g["slack"])
        assert _close(float(w["stall"]), float(g["stall"])), (site, w["stall"], g["stall"])
    # Prefetch by prefetch: same site, layer and step at the same CMO start.
    keys = ["start_ns", "site", "layer", "step"]
    shifted = truth[keys].assign(start_ns=truth["start_ns"] + PROFILE_BASE_NS)
    merged = shifted.merge(found[keys], on="start_ns", suffixes=("", "_a"))
    assert len(merged) == len(truth)
    for col in ("site", "layer", "step"):
        assert (merged[col] == merged[f"{col}_a"]).all(), col


def test_moe_has_only_attention_sites(tmp_path: Path) -> None:
    _, prof = _simulate(tmp_path, MOE, cfg(moe={"gate_up": 0.8}))
    result = analyze(load_profiles(prof))
    assert {s.site for s in result.sites if s.count} == {"attn.qkv", "attn.o"}


def test_copy_of_profile_parent_is_one_rank(tmp_path: Path) -> None:
    _, prof = _simulate(tmp_path / "a", DENSE, cfg())
    shutil.copytree(prof, tmp_path / "b")
    assert len(load_profiles(tmp_path / "b")) == 1


@pytest.mark.parametrize(("join", "verdict"), [("swiglu", "hidden"), ("norm", "late")])
def test_gate_up_join_placement(tmp_path: Path, join: str, verdict: str) -> None:
    # A 9.4 MiB gate_up prefetch (ratio 0.15): hidden behind the post-attention norm and quantize
    # when joined after SwiGLU (at decode there is no all-gather in that window); late, with its
    # join's stall, when joined right after its norm.
    workload = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, gate_up_join=join)
    trial, prof = _simulate(tmp_path, workload, cfg(attn=ATTN_OFF, mlp={"gate_up": 0.15}))
    result = analyze(load_profiles(prof))
    (s,) = [s for s in result.sites if s.site == "mlp.gate_up"]
    assert s.verdict == verdict
    truth = trial.prefetches[trial.prefetches["site"] == "mlp.gate_up"]
    assert s.stall_us_total == pytest.approx(truth["stall_ns"].sum() / 1000, rel=0.01, abs=0.01)
    assert (s.stall_us_total > 0) == (join == "norm")
    assert result.unattributed_stall_us == 0.0
    charged = sum(x.stall_us_total for x in result.sites)
    assert charged == pytest.approx(result.join_us_total)
