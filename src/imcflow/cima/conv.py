"""Whole conv and linear layers computed the chip's way, fast, on batches (torch).

:func:`bpbs_conv2d` equals, bit for bit, this definition (:func:`imcflow.cima.reference.bpbs_conv2d_reference`):
im2col with rows in the order of ``weight.reshape(c_out, -1)``; rows split into input-channel
groups by :func:`imcflow.ir.qgraph.row_tiles`; one :func:`imcflow.cima.mvm` per row tile (all with
the same ADC full scale); the tiles' accumulators summed. Instead of im2col it runs one float32
conv2d per (row tile, input bit-plane): 0/1 input planes against ``c_out * w_bits`` 0/1 kernels give
every column count k exactly (k <= array_rows < 2**24), then the ADC and the signed 2**(i+j) sum.

Analog mode: tile ``t`` is one mvm with ``seed + t``; its batch is the tile's im2col rows, ordered
image-major then output row then output column (``n*Ho*Wo + ho*Wo + wo``), and its physical columns
are ``o*w_bits + j``, so the draws of :func:`imcflow.cima.analog.draw_analog` line up exactly. Large
batches run in chunks of images (bounded memory); the noise is drawn chunk after chunk from one
:class:`~imcflow.cima.analog.AnalogStream` per tile, which gives the same values as one big draw.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from imcflow.cima.analog import AnalogStream, analog_code
from imcflow.cima.common import Mode, int_range, parse_mode
from imcflow.cima.fast import adc_bit_true, bit_planes, bit_weights
from imcflow.config.chip import AnalogConfig
from imcflow.errors import CimaError
from imcflow.ir.qgraph import row_tiles

_FLOAT32_EXACT = 1 << 24


def _check_int_tensor(t: torch.Tensor, dims: int, bits: int, signed: bool, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != dims:
        raise CimaError(f"{what} must be a {dims}-D torch tensor, got {getattr(t, 'shape', type(t))}")
    if t.numel() == 0:
        return
    if t.is_floating_point() and not torch.equal(t, torch.round(t)):
        raise CimaError(f"{what} holds non-integer values; round it to integers first")
    lo, hi = int_range(bits, signed)
    t_min, t_max = (float(v) for v in torch.aminmax(t))
    if t_min < lo or t_max > hi:
        kind = "signed" if signed else "unsigned"
        raise CimaError(f"{what} has values in [{t_min:g}, {t_max:g}], outside the {bits}-b {kind} "
                        f"range [{lo}, {hi}]; clip or requantise it first")


def _check_args(x, w, x_bits, w_bits, x_signed, w_signed, full_scale, mode, analog) -> Mode:
    for bits, what in ((x_bits, "x_bits"), (w_bits, "w_bits")):
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 16:
            raise CimaError(f"{what} = {bits!r}: must be an integer from 1 to 16 (the chip allows 1..array.max_bits)")
    _check_int_tensor(x, 4, x_bits, x_signed, "x_int (N, C, H, W)")
    _check_int_tensor(w, 4, w_bits, w_signed, "w_int (C_out, C_in, kh, kw)")
    if x.shape[1] != w.shape[1]:
        raise CimaError(f"x_int has {x.shape[1]} channels but w_int expects {w.shape[1]}")
    if isinstance(full_scale, bool) or not isinstance(full_scale, numbers.Integral) or full_scale <= 0:
        raise CimaError(f"full_scale = {full_scale!r}: must be a positive integer number of rows")
    mode = parse_mode(mode)
    if mode is Mode.ANALOG and analog is None:
        raise CimaError("mode='analog' needs analog=<AnalogConfig> (e.g. chip.analog)")
    return mode


CHUNK_ELEMS = 1 << 24
"""Images per pass are limited so that one bit-plane's counts (images x C_out*w_bits x Ho x Wo)
hold at most this many elements (analog mode: divided by x_bits, for its float64 noise)."""


def _tile_codes(k: torch.Tensor, mode: Mode, full_scale: int, adc_bits: int, rows: int, stream, noise, plane: int):
    """ADC codes of counts ``k`` (N, cols, Ho, Wo) of one tile and input bit-plane."""
    if mode is Mode.IDEAL:
        return k
    if mode is Mode.BIT_TRUE:
        return adc_bit_true(k, full_scale, adc_bits, rows, inplace=True)
    n, cols, ho, wo = k.shape
    noise = noise[:, plane, :].reshape(n, ho, wo, cols).transpose(0, 3, 1, 2)
    codes = analog_code(k.double().numpy(), stream.gain.reshape(1, cols, 1, 1),
                        stream.offset_lsb.reshape(1, cols, 1, 1), noise, full_scale, adc_bits)
    return torch.from_numpy(codes).to(torch.float64)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def bpbs_conv2d(x_int: torch.Tensor, w_int: torch.Tensor, *, x_bits: int, w_bits: int, x_signed: bool,
                stride=1, padding=0, full_scale: int, mode: str = "bit_true", adc_bits: int, array_rows: int,
                w_signed: bool = True, seed: int = 0, analog: AnalogConfig | None = None,
                out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A conv layer as the chip computes it: per row tile, bit-serial inputs, bit-parallel weights,
    ADC codes, signed shift-add; tiles summed digitally.

    Args:
        x_int: (N, C, H, W) integer-valued tensor within ``x_bits`` (float32 or an integer dtype).
        w_int: (C_out, C, kh, kw) integer-valued tensor within ``w_bits``.
        stride, padding: as for ``torch.nn.functional.conv2d`` (zero padding).
        full_scale: ADC full scale in rows, for every row tile.
        mode: "ideal", "bit_true" or "analog" (analog needs ``analog``; see module doc for the draws).
        adc_bits, array_rows: chip.adc.bits and chip.array.rows.
        out_dtype: dtype of the result (default float64, exact below 2**53; int64 also works).

    Returns:
        acc (N, C_out, Ho, Wo): the sum of the row tiles' MVM accumulators; ``acc * full_scale /
        2**adc_bits`` (``acc`` in ideal mode) estimates ``conv2d(x_int, w_int)``.
    """
    mode = _check_args(x_int, w_int, x_bits, w_bits, x_signed, w_signed, full_scale, mode, analog)
    x_bits, w_bits, full_scale, adc_bits, array_rows = map(int, (x_bits, w_bits, full_scale, adc_bits, array_rows))
    c_out, c_in, kh, kw = w_int.shape
    n, _, h, wd = x_int.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    tiles = row_tiles(c_in, kh, kw, array_rows)
    streams = ([AnalogStream(analog, seed + t, x_bits, c_out * w_bits) for t in range(len(tiles))]
               if mode is Mode.ANALOG else None)
    wb = bit_planes(w_int.to(torch.int32), w_bits, dim=1).reshape(c_out * w_bits, c_in, kh, kw).float()
    per_image = c_out * w_bits * max(1, ho * wo) * (x_bits if mode is Mode.ANALOG else 1)
    chunk = max(1, CHUNK_ELEMS // per_image)
    parts = [_conv_chunk(x_int[n0:n0 + chunk].to(torch.int32), wb, tiles, streams, mode, x_bits, w_bits,
                         x_signed, w_signed, (sh, sw), (ph, pw), full_scale, adc_bits, array_rows)
             for n0 in range(0, n, chunk)]
    acc = torch.cat(parts) if parts else torch.zeros((0, c_out, ho, wo))
    return acc.to(out_dtype)


def _conv_chunk(xi, wb, tiles, streams, mode, x_bits, w_bits, x_signed, w_signed, stride, padding,
                full_scale, adc_bits, array_rows) -> torch.Tensor:
    """bpbs_conv2d of a few images: the loop over row tiles and input bit-planes."""
    kh, kw = wb.shape[2:]
    c_out = wb.shape[0] // w_bits
    cw, ci = bit_weights(w_bits, w_signed), bit_weights(x_bits, x_signed)
    max_code = array_rows if mode is Mode.IDEAL else (1 << adc_bits) - 1
    # every partial sum is an integer of at most this size, so the float sums below are exact
    bound = max_code * sum(map(abs, cw)) * sum(map(abs, ci)) * len(tiles)
    dtype = torch.float32 if bound < _FLOAT32_EXACT else torch.float64
    acc = None
    for t, (c0, c1) in enumerate(tiles):
        noise = None
        for i in range(x_bits):
            xb = ((xi[:, c0:c1] >> i) & 1).float()
            k = F.conv2d(xb, wb[:, c0:c1], stride=stride, padding=padding)
            n, _, ho, wo = k.shape
            if streams is not None and noise is None:
                noise = streams[t].noise_lsb(n * ho * wo)  # this chunk's vectors, in the stream's order
            codes = _tile_codes(k, mode, full_scale, adc_bits, (c1 - c0) * kh * kw, streams and streams[t], noise, i)
            coef = torch.tensor([ci[i] * c for c in cw], dtype=dtype).view(1, 1, 1, w_bits)
            term = torch.matmul(coef, codes.to(dtype).view(n, c_out, w_bits, ho * wo))  # (n, c_out, 1, ho*wo)
            acc = term if acc is None else acc.add_(term)
    return acc.view(n, c_out, ho, wo)


def bpbs_linear(x_int: torch.Tensor, w_int: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`bpbs_conv2d` for a linear layer: x_int (N, C), w_int (C_out, C) -> acc (N, C_out)."""
    return bpbs_conv2d(x_int[:, :, None, None], w_int[:, :, None, None], **kw)[:, :, 0, 0]


class _BpbsSte(torch.autograd.Function):
    """Forward: bpbs_conv2d (bit_true). Backward: gradient of conv2d(x, w) * 2**adc_bits / full_scale."""

    @staticmethod
    def forward(ctx, x, w, kw):
        ctx.save_for_backward(x, w)
        ctx.kw = kw
        return bpbs_conv2d(x.detach(), w.detach(), mode="bit_true", **kw)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        kw = ctx.kw
        g = (grad * (2.0 ** kw["adc_bits"] / kw["full_scale"])).to(x.dtype)
        conv_kw = dict(stride=kw.get("stride", 1), padding=kw.get("padding", 0))
        gx = torch.nn.grad.conv2d_input(x.shape, w.to(x.dtype), g, **conv_kw) if ctx.needs_input_grad[0] else None
        gw = torch.nn.grad.conv2d_weight(x, w.shape, g, **conv_kw).to(w.dtype) if ctx.needs_input_grad[1] else None
        return gx, gw, None


def bpbs_conv2d_ste(x_int: torch.Tensor, w_int: torch.Tensor, **kw) -> torch.Tensor:
    """Differentiable :func:`bpbs_conv2d` in bit_true mode, for quantisation-aware training.

    The forward value is exactly ``bpbs_conv2d(..., mode="bit_true")``; the backward pass is the
    straight-through gradient of ``conv2d(x_int, w_int) * 2**adc_bits / full_scale`` (as if the ADC
    were linear), with respect to both float tensors. Takes the keyword arguments of bpbs_conv2d
    except ``mode``."""
    if "mode" in kw:
        raise CimaError("bpbs_conv2d_ste always runs mode='bit_true'; drop the mode argument")
    return _BpbsSte.apply(x_int, w_int, kw)


def bpbs_linear_ste(x_int: torch.Tensor, w_int: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`bpbs_conv2d_ste` for a linear layer: x_int (N, C), w_int (C_out, C) -> (N, C_out)."""
    return bpbs_conv2d_ste(x_int[:, :, None, None], w_int[:, :, None, None], **kw)[:, :, 0, 0]
