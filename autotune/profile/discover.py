"""Find profiler output: a `*_ascend_pt` dir, any folder with them below it, or one file."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from autotune.errors import AutotuneError

OUTPUT_DIR = "ASCEND_PROFILER_OUTPUT"
_INFO_RE = re.compile(r"profiler_info(?:_(\d+))?\.json")
_DB_RE = re.compile(r"ascend_pytorch_profiler(?:_(\d+))?\.db")


@dataclass(frozen=True)
class Found:
    """One rank's profiler output: which file to read and what profiler_info says."""

    root: Path  # the *_ascend_pt directory (or the output dir's parent)
    source: str  # "db" | "trace_view"
    file: Path  # the db or trace_view.json to read
    kernel_details: Path | None  # kernel_details.csv beside a trace_view.json, if any
    rank: int | None
    level: str | None
    simulated: bool


def _info(root: Path) -> tuple[int | None, str | None, bool]:
    """(rank, level, simulated) from profiler_info*.json; rank from the file name first."""
    files = sorted(p for p in root.glob("profiler_info*.json") if _INFO_RE.fullmatch(p.name))
    if not files:
        return None, None, False
    f = files[0]
    m = _INFO_RE.fullmatch(f.name)
    rank: int | None = int(m.group(1)) if m and m.group(1) else None
    try:
        data = json.loads(f.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AutotuneError(f"{f}: unreadable profiler_info ({exc})") from None
    if not isinstance(data, dict):
        raise AutotuneError(f"{f}: profiler_info is not a JSON object")
    if rank is None:
        r = data.get("rank_id")
        if isinstance(r, bool):
            r = None
        if isinstance(r, int) and r >= 0:
            rank = r
        elif isinstance(r, str) and r.strip().isdigit():
            rank = int(r.strip())
    level = None
    cfg = data.get("config")
    if isinstance(cfg, dict):
        exp = cfg.get("experimental_config")
        if isinstance(exp, dict) and isinstance(exp.get("_profiler_level"), str):
            level = exp["_profiler_level"]
    return rank, level, data.get("autotune_simulated") is True


def _from_output(out: Path, root: Path) -> Found | None:
    """The file to read in one ASCEND_PROFILER_OUTPUT dir: the db when present, else trace_view."""
    dbs = sorted(p for p in out.glob("ascend_pytorch_profiler*.db") if _DB_RE.fullmatch(p.name))
    trace = out / "trace_view.json"
    kd = out / "kernel_details.csv"
    rank, level, simulated = _info(root)
    if dbs:
        db = dbs[0]
        if rank is None:
            m = _DB_RE.fullmatch(db.name)
            rank = int(m.group(1)) if m and m.group(1) else None
        return Found(root, "db", db, None, rank, level, simulated)
    if trace.is_file():
        return Found(
            root, "trace_view", trace, kd if kd.is_file() else None, rank, level, simulated
        )
    return None


def _roots(path: Path) -> list[Path]:
    """Every directory at or below `path` holding an ASCEND_PROFILER_OUTPUT dir; not below one."""
    out: list[Path] = []
    for here, dirs, _ in os.walk(path):
        if OUTPUT_DIR in dirs:
            out.append(Path(here))
            dirs.clear()  # a profile's own subdirectories (PROF_*, FRAMEWORK) hold no other rank
        else:
            dirs.sort()
    return out


def discover(path: Path) -> list[Found]:
    """Every rank's profiler output at or below `path` (any depth), sorted by (rank, directory)."""
    if not path.exists():
        raise AutotuneError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name == "trace_view.json" or path.suffix == ".json":
            root = path.parent.parent if path.parent.name == OUTPUT_DIR else path.parent
            rank, level, simulated = _info(root)
            return [Found(root, "trace_view", path, None, rank, level, simulated)]
        if path.suffix == ".db":
            root = path.parent.parent if path.parent.name == OUTPUT_DIR else path.parent
            rank, level, simulated = _info(root)
            return [Found(root, "db", path, None, rank, level, simulated)]
        raise AutotuneError(f"{path}: not a profiler output (expected a directory, .json or .db)")
    found: list[Found] = []
    if path.name == OUTPUT_DIR:
        f = _from_output(path, path.parent)
        if f:
            found.append(f)
    else:
        for root in _roots(path):
            f = _from_output(root / OUTPUT_DIR, root)
            if f:
                found.append(f)
    if not found:
        raise AutotuneError(
            f"{path}: no profiler output found (expected a *_ascend_pt dir with "
            f"{OUTPUT_DIR}/trace_view.json or ascend_pytorch_profiler*.db at any depth below it)"
        )
    found.sort(key=lambda f: (f.rank if f.rank is not None else 1 << 30, str(f.root)))
    return found
