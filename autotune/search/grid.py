"""The exhaustive grid over the search's effective-bytes ladder, on the simulator.

It is the ground truth a search is measured against (tests and bench/search_efficiency.py):
modelled, not measured.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from autotune import target
from autotune.search.space import static_space
from autotune.workloads.base import Workload, setup_of
from autotune.workloads.simulate import simulate_throughput


def grid_optimum(workload: Workload, extra: Mapping[str, Any]) -> float:
    """Best noiseless simulated throughput over every ladder combination of the active sites."""
    setup = setup_of(workload)
    space = static_space(setup)
    best = 0.0
    for combo in itertools.product(*[s.levels for s in space.sites]):
        wanted = dict.fromkeys(target.SITES, 0)
        wanted.update(zip(space.names, combo, strict=True))
        config = target.compile_config(wanted, setup, extra)
        best = max(best, simulate_throughput(workload, config))
    return best
