"""Layouts: which serving stack issued the prefetches, and what that says about them.

- **vllm-ascend** — 0.23's `weight_prefetch_config`: one CMO per issue, right before the vector
  op it hides behind, labelled by site (docs/analysis.md); the knob is the site's ratio.
- **sglang** — SGLang on NPU (`hardware_backend/npu/cmo.py`): after the attention all-reduce,
  `prepare_weight_cache` prefetches gate_up_proj then down_proj whole
  (`PREFETCH_MAX_SIZE = 1000000000`), joined by `wait_cmo_stream` after the MLP; no knob.
- **generic** — any `torch_npu.npu_prefetch` call: points named by position; the knob is its
  `max_size` argument.

`auto` decides from what the timeline holds and says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from autotune.points import Knob
from autotune.target import SITES

LAYOUTS: tuple[str, ...] = ("auto", "vllm-ascend", "sglang", "generic")

# SGLang's two CMOs per issue, in the order prepare_weight_cache issues them (qwen3.py's cache).
SGLANG_WEIGHTS: dict[int, str] = {1: "gate_up_proj", 2: "down_proj"}

_KNOBS = {
    "vllm-ascend": None,  # per site, see knob()
    "sglang": Knob(
        "none: prepare_weight_cache prefetches the whole weight (PREFETCH_MAX_SIZE = 1e9 bytes); "
        "only a code change can size it",
        "fixed",
    ),
    "generic": Knob("max_size, the 3rd argument of its torch_npu.npu_prefetch call", "bytes"),
}


def knob(layout: str, site: str, weight: str) -> Knob:
    """The knob that sets a point's prefetch size under `layout`."""
    if layout == "vllm-ascend" and site:
        return Knob(f"weight_prefetch_config ratio of {site} (fires on {weight})", "ratio")
    found = _KNOBS.get(layout)
    return found if found is not None else _KNOBS["generic"]  # type: ignore[return-value]


@dataclass(frozen=True)
class Decision:
    """The layout `auto` chose, and why (one sentence the views print)."""

    layout: str
    reason: str


def detect(general: pd.DataFrame, vllm: pd.DataFrame) -> Decision:
    """Choose the layout from the general matcher's rows (with group_k/group_n/first-op columns)
    and the vllm-ascend matcher's rows of the same prefetches, in the same order."""
    n = len(general)
    if n == 0:
        return Decision(
            "vllm-ascend", "no prefetch in the timeline; the vllm-ascend view lists its windows"
        )
    group_n = general["group_n"].to_numpy(dtype=np.int64)
    attributed = vllm["site"].to_numpy(dtype=object) != ""
    same_window = vllm["window_start_ns"].to_numpy(dtype=np.int64) == general[
        "window_start_ns"
    ].to_numpy(dtype=np.int64)
    if (group_n == 1).all() and attributed.all() and same_window.all():
        sites = [s for s in SITES if s in set(vllm["site"])]
        return Decision(
            "vllm-ascend",
            f"each of the {n} prefetches is issued alone right before a vllm-ascend 0.23 window "
            f"({', '.join(sites)})",
        )
    joined_after = general["join_start_ns"].to_numpy(dtype=np.int64) >= general[
        "consumer_start_ns"
    ].to_numpy(dtype=np.int64)
    after_comm = general["after_comm"].to_numpy(dtype=bool)
    consumers = general["consumer_start_ns"].to_numpy(dtype=np.int64) >= 0
    if (group_n == 2).all() and joined_after.all() and after_comm.all() and consumers.all():
        return Decision(
            "sglang",
            "prefetches come in pairs issued after a collective and joined after both matmuls "
            "(SGLang's prepare_weight_cache / wait_cmo_stream)",
        )
    return Decision(
        "generic",
        f"the {n} prefetches fit no known stack's layout (not one CMO right before a vllm-ascend "
        "window, not SGLang's pairs); points are named by position",
    )
