"""Helpers the importer tests share: export a module to ONNX quietly, run a file or model in
onnxruntime, and random input integers for a QGraph."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

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
