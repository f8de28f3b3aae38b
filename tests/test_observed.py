"""The default trial's profile has the last word over 0.23's static rules, in both directions."""

from __future__ import annotations

from dataclasses import replace

from autotune import target
from autotune.search.measure import NO_CMO_REASON, SiteTiming
from autotune.search.observed import (
    ATTR_ADDED,
    observed_setup,
    profile_space,
    space_setup,
)
from autotune.search.space import static_space
from autotune.target import Setup

# Qwen3-32B-W8A8 at TP4 in the vendor recipe's graph mode: the rules trace the MLP out.
RECIPE = Setup(
    "Qwen3-32B-W8A8",
    tp=4,
    ep=1,
    max_num_seqs=72,
    flashcomm1=True,
    graph_mode=True,
    max_num_batched_tokens=40960,
    compile_mode="VLLM_COMPILE",
    cudagraph_mode="FULL_DECODE_ONLY",
)


def _timing(site: str, prefetches: int = 64) -> SiteTiming:
    return SiteTiming(site, prefetches, window_ns=20_000.0, bandwidth=0.1, fill_bytes=2_000_000)


def test_a_site_the_rules_call_inert_is_added_when_the_profile_shows_its_cmos() -> None:
    static = static_space(RECIPE)
    assert static.names == ("attn.qkv", "attn.o") and "mlp.down" in static.inert
    timings = {s: _timing(s) for s in ("attn.qkv", "attn.o", "mlp.down")}
    got = profile_space(static, timings, RECIPE)
    assert got.space.names == ("attn.qkv", "attn.o", "mlp.down")
    assert got.removed == {}
    note = got.added["mlp.down"]
    assert "shows 64 CMO prefetches at mlp.down" in note
    assert "0.23's rules call it inert here (In graph mode (FULL_DECODE_ONLY" in note
    assert f"summary.json → {ATTR_ADDED}" in note
    assert "mlp.down" not in got.space.inert and "mlp.gate_up" in got.space.inert
    # Its ladder is the weight's effective range: near-off to the 18 MiB mlp cap.
    assert got.space.site("mlp.down").levels[0] == 0
    assert got.space.site("mlp.down").high == target.MLP_CAP_BYTES


def test_a_site_the_rules_call_active_is_removed_when_it_issued_nothing() -> None:
    static = static_space(RECIPE)
    got = profile_space(static, {"attn.o": _timing("attn.o")}, RECIPE)
    assert got.space.names == ("attn.o",)
    assert (
        got.removed
        == {"attn.qkv": NO_CMO_REASON}
        == {k: v for k, v in got.space.inert.items() if k == "attn.qkv"}
    )
    assert got.added == {}


def test_a_site_without_a_weight_is_never_added() -> None:
    static = static_space(RECIPE)
    got = profile_space(static, {"moe.gate_up": _timing("moe.gate_up")}, RECIPE)
    assert "moe.gate_up" not in got.space.names and got.added == {}


def test_an_added_site_counts_in_the_targets_arithmetic() -> None:
    config = target.vendor_default_config()
    assert target.effective_bytes(config, RECIPE)["mlp.down"] == 0
    seen = observed_setup(RECIPE, {"mlp.down", "attn.qkv"})
    assert seen.observed == ("mlp.down",)  # attn.qkv fires by the rules already
    assert target.effective_bytes(config, seen)["mlp.down"] == target.MLP_CAP_BYTES
    assert observed_setup(RECIPE, {"attn.qkv"}) is RECIPE
    # The space a run keeps (in the study) gives the setup back, on resume and on other workers.
    space = profile_space(static_space(RECIPE), {"mlp.down": _timing("mlp.down")}, RECIPE).space
    assert space_setup(RECIPE, space).observed == ("mlp.down",)
    assert space_setup(RECIPE, static_space(RECIPE)) is RECIPE


def test_piecewise_graphs_lose_every_site_by_the_rules_and_the_profile_brings_them_back() -> None:
    piecewise = replace(RECIPE, cudagraph_mode="FULL_AND_PIECEWISE")
    static = static_space(piecewise)
    assert static.names == ()
    got = profile_space(static, {"attn.qkv": _timing("attn.qkv")}, piecewise)
    assert got.space.names == ("attn.qkv",)
    assert "dead code" in got.added["attn.qkv"]
