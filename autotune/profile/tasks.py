"""The tasks table: the one shape every profile reader produces and every analysis consumes.

One row per device task (kernel, CMO prefetch, event record/wait, ...), timestamps in integer ns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Column order of the tasks table. dtypes: device/stream int64, start_ns/end_ns int64 (never float),
# connection_id int64 (-1 when absent), the rest str ("" when absent).
TASK_COLUMNS: tuple[str, ...] = (
    "device",  # device id
    "stream",  # physical stream id (trace tid / db streamId)
    "name",  # task name: kernel name, or the task type for non-kernel tasks ("CMO", "EVENT_WAIT")
    "type",  # task type as the profiler wrote it: "AI_VECTOR_CORE", "CMO", "EVENT_WAIT_SQE", ...
    "op_type",  # operator type when known ("SwiGlu", "AddRmsNorm", ...), else ""
    "start_ns",
    "end_ns",
    "connection_id",
    "source",  # which file the row came from: "trace_view" | "db"
)

# Column added by the classifier (autotune.profile.classify).
ROLE_COLUMN = "role"

# Every role a task can have. Vector roles carry the kind of vector op after the colon.
ROLES: tuple[str, ...] = (
    "prefetch",
    "wait",
    "record",
    "vector:swiglu",
    "vector:norm",
    "vector:quant",
    "vector:gating",
    "cube",
    "comm",
    "other",
)


@dataclass(frozen=True)
class StepSpan:
    """A recorded step: `ProfilerStep#N` in trace_view.json, a STEP_TIME row in the db (host
    times, ns), or a step's device range."""

    number: int  # N of ProfilerStep#N, STEP_TIME.id
    start_ns: int
    end_ns: int


@dataclass(frozen=True)
class ProfiledStep:
    """A step the file holds device tasks of (autotune.profile.steps)."""

    number: int  # the marker's step number
    begin_ns: int  # where the step begins on the device: its tasks start at or after this
    start_ns: int  # first device task of the step
    end_ns: int  # end of its last device task
    complete: bool  # False when the end of a cut-off file falls inside it


@dataclass
class Profile:
    """One rank's profile, read and classified."""

    path: Path  # the *_ascend_pt directory
    source: str  # "db" | "trace_view"
    tasks: pd.DataFrame  # TASK_COLUMNS + ROLE_COLUMN, sorted by (device, start_ns)
    rank: int | None = None
    level: str | None = None  # profiler level from profiler_info ("Level0", "Level1", ...)
    # Number of profiled steps when step markers exist: the markers recorded, then (once the
    # profile is loaded) the steps the file holds device tasks of.
    steps: int | None = None
    step_markers: list[StepSpan] = field(default_factory=list)  # as recorded, host times
    # Device start of a step (by number) where the file links host and device: the db's
    # CANN_API launches, kernel_details.csv's Step Id.
    step_starts: dict[int, int] = field(default_factory=dict)
    step_source: str = ""  # where step_starts came from, for messages
    profiled_steps: list[ProfiledStep] = field(default_factory=list)  # set by load_profiles
    simulated: bool = False  # profiler_info says the simulator wrote it
    unclassified_types: dict[str, int] = field(default_factory=dict)  # task type -> count
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False  # the trace file is cut off; read up to its last complete event


def empty_tasks() -> pd.DataFrame:
    """An empty tasks table with the right columns and dtypes."""
    ints = {"device", "stream", "start_ns", "end_ns", "connection_id"}
    return pd.DataFrame(
        {c: pd.Series(dtype="int64" if c in ints else "object") for c in TASK_COLUMNS}
    )
