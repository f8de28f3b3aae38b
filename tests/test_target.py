"""vllm-ascend 0.23 prefetch semantics quirk by quirk; config compile/validate; versions."""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune import target
from autotune.errors import AutotuneError
from autotune.models import BF16, DYNAMIC_W8A8, MIX_W8A8, PRESETS
from autotune.target import (
    MLP_CAP_BYTES,
    NEAR_OFF_RATIO,
    SITES,
    VENDOR_DEFAULT_RATIOS,
    ResolvedPrefetch,
    Setup,
    active_sites,
    check_vllm_ascend_version,
    compile_config,
    disabled_config,
    effective_bytes,
    effective_range,
    feature_supported,
    inert_sites,
    near_off_ratio,
    ratio_for_bytes,
    resolve_prefetches,
    site_weight_bytes,
    snap_bytes,
    validate_config,
    vendor_default_config,
)

MiB = 1024 * 1024
DATA = Path(__file__).parent / "data"
QKV, O_PROJ, GATE_UP, DOWN = 13_107_200, 10_485_760, 65_536_000, 32_768_000  # Qwen3-32B TP4
DENSE = Setup("Qwen3-32B-W8A8", tp=4, ep=1, max_num_seqs=72, flashcomm1=True, graph_mode=False)
MOE = Setup(
    "Qwen3-235B-A22B-W8A8", tp=4, ep=16, max_num_seqs=144, flashcomm1=False, graph_mode=True
)


def cfg(ratio: dict[str, Any] | None = None, **wpc: Any) -> dict[str, Any]:
    inner: dict[str, Any] = {"enabled": True, **wpc}
    if ratio is not None:
        inner["prefetch_ratio"] = ratio
    return {"weight_prefetch_config": inner}


def full(
    qkv: float = 1.0, o: float = 1.0, gate_up: float = 1.0, down: float = 1.0, moe: float = 0.8
) -> dict[str, Any]:
    return {
        "attn": {"qkv": qkv, "o": o},
        "moe": {"gate_up": moe},
        "mlp": {"gate_up": gate_up, "down": down},
    }


# ----------------------------------------------------------------------------- site bytes


def test_site_weight_bytes_dense_and_moe() -> None:
    assert site_weight_bytes(DENSE) == {
        "attn.qkv": QKV,
        "attn.o": O_PROJ,
        "mlp.gate_up": GATE_UP,
        "mlp.down": DOWN,
        "moe.gate_up": 0,
    }
    assert site_weight_bytes(MOE) == {
        "attn.qkv": 9 * MiB,
        "attn.o": 8 * MiB,
        "mlp.gate_up": 0,
        "mlp.down": 0,
        "moe.gate_up": 96 * MiB,
    }


def test_setup_accepts_a_spec() -> None:
    spec_setup = replace(DENSE, model=PRESETS["Qwen3-32B-W8A8"])
    assert site_weight_bytes(spec_setup) == site_weight_bytes(DENSE)


def test_vendor_defaults_on_dense_tp4() -> None:
    assert effective_bytes(vendor_default_config(), DENSE) == {
        "attn.qkv": QKV,
        "attn.o": O_PROJ,
        "mlp.gate_up": MLP_CAP_BYTES,
        "mlp.down": MLP_CAP_BYTES,
        "moe.gate_up": 0,
    }


# ----------------------------------------------------------------------------- ratio quirks


def test_disabled_config_prefetches_nothing() -> None:
    assert effective_bytes(disabled_config(), DENSE) == dict.fromkeys(SITES, 0)
    assert resolve_prefetches(disabled_config(), DENSE, 1) == []


def test_missing_enabled_means_off() -> None:
    assert effective_bytes({"weight_prefetch_config": {"prefetch_ratio": full()}}, DENSE) == (
        dict.fromkeys(SITES, 0)
    )
    assert effective_bytes({}, DENSE) == dict.fromkeys(SITES, 0)


def test_misspelled_enable_is_ignored() -> None:
    config = {"weight_prefetch_config": {"enable": True, "prefetch_ratio": full()}}
    assert effective_bytes(config, DENSE) == dict.fromkeys(SITES, 0)


def test_ratio_zero_is_the_whole_weight() -> None:
    got = effective_bytes(cfg(full(qkv=0.0, o=0.5)), DENSE)
    assert got["attn.qkv"] == QKV
    assert got["attn.o"] == O_PROJ // 2


def test_ratio_zero_on_mlp_is_the_whole_weight_uncapped() -> None:
    # The 18 MiB clip compares the product, which is 0; the prefetch op then takes the whole tensor.
    got = effective_bytes(cfg(full(gate_up=0.0, down=0.1)), DENSE)
    assert got["mlp.gate_up"] == GATE_UP
    assert got["mlp.down"] == int(DOWN * 0.1)


def test_missing_key_is_the_whole_weight() -> None:
    got = effective_bytes(cfg({"attn": {"qkv": 0.5}}), DENSE)
    assert got["attn.qkv"] == QKV // 2
    assert got["attn.o"] == O_PROJ


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.5", None, float("nan")])
def test_out_of_range_or_non_number_reads_as_whole(bad: Any) -> None:
    got = effective_bytes(cfg(full(qkv=0.5) | {"attn": {"qkv": bad, "o": 0.5}}), DENSE)
    assert got["attn.qkv"] == QKV
    assert got["attn.o"] == O_PROJ // 2


@pytest.mark.parametrize("module_value", [None, {}])
def test_missing_or_empty_module_falls_back_to_defaults(module_value: Any) -> None:
    ratio: dict[str, Any] = {"mlp": {"gate_up": 0.1, "down": 0.1}}
    if module_value is not None:
        ratio["attn"] = module_value
    got = effective_bytes(cfg(ratio), DENSE)
    assert got["attn.qkv"] == QKV  # attn defaults qkv=1.0, o=1.0
    assert got["attn.o"] == O_PROJ
    assert got["mlp.gate_up"] == int(GATE_UP * 0.1)


def test_missing_prefetch_ratio_is_all_defaults() -> None:
    assert effective_bytes(cfg(), DENSE) == effective_bytes(vendor_default_config(), DENSE)


def test_all_zero_module_is_off() -> None:
    got = effective_bytes(cfg(full(qkv=0.0, o=0.0, gate_up=0.0, down=0.0)), DENSE)
    assert got == dict.fromkeys(SITES, 0)
    # Out-of-range values are dropped first, so a module of only bad values is off too.
    got = effective_bytes(cfg(full() | {"attn": {"qkv": 2.0, "o": 0.0}}), DENSE)
    assert got["attn.qkv"] == 0 and got["attn.o"] == 0


def test_cap_only_on_mlp() -> None:
    spec_tp1 = replace(DENSE, tp=1)
    got = effective_bytes(cfg(full()), spec_tp1)
    assert got["attn.qkv"] == 50 * MiB  # uncapped
    assert got["attn.o"] == 40 * MiB
    assert got["mlp.gate_up"] == MLP_CAP_BYTES
    assert got["mlp.down"] == MLP_CAP_BYTES


def test_cap_plateau_starts_at_binding_ratio() -> None:
    assert effective_bytes(cfg(full(gate_up=0.288, down=0.576)), DENSE)["mlp.gate_up"] == (
        MLP_CAP_BYTES
    )
    assert effective_bytes(cfg(full(down=0.576)), DENSE)["mlp.down"] == MLP_CAP_BYTES
    assert effective_bytes(cfg(full(down=0.5)), DENSE)["mlp.down"] == DOWN // 2


def test_cap_does_not_bind_when_weight_is_smaller() -> None:
    tp8 = replace(DENSE, tp=8)
    assert effective_bytes(cfg(full()), tp8)["mlp.down"] == DOWN // 2  # 15.6 MiB < 18 MiB


# ----------------------------------------------------------------------------- gates


def test_mlp_token_gate() -> None:
    sites = {p.site for p in resolve_prefetches(cfg(full()), DENSE, 499)}
    assert {"mlp.gate_up", "mlp.down"} <= sites
    sites = {p.site for p in resolve_prefetches(cfg(full()), DENSE, 500)}
    assert not sites & {"mlp.gate_up", "mlp.down"}
    # attn has no token gate
    assert "attn.qkv" in sites


def test_mlp_off_at_decode_when_max_num_seqs_reaches_500() -> None:
    big = replace(DENSE, max_num_seqs=512)
    got = effective_bytes(cfg(full()), big)
    assert got["mlp.gate_up"] == 0 and got["mlp.down"] == 0
    assert "mlp.down" in inert_sites(big)


def test_graph_mode_traces_mlp_out() -> None:
    graph = replace(DENSE, graph_mode=True)
    got = effective_bytes(cfg(full()), graph)
    assert got["mlp.gate_up"] == 0 and got["mlp.down"] == 0
    assert got["attn.qkv"] == QKV
    assert "graph mode" in inert_sites(graph)["mlp.down"]
    # A trace with fewer than 500 tokens keeps the branch.
    small = replace(graph, max_num_batched_tokens=256)
    assert effective_bytes(cfg(full()), small)["mlp.down"] == MLP_CAP_BYTES
    assert "mlp.down" not in inert_sites(small)


def _mode(compile_mode: str, cudagraph_mode: str, **kw: Any) -> Setup:
    return replace(
        DENSE, graph_mode=True, compile_mode=compile_mode, cudagraph_mode=cudagraph_mode, **kw
    )


@pytest.mark.parametrize("cudagraph_mode", ["FULL_AND_PIECEWISE", "PIECEWISE"])
def test_piecewise_compiled_graphs_drop_every_prefetch(cudagraph_mode: str) -> None:
    # vllm-ascend's fusion-pass compiler runs AOT autograd, whose dead-code elimination drops
    # the prefetch ops: they return nothing and are not marked side-effectful.
    setup = _mode("VLLM_COMPILE", cudagraph_mode)
    assert setup.prefetch_compiled_out
    assert resolve_prefetches(cfg(full()), setup, 72) == []
    assert set(inert_sites(setup)) == set(SITES)
    assert "dead code" in inert_sites(setup)["attn.qkv"]
    # A dense model still says why moe.gate_up is inert in the first place.
    assert inert_sites(setup)["moe.gate_up"] == "A dense model has no experts to prefetch."


def test_full_graphs_without_npugraph_ex_drop_every_prefetch_too() -> None:
    setup = _mode("VLLM_COMPILE", "FULL_DECODE_ONLY", npugraph_ex=False)
    assert resolve_prefetches(cfg(full()), setup, 72) == []


def test_the_vendor_recipe_keeps_attention_and_traces_the_mlp_out() -> None:
    recipe = _mode("VLLM_COMPILE", "FULL_DECODE_ONLY", max_num_batched_tokens=40960)
    assert recipe.graph.text() == "graph FULL_DECODE_ONLY (VLLM_COMPILE, npugraph_ex)"
    assert active_sites(recipe) == ("attn.qkv", "attn.o")
    # fuse_norm_quant decides nothing here: vllm-ascend's passes do not run under npugraph_ex.
    assert active_sites(replace(recipe, fuse_norm_quant=False)) == ("attn.qkv", "attn.o")


def test_graphs_captured_without_compilation_gate_the_mlp_like_eager() -> None:
    # Compilation mode NONE: the Python branches run at each capture size (< 500 tokens).
    captured = _mode("NONE", "FULL_DECODE_ONLY")
    assert captured.graph.text() == (
        "graph FULL_DECODE_ONLY (captured eagerly, compilation mode NONE)"
    )
    assert active_sites(captured) == active_sites(DENSE)
    assert effective_bytes(cfg(full()), captured) == effective_bytes(cfg(full()), DENSE)


def test_graph_fields_settle_as_0_23_does() -> None:
    assert replace(DENSE, graph_mode=True).graph.cudagraph_mode == "FULL_DECODE_ONLY"
    # Piecewise graphs without VLLM_COMPILE are no graphs at all (vLLM config/vllm.py).
    eager = replace(DENSE, graph_mode=True, compile_mode="NONE", cudagraph_mode="PIECEWISE")
    assert eager.graph_mode is False and eager.graph.text() == "eager"
    with pytest.raises(AutotuneError, match="unknown cudagraph mode 'FULLISH'"):
        replace(DENSE, graph_mode=True, cudagraph_mode="FULLISH")


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"enforce_eager": True}, ("NONE", "NONE")),
        ({"optimization_level": 0}, ("NONE", "NONE")),
        ({"optimization_level": 1}, ("VLLM_COMPILE", "PIECEWISE")),
        ({}, ("VLLM_COMPILE", "FULL_AND_PIECEWISE")),
        (
            {"compilation": {"cudagraph_mode": "full_decode_only"}},
            ("VLLM_COMPILE", "FULL_DECODE_ONLY"),
        ),
        ({"compilation": {"mode": 0, "cudagraph_mode": "FULL"}}, ("NONE", "FULL")),
        ({"compilation": {"mode": "VLLM_COMPILE"}, "optimization_level": 0}, ("NONE", "NONE")),
        ({"compilation": {"mode": 2, "cudagraph_mode": "FULL"}}, ("NONE", "NONE")),
        ({"torch_compile_disabled": True}, ("NONE", "NONE")),
    ],
)
def test_resolve_graph_mode(kw: dict[str, Any], expected: tuple[str, str]) -> None:
    args: dict[str, Any] = {
        "enforce_eager": False,
        "optimization_level": None,
        "compilation": {},
        "ascend_compilation": {},
        **kw,
    }
    mode = target.resolve_graph_mode(**args)
    assert (mode.compile_mode, mode.cudagraph_mode) == expected


def test_a_site_seen_firing_fires_whatever_the_rules_say() -> None:
    piecewise = _mode("VLLM_COMPILE", "FULL_AND_PIECEWISE")
    seen = replace(piecewise, observed=("attn.qkv", "mlp.down"))
    assert [(p.site, p.weight) for p in resolve_prefetches(cfg(full()), seen, 72)] == [
        ("attn.qkv", "qkv_proj"),
        ("mlp.down", "down_proj"),
    ]
    assert set(inert_sites(seen)) == set(SITES) - {"attn.qkv", "mlp.down"}
    assert effective_bytes(cfg(full()), seen)["mlp.down"] == MLP_CAP_BYTES
    # ...still only when its module is on.
    assert resolve_prefetches(disabled_config(), seen, 72) == []


def test_gate_up_needs_flashcomm1() -> None:
    plain = replace(DENSE, flashcomm1=False)
    got = effective_bytes(cfg(full()), plain)
    assert got["mlp.gate_up"] == 0
    assert got["mlp.down"] == MLP_CAP_BYTES
    assert "flashcomm1" in inert_sites(plain)["mlp.gate_up"]
    assert "mlp.down" not in inert_sites(plain)


def test_ratio_truncating_below_one_byte_is_the_whole_weight_uncapped() -> None:
    # int(bytes * ratio) == 0 reads as "no size" and 0.23's prefetch op moves the whole tensor,
    # past the 18 MiB mlp cap (which clipped the product before, not after).
    tiny = 1e-9
    assert int(DOWN * tiny) == 0
    got = effective_bytes(cfg(full(gate_up=tiny, down=tiny)), DENSE)
    assert got["mlp.gate_up"] == GATE_UP > MLP_CAP_BYTES
    assert got["mlp.down"] == DOWN > MLP_CAP_BYTES
    assert target.cmo_bytes(DOWN, tiny, MLP_CAP_BYTES) == DOWN


@pytest.mark.parametrize(
    ("extra", "row_op"),
    [
        ({}, ""),
        ({"enable_matmul_allreduce": True}, "matmul_allreduce"),
        ({"enable_flashcomm2_parallel_size": 2}, "flashcomm2"),
        ({"finegrained_tp_config": {"oproj_tensor_parallel_size": 2}}, "oproj_tp"),
        # 0.23's precedence: o-proj TP before matmul_allreduce before flashcomm2.
        (
            {
                "enable_flashcomm2_parallel_size": 2,
                "enable_matmul_allreduce": True,
                "finegrained_tp_config": {"oproj_tensor_parallel_size": 2},
            },
            "oproj_tp",
        ),
        ({"enable_flashcomm2_parallel_size": 0, "enable_matmul_allreduce": False}, ""),
    ],
)
def test_row_op_of_extra_keys(extra: dict[str, Any], row_op: str) -> None:
    assert target.row_op_of(extra) == row_op


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"enable_matmul_allreduce": "yes"}, "enable_matmul_allreduce must be true or false"),
        ({"enable_flashcomm2_parallel_size": -1}, "enable_flashcomm2_parallel_size"),
        ({"finegrained_tp_config": 2}, "finegrained_tp_config must be a JSON object"),
    ],
)
def test_row_op_of_rejects_bad_values(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(AutotuneError, match=fragment):
        target.row_op_of(extra)


@pytest.mark.parametrize("row_op", ["matmul_allreduce", "flashcomm2", "oproj_tp"])
def test_any_custom_row_op_on_o_proj_arms_gate_up(row_op: str) -> None:
    setup = replace(DENSE, flashcomm1=False, row_op=row_op)
    got = effective_bytes(cfg(full(gate_up=0.1)), setup)
    assert got["mlp.gate_up"] == int(GATE_UP * 0.1)
    assert "mlp.gate_up" not in inert_sites(setup)


def test_matmul_allreduce_skips_the_attn_o_hook() -> None:
    setup = replace(DENSE, row_op="matmul_allreduce")
    prefetches = resolve_prefetches(cfg(full(o=0.5)), setup, 72)
    assert [p.site for p in prefetches if p.site.startswith("attn.")] == ["attn.qkv"]
    assert "enable_matmul_allreduce" in inert_sites(setup)["attn.o"]
    assert "attn.o" not in active_sites(setup)
    # The other row ops keep the quant method, so the hook still fires on o_proj and down_proj.
    fc2 = resolve_prefetches(cfg(full(o=0.5)), replace(DENSE, row_op="flashcomm2"), 72)
    assert [p.weight for p in fc2 if p.site == "attn.o"] == ["o_proj", "down_proj"]


def test_no_row_op_reason_names_every_way_to_arm_gate_up() -> None:
    reason = inert_sites(replace(DENSE, flashcomm1=False))["mlp.gate_up"]
    for key in ("enable_flashcomm1", "enable_matmul_allreduce", "flashcomm2", "o-proj TP"):
        assert key in reason


def test_check_setup_refuses_flashcomm1_without_tp() -> None:
    with pytest.raises(AutotuneError, match=r"needs tensor parallelism.*--tp 2.*--no-flashcomm1"):
        target.check_setup(replace(DENSE, tp=1))
    target.check_setup(replace(DENSE, tp=1, flashcomm1=False))
    target.check_setup(DENSE)


def test_check_setup_refuses_flashcomm1_on_moe_without_ep() -> None:
    moe = Setup(
        "Qwen3-30B-A3B-W8A8", tp=4, ep=1, max_num_seqs=64, flashcomm1=True, graph_mode=False
    )
    with pytest.raises(AutotuneError, match=r"MoE model Qwen3-30B-A3B-W8A8 needs expert parallel"):
        target.check_setup(moe)
    target.check_setup(replace(moe, ep=8))
    target.check_setup(replace(moe, flashcomm1=False))


def test_w8a8_dynamic_and_mix_have_no_attention_hooks() -> None:
    for scheme in (DYNAMIC_W8A8, MIX_W8A8, BF16):
        spec = replace(PRESETS["Qwen3-32B-W8A8"], attn_quant=scheme, mlp_quant=scheme)
        setup = replace(DENSE, model=spec)
        assert {p.site for p in resolve_prefetches(cfg(full()), setup, 72)} == {
            "mlp.gate_up",
            "mlp.down",
        }
        inert = inert_sites(setup)
        assert {"attn.qkv", "attn.o"} <= set(inert)
        assert scheme in inert["attn.qkv"] or "unquantized" in inert["attn.qkv"]
    mix = inert_sites(replace(DENSE, model=replace(PRESETS["Qwen3-32B-W8A8"], attn_quant=MIX_W8A8)))
    assert "decode (KV-consumer) nodes" in mix["attn.qkv"]


def test_unquantized_checkpoint_moves_cap_points(tmp_path: Path) -> None:
    # A directory without quant_model_description.json is BF16: gate_up_proj is 125 MiB per
    # TP4 rank, so the 18 MiB cap binds from ratio 0.144 (not 0.288 as for int8).
    model = tmp_path / "qwen3-32b"
    model.mkdir()
    (model / "config.json").write_text((DATA / "qwen3-32b-w8a8" / "config.json").read_text())
    setup = replace(DENSE, model=str(model))
    assert site_weight_bytes(setup)["mlp.gate_up"] == 2 * GATE_UP
    assert effective_bytes(cfg(full(gate_up=0.15)), setup)["mlp.gate_up"] == MLP_CAP_BYTES
    assert effective_bytes(cfg(full(gate_up=0.14)), setup)["mlp.gate_up"] == int(2 * GATE_UP * 0.14)
    assert set(inert_sites(setup)) == {"attn.qkv", "attn.o", "moe.gate_up"}


def test_expert_key_gates_the_dense_mlp(tmp_path: Path) -> None:
    model = tmp_path / "dense-with-expert-key"
    model.mkdir()
    config = json.loads((DATA / "qwen3-32b-w8a8" / "config.json").read_text())
    config["num_experts_per_tok"] = None
    (model / "config.json").write_text(json.dumps(config))
    setup = replace(DENSE, model=str(model), flashcomm1=False)
    assert {p.site for p in resolve_prefetches(cfg(full()), setup, 72)} == set()
    inert = inert_sites(setup)
    assert "experts" in inert["mlp.gate_up"] and "experts" in inert["mlp.down"]
    with pytest.raises(AutotuneError, match="expert parallelism"):
        target.check_setup(replace(setup, flashcomm1=True))


def test_moe_gate_up_never_fires() -> None:
    for tokens in (1, 96, 144, 4096):
        assert all(p.site != "moe.gate_up" for p in resolve_prefetches(cfg(full()), MOE, tokens))
    assert effective_bytes(cfg(full()), MOE)["moe.gate_up"] == 0
    assert "never" in inert_sites(MOE)["moe.gate_up"]


def test_moe_what_if_needs_96_tokens_and_is_uncapped() -> None:
    def moe_bytes(tokens: int) -> list[int]:
        return [
            p.bytes
            for p in resolve_prefetches(cfg(full()), MOE, tokens, moe_fixed=True)
            if p.site == "moe.gate_up"
        ]

    assert moe_bytes(95) == []
    assert moe_bytes(96) == [int(96 * MiB * 0.8)]


def test_mlp_never_on_moe() -> None:
    eager = replace(MOE, graph_mode=False, flashcomm1=True, max_num_seqs=64)
    sites = {p.site for p in resolve_prefetches(cfg(full()), eager, 64)}
    assert sites == {"attn.qkv", "attn.o"}
    inert = inert_sites(eager)
    assert "MoE" in inert["mlp.gate_up"] and "MoE" in inert["mlp.down"]


def test_attn_o_also_fires_on_down_proj_uncapped() -> None:
    prefetches = resolve_prefetches(cfg(full(o=0.75, down=0.75)), DENSE, 72)
    assert [(p.site, p.weight) for p in prefetches] == [
        ("attn.qkv", "qkv_proj"),
        ("attn.o", "o_proj"),
        ("mlp.gate_up", "gate_up_proj"),
        ("mlp.down", "down_proj"),
        ("attn.o", "down_proj"),
    ]
    assert prefetches[-1] == ResolvedPrefetch("attn.o", "down_proj", int(DOWN * 0.75), DOWN)
    assert prefetches[3].bytes == MLP_CAP_BYTES  # mlp.down: 0.75 x 31.25 MiB, clipped
    # effective_bytes reports attn.o for o_proj only.
    assert effective_bytes(cfg(full(o=0.75)), DENSE)["attn.o"] == int(O_PROJ * 0.75)


def test_attn_o_on_down_proj_survives_the_mlp_gates() -> None:
    graph = replace(DENSE, graph_mode=True)
    prefetches = resolve_prefetches(cfg(full()), graph, 72)
    assert ("attn.o", "down_proj") in [(p.site, p.weight) for p in prefetches]
    # ...and disappears with the attn module.
    off = resolve_prefetches(cfg(full(qkv=0.0, o=0.0)), graph, 72)
    assert off == []


def test_attn_needs_static_w8a8() -> None:
    spec = replace(PRESETS["Qwen3-235B-A22B-W8A8"], attn_quant=DYNAMIC_W8A8)
    dyn = replace(MOE, model=spec)
    assert effective_bytes(cfg(full()), dyn) == dict.fromkeys(SITES, 0)
    assert set(inert_sites(dyn)) == set(SITES)
    assert active_sites(dyn) == ()


def test_bf16_dense_keeps_mlp_hooks_only() -> None:
    spec = replace(PRESETS["Qwen3-32B-W8A8"], attn_quant=BF16, mlp_quant=BF16)
    bf16 = replace(DENSE, model=spec)
    prefetches = resolve_prefetches(cfg(full()), bf16, 72)
    assert {p.site for p in prefetches} == {"mlp.gate_up", "mlp.down"}
    assert set(inert_sites(bf16)) == {"attn.qkv", "attn.o", "moe.gate_up"}


def test_float_o_proj_leaves_attn_o_on_down_proj() -> None:
    spec = replace(PRESETS["Qwen3-32B-W8A8"], o_proj_quant=BF16)
    setup = replace(DENSE, model=spec)
    assert "attn.o" not in inert_sites(setup)
    assert site_weight_bytes(setup)["attn.o"] == DOWN
    assert effective_bytes(cfg(full(o=0.5)), setup)["attn.o"] == DOWN // 2


def test_inert_sites_on_reference_setups() -> None:
    assert set(inert_sites(DENSE)) == {"moe.gate_up"}
    assert active_sites(DENSE) == ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")
    assert set(inert_sites(MOE)) == {"mlp.gate_up", "mlp.down", "moe.gate_up"}
    assert active_sites(MOE) == ("attn.qkv", "attn.o")
    for reason in inert_sites(MOE).values():
        assert reason.endswith(".") and "\n" not in reason


# ----------------------------------------------------------------------------- bytes <-> ratio


def test_effective_range() -> None:
    assert effective_range("mlp.gate_up", DENSE) == (int(GATE_UP * NEAR_OFF_RATIO), MLP_CAP_BYTES)
    assert effective_range("attn.qkv", DENSE) == (int(QKV * NEAR_OFF_RATIO), QKV)
    assert effective_range("moe.gate_up", DENSE) == (0, 0)
    assert effective_range("moe.gate_up", MOE)[1] == 96 * MiB


def test_ratio_for_bytes() -> None:
    assert ratio_for_bytes("mlp.gate_up", MLP_CAP_BYTES, DENSE) == 0.288
    assert ratio_for_bytes("mlp.down", MLP_CAP_BYTES, DENSE) == 0.576
    assert ratio_for_bytes("attn.qkv", QKV, DENSE) == 1.0
    assert ratio_for_bytes("attn.o", O_PROJ // 2, DENSE) == 0.5
    # 0 bytes -> near off, never 0 (0 would be the whole weight)
    assert ratio_for_bytes("attn.o", 0, DENSE) == NEAR_OFF_RATIO
    assert near_off_ratio("attn.o", DENSE) == NEAR_OFF_RATIO


def test_near_off_never_truncates_to_zero_bytes() -> None:
    tiny = replace(
        PRESETS["Qwen3-32B-W8A8"],
        hidden_size=16,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=4,
    )
    setup = replace(DENSE, model=tiny)
    assert near_off_ratio("attn.qkv", setup) > NEAR_OFF_RATIO  # 192 bytes x 0.001 < 1 byte
    for site in ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"):
        r = near_off_ratio(site, setup)
        assert r >= NEAR_OFF_RATIO
        whole = site_weight_bytes(setup)[site]
        assert 0 < int(whole * r) < whole


def test_ratio_for_bytes_errors() -> None:
    with pytest.raises(AutotuneError, match="at most"):
        ratio_for_bytes("mlp.down", MLP_CAP_BYTES + 1, DENSE)
    with pytest.raises(AutotuneError, match=">= 0"):
        ratio_for_bytes("attn.o", -1, DENSE)
    with pytest.raises(AutotuneError, match="no weight"):
        ratio_for_bytes("moe.gate_up", 1, DENSE)
    with pytest.raises(AutotuneError, match="unknown prefetch site"):
        ratio_for_bytes("attn.v", 1, DENSE)


# ----------------------------------------------------------------------------- compile


def test_compile_writes_every_key() -> None:
    config = compile_config({"attn.qkv": QKV // 2}, DENSE, {"enable_flashcomm1": True})
    assert config == {
        "weight_prefetch_config": {
            "enabled": True,
            "prefetch_ratio": {
                "attn": {"qkv": 0.5, "o": 1.0},
                "moe": {"gate_up": 0.8},
                "mlp": {"gate_up": 1.0, "down": 1.0},
            },
        },
        "enable_flashcomm1": True,
    }
    validate_config(config)
    json.dumps(config)


def test_compile_module_off_writes_zeros() -> None:
    config = compile_config({"attn.qkv": 0, "attn.o": 0}, DENSE)
    assert config["weight_prefetch_config"]["prefetch_ratio"]["attn"] == {"qkv": 0.0, "o": 0.0}
    got = effective_bytes(config, DENSE)
    assert got["attn.qkv"] == 0 and got["attn.o"] == 0
    assert all(p.site != "attn.o" for p in resolve_prefetches(config, DENSE, 72))


def test_compile_one_zero_site_is_near_off() -> None:
    config = compile_config({"mlp.gate_up": 0, "mlp.down": 4 * MiB}, DENSE)
    mlp = config["weight_prefetch_config"]["prefetch_ratio"]["mlp"]
    assert mlp["gate_up"] == NEAR_OFF_RATIO
    assert effective_bytes(config, DENSE)["mlp.gate_up"] == int(GATE_UP * NEAR_OFF_RATIO)


def test_compile_zero_with_inert_sibling_turns_module_off() -> None:
    # Without flashcomm1 gate_up cannot matter, so asking 0 for down alone switches mlp off.
    plain = replace(DENSE, flashcomm1=False)
    config = compile_config({"mlp.down": 0}, plain)
    assert config["weight_prefetch_config"]["prefetch_ratio"]["mlp"] == {
        "gate_up": 0.0,
        "down": 0.0,
    }
    assert effective_bytes(config, plain)["mlp.down"] == 0


def test_compile_zero_with_default_sibling_keeps_module_on() -> None:
    config = compile_config({"mlp.down": 0}, DENSE)
    mlp = config["weight_prefetch_config"]["prefetch_ratio"]["mlp"]
    assert mlp == {"gate_up": 1.0, "down": NEAR_OFF_RATIO}


def test_compile_on_moe() -> None:
    config = compile_config({"attn.qkv": 9 * MiB // 2, "attn.o": 0, "mlp.down": 0}, MOE)
    table = config["weight_prefetch_config"]["prefetch_ratio"]
    assert table["mlp"] == {"gate_up": 0.0, "down": 0.0}
    assert table["attn"]["o"] == NEAR_OFF_RATIO
    got = effective_bytes(config, MOE)
    assert got["attn.qkv"] == 9 * MiB // 2
    assert table["attn"]["qkv"] == 0.5
    with pytest.raises(AutotuneError, match="no weight"):
        compile_config({"mlp.down": MiB}, MOE)


def test_compile_rejects_bad_input() -> None:
    with pytest.raises(AutotuneError, match="unknown prefetch site"):
        compile_config({"attn.v": 1}, DENSE)
    with pytest.raises(AutotuneError, match="integer"):
        compile_config({"attn.o": 1.5}, DENSE)  # type: ignore[dict-item]
    with pytest.raises(AutotuneError, match="weight_prefetch_config"):
        compile_config({}, DENSE, {"weight_prefetch_config": {}})


def test_disabled_and_default_configs_carry_extra() -> None:
    extra = {"enable_flashcomm1": True}
    assert disabled_config(extra) == {
        "weight_prefetch_config": {"enabled": False},
        "enable_flashcomm1": True,
    }
    default = vendor_default_config(extra)
    assert default["weight_prefetch_config"]["prefetch_ratio"] == VENDOR_DEFAULT_RATIOS
    assert default["enable_flashcomm1"] is True
    validate_config(default)
    validate_config(disabled_config(extra))
    # the returned dicts are copies
    default["weight_prefetch_config"]["prefetch_ratio"]["attn"]["qkv"] = 0.5
    assert VENDOR_DEFAULT_RATIOS["attn"]["qkv"] == 1.0


SETUPS = [
    DENSE,
    replace(DENSE, tp=1),
    replace(DENSE, tp=8),
    replace(DENSE, flashcomm1=False),
    MOE,
    Setup("Qwen3-30B-A3B-W8A8", tp=2, ep=8, max_num_seqs=64, flashcomm1=True, graph_mode=False),
]


@st.composite
def _request(draw: st.DrawFn) -> tuple[Setup, dict[str, int]]:
    setup = draw(st.sampled_from(SETUPS))
    asked: dict[str, int] = {}
    for site in active_sites(setup):
        if draw(st.booleans()):
            _, high = effective_range(site, setup)
            asked[site] = draw(st.one_of(st.just(0), st.integers(0, high), st.just(high)))
    return setup, asked


@settings(max_examples=300, deadline=None)
@given(_request())
def test_compile_round_trip(request: tuple[Setup, dict[str, int]]) -> None:
    setup, asked = request
    config = compile_config(asked, setup, {"enable_flashcomm1": setup.flashcomm1})
    validate_config(config)
    got = effective_bytes(json.loads(json.dumps(config)), setup)
    table = config["weight_prefetch_config"]["prefetch_ratio"]
    for site, nbytes in asked.items():
        module, key = site.split(".")
        ratio = table[module][key]
        assert ratio == round(ratio, 6)
        if nbytes == 0 and all(v == 0 for v in table[module].values()):
            assert got[site] == 0  # module off
            continue
        snapped = snap_bytes(site, nbytes, setup)
        assert got[site] == snapped
        assert snapped >= nbytes
        low, high = effective_range(site, setup)
        assert low <= snapped <= high
        whole = site_weight_bytes(setup)[site]
        if nbytes > low:
            assert snapped - nbytes <= whole // 10**6 + 1  # one ratio step
        # the smallest such ratio: one step less moves fewer bytes than asked
        if nbytes > low and ratio > 1e-6 and ratio < 1.0:
            smaller = round(ratio - 1e-6, 6)
            assert target.cmo_bytes(whole, smaller, MLP_CAP_BYTES if module == "mlp" else None) < (
                nbytes
            )
    # compiled bytes that were snapped round-trip exactly
    snapped_request = {s: got[s] for s in asked if got[s] > 0}
    again = effective_bytes(compile_config(snapped_request, setup), setup)
    for site, nbytes in snapped_request.items():
        assert again[site] == nbytes


# ----------------------------------------------------------------------------- validate


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ([1, 2], "JSON object"),
        ({"weight_prefetch_config": [1]}, "weight_prefetch_config must be a JSON object"),
        ({"enabled": True, "prefetch_ratio": {}}, "nest them"),
        ({"weight_prefetch_config": {"enable": True}}, 'spell it "enabled"'),
        ({"weight_prefetch_config": {"enabled": "yes"}}, "true or false"),
        ({"weight_prefetch_config": {"enabled": True, "ratio": {}}}, "unknown key"),
        (cfg({"mla": {"o": 1.0}}), "unknown module 'mla'"),
        (cfg({"attn": {"qkv": 1.0, "v": 1.0}}), "unknown key 'v'; use qkv, o"),
        (cfg({"moe": {"down": 0.5}}), "unknown key 'down'"),
        (cfg({"attn": {"qkv": 1.5}}), r"prefetch_ratio\.attn\.qkv = 1\.5"),
        (cfg({"mlp": {"down": -0.1}}), r"in \[0, 1\]"),
        (cfg({"mlp": {"down": "0.5"}}), "must be a number"),
        (cfg({"mlp": {"down": True}}), "must be a number"),
        (cfg({"mlp": {"down": float("nan")}}), "must be a number"),
        (cfg({"mlp": [0.5]}), "JSON object of ratios"),
        (cfg([0.5]), "prefetch_ratio must be a JSON object"),  # type: ignore[arg-type]
    ],
)
def test_validate_rejects(config: Any, fragment: str) -> None:
    with pytest.raises(AutotuneError, match=fragment) as info:
        validate_config(config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"enable_flashcomm1": True},
        cfg(),
        cfg({}),
        cfg({"attn": {}}),
        cfg(full(qkv=0, o=0)),
        cfg({"mlp": {"down": 1}}),
    ],
)
def test_validate_accepts(config: dict[str, Any]) -> None:
    validate_config(config)


# ----------------------------------------------------------------------------- version


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("0.23.0", True),
        ("0.23.1rc1", True),
        ("0.23.0rc2", True),
        ("0.23.0+g5cb98caaa", True),
        ("0.23", True),
        ("0.24.0rc1", False),
        ("0.25.1rc1", False),
        ("1.0.0", False),
        ("0.22.0", False),
        ("0.11.0rc1", False),
    ],
)
def test_feature_supported(version: str, ok: bool) -> None:
    assert feature_supported(version) is ok


def test_unparseable_version() -> None:
    with pytest.raises(AutotuneError, match="cannot read"):
        feature_supported("nightly")


def _fake_version(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str]) -> None:
    def fake(dist: str) -> str:
        if dist in versions:
            return versions[dist]
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", fake)


def test_check_version_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, {})
    with pytest.raises(AutotuneError, match=r"not installed here.*--backend simulate"):
        check_vllm_ascend_version()


def test_check_version_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, {"vllm_ascend": "0.23.1rc1"})
    assert check_vllm_ascend_version() == "0.23.1rc1"


def test_check_version_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, {"vllm-ascend": "0.24.0rc1"})
    with pytest.raises(AutotuneError, match=r"removed after 0\.23.*vllm-ascend==0\.23\.\*"):
        check_vllm_ascend_version()


def test_check_version_too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_version(monkeypatch, {"vllm-ascend": "0.11.0"})
    with pytest.raises(AutotuneError, match=r"older than 0\.23"):
        check_vllm_ascend_version()
