"""The vectorised op-type fill gives exactly the per-row reference's op types."""

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.profile.kernel_details import fill_op_types, op_type_from_name
from autotune.profile.tasks import TASK_COLUMNS


def _reference(tasks: pd.DataFrame, kernels: pd.DataFrame | None) -> list[str]:
    ops = tasks["op_type"].tolist()
    if kernels is not None and len(kernels):
        kd = kernels[kernels["op_type"] != ""]
        exact: dict[tuple[int, int, str, int], str] = {}
        loose: dict[tuple[int, int, str], str] = {}
        for d, s, n, o, t in kd[["device", "stream", "name", "op_type", "start_ns"]].itertuples(
            index=False
        ):
            if s >= 0:
                exact[(d, s, n, t)] = o
            loose[(d, t, n)] = o
        for i, (d, s, n, t) in enumerate(
            tasks[["device", "stream", "name", "start_ns"]].itertuples(index=False)
        ):
            if ops[i]:
                continue
            o = exact.get((d, s, n, t)) or loose.get((d, t, n)) or loose.get((-1, t, n))
            if o:
                ops[i] = o
    return [o or op_type_from_name(n) for o, n in zip(ops, tasks["name"], strict=True)]


NAMES = st.sampled_from(["k1", "k2", "aclnnSwiGlu_SwiGlu_SwiGlu", "aclnnX", ""])
OPS = st.sampled_from(["", "", "SwiGlu", "RmsNorm", "Mul"])


@settings(max_examples=200, deadline=None)
@given(
    tasks=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 2), NAMES, OPS, st.integers(0, 1)),
        max_size=30,
    ),
    kernels=st.none()
    | st.lists(
        st.tuples(st.integers(-1, 1), st.integers(-1, 2), NAMES, OPS, st.integers(0, 1)),
        max_size=30,
    ),
)
def test_matches_reference(
    tasks: list[tuple[int, int, str, str, int]],
    kernels: list[tuple[int, int, str, str, int]] | None,
) -> None:
    t = pd.DataFrame(
        [(d, s, n, "AI_CORE", o, ts, ts + 1, -1, "trace_view") for d, s, n, o, ts in tasks],
        columns=list(TASK_COLUMNS),
    ).astype({c: object for c in ("name", "type", "op_type", "source")})
    kd = (
        None
        if kernels is None
        else pd.DataFrame(kernels, columns=["device", "stream", "name", "op_type", "start_ns"])
        .astype({"device": "int64", "stream": "int64", "start_ns": "int64"})
        .astype({"name": object, "op_type": object})
    )
    got = fill_op_types(t, kd)
    assert got["op_type"].tolist() == _reference(t, kd)
    assert got["op_type"].dtype == object
    assert got.drop(columns="op_type").equals(t.drop(columns="op_type"))


def test_later_kernel_row_wins() -> None:
    t = pd.DataFrame(
        [(0, 0, "k1", "AI_CORE", "", 0, 1, -1, "trace_view")], columns=list(TASK_COLUMNS)
    ).astype({c: object for c in ("name", "type", "op_type", "source")})
    kd = pd.DataFrame(
        [(0, 0, "k1", "Mul", 0), (0, 0, "k1", "SwiGlu", 0), (-1, -1, "k1", "RmsNorm", 0)],
        columns=["device", "stream", "name", "op_type", "start_ns"],
    ).astype({"name": object, "op_type": object})
    assert fill_op_types(t, kd)["op_type"].tolist() == _reference(t, kd) == ["SwiGlu"]
    assert fill_op_types(t.assign(device=1), kd)["op_type"].tolist() == ["RmsNorm"]
