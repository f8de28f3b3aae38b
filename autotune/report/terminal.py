"""Terminal view of `autotune analyze`: the per-site table and what the analysis could not place.

Presentation only: every number comes from an `OverlapResult`.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from autotune.overlap import OverlapResult

SIMULATED = "SIMULATED (modelled, not measured)"
VERDICT_STYLE = {"hidden": "bold green", "late": "bold red", "inert": "yellow"}


def _num(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 100:.0f}%"


def site_table(result: OverlapResult) -> Table:
    """One row per site: count, lateness, hidden share, slack, stall per step and the verdict."""
    n = len(result.prefetches)
    table = Table(
        title=f"Prefetch overlap: {n} prefetch(es), {result.steps} step(s)",
        title_justify="left",
        caption="slack and stall in µs; hidden: median share of a prefetch inside its window",
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


def print_overlap(result: OverlapResult, console: Console) -> None:
    """Print the analysis: simulated banner, site table, warnings and the leftovers."""
    if result.simulated:
        console.print(Text(SIMULATED, style="bold magenta"))
    if result.sites:
        console.print(site_table(result))
    else:
        console.print("No prefetch and no prefetch window found.", markup=False)
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
