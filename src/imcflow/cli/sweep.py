"""``imcflow sweep MODEL --vary section.field=v1,v2,...``: one network on a grid of chip
configurations and mappings (every combination of the varied fields; ``objective`` and ``batch``
set the compiler's mapping), each compiled and simulated like
``imcflow run``; prints a table with ratios to the first point, and optionally writes JSON, CSV and
a plot. Example: ``imcflow sweep cifar10-cnn11 --vary adc.rate_hz=10e6,20e6,40e6``."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys

from imcflow.cli.common import add_chip_args, chip_from_args
from imcflow.compiler.placement import OBJECTIVES
from imcflow.errors import ConfigError
from imcflow.pipeline import is_qgraph_path, model_input_shape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="compile and simulate a network on a grid of chip configurations",
                       description=__doc__)
    p.add_argument("model", help="zoo name, .onnx file or .qgraph.json file")
    p.add_argument("--vary", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                   help="a chip field and the values to try (repeatable: every combination runs); also "
                        "objective=throughput,latency,energy or batch=N1,N2 to vary the mapping")
    add_chip_args(p)
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput", help="what the mapping optimises")
    p.add_argument("--images", type=int, default=None, metavar="N", help="images simulated per point")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="CIFAR-10 folder: add each point's bit-true accuracy through the simulator")
    p.add_argument("--limit", type=int, default=500, metavar="N",
                   help="seeded test images per point for the accuracy (default 500)")
    p.add_argument("--json", metavar="PATH", help="write the points as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the table as CSV")
    p.add_argument("--plot", metavar="PNG", help="write a bar plot of img/s and img/s/W per point")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from imcflow.report.sweep import error_notes, grid, parse_axis, plot, sweep, table_rows
    from imcflow.report.tables import format_table

    if not args.vary:
        raise ConfigError("sweep needs at least one --vary section.field=v1,v2,... (e.g. --vary adc.rate_hz=10e6,20e6)")
    if args.images is not None and args.images < 1:
        raise ConfigError(f"--images {args.images}: must be >= 1")
    if args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: must be >= 1")
    base = chip_from_args(args)
    axes = [parse_axis(v) for v in args.vary]
    grid(base, axes)  # every point's chip is valid before anything runs
    if not is_qgraph_path(args.model):
        model_input_shape(args.model)  # and the model exists
    points = sweep(args.model, base, axes, objective=args.objective, images=args.images,
                   progress=lambda m: print(m, file=sys.stderr, flush=True), data=args.data, limit=args.limit)
    rows = table_rows(points)
    print(f"{args.model} on {base.name!r}, {len(points)} configuration(s); ratios to the first that ran")
    print(format_table(rows[0], rows[1:]))
    for line in error_notes(points):
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "chip": base.name, "objective": args.objective,
                       "points": [dataclasses.asdict(p) for p in points]}, fh, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    if args.plot:
        plot(points, args.plot, f"{args.model} on {base.name}")
    return 0
