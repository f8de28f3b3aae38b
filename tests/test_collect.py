"""Locating a trial's *_ascend_pt output, parsing the ranks torch_npu left raw with its offline
`analyse` in the serving interpreter, or saying why the trial is unprofiled.

The serving interpreter is the fake vLLM environment's (tests/fake_vllm/fake_env.py): its
stand-in torch_npu `analyse` completes raw rank folders and, like torch_npu, needs `msprof`.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from fake_vllm.fake_env import make_fake_env

from autotune.workloads.collect import find_profile, parse_raw, raw_ranks


def test_parsed_profile_is_found(tmp_path: Path) -> None:
    out = tmp_path / "prof" / "dp0_pp0_tp0_dcp0_ep0_rank0_1_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
    out.mkdir(parents=True)
    (out / "trace_view.json").write_text("[]")
    assert find_profile(tmp_path / "prof") == (tmp_path / "prof", "")


def test_cpu_trace_only(tmp_path: Path) -> None:
    prof = tmp_path / "prof"
    prof.mkdir()
    (prof / "123-rank-0.456.pt.trace.json.gz").write_bytes(b"")
    found, reason = find_profile(prof)
    assert found is None
    assert "no *_ascend_pt under prof/" in reason and "pt.trace.json.gz" in reason


def test_unparsed_profile_says_how_to_analyse_it(tmp_path: Path) -> None:
    rank = tmp_path / "prof" / "x_ascend_pt"
    (rank / "PROF_000001").mkdir(parents=True)
    found, reason = find_profile(tmp_path / "prof")
    assert found is None
    assert "has no parsed ASCEND_PROFILER_OUTPUT" in reason
    # torch_npu's export needs CANN's msprof: the npu extra alone is not enough.
    assert f"analyse('{rank}')" in reason and "set_env.sh" in reason
    assert "autotune[npu]" not in reason


def test_nothing_written(tmp_path: Path) -> None:
    assert find_profile(tmp_path / "prof")[1] == "the profiler wrote nothing (prof/ does not exist)"


# -- parsing raw ranks -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bin dirs of two fake serving environments: with CANN's msprof and without it."""
    root = tmp_path_factory.mktemp("serving")
    return {
        "cann": make_fake_env(root / "cann"),
        "bare": make_fake_env(root / "bare", msprof=False),
    }


def _raw_profile(prof: Path, ranks: int) -> None:
    """Rank folders as torch_npu leaves them in a daemon worker: FRAMEWORK/ and the CANN data
    (PROF_*), no ASCEND_PROFILER_OUTPUT; the stand-in keeps the parsed output in the CANN data."""
    for rank in range(ranks):
        root = prof / f"dp0_pp0_tp{rank}_dcp0_ep0_rank{rank}_1_ascend_pt"
        (root / "FRAMEWORK").mkdir(parents=True)
        data = root / "PROF_000001_20260414_ABC" / "device_0" / "data"
        data.mkdir(parents=True)
        body = b'[{"ph": "M"}]'
        with tarfile.open(data / "output.tar", "w") as tar:
            info = tarfile.TarInfo("ASCEND_PROFILER_OUTPUT/trace_view.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def _env(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FAKE_VLLM_FAULT"}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env.update(extra)
    return env


def test_raw_ranks_are_parsed_in_the_serving_interpreter(
    serving: dict[str, Path], tmp_path: Path
) -> None:
    prof = tmp_path / "trials" / "001" / "prof"
    _raw_profile(prof, ranks=4)
    assert len(raw_ranks(prof)) == 4
    assert find_profile(prof)[0] is None
    heard: list[int] = []
    log = tmp_path / "analyse.log"
    parsed = parse_raw(
        serving["cann"] / "python",
        prof,
        env=_env(serving["cann"]),
        log=log,
        timeout_s=60,
        started=heard.append,
    )
    assert (parsed.ranks, parsed.reason, heard) == (4, "", [4])
    assert parsed.seconds > 0
    assert raw_ranks(prof) == [] and find_profile(prof) == (prof, "")
    assert "stand-in torch_npu analyse" in log.read_text()


def test_parsed_ranks_run_nothing(serving: dict[str, Path], tmp_path: Path) -> None:
    prof = tmp_path / "prof"
    prof.mkdir()
    log = tmp_path / "analyse.log"
    parsed = parse_raw(Path("/nonexistent/python"), prof, env={}, log=log, timeout_s=1)
    assert (parsed.ranks, parsed.reason) == (0, "") and not log.exists()


def test_without_msprof_the_reason_says_to_source_cann(
    serving: dict[str, Path], tmp_path: Path
) -> None:
    prof = tmp_path / "prof"
    _raw_profile(prof, ranks=2)
    parsed = parse_raw(
        serving["bare"] / "python",
        prof,
        env=_env(serving["bare"]),
        log=tmp_path / "analyse.log",
        timeout_s=60,
    )
    assert parsed.ranks == 2
    assert "msprof, which is not on the serving environment's PATH" in parsed.reason
    assert "source CANN's set_env.sh" in parsed.reason and "\n" not in parsed.reason
    assert len(raw_ranks(prof)) == 2


def test_a_failing_analyse_gives_its_root_cause(serving: dict[str, Path], tmp_path: Path) -> None:
    prof = tmp_path / "trials" / "004" / "prof"
    _raw_profile(prof, ranks=1)
    log = tmp_path / "analyse.log"
    parsed = parse_raw(
        serving["cann"] / "python",
        prof,
        env=_env(serving["cann"], FAKE_VLLM_FAULT="analyse-fail@4"),
        log=log,
        timeout_s=60,
    )
    assert parsed.reason.startswith("torch_npu's analyse of the raw profile failed (exit 1): ")
    assert "RuntimeError: stand-in analyse failed" in parsed.reason
    assert str(log) in parsed.reason


def test_a_hanging_analyse_is_stopped_at_its_timeout(
    serving: dict[str, Path], tmp_path: Path
) -> None:
    prof = tmp_path / "trials" / "002" / "prof"
    _raw_profile(prof, ranks=1)
    start = time.monotonic()
    parsed = parse_raw(
        serving["cann"] / "python",
        prof,
        env=_env(serving["cann"], FAKE_VLLM_FAULT="analyse-hang"),
        log=tmp_path / "analyse.log",
        timeout_s=1.5,
    )
    assert time.monotonic() - start < 30
    assert "did not finish within 1.5 s (--analyse-timeout)" in parsed.reason
