"""Wall time of one 24-trial study run by 1, 2 and 3 workers at once (SIMULATED trials).

Run: python bench/workers_bench.py [--trial-seconds 3] [--storage URL]. Each worker is an
`autotune run --backend simulate` process; every trial lasts --trial-seconds (the simulator sleeps
for what server start, bench and profile take on an NPU host). The storage is a journal file in a
temporary directory unless --storage names a database (then each study gets its own name). The
one-worker study is the baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

# One profiled step keeps the tuner's own CPU work per trial (profile analysis) small next to the
# fixed trial time, as on NPU hosts where each worker has its host's CPUs to itself; this machine's
# cores are shared by all workers.
RUN = [
    "run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--backend", "simulate",
    "--profile-steps", "1",
]  # fmt: skip


def study_wall_time(
    workers: int, trials: int, trial_s: float, storage: str, name: str, root: Path
) -> tuple[float, int]:
    """Seconds from starting `workers` processes to the last one ending; measured trials."""
    procs: list[subprocess.Popen[bytes]] = []
    start = time.perf_counter()
    try:
        for k in range(workers):
            cmd = [
                sys.executable, "-m", "autotune", *RUN, "--trials", str(trials),
                "--storage", storage, "--study-name", name, "--out", str(root / f"{name}-{k}"),
                "--json", "--sim-trial-seconds", str(trial_s), "--heartbeat", "5",
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            )
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"worker failed: {err.decode(errors='replace')}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=name, storage=_storage(storage))
    measured = sum(
        1
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if "duplicate_of" not in t.user_attrs
    )
    return wall, measured


def _storage(url: str) -> str | optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(url.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--trial-seconds", type=float, default=3.0)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        storage = args.storage or f"journal:{root / 'studies.log'}"
        stamp = time.strftime("%H%M%S")
        rows = []
        for workers in (1, 2, 3):
            wall, measured = study_wall_time(
                workers, args.trials, args.trial_seconds, storage, f"bench-{stamp}-{workers}", root
            )
            rows.append((workers, wall, measured))
    base = rows[0][1]
    ideal_1 = args.trials * args.trial_seconds
    print(
        f"{args.trials}-trial study, each trial {args.trial_seconds:g} s (SIMULATED), "
        f"{os.cpu_count()} cores, storage {'journal file' if not args.storage else args.storage}"
    )
    print("| workers | wall s | measured trials | speed-up vs 1 worker | ideal |")
    print("|---:|---:|---:|---:|---:|")
    for workers, wall, measured in rows:
        print(f"| {workers} | {wall:.1f} | {measured} | {base / wall:.2f}x | {workers}x |")
    print(json.dumps({"trial_s": args.trial_seconds, "one_worker_lower_bound_s": ideal_1}))


if __name__ == "__main__":
    main()
