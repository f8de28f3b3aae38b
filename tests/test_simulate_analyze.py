"""The overlap analysis recovers, prefetch by prefetch, the schedule the simulator built.

The simulator's truth comes from its own schedule (which record issued a CMO, which wait joined
it, which matmul reads its weight), not from the analysis' rules; these tests hold the two side
by side on realistic profiles (communication on its own stream, jitter, profiler overhead, both
CMO task namings) and on the ideal ones.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from autotune.hardware import load_hardware
from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.workloads.base import Workload
from autotune.workloads.simulate import (
    IDEAL,
    PROFILE_BASE_NS,
    REALISTIC,
    Realism,
    SimTrial,
    SimulateBackend,
)

DENSE = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2)
DENSE_GRAPH = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, graph_mode=True)
DENSE_NO_FC1 = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, flashcomm1=False)
# Above 1000 tokens flashcomm1 runs its all-gathers inside the qkv and gate_up windows.
DENSE_SP = Workload(model="Qwen3-32B-W8A8", max_num_seqs=1024, profile_steps=1)
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
    ("dense-graph", DENSE_GRAPH, cfg(attn={"qkv": 0.3, "o": 1.0})),
    ("dense-best", DENSE, cfg(attn=ATTN_OFF, mlp={"gate_up": 1.0, "down": 0.25})),
    ("dense-small", DENSE, cfg(attn={"qkv": 0.05, "o": 0.02}, mlp={"gate_up": 0.05, "down": 0.1})),
    ("dense-mlp-off", DENSE, cfg(attn={"qkv": 0.5, "o": 1.0}, mlp={"gate_up": 0.0, "down": 0.0})),
    ("dense-no-fc1", DENSE_NO_FC1, cfg(mlp={"gate_up": 1.0, "down": 0.6})),
    ("dense-sp", DENSE_SP, cfg(mlp={"gate_up": 0.2, "down": 0.3})),
    ("dense-off", DENSE, {"weight_prefetch_config": {"enabled": False}}),
    ("dense-norm-join", DENSE_NORM_JOIN, cfg(attn=ATTN_OFF, mlp={"gate_up": 1.0, "down": 0.25})),
    ("dense-norm-join-small", DENSE_NORM_JOIN, cfg(mlp={"gate_up": 0.02, "down": 0.1})),
    ("moe-default", MOE, cfg()),
    ("moe-attn", MOE, cfg(attn={"qkv": 0.2, "o": 1.0}, moe={"gate_up": 0.5})),
]
REALISMS = {"realistic": REALISTIC, "ideal": IDEAL}
# Time columns of the truth are relative to the profile; the analysis reads absolute ones.
_TIMES = ("start_ns", "end_ns", "window_start_ns", "window_end_ns", "join_start_ns", "join_end_ns")


def _simulate(
    tmp: Path,
    workload: Workload,
    config: dict[str, Any],
    realism: Realism = REALISTIC,
    **backend: Any,
) -> tuple[SimTrial, Path]:
    trial, result = SimulateBackend(workload, seed=11, realism=realism, **backend).run_trial(
        config, tmp, repeats=1, profile=True
    )
    assert result.profile_dir is not None
    return trial, result.profile_dir


def _side_by_side(trial: SimTrial, found: pd.DataFrame) -> pd.DataFrame:
    """Truth and analysis of each prefetch on one row (suffixes _t, _a), matched by CMO start."""
    truth = trial.prefetches.assign(**{c: trial.prefetches[c] + PROFILE_BASE_NS for c in _TIMES})
    # A prefetch without a window or join keeps -1 in the truth.
    for c in _TIMES:
        truth.loc[trial.prefetches[c] < 0, c] = -1
    both = truth.merge(found, on="start_ns", suffixes=("_t", "_a"), validate="one_to_one")
    assert len(both) == len(truth) == len(found)
    return both


def _shared_in_flight(both: pd.DataFrame) -> pd.Series:
    """Prefetches whose join also waited for another prefetch still running when it began."""
    running = both["end_ns_t"] > both["join_start_ns_t"]
    per_join = running.groupby(both["join_start_ns_t"]).transform("sum")
    return per_join > 1


def assert_recovers_schedule(trial: SimTrial, found: pd.DataFrame) -> None:
    """The analysis matches the schedule per prefetch: site, layer, step, window, slack,
    lateness, join and stall (a join waited on several CMOs still running included)."""
    both = _side_by_side(trial, found)
    for col in ("site", "layer", "step", "end_ns", "window_start_ns", "window_end_ns",
                "slack_ns", "late", "join_start_ns", "join_end_ns", "stall_ns"):  # fmt: skip
        bad = both[both[f"{col}_t"] != both[f"{col}_a"]]
        assert bad.empty, (col, bad[[f"{col}_t", f"{col}_a", "site_t", "layer_t"]].head())


@pytest.mark.parametrize(("label", "workload", "config"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("realism", list(REALISMS))
@pytest.mark.parametrize("source", ["db", "trace_view"])
def test_analysis_recovers_the_schedule(
    tmp_path: Path,
    label: str,
    workload: Workload,
    config: dict[str, Any],
    realism: str,
    source: str,
) -> None:
    trial, prof = _simulate(tmp_path / "trial", workload, config, REALISMS[realism])
    if source == "trace_view":
        for db in prof.glob("*_ascend_pt/ASCEND_PROFILER_OUTPUT/*.db"):
            db.unlink()
    profiles = load_profiles(prof)
    assert [p.source for p in profiles] == [source]
    assert profiles[0].simulated and profiles[0].steps == workload.profile_steps
    assert not profiles[0].unclassified_types
    result = analyze(profiles)
    assert result.simulated and result.steps == workload.profile_steps
    assert result.unattributed == 0 and result.unattributed_stall_us == 0.0
    assert len(result.prefetches) == len(trial.prefetches)
    if not trial.prefetches.empty:
        assert_recovers_schedule(trial, result.prefetches)


def test_communication_on_its_own_stream_is_read_with_the_right_windows_and_joins(
    tmp_path: Path,
) -> None:
    # The realistic profile runs each collective on the HCCL stream, bracketed by a record and a
    # wait on the compute stream; those waits must not be taken for joins, and the windows that
    # contain a collective (qkv and gate_up with sequence parallel) keep their extent.
    trial, prof = _simulate(tmp_path, DENSE_SP, cfg(mlp={"gate_up": 0.2, "down": 0.3}))
    tasks = trial.tasks
    hccl = tasks[tasks["kind"] == "comm"]
    assert hccl["stream"].nunique() == 1 and set(hccl["name"]) == {
        "Notify Wait",
        "Write Value",
        "SDMA",
    }
    compute = tasks[(tasks["stream"] == 2) & (tasks["group"] >= 0)]
    assert set(compute["kind"]) == {"record", "wait"}
    assert not (tasks["op_type"].str.startswith("hcom_") & (tasks["stream"] == 2)).any()
    (profile,) = load_profiles(prof)
    roles = profile.tasks.groupby("stream")["role"].agg(set)
    assert roles[int(hccl["stream"].iloc[0])] == {"comm", "wait", "record"}
    result = analyze([profile])
    # Every compute-stream wait is either a collective's or a join: the joins found are exactly
    # the waits the schedule joined prefetches with.
    joins = set(trial.prefetches["join_start_ns"] + PROFILE_BASE_NS)
    assert set(result.prefetches["join_start_ns"]) == joins
    waits = profile.tasks[(profile.tasks["stream"] == 2) & (profile.tasks["role"] == "wait")]
    assert len(waits) == len(joins) + int((compute["kind"] == "wait").sum())
    assert result.join_us_total * 1000 == pytest.approx(trial.prefetches["stall_ns"].sum())
    assert_recovers_schedule(trial, result.prefetches)


@pytest.mark.parametrize(
    ("workload", "names"),
    [(DENSE, {"CMO"}), (DENSE_GRAPH, {"SDMA_SQE"})],
    ids=["eager-CMO-as-SDMA_SQE", "graph-host-type-unknown"],
)
def test_both_cmo_namings_are_read_as_prefetches(
    tmp_path: Path, workload: Workload, names: set[str]
) -> None:
    trial, prof = _simulate(tmp_path, workload, cfg())
    cmo = trial.tasks[trial.tasks["kind"] == "cmo"]
    assert set(cmo["name"]) == names and set(cmo["type"]) == {"SDMA_SQE"}
    for source in ("db", "trace_view"):
        if source == "trace_view":
            for db in prof.glob("*_ascend_pt/ASCEND_PROFILER_OUTPUT/*.db"):
                db.unlink()
        (profile,) = load_profiles(prof)
        assert profile.source == source
        assert (profile.tasks["role"] == "prefetch").sum() == len(cmo)


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


def test_a_shared_join_is_charged_to_each_prefetch_it_waited_on(tmp_path: Path) -> None:
    # CMOs at 200 GB/s: the 18 MiB gate_up prefetch is still running when the SwiGLU join (it
    # shares with mlp.down) begins, so the compute stream waits on both in turn.
    slow = dataclasses.replace(load_hardware("910B2"), cmo_gbs=200.0)
    trial, prof = _simulate(
        tmp_path, DENSE, cfg(attn=ATTN_OFF, mlp={"gate_up": 1.0, "down": 0.25}), hardware=slow
    )
    both = _side_by_side(trial, analyze(load_profiles(prof)).prefetches)
    gate_up = both[both["site_t"] == "mlp.gate_up"]
    assert _shared_in_flight(both).any() and (gate_up["stall_ns_t"] > 0).mean() > 0.5
    assert (gate_up["stall_ns_a"] == gate_up["stall_ns_t"]).all()
