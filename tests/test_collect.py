"""Locating a trial's *_ascend_pt output, or saying why the trial is unprofiled."""

from __future__ import annotations

from pathlib import Path

from autotune.workloads.collect import find_profile


def test_parsed_profile_is_found(tmp_path: Path) -> None:
    out = tmp_path / "prof" / "dp0_pp0_tp0_dcp0_ep0_rank0_1_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
    out.mkdir(parents=True)
    (out / "trace_view.json").write_text("[]")
    assert find_profile(tmp_path / "prof") == (tmp_path / "prof", "")


def test_cpu_trace_only(tmp_path: Path) -> None:
    prof = tmp_path / "prof"
    prof.mkdir()
    (prof / "123-rank-0.456.pt.trace.json.gz").write_bytes(b"")
    found, reason = find_profile(prof)
    assert found is None
    assert "no *_ascend_pt under prof/" in reason and "pt.trace.json.gz" in reason


def test_unparsed_profile_says_how_to_analyse_it(tmp_path: Path) -> None:
    rank = tmp_path / "prof" / "x_ascend_pt"
    (rank / "PROF_000001").mkdir(parents=True)
    found, reason = find_profile(tmp_path / "prof")
    assert found is None
    assert "has no parsed ASCEND_PROFILER_OUTPUT" in reason
    assert f"analyse('{rank}')" in reason and "autotune[npu]" in reason


def test_nothing_written(tmp_path: Path) -> None:
    assert find_profile(tmp_path / "prof")[1] == "the profiler wrote nothing (prof/ does not exist)"
