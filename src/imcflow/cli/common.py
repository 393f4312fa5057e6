"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from imcflow.config import ChipConfig, apply_overrides, get_preset


def add_chip_args(parser: argparse.ArgumentParser) -> None:
    """``--chip PRESET`` and repeatable ``--set section.field=value``."""
    parser.add_argument("--chip", default="jssc2022", help="chip preset: jssc2022, tiny or ideal")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one configuration field, e.g. --set adc.rate_hz=40e6 (repeatable)")


def chip_from_args(args: argparse.Namespace) -> ChipConfig:
    """The preset named by ``--chip`` with every ``--set`` applied."""
    return apply_overrides(get_preset(args.chip), args.overrides)
