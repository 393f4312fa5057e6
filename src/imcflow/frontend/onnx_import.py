"""ONNX importer: an ``.onnx`` file (or ``onnx.ModelProto``) into a float Graph.

Supported ops: Conv (symmetric pads; any dilations: the same k*k*C_in rows, the line buffer
gathering taps d apart, receptive field (k-1)*d+1; group > 1 becomes a dense block-diagonal conv), Gemm, MatMul (+ Add of a constant bias),
BatchNormalization (inference), Relu, Clip, the element-wise activations of the float op ``activation``
(:mod:`imcflow.ir.activations`): LeakyRelu, Elu (alpha), HardSwish, HardSigmoid (PyTorch's alpha=1/6,
beta=0.5 only), Mish, Softplus, Tanh, Gelu (opset 20), a Sigmoid that is not the final op over the classes,
and the chains exporters write for SiLU (``Mul(x, Sigmoid(x))``), Mish (``Mul(x, Tanh(Softplus(x)))``) and
GELU below opset 20 (Div by sqrt(2), Erf, Add 1, Mul x, Mul 0.5; or the Tanh form) as one node each
(:data:`_ACTIVATION_PATTERNS`); PRelu, Selu, Celu, Softsign, ... are refused by name. MaxPool (undilated; ``ceil_mode=1``, ``auto_pad=SAME_UPPER`` and
pads larger at the end become -inf padding at the end, ``pad_end``), AveragePool, GlobalAveragePool, GlobalMaxPool,
ReduceMean, ReduceMax and ReduceSum (the average times the area) over the spatial axes, Add, Flatten, a final Softmax/LogSoftmax/Sigmoid (left
to the host: the graph ends at the logits and ``meta["host_output"]`` says so),
Reshape to (N, -1), Concat on channels, Resize with mode 'nearest' and constant scales [1, 1, sh, sw] or
sizes [N, C, sh*H, sw*W] of integer factors (nearest upsampling; only the coordinate_transformation_mode /
nearest_mode pairs that pick source pixel y // s for every output y, e.g. asymmetric with floor (PyTorch's
export) or half_pixel with round_prefer_floor; see :func:`resize_replicates`), Resize (opset 11+) with mode
'linear' and coordinate_transformation_mode 'half_pixel' or 'pytorch_half_pixel' of integer factors (bilinear
upsampling, PyTorch's align_corners=False export; equal for integer factors, whose outputs have more than one
pixel or the identity) and Upsample (opset 7-9, nearest),
DepthToSpace (mode CRD, PyTorch's pixel_shuffle export; DCR as a channel shuffle then CRD), ConvTranspose
whose square kernel_shape equals its strides with zero pads, output_padding and group 1 (a 1x1 Conv to
C_out*r*r channels then depth to space; any other ConvTranspose is refused by name), Identity, Dropout, and the constant arithmetic exporters emit
for shapes (Constant, Shape, Gather, Unsqueeze, Squeeze, Concat, Cast, Slice, Transpose,
ConstantOfShape on constants); Squeeze of an (N, C, 1, 1) map to (N, C) is a flatten. Add, Sub,
Mul, Div of a map and a per-channel constant become a batch norm (``x * scale + shift``); Slice of a
map (channel selection, subsampling ``::s`` of H and W), Split of its channels and Pad with zeros (channels, or H and W
symmetrically) become 1x1 layers with 0/1 weights (:mod:`imcflow.frontend.normalize`).
A rank-3 input (N, C, L) makes a 1-D network, imported as the 2-D network of height 1
(:func:`imcflow.frontend.normalize.map_of_1d`): Conv with a 3-D weight (kernel (1, k)), 1-D
MaxPool/AveragePool, GlobalAveragePool/GlobalMaxPool, ReduceMean/ReduceMax over the last axis, and
the ops above on (N, C, L) tensors; torch.export's Unsqueeze to (N, C, 1, L) and Squeeze back around
a 2-D op are taken as the map itself.
Channels-last (Keras/tf2onnx) files: a Transpose of the NHWC input to NCHW is the input layout,
and a Transpose to NHWC before the flatten of a dense layer permutes that layer's weight columns.

Quantised QCDQ models: QuantizeLinear -> [Clip] -> DequantizeLinear on a constant weight is folded
into the float weight it represents (``w_bits`` attr from the integer type or the clip range); the
same chain on an activation is dropped and its scale recorded as ``act_scale`` (and ``act_bits``)
on the node producing that activation (``meta['input_scale']`` for the graph input).

Quantised QONNX models (brevitas export): a ``Quant`` node (domain ``qonnx.custom_op.general``,
``onnx.brevitas`` or ``finn.custom_op.general``) with constant scale, zero point and bit width is
handled the same way: on a constant weight it is folded into the dequantized float weight
(``w_bits`` = its bit width), on an activation it is dropped and recorded as ``act_scale`` and
``act_bits``. ``BipolarQuant`` (1-b sign quantisation) is rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from imcflow.errors import ModelError
from imcflow.frontend.normalize import (ARITH, BILINEAR_CORNERS_FIX, CONV_TRANSPOSE_FIX, DEPTH_TO_SPACE_MODES,
                                        NON_CHIP_ACTIVATIONS, UPSAMPLE_FIX, activation_fix, affine_params, channel_constant,
                                        channel_selection, channel_shuffle, conv_transpose_as_conv,
                                        conv_transpose_problem, dense_grouped_weight, host_output_note,
                                        input_layout_1d, map_of_1d, pad_layer, per_axis_of_1d, slice_layer,
                                        split_sizes, squeeze_shape, upsample_factors, view_1d)
from imcflow.ir.graph import Graph, Node, Op, infer_shape
from imcflow.ir.qgraph import ceil_pad_end, receptive_field


def from_onnx(model: str | Path | onnx.ModelProto) -> Graph:
    """Import an ONNX model (path or ModelProto); raises ModelError on anything unsupported."""
    proto, name = _load(model)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # onnx raises several internal types
        raise ModelError(f"ONNX shape inference failed for {name!r}: {_first_line(exc)}; "
                         f"check the model with onnx.checker.check_model") from None
    graph = _Importer(proto.graph, name).run()
    graph.verify()
    return graph


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _load(model: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "onnx"
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{str(path)!r}: no such ONNX file; check the path")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"{str(path)!r} is not a readable ONNX model ({_first_line(exc)}); "
                         f"the file may be truncated or of another format: re-export it") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{str(path)!r} holds no ONNX graph (empty or not an ONNX file); re-export the model")
    return proto, path.stem


@dataclass(frozen=True)
class _Tensor:
    """A value computed from the graph input: the Graph tensor ``name``."""

    name: str


@dataclass(frozen=True)
class _Squeezed:
    """Graph tensor ``source`` (an (N, C, 1, 1) map) part-way squeezed: its ONNX shape is ``shape``."""

    source: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Const:
    """A constant; ``bits`` is the integer width it was quantised to, when known."""

    value: np.ndarray
    bits: int = 0


@dataclass(frozen=True)
class _Transposed:
    """Map ``source`` transposed to NHWC (perm 0, 2, 3, 1), awaiting the flatten of a Keras-style
    (tf2onnx) classifier."""

    source: str


@dataclass(frozen=True)
class _Grouped:
    """Map ``source`` viewed as (N, groups, C / groups, H, W), the first step of a channel shuffle;
    ``swapped`` once the two group axes are transposed (perm 0, 2, 1, 3, 4)."""

    source: str
    groups: int
    swapped: bool = False


@dataclass(frozen=True)
class _Permuted:
    """The flatten of a :class:`_Transposed` map: flat tensor ``name`` in NCHW order, and for each
    NHWC-order position its NCHW index (``order``), which the fully connected layer after it absorbs."""

    name: str
    order: np.ndarray


@dataclass(frozen=True)
class _QAct:
    """A quantised activation (output of QuantizeLinear on a tensor), awaiting DequantizeLinear."""

    source: str
    scale: float
    zero_point: float
    bits: int


_INT_BITS = {np.dtype(np.int8): 8, np.dtype(np.uint8): 8, np.dtype(np.int16): 16, np.dtype(np.uint16): 16,
             np.dtype(np.int32): 32}


def _range_bits(lo: float, hi: float) -> int:
    return max(1, math.ceil(math.log2(hi - lo + 1)))


class _Importer:
    def __init__(self, g: onnx.GraphProto, name: str) -> None:
        self.g, self.name = g, name
        self.values: dict[str, Any] = {t.name: _Const(numpy_helper.to_array(t)) for t in g.initializer}
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.meta: dict[str, Any] = {"source": "onnx"}
        self.onnx_shapes = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
        self.host_output: tuple[str, str, str] | None = None  # (node name, output, op) of a final Softmax
        self.batch: int | None = None
        self.input_name = ""
        self.one_d = False  # a 1-D network: ONNX's (N, C, L) tensors are the graph's (N, C, 1, L) maps
        self.users: dict[str, list[onnx.NodeProto]] = {}  # tensor name -> the nodes reading it
        for node in g.node:
            for i in dict.fromkeys(node.input):
                self.users.setdefault(i, []).append(node)
        self.graph_outputs = {o.name for o in g.output}
        self.constant_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
        self.fused: set[int] = set()  # id() of nodes an activation pattern (:func:`_fused_activation`) took

    # --- driver ---------------------------------------------------------------------------
    def run(self) -> Graph:
        input_name, input_shape = self.graph_input()
        for node in self.g.node:
            if id(node) in self.fused:
                continue
            table = _QONNX_HANDLERS if node.domain in _QONNX_DOMAINS else _HANDLERS
            handler = table.get(node.op_type)
            if node.op_type in NON_CHIP_ACTIVATIONS and node.domain in ("", "ai.onnx"):
                raise ModelError(f"node {_nname(node)!r} ({node.op_type}): {activation_fix(node.op_type)}")
            if handler is None or node.domain not in ("", "ai.onnx", *_QONNX_DOMAINS):
                raise ModelError(f"node {_nname(node)!r} ({node.op_type}): unsupported op; supported ops are "
                                 f"{', '.join(sorted(_HANDLERS))} (domain '') and Quant (domains "
                                 f"{', '.join(_QONNX_DOMAINS)}): replace it or export without it")
            if self.host_output and self.host_output[1] in node.input:
                op = self.host_output[2]
                raise ModelError(f"node {self.host_output[0]!r} ({op}) feeds node {_nname(node)!r}: the chip has no "
                                 f"{op}, only a final one is taken (it runs on the host); remove it from the middle "
                                 f"of the network")
            if not _fused_activation(self, node):
                handler(self, node)
        if len(self.g.output) != 1:
            raise ModelError(f"ONNX model {self.name!r} has {len(self.g.output)} outputs; give a model with exactly one")
        out = self.values.get(self.g.output[0].name)
        if not self.nodes:
            raise ModelError(f"ONNX model {self.name!r} has no layers (empty graph); give a network with at least one layer")
        if not isinstance(out, _Tensor) or out.name == input_name:
            raise ModelError(f"ONNX output {self.g.output[0].name!r} is not computed by any layer from the input; "
                             f"export the model with its layers")
        return Graph(self.name, input_name, self.shapes[input_name], tuple(self.nodes), out.name, meta=self.meta)

    def graph_input(self) -> tuple[str, tuple[int, ...]]:
        inputs = [i for i in self.g.input if i.name not in self.values]
        if len(inputs) != 1:
            raise ModelError(f"ONNX model {self.name!r} has {len(inputs)} graph inputs "
                             f"({', '.join(i.name for i in inputs)}); give a model with exactly one input")
        vi = inputs[0]
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(shape) < 2 or any(s is None or s <= 0 for s in shape[1:]):
            shown = tuple(d.dim_param or d.dim_value or "?" for d in dims)
            raise ModelError(f"ONNX input {vi.name!r} has shape {shown}: only the batch dimension may be dynamic; "
                             f"export with a fixed (N, C, H, W) input shape")
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"ONNX input {vi.name!r} is not float32; export the model with a float input")
        self.values[vi.name] = _Tensor(vi.name)
        self.shapes[vi.name] = tuple(shape[1:])
        if len(shape) == 3:
            self.one_d = True
            self.shapes[vi.name] = map_of_1d(tuple(shape[1:]))
            self.meta["input_layout"] = input_layout_1d(tuple(shape[1:]))
        self.input_name = vi.name
        self.batch = shape[0]  # a fixed export batch (torch.onnx.export's default) or None
        return vi.name, self.shapes[vi.name]

    # --- helpers --------------------------------------------------------------------------
    def user_shape(self, node: onnx.NodeProto, i: int = 0) -> tuple[int, ...]:
        """The shape (batch excluded) ONNX gives input ``i``, a tensor: a 1-D network's (C, 1, L) maps
        are (C, L) where ONNX declares rank 3 (or declares nothing)."""
        shape = self.shapes[self.tensor(node, i)]
        vi = self.onnx_shapes.get(node.input[i])
        rank = len(vi.type.tensor_type.shape.dim) if vi is not None and vi.type.tensor_type.HasField("shape") \
            else 3 if self.one_d else 4
        return view_1d(shape) if len(shape) == 3 and rank == 3 else shape

    def tensor(self, node: onnx.NodeProto, i: int) -> str:
        v = self.values.get(node.input[i]) if i < len(node.input) else None
        if isinstance(v, _Squeezed):
            raise _fail(node, f"input {i} is an (N, C, 1, 1) map squeezed only to {(1, *v.shape)}",
                        "squeeze it to (N, C), e.g. x.squeeze(-1).squeeze(-1), or flatten it")
        if isinstance(v, (_Transposed, _Permuted)):
            raise _fail(node, f"input {i} is a map transposed to NHWC{' and flattened' if isinstance(v, _Permuted) else ''}",
                        "a transpose to NHWC is taken only before a flatten and a fully connected layer (a Keras-"
                        "style classifier); keep activations NCHW elsewhere")
        if not isinstance(v, _Tensor):
            raise _fail(node, f"input {i} must be a tensor computed from the graph input (got "
                              f"{'a constant' if isinstance(v, _Const) else 'nothing usable'})",
                        "compute it from the graph input")
        return v.name

    def const(self, node: onnx.NodeProto, i: int, required: bool = True) -> _Const | None:
        if i >= len(node.input) or not node.input[i]:
            if required:
                raise _fail(node, f"input {i} is missing", "give the constant")
            return None
        v = self.values.get(node.input[i])
        if not isinstance(v, _Const):
            raise _fail(node, f"input {i} ({node.input[i]!r}) must be a constant (initializer)",
                        "weights and shapes must be stored in the model, not computed at run time")
        return v

    def is_const(self, node: onnx.NodeProto) -> bool:
        return all(isinstance(self.values.get(i), _Const) for i in node.input if i)

    def add(self, node: onnx.NodeProto, op: Op, inputs: list[str], attrs: dict | None = None,
            params: dict | None = None, check_shape: bool = True) -> str:
        """Append a Graph node for ``node``'s output; ``check_shape=False`` for an inner node of
        a lowering whose last node carries ONNX's declared output shape."""
        name = _nname(node)
        base, k = name, 1
        while name in self.shapes:
            name, k = f"{base}_{k}", k + 1
        n = Node(name, op, tuple(inputs), attrs or {}, params or {}, ())
        shape = infer_shape(n, [self.shapes[i] for i in inputs])
        if check_shape:
            self.check_onnx_shape(node, shape)
        self.nodes.append(Node(name, op, n.inputs, n.attrs, n.params, shape))
        self.shapes[name] = shape
        self.values[node.output[0]] = _Tensor(name)
        return name

    def check_onnx_shape(self, node: onnx.NodeProto, shape: tuple[int, ...]) -> None:
        vi = self.onnx_shapes.get(node.output[0])
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            return
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if len(dims) == 3 and len(shape) == 3 and shape[1] == 1:  # a 1-D network's (N, C, L) tensor
            shape = view_1d(shape)
        if dims and all(d is not None for d in dims[1:]) and tuple(dims[1:]) != shape:
            raise _fail(node, f"ONNX declares output shape {tuple(dims[1:])} but the op computes {shape}",
                        "re-export the model so that declared shapes match")

    def alias(self, node: onnx.NodeProto, i: int = 0) -> None:
        self.values[node.output[0]] = self.values[node.input[i]]

    def annotate(self, tensor: str, **attrs: Any) -> None:
        """Add attrs to the node producing ``tensor`` (or graph meta for the input)."""
        for k, n in enumerate(self.nodes):
            if n.name == tensor:
                self.nodes[k] = Node(n.name, n.op, n.inputs, {**n.attrs, **attrs}, n.params, n.out_shape)
                return
        self.meta.update({k.replace("act_", "input_"): v for k, v in attrs.items()})


def _nname(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _fail(node: onnx.NodeProto, why: str, fix: str) -> ModelError:
    return ModelError(f"node {_nname(node)!r} ({node.op_type}): {why}; {fix}")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes by name, string attributes decoded to ``str``."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _pair_attr(node: onnx.NodeProto, a: dict, key: str, default: int) -> tuple[int, int]:
    v = a.get(key, [default, default])
    if len(v) != 2:
        raise _fail(node, f"{key}={list(v)} is not 1-D or 2-D", "use 1-D (N, C, L) or 2-D (N, C, H, W) operations")
    return (int(v[0]), int(v[1]))


def _window_of_1d(a: dict) -> dict:
    """A 1-D window's attributes (kernel_shape, strides, dilations, pads) as its height-1 2-D window's."""
    out = {k: [1, *v] if k in ("kernel_shape", "strides", "dilations") and len(v) == 1 else v for k, v in a.items()}
    if len(a.get("pads", [])) == 2:
        out["pads"] = [0, a["pads"][0], 0, a["pads"][1]]
    return out


def _window(node: onnx.NodeProto, a: dict, kernel: tuple[int, int], dilate: bool = False,
            size: tuple[int, int] | None = None, max_pool: bool = False) -> dict[str, Any]:
    """Window attributes (kernel, stride, padding and, where ``dilate`` allows it, a dilation).

    ``size`` is a pool's input (H, W). A MaxPool's extra end padding (``ceil_mode=1``,
    ``auto_pad=SAME_UPPER``, or explicit pads larger at the end) becomes ``pad_end``."""
    auto_pad = a.get("auto_pad", "NOTSET")
    stride = _pair_attr(node, a, "strides", 1)
    dilation = _pair_attr(node, a, "dilations", 1)
    if dilation != (1, 1) and (not dilate or min(dilation) < 1):
        raise _fail(node, f"dilations {list(a['dilations'])}",
                    "use dilation 1 (only Conv takes dilations >= 1; pooling takes none)")
    span = receptive_field(kernel, dilation)
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    if max_pool and auto_pad == "SAME_UPPER":  # total padding to ceil(size / stride) windows, the odd one at the end
        total = [max(0, (-(-size[i] // stride[i]) - 1) * stride[i] + kernel[i] - size[i]) for i in range(2)]
        pads, auto_pad = [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2], "NOTSET"
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") and stride == (1, 1) and all(e % 2 for e in span):
        pads = [span[0] // 2, span[1] // 2] * 2  # 'same' with an odd (dilated) window at stride 1 is symmetric
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad != "NOTSET":
        raise _fail(node, f"auto_pad={auto_pad} with stride {stride} and kernel {kernel} pads asymmetrically",
                    "export with explicit symmetric pads")
    pad_end = (0, 0)
    if max_pool and len(pads) == 4 and pads[2] >= pads[0] and pads[3] >= pads[1]:
        pads, pad_end = pads[:2] * 2, (pads[2] - pads[0], pads[3] - pads[1])  # a max pool pads the end with -inf
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise _fail(node, f"pads {pads} are not symmetric 2-D",
                    "use equal padding on both sides" + (" (a MaxPool may pad more at the end)" if max_pool else ""))
    if a.get("ceil_mode", 0) and size is not None:
        extra = tuple(ceil_pad_end(size[i] + pad_end[i], kernel[i], stride[i], pads[i]) for i in range(2))
        if extra != (0, 0) and not max_pool:
            raise _fail(node, "ceil_mode=1 adds windows to an average pool (their divisor is not the kernel area)",
                        "use ceil_mode=0 (pad the input instead); a MaxPool takes ceil_mode")
        pad_end = (pad_end[0] + extra[0], pad_end[1] + extra[1])
    elif a.get("ceil_mode", 0):
        raise _fail(node, "ceil_mode=1 on a tensor that is not an (N, C, H, W) map", "use ceil_mode=0")
    attrs = {"kernel": kernel, "stride": stride, "padding": (pads[0], pads[1])}
    attrs |= {"pad_end": pad_end} if pad_end != (0, 0) else {}
    dilation = tuple(d if k > 1 else 1 for k, d in zip(kernel, dilation))  # one tap: no spacing
    return attrs | ({"dilation": dilation} if dilation != (1, 1) else {})


# --- layers -----------------------------------------------------------------------------------

def _conv(imp: _Importer, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    x = imp.tensor(node, 0)
    w = imp.const(node, 1)
    weight = w.value
    if weight.ndim == 3:  # a 1-D conv: the height-1 2-D conv
        weight, a = weight[:, :, None, :], _window_of_1d(a)
    if weight.ndim != 4:
        raise _fail(node, f"weight of shape {w.value.shape} is not a 1-D or 2-D convolution (Cout, Cin, [kh,] kw)",
                    "use 1-D or 2-D convolutions only")
    attrs = _window(node, a, tuple(int(k) for k in weight.shape[2:]), dilate=True)
    groups = int(a.get("group", 1))
    params = {"weight": weight}
    if groups != 1:  # no grouped mode on the chip: the equivalent dense, block-diagonal weight
        params["weight"] = dense_grouped_weight(weight, groups, f"node {node.name!r} (Conv)")
        attrs["groups"] = groups
    b = imp.const(node, 2, required=False)
    if b is not None:
        params["bias"] = b.value
    if w.bits:
        attrs["w_bits"] = w.bits
    imp.add(node, Op.CONV, [x], attrs, params)


def _conv_transpose(imp: _Importer, node: onnx.NodeProto) -> None:
    """ConvTranspose with kernel_shape == strides (U-Net's up-convolution): a 1x1 conv to C_out*r*r
    channels then depth to space by r (:func:`imcflow.frontend.normalize.conv_transpose_as_conv`)."""
    a = _attrs(node)
    x = imp.tensor(node, 0)
    w = imp.const(node, 1)
    if w.value.ndim != 4:
        raise _fail(node, f"weight of shape {w.value.shape} is not a 2-D transposed convolution (C_in, C_out, kh, kw)",
                    CONV_TRANSPOSE_FIX)
    kernel = tuple(int(k) for k in a.get("kernel_shape", w.value.shape[2:]))
    problem = conv_transpose_problem(kernel, a.get("strides", (1, 1)), a.get("pads", (0, 0, 0, 0)),
                                     a.get("output_padding", (0, 0)), a.get("dilations", (1, 1)),
                                     int(a.get("group", 1)))
    if problem is None and a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        problem = f"auto_pad={a['auto_pad']}"   # SAME_*: total padding kernel - stride = 0 here
    if problem is None and "output_shape" in a:
        want = [d * kernel[0] for d in imp.user_shape(node)[1:]]
        if [int(d) for d in a["output_shape"]][-2:] != want:
            problem = f"output_shape {list(a['output_shape'])} (not the input map times the stride, {want})"
    if problem:
        raise _fail(node, problem, CONV_TRANSPOSE_FIX)
    b = imp.const(node, 2, required=False)
    attrs, params, r = conv_transpose_as_conv(w.value, None if b is None else b.value)
    if w.bits:
        attrs["w_bits"] = w.bits
    conv = imp.add(node, Op.CONV, [x], attrs, params, check_shape=False)
    imp.add(node, Op.DEPTH_TO_SPACE, [conv], {"block": r})


def _depth_to_space(imp: _Importer, node: onnx.NodeProto) -> None:
    """DepthToSpace: CRD (PyTorch's pixel_shuffle export) directly; DCR as a channel shuffle with r*r
    groups (a 0/1 1x1 layer that normalisation fuses into the conv before it) then CRD."""
    a = _attrs(node)
    x = imp.tensor(node, 0)
    shape, r, mode = imp.user_shape(node), int(a.get("blocksize", 0)), a.get("mode", "DCR")
    if mode not in DEPTH_TO_SPACE_MODES:
        raise _fail(node, f"mode {mode!r}", "use mode 'CRD' (PyTorch's PixelShuffle) or 'DCR'")
    if len(shape) != 3 or r < 1 or shape[0] % (r * r):
        raise _fail(node, f"blocksize {r} on a tensor of shape {shape} (batch excluded)",
                    "rearrange (N, C*r*r, H, W) maps with blocksize r >= 1")
    if mode == "DCR" and r > 1:
        layer = channel_shuffle(shape, r * r, f"node {_nname(node)!r} (DepthToSpace)")
        if layer is not None:
            x = imp.add(node, Op.CONV, [x], *layer, check_shape=False)
    imp.add(node, Op.DEPTH_TO_SPACE, [x], {"block": r})


def _gemm(imp: _Importer, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    x, order = _linear_input(imp, node)
    w = imp.const(node, 1)
    if a.get("transA", 0):
        raise _fail(node, "transA=1", "export with the activation as the first, untransposed operand")
    weight = _nchw_columns(w.value if a.get("transB", 0) else w.value.T, order)
    params = {"weight": weight * float(a.get("alpha", 1.0))}
    c = imp.const(node, 2, required=False)
    if c is not None:
        params["bias"] = np.broadcast_to(c.value * float(a.get("beta", 1.0)), (weight.shape[0],)).copy()
    imp.add(node, Op.LINEAR, [x], {"w_bits": w.bits} if w.bits else {}, params)


def _matmul(imp: _Importer, node: onnx.NodeProto) -> None:
    x, order = _linear_input(imp, node)
    w = imp.const(node, 1)
    if w.value.ndim != 2:
        raise _fail(node, f"weight of shape {w.value.shape} is not a matrix", "use a 2-D weight (in, out)")
    imp.add(node, Op.LINEAR, [x], {"w_bits": w.bits} if w.bits else {}, {"weight": _nchw_columns(w.value.T, order)})


def _linear_input(imp: _Importer, node: onnx.NodeProto) -> tuple[str, np.ndarray | None]:
    """A fully connected layer's input, and the NHWC order of its features when it is a Keras-style
    flatten (:class:`_Permuted`)."""
    v = imp.values.get(node.input[0])
    return (v.name, v.order) if isinstance(v, _Permuted) else (imp.tensor(node, 0), None)


def _nchw_columns(weight: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """``weight`` (out, in) reading NHWC-ordered features, as the weight reading them in NCHW order."""
    if order is None:
        return weight
    out = np.empty_like(weight)
    out[:, order] = weight
    return out


def _transpose(imp: _Importer, node: onnx.NodeProto) -> None:
    """Transpose: of a constant, evaluated; NHWC -> NCHW of the graph input (a channels-last model):
    the input taken as NCHW; NCHW -> NHWC of a map before a flatten (a Keras-style classifier): kept
    pending for the fully connected layer (:class:`_Transposed`). Any other is refused."""
    if imp.is_const(node):
        _const_transpose(imp, node)
        return
    grouped = imp.values.get(node.input[0])
    if isinstance(grouped, _Grouped):
        perm = [int(p) for p in _attrs(node).get("perm", [])]
        if perm != [0, 2, 1, 3, 4] or grouped.swapped:
            raise _fail(node, f"transpose (perm {perm}) of a channel grouping",
                        "only a channel shuffle's swap of the group axes (perm 0, 2, 1, 3, 4) maps to the chip")
        imp.values[node.output[0]] = _Grouped(grouped.source, grouped.groups, swapped=True)
        return
    x = imp.tensor(node, 0)
    perm = list(_attrs(node).get("perm", range(len(imp.shapes[x]), -1, -1)))
    readers = sum(node.input[0] in n.input for n in imp.g.node)
    if x == imp.input_name and perm == [0, 3, 1, 2] and readers == 1 and len(imp.shapes[x]) == 3:
        h, w, c = imp.shapes[x]
        imp.shapes[x] = (c, h, w)
        imp.meta["input_layout"] = (f"the ONNX input is NHWC {(1, h, w, c)}; its transpose {_nname(node)!r} to NCHW "
                                    f"is taken as the layout the chip's input takes: feed NCHW images")
        imp.alias(node)
    elif perm == [0, 2, 3, 1] and len(imp.shapes[x]) == 3:
        imp.values[node.output[0]] = _Transposed(x)
    else:
        raise _fail(node, f"transposes an activation (perm {perm})", "only a leading NHWC-to-NCHW transpose of "
                    "the input, and an NCHW-to-NHWC one before a flatten and a fully connected layer (Keras-style), "
                    "map to the chip")


def _flatten_transposed(imp: _Importer, node: onnx.NodeProto, v: _Transposed) -> None:
    c, h, w = imp.shapes[v.source]
    order = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
    flat = imp.add(node, Op.FLATTEN, [v.source])
    imp.values[node.output[0]] = _Permuted(flat, order)


def _add(imp: _Importer, node: onnx.NodeProto) -> None:
    vals = [imp.values.get(i) for i in node.input]
    if all(isinstance(v, _Const) for v in vals):
        imp.values[node.output[0]] = _Const(vals[0].value + vals[1].value)
        return
    if all(isinstance(v, _Tensor) for v in vals):
        imp.add(node, Op.ADD, [vals[0].name, vals[1].name])
        return
    t = next(v for v in vals if isinstance(v, _Tensor))
    c = next((v for v in vals if isinstance(v, _Const)), None)
    prod = imp.nodes[-1] if imp.nodes else None
    if (c is not None and prod is not None and prod.name == t.name and prod.op is Op.LINEAR
            and prod.bias is None and c.value.size == prod.out_shape[0]):
        # MatMul + Add: the constant is the linear layer's bias.
        imp.nodes[-1] = Node(prod.name, prod.op, prod.inputs, prod.attrs,
                             {**prod.params, "bias": c.value.reshape(-1)}, prod.out_shape)
        imp.values[node.output[0]] = t
        return
    _affine(imp, node)


def _arith(imp: _Importer, node: onnx.NodeProto) -> None:
    """Sub, Mul, Div: of constants, folded; of an activation and a constant, a per-channel affine."""
    vals = [imp.values.get(i) for i in node.input]
    if all(isinstance(v, _Const) for v in vals):
        imp.values[node.output[0]] = _Const(ARITH[node.op_type.lower()](vals[0].value, vals[1].value))
    elif all(isinstance(v, _Tensor) for v in vals):
        raise _fail(node, f"{node.op_type} of two activations (an element-wise product or quotient of tensors)",
                    "the chip multiplies activations only by weights; use a layer, or an Add for residual connections "
                    "(Mul(x, Sigmoid(x)) of one tensor x, a SiLU, is taken when the Sigmoid has no other reader; "
                    "a GELU exported below opset 20 is taken as its exact Erf or Tanh pattern)")
    else:
        _affine(imp, node)


def _affine(imp: _Importer, node: onnx.NodeProto) -> None:
    """``x op c`` or ``c op x`` for a constant ``c`` that is a scalar or one value per channel (input
    normalisation, ``x / 255``, a scale): a batch norm computing ``x * scale + shift``, which
    normalisation folds into a neighbouring layer or lowers to a diagonal one."""
    i = 0 if isinstance(imp.values.get(node.input[0]), _Tensor) else 1
    x = imp.tensor(node, i)
    where = f"node {_nname(node)!r} ({node.op_type})"
    c = channel_constant(imp.const(node, 1 - i).value, imp.user_shape(node, i), where)
    params = affine_params(node.op_type.lower(), c, constant_first=i == 1, where=where)
    imp.add(node, Op.BATCHNORM, [x], {"eps": 0.0, "source_op": node.op_type}, params)


def _batchnorm(imp: _Importer, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if a.get("training_mode", 0) or len(node.output) > 1 and any(node.output[1:]):
        raise _fail(node, "training-mode batch norm", "export the model in eval() mode")
    x = imp.tensor(node, 0)
    gamma, beta, mean, var = (imp.const(node, i).value for i in range(1, 5))
    imp.add(node, Op.BATCHNORM, [x], {"eps": float(a.get("epsilon", 1e-5))},
            {"gamma": gamma, "beta": beta, "mean": mean, "var": var})


def _clip(imp: _Importer, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    lo = imp.const(node, 1, required=False)
    hi = imp.const(node, 2, required=False)
    lo = float(lo.value) if lo is not None else float(a.get("min", -np.inf))
    hi = float(hi.value) if hi is not None else float(a.get("max", np.inf))
    v = imp.values.get(node.input[0])
    if isinstance(v, _Const):  # QCDQ weight: Clip on the integer weight sets its bit width
        imp.values[node.output[0]] = _Const(np.clip(v.value, lo, hi).astype(v.value.dtype), _range_bits(lo, hi))
    elif isinstance(v, _QAct):
        imp.values[node.output[0]] = _QAct(v.source, v.scale, v.zero_point, _range_bits(lo, hi))
    else:
        imp.add(node, Op.CLAMP, [imp.tensor(node, 0)], {"min": lo, "max": hi})


def _pool(op: Op) -> Callable[[_Importer, onnx.NodeProto], None]:
    def handler(imp: _Importer, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        if len(node.output) > 1 and node.output[1]:
            raise _fail(node, "pooling indices output is used", "do not use the indices")
        if len(a.get("kernel_shape", [])) == 1:  # a 1-D pool: the height-1 2-D pool
            a = _window_of_1d(a)
        kernel = _pair_attr(node, a, "kernel_shape", 1)
        x = imp.tensor(node, 0)
        size = tuple(imp.shapes[x][1:]) if len(imp.shapes[x]) == 3 else None
        attrs = _window(node, a, kernel, size=size, max_pool=op is Op.MAXPOOL)
        if op is Op.AVGPOOL and attrs["padding"] != (0, 0) and not a.get("count_include_pad", 0):
            raise _fail(node, "padded average pool that excludes padding from the divisor",
                        "use count_include_pad=1 (PyTorch's default) or no padding")
        imp.add(node, op, [x], attrs)
    return handler


_RESIZE_COORD: dict[str, Callable[[int, int, int], Fraction]] = {
    "half_pixel": lambda i, s, n: (i + Fraction(1, 2)) / s - Fraction(1, 2),
    "pytorch_half_pixel": lambda i, s, n: (i + Fraction(1, 2)) / s - Fraction(1, 2) if n * s > 1 else Fraction(0),
    "half_pixel_symmetric": lambda i, s, n: (i + Fraction(1, 2)) / s - Fraction(1, 2),  # integer s: no offset
    "asymmetric": lambda i, s, n: Fraction(i, s),
    "tf_half_pixel_for_nn": lambda i, s, n: (i + Fraction(1, 2)) / s,
    "align_corners": lambda i, s, n: Fraction(i * (n - 1), n * s - 1) if n * s > 1 else Fraction(0),
}
"""Resize's source coordinate of output index i for an integer factor s on an axis of n pixels (ONNX spec)."""


def _nearest_index(x: Fraction, nearest_mode: str) -> int:
    low = math.floor(x)
    if nearest_mode in ("floor", "ceil"):
        return low if nearest_mode == "floor" or x == low else low + 1
    half = x - low == Fraction(1, 2)
    return low + (1 if (half and nearest_mode == "round_prefer_ceil") or x - low > Fraction(1, 2) else 0)


def resize_replicates(ctm: str, nearest_mode: str, factor: int, n: int) -> bool:
    """Whether ONNX Resize (mode nearest) with this coordinate_transformation_mode and nearest_mode
    picks exactly source pixel ``i // factor`` for every output ``i`` of an ``n``-pixel axis
    (evaluated in exact rationals; tests/test_upsample.py checks it against onnxruntime)."""
    coord = _RESIZE_COORD.get(ctm)
    if coord is None or nearest_mode not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        return False
    return all(min(max(_nearest_index(coord(i, factor, n), nearest_mode), 0), n - 1) == i // factor
               for i in range(n * factor))


def _resize(imp: _Importer, node: onnx.NodeProto) -> None:
    """Resize (opset 10+) and Upsample (opset 7-9) with mode 'nearest', or Resize (opset 11+) with
    mode 'linear' and a half-pixel coordinate mode (bilinear), and constant integer factors."""
    a = _attrs(node)
    x = imp.tensor(node, 0)
    shape = imp.user_shape(node)
    if len(shape) != 3:
        raise _fail(node, f"resizing a tensor of shape {shape} (batch excluded)", "upsample (N, C, H, W) maps only")
    mode = a.get("mode", "nearest")
    if mode == "linear":
        _check_linear(node, a)
    elif mode != "nearest":
        raise _fail(node, f"mode {a['mode']!r}", UPSAMPLE_FIX)
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch" or a.get("antialias", 0):
        raise _fail(node, "keep_aspect_ratio_policy or antialias set", "use the defaults (stretch, antialias=0)")
    scales, sizes = _resize_inputs(imp, node, a)
    if scales is not None and len(scales) and (len(scales) != 4 or tuple(scales[:2]) != (1, 1)):
        raise _fail(node, f"scales {[float(v) for v in scales]}", "scale only H and W: scales [1, 1, sh, sw]")
    if scales is None or not len(scales):
        if sizes is None or len(sizes) != 4 or int(sizes[1]) != shape[0] or int(sizes[0]) not in (1, imp.batch or 1):
            raise _fail(node, f"sizes {None if sizes is None else [int(v) for v in sizes]}",
                        "give constant scales [1, 1, sh, sw] or sizes [N, C, sh*H, sw*W]")
    factors, problem = upsample_factors(shape[1:], None if scales is None or not len(scales) else scales[2:],
                                        None if sizes is None else sizes[2:])
    if problem:
        raise _fail(node, problem, UPSAMPLE_FIX)
    modes = (a.get("coordinate_transformation_mode", "half_pixel"), a.get("nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and node.op_type == "Resize" and len(node.input) > 2 and not all(
            resize_replicates(*modes, f, n) for f, n in zip(factors, shape[1:])):
        raise _fail(node, f"coordinate_transformation_mode {modes[0]!r} with nearest_mode {modes[1]!r} does not "
                    f"replicate pixels exactly for factors {factors} on the {shape[1]}x{shape[2]} map",
                    "export with PyTorch's defaults (asymmetric, floor) or use half_pixel with round_prefer_floor")
    imp.add(node, Op.UPSAMPLE, [x], {"scale": factors, **({"mode": "bilinear"} if mode == "linear" else {})})


LINEAR_CTMS = ("half_pixel", "pytorch_half_pixel")
"""Resize 'linear' coordinate modes imported as bilinear ``align_corners=False`` (for integer factors
both give source position ``(y + 1/2) / s - 1/2``: pytorch_half_pixel differs only for a 1-pixel output)."""


def _check_linear(node: onnx.NodeProto, a: dict) -> None:
    """Refuse, by name, a 'linear' Resize/Upsample that is not PyTorch's bilinear ``align_corners=False``."""
    if node.op_type == "Upsample" or len(node.input) == 2:   # Upsample-7/9, Resize-10: asymmetric coordinates
        raise _fail(node, f"mode 'linear' of {node.op_type} opset <= 10 (asymmetric coordinates)",
                    "export at opset 11 or later (Resize with coordinate_transformation_mode 'half_pixel'); "
                    + UPSAMPLE_FIX)
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if ctm == "align_corners":
        raise _fail(node, "mode 'linear' with coordinate_transformation_mode 'align_corners'", BILINEAR_CORNERS_FIX)
    if ctm not in LINEAR_CTMS:
        raise _fail(node, f"mode 'linear' with coordinate_transformation_mode {ctm!r}", UPSAMPLE_FIX)


def _resize_inputs(imp: _Importer, node: onnx.NodeProto, a: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The constant (scales, sizes) of a Resize/Upsample (full rank 4; ``axes`` expanded)."""
    if "scales" in a:  # Upsample-7: an attribute
        return np.asarray(a["scales"], dtype=np.float64), None
    if node.op_type == "Upsample" or len(node.input) == 2:  # Upsample-9 / Resize-10: (X, scales)
        return imp.const(node, 1).value.astype(np.float64), None
    scales = imp.const(node, 2, required=False)
    sizes = imp.const(node, 3, required=False)
    scales = None if scales is None else scales.value.astype(np.float64).reshape(-1)
    sizes = None if sizes is None else sizes.value.astype(np.int64).reshape(-1)
    if "axes" in a:
        axes = [int(ax) % 4 for ax in a["axes"]]
        if scales is not None and len(scales):
            scales = np.array([scales[axes.index(d)] if d in axes else 1.0 for d in range(4)])
        if sizes is not None:
            full = (imp.batch or 1, *imp.user_shape(node))
            sizes = np.array([sizes[axes.index(d)] if d in axes else full[d] for d in range(4)])
    return scales, sizes


def _flatten(imp: _Importer, node: onnx.NodeProto) -> None:
    axis = _attrs(node).get("axis", 1)
    if axis != 1:
        raise _fail(node, f"flatten at axis {axis}", "flatten at axis 1 (keep the batch)")
    v = imp.values.get(node.input[0])
    if isinstance(v, _Transposed):
        _flatten_transposed(imp, node, v)
        return
    x = imp.tensor(node, 0)
    if len(imp.shapes[x]) == 1:
        imp.alias(node)
    else:
        imp.add(node, Op.FLATTEN, [x])


def _global_pool(imp: _Importer, node: onnx.NodeProto, op: Op, x: str, check_shape: bool = True) -> str:
    """Global pooling of map ``x``: the average pool's own op, or a max pool whose window is the whole map."""
    if op is Op.GLOBAL_AVGPOOL:
        return imp.add(node, op, [x], check_shape=check_shape)
    hw = tuple(imp.shapes[x][1:])
    return imp.add(node, Op.MAXPOOL, [x], {"kernel": hw, "stride": hw, "padding": (0, 0)}, check_shape=check_shape)


def _reduce_spatial(op: Op, area_scale: bool = False) -> Callable[[_Importer, onnx.NodeProto], None]:
    """ReduceMean / ReduceMax / ReduceSum over the two spatial axes (the last of an (N, C, L)
    tensor): global average / max pooling (``area_scale``: a sum, the average times the map's area,
    a per-channel scale after it), then a flatten without keepdims."""
    def handler(imp: _Importer, node: onnx.NodeProto) -> None:
        a = _attrs(node)
        x = imp.tensor(node, 0)
        axes = _node_axes(imp, node) or []
        rank = len(imp.user_shape(node)) + 1
        if len(imp.shapes[x]) != 3 or sorted(ax % rank for ax in axes) != list(range(2, rank)):
            raise _fail(node, f"{node.op_type} over axes {axes} of a rank-{rank} tensor",
                        f"reduce over the spatial axes (2, 3) of an NCHW map, or axis 2 (-1) of an (N, C, L) "
                        f"tensor, only (a global {'average' if op is Op.GLOBAL_AVGPOOL else 'max'} pool)")
        keep = int(a.get("keepdims", 1))
        pooled = _global_pool(imp, node, op, x, check_shape=bool(keep) and not area_scale)
        if area_scale:
            area = np.full(imp.shapes[x][0], float(math.prod(imp.shapes[x][1:])))
            params = affine_params("mul", area, constant_first=False, where=f"node {_nname(node)!r}")
            pooled = imp.add(node, Op.BATCHNORM, [pooled], {"eps": 0.0, "source_op": "mul"}, params,
                             check_shape=bool(keep))
        if not keep:
            imp.add(node, Op.FLATTEN, [pooled])
    return handler


def _node_axes(imp: _Importer, node: onnx.NodeProto) -> list[int] | None:
    """The ``axes`` of a Reduce*/Squeeze node: its attribute (older opsets) or constant input 1 (newer);
    None when it has neither."""
    a = _attrs(node)
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    if len(node.input) > 1 and node.input[1]:
        return [int(v) for v in imp.const(node, 1).value.reshape(-1)]
    return None


def _global_max(imp: _Importer, node: onnx.NodeProto) -> None:
    x = imp.tensor(node, 0)
    if len(imp.shapes[x]) != 3:
        raise _fail(node, f"GlobalMaxPool of a {imp.shapes[x]} tensor", "apply it to an (N, C, H, W) map")
    _global_pool(imp, node, Op.MAXPOOL, x)


def _reshape(imp: _Importer, node: onnx.NodeProto) -> None:
    v = imp.values.get(node.input[0])
    target = [int(s) for s in imp.const(node, 1).value.reshape(-1)]
    if isinstance(v, _Const):
        imp.values[node.output[0]] = _Const(v.value.reshape(target), v.bits)
        return
    batches = (-1, 0, 1) if imp.batch is None else (-1, 0, 1, imp.batch)  # a fixed batch is baked into flattens
    if isinstance(v, _Grouped):
        _ungroup(imp, node, v, target, batches)
        return
    transposed = v if isinstance(v, _Transposed) else None
    x = transposed.source if transposed else imp.tensor(node, 0)
    shape = imp.shapes[x]
    if len(target) == 5 and len(shape) == 3 and target[0] in batches:
        _group_channels(imp, node, x, target)
        return
    if len(target) != 2 or target[0] not in batches or target[1] not in (-1, math.prod(shape)):
        raise _fail(node, f"reshape of a {shape} tensor (batch excluded) to {target}",
                    "only reshape to (N, -1), a flatten, is supported")
    if transposed:
        _flatten_transposed(imp, node, transposed)
        return
    if len(shape) == 1:
        imp.alias(node)
    else:
        imp.add(node, Op.FLATTEN, [x])


def _group_channels(imp: _Importer, node: onnx.NodeProto, x: str, target: list[int]) -> None:
    """Reshape of a (C, H, W) map to (N, g, C / g, H, W): a channel shuffle's first step, pending."""
    c, h, w = imp.shapes[x]
    dims = [([c, h, w][i - 1] if t == 0 and i < 4 else t) for i, t in enumerate(target)][1:]
    if dims.count(-1) == 1:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = c * h * w // known if known else -1
    g, k = dims[0], dims[1]
    if g < 1 or k < 1 or g * k != c or dims[2:] != [h, w]:
        raise _fail(node, f"reshape of a {(c, h, w)} map to {target}",
                    "a rank-5 reshape maps to the chip only as a channel shuffle's grouping (N, groups, C / groups, H, W)")
    imp.values[node.output[0]] = _Grouped(x, g)


def _ungroup(imp: _Importer, node: onnx.NodeProto, v: _Grouped, target: list[int], batches: tuple) -> None:
    """Reshape of a channel grouping back to (N, C, H, W): the identity, or after the swap the
    channel shuffle (:func:`imcflow.frontend.normalize.channel_shuffle`); to another grouping (an
    exporter's fusion of the view back and the next shuffle's view), the shuffle and that grouping."""
    c, h, w = imp.shapes[v.source]
    regroup = len(target) == 5 and target[0] in batches
    if not regroup and (len(target) != 4 or target[0] not in batches or target[1] not in (-1, c) or target[2:] != [h, w]):
        raise _fail(node, f"reshape of a channel grouping of a {(c, h, w)} map to {target}",
                    "reshape the (N, groups, C / groups, H, W) tensor back to (N, C, H, W)")
    layer = channel_shuffle(imp.shapes[v.source], v.groups, f"node {_nname(node)!r} (Reshape)") if v.swapped else None
    x = v.source if layer is None else imp.add(node, Op.CONV, [v.source], *layer, check_shape=not regroup)
    if regroup:
        _group_channels(imp, node, x, target)
    else:
        imp.values[node.output[0]] = _Tensor(x)


def _concat(imp: _Importer, node: onnx.NodeProto) -> None:
    axis = _attrs(node).get("axis", 0)
    if imp.is_const(node):
        imp.values[node.output[0]] = _Const(np.concatenate([imp.values[i].value for i in node.input], axis=axis))
        return
    inputs = [imp.tensor(node, i) for i in range(len(node.input))]
    if axis % (len(imp.user_shape(node)) + 1) != 1 or any(len(imp.shapes[i]) != 3 for i in inputs):
        raise _fail(node, f"concatenation along axis {axis}", "concatenate (N, C, H, W) maps along channels (axis 1)")
    imp.add(node, Op.CONCAT, inputs, {"axis": 0})


def slice_indices(size: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX Slice keeps along an axis of ``size`` (negative and out-of-range bounds
    clamped as the operator's specification says)."""
    if step == 0:
        raise ModelError("Slice with step 0")
    start, end = (v + size if v < 0 else v for v in (start, end))
    lo, hi = (0, size) if step > 0 else (-1, size - 1)  # end's range; start's is [0, hi]
    return list(range(min(max(start, 0), hi), min(max(end, lo), hi), step))


def _slice(imp: _Importer, node: onnx.NodeProto) -> None:
    """Slice (opset 10+: starts, ends, axes, steps as inputs; opset 1-9: attributes). Of a constant,
    evaluated; of a map, a subsample and/or channel selection as a 1x1 layer (:func:`slice_layer`)."""
    a = _attrs(node)
    if len(node.input) > 1:
        starts, ends = (imp.const(node, i).value.reshape(-1) for i in (1, 2))
        axes = imp.const(node, 3, required=False)
        steps = imp.const(node, 4, required=False)
        axes = axes.value.reshape(-1) if axes is not None else np.arange(len(starts))
        steps = steps.value.reshape(-1) if steps is not None else np.ones(len(starts), np.int64)
    else:
        starts, ends = np.asarray(a["starts"]), np.asarray(a["ends"])
        axes = np.asarray(a.get("axes", range(len(starts))))
        steps = np.ones(len(starts), np.int64)
    v = imp.values.get(node.input[0])
    full = v.value.shape if isinstance(v, _Const) else (1, *imp.user_shape(node))
    index = [list(range(size)) for size in full]
    for ax, st, en, sp in zip(axes, starts, ends, steps):
        ax = int(ax) + len(full) if ax < 0 else int(ax)
        if ax == 0 and not isinstance(v, _Const) and ((st, sp) != (0, 1) or en < (imp.batch or 2**31)):
            raise _fail(node, "slices the batch axis", "slice only channels or subsample H and W")
        index[ax] = slice_indices(full[ax], int(st), int(en), int(sp))
    if isinstance(v, _Const):
        imp.values[node.output[0]] = _Const(v.value[np.ix_(*index)], v.bits)
        return
    where = f"node {_nname(node)!r} (Slice)"
    shape = imp.shapes[imp.tensor(node, 0)]
    if full[1:] != shape:  # a 1-D network's (N, C, L) tensor: its map's one row
        index = per_axis_of_1d(index, [0])
    _move_layer(imp, node, slice_layer(shape, index[1:], where))


def _pad(imp: _Importer, node: onnx.NodeProto) -> None:
    """Pad (opset 11+: pads, constant_value, axes as inputs; earlier: attributes) of a map with
    zeros, on channels or symmetrically on H and W, as a 1x1 layer (:func:`pad_layer`)."""
    a = _attrs(node)
    x = imp.tensor(node, 0)
    rank = len(imp.user_shape(node)) + 1
    if len(node.input) > 1:
        pads = imp.const(node, 1).value.reshape(-1)
        value = imp.const(node, 2, required=False) if len(node.input) > 2 and node.input[2] else None
        value = float(value.value.reshape(-1)[0]) if value is not None else 0.0
        axes = imp.const(node, 3, required=False) if len(node.input) > 3 and node.input[3] else None
        axes = [int(ax) % rank for ax in axes.value.reshape(-1)] if axes is not None else list(range(rank))
    else:
        pads, value, axes = np.asarray(a["pads"]), float(a.get("value", 0.0)), list(range(rank))
    per_axis = [(0, 0)] * rank
    for k, ax in enumerate(axes):
        per_axis[ax] = (int(pads[k]), int(pads[k + len(axes)]))
    if rank != len(imp.shapes[x]) + 1:  # a 1-D network's (N, C, L) tensor: its map's height is not padded
        per_axis = per_axis_of_1d(per_axis, (0, 0))
    mode = a.get("mode", "constant")
    where = f"node {_nname(node)!r} (Pad)"
    _move_layer(imp, node, pad_layer(imp.shapes[x], per_axis, value, mode, where))


def _split(imp: _Importer, node: onnx.NodeProto) -> None:
    """Split of a map's channels (sizes from the ``split`` input or attribute, or equal parts): each
    output a channel-selection layer (:func:`slice_layer`)."""
    a = _attrs(node)
    x = imp.tensor(node, 0)
    shape = imp.shapes[x]
    axis = int(a.get("axis", 0))
    if len(shape) != 3 or axis % (len(imp.user_shape(node)) + 1) != 1:
        raise _fail(node, f"split along axis {axis} of a {(1, *imp.user_shape(node))} tensor",
                    "split maps along channels (axis 1)")
    sizes = imp.const(node, 1, required=False)
    sizes = [int(v) for v in sizes.value.reshape(-1)] if sizes is not None else list(a.get("split", []))
    if not sizes:
        sizes = split_sizes(shape[0], -(-shape[0] // len(node.output)))
    if sum(sizes) != shape[0] or len(sizes) != len(node.output):
        raise _fail(node, f"split sizes {sizes} for {len(node.output)} outputs of {shape[0]} channels",
                    "give one size per output, adding up to the channels")
    c0 = 0
    for k, (out, size) in enumerate(zip(node.output, sizes)):
        part = helper.make_node("Slice", [node.input[0]], [out], name=f"{_nname(node)}_{k}")
        _move_layer(imp, part, channel_selection(shape, c0, c0 + size, f"node {_nname(node)!r} (Split)"))
        c0 += size


def _move_layer(imp: _Importer, node: onnx.NodeProto, layer: tuple[dict, dict] | None) -> None:
    if layer is None:
        imp.alias(node)
    else:
        imp.add(node, Op.CONV, [imp.tensor(node, 0)], *layer)


# --- quantisation (QCDQ) ----------------------------------------------------------------------

def _qparams(imp: _Importer, node: onnx.NodeProto, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    scale = imp.const(node, 1).value.astype(np.float64)
    zp_c = imp.const(node, 2, required=False)
    zp = zp_c.value if zp_c is not None else np.zeros((), np.uint8)
    axis = _attrs(node).get("axis", 1)
    if scale.ndim == 1 and len(shape) > 0:
        bshape = [1] * len(shape)
        bshape[axis % len(shape)] = -1
        scale, zp = scale.reshape(bshape), zp.reshape(bshape)
    return scale, zp, _INT_BITS.get(np.dtype(zp.dtype), 8)


def _quantize(imp: _Importer, node: onnx.NodeProto) -> None:
    v = imp.values.get(node.input[0])
    if isinstance(v, _Const):
        scale, zp, _ = _qparams(imp, node, v.value.shape)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(v.value / scale) + zp.astype(np.int64), info.min, info.max).astype(zp.dtype)
        imp.values[node.output[0]] = _Const(q, _INT_BITS.get(np.dtype(zp.dtype), 8))
        return
    x = imp.tensor(node, 0)
    scale, zp, bits = _qparams(imp, node, ())
    if scale.size != 1 or zp.size != 1:
        raise _fail(node, "per-channel activation quantisation", "quantise activations per tensor")
    imp.values[node.output[0]] = _QAct(x, float(scale.reshape(-1)[0]), float(zp.reshape(-1)[0]), bits)


def _dequantize(imp: _Importer, node: onnx.NodeProto) -> None:
    v = imp.values.get(node.input[0])
    if isinstance(v, _Const):
        scale, zp, bits = _qparams(imp, node, v.value.shape)
        w = (v.value.astype(np.float64) - zp.astype(np.float64)) * scale
        imp.values[node.output[0]] = _Const(w.astype(np.float32), v.bits or bits)
    elif isinstance(v, _QAct):
        if v.zero_point != 0:
            raise _fail(node, f"activation zero point {v.zero_point}", "use symmetric (zero point 0) quantisation")
        imp.annotate(v.source, act_scale=v.scale, act_bits=v.bits)
        imp.values[node.output[0]] = _Tensor(v.source)
    else:
        raise _fail(node, "DequantizeLinear of a float tensor", "pair every DequantizeLinear with a QuantizeLinear")


# --- quantisation (QONNX Quant, as exported by brevitas) ---------------------------------------

_QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")

_ROUNDING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ROUND": np.round,  # round half to even
    "ROUND_TO_ZERO": np.trunc,
    "CEIL": np.ceil,
    "FLOOR": np.floor,
}

_MAX_QUANT_BITS = 8


def _quant_const(imp: _Importer, node: onnx.NodeProto, i: int, what: str) -> np.ndarray:
    v = imp.values.get(node.input[i]) if i < len(node.input) and node.input[i] else None
    if not isinstance(v, _Const):
        raise _fail(node, f"{what} (input {i}) is {'missing' if v is None else 'computed at run time'}",
                    f"export the quantiser with a constant {what} (an initializer)")
    return v.value.astype(np.float64)


def _quant_bits(node: onnx.NodeProto, bitwidth: np.ndarray) -> int:
    if bitwidth.size != 1 or float(bitwidth.reshape(-1)[0]) != round(float(bitwidth.reshape(-1)[0])):
        raise _fail(node, f"bit width {bitwidth.reshape(-1).tolist()} is not one integer",
                    "give a single integer bit width")
    bits = int(round(float(bitwidth.reshape(-1)[0])))
    if not 1 <= bits <= _MAX_QUANT_BITS:
        raise _fail(node, f"bit width {bits} is outside 1..{_MAX_QUANT_BITS}",
                    f"quantise to 1..{_MAX_QUANT_BITS} bits")
    return bits


def _int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """QONNX integer range of a ``bits``-wide (un)signed, optionally narrow, quantiser."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1 - int(narrow)


def qonnx_quant(x: np.ndarray, scale: np.ndarray, zeropt: np.ndarray, bits: int, signed: bool,
                narrow: bool, rounding_mode: str = "ROUND") -> np.ndarray:
    """QONNX ``Quant`` in float64: ``(clip(round(x/scale + zeropt), min_int, max_int) - zeropt) * scale``."""
    lo, hi = _int_range(bits, signed, narrow)
    q = np.clip(_ROUNDING[rounding_mode](np.asarray(x, np.float64) / scale + zeropt), lo, hi)
    return (q - zeropt) * scale


def _qonnx_quant(imp: _Importer, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    scale = _quant_const(imp, node, 1, "scale")
    zeropt = _quant_const(imp, node, 2, "zero point")
    bits = _quant_bits(node, _quant_const(imp, node, 3, "bit width"))
    mode = str(a.get("rounding_mode", "ROUND"))
    if mode not in _ROUNDING:
        raise _fail(node, f"rounding_mode={mode!r}", f"use one of {', '.join(_ROUNDING)}")
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise _fail(node, "scale is not positive and finite", "give positive finite scales")
    v = imp.values.get(node.input[0])
    if isinstance(v, _Const):
        try:
            w = qonnx_quant(v.value, scale, zeropt, bits, bool(a.get("signed", 1)), bool(a.get("narrow", 0)), mode)
        except ValueError as exc:
            raise _fail(node, f"scale {scale.shape} / zero point {zeropt.shape} do not broadcast to the weight "
                              f"{v.value.shape} ({_first_line(exc)})", "give per-tensor or per-output-channel "
                        "parameters shaped to broadcast") from None
        imp.values[node.output[0]] = _Const(w.astype(np.float32), bits)
        return
    x = imp.tensor(node, 0)
    if scale.size != 1:
        raise _fail(node, f"per-channel activation scale ({scale.size} values)",
                    "quantise activations per tensor (one scale)")
    if np.any(zeropt != 0):
        raise _fail(node, f"activation zero point {zeropt.reshape(-1).tolist()}",
                    "use symmetric (zero point 0) activation quantisation")
    imp.annotate(x, act_scale=float(scale.reshape(-1)[0]), act_bits=bits)
    imp.values[node.output[0]] = _Tensor(x)


def _bipolar_quant(imp: _Importer, node: onnx.NodeProto) -> None:
    raise _fail(node, "bipolar (1-b sign) quantisation is not supported",
                f"quantise with a Quant node of 2..{_MAX_QUANT_BITS} bits instead")


# --- constant arithmetic (shape computations exporters emit) -----------------------------------

def _constant(imp: _Importer, node: onnx.NodeProto) -> None:
    a = _attrs(node)
    if "value" not in a:
        raise _fail(node, f"constant given as {', '.join(a)}", "store the constant as a tensor")
    imp.values[node.output[0]] = _Const(numpy_helper.to_array(a["value"]))


def _shape(imp: _Importer, node: onnx.NodeProto) -> None:
    v = imp.values.get(node.input[0])
    shape = v.value.shape if isinstance(v, _Const) else (1, *imp.user_shape(node))
    imp.values[node.output[0]] = _Const(np.array(shape, np.int64))


def _const_op(fn: Callable[[list[np.ndarray], dict], np.ndarray]) -> Callable[[_Importer, onnx.NodeProto], None]:
    def handler(imp: _Importer, node: onnx.NodeProto) -> None:
        if not imp.is_const(node):
            raise _fail(node, "applied to an activation", "this op is supported on constants (shapes) only")
        args = [imp.values[i].value for i in node.input if i]
        imp.values[node.output[0]] = _Const(np.asarray(fn(args, _attrs(node))))
    return handler


_const_transpose = _const_op(lambda args, a: np.transpose(args[0], a.get("perm")))


def _axes(args: list[np.ndarray], a: dict) -> tuple[int, ...]:
    return tuple(int(x) for x in (args[1] if len(args) > 1 else a.get("axes", [])))


def _unsqueeze(args: list[np.ndarray], a: dict) -> np.ndarray:
    out = args[0]
    for ax in sorted(_axes(args, a)):
        out = np.expand_dims(out, ax)
    return out


_const_unsqueeze = _const_op(_unsqueeze)


def _unsqueeze_node(imp: _Importer, node: onnx.NodeProto) -> None:
    """Unsqueeze: on constants (shape arithmetic), or of a 1-D network's (N, C, L) tensor at axis 2:
    its (N, C, 1, L) map, as torch.export writes 1-D pooling (Unsqueeze, a 2-D op, Squeeze)."""
    if imp.is_const(node):
        _const_unsqueeze(imp, node)
        return
    axes = _node_axes(imp, node) or []
    if not (imp.one_d and len(imp.user_shape(node)) == 2 and [ax % 4 for ax in axes] == [2]):
        raise _fail(node, f"unsqueeze of an activation along axes {axes}", "only a 1-D network's (N, C, L) tensor "
                    "unsqueezed at axis 2 (its (N, C, 1, L) map) maps to the chip; keep activations 4-D (NCHW)")
    imp.alias(node)


def _squeeze(imp: _Importer, node: onnx.NodeProto) -> None:
    """Squeeze: on constants (shape arithmetic), or an (N, C, 1, 1) map to (N, C), which is a flatten."""
    if imp.is_const(node):
        args = [imp.values[i].value for i in node.input if i]
        imp.values[node.output[0]] = _Const(np.squeeze(args[0], axis=_axes(args, _attrs(node)) or None))
        return
    v = imp.values.get(node.input[0])
    x, shape = (v.source, v.shape) if isinstance(v, _Squeezed) else (imp.tensor(node, 0), imp.user_shape(node))
    dims = _node_axes(imp, node)
    if dims is None:
        raise _fail(node, "Squeeze without axes (torch.squeeze(x)): at an exported batch of 1 it removes the "
                          "batch axis too", "squeeze the spatial axes by number, x.squeeze(-1).squeeze(-1), or flatten")
    if imp.one_d and len(shape) == 3 and shape[1] == 1 and [d % 4 for d in dims] == [2]:
        imp.alias(node)  # the height of a map: the 1-D network's (N, C, L) tensor it holds (torch.export's pools)
        return
    out, problem = squeeze_shape(shape, dims)
    if problem:
        raise _fail(node, problem, "only squeezing an (N, C, 1, 1) map to (N, C) (a flatten) is supported")
    if len(out) > 1:
        imp.values[node.output[0]] = _Squeezed(x, out)
    elif len(imp.shapes[x]) == 1:
        imp.values[node.output[0]] = _Tensor(x)
    else:
        imp.add(node, Op.FLATTEN, [x])


def _final_host_op(imp: _Importer, node: onnx.NodeProto) -> None:
    """Softmax / LogSoftmax / Sigmoid over the classes as the last op: not a chip op; the graph ends at
    its input (the logits: each of these keeps their order, so the same top-1) and
    ``meta["host_output"]`` says so. A later node that reads it is refused."""
    x = imp.tensor(node, 0)
    axis = int(_attrs(node).get("axis", -1))
    if len(imp.shapes[x]) != 1 or axis not in (1, -1):
        raise _fail(node, f"{node.op_type} over axis {axis} of a rank-{len(imp.shapes[x]) + 1} tensor",
                    f"only a final {node.op_type} over the classes of (N, classes) logits is taken (it runs on the host)")
    imp.alias(node)
    imp.host_output = (_nname(node), node.output[0], node.op_type)
    imp.meta["host_output"] = host_output_note(node.op_type, _nname(node))


def _sigmoid(imp: _Importer, node: onnx.NodeProto) -> None:
    """Sigmoid: the network's output over (N, classes) logits is left to the host (:func:`_final_host_op`);
    anywhere else an element-wise activation (``Mul(x, Sigmoid(x))`` is a SiLU: :func:`_fused_activation`)."""
    if len(imp.shapes[imp.tensor(node, 0)]) == 1 and node.output[0] in imp.graph_outputs:
        _final_host_op(imp, node)
    else:
        _activation(imp, node, "sigmoid")


def _activation(imp: _Importer, node: onnx.NodeProto, fn: str, alpha: float | None = None) -> None:
    """An element-wise activation ``fn`` (:data:`imcflow.ir.activations.ACTIVATIONS`) of input 0."""
    attrs = {"fn": fn} | ({} if alpha is None else {"alpha": float(alpha)})
    imp.add(node, Op.ACTIVATION, [imp.tensor(node, 0)], attrs)


def _act(fn: str, default_alpha: float | None = None) -> Callable[[_Importer, onnx.NodeProto], None]:
    """The handler of an ONNX activation that is ``fn`` (with attr ``alpha`` where ``default_alpha`` is given)."""
    def handler(imp: _Importer, node: onnx.NodeProto) -> None:
        alpha = None if default_alpha is None else _attrs(node).get("alpha", default_alpha)
        _activation(imp, node, fn, None if alpha is None else float(str(np.float32(alpha))))  # 0.2, not 0.2000000029
    return handler


def _hard_sigmoid(imp: _Importer, node: onnx.NodeProto) -> None:
    """HardSigmoid ``max(0, min(1, alpha * x + beta))`` with PyTorch's alpha = 1/6, beta = 0.5 only."""
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise _fail(node, f"HardSigmoid with alpha={alpha:g}, beta={beta:g}",
                    "only PyTorch's Hardsigmoid (alpha=1/6, beta=0.5) is taken; use that (nn.Hardsigmoid)")
    _activation(imp, node, "hardsigmoid")


def _gelu(imp: _Importer, node: onnx.NodeProto) -> None:
    """Gelu (opset 20): approximate 'none' (the erf form) or 'tanh'."""
    approximate = _attrs(node).get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise _fail(node, f"approximate={approximate!r}", "use approximate 'none' or 'tanh'")
    _activation(imp, node, "gelu" if approximate == "none" else "gelu_tanh")


GELU_EXPORT_FIX = "export with opset_version >= 20 (ONNX Gelu) or use the dynamo exporter"


def _erf(imp: _Importer, node: onnx.NodeProto) -> None:
    """An Erf outside GELU's exported pattern (:data:`_ACTIVATION_PATTERNS`): refused with the export fix."""
    raise _fail(node, "an Erf that is not part of GELU's exact pattern x * (1 + erf(x / sqrt(2))) * 0.5",
                GELU_EXPORT_FIX)

_SQRT2 = math.sqrt(2.0)
_TANH_GELU = (("Mul", "x"), ("Mul", "x"), ("Mul", 0.044715), ("Add", "x"), ("Mul", math.sqrt(2 / math.pi)),
              ("Tanh", None), ("Add", 1.0))
_ACTIVATION_PATTERNS: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    ("silu", (("Sigmoid", None), ("Mul", "x"))),
    ("mish", (("Softplus", None), ("Tanh", None), ("Mul", "x"))),
    *(("gelu", (first, ("Erf", None), ("Add", 1.0), *last)) for first in (("Div", _SQRT2), ("Mul", 1 / _SQRT2))
      for last in ((("Mul", "x"), ("Mul", 0.5)), (("Mul", 0.5), ("Mul", "x")))),
    *(("gelu_tanh", (*_TANH_GELU, *last)) for last in ((("Mul", "x"), ("Mul", 0.5)), (("Mul", 0.5), ("Mul", "x")))),
)
"""Element-wise functions exporters write as several ONNX nodes: each a chain of steps (op type, its
other operand: None for a unary op, "x" for the chain's input, or a number) from input x, each step
reading the one before (the SiLU ``Mul(x, Sigmoid(x))``, PyTorch's Mish, and GELU below opset 20)."""


def _scalar(imp: _Importer, name: str) -> float | None:
    """Tensor ``name`` as a number when it is a one-element constant (an initializer or a Constant node,
    also one later in the graph)."""
    v = imp.values.get(name)
    if isinstance(v, _Const):
        arr = v.value
    elif name in imp.constant_nodes and "value" in _attrs(imp.constant_nodes[name]):
        arr = numpy_helper.to_array(_attrs(imp.constant_nodes[name])["value"])
    else:
        return None
    return float(np.asarray(arr).reshape(-1)[0]) if np.asarray(arr).size == 1 else None


def _step_matches(imp: _Importer, node: onnx.NodeProto, chain: str, x: str, step: tuple[str, Any]) -> bool:
    """``node`` is ``step`` of an activation pattern applied to ``chain`` (the previous step's output)."""
    op, other = step
    if node.op_type != op or node.domain not in ("", "ai.onnx"):
        return False
    if other is None:
        return list(node.input) == [chain]
    if len(node.input) != 2:
        return False
    orders = [tuple(node.input)] if op == "Div" else [tuple(node.input), tuple(reversed(node.input))]
    for a, b in orders:
        if a != chain:
            continue
        if other == "x" and b == x:
            return True
        value = None if other == "x" else _scalar(imp, b)
        if value is not None and math.isclose(value, other, rel_tol=1e-6):
            return True
    return False


def _match_pattern(imp: _Importer, node: onnx.NodeProto, x: str,
                   steps: tuple[tuple[str, Any], ...]) -> list[onnx.NodeProto] | None:
    """The nodes of ``steps`` applied to ``x`` starting at ``node``, or None; inner outputs must have no
    other reader (and not be graph outputs)."""
    chain, nodes = x, []
    for k, step in enumerate(steps):
        if not _step_matches(imp, node, chain, x, step):
            return None
        nodes.append(node)
        chain = node.output[0]
        if k + 1 < len(steps):
            readers = imp.users.get(chain, [])
            if len(readers) != 1 or chain in imp.graph_outputs:
                return None
            node = readers[0]
    return nodes


def _fused_activation(imp: _Importer, node: onnx.NodeProto) -> bool:
    """When ``node`` starts an activation pattern (:data:`_ACTIVATION_PATTERNS`) on a tensor: import
    the whole chain as one activation node (named by its last node) and skip its other nodes."""
    for x in dict.fromkeys(node.input):
        if not isinstance(imp.values.get(x), _Tensor):
            continue
        for fn, steps in _ACTIVATION_PATTERNS:
            nodes = _match_pattern(imp, node, x, steps)
            if nodes:
                imp.add(nodes[-1], Op.ACTIVATION, [imp.tensor(node, list(node.input).index(x))], {"fn": fn})
                imp.fused.update(id(n) for n in nodes[1:])
                return True
    return False


def _identity(imp: _Importer, node: onnx.NodeProto) -> None:
    imp.alias(node)


_HANDLERS: dict[str, Callable[[_Importer, onnx.NodeProto], None]] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
    "Sub": _arith,
    "Mul": _arith,
    "Div": _arith,
    "BatchNormalization": _batchnorm,
    "Relu": lambda imp, node: imp.add(node, Op.RELU, [imp.tensor(node, 0)]),
    "Clip": _clip,
    "MaxPool": _pool(Op.MAXPOOL),
    "AveragePool": _pool(Op.AVGPOOL),
    "GlobalAveragePool": lambda imp, node: imp.add(node, Op.GLOBAL_AVGPOOL, [imp.tensor(node, 0)]),
    "Flatten": _flatten,
    "ConvTranspose": _conv_transpose,
    "DepthToSpace": _depth_to_space,
    "Resize": _resize,
    "Upsample": _resize,
    "ReduceMean": _reduce_spatial(Op.GLOBAL_AVGPOOL),
    "ReduceSum": _reduce_spatial(Op.GLOBAL_AVGPOOL, area_scale=True),
    "ReduceMax": _reduce_spatial(Op.MAXPOOL),
    "GlobalMaxPool": _global_max,
    "Reshape": _reshape,
    "Concat": _concat,
    "Identity": _identity,
    "Softmax": _final_host_op,
    "LogSoftmax": _final_host_op,
    "Sigmoid": _sigmoid,
    "LeakyRelu": _act("leaky_relu", 0.01),
    "Elu": _act("elu", 1.0),
    "HardSwish": _act("hardswish"),
    "HardSigmoid": _hard_sigmoid,
    "Mish": _act("mish"),
    "Softplus": _act("softplus"),
    "Tanh": _act("tanh"),
    "Gelu": _gelu,
    "Erf": _erf,
    "Dropout": _identity,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
    "Constant": _constant,
    "Shape": _shape,
    "Gather": _const_op(lambda args, a: np.take(args[0], args[1], axis=a.get("axis", 0))),
    "Unsqueeze": _unsqueeze_node,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Pad": _pad,
    "Split": _split,
    "ConstantOfShape": _const_op(lambda args, a: np.full(
        [int(d) for d in args[0].reshape(-1)],
        numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a else np.float32(0))),
    "Transpose": _transpose,
    "Cast": _const_op(lambda args, a: args[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))),
}

_QONNX_HANDLERS: dict[str, Callable[[_Importer, onnx.NodeProto], None]] = {
    "Quant": _qonnx_quant,
    "BipolarQuant": _bipolar_quant,
}
