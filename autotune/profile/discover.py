"""Find profiler output: a `*_ascend_pt` dir, any folder with them below it, or one file.

One capture exported twice (torch_npu's offline `analyse(path, export_type=...)` run on a copy
keeps the capture's profiler_info_*.json, which records its start and end counters) is read once,
from its db export.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
    # What identifies the capture across its exports ("" when profiler_info cannot tell).
    capture: str = ""
    # Other exports of the same capture, not read (their roots).
    also: tuple[Path, ...] = field(default=())


@dataclass(frozen=True)
class _Info:
    rank: int | None = None
    level: str | None = None
    simulated: bool = False
    capture: str = ""


def _capture_id(data: dict[str, Any]) -> str:
    """profiler_info without its export type: torch_npu writes it once per capture, with the
    capture's start counters and end time (profiler_interface.py:302-356 of torch_npu 2.10), and
    an offline re-export does not rewrite it. Without those times it names no capture ("")."""
    if not isinstance(data.get("start_info"), dict) and not isinstance(data.get("end_info"), dict):
        return ""
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("experimental_config"), dict):
        exp = {k: v for k, v in config["experimental_config"].items() if k != "_export_type"}
        data = {**data, "config": {**config, "experimental_config": exp}}
    return json.dumps(data, sort_keys=True)


def _info(root: Path) -> _Info:
    """Rank, level, simulated and capture id from profiler_info*.json; rank from the file name
    first."""
    files = sorted(p for p in root.glob("profiler_info*.json") if _INFO_RE.fullmatch(p.name))
    if not files:
        return _Info()
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
    return _Info(rank, level, data.get("autotune_simulated") is True, _capture_id(data))


def _from_output(out: Path, root: Path) -> Found | None:
    """The file to read in one ASCEND_PROFILER_OUTPUT dir: the db when present, else trace_view."""
    dbs = sorted(p for p in out.glob("ascend_pytorch_profiler*.db") if _DB_RE.fullmatch(p.name))
    trace = out / "trace_view.json"
    if dbs:
        return _db(dbs[0], root)
    if trace.is_file():
        return _trace_view(trace, root)
    return None


def _db(db: Path, root: Path) -> Found:
    info = _info(root)
    rank = info.rank
    if rank is None:
        m = _DB_RE.fullmatch(db.name)
        rank = int(m.group(1)) if m and m.group(1) else None
    return Found(root, "db", db, None, rank, info.level, info.simulated, info.capture)


def _trace_view(trace: Path, root: Path) -> Found:
    """A trace_view.json with the kernel_details.csv beside it (op types), as its folder reads."""
    kd = trace.with_name("kernel_details.csv")
    info = _info(root)
    kernels = kd if kd.is_file() else None
    return Found(
        root, "trace_view", trace, kernels, info.rank, info.level, info.simulated, info.capture
    )


def _once(found: list[Found]) -> list[Found]:
    """One entry per capture: exports of the same capture (same rank, same profiler_info) are
    read once, from the db when there is one."""
    out: list[Found] = []
    seen: dict[tuple[int | None, str], int] = {}  # (rank, capture) -> index in out
    for f in found:
        i = seen.get((f.rank, f.capture)) if f.capture else None
        if i is None:
            seen[(f.rank, f.capture)] = len(out)
            out.append(f)
            continue
        kept, other = (f, out[i]) if f.source == "db" and out[i].source != "db" else (out[i], f)
        out[i] = replace(kept, also=(*kept.also, *other.also, other.root))
    return out


def _roots(path: Path) -> list[Path]:
    """Every directory at or below `path` holding an ASCEND_PROFILER_OUTPUT dir; not below one,
    nor in a hidden folder (e.g. a run's profile that is being deleted)."""
    out: list[Path] = []
    for here, dirs, _ in os.walk(path):
        if OUTPUT_DIR in dirs:
            out.append(Path(here))
            dirs.clear()  # a profile's own subdirectories (PROF_*, FRAMEWORK) hold no other rank
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return out


def discover(path: Path) -> list[Found]:
    """Every rank's profiler output at or below `path` (any depth), sorted by (rank, directory)."""
    if not path.exists():
        raise AutotuneError(f"{path}: no such file or directory")
    if path.is_file():
        root = path.parent.parent if path.parent.name == OUTPUT_DIR else path.parent
        if path.suffix == ".json":
            return [_trace_view(path, root)]
        if path.suffix == ".db":
            return [_db(path, root)]
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
    return _once(found)
