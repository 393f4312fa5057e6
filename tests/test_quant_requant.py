"""Requant derivation: integers reproduce the real rescaling, round half up, within one step."""

from fractions import Fraction

import numpy as np
import pytest

from imcflow.errors import QuantError
from imcflow.ir.qgraph import QTensor
from imcflow.quant.requant import (MULT_BITS, apply_add, avg_round, derive_add, derive_requant, pick_shift,
                                   round_half_up)


def _spec(bits=4, signed=False, scale=0.1, shape=(8,)):
    return QTensor(shape=shape, bits=bits, signed=signed, scale=scale)


def test_round_half_up_is_floor_plus_half():
    v = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.49, 2.5])
    assert round_half_up(v).tolist() == [-2, -1, 0, 1, 2, 2, 3]


@pytest.mark.parametrize("seed", range(5))
def test_requant_matches_real_rescale(seed):
    rng = np.random.default_rng(seed)
    c = 16
    s_x, s_w = rng.uniform(0.01, 0.2), rng.uniform(0.001, 0.05, size=c)
    bias = rng.normal(0, 1, size=c)
    out = _spec(bits=8, signed=True, scale=rng.uniform(0.05, 0.5), shape=(c,))
    rq = derive_requant("L", s_x, s_w, bias, out)
    assert 1 <= rq.shift and np.abs(rq.multiplier).max() < 2 ** (MULT_BITS - 1)
    acc = rng.integers(-3000, 3000, size=(500, c))
    got = rq.apply(acc)
    real = (acc * s_x * s_w + bias) / out.scale
    want = np.clip(round_half_up(real), out.min_int, out.max_int)
    assert np.abs(got - want).max() <= 1
    assert (got == want).mean() > 0.99


def test_requant_apply_with_acc_scale_is_exact_rational():
    rng = np.random.default_rng(3)
    out = _spec(bits=8, signed=True, scale=0.2, shape=(4,))
    rq = derive_requant("L", 0.05, np.array([0.01, 0.02, 0.03, 0.04]), np.array([0.3, -0.2, 0.0, 1.0]), out)
    acc = rng.integers(-500, 500, size=(50, 4))
    num, den = 288, 8  # full scale 288 rows, 8-b ADC
    got = rq.apply(acc, num, den)
    for n in range(acc.shape[0]):
        for ch in range(4):
            v = Fraction(int(acc[n, ch]) * num, 2 ** den) * int(rq.multiplier[ch]) + int(rq.bias[ch])
            y = (v / 2 ** rq.shift + Fraction(1, 2)).__floor__()
            assert got[n, ch] == min(max(y, rq.out_min), rq.out_max)


def test_relu_and_relu6_clamps():
    out = _spec(bits=4, signed=False, scale=6 / 15)
    rq = derive_requant("L", 0.1, np.full(8, 0.1), None, out, lo=0.0, hi=6.0)
    assert (rq.out_min, rq.out_max) == (0, 15)
    out2 = _spec(bits=4, signed=False, scale=0.2)  # 15 steps reach 3.0 < 6: range limits
    rq2 = derive_requant("L", 0.1, np.full(8, 0.1), None, out2, lo=0.0, hi=2.0)
    assert (rq2.out_min, rq2.out_max) == (0, 10)
    signed = _spec(bits=4, signed=True, scale=0.1)
    rq3 = derive_requant("L", 0.1, np.full(8, 0.1), None, signed)
    assert (rq3.out_min, rq3.out_max) == (-8, 7)


def test_multiplier_too_large_is_a_quant_error():
    with pytest.raises(QuantError, match="layer 'big'"):
        derive_requant("big", 100.0, np.full(2, 100.0), None, _spec(scale=1e-3, shape=(2,)))
    with pytest.raises(QuantError, match="positive"):
        derive_requant("neg", 0.1, np.array([0.1, -0.1]), None, _spec(shape=(2,)))


def test_pick_shift_uses_the_multiplier_width():
    for m in (0.001, 0.37, 1.0, 5.5, 1000.0):
        s = pick_shift(np.array([m]), "t")
        assert round_half_up(m * 2 ** s) < 2 ** 15 <= round_half_up(m * 2 ** (s + 1)) or s == 40


@pytest.mark.parametrize("seed", range(3))
def test_add_matches_real_sum(seed):
    rng = np.random.default_rng(seed)
    s_a, s_b = rng.uniform(0.05, 0.3, size=2)
    out = _spec(bits=4, signed=False, scale=rng.uniform(0.1, 0.5))
    mults, shift, lo, hi = derive_add("A", s_a, s_b, out, lo=0.0)
    assert (lo, hi) == (0, 15)
    a = rng.integers(-8, 8, size=1000)
    b = rng.integers(0, 16, size=1000)
    got = apply_add(a, b, mults, shift, lo, hi)
    want = np.clip(round_half_up((a * s_a + b * s_b) / out.scale), 0, 15)
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.99


def test_avg_round_is_round_half_up():
    total = np.arange(-20, 21)
    for count in (1, 2, 3, 4, 9, 16):
        want = [int((Fraction(int(t), count) + Fraction(1, 2)).__floor__()) for t in total]
        assert avg_round(total, count).tolist() == want
