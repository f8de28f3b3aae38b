"""Whole `autotune run --backend vllm-ascend` trials through a real `vllm serve` (vLLM's CPU build
serving a tiny Qwen3 with dummy weights; see tests/vllm_cpu/README.md).

Needs AUTOTUNE_VLLM_BIN (the env's bin directory) and AUTOTUNE_TINY_MODEL, which `.ci/run` exports
after `.ci/vllm_cpu_env.sh`. Without them these tests skip locally and fail under CI.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

INPUT_LEN = 32
OUTPUT_LEN = 32
NUM_PROMPTS = 16
# --enforce-eager keeps start-up short on two cores (autotune adds no mode of its own).
SERVE_ARGS = (
    "--load-format dummy --gpu-memory-utilization 0.1 --max-model-len 512 --dtype bfloat16 "
    "--enforce-eager"
)
# A whole run is three server start-ups of ~35-60 s each plus their benches on 2 cores.
RUN_TIMEOUT_S = 1200
# vLLM names its processes in its log lines, e.g. "(EngineCore pid=10969)".
LOGGED_PID = re.compile(r"\((?:APIServer|EngineCore|Worker)[^)]*pid=(\d+)\)")


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(vLLM bin directory, a private copy of the tiny model); skip or, under CI, fail without."""
    bin_dir = os.environ.get("AUTOTUNE_VLLM_BIN", "")
    model = os.environ.get("AUTOTUNE_TINY_MODEL", "")
    problem = ""
    if not bin_dir or not model:
        problem = "AUTOTUNE_VLLM_BIN and AUTOTUNE_TINY_MODEL are not set"
    elif not (Path(bin_dir) / "vllm").is_file():
        problem = f"no vllm in AUTOTUNE_VLLM_BIN={bin_dir}"
    elif not (Path(model) / "config.json").is_file():
        problem = f"no config.json in AUTOTUNE_TINY_MODEL={model}"
    if problem:
        message = f"{problem}; build the CPU vLLM env with `bash .ci/vllm_cpu_env.sh`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # A copy under a unique path, so a process naming it can only have come from this test.
    tiny = tmp_path_factory.mktemp("vllm-real") / "tiny-qwen3-under-test"
    shutil.copytree(model, tiny)
    return Path(bin_dir), tiny


def _env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("COLUMNS", None)
    return env


def _run_autotune(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`autotune ARGS` as a real process; on a hang, Ctrl-C it (it must clean up) and fail."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(
            f"autotune did not finish within {RUN_TIMEOUT_S} s\n{out[-3000:]}\n{err[-3000:]}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _python_traceback(output: str) -> bool:
    """autotune's own traceback (a server's, quoted inside a one-line reason, does not count)."""
    return any(line.startswith("Traceback") for line in output.splitlines())


def _cmdlines() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if raw:  # zombies and kernel threads have none
            found[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


def _leftovers(tiny: Path, logged_pids: set[int]) -> dict[int, str]:
    """Processes naming the model, or vLLM processes whose pid a server log printed."""
    return {
        pid: cmd
        for pid, cmd in _cmdlines().items()
        if str(tiny) in cmd or (pid in logged_pids and ("vllm" in cmd or "VLLM" in cmd))
    }


def _assert_nothing_left(tiny: Path, run_dir: Path) -> None:
    logged: set[int] = set()
    for log in run_dir.rglob("*.log"):
        logged.update(int(pid) for pid in LOGGED_PID.findall(log.read_text(errors="replace")))
    # Members of a killed group may take a moment to be torn down by the kernel.
    deadline = time.monotonic() + 3
    left = _leftovers(tiny, logged)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftovers(tiny, logged)
    assert not left, f"processes left after autotune exited: {left}"


def _run_args(
    tiny: Path, out: Path, *, trials: int, serve_args: str = SERVE_ARGS, more: tuple[str, ...] = ()
) -> list[str]:
    """`autotune run` on the tiny model; vLLM's CPU build is 0.27.1, an untested pair for
    vllm-ascend 0.23, so it runs with --allow-any-vllm."""
    return [
        "run", "--backend", "vllm-ascend", "--model", str(tiny), "--max-num-seqs", "4",
        "--tp", "1", "--no-flashcomm1", "--trials", str(trials), "--repeats", "1",
        "--allow-any-vllm",
        "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN),
        "--num-prompts", str(NUM_PROMPTS), "--serve-args", serve_args, *more, "--out", str(out),
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_three_real_trials(vllm_env: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, tiny = vllm_env
    out = tmp_path / "run"
    args = _run_args(tiny, out, trials=3)
    started = time.monotonic()
    result = _run_autotune(args, _env(bin_dir))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    assert not _python_traceback(result.stdout + result.stderr), result.stderr[-4000:]

    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    complete = [row for row in rows if row["state"] == "complete"]
    assert len(complete) >= 3, rows
    for row in complete:
        number = int(row["trial"])
        trial_dir = out / "trials" / f"{number:03d}"
        record = json.loads((trial_dir / "trial.json").read_text())

        # Measured by the real server: the CSV's throughput is the bench JSON's, and the bench
        # itself saw every request of the workload through.
        throughput = float(row["throughput"])
        assert 1.0 < throughput < 1e6, row
        assert record["bench_files"], record
        benches = [json.loads((out / name).read_text()) for name in record["bench_files"]]
        assert len(benches) == 1  # --repeats 1
        bench = benches[0]
        assert bench["completed"] == NUM_PROMPTS and bench["failed"] == 0, bench
        assert bench["total_output_tokens"] == NUM_PROMPTS * OUTPUT_LEN, bench
        assert bench["output_throughput"] == pytest.approx(throughput, rel=1e-3)

        # Reproducible by hand: the serve and bench commands, the server's own log.
        command = (trial_dir / "command.sh").read_text()
        assert "vllm serve" in command or "vllm' serve" in command, command
        assert "bench serve" in command, command
        assert str(tiny) in command
        server_logs = [
            p for p in trial_dir.rglob("*.log") if "APIServer pid=" in p.read_text(errors="replace")
        ]
        assert server_logs, sorted(p.name for p in trial_dir.iterdir())

        if row["role"] == "confirm":
            # A confirmation measures the bench of an earlier trial's config again, unprofiled.
            assert record["confirms"] == int(row["confirms"]) and not record["unprofiled"]
            assert "start_profile" not in command
            continue
        # The CPU build writes a torch trace, not *_ascend_pt: measured, marked unprofiled.
        assert row["unprofiled"].strip(), row
        assert record["unprofiled"] == row["unprofiled"], record
        assert "ascend_pt" in record["unprofiled"], record

    # One-second benches of a tiny model: no gain they show is celebrated. The default
    # confirmation rounds measure the configs again, and the spread of those runs (≈14 % here)
    # is the noise the margins carry.
    summary = json.loads((out / "summary.json").read_text())
    confidence = summary["confidence"]
    assert any("under 10 s" in w for w in confidence["warnings"]), confidence
    assert "WARNING: the bench runs lasted" in result.stdout
    assert confidence["confirmation"]["measurements"] >= 2, confidence
    assert confidence["noise"]["bench_from"] == "repeats"
    for key in ("winner_vs_runner_up", "winner_vs_default"):
        block = confidence[key]
        if block is not None:
            assert block["low_pct"] <= block["estimate_pct"] <= block["high_pct"]

    _assert_nothing_left(tiny, out)
    print(f"3 real trials in {elapsed:.0f} s; throughput {[r['throughput'] for r in complete]}")


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_busy_port_fails_the_trial_and_leaves_nothing(
    vllm_env: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, tiny = vllm_env
    out = tmp_path / "run"
    port = _free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        args = _run_args(tiny, out, trials=2, more=("--port", str(port)))
        result = _run_autotune(args, _env(bin_dir))
    # Without a baseline there is nothing to compare against: one clear line, exit 2.
    assert result.returncode == 2, result.stdout[-4000:] + result.stderr[-4000:]
    assert not _python_traceback(result.stdout + result.stderr), result.stderr[-4000:]
    assert f"port {port}" in result.stdout + result.stderr
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["state"] == "failed" for row in rows), rows
    assert all(str(port) in row["error"] for row in rows), rows
    _assert_nothing_left(tiny, out)


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_server_exiting_at_startup_fails_the_trial_with_its_reason(
    vllm_env: tuple[Path, Path], tmp_path: Path
) -> None:
    # The tiny model's max_position_embeddings is 1024: vLLM refuses a longer --max-model-len
    # while building its config, a real start-up failure some 20 s in.
    bin_dir, tiny = vllm_env
    out = tmp_path / "run"
    too_long = SERVE_ARGS.replace("--max-model-len 512", "--max-model-len 4096")
    args = _run_args(tiny, out, trials=2, serve_args=too_long)
    result = _run_autotune(args, _env(bin_dir))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert not _python_traceback(output), output[-4000:]
    # The reason comes from the server's own log, in the trial's row and on the terminal.
    assert "max_model_len (4096)" in output, output[-4000:]
    with (out / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["state"] for row in rows] == ["failed"], rows
    assert "max_model_len (4096)" in rows[0]["error"], rows
    _assert_nothing_left(tiny, out)
