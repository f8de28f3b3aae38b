"""The classified task table of `autotune analyze --tasks`: every device task read, with its role.

One row per task of every profile, in profile order then (device, start); prefetch rows also carry
the site, layer and step the overlap analysis gave them. It shows what each task became.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from autotune.errors import AutotuneError
from autotune.overlap import OverlapResult
from autotune.profile.tasks import ROLE_COLUMN, Profile
from autotune.rundir import atomic_write_text

TASK_TABLE_COLUMNS: tuple[str, ...] = (
    "rank",  # -1 when the profile does not say
    "device",
    "stream",
    "name",
    "type",
    "op_type",
    "start_ns",
    "end_ns",
    "role",
    "site",  # prefetch rows: the site it was attributed to ("" when unattributed)
    "layer",  # prefetch rows: layer within its step; "" otherwise (and -1 when unattributed)
    "step",  # prefetch rows: profiled step index; "" otherwise
)
_KEY = ["rank", "device", "stream", "start_ns", "end_ns"]


def task_table(profiles: Sequence[Profile], result: OverlapResult) -> pd.DataFrame:
    """TASK_TABLE_COLUMNS for every task of `profiles`; site/layer/step from `result`."""
    frames = []
    for p in profiles:
        t = p.tasks
        frames.append(
            pd.DataFrame(
                {
                    "rank": -1 if p.rank is None else int(p.rank),
                    "device": t["device"].to_numpy(),
                    "stream": t["stream"].to_numpy(),
                    "name": t["name"].to_numpy(dtype=object),
                    "type": t["type"].to_numpy(dtype=object),
                    "op_type": t["op_type"].to_numpy(dtype=object),
                    "start_ns": t["start_ns"].to_numpy(),
                    "end_ns": t["end_ns"].to_numpy(),
                    "role": t[ROLE_COLUMN].to_numpy(dtype=object),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in TASK_TABLE_COLUMNS})
    tasks = pd.concat(frames, ignore_index=True)
    pf = result.prefetches[[*_KEY, "site", "layer", "step"]].drop_duplicates(_KEY)
    out = tasks.merge(pf, how="left", on=_KEY, sort=False)
    is_pf = (out["role"] == "prefetch").to_numpy()
    for c in ("layer", "step"):
        vals = out[c].to_numpy(dtype=object)
        out[c] = pd.Series(
            [str(int(v)) if f and v == v else "" for v, f in zip(vals, is_pf, strict=True)],
            dtype=object,
        )
    out["site"] = out["site"].where(is_pf & out["site"].notna(), "")
    return out[list(TASK_TABLE_COLUMNS)]


def check_task_path(path: Path) -> None:
    """Refuse a --tasks path that cannot be a file before any work is done."""
    if path.is_dir():
        raise AutotuneError(f"--tasks {path}: is a directory; give a file name such as tasks.csv")


def write_task_table(table: pd.DataFrame, path: Path) -> None:
    """Write the table as CSV (header, one row per task); a clean error when it cannot."""
    check_task_path(path)
    try:
        atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))
    except OSError as exc:
        raise AutotuneError(f"--tasks {path}: cannot write: {exc.strerror or exc}") from None
