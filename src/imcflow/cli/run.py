"""``imcflow run MODEL --inputs X.npy``: run a network on your inputs in float or in the chip's arithmetic.

MODEL is a zoo name, an ``.onnx`` file or a ``.qgraph.json``. Inputs are a float ``.npy`` array
``(N, C, H, W)`` in the model's float input domain (``pixel / 255`` for the zoo's image models).
``--mode float`` runs the float network; ``ideal``, ``bit_true`` and ``analog`` run the quantised
network (:func:`imcflow.pipeline.load_qgraph`) on the integer reference executor and report
real-valued (dequantised) outputs. ``--save-outputs`` writes them as a float64 ``.npy``.

The steps are separate functions (:func:`load_inputs`, :func:`compute_outputs`, :func:`summary`)
so that other front ends (e.g. a compiled-program path with a JSON report) can reuse them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from imcflow.cli.common import add_chip_args, chip_from_args
from imcflow.config.chip import ChipConfig
from imcflow.errors import ConfigError, DataError
from imcflow.pipeline import (RUN_MODES, check_inputs, describe_source, load_qgraph, model_input_shape, run_model,
                              run_quantised)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a model on a .npy of inputs (float or quantised modes)", description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``imcflow run`` (reusable by extensions of the command)."""
    p.add_argument("model", help="zoo name, .onnx file or .qgraph.json file")
    p.add_argument("--inputs", default=None, metavar="X.npy",
                   help="float inputs (N, C, H, W) in the model's input domain (pixel / 255 for zoo image models); "
                        "without it (or with --json) the model is compiled and its timing and energy simulated")
    p.add_argument("--json", metavar="REPORT.json", default=None,
                   help="compile, simulate timing and energy, print the report and write it as JSON")
    p.add_argument("--images", type=int, default=None, metavar="N", help="images simulated for timing")
    p.add_argument("--data", metavar="DIR", default=None, help="CIFAR-10 folder: add bit-true accuracy to the report")
    p.add_argument("--save-outputs", metavar="Y.npy", default=None, help="write the (N, ...) outputs here")
    p.add_argument("--labels", metavar="L.npy", default=None,
                   help="integer class labels (N,) of --inputs: print the top-1 accuracy of the outputs")
    p.add_argument("--mode", choices=RUN_MODES, default="bit_true",
                   help="float network, or the chip's arithmetic: ideal ADC, bit_true (default), analog")
    add_chip_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the analog non-idealities (default 0)")
    p.add_argument("--calib", metavar="C.npy", default=None,
                   help="float calibration inputs for post-training quantisation (default: seeded synthetic)")
    p.add_argument("--adc-full-scale", choices=("rows", "calibrated"), default="rows",
                   help="ADC full scale per layer when quantising here: rows (never clips, default) or calibrated "
                        "(clips at most 1e-4 of the conversions on --calib; needs representative --calib data)")
    p.add_argument("--untrained", action="store_true",
                   help="use a random-init zoo network (seed 0) even if trained weights are shipped")
    p.add_argument("--skip-zero-bitplanes", action="store_true",
                   help="timing report: skip input bit-planes that are all zero over a tile's rows (activity "
                        "measured on --data test images, else on synthetic inputs)")
    p.add_argument("--unbounded-buffers", action="store_true",
                   help="timing report: no input-buffer capacity limit (no back-pressure), a what-if")
    p.add_argument("--timeline", metavar="PNG", default=None,
                   help="timing report: also plot each core's timeline (array busy by layer, weight bus, "
                        "off-chip ports) of the simulated run")


def _read_npy(path: str, what: str, wanted: str) -> np.ndarray:
    """One array from a .npy file; DataError naming ``what`` (the option) and ``wanted`` otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {path}: no such file; give {wanted}")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{what} {path}: not a readable .npy array ({exc}); save it with numpy.save") from None
    if not isinstance(x, np.ndarray):
        raise DataError(f"{what} {path}: holds several arrays; give {wanted}")
    return x


def load_inputs(path: str, shape: tuple[int, ...], what: str = "--inputs") -> np.ndarray:
    """A float32 array (N, *shape) from a .npy file; DataError naming the expected shape otherwise."""
    dims = ", ".join(map(str, shape))
    x = _read_npy(path, what, f"a .npy array of shape (N, {dims})")
    return check_inputs(x, shape, f"{what} {path}")


def compute_outputs(args: argparse.Namespace, chip: ChipConfig, x: np.ndarray) -> tuple[np.ndarray, str]:
    """(outputs of ``args.model`` on ``x`` in ``args.mode`` as real values (float64), where the
    weights came from in words)."""
    trained = not args.untrained
    if args.mode == "float":
        return run_model(args.model, x, "float", chip, trained=trained), "float network"
    calib = load_inputs(args.calib, x.shape[1:], "--calib") if args.calib else None
    qgraph = load_qgraph(args.model, chip, calib=calib, trained=trained, adc_full_scale=args.adc_full_scale)
    return run_quantised(qgraph, x, args.mode, chip, args.seed), describe_source(qgraph)


def load_labels(path: str, n: int, classes: int) -> np.ndarray:
    """Integer labels (n,) in [0, classes) from a .npy file; DataError naming the problem otherwise."""
    lab = _read_npy(path, "--labels", f"a .npy array of {n} integer class labels")
    if lab.shape != (n,):
        raise DataError(f"--labels {path}: shape {lab.shape}; expected ({n},), one label per input")
    if not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"--labels {path}: dtype {lab.dtype}; give integer class indices")
    if n and (lab.min() < 0 or lab.max() >= classes):
        raise DataError(f"--labels {path}: labels span {lab.min()} .. {lab.max()}, but the model has {classes} "
                        f"classes (0 .. {classes - 1})")
    return lab.astype(np.int64)


def accuracy_line(y: np.ndarray, labels: np.ndarray) -> str:
    """``top-1 accuracy: P % (K of N)`` of outputs ``y`` (N, classes) against ``labels``."""
    right = int((y.argmax(axis=1) == labels).sum())
    return f"  top-1 accuracy: {100 * right / max(1, len(labels)):.2f} % ({right} of {len(labels)})"


def summary(model: str, mode: str, chip: ChipConfig, x: np.ndarray, y: np.ndarray, source: str = "") -> str:
    """A few lines describing a run (shapes, weights, and the predicted classes of a classifier)."""
    lines = [f"{model}: {x.shape[0]} input(s) {tuple(x.shape[1:])} -> outputs {tuple(y.shape[1:])}, "
             f"mode {mode}, chip {chip.name}"]
    if source:
        lines.append(f"  weights: {source}")
    if y.ndim == 2 and y.shape[0]:
        top = y.argmax(axis=1)
        shown = " ".join(str(int(c)) for c in top[:16]) + (" ..." if len(top) > 16 else "")
        lines.append(f"  top-1 classes: {shown}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    chip = chip_from_args(args)
    timing = args.json or not args.inputs
    if args.labels and not args.inputs:
        raise ConfigError("--labels scores the outputs of --inputs: give --inputs X.npy too")
    if not timing and (args.skip_zero_bitplanes or args.unbounded_buffers or args.timeline):
        raise ConfigError("--skip-zero-bitplanes, --unbounded-buffers and --timeline belong to the timing report: "
                         "add --json REPORT.json (or drop --inputs)")
    if timing:  # compile + simulate + report (imcflow.report.flow)
        from imcflow.report.flow import model_report
        from imcflow.report.tables import format_report
        report = model_report(args.model, chip, images=args.images, trained=not args.untrained, data=args.data,
                              skip_zero=args.skip_zero_bitplanes, unbounded_buffers=args.unbounded_buffers,
                              timeline=args.timeline)
        print(format_report(report))
        if args.timeline:
            print(f"wrote {args.timeline}")
        if args.json:
            report.save(args.json)
            print(f"wrote {args.json}")
        if not args.inputs:
            return 0
    x = load_inputs(args.inputs, model_input_shape(args.model))
    y, source = compute_outputs(args, chip, x)
    if args.save_outputs:
        np.save(args.save_outputs, y)
    print(summary(args.model, args.mode, chip, x, y, source))
    if args.labels:
        if y.ndim != 2:
            raise DataError(f"--labels: the model's outputs have shape {tuple(y.shape[1:])}, not class scores")
        print(accuracy_line(y, load_labels(args.labels, len(x), y.shape[1])))
    if args.save_outputs:
        print(f"wrote {args.save_outputs}")
    return 0
