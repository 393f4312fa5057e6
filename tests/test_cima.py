"""The MVM of one array: fast == reference bit for bit, ideal == x @ w, limits raise CimaError."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from imcflow.cima import MvmResult, mvm
from imcflow.cima.fast import adc_bit_true, binary_counts
from imcflow.cima.reference import adc_code_bit_true, mvm_reference
from imcflow.config import JSSC2022, TINY
from imcflow.errors import CimaError, ImcflowError

MODES = ("ideal", "bit_true", "analog")
SIGNS = list(itertools.product((False, True), repeat=2))


def _ints(rng, shape, bits, signed):
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    return rng.integers(lo, hi, shape)


def _same(a: MvmResult, b: MvmResult) -> None:
    assert a.acc.dtype == np.int64 and b.acc.dtype == np.int64
    np.testing.assert_array_equal(a.acc, b.acc)
    assert (a.scale_num, a.scale_shift, a.conversions, a.column_evals, a.rows_driven, a.macs) == \
           (b.scale_num, b.scale_shift, b.conversions, b.column_evals, b.rows_driven, b.macs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_signed,w_signed", SIGNS)
def test_fast_equals_reference_random(mode, x_signed, w_signed):
    rng = np.random.default_rng(hash((mode, x_signed, w_signed)) % 2**32)
    for x_bits, w_bits, rows, n_out, fs in [(4, 4, 72, 8, 36), (3, 2, 50, 16, 18), (1, 8, 17, 4, 72),
                                            (8, 1, 9, 3, 9), (5, 3, 72, 10, 72), (8, 8, 20, 4, 9)]:
        x = _ints(rng, (3, rows), x_bits, x_signed)
        w = _ints(rng, (rows, n_out), w_bits, w_signed)
        kw = dict(x_signed=x_signed, w_signed=w_signed, mode=mode, full_scale=fs, chip=TINY, seed=7)
        _same(mvm(x, w, x_bits, w_bits, **kw), mvm_reference(x, w, x_bits, w_bits, **kw))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_signed,w_signed", SIGNS)
def test_fast_equals_reference_exhaustive_2bit(mode, x_signed, w_signed):
    """Every 3-row vector of 2-b inputs against every 3-row column of 2-b weights, on ``tiny``."""
    vals = lambda s: range(-2, 2) if s else range(4)  # noqa: E731
    x = np.array(list(itertools.product(vals(x_signed), repeat=3)))          # (64, 3)
    w_all = np.array(list(itertools.product(vals(w_signed), repeat=3))).T    # (3, 64)
    for fs in (9, 2):   # 2 < 3 rows: exercises clipping at the top code
        for c0 in range(0, 64, 16):  # 16 outputs x 2 bits = the 32 columns of tiny
            w = w_all[:, c0:c0 + 16]
            kw = dict(x_signed=x_signed, w_signed=w_signed, mode=mode, full_scale=fs, chip=TINY, seed=c0)
            _same(mvm(x, w, 2, 2, **kw), mvm_reference(x, w, 2, 2, **kw))


def test_extreme_8bit_codes_stay_exact():
    """Every code at full scale with 8-b operands: the largest sums the combine step can see."""
    lo, hi = -128, 127
    x = np.array([[255] * 9, [hi] * 9, [lo] * 9, [-1] * 9])
    w = np.array([[lo, hi, -1, 0]] * 9)
    for x_signed in (False, True):
        xs = x[1:] if x_signed else x[:1]
        for mode in ("bit_true", "ideal"):
            kw = dict(x_signed=x_signed, mode=mode, full_scale=9, chip=TINY)
            _same(mvm(xs, w, 8, 8, **kw), mvm_reference(xs, w, 8, 8, **kw))


@pytest.mark.parametrize("x_signed,w_signed", SIGNS)
def test_ideal_is_exact_matmul(x_signed, w_signed):
    rng = np.random.default_rng(1)
    x = _ints(rng, (20, 1152), 8, x_signed)
    w = _ints(rng, (1152, 32), 8, w_signed)
    r = mvm(x, w, 8, 8, x_signed=x_signed, w_signed=w_signed, mode="ideal")
    np.testing.assert_array_equal(r.acc * r.scale, x @ w)
    assert (r.scale_num, r.scale_shift, r.scale) == (1, 0, 1.0)


def test_bit_true_error_within_half_lsb_per_column():
    """Without clipping each code is off by at most 1/2 LSB, so |acc*scale - x@w| is bounded."""
    rng = np.random.default_rng(2)
    x, w = _ints(rng, (50, 72), 4, False), _ints(rng, (72, 16), 2, True)
    r = mvm(x, w, 4, 2, mode="bit_true", full_scale=72, chip=TINY)
    assert (r.scale_num, r.scale_shift) == (72, 8) and r.scale == 72 / 256
    bound = 0.5 * r.scale * (2 ** 4 - 1) * (2 ** 2 - 1)
    err = np.abs(r.acc * r.scale - x @ w)
    assert err.max() <= bound and err.max() > 0


def test_lossless_chip_makes_bit_true_ideal():
    rng = np.random.default_rng(3)
    x, w = _ints(rng, (4, 100), 4, False), _ints(rng, (100, 8), 4, True)
    r = mvm(x, w, 4, 4, mode="bit_true", chip="ideal")
    np.testing.assert_array_equal(r.acc, x @ w)
    assert r.scale == 1
    with pytest.raises(CimaError, match="lossless"):
        mvm(x, w, 4, 4, mode="analog", chip="ideal")


def test_analog_seeded_and_close_to_bit_true():
    rng = np.random.default_rng(4)
    x, w = _ints(rng, (64, 1152), 4, False), _ints(rng, (1152, 64), 4, True)
    a1, a2 = mvm(x, w, 4, 4, mode="analog", seed=5), mvm(x, w, 4, 4, mode="analog", seed=5)
    b = mvm(x, w, 4, 4, mode="bit_true", seed=5)
    np.testing.assert_array_equal(a1.acc, a2.acc)
    assert not np.array_equal(a1.acc, mvm(x, w, 4, 4, mode="analog", seed=6).acc)
    assert not np.array_equal(a1.acc, b.acc)
    # errors of a fraction of an LSB per conversion, spread over 15 x 15 weights of 2^(i+j)
    assert np.abs(a1.acc - b.acc).mean() < 0.05 * np.abs(b.acc).mean() + 225
    quiet = dataclasses.replace(JSSC2022, analog=dataclasses.replace(
        JSSC2022.analog, column_gain_sigma=0.0, column_offset_sigma_lsb=0.0, adc_noise_rms_lsb=0.0))
    np.testing.assert_array_equal(mvm(x, w, 4, 4, mode="analog", chip=quiet).acc, b.acc)


def test_torch_inputs_and_event_counts():
    rng = np.random.default_rng(5)
    x, w = _ints(rng, (6, 40), 3, False), _ints(rng, (40, 5), 4, True)
    x[0, :10] = 0
    ref = mvm(x, w, 3, 4, chip=TINY, full_scale=36)
    for xt, wt in [(torch.from_numpy(x).to(torch.uint8), torch.from_numpy(w).to(torch.int8)),
                   (torch.from_numpy(x), torch.from_numpy(w).to(torch.int32))]:
        _same(mvm(xt, wt, 3, 4, chip=TINY, full_scale=36), ref)
    assert ref.conversions == ref.column_evals == 6 * 3 * 5 * 4
    assert ref.rows_driven == 3 * np.count_nonzero(x)
    assert ref.macs == 6 * 40 * 5


def test_adc_float_formula_is_exact_for_every_count_and_full_scale():
    k = torch.arange(0, 1153, dtype=torch.int32)
    for fs in JSSC2022.adc.full_scales_rows + (1, 7, 100, 1151, 1153):
        want = [adc_code_bit_true(int(v), fs, 8) for v in k]
        assert adc_bit_true(k, fs, 8, 1152).tolist() == want
        assert adc_bit_true(k, fs, 8, 1 << 20).dtype == torch.float64  # the wide fallback
        assert adc_bit_true(k, fs, 8, 1 << 20).tolist() == want


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 13, 3), (17, 8, 8), (40, 1152, 256)])
def test_binary_counts_any_shape(m, k, n):
    g = torch.Generator().manual_seed(m * k * n)
    a = torch.randint(0, 2, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(0, 2, (k, n), generator=g, dtype=torch.int8)
    assert torch.equal(binary_counts(a, b), (a.int() @ b.int()))


def _raises(match, **kw):
    args = dict(x=np.zeros((2, 8), np.int64), w=np.zeros((8, 4), np.int64), x_bits=4, w_bits=4, chip=TINY)
    args.update(kw)
    with pytest.raises(CimaError, match=match) as info:
        mvm(args.pop("x"), args.pop("w"), args.pop("x_bits"), args.pop("w_bits"), **args)
    assert isinstance(info.value, ImcflowError)


def test_limits_raise_typed_errors():
    _raises("73 rows, 1 more than the array's 72", x=np.zeros((2, 73), int), w=np.zeros((73, 4), int))
    _raises("9 x 4 = 36 columns, 4 more than the array's 32", w=np.zeros((8, 9), int))
    _raises("x_bits = 0", x_bits=0)
    _raises("w_bits = 9", w_bits=9)
    _raises(r"x has values in \[16, 16\], outside the 4-b unsigned range \[0, 15\]", x=np.full((2, 8), 16))
    _raises(r"outside the 4-b signed range \[-8, 7\]", w=np.full((8, 4), -9))
    _raises("outside the 4-b unsigned", x=np.full((2, 8), -1))     # never wrapped
    _raises("dtype float", x=np.zeros((2, 8)))
    _raises("dtype torch.float32", x=torch.zeros(2, 8))
    _raises("shape", x=np.zeros(8, int))
    _raises("must match", x=np.zeros((2, 7), int))
    _raises("mode = 'exact'", mode="exact")
    _raises("full_scale = 0", full_scale=0)


@pytest.mark.parametrize("mode", MODES)
def test_batch_chunks_change_nothing(mode, monkeypatch):
    import imcflow.cima.fast as fast
    rng = np.random.default_rng(6)
    x, w = _ints(rng, (50, 30), 4, True), _ints(rng, (30, 4), 3, True)
    kw = dict(x_signed=True, mode=mode, full_scale=9, chip=TINY, seed=2)
    whole = mvm(x, w, 4, 3, **kw)
    monkeypatch.setattr(fast, "BATCH_CHUNK", 7)
    _same(mvm(x, w, 4, 3, **kw), whole)
    _same(whole, mvm_reference(x, w, 4, 3, **kw))
