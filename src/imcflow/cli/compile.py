"""``imcflow compile MODEL``: map a network onto the chip and save the Program as JSON."""

from __future__ import annotations

import argparse

from imcflow.cli.common import add_chip_args, chip_from_args
from imcflow.compiler import compile_qgraph
from imcflow.compiler.placement import OBJECTIVES
from imcflow.pipeline import describe_source, load_qgraph


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a model (zoo name, .onnx or .qgraph.json) into a Program")
    p.add_argument("model", help="zoo name, .onnx file or .qgraph.json file")
    add_chip_args(p)
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput", help="what the mapping optimises")
    p.add_argument("--batch", type=int, default=None, help="images per phase pass (default: chosen by the compiler)")
    p.add_argument("-o", "--output", default=None, help="write the Program JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    chip = chip_from_args(args)
    qgraph = load_qgraph(args.model, chip)
    program = compile_qgraph(qgraph, chip, objective=args.objective, batch=args.batch)
    if args.output:
        program.save(args.output)
    print(program)
    print(f"weights: {describe_source(qgraph)}")
    if args.output:
        print(f"wrote {args.output}")
    return 0
