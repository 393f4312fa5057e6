"""The simulator's layer kernels, vectorised over the batch: one MVM tile on a range of output
pixels, and the SIMD's integer pooling, upsampling, depth-to-space and add rules of :mod:`imcflow.ir.qgraph`.

The SIMD rules are written again here (the simulator may not import the quantiser); the spine test
(tests/test_sim_spine.py) checks that the simulator's outputs equal the reference executor's
exactly, which pins these down.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from imcflow.cima.conv import bpbs_conv2d
from imcflow.config.chip import ChipConfig
from imcflow.ir.qgraph import ActTable, bilinear_taps, receptive_field, window_out


def out_size(h: int, k: int, s: int, p: int, d: int = 1) -> int:
    return window_out(h, k, s, p, d)


@functools.lru_cache(maxsize=512)
def needed_pixels(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                  px_lo: int, px_hi: int, dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Sorted flat indices of input pixels that output pixels ``[px_lo, px_hi)`` of a conv read
    (padding excluded; a dilated window reads only its taps)."""
    idx = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w)
    cols = F.unfold(idx, kernel, padding=padding, stride=stride, dilation=dilation)[0]  # (kh*kw, L)
    used = cols[:, px_lo:px_hi].reshape(-1).long()
    used = used[used > 0] - 1
    return np.unique(used.numpy())


def tile_mvm(x: np.ndarray, w: np.ndarray, *, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int], px_lo: int, px_hi: int, x_bits: int, x_signed: bool, w_bits: int,
             full_scale: int, mode: str, chip: ChipConfig, seed: int,
             dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Accumulators (N, oc, px_hi - px_lo) int64 of one row tile: ``x`` (N, c, H, W) (integer values,
    any dtype) holds the tile's input channels, ``w`` (oc, c, kh, kw) its weights. Only the input
    rows that the output rows holding the pixel range read (their dilated receptive field) are
    padded and convolved (vectorised over the batch with :func:`imcflow.cima.conv.bpbs_conv2d`)."""
    n, _, h, wd = x.shape
    eh, _ = receptive_field(kernel, dilation)
    ow = out_size(wd, kernel[1], stride[1], padding[1], dilation[1])
    y0, y1 = px_lo // ow, (px_hi - 1) // ow
    lo, hi = y0 * stride[0] - padding[0], y1 * stride[0] - padding[0] + eh   # input rows [lo, hi)
    crop = torch.from_numpy(np.ascontiguousarray(x[:, :, max(0, lo):min(h, hi)], dtype=np.float32))
    crop = F.pad(crop, (padding[1], padding[1], max(0, -lo), max(0, hi - h)))
    acc = bpbs_conv2d(crop, torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)),
                      x_bits=x_bits, w_bits=w_bits, x_signed=x_signed, stride=stride, padding=0, dilation=dilation,
                      full_scale=full_scale, mode=mode, adc_bits=chip.adc.bits, array_rows=chip.array.rows,
                      seed=seed, analog=chip.analog, out_dtype=torch.int64).numpy()
    flat = acc.reshape(n, acc.shape[1], -1)
    start = px_lo - y0 * ow
    return flat[:, :, start:start + (px_hi - px_lo)]


def maxpool(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            pad_end: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Integer max pooling of (N, C, H, W); padded cells (``pad_end`` more at the bottom and right) never win."""
    n, c, h, w = x.shape
    oh = out_size(h + pad_end[0], kernel[0], stride[0], padding[0])
    ow = out_size(w + pad_end[1], kernel[1], stride[1], padding[1])
    low = np.iinfo(np.int64).min
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding[0], padding[0] + pad_end[0]),
                                     (padding[1], padding[1] + pad_end[1])), constant_values=low)
    out = np.full((n, c, oh, ow), low, dtype=np.int64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            out = np.maximum(out, xp[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0],
                                     j:j + stride[1] * (ow - 1) + 1:stride[1]])
    return out


def round_avg(total: np.ndarray, count: int) -> np.ndarray:
    """floor((sum + count // 2) / count): round half up."""
    return (total.astype(np.int64) + count // 2) // count


def avgpool(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """Integer average pooling of (N, C, H, W): zero padding, divisor = kernel area."""
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel[0], stride[0], padding[0]), out_size(w, kernel[1], stride[1], padding[1])
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    total = np.zeros((n, c, oh, ow), dtype=np.int64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            total += xp[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
    return round_avg(total, kernel[0] * kernel[1])


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, C, 1, 1), round half up."""
    return round_avg(x.astype(np.int64).sum(axis=(2, 3), keepdims=True), x.shape[2] * x.shape[3])


def upsample_nearest(x: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of (N, C, H, W): output pixel (i, j) is input pixel (i // sh, j // sw)."""
    rows = np.arange(x.shape[2] * factor[0]) // factor[0]
    cols = np.arange(x.shape[3] * factor[1]) // factor[1]
    return x.astype(np.int64)[:, :, rows][:, :, :, cols]


def upsample_bilinear(x: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """Bilinear (``align_corners=False``) upsampling of (N, C, H, W) by integer factors as the SIMD
    computes it: per output pixel four multiply-adds of 2-D integer weights ``w_row * w_col`` (sum
    ``D = 4 sh sw``), then ``floor((acc + D // 2) / D)``."""
    rows = bilinear_taps(x.shape[2], factor[0])
    cols = bilinear_taps(x.shape[3], factor[1])
    x = x.astype(np.int64)
    acc = np.zeros((*x.shape[:2], len(rows[0]), len(cols[0])), dtype=np.int64)
    for i, wi in ((rows[0], rows[2]), (rows[1], rows[3])):
        for j, wj in ((cols[0], cols[2]), (cols[1], cols[3])):
            acc += (wi[:, None] * wj[None, :]) * x[:, :, i[:, None], j[None, :]]
    return round_avg(acc, 4 * factor[0] * factor[1])


def depth_to_space(x: np.ndarray, r: int) -> np.ndarray:
    """Depth to space of (N, C*r*r, H, W) by block r: input channel c*r*r + a*r + b lands at output
    channel c, pixel (i*r + a, j*r + b)."""
    n, ch, h, w = x.shape
    c = ch // (r * r)
    blocks = x.astype(np.int64).reshape(n, c, r, r, h, w)         # (n, c, a, b, i, j)
    return blocks.transpose(0, 1, 4, 2, 5, 3).reshape(n, c, h * r, w * r)   # (n, c, i, a, j, b)


def residual_add(a: np.ndarray, b: np.ndarray, multipliers: tuple[int, ...], shift: int,
                 out_min: int, out_max: int, table: ActTable | None = None) -> np.ndarray:
    """clamp((a*m_a + b*m_b + 2**(shift-1)) >> shift, out_min, out_max), or ``table`` of a*m_a + b*m_b."""
    v = a.astype(np.int64) * int(multipliers[0]) + b.astype(np.int64) * int(multipliers[1])
    if table is not None:
        return table.apply(v)
    return np.clip((v + (1 << (shift - 1))) >> shift, out_min, out_max)
