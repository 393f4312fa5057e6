"""``imcflow show prog.json``: print a readable summary of a compiled Program."""

from __future__ import annotations

import argparse

from imcflow.ir.program import Program


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a readable summary of a compiled Program (JSON)")
    p.add_argument("program", help="Program JSON written by 'imcflow compile -o'")
    p.add_argument("--instructions", action="store_true", help="also list every core's tasks and instructions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    program = Program.load(args.program)
    print(program)
    if args.instructions:
        for phase in program.phases:
            for cp in phase.cores:
                print(f"phase {phase.index} core {cp.core}: {len(cp.loads)} loads")
                for task in cp.tasks:
                    print(f"  task {task.name}")
                    for ins in task.instrs:
                        print(f"    {ins}")
    return 0
