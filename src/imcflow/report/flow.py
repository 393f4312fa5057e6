"""Glue for benchmarks: zoo network -> QGraph -> Program -> timing/energy Report, and accuracy runs.

Crosses stages on purpose (frontend, quant, compiler, sim), so it lives outside them. The QGraph
comes from :func:`imcflow.pipeline.load_qgraph` when that exists (trained weights where shipped);
otherwise from post-training calibration of the zoo network on a few synthetic inputs, which is
enough for timing and energy (they do not depend on weight values) but not for accuracy.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from imcflow.config.chip import ChipConfig
from imcflow.errors import DataError, ImcflowError
from imcflow.ir.program import Program
from imcflow.ir.qgraph import QGraph
from imcflow.ir.report import Report


def load_qgraph(net: str, chip: ChipConfig, trained: bool = True) -> tuple[QGraph, str]:
    """(QGraph, where it came from) for zoo network or path ``net``: the same QGraph that
    ``imcflow compile`` builds (:func:`imcflow.pipeline.load_qgraph`)."""
    from imcflow import pipeline
    q = pipeline.load_qgraph(net, chip=chip, trained=trained)
    if q.meta.get("trained", True) is True:  # a float network quantised here: how, and any note
        return q, pipeline.describe_source(q)
    if q.meta.get("trained", True):
        return q, "trained weights"
    return q, "untrained (random-init) weights, calibrated on synthetic inputs: timing and energy only"


def compile_program(qgraph: QGraph, chip: ChipConfig, objective: str = "throughput",
                    batch: int | None = None) -> Program:
    """Compile with the compiler's public entry point (``batch`` None: the compiler chooses)."""
    from imcflow.compiler.pipeline import compile_qgraph
    return compile_qgraph(qgraph, chip, objective=objective, batch=batch)


def simulate_report(prog: Program, images: int | None = None, stats=None, skip_zero: bool = False,
                    accuracy: float | None = None, unbounded_buffers: bool = False,
                    timeline: str | None = None) -> Report:
    """Event-level timing and energy of ``prog`` as a Report; ``timeline`` (an image path) also
    plots the per-core timeline of the simulated run."""
    from imcflow.sim.report import Features, make_report, simulate_timing
    feats = Features(skip_zero_bitplanes=skip_zero, unbounded_buffers=unbounded_buffers)
    tr = simulate_timing(prog, images=images, features=feats, stats=stats)
    if timeline:
        from imcflow.report.plots import plot_timeline
        plot_timeline(tr, prog.chip.n_cores, timeline,
                      f"{prog.qgraph.name or prog.name} on {prog.chip.name}: {tr.images} images, "
                      f"{tr.throughput_img_s:,.0f} img/s")
    return make_report(prog, tr, accuracy=accuracy, features=feats)


def activity_stats(prog: Program, x_int: np.ndarray, mode: str = "bit_true"):
    """Run ``prog`` functionally on ``x_int`` and return the measured FunctionalStats."""
    from imcflow.sim.functional import FunctionalStats, run_program
    st = FunctionalStats()
    run_program(prog, x_int, mode, stats=st)
    return st


def benchmark_reports(net: str, chip: ChipConfig, batch: int | None = None,
                      data: str | None = None, activity_images: int = 32) -> dict[str, Report]:
    """Reports of ``net`` on ``chip``: 'base', and, when ``data`` (CIFAR-10) is given and the
    network is trained cifar10-cnn11, 'zero bit-planes skipped' with the activity measured on
    ``activity_images`` test images (real activations; synthetic ones would not be evidence)."""
    q, origin = load_qgraph(net, chip)
    prog = compile_program(q, chip)
    out = {"base": _with_note(simulate_report(prog, images=batch), f"QGraph: {origin}")}
    if len(prog.phases) > 1:  # show what the input-buffer capacity costs (residual paths)
        out["unbounded input buffers"] = _with_note(
            simulate_report(prog, images=batch, unbounded_buffers=True),
            "input buffers without capacity limit (no back-pressure), as the analytic model assumes")
    if data and net == "cifar10-cnn11" and origin.startswith("trained"):
        stats, note = cifar10_activity(prog, q, data, activity_images)
        out["zero bit-planes skipped"] = _with_note(
            simulate_report(prog, images=batch, stats=stats, skip_zero=True), note)
    return out


def model_report(model: str, chip: ChipConfig, images: int | None = None, trained: bool = True,
                 data: str | None = None, limit: int | None = 1000, skip_zero: bool = False,
                 unbounded_buffers: bool = False, activity_images: int = 32, timeline: str | None = None) -> Report:
    """Compile ``model`` for ``chip`` and simulate its timing and energy (``imcflow run --json``).

    With ``data`` (a CIFAR-10 folder) the report also carries the bit-true accuracy on the first
    ``limit`` test images. ``skip_zero`` switches on zero bit-plane skipping, with the activity
    measured on ``activity_images`` seeded CIFAR-10 test images when ``data`` is given, else on
    synthetic inputs (then the figure is a what-if, not evidence); ``unbounded_buffers`` drops the
    input-buffer capacity (see :class:`imcflow.sim.report.Features`); ``timeline`` (an image path)
    plots the per-core timeline of the simulated run."""
    q, origin = load_qgraph(model, chip, trained=trained)
    if data is not None and origin.startswith("trained"):
        calibrated = calibrated_on_cifar10(q, model, chip, data)
        if calibrated is not q:
            q, origin = calibrated, f"trained float weights, post-training quantised on {calibrated.meta['calibration_data']}" \
                + (f"; {calibrated.meta['note']}" if calibrated.meta.get("note") else "")
    prog = compile_program(q, chip)
    accuracy, stats, notes = None, None, [f"QGraph: {origin}"]
    if data is not None:
        res = evaluate_accuracy(model, chip, data, "bit_true", limit=limit, prog=prog, qgraph=q)
        accuracy = res["accuracy"]
    if skip_zero and data is not None:
        stats, note = cifar10_activity(prog, q, data, activity_images)
        notes.append(note)
    elif skip_zero:
        from imcflow.pipeline import synthetic_calibration
        from imcflow.quant.reference import quantize_input
        stats = activity_stats(prog, quantize_input(q, synthetic_calibration(q.input.shape, n=8, seed=1)))
        notes.append("zero bit-plane skipping, activity measured on 8 synthetic inputs (a what-if: give --data "
                     "for real activations)")
    r = simulate_report(prog, images=images, stats=stats, skip_zero=skip_zero, accuracy=accuracy,
                        unbounded_buffers=unbounded_buffers, timeline=timeline)
    return _with_note(r, *notes)


def cifar10_activity(prog: Program, q: QGraph, data: str, images: int = 32):
    """(FunctionalStats of ``prog`` on ``images`` seeded CIFAR-10 test images from ``data``, a report
    note saying so)."""
    x_u8, _, _ = image_split(data, "test", q)
    idx = np.sort(np.random.default_rng(0).permutation(len(x_u8))[:images])
    note = f"zero bit-plane skipping, activity measured on {images} CIFAR-10 test images"
    return activity_stats(prog, _to_input_ints(q, x_u8[idx])), note


def _with_note(r: Report, *notes: str) -> Report:
    return dataclasses.replace(r, notes=(*r.notes, *notes))


@dataclass(frozen=True)
class InputNorm:
    """How CIFAR-10 pixels become the network's float inputs: ``(pixel / 255 - mean[c]) / std[c]``
    per channel. The default (mean 0, std 1) is ``pixel / 255``, what the zoo networks take; a
    network trained on normalised inputs (e.g. torchvision's ``Normalize``) needs its mean and std."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise DataError(f"input normalisation: {len(self.mean)} mean value(s) but {len(self.std)} std value(s); "
                            "give one per channel (or one for all)")
        if not all(np.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise DataError(f"input normalisation: std {self.std} must be finite and > 0 (and mean finite)")

    def apply(self, x_u8: np.ndarray) -> np.ndarray:
        """uint8 images (N, C, H, W) -> float32 network inputs."""
        c = x_u8.shape[1]
        if len(self.mean) not in (1, c):
            raise DataError(f"input normalisation has {len(self.mean)} values; the images have {c} channels")
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x_u8.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    @property
    def is_default(self) -> bool:
        return all(m == 0 for m in self.mean) and all(v == 1 for v in self.std)


def evaluate_accuracy(net: str, chip: ChipConfig, data: str, mode: str = "bit_true", limit: int | None = None,
                      batch_size: int = 250, progress: Callable[[int], None] | None = None,
                      prog: Program | None = None, qgraph: QGraph | None = None,
                      norm: InputNorm = InputNorm()) -> dict[str, Any]:
    """Top-1 accuracy of ``net`` compiled for ``chip`` and run through the simulator on the test set
    in ``data`` (a CIFAR-10 folder or a ``.npy`` folder, :func:`image_split`; a seeded sample of
    ``limit`` images), with float and ideal-mode accuracies of the same network and the wall times.
    ``progress`` receives (images done, images in all) after each batch; ``norm`` turns pixels into
    the network's inputs."""
    from imcflow.sim.functional import run_program
    if qgraph is None:
        qgraph, origin = load_qgraph(net, chip)
        if not origin.startswith("trained"):
            raise DataError(f"no trained weights for {net!r}: accuracy needs them (see docs/cnn11.md to train)")
        qgraph = calibrated_on_cifar10(qgraph, net, chip, data, norm)
    prog = prog or compile_program(qgraph, chip)
    x_u8, labels, data_name = image_split(data, "test", qgraph, net)
    everything = limit is None or limit >= len(labels)
    if not everything:  # CIFAR-10's test set is sorted by class: take a seeded sample
        idx = np.sort(np.random.default_rng(0).permutation(len(labels))[:limit])
        x_u8, labels = x_u8[idx], labels[idx]
    x_int = _to_input_ints(qgraph, x_u8, norm)
    from imcflow.quant.fast_exec import run_qgraph_fast
    res: dict[str, Any] = {"network": net, "chip": chip.name, "mode": mode, "data": data_name,
                           "images": int(len(labels)), "subset": "all" if everything else f"seeded sample of {limit}"}
    for m in dict.fromkeys([mode, "ideal"]):
        t0 = time.perf_counter()
        correct = 0
        for i in range(0, len(labels), batch_size):
            if m == mode:  # through the compiled program on the simulator
                y = run_program(prog, x_int[i:i + batch_size], m)
            else:  # the ideal-ADC reference accuracy of the same QGraph (quantiser's fast executor)
                y = run_qgraph_fast(qgraph, x_int[i:i + batch_size], m, chip)
            correct += int((y.reshape(y.shape[0], -1).argmax(1) == labels[i:i + batch_size]).sum())
            if progress is not None and m == mode:
                progress(min(len(labels), i + batch_size), len(labels))
        res[f"accuracy_{m}"] = correct / max(1, len(labels))
        res[f"wall_s_{m}"] = time.perf_counter() - t0
    res["accuracy"] = res[f"accuracy_{mode}"]
    if mode != "ideal":
        res["ideal_executor"] = "imcflow.quant.fast_exec.run_qgraph_fast (the reference, not the simulator)"
    res["wall_s"] = res[f"wall_s_{mode}"]
    if qgraph.meta.get("calibration_data"):
        res["calibration"] = qgraph.meta["calibration_data"]
    if qgraph.meta.get("note"):
        res["note"] = qgraph.meta["note"]
    if not norm.is_default:
        res["input_norm"] = {"mean": list(norm.mean), "std": list(norm.std)}
    res.update(_float_accuracy(net, x_u8, labels, batch_size, norm))
    if res.get("float_wall_s"):
        res["sim_over_float_time"] = res["wall_s"] / res["float_wall_s"]
    return res


CALIBRATION_IMAGES = 256
"""CIFAR-10 training images (seeded sample) a float model is calibrated on before an accuracy run."""


def calibrated_on_cifar10(q: QGraph, net: str, chip: ChipConfig, data: str, norm: InputNorm = InputNorm()) -> QGraph:
    """``q`` (``net``'s QGraph for ``chip``) unless it is a float model quantised here on synthetic
    inputs; then ``net`` quantised again with its activation ranges and per-layer ADC full scales
    calibrated on ``CALIBRATION_IMAGES`` seeded *training* images of ``data`` (CIFAR-10 or a
    ``.npy`` folder; never the test images scored)."""
    if q.meta.get("calibration_data") != "synthetic":
        return q
    from imcflow import pipeline
    x_u8, _, data_name = image_split(data, "train", q, net)
    idx = np.sort(np.random.default_rng(0).permutation(len(x_u8))[:CALIBRATION_IMAGES])
    calib = norm.apply(x_u8[idx])
    q = pipeline.load_qgraph(net, chip=chip, calib=calib, adc_full_scale="calibrated")
    return dataclasses.replace(q, meta={**q.meta, "calibration_data": f"{len(idx)} {data_name} training images "
                                                    "(activation ranges and ADC full scales)"})


def image_split(data: str, split: str, q: QGraph, network: str = "the network") -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`imcflow.data.load_image_split` of ``split`` in ``data`` for QGraph ``q`` (its input shape
    and outputs)."""
    from imcflow.data import load_image_split
    return load_image_split(data, split, tuple(int(v) for v in q.input.shape), int(np.prod(q.spec(q.output).shape)),
                            network=network)


def _to_input_ints(q: QGraph, x_u8: np.ndarray, norm: InputNorm = InputNorm()) -> np.ndarray:
    """uint8 images (N, 3, 32, 32) -> the QGraph's input integers (``norm``'s inputs quantised)."""
    from imcflow.quant.reference import quantize_input
    return quantize_input(q, norm.apply(x_u8).astype(np.float64))


def _float_accuracy(net: str, x_u8: np.ndarray, labels: np.ndarray, batch_size: int,
                    norm: InputNorm = InputNorm()) -> dict[str, Any]:
    """Float accuracy of ``net`` on the same images: PyTorch for the shipped cifar10-cnn11, the
    float Graph executor for any other float model (ONNX file, zoo module); {} for a saved QGraph."""
    import torch
    try:
        from imcflow.models.cnn11 import load_trained
        model = load_trained() if net == "cifar10-cnn11" else None
    except ImcflowError:
        model = None
    if model is None:
        return _graph_float_accuracy(net, x_u8, labels, batch_size, norm)
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            xb = torch.from_numpy(norm.apply(x_u8[i:i + batch_size]))
            correct += int((model(xb).argmax(1).numpy() == labels[i:i + batch_size]).sum())
    return {"accuracy_float": correct / max(1, len(labels)), "float_wall_s": time.perf_counter() - t0}


def _graph_float_accuracy(net: str, x_u8: np.ndarray, labels: np.ndarray, batch_size: int,
                          norm: InputNorm) -> dict[str, Any]:
    from imcflow.frontend import run_graph
    from imcflow.pipeline import is_qgraph_path, load_float_graph
    if is_qgraph_path(net):
        return {}
    graph = load_float_graph(net)
    t0 = time.perf_counter()
    correct = 0
    for i in range(0, len(labels), batch_size):
        y = run_graph(graph, norm.apply(x_u8[i:i + batch_size]))
        correct += int((y.reshape(y.shape[0], -1).argmax(1) == labels[i:i + batch_size]).sum())
    return {"accuracy_float": correct / max(1, len(labels)), "float_wall_s": time.perf_counter() - t0,
            "float_executor": "imcflow.frontend.run_graph (float32)"}
