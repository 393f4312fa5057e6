"""PyTorch importer: ``torch.fx`` symbolic tracing of an ``nn.Module`` into a float Graph.

Supported: nn.Conv2d (zero padding; any dilation, square or rectangular: the same k*k*C_in rows, the line
buffer gathering taps d apart; groups > 1 become a dense block-diagonal conv),
nn.Linear, nn.BatchNorm1d/2d (running statistics), nn.ReLU/ReLU6/Hardtanh, F.relu/relu6/hardtanh,
clamp/clip with a constant lower bound, the element-wise activations of the float op ``activation``
(:mod:`imcflow.ir.activations`; modules, functions, methods and in-place forms): SiLU (also
``x * torch.sigmoid(x)`` in either order, one node), GELU (approximate 'none' or 'tanh'), Hardswish,
Hardsigmoid, LeakyReLU (alpha = negative_slope), ELU (alpha), Mish, Softplus (beta=1, threshold=20 only),
Tanh and a sigmoid anywhere but as the final op over the classes (PReLU, SELU, CELU, Softsign, ... are
refused by name), nn.MaxPool2d (undilated; ``ceil_mode=True`` is -inf padding at the
end, ``pad_end``)/AvgPool2d, nn.AdaptiveAvgPool2d/
AdaptiveMaxPool2d to (1, 1) or to a size that divides the map (a fixed pool), and their functions (a pooling window
may be given by the map's own sizes, ``x.shape[2:]``, ``x.size(3)``), mean/amax/sum over dims (2, 3) (global pooling;
a sum is the average times the area),
nn.Flatten/torch.flatten/view/reshape to (N, -1) (the batch as -1, x.size(0), x.shape[0] or
x.size()[0]), squeeze of an (N, C, 1, 1) map to (N, C), nearest upsampling by integer factors (nn.Upsample and
nn.UpsamplingNearest2d, F.interpolate/F.upsample/F.upsample_nearest with mode 'nearest' or 'nearest-exact'
and a scale_factor or size that is an integer multiple of the map), bilinear upsampling by integer factors
(nn.Upsample / F.interpolate with mode 'bilinear' and align_corners False or None; nn.UpsamplingBilinear2d
and align_corners=True, other modes, antialias and non-integer factors are refused), depth to space (nn.PixelShuffle, F.pixel_shuffle, torch.pixel_shuffle),
nn.ConvTranspose2d whose square kernel equals its stride with no padding, output_padding, dilation or
groups (U-Net's up-convolution: a 1x1 conv to C_out*r*r channels then depth to space; any other transposed
convolution is refused by name), + / torch.add, torch.cat(dim=1), nn.Identity and dropout (dropped: inference
semantics), slicing ``x[:, c0:c1, ::s, ::s]`` (and chunk/split of the channels) and zero padding (``F.pad``, nn.ZeroPad2d: channels, or
H and W symmetrically) as 1x1 layers with 0/1 weights that normalisation fuses (the option-A
shortcut of CIFAR ResNets) or moves into the conv that reads them, + - * / of an activation and a constant (a number or a buffer/parameter) that is a scalar
or one value per channel (input normalisation ``(x - mean) / std``: a per-channel affine), and a final softmax, log_softmax or sigmoid over (N, classes) logits (left to the host: the
graph ends at the logits, ``meta["host_output"]``). 1-D networks (``input_shape=(C, L)``) are the 2-D
networks of height 1 (:func:`imcflow.frontend.normalize.map_of_1d`): nn.Conv1d (kernel (1, k), stride
(1, s), padding (0, p), dilation (1, d), groups), BatchNorm1d, MaxPool1d/AvgPool1d, AdaptiveAvgPool1d/
AdaptiveMaxPool1d, their functions, ZeroPad1d/ConstantPad1d and F.pad, mean/amax over dim 2 (-1),
squeeze(-1), and the ops above on (N, C, L) tensors. Anything else raises a ModelError naming the
traced node, its op and the fix.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from imcflow.errors import ModelError
from imcflow.frontend.normalize import (ARITH, BILINEAR_CORNERS_FIX, CONV_TRANSPOSE_FIX, UPSAMPLE_FIX,
                                        activation_fix, affine_params, channel_constant, channel_selection, channel_shuffle, conv_transpose_as_conv,
                                        conv_transpose_problem, dense_grouped_weight, host_output_note,
                                        input_layout_1d, map_of_1d, pad_layer, per_axis_of_1d, slice_layer,
                                        split_sizes, squeeze_shape, upsample_factors, view_1d)
from imcflow.ir.graph import Graph, Node, Op, infer_shape
from imcflow.ir.qgraph import ceil_pad_end, receptive_field


def from_torch(module: nn.Module, input_shape: tuple[int, ...], name: str | None = None) -> Graph:
    """Trace ``module`` (inference semantics) on inputs of ``input_shape`` (C, H, W), no batch; a
    1-D network's (C, L) inputs are held as (C, 1, L) maps (:func:`map_of_1d`)."""
    if not isinstance(module, nn.Module):
        raise ModelError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    if input_shape is None:
        raise ModelError("a torch module needs an input shape (C, H, W) without batch, e.g. input_shape=(3, 32, 32) "
                         "((C, L) for a 1-D network)")
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) <= 0:
        raise ModelError(f"input shape {tuple(input_shape)} must be positive static sizes (C, H, W) without batch "
                         f"((C, L) for a 1-D network)")
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as exc:  # user code may raise anything while being traced
        raise ModelError(f"cannot trace {type(module).__name__} with torch.fx ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); remove data-dependent control flow "
                         f"from forward() or export the model to ONNX") from None
    graph = _Importer(traced, shape, name or type(module).__name__).run()
    graph.verify()
    return graph


class _Importer:
    """Walks the traced fx graph; ``self.alias`` maps fx node names to Graph tensor names."""

    def __init__(self, gm: torch.fx.GraphModule, input_shape: tuple[int, ...], name: str) -> None:
        self.gm, self.input_shape, self.name = gm, input_shape, name
        self.one_d = len(input_shape) == 2  # a 1-D network: its (N, C, L) tensors are (N, C, 1, L) maps
        if self.one_d:
            self.input_shape = map_of_1d(input_shape)
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.alias: dict[str, Any] = {}
        self.swish: dict[str, torch.fx.Node] = {}  # the multiply of x * sigmoid(x) -> x
        self.input_name = ""
        self.output = ""
        self.meta: dict[str, Any] = {"source": "torch"}
        if self.one_d:
            self.meta["input_layout"] = input_layout_1d(input_shape)

    def run(self) -> Graph:
        for fx in self.gm.graph.nodes:
            self.visit(fx)
        if not self.output:
            raise ModelError(f"model {self.name!r} has no output")
        if not self.nodes:
            raise ModelError(f"model {self.name!r} has no operations: give a network with at least one layer")
        return Graph(self.name, self.input_name, self.input_shape, tuple(self.nodes), self.output, meta=self.meta)

    # --- helpers --------------------------------------------------------------------------
    def user_shape(self, x: str) -> tuple[int, ...]:
        """Tensor ``x``'s shape (batch excluded) as the model sees it: a 1-D network's maps are (C, L)."""
        shape = self.shapes[x]
        return view_1d(shape) if self.one_d and len(shape) == 3 else shape

    def squeezed(self, arg: Any) -> tuple | None:
        """("squeezed", source tensor, shape) when ``arg`` is an (N, C, 1, 1) map squeezed part-way."""
        partial = self.alias.get(arg.name) if isinstance(arg, torch.fx.Node) else None
        return partial if isinstance(partial, tuple) and partial[0] == "squeezed" else None

    def tensor(self, fx: torch.fx.Node, arg: Any) -> str:
        partial = self.squeezed(arg)
        if partial:
            raise self.fail(fx, f"argument {arg.name!r} is an (N, C, 1, 1) map squeezed only to {(1, *partial[2])}",
                            "squeeze it to (N, C), e.g. x.squeeze(-1).squeeze(-1), or flatten it")
        if not isinstance(arg, torch.fx.Node) or not isinstance(self.alias.get(arg.name), str):
            raise ModelError(f"node {fx.name!r} ({_op_name(self, fx)}): argument {arg!r} is not a tensor computed "
                             f"from the input; constants and shape arithmetic are not supported")
        return self.alias[arg.name]

    def add(self, fx: torch.fx.Node, op: Op, inputs: list[str], attrs: dict | None = None,
            params: dict | None = None) -> None:
        name = self.unique(str(fx.target) if fx.op == "call_module" else fx.name)
        node = Node(name, op, tuple(inputs), attrs or {}, params or {}, ())
        shape = infer_shape(node, [self.shapes[i] for i in inputs])
        node = Node(name, op, tuple(inputs), node.attrs, node.params, shape)
        self.nodes.append(node)
        self.shapes[name] = shape
        self.alias[fx.name] = name

    def unique(self, name: str) -> str:
        base, k = name, 1
        while name in self.shapes:
            name, k = f"{base}_{k}", k + 1
        return name

    def same(self, fx: torch.fx.Node, arg: Any) -> None:
        """``fx`` is an identity of ``arg``."""
        self.alias[fx.name] = self.tensor(fx, arg)

    def fail(self, fx: torch.fx.Node, why: str, fix: str) -> ModelError:
        return ModelError(f"node {fx.name!r} ({_op_name(self, fx)}): {why}; {fix}")

    # --- dispatch -------------------------------------------------------------------------
    def visit(self, fx: torch.fx.Node) -> None:
        if fx.op == "placeholder":
            if self.input_name:
                raise self.fail(fx, "a second graph input", "give a model with exactly one input tensor")
            self.input_name = fx.name
            self.alias[fx.name] = fx.name
            self.shapes[fx.name] = self.input_shape
        elif fx.op == "output":
            out = fx.args[0]
            if not isinstance(out, torch.fx.Node):
                raise self.fail(fx, "the model returns several values", "return one output tensor")
            self.output = self.tensor(fx, out)
        elif fx.op == "call_module":
            self.visit_module(fx, self.modules[fx.target])
        elif fx.op == "call_function":
            self.visit_function(fx)
        elif fx.op == "call_method":
            self.visit_method(fx)
        elif fx.op == "get_attr":  # a buffer or parameter used in arithmetic (e.g. a normalisation mean)
            value = self.gm
            for part in str(fx.target).split("."):
                value = getattr(value, part)
            self.alias[fx.name] = ("const", value.detach().cpu().numpy().astype(np.float64))
        else:
            raise self.fail(fx, f"{fx.op} nodes are not supported",
                            "use parameters only through nn.Conv2d/nn.Linear/nn.BatchNorm modules")

    def visit_module(self, fx: torch.fx.Node, m: nn.Module) -> None:
        handler = _MODULES.get(type(m))
        if type(m) in _ACTIVATION_MODULES:
            raise self.fail(fx, "unsupported activation", activation_fix(_ACTIVATION_MODULES[type(m)]))
        if handler is None:
            raise self.fail(fx, "unsupported module", f"use only {', '.join(sorted(t.__name__ for t in _MODULES))}")
        self.check_dims(fx, m)
        handler(self, fx, m)

    def check_dims(self, fx: torch.fx.Node, m: nn.Module) -> None:
        """A 1-D window module must read an (N, C, L) tensor, a 2-D one an (N, C, H, W) map."""
        dims = 1 if isinstance(m, _MODULES_1D) else 2 if isinstance(m, _MODULES_2D) else 0
        shape = self.user_shape(self.tensor(fx, fx.args[0]))
        if dims and len(shape) != dims + 1:
            raise self.fail(fx, f"a {dims}-D conv/pooling window on a tensor of shape {shape} (batch excluded)",
                            "give the 2-D modules (Conv2d, MaxPool2d, ...) (N, C, H, W) maps, input_shape (C, H, W), "
                            "and the 1-D ones (Conv1d, MaxPool1d, ...) (N, C, L) tensors, input_shape (C, L)")

    def visit_function(self, fx: torch.fx.Node) -> None:
        handler = _FUNCTIONS.get(fx.target)
        if fx.target in _ACTIVATION_FUNCTIONS:
            raise self.fail(fx, "unsupported activation", activation_fix(_ACTIVATION_FUNCTIONS[fx.target]))
        if handler is None:
            raise self.fail(fx, "unsupported function", "use relu, add, flatten, cat(dim=1) or the supported modules")
        handler(self, fx)

    def visit_method(self, fx: torch.fx.Node) -> None:
        if fx.target in ("view", "reshape", "flatten"):
            self.reshape(fx, fx.target)
        elif fx.target in ("relu", "relu_"):
            self.add(fx, Op.RELU, [self.tensor(fx, fx.args[0])])
        elif fx.target == "size":  # x.size(0) is the batch; x.size() all sizes (indexed later)
            dim = _arg(fx, 1, "dim", None)
            self.alias[fx.name] = ("sizes", fx.args[0]) if dim is None else ("size", fx.args[0], dim)
        elif fx.target in ("clamp", "clamp_", "clip", "clamp_min"):
            _clamp_fn(self, fx)
        elif fx.target in _METHOD_ARITH:
            _arith(self, fx, _METHOD_ARITH[fx.target])
        elif fx.target == "contiguous":
            pending = self.alias.get(fx.args[0].name) if isinstance(fx.args[0], torch.fx.Node) else None
            if isinstance(pending, tuple) and pending[0] in ("grouped", "shuffled"):
                self.alias[fx.name] = pending
            else:
                self.same(fx, fx.args[0])
        elif fx.target in ("transpose", "permute"):
            _transpose(self, fx)
        elif fx.target == "mean":
            _mean(self, fx)
        elif fx.target == "amax":
            _amax(self, fx)
        elif fx.target == "sum":
            _sum(self, fx)
        elif fx.target in ("softmax", "log_softmax"):
            _final_host_op(self, fx, fx.target, _arg(fx, 1, "dim", None))
        elif fx.target in ("sigmoid", "sigmoid_"):
            _sigmoid(self, fx)
        elif fx.target == "squeeze":
            _squeeze(self, fx)
        elif fx.target in ("chunk", "split"):
            _split(self, fx, fx.target)
        elif fx.target in ("tanh", "tanh_"):
            _activation(self, fx, "tanh")
        else:
            raise self.fail(fx, f"unsupported tensor method .{fx.target}()",
                            "use view/reshape/flatten/squeeze/relu/clamp/sigmoid/tanh/mean/amax/sum only")

    # --- shape ops ------------------------------------------------------------------------
    def reshape(self, fx: torch.fx.Node, how: str) -> None:
        pending = self.alias.get(fx.args[0].name) if isinstance(fx.args[0], torch.fx.Node) else None
        if isinstance(pending, tuple) and pending[0] in ("grouped", "shuffled"):
            _ungroup(self, fx, how, pending)
            return
        src = self.tensor(fx, fx.args[0])
        shape = self.shapes[src]
        if how != "flatten" and len(self.view_target(fx)) == 5:
            _group_channels(self, fx, src)
            return
        if how == "flatten":
            start = fx.args[1] if len(fx.args) > 1 else fx.kwargs.get("start_dim", 0)
            end = fx.args[2] if len(fx.args) > 2 else fx.kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise self.fail(fx, f"flatten(start_dim={start}, end_dim={end})", "flatten with start_dim=1 only")
        else:
            target = fx.args[1:] if len(fx.args) > 1 else fx.kwargs.get("shape", ())
            if len(target) == 1 and isinstance(target[0], (tuple, list)):
                target = tuple(target[0])
            if not self.is_flat_target(target, shape):
                raise self.fail(fx, f"{how} to {tuple(target)} of a {shape} tensor",
                                "only reshape to (N, -1) (a flatten) is supported")
        if len(shape) == 1:
            self.same(fx, fx.args[0])
        else:
            self.add(fx, Op.FLATTEN, [src])

    def is_flat_target(self, target: tuple, shape: tuple[int, ...]) -> bool:
        if len(target) != 2:
            return False
        batch, rest = target
        return self.is_batch(batch) and rest in (-1, math.prod(shape))

    def is_batch(self, v: Any) -> bool:
        """``v`` is the batch size of a view target: -1, 1 or x.size(0) / x.shape[0]."""
        return v in (-1, 1) or (isinstance(v, torch.fx.Node) and self.alias.get(v.name, ("",))[0] == "size"
                                and self.alias[v.name][2] in (0, -4))

    def view_target(self, fx: torch.fx.Node) -> tuple:
        """The target shape of a view/reshape, feature sizes given by ``x.size(k)`` or ``C // g`` made static."""
        target = fx.args[1:] if len(fx.args) > 1 else fx.kwargs.get("shape", ())
        if len(target) == 1 and isinstance(target[0], (tuple, list)):
            target = tuple(target[0])
        return tuple(t if self.is_batch(t) else _static_size(self, fx, t) for t in target)


def _op_name(imp: _Importer, fx: torch.fx.Node) -> str:
    if fx.op == "call_module":
        return type(imp.modules[fx.target]).__name__
    if fx.op == "call_function":
        return getattr(fx.target, "__name__", str(fx.target))
    if fx.op == "call_method":
        return f".{fx.target}()"
    return fx.op


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().to(torch.float32).numpy().copy()


# --- modules ----------------------------------------------------------------------------------

def _window(m: nn.Module, key: str, fill: int) -> tuple[int, int]:
    """Window attribute ``key`` of a 2-D module, or of a 1-D one as its height-1 2-D window
    (``fill`` for the height: 1 for a kernel, stride or dilation, 0 for padding)."""
    v = getattr(m, key)
    if isinstance(m, _MODULES_1D):
        return (fill, int(v if isinstance(v, int) else v[0]))
    return _pair(v)


def _conv(imp: _Importer, fx: torch.fx.Node, m: nn.Conv1d | nn.Conv2d) -> None:
    if m.padding_mode != "zeros":
        raise imp.fail(fx, f"padding_mode={m.padding_mode!r}", "use zero padding")
    kernel = _window(m, "kernel_size", 1)
    dilation = tuple(d if k > 1 else 1 for k, d in zip(kernel, _window(m, "dilation", 1)))  # one tap: no spacing
    span = receptive_field(kernel, dilation)   # the line buffer gathers taps `dilation` apart
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif all(e % 2 == 1 for e in span):
            padding = (span[0] // 2, span[1] // 2)
        else:
            raise imp.fail(fx, "padding='same' with an even (dilated) window is asymmetric",
                           "use an odd kernel or explicit padding")
    elif isinstance(m, nn.Conv1d):
        padding = (0, int(padding[0]))
    params = {"weight": _np(m.weight if isinstance(m, nn.Conv2d) else m.weight[:, :, None, :])}
    attrs = {"kernel": kernel, "stride": _window(m, "stride", 1), "padding": _pair(padding)}
    if dilation != (1, 1):
        attrs["dilation"] = dilation
    if m.groups != 1:  # no grouped mode on the chip: the equivalent dense, block-diagonal weight
        params["weight"] = dense_grouped_weight(params["weight"], m.groups, f"module {fx.target!r} ({type(m).__name__})")
        attrs["groups"] = m.groups
    if m.bias is not None:
        params["bias"] = _np(m.bias)
    imp.add(fx, Op.CONV, [imp.tensor(fx, fx.args[0])], attrs, params)


def _linear(imp: _Importer, fx: torch.fx.Node, m: nn.Linear) -> None:
    params = {"weight": _np(m.weight)}
    if m.bias is not None:
        params["bias"] = _np(m.bias)
    imp.add(fx, Op.LINEAR, [imp.tensor(fx, fx.args[0])], {}, params)


def _batchnorm(imp: _Importer, fx: torch.fx.Node, m: nn.modules.batchnorm._BatchNorm) -> None:
    if m.running_mean is None or m.running_var is None:
        raise imp.fail(fx, "batch norm without running statistics", "use track_running_stats=True")
    c = m.num_features
    gamma = _np(m.weight) if m.affine else np.ones(c, np.float32)
    beta = _np(m.bias) if m.affine else np.zeros(c, np.float32)
    imp.add(fx, Op.BATCHNORM, [imp.tensor(fx, fx.args[0])], {"eps": float(m.eps)},
            {"gamma": gamma, "beta": beta, "mean": _np(m.running_mean), "var": _np(m.running_var)})


def _clamp(imp: _Importer, fx: torch.fx.Node, lo: float, hi: float) -> None:
    imp.add(fx, Op.CLAMP, [imp.tensor(fx, fx.args[0])], {"min": float(lo), "max": float(hi)})


def _pool(imp: _Importer, fx: torch.fx.Node, m: nn.MaxPool1d | nn.MaxPool2d | nn.AvgPool1d | nn.AvgPool2d) -> None:
    kernel = _window(m, "kernel_size", 1)
    stride = _window(m, "stride", 1) if m.stride is not None else kernel
    padding = _window(m, "padding", 0)
    src = imp.tensor(fx, fx.args[0])
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    if m.ceil_mode:  # more windows at the end: a max pool pads there with -inf
        hw = imp.shapes[src][1:]
        pad_end = tuple(ceil_pad_end(hw[a], kernel[a], stride[a], padding[a]) for a in range(2))
        if pad_end != (0, 0) and not isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            raise imp.fail(fx, "ceil_mode=True adds windows to an average pool (their divisor is not the kernel area)",
                           "use ceil_mode=False (pad the input instead); max pooling takes ceil_mode")
        attrs |= {"pad_end": pad_end} if pad_end != (0, 0) else {}
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
        if _window(m, "dilation", 1) != (1, 1) or m.return_indices:
            raise imp.fail(fx, "dilated pooling or return_indices", "use dilation=1, return_indices=False")
        op = Op.MAXPOOL
    else:
        if getattr(m, "divisor_override", None) is not None or (not m.count_include_pad and padding != (0, 0)):
            raise imp.fail(fx, "average pooling whose divisor is not the kernel area",
                           "use count_include_pad=True and no divisor_override")
        op = Op.AVGPOOL
    imp.add(fx, op, [src], attrs)


def _global_pool(imp: _Importer, fx: torch.fx.Node, src: str, kind: str) -> None:
    """Global pooling of map ``src``: the average pool's own op, or a max pool whose window is the whole map."""
    if kind == "average":
        imp.add(fx, Op.GLOBAL_AVGPOOL, [src])
    else:
        hw = tuple(imp.shapes[src][1:])
        imp.add(fx, Op.MAXPOOL, [src], {"kernel": hw, "stride": hw, "padding": (0, 0)})


def _adaptive(imp: _Importer, fx: torch.fx.Node, m: nn.Module) -> None:
    """nn.AdaptiveAvgPool1d/2d, nn.AdaptiveMaxPool1d/2d (a 1-D one's output size L' is (1, L'))."""
    kind = "max" if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)) else "average"
    if kind == "max" and m.return_indices:
        raise imp.fail(fx, "adaptive max pooling that returns indices", "use return_indices=False")
    src = imp.tensor(fx, fx.args[0])
    size = m.output_size
    if isinstance(m, _MODULES_1D):
        size = (1, size if isinstance(size, int) or size is None else size[0])
    size = (size, size) if isinstance(size, int) else tuple(size)
    hw = imp.shapes[src][1:]
    size = tuple(h if s is None else s for s, h in zip(size, hw))
    if size == (1, 1):
        _global_pool(imp, fx, src, kind)
    elif size == hw:
        imp.same(fx, fx.args[0])
    elif all(h % s == 0 for h, s in zip(hw, size)):  # equal windows: a fixed pool, exactly
        window = tuple(h // s for h, s in zip(hw, size))
        imp.add(fx, Op.MAXPOOL if kind == "max" else Op.AVGPOOL, [src],
                {"kernel": window, "stride": window, "padding": (0, 0)})
    else:
        raise imp.fail(fx, f"adaptive {kind} pooling of a {hw} map to {size} (unequal windows)",
                       f"use an output size that divides the map, 1, or a fixed "
                       f"{'Max' if kind == 'max' else 'Avg'}Pool{'1d' if isinstance(m, _MODULES_1D) else '2d'}")


def _upsample(imp: _Importer, fx: torch.fx.Node, size: Any, scale: Any, mode: str, align_corners: Any,
              antialias: bool = False) -> None:
    """nn.Upsample / F.interpolate: nearest-neighbour or bilinear (``align_corners=False``) upsampling of
    an (N, C, H, W) map by integer factors."""
    src = imp.tensor(fx, fx.args[0])
    shape = imp.user_shape(src)
    if len(shape) != 3:
        raise imp.fail(fx, f"upsampling a tensor of shape {shape} (batch excluded)",
                       "upsample (N, C, H, W) maps only (2-D networks)")
    if mode == "bilinear" and align_corners and not antialias:
        raise imp.fail(fx, "mode='bilinear' with align_corners=True", BILINEAR_CORNERS_FIX)
    if mode not in ("nearest", "nearest-exact", "bilinear") or align_corners or antialias:
        raise imp.fail(fx, f"mode={mode!r}{' with align_corners' if align_corners else ''}"
                       f"{' with antialias' if antialias else ''}", UPSAMPLE_FIX)
    pair = (lambda v: None if v is None else (tuple(v) if isinstance(v, (tuple, list)) else (v, v)))
    factors, problem = upsample_factors(shape[1:], pair(scale), pair(_static_size(imp, fx, size)))
    if problem:
        raise imp.fail(fx, problem, UPSAMPLE_FIX)
    imp.add(fx, Op.UPSAMPLE, [src], {"scale": factors, **({"mode": "bilinear"} if mode == "bilinear" else {})})


def _upsample_module(imp: _Importer, fx: torch.fx.Node, m: nn.Upsample) -> None:
    _upsample(imp, fx, m.size, m.scale_factor, m.mode, m.align_corners)


def _interpolate(imp: _Importer, fx: torch.fx.Node) -> None:
    """F.interpolate(x, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)."""
    _upsample(imp, fx, _arg(fx, 1, "size", None), _arg(fx, 2, "scale_factor", None), _arg(fx, 3, "mode", "nearest"),
              _arg(fx, 4, "align_corners", None), bool(_arg(fx, 6, "antialias", False)))


def _pixel_shuffle(imp: _Importer, fx: torch.fx.Node, src: str, r: Any) -> None:
    """nn.PixelShuffle / F.pixel_shuffle: depth to space of an (N, C*r*r, H, W) map by block r."""
    shape = imp.user_shape(src)
    if len(shape) != 3 or not isinstance(r, int) or r < 1:
        raise imp.fail(fx, f"pixel shuffle by {r!r} of a tensor of shape {shape} (batch excluded)",
                       "shuffle (N, C*r*r, H, W) maps by a constant integer r >= 1")
    imp.add(fx, Op.DEPTH_TO_SPACE, [src], {"block": r})


def _conv_transpose(imp: _Importer, fx: torch.fx.Node, m: nn.ConvTranspose2d) -> None:
    """ConvTranspose2d with kernel == stride (U-Net's up-convolution): a 1x1 conv then depth to space."""
    problem = conv_transpose_problem(m.kernel_size, m.stride, _pair(m.padding), m.output_padding, m.dilation,
                                     m.groups)
    if problem is None and m.padding_mode != "zeros":
        problem = f"padding_mode={m.padding_mode!r}"
    if problem:
        raise imp.fail(fx, problem, CONV_TRANSPOSE_FIX)
    attrs, params, r = conv_transpose_as_conv(_np(m.weight), _np(m.bias))
    imp.add(fx, Op.CONV, [imp.tensor(fx, fx.args[0])], attrs, params)
    imp.add(fx, Op.DEPTH_TO_SPACE, [imp.alias[fx.name]], {"block": r})


def _flatten_module(imp: _Importer, fx: torch.fx.Node, m: nn.Flatten) -> None:
    if m.start_dim != 1 or m.end_dim != -1:
        raise imp.fail(fx, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})", "use nn.Flatten() defaults")
    if len(imp.shapes[imp.tensor(fx, fx.args[0])]) == 1:
        imp.same(fx, fx.args[0])
    else:
        imp.add(fx, Op.FLATTEN, [imp.tensor(fx, fx.args[0])])


def _activation(imp: _Importer, fx: torch.fx.Node, fn: str, alpha: Any = None) -> None:
    """An element-wise activation ``fn`` (:data:`imcflow.ir.activations.ACTIVATIONS`) of the node's
    input, with parameter ``alpha`` (LeakyReLU's negative slope, ELU's alpha) where it has one."""
    attrs = {"fn": fn} | ({} if alpha is None else {"alpha": float(alpha)})
    imp.add(fx, Op.ACTIVATION, [imp.tensor(fx, fx.args[0])], attrs)


def _gelu(imp: _Importer, fx: torch.fx.Node, approximate: Any) -> None:
    """nn.GELU / F.gelu: the erf form ('none') or the tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise imp.fail(fx, f"GELU approximate={approximate!r}", "use approximate='none' or 'tanh'")
    _activation(imp, fx, "gelu" if approximate == "none" else "gelu_tanh")


def _softplus(imp: _Importer, fx: torch.fx.Node, beta: Any, threshold: Any) -> None:
    """nn.Softplus / F.softplus with the defaults beta=1, threshold=20 only."""
    for key, value, default in (("beta", beta, 1.0), ("threshold", threshold, 20.0)):
        if value != default:
            raise imp.fail(fx, f"Softplus with {key}={value}",
                           f"use {key}={default:g} (the default; the chip's softplus is log(1 + exp(x)))")
    _activation(imp, fx, "softplus")


_MUL_FUNCTIONS = (operator.mul, operator.imul, torch.mul)


def _swish_mul(sig: torch.fx.Node) -> torch.fx.Node | None:
    """The multiply of ``x * sigmoid(x)`` (either order) when it is the sigmoid node ``sig``'s only user."""
    if len(sig.users) != 1 or sig.target == "sigmoid_":  # x.sigmoid_() overwrites x: x * it is not a SiLU
        return None
    mul = next(iter(sig.users))
    is_mul = (mul.op == "call_function" and mul.target in _MUL_FUNCTIONS) or \
        (mul.op == "call_method" and mul.target in ("mul", "mul_"))
    if not is_mul or len(mul.args) + len(mul.kwargs) != 2:
        return None
    operands = {id(mul.args[0]), id(_arg(mul, 1, "other", None))}
    return mul if operands == {id(sig), id(sig.args[0])} else None


def _sigmoid(imp: _Importer, fx: torch.fx.Node) -> None:
    """nn.Sigmoid / torch.sigmoid / F.sigmoid / ``.sigmoid()``: with ``x * sigmoid(x)`` one SiLU (the
    multiply makes it); as the last op over (N, classes) logits, left to the host; else an activation."""
    mul = _swish_mul(fx)
    if mul is not None:
        imp.swish[mul.name] = fx.args[0]
        imp.alias[fx.name] = ("swish", fx.args[0])
    elif len(imp.shapes[imp.tensor(fx, fx.args[0])]) == 1 and [u.op for u in fx.users] == ["output"]:
        _final_host_op(imp, fx, "sigmoid", 1)
    else:
        _activation(imp, fx, "sigmoid")


def _swish(imp: _Importer, fx: torch.fx.Node) -> None:
    """The multiply of ``x * sigmoid(x)``: one SiLU of x."""
    imp.add(fx, Op.ACTIVATION, [imp.tensor(fx, imp.swish[fx.name])], {"fn": "silu"})


_ACTIVATION_MODULES: dict[type, str] = {
    nn.PReLU: "PReLU", nn.SELU: "SELU", nn.CELU: "CELU", nn.Softsign: "Softsign", nn.Threshold: "Threshold",
    nn.RReLU: "RReLU", nn.LogSigmoid: "LogSigmoid", nn.Tanhshrink: "Tanhshrink", nn.Softshrink: "Softshrink",
    nn.Hardshrink: "Hardshrink", nn.GLU: "GLU"}
"""Activation modules the chip does not apply: refused with :func:`activation_fix`."""
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.prelu: "PReLU", F.selu: "SELU", F.celu: "CELU", F.softsign: "Softsign", F.threshold: "Threshold",
    F.rrelu: "RReLU", F.logsigmoid: "LogSigmoid", F.tanhshrink: "Tanhshrink", F.softshrink: "Softshrink",
    F.hardshrink: "Hardshrink", F.glu: "GLU"}

_MODULES_1D = (nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.ZeroPad1d,
               nn.ConstantPad1d)
"""Modules of 1-D networks: they read (N, C, L) tensors (the graph's (N, C, 1, L) maps)."""
_MODULES_2D = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d,
               nn.ConstantPad2d)

_MODULES: dict[type, Callable] = {
    nn.Conv1d: _conv,
    nn.MaxPool1d: _pool,
    nn.AvgPool1d: _pool,
    nn.AdaptiveAvgPool1d: _adaptive,
    nn.AdaptiveMaxPool1d: _adaptive,
    nn.ZeroPad1d: lambda imp, fx, m: _pad_module(imp, fx, m),
    nn.ConstantPad1d: lambda imp, fx, m: _pad_module(imp, fx, m),
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batchnorm,
    nn.BatchNorm1d: _batchnorm,
    nn.ReLU: lambda imp, fx, m: imp.add(fx, Op.RELU, [imp.tensor(fx, fx.args[0])]),
    nn.ReLU6: lambda imp, fx, m: _clamp(imp, fx, 0.0, 6.0),
    nn.Hardtanh: lambda imp, fx, m: _clamp(imp, fx, m.min_val, m.max_val),
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: _adaptive,
    nn.AdaptiveMaxPool2d: _adaptive,
    nn.Flatten: _flatten_module,
    nn.Upsample: _upsample_module,
    nn.UpsamplingNearest2d: _upsample_module,
    nn.UpsamplingBilinear2d: _upsample_module,
    nn.PixelShuffle: lambda imp, fx, m: _pixel_shuffle(imp, fx, imp.tensor(fx, fx.args[0]), m.upscale_factor),
    nn.ConvTranspose2d: _conv_transpose,
    nn.Identity: lambda imp, fx, m: imp.same(fx, fx.args[0]),
    nn.Dropout: lambda imp, fx, m: imp.same(fx, fx.args[0]),
    nn.Softmax: lambda imp, fx, m: _final_host_op(imp, fx, "softmax", m.dim),
    nn.LogSoftmax: lambda imp, fx, m: _final_host_op(imp, fx, "log_softmax", m.dim),
    nn.Sigmoid: lambda imp, fx, m: _sigmoid(imp, fx),
    nn.SiLU: lambda imp, fx, m: _activation(imp, fx, "silu"),
    nn.GELU: lambda imp, fx, m: _gelu(imp, fx, m.approximate),
    nn.Hardswish: lambda imp, fx, m: _activation(imp, fx, "hardswish"),
    nn.Hardsigmoid: lambda imp, fx, m: _activation(imp, fx, "hardsigmoid"),
    nn.Mish: lambda imp, fx, m: _activation(imp, fx, "mish"),
    nn.Tanh: lambda imp, fx, m: _activation(imp, fx, "tanh"),
    nn.LeakyReLU: lambda imp, fx, m: _activation(imp, fx, "leaky_relu", m.negative_slope),
    nn.ELU: lambda imp, fx, m: _activation(imp, fx, "elu", m.alpha),
    nn.Softplus: lambda imp, fx, m: _softplus(imp, fx, m.beta, m.threshold),
    nn.Dropout2d: lambda imp, fx, m: imp.same(fx, fx.args[0]),
    nn.ZeroPad2d: lambda imp, fx, m: _pad_module(imp, fx, m),
    nn.ConstantPad2d: lambda imp, fx, m: _pad_module(imp, fx, m),
}


# --- functions --------------------------------------------------------------------------------

def _arg(fx: torch.fx.Node, i: int, key: str, default: Any) -> Any:
    return fx.args[i] if len(fx.args) > i else fx.kwargs.get(key, default)


def _constant(imp: _Importer, arg: Any) -> np.ndarray | None:
    """``arg`` as an array when it is a number or a buffer/parameter (or arithmetic of them)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return np.asarray(float(arg))
    entry = imp.alias.get(arg.name) if isinstance(arg, torch.fx.Node) else None
    return entry[1] if isinstance(entry, tuple) and entry[0] == "const" else None


_METHOD_ARITH = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                 "div": "div", "div_": "div"}


def _arith(imp: _Importer, fx: torch.fx.Node, kind: str) -> None:
    """``a (+ - * /) b`` where one side is a constant: a per-channel affine (a batch norm that
    normalisation folds or lowers); both constant: a constant; both activations: only + is a layer."""
    if fx.name in imp.swish:
        _swish(imp, fx)
        return
    if kind == "div" and _arg(fx, 2, "rounding_mode", None) is not None:
        raise imp.fail(fx, "division with a rounding mode", "use true division")
    if kind in ("add", "sub") and _arg(fx, 2, "alpha", 1) != 1:
        raise imp.fail(fx, f"{kind} with alpha != 1", "scale the operand with a layer instead")
    a, b = fx.args[0], _arg(fx, 1, "other", None)
    if kind in ("add", "sub", "mul") and _size_arith(imp, fx, a, b, ARITH[kind]):
        return
    ca, cb = _constant(imp, a), _constant(imp, b)
    if ca is not None and cb is not None:
        imp.alias[fx.name] = ("const", ARITH[kind](ca, cb))
        return
    if ca is None and cb is None:
        if kind == "add":
            imp.add(fx, Op.ADD, [imp.tensor(fx, a), imp.tensor(fx, b)])
            return
        raise imp.fail(fx, f"{kind} of two activations (an element-wise product or quotient of tensors)",
                       "the chip multiplies activations only by weights; use a layer, or + for residual connections "
                       "(x * torch.sigmoid(x) of one tensor x, a SiLU, is taken when the sigmoid has no other user)")
    x = imp.tensor(fx, b if ca is not None else a)
    where = f"node {fx.name!r} ({_op_name(imp, fx)})"
    c = channel_constant(ca if ca is not None else cb, imp.user_shape(x), where)
    params = affine_params(kind, c, constant_first=ca is not None, where=where)
    imp.add(fx, Op.BATCHNORM, [x], {"eps": 0.0, "source_op": kind}, params)


def _cat(imp: _Importer, fx: torch.fx.Node) -> None:
    tensors = _arg(fx, 0, "tensors", ())
    dim = _arg(fx, 1, "dim", 0)
    inputs = [imp.tensor(fx, t) for t in tensors]
    if not inputs or dim % (len(imp.user_shape(inputs[0])) + 1) != 1:
        raise imp.fail(fx, f"concatenation along dim {dim}", "concatenate along channels (dim=1)")
    if any(len(imp.shapes[i]) != 3 for i in inputs):
        raise imp.fail(fx, "concatenation of non-feature-map tensors", "concatenate (N, C, H, W) feature maps")
    imp.add(fx, Op.CONCAT, inputs, {"axis": 0})


def _clamp_fn(imp: _Importer, fx: torch.fx.Node) -> None:
    """torch.clamp / Tensor.clamp / clip / clamp_min with a lower bound (a ReLU-like clamp)."""
    lo = _arg(fx, 1, "min", None)
    hi = None if fx.target == "clamp_min" else _arg(fx, 2, "max", None)
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float, type(None))):
        raise imp.fail(fx, f"clamp(min={lo}, max={hi})", "give a constant lower bound (and optionally a constant "
                       "upper bound), e.g. clamp(min=0) or clamp(0, 6)")
    _clamp(imp, fx, lo, math.inf if hi is None else hi)


def _getattr(imp: _Importer, fx: torch.fx.Node) -> None:
    """``x.shape``: the sizes, for ``x.view(x.shape[0], -1)``."""
    if fx.args[1] != "shape":
        raise imp.fail(fx, f"attribute .{fx.args[1]} of a tensor", "only x.shape[0] (the batch) is supported")
    imp.alias[fx.name] = ("sizes", fx.args[0])


def _getitem(imp: _Importer, fx: torch.fx.Node) -> None:
    """``x.shape[0]`` / ``x.size()[0]``: the batch size (for a flatten); ``x[:, c0:c1, ::s, ::s]``:
    a channel selection and/or subsample, as a 1x1 layer (:func:`slice_layer`)."""
    base, index = fx.args
    entry = imp.alias.get(base.name) if isinstance(base, torch.fx.Node) else None
    if isinstance(entry, str):
        _slice_tensor(imp, fx, entry, index if isinstance(index, tuple) else (index,))
        return
    if isinstance(entry, tuple) and entry[0] == "parts" and isinstance(index, int):
        x, (c0, c1) = entry[1], entry[2][index]
        _move_layer(imp, fx, x, channel_selection(imp.shapes[x], c0, c1, f"node {fx.name!r} ({_op_name(imp, fx)})"))
        return
    if isinstance(entry, tuple) and entry[0] == "sizes" and isinstance(index, slice):
        imp.alias[fx.name] = ("size_slice", entry[1], index)   # x.shape[2:], for a pooling window
        return
    if not (isinstance(entry, tuple) and entry[0] == "sizes" and isinstance(index, int)):
        raise imp.fail(fx, "indexing", "only x.shape[0] or x.size()[0] (the batch, for a flatten), or feature "
                       "sizes as a pooling window (x.shape[2:], x.size(3)), are supported")
    imp.alias[fx.name] = ("size", entry[1], index)



def _slice_tensor(imp: _Importer, fx: torch.fx.Node, x: str, index: tuple) -> None:
    full = (1, *imp.user_shape(x))
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(full) - len(index) + 1) + index[k + 1:]
    if len(index) > len(full) or not all(isinstance(i, slice) for i in index):
        raise imp.fail(fx, f"indexing a {full} tensor with {index}", "only slices (x[:, c0:c1, ::s, ::s]) map to the "
                       "chip: an integer index or None changes the rank")
    index = index + (slice(None),) * (len(full) - len(index))
    if (index[0].start, index[0].stop, index[0].step) not in ((None, None, None), (0, None, None), (0, None, 1)):
        raise imp.fail(fx, "slices the batch axis", "slice only channels or subsample H and W")
    keep = [list(range(*i.indices(size))) for i, size in zip(index, full)]
    if full[1:] != imp.shapes[x]:  # a 1-D network's (N, C, L) tensor: its map's one row
        keep = per_axis_of_1d(keep, [0])
    _move_layer(imp, fx, x, slice_layer(imp.shapes[x], keep[1:], f"node {fx.name!r} ({_op_name(imp, fx)})"))



def _split(imp: _Importer, fx: torch.fx.Node, how: str) -> None:
    """``torch.chunk(x, n, dim=1)`` / ``torch.split(x, size or sizes, dim=1)`` of a map's channels:
    the parts, each taken by indexing, become channel-selection layers."""
    x = imp.tensor(fx, fx.args[0])
    spec = _arg(fx, 1, "chunks" if how == "chunk" else "split_size_or_sections", None)
    dim = _arg(fx, 2, "dim", 0)
    if len(imp.shapes[x]) != 3 or dim % (len(imp.user_shape(x)) + 1) != 1:
        raise imp.fail(fx, f"{how} along dim {dim} of a {(1, *imp.user_shape(x))} tensor",
                       "split (N, C, H, W) maps along the channels (dim=1) only")
    c = imp.shapes[x][0]
    if how == "chunk":
        sizes = split_sizes(c, -(-c // spec))
    else:
        sizes = list(spec) if isinstance(spec, (list, tuple)) else split_sizes(c, spec)
    if sum(sizes) != c or min(sizes) <= 0:
        raise imp.fail(fx, f"{how} sizes {sizes} of {c} channels", "give sizes that add up to the channels")
    ends = np.cumsum(sizes).tolist()
    imp.alias[fx.name] = ("parts", x, list(zip([0, *ends[:-1]], ends)))

def _pad_fn(imp: _Importer, fx: torch.fx.Node) -> None:
    """``F.pad(x, pad, mode, value)``: zero channels around a map (the option-A shortcut of CIFAR
    ResNets) and symmetric zero padding of H and W, as a 1x1 layer (:func:`pad_layer`)."""
    value = _arg(fx, 3, "value", None)
    _pad(imp, fx, tuple(_arg(fx, 1, "pad", ())), _arg(fx, 2, "mode", "constant"), 0.0 if value is None else value)


def _pad_module(imp: _Importer, fx: torch.fx.Node, m: nn.Module) -> None:
    """nn.ZeroPad1d/2d, nn.ConstantPad1d/2d."""
    _pad(imp, fx, tuple(m.padding), "constant", float(m.value))


def _pad(imp: _Importer, fx: torch.fx.Node, pad: tuple, mode: str, value: Any) -> None:
    x = imp.tensor(fx, fx.args[0])
    full = (1, *imp.user_shape(x))
    if len(pad) % 2 or len(pad) > 2 * len(full) or not all(isinstance(v, int) for v in pad):
        raise imp.fail(fx, f"pad {pad}", "give integer (before, after) pairs, last axis first")
    per_axis = [(0, 0)] * len(full)
    for k in range(len(pad) // 2):
        per_axis[len(full) - 1 - k] = (pad[2 * k], pad[2 * k + 1])
    if full[1:] != imp.shapes[x]:  # a 1-D network's (N, C, L) tensor: its map's height is not padded
        per_axis = per_axis_of_1d(per_axis, (0, 0))
    where = f"node {fx.name!r} ({_op_name(imp, fx)})"
    _move_layer(imp, fx, x, pad_layer(imp.shapes[x], per_axis, float(value), mode, where))


def _move_layer(imp: _Importer, fx: torch.fx.Node, x: str, layer: tuple[dict, dict] | None) -> None:
    if layer is None:
        imp.alias[fx.name] = x
    else:
        imp.add(fx, Op.CONV, [x], *layer)

def _hardtanh(imp: _Importer, fx: torch.fx.Node) -> None:
    _clamp(imp, fx, _arg(fx, 1, "min_val", -1.0), _arg(fx, 2, "max_val", 1.0))


def _relu(imp: _Importer, fx: torch.fx.Node) -> None:
    imp.add(fx, Op.RELU, [imp.tensor(fx, fx.args[0])])


def _pool_fn(cls: type) -> Callable:
    """F.max_pool1d/2d / F.avg_pool1d/2d, checked like the modules (``cls``)."""
    def handler(imp: _Importer, fx: torch.fx.Node) -> None:
        kernel = _static_size(imp, fx, _arg(fx, 1, "kernel_size", None))
        stride = _static_size(imp, fx, _arg(fx, 2, "stride", None))
        kwargs = {k: v for k, v in fx.kwargs.items() if k not in ("input", "kernel_size", "stride")}
        names = ("padding", "dilation", "ceil_mode", "return_indices") if cls in (nn.MaxPool1d, nn.MaxPool2d) else \
            ("padding", "ceil_mode", "count_include_pad", "divisor_override")
        kwargs.update(dict(zip(names, fx.args[3:])))
        m = cls(kernel, stride or None, **kwargs)
        imp.check_dims(fx, m)
        _pool(imp, fx, m)
    return handler


def _static_size(imp: _Importer, fx: torch.fx.Node, arg: Any) -> Any:
    """``arg`` with ``x.size(k)`` / ``x.shape[k]`` / ``x.size()[k]`` of a feature axis (k > 0), or the
    feature sizes ``x.shape[2:]``, replaced by static sizes (the input shape is fixed), as in
    ``F.avg_pool2d(x, x.size()[3])`` or ``F.avg_pool2d(x, x.shape[2:])``."""
    if isinstance(arg, (tuple, list)):
        return type(arg)(_static_size(imp, fx, a) for a in arg)
    entry = imp.alias.get(arg.name) if isinstance(arg, torch.fx.Node) else None
    if isinstance(entry, tuple) and entry[0] == "int":  # shape arithmetic, e.g. C // groups
        return entry[1]
    if not (isinstance(entry, tuple) and entry[0] in ("size", "size_slice")):
        return arg
    full = (None, *imp.user_shape(imp.tensor(fx, entry[1])))
    if entry[0] == "size_slice":  # x.shape[2:]
        dims = range(len(full))[entry[2]]
        if 0 in dims or not dims:
            raise imp.fail(fx, f"a window size given by x.shape[{_slice_text(entry[2])}]",
                           "give the pooling window the feature-map sizes (x.shape[2:]) or numbers")
        return tuple(full[d] for d in dims)
    dim = entry[2] + len(full) if entry[2] < 0 else entry[2]
    if not 0 < dim < len(full):
        raise imp.fail(fx, f"a window size given by {'the batch size' if dim == 0 else f'axis {entry[2]}'}",
                       "give the pooling window a feature-map size (x.size(2) or x.size(3)) or a number")
    return full[dim]


def _is_size(imp: _Importer, v: Any) -> bool:
    """``v`` is a feature size (``x.size(k)``, k > 0) or arithmetic on feature sizes."""
    entry = imp.alias.get(v.name) if isinstance(v, torch.fx.Node) else None
    return isinstance(entry, tuple) and (entry[0] == "int" or (entry[0] == "size" and entry[2] not in (0, -4)))


def _size_arith(imp: _Importer, fx: torch.fx.Node, a: Any, b: Any, fn: Callable) -> bool:
    """Arithmetic on static feature sizes (``C // groups``, ``h * w``), evaluated; False if it is not that."""
    if not (_is_size(imp, a) or _is_size(imp, b)):
        return False
    va, vb = _static_size(imp, fx, a), _static_size(imp, fx, b)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (va, vb)):
        return False
    value = fn(va, vb)
    if value is None:
        return False
    imp.alias[fx.name] = ("int", int(value))
    return True


def _floordiv(imp: _Importer, fx: torch.fx.Node) -> None:
    """``C // groups`` of static feature sizes (as channel shuffles compute a group's width)."""
    if not _size_arith(imp, fx, fx.args[0], fx.args[1], lambda p, q: p // q if q > 0 else None):
        raise imp.fail(fx, f"floor division {fx.args[0]} // {fx.args[1]}",
                       "divide only static feature sizes by a number (x.size(1) // groups), not tensors or the batch")


def _group_channels(imp: _Importer, fx: torch.fx.Node, src: str) -> None:
    """``x.view(N, g, C // g, H, W)`` of a (C, H, W) map: the first step of a channel shuffle, pending."""
    target, shape = imp.view_target(fx), imp.shapes[src]
    c, (g, k) = shape[0], target[1:3]
    if g == -1 and isinstance(k, int) and k > 0:  # x.view(N, -1, C // g, H, W)
        g = c // k
    elif k == -1 and isinstance(g, int) and g > 0:  # x.view(N, g, -1, H, W)
        k = c // g
    if len(imp.user_shape(src)) != 3 or not (isinstance(g, int) and isinstance(k, int) and g * k == c
                                             and tuple(target[3:]) == tuple(shape[1:])):
        raise imp.fail(fx, f"view of a {(1, *imp.user_shape(src))} tensor as {target}",
                       "a rank-5 view maps to the chip only as the channel grouping of a channel shuffle, "
                       "x.view(N, groups, C // groups, H, W), followed by transpose(1, 2) and a view back")
    imp.alias[fx.name] = ("grouped", src, g)


def _transpose(imp: _Importer, fx: torch.fx.Node) -> None:
    """``transpose(1, 2)`` / ``permute(0, 2, 1, 3, 4)`` of a channel grouping: the shuffle, pending."""
    pending = imp.alias.get(fx.args[0].name) if isinstance(fx.args[0], torch.fx.Node) else None
    dims = tuple(fx.args[1:]) if len(fx.args) > 1 else tuple(fx.kwargs.get("dims", (fx.kwargs.get("dim0"),
                                                                                      fx.kwargs.get("dim1"))))
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    swaps = dims in ((1, 2), (2, 1), (0, 2, 1, 3, 4), (-4, -3), (-3, -4))
    if not (isinstance(pending, tuple) and pending[0] == "grouped" and swaps):
        what = f"unsupported tensor method .{fx.target}()" if fx.op == "call_method" else "unsupported function"
        raise imp.fail(fx, f"{what}: transpose/permute {dims} of an activation",
                       "only the channel shuffle's transpose(1, 2) of x.view(N, groups, C // groups, H, W) maps to "
                       "the chip")
    imp.alias[fx.name] = ("shuffled", pending[1], pending[2])


def _ungroup(imp: _Importer, fx: torch.fx.Node, how: str, pending: tuple) -> None:
    """The view back to (N, C, H, W) that ends a channel grouping: the identity, or after the
    transpose the channel shuffle (:func:`channel_shuffle`)."""
    kind, src, groups = pending
    c, h, w = imp.shapes[src]
    if how == "flatten":
        start = _arg(fx, 1, "start_dim", 0)
        end = _arg(fx, 2, "end_dim", -1)
        ok = (start, end) in ((1, 2), (-4, -3), (1, -3))
    else:
        target = imp.view_target(fx)
        ok = len(target) == 4 and imp.is_batch(target[0]) and target[1] in (-1, c) and tuple(target[2:]) == (h, w)
    if not ok:
        raise imp.fail(fx, f"{how} of a channel grouping of a {(1, c, h, w)} map to other than (N, C, H, W)",
                       "view the (N, groups, C // groups, H, W) tensor back to (N, C, H, W) (x.view(N, -1, H, W))")
    if kind == "grouped":
        imp.alias[fx.name] = src
    else:
        _move_layer(imp, fx, src, channel_shuffle(imp.shapes[src], groups, f"node {fx.name!r} ({_op_name(imp, fx)})"))


def _slice_text(s: slice) -> str:
    return ":".join("" if v is None else str(v) for v in (s.start, s.stop)) + ("" if s.step is None else f":{s.step}")


def _adaptive_fn(cls: type) -> Callable:
    def handler(imp: _Importer, fx: torch.fx.Node) -> None:
        m = cls(_arg(fx, 1, "output_size", None))
        imp.check_dims(fx, m)
        _adaptive(imp, fx, m)
    return handler


def _spatial_reduce(kind: str) -> Callable:
    """torch.mean / torch.amax / torch.sum (or the methods) over the spatial dims (2, 3), or dim 2 of a
    1-D network's (N, C, L) tensor: global average / max pooling (a sum is the average times the
    map's area, a per-channel scale after it), then a flatten unless keepdim."""
    what = {"average": "mean", "max": "amax", "sum": "sum"}[kind]

    def handler(imp: _Importer, fx: torch.fx.Node) -> None:
        src = imp.tensor(fx, fx.args[0])
        dims = _arg(fx, 1, "dim", None)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        keep = bool(_arg(fx, 2, "keepdim", False))
        rank = len(imp.user_shape(src)) + 1
        if len(imp.shapes[src]) != 3 or sorted(d % rank for d in dims) != list(range(2, rank)):
            raise imp.fail(fx, f"{what} over dims {dims} of a rank-{rank} tensor",
                           f"reduce over the spatial dims (2, 3) of an NCHW map, or dim 2 (-1) of an (N, C, L) "
                           f"tensor, only (a global {kind} pool)")
        _global_pool(imp, fx, src, "max" if kind == "max" else "average")
        if kind == "sum":
            area = np.full(imp.shapes[src][0], float(math.prod(imp.shapes[src][1:])))
            params = affine_params("mul", area, constant_first=False, where=f"node {fx.name!r}")
            imp.add(fx, Op.BATCHNORM, [imp.alias[fx.name]], {"eps": 0.0, "source_op": "mul"}, params)
        if not keep:
            imp.add(fx, Op.FLATTEN, [imp.alias[fx.name]])
    return handler


def _squeeze(imp: _Importer, fx: torch.fx.Node) -> None:
    """``x.squeeze(...)`` / ``torch.squeeze``: only an (N, C, 1, 1) map to (N, C), i.e. a flatten."""
    partial = imp.squeezed(fx.args[0])
    if partial:
        src, shape = partial[1], partial[2]
    else:
        src = imp.tensor(fx, fx.args[0])
        shape = imp.user_shape(src)
    dims = _arg(fx, 1, "dim", None)
    dims = [dims] if isinstance(dims, int) else (None if dims is None else list(dims))
    out, problem = squeeze_shape(shape, dims)
    if problem:
        raise imp.fail(fx, problem, "only squeezing an (N, C, 1, 1) map (or an (N, C, 1) tensor) to (N, C) "
                       "(a flatten) is supported")
    if len(out) > 1:  # part-way, as x.squeeze(-1).squeeze(-1) goes: the next squeeze finishes it
        imp.alias[fx.name] = ("squeezed", src, out)
    elif len(imp.shapes[src]) == 1:
        imp.alias[fx.name] = src
    else:
        imp.add(fx, Op.FLATTEN, [src])


_mean = _spatial_reduce("average")
_amax = _spatial_reduce("max")
_sum = _spatial_reduce("sum")


def _final_host_op(imp: _Importer, fx: torch.fx.Node, what: str, dim: Any) -> None:
    """A softmax, log_softmax or sigmoid over the classes as the network's last op: not a chip op; the
    graph ends at its input (the logits: their order is kept, so the same top-1) and
    ``meta["host_output"]`` says so (see :func:`host_output_note`)."""
    src = imp.tensor(fx, fx.args[0])
    if len(imp.shapes[src]) != 1 or dim not in (1, -1):
        raise imp.fail(fx, f"{what} over dim {dim} of a rank-{len(imp.shapes[src]) + 1} tensor",
                       f"only a final {what} over the classes of (N, classes) logits is taken (it runs on the host)")
    if [u.op for u in fx.users] != ["output"]:
        raise imp.fail(fx, f"{what} feeds other layers", f"the chip has no {what}: only a final one is taken "
                       "(it runs on the host); remove it from the middle of the network")
    imp.same(fx, fx.args[0])
    imp.meta["host_output"] = host_output_note(what, fx.name)


def _dropout(imp: _Importer, fx: torch.fx.Node) -> None:
    imp.same(fx, fx.args[0])


_FUNCTIONS: dict[Any, Callable] = {
    operator.add: lambda imp, fx: _arith(imp, fx, "add"),
    operator.sub: lambda imp, fx: _arith(imp, fx, "sub"),
    operator.isub: lambda imp, fx: _arith(imp, fx, "sub"),
    torch.sub: lambda imp, fx: _arith(imp, fx, "sub"),
    operator.mul: lambda imp, fx: _arith(imp, fx, "mul"),
    operator.imul: lambda imp, fx: _arith(imp, fx, "mul"),
    torch.mul: lambda imp, fx: _arith(imp, fx, "mul"),
    operator.truediv: lambda imp, fx: _arith(imp, fx, "div"),
    operator.itruediv: lambda imp, fx: _arith(imp, fx, "div"),
    torch.div: lambda imp, fx: _arith(imp, fx, "div"),
    operator.getitem: _getitem,
    operator.floordiv: _floordiv,
    torch.transpose: _transpose,
    torch.permute: _transpose,
    getattr: _getattr,
    torch.clamp: _clamp_fn,
    torch.clip: _clamp_fn,
    operator.iadd: lambda imp, fx: _arith(imp, fx, "add"),
    torch.add: lambda imp, fx: _arith(imp, fx, "add"),
    torch.cat: _cat,
    F.interpolate: _interpolate,
    F.upsample: _interpolate,
    F.upsample_nearest: lambda imp, fx: _upsample(imp, fx, _arg(fx, 1, "size", None),
                                                  _arg(fx, 2, "scale_factor", None), "nearest", None),
    torch.concat: _cat,
    F.pixel_shuffle: lambda imp, fx: _pixel_shuffle(imp, fx, imp.tensor(fx, fx.args[0]),
                                                    _arg(fx, 1, "upscale_factor", None)),
    torch.pixel_shuffle: lambda imp, fx: _pixel_shuffle(imp, fx, imp.tensor(fx, fx.args[0]),
                                                        _arg(fx, 1, "upscale_factor", None)),
    torch.relu: _relu,
    F.relu: _relu,
    F.relu6: lambda imp, fx: _clamp(imp, fx, 0.0, 6.0),
    F.hardtanh: _hardtanh,
    torch.flatten: lambda imp, fx: imp.reshape(fx, "flatten"),
    torch.reshape: lambda imp, fx: imp.reshape(fx, "reshape"),
    F.dropout: _dropout,
    F.max_pool1d: _pool_fn(nn.MaxPool1d),
    F.avg_pool1d: _pool_fn(nn.AvgPool1d),
    F.max_pool2d: _pool_fn(nn.MaxPool2d),
    F.avg_pool2d: _pool_fn(nn.AvgPool2d),
    F.adaptive_avg_pool1d: _adaptive_fn(nn.AdaptiveAvgPool1d),
    F.adaptive_max_pool1d: _adaptive_fn(nn.AdaptiveMaxPool1d),
    F.adaptive_avg_pool2d: _adaptive_fn(nn.AdaptiveAvgPool2d),
    F.adaptive_max_pool2d: _adaptive_fn(nn.AdaptiveMaxPool2d),
    torch.mean: _mean,
    torch.amax: _amax,
    torch.sum: _sum,
    F.softmax: lambda imp, fx: _final_host_op(imp, fx, "softmax", _arg(fx, 1, "dim", None)),
    torch.softmax: lambda imp, fx: _final_host_op(imp, fx, "softmax", _arg(fx, 1, "dim", None)),
    F.log_softmax: lambda imp, fx: _final_host_op(imp, fx, "log_softmax", _arg(fx, 1, "dim", None)),
    torch.log_softmax: lambda imp, fx: _final_host_op(imp, fx, "log_softmax", _arg(fx, 1, "dim", None)),
    torch.sigmoid: _sigmoid,
    torch.squeeze: _squeeze,
    F.pad: _pad_fn,
    torch.chunk: lambda imp, fx: _split(imp, fx, "chunk"),
    torch.split: lambda imp, fx: _split(imp, fx, "split"),
    F.sigmoid: _sigmoid,
    F.silu: lambda imp, fx: _activation(imp, fx, "silu"),
    F.gelu: lambda imp, fx: _gelu(imp, fx, _arg(fx, 1, "approximate", "none")),
    F.hardswish: lambda imp, fx: _activation(imp, fx, "hardswish"),
    F.hardsigmoid: lambda imp, fx: _activation(imp, fx, "hardsigmoid"),
    F.mish: lambda imp, fx: _activation(imp, fx, "mish"),
    torch.tanh: lambda imp, fx: _activation(imp, fx, "tanh"),
    F.tanh: lambda imp, fx: _activation(imp, fx, "tanh"),
    F.leaky_relu: lambda imp, fx: _activation(imp, fx, "leaky_relu", _arg(fx, 1, "negative_slope", 0.01)),
    F.leaky_relu_: lambda imp, fx: _activation(imp, fx, "leaky_relu", _arg(fx, 1, "negative_slope", 0.01)),
    F.elu: lambda imp, fx: _activation(imp, fx, "elu", _arg(fx, 1, "alpha", 1.0)),
    F.elu_: lambda imp, fx: _activation(imp, fx, "elu", _arg(fx, 1, "alpha", 1.0)),
    F.softplus: lambda imp, fx: _softplus(imp, fx, _arg(fx, 1, "beta", 1.0), _arg(fx, 2, "threshold", 20.0)),
}
