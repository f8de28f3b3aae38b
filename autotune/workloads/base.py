"""The backend protocol shared by the real launcher and the simulator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autotune.errors import AutotuneError
from autotune.target import GraphMode, Setup


@dataclass(frozen=True)
class Workload:
    """What stays fixed across the trials of one study."""

    model: str  # preset name or a local model directory
    max_num_seqs: int
    tp: int = 4
    ep: int = 1
    hardware: str = "910B2"  # simulator only: hardware preset or TOML file
    flashcomm1: bool = True  # passed as enable_flashcomm1 in the additional-config
    graph_mode: bool = False  # True: captured graphs (the detail below), False: eager
    input_len: int = 1024
    output_len: int = 512
    max_num_batched_tokens: int = 16384
    profile_steps: int = 8
    # Custom row-parallel op the other additional-config keys put on o_proj (target.row_op_of).
    row_op: str = ""
    # simulator only: where mlp.gate_up is joined, "swiglu" (0.23, after vllm-ascend #4168) or
    # "norm" (right after the post-attention norm, as before #4168)
    gate_up_join: str = "swiglu"
    # The graph mode in detail, as 0.23 settles it from the serve args ("" = from graph_mode:
    # the vendor recipe's FULL_DECODE_ONLY with VLLM_COMPILE, or eager); see target.GraphMode.
    compile_mode: str = ""
    cudagraph_mode: str = ""
    npugraph_ex: bool = True
    fuse_norm_quant: bool = True

    @property
    def graph(self) -> GraphMode:
        return setup_of(self).graph


def check_counts(flags: Iterable[tuple[str, int]]) -> None:
    """One line for the first (flag, value) that is not a positive integer, naming the flag."""
    for flag, value in flags:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise AutotuneError(
                f"{flag} must be a positive integer, got {value!r}; give {flag} 1 or more"
            )


def setup_of(workload: Workload) -> Setup:
    """The runtime-gate view of a workload (what 0.23's prefetch gates depend on)."""
    return Setup(
        model=workload.model,
        tp=workload.tp,
        ep=workload.ep,
        max_num_seqs=workload.max_num_seqs,
        flashcomm1=workload.flashcomm1,
        graph_mode=workload.graph_mode,
        max_num_batched_tokens=workload.max_num_batched_tokens,
        row_op=workload.row_op,
        compile_mode=workload.compile_mode,
        cudagraph_mode=workload.cudagraph_mode,
        npugraph_ex=workload.npugraph_ex,
        fuse_norm_quant=workload.fuse_norm_quant,
    )


@dataclass
class TrialResult:
    """What one trial produced on disk and in numbers."""

    benches: list[dict[str, Any]]  # one `vllm bench serve --save-result` JSON per repeat
    bench_paths: list[Path]
    profile_dir: Path | None  # directory holding the *_ascend_pt folder(s); None when not profiled
    simulated: bool
    logs: list[Path] = field(default_factory=list)
    unprofiled: str = ""  # why profile_dir is None (or unreadable), when it is


class Backend(Protocol):
    """A way to run trials: the real vllm-ascend launcher or the simulator."""

    name: str
    simulated: bool

    def check(self) -> None:
        """Raise AutotuneError (one line) when this backend cannot run on this machine."""
        ...

    def target_version(self) -> str:
        """The vllm-ascend version the trials run against, as the run record shows it."""
        ...

    def run(
        self, config: dict[str, Any], out_dir: Path, *, repeats: int, profile: bool
    ) -> TrialResult:
        """Run one trial with `config` (the exact --additional-config JSON), writing to out_dir."""
        ...
