"""``imcflow eval MODEL --data DIR``: accuracy of a compiled network run through the simulator, on the
CIFAR-10 test set or a user's ``.npy`` images."""

from __future__ import annotations

import argparse
import json
import sys

from imcflow.cli.common import add_chip_args, chip_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="compile a network and run a test set (CIFAR-10 or your .npy images) through "
                                    "the simulator")
    p.add_argument("model", help="zoo name (e.g. cifar10-cnn11), an .onnx file (a float network, quantised here) "
                                 "or a .qgraph.json")
    add_chip_args(p)
    p.add_argument("--data", required=True, metavar="DIR",
                   help="CIFAR-10 folder (e.g. ../shared/data/cifar10), or a folder of train_x.npy, train_y.npy, "
                        "test_x.npy, test_y.npy (uint8 images, integer labels; see imcflow train --help)")
    p.add_argument("--mode", default="bit_true", choices=("ideal", "bit_true", "analog"))
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="N test images only: a seeded sample over all classes (the test set is stored sorted by class, so its first N would be one class)")
    p.add_argument("--batch-size", type=int, default=250, metavar="B", help="images per simulator call")
    p.add_argument("--mean", default=None, metavar="M[,M,M]",
                   help="per-channel mean of a network trained on normalised inputs: it gets "
                        "(pixel / 255 - mean) / std (default: pixel / 255, as the zoo networks)")
    p.add_argument("--std", default=None, metavar="S[,S,S]", help="per-channel std, with --mean")
    p.set_defaults(func=_run)


def _floats(text: str, flag: str) -> tuple[float, ...]:
    from imcflow.errors import DataError
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0.4914,0.4822,0.4465") from None


def _norm(args: argparse.Namespace):
    from imcflow.errors import DataError
    from imcflow.report.flow import InputNorm
    if (args.mean is None) != (args.std is None):
        raise DataError("--mean and --std go together: give both (one value per channel) or neither")
    if args.mean is None:
        return InputNorm()
    return InputNorm(_floats(args.mean, "--mean"), _floats(args.std, "--std"))


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imcflow.errors import DataError
    from imcflow.report.flow import evaluate_accuracy

    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit {args.limit}: must be >= 1")
    if args.batch_size < 1:
        raise DataError(f"--batch-size {args.batch_size}: must be >= 1")
    chip = chip_from_args(args)
    _norm(args)  # bad --mean/--std fail before any work
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # drawn once images flow, so an error while loading stays one line on stderr
            bar = tqdm(total=total, unit="img", file=sys.stderr, desc=f"{args.model} {args.mode}")
        bar.update(done - bar.n)

    res = evaluate_accuracy(args.model, chip, args.data, mode=args.mode, limit=args.limit,
                            batch_size=args.batch_size, progress=progress, norm=_norm(args))
    if bar is not None:
        bar.close()
    data = "CIFAR-10 (JPEG q75 copy)" if res["data"] == "CIFAR-10" else res["data"]
    lines = [f"{args.model} on {chip.name}, {res['images']} {data} test images",
             f"  accuracy ({args.mode}):  {100 * res['accuracy']:.2f} %   ({res['wall_s']:.1f} s)"]
    if "accuracy_ideal" in res and args.mode != "ideal":
        lines.append(f"  accuracy (ideal):     {100 * res['accuracy_ideal']:.2f} %   ({res['wall_s_ideal']:.1f} s)")
    if "accuracy_float" in res:
        how = "PyTorch" if "float_executor" not in res else "imcflow float executor"
        lines.append(f"  accuracy (float):     {100 * res['accuracy_float']:.2f} %   ({res['float_wall_s']:.1f} s, {how})")
        lines.append(f"  simulator / float {how} wall time: {res['sim_over_float_time']:.1f}x")
    if "calibration" in res:
        lines.append(f"  post-training quantised, calibrated on {res['calibration']}")
    if "note" in res:
        lines.append(f"  note: {res['note']}")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0
