"""Fast batch executor of a QGraph (torch), equal bit for bit to :func:`imcflow.quant.reference.run_qgraph`.

Same arithmetic as the reference, reorganised for speed: each MVM layer is one
:func:`imcflow.cima.bpbs_conv2d` (its table-look-up route in bit_true mode; in ``ideal`` mode, where
every ADC code is the exact count, one exact integer convolution), the batch runs in chunks, and
pooling/requant/add run as int64 or exact float torch ops (requant in float64 when every
intermediate stays below 2**52; max pooling in float32 when the values fit 24 bits). On a machine
shared with other jobs, ``torch.set_num_threads(1)`` is often faster than two threads
(``benchmarks/bittrue_speed.py`` measures both). ``tests/test_quant_fast.py`` checks equality with
the reference in every mode (in ``analog`` mode each column tile of ``chip.array.cols // w_bits``
outputs is one call with the reference's seeds, so the draws line up).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imcflow import cima
from imcflow.config.chip import ChipConfig
from imcflow.config.presets import get_preset
from imcflow.errors import CimaError, QuantError
from imcflow.ir.graph_exec import max_pool2d
from imcflow.ir.qgraph import ActTable, QGraph, QNode, QOp, QTensor, Requant, bilinear_taps
from imcflow.quant.reference import MODES, check_input_ints, tile_seed


def requant_torch(rq: Requant, acc: torch.Tensor, num: int, den_shift: int) -> torch.Tensor:
    """:meth:`imcflow.ir.qgraph.Requant.apply` on an integer-valued torch tensor (channels on axis 1,
    any dtype), as int64. Runs in float64 when every intermediate is an integer below 2**53 (then
    exact: products and sums of such integers, scaling by 2**-shift and floor are exact), else int64."""
    shape = [1] * acc.dim()
    shape[1] = -1
    total = rq.shift + den_shift
    acc_max = max(abs(float(v)) for v in torch.aminmax(acc)) if acc.numel() else 0.0
    mult = rq.multiplier.astype(np.int64) * num
    rounding = 0 if rq.has_table else 1 << (total - 1)  # a table reads the pre-activation u itself
    offset = (rq.bias.astype(np.int64) << den_shift) + rounding
    bound = acc_max * float(np.abs(mult).max(initial=0)) + float(np.abs(offset).max(initial=0))
    if bound < 2.0 ** 52:
        v = torch.addcmul(torch.from_numpy(offset.astype(np.float64)).view(shape), acc.to(torch.float64),
                          torch.from_numpy(mult.astype(np.float64)).view(shape))
    else:
        v = acc.to(torch.int64) * torch.from_numpy(mult).view(shape) + torch.from_numpy(offset).view(shape)
    if rq.has_table:
        return _table(rq.table, v, den_shift)
    if v.dtype == torch.float64:
        return v.mul_(2.0 ** -total).floor_().clamp_(rq.out_min, rq.out_max).to(torch.int64)
    return torch.clamp(v >> total, rq.out_min, rq.out_max)


def _table(table: ActTable, u: torch.Tensor, den_shift: int = 0) -> torch.Tensor:
    """The activation table on the exact pre-activation ``u`` (float64 holding integers, or int64)."""
    thresholds = torch.from_numpy(table.scaled(den_shift))
    if u.dtype == torch.float64:  # exact: every |u| < 2**52, and clipping larger thresholds keeps the count
        thresholds = thresholds.clamp(-(1 << 53), 1 << 53).to(torch.float64)
    index = torch.bucketize(u, thresholds, right=True)
    return torch.from_numpy(table.codes.astype(np.int64))[index]


def mvm_layer_fast(node: QNode, x_spec: QTensor, x: torch.Tensor, mode: str, chip: ChipConfig, seed: int,
                   index: int) -> torch.Tensor:
    """Requantised int64 output of MVM layer ``node`` on int64 ``x`` (batch first)."""
    if chip.adc.lossless:
        if mode == "analog":
            raise CimaError(f"mode='analog' needs a real ADC but chip {chip.name!r} has adc.lossless=True")
        mode = "ideal"
    w = torch.from_numpy(node.weight.astype(np.int64))
    xin = x if node.op is QOp.CONV else x.reshape(x.shape[0], -1)[:, :, None, None]
    w4 = w if node.op is QOp.CONV else w[:, :, None, None]
    kw = dict(x_bits=x_spec.bits, w_bits=node.w_bits, x_signed=x_spec.signed, stride=node.stride,
              padding=node.padding, dilation=node.dilation, full_scale=node.adc_full_scale_rows, mode=mode, adc_bits=chip.adc.bits,
              array_rows=chip.array.rows, analog=chip.analog, out_dtype=torch.float64)
    if node.op is QOp.LINEAR:
        kw.update(stride=1, padding=0, dilation=1)
    if mode == "ideal":  # ideal codes are exact counts: the accumulator is the integer convolution
        acc = _int_conv(xin, w4, kw["stride"], kw["padding"], kw["dilation"])
    elif mode == "analog":
        per_tile = max(1, chip.array.cols // node.w_bits)
        parts = [cima.bpbs_conv2d(xin, w4[o0:o0 + per_tile], seed=tile_seed(seed, index, ct), **kw)
                 for ct, o0 in enumerate(range(0, node.c_out, per_tile))]
        acc = torch.cat(parts, dim=1)
    else:
        acc = cima.bpbs_conv2d(xin, w4, **kw)
    if node.op is QOp.LINEAR:
        acc = acc[:, :, 0, 0]
    num, den = (1, 0) if mode == "ideal" else (node.adc_full_scale_rows, chip.adc.bits)
    return requant_torch(node.requant, acc, num, den)


def _int_conv(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """Exact integer convolution (integer-valued float result): float32 when every partial sum stays
    below 2**24, else float64."""
    bound = int(x.abs().max()) * int(w.abs().max()) * w[0].numel() if x.numel() and w.numel() else 0
    dtype = torch.float32 if bound < (1 << 24) else torch.float64
    return F.conv2d(x.to(dtype), w.to(dtype), stride=stride, padding=padding, dilation=dilation).round_()


def bilinear_sum(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """``sum_k w_k x_k`` of bilinear (``align_corners=False``) upsampling of (N, C, H, W) ``x`` by
    integer factors: the interpolation times ``D = 4 sh sw``, with the integer weights of
    :func:`imcflow.ir.qgraph.bilinear_taps` (exact for int64 ``x``, and for float ``x`` holding
    integers below 2**24 / D; differentiable)."""
    def taps(size: int, s: int) -> list[torch.Tensor]:
        return [torch.from_numpy(t).to(x.device) for t in bilinear_taps(size, s)]

    r0, r1, a0, a1 = taps(x.shape[2], factor[0])
    c0, c1, b0, b1 = taps(x.shape[3], factor[1])
    a0, a1, b0, b1 = (w.to(x.dtype) for w in (a0, a1, b0, b1))
    rows = x[:, :, r0] * a0[:, None] + x[:, :, r1] * a1[:, None]
    return rows[..., c0] * b0 + rows[..., c1] * b1


def _floor_div(total: torch.Tensor, count: int) -> torch.Tensor:
    return torch.div(total + count // 2, count, rounding_mode="floor")


def run_node_fast(qgraph: QGraph, node: QNode, ins: list[torch.Tensor], mode: str, chip: ChipConfig, seed: int,
                  index: int) -> torch.Tensor:
    """One node on int64 torch tensors (batch first)."""
    if node.is_mvm:
        return mvm_layer_fast(node, qgraph.spec(node.inputs[0]), ins[0], mode, chip, seed, index)
    x = ins[0]
    if node.op is QOp.MAXPOOL:  # float holds the integers exactly; padding acts as -inf
        spec = qgraph.spec(node.inputs[0])
        exact32 = max(abs(spec.min_int), abs(spec.max_int)) < (1 << 24)
        return max_pool2d(x.to(torch.float32 if exact32 else torch.float64), node.kernel, node.stride,
                          node.padding, node.pad_end).to(torch.int64)
    if node.op is QOp.AVGPOOL:
        total = F.avg_pool2d(x.double(), node.kernel, node.stride, node.padding, divisor_override=1)
        return _floor_div(total.to(torch.int64), node.kernel[0] * node.kernel[1])
    if node.op is QOp.GLOBAL_AVGPOOL:
        total = x.sum(dim=(2, 3), keepdim=True)
        return _floor_div(total, x.shape[2] * x.shape[3]).reshape(x.shape[0], *node.out.shape)
    if node.op is QOp.ADD:
        m_a, m_b = node.add_multipliers
        if node.add_table is not None:
            return _table(node.add_table, ins[0] * int(m_a) + ins[1] * int(m_b))
        v = ins[0] * int(m_a) + ins[1] * int(m_b) + (1 << (node.add_shift - 1))
        return torch.clamp(v >> node.add_shift, node.out.min_int, node.out.max_int)
    if node.op is QOp.FLATTEN:
        return x.reshape(x.shape[0], -1)
    if node.op is QOp.CONCAT:
        return torch.cat(ins, dim=1)
    if node.op is QOp.UPSAMPLE and node.upsample_mode == "bilinear":
        return _floor_div(bilinear_sum(x, node.upsample), 4 * node.upsample[0] * node.upsample[1])
    if node.op is QOp.UPSAMPLE:
        return x.repeat_interleave(node.upsample[0], dim=2).repeat_interleave(node.upsample[1], dim=3)
    if node.op is QOp.DEPTH_TO_SPACE:
        return torch.pixel_shuffle(x, node.depth_to_space)
    raise QuantError(f"node {node.name!r}: op {node.op.value} has no integer rule")  # pragma: no cover


def run_qgraph_fast(qgraph: QGraph, x_int: np.ndarray, mode: str = "bit_true", chip: str | ChipConfig = "jssc2022",
                    seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Like :func:`imcflow.quant.reference.run_qgraph` (same outputs), fast, in chunks of
    ``batch_size`` inputs. In analog mode the draws depend on the chunk, so give one chunk
    (``batch_size >= N``) to match the reference exactly."""
    if mode not in MODES:
        raise QuantError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    if batch_size < 1:
        raise QuantError(f"batch_size = {batch_size}: must be >= 1")
    chip = get_preset(chip)
    x = torch.from_numpy(check_input_ints(qgraph, x_int))
    outs = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            values = {qgraph.input_name: x[start:start + batch_size]}
            for index, node in enumerate(qgraph.nodes):
                values[node.name] = run_node_fast(qgraph, node, [values[i] for i in node.inputs], mode, chip,
                                                  seed, index)
            outs.append(values[qgraph.output])
    if not outs:
        return np.zeros((0, *qgraph.spec(qgraph.output).shape), dtype=np.int64)
    return torch.cat(outs).numpy()
