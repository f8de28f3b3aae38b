"""Terminal view of `autotune analyze`: the per-site table and what the analysis could not place.

Presentation only: every number comes from an `OverlapResult`.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from autotune.lateness import rule_text
from autotune.overlap import OverlapResult, SiteSummary
from autotune.points import PointSummary, point_label
from autotune.profile.tasks import Profile

SIMULATED = "SIMULATED (modelled, not measured)"
VERDICT_STYLE = {"hidden": "bold green", "late": "bold red", "inert": "yellow"}


def _num(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 100:.0f}%"


def _overlap_table(
    result: OverlapResult, title: str, what: str, name_column: str, contention: bool
) -> Table:
    """The per-site (or per-point) table's frame: title, caption and the shared columns."""
    n = len(result.prefetches)
    head = f"{title}: " if title else ""
    table = Table(
        title=f"{head}{what}: {n} prefetch(es), {result.steps} step(s)",
        title_justify="left",
        caption="slack and stall in µs; hidden: median share of a prefetch inside its window; "
        + (
            "cube in window: prefetches whose window holds a cube op (contention); "
            if contention
            else ""
        )
        + rule_text(result.late_tolerance_us),
        caption_justify="left",
    )
    # Name and verdict never wrap or truncate; the numeric headers wrap on a narrow terminal.
    if contention:
        table.add_column(name_column, ratio=1)
    else:
        table.add_column(name_column, no_wrap=True, min_width=11)
    for column in ("count", "late", "hidden", "slack med", "slack p90", "stall per step"):
        table.add_column(column, justify="right")
    if contention:
        table.add_column("cube in window", justify="right")
    table.add_column("verdict", no_wrap=True, min_width=7)
    return table


def _cells(s: SiteSummary | PointSummary) -> list[str | Text]:
    """count, late, hidden, slack median and p90, stall per step: a site's or a point's."""
    return [
        str(s.count),
        Text(str(s.late), style="red" if s.late else ""),
        _pct(s.hidden_fraction_median),
        _num(s.slack_us_median),
        _num(s.slack_us_p90),
        _num(s.stall_us_per_step),
    ]


def _verdict(verdict: str) -> Text:
    return Text(verdict, style=VERDICT_STYLE.get(verdict, ""))


def site_table(result: OverlapResult, title: str = "") -> Table:
    """One row per site: count, lateness, hidden share, slack, stall per step and the verdict."""
    table = _overlap_table(result, title, "Prefetch overlap", "site", contention=False)
    for s in result.sites:
        table.add_row(s.site, *_cells(s), _verdict(s.verdict))
    return table


def layout_line(result: OverlapResult) -> str:
    """`layout: <name> (<why>)`."""
    why = f" ({result.layout_reason})" if result.layout_reason else ""
    return f"layout: {result.layout}{why}"


def point_table(result: OverlapResult, title: str = "") -> Table:
    """One row per prefetch point: the site table's metrics, plus windows holding a cube op."""
    table = _overlap_table(
        result,
        title,
        "Prefetch points",
        "point (issued after → first window op ⇒ consumer)",
        contention=True,
    )
    for p in result.points:
        name = point_label(p) + ("" if p.consumer_known else " (consumer?)")
        cube = Text(str(p.contention), style="yellow" if p.contention else "")
        table.add_row(name, *_cells(p), cube, _verdict(p.verdict))
    return table


def change_table(result: OverlapResult) -> Table:
    """Per point, what to change: an estimate from this profile, labelled as one."""
    table = Table(
        title="What to change (an estimate from this profile)",
        title_justify="left",
        caption="µs; time left: from the CMO's start to its window's end; fits: the share of "
        "today's prefetch that would end in time at this profile's CMO speed (time left ÷ CMO); "
        "stall: the join stall per step a prefetch that fits would remove; set: at most the "
        "whole weight. "
        + "; ".join(sorted({_knob_note(p) for p in result.points}))
        + _shared(result),
        caption_justify="left",
    )
    table.add_column("point", ratio=1)
    table.add_column("CMO", justify="right")
    table.add_column("time left", justify="right")
    table.add_column("fits", justify="right")
    table.add_column("stall per step", justify="right")
    table.add_column("set", no_wrap=True)
    for p in result.points:
        c = p.change
        table.add_row(
            point_label(p),
            _num(c.cmo_us),
            _num(c.available_us),
            _pct(c.hide_share),
            _num(c.stall_us_per_step),
            c.setting or "— (fixed)",
        )
    return table


def _shared(result: OverlapResult) -> str:
    """A note when one site's ratio sets several points (attn.o fires on o_proj and down_proj)."""
    sites = [p.site for p in result.points if p.site]
    shared = sorted({s for s in sites if sites.count(s) > 1})
    if not shared:
        return ""
    return f"; one ratio sets every point of {', '.join(shared)}: the smallest share binds"


def _knob_note(p: PointSummary) -> str:
    if p.change.setting.startswith("ratio"):
        return "ratio: the site's weight_prefetch_config ratio"
    return p.change.knob


def _counts(items: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in items.items())


def profiles_line(profiles: list[Profile]) -> str:
    """Which ranks were read, from where: `read 2 profile(s): rank 0 (db, <dir>), ...`."""
    parts = [
        f"rank {'?' if p.rank is None else p.rank} ({p.source}, {len(p.tasks):,} tasks, {p.path})"
        for p in profiles
    ]
    return f"read {len(profiles)} profile(s): " + "; ".join(parts)


def print_overlap(result: OverlapResult, console: Console, title: str = "") -> None:
    """Print the analysis: simulated banner, site table, warnings and the leftovers."""
    if result.simulated:
        console.print(Text(SIMULATED, style="bold magenta"))
    console.print(layout_line(result), markup=False)
    if result.sites:
        console.print(site_table(result, title))
    elif result.points:
        console.print(point_table(result, title))
    else:
        head = f"{title}: " if title else ""
        console.print(f"{head}No prefetch and no prefetch window found.", markup=False)
    if result.points:
        console.print(change_table(result))
    unknown = [point_label(p) for p in result.points if not p.consumer_known]
    if unknown:
        console.print(
            Text(
                "consumer not known (the k-th cube op after the issue is a guess: more cube ops "
                "run before the join than the point issues CMOs): " + "; ".join(unknown),
                "yellow",
            )
        )
    if result.unattributed_stall_us > 0:
        console.print(
            Text(
                f"unattributed stall: {result.unattributed_stall_us_per_step:,.1f} µs per step "
                f"(joins no prefetch was matched to; "
                f"{result.join_us_total:,.1f} µs of joins in total)",
                "yellow",
            )
        )
    for w in result.warnings:
        console.print(Text.assemble(("warning: ", "yellow"), w))
    if result.unclassified_types:
        console.print(
            Text.assemble(
                ("unclassified task types", "yellow"),
                " (add them to a --rules file): ",
                _counts(result.unclassified_types),
            )
        )
    if result.unattributed:
        console.print(
            Text(f"{result.unattributed} prefetch(es) matched no window (unattributed)", "yellow")
        )
    if result.windows_without_prefetch:
        console.print(
            Text.assemble("windows without prefetch: ", _counts(result.windows_without_prefetch))
        )
