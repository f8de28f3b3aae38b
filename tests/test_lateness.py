"""The one lateness rule: prefetches and sites, the tolerance in ns, and how views state it."""

from __future__ import annotations

import numpy as np

from autotune.lateness import (
    DEFAULT_LATE_TOLERANCE_US,
    prefetch_late,
    rule_text,
    site_late,
    tolerance_ns,
)


def test_prefetch_late_scalar_and_array_agree() -> None:
    slack = np.array([-2001, -2000, 0, 5], dtype=np.int64)
    assert prefetch_late(slack, 2000).tolist() == [True, False, False, False]
    assert [prefetch_late(int(s), 2000) for s in slack] == [True, False, False, False]


def test_site_late_is_the_median_rule() -> None:
    assert site_late(-2000.5, 2000) and not site_late(-2000.0, 2000)
    assert not site_late(float("nan"), 0)


def test_tolerance_and_text() -> None:
    assert tolerance_ns(1.0005) == 1000 and tolerance_ns(0.0029) == 3
    assert rule_text(2.0) == "late = median slack below −2 µs (tolerance 2 µs)"
    assert rule_text(0.5) == "late = median slack below −0.5 µs (tolerance 0.5 µs)"


def test_the_default_is_the_vendor_criterion() -> None:
    # A prefetch is late when it ends after its window; a tolerance is the user's choice.
    assert DEFAULT_LATE_TOLERANCE_US == 0.0
    tol = tolerance_ns(DEFAULT_LATE_TOLERANCE_US)
    assert prefetch_late(-1, tol) and not prefetch_late(0, tol)
    assert (
        rule_text(0.0) == "late = median slack below 0 µs, ends after its window (tolerance 0 µs)"
    )


def test_analyze_and_run_take_the_same_default() -> None:
    import typer

    from autotune.cli import app

    group = typer.main.get_command(app)
    defaults = {
        name: {p.name: p.default for p in group.commands[name].params}  # type: ignore[attr-defined]
        for name in ("analyze", "run")
    }
    assert defaults["analyze"]["tolerance_us"] == DEFAULT_LATE_TOLERANCE_US == 0.0
    assert defaults["run"]["late_tolerance_us"] == DEFAULT_LATE_TOLERANCE_US
