"""Float executor of a :class:`~imcflow.ir.graph.Graph` (torch ops, float32).

It defines what a Graph means: importers are checked against PyTorch and onnxruntime with it,
:mod:`imcflow.frontend.normalize` is checked against it before and after folding, and the quantiser
calibrates with it. It lives beside the IR so that every stage can run a Graph without importing
another stage.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imcflow.errors import DataError
from imcflow.ir.activations import apply_activation
from imcflow.ir.graph import Graph, Node, Op


def max_pool2d(x: torch.Tensor, kernel, stride, padding, pad_end=(0, 0)) -> torch.Tensor:
    """``F.max_pool2d`` with ``pad_end`` (rows, columns) more -inf padding at the bottom and right."""
    if tuple(pad_end) != (0, 0):
        x = F.pad(x, (0, int(pad_end[1]), 0, int(pad_end[0])), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride, padding)


def run_graph(graph: Graph, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Outputs of ``graph`` on ``x``, float32 numpy.

    ``x`` is a batch ``(N, *graph.input_shape)`` (returns ``(N, *out_shape)``) or one sample
    ``graph.input_shape`` (returns ``out_shape``).
    """
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
    shape = tuple(t.shape)
    batched = shape[1:] == graph.input_shape
    if not batched and shape != graph.input_shape:
        raise DataError(f"graph {graph.name!r} takes inputs of shape (N, {', '.join(map(str, graph.input_shape))}) "
                        f"or {graph.input_shape}, got {shape}; reshape the input")
    if not batched:
        t = t.unsqueeze(0)
    values = {graph.input_name: t}
    with torch.no_grad():
        for n in graph.nodes:
            values[n.name] = run_node(n, [values[i] for i in n.inputs])
    out = values[graph.output]
    return (out if batched else out[0]).numpy()


def _p(n: Node, key: str) -> torch.Tensor | None:
    v = n.params.get(key)
    return None if v is None else torch.from_numpy(v)


def run_node(n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """One node on batched float32 inputs."""
    x = xs[0]
    a = n.attrs
    if n.op is Op.CONV:
        return F.conv2d(x, _p(n, "weight"), _p(n, "bias"), stride=tuple(a.get("stride", (1, 1))),
                        padding=tuple(a.get("padding", (0, 0))), dilation=tuple(a.get("dilation", (1, 1))))
    if n.op is Op.LINEAR:
        return F.linear(x, _p(n, "weight"), _p(n, "bias"))
    if n.op is Op.BATCHNORM:
        return F.batch_norm(x, _p(n, "mean"), _p(n, "var"), _p(n, "gamma"), _p(n, "beta"),
                            training=False, eps=float(a["eps"]))
    if n.op is Op.RELU:
        return torch.relu(x)
    if n.op is Op.CLAMP:
        return torch.clamp(x, float(a["min"]), float(a["max"]))
    if n.op is Op.ACTIVATION:
        return apply_activation(a["fn"], a.get("alpha"), x)
    if n.op is Op.MAXPOOL:
        return max_pool2d(x, a["kernel"], a.get("stride", a["kernel"]), a.get("padding", (0, 0)), a.get("pad_end", (0, 0)))
    if n.op is Op.AVGPOOL:
        return F.avg_pool2d(x, a["kernel"], a.get("stride", a["kernel"]), a.get("padding", (0, 0)),
                            count_include_pad=True)
    if n.op is Op.GLOBAL_AVGPOOL:
        return x.mean(dim=(2, 3), keepdim=True)
    if n.op is Op.ADD:
        return xs[0] + xs[1]
    if n.op is Op.FLATTEN:
        return torch.flatten(x, 1)
    if n.op is Op.CONCAT:
        return torch.cat(xs, dim=1)
    if n.op is Op.UPSAMPLE:
        sh, sw = a["scale"]
        if a.get("mode", "nearest") == "bilinear":
            return F.interpolate(x, scale_factor=(float(sh), float(sw)), mode="bilinear", align_corners=False)
        return x.repeat_interleave(sh, dim=2).repeat_interleave(sw, dim=3)
    if n.op is Op.DEPTH_TO_SPACE:
        return torch.pixel_shuffle(x, int(a["block"]))
    raise AssertionError(f"run_node: op {n.op} not handled")  # Op is closed; every member is above
