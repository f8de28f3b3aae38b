"""One stream picker for the analysis and the report: compute stream, prefetch streams, joins."""

from __future__ import annotations

import numpy as np

from autotune.streams import ROLE_CODE, pick_streams, prefetch_joins


def _codes(*roles: str) -> np.ndarray:
    return np.array([ROLE_CODE[r] for r in roles], dtype=np.int64)


def test_compute_is_the_busiest_kernel_stream_and_prefetch_streams_are_the_others() -> None:
    role = _codes(
        "cube", "vector:norm", "cube", "vector:swiglu", "prefetch", "prefetch", "prefetch"
    )
    stream = np.array([4, 4, 2, 2, 9, 7, 2], dtype=np.int64)
    picked = pick_streams(role, stream)
    # A tie goes to the lowest id; a CMO on the compute stream is not a prefetch stream.
    assert picked.compute == 2 and picked.prefetch == (7, 9)
    assert pick_streams(_codes("prefetch"), np.array([3])).compute == -1


def test_joins_name_the_stream_and_record_they_waited_for() -> None:
    # compute 2: wait [10, 20] released by stream 9's record ending at 19; wait [30, 31] for an
    # HCCL stream 5 record ending at 30.5 (no join); wait [40, 41] for 9's record that ended at 35.
    role = _codes("wait", "record", "wait", "record", "record", "wait", "prefetch", "prefetch")
    stream = np.array([2, 9, 2, 5, 9, 2, 9, 9], dtype=np.int64)
    start = np.array([10, 18, 30, 30, 34, 40, 11, 21], dtype=np.int64)
    end = np.array([20, 19, 31, 30, 35, 41, 18, 34], dtype=np.int64)
    joins = prefetch_joins(np.array([0, 2, 5]), role, stream, start, end, 2, {9})
    assert joins.index.tolist() == [0, 5]
    assert joins.stream.tolist() == [9, 9] and joins.record_end.tolist() == [19, 35]
