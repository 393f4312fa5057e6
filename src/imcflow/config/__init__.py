"""Chip configuration: dataclasses, presets and command-line overrides."""

from imcflow.config.chip import (AdcConfig, AnalogConfig, ArrayConfig, BufferConfig, ChipConfig,
                                 ClockConfig, EnergyTable, IoConfig, OcnConfig, SimdConfig,
                                 WeightLoadConfig)
from imcflow.config.options import apply_override, apply_overrides
from imcflow.config.presets import IDEAL, JSSC2022, PRESETS, TINY, get_preset

__all__ = ["AdcConfig", "AnalogConfig", "ArrayConfig", "BufferConfig", "ChipConfig", "ClockConfig",
           "EnergyTable", "IoConfig", "OcnConfig", "SimdConfig", "WeightLoadConfig",
           "apply_override", "apply_overrides", "IDEAL", "JSSC2022", "PRESETS", "TINY", "get_preset"]
