"""Normalisation: the canonical float Graph the quantiser consumes.

Passes, in order (each a small function from Graph to Graph):

1. :func:`fold_batchnorm` - batch norm folded into the conv/linear layer that feeds it:
   ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``;
   one with no such layer (pre-activation blocks, after the input, an add or a pool) becomes a 1x1
   convolution (linear for vectors) with a diagonal weight, unless it is a pure per-channel scale
   read only by a conv/linear layer, which then takes the scale into its input channels (exact:
   zero padding stays zero). The importers give per-channel constant arithmetic (``x - mean``,
   ``x / std``, ``x * 2``) as such batch norms (:func:`affine_params`).
2. :func:`fuse_lowered_convs` - the 1x1 convolutions the importers make for tensor slicing and
   channel padding (:func:`slice_layer`, :func:`pad_layer`; e.g. the option-A shortcut of
   CIFAR ResNets, ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``) fused when one feeds the other
   (one 1x1 layer with a 0/1 weight), and a stride-1 one moved into the conv that alone reads it
   (``nn.ZeroPad2d(1)`` before an unpadded conv: that conv with padding 1).
3. :func:`remove_identities` - ops that do nothing dropped: 1x1 stride-1 unpadded pooling, global
   pooling of a 1x1 map, flatten of a flat tensor (consecutive flattens fused), a ReLU of a ReLU,
   single-input concat; ``clamp(0, inf)`` becomes ``relu``.

The result contains only conv/linear, relu/clamp, pooling, add, flatten and concat
(:data:`imcflow.ir.graph.NORMALIZED_OPS`) and computes the same function up to float rounding.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from imcflow.errors import ModelError
from imcflow.ir.graph import Graph, Node, Op, WEIGHT_OPS


def normalize(graph: Graph) -> Graph:
    """``graph`` with batch norm folded, identity ops removed and activations moved before pure
    data movements (:func:`activations_before_moves`); verified."""
    graph.verify()
    out = activations_before_moves(remove_identities(fuse_lowered_convs(fold_batchnorm(graph))))
    out = dataclasses.replace(out, meta={**out.meta, "normalized": True})
    out.verify()
    return out


def dense_grouped_weight(weight: np.ndarray, groups: int, where: str) -> np.ndarray:
    """A grouped convolution's weight ``(Cout, Cin / groups, kh, kw)`` as the equivalent dense
    ``(Cout, Cin, kh, kw)`` weight: block-diagonal, zero outside each group's channels.

    The chip has no grouped mode; the dense form computes the same function exactly, at the cost
    of array rows (a 3x3 depthwise layer over C channels drives 9C rows for 9 useful weights per
    column). ``where`` names the layer in errors."""
    c_out, c_in_g = int(weight.shape[0]), int(weight.shape[1])
    if groups < 1 or c_out % groups:
        raise ModelError(f"{where}: {c_out} output channels do not split into {groups} groups; "
                         "use a group count that divides the output channels")
    out_g = c_out // groups
    dense = np.zeros((c_out, c_in_g * groups, *weight.shape[2:]), dtype=np.float32)
    for g in range(groups):
        dense[g * out_g:(g + 1) * out_g, g * c_in_g:(g + 1) * c_in_g] = weight[g * out_g:(g + 1) * out_g]
    return dense


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every batchnorm node into the conv/linear node that produces its input; one that cannot
    be folded becomes its own per-channel layer (:func:`_standalone`)."""
    nodes = {n.name: n for n in graph.nodes}
    renames: dict[str, str] = {}
    for bn in graph.nodes:
        if bn.op is not Op.BATCHNORM:
            continue
        src = nodes.get(bn.inputs[0])
        foldable = src is not None and src.op in WEIGHT_OPS and src.name != graph.output \
            and [c.name for c in graph.consumers(src.name)] == [bn.name]
        if not foldable:  # after the input, a pool or an add, or its producer's output is also used raw
            dst = _scale_target(bn, graph, nodes)
            if dst is not None:
                nodes[dst.name] = _prescaled(dst, _bn_scale(bn))
                del nodes[bn.name]
                renames[bn.name] = bn.inputs[0]
            else:
                nodes[bn.name] = _standalone(bn, graph.shape(bn.inputs[0]))
            continue
        nodes[src.name] = _folded(src, bn)
        del nodes[bn.name]
        renames[bn.name] = src.name
    return _rebuild(graph, [nodes[n.name] for n in graph.nodes if n.name in nodes], renames)


LOWERED_MOVES = ("slice", "pad", "shuffle")
"""``lowered_from`` of the 1x1 layers that only move values (selection / embedding weights)."""


def slice_layer(shape: tuple[int, ...], index: list[list[int]], where: str) -> tuple[dict, dict] | None:
    """A slice of an activation of ``shape`` ((C, H, W), batch excluded) that keeps ``index[a]``
    along each axis, as the attrs and params of a 1x1 conv: any channel selection is a 0/1 weight,
    a spatial slice must be a subsample (``range(0, size, step)``: a stride). None for the identity;
    a crop or an offset subsample is refused by name (``where``)."""
    if len(shape) != 3:
        raise ModelError(f"{where}: slicing a {shape} tensor (batch excluded); only (N, C, H, W) maps are sliced")
    strides = []
    for axis, (size, keep) in enumerate(zip(shape[1:], index[1:]), start=2):
        step = keep[1] - keep[0] if len(keep) > 1 else size
        if not keep or keep != list(range(0, size, step)):
            raise ModelError(f"{where}: slicing axis {axis} (size {size}) to indices {_brief(keep)}; only "
                             f"subsampling from index 0 (x[:, :, ::s, ::s]) maps to the chip (a strided 1x1 "
                             f"layer): crop in the data pipeline or use a strided conv/pool")
        strides.append(max(step, 1))
    channels = index[0]
    if channels == list(range(shape[0])) and strides == [1, 1]:
        return None
    weight = np.zeros((len(channels), shape[0], 1, 1), np.float32)
    weight[np.arange(len(channels)), channels] = 1.0
    attrs = {"kernel": (1, 1), "stride": tuple(strides), "padding": (0, 0), "lowered_from": "slice"}
    return attrs, {"weight": weight}


def channel_selection(shape: tuple[int, ...], c0: int, c1: int, where: str) -> tuple[dict, dict] | None:
    """:func:`slice_layer` keeping channels ``[c0, c1)`` of a map of ``shape`` (C, H, W), all pixels."""
    return slice_layer(shape, [list(range(c0, c1)), list(range(shape[1])), list(range(shape[2]))], where)


def channel_shuffle(shape: tuple[int, ...], groups: int, where: str) -> tuple[dict, dict] | None:
    """ShuffleNet's channel shuffle (Zhang et al. 2018) of a map of ``shape`` (C, H, W): viewed as
    (groups, C / groups, H, W), the two group axes swapped, viewed back. Output channel
    ``i * groups + j`` is input channel ``j * C / groups + i``: a 1x1 layer with a 0/1 permutation
    weight, which normalisation contracts into the layers that read it. None for one group or
    one channel per group (the identity)."""
    c = shape[0]
    k = c // groups
    perm = [j * k + i for i in range(k) for j in range(groups)]
    layer = slice_layer(shape, [perm, list(range(shape[1])), list(range(shape[2]))], where)
    return None if layer is None else (layer[0] | {"lowered_from": "shuffle"}, layer[1])


def split_sizes(channels: int, part: int) -> list[int]:
    """Sizes of the parts of ``channels`` cut every ``part`` channels (the last may be smaller), as
    ``torch.split``, ``torch.chunk`` (``part = ceil(C / n)``) and ONNX Split into equal parts cut."""
    return [min(part, channels - k) for k in range(0, channels, part)]


def pad_layer(shape: tuple[int, ...], pads: list[tuple[int, int]], value: float, mode: str,
              where: str) -> tuple[dict, dict] | None:
    """Zero padding of an activation of ``shape`` ((C, H, W), batch excluded) by ``pads[a] =
    (before, after)`` per axis (batch first) as a 1x1 layer: zero channels are an embedding weight,
    symmetric spatial padding is the layer's own padding (normalisation moves it into the conv that
    reads it). None when nothing is padded; anything else is refused by name (``where``)."""
    if mode != "constant" or value != 0:
        raise ModelError(f"{where}: {mode} padding with value {value}; only zero padding maps to the chip")
    if any(p < 0 for pair in pads for p in pair):
        raise ModelError(f"{where}: negative padding (a crop) {pads}; crop in the data pipeline")
    if pads[0] != (0, 0):
        raise ModelError(f"{where}: padding the batch axis; pad only channels, H and W")
    if len(shape) != 3:
        raise ModelError(f"{where}: padding a {shape} tensor (batch excluded); only (N, C, H, W) maps are padded")
    if any(pads[a][0] != pads[a][1] for a in (2, 3)):
        raise ModelError(f"{where}: asymmetric spatial padding {pads[2:]} (before, after per axis); the chip's "
                         f"layers pad symmetrically: pad equally on both sides, or give the padding to the conv")
    before, after = pads[1]
    if pads == [(0, 0)] * 4:
        return None
    weight = np.zeros((before + shape[0] + after, shape[0], 1, 1), np.float32)
    weight[before + np.arange(shape[0]), np.arange(shape[0])] = 1.0
    attrs = {"kernel": (1, 1), "stride": (1, 1), "padding": (pads[2][0], pads[3][0]), "lowered_from": "pad"}
    return attrs, {"weight": weight}


def _brief(keep: list[int]) -> str:
    return str(keep) if len(keep) <= 6 else f"[{keep[0]}, {keep[1]}, ..., {keep[-1]}] ({len(keep)})"


def fuse_lowered_convs(graph: Graph) -> Graph:
    """Remove what the slice, pad and shuffle layers (:data:`LOWERED_MOVES`) cost where they feed one
    layer: one that is the only reader of another merges with it (weight ``W2 @ W1``, strides
    multiplied, paddings added, where that composition is exact), and a stride-1 one that is the only
    input of a convolution moves into it (its 0/1 weight contracted into the conv's input channels,
    its padding added to the conv's)."""
    nodes = {n.name: n for n in graph.nodes}
    for n in graph.nodes:
        src = nodes.get(n.inputs[0]) if n.inputs else None
        if (n.op is not Op.CONV or src is None or src.attrs.get("lowered_from") not in LOWERED_MOVES
                or src.name == graph.output or len(graph.consumers(src.name)) != 1):
            continue
        merged = _merge_move(src, nodes[n.name])
        if merged is not None:
            nodes[n.name] = merged
            del nodes[src.name]
    return _rebuild(graph, [nodes[n.name] for n in graph.nodes if n.name in nodes], {})


def _merge_move(move: Node, layer: Node) -> Node | None:
    """``layer`` reading ``move``'s output, as one node reading ``move``'s input; None if not exact."""
    s1, p1, p2 = tuple(move.attrs["stride"]), tuple(move.attrs["padding"]), tuple(layer.attrs["padding"])
    m = move.params["weight"][:, :, 0, 0].astype(np.float64)
    w = layer.params["weight"].astype(np.float64)
    if layer.attrs.get("lowered_from") in LOWERED_MOVES:  # move then move: pad, subsample, pad, subsample
        if p2 != (0, 0) and s1 != (1, 1):
            return None
        stride = tuple(a * b for a, b in zip(s1, layer.attrs["stride"]))
    elif s1 == (1, 1):  # a move into a real conv: only without a subsample, which would change its windows
        stride = tuple(layer.attrs["stride"])
    else:
        return None
    weight = np.einsum("oc...,ci->oi...", w, m).astype(np.float32)
    padding = tuple(a + b for a, b in zip(p1, p2))
    return dataclasses.replace(layer, inputs=move.inputs, attrs={**layer.attrs, "stride": stride, "padding": padding},
                               params={**layer.params, "weight": weight})


ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}
"""The constant arithmetic the importers fold (on constants) or take as :func:`affine_params`."""


def affine_params(op: str, c: np.ndarray, constant_first: bool, where: str) -> dict[str, np.ndarray]:
    """Batch-norm parameters (``eps`` 0: ``x * gamma + beta``) of ``x op c`` (``c op x`` when
    ``constant_first``) for ``op`` in add, sub, mul, div and a per-channel constant ``c``; a constant
    divided by an activation, or a division by zero, is refused by name (``where``)."""
    if op == "div" and constant_first:
        raise ModelError(f"{where}: divides a constant by an activation; the chip has no reciprocal: move it "
                         f"to the host")
    if op == "div" and np.any(c == 0):
        raise ModelError(f"{where}: divides by zero in some channel; give a non-zero divisor")
    one, zero = np.ones_like(c), np.zeros_like(c)
    scale, shift = {"add": (one, c), "sub": (-one, c) if constant_first else (one, -c), "mul": (c, zero),
                    "div": (1.0 / c, zero)}[op]
    return {"gamma": scale.astype(np.float32), "beta": shift.astype(np.float32),
            "mean": np.zeros(len(c), np.float32), "var": np.ones(len(c), np.float32)}


def channel_constant(value: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """The per-channel vector (length C) of a constant broadcast against an activation of
    ``shape`` ((C, H, W) or (C,), batch excluded), under numpy's broadcasting rules; a constant that
    varies over the pixels, or does not broadcast, is refused by name (``where``)."""
    full_shape = (1, *shape)
    try:
        full = np.broadcast_to(np.asarray(value, dtype=np.float64), full_shape)
    except ValueError:
        raise ModelError(f"{where}: a constant of shape {tuple(np.shape(value))} does not broadcast to the "
                         f"activation's shape {full_shape}; give a scalar or one value per channel, "
                         f"shaped (1, C, 1, 1)") from None
    if np.ndim(value) > len(full_shape):
        raise ModelError(f"{where}: a constant of shape {tuple(np.shape(value))} would change the activation's "
                         f"rank {len(full_shape)}; give a scalar or one value per channel")
    per_channel = full[(0, slice(None)) + (slice(0, 1),) * (len(shape) - 1)]
    if not np.array_equal(full, np.broadcast_to(per_channel[None], full_shape)):
        raise ModelError(f"{where}: the constant varies over the pixels (shape {tuple(np.shape(value))} against "
                         f"{full_shape}); only a scalar or one value per channel maps to the chip: shape it "
                         f"(1, C, 1, 1), or move the arithmetic into the data pipeline")
    return per_channel.reshape(-1)


def _bn_scale(bn: Node) -> np.ndarray:
    """A batch norm's per-channel multiplier ``gamma / sqrt(var + eps)``, in float64."""
    return bn.params["gamma"].astype(np.float64) / np.sqrt(bn.params["var"].astype(np.float64) + float(bn.attrs["eps"]))


def _scale_target(bn: Node, graph: Graph, nodes: dict[str, Node]) -> Node | None:
    """The conv/linear layer that can take ``bn`` into its input channels: ``bn`` is a pure scale
    (no shift) and that layer is its only reader."""
    shift = bn.params["beta"].astype(np.float64) - bn.params["mean"].astype(np.float64) * _bn_scale(bn)
    readers = graph.consumers(bn.name)
    if np.any(shift != 0) or bn.name == graph.output or len(readers) != 1 or readers[0].op not in WEIGHT_OPS:
        return None
    dst = nodes[readers[0].name]
    return dst if dst.params["weight"].shape[1] == len(bn.params["gamma"]) else None


def _prescaled(layer: Node, scale: np.ndarray) -> Node:
    """``layer`` reading ``x * scale`` (per input channel) from ``x``: its weight scaled along axis 1."""
    w = layer.params["weight"].astype(np.float64)
    w = w * scale.reshape((1, -1) + (1,) * (w.ndim - 2))
    return dataclasses.replace(layer, params={**layer.params, "weight": w.astype(np.float32)})


def _standalone(bn: Node, shape: tuple[int, ...]) -> Node:
    """A batch norm with no conv/linear layer to fold into (pre-activation ResNets, a batch norm on
    the input or after an add or a pool) as the equivalent 1x1 convolution (linear layer for a flat
    vector) with a diagonal weight ``gamma / sqrt(var + eps)`` and bias ``beta - mean * weight``.

    The chip's arrays then compute it exactly (per-channel 4-b weight quantisation represents a
    single non-zero per output channel exactly), at the cost of an array layer of C rows; the node
    keeps ``lowered_from="batchnorm"`` as a record."""
    p = {k: bn.params[k].astype(np.float64) for k in ("beta", "mean")}
    scale = _bn_scale(bn)
    channels = len(scale)
    weight = np.diag(scale)
    attrs = {k: v for k, v in bn.attrs.items() if k == "act_scale"} | {"lowered_from": "batchnorm"}
    if "source_op" in bn.attrs:  # per-channel constant arithmetic given as a batch norm by an importer
        attrs["source_op"] = bn.attrs["source_op"]
    if len(shape) == 3:
        weight = weight.reshape(channels, channels, 1, 1)
        attrs |= {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0)}
        op = Op.CONV
    elif len(shape) == 1:
        op = Op.LINEAR
    else:
        raise ModelError(f"{bn.describe()}: batch norm of a {shape} tensor; give an (N, C, H, W) map or (N, C) vector")
    bias = p["beta"] - p["mean"] * scale
    return dataclasses.replace(bn, op=op, attrs=attrs,
                               params={"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)})


def _folded(layer: Node, bn: Node) -> Node:
    w = layer.params["weight"].astype(np.float64)
    b = layer.params.get("bias")
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    p = {k: bn.params[k].astype(np.float64) for k in ("beta", "mean")}
    s = _bn_scale(bn)
    w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    b = (b - p["mean"]) * s + p["beta"]
    attrs = {**layer.attrs, **{k: v for k, v in bn.attrs.items() if k == "act_scale"}}
    return dataclasses.replace(layer, params={"weight": w.astype(np.float32), "bias": b.astype(np.float32)},
                               attrs=attrs)


def _is_identity(n: Node, graph: Graph) -> bool:
    x = graph.shape(n.inputs[0])
    if n.op in (Op.MAXPOOL, Op.AVGPOOL):
        return (tuple(n.attrs["kernel"]) == (1, 1) and tuple(n.attrs.get("stride", (1, 1))) == (1, 1)
                and tuple(n.attrs.get("padding", (0, 0))) == (0, 0) and tuple(n.attrs.get("pad_end", (0, 0))) == (0, 0))
    if n.op is Op.GLOBAL_AVGPOOL:
        return x[1:] == (1, 1)
    if n.op is Op.FLATTEN:
        return len(x) == 1
    if n.op is Op.CONCAT:
        return len(n.inputs) == 1
    if n.op is Op.UPSAMPLE:
        return tuple(n.attrs["scale"]) == (1, 1)
    if n.op is Op.RELU and n.inputs[0] != graph.input_name:
        return graph.node(n.inputs[0]).op is Op.RELU
    return False


def remove_identities(graph: Graph) -> Graph:
    """Drop ops that compute the identity; turn ``clamp(0, inf)`` into ``relu``."""
    kept: list[Node] = []
    renames: dict[str, str] = {}
    current = graph
    for n in graph.nodes:
        n = dataclasses.replace(n, inputs=tuple(renames.get(i, i) for i in n.inputs))
        if n.op is Op.CLAMP and n.attrs.get("min") == 0 and math.isinf(n.attrs.get("max", 0)):
            n = dataclasses.replace(n, op=Op.RELU, attrs={k: v for k, v in n.attrs.items() if k not in ("min", "max")})
        if _is_identity(n, current):
            renames[n.name] = n.inputs[0]
        else:
            kept.append(n)
        current = dataclasses.replace(graph, nodes=tuple(kept))
    return _rebuild(graph, kept, renames)


MOVES = (Op.DEPTH_TO_SPACE, Op.UPSAMPLE)
"""Ops that only move or copy values: an elementwise activation after one equals it before one
(a bilinear upsample interpolates, so it is not one: see :func:`moves_values`)."""


def moves_values(n: Node) -> bool:
    """Whether ``n`` only moves or copies values (a :data:`MOVES` op, a nearest upsample)."""
    return n.op in MOVES and n.attrs.get("mode", "nearest") == "nearest"


def activations_before_moves(graph: Graph) -> Graph:
    """Swap each ReLU/clamp that is the only reader of a :data:`MOVES` op (not the graph output) with
    it, so that the activation follows the layer before the move and fuses into its requant (e.g.
    ``ConvTranspose2d -> ReLU``, imported as conv -> depth to space -> ReLU). Exact: the activation is
    elementwise and the move only places values. The two nodes swap names, so readers are unchanged."""
    nodes = list(graph.nodes)
    changed = True
    while changed:
        changed = False
        current = dataclasses.replace(graph, nodes=tuple(nodes))
        for k, act in enumerate(nodes):
            move = current.node(act.inputs[0]) if act.op in (Op.RELU, Op.CLAMP) and act.inputs[0] != graph.input_name \
                else None
            if move is None or not moves_values(move) or move.name == graph.output \
                    or [n.name for n in current.consumers(move.name)] != [act.name]:
                continue
            j = nodes.index(move)
            nodes[j] = dataclasses.replace(act, name=move.name, inputs=move.inputs,
                                           out_shape=current.shape(move.inputs[0]))
            nodes[k] = dataclasses.replace(move, name=act.name, inputs=(move.name,), out_shape=act.out_shape)
            changed = True
            break
    return dataclasses.replace(graph, nodes=tuple(nodes))


def _rebuild(graph: Graph, nodes: list[Node], renames: dict[str, str]) -> Graph:
    def resolve(name: str) -> str:
        while name in renames:
            name = renames[name]
        return name

    nodes = [dataclasses.replace(n, inputs=tuple(resolve(i) for i in n.inputs)) for n in nodes]
    output = resolve(graph.output)
    if output == graph.input_name:
        raise ModelError(f"graph {graph.name!r} computes nothing: its output is its input after removing "
                         f"identity ops; give a network with at least one layer")
    return dataclasses.replace(graph, nodes=tuple(nodes), output=output)


def squeeze_shape(shape: tuple[int, ...], dims: list[int] | None) -> tuple[tuple[int, ...], str | None]:
    """(per-sample shape after squeezing ``dims``, None) of a tensor whose per-sample shape is
    ``shape`` (``dims`` None: every size-1 axis but the batch), or ``((), why)`` when it is not a step
    of the one squeeze the chip's graph takes: an (N, C, 1, 1) map to (N, C), a flatten, written after
    global pooling as ``x.squeeze((2, 3))`` or in steps, ``x.squeeze(-1).squeeze(-1)``."""
    rank = len(shape) + 1
    axes = [a for a in range(1, rank) if shape[a - 1] == 1] if dims is None else [d % rank for d in dims]
    if 0 in axes:
        return (), "squeeze of the batch axis"
    if not axes or any(shape[a - 1] != 1 for a in axes) or shape[0] != math.prod(shape):
        return (), f"squeeze of axes {dims} of a {shape} tensor (batch excluded)"
    return tuple(s for a, s in enumerate(shape, start=1) if a not in axes), None


# --- 1-D networks ------------------------------------------------------------------------------
# A 1-D network (Conv1d over (N, C, L) features, e.g. keyword spotting on MFCCs) is imported as the
# 2-D network of height 1: its (N, C, L) tensors are (N, C, 1, L) maps, a 1-D window k (stride s,
# padding p, dilation d) the 2-D window (1, k) (stride (1, s), padding (0, p), dilation (1, d)). The
# chip maps such a conv like any other (C_in * k rows), so the rest of the flow sees ordinary maps.

def map_of_1d(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (C, 1, L) map (batch excluded) that holds a 1-D network's (C, L) tensor."""
    return (shape[0], 1, shape[1])


def view_1d(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The (C, L) tensor a 1-D network sees of its (C, 1, L) map (batch excluded)."""
    return (shape[0], shape[2])


def per_axis_of_1d(items: list, height: object) -> list:
    """Per-axis values of an (N, C, L) tensor (batch first) as those of its (N, C, 1, L) map, the
    height's being ``height`` (a slice keeps row [0], a pad adds (0, 0))."""
    return [*items[:2], height, *items[2:]]


def input_layout_1d(shape: tuple[int, ...]) -> str:
    """What reports say about a 1-D network's input of ``shape`` (C, L)."""
    return (f"1-D network: inputs (N, C, L) = (N, {shape[0]}, {shape[1]}) are taken as maps of height 1, "
            f"(N, {shape[0]}, 1, {shape[1]}); feed either shape")


CHIP_ACTIVATIONS_TEXT = ("ReLU, clamps (ReLU6, Hardtanh), LeakyReLU, ELU, SiLU/swish, GELU (erf or tanh), Hardswish, "
                         "Hardsigmoid, Mish, Sigmoid, Softplus (beta 1, threshold 20) and Tanh")
"""The element-wise activations the importers take (the float IR's relu, clamp and ``activation``
ops, :data:`imcflow.ir.activations.ACTIVATIONS`), for error messages."""

NON_CHIP_ACTIVATIONS = ("PRelu", "Selu", "Celu", "Softsign", "ThresholdedRelu", "Shrink")
"""Activations (ONNX op names; the PyTorch importer maps its modules and functions onto them) that
the chip's SIMD does not apply: importers refuse them with :func:`activation_fix`."""


def activation_fix(op: str) -> str:
    """What to do about an ``op`` activation, for the importers' errors."""
    article = "an" if op[0].upper() in "AEIOU" else "a"
    return (f"{article} {op} activation is not a chip op: the chip's SIMD applies {CHIP_ACTIVATIONS_TEXT} after a "
            f"layer; replace it with one of these and retrain or fine-tune the network")


def host_output_note(op: str, node: str) -> str:
    """What a report says about a network whose final softmax (or sigmoid) is left to the host."""
    return (f"the network's final {op} (node {node!r}) is not a chip op: outputs are its input logits "
            f"(same top-1); apply it on the host")


UPSAMPLE_FIX = ("upsample by integer factors with nearest-neighbour replication or bilinear interpolation with "
                "align_corners=False only (PyTorch: nn.Upsample(scale_factor=2, mode='nearest' or mode='bilinear'), "
                "F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False); ONNX: Resize mode 'nearest', "
                "or mode 'linear' with coordinate_transformation_mode 'half_pixel' or 'pytorch_half_pixel')")

BILINEAR_CORNERS_FIX = ("align_corners=True has non-uniform weights; use nn.Upsample(scale_factor=2, mode='bilinear', "
                        "align_corners=False) or F.interpolate(x, scale_factor=2, mode='bilinear', "
                        "align_corners=False)")


def upsample_factors(hw: tuple[int, int], scale: tuple | None = None,
                     size: tuple | None = None) -> tuple[tuple[int, int] | None, str | None]:
    """Upsampling factors (sh, sw) of an (H, W) map from per-axis ``scale`` factors or an
    output ``size`` (H', W'): ``(factors, None)``, or ``(None, problem)`` when they are not
    positive integers (or the size is not an integer multiple of the map)."""
    if scale is not None:
        if any(not math.isfinite(float(s)) or float(s) != int(s) or int(s) < 1 for s in scale):
            return None, f"scale factors {tuple(float(s) for s in scale)} are not positive integers"
        return (int(scale[0]), int(scale[1])), None
    if size is None:
        return None, "neither a scale factor nor an output size is given"
    if any(int(o) < h or int(o) % h for o, h in zip(size, hw)):
        return None, (f"output size {tuple(int(o) for o in size)} is not an integer multiple of the "
                      f"{hw[0]}x{hw[1]} map")
    return (int(size[0]) // hw[0], int(size[1]) // hw[1]), None


CONV_TRANSPOSE_FIX = ("only a transposed convolution whose square kernel equals its stride (no overlap), with no "
                      "padding, output_padding, dilation or groups maps to the chip (U-Net's "
                      "ConvTranspose2d(C_in, C_out, kernel_size=2, stride=2)); for other upsampling use "
                      "nearest upsampling followed by a conv, or a conv to C*r*r channels and PixelShuffle(r)")


def conv_transpose_problem(kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, ...],
                           output_padding: tuple[int, ...], dilation: tuple[int, int], groups: int) -> str | None:
    """Why a transposed convolution cannot be lowered exactly by :func:`conv_transpose_as_conv`, or
    None when it can (square kernel == stride, no padding, output_padding, dilation or groups)."""
    kernel, stride = tuple(int(k) for k in kernel), tuple(int(s) for s in stride)
    if kernel != stride:
        return f"kernel {kernel} with stride {stride} (overlapping or gapped windows)"
    if kernel[0] != kernel[1]:
        return f"non-square kernel {kernel} (depth to space is square)"
    for what, value, zero in (("padding", padding, 0), ("output_padding", output_padding, 0),
                              ("dilation", dilation, 1)):
        if any(int(v) != zero for v in value):
            return f"{what} {tuple(int(v) for v in value)}"
    if groups != 1:
        return f"groups={groups}"
    return None


def conv_transpose_as_conv(weight: np.ndarray, bias: np.ndarray | None) -> tuple[dict, dict, int]:
    """A transposed convolution with kernel == stride == (r, r) as a 1x1 conv to ``C_out*r*r``
    channels followed by depth to space by r: conv channel ``o*r*r + i*r + j`` carries ``weight[:,
    o, i, j]`` (weight (C_in, C_out, r, r)) and bias ``bias[o]``. Returns (conv attrs, conv params, r)."""
    c_in, c_out, r, _ = weight.shape
    params = {"weight": np.ascontiguousarray(weight.transpose(1, 2, 3, 0).reshape(c_out * r * r, c_in, 1, 1))}
    if bias is not None:
        params["bias"] = np.repeat(np.asarray(bias), r * r)
    return {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0)}, params, int(r)


DEPTH_TO_SPACE_MODES = ("CRD", "DCR")
"""ONNX DepthToSpace modes the importer takes: CRD (PyTorch's PixelShuffle) directly, DCR as a
channel shuffle (:func:`channel_shuffle` with r*r groups, fused into the conv before it) then CRD."""
