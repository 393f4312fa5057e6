"""How a normalized float Graph maps onto QGraph nodes (shared by PTQ calibration and QAT).

- A CONV, LINEAR or ADD whose only consumer is a RELU or CLAMP absorbs it: the SIMD applies the
  activation as the requant's clamp (``out_min``/``out_max``). The fused QNode keeps the name of
  the weight (or add) node; the activation's tensor name becomes an alias of it.
- A CONV, LINEAR or ADD whose only consumer is an ACTIVATION (SiLU, GELU, LeakyReLU, ...) absorbs
  it the same way; the SIMD applies it as a table on the requant's or the add's fixed-point result
  (:mod:`imcflow.quant.act_table`).
- MAXPOOL, AVGPOOL, GLOBAL_AVGPOOL, FLATTEN, UPSAMPLE, DEPTH_TO_SPACE and CONCAT map one to one.
- A RELU or CLAMP that cannot be fused (after a pool, or on a tensor with several consumers)
  raises QuantError: the chip has no stand-alone activation unit in this model.

Scale groups: a pool, flatten, upsample or depth-to-space output shares its input's spec (same integers), and the inputs
and output of a concat share one spec, so each group gets one scale, bit width and signedness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from imcflow.errors import QuantError
from imcflow.ir.activations import apply_activation, get_activation
from imcflow.ir.graph import Graph, Node, Op
from imcflow.ir.graph_exec import run_node

FUSABLE = (Op.CONV, Op.LINEAR, Op.ADD)
ACTIVATIONS = (Op.RELU, Op.CLAMP, Op.ACTIVATION)
SAME_SPEC_OPS = (Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.UPSAMPLE, Op.DEPTH_TO_SPACE)


@dataclass(frozen=True)
class Step:
    """One future QNode: a graph node with its fused activation, if any."""

    name: str
    """QNode name (the name of ``node``)."""
    node: Node
    inputs: tuple[str, ...]
    """Input tensors as QGraph names (graph input or earlier steps)."""
    act: Node | None
    """The fused RELU, CLAMP or ACTIVATION node, or None."""

    @property
    def tensor(self) -> str:
        """The float graph tensor whose (quantised) value this step outputs."""
        return self.act.name if self.act is not None else self.node.name

    @property
    def act_range(self) -> tuple[float | None, float | None]:
        """Real clamp range of the fused activation: (0, None) for ReLU and for a table activation
        that is never negative, (min, max) for clamp, else (None, None)."""
        if self.act is None:
            return None, None
        if self.act.op is Op.RELU:
            return 0.0, None
        if self.act.op is Op.ACTIVATION:
            return (0.0, None) if get_activation(self.act.attrs["fn"]).non_negative else (None, None)
        return float(self.act.attrs["min"]), float(self.act.attrs["max"])

    @property
    def act_fn(self) -> tuple[str, float | None] | None:
        """``(fn, alpha)`` of a fused table activation (SiLU, GELU, ...), else None."""
        if self.act is None or self.act.op is not Op.ACTIVATION:
            return None
        return self.act.attrs["fn"], self.act.attrs.get("alpha")

    def activate(self, v: torch.Tensor) -> torch.Tensor:
        """The fused table activation's float function of ``v`` (identity without one)."""
        fn = self.act_fn
        return v if fn is None else apply_activation(fn[0], fn[1], v)


@dataclass(frozen=True)
class Plan:
    """The steps of a graph's quantised form, in order, and the graph tensor -> QGraph name map."""

    graph: Graph
    steps: tuple[Step, ...]
    alias: dict[str, str]
    output: str

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)


def plan_graph(graph: Graph) -> Plan:
    """Fuse activations into their producers; QuantError for what the chip cannot run."""
    if not graph.is_normalized():
        raise QuantError(f"graph {graph.name!r} still has batchnorm nodes: normalize it first "
                         f"(imcflow.frontend.normalize folds BN into the convolutions)")
    alias = {graph.input_name: graph.input_name}
    fused: dict[str, Node] = {}
    for n in graph.nodes:
        if n.op in FUSABLE:
            users = graph.consumers(n.name)
            if len(users) == 1 and users[0].op in ACTIVATIONS and n.name != graph.output:
                fused[users[0].name] = n
    steps = []
    for n in graph.nodes:
        if n.op in ACTIVATIONS:
            if n.name not in fused:
                raise QuantError(_unfused(graph, n))
            alias[n.name] = fused[n.name].name
            continue
        act = next((a for a, p in fused.items() if p is n), None)
        act_node = graph.node(act) if act is not None else None
        steps.append(Step(n.name, n, tuple(alias[i] for i in n.inputs), act_node))
        alias[n.name] = n.name
    return Plan(graph=graph, steps=tuple(steps), alias=alias, output=alias[graph.output])


def _unfused(graph: Graph, n: Node) -> str:
    """Why activation ``n`` cannot be fused into its producer, and the fix."""
    what = n.attrs["fn"] if n.op is Op.ACTIVATION else n.op.value
    return (f"node {n.name!r} ({what}) follows {n.inputs[0]!r}, which is not a conv, linear or add with it as "
            f"only consumer; the chip applies activations in the requant of such a layer: move the activation "
            f"directly after one")


def pool_stride(node: Node) -> tuple[int, int]:
    """Stride of a pooling node (defaults to its kernel, as PyTorch's)."""
    return tuple(node.attrs.get("stride", node.attrs["kernel"]))


def float_node(node: Node, xs: list[torch.Tensor], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Float (torch) value of one graph node; ``weight``/``bias`` override the node's params."""
    a = node.attrs
    x = xs[0]
    if node.op in (Op.CONV, Op.LINEAR):
        w = weight if weight is not None else torch.from_numpy(node.params["weight"])
        b = bias if bias is not None else (torch.from_numpy(node.bias) if node.bias is not None else None)
        if node.op is Op.LINEAR:
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, stride=tuple(a.get("stride", (1, 1))), padding=tuple(a.get("padding", (0, 0))),
                        dilation=tuple(a.get("dilation", (1, 1))))
    if node.op is Op.BATCHNORM:
        raise QuantError(f"{node.describe()}: op not supported by the quantiser")
    return run_node(node, xs)


def float_tensors(graph: Graph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tensor of ``graph`` on the batch ``x`` (float32, no grad), by graph tensor name."""
    values = {graph.input_name: x.to(torch.float32)}
    with torch.no_grad():
        for n in graph.nodes:
            values[n.name] = float_node(n, [values[i] for i in n.inputs])
    return values


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def scale_groups(plan: Plan) -> dict[str, str]:
    """QGraph tensor name -> representative of its scale group (see module doc)."""
    uf = _UnionFind()
    uf.find(plan.graph.input_name)
    for s in plan.steps:
        uf.find(s.name)
        if s.node.op in SAME_SPEC_OPS:
            uf.union(s.inputs[0], s.name)
        elif s.node.op is Op.CONCAT:
            for i in s.inputs:
                uf.union(s.name, i)
    return {name: uf.find(name) for name in uf.parent}
