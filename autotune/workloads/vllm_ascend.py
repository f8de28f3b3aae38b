"""The real backend: one `vllm serve` per trial on the NPUs of this host.

This version only checks the environment; the launcher (serve, warm up, bench, profile, stop) is a
separate piece of work, so `run` refuses with a clear line instead of pretending.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from autotune import target
from autotune.errors import AutotuneError
from autotune.workloads.base import TrialResult, Workload

NO_VLLM = "vllm is not installed here; on a machine without an NPU use --backend simulate"


class VllmAscendBackend:
    """Runs trials with vllm-ascend 0.23 on this host's NPUs."""

    name = "vllm-ascend"
    simulated = False

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def check(self) -> None:
        """AutotuneError (one line) unless `vllm` is on PATH and vllm-ascend 0.23.x is installed."""
        if shutil.which("vllm") is None:
            raise AutotuneError(NO_VLLM)
        try:
            target.check_vllm_ascend_version()
        except AutotuneError as exc:
            raise AutotuneError(
                f"{exc}; on a machine without an NPU use --backend simulate"
            ) from None

    def target_version(self) -> str:
        """The installed vllm-ascend version (checked by `check`)."""
        return target.check_vllm_ascend_version()

    def run(
        self, config: dict[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> TrialResult:
        raise AutotuneError(
            "the vllm-ascend launcher is not available in this version of autotune; "
            "use --backend simulate"
        )
