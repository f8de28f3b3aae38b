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


# --- figures of the overlap analysis ----------------------------------------------------------

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def test_slack_histograms_shade_what_the_tables_call_late() -> None:
    from autotune.overlap import analyze
    from autotune.profile import load_profiles
    from autotune.report.figures import slack_figure
    from autotune.report.svg import slack_svg

    profiles = load_profiles(PROFILES / "dense_current_ascend_pt")
    result = analyze(profiles, late_tolerance_ns=2000)
    fig = slack_figure([("p", result)])
    assert fig.tolerance_us == 2.0
    # attn.o: slack -2.5 (o_proj, late beyond 2 µs) and -1.2 (down_proj, within it).
    (o,) = [s for s in fig.series if s.site == "attn.o"]
    assert o.late == 2 == next(s.late for s in result.sites if s.site == "attn.o")
    svg = slack_svg(fig)
    lo, hi = fig.edges_us[0], fig.edges_us[-1]
    left, plot_w = 168, 1120 - 168 - 18
    x_late = left + (-2.0 - lo) / (hi - lo) * plot_w
    assert f"x1='{x_late:.2f}'" in svg.split("class='late-line'")[1].split("/>")[0]
    assert f"width='{x_late - left:.2f}'" in svg.split("class='late-zone'")[1].split("/>")[0]
    assert "left of -2 is late" in svg


def test_the_timeline_draws_the_streams_the_analysis_read() -> None:
    from autotune.overlap import analyze
    from autotune.profile import load_profiles
    from autotune.report.figures import timeline_layer
    from autotune.report.svg import timeline_svg

    (profile,) = load_profiles(PROFILES / "two_streams_ascend_pt")
    result = analyze([profile], layout="auto")
    streams = result.streams_of(profile, 0)
    assert streams is not None and (streams.compute, streams.prefetch) == (2, (8, 9))
    layer = timeline_layer(profile, result, label="two streams")
    assert (layer.compute_stream, layer.prefetch_streams) == (2, (8, 9))
    drawn = [t for t in layer.tasks if t.lane == "prefetch" and t.role == "prefetch"]
    assert len(drawn) == 2  # the qkv CMO (stream 8) and the down CMO (stream 9) of the layer
    assert len(layer.prefetches) == 2
    assert "prefetch (streams 8, 9)" in timeline_svg([layer])
