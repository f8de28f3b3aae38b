"""The deployment is read from --serve-args / --serve-env / --additional-config, never guessed."""

from __future__ import annotations

from typing import Any

import pytest

from autotune.errors import AutotuneError
from autotune.workloads.deployment import LaunchOptions, parse_serve_env, resolve
from autotune.workloads.vllm_args import ServeArgs, read_serve_args, split_serve_args


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
    # No --enforce-eager and no 16384 of autotune's own (both were its defaults once). vLLM
    # 0.23 serves with -O2's FULL_AND_PIECEWISE graphs, and 2048 batched tokens on Ascend.
    dep = _resolve()
    assert (dep.tp, dep.ep, dep.flashcomm1, dep.max_num_batched_tokens) == (1, 1, False, 2048)
    assert (dep.graph.compile_mode, dep.graph.cudagraph_mode) == (
        "VLLM_COMPILE",
        "FULL_AND_PIECEWISE",
    )
    assert dep.added == {}  # flashcomm1 off is 0.23's default: no key added
    # The simulator models the vendor's Qwen3-Dense recipe for 0.23: TP4, flashcomm1, its
    # FULL_DECODE_ONLY graphs and --max-num-batched-tokens 40960.
    sim = _resolve(simulated=True)
    assert (sim.tp, sim.flashcomm1, sim.max_num_batched_tokens) == (4, True, 40960)
    assert (sim.graph.compile_mode, sim.graph.cudagraph_mode) == (
        "VLLM_COMPILE",
        "FULL_DECODE_ONLY",
    )
    assert sim.added["enable_flashcomm1"][0] is True
    assert _resolve(simulated=True, graph_mode=True) == sim
    # --no-graph-mode models eager, with the 16384 tokens the simulator models there; an explicit
    # --max-num-batched-tokens wins in either mode.
    eager = _resolve(simulated=True, graph_mode=False)
    assert (eager.graph.cudagraph_mode, eager.max_num_batched_tokens) == ("NONE", 16384)
    assert _resolve(simulated=True, max_num_batched_tokens=256).max_num_batched_tokens == 256
    assert (
        _resolve(simulated=True, graph_mode=False, max_num_batched_tokens=256).graph == eager.graph
    )


def test_parallelism_comes_from_serve_args() -> None:
    dep = _resolve("-tp 4 -dp 2 --enable-expert-parallel")
    assert (dep.tp, dep.ep) == (4, 8)
    with pytest.raises(AutotuneError, match="--tp 2 contradicts --serve-args"):
        _resolve("--tensor-parallel-size 4", tp=2)
    with pytest.raises(AutotuneError, match="--ep 2 contradicts"):
        _resolve("-tp 4 --enable-expert-parallel", ep=2)


def test_ep_is_tp_times_dp_or_nothing() -> None:
    assert _resolve("-tp 4 -dp 2", ep=8).ep == 8
    assert _resolve("-tp 4", ep=1).ep == 1
    with pytest.raises(AutotuneError, match=r"--ep 2: vLLM's expert parallelism is always TP x DP"):
        _resolve("-tp 4", ep=2)
    # The simulator has no DP: it models any EP it is given.
    assert _resolve(simulated=True, tp=4, ep=16).ep == 16


@pytest.mark.parametrize(
    ("serve", "env", "extra", "expected"),
    [
        ("--enforce-eager", {}, {}, ("NONE", "NONE")),
        ("-O0", {}, {}, ("NONE", "NONE")),
        ("-O1", {}, {}, ("VLLM_COMPILE", "PIECEWISE")),
        ("", {}, {}, ("VLLM_COMPILE", "FULL_AND_PIECEWISE")),
        ('-cc {"cudagraph_mode":"FULL_DECODE_ONLY"}', {}, {}, ("VLLM_COMPILE", "FULL_DECODE_ONLY")),
        ("-cc.mode=NONE -cc.cudagraph_mode=FULL_DECODE_ONLY", {}, {}, ("NONE", "FULL_DECODE_ONLY")),
        ("-cc.mode=0", {}, {}, ("NONE", "NONE")),  # piecewise needs compilation
        ("-cc.mode=1", {}, {}, ("NONE", "NONE")),  # Ascend graphs only with NONE/VLLM_COMPILE
        ("", {"TORCH_COMPILE_DISABLE": "1"}, {}, ("NONE", "NONE")),
    ],
)
def test_graph_mode_is_the_one_the_serve_args_give(
    serve: str, env: dict[str, str], extra: dict[str, Any], expected: tuple[str, str]
) -> None:
    graph = _resolve(serve, env=env, extra=extra).graph
    assert (graph.compile_mode, graph.cudagraph_mode) == expected


def test_ascend_compilation_config_is_read() -> None:
    extra = {"ascend_compilation_config": {"enable_npugraph_ex": False, "fuse_norm_quant": False}}
    graph = _resolve('-cc {"cudagraph_mode":"FULL_DECODE_ONLY"}', extra=extra).graph
    assert (graph.npugraph_ex, graph.fuse_norm_quant) == (False, False)
    with pytest.raises(AutotuneError, match="enable_npugraph_ex must be true or false"):
        _resolve(extra={"ascend_compilation_config": {"enable_npugraph_ex": "no"}})


def test_graph_mode_and_batched_tokens_contradictions() -> None:
    with pytest.raises(
        AutotuneError, match="--graph-mode contradicts --serve-args --enforce-eager"
    ):
        _resolve("--enforce-eager", graph_mode=True)
    with pytest.raises(AutotuneError, match=r"run vllm serve eagerly \(-O0\)"):
        _resolve("-O0", graph_mode=True)
    with pytest.raises(AutotuneError, match="autotune adds no mode of its own"):
        _resolve("-tp 2", graph_mode=False)
    assert _resolve("--enforce-eager", graph_mode=False).graph_mode is False
    assert _resolve("--max-num-batched-tokens 2048").max_num_batched_tokens == 2048
    with pytest.raises(AutotuneError, match="--max-num-batched-tokens 4096 contradicts"):
        _resolve("--max-num-batched-tokens 2048", max_num_batched_tokens=4096)


def test_flashcomm1_follows_the_deployment() -> None:
    assert _resolve(env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "1"}).flashcomm1 is True
    assert _resolve(env={"VLLM_ASCEND_ENABLE_FLASHCOMM1": "2"}).flashcomm1 is True  # bool(int())
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


@pytest.mark.parametrize(
    "name",
    [
        "VLLM_ASCEND_ENABLE_FLASHCOMM1",
        "VLLM_ASCEND_ENABLE_MATMUL_ALLREDUCE",
        "VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE",
        "MSMONITOR_USE_DAEMON",
    ],
)
def test_integer_switches_refuse_true_and_say_why(name: str) -> None:
    # 0.23 evaluates bool(int(os.getenv(...))) on every start-up: "true" crashes vllm serve.
    with pytest.raises(AutotuneError, match=r"reads it as an integer .* use 1 or 0") as info:
        _resolve(env={name: "true"}, extra={"enable_flashcomm1": False})
    assert f"--serve-env {name}='true'" in str(info.value)


def test_row_op_switches_come_from_the_environment_too() -> None:
    assert _resolve(env={"VLLM_ASCEND_ENABLE_MATMUL_ALLREDUCE": "1"}).row_op == "matmul_allreduce"
    assert _resolve(env={"VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE": "2"}).row_op == "flashcomm2"
    assert _resolve(env={"VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE": "0"}).row_op == ""
    # The additional-config key wins over its environment fallback, as in 0.23.
    env = {"VLLM_ASCEND_ENABLE_MATMUL_ALLREDUCE": "1"}
    assert _resolve(env=env, extra={"enable_matmul_allreduce": False}).row_op == ""


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
