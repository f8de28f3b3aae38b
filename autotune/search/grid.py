"""The exhaustive grid over the search's effective-bytes ladder, on the simulator.

It is the ground truth a search is measured against (tests and bench/search_efficiency.py):
modelled, not measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from autotune import target
from autotune.hardware import Hardware
from autotune.search.space import static_space
from autotune.workloads.base import Workload, setup_of
from autotune.workloads.simulate import simulate_throughput


def grid_best(
    workload: Workload, extra: Mapping[str, Any], hardware: Hardware | None = None
) -> tuple[float, dict[str, int]]:
    """Best noiseless simulated throughput over every ladder combination of the active sites,
    and the effective bytes per active site that reach it."""
    setup = setup_of(workload)
    space = static_space(setup)
    best = (0.0, dict.fromkeys(space.names, 0))
    for combo in itertools.product(*[s.levels for s in space.sites]):
        wanted = dict.fromkeys(target.SITES, 0)
        wanted.update(zip(space.names, combo, strict=True))
        config = target.compile_config(wanted, setup, extra)
        value = simulate_throughput(workload, config, hardware)
        if value > best[0]:
            best = (value, dict(zip(space.names, combo, strict=True)))
    return best


def grid_optimum(
    workload: Workload, extra: Mapping[str, Any], hardware: Hardware | None = None
) -> float:
    """Best noiseless simulated throughput over every ladder combination of the active sites."""
    return grid_best(workload, extra, hardware)[0]
