"""The noise model (autotune/search/estimate.py) and the pick built on it: estimates with the
noise of both the bench and the profile, trials without a profile on the same scale, margins with
intervals, and benches too short to mean anything.

The records are made by hand: throughput = 1000 / step (tok/s, step in ms) plus a stated bench
error, so what each trial truly is stays visible in the test."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.rundir import TrialRecord
from autotune.search.estimate import PRIOR_BENCH_CV, Z, bench_warnings, estimate
from autotune.search.measure import step_stats
from autotune.search.summary import RULE_BEST, RULE_ON_TIME_BLIND, confidence, pick, pick_rule
from autotune.workloads.base import Workload
from autotune.workloads.simulate import NOISELESS, REALISTIC, read_config, simulate_once


def _rec(
    n: int,
    tput: float,
    step: float | None,
    reps: list[float] | None = None,
    *,
    se: float | None = None,
    late: bool = False,
    bench_s: float = 60.0,
) -> TrialRecord:
    runs = reps or [tput]
    return TrialRecord(
        number=n,
        role="search",
        state="complete",
        config={},
        effective_bytes={},
        objective=tput,
        throughput=tput,
        throughputs=runs,
        step_ms=step,
        # 8 profiled steps with a 1 % spread each: the step's mean is known to ±0.35 %.
        step_se_ms=(step * 0.0035 if se is None else se) if step is not None else None,
        profiled_steps=8 if step is not None else 0,
        feasible=not late,
        late_sites=["attn.o"] if late else [],
        bench_s=[bench_s] * len(runs),
    )


def _on_time(errors: list[float]) -> list[TrialRecord]:
    """Trials 0.. with steps 20.0, 19.9, ... and bench errors `errors` (relative)."""
    out = []
    for n, err in enumerate(errors):
        step = 20.0 - 0.1 * n
        out.append(_rec(n, 1000 / step * (1 + err), step))
    return out


def test_one_repeat_does_not_hand_the_pick_to_a_late_slower_trial() -> None:
    # One bench run per trial. Trial 5 is late; its profiled step is 0.01 % shorter than the best
    # on-time trial's (4), its measured throughput 1.5 % lower. Its estimate gap to trial 4 cannot
    # be "beyond the noise": one repeat does not make the bench noiseless.
    recs = _on_time([0.004, -0.003, 0.002, -0.004, 0.003])
    best_on_time = recs[4]
    assert best_on_time.step_ms is not None and best_on_time.throughput is not None
    recs.append(_rec(5, best_on_time.throughput * 0.985, best_on_time.step_ms * 0.9999, late=True))
    chosen = pick(recs, "throughput")
    assert chosen.ranked[0].number == 4
    assert not chosen.est.beyond(5, 4)
    noise = chosen.est.noise
    assert noise is not None and noise.bench_cv > 0
    assert noise.bench_from == "residuals"


def test_bench_noise_with_one_repeat_and_no_profile_is_the_stated_prior() -> None:
    recs = [_rec(n, 100.0 + n, None) for n in range(4)]
    est = estimate(recs, "throughput")
    assert est.noise is not None and est.noise.bench_from == "prior"
    assert est.noise.bench_cv == pytest.approx(PRIOR_BENCH_CV)
    _d, sd = est.diff(3, 0)
    assert sd > 0
    # The pick line says what it used: no regression on step times that were never profiled.
    rule = pick_rule("throughput", 2.0, noise=est.noise)
    assert "no trial was profiled" in rule and "regress" not in rule
    assert "1.00 % per run" in rule


def test_repeats_measure_the_bench_noise() -> None:
    # Three runs a trial, ±2 % apart: the measured spread outweighs the 1 % prior.
    recs = [
        _rec(n, t, s, [t * 0.98, t, t * 1.02])
        for n, t, s in [(0, 50.0, 20.0), (1, 50.3, 19.9), (2, 50.6, 19.8), (3, 50.8, 19.7)]
    ]
    est = estimate(recs, "throughput")
    assert est.noise is not None and est.noise.bench_from == "repeats"
    assert est.noise.bench_cv > 0.015


def test_an_unprofiled_trial_is_ranked_with_its_own_noise() -> None:
    # Profiled trials 0-5, each 0.5 % faster than the one before, measured with about 1 % bench
    # noise and their steps to ±0.35 %. Trial 6 has no profile and measured 1 % above what trial
    # 5, the fastest, really does: with 1 % noise as likely a lucky draw as a faster config. Raw,
    # it would be picked; pulled towards the others by its own noise, it is not.
    recs = _on_time([0.01, -0.01, 0.008, -0.012, 0.011, -0.009])
    true_fastest = 1000 / 19.5
    recs.append(_rec(6, true_fastest * 1.01, None))
    assert recs[6].throughput is not None and recs[6].throughput > max(
        r.throughput or 0.0 for r in recs[:6]
    )
    chosen = pick(recs, "throughput")
    assert chosen.ranked[0].number == 5
    est = chosen.est
    assert est.var[6] > max(est.var[n] for n in range(6))  # its own noise, not the fit's
    margin = est.margin(5, 6)
    assert margin is not None and not margin.distinguishable

    # One that is really faster, far beyond its noise, still wins.
    recs[6] = _rec(6, true_fastest * 1.06, None)
    assert pick(recs, "throughput").ranked[0].number == 6


def test_margins_are_an_estimate_inside_its_interval() -> None:
    recs = _on_time([0.004, -0.003, 0.002, -0.004, 0.003, -0.002, 0.001])
    chosen = pick(recs, "throughput")
    assert chosen.rule == RULE_BEST
    best = chosen.ranked[0]
    for other in chosen.ranked[1:]:
        m = chosen.est.margin(best.number, other.number)
        assert m is not None
        assert m.low_pct <= m.estimate_pct <= m.high_pct
        assert m.distinguishable == (m.low_pct > 0 or m.high_pct < 0)
        assert m.high_pct - m.low_pct == pytest.approx(2 * Z * (m.high_pct - m.estimate_pct) / Z)
    # 0.5 % steps apart, measured to ±0.35 %: the neighbour is within the noise, trial 0 is not.
    near = chosen.est.margin(best.number, chosen.ranked[1].number)
    far = chosen.est.margin(best.number, 0)
    assert near is not None and not near.distinguishable
    assert far is not None and far.distinguishable and far.estimate_pct > 2.0


def test_short_benches_are_flagged_and_decide_nothing() -> None:
    # One-second benches with one repeat (a tiny model on a CPU build): a +67 % "gain" over the
    # default is no verdict.
    recs = [_rec(0, 270.0, None, bench_s=1.0), _rec(1, 397.0 / 1.0, None, bench_s=1.1)]
    recs.append(_rec(2, 300.0, None, bench_s=0.9))
    est = estimate(recs, "throughput")
    warn = bench_warnings(est)
    assert warn and "1.0 s" in warn[0]
    margin = est.margin(1, 0)
    assert margin is not None and margin.estimate_pct > 30 and not margin.distinguishable
    assert not est.beyond(1, 0)  # nor can a late trial win on them
    chosen = pick(recs, "throughput")
    block = confidence(chosen, recs[1], recs[0], repeats=1, resume="autotune run --resume --out R")
    assert all("no verdict" in v for v in block["verdict"])
    assert "--confirm 1" in block["settle"] and block["warnings"] == warn
    # When the fastest is late, the on-time trial is kept, and the rule says why: not "within the
    # noise" (nothing was told apart), the benches are too short.
    recs[1] = _rec(1, 397.0, None, bench_s=1.1, late=True)
    late_pick = pick(recs, "throughput")
    assert late_pick.ranked[0].number == 2 and late_pick.rule == RULE_ON_TIME_BLIND


def test_tpot_margins_are_the_share_of_tpot_saved() -> None:
    recs = [_rec(n, 0.0, 20.0 - n) for n in range(4)]
    for r in recs:
        r.tpot_ms = r.objective = r.step_ms  # TPOT follows the step exactly
        r.tpots_ms = [r.tpot_ms or 0.0]
    est = estimate(recs, "tpot")
    m = est.margin(3, 0)
    assert m is not None and m.estimate_pct == pytest.approx(100 * (1 - 17 / 20), rel=1e-3)


# -- the profile's own noise -------------------------------------------------------------------


def _profiled_step(realism: object, seed: int) -> tuple[float, float | None]:
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=8)
    with tempfile.TemporaryDirectory() as tmp:
        _, result = simulate_once(w, read_config(None), Path(tmp), seed=seed, realism=realism)  # type: ignore[arg-type]
        assert result.profile_dir is not None
        profiles = load_profiles(result.profile_dir)
        stats = step_stats(profiles, analyze(profiles))
    assert stats is not None and stats.steps == 8
    return stats.mean_ms, stats.se_ms


def test_the_spread_of_the_profiled_steps_gives_the_standard_error() -> None:
    # SIMULATED profiles. The realistic twin jitters each step by about 1.3 % (README, the
    # simulator): the mean of 8 steps is known to about 0.47 %. Without jitter the steps differ
    # only by their growing context.
    mean, se = _profiled_step(REALISTIC, 0)
    assert se is not None and 0.001 < se / mean < 0.01
    _quiet_mean, quiet_se = _profiled_step(NOISELESS, 0)
    assert quiet_se is not None and quiet_se < se / 5
