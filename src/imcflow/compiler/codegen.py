"""Code generation: a placed and routed phase becomes an :class:`imcflow.ir.program.Phase`."""

from __future__ import annotations

from collections import defaultdict

from imcflow.compiler.placement import PhasePlan, pixel_range
from imcflow.compiler.routing import StreamSpec
from imcflow.compiler.tiling import LayerTiling
from imcflow.config.chip import ChipConfig
from imcflow.ir.program import (CHANNEL_MIXING, CoreProgram, Instr, InstrKind, LayerCopy, Phase, Route, Stream,
                                StreamKind, Task, TileSlot)
from imcflow.ir.qgraph import QGraph
from imcflow.perf.model import TileWork, slot_schedule


def _tile_slots(plan: PhasePlan, qgraph: QGraph, tilings: dict[str, LayerTiling], perm: list[int]) -> list[TileSlot]:
    index = {n.name: i for i, n in enumerate(qgraph.nodes)}
    placed = sorted(plan.placed, key=lambda p: (index[p.req.layer], p.req.copy, p.req.ct, p.req.rt))
    by_core: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(placed):
        by_core[perm[p.array]].append(i)
    slots = [0] * len(placed)
    for core, ids in by_core.items():
        works = [TileWork(placed[i].req.layer, core, placed[i].r0, placed[i].req.rows, placed[i].c0,
                          placed[i].req.cols, placed[i].req.bitplanes) for i in ids]
        for i, s in zip(ids, slot_schedule(works)):
            slots[i] = s
    out = []
    for i, p in enumerate(placed):
        q, tl = p.req, tilings[p.req.layer]
        ch_lo, ch_hi = tl.row_tiles[q.rt]
        oc_lo, oc_hi = tl.col_tiles[q.ct]
        out.append(TileSlot(tile_id=i, layer=q.layer, copy=q.copy, row_tile=q.rt, ch_lo=ch_lo, ch_hi=ch_hi,
                            oc_lo=oc_lo, oc_hi=oc_hi, core=perm[p.array], row_offset=p.r0, col_offset=p.c0,
                            rows=q.rows, cols=q.cols, slot=slots[i]))
    return out


def _covered(ranges: list[tuple[int, int]], lo: int, hi: int) -> bool:
    """Whether the union of ``ranges`` covers [lo, hi)."""
    at = lo
    for a, b in sorted(ranges):
        if a <= at < b:
            at = b
    return at >= hi


class _Emitter:
    """Builds the tasks of every core of one phase."""

    def __init__(self, plan: PhasePlan, qgraph: QGraph, tilings: dict[str, LayerTiling], streams: list[Stream],
                 tiles: list[TileSlot]):
        self.plan, self.qgraph, self.tilings, self.streams, self.tiles = plan, qgraph, tilings, streams, tiles
        self.received: dict[int, set[int]] = defaultdict(set)
        self.tasks: dict[int, list[Task]] = defaultdict(list)

    def _recv_act(self, core: int, wanted) -> list[Instr]:
        out = []
        for s in self.streams:
            if s.kind == StreamKind.ACT and core in s.dsts and s.stream_id not in self.received[core] and wanted(s):
                self.received[core].add(s.stream_id)
                out.append(Instr(InstrKind.RECV, stream=s.stream_id))
        return out

    def _sends(self, core: int, kind: StreamKind, tensor: str, **match) -> list[Instr]:
        return [Instr(InstrKind.SEND, stream=s.stream_id) for s in self.streams
                if s.kind == kind and s.src == core and s.tensor == tensor
                and all(getattr(s, k) == v for k, v in match.items())]

    def mvm_task(self, layer: str, copy: int, core: int, tiles: list[TileSlot]) -> None:
        """RECV inputs, MVM every tile; the core of the phase's first row tile of a column tile also
        RECVs the other row tiles' partial sums (and a spilled accumulator), ACCUMULATEs, then
        REQUANTs and SENDs activations, or, in a non-final row-tile group, SENDs the accumulator
        off-chip."""
        tl = self.tilings[layer]
        r0, r1 = self.plan.row_tiles[layer]
        last_group = r1 == len(tl.row_tiles)
        src = self.qgraph.node(layer).inputs[0]
        px_lo, px_hi = pixel_range(tl.pixels, copy, self.plan.copies[layer])
        ins = self._recv_act(core, lambda s: s.tensor == src and any(
            t.ch_lo < s.oc_hi and s.oc_lo < t.ch_hi for t in tiles))
        for t in tiles:
            ins.append(Instr(InstrKind.MVM, layer=layer, tile=t.tile_id, copy=copy, row_tile=t.row_tile,
                             ch_lo=t.ch_lo, ch_hi=t.ch_hi, oc_lo=t.oc_lo, oc_hi=t.oc_hi, px_lo=px_lo, px_hi=px_hi,
                             x_bits=tl.x_bits, x_signed=tl.x_signed, w_bits=tl.w_bits,
                             adc_full_scale_rows=tl.adc_full_scale_rows))
        for t in tiles:
            if t.row_tile != r0:
                ins += self._sends(core, StreamKind.PSUM, layer, copy=copy, row_tile=t.row_tile, oc_lo=t.oc_lo)
        made: list[tuple[int, int]] = []
        outgoing = [s for s in self.streams if s.kind == StreamKind.ACT and s.src == core and s.tensor == layer
                    and s.px_lo == px_lo]
        for t in tiles:
            if t.row_tile != r0:
                continue
            rng = dict(layer=layer, copy=copy, oc_lo=t.oc_lo, oc_hi=t.oc_hi, px_lo=px_lo, px_hi=px_hi)
            ins += [Instr(InstrKind.RECV, stream=s.stream_id) for s in self.streams
                    if s.kind in (StreamKind.PSUM, StreamKind.ACC) and s.dsts == (core,) and s.tensor == layer
                    and s.copy == copy and s.oc_lo == t.oc_lo]
            if len(tl.row_tiles) > 1:
                ins.append(Instr(InstrKind.ACCUMULATE, n_parts=r1 - r0, row_tile=r0 if r0 > 0 else -1, **rng))
            if not last_group:
                ins += self._sends(core, StreamKind.ACC, layer, copy=copy, oc_lo=t.oc_lo)
                continue
            ins.append(Instr(InstrKind.REQUANT, **rng))
            made.append((t.oc_lo, t.oc_hi))
            ready = [s for s in outgoing if _covered(made, s.oc_lo, s.oc_hi)]
            ins += [Instr(InstrKind.SEND, stream=s.stream_id) for s in ready]
            outgoing = [s for s in outgoing if s not in ready]
        self.tasks[core].append(Task(name=f"{layer}#{copy}", instrs=tuple(ins)))

    def simd_task(self, name: str, core: int, oc_lo: int, oc_hi: int, whole: bool) -> None:
        node = self.qgraph.node(name)
        mixing = node.op in CHANNEL_MIXING   # reads every channel of its inputs
        ins = self._recv_act(core, lambda s: s.tensor in node.inputs
                             and (mixing or (s.oc_lo < oc_hi and oc_lo < s.oc_hi)))
        spec = node.out
        pixels = spec.shape[1] * spec.shape[2] if len(spec.shape) == 3 else 1
        ins.append(Instr(InstrKind(node.op.value), layer=name, oc_lo=oc_lo, oc_hi=oc_hi, px_lo=0, px_hi=pixels))
        ins += self._sends(core, StreamKind.ACT, name, oc_lo=oc_lo)
        self.tasks[core].append(Task(name=name if whole else f"{name}[{oc_lo}:{oc_hi}]", instrs=tuple(ins)))

    def run(self, perm: list[int]) -> None:
        for name in self.plan.nodes:
            if name in self.plan.hosts:
                groups = self.plan.hosts[name]
                for array, lo, hi in groups:
                    self.simd_task(name, perm[array], lo, hi, whole=len(groups) == 1)
                continue
            for copy in range(self.plan.copies[name]):
                by_core: dict[int, list[TileSlot]] = defaultdict(list)
                for t in self.tiles:
                    if t.layer == name and t.copy == copy:
                        by_core[t.core].append(t)
                for core in sorted(by_core):
                    self.mvm_task(name, copy, core, by_core[core])


def _map_ep(perm: list[int], e: int) -> int:
    return e if e < 0 else perm[e]


def emit_phase(plan: PhasePlan, qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig,
               specs: list[StreamSpec], perm: list[int], routes: list[tuple]) -> Phase:
    """The Phase of a placed plan, with streams and routes on physical cores ``perm[array]``."""
    tiles = _tile_slots(plan, qgraph, tilings, perm)
    streams = [Stream(stream_id=i, kind=s.kind, tensor=s.tensor, src=_map_ep(perm, s.src),
                      dsts=tuple(_map_ep(perm, d) for d in s.dsts), oc_lo=s.oc_lo, oc_hi=s.oc_hi, px_lo=s.px_lo,
                      px_hi=s.px_hi, bits=s.bits, row_tile=s.row_tile, copy=s.copy) for i, s in enumerate(specs)]
    em = _Emitter(plan, qgraph, tilings, streams, tiles)
    em.run(perm)
    cores = []
    for core in range(chip.n_cores):
        loads = tuple(Instr(InstrKind.LOAD, layer=t.layer, tile=t.tile_id, copy=t.copy, row_tile=t.row_tile)
                      for t in tiles if t.core == core)
        if loads or em.tasks.get(core):
            cores.append(CoreProgram(core=core, loads=loads, tasks=tuple(em.tasks.get(core, ()))))
    copies = []
    for name, (a, b) in plan.col_tiles.items():
        tl = tilings[name]
        n = plan.copies[name]
        for k in range(n):
            lo, hi = pixel_range(tl.pixels, k, n)
            r0, r1 = plan.row_tiles[name]
            copies.append(LayerCopy(layer=name, copy=k, n_copies=n, px_lo=lo, px_hi=hi,
                                    oc_lo=tl.col_tiles[a][0], oc_hi=tl.col_tiles[b - 1][1], rt_lo=r0, rt_hi=r1))
    return Phase(index=plan.index, nodes=plan.nodes, copies=tuple(copies), tiles=tuple(tiles), cores=tuple(cores),
                 streams=tuple(streams), routes=tuple(Route(stream_id=i, edges=tuple(r)) for i, r in enumerate(routes)))
