"""Activation tables: a function other than ReLU/clamp, applied exactly by the SIMD as a step function.

A layer's requantisation (:class:`imcflow.ir.qgraph.Requant`) forms, per output channel, the
fixed-point pre-activation in output steps::

    u = acc * multiplier + bias          # integer; u / 2**shift output steps (z = u * 2**-shift * s_out)

ReLU or a clamp then rounds and saturates. For another function ``f`` (SiLU, GELU, LeakyReLU, ...:
:data:`imcflow.ir.activations.ACTIVATIONS`) the output integer is::

    y(u) = clip(floor(f(u * 2**-shift * s_out) / s_out + 1/2), out_min, out_max)

which takes at most ``out_max - out_min + 1`` values: a step function of ``u``, the same for every
channel (``multiplier`` and ``bias`` already carry each channel's scale and offset). It is stored
exactly as ascending integer thresholds ``T`` and codes ``C`` (``len(C) == len(T) + 1``)::

    y(u) = C[number of thresholds T[k] <= u]

which the SIMD evaluates by comparisons (a binary search: ``ceil(log2(len(C)))`` compare steps
per output, [A]). :func:`activation_table` derives ``T`` and ``C`` from ``f`` by exact integer
bisection on each monotonic piece of ``f`` (the pieces meet at the activation's ``turning_point``);
:func:`table_reference` is the slow definition above, evaluated in float64, that tests compare the
table with.
"""

from __future__ import annotations

import numpy as np
import torch

from imcflow.errors import QuantError
from imcflow.ir.activations import apply_activation, get_activation

MAX_STEPS = 1 << 20
"""Largest |pre-activation| in output steps the search looks at (a LeakyReLU with a tiny slope
needs many steps before it saturates), or ``MAX_Z / out_scale`` if more; beyond it the function
must be constant after rounding."""
MAX_Z = 100.0
"""Every supported function is within a rounding step of its limit beyond |z| = 100 (exponential
tails) at any output scale a float64 can tell from 0, or is linear there."""


def table_reference(fn: str, alpha: float | None, u: np.ndarray, shift: int, out_scale: float,
                    out_min: int, out_max: int) -> np.ndarray:
    """``y(u)`` of the module doc, for integer array ``u``, in float64 (the slow definition)."""
    z = torch.from_numpy(np.asarray(u, dtype=np.float64) * 2.0 ** -shift * out_scale)
    y = apply_activation(fn, alpha, z).numpy() / out_scale
    return np.clip(np.floor(y + 0.5), out_min, out_max).astype(np.int64)


def activation_table(fn: str, alpha: float | None, shift: int, out_scale: float, out_min: int,
                     out_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds ``T`` (int64, ascending) and codes ``C`` (int64) with ``C[#(T <= u)] ==
    table_reference(u)`` for every integer ``u`` (see module doc)."""
    act = get_activation(fn)
    if not out_scale > 0:
        raise QuantError(f"activation {fn}: output scale {out_scale} must be positive")

    def codes_of(u: np.ndarray) -> np.ndarray:
        return table_reference(fn, alpha, u, shift, out_scale, out_min, out_max)

    lo, hi = _flat_ends(codes_of, shift, fn, max(MAX_STEPS, int(MAX_Z / out_scale)))
    turn = [] if act.turning_point is None else [int(np.floor(act.turning_point / out_scale * 2.0 ** shift))]
    bounds = [lo] + [t for t in turn if lo < t < hi] + [hi]
    thresholds: list[int] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        thresholds += _steps_in(codes_of, a, b)
    t = np.array(sorted(set(thresholds)), dtype=np.int64)
    return t, codes_of(np.concatenate([[lo], t]))


def _flat_ends(codes_of, shift: int, fn: str, max_steps: int) -> tuple[int, int]:
    """Integers ``lo < hi`` such that the code is constant on (-inf, lo] and on [hi, inf): the
    functions are monotonic away from 0, so it is where the code equals its limit at +-infinity."""
    ends = []
    for sign in (-1, 1):
        steps = 64
        limit = codes_of(np.array([sign * 2.0 ** 70], dtype=np.float64))[0]
        while set(codes_of(np.array([sign * steps << shift, sign * (steps // 2) << shift], dtype=np.float64))) != {limit}:
            steps *= 2
            if steps > 2 * max_steps or steps << shift >= 1 << 62:
                raise QuantError(f"activation {fn}: its rounded output is still changing {steps // 2} output steps "
                                 f"from 0; use a larger output scale")
        ends.append(sign * steps << shift)
    return ends[0], ends[1]


def _steps_in(codes_of, a: int, b: int) -> list[int]:
    """The points in ``(a, b]`` where the code, monotonic on ``[a, b]``, changes: for each code
    value ``k`` it passes, the first ``u`` whose code is past ``k``, all found by one vectorised
    integer bisection."""
    ca, cb = codes_of(np.array([a, b], dtype=np.float64))
    if ca == cb:
        return []
    up = cb > ca
    targets = np.arange(ca, cb, 1 if up else -1)            # the code stays at k, then moves past it
    left = np.full(targets.shape, a, dtype=np.int64)         # code(left) not past k
    right = np.full(targets.shape, b, dtype=np.int64)        # code(right) past k
    while np.any(right - left > 1):
        mid = left + (right - left) // 2
        c = codes_of(mid)
        past = c > targets if up else c < targets
        left, right = np.where(past, left, mid), np.where(past, mid, right)
    return [int(v) for v in right]
