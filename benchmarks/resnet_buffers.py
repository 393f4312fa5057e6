"""What holds ResNet-50 back on jssc2022: simulated throughput against input-buffer size and against
the simulator's granularity (row chunks per feature map). Prints figures; not a test.

    python benchmarks/resnet_buffers.py [--buffers 16384,81920,1048576] [--chunks 16,32,56]

The rows are the figures quoted in docs/calibration.md ("ResNet-50: what limits it"): if a larger
buffer raises throughput, back-pressure on residual paths is a limit; if finer chunks leave it
unchanged, the figure is not an artefact of the event granularity.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from imcflow.config import JSSC2022
from imcflow.report.flow import compile_program, load_qgraph
from imcflow.sim.report import Features, simulate_timing


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buffers", type=_ints, default=[16384, 81920, 1048576],
                    help="input-buffer sizes per core to try, bytes (comma-separated)")
    ap.add_argument("--chunks", type=_ints, default=[16, 32, 56],
                    help="row chunks per feature map to try at the preset's buffer (comma-separated)")
    args = ap.parse_args()

    q, _ = load_qgraph("resnet50", JSSC2022)
    prog = compile_program(q, JSSC2022)
    print(f"resnet50 on jssc2022: {len(prog.phases)} phases, batch {prog.batch}")
    print(f"{'setting':40s} {'img/s':>8s} {'sim s':>7s}")
    for size in args.buffers:
        chip = dataclasses.replace(JSSC2022, buffer=dataclasses.replace(JSSC2022.buffer, input_bytes=size))
        _row(f"input buffer {size:,} B, 16 chunks", dataclasses.replace(prog, chip=chip))
    _row("unbounded buffers, 16 chunks", prog, features=Features(unbounded_buffers=True))
    for n in args.chunks:
        _row(f"input buffer {JSSC2022.buffer.input_bytes:,} B, {n} chunks", prog, max_chunks=n)


def _row(label: str, prog, **kw) -> None:
    t = time.perf_counter()
    tr = simulate_timing(prog, **kw)
    print(f"{label:40s} {tr.throughput_img_s:8.1f} {time.perf_counter() - t:7.1f}", flush=True)


if __name__ == "__main__":
    main()
