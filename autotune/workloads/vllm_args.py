"""`--serve-args` read the way vLLM 0.23 reads the arguments of `vllm serve`.

vLLM's parser (`vllm/utils/argparse_utils.py:243-429`, `FlexibleArgumentParser.parse_args`) first
rewrites the argument list: a `--config FILE` (YAML) is expanded in place, underscores in option
names become dashes (`--tensor_parallel_size 4` is `-tp 4`), `-O3`, `-O 3` and `-O=3` become
`--optimization-level 3`, and dotted options (`-cc.mode=3`, `--compilation-config.cudagraph_mode
FULL`) are gathered into one JSON value appended at the end. argparse then keeps the last value of
each option. autotune applies the same rewriting and reads the deployment facts from the result;
the rest is passed on untouched.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError

# `vllm serve` options autotune sets itself for every trial, with the flag to use instead.
OWNED: dict[str, str] = {
    "--max-num-seqs": "autotune's --max-num-seqs",
    "--port": "autotune's --port",
    "--host": "nothing: trials listen on 127.0.0.1",
    "--additional-config": "autotune's --additional-config (other keys) and the tuned prefetch",
    "--profiler-config": "nothing: autotune sets the profiler for each trial",
}
# vLLM 0.23's short spellings of the options autotune reads (engine/arg_utils.py).
ALIASES: dict[str, str] = {
    "-tp": "--tensor-parallel-size",
    "-dp": "--data-parallel-size",
    "-ep": "--enable-expert-parallel",
    "-cc": "--compilation-config",
}
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
# Everything between the leading -- and the first dot: the part whose underscores vLLM rewrites.
_OPTION_NAME = re.compile(r"(?<=--)[^.]*")
_HUMAN_INT = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgGtT])$")


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
    optimization_level: int | None = None
    # The --compilation-config that argparse keeps (the last one), as a JSON object.
    compilation: Mapping[str, Any] = field(default_factory=dict)
    gpu_memory_utilization: float | None = None
    config_file: str | None = None


def _json_end(text: str, start: int) -> int | None:
    """Index just past the balanced JSON object or array starting at `start`, else None."""
    depth, quoted, i = 0, False, start
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1  # the escaped character
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def split_serve_args(text: str | None) -> tuple[str, ...]:
    """`--serve-args "…"` split as a shell would (no shell runs it), except that a JSON object or
    array written unquoted (`--compilation-config {"cudagraph_mode":"FULL_DECODE_ONLY"}`) is kept
    as written, where a shell would strip its quotes."""
    if not text:
        return ()
    kept: list[str] = []
    parts: list[str] = []
    i = last = 0
    while i < len(text):
        if text[i] in "{[" and (i == 0 or text[i - 1].isspace() or text[i - 1] == "="):
            end = _json_end(text, i)
            if end is not None and (end == len(text) or text[end].isspace()):
                parts.append(text[last:i] + f" AUTOTUNEJSON{len(kept)}X ")
                kept.append(text[i:end])
                i = last = end
                continue
        i += 1
    parts.append(text[last:])
    joined = "".join(parts)
    try:
        words = shlex.split(joined)
    except ValueError as exc:
        raise AutotuneError(f"--serve-args cannot be split: {exc} (check the quotes)") from None
    out: list[str] = []
    for word in words:
        for k, raw in enumerate(kept):
            word = word.replace(f"AUTOTUNEJSON{k}X", raw)
        out.append(word)
    # An inline value (`--x={...}`) was cut from its option by the spaces around the stand-in.
    merged: list[str] = []
    for word in out:
        if merged and merged[-1].endswith("=") and merged[-1].startswith("-"):
            merged[-1] += word
        else:
            merged.append(word)
    return tuple(merged)


def _config_args(path_text: str) -> list[str]:
    """A `--config` YAML file as the option list vLLM inserts for it (`load_config_file`)."""
    import yaml

    path = Path(path_text).expanduser()
    where = f"--serve-args --config {path_text}"
    if path.suffix not in (".yaml", ".yml"):
        raise AutotuneError(f"{where}: vLLM reads only a .yaml or .yml config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AutotuneError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "bad YAML"
        raise AutotuneError(f"{where}: not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise AutotuneError(f"{where}: must hold a mapping of option: value")
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


def _dotted_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        match = _HUMAN_INT.match(text)
        if match is None:
            return text
        scale = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[match.group(2).lower()]
        return int(float(match.group(1)) * scale)


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def vllm_argv(argv: Sequence[str]) -> list[str]:
    """The argument list after vLLM's rewriting (see the module docstring)."""
    args = list(argv)
    for arg in args:
        if arg.startswith("--config="):
            raise AutotuneError(
                f"--serve-args {arg}: vLLM 0.23 reads a config file only as --config FILE "
                "(with a space); this spelling would be ignored"
            )
    if "--config" in args:
        if args.count("--config") > 1:
            raise AutotuneError("--serve-args: vLLM reads one --config file, not several")
        index = args.index("--config")
        if index + 1 >= len(args):
            raise AutotuneError("--serve-args: --config needs a YAML file")
        # Read before the command line, so the command line wins (cli > config > defaults).
        args = _config_args(args[index + 1]) + args[:index] + args[index + 2 :]
    processed: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            key = _OPTION_NAME.sub(lambda m: m.group(0).replace("_", "-"), key, count=1)
            processed.append(f"{key}{eq}{value}")
        elif arg.startswith("-O") and arg != "-O":
            processed += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            processed.append("--optimization-level")
        else:
            processed.append(arg)
    dotted: dict[str, dict[str, Any]] = {}
    skip: set[int] = set()
    kept: list[str] = []
    for i, arg in enumerate(processed):
        if i in skip:
            continue
        name = arg.split("=", 1)[0]
        if not (arg.startswith("-") and "." in name):
            kept.append(arg)
            continue
        if "=" in arg:
            value_text = arg.split("=", 1)[1]
        elif i + 1 < len(processed):
            value_text = processed[i + 1]
            skip.add(i + 1)
        else:
            raise AutotuneError(f"--serve-args: {arg} needs a value")
        if name.endswith("+"):
            name = name[:-1]
            nested: Any = value_text.split(",")
        else:
            nested = _dotted_value(value_text)
        key, *path = name.split(".")
        for part in reversed(path):
            nested = {part: nested}
        _merge(dotted.setdefault(key, {}), nested)
    for key, merged in dotted.items():
        kept += [key, json.dumps(merged)]
    return kept


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


def _json_object(flag: str, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AutotuneError(f"--serve-args: {flag} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AutotuneError(f"--serve-args: {flag} must be a JSON object, got {text!r}")
    return data


def read_serve_args(argv: Sequence[str]) -> ServeArgs:
    """The deployment facts in `--serve-args`; one line for options autotune sets itself."""
    original = tuple(argv)
    config_file = None
    if "--config" in original:
        index = original.index("--config")
        config_file = original[index + 1] if index + 1 < len(original) else None
    args = vllm_argv(original)
    fields: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, inline = arg, None
        if arg.startswith("-") and "=" in arg:
            name, inline = arg.split("=", 1)
        name = ALIASES.get(name, name)
        if name in OWNED:
            raise AutotuneError(f"--serve-args must not set {name}; use {OWNED[name]}")
        takes_value = True
        if name in _INT_FIELDS:
            fields[_INT_FIELDS[name]] = _int(name, _value_of(args, i, inline))
        elif name == "--served-model-name":
            fields["served_model_name"] = _value_of(args, i, inline)
        elif name == "--optimization-level":
            level = _value_of(args, i, inline)
            if level not in ("0", "1", "2", "3"):
                raise AutotuneError(
                    f"--serve-args: -O/--optimization-level takes 0, 1, 2 or 3, got {level!r}"
                )
            fields["optimization_level"] = int(level)
        elif name == "--compilation-config":
            fields["compilation"] = _json_object(name, _value_of(args, i, inline))
        elif name == "--gpu-memory-utilization":
            text = _value_of(args, i, inline)
            try:
                fields["gpu_memory_utilization"] = float(text)
            except ValueError:
                raise AutotuneError(
                    f"--serve-args: --gpu-memory-utilization needs a number, got {text!r}"
                ) from None
        elif name in _BOOL_FIELDS:
            key, value = _BOOL_FIELDS[name]
            if inline is not None:
                value = value == (inline.strip().lower() not in ("false", "0", "no"))
            fields[key] = value
            takes_value = False
        else:
            takes_value = False
        i += 2 if takes_value and inline is None else 1
    return ServeArgs(argv=original, config_file=config_file, **fields)
