"""Throughput and peak-RSS benchmark of the trace_view.json reader against ijson and json.load.

Generates a realistic Level1 trace_view.json (Python layer, CANN layer and Ascend Hardware tasks
of a 64-layer dense W8A8 decode with weight prefetch), then times each reader on that same
file, each in a fresh subprocess.
Usage: `python bench/parse_bench.py [--size-mb 300] [--out DIR] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
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
    """Writes one event per line in the `[\\n{...},\\n{...}\\n]` shape torch_npu produces."""

    def __init__(self, f: TextIO) -> None:
        self.f = f
        self.first = True
        self.task_id = 0
        self.conn = 1000

    def ev(self, e: dict[str, Any]) -> None:
        self.f.write(("" if self.first else ",\n") + json.dumps(e, ensure_ascii=False))
        self.first = False

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
            }
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


def generate_trace(path: Path, size_mb: float) -> int:
    """Write a trace_view.json of about `size_mb` MB; return the number of decode steps written."""
    target = int(size_mb * 1_000_000)
    with path.open("w", encoding="utf-8") as f:
        f.write("[\n")
        w = _Writer(f)
        w.ev(
            {"ph": "M", "name": "process_name", "pid": OS_PID, "tid": 0, "args": {"name": "Python"}}
        )
        w.ev(
            {
                "ph": "M",
                "name": "process_labels",
                "pid": OS_PID,
                "tid": 0,
                "args": {"labels": "CPU"},
            }
        )
        w.ev(
            {"name": "process_name", "pid": CANN_PID, "tid": 0, "ph": "M", "args": {"name": "CANN"}}
        )
        step = 0
        t = T0_NS
        while f.tell() < target:
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
                        }
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
                }
            )
            t = max(t, hw_t) + 50_000
            step += 1
        # msprof appends its metadata after torch_npu's events: the reader must not rely on order.
        w.ev(
            {
                "name": "process_name",
                "pid": HW_PID,
                "tid": 0,
                "ph": "M",
                "args": {"name": "Ascend Hardware"},
            }
        )
        w.ev(
            {
                "name": "process_labels",
                "pid": HW_PID,
                "tid": 0,
                "ph": "M",
                "args": {"labels": "NPU 0"},
            }
        )
        f.write("\n]\n")
    return step


_READERS = {
    "autotune": """
from pathlib import Path
import autotune.profile.trace_view as tv
from autotune.profile.classify import classify, load_rules
prof = tv.read_trace_view(Path(PATH))
classify(prof, load_rules(None))
n = len(prof.tasks)
try:
    from autotune.overlap import analyze
    analyze([prof]); what = "read+classify+analyze"
except NotImplementedError:
    what = "read+classify"
print(n, what)
""",
    "ijson": """
import ijson
n = 0
with open(PATH, "rb") as f:
    for e in ijson.items(f, "item"):
        n += 1
print(n, "ijson.items yajl2_c" if ijson.backend == "yajl2_c" else ijson.backend)
""",
    "json.load": """
import json
with open(PATH, "rb") as f:
    n = len(json.load(f))
print(n, "json.load")
""",
}


def _measure(reader: str, path: Path) -> tuple[float, int, str]:
    """Run one reader in a fresh subprocess; return (seconds, peak RSS bytes, its output)."""
    code = _READERS[reader].replace("PATH", repr(str(path)))
    wrapper = (
        "import resource, time, sys\n"
        "t0 = time.perf_counter()\n"
        f"exec(compile({code!r}, 'bench', 'exec'))\n"
        "dt = time.perf_counter() - t0\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print('BENCH', dt, rss)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{reader} failed:\n{proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    _, dt, rss = lines[-1].split()
    return float(dt), int(rss), " ".join(lines[:-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=float, default=320.0, help="size of the generated trace")
    ap.add_argument("--out", type=Path, default=None, help="directory for the trace (default: tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trace")
    ap.add_argument("--skip-json-load", action="store_true", help="do not run json.load")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="autotune-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "trace_view.json"
    t0 = time.perf_counter()
    steps = generate_trace(path, args.size_mb)
    size = path.stat().st_size
    print(
        f"generated {path} ({size / 1e6:.0f} MB, {steps} steps x {LAYERS} layers) "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    readers = ["autotune", "ijson"] + ([] if args.skip_json_load else ["json.load"])
    rows: dict[str, tuple[float, int, str]] = {}
    for r in readers:
        rows[r] = _measure(r, path)
    base_dt, base_rss, _ = rows["ijson"]
    print(
        f"{'reader':<10} {'s':>7} {'MB/s':>8} {'peak RSS MB':>12} {'RSS/file':>9} "
        f"{'speed vs ijson':>15} {'RSS vs ijson':>13}  what"
    )
    for r, (dt, rss, what) in rows.items():
        print(
            f"{r:<10} {dt:7.2f} {size / 1e6 / dt:8.1f} {rss / 1e6:12.0f} {rss / size:9.2f} "
            f"{base_dt / dt:15.2f} {rss / base_rss:13.2f}  {what}"
        )
    if not args.keep and args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
