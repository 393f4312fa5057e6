"""Chip configuration: presets valid, bad values raise ConfigError naming the field, overrides."""

import dataclasses

import pytest

from imcflow.config import (IDEAL, JSSC2022, PRESETS, TINY, AdcConfig, AnalogConfig, ArrayConfig, ChipConfig,
                            EnergyTable, apply_override, apply_overrides, get_preset)
from imcflow.errors import ConfigError, ImcflowError


def test_presets_are_valid_and_named():
    assert set(PRESETS) == {"jssc2022", "tiny", "ideal"}
    for name, chip in PRESETS.items():
        assert chip.name == name and get_preset(name) is chip and get_preset(chip) is chip
        assert chip.n_cores == chip.grid_rows * chip.grid_cols
        assert all(fs <= chip.array.rows for fs in chip.adc.full_scales_rows)
    assert JSSC2022.n_cores == 16 and (JSSC2022.array.rows, JSSC2022.array.cols) == (1152, 256)
    assert JSSC2022.bitplane_s == pytest.approx(50e-9) and JSSC2022.cycles_per_bitplane == 10
    assert IDEAL.adc.lossless and not JSSC2022.adc.lossless
    assert dataclasses.replace(IDEAL, name="jssc2022", adc=JSSC2022.adc) == JSSC2022


@pytest.mark.parametrize("make,field", [
    (lambda: ArrayConfig(rows=0), "ArrayConfig.rows"),
    (lambda: ArrayConfig(cols=-4), "ArrayConfig.cols"),
    (lambda: AdcConfig(bits=0), "AdcConfig.bits"),
    (lambda: AdcConfig(rate_hz=0.0), "AdcConfig.rate_hz"),
    (lambda: AdcConfig(full_scales_rows=()), "AdcConfig.full_scales_rows"),
    (lambda: AdcConfig(full_scales_rows=(72, 0)), "AdcConfig.full_scales_rows"),
    (lambda: AnalogConfig(adc_noise_rms_lsb=-0.1), "AnalogConfig.adc_noise_rms_lsb"),
    (lambda: EnergyTable(column_eval_j=-1e-12), "EnergyTable.column_eval_j"),
    (lambda: ChipConfig(grid_rows=0), "ChipConfig.grid_rows"),
    (lambda: dataclasses.replace(TINY, grid_cols=-1), "ChipConfig.grid_cols"),
    (lambda: dataclasses.replace(JSSC2022.array, max_bits=0), "ArrayConfig.max_bits"),
])
def test_invalid_values_raise_config_error_naming_the_field(make, field):
    with pytest.raises(ConfigError, match=field) as info:
        make()
    assert isinstance(info.value, ImcflowError)


def test_replace_variants_are_new_frozen_objects():
    fast = dataclasses.replace(JSSC2022, adc=dataclasses.replace(JSSC2022.adc, rate_hz=40e6))
    assert fast.bitplane_s == pytest.approx(25e-9) and JSSC2022.adc.rate_hz == 20e6
    with pytest.raises(dataclasses.FrozenInstanceError):
        JSSC2022.adc.bits = 4  # type: ignore[misc]


def test_check_bits():
    JSSC2022.check_bits(1, "x_bits")
    JSSC2022.check_bits(8, "x_bits")
    for bad in (0, 9, 2.0, True):
        with pytest.raises(ConfigError, match="x_bits"):
            JSSC2022.check_bits(bad, "x_bits")


def test_overrides_good():
    chip = apply_overrides(JSSC2022, ["adc.rate_hz=40e6", "grid_rows=2", "adc.lossless=true",
                                      "adc.full_scales_rows=1152,288", "energy.column_eval_j=1e-12", "name=mine"])
    assert chip.adc.rate_hz == 40e6 and chip.grid_rows == 2 and chip.adc.lossless
    assert chip.adc.full_scales_rows == (1152, 288) and chip.energy.column_eval_j == 1e-12 and chip.name == "mine"
    assert chip.array == JSSC2022.array and JSSC2022.grid_rows == 4
    assert apply_overrides(TINY, []) is TINY


@pytest.mark.parametrize("assignment,match", [
    ("adc.foo=1", "AdcConfig has no field 'foo'"),
    ("nosuch.bits=1", "ChipConfig has no field 'nosuch'"),
    ("adc.rate_hz=fast", "cannot read 'fast' as float"),
    ("array.rows=1.5", "cannot read '1.5' as int"),
    ("adc.lossless=maybe", "cannot read 'maybe' as bool"),
    ("adc=1", "'adc' is a section"),
    ("grid_rows.x=1", "'grid_rows' is a field"),
    ("adc.rate_hz", "expected section.field=value"),
    ("array.rows=0", "ArrayConfig.rows = 0: must be > 0"),
])
def test_overrides_bad(assignment, match):
    with pytest.raises(ConfigError, match=match):
        apply_override(JSSC2022, assignment)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown chip preset 'jssc2021'.*jssc2022"):
        get_preset("jssc2021")
