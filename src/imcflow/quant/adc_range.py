"""Calibrated ADC full scales: the smallest full scale whose clipping stays rare on real inputs.

The default full scale of a layer (:func:`imcflow.quant.calibrate.full_scale_for`) is the smallest
programmable one no column count can exceed: no conversion ever clips, but a column of a 1152-row
tile fed by sparse 4-b activations rarely counts more than a few dozen rows, so most of the 8-b
ADC's codes go unused and one code spans several counts. With ``QuantSpec(adc_full_scale=
"calibrated")`` the quantiser instead measures every conversion's count ``k`` on the calibration
inputs (integer activations of the ideal network; every row tile, input bit-plane and weight-bit
column) and picks, per layer, the smallest of ``chip.adc.full_scales_rows`` for which at most
``adc_clip_fraction`` of the conversions clip (``k >= full_scale * (2**b - 1/2) / 2**b``, the
counts the ADC would code as ``2**b - 1`` or more). The choice is stored in
``adc_full_scale_rows`` like the default one, so compiler, simulator, reference executor and QAT
all use it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from imcflow.config.chip import ChipConfig
from imcflow.ir.qgraph import QGraph, QNode, QOp, row_tiles
from imcflow.quant.fast_exec import run_node_fast


def column_counts(node: QNode, x: torch.Tensor, x_bits: int, array_rows: int):
    """Yield, per row tile and input bit-plane, the count tensor ``k`` (N, c_out*w_bits, Ho, Wo)
    of MVM layer ``node`` on int64 inputs ``x`` (what each column's ADC converts)."""
    w = torch.from_numpy(node.weight.astype(np.int64))
    if node.op is QOp.LINEAR:
        x, w = x.reshape(x.shape[0], -1)[:, :, None, None], w[:, :, None, None]
        stride, padding, dilation = 1, 0, 1
    else:
        stride, padding, dilation = node.stride, node.padding, node.dilation
    c_out, c_in, kh, kw = w.shape
    wb = torch.stack([(w >> j) & 1 for j in range(node.w_bits)], dim=1).reshape(c_out * node.w_bits, c_in, kh, kw)
    wb = wb.to(torch.float32)
    for c0, c1 in row_tiles(c_in, kh, kw, array_rows):
        for i in range(x_bits):
            xb = ((x[:, c0:c1] >> i) & 1).to(torch.float32)
            yield F.conv2d(xb, wb[:, c0:c1], stride=stride, padding=padding, dilation=dilation)


def pick_calibrated_full_scale(node: QNode, x: torch.Tensor, x_bits: int, chip: ChipConfig,
                               clip_fraction: float) -> int:
    """Smallest programmable full scale (not above the layer's default) clipping at most
    ``clip_fraction`` of the conversions of ``node`` on inputs ``x``."""
    levels = 1 << chip.adc.bits
    options = sorted(fs for fs in chip.adc.full_scales_rows if fs <= node.adc_full_scale_rows)
    clipped = {fs: 0 for fs in options}
    total = 0
    for k in column_counts(node, x, x_bits, chip.array.rows):
        total += k.numel()
        for fs in options:
            clipped[fs] += int((k * (2 * levels) >= fs * (2 * levels - 1)).sum())
    for fs in options:
        if total == 0 or clipped[fs] <= clip_fraction * total:
            return fs
    return node.adc_full_scale_rows


def calibrate_full_scales(qgraph: QGraph, x_int: np.ndarray, chip: ChipConfig, clip_fraction: float) -> dict[str, int]:
    """Calibrated full scale of every MVM layer of ``qgraph`` on integer inputs ``x_int``."""
    values = {qgraph.input_name: torch.from_numpy(np.asarray(x_int, dtype=np.int64))}
    chosen = {}
    with torch.no_grad():
        for index, node in enumerate(qgraph.nodes):
            ins = [values[i] for i in node.inputs]
            if node.is_mvm:
                chosen[node.name] = pick_calibrated_full_scale(node, ins[0], qgraph.spec(node.inputs[0]).bits, chip,
                                                               clip_fraction)
            values[node.name] = run_node_fast(qgraph, node, ins, "ideal", chip, 0, index)
    return chosen


def with_full_scales(qgraph: QGraph, full_scales: dict[str, int]) -> QGraph:
    """``qgraph`` with the MVM layers' ``adc_full_scale_rows`` replaced by ``full_scales``."""
    nodes = tuple(dataclasses.replace(n, adc_full_scale_rows=int(full_scales[n.name])) if n.name in full_scales else n
                  for n in qgraph.nodes)
    return dataclasses.replace(qgraph, nodes=nodes)
