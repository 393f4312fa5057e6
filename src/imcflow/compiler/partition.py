"""Phase partition: consecutive groups of layer segments, chosen by dynamic programming.

A **segment** is an MVM layer, or a group of its column tiles when the whole layer (one copy) does
not fit the chip: layers are cut into the fewest equal groups of column tiles that each fit an
empty chip, all row tiles of a column tile together (their partial sums are added on chip).
When even one column tile's row tiles do not fit an empty chip, the layer **spills partial
sums**: its row tiles are cut into the fewest equal groups that fit, its column tiles into the
fewest equal groups that fit with one row-tile group, and each (column group, row group) is a
segment, row groups in order. Such a segment is the only one of its layer in its phase, so the
groups of a column group run in consecutive phases; a non-final group's accumulators (exact
integers of :func:`imcflow.compiler.tiling.psum_bits` bits) go to off-chip memory and the next
group reads them back (their bits count in the phase's port time below). SIMD-only nodes go with
the phase of the last MVM segment before them in graph order (their inputs are complete by then).

A phase is a run of consecutive segments ``[i, j)``. Its cost per image is estimated as

    max(compute, io_in, io_out) + (weight load + fill) / PLAN_BATCH

- *compute*: the smallest per-image array time ``T`` for which every layer given
  ``ceil(t_L / T)`` copies (``t_L`` = one copy's tile time: output pixels x input bits x
  ``chip.bitplane_s``) packs into the arrays, by first-fit decreasing on tile time (capacity ``T``
  per array) and area (cells per array). This is the same balancing rule the placement uses
  (:mod:`imcflow.compiler.placement`), without block-diagonal sharing (conservative);
- *io_in* / *io_out*: bits of tensors (only the channels the phase's row tiles read) and of
  spilled accumulators entering from / leaving to off-chip memory per image over
  :func:`port_in_rate` / ``io.out_bits_per_cycle``;
- *weight load*: the phase's weights over the bus (copies once with
  ``weight_load.broadcast_copies``, else once per copy); *fill*: one image's pass through the
  phase's layers.

The partition minimising the sum over phases is found exactly (over segment boundaries) by dynamic
programming; phases whose one-copy tiles exceed the arrays' cells are not considered.

A network whose tiles all fit the chip at once runs as ONE phase with resident weights (chip.md:
only "a model larger than the chip runs in phases"): its weights are loaded once, no activation
leaves the chip between layers and no image waits for a batch, even where the model would
predict a higher steady-state rate from several phases with batched reloading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imcflow.compiler.packing import Packer, TileReq
from imcflow.compiler.tiling import LayerTiling, psum_bits
from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError
from imcflow.ir.qgraph import QGraph

PLAN_BATCH = 64
"""Batch assumed when the partition and the placement weigh weight loading and pipeline fill
(paid once per batch) against per-image compute: the middle of the 32-128 range the throughput
batch rule lands in for large networks (the final batch is chosen afterwards; with broadcast
copies the total load volume does not depend on the partition, so this mostly breaks near-ties)."""
SEARCH_STEPS = 10
"""Bisection steps of the per-phase compute estimate."""


def port_streams(chip: ChipConfig) -> int:
    """Streams the input port feeds at full rate at once: each stream takes one track
    (``ocn.track_bits`` per cycle) and the port carries ``io.in_bits_per_cycle``."""
    return max(1, chip.io.in_bits_per_cycle // chip.ocn.track_bits)


def port_in_rate(chip: ChipConfig) -> float:
    """Bits per cycle a phase can take from the input port: the port's rate, but no more than
    ``ocn.tracks_per_channel`` tracks' worth (an input forked to many cores travels as trees that
    share the mesh's channels, each of ``ocn.tracks_per_channel`` tracks, so about that many such
    streams fit at once)."""
    return min(chip.io.in_bits_per_cycle, chip.ocn.tracks_per_channel * chip.ocn.track_bits)


@dataclass(frozen=True)
class Segment:
    """Column tiles ``[cts[0], cts[1])`` and row tiles ``[rts[0], rts[1])`` of MVM layer ``layer``."""

    layer: str
    cts: tuple[int, int]
    rts: tuple[int, int]

    def spills(self, tl: LayerTiling) -> bool:
        """Whether this segment holds only a group of the layer's row tiles (partial-sum spill)."""
        return self.rts != (0, len(tl.row_tiles))


def tile_time_s(tl: LayerTiling, chip: ChipConfig) -> float:
    """Per-image array time of one tile of one copy of the layer (all its output pixels)."""
    return tl.pixels * tl.x_bits * chip.bitplane_s


def _one_copy_reqs(tl: LayerTiling, cts: tuple[int, int], rts: tuple[int, int] | None = None) -> list[TileReq]:
    rts = rts or (0, len(tl.row_tiles))
    return [TileReq(tl.layer, 0, rt, ct, tl.tile_rows(rt), tl.tile_cols(ct), tl.pixels * tl.x_bits)
            for ct in range(*cts) for rt in range(*rts)]


def _fits_empty_chip(tl: LayerTiling, cts: tuple[int, int], chip: ChipConfig, rts: tuple[int, int] | None = None) -> bool:
    reqs = sorted(_one_copy_reqs(tl, cts, rts), key=lambda r: (-r.rows * r.cols, r.ct, r.rt))
    return Packer(chip).place_all(reqs)


def _fewest_groups(n: int, start: int, fits) -> list[tuple[int, int]]:
    """``[0, n)`` cut into the fewest (from ``start``) near-equal consecutive groups that all fit."""
    groups = max(1, min(n, start))
    while True:
        cuts = [(k * n // groups, (k + 1) * n // groups) for k in range(groups)]
        cuts = [c for c in cuts if c[0] < c[1]]
        if groups >= n or all(fits(c) for c in cuts):
            return cuts
        groups += 1


def _check_spill_width(tl: LayerTiling, chip: ChipConfig) -> None:
    bits = psum_bits(tl, chip)
    if bits > chip.simd.accumulator_bits:
        raise CompileError(
            f"layer {tl.layer!r}: its {len(tl.row_tiles)} row tiles do not fit the {chip.n_cores} arrays of "
            f"{chip.array.rows}x{chip.array.cols} at once, so their partial sums are spilled off-chip between "
            f"phases, but the worst-case sum needs {bits} b and the SIMD accumulator holds "
            f"{chip.simd.accumulator_bits} b (simd.accumulator_bits); raise simd.accumulator_bits, quantise the "
            f"layer to fewer input or weight bits, or give it fewer inputs")


def layer_segments(tilings: dict[str, LayerTiling], chip: ChipConfig) -> list[Segment]:
    """Segments of every MVM layer, in graph order (see module doc); CompileError when a layer
    that must spill partial sums could overflow the SIMD accumulator (``simd.accumulator_bits``)."""
    out: list[Segment] = []
    cells = chip.n_cores * chip.array.rows * chip.array.cols
    for tl in sorted(tilings.values(), key=lambda t: t.index):
        n, n_rt = len(tl.col_tiles), len(tl.row_tiles)
        whole = (0, n_rt)
        if all(_fits_empty_chip(tl, (ct, ct + 1), chip) for ct in range(n)):
            area = sum(tl.tile_rows(rt) * tl.tile_cols(ct) for ct in range(n) for rt in range(n_rt))
            cuts = _fewest_groups(n, math.ceil(area / cells), lambda c: _fits_empty_chip(tl, c, chip))
            out.extend(Segment(tl.layer, c, whole) for c in cuts)
            continue
        _check_spill_width(tl, chip)
        widest = max(range(n), key=tl.tile_cols)
        column = sum(tl.tile_rows(rt) for rt in range(n_rt)) * tl.tile_cols(widest)
        row_cuts = _fewest_groups(n_rt, math.ceil(column / cells),
                                  lambda r: all(_fits_empty_chip(tl, (ct, ct + 1), chip, r) for ct in range(n)))
        largest = max(row_cuts, key=lambda r: sum(tl.tile_rows(rt) for rt in range(*r)))
        per_ct = sum(tl.tile_rows(rt) for rt in range(*largest)) * tl.tile_cols(widest)
        col_cuts = _fewest_groups(n, math.ceil(n * per_ct / cells),
                                  lambda c: all(_fits_empty_chip(tl, c, chip, r) for r in row_cuts))
        out.extend(Segment(tl.layer, c, r) for c in col_cuts for r in row_cuts)
    return out


@dataclass(frozen=True)
class _Item:
    layer: str
    t_s: float
    pixels: int
    areas: tuple[int, ...]
    """Cells of each tile of one copy."""
    bits: int
    """Weight bits of one copy."""


def ffd_fits(items: list[_Item], copies: dict[str, int], target_s: float, chip: ChipConfig) -> bool:
    """Whether the tiles (``copies`` of each item) fit the arrays with at most ``target_s`` of array
    time and at most the cells of one array each (first-fit decreasing, least-loaded array first)."""
    cap = chip.array.rows * chip.array.cols
    pieces = sorted(((it.t_s / copies[it.layer], a) for it in items for a in it.areas
                     for _ in range(copies[it.layer])), reverse=True)
    time = [0.0] * chip.n_cores
    area = [0] * chip.n_cores
    limit = target_s * (1 + 1e-9)
    for t, a in pieces:
        best = -1
        for k in range(chip.n_cores):
            if area[k] + a <= cap and time[k] + t <= limit and (best < 0 or time[k] < time[best]):
                best = k
        if best < 0:
            return False
        time[best] += t
        area[best] += a
    return True


def copies_for(items, target_s: float) -> dict[str, int]:
    """Copies per layer so that each copy's tiles take at most ``target_s`` (at most one per pixel)."""
    return {it.layer: max(1, min(it.pixels, math.ceil(it.t_s / target_s - 1e-9))) for it in items}


def estimate_compute(items: list[_Item], chip: ChipConfig) -> tuple[float, dict[str, int]] | None:
    """Smallest array time per image (and the copies) that packs, by bisection; None if even one
    copy of everything exceeds the cells."""
    total = sum(it.t_s * len(it.areas) for it in items)
    if not items or total == 0:
        return 0.0, {it.layer: 1 for it in items}
    hi = total
    ones = {it.layer: 1 for it in items}
    if not ffd_fits(items, ones, hi, chip):
        return None
    lo = total / chip.n_cores
    if ffd_fits(items, copies_for(items, lo), lo, chip):
        return lo, copies_for(items, lo)
    for _ in range(SEARCH_STEPS):
        mid = math.sqrt(lo * hi)
        if ffd_fits(items, copies_for(items, mid), mid, chip):
            hi = mid
        else:
            lo = mid
    return hi, copies_for(items, hi)


class Partitioner:
    """The dynamic programme over segment boundaries (see module doc)."""

    def __init__(self, qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig):
        self.q, self.tilings, self.chip = qgraph, tilings, chip
        self.segs = layer_segments(tilings, chip)
        self.index = {n.name: i for i, n in enumerate(qgraph.nodes)}
        self.anchor = self._anchors()
        self.last_seg = {}
        for k, s in enumerate(self.segs):
            self.last_seg[s.layer] = k
        for name, k in self.anchor.items():
            self.last_seg[name] = k
        self.consumers: dict[str, list[str]] = {}
        for n in qgraph.nodes:
            for i in n.inputs:
                self.consumers.setdefault(i, []).append(n.name)

    def _anchors(self) -> dict[str, int]:
        """SIMD-only node -> index of the segment whose phase computes it."""
        out, current = {}, 0
        last_of = {}
        for k, s in enumerate(self.segs):
            last_of[s.layer] = k
        for n in self.q.nodes:
            if n.name in self.tilings:
                current = last_of[n.name]
            else:
                out[n.name] = current
        return out

    def phase_content(self, i: int, j: int) -> tuple[tuple[str, ...], dict[str, tuple[int, int]]]:
        """Nodes (graph order) and MVM column tiles of the phase made of segments ``[i, j)``."""
        cts: dict[str, tuple[int, int]] = {}
        for s in self.segs[i:j]:
            a, b = cts.get(s.layer, s.cts)
            cts[s.layer] = (min(a, s.cts[0]), max(b, s.cts[1]))
        simd = {name for name, k in self.anchor.items() if i <= k < j}
        nodes = tuple(n.name for n in self.q.nodes if n.name in cts or n.name in simd)
        return nodes, cts

    def row_groups(self, i: int, j: int) -> dict[str, tuple[int, int]]:
        """MVM layer -> [first, last) row tiles held by the phase of segments ``[i, j)``."""
        return {s.layer: s.rts for s in self.segs[i:j]}

    def valid(self, i: int, j: int) -> bool:
        """Whether segments ``[i, j)`` may form one phase: a segment holding a group of its layer's
        row tiles (partial-sum spill) is its layer's only segment there."""
        layers = [s.layer for s in self.segs[i:j]]
        return all(layers.count(s.layer) == 1 for s in self.segs[i:j] if s.spills(self.tilings[s.layer]))

    def _bits(self, tensor: str) -> int:
        spec = self.q.spec(tensor)
        return math.prod(spec.shape) * spec.bits

    def io_s(self, i: int, j: int, nodes: tuple[str, ...], cts: dict[str, tuple[int, int]]) -> tuple[float, float]:
        """(in, out) port time per image of the phase ``[i, j)``: tensors (the channels its row
        tiles read) and spilled accumulators."""
        here = set(nodes)
        rts = self.row_groups(i, j)
        frac, read = {}, {}
        spill_in = spill_out = 0.0
        for name in nodes:
            if name in cts:
                tl = self.tilings[name]
                a, b = cts[name]
                frac[name] = (tl.col_tiles[b - 1][1] - tl.col_tiles[a][0]) / self.q.node(name).out.shape[0]
                r0, r1 = rts[name]
                if r1 < len(tl.row_tiles):
                    frac[name] = 0.0   # not requantised here: its accumulators leave instead
                acc = (tl.col_tiles[b - 1][1] - tl.col_tiles[a][0]) * tl.pixels * psum_bits(tl, self.chip)
                spill_in += acc if r0 > 0 else 0
                spill_out += acc if r1 < len(tl.row_tiles) else 0
                src = self.q.node(name).inputs[0]
                ch = (tl.row_tiles[r1 - 1][1] - tl.row_tiles[r0][0]) / self.q.spec(src).shape[0]
                read[src] = max(read.get(src, 0.0), ch)
            else:
                frac[name] = 1.0
                for t in self.q.node(name).inputs:
                    read[t] = 1.0
        bits_in = spill_in
        for t, share in read.items():
            bits_in += self._bits(t) * share * (1.0 - frac.get(t, 0.0) if t in here else 1.0)
        bits_out = spill_out
        for name in nodes:
            later = name == self.q.output or any(self.last_seg.get(c, -1) >= j for c in self.consumers.get(name, ()))
            if later:
                bits_out += self._bits(name) * frac[name]
        chip = self.chip
        cyc = 1.0 / chip.clock.digital_hz
        return bits_in / port_in_rate(chip) * cyc, bits_out / chip.io.out_bits_per_cycle * cyc

    def items(self, cts: dict[str, tuple[int, int]], rts: dict[str, tuple[int, int]] | None = None) -> list[_Item]:
        """The model's view of MVM column tiles ``cts`` with row tiles ``rts`` (default all)."""
        out = []
        for layer, (a, b) in cts.items():
            tl = self.tilings[layer]
            r0, r1 = (rts or {}).get(layer, (0, len(tl.row_tiles)))
            areas = tuple(tl.tile_rows(rt) * tl.tile_cols(ct) for ct in range(a, b) for rt in range(r0, r1))
            out.append(_Item(layer, tile_time_s(tl, self.chip), tl.pixels, areas, sum(areas)))
        return out

    def packs(self, cts: dict[str, tuple[int, int]], rts: dict[str, tuple[int, int]] | None = None) -> bool:
        """Whether one copy of the phase's tiles (row tiles ``rts``, default all) packs into the
        arrays (the placement's packer)."""
        reqs = [r for layer, c in cts.items() for r in _one_copy_reqs(self.tilings[layer], c, (rts or {}).get(layer))]
        return Packer(self.chip).place_all(sorted(reqs, key=lambda r: (-r.rows * r.cols, r.layer, r.ct, r.rt)))

    def area(self, i: int, j: int) -> int:
        return sum(self.tilings[s.layer].tile_rows(rt) * self.tilings[s.layer].tile_cols(ct)
                   for s in self.segs[i:j] for ct in range(*s.cts) for rt in range(*s.rts))

    def cost(self, i: int, j: int) -> float | None:
        """Estimated seconds per image of phase ``[i, j)`` (see module doc); None if it cannot fit."""
        if not self.valid(i, j):
            return None
        nodes, cts = self.phase_content(i, j)
        rts = self.row_groups(i, j)
        items = self.items(cts, rts)
        got = estimate_compute(items, self.chip)
        if got is None or (j > i + 1 and not self.packs(cts, rts)):
            return None
        compute, copies = got
        io_in, io_out = self.io_s(i, j, nodes, cts)
        wl = self.chip.weight_load
        bits = sum(it.bits * (1 if wl.broadcast_copies else copies[it.layer]) for it in items)
        load = bits / wl.bus_bits / self.chip.clock.digital_hz
        fill = sum(it.t_s / copies[it.layer] for it in items)
        return max(compute, io_in, io_out) + (load + fill) / PLAN_BATCH

    def fallback_cost(self, i: int, j: int) -> float:
        """One segment that the estimate's area packing misses (the real packer fits it): one copy,
        every tile's time in turn (pessimistic)."""
        nodes, cts = self.phase_content(i, j)
        compute = sum(it.t_s * len(it.areas) for it in self.items(cts, self.row_groups(i, j)))
        return max(compute, *self.io_s(i, j, nodes, cts))

    def run(self) -> list[PhaseSpan]:
        """The best partition (see :class:`PhaseSpan`)."""
        n = len(self.segs)
        if n == 0:
            return [PhaseSpan(tuple(x.name for x in self.q.nodes), {}, {}, 0.0)]
        cap = self.chip.n_cores * self.chip.array.rows * self.chip.array.cols
        if self.area(0, n) <= cap and self.cost(0, n) is not None:
            nodes, cts = self.phase_content(0, n)
            return [PhaseSpan(nodes, cts, self.row_groups(0, n), 0.0)]
        best = [math.inf] * (n + 1)
        back = [0] * (n + 1)
        best[0] = 0.0
        for j in range(1, n + 1):
            for i in range(j - 1, -1, -1):
                if i < j - 1 and self.area(i, j) > cap:
                    break
                if best[i] == math.inf:
                    continue
                c = self.cost(i, j)
                if c is None:
                    if i < j - 1:
                        break
                    c = self.fallback_cost(i, j)
                if best[i] + c < best[j]:
                    best[j], back[j] = best[i] + c, i
        cuts = []
        j = n
        while j > 0:
            cuts.append((back[j], j))
            j = back[j]
        out = []
        for i, j in reversed(cuts):
            nodes, cts = self.phase_content(i, j)
            out.append(PhaseSpan(nodes, cts, self.row_groups(i, j), max(self.io_s(i, j, nodes, cts))))
        return out


@dataclass(frozen=True)
class PhaseSpan:
    """One phase of the partition."""

    nodes: tuple[str, ...]
    """Nodes computed (wholly or partly), in graph order."""
    col_tiles: dict[str, tuple[int, int]]
    """MVM layer -> [first, last) column tiles."""
    row_tiles: dict[str, tuple[int, int]]
    """MVM layer -> [first, last) row tiles (all of them unless the layer spills partial sums)."""
    io_s: float
    """Estimated off-chip I/O seconds per image."""


def partition(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig) -> list[PhaseSpan]:
    """The phases, in order (see module doc)."""
    return Partitioner(qgraph, tilings, chip).run()


__all__ = ["port_streams", "port_in_rate", "Segment", "PhaseSpan", "layer_segments", "partition", "estimate_compute", "ffd_fits",
           "copies_for", "tile_time_s", "PLAN_BATCH"]
