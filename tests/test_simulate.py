"""The simulator: ground-truth shape, the realistic profile's effects, determinism, and the
formats of what it writes."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from autotune.cli import app
from autotune.errors import AutotuneError
from autotune.hardware import load_hardware
from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.target import MLP_CAP_BYTES
from autotune.workloads.base import Backend, Workload
from autotune.workloads.sim.writer import KERNEL_DETAILS_HEADER
from autotune.workloads.simulate import (
    GROUND_TRUTH_COLUMNS,
    IDEAL,
    NOISELESS,
    REALISTIC,
    Realism,
    SimTrial,
    SimulateBackend,
    bench_result,
    parse_realism,
    read_config,
    simulate_throughput,
    simulate_trial,
    step_spread,
)

DENSE = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, tp=4, hardware="910B2")
MOE = Workload(model="Qwen3-30B-A3B-W8A8", max_num_seqs=64, tp=4, hardware="910B2")
OFF: dict[str, Any] = {"weight_prefetch_config": {"enabled": False}}
BENCH_KEYS = [
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
    "request_rate", "burstiness", "max_concurrency", "duration", "completed", "failed",
    "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput",
    "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
    "max_concurrent_requests",
]  # fmt: skip


def cfg(
    attn: dict[str, float] | None = None,
    mlp: dict[str, float] | None = None,
    moe: dict[str, float] | None = None,
) -> dict[str, Any]:
    ratio: dict[str, Any] = {}
    for key, value in (("attn", attn), ("mlp", mlp), ("moe", moe)):
        if value is not None:
            ratio[key] = value
    return {"weight_prefetch_config": {"enabled": True, "prefetch_ratio": ratio}}


ATTN_OFF = {"qkv": 0.0, "o": 0.0}


# ---- ground-truth shape ---------------------------------------------------------------------


def test_mlp_down_rises_peaks_then_falls() -> None:
    ratios = [0.001, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]
    thr = [simulate_throughput(DENSE, cfg(ATTN_OFF, {"gate_up": 1.0, "down": r})) for r in ratios]
    best = max(range(len(thr)), key=thr.__getitem__)
    assert 0 < best < len(thr) - 1, thr
    assert all(a < b for a, b in itertools.pairwise(thr[: best + 1])), thr
    assert all(a > b for a, b in itertools.pairwise(thr[best:])), thr
    # Over-prefetching hurts: the whole capped down_proj is worse than the optimum.
    assert thr[-1] < thr[best] * 0.998


def test_ratios_above_the_mlp_cap_are_identical() -> None:
    # down_proj is 31.25 MiB at TP4: every ratio >= 18 MiB / 31.25 MiB = 0.576 moves 18 MiB.
    values = {
        simulate_throughput(DENSE, cfg(ATTN_OFF, {"gate_up": 1.0, "down": r}))
        for r in (0.6, 0.75, 0.9, 1.0)
    }
    assert len(values) == 1
    trial = simulate_trial(DENSE, cfg(ATTN_OFF, {"gate_up": 1.0, "down": 0.8}), timeline=False)
    assert {p.bytes for p in trial.prefetches_per_layer} == {MLP_CAP_BYTES}


def test_inert_sites_change_nothing() -> None:
    base = cfg(ATTN_OFF, {"gate_up": 0.2, "down": 0.25}, {"gate_up": 0.8})
    other = cfg(ATTN_OFF, {"gate_up": 0.2, "down": 0.25}, {"gate_up": 0.1})
    assert simulate_throughput(DENSE, base) == simulate_throughput(DENSE, other)
    no_fc1 = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, flashcomm1=False)
    a = simulate_throughput(no_fc1, cfg(ATTN_OFF, {"gate_up": 0.05, "down": 0.25}))
    b = simulate_throughput(no_fc1, cfg(ATTN_OFF, {"gate_up": 1.0, "down": 0.25}))
    assert a == b


def test_disabled_equals_no_prefetch_at_all() -> None:
    all_off = cfg(ATTN_OFF, {"gate_up": 0.0, "down": 0.0}, {"gate_up": 0.0})
    assert simulate_throughput(DENSE, OFF) == simulate_throughput(DENSE, all_off)
    small = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1)
    trial = simulate_trial(small, OFF)
    assert trial.prefetches_per_layer == [] and trial.prefetches.empty
    # No CMO and no stream sync but the collectives' own.
    assert not (trial.tasks["kind"] == "cmo").any()
    sync = trial.tasks[trial.tasks["kind"].isin(["record", "wait"])]
    assert (sync["group"] >= 0).all() and not sync.empty


def test_default_config_prefetches_down_proj_twice() -> None:
    trial = simulate_trial(DENSE, cfg(), timeline=False)
    fired = [(p.site, p.weight) for p in trial.prefetches_per_layer]
    assert ("attn.o", "down_proj") in fired and ("mlp.down", "down_proj") in fired


def test_moe_fires_attention_only() -> None:
    trial = simulate_trial(MOE, cfg())
    assert {p.site for p in trial.prefetches_per_layer} == {"attn.qkv", "attn.o"}
    per_layer = len(trial.prefetches) / (MOE.profile_steps * 48)
    assert per_layer == 2
    assert simulate_throughput(MOE, cfg(moe={"gate_up": 0.1})) == simulate_throughput(
        MOE, cfg(moe={"gate_up": 1.0})
    )


def test_longer_context_costs_more() -> None:
    short = simulate_throughput(DENSE, OFF)
    long = simulate_throughput(
        Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, input_len=4096), OFF
    )
    assert long < short
    # Without jitter each later profiled step attends over more context and takes longer.
    trial = simulate_trial(DENSE, OFF, realism=NOISELESS)
    assert trial.step_ms == sorted(trial.step_ms) and trial.step_ms[0] < trial.step_ms[-1]


def test_eviction_when_prefetches_exceed_usable_l2(tmp_path: Path) -> None:
    # TP1 attn.o on down_proj moves 125 MiB, beyond 910B4's 48 MiB usable L2: the matmul
    # reads almost nothing from L2, so the prefetch is pure cost.
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, tp=1, hardware="910B4")
    small = simulate_throughput(w, cfg({"qkv": 0.0, "o": 0.1}, {"gate_up": 0.0, "down": 0.0}))
    large = simulate_throughput(w, cfg({"qkv": 0.0, "o": 1.0}, {"gate_up": 0.0, "down": 0.0}))
    assert large < small
    toml = tmp_path / "big_l2.toml"
    toml.write_text('base = "910B4"\nl2_usable_fraction = 1.0\nl2_mib = 1024\n')
    roomy = load_hardware(toml)
    large_roomy = simulate_throughput(
        w, cfg({"qkv": 0.0, "o": 1.0}, {"gate_up": 0.0, "down": 0.0}), roomy
    )
    assert large_roomy > large


def test_flashcomm1_at_decode_keeps_all_reduce_and_whole_batch_norms() -> None:
    # 0.23 runs flashcomm1's sequence-parallel comm on dense models only above 1000 tokens: a
    # decode step of 72 does matmul + all-reduce after o_proj and down_proj, norms on all rows.
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1)
    trial = simulate_trial(w, cfg(ATTN_OFF, {"gate_up": 1.0, "down": 0.3}))
    layers = trial.tasks[trial.tasks["layer"] >= 0]
    comm = trial.collectives[trial.collectives["name"].isin(_layer_collectives(trial))]
    assert comm["op_type"].tolist() == ["hcom_allReduce_"] * (2 * 64)
    norms = layers[layers["op_type"].isin(["AddRmsNorm"])]
    assert set(norms["in_shapes"]) == {"72,5120"}
    # So the gate_up window is the post-attention norm + quantize only, and 18 MiB ends late
    # (kernel jitter and long runs may hide one now and then).
    gate_up = trial.prefetches[trial.prefetches["site"] == "mlp.gate_up"]
    assert len(gate_up) == 64 and gate_up["late"].mean() > 0.9
    assert gate_up["slack_ns"].median() < -2000
    # With prefetch off, flashcomm1 changes nothing at decode.
    no_fc1 = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, flashcomm1=False)
    assert simulate_throughput(w, OFF) == simulate_throughput(no_fc1, OFF)


def test_flashcomm1_above_1000_tokens_runs_sequence_parallel() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=1024, profile_steps=1)
    trial = simulate_trial(w, OFF)
    layers = trial.tasks.query("layer >= 0")
    coll = trial.collectives[trial.collectives["name"].isin(_layer_collectives(trial))]
    counts = coll["op_type"].value_counts().to_dict()
    assert counts == {"hcom_allGather_": 2 * 64, "hcom_reduceScatter_": 2 * 64}
    norms = layers[layers["op_type"] == "AddRmsNorm"]
    assert set(norms["in_shapes"]) == {"256,5120"}  # 1024 rows over TP4


def _layer_collectives(trial: SimTrial) -> set[str]:
    """Names of the collectives run inside the decoder layers (not the lm_head's gather)."""
    t = trial.tasks
    return set(trial.collectives.loc[
        trial.collectives["group"].isin(t.loc[(t["kind"] == "comm") & (t["layer"] >= 0), "group"]),
        "name",
    ])  # fmt: skip


def test_unquantized_checkpoint_runs_bf16_linears_without_attention_prefetch(
    tmp_path: Path,
) -> None:
    # A model dir without quant_model_description.json is BF16 in 0.23: no activation quantize,
    # bf16 matmuls over 2-byte weights, and only the mlp.* prefetches.
    model = tmp_path / "qwen3-32b"
    model.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "qwen3-32b-w8a8" / "config.json", model)
    w = Workload(model=str(model), max_num_seqs=72, profile_steps=1)
    trial = simulate_trial(w, cfg(mlp={"gate_up": 0.1, "down": 0.1}))
    fired = {(p.site, p.bytes) for p in trial.prefetches_per_layer}
    assert fired == {("mlp.gate_up", 13_107_200), ("mlp.down", 6_553_600)}  # 10 % of bf16 sizes
    layers = trial.tasks[trial.tasks["layer"] >= 0]
    assert not layers["op_type"].str.contains("Quant").any()
    assert set(layers.loc[layers["type"] == "AI_CORE", "op_type"]) == {"MatMulV2"}
    # The gate_up window is the post-attention norm alone.
    gate_up = trial.prefetches[trial.prefetches["site"] == "mlp.gate_up"]
    norms = layers[layers["op_type"] == "AddRmsNorm"]
    assert set(gate_up["window_end_ns"]) <= set(norms["end_ns"])


# ---- ground truth and timeline consistency ---------------------------------------------------


@pytest.fixture(scope="module")
def dense_trial() -> SimTrial:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=3)
    return simulate_trial(w, cfg(mlp={"gate_up": 1.0, "down": 0.3}), seed=3)


def test_ground_truth_columns_and_types(dense_trial: SimTrial) -> None:
    truth = dense_trial.prefetches
    assert tuple(truth.columns) == GROUND_TRUTH_COLUMNS
    for col in GROUND_TRUTH_COLUMNS:
        if col not in ("site", "weight", "late"):
            assert str(truth[col].dtype) == "int64", col
    assert (truth["slack_ns"] == truth["window_end_ns"] - truth["end_ns"]).all()
    assert (truth["late"] == (truth["slack_ns"] < 0)).all()
    assert len(truth) == 3 * 64 * 5
    assert set(truth["layer"]) == set(range(64)) and set(truth["step"]) == {0, 1, 2}
    # A window has kernels; its join starts no earlier than it ends.
    assert (truth["window_start_ns"] < truth["window_end_ns"]).all()
    assert (truth["join_start_ns"] >= truth["window_end_ns"]).all()
    assert (truth["join_end_ns"] > truth["join_start_ns"]).all()


def test_windows_come_from_the_schedule(dense_trial: SimTrial) -> None:
    # Each window runs from the kernel after the prefetch's record to the last kernel before its
    # join or the matmul that reads its weight: 0.23's placement, read off the compute stream.
    t = dense_trial.tasks
    kernels = t[(t["stream"] == 2) & (t["kind"] == "kernel")]
    by_start = kernels.set_index("start_ns")["op_type"]
    by_end = kernels.set_index("end_ns")["op_type"]
    truth = dense_trial.prefetches
    first = truth["window_start_ns"].map(by_start)
    last = truth["window_end_ns"].map(by_end)
    want = {
        "attn.qkv": ("AscendQuantV2", "AscendQuantV2"),
        "attn.o": ("AscendQuantV2", "AscendQuantV2"),
        "mlp.gate_up": ("AddRmsNorm", "AscendQuantV2"),  # the norm and the gate_up quantize
        "mlp.down": ("SwiGlu", "SwiGlu"),
    }
    for site, (a, b) in want.items():
        mask = truth["site"] == site
        assert set(first[mask]) == {a} and set(last[mask]) == {b}, site


def test_streams_and_joins_match(dense_trial: SimTrial) -> None:
    tasks = dense_trial.tasks
    for stream, group in tasks.groupby("stream"):
        g = group.sort_values("start_ns")
        assert (g["end_ns"] >= g["start_ns"]).all()
        if stream != 8:  # the HCCL stream runs a collective's copies side by side
            assert (g["end_ns"].to_numpy()[:-1] <= g["start_ns"].to_numpy()[1:]).all()
    hccl = tasks[tasks["stream"] == 8].sort_values("start_ns")
    assert (hccl["end_ns"].to_numpy()[:-1] > hccl["start_ns"].to_numpy()[1:]).any()
    compute = tasks[tasks["stream"] == 2]
    joins = compute[(compute["kind"] == "wait") & (compute["group"] < 0)]
    truth = dense_trial.prefetches
    # The waits of a join add up to its duration: the stall total equals the join time.
    assert truth["stall_ns"].sum() == int((joins["end_ns"] - joins["start_ns"]).sum())
    assert set(truth["join_start_ns"]) == set(joins["start_ns"])
    records = compute.loc[(compute["kind"] == "record") & (compute["group"] < 0), "end_ns"]
    for start in truth["start_ns"]:
        assert (records.to_numpy() <= start).any()
    # gate_up never has its own join; it ends before the SwiGLU join charged to mlp.down.
    gate_up = truth[truth["site"] == "mlp.gate_up"]
    down = truth[truth["site"] == "mlp.down"]
    assert (gate_up["stall_ns"] == 0).all()
    assert set(gate_up["join_start_ns"]) == set(down["join_start_ns"])


def test_steps_without_jitter_match_the_throughput_model() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, output_len=3)
    trial = simulate_trial(w, cfg(mlp={"gate_up": 1.0, "down": 0.3}), realism=NOISELESS)
    # output_len 3: decode steps at context 1025 and 1026, mean 1025.5 -> TPOT is their mean.
    assert trial.contexts == [1025, 1026]
    assert abs(sum(trial.step_ms) / 2 - trial.tpot_ms) < 1e-5


# ---- the realistic profile ---------------------------------------------------------------------


def _profiled_step_ms(trial: SimTrial) -> float:
    """What the search reads from a profile: device-task span over the steps (ms)."""
    t = trial.tasks
    return float(t["end_ns"].max() - t["start_ns"].min()) / len(trial.step_ms) / 1e6


def test_profiled_steps_of_two_seeds_differ_by_the_documented_jitter() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=4)
    config = cfg(mlp={"gate_up": 0.2, "down": 0.25})
    steps = [_profiled_step_ms(simulate_trial(w, config, seed=s)) for s in range(16)]
    trial = simulate_trial(w, config, seed=0)
    assert steps[0] != steps[1]
    # The documented spread of one step (from the effects' sizes and this trial's make-up),
    # over the profiled steps.
    documented = step_spread(trial) / math.sqrt(w.profile_steps)
    assert 0.005 < documented < 0.01  # about 0.75 % for the mean of 4 steps
    measured = float(np.std(steps, ddof=1) / np.mean(steps))
    assert documented / 1.6 < measured < documented * 1.6, (measured, documented)
    # Two seeds: their steps differ by about that spread (|a - b| of two draws: 1.13 std on
    # average), not by the ideal twin's ~0.
    gaps = [abs(a - b) / a for a, b in itertools.pairwise(steps)]
    assert 0.5 * documented < float(np.median(gaps)) < 2 * documented
    ideal = [_profiled_step_ms(simulate_trial(w, config, seed=s, realism=IDEAL)) for s in (0, 1)]
    assert abs(ideal[0] - ideal[1]) / ideal[0] < documented / 5


def test_profiled_steps_sit_where_the_launcher_captures_them() -> None:
    # A burst of 72 requests of 1024 tokens prefills in ceil(72 * 1024 / 16384) = 5 steps; the
    # profiler then skips 4 more (vllm_ascend.PROFILE_DELAY_MARGIN): early decode, where a
    # request prefilled in step p has decoded 5 + 4 - p tokens, 7 on average.
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=3)
    trial = simulate_trial(w, OFF, realism=dataclasses.replace(NOISELESS, launcher_steps=True))
    assert trial.contexts == [1024 + 7, 1024 + 8, 1024 + 9]
    mid = simulate_trial(w, OFF, realism=NOISELESS)
    assert mid.contexts == [1024 + 255, 1024 + 256, 1024 + 257]
    # Early decode reads less KV cache than the bench's mean step.
    assert max(trial.step_ms) < trial.tpot_ms < min(mid.step_ms) + 0.01


def test_profiler_overhead_lengthens_only_the_profile() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1)
    overhead = dataclasses.replace(NOISELESS, profiler_task_us=0.2, profiler_host=0.2)
    base = simulate_trial(w, OFF, realism=NOISELESS)
    over = simulate_trial(w, OFF, realism=overhead)
    assert over.tpot_ms == base.tpot_ms and over.output_throughput == base.output_throughput
    compute = base.tasks[base.tasks["stream"] == 2]
    kernels = int((compute["kind"] == "kernel").sum())
    hw = base.hardware
    # 0.2 µs after every compute-stream task but the last, +20 % on the host time before the
    # first kernel and on the eager launch gap after every kernel but the last.
    want_us = 0.2 * (len(compute) - 1) + 0.2 * hw.step_overhead_us
    want_us += 0.2 * hw.gap_eager_us * (kernels - 1)
    got_us = (over.step_ms[0] - base.step_ms[0]) * 1e3
    assert got_us == pytest.approx(want_us, rel=1e-6)
    # The longer gaps run beside the CMOs too: a profile shows a little less join time than
    # the server has without the profiler.
    config = cfg(mlp={"gate_up": 0.2, "down": 0.25})
    plain = simulate_trial(w, config, realism=NOISELESS).prefetches["stall_ns"].sum()
    profiled = simulate_trial(w, config, realism=overhead).prefetches["stall_ns"].sum()
    assert profiled < plain


def test_communication_on_its_own_stream_keeps_the_step() -> None:
    # The HCCL stream only changes where a collective shows: the compute stream loses the same
    # time to it (record + wait) as to a collective kernel of its own.
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1)
    config = cfg(mlp={"gate_up": 0.2, "down": 0.25})
    inline = simulate_trial(w, config, realism=NOISELESS)
    stream = simulate_trial(w, config, realism=dataclasses.replace(NOISELESS, comm_stream=True))
    assert stream.step_ms == inline.step_ms
    assert stream.prefetches.equals(inline.prefetches)
    t = stream.tasks
    per_collective = t[t["group"] >= 0].groupby("group")
    assert len(per_collective) == 2 * 64 + 1 == len(stream.collectives)
    one = t[t["group"] == 0]
    # compute: record + wait; HCCL stream: wait, notify, wait for the peers, 3 copies, notify,
    # wait, record (TP4: three peers).
    assert one.loc[one["stream"] == 2, "kind"].tolist() == ["record", "wait"]
    assert one.loc[one["stream"] == 8, "name"].tolist() == [
        "EVENT_WAIT", "Write Value", "Notify Wait", "SDMA", "SDMA", "SDMA", "Write Value",
        "Notify Wait", "EVENT_RECORD",
    ]  # fmt: skip
    inline_ops = inline.tasks[inline.tasks["type"] == "HCCL"]
    assert len(inline_ops) == len(stream.collectives)
    assert not (t["type"] == "HCCL").any()


@pytest.mark.parametrize(
    ("graph", "style", "cmo"),
    [(False, "sqe", ("CMO", "SDMA_SQE", "CMO")), (True, "sqe-only", ("SDMA_SQE",) * 3)],
)
def test_task_names_follow_the_mode(graph: bool, style: str, cmo: tuple[str, ...]) -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1, graph_mode=graph)
    trial = simulate_trial(w, cfg())
    assert REALISTIC.task_style(graph) == style
    t = trial.tasks
    cmos = t[t["kind"] == "cmo"]
    assert set(zip(cmos["name"], cmos["type"], cmos["rt_type"], strict=True)) == {cmo}
    waits = t[t["kind"] == "wait"]
    assert set(zip(waits["name"], waits["type"], waits["rt_type"], strict=True)) == {
        ("EVENT_WAIT", "EVENT_WAIT_SQE", "EVENT_WAIT")
    }
    ideal = simulate_trial(w, cfg(), realism=IDEAL).tasks
    assert set(ideal.loc[ideal["kind"] == "cmo", "type"]) == {"CMO"}


def test_mixed_kernel_names() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1)
    names = set(simulate_trial(w, cfg()).tasks["name"])
    assert {"GatherV21", "MatMulV23", "ArgMaxV24", "trans_TransData_0", "ReshapeAndCache"} <= names
    assert "aclnnSwiGlu_SwiGlu_SwiGlu" in names
    ideal = set(simulate_trial(w, cfg(), realism=IDEAL).tasks["name"])
    assert not {n for n in ideal if not n.startswith(("aclnn", "hcom_", "CMO", "EVENT_"))}


def test_profile_effects_are_seeded() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1)
    a = simulate_trial(w, cfg(), seed=4)
    assert a.tasks.equals(simulate_trial(w, cfg(), seed=4).tasks)
    assert not a.tasks.equals(simulate_trial(w, cfg(), seed=5).tasks)


def test_readme_names_every_profile_effect() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| effect (`--realism` name)") :].split("\n\n")[0]
    for f in dataclasses.fields(Realism):
        assert f"`{f.name}`" in table, f.name
    assert f"{REALISTIC.kernel_jitter * 100:g} % std per kernel" in table
    assert f"{REALISTIC.step_jitter * 100:g} % std, one factor" in table
    assert f"+{REALISTIC.profiler_task_us:g} µs after each compute-stream task" in table


def test_realism_switches_and_bad_values() -> None:
    r = parse_realism(["comm_stream=off", "step_jitter=0.03", "task_names=host"])
    assert not r.comm_stream and r.step_jitter == 0.03 and r.task_names == "host"
    assert r.kernel_jitter == REALISTIC.kernel_jitter
    assert parse_realism([], base=IDEAL) == IDEAL
    for bad in (["comm_stream=maybe"], ["nope=1"], ["step_jitter=x"], ["step_jitter=-1"],
                ["task_names=CMO"], ["kernel_outlier_max=1.1"], ["step_jitter"]):  # fmt: skip
        with pytest.raises(AutotuneError) as err:
            parse_realism(bad)
        assert str(err.value).startswith("--realism") and "\n" not in str(err.value)


# ---- bench results and the backend -----------------------------------------------------------


def test_bench_noise_is_seeded(dense_trial: SimTrial) -> None:
    a = bench_result(dense_trial, seed=1, noise=0.01, repeat=0)
    b = bench_result(dense_trial, seed=1, noise=0.01, repeat=1)
    again = bench_result(dense_trial, seed=1, noise=0.01, repeat=0)
    assert a == again and a["output_throughput"] != b["output_throughput"]
    exact = bench_result(dense_trial, noise=0.0)
    assert exact["output_throughput"] == pytest.approx(dense_trial.output_throughput, rel=1e-12)
    for key in BENCH_KEYS:
        assert key in a
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p99"):
            assert f"{stat}_{metric}_ms" in a
    assert a["autotune_simulated"] is True
    assert a["completed"] == a["num_prompts"] and a["failed"] == 0


def test_a_config_measured_again_in_a_run_draws_anew(tmp_path: Path) -> None:
    # A run's trial folders trials/NNN, each with its config.json written before the backend
    # runs, as the lifecycle does. The first measurement of a config draws what it always drew;
    # the same config measured again later in the run (a confirmation) draws anew, also after a
    # resume (the count comes from the run directory, not from the backend object).
    trials = tmp_path / "trials"

    def measure(number: int, config: dict[str, object]) -> float:
        folder = trials / f"{number:03d}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(config))
        result = SimulateBackend(DENSE, seed=3, noise=0.01).run(
            config, folder, repeats=1, profile=False
        )
        return float(result.benches[0]["output_throughput"])

    first = measure(0, OFF)
    other = measure(1, read_config(None))
    again = measure(2, OFF)
    third = measure(3, OFF)
    assert len({first, again, third}) == 3
    alone = SimulateBackend(DENSE, seed=3, noise=0.01).run(
        OFF, tmp_path / "alone", repeats=1, profile=False
    )
    assert alone.benches[0]["output_throughput"] == first  # outside a run: the first draw
    assert other != first


def test_backend_protocol_and_errors(tmp_path: Path) -> None:
    backend: Backend = SimulateBackend(DENSE, seed=0, noise=0.01)
    assert backend.name == "simulate" and backend.simulated
    backend.check()
    result = backend.run(OFF, tmp_path / "t", repeats=2, profile=False)
    assert [p.name for p in result.bench_paths] == ["bench_r0.json", "bench_r1.json"]
    assert result.profile_dir is None and result.simulated
    assert json.loads(result.bench_paths[0].read_text()) == result.benches[0]
    with pytest.raises(AutotuneError):
        backend.run(
            {"weight_prefetch_config": {"enable": True}}, tmp_path, repeats=1, profile=False
        )
    with pytest.raises(AutotuneError):
        SimulateBackend(Workload(model="NoSuchModel", max_num_seqs=8))
    with pytest.raises(AutotuneError):
        SimulateBackend(Workload(model="Qwen3-32B-W8A8", max_num_seqs=0))


# ---- formats ---------------------------------------------------------------------------------


# The profile a trial writes: the ideal twin's, and the realistic one in eager mode (CMO named
# CMO, Task Types the SQEs) and in graph mode (CMO's host type unknown: SDMA_SQE throughout).
WRITTEN = {"ideal": (False, IDEAL), "eager": (False, REALISTIC), "graph": (True, REALISTIC)}


@pytest.fixture(scope="module", params=list(WRITTEN))
def written(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, SimTrial]:
    graph, realism = WRITTEN[request.param]
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, graph_mode=graph)
    out = tmp_path_factory.mktemp("trial")
    backend = SimulateBackend(w, seed=5, realism=realism)
    trial, result = backend.run_trial(cfg(), out, repeats=1, profile=True)
    assert result.profile_dir == out / "prof"
    (root,) = sorted((out / "prof").glob("*_ascend_pt"))
    return root, trial


def _us_to_ns(text: str) -> int:
    whole, _, frac = text.strip().partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def test_layout_and_simulated_markers(written: tuple[Path, SimTrial]) -> None:
    root, trial = written
    name = root.name.split("_")
    assert name[-1] == "pt" and name[-2] == "ascend" and len(name[-3]) == 17 and name[-4].isdigit()
    info = json.loads((root / "profiler_info_0.json").read_text())
    assert info["config"]["experimental_config"]["_profiler_level"] == "Level1"
    assert info["rank_id"] == 0
    assert info["autotune_simulated"] is True and "not measured" in info["note"]
    # What made the profile is recorded: every effect, the seed and the steps' contexts.
    effects = info["autotune_realism"]
    assert effects["seed"] == 5 and effects["profiled_contexts"] == trial.contexts
    assert {k: v for k, v in effects.items() if k in trial.realism.to_json()} == (
        trial.realism.to_json()
    )
    meta = json.loads((root / "profiler_metadata.json").read_text())
    assert meta["autotune_simulated"] is True
    out = root / "ASCEND_PROFILER_OUTPUT"
    assert (out / "analyse.done").exists()
    con = sqlite3.connect(out / "ascend_pytorch_profiler_0.db")
    meta_db = dict(con.execute("SELECT name, value FROM META_DATA").fetchall())
    assert meta_db["autotune_simulated"] == "true"
    assert con.execute("SELECT rankId, deviceId FROM RANK_DEVICE_MAP").fetchall() == [(0, 0)]
    con.close()


# The real capture's rendering: the trace's Task Type is the SQE, the db keeps the host type.
_DB_TYPE_OF = {"EVENT_WAIT_SQE": "EVENT_WAIT", "EVENT_RECORD_SQE": "EVENT_RECORD"}


def test_trace_view_and_db_agree(written: tuple[Path, SimTrial]) -> None:
    root, trial = written
    out = root / "ASCEND_PROFILER_OUTPUT"
    events = json.loads((out / "trace_view.json").read_text())
    assert isinstance(events, list)
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    comm_stream = trial.realism.comm_stream
    want = {"Python", "CANN", "Ascend Hardware"} | ({"HCCL"} if comm_stream else set())
    assert set(procs.values()) == want
    hw_pid = next(p for p, n in procs.items() if n == "Ascend Hardware")
    py_pid = next(p for p, n in procs.items() if n == "Python")
    assert hw_pid == (py_pid << 10) | (14 << 5) | 0
    steps = [e for e in events if e.get("ph") == "X" and e["name"].startswith("ProfilerStep#")]
    assert len(steps) == 2
    dev = [e for e in events if e.get("ph") == "X" and e["pid"] == hw_pid]
    for e in dev[:50]:
        assert isinstance(e["ts"], str) and len(e["ts"].split(".")[1]) == 3
        assert set(e["args"]) == {
            "Model Id", "Task Type", "Physic Stream Id", "Task Id", "Batch Id", "Subtask Id",
            "connection_id",
        }  # fmt: skip
    trace = sorted(
        (
            _us_to_ns(e["ts"]),
            _us_to_ns(e["ts"]) + round(e["dur"] * 1000),
            e["tid"],
            e["args"]["Task Type"],
            e["name"],
        )
        for e in dev
    )
    con = sqlite3.connect(out / "ascend_pytorch_profiler_0.db")
    db = sorted(
        con.execute(
            "SELECT t.startNs, t.endNs, t.streamId, COALESCE(c.value, r.value) FROM TASK t "
            "JOIN STRING_IDS r ON r.id = t.taskType "
            "LEFT JOIN COMPUTE_TASK_INFO i ON i.globalTaskId = t.globalTaskId "
            "LEFT JOIN STRING_IDS c ON c.id = i.taskType"
        ).fetchall()
    )
    step_rows = con.execute("SELECT id, startNs, endNs FROM STEP_TIME ORDER BY id").fetchall()
    n_ops = con.execute("SELECT COUNT(*) FROM COMMUNICATION_OP").fetchone()[0]
    con.close()
    assert len(trace) == len(db) == len(trial.tasks)
    assert [t[:3] for t in trace] == [d[:3] for d in db]
    # The db holds the host type where the trace shows the SQE (a CMO's is its name).
    assert [_DB_TYPE_OF.get(t[3], t[4] if t[3] == "SDMA_SQE" else t[3]) for t in trace] == [
        d[3] for d in db
    ]
    assert [r[1] for r in step_rows] == [_us_to_ns(s["ts"]) for s in steps]
    assert n_ops == len(trial.collectives)
    if comm_stream:
        hccl = [e for e in events if e.get("ph") == "X" and procs.get(e["pid"]) == "HCCL"]
        assert [e["name"] for e in hccl] == trial.collectives["name"].tolist()
        assert {t[3] for t in trace} >= {"Notify Wait", "Write Value", "SDMA", "EVENT_WAIT_SQE"}
    else:
        assert {t[3] for t in trace} >= {"CMO", "EVENT_WAIT", "EVENT_RECORD", "AI_VECTOR_CORE"}


def test_kernel_details_format(written: tuple[Path, SimTrial]) -> None:
    root, trial = written
    path = root / "ASCEND_PROFILER_OUTPUT" / "kernel_details.csv"
    raw = path.read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\n" not in line for line in lines)
    assert lines[0].decode() == ",".join(KERNEL_DETAILS_HEADER)
    assert KERNEL_DETAILS_HEADER[:12] == (
        "Step Id", "Device_id", "Model ID", "Task ID", "Stream ID", "Name", "Type", "OP State",
        "Accelerator Core", "Start Time(us)", "Duration(us)", "Wait Time(us)",
    )  # fmt: skip
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["Start Time(us)"].endswith("\t") for r in rows)
    names = {r["Name"] for r in rows}
    assert not names & {"CMO", "SDMA_SQE", "EVENT_WAIT", "EVENT_RECORD", "Notify Wait", "SDMA"}
    # One row per kernel, and one per collective of the HCCL stream (no stream, no task id).
    kernels = trial.tasks[trial.tasks["kind"] == "kernel"]
    assert len(rows) == len(kernels) + len(trial.collectives)
    hcom = [r for r in rows if r["Name"].startswith("hcom_")]
    assert hcom and all(r["Stream ID"] == "N/A" and r["Task ID"] == "N/A" for r in hcom)
    assert {r["Step Id"] for r in rows} == {"1", "2"}
    swiglu = next(r for r in rows if r["Type"] == "SwiGlu")
    assert swiglu["Name"] == "aclnnSwiGlu_SwiGlu_SwiGlu"
    assert swiglu["Accelerator Core"] == "AI_VECTOR_CORE"


def test_msprof_analyze_reads_the_profile(written: tuple[Path, SimTrial], tmp_path: Path) -> None:
    exe = shutil.which("msprof-analyze")
    if exe is None:
        pytest.skip("msprof-analyze is not installed")
    root, _ = written
    out = tmp_path / "msout"
    proc = subprocess.run(
        [exe, "-m", "compute_op_sum", "-d", str(root.parent), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "[ERROR]" not in log, log
    assert "1 ranks, data type: db" in log
    result = out / "cluster_analysis_output" / "cluster_analysis.db"
    con = sqlite3.connect(result)
    ops = dict(con.execute('SELECT OpType, "Count" FROM ComputeOpAllRankStats').fetchall())
    con.close()
    assert ops["SwiGlu"] == 2 * 64 and ops["QuantBatchMatmulV3"] == 2 * 64 * 4


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_simulate_gate_up_joined_after_norm(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    res = CliRunner().invoke(
        app,
        ["simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--steps", "1",
         "--gate-up-join", "norm", "--no-graph-mode", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "mlp.gate_up joined after its norm" in res.output
    (p,) = load_profiles(out / "prof")
    t = p.tasks
    c = t[t["stream"] == 2].reset_index(drop=True)
    # Each post-attention norm is followed at once by a compute-stream wait (the join).
    post_norm = c.index[(c["op_type"] == "AddRmsNorm") & (c["role"].shift(-1) == "wait")]
    assert len(post_norm) == 64


def test_cli_simulate(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "sim"
    res = runner.invoke(
        app,
        ["simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "16", "--steps", "1",
         "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.output.startswith("SIMULATED")
    assert "estimated" in res.output and "tok/s" in res.output
    assert (out / "bench_r0.json").exists() and list((out / "prof").glob("*_ascend_pt"))


def _simulated_sites(out: Path) -> set[str]:
    """The sites whose CMO tasks the written profile shows."""
    (profile,) = load_profiles(out / "prof")
    return {s.site for s in analyze([profile]).sites if s.count}


def test_cli_simulate_models_the_vendor_recipes_graph_mode_by_default(tmp_path: Path) -> None:
    base = ["simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--steps", "1"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "graph")])
    assert res.exit_code == 0, res.output
    assert (
        "eager" not in res.output
        and "graph FULL_DECODE_ONLY (VLLM_COMPILE, npugraph_ex), max-num-batched-tokens 40960"
        in res.output
    )
    # The recipe's 40960 batched tokens are traced once: the MLP prefetch is traced out.
    assert (
        "inert      mlp.gate_up, mlp.down: In graph mode (FULL_DECODE_ONLY, VLLM_COMPILE) the "
        "MLP prefetch is traced out: dynamo traces the profile run of "
        "max_num_batched_tokens=40960 >= 500 tokens once" in res.output
    )
    assert _simulated_sites(tmp_path / "graph") == {"attn.qkv", "attn.o"}
    # Eager, as 0.23 runs with --enforce-eager: every dense site fires.
    res = CliRunner().invoke(app, [*base, "--no-graph-mode", "--out", str(tmp_path / "eager")])
    assert res.exit_code == 0, res.output
    assert ", eager, max-num-batched-tokens 16384," in res.output
    assert "mlp.gate_up, mlp.down:" not in res.output
    assert _simulated_sites(tmp_path / "eager") == {"attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"}


@pytest.mark.parametrize(("tokens", "mlp_fires"), [(256, True), (499, True), (500, False)])
def test_cli_simulate_graph_mode_traces_the_mlp_gate_at_the_batched_tokens(
    tmp_path: Path, tokens: int, mlp_fires: bool
) -> None:
    # Compiled, 0.23's `num_tokens < 500` MLP gate is decided once, at max-num-batched-tokens.
    res = CliRunner().invoke(
        app,
        ["simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--steps", "1",
         "--max-num-batched-tokens", str(tokens), "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (
        f"graph FULL_DECODE_ONLY (VLLM_COMPILE, npugraph_ex), max-num-batched-tokens {tokens},"
        in res.output
    )
    mlp = {"mlp.gate_up", "mlp.down"}
    assert (mlp <= _simulated_sites(tmp_path / "o")) is mlp_fires
    assert ("traced out" in res.output) is not mlp_fires


def test_cli_simulate_ideal_and_one_effect(tmp_path: Path) -> None:
    base = ["simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--steps", "1"]
    res = CliRunner().invoke(app, [*base, "--ideal", "--out", str(tmp_path / "ideal")])
    assert res.exit_code == 0, res.output
    assert "effects    ideal" in res.output
    (ideal,) = load_profiles(tmp_path / "ideal" / "prof")
    comm = ideal.tasks[ideal.tasks["role"] == "comm"]
    assert set(comm["stream"]) == {2} and set(ideal.tasks["stream"]) == {2, 5}
    # One effect changed on the realistic default: collectives back on the compute stream,
    # the rest (kernel names, launcher's steps) as realistic.
    res = CliRunner().invoke(
        app, [*base, "--realism", "comm_stream=off", "--out", str(tmp_path / "one")]
    )
    assert res.exit_code == 0, res.output
    assert "comm on the compute stream" in res.output and "realistic" in res.output
    (one,) = load_profiles(tmp_path / "one" / "prof")
    assert set(one.tasks.loc[one.tasks["role"] == "comm", "stream"]) == {2}
    assert "GatherV21" in set(one.tasks["name"])


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, ["run", *args])


def _realism_of(trial_dir: Path) -> dict[str, Any]:
    (info,) = trial_dir.glob("prof/*_ascend_pt/profiler_info_0.json")
    effects: dict[str, Any] = json.loads(info.read_text())["autotune_realism"]
    return effects


def test_run_records_its_profile_effects_and_a_resume_keeps_them(tmp_path: Path) -> None:
    start = ["--backend", "simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72",
             "--profile-steps", "1", "--keep-profiles", "all"]  # fmt: skip
    run = tmp_path / "ideal"
    res = _run(*start, "--trials", "2", "--ideal", "--seed", "3", "--out", str(run))
    assert res.exit_code == 0, res.output
    assert json.loads((run / "run.json").read_text())["simulator"] == {"noise": 0.01, "ideal": True}
    res = _run("--resume", "--out", str(run), "--trials", "3")
    assert res.exit_code == 0, res.output
    assert not _realism_of(run / "trials" / "002")["comm_stream"]
    assert _realism_of(run / "trials" / "002")["seed"] == 3
    # A realistic run resumed with --ideal would mix two kinds of profile: refused.
    real = tmp_path / "real"
    assert _run(*start, "--trials", "2", "--seed", "3", "--out", str(real)).exit_code == 0
    refused = _run("--resume", "--out", str(real), "--trials", "3", "--ideal")
    assert refused.exit_code == 2 and "without --ideal" in refused.output
    # The same seed measures and profiles a config the same way again; another seed does not.
    again = tmp_path / "again"
    assert _run(*start, "--trials", "2", "--seed", "3", "--out", str(again)).exit_code == 0
    other = tmp_path / "other"
    assert _run(*start, "--trials", "2", "--seed", "4", "--out", str(other)).exit_code == 0
    step = {
        d.name: json.loads((d / "trials" / "000" / "trial.json").read_text())["step_ms"]
        for d in (real, again, other)
    }
    assert step["real"] == step["again"] != step["other"]
    assert _realism_of(real / "trials" / "000")["comm_stream"]


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "NoSuchModel", "--max-num-seqs", "8"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--realism", "nope=1"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--realism", "step_jitter=-0.1"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "0"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--hardware", "H100"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--config", "CONFIG"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--config", "MISSING"],
        # flashcomm1 (on by default) makes 0.23 abort at TP 1, and on MoE without EP.
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--tp", "1"],
        ["--model", "Qwen3-30B-A3B-W8A8", "--max-num-seqs", "8"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--gate-up-join", "quant"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--steps", "0"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--max-num-batched-tokens", "-1"],
    ],
)
def test_cli_simulate_bad_input(tmp_path: Path, args: list[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"weight_prefetch_config": {"prefetch_ratio": {"mlp": {"down": 2}}}}')
    args = [str(bad) if a == "CONFIG" else str(tmp_path / "no.json") if a == "MISSING" else a
            for a in args]  # fmt: skip
    res = CliRunner().invoke(app, ["simulate", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # A bad count names its flag and what to give.
    for flag in ("--steps", "--max-num-batched-tokens", "--max-num-seqs"):
        if flag in args and args[args.index(flag) + 1] in ("0", "-1"):
            assert res.output.startswith(f"error: {flag} must be a positive integer")
            assert f"give {flag} 1 or more" in res.output


def test_cli_simulate_files_follow_the_umask_and_leave_no_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "autotune", "simulate", "--model", "Qwen3-32B-W8A8",
           "--max-num-seqs", "16", "--steps", "1", "--out", str(out)]  # fmt: skip
    for _ in range(2):  # the second run replaces every file of the first
        done = subprocess.run(
            cmd, capture_output=True, text=True, check=False, preexec_fn=lambda: os.umask(0o027)
        )
        assert done.returncode == 0, done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"bench_r0.json", "trace_view.json", "kernel_details.csv", "analyse.done"} <= names
    assert "ascend_pytorch_profiler_0.db" in names and "profiler_info_0.json" in names
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == dict.fromkeys(names, 0o640)
    dirs = [p for p in out.rglob("*") if p.is_dir()]
    assert {p.stat().st_mode & 0o777 for p in dirs} == {0o750}
