"""Speed of the simulator: timing of ResNet-50 at batch 8 (goal < 60 s) and functional bit-true
runs of cifar10-cnn11 (goal: 10,000 images in < 10 min on 2 cores). Prints figures; not a test.

    python benchmarks/sim_speed.py [--images 8] [--functional 500]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from imcflow.config import JSSC2022
from imcflow.report.flow import compile_program, load_qgraph
from imcflow.sim.functional import run_program
from imcflow.sim.report import make_report, simulate_timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="images for the ResNet-50 timing run")
    ap.add_argument("--functional", type=int, default=500, help="cnn11 images for the functional run")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()

    q, _ = load_qgraph("cifar10-cnn11", JSSC2022)
    prog = compile_program(q, JSSC2022)
    x = np.random.default_rng(0).integers(0, 1 << q.input.bits, size=(args.functional, *q.input.shape))
    t = time.perf_counter()
    for i in range(0, len(x), 250):
        run_program(prog, x[i:i + 250], "bit_true")
    dt = time.perf_counter() - t
    print(f"cnn11 functional bit_true: {args.functional} images in {dt:.1f} s "
          f"({args.functional / dt:.0f} img/s; 10,000 images ~ {10000 / args.functional * dt / 60:.1f} min)")
    t = time.perf_counter()
    r = make_report(prog, simulate_timing(prog, images=8))
    print(f"cnn11 timing, 8 images: {time.perf_counter() - t:.2f} s -> {r.throughput_img_s:,.0f} img/s")

    if not args.skip_resnet:
        t = time.perf_counter()
        q, _ = load_qgraph("resnet50", JSSC2022, trained=False)
        prog = compile_program(q, JSSC2022)
        t_compile = time.perf_counter() - t
        t = time.perf_counter()
        tr = simulate_timing(prog, images=args.images)
        r = make_report(prog, tr)
        print(f"resnet50: load+compile {t_compile:.1f} s; timing of {args.images} images "
              f"({len(tr.lowered.ops):,} ops, {len(prog.phases)} phases) in {time.perf_counter() - t:.1f} s "
              f"-> {r.throughput_img_s:,.1f} img/s")


if __name__ == "__main__":
    main()
