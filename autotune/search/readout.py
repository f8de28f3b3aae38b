"""What a finished backend run says: its bench figures and its profile, read into the trial's
record and into the attributes the study keeps for the sampler and the other workers.

Nothing here touches the study: the trial lifecycle (`lifecycle`) stores what this returns.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autotune import target
from autotune.errors import AutotuneError
from autotune.lateness import tolerance_ns
from autotune.overlap import analyze, late_sites, site_segments
from autotune.profile import load_profiles
from autotune.rundir import RunDir, TrialRecord
from autotune.search.measure import lateness_by_site, site_timings, step_stats
from autotune.search.observed import observed_setup
from autotune.search.options import SearchOptions
from autotune.search.sampler import ATTR_LATE, ATTR_SEGMENTS
from autotune.search.summary import site_json
from autotune.search.workers import ATTR_EFFECTIVE
from autotune.target import Setup
from autotune.workloads.base import TrialResult


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _bench_floats(benches: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    out: list[float] = []
    for bench in benches:
        value = bench.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
    return out


class Readout:
    """Reads finished trials of one run: its objective and lateness tolerance, its deployment
    (which weights each site moves) and its run directory (paths are kept relative to it)."""

    def __init__(self, options: SearchOptions, rundir: RunDir) -> None:
        self.options = options
        self.rundir = rundir

    def read(
        self,
        record: TrialRecord,
        result: TrialResult,
        config: Mapping[str, Any],
        setup: Setup,
        *,
        profiled: bool = True,
    ) -> dict[str, Any]:
        """Fill `record` from the run's bench results and profile and mark it complete; return
        the trial attributes to store. AutotuneError when the bench result has no objective.
        A run asked for no profile (`profiled` False: a confirmation) is not marked unprofiled."""
        objective = self.options.objective
        attrs: dict[str, Any] = {}
        record.throughputs = _bench_floats(result.benches, "output_throughput")
        record.tpots_ms = _bench_floats(result.benches, "median_tpot_ms")
        record.throughput = _median(record.throughputs)
        record.tpot_ms = _median(record.tpots_ms)
        record.objective = record.throughput if objective == "throughput" else record.tpot_ms
        if record.objective is None:
            key = "output_throughput" if objective == "throughput" else "median_tpot_ms"
            raise AutotuneError(f"trial {record.number}: the bench result has no {key}")
        record.bench_s = _bench_floats(result.benches, "duration")
        record.bench_files = [self.rundir.relative(p) for p in result.bench_paths]
        record.logs = [self.rundir.relative(p) for p in result.logs]
        record.simulated = result.simulated
        if result.profile_dir is not None:
            attrs.update(self._read_profile(record, result.profile_dir, config, setup))
        elif profiled:
            record.unprofiled = result.unprofiled or "the backend returned no profile"
        if record.unprofiled:
            # Measured but not profiled: the numbers stand, the overlap is unknown.
            attrs["unprofiled"] = record.unprofiled
        attrs["lateness_us"] = record.lateness_us
        record.feasible = not record.late_sites
        attrs[ATTR_LATE] = record.late_sites
        record.state = "complete"
        return attrs

    def _read_profile(
        self, record: TrialRecord, path: Path, config: Mapping[str, Any], setup: Setup
    ) -> dict[str, Any]:
        """Overlap, step time and window timings from the trial's profile, into `record` and the
        returned attributes; an unreadable one leaves the trial unprofiled with the reader's
        one-line reason."""
        try:
            profiles = load_profiles(path)
            overlap = analyze(
                profiles, late_tolerance_ns=tolerance_ns(self.options.late_tolerance_us)
            )
        except AutotuneError as exc:
            record.unprofiled = f"the profile is unreadable: {exc}"
            return {}
        # The reader keeps what precedes a cut in a trace file; a cut-off profile is not trusted.
        cut = [p for p in profiles if p.truncated]
        if cut:
            # The reader's first warning of a cut-off file says where it was cut.
            record.unprofiled = f"the profile is truncated: {cut[0].warnings[0]}"
            return {}
        record.profile = self.rundir.relative(path)
        stats = step_stats(profiles, overlap)
        if stats is not None:
            record.step_ms, record.step_se_ms = stats.mean_ms, stats.se_ms
            record.profiled_steps = stats.steps
        segments = site_segments(profiles)
        # Per decode step: each site's median segment times the segments a step holds.
        per_step = max(1, record.profiled_steps) * max(1, len(profiles))
        record.segment_ms = {
            s: g.total_ns * g.windows / per_step / 1e6 for s, g in segments.items()
        }
        record.sites = {s.site: site_json(s) for s in overlap.sites}
        record.lateness_us = lateness_by_site(overlap)
        record.late_sites = late_sites(overlap)
        # A site this profile shows firing counts in the target's arithmetic, even where the rules
        # call it inert: else a later "off" trial would look like a duplicate of this one.
        setup = observed_setup(setup, {s.site for s in overlap.sites if s.count > 0})
        timings = site_timings(overlap, config, setup)
        record.effective_bytes = target.effective_bytes(config, setup)
        return {
            ATTR_EFFECTIVE: record.effective_bytes,
            "step_ms": record.step_ms,
            ATTR_SEGMENTS: {s: [g.total_ns, g.work_ns] for s, g in segments.items()},
            "timings": {s: asdict(t) for s, t in timings.items()},
            "fill_bytes": {s: t.fill_bytes for s, t in timings.items()},
        }
