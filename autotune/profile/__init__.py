"""Reading Ascend profiler output into one classified tasks table.

Public API: `load_profiles(path, rules=None) -> list[Profile]`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from autotune.profile.classify import classify, load_rules
from autotune.profile.db import read_db
from autotune.profile.discover import discover
from autotune.profile.kernel_details import fill_op_types, read_kernel_details, step_starts
from autotune.profile.steps import profiled_steps
from autotune.profile.tasks import ROLES, TASK_COLUMNS, Profile
from autotune.profile.trace_view import read_trace_view

__all__ = ["ROLES", "TASK_COLUMNS", "Profile", "load_profiles"]


def load_profiles(path: Path, rules: Path | None = None) -> list[Profile]:
    """Discover, read, enrich and classify every rank under `path`; tasks by device, start."""
    ruleset = load_rules(rules)
    out: list[Profile] = []
    for f in discover(path):
        prof = read_db(f.file) if f.source == "db" else read_trace_view(f.file)
        kernels = read_kernel_details(f.kernel_details) if f.kernel_details else None
        prof.tasks = fill_op_types(prof.tasks, kernels)
        if kernels is not None and not prof.step_starts:
            prof.step_starts = step_starts(kernels)
            prof.step_source = "kernel_details.csv's Step Id" if prof.step_starts else ""
        prof.path = f.root
        prof.rank = f.rank
        prof.level = f.level
        prof.simulated = f.simulated
        classify(prof, ruleset)
        prof.tasks = prof.tasks.sort_values(
            ["device", "start_ns", "end_ns", "stream"], kind="stable"
        ).reset_index(drop=True)
        if prof.steps is None:
            prof.warnings.append(f"{f.file}: no step markers; the profile counts as one step")
        else:
            _hold_steps(prof, f.file)
        out.append(prof)
    seen = Counter(p.rank for p in out if p.rank is not None)
    for rank, n in sorted(seen.items()):
        if n > 1:
            note = (
                f"rank {rank} was read {n} times (separate captures, e.g. several trials of a "
                "run); their tasks are pooled — pass one *_ascend_pt or trials/NNN for one capture"
            )
            for p in out:
                if p.rank == rank:
                    p.warnings.append(note)
    return out


def _hold_steps(prof: Profile, file: Path) -> None:
    """Set the steps the file holds from its markers, and say where they differ."""
    marked = prof.steps or 0
    prof.profiled_steps = profiled_steps(
        prof.step_markers, prof.step_starts, prof.tasks, truncated=prof.truncated
    )
    held = prof.profiled_steps
    if not prof.step_markers:
        prof.warnings.append(
            f"{file}: {marked} step marker(s) without usable times; steps are split by layers"
        )
        return
    if not held:
        prof.warnings.append(f"{file}: no device task inside the {marked} marked step(s)")
        return
    prof.steps = len(held)
    cut = [s.number for s in held if not s.complete]
    complete = len(held) - len(cut)
    if len(held) < marked or cut:
        note = f"{file}: {marked} step marker(s)"
        if len(held) < marked:
            note += f", the file holds tasks of {len(held)}"
        if cut:
            note += (
                f"; step {cut[0]} is cut off by the end of the file: per-step figures use "
                f"the {complete} complete step(s)"
                if complete
                else f"; step {cut[0]} is cut off by the end of the file and none is complete"
            )
        prof.warnings.append(note)
