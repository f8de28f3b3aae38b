"""Profile-guided moves: the seed and the next candidates, from each site's measured segment.

A prefetch changes only its own site's stretch of the compute stream (window, join, consumer
matmul; `overlap.site_segments`), so every profiled trial measures every site at the bytes it ran
with (mlp.down's also depends on attn.o, whose ratio fires on down_proj too). The seed weighs,
per site, prefetch off (baseline), the vendor default, and the smallest ladder level that fills
the window; each candidate after it moves every site at once to its next level to measure (the
window-filling level, then one ladder step from its best), then combines each site's best
measured level. A module whose sites on do not pay for its sites off (near-off, as 0.23 writes
them) is seeded off as a whole.
Nothing here assumes hardware figures: the work per byte, the fixed cost and the stall all come
from the profiles.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.search.measure import SiteTiming
from autotune.search.space import SearchSpace


@dataclass(frozen=True)
class Segment:
    """One site's segment in one trial (ns): total, and its window ops + consumer matmul."""

    total_ns: float
    work_ns: float

    @property
    def other_ns(self) -> float:
        """Gaps, event record and join wait: what a prefetch adds besides its effect on work."""
        return self.total_ns - self.work_ns


@dataclass(frozen=True)
class Observation:
    """A measured trial as the guide sees it: its ladder key and per-site segment totals."""

    key: tuple[int, ...]
    segments: Mapping[str, float]
    late: frozenset[str] = frozenset()  # sites late beyond the tolerance in this trial


@dataclass(frozen=True)
class SeedChoice:
    """The seed's bytes for one site and why (off | fill | default | subset | module)."""

    nbytes: int
    reason: str
    predicted_ns: dict[str, float]  # predicted segment per option
    option_bytes: dict[str, int] = field(default_factory=dict)  # bytes of each option


def fixed_cost(off: Segment, on: Segment, late_ns: float) -> float:
    """What one prefetch adds to its segment besides its effect on work: the extra non-work time
    (event record, join wait, sync gaps) with the prefetch on, less its lateness."""
    return max(0.0, on.other_ns - off.other_ns - max(0.0, late_ns))


def seed_site(
    off: Segment | None,
    on: Segment | None,
    on_bytes: int,
    fill_bytes: int,
    late_ns: float,
    *,
    allow_default: bool = True,
    fixed_ns: float | None = None,
) -> SeedChoice:
    """Per site: off, window-filling bytes, or the default's bytes, whichever segment is shortest.

    `off` and `on` are the site's segments with prefetch off and at the default's `on_bytes`.
    The saving per byte is the work the default's prefetch removed; the fixed cost is the extra
    non-work time minus its lateness. Off wins when the window cannot hide enough bytes to pay
    that fixed cost; the default's bytes win when even its late bytes pay for their stall.
    """
    if off is None or on is None or on_bytes <= 0:
        return SeedChoice(fill_bytes, "fill", {})
    per_byte = (off.work_ns - on.work_ns) / on_bytes
    fixed = fixed_cost(off, on, late_ns) if fixed_ns is None else fixed_ns
    options = {"off": off.total_ns}
    if allow_default:  # not when the default is late and lateness is a hard rule
        options["default"] = on.total_ns
    if 0 < fill_bytes < on_bytes:
        options["fill"] = off.total_ns - per_byte * fill_bytes + fixed
    # Ties go to the simpler choice: off, then fill, then the default's bytes.
    rank = {"off": 0, "fill": 1, "default": 2}
    reason = min(options, key=lambda k: (options[k], rank[k]))
    sizes = {"off": 0, "fill": fill_bytes, "default": on_bytes}
    return SeedChoice(sizes[reason], reason, options, {k: sizes[k] for k in options})


# Sites whose ratio also prefetches the weight another site's segment consumes: attn.o's ratio
# fires on down_proj too (target.resolve_prefetches), so mlp.down's segment depends on it.
PARTNERS: dict[str, tuple[str, ...]] = {"mlp.down": ("attn.o",)}


def _site_costs(
    observations: Sequence[Observation],
    space: SearchSpace,
    i: int,
    given: Mapping[int, int],
    late_is_infeasible: bool,
) -> dict[int, float]:
    """Site i: level -> mean measured segment over the trials that ran it at that level, with
    the sites in `given` at the given levels (a level seen late counts as infinitely slow when
    lateness is a hard rule)."""
    site = space.sites[i].site
    # A partner's ratio also acts in its dependents' segments (attn.o's on down_proj): count them.
    dependents = [d for d, partners in PARTNERS.items() if site in partners and d in space.names]
    seen: dict[int, list[float]] = {}
    for obs in observations:
        if any(obs.key[j] != lvl for j, lvl in given.items()):
            continue
        seg = obs.segments.get(site)
        if seg is not None and dependents:
            extra = [obs.segments.get(d) for d in dependents]
            seg = None if any(e is None for e in extra) else seg + sum(e or 0.0 for e in extra)
        if late_is_infeasible and site in obs.late:
            seg = float("inf")
        if seg is not None and seg > 0:
            seen.setdefault(obs.key[i], []).append(seg)
    return {lvl: statistics.fmean(v) for lvl, v in seen.items()}


def _step(costs: Mapping[int, float], best: int, levels: int, knee: int) -> int:
    """The next level to measure for one site: its window-filling level `knee` if not measured
    yet, else one ladder step from its best level, towards the cheaper measured neighbour first.

    Below the knee a prefetch hides every byte; past it each byte stalls but still spares the
    matmul its HBM read, so the segment falls steeply up to the knee and rises gently after it:
    with off, the knee and the cap measured, the best of them is within a step or two of the
    optimum. Off is no guide to the direction (it lacks the fixed cost every prefetch pays).
    Off stays off once the knee and the level above it are measured: fewer bytes cannot pay a
    fixed cost that the window-filling and the first late bytes did not.
    """
    if 0 < knee < levels and knee not in costs:
        return knee
    if best == 0:
        # Late bytes can pay where window-filling ones did not: one level past a known knee, once.
        above = knee + 1
        return above if knee > 0 and above < levels and above not in costs else 0
    sides: list[tuple[float, int]] = []
    for d in (-1, 1):
        nxt = best + d
        if not 0 < nxt < levels or nxt in costs:
            continue
        beyond = [lvl for lvl in costs if (lvl - best) * d > 0 and lvl > 0]
        near = min(beyond, key=lambda lvl: abs(lvl - best)) if beyond else None
        sides.append((costs[near] if near is not None else float("inf"), nxt))
    return min(sides)[1] if sides else best


def candidates(
    observations: Sequence[Observation],
    space: SearchSpace,
    *,
    fill: Mapping[str, float] | None = None,
    late_is_infeasible: bool = False,
) -> list[tuple[int, ...]]:
    """Untried ladder points, best first: every site at its next level to measure at once
    (`_step`; `fill` gives the window-filling bytes per site), so each trial measures every site
    somewhere new; then each site at its best measured level; then one site's step at a time."""
    if not observations or not space.sites:
        return []
    tried = {o.key for o in observations}
    fill = fill or {}
    names = space.names
    # Sites without partners first, so a dependent site is judged with its partners' levels.
    order = sorted(range(len(names)), key=lambda i: names[i] in PARTNERS)
    best: dict[int, int] = {}
    stepped: dict[int, int] = {}
    for i in order:
        partners = [names.index(p) for p in PARTNERS.get(names[i], ()) if p in names]
        costs = _site_costs(
            observations, space, i, {j: best[j] for j in partners}, late_is_infeasible
        )
        if not costs:
            costs = _site_costs(observations, space, i, {}, late_is_infeasible)
        if not costs:
            return []
        best[i] = min(costs, key=lambda lvl: (costs[lvl], lvl))
        site = space.sites[i]
        knee = site.filling(fill.get(site.site, 0.0))
        stepped[i] = _step(costs, best[i], len(site.levels), knee)
    b = tuple(best[i] for i in range(len(names)))
    st = tuple(stepped[i] for i in range(len(names)))
    out = [st, b]
    for i in range(len(names)):
        if st[i] != b[i]:
            out.append((*b[:i], st[i], *b[i + 1 :]))
    return [k for k in dict.fromkeys(out) if k not in tried]


def seed_bytes(
    space: SearchSpace,
    timings: Mapping[str, SiteTiming],
    baseline_attrs: Mapping[str, Any],
    default_attrs: Mapping[str, Any],
    *,
    late_is_infeasible: bool = False,
) -> tuple[dict[str, int], dict[str, str]]:
    """The seed's bytes per active site and the reason for each (`seed_site`), from the stored
    attributes of the baseline and default trials."""

    def segs(attrs: Mapping[str, Any]) -> dict[str, Segment]:
        return {s: Segment(float(v[0]), float(v[1])) for s, v in attrs.get("segments", {}).items()}

    off, on = segs(baseline_attrs), segs(default_attrs)
    on_bytes = default_attrs.get("effective_bytes", {})
    lateness = default_attrs.get("lateness_us", {})
    late = set(default_attrs.get("late_sites", []))
    late_ns = {s: float(v) * 1e3 for s, v in lateness.items()}
    # A segment shared with a partner's prefetch (mlp.down with attn.o's down_proj firing) holds
    # the partner's record and join too: its sites take the fixed cost the others measured.
    own = {
        s: fixed_cost(off[s], on[s], late_ns.get(s, 0.0))
        for s in space.names
        if s not in PARTNERS and s in off and s in on
    }
    shared = statistics.median(own.values()) if own else None
    choices: dict[str, SeedChoice] = {}
    own_choices: dict[str, SeedChoice] = {}
    for site in space.names:
        fill = timings[site].fill_bytes if site in timings else 0
        args = (
            off.get(site),
            on.get(site),
            int(on_bytes.get(site, 0)),
            space.site(site).levels[space.site(site).filling(fill)],
            late_ns.get(site, 0.0),
        )
        allow = not (late_is_infeasible and site in late)
        choices[site] = seed_site(
            *args, allow_default=allow, fixed_ns=shared if site in PARTNERS else None
        )
        own_choices[site] = seed_site(*args, allow_default=allow)
    if choices and all(c.nbytes == 0 for c in choices.values()):
        choices.update(best_subset(own_choices))
    fires = _fires_per_layer(timings)
    near_off = {site: fires.get(site, 1) * own.get(site, shared or 0.0) for site in space.names}
    choices.update(module_off(choices, near_off))
    return (
        {site: c.nbytes for site, c in choices.items()},
        {site: c.reason for site, c in choices.items()},
    )


def best_subset(own: Mapping[str, SeedChoice]) -> dict[str, SeedChoice]:
    """When every site would be off: the sites whose own segments say their prefetch pays (each
    judged with the fixed cost measured in its own segment), else the one whose prefetch comes
    closest to paying, at its best bytes (reason "subset").

    An all-off seed repeats the baseline and teaches nothing, while the fixed costs it weighed
    were measured with every site prefetching at once (sharing the prefetch stream and joins,
    and for a partnered site taken from the others): a subset measured alone says whether a
    site's work saved per byte pays for its own fixed cost.
    """

    def gain(c: SeedChoice) -> tuple[float, str]:
        off = c.predicted_ns.get("off")
        rest = {k: v for k, v in c.predicted_ns.items() if k != "off"}
        if off is None or not rest:
            return float("-inf"), "off"
        best = min(rest, key=lambda k: rest[k])
        return off - rest[best], best

    scored = {site: gain(c) for site, c in own.items()}
    paying = [site for site, (g, _) in scored.items() if g > 0]
    if not paying:
        closest = max(scored, key=lambda site: scored[site][0], default=None)
        if closest is None or scored[closest][0] == float("-inf"):
            return {}
        paying = [closest]
    out: dict[str, SeedChoice] = {}
    for site in paying:
        c = own[site]
        option = scored[site][1]
        out[site] = SeedChoice(c.option_bytes[option], "subset", c.predicted_ns, c.option_bytes)
    return out


def _module(site: str) -> str:
    return site.split(".", 1)[0]


def _fires_per_layer(timings: Mapping[str, SiteTiming]) -> dict[str, int]:
    """How many prefetches each site issued per layer in the default trial's profile (attn.o
    fires on o_proj and down_proj): its count over the fewest any site issued."""
    counts = {site: t.prefetches for site, t in timings.items() if t.prefetches > 0}
    fewest = min(counts.values(), default=0)
    return {site: max(1, round(n / fewest)) for site, n in counts.items()} if fewest else {}


def _gain(c: SeedChoice) -> float:
    """What the chosen bytes save on the site's segment against off (inf when not predicted)."""
    off = c.predicted_ns.get("off")
    chosen = [k for k, b in c.option_bytes.items() if b == c.nbytes and k != "off"]
    if off is None or not chosen:
        return float("inf")
    return off - min(c.predicted_ns[k] for k in chosen)


def module_off(
    choices: Mapping[str, SeedChoice], near_off_ns: Mapping[str, float]
) -> dict[str, SeedChoice]:
    """Modules whose prefetching sites do not pay for their siblings' near-off prefetches, all off.

    0.23 switches a module off only as a whole (every ratio 0); a site of a module left on is
    written with the near-off ratio, one short CMO per firing that still pays the record and join
    (`target.near_off_ratio`). So a module with some sites on costs, besides their own segments,
    each off sibling's fixed cost per firing (`near_off_ns`); when that is more than the on sites
    save, the whole module is cheaper off (reason "module").
    """
    by_module: dict[str, list[str]] = {}
    for site in choices:
        by_module.setdefault(_module(site), []).append(site)
    out: dict[str, SeedChoice] = {}
    for sites in by_module.values():
        on = [s for s in sites if choices[s].nbytes > 0]
        off = [s for s in sites if choices[s].nbytes == 0]
        if not on or not off:
            continue
        if sum(_gain(choices[s]) for s in on) <= sum(near_off_ns.get(s, 0.0) for s in off):
            for s in on:
                c = choices[s]
                out[s] = SeedChoice(0, "module", c.predicted_ns, c.option_bytes)
    return out
