"""Integer requantisation parameters derived from real scales (the SIMD's multiply-shift-add).

A layer computes ``real_out[c] = acc_real * s_x * s_w[c] + b[c]`` where ``acc_real`` is ``x @ w`` in
integer units. Its output integer is ``y = real_out / s_out``, so the SIMD needs the real
multiplier ``M[c] = s_x * s_w[c] / s_out`` and the real bias ``B[c] = b[c] / s_out`` (output steps).
Both become integers at a common binary point ``shift``::

    multiplier[c] = round(M[c] * 2**shift)       # fits in ``mult_bits``-bit signed (default 16)
    bias[c]       = round(B[c] * 2**shift)

``shift`` is the largest in ``[1, MAX_SHIFT]`` that keeps every multiplier within ``mult_bits``
signed, so the relative error of a multiplier is at most ``2**-(mult_bits-1)``.
:meth:`imcflow.ir.qgraph.Requant.apply` then computes the round-half-up result in integers.
Rounding here is round-half-up too (``floor(v + 1/2)``), like everywhere in imcflow.
"""

from __future__ import annotations

import math

import numpy as np

from imcflow.errors import QuantError
from imcflow.ir.qgraph import ActTable, QTensor, Requant
from imcflow.quant.act_table import activation_table

MULT_BITS = 16
"""Default width of a requant or add multiplier, in bits (signed)."""
MAX_SHIFT = 40
"""Largest right shift used; keeps ``acc * multiplier + rounding`` well inside int64."""


def round_half_up(v: np.ndarray | float) -> np.ndarray:
    """``floor(v + 1/2)`` as int64 (imcflow's single rounding rule)."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def pick_shift(real_multipliers: np.ndarray, what: str, mult_bits: int = MULT_BITS) -> int:
    """Largest shift in [1, MAX_SHIFT] with ``round(|M| * 2**shift) < 2**(mult_bits-1)`` for all M."""
    m = np.abs(np.asarray(real_multipliers, dtype=np.float64))
    if m.size == 0 or not np.all(np.isfinite(m)):
        raise QuantError(f"{what}: requant multipliers must be finite, got {m}")
    limit = (1 << (mult_bits - 1)) - 1
    peak = float(m.max())
    if peak == 0.0:
        return MAX_SHIFT
    for shift in range(MAX_SHIFT, 0, -1):
        if math.floor(peak * 2.0 ** shift + 0.5) <= limit:
            return shift
    raise QuantError(f"{what}: real multiplier {peak:.4g} (input scale x weight scale / output scale) does not "
                     f"fit a {mult_bits}-b multiplier even at shift 1; use a larger output scale "
                     f"(more output bits or a wider calibration range)")


def out_range(spec: QTensor, lo: float | None = None, hi: float | None = None) -> tuple[int, int]:
    """Integer clamp bounds of an output spec, tightened by a real ``[lo, hi]`` (ReLU: lo=0; ReLU6: 0, 6)."""
    out_min, out_max = spec.min_int, spec.max_int
    if lo is not None:
        out_min = max(out_min, int(np.ceil(lo / spec.scale - 1e-9)))
    if hi is not None:
        out_max = min(out_max, int(np.floor(hi / spec.scale + 1e-9)))
    if out_min > out_max:
        raise QuantError(f"clamp range [{lo}, {hi}] is empty at output scale {spec.scale:.4g}")
    return out_min, out_max


def derive_requant(name: str, s_x: float, s_w: np.ndarray, bias: np.ndarray | None, out: QTensor,
                   lo: float | None = None, hi: float | None = None, mult_bits: int = MULT_BITS,
                   activation: tuple[str, float | None] | None = None) -> Requant:
    """The Requant of MVM layer ``name`` (see module doc); ``lo``/``hi`` is the fused activation's
    real clamp range (ReLU: ``lo=0``; ReLU6: ``lo=0, hi=6``; none: the output spec's range);
    ``activation`` = ``(fn, alpha)`` of a fused SiLU, GELU, ... makes it a table
    (:func:`imcflow.quant.act_table.activation_table`) instead of rounding."""
    s_w = np.asarray(s_w, dtype=np.float64)
    if s_x <= 0 or out.scale <= 0 or np.any(s_w <= 0):
        raise QuantError(f"layer {name!r}: scales must be positive (input {s_x}, output {out.scale}, "
                         f"weights min {s_w.min() if s_w.size else None})")
    real_m = s_x * s_w / out.scale
    shift = pick_shift(real_m, f"layer {name!r}", mult_bits)
    real_b = np.zeros_like(real_m) if bias is None else np.asarray(bias, dtype=np.float64) / out.scale
    mult = round_half_up(real_m * 2.0 ** shift)
    b = round_half_up(real_b * 2.0 ** shift)
    out_min, out_max = out_range(out, lo, hi)
    if activation is None:
        return Requant(multiplier=mult, bias=b, shift=shift, out_min=out_min, out_max=out_max)
    return Requant(multiplier=mult, bias=b, shift=shift, out_min=out_min, out_max=out_max,
                   table=act_table(activation, shift, out.scale, out_min, out_max))


def act_table(activation: tuple[str, float | None], shift: int, out_scale: float, out_min: int,
              out_max: int) -> ActTable:
    """The :class:`ActTable` of ``activation`` = ``(fn, alpha)`` on pre-activations at binary point ``shift``."""
    thresholds, codes = activation_table(activation[0], activation[1], shift, out_scale, out_min, out_max)
    return ActTable(activation=activation[0], alpha=activation[1], thresholds=thresholds, codes=codes)


def derive_add(name: str, s_a: float, s_b: float, out: QTensor, lo: float | None = None,
               hi: float | None = None, mult_bits: int = MULT_BITS) -> tuple[tuple[int, int], int, int, int]:
    """Multipliers, shift and clamp of residual add ``name``: ``y = (a*m_a + b*m_b + 2**(shift-1)) >> shift``
    with ``m = round(s_in / s_out * 2**shift)``. Returns ``((m_a, m_b), shift, out_min, out_max)``
    (a fused SiLU, GELU, ... is :func:`act_table` at that shift)."""
    real = np.array([s_a / out.scale, s_b / out.scale])
    shift = pick_shift(real, f"add {name!r}", mult_bits)
    m_a, m_b = (int(v) for v in round_half_up(real * 2.0 ** shift))
    out_min, out_max = out_range(out, lo, hi)
    return (m_a, m_b), shift, out_min, out_max


def apply_add(a: np.ndarray, b: np.ndarray, multipliers: tuple[int, ...], shift: int,
              out_min: int, out_max: int, table: ActTable | None = None) -> np.ndarray:
    """Residual add in integers, round half up, or through ``table`` (see :mod:`imcflow.ir.qgraph`).
    Returns int64."""
    v = a.astype(np.int64) * int(multipliers[0]) + b.astype(np.int64) * int(multipliers[1])
    if table is not None:
        return table.apply(v)
    return np.clip((v + (1 << (shift - 1))) >> shift, out_min, out_max)


def avg_round(total: np.ndarray, count: int) -> np.ndarray:
    """Average pooling in integers: ``floor((sum + count // 2) / count)`` (round half up)."""
    return (total.astype(np.int64) + count // 2) // count
