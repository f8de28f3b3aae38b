"""Options of a study and the observer that receives its progress."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from optuna.study import StudyDirection

from autotune.errors import AutotuneError
from autotune.lateness import DEFAULT_LATE_TOLERANCE_US
from autotune.rundir import TrialRecord

OBJECTIVES: dict[str, StudyDirection] = {
    "throughput": StudyDirection.MAXIMIZE,  # output tokens/s
    "tpot": StudyDirection.MINIMIZE,  # median TPOT, ms
}
SAMPLERS: tuple[str, ...] = ("guided", "tpe", "random", "gp")
KEEP_PROFILES: tuple[str, ...] = ("all", "best", "none")

# Study and trial attribute keys.
ATTR_ROLE = "role"
ATTR_SPACE = "space"
ATTR_WORKLOAD = "workload"
# The confirmation phase's trials: their role, the trial each measures again, and its round.
ROLE_CONFIRM = "confirm"
ATTR_CONFIRMS = "confirms"
ATTR_ROUND = "confirm_round"


class RunObserver(Protocol):
    """Receives progress; the terminal renderer implements it."""

    def phase(self, message: str) -> None: ...

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None: ...

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None: ...


class NullObserver:
    """Ignores progress."""

    def phase(self, message: str) -> None:
        pass

    def trial_started(self, number: int, role: str, effective_bytes: Mapping[str, int]) -> None:
        pass

    def trial_finished(self, record: TrialRecord, best: TrialRecord | None) -> None:
        pass


@dataclass(frozen=True)
class SearchOptions:
    """How the study runs."""

    trials: int = 12  # measured trials in the study, probe and seed included
    timeout_s: float | None = None  # no new trial starts after this
    objective: str = "throughput"  # throughput | tpot
    late_tolerance_us: float = DEFAULT_LATE_TOLERANCE_US
    constraint: bool = False  # --late-is-infeasible: lateness is a hard rule
    repeats: int = 1
    # Confirmation rounds after the search (winner, runner-up and vendor default measured again).
    confirm: int = 0
    sampler: str = "guided"
    # Enqueue the profile-guided seed after the probe. Off only to measure a sampler on its own
    # over the same probe and space (bench/search_efficiency.py).
    seed_trial: bool = True
    seed: int | None = 0
    keep_profiles: str = "best"
    extra: Mapping[str, Any] = field(default_factory=dict)  # other additional-config keys
    # extra keys autotune added for the deployment (not the user's own) -> why, for the summary
    extra_notes: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if self.trials < 2:
            raise AutotuneError(
                f"--trials must be at least 2 (baseline and default), got {self.trials}"
            )
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise AutotuneError(f"--timeout must be positive, got {self.timeout_s}")
        if self.objective not in OBJECTIVES:
            raise AutotuneError(f"--objective must be one of {', '.join(OBJECTIVES)}")
        if not math.isfinite(self.late_tolerance_us) or self.late_tolerance_us < 0:
            raise AutotuneError("--late-tolerance-us must be a number >= 0")
        if self.confirm < 0:
            raise AutotuneError(f"--confirm must be 0 or more rounds, got {self.confirm}")
        if self.repeats < 1:
            raise AutotuneError(f"--repeats must be at least 1, got {self.repeats}")
        if self.sampler not in SAMPLERS:
            raise AutotuneError(f"--sampler must be one of {', '.join(SAMPLERS)}")
        if self.keep_profiles not in KEEP_PROFILES:
            raise AutotuneError(f"--keep-profiles must be one of {', '.join(KEEP_PROFILES)}")
