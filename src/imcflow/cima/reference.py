"""The slow reference MVM: loops over bit-planes and columns, the living specification.

Every vectorised kernel in imcflow (``fast.py``, ``conv.py``, the simulator) is tested equal to
these loops bit for bit. Keep them obviously right rather than quick.
"""

from __future__ import annotations

from typing import Any

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from imcflow.cima.analog import analog_code, draw_analog
from imcflow.cima.common import Mode, MvmArgs, MvmResult, check_mvm_args
from imcflow.config.chip import AdcConfig, AnalogConfig, ArrayConfig, ChipConfig
from imcflow.config.presets import JSSC2022
from imcflow.ir.qgraph import row_tiles


def bit_of(value: int, i: int, bits: int) -> int:
    """Bit ``i`` of ``value`` in ``bits``-bit two's complement (or plain binary if value >= 0)."""
    return ((value & ((1 << bits) - 1)) >> i) & 1


def bit_sign(i: int, bits: int, signed: bool) -> int:
    """Sign of bit ``i``: -1 for the MSB of a two's complement number, else +1."""
    return -1 if signed and i == bits - 1 else 1


def adc_code_bit_true(k: int, full_scale: int, adc_bits: int) -> int:
    """min(2**b - 1, floor(k * 2**b / full_scale + 1/2)), in exact integers."""
    levels = 1 << adc_bits
    return min(levels - 1, (2 * k * levels + full_scale) // (2 * full_scale))


def _code(a: MvmArgs, k: int, n: int, i: int, col: int, draws) -> int:
    if a.mode is Mode.IDEAL:
        return k
    if a.mode is Mode.BIT_TRUE:
        return adc_code_bit_true(k, a.full_scale, a.adc_bits)
    return int(analog_code(k, draws.gain[col], draws.offset_lsb[col], draws.noise_lsb[n, i, col],
                           a.full_scale, a.adc_bits))


def mvm_args_reference(a: MvmArgs) -> MvmResult:
    """The reference MVM on already checked arguments."""
    x, w = a.x.to(torch.int64).numpy(), a.w.to(torch.int64).numpy()
    batch, rows = x.shape
    n_out = w.shape[1]
    draws = (draw_analog(a.chip.analog, a.seed, batch, a.x_bits, n_out * a.w_bits)
             if a.mode is Mode.ANALOG else None)
    acc = np.zeros((batch, n_out), dtype=np.int64)
    for n in range(batch):
        for i in range(a.x_bits):                 # input bit-plane (bit-serial)
            for o in range(n_out):
                for j in range(a.w_bits):         # weight bit column (bit-parallel)
                    col = o * a.w_bits + j
                    k = sum(bit_of(int(x[n, r]), i, a.x_bits) & bit_of(int(w[r, o]), j, a.w_bits)
                            for r in range(rows))
                    code = _code(a, k, n, i, col, draws)
                    sign = bit_sign(i, a.x_bits, a.x_signed) * bit_sign(j, a.w_bits, a.w_signed)
                    acc[n, o] += sign * (1 << (i + j)) * code
    return a.result(acc)


def mvm_reference(x: Any, w: Any, x_bits: int, w_bits: int, *, x_signed: bool = False, w_signed: bool = True,
                  mode: str = "bit_true", full_scale: int | None = None, chip: str | ChipConfig = "jssc2022",
                  seed: int = 0) -> MvmResult:
    """Reference implementation of :func:`imcflow.cima.mvm` (same signature and result)."""
    return mvm_args_reference(check_mvm_args(x, w, x_bits, w_bits, x_signed, w_signed, mode, full_scale, chip, seed))


def bpbs_conv2d_reference(x_int: torch.Tensor, w_int: torch.Tensor, *, x_bits: int, w_bits: int, x_signed: bool,
                          stride=1, padding=0, dilation=1, full_scale: int, mode: str = "bit_true", adc_bits: int,
                          array_rows: int, w_signed: bool = True, seed: int = 0,
                          analog: AnalogConfig | None = None, mvm_fn=None) -> np.ndarray:
    """The definition of :func:`imcflow.cima.conv.bpbs_conv2d`: im2col, row tiles, one MVM per
    tile (``seed + t`` for tile t), tile accumulators summed. Returns int64 (N, C_out, Ho, Wo).

    ``mvm_fn`` defaults to :func:`mvm_reference`; tests may pass the fast ``mvm`` for larger cases."""
    mvm_fn = mvm_fn or mvm_reference
    c_out, c_in, kh, kw = w_int.shape
    n, _, h, wd = x_int.shape
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    cols = F.unfold(x_int.double(), (kh, kw), padding=padding, stride=stride, dilation=dilation)  # (N, C*kh*kw, L)
    ho = (h + 2 * padding[0] - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    wo = (wd + 2 * padding[1] - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    x_rows = cols.permute(0, 2, 1).reshape(n * ho * wo, -1).round().to(torch.int64).numpy()
    w_rows = w_int.reshape(c_out, -1).T.round().to(torch.int64).numpy()       # (C*kh*kw, C_out)
    chip = dataclasses.replace(
        JSSC2022, array=ArrayConfig(rows=array_rows, cols=c_out * w_bits, max_bits=max(8, x_bits, w_bits)),
        adc=AdcConfig(bits=adc_bits, full_scales_rows=(full_scale,)), analog=analog or AnalogConfig())
    acc = np.zeros((n * ho * wo, c_out), dtype=np.int64)
    for t, (c0, c1) in enumerate(row_tiles(c_in, kh, kw, array_rows)):
        r0, r1 = c0 * kh * kw, c1 * kh * kw
        acc += mvm_fn(x_rows[:, r0:r1], w_rows[r0:r1], x_bits, w_bits, x_signed=x_signed, w_signed=w_signed,
                      mode=mode, full_scale=full_scale, chip=chip, seed=seed + t).acc
    return acc.reshape(n, ho, wo, c_out).transpose(0, 3, 1, 2)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
