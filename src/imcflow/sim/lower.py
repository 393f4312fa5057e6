"""Lowering a Program to timed operations for the event engine (:mod:`imcflow.sim.timing`),
with the event counts the energy model needs.

Granularity: per image, per instruction, per *chunk* of output-map rows (``rows_per_chunk``
rows of a tensor; a few chunks per map keep ResNet-50 at a few hundred thousand ops). What each
op costs (all from the ChipConfig):

- MVM chunk: ``pixels x x_bits`` bit-planes of ``chip.bitplane_s`` on the core's array. Tiles of one
  core share its array: tiles of the same ``TileSlot.slot`` (disjoint in rows and columns) are
  evaluated in the same bit-planes, slots take turns (the engine's resource groups), and one
  tile's chunks run one after another: the perf model's ``sum over slots of max over tiles``. With the
  ``skip_zero_bitplanes`` feature, each tile's bit-planes are scaled by the measured fraction of
  input bit-planes holding at least one 1 (an all-zero plane of the tile's rows adds no charge to
  any column, so the controller can skip its evaluation; measured by a functional run).
- ACCUMULATE / REQUANT / pooling / add: SIMD lane ops (as :mod:`imcflow.perf.model` counts them)
  / ``simd.lanes`` x ``simd.cycles_per_op`` cycles on the core's SIMD, in parallel with its array.
- Stream chunk: ``bits / ocn.track_bits`` cycles on the stream's own track (the compiler gives
  every stream one track per channel), then ``hops x ocn.hop_cycles`` of latency (deepest leaf of
  its route tree). From or to off-chip the port's bandwidth (``io.*_bits_per_cycle``) is a shared
  resource. A spilled accumulator (ACC stream, ``Stream.bits`` at the compiler's partial-sum
  width) is written through the output port in its phase and read back through the input port
  in a later phase, after it was written, and counts as off-chip bits both ways. Back-pressure: a destination core holds ``buffer.input_bytes`` shared by its incoming
  streams; a chunk is sent only when the consumer has finished with the chunk ``capacity`` chunks
  earlier (never fewer than the receptive field needs).
- LOAD: ``tile bits / weight_load.bus_bits`` cycles on the shared weight bus. A core's tiles of the
  next phase load as soon as that core has finished its work of the current phase.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from imcflow.config.chip import ChipConfig
from imcflow.errors import SimError
from imcflow.ir.program import CHANNEL_MIXING, IN_PORT, OUT_PORT, InstrKind, Phase, Program, StreamKind
from imcflow.ir.qgraph import QOp, input_rows, row_tiles, simd_lane_ops
from imcflow.sim.energy import EventCounts
from imcflow.sim.dataflow import Blocked as _Blocked, run_tasks
from imcflow.sim.timing import Op, OpKind


@dataclass
class Lowered:
    """Ops plus what the report needs to interpret them."""

    ops: list[Op] = field(default_factory=list)
    images: int = 0
    image_done: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Image -> ops whose end marks the image's output leaving the chip."""
    image_start: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Image -> ops that bring its input on chip."""
    counts: dict[str, EventCounts] = field(default_factory=dict)
    """Event counts by layer (SIMD-only and MVM nodes), 'load' and 'io'; whole run."""
    core_counts: dict[int, EventCounts] = field(default_factory=dict)
    """Event counts by core (array, SIMD, buffers, loads); whole run."""
    load_counts: EventCounts = field(default_factory=EventCounts)
    cell_bitplanes: float = 0.0
    """Used cells x bit-planes evaluated over the run (for utilisation)."""
    core_cell_bitplanes: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    """Per core: used cells x bit-planes evaluated over the run."""
    macs: int = 0
    layer_array_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    layer_tiles: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    layer_cores: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    notes: list[str] = field(default_factory=list)




def _add(d: dict, key, c: EventCounts) -> None:
    d[key] = d.get(key, EventCounts()) + c


class _Lowerer:
    def __init__(self, prog: Program, images: int, max_chunks: int, bitplane_scale: dict[int, float] | None,
                 bounded_buffers: bool = True):
        self.bounded = bounded_buffers
        self.p = prog
        self.chip: ChipConfig = prog.chip
        self.images = images
        self.max_chunks = max_chunks
        self.scale = bitplane_scale or {}
        self.out = Lowered(images=images)
        self.cyc = 1.0 / self.chip.clock.digital_hz
        self.prev_core_ops: dict[int, list[int]] = defaultdict(list)   # last array/SIMD ops per core, previous phase
        self.offchip: dict[tuple[str, int], list[int]] = defaultdict(list)  # (tensor, image) -> ops writing it off-chip

    # --- geometry -----------------------------------------------------------------------------
    def geom(self, tensor: str) -> tuple[int, int, int, int]:
        """(C, H, W, rows per chunk) of a tensor."""
        s = self.p.qgraph.spec(tensor).shape
        c, h, w = (s[0], s[1], s[2]) if len(s) == 3 else (s[0], 1, 1)
        return c, h, w, max(1, math.ceil(h / self.max_chunks))

    def chunks(self, tensor: str, px_lo: int, px_hi: int) -> list[tuple[int, int, int]]:
        """(chunk index, pixel lo, pixel hi) of a pixel range, split at chunk boundaries."""
        _, h, w, r = self.geom(tensor)
        out, p = [], px_lo
        while p < px_hi:
            k = (p // w) // r
            end = min(px_hi, (k + 1) * r * w)
            out.append((k, p, end))
            p = end
        return out

    def new(self, res: str, dur: float, kind: OpKind, deps, core=-1, layer="", image=0, lat=0.0, phase=0,
            group: int = -1) -> int:
        i = len(self.out.ops)
        self.out.ops.append(Op(i, res, dur, kind, tuple(sorted(set(deps))), (), lat, core, layer, image,
                               priority=phase * 1_000_000 + image, phase=phase, group=group))
        return i

    # --- availability: (core, key) -> list of (c0, c1, {chunk: op}) ------------------------------
    @staticmethod
    def deps_for(avail, key, c0: int, c1: int, chunk_lo: int, chunk_hi: int, where: str) -> list[int]:
        pieces = avail.get(key, ())
        deps = []
        for k in range(chunk_lo, chunk_hi + 1):
            have = sorted((max(a0, c0), min(a1, c1)) for a0, a1, by_chunk in pieces
                          if a0 < c1 and c0 < a1 and k in by_chunk)
            reach = c0
            for lo, hi in have:
                if lo <= reach:
                    reach = max(reach, hi)
            if reach < c1:
                raise _Blocked(f"{where}: needs {key} ch[{c0}:{c1}] chunk {k}, not (yet) on this core")
            deps += [by_chunk[k] for a0, a1, by_chunk in pieces if a0 < c1 and c0 < a1 and k in by_chunk]
        return deps

    # --- program ------------------------------------------------------------------------------
    def run(self) -> Lowered:
        """Batches of ``Program.batch`` images go through every phase in turn (one batch of all the
        images when the program has one phase: its weights stay resident)."""
        size = self.images if len(self.p.phases) == 1 else max(1, self.p.batch)
        for first in range(0, self.images, size):
            batch = list(range(first, min(self.images, first + size)))
            for phase in self.p.phases:
                self.phase(phase, batch)
        return self.out

    def phase(self, phase: Phase, batch: list[int]) -> None:
        chip, pi = self.chip, phase.index
        tiles = {t.tile_id: t for t in phase.tiles}
        self.tiles = tiles
        self.tile_last: dict[int, int] = {}
        self.streams = {s.stream_id: s for s in phase.streams}
        self.hops = self.route_depth(phase)
        load_op: dict[int, int] = {}
        for t in sorted(phase.tiles, key=lambda t: (t.core, t.tile_id)):
            bits = t.weight_bits
            dur = max(bits / chip.weight_load.bus_bits, bits / chip.weight_load.array_write_bits_per_cycle) * self.cyc
            load_op[t.tile_id] = self.new("bus", dur, OpKind.LOAD, self.prev_core_ops.get(t.core, []), t.core,
                                          t.layer, 0, phase=pi)
            c = EventCounts(weight_bits=bits, offchip_bits=bits)
            self.out.load_counts = self.out.load_counts + c
            _add(self.out.core_counts, t.core, c)
        self.load_op = load_op
        self.consumers: dict[tuple[int, int, int, int], list[int]] = defaultdict(list)  # (stream, dst, image, chunk)
        self.sends: dict[tuple[int, int], dict[int, int]] = {}  # (stream, image) -> chunk -> transfer op
        last_core: dict[int, list[int]] = defaultdict(list)
        self.prev_task_op: dict[tuple, int] = {}
        for b in batch:
            self.image(phase, b, last_core, b == batch[-1])
        if self.bounded:
            self.backpressure(phase, batch)
        self.prev_core_ops = last_core

    def route_depth(self, phase: Phase) -> dict[int, int]:
        out = {}
        for r in phase.routes:
            parent = {b: a for a, b in r.edges}
            depth = 0
            for node in parent:
                d, n = 0, node
                while n in parent and d <= len(parent):
                    n, d = parent[n], d + 1
                depth = max(depth, d)
            out[r.stream_id] = depth
        return out

    def image(self, phase: Phase, b: int, last_core, last: bool) -> None:
        avail: dict[int, dict] = defaultdict(lambda: defaultdict(list))
        for s in phase.streams:
            if s.src == IN_PORT:
                self.send(phase, s, b, None)

        def execute(core: int, where: tuple[int, int, int], ins) -> None:
            if ins.op == InstrKind.RECV and (ins.stream, b) not in self.sends:
                raise _Blocked(f"stream {ins.stream} never sent")
            ops = self.instr(phase, core, ins, b, avail[core], where)
            if ops and last:
                last_core[core].append(ops[-1])

        stuck = run_tasks(phase, execute)
        if stuck:
            raise SimError(f"phase {phase.index} image {b}: deadlock in timing, blocked at {'; '.join(stuck[:3])}")

    def chain(self, tkey, b: int, first: int, last: int) -> None:
        """Images in order within a task instruction: image b's first chunk after image b-1's last."""
        prev = self.prev_task_op.get(tkey)
        if prev is not None:
            op = self.out.ops[first]
            op.deps = tuple(sorted(set(op.deps) | {prev}))
        self.prev_task_op[tkey] = last

    def send(self, phase: Phase, s, b: int, avail) -> list[int]:
        chip, pi = self.chip, phase.index
        per_px = s.bits / max(1, (s.oc_hi - s.oc_lo) * (s.px_hi - s.px_lo))
        key = s.core_key
        hops = self.hops.get(s.stream_id, 0)
        by_chunk, ops = {}, []
        chunks = self.chunks(s.tensor, s.px_lo, s.px_hi)
        if s.src == IN_PORT:
            all_deps = [self.offchip.get((s.offchip_key, b), []) for _ in chunks]
        else:
            all_deps = [self.deps_for(avail, key, s.oc_lo, s.oc_hi, k, k, f"phase {pi} core {s.src} SEND s{s.stream_id}")
                        for k, _, _ in chunks]
        for (k, p0, p1), deps in zip(chunks, all_deps):
            bits = per_px * (s.oc_hi - s.oc_lo) * (p1 - p0)
            if s.src == IN_PORT:
                res, rate, core = "io.in", chip.io.in_bits_per_cycle, -1
                if s.kind == StreamKind.ACT:
                    self.out.image_start[b].append(len(self.out.ops))
            else:
                res, rate, core = f"ph{pi}.track{s.stream_id}", chip.ocn.track_bits, s.src
            op = self.new(res, bits / rate * self.cyc, OpKind.IO_IN if s.src == IN_PORT else OpKind.TRANSFER,
                          deps, core, s.tensor, b, lat=hops * chip.ocn.hop_cycles * self.cyc, phase=pi)
            ops.append(op)
            by_chunk[k] = op
            c = EventCounts(ocn_bit_hops=bits * hops, offchip_bits=bits if s.src == IN_PORT else 0.0)
            if OUT_PORT in s.dsts:
                out_op = self.new("io.out", bits / chip.io.out_bits_per_cycle * self.cyc, OpKind.IO_OUT, [op], -1,
                                  s.tensor, b, phase=pi)
                self.offchip[(s.offchip_key, b)].append(out_op)
                if s.tensor == self.p.qgraph.output:
                    self.out.image_done[b].append(out_op)
                c = c + EventCounts(offchip_bits=bits)
            _add(self.out.counts, "network", c)
        self.sends[(s.stream_id, b)] = by_chunk
        return ops

    def simd_op(self, core: int, n_ops: float) -> float:
        return n_ops / self.chip.simd.lanes * self.chip.simd.cycles_per_op * self.cyc

    def instr(self, phase: Phase, core: int, ins, b: int, avail, tkey) -> list[int]:
        pi, q = phase.index, self.p.qgraph
        where = f"phase {pi} core {core} {ins}"
        if ins.op == InstrKind.RECV:
            s = self.streams[ins.stream]
            key = s.core_key
            avail[key].append((s.oc_lo, s.oc_hi, self.sends[(s.stream_id, b)]))
            return []
        if ins.op == InstrKind.SEND:
            s = self.streams[ins.stream]
            self.send(phase, s, b, avail)
            return []
        if ins.op == InstrKind.MVM:
            return self.mvm(phase, core, ins, b, avail, tkey, where)
        node = q.node(ins.layer)
        if ins.op in (InstrKind.ACCUMULATE, InstrKind.REQUANT):
            ops = []
            width = ins.oc_hi - ins.oc_lo
            chunks = self.chunks(ins.layer, ins.px_lo, ins.px_hi)
            first = max(0, ins.row_tile)
            if ins.op == InstrKind.ACCUMULATE:
                parts = [("psum", ins.layer, rt) for rt in range(first, first + ins.n_parts)]
                parts += [("acc", ins.layer)] if first > 0 else []   # the spilled sum read back
                all_deps = [[d for part in parts
                             for d in self.deps_for(avail, part, ins.oc_lo, ins.oc_hi, k, k, where)]
                            for k, _, _ in chunks]
            else:
                key = ("acc", ins.layer) if self.n_row_tiles(node) > 1 else ("psum", ins.layer, 0)
                all_deps = [self.deps_for(avail, key, ins.oc_lo, ins.oc_hi, k, k, where) for k, _, _ in chunks]
            for (k, p0, p1), deps in zip(chunks, all_deps):
                outputs = width * (p1 - p0)
                if ins.op == InstrKind.ACCUMULATE:
                    n = outputs * (ins.n_parts - 1 + (first > 0))
                else:
                    n = node.requant.lane_ops * outputs
                op = self.new(f"core{core}.simd", self.simd_op(core, n), OpKind.SIMD, deps, core, ins.layer, b, phase=pi)
                ops.append(op)
                self.count(core, ins.layer, EventCounts(simd_ops=n, control_cycles=0.0,
                                                        buffer_bits=(outputs if ins.op == InstrKind.REQUANT else 0)
                                                        * node.out.bits))
                self.mark_consumed(avail, deps, op)
            key = ("acc", ins.layer) if ins.op == InstrKind.ACCUMULATE else ins.layer
            avail[key].append((ins.oc_lo, ins.oc_hi, {k: o for (k, _, _), o in zip(self.chunks(ins.layer, ins.px_lo, ins.px_hi), ops)}))
            self.chain(tkey, b, ops[0], ops[-1])
            return ops
        return self.simd_node(phase, core, node, ins, b, avail, tkey, where)

    def n_row_tiles(self, node) -> int:
        w = node.weight
        kh, kw = (w.shape[2], w.shape[3]) if w.ndim == 4 else (1, 1)
        return len(row_tiles(w.shape[1], kh, kw, self.chip.array.rows))

    def mark_consumed(self, avail, deps, op) -> None:
        for d in deps:
            src = self.out.ops[d]
            if src.kind in (OpKind.TRANSFER, OpKind.IO_IN):
                self.consumers[d].append(op)

    def in_rows(self, node, src: str, k: int, px: tuple[int, int] | None = None) -> tuple[int, int]:
        """Chunks of input ``src`` that output chunk ``k`` of ``node`` reads (only its pixels
        ``px`` = [lo, hi) when given, e.g. a copy's range that ends mid-chunk)."""
        _, h_out, w_out, r_out = self.geom(node.name)
        _, h_in, _, r_in = self.geom(src)
        if node.op in (QOp.GLOBAL_AVGPOOL, QOp.FLATTEN, QOp.LINEAR) or len(self.p.qgraph.spec(src).shape) != 3:
            return 0, (h_in - 1) // r_in
        y0, y1 = k * r_out, min(h_out, (k + 1) * r_out) - 1
        if px is not None:
            y0, y1 = max(y0, px[0] // w_out), min(y1, (px[1] - 1) // w_out)
        if node.op in (QOp.ADD, QOp.CONCAT):
            return y0 // r_in, y1 // r_in
        lo, hi = input_rows(node, y0, y1, h_in)   # dilated windows; upsample / depth-to-space rows too
        return lo // r_in, hi // r_in

    def mvm(self, phase: Phase, core: int, ins, b: int, avail, tkey, where) -> list[int]:
        t = self.tiles[ins.tile]
        node = self.p.qgraph.node(ins.layer)
        src = node.inputs[0]
        scale = self.scale.get(t.tile_id, 1.0)
        ops = []
        by_chunk = {}
        chunks = self.chunks(ins.layer, ins.px_lo, ins.px_hi)
        all_deps = [self.deps_for(avail, src, ins.ch_lo, ins.ch_hi, *self.in_rows(node, src, k, (p0, p1)), where)
                    for k, p0, p1 in chunks]
        for (k, p0, p1), deps in zip(chunks, all_deps):
            if not ops:  # the tile must be loaded (a no-op dependency after the first image)
                deps = deps + [self.load_op[t.tile_id]]
            if t.tile_id in self.tile_last:  # one tile evaluates one vector at a time
                deps = deps + [self.tile_last[t.tile_id]]
            px = p1 - p0
            planes = px * ins.x_bits * scale
            op = self.new(f"core{core}.array", planes * self.chip.bitplane_s, OpKind.COMPUTE,
                          deps, core, ins.layer, b, phase=phase.index, group=t.slot)
            self.tile_last[t.tile_id] = op
            ops.append(op)
            by_chunk[k] = op
            self.mark_consumed(avail, deps, op)
            c = EventCounts(column_evals=planes * t.cols, simd_ops=planes * t.cols,
                            buffer_bits=px * t.rows * ins.x_bits, control_cycles=0.0)
            self.count(core, ins.layer, c)
            self.out.cell_bitplanes += planes * t.rows * t.cols
            self.out.core_cell_bitplanes[core] += planes * t.rows * t.cols
            self.out.macs += px * t.rows * (ins.oc_hi - ins.oc_lo)
            self.out.layer_array_s[ins.layer] += planes * self.chip.bitplane_s
        self.out.layer_tiles[ins.layer].add(t.tile_id)
        self.out.layer_cores[ins.layer].add(core)
        avail[("psum", ins.layer, ins.row_tile)].append((ins.oc_lo, ins.oc_hi, by_chunk))
        self.chain(tkey, b, ops[0], ops[-1])
        return ops

    def simd_node(self, phase: Phase, core: int, node, ins, b: int, avail, tkey, where) -> list[int]:
        c_out, h_out, w_out, r_out = self.geom(node.name)
        per_channel = node.op not in CHANNEL_MIXING and ins.oc_hi > ins.oc_lo
        c0, c1 = (ins.oc_lo, ins.oc_hi) if per_channel else (0, c_out)
        total = simd_lane_ops(self.p.qgraph, node.name) * (c1 - c0) / c_out
        ops, by_chunk = [], {}
        n_chunks = (h_out - 1) // r_out + 1
        all_deps = [[d for src in node.inputs
                     for d in self.deps_for(avail, src, *((c0, c1) if per_channel else (0, self.p.qgraph.spec(src).shape[0])),
                                            *self.in_rows(node, src, k), where)] for k in range(n_chunks)]
        for k, deps in enumerate(all_deps):
            n = total / n_chunks
            op = self.new(f"core{core}.simd", self.simd_op(core, n), OpKind.SIMD, deps, core, node.name, b,
                          phase=phase.index)
            self.mark_consumed(avail, deps, op)
            self.count(core, node.name, EventCounts(simd_ops=n))
            ops.append(op)
            by_chunk[k] = op
        avail[node.name].append((c0, c1, by_chunk))
        self.chain(tkey, b, ops[0], ops[-1])
        return ops

    def count(self, core: int, layer: str, c: EventCounts) -> None:
        _add(self.out.counts, layer, c)
        _add(self.out.core_counts, core, c)

    def backpressure(self, phase: Phase, batch: list[int]) -> None:
        """Space dependencies, per destination core: a stream chunk that core ``d`` uses waits
        until ``d`` has finished with the chunk it used ``capacity`` chunks earlier (image-major
        order). Chunks a destination does not use (a forked stream's rows for other copies) are
        dropped on arrival and hold no space there."""
        chip = self.chip
        n_in: dict[int, int] = defaultdict(int)
        for s in phase.streams:
            for d in s.dsts:
                if d >= 0:
                    n_in[d] += 1
        for s in phase.streams:
            dsts = [d for d in s.dsts if d >= 0]
            seq = [self.sends[(s.stream_id, b)] for b in batch if (s.stream_id, b) in self.sends]
            flat = [op for by in seq for _, op in sorted(by.items())]
            if not dsts or not flat:
                continue
            rate = chip.io.in_bits_per_cycle if s.src == IN_PORT else chip.ocn.track_bits
            chunk_bits = max(1.0, max(self.out.ops[o].duration_s for o in flat) / self.cyc * rate)
            for d in dsts:
                used = [(o, [c for c in self.consumers.get(o, []) if self.out.ops[c].core == d]) for o in flat]
                used = [(o, cons) for o, cons in used if cons]
                cap = max(self.min_window(s), int(chip.buffer.input_bytes * 8 / n_in[d] // chunk_bits))
                if s.src == IN_PORT and s.tensor == self.p.qgraph.input_name:
                    per_image = max(1, len(used) // max(1, len(seq)))
                    cap = max(self.min_window(s), per_image)   # the host feeds one image ahead
                for i in range(cap, len(used)):
                    op = self.out.ops[used[i][0]]
                    extra = set(used[i - cap][1]) - set(op.deps) - {op.id}
                    op.space_deps = tuple(sorted(set(op.space_deps) | extra))

    def min_window(self, s) -> int:
        """Chunks a consumer may need at once (receptive field rows, dilated), plus one being filled."""
        _, h, _, r = self.geom(s.tensor)
        kh = 1
        for n in self.p.qgraph.nodes:
            if s.tensor in n.inputs and n.op in (QOp.CONV, QOp.MAXPOOL, QOp.AVGPOOL):
                kh = max(kh, n.span[0])
            if s.tensor in n.inputs and n.op is QOp.UPSAMPLE and n.upsample_mode == "bilinear":
                kh = max(kh, 2)   # each output row interpolates two input rows
            if s.tensor in n.inputs and n.op in (QOp.GLOBAL_AVGPOOL, QOp.FLATTEN, QOp.LINEAR):
                kh = max(kh, h)
        return math.ceil(kh / r) + 2


def lower(prog: Program, images: int, max_chunks: int = 16,
          bitplane_scale: dict[int, float] | None = None, bounded_buffers: bool = True) -> Lowered:
    """Timed ops for ``images`` images through every phase of ``prog``.

    ``max_chunks``: row chunks per feature map (fewer = faster, coarser pipelining);
    ``bitplane_scale``: per tile id, the fraction of input bit-planes evaluated (zero-plane skipping);
    ``bounded_buffers=False`` drops back-pressure (unbounded input buffers, as the analytic model)."""
    if images < 1:
        raise SimError(f"images = {images}: simulate at least one image")
    return _Lowerer(prog, images, max_chunks, bitplane_scale, bounded_buffers).run()
