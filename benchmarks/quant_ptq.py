"""Post-training quantisation of cifar10-cnn11: accuracy of the integer network against the float one.

Prints the float top-1 on a CIFAR-10 test subset, then the PTQ top-1 (fast executor, ``ideal`` ADC
and ``bit_true``) for several activation calibration settings, and the images/s of both executors.

    python benchmarks/quant_ptq.py --weights runs/cnn11/float.pt --data ../shared/data/cifar10 --n-test 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from imcflow.data import load_cifar10
from imcflow.frontend import run_graph
from imcflow.models.cnn11 import load_trained
from imcflow.pipeline import load_float_graph
from imcflow.quant.calibrate import QuantSpec, calibrate
from imcflow.quant.fast_exec import run_qgraph_fast
from imcflow.quant.reference import quantize_input, run_qgraph


def _subset(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    return x[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255.0, y[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="float state_dict (default: the shipped weights)")
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--chip", default="jssc2022")
    ap.add_argument("--settings", default="percentile:99.99:max,percentile:99.9:max,max:100:max,mse:0:max,mse:0:mse",
                    help="comma-separated method:percentile:w_clip[:rows|calibrated] calibration settings "
                         "(activation range, weight clipping, ADC full scale)")
    ap.add_argument("--bit-true", action="store_true", help="also run bit_true for every setting (slow on CPU)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    graph = load_float_graph(load_trained(args.weights).eval(), (3, 32, 32))
    xt, yt = _subset(*load_cifar10(args.data, "test"), args.n_test, 0)
    xc, _ = _subset(*load_cifar10(args.data, "train"), args.n_calib, 1)
    f_acc = float((run_graph(graph, xt).argmax(1) == yt).mean())
    print(f"float top-1 on {len(yt)} test images: {f_acc:.4f}")
    for setting in args.settings.split(","):
        method, p, w_clip, *adc = setting.split(":")
        p = float(p) if method == "percentile" else 99.99
        spec = QuantSpec(input_scale=1 / 255, method=method, percentile=p, w_clip=w_clip,
                         adc_full_scale=adc[0] if adc else "rows")
        qg = calibrate(graph, xc, args.chip, spec)
        xi = quantize_input(qg, xt)
        t = time.time()
        ideal = float((run_qgraph_fast(qg, xi, "ideal", args.chip).argmax(1) == yt).mean())
        if spec.adc_full_scale == "calibrated":
            print("  full scales:", {n.name: n.adc_full_scale_rows for n in qg.mvm_nodes()})
        line = f"PTQ w4a4 {setting:<24}: ideal top-1 {ideal:.4f} ({len(yt) / (time.time() - t):.0f} img/s)"
        if args.bit_true:
            t = time.time()
            bt = float((run_qgraph_fast(qg, xi, "bit_true", args.chip).argmax(1) == yt).mean())
            line += f", bit_true top-1 {bt:.4f} ({len(yt) / (time.time() - t):.1f} img/s)"
        print(line)
    t = time.time()
    run_qgraph(qg, xi[:8], "bit_true", args.chip)
    print(f"reference executor (bit_true, mvm per tile): {8 / (time.time() - t):.1f} img/s")


if __name__ == "__main__":
    main()
