"""Every output keeps its word: replaying a trial never writes over its recorded evidence, and a
bench result file under its final name is always whole. Real `autotune run` and `sh command.sh`
processes against the fake `vllm` (tests/fake_vllm/vllm)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fake_vllm.fake_env import make_fake_env, make_small_model
from fake_vllm.harness import (
    args,
    assert_nothing_left,
    env,
    fake_host,
    ok,
    rows,
    run,
    run_with_fault,
)

REPLAY_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return fake_host(tmp_path_factory, "fake-replay")


@pytest.fixture(scope="module")
def measured(fake: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-trial run (kept profiles) to replay from."""
    bin_dir, model = fake
    out = tmp_path_factory.mktemp("replayed") / "run"
    ok(run(args(model, out, "--keep-profiles", "all", trials=2), env(bin_dir)))
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _replay(script: Path, bin_dir: Path, *where: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script), *where],
        env=env(bin_dir),
        capture_output=True,
        text=True,
        timeout=REPLAY_TIMEOUT_S,
        check=False,
    )


def test_replaying_a_trial_writes_beside_it_never_over_it(
    fake: tuple[Path, Path], measured: Path
) -> None:
    bin_dir, model = fake
    trial_dir = measured / "trials" / "001"
    before = _digests(measured)
    done = _replay(trial_dir / "command.sh", bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every recorded file is still there, byte for byte; the replay only added its folder.
    assert {k: v for k, v in _digests(measured).items() if k in before} == before
    replays = sorted((measured / "trials").glob("001-replay-*"))
    assert len(replays) == 1
    assert done.stdout.strip() == f"replayed into {replays[0]}"
    bench = json.loads((replays[0] / "bench_r0.json").read_text())
    assert bench["completed"] == 16 and bench["failed"] == 0
    assert "listening on http://127.0.0.1" in (replays[0] / "server.log").read_text()
    assert sorted(replays[0].glob("prof/*_ascend_pt"))
    # The run still reads as it was: the replay folder is no trial.
    assert [r["trial"] for r in rows(measured)] == ["0", "1"]
    shutil.rmtree(replays[0])
    assert_nothing_left(model.parent)


def test_a_copied_run_replays_into_the_copy(
    fake: tuple[Path, Path], measured: Path, tmp_path: Path
) -> None:
    bin_dir, model = fake
    copy = tmp_path / "copy"
    shutil.copytree(measured, copy, symlinks=True)
    before = _digests(measured)
    done = _replay(copy / "trials" / "000" / "command.sh", bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _digests(measured) == before  # nothing written into the original
    assert len(list((copy / "trials").glob("000-replay-*"))) == 1
    assert_nothing_left(model.parent)


def test_a_replay_folder_is_given_and_must_be_new_or_empty(
    fake: tuple[Path, Path], measured: Path, tmp_path: Path
) -> None:
    bin_dir, model = fake
    script = measured / "trials" / "001" / "command.sh"
    target = tmp_path / "mine"
    done = _replay(script, bin_dir, str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "bench_r0.json").is_file()
    again = _replay(script, bin_dir, str(target))
    assert again.returncode == 2
    assert again.stderr.strip() == f"command.sh: {target} is not empty; give a new or empty folder"
    # Nor over the trial itself.
    refused = _replay(script, bin_dir, str(measured / "trials" / "001"))
    assert refused.returncode == 2
    assert_nothing_left(model.parent)


def test_a_bench_result_cut_short_never_takes_its_final_name(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    _, out = run_with_fault(fake, tmp_path, "bench-cut@2")
    failed = rows(out)[2]
    assert failed["state"] == "failed"
    assert "bench 1 of 1 (vllm bench serve) exited with code 1" in failed["error"]
    trial_dir = out / "trials" / "002"
    assert not (trial_dir / "bench_r0.json").exists()
    partial = trial_dir / ".bench_r0.json.partial"
    assert partial.is_file()  # kept as evidence, under a name no reader takes for a result
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial.read_text())
    # The measured trials' results are whole.
    for number in (0, 1):
        assert json.loads((out / "trials" / f"{number:03d}" / "bench_r0.json").read_text())


def test_a_fresh_env_replays_too(tmp_path: Path) -> None:
    # The script names the vllm and python it ran with, not ones found on PATH.
    bin_dir = make_fake_env(tmp_path / "env")
    model = make_small_model(tmp_path / "model-fresh")
    out = tmp_path / "run"
    ok(run(args(model, out, trials=2), env(bin_dir)))
    done = subprocess.run(
        ["sh", str(out / "trials" / "001" / "command.sh")],
        capture_output=True,
        text=True,
        timeout=REPLAY_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_nothing_left(model.parent)
