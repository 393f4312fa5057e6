"""``imcflow reproduce``: the paper's headline figures next to imcflow's, with ratios."""

from __future__ import annotations

import argparse
import json
import sys

from imcflow.cli.common import add_chip_args, chip_from_args
from imcflow.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="compile and simulate the paper's benchmarks; print them beside the "
                                         "published figures")
    add_chip_args(p)
    p.add_argument("--json", metavar="PATH", help="also write the table and the reports behind it as JSON")
    p.add_argument("--data", metavar="DIR", help="CIFAR-10 folder (e.g. ../shared/data/cifar10) for the accuracy row")
    p.add_argument("--accuracy-limit", type=int, default=1000, metavar="N",
                   help="test images for the accuracy row (default 1000; 0 = all 10,000)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from imcflow.report.reproduce import reproduce
    from imcflow.report.tables import format_rows

    if args.accuracy_limit < 0:
        raise DataError(f"--accuracy-limit {args.accuracy_limit}: must be >= 0 (0 = all 10,000 test images)")
    chip = chip_from_args(args)
    limit = None if args.accuracy_limit == 0 else args.accuracy_limit
    rep = reproduce(chip, data=args.data, accuracy_limit=limit,
                    progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"imcflow vs. Jia et al., IEEE JSSC 2022, on chip preset {chip.name!r}")
    print(format_rows(rep.rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rep.to_dict(), fh, indent=1)
    return 0
