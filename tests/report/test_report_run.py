"""The run report of a simulated `autotune run`, and of a real-backend run on the fake `vllm`,
checked in a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
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
# A kernel of every simulated layer whose role ("other") does not change the analysis (a custom
# kernel, named by its op type in the simulator's realistic profiles).
ROPE = "ApplyRotaryPosEmb"
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
        # Eager, where 0.23 fires every dense prefetch: the best trial prefetches.
        "--no-graph-mode",
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
    # How sure the pick is: the margins with their intervals and the noise they used.
    confidence = record.summary["confidence"]
    shown = page.js(
        "return Array.from(document.querySelectorAll('#confidence-list li'))"
        ".map(li => li.textContent);"
    )
    assert shown[: len(confidence["verdict"])] == confidence["verdict"]
    assert any(t.startswith("noise: bench") for t in shown)
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


# ---- the header, the history legend, importance from a journal study --------------------------

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d \S+")


def _meta(page: Any) -> dict[str, str]:
    pairs = page.js(
        "return Array.from(document.querySelectorAll('header dl.meta > div'))"
        ".map(d => [d.querySelector('dt').textContent, d.querySelector('dd').textContent]);"
    )
    return dict(pairs)


def test_header_times_share_one_format_and_history_legend_names_every_role(
    browser: Any, run_dir: Path, record: RunRecord
) -> None:
    page = open_report(browser, run_dir / "report.html")
    meta = _meta(page)
    assert STAMP.fullmatch(meta["run started"]), meta
    assert STAMP.fullmatch(meta["run updated"]), meta
    assert meta["hardware"] == "910B2"  # the simulator's preset, on a simulated run
    legend = page.js(
        "return Array.from(document.querySelectorAll('#search-section .legend span'))"
        ".map(s => s.textContent);"
    )
    roles = {t.role for t in record.trials}
    assert "guided" in roles and roles <= set(legend), (roles, legend)


def test_importance_is_read_from_a_journal_study(browser: Any, tmp_path: Path) -> None:
    """A run whose study lives in a journal file: the report reads the study for optuna's
    importance, as it does for the run's own study.db."""
    out = tmp_path / "run"
    journal = tmp_path / "study.log"
    args = ["run", "--backend", "simulate", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72",
            "--trials", str(TRIALS), "--out", str(out),
            "--storage", f"journal:{journal}"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    page = open_report(browser, out / "report.html")
    assert page.errors == [], page.errors
    importance = page.js("return window.autotuneReport.importance")
    assert importance["method"] == "optuna PED-ANOVA importance on the run's study"
    assert len(importance["values"]) == len(
        json.loads((out / "summary.json").read_text())["active_sites"]
    )


# ---- a real-backend run (the fake `vllm`) whose vendor-default trial was never profiled --------

# tests/fake_vllm and tests/test_cli.py live one folder up; this file runs on its own too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_vllm.fake_env import make_fake_env, make_small_model  # noqa: E402
from test_cli import autotune, succeeded  # noqa: E402

REAL_TRIALS = 3


def _real_env(bin_dir: Path, fault: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FAKE_VLLM_FAULT"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    if fault:
        env["FAKE_VLLM_FAULT"] = fault
    return env


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run dir, fake bin dir): `autotune run --backend vllm-ascend` on the fake vLLM, whose
    vendor-default trial (1) writes no *_ascend_pt profile; flashcomm1 from your own
    --additional-config; eager, as in graph mode 0.23 keeps no site to search."""
    root = tmp_path_factory.mktemp("real-run")
    bin_dir = make_fake_env(root / "env")
    model = make_small_model(root / "model")
    out = root / "run"
    args = ["run", "--backend", "vllm-ascend", "--model", str(model), "--max-num-seqs", "8",
            "--tp", "2", "--trials", str(REAL_TRIALS), "--repeats", "1", "--input-len", "32",
            "--output-len", "32", "--num-prompts", "16", "--profile-steps", "2",
            "--additional-config", '{"enable_flashcomm1": true}', "--out", str(out),
            "--serve-args", "--enforce-eager"]  # fmt: skip
    succeeded(autotune(*args, env=_real_env(bin_dir, "no-profile@1")))
    return out, bin_dir


def test_real_report_gives_the_unprofiled_reason_and_the_probe_note(
    browser: Any, real_run: tuple[Path, Path]
) -> None:
    out, _ = real_run
    record = load_run(out)
    default = record.trials[1]
    assert default.role == "default" and default.unprofiled.startswith("no *_ascend_pt under prof/")
    probe_note = str(record.summary["probe_note"])
    assert "static rules" in probe_note
    page = open_report(browser, out / "report.html")
    assert page.errors == [], page.errors
    sites = page.js("return document.getElementById('sites-section').textContent")
    assert "--keep-profiles" not in sites  # nothing was removed: it was never captured
    assert (
        f"No overlap data: it was measured without a usable profile: {default.unprofiled}." in sites
    )
    findings = page.js(
        "return Array.from(document.querySelectorAll('#findings li')).map(li => li.textContent);"
    )
    assert probe_note in findings
    assert f"trial 001 unprofiled: {default.unprofiled}" in findings
    note = page.js(
        "return document.querySelector('#trials tr[data-trial=\"1\"] td.name').textContent"
    )
    assert note == f"unprofiled: {default.unprofiled}"
    meta = _meta(page)
    assert meta["hardware"] == "not recorded in the run"  # not the simulator's preset
    assert STAMP.fullmatch(meta["run started"]) and STAMP.fullmatch(meta["run updated"])


def test_real_run_reasons_survive_a_resume(real_run: tuple[Path, Path], tmp_path: Path) -> None:
    out, bin_dir = real_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)  # a copy resumes its own study
    before = json.loads((copy / "summary.json").read_text())
    trials_before = {t.number: t.unprofiled for t in load_run(copy).trials}
    resume = ["run", "--resume", "--out", str(copy), "--trials", str(REAL_TRIALS + 1)]
    result = succeeded(autotune(*resume, env=_real_env(bin_dir)))
    after = json.loads((copy / "summary.json").read_text())
    assert after["trials"]["measured"] == REAL_TRIALS + 1
    for key in ("probe_note", "inert_sites"):
        assert after[key] == before[key], key
    why = before["best_config_keys"]["enable_flashcomm1"]
    assert why.startswith("from your --additional-config")
    assert after["best_config_keys"]["enable_flashcomm1"] == why
    trials_after = {t.number: t.unprofiled for t in load_run(copy).trials}
    assert {n: trials_after[n] for n in trials_before} == trials_before
    assert before["probe_note"] in result.stdout
    assert f"enable_flashcomm1: {why}" in result.stdout


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
