"""The whole-chunk and piece paths of the trace_view reader give exactly the exact path's table."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autotune.profile.trace_view as tv
from autotune.errors import AutotuneError
from autotune.profile.tasks import Profile

OS_PID = 4242
HW_PID = (OS_PID << 10) | (14 << 5) | 3
CANN_PID = (OS_PID << 10) | (7 << 5) | 31
T0 = 1_776_130_000_000_000


@contextmanager
def _mode(mode: str, chunk: int) -> Iterator[None]:
    """Read with only some paths: "bulk" (all), "pieces" (no whole-chunk path), "exact"."""
    old = (tv.CHUNK_BYTES, tv._Reader.bulk, tv._Reader.fast_chunk)
    tv.CHUNK_BYTES = chunk
    if mode in ("pieces", "exact"):
        tv._Reader.bulk = lambda self, text, pos: None  # type: ignore[method-assign]
    if mode == "exact":
        tv._Reader.fast_chunk = lambda self, text, pos: self.exact(text, pos, False)  # type: ignore[method-assign]
    try:
        yield
    finally:
        tv.CHUNK_BYTES, tv._Reader.bulk, tv._Reader.fast_chunk = old  # type: ignore[method-assign]


def _read(path: Path, mode: str, chunk: int) -> Profile | str:
    with _mode(mode, chunk):
        try:
            return tv.read_trace_view(path)
        except AutotuneError as exc:
            return str(exc).split(":", 1)[1].split(" after event")[0]


def _same(path: Path, chunk: int) -> None:
    """Every path reads `path` to the same tasks, steps and warnings (up to row order)."""
    want = _read(path, "exact", 1 << 20)
    for mode in ("bulk", "pieces"):
        got = _read(path, mode, chunk)
        if isinstance(want, str) or isinstance(got, str):
            assert got == want, mode
            continue
        cols = list(want.tasks.columns)
        a = want.tasks.sort_values(cols).reset_index(drop=True)
        b = got.tasks.sort_values(cols).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert got.steps == want.steps, mode
        # Event counts in messages may differ between paths; the rest must not.
        assert [_no_count(w) for w in got.warnings] == [_no_count(w) for w in want.warnings]


def _no_count(w: str) -> str:
    return w.split("; read ")[0]


def _hw(
    name: str,
    ttype: str,
    stream: int,
    ts: str,
    dur: Any,
    conn: Any,
    stream_key: str = "Physic Stream Id",
    pid: Any = HW_PID,
) -> dict[str, Any]:
    return {
        "name": name,
        "pid": pid,
        "tid": stream,
        "ts": ts,
        "dur": dur,
        "ph": "X",
        "args": {
            "Model Id": 4294967295,
            "Task Type": ttype,
            stream_key: stream,
            "Task Id": 7,
            "Batch Id": 0,
            "Subtask Id": 4294967295,
            "connection_id": conn,
        },
    }


META = [
    {
        "name": "process_name",
        "pid": HW_PID,
        "tid": 0,
        "ph": "M",
        "args": {"name": "Ascend Hardware"},
    },
    {"name": "process_labels", "pid": HW_PID, "tid": 0, "ph": "M", "args": {"labels": "NPU 3"}},
    {"name": "process_name", "pid": CANN_PID, "tid": 0, "ph": "M", "args": {"name": "CANN"}},
]


def _mostly(common: st.SearchStrategy[Any], rare: list[Any]) -> st.SearchStrategy[Any]:
    """`common` nine times in ten, else one of `rare` (edge values that force fallbacks)."""
    return st.integers(0, 9).flatmap(lambda k: st.sampled_from(rare) if k == 0 else common)


NAMES = _mostly(
    st.sampled_from(["aclnnSwiGlu_SwiGlu_SwiGlu", "CMO", "EVENT_WAIT", "n\u00e9on\u4e2d"]),
    [
        "brace{",
        "ProfilerStep#9",
        'quote"inside',
        "tab\there",
        "}, {",
        '"Task Type"',
        "process_name",
        "back\\slash",
        "\u2028",
        "\x7f",
    ],
)
TS = _mostly(
    st.integers(0, 10**9).map(lambda us: f"{T0 + us}.{us % 1000:03d}"),
    ["17669.780\t", "1.5", "2", "0001.000", "9223372036854775.807", "99999999999999999.000"],
)
DUR = _mostly(
    st.integers(0, 100_000).map(lambda d: d / 1000),
    [0, 5, -1.0, -0.0001, 0.45077999999999996, 1e300, 2**70, 1.5e-7, 9.2e15],
)
CONN = _mostly(st.integers(-5, 10**6), [2**63 - 1, 2**64, -(2**63)])
STREAM = _mostly(st.sampled_from([2, 7, 0]), [2**63 - 1, -1, 2**63])
PID = _mostly(st.just(HW_PID), [CANN_PID, 2**64, -1])


@st.composite
def _event(draw: st.DrawFn) -> dict[str, Any]:
    k = draw(st.integers(0, 99))
    kinds = ((2, "odd"), (5, "hw+"), (50, "hw"), (70, "py"), (80, "cann"), (90, "step"))
    kind = next((name for bound, name in kinds if k < bound), "flow")
    ts = draw(TS)
    if kind in ("hw", "hw+"):
        e = _hw(
            draw(NAMES),
            draw(st.sampled_from(["AI_VECTOR_CORE", "CMO", "EVENT_WAIT_SQE", "x\ty"])),
            draw(STREAM),
            ts,
            draw(DUR),
            draw(CONN),
            draw(st.sampled_from(["Physic Stream Id", "Stream Id"])),
            draw(PID),
        )
        if kind == "hw+":  # a non-canonical task event
            e["args"]["extra"] = [1, {"k": "}"}]
        return e
    if kind == "py":
        return {
            "ph": "X",
            "name": draw(NAMES),
            "pid": OS_PID,
            "tid": OS_PID,
            "ts": ts,
            "dur": 1.5,
            "cat": "cpu_op",
            "args": {"Input Dims": "[[64, 5120], [5120]]", "Call stack": draw(NAMES)},
        }
    if kind == "cann":
        return {
            "name": "AscendCL@aclnnSwiGlu",
            "pid": CANN_PID,
            "tid": OS_PID,
            "ts": ts,
            "dur": 6.0,
            "ph": "X",
            "args": {"Thread Id": OS_PID, "connection_id": 9},
        }
    if kind == "step":
        return {
            "ph": "X",
            "name": f"ProfilerStep#{draw(st.integers(0, 3))}",
            "pid": OS_PID,
            "tid": OS_PID,
            "ts": ts,
            "dur": 9.0,
            "args": {},
        }
    if kind == "flow":
        return {"ph": "s", "name": "HostToDevice", "id": "77", "pid": CANN_PID, "tid": 1, "ts": ts}
    # A canonical task event nested in another event, and a task spelled with escapes.
    return {
        "ph": "X",
        "name": "wrapper",
        "pid": HW_PID,
        "tid": 2,
        "ts": ts,
        "dur": 1,
        "args": {"list": [1, _hw("nested", "CMO", 2, ts, 1.0, 1), _hw("n2", "CMO", 2, ts, 1.0, 2)]},
    }


def _dump(events: list[dict[str, Any]], layout: str) -> str:
    if layout == "spaced":
        return "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n]\n"
    if layout == "compact":
        return json.dumps(events, separators=(",", ":"), ensure_ascii=False)
    if layout == "ascii":
        return json.dumps(events)
    return json.dumps(events, indent=1)


FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(
    events=st.lists(_event(), min_size=1, max_size=80),
    meta_at=st.integers(0, 80),
    layout=st.sampled_from(["spaced", "spaced", "compact", "ascii", "indent"]),
    chunk=st.sampled_from([64, 200, 1000, 1 << 20]),
    escape_key=st.booleans(),
)
def test_paths_agree(
    tmp_path: Path,
    events: list[dict[str, Any]],
    meta_at: int,
    layout: str,
    chunk: int,
    escape_key: bool,
) -> None:
    evs = events[:meta_at] + META + events[meta_at:]
    text = _dump(evs, layout)
    if escape_key:  # a key spelled with an escape is still the key
        text = text.replace('"Task Type"', '"Task\\u0020Type"', 1)
    f = tmp_path / "trace_view.json"
    f.write_text(text, encoding="utf-8")
    _same(f, chunk)


@FAST
@given(
    events=st.lists(_event(), min_size=1, max_size=30),
    cut=st.integers(0, 10_000),
    chunk=st.sampled_from([64, 300, 1 << 20]),
)
def test_paths_agree_on_truncated_files(
    tmp_path: Path, events: list[dict[str, Any]], cut: int, chunk: int
) -> None:
    raw = _dump(META + events, "spaced").encode()
    f = tmp_path / "trace_view.json"
    f.write_bytes(raw[: cut % (len(raw) + 1)])
    _same(f, chunk)


def test_large_canonical_file_uses_the_whole_chunk_path(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    for i in range(3000):
        events.append(
            {
                "ph": "X",
                "name": "npu::npu_swiglu",
                "pid": OS_PID,
                "tid": OS_PID,
                "ts": f"{T0 + i}.000",
                "dur": 9.0,
                "cat": "cpu_op",
                "args": {"Input Dims": "[[1]]"},
            }
        )
        events.append(
            _hw(
                "aclnnSwiGlu_SwiGlu_SwiGlu",
                "AI_VECTOR_CORE",
                2,
                f"{T0 + i}.250",
                0.45077999999999996,
                i,
            )
        )
        if i % 500 == 0:
            events.append(
                {
                    "ph": "X",
                    "name": f"ProfilerStep#{i}",
                    "pid": OS_PID,
                    "tid": OS_PID,
                    "ts": f"{T0 + i}.000",
                    "dur": 9.0,
                    "args": {},
                }
            )
    f = tmp_path / "trace_view.json"
    f.write_text(_dump(events + META, "spaced"))
    used: list[bool] = []
    bulk = tv._Reader.bulk

    def spy(self: tv._Reader, text: str, pos: int) -> int | None:
        out = bulk(self, text, pos)
        used.append(out is not None)
        return out

    tv._Reader.bulk = spy  # type: ignore[method-assign]
    try:
        with _mode("bulk", 64 << 10):
            p = tv.read_trace_view(f)
    finally:
        tv._Reader.bulk = bulk  # type: ignore[method-assign]
    assert used and all(used)
    assert len(p.tasks) == 3000 and p.steps == 6
    assert p.tasks["end_ns"].iloc[0] - p.tasks["start_ns"].iloc[0] == 451
    assert set(p.tasks["device"]) == {3}
    _same(f, 64 << 10)


@pytest.mark.parametrize(
    "text",
    [
        # A task nested in an array of another event, preceded by a non-object element.
        '[{"ph":"X","name":"w","pid":1,"tid":1,"ts":"1.000","dur":1,"args":{"a":[1,'
        + ",".join(
            json.dumps(_hw("n", "CMO", 2, "2.000", 1.0, 1), separators=(",", ":")) for _ in range(3)
        )
        + "]}}, {}]",
        # A string holding a brace right before a task.
        '[{"ph":"X","name":"}","pid":1,"args":{}}, '
        + json.dumps(_hw("n", "CMO", 2, "2.000", 1.0, 1))
        + "]",
    ],
)
def test_nested_or_quoted_tasks(tmp_path: Path, text: str) -> None:
    f = tmp_path / "trace_view.json"
    evs = json.loads(text)
    f.write_text(json.dumps(evs[:-1] + META + evs[-1:], separators=(",", ":")))
    _same(f, 1 << 20)


def _canonical_file(tmp_path: Path, hw: list[dict[str, Any]]) -> str:
    events: list[dict[str, Any]] = [*META]
    for i in range(40):
        events.append(_hw("k", "AI_CORE", 2, f"{T0 + i}.000", 1.0, i))
    return _dump(events + hw + events[3:], "spaced")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            '"pid": 4344259, "tid": 2, "ts": "1776130000000005',
            '"pid": 04344259, "tid": 2, "ts": "1776130000000005',
        ),
        ('"connection_id": 7}', '"connection_id": 007}'),
        (
            '"name": "k", "pid": 4344259, "tid": 2, "ts": "1776130000000009',
            '"name": "k\x01", "pid": 4344259, "tid": 2, "ts": "1776130000000009',
        ),
        (
            '"Task Type": "AI_CORE", "Physic Stream Id": 2, "Task Id": 7',
            '"Task Type": "AI\nCORE", "Physic Stream Id": 2, "Task Id": 7',
        ),
        ('"Task Id": 7', '"Task Id": 07'),
        ('"ts": "1776130000000003.000", "dur": 1.0', '"ts": "1776130000000003.000", "dur": -1.0'),
        # A task whose keys are spelled with escapes, and an escaped quote in a name.
        (
            '"Task Type": "AI_CORE", "Physic Stream Id": 2, "Task Id": 7, "Batch Id": 0, '
            '"Subtask Id": 4294967295, "connection_id": 5}',
            '"Task\\u0020Type": "AI_CORE", "Physic Stream\\u0020Id": 2, "Task Id": 7, '
            '"Batch Id": 0, "Subtask Id": 4294967295, "connection_id": 5}',
        ),
        ('"name": "process_name", "pid": 4344063', '"name": "process\\u005fname", "pid": 4344063'),
        (
            '"name": "k", "pid": 4344259, "tid": 2, "ts": "1776130000000009',
            '"name": "k\\"", "pid": 4344259, "tid": 2, "ts": "1776130000000009',
        ),
        ('"connection_id": 3}', '"connection_id": 9223372036854775807}'),
        (
            '"pid": 4344259, "tid": 2, "ts": "1776130000000004',
            '"pid": 4344259, "tid": 9223372036854775807, "ts": "1776130000000004',
        ),
        ('"ts": "1776130000000004.000"', '"ts": "9223372036854775.807"'),
        ('"ts": "1776130000000004.000"', '"ts": "9223372036854774.807"'),
        ('"dur": 1.0, "ph"', '"dur": 1e400, "ph"'),
        # Durations around 2**63 ns: beyond the int64 maximum once added to the start.
        ('"dur": 1.0, "ph"', '"dur": 9223372036854775.0, "ph"'),
        ('"dur": 1.0, "ph"', '"dur": 9223372036854776.0, "ph"'),
        ('"dur": 1.0, "ph"', '"dur": 7447242036854775.0, "ph"'),
    ],
)
def test_bulk_edge_values_match_exact(tmp_path: Path, old: str, new: str) -> None:
    """Invalid JSON and out-of-range values inside otherwise canonical task events."""
    text = _canonical_file(tmp_path, [])
    assert old in text
    f = tmp_path / "trace_view.json"
    f.write_text(text.replace(old, new, 1))
    _same(f, 1 << 20)


def test_duration_beyond_2_pow_62_ns_is_kept(tmp_path: Path) -> None:
    """A canonical task lasting 9.2e15 µs (9.2e18 ns: above 2**62, below the int64 maximum once
    added to its start) is a valid row on the exact path, so the whole-chunk path keeps it too."""
    long_task = _hw("long", "AI_VECTOR_CORE", 2, "17669.780", 9.2e15, 5)
    f = tmp_path / "trace_view.json"
    f.write_text(_canonical_file(tmp_path, [long_task]))
    p = tv.read_trace_view(f)
    row = p.tasks[p.tasks["name"] == "long"]
    assert len(row) == 1
    assert int(row["start_ns"].iloc[0]) == 17_669_780
    assert int(row["end_ns"].iloc[0]) == 17_669_780 + 9_200_000_000_000_000_000
    assert p.warnings == []
    _same(f, 1 << 20)
