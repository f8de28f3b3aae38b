"""Stand-in for vLLM 0.23's FlexibleArgumentParser: the same rewriting before argparse.

vLLM (vllm/utils/argparse_utils.py:243-429) expands `--config FILE` (YAML), turns underscores in
option names into dashes, `-O3`/`-O 3`/`-O=3` into `--optimization-level 3`, and gathers dotted
options (`-cc.mode=3`) into one JSON value appended at the end; argparse (abbreviations allowed)
does the rest.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import yaml

_NAME = re.compile(r"(?<=--)[^.]*")


def _from_config(path: str) -> list[str]:
    if not path.endswith((".yaml", ".yml")):
        raise ValueError(f"Config file must be of a yaml/yml type. {path} supplied")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, bool):
            out += [f"--{key}"] if value else []
        elif isinstance(value, list):
            out += [f"--{key}", *map(str, value)] if value else []
        elif isinstance(value, dict):
            out += [f"--{key}", json.dumps(value)]
        else:
            out += [f"--{key}", str(value)]
    return out


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class FlexibleArgumentParser(argparse.ArgumentParser):
    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        args = list(args or [])
        if "--config" in args:
            i = args.index("--config")
            # After the subcommand and its model, as vLLM does: the command line wins.
            head = 2 if args[:1] == ["serve"] and len(args) > 1 else 0
            args = args[:head] + _from_config(args[i + 1]) + args[head:i] + args[i + 2 :]
        processed: list[str] = []
        for i, arg in enumerate(args):
            if arg.startswith("--"):
                key, eq, value = arg.partition("=")
                processed.append(
                    _NAME.sub(lambda m: m.group(0).replace("_", "-"), key, 1) + eq + value
                )
            elif arg.startswith("-O") and arg != "-O":
                processed += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
            elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
                processed.append("--optimization-level")
            else:
                processed.append(arg)
        dotted: dict[str, dict[str, Any]] = {}
        kept: list[str] = []
        skip = -1
        for i, arg in enumerate(processed):
            if i == skip:
                continue
            name = arg.split("=", 1)[0]
            if not (arg.startswith("-") and "." in name):
                kept.append(arg)
                continue
            if "=" in arg:
                text = arg.split("=", 1)[1]
            else:
                text, skip = processed[i + 1], i + 1
            try:
                value: Any = json.loads(text)
            except json.JSONDecodeError:
                value = text
            key, *path = name.split(".")
            for part in reversed(path):
                value = {part: value}
            _merge(dotted.setdefault(key, {}), value)
        for key, value in dotted.items():
            kept += [key, json.dumps(value)]
        return super().parse_args(kept, namespace)
