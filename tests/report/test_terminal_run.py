"""The terminal view of `autotune run`: the live table says what it leaves out and starts with a
resumed run's trials, plain lines for logs, and the pick rule with winner and runner-up."""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console

from autotune.report.terminal_run import (
    LIVE_ROWS,
    TerminalRunView,
    past_rows,
    print_result,
    trial_line,
)
from autotune.rundir import MIB, TrialRecord

SITES = ["attn.qkv", "attn.o"]


def _trial(n: int, tput: float, *, late: list[str] | None = None) -> TrialRecord:
    """A measured trial; throughput 1000/step, so the estimates follow the step time."""
    return TrialRecord(
        number=n,
        role="baseline" if n == 0 else "search",
        state="complete",
        config={},
        effective_bytes={"attn.qkv": n * MIB, "attn.o": 2 * MIB},
        objective=tput,
        throughput=tput,
        throughputs=[tput],
        step_ms=1000.0 / tput,
        late_sites=late or [],
        feasible=not late,
    )


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=160, force_terminal=True, color_system=None), buffer


def test_live_table_counts_the_rows_it_leaves_out() -> None:
    console, buffer = _console()
    trials = [_trial(n, 100.0 + n) for n in range(LIVE_ROWS + 3)]
    view = TerminalRunView(console, sites=SITES, budget=30, simulated=True)
    with view:
        for t in trials:
            view.trial_finished(t, t)
    text = buffer.getvalue()
    assert "3 earlier trials not shown (all in trials.csv)" in text
    # With no more rows than fit, nothing is said to be left out.
    console, buffer = _console()
    with TerminalRunView(console, sites=SITES, budget=30, simulated=False) as view:
        view.trial_finished(trials[0], trials[0])
    assert "not shown" not in buffer.getvalue()


def test_resumed_view_starts_with_the_whole_study() -> None:
    trials = [_trial(0, 100.0), _trial(1, 104.0, late=["attn.o"]), _trial(2, 102.0)]
    rows = past_rows(trials, "throughput", late_is_infeasible=True)
    # The best as it stood after each trial: with lateness a hard rule, a late trial does not
    # take the lead; by default one 4 % faster does.
    assert [(r.number, b.number if b else None) for r, b in rows] == [(0, 0), (1, 0), (2, 2)]
    lead = [b.number if b else None for _, b in past_rows(trials, "throughput")]
    assert lead == [0, 1, 1]
    console, buffer = _console()
    with TerminalRunView(console, sites=SITES, budget=5, simulated=False, history=rows, done=3):
        pass
    table = buffer.getvalue()
    for n in range(3):
        assert f"│     {n} │" in table
    assert "3/5" in table


def test_plain_line_has_number_role_mib_objective_late_and_best() -> None:
    best = _trial(2, 102.0)
    best.estimate = 101.5
    line = trial_line(_trial(3, 99.0, late=["attn.o"]), best, SITES, "throughput")
    assert line == (
        "trial 3 search: MiB qkv/o 3/2; throughput 99.00 tok/s; late sites: attn.o; "
        "best so far: trial 2 (estimated 101.50 tok/s)"
    )


def test_result_states_the_pick_rule_and_winner_beside_runner_up() -> None:
    console, buffer = _console()
    summary = {
        "objective": "throughput",
        "pick_rule": "best = the highest estimated throughput among trials with no late site",
        "best": {"trial": 4, "role": "search", "throughput": 99.5, "estimate": 101.0},
        "runner_up": {"trial": 5, "role": "search", "throughput": 100.2, "estimate": 100.9},
    }
    print_result(console, summary, None)
    lines = buffer.getvalue().splitlines()
    assert "pick rule: best = the highest estimated throughput among trials with no late site" in (
        lines
    )
    assert "  winner    trial 4 (search): measured 99.50 tok/s, estimated 101.00 tok/s" in lines
    assert "  runner-up trial 5 (search): measured 100.20 tok/s, estimated 100.90 tok/s" in lines


def test_result_states_the_confidence_and_flags_gains_the_benches_cannot_carry() -> None:
    console, buffer = _console()
    summary = {
        "objective": "throughput",
        "best": {"trial": 4, "role": "search", "throughput": 397.0, "estimate": 330.0},
        "gain_over_default": {"pct": 67.4, "low_pct": 67.4, "high_pct": 67.4},
        "confidence": {
            "interval": "±2 standard errors, about 95 %",
            "verdict": ["trial 4 and the runner-up, trial 2, are indistinguishable at this noise"],
            "settle": "about 9 more bench runs of each would settle it: autotune run --resume",
            "noise": {"text": "noise: bench 1.00 % per run (a stated prior)"},
            "warnings": ["the bench runs lasted 1.0 s (median), under 10 s"],
        },
    }
    print_result(console, summary, None)
    lines = buffer.getvalue().splitlines()
    assert "  confidence (±2 standard errors, about 95 %):" in lines
    assert "    trial 4 and the runner-up, trial 2, are indistinguishable at this noise" in lines
    assert any(line.startswith("    about 9 more bench runs") for line in lines)
    assert "  WARNING: the bench runs lasted 1.0 s (median), under 10 s" in lines
    gain = next(line for line in lines if "vs vendor default" in line)
    assert "+67.40 %" in gain and "cannot carry it" in gain


def test_a_failed_trial_line_states_no_late_sites() -> None:
    failed = replace(_trial(4, 99.0), state="failed", error="vllm serve exited with code 1")
    line = trial_line(failed, None, SITES, "throughput")
    assert line == (
        "trial 4 search: MiB qkv/o 4/2; failed: vllm serve exited with code 1; best so far: -"
    )


def test_counts_are_singular_when_one() -> None:
    console, buffer = _console()
    summary = {
        "trials": {"measured": 1, "duplicates": 1, "failed": 1, "unprofiled": 1},
        "stopped": "interrupted",
    }
    print_result(console, summary, None)
    text = buffer.getvalue()
    assert "1 trial measured, 1 duplicate not re-run, 1 failed; stopped: interrupted" in text
    assert "1 measured trial unprofiled" in text
    console, buffer = _console()
    print_result(console, {"trials": {"measured": 2, "duplicates": 0}}, None)
    assert "2 trials measured, 0 duplicates not re-run" in buffer.getvalue()
