"""The deployment is read from --serve-args / --serve-env / --additional-config, never guessed."""

from __future__ import annotations

from typing import Any

import pytest

from autotune.errors import AutotuneError
from autotune.workloads.deployment import (
    LaunchOptions,
    ServeArgs,
    parse_serve_env,
    read_serve_args,
    resolve,
    split_serve_args,
)


def _resolve(
    serve: str = "",
    env: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    **kw: Any,
) -> Any:
    args: dict[str, Any] = {
        "simulated": False,
        "serve": read_serve_args(split_serve_args(serve)),
        "serve_env": env or {},
        "extra": extra or {},
        "tp": None,
        "ep": None,
        "graph_mode": None,
        "max_num_batched_tokens": None,
        "flashcomm1": None,
    }
    args.update(kw)
    return resolve(**args)


def test_serve_args_are_read_in_every_spelling() -> None:
    s = read_serve_args(
        split_serve_args(
            "-tp 2 --data-parallel-size=2 --enable-expert-parallel --enforce-eager "
            "--max-num-batched-tokens 4096 --served-model-name=qwen3 --dtype bfloat16"
        )
    )
    assert (s.tp, s.dp, s.expert_parallel, s.enforce_eager) == (2, 2, True, True)
    assert (s.max_num_batched_tokens, s.served_model_name) == (4096, "qwen3")
    assert s.argv[-2:] == ("--dtype", "bfloat16")  # passed on untouched


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("--max-num-seqs 8", "must not set --max-num-seqs; use autotune's --max-num-seqs"),
        ("--port=9000", "must not set --port"),
        ("--additional-config {}", "must not set --additional-config"),
        ("--profiler-config.profiler=torch", "must not set --profiler-config"),
        ("-tp", "-tp needs a value"),
        ("--tensor-parallel-size four", "needs an integer"),
        ("--dtype 'bf16", "cannot be split"),
    ],
)
def test_bad_serve_args_get_one_line(text: str, message: str) -> None:
    with pytest.raises(AutotuneError, match=message) as info:
        read_serve_args(split_serve_args(text))
    assert "\n" not in str(info.value)


def test_serve_env_is_key_value() -> None:
    assert parse_serve_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(AutotuneError, match="KEY=VALUE"):
        parse_serve_env(["NOEQUALS"])


def test_defaults_are_vllms_own_not_the_simulators() -> None:
    dep = _resolve()
    assert (dep.tp, dep.ep, dep.graph_mode, dep.flashcomm1) == (1, 1, False, False)
    assert dep.added == {}  # flashcomm1 off is 0.23's default: no key added
    sim = _resolve(simulated=True)
    assert (sim.tp, sim.flashcomm1) == (4, True)
    assert sim.added["enable_flashcomm1"][0] is True


def test_parallelism_comes_from_serve_args() -> None:
    dep = _resolve("-tp 4 -dp 2 --enable-expert-parallel")
    assert (dep.tp, dep.ep) == (4, 8)
    with pytest.raises(AutotuneError, match="--tp 2 contradicts --serve-args"):
        _resolve("--tensor-parallel-size 4", tp=2)
    with pytest.raises(AutotuneError, match="--ep 2 contradicts"):
        _resolve("-tp 4 --enable-expert-parallel", ep=2)


def test_graph_mode_and_batched_tokens_contradictions() -> None:
    with pytest.raises(
        AutotuneError, match="--graph-mode contradicts --serve-args --enforce-eager"
    ):
        _resolve("--enforce-eager", graph_mode=True)
    assert _resolve("--max-num-batched-tokens 2048").max_num_batched_tokens == 2048
    with pytest.raises(AutotuneError, match="--max-num-batched-tokens 4096 contradicts"):
        _resolve("--max-num-batched-tokens 2048", max_num_batched_tokens=4096)


def test_flashcomm1_follows_the_deployment() -> None:
    assert _resolve(env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}).flashcomm1 is True
    from_extra = _resolve(extra={"enable_flashcomm1": True})
    # Already in the user's own keys: nothing to add.
    assert from_extra.flashcomm1 is True and from_extra.added == {}
    asked = _resolve(flashcomm1=True)
    assert asked.added["enable_flashcomm1"][0] is True
    assert "--flashcomm1" in asked.added["enable_flashcomm1"][1]
    with pytest.raises(AutotuneError, match="flashcomm1 is given twice"):
        _resolve(env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}, flashcomm1=False)
    with pytest.raises(AutotuneError, match="use 1 or 0"):
        _resolve(env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "maybe"})


def test_launch_options_are_checked() -> None:
    LaunchOptions().check()
    for bad, message in (
        (LaunchOptions(port=0), "--port must be in 1..65535"),
        (LaunchOptions(startup_timeout_s=0), "--startup-timeout must be a positive number"),
        (LaunchOptions(num_prompts=0), "--num-prompts must be a positive integer"),
    ):
        with pytest.raises(AutotuneError, match=message):
            bad.check()


def test_serve_args_record_is_plain_data() -> None:
    assert ServeArgs(argv=()).tp is None
