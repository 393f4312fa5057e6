"""Seeded analog non-idealities of the CIMA columns and ADCs (``mode="analog"``).

One function draws every random number, so that the reference and the fast implementation (and
the convolution kernels, tile by tile) see the same values:

    rng = numpy.random.Generator(numpy.random.PCG64(seed))
    gain      = 1 + column_gain_sigma       * rng.standard_normal(n_cols)            # per column
    offset    =     column_offset_sigma_lsb * rng.standard_normal(n_cols)            # per column, LSB
    noise_lsb =     adc_noise_rms_lsb       * rng.standard_normal((batch, x_bits, n_cols))

drawn in that order. Physical column ``c = o * w_bits + j`` holds bit ``j`` of output ``o``.
The code of one conversion (count ``k`` of rows where input bit and cell bit are both 1) is::

    code = clip(floor(k * 2**adc_bits * gain / full_scale + offset + noise + 1/2), 0, 2**adc_bits - 1)

evaluated in float64 in exactly that order of operations (see :func:`analog_code`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imcflow.config.chip import AnalogConfig


@dataclass(frozen=True, eq=False)
class AnalogDraws:
    """Random column gains, offsets and per-conversion noise for one MVM (float64 arrays)."""

    gain: np.ndarray
    """(n_cols,) relative gain of each physical column (1 = ideal)."""
    offset_lsb: np.ndarray
    """(n_cols,) fixed offset of each column, in ADC LSB."""
    noise_lsb: np.ndarray
    """(batch, x_bits, n_cols) noise of each conversion, in ADC LSB."""


class AnalogStream:
    """The draws of one array, in order: gains and offsets at construction, then the noise of
    successive input vectors, batch after batch (the same values as one big draw)."""

    def __init__(self, analog: AnalogConfig, seed: int, x_bits: int, n_cols: int):
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._analog, self._shape = analog, (x_bits, n_cols)
        self.gain = 1.0 + analog.column_gain_sigma * self._rng.standard_normal(n_cols)
        self.offset_lsb = analog.column_offset_sigma_lsb * self._rng.standard_normal(n_cols)

    def noise_lsb(self, batch: int) -> np.ndarray:
        """Noise (batch, x_bits, n_cols), in LSB, of the next ``batch`` input vectors."""
        return self._analog.adc_noise_rms_lsb * self._rng.standard_normal((batch, *self._shape))


def draw_analog(analog: AnalogConfig, seed: int, batch: int, x_bits: int, n_cols: int) -> AnalogDraws:
    """Draw gains, offsets and noise for ``batch`` input vectors of ``x_bits`` bit-planes on
    ``n_cols`` physical columns, deterministically from ``seed`` (order: gain, offset, noise)."""
    stream = AnalogStream(analog, seed, x_bits, n_cols)
    return AnalogDraws(gain=stream.gain, offset_lsb=stream.offset_lsb, noise_lsb=stream.noise_lsb(batch))


def analog_code(k, gain, offset_lsb, noise_lsb, full_scale: int, adc_bits: int):
    """ADC code(s) of column count(s) ``k`` under gain, offset and noise (numpy, broadcasting).

    Works on python floats and on arrays alike; the order of operations is fixed so that every
    caller rounds identically."""
    return analog_codes_f64(k, gain, offset_lsb, noise_lsb, full_scale, adc_bits).astype(np.int64)


def analog_codes_f64(k, gain, offset_lsb, noise_lsb, full_scale: int, adc_bits: int) -> np.ndarray:
    """:func:`analog_code` as float64 codes, computed in one new buffer of ``k``'s broadcast shape
    with in-place operations: the same operations in the same order, so the same codes, without
    a temporary array per operation (the analog mode's hot path)."""
    levels = float(1 << adc_bits)
    v = np.array(k, dtype=np.float64)
    v *= levels
    v *= gain
    v /= full_scale
    v += offset_lsb
    v += noise_lsb
    v += 0.5
    np.floor(v, out=v)
    return np.clip(v, 0, levels - 1, out=v)
