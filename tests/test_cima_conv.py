"""Whole layers the chip's way: bpbs_conv2d == im2col + row tiles + mvm, bit for bit."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imcflow.cima import bpbs_conv2d, bpbs_conv2d_ste, bpbs_linear, bpbs_linear_ste, mvm
from imcflow.cima.reference import bpbs_conv2d_reference
from imcflow.config import AnalogConfig
from imcflow.errors import CimaError, ImcflowError
from imcflow.ir.qgraph import row_tiles


def _rand(g, shape, bits, signed):
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    return torch.randint(lo, hi, shape, generator=g).float()


LAYERS = [  # (N, C_in, H, W, C_out, kh, kw, stride, padding, array_rows, x_bits, w_bits)
    (2, 10, 6, 5, 4, 3, 3, 1, 1, 36, 4, 4),      # 3 row tiles of 4, 3, 3 channels
    (1, 7, 5, 5, 3, 3, 3, 2, 0, 27, 3, 2),       # stride 2, no padding, 3 tiles
    (2, 9, 4, 4, 5, 1, 1, 1, 0, 4, 2, 3),        # 1x1 conv, 3 tiles
    (1, 5, 6, 4, 2, 3, 2, 1, (1, 0), 72, 8, 8),  # one tile, non-square kernel
]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
@pytest.mark.parametrize("x_signed", [False, True])
def test_conv_equals_im2col_mvm_reference(layer, mode, x_signed):
    n, c, h, w_, c_out, kh, kw, stride, padding, rows, xb, wb = layer
    g = torch.Generator().manual_seed(hash((layer, mode, x_signed)) % 2**31)
    x, w = _rand(g, (n, c, h, w_), xb, x_signed), _rand(g, (c_out, c, kh, kw), wb, True)
    kw_ = dict(x_bits=xb, w_bits=wb, x_signed=x_signed, stride=stride, padding=padding, full_scale=min(rows, 18),
               mode=mode, adc_bits=8, array_rows=rows, seed=11, analog=AnalogConfig())
    assert len(row_tiles(c, kh, kw, rows)) >= (1 if rows == 72 else 3)
    got = bpbs_conv2d(x, w, **kw_)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), bpbs_conv2d_reference(x, w, **kw_))


def test_conv_larger_layer_against_fast_mvm_and_ideal_conv():
    g = torch.Generator().manual_seed(0)
    x, w = _rand(g, (3, 40, 8, 8), 4, False), _rand(g, (16, 40, 3, 3), 4, True)
    for mode, fs in itertools.product(["ideal", "bit_true"], [144, 36]):
        kw = dict(x_bits=4, w_bits=4, x_signed=False, padding=1, full_scale=fs, mode=mode, adc_bits=8, array_rows=144)
        got = bpbs_conv2d(x, w, out_dtype=torch.int64, **kw)
        np.testing.assert_array_equal(got.numpy(), bpbs_conv2d_reference(x, w, mvm_fn=mvm, **kw))
        if mode == "ideal":
            assert torch.equal(got, F.conv2d(x.double(), w.double(), padding=1).to(torch.int64))


def test_linear_is_1x1_conv():
    g = torch.Generator().manual_seed(1)
    x, w = _rand(g, (5, 30), 4, False), _rand(g, (6, 30), 4, True)
    kw = dict(x_bits=4, w_bits=4, x_signed=False, full_scale=9, mode="bit_true", adc_bits=8, array_rows=12)
    got = bpbs_linear(x, w, **kw)
    want = bpbs_conv2d_reference(x[:, :, None, None], w[:, :, None, None], **kw)[:, :, 0, 0]
    np.testing.assert_array_equal(got.numpy(), want)
    assert torch.equal(bpbs_linear_ste(x, w, **{k: v for k, v in kw.items() if k != "mode"}), got)


def test_analog_conv_is_seeded():
    g = torch.Generator().manual_seed(2)
    x, w = _rand(g, (2, 8, 5, 5), 4, False), _rand(g, (4, 8, 3, 3), 4, True)
    kw = dict(x_bits=4, w_bits=4, x_signed=False, padding=1, full_scale=36, adc_bits=8, array_rows=36,
              analog=AnalogConfig())
    a = bpbs_conv2d(x, w, mode="analog", seed=1, **kw)
    assert torch.equal(a, bpbs_conv2d(x, w, mode="analog", seed=1, **kw))
    assert not torch.equal(a, bpbs_conv2d(x, w, mode="analog", seed=2, **kw))
    b = bpbs_conv2d(x, w, mode="bit_true", **kw)
    assert (a - b).abs().mean() < 0.05 * b.abs().mean() + 225


@pytest.mark.parametrize("size, padding, dilation", [(5, 1, 1), (9, 2, 2)])
def test_ste_forward_is_bit_true_and_backward_is_scaled_conv_gradient(size, padding, dilation):
    g = torch.Generator().manual_seed(3)
    x, w = _rand(g, (2, 10, size, size), 4, False), _rand(g, (3, 10, 3, 3), 4, True)
    kw = dict(x_bits=4, w_bits=4, x_signed=False, stride=2, padding=padding, dilation=dilation, full_scale=72,
              adc_bits=8, array_rows=36)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = bpbs_conv2d_ste(xs, ws, **kw)
    assert torch.equal(out, bpbs_conv2d(x, w, mode="bit_true", **kw))
    up = torch.randn(out.shape, generator=g, dtype=out.dtype)
    (out * up).sum().backward()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    (F.conv2d(xr, wr, stride=2, padding=padding, dilation=dilation) * (256 / 72) * up.float()).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-5, atol=1e-4)
    assert xs.grad.dtype == torch.float32 and ws.grad.dtype == torch.float32


def test_integer_dtypes_accepted():
    g = torch.Generator().manual_seed(4)
    x, w = _rand(g, (1, 4, 4, 4), 4, False), _rand(g, (2, 4, 3, 3), 4, True)
    kw = dict(x_bits=4, w_bits=4, x_signed=False, full_scale=36, mode="bit_true", adc_bits=8, array_rows=36)
    assert torch.equal(bpbs_conv2d(x.to(torch.uint8), w.to(torch.int8), **kw), bpbs_conv2d(x, w, **kw))


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.full((1, 4, 4, 4), 0.5)), "non-integer"),
    (dict(x=torch.full((1, 4, 4, 4), 16.0)), r"outside the 4-b unsigned range \[0, 15\]"),
    (dict(w=torch.full((2, 4, 3, 3), 8.0)), r"outside the 4-b signed range \[-8, 7\]"),
    (dict(w=torch.zeros(2, 3, 3, 3)), "4 channels but w_int expects 3"),
    (dict(x=torch.zeros(4, 4, 4)), "4-D"),
    (dict(mode="analog"), "analog=<AnalogConfig>"),
    (dict(mode="exact"), "mode = 'exact'"),
    (dict(x_bits=0), "x_bits = 0"),
    (dict(full_scale=0), "full_scale = 0"),
])
def test_bad_arguments_raise(change, match):
    args = dict(x=torch.zeros(1, 4, 4, 4), w=torch.zeros(2, 4, 3, 3), x_bits=4, w_bits=4, x_signed=False,
                full_scale=36, mode="bit_true", adc_bits=8, array_rows=36)
    args.update(change)
    with pytest.raises(CimaError, match=match) as info:
        bpbs_conv2d(args.pop("x"), args.pop("w"), **args)
    assert isinstance(info.value, ImcflowError)
    with pytest.raises(CimaError, match="drop the mode"):
        bpbs_conv2d_ste(torch.zeros(1, 4, 4, 4), torch.zeros(2, 4, 3, 3), mode="ideal")


@pytest.mark.parametrize("mode", ["bit_true", "analog"])
def test_image_chunks_change_nothing(mode, monkeypatch):
    import imcflow.cima.fast as fast
    g = torch.Generator().manual_seed(5)
    x, w = _rand(g, (5, 6, 4, 4), 3, False), _rand(g, (2, 6, 3, 3), 2, True)
    kw = dict(x_bits=3, w_bits=2, x_signed=False, padding=1, full_scale=18, mode=mode, adc_bits=8, array_rows=27,
              analog=AnalogConfig(), seed=4)
    whole = bpbs_conv2d(x, w, **kw)
    monkeypatch.setattr(fast, "BATCH_CHUNK", 20)   # one 4x4 image per chunk, 20 windows per product
    assert torch.equal(bpbs_conv2d(x, w, **kw), whole)
    np.testing.assert_array_equal(whole.numpy(), bpbs_conv2d_reference(x, w, **kw))


@pytest.mark.parametrize("target", [1, 150, 300, 5000])
@pytest.mark.parametrize("mode", ["ideal", "bit_true"])
def test_lut_conv_chunking_is_exact(monkeypatch, target, mode):
    """Chunks of part of an image's output rows, of several images, single windows (padded to
    _int_mm's 17 rows) and odd output counts (padded to 8 columns) give the reference numbers."""
    from imcflow.cima import conv
    monkeypatch.setattr(conv, "TARGET_COUNTS", target)
    g = torch.Generator().manual_seed(target)
    x, w = _rand(g, (3, 6, 7, 5), 3, True), _rand(g, (5, 6, 3, 3), 3, True)
    kw = dict(x_bits=3, w_bits=3, x_signed=True, stride=(2, 1), padding=1, full_scale=20, mode=mode, adc_bits=5,
              array_rows=36)
    got = bpbs_conv2d(x, w, out_dtype=torch.int64, **kw)
    np.testing.assert_array_equal(got.numpy(), bpbs_conv2d_reference(x, w, mvm_fn=mvm, **kw))


def test_lut_route_threads_follow_inference_mode(monkeypatch):
    """The LUT route's worker threads run under the caller's inference mode (regression)."""
    import torch
    from imcflow.cima import bpbs_conv2d
    from imcflow.cima import conv as conv_module
    monkeypatch.setattr(conv_module, "TARGET_COUNTS", 4096)  # many chunks, so several threads
    from imcflow.cima.reference import bpbs_conv2d_reference
    from imcflow.config import JSSC2022
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 16, (4, 16, 12, 12), generator=g).float()
    w = torch.randint(-8, 8, (8, 16, 3, 3), generator=g).float()
    kw = dict(x_bits=4, w_bits=4, x_signed=False, stride=(1, 1), padding=(1, 1), full_scale=144,
              mode="bit_true", adc_bits=JSSC2022.adc.bits, array_rows=JSSC2022.array.rows)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            got = bpbs_conv2d(x, w, **kw)
    finally:
        torch.set_num_threads(before)
    from imcflow.cima import mvm
    want = bpbs_conv2d_reference(x, w, mvm_fn=mvm, **kw)
    assert (got.numpy() == want).all()


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", ["ideal", "bit_true"])
@pytest.mark.parametrize("x_signed", [False, True])
def test_planes_conv2d_equals_bpbs_conv2d(layer, mode, x_signed):
    """The device-agnostic route (conv2d over bit-planes: what QAT runs on a GPU) gives the same codes."""
    from imcflow.cima.conv import planes_conv2d

    n, c, h, w_, c_out, kh, kw, stride, padding, rows, xb, wb = layer
    g = torch.Generator().manual_seed(hash((layer, mode, x_signed, "planes")) % 2**31)
    x, w = _rand(g, (n, c, h, w_), xb, x_signed), _rand(g, (c_out, c, kh, kw), wb, True)
    kw_ = dict(x_bits=xb, w_bits=wb, x_signed=x_signed, stride=stride, padding=padding, full_scale=min(rows, 18),
               mode=mode, adc_bits=8, array_rows=rows)
    got = planes_conv2d(x, w, **kw_)
    assert got.dtype == torch.float64
    assert torch.equal(got, bpbs_conv2d(x, w, **kw_))
    with pytest.raises(CimaError, match="ideal and bit_true"):
        planes_conv2d(x, w, **(kw_ | {"mode": "analog"}))


def test_planes_conv2d_stays_on_the_inputs_device(monkeypatch):
    """Every tensor planes_conv2d makes is on its inputs' device (the meta device stands in for a GPU:
    a CPU tensor mixed in raises there too). Session 7's first GPU QAT failed on a CPU shift tensor."""
    import imcflow.cima.conv as conv
    from imcflow.cima.fast import bit_planes

    monkeypatch.setattr(conv, "_check_args", lambda *a: None)  # its range check reads values: not on meta
    x = torch.zeros((2, 8, 5, 5), dtype=torch.int32, device="meta")
    w = torch.zeros((4, 8, 3, 3), dtype=torch.int32, device="meta")
    got = conv.planes_conv2d(x, w, x_bits=4, w_bits=4, x_signed=False, padding=1, full_scale=64, adc_bits=8,
                             array_rows=1152)
    assert got.device.type == "meta" and got.shape == (2, 4, 5, 5)
    assert bit_planes(x, 4, dim=0).device.type == "meta"
