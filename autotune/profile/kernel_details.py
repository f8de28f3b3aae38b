"""`kernel_details.csv`: op types for trace_view tasks that lack them, the aclnn name rule, and the
device start of each profiled step (its `Step Id` column)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.errors import AutotuneError
from autotune.profile.trace_view import us_to_ns

# Accepted header spellings per field (formats doc §2.2: K0/K1/K2 and op_summary names).
_HEADERS: dict[str, tuple[str, ...]] = {
    "device": ("Device_id", "Device Id", "Device ID"),
    "stream": ("Stream ID", "Stream Id"),
    "name": ("Name", "Op Name"),
    "op_type": ("Type", "OP Type", "Op Type"),
    "start": ("Start Time(us)", "Task Start Time(us)"),
    "step": ("Step Id", "Step ID"),
}
_MISSING = {"", "N/A", "NA", "None"}


def op_type_from_name(name: str) -> str:
    """The op type of an aclnn kernel name `aclnn<Api>_<impl>_<OpType>` (third part), else ""."""
    if not name.startswith("aclnn"):
        return ""
    parts = name.split("_")
    return parts[2] if len(parts) >= 3 and parts[2] else ""


def read_kernel_details(path: Path) -> pd.DataFrame:
    """Rows (device, stream, name, op_type, start_ns, step) of kernel_details.csv; stream and step
    -1 if absent (step: the number of the profiled step torch_npu placed the kernel in)."""
    try:
        fh = path.open(encoding="utf-8-sig", errors="replace", newline="")
    except OSError as exc:
        raise AutotuneError(f"{path}: cannot open ({exc.strerror or exc})") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise AutotuneError(f"{path}: not a CSV file ({exc})") from None
        if not header:
            raise AutotuneError(f"{path}: empty file, expected a kernel_details.csv header")
        cols = [h.strip() for h in header]
        idx: dict[str, int] = {}
        for key, names in _HEADERS.items():
            for n in names:
                if n in cols:
                    idx[key] = cols.index(n)
                    break
        for need in ("name", "op_type", "start"):
            if need not in idx:
                raise AutotuneError(
                    f"{path}: no {_HEADERS[need][0]!r} column (header: {','.join(cols[:8])}...)"
                )
        rows: list[tuple[int, int, str, str, int, int]] = []
        try:
            for rec in reader:
                if len(rec) <= max(idx.values()):
                    continue
                start = us_to_ns(rec[idx["start"]])
                if start is None:
                    continue
                dev = rec[idx["device"]].strip() if "device" in idx else ""
                stream = rec[idx["stream"]].strip() if "stream" in idx else ""
                op = rec[idx["op_type"]].strip()
                step = rec[idx["step"]].strip() if "step" in idx else ""
                rows.append(
                    (
                        int(dev) if dev.isdigit() else -1,
                        int(stream) if stream.isdigit() else -1,
                        rec[idx["name"]],
                        "" if op in _MISSING else op,
                        start,
                        int(step) if step.isdigit() else -1,
                    )
                )
        except csv.Error as exc:
            raise AutotuneError(f"{path}: malformed CSV ({exc})") from None
    columns = ["device", "stream", "name", "op_type", "start_ns", "step"]
    return pd.DataFrame(rows, columns=columns).astype(
        {
            "device": "int64",
            "stream": "int64",
            "start_ns": "int64",
            "name": object,
            "op_type": object,
            "step": "int64",
        }
    )


def step_starts(kernels: pd.DataFrame) -> dict[int, int]:
    """Step number -> the first kernel torch_npu placed in that step (its device range starts
    there: the first kernel launched inside the step's `ProfilerStep#N` span)."""
    marked = kernels[kernels["step"] >= 0]
    first = marked.groupby("step")["start_ns"].min()
    steps = first.index.to_numpy(dtype=np.int64).tolist()
    return dict(zip(steps, first.to_numpy(dtype=np.int64).tolist(), strict=True))


def fill_op_types(tasks: pd.DataFrame, kernels: pd.DataFrame | None) -> pd.DataFrame:
    """Fill empty `op_type` from kernel_details (match device, start_ns, name; stream when known),
    then from the aclnn name rule. Returns a new table.

    Lookups are hash joins and the name rule runs once per distinct name, so the cost per row is
    pandas'/numpy's; a later kernel_details row wins over an earlier one with the same key."""
    out = tasks.copy()
    if not len(out):
        return out
    ops = out["op_type"].to_numpy(dtype=object, copy=True)
    if kernels is not None and len(kernels):
        kd = kernels[kernels["op_type"] != ""]
        todo = np.flatnonzero(_falsy(ops))
        rows = out.iloc[todo][["device", "stream", "name", "start_ns"]].reset_index(drop=True)
        found = np.full(len(rows), None, dtype=object)
        for keys, table in (
            (["device", "stream", "name", "start_ns"], kd[kd["stream"] >= 0]),
            (["device", "start_ns", "name"], kd),
            (["start_ns", "name"], kd[kd["device"] == -1]),
        ):
            if not len(table) or not len(rows):
                continue
            lookup = table.drop_duplicates(keys, keep="last")[[*keys, "op_type"]]
            hit = rows.merge(lookup, how="left", on=keys, sort=False)["op_type"]
            hit_ops = hit.to_numpy(dtype=object)
            fill = _falsy(found) & ~pd.isna(hit_ops)
            found[fill] = hit_ops[fill]
        got = ~_falsy(found)
        ops[todo[got]] = found[got]
    codes, names = pd.factorize(out["name"], use_na_sentinel=False)
    by_name = np.empty(len(names), dtype=object)
    by_name[:] = [op_type_from_name(n) for n in names]
    empty = _falsy(ops)
    ops[empty] = by_name[codes[empty]]
    out["op_type"] = pd.Series(ops, index=out.index, dtype=object)
    return out


def _falsy(values: npt.NDArray[np.object_]) -> npt.NDArray[np.bool_]:
    """`not v` for each value (None and NaN count as empty), computed once per distinct value."""
    codes, uniques = pd.factorize(values)  # missing values get code -1
    if not len(codes):
        return np.zeros(0, dtype=bool)
    empty = np.array([not u for u in uniques] + [True], dtype=bool)
    return empty[codes]
