"""Named chip presets: instances, not subclasses.

- ``jssc2022``: the chip of Jia et al., IEEE JSSC 57(1):198-211, 2022, at its measured operating
  point (0.8 V, 200 MHz digital clock, 20 MS/s ADCs).
- ``tiny``: a 2 x 2 grid of 72 x 32 arrays, for fast tests of tiling, placement and routing.
- ``ideal``: ``jssc2022`` with a lossless ADC (codes equal exact column counts).
"""

from __future__ import annotations

import dataclasses

from imcflow.config.chip import AdcConfig, ArrayConfig, BufferConfig, ChipConfig
from imcflow.errors import ConfigError

JSSC2022 = ChipConfig(name="jssc2022")

TINY = ChipConfig(
    name="tiny",
    grid_rows=2,
    grid_cols=2,
    array=ArrayConfig(rows=72, cols=32),
    adc=AdcConfig(full_scales_rows=(72, 36, 18, 9)),
    buffer=BufferConfig(input_bytes=2048, output_bytes=512, instruction_words=256),
)

IDEAL = dataclasses.replace(JSSC2022, name="ideal", adc=dataclasses.replace(JSSC2022.adc, lossless=True))

PRESETS: dict[str, ChipConfig] = {c.name: c for c in (JSSC2022, TINY, IDEAL)}


def get_preset(chip: str | ChipConfig) -> ChipConfig:
    """Return the preset called ``chip`` (or ``chip`` itself if it is already a ChipConfig)."""
    if isinstance(chip, ChipConfig):
        return chip
    try:
        return PRESETS[chip]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown chip preset {chip!r}: choose one of {', '.join(sorted(PRESETS))}") from None
