"""The pick's confidence and the confirmation phase (autotune/search/confirm.py) end to end: on
the simulator (SIMULATED), on the stand-in `vllm` of tests/fake_vllm (the real backend confirms
by default), and with two workers on one study."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
from test_vllm_ascend_backend import _args, _env, _ok, _rows, _run, fake  # noqa: F401
from test_workers import _finish, _started, _worker
from typer.testing import CliRunner

from autotune.cli import app
from autotune.workloads.base import Workload
from autotune.workloads.simulate import simulate_throughput

runner = CliRunner()
RUN = ["run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--backend", "simulate"]


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def _record(out: Path, number: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "trials" / f"{number:03d}" / "trial.json").read_text())
    return data


def _config(out: Path, number: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (out / "trials" / f"{number:03d}" / "config.json").read_text()
    )
    return data


def _consistent(block: dict[str, Any]) -> None:
    assert set(block) >= {"estimate_pct", "low_pct", "high_pct", "distinguishable"}
    assert block["low_pct"] <= block["estimate_pct"] <= block["high_pct"]
    assert block["distinguishable"] == (block["low_pct"] > 0 or block["high_pct"] < 0)


def _confirmations(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open() as handle:
        return [row for row in csv.DictReader(handle) if row["role"] == "confirm"]


def test_a_close_winner_is_indistinguishable_and_confirm_settles_it_or_says_so(
    tmp_path: Path,
) -> None:
    # Six trials, one bench run each, 1 % bench noise (seed 5, SIMULATED): the winner and the
    # runner-up are 0.08 % apart in the noiseless model.
    out = tmp_path / "run"
    first = runner.invoke(app, [*RUN, "--trials", "6", "--seed", "5", "--repeats", "1",
                                "--out", str(out)])  # fmt: skip
    assert first.exit_code == 0, first.output
    summary = _summary(out)
    confidence = summary["confidence"]
    vs_runner, vs_default = confidence["winner_vs_runner_up"], confidence["winner_vs_default"]
    _consistent(vs_runner)
    _consistent(vs_default)
    w = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72)
    configs = {int(r["trial"]): r for r in csv.DictReader((out / "trials.csv").open())}
    winner = _config(out, summary["best"]["trial"])
    other = _config(out, vs_runner["trial"])
    gap = simulate_throughput(w, winner) / simulate_throughput(w, other) - 1
    assert abs(gap) < 0.002, f"the fixture's winner and runner-up are {gap:.2%} apart"
    assert vs_runner["distinguishable"] is False
    assert "indistinguishable at this noise" in first.output
    assert "--confirm" in confidence["settle"] and "--resume" in confidence["settle"]
    assert confidence["noise"]["bench_cv"] > 0  # one repeat does not make the bench noiseless
    assert not _confirmations(out) and len(configs) == 6

    # Confirmation rounds: the winner, runner-up and vendor default measured again, recorded.
    second = runner.invoke(app, ["run", "--resume", "--out", str(out), "--confirm", "3"])
    assert second.exit_code == 0, second.output
    summary = _summary(out)
    status = summary["confidence"]["confirmation"]
    rows = _confirmations(out)
    assert rows and 1 <= status["rounds"] <= 3 and status["measurements"] == len(rows)
    assert summary["trials"]["measured"] == 6  # confirmations are not in --trials
    _consistent(summary["confidence"]["winner_vs_runner_up"])
    if summary["confidence"]["winner_vs_runner_up"]["distinguishable"]:
        assert status["settled"] and "beats" in status["text"]
    else:
        assert status["rounds"] == 3 and "could not be separated" in status["text"]
        assert "could not be separated" in second.output
    records = [_record(out, int(row["trial"])) for row in rows]
    for row, record in zip(rows, records, strict=True):
        assert record["role"] == "confirm" and record["confirms"] == int(row["confirms"])
        assert record["profile"] is None and not record["unprofiled"]  # not asked to profile
        assert record["config"] == _config(out, record["confirms"])  # exactly that config
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{out / 'study.db'}")
    assert sum(t.user_attrs.get("role") == "confirm" for t in study.trials) == len(rows)
    # Each round measures each config once, interleaved (a config's runs draw anew each time).
    rounds: dict[int, list[int]] = {}
    for record in records:
        rounds.setdefault(record["confirm_round"], []).append(record["confirms"])
    assert all(len(set(m)) == len(m) for m in rounds.values())
    throughputs = {r["throughput"] for r in rows}
    assert len(throughputs) == len(rows)

    # Resumed again with the same budget, the run keeps its word: nothing is measured again.
    third = runner.invoke(app, ["run", "--resume", "--out", str(out), "--confirm", "3"])
    assert third.exit_code == 0, third.output
    assert len(_confirmations(out)) == len(rows)


def test_the_real_backend_confirms_the_pick_by_default(
    fake: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    # The stand-in vllm of tests/fake_vllm: every bench run is one-second long.
    bin_dir, model = fake
    out = tmp_path / "run"
    args = [a for a in _args(model, out) if a not in ("--confirm", "0")]
    result = _run(args, _env(bin_dir))
    _ok(result)
    rows = _rows(out)
    confirms = [r for r in rows if r["role"] == "confirm"]
    assert confirms, rows
    summary = _summary(out)
    status = summary["confidence"]["confirmation"]
    assert status["budget_rounds"] == 2 and status["measurements"] == len(confirms)
    for row in confirms:
        trial_dir = out / "trials" / f"{int(row['trial']):03d}"
        assert not (trial_dir / "prof").exists() or not any((trial_dir / "prof").iterdir())
        assert "start_profile" not in (trial_dir / "command.sh").read_text()


def test_workers_on_one_study_share_the_confirmation_without_measuring_twice(
    tmp_path: Path,
) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    outs = [tmp_path / "host0", tmp_path / "host1"]
    cmds = [[*_worker(out, storage, "shared", 5, 0.3), "--confirm", "2"] for out in outs]
    with _started(cmds) as procs:
        for proc in procs:
            _finish(proc)
    study = optuna.load_study(
        study_name="shared",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
        ),
    )
    trials = study.get_trials()
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    done = [
        t
        for t in trials
        if t.user_attrs.get("role") == "confirm" and t.state == optuna.trial.TrialState.COMPLETE
    ]
    assert done
    measured = [(t.user_attrs["confirm_round"], t.user_attrs["confirms"]) for t in done]
    assert len(measured) == len(set(measured)), "a confirmation was measured twice"
    assert {r for r, _ in measured} <= {0, 1}
    searched = [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.user_attrs.get("role") != "confirm"
        and "duplicate_of" not in t.user_attrs
    ]
    assert 5 <= len(searched) <= 7  # the budget of the search, as test_workers checks it
    summaries = [_summary(out) for out in outs]
    assert {s["best"]["trial"] for s in summaries} == {summaries[0]["best"]["trial"]}


def test_a_negative_confirm_is_one_clean_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, [*RUN, "--confirm", "-1", "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --confirm must be 0 or more rounds, got -1"]
    assert not out.exists()
