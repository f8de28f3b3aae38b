"""Seconds, not minutes, to the first problem: `autotune run --check`, and the same checks before
the first trial of a run, against the fake serving environment (tests/fake_vllm): vLLM's own
argument parser, torch_npu, CANN's msprof and the devices `npu-smi` shows."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from fake_vllm.fake_env import make_fake_env, make_small_model
from fake_vllm.harness import args, env, fake_host, run


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return fake_host(tmp_path_factory, "fake-check")


def _check(
    bin_dir: Path,
    model: Path,
    out: Path,
    *more: str,
    serve: str = "--enforce-eager",
    tp: int | None = 1,
    **env_: str,
) -> tuple[int, str, str]:
    result = run([*args(model, out, *more, serve=serve, tp=tp), "--check"], env(bin_dir, **env_))
    assert "Traceback" not in result.stderr
    assert not out.exists()  # a check writes nothing
    return result.returncode, result.stdout, result.stderr


def test_a_clean_host_passes_and_shows_the_workload(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    code, out, err = _check(bin_dir, model, tmp_path / "run")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"workload   {model} TP1 EP1, max-num-seqs 8")
    assert "eager" in out and "check passed: nothing found" in out
    assert err == ""


def test_the_json_check_is_one_object(fake: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, model = fake
    result = run([*args(model, tmp_path / "run"), "--check", "--json"], env(bin_dir))
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["check"] == {"warnings": [], "notes": []}
    assert data["workload"]["max_num_batched_tokens"] == 2048


def test_without_msprof_it_warns_and_refuses_with_require_profiles(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", msprof=False)
    model = make_small_model(tmp_path / "model")
    code, out, err = _check(bin_dir, model, tmp_path / "run")
    assert code == 0 and "check passed with 1 warning(s)" in out
    assert err.splitlines() == [
        "warning: CANN's msprof is not on the serving environment's PATH: torch_npu cannot parse "
        "the profiles, so trials would run unprofiled; source CANN's set_env.sh in the "
        "environment that runs vllm (e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh "
        "before autotune)"
    ]
    code, _, err = _check(bin_dir, model, tmp_path / "run", "--require-profiles")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: CANN's msprof is not on the serving environment's PATH: torch_npu cannot parse "
        "the profiles, so trials would run unprofiled; source CANN's set_env.sh in the "
        "environment that runs vllm (e.g. source /usr/local/Ascend/ascend-toolkit/set_env.sh "
        "before autotune) (--require-profiles)"
    ]


def test_without_torch_npu_it_warns(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", torch_npu=False)
    model = make_small_model(tmp_path / "model")
    code, _, err = _check(bin_dir, model, tmp_path / "run")
    assert code == 0
    assert "warning: torch_npu does not import in" in err and "ModuleNotFoundError" in err


@pytest.mark.parametrize(
    ("more", "smi", "message"),
    [
        (
            ("--serve-env", "ASCEND_RT_VISIBLE_DEVICES=2,9"),
            {},
            "error: device 9 of ASCEND_RT_VISIBLE_DEVICES=2,9 is not on this host: npu-smi "
            "shows 8 device(s), 0-7",
        ),
        (
            (),
            {"FAKE_NPU_HBM_USED": "60000"},
            "error: device 0 has 60000 of 65536 MB in use; vllm serve needs 0.9 of it free "
            "(--gpu-memory-utilization): free it or pin other devices with --serve-env "
            "ASCEND_RT_VISIBLE_DEVICES=…",
        ),
        (
            (),
            {"FAKE_NPU_DEVICES": "0"},
            "error: npu-smi info shows no NPU device",
        ),
    ],
)
def test_devices_the_server_would_use_are_there_with_free_memory(
    fake: tuple[Path, Path],
    tmp_path: Path,
    more: tuple[str, ...],
    smi: dict[str, str],
    message: str,
) -> None:
    bin_dir, model = fake
    code, _, err = _check(bin_dir, model, tmp_path / "run", *more, **smi)
    assert code == 2
    assert err.strip().splitlines() == [message]


def test_a_tp4_host_needs_four_pinned_devices(fake: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, model = fake
    code, _, err = _check(
        bin_dir,
        model,
        tmp_path / "run",
        "--serve-env",
        "ASCEND_RT_VISIBLE_DEVICES=0,1",
        serve="-tp 4 --enforce-eager",
        tp=None,
    )
    assert code == 2
    assert err.strip() == "error: TP4 x DP1 needs 4 devices; ASCEND_RT_VISIBLE_DEVICES=0,1 gives 2"


def test_no_npu_smi_is_said_once(tmp_path: Path) -> None:
    bin_dir = make_fake_env(tmp_path / "env", npu_smi=False)
    model = make_small_model(tmp_path / "model")
    code, _, err = _check(bin_dir, model, tmp_path / "run")
    assert code == 0
    assert err.splitlines() == [
        "note: npu-smi is not on PATH: not an NPU host, so devices and their memory are not checked"
    ]


def test_arguments_vllm_would_refuse_are_refused_in_seconds(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    code, _, err = _check(bin_dir, model, tmp_path / "run", serve="--enforce-eager --no-such-flag")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: vllm serve would refuse these arguments: vllm: error: unrecognized arguments: "
        "--no-such-flag"
    ]


def test_an_abbreviation_vllm_reads_otherwise_is_caught(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    # vLLM's argparse takes unique prefixes: --tensor-parallel 2 is -tp 2 to it.
    bin_dir, model = fake
    code, _, err = _check(
        bin_dir, model, tmp_path / "run", serve="--enforce-eager --tensor-parallel 2"
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --serve-args: vLLM reads tensor-parallel size 2 where autotune read 1; spell the "
        "option out in full (vLLM also takes abbreviations)"
    ]


def test_every_error_is_one_line_and_a_run_stops_before_its_first_trial(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, model = fake
    out = tmp_path / "run"
    result = run(
        args(model, out, "--serve-env", "ASCEND_RT_VISIBLE_DEVICES=9", serve="--enforce-eager -x"),
        env(bin_dir),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "unrecognized arguments: -x" in lines[0] and "device 9" in lines[1]
    assert not out.exists()


def test_the_readme_recipe_reads_as_the_readme_says(
    fake: tuple[Path, Path], tmp_path: Path
) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("ARGS=(") + len("ARGS=(") :]
    argv = shlex.split(block[: block.index(")\n")])
    argv[argv.index("--model") + 1] = str(fake[1])
    argv[argv.index("--out") + 1] = str(tmp_path / "run")
    shown = readme[readme.index("It prints what autotune\n   read") :]
    shown = shown[shown.index("```\n") + 4 : shown.index("\n   ```", shown.index("```\n") + 4)]
    expected = [line.strip() for line in shown.splitlines()]
    result = run(["run", *argv, "--check", "--require-profiles"], env(fake[0]))
    assert result.returncode == 0, result.stderr
    got = result.stdout.replace(str(fake[1]), "/models/Qwen3-32B-W8A8").splitlines()
    assert got[0] == expected[0]  # the workload line
    assert got[1].startswith("backend    vllm-ascend 0.23.0 (vllm 0.23.0")  # the fake's +fake
    assert got[2] == expected[2]
