"""Terminal view of `autotune analyze`: the per-site table and what the analysis could not place.

Presentation only: every number comes from an `OverlapResult`.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from autotune.lateness import rule_text
from autotune.overlap import OverlapResult
from autotune.profile.tasks import Profile

SIMULATED = "SIMULATED (modelled, not measured)"
VERDICT_STYLE = {"hidden": "bold green", "late": "bold red", "inert": "yellow"}


def _num(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 100:.0f}%"


def site_table(result: OverlapResult, title: str = "") -> Table:
    """One row per site: count, lateness, hidden share, slack, stall per step and the verdict."""
    n = len(result.prefetches)
    head = f"{title}: " if title else ""
    table = Table(
        title=f"{head}Prefetch overlap: {n} prefetch(es), {result.steps} step(s)",
        title_justify="left",
        caption="slack and stall in µs; hidden: median share of a prefetch inside its window; "
        + rule_text(result.late_tolerance_us),
        caption_justify="left",
    )
    # Site and verdict never wrap or truncate; the numeric headers wrap on a narrow terminal.
    table.add_column("site", no_wrap=True, min_width=11)
    table.add_column("count", justify="right")
    table.add_column("late", justify="right")
    table.add_column("hidden", justify="right")
    table.add_column("slack med", justify="right")
    table.add_column("slack p90", justify="right")
    table.add_column("stall per step", justify="right")
    table.add_column("verdict", no_wrap=True, min_width=7)
    for s in result.sites:
        table.add_row(
            s.site,
            str(s.count),
            Text(str(s.late), style="red" if s.late else ""),
            _pct(s.hidden_fraction_median),
            _num(s.slack_us_median),
            _num(s.slack_us_p90),
            _num(s.stall_us_per_step),
            Text(s.verdict, style=VERDICT_STYLE.get(s.verdict, "")),
        )
    return table


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
    if result.sites:
        console.print(site_table(result, title))
    else:
        head = f"{title}: " if title else ""
        console.print(f"{head}No prefetch and no prefetch window found.", markup=False)
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
