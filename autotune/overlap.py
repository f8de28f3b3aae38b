"""Prefetch <-> window <-> join matching and per-site metrics.

Input: classified tasks (autotune.profile). Output: `OverlapResult`, plain data that renderers present.
Vendor criterion: a prefetch must overlap the vector op it hides behind and end no later than it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from autotune.profile.tasks import Profile

# Columns of OverlapResult.prefetches (one row per prefetch task), in this order.
PREFETCH_COLUMNS: tuple[str, ...] = (
    "rank",  # rank of the profile it came from (-1 when unknown)
    "device",
    "stream",  # the prefetch stream
    "step",  # index of the profiled step it falls in (0-based; 0 when there are no step markers)
    "layer",  # index of the decoder layer within the step (0-based), -1 when unattributed
    "site",  # attn.qkv | attn.o | mlp.gate_up | mlp.down | moe.gate_up | "" when unattributed
    "weight",  # which weight the site's ratio prefetches here: qkv_proj|o_proj|down_proj|gate_up_proj|w13
    "start_ns",
    "end_ns",
    "window_kind",  # swiglu | norm | quant | gating | "" when no window
    "window_start_ns",
    "window_end_ns",
    "join_start_ns",  # compute-stream wait that waits for this prefetch; -1 when none
    "join_end_ns",
    "hidden_fraction",  # share of the prefetch's duration overlapping window work, 0..1
    "slack_ns",  # window_end - prefetch_end; negative = late
    "stall_ns",  # time the compute stream was blocked in the join charged to this prefetch
    "late",  # bool: slack_ns < -tolerance
)


@dataclass(frozen=True)
class SiteSummary:
    """Per-site aggregate over all profiled layers and steps."""

    site: str
    count: int  # prefetches attributed to the site
    late: int
    windows: int  # windows of this site's kind seen on the compute stream
    hidden_fraction_median: float
    slack_us_median: float
    slack_us_p90: float
    slack_us_min: float
    stall_us_total: float
    stall_us_per_step: float
    verdict: str  # "hidden" | "late" | "inert"


@dataclass
class OverlapResult:
    """Everything the analysis found; renderers only present this."""

    prefetches: pd.DataFrame  # PREFETCH_COLUMNS
    sites: list[SiteSummary]
    unattributed: int  # prefetches with no window/site
    windows_without_prefetch: dict[str, int]  # site -> windows that had no prefetch
    unclassified_types: dict[str, int]  # task type -> count, summed over profiles
    steps: int  # profiled steps (>= 1)
    simulated: bool  # any input profile was written by the simulator
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The `autotune analyze --json` object."""
        raise NotImplementedError


def analyze(profiles: Sequence[Profile], *, late_tolerance_ns: int = 0) -> OverlapResult:
    """Match every prefetch to its window and join, attribute its site, and summarise per site."""
    raise NotImplementedError
