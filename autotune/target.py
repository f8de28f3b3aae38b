"""vllm-ascend 0.23 weight-prefetch semantics: sites, quirks, config compile/validate, versions.

Facts follow vllm-ascend 0.23.0's code, not its docs' intent
(see README "What vllm-ascend 0.23 really does").

How 0.23 turns a config into CMO prefetches, per decoder layer:

- `weight_prefetch_config.enabled` (spelled exactly so; default off) switches everything.
- `prefetch_ratio` has three modules, `attn` {qkv, o}, `mlp` {gate_up, down}, `moe` {gate_up}. A
  module that is missing or `{}` falls back to its defaults. A ratio outside [0, 1] is dropped, and
  a dropped or missing ratio reads as 0. A module is on only when one of its ratios is non-zero.
- One prefetch moves `int(weight_bytes * ratio)` bytes; the mlp sites clip that at 18 MiB first.
  A result of 0 bytes (ratio 0) means the WHOLE weight, and the mlp clip does not apply to it.
- Gates: attn hooks exist only in static-W8A8 linears (W8A8_DYNAMIC and unquantized ones have
  none), and the "o" hook fires in every row-parallel linear — o_proj and, in dense models,
  down_proj — unless enable_matmul_allreduce's fused op bypasses the quant method. mlp only on
  dense models (0.23: no config key mentions "expert"), only for forwards of fewer than 500 tokens
  (decided once, at the dynamo trace, in compiled graphs: see below);
  mlp.gate_up only when o_proj runs a custom row-parallel op (flashcomm1, enable_matmul_allreduce,
  flashcomm2, o-proj TP). moe.gate_up never fires in 0.23 (its layer index never advances on MoE
  models).
- Graph modes (docs/vllm-ascend-0.23.md has the file:line of each step): eager runs every gate per
  forward; graphs captured without compilation (compilation mode NONE) run them at each capture
  size; with VLLM_COMPILE dynamo traces the model once, in the profile run of
  max_num_batched_tokens tokens, and vLLM drops the guards, so the mlp gate is frozen there. The
  piecewise modes (and full graphs with npugraph_ex off) compile through vllm-ascend's fusion-pass
  compiler, whose AOT-autograd trace removes the prefetch ops as dead code: no site fires. Full
  graphs compiled by npugraph_ex (the vendor's FULL_DECODE_ONLY recipe) are not in the sources:
  the attention sites stay in the space and the default trial's profile decides.
- Start-up: flashcomm1 needs TP > 1, and expert parallelism on MoE models, or `vllm serve` aborts.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from autotune.errors import AutotuneError
from autotune.models import BF16, MIX_W8A8, STATIC_W8A8, ModelSpec, load_model, weight_bytes

# The prefetch sites of a decoder layer; exactly the vllm-ascend config keys "<module>.<key>".
SITES: tuple[str, ...] = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down", "moe.gate_up")

# MAX_PREFETCH_WEIGHT_SIZE in 0.23: applied to the mlp.* sites only.
MLP_CAP_BYTES = 18 * 1024 * 1024

# prefetch_ratio defaults of 0.23 (ascend_config.py); used when a module is missing or empty.
VENDOR_DEFAULT_RATIOS: dict[str, dict[str, float]] = {
    "attn": {"qkv": 1.0, "o": 1.0},
    "moe": {"gate_up": 0.8},
    "mlp": {"gate_up": 1.0, "down": 1.0},
}

MODULE_KEYS: dict[str, tuple[str, ...]] = {
    module: tuple(keys) for module, keys in VENDOR_DEFAULT_RATIOS.items()
}

# The dense-MLP prefetch runs only for forwards with fewer tokens than this.
MLP_TOKEN_LIMIT = 500
# The MoE prefetch would need at least this many tokens (moot in 0.23: it never fires).
MOE_TOKEN_THRESHOLD = 96
# On dense models flashcomm1's sequence-parallel comm (all-gather / reduce-scatter, norms on
# batch/TP rows) runs only in forwards of more tokens than this; below it o_proj and down_proj
# do matmul + all-reduce, as without flashcomm1 (ascend_forward_context.py).
SP_MIN_TOKENS = 1000

# Ratio written for "as good as off" on one site of a module that stays on. It cannot be 0: 0.23
# reads 0 as the whole weight. 0.1 % of a weight is a few KiB to ~100 KiB: one short CMO.
NEAR_OFF_RATIO = 0.001
# Ratios are written with at most this many decimals.
RATIO_DECIMALS = 6
_RATIO_SCALE = 10**RATIO_DECIMALS

# The weight (per-device tensor) each site's ratio multiplies.
SITE_WEIGHT: dict[str, str] = {
    "attn.qkv": "qkv_proj",
    "attn.o": "o_proj",
    "mlp.gate_up": "gate_up_proj",
    "mlp.down": "down_proj",
    "moe.gate_up": "w13",
}

_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")

# Custom row-parallel ops that additional-config keys other than enable_flashcomm1 put on o_proj,
# in 0.23's order of precedence (ops/linear_op.py), with the key that switches each on. Any of
# them, like flashcomm1's, starts the mlp.gate_up prefetch after o_proj.
ROW_OP_KEYS: dict[str, str] = {
    "oproj_tp": "finegrained_tp_config.oproj_tensor_parallel_size",
    "matmul_allreduce": "enable_matmul_allreduce",
    "flashcomm2": "enable_flashcomm2_parallel_size",
}


# vLLM 0.23's compilation modes and cudagraph modes, spelled as its config spells them.
COMPILE_MODES: tuple[str, ...] = (
    "NONE",
    "STOCK_TORCH_COMPILE",
    "DYNAMO_TRACE_ONCE",
    "VLLM_COMPILE",
)
CUDAGRAPH_MODES: tuple[str, ...] = (
    "NONE",
    "PIECEWISE",
    "FULL",
    "FULL_DECODE_ONLY",
    "FULL_AND_PIECEWISE",
)
PIECEWISE_MODES = ("PIECEWISE", "FULL_AND_PIECEWISE")
# What "graph mode" means when nothing more is said: the vendor's Qwen3-Dense recipe for 0.23.
RECIPE_CUDAGRAPH_MODE = "FULL_DECODE_ONLY"


@dataclass(frozen=True)
class GraphMode:
    """How 0.23 runs the model: its compilation mode, cudagraph mode and Ascend graph options."""

    compile_mode: str = "NONE"
    cudagraph_mode: str = "NONE"
    npugraph_ex: bool = True  # ascend_compilation_config.enable_npugraph_ex
    fuse_norm_quant: bool = True  # ascend_compilation_config.fuse_norm_quant

    @property
    def graphs(self) -> bool:
        return self.cudagraph_mode != "NONE"

    def text(self) -> str:
        """One phrase for the workload line: "eager" or the graph mode and how it is built."""
        if not self.graphs:
            return "eager"
        if self.compile_mode != "VLLM_COMPILE":
            return f"graph {self.cudagraph_mode} (captured eagerly, compilation mode NONE)"
        how = "npugraph_ex" if self.npugraph_ex and not self.piecewise else "fusion passes"
        return f"graph {self.cudagraph_mode} (VLLM_COMPILE, {how})"

    @property
    def piecewise(self) -> bool:
        return self.cudagraph_mode in PIECEWISE_MODES


def graph_fields(graph_mode: bool, compile_mode: str, cudagraph_mode: str) -> tuple[bool, str, str]:
    """(graph_mode, compile_mode, cudagraph_mode) made consistent, the way 0.23 settles them.

    `graph_mode` decides whether graphs run at all; an unset cudagraph mode with graphs is the
    vendor recipe's FULL_DECODE_ONLY, an unset compilation mode VLLM_COMPILE. On Ascend no graphs
    means no compilation (vllm-ascend platform.py:592-598), and piecewise graphs need VLLM_COMPILE
    (vLLM config/vllm.py:1157-1168).
    """
    for value, known, what in (
        (compile_mode, COMPILE_MODES, "compilation mode"),
        (cudagraph_mode, CUDAGRAPH_MODES, "cudagraph mode"),
    ):
        if value and value not in known:
            raise AutotuneError(f"unknown {what} {value!r}; use one of {', '.join(known)}")
    if not graph_mode:
        return False, "NONE", "NONE"
    cudagraph = cudagraph_mode if cudagraph_mode not in ("", "NONE") else RECIPE_CUDAGRAPH_MODE
    compiled = compile_mode or "VLLM_COMPILE"
    if compiled not in ("NONE", "VLLM_COMPILE") or (
        cudagraph in PIECEWISE_MODES and compiled != "VLLM_COMPILE"
    ):
        return False, "NONE", "NONE"
    return True, compiled, cudagraph


# The cudagraph mode each optimization level sets when the user sets none (vLLM
# config/vllm.py:201-283): O0 none, O1 piecewise, O2 (the default) and O3 full and piecewise.
_LEVEL_CUDAGRAPH = ("NONE", "PIECEWISE", "FULL_AND_PIECEWISE", "FULL_AND_PIECEWISE")
DEFAULT_OPTIMIZATION_LEVEL = 2  # vLLM config/vllm.py:366


def _mode_name(value: Any, known: tuple[str, ...], what: str) -> str | None:
    """A compilation or cudagraph mode given as its name (any case) or, for modes, its number."""
    if value is None:
        return None
    numbered = what == "mode" and isinstance(value, int) and not isinstance(value, bool)
    if numbered and 0 <= value < len(known):
        return known[int(value)]
    if isinstance(value, str) and value.upper() in known:
        return value.upper()
    raise AutotuneError(
        f"--serve-args: compilation-config {what} {value!r} is not one of {', '.join(known)}"
    )


def resolve_graph_mode(
    *,
    enforce_eager: bool,
    optimization_level: int | None,
    compilation: Mapping[str, Any],
    ascend_compilation: Mapping[str, Any],
    torch_compile_disabled: bool = False,
) -> GraphMode:
    """The graph mode vLLM 0.23 and vllm-ascend 0.23 settle on for these serve arguments.

    vLLM (config/vllm.py): --enforce-eager turns compilation and graphs off (1054-1060), as does
    TORCH_COMPILE_DISABLE=1 for compilation (1062-1067); an unset mode is VLLM_COMPILE above -O0
    (1122-1127); an unset cudagraph mode is the optimization level's (1149-1150); piecewise
    graphs need VLLM_COMPILE (1157-1168). vllm-ascend (platform.py): graphs only with compilation
    mode NONE or VLLM_COMPILE (534-540); no graphs means no compilation (592-598); piecewise
    graphs turn npugraph_ex off (599-628).
    """
    level = DEFAULT_OPTIMIZATION_LEVEL if optimization_level is None else optimization_level
    mode = _mode_name(compilation.get("mode"), COMPILE_MODES, "mode")
    cudagraph = _mode_name(compilation.get("cudagraph_mode"), CUDAGRAPH_MODES, "cudagraph_mode")
    if enforce_eager:
        mode, cudagraph = "NONE", "NONE"
    if torch_compile_disabled:
        mode = "NONE"
    if mode is None:
        mode = "VLLM_COMPILE" if level > 0 else "NONE"
    if cudagraph is None:
        cudagraph = _LEVEL_CUDAGRAPH[level]
    if cudagraph in PIECEWISE_MODES and mode != "VLLM_COMPILE":
        cudagraph = "NONE"
    if mode not in ("NONE", "VLLM_COMPILE"):
        cudagraph = "NONE"
    if cudagraph == "NONE":
        mode = "NONE"
    options: dict[str, bool] = {}
    for key, default in (("enable_npugraph_ex", True), ("fuse_norm_quant", True)):
        value = ascend_compilation.get(key, default)
        if not isinstance(value, bool):
            raise AutotuneError(
                f"--additional-config: ascend_compilation_config.{key} must be true or false"
            )
        options[key] = value
    return GraphMode(mode, cudagraph, options["enable_npugraph_ex"], options["fuse_norm_quant"])


@dataclass(frozen=True)
class Setup:
    """What the runtime gates depend on, for one deployment."""

    model: str | ModelSpec  # preset name, local model directory, or a ready spec
    tp: int
    ep: int
    max_num_seqs: int
    flashcomm1: bool
    graph_mode: bool
    max_num_batched_tokens: int = 16384
    # A custom row-parallel op other keys put on o_proj (a ROW_OP_KEYS name; "" = none). It takes
    # precedence over flashcomm1's; see `row_op_of`.
    row_op: str = ""
    # The graph mode in detail ("" = from graph_mode, see `graph_fields`).
    compile_mode: str = ""
    cudagraph_mode: str = ""
    npugraph_ex: bool = True
    fuse_norm_quant: bool = True
    # Sites a profile showed issuing CMO tasks although the rules below call them inert: the
    # profile has the last word, so they fire here whatever the gates say.
    observed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The fields keep what was given ("" = derived); graph_mode only drops to False for a
        # combination 0.23 runs eagerly.
        object.__setattr__(self, "graph_mode", self.graph.graphs)

    @property
    def graph(self) -> GraphMode:
        """The graph mode 0.23 really runs (see `graph_fields`)."""
        _, compile_mode, cudagraph = graph_fields(
            self.graph_mode, self.compile_mode, self.cudagraph_mode
        )
        return GraphMode(compile_mode, cudagraph, self.npugraph_ex, self.fuse_norm_quant)

    @property
    def traced(self) -> bool:
        """True when dynamo traces the model once (VLLM_COMPILE), freezing Python branches."""
        return self.graph.compile_mode == "VLLM_COMPILE"

    @property
    def prefetch_compiled_out(self) -> bool:
        """True when the compiled graph loses every prefetch op (AOT-autograd dead code)."""
        return self.traced and (self.graph.piecewise or not self.npugraph_ex)


@dataclass(frozen=True)
class ResolvedPrefetch:
    """One CMO prefetch that 0.23 issues in every layer of a forward."""

    site: str  # config key that sets its size, e.g. "attn.o"
    weight: str  # qkv_proj | o_proj | gate_up_proj | down_proj | w13
    bytes: int  # what the CMO really moves (after ratio, cap and the 0-means-whole rule)
    weight_bytes: int  # the whole per-device weight


@lru_cache(maxsize=64)
def _load_cached(name: str) -> ModelSpec:
    return load_model(name)


def spec_of(setup: Setup) -> ModelSpec:
    """The model spec behind `setup.model`."""
    return setup.model if isinstance(setup.model, ModelSpec) else _load_cached(setup.model)


def _weights(setup: Setup) -> tuple[ModelSpec, dict[str, int]]:
    spec = spec_of(setup)
    return spec, weight_bytes(spec, setup.tp, setup.ep)


def o_proj_op(setup: Setup) -> str:
    """The custom row-parallel op o_proj runs here: a ROW_OP_KEYS name, "flashcomm1", or ""."""
    return setup.row_op or ("flashcomm1" if setup.flashcomm1 else "")


def _o_hooks(spec: ModelSpec, setup: Setup) -> tuple[bool, bool]:
    """Whether the attention "o" hook fires on (o_proj, down_proj)."""
    if setup.row_op == "matmul_allreduce":
        # Its fused matmul + all-reduce runs every row-parallel linear without the quant method.
        return False, False
    down = not spec.has_experts and spec.mlp_quant == STATIC_W8A8
    return spec.o_quant == STATIC_W8A8, down


def _attn_o_weight(spec: ModelSpec, setup: Setup) -> str:
    """The weight attn.o is tuned for: o_proj, or down_proj when only that one has the hook."""
    on_o, on_down = _o_hooks(spec, setup)
    return "down_proj" if on_down and not on_o else "o_proj"


def _cap(site: str) -> int | None:
    return MLP_CAP_BYTES if site.startswith("mlp.") else None


def _sized(whole: int, ratio: float, cap: int | None) -> int:
    # Same arithmetic as 0.23: bytes x ratio in floating point, clipped, then truncated.
    size = whole * ratio
    if cap is not None and size > cap:
        size = cap
    return int(size)


def cmo_bytes(whole: int, ratio: float, cap: int | None) -> int:
    """Bytes one CMO moves for `ratio` of a `whole`-byte weight, as 0.23 computes it."""
    n = _sized(whole, ratio, cap)
    # The prefetch op treats a size of 0 (or above the tensor) as the whole tensor.
    if n <= 0 or n > whole:
        return whole
    return n


# ---------------------------------------------------------------------------------------------
# Reading a config the way 0.23 does


@dataclass(frozen=True)
class _Read:
    enabled: bool
    ratios: dict[str, dict[str, float]]  # after dropping bad values and falling back to defaults
    on: dict[str, bool]  # module enable flags (before the per-model and per-forward gates)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read(config: Mapping[str, Any]) -> _Read:
    wpc = config.get("weight_prefetch_config") if isinstance(config, Mapping) else None
    if not isinstance(wpc, Mapping):
        wpc = {}
    # Only "enabled" is read; "enable" (a common misspelling) is ignored by 0.23.
    enabled = bool(wpc.get("enabled", False))
    table = wpc.get("prefetch_ratio")
    if not isinstance(table, Mapping):
        table = {}
    ratios: dict[str, dict[str, float]] = {}
    on: dict[str, bool] = {}
    for module, defaults in VENDOR_DEFAULT_RATIOS.items():
        given = table.get(module)
        # 0.23 uses `given or defaults`: a missing or empty module gets the defaults.
        raw: Mapping[str, Any] = given if isinstance(given, Mapping) and given else defaults
        kept = {
            key: float(value)
            for key, value in raw.items()
            if _is_number(value) and 0.0 <= value <= 1.0
        }
        ratios[module] = kept
        on[module] = enabled and any(v > 0 for v in kept.values())
    return _Read(enabled=enabled, ratios=ratios, on=on)


def sequence_parallel(setup: Setup, num_tokens: int) -> bool:
    """True when flashcomm1's sequence-parallel comm runs in a forward of `num_tokens` tokens.

    Dense models switch it on only above SP_MIN_TOKENS, so a decode step keeps all-reduce and
    whole-batch norms; MoE models with flashcomm1 run it at every token count.
    """
    if not setup.flashcomm1:
        return False
    return spec_of(setup).is_moe or num_tokens > SP_MIN_TOKENS


def _mlp_gate_open(setup: Setup, num_tokens: int) -> bool:
    # Compiled, the branch is decided once, while dynamo traces the profile run of
    # max_num_batched_tokens tokens; vLLM drops the guards, so every later shape reuses that trace.
    # Graphs captured without compilation evaluate it at each capture size, like eager.
    if setup.traced:
        return setup.max_num_batched_tokens < MLP_TOKEN_LIMIT
    return num_tokens < MLP_TOKEN_LIMIT


def resolve_prefetches(
    config: Mapping[str, Any],
    setup: Setup,
    num_tokens: int,
    *,
    moe_fixed: bool = False,
) -> list[ResolvedPrefetch]:
    """The CMO prefetches one layer issues in a forward of `num_tokens` tokens, in issue order.

    Dense: attn.qkv(qkv_proj), attn.o(o_proj), mlp.gate_up, mlp.down, attn.o(down_proj).
    MoE: attn.qkv, attn.o(o_proj), and moe.gate_up(w13) only with `moe_fixed=True` — a what-if for
    a runtime whose MoE prefetch works; 0.23 never issues it.
    """
    spec, wb = _weights(setup)
    read = _read(config)
    out: list[ResolvedPrefetch] = []
    # Compiled out, nothing fires by the rules; a site a profile showed firing fires anyway.
    live = not setup.prefetch_compiled_out

    def add(
        site: str, weight: str, ratio: float, cap: int | None, gate: bool, seen: bool = True
    ) -> None:
        whole = wb.get(weight, 0)
        if whole > 0 and ((live and gate) or (seen and site in setup.observed)):
            out.append(ResolvedPrefetch(site, weight, cmo_bytes(whole, ratio, cap), whole))

    attn = read.ratios["attn"]
    o_on_o, o_on_down = _o_hooks(spec, setup)
    if read.on["attn"]:
        add("attn.qkv", "qkv_proj", attn.get("qkv", 0.0), None, spec.attn_quant == STATIC_W8A8)
        # Seen firing where the rules have no "o" hook at all, attn.o is taken to be o_proj's.
        add("attn.o", "o_proj", attn.get("o", 0.0), None, o_on_o, seen=o_on_o or not o_on_down)
    if not spec.has_experts:
        mlp = read.ratios["mlp"]
        if not spec.is_moe and read.on["mlp"]:
            gate = _mlp_gate_open(setup, num_tokens)
            # gate_up starts from o_proj's custom row-parallel op; plain o_proj has none.
            row_op = bool(o_proj_op(setup))
            add(
                "mlp.gate_up",
                "gate_up_proj",
                mlp.get("gate_up", 0.0),
                MLP_CAP_BYTES,
                gate and row_op,
            )
            add("mlp.down", "down_proj", mlp.get("down", 0.0), MLP_CAP_BYTES, gate)
        # down_proj is the same row-parallel class as o_proj, so the "o" hook fires there too,
        # with the attn.o ratio, uncapped, and at any token count.
        if read.on["attn"] and o_on_down:
            add("attn.o", "down_proj", attn.get("o", 0.0), None, True)
    elif read.on["moe"]:
        gate = moe_fixed and num_tokens >= MOE_TOKEN_THRESHOLD
        add("moe.gate_up", "w13", read.ratios["moe"].get("gate_up", 0.0), None, gate)
    return out


def site_weight_bytes(setup: Setup) -> dict[str, int]:
    """Per-device bytes of the weight each site's ratio multiplies (attn.o: o_proj); 0 = none."""
    spec, wb = _weights(setup)
    out = {site: wb.get(weight, 0) for site, weight in SITE_WEIGHT.items()}
    out["attn.o"] = wb[_attn_o_weight(spec, setup)]
    return out


def effective_bytes(config: Mapping[str, Any], setup: Setup) -> dict[str, int]:
    """Bytes the 0.23 runtime really prefetches per site per layer for this config (0 = none).

    Taken at decode (a forward of max_num_seqs tokens). attn.o counts the prefetch of the weight it
    is tuned for (o_proj), not its second firing on down_proj; see `resolve_prefetches` for that.
    """
    spec = spec_of(setup)
    o_weight = _attn_o_weight(spec, setup)
    out = dict.fromkeys(SITES, 0)
    for p in resolve_prefetches(config, setup, setup.max_num_seqs):
        if p.site == "attn.o" and p.weight != o_weight:
            continue
        out[p.site] = p.bytes
    return out


def _unhooked(linear: str, scheme: str) -> str:
    if scheme == BF16:
        what = f"{linear} is unquantized (BF16)"
    elif scheme == MIX_W8A8:
        what = (
            f"{linear} is {MIX_W8A8}, which 0.23 runs as static W8A8 only on the decode "
            "(KV-consumer) nodes of a disaggregated deployment"
        )
    else:
        what = f"{linear} is {scheme}"
    return f"{what}, and 0.23 has the attention prefetch hook only in static W8A8 linears."


def inert_sites(setup: Setup) -> dict[str, str]:
    """Sites whose ratio changes nothing on this setup -> the reason, in one sentence.

    A site in `setup.observed` (a profile showed it firing) is never inert here.
    """
    out = _rule_inert(setup)
    if setup.prefetch_compiled_out:
        mode = setup.graph
        reason = (
            f"Compiled {mode.cudagraph_mode} graphs go through vllm-ascend's fusion-pass "
            "compiler, whose AOT-autograd trace drops the prefetch ops as dead code (they return "
            "nothing and are not marked side-effectful); see docs/vllm-ascend-0.23.md."
        )
        out = {site: out.get(site, reason) for site in SITES}
    for site in setup.observed:
        out.pop(site, None)
    return out


def _rule_inert(setup: Setup) -> dict[str, str]:
    spec = spec_of(setup)
    out: dict[str, str] = {}
    if spec.attn_quant != STATIC_W8A8:
        out["attn.qkv"] = _unhooked("qkv_proj", spec.attn_quant)
    o_on_o, o_on_down = _o_hooks(spec, setup)
    if setup.row_op == "matmul_allreduce":
        out["attn.o"] = (
            "enable_matmul_allreduce runs o_proj and down_proj as a fused matmul + all-reduce "
            "that skips the quant method, where 0.23's attention prefetch hook lives."
        )
    elif not o_on_o and not o_on_down:
        out["attn.o"] = _unhooked("o_proj", spec.o_quant)
    if spec.is_moe:
        if spec.has_experts:
            reason = "0.23 turns the dense-MLP prefetch off for MoE models."
        else:
            reason = (
                "0.23 turns the dense-MLP prefetch off for MoE models, and a key of this "
                "model's config.json mentions experts, which is how 0.23 recognises one."
            )
        out["mlp.gate_up"] = reason
        out["mlp.down"] = reason
    if spec.has_experts:
        out["moe.gate_up"] = (
            "0.23 never issues the MoE prefetch: its layer index stays at 0 on MoE models."
        )
        return out
    out["moe.gate_up"] = "A dense model has no experts to prefetch."
    if spec.is_moe:
        return out
    mlp_reason = ""
    if setup.traced and setup.max_num_batched_tokens >= MLP_TOKEN_LIMIT:
        mlp_reason = (
            f"In graph mode ({setup.graph.cudagraph_mode}, VLLM_COMPILE) the MLP prefetch is "
            f"traced out: dynamo traces the profile run of max_num_batched_tokens="
            f"{setup.max_num_batched_tokens} >= {MLP_TOKEN_LIMIT} tokens once and vLLM drops "
            "the guards."
        )
    elif setup.max_num_seqs >= MLP_TOKEN_LIMIT:
        mlp_reason = (
            f"Decode batches of max_num_seqs={setup.max_num_seqs} reach the "
            f"{MLP_TOKEN_LIMIT}-token limit at which 0.23 skips the MLP prefetch."
        )
    if mlp_reason:
        out["mlp.gate_up"] = mlp_reason
        out["mlp.down"] = mlp_reason
    elif not o_proj_op(setup):
        out["mlp.gate_up"] = (
            "The gate_up prefetch starts only from a custom row-parallel op on o_proj "
            "(enable_flashcomm1, enable_matmul_allreduce, flashcomm2 or o-proj TP); none is on."
        )
    return out


def active_sites(setup: Setup) -> tuple[str, ...]:
    """Sites whose ratio can change what runs on this setup, in SITES order."""
    inert = inert_sites(setup)
    return tuple(site for site in SITES if site not in inert)


# ---------------------------------------------------------------------------------------------
# The rest of the additional-config, and what 0.23 refuses to start with


def _positive_int_key(value: Any, key: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AutotuneError(f"additional-config {key} must be an integer >= 0, got {value!r}")
    return value > 0


def row_op_of(extra: Mapping[str, Any]) -> str:
    """The custom row-parallel op additional-config keys other than flashcomm1 put on o_proj.

    A ROW_OP_KEYS name, the first in 0.23's order of precedence that is switched on, or "".
    """
    ftp = extra.get("finegrained_tp_config")
    if ftp is not None and not isinstance(ftp, Mapping):
        raise AutotuneError(
            f"additional-config finegrained_tp_config must be a JSON object, got {ftp!r}"
        )
    oproj_tp = extra.get("oproj_tensor_parallel_size")  # older spelling, at the top level
    if isinstance(ftp, Mapping):
        oproj_tp = ftp.get("oproj_tensor_parallel_size", oproj_tp)
    if _positive_int_key(oproj_tp, ROW_OP_KEYS["oproj_tp"]):
        return "oproj_tp"
    matmul_allreduce = extra.get("enable_matmul_allreduce", False)
    if not isinstance(matmul_allreduce, bool):
        raise AutotuneError(
            f"additional-config enable_matmul_allreduce must be true or false, "
            f"got {matmul_allreduce!r}"
        )
    if matmul_allreduce:
        return "matmul_allreduce"
    if _positive_int_key(extra.get("enable_flashcomm2_parallel_size"), ROW_OP_KEYS["flashcomm2"]):
        return "flashcomm2"
    return ""


_FC1_OFF = "turn enable_flashcomm1 off (--no-flashcomm1, or false in --additional-config)"


def check_setup(setup: Setup) -> None:
    """Refuse, in one line, a deployment that makes 0.23's `vllm serve` abort at start-up.

    0.23 asserts (platform.py) that flashcomm1 runs with TP > 1, and with expert parallelism on
    a model it treats as MoE.
    """
    if setup.row_op and setup.row_op not in ROW_OP_KEYS:
        raise AutotuneError(
            f"unknown row-parallel op {setup.row_op!r}; use one of {', '.join(ROW_OP_KEYS)}"
        )
    if not setup.flashcomm1:
        return
    if setup.tp <= 1:
        raise AutotuneError(
            "enable_flashcomm1 needs tensor parallelism: vllm-ascend 0.23 aborts `vllm serve` "
            f"with flashcomm1 at --tp 1; pass --tp 2 or more, or {_FC1_OFF}"
        )
    spec = spec_of(setup)
    if spec.is_moe and setup.ep <= 1:
        raise AutotuneError(
            f"enable_flashcomm1 on the MoE model {spec.name} needs expert parallelism: "
            f"vllm-ascend 0.23 aborts `vllm serve` without it; pass --ep N (N > 1), or {_FC1_OFF}"
        )


# ---------------------------------------------------------------------------------------------
# Search space: bytes <-> ratios


def _site_whole(site: str, setup: Setup) -> int:
    if site not in SITE_WEIGHT:
        raise AutotuneError(f"unknown prefetch site {site!r}; use one of {', '.join(SITES)}")
    return site_weight_bytes(setup)[site]


def _ratio_of(k: int) -> float:
    return float(round(k / _RATIO_SCALE, RATIO_DECIMALS))


def _smallest_ratio(whole: int, nbytes: int, cap: int | None) -> float:
    """Smallest ratio of at most RATIO_DECIMALS decimals that moves >= nbytes (nbytes >= 1)."""
    k = max(1, -(-nbytes * _RATIO_SCALE // whole))  # ceil in exact arithmetic
    # The runtime multiplies in floating point and truncates; step to the exact boundary. The
    # 0-means-whole rule is left out here: it would make tiny ratios look big enough.
    while k < _RATIO_SCALE and _sized(whole, _ratio_of(k), cap) < nbytes:
        k += 1
    while k > 1 and _sized(whole, _ratio_of(k - 1), cap) >= nbytes:
        k -= 1
    return _ratio_of(k)


def near_off_ratio(site: str, setup: Setup) -> float:
    """The ratio that makes this site's prefetch as small as it usefully gets (never 0)."""
    whole = _site_whole(site, setup)
    if whole <= 0:
        return NEAR_OFF_RATIO
    # NEAR_OFF_RATIO unless it would truncate to 0 bytes, which 0.23 reads as the whole weight.
    return max(NEAR_OFF_RATIO, _smallest_ratio(whole, 1, _cap(site)))


def effective_range(site: str, setup: Setup) -> tuple[int, int]:
    """Smallest and largest distinct bytes one layer's prefetch at `site` can move when on.

    The smallest is the near-off prefetch; the largest is the whole weight, or 18 MiB for mlp.*.
    (0, 0) when the model has no such weight.
    """
    whole = _site_whole(site, setup)
    if whole <= 0:
        return (0, 0)
    cap = _cap(site)
    high = min(whole, cap) if cap is not None else whole
    return (cmo_bytes(whole, near_off_ratio(site, setup), cap), high)


def ratio_for_bytes(site: str, nbytes: int, setup: Setup) -> float:
    """The smallest ratio (<= 6 decimals) whose prefetch moves at least `nbytes` at `site`.

    `nbytes` at or below the near-off bytes (0 included) gives the near-off ratio, never 0,
    because 0.23 reads a ratio of 0 as the whole weight.
    """
    whole = _site_whole(site, setup)
    if whole <= 0:
        raise AutotuneError(f"{site} has no weight on {spec_of(setup).name}; leave it out")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise AutotuneError(f"bytes for {site} must be an integer >= 0, got {nbytes!r}")
    low, high = effective_range(site, setup)
    if nbytes > high:
        raise AutotuneError(
            f"{site} can prefetch at most {high} bytes per layer on this setup, asked {nbytes}"
        )
    if nbytes <= low:
        return near_off_ratio(site, setup)
    if nbytes == whole:
        return 1.0
    return _smallest_ratio(whole, nbytes, _cap(site))


def snap_bytes(site: str, nbytes: int, setup: Setup) -> int:
    """The bytes a compiled config really moves at `site` when asked for `nbytes` (module on)."""
    whole = _site_whole(site, setup)
    return cmo_bytes(whole, ratio_for_bytes(site, nbytes, setup), _cap(site))


# ---------------------------------------------------------------------------------------------
# Compiling configs


def _check_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise AutotuneError("extra additional-config keys must be a JSON object")
    if "weight_prefetch_config" in extra:
        raise AutotuneError(
            "extra additional-config keys must not contain weight_prefetch_config; "
            "the tuner writes it"
        )
    return dict(extra)


def compile_config(
    bytes_by_site: Mapping[str, int], setup: Setup, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The exact --additional-config JSON (every key explicit) that prefetches these bytes.

    A site left out keeps its vendor default ratio. A module is written all-zero (the only way
    0.23 turns it off) when every site of it that is given asks for 0 bytes and no site of it that
    can matter on this setup is left out. Otherwise a 0 becomes the near-off ratio.
    """
    extras = _check_extra(extra)
    for site, nbytes in bytes_by_site.items():
        if site not in SITE_WEIGHT:
            raise AutotuneError(f"unknown prefetch site {site!r}; use one of {', '.join(SITES)}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise AutotuneError(f"bytes for {site} must be an integer >= 0, got {nbytes!r}")
    inert = inert_sites(setup)
    wholes = site_weight_bytes(setup)
    table: dict[str, dict[str, float]] = {}
    for module, keys in MODULE_KEYS.items():
        sites = [f"{module}.{key}" for key in keys]
        given = [s for s in sites if s in bytes_by_site]
        active = [s for s in sites if s not in inert]
        off = (
            bool(given)
            and all(bytes_by_site[s] == 0 for s in given)
            and all(s in bytes_by_site for s in active)
        )
        ratios: dict[str, float] = {}
        for key, site in zip(keys, sites, strict=True):
            if off:
                ratios[key] = 0.0
            elif site not in bytes_by_site:
                ratios[key] = VENDOR_DEFAULT_RATIOS[module][key]
            elif wholes[site] <= 0:
                if bytes_by_site[site] > 0:
                    raise AutotuneError(
                        f"{site} has no weight on {spec_of(setup).name}; "
                        "give it 0 bytes or leave it out"
                    )
                ratios[key] = NEAR_OFF_RATIO
            else:
                ratios[key] = ratio_for_bytes(site, bytes_by_site[site], setup)
        table[module] = ratios
    return {
        "weight_prefetch_config": {"enabled": True, "prefetch_ratio": table},
        **extras,
    }


def disabled_config(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The baseline: prefetch off, every other key as in the trials."""
    return {"weight_prefetch_config": {"enabled": False}, **_check_extra(extra)}


def vendor_default_config(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Prefetch on with 0.23's default ratios, written out in full."""
    table = {module: dict(ratios) for module, ratios in VENDOR_DEFAULT_RATIOS.items()}
    return {
        "weight_prefetch_config": {"enabled": True, "prefetch_ratio": table},
        **_check_extra(extra),
    }


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise AutotuneError when `config` is not a usable additional-config for 0.23.

    Stricter than 0.23, which silently ignores or drops what we refuse here.
    """
    if not isinstance(config, Mapping):
        raise AutotuneError(f"additional-config must be a JSON object, not {type(config).__name__}")
    if "weight_prefetch_config" not in config:
        if {"enabled", "enable", "prefetch_ratio"} & set(config):
            raise AutotuneError(
                "additional-config has prefetch keys at the top level; nest them as "
                '{"weight_prefetch_config": {...}}'
            )
        return
    wpc = config["weight_prefetch_config"]
    if not isinstance(wpc, Mapping):
        raise AutotuneError(
            f"weight_prefetch_config must be a JSON object, not {type(wpc).__name__}"
        )
    if "enable" in wpc:
        raise AutotuneError(
            'weight_prefetch_config has "enable", which 0.23 ignores; spell it "enabled"'
        )
    unknown = sorted(set(wpc) - {"enabled", "prefetch_ratio"})
    if unknown:
        raise AutotuneError(
            f"weight_prefetch_config has unknown key(s) {', '.join(map(repr, unknown))}; "
            'only "enabled" and "prefetch_ratio" are read'
        )
    if "enabled" in wpc and not isinstance(wpc["enabled"], bool):
        raise AutotuneError(
            f"weight_prefetch_config.enabled must be true or false, got {wpc['enabled']!r}"
        )
    if "prefetch_ratio" not in wpc:
        return
    table = wpc["prefetch_ratio"]
    if not isinstance(table, Mapping):
        raise AutotuneError(
            "weight_prefetch_config.prefetch_ratio must be a JSON object, "
            f"not {type(table).__name__}"
        )
    for module, ratios in table.items():
        if module not in MODULE_KEYS:
            raise AutotuneError(
                f"prefetch_ratio has unknown module {module!r}; use attn, mlp or moe"
            )
        if not isinstance(ratios, Mapping):
            raise AutotuneError(
                f"prefetch_ratio.{module} must be a JSON object of ratios, "
                f"not {type(ratios).__name__}"
            )
        for key, value in ratios.items():
            if key not in MODULE_KEYS[module]:
                allowed = ", ".join(MODULE_KEYS[module])
                raise AutotuneError(
                    f"prefetch_ratio.{module} has unknown key {key!r}; use {allowed}"
                )
            if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise AutotuneError(
                    f"prefetch_ratio.{module}.{key} = {value!r} must be a number in [0, 1] "
                    "(0.23 silently drops other values and prefetches the whole weight)"
                )


# ---------------------------------------------------------------------------------------------
# Version check


def parse_version(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a vllm-ascend version like 0.23.0, 0.23.1rc1 or 0.24.0rc1."""
    match = _VERSION_RE.match(version)
    if match is None:
        raise AutotuneError(f"cannot read the vllm-ascend version {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def feature_supported(version: str) -> bool:
    """True for the vllm-ascend versions whose weight_prefetch_config this tool models (0.23.x)."""
    return parse_version(version)[:2] == (0, 23)


def check_vllm_ascend_version() -> str:
    """Return the installed vllm-ascend version; AutotuneError if absent or without the feature."""
    version = None
    for dist in ("vllm-ascend", "vllm_ascend"):
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    if version is None:
        raise AutotuneError(
            "vllm-ascend is not installed here; run on an NPU host with vllm-ascend 0.23.x "
            "or use --backend simulate"
        )
    if feature_supported(version):
        return version
    if parse_version(version)[:2] >= (0, 24):
        raise AutotuneError(
            f"vllm-ascend {version} is installed, but weight_prefetch_config was removed after "
            "0.23 (newer versions ignore it); install vllm-ascend==0.23.*"
        )
    raise AutotuneError(
        f"vllm-ascend {version} is older than 0.23, whose weight-prefetch behaviour this tool "
        "models; install vllm-ascend==0.23.*"
    )
