"""The vllm-ascend launcher end to end, and its fault matrix, against the fake `vllm` on PATH.

Each test runs `autotune run` as a real process with the fake (tests/fake_vllm/vllm) first on
PATH: real process groups, real loopback HTTP, real-format (SIMULATED) profiles. Faults are chosen
per trial with FAKE_VLLM_FAULT. After each run no process naming the test's directory may be left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from fake_vllm.fake_env import make_fake_env, make_small_model
from fake_vllm.harness import args as _args
from fake_vllm.harness import assert_nothing_left as _assert_nothing_left
from fake_vllm.harness import env as _env
from fake_vllm.harness import fake_host
from fake_vllm.harness import finish as _finish
from fake_vllm.harness import ok as _ok
from fake_vllm.harness import rows as _rows
from fake_vllm.harness import run as _run
from fake_vllm.harness import run_with_fault as _run_with_fault
from fake_vllm.harness import start as _start
from fake_vllm.harness import trial as _trial

from autotune.errors import AutotuneError
from autotune.workloads.base import Workload
from autotune.workloads.deployment import LaunchOptions
from autotune.workloads.vllm_ascend import VllmAscendBackend


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return fake_host(tmp_path_factory, "fake-vllm")


def test_real_trials_are_measured_profiled_and_reproducible(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    result = _run(_args(model, out), _env(bin_dir))
    _ok(result)
    rows = _rows(out)
    assert [r["role"] for r in rows] == ["baseline", "default", "seed"]
    assert all(r["state"] == "complete" and float(r["throughput"]) > 0 for r in rows), rows
    assert all(r["unprofiled"] == "" for r in rows), rows
    # The profile was read: the default trial's prefetches were seen and timed.
    assert _trial(out, 1)["sites"], _trial(out, 1)
    run = json.loads((out / "run.json").read_text())
    # Asked of the fake env's interpreter: autotune's own env has no vllm-ascend at all.
    assert run["vllm_ascend_version"] == "0.23.0 (vllm 0.23.0+fake)"
    trial_dir = out / "trials" / "002"
    command = (trial_dir / "command.sh").read_text()
    assert f"{bin_dir / 'vllm'} serve {model}" in command
    assert "--max-num-seqs 8" in command and "--enforce-eager" in command  # the user's
    assert "--max-num-batched-tokens" not in command  # vLLM's own default
    assert "--profiler-config" in command and "torch_profiler_with_stack" in command
    assert command.count("bench serve") == 3  # warm-up, one repeat, the profiled burst
    assert "/start_profile" in command and "/stop_profile" in command
    assert os.access(trial_dir / "command.sh", os.X_OK)
    assert "listening on http://127.0.0.1" in (trial_dir / "server.log").read_text()
    bench = json.loads((trial_dir / "bench_r0.json").read_text())
    assert bench["completed"] == 16 and bench["failed"] == 0
    launch = json.loads((trial_dir / "launch.json").read_text())
    assert launch["python"] == str(bin_dir / "python")
    assert launch["timings_s"]["startup"] > 0 and launch["timings_s"]["stop"] >= 0
    _assert_nothing_left(model.parent)


def test_server_that_fails_to_start_fails_only_its_trial(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    result, out = _run_with_fault(fake, tmp_path, "start-fail@2")
    rows = _rows(out)
    assert rows[2]["state"] == "failed"
    error = rows[2]["error"]
    # The root cause, 90 lines above the log's end, not the wrappers that end it.
    assert error.startswith(
        "vllm serve exited with code 1 during start-up: AssertionError: Not enough allowed NUMA "
        "nodes for 4 workers"
    )
    assert "See root cause above" not in error and "\n" not in error
    # The log named by a path that opens from anywhere.
    log = out / "trials" / "002" / "server.log"
    assert error.endswith(f"(log {log})") and log.is_file()
    assert "AssertionError: Not enough allowed NUMA nodes" in result.stdout
    assert [r["state"] for r in rows[3:]] == ["complete"]  # the study went on
    _assert_nothing_left(fake[1].parent)


def test_server_that_dies_mid_bench_fails_its_trial(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = _run_with_fault(fake, tmp_path, "die-bench@2")
    rows = _rows(out)
    assert rows[2]["state"] == "failed"
    assert "vllm serve exited with code 3 during the warm-up" in rows[2]["error"]
    assert "EngineCore died unexpectedly" in rows[2]["error"]
    assert rows[3]["state"] == "complete"
    _assert_nothing_left(fake[1].parent)


def test_hanging_server_is_killed_and_its_trial_failed(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    # The hanging server also ignores SIGTERM: only the SIGKILL after --stop-timeout ends it.
    more = ("--bench-timeout", "4", "--stop-timeout", "0.5")
    _, out = _run_with_fault(fake, tmp_path, "hang@2", *more)
    rows = _rows(out)
    assert rows[2]["state"] == "failed"
    assert "did not finish within 4 s (--bench-timeout)" in rows[2]["error"]
    assert rows[3]["state"] == "complete"
    _assert_nothing_left(fake[1].parent)


def test_server_never_healthy_fails_after_the_startup_timeout(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    more = ("--startup-timeout", "1", "--stop-timeout", "0.5")
    _, out = _run_with_fault(fake, tmp_path, "no-health@2", *more)
    rows = _rows(out)
    assert "was not healthy after 1 s (--startup-timeout)" in rows[2]["error"]
    assert rows[3]["state"] == "complete"
    _assert_nothing_left(fake[1].parent)


def test_no_profile_keeps_the_numbers_and_falls_back_to_static_rules(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    result, out = _run_with_fault(fake, tmp_path, "no-profile@1")
    rows = _rows(out)
    default = rows[1]
    assert default["state"] == "complete" and float(default["throughput"]) > 0
    assert "no *_ascend_pt under prof/" in default["unprofiled"]
    assert "pt.trace.json.gz" in default["unprofiled"]  # what the profiler did write
    summary = json.loads((out / "summary.json").read_text())
    assert "static rules" in summary["probe_note"]
    # Without the default trial's windows there is no profile-guided seed.
    assert [r["role"] for r in rows] == ["baseline", "default", "search"]
    assert summary["active_sites"] == ["attn.qkv", "attn.o", "mlp.down"]
    assert "static rules" in result.stdout
    _assert_nothing_left(fake[1].parent)


def test_truncated_profile_marks_the_trial_unprofiled(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = _run_with_fault(fake, tmp_path, "truncated-profile@2")
    seed = _rows(out)[2]
    assert seed["state"] == "complete" and float(seed["throughput"]) > 0
    assert seed["unprofiled"].startswith("the profile is truncated:"), seed
    assert "cut off" in seed["unprofiled"]
    assert _trial(out, 2)["profile"] is None
    _assert_nothing_left(fake[1].parent)


def test_busy_port_fails_the_trial_and_the_run_resumes(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run(_args(model, out, "--port", str(port)), _env(bin_dir))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert lines[0].startswith("error: the baseline trial failed")
    assert _rows(out)[0]["state"] == "failed"
    _assert_nothing_left(model.parent)
    # Port free again: the same run continues and completes.
    resumed = _run([*_args(model, out, "--port", str(port)), "--resume"], _env(bin_dir))
    _ok(resumed)
    assert [r["state"] for r in _rows(out)].count("complete") == 3


def test_ctrl_c_mid_trial_stops_it_cleanly_and_the_run_resumes(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    # The fault comes through --serve-env this time, as a user's server variable would.
    more = ("--serve-env", "FAKE_VLLM_FAULT=slow@1")
    proc = _start(_args(model, out, *more, serve="--enforce-eager --dtype bfloat16"), _env(bin_dir))
    bench_log = out / "trials" / "001" / "warmup.log"
    deadline = time.monotonic() + 60
    while not bench_log.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert bench_log.exists(), "the default trial never reached its warm-up"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    result = _finish(proc)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    _assert_nothing_left(model.parent)
    assert _trial(out, 1)["state"] == "failed" and _trial(out, 1)["error"] == "interrupted"
    # Resumed without the server settings: the run's own are used again.
    resumed = _run([*_args(model, out, serve=""), "--resume"], _env(bin_dir))
    _ok(resumed)
    rows = _rows(out)
    assert {r["role"] for r in rows if r["state"] == "complete"} == {"baseline", "default", "seed"}
    retry = next(int(r["trial"]) for r in rows[2:] if r["role"] == "default")
    command = (out / "trials" / f"{retry:03d}" / "command.sh").read_text()
    assert "export FAKE_VLLM_FAULT=slow@1" in command and "--dtype bfloat16" in command
    refused = _run([*_args(model, out, serve="--dtype float16"), "--resume"], _env(bin_dir))
    assert refused.returncode == 2
    assert "was started with --serve-args ('--enforce-eager', '--dtype', 'bfloat16')" in (
        refused.stderr
    )
    _assert_nothing_left(model.parent)


# -- checks before any trial ---------------------------------------------------------------------


def test_check_without_vllm_on_path(
    fake: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AutotuneError, match=r"vllm is not on PATH.*--backend simulate") as info:
        VllmAscendBackend(Workload(model=str(fake[1]), max_num_seqs=8)).check()
    assert "\n" not in str(info.value)


def test_check_asks_the_env_of_vllm_for_vllm_ascend(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", ascend_version=None)
    model = make_small_model(tmp_path / "model")
    backend = VllmAscendBackend(
        Workload(model=str(model), max_num_seqs=8), LaunchOptions(vllm=str(bin_dir))
    )
    with pytest.raises(AutotuneError, match=r"vllm-ascend is not installed in the environment of"):
        backend.check()


def test_check_refuses_vllm_ascend_without_the_feature(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", ascend_version="0.24.0rc1")
    model = make_small_model(tmp_path / "model")
    backend = VllmAscendBackend(
        Workload(model=str(model), max_num_seqs=8), LaunchOptions(vllm=str(bin_dir / "vllm"))
    )
    with pytest.raises(AutotuneError, match=r"0\.24\.0rc1 .*removed after 0\.23"):
        backend.check()


def test_check_refuses_a_preset_name(fake: tuple[Path, Path]) -> None:
    with pytest.raises(AutotuneError, match="serves a local model directory"):
        VllmAscendBackend(Workload(model="Qwen3-32B-W8A8", max_num_seqs=8)).check()
