"""The user's deployment as the trials run it: `--serve-args`, `--serve-env` and the run flags.

autotune reads tensor/expert parallelism, the graph mode, max-num-batched-tokens, flashcomm1 and
the other row-parallel ops from what `vllm serve` will really get, so no default of its own can
silently change the deployment; two sources that disagree are refused with one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune import target
from autotune.errors import AutotuneError
from autotune.target import GraphMode
from autotune.workloads.vllm_args import ServeArgs

# Switches vllm-ascend 0.23 reads from the environment as bool(int(value)) or int(value), on
# every start-up, whether or not the additional-config sets the same key (envs.py:71-82,
# ascend_config.py:354-365): anything but an integer makes `vllm serve` crash.
FLASHCOMM1_ENV = "VLLM_ASCEND_ENABLE_FLASHCOMM1"
MATMUL_ALLREDUCE_ENV = "VLLM_ASCEND_ENABLE_MATMUL_ALLREDUCE"
FLASHCOMM2_ENV = "VLLM_ASCEND_FLASHCOMM2_PARALLEL_SIZE"
MSMONITOR_ENV = "MSMONITOR_USE_DAEMON"
INT_ENVS = (FLASHCOMM1_ENV, MATMUL_ALLREDUCE_ENV, FLASHCOMM2_ENV, MSMONITOR_ENV)
# vLLM disables torch.compile when this is "1" (config/vllm.py:1062-1067).
TORCH_COMPILE_DISABLE_ENV = "TORCH_COMPILE_DISABLE"
# vLLM's own --max-num-batched-tokens on an NPU host: vllm-ascend's get_device_total_memory
# raises, so vLLM takes its default for other hardware, 2048 for the API server
# (vllm-ascend platform.py:275-281, vLLM engine/arg_utils.py:2305-2331).
ASCEND_MAX_NUM_BATCHED_TOKENS = 2048
# What the simulator models unless told otherwise: the vendor's Qwen3-Dense recipe for 0.23
# (vllm-ascend v0.23.0 docs/source/tutorials/models/Qwen3-Dense.md: FULL_DECODE_ONLY graphs,
# --max-num-batched-tokens 40960). Modelled eager (--no-graph-mode), it keeps the 16384 tokens
# it always modelled, so eager results stay comparable with earlier runs.
RECIPE_MAX_NUM_BATCHED_TOKENS = 40960
SIMULATED_EAGER_MAX_NUM_BATCHED_TOKENS = 16384
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LaunchOptions:
    """How the real backend starts, drives and stops `vllm serve` (not part of the deployment)."""

    vllm: str | None = None  # --vllm: the executable or its bin dir; default `vllm` on PATH
    serve_args: tuple[str, ...] = ()
    serve_env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # default: a free loopback port per trial
    startup_timeout_s: float = 1800.0
    bench_timeout_s: float = 3600.0
    stop_timeout_s: float = 60.0
    num_prompts: int | None = None  # default: 4 x max-num-seqs
    # --max-num-batched-tokens given to autotune: passed to vllm serve (else vLLM's own default).
    max_num_batched_tokens: int | None = None
    analyse_timeout_s: float = 1800.0  # torch_npu's offline parse of a trial's raw profile
    allow_any_vllm: bool = False  # run with a vLLM other than 0.23.x (recorded in run.json)
    require_profiles: bool = False  # what would leave trials unprofiled is an error up front

    def check(self) -> None:
        for flag, value in (
            ("--startup-timeout", self.startup_timeout_s),
            ("--bench-timeout", self.bench_timeout_s),
            ("--stop-timeout", self.stop_timeout_s),
            ("--analyse-timeout", self.analyse_timeout_s),
        ):
            if not value > 0:
                raise AutotuneError(f"{flag} must be a positive number of seconds, got {value}")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise AutotuneError(f"--port must be in 1..65535, got {self.port}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise AutotuneError(f"--num-prompts must be a positive integer, got {self.num_prompts}")

    def to_json(self) -> dict[str, Any]:
        return {
            "vllm": self.vllm,
            "serve_args": list(self.serve_args),
            "serve_env": dict(self.serve_env),
            "port": self.port,
            "startup_timeout_s": self.startup_timeout_s,
            "bench_timeout_s": self.bench_timeout_s,
            "stop_timeout_s": self.stop_timeout_s,
            "num_prompts": self.num_prompts,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "analyse_timeout_s": self.analyse_timeout_s,
            "allow_any_vllm": self.allow_any_vllm,
            "require_profiles": self.require_profiles,
        }


def parse_serve_env(items: Sequence[str]) -> dict[str, str]:
    """`--serve-env KEY=VALUE` (repeatable) as a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(key):
            raise AutotuneError(
                f"--serve-env {item!r}: write it as KEY=VALUE, e.g. HCCL_BUFFSIZE=512"
            )
        out[key] = value
    return out


def env_switch(serve_env: Mapping[str, str], name: str) -> int | None:
    """An integer switch of 0.23 from `--serve-env` (None when not given); one line otherwise."""
    if name not in serve_env:
        return None
    value = serve_env[name]
    try:
        return int(value)
    except ValueError:
        raise AutotuneError(
            f"--serve-env {name}={value!r}: vllm-ascend 0.23 reads it as an integer "
            "(bool(int(value)) in envs.py) on every start-up, so this value makes vllm serve "
            "crash; use 1 or 0"
        ) from None


@dataclass(frozen=True)
class Deployment:
    """The deployment settings every trial runs with, and the config keys autotune adds."""

    tp: int
    ep: int
    graph: GraphMode
    max_num_batched_tokens: int
    flashcomm1: bool
    row_op: str
    # additional-config keys autotune adds to every trial (and to best_config.json) -> why
    added: dict[str, tuple[Any, str]]

    @property
    def graph_mode(self) -> bool:
        return self.graph.graphs


def _eager_because(serve: ServeArgs, serve_env: Mapping[str, str]) -> str:
    if serve.enforce_eager:
        return "--enforce-eager"
    if serve.optimization_level == 0:
        return "-O0"
    if serve_env.get(TORCH_COMPILE_DISABLE_ENV) == "1":
        return f"{TORCH_COMPILE_DISABLE_ENV}=1"
    return "their --compilation-config"


def ascend_compilation(extra: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """The additional-config's ascend_compilation_config (graph options), {} when not given."""
    ascend = extra.get("ascend_compilation_config") or {}
    if not isinstance(ascend, Mapping):
        raise AutotuneError(f"{where}: ascend_compilation_config must be a JSON object")
    return ascend


def simulated_graph(graph_mode: bool | None, ascend: Mapping[str, Any]) -> GraphMode:
    """The mode the simulator models: the vendor recipe's FULL_DECODE_ONLY graphs unless
    `graph_mode` is False (eager); there is no server whose mode it could read."""
    eager = graph_mode is False
    return target.resolve_graph_mode(
        enforce_eager=eager,
        optimization_level=None,
        compilation={} if eager else {"cudagraph_mode": target.RECIPE_CUDAGRAPH_MODE},
        ascend_compilation=ascend,
    )


def simulated_max_num_batched_tokens(graph: GraphMode) -> int:
    """The simulator's --max-num-batched-tokens when none is given: the recipe's in graph mode."""
    return RECIPE_MAX_NUM_BATCHED_TOKENS if graph.graphs else SIMULATED_EAGER_MAX_NUM_BATCHED_TOKENS


def _graph(
    *,
    simulated: bool,
    serve: ServeArgs,
    serve_env: Mapping[str, str],
    extra: Mapping[str, Any],
    graph_mode: bool | None,
) -> GraphMode:
    """The graph mode the trials run in: the user's serve args say it; autotune adds none."""
    ascend = ascend_compilation(extra, "--additional-config")
    if simulated:
        return simulated_graph(graph_mode, ascend)
    mode = target.resolve_graph_mode(
        enforce_eager=serve.enforce_eager,
        optimization_level=serve.optimization_level,
        compilation=serve.compilation,
        ascend_compilation=ascend,
        torch_compile_disabled=serve_env.get(TORCH_COMPILE_DISABLE_ENV) == "1",
    )
    if graph_mode is True and not mode.graphs:
        why = _eager_because(serve, serve_env)
        if why == "--enforce-eager":
            raise AutotuneError(
                "--graph-mode contradicts --serve-args --enforce-eager; give one of them"
            )
        raise AutotuneError(
            f"--graph-mode contradicts --serve-args, which run vllm serve eagerly ({why}); "
            "the trials run in the mode your --serve-args give"
        )
    if graph_mode is False and mode.graphs:
        raise AutotuneError(
            f"--no-graph-mode: your --serve-args run vllm serve in graph mode "
            f"({mode.cudagraph_mode}); autotune adds no mode of its own, so put --enforce-eager "
            "in --serve-args to tune eager mode"
        )
    return mode


def resolve(
    *,
    simulated: bool,
    serve: ServeArgs,
    serve_env: Mapping[str, str],
    extra: Mapping[str, Any],
    tp: int | None,
    ep: int | None,
    graph_mode: bool | None,
    max_num_batched_tokens: int | None,
    flashcomm1: bool | None,
) -> Deployment:
    """Reconcile the flags with `--serve-args`, `--serve-env` and `--additional-config`."""
    where = "--serve-args"
    if tp is not None and serve.tp is not None and tp != serve.tp:
        raise AutotuneError(
            f"--tp {tp} contradicts {where} --tensor-parallel-size {serve.tp}; give one of them"
        )
    # vLLM's own default is TP 1; the simulator models the vendor's TP4 recipe.
    tp_v = tp or serve.tp or (4 if simulated else 1)
    dp = serve.dp or 1
    if serve.expert_parallel:
        if ep is not None and ep != tp_v * dp:
            raise AutotuneError(
                f"--ep {ep} contradicts {where} --enable-expert-parallel, which gives EP = TP x DP "
                f"= {tp_v * dp}"
            )
        ep_v = tp_v * dp
    else:
        ep_v = ep or 1
        if not simulated and ep_v > 1 and ep_v != tp_v * dp:
            raise AutotuneError(
                f"--ep {ep_v}: vLLM's expert parallelism is always TP x DP = {tp_v * dp} here; "
                f"pass --ep {tp_v * dp} (or --enable-expert-parallel in --serve-args), or none"
            )
    for name in INT_ENVS:
        env_switch(serve_env, name)
    graph = _graph(
        simulated=simulated, serve=serve, serve_env=serve_env, extra=extra, graph_mode=graph_mode
    )
    if (
        max_num_batched_tokens is not None
        and serve.max_num_batched_tokens is not None
        and max_num_batched_tokens != serve.max_num_batched_tokens
    ):
        raise AutotuneError(
            f"--max-num-batched-tokens {max_num_batched_tokens} contradicts {where} "
            f"--max-num-batched-tokens {serve.max_num_batched_tokens}; give one of them"
        )
    default = (
        simulated_max_num_batched_tokens(graph) if simulated else ASCEND_MAX_NUM_BATCHED_TOKENS
    )
    mnbt = next(
        (n for n in (max_num_batched_tokens, serve.max_num_batched_tokens) if n is not None),
        default,
    )

    sources: list[tuple[str, bool]] = []
    if "enable_flashcomm1" in extra:
        value = extra["enable_flashcomm1"]
        if not isinstance(value, bool):
            raise AutotuneError("--additional-config: enable_flashcomm1 must be true or false")
        sources.append(("--additional-config enable_flashcomm1", value))
    env_value = env_switch(serve_env, FLASHCOMM1_ENV)
    if env_value is not None:
        sources.append((f"--serve-env {FLASHCOMM1_ENV}", bool(env_value)))
    if flashcomm1 is not None:
        sources.append(("--flashcomm1" if flashcomm1 else "--no-flashcomm1", flashcomm1))
    if len({v for _, v in sources}) > 1:
        said = ", ".join(f"{name} says {'on' if v else 'off'}" for name, v in sources)
        raise AutotuneError(f"flashcomm1 is given twice with different values: {said}")
    added: dict[str, tuple[Any, str]] = {}
    if sources:
        fc1 = sources[0][1]
        if flashcomm1 is True and len(sources) == 1:
            added["enable_flashcomm1"] = (
                True,
                "you asked for --flashcomm1; the mlp.gate_up prefetch fires only with it, so the "
                "tuned ratios assume it",
            )
    else:
        # Off is 0.23's default, so nothing is added; the simulator models the vendor's
        # Qwen3-Dense recipe, which turns it on.
        fc1 = simulated
        if simulated:
            added["enable_flashcomm1"] = (
                True,
                "the simulator models the vendor's Qwen3-Dense recipe with flashcomm1 on; the "
                "mlp.gate_up prefetch fires only with it",
            )
    # The other row-parallel ops: the additional-config key wins, else its environment switch.
    row_env = {
        key: serve_env[name]
        for key, name in (
            ("enable_matmul_allreduce", MATMUL_ALLREDUCE_ENV),
            ("enable_flashcomm2_parallel_size", FLASHCOMM2_ENV),
        )
        if name in serve_env
    }
    row_extra = dict(extra)
    for key, text in row_env.items():
        if key not in row_extra:
            number = int(text)
            row_extra[key] = bool(number) if key == "enable_matmul_allreduce" else number
    return Deployment(
        tp=tp_v,
        ep=ep_v,
        graph=graph,
        max_num_batched_tokens=mnbt,
        flashcomm1=fc1,
        row_op=target.row_op_of(row_extra),
        added=added,
    )
