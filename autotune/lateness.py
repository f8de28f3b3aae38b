"""The one lateness rule every view uses: analyze, the run's terminal table, summary, trials.csv,
and the report. A prefetch is late when it ends more than the tolerance
after its window; a site (or prefetch point) is late when its median slack is below minus the
tolerance. The default tolerance is 0: the vendor's criterion itself, a prefetch must end no later
than the vector op it hides behind. Any other tolerance is the user's choice, and every view
states it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# Default tolerance of `autotune analyze` and `autotune run` alike: the vendor's criterion.
DEFAULT_LATE_TOLERANCE_US = 0.0


def tolerance_ns(tolerance_us: float) -> int:
    """The tolerance in integer ns, rounded the same way everywhere."""
    return round(tolerance_us * 1000)


@overload
def prefetch_late(slack_ns: int, tol_ns: int) -> bool: ...


@overload
def prefetch_late(slack_ns: npt.NDArray[np.int64], tol_ns: int) -> npt.NDArray[np.bool_]: ...


def prefetch_late(slack_ns: object, tol_ns: int) -> object:
    """A prefetch (or an array of them): late when its slack (window end − prefetch end) is
    below −tolerance."""
    return slack_ns < -tol_ns  # type: ignore[operator]


def site_late(slack_ns_median: float, tol_ns: int) -> bool:
    """A site: late when the median slack of its prefetches is below −tolerance (NaN: never)."""
    return not math.isnan(slack_ns_median) and slack_ns_median < -tol_ns


def rule_text(tolerance_us: float) -> str:
    """How every view states the rule and the tolerance it used."""
    if tolerance_us == 0:
        return "late = median slack below 0 µs, ends after its window (tolerance 0 µs)"
    return f"late = median slack below −{tolerance_us:g} µs (tolerance {tolerance_us:g} µs)"
