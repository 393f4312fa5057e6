"""``imcflow inspect MODEL``: layers, shapes, parameters, MACs and arrays needed, per layer and in total."""

from __future__ import annotations

import argparse
import json

from imcflow.cli.common import add_chip_args, chip_from_args


def register(subparsers) -> None:
    """Add the ``inspect`` subcommand."""
    p = subparsers.add_parser("inspect", help="list a model's layers, parameters, MACs and arrays needed",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", help="zoo model name (e.g. resnet50) or path to an .onnx file")
    add_chip_args(p)
    p.add_argument("--w-bits", type=int, default=4, help="weight precision in bits for the array count (default 4)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=run)


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:g}"


def run(args: argparse.Namespace) -> int:
    """Import the model, count, print."""
    from imcflow.frontend import load_graph
    from imcflow.frontend.stats import graph_stats

    chip = chip_from_args(args)
    graph = load_graph(args.model)
    stats = graph_stats(graph, chip, args.w_bits)
    lowered = _normalisation_summary(graph, chip, args.w_bits)
    if args.json:
        print(json.dumps(stats.to_dict() | {"lowered_batchnorm": lowered}, indent=1))
        return 0
    print(f"{graph.name}: input {graph.input_shape}, chip {chip.name} "
          f"({chip.n_cores} arrays of {chip.array.rows}x{chip.array.cols}), {args.w_bits}-b weights")
    for key in ("input_layout", "host_output"):
        if graph.meta.get(key):
            print(f"note: {graph.meta[key]}")
    print(f"{'layer':<28} {'op':<15} {'output':<16} {'params':>10} {'MACs':>14} {'rows':>6} {'cols':>6} "
          f"{'tiles':>7} {'arrays':>6}")
    for s in stats.layers:
        tiles = f"{s.row_tiles}x{s.col_tiles}" if s.arrays else ""
        print(f"{s.name[:28]:<28} {s.op:<15} {str(s.out_shape):<16} {s.params or '':>10} {s.macs or '':>14} "
              f"{s.rows or '':>6} {s.cols or '':>6} {tiles:>7} {s.arrays or '':>6}".rstrip())
    print(f"total: {stats.params:,} parameters ({_si(stats.params)}), {stats.macs:,} MACs per image "
          f"({_si(stats.macs)}), {stats.weight_layers} weight layers need {stats.arrays} arrays "
          f"(chip has {stats.chip_arrays})")
    if lowered["layers"]:
        print(f"batch norm or per-channel constant arithmetic with no conv/linear layer to fold into: "
              f"{', '.join(lowered['layers'])}; each runs as a diagonal 1x1 layer, so the chip needs "
              f"{lowered['arrays']} arrays in all"
              + ("; the one on the input also turns the 8-b input into 4-b activations for the first layer: "
                 "normalise in the data pipeline instead (the first layer's batch norm absorbs it)"
                 if lowered["on_input"] else ""))
    if lowered["moves_imported"]:
        kept = lowered["moves"]
        print(f"slicing/padding imported as {lowered['moves_imported']} 1x1 layer(s) with 0/1 weights; after "
              f"fusing and moving them into the convs that read them, "
              + (f"{len(kept)} remain{'s' if len(kept) == 1 else ''} ({', '.join(kept)})" if kept else "none remain")
              + f", so the chip needs {lowered['arrays']} arrays in all")
    return 0


def _normalisation_summary(graph, chip, w_bits: int) -> dict:
    """The batch norms that normalisation turns into their own diagonal layers, the slice/pad layers it
    keeps, and the arrays the normalised network needs."""
    from imcflow.frontend.normalize import LOWERED_MOVES, normalize
    from imcflow.frontend.stats import graph_stats

    norm = normalize(graph)
    lowered = [n for n in norm.nodes if n.attrs.get("lowered_from") == "batchnorm"]
    names = [n.name + (f" ({n.attrs['source_op']})" if "source_op" in n.attrs else "") for n in lowered]
    moves_imported = sum(n.attrs.get("lowered_from") in LOWERED_MOVES for n in graph.nodes)
    return {"layers": names, "arrays": graph_stats(norm, chip, w_bits).arrays,
            "on_input": any(n.inputs[0] == norm.input_name for n in lowered), "moves_imported": moves_imported,
            "moves": [n.name for n in norm.nodes if n.attrs.get("lowered_from") in LOWERED_MOVES]}
