"""Stand-in for vLLM's `vllm serve` subcommand: the options the tests and autotune use, with
vLLM 0.23's spellings, types and defaults (engine/arg_utils.py). Unknown options are refused."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _json(text: str) -> Any:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _level(text: str) -> int:
    if text not in ("0", "1", "2", "3"):
        raise argparse.ArgumentTypeError(f"invalid optimization level {text!r}")
    return int(text)


class ServeSubcommand:
    name = "serve"

    def subparser_init(self, subparsers: Any) -> argparse.ArgumentParser:
        p = subparsers.add_parser(self.name, usage="vllm serve [model_tag] [options]")
        p.add_argument("model_tag", nargs="?")
        p.add_argument("--config", default=None)
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--max-num-seqs", type=int, default=None)
        p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
        p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
        p.add_argument("--max-num-batched-tokens", type=int, default=None)
        p.add_argument("--max-model-len", type=int, default=None)
        p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
        p.add_argument(
            "--enable-expert-parallel", "-ep", action=argparse.BooleanOptionalAction, default=False
        )
        p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
        p.add_argument(
            "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None
        )
        p.add_argument("--additional-config", type=_json, default={})
        p.add_argument("--profiler-config", type=_json, default=None)
        p.add_argument("--compilation-config", "-cc", type=_json, default={})
        p.add_argument("--optimization-level", type=_level, default=2)
        p.add_argument("--served-model-name", default=None)
        p.add_argument("--dtype", default="auto")
        p.add_argument("--block-size", type=int, default=None)
        p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
        p.add_argument("--load-format", default="auto")
        p.add_argument("--quantization", "-q", default=None)
        p.add_argument("--distributed-executor-backend", default=None)
        p.add_argument("--trust-remote-code", action="store_true")
        return p

    def validate(self, args: argparse.Namespace) -> None:
        if args.model_tag is None:
            raise ValueError("model should be provided as the first positional argument")
