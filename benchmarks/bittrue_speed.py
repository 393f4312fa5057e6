"""Speed of the bit-true fast executor on cifar10-cnn11 against float PyTorch, with a per-layer profile.

Builds the cnn11 QGraph (``imcflow.pipeline.load_qgraph``: shipped QAT weights if present, else a
seeded random init + PTQ; either gives the same amount of work), runs
:func:`imcflow.quant.fast_exec.run_qgraph_fast` on ``--images`` seeded random 8-b images in
``bit_true`` and ``ideal`` mode, and float32 inference of the zoo model on the same images, all in
this process with the same thread count; prints images per second, the ratios, the projected time
for the 10,000 CIFAR-10 test images, and the time spent in each QGraph node (bit_true).

    python benchmarks/bittrue_speed.py [--images 256] [--batch 256] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from imcflow import pipeline
from imcflow.config import get_preset
from imcflow.models import get_model
from imcflow.quant import fast_exec


def best_s(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def node_profile(qgraph, x_int: np.ndarray, mode: str, chip, batch: int) -> dict[str, float]:
    """Seconds spent in each QGraph node during one run (wraps ``fast_exec.run_node_fast``)."""
    spent: dict[str, float] = defaultdict(float)
    original = fast_exec.run_node_fast

    def timed(qg, node, *args, **kwargs):
        t0 = time.perf_counter()
        out = original(qg, node, *args, **kwargs)
        spent[f"{node.name} ({node.op.value})"] += time.perf_counter() - t0
        return out

    fast_exec.run_node_fast = timed
    try:
        fast_exec.run_qgraph_fast(qgraph, x_int, mode, chip, batch_size=batch)
    finally:
        fast_exec.run_node_fast = original
    return dict(spent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar10-cnn11")
    ap.add_argument("--chip", default="jssc2022")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256, help="run_qgraph_fast batch_size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--sim", action="store_true", help="also time the simulator (compiles the program)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chip = get_preset(args.chip)
    qg = pipeline.load_qgraph(args.model, chip)
    shape = qg.spec(qg.input_name).shape
    rng = np.random.default_rng(0)
    x_int = rng.integers(0, 256, size=(args.images, *shape), dtype=np.int64)
    model = get_model(args.model).eval()
    x_float = torch.from_numpy(x_int.astype(np.float32) / 255.0)

    def float_run():
        with torch.no_grad():
            for i in range(0, args.images, args.batch):
                model(x_float[i:i + args.batch])

    times = {"float32 torch": best_s(float_run, args.repeats)}
    for mode in ("ideal", "bit_true"):
        times[mode] = best_s(lambda m=mode: fast_exec.run_qgraph_fast(qg, x_int, m, chip, batch_size=args.batch),
                             args.repeats)
    if args.sim:
        from imcflow.compiler.pipeline import compile_qgraph
        from imcflow.sim.functional import run_program
        prog = compile_qgraph(qg, chip)
        times["sim bit_true"] = best_s(lambda: run_program(prog, x_int, "bit_true"), args.repeats)
    print(f"{args.model} on {args.chip}: {args.images} images, batch {args.batch}, {args.threads} threads, "
          f"best of {args.repeats}")
    for name, t in times.items():
        rate = args.images / t
        print(f"  {name:14s} {rate:8.1f} img/s  ({t / times['float32 torch']:5.2f}x float time; "
              f"10,000 images in {10000 / rate / 60:5.2f} min)")
    if not args.no_profile:
        prof = node_profile(qg, x_int, "bit_true", chip, args.batch)
        total = sum(prof.values())
        print("bit_true time per node:")
        for name, t in prof.items():
            print(f"  {name:28s} {t * 1e3:8.1f} ms  {100 * t / total:5.1f} %")


if __name__ == "__main__":
    main()
