"""Graph: a float network as the frontend imports it (before quantisation).

Conventions (the contract between the importers, :mod:`imcflow.frontend.normalize` and the quantiser):

- Tensors are NCHW float32; shapes are stored WITHOUT the batch: ``(C, H, W)`` for feature maps,
  ``(F,)`` after flatten. ``Graph.input_shape`` is ``(C, H, W)`` (or ``(F,)`` for a flat input).
- ``Graph.nodes`` is topologically ordered; a node's inputs name the graph input or earlier nodes.
  Every node produces one tensor, named like the node.
- ``Node.params`` holds float32 numpy arrays, ``Node.attrs`` JSON-able scalars/tuples.

Per op (params | attrs):

=============== ========================================================= ==========================================
op              params                                                    attrs
=============== ========================================================= ==========================================
conv            weight (Cout, Cin, kh, kw); bias (Cout,) optional          kernel (kh, kw), stride (sh, sw),
                                                                          padding (ph, pw) symmetric zero padding,
                                                                          dilation (dh, dw) optional (default 1, 1)
linear          weight (out, in); bias (out,) optional                     -
batchnorm       gamma, beta, mean, var: each (C,)                          eps (float); normalises axis 0 of the input
relu            -                                                         -
clamp           -                                                         min, max (floats; ReLU6 = 0, 6)
activation      -                                                         fn (a name of
                                                                          :data:`imcflow.ir.activations.ACTIVATIONS`:
                                                                          silu, gelu, leaky_relu, ...), alpha
                                                                          (float, where the function has one)
maxpool         -                                                         kernel, stride, padding (pads with -inf),
                                                                          pad_end (ph, pw) optional: more -inf
                                                                          padding at the bottom/right (ceil_mode)
avgpool         -                                                         kernel, stride, padding (zero padding,
                                                                          divisor = kernel area)
global_avgpool  -                                                         -  (output (C, 1, 1))
add             -                                                         -  (2 inputs of equal shape)
flatten         -                                                         -  ((C, H, W) -> (C*H*W,))
concat          -                                                         axis = 0 (channels, without batch)
upsample        -                                                         scale (sh, sw) positive ints, output
                                                                          (C, H*sh, W*sw); mode "nearest" (default;
                                                                          out[y, x] = in[y//sh, x//sw]) or
                                                                          "bilinear" (align_corners=False)
depth_to_space  -                                                         block r (int >= 1): PixelShuffle / ONNX
                                                                          DepthToSpace CRD, (C*r*r, H, W) ->
                                                                          (C, H*r, W*r); out[c, y, x] =
                                                                          in[c*r*r + (y%r)*r + x%r, y//r, x//r]
=============== ========================================================= ==========================================

A conv may carry ``groups`` (int, informational): the importer expanded a grouped or depthwise
convolution into this dense, block-diagonal weight (the chip has no grouped mode).

Optional attrs any op may carry, set by the ONNX importer for QCDQ models: ``w_bits`` (weight bit
width inferred from the weight QuantizeLinear), ``act_scale`` (scale of the activation QDQ that
followed this node's output; float). A *normalized* graph (see :mod:`imcflow.frontend.normalize`)
has no batchnorm node.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imcflow.errors import ModelError
from imcflow.ir.activations import get_activation
from imcflow.ir.serialize import decode, encode, load_json_object, read_json_file
from imcflow.ir.qgraph import window_out


class Op(str, enum.Enum):
    """Operations of a float Graph."""

    CONV = "conv"
    LINEAR = "linear"
    BATCHNORM = "batchnorm"
    RELU = "relu"
    CLAMP = "clamp"
    ACTIVATION = "activation"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    ADD = "add"
    FLATTEN = "flatten"
    CONCAT = "concat"
    UPSAMPLE = "upsample"
    DEPTH_TO_SPACE = "depth_to_space"


WEIGHT_OPS = (Op.CONV, Op.LINEAR)
ELEMENTWISE_OPS = (Op.RELU, Op.CLAMP, Op.ACTIVATION)
POOL_OPS = (Op.MAXPOOL, Op.AVGPOOL)
NORMALIZED_OPS = frozenset(Op) - {Op.BATCHNORM}
"""Ops a normalized graph (what the quantiser consumes) may contain."""


def _tuplify(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_tuplify(x) for x in v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _float32(v: Any) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a if a.flags.writeable else a.copy()  # torch.from_numpy needs writable memory


@dataclass(frozen=True, eq=False)
class Node:
    """One float operation. See the module docstring for the params and attrs of each op."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    out_shape: tuple[int, ...] = ()
    """Output shape without the batch."""

    def __post_init__(self) -> None:
        # Canonical forms, so that a JSON round trip gives back an identical node.
        object.__setattr__(self, "op", Op(self.op))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "out_shape", tuple(int(s) for s in self.out_shape))
        object.__setattr__(self, "attrs", {k: _tuplify(v) for k, v in self.attrs.items()})
        object.__setattr__(self, "params", {k: _float32(v) for k, v in self.params.items()})

    @property
    def weight(self) -> np.ndarray | None:
        return self.params.get("weight")

    @property
    def bias(self) -> np.ndarray | None:
        return self.params.get("bias")

    @property
    def is_weight_layer(self) -> bool:
        return self.op in WEIGHT_OPS

    def describe(self) -> str:
        """``'name' (op)`` for error messages."""
        return f"node {self.name!r} ({self.op.value})"


@dataclass(frozen=True, eq=False)
class Graph:
    """A float network: a topologically ordered tuple of Nodes over one input."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    output: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "nodes", tuple(self.nodes))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shape(self, tensor: str) -> tuple[int, ...]:
        """Shape (without batch) of the graph input or of a node's output."""
        return self.input_shape if tensor == self.input_name else self.node(tensor).out_shape

    def consumers(self, tensor: str) -> list[Node]:
        """Nodes that read ``tensor``, in graph order."""
        return [n for n in self.nodes if tensor in n.inputs]

    def weight_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.is_weight_layer]

    def ops(self) -> list[Op]:
        return [n.op for n in self.nodes]

    def is_normalized(self) -> bool:
        return all(n.op in NORMALIZED_OPS for n in self.nodes)

    def verify(self) -> None:
        """Check names, order, params and every shape; raise ModelError naming the node."""
        if not self.nodes:
            raise ModelError(f"graph {self.name!r} has no operations: give a network with at least one layer")
        _check_shape(self.input_shape, f"graph input {self.input_name!r}")
        shapes = {self.input_name: self.input_shape}
        for n in self.nodes:
            if n.name in shapes:
                raise ModelError(f"{n.describe()}: duplicate tensor name; rename the node")
            for i in n.inputs:
                if i not in shapes:
                    raise ModelError(f"{n.describe()}: input {i!r} is not produced before it; "
                                     f"nodes must be in topological order")
            for key, p in n.params.items():
                if not np.all(np.isfinite(p)):
                    raise ModelError(f"{n.describe()}: parameter {key!r} has NaN or infinite values; "
                                     f"fix the weights")
            expected = infer_shape(n, [shapes[i] for i in n.inputs])
            if expected != n.out_shape:
                raise ModelError(f"{n.describe()}: stored output shape {n.out_shape} but the inputs give "
                                 f"{expected}; re-import the model")
            shapes[n.name] = n.out_shape
        if self.output not in shapes:
            raise ModelError(f"graph output {self.output!r} is not produced by any node")

    # --- JSON -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(encode(self), indent=1)

    @staticmethod
    def from_json(text: str, where: str = "Graph JSON") -> "Graph":
        """Decode :meth:`to_json` text; ModelError naming ``where`` if it is not a Graph."""
        return load_json_object(
            text, "Graph", ModelError, where, "give a file written by Graph.save",
            lambda obj: decode(obj, _TYPES, {"op": Op}, keep_lists=("meta", "attrs", "params")))

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write(self.to_json())

    @staticmethod
    def load(path: str) -> "Graph":
        """Read a Graph saved by :meth:`save`; ModelError if the file holds none."""
        return Graph.from_json(read_json_file(path, ModelError, "give a file written by Graph.save"), str(path))

    def __str__(self) -> str:
        lines = [f"Graph {self.name}: input {self.input_name} {self.input_shape}"]
        for n in self.nodes:
            attrs = " ".join(f"{k}={v}" for k, v in n.attrs.items())
            params = " ".join(f"{k}{tuple(v.shape)}" for k, v in n.params.items())
            tail = " ".join(t for t in (params, attrs) if t)
            lines.append(f"  {n.name:<20} {n.op.value:<15} <- {','.join(n.inputs):<24} "
                         f"out {n.out_shape} {tail}".rstrip())
        lines.append(f"  output {self.output}")
        return "\n".join(lines)


_TYPES = {"Node": Node, "Graph": Graph}


def graphs_equal(a: Graph, b: Graph) -> bool:
    """Structural equality, arrays compared exactly (used by round-trip tests)."""
    return a.to_json() == b.to_json()


# --- shape inference ------------------------------------------------------------------------

def _check_shape(shape: tuple[int, ...], what: str) -> None:
    if not shape or any((not isinstance(s, int)) or s <= 0 for s in shape):
        raise ModelError(f"{what}: shape {shape} must be positive static sizes (no dynamic or zero dims)")


def _pair(n: Node, key: str, default: tuple[int, int] | None = None) -> tuple[int, int]:
    v = n.attrs.get(key, default)
    if v is None or len(v) != 2 or any(not isinstance(x, int) for x in v):
        raise ModelError(f"{n.describe()}: attribute {key!r} = {v!r} must be a pair of ints")
    return v


def _window_out(n: Node, x: tuple[int, ...], kernel: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of a sliding window of ``kernel`` with the node's stride, padding and dilation."""
    stride, padding = _pair(n, "stride", (1, 1)), _pair(n, "padding", (0, 0))
    dilation, pad_end = _pair(n, "dilation", (1, 1)), _pair(n, "pad_end", (0, 0))
    if min(stride) < 1 or min(padding) < 0 or min(dilation) < 1 or min(pad_end) < 0:
        raise ModelError(f"{n.describe()}: stride {stride} and dilation {dilation} must be >= 1 and "
                         f"padding {padding} and pad_end {pad_end} >= 0")
    if pad_end != (0, 0) and n.op is not Op.MAXPOOL:
        raise ModelError(f"{n.describe()}: pad_end {pad_end} is for max pooling only")
    out = tuple(window_out(x[1 + a], kernel[a], stride[a], padding[a], dilation[a], pad_end[a]) for a in range(2))
    if min(out) < 1:
        raise ModelError(f"{n.describe()}: {kernel[0]}x{kernel[1]} window (dilation {dilation}) with padding "
                         f"{padding} does not fit the {x[1]}x{x[2]} input; use a larger input or a smaller kernel")
    return out


def _depth_to_space_shape(n: Node, x: tuple[int, ...]) -> tuple[int, ...]:
    _need_rank(n, x, 3)
    r = int(n.attrs["block"])
    if r < 1 or x[0] % (r * r):
        raise ModelError(f"{n.describe()}: block {r} must be >= 1 and its square divide the {x[0]} input "
                         f"channels; use a block size r with channels = C * r * r")
    return (x[0] // (r * r), x[1] * r, x[2] * r)


def _need_rank(n: Node, x: tuple[int, ...], rank: int) -> None:
    if len(x) != rank:
        want = "(C, H, W) feature map" if rank == 3 else "flat (F,) vector"
        fix = ("give it an (N, C, H, W) input" if rank == 3 else "flatten the feature map before it")
        raise ModelError(f"{n.describe()}: input has shape {x} but the op needs a {want}; {fix}")


def infer_shape(n: Node, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Output shape of node ``n`` given its input shapes (without batch); ModelError on mismatch."""
    arity = 2 if n.op is Op.ADD else (len(ins) if n.op is Op.CONCAT else 1)
    if len(ins) != arity or (n.op is Op.CONCAT and len(ins) < 1):
        raise ModelError(f"{n.describe()}: takes {arity} input(s), got {len(ins)}")
    x = ins[0]
    if n.op is Op.CONV:
        return _conv_shape(n, x)
    if n.op is Op.LINEAR:
        return _linear_shape(n, x)
    if n.op is Op.BATCHNORM:
        for key in ("gamma", "beta", "mean", "var"):
            if key not in n.params or n.params[key].shape != (x[0],):
                raise ModelError(f"{n.describe()}: parameter {key!r} must have shape ({x[0]},)")
        return x
    if n.op in ELEMENTWISE_OPS:
        if n.op is Op.CLAMP and not n.attrs.get("min", 0) < n.attrs.get("max", 0):
            raise ModelError(f"{n.describe()}: clamp min {n.attrs.get('min')} must be below max {n.attrs.get('max')}")
        if n.op is Op.ACTIVATION:
            get_activation(n.attrs.get("fn", ""), n.describe())
        return x
    if n.op in POOL_OPS:
        _need_rank(n, x, 3)
        return (x[0], *_window_out(n, x, _pair(n, "kernel")))
    if n.op is Op.GLOBAL_AVGPOOL:
        _need_rank(n, x, 3)
        return (x[0], 1, 1)
    if n.op is Op.ADD:
        if ins[0] != ins[1]:
            raise ModelError(f"{n.describe()}: adds shapes {ins[0]} and {ins[1]}; they must be equal: "
                             f"make both branches produce the same shape")
        return x
    if n.op is Op.FLATTEN:
        return (int(np.prod(x)),)
    if n.op is Op.CONCAT:
        return _concat_shape(n, ins)
    if n.op is Op.UPSAMPLE:
        _need_rank(n, x, 3)
        sh, sw = _pair(n, "scale")
        if min(sh, sw) < 1:
            raise ModelError(f"{n.describe()}: scale {(sh, sw)} must be positive integers")
        if n.attrs.get("mode", "nearest") not in ("nearest", "bilinear"):
            raise ModelError(f"{n.describe()}: mode {n.attrs['mode']!r} must be 'nearest' or 'bilinear'")
        return (x[0], x[1] * sh, x[2] * sw)
    if n.op is Op.DEPTH_TO_SPACE:
        return _depth_to_space_shape(n, x)
    raise ModelError(f"{n.describe()}: unknown op")  # pragma: no cover - Op is closed


def _conv_shape(n: Node, x: tuple[int, ...]) -> tuple[int, ...]:
    _need_rank(n, x, 3)
    w = n.weight
    if w is None or w.ndim != 4:
        raise ModelError(f"{n.describe()}: needs a 4-D weight (Cout, Cin, kh, kw)")
    if w.shape[1] != x[0]:
        raise ModelError(f"{n.describe()}: weight expects {w.shape[1]} input channels but the input has {x[0]}; "
                         f"make the layer's input channels match the tensor it reads")
    kernel = _pair(n, "kernel")
    if kernel != tuple(w.shape[2:]):
        raise ModelError(f"{n.describe()}: kernel attribute {kernel} differs from weight shape {w.shape}")
    _check_bias(n, w.shape[0])
    return (w.shape[0], *_window_out(n, x, kernel))


def _linear_shape(n: Node, x: tuple[int, ...]) -> tuple[int, ...]:
    _need_rank(n, x, 1)
    w = n.weight
    if w is None or w.ndim != 2:
        raise ModelError(f"{n.describe()}: needs a 2-D weight (out, in)")
    if w.shape[1] != x[0]:
        raise ModelError(f"{n.describe()}: weight expects {w.shape[1]} inputs but the input has {x[0]}; "
                         f"size the layer for the tensor it reads (or use the model's input size)")
    _check_bias(n, w.shape[0])
    return (w.shape[0],)


def _check_bias(n: Node, c_out: int) -> None:
    b = n.bias
    if b is not None and b.shape != (c_out,):
        raise ModelError(f"{n.describe()}: bias shape {b.shape} must be ({c_out},)")


def _concat_shape(n: Node, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    if n.attrs.get("axis", 0) != 0:
        raise ModelError(f"{n.describe()}: only concatenation along channels is supported")
    rest = {s[1:] for s in ins}
    if len(rest) != 1 or any(len(s) != len(ins[0]) for s in ins):
        raise ModelError(f"{n.describe()}: inputs {ins} differ outside the channel axis")
    return (sum(s[0] for s in ins), *ins[0][1:])
