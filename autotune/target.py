"""vllm-ascend 0.23 weight-prefetch semantics: sites, quirks, config compile/validate, version check.

Facts follow vllm-ascend 0.23.0's code, not its docs' intent (see README "What vllm-ascend 0.23 really does").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Setup:
    """What the runtime gates depend on, for one deployment."""

    model: str  # preset name or local model directory
    tp: int
    ep: int
    max_num_seqs: int
    flashcomm1: bool
    graph_mode: bool
    max_num_batched_tokens: int = 16384


def site_weight_bytes(setup: Setup) -> dict[str, int]:
    """Per-device int8 bytes of the weight each site's ratio multiplies (attn.o: o_proj)."""
    raise NotImplementedError


def effective_bytes(config: Mapping[str, Any], setup: Setup) -> dict[str, int]:
    """Bytes the 0.23 runtime really prefetches per site per layer for this config (0 = none)."""
    raise NotImplementedError


def inert_sites(setup: Setup) -> dict[str, str]:
    """Sites whose ratio changes nothing on this setup -> the reason, in one sentence."""
    raise NotImplementedError


def compile_config(
    bytes_by_site: Mapping[str, int], setup: Setup, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The exact --additional-config JSON (every key explicit) that prefetches these bytes."""
    raise NotImplementedError


def validate_config(config: Mapping[str, Any]) -> None:
    """Raise AutotuneError when `config` is not a usable additional-config for 0.23."""
    raise NotImplementedError


def check_vllm_ascend_version() -> str:
    """Return the installed vllm-ascend version; AutotuneError if absent or without the feature."""
    raise NotImplementedError
