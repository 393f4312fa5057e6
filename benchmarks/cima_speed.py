"""Speed of the bit-true MVM kernel against a plain float32 matmul of the same logical matrix.

A 4-b x 4-b bit-true MVM on a full array (rows x cols of the chip, 1152 x 256 on jssc2022: a
1152 x 64 logical matrix) for 4096 input vectors, against ``torch.mm`` in float32 of the same
inputs and the 1152 x 64 matrix, in the same process; best of several repeats. The MVM does 16
binary products per logical MAC, as int8 products (about 4x the float32 rate), so a ratio near 4
means the bit-plane and ADC work costs little on top of the products.

    python benchmarks/cima_speed.py [--chip jssc2022] [--batch 4096] [--repeats 15] [--threads N]

On a loaded machine pass ``--threads 1``: the MVM is a chain of short multi-threaded torch ops,
which suffer from oversubscribed cores far more than one long matmul does.
"""

from __future__ import annotations

import argparse
import time

import torch

from imcflow.cima import mvm
from imcflow.config import get_preset


def best_times_s(fns, repeats: int) -> list[float]:
    """Best time of each function, calls interleaved so that both see the same machine load."""
    best = [float("inf")] * len(fns)
    for rep in range(repeats + 1):  # the first round warms up
        for f, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if rep:
                best[f] = min(best[f], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="jssc2022")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chip = get_preset(args.chip)
    rows, n_out, b = chip.array.rows, chip.array.cols // args.bits, args.bits
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1 << b, (args.batch, rows), generator=g, dtype=torch.uint8)
    w = torch.randint(-(1 << (b - 1)), 1 << (b - 1), (rows, n_out), generator=g, dtype=torch.int8)
    xf, wf = x.float(), w.float()

    t_mvm, t_mm = best_times_s([lambda: mvm(x, w, b, b, chip=chip, mode="bit_true"),
                                lambda: torch.mm(xf, wf)], args.repeats)
    r = mvm(x, w, b, b, chip=chip, mode="bit_true")
    err = (torch.from_numpy(r.acc) * r.scale - torch.mm(xf.double(), wf.double())).abs().mean().item()
    print(f"chip {chip.name}: {args.batch} vectors x ({rows} x {n_out}) logical, {b}-b x {b}-b, "
          f"{n_out * b} columns, torch threads {torch.get_num_threads()}")
    print(f"bit-true mvm     {t_mvm * 1e3:8.2f} ms   ({args.batch * rows * n_out / t_mvm / 1e9:.1f} G logical MAC/s)")
    print(f"float32 matmul   {t_mm * 1e3:8.2f} ms   ({args.batch * rows * n_out / t_mm / 1e9:.1f} G MAC/s)")
    print(f"ratio            {t_mvm / t_mm:8.2f}")
    print(f"mean |acc*scale - x@w| = {err:.2f} (ADC quantisation, scale {r.scale:g})")


if __name__ == "__main__":
    main()
