"""Parameter importance is shown only when every site varied outside the probes and there are
enough trials; otherwise it says why."""

from __future__ import annotations

from pathlib import Path

from autotune.report.figures import (
    MIN_TRIALS_FOR_IMPORTANCE,
    TrialPoint,
    search_importance,
    unvaried_sites,
)
from autotune.rundir import RunRecord

SITES = ["attn.qkv", "mlp.gate_up"]


def _point(n: int, qkv: float, gate_up: float, objective: float) -> TrialPoint:
    role = {0: "baseline", 1: "default"}.get(n, "search")
    return TrialPoint(
        number=n,
        role=role,
        state="complete",
        objective=objective,
        throughput=objective,
        feasible=True,
        effective_mib={"attn.qkv": qkv, "mlp.gate_up": gate_up},
    )


def _record(tmp_path: Path) -> RunRecord:
    # No study.db: importance falls back to the rank correlation over the points.
    return RunRecord(path=tmp_path, run={}, summary={}, trials=[], best_config=None, profiles={})


def test_a_site_fixed_outside_the_probes_gets_no_importance(tmp_path: Path) -> None:
    # As in a 12-trial run: mlp.gate_up at its 18 MiB cap in every trial but the probes.
    points = [_point(0, 0.0, 0.0, 2700.0), _point(1, 12.5, 18.0, 2701.0)]
    points += [_point(n, float(n), 18.0, 2780.0 + n) for n in range(2, 12)]
    assert unvaried_sites(points, SITES) == {"mlp.gate_up": 18.0}
    imp = search_importance(_record(tmp_path), points, SITES)
    assert imp.values == []
    assert imp.note == (
        "mlp.gate_up was 18 MiB in every trial but the probes; importance needs every site to vary"
    )


def test_importance_when_every_site_varied(tmp_path: Path) -> None:
    points = [_point(0, 0.0, 0.0, 2700.0), _point(1, 12.5, 18.0, 2701.0)]
    points += [_point(n, float(n), 6.0 + n % 3, 2780.0 + n) for n in range(2, 12)]
    assert unvaried_sites(points, SITES) == {}
    imp = search_importance(_record(tmp_path), points, SITES)
    assert imp.values[0][0] == "attn.qkv"  # the objective follows qkv
    few = points[: MIN_TRIALS_FOR_IMPORTANCE - 1]
    short = search_importance(_record(tmp_path), few, SITES)
    assert short.values == [] and f"needs at least {MIN_TRIALS_FOR_IMPORTANCE}" in short.note
