"""How far a simulated profile departs from the bench's noiseless model, one field per effect.

The bench figures of a simulated trial come from the noiseless decode-step model whatever these
say (the bench noise is `bench_result`'s). These effects shape only what the profiler would have
recorded: which decode steps, with what jitter and profiler overhead, on which streams, under
which names. Each size is an estimate with its reasoning beside it; `REALISTIC` is the default
and `IDEAL` is the twin before these effects (mid-output steps, communication on the compute
stream, `aclnn…` names, `CMO` tasks, 2 % kernel jitter).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from autotune.errors import AutotuneError

# How the runtime's task types appear in the profile (`task_names`):
#   host      every task under its host runtime type: CMO, EVENT_RECORD, EVENT_WAIT.
#   sqe       as the real 910B capture in profiles/real_910b_level1 shows them: the trace's Task
#             Type is the SQE the task ran as (EVENT_WAIT_SQE, EVENT_RECORD_SQE, and SDMA_SQE for
#             a CMO: A2/A3 issue CMO as an SDMA SQE), the name and the db keep the host type.
#   sqe-only  the CMO's host type is not matched (as msprof does in some graph-replay cases):
#             name, Task Type and db type are all SDMA_SQE; events as in `sqe`.
#   auto      sqe in eager mode, sqe-only in graph mode. Which one a real 0.23 capture shows is
#             unconfirmed (the runtime issues a CMO as an SDMA SQE on A2/A3: hicann/runtime
#             src/runtime/config/910_B_93/dev_info_reg.cc:188), so the twin writes both.
TASK_NAMES: tuple[str, ...] = ("auto", "host", "sqe", "sqe-only")
# Kernel names (`kernel_names`): "aclnn" names every kernel aclnn<Api>_<Impl>_<OpType>; "mixed"
# also writes the shapes of the real capture: op-cache node names (`GatherV20`, like its
# `Conv2D1`, `ReduceSum7`), format-conversion kernels (`trans_TransData_0`) and custom kernels
# named by their op type alone.
KERNEL_NAMES: tuple[str, ...] = ("aclnn", "mixed")


@dataclass(frozen=True)
class Realism:
    """The profile effects of the twin; a size of 0 (or False) switches an effect off."""

    # Relative std of each kernel's duration in a profiled step (normal, clipped to ±50 %).
    # Real 910B capture (profiles/real_910b_level1, both ranks): kernels with the same name and
    # input shapes repeat with a robust spread (IQR/1.35) of 6 %, median CV 5.5 %.
    kernel_jitter: float
    # Chance that a kernel runs long, and how long at most (factor drawn uniformly in 1.3..max).
    # The same capture has 4-6 % of runs above 1.3x their median; a decode replay is steadier
    # than that training step [est].
    kernel_outlier: float
    kernel_outlier_max: float
    # Relative std of one factor on every kernel of a profiled step: AI Core clock and HBM
    # traffic from the other ranks move all kernels of a step together [est].
    step_jitter: float
    # Relative std of the host time before each profiled step's first kernel (scheduling,
    # sampling, Python) [est].
    host_jitter: float
    # Profile the decode steps the real launcher captures (a burst of max-num-seqs requests,
    # `delay_iterations` = prefill steps + PROFILE_DELAY_MARGIN, so early decode); else the steps
    # in the middle of the output, whose mean context is the bench's.
    launcher_steps: bool
    # Device time the profiler adds after each compute-stream task: 0.23 profiles at Level1 with
    # AiCMetrics.PipeUtilization (vllm_ascend/profiler/torch_npu_profiler.py:49-56), read per
    # task [est].
    profiler_task_us: float
    # Host slowdown while the profiler records CPU ops (step host time, eager launch gaps). vLLM
    # #20817 measured ~30 % end to end with the torch profiler on GPU; 0.23 turns stacks off
    # (torch_npu_profiler.py:62-68), so less [est].
    profiler_host: float
    # HCCL collectives on their own stream, joined by compute-stream waits, as in the real
    # capture; else an `hcom_*` kernel on the compute stream.
    comm_stream: bool
    kernel_names: str
    task_names: str

    def check(self) -> None:
        """AutotuneError (one line) for a value no profile could be made with."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in (float, "float") and not (math.isfinite(value) and value >= 0):
                raise AutotuneError(f"realism {f.name} must be a number >= 0, got {value!r}")
        if self.kernel_jitter > 0.5 or self.step_jitter > 0.5:
            raise AutotuneError("realism kernel_jitter and step_jitter must be at most 0.5")
        if self.kernel_outlier > 1:
            raise AutotuneError(
                f"realism kernel_outlier must be at most 1, got {self.kernel_outlier}"
            )
        if self.kernel_outlier_max < 1.3:
            raise AutotuneError(
                f"realism kernel_outlier_max must be at least 1.3, got {self.kernel_outlier_max}"
            )
        if self.kernel_names not in KERNEL_NAMES:
            raise AutotuneError(
                f"realism kernel_names must be one of {', '.join(KERNEL_NAMES)}, "
                f"got {self.kernel_names!r}"
            )
        if self.task_names not in TASK_NAMES:
            raise AutotuneError(
                f"realism task_names must be one of {', '.join(TASK_NAMES)}, "
                f"got {self.task_names!r}"
            )

    def task_style(self, graph_mode: bool) -> str:
        """The task naming of a profile in this mode (resolves "auto")."""
        if self.task_names != "auto":
            return self.task_names
        return "sqe-only" if graph_mode else "sqe"

    def step_spread(self, host_share: float, kernel_share: float, kernels: float) -> float:
        """Relative std of one profiled step's duration these effects give: the host jitter on
        the host's share of the step, the step factor on the kernels' share, and the kernel
        jitter and long runs averaged over `kernels` equally long kernels. (Launch gaps and
        stream syncs take the rest and do not jitter.) Divide by sqrt(steps) for their mean."""
        m = self.kernel_outlier_max - 1.0
        long_sq = (m**3 - 0.3**3) / (3 * (m - 0.3))  # E[(f - 1)^2], f uniform in 1.3..max
        long_mean = (m + 0.3) / 2
        p = self.kernel_outlier
        per_kernel = self.kernel_jitter**2 + p * long_sq - (p * long_mean) ** 2
        host_var = math.expm1(self.host_jitter**2) * math.exp(self.host_jitter**2)
        step_var = math.expm1(self.step_jitter**2) * math.exp(self.step_jitter**2)
        return math.sqrt(
            host_var * host_share**2 + (step_var + per_kernel / kernels) * kernel_share**2
        )

    def to_json(self) -> dict[str, Any]:
        """Every field, for the files a simulated trial writes."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line naming the effects that are on."""
        if self == IDEAL:
            return "ideal (mid-output steps, comm on the compute stream, 2 % kernel jitter)"
        parts = [
            f"kernel jitter {self.kernel_jitter:.0%}"
            + (f" (+{self.kernel_outlier:.0%} long runs)" if self.kernel_outlier else ""),
            f"step jitter {self.step_jitter:.0%}, host {self.host_jitter:.0%}",
            "launcher's early-decode steps" if self.launcher_steps else "mid-output steps",
            f"profiler +{self.profiler_task_us:g} µs/task, host +{self.profiler_host:.0%}",
            "HCCL on its own stream" if self.comm_stream else "comm on the compute stream",
            f"{self.kernel_names} kernel names, {self.task_names} task names",
        ]
        return "realistic: " + ", ".join(parts)


REALISTIC = Realism(
    kernel_jitter=0.05,
    kernel_outlier=0.02,
    kernel_outlier_max=2.0,
    step_jitter=0.01,
    host_jitter=0.2,
    launcher_steps=True,
    profiler_task_us=0.2,
    profiler_host=0.2,
    comm_stream=True,
    kernel_names="mixed",
    task_names="auto",
)
IDEAL = Realism(
    kernel_jitter=0.02,
    kernel_outlier=0.0,
    kernel_outlier_max=2.0,
    step_jitter=0.0,
    host_jitter=0.0,
    launcher_steps=False,
    profiler_task_us=0.0,
    profiler_host=0.0,
    comm_stream=False,
    kernel_names="aclnn",
    task_names="host",
)
# No jitter at all: every profiled step is the noiseless model at its context.
NOISELESS = dataclasses.replace(IDEAL, kernel_jitter=0.0)

_ON = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def parse_realism(items: list[str], *, base: Realism = REALISTIC) -> Realism:
    """`base` with NAME=VALUE overrides, e.g. ["step_jitter=0.02", "comm_stream=off"]."""
    fields = {f.name: f for f in dataclasses.fields(Realism)}
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise AutotuneError(
                f"--realism {item!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}"
            )
        kind = fields[name].type
        text = text.strip()
        if kind in (bool, "bool"):
            if text.lower() not in _ON:
                raise AutotuneError(f"--realism {item!r}: {name} is on or off")
            changes[name] = _ON[text.lower()]
        elif kind in (float, "float"):
            try:
                changes[name] = float(text)
            except ValueError:
                raise AutotuneError(f"--realism {item!r}: {name} must be a number") from None
        else:
            changes[name] = text
    realism = dataclasses.replace(base, **changes)
    try:
        realism.check()
    except AutotuneError as exc:
        raise AutotuneError(f"--realism: {exc}") from None
    return realism
