"""The fast, vectorised MVM: bit-plane decomposition, one int8 matrix product, ADC as array ops.

Equal bit for bit to :mod:`imcflow.cima.reference` (tests/test_cima.py checks it):

1. Input bit-planes ``xp[n, i, r]`` and weight bit columns ``wp[r, o*w_bits + j]`` are 0/1 int8.
   An arithmetic right shift of a two's complement integer yields its bits, so signed values need
   no masking (bit i of x is ``(x >> i) & 1`` for every i < x_bits <= 8).
2. ``k = xp @ wp`` counts rows where both bits are 1: one ``torch._int_mm`` (int8 -> int32, exact).
3. ADC codes from k (:func:`adc_codes`), then ``acc = sum_ij s_i s_j 2**(i+j) code_ij`` as two
   small weighted sums (:func:`combine`, exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imcflow.cima.analog import AnalogStream, analog_codes_f64
from imcflow.cima.common import Mode, MvmArgs, MvmResult, check_mvm_args
from imcflow.config.chip import ChipConfig

_FLOAT32_EXACT = 1 << 24
BATCH_CHUNK = 8192
"""Most input vectors per int8 product (bounds the bit-planes: BATCH_CHUNK * x_bits * rows bytes)."""
COUNT_ELEMS = 1 << 23
"""Most column counts per product (batch x x_bits x columns): bounds the int32/float temporaries."""


def chunk_vectors(x_bits: int, n_cols: int) -> int:
    """Input vectors per product: BATCH_CHUNK, fewer for wide layers (COUNT_ELEMS)."""
    return max(1, min(BATCH_CHUNK, COUNT_ELEMS // (x_bits * n_cols)))


def bit_weights(bits: int, signed: bool) -> list[int]:
    """s_i * 2**i for i = 0 .. bits-1: the MSB weighs -2**(bits-1) in two's complement."""
    return [-(1 << i) if signed and i == bits - 1 else 1 << i for i in range(bits)]


def bit_planes(a: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """0/1 int8 bits of integer tensor ``a`` (two's complement if negative), stacked as a new
    axis ``dim`` of length ``bits`` (bit 0 first)."""
    if a.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32):
        a = a.to(torch.int32)  # values are range-checked, so this never wraps
    shape = [1] * (a.dim() + 1)
    shape[dim] = bits
    shifts = torch.arange(bits, dtype=a.dtype, device=a.device).view(shape)
    planes = (a.unsqueeze(dim) >> shifts).bitwise_and_(1)
    return planes.view(torch.int8) if planes.dtype == torch.uint8 else planes.to(torch.int8)


def binary_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 0/1 int8 matrices, as int32, via torch._int_mm (padded to its shape rules:
    more than 16 rows of ``a``; inner and output sizes multiples of 8)."""
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = max(0, 17 - m), (-k) % 8, (-n) % 8
    if pm or pk:
        a = F.pad(a, (0, pk, 0, pm))
    if pk or pn:
        b = F.pad(b, (0, pn, 0, pk))
    return torch._int_mm(a.contiguous(), b.contiguous())[:m, :n]


def adc_bit_true(k: torch.Tensor, full_scale: int, adc_bits: int, max_k: int, inplace: bool = False) -> torch.Tensor:
    """min(2**b - 1, floor((2*k*2**b + fs) / (2*fs))) for integer-valued ``k`` (any dtype), as float.

    Exact in float32 when 2*max_k*2**b + 3*fs < 2**24: numerator and denominator are then exact,
    IEEE division is correctly rounded, and a quotient at least 1/(2*fs) below the next integer m
    cannot round up to it because m * 2*fs < 2**24. Otherwise float64 (same argument, 2**53).
    ``inplace=True`` may overwrite ``k`` (when it already has the working float dtype)."""
    levels = 1 << adc_bits
    exact32 = 2 * max_k * levels + 3 * full_scale < _FLOAT32_EXACT
    kf = k.to(torch.float32 if exact32 else torch.float64, copy=not inplace)
    return kf.mul_(2 * levels).add_(full_scale).div_(2 * full_scale).floor_().clamp_max_(levels - 1)


def adc_codes(k: torch.Tensor, rows: int, mode: Mode, full_scale: int, adc_bits: int,
              stream: AnalogStream | None) -> torch.Tensor:
    """ADC codes (batch, x_bits, cols) of int32 counts ``k`` <= ``rows`` (analog: the next vectors
    of ``stream``), as float."""
    if mode is Mode.IDEAL:
        return k.to(torch.float32 if rows < _FLOAT32_EXACT else torch.float64)
    if mode is Mode.BIT_TRUE:
        return adc_bit_true(k, full_scale, adc_bits, rows)
    noise = stream.noise_lsb(k.shape[0])
    return torch.from_numpy(analog_codes_f64(k.numpy(), stream.gain, stream.offset_lsb, noise, full_scale, adc_bits))


def combine(codes: torch.Tensor, x_bits: int, x_signed: bool, w_bits: int, w_signed: bool,
            max_code: int) -> torch.Tensor:
    """int64 (batch, n_out) = sum over i, j of s_i s_j 2**(i+j) codes[n, i, o*w_bits + j]:
    a weighted sum over input bit-planes i, then over weight bits j (two small matmuls), in float32
    when every partial sum stays below 2**24 (then exact), else float64."""
    batch = codes.shape[0]
    ci, cw = bit_weights(x_bits, x_signed), bit_weights(w_bits, w_signed)
    bound = max_code * sum(map(abs, ci)) * sum(map(abs, cw))
    dtype = torch.float32 if bound < _FLOAT32_EXACT else torch.float64
    per_col = torch.matmul(torch.tensor(ci, dtype=dtype).view(1, 1, x_bits), codes.to(dtype))  # (batch, 1, cols)
    return (per_col.view(batch, -1, w_bits) @ torch.tensor(cw, dtype=dtype)).to(torch.int64)


def mvm_kernel(x: torch.Tensor, w: torch.Tensor, *, x_bits: int, w_bits: int, x_signed: bool, w_signed: bool,
               mode: Mode, full_scale: int, adc_bits: int, stream: AnalogStream | None = None) -> torch.Tensor:
    """int64 acc (batch, n_out) of range-checked integer tensors x (batch, rows), w (rows, n_out),
    :func:`chunk_vectors` at a time (analog noise is drawn from ``stream``, vector after vector)."""
    batch, rows = x.shape
    n_out = w.shape[1]
    n_cols = n_out * w_bits
    wp = bit_planes(w, w_bits, dim=2).reshape(rows, n_cols)   # column o*w_bits + j
    max_code = rows if mode is Mode.IDEAL else (1 << adc_bits) - 1
    acc = torch.zeros((batch, n_out), dtype=torch.int64)
    chunk = chunk_vectors(x_bits, n_cols)
    for n0 in range(0, batch, chunk):
        xs = x[n0:n0 + chunk]
        xp = bit_planes(xs, x_bits, dim=1).reshape(-1, rows)      # row n*x_bits + i
        k = binary_counts(xp, wp).reshape(xs.shape[0], x_bits, n_cols)
        codes = adc_codes(k, rows, mode, full_scale, adc_bits, stream)
        acc[n0:n0 + chunk] = combine(codes, x_bits, x_signed, w_bits, w_signed, max_code)
    return acc


def mvm_args_fast(a: MvmArgs) -> MvmResult:
    """The fast MVM on already checked arguments."""
    n_cols = a.w.shape[1] * a.w_bits
    stream = AnalogStream(a.chip.analog, a.seed, a.x_bits, n_cols) if a.mode is Mode.ANALOG else None
    acc = mvm_kernel(a.x, a.w, x_bits=a.x_bits, w_bits=a.w_bits, x_signed=a.x_signed, w_signed=a.w_signed,
                     mode=a.mode, full_scale=a.full_scale, adc_bits=a.adc_bits, stream=stream)
    return a.result(acc.numpy())


def mvm(x: Any, w: Any, x_bits: int, w_bits: int, *, x_signed: bool = False, w_signed: bool = True,
        mode: str = "bit_true", full_scale: int | None = None, chip: str | ChipConfig = "jssc2022",
        seed: int = 0) -> MvmResult:
    """Bit-parallel/bit-serial MVM of one compute-in-memory array, the chip's way.

    Args:
        x: integer array or tensor (batch, rows), each value within ``x_bits`` (unsigned unless
            ``x_signed``; signed is two's complement).
        w: integer array or tensor (rows, n_out) within ``w_bits``; ``rows <= chip.array.rows`` and
            ``n_out * w_bits <= chip.array.cols``.
        x_bits, w_bits: precisions, 1 .. chip.array.max_bits.
        mode: ``"ideal"`` (code = k), ``"bit_true"`` (code = min(2**b-1, floor(k*2**b/fs + 1/2)))
            or ``"analog"`` (bit_true plus seeded mismatch and noise, see :mod:`imcflow.cima.analog`).
            On a chip with ``adc.lossless`` bit_true behaves as ideal.
        full_scale: ADC full scale in rows (default ``chip.array.rows``).
        chip: preset name or ChipConfig.
        seed: seed of the analog draws (analog mode only).

    Returns:
        :class:`MvmResult` with int64 ``acc`` (batch, n_out); ``acc * scale`` estimates ``x @ w``.

    Raises:
        CimaError: a bit width, value, size or full scale breaks a limit (the message says which).
    """
    return mvm_args_fast(check_mvm_args(x, w, x_bits, w_bits, x_signed, w_signed, mode, full_scale, chip, seed))
