"""A heap-based discrete-event engine for the chip's operations.

The simulator lowers a Program to a list of :class:`Op` (one per tile operation on a row of output
pixels, per stream transfer, per weight load, per off-chip transfer), each bound to one
:class:`Resource`-like name (``core3.array``, ``core3.simd``, ``ocn.h1.2``, ``bus``, ``io.in``).
A resource serves one op at a time; among ready ops it starts the one with the lowest
``(priority, id)``. Ops with the same ``group >= 0`` may share their resource: while the
resource runs ops of group g, a ready op of group g at the head of its queue starts at once
(tiles of one array slot, disjoint in rows and columns, evaluate in the same bit-planes); any
other op waits until the resource is empty. An op becomes ready when all its dependencies have finished and each
dependency's ``latency_s`` (time after finishing that does not occupy the resource, e.g. the OCN
hop latency) has passed.

Dependencies come in two kinds: *data* (the op needs the producer's result) and *space* (the op
needs a consumer to have freed buffer space: back-pressure). The kind of the dependency that was
satisfied last tells why a resource waited, giving per-core timelines split into busy, loading,
waiting for input, waiting for output and idle.

Events are per tile operation, never per clock, so ResNet-50 at batch 8 is a few hundred thousand
events. :func:`run_reference` is a slow, obviously-right fixed-point version used by tests.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass

from imcflow.errors import SimError


class OpKind(str, enum.Enum):
    """What an operation does (used for timelines and energy)."""

    COMPUTE = "compute"        # array bit-plane evaluations
    SIMD = "simd"              # near-memory SIMD work (shift-add, partial sums, requant, pool, add)
    TRANSFER = "transfer"      # OCN stream transfer
    LOAD = "load"              # weight loading (bus and array write)
    IO_IN = "io_in"            # off-chip activation input
    IO_OUT = "io_out"          # off-chip activation output
    MARK = "mark"              # zero-duration synchronisation point


class Op:
    """One operation: occupies ``resource`` for ``duration_s`` once its dependencies are met."""

    __slots__ = ("id", "resource", "duration_s", "latency_s", "deps", "space_deps", "kind", "core",
                 "layer", "image", "priority", "phase", "group")

    def __init__(self, id: int, resource: str, duration_s: float, kind: OpKind, deps: tuple[int, ...] = (),
                 space_deps: tuple[int, ...] = (), latency_s: float = 0.0, core: int = -1, layer: str = "",
                 image: int = -1, priority: int = 0, phase: int = 0, group: int = -1) -> None:
        self.id = id
        self.resource = resource
        self.duration_s = duration_s
        self.latency_s = latency_s
        self.deps = deps
        self.space_deps = space_deps
        self.kind = kind
        self.core = core
        self.layer = layer
        self.image = image
        self.priority = priority
        self.phase = phase
        self.group = group

    def __repr__(self) -> str:
        return (f"Op({self.id}, {self.resource!r}, {self.duration_s:.3g}s, {self.kind.value}, deps={self.deps}, "
                f"space={self.space_deps}, layer={self.layer!r}, image={self.image})")


@dataclass(frozen=True)
class CoreTimeline:
    """How one core's array spent the run (seconds)."""

    core: int
    busy_s: float
    load_s: float
    wait_input_s: float
    wait_output_s: float
    idle_s: float


@dataclass(frozen=True)
class Schedule:
    """Start and finish time of every op (indexed by op id) and the run's end."""

    start_s: tuple[float, ...]
    finish_s: tuple[float, ...]
    makespan_s: float
    wait_reason: tuple[str, ...]
    """Per op: 'input' or 'output', the kind of the dependency satisfied last ('' if none)."""


def _check(ops: list[Op]) -> None:
    for i, op in enumerate(ops):
        if op.id != i:
            raise SimError(f"op list: op at position {i} has id {op.id}; ids must equal positions")
        if op.duration_s < 0 or op.latency_s < 0:
            raise SimError(f"op {op.id} ({op.resource}, layer {op.layer!r}): negative duration or latency")
        for d in (*op.deps, *op.space_deps):
            if not 0 <= d < len(ops) or d == i:
                raise SimError(f"op {op.id} ({op.resource}, layer {op.layer!r}): bad dependency {d}")


def run(ops: list[Op]) -> Schedule:
    """Simulate ``ops`` (ids 0..n-1) and return every op's start and finish time.

    Raises :class:`SimError` if the dependencies form a cycle (some ops never become ready).
    """
    _check(ops)
    n = len(ops)
    pending = [len(op.deps) + len(op.space_deps) for op in ops]
    ready_at = [0.0] * n
    reason = [""] * n
    succ: list[list[tuple[int, bool]]] = [[] for _ in range(n)]
    for op in ops:
        for d in op.deps:
            succ[d].append((op.id, False))
        for d in op.space_deps:
            succ[d].append((op.id, True))
    start = [0.0] * n
    finish = [0.0] * n
    queues: dict[str, list[tuple[int, int]]] = {}
    nrun: dict[str, int] = {}
    mode: dict[str, int] = {}
    events: list[tuple[float, int, int, int]] = []  # (time, order, type, op) type 0=done, 1=ready
    seq = 0
    for op in ops:
        queues.setdefault(op.resource, [])
        nrun.setdefault(op.resource, 0)
        mode.setdefault(op.resource, -1)
        if pending[op.id] == 0:
            events.append((0.0, 1, seq, op.id))
            seq += 1
    heapq.heapify(events)
    done = 0
    while events:
        t = events[0][0]
        touched: set[str] = set()
        while events and events[0][0] == t:
            _, etype, _, i = heapq.heappop(events)
            op = ops[i]
            touched.add(op.resource)
            if etype == 0:  # finished: free the resource, release successors
                done += 1
                nrun[op.resource] -= 1
                for s, is_space in succ[i]:
                    ra = t + op.latency_s
                    if ra >= ready_at[s]:
                        ready_at[s] = ra
                        reason[s] = "output" if is_space else "input"
                    pending[s] -= 1
                    if pending[s] == 0:
                        heapq.heappush(events, (ready_at[s], 1, seq, s))
                        seq += 1
            else:  # ready: queue on its resource
                heapq.heappush(queues[op.resource], (op.priority, i))
        for res in sorted(touched):
            q = queues[res]
            while q:
                g = ops[q[0][1]].group
                if nrun[res] and not (g >= 0 and mode[res] == g):
                    break
                _, j = heapq.heappop(q)
                nrun[res] += 1
                mode[res] = g
                start[j] = t
                finish[j] = t + ops[j].duration_s
                heapq.heappush(events, (finish[j], 0, seq, j))
                seq += 1
    if done != n:
        stuck = [ops[i] for i in range(n) if pending[i] > 0][:3]
        raise SimError(f"timing: {n - done} of {n} ops never became ready (dependency cycle), e.g. {stuck}")
    makespan = max(finish) if finish else 0.0
    return Schedule(tuple(start), tuple(finish), makespan, tuple(reason))


def run_reference(ops: list[Op]) -> Schedule:
    """Slow, obviously-right version of :func:`run`: step from one event time to the next; at each
    time, start on every free resource the lowest-(priority, id) op whose dependencies finished
    (plus latency) no later than now. Used to test :func:`run`."""
    _check(ops)
    n = len(ops)
    start: list[float | None] = [None] * n
    finish: list[float | None] = [None] * n
    resources = sorted({op.resource for op in ops})
    t = 0.0
    while any(s is None for s in start):
        def ready_time(op: Op) -> float | None:
            times = [0.0]
            for d in (*op.deps, *op.space_deps):
                if finish[d] is None or finish[d] > t:
                    return None
                times.append(finish[d] + ops[d].latency_s)
            return max(times)
        started = True
        while started:
            started = False
            for res in resources:
                running = [o for o in ops if o.resource == res and start[o.id] is not None
                           and start[o.id] <= t < finish[o.id]]
                cands = [op for op in ops if start[op.id] is None and op.resource == res
                         and (rt := ready_time(op)) is not None and rt <= t]
                if not cands:
                    continue
                op = min(cands, key=lambda o: (o.priority, o.id))
                if running and not (op.group >= 0 and all(o.group == op.group for o in running)):
                    continue
                start[op.id], finish[op.id] = t, t + op.duration_s
                started = True
                if op.duration_s == 0:
                    break
        future = [f for f in finish if f is not None and f > t]
        future += [finish[d] + ops[d].latency_s for op in ops for d in (*op.deps, *op.space_deps)
                   if finish[d] is not None and finish[d] + ops[d].latency_s > t]
        if not future:
            if any(s is None for s in start):
                raise SimError("timing reference: dependency cycle")
            break
        t = min(future)
    fin = [float(f) for f in finish]  # type: ignore[arg-type]
    return Schedule(tuple(float(s) for s in start), tuple(fin), max(fin) if fin else 0.0, ("",) * n)  # type: ignore[arg-type]


def core_timelines(ops: list[Op], sched: Schedule, n_cores: int, end_s: float | None = None) -> list[CoreTimeline]:
    """Split each core's array time into busy (union of its ``core{c}.array*`` ops), loading (LOAD
    ops of the core, on any resource), waiting for input or for output (gaps before an op, by the
    kind of dependency satisfied last) and idle (before its first op and after its last)."""
    end = sched.makespan_s if end_s is None else end_s
    by_core: dict[int, list[Op]] = {c: [] for c in range(n_cores)}
    for op in ops:
        if 0 <= op.core < n_cores and (op.kind == OpKind.LOAD or op.resource.startswith(f"core{op.core}.array")):
            by_core[op.core].append(op)
    out = []
    for c in range(n_cores):
        seq = sorted(by_core[c], key=lambda o: (sched.start_s[o.id], sched.finish_s[o.id]))
        busy = load = w_in = w_out = 0.0
        cover_end = None
        for op in seq:
            s, f = sched.start_s[op.id], sched.finish_s[op.id]
            if cover_end is not None and s > cover_end:
                if sched.wait_reason[op.id] == "output":
                    w_out += s - cover_end
                else:
                    w_in += s - cover_end
            lo = s if cover_end is None else max(s, cover_end)
            if f > lo:
                if op.kind == OpKind.LOAD:
                    load += f - lo
                else:
                    busy += f - lo
            cover_end = f if cover_end is None else max(cover_end, f)
        idle = max(0.0, end - busy - load - w_in - w_out)
        out.append(CoreTimeline(c, busy, load, w_in, w_out, idle))
    return out
