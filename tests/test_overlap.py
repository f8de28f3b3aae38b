"""Overlap analysis on hand-built decode layers laid out as in docs/analysis.md.

Times are written in µs and stored in ns. The builder below plays both streams: every prefetch is
issued by a compute-stream record, waited for on the prefetch stream, and joined by a compute-stream
wait that ends 1 µs after the prefetch stream's record (or 1 µs after it starts when that is done).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.overlap import (
    PREFETCH_COLUMNS,
    OverlapResult,
    SiteSummary,
    analyze,
    site_segments,
)
from autotune.profile.tasks import ROLE_COLUMN, TASK_COLUMNS, Profile

US = 1_000  # ns
REC = 1  # µs an event record takes
WAIT = 1  # µs a wait takes when its event has already fired

_TYPES = {
    "cube": "AI_CORE",
    "comm": "HCCL",
    "other": "AI_VECTOR_CORE",
    "record": "EVENT_RECORD",
    "wait": "EVENT_WAIT",
    "prefetch": "CMO",
}


@dataclass
class Timeline:
    """One device: a compute stream and the prefetch stream, built op by op (times in µs)."""

    device: int = 0
    compute: int = 2
    side: int = 9
    t: int = 0  # compute-stream cursor
    side_free: int = 0  # when the prefetch stream is idle again
    side_record_end: int = 0  # end of the prefetch stream's last record
    rows: list[dict[str, Any]] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)  # intended site of each issued prefetch

    def _row(self, stream: int, role: str, op_type: str, start: int, end: int) -> None:
        type_ = "AI_VECTOR_CORE" if role.startswith("vector:") else _TYPES[role]
        self.rows.append(
            {
                "device": self.device,
                "stream": stream,
                "name": op_type or type_,
                "type": type_,
                "op_type": op_type,
                "start_ns": start * US,
                "end_ns": end * US,
                "connection_id": -1,
                "source": "db",
                ROLE_COLUMN: role,
            }
        )

    def op(self, role: str, op_type: str, dur: int) -> tuple[int, int]:
        start = self.t
        self.t += dur
        self._row(self.compute, role, op_type, start, self.t)
        return start, self.t

    def record(self) -> None:
        self._row(self.compute, "record", "", self.t, self.t + REC)
        self.t += REC

    def issue(self, dur: int, site: str = "") -> tuple[int, int]:
        """prefetch_preprocess: a compute record; the prefetch stream waits for it, runs the CMO."""
        self.record()
        go = max(self.side_free, self.t)
        self._row(self.side, "wait", "", self.side_free, go)
        self._row(self.side, "prefetch", "", go, go + dur)
        self._row(self.side, "record", "", go + dur, go + dur + REC)
        self.side_free = self.side_record_end = go + dur + REC
        self.planned.append(site)
        return go, go + dur

    def join(self) -> tuple[int, int]:
        """prefetch_postprocess: the compute stream waits for the prefetch stream's last record."""
        start = self.t
        self.t = max(self.t, self.side_record_end) + WAIT
        self._row(self.compute, "wait", "", start, self.t)
        return start, self.t

    def comm_wait(self, stream: int, dur: int) -> tuple[int, int]:
        """A compute-stream wait for another (HCCL) stream, released by that stream's record."""
        start = self.t
        self._row(stream, "record", "", start + dur - WAIT - REC, start + dur - WAIT)
        self.t = start + dur
        self._row(self.compute, "wait", "", start, self.t)
        return start, self.t

    def tasks(self, *, records: bool = True) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=[*TASK_COLUMNS, ROLE_COLUMN])
        if not records:
            df = df[df[ROLE_COLUMN] != "record"]
        return df.sort_values(["device", "start_ns"], kind="stable").reset_index(drop=True)

    def profile(self, steps: int | None = 1, *, records: bool = True, **kw: Any) -> Profile:
        return Profile(
            path=Path("rank0_ascend_pt"),
            source="db",
            tasks=self.tasks(records=records),
            rank=0,
            steps=steps,
            **kw,
        )


@dataclass(frozen=True)
class Durations:
    """Op durations of a layer in µs."""

    norm: int = 10
    comm: int = 20
    quant: int = 5
    mm: int = 40
    qknorm: int = 3
    rope: int = 4
    attn: int = 30
    swiglu: int = 8


D = Durations()


def dense_layer(
    tl: Timeline,
    *,
    qkv: int | None = None,
    o: int | None = None,
    gate_up: int | None = None,
    down: int | None = None,
    o_down: int | None = None,
    flashcomm: bool = True,
    gate_up_join: str = "swiglu",
    d: Durations = D,
) -> None:
    """Rows 1-18 of the dense layer table; each keyword is that prefetch's CMO duration (µs).

    `gate_up_join="norm"` joins mlp.gate_up right after its norm (before vllm-ascend #4168)."""
    tl.op("vector:norm", "AddRmsNorm", d.norm)
    if flashcomm:
        tl.op("comm", "AllGather", d.comm)
    if qkv is not None:
        tl.issue(qkv, "attn.qkv")
    tl.op("vector:quant", "AscendQuantV2", d.quant)
    if qkv is not None:
        tl.join()
    tl.op("cube", "QuantBatchMatmulV3", d.mm)
    tl.op("vector:norm", "RmsNorm", d.qknorm)
    tl.op("other", "RotaryPositionEmbedding", d.rope)
    tl.op("cube", "FusedInferAttentionScore", d.attn)
    if o is not None:
        tl.issue(o, "attn.o")
    tl.op("vector:quant", "AscendQuantV2", d.quant)
    if o is not None:
        tl.join()
    tl.op("cube", "QuantBatchMatmulV3", d.mm)
    tl.op("comm", "ReduceScatter" if flashcomm else "AllReduce", d.comm)
    if gate_up is not None:
        tl.issue(gate_up, "mlp.gate_up")
    tl.op("vector:norm", "AddRmsNorm", d.norm)
    joined_at_norm = gate_up is not None and gate_up_join == "norm"
    if joined_at_norm:
        tl.join()
    if flashcomm:
        tl.op("comm", "AllGather", d.comm)
    tl.op("vector:quant", "AscendQuantV2", d.quant)
    tl.op("cube", "QuantBatchMatmulV3", d.mm)
    if down is not None:
        tl.issue(down, "mlp.down")
    tl.op("vector:swiglu", "SwiGlu", d.swiglu)
    if down is not None or (gate_up is not None and not joined_at_norm):
        tl.join()
    if o_down is not None:
        tl.issue(o_down, "attn.o")
    tl.op("vector:quant", "AscendQuantV2", d.quant)
    if o_down is not None:
        tl.join()
    tl.op("cube", "QuantBatchMatmulV3", d.mm)
    tl.op("comm", "ReduceScatter" if flashcomm else "AllReduce", d.comm)


def moe_layer(tl: Timeline, *, qkv: int | None = None, moe: int | None = None) -> None:
    """A MoE layer: dense attention, then router, gating, dispatch, quant, experts, combine."""
    tl.op("vector:norm", "AddRmsNorm", 10)
    if qkv is not None:
        tl.issue(qkv, "attn.qkv")
    tl.op("vector:quant", "AscendQuantV2", 5)
    if qkv is not None:
        tl.join()
    tl.op("cube", "QuantBatchMatmulV3", 40)
    tl.op("cube", "FusedInferAttentionScore", 30)
    tl.op("vector:quant", "AscendQuantV2", 5)
    tl.op("cube", "QuantBatchMatmulV3", 40)
    tl.op("comm", "AllReduce", 20)
    tl.op("vector:norm", "AddRmsNorm", 10)
    tl.op("cube", "MatMulV2", 6)  # router
    if moe is not None:
        tl.issue(moe, "moe.gate_up")
    tl.op("vector:gating", "MoeGatingTopK", 6)
    tl.op("comm", "MoeDistributeDispatch", 25)
    tl.op("vector:quant", "DynamicQuant", 4)
    if moe is not None:
        tl.join()
    tl.op("cube", "GroupedMatmul", 50)
    tl.op("vector:swiglu", "DequantSwigluQuant", 7)
    tl.op("cube", "GroupedMatmul", 50)
    tl.op("comm", "MoeDistributeCombine", 25)


def rows(result: OverlapResult, site: str | None = None) -> list[dict[str, Any]]:
    df = result.prefetches
    if site is not None:
        df = df[df["site"] == site]
    return list(df.to_dict("records"))


def summary(result: OverlapResult, site: str) -> SiteSummary:
    (s,) = [s for s in result.sites if s.site == site]
    return s


# ---------------------------------------------------------------------------------------------


def test_hidden_qkv_prefetch() -> None:
    tl = Timeline()
    dense_layer(tl, qkv=3)
    result = analyze([tl.profile()])
    assert list(result.prefetches.columns) == list(PREFETCH_COLUMNS)
    (p,) = rows(result)
    # norm [0,10] AllGather [10,30] record [30,31]; CMO [31,34]; quant [31,36]; join [36,37]
    assert p["site"] == "attn.qkv" and p["weight"] == "qkv_proj" and p["window_kind"] == "quant"
    assert (p["start_ns"], p["end_ns"]) == (31 * US, 34 * US)
    assert (p["window_start_ns"], p["window_end_ns"]) == (31 * US, 36 * US)
    assert (p["join_start_ns"], p["join_end_ns"]) == (36 * US, 37 * US)
    assert p["slack_ns"] == 2 * US
    assert p["hidden_fraction"] == 1.0
    assert p["stall_ns"] == WAIT * US
    assert not p["late"]
    assert (p["rank"], p["device"], p["stream"], p["step"], p["layer"]) == (0, 0, 9, 0, 0)
    s = summary(result, "attn.qkv")
    assert (s.count, s.late, s.windows, s.verdict) == (1, 0, 1, "hidden")
    assert s.slack_us_median == 2.0 and s.stall_us_total == 1.0
    assert result.unattributed == 0


def test_site_segments_run_from_the_window_to_its_matmul() -> None:
    off, on = Timeline(), Timeline()
    for _ in range(2):
        dense_layer(off)
        # qkv's 3 µs CMO hides in its 5 µs quant; down's 12 µs CMO outlasts the 8 µs SwiGLU.
        dense_layer(on, qkv=3, down=12)
    seg_off, seg_on = site_segments([off.profile()]), site_segments([on.profile()])
    assert set(seg_off) == {"attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"}
    assert seg_on["attn.qkv"].windows == 2
    # qkv: quant 5 + matmul 40 of work either way; the prefetch adds its record and join (1 + 1).
    qkv_off, qkv_on = seg_off["attn.qkv"], seg_on["attn.qkv"]
    assert (qkv_off.total_ns, qkv_off.work_ns, qkv_off.other_ns) == (45 * US, 45 * US, 0)
    assert (qkv_on.total_ns, qkv_on.work_ns, qkv_on.other_ns) == (47 * US, 45 * US, 2 * US)
    # down: its window (SwiGLU 8 and the quant 5 before down_proj) + matmul 40 of work;
    # prefetched, its record (1) and a join that waits for the late CMO (6) come on top.
    down_off, down_on = seg_off["mlp.down"], seg_on["mlp.down"]
    assert (down_off.total_ns, down_off.work_ns) == (53 * US, 53 * US)
    assert (down_on.total_ns, down_on.work_ns, down_on.other_ns) == (60 * US, 53 * US, 7 * US)
    # gate_up's window is its norm with the all-gather and quant after it: 35 + matmul 40.
    assert seg_on["mlp.gate_up"].work_ns == 75 * US


def test_late_prefetch_stalls_for_its_join() -> None:
    tl = Timeline()
    dense_layer(tl, o=12)
    (p,) = rows(analyze([tl.profile()]))
    r = p["start_ns"] - REC * US  # the CMO starts when the record before the quant ends
    assert p["site"] == "attn.o" and p["weight"] == "o_proj"
    assert p["window_start_ns"] == r + REC * US and p["window_end_ns"] == r + (REC + 5) * US
    assert p["slack_ns"] == (5 - 12) * US
    assert p["hidden_fraction"] == pytest.approx(5 / 12)
    # The join starts when the quant ends and ends 1 µs after the prefetch stream's record.
    assert p["join_end_ns"] - p["join_start_ns"] == (12 + REC - 5 + WAIT) * US
    assert p["stall_ns"] == (12 + REC - 5 + WAIT) * US
    assert bool(p["late"])


def test_tolerance() -> None:
    tl = Timeline()
    dense_layer(tl, o=12)  # slack -7 µs
    assert summary(analyze([tl.profile()], late_tolerance_ns=6_999), "attn.o").late == 1
    within = analyze([tl.profile()], late_tolerance_ns=7_000)
    assert summary(within, "attn.o").late == 0
    assert summary(within, "attn.o").verdict == "hidden"
    assert within.prefetches["slack_ns"].tolist() == [-7 * US]


def test_gate_up_and_down_share_one_join() -> None:
    tl = Timeline()
    dense_layer(tl, gate_up=100, down=5)
    result = analyze([tl.profile()])
    (g,) = rows(result, "mlp.gate_up")
    (d,) = rows(result, "mlp.down")
    a = g["start_ns"] - REC * US  # end of ReduceScatter: the gate_up record [a, a+1]
    assert g["weight"] == "gate_up_proj" and g["window_kind"] == "norm"
    # The window is the post-attention norm, AllGather and quant: [a+1, a+36].
    assert (g["window_start_ns"], g["window_end_ns"]) == (a + 1 * US, a + 36 * US)
    assert g["hidden_fraction"] == pytest.approx(35 / 100)
    assert g["slack_ns"] == (36 - 101) * US
    # The down CMO waits for the gate_up one: [a+102, a+107]; SwiGlu [a+77, a+85].
    assert (d["start_ns"], d["end_ns"]) == (a + 102 * US, a + 107 * US)
    assert d["window_kind"] == "swiglu" and d["weight"] == "down_proj"
    assert d["slack_ns"] == (85 - 107) * US
    assert d["hidden_fraction"] == 0.0
    # One join [a+85, a+109], spent on the CMOs in end order: gate_up's until it ends at a+101,
    # down's (and the sync after it) for the rest.
    assert g["join_start_ns"] == d["join_start_ns"] == a + 85 * US
    assert g["stall_ns"] == 16 * US and d["stall_ns"] == 8 * US
    assert summary(result, "mlp.gate_up").stall_us_total == 16.0
    assert summary(result, "mlp.down").stall_us_total == 8.0


def test_delayed_down_cmo_maps_to_swiglu_through_its_record() -> None:
    tl = Timeline()
    dense_layer(tl, gate_up=200, down=5, o_down=2)
    (d,) = rows(analyze([tl.profile()]), "mlp.down")
    # The down CMO only starts after SwiGlu has ended, yet its record precedes SwiGlu.
    assert d["start_ns"] > d["window_end_ns"]
    assert d["window_kind"] == "swiglu"
    assert d["slack_ns"] == d["window_end_ns"] - d["end_ns"] < 0
    assert d["hidden_fraction"] == 0.0
    # Without records, the rule falls back to the first window ending after the start: row 16.
    fallback = analyze([tl.profile(records=False)])
    (nd,) = [p for p in rows(fallback) if p["start_ns"] == d["start_ns"]]
    assert (nd["site"], nd["weight"]) == ("attn.o", "down_proj")


def test_attn_o_on_o_proj_and_down_proj() -> None:
    tl = Timeline()
    dense_layer(tl, o=3, o_down=4)
    result = analyze([tl.profile()])
    ps = rows(result, "attn.o")
    assert [p["weight"] for p in ps] == ["o_proj", "down_proj"]
    assert [p["slack_ns"] for p in ps] == [2 * US, 1 * US]
    s = summary(result, "attn.o")
    assert (s.count, s.windows, s.verdict) == (2, 2, "hidden")
    assert result.windows_without_prefetch == {"attn.qkv": 1, "mlp.gate_up": 1, "mlp.down": 1}


def test_qkv_without_flashcomm_and_windows_per_layer() -> None:
    tl = Timeline()
    dense_layer(tl, qkv=2, flashcomm=False)
    result = analyze([tl.profile()])
    (p,) = rows(result)
    # norm [0,10], record [10,11], CMO [11,13], quant [11,16]
    assert p["site"] == "attn.qkv"
    assert (p["window_start_ns"], p["window_end_ns"]) == (11 * US, 16 * US)
    # The quant after the post-attention norm (row 13) is not a window of its own.
    assert {s.site: s.windows for s in result.sites} == {
        "attn.qkv": 1,
        "attn.o": 2,
        "mlp.gate_up": 1,
        "mlp.down": 1,
    }


def test_windows_without_prefetch_are_inert() -> None:
    tl = Timeline()
    dense_layer(tl)
    dense_layer(tl)
    result = analyze([tl.profile()])
    assert len(result.prefetches) == 0
    assert result.windows_without_prefetch == {
        "attn.qkv": 2,
        "attn.o": 4,
        "mlp.gate_up": 2,
        "mlp.down": 2,
    }
    assert {s.verdict for s in result.sites} == {"inert"}
    assert all(math.isnan(s.slack_us_median) for s in result.sites)
    assert any("no prefetch stream" in w for w in result.warnings)
    out = result.to_json()
    json.dumps(out, allow_nan=False)
    assert out["sites"][0]["slack_us_median"] is None


def test_moe_gating_window_extends_over_dispatch_and_quant() -> None:
    tl = Timeline()
    moe_layer(tl, moe=20)
    result = analyze([tl.profile()])
    (p,) = rows(result)
    g = p["start_ns"]  # the gating op starts with the CMO, right after the record
    assert (p["site"], p["weight"], p["window_kind"]) == ("moe.gate_up", "w13", "gating")
    # MoeGatingTopK [g, g+6], dispatch [g+6, g+31], DynamicQuant [g+31, g+35], join [g+35, g+36]
    assert (p["window_start_ns"], p["window_end_ns"]) == (g, g + 35 * US)
    assert p["slack_ns"] == 15 * US
    assert p["hidden_fraction"] == 1.0
    assert (p["join_start_ns"], p["stall_ns"]) == (g + 35 * US, 1 * US)
    # DynamicQuant is no window; the post-attention norm and DequantSwigluQuant had no prefetch.
    assert {s.site: (s.windows, s.verdict) for s in result.sites} == {
        "attn.qkv": (1, "inert"),
        "attn.o": (1, "inert"),
        "mlp.gate_up": (1, "inert"),
        "mlp.down": (1, "inert"),
        "moe.gate_up": (1, "hidden"),
    }


def test_unattributed_prefetch() -> None:
    tl = Timeline()
    dense_layer(tl, qkv=3)
    tl.issue(5)  # nothing follows: no window after its record
    tl.op("cube", "MatMulV2", 10)
    result = analyze([tl.profile()])
    assert result.unattributed == 1
    p = rows(result)[1]
    assert (p["site"], p["weight"], p["window_kind"], p["layer"]) == ("", "", "", -1)
    assert (p["window_end_ns"], p["join_start_ns"], p["stall_ns"]) == (-1, -1, 0)
    assert summary(result, "attn.qkv").count == 1
    assert result.to_json()["unattributed"] == 1


def test_prefetch_without_join_is_warned() -> None:
    tl = Timeline()
    tl.op("vector:norm", "AddRmsNorm", 10)
    tl.issue(30, "mlp.down")
    tl.op("vector:swiglu", "SwiGlu", 8)
    (p,) = rows(result := analyze([tl.profile()]))
    assert p["site"] == "mlp.down" and p["join_start_ns"] == -1 and p["stall_ns"] == 0
    assert any("no join" in w for w in result.warnings)


def test_per_site_summary_numbers() -> None:
    tl = Timeline()
    for cmo in (3, 8, 12):  # quant 5 µs: slack 2, -3, -7 µs
        dense_layer(tl, qkv=cmo)
    result = analyze([tl.profile(steps=1)])
    assert result.prefetches["layer"].tolist() == [0, 1, 2]
    s = summary(result, "attn.qkv")
    assert (s.count, s.late, s.windows, s.verdict) == (3, 2, 3, "late")
    assert s.slack_us_median == -3.0
    assert s.slack_us_p90 == pytest.approx(1.0)  # -3 + 0.8 * (2 - -3)
    assert s.slack_us_min == -7.0
    assert s.hidden_fraction_median == pytest.approx(5 / 8)
    # Joins: 1 µs, then (8+1-5+1) and (12+1-5+1) µs.
    assert s.stall_us_total == 1 + 5 + 9
    assert s.stall_us_per_step == 15.0
    site = result.to_json()["sites"][0]
    assert site == {
        "site": "attn.qkv",
        "count": 3,
        "late": 2,
        "windows": 3,
        "windows_without_prefetch": 0,
        "hidden_fraction_median": 0.625,
        "slack_us_median": -3.0,
        "slack_us_p90": 1.0,
        "slack_us_min": -7.0,
        "stall_us_total": 15.0,
        "stall_us_per_step": 15.0,
        "verdict": "late",
    }


def test_steps_and_missing_markers() -> None:
    tl = Timeline()
    for _ in range(2):  # two steps of two layers, a gap between steps
        dense_layer(tl, o=12)
        dense_layer(tl, o=12)
        tl.t += 500
    with_markers = analyze([tl.profile(steps=2)])
    df = with_markers.prefetches
    assert df["step"].tolist() == [0, 0, 1, 1]
    assert df["layer"].tolist() == [0, 1, 0, 1]
    assert with_markers.steps == 2
    s = summary(with_markers, "attn.o")
    assert s.stall_us_total == 4 * 9 and s.stall_us_per_step == 2 * 9
    assert not any("step markers" in w for w in with_markers.warnings)

    without = analyze([tl.profile(steps=None)])
    assert without.steps == 1
    assert without.prefetches["step"].tolist() == [0, 0, 0, 0]
    assert without.prefetches["layer"].tolist() == [0, 1, 2, 3]
    assert summary(without, "attn.o").stall_us_per_step == 4 * 9
    assert any("no step markers" in w and "per profile" in w for w in without.warnings)


def test_uneven_steps_split_at_largest_gap() -> None:
    tl = Timeline()
    dense_layer(tl, o=3)
    tl.t += 1000
    dense_layer(tl, o=3)
    dense_layer(tl, o=3)
    result = analyze([tl.profile(steps=2)])
    assert result.prefetches["step"].tolist() == [0, 1, 1]
    assert result.prefetches["layer"].tolist() == [0, 0, 1]
    assert any("largest gaps" in w for w in result.warnings)


def test_profiles_are_summed() -> None:
    a, b = Timeline(), Timeline(device=1)
    dense_layer(a, o=12)
    dense_layer(b, o=3)
    pa = a.profile(steps=1, unclassified_types={"NEW_TASK": 2}, warnings=["trace truncated"])
    pb = b.profile(steps=1, unclassified_types={"NEW_TASK": 1, "OTHER_SQE": 4}, simulated=True)
    pb.rank = 1
    result = analyze([pa, pb])
    assert result.unclassified_types == {"OTHER_SQE": 4, "NEW_TASK": 3}
    assert result.simulated and result.steps == 1
    assert result.prefetches["rank"].tolist() == [0, 1]
    assert result.prefetches["device"].tolist() == [0, 1]
    s = summary(result, "attn.o")
    assert (s.count, s.late, s.windows) == (2, 1, 4)
    assert s.stall_us_total == 9 + 1 and s.stall_us_per_step == 5.0
    assert "trace truncated" in result.warnings
    out = result.to_json()
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert out["prefetches"] == 2 and out["late"] == 1 and out["simulated"] is True


def test_prefetches_without_compute_stream_are_unattributed() -> None:
    tl = Timeline()
    tl.issue(5)
    tl.issue(5)
    tasks = tl.tasks()
    only_side = tasks[tasks["stream"] == tl.side].reset_index(drop=True)
    result = analyze([Profile(path=Path("p_ascend_pt"), source="db", tasks=only_side, steps=1)])
    assert result.unattributed == 2 and result.sites == []
    assert result.prefetches["rank"].tolist() == [-1, -1]
    assert any("no compute stream" in w for w in result.warnings)


def test_no_profiles() -> None:
    result = analyze([])
    assert result.steps == 1 and result.sites == [] and len(result.prefetches) == 0
    assert list(result.prefetches.columns) == list(PREFETCH_COLUMNS)
    assert result.to_json()["prefetches"] == 0


def test_many_layers_stay_exact() -> None:
    tl = Timeline()
    for layer in range(64 * 8):
        dense_layer(tl, qkv=3, o=6, gate_up=30, down=5, o_down=2 + layer % 5)
    result = analyze([tl.profile(steps=8)])
    df = result.prefetches
    assert len(df) == 64 * 8 * 5 and result.unattributed == 0
    assert df["site"].tolist() == tl.planned
    assert df["layer"].max() == 63 and df["step"].max() == 7
    assert df[df["step"] == 3]["layer"].tolist()[:5] == [0, 0, 0, 0, 0]


_CMO = st.one_of(st.none(), st.integers(min_value=1, max_value=120))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_CMO, _CMO, _CMO, _CMO, _CMO, st.booleans()), min_size=1, max_size=4))
def test_every_prefetch_finds_its_site(
    layers: list[tuple[int | None, int | None, int | None, int | None, int | None, bool]],
) -> None:
    tl = Timeline()
    for qkv, o, gate_up, down, o_down, fc in layers:
        dense_layer(tl, qkv=qkv, o=o, gate_up=gate_up if fc else None, down=down, o_down=o_down)
        if not fc:  # the next layer starts after a pause, as a different step would
            tl.t += 7
    result = analyze([tl.profile()])
    df = result.prefetches
    assert df["site"].tolist() == tl.planned
    assert (df["slack_ns"] == df["window_end_ns"] - df["end_ns"]).all()
    assert ((df["hidden_fraction"] >= 0) & (df["hidden_fraction"] <= 1)).all()
    assert (df["late"] == (df["slack_ns"] < 0)).all()
    # Every join's duration is charged exactly once.
    joins = df[df["join_start_ns"] >= 0].drop_duplicates("join_start_ns")
    assert df["stall_ns"].sum() == (joins["join_end_ns"] - joins["join_start_ns"]).sum()
    assert result.unattributed == 0


# ---------------------------------------------------------------------------------------------
# Joins where they really are


def _stalls_add_up(result: OverlapResult) -> None:
    charged = sum(s.stall_us_total for s in result.sites)
    assert charged + result.unattributed_stall_us == pytest.approx(result.join_us_total)


def test_gate_up_joined_after_its_norm_is_late_with_its_stall() -> None:
    tl = Timeline()
    dense_layer(tl, gate_up=30, gate_up_join="norm")
    result = analyze([tl.profile()])
    (g,) = rows(result, "mlp.gate_up")
    a = g["start_ns"] - REC * US  # the record before the post-attention norm [a+1, a+11]
    # The window is the norm alone: the join right after it ends it, not the next cube op.
    assert (g["window_start_ns"], g["window_end_ns"]) == (a + 1 * US, a + 11 * US)
    assert g["window_kind"] == "norm" and g["weight"] == "gate_up_proj"
    assert g["slack_ns"] == (11 - 31) * US and bool(g["late"])
    # The join [a+11, a+33] waits for the prefetch stream's record [a+31, a+32] (+1 µs).
    assert (g["join_start_ns"], g["join_end_ns"]) == (a + 11 * US, a + 33 * US)
    assert g["stall_ns"] == 22 * US
    s = summary(result, "mlp.gate_up")
    assert (s.verdict, s.late, s.stall_us_total) == ("late", 1, 22.0)
    assert result.unattributed_stall_us == 0.0 and result.join_us_total == 22.0
    _stalls_add_up(result)


def test_gate_up_joined_after_swiglu_is_hidden_behind_norm_comm_and_quant() -> None:
    tl = Timeline()
    dense_layer(tl, gate_up=30)
    (g,) = rows(result := analyze([tl.profile()]), "mlp.gate_up")
    a = g["start_ns"] - REC * US
    # norm 10 + AllGather 20 + quant 5: the window runs up to the gate_up matmul.
    assert (g["window_start_ns"], g["window_end_ns"]) == (a + 1 * US, a + 36 * US)
    assert g["slack_ns"] == (36 - 31) * US and not g["late"]
    assert summary(result, "mlp.gate_up").verdict == "hidden"
    _stalls_add_up(result)


def test_comm_wait_inside_a_window_is_not_a_join() -> None:
    # The AllGather's compute-stream wait for the HCCL stream (4) neither ends the gate_up window
    # nor counts as join time: the HCCL record, not the prefetch stream's, released it.
    tl = Timeline()
    tl.op("cube", "FusedInferAttentionScore", 30)
    tl.op("vector:quant", "AscendQuantV2", 5)
    tl.op("cube", "QuantBatchMatmulV3", 40)
    tl.issue(30, "mlp.gate_up")
    tl.op("vector:norm", "AddRmsNorm", 10)
    tl.op("comm", "AllGather", 5)
    tl.comm_wait(4, 20)
    tl.op("vector:quant", "AscendQuantV2", 5)
    tl.op("cube", "QuantBatchMatmulV3", 40)
    tl.op("vector:swiglu", "SwiGlu", 8)
    tl.join()
    result = analyze([tl.profile()])
    (g,) = rows(result, "mlp.gate_up")
    a = g["start_ns"] - REC * US
    assert (g["window_start_ns"], g["window_end_ns"]) == (a + 1 * US, a + 41 * US)
    assert g["join_start_ns"] == a + 89 * US and g["stall_ns"] == WAIT * US
    assert result.join_us_total == WAIT and result.unattributed_stall_us == 0.0


def test_join_of_no_prefetch_is_unattributed_stall() -> None:
    tl = Timeline()
    dense_layer(tl, qkv=3, o=12)
    tl.issue(20)  # no window follows its record
    tl.op("other", "Cast", 2)
    tl.join()
    tl.op("cube", "MatMulV2", 10)
    result = analyze([tl.profile(steps=2)])
    assert result.unattributed == 1
    # Cast [t, t+2]; the join waits until the record at t+20..t+21, +1 µs: 20 µs of stall.
    assert result.unattributed_stall_us == 20.0
    assert result.unattributed_stall_us_per_step == 10.0
    assert result.to_json()["unattributed_stall_us"] == 20.0
    _stalls_add_up(result)
    assert result.join_us_total == pytest.approx(1.0 + 9.0 + 20.0)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 60),
            st.integers(1, 60),
            st.integers(1, 60),
            st.integers(1, 60),
            st.sampled_from(["norm", "swiglu"]),
        ),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=40, deadline=None)
def test_per_site_stalls_add_up_to_the_join_time(
    layers: list[tuple[int, int, int, int, str]],
) -> None:
    tl = Timeline()
    for qkv, o, gate_up, down, join in layers:
        dense_layer(tl, qkv=qkv, o=o, gate_up=gate_up, down=down, gate_up_join=join)
    result = analyze([tl.profile()])
    assert result.unattributed == 0 and result.unattributed_stall_us == 0.0
    _stalls_add_up(result)
    waits = tl.tasks()
    on_compute = waits[(waits["role"] == "wait") & (waits["stream"] == tl.compute)]
    total = int((on_compute["end_ns"] - on_compute["start_ns"]).sum())
    assert result.join_us_total == pytest.approx(total / 1000)
    late_norm = [g for g in rows(result, "mlp.gate_up") if g["window_end_ns"] < g["end_ns"]]
    assert all(g["late"] for g in late_norm)
