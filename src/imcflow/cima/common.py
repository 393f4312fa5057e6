"""What both MVM implementations share: the result type, argument checks and event counts."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from imcflow.config.chip import ChipConfig
from imcflow.config.presets import get_preset
from imcflow.errors import CimaError


class Mode(str, enum.Enum):
    """How a column count becomes an ADC code."""

    IDEAL = "ideal"
    """code = k exactly (a lossless ADC)."""
    BIT_TRUE = "bit_true"
    """code = min(2**b - 1, floor(k * 2**b / full_scale + 1/2)): the chip's digital behaviour."""
    ANALOG = "analog"
    """bit_true plus seeded column gain/offset and conversion noise (see :mod:`imcflow.cima.analog`)."""


def parse_mode(mode: str | Mode) -> Mode:
    """``mode`` as a :class:`Mode`; raise CimaError naming the choices if unknown."""
    try:
        return Mode(mode)
    except ValueError:
        raise CimaError(f"mode = {mode!r}: choose one of {', '.join(m.value for m in Mode)}") from None


@dataclass(frozen=True, eq=False)
class MvmResult:
    """Result of one batch of MVMs on one array, plus the events the energy model counts.

    ``acc * scale`` estimates ``x @ w`` (exactly equal in ideal mode)."""

    acc: np.ndarray
    """int64 (batch, n_out): sum over i, j of s_i * s_j * 2**(i+j) * code_ij."""
    scale_num: int
    """Numerator of the exact scale: full_scale (bit_true, analog) or 1 (ideal)."""
    scale_shift: int
    """Scale = scale_num / 2**scale_shift; scale_shift = adc bits (bit_true, analog) or 0 (ideal)."""
    conversions: int
    """ADC conversions: batch * x_bits * n_out * w_bits."""
    column_evals: int
    """Column bit-plane evaluations (array charge sharing), one per conversion."""
    rows_driven: int
    """Row activations summed over bit-planes: x_bits * count_nonzero(x) (zero inputs drive no row)."""
    macs: int
    """Logical multiply-accumulates: batch * rows * n_out."""

    @property
    def scale(self) -> float:
        """acc * scale estimates x @ w."""
        return self.scale_num / 2 ** self.scale_shift


@dataclass(frozen=True, eq=False)
class MvmArgs:
    """Checked arguments of an MVM: integer CPU tensors (no copy of the caller's data) and plain values."""

    x: torch.Tensor
    """(batch, rows) integer tensor in its caller's dtype (shared with numpy inputs, not copied)."""
    w: torch.Tensor
    """(rows, n_out) integer tensor."""
    x_bits: int
    w_bits: int
    x_signed: bool
    w_signed: bool
    mode: Mode
    full_scale: int
    adc_bits: int
    chip: ChipConfig
    seed: int

    def result(self, acc: np.ndarray) -> MvmResult:
        """Wrap ``acc`` with the scale and event counts of these arguments."""
        batch, rows = self.x.shape
        n_out = self.w.shape[1]
        num, shift = (1, 0) if self.mode is Mode.IDEAL else (self.full_scale, self.adc_bits)
        conversions = batch * self.x_bits * n_out * self.w_bits
        return MvmResult(acc=np.asarray(acc, dtype=np.int64), scale_num=num, scale_shift=shift,
                         conversions=conversions, column_evals=conversions,
                         rows_driven=self.x_bits * int(torch.count_nonzero(self.x)), macs=batch * rows * n_out)


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest integer of a ``bits``-bit operand (two's complement if signed)."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def check_bits(bits: Any, what: str, max_bits: int) -> int:
    """``bits`` as an int in 1..max_bits, else CimaError."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= max_bits:
        raise CimaError(f"{what} = {bits!r}: must be an integer from 1 to {max_bits} (chip array.max_bits)")
    return int(bits)


def check_range(a: torch.Tensor, bits: int, signed: bool, what: str) -> None:
    """Raise CimaError if any value of ``a`` lies outside the ``bits``-bit range (never wrap)."""
    lo, hi = int_range(bits, signed)
    if a.numel() == 0:
        return
    a_min, a_max = (int(v) for v in torch.aminmax(a))
    if a_min < lo or a_max > hi:
        kind = "signed" if signed else "unsigned"
        raise CimaError(f"{what} has values in [{a_min}, {a_max}], outside the {bits}-b {kind} "
                        f"range [{lo}, {hi}]; quantise or clip it first, or raise the bit width")


def to_int_tensor(a: Any, what: str) -> torch.Tensor:
    """A 2-D integer CPU torch tensor viewing an integer numpy array or torch tensor (no copy)."""
    if not isinstance(a, torch.Tensor):
        a = np.asarray(a)
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            raise CimaError(f"{what} has dtype {a.dtype}: pass an integer array (round and cast it first)")
        if a.dtype == np.uint64 or a.dtype == np.uint32 or a.dtype == np.uint16:
            a = a.astype(np.int64)  # torch lacks general ops on wide unsigned types
        a = np.ascontiguousarray(a)
        a = torch.from_numpy(a if a.flags.writeable else a.copy())  # torch warns on read-only memory
    a = a.detach().cpu()
    if a.dtype == torch.bool or a.is_floating_point() or a.is_complex():
        raise CimaError(f"{what} has dtype {a.dtype}: pass an integer tensor (round and cast it first)")
    if a.dim() != 2:
        raise CimaError(f"{what} has shape {tuple(a.shape)}: expected a 2-D array")
    return a


def check_mvm_args(x: Any, w: Any, x_bits: Any, w_bits: Any, x_signed: bool, w_signed: bool,
                   mode: str | Mode, full_scale: int | None, chip: str | ChipConfig, seed: int) -> MvmArgs:
    """Validate every argument of :func:`imcflow.cima.mvm` against the chip's limits."""
    chip = get_preset(chip)
    mode = parse_mode(mode)
    x_bits = check_bits(x_bits, "x_bits", chip.array.max_bits)
    w_bits = check_bits(w_bits, "w_bits", chip.array.max_bits)
    x, w = to_int_tensor(x, "x (batch, rows)"), to_int_tensor(w, "w (rows, n_out)")
    if x.shape[1] != w.shape[0]:
        raise CimaError(f"x has {x.shape[1]} rows per vector but w has {w.shape[0]} rows; they must match")
    rows, n_out = w.shape
    if rows > chip.array.rows:
        raise CimaError(f"w needs {rows} rows, {rows - chip.array.rows} more than the array's "
                        f"{chip.array.rows} (array.rows); split the rows into tiles")
    if n_out * w_bits > chip.array.cols:
        raise CimaError(f"w needs {n_out} x {w_bits} = {n_out * w_bits} columns, {n_out * w_bits - chip.array.cols} "
                        f"more than the array's {chip.array.cols} (array.cols); split the outputs into tiles")
    check_range(x, x_bits, x_signed, "x")
    check_range(w, w_bits, w_signed, "w")
    fs = chip.array.rows if full_scale is None else full_scale
    if isinstance(fs, bool) or not isinstance(fs, (int, np.integer)) or fs <= 0:
        raise CimaError(f"full_scale = {full_scale!r}: must be a positive integer number of rows")
    if chip.adc.lossless:
        if mode is Mode.ANALOG:
            raise CimaError(f"mode='analog' needs a real ADC but chip {chip.name!r} has adc.lossless=True; "
                            "use mode='ideal' or a chip with adc.lossless=False")
        mode = Mode.IDEAL
    return MvmArgs(x=x, w=w, x_bits=x_bits, w_bits=w_bits, x_signed=bool(x_signed), w_signed=bool(w_signed),
                   mode=mode, full_scale=int(fs), adc_bits=chip.adc.bits, chip=chip, seed=int(seed))
