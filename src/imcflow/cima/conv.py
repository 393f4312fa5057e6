"""Whole conv and linear layers computed the chip's way, fast, on batches (torch).

:func:`bpbs_conv2d` is, by construction, this definition (spelled out slowly in
:func:`imcflow.cima.reference.bpbs_conv2d_reference`, which the tests compare bit for bit):
im2col with rows in the order of ``weight.reshape(c_out, -1)``; rows split into input-channel
groups by :func:`imcflow.ir.qgraph.row_tiles`; one MVM per row tile (all with the same ADC full
scale) by the fast kernel of :func:`imcflow.cima.mvm`; the tiles' accumulators summed. Windows are
built in int8 and the binary products run as int8 matrix products, which measured 1.3-1.9x faster
on CPU than float32 conv2d over 0/1 bit-planes.

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

from imcflow.cima.analog import AnalogStream
from imcflow.cima.common import Mode, int_range, parse_mode
from imcflow.cima import fast
from imcflow.config.chip import AnalogConfig
from imcflow.errors import CimaError
from imcflow.ir.qgraph import row_tiles

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


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, numbers.Integral) else (int(v[0]), int(v[1]))


def _small_int(t: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """``t`` (range-checked) in the narrowest integer dtype that holds its values."""
    if bits <= 8:
        return t.to(torch.int8 if signed else torch.uint8)
    return t.to(torch.int16 if bits <= 15 or (signed and bits == 16) else torch.int32)


def im2col(x: torch.Tensor, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """(N*Ho*Wo, C*kh*kw) windows of integer ``x`` (N, C, H, W), zero padded; rows ordered image,
    output row, output column; columns in the order of ``weight.reshape(c_out, -1)``."""
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    win = xp.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])   # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


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
    stride, padding = _pair(stride), _pair(padding)
    ho, wo = (h + 2 * padding[0] - kh) // stride[0] + 1, (wd + 2 * padding[1] - kw) // stride[1] + 1
    tiles = row_tiles(c_in, kh, kw, array_rows)
    streams = ([AnalogStream(analog, seed + t, x_bits, c_out * w_bits) for t in range(len(tiles))]
               if mode is Mode.ANALOG else None)
    x_small = _small_int(x_int.detach(), x_bits, x_signed)
    w_rows = _small_int(w_int.detach(), w_bits, w_signed).reshape(c_out, -1).T     # (C*kh*kw, C_out)
    kernel = dict(x_bits=x_bits, w_bits=w_bits, x_signed=x_signed, w_signed=w_signed, mode=mode,
                  full_scale=full_scale, adc_bits=adc_bits)
    images = max(1, fast.chunk_vectors(x_bits, c_out * w_bits) // max(1, ho * wo))  # ~one product's windows
    acc = torch.zeros((n * ho * wo, c_out), dtype=torch.int64)
    for n0 in range(0, n, images):
        done = slice(n0 * ho * wo, min(n, n0 + images) * ho * wo)
        for t, (c0, c1) in enumerate(tiles):
            x_rows = im2col(x_small[n0:n0 + images, c0:c1], kh, kw, stride, padding)
            acc[done] += fast.mvm_kernel(x_rows, w_rows[c0 * kh * kw:c1 * kh * kw], **kernel,
                                         stream=streams[t] if streams else None)
    return acc.view(n, ho, wo, c_out).permute(0, 3, 1, 2).to(out_dtype).contiguous()


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
