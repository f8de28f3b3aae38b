"""trace_view.json reader: exact ns, both namings, truncation, bad input, fuzzing."""

import contextlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune.errors import AutotuneError
from autotune.profile.trace_view import read_trace_view, us_to_ns

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
CUR = PROFILES / "dense_current_ascend_pt/ASCEND_PROFILER_OUTPUT/trace_view.json"
LEG = PROFILES / "dense_legacy_ascend_pt/ASCEND_PROFILER_OUTPUT/trace_view.json"
TRUNC = PROFILES / "truncated_ascend_pt/ASCEND_PROFILER_OUTPUT/trace_view.json"
T0 = 1_776_130_000_000_000_000


def test_us_to_ns_is_exact() -> None:
    assert us_to_ns("1776130000123456.789") == 1_776_130_000_123_456_789
    assert us_to_ns("17669.780\t") == 17_669_780
    assert us_to_ns("1.5") == 1500 and us_to_ns("2") == 2000 and us_to_ns("1.23456") == 1234
    assert us_to_ns(12) == 12_000 and us_to_ns(1.5) == 1500
    assert us_to_ns("abc") is None and us_to_ns(None) is None and us_to_ns(True) is None


def test_current_sample() -> None:
    p = read_trace_view(CUR)
    t = p.tasks
    assert len(t) == 84 and p.steps == 2 and p.warnings == []
    assert set(t["device"]) == {0} and set(t["stream"]) == {2, 7}
    cmo = t[t["name"] == "CMO"].sort_values("start_ns")
    assert cmo["start_ns"].tolist()[:3] == [T0 + 20_500, T0 + 96_500, T0 + 133_500]
    assert cmo["end_ns"].tolist()[:3] == [T0 + 25_500, T0 + 102_500, T0 + 148_500]
    assert (cmo["connection_id"] > 5000).all()
    assert all(str(t[c].dtype) == "int64" for c in ("device", "stream", "start_ns", "end_ns"))


def test_legacy_sample() -> None:
    p = read_trace_view(LEG)
    t = p.tasks
    assert len(t) == 43 and p.steps is None
    assert sorted(set(t["type"])) == [
        "COMMUNICATION",
        "EVENT_RECORD_SQE",
        "EVENT_WAIT_SQE",
        "KERNEL_AICORE",
        "KERNEL_AIVEC",
        "SDMA_SQE",
    ]
    sdma = t[t["type"] == "SDMA_SQE"].sort_values("start_ns")
    assert sdma["start_ns"].iloc[0] == T0 + 20_500
    assert sdma[sdma["stream"] == 2]["start_ns"].tolist() == [T0 + 246_000]


def test_truncated_sample() -> None:
    p = read_trace_view(TRUNC)
    assert len(p.tasks) == 42 and p.steps == 2
    assert len(p.warnings) == 1 and "cut off" in p.warnings[0] and str(TRUNC) in p.warnings[0]


def _events() -> list[dict[str, object]]:
    return json.loads(CUR.read_text())  # type: ignore[no-any-return]


def test_metadata_after_events_and_other_layouts(tmp_path: Path) -> None:
    ev = _events()
    meta = [e for e in ev if e.get("ph") == "M"]
    rest = [e for e in ev if e.get("ph") != "M"]
    ref = read_trace_view(CUR).tasks.sort_values(["start_ns", "stream"]).reset_index(drop=True)
    for text in (
        json.dumps(rest + meta),
        json.dumps(rest + meta, separators=(",", ":")),
        json.dumps(rest + meta, indent=2),
    ):
        f = tmp_path / "trace_view.json"
        f.write_text(text)
        got = read_trace_view(f).tasks.sort_values(["start_ns", "stream"]).reset_index(drop=True)
        assert got.equals(ref)


def test_large_file_fast_path_matches_exact(tmp_path: Path) -> None:
    import autotune.profile.trace_view as tv

    ev = _events()
    hw = [e for e in ev if e.get("ph") == "X" and "Task Type" in e.get("args", {})]  # type: ignore[operator]
    big = [e for e in ev if e.get("ph") == "M"] + hw * 400
    f = tmp_path / "trace_view.json"
    f.write_text(json.dumps(big))
    old = tv.CHUNK_BYTES
    try:
        tv.CHUNK_BYTES = 64 << 10
        fast = read_trace_view(f).tasks
    finally:
        tv.CHUNK_BYTES = old
    assert len(fast) == len(hw) * 400
    assert fast.equals(read_trace_view(f).tasks)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"traceEvents": []}', "expected a JSON array"),
        ("hello", "not JSON"),
        ("", "empty file"),
        ("[]", "no Ascend Hardware"),
        ('[{"ph":"M","name":"process_name","pid":1,"args":{"name":"Python"}}]', "no Ascend"),
        ("[1, 2, }", "invalid JSON"),
    ],
)
def test_bad_input(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "trace_view.json"
    f.write_text(text)
    with pytest.raises(AutotuneError, match=match) as e:
        read_trace_view(f)
    assert str(f) in str(e.value)


def _check(path: Path) -> None:
    with contextlib.suppress(AutotuneError):
        read_trace_view(path)


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
RAW = CUR.read_bytes()


@FUZZ
@given(cut=st.integers(0, len(RAW)))
def test_fuzz_truncation(tmp_path: Path, cut: int) -> None:
    f = tmp_path / "trace_view.json"
    f.write_bytes(RAW[:cut])
    _check(f)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(RAW) - 1), st.integers(0, 255)), max_size=8))
def test_fuzz_byte_flips(tmp_path: Path, flips: list[tuple[int, int]]) -> None:
    b = bytearray(RAW)
    for i, v in flips:
        b[i] = v
    f = tmp_path / "trace_view.json"
    f.write_bytes(bytes(b))
    _check(f)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_shuffled_order_same_tasks(tmp_path: Path, seed: int) -> None:
    ev = _events()
    random.Random(seed).shuffle(ev)
    f = tmp_path / "trace_view.json"
    f.write_text(json.dumps(ev))
    t = read_trace_view(f).tasks
    assert sorted(t["start_ns"]) == sorted(read_trace_view(CUR).tasks["start_ns"])


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FUZZ
@given(
    data=st.lists(
        st.tuples(
            st.integers(0, 83),
            st.sampled_from(["name", "pid", "tid", "ts", "dur", "ph", "args", "Task Type"]),
            VALUES,
        ),
        max_size=6,
    )
)
def test_fuzz_wrong_types(tmp_path: Path, data: list[tuple[int, str, object]]) -> None:
    ev = _events()
    hw = [e for e in ev if e.get("ph") == "X" and e.get("pid") != 4242]
    for i, key, value in data:
        e = hw[i % len(hw)]
        if key == "Task Type":
            args = e.get("args")
            if isinstance(args, dict):
                args[key] = value
        else:
            e[key] = value
    f = tmp_path / "trace_view.json"
    f.write_text(json.dumps(ev))
    _check(f)
