"""Model presets, checkpoint-directory loading and per-device weight bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autotune.errors import AutotuneError
from autotune.models import (
    BF16,
    DYNAMIC_W8A8,
    MIX_W8A8,
    PRESETS,
    STATIC_W8A8,
    load_model,
    scheme_bits,
    weight_bytes,
)

MiB = 1024 * 1024
DATA = Path(__file__).parent / "data"
QWEN3_32B_DIR = DATA / "qwen3-32b-w8a8"


def _write_model(
    directory: Path, config: dict[str, Any], quant: dict[str, Any] | None = None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if quant is not None:
        (directory / "quant_model_description.json").write_text(json.dumps(quant))
    return directory


def _moe_config() -> dict[str, Any]:
    return {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "vocab_size": 151936,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
    }


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["Qwen3-32B-W8A8", "qwen3-32b-w8a8", "QWEN3-235B-A22B-W8A8"])
def test_presets_load_case_insensitively(name: str) -> None:
    assert load_model(name).name.lower() == name.lower()


def test_preset_shapes() -> None:
    dense = PRESETS["Qwen3-32B-W8A8"]
    assert not dense.is_moe
    assert (dense.hidden_size, dense.intermediate_size, dense.num_hidden_layers) == (
        5120,
        25600,
        64,
    )
    moe = PRESETS["Qwen3-235B-A22B-W8A8"]
    assert moe.is_moe
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (128, 8, 1536)
    small = PRESETS["Qwen3-30B-A3B-W8A8"]
    assert (small.hidden_size, small.num_attention_heads, small.moe_intermediate_size) == (
        2048,
        32,
        768,
    )
    for spec in PRESETS.values():
        assert spec.attn_quant == STATIC_W8A8


def test_unknown_name_lists_presets() -> None:
    with pytest.raises(AutotuneError) as info:
        load_model("Llama-3-8B")
    message = str(info.value)
    assert "\n" not in message
    for name in PRESETS:
        assert name in message


# ----------------------------------------------------------------------------- weight bytes


@pytest.mark.parametrize(
    ("tp", "qkv", "o", "gate_up", "down"),
    [
        (1, 50, 40, 250, 125),
        (2, 25, 20, 125, 62.5),
        (4, 12.5, 10, 62.5, 31.25),
        (8, 6.25, 5, 31.25, 15.625),
    ],
)
def test_qwen3_32b_bytes_match_tables(
    tp: int, qkv: float, o: float, gate_up: float, down: float
) -> None:
    got = weight_bytes(PRESETS["Qwen3-32B-W8A8"], tp, 1)
    assert got == {
        "qkv_proj": int(qkv * MiB),
        "o_proj": int(o * MiB),
        "gate_up_proj": int(gate_up * MiB),
        "down_proj": int(down * MiB),
    }


def test_qwen3_32b_tp4_exact_bytes() -> None:
    got = weight_bytes(PRESETS["Qwen3-32B-W8A8"], 4, 1)
    assert got["qkv_proj"] == 13_107_200
    assert got["o_proj"] == 10_485_760
    assert got["gate_up_proj"] == 65_536_000
    assert got["down_proj"] == 32_768_000


@pytest.mark.parametrize(
    ("tp", "ep", "qkv", "o", "w13"),
    [(4, 16, 9, 8, 96), (8, 32, 5, 4, 48), (1, 16, 36, 32, 96), (1, 8, 36, 32, 192)],
)
def test_qwen3_235b_bytes(tp: int, ep: int, qkv: int, o: int, w13: int) -> None:
    got = weight_bytes(PRESETS["Qwen3-235B-A22B-W8A8"], tp, ep)
    assert got["qkv_proj"] == qkv * MiB
    assert got["o_proj"] == o * MiB
    assert got["w13"] == w13 * MiB
    assert got["w2"] == w13 * MiB // 2
    assert "gate_up_proj" not in got and "down_proj" not in got


def test_one_expert_w13_is_12_58_mb() -> None:
    # 128 experts over ep=128: one local expert, 2 x 1536 x 4096 int8.
    got = weight_bytes(PRESETS["Qwen3-235B-A22B-W8A8"], 1, 128)
    assert got["w13"] == 12_582_912
    assert got["w2"] == 6_291_456


def test_kv_heads_are_replicated_when_fewer_than_ranks() -> None:
    # 4 KV heads at tp=8: each rank keeps one KV head (vLLM replicates them).
    got = weight_bytes(PRESETS["Qwen3-235B-A22B-W8A8"], 8, 8)
    assert got["qkv_proj"] == 4096 * (64 // 8 + 2 * 1) * 128


def test_moe_without_ep_tensor_splits_experts() -> None:
    got = weight_bytes(PRESETS["Qwen3-30B-A3B-W8A8"], 4, 1)
    assert got["w13"] == 128 * 2 * (768 // 4) * 2048


@pytest.mark.parametrize(("tp", "ep"), [(0, 1), (1, 0), (-2, 1)])
def test_bad_parallel_sizes(tp: int, ep: int) -> None:
    with pytest.raises(AutotuneError, match=">= 1"):
        weight_bytes(PRESETS["Qwen3-32B-W8A8"], tp, ep)


@pytest.mark.parametrize(
    ("model", "tp", "ep", "fragment"),
    [
        ("Qwen3-32B-W8A8", 3, 1, "attention heads"),
        ("Qwen3-235B-A22B-W8A8", 4, 3, "experts"),
        ("Qwen3-235B-A22B-W8A8", 6, 1, "attention heads"),
    ],
)
def test_indivisible_parallel_sizes(model: str, tp: int, ep: int, fragment: str) -> None:
    with pytest.raises(AutotuneError, match=fragment):
        weight_bytes(PRESETS[model], tp, ep)


def test_kv_heads_must_split_or_replicate() -> None:
    from dataclasses import replace

    spec = replace(PRESETS["Qwen3-32B-W8A8"], num_attention_heads=48, num_key_value_heads=6)
    with pytest.raises(AutotuneError, match="KV heads"):
        weight_bytes(spec, 4, 1)
    spec = replace(spec, num_key_value_heads=3)
    with pytest.raises(AutotuneError, match="KV heads"):
        weight_bytes(spec, 4, 1)


def test_bf16_linears_count_two_bytes() -> None:
    from dataclasses import replace

    spec = replace(PRESETS["Qwen3-32B-W8A8"], attn_quant=BF16, mlp_quant=BF16)
    got = weight_bytes(spec, 4, 1)
    assert got["qkv_proj"] == 2 * 13_107_200
    assert got["down_proj"] == 2 * 32_768_000


# ----------------------------------------------------------------------------- directories


def test_fixture_directory_matches_preset() -> None:
    spec = load_model(str(QWEN3_32B_DIR))
    preset = PRESETS["Qwen3-32B-W8A8"]
    assert spec.name == "qwen3-32b-w8a8"
    assert spec.attn_quant == STATIC_W8A8
    assert spec.o_quant == STATIC_W8A8
    assert spec.mlp_quant == STATIC_W8A8
    assert spec.notes == ()
    for tp in (1, 2, 4, 8):
        assert weight_bytes(spec, tp, 1) == weight_bytes(preset, tp, 1)


def test_config_json_path_is_accepted() -> None:
    assert load_model(str(QWEN3_32B_DIR / "config.json")).hidden_size == 5120


def test_missing_quant_description_is_unquantized_bf16(tmp_path: Path) -> None:
    # 0.23 (quantization/modelslim_config.py) quantizes nothing without the description file.
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    spec = load_model(str(_write_model(tmp_path / "m", cfg)))
    assert (spec.attn_quant, spec.o_quant, spec.mlp_quant) == (BF16, BF16, BF16)
    got = weight_bytes(spec, 4, 1)
    # bf16: 2 bytes a parameter, so twice the int8 sizes of the W8A8 tables.
    assert got == {
        "qkv_proj": 2 * 13_107_200,
        "o_proj": 2 * 10_485_760,
        "gate_up_proj": 2 * 65_536_000,
        "down_proj": 2 * 32_768_000,
    }


def _ct_group(w_bits: int, acts: dict[str, Any] | None) -> dict[str, Any]:
    group: dict[str, Any] = {"targets": ["Linear"], "weights": {"num_bits": w_bits}}
    if acts is not None:
        group["input_activations"] = acts
    return {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}


@pytest.mark.parametrize(
    ("quant", "scheme", "down_bytes"),
    [
        # compressed-tensors maps onto 0.23's own Ascend schemes.
        (_ct_group(8, {"num_bits": 8, "strategy": "tensor", "dynamic": False}), "W8A8", 1),
        (_ct_group(8, {"num_bits": 8, "strategy": "token", "dynamic": True}), "W8A8_DYNAMIC", 1),
        (_ct_group(4, None), "W4A16", 0.5),
        ({"quant_method": "gptq", "bits": 4}, "gptq W4A", 0.5),
        ({"quant_method": "fp8"}, "fp8 W8A", 1),
    ],
)
def test_hf_quantization_config_is_read(
    tmp_path: Path, quant: dict[str, Any], scheme: str, down_bytes: float
) -> None:
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    cfg["quantization_config"] = quant
    spec = load_model(str(_write_model(tmp_path / "m", cfg)))
    assert spec.attn_quant == spec.mlp_quant == scheme
    assert weight_bytes(spec, 4, 1)["down_proj"] == int(32_768_000 * down_bytes)


@pytest.mark.parametrize(
    ("scheme", "bits"),
    [("W8A8", 8), ("W8A8_DYNAMIC", 8), ("W8A8_MIX", 8), ("W4A8_DYNAMIC", 4), ("BF16", 16)],
)
def test_scheme_bits(scheme: str, bits: int) -> None:
    assert scheme_bits(scheme) == bits


def test_mix_scheme_is_read_and_pdmix_is_its_alias(tmp_path: Path) -> None:
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    quant = {
        "model.layers.0.self_attn.q_proj.weight": "W8A8_PDMIX",
        "model.layers.0.self_attn.o_proj.weight": "W8A8_MIX",
        "model.layers.0.mlp.down_proj.weight": "W8A8_MIX",
    }
    spec = load_model(str(_write_model(tmp_path / "mix", cfg, quant)))
    assert (spec.attn_quant, spec.o_quant, spec.mlp_quant) == (MIX_W8A8,) * 3


def test_any_expert_key_makes_the_model_moe(tmp_path: Path) -> None:
    # 0.23 (utils.py is_moe_model): any HF config key containing "expert", whatever its value.
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    assert not load_model(str(_write_model(tmp_path / "dense", cfg))).is_moe
    cfg["num_experts_per_tok"] = None
    spec = load_model(str(_write_model(tmp_path / "flagged", cfg)))
    assert spec.is_moe and not spec.has_experts
    assert any("num_experts_per_tok" in note for note in spec.notes)
    # Still a dense MLP for the shapes.
    assert weight_bytes(spec, 4, 1)["gate_up_proj"] == 2 * 65_536_000


def test_expert_weights_are_read_for_moe(tmp_path: Path) -> None:
    quant = {
        "model.layers.0.self_attn.q_proj.weight": "W8A8",
        "model.layers.0.self_attn.o_proj.weight": "W8A8",
        "model.layers.0.mlp.experts.0.gate_proj.weight": "W8A8_DYNAMIC",
    }
    spec = load_model(str(_write_model(tmp_path / "moe", _moe_config(), quant)))
    assert spec.mlp_quant == DYNAMIC_W8A8
    bf16 = load_model(str(_write_model(tmp_path / "moe_bf16", _moe_config())))
    assert weight_bytes(bf16, 4, 1)["w13"] == 2 * weight_bytes(spec, 4, 1)["w13"]


def test_dynamic_attention_is_read(tmp_path: Path) -> None:
    quant = {
        "model.layers.0.self_attn.q_proj.weight": "W8A8_DYNAMIC",
        "model.layers.0.self_attn.k_proj.weight": "W8A8_DYNAMIC",
        "model.layers.0.self_attn.v_proj.weight": "W8A8_DYNAMIC",
        "model.layers.0.self_attn.o_proj.weight": "W8A8_DYNAMIC",
        "model.layers.0.mlp.experts.0.gate_proj.weight": "W8A8_DYNAMIC",
    }
    spec = load_model(str(_write_model(tmp_path / "moe", _moe_config(), quant)))
    assert spec.is_moe
    assert spec.attn_quant == DYNAMIC_W8A8
    assert spec.o_quant == DYNAMIC_W8A8
    assert spec.notes == ()


def test_float_o_proj_and_mixed_layers(tmp_path: Path) -> None:
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    quant = {
        "model.layers.0.self_attn.q_proj.weight": "W8A8",
        "model.layers.0.self_attn.o_proj.weight": "FLOAT",
        "model.layers.1.self_attn.o_proj.weight": "FLOAT",
        "model.layers.2.self_attn.o_proj.weight": "W8A8",
        "model.layers.0.mlp.down_proj.weight": "W8A8",
    }
    spec = load_model(str(_write_model(tmp_path / "mix", cfg, quant)))
    assert spec.attn_quant == STATIC_W8A8
    assert spec.o_quant == BF16
    assert any("mix" in note for note in spec.notes)


def test_head_dim_and_kv_heads_default(tmp_path: Path) -> None:
    cfg = {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "vocab_size": 32000,
    }
    spec = load_model(str(_write_model(tmp_path / "mha", cfg)))
    assert spec.head_dim == 128
    assert spec.num_key_value_heads == 32
    assert not spec.is_moe


@pytest.mark.parametrize("key", ["hidden_size", "num_attention_heads", "vocab_size"])
def test_missing_key_names_file_and_key(tmp_path: Path, key: str) -> None:
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    del cfg[key]
    directory = _write_model(tmp_path / "broken", cfg)
    with pytest.raises(AutotuneError) as info:
        load_model(str(directory))
    assert key in str(info.value)
    assert "config.json" in str(info.value)


def test_moe_needs_moe_intermediate_size(tmp_path: Path) -> None:
    cfg = _moe_config()
    del cfg["moe_intermediate_size"]
    with pytest.raises(AutotuneError, match="moe_intermediate_size"):
        load_model(str(_write_model(tmp_path / "moe", cfg)))


def test_invalid_json_names_file(tmp_path: Path) -> None:
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "config.json").write_text("{not json")
    with pytest.raises(AutotuneError, match=r"config\.json is not valid JSON"):
        load_model(str(directory))


def test_wrong_type_field(tmp_path: Path) -> None:
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    cfg["hidden_size"] = "5120"
    with pytest.raises(AutotuneError, match="hidden_size"):
        load_model(str(_write_model(tmp_path / "typed", cfg)))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match=r"config\.json not found"):
        load_model(str(tmp_path))


def test_bad_quant_description(tmp_path: Path) -> None:
    cfg = json.loads((QWEN3_32B_DIR / "config.json").read_text())
    directory = _write_model(tmp_path / "q", cfg)
    (directory / "quant_model_description.json").write_text("[1, 2]")
    with pytest.raises(AutotuneError, match=r"quant_model_description\.json"):
        load_model(str(directory))
