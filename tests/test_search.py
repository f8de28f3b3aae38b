"""The search: space and quantisation, the estimates, the guided proposals, and whole studies on the
simulator (the real backend for tests)."""

from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path

import optuna
import pytest

from autotune import target
from autotune.errors import AutotuneError
from autotune.rundir import MIB, RunDir, TrialRecord
from autotune.search import (
    NO_CMO_REASON,
    SearchOptions,
    SearchSpace,
    SiteSpace,
    SiteTiming,
    Tuner,
    best_record,
    estimates,
    pick_rule,
    profile_inert,
    propose,
    ranked_records,
    site_levels,
    static_space,
)
from autotune.search.grid import grid_optimum as search_grid_optimum
from autotune.search.sampler import _Point
from autotune.workloads.base import Workload, setup_of
from autotune.workloads.simulate import SimulateBackend, simulate_throughput

EXTRA = {"enable_flashcomm1": True}


def _workload(model: str = "Qwen3-32B-W8A8", mns: int = 72) -> Workload:
    return Workload(model=model, max_num_seqs=mns, profile_steps=1)


@cache
def grid_optimum(model: str, mns: int) -> float:
    """Exhaustive grid over the same effective-bytes ladder the search uses."""
    return search_grid_optimum(_workload(model, mns), EXTRA)


def _tune(tmp_path: Path, w: Workload, **options: object) -> Tuner:
    opts = {"trials": 12, "extra": EXTRA, "seed": 0, **options}
    return Tuner(
        workload=w,
        backend=SimulateBackend(w, seed=int(opts.pop("noise_seed", 0)), noise=0.01),  # type: ignore[call-overload]
        rundir=RunDir(tmp_path / "run"),
        options=SearchOptions(**opts),  # type: ignore[arg-type]
        study_name="test",
    )


# -- the space ---------------------------------------------------------------------------------


def test_site_levels_are_a_short_even_ladder_ending_at_the_top() -> None:
    levels = site_levels(1000, 18 * MIB)
    assert levels[0] == 0 and levels[-1] == 18 * MIB
    assert len(levels) - 1 <= 16
    steps = {b - a for a, b in itertools.pairwise(levels[:-1])}
    assert steps == {2 * MIB}
    odd = site_levels(1000, int(12.5 * MIB))
    assert odd[-2:] == (12 * MIB, int(12.5 * MIB))


def test_static_space_drops_inert_sites_with_reasons() -> None:
    dense = static_space(setup_of(_workload()))
    assert dense.names == ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")
    assert set(dense.inert) == {"moe.gate_up"}
    moe = static_space(setup_of(_workload("Qwen3-30B-A3B-W8A8", 144)))
    assert moe.names == ("attn.qkv", "attn.o")
    assert set(moe.inert) == {"mlp.gate_up", "mlp.down", "moe.gate_up"}
    assert all(reason.endswith(".") for reason in moe.inert.values())


def test_quantise_and_key_snap_to_the_nearest_level() -> None:
    space = SearchSpace(sites=(SiteSpace("mlp.down", (0, 2 * MIB, 4 * MIB)),), inert={})
    assert space.key({"mlp.down": 2.9 * MIB}) == (1,)
    assert space.quantise({"mlp.down": 3.1 * MIB}) == {"mlp.down": 4 * MIB}
    assert space.key({"mlp.down": 10_000}) == (0,)  # a near-off prefetch is "off"
    assert space.bytes_of_params({"mlp.down": 1.9}) == {"mlp.down": 2 * MIB}
    assert SearchSpace.from_json(json.loads(json.dumps(space.to_json()))) == space


def test_options_are_checked() -> None:
    with pytest.raises(AutotuneError, match="--trials"):
        SearchOptions(trials=1).check()
    with pytest.raises(AutotuneError, match="--objective"):
        SearchOptions(objective="latency").check()
    with pytest.raises(AutotuneError, match="--keep-profiles"):
        SearchOptions(keep_profiles="some").check()


# -- estimates and proposals -------------------------------------------------------------------


def _rec(n: int, tput: float, step: float | None, reps: list[float] | None = None) -> TrialRecord:
    return TrialRecord(
        number=n,
        role="search",
        state="complete",
        config={},
        effective_bytes={},
        objective=tput,
        throughput=tput,
        throughputs=reps or [tput],
        step_ms=step,
    )


def test_estimates_rank_by_the_profiled_step_when_the_bench_is_noisy() -> None:
    # True throughput 1000/step; the benches carry +-1 % noise that flips the order of 1 and 2.
    recs = [_rec(0, 1000 / 20.0, 20.0), _rec(1, 1000 / 19.6 * 0.99, 19.6)]
    recs += [_rec(2, 1000 / 19.8 * 1.01, 19.8), _rec(3, 1000 / 19.7, 19.7)]
    est = estimates(recs, "throughput")
    assert max(est, key=lambda n: est[n]) == 1
    assert recs[2].throughput is not None and recs[2].throughput > recs[1].throughput  # type: ignore[operator]


def test_estimates_keep_measurements_without_profiles() -> None:
    recs = [_rec(0, 100.0, None), _rec(1, 101.0, None), _rec(2, 99.0, 20.0)]
    est = estimates(recs, "throughput")
    assert est[0] == 100.0 and est[1] == 101.0
    assert est[2] == pytest.approx(99.0)
    # A noisy fit that says a longer step is faster falls back to throughput ~ 1/step.
    recs = [_rec(0, 100.0, 20.0), _rec(1, 101.0, 20.5), _rec(2, 102.0, 21.0)]
    est = estimates(recs, "throughput")
    assert est[0] > est[1] > est[2]


def test_estimates_trust_measurements_when_repeats_are_tight() -> None:
    # Repeats agree to 0.01 %, so the residual of the fit is real and the measurements stand.
    recs = [
        _rec(n, t, s, [t * 0.9999, t, t * 1.0001])
        for n, t, s in [(0, 100.0, 20.0), (1, 103.0, 19.9), (2, 101.0, 19.5), (3, 100.5, 19.7)]
    ]
    est = estimates(recs, "throughput")
    assert max(est, key=lambda n: est[n]) == 1


def test_propose_tries_the_fill_point_then_single_steps_then_sites_off() -> None:
    space = SearchSpace(
        sites=(
            SiteSpace("attn.qkv", tuple(k * MIB for k in range(5))),
            SiteSpace("mlp.down", tuple(2 * k * MIB for k in range(5))),
        ),
        inert={},
    )
    seed = _Point(
        key=(2, 2),
        score=1.0,
        feasible=True,
        fill={"attn.qkv": 3 * MIB, "mlp.down": 4 * MIB},
        lateness={"attn.qkv": -1.0, "mlp.down": 0.5},
    )
    tried = [seed]
    expected = [
        (3, 2),  # every site at its window-filling size
        (2, 1),  # qkv's step up is the fill point, already tried; down is late: one step down
        (1, 2),  # then the other directions
        (2, 3),
        (0, 2),  # then each site off, the one with the smaller fill first
        (2, 0),
        (4, 2),  # then two steps
    ]
    for key in expected:
        assert propose(tried, space) == key
        tried.append(_Point(key, 0.5, True, {}, {}))


def test_propose_prefers_feasible_incumbents() -> None:
    space = SearchSpace(sites=(SiteSpace("attn.o", tuple(k * MIB for k in range(4))),), inert={})
    late = _Point((3,), 2.0, False, {}, {"attn.o": 5.0})
    ok = _Point((1,), 1.0, True, {}, {})
    assert propose([late, ok], space) == (2,)  # around the feasible one, not the faster late one


def test_propose_skips_points_other_workers_are_measuring() -> None:
    space = SearchSpace(sites=(SiteSpace("attn.o", tuple(k * MIB for k in range(4))),), inert={})
    best = _Point((1,), 1.0, True, {}, {})
    assert propose([best], space) == (2,)
    # Another worker is measuring (2,): the next proposal is the one after it.
    assert propose([best], space, busy={(2,)}) == (0,)


# -- whole studies on the simulator -------------------------------------------------------------


@pytest.mark.parametrize(("model", "mns", "noise_seed"), [("Qwen3-32B-W8A8", 128, 3)])
def test_twelve_trials_get_within_half_a_percent_of_the_grid_optimum(
    tmp_path: Path, model: str, mns: int, noise_seed: int
) -> None:
    w = _workload(model, mns)
    outcome = _tune(tmp_path, w, noise_seed=noise_seed).run()
    assert outcome.best is not None
    got = simulate_throughput(w, outcome.best.config)
    assert got >= 0.995 * grid_optimum(model, mns)
    assert [r.role for r in outcome.records[:3]] == ["baseline", "default", "seed"]
    assert outcome.records[0].config["weight_prefetch_config"] == {"enabled": False}
    assert outcome.summary["simulated"] is True
    assert sum(r.state == "complete" for r in outcome.records) == 12


def test_moe_keeps_only_attention_sites_and_duplicates_are_not_rerun(tmp_path: Path) -> None:
    w = _workload("Qwen3-30B-A3B-W8A8", 144)
    tuner = _tune(tmp_path, w, trials=16, sampler="random", keep_profiles="all")
    outcome = tuner.run()
    assert outcome.summary["active_sites"] == ["attn.qkv", "attn.o"]
    assert "moe.gate_up" in outcome.summary["inert_sites"]
    complete = [r for r in outcome.records if r.state == "complete"]
    keys = [outcome.space.key(r.effective_bytes) for r in complete]
    assert len(keys) == len(set(keys)), "an effective config ran twice"
    dups = [r for r in outcome.records if r.state == "duplicate"]
    for d in dups:
        assert d.duplicate_of is not None and not d.bench_files
        first = next(r for r in complete if r.number == d.duplicate_of)
        assert outcome.space.key(first.effective_bytes) == outcome.space.key(d.effective_bytes)
        assert d.throughput == first.throughput
    # Every compiled config is valid and writes every key explicitly.
    for r in outcome.records[1:]:
        target.validate_config(r.config)
        table = r.config["weight_prefetch_config"]["prefetch_ratio"]
        assert {m: set(v) for m, v in table.items()} == {
            m: set(k) for m, k in target.MODULE_KEYS.items()
        }


def test_static_inert_reason_reaches_the_summary(tmp_path: Path) -> None:
    # Without flashcomm1 0.23 never starts the gate_up prefetch.
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=1, flashcomm1=False)
    outcome = _tune(tmp_path, w, trials=4, extra={"enable_flashcomm1": False}).run()
    assert "flashcomm1" in outcome.summary["inert_sites"]["mlp.gate_up"]
    assert outcome.summary["active_sites"] == ["attn.qkv", "attn.o", "mlp.down"]
    assert outcome.records[0].config == {
        "weight_prefetch_config": {"enabled": False},
        "enable_flashcomm1": False,
    }


def test_a_site_that_issued_no_cmo_in_the_default_trial_is_inert() -> None:
    space = SearchSpace(
        sites=(SiteSpace("attn.qkv", (0, MIB)), SiteSpace("mlp.down", (0, MIB))), inert={}
    )
    timings = {"mlp.down": SiteTiming("mlp.down", 64, 6000.0, 1100.0, 6 * MIB)}
    assert profile_inert(timings, space) == {"attn.qkv": NO_CMO_REASON}


def test_tpot_objective_minimises(tmp_path: Path) -> None:
    w = _workload()
    outcome = _tune(tmp_path, w, trials=5, objective="tpot").run()
    study = optuna.load_study(
        study_name="test", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    )
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert outcome.best is not None and outcome.baseline is not None
    assert outcome.best.tpot_ms is not None and outcome.baseline.tpot_ms is not None
    assert outcome.summary["gain_over_baseline"]["pct"] > 0


def test_timeout_stops_before_the_search(tmp_path: Path) -> None:
    outcome = _tune(tmp_path, _workload(), timeout_s=1e-6).run()
    assert outcome.stopped == "timeout"
    # The probe always runs: without it there is nothing to compare with.
    assert [r.role for r in outcome.records] == ["baseline", "default"]
    assert outcome.summary["finished"] is True and outcome.summary["stopped"] == "timeout"


def test_shown_url_hides_the_password() -> None:
    from autotune.search import shown_url

    assert shown_url("postgresql+psycopg2://u:secret@h:5432/db") == (
        "postgresql+psycopg2://u:***@h:5432/db"
    )
    assert shown_url("sqlite:////tmp/run/study.db") == "sqlite:////tmp/run/study.db"


def test_ranking_puts_the_pick_first_and_names_the_runner_up() -> None:
    # Trial 1 has the best estimate but a late site; 2 wins, and 3 (higher measurement, worse
    # estimate) is the runner-up.
    recs = [_rec(0, 1000 / 20.0, 20.0), _rec(1, 1000 / 19.0, 19.0)]
    recs += [_rec(2, 1000 / 19.5 * 0.99, 19.5), _rec(3, 1000 / 19.6 * 1.01, 19.6)]
    recs[1].feasible = False
    ranked = ranked_records(recs, "throughput")
    assert [r.number for r in ranked] == [2, 3, 0, 1]
    assert best_record(recs, "throughput") is recs[2]
    assert recs[3].throughput is not None and recs[2].throughput is not None
    assert recs[3].throughput > recs[2].throughput  # the winner is not the highest measurement
    rule = pick_rule("throughput", 2.0)
    assert "highest estimated throughput" in rule and "2 µs" in rule and "\n" not in rule
    assert "lowest estimated TPOT" in pick_rule("tpot", 0.5)
