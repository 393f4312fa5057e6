"""Glue between the flow's stages: from a model name, file or module to a float Graph, a QAT
network or a QGraph, and running a model on inputs in any arithmetic mode.

- :func:`load_float_graph`: zoo name / ``.onnx`` / ``torch.nn.Module`` -> normalized float Graph
  (a zoo name uses its shipped trained weights when they exist, else a seeded random init).
- :func:`prepare_qat`: a float model -> :class:`imcflow.quant.qat.QatNet` (QAT with the chip's arithmetic).
- :func:`load_qgraph`: anything -> QGraph:

  * a ``.qgraph.json`` path (or a QGraph) is loaded as is;
  * a zoo name with ``trained=True`` uses, in order: the shipped QAT export
    ``models/weights/<name>.qgraph.json`` (``export_qgraph(net).save(...)`` after QAT); the
    shipped float weights (the zoo module's ``load_trained()``), quantised post-training;
  * otherwise (or with ``trained=False``) a seeded random-init network, calibrated post-training.
    Such a network computes nothing meaningful: it is for performance studies (throughput,
    energy, mapping) only, and its ``meta["trained"]`` says so;
  * an ``.onnx`` path or a module goes through the frontend and PTQ calibration.

  Calibration uses ``calib`` (float inputs, N x input shape) when given, else seeded uniform
  [0, 1) inputs (right for the zoo's pixel/255 image models, a rough guess otherwise): 64 of them
  for small inputs, fewer for large ones (:func:`synthetic_count`: about ``CALIB_VALUES`` input
  values in all, at least ``CALIB_MIN_SAMPLES``; 2 images for ResNet-50's 3x224x224). Zoo image
  models take 8-b raw pixels (input scale 1/255).
- :func:`run_model`: a model on float inputs in ``float``, ``ideal``, ``bit_true`` or ``analog`` mode.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imcflow import frontend, models
from imcflow.frontend.normalize import view_1d
from imcflow.config.chip import ChipConfig
from imcflow.config.presets import get_preset
from imcflow.errors import DataError, ModelError, QuantError
from imcflow.ir.graph import Graph
from imcflow.ir.qgraph import QGraph
from imcflow.quant.calibrate import QuantSpec, calibrate
from imcflow.quant.qat import QatNet
from imcflow.quant.qat import prepare_qat as _prepare_qat_graph
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph

QGRAPH_SUFFIX = ".qgraph.json"
RUN_MODES = ("float", "ideal", "bit_true", "analog")
CALIB_SAMPLES = 64
"""Most synthetic calibration inputs (used in full for inputs up to ``CALIB_VALUES / 64`` values)."""
CALIB_VALUES = 64 * 3 * 32 * 32
"""Input values the synthetic calibration batch aims at: 64 CIFAR-sized images. Larger inputs get
fewer images (their tensors hold as many values per image as a whole small batch, so the ranges
are as well sampled, and the float run and percentiles cost time and memory in proportion)."""
CALIB_MIN_SAMPLES = 2


def is_qgraph_path(model: Any) -> bool:
    """True for a path to a saved QGraph (``*.qgraph.json``)."""
    return isinstance(model, (str, Path)) and str(model).endswith(QGRAPH_SUFFIX)


def _zoo_module(name: str, trained: bool, seed: int) -> tuple[torch.nn.Module, bool]:
    """(module, is_trained) for zoo model ``name``."""
    builder = importlib.import_module(models.ZOO[name][0])
    # a module's load_trained() holds the weights of its NAME only, not of the variants it also builds
    if trained and hasattr(builder, "load_trained") and getattr(builder, "NAME", None) == name:
        try:
            return builder.load_trained(), True
        except ModelError:
            pass  # no shipped weights: fall back to a random init
    torch.manual_seed(seed)
    return models.get_model(name).eval(), False


def _is_zoo(model: Any) -> bool:
    return isinstance(model, str) and model in models.ZOO


def load_float_graph(model: str | Path | torch.nn.Module | Graph, input_shape: tuple[int, ...] | None = None,
                     trained: bool = True, seed: int = 0) -> Graph:
    """The normalized float Graph of ``model`` (zoo name, ``.onnx`` path, torch module or Graph)."""
    if isinstance(model, Graph):
        return model if model.is_normalized() else frontend.normalize(model)
    if is_qgraph_path(model):
        raise ModelError(f"{model} is a quantised graph: it has no float version; give the float model "
                         f"(zoo name, .onnx or module) for float mode")
    if _is_zoo(model):
        module, is_trained = _zoo_module(model, trained, seed)
        graph = frontend.load_graph(module, input_shape or models.input_shape(model))
        graph = frontend.normalize(graph)
        return dataclasses.replace(graph, name=model, meta={**graph.meta, "trained": is_trained})
    return frontend.normalize(frontend.load_graph(model, input_shape))


def _default_input_scale(model: Any, graph: Graph) -> float | None:
    """1/255 for the zoo's image models (pixel / 255 inputs), else None (from calibration)."""
    return 1 / 255 if _is_zoo(model) and len(graph.input_shape) == 3 and graph.input_shape[0] in (1, 3) else None


def synthetic_count(input_shape: tuple[int, ...]) -> int:
    """How many synthetic calibration inputs a model with ``input_shape`` gets (see ``CALIB_VALUES``)."""
    per_input = max(1, int(np.prod(input_shape)))
    return int(min(CALIB_SAMPLES, max(CALIB_MIN_SAMPLES, CALIB_VALUES // per_input)))


def synthetic_calibration(input_shape: tuple[int, ...], n: int | None = None, seed: int = 0) -> np.ndarray:
    """Seeded uniform [0, 1) float inputs (the stand-in when no calibration data is given);
    ``n`` defaults to :func:`synthetic_count`."""
    n = synthetic_count(input_shape) if n is None else n
    return np.random.default_rng(seed).random((n, *input_shape)).astype(np.float32)


def prepare_qat(model: str | Path | torch.nn.Module | Graph, input_shape: tuple[int, ...] | None = None,
                chip: str | ChipConfig = "jssc2022", w_bits: int = 4, a_bits: int = 4, first_in_bits: int = 8,
                calib: np.ndarray | None = None, input_scale: float | None = None, seed: int = 0,
                adc_full_scale: str = "rows") -> QatNet:
    """A QAT network (:class:`imcflow.quant.qat.QatNet`) of a float model; BN is folded first.
    Give ``calib``, a batch of real training inputs, to initialise the activation step sizes."""
    graph = load_float_graph(model, input_shape, seed=seed)
    if input_scale is None:
        input_scale = _default_input_scale(model, graph)
    if calib is not None:
        calib = check_inputs(calib, graph.input_shape, "calibration inputs")
    return _prepare_qat_graph(graph, chip, w_bits=w_bits, a_bits=a_bits, first_in_bits=first_in_bits,
                              calib=calib, input_scale=input_scale, seed=seed, adc_full_scale=adc_full_scale)


def shipped_qgraph_path(name: str) -> Path:
    """Where a zoo model's shipped QAT export lives: ``models/weights/<name>.qgraph.json``."""
    return Path(models.__file__).resolve().parent / "weights" / f"{name}{QGRAPH_SUFFIX}"


def check_qgraph_fits_chip(qgraph: QGraph, chip: ChipConfig) -> None:
    """QuantError if a layer's stored ADC full scale or bit widths are not available on ``chip``."""
    for n in qgraph.mvm_nodes():
        if n.adc_full_scale_rows not in chip.adc.full_scales_rows:
            raise QuantError(f"layer {n.name!r}: ADC full scale {n.adc_full_scale_rows} rows is not one of chip "
                             f"{chip.name!r}'s {chip.adc.full_scales_rows}; re-quantise the model for this chip")
        bits = qgraph.spec(n.inputs[0]).bits
        if max(bits, n.w_bits) > chip.array.max_bits:
            raise QuantError(f"layer {n.name!r}: {bits}-b inputs and {n.w_bits}-b weights exceed chip "
                             f"{chip.name!r}'s {chip.array.max_bits} bits (array.max_bits)")


def load_qgraph(model: str | Path | torch.nn.Module | QGraph, chip: str | ChipConfig = "jssc2022",
                calib: np.ndarray | None = None, trained: bool = True, seed: int = 0,
                input_shape: tuple[int, ...] | None = None, w_bits: int = 4, a_bits: int = 4,
                adc_full_scale: str = "rows") -> QGraph:
    """The QGraph of ``model`` for ``chip`` (see module doc for the sources, in order);
    ``adc_full_scale`` ("rows" or "calibrated") applies when it is quantised here (PTQ)."""
    chip = get_preset(chip)
    if isinstance(model, QGraph):
        qg = model
    elif is_qgraph_path(model):
        qg = QGraph.load(str(model))
    else:
        qg = _shipped_qgraph(model, chip) if _is_zoo(model) and trained else None
        if qg is None:
            qg = _ptq(model, chip, calib, trained, seed, input_shape, QuantSpec(w_bits=w_bits, a_bits=a_bits,
                                                                               adc_full_scale=adc_full_scale))
    if _is_zoo(model) and qg.name != model:  # name programs and reports after the zoo entry
        qg = dataclasses.replace(qg, name=model)
    qg.verify()
    check_qgraph_fits_chip(qg, chip)
    return qg


def _shipped_qgraph(name: str, chip: ChipConfig) -> QGraph | None:
    """The shipped QAT export of zoo model ``name`` if there is one and it fits ``chip``."""
    path = shipped_qgraph_path(name)
    if not path.is_file():
        return None
    qg = QGraph.load(str(path))
    try:
        check_qgraph_fits_chip(qg, chip)
    except QuantError:
        return None  # trained for another ADC: _ptq re-quantises the float weights and says so
    return qg


def _ptq(model, chip: ChipConfig, calib, trained: bool, seed: int, input_shape, spec: QuantSpec) -> QGraph:
    graph = load_float_graph(model, input_shape, trained, seed)
    data = synthetic_calibration(graph.input_shape, seed=seed) if calib is None else \
        check_inputs(calib, graph.input_shape, "calibration inputs")
    spec = dataclasses.replace(spec, input_scale=_default_input_scale(model, graph))
    is_trained = graph.meta.get("trained", True)
    meta = {"trained": is_trained, "calibration_data": "synthetic" if calib is None else "given"}
    notes = []
    if _is_zoo(model) and trained and shipped_qgraph_path(model).is_file():
        notes.append(f"the shipped QAT export does not fit chip {chip.name!r} (ADC full scales or bits), "
                     f"so the float weights were quantised post-training for it")
    if not is_trained:
        notes.append("random-init weights: for performance studies only")
    notes += [graph.meta[k] for k in ("host_output", "input_layout") if graph.meta.get(k)]
    if notes:
        meta["note"] = "; ".join(notes)
    return calibrate(graph, data, chip, spec, meta=meta)


def check_inputs(x: np.ndarray, input_shape: tuple[int, ...], what: str = "inputs") -> np.ndarray:
    """Float inputs (N, *input_shape) as float32; DataError naming the expected shape otherwise. A 1-D
    network's inputs (N, C, L) are taken as its (N, C, 1, L) maps (:func:`imcflow.frontend.normalize.map_of_1d`)."""
    x = np.asarray(x)
    one_d = len(input_shape) == 3 and input_shape[1] == 1   # the map of a 1-D network, or of height 1
    if one_d and x.shape[1:] == view_1d(input_shape):
        x = x[:, :, None, :]
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        want = "(N, " + ", ".join(str(s) for s in input_shape) + ")"
        if one_d:
            want = f"(N, {input_shape[0]}, {input_shape[2]}) or {want}"
        raise DataError(f"{what} have shape {tuple(x.shape)}; the model expects {want} (batch first, float "
                        f"values in the model's input domain, e.g. pixel / 255)")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{what} have dtype {x.dtype}; give a float array")
    return x.astype(np.float32)


def model_input_shape(model: Any, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Input shape (without batch) of a model, without quantising it."""
    if input_shape is not None:
        return tuple(input_shape)
    if isinstance(model, QGraph):
        return model.input.shape
    if is_qgraph_path(model):
        return QGraph.load(str(model)).input.shape
    if _is_zoo(model):
        return tuple(models.input_shape(model))
    return load_float_graph(model).input_shape


def run_model(model: Any, x: np.ndarray, mode: str = "bit_true", chip: str | ChipConfig = "jssc2022",
              seed: int = 0, calib: np.ndarray | None = None, trained: bool = True, init_seed: int = 0) -> np.ndarray:
    """Outputs of ``model`` on float inputs ``x``: ``float`` runs the float graph; the quantised
    modes run the QGraph's integer reference executor and return dequantised (real) outputs.
    ``seed`` seeds the analog non-idealities; ``init_seed`` a random-init zoo network and the
    synthetic calibration inputs."""
    if mode not in RUN_MODES:
        raise QuantError(f"mode {mode!r}: choose one of {', '.join(RUN_MODES)}")
    if mode == "float":
        graph = load_float_graph(model, trained=trained, seed=init_seed)
        return frontend.run_graph(graph, check_inputs(x, graph.input_shape)).astype(np.float64)
    qg = load_qgraph(model, chip, calib=calib, trained=trained, seed=init_seed)
    return run_quantised(qg, x, mode, chip, seed)


def run_quantised(qgraph: QGraph, x: np.ndarray, mode: str = "bit_true", chip: str | ChipConfig = "jssc2022",
                  seed: int = 0) -> np.ndarray:
    """Dequantised outputs of ``qgraph`` on float inputs ``x`` through the integer reference executor."""
    x = check_inputs(x, qgraph.input.shape)
    return dequantize_output(qgraph, run_qgraph(qgraph, quantize_input(qgraph, x), mode, chip, seed))


def describe_source(qgraph: QGraph) -> str:
    """Where a QGraph's weights came from, in words (from its meta)."""
    trained = qgraph.meta.get("trained")
    if trained is False:
        return "random-init weights (for performance studies only)"
    if trained is True:
        note = qgraph.meta.get("note")
        return (f"trained float weights, post-training quantised ({qgraph.meta.get('calibration_data', '?')} "
                f"calibration)" + (f"; {note}" if note else ""))
    if trained == "qat":
        return "4-b weights from quantisation-aware training with the chip's ADC (a QAT export)"
    return f"{trained} weights" if trained else "weights of the given quantised graph"
