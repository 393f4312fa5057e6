"""Tiling: every MVM layer as a logical matrix split into array-sized tiles.

Row tiles are exactly :func:`imcflow.ir.qgraph.row_tiles` (the reference executor uses the same
split); column tiles are groups of ``array.cols // w_bits`` output channels starting at 0 (the
reference executor's column tiles, so analog draws agree too).
"""

from __future__ import annotations

from dataclasses import dataclass

from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError, QuantError
from imcflow.ir.program import SIMD_OPS
from imcflow.ir.qgraph import QGraph, QNode, QOp, row_tiles


@dataclass(frozen=True)
class LayerTiling:
    """How one MVM layer is cut into tiles."""

    layer: str
    index: int
    """Position of the node in ``qgraph.nodes``."""
    kh: int
    kw: int
    row_tiles: tuple[tuple[int, int], ...]
    """Input-channel groups [ch_lo, ch_hi), one per row tile."""
    col_tiles: tuple[tuple[int, int], ...]
    """Output-channel groups [oc_lo, oc_hi), one per column tile."""
    w_bits: int
    x_bits: int
    x_signed: bool
    pixels: int
    """Output pixels per image (1 for LINEAR)."""
    adc_full_scale_rows: int

    def tile_rows(self, rt: int) -> int:
        lo, hi = self.row_tiles[rt]
        return (hi - lo) * self.kh * self.kw

    def tile_cols(self, ct: int) -> int:
        lo, hi = self.col_tiles[ct]
        return (hi - lo) * self.w_bits


def psum_bits(tl: LayerTiling, chip: ChipConfig) -> int:
    """Bits of a spilled accumulator value of layer ``tl``: a sign bit plus enough bits for the
    worst-case magnitude of the sum over ALL its row tiles, in any simulation mode. One row tile's
    partial sum is ``sum over input bit i, weight bit j of +-2^(i+j) x code``, with ``code`` at most
    the tile's rows (ideal: exact counts) or ``2^adc.bits - 1`` (ADC codes), so its magnitude is at
    most ``max code x (2^x_bits - 1) x (2^w_bits - 1)``. VGG-11's 25,088-input classifier at 4 b on
    jssc2022 needs 24 b (chip.md: accumulators of 24 b or more)."""
    levels = (1 << chip.adc.bits) - 1
    bound = sum(max(tl.tile_rows(rt), levels) for rt in range(len(tl.row_tiles)))
    bound *= ((1 << tl.x_bits) - 1) * ((1 << tl.w_bits) - 1)
    return bound.bit_length() + 1


def _kernel(node: QNode) -> tuple[int, int, int, int]:
    w = node.weight
    if w is None:
        raise CompileError(f"layer {node.name!r} ({node.op.value}) has no weight")
    if w.ndim == 4:
        return int(w.shape[0]), int(w.shape[1]), int(w.shape[2]), int(w.shape[3])
    if w.ndim == 2:
        return int(w.shape[0]), int(w.shape[1]), 1, 1
    raise CompileError(f"layer {node.name!r}: weight of shape {tuple(w.shape)}; expected 2-D or 4-D")


def tile_layer(qgraph: QGraph, index: int, chip: ChipConfig) -> LayerTiling:
    """Tile MVM node number ``index`` of ``qgraph`` for ``chip``; CompileError if it cannot fit."""
    node = qgraph.nodes[index]
    c_out, c_in, kh, kw = _kernel(node)
    arr = chip.array
    x = qgraph.spec(node.inputs[0])
    for bits, what in ((node.w_bits, "weight bits"), (x.bits, "input bits")):
        if not 1 <= bits <= arr.max_bits:
            raise CompileError(f"layer {node.name!r}: {what} = {bits}, the array supports 1..{arr.max_bits} "
                               f"(array.max_bits); quantise the model with fewer bits or use a chip with more")
    if node.w_bits > arr.cols:
        raise CompileError(f"layer {node.name!r}: one {node.w_bits}-b output channel needs {node.w_bits} columns, "
                           f"the array has {arr.cols} (array.cols); use fewer weight bits or a wider array")
    try:
        groups = row_tiles(c_in, kh, kw, arr.rows)
    except QuantError as exc:
        raise CompileError(f"layer {node.name!r}: {exc}; use a smaller kernel or an array with more rows") from None
    per = arr.cols // node.w_bits
    cols = tuple((lo, min(lo + per, c_out)) for lo in range(0, c_out, per))
    pixels = int(node.out.shape[1] * node.out.shape[2]) if node.op == QOp.CONV and len(node.out.shape) == 3 else 1
    if pixels < 1:
        raise CompileError(f"layer {node.name!r}: output map {tuple(node.out.shape)} has no pixels; "
                           f"the input is too small for its kernel, stride and padding")
    return LayerTiling(layer=node.name, index=index, kh=kh, kw=kw, row_tiles=tuple(groups), col_tiles=cols,
                       w_bits=node.w_bits, x_bits=x.bits, x_signed=x.signed, pixels=pixels,
                       adc_full_scale_rows=node.adc_full_scale_rows)


def tile_graph(qgraph: QGraph, chip: ChipConfig) -> dict[str, LayerTiling]:
    """Tilings of every MVM layer, by name; CompileError for ops the chip cannot run."""
    out = {}
    for i, node in enumerate(qgraph.nodes):
        if node.is_mvm:
            out[node.name] = tile_layer(qgraph, i, chip)
        elif node.op not in SIMD_OPS:
            raise CompileError(f"node {node.name!r}: op {node.op.value!r} has no chip mapping")
    return out
