"""Helpers of the HTML report tests: open a report in Chromium, write a tiny real-format profile."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

# Installed before any page script runs (CDP), so an injected alert() would be recorded, not shown.
SENTINEL_JS = "window.__alerted = 0; window.alert = function () { window.__alerted += 1; };"

# Kernel names that would run script if any writer path forgot to escape.
EVIL_NAMES = (
    "<script>alert(1)</script>",
    "</script><script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 2">',
)


def find_binary(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


@dataclass
class Loaded:
    """A report opened in the browser, with what the console said while loading it."""

    driver: Any
    console: list[dict[str, Any]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.console if e.get("level") == "SEVERE"]

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)


def open_report(driver: Any, path: Path) -> Loaded:
    """Load file://path and return it with the console entries of this load."""
    from selenium.common.exceptions import NoAlertPresentException

    driver.get_log("browser")  # drop anything left from an earlier page
    driver.get(path.resolve().as_uri())
    try:
        alert = driver.switch_to.alert
        text = alert.text
        alert.dismiss()
        pytest.fail(f"the report opened an alert: {text!r}")
    except NoAlertPresentException:
        pass
    return Loaded(driver=driver, console=list(driver.get_log("browser")))


# --- a tiny trace_view profile in the real on-disk layout ---------------------------------------

# One dense decoder layer (docs/analysis.md), kernel names as the profiler writes aclnn kernels.
# (name, task type, duration µs, prefetch site issued here or "")
DENSE_LAYER: tuple[tuple[str, str, float, str], ...] = (
    ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AI_VECTOR_CORE", 6.0, ""),
    ("hcom_allGather__0_0_1", "HCCL", 10.0, ""),
    ("aclnnAscendQuantV2_AscendQuantV2_AscendQuantV2", "AI_VECTOR_CORE", 4.0, "attn.qkv"),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "AI_CORE", 30.0, ""),
    ("aclnnRmsNorm_RmsNorm_RmsNorm", "AI_VECTOR_CORE", 3.0, ""),
    ("aclnnApplyRotaryPosEmb_ApplyRotaryPosEmb_ApplyRotaryPosEmb", "AI_VECTOR_CORE", 5.0, ""),
    (
        "aclnnFusedInferAttentionScore_FusedInferAttentionScore_FusedInferAttentionScore",
        "MIX_AIC",
        40.0,
        "",
    ),
    ("aclnnAscendQuantV2_AscendQuantV2_AscendQuantV2", "AI_VECTOR_CORE", 4.0, "attn.o"),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "AI_CORE", 20.0, ""),
    ("hcom_reduceScatter__0_0_1", "HCCL", 10.0, ""),
    ("aclnnAddRmsNorm_AddRmsNorm_AddRmsNorm", "AI_VECTOR_CORE", 6.0, ""),
    ("hcom_allGather__1_0_1", "HCCL", 10.0, ""),
    ("aclnnAscendQuantV2_AscendQuantV2_AscendQuantV2", "AI_VECTOR_CORE", 4.0, ""),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "AI_CORE", 50.0, ""),
    ("aclnnSwiGlu_SwiGlu_SwiGlu", "AI_VECTOR_CORE", 8.0, "mlp.down"),
    ("aclnnAscendQuantV2_AscendQuantV2_AscendQuantV2", "AI_VECTOR_CORE", 4.0, "attn.o"),
    ("aclnnQuantMatmulV4_QuantBatchMatmulV3_QuantBatchMatmulV3", "AI_CORE", 45.0, ""),
    ("hcom_reduceScatter__1_0_1", "HCCL", 10.0, ""),
)
# CMO duration per site (µs); attn.o at 6 µs behind a 4 µs quant is late on purpose.
CMO_US = {"attn.qkv": 3.0, "attn.o": 6.0, "mlp.down": 7.0}
COMPUTE, PREFETCH, HW_PID, PY_PID = 2, 5, 1000, 2000


def _ts(ns: int) -> str:
    """trace_view timestamps are µs strings with exactly three decimals."""
    return f"{ns // 1000}.{ns % 1000:03d}"


def write_trace_view_profile(
    root: Path,
    *,
    layers: int = 3,
    steps: int = 2,
    extra_kernels: tuple[str, ...] = (),
    rank: int = 0,
) -> Path:
    """Write root/<host>_<pid>_<time>_ascend_pt/ with ASCEND_PROFILER_OUTPUT/trace_view.json.

    Each layer runs `extra_kernels` as vector kernels between rope and attention, so they land in
    whichever layer the report shows.
    """
    pt = root / f"node0_{1234 + rank}_20260414093000000_ascend_pt"
    out = pt / "ASCEND_PROFILER_OUTPUT"
    out.mkdir(parents=True)
    ev: list[dict[str, Any]] = [
        {
            "name": "process_name",
            "ph": "M",
            "pid": HW_PID,
            "tid": 0,
            "args": {"name": "Ascend Hardware"},
        },
        {"name": "process_labels", "ph": "M", "pid": HW_PID, "tid": 0, "args": {"labels": "NPU"}},
        {"name": "process_name", "ph": "M", "pid": PY_PID, "tid": 0, "args": {"name": "Python"}},
    ]
    for s in (COMPUTE, PREFETCH):
        ev.append(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": HW_PID,
                "tid": s,
                "args": {"name": f"Stream {s}"},
            }
        )
    task_id = 0

    def task(stream: int, name: str, ttype: str, start: int, dur: int) -> None:
        nonlocal task_id
        task_id += 1
        ev.append(
            {
                "name": name,
                "pid": HW_PID,
                "tid": stream,
                "ts": _ts(start),
                "dur": dur / 1000,
                "ph": "X",
                "args": {
                    "Model Id": 4294967295,
                    "Task Type": ttype,
                    "Stream Id": stream,
                    "Task Id": task_id,
                    "Batch Id": 0,
                    "Subtask Id": 4294967295,
                    "connection_id": -1,
                },
            }
        )

    t = 1_776_130_000_000_000_000
    ops = list(DENSE_LAYER)
    for k, name in enumerate(extra_kernels):
        ops.insert(6 + k, (name, "AI_VECTOR_CORE", 2.0, ""))
    for step in range(steps):
        step_start = t
        for _layer in range(layers):
            for name, ttype, dur_us, site in ops:
                dur = int(dur_us * 1000)
                if not site:
                    task(COMPUTE, name, ttype, t, dur)
                    t += dur + 500
                    continue
                # Issue (record), the CMO beside the window, then the join on the compute stream.
                task(COMPUTE, "EVENT_RECORD_SQE", "EVENT_RECORD_SQE", t, 200)
                t += 300
                cmo_start = t + 100
                cmo_end = cmo_start + int(CMO_US[site] * 1000)
                task(PREFETCH, "EVENT_WAIT_SQE", "EVENT_WAIT_SQE", t, 100)
                task(PREFETCH, "CMO_TASK", "CMO_TASK", cmo_start, cmo_end - cmo_start)
                task(PREFETCH, "EVENT_RECORD_SQE", "EVENT_RECORD_SQE", cmo_end, 50)
                task(COMPUTE, name, ttype, t, dur)
                t += dur
                wait_end = max(t + 200, cmo_end + 100)
                task(COMPUTE, "EVENT_WAIT_SQE", "EVENT_WAIT_SQE", t, wait_end - t)
                t = wait_end + 300
        ev.append(
            {
                "name": f"ProfilerStep#{step + 1}",
                "pid": PY_PID,
                "tid": 1,
                "ts": _ts(step_start),
                "dur": (t - step_start) / 1000,
                "ph": "X",
                "args": {},
            }
        )
        t += 50_000
    (out / "trace_view.json").write_text(json.dumps(ev), encoding="utf-8")
    info = {"config": {"common_config": {"activities": ["CPU", "NPU"]}}, "rank_id": rank}
    (pt / f"profiler_info_{rank}.json").write_text(json.dumps(info), encoding="utf-8")
    return pt
