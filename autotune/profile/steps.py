"""Profiled steps from the recorded step markers: which steps a file holds, and where each begins
on the device.

A step is recorded by the host (`ProfilerStep#N` in trace_view.json, a STEP_TIME row in the db);
its device tasks run after their launch, so a step begins on the device at the first task
launched inside its host span. The db links launches to tasks (CANN_API -> TASK by connection
id) and kernel_details.csv names each kernel's step, both as torch_npu computes its own step
ranges; without such a link a step begins at its marker's start, which holds when each step's
device work ends before the host starts the next one (a decode loop that waits for its tokens).
Steps with no task in the file are not held; in a cut-off file the last step held is cut off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.profile.tasks import ProfiledStep, StepSpan


def step_bounds(markers: Sequence[StepSpan], starts: Mapping[int, int]) -> list[tuple[int, int]]:
    """(step number, device begin) of every marker, in time order: the linked device start
    where the file has one, else the marker's own start."""
    bounds = [(m.number, starts.get(m.number, m.start_ns)) for m in markers]
    return sorted(bounds, key=lambda b: (b[1], b[0]))


def profiled_steps(
    markers: Sequence[StepSpan],
    starts: Mapping[int, int],
    tasks: pd.DataFrame,
    *,
    truncated: bool,
) -> list[ProfiledStep]:
    """The steps `tasks` hold, each from its begin to the next step's begin (the last to the end
    of the file); tasks before the first step belong to none."""
    bounds = step_bounds(markers, starts)
    if not bounds or tasks.empty:
        return []
    begin = np.array([b for _, b in bounds], dtype=np.int64)
    start = tasks["start_ns"].to_numpy(dtype=np.int64)
    end = tasks["end_ns"].to_numpy(dtype=np.int64)
    k = np.searchsorted(begin, start, side="right") - 1
    inside = k >= 0
    frame = pd.DataFrame({"k": k[inside], "start": start[inside], "end": end[inside]})
    spans = frame.groupby("k").agg(start=("start", "min"), end=("end", "max"))
    held = spans.index.to_numpy(dtype=np.int64).tolist()
    first = spans["start"].to_numpy(dtype=np.int64).tolist()
    last = spans["end"].to_numpy(dtype=np.int64).tolist()
    out = []
    for pos, i in enumerate(held):
        out.append(
            ProfiledStep(
                number=bounds[i][0],
                begin_ns=bounds[i][1],
                start_ns=first[pos],
                end_ns=last[pos],
                complete=not (truncated and pos == len(held) - 1),
            )
        )
    return out


def step_index(steps: Sequence[ProfiledStep], t_ns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Per time: the index in `steps` of the step it falls in (-1 before the first)."""
    begin = np.array([s.begin_ns for s in steps], dtype=np.int64)
    return (np.searchsorted(begin, t_ns, side="right") - 1).astype(np.int64)
