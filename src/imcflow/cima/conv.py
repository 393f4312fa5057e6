"""Whole conv and linear layers computed the chip's way, fast, on batches (torch).

:func:`bpbs_conv2d` is, by construction, this definition (spelled out slowly in
:func:`imcflow.cima.reference.bpbs_conv2d_reference`, which the tests compare bit for bit):
im2col with rows in the order of ``weight.reshape(c_out, -1)``; rows split into input-channel
groups by :func:`imcflow.ir.qgraph.row_tiles`; one MVM per row tile (all with the same ADC full
scale) by the fast kernel of :func:`imcflow.cima.mvm`; the tiles' accumulators summed. Windows are
built in int8 and the binary products run as int8 matrix products, which measured 1.3-1.9x faster
on CPU than float32 conv2d over 0/1 bit-planes.

Ideal and bit_true modes take a faster, equal route (:func:`lut_conv`): window bit-planes built
channels-last in reused cache-sized buffers, one ``torch._int_mm`` per chunk for all input
bit-planes and weight bits, and the ADC plus the signed shift-add folded into one table look-up
per count (:func:`adc_lut`) followed by one sum. Measured on cifar10-cnn11 (256 images, one
thread): 6-8 -> ~50 img/s bit_true (``benchmarks/bittrue_speed.py``). The row order inside a
tile (kh, kw, c instead of c, kh, kw) does not matter: a count is a sum over the tile's rows.

Analog mode: tile ``t`` is one mvm with ``seed + t``; its batch is the tile's im2col rows, ordered
image-major then output row then output column (``n*Ho*Wo + ho*Wo + wo``), and its physical columns
are ``o*w_bits + j``, so the draws of :func:`imcflow.cima.analog.draw_analog` line up exactly. Large
batches run in chunks of images (bounded memory); the noise is drawn chunk after chunk from one
:class:`~imcflow.cima.analog.AnalogStream` per tile, which gives the same values as one big draw.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import numbers
import threading

import torch
import torch.nn.functional as F

from imcflow.cima.analog import AnalogStream
from imcflow.cima.common import Mode, int_range, parse_mode
from imcflow.cima import fast
from imcflow.config.chip import AnalogConfig
from imcflow.errors import CimaError
from imcflow.ir.qgraph import receptive_field, row_tiles, window_out


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


def im2col(x: torch.Tensor, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """(N*Ho*Wo, C*kh*kw) windows of integer ``x`` (N, C, H, W), zero padded, taps ``dilation``
    apart; rows ordered image, output row, output column; columns in the order of
    ``weight.reshape(c_out, -1)``."""
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    eh, ew = receptive_field((kh, kw), dilation)
    win = xp.unfold(2, eh, stride[0]).unfold(3, ew, stride[1])   # (N, C, Ho, Wo, eh, ew)
    win = win[..., ::dilation[0], ::dilation[1]]                 # the kh x kw taps
    n, c, ho, wo = win.shape[:4]
    return win.permute(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)


def bpbs_conv2d(x_int: torch.Tensor, w_int: torch.Tensor, *, x_bits: int, w_bits: int, x_signed: bool,
                stride=1, padding=0, dilation=1, full_scale: int, mode: str = "bit_true", adc_bits: int, array_rows: int,
                w_signed: bool = True, seed: int = 0, analog: AnalogConfig | None = None,
                out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A conv layer as the chip computes it: per row tile, bit-serial inputs, bit-parallel weights,
    ADC codes, signed shift-add; tiles summed digitally.

    Args:
        x_int: (N, C, H, W) integer-valued tensor within ``x_bits`` (float32 or an integer dtype).
        w_int: (C_out, C, kh, kw) integer-valued tensor within ``w_bits``.
        stride, padding, dilation: as for ``torch.nn.functional.conv2d`` (zero padding); dilation
            spaces a window's taps and leaves the rows (C * kh * kw) as they are.
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
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    ho = window_out(h, kh, stride[0], padding[0], dilation[0])
    wo = window_out(wd, kw, stride[1], padding[1], dilation[1])
    tiles = row_tiles(c_in, kh, kw, array_rows)
    streams = ([AnalogStream(analog, seed + t, x_bits, c_out * w_bits) for t in range(len(tiles))]
               if mode is Mode.ANALOG else None)
    x_small = _small_int(x_int.detach(), x_bits, x_signed)
    w_rows = _small_int(w_int.detach(), w_bits, w_signed).reshape(c_out, -1).T     # (C*kh*kw, C_out)
    if mode is not Mode.ANALOG:
        acc = lut_conv(x_small, _small_int(w_int.detach(), w_bits, w_signed), stride=stride, padding=padding,
                       dilation=dilation, tiles=tiles, x_bits=x_bits, w_bits=w_bits, x_signed=x_signed, w_signed=w_signed, mode=mode,
                       full_scale=full_scale, adc_bits=adc_bits)
        out = torch.empty((n, c_out, ho, wo), dtype=out_dtype)
        return out.copy_(acc.view(n, ho, wo, c_out).permute(0, 3, 1, 2))   # one pass: layout and dtype
    kernel = dict(x_bits=x_bits, w_bits=w_bits, x_signed=x_signed, w_signed=w_signed, mode=mode,
                  full_scale=full_scale, adc_bits=adc_bits)
    images = max(1, fast.chunk_vectors(x_bits, c_out * w_bits) // max(1, ho * wo))  # ~one product's windows
    acc = torch.zeros((n * ho * wo, c_out), dtype=torch.int64)
    for n0 in range(0, n, images):
        done = slice(n0 * ho * wo, min(n, n0 + images) * ho * wo)
        for t, (c0, c1) in enumerate(tiles):
            x_rows = im2col(x_small[n0:n0 + images, c0:c1], kh, kw, stride, padding, dilation)
            acc[done] += fast.mvm_kernel(x_rows, w_rows[c0 * kh * kw:c1 * kh * kw], **kernel,
                                         stream=streams[t] if streams else None)
    return acc.view(n, ho, wo, c_out).permute(0, 3, 1, 2).to(out_dtype).contiguous()


def bpbs_linear(x_int: torch.Tensor, w_int: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`bpbs_conv2d` for a linear layer: x_int (N, C), w_int (C_out, C) -> acc (N, C_out)."""
    return bpbs_conv2d(x_int[:, :, None, None], w_int[:, :, None, None], **kw)[:, :, 0, 0]


def planes_conv2d(x_int: torch.Tensor, w_int: torch.Tensor, *, x_bits: int, w_bits: int, x_signed: bool,
                  stride=1, padding=0, dilation=1, full_scale: int, mode: str = "bit_true", adc_bits: int, array_rows: int,
                  w_signed: bool = True, out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """:func:`bpbs_conv2d` (ideal and bit_true modes) from plain ``conv2d`` calls on whatever device
    the tensors are on (a GPU in QAT): per row tile, input bit-plane i and weight bit j, the column
    counts are ``conv2d`` of 0/1 float32 planes (exact: counts stay below 2**24), looked up in
    :func:`adc_lut` and summed. Equal to :func:`bpbs_conv2d` bit for bit (tested), as ``out_dtype``."""
    mode_ = parse_mode(mode)
    if mode_ not in (Mode.IDEAL, Mode.BIT_TRUE):
        raise CimaError(f"planes_conv2d runs ideal and bit_true modes, not {mode!r}")
    _check_args(x_int, w_int, x_bits, w_bits, x_signed, w_signed, full_scale, mode, None)
    c_out, c_in, kh, kw = w_int.shape
    rows = max(c1 - c0 for c0, c1 in row_tiles(c_in, kh, kw, array_rows)) * kh * kw
    lut = adc_lut(mode_, rows, int(full_scale), int(adc_bits), x_bits, x_signed, w_bits, w_signed,
                  torch.float64).to(x_int.device).view(x_bits, w_bits, rows + 1)
    xp = fast.bit_planes(x_int.detach().to(torch.int32), x_bits, dim=0).to(torch.float32)  # (xb, N, C, H, W)
    wp = fast.bit_planes(w_int.detach().to(torch.int32), w_bits, dim=0).to(torch.float32)  # (wb, O, C, kh, kw)
    acc = None
    for c0, c1 in row_tiles(c_in, kh, kw, array_rows):
        for i in range(x_bits):
            counts = F.conv2d(xp[i, :, c0:c1], wp[:, :, c0:c1].reshape(w_bits * c_out, c1 - c0, kh, kw),
                              stride=stride, padding=padding, dilation=dilation)  # (N, wb * O, Ho, Wo)
            counts = counts.round().to(torch.int64).view(counts.shape[0], w_bits, c_out, *counts.shape[2:])
            for j in range(w_bits):
                codes = lut[i, j][counts[:, j]]
                acc = codes if acc is None else acc + codes
    return acc.to(out_dtype)


class _BpbsSte(torch.autograd.Function):
    """Forward: bpbs_conv2d (bit_true). Backward: gradient of conv2d(x, w) * 2**adc_bits / full_scale."""

    @staticmethod
    def forward(ctx, x, w, kw):
        ctx.save_for_backward(x, w)
        ctx.kw = kw
        if x.device.type != "cpu":  # a GPU in QAT: the same codes from conv2d over bit-planes there
            return planes_conv2d(x.detach(), w.detach(), mode="bit_true", **kw)
        return bpbs_conv2d(x.detach(), w.detach(), mode="bit_true", **kw)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        kw = ctx.kw
        g = (grad * (2.0 ** kw["adc_bits"] / kw["full_scale"])).to(x.dtype)
        conv_kw = dict(stride=kw.get("stride", 1), padding=kw.get("padding", 0), dilation=kw.get("dilation", 1))
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


TARGET_COUNTS = 1 << 18
"""Column counts per chunk of :func:`lut_conv` (int32 + float buffers of about 1 MB each, cache
resident; the chunk's bit-plane windows are at most ``rows / w_bits / n_out`` times as many bytes)."""


def adc_lut(mode: Mode, rows: int, full_scale: int, adc_bits: int, x_bits: int, x_signed: bool, w_bits: int,
            w_signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """Flat table ``lut[(i*w_bits + j) * (rows+1) + k] = s_i 2**i * s_j 2**j * code(k)`` for counts
    k = 0 .. rows: the ADC code (bit_true: min(2**b-1, floor((2*k*2**b + fs) / (2*fs))), ideal: k)
    of input bit-plane i and weight bit j, already weighted for the shift-add; exact integers."""
    k = torch.arange(rows + 1, dtype=torch.int64)
    levels = 1 << adc_bits
    code = (k if mode is Mode.IDEAL
            else torch.clamp_max((2 * k * levels + full_scale) // (2 * full_scale), levels - 1))
    weights = torch.tensor([ci * cj for ci in fast.bit_weights(x_bits, x_signed)
                            for cj in fast.bit_weights(w_bits, w_signed)], dtype=torch.int64)
    return (weights[:, None] * code[None, :]).reshape(-1).to(dtype)


def _padded_outputs(c_out: int, w_bits: int) -> int:
    """Smallest o >= c_out with o * w_bits a multiple of 8 (torch._int_mm's rule for the output width)."""
    o = c_out
    while (o * w_bits) % 8:
        o += 1
    return o


def _chunks(n: int, ho: int, wo: int, per_chunk: int):
    """(image slice, output-row slice) pairs covering n images of ho x wo windows, about
    ``per_chunk`` windows each: whole images when one fits, else rows of one image."""
    if ho * wo <= per_chunk:
        step = max(1, per_chunk // (ho * wo))
        for n0 in range(0, n, step):
            yield slice(n0, min(n, n0 + step)), slice(0, ho)
        return
    rows = max(1, per_chunk // wo)
    for i in range(n):
        for h0 in range(0, ho, rows):
            yield slice(i, i + 1), slice(h0, min(ho, h0 + rows))


_WORDS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


def _word_bytes(c_in: int, tiles: list[tuple[int, int]]) -> int:
    """Bytes per copied word: the largest of 8, 4, 2, 1 dividing the channel count and every tile
    boundary (so that windows are copied 8 bit-plane bytes at a time where possible)."""
    return next(e for e in (8, 4, 2, 1) if c_in % e == 0 and all(c0 % e == 0 for c0, _ in tiles))


def _plane_windows(x_small: torch.Tensor, x_bits: int, kh: int, kw: int, stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int], word: int) -> torch.Tensor:
    """View (N, Ho, Wo, x_bits, kh, kw, C / word) of the zero-padded 0/1 int8 bit-planes of
    ``x_small`` (N, C, H, W), ``word`` bytes (channels) per element, stored (N, H, x_bits, W, C) so
    that each kernel row of an undilated window (kw x C) is contiguous bytes; the taps of a
    dilated window are ``dilation`` rows and columns apart."""
    planes = fast.bit_planes(x_small.permute(0, 2, 3, 1), x_bits, dim=2).contiguous()   # (N, H, xb, W, C)
    planes = F.pad(planes, (0, 0, padding[1], padding[1], 0, 0, padding[0], padding[0])).contiguous()
    n, h, xb, w, c = planes.shape
    planes = planes.view(-1).view(_WORDS[word]).view(n, h, xb, w, c // word)
    c //= word
    s_n, s_h, s_i, s_w, _ = planes.stride()
    ho, wo = window_out(h, kh, stride[0], 0, dilation[0]), window_out(w, kw, stride[1], 0, dilation[1])
    return planes.as_strided((n, ho, wo, xb, kh, kw, c),
                             (s_n, stride[0] * s_h, stride[1] * s_w, s_i, dilation[0] * s_h, dilation[1] * s_w, 1))


@contextlib.contextmanager
def _intra_op_threads(count: int):
    """torch's intra-op thread count set to ``count`` inside the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_all(fn, items: list, workers: int) -> None:
    """``fn(item)`` for every item: in this thread when ``workers == 1``, else on ``workers`` Python
    threads, each running single-threaded torch ops. Small ops on a shared, loaded machine lose far
    more to intra-op barriers (a descheduled thread holds the rest up) than they gain; independent
    chunks on separate threads never wait for each other."""
    if workers == 1:
        for item in items:
            fn(item)
        return
    # Worker threads start with torch's default autograd state: carry the caller's over, so a
    # call under torch.inference_mode() writes inference tensors in every thread alike.
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            fn(item)

    with _intra_op_threads(1), concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(call, items):
            pass


def lut_conv(x_small: torch.Tensor, w_small: torch.Tensor, *, stride: tuple[int, int], padding: tuple[int, int],
             dilation: tuple[int, int] = (1, 1), tiles: list[tuple[int, int]], x_bits: int, w_bits: int, x_signed: bool, w_signed: bool,
             mode: Mode, full_scale: int, adc_bits: int) -> torch.Tensor:
    """Tile-summed accumulators (N*Ho*Wo, C_out), rows image-major, of a bit_true or ideal conv, as
    float32 (exact: every partial sum < 2**24) or float64.

    For each row tile and chunk of windows (cache-sized, buffers reused): the window bit-planes
    (rows ``window*x_bits + i``) times the weight bit columns (``j*C_out' + o``) in one
    ``torch._int_mm``; each count k becomes ``k + (i*w_bits + j)*(rows+1)`` and then, by one table
    look-up (:func:`adc_lut`), its weighted ADC code; a sum over (i, j) gives the tile's accumulator.
    Same numbers as the per-plane ADC and shift-add of :mod:`imcflow.cima.fast`."""
    c_out, c_in, kh, kw = w_small.shape
    if len(tiles) == 1 and c_in % 8:  # zero channels add zero rows: same counts, 8-byte copies
        extra = -c_in % 8
        x_small, w_small = F.pad(x_small, (0, 0, 0, 0, 0, extra)), F.pad(w_small, (0, 0, 0, 0, 0, extra))
        c_in, tiles = c_in + extra, [(0, c_in + extra)]
    n = x_small.shape[0]
    o_pad = _padded_outputs(c_out, w_bits)
    word = _word_bytes(c_in, tiles)
    win = _plane_windows(x_small, x_bits, kh, kw, stride, padding, dilation, word)  # (N, Ho, Wo, xb, kh, kw, C/word)
    ho, wo = win.shape[1], win.shape[2]
    q = x_bits * w_bits
    max_code = max(r1 - r0 for r0, r1 in tiles) * kh * kw if mode is Mode.IDEAL else (1 << adc_bits) - 1
    bound = (max_code * sum(map(abs, fast.bit_weights(x_bits, x_signed)))
             * sum(map(abs, fast.bit_weights(w_bits, w_signed))))
    dtype = torch.float32 if bound * len(tiles) < fast._FLOAT32_EXACT else torch.float64
    acc = (torch.empty if len(tiles) == 1 else torch.zeros)((n * ho * wo, o_pad), dtype=dtype)
    per_chunk = max(1, TARGET_COUNTS // (q * o_pad))
    max_m = (ho * wo * min(n, per_chunk // (ho * wo)) if ho * wo <= per_chunk
             else wo * max(1, min(ho, per_chunk // wo)))                   # most windows in a chunk
    max_rows = max(17, max_m * x_bits)
    chunks = list(_chunks(n, ho, wo, per_chunk))
    workers = max(1, min(torch.get_num_threads(), len(chunks)))
    local = threading.local()

    def buffers():
        if not hasattr(local, "kbuf"):
            local.kbuf = torch.empty((max_rows, w_bits * o_pad), dtype=torch.int32)
            local.cbuf = torch.empty(max_rows * w_bits * o_pad, dtype=dtype)
            local.part = torch.empty((max_m, o_pad), dtype=dtype) if len(tiles) > 1 else None
            local.xbufs = {}
        return local

    for c0, c1 in tiles:
        rows_t = (c1 - c0) * kh * kw
        k_pad = rows_t + (-rows_t) % 8
        w_rows = w_small[:, c0:c1].permute(2, 3, 1, 0).reshape(rows_t, c_out)   # rows (kh, kw, c)
        w_t = F.pad(w_rows, (0, o_pad - c_out, 0, k_pad - rows_t))
        wp = fast.bit_planes(w_t, w_bits, dim=1).reshape(k_pad, w_bits * o_pad).contiguous()  # column j*o_pad + o
        lut = adc_lut(mode, rows_t, full_scale, adc_bits, x_bits, x_signed, w_bits, w_signed, dtype)
        offsets = (torch.arange(q, dtype=torch.int32) * (rows_t + 1)).view(1, q, 1)

        def run(chunk, c0=c0, c1=c1, rows_t=rows_t, k_pad=k_pad, wp=wp, lut=lut, offsets=offsets):
            ns, hs = chunk
            b = buffers()
            if (c0, k_pad) not in b.xbufs:   # zero padding columns stay zero
                b.xbufs[(c0, k_pad)] = torch.zeros((max_rows, k_pad), dtype=torch.int8)
            xbuf = b.xbufs[(c0, k_pad)]
            src = win[ns, hs, ..., c0 // word:c1 // word]
            m = src.shape[0] * src.shape[1] * wo                          # windows in this chunk
            r = m * x_bits
            xbuf.view(_WORDS[word])[:r, :rows_t // word].view(src.shape).copy_(src)
            rr = max(r, 17)
            torch._int_mm(xbuf[:rr], wp, out=b.kbuf[:rr])
            k = b.kbuf[:r]
            k.view(m, q, o_pad).add_(offsets)
            codes = b.cbuf[:k.numel()]
            torch.index_select(lut, 0, k.view(-1), out=codes)
            first = ns.start * ho * wo + hs.start * wo
            if b.part is None:
                torch.sum(codes.view(m, q, o_pad), dim=1, out=acc[first:first + m])
            else:
                torch.sum(codes.view(m, q, o_pad), dim=1, out=b.part[:m])
                acc[first:first + m] += b.part[:m]

        _run_all(run, chunks, workers)
    return acc[:, :c_out]
