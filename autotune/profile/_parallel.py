"""Splitting a large trace into byte ranges and reading them in worker processes.

The reading itself (and the proof that the split points are event boundaries) is in
`autotune.profile.trace_view`; this module only picks candidate split points and runs the parts.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from autotune.errors import AutotuneError

WORKERS_ENV = "AUTOTUNE_READ_WORKERS"
MAX_WORKERS = 8
# Bytes searched after a nominal split offset for an event separator.
SEARCH_BYTES = 1 << 20

# `}`, `,`, `{` with JSON whitespace between: a candidate boundary between two events. All three
# are ASCII, so a cut next to them is a UTF-8 character boundary.
_SEP_B = re.compile(rb"\}[ \t\n\r]*,[ \t\n\r]*\{")

R = TypeVar("R")


def cores() -> int:
    """CPUs this process may run on (affinity and cpusets included where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers(requested: int | None) -> int:
    """Processes to read with: `requested`, else $AUTOTUNE_READ_WORKERS, else min(cores, 8)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"workers must be at least 1, got {requested}")
        return requested
    env = os.environ.get(WORKERS_ENV, "").strip()
    if not env:
        return min(cores(), MAX_WORKERS)
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise AutotuneError(f"{WORKERS_ENV}={env!r}: expected a positive integer")
    return n


def split(path: Path, size: int, n: int) -> list[tuple[int, int]]:
    """Up to `n` byte ranges covering the file: the first starts at 0, the last ends at `size`,
    and each other one starts at the `{` of a candidate separator found after its nominal offset
    and the one before ends just after that separator's `}`. A nominal offset with no separator
    in reach is dropped (its range joins the previous one)."""
    starts, ends = [0], []
    with path.open("rb") as fh:
        for i in range(1, n):
            nominal = max(size * i // n, starts[-1] + 1)
            fh.seek(nominal)
            m = _SEP_B.search(fh.read(SEARCH_BYTES))
            if m is None or nominal + m.end() >= size:
                continue
            ends.append(nominal + m.start() + 1)
            starts.append(nominal + m.end() - 1)
    ends.append(size)
    return list(zip(starts, ends, strict=True))


def _worker_init() -> None:
    # The parent handles Ctrl-C and stops the workers; a worker must not die printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_parts(fn: Callable[..., R | None], jobs: Sequence[tuple[Any, ...]]) -> list[R] | None:
    """`fn(*job)` for every job, the first in this process and the others in worker processes;
    the results in job order, or None as soon as one result is None or the workers cannot run
    (the caller then does the work itself)."""
    if multiprocessing.current_process().daemon:
        return None  # a daemonic process may not start workers
    # fork: the workers inherit the imported modules instead of importing pandas again.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(
        max_workers=len(jobs) - 1, mp_context=ctx, initializer=_worker_init
    ) as ex:
        futures: list[Future[R | None]] = []
        try:
            futures = [ex.submit(fn, *job) for job in jobs[1:]]
            first = fn(*jobs[0])
            if first is None:
                _stop(ex, futures)
                return None
            out = [first]
            for fut in futures:
                res = fut.result()
                if res is None:
                    _stop(ex, futures)
                    return None
                out.append(res)
            return out
        except (BrokenProcessPool, OSError):
            # A worker could not start or was killed (out of memory, say).
            _stop(ex, futures)
            return None
        except BaseException:
            _stop(ex, futures)
            raise


def _stop(ex: ProcessPoolExecutor, futures: list[Future[Any]]) -> None:
    """Cancel what is left and end the workers now; the `with` block then reaps them."""
    for fut in futures:
        fut.cancel()
    # A worker may be in the middle of a part whose result is no longer wanted.
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    ex.shutdown(wait=True, cancel_futures=True)
