"""Reading a trace in parts across processes gives exactly the sequential reader's Profile."""

import itertools
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_trace_view_fast import META, T0, _dump, _event, _hw

import autotune.profile.trace_view as tv
from autotune.errors import AutotuneError
from autotune.profile import _parallel

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SAMPLES = [
    PROFILES / f"{name}_ascend_pt/ASCEND_PROFILER_OUTPUT/trace_view.json"
    for name in ("dense_current", "dense_legacy", "truncated")
]


@pytest.fixture(autouse=True)
def _small_files_in_parallel(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every file is large enough to split; chunks are small so each range has several."""
    monkeypatch.setattr(tv, "PART_MIN_BYTES", 0)
    monkeypatch.setattr(tv, "CHUNK_BYTES", 1 << 10)
    monkeypatch.delenv(_parallel.WORKERS_ENV, raising=False)
    yield


class _Spy:
    """Counts reads that took the parallel result (rather than falling back)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.used = 0
        self.fell_back = 0
        real = tv._read_parallel

        def spy(path: Path, size: int, n: int) -> tv._Reader | None:
            r = real(path, size, n)
            if r is None:
                self.fell_back += 1
            else:
                self.used += 1
            return r

        monkeypatch.setattr(tv, "_read_parallel", spy)


def _read(path: Path, workers: int) -> Any:
    try:
        p = tv.read_trace_view(path, workers=workers)
    except AutotuneError as exc:
        return str(exc)
    return p


def _same(path: Path, workers: int) -> None:
    """The parallel read equals the sequential one: same rows in the same order, same steps,
    same warnings, same error."""
    want = _read(path, 1)
    got = _read(path, workers)
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
        return
    pd.testing.assert_frame_equal(got.tasks, want.tasks, check_exact=True)
    assert got.steps == want.steps
    assert got.warnings == want.warnings


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parts[-3])
def test_samples(sample: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    _same(sample, workers)
    if "truncated" in str(sample):
        assert spy.fell_back and not spy.used  # the warning's event count is the sequential one
    else:
        assert spy.used


def _canonical(n: int, name: str = "aclnnSwiGlu_SwiGlu_SwiGlu") -> list[dict[str, Any]]:
    return [_hw(name, "AI_VECTOR_CORE", 2 + i % 2, f"{T0 + i}.250", 0.5, i) for i in range(n)]


def test_metadata_after_events_and_steps_in_every_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _canonical(400)
    for k in range(0, 400, 50):
        step = {"ph": "X", "name": f"ProfilerStep#{k % 3}", "pid": 1, "tid": 1, "ts": "1.000"}
        events.insert(k, step | {"dur": 1.0, "args": {}})
    f = tmp_path / "trace_view.json"
    f.write_text(_dump(events + META, "spaced"))
    spy = _Spy(monkeypatch)
    for workers in (2, 4):
        _same(f, workers)
    assert spy.used == 2
    p = tv.read_trace_view(f, workers=3)
    assert len(p.tasks) == 400 and p.steps == 3 and set(p.tasks["device"]) == {3}


def test_cut_inside_strings_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names that hold whole fake events (escaped quotes) and bare `}, {`: wherever the candidate
    separators land, the result is the sequential one."""
    fake = json.dumps(_hw("fake", "CMO", 9, "1.000", 1.0, 1))
    events = _canonical(60)
    for e in events[::3]:
        e["name"] = ("}, " + fake + ", {") * 20
    for e in events[1::3]:
        e["name"] = "}, {" * 200 + "\u4e2d\u00e9"
    f = tmp_path / "trace_view.json"
    f.write_text(_dump(META + events, "spaced"), encoding="utf-8")
    spy = _Spy(monkeypatch)
    for workers in (2, 3, 4):
        _same(f, workers)
    assert spy.fell_back  # some split point was inside a string


def test_split_points_are_candidate_separators(tmp_path: Path) -> None:
    f = tmp_path / "trace_view.json"
    f.write_text(_dump(META + _canonical(300, "n\u00e9on\u4e2d"), "compact"), encoding="utf-8")
    raw = f.read_bytes()
    ranges = _parallel.split(f, len(raw), 4)
    assert len(ranges) == 4 and ranges[0][0] == 0 and ranges[-1][1] == len(raw)
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert raw[end - 1 : end] == b"}" and raw[start : start + 1] == b"{"
        assert raw[end:start].strip(b" \t\n\r") == b","
        raw[start:].decode("utf-8")  # a character boundary


@pytest.mark.parametrize("workers", [2, 3])
def test_invalid_and_bad_files_give_the_same_error(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _dump(META + _canonical(100), "spaced")
    f = tmp_path / "trace_view.json"
    for bad in (
        text.replace('"dur": 0.5', '"dur": 0.5,,', 1),  # invalid JSON in the middle
        text.replace('"pid": 4344259, "tid": 3', '"pid": 4344259, "tid": 3,', 7),
        text.replace("\n]", "\n] x"),  # data after the closing bracket
        text[: len(text) // 2],  # cut off
        text[: len(text) // 2] + '"\\u00',
        text.replace('"Ascend Hardware"', '"CPU"'),  # no hardware process
        "[" + "\n" * 5000 + "]",
        text.replace('{"name": "process_name"', "[", 1),
    ):
        f.write_text(bad)
        _same(f, workers)


def test_workers_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "trace_view.json"
    f.write_text(_dump(META + _canonical(200), "spaced"))
    spy = _Spy(monkeypatch)
    monkeypatch.setenv(_parallel.WORKERS_ENV, "1")
    tv.read_trace_view(f)
    assert spy.used == spy.fell_back == 0
    monkeypatch.setenv(_parallel.WORKERS_ENV, "3")
    tv.read_trace_view(f)
    assert spy.used == 1
    tv.read_trace_view(f, workers=1)  # the keyword wins
    assert spy.used == 1
    monkeypatch.setenv(_parallel.WORKERS_ENV, "many")
    with pytest.raises(AutotuneError, match=_parallel.WORKERS_ENV):
        tv.read_trace_view(f)
    monkeypatch.delenv(_parallel.WORKERS_ENV)
    assert 1 <= _parallel.workers(None) <= _parallel.MAX_WORKERS


def test_parts_are_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "trace_view.json"
    f.write_text(_dump(META + _canonical(200), "spaced"))
    size = f.stat().st_size
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(tv, "PART_MIN_BYTES", size // 2 + 1)  # too small for two parts
    tv.read_trace_view(f, workers=4)
    assert spy.used == spy.fell_back == 0
    monkeypatch.setattr(tv, "PART_MIN_BYTES", size // 3)
    calls: list[int] = []
    split = _parallel.split
    monkeypatch.setattr(_parallel, "split", lambda p, s, n: calls.append(n) or split(p, s, n))
    tv.read_trace_view(f, workers=4)
    assert calls == [3] and spy.used == 1


def _slow(k: int) -> int | None:
    if k == 0:
        raise KeyboardInterrupt
    time.sleep(60)
    return k


def test_interrupt_reaps_the_workers() -> None:
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _parallel.run_parts(_slow, [(0,), (1,), (2,)])
    assert time.perf_counter() - t0 < 20
    assert multiprocessing.active_children() == []


def _dies(k: int) -> int | None:
    if k:
        os._exit(3)  # a worker killed mid-read
    time.sleep(0.3)
    return k


def test_dead_worker_means_sequential() -> None:
    assert _parallel.run_parts(_dies, [(0,), (1,)]) is None
    assert multiprocessing.active_children() == []


PARALLEL = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LONG_NAMES = st.sampled_from(
    ["}, {" * 40, '}, {"name": "x"}, {' * 10, "\u4e2d" * 300, "n\u00e9on}, {\u4e2d" * 30]
)


@PARALLEL
@given(
    events=st.lists(_event(), min_size=1, max_size=60),
    long_names=st.lists(st.tuples(st.integers(0, 59), LONG_NAMES), max_size=6),
    meta_at=st.integers(0, 60),
    layout=st.sampled_from(["spaced", "compact", "ascii", "indent"]),
    workers=st.integers(2, 4),
    cut=st.one_of(st.none(), st.integers(0, 40_000)),
)
def test_parallel_agrees_with_sequential(
    tmp_path: Path,
    events: list[dict[str, Any]],
    long_names: list[tuple[int, str]],
    meta_at: int,
    layout: str,
    workers: int,
    cut: int | None,
) -> None:
    for i, name in long_names:
        events[i % len(events)]["name"] = name
    raw = _dump(events[:meta_at] + META + events[meta_at:], layout).encode()
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    f = tmp_path / "trace_view.json"
    f.write_bytes(raw)
    _same(f, workers)
