"""Seconds, not minutes, to the first problem: what the first trial would find after a model load,
checked before it in the serving interpreter and on the host.

Errors are what would make trials fail (vllm serve refusing its arguments, a pinned device that
is missing or full); warnings are what would only leave them unprofiled (no torch_npu, no CANN
`msprof`, msmonitor's daemon), and become errors with --require-profiles. A host without
`npu-smi` is said once to be no NPU host (vLLM's CPU build, a test machine).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune import target
from autotune.workloads import npu
from autotune.workloads.collect import CANN_HINT
from autotune.workloads.deployment import MSMONITOR_ENV, TORCH_COMPILE_DISABLE_ENV
from autotune.workloads.process import run_captured
from autotune.workloads.vllm_ascend import PROF_DIR, VllmAscendBackend

# Importing vLLM's CLI on a busy host can take a while.
PROBE_TIMEOUT_S = 300.0
SMI_TIMEOUT_S = 30.0
# vLLM's default --gpu-memory-utilization (its cache config).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEVICES_ENV = "ASCEND_RT_VISIBLE_DEVICES"

# Runs in the serving interpreter: does torch_npu import, and does vLLM's own `vllm serve` parser
# (the one `vllm` builds in vllm/entrypoints/cli/main.py) take the trial's arguments? Prints one
# JSON line last: what vLLM read from them.
PROBE = r"""
import contextlib, io, json, sys
request = json.loads(sys.stdin.read())
out = {}
try:
    import torch_npu
    out["torch_npu"] = str(getattr(torch_npu, "__version__", ""))
except BaseException as exc:
    out["torch_npu_error"] = f"{type(exc).__name__}: {exc}"
try:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except BaseException as exc:
    out["parser_error"] = f"{type(exc).__name__}: {exc}"
else:
    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = parser.parse_args(["serve", *request["argv"]])
            validate = getattr(command, "validate", None)
            if validate is not None:
                validate(args)
    except SystemExit:
        lines = [line for line in said.getvalue().splitlines() if "error:" in line]
        out["refused"] = lines[-1] if lines else said.getvalue().strip()[-300:]
    except BaseException as exc:
        out["refused"] = f"{type(exc).__name__}: {exc}"
    else:
        def name(value):
            return None if value is None else getattr(value, "name", value)
        cc = getattr(args, "compilation_config", None)
        get = cc.get if isinstance(cc, dict) else (lambda key: getattr(cc, key, None))
        level = getattr(args, "optimization_level", None)
        out["parsed"] = {
            "tensor_parallel_size": getattr(args, "tensor_parallel_size", None),
            "data_parallel_size": getattr(args, "data_parallel_size", None),
            "enable_expert_parallel": bool(getattr(args, "enable_expert_parallel", False)),
            "enforce_eager": bool(getattr(args, "enforce_eager", False)),
            "max_num_batched_tokens": getattr(args, "max_num_batched_tokens", None),
            "max_num_seqs": getattr(args, "max_num_seqs", None),
            "optimization_level": None if level is None else int(level),
            "mode": name(get("mode")),
            "cudagraph_mode": name(get("cudagraph_mode")),
        }
print()
print(json.dumps(out, default=str))
"""


@dataclass
class Preflight:
    """What the checks found: errors, warnings (unprofiled trials) and notes."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def preflight(backend: VllmAscendBackend) -> Preflight:
    """Check, in seconds, what the first trial would otherwise find minutes in.

    `backend.check()` (versions, model, burst length) runs first and raises on its own.
    """
    backend.check()
    report = Preflight()
    env = backend.serve_env()
    _probe(backend, env, report)
    if shutil.which("msprof", path=env.get("PATH")) is None:
        report.warnings.append(
            "CANN's msprof is not on the serving environment's PATH: torch_npu cannot parse "
            f"the profiles, so trials would run unprofiled; {CANN_HINT}"
        )
    daemon = env.get(MSMONITOR_ENV, "0").strip()
    if daemon not in ("", "0"):
        report.warnings.append(
            f"{MSMONITOR_ENV}={daemon} in the server's environment: vllm-ascend's profiler "
            "refuses to start beside msmonitor's daemon, so trials would run unprofiled; unset it"
        )
    _devices(backend, env, report)
    if backend.launch.require_profiles:
        report.errors += [f"{w} (--require-profiles)" for w in report.warnings]
        report.warnings = []
    return report


def _probe(backend: VllmAscendBackend, env: Mapping[str, str], report: Preflight) -> None:
    assert backend.env is not None
    python = backend.env.python
    config = target.disabled_config()
    argv = backend.serve_argv(config, 8000, f"/tmp/autotune-check/{PROF_DIR}")[2:]
    code, out, err = run_captured(
        [str(python), "-c", PROBE],
        env=env,
        stdin=json.dumps({"argv": argv}),
        timeout_s=PROBE_TIMEOUT_S,
    )
    lines = out.strip().splitlines()
    try:
        found: Any = json.loads(lines[-1]) if code == 0 and lines else None
    except json.JSONDecodeError:
        found = None
    if not isinstance(found, dict):
        said = " ".join(err.strip().splitlines()[-2:]) or "no output"
        why = f"did not finish within {PROBE_TIMEOUT_S:g} s" if code is None else said
        report.warnings.append(f"could not check the serving environment with {python}: {why}")
        return
    if "torch_npu_error" in found:
        report.warnings.append(
            f"torch_npu does not import in {python} ({found['torch_npu_error']}): the profiler "
            "and its parser need it, so trials would run unprofiled"
        )
    if "parser_error" in found:
        report.warnings.append(
            f"could not load vLLM's own argument parser in {python} to check --serve-args "
            f"({found['parser_error']})"
        )
    elif "refused" in found:
        report.errors.append(f"vllm serve would refuse these arguments: {found['refused']}")
    elif isinstance(found.get("parsed"), dict):
        report.errors += _disagreements(backend, env, found["parsed"])


def _disagreements(
    backend: VllmAscendBackend, env: Mapping[str, str], parsed: Mapping[str, Any]
) -> list[str]:
    """Where vLLM's own parser reads the trial's arguments otherwise than autotune did."""
    w, serve, launch = backend.workload, backend.serve, backend.launch
    mnbt = launch.max_num_batched_tokens or serve.max_num_batched_tokens
    theirs = target.resolve_graph_mode(
        enforce_eager=bool(parsed.get("enforce_eager")),
        optimization_level=parsed.get("optimization_level"),
        compilation={k: parsed.get(k) for k in ("mode", "cudagraph_mode") if parsed.get(k)},
        ascend_compilation={"enable_npugraph_ex": w.npugraph_ex, "fuse_norm_quant": True},
        torch_compile_disabled=env.get(TORCH_COMPILE_DISABLE_ENV) == "1",
    )
    pairs = [
        ("tensor-parallel size", parsed.get("tensor_parallel_size"), w.tp),
        ("data-parallel size", parsed.get("data_parallel_size") or 1, serve.dp or 1),
        ("expert parallelism", bool(parsed.get("enable_expert_parallel")), w.ep > 1),
        ("max-num-seqs", parsed.get("max_num_seqs"), w.max_num_seqs),
        ("max-num-batched-tokens", parsed.get("max_num_batched_tokens"), mnbt),
        ("graph mode", theirs.text(), w.graph.text()),
    ]
    return [
        f"--serve-args: vLLM reads {what} {vllm!r} where autotune read {ours!r}; spell the "
        "option out in full (vLLM also takes abbreviations)"
        for what, vllm, ours in pairs
        if vllm != ours
    ]


def _devices(backend: VllmAscendBackend, env: Mapping[str, str], report: Preflight) -> None:
    smi = shutil.which("npu-smi", path=env.get("PATH"))
    if smi is None:
        report.notes.append(
            "npu-smi is not on PATH: not an NPU host, so devices and their memory are not checked"
        )
        return
    code, out, err = run_captured([smi, "info"], env=env, timeout_s=SMI_TIMEOUT_S)
    if code != 0:
        said = " ".join((err or out).strip().splitlines()[-1:]) or "no output"
        how = f"did not answer within {SMI_TIMEOUT_S:g} s" if code is None else f"exit {code}"
        report.errors.append(f"npu-smi info failed ({how}): {said}")
        return
    found = npu.devices(out)
    if not found:
        report.errors.append("npu-smi info shows no NPU device")
        return
    w = backend.workload
    dp = backend.serve.dp or 1
    need = w.tp * dp
    pinned_text = env.get(DEVICES_ENV)
    if pinned_text is not None:
        try:
            pinned = [int(part) for part in pinned_text.split(",") if part.strip()]
        except ValueError:
            report.errors.append(
                f"{DEVICES_ENV}={pinned_text} is not a comma-separated list of device numbers"
            )
            return
        where = f"{DEVICES_ENV}={pinned_text}"
    else:
        pinned = list(range(need))
        where = f"devices 0-{need - 1} (no {DEVICES_ENV})"
    missing = [d for d in pinned if not 0 <= d < len(found)]
    if missing:
        report.errors.append(
            f"device {', '.join(map(str, missing))} of {where} is not on this host: npu-smi "
            f"shows {len(found)} device(s), 0-{len(found) - 1}"
        )
        return
    if len(pinned) < need:
        report.errors.append(f"TP{w.tp} x DP{dp} needs {need} devices; {where} gives {len(pinned)}")
        return
    share = backend.serve.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    for index in pinned[:need]:
        device = found[index]
        if device.total_mb - device.used_mb < share * device.total_mb:
            report.errors.append(
                f"device {index} has {device.used_mb} of {device.total_mb} MB in use; vllm serve "
                f"needs {share:g} of it free (--gpu-memory-utilization): free it or pin other "
                f"devices with --serve-env {DEVICES_ENV}=…"
            )
