"""Steps come from the recorded step markers: `ProfilerStep#N` spans in trace_view.json, STEP_TIME
in the db, linked to the device by kernel_details.csv's Step Id or the db's CANN_API launches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.overlap import analyze
from autotune.profile import load_profiles
from autotune.profile.kernel_details import read_kernel_details, step_starts
from autotune.profile.tasks import ROLE_COLUMN, StepSpan

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
T0 = 1_776_130_000_000_000_000  # profiles/make_samples.py
T1 = 1_776_200_000_000_000_000  # profiles/make_other_stacks.py
US = 1000


def test_trace_view_markers_and_kernel_details_step_ids() -> None:
    (p,) = load_profiles(PROFILES / "dense_current_ascend_pt")
    # ProfilerStep#5/#6 as recorded (host times); each step begins on the device at the first
    # kernel kernel_details.csv places in it.
    assert p.step_markers == [
        StepSpan(5, T0 - 30 * US, T0 + 218 * US),
        StepSpan(6, T0 + 220 * US, T0 + 468 * US),
    ]
    assert p.step_starts == {5: T0, 6: T0 + 250 * US}
    assert [(s.number, s.start_ns, s.end_ns, s.complete) for s in p.profiled_steps] == [
        (5, T0, T0 + 245_500, True),
        (6, T0 + 250 * US, T0 + 495_500, True),
    ]
    kd = read_kernel_details(p.path / "ASCEND_PROFILER_OUTPUT" / "kernel_details.csv")
    assert step_starts(kd) == p.step_starts


def test_db_links_steps_to_the_device_through_cann_api_launches() -> None:
    # STEP_TIME #31 starts (host) at 185 µs, before step #30's last kernel ends on the device
    # (197 µs); the kernels launched inside #31's span start at 240 µs.
    (p,) = load_profiles(PROFILES / "matmul_overlap_ascend_pt")
    assert p.step_markers == [
        StepSpan(30, T1 - 40 * US, T1 + 185 * US),
        StepSpan(31, T1 + 185 * US, T1 + 420 * US),
    ]
    assert p.step_starts == {30: T1, 31: T1 + 240 * US}
    result = analyze(load_profiles(PROFILES / "matmul_overlap_ascend_pt"), layout="generic")
    assert [(s.step, s.end_ns - s.start_ns, s.complete) for s in result.step_times] == [
        (30, 197 * US, True),
        (31, 197 * US, True),
    ]
    out = result.to_json()["step_times"]
    assert [s["duration_us"] for s in out] == [197.0, 197.0]


def _trace(
    path: Path, markers: int, layers_per_step: int, steps_written: int
) -> tuple[str, list[tuple[int, int]]]:
    """A trace_view.json of `steps_written` steps (a late attn.o prefetch in every layer) with
    `markers` ProfilerStep spans recorded, as torch_npu writes the host side first."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_overlap import Timeline, dense_layer

    tl = Timeline()
    spans = []
    for _ in range(steps_written):
        begin = tl.t
        for _ in range(layers_per_step):
            dense_layer(tl, o=12)  # slack -7 µs, its join stalls 9 µs
        tl.t += 100
        spans.append((begin, tl.t))
    while len(spans) < markers:  # markers of steps whose device tasks the file never reached
        spans.append((spans[-1][1], spans[-1][1] + (spans[-1][1] - spans[-1][0])))
    ev: list[dict[str, object]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "Python"}},
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "Ascend Hardware"}},
    ]
    for i, (b, e) in enumerate(spans):
        ev.append({"ph": "X", "name": f"ProfilerStep#{i + 1}", "pid": 1, "tid": 1,
                   "ts": f"{b}.000", "dur": e - b})  # fmt: skip
    for r in tl.tasks().to_dict("records"):
        ev.append({"name": r["name"], "pid": 7, "tid": r["stream"],
                   "ts": f"{r['start_ns'] // US}.{r['start_ns'] % US:03d}",
                   "dur": (r["end_ns"] - r["start_ns"]) / US, "ph": "X",
                   "args": {"Task Type": r["type"], "Physic Stream Id": r["stream"],
                            "connection_id": -1}})  # fmt: skip
    assert {r[ROLE_COLUMN] for r in tl.rows} >= {"prefetch", "wait", "record"}
    text = "[\n" + ",\n".join(json.dumps(e) for e in ev) + "\n]\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text, [(b * US, e * US) for b, e in spans]


def test_a_cut_off_trace_counts_the_steps_it_holds(tmp_path: Path) -> None:
    # 8 steps recorded, 4 layers a step; the file is cut inside the 4th step's 3rd layer, so it
    # holds 3 complete steps (12 layers) and part of a 4th: 14 layers do not split into 8 steps.
    trace = tmp_path / "r_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"
    text, spans = _trace(trace, markers=8, layers_per_step=4, steps_written=4)
    begin, end = spans[3]
    cut_ns = begin + (end - 100 * US - begin) * 5 // 8  # inside the 3rd of its 4 layers
    lines = text.splitlines(keepends=True)
    at = next(
        i
        for i, line in enumerate(lines)
        if '"pid": 7, "tid"' in line
        and int(json.loads(line.rstrip(",\n"))["ts"].replace(".", "")) >= cut_ns
    )
    trace.write_text("".join(lines[:at]) + lines[at][:40], encoding="utf-8")
    (p,) = load_profiles(tmp_path)
    assert p.truncated and p.steps == 4
    assert [s.complete for s in p.profiled_steps] == [True, True, True, False]
    assert any("8 step marker(s), the file holds tasks of 4" in w for w in p.warnings)
    assert any("step 4 is cut off" in w and "3 complete step(s)" in w for w in p.warnings)
    result = analyze([p])
    assert result.steps == 3
    assert not any("do not split evenly" in w for w in result.warnings)
    (o,) = [s for s in result.sites if s.site == "attn.o"]
    # 14 late o_proj prefetches read; the 12 of the complete steps stall 9 µs each: 36 µs a step.
    assert o.count >= 14 and o.stall_us_per_step == pytest.approx(4 * 9.0)
    steps = result.prefetches["step"].tolist()
    assert steps[:12] == [0] * 4 + [1] * 4 + [2] * 4 and set(steps[12:]) == {3}


def test_markers_give_the_layer_of_each_step(tmp_path: Path) -> None:
    trace = tmp_path / "r_ascend_pt" / "ASCEND_PROFILER_OUTPUT" / "trace_view.json"
    _trace(trace, markers=3, layers_per_step=2, steps_written=3)
    (p,) = load_profiles(tmp_path)
    assert p.steps == 3 and all(s.complete for s in p.profiled_steps)
    result = analyze([p])
    df = result.prefetches
    assert df["step"].tolist() == [0, 0, 1, 1, 2, 2] and df["layer"].tolist() == [0, 1] * 3
    # The per-step spread stays in the result, one device span per step held.
    assert [s.step for s in result.step_times] == [1, 2, 3]
    spans = [(s.start_ns, s.end_ns) for s in result.step_times]
    assert all(b < e for b, e in spans) and spans == sorted(spans)
    assert [s.start_ns for s in result.step_times] == [m.start_ns for m in p.step_markers]


def test_without_markers_the_profile_counts_as_one_step() -> None:
    (p,) = load_profiles(PROFILES / "dense_legacy_ascend_pt")
    assert p.steps is None and p.step_markers == [] and p.profiled_steps == []
    assert any("no step markers; the profile counts as one step" in w for w in p.warnings)
    assert analyze([p]).steps == 1
