"""Terminal view of `autotune run`: progress over trials, a live table, and the final result."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from autotune.lateness import rule_text
from autotune.rundir import MIB, TrialRecord

SIMULATED = "SIMULATED (modelled)"
# Rows of the live table; older trials scroll away (trials.csv has them all).
LIVE_ROWS = 16


def plural(n: int, word: str) -> str:
    """`1 trial`, `2 trials`, `0 duplicates`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def short_site(site: str) -> str:
    """`mlp.gate_up` -> `gate_up`, `attn.qkv` -> `qkv`: enough to tell sites apart in a table."""
    return site.split(".", 1)[1]


def config_text(effective_bytes: Mapping[str, int], sites: Sequence[str]) -> str:
    """Effective MiB per site in `sites` order, e.g. `4/2/18/8` (0 = no prefetch)."""
    parts = [_mib(effective_bytes.get(s, 0)) for s in sites]
    return "/".join(parts) if parts else "-"


def config_header(sites: Sequence[str]) -> str:
    """Column title matching `config_text`, e.g. `MiB qkv/o/gate_up/down`."""
    return "MiB " + "/".join(short_site(s) for s in sites) if sites else "MiB"


def _mib(nbytes: int) -> str:
    mib = nbytes / MIB
    # Near-off prefetches (a few KiB) show as ~0, not as a long decimal.
    return "0" if mib == 0 else "~0" if mib < 0.1 else f"{mib:.3g}"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


class TerminalRunView:
    """A RunObserver that draws progress and a live trial table with rich."""

    def __init__(
        self,
        console: Console,
        *,
        sites: Sequence[str],
        budget: int,
        simulated: bool,
        done: int = 0,
        history: Sequence[tuple[TrialRecord, TrialRecord | None]] = (),
        late_tolerance_us: float | None = None,
    ) -> None:
        self.console = console
        self.sites = list(sites)
        self.late_tolerance_us = late_tolerance_us
        self.simulated = simulated
        # A resumed run starts with the rows of the trials it already has.
        self.rows: list[tuple[TrialRecord, TrialRecord | None]] = list(history)
        self.note = ""
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        # A resumed run starts with its finished trials already counted.
        self.task = self.progress.add_task("", total=budget, completed=done)
        self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> TerminalRunView:
        if self.simulated:
            self.console.print(
                f"[bold yellow]{SIMULATED}[/]: no NPU is used; numbers come from a model."
            )
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(None, None, None)
        self.console.print()

    # RunObserver

    def phase(self, message: str) -> None:
        self.note = message
        self.live.update(self._render())

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None:
        sites = self.sites or [s for s, b in effective_bytes.items() if b]
        self.progress.update(
            self.task,
            description=f"trial {number} ({role}): {config_header(sites)} "
            f"{config_text(effective_bytes, sites)}",
        )
        self.live.update(self._render())

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        self.rows.append((record, best))
        if record.searched:  # confirmations are not in the --trials budget
            self.progress.advance(self.task)
        self.progress.update(self.task, description="")
        self.live.update(self._render())

    def set_sites(self, sites: Sequence[str]) -> None:
        self.sites = list(sites)

    # drawing

    def _table(self) -> Table:
        title = "trials" + (f" — {SIMULATED}" if self.simulated else "")
        omitted = max(0, len(self.rows) - LIVE_ROWS)
        notes = [] if self.late_tolerance_us is None else [rule_text(self.late_tolerance_us)]
        if omitted:
            notes.append(f"{plural(omitted, 'earlier trial')} not shown (all in trials.csv)")
        table = Table(
            title=title,
            title_justify="left",
            expand=False,
            caption="\n".join(notes) or None,
            caption_justify="left",
        )
        table.add_column("trial", justify="right")
        table.add_column("role")
        sites = self.sites or list(self.rows[-1][0].effective_bytes) if self.rows else self.sites
        table.add_column(config_header(sites), no_wrap=True)
        table.add_column("tok/s", justify="right")
        table.add_column("late sites")
        # The best is ranked by its estimate (bench and profile together), so that is shown.
        table.add_column("best so far (est.)", justify="right")
        for record, best in self.rows[-LIVE_ROWS:]:
            tput: str | Text
            if record.state == "duplicate":
                tput = f"= #{record.duplicate_of}"
            elif record.state == "failed":
                tput = Text("failed", style="red")
            else:
                tput = _fmt(record.throughput)
            late = ", ".join(short_site(s) for s in record.late_sites) or "-"
            best_text = "-" if best is None else f"#{best.number} {_fmt(best.estimate)}"
            role = record.role if record.confirms is None else f"confirm #{record.confirms}"
            table.add_row(
                str(record.number),
                role,
                config_text(record.effective_bytes, sites),
                tput,
                late,
                best_text,
            )
        return table

    def _render(self) -> RenderableType:
        parts: list[RenderableType] = [self.progress]
        if self.note:
            parts.append(Text(self.note, style="dim"))
        if self.rows:
            parts.append(self._table())
        return Group(*parts)


def past_rows(
    records: Sequence[TrialRecord], objective: str, late_is_infeasible: bool = False
) -> list[tuple[TrialRecord, TrialRecord | None]]:
    """Rows for trials already in the run, each with the best as it stood after it (by the
    run's pick rule: `late_is_infeasible` is its --late-is-infeasible)."""
    from autotune.search.summary import best_record

    ordered = sorted(records, key=lambda r: r.number)
    rows: list[tuple[TrialRecord, TrialRecord | None]] = []
    for i, record in enumerate(ordered):
        # Copies: ranking a prefix sets estimates, and the records' own must stay the full run's.
        prefix = [replace(r) for r in ordered[: i + 1]]
        best = best_record(prefix, objective, late_is_infeasible=late_is_infeasible)
        rows.append((record, best))
    return rows


def trial_line(
    record: TrialRecord, best: TrialRecord | None, sites: Sequence[str], objective: str
) -> str:
    """One plain line per trial, for logs: number, role, MiB per site, objective, late, best."""
    sites = list(sites) or [s for s, b in record.effective_bytes.items() if b]
    unit = "tok/s" if objective == "throughput" else "ms TPOT"
    if record.state == "failed":
        result = f"failed: {record.error or 'no result'}"
    elif record.state == "duplicate":
        result = f"same effective bytes as trial {record.duplicate_of}, not re-run"
    else:
        result = f"{objective} {_fmt(record.objective, 2)} {unit}"
        if record.confirms is not None:
            result += f" (trial {record.confirms} measured again)"
    # Only a measured trial has late sites to state; "none" would claim a failed one was on time.
    late = (
        f"late sites: {', '.join(record.late_sites) or 'none'}; "
        if record.state != "failed"
        else ""
    )
    best_text = (
        "-" if best is None else f"trial {best.number} (estimated {_fmt(best.estimate, 2)} {unit})"
    )
    return (
        f"trial {record.number} {record.role}: {config_header(sites)} "
        f"{config_text(record.effective_bytes, sites)}; {result}; {late}"
        f"best so far: {best_text}"
    )


class PlainRunView:
    """A RunObserver for logs and pipes: one plain line per phase and per finished trial."""

    def __init__(
        self, console: Console, *, sites: Sequence[str], simulated: bool, objective: str
    ) -> None:
        self.console = console
        self.sites = list(sites)
        self.simulated = simulated
        self.objective = objective

    def phase(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=True)

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None:
        """Nothing until the trial ends: a log wants one line per trial."""

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        line = trial_line(record, best, self.sites, self.objective)
        prefix = "SIMULATED " if self.simulated else ""
        self.console.print(prefix + line, markup=False, soft_wrap=True)

    def set_sites(self, sites: Sequence[str]) -> None:
        self.sites = list(sites)


def confidence_lines(conf: Mapping[str, Any]) -> list[str]:
    """summary.json's confidence block as terminal lines: the winner's margins with intervals,
    what to run to settle an open one, the confirmation phase, the noise and the warnings."""
    if not conf:
        return []
    lines = [f"  confidence ({conf.get('interval', '')}):"]
    lines += [f"    {v}" for v in conf.get("verdict") or []]
    if conf.get("settle"):
        lines.append(f"    {conf['settle']}")
    confirmation = conf.get("confirmation") or {}
    if confirmation.get("text"):
        lines.append(f"    confirmation: {confirmation['text']}")
    noise = conf.get("noise") or {}
    if noise.get("text"):
        lines.append(f"    {noise['text']}")
    lines += [f"  WARNING: {w}" for w in conf.get("warnings") or []]
    return lines


def print_result(
    console: Console, summary: Mapping[str, Any], best_config: Mapping[str, Any] | None
) -> None:
    """The end of a run: best config, gains, inert sites and where everything was written."""
    simulated = bool(summary.get("simulated"))
    if simulated:
        console.print(f"[bold yellow]{SIMULATED}[/] result (backend {summary.get('backend')})")
    best = summary.get("best")
    if best is None:
        console.print("[red]no trial finished[/]")
    else:
        objective = summary.get("objective", "throughput")
        unit = "tok/s" if objective == "throughput" else "ms TPOT"
        console.print(
            f"[bold]best:[/] trial {best['trial']} ({best['role']}): measured "
            f"{_fmt(best.get('throughput'))} tok/s, TPOT {_fmt(best.get('tpot_ms'), 2)} ms; "
            f"estimated {_fmt(best.get('estimate'), 2)} {unit}"
        )
        if summary.get("picked_by"):
            late = ", ".join(best.get("late_sites") or []) or "none"
            console.print(f"  picked by: {summary['picked_by']}; late sites: {late}", markup=False)
        conf = summary.get("confidence") or {}
        for line in confidence_lines(conf):
            console.print(line, markup=False, soft_wrap=True)
        # A gain the benches cannot carry is stated, not celebrated.
        doubt = ""
        if conf.get("warnings"):
            doubt = " (the benches cannot carry it: see the warning above)"
        for label, key in (
            ("baseline (prefetch off)", "gain_over_baseline"),
            ("vendor default", "gain_over_default"),
        ):
            g = summary.get(key)
            if g is None:
                continue
            if g["low_pct"] == g["high_pct"]:
                spread = "one repeat, no spread"
            else:
                spread = f"spread over repeats {g['low_pct']:+.2f} … {g['high_pct']:+.2f} %"
            est = g.get("estimated_pct")
            est_text = "" if est is None else f", estimated {est:+.2f} %"
            console.print(
                f"  vs {label}: measured {g['pct']:+.2f} % ({spread}){est_text}{doubt}",
                markup=False,
            )
        rule = summary.get("pick_rule")
        if rule:
            console.print(f"[bold]pick rule:[/] {rule}", soft_wrap=True, highlight=False)
        for label, brief in (("winner", best), ("runner-up", summary.get("runner_up"))):
            if brief is None:
                continue
            value = brief.get("throughput") if objective == "throughput" else brief.get("tpot_ms")
            console.print(
                f"  {label:<9} trial {brief['trial']} ({brief['role']}): measured "
                f"{_fmt(value, 2)} {unit}, estimated {_fmt(brief.get('estimate'), 2)} {unit}",
                markup=False,
            )
    active = summary.get("active_sites") or []
    console.print(f"[bold]active sites:[/] {', '.join(active) or 'none'}")
    tol = summary.get("late_tolerance_us")
    if isinstance(tol, int | float):
        console.print(f"[bold]lateness:[/] {rule_text(float(tol))}", markup=True)
    if summary.get("probe_note"):
        console.print(f"note: {summary['probe_note']}", markup=False)
    inert = summary.get("inert_sites") or {}
    if inert:
        console.print("[bold]inert sites[/] (their ratio changes nothing here):")
        for site, reason in inert.items():
            console.print(f"  {site}: {reason}", markup=False)
    if best_config is not None:
        console.print("[bold]--additional-config:[/]")
        console.print(json.dumps(best_config, separators=(",", ":")), markup=False, soft_wrap=True)
        for key, why in (summary.get("best_config_keys") or {}).items():
            if key != "weight_prefetch_config":
                console.print(f"  {key}: {why}", markup=False)
    files = summary.get("files", {})
    run_dir = files.get("run_dir", "")
    console.print(
        f"[bold]written to[/] {run_dir}: "
        "best_config.json, summary.json, trials.csv, report.html, trials/",
        markup=True,
    )
    trials = summary.get("trials", {})
    console.print(
        f"{plural(trials.get('measured', 0), 'trial')} measured, "
        + (
            f"{plural(trials['confirmations'], 'confirmation')} measured again, "
            if trials.get("confirmations")
            else ""
        )
        + f"{plural(trials.get('duplicates', 0), 'duplicate')} not re-run, "
        f"{trials.get('failed', 0)} failed; stopped: {summary.get('stopped') or '-'}"
    )
    if trials.get("unprofiled"):
        console.print(
            f"{plural(trials['unprofiled'], 'measured trial')} unprofiled (no usable profile; see "
            "the unprofiled column of trials.csv)"
        )
