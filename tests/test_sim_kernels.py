"""The simulator's layer kernels against obviously-right versions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imcflow.config import TINY
from imcflow.quant import reference as ref
from imcflow.quant.requant import apply_add, avg_round
from imcflow.sim import kernels


def _loop_needed(h, w, k, s, p, px_lo, px_hi):
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    out = set()
    for px in range(px_lo, px_hi):
        y, x = divmod(px, ow)
        for i in range(k[0]):
            for j in range(k[1]):
                r, c = y * s[0] - p[0] + i, x * s[1] - p[1] + j
                if 0 <= r < h and 0 <= c < w:
                    out.add(r * w + c)
    return sorted(out)


@pytest.mark.parametrize("k,s,p,lo,hi", [((3, 3), (1, 1), (1, 1), 0, 64), ((3, 3), (2, 2), (1, 1), 5, 11),
                                         ((1, 1), (1, 1), (0, 0), 7, 30), ((3, 3), (1, 1), (0, 0), 3, 20)])
def test_needed_pixels_equal_loop(k, s, p, lo, hi):
    assert list(kernels.needed_pixels(8, 8, k, s, p, lo, hi)) == _loop_needed(8, 8, k, s, p, lo, hi)


@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1))])
def test_pooling_and_add_equal_reference(k, s, p):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, size=(3, 4, 9, 9))
    assert np.array_equal(kernels.maxpool(x, k, s, p), ref.maxpool_int(x, k, s, p))
    assert np.array_equal(kernels.avgpool(x, k, s, p), ref.avgpool_int(x, k, s, p))
    assert np.array_equal(kernels.global_avgpool(x), avg_round(x.sum(axis=(2, 3), keepdims=True), 81))
    y = rng.integers(0, 16, size=x.shape)
    assert np.array_equal(kernels.residual_add(x, y, (3, 5), 3, 0, 15), apply_add(x, y, (3, 5), 3, 0, 15))


@pytest.mark.parametrize("mode", ["ideal", "bit_true"])
@pytest.mark.parametrize("px", [(0, 64), (10, 37), (63, 64)])
def test_tile_mvm_is_a_slice_of_the_whole_layer(mode, px):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 16, size=(2, 8, 8, 8))
    w = rng.integers(-8, 8, size=(4, 8, 3, 3))
    got = kernels.tile_mvm(x, w, kernel=(3, 3), stride=(1, 1), padding=(1, 1), px_lo=px[0], px_hi=px[1], x_bits=4,
                           x_signed=False, w_bits=4, full_scale=72, mode=mode, chip=TINY, seed=0)
    cols = F.unfold(torch.from_numpy(x).double(), 3, padding=1).permute(0, 2, 1).numpy().astype(np.int64)
    exact = cols @ w.reshape(4, -1).T.astype(np.int64)          # (N, 64, 4): ideal-mode accumulators
    if mode == "ideal":
        assert np.array_equal(got, exact.transpose(0, 2, 1)[:, :, px[0]:px[1]])
    from imcflow import cima
    res = cima.mvm(cols.reshape(-1, 72), w.reshape(4, -1).T, 4, 4, mode=mode, full_scale=72, chip=TINY)
    want = res.acc.reshape(2, 64, 4).transpose(0, 2, 1)[:, :, px[0]:px[1]]
    assert np.array_equal(got, want)
