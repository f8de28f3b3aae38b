"""autotune's own time per real trial, beyond what vLLM itself takes (start-up, bench, shutdown).

Run: python bench/launcher_bench.py [--trials N] [--keep DIR]. Needs the CPU vLLM environment
(AUTOTUNE_VLLM_BIN, AUTOTUNE_TINY_MODEL; see tests/vllm_cpu/README.md). Target: ≤ 2 s per trial.

A timing wrapper named `vllm`, first on PATH, runs the real `vllm` as its child and records, on
the same monotonic clock, when each vllm process starts, when a server first answers /health,
when it is asked to stop and when each process ends (for a server: the last process of its group).
vLLM's time in a trial is start → healthy, stop request → gone, and every `vllm bench serve`
process; autotune's overhead is the trial's wall time (trials.csv `duration_s`) minus that.
Anything else (health-poll latency, HTTP profile calls, writing files) counts as autotune's.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_S = 2.0
WIDTHS = (5, 7, 7, 8, 13, 6, 9)
# Eager, as autotune adds no mode of its own, to keep start-up short on CPU.
SERVE_ARGS = (
    "--load-format dummy --gpu-memory-utilization 0.1 --max-model-len 512 --dtype bfloat16 "
    "--enforce-eager"
)

# The wrapper runs under the vLLM environment's interpreter (its shebang is the real vllm's), so
# autotune still finds that environment's versions through it. It never forwards a signal:
# autotune signals the whole process group, which holds both the wrapper and vLLM.
WRAPPER = """#!{python}
import json, os, signal, subprocess, sys, threading, time, urllib.request

REAL, LOG = {real!r}, {log!r}
argv = sys.argv[1:]
kind = "serve" if argv[:1] == ["serve"] else "bench" if argv[:2] == ["bench", "serve"] else "other"
rec = {{"kind": kind, "start": time.monotonic(), "argv": argv}}


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_requested(signum, frame):
    rec.setdefault("stop", time.monotonic())


def _option(name, default):
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _watch_health(child):
    url = "http://%s:%s/health" % (_option("--host", "127.0.0.1"), _option("--port", "8000"))
    while child.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    rec["healthy"] = time.monotonic()
                    return
        except OSError:
            pass
        time.sleep(0.02)


signal.signal(signal.SIGTERM, _stop_requested)
signal.signal(signal.SIGINT, _stop_requested)
child = subprocess.Popen([REAL, *argv], preexec_fn=_die_with_parent)
if kind == "serve":
    threading.Thread(target=_watch_health, args=(child,), daemon=True).start()
code = child.wait()
if kind == "serve":
    # vLLM's shutdown ends when the last of its processes (engine, workers) is gone.
    group, mine = os.getpgrp(), os.getpid()
    while time.monotonic() - rec["start"] < 36000:
        others = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == group and int(entry) != mine and fields[0] != "Z":
                others.append(entry)
        if not others:
            break
        time.sleep(0.02)
rec["end"] = time.monotonic()
with open(LOG, "a") as handle:
    handle.write(json.dumps(rec) + "\\n")
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass
class Trial:
    """One served trial: its server's spans and the bench processes run against it."""

    number: int
    wall_s: float
    to_healthy_s: float = 0.0
    shutdown_s: float = 0.0
    bench_s: list[float] = field(default_factory=list)
    # Where autotune's time goes: healthy -> first bench, gaps between benches (profile calls
    # included), last bench -> stop request, and the trial's time outside the server's life.
    poll_s: float = 0.0
    between_s: float = 0.0
    to_stop_s: float = 0.0
    outside_s: float = 0.0

    @property
    def vllm_s(self) -> float:
        return self.to_healthy_s + self.shutdown_s + sum(self.bench_s)

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.vllm_s


def write_wrapper(bin_dir: Path, real_vllm: Path, log: Path) -> None:
    """A `vllm` in bin_dir that times the real one."""
    python = real_vllm.read_text().splitlines()[0].removeprefix("#!").strip()
    wrapper = bin_dir / "vllm"
    wrapper.write_text(WRAPPER.format(python=python, real=str(real_vllm), log=str(log)))
    wrapper.chmod(0o755)


def attribute(records: list[dict[str, Any]], rows: list[dict[str, str]]) -> list[Trial]:
    """Pair each server (in start order) with the trials.csv row that ran it, benches by time."""
    servers = sorted((r for r in records if r["kind"] == "serve"), key=lambda r: float(r["start"]))
    benches = [r for r in records if r["kind"] == "bench"]
    ran = [row for row in rows if row["state"] == "complete"]
    if len(ran) != len(servers):
        raise SystemExit(f"{len(servers)} servers started for {len(ran)} complete trials")
    trials = []
    for server, row in zip(servers, ran, strict=True):
        start, end = float(server["start"]), float(server["end"])
        if "healthy" not in server or "stop" not in server:
            raise SystemExit(
                f"trial {row['trial']}: the server never answered /health or was killed"
            )
        trial = Trial(
            number=int(row["trial"]),
            wall_s=float(row["duration_s"]),
            to_healthy_s=float(server["healthy"]) - start,
            shutdown_s=end - float(server["stop"]),
        )
        spans = sorted(
            (float(b["start"]), float(b["end"]))
            for b in benches
            if start <= float(b["start"]) <= end
        )
        trial.bench_s = [e - s for s, e in spans]
        if spans:
            trial.poll_s = spans[0][0] - float(server["healthy"])
            trial.between_s = sum(b[0] - a[1] for a, b in itertools.pairwise(spans))
            trial.to_stop_s = float(server["stop"]) - spans[-1][1]
        trial.outside_s = trial.wall_s - (end - start)
        trials.append(trial)
    return trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2, help="autotune --trials (at least 2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--keep", type=Path, help="write the run directory here instead of a temp dir"
    )
    args = parser.parse_args()

    bin_dir = os.environ.get("AUTOTUNE_VLLM_BIN", "")
    model = os.environ.get("AUTOTUNE_TINY_MODEL", "")
    if not (Path(bin_dir) / "vllm").is_file() or not (Path(model) / "config.json").is_file():
        print(
            "error: set AUTOTUNE_VLLM_BIN and AUTOTUNE_TINY_MODEL (build them with "
            "`bash .ci/vllm_cpu_env.sh`; see tests/vllm_cpu/README.md)",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="launcher-bench-") as tmp:
        work = Path(tmp)
        wrap_bin = work / "bin"
        wrap_bin.mkdir()
        log = work / "vllm-times.jsonl"
        write_wrapper(wrap_bin, Path(bin_dir) / "vllm", log)
        out = args.keep or work / "run"
        if out.exists():
            shutil.rmtree(out)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env["PATH"] = os.pathsep.join([str(wrap_bin), bin_dir, env.get("PATH", "")])
        cmd = [
            sys.executable, "-m", "autotune", "run", "--backend", "vllm-ascend",
            "--model", model, "--max-num-seqs", "4", "--tp", "1", "--no-flashcomm1",
            "--trials", str(args.trials), "--repeats", str(args.repeats),
            "--input-len", "32", "--output-len", "32", "--num-prompts", "16",
            "--serve-args", SERVE_ARGS, "--out", str(out), "--json",
            # vLLM's CPU build is 0.27.1, not the 0.23 vllm-ascend 0.23 is tested with.
            "--allow-any-vllm",
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        run_wall = time.monotonic() - started
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"error: autotune run exited {done.returncode}", file=sys.stderr)
            return 1
        records = [json.loads(line) for line in log.read_text().splitlines()]
        if args.keep:
            shutil.copy(log, out / "vllm-times.jsonl")
        with (out / "trials.csv").open() as handle:
            rows = list(csv.DictReader(handle))
    trials = attribute(records, rows)

    print(
        f"autotune overhead per trial on CPU vLLM (tiny Qwen3, --trials {args.trials}, "
        f"--repeats {args.repeats}); seconds, all from one run"
    )
    head = ("trial", "wall", "vllm", "healthy", "bench (n)", "stop", "autotune")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, WIDTHS, strict=True)))
    for t in trials:
        benches = f"{sum(t.bench_s):.2f} ({len(t.bench_s)})"
        cells = (str(t.number), *(f"{v:.2f}" for v in (t.wall_s, t.vllm_s, t.to_healthy_s)))
        cells += (benches, f"{t.shutdown_s:.2f}", f"{t.overhead_s:.2f}")
        print(" ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True)))
    print("autotune's time by phase (healthy->bench, between benches, ->stop, outside server):")
    for t in trials:
        print(
            f"{t.number:>5} {t.poll_s:.2f} + {t.between_s:.2f} + {t.to_stop_s:.2f} "
            f"+ {t.outside_s:.2f}"
        )
    overheads = [t.overhead_s for t in trials]
    worst = max(overheads)
    others = [r for r in records if r["kind"] == "other"]
    other_s = sum(float(r["end"]) - float(r["start"]) for r in others)
    in_trials = sum(t.wall_s for t in trials)
    verdict = "met" if worst <= TARGET_S else "MISSED"
    print(
        f"autotune's own time per trial: median {statistics.median(overheads):.2f} s, "
        f"max {worst:.2f} s (target <= {TARGET_S:.0f} s: {verdict})"
    )
    print(
        f"whole run {run_wall:.1f} s: {in_trials:.1f} s in trials, {run_wall - in_trials:.1f} s "
        f"outside them (start-up, checks, outputs), of which {other_s:.1f} s in {len(others)} "
        "other vllm call(s)"
    )
    return 0 if worst <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
