"""Wiring of `autotune run` for the real backend: the deployment behind the workload, launcher
flags, and the server settings a resume takes from run.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autotune.cli import app
from autotune.errors import AutotuneError
from autotune.search.summary import config_keys
from autotune.tune import launch_from_flags, make_workload, recorded_flags
from autotune.workloads.base import Workload
from autotune.workloads.deployment import LaunchOptions


def _workload(**kw: Any) -> tuple[Workload, dict[str, tuple[Any, str]]]:
    args: dict[str, Any] = {"model": "Qwen3-32B-W8A8", "max_num_seqs": 72, "extra": {}}
    args.update(kw)
    return make_workload(**args)


def test_the_workload_is_what_vllm_serve_gets() -> None:
    launch = LaunchOptions(serve_args=("-tp", "2", "--max-num-batched-tokens", "8192"))
    workload, added = _workload(backend="vllm-ascend", launch=launch)
    assert (workload.tp, workload.max_num_batched_tokens, workload.flashcomm1) == (2, 8192, False)
    assert added == {}


def test_the_simulator_refuses_launcher_flags() -> None:
    with pytest.raises(AutotuneError, match="--serve-args, --port only apply to --backend vllm"):
        _workload(launch=LaunchOptions(serve_args=("--dtype", "bf16"), port=8000))


def test_contradiction_is_one_line_with_exit_2(tmp_path: Path) -> None:
    args = ["run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "8", "--tp", "2", "--serve-args"]
    result = CliRunner().invoke(app, [*args, "-tp 4", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --tp 2 contradicts --serve-args --tensor-parallel-size 4; give one of them"
    ]
    assert not (tmp_path / "run").exists()


def test_resume_takes_the_runs_server_settings(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "backend": "vllm-ascend",
                "workload": {"model": "/m", "max_num_seqs": 8, "tp": 2},
                "launch": {
                    "vllm": "/v/bin",
                    "serve_args": ["--dtype", "bfloat16", "-tp", "2"],
                    "serve_env": {"A": "1"},
                    "port": None,
                    "num_prompts": 16,
                },
            }
        )
    )
    flags = {"out": tmp_path, "resume": True, "serve_args": None, "serve_env": None}
    merged = recorded_flags({**flags, "startup_timeout": 5.0}, given={"out", "resume"})
    launch = launch_from_flags(merged)
    assert launch.serve_args == ("--dtype", "bfloat16", "-tp", "2")
    assert launch.serve_env == {"A": "1"}
    assert (launch.vllm, launch.num_prompts, launch.startup_timeout_s) == ("/v/bin", 16, 5.0)
    assert merged["tp"] == 2
    with pytest.raises(AutotuneError, match="was started with --serve-env"):
        recorded_flags({**flags, "serve_env": ["A=2"]}, given={"out", "resume", "serve_env"})


def test_every_best_config_key_is_explained() -> None:
    config = {
        "weight_prefetch_config": {
            "enabled": True,
            "prefetch_ratio": {
                "attn": {"qkv": 0.5, "o": 0.001},
                "moe": {"gate_up": 0.0},
                "mlp": {"gate_up": 0.001, "down": 0.25},
            },
        },
        "enable_flashcomm1": True,
        "torchair_graph_config": {},
    }
    keys = config_keys(config, {"enable_flashcomm1": "you asked for --flashcomm1"})
    assert keys["enable_flashcomm1"] == "you asked for --flashcomm1"
    assert keys["torchair_graph_config"].startswith("from your --additional-config")
    assert "module is off" in keys["weight_prefetch_config.prefetch_ratio.moe"]
    assert "weight_prefetch_config.prefetch_ratio.attn" not in keys  # not all zero
