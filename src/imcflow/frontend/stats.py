"""Layer statistics of a float Graph: parameters, MACs per image and arrays needed on a chip.

Array count of a weight layer at ``w_bits``: its rows are split into row tiles by
:func:`imcflow.ir.qgraph.row_tiles` (by input channels, each tile <= ``chip.array.rows`` rows) and its
``c_out * w_bits`` physical columns into ``ceil(c_out * w_bits / chip.array.cols)`` column tiles;
arrays = row tiles x column tiles (each tile occupies one array, weights stationary).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from imcflow.config.chip import ChipConfig
from imcflow.ir.graph import Graph, Node, Op
from imcflow.ir.qgraph import row_tiles


@dataclass(frozen=True)
class LayerStats:
    """One node of the graph, with its costs (weight-layer fields are 0 for other ops)."""

    name: str
    op: str
    out_shape: tuple[int, ...]
    params: int
    """Trainable parameters: weight + bias for conv/linear, gamma + beta for batch norm."""
    macs: int
    """Multiply-accumulates per image."""
    rows: int = 0
    """Rows of the logical weight matrix (C_in x kh x kw)."""
    cols: int = 0
    """Physical columns: c_out x w_bits."""
    row_tiles: int = 0
    col_tiles: int = 0
    arrays: int = 0


@dataclass(frozen=True)
class GraphStats:
    """Per-layer statistics and totals of a Graph on a chip at a weight precision."""

    graph: str
    chip: str
    w_bits: int
    input_shape: tuple[int, ...]
    layers: tuple[LayerStats, ...]
    chip_arrays: int
    """Arrays on the chip (one per core)."""

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def arrays(self) -> int:
        return sum(layer.arrays for layer in self.layers)

    @property
    def weight_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.arrays)

    def to_dict(self) -> dict:
        """JSON-able dict with the totals."""
        return {**asdict(self), "params": self.params, "macs": self.macs, "arrays": self.arrays,
                "weight_layers": self.weight_layers}


def graph_stats(graph: Graph, chip: ChipConfig, w_bits: int) -> GraphStats:
    """Statistics of every node of ``graph`` mapped on ``chip`` with ``w_bits``-bit weights."""
    chip.check_bits(w_bits, "w_bits")
    layers = tuple(_layer(graph, n, chip, w_bits) for n in graph.nodes)
    return GraphStats(graph.name, chip.name, w_bits, graph.input_shape, layers, chip.n_cores)


def _layer(graph: Graph, n: Node, chip: ChipConfig, w_bits: int) -> LayerStats:
    if n.op is Op.BATCHNORM:
        return LayerStats(n.name, n.op.value, n.out_shape, n.params["gamma"].size + n.params["beta"].size, 0)
    if not n.is_weight_layer:
        op = n.attrs["fn"] if n.op is Op.ACTIVATION else n.op.value  # "silu", not "activation"
        return LayerStats(n.name, op, n.out_shape, 0, 0)
    w = n.params["weight"]
    params = w.size + (n.bias.size if n.bias is not None else 0)
    c_out, c_in = w.shape[:2]
    kh, kw = w.shape[2:] if w.ndim == 4 else (1, 1)
    positions = math.prod(n.out_shape[1:]) if n.op is Op.CONV else 1
    macs = positions * w.size
    tiles = len(row_tiles(c_in, kh, kw, chip.array.rows))
    cols = c_out * w_bits
    col_tiles = math.ceil(cols / chip.array.cols)
    return LayerStats(n.name, n.op.value, n.out_shape, params, macs, c_in * kh * kw, cols, tiles, col_tiles,
                      tiles * col_tiles)
