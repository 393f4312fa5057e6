"""Frontend: import a network (zoo name, ONNX file or torch module) as a float Graph.

``load_graph`` is the one entry point; :func:`normalize` turns its result into what the quantiser
consumes; :func:`run_graph` executes a Graph in float32 (the importers are checked against it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imcflow.errors import ModelError
from imcflow.ir.graph_exec import run_graph
from imcflow.frontend.normalize import map_of_1d, normalize
from imcflow.ir.graph import Graph

__all__ = ["load_graph", "normalize", "run_graph"]


def load_graph(model: str | Path | Any, input_shape: tuple[int, ...] | None = None) -> Graph:
    """Import ``model``: a zoo name (see :mod:`imcflow.models`), a path to an ``.onnx`` file, or a
    ``torch.nn.Module`` (then ``input_shape`` (C, H, W), or (C, L) for a 1-D network, is required).
    Raises ModelError."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix.lower() == ".onnx" or path.exists():
            from imcflow.frontend.onnx_import import from_onnx
            return _check_shape(from_onnx(path), input_shape)
        from imcflow import models
        module = models.get_model(str(model)).eval()
        shape = tuple(input_shape) if input_shape is not None else models.input_shape(str(model))
        from imcflow.frontend.torch_fx import from_torch
        return from_torch(module, shape, name=str(model))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        from imcflow.frontend.torch_fx import from_torch
        return from_torch(model, input_shape)
    import onnx
    if isinstance(model, onnx.ModelProto):
        from imcflow.frontend.onnx_import import from_onnx
        return _check_shape(from_onnx(model), input_shape)
    raise ModelError(f"cannot import a {type(model).__name__}: give a zoo name, an .onnx path, an onnx.ModelProto "
                     f"or a torch.nn.Module")


def _check_shape(graph: Graph, input_shape: tuple[int, ...] | None) -> Graph:
    if input_shape is not None and tuple(input_shape) != graph.input_shape and \
            not (len(input_shape) == 2 and map_of_1d(tuple(input_shape)) == graph.input_shape):  # a 1-D network
        raise ModelError(f"the ONNX model {graph.name!r} takes inputs of shape {graph.input_shape}, not "
                         f"{tuple(input_shape)}; re-export it for that shape or drop input_shape")
    return graph
