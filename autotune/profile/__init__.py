"""Reading Ascend profiler output into one classified tasks table.

Public API: `load_profiles(path, rules=None) -> list[Profile]`.
"""

from __future__ import annotations

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
    """Discover, read, enrich and classify every capture under `path`; tasks by device, start."""
    ruleset = load_rules(rules)
    out: list[Profile] = []
    captures: dict[int, list[str]] = {}
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
        if f.also:
            others = ", ".join(str(p) for p in f.also)
            prof.warnings.append(
                f"rank {'?' if f.rank is None else f.rank}: {others} holds another export of the "
                f"same capture (same profiler_info); read once, from {f.file}"
            )
        if f.rank is not None:
            captures.setdefault(f.rank, []).append(f.capture)
        out.append(prof)
    for rank, ids in sorted(captures.items()):
        if len(ids) < 2:
            continue
        why = (
            "their profiler_info files record different start and end times"
            if all(ids)
            else "no profiler_info with start and end times says they are one"
        )
        note = (
            f"rank {rank} was read {len(ids)} times: separate captures ({why}; e.g. several "
            "trials of a run); their tasks are pooled — pass one *_ascend_pt or trials/NNN for "
            "one capture"
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
