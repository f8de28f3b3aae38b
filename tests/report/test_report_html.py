"""The HTML report: self-contained, escaped, and readable in a real headless browser."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from report_helpers import EVIL_NAMES, Loaded, open_report, write_trace_view_profile
from typer.testing import CliRunner

from autotune.cli import app
from autotune.overlap import OverlapResult, analyze
from autotune.profile import load_profiles
from autotune.profile.tasks import Profile
from autotune.report.figures import choose_layer, layer_spans, timeline_layer
from autotune.report.html import (
    SIMULATED_BANNER,
    safe_json,
    write_analyze_report,
)
from autotune.report.svg import esc


@pytest.fixture(scope="module")
def evil_profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[OverlapResult, list[Profile]]:
    root = tmp_path_factory.mktemp("evil")
    pt = write_trace_view_profile(root, layers=3, steps=2, extra_kernels=EVIL_NAMES)
    profiles = load_profiles(pt)
    return analyze(profiles), list(profiles)


@pytest.fixture(scope="module")
def analyze_html(
    tmp_path_factory: pytest.TempPathFactory, evil_profile: tuple[OverlapResult, list[Profile]]
) -> Path:
    result, profiles = evil_profile
    path = tmp_path_factory.mktemp("html") / "overlap.html"
    write_analyze_report(result, profiles, path)
    return path


# --- without a browser ------------------------------------------------------------------------


def test_safe_json_cannot_close_its_script_element() -> None:
    text = safe_json({"k": "</script><!-- & \u2028\u2029 >", "n": float("nan")})
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == {"k": "</script><!-- & \u2028\u2029 >", "n": None}


def test_esc_covers_text_and_attributes() -> None:
    assert esc("<a href='x'>\"&") == "&lt;a href=&#x27;x&#x27;&gt;&quot;&amp;"


def test_report_is_self_contained(analyze_html: Path) -> None:
    text = analyze_html.read_text(encoding="utf-8")
    # Nothing is fetched: no external URLs in src/href, no CDN, one inline script plus JSON data.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert '<link rel="stylesheet"' not in text
    assert text.count("<script") == 2
    for name in EVIL_NAMES:
        assert name not in text


def test_analyze_report_rows_match_the_analysis(
    evil_profile: tuple[OverlapResult, list[Profile]], analyze_html: Path
) -> None:
    result, _ = evil_profile
    text = analyze_html.read_text(encoding="utf-8")
    for s in result.sites:
        assert f"data-site='{s.site}'" in text


# --- in the browser ---------------------------------------------------------------------------


def _site_rows(page: Loaded, table_id: str) -> dict[str, list[str]]:
    rows: list[list[str]] = page.js(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent.trim()));",
        table_id,
    )
    return {r[0]: r[1:] for r in rows}


def _assert_clean(page: Loaded) -> None:
    assert page.errors == [], page.errors
    assert page.js("return window.__alerted") == 0
    assert page.js("return window.__xss") is None
    # Our own script ran (CSP hash matches) and the JSON data parsed.
    assert page.js(
        "return typeof window.autotuneReport === 'object' && !!window.autotuneReport.kind"
    )


def _assert_timeline(page: Loaded, panels: int) -> None:
    lanes: list[dict[str, Any]] = page.js(
        "return Array.from(document.querySelectorAll('#timeline g.lane'))"
        ".map(g => ({lane: g.dataset.lane, panel: g.dataset.panel}));"
    )
    assert {(x["lane"], x["panel"]) for x in lanes} == {
        (lane, str(p)) for lane in ("compute", "prefetch") for p in range(panels)
    }
    roles = set(
        page.js(
            "return Array.from(document.querySelectorAll('#timeline g.task'))"
            ".map(g => g.dataset.role);"
        )
    )
    assert {"prefetch", "wait", "cube"} <= roles
    assert any(r.startswith("vector:") for r in roles)


def test_analyze_report_in_browser(
    browser: Any, analyze_html: Path, evil_profile: tuple[OverlapResult, list[Profile]]
) -> None:
    result, _ = evil_profile
    page = open_report(browser, analyze_html)
    _assert_clean(page)
    rows = _site_rows(page, "sites")
    expected = {s.site: s for s in result.sites}
    assert set(rows) == set(expected)
    for site, cells in rows.items():
        s = expected[site]
        assert cells[0] == f"{s.count:,}"  # prefetches
        assert cells[6] == f"{s.late:,}"  # late
        assert cells[8] == s.verdict
        if s.count:
            assert cells[2] == f"{s.hidden_fraction_median * 100:.1f}%"
            assert cells[3] == f"{s.slack_us_median:,.2f}"
            assert cells[4] == f"{s.slack_us_p90:,.2f}"
            assert cells[7] == f"{s.stall_us_per_step:,.2f}"
    # The fixture makes attn.o late on purpose: the report must say so.
    assert rows["attn.o"][8] == "late"
    _assert_timeline(page, panels=1)
    # The injected kernel names are on the page as text (layer's task table), never as markup.
    names = page.js(
        "return Array.from(document.querySelectorAll('#ops-0 td.name')).map(td => td.textContent);"
    )
    for evil in EVIL_NAMES:
        assert evil in names
    assert page.js("return document.scripts.length") == 2
    assert page.js("return document.querySelectorAll('img').length") == 0
    # Hover shows name, type, start and duration.
    tip = page.js(
        "const g = document.querySelector('#timeline g.task[data-role=\"prefetch\"]');"
        "g.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 50, clientY: 50}));"
        "const t = document.getElementById('tip'); return t.hidden ? '' : t.textContent;"
    )
    assert "CMO_TASK" in tip and "start" in tip and "duration" in tip
    assert not page.js("return !!document.getElementById('simulated-banner')")


def test_simulated_profile_shows_the_banner(
    browser: Any, tmp_path: Path, evil_profile: tuple[OverlapResult, list[Profile]]
) -> None:
    result, profiles = evil_profile
    sim = OverlapResult(
        prefetches=result.prefetches,
        sites=result.sites,
        unattributed=result.unattributed,
        windows_without_prefetch=result.windows_without_prefetch,
        unclassified_types=result.unclassified_types,
        steps=result.steps,
        simulated=True,
        warnings=result.warnings,
    )
    path = tmp_path / "sim.html"
    write_analyze_report(sim, profiles, path)
    page = open_report(browser, path)
    _assert_clean(page)
    banner = page.js("return document.getElementById('simulated-banner').textContent")
    assert SIMULATED_BANNER in banner


def test_cli_analyze_writes_html(tmp_path: Path) -> None:
    pt = write_trace_view_profile(tmp_path, layers=2, steps=1)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["analyze", str(pt), "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "<svg id='timeline'" in out.read_text(encoding="utf-8")


# --- layer selection on a simulated profile ---------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[OverlapResult, Profile]:
    from autotune.target import vendor_default_config
    from autotune.workloads.base import Workload
    from autotune.workloads.simulate import simulate_once

    out = tmp_path_factory.mktemp("sim")
    workload = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=3)
    _, trial = simulate_once(workload, vendor_default_config(), out)
    assert trial.profile_dir is not None
    profiles = load_profiles(trial.profile_dir)
    return analyze(profiles), profiles[0]


def test_layer_spans_follow_the_attention_kernels(
    simulated: tuple[OverlapResult, Profile],
) -> None:
    result, profile = simulated
    tasks = profile.tasks
    compute = tasks[tasks["stream"] == tasks.loc[tasks["role"] == "cube", "stream"].mode()[0]]
    spans = layer_spans(compute)
    # Qwen3-32B: 64 layers per step; the final norm and LM head of a step start no layer.
    assert len(spans) == 64 * result.steps
    assert all(a < b for a, b in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def test_representative_layer_is_deterministic_and_whole(
    simulated: tuple[OverlapResult, Profile],
) -> None:
    result, profile = simulated
    first = choose_layer(result, profile, int(profile.tasks["device"].min()))
    again = choose_layer(result, profile, int(profile.tasks["device"].min()))
    assert first == again
    assert first.step == 1  # the middle of 3 profiled steps
    assert first.layer is not None and 0 <= first.layer < 64
    assert f"step {first.step}" in first.reason and f"layer {first.layer}" in first.reason
    layer = timeline_layer(profile, result, label="x", choice=first)
    kernels = [t for t in layer.tasks if t.lane == "compute"]
    assert sum("Attention" in t.name for t in kernels) == 1
    assert kernels[0].role == "vector:norm" and kernels[0].start_us == 0.0
    # Every prefetch drawn in the layer is one the analysis attributed to it.
    rows = result.prefetches
    rows = rows[(rows["step"] == first.step) & (rows["layer"] == first.layer)]
    assert sorted(p.site for p in layer.prefetches) == sorted(rows["site"])


def test_unattributed_stall_is_a_finding() -> None:
    from autotune.report.html import analysis_findings

    result = OverlapResult(
        prefetches=pd.DataFrame(),
        sites=[],
        unattributed=1,
        windows_without_prefetch={},
        unclassified_types={},
        steps=2,
        simulated=False,
        unattributed_stall_us=30.0,
        rank_steps=2,
    )
    found = analysis_findings(result)
    assert "unattributed stall: 15.0 µs per step of joins no prefetch was matched to" in found
    result.unattributed_stall_us = 0.0
    assert not any("unattributed stall" in f for f in analysis_findings(result))


def test_analyze_report_of_another_stack_shows_its_points_and_what_to_change(
    tmp_path: Path,
) -> None:
    profiles = load_profiles(
        Path(__file__).resolve().parents[2] / "profiles" / "sglang_qwen3_ascend_pt"
    )
    result = analyze(profiles, layout="auto")
    path = tmp_path / "sglang.html"
    write_analyze_report(result, profiles, path)
    text = path.read_text(encoding="utf-8")
    assert "sglang (auto: prefetches come in pairs" in text
    points = text[text.index("<table class='sites' id='points'>") :]
    points = points[: points.index("</table>")]
    assert points.count("<tr data-point=") == 2 and "(gate_up_proj)" in points
    changes = text[text.index("id='changes'") :]
    changes = changes[: changes.index("</table>")]
    assert "— (fixed)" in changes and "PREFETCH_MAX_SIZE" in changes
    assert "An estimate from this profile" in changes
    assert "window(s) hold a cube op" in text  # the down CMO's window holds gate_up's matmul
    assert "0 / 2" in text and "prefetch points fully hidden" not in text
