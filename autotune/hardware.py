"""Hardware presets for the simulator: one Ascend die's bandwidths, fixed costs and cache size.

Every value is an ESTIMATE (no datasheet or measurement backs it): vendor ini files give core
counts, clocks and L2 sizes; bandwidths, kernel floors and efficiencies are modelling choices to be
calibrated against a real profile. A TOML file can override any field of a named preset.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune._io import read_text
from autotune.errors import AutotuneError

MIB = 1024 * 1024
GB = 1e9  # bandwidths are in GB/s (10^9 bytes per second)


@dataclass(frozen=True)
class Hardware:
    """One die as the simulator sees it. Units: GB/s, µs, MiB, TOPS. All values are estimates."""

    name: str
    cube_cores: int  # AI Cores (cube units); ini value
    vector_cores: int  # AIV cores; ini value
    clock_ghz: float  # cube clock [est for B2/B3/B4]
    hbm_peak_gbs: float  # B_peak: HBM peak bandwidth [est]
    mm_gbs: float  # B_mm: HBM bandwidth a skinny decode matmul achieves [est]
    l2_read_gbs: float  # B_L2: matmul read bandwidth from L2-resident weights [est]
    cmo_gbs: float  # B_cmo: CMO prefetch streaming rate into L2 [est]
    vec_gbs: float  # B_vec: achieved bandwidth of a large vector kernel [est]
    t0_vec_us: float  # fixed floor of a vector kernel [est]
    t0_mm_us: float  # fixed cost of a matmul kernel [est]
    gap_graph_us: float  # gap between consecutive kernels in ACL graph mode [est]
    gap_eager_us: float  # gap between consecutive kernels in eager mode [est]
    t_sync_us: float  # critical-path cost of one prefetch's event record + join [est]
    t0_cmo_us: float  # fixed cost of one CMO task on the prefetch stream [est]
    eff_cube: float  # fraction of int8 cube peak a decode GEMM reaches [est]
    t_comm_us: float  # one small all-gather / reduce-scatter / all-reduce on HCCS [est]
    t_dispatch_us: float  # MoE token dispatch at decode batch sizes [est]
    t_combine_us: float  # MoE token combine [est]
    l2_mib: float  # L2 cache size per die; ini value
    l2_usable_fraction: float  # C_eff / L2: capacity prefetched-but-unused lines can hold [est]
    gamma: float  # eviction steepness: hit = (C_eff / resident)^gamma past C_eff [est]
    peak_int8_tops: float  # int8 cube peak = cores x 8192 MAC x 2 x clock [est, derived]
    step_overhead_us: float  # host scheduling + sampling gap per decode step [est]

    @property
    def c_eff_bytes(self) -> float:
        """Usable L2 capacity for prefetched lines, in bytes."""
        return self.l2_usable_fraction * self.l2_mib * MIB

    def summary(self) -> str:
        """One line naming the assumptions that drive the prefetch model."""
        return (
            f"{self.name} (estimated): HBM {self.hbm_peak_gbs:.0f} GB/s, "
            f"matmul {self.mm_gbs:.0f} GB/s, "
            f"L2 read {self.l2_read_gbs:.0f} GB/s, CMO {self.cmo_gbs:.0f} GB/s, "
            f"L2 {self.l2_mib:.0f} MiB (usable {self.l2_usable_fraction:.0%}), "
            f"sync {self.t_sync_us:.1f} µs/prefetch, comm {self.t_comm_us:.0f} µs"
        )


def _preset(
    name: str,
    *,
    cores: int,
    clock_ghz: float,
    hbm_peak_gbs: float,
    l2_mib: float,
    vec_gbs: float = 1200.0,
) -> Hardware:
    """Derive a preset from the few per-SKU facts, with the perf-model rules (all estimates)."""
    per_core_hbm = cores * 32 * clock_ghz  # ini ddr_rate 32 B/cycle/core, in GB/s
    return Hardware(
        name=name,
        cube_cores=cores,
        vector_cores=2 * cores,
        clock_ghz=clock_ghz,
        hbm_peak_gbs=hbm_peak_gbs,
        mm_gbs=min(0.80 * hbm_peak_gbs, per_core_hbm),
        l2_read_gbs=0.85 * cores * 110 * clock_ghz,  # ini l2_read_rate 110 B/cycle/core
        cmo_gbs=0.85 * hbm_peak_gbs,
        vec_gbs=min(vec_gbs, 0.75 * hbm_peak_gbs),
        t0_vec_us=3.0,
        t0_mm_us=4.0,
        gap_graph_us=1.0,
        gap_eager_us=2.0,
        t_sync_us=1.5,
        t0_cmo_us=0.5,
        eff_cube=0.6,
        t_comm_us=12.0,
        t_dispatch_us=60.0,
        t_combine_us=60.0,
        l2_mib=l2_mib,
        l2_usable_fraction=0.5,
        gamma=1.0,
        peak_int8_tops=cores * 8192 * 2 * clock_ghz * 1e9 / 1e12,
        step_overhead_us=900.0,
    )


PRESETS: dict[str, Hardware] = {
    "910B2": _preset("910B2", cores=24, clock_ghz=1.8, hbm_peak_gbs=1600.0, l2_mib=192.0),
    "910B3": _preset("910B3", cores=20, clock_ghz=1.8, hbm_peak_gbs=1600.0, l2_mib=192.0),
    # Half the HBM stacks and half the L2 of the 64 GB parts.
    "910B4": _preset("910B4", cores=20, clock_ghz=1.75, hbm_peak_gbs=800.0, l2_mib=96.0),
    # One die of an A3 (910C) package, Ascend910_9382 ini: 24 cores at 1.8 GHz, 192 MiB L2.
    "A3": _preset("A3", cores=24, clock_ghz=1.8, hbm_peak_gbs=1600.0, l2_mib=192.0),
}

_FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(Hardware) if f.name != "name"
}


def _preset_named(name: str, where: str) -> Hardware:
    for key, hw in PRESETS.items():
        if key.lower() == name.strip().lower():
            return hw
    raise AutotuneError(
        f"{where}: unknown hardware {name!r}; valid presets: {', '.join(PRESETS)} "
        "(or a .toml file overriding one of them)"
    )


def _coerce(name: str, value: Any, where: str) -> int | float:
    """Check one TOML override value against the field's type and range."""
    want_int = _FIELDS[name].type in (int, "int")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AutotuneError(f"{where}: field {name!r} must be a number, got {value!r}")
    if want_int and not (isinstance(value, int) or float(value).is_integer()):
        raise AutotuneError(f"{where}: field {name!r} must be an integer, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and name not in _MAY_BE_ZERO):
        raise AutotuneError(f"{where}: field {name!r} must be positive, got {value!r}")
    if name in ("eff_cube", "l2_usable_fraction") and value > 1:
        raise AutotuneError(f"{where}: field {name!r} must be at most 1, got {value!r}")
    return int(value) if want_int else float(value)


# Fixed costs that can legitimately be switched off in a what-if file.
_MAY_BE_ZERO = frozenset(
    {
        "gap_graph_us",
        "gap_eager_us",
        "t_sync_us",
        "t_comm_us",
        "t_dispatch_us",
        "t_combine_us",
        "step_overhead_us",
        "t0_vec_us",
        "t0_mm_us",
        "t0_cmo_us",
    }
)


def load_hardware(name_or_toml_path: str | Path) -> Hardware:
    """A preset by name (910B2, 910B3, 910B4, A3) or a TOML file overriding a preset's fields.

    The TOML file holds `base = "<preset>"` (default 910B2), an optional `name`, and any field of
    `Hardware` as a top-level key. Derived values are not recomputed: override them explicitly.
    """
    text = str(name_or_toml_path)
    path = Path(text)
    if not (text.lower().endswith(".toml") or (path.suffix and path.exists())):
        return _preset_named(text, "--hardware")
    where = f"hardware file {text}"
    toml_text = read_text(path, where)
    try:
        data = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        raise AutotuneError(f"{where}: invalid TOML ({exc})") from None
    base_name = data.pop("base", "910B2")
    if not isinstance(base_name, str):
        raise AutotuneError(f"{where}: 'base' must be a preset name such as \"910B2\"")
    base = _preset_named(base_name, where)
    name = data.pop("name", f"{base.name}+{path.stem}")
    if not isinstance(name, str):
        raise AutotuneError(f"{where}: 'name' must be a string")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise AutotuneError(
            f"{where}: unknown field(s) {', '.join(unknown)}; valid fields: base, name, "
            + ", ".join(_FIELDS)
        )
    overrides: dict[str, Any] = {key: _coerce(key, value, where) for key, value in data.items()}
    return dataclasses.replace(base, name=name, **overrides)


# How far each estimated field may plausibly be off, as (low, high) multipliers of the preset's
# value; drawn log-uniformly. Ini values (core counts, L2 size) and the derived int8 peak stay.
FAMILY_FACTORS: dict[str, tuple[float, float]] = {
    "clock_ghz": (0.9, 1.1),
    "hbm_peak_gbs": (0.5, 1.5),
    "mm_gbs": (0.5, 1.5),
    "l2_read_gbs": (0.5, 1.5),
    "cmo_gbs": (0.5, 1.5),
    "vec_gbs": (0.5, 1.5),
    "t0_vec_us": (0.3, 3.0),
    "t0_mm_us": (0.3, 3.0),
    "gap_graph_us": (0.3, 3.0),
    "gap_eager_us": (0.3, 3.0),
    "t_sync_us": (0.3, 3.0),
    "t0_cmo_us": (0.3, 3.0),
    "t_comm_us": (0.3, 3.0),
    "t_dispatch_us": (0.3, 3.0),
    "t_combine_us": (0.3, 3.0),
    "step_overhead_us": (0.3, 3.0),
    "eff_cube": (0.5, 1.5),
    "gamma": (0.5, 2.0),
}
# Fields drawn uniformly within absolute bounds instead.
FAMILY_RANGES: dict[str, tuple[float, float]] = {"l2_usable_fraction": (0.2, 0.9)}


def hardware_family(count: int, seed: int) -> list[Hardware]:
    """`count` hardware sets around the presets: each estimated field drawn independently.

    Multipliers come from FAMILY_FACTORS (log-uniform), absolute values from FAMILY_RANGES
    (uniform); the base preset is drawn too. The same (count, seed) gives the same sets.
    """
    rng = random.Random(seed)
    out: list[Hardware] = []
    for i in range(count):
        base = PRESETS[rng.choice(sorted(PRESETS))]
        changes: dict[str, Any] = {}
        for name, (lo, hi) in FAMILY_FACTORS.items():
            factor = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            changes[name] = getattr(base, name) * factor
        for name, (lo, hi) in FAMILY_RANGES.items():
            changes[name] = rng.uniform(lo, hi)
        changes["eff_cube"] = min(1.0, changes["eff_cube"])
        # A matmul or vector kernel cannot stream faster than HBM's peak.
        changes["mm_gbs"] = min(changes["mm_gbs"], 0.95 * changes["hbm_peak_gbs"])
        changes["vec_gbs"] = min(changes["vec_gbs"], 0.95 * changes["hbm_peak_gbs"])
        out.append(dataclasses.replace(base, name=f"{base.name}~f{seed}.{i}", **changes))
    return out
