"""The run report of a simulated `autotune run`, checked in a real headless browser."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from report_helpers import open_report
from typer.testing import CliRunner

from autotune.cli import app
from autotune.report.figures import unvaried_sites
from autotune.report.html import SIMULATED_BANNER, _points, write_report
from autotune.rundir import RunRecord, load_run

EVIL = "<script>alert(1)</script>"
# A kernel of every simulated layer whose role ("other") does not change the analysis.
ROPE = "aclnnApplyRotaryPosEmb_ApplyRotaryPosEmb_ApplyRotaryPosEmb"
TRIALS = 9
EVIL_CONFIG = "</script><script>window.__xss = 3</script>\u2028"


def _inject_kernel_name(pt: Path) -> None:
    """Rename the rope kernel to a script tag in both files the readers may use."""
    out = pt / "ASCEND_PROFILER_OUTPUT"
    for db in out.glob("*.db"):
        with sqlite3.connect(db) as con:
            con.execute("UPDATE STRING_IDS SET value = ? WHERE value = ?", (EVIL, ROPE))
    trace = out / "trace_view.json"
    if trace.is_file():
        text = trace.read_text(encoding="utf-8")
        trace.write_text(text.replace(f'"{ROPE}"', json.dumps(EVIL)), encoding="utf-8")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    args = [
        "run",
        "--backend",
        "simulate",
        "--model",
        "Qwen3-32B-W8A8",
        "--max-num-seqs",
        "72",
        "--trials",
        str(TRIALS),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = load_run(out)
    best = record.best_trial
    assert best is not None and best.number in record.profiles
    for pt in record.profiles[best.number].glob("*_ascend_pt"):
        _inject_kernel_name(pt)
    # A config string that would end the JSON data element if it were embedded raw.
    best_file = out / "best_config.json"
    config = json.loads(best_file.read_text(encoding="utf-8"))
    config["note"] = EVIL_CONFIG
    best_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "report.html")
    return out


@pytest.fixture(scope="module")
def record(run_dir: Path) -> RunRecord:
    return load_run(run_dir)


def test_run_report_file(run_dir: Path) -> None:
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert EVIL not in text
    assert "</script><script>" not in text
    assert text.count("<script") == 2
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text


def test_run_report_in_browser(browser: Any, run_dir: Path, record: RunRecord) -> None:
    page = open_report(browser, run_dir / "report.html")
    assert page.errors == [], page.errors
    assert page.js("return window.__alerted") == 0
    assert page.js("return window.autotuneReport.kind") == "run"
    assert page.js("return window.__xss") is None
    assert page.js("return window.autotuneReport.best_config.note") == EVIL_CONFIG
    assert SIMULATED_BANNER in page.js(
        "return document.getElementById('simulated-banner').textContent"
    )

    # Best config: shown verbatim, and the JSON on the page is the file's JSON.
    best = record.best_trial
    assert best is not None
    shown = page.js("return document.getElementById('best-config').textContent")
    assert json.loads(shown) == json.loads((run_dir / "best_config.json").read_text())

    # Gains: the numbers of summary.json.
    for key, name in (
        ("gain_over_baseline", "gain over baseline (prefetch off)"),
        ("gain_over_default", "gain over vendor default"),
    ):
        gain = record.summary[key]
        kpi = page.js(
            "return document.querySelector('[data-kpi=\"' + arguments[0] + '\"] .v').textContent",
            name,
        )
        assert kpi == f"{gain['pct']:+.1f}%"

    # Per-site table of the best trial: the rows and numbers its trial record holds.
    rows: list[list[str]] = page.js(
        "return Array.from(document.querySelectorAll('#sites tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent.trim()));"
    )
    by_site = {r[0]: r[1:] for r in rows}
    assert set(by_site) == set(best.sites)
    for site, s in best.sites.items():
        cells = by_site[site]
        assert cells[0] == f"{s['count']:,}"
        assert cells[6] == f"{s['late']:,}"
        assert cells[8] == s["verdict"]
        if s["count"]:
            assert cells[3] == f"{s['slack_us_median']:,.2f}"
    # Inert-site findings with their reasons, from summary.json.
    findings = page.js("return document.getElementById('findings').textContent")
    for site, reason in record.summary["inert_sites"].items():
        assert f"{site}: inert — {reason}" in findings

    # Timeline: baseline, vendor default and best, each with both lanes, on one time scale.
    panels = page.js(
        "return Array.from(new Set(Array.from(document.querySelectorAll('#timeline g.lane'))"
        ".map(g => g.dataset.panel + ':' + g.dataset.lane)));"
    )
    assert sorted(panels) == sorted(
        f"{p}:{lane}" for p in range(3) for lane in ("compute", "prefetch")
    )
    layers = page.js("return window.autotuneReport.layers")
    assert [x["label"].split(" · ")[0] for x in layers] == [
        "baseline (prefetch off)",
        "vendor default",
        "best",
    ]
    assert len({x["ordinal"] for x in layers}) == 1  # the same layer in every panel
    # The renamed kernel is text in the best layer's task table and ran nothing.
    names = page.js(
        "return Array.from(document.querySelectorAll('#ops-2 td.name')).map(td => td.textContent);"
    )
    assert EVIL in names

    # Slack distribution, search figures and the trials table.
    assert page.js("return document.querySelectorAll('#slack g.slack-row').length") >= 1
    assert page.js("return document.querySelectorAll('#history circle.trial-pt').length") == len(
        [t for t in record.trials if t.objective is not None]
    )
    assert page.js("return !!document.getElementById('best-so-far')")
    assert page.js("return !!document.getElementById('best-mark')")
    active = record.summary["active_sites"]
    assert page.js("return document.querySelectorAll('#scatter g.scatter').length") >= len(active)
    importance = page.js("return window.autotuneReport.importance")
    # Importance only when every site varied outside the probes; otherwise the page says which.
    fixed = unvaried_sites(_points(record.trials), active)
    if fixed:
        assert importance["values"] == []
        text = page.js("return document.getElementById('search-section').textContent")
        assert all(f"{s} was" in text for s in fixed) and "Not shown" in text
    else:
        assert {name for name, _ in importance["values"]} == set(active)
    # The pick rule in one line, and winner beside runner-up, measured and estimated.
    assert "estimated throughput" in page.js(
        "return document.getElementById('pick-rule').textContent"
    )
    rows = page.js(
        "return Array.from(document.querySelectorAll('#pick tbody tr'))"
        ".map(r => [r.querySelector('th').textContent, r.dataset.trial]);"
    )
    assert rows[0] == ["winner", str(best.number)]
    assert rows[1][0] == "runner-up" and rows[1][1] == str(record.summary["runner_up"]["trial"])
    assert page.js("return document.querySelectorAll('#trials tbody tr').length") == len(
        record.trials
    )
    assert page.js("return document.querySelector('#trials tr.best').dataset.trial") == str(
        best.number
    )

    # Interactions do not raise: sort the trials table, press copy.
    page.js("const th = document.querySelector('#trials th'); th.click(); th.click();")
    first = page.js("return document.querySelector('#trials tbody tr').dataset.trial")
    assert first == str(max(t.number for t in record.trials))
    page.js("document.getElementById('copy-config').click();")
    assert [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] == []
    assert page.js("return window.__alerted") == 0


def _headers(page: Any) -> list[str]:
    return page.js(
        "return Array.from(document.querySelectorAll('#trials thead th'))"
        ".map(th => th.textContent.trim());"
    )


def test_trials_table_names_the_host_of_each_trial_when_hosts_share_the_study(
    browser: Any, run_dir: Path, record: RunRecord, tmp_path: Path
) -> None:
    # One host, own study: no host column.
    assert "host" not in _headers(open_report(browser, run_dir / "report.html"))
    # The same trials as workers on two hosts of one shared study would record them.
    hosts = ["npu-a", "npu-b"]
    shared = replace(
        record,
        run={**record.run, "shared": True},
        trials=[replace(t, host=hosts[t.number % 2]) for t in record.trials],
    )
    page = open_report(browser, write_report(shared, tmp_path / "report.html"))
    assert page.errors == [], page.errors
    column = _headers(page).index("host")
    cells = page.js(
        "return Array.from(document.querySelectorAll('#trials tbody tr'))"
        ".map(r => [r.dataset.trial, r.cells[arguments[0]].textContent]);",
        column,
    )
    assert cells == [[str(t.number), hosts[t.number % 2]] for t in record.trials]


def test_run_report_says_what_to_change_in_bytes_and_ratios(
    run_dir: Path, record: RunRecord
) -> None:
    # The trial's config and the model give every prefetch's size, so the estimate has bytes, the
    # CMO speed of the profile and a ratio per site.
    from autotune.report.html import _analyse_trial

    best = record.best_trial
    assert best is not None
    analysed = _analyse_trial(record, best, "best", 0.0)
    assert analysed.result is not None and analysed.result.points
    for p in analysed.result.points:
        c = p.change
        assert c.cmo_bytes is not None and c.weight_bytes is not None and c.gbps is not None
        assert c.bytes_hidden == pytest.approx(
            min(c.cmo_bytes * c.hide_share, c.weight_bytes), abs=1
        )
        assert c.setting.startswith("ratio 0.") or c.setting.startswith("ratio 1")
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    table = text[text.index("id='changes'") :]
    table = table[: table.index("</table>")]
    assert "MiB" in table and "ratio 0." in table and "an estimate" in text.lower()
