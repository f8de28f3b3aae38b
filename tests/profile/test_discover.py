"""Finding profiler output: rank/level/simulated from profiler_info, db preferred, bad paths."""

import json
import shutil
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.profile import load_profiles
from autotune.profile.discover import discover

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def test_ascend_pt_dir_and_output_dir() -> None:
    (f,) = discover(PROFILES / "dense_current_ascend_pt")
    assert (f.source, f.rank, f.level, f.simulated) == ("trace_view", 0, "Level1", False)
    assert f.kernel_details is not None
    (g,) = discover(PROFILES / "dense_current_ascend_pt" / "ASCEND_PROFILER_OUTPUT")
    assert g.file == f.file


def test_rank_from_file_name_and_string_rank() -> None:
    (f,) = discover(PROFILES / "dense_legacy_ascend_pt")
    assert (f.rank, f.level) == (1, "Level0")


def test_parent_dir_finds_every_profile_at_any_depth() -> None:
    found = discover(PROFILES)
    assert [(f.rank, f.root.relative_to(PROFILES).as_posix()) for f in found] == [
        (0, "dense_current_ascend_pt"),
        (0, "dense_db_ascend_pt"),
        (0, "matmul_overlap_ascend_pt"),
        (0, "mindie_o_proj_ascend_pt"),
        (0, "real_910b_level1/db/rank0_ascend_pt"),
        (0, "real_910b_level1/text/rank0_ascend_pt"),
        (0, "sglang_qwen3_ascend_pt"),
        (0, "truncated_ascend_pt"),
        (0, "two_streams_ascend_pt"),
        (1, "dense_legacy_ascend_pt"),
        (1, "real_910b_level1/db/rank1_ascend_pt"),
        (1, "real_910b_level1/text/rank1_ascend_pt"),
    ]
    assert [f.source for f in found][1] == "db"


def test_nested_run_dir_layout(tmp_path: Path) -> None:
    # A run dir keeps each trial's profile at trials/NNN/profile/<x>_ascend_pt.
    deep = tmp_path / "run" / "trials" / "003" / "profile"
    deep.mkdir(parents=True)
    shutil.copytree(PROFILES / "dense_current_ascend_pt", deep / "a_1_2_ascend_pt")
    for path in (tmp_path / "run", tmp_path / "run" / "trials", deep.parent):
        (f,) = discover(path)
        assert f.root == deep / "a_1_2_ascend_pt" and f.source == "trace_view"


def test_db_preferred_and_simulated(tmp_path: Path) -> None:
    root = tmp_path / "x_1_2_ascend_pt"
    shutil.copytree(PROFILES / "dense_db_ascend_pt", root)
    shutil.copy(
        PROFILES / "dense_current_ascend_pt/ASCEND_PROFILER_OUTPUT/trace_view.json",
        root / "ASCEND_PROFILER_OUTPUT",
    )
    info = root / "profiler_info_0.json"
    data = json.loads(info.read_text())
    data["autotune_simulated"] = True
    info.rename(root / "profiler_info.json")
    data["rank_id"] = "3"
    (root / "profiler_info.json").write_text(json.dumps(data))
    (f,) = discover(root)
    assert (f.source, f.rank, f.simulated) == ("db", 3, True)
    (p,) = load_profiles(root)
    assert p.simulated and p.source == "db" and p.rank == 3


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="no such file"):
        discover(tmp_path / "missing")
    with pytest.raises(AutotuneError, match="no profiler output"):
        discover(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(AutotuneError, match="not a profiler output"):
        discover(tmp_path / "notes.txt")


def test_same_rank_read_twice_is_warned_once() -> None:
    from autotune.overlap import analyze

    # real_910b_level1 holds two captures of the same two ranks (text and db): their
    # profiler_info files record other start counters and end times, so they are not one.
    found = discover(PROFILES / "real_910b_level1")
    assert [f.also for f in found] == [()] * 4
    assert found[0].capture != found[1].capture and found[0].rank == found[1].rank == 0
    profiles = load_profiles(PROFILES / "real_910b_level1")
    assert [p.rank for p in profiles] == [0, 0, 1, 1]
    warned = [w for w in analyze(profiles).warnings if "was read 2 times" in w]
    assert [w.split(" was")[0] for w in warned] == ["rank 0", "rank 1"]
    assert all("different start and end times" in w for w in warned)
    (single,) = load_profiles(PROFILES / "real_910b_level1" / "db" / "rank0_ascend_pt")
    assert not any("was read" in w for w in single.warnings)


def _export(capture: Path, dest: Path, keep: tuple[str, ...]) -> Path:
    """A copy of `capture` whose ASCEND_PROFILER_OUTPUT holds only `keep`, as torch_npu's offline
    analyse() with one export type leaves a copy: profiler_info_*.json is not rewritten."""
    shutil.copytree(capture, dest)
    for f in (dest / "ASCEND_PROFILER_OUTPUT").iterdir():
        if f.name not in keep:
            f.unlink()
    return dest


def test_one_capture_exported_twice_is_found_once_preferring_the_db(tmp_path: Path) -> None:
    # dense_db_ascend_pt is the db export of dense_current_ascend_pt's capture (profiles/README).
    text = _export(
        PROFILES / "dense_current_ascend_pt",
        tmp_path / "text" / "x_ascend_pt",
        ("trace_view.json", "kernel_details.csv"),
    )
    # The samples' profiler_info has no start or end times; a real capture's always has.
    info = json.loads((text / "profiler_info_0.json").read_text())
    info["start_info"] = {"syscnt_enable": True, "freq": 100, "start_cnt": 17238197612056}
    info["end_info"] = {"collectionTimeEnd": 1736408884023552840}
    (text / "profiler_info_0.json").write_text(json.dumps(info))
    db = tmp_path / "db" / "x_ascend_pt"
    shutil.copytree(PROFILES / "dense_db_ascend_pt", db)
    info["config"]["experimental_config"]["_export_type"] = ["db"]  # must not matter
    (db / "profiler_info_0.json").write_text(json.dumps(info))
    (f,) = discover(tmp_path)
    assert (f.source, f.root, f.also) == ("db", db, (text,))
    (p,) = load_profiles(tmp_path)
    assert any(f"{text} holds another export of the same capture" in w for w in p.warnings)

    # Without start or end times profiler_info names no capture: both are read.
    for path in (text / "profiler_info_0.json", db / "profiler_info_0.json"):
        data = json.loads(path.read_text())
        del data["start_info"], data["end_info"]
        path.write_text(json.dumps(data))
    assert [f.source for f in discover(tmp_path)] == ["db", "trace_view"]


def test_a_trace_view_file_comes_with_its_kernel_details() -> None:
    out = PROFILES / "dense_current_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
    (f,) = discover(out / "trace_view.json")
    assert f.kernel_details == out / "kernel_details.csv"
    (g,) = discover(out.parent)
    assert (f.root, f.file, f.kernel_details, f.rank) == (g.root, g.file, g.kernel_details, g.rank)
