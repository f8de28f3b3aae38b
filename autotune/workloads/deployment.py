"""The user's deployment as the trials run it: `--serve-args`, `--serve-env` and the run flags.

autotune reads tensor/expert parallelism, graph mode, max-num-batched-tokens and flashcomm1 from
what `vllm serve` will really get, so no default of its own can silently change the deployment;
two sources that disagree are refused with one line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import AutotuneError

# The flashcomm1 switch vllm-ascend 0.23 reads from the environment (envs.py).
FLASHCOMM1_ENV = "VLLM_ASCEND_ENABLE_FLASHCOMM1"
DEFAULT_MAX_NUM_BATCHED_TOKENS = 16384

# `vllm serve` options autotune sets itself for every trial, with the flag to use instead.
OWNED: dict[str, str] = {
    "--max-num-seqs": "autotune's --max-num-seqs",
    "--port": "autotune's --port",
    "--host": "nothing: trials listen on 127.0.0.1",
    "--additional-config": "autotune's --additional-config (other keys) and the tuned prefetch",
    "--profiler-config": "nothing: autotune sets the profiler for each trial",
}
_ALIASES = {
    "-tp": "--tensor-parallel-size",
    "-dp": "--data-parallel-size",
    "-ep": "--enable-expert-parallel",
    "-O": "--compilation-config",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ServeArgs:
    """What autotune reads from `--serve-args` (the rest is passed on untouched)."""

    argv: tuple[str, ...]
    tp: int | None = None
    dp: int | None = None
    expert_parallel: bool = False
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None
    served_model_name: str | None = None


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

    def check(self) -> None:
        for flag, value in (
            ("--startup-timeout", self.startup_timeout_s),
            ("--bench-timeout", self.bench_timeout_s),
            ("--stop-timeout", self.stop_timeout_s),
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
        }


def split_serve_args(text: str | None) -> tuple[str, ...]:
    """`--serve-args "…"` split as a shell would (no shell runs it)."""
    if not text:
        return ()
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise AutotuneError(f"--serve-args cannot be split: {exc} (check the quotes)") from None


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


def _int(flag: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise AutotuneError(f"--serve-args: {flag} needs an integer, got {value!r}") from None
    if number <= 0:
        raise AutotuneError(f"--serve-args: {flag} must be positive, got {number}")
    return number


def _value_of(argv: Sequence[str], i: int, inline: str | None) -> str:
    if inline is not None:
        return inline
    if i + 1 >= len(argv):
        raise AutotuneError(f"--serve-args: {argv[i]} needs a value")
    return argv[i + 1]


_INT_FIELDS = {
    "--tensor-parallel-size": "tp",
    "--data-parallel-size": "dp",
    "--max-num-batched-tokens": "max_num_batched_tokens",
}
_BOOL_FIELDS = {
    "--enable-expert-parallel": ("expert_parallel", True),
    "--no-enable-expert-parallel": ("expert_parallel", False),
    "--enforce-eager": ("enforce_eager", True),
    "--no-enforce-eager": ("enforce_eager", False),
}


def read_serve_args(argv: Sequence[str]) -> ServeArgs:
    """The deployment facts in `--serve-args`; one line for options autotune sets itself."""
    fields: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, inline = arg, None
        if arg.startswith("--") and "=" in arg:
            name, inline = arg.split("=", 1)
        name = _ALIASES.get(name, name)
        # vLLM accepts --opt.key=value for JSON options; the option is the part before the dot.
        base = name.split(".", 1)[0] if name.startswith("--") else name
        if base in OWNED:
            raise AutotuneError(f"--serve-args must not set {base}; use {OWNED[base]}")
        step = 1
        if name in _INT_FIELDS:
            fields[_INT_FIELDS[name]] = _int(name, _value_of(argv, i, inline))
            step = 1 if inline is not None else 2
        elif name == "--served-model-name":
            fields["served_model_name"] = _value_of(argv, i, inline)
            step = 1 if inline is not None else 2
        elif name in _BOOL_FIELDS:
            key, value = _BOOL_FIELDS[name]
            if inline is not None:
                value = value == (inline.strip().lower() not in ("false", "0", "no"))
            fields[key] = value
        i += step
    return ServeArgs(argv=tuple(argv), **fields)


def _env_bool(value: str) -> bool | None:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    return None


@dataclass(frozen=True)
class Deployment:
    """The deployment settings every trial runs with, and the config keys autotune adds."""

    tp: int
    ep: int
    graph_mode: bool
    max_num_batched_tokens: int
    flashcomm1: bool
    # additional-config keys autotune adds to every trial (and to best_config.json) -> why
    added: dict[str, tuple[Any, str]]


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
    if graph_mode is True and serve.enforce_eager:
        raise AutotuneError(f"--graph-mode contradicts {where} --enforce-eager; give one of them")
    graph = bool(graph_mode)
    if (
        max_num_batched_tokens is not None
        and serve.max_num_batched_tokens is not None
        and max_num_batched_tokens != serve.max_num_batched_tokens
    ):
        raise AutotuneError(
            f"--max-num-batched-tokens {max_num_batched_tokens} contradicts {where} "
            f"--max-num-batched-tokens {serve.max_num_batched_tokens}; give one of them"
        )
    mnbt = max_num_batched_tokens or serve.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS

    sources: list[tuple[str, bool]] = []
    if "enable_flashcomm1" in extra:
        value = extra["enable_flashcomm1"]
        if not isinstance(value, bool):
            raise AutotuneError("--additional-config: enable_flashcomm1 must be true or false")
        sources.append(("--additional-config enable_flashcomm1", value))
    if FLASHCOMM1_ENV in serve_env:
        env_value = _env_bool(serve_env[FLASHCOMM1_ENV])
        if env_value is None:
            raise AutotuneError(
                f"--serve-env {FLASHCOMM1_ENV}={serve_env[FLASHCOMM1_ENV]!r}: use 1 or 0"
            )
        sources.append((f"--serve-env {FLASHCOMM1_ENV}", env_value))
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
    return Deployment(
        tp=tp_v,
        ep=ep_v,
        graph_mode=graph,
        max_num_batched_tokens=mnbt,
        flashcomm1=fc1,
        added=added,
    )
