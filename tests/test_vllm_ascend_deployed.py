"""Trials run, and are profiled, the way vllm-ascend 0.23 is deployed: in the user's graph mode,
at TP > 1 where torch_npu leaves every rank raw, through real `autotune run` processes against
the fake `vllm` (tests/fake_vllm/vllm) and its serving environment (stand-in torch_npu analyse,
msprof, npu-smi)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from fake_vllm.fake_env import make_fake_env, make_small_model
from fake_vllm.harness import args, assert_nothing_left, env, fake_host, ok, rows, run, trial

# The vendor's Qwen3-32B-W8A8 recipe for 0.23 in brief: TP4, FULL_DECODE_ONLY graphs, flashcomm1,
# as `--serve-args "-tp 4 --compilation-config {\"cudagraph_mode\":\"FULL_DECODE_ONLY\"}"` gives.
RECIPE_SERVE = '-tp 4 --compilation-config {"cudagraph_mode":"FULL_DECODE_ONLY"}'
FLASHCOMM1 = ("--additional-config", '{"enable_flashcomm1": true}')


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return fake_host(tmp_path_factory, "fake-deployed")


def test_a_tp4_graph_mode_host_with_raw_ranks_profiles_every_trial(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    # Every profile kept, to check each rank of each trial (the default keeps only those of the
    # baseline, the default and the best).
    argv = args(model, out, *FLASHCOMM1, "--keep-profiles", "all", serve=RECIPE_SERVE, tp=None)
    result = run(argv, env(bin_dir, FAKE_VLLM_FAULT="raw-only"))
    ok(result)
    complete = [r for r in rows(out) if r["state"] == "complete"]
    assert len(complete) == 3
    assert all(r["unprofiled"] == "" for r in complete), complete
    # The mode is the user's, stated before the first trial and kept in run.json and the summary.
    assert "graph FULL_DECODE_ONLY (VLLM_COMPILE, npugraph_ex)" in result.stdout
    assert "TP4 EP1" in result.stdout and "max-num-batched-tokens 2048" in result.stdout
    workload = json.loads((out / "run.json").read_text())["workload"]
    summary = json.loads((out / "summary.json").read_text())
    for recorded in (workload, summary["workload"]):
        assert (recorded["tp"], recorded["cudagraph_mode"]) == (4, "FULL_DECODE_ONLY")
        assert recorded["compile_mode"] == "VLLM_COMPILE" and recorded["graph_mode"] is True
    # In this mode 0.23 traces the MLP prefetch out; the profiles agree.
    assert summary["active_sites"] == ["attn.qkv", "attn.o"]
    for row in complete:
        trial_dir = out / "trials" / f"{int(row['trial']):03d}"
        command = (trial_dir / "command.sh").read_text()
        assert "--enforce-eager" not in command and "--max-num-batched-tokens" not in command
        assert "-tp 4" in command and "FULL_DECODE_ONLY" in command
        # Every rank was left raw and parsed offline, in the serving interpreter, timed.
        ranks = sorted((trial_dir / "prof").glob("*_ascend_pt"))
        assert len(ranks) == 4
        assert all((r / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").is_file() for r in ranks)
        launch = json.loads((trial_dir / "launch.json").read_text())
        assert launch["analyse"] == {"raw_ranks": 4, "reason": ""}
        assert launch["timings_s"]["analyse"] > 0
        assert "stand-in torch_npu analyse" in (trial_dir / "analyse.log").read_text()
        assert trial(out, int(row["trial"]))["sites"]
    assert "parsing the raw profile of 4 of 4 ranks with torch_npu's analyse" in result.stdout
    assert_nothing_left(model.parent)


def test_raw_ranks_at_tp1_are_parsed_too(fake: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    ok(run(args(model, out, trials=2), env(bin_dir, FAKE_VLLM_FAULT="raw-only@1")))
    assert [r["unprofiled"] for r in rows(out)] == ["", ""]
    assert trial(out, 1)["sites"]


@pytest.mark.parametrize(
    ("fault", "more", "reason"),
    [
        (
            "analyse-fail@1",
            (),
            "torch_npu's analyse of the raw profile failed (exit 1): RuntimeError: stand-in",
        ),
        (
            "analyse-hang@1",
            ("--analyse-timeout", "2"),
            "did not finish within 2 s (--analyse-timeout)",
        ),
    ],
)
def test_a_parse_that_fails_leaves_the_trial_measured_but_unprofiled(
    fake: tuple[Path, Path], tmp_path: Path, fault: str, more: tuple[str, ...], reason: str
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    result = run(
        args(model, out, *more, trials=2), env(bin_dir, FAKE_VLLM_FAULT=f"raw-only,{fault}")
    )
    ok(result)
    default = rows(out)[1]
    assert default["state"] == "complete" and float(default["throughput"]) > 0
    assert reason in default["unprofiled"], default
    assert "static rules" in json.loads((out / "summary.json").read_text())["probe_note"]
    assert_nothing_left(model.parent)


def test_without_msprof_trials_are_unprofiled_and_say_to_source_cann(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", msprof=False)
    model = make_small_model(tmp_path / "model-bare")
    out = tmp_path / "run"
    result = run(args(model, out, trials=2), env(bin_dir, FAKE_VLLM_FAULT="raw-only"))
    ok(result)
    assert "warning: CANN's msprof is not on the serving environment's PATH" in result.stderr
    for row in rows(out):
        assert row["state"] == "complete"
        assert "msprof, which is not on the serving environment's PATH" in row["unprofiled"]
        assert "source CANN's set_env.sh" in row["unprofiled"]
    # With --require-profiles the same host is refused before any trial.
    refused = run([*args(model, tmp_path / "strict"), "--require-profiles"], env(bin_dir))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "error: CANN's msprof is not on" in refused.stderr
    assert "(--require-profiles)" in refused.stderr
    assert not (tmp_path / "strict").exists()
    assert_nothing_left(model.parent)


def test_a_profiler_that_cannot_start_leaves_trials_measured_and_unprofiled(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    more = ("--serve-env", "MSMONITOR_USE_DAEMON=1")
    result = run(args(model, out, *more, trials=2), env(bin_dir))
    ok(result)
    assert "warning: MSMONITOR_USE_DAEMON=1 in the server's environment" in result.stderr
    for row in rows(out):
        assert row["state"] == "complete" and float(row["throughput"]) > 0
        assert row["unprofiled"].startswith(
            "the profiler did not start: POST /start_profile answered HTTP 500"
        ), row
        assert "MSMONITOR_USE_DAEMON and torch profiler cannot be both enabled" in row["unprofiled"]
    assert_nothing_left(model.parent)


def test_loopback_calls_bypass_the_proxy(fake: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, model = fake
    with socket.socket() as dead:  # a proxy that refuses everything
        dead.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
    out = tmp_path / "run"
    proxied = env(bin_dir, http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy)
    for key in ("no_proxy", "NO_PROXY"):
        proxied.pop(key, None)
    ok(run(args(model, out, trials=2), proxied))
    assert [r["state"] for r in rows(out)] == ["complete", "complete"]


def test_a_short_output_len_is_refused_before_anything_runs(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    argv = args(model, tmp_path / "run")
    argv[argv.index("--output-len") + 1] = "4"
    result = run(argv, env(bin_dir))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --output-len 4 is too short for the profiled burst: the profiler starts 5 engine "
        "steps after /start_profile (1 prefill steps + 4) and records --profile-steps 2, so each "
        "request must decode at least 7 tokens; raise --output-len to 7 or lower --profile-steps"
    ]
    assert not (tmp_path / "run").exists()


def test_vllm_must_be_the_023_pair_unless_overridden(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", vllm_version="0.27.1+cpu")
    model = make_small_model(tmp_path / "model-pair")
    refused = run(args(model, tmp_path / "refused"), env(bin_dir))
    assert refused.returncode == 2
    assert "vLLM 0.27.1+cpu is installed" in refused.stderr and "--allow-any-vllm" in refused.stderr
    out = tmp_path / "run"
    ok(run([*args(model, out, trials=2), "--allow-any-vllm"], env(bin_dir)))
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["launch"]["allow_any_vllm"] is True
    assert "untested pair run with --allow-any-vllm" in run_json["vllm_ascend_version"]
    assert json.loads((out / "trials" / "000" / "launch.json").read_text())["allow_any_vllm"]


def test_a_site_the_rules_call_inert_is_searched_when_the_profile_shows_it(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    # Compiled FULL_DECODE_ONLY graphs: 0.23's rules trace the MLP prefetch out. This host's
    # profiles show it anyway; the profile has the last word.
    bin_dir, model = fake
    out = tmp_path / "run"
    serve = '--compilation-config {"cudagraph_mode":"FULL_DECODE_ONLY"}'
    result = run(
        args(model, out, trials=4, serve=serve), env(bin_dir, FAKE_VLLM_FAULT="mlp-in-graph")
    )
    ok(result)
    summary = json.loads((out / "summary.json").read_text())
    assert "mlp.down" in summary["active_sites"]
    note = summary["sites_added_by_profile"]["mlp.down"]
    assert "0.23's rules call it inert here (In graph mode" in note
    assert note in summary["probe_note"]
    assert "note: the default trial's profile shows" in result.stdout  # loud, on the terminal
    # The default trial moved the mlp.down bytes the profile shows, and the search varies them.
    assert trial(out, 1)["effective_bytes"]["mlp.down"] > 0
    downs = {trial(out, int(r["trial"]))["effective_bytes"]["mlp.down"] for r in rows(out)[2:]}
    assert downs and downs != {0}
