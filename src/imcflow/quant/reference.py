"""The integer reference executor of a QGraph: what the chip computes, layer by layer.

This is THE oracle: the compiled program run by the simulator must reproduce its outputs exactly
(``ideal`` and ``bit_true`` modes). It is written to be obviously right rather than fast:

- An MVM layer (CONV, LINEAR) is an im2col matrix ``X`` (one row per output pixel, columns in the
  order of ``weight.reshape(c_out, -1)``: input channel, kernel row, kernel column) times
  ``W = weight.reshape(c_out, -1).T``. Its rows are split into the input-channel groups of
  :func:`imcflow.ir.qgraph.row_tiles` over ``chip.array.rows``; each group is one
  :func:`imcflow.cima.mvm` call (BPBS, ADC at the layer's ``adc_full_scale_rows``), and the groups'
  accumulators are summed digitally, as the SIMD does. Outputs are split into column tiles of
  ``chip.array.cols // w_bits`` outputs (one MVM each); column tiling does not change results
  except for which analog draws a column gets.
- The accumulator is requantised with :meth:`imcflow.ir.qgraph.Requant.apply` and the MVM's exact
  accumulator scale (``scale_num / 2**scale_shift``: 1 in ``ideal`` mode, ``full_scale / 2**adc_bits``
  in ``bit_true`` and ``analog``).
- Pooling, residual add, flatten and concat follow the integer rules of :mod:`imcflow.ir.qgraph`.

``analog`` mode is deterministic per ``seed``: row tile ``t`` of column tile ``u`` of node number
``i`` (its index in ``qgraph.nodes``) draws its non-idealities with seed ``tile_seed(seed, i, u) + t``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imcflow import cima
from imcflow.config.chip import ChipConfig
from imcflow.config.presets import get_preset
from imcflow.errors import DataError, QuantError
from imcflow.ir.qgraph import QGraph, QNode, QOp, QTensor, bilinear_taps, row_tiles, window_out
from imcflow.quant.requant import apply_add, avg_round, round_half_up

MODES = ("ideal", "bit_true", "analog")


def tile_seed(seed: int, node_index: int, col_tile: int) -> int:
    """Base seed of the analog draws of column tile ``col_tile`` of node number ``node_index``;
    its row tile ``t`` uses ``tile_seed(...) + t`` (as :func:`imcflow.cima.bpbs_conv2d` numbers them)."""
    return int(np.random.SeedSequence([int(seed), int(node_index), int(col_tile)]).generate_state(1)[0])


def quantize_input(qgraph: QGraph, x_float: np.ndarray) -> np.ndarray:
    """Float inputs (N, *input shape) in the model's float domain -> int64 input integers
    (round half up, saturated to the input spec's range)."""
    x = np.asarray(x_float, dtype=np.float64)
    check_input_shape(qgraph.input, x.shape, "float inputs")
    q = round_half_up(x / qgraph.input.scale)
    return np.clip(q, qgraph.input.min_int, qgraph.input.max_int)


def dequantize_output(qgraph: QGraph, y_int: np.ndarray) -> np.ndarray:
    """Output integers -> real values (float64): ``y_int * scale`` of the output spec."""
    return np.asarray(y_int, dtype=np.float64) * qgraph.spec(qgraph.output).scale


def check_input_shape(spec: QTensor, shape: tuple[int, ...], what: str) -> None:
    """Raise DataError unless ``shape`` is ``(N, *spec.shape)``."""
    if len(shape) != len(spec.shape) + 1 or tuple(shape[1:]) != tuple(spec.shape):
        want = "(N, " + ", ".join(str(s) for s in spec.shape) + ")"
        raise DataError(f"{what} have shape {tuple(shape)}; the model expects {want} (batch first)")


def check_input_ints(qgraph: QGraph, x_int: np.ndarray) -> np.ndarray:
    """Validate integer inputs (shape, integer dtype, range) and return them as int64."""
    x = np.asarray(x_int)
    check_input_shape(qgraph.input, x.shape, "integer inputs")
    if not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"integer inputs have dtype {x.dtype}; quantise float inputs with quantize_input first")
    spec = qgraph.input
    if x.size and (x.min() < spec.min_int or x.max() > spec.max_int):
        raise DataError(f"integer inputs span [{x.min()}, {x.max()}], outside the {spec.bits}-b "
                        f"{'signed' if spec.signed else 'unsigned'} input range [{spec.min_int}, {spec.max_int}]")
    return x.astype(np.int64)


def run_qgraph(qgraph: QGraph, x_int: np.ndarray, mode: str = "ideal", chip: str | ChipConfig = "jssc2022",
               seed: int = 0) -> np.ndarray:
    """Run ``qgraph`` on integer inputs ``x_int`` (N, *input shape); int64 outputs of its output node."""
    return run_qgraph_all(qgraph, x_int, mode, chip, seed)[qgraph.output]


def run_qgraph_all(qgraph: QGraph, x_int: np.ndarray, mode: str = "ideal", chip: str | ChipConfig = "jssc2022",
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Like :func:`run_qgraph` but returns every tensor (graph input and each node's output) by name."""
    if mode not in MODES:
        raise QuantError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    chip = get_preset(chip)
    values = {qgraph.input_name: check_input_ints(qgraph, x_int)}
    for index, node in enumerate(qgraph.nodes):
        ins = [values[i] for i in node.inputs]
        values[node.name] = run_node(qgraph, node, ins, mode, chip, seed, index)
    return values


def run_node(qgraph: QGraph, node: QNode, ins: list[np.ndarray], mode: str, chip: ChipConfig, seed: int,
             index: int) -> np.ndarray:
    """One node on int64 inputs (batch first)."""
    if node.is_mvm:
        acc, num, shift = mvm_layer_acc(node, qgraph.spec(node.inputs[0]), ins[0], mode, chip, seed, index)
        return node.requant.apply(acc, num, shift)
    x = ins[0]
    if node.op is QOp.MAXPOOL:
        return maxpool_int(x, node.kernel, node.stride, node.padding, node.pad_end)
    if node.op is QOp.AVGPOOL:
        return avgpool_int(x, node.kernel, node.stride, node.padding)
    if node.op is QOp.GLOBAL_AVGPOOL:
        count = x.shape[2] * x.shape[3]
        return avg_round(x.sum(axis=(2, 3), keepdims=True), count).reshape(x.shape[0], *node.out.shape)
    if node.op is QOp.ADD:
        return apply_add(ins[0], ins[1], node.add_multipliers, node.add_shift, node.out.min_int, node.out.max_int,
                         node.add_table)
    if node.op is QOp.FLATTEN:
        return x.reshape(x.shape[0], -1)
    if node.op is QOp.CONCAT:
        return np.concatenate(ins, axis=1)
    if node.op is QOp.UPSAMPLE:
        if node.upsample_mode == "bilinear":
            return bilinear_int(x, node.upsample)
        return upsample_int(x, node.upsample)
    if node.op is QOp.DEPTH_TO_SPACE:
        return depth_to_space_int(x, node.depth_to_space)
    raise QuantError(f"node {node.name!r}: op {node.op.value} has no integer rule")  # pragma: no cover


def upsample_int(x: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of (N, C, H, W) ``x``: ``y[..., i, j] = x[..., i // sh, j // sw]``."""
    return np.repeat(np.repeat(x, factor[0], axis=2), factor[1], axis=3)


def bilinear_int(x: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """Bilinear (``align_corners=False``) upsampling of (N, C, H, W) ``x`` by integer factors:
    ``floor((sum_k w_k x_k + D // 2) / D)`` with the integer weights of
    :func:`imcflow.ir.qgraph.bilinear_taps`, ``D = 4 sh sw``; rows then columns, exact in int64."""
    (sh, sw), x = factor, x.astype(np.int64)
    r0, r1, a0, a1 = bilinear_taps(x.shape[2], sh)
    c0, c1, b0, b1 = bilinear_taps(x.shape[3], sw)
    rows = x[:, :, r0] * a0[:, None] + x[:, :, r1] * a1[:, None]       # (N, C, H*sh, W), over 2 sh
    total = rows[..., c0] * b0 + rows[..., c1] * b1                   # over D
    return avg_round(total, 4 * sh * sw)


def depth_to_space_int(x: np.ndarray, r: int) -> np.ndarray:
    """Depth to space of (N, C*r*r, H, W) ``x`` (PixelShuffle): ``y[:, c, i, j] =
    x[:, c*r*r + (i % r)*r + j % r, i // r, j // r]``, by explicit index arrays."""
    n, ch, h, w = x.shape
    c = np.arange(ch // (r * r))[:, None, None]
    i = np.arange(h * r)[None, :, None]
    j = np.arange(w * r)[None, None, :]
    return x[:, c * r * r + (i % r) * r + j % r, i // r, j // r]


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, int, int]:
    """(N, C, H, W) int64 -> ((N*OH*OW, C*kh*kw) int64, OH, OW), zero padding, taps ``dilation``
    apart; columns in ``weight.reshape(c_out, -1)`` order (channel, kernel row, kernel column)."""
    n = x.shape[0]
    # float64 holds every activation integer exactly (|x| < 2**53).
    cols = F.unfold(torch.from_numpy(x.astype(np.float64)), kernel_size=kernel, stride=stride, padding=padding,
                    dilation=dilation)
    oh = window_out(x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    ow = window_out(x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    mat = cols.transpose(1, 2).reshape(n * oh * ow, -1).numpy().astype(np.int64)
    return mat, oh, ow


def mvm_layer_acc(node: QNode, x_spec: QTensor, x: np.ndarray, mode: str, chip: ChipConfig, seed: int,
                  index: int) -> tuple[np.ndarray, int, int]:
    """Accumulator of MVM layer ``node`` (channels on axis 1) as the chip computes it, and its exact
    scale ``(num, shift)``: real ``x@w`` ~ ``acc * num / 2**shift``."""
    if node.op is QOp.CONV:
        kh, kw = node.weight.shape[2:]
        mat, oh, ow = im2col(x, (kh, kw), node.stride, node.padding, node.dilation)
    else:
        kh = kw = 1
        mat = x.reshape(x.shape[0], -1)
    wmat = node.weight.reshape(node.c_out, -1).astype(np.int64).T  # (rows, c_out)
    c_in = node.weight.shape[1]
    per_tile = max(1, chip.array.cols // node.w_bits)  # outputs per column tile
    parts, scale = [], None
    for ct, o0 in enumerate(range(0, node.c_out, per_tile)):
        acc = None
        for t, (c0, c1) in enumerate(row_tiles(c_in, kh, kw, chip.array.rows)):
            r0, r1 = c0 * kh * kw, c1 * kh * kw
            res = cima.mvm(mat[:, r0:r1], wmat[r0:r1, o0:o0 + per_tile], x_spec.bits, node.w_bits,
                           x_signed=x_spec.signed, w_signed=True, mode=mode, full_scale=node.adc_full_scale_rows,
                           chip=chip, seed=tile_seed(seed, index, ct) + t)
            tile_scale = (int(res.scale_num), int(res.scale_shift))
            if scale is not None and tile_scale != scale:
                raise QuantError(f"layer {node.name!r}: tiles returned different accumulator scales "
                                 f"{scale} and {tile_scale}")
            scale = tile_scale
            acc = res.acc.astype(np.int64) if acc is None else acc + res.acc
        parts.append(acc)
    acc = np.concatenate(parts, axis=1)
    if node.op is QOp.CONV:
        acc = acc.reshape(x.shape[0], oh, ow, node.c_out).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(acc), scale[0], scale[1]


def maxpool_int(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], pad_end: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Max pooling of int64 (N, C, H, W); padded cells never win (padding with -inf, ``pad_end``
    more at the bottom and right)."""
    n, c, h, w = x.shape
    oh = (h + 2 * padding[0] + pad_end[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] + pad_end[1] - kernel[1]) // stride[1] + 1
    low = np.iinfo(np.int64).min
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0] + pad_end[0]), (padding[1], padding[1] + pad_end[1])),
                constant_values=low)
    out = np.full((n, c, oh, ow), low, dtype=np.int64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            win = xp[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
            out = np.maximum(out, win)
    return out


def avgpool_int(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> np.ndarray:
    """Average pooling of int64 (N, C, H, W): zero padding, divisor = kernel area, round half up."""
    n, c, h, w = x.shape
    oh = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    total = np.zeros((n, c, oh, ow), dtype=np.int64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            total += xp[:, :, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
    return avg_round(total, kernel[0] * kernel[1])
