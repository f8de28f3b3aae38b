"""Stand-in for torch_npu's offline parser, `torch_npu.profiler.profiler.analyse`.

Like torch_npu 2.10 (`analysis/_npu_profiler.py:14-41`, `prof_common_func/_path_manager.py:
124-137`) it parses the given folder if it is a rank folder, else every rank folder right below
it; a rank folder holds FRAMEWORK/ or a PROF_* folder. Like its CANN export
(`prof_view/cann_parse/_cann_export.py:54,111-138`) it needs `msprof` on PATH, runs
`msprof --export=on`, and on failure prints an error and leaves the folder raw. The stand-in
`vllm` stashes a rank's ASCEND_PROFILER_OUTPUT as `PROF_*/device_0/data/output.tar`; parsing puts
it back.

Faults from FAKE_VLLM_FAULT (KIND or KIND@TRIAL, as for the stand-in `vllm`):
  analyse-fail   raise an exception (the process exits 1)
  analyse-hang   never finish
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

OUTPUT = "ASCEND_PROFILER_OUTPUT"
STASH = Path("device_0") / "data" / "output.tar"


def _faults(path: Path) -> set[str]:
    match = re.search(r"trials/(\d+)/", str(path.resolve()) + "/")
    trial = int(match.group(1)) if match else None
    out = set()
    for item in os.environ.get("FAKE_VLLM_FAULT", "").split(","):
        kind, _, at = item.strip().partition("@")
        if kind and (not at or (trial is not None and int(at) == trial)):
            out.add(kind)
    return out


def _cann(rank: Path) -> Path | None:
    return next((p for p in rank.iterdir() if p.is_dir() and p.name.startswith("PROF_")), None)


def _is_rank(path: Path) -> bool:
    return path.is_dir() and ((path / "FRAMEWORK").is_dir() or _cann(path) is not None)


def _parse(rank: Path) -> None:
    cann = _cann(rank)
    if cann is None or not (cann / STASH).is_file():
        return
    msprof = shutil.which("msprof")
    if msprof is None:
        print(
            "[ERROR] Failed to export CANN Profiling data. Error msg: Export CANN Profiling data "
            "failed! 'msprof' command not found!Please re-source the CANN package to fix this "
            "error.",
            flush=True,
        )
        return
    done = subprocess.run([msprof, "--export=on", f"--output={cann}"], check=False)
    if done.returncode != 0:
        print("[ERROR] Failed to export CANN TEXT Profiling data.", flush=True)
        return
    with tarfile.open(cann / STASH) as tar:
        tar.extractall(rank, filter="data")
    print(f"[INFO] parsed {rank}", flush=True)


def analyse(profiler_path: str, max_process_number: int = 1, export_type: object = None) -> None:
    root = Path(profiler_path)
    faults = _faults(root)
    print(f"[INFO] stand-in torch_npu analyse of {root} ({max_process_number} processes)")
    if "analyse-hang" in faults:
        time.sleep(3600)
    if "analyse-fail" in faults:
        raise RuntimeError("stand-in analyse failed (FAKE_VLLM_FAULT=analyse-fail)")
    ranks = [root] if _is_rank(root) else sorted(p for p in root.iterdir() if _is_rank(p))
    for rank in ranks:
        _parse(rank)
