"""Element-wise activations besides ReLU and clamp: the float IR op ``activation``.

The chip's SIMD applies such a function as part of a layer's requantisation, by table: the output
of a 4-b (or any ``b``-bit) layer takes one of ``2**b`` integer values, so ``round(f(z) / s_out)``
is a step function of the pre-activation ``z``, described exactly by the points where it steps
(:mod:`imcflow.quant.act_table`). This module only says what each function is in float, for the
importers, the float executor, calibration and QAT.

Each entry: the PyTorch function, whether its values are never negative (then its output tensor
is quantised unsigned), the default of its one parameter ``alpha`` (None: it has none), and where
it is not monotonic, the point that splits it into a decreasing and an increasing part (the table
derivation needs monotonic pieces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from imcflow.errors import ModelError


@dataclass(frozen=True)
class Activation:
    """One supported element-wise function (see module doc)."""

    name: str
    fn: Callable[[torch.Tensor, float], torch.Tensor]
    non_negative: bool
    default_alpha: float | None = None
    turning_point: float | None = None
    """The ``z`` of its minimum, for a function that decreases before it and increases after; None
    for a monotonic one."""


_ACTIVATIONS = (
    Activation("leaky_relu", lambda x, a: F.leaky_relu(x, a), False, 0.01),
    Activation("elu", lambda x, a: F.elu(x, a), False, 1.0),
    Activation("silu", lambda x, a: F.silu(x), False, None, -1.2784645427610738),
    Activation("gelu", lambda x, a: F.gelu(x), False, None, -0.7517916243455752),
    Activation("gelu_tanh", lambda x, a: F.gelu(x, approximate="tanh"), False, None, -0.752461),
    Activation("hardswish", lambda x, a: F.hardswish(x), False, None, -1.5),
    Activation("mish", lambda x, a: F.mish(x), False, None, -1.192431),
    Activation("hardsigmoid", lambda x, a: F.hardsigmoid(x), True),
    Activation("sigmoid", lambda x, a: torch.sigmoid(x), True),
    Activation("softplus", lambda x, a: F.softplus(x), True),
    Activation("tanh", lambda x, a: torch.tanh(x), False),
)
ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _ACTIVATIONS}
"""Supported functions by name (the ``fn`` attr of an ``activation`` node)."""


def get_activation(name: str, where: str = "activation") -> Activation:
    """The :class:`Activation` called ``name``; ModelError naming the supported ones otherwise."""
    if name not in ACTIVATIONS:
        raise ModelError(f"{where}: unknown activation {name!r}; supported: relu, clamp, {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def apply_activation(name: str, alpha: float | None, x: torch.Tensor) -> torch.Tensor:
    """``name``'s function of ``x`` (any float dtype), with parameter ``alpha`` where it has one."""
    act = get_activation(name)
    a = act.default_alpha if alpha is None else alpha
    return act.fn(x, a if a is not None else 0.0)
