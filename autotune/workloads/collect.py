"""Finding a trial's `*_ascend_pt` output after `/stop_profile`, or saying why there is none."""

from __future__ import annotations

from pathlib import Path

OUTPUT_DIR = "ASCEND_PROFILER_OUTPUT"
# What the analysis reads from ASCEND_PROFILER_OUTPUT (any one of them will do).
READABLE = ("trace_view.json", "kernel_details.csv")


def _listing(directory: Path, limit: int = 5) -> str:
    names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
    return shown or "nothing"


def analyse_hint(rank_dir: Path) -> str:
    """How to run torch_npu's offline parser on raw profiler data."""
    return (
        "parse it offline on a host with torch_npu (pip install 'autotune[npu]'): "
        f"python -c \"from torch_npu.profiler.profiler import analyse; analyse('{rank_dir}')\", "
        "then run `autotune analyze` on it"
    )


def find_profile(prof_dir: Path) -> tuple[Path | None, str]:
    """(directory holding the parsed *_ascend_pt folders, "") or (None, why it is unprofiled)."""
    if not prof_dir.is_dir():
        return None, f"the profiler wrote nothing ({prof_dir.name}/ does not exist)"
    ranks = sorted(p for p in prof_dir.glob("*_ascend_pt") if p.is_dir())
    if not ranks:
        return None, (
            f"no *_ascend_pt under {prof_dir.name}/ (it holds: {_listing(prof_dir)}); "
            "only torch_npu's profiler on an NPU host writes one"
        )
    for rank in ranks:
        out = rank / OUTPUT_DIR
        if not out.is_dir() or not any((out / name).is_file() for name in READABLE):
            return None, f"{rank.name} has no parsed {OUTPUT_DIR}; {analyse_hint(rank)}"
    return prof_dir, ""
