"""Peak throughput and energy efficiency, computed from a ChipConfig (never typed in).

At peak every core runs dense MVMs back to back on its whole array: each MVM uses all
``array.rows`` rows and ``array.cols // w_bits`` logical columns, and takes ``x_bits`` bit-planes
of ``chip.bitplane_s`` each. Peak efficiency counts array + ADC energy only (column evaluations
and row drives), as the paper's peak TOPS/W figure does; SIMD, buffers, network, control and
static power are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from imcflow.config.chip import ChipConfig


@dataclass(frozen=True)
class PeakFigures:
    """Peak figures of one chip at one precision (1 MAC = 2 ops)."""

    x_bits: int
    w_bits: int
    macs_per_mvm: int
    """Logical MACs of one dense MVM on one array: rows * (cols // w_bits)."""
    mvm_s: float
    """Time of one MVM: x_bits bit-planes."""
    energy_per_mvm_j: float
    """Array + ADC energy of one MVM: x_bits * (cols * column_eval_j + rows * row_drive_j)."""
    macs_per_s: float
    """All cores: n_cores * macs_per_mvm / mvm_s."""
    tops: float
    """2 * macs_per_s / 1e12."""
    tops_per_w: float
    """2 * macs_per_mvm / energy_per_mvm_j / 1e12."""


def peak(chip: ChipConfig, bits: int, w_bits: int | None = None) -> PeakFigures:
    """Peak figures with ``bits``-bit inputs and ``w_bits``-bit weights (default: ``bits`` too).

    Raises ConfigError if a precision lies outside 1..chip.array.max_bits."""
    w_bits = bits if w_bits is None else w_bits
    chip.check_bits(bits, "bits")
    chip.check_bits(w_bits, "w_bits")
    rows, cols = chip.array.rows, chip.array.cols
    macs_per_mvm = rows * (cols // w_bits)
    mvm_s = bits * chip.bitplane_s
    energy_j = bits * (cols * chip.energy.column_eval_j + rows * chip.energy.row_drive_j)
    macs_per_s = chip.n_cores * macs_per_mvm / mvm_s
    tops_per_w = 2 * macs_per_mvm / energy_j / 1e12 if energy_j > 0 else float("inf")
    return PeakFigures(x_bits=bits, w_bits=w_bits, macs_per_mvm=macs_per_mvm, mvm_s=mvm_s,
                       energy_per_mvm_j=energy_j, macs_per_s=macs_per_s, tops=2 * macs_per_s / 1e12,
                       tops_per_w=tops_per_w)
