"""Figure data for the HTML report: selects and reshapes analysis output, computes nothing new.

The overlap numbers come from `autotune.overlap`; this module only picks the representative layer,
cuts its tasks out of a profile, bins slack values and orders rows, so the HTML writer can lay out
plain lists without touching pandas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autotune.overlap import OverlapResult, SiteSummary
from autotune.profile.tasks import ROLES, Profile
from autotune.rundir import RunDir, RunRecord
from autotune.streams import Streams, device_streams

# Roles that run on the compute stream as real work (not record/wait bookkeeping).
_WORK_ROLES = tuple(r for r in ROLES if r not in ("prefetch", "wait", "record"))
# Site order used everywhere in the report (the decoder layer's order).
SITE_ORDER = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down", "moe.gate_up")


def site_sort_key(site: str) -> tuple[int, str]:
    return (SITE_ORDER.index(site) if site in SITE_ORDER else len(SITE_ORDER), site)


@dataclass(frozen=True)
class TimelineTask:
    """One bar of the timeline, times relative to the layer start."""

    lane: str  # "compute" | "prefetch"
    name: str
    type: str
    op_type: str
    role: str
    start_us: float
    dur_us: float


@dataclass(frozen=True)
class TimelineWindow:
    """A prefetch of the shown layer with its window and join, times relative to the layer start."""

    site: str
    start_us: float
    end_us: float
    window_start_us: float
    window_end_us: float
    slack_us: float
    hidden_fraction: float
    stall_us: float
    late: bool


@dataclass(frozen=True)
class LayerChoice:
    """Which decoder layer the timeline shows, and why."""

    ordinal: int  # index of the layer span on the compute stream (all steps), -1 when none
    step: int | None  # profiled step per the analysis, None when not known
    layer: int | None  # layer index within the step per the analysis
    reason: str  # one sentence the report prints


@dataclass
class TimelineLayer:
    """One decoder layer of one profile, ready to draw."""

    label: str  # e.g. "best (trial 007)"
    source: str  # profile directory
    rank: int | None
    device: int
    compute_stream: int | None
    prefetch_streams: tuple[int, ...]  # every prefetch stream the analysis read, drawn in one lane
    choice: LayerChoice
    duration_us: float
    tasks: list[TimelineTask] = field(default_factory=list)
    prefetches: list[TimelineWindow] = field(default_factory=list)


@dataclass(frozen=True)
class SlackSeries:
    """Slack histogram of one site for one config."""

    label: str
    site: str
    counts: list[int]
    n: int
    late: int


@dataclass(frozen=True)
class SlackFigure:
    """Slack histograms of every site (or prefetch point) on shared bins (µs); slack below
    −tolerance is late, the rule the tables use."""

    edges_us: list[float]
    series: list[SlackSeries]
    tolerance_us: float = 0.0


@dataclass(frozen=True)
class SiteRow:
    """One row of the per-site table."""

    site: str
    count: int
    windows: int
    hidden_fraction_median: float
    slack_us_median: float
    slack_us_p90: float
    slack_us_min: float
    late: int
    stall_us_per_step: float
    verdict: str


def site_rows(result: OverlapResult) -> list[SiteRow]:
    """The analysis' per-site summaries in layer order."""
    rows = [_site_row(s) for s in result.sites]
    return sorted(rows, key=lambda r: site_sort_key(r.site))


def _site_row(s: SiteSummary) -> SiteRow:
    return SiteRow(
        site=s.site,
        count=s.count,
        windows=s.windows,
        hidden_fraction_median=s.hidden_fraction_median,
        slack_us_median=s.slack_us_median,
        slack_us_p90=s.slack_us_p90,
        slack_us_min=s.slack_us_min,
        late=s.late,
        stall_us_per_step=s.stall_us_per_step,
        verdict=s.verdict,
    )


# --- streams and layers -----------------------------------------------------------------------


def _int_pairs(series: pd.Series) -> list[tuple[int, int]]:
    """(index, value) pairs of a small integer-indexed Series as plain ints."""
    keys: list[Any] = series.index.tolist()
    vals: list[Any] = series.tolist()
    return [(int(k), int(v)) for k, v in zip(keys, vals, strict=True)]


def _device_tasks(profile: Profile, device: int) -> pd.DataFrame:
    t = profile.tasks
    return t[t["device"] == device]


def _streams(result: OverlapResult | None, profile: Profile, device: int) -> Streams:
    """The streams the analysis read on this device (the one picker, autotune.streams); picked
    the same way when there is no analysis."""
    found = result.streams_of(profile, device) if result is not None else None
    if found is not None:
        return found
    return device_streams(_device_tasks(profile, device).reset_index(drop=True))


def layer_spans(compute: pd.DataFrame) -> list[tuple[int, int]]:
    """(start_ns, end_ns) of each decoder layer on one compute stream, in time order.

    A layer is anchored on its attention kernel (docs/analysis.md): it starts at the input norm,
    the last norm before the QKV matmul (the cube op before the attention kernel), so a model's
    final norm at a step's end never starts a layer. It ends with the last op before the first
    norm after its MLP (swiglu or gating), or before the next layer's input norm, so the LM head,
    sampling and the gap to the next step stay out.
    """
    work = compute[compute["role"].isin(_WORK_ROLES)].sort_values("start_ns", kind="stable")
    roles: list[str] = [str(r) for r in work["role"].tolist()]
    names: list[str] = [f"{n} {o}" for n, o in zip(work["name"], work["op_type"], strict=True)]
    starts: list[int] = [int(v) for v in work["start_ns"].tolist()]
    ends: list[int] = [int(v) for v in work["end_ns"].tolist()]
    attn = [
        i
        for i, (r, n) in enumerate(zip(roles, names, strict=True))
        if r == "cube" and "Attention" in n
    ]
    if not attn:
        return _spans_by_mlp(roles, starts, ends)
    first: list[int] = []
    prev = -1
    for a in attn:
        qkv = next((i for i in range(a - 1, prev, -1) if roles[i] == "cube"), a)
        norm = next((i for i in range(qkv - 1, prev, -1) if roles[i] == "vector:norm"), qkv)
        first.append(norm)
        prev = a
    spans: list[tuple[int, int]] = []
    for k, (s0, a) in enumerate(zip(first, attn, strict=True)):
        limit = first[k + 1] if k + 1 < len(first) else len(roles)
        mlp = [i for i in range(a + 1, limit) if roles[i] in ("vector:swiglu", "vector:gating")]
        last = limit - 1
        if mlp:
            after = next((i for i in range(mlp[-1] + 1, limit) if roles[i] == "vector:norm"), limit)
            last = after - 1
        spans.append((starts[s0], max(ends[s0 : last + 1])))
    return spans


def _spans_by_mlp(roles: list[str], starts: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """Without attention kernels: a layer starts at the first norm after an MLP op."""
    spans: list[tuple[int, int]] = []
    cur_start: int | None = None
    cur_end = 0
    after_mlp = True
    for role, s, e in zip(roles, starts, ends, strict=True):
        if role == "vector:norm" and after_mlp:
            if cur_start is not None:
                spans.append((cur_start, cur_end))
            cur_start, cur_end, after_mlp = s, e, False
            continue
        if role in ("vector:swiglu", "vector:gating"):
            after_mlp = True
        if cur_start is not None:
            cur_end = max(cur_end, e)
    if cur_start is not None:
        spans.append((cur_start, cur_end))
    return spans


def _profile_rows(result: OverlapResult, profile: Profile, device: int) -> pd.DataFrame:
    """The analysis' prefetch rows that came from this profile and device."""
    p = result.prefetches
    if p.empty:
        return p
    rank = -1 if profile.rank is None else profile.rank
    rows = p[(p["rank"] == rank) & (p["device"] == device)]
    if rows.empty and p["rank"].nunique() == 1:
        # One profile only: the rank label may differ (e.g. unknown vs 0) but the rows are its own.
        rows = p[p["device"] == device]
    return rows


def _span_index(spans: Sequence[tuple[int, int]], t_ns: int) -> int:
    """Index of the span that contains t_ns (the last span starting at or before it)."""
    idx = -1
    for i, (s, _e) in enumerate(spans):
        if s <= t_ns:
            idx = i
        else:
            break
    return idx


def _default_device(profile: Profile, result: OverlapResult | None) -> int:
    if result is not None and not result.prefetches.empty:
        rank = -1 if profile.rank is None else profile.rank
        mine = result.prefetches[result.prefetches["rank"] == rank]
        if not mine.empty:
            return int(mine["device"].min())
    if profile.tasks.empty:
        return 0
    return int(profile.tasks["device"].min())


def choose_layer(result: OverlapResult | None, profile: Profile, device: int) -> LayerChoice:
    """The median-stall layer of the middle profiled step; ties broken by the lower layer index.

    Without attributed prefetches (e.g. a config that prefetches nothing) it is the middle layer
    span of the compute stream.
    """
    tasks = _device_tasks(profile, device)
    cs = _streams(result, profile, device).compute
    spans = layer_spans(tasks[tasks["stream"] == cs]) if cs >= 0 else []
    rows = _profile_rows(result, profile, device) if result is not None else pd.DataFrame()
    if not rows.empty:
        rows = rows[rows["layer"] >= 0]
    if rows.empty or not spans:
        if not spans:
            return LayerChoice(-1, None, None, "no decoder layer found on the compute stream")
        steps_n = profile.steps or 1
        if steps_n > 1 and len(spans) % steps_n == 0:
            per = len(spans) // steps_n
            step, layer = (steps_n - 1) // 2, (per - 1) // 2
            return LayerChoice(
                step * per + layer,
                step,
                layer,
                f"step {step} (middle of {steps_n} profiled), layer {layer}: the middle layer "
                "(no prefetches to rank by stall)",
            )
        k = (len(spans) - 1) // 2
        return LayerChoice(
            k, None, None, f"middle layer span ({k + 1} of {len(spans)}); no prefetches to rank"
        )
    steps = sorted(int(s) for s in rows["step"].unique())
    step = steps[(len(steps) - 1) // 2]
    in_step = rows[rows["step"] == step]
    per_layer = in_step.groupby("layer")["stall_ns"].sum()
    ordered = sorted((stall, layer) for layer, stall in _int_pairs(per_layer))
    stall_ns, layer = ordered[(len(ordered) - 1) // 2]
    first = in_step[in_step["layer"] == layer]
    anchor = int(
        first["window_start_ns"].where(first["window_start_ns"] >= 0, first["start_ns"]).min()
    )
    k = max(_span_index(spans, anchor), 0)
    reason = (
        f"step {step} (middle of {len(steps)} profiled), layer {layer}: the median-stall layer "
        f"of that step ({stall_ns / 1000:.2f} µs stall, {len(ordered)} layers ranked)"
    )
    return LayerChoice(k, step, layer, reason)


def timeline_layer(
    profile: Profile,
    result: OverlapResult | None,
    *,
    label: str,
    choice: LayerChoice | None = None,
    device: int | None = None,
) -> TimelineLayer:
    """Cut one decoder layer (both lanes) out of `profile`; `choice` None picks it here."""
    dev = _default_device(profile, result) if device is None else device
    if choice is None:
        choice = choose_layer(result, profile, dev)
    tasks = _device_tasks(profile, dev)
    streams = _streams(result, profile, dev)
    cs = streams.compute
    out = TimelineLayer(
        label=label,
        source=str(profile.path),
        rank=profile.rank,
        device=dev,
        compute_stream=cs if cs >= 0 else None,
        prefetch_streams=streams.prefetch,
        choice=choice,
        duration_us=0.0,
    )
    if cs < 0:
        return out
    spans = layer_spans(tasks[tasks["stream"] == cs])
    if not 0 <= choice.ordinal < len(spans):
        return out
    # Ends with its last op: the idle gap before the next layer may be a step boundary.
    t0, t1 = spans[choice.ordinal]
    lanes = {cs: "compute"}
    lanes.update(dict.fromkeys(streams.prefetch, "prefetch"))
    cut = tasks[
        tasks["stream"].isin(list(lanes)) & (tasks["end_ns"] > t0) & (tasks["start_ns"] < t1)
    ]
    cut = cut.sort_values(["start_ns", "end_ns"], kind="stable")
    records: list[dict[Any, Any]] = cut.to_dict(orient="records")
    for rec in records:
        start = int(rec["start_ns"])
        end = int(rec["end_ns"])
        out.tasks.append(
            TimelineTask(
                lane=lanes[int(rec["stream"])],
                name=str(rec["name"]),
                type=str(rec["type"]),
                op_type=str(rec["op_type"]),
                role=str(rec["role"]),
                start_us=(start - t0) / 1000.0,
                dur_us=max(end - start, 0) / 1000.0,
            )
        )
    if result is not None:
        rows = _profile_rows(result, profile, dev)
        if not rows.empty:
            # A prefetch issued just before the layer's first op still hides in this layer.
            at = rows["window_start_ns"].where(rows["window_start_ns"] >= 0, rows["start_ns"])
            rows = rows[(at >= t0) & (at < t1)]
            pf_rows: list[dict[Any, Any]] = rows.sort_values("start_ns").to_dict(orient="records")
            for r in pf_rows:
                out.prefetches.append(
                    TimelineWindow(
                        site=str(r["site"]) or str(r["point"]),
                        start_us=(int(r["start_ns"]) - t0) / 1000.0,
                        end_us=(int(r["end_ns"]) - t0) / 1000.0,
                        window_start_us=(int(r["window_start_ns"]) - t0) / 1000.0
                        if int(r["window_start_ns"]) >= 0
                        else math.nan,
                        window_end_us=(int(r["window_end_ns"]) - t0) / 1000.0
                        if int(r["window_end_ns"]) >= 0
                        else math.nan,
                        slack_us=float(r["slack_ns"]) / 1000.0,
                        hidden_fraction=float(r["hidden_fraction"]),
                        stall_us=float(r["stall_ns"]) / 1000.0,
                        late=bool(r["late"]),
                    )
                )
    end_rel = max((t.start_us + t.dur_us for t in out.tasks), default=0.0)
    out.duration_us = max(end_rel, (t1 - t0) / 1000.0)
    return out


# --- slack ------------------------------------------------------------------------------------


def slack_figure(results: Sequence[tuple[str, OverlapResult]], *, bins: int = 40) -> SlackFigure:
    """Histograms of slack per site (all layers, all steps) on one shared set of bins; a profile
    read under another layout than vllm-ascend has one histogram per prefetch point."""
    values: list[tuple[str, str, np.ndarray[Any, np.dtype[np.float64]], int]] = []
    tolerance = max((res.late_tolerance_us for _, res in results), default=0.0)
    for label, res in results:
        p = res.prefetches
        if p.empty:
            continue
        key = p["site"].where(p["site"] != "", p["point"])
        p = p[key != ""]
        key = key[key != ""]
        for site in sorted(key.unique(), key=site_sort_key):
            sp = p[key == site]
            slack = sp["slack_ns"].to_numpy(dtype=np.float64) / 1000.0
            values.append((label, str(site), slack, int(sp["late"].astype(bool).sum())))
    if not values:
        return SlackFigure(edges_us=[], series=[], tolerance_us=tolerance)
    lo = min(-tolerance, *(float(v[2].min()) for v in values))
    hi = max(0.0, *(float(v[2].max()) for v in values))
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    series = []
    for label, site, slack, late in values:
        counts, _ = np.histogram(slack, bins=edges)
        series.append(
            SlackSeries(
                label=label,
                site=site,
                counts=[int(c) for c in counts],
                n=int(slack.size),
                late=late,
            )
        )
    series.sort(key=lambda s: (site_sort_key(s.site), [v[0] for v in values].index(s.label)))
    return SlackFigure(edges_us=[float(e) for e in edges], series=series, tolerance_us=tolerance)


# --- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPoint:
    """One trial as the search figures plot it."""

    number: int
    role: str
    state: str
    objective: float | None
    throughput: float | None
    feasible: bool | None
    effective_mib: dict[str, float]
    estimate: float | None = None  # the search's estimate of the objective, when it made one


@dataclass(frozen=True)
class History:
    """Objective per trial and the best value so far (among complete, feasible trials)."""

    points: list[TrialPoint]
    best_so_far: list[tuple[int, float]]  # (trial number, best score up to and incl. it)
    maximize: bool


def history(points: Sequence[TrialPoint], *, maximize: bool = True) -> History:
    """Order trials by number and track the leading trial so far.

    Trials are ranked as the search ranks them: by its estimate when it made one, else by the
    measured objective; infeasible or unfinished trials never lead. The line carries the leading
    trial's score, so it never gets worse.
    """
    pts = sorted(points, key=lambda p: p.number)
    lead: TrialPoint | None = None
    lead_score = 0.0
    line: list[tuple[int, float]] = []
    for p in pts:
        score = p.estimate if p.estimate is not None else p.objective
        ok = (
            p.state == "complete"
            and p.role != "confirm"  # a config measured again: it counts for its trial
            and p.feasible is not False
            and p.objective is not None
            and score is not None
            and math.isfinite(score)
        )
        if (
            ok
            and score is not None
            and (lead is None or (score > lead_score if maximize else score < lead_score))
        ):
            lead, lead_score = p, score
        if lead is not None:
            line.append((p.number, lead_score))
    return History(points=pts, best_so_far=line, maximize=maximize)


@dataclass(frozen=True)
class Importance:
    """Parameter importance and how it was obtained."""

    method: str  # e.g. "optuna fANOVA" or "|Spearman ρ| with the objective"
    values: list[tuple[str, float]]  # (parameter, importance), most important first
    note: str = ""


def rank_correlation_importance(points: Sequence[TrialPoint], sites: Sequence[str]) -> Importance:
    """|Spearman ρ| of each site's effective MiB with the objective over complete trials."""
    rows = [
        {"objective": p.objective, **{s: p.effective_mib.get(s, 0.0) for s in sites}}
        for p in points
        if p.state == "complete" and p.objective is not None and math.isfinite(p.objective)
    ]
    if len(rows) < 3:
        return Importance("|Spearman ρ| with the objective", [], "fewer than 3 complete trials")
    frame = pd.DataFrame(rows)
    values: list[tuple[str, float]] = []
    for s in sites:
        col = frame[s]
        if col.nunique() < 2:
            continue  # a constant parameter has no correlation to report
        # Spearman = Pearson on ranks (pandas' own "spearman" would need scipy).
        rho = col.rank().corr(frame["objective"].rank(), method="pearson")
        if isinstance(rho, float) and math.isfinite(rho):
            values.append((s, abs(rho)))
    values.sort(key=lambda kv: (-kv[1], kv[0]))
    return Importance("|Spearman ρ| with the objective", values, f"{len(rows)} complete trials")


def _readable_storage(record: RunRecord) -> str | None:
    """The study's storage URL as run.json records it, or None when it is an SQLite file that is
    gone (opening a missing SQLite file would create an empty database)."""
    url = RunDir(record.path).storage_url_of(record.run)
    prefix = "sqlite:///"
    if url.startswith(prefix) and not Path(url[len(prefix) :]).is_file():
        return None
    return url


def unvaried_sites(points: Sequence[TrialPoint], sites: Sequence[str]) -> dict[str, float]:
    """Sites whose effective MiB was the same in every complete trial but the probes.

    The probes set every site at once (all off, all vendor default), so a site the search never
    moved would still seem to vary through them and be credited with the probes' effect.
    """
    searched = [
        p for p in points if p.state == "complete" and p.role not in ("baseline", "default")
    ]
    out: dict[str, float] = {}
    for s in sites:
        values = {round(p.effective_mib.get(s, 0.0), 4) for p in searched}
        if len(values) < 2:
            out[s] = next(iter(values), 0.0)
    return out


def search_importance(
    record: RunRecord, points: Sequence[TrialPoint], sites: Sequence[str]
) -> Importance:
    """optuna's importance on the run's study when it can be read, else a rank correlation."""
    complete = [p for p in points if p.state == "complete" and p.objective is not None]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importance(
            "", [], f"{len(complete)} complete trials; needs at least {MIN_TRIALS_FOR_IMPORTANCE}"
        )
    fixed = unvaried_sites(points, sites)
    if fixed:
        return Importance(
            "",
            [],
            "; ".join(
                f"{s} was {mib:.3g} MiB in every trial but the probes" for s, mib in fixed.items()
            )
            + "; importance needs every site to vary",
        )
    study = record.summary.get("study") or {}
    # An unfinished run has no summary yet; run.json names the study too.
    name = study.get("name") or record.run.get("study_name")
    storage = _readable_storage(record)
    if name and storage:
        import dataclasses

        import optuna
        from sqlalchemy.exc import OperationalError

        from autotune.errors import AutotuneError
        from autotune.search.storage import load_existing

        # PED-ANOVA: deterministic and needs neither scikit-learn nor scipy (fANOVA does).
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        try:
            # load_existing opens journal and RDB storages alike, AutotuneError when it cannot.
            st = load_existing(str(storage), str(name))
            values = optuna.importance.get_param_importances(st, evaluator=evaluator)
        except (AutotuneError, OperationalError) as exc:
            # The study is gone, unreachable or locked: the rank correlation says what it can.
            fallback = rank_correlation_importance(points, sites)
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return dataclasses.replace(
                fallback, note=f"{fallback.note}; the study could not be read: {why}"
            )
        pairs = sorted(
            ((str(k), float(v)) for k, v in values.items()), key=lambda kv: (-kv[1], kv[0])
        )
        if pairs:
            return Importance(
                "optuna PED-ANOVA importance on the run's study",
                pairs,
                f"{len(complete)} complete trials",
            )
    return rank_correlation_importance(points, sites)


MIN_TRIALS_FOR_IMPORTANCE = 8
