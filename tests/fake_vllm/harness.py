"""Running `autotune run` as a real process against the fake `vllm` (tests/fake_vllm/vllm), and
reading what it left: the helpers the launcher's end-to-end tests share."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_vllm.fake_env import make_fake_env, make_small_model

RUN_TIMEOUT_S = 120


def fake_host(factory: pytest.TempPathFactory, name: str) -> tuple[Path, Path]:
    """(bin dir of a fresh fake vLLM environment, a 4-layer W8A8 model directory), both under a
    folder of their own, so a process naming it can only have come from that test module."""
    root = factory.mktemp(name)
    return make_fake_env(root / "env"), make_small_model(root / "model-under-test")


def env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """Our environment with the fake env's bin first on PATH, no fault unless given."""
    out = {k: v for k, v in os.environ.items() if k != "FAKE_VLLM_FAULT"}
    out["PATH"] = f"{bin_dir}{os.pathsep}{out.get('PATH', '')}"
    out["COLUMNS"] = "200"
    out.update(extra)
    return out


def args(
    model: Path,
    out: Path,
    *more: str,
    trials: int = 3,
    serve: str = "--enforce-eager",
    tp: int | None = 1,
    confirm: int = 0,
) -> list[str]:
    """`autotune run` on the fake; eager unless `serve` says otherwise (autotune adds no mode of
    its own, and eager profiles show every site the static rules expect); `tp` None: no --tp;
    no confirmation rounds unless asked (these runs are about the trials themselves)."""
    argv = [
        "run", "--backend", "vllm-ascend", "--model", str(model), "--max-num-seqs", "8",
        "--trials", str(trials), "--repeats", "1", "--input-len", "32",
        "--output-len", "32", "--num-prompts", "16", "--profile-steps", "2",
        "--confirm", str(confirm), "--out", str(out), *more,
    ]  # fmt: skip
    if tp is not None:
        argv += ["--tp", str(tp)]
    return [*argv, "--serve-args", serve] if serve else argv


def start(argv: list[str], environ: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", *argv],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"autotune hung\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return finish(start(argv, environ))


def _leftovers(marker: Path) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if str(marker) in cmd:
            found[int(entry.name)] = cmd
    return found


def assert_nothing_left(marker: Path) -> None:
    # Everything autotune started names the fake env or the model, both under `marker`.
    deadline = time.monotonic() + 3
    while _leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(marker), _leftovers(marker)


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def trial(out: Path, number: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "trials" / f"{number:03d}" / "trial.json").read_text())
    return data


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.returncode}\n{result.stdout[-3000:]}\n{result.stderr}"
    assert "Traceback" not in result.stderr


def run_with_fault(
    fake: tuple[Path, Path], tmp_path: Path, fault: str, *more: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`autotune run` on the fake vLLM with one injected fault; the run itself must succeed.
    Returns the finished process and the run directory."""
    bin_dir, model = fake
    out = tmp_path / "run"
    result = run(args(model, out, *more), env(bin_dir, FAKE_VLLM_FAULT=fault))
    ok(result)
    return result, out
