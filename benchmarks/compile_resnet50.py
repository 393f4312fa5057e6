"""Compile ResNet-50 for the JSSC 2022 chip: compile time and the performance model's figures.

    python benchmarks/compile_resnet50.py            # ResNet-50 topology, random 4-b weights (fast)
    python benchmarks/compile_resnet50.py --zoo      # the zoo model through the quantiser
    python benchmarks/compile_resnet50.py --set weight_load.broadcast_copies=false --set io.in_bits_per_cycle=128

Prints the end-to-end time of ``imcflow compile resnet50 --chip jssc2022 -o ...`` (a fresh
process: imports, random-init ResNet-50, PTQ calibration, compile, JSON; skip with --no-cli), the
graph-building and compile-step times in this process, phases, batch and its reason, predicted
img/s, and per phase: copies, stage time and what bounds it, weight load time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imcflow.compiler import compile_qgraph
from imcflow.config.options import apply_overrides
from imcflow.config.presets import JSSC2022
from imcflow.perf.model import estimate_phase, phase_work


def cli_seconds(args: argparse.Namespace) -> float:
    """Wall time of the whole CLI command in a fresh Python process (its exit status checked)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "imcflow", "compile", "resnet50", "--chip", "jssc2022",
               "--objective", args.objective, "-o", str(Path(tmp) / "r50.json")]
        cmd += [a for kv in args.set for a in ("--set", kv)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", action="store_true", help="quantise the zoo resnet50 instead of the random-weight factory")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="chip override")
    ap.add_argument("--objective", default="throughput")
    ap.add_argument("--no-cli", action="store_true", help="skip timing the end-to-end CLI command")
    args = ap.parse_args()
    chip = apply_overrides(JSSC2022, args.set)
    if not args.no_cli:
        print(f"end-to-end `imcflow compile resnet50 --chip jssc2022 -o ...`: {cli_seconds(args):.2f} s wall")
    t0 = time.perf_counter()
    if args.zoo:
        from imcflow.pipeline import load_qgraph
        qgraph = load_qgraph("resnet50", chip)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from qgraph_factory import resnet_qgraph
        qgraph = resnet_qgraph(chip)
    t1 = time.perf_counter()
    prog = compile_qgraph(qgraph, chip, objective=args.objective)
    t2 = time.perf_counter()
    print(f"graph ({'zoo + PTQ' if args.zoo else 'factory'}) {t1 - t0:.2f} s, compile step alone {t2 - t1:.2f} s")
    print(f"{len(prog.phases)} phases, batch {prog.batch}: {prog.batch_reason}")
    for key in ("throughput_img_s", "time_per_image_s", "latency_s", "load_fraction", "load_time_s"):
        print(f"  predicted {key} = {prog.predicted[key]:.6g}")
    for ph in prog.phases:
        est = estimate_phase(phase_work(prog, ph), chip)
        copies = {c.layer: c.n_copies for c in ph.copies if c.copy == 0}
        print(f"  phase {ph.index:2}: {len(ph.tiles):3} tiles {len(ph.streams):3} streams, stage "
              f"{est.stage_time_s * 1e6:7.1f} us ({est.bottleneck}), load {est.load_time_s * 1e6:6.1f} us, copies {copies}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
