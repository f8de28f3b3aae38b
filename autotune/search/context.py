"""What every part of one worker's run reads: what it runs, where it writes, the study it is part
of, and the search space as the probe left it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autotune.rundir import STUDY_DB, RunDir
from autotune.search.options import OBJECTIVES, RunObserver, SearchOptions
from autotune.search.space import SearchSpace, static_space
from autotune.target import Setup
from autotune.workloads.base import Backend, Workload, setup_of


@dataclass
class RunContext:
    """One worker's run: set up once by the Tuner; the study, its storage and the space change as
    the run opens the study and the probe narrows the space."""

    workload: Workload
    backend: Backend
    rundir: RunDir
    options: SearchOptions
    study_name: str
    storage_url: str
    storage_given: bool  # --storage was passed (else the run directory's own study.db)
    # Shared: other workers (other hosts) may run trials of the same study at the same time.
    shared: bool
    observer: RunObserver
    sampler: BaseSampler
    setup: Setup = field(init=False)
    space: SearchSpace = field(init=False)
    extra: dict[str, Any] = field(init=False)  # the other additional-config keys
    study: Study | None = None
    storage: BaseStorage | None = None

    def __post_init__(self) -> None:
        self.setup = setup_of(self.workload)
        self.space = static_space(self.setup)
        self.extra = dict(self.options.extra)

    @property
    def direction(self) -> StudyDirection:
        return OBJECTIVES[self.options.objective]

    @property
    def recorded_storage(self) -> str:
        """The storage as run.json and summary.json name it: the own study relative to the run
        directory (so it follows a copy or a move), an explicit --storage as given."""
        return self.storage_url if self.storage_given else STUDY_DB


def trials_of(study: Study, *states: TrialState) -> list[FrozenTrial]:
    """The study's trials (all, or those in `states`), without copying them."""
    return study.get_trials(deepcopy=False, states=states or None)
