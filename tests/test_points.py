"""The general prefetch model: issue, consumer, join and window of every CMO, whoever issued it.

Timelines are built with test_overlap's Timeline (µs in, ns stored); profiles from `profiles/`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_overlap import REC, US, WAIT, Timeline, dense_layer, moe_layer

from autotune.overlap import analyze
from autotune.points import point_label
from autotune.profile import load_profiles
from autotune.profile.tasks import ROLE_COLUMN, Profile

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
# The per-prefetch figures the two matchers must agree on for a vllm-ascend timeline.
SAME = [
    "start_ns",
    "window_start_ns",
    "window_end_ns",
    "join_start_ns",
    "join_end_ns",
    "slack_ns",
    "stall_ns",
    "hidden_fraction",
    "late",
    "step",
    "layer",
    "consumer_start_ns",
    "point",
]


def _same_per_prefetch(profiles: list[Profile], columns: list[str] = SAME) -> None:
    vllm = analyze(profiles, layout="vllm-ascend").prefetches[columns]
    general = analyze(profiles, layout="generic").prefetches[columns]
    pd.testing.assert_frame_equal(vllm, general)


@pytest.mark.parametrize(
    "sample",
    ["dense_current_ascend_pt", "dense_db_ascend_pt", "dense_legacy_ascend_pt",
     "truncated_ascend_pt"],
)  # fmt: skip
def test_the_general_model_reads_vllm_ascend_fixtures_as_its_sites(sample: str) -> None:
    _same_per_prefetch(load_profiles(PROFILES / sample))


def test_the_general_model_reads_a_simulated_vllm_ascend_profile_as_its_sites(
    tmp_path: Path,
) -> None:
    from autotune.target import vendor_default_config
    from autotune.workloads.base import Workload
    from autotune.workloads.simulate import simulate_once

    workload = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=2)
    _, trial = simulate_once(workload, vendor_default_config(), tmp_path)
    assert trial.profile_dir is not None
    profiles = load_profiles(trial.profile_dir)
    _same_per_prefetch(profiles)
    assert analyze(profiles, layout="auto").layout == "vllm-ascend"


_CMO = st.one_of(st.none(), st.integers(min_value=1, max_value=60))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_CMO, _CMO, _CMO, _CMO, _CMO), min_size=1, max_size=3))
def test_the_general_model_agrees_on_any_vllm_ascend_layer(
    layers: list[tuple[int | None, int | None, int | None, int | None, int | None]],
) -> None:
    tl = Timeline()
    for qkv, o, gate_up, down, o_down in layers:
        dense_layer(tl, qkv=qkv, o=o, gate_up=gate_up, down=down, o_down=o_down)
    # A point's layer is its occurrence in the step: the decoder layer only when every layer
    # prefetches there (as in the fixtures above), so it is left out here.
    _same_per_prefetch([tl.profile()], [c for c in SAME if c != "layer"])


def _pair_layer(tl: Timeline, gate_up: int, down: int) -> None:
    """SGLang's MLP: after the all-reduce, one wait and two CMOs (gate_up, then down) on the
    prefetch stream; the join after the whole MLP."""
    tl.op("cube", "FusedInferAttentionScore", 20)
    tl.op("cube", "MatMulV2", 10)
    tl.op("comm", "AllReduce", 10)
    tl.record()
    go = max(tl.side_free, tl.t)
    tl._row(tl.side, "wait", "", tl.side_free, go)
    tl._row(tl.side, "prefetch", "", go, go + gate_up)
    tl._row(tl.side, "prefetch", "", go + gate_up, go + gate_up + down)
    end = go + gate_up + down
    tl.op("vector:norm", "AddRmsNorm", 6)
    tl.op("cube", "MatMulV2", 30)
    tl.op("vector:swiglu", "SwiGlu", 4)
    tl.op("cube", "MatMulV2", 15)
    tl._row(tl.side, "record", "", end, end + 1)
    tl.side_free = tl.side_record_end = end + 1
    tl.join()


def test_two_cmos_from_one_issue_go_with_the_first_and_second_matmul() -> None:
    tl = Timeline()
    _pair_layer(tl, gate_up=40, down=20)
    result = analyze([tl.profile()], layout="generic")
    gate_up, down = result.prefetches.to_dict("records")
    a = gate_up["issue_ns"]  # end of the record after the all-reduce
    # Windows: the norm alone (up to gate_up's matmul), then norm + gate_up matmul + SwiGLU.
    assert (gate_up["window_start_ns"], gate_up["window_end_ns"]) == (a, a + 6 * US)
    assert (down["window_start_ns"], down["window_end_ns"]) == (a, a + 40 * US)
    assert (gate_up["consumer_start_ns"], down["consumer_start_ns"]) == (a + 6 * US, a + 40 * US)
    assert gate_up["consumer_known"] and down["consumer_known"]
    assert (gate_up["contention"], down["contention"]) == (False, True)
    # One join after the MLP: gate_up's CMO ended before it began, down's is charged all of it.
    assert gate_up["join_start_ns"] == down["join_start_ns"] == a + 55 * US
    assert gate_up["stall_ns"] == 0 and down["stall_ns"] > 0
    assert gate_up["point"] == "AllReduce → AddRmsNorm ⇒ MatMulV2 [1/2]"
    assert down["point"] == "AllReduce → AddRmsNorm ⇒ MatMulV2 [2/2]"
    assert gate_up["slack_ns"] == (6 - 40) * US and down["slack_ns"] == (40 - 60) * US
    assert analyze([tl.profile()], layout="auto").layout == "sglang"


@pytest.mark.parametrize(
    ("gate_up", "gate_up_stall"),
    [(70, 70 - 55), (40, 0)],
    ids=["ends-inside-the-join", "ends-before-the-join"],
)
def test_a_shared_join_is_charged_in_cmo_end_order(gate_up: int, gate_up_stall: int) -> None:
    # The MLP's ops after the issue take 55 µs, so the join begins at a+55; the down CMO runs
    # after gate_up's on the same stream and ends at a+gate_up+20, its record 1 µs later and the
    # wait's own 1 µs after that.
    tl = Timeline()
    _pair_layer(tl, gate_up=gate_up, down=20)
    result = analyze([tl.profile()], layout="generic")
    g, d = result.prefetches.to_dict("records")
    a = g["issue_ns"]
    assert g["end_ns"] == a + gate_up * US and d["end_ns"] == a + (gate_up + 20) * US
    assert g["join_start_ns"] == d["join_start_ns"] == a + 55 * US
    assert g["join_end_ns"] == d["join_end_ns"] == a + (gate_up + 20 + REC + WAIT) * US
    # gate_up: the wait until its CMO ends; down: the rest, its bytes and the sync after them.
    assert g["stall_ns"] == gate_up_stall * US
    assert d["stall_ns"] == (gate_up + 20 + REC + WAIT - 55 - gate_up_stall) * US
    assert g["stall_ns"] + d["stall_ns"] == d["join_end_ns"] - d["join_start_ns"]
    charged = sum(p.stall_us_total for p in result.points) + result.unattributed_stall_us
    assert charged == pytest.approx(result.join_us_total)


def test_attention_is_no_consumer_and_a_far_join_leaves_it_unknown() -> None:
    # A MindIE-style prefetch: issued before the attention kernel, joined only after the layer.
    tl = Timeline()
    tl.op("vector:norm", "AddRmsNorm", 5)
    tl.issue(24)
    tl.op("cube", "SparseFlashAttention", 20)
    tl.op("cube", "BatchMatMulV2", 6)
    tl.op("cube", "MatMulV2", 12)
    tl.op("vector:norm", "AddRmsNorm", 5)
    tl.op("cube", "MatMulV2", 20)
    tl.join()
    (p,) = analyze([tl.profile()], layout="auto").prefetches.to_dict("records")
    assert p["consumer"] == "BatchMatMulV2" and not p["consumer_known"]
    assert p["contention"]  # the attention kernel is a cube op
    assert p["window_end_ns"] - p["window_start_ns"] == 20 * US
    result = analyze([tl.profile()], layout="auto")
    (point,) = result.points
    assert result.layout == "generic" and not point.consumer_known
    assert point_label(point) == "AddRmsNorm → SparseFlashAttention ⇒ BatchMatMulV2"


def test_a_cmo_on_the_compute_stream_is_no_prefetch() -> None:
    tl = Timeline()
    dense_layer(tl, qkv=3)
    rows = tl.tasks()
    cmo = rows[rows[ROLE_COLUMN] == "prefetch"].assign(stream=tl.compute)
    profile = tl.profile()
    profile.tasks = pd.concat([rows, cmo], ignore_index=True).sort_values("start_ns")
    result = analyze([profile], layout="generic")
    assert len(result.prefetches) == 1
    assert any("1 CMO task(s) on the compute stream itself" in w for w in result.warnings)
    assert result.streams == {("rank0_ascend_pt", 0): result.streams[("rank0_ascend_pt", 0)]}
    (streams,) = result.streams.values()
    assert (streams.compute, streams.prefetch) == (tl.compute, (tl.side,))


def test_moe_gating_point_and_its_labels() -> None:
    tl = Timeline()
    moe_layer(tl, moe=20)
    result = analyze([tl.profile()], layout="auto")
    (point,) = result.points
    assert result.layout == "vllm-ascend"
    assert (point.site, point.weight, point.count) == ("moe.gate_up", "w13", 1)
    assert point.name == "MatMulV2 → MoeGatingTopK ⇒ GroupedMatmul"
    assert point.change.knob == "weight_prefetch_config ratio of moe.gate_up (fires on w13)"


def test_what_to_change_in_bytes_when_the_sizes_are_known() -> None:
    profiles = load_profiles(PROFILES / "dense_current_ascend_pt")
    # attn.o on o_proj: a 6 µs CMO from 96.5 µs, its window ends at 100 µs: 3.5 µs of 6 fit.
    plain = {p.weight: p for p in analyze(profiles).points if p.site == "attn.o"}
    c = plain["o_proj"].change
    assert (c.cmo_us, c.available_us, c.window_us) == (6.0, 3.5, 3.0)
    assert c.hide_share == pytest.approx(3.5 / 6) and c.setting == "ratio × 0.58"
    assert c.stall_us_per_step == 3.0 and c.cmo_bytes is None
    sizes = {("attn.o", "o_proj"): (6_000_000, 12_000_000)}
    sized = {p.weight: p for p in analyze(profiles, sizes=sizes).points if p.site == "attn.o"}
    c = sized["o_proj"].change
    # 6 MB in 6 µs: 1000 GB/s; 3.5 µs of it is 3.5 MB, 0.292 of the 12 MB weight.
    assert (c.cmo_bytes, c.weight_bytes, c.bytes_hidden) == (6_000_000, 12_000_000, 3_500_000)
    assert c.gbps == pytest.approx(1000.0) and c.setting == "ratio 0.292"
    assert sized["down_proj"].change.cmo_bytes is None  # no size given for it
