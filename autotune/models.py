"""Model shapes and the per-device bytes of the weights a prefetch can move.

A model is a preset name or a local checkpoint directory (HF `config.json`, plus ModelSlim's
`quant_model_description.json` when present). Only the shapes and the quantization scheme of the
linears matter here: the scheme decides which prefetch hooks vllm-ascend 0.23 installs, the shapes
and the scheme's weight width decide how many bytes a ratio stands for. A directory is read the way
0.23 reads it: without `quant_model_description.json` it is not ModelSlim-quantized (BF16, or what
`config.json`'s `quantization_config` says), and it is MoE when any config key mentions "expert".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune._io import read_json_object
from autotune.errors import AutotuneError

# Quantization schemes as ModelSlim writes them, plus "BF16" for unquantized linears ("FLOAT").
STATIC_W8A8 = "W8A8"
DYNAMIC_W8A8 = "W8A8_DYNAMIC"
# Static on decode (KV-consumer) nodes of a disaggregated deployment, dynamic elsewhere.
MIX_W8A8 = "W8A8_MIX"
BF16 = "BF16"
_SCHEME_ALIASES = {"FLOAT": BF16, "BF16": BF16, "FP16": BF16, "W8A8_PDMIX": MIX_W8A8}
# "W8A8", "W4A8_DYNAMIC", "compressed-tensors W8A8": the weight width is the number after W.
_WIDTH_RE = re.compile(r"(?:^|[\s_])W(\d+)A")

CONFIG_FILE = "config.json"
QUANT_FILE = "quant_model_description.json"


@dataclass(frozen=True)
class ModelSpec:
    """The shapes of a decoder-only model and the schemes of the linears a prefetch can touch."""

    name: str
    hidden_size: int
    intermediate_size: int  # dense MLP width; unused when every layer is MoE
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    num_experts: int  # 0 = dense
    num_experts_per_tok: int
    moe_intermediate_size: int
    # Scheme of the attention linears (qkv_proj): "W8A8" (static) | "W8A8_DYNAMIC" | "BF16".
    # Only static W8A8 linears carry 0.23's attention prefetch hook.
    attn_quant: str
    # Scheme of o_proj when it differs from qkv_proj; "" = same as attn_quant.
    o_proj_quant: str = ""
    # Scheme of the MLP linears (dense gate_up_proj / down_proj, or the experts). A static W8A8
    # down_proj also gets the attention "o" hook in 0.23 (same row-parallel class as o_proj).
    mlp_quant: str = STATIC_W8A8
    # What was assumed rather than read (shown to the user next to results).
    notes: tuple[str, ...] = ()
    # 0.23's own MoE test (a config.json key mentions "expert"); None: the model has experts.
    moe: bool | None = None

    @property
    def is_moe(self) -> bool:
        """Whether vllm-ascend 0.23 treats the model as MoE (this gates the dense-MLP prefetch)."""
        return self.moe if self.moe is not None else self.num_experts > 0

    @property
    def has_experts(self) -> bool:
        """Whether the layers' MLP is a set of experts (this decides the shapes)."""
        return self.num_experts > 0

    @property
    def o_quant(self) -> str:
        """Scheme of o_proj."""
        return self.o_proj_quant or self.attn_quant


def scheme_bits(scheme: str) -> int:
    """Bits per weight element of a linear stored with `scheme`: W<n>A.. -> n, anything else 16."""
    match = _WIDTH_RE.search(scheme)
    if match is None:
        return 16
    return int(match.group(1))


def _nbytes(numel: int, scheme: str) -> int:
    return numel * scheme_bits(scheme) // 8


# Dimensions from the published Qwen3 config.json files.
# The attention linears of all three presets are taken to be static W8A8 (ModelSlim's default for
# the dense and attention parts of a W8A8 export). For Qwen3-235B-A22B-W8A8 this is unverified: if
# its checkpoint quantizes attention as W8A8_DYNAMIC, no prefetch at all is active on it in 0.23 —
# load the checkpoint directory instead of the preset to read the real scheme.
PRESETS: dict[str, ModelSpec] = {
    "Qwen3-32B-W8A8": ModelSpec(
        name="Qwen3-32B-W8A8",
        hidden_size=5120,
        intermediate_size=25600,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        num_experts=0,
        num_experts_per_tok=0,
        moe_intermediate_size=0,
        attn_quant=STATIC_W8A8,
    ),
    "Qwen3-235B-A22B-W8A8": ModelSpec(
        name="Qwen3-235B-A22B-W8A8",
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=94,
        num_attention_heads=64,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=1536,
        attn_quant=STATIC_W8A8,  # unverified for this checkpoint, see above
        mlp_quant=DYNAMIC_W8A8,
        notes=("attention assumed static W8A8 (unverified for this checkpoint)",),
    ),
    "Qwen3-30B-A3B-W8A8": ModelSpec(
        name="Qwen3-30B-A3B-W8A8",
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=768,
        attn_quant=STATIC_W8A8,
        mlp_quant=DYNAMIC_W8A8,
    ),
}


def _preset(name: str) -> ModelSpec | None:
    wanted = name.strip().lower()
    for key, spec in PRESETS.items():
        if key.lower() == wanted:
            return spec
    return None


def load_model(name_or_path: str) -> ModelSpec:
    """A preset (case-insensitive name) or a local checkpoint directory with config.json."""
    preset = _preset(name_or_path)
    if preset is not None:
        return preset
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == CONFIG_FILE:
        path = path.parent
    if path.is_dir():
        return _load_dir(path)
    names = ", ".join(PRESETS)
    raise AutotuneError(
        f"unknown model {name_or_path!r}: give a preset ({names}) "
        f"or a local directory that holds {CONFIG_FILE}"
    )


def _int_field(cfg: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise AutotuneError(f"{path} has no {key!r}; a Hugging Face config.json must set it")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AutotuneError(f"{path}: {key!r} must be a non-negative integer, got {value!r}")
    return value


def _load_dir(directory: Path) -> ModelSpec:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise AutotuneError(f"{config_path} not found: a model directory needs a {CONFIG_FILE}")
    top = read_json_object(config_path)
    # 0.23 calls a model MoE when any key of its HF config mentions experts (utils.py).
    moe_keys = sorted(key for key in top if "expert" in key.lower())
    cfg = top
    # Multimodal checkpoints nest the language model's config.
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]

    hidden = _int_field(cfg, "hidden_size", config_path)
    heads = _int_field(cfg, "num_attention_heads", config_path)
    # HF convention: no num_key_value_heads means plain multi-head attention.
    kv_heads = _int_field(cfg, "num_key_value_heads", config_path, default=heads)
    layers = _int_field(cfg, "num_hidden_layers", config_path)
    vocab = _int_field(cfg, "vocab_size", config_path)
    if heads == 0 or hidden == 0:
        raise AutotuneError(f"{config_path}: hidden_size and num_attention_heads must be positive")
    head_dim = _int_field(cfg, "head_dim", config_path, default=hidden // heads)
    # Qwen3-MoE says num_experts; Mixtral num_local_experts; DeepSeek n_routed_experts.
    experts = 0
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if cfg.get(key) is not None:
            experts = _int_field(cfg, key, config_path)
            break
    if experts:
        per_tok = _int_field(cfg, "num_experts_per_tok", config_path)
        moe_inter = _int_field(cfg, "moe_intermediate_size", config_path)
        inter = _int_field(cfg, "intermediate_size", config_path, default=0)
    else:
        per_tok = 0
        moe_inter = 0
        inter = _int_field(cfg, "intermediate_size", config_path)

    notes: list[str] = []
    if moe_keys and not experts:
        notes.append(
            f"{CONFIG_FILE} key(s) {', '.join(moe_keys)} mention experts, so 0.23 treats the "
            "model as MoE"
        )
    quant_path = directory / QUANT_FILE
    if quant_path.is_file():
        attn_q, o_q, mlp_q, quant_notes = _read_schemes(read_json_object(quant_path), quant_path)
        notes.extend(quant_notes)
    else:
        # No ModelSlim description: 0.23 does not quantize the linears with its own methods.
        hf_quant = top.get("quantization_config", cfg.get("quantization_config"))
        if hf_quant is None:
            attn_q = o_q = mlp_q = BF16
        else:
            attn_q = o_q = mlp_q = _hf_scheme(hf_quant, config_path)
    if not mlp_q:
        mlp_q = BF16
        notes.append(f"{QUANT_FILE} lists no MLP linears: taken as unquantized (BF16)")

    return ModelSpec(
        name=directory.name,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        num_experts=experts,
        num_experts_per_tok=per_tok,
        moe_intermediate_size=moe_inter,
        attn_quant=attn_q,
        o_proj_quant="" if o_q == attn_q else o_q,
        mlp_quant=mlp_q,
        notes=tuple(notes),
        moe=bool(moe_keys) or experts > 0,
    )


def _compressed_tensors_scheme(group: Any) -> str:
    """The Ascend scheme 0.23 picks for one compressed-tensors config group ("" = unknown)."""
    if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
        return ""
    weights, acts = group["weights"], group.get("input_activations")
    w_bits = weights.get("num_bits")
    if isinstance(acts, dict) and acts.get("num_bits") == 8:
        # 0.23 (quantization/compressed_tensors_config.py): a static per-tensor activation scale is
        # its static W8A8 method, a per-token dynamic one the dynamic method.
        if w_bits == 8:
            return DYNAMIC_W8A8 if acts.get("dynamic") else STATIC_W8A8
        if w_bits == 4:
            return "W4A8_DYNAMIC"
    if acts is None and w_bits == 4:
        return "W4A16"
    return ""


def _hf_scheme(value: Any, path: Path) -> str:
    """The scheme of config.json's `quantization_config` (a checkpoint without ModelSlim's file)."""
    if not isinstance(value, dict):
        raise AutotuneError(f"{path}: 'quantization_config' must be a JSON object, got {value!r}")
    method = str(value.get("quant_method") or "quantized")
    groups = value.get("config_groups")
    if method == "compressed-tensors" and isinstance(groups, dict):
        schemes = {_compressed_tensors_scheme(g) for g in groups.values()}
        if len(schemes) == 1 and "" not in schemes:
            return schemes.pop()
    bits = value.get("bits", value.get("w_bit"))
    if bits is None and isinstance(groups, dict):
        widths = {
            g["weights"].get("num_bits")
            for g in groups.values()
            if isinstance(g, dict) and isinstance(g.get("weights"), dict)
        }
        bits = widths.pop() if len(widths) == 1 else None
    if bits is None and "fp8" in method.lower():
        bits = 8
    if isinstance(bits, int) and not isinstance(bits, bool) and 0 < bits <= 16:
        return f"{method} W{bits}A"
    return method


# `model.layers.<i>.self_attn.q_proj.weight`, `...mlp.down_proj.weight`, `...mlp.experts.<j>...`.
_LINEAR_RE = re.compile(
    r"layers\.(\d+)\.(self_attn\.(?:q|k|v|o)_proj|mlp\.(?:experts\.\d+\.)?(?:gate|up|down)_proj)"
    r"\.weight$"
)


def _normalise_scheme(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str):
        raise AutotuneError(f"{path}: {key!r} must map to a scheme string, got {value!r}")
    scheme = value.strip().upper()
    return _SCHEME_ALIASES.get(scheme, scheme)


def _read_schemes(desc: dict[str, Any], path: Path) -> tuple[str, str, str, list[str]]:
    """Schemes of qkv_proj, o_proj and the dense MLP from ModelSlim's description."""
    seen: dict[str, Counter[str]] = {"qkv": Counter(), "o": Counter(), "mlp": Counter()}
    for key, value in desc.items():
        match = _LINEAR_RE.search(key)
        if match is None:
            continue
        linear = match.group(2)
        group = "o" if linear.endswith("o_proj") else "qkv" if "self_attn" in linear else "mlp"
        seen[group][_normalise_scheme(value, key, path)] += 1

    notes: list[str] = []
    chosen: dict[str, str] = {}
    for group, counts in seen.items():
        if not counts:
            chosen[group] = ""
            continue
        scheme, _ = counts.most_common(1)[0]
        chosen[group] = scheme
        if len(counts) > 1:
            mix = ", ".join(f"{s}×{n}" for s, n in sorted(counts.items()))
            notes.append(f"{group} linears mix schemes ({mix}); modelled as {scheme}")
    if not chosen["qkv"] and not chosen["o"]:
        notes.append(f"{path.name} lists no attention linears: taken as unquantized (BF16)")
        chosen["qkv"] = chosen["o"] = BF16
    chosen["qkv"] = chosen["qkv"] or chosen["o"]
    chosen["o"] = chosen["o"] or chosen["qkv"]
    return chosen["qkv"], chosen["o"], chosen["mlp"], notes


def weight_bytes(spec: ModelSpec, tp: int, ep: int = 1) -> dict[str, int]:
    """Per-device bytes of one layer's weights at tensor-parallel `tp` and expert-parallel `ep`.

    Dense: qkv_proj, o_proj, gate_up_proj, down_proj. MoE: qkv_proj, o_proj, w13 (every local
    expert's gate_up), w2. Each at its scheme's width: 1 byte for W8A8, 2 for unquantized (BF16).
    """
    for label, value in (("tp", tp), ("ep", ep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AutotuneError(f"{label} must be an integer >= 1, got {value!r}")
    heads, kv = spec.num_attention_heads, spec.num_key_value_heads
    if heads % tp:
        raise AutotuneError(
            f"{spec.name}: {heads} attention heads do not split over tp={tp}; "
            f"pick a tp that divides {heads}"
        )
    # vLLM splits KV heads over TP ranks, or replicates them when there are fewer heads than ranks.
    if kv >= tp:
        if kv % tp:
            raise AutotuneError(f"{spec.name}: {kv} KV heads do not split over tp={tp}")
        kv_local = kv // tp
    else:
        if tp % kv:
            raise AutotuneError(f"{spec.name}: tp={tp} is not a multiple of its {kv} KV heads")
        kv_local = 1

    hidden, hd = spec.hidden_size, spec.head_dim
    out = {
        "qkv_proj": _nbytes(hidden * (heads // tp + 2 * kv_local) * hd, spec.attn_quant),
        "o_proj": _nbytes((heads // tp) * hd * hidden, spec.o_quant),
    }
    if spec.has_experts:
        if spec.num_experts % ep:
            raise AutotuneError(
                f"{spec.name}: {spec.num_experts} experts do not split over ep={ep}"
            )
        inter = spec.moe_intermediate_size
        if ep == 1:
            # Without expert parallelism each rank holds all experts, tensor-split like a dense MLP.
            if inter % tp:
                raise AutotuneError(
                    f"{spec.name}: moe_intermediate_size {inter} does not split over tp={tp}"
                )
            local_experts, inter_local = spec.num_experts, inter // tp
        else:
            local_experts, inter_local = spec.num_experts // ep, inter
        out["w13"] = _nbytes(local_experts * 2 * inter_local * hidden, spec.mlp_quant)
        out["w2"] = _nbytes(local_experts * inter_local * hidden, spec.mlp_quant)
    else:
        inter = spec.intermediate_size
        if inter % tp:
            raise AutotuneError(
                f"{spec.name}: intermediate_size {inter} does not split over tp={tp}"
            )
        out["gate_up_proj"] = _nbytes(hidden * 2 * (inter // tp), spec.mlp_quant)
        out["down_proj"] = _nbytes((inter // tp) * hidden, spec.mlp_quant)
    return out
