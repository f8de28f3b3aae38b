"""Hardware presets and TOML overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.hardware import (
    FAMILY_FACTORS,
    FAMILY_RANGES,
    PRESETS,
    Hardware,
    hardware_family,
    load_hardware,
)


def test_presets_are_complete_and_positive() -> None:
    assert set(PRESETS) == {"910B2", "910B3", "910B4", "A3"}
    for hw in PRESETS.values():
        for f in dataclasses.fields(Hardware):
            value = getattr(hw, f.name)
            if f.name != "name":
                assert value > 0, (hw.name, f.name)
        # A decode matmul never beats HBM peak; an L2-resident read beats HBM.
        assert hw.mm_gbs <= hw.hbm_peak_gbs < hw.l2_read_gbs
        assert hw.c_eff_bytes < hw.l2_mib * 2**20
        assert "estimated" in hw.summary()


def test_sku_differences() -> None:
    b2, b3, b4 = PRESETS["910B2"], PRESETS["910B3"], PRESETS["910B4"]
    assert b4.l2_mib == b2.l2_mib / 2 and b4.hbm_peak_gbs == b2.hbm_peak_gbs / 2
    # 20 cores cannot pull the full HBM rate: 910B3's matmuls are per-core limited.
    assert b3.mm_gbs < b2.mm_gbs
    assert b3.peak_int8_tops < b2.peak_int8_tops


def test_load_by_name_is_case_insensitive() -> None:
    assert load_hardware("910b3") is PRESETS["910B3"]
    assert load_hardware("a3") is PRESETS["A3"]


def test_unknown_name_lists_presets() -> None:
    with pytest.raises(AutotuneError, match=r"910B2, 910B3, 910B4, A3"):
        load_hardware("910C")


def test_toml_overrides_a_base(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('base = "910B3"\ncmo_gbs = 1000\nl2_usable_fraction = 0.25\n')
    hw = load_hardware(path)
    assert hw.cmo_gbs == 1000.0
    assert hw.l2_usable_fraction == 0.25
    assert hw.cube_cores == PRESETS["910B3"].cube_cores
    assert hw.name == "910B3+lab"


def test_toml_default_base_and_int_fields(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('name = "mine"\ncube_cores = 22\n')
    hw = load_hardware(str(path))
    assert hw.name == "mine" and hw.cube_cores == 22 and isinstance(hw.cube_cores, int)
    assert hw.hbm_peak_gbs == PRESETS["910B2"].hbm_peak_gbs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bogus = 1\n", r"unknown field\(s\) bogus; valid fields: base, name, cube_cores"),
        ('base = "nope"\n', r"unknown hardware 'nope'"),
        ('cmo_gbs = "fast"\n', r"'cmo_gbs' must be a number"),
        ("cmo_gbs = -1\n", r"'cmo_gbs' must be positive"),
        ("cube_cores = 2.5\n", r"'cube_cores' must be an integer"),
        ("eff_cube = 1.5\n", r"'eff_cube' must be at most 1"),
        ("cmo_gbs = \n", r"invalid TOML"),
    ],
)
def test_bad_toml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(AutotuneError, match=message):
        load_hardware(path)


def test_missing_toml() -> None:
    with pytest.raises(AutotuneError, match="file not found"):
        load_hardware("/nonexistent/hw.toml")


def test_hardware_family_draws_each_estimate_within_its_documented_range() -> None:
    family = hardware_family(30, 7)
    assert family == hardware_family(30, 7)  # same seed, same sets
    assert family != hardware_family(30, 8)
    for hw in family:
        base = PRESETS[hw.name.split("~")[0]]
        assert (hw.cube_cores, hw.l2_mib) == (base.cube_cores, base.l2_mib)  # ini values stay
        for name, (lo, hi) in FAMILY_FACTORS.items():
            ratio = getattr(hw, name) / getattr(base, name)
            if name in ("mm_gbs", "vec_gbs", "eff_cube"):
                assert ratio <= hi + 1e-9  # clamped below the HBM peak / at 1
            else:
                assert lo - 1e-9 <= ratio <= hi + 1e-9, name
        for name, (lo, hi) in FAMILY_RANGES.items():
            assert lo <= getattr(hw, name) <= hi
        assert hw.mm_gbs <= hw.hbm_peak_gbs and hw.eff_cube <= 1.0
    # Fields vary independently: no two fields move in lockstep across the family.
    syncs = [hw.t_sync_us for hw in family]
    cmos = [hw.cmo_gbs / PRESETS[hw.name.split("~")[0]].cmo_gbs for hw in family]
    assert len(set(syncs)) == len(family) and len(set(cmos)) == len(family)
