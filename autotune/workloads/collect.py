"""A trial's `*_ascend_pt` output after `/stop_profile`: parsed where torch_npu left it raw, found,
or the reason there is none.

torch_npu parses a capture when the profiler stops (`torch_npu/profiler/profiler.py:180-198`),
but not in a daemon process (`torch_npu/profiler/analysis/_npu_profiler.py:22-28`), and vLLM
runs the workers of TP > 1 as daemons (`vllm/v1/executor/multiproc_executor.py:691-696`): their
ranks hold raw data only. autotune then runs torch_npu's offline `analyse` on the profiler
directory in the serving interpreter, where CANN's `msprof` lives (torch_npu's export calls it:
`prof_view/cann_parse/_cann_export.py:54,131-133`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autotune.workloads.process import Child, log_tail, root_cause

OUTPUT_DIR = "ASCEND_PROFILER_OUTPUT"
# What the analysis reads from ASCEND_PROFILER_OUTPUT (any one of them will do).
READABLE = ("trace_view.json", "kernel_details.csv")
ANALYSE_LOG = "analyse.log"
# torch_npu's offline parser over every rank folder below a directory.
ANALYSE_CODE = (
    "import sys; from torch_npu.profiler.profiler import analyse; "
    "analyse(sys.argv[1], max_process_number=int(sys.argv[2]))"
)
CANN_HINT = (
    "source CANN's set_env.sh in the environment that runs vllm "
    "(e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh before autotune)"
)
# The analyse process gets this long to exit after SIGTERM.
STOP_GRACE_S = 10.0


def _listing(directory: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
    return shown or "nothing"


def analyse_hint(rank_dir: Path) -> str:
    """How to run torch_npu's offline parser on raw profiler data by hand."""
    return (
        f"parse it in the serving environment ({CANN_HINT}): "
        f"python -c \"from torch_npu.profiler.profiler import analyse; analyse('{rank_dir}')\", "
        "then run `autotune analyze` on it"
    )


def _parsed(rank: Path) -> bool:
    out = rank / OUTPUT_DIR
    return out.is_dir() and any((out / name).is_file() for name in READABLE)


def rank_dirs(prof_dir: Path) -> list[Path]:
    """The `*_ascend_pt` folders the profiler wrote, one per rank."""
    return sorted(p for p in prof_dir.glob("*_ascend_pt") if p.is_dir())


def raw_ranks(prof_dir: Path) -> list[Path]:
    """Rank folders holding raw data only (no readable ASCEND_PROFILER_OUTPUT)."""
    return [rank for rank in rank_dirs(prof_dir) if not _parsed(rank)]


def analyse_argv(python: str, prof_dir: Path | str, processes: int) -> list[str]:
    """The command that parses every raw rank below `prof_dir` with torch_npu's `analyse`."""
    return [python, "-c", ANALYSE_CODE, str(prof_dir), str(processes)]


@dataclass(frozen=True)
class Parse:
    """What the offline parse of one trial's profile did."""

    ranks: int  # rank folders it had to parse
    seconds: float
    reason: str  # why the profile is still unparsed; "" when it is parsed


def parse_raw(
    python: Path,
    prof_dir: Path,
    *,
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
    started: Callable[[int], None] | None = None,
) -> Parse:
    """Run torch_npu's offline `analyse` on the ranks torch_npu left raw (none: nothing runs);
    `started` hears how many ranks it parses before it starts."""
    raw = raw_ranks(prof_dir)
    if not raw:
        return Parse(0, 0.0, "")
    if shutil.which("msprof", path=env.get("PATH", os.defpath)) is None:
        return Parse(
            len(raw),
            0.0,
            f"{len(raw)} rank(s) hold raw profiler data only ({raw[0].name}) and torch_npu's "
            f"offline analyse needs CANN's msprof, which is not on the serving environment's "
            f"PATH; {CANN_HINT}",
        )
    processes = max(1, min(len(raw), os.cpu_count() or 1))
    if started is not None:
        started(len(raw))
    start = time.monotonic()
    child = Child(analyse_argv(str(python), prof_dir, processes), env=env, log=log)
    try:
        code = child.wait(timeout_s)
    finally:
        child.stop(STOP_GRACE_S)
    took = time.monotonic() - start
    if code is None:
        return Parse(
            len(raw),
            took,
            f"torch_npu's analyse of {len(raw)} raw rank(s) did not finish within "
            f"{timeout_s:g} s (--analyse-timeout); log {log}",
        )
    said = root_cause(log) or log_tail(log, lines=4, width=240) or "no output"
    if code != 0:
        return Parse(
            len(raw),
            took,
            f"torch_npu's analyse of the raw profile failed (exit {code}): {said} (log {log})",
        )
    left = raw_ranks(prof_dir)
    if left:
        return Parse(
            len(raw),
            took,
            f"torch_npu's analyse left {left[0].name} unparsed: {said} (log {log})",
        )
    return Parse(len(raw), took, "")


def find_profile(prof_dir: Path) -> tuple[Path | None, str]:
    """(directory holding the parsed *_ascend_pt folders, "") or (None, why it is unprofiled)."""
    if not prof_dir.is_dir():
        return None, f"the profiler wrote nothing ({prof_dir.name}/ does not exist)"
    ranks = rank_dirs(prof_dir)
    if not ranks:
        return None, (
            f"no *_ascend_pt under {prof_dir.name}/ (it holds: {_listing(prof_dir)}); "
            "only torch_npu's profiler on an NPU host writes one"
        )
    for rank in ranks:
        if not _parsed(rank):
            return None, f"{rank.name} has no parsed {OUTPUT_DIR}; {analyse_hint(rank)}"
    return prof_dir, ""
