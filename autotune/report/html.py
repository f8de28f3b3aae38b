"""The self-contained HTML overlap report: one file, inline CSS/JS/SVG, no network.

This module only lays out. Numbers come from `autotune.overlap` (per-site metrics), the run
directory written by `autotune run` (search results) and `autotune.report.figures` (which picks the
representative layer and reshapes data for the figures); `autotune.report.svg` draws the figures.
Every string that comes from a profile or a config is escaped; data handed to JS is embedded as
JSON that cannot close its <script> element.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError
from autotune.lateness import rule_text, tolerance_ns
from autotune.overlap import OverlapResult
from autotune.points import PointSummary, Sizes, point_label
from autotune.profile.tasks import Profile
from autotune.report.figures import (
    LayerChoice,
    SiteRow,
    SlackFigure,
    TimelineLayer,
    TrialPoint,
    choose_layer,
    history,
    search_importance,
    site_rows,
    site_sort_key,
    slack_figure,
    timeline_layer,
)
from autotune.report.svg import (
    ROLE_COLOURS,
    ROLE_LABELS,
    ROLE_MARKS,
    SERIES_COLOURS,
    esc,
    fmt_num,
    fmt_pct,
    history_svg,
    importance_svg,
    scatter_svg,
    slack_svg,
    timeline_svg,
)
from autotune.rundir import MIB, RunRecord, TrialRecord, atomic_write_text, why_no_profile

SIMULATED_BANNER = "SIMULATED — modelled, not measured"


# --- escaping and embedding -------------------------------------------------------------------


def _json_clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null (JSON.parse rejects them), tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _json_clean(obj.item())
    return str(obj)


def safe_json(obj: Any) -> str:
    """JSON for a <script type="application/json"> element.

    `<`, `>` and `&` are escaped so no `</script>` or `<!--` can end or confuse the element;
    U+2028/2029 are escaped because older JS parsers treat them as line ends.
    """
    text = json.dumps(_json_clean(obj), ensure_ascii=False, allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _asset(name: str) -> str:
    return resources.files("autotune.report").joinpath(name).read_text(encoding="utf-8")


def render_page(title: str, body: str, data: Mapping[str, Any]) -> str:
    """Fill the template; one pass, so substituted text is never scanned for markers again."""
    js = _asset("report.js")
    # CSP allows exactly our script (by hash): anything injected would be refused even if escaping
    # ever failed. The template wraps the script in newlines; the hash covers them too.
    digest = base64.b64encode(hashlib.sha256(f"\n{js}\n".encode()).digest()).decode("ascii")
    parts = {
        "title": esc(title),
        "css": _asset("report.css"),
        "body": body,
        "data": safe_json(data),
        "js": js,
        "script_hash": f"'sha256-{digest}'",
    }
    template = _asset("template.html")
    if "<script>\n<!--@js-->\n</script>" not in template:
        raise RuntimeError(
            "report template: the script element must be '<script>\\n<!--@js-->\\n</script>'"
        )
    return re.sub(r"<!--@(\w+)-->", lambda m: parts[m.group(1)], template)


# --- small formatting helpers -----------------------------------------------------------------


def _dv(x: float | int | None) -> str:
    """Raw value for data-v (sorting)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return repr(float(x))


def _legend(items: Iterable[tuple[str, str]]) -> str:
    spans = "".join(
        f'<span><i style="background:{esc(c)}"></i>{esc(label)}</span>' for label, c in items
    )
    return f'<div class="legend">{spans}</div>'


def _kv(items: Iterable[tuple[str, object]]) -> str:
    cells = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items)
    return f'<dl class="meta">{cells}</dl>'


def _verdict(v: str) -> str:
    cls = v if v in ("hidden", "late", "inert") else ""
    return f'<span class="verdict {esc(cls)}">{esc(v)}</span>'


# --- sections ---------------------------------------------------------------------------------


def simulated_banner() -> str:
    return (
        f'<div class="banner-sim" id="simulated-banner">{esc(SIMULATED_BANNER)}'
        "<small>These timelines and throughputs come from autotune's simulator. "
        "Use them to check the tool, not to decide a deployment.</small></div>"
    )


def site_table(rows: Sequence[SiteRow], *, table_id: str, caption: str = "") -> str:
    head = (
        "<tr><th class='t'>site</th><th>prefetches</th><th>windows</th><th>hidden (median)</th>"
        "<th>slack median µs</th><th>slack p90 µs</th><th>slack min µs</th><th>late</th>"
        "<th>stall / step µs</th><th class='t'>verdict</th></tr>"
    )
    body = []
    for r in rows:
        body.append(
            f"<tr data-site='{esc(r.site)}'><td class='t mono'>{esc(r.site)}</td>"
            f"<td data-v='{r.count}'>{fmt_num(r.count)}</td>"
            f"<td data-v='{r.windows}'>{fmt_num(r.windows)}</td>"
            f"<td data-v='{_dv(r.hidden_fraction_median)}'>{fmt_pct(r.hidden_fraction_median)}</td>"
            f"<td data-v='{_dv(r.slack_us_median)}'>{fmt_num(r.slack_us_median)}</td>"
            f"<td data-v='{_dv(r.slack_us_p90)}'>{fmt_num(r.slack_us_p90)}</td>"
            f"<td data-v='{_dv(r.slack_us_min)}'>{fmt_num(r.slack_us_min)}</td>"
            f"<td data-v='{r.late}'>{fmt_num(r.late)}</td>"
            f"<td data-v='{_dv(r.stall_us_per_step)}'>{fmt_num(r.stall_us_per_step)}</td>"
            f"<td class='t'>{_verdict(r.verdict)}</td></tr>"
        )
    if not body:
        body.append("<tr><td class='t' colspan='10'>no prefetch sites found</td></tr>")
    cap = f"<caption class='note'>{esc(caption)}</caption>" if caption else ""
    return (
        f"<table class='sites' id='{esc(table_id)}'>{cap}<thead>{head}</thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def point_table(result: OverlapResult, *, table_id: str) -> str:
    """The prefetch points of a profile read under another layout than vllm-ascend."""
    head = (
        "<tr><th class='t'>point (what its issue follows → first window op ⇒ consumer)</th>"
        "<th>prefetches</th><th>hidden (median)</th><th>slack median µs</th><th>slack p90 µs</th>"
        "<th>slack min µs</th><th>late</th><th>stall / step µs</th><th>window holds a cube op"
        "</th><th class='t'>verdict</th></tr>"
    )
    body = []
    for p in result.points:
        consumer = "" if p.consumer_known else " (consumer not known)"
        body.append(
            f"<tr data-point='{esc(p.name)}'><td class='t mono'>{esc(point_label(p) + consumer)}"
            f"</td><td data-v='{p.count}'>{fmt_num(p.count)}</td>"
            f"<td data-v='{_dv(p.hidden_fraction_median)}'>{fmt_pct(p.hidden_fraction_median)}</td>"
            f"<td data-v='{_dv(p.slack_us_median)}'>{fmt_num(p.slack_us_median)}</td>"
            f"<td data-v='{_dv(p.slack_us_p90)}'>{fmt_num(p.slack_us_p90)}</td>"
            f"<td data-v='{_dv(p.slack_us_min)}'>{fmt_num(p.slack_us_min)}</td>"
            f"<td data-v='{p.late}'>{fmt_num(p.late)}</td>"
            f"<td data-v='{_dv(p.stall_us_per_step)}'>{fmt_num(p.stall_us_per_step)}</td>"
            f"<td data-v='{p.contention}'>{fmt_num(p.contention)}</td>"
            f"<td class='t'>{_verdict(p.verdict)}</td></tr>"
        )
    cap = f"<caption class='note'>{esc(rule_text(result.late_tolerance_us))}</caption>"
    return (
        f"<table class='sites' id='{esc(table_id)}'>{cap}<thead>{head}</thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def change_table(points: Sequence[PointSummary], *, table_id: str) -> str:
    """What to change per point: an estimate from the profile, with bytes where they are known."""
    if not points:
        return ""
    head = (
        "<tr><th class='t'>point</th><th>CMO µs</th><th>time left µs</th><th>fits</th>"
        "<th>CMO GB/s</th><th>bytes that fit</th><th>stall / step µs</th>"
        "<th class='t'>set</th><th class='t'>knob</th></tr>"
    )
    rows = []
    for p in points:
        c = p.change
        rows.append(
            f"<tr><td class='t mono'>{esc(point_label(p))}</td>"
            f"<td data-v='{_dv(c.cmo_us)}'>{fmt_num(c.cmo_us)}</td>"
            f"<td data-v='{_dv(c.available_us)}'>{fmt_num(c.available_us)}</td>"
            f"<td data-v='{_dv(c.hide_share)}'>{fmt_pct(c.hide_share)}</td>"
            f"<td data-v='{_dv(c.gbps)}'>{fmt_num(c.gbps)}</td>"
            f"<td data-v='{_dv(c.bytes_hidden)}'>"
            f"{fmt_num(None if c.bytes_hidden is None else c.bytes_hidden / MIB)}"
            f"{'' if c.bytes_hidden is None else ' MiB'}</td>"
            f"<td data-v='{_dv(c.stall_us_per_step)}'>{fmt_num(c.stall_us_per_step)}</td>"
            f"<td class='t mono'>{esc(c.setting or '— (fixed)')}</td>"
            f"<td class='t'>{esc(c.knob)}</td></tr>"
        )
    note = (
        "An estimate from this profile, not a measurement: time left runs from the CMO's start "
        "to its window's end; fits is the share of today's prefetch that would end in time at "
        "this profile's CMO speed (time left ÷ CMO time); bytes and the CMO speed need the "
        "prefetch sizes (known for a run's trials); a setting is at most the whole weight."
    )
    return (
        f"<table class='sites' id='{esc(table_id)}'><caption class='note'>{esc(note)}</caption>"
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def analysis_findings(result: OverlapResult) -> list[str]:
    """Plain-text findings the analysis reported (escaped at render time)."""
    out = []
    for p in result.points:
        if not p.consumer_known:
            out.append(
                f"{point_label(p)}: consumer not known — more cube ops run before its join than "
                "its issue has CMOs, so the one it reads its weight from is a guess"
            )
        if p.contention:
            out.append(
                f"{point_label(p)}: {p.contention:,} window(s) hold a cube op (contention: "
                "the vendor hides prefetches behind vector ops)"
            )
    for site, n in sorted(result.windows_without_prefetch.items()):
        if n:
            out.append(f"{site}: {n:,} window(s) without a prefetch")
    if result.unattributed:
        out.append(f"{result.unattributed:,} prefetch(es) matched no window (unattributed)")
    if result.unattributed_stall_us > 0:
        out.append(
            f"unattributed stall: {result.unattributed_stall_us_per_step:,.1f} µs per step of "
            "joins no prefetch was matched to"
        )
    for t, n in sorted(result.unclassified_types.items()):
        out.append(f"unclassified task type {t}: {n:,} task(s)")
    out.extend(result.warnings)
    return out


def findings_list(items: Sequence[str], *, list_id: str) -> str:
    if not items:
        return f"<p class='note' id='{esc(list_id)}'>None.</p>"
    lis = "".join(f"<li>{esc(i)}</li>" for i in items)
    return f"<ul class='findings' id='{esc(list_id)}'>{lis}</ul>"


def headline(result: OverlapResult) -> str:
    if result.sites or not result.points:
        active = sum(1 for s in result.sites if s.verdict != "inert")
        late = [s.site for s in result.sites if s.verdict == "late"]
        stall = sum(s.stall_us_per_step for s in result.sites)
        n = int(sum(s.count for s in result.sites))
        what = "active sites"
    else:
        active = len(result.points)
        late = [point_label(p) for p in result.points if p.verdict == "late"]
        stall = sum(p.stall_us_per_step for p in result.points)
        n = int(sum(p.count for p in result.points))
        what = "prefetch points"
    kpis = [
        (
            "ok" if not late else "bad",
            f"{active - len(late)} / {active}",
            f"{what} fully hidden" if not late else "hidden; late: " + ", ".join(late),
        ),
        ("", fmt_num(n), f"prefetches over {result.steps} step(s)"),
        ("", fmt_num(stall), f"µs stall per step (all {what.split()[-1]})"),
    ]
    cells = "".join(
        f"<div class='kpi {esc(c)}'><div class='v'>{esc(v)}</div><div class='l'>"
        f"{esc(label)}</div></div>"
        for c, v, label in kpis
    )
    return f"<div class='headline'>{cells}</div>"


# --- timeline ---------------------------------------------------------------------------------


def timeline_ops_table(layer: TimelineLayer, *, table_id: str) -> str:
    """The shown layer's tasks as text: the figure's content for search, copy and screen readers."""
    rows = "".join(
        f"<tr><td class='t'>{esc(t.lane)}</td><td class='name mono'>{esc(t.name)}</td>"
        f"<td class='t mono'>{esc(t.type)}</td><td class='t mono'>{esc(t.op_type)}</td>"
        f"<td class='t'>{esc(t.role)}</td><td>{t.start_us:,.2f}</td><td>{t.dur_us:,.2f}</td></tr>"
        for t in layer.tasks
    )
    return (
        f"<details><summary>{esc(layer.label)}: the {len(layer.tasks)} tasks of this "
        "layer</summary>"
        f"<div class='scroll'><table id='{esc(table_id)}' class='ops'><thead><tr><th class='t'>"
        "lane</th>"
        "<th class='t'>name</th><th class='t'>type</th><th class='t'>op type</th><th class='t'>"
        "role</th>"
        f"<th>start µs</th><th>duration µs</th></tr></thead><tbody>{rows}</tbody></table></div>"
        "</details>"
    )


def timeline_section(layers: Sequence[TimelineLayer]) -> str:
    if not layers:
        return (
            "<section id='timeline-section'><h2>One decoder layer on the device</h2>"
            "<p class='note'>No profile to draw: none was kept for the baseline, the vendor "
            "default or the best trial (see --keep-profiles).</p></section>"
        )
    legend = _legend((ROLE_LABELS[r], c) for r, c in ROLE_COLOURS.items())
    sources = "".join(
        f"<li>{esc(layer.label)}: {esc(layer.choice.reason)} — rank "
        f"{esc(layer.rank if layer.rank is not None else '?')}, device {esc(layer.device)}, "
        f"<span class='mono'>{esc(layer.source)}</span></li>"
        for layer in layers
    )
    tables = "".join(
        timeline_ops_table(layer, table_id=f"ops-{i}") for i, layer in enumerate(layers)
    )
    return (
        "<section id='timeline-section'><h2>One decoder layer on the device</h2>"
        "<p class='note'>Each CMO prefetch (orange, prefetch lane) should run under the shaded "
        "window "
        "of its vector op and end before the dashed line (the window's end). Green outline: "
        "ended in "
        "time; red: late. Hover a bar for its name, type, start and duration.</p>"
        f"{legend}<figure>{timeline_svg(layers)}<figcaption><ul class='findings'>{sources}</ul>"
        f"</figcaption></figure>{tables}</section>"
    )


# --- slack distribution -----------------------------------------------------------------------


def slack_section(fig: SlackFigure) -> str:
    labels = list(dict.fromkeys(s.label for s in fig.series))
    legend = (
        _legend((label, SERIES_COLOURS[i % len(SERIES_COLOURS)]) for i, label in enumerate(labels))
        if len(labels) > 1
        else ""
    )
    return (
        "<section id='slack-section'><h2>Slack per site (all layers, all profiled steps)</h2>"
        f"{legend}<figure>{slack_svg(fig)}</figure></section>"
    )


# --- pages ------------------------------------------------------------------------------------


@dataclass
class Page:
    """What a report page holds, before layout."""

    title: str
    simulated: bool
    meta: list[tuple[str, object]]
    sections: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        banner = simulated_banner() if self.simulated else ""
        body = (
            f"{banner}<main><header><h1>{esc(self.title)}</h1>{_kv(self.meta)}</header>"
            + "".join(self.sections)
            + "<footer>Written by autotune. Self-contained: open it offline; nothing is fetched."
            "</footer></main>"
        )
        return render_page(self.title, body, self.data)


def _layers_data(layers: Sequence[TimelineLayer]) -> list[dict[str, Any]]:
    """Which layer each timeline panel shows, for the page's embedded data."""
    return [
        {
            "label": layer.label,
            "ordinal": layer.choice.ordinal,
            "step": layer.choice.step,
            "layer": layer.choice.layer,
            "reason": layer.choice.reason,
        }
        for layer in layers
    ]


# Every time in a report header: local time with its zone.
STAMP_FORMAT = "%Y-%m-%d %H:%M %Z"


def _stamp(when: dt.datetime) -> str:
    return when.astimezone().strftime(STAMP_FORMAT)


def _now() -> str:
    return _stamp(dt.datetime.now(dt.UTC))


def _recorded_time(value: object) -> str:
    """run.json's ISO-8601 UTC time (e.g. `created`) in the header's format; as given if odd."""
    if not isinstance(value, str) or not value:
        return "—"
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return _stamp(when if when.tzinfo else when.replace(tzinfo=dt.UTC))


def _ranks_text(profiles: Sequence[Profile]) -> str:
    """How many ranks and which, e.g. "1 (rank 0)": a bare "0" reads as zero ranks."""
    if not profiles:
        return "—"
    ids = ", ".join("?" if p.rank is None else str(p.rank) for p in profiles)
    return f"{len(profiles)} (rank{'s' if len(profiles) > 1 else ''} {ids})"


def analyze_page(
    result: OverlapResult,
    profiles: Sequence[Profile],
    *,
    meta: Mapping[str, object] | None = None,
) -> Page:
    """The `autotune analyze --html` page for one set of profiles."""
    simulated = bool(result.simulated or any(p.simulated for p in profiles))
    info: list[tuple[str, object]] = [(k, v) for k, v in (meta or {}).items()]
    known = {k for k, _ in info}
    unknown = "not recorded in the profile"
    defaults: list[tuple[str, object]] = [
        ("model", unknown),
        ("hardware", unknown),
        ("max-num-seqs", unknown),
        ("backend", "simulate" if simulated else "device profile"),
        ("vllm-ascend", "0.23 (modelled)" if simulated else unknown),
        ("profiles", ", ".join(str(p.path) for p in profiles) or "—"),
        ("ranks", _ranks_text(profiles)),
        ("source", ", ".join(sorted({p.source for p in profiles})) or "—"),
        ("profiler level", ", ".join(sorted({p.level or "?" for p in profiles})) or "—"),
        ("profiled steps", result.steps),
        (
            "layout",
            f"{result.layout} ({result.layout_reason})" if result.layout_reason else result.layout,
        ),
        ("generated", _now()),
    ]
    info += [(k, v) for k, v in defaults if k not in known]
    page = Page(title="autotune — prefetch overlap report", simulated=simulated, meta=info)
    rows = site_rows(result)
    page.sections.append(headline(result))
    if result.sites or not result.points:
        table = "<h2>Per-site overlap</h2>" + site_table(
            rows, table_id="sites", caption=rule_text(result.late_tolerance_us)
        )
    else:
        table = "<h2>Prefetch points</h2>" + point_table(result, table_id="points")
    page.sections.append(
        f"<section id='sites-section'>{table}"
        + ("<h3>What to change</h3>" if result.points else "")
        + change_table(result.points, table_id="changes")
        + "<h3>Findings</h3>"
        + findings_list(analysis_findings(result), list_id="findings")
        + "</section>"
    )
    layers = []
    if profiles:
        # Median-stall layer of the middle step, taken from the first rank (lowest rank id).
        first = sorted(profiles, key=lambda p: (p.rank is None, p.rank or 0, str(p.path)))[0]
        layers.append(timeline_layer(first, result, label="this profile"))
    page.sections.append(timeline_section(layers))
    page.sections.append(slack_section(slack_figure([("this profile", result)])))
    page.data = {
        "kind": "analyze",
        "simulated": simulated,
        "layout": result.layout,
        "sites": [r.__dict__ for r in rows],
        "points": [p.to_json() for p in result.points],
        "layers": _layers_data(layers),
    }
    return page


def write_analyze_report(
    result: OverlapResult,
    profiles: list[Profile],
    path: Path,
    *,
    meta: Mapping[str, object] | None = None,
) -> None:
    """Write the self-contained analyze report to `path` (`autotune analyze PATH --html FILE`)."""
    atomic_write_text(path, analyze_page(result, profiles, meta=meta).render())


# --- search figures ---------------------------------------------------------------------------


def _feasible(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "no")


def trials_table(
    trials: Sequence[TrialRecord], sites: Sequence[str], best: int | None, *, hosts: bool = False
) -> str:
    """The trials, one row each; `hosts` adds the host that ran each (a study of several)."""
    head = (
        "<tr><th>trial</th><th class='t'>role</th><th class='t'>state</th>"
        + ("<th class='t'>host</th>" if hosts else "")
        + "".join(f"<th>{esc(s)} MiB</th>" for s in sites)
        + "<th>objective</th><th>estimate</th><th>throughput</th><th>min–max</th><th>TPOT ms</th>"
        "<th class='t'>feasible</th><th class='t'>late sites</th><th class='t'>note</th></tr>"
    )
    body = []
    for t in (trial.counted() for trial in trials):
        tps = t.throughputs
        spread = f"{min(tps):,.1f}–{max(tps):,.1f}" if tps else "—"
        note = t.error or (f"duplicate of {t.duplicate_of}" if t.duplicate_of is not None else "")
        if t.state == "complete" and t.unprofiled:
            note = f"unprofiled: {t.unprofiled}"
        if t.retry_of is not None:
            note = (note + "; " if note else "") + f"retry of {t.retry_of}"
        body.append(
            f"<tr class='{'best' if t.number == best else ''}' data-trial='{t.number}'>"
            f"<td data-v='{t.number}'>{t.number}</td><td class='t'>{esc(t.role)}</td>"
            f"<td class='t'>{esc(t.state)}</td>"
            + (f"<td class='t'>{esc(t.host or '—')}</td>" if hosts else "")
            + "".join(
                f"<td data-v='{_dv(t.effective_bytes.get(s, 0) / MIB)}'>"
                f"{t.effective_bytes.get(s, 0) / MIB:,.2f}</td>"
                for s in sites
            )
            + f"<td data-v='{_dv(t.objective)}'>{fmt_num(t.objective)}</td>"
            f"<td data-v='{_dv(t.estimate)}'>{fmt_num(t.estimate)}</td>"
            f"<td data-v='{_dv(t.throughput)}'>{fmt_num(t.throughput)}</td><td>{esc(spread)}</td>"
            f"<td data-v='{_dv(t.tpot_ms)}'>{fmt_num(t.tpot_ms)}</td>"
            f"<td class='t'>{_feasible(t.feasible)}</td>"
            f"<td class='t'>{esc(' '.join(t.late_sites))}</td><td class='name'>{esc(note)}</td>"
            "</tr>"
        )
    return (
        "<div class='scroll'><table id='trials' class='sortable'>"
        f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"
    )


# --- run report -------------------------------------------------------------------------------


@dataclass
class AnalysedTrial:
    """A trial whose kept profile was read again for the report."""

    label: str
    trial: TrialRecord
    profiles: list[Profile]
    result: OverlapResult | None
    note: str = ""


def _analyse_trial(
    record: RunRecord, trial: TrialRecord, label: str, tolerance_us: float
) -> AnalysedTrial:
    from autotune.overlap import analyze
    from autotune.profile import load_profiles

    path = record.profiles.get(trial.number)
    if path is None:
        keep = (record.run.get("options") or {}).get("keep_profiles")
        why = why_no_profile(trial, keep if isinstance(keep, str) else None)
        return AnalysedTrial(label, trial, [], None, why or "its profile folder is missing")
    try:
        profiles = load_profiles(path)
        result = analyze(
            profiles,
            late_tolerance_ns=tolerance_ns(tolerance_us),
            sizes=_prefetch_sizes(record, trial),
        )
    except AutotuneError as exc:
        return AnalysedTrial(label, trial, [], None, f"its profile could not be read: {exc}")
    return AnalysedTrial(label, trial, list(profiles), result)


def _prefetch_sizes(record: RunRecord, trial: TrialRecord) -> Sizes | None:
    """Bytes of each (site, weight) prefetch the trial's config makes, and of the whole weight:
    what turns the what-to-change share into bytes and a ratio (None when the model is gone)."""
    from dataclasses import fields

    from autotune import target
    from autotune.workloads.base import Workload, setup_of

    stored = record.run.get("workload") or {}
    known = {f.name for f in fields(Workload)}
    try:
        setup = setup_of(Workload(**{k: v for k, v in stored.items() if k in known}))
        found = target.resolve_prefetches(trial.config, setup, setup.max_num_seqs)
    except (AutotuneError, TypeError, ValueError, OSError):
        return None
    return {(p.site, p.weight): (p.bytes, p.weight_bytes) for p in found}


def _trial_label(role: str, trial: TrialRecord) -> str:
    names = {"baseline": "baseline (prefetch off)", "default": "vendor default", "best": "best"}
    return f"{names.get(role, role)} · trial {trial.number:03d}"


def _gain_kpi(name: str, g: Mapping[str, Any] | None, objective: str) -> str:
    if not g or g.get("pct") is None:
        return (
            f"<div class='kpi' data-kpi='{esc(name)}'><div class='v'>—</div>"
            f"<div class='l'>{esc(name)}: not measured</div></div>"
        )
    pct = float(g["pct"])
    lo, hi = g.get("low_pct"), g.get("high_pct")
    spread = (
        f"spread over repeats {float(lo):+.1f}% … {float(hi):+.1f}%"
        if isinstance(lo, int | float) and isinstance(hi, int | float)
        else "no spread (one repeat)"
    )
    cls = "ok" if pct > 0 else ("bad" if pct < 0 else "")
    return (
        f"<div class='kpi {cls}' data-kpi='{esc(name)}'><div class='v'>{pct:+.1f}%</div>"
        f"<div class='l'>{esc(name)} ({esc(objective)})<br>{esc(spread)}</div></div>"
    )


def _points(trials: Sequence[TrialRecord]) -> list[TrialPoint]:
    return [
        TrialPoint(
            number=t.number,
            role=t.role,
            state=t.state,
            objective=t.objective,
            throughput=t.throughput,
            feasible=t.feasible,
            effective_mib=t.effective_mib,
            estimate=t.estimate,
        )
        for t in trials
    ]


def _run_sites(record: RunRecord) -> list[str]:
    active = [str(s) for s in record.summary.get("active_sites", [])]
    seen = {s for t in record.trials for s, b in t.effective_bytes.items() if b}
    return sorted({*active, *seen}, key=site_sort_key)


def run_page(record: RunRecord) -> Page:
    """The run report: what was found, the best config, the overlap and the search."""
    s = record.summary
    workload = s.get("workload") or record.run.get("workload") or {}
    options = record.run.get("options") or {}
    objective = str(s.get("objective") or options.get("objective") or "throughput")
    tolerance_us = float(s.get("late_tolerance_us", options.get("late_tolerance_us", 0.0)) or 0.0)
    simulated = record.simulated
    # Estimates first: an interrupted run has no summary yet, and its best so far is the
    # trial the search ranks best.
    ranked_best = _fill_estimates(record, objective)
    best = record.best_trial
    unfinished = best is None and ranked_best is not None
    if best is None:
        best = ranked_best
    by_role = {t.role: t for t in record.trials if t.role in ("baseline", "default")}
    version = s.get("vllm_ascend_version") or record.run.get("vllm_ascend_version")
    if not version:
        version = "0.23 (modelled)" if simulated else "not recorded in the run"
    summary_path = record.path / "summary.json"
    when = (
        _stamp(dt.datetime.fromtimestamp(summary_path.stat().st_mtime, dt.UTC))
        if summary_path.is_file()
        else "—"
    )
    trials_info = s.get("trials", {})
    meta: list[tuple[str, object]] = [
        ("model", s.get("model", workload.get("model", "—"))),
        # --hardware is the simulator's preset; a real run does not record its NPUs.
        ("hardware", workload.get("hardware", "—") if simulated else "not recorded in the run"),
        ("max-num-seqs", s.get("max_num_seqs", workload.get("max_num_seqs", "—"))),
        ("tp / ep", f"{workload.get('tp', '?')} / {workload.get('ep', '?')}"),
        ("backend", s.get("backend", record.run.get("backend", "—"))),
        ("vllm-ascend", version),
        ("run started", _recorded_time(record.run.get("created"))),
        ("run updated", when),
        (
            "trials",
            f"{trials_info.get('measured', '?')} measured, {trials_info.get('duplicates', 0)} "
            f"duplicate, {trials_info.get('failed', 0)} failed",
        ),
        ("objective", f"{objective} ({s['direction']})" if "direction" in s else objective),
        ("run directory", str(record.path)),
    ]
    if s.get("stopped") == "interrupted":
        resume = f"autotune run --resume --out {shlex.quote(str(record.path))}"
        meta.append(("state", f"unfinished: interrupted; continue it with {resume}"))
    elif not s.get("finished", True):
        meta.append(("state", "unfinished: the run is still going or was interrupted"))
    page = Page(title="autotune — prefetch tuning report", simulated=simulated, meta=meta)

    # Best config and gains.
    config = record.best_config
    if config is None and best is not None:
        config = best.config
    config_text = json.dumps(config, indent=2) if config is not None else ""
    best_txt = (
        f"{'Best so far (the run has not finished)' if unfinished else 'Best'}: trial "
        f"{best.number:03d} ({best.role}), {objective} {fmt_num(best.objective)}"
        if best is not None
        else "No best trial yet."
    )
    cfg_html = (
        "<div class='config'><button type='button' data-copy='best-config' id='copy-config'>"
        "Copy</button>"
        f"<pre id='best-config'>{esc(config_text)}</pre></div>"
        "<p class='note'>Pass it as <code>vllm serve … --additional-config '&lt;this "
        "JSON&gt;'</code> "
        "(also in <code>best_config.json</code>).</p>"
        if config is not None
        else "<p class='note'>No best config yet.</p>"
    )
    kpis = (
        "<div class='headline'>"
        + _gain_kpi("gain over baseline (prefetch off)", s.get("gain_over_baseline"), objective)
        + _gain_kpi("gain over vendor default", s.get("gain_over_default"), objective)
        + "</div>"
    )
    page.sections.append(
        f"<section id='best-section'><h2>Best config</h2><p>{esc(best_txt)}</p>"
        f"{kpis}{_pick_html(record, best, objective, tolerance_us)}{cfg_html}</section>"
    )

    # Overlap of the probes and the best trial, from their kept profiles.
    analysed: list[AnalysedTrial] = []
    for role, trial in (
        ("baseline", by_role.get("baseline")),
        ("default", by_role.get("default")),
        ("best", best),
    ):
        if trial is None or any(a.trial.number == trial.number for a in analysed):
            continue
        analysed.append(_analyse_trial(record, trial, _trial_label(role, trial), tolerance_us))
    best_a = next((a for a in analysed if best is not None and a.trial.number == best.number), None)
    tables = []
    for a in sorted(analysed, key=lambda a: a is not best_a):
        if a.result is None:
            tables.append(
                f"<h3>{esc(a.label)}</h3><p class='note'>No overlap data: {esc(a.note)}.</p>"
            )
            continue
        if a.result.prefetches.empty and a.trial.role == "baseline":
            continue  # prefetch off: nothing to tabulate
        tid = "sites" if a is best_a else f"sites-{a.trial.number}"
        cap = rule_text(a.result.late_tolerance_us)
        tables.append(
            f"<h3>{esc(a.label)}</h3>" + site_table(site_rows(a.result), table_id=tid, caption=cap)
        )
        if a is best_a and a.result.points:
            tables.append(
                f"<h3>What to change ({esc(a.label)})</h3>"
                + change_table(a.result.points, table_id="changes")
            )
    findings = [str(s["probe_note"])] if s.get("probe_note") else []
    findings += [f"{site}: inert — {reason}" for site, reason in s.get("inert_sites", {}).items()]
    unprofiled = [t for t in record.trials if t.state == "complete" and t.unprofiled]
    findings += [f"trial {t.number:03d} unprofiled: {t.unprofiled}" for t in unprofiled]
    for key, value in s.items():
        if "redundant" in key and isinstance(value, Mapping):
            findings += [f"{site}: redundant — {reason}" for site, reason in value.items()]
    if best_a is not None and best_a.result is not None:
        findings += analysis_findings(best_a.result)
    page.sections.append(
        "<section id='sites-section'><h2>Per-site overlap</h2>"
        + "".join(tables)
        + "<h3>Findings</h3>"
        + findings_list(findings, list_id="findings")
        + "</section>"
    )

    # Timeline: the layer is chosen on the best trial; the others show the same layer ordinal.
    layers: list[TimelineLayer] = []
    with_profiles = [a for a in analysed if a.profiles]
    if with_profiles:
        anchor = best_a if best_a is not None and best_a.profiles else with_profiles[-1]
        first = _first_profile(anchor.profiles)
        choice = choose_layer(anchor.result, first, _device_of(first))
        for a in with_profiles:
            prof = _first_profile(a.profiles)
            c = choice if a is anchor else _same_layer(choice, anchor.label)
            layers.append(timeline_layer(prof, a.result, label=a.label, choice=c))
    page.sections.append(timeline_section(layers))
    page.sections.append(
        slack_section(
            slack_figure(
                [
                    (a.label, a.result)
                    for a in analysed
                    if a.result is not None and not a.result.prefetches.empty
                ]
            )
        )
    )

    # Search.
    points = _points(record.trials)
    sites = _run_sites(record)
    maximize = str(s.get("direction", "maximize")) != "minimize"
    hist = history(points, maximize=maximize)
    best_number = best.number if best is not None else None
    imp = search_importance(record, points, sites)
    imp_html = (
        f"<h3>Parameter importance</h3><p class='note'>{esc(imp.method)}"
        f"{esc('; ' + imp.note if imp.note else '')}</p>{importance_svg(imp)}"
        if imp.values
        else f"<h3>Parameter importance</h3><p class='note'>Not shown: {esc(imp.note)}.</p>"
    )
    legend = _legend((r, c) for r, c in ROLE_MARKS.items())
    page.sections.append(
        "<section id='search-section'><h2>Search</h2>"
        f"<h3>Optimisation history</h3>{legend}<p class='note'>Marks: measured "
        f"{esc(objective)}. Green dashes: the search's estimate per trial (it smooths bench noise "
        "with each trial's profiled step time); green line: the best estimate so far among "
        "feasible trials. Ringed: the best trial. Hollow marks: infeasible (a site late) or not "
        "complete.</p>"
        f"<figure>{history_svg(hist, objective_name=objective, best_number=best_number)}</figure>"
        "<h3>Throughput against each site's effective bytes</h3><figure>"
        f"{scatter_svg(points, sites)}</figure>"
        f"{imp_html}<h3>Trials</h3><p class='note' id='late-rule'>Click a column to sort. "
        f"Late sites: {esc(rule_text(tolerance_us))}.</p>"
        f"{trials_table(record.trials, sites, best_number, hosts=_several_hosts(record))}"
        "</section>"
    )
    page.data = {
        "kind": "run",
        "simulated": simulated,
        "best_trial": best.number if best else None,
        "best_config": config,
        "gain_over_baseline": s.get("gain_over_baseline"),
        "gain_over_default": s.get("gain_over_default"),
        "importance": {"method": imp.method, "values": imp.values},
        "layers": _layers_data(layers),
    }
    return page


def _several_hosts(record: RunRecord) -> bool:
    """Whether the run shares its study with other workers or its trials ran on several hosts."""
    return bool(record.run.get("shared")) or len({t.host for t in record.trials if t.host}) > 1


def _pick_html(
    record: RunRecord, best: TrialRecord | None, objective: str, tolerance_us: float
) -> str:
    """The pick rule in one line, and measured against estimated for the winner and runner-up."""
    from autotune.search import OBJECTIVES, pick_rule, ranked_records

    if best is None or objective not in OBJECTIVES:
        return ""
    strict = _strict(record)
    rule = str(record.summary.get("pick_rule") or pick_rule(objective, tolerance_us, strict))
    picked_by = str(record.summary.get("picked_by") or "")
    if picked_by:
        rule = f"{rule} (this run: {picked_by})"
    ranked = ranked_records(record.trials, objective, late_is_infeasible=strict)
    runner_up = next((t for t in ranked if t is not best), None)
    unit = "tok/s" if objective == "throughput" else "ms TPOT"
    rows = "".join(
        f"<tr data-trial='{t.number}'><th scope='row'>{label}</th><td>{t.number:03d}</td>"
        f"<td>{esc(t.role)}</td><td class='num'>{fmt_num(t.objective)}</td>"
        f"<td class='num'>{fmt_num(t.estimate)}</td></tr>"
        for label, t in (("winner", best), ("runner-up", runner_up))
        if t is not None
    )
    return (
        f"<p class='note' id='pick-rule'>{esc(rule)}</p>"
        "<table id='pick'><thead><tr><th></th><th>trial</th><th>role</th>"
        f"<th>measured ({esc(unit)})</th><th>estimated ({esc(unit)})</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>" + _confidence_html(record.summary.get("confidence") or {})
    )


def _confidence_html(conf: Mapping[str, Any]) -> str:
    """summary.json's confidence block: the winner's margins with intervals, how to settle an
    open one, the confirmation phase, the noise used, and what the benches cannot carry."""
    if not conf:
        return ""
    items = [str(v) for v in conf.get("verdict") or []]
    if conf.get("settle"):
        items.append(str(conf["settle"]))
    confirmation = conf.get("confirmation") or {}
    if confirmation.get("text"):
        items.append(f"confirmation: {confirmation['text']}")
    noise = conf.get("noise") or {}
    if noise.get("text"):
        items.append(str(noise["text"]))
    warnings = "".join(
        f"<p class='warn' data-warning>{esc('Warning: ' + str(w))}</p>"
        for w in conf.get("warnings") or []
    )
    return (
        f"<div id='confidence'><h3>Confidence ({esc(str(conf.get('interval', '')))})</h3>"
        f"{findings_list(items, list_id='confidence-list')}{warnings}</div>"
    )


def _fill_estimates(record: RunRecord, objective: str) -> TrialRecord | None:
    """Set each trial's `estimate` as the search computes it (trial.json does not keep it).

    Returns the trial the search ranks best, which is the run's best once it has finished.
    """
    from autotune.search import OBJECTIVES, best_record

    if objective not in OBJECTIVES:
        return None
    return best_record(record.trials, objective, late_is_infeasible=_strict(record))


def _strict(record: RunRecord) -> bool:
    """Whether the run treated late sites as infeasible (--late-is-infeasible)."""
    options = record.run.get("options") or {}
    summary = record.summary or {}
    return bool(summary.get("late_is_infeasible", options.get("constraint", False)))


def _first_profile(profiles: Sequence[Profile]) -> Profile:
    return sorted(profiles, key=lambda p: (p.rank is None, p.rank or 0, str(p.path)))[0]


def _device_of(profile: Profile) -> int:
    return int(profile.tasks["device"].min()) if not profile.tasks.empty else 0


def _same_layer(choice: LayerChoice, anchor: str) -> LayerChoice:
    where = (
        f"step {choice.step}, layer {choice.layer}"
        if choice.step is not None
        else f"layer span {choice.ordinal + 1}"
    )
    return LayerChoice(
        choice.ordinal, choice.step, choice.layer, f"the same layer as {anchor} ({where})"
    )


def write_run_report(run_dir: Path) -> Path:
    """Write run_dir/report.html for a run directory and return its path."""
    from autotune.rundir import load_run

    record = load_run(run_dir)
    return write_report(record, record.path / "report.html")


def write_report(record: RunRecord, out: Path) -> Path:
    """Write the report of `record` to `out` (atomically, with the user's umask) and return it."""
    atomic_write_text(out, run_page(record).render())
    return out


__all__ = [
    "SIMULATED_BANNER",
    "analyze_page",
    "esc",
    "render_page",
    "run_page",
    "safe_json",
    "write_analyze_report",
    "write_report",
    "write_run_report",
]
