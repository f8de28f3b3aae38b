"""Throughput and peak-RSS benchmark of the trace_view.json reader against ijson and json.load.

Generates a realistic Level1 trace_view.json (Python layer, CANN layer and Ascend Hardware tasks
of a 64-layer dense W8A8 decode with weight prefetch), then times each reader on that same
file, each in a fresh subprocess.
Reported per reader: wall time (best of `--repeat` runs, interleaved), MB/s, speed relative to
`ijson.items(f, "item")`, and peak RSS: the VmHWM of the process plus that of every worker process
it started (sampled from /proc while it runs), an upper bound of the memory of the whole read, as
pages shared between the parent and its forked workers count once per process. `autotune` is
read+classify+analyze and `autotune-read` the reader alone, both with the default number of reader
processes; `-w1` marks the same with one process (AUTOTUNE_READ_WORKERS=1).
Usage: `python bench/parse_bench.py [--size-mb 320] [--repeat 3] [--out DIR] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LAYERS = 64
OS_PID = 23817
HW_PID = (OS_PID << 10) | (14 << 5) | 0
CANN_PID = (OS_PID << 10) | (7 << 5) | 31
COMPUTE, PREFETCH = 2, 7
T0_NS = 1_776_130_000_000_000_000

# One dense layer (docs/analysis.md): (kernel name, op type, task type, duration ns, prefetch site).
LAYER: tuple[tuple[str, str, str, int, str], ...] = (
    ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AddRmsNorm", "AI_VECTOR_CORE", 6_800, ""),
    ("hcom_allGather__512_0_1", "hcom_allGather_", "COMMUNICATION", 14_000, ""),
    (
        "aclnnAscendQuant_AscendQuantV2_AscendQuantV2",
        "AscendQuantV2",
        "AI_VECTOR_CORE",
        3_100,
        "qkv",
    ),
    (
        "aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3",
        "QuantBatchMatmulV3",
        "AI_CORE",
        38_000,
        "",
    ),
    ("aclnnRmsNorm_RmsNorm_RmsNorm", "RmsNorm", "AI_VECTOR_CORE", 4_200, ""),
    ("split_qkv_rmsnorm_rope_kernel", "", "AI_VECTOR_CORE", 5_300, ""),
    (
        "aclnnFusedInferAttentionScoreV3_FusedInferAttentionScore_FusedInferAttentionScore",
        "FusedInferAttentionScore",
        "MIX_AIC",
        61_000,
        "",
    ),
    ("aclnnAscendQuant_AscendQuantV2_AscendQuantV2", "AscendQuantV2", "AI_VECTOR_CORE", 3_000, "o"),
    (
        "aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3",
        "QuantBatchMatmulV3",
        "AI_CORE",
        22_000,
        "",
    ),
    ("hcom_reduceScatter__512_0_1", "hcom_reduceScatter_", "COMMUNICATION", 16_000, ""),
    ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AddRmsNorm", "AI_VECTOR_CORE", 6_700, "gate_up"),
    ("hcom_allGather__512_0_1", "hcom_allGather_", "COMMUNICATION", 14_000, ""),
    ("aclnnAscendQuant_AscendQuantV2_AscendQuantV2", "AscendQuantV2", "AI_VECTOR_CORE", 3_000, ""),
    (
        "aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3",
        "QuantBatchMatmulV3",
        "AI_CORE",
        71_000,
        "",
    ),
    ("aclnnSwiGlu_SwiGlu_SwiGlu", "SwiGlu", "AI_VECTOR_CORE", 9_100, "down"),
    (
        "aclnnAscendQuant_AscendQuantV2_AscendQuantV2",
        "AscendQuantV2",
        "AI_VECTOR_CORE",
        3_000,
        "o2",
    ),
    (
        "aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3",
        "QuantBatchMatmulV3",
        "AI_CORE",
        40_000,
        "",
    ),
    ("hcom_reduceScatter__512_0_1", "hcom_reduceScatter_", "COMMUNICATION", 16_000, ""),
)


def _us(ns: int) -> str:
    return f"{ns // 1000}.{ns % 1000:03d}"


class _Writer:
    """Writes one event per line in the `[\\n{...},\\n{...}\\n]` shape torch_npu produces.

    Framework (Python layer) events go to `fw`, msprof's (CANN, Ascend Hardware) to `f`; they
    are the same file for an interleaved trace."""

    def __init__(self, f: TextIO, fw: TextIO) -> None:
        self.f = f
        self.fw = fw
        self.first = {id(f): True, id(fw): True}
        self.task_id = 0
        self.conn = 1000

    def ev(self, e: dict[str, Any], framework: bool = False) -> None:
        out = self.fw if framework else self.f
        out.write(("" if self.first[id(out)] else ",\n") + json.dumps(e, ensure_ascii=False))
        self.first[id(out)] = False

    def size(self) -> int:
        return self.f.tell() + (self.fw.tell() if self.fw is not self.f else 0)

    def hw(self, name: str, ttype: str, stream: int, ts: int, dur: int, conn: int = -1) -> None:
        self.task_id += 1
        args: dict[str, Any] = {
            "Model Id": 4294967295,
            "Task Type": ttype,
            "Physic Stream Id": stream,
            "Task Id": self.task_id,
            "Batch Id": 0,
            "Subtask Id": 4294967295,
            "connection_id": conn if conn >= 0 else self.task_id,
        }
        self.ev(
            {
                "name": name,
                "pid": HW_PID,
                "tid": stream,
                "ts": _us(ts),
                "dur": dur / 1000,
                "ph": "X",
                "args": args,
            }
        )

    def py(self, name: str, ts: int, dur: int, dims: str = "") -> None:
        args: dict[str, Any] = {"Sequence number": -1, "Fwd thread id": 0}
        if dims:
            args["Input Dims"] = dims
            args["Input type"] = "c10::BFloat16, c10::BFloat16"
        self.ev(
            {
                "ph": "X",
                "name": name,
                "pid": OS_PID,
                "tid": OS_PID,
                "ts": _us(ts),
                "dur": dur / 1000,
                "cat": "cpu_op",
                "args": args,
            },
            framework=True,
        )

    def cann(self, api: str, ts: int, dur: int) -> None:
        self.conn += 1
        self.ev(
            {
                "name": f"AscendCL@{api}",
                "pid": CANN_PID,
                "tid": OS_PID,
                "ts": _us(ts),
                "dur": dur / 1000,
                "ph": "X",
                "args": {
                    "Thread Id": OS_PID,
                    "Mode": "ACL_NODE",
                    "level": "acl",
                    "id": api,
                    "item_id": "0",
                    "connection_id": self.conn,
                },
            }
        )


def generate_trace(path: Path, size_mb: float, layout: str = "interleaved") -> int:
    """Write a trace_view.json of about `size_mb` MB; return the number of decode steps written.

    `interleaved`: every layer's events in time order. `appended`: torch_npu's framework events
    first, then the msprof timeline (CANN and Ascend Hardware), as torch_npu assembles the file."""
    target = int(size_mb * 1_000_000)
    msprof_path = path.with_name(path.name + ".msprof")
    with path.open("w", encoding="utf-8") as f:
        f.write("[\n")
        msprof = msprof_path.open("w", encoding="utf-8") if layout == "appended" else f
        steps = _events(_Writer(msprof, f), target)
        if msprof is not f:
            msprof.close()
            f.write(",\n")
            with msprof_path.open(encoding="utf-8") as src:
                shutil.copyfileobj(src, f, 1 << 20)
            msprof_path.unlink()
        f.write("\n]\n")
    return steps


def _events(w: _Writer, target: int) -> int:
    py_meta = {"ph": "M", "name": "process_name", "pid": OS_PID, "tid": 0}
    w.ev({**py_meta, "args": {"name": "Python"}}, framework=True)
    w.ev({**py_meta, "name": "process_labels", "args": {"labels": "CPU"}}, framework=True)
    w.ev({"name": "process_name", "pid": CANN_PID, "tid": 0, "ph": "M", "args": {"name": "CANN"}})
    step = 0
    t = T0_NS
    while w.size() < target:
        step_start = t
        hw_t = t + 150_000
        for _ in range(LAYERS):
            for name, op, ttype, dur, site in LAYER:
                w.py(f"npu::npu_{op.lower() or 'custom'}", t, 9_000, "[[64, 5120], [5120]]")
                w.ev(
                    {
                        "ph": "X",
                        "name": f"Enqueue@{op or name}",
                        "pid": OS_PID,
                        "tid": OS_PID + 1,
                        "ts": _us(t + 500),
                        "dur": 1.2,
                        "cat": "enqueue",
                        "args": {"correlation_id": w.conn},
                    },
                    framework=True,
                )
                w.cann(f"aclnn{op or 'Custom'}", t + 800, 6_000)
                if site:
                    w.py("vllm::prefetch_preprocess", t + 100, 4_000)
                    w.hw("EVENT_RECORD", "EVENT_RECORD", COMPUTE, hw_t, 20)
                    w.hw("EVENT_WAIT", "EVENT_WAIT", PREFETCH, hw_t + 300, 900)
                    w.hw("CMO", "CMO", PREFETCH, hw_t + 1_300, dur + 1_500)
                    w.hw("EVENT_RECORD", "EVENT_RECORD", PREFETCH, hw_t + dur + 2_900, 20)
                    hw_t += 400
                w.hw(name, ttype, COMPUTE, hw_t, dur)
                hw_t += dur + 200
                if site:
                    w.hw("EVENT_WAIT", "EVENT_WAIT", COMPUTE, hw_t, 2_500)
                    hw_t += 2_700
                t += 12_000
        w.ev(
            {
                "ph": "X",
                "name": f"ProfilerStep#{step}",
                "pid": OS_PID,
                "tid": OS_PID,
                "ts": _us(step_start),
                "dur": (max(t, hw_t) - step_start) / 1000,
                "cat": "cpu_op",
                "args": {"Sequence number": -1, "Fwd thread id": 0},
            },
            framework=True,
        )
        t = max(t, hw_t) + 50_000
        step += 1
    # msprof appends its metadata after torch_npu's events: the reader must not rely on order.
    hw_meta = {"pid": HW_PID, "tid": 0, "ph": "M"}
    w.ev({"name": "process_name", **hw_meta, "args": {"name": "Ascend Hardware"}})
    w.ev({"name": "process_labels", **hw_meta, "args": {"labels": "NPU 0"}})
    return step


_AUTOTUNE = """
from pathlib import Path
import autotune.profile.trace_view as tv
from autotune.profile.classify import classify, load_rules
from autotune.overlap import analyze
T_IMPORTED = time.perf_counter()
prof = tv.read_trace_view(Path(PATH))
classify(prof, load_rules(None))
res = analyze([prof])
print(len(prof.tasks), f"read+classify+analyze: {len(res.prefetches)} prefetches")
"""
_AUTOTUNE_READ = """
from pathlib import Path
import autotune.profile.trace_view as tv
T_IMPORTED = time.perf_counter()
prof = tv.read_trace_view(Path(PATH))
print(len(prof.tasks), "read only")
"""
_READERS = {
    "autotune": _AUTOTUNE,
    "autotune-w1": _AUTOTUNE,
    "autotune-read": _AUTOTUNE_READ,
    "autotune-read-w1": _AUTOTUNE_READ,
    "ijson": """
import ijson
T_IMPORTED = time.perf_counter()
n = 0
with open(PATH, "rb") as f:
    for e in ijson.items(f, "item"):
        n += 1
print(n, "ijson.items " + ijson.backend)
""",
    "json.load": """
import json
T_IMPORTED = time.perf_counter()
with open(PATH, "rb") as f:
    n = len(json.load(f))
print(n, "json.load")
""",
}

_WRAPPER = """
import resource, sys, time
t0 = time.perf_counter()
T_IMPORTED = t0
exec(compile(CODE, "bench", "exec"))
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
except OSError:
    pass
print("BENCH", dt, T_IMPORTED - t0, rss)
"""


@dataclass
class Run:
    seconds: float  # from before the reader's imports to the end
    imports: float  # of which importing its modules
    rss: int  # peak resident set size, bytes: the process's plus its workers'
    procs: int  # processes counted in `rss`
    what: str  # the reader's own output


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (every thread's list)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _measure(reader: str, path: Path) -> Run:
    """Run one reader in a fresh subprocess; sample its workers' peak RSS while it runs."""
    code = _READERS[reader].replace("PATH", repr(str(path)))
    env = dict(os.environ)
    if reader.endswith("-w1"):
        env["AUTOTUNE_READ_WORKERS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER.replace("CODE", repr(code))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # A worker's VmHWM only grows, and workers live until the read is merged, so the last sample
    # of each is its peak (give or take the last few milliseconds of its work).
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        todo = _children(proc.pid)
        while todo:
            pid = todo.pop()
            hwm = _vm_hwm(pid)
            if hwm:
                peaks[pid] = max(peaks.get(pid, 0), hwm)
            todo.extend(_children(pid))
        time.sleep(0.005)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{reader} failed:\n{err}")
    lines = out.strip().splitlines()
    _, dt, imp, rss = lines[-1].split()
    return Run(
        float(dt), float(imp), int(rss) + sum(peaks.values()), 1 + len(peaks), " ".join(lines[:-1])
    )


def main(argv: list[str] | None = None) -> int:
    import autotune.profile.trace_view as tv

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=float, default=320.0, help="size of the generated trace")
    ap.add_argument("--out", type=Path, default=None, help="directory for the trace (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trace")
    ap.add_argument("--trace", type=Path, default=None, help="use this trace instead of generating")
    ap.add_argument(
        "--layout",
        choices=("interleaved", "appended"),
        default="interleaved",
        help="event order of the generated trace (appended: framework events, then msprof's)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs per reader; the best is reported")
    ap.add_argument("--skip-json-load", action="store_true", help="do not run json.load")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="autotune-bench-"))
    if args.trace is not None:
        path = args.trace
    else:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "trace_view.json"
        t0 = time.perf_counter()
        steps = generate_trace(path, args.size_mb, args.layout)
        print(
            f"generated {path} ({path.stat().st_size / 1e6:.0f} MB, {steps} steps x {LAYERS} "
            f"layers, {args.layout}) in {time.perf_counter() - t0:.1f}s"
        )
    size = path.stat().st_size
    readers = ["autotune", "autotune-w1", "autotune-read", "autotune-read-w1", "ijson"] + (
        [] if args.skip_json_load else ["json.load"]
    )
    runs: dict[str, list[Run]] = {r: [] for r in readers}
    # Interleaved rounds, so that load from other jobs on the machine hits every reader alike.
    for _ in range(max(args.repeat, 1)):
        for r in readers:
            runs[r].append(_measure(r, path))
    best = {r: min(rs, key=lambda x: x.seconds) for r, rs in runs.items()}
    base = best["ijson"]
    from autotune.profile import _parallel

    workers = _parallel.workers(None)
    procs = max(1, min(workers, size // tv.PART_MIN_BYTES))
    print(
        f"file {size / 1e6:.0f} MB; {_parallel.cores()} cores, default reader processes: "
        f"{procs}; best of {args.repeat} runs per reader, each in a fresh process"
    )
    print(
        f"{'reader':<17} {'s':>7} {'imports':>8} {'MB/s':>7} {'speed vs ijson':>15} "
        f"{'peak RSS MB':>12} {'RSS/file':>9} {'procs':>6}  what"
    )
    for r, b in best.items():
        print(
            f"{r:<17} {b.seconds:7.2f} {b.imports:8.2f} {size / 1e6 / b.seconds:7.1f} "
            f"{base.seconds / b.seconds:15.2f} {b.rss / 1e6:12.0f} {b.rss / size:9.2f} "
            f"{b.procs:6d}  {b.what}"
        )
    if not args.keep and args.out is None and args.trace is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
