"""The order in which both simulators walk a phase's per-core programs.

Each core runs its tasks' instructions in program order; an instruction whose data is not there
yet (a RECV before its SEND, an MVM before its inputs) blocks its task, and the walk moves on to the
other tasks. It sweeps until no task progresses: every task finished, or the rest are deadlocked,
which :func:`run_tasks` reports. The functional simulator (:mod:`imcflow.sim.functional`) executes
the instructions; the timing lowering (:mod:`imcflow.sim.lower`) turns them into timed operations.
"""

from __future__ import annotations

from typing import Callable

from imcflow.ir.program import Instr, Phase


class Blocked(Exception):
    """Raised by an instruction handler: the instruction cannot run yet; the message says why."""


def run_tasks(phase: Phase, execute: Callable[[int, tuple[int, int, int], Instr], None]) -> list[str]:
    """Run the tasks of ``phase`` in data-flow order.

    ``execute(core, (core, task, pc), instr)`` runs one instruction or raises :class:`Blocked`.
    Returns one line per task left blocked (``core C task T at INSTR (why)``); empty when every
    task ran to its end.
    """
    tasks = {(cp.core, k): t for cp in phase.cores for k, t in enumerate(cp.tasks)}
    pcs = dict.fromkeys(tasks, 0)
    why: dict[tuple[int, int], str] = {}
    progress = True
    while progress:
        progress = False
        for key, task in tasks.items():
            while pcs[key] < len(task.instrs):
                try:
                    execute(key[0], key + (pcs[key],), task.instrs[pcs[key]])
                except Blocked as exc:
                    why[key] = str(exc)
                    break
                pcs[key] += 1
                progress = True
    return [f"core {k[0]} task {t.name!r} at {t.instrs[pcs[k]]} ({why.get(k, '')})"
            for k, t in tasks.items() if pcs[k] < len(t.instrs)]
