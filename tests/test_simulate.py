"""The simulator: ground-truth shape, determinism, and the formats of what it writes."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autotune.cli import app
from autotune.errors import AutotuneError
from autotune.hardware import load_hardware
from autotune.profile import load_profiles
from autotune.target import MLP_CAP_BYTES
from autotune.workloads._sim_writer import KERNEL_DETAILS_HEADER
from autotune.workloads.base import Backend, Workload
from autotune.workloads.simulate import (
    GROUND_TRUTH_COLUMNS,
    SimTrial,
    SimulateBackend,
    bench_result,
    simulate_throughput,
    simulate_trial,
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
    assert not set(trial.tasks["name"]) & {"CMO", "EVENT_RECORD", "EVENT_WAIT"}


def test_default_config_prefetches_down_proj_twice() -> None:
    trial = simulate_trial(DENSE, cfg(), timeline=False)
    fired = [(p.site, p.weight) for p in trial.prefetches_per_layer]
    assert ("attn.o", "down_proj") in fired and ("mlp.down", "down_proj") in fired


def test_moe_fires_attention_only() -> None:
    trial = simulate_trial(MOE, cfg(), jitter=0.02)
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
    trial = simulate_trial(DENSE, OFF)
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
    comm = layers[layers["type"] == "HCCL"]
    assert comm["op_type"].tolist() == ["hcom_allReduce_"] * (2 * 64)
    norms = layers[layers["op_type"].isin(["AddRmsNorm"])]
    assert set(norms["in_shapes"]) == {"72,5120"}
    # So the gate_up window is the post-attention norm + quantize only, and 18 MiB ends late.
    gate_up = trial.prefetches[trial.prefetches["site"] == "mlp.gate_up"]
    assert len(gate_up) == 64 and gate_up["late"].all()
    # With prefetch off, flashcomm1 changes nothing at decode.
    no_fc1 = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, flashcomm1=False)
    assert simulate_throughput(w, OFF) == simulate_throughput(no_fc1, OFF)


def test_flashcomm1_above_1000_tokens_runs_sequence_parallel() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=1024, profile_steps=1)
    layers = simulate_trial(w, OFF).tasks.query("layer >= 0")
    counts = layers.loc[layers["type"] == "HCCL", "op_type"].value_counts().to_dict()
    assert counts == {"hcom_allGather_": 2 * 64, "hcom_reduceScatter_": 2 * 64}
    norms = layers[layers["op_type"] == "AddRmsNorm"]
    assert set(norms["in_shapes"]) == {"256,5120"}  # 1024 rows over TP4


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
    return simulate_trial(w, cfg(mlp={"gate_up": 1.0, "down": 0.3}), jitter=0.02, seed=3)


def test_ground_truth_columns_and_types(dense_trial: SimTrial) -> None:
    truth = dense_trial.prefetches
    assert tuple(truth.columns) == GROUND_TRUTH_COLUMNS
    for col in ("bytes", "layer", "step", "start_ns", "end_ns", "window_end_ns", "slack_ns"):
        assert str(truth[col].dtype) == "int64"
    assert (truth["slack_ns"] == truth["window_end_ns"] - truth["end_ns"]).all()
    assert (truth["late"] == (truth["slack_ns"] < 0)).all()
    assert len(truth) == 3 * 64 * 5
    assert set(truth["layer"]) == set(range(64)) and set(truth["step"]) == {0, 1, 2}


def test_streams_are_serial_and_joins_match(dense_trial: SimTrial) -> None:
    tasks = dense_trial.tasks
    for _, group in tasks.groupby("stream"):
        g = group.sort_values("start_ns")
        assert (g["end_ns"].to_numpy()[:-1] <= g["start_ns"].to_numpy()[1:]).all()
        assert (g["end_ns"] > g["start_ns"]).all()
    compute = tasks[tasks["stream"] == tasks.loc[tasks["name"] != "CMO", "stream"].iloc[0]]
    waits = compute[compute["name"] == "EVENT_WAIT"]
    durations = dict(zip(waits["start_ns"], waits["end_ns"] - waits["start_ns"], strict=True))
    truth = dense_trial.prefetches
    # Each join's stall is charged once: the stall total equals the compute-stream waits.
    assert truth["stall_ns"].sum() == sum(durations.values())
    records = compute.loc[compute["name"] == "EVENT_RECORD", "end_ns"].to_numpy()
    for start in truth["start_ns"]:
        assert (records <= start).any()
    # gate_up never has its own join; it ends before the SwiGLU join charged to mlp.down.
    assert (truth.loc[truth["site"] == "mlp.gate_up", "stall_ns"] == 0).all()


def test_steps_without_jitter_match_the_throughput_model() -> None:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2, output_len=3)
    trial = simulate_trial(w, cfg(mlp={"gate_up": 1.0, "down": 0.3}))
    # output_len 3: decode steps at context 1025 and 1026, mean 1025.5 -> TPOT is their mean.
    assert abs(sum(trial.step_ms) / 2 - trial.tpot_ms) < 1e-5


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


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimTrial]:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2)
    out = tmp_path_factory.mktemp("trial")
    trial, result = SimulateBackend(w, seed=5).run_trial(cfg(), out, repeats=1, profile=True)
    assert result.profile_dir == out / "prof"
    (root,) = sorted((out / "prof").glob("*_ascend_pt"))
    return root, trial


def _us_to_ns(text: str) -> int:
    whole, _, frac = text.strip().partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def test_layout_and_simulated_markers(written: tuple[Path, SimTrial]) -> None:
    root, _ = written
    name = root.name.split("_")
    assert name[-1] == "pt" and name[-2] == "ascend" and len(name[-3]) == 17 and name[-4].isdigit()
    info = json.loads((root / "profiler_info_0.json").read_text())
    assert info["config"]["experimental_config"]["_profiler_level"] == "Level1"
    assert info["rank_id"] == 0
    assert info["autotune_simulated"] is True and "not measured" in info["note"]
    meta = json.loads((root / "profiler_metadata.json").read_text())
    assert meta["autotune_simulated"] is True
    out = root / "ASCEND_PROFILER_OUTPUT"
    assert (out / "analyse.done").exists()
    con = sqlite3.connect(out / "ascend_pytorch_profiler_0.db")
    meta_db = dict(con.execute("SELECT name, value FROM META_DATA").fetchall())
    assert meta_db["autotune_simulated"] == "true"
    assert con.execute("SELECT rankId, deviceId FROM RANK_DEVICE_MAP").fetchall() == [(0, 0)]
    con.close()


def test_trace_view_and_db_agree(written: tuple[Path, SimTrial]) -> None:
    root, trial = written
    out = root / "ASCEND_PROFILER_OUTPUT"
    events = json.loads((out / "trace_view.json").read_text())
    assert isinstance(events, list)
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert set(procs.values()) == {"Python", "CANN", "Ascend Hardware"}
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
    con.close()
    assert len(trace) == len(db) == len(trial.tasks)
    assert [t[:3] for t in trace] == [d[:3] for d in db]
    assert [t[3] for t in trace] == [d[3] for d in db]
    assert {t[3] for t in trace} >= {"CMO", "EVENT_WAIT", "EVENT_RECORD", "AI_VECTOR_CORE"}
    assert [r[1] for r in step_rows] == [_us_to_ns(s["ts"]) for s in steps]


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
    assert not names & {"CMO", "EVENT_WAIT", "EVENT_RECORD"}
    kernels = trial.tasks[~trial.tasks["name"].isin(["CMO", "EVENT_WAIT", "EVENT_RECORD"])]
    assert len(rows) == len(kernels)
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
         "--gate-up-join", "norm", "--out", str(out)],
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


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "NoSuchModel", "--max-num-seqs", "8"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "0"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--hardware", "H100"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--config", "CONFIG"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--config", "MISSING"],
        # flashcomm1 (on by default) makes 0.23 abort at TP 1, and on MoE without EP.
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--tp", "1"],
        ["--model", "Qwen3-30B-A3B-W8A8", "--max-num-seqs", "8"],
        ["--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--gate-up-join", "quant"],
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
