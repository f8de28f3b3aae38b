"""`autotune analyze`: clean errors, the JSON object, and the terminal view of an OverlapResult."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from test_overlap import Timeline, dense_layer, moe_layer
from typer.testing import CliRunner

from autotune.cli import app
from autotune.overlap import analyze
from autotune.report.terminal import SIMULATED, print_overlap

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
        ("truncated_ascend_pt", ONE_LAYER, 2),
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
    for i in range(steps):
        events.append(
            {"ph": "X", "name": f"ProfilerStep#{i}", "pid": 1, "tid": 1, "ts": "0.000", "dur": 1}
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
    # The shared join after SwiGlu is charged to mlp.down: 24 µs per layer, one layer per step.
    assert by_site["mlp.down"]["stall_us_per_step"] == 24
    assert by_site["mlp.gate_up"]["stall_us_total"] == 0
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


def test_terminal_view_shows_sites_and_leftovers() -> None:
    text = _render(simulated=False)
    assert SIMULATED not in text
    lines = text.splitlines()
    (qkv,) = [ln for ln in lines if ln.lstrip("│ ").startswith("attn.qkv")]
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
    (o,) = [ln for ln in lines if ln.lstrip("│ ").startswith("attn.o")]
    # One o_proj prefetch, late by 7 µs; the MoE layer's attn.o window had none.
    assert o.replace("│", " ").split() == ["attn.o", "1", "1", "42%", "-7.0", "-7.0", "9.0", "late"]
    (moe,) = [ln for ln in lines if ln.lstrip("│ ").startswith("moe.gate_up")]
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
    # attn.o: hidden on rank 0, late on rank 1 (slack -9 µs beyond the 2 µs default tolerance).
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
