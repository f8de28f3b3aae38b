"""`--layout auto` decides from what the timeline holds and says why; each layout's knob."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.layouts import knob
from autotune.overlap import analyze
from autotune.profile import load_profiles

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


@pytest.mark.parametrize(
    ("sample", "layout", "why"),
    [
        ("dense_current_ascend_pt", "vllm-ascend", "issued alone right before a vllm-ascend"),
        ("sglang_qwen3_ascend_pt", "sglang", "pairs issued after a collective"),
        ("mindie_o_proj_ascend_pt", "generic", "fit no known stack's layout"),
        ("two_streams_ascend_pt", "generic", "fit no known stack's layout"),
        ("real_910b_level1/db/rank0_ascend_pt", "vllm-ascend", "no prefetch in the timeline"),
    ],
)
def test_auto_says_which_layout_and_why(sample: str, layout: str, why: str) -> None:
    result = analyze(load_profiles(PROFILES / sample), layout="auto")
    assert result.layout == layout
    assert result.layout_reason.startswith("auto: ") and why in result.layout_reason


def test_knobs() -> None:
    assert knob("vllm-ascend", "attn.o", "down_proj").kind == "ratio"
    assert "attn.o" in knob("vllm-ascend", "attn.o", "down_proj").name
    assert knob("sglang", "", "gate_up_proj").kind == "fixed"
    assert knob("generic", "", "").name.startswith("max_size")
    # A point with no vllm-ascend label falls back to the direct npu_prefetch call's max_size.
    assert knob("vllm-ascend", "", "").kind == "bytes"


def test_an_unknown_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="layout 'mindie'"):
        analyze([], layout="mindie")
