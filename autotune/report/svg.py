"""Hand-written SVG figures of the report: timeline lanes, slack strips, search plots.

They only lay out data prepared by `autotune.report.figures`; every string is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from autotune.report.figures import (
    History,
    Importance,
    SlackFigure,
    TimelineLayer,
    TrialPoint,
)

# Colours by task role (timeline) — chosen to stay distinguishable for common colour blindness.
ROLE_COLOURS: dict[str, str] = {
    "vector:swiglu": "#2ca25f",
    "vector:norm": "#99d8c9",
    "vector:quant": "#66c2a4",
    "vector:gating": "#006d2c",
    "cube": "#4c78a8",
    "comm": "#b279a2",
    "prefetch": "#f58518",
    "wait": "#e45756",
    "record": "#9d9d9d",
    "other": "#d4cfc9",
}

ROLE_LABELS: dict[str, str] = {
    "vector:swiglu": "vector: swiglu",
    "vector:norm": "vector: norm",
    "vector:quant": "vector: quant",
    "vector:gating": "vector: gating",
    "cube": "cube (matmul, attention)",
    "comm": "communication",
    "prefetch": "CMO prefetch",
    "wait": "wait (join / stall)",
    "record": "event record",
    "other": "other",
}

SERIES_COLOURS = ("#f58518", "#4c78a8", "#54a24b", "#b279a2", "#e45756", "#72b7b2")

OK = "#2e7d32"

BAD = "#c62828"

ROLE_MARKS = {
    "baseline": "#7f7f7f",
    "default": "#4c78a8",
    "seed": "#b279a2",
    "guided": "#72b7b2",
    "search": "#f58518",
    "confirm": "#54a24b",
}


def esc(value: object) -> str:
    """Escape any value for HTML text and attribute context (also valid inside inline SVG)."""
    return html.escape(str(value), quote=True)


def fmt_num(x: float | int | None, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and not math.isfinite(x):
        return "—"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x * 100:.{digits}f}%"


def _nice_ticks(lo: float, hi: float, target: int = 8) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt_tick(v: float) -> str:
    if abs(v) >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:g}"


def _svg(svg_id: str, label: str, width: float, height: float, parts: Sequence[str]) -> str:
    """An inline SVG figure of the given size around `parts` (already escaped markup)."""
    return (
        f"<svg id='{svg_id}' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
        f"width='{width}' height='{height}' role='img' aria-label='{label}'>"
        + "".join(parts)
        + "</svg>"
    )


def _stream_label(stream: int | None) -> str:
    return "" if stream is None else f" (stream {stream})"


def _streams_label(streams: Sequence[int]) -> str:
    if not streams:
        return ""
    many = len(streams) > 1
    return f" (stream{'s' if many else ''} {', '.join(str(s) for s in streams)})"


def timeline_svg(layers: Sequence[TimelineLayer]) -> str:
    """One decoder layer per config, compute and prefetch lanes, all on one time scale."""
    width, left, right = 1120, 168, 18
    plot_w = width - left - right
    lane_h, lane_gap, title_h, panel_gap, axis_h = 26, 6, 20, 16, 34
    dur = max((layer.duration_us for layer in layers), default=0.0) or 1.0

    def x(us: float) -> float:
        return left + max(0.0, min(us, dur)) / dur * plot_w

    parts: list[str] = []
    y = 4
    for li, layer in enumerate(layers):
        parts.append(
            f"<text x='4' y='{y + 14}' font-size='13'><tspan font-weight='700'>"
            f"{esc(layer.label)}</tspan><tspan fill='#5b6475' font-size='11.5' dx='10'>"
            f"{esc(layer.choice.reason)}</tspan></text>"
        )
        y += title_h
        y_c, y_p = y, y + lane_h + lane_gap
        parts.append(
            f"<g class='lane' data-lane='compute' data-panel='{li}'>"
            f"<rect x='{left}' y='{y_c}' width='{plot_w}' height='{lane_h}' fill='#f6f7f9'/>"
            f"<text x='{left - 8}' y='{y_c + 17}' font-size='12' text-anchor='end'>compute"
            f"{esc(_stream_label(layer.compute_stream))}"
            "</text></g>"
            f"<g class='lane' data-lane='prefetch' data-panel='{li}'>"
            f"<rect x='{left}' y='{y_p}' width='{plot_w}' height='{lane_h}' fill='#f6f7f9'/>"
            f"<text x='{left - 8}' y='{y_p + 17}' font-size='12' text-anchor='end'>prefetch"
            f"{esc(_streams_label(layer.prefetch_streams))}"
            "</text></g>"
        )
        # Window bands behind the bars: where each prefetch is meant to hide, and its deadline.
        for pf in layer.prefetches:
            if not (math.isfinite(pf.window_start_us) and math.isfinite(pf.window_end_us)):
                continue
            colour = BAD if pf.late else OK
            x0, x1 = x(pf.window_start_us), x(pf.window_end_us)
            tip = (
                f"{pf.site} window\nwindow {pf.window_start_us:.2f}–{pf.window_end_us:.2f} µs\n"
                f"prefetch {pf.start_us:.2f}–{pf.end_us:.2f} µs\nslack {pf.slack_us:.2f} µs, "
                f"hidden {pf.hidden_fraction * 100:.1f}%, stall {pf.stall_us:.2f} µs"
                + ("\nLATE: ends after its window" if pf.late else "")
            )
            parts.append(
                f"<g class='hov window' data-site='{esc(pf.site)}'><title>{esc(tip)}</title>"
                f"<rect x='{x0:.2f}' y='{y_c - 2}' width='{max(x1 - x0, 1):.2f}' "
                f"height='{2 * lane_h + lane_gap + 4}' fill='{colour}' fill-opacity='0.10'/>"
                f"<line x1='{x1:.2f}' x2='{x1:.2f}' y1='{y_c - 3}' y2='{y_p + lane_h + 3}' "
                f"stroke='{colour}' stroke-width='1.4' stroke-dasharray='4 2'/></g>"
            )
        late_by_start = {round(pf.start_us, 3): pf for pf in layer.prefetches}
        label_ends = [-1e9, -1e9]  # right end of the last site label on each of two text rows
        for t in layer.tasks:
            ty = y_c if t.lane == "compute" else y_p
            x0 = x(t.start_us)
            w = max(x(t.start_us + t.dur_us) - x0, 0.8)
            colour = ROLE_COLOURS.get(t.role, ROLE_COLOURS["other"])
            tip = (
                f"{t.name}\ntype {t.type}"
                + (f" · op {t.op_type}" if t.op_type and t.op_type != t.name else "")
                + f" · {t.role}\nstart {t.start_us:.2f} µs, duration {t.dur_us:.2f} µs"
            )
            stroke = ""
            label = ""
            if t.role == "prefetch":
                match = late_by_start.get(round(t.start_us, 3))
                if match is not None:
                    pf = match
                    tip += f"\nsite {pf.site}, slack {pf.slack_us:.2f} µs" + (
                        " (LATE)" if pf.late else ""
                    )
                    stroke = f" stroke='{BAD if pf.late else OK}' stroke-width='2'"
                    # Site name under the bar, so narrow CMOs are still named; two rows so
                    # neighbouring names do not overprint.
                    text = f"{pf.site}{' late' if pf.late else ''}"
                    row = 0 if x0 >= label_ends[0] + 3 else 1
                    label_ends[row] = x0 + 5.6 * len(text)
                    label = (
                        f"<text x='{x0:.2f}' y='{ty + lane_h + 10 + 11 * row}' font-size='10' "
                        f"fill='{BAD if pf.late else OK}' pointer-events='none'>"
                        f"{esc(text)}</text>"
                    )
            parts.append(
                f"<g class='hov task' data-role='{esc(t.role)}'><title>{esc(tip)}</title>"
                f"<rect x='{x0:.2f}' y='{ty + 2}' width='{w:.2f}' height='{lane_h - 4}' "
                f"fill='{esc(colour)}'{stroke}/></g>{label}"
            )
        if layer.tasks and not any(t.lane == "prefetch" for t in layer.tasks):
            parts.append(
                f"<text x='{left + 8}' y='{y_p + 17}' font-size='11.5' fill='#5b6475'>"
                "no prefetch task in this layer</text>"
            )
        if not layer.tasks:
            parts.append(
                f"<text x='{left + 8}' y='{y_c + 17}' font-size='12' fill='#c62828'>"
                "no decoder layer could be cut out of this profile</text>"
            )
        y = y_p + lane_h + 23 + panel_gap
    # Shared axis.
    _axis_x(parts, 0.0, dur, x, left, plot_w, y, "µs from the layer's input norm")
    height = y + axis_h
    return _svg("timeline", "decoder layer timeline", width, height, parts)


def slack_svg(fig: SlackFigure) -> str:
    width, left, right = 1120, 168, 18
    row_h, gap, axis_h = 64, 12, 34
    plot_w = width - left - right
    if not fig.series or len(fig.edges_us) < 2:
        return "<p class='note'>No attributed prefetches: no slack to show.</p>"
    lo, hi = fig.edges_us[0], fig.edges_us[-1]
    labels = list(dict.fromkeys(s.label for s in fig.series))
    sites = list(dict.fromkeys(s.site for s in fig.series))

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    # Late is slack below −tolerance: the shading and the line follow the tables' rule.
    late_at = -fig.tolerance_us if fig.tolerance_us else 0.0
    parts: list[str] = []
    y = 6
    for site in sites:
        row = [s for s in fig.series if s.site == site]
        peak = max((max(s.counts) for s in row), default=1) or 1
        parts.append(
            f"<g class='slack-row' data-site='{esc(site)}'>"
            f"<rect x='{left}' y='{y}' width='{plot_w}' height='{row_h}' fill='#fbfbfc' "
            "stroke='#e3e6eb'/>"
            f"<rect class='late-zone' x='{left}' y='{y}' width='{max(x(late_at) - left, 0):.2f}' "
            f"height='{row_h}' fill='#c62828' fill-opacity='0.06'/>"
            f"<text x='{left - 8}' y='{y + 18}' font-size='12.5' font-weight='700' "
            f"text-anchor='end'>{esc(site)}</text>"
        )
        for i, s in enumerate(row):
            colour = SERIES_COLOURS[labels.index(s.label) % len(SERIES_COLOURS)]
            # The legend above names the configs; here only their counts, in their colour.
            parts.append(
                f"<text x='{left - 8}' y='{y + 33 + 13 * i}' font-size='11' text-anchor='end' "
                f"fill='{colour}'><title>{esc(s.label)}</title>n={s.n:,}, late={s.late:,}</text>"
            )
            for b, c in enumerate(s.counts):
                if not c:
                    continue
                x0, x1 = x(fig.edges_us[b]), x(fig.edges_us[b + 1])
                h = c / peak * (row_h - 6)
                tip = (
                    f"{s.label} · {site}\nslack {fig.edges_us[b]:.2f} to "
                    f"{fig.edges_us[b + 1]:.2f} µs"
                    f"\n{c:,} prefetch(es)"
                )
                parts.append(
                    f"<rect class='hov' x='{x0 + 0.5:.2f}' y='{y + row_h - h:.2f}' "
                    f"width='{max(x1 - x0 - 1, 0.8):.2f}' height='{h:.2f}' fill='{colour}' "
                    f"fill-opacity='{0.75 if len(labels) == 1 else 0.55}'><title>"
                    f"{esc(tip)}</title></rect>"
                )
        parts.append("</g>")
        y += row_h + gap
    zx = x(late_at)
    parts.append(
        f"<line class='late-line' x1='{zx:.2f}' x2='{zx:.2f}' y1='2' y2='{y - gap + 4}' "
        "stroke='#c62828' stroke-dasharray='4 2'/>"
        f"<text x='{zx - 4:.2f}' y='{y - gap + 2}' font-size='10.5' text-anchor='end' "
        "fill='#c62828'>late ←</text>"
    )
    y -= gap - 6
    _axis_x(
        parts,
        lo,
        hi,
        x,
        left,
        plot_w,
        y,
        f"slack µs (window end − prefetch end); left of {late_at:g} is late",
    )
    height = y + axis_h
    return _svg("slack", "slack distribution per site", width, height, parts)


def _axis_x(
    parts: list[str],
    lo: float,
    hi: float,
    x_of: Any,
    left: int,
    plot_w: int,
    y: float,
    caption: str,
) -> None:
    """A bottom axis at height `y`: baseline, ticks with labels, and a caption below."""
    parts.append(f"<line x1='{left}' x2='{left + plot_w}' y1='{y}' y2='{y}' stroke='#5b6475'/>")
    for tv in _nice_ticks(lo, hi):
        tx = x_of(tv)
        parts.append(
            f"<line x1='{tx:.2f}' x2='{tx:.2f}' y1='{y}' y2='{y + 5}' stroke='#5b6475'/>"
            f"<text x='{tx:.2f}' y='{y + 17}' font-size='11' text-anchor='middle'>"
            f"{_fmt_tick(tv)}</text>"
        )
    parts.append(
        f"<text x='{left + plot_w / 2:.0f}' y='{y + 31}' font-size='11.5' text-anchor='middle' "
        f"fill='#5b6475'>{esc(caption)}</text>"
    )


def _axis_y(parts: list[str], lo: float, hi: float, y_of: Any, left: int, plot_w: int) -> None:
    for tv in _nice_ticks(lo, hi, 5):
        ty = y_of(tv)
        parts.append(
            f"<line x1='{left}' x2='{left + plot_w}' y1='{ty:.2f}' y2='{ty:.2f}' stroke='#eceff3'/>"
            f"<text x='{left - 6}' y='{ty + 4:.2f}' font-size='11' text-anchor='end'>"
            f"{_fmt_tick(tv)}</text>"
        )


def _pad(lo: float, hi: float) -> tuple[float, float]:
    if hi - lo < 1e-9:
        return lo - 1.0, hi + 1.0
    d = (hi - lo) * 0.06
    return lo - d, hi + d


def _trial_tip(p: TrialPoint, objective_name: str) -> str:
    mib = ", ".join(f"{k} {v:.2f} MiB" for k, v in p.effective_mib.items())
    return (
        f"trial {p.number} ({p.role}, {p.state})\n{objective_name} {fmt_num(p.objective)}"
        + (f"\nthroughput {fmt_num(p.throughput)} tok/s" if p.throughput is not None else "")
        + ("\ninfeasible (late)" if p.feasible is False else "")
        + (f"\n{mib}" if mib else "")
    )


def history_svg(h: History, *, objective_name: str, best_number: int | None = None) -> str:
    width, height, left, right, top, bottom = 1120, 300, 78, 18, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    pts = [p for p in h.points if p.objective is not None and math.isfinite(p.objective)]
    if not pts:
        return "<p class='note'>No trial has a measured objective yet.</p>"
    xs = [p.number for p in h.points]
    x_lo, x_hi = _pad(float(min(xs)), float(max(xs)))
    ys = [float(p.objective) for p in pts if p.objective is not None]
    ys += [p.estimate for p in h.points if p.estimate is not None and math.isfinite(p.estimate)]
    y_lo, y_hi = _pad(min(ys), max(ys))

    def x(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h

    parts: list[str] = []
    _axis_y(parts, y_lo, y_hi, y, left, plot_w)
    if h.best_so_far:
        path = []
        for i, (n, v) in enumerate(h.best_so_far):
            if i:
                path.append(f"H{x(n):.2f}V{y(v):.2f}")
            else:
                path.append(f"M{x(n):.2f},{y(v):.2f}")
        path.append(f"H{x(x_hi):.2f}")
        parts.append(
            f"<path id='best-so-far' d='{''.join(path)}' fill='none' stroke='#2e7d32' "
            "stroke-width='2'/>"
        )
    for p in h.points:
        if p.estimate is not None and math.isfinite(p.estimate) and y_lo <= p.estimate <= y_hi:
            # The search's estimate for the trial: a short dash the line steps along.
            parts.append(
                f"<line class='estimate' x1='{x(p.number) - 7:.2f}' x2='{x(p.number) + 7:.2f}' "
                f"y1='{y(p.estimate):.2f}' y2='{y(p.estimate):.2f}' stroke='#2e7d32' "
                "stroke-width='2' stroke-opacity='0.55'/>"
            )
    for p in pts:
        assert p.objective is not None
        colour = ROLE_MARKS.get(p.role, "#f58518")
        hollow = p.state != "complete" or p.feasible is False
        fill = "#ffffff" if hollow else colour
        parts.append(
            f"<circle class='hov trial-pt' cx='{x(p.number):.2f}' cy='{y(p.objective):.2f}' "
            "r='4.5' "
            f"fill='{fill}' stroke='{colour}' stroke-width='1.6'>"
            f"<title>{esc(_trial_tip(p, objective_name))}</title></circle>"
        )
    bottom_y = top + plot_h
    parts.append(
        f"<line x1='{left}' x2='{left + plot_w}' y1='{bottom_y}' y2='{bottom_y}' stroke='#5b6475'/>"
    )
    for tv in _nice_ticks(x_lo, x_hi, 12):
        if tv != int(tv):
            continue
        tx = x(tv)
        parts.append(
            f"<line x1='{tx:.2f}' x2='{tx:.2f}' y1='{bottom_y}' y2='{bottom_y + 5}' "
            "stroke='#5b6475'/>"
            f"<text x='{tx:.2f}' y='{bottom_y + 17}' font-size='11' text-anchor='middle'>"
            f"{tv:.0f}</text>"
        )
    parts.append(
        f"<text x='{left + plot_w / 2:.0f}' y='{height - 6}' font-size='11.5' text-anchor='middle' "
        "fill='#5b6475'>trial</text>"
        f"<text x='14' y='{top + plot_h / 2:.0f}' font-size='11.5' text-anchor='middle' "
        "fill='#5b6475' "
        f"transform='rotate(-90 14 {top + plot_h / 2:.0f})'>{esc(objective_name)}</text>"
    )
    best_pt = next((p for p in pts if p.number == best_number), None)
    if best_pt is not None and best_pt.objective is not None:
        parts.append(
            f"<circle id='best-mark' cx='{x(best_pt.number):.2f}' cy='{y(best_pt.objective):.2f}' "
            "r='9' fill='none' stroke='#2e7d32' stroke-width='2' pointer-events='none'/>"
        )
    return _svg("history", "optimisation history", width, height, parts)


def scatter_svg(points: Sequence[TrialPoint], sites: Sequence[str]) -> str:
    """Throughput against each site's effective bytes, one small panel per site."""
    pts = [p for p in points if p.throughput is not None and math.isfinite(p.throughput)]
    if not pts or not sites:
        return "<p class='note'>No measured throughput yet.</p>"
    cols = min(len(sites), 3)
    pw, ph, left, top, gap_x, gap_y = 300, 190, 62, 22, 66, 56
    width = left + cols * pw + (cols - 1) * gap_x + 12
    rows = math.ceil(len(sites) / cols)
    height = top + rows * (ph + gap_y)
    ys = [float(p.throughput) for p in pts if p.throughput is not None]
    y_lo, y_hi = _pad(min(ys), max(ys))
    parts: list[str] = []
    for i, site in enumerate(sites):
        ox = left + (i % cols) * (pw + gap_x)
        oy = top + (i // cols) * (ph + gap_y)
        xs = [p.effective_mib.get(site, 0.0) for p in pts]
        x_lo, x_hi = _pad(min(0.0, *xs), max(xs))

        def x(v: float, ox: int = ox, x_lo: float = x_lo, x_hi: float = x_hi) -> float:
            return ox + (v - x_lo) / (x_hi - x_lo) * pw

        def y(v: float, oy: int = oy) -> float:
            return oy + ph - (v - y_lo) / (y_hi - y_lo) * ph

        parts.append(
            f"<g class='scatter' data-site='{esc(site)}'>"
            f"<rect x='{ox}' y='{oy}' width='{pw}' height='{ph}' fill='#fbfbfc' stroke='#e3e6eb'/>"
            f"<text x='{ox}' y='{oy - 6}' font-size='12.5' font-weight='700'>{esc(site)}</text>"
        )
        for tv in _nice_ticks(y_lo, y_hi, 4):
            parts.append(
                f"<text x='{ox - 5}' y='{y(tv) + 4:.2f}' font-size='10.5' text-anchor='end'>"
                f"{_fmt_tick(tv)}</text>"
                f"<line x1='{ox}' x2='{ox + pw}' y1='{y(tv):.2f}' y2='{y(tv):.2f}' "
                "stroke='#eceff3'/>"
            )
        for tv in _nice_ticks(x_lo, x_hi, 5):
            parts.append(
                f"<text x='{x(tv):.2f}' y='{oy + ph + 14}' font-size='10.5' text-anchor='middle'>"
                f"{_fmt_tick(tv)}</text>"
            )
        parts.append(
            f"<text x='{ox + pw / 2:.0f}' y='{oy + ph + 30}' font-size='11' text-anchor='middle' "
            "fill='#5b6475'>effective MiB per layer</text>"
        )
        for p in pts:
            assert p.throughput is not None
            colour = ROLE_MARKS.get(p.role, "#f58518")
            fill = "#ffffff" if p.feasible is False else colour
            parts.append(
                f"<circle class='hov' cx='{x(p.effective_mib.get(site, 0.0)):.2f}' "
                f"cy='{y(p.throughput):.2f}' r='4' fill='{fill}' stroke='{colour}' "
                "stroke-width='1.4' "
                f"fill-opacity='0.85'><title>{esc(_trial_tip(p, 'objective'))}</title></circle>"
            )
        parts.append("</g>")
    parts.append(
        f"<text x='12' y='{top + ph / 2:.0f}' font-size='11' text-anchor='middle' fill='#5b6475' "
        f"transform='rotate(-90 12 {top + ph / 2:.0f})'>throughput tok/s</text>"
    )
    return _svg("scatter", "throughput vs effective bytes", width, height, parts)


def importance_svg(imp: Importance) -> str:
    if not imp.values:
        return ""
    width, left, bar_h, gap = 720, 130, 20, 8
    plot_w = width - left - 70
    height = len(imp.values) * (bar_h + gap) + 8
    peak = max(v for _, v in imp.values) or 1.0
    parts = []
    for i, (name, v) in enumerate(imp.values):
        y = 4 + i * (bar_h + gap)
        w = v / peak * plot_w
        parts.append(
            f"<text x='{left - 8}' y='{y + 14}' font-size='12' text-anchor='end'>{esc(name)}</text>"
            f"<rect class='hov' x='{left}' y='{y}' width='{max(w, 1):.2f}' height='{bar_h}' "
            "fill='#4c78a8'>"
            f"<title>{esc(f'{name}: {v:.3f} ({imp.method})')}</title></rect>"
            f"<text x='{left + w + 6:.2f}' y='{y + 14}' font-size='11.5'>{v:.3f}</text>"
        )
    return _svg("importance", "parameter importance", width, height, parts)
