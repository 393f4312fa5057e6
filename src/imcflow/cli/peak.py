"""``imcflow peak``: peak TOPS and TOPS/W of a chip configuration at a given precision."""

from __future__ import annotations

import argparse
import dataclasses
import json

from imcflow.cli.common import add_chip_args, chip_from_args
from imcflow.config.peak import peak


def register(subparsers) -> None:
    p = subparsers.add_parser("peak", help="peak throughput and efficiency computed from the chip configuration",
                              description=__doc__)
    add_chip_args(p)
    p.add_argument("--bits", type=int, default=8, help="input (and weight) precision in bits (default 8)")
    p.add_argument("--w-bits", type=int, default=None, help="weight precision if different from --bits")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    chip = chip_from_args(args)
    fig = peak(chip, args.bits, args.w_bits)
    if args.json:
        print(json.dumps({"tops": fig.tops, "tops_per_w": fig.tops_per_w, "macs_per_s": fig.macs_per_s,
                          **{k: v for k, v in dataclasses.asdict(fig).items()
                             if k not in ("tops", "tops_per_w", "macs_per_s")}}))
        return 0
    print(f"chip {chip.name}: {chip.n_cores} cores of {chip.array.rows} x {chip.array.cols}, "
          f"{fig.x_bits}-b inputs, {fig.w_bits}-b weights")
    print(f"  peak throughput   {fig.tops:8.3f} TOPS  ({fig.macs_per_s:.4g} MAC/s, 1 MAC = 2 ops)")
    print(f"  peak efficiency   {fig.tops_per_w:8.3f} TOPS/W  (array + ADC energy only)")
    print(f"  one MVM           {fig.macs_per_mvm} MACs in {fig.mvm_s * 1e9:.0f} ns, "
          f"{fig.energy_per_mvm_j * 1e12:.1f} pJ")
    return 0
