"""Random small QGraphs built by hand (no quantiser needed), shared by compiler and simulator tests.

``random_qgraph(seed, ...)`` builds a valid, verified QGraph: a chain of conv layers (3x3 or 1x1,
optionally stride 2), max/avg pooling, residual adds, then flatten or global average pooling and
one or two linear layers. Weights are random integers in the signed ``w_bits`` range; Requant
parameters are random but valid (multiplier, bias, shift), ReLU outputs are unsigned ``a_bits``.
"""

from __future__ import annotations

import math

import numpy as np

from imcflow.config.chip import ChipConfig
from imcflow.ir.qgraph import ActTable, QGraph, QNode, QOp, QTensor, Requant, pick_full_scale, row_tiles


class _Builder:
    def __init__(self, rng: np.random.Generator, chip: ChipConfig, w_bits: int, a_bits: int, tables: bool = False):
        self.rng, self.chip, self.w_bits, self.a_bits, self.tables = rng, chip, w_bits, a_bits, tables
        self.nodes: list[QNode] = []
        self.specs: dict[str, QTensor] = {}

    def act(self, shape: tuple[int, ...]) -> QTensor:
        return QTensor(shape=tuple(int(s) for s in shape), bits=self.a_bits, signed=False, scale=0.05)

    def add_node(self, node: QNode) -> str:
        self.nodes.append(node)
        self.specs[node.name] = node.out
        return node.name

    def mvm(self, name: str, src: str, c_out: int, k: int = 1, stride: int = 1, linear: bool = False) -> str:
        x = self.specs[src]
        c_in = x.shape[0]
        lo, hi = -(1 << (self.w_bits - 1)), (1 << (self.w_bits - 1)) - 1
        if linear:
            weight = self.rng.integers(lo, hi + 1, size=(c_out, c_in)).astype(np.int8)
            out = self.act((c_out,))
            kh = kw = 1
        else:
            weight = self.rng.integers(lo, hi + 1, size=(c_out, c_in, k, k)).astype(np.int8)
            pad = k // 2
            h = (x.shape[1] + 2 * pad - k) // stride + 1
            w = (x.shape[2] + 2 * pad - k) // stride + 1
            out = self.act((c_out, h, w))
            kh = kw = k
        tiles = row_tiles(c_in, kh, kw, self.chip.array.rows)
        rows_max = max(c1 - c0 for c0, c1 in tiles) * kh * kw
        fs = pick_full_scale(rows_max, self.chip.adc.full_scales_rows)
        acc_max = rows_max * ((1 << x.bits) - 1) * (1 << (self.w_bits - 1))
        mult = self.rng.integers(1, 64, size=c_out).astype(np.int64)
        shift = max(1, math.ceil(math.log2(max(2, acc_max * 64 / (1 << self.a_bits)))) - 2)
        bias = self.rng.integers(-(1 << shift), (1 << shift) + 1, size=c_out).astype(np.int64)
        requant = Requant(multiplier=mult, bias=bias, shift=int(shift), out_min=0, out_max=(1 << self.a_bits) - 1)
        if self.tables and self.rng.random() < 0.5:
            requant = self.table(requant)
        node = QNode(name=name, op=QOp.LINEAR if linear else QOp.CONV, inputs=(src,), out=out, weight=weight,
                     w_bits=self.w_bits, w_scale=np.full(c_out, 0.01), adc_full_scale_rows=fs,
                     requant=requant, kernel=(kh, kw), stride=(stride, stride),
                     padding=(0, 0) if linear else (k // 2, k // 2))
        return self.add_node(node)

    def table(self, rq: Requant) -> Requant:
        """``rq`` with a random activation table (any step function, not monotonic) over the
        pre-activations of about -4 .. 2**a_bits output steps."""
        n = int(self.rng.integers(1, 2 * (1 << self.a_bits)))
        span = (1 << rq.shift) * (1 << self.a_bits)
        t = np.unique(self.rng.integers(-span // 4, span, size=n)).astype(np.int64)
        codes = self.rng.integers(rq.out_min, rq.out_max + 1, size=len(t) + 1).astype(np.int64)
        return Requant(multiplier=rq.multiplier, bias=rq.bias, shift=rq.shift, out_min=rq.out_min,
                       out_max=rq.out_max, table=ActTable("random", None, t, codes))

    def pool(self, name: str, src: str, op: QOp) -> str:
        c, h, w = self.specs[src].shape
        out = self.act((c, h // 2, w // 2))
        return self.add_node(QNode(name=name, op=op, inputs=(src,), out=out, kernel=(2, 2), stride=(2, 2)))

    def add(self, name: str, a: str, b: str) -> str:
        out = self.act(self.specs[a].shape)
        return self.add_node(QNode(name=name, op=QOp.ADD, inputs=(a, b), out=out,
                                   add_multipliers=(int(self.rng.integers(1, 4)), int(self.rng.integers(1, 4))),
                                   add_shift=2))

    def flatten(self, name: str, src: str) -> str:
        out = self.act((int(np.prod(self.specs[src].shape)),))
        return self.add_node(QNode(name=name, op=QOp.FLATTEN, inputs=(src,), out=out))

    def gap(self, name: str, src: str) -> str:
        c, h, w = self.specs[src].shape
        out = self.act((c,))
        return self.add_node(QNode(name=name, op=QOp.GLOBAL_AVGPOOL, inputs=(src,), out=out, kernel=(h, w)))


def random_qgraph(seed: int, chip: ChipConfig, n_conv: int = 3, in_shape: tuple[int, int, int] = (3, 8, 8),
                  max_channels: int = 16, w_bits: int = 4, a_bits: int = 4, x_bits: int = 8,
                  n_linear: int = 1, allow_add: bool = True, allow_pool: bool = True,
                  head: str = "flatten", tables: bool = False) -> QGraph:
    """A random verified QGraph: ``n_conv`` conv layers (with optional pooling and residual adds),
    then ``head`` ("flatten" or "gap") and ``n_linear`` linear layers (10 outputs at the end).
    ``tables``: about half the MVM layers get a random activation table instead of ReLU."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, chip, w_bits, a_bits, tables)
    b.specs["x"] = QTensor(shape=in_shape, bits=x_bits, signed=False, scale=1 / 255)
    cur = "x"
    for i in range(n_conv):
        c_out = int(rng.integers(1, max_channels + 1))
        h = min(b.specs[cur].shape[1:])
        k = int(rng.choice([1, 3])) if chip.array.rows >= 9 else 1
        stride = 2 if (h >= 4 and rng.random() < 0.2) else 1
        cur = b.mvm(f"conv{i}", cur, c_out, k=k, stride=stride)
        if allow_add and stride == 1 and rng.random() < 0.3:
            other = b.mvm(f"conv{i}b", cur, c_out, k=k)
            cur = b.add(f"add{i}", cur, other)
        h = min(b.specs[cur].shape[1:])
        if allow_pool and h >= 2 and rng.random() < 0.35:
            cur = b.pool(f"pool{i}", cur, QOp.MAXPOOL if rng.random() < 0.7 else QOp.AVGPOOL)
    if len(b.specs[cur].shape) == 3:
        cur = b.gap("gap", cur) if head == "gap" else b.flatten("flatten", cur)
    for j in range(n_linear):
        c_out = 10 if j == n_linear - 1 else int(rng.integers(4, 33))
        cur = b.mvm(f"fc{j}", cur, c_out, linear=True)
    graph = QGraph(name=f"random{seed}", input_name="x", input=b.specs["x"], nodes=tuple(b.nodes), output=cur)
    graph.verify()
    return graph


def chain_qgraph(chip: ChipConfig, layers: list[tuple], in_shape: tuple[int, int, int], seed: int = 0,
                 w_bits: int = 4, a_bits: int = 4, x_bits: int = 8) -> QGraph:
    """A QGraph from an explicit list: ("conv", c_out, k[, stride]), ("maxpool",), ("avgpool",),
    ("gap",), ("flatten",), ("linear", c_out)."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, chip, w_bits, a_bits)
    b.specs["x"] = QTensor(shape=in_shape, bits=x_bits, signed=False, scale=1 / 255)
    cur = "x"
    for i, spec in enumerate(layers):
        kind = spec[0]
        if kind == "conv":
            cur = b.mvm(f"c{i}", cur, spec[1], k=spec[2], stride=spec[3] if len(spec) > 3 else 1)
        elif kind == "linear":
            cur = b.mvm(f"fc{i}", cur, spec[1], linear=True)
        elif kind in ("maxpool", "avgpool"):
            cur = b.pool(f"p{i}", cur, QOp.MAXPOOL if kind == "maxpool" else QOp.AVGPOOL)
        elif kind == "gap":
            cur = b.gap(f"gap{i}", cur)
        elif kind == "flatten":
            cur = b.flatten(f"flat{i}", cur)
        else:
            raise ValueError(kind)
    graph = QGraph(name="chain", input_name="x", input=b.specs["x"], nodes=tuple(b.nodes), output=cur)
    graph.verify()
    return graph


def resnet_qgraph(chip: ChipConfig, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64,
                  in_shape: tuple[int, int, int] = (3, 224, 224), classes: int = 1000, seed: int = 0,
                  w_bits: int = 4, a_bits: int = 4) -> QGraph:
    """A bottleneck ResNet (default: ResNet-50's topology and size) with random integer weights."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, chip, w_bits, a_bits)
    b.specs["x"] = QTensor(shape=in_shape, bits=8, signed=False, scale=1 / 255)
    cur = b.mvm("conv1", "x", width, k=7, stride=2)
    c, h, w = b.specs[cur].shape
    cur = b.add_node(QNode(name="maxpool", op=QOp.MAXPOOL, inputs=(cur,), out=b.act((c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)),
                           kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
    for stage, n in enumerate(blocks):
        mid = width * 2 ** stage
        for i in range(n):
            stride = 2 if (i == 0 and stage > 0) else 1
            p = f"l{stage + 1}.{i}"
            a = b.mvm(f"{p}.conv1", cur, mid, k=1)
            a = b.mvm(f"{p}.conv2", a, mid, k=3, stride=stride)
            a = b.mvm(f"{p}.conv3", a, mid * 4, k=1)
            skip = cur
            if i == 0:
                skip = b.mvm(f"{p}.down", cur, mid * 4, k=1, stride=stride)
            cur = b.add(f"{p}.add", a, skip)
    cur = b.gap("gap", cur)
    cur = b.mvm("fc", cur, classes, linear=True)
    graph = QGraph(name="resnet", input_name="x", input=b.specs["x"], nodes=tuple(b.nodes), output=cur)
    graph.verify()
    return graph
