"""`autotune analyze`: clean errors, the JSON object, the terminal view of an OverlapResult, and
what it reads (one trial of a run, one capture exported twice, a file as its folder)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_vllm.fake_env import REPO_DATA, make_small_model
from rich.console import Console
from test_cli import autotune, one_error_line, succeeded
from test_overlap import Timeline, dense_layer, moe_layer
from typer.testing import CliRunner

from autotune.cli import app
from autotune.lateness import rule_text
from autotune.overlap import analyze
from autotune.report.terminal import SIMULATED, print_overlap
from autotune.rundir import load_run

runner = CliRunner()
PROFILES = Path(__file__).resolve().parent.parent / "profiles"

# profiles/README.md: site -> (count, late, hidden_fraction_median, slack_us_median, stall_us_total)
TWO_LAYERS = {
    "attn.qkv": (2, 0, 0.9, 1.5, 1.0),
    "attn.o": (4, 4, 0.6, -1.85, 9.0),
    "mlp.gate_up": (2, 0, 1.0, 4.5, 0.0),
    "mlp.down": (2, 0, 1.0, 0.5, 1.0),
}
ONE_LAYER = {
    "attn.qkv": (1, 0, 0.9, 1.5, 0.5),
    "attn.o": (2, 2, 0.6, -1.85, 4.5),
    "mlp.gate_up": (1, 0, 1.0, 4.5, 0.0),
    "mlp.down": (1, 0, 1.0, 0.5, 0.5),
}


def _one_clean_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_missing_path_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere_ascend_pt"
    result = runner.invoke(app, ["analyze", str(missing), "--json"])
    assert result.exit_code == 2
    line = _one_clean_line(result.output)
    assert line.startswith("error: ") and "nowhere_ascend_pt" in line


def test_negative_tolerance_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["analyze", str(tmp_path), "--tolerance-us", "-1"])
    assert result.exit_code == 2
    assert "--tolerance-us" in _one_clean_line(result.output)


@pytest.mark.parametrize(
    ("sample", "expected", "steps"),
    [
        ("dense_current_ascend_pt", TWO_LAYERS, 2),
        ("dense_db_ascend_pt", TWO_LAYERS, 2),
        ("dense_legacy_ascend_pt", ONE_LAYER, 1),
        # Both step markers come before the cut, but the file holds one complete step.
        ("truncated_ascend_pt", ONE_LAYER, 1),
    ],
)
def test_sample_profiles_per_site_numbers(
    sample: str, expected: dict[str, tuple[int, int, float, float, float]], steps: int
) -> None:
    result = runner.invoke(
        app, ["analyze", str(PROFILES / sample), "--json", "--tolerance-us", "0"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    got = {
        s["site"]: (
            s["count"],
            s["late"],
            s["hidden_fraction_median"],
            s["slack_us_median"],
            s["stall_us_total"],
        )
        for s in out["sites"]
    }
    assert got == expected
    assert out["steps"] == steps and out["unattributed"] == 0
    assert out["windows_without_prefetch"] == {}
    per_step = {s["site"]: s["stall_us_per_step"] for s in out["sites"]}
    assert per_step == {site: v[4] / steps for site, v in expected.items()}


def write_trace_view(root: Path, tl: Timeline, steps: int) -> Path:
    """`root/rank0_ascend_pt` holding a trace_view.json with tl's tasks and `steps` step markers."""
    out = root / "rank0_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
    out.mkdir(parents=True)
    events: list[dict[str, object]] = [
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "Ascend Hardware"}},
        {"ph": "M", "name": "process_labels", "pid": 7, "args": {"labels": "NPU 0"}},
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "Python"}},
    ]
    # Host step spans that cut the timeline into `steps` equal stretches.
    lo = min(r["start_ns"] for r in tl.rows)
    width = (max(r["end_ns"] for r in tl.rows) - lo) // max(steps, 1)
    for i in range(steps):
        b = lo + i * width
        events.append(
            {
                "ph": "X",
                "name": f"ProfilerStep#{i}",
                "pid": 1,
                "tid": 1,
                "ts": f"{b // 1000}.{b % 1000:03d}",
                "dur": width / 1000,
            }
        )
    for r in tl.rows:
        events.append(
            {
                "name": r["name"],
                "pid": 7,
                "tid": r["stream"],
                "ts": f"{r['start_ns'] // 1000}.{r['start_ns'] % 1000:03d}",
                "dur": (r["end_ns"] - r["start_ns"]) / 1000,
                "ph": "X",
                "args": {"Task Type": r["type"], "Stream Id": r["stream"], "connection_id": -1},
            }
        )
    (out / "trace_view.json").write_text(json.dumps(events), encoding="utf-8")
    return root


def test_json_output_through_the_reader(tmp_path: Path) -> None:
    tl = Timeline()
    for _ in range(2):
        dense_layer(tl, qkv=3, o=12, gate_up=100, down=5, o_down=2)
        tl.t += 300
    write_trace_view(tmp_path, tl, steps=2)
    result = runner.invoke(app, ["analyze", str(tmp_path), "--json", "--tolerance-us", "7"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) >= {
        "prefetches",
        "sites",
        "unattributed",
        "unclassified_types",
        "warnings",
        "steps",
        "simulated",
    }
    assert (out["prefetches"], out["unattributed"], out["steps"]) == (10, 0, 2)
    assert out["simulated"] is False and out["warnings"] == []
    by_site = {s["site"]: s for s in out["sites"]}
    assert list(by_site) == ["attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"]
    # attn.o: o_proj slack -7 µs (within the 7 µs tolerance), down_proj slack 3 µs.
    assert by_site["attn.o"]["count"] == 4 and by_site["attn.o"]["late"] == 0
    assert by_site["attn.o"]["slack_us_min"] == -7.0
    assert by_site["attn.o"]["stall_us_per_step"] == 9 + 1
    # The 24 µs join after SwiGlu, one layer per step: gate_up's CMO ends 16 µs into it, down's
    # bytes and the sync take the other 8.
    assert by_site["mlp.gate_up"]["stall_us_per_step"] == 16
    assert by_site["mlp.down"]["stall_us_per_step"] == 8
    assert by_site["mlp.gate_up"]["stall_us_total"] == 2 * 16
    assert by_site["mlp.down"]["verdict"] == "late" and by_site["attn.qkv"]["verdict"] == "hidden"


def test_terminal_and_html_output(tmp_path: Path) -> None:
    tl = Timeline()
    dense_layer(tl, qkv=3, o=12)
    write_trace_view(tmp_path / "in", tl, steps=1)
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["analyze", str(tmp_path / "in"), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "attn.o" in result.stdout and "late" in result.stdout
    assert page.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


def _render(simulated: bool) -> str:
    tl = Timeline()
    dense_layer(tl, qkv=3, o=12)
    moe_layer(tl)
    profile = tl.profile(steps=None, simulated=simulated, unclassified_types={"FANCY_NEW_SQE": 7})
    tl.issue(4)  # a trailing prefetch with no window after it
    profile.tasks = tl.tasks()
    console = Console(record=True, width=140, color_system=None)
    print_overlap(analyze([profile]), console)
    return console.export_text()


def _site_row(line: str, site: str) -> bool:
    """A row of the site table (site, then its count), not of the what-to-change table."""
    cells = line.replace("│", " ").split()
    return cells[:1] == [site] and len(cells) > 1 and cells[1].isdigit()


def test_terminal_view_shows_sites_and_leftovers() -> None:
    text = _render(simulated=False)
    assert SIMULATED not in text
    lines = text.splitlines()
    (qkv,) = [ln for ln in lines if _site_row(ln, "attn.qkv")]
    assert qkv.replace("│", " ").split() == [
        "attn.qkv",
        "1",
        "0",
        "100%",
        "2.0",
        "2.0",
        "1.0",
        "hidden",
    ]
    (o,) = [ln for ln in lines if _site_row(ln, "attn.o")]
    # One o_proj prefetch, late by 7 µs; the MoE layer's attn.o window had none.
    assert o.replace("│", " ").split() == ["attn.o", "1", "1", "42%", "-7.0", "-7.0", "9.0", "late"]
    (moe,) = [ln for ln in lines if _site_row(ln, "moe.gate_up")]
    assert moe.split()[-2] == "inert"
    assert "no step markers" in text
    assert "FANCY_NEW_SQE ×7" in text and "--rules" in text
    assert "1 prefetch(es) matched no window" in text
    assert (
        "windows without prefetch: attn.qkv ×1, attn.o ×2, mlp.gate_up ×2, mlp.down ×2, "
        "moe.gate_up ×1"
    ) in text


def test_terminal_view_says_simulated() -> None:
    assert SIMULATED in _render(simulated=True).splitlines()[0]


# ---- paths users pass, ranks, --by-rank ------------------------------------------------------


def _two_ranks(tmp_path: Path) -> Path:
    """A run-dir-like tree: trials/001/prof/{rank0,rank1}; rank 1's attn.o is 9 µs late."""
    base = tmp_path / "run" / "trials" / "001" / "prof"
    for rank, o in ((0, 3), (1, 14)):
        tl = Timeline(device=rank)
        dense_layer(tl, qkv=3, o=o)
        root = write_trace_view(base / f"r{rank}", tl, steps=1)
        (root / "rank0_ascend_pt" / f"profiler_info_{rank}.json").write_text("{}")
    return base


def test_any_folder_above_the_profiles_and_ranks_read(tmp_path: Path) -> None:
    _two_ranks(tmp_path)
    for path in (tmp_path / "run", tmp_path / "run" / "trials" / "001"):
        result = runner.invoke(app, ["analyze", str(path)])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("read 2 profile(s): rank 0 (trace_view")
        assert "; rank 1 (trace_view" in result.stdout
        out = json.loads(runner.invoke(app, ["analyze", str(path), "--json"]).stdout)
        assert [p["rank"] for p in out["profiles"]] == [0, 1]
        assert out["prefetches"] == 4


def test_file_paths_trace_view_and_db() -> None:
    for f in (
        PROFILES / "dense_current_ascend_pt/ASCEND_PROFILER_OUTPUT/trace_view.json",
        PROFILES / "dense_db_ascend_pt/ASCEND_PROFILER_OUTPUT/ascend_pytorch_profiler_0.db",
    ):
        out = json.loads(runner.invoke(app, ["analyze", str(f), "--json"]).stdout)
        assert out["prefetches"] == 10 and len(out["profiles"]) == 1


def test_by_rank_tables(tmp_path: Path) -> None:
    base = _two_ranks(tmp_path)
    result = runner.invoke(app, ["analyze", str(base), "--by-rank"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    r0, r1 = text.index("rank 0: Prefetch overlap"), text.index("rank 1: Prefetch overlap")
    assert r0 < r1
    # attn.o: hidden on rank 0 (slack 2 µs), late on rank 1 (slack -9 µs).
    assert "late" not in text[r0:r1].split("attn.o", 1)[1].splitlines()[0]
    assert "late" in text[r1:].split("attn.o", 1)[1].splitlines()[0]
    out = json.loads(runner.invoke(app, ["analyze", str(base), "--json", "--by-rank"]).stdout)
    verdicts = {r: {s["site"]: s["verdict"] for s in v["sites"]} for r, v in out["by_rank"].items()}
    inert = {"mlp.gate_up": "inert", "mlp.down": "inert"}
    assert verdicts == {
        "0": {"attn.qkv": "hidden", "attn.o": "hidden", **inert},
        "1": {"attn.qkv": "hidden", "attn.o": "late", **inert},
    }
    assert {s["site"]: s["verdict"] for s in out["sites"]}["attn.o"] in ("hidden", "late")


# ---- what is read: one trial of a run, one capture, a file as its folder ----------------------
# These run `autotune analyze` as a real process, as a user would.


def _json(*args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(succeeded(autotune("analyze", *args, "--json")).stdout)
    return data


def _sites(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["sites"])


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated run of Qwen3-32B-W8A8 with --keep-profiles best (the default).

    All 64 layers: a shorter model makes benches too short to tell trials apart, and the pick
    then keeps the baseline, leaving no best trial distinct from baseline and default."""
    root = tmp_path_factory.mktemp("analyze-run")
    model = REPO_DATA
    out = root / "runs" / "run"
    succeeded(
        autotune(
            "run", "--backend", "simulate", "--model", str(model), "--max-num-seqs", "72",
            "--no-graph-mode", "--trials", "6", "--profile-steps", "2", "--out", str(out),
        )
    )  # fmt: skip
    return out


def test_run_dir_reads_its_best_trial_and_says_so(sim_run: Path) -> None:
    record = load_run(sim_run)
    best = record.best_trial
    assert best is not None and best.role not in ("baseline", "default")
    assert {0, 1, best.number} <= set(record.profiles)  # baseline, default, best kept
    result = succeeded(autotune("analyze", str(sim_run), "--json"))
    doc = json.loads(result.stdout)
    assert doc["trial"] == {"number": best.number, "role": best.role, "best": True}
    (profile,) = doc["profiles"]
    assert Path(profile["path"]).is_relative_to(sim_run / "trials" / f"{best.number:03d}")
    assert f"trial {best.number:03d} ({best.role}, the best trial; --trial N reads another)" in (
        result.stderr
    )
    # The same verdict as the best trial's own folder, and no pooled warning.
    assert _sites(doc) == _sites(_json(str(sim_run / "trials" / f"{best.number:03d}")))
    assert not any("was read" in w for w in doc["warnings"])
    text = succeeded(autotune("analyze", str(sim_run))).stdout
    assert text.startswith("read 1 profile(s): rank 0 (db")


def test_trial_option_reads_another_trial(sim_run: Path) -> None:
    doc = _json(str(sim_run), "--trial", "1")
    assert doc["trial"] == {"number": 1, "role": "default", "best": False}
    assert _sites(doc) == _sites(_json(str(sim_run / "trials" / "001")))
    # The baseline has prefetch off: no prefetch, not the best trial's sites.
    assert _json(str(sim_run), "--trial", "0")["prefetches"] == 0


def test_profiles_of_several_trials_are_never_pooled(sim_run: Path) -> None:
    kept = len(load_run(sim_run).profiles)
    for folder in (sim_run / "trials", sim_run.parent):
        line = one_error_line(autotune("analyze", str(folder)))
        assert f"holds the profiles of {kept} trials" in line
        assert "each run with another config" in line
        assert "--trial N" in line


def test_a_trial_without_profile_says_why(sim_run: Path) -> None:
    pruned = next(
        t
        for t in load_run(sim_run).trials
        if t.state == "complete" and t.profile is None and not t.unprofiled
    )
    why = (
        "its profile was removed after the run (--keep-profiles best: only the baseline, vendor "
        "default and best trials keep theirs)"
    )
    folder = sim_run / "trials" / f"{pruned.number:03d}"
    assert why in one_error_line(autotune("analyze", str(folder)))
    line = one_error_line(autotune("analyze", str(sim_run), "--trial", str(pruned.number)))
    assert why in line and "trials with a profile: 000, 001" in line
    assert "holds no trial 99" in one_error_line(autotune("analyze", str(sim_run), "--trial", "99"))
    sample = PROFILES / "dense_current_ascend_pt"
    line = one_error_line(autotune("analyze", str(sample), "--trial", "1"))
    assert "is not a run directory" in line


def test_output_files_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    sample = str(PROFILES / "dense_current_ascend_pt")
    missing = tmp_path / "nonexistent"
    for flag, name in (("--tasks", "t.csv"), ("--html", "r.html")):
        line = one_error_line(autotune("analyze", sample, flag, str(missing / name)))
        assert f"{flag} {missing / name}: the folder {missing} does not exist" in line
        assert not missing.exists()
        assert "is a directory" in one_error_line(autotune("analyze", sample, flag, str(tmp_path)))


def test_a_trace_view_file_reads_the_kernel_details_beside_it(tmp_path: Path) -> None:
    capture = PROFILES / "real_910b_level1" / "text" / "rank0_ascend_pt"
    tables = {}
    for name, path in (
        ("folder", capture),
        ("file", capture / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"),
    ):
        out = tmp_path / f"{name}.csv"
        succeeded(autotune("analyze", str(path), "--tasks", str(out)))
        tables[name] = out.read_text()
    assert tables["file"] == tables["folder"]
    rows = list(csv.DictReader(io.StringIO(tables["file"])))
    # profiles/real_910b_level1: 535 device tasks; kernel_details.csv names the op of 187.
    assert len(rows) == 535 and sum(1 for r in rows if r["op_type"]) == 187


def _exported_twice(tmp_path: Path) -> tuple[Path, Path]:
    """One simulated capture as two folders, text and db, as torch_npu's offline analyse() run
    on a copy with the other export type leaves them: profiler_info_0.json copied unchanged
    (here its export type is set to db too, which must not matter)."""
    sim = tmp_path / "sim"
    succeeded(
        autotune(
            "simulate", "--model", str(make_small_model(tmp_path / "model")), "--max-num-seqs",
            "72", "--steps", "2", "--out", str(sim),
        )
    )  # fmt: skip
    (pt,) = (sim / "prof").glob("*_ascend_pt")
    both = tmp_path / "both"
    text, db = both / "text" / pt.name, both / "db" / pt.name
    shutil.copytree(pt, text)
    shutil.copytree(pt, db)
    for f in (text / "ASCEND_PROFILER_OUTPUT").glob("*.db"):
        f.unlink()
    for name in ("trace_view.json", "kernel_details.csv"):
        (db / "ASCEND_PROFILER_OUTPUT" / name).unlink()
    info = db / "profiler_info_0.json"
    data = json.loads(info.read_text())
    data["config"]["experimental_config"]["_export_type"] = ["db"]
    info.write_text(json.dumps(data, indent=2))
    return both, pt


def test_one_capture_exported_twice_is_read_once_from_the_db(tmp_path: Path) -> None:
    both, original = _exported_twice(tmp_path)
    doc = _json(str(both))
    (profile,) = doc["profiles"]
    assert profile["source"] == "db" and Path(profile["path"]) == both / "db" / original.name
    single = _json(str(original))
    assert profile["tasks"] == single["profiles"][0]["tasks"]
    assert (doc["prefetches"], _sites(doc)) == (single["prefetches"], _sites(single))
    (note,) = [w for w in doc["warnings"] if "same capture" in w]
    assert str(both / "text" / original.name) in note and "read once, from" in note
    assert not any("was read" in w for w in doc["warnings"])

    # Another capture of the same rank (another start time) is not the same capture: pooled.
    info = both / "text" / original.name / "profiler_info_0.json"
    data = json.loads(info.read_text())
    data["start_info"]["collectionTimeBegin"] += 1
    info.write_text(json.dumps(data))
    doc = _json(str(both))
    assert [p["source"] for p in doc["profiles"]] == ["db", "trace_view"]
    assert any("rank 0 was read 2 times: separate captures" in w for w in doc["warnings"])


def test_real_captures_of_one_rank_stay_separate() -> None:
    """profiles/real_910b_level1: text and db are two captures (start counters and end times
    differ by 28 minutes), so they are pooled, and the warning says why."""
    doc = _json(str(PROFILES / "real_910b_level1"))
    assert [(p["rank"], p["source"]) for p in doc["profiles"]] == [
        (0, "db"),
        (0, "trace_view"),
        (1, "db"),
        (1, "trace_view"),
    ]
    pooled = [w for w in doc["warnings"] if "separate captures" in w]
    assert len(pooled) == 2 and all("different start and end times" in w for w in pooled)


# Makes importing one module of the HTML report fail, as a broken install would.
_BROKEN_SVG = """
import sys
class Broken:
    def find_spec(self, name, path=None, target=None):
        if name == "autotune.report.svg":
            raise ImportError("svg.py is broken")
sys.meta_path.insert(0, Broken())
from autotune.cli import main
sys.argv = ["autotune", *sys.argv[1:]]
main()
"""


def test_a_broken_html_module_is_not_called_unavailable(tmp_path: Path) -> None:
    sample = str(PROFILES / "dense_current_ascend_pt")
    result = subprocess.run(
        [sys.executable, "-c", _BROKEN_SVG, "analyze", sample, "--html", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "not available" not in result.stderr
    assert "ImportError: svg.py is broken" in result.stderr


def test_html_report_replaces_the_old_one_whole(tmp_path: Path) -> None:
    """A reader holding the old report keeps reading it whole: a new file is renamed over it."""
    page = tmp_path / "report.html"
    sample = str(PROFILES / "dense_current_ascend_pt")
    succeeded(autotune("analyze", sample, "--html", str(page)))
    old = page.read_text()
    with page.open(encoding="utf-8") as reader:
        legacy = str(PROFILES / "dense_legacy_ascend_pt")
        succeeded(autotune("analyze", legacy, "--html", str(page)))
        assert reader.read() == old
    assert page.read_text() != old
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# ---- the vendor's criterion by default -------------------------------------------------------


def test_a_cmo_ending_after_its_swiglu_is_late_by_default(tmp_path: Path) -> None:
    # A down_proj CMO that ends 1.5 µs after its SwiGLU and stalls the join 1.7 µs is late.
    tl = Timeline()
    us = 1000

    def row(stream: int, role: str, op: str, ttype: str, start: float, end: float) -> None:
        tl.rows.append(
            {"device": 0, "stream": stream, "name": op or ttype, "type": ttype, "op_type": op,
             "start_ns": round(start * us), "end_ns": round(end * us), "connection_id": -1,
             "source": "db", "role": role}
        )  # fmt: skip

    row(2, "cube", "FusedInferAttentionScore", "AI_CORE", 0, 30)
    row(2, "cube", "QuantBatchMatmulV3", "AI_CORE", 30, 70)
    row(2, "record", "", "EVENT_RECORD", 70, 70.1)
    row(9, "wait", "", "EVENT_WAIT", 69, 70.2)
    row(9, "prefetch", "", "CMO", 70.2, 79.7)
    row(9, "record", "", "EVENT_RECORD", 79.8, 79.9)
    row(2, "vector:swiglu", "SwiGlu", "AI_VECTOR_CORE", 70.2, 78.2)
    row(2, "wait", "", "EVENT_WAIT", 78.2, 79.9)
    row(2, "cube", "QuantBatchMatmulV3", "AI_CORE", 79.9, 110)
    write_trace_view(tmp_path, tl, steps=1)
    out = json.loads(runner.invoke(app, ["analyze", str(tmp_path), "--json"]).stdout)
    (down,) = out["sites"]
    assert (down["site"], down["slack_us_median"], down["stall_us_total"]) == (
        "mlp.down",
        -1.5,
        1.7,
    )
    assert (down["late"], down["verdict"]) == (1, "late")
    assert out["late_tolerance_us"] == 0.0 and "ends after its window" in out["late_rule"]
    # A tolerance is the user's choice, and stated.
    lax = json.loads(
        runner.invoke(app, ["analyze", str(tmp_path), "--json", "--tolerance-us", "2"]).stdout
    )
    assert (lax["sites"][0]["verdict"], lax["late_rule"]) == (
        "hidden",
        "late = median slack below −2 µs (tolerance 2 µs)",
    )


@pytest.mark.parametrize("ideal", [False, True])
def test_simulate_and_analyze_count_the_same_late_prefetches(tmp_path: Path, ideal: bool) -> None:
    # attn.o at 0.2 also fires on down_proj (eager: every dense site fires), where half its
    # prefetches end less than 2 µs after their quantize. The simulator counts its own truth per
    # prefetch, analyze what the profile shows, both by autotune.lateness: they count alike.
    cfg = {
        "weight_prefetch_config": {
            "enabled": True,
            "prefetch_ratio": {
                "attn": {"qkv": 0.2, "o": 0.2},
                "mlp": {"gate_up": 0.2, "down": 0.05},
                "moe": {"gate_up": 0.0},
            },
        },
        "enable_flashcomm1": True,
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    sim = autotune(
        "simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--config", "cfg.json",
        "--steps", "1", "--no-graph-mode", "--out", "sim", *(["--ideal"] if ideal else []),
        cwd=tmp_path,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    (line,) = [ln for ln in sim.stdout.splitlines() if ln.startswith("profile")]
    simulated = {
        site: (int(late), int(n)) for site, late, n in re.findall(r"(\S+) (\d+)/(\d+) late", line)
    }
    assert 0 < simulated["attn.o"][0] < simulated["attn.o"][1]
    assert rule_text(0.0) in sim.stdout
    ana = autotune("analyze", "sim", "--json", cwd=tmp_path)
    assert ana.returncode == 0, ana.stderr
    doc = json.loads(ana.stdout)
    assert doc["late_rule"] == rule_text(0.0)
    analysed = {s["site"]: (s["late"], s["count"]) for s in doc["sites"]}
    assert analysed == simulated


# ---- other serving stacks --------------------------------------------------------------------

# Each fixture's README: point -> (count, late, slack_us_median, hidden_fraction_median,
# stall_us_total), and the layout `--layout auto` detects.
STACKS: dict[str, tuple[str, dict[str, tuple[int, int, float, float, float]]]] = {
    "sglang_qwen3_ascend_pt": (
        "sglang",
        {
            "HCCL → AddRmsNorm ⇒ MatMulV2 [1/2]": (4, 4, -33.9, 0.15, 0.0),
            "HCCL → AddRmsNorm ⇒ MatMulV2 [2/2]": (4, 4, -19.9, 0.005, 3.2),
        },
    ),
    "mindie_o_proj_ascend_pt": (
        "generic",
        {"KvRmsNormRopeCache → SparseFlashAttention ⇒ BatchMatMulV2": (4, 4, -4.1, 0.8292, 1.2)},
    ),
    "two_streams_ascend_pt": (
        "generic",
        {
            "step start → AddRmsNorm ⇒ MatMulV2": (2, 0, 1.3, 0.9571, 1.0),
            "AllReduce → AddRmsNorm ⇒ MatMulV2": (2, 0, 1.3, 0.9571, 1.0),
            "MatMulV2 → SwiGlu ⇒ MatMulV2": (4, 4, -2.9, 0.6667, 12.8),
        },
    ),
    "matmul_overlap_ascend_pt": (
        "generic",
        {"MatMulV2 → RmsNorm ⇒ MatMulV2": (4, 0, 3.8, 1.0, 3.2)},
    ),
}


@pytest.mark.parametrize("sample", sorted(STACKS))
def test_other_stacks_give_their_readme_numbers(sample: str) -> None:
    layout, expected = STACKS[sample]
    result = runner.invoke(app, ["analyze", str(PROFILES / sample), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["layout"] == layout and out["layout_reason"].startswith("auto: ")
    assert out["sites"] == [] and out["unattributed"] == 0
    got = {p["name"]: p for p in out["points"]}
    assert set(got) == set(expected)
    for name, (count, late, slack, hidden, stall) in expected.items():
        p = got[name]
        assert (p["count"], p["late"]) == (count, late), name
        assert p["slack_us_median"] == pytest.approx(slack, abs=0.05), name
        assert p["hidden_fraction_median"] == pytest.approx(hidden, abs=0.02), name
        assert p["stall_us_total"] == pytest.approx(stall, abs=0.05), name
        assert "site" not in p and p["change"]["estimate"] is True


def test_other_stacks_flags_and_knobs() -> None:
    def points(sample: str) -> dict[str, dict[str, object]]:
        out = json.loads(runner.invoke(app, ["analyze", str(PROFILES / sample), "--json"]).stdout)
        return {str(p["name"]): p for p in out["points"]}

    sglang = points("sglang_qwen3_ascend_pt")
    pair = [sglang[f"HCCL → AddRmsNorm ⇒ MatMulV2 [{k}/2]"] for k in (1, 2)]
    assert [p["weight"] for p in pair] == ["gate_up_proj", "down_proj"]
    assert [p["contention"] for p in pair] == [0, 4]  # down's window holds the gate_up matmul
    assert all(p["consumer_known"] for p in pair)
    change = pair[0]["change"]
    assert isinstance(change, dict) and change["setting"] == ""
    assert "whole weight" in str(change["knob"]) and "PREFETCH_MAX_SIZE" in str(change["knob"])
    (mindie,) = points("mindie_o_proj_ascend_pt").values()
    assert mindie["consumer_known"] is False and mindie["contention"] == 4
    (mm,) = points("matmul_overlap_ascend_pt").values()
    assert (mm["verdict"], mm["contention"], mm["consumer_known"]) == ("hidden", 4, True)
    assert isinstance(mm["change"], dict) and mm["change"]["setting"] == "max_size × 1.17"


def test_layout_can_be_chosen_and_is_checked() -> None:
    sample = str(PROFILES / "sglang_qwen3_ascend_pt")
    out = json.loads(
        runner.invoke(app, ["analyze", sample, "--json", "--layout", "generic"]).stdout
    )
    assert out["layout"] == "generic" and out["layout_reason"] == "given with --layout"
    assert all("weight" not in p for p in out["points"])
    bad = runner.invoke(app, ["analyze", sample, "--layout", "mindie"])
    assert bad.exit_code == 2
    assert "--layout must be one of auto, vllm-ascend, sglang, generic" in _one_clean_line(
        bad.output
    )


@pytest.mark.parametrize(
    "sample",
    ["dense_current_ascend_pt", "dense_db_ascend_pt", "dense_legacy_ascend_pt",
     "truncated_ascend_pt"],
)  # fmt: skip
def test_the_site_view_is_the_vllm_ascend_labelling_of_the_points(sample: str) -> None:
    auto = json.loads(runner.invoke(app, ["analyze", str(PROFILES / sample), "--json"]).stdout)
    forced = runner.invoke(
        app, ["analyze", str(PROFILES / sample), "--json", "--layout", "vllm-ascend"]
    )
    assert auto["layout"] == "vllm-ascend" and auto["layout_reason"].startswith("auto: ")
    assert auto["sites"] == json.loads(forced.stdout)["sites"]
    for s in auto["sites"]:
        mine = [p for p in auto["points"] if p["site"] == s["site"]]
        assert sum(p["count"] for p in mine) == s["count"]
        assert sum(p["late"] for p in mine) == s["late"]
        assert sum(p["stall_us_total"] for p in mine) == pytest.approx(s["stall_us_total"])
    assert all(p["consumer_known"] and p["contention"] == 0 for p in auto["points"])


def test_readme_other_stacks_examples_are_the_real_output() -> None:
    root = PROFILES.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Other serving stacks") : readme.index("## What vllm-ascend")]
    shown = re.findall(r"```\n\$ autotune analyze (\S+)\n(.*?)\n```", section, flags=re.S)
    assert sorted(Path(p).name for p, _ in shown) == sorted(STACKS)
    for path, block in shown:
        result = runner.invoke(
            app, ["analyze", str(root / path)], env={"COLUMNS": "200"}, terminal_width=200
        )
        assert result.exit_code == 0, result.output
        real = [ln.rstrip().replace(str(root) + "/", "") for ln in result.stdout.splitlines()]
        assert [ln.rstrip() for ln in block.splitlines()] == real, path
