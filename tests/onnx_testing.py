"""Helpers the importer tests share: export a module to ONNX quietly, run a file or model in
onnxruntime, a one-node Resize/Upsample model, and random input integers for a QGraph."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from imcflow.ir.qgraph import QGraph


def to_onnx(model: torch.nn.Module, path, dynamo: bool, shape: tuple[int, ...]) -> None:
    """``torch.onnx.export`` of ``model`` on one input of ``shape`` (batch excluded), warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=dynamo, verbose=False)


def ort_run(path_or_model, x: np.ndarray) -> np.ndarray:
    """onnxruntime's (CPU) first output of an ONNX file or ``onnx.ModelProto`` on ``x``."""
    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def random_inputs(q: QGraph, n: int, seed: int) -> np.ndarray:
    """``n`` random input integers in the range of ``q``'s input spec."""
    return np.random.default_rng(seed).integers(q.input.min_int, q.input.max_int + 1, size=(n, *q.input.shape))


def resize_model(ctm=None, nm=None, factor=2, opset=19, op="Resize", sizes=False, mode="nearest", hw=(5, 6),
                 **extra) -> onnx.ModelProto:
    """x (1, 2, H, W) -> one Resize/Upsample node ``rs`` with ``mode``, coordinate_transformation_mode
    ``ctm``, nearest_mode ``nm`` (and ``extra`` attributes); scales or sizes of ``factor`` (one number
    or a pair (fh, fw)) as initializers."""
    fh, fw = factor if isinstance(factor, tuple) else (factor, factor)
    s = np.array([1, 1, fh, fw], np.float32)
    attrs = {"mode": mode, **extra}
    attrs.update({k: v for k, v in (("coordinate_transformation_mode", ctm), ("nearest_mode", nm)) if v})
    inits = []
    if opset == 7:
        attrs["scales"] = [float(v) for v in s]
        ins = ["x"]
    elif op == "Upsample" or opset == 10:
        inits, ins = [numpy_helper.from_array(s, "sc")], ["x", "sc"]
    elif sizes:
        inits = [numpy_helper.from_array(np.array([1, 2, round(hw[0] * fh), round(hw[1] * fw)], np.int64), "sz")]
        ins = ["x", "", "", "sz"]
    else:
        inits, ins = [numpy_helper.from_array(s, "sc")], ["x", "", "sc"]
    node = helper.make_node(op, ins, ["y"], name="rs", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model
