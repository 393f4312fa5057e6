"""The ``imcflow`` command line. It only parses arguments and calls the library.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int``. Errors derived from ImcflowError print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from imcflow.errors import ImcflowError

# Subcommand modules, in the order they appear in --help.
COMMANDS = ("peak", "inspect", "run", "compile", "show", "train", "eval", "reproduce", "sweep")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own status)
        self.exit(2, f"imcflow: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available subcommand."""
    parser = _Parser(prog="imcflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"imcflow.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"imcflow.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ImcflowError as exc:
        print(f"imcflow: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"imcflow: error: {exc.filename or exc}: no such file; check the path", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
