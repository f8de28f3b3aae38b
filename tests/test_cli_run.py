"""`autotune run` and `autotune export` end to end on the simulator: outputs, --json, resume after
SIGINT, and one clean line (exit 2) for bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_search import grid_optimum
from typer.testing import CliRunner

from autotune import target
from autotune.cli import app
from autotune.rundir import load_run
from autotune.workloads.base import Workload
from autotune.workloads.simulate import simulate_throughput

runner = CliRunner()
SIM = ["--backend", "simulate"]
BASE = ["run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72"]


def _one_clean_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("error: ")
    return lines[0]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs") / "r"
    # Eager, where 0.23 fires every dense prefetch: four sites to tune.
    result = runner.invoke(
        app, [*BASE, *SIM, "--no-graph-mode", "--trials", "12", "--out", str(out), "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_writes_every_output(finished_run: tuple[Path, str]) -> None:
    out, text = finished_run
    assert "SIMULATED (modelled)" in text
    assert str(out) in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulated"] is True and summary["backend"] == "simulate"
    assert summary["finished"] is True
    assert summary["trials"]["measured"] == 12
    assert summary["active_sites"] == ["attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"]
    assert summary["inert_sites"] == {"moe.gate_up": "A dense model has no experts to prefetch."}
    for key in ("gain_over_baseline", "gain_over_default"):
        gain = summary[key]
        assert gain["low_pct"] <= gain["pct"] <= gain["high_pct"]
    assert summary["gain_over_baseline"]["pct"] > 1.0

    best = json.loads((out / "best_config.json").read_text())
    target.validate_config(best)
    assert best["enable_flashcomm1"] is True
    assert best == summary["best"]["config"]

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["role"] for r in rows[:3]] == ["baseline", "default", "seed"]
    assert len([r for r in rows if r["state"] == "complete"]) == 12
    for n in range(3):
        trial = out / "trials" / f"{n:03d}"
        assert (
            json.loads((trial / "config.json").read_text())
            == json.loads((trial / "trial.json").read_text())["config"]
        )
        assert list(trial.glob("bench*.json"))

    # Profiles kept: baseline, default and best only (--keep-profiles best).
    run = load_run(out)
    best_trial = run.best_trial
    assert best_trial is not None
    assert set(run.profiles) == {0, 1, best_trial.number}
    assert (out / "study.db").is_file()
    leftovers = [p for p in out.rglob("*.tmp")]
    assert not leftovers


def test_simulated_run_models_the_vendor_recipes_graph_mode_by_default(tmp_path: Path) -> None:
    out = tmp_path / "r"
    res = runner.invoke(
        app, [*BASE, *SIM, "--trials", "3", "--profile-steps", "1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert (
        "flashcomm1 on, graph FULL_DECODE_ONLY (VLLM_COMPILE, npugraph_ex), 1024 in / 512 out, "
        "1 profiled steps, max-num-batched-tokens 40960" in res.output
    )
    recipe = {
        "graph_mode": True,
        "compile_mode": "VLLM_COMPILE",
        "cudagraph_mode": "FULL_DECODE_ONLY",
        "max_num_batched_tokens": 40960,
    }
    summary = json.loads((out / "summary.json").read_text())
    for doc in (json.loads((out / "run.json").read_text()), summary):
        assert {k: doc["workload"][k] for k in recipe} == recipe
    # The recipe's 40960 tokens are traced once, where 0.23's MLP gate (< 500 tokens) is shut.
    assert summary["active_sites"] == ["attn.qkv", "attn.o"]
    traced = summary["inert_sites"]["mlp.gate_up"]
    assert traced == summary["inert_sites"]["mlp.down"]
    assert traced.startswith("In graph mode (FULL_DECODE_ONLY, VLLM_COMPILE) the MLP prefetch is ")
    assert "max_num_batched_tokens=40960 >= 500 tokens" in traced
    assert set(summary["search_space"]) == {"attn.qkv", "attn.o"}


def test_best_config_is_within_half_a_percent_of_the_grid_optimum(
    finished_run: tuple[Path, str],
) -> None:
    out, _ = finished_run
    best = json.loads((out / "best_config.json").read_text())
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72)
    assert simulate_throughput(w, best) >= 0.995 * grid_optimum("Qwen3-32B-W8A8", 72)


def test_export_prints_the_best_config_again(finished_run: tuple[Path, str]) -> None:
    out, _ = finished_run
    best = json.loads((out / "best_config.json").read_text())
    result = runner.invoke(app, ["export", str(out)])
    assert result.exit_code == 0
    # stdout is the config alone; the simulated run gets one note on stderr.
    assert json.loads(result.stdout) == best
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("note: SIMULATED")
    assert "not finished" not in result.stderr
    result = runner.invoke(app, ["export", str(out), "--format", "vllm-args"])
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith("--additional-config '") and line.endswith("'")
    assert json.loads(line[len("--additional-config '") : -1]) == best


def test_json_prints_only_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "j"
    args = [*BASE, *SIM, "--trials", "3", "--out", str(out), "--json", "--profile-steps", "1"]
    result = runner.invoke(app, [*args, "--keep-profiles", "none"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["trials"]["measured"] == 3 and summary["simulated"] is True
    assert summary["note"].startswith("SIMULATED (modelled)")
    assert load_run(out).profiles == {}
    assert not list((out / "trials").glob("*/prof"))


def test_interrupted_run_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    out = tmp_path / "int"
    cmd = [sys.executable, "-m", "autotune", *BASE, *SIM, "--trials", "10", "--out", str(out),
           "--profile-steps", "1", "--json"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "trials" / "004" / "trial.json").exists():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err

    before = load_run(out)
    done = {t.number: t for t in before.trials if t.state == "complete"}
    assert 3 <= len(done) < 10
    measured = ("config", "effective_bytes", "throughputs", "tpots_ms", "step_ms", "bench_files")

    def facts(n: int) -> dict[str, object]:
        data = json.loads((out / "trials" / f"{n:03d}" / "trial.json").read_text())
        return {k: data[k] for k in ("state", *measured)}

    frozen = {n: facts(n) for n in done}
    benches = {
        p: p.read_bytes() for n in done for p in (out / "trials" / f"{n:03d}").glob("bench*")
    }

    result = runner.invoke(app, [*BASE, *SIM, "--trials", "10", "--out", str(out), "--resume",
                                 "--profile-steps", "1", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    after = load_run(out)
    complete = [t for t in after.trials if t.state == "complete"]
    assert len(complete) == 10
    for n, fact in frozen.items():
        assert facts(n) == fact
    assert all(p.read_bytes() == blob for p, blob in benches.items())
    keys = [json.dumps(t.effective_bytes, sort_keys=True) for t in complete]
    assert len(keys) == len(set(keys)), "a finished trial ran again"
    assert [t.role for t in complete[:2]] == ["baseline", "default"]
    assert after.summary["finished"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([*BASE[:3], "--max-num-seqs", "0", *SIM], "--max-num-seqs"),
        (["run", "--model", "Qwen9-1T", "--max-num-seqs", "8", *SIM], "unknown model"),
        ([*BASE, *SIM, "--additional-config", "/nonexistent/extra.json"], "--additional-config"),
        ([*BASE, *SIM, "--storage", "sqlite:////nonexistent/dir/s.db"], "--storage"),
        ([*BASE, *SIM, "--storage", "postgresql://u@127.0.0.1:1/x"], "--storage"),
        ([*BASE, *SIM, "--trials", "1"], "--trials"),
        ([*BASE, *SIM, "--objective", "latency"], "--objective"),
        # vllm-ascend 0.23 aborts `vllm serve` on these flashcomm1 deployments.
        ([*BASE, *SIM, "--tp", "1"], "needs tensor parallelism"),
        (
            [
                *BASE,
                *SIM,
                "--tp",
                "1",
                "--additional-config",
                '{"enable_flashcomm1": true}',
                "--no-flashcomm1",
            ],
            # Two sources of the deployment that disagree are refused, not ranked.
            "flashcomm1 is given twice",
        ),
        (
            ["run", "--model", "Qwen3-30B-A3B-W8A8", "--max-num-seqs", "64", *SIM],
            "needs expert parallelism",
        ),
        (
            [*BASE, *SIM, "--additional-config", '{"enable_matmul_allreduce": 1}'],
            "enable_matmul_allreduce",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2
    assert needle in _one_clean_line(result.output)
    assert not out.exists()


def test_unreadable_additional_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "extra.json"
    bad.write_text("{not json")
    result = runner.invoke(app, [*BASE, *SIM, "--additional-config", str(bad)])
    assert result.exit_code == 2
    assert "not valid JSON" in _one_clean_line(result.output)


def test_resume_of_a_dir_without_a_study_leaves_it_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    result = runner.invoke(app, [*BASE, *SIM, "--resume", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--resume" in _one_clean_line(result.output)
    # A run directory whose storage lost the study.
    (tmp_path / "run.json").write_text(json.dumps({"study_name": "gone", "backend": "simulate"}))
    before = _snapshot(tmp_path)
    result = runner.invoke(app, [*BASE, *SIM, "--resume", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no study named 'gone'" in _one_clean_line(result.output)
    assert _snapshot(tmp_path) == before


def test_out_dir_with_files_is_not_overwritten(finished_run: tuple[Path, str]) -> None:
    out, _ = finished_run
    before = _snapshot(out)
    result = runner.invoke(app, [*BASE, *SIM, "--out", str(out)])
    assert result.exit_code == 2
    assert "--resume" in _one_clean_line(result.output)
    assert _snapshot(out) == before


def test_default_backend_without_vllm_names_the_simulator(tmp_path: Path) -> None:
    result = runner.invoke(app, [*BASE, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--backend simulate" in _one_clean_line(result.output)
    assert not (tmp_path / "x").exists()


def test_every_view_agrees_on_lateness(finished_run: tuple[Path, str]) -> None:
    # One rule (autotune.lateness): analyze on a kept trial, trial.json, trials.csv, the summary
    # and the report say the same sites are late, and each states the tolerance it used.
    out, text = finished_run
    rule = "late = median slack below 0 µs, ends after its window (tolerance 0 µs)"
    assert rule in text
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["late_tolerance_us"], summary["late_rule"]) == (0.0, rule)
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "trials.csv").open())}
    assert {r["late_tolerance_us"] for r in rows.values()} == {"0"}
    run = load_run(out)
    late_seen = 0
    for number in sorted(run.profiles):
        trial_dir = out / "trials" / f"{number:03d}"
        res = runner.invoke(app, ["analyze", str(trial_dir), "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["late_rule"] == rule
        late = [s["site"] for s in doc["sites"] if s["verdict"] == "late"]
        saved = json.loads((trial_dir / "trial.json").read_text())["late_sites"]
        assert late == saved, number
        assert rows[number]["late_sites"] == " ".join(late), number
        assert rows[number]["feasible"] == ("false" if late else "true"), number
        late_seen += bool(late)
    assert late_seen  # the vendor default's mlp.down ends after SwiGLU
    assert rule in (out / "report.html").read_text(encoding="utf-8")


def test_late_is_infeasible_keeps_the_vendor_criterion(tmp_path: Path) -> None:
    # tests/data/hardware/slow-matmul.toml: late prefetches pay there (see its note).
    hw = str(Path(__file__).parent / "data" / "hardware" / "slow-matmul.toml")
    out = tmp_path / "r"
    args = [*BASE, *SIM, "--hardware", hw, "--trials", "6", "--out", str(out)]
    result = runner.invoke(app, [*args, "--late-is-infeasible"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["late_is_infeasible"] is True
    assert summary["best"]["late_sites"] == []
    assert summary["picked_by"] == "late sites infeasible (--late-is-infeasible)"
    assert "--late-is-infeasible" in summary["pick_rule"]
    assert "picked by: late sites infeasible (--late-is-infeasible); late sites: none" in (
        result.output
    )
