"""The slow reference MVM: loops over bit-planes and columns, the living specification.

Every vectorised kernel in imcflow (``fast.py``, ``conv.py``, the simulator) is tested equal to
these loops bit for bit. Keep them obviously right rather than quick.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imcflow.cima.analog import analog_code, draw_analog
from imcflow.cima.common import Mode, MvmArgs, MvmResult, check_mvm_args
from imcflow.config.chip import ChipConfig


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
