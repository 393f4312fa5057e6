"""Placement: copies per layer and the packing of each phase's tiles into the arrays.

The phases themselves come from :mod:`imcflow.compiler.partition` (dynamic programming over layer
segments). Per phase:

1. **Balanced copies.** Copies are given in proportion to each layer's work: for a target array
   time T, layer L gets ``ceil(t_L / T)`` copies (``t_L`` = one copy's tile time per image; each
   copy computes a contiguous share of the output pixels), so that every tile takes at most T and
   the work spreads over all arrays (one huge layer, like ResNet's 7x7 stem, is spread over every
   core). T starts at (phase work) / n_cores and grows by ``BALANCE_STEP`` until the packing's
   objective stops improving. The throughput objective is the time per image: the stage time, no
   faster than the phase's off-chip I/O time (``floor_s``), plus the pipeline fill / batch; ties
   go to fewer tiles and to copies kept on fewer arrays (fewer streams).
2. **Greedy refinement.** From there, the layer that limits the objective (the slowest layer on
   the bottleneck core for throughput) gets extra copies while the objective improves.
3. **Packing** (:mod:`imcflow.compiler.packing`): tiles go where they add least time (block-
   diagonal copies share bit-planes); then, within that stage time, a second packing for
   locality keeps a layer copy's column tiles and producer/consumer layers together.
4. **SIMD hosts.** Residual adds and pooling follow the arrays of the layer that feeds them, in
   channel chunks chosen to keep each array's streams within a cap (:func:`choose_host_groups`).

When routing fails, :func:`fewer_copies` caps the copies of the layer making the most output
pieces at three quarters and places the phase afresh (step by step, never straight to one copy).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass, field

from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError
from imcflow.compiler.packing import Packer, Placed, TileReq
from imcflow.compiler.partition import PLAN_BATCH, partition, tile_time_s
from imcflow.compiler.tiling import LayerTiling
from imcflow.ir.qgraph import QGraph, QOp
from imcflow.perf.model import PhaseEstimate, PhaseWork, estimate_phase, node_simd_ops

OBJECTIVES = ("throughput", "latency", "energy")
MAX_EVALUATIONS = 60
"""Upper bound on packings tried per phase by the copy search (keeps compile time small)."""


@dataclass(frozen=True)
class PhasePlan:
    """The placement of one phase, on logical arrays 0..n_cores-1 (cores are assigned by routing)."""

    index: int
    nodes: tuple[str, ...]
    """Nodes computed (wholly or partly) in this phase, in graph order."""
    col_tiles: dict[str, tuple[int, int]]
    """MVM layer -> [first, last) column tile indices computed in this phase."""
    copies: dict[str, int]
    placed: tuple[Placed, ...]
    hosts: dict[str, tuple[tuple[int, int, int], ...]]
    """SIMD-only node -> channel groups (array, oc_lo, oc_hi): which array's SIMD computes which
    output channels of it."""
    floor_s: float = 0.0
    """Estimated off-chip I/O time per image of the phase (placement does not try to beat it)."""
    fill_weight: float = 0.0
    """Weight of one image's latency through the phase in the throughput score: 1 / batch in a
    multi-phase program (the pipeline fills once per batch), 0 for one resident phase."""
    row_tiles: dict[str, tuple[int, int]] = field(default_factory=dict)
    """MVM layer -> [first, last) row tiles held in this phase, for every MVM layer of the phase
    (all of its row tiles, fewer when the layer spills partial sums between phases)."""

    def acc_array(self, layer: str, copy: int, ct: int) -> int:
        """Array that accumulates and requantises (layer, copy, column tile): where the phase's
        first row tile of the layer sits."""
        first = self.row_tiles[layer][0]
        for p in self.placed:
            q = p.req
            if q.layer == layer and q.copy == copy and q.ct == ct and q.rt == first:
                return p.array
        raise KeyError((layer, copy, ct))


def row_group(placed, layer: str) -> tuple[int, int]:
    """Row tiles [first, last) of ``layer`` among ``placed`` tiles."""
    rts = [p.req.rt for p in placed if p.req.layer == layer]
    return min(rts), max(rts) + 1


def pixel_range(pixels: int, copy: int, n_copies: int) -> tuple[int, int]:
    """Contiguous share [lo, hi) of ``pixels`` output pixels computed by copy ``copy`` of ``n_copies``."""
    return copy * pixels // n_copies, (copy + 1) * pixels // n_copies


def _requests(tl: LayerTiling, cts: tuple[int, int], n_copies: int,
              rts: tuple[int, int] | None = None) -> list[TileReq]:
    out = []
    for k in range(n_copies):
        lo, hi = pixel_range(tl.pixels, k, n_copies)
        for ct in range(*cts):
            for rt in range(*(rts or (0, len(tl.row_tiles)))):
                out.append(TileReq(tl.layer, k, rt, ct, tl.tile_rows(rt), tl.tile_cols(ct), (hi - lo) * tl.x_bits))
    return out


# --- SIMD hosts and model view ----------------------------------------------------------------

def _merge_groups(groups: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """Join channel groups on one array whose channel ranges touch (fewer streams)."""
    out: list[tuple[int, int, int]] = []
    for a, lo, hi in groups:
        if out and out[-1][0] == a and out[-1][2] == lo:
            out[-1] = (a, out[-1][1], hi)
        else:
            out.append((a, lo, hi))
    return tuple(out)


def consecutive_column_tiles(placed: list[Placed]) -> tuple[Placed, ...]:
    """Swap interchangeable tiles (same layer, copy, row tile and shape) so that column tiles sharing
    an array are consecutive: the array's output channels form one range, so the SIMD ops that
    follow and their streams need fewer pieces. Costs are unchanged (same shapes and work)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(placed):
        q = p.req
        groups[(q.layer, q.copy, q.rt, q.rows, q.cols, q.bitplanes)].append(i)
    out = list(placed)
    for ids in groups.values():
        spots = sorted(((placed[i].array, placed[i].r0, placed[i].c0) for i in ids))
        reqs = sorted((placed[i].req for i in ids), key=lambda q: q.ct)
        for k, ((a, r0, c0), q) in enumerate(zip(spots, reqs)):
            out[ids[k]] = Placed(q, a, r0, c0)
    return tuple(out)


CHANNEL_SEPARABLE = (QOp.MAXPOOL, QOp.AVGPOOL, QOp.GLOBAL_AVGPOOL, QOp.ADD, QOp.UPSAMPLE)
"""SIMD ops computed channel by channel, which may be split over arrays by channel groups."""


def _host_chunks(base: list[tuple[int, int, int]], g: int, degree: dict[int, int]) -> list[tuple[int, int, int]]:
    """``base`` channel groups joined into ``g`` contiguous chunks, each on the array of one of its
    groups with the fewest streams so far (``degree``)."""
    n = len(base)
    out = []
    for k in range(g):
        part = base[k * n // g:(k + 1) * n // g]
        if part:
            host = min((p[0] for p in part), key=lambda a: (degree.get(a, 0), a))
            out.append((host, part[0][1], part[-1][2]))
    return out


def choose_host_groups(base: list[tuple[int, int, int]], pieces: list[tuple[int, int, int]],
                       consumers: list[tuple[int, int, int]], degree: dict[int, int],
                       degree_cap: int) -> tuple[tuple[int, int, int], ...]:
    """Channel groups of a channel-separable SIMD node whose inputs arrive as ``pieces`` (array,
    oc_lo, oc_hi): the first made input's column tiles of copy 0 (``base``) joined into g
    contiguous chunks. g is chosen to keep every array's streams (``degree``: streams already
    entering or leaving each array, updated here) within ``degree_cap``, then to minimise the
    stream endpoints (a piece made off its chunk's array is one stream; a chunk is one forked
    stream to every consumer array (array, ch_lo, ch_hi) reading its channels)."""
    best_key, best, best_deg = None, None, None
    g = len(base)
    while True:
        chunks = _host_chunks(base, g, degree)
        deg = dict(degree)
        ends = 0
        for a, lo, hi in pieces:
            for h, clo, chi in chunks:
                if clo < hi and lo < chi and h != a:
                    deg[h] = deg.get(h, 0) + 1
                    deg[a] = deg.get(a, 0) + 1
                    ends += 1
        for h, clo, chi in chunks:
            deg[h] = deg.get(h, 0) + 1
            ends += 1 + len({a for a, lo, hi in consumers if lo < chi and clo < hi and a != h})
        over = sum(max(0, deg[h] - degree_cap) for h in {c[0] for c in chunks})
        key = (over, ends, -g)
        if best_key is None or key < best_key:
            best_key, best, best_deg = key, chunks, deg
        if g == 1:
            degree.clear()
            degree.update(best_deg)
            return _merge_groups(best)
        g = (g + 1) // 2


def simd_hosts(qgraph: QGraph, nodes: tuple[str, ...], placed: tuple[Placed, ...],
               tilings: dict[str, LayerTiling], col_tiles: dict[str, tuple[int, int]], degree_cap: int = 8
               ) -> dict[str, tuple[tuple[int, int, int], ...]]:
    """Channel groups (array, oc_lo, oc_hi) of each SIMD-only node. A channel-separable node with
    an input made in this phase follows the first such input: a layer's column tiles (on the
    arrays accumulating copy 0 of it; channels made in other phases go to the first and last
    groups) joined into chunks by :func:`choose_host_groups` (at most ``degree_cap`` streams per
    array where possible), or the groups of that SIMD node, so residual adds and pooling stay next
    to the data. Others run on one array: the first made input's, else the array with the least
    work."""
    acc: dict[tuple[str, int], int] = {}
    load: dict[int, int] = defaultdict(int)
    pieces: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    readers: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    ends: set[tuple] = set()
    first = {layer: row_group(placed, layer)[0] for layer in {p.req.layer for p in placed}}
    for p in placed:
        q = p.req
        load[p.array] += q.bitplanes
        tl = tilings[q.layer]
        if q.rt == first[q.layer]:
            pieces[q.layer].append((p.array, *tl.col_tiles[q.ct]))
            ends.add((p.array, "out", q.layer, q.copy))
            if q.copy == 0:
                acc[(q.layer, q.ct)] = p.array
        src = qgraph.node(q.layer).inputs[0]
        readers[src].append((p.array, *tl.row_tiles[q.rt]))
        ends.add((p.array, "in", src))
    degree: dict[int, int] = defaultdict(int)
    for e in ends:
        degree[e[0]] += 1
    n_arrays = max([p.array for p in placed], default=0) + 1
    idle = min(range(n_arrays), key=lambda a: (load[a], a))
    hosts: dict[str, tuple[tuple[int, int, int], ...]] = {}
    for name in nodes:
        if name in tilings:
            continue
        node = qgraph.node(name)
        channels = node.out.shape[0]
        made = [i for i in node.inputs if i in col_tiles or i in hosts]
        groups: tuple[tuple[int, int, int], ...]
        if made and made[0] in col_tiles and node.op in CHANNEL_SEPARABLE and len(node.out.shape) > 0:
            src = made[0]
            tl = tilings[src]
            base = [(acc[(src, ct)], *tl.col_tiles[ct]) for ct in range(*col_tiles[src])]
            base[0] = (base[0][0], 0, base[0][2])
            base[-1] = (base[-1][0], base[-1][1], channels)
            arriving = [pc for i in made for pc in (pieces[i] if i in col_tiles else hosts[i])]
            groups = choose_host_groups(base, arriving, readers[name], degree, degree_cap)
        elif made:
            groups = hosts[made[0]] if made[0] in hosts else ((acc[(made[0], col_tiles[made[0]][0])], 0, channels),)
        else:
            groups = ((idle, 0, channels),)
        if node.op not in CHANNEL_SEPARABLE or len(node.out.shape) == 0:
            groups = ((groups[0][0], 0, channels),)
        hosts[name] = groups
    return hosts


def phase_work_of(qgraph: QGraph, plan_nodes: tuple[str, ...], placed: tuple[Placed, ...],
                  tilings: dict[str, LayerTiling], col_tiles: dict[str, tuple[int, int]],
                  copies: dict[str, int]) -> tuple[PhaseWork, dict[str, int]]:
    """The performance model's view of a placement (no streams yet) and its SIMD hosts."""
    hosts = simd_hosts(qgraph, plan_nodes, placed, tilings, col_tiles)
    simd: dict[int, int] = defaultdict(int)
    node_ops: dict[str, int] = {}
    groups = {layer: row_group(placed, layer) for layer in {p.req.layer for p in placed}}
    for p in placed:
        q = p.req
        r0, r1 = groups[q.layer]
        if q.rt != r0:
            continue
        tl = tilings[q.layer]
        lo, hi = pixel_range(tl.pixels, q.copy, copies[q.layer])
        oc_lo, oc_hi = tl.col_tiles[q.ct]
        n = (oc_hi - oc_lo) * (hi - lo)
        # adds of the group's row tiles (and of a spilled sum read back); requantise in the last group
        requant = qgraph.node(q.layer).requant.lane_ops * n if r1 == len(tl.row_tiles) else 0
        simd[p.array] += n * (r1 - r0 - 1 + (r0 > 0)) + requant
    for name, groups in hosts.items():
        total, channels = node_simd_ops(qgraph, name), qgraph.node(name).out.shape[0]
        for a, lo, hi in groups:
            simd[a] += total * (hi - lo) // channels
        node_ops[name] = max(total * (hi - lo) // channels for _, lo, hi in groups)
    work = PhaseWork(tiles=tuple(p.work() for p in placed), simd_ops=dict(simd), simd_node_ops=node_ops)
    return work, hosts


# --- copy search ------------------------------------------------------------------------------

def _score(est: PhaseEstimate, objective: str, chip: ChipConfig, floor_s: float, fill_weight: float,
           n_tiles: int, spread: int) -> tuple:
    """Objective of a placement, smaller is better. Throughput: the time per image, i.e. the stage
    time (no faster than ``floor_s``, the phase's off-chip I/O time, which no placement changes)
    plus ``fill_weight`` x the latency (the fill, paid once per batch); then fewer tiles (fewer
    copies: fewer streams to route), then less ``spread`` (layer copies split over fewer arrays:
    fewer streams), then latency."""
    if objective == "latency":
        return est.latency_s, est.stage_time_s, n_tiles
    if objective == "energy":
        return est.energy_j + chip.energy.static_w * est.stage_time_s, est.stage_time_s, n_tiles
    return round(max(est.stage_time_s, floor_s) + fill_weight * est.latency_s, 12), n_tiles, spread, est.latency_s


class Search:
    """The greedy copy search of one phase (see module doc)."""

    def __init__(self, qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig,
                 nodes: tuple[str, ...], col_tiles: dict[str, tuple[int, int]], objective: str,
                 floor_s: float = 0.0, caps: dict[str, int] | None = None, fill_weight: float = 0.0,
                 row_tiles: dict[str, tuple[int, int]] | None = None):
        self.qgraph, self.tilings, self.chip = qgraph, tilings, chip
        self.nodes, self.col_tiles, self.objective = nodes, col_tiles, objective
        self.row_tiles = {layer: (row_tiles or {}).get(layer, (0, len(tilings[layer].row_tiles))) for layer in col_tiles}
        """MVM layer -> [first, last) row tiles held in this phase."""
        self.floor_s = floor_s
        self.fill_weight = fill_weight
        self.related: dict[str, set[str]] = defaultdict(set)
        """MVM layer -> MVM layers of this phase that feed it or that it feeds (directly or through
        SIMD-only nodes)."""
        made_by = {}
        for name in nodes:
            node = qgraph.node(name)
            srcs = set()
            for i in node.inputs:
                srcs |= {i} if i in col_tiles else made_by.get(i, set())
            made_by[name] = {name} if name in col_tiles else srcs
            if name in col_tiles:
                for src in srcs:
                    self.related[name].add(src)
                    self.related[src].add(name)
        self.caps = {layer: min(tilings[layer].pixels, (caps or {}).get(layer, tilings[layer].pixels))
                     for layer in col_tiles}
        """Most copies each layer may have (never more than its output pixels)."""
        self.evaluations = 0

    def pack(self, copies: dict[str, int]) -> tuple[Placed, ...] | None:
        reqs = [r for layer, cts in self.col_tiles.items()
                for r in _requests(self.tilings[layer], cts, copies[layer], self.row_tiles[layer])]
        orders = (lambda r: (-r.bitplanes, -r.rows * r.cols, r.layer, r.copy, r.ct, r.rt),
                  lambda r: (-r.cols, -r.rows, -r.bitplanes, r.layer, r.copy, r.ct, r.rt))
        best, best_score, best_est = None, None, None
        for order in orders:
            self.evaluations += 1
            packer = Packer(self.chip)
            if packer.place_all(sorted(reqs, key=order)):
                placed = consecutive_column_tiles(packer.placed())
                score, est = self.score(placed, copies)
                if best_score is None or score < best_score:
                    best, best_score, best_est = placed, score, est
        if best is None:  # the order the phase partition checks fit with (largest tiles first)
            self.evaluations += 1
            packer = Packer(self.chip)
            if packer.place_all(sorted(reqs, key=lambda r: (-r.rows * r.cols, r.layer, r.ct, r.rt))):
                best = consecutive_column_tiles(packer.placed())
                best_score, best_est = self.score(best, copies)
        if best is not None and self.objective == "throughput":
            # the same stage time, with the tiles packed for locality (fewer streams to route)
            budget = max(self.floor_s, max(best_est.core_array_s.values(), default=0.0))
            placed = self.pack_local(copies, budget)
            if placed is not None:
                score = self.score(placed, copies)[0]
                if score[0] <= best_score[0] * (1 + LOCALITY_TOLERANCE):
                    best, best_score = placed, score
        return best

    def pack_local(self, copies: dict[str, int], budget_s: float) -> tuple[Placed, ...] | None:
        """The tiles packed for locality within ``budget_s`` of array time per array (see
        :class:`~imcflow.compiler.packing.Packer`); None if they do not fit."""
        if budget_s <= 0:
            return None
        reqs = [r for layer, cts in self.col_tiles.items()
                for r in _requests(self.tilings[layer], cts, copies[layer], self.row_tiles[layer])]
        packer = Packer(self.chip, budget_s, self.related)
        self.evaluations += 1
        order = sorted(reqs, key=lambda r: (-r.bitplanes, -r.rows * r.cols, r.layer, r.copy, r.ct, r.rt))
        if not packer.place_all(order):
            return None
        return consecutive_column_tiles(packer.placed())

    def score(self, placed: tuple[Placed, ...], copies: dict[str, int]):
        work, _ = phase_work_of(self.qgraph, self.nodes, placed, self.tilings, self.col_tiles, copies)
        est = estimate_phase(work, self.chip)
        spread = len({(p.array, p.req.layer, p.req.copy) for p in placed})
        return _score(est, self.objective, self.chip, self.floor_s, self.fill_weight, len(placed), spread), est

    def candidates(self, placed: tuple[Placed, ...], est: PhaseEstimate) -> list[str]:
        """Layers to try giving more copies, most limiting first."""
        per_layer: dict[str, int] = defaultdict(int)
        for p in placed:
            per_layer[p.req.layer] = max(per_layer[p.req.layer], p.req.bitplanes)
        if self.objective == "throughput" and est.bottleneck.startswith("core ") and est.bottleneck.endswith("array"):
            core = int(est.bottleneck.split()[1])
            on_core = {p.req.layer for p in placed if p.array == core}
            return sorted(on_core, key=lambda layer: (-per_layer[layer], layer))
        return sorted(per_layer, key=lambda layer: (-per_layer[layer], layer))

    def run(self, copies: dict[str, int], placed: tuple[Placed, ...]) -> tuple[dict[str, int], tuple[Placed, ...]]:
        """Greedy improvement from ``copies`` packed as ``placed`` (see module doc)."""
        score, est = self.score(placed, copies)
        improved = True
        while improved and self.evaluations < MAX_EVALUATIONS:
            improved = False
            for layer in self.candidates(placed, est):
                n = copies[layer]
                for extra in range(1, n + 1):
                    if n + extra > self.caps[layer] or self.evaluations >= MAX_EVALUATIONS:
                        break
                    trial = {**copies, layer: n + extra}
                    got = self.pack(trial)
                    if got is None:
                        break
                    s, e = self.score(got, trial)
                    if s < score:
                        copies, placed, score, est, improved = trial, got, s, e, True
                        break
                if improved:
                    break
        return copies, placed


LOCALITY_TOLERANCE = 0.01
"""A packing for locality (fewer streams) is preferred when its objective is at most this much
worse than the best packing's (e.g. slightly more SIMD latency from fewer SIMD hosts)."""
BALANCE_STEP = 1.08
"""Ratio between successive target array times tried by the balanced copy search."""
BALANCE_PATIENCE = 3
"""Feasible targets tried past the best one before the balanced search stops."""


def balanced_copies(tilings: dict[str, LayerTiling], cts: dict[str, tuple[int, int]], chip: ChipConfig,
                    target_s: float, caps: dict[str, int]) -> dict[str, int]:
    """Copies per layer in proportion to its work: enough that each copy's tiles take at most
    ``target_s`` per image (never more than ``caps``)."""
    out = {}
    for layer in cts:
        tl = tilings[layer]
        out[layer] = max(1, min(caps[layer], math.ceil(tile_time_s(tl, chip) / target_s - 1e-9)))
    return out


def balanced_search(search: Search, tilings: dict[str, LayerTiling], cts: dict[str, tuple[int, int]],
                    chip: ChipConfig) -> tuple[dict[str, int], tuple[Placed, ...]] | None:
    """Copies that balance the phase's work over all arrays: for target array times T from
    (total tile work) / n_cores upwards (ratio BALANCE_STEP), give every layer ``ceil(t_L / T)``
    copies, pack, and keep the packing the objective scores best; stop BALANCE_PATIENCE feasible
    targets after the best. None when not even one copy of every layer packs."""
    times = {layer: tile_time_s(tilings[layer], chip) for layer in cts}
    work = sum(times[layer] * (search.row_tiles[layer][1] - search.row_tiles[layer][0]) * (b - a)
               for layer, (a, b) in cts.items())
    top = max(times.values(), default=0.0)
    target = work / chip.n_cores if work > 0 else top
    best, best_score, since, tried = None, None, 0, set()
    while True:
        copies = balanced_copies(tilings, cts, chip, target, search.caps) if target > 0 else {layer: 1 for layer in cts}
        key = tuple(sorted(copies.items()))
        if key not in tried:
            tried.add(key)
            placed = search.pack(copies)
            if placed is not None:
                score = search.score(placed, copies)[0]
                if best_score is None or score < best_score:
                    best, best_score, since = (copies, placed), score, 0
                else:
                    since += 1
        if all(v == 1 for v in copies.values()) or since >= BALANCE_PATIENCE:
            return best
        target *= BALANCE_STEP


def place_phase(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, objective: str, index: int,
                nodes: tuple[str, ...], cts: dict[str, tuple[int, int]], floor_s: float = 0.0,
                caps: dict[str, int] | None = None, fill_weight: float = 0.0,
                rts: dict[str, tuple[int, int]] | None = None) -> PhasePlan:
    """Copies and packing of one phase computing ``nodes`` (MVM layers: column tiles ``cts``, row
    tiles ``rts``, default all): the balanced search, then the greedy search for the limiting
    layers from there. ``floor_s``: the phase's off-chip I/O time per image (compute below it
    gains nothing); ``caps``: most copies per layer (default: one per output pixel)."""
    search = Search(qgraph, tilings, chip, nodes, cts, objective, floor_s, caps, fill_weight, rts)
    got = balanced_search(search, tilings, cts, chip)
    if got is None:
        raise CompileError(f"phase {index}: its tiles do not pack into {chip.n_cores} arrays (internal: "
                           f"the phase split and the packer disagree)")
    search.evaluations = 0
    copies, placed = search.run(*got)
    _, hosts = phase_work_of(qgraph, nodes, placed, tilings, cts, copies)
    return PhasePlan(index=index, nodes=nodes, col_tiles=cts, copies=copies, placed=placed, hosts=hosts,
                     floor_s=floor_s, fill_weight=fill_weight, row_tiles=search.row_tiles)


def localised(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, plan: PhasePlan,
              objective: str) -> PhasePlan | None:
    """The phase with the same copies packed purely for locality within its stage time (or its
    I/O floor, if larger): fewer streams, maybe more fill. None if that packing is not new or
    exceeds that time."""
    search = Search(qgraph, tilings, chip, plan.nodes, plan.col_tiles, objective, plan.floor_s,
                    fill_weight=plan.fill_weight, row_tiles=plan.row_tiles)
    est = search.score(plan.placed, plan.copies)[1]
    budget = max(plan.floor_s, max(est.core_array_s.values(), default=0.0))
    placed = search.pack_local(plan.copies, budget)
    if placed is None or set(placed) == set(plan.placed):
        return None
    if max(search.score(placed, plan.copies)[1].core_array_s.values(), default=0.0) > budget * (1 + LOCALITY_TOLERANCE):
        return None  # it did not fit the budget: fewer copies will do better
    _, hosts = phase_work_of(qgraph, plan.nodes, placed, tilings, plan.col_tiles, plan.copies)
    return dataclasses.replace(plan, placed=placed, hosts=hosts)


def fewer_copies(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, plan: PhasePlan,
                 objective: str) -> PhasePlan | None:
    """The phase re-placed with fewer copies (fewer streams to route): the layer whose copies make
    the most output pieces (copies x column tiles) may keep about three quarters of its copies
    (ties: all of them), and the phase is placed afresh under these caps (so the other layers
    rebalance). None when every layer already has one copy."""
    copies = plan.copies
    if all(n == 1 for n in copies.values()):
        return None
    pieces = {layer: copies[layer] * (b - a) if copies[layer] > 1 else 0 for layer, (a, b) in plan.col_tiles.items()}
    most = max(pieces.values())
    caps = {layer: max(1, (3 * n) // 4) if pieces[layer] == most else n for layer, n in copies.items()}
    return place_phase(qgraph, tilings, chip, objective, plan.index, plan.nodes, plan.col_tiles, plan.floor_s, caps,
                       plan.fill_weight, plan.row_tiles)


def split_plan(plan: PhasePlan) -> tuple[tuple[tuple[str, ...], dict], tuple[tuple[str, ...], dict]] | None:
    """Cut a phase's work in two halves ((nodes, column tiles) each), or None if it is one tile."""
    units = [(layer, ct) for layer, (a, b) in plan.col_tiles.items() for ct in range(a, b)]
    if len(units) < 2:
        return None
    first_units = units[:len(units) // 2]
    last_layer = first_units[-1][0]
    halves: list[tuple[list[str], dict]] = [([], {}), ([], {})]
    side = 0
    for name in plan.nodes:
        if name not in plan.col_tiles:
            halves[side][0].append(name)
            continue
        mine = [ct for (layer, ct) in first_units if layer == name]
        a, b = plan.col_tiles[name]
        if side == 0 and mine:
            halves[0][0].append(name)
            halves[0][1][name] = (a, mine[-1] + 1)
            if mine[-1] + 1 < b:
                halves[1][0].append(name)
                halves[1][1][name] = (mine[-1] + 1, b)
            if name == last_layer:
                side = 1
        else:
            side = 1
            halves[1][0].append(name)
            halves[1][1][name] = (a, b)
    return (tuple(halves[0][0]), halves[0][1]), (tuple(halves[1][0]), halves[1][1])


def place(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, objective: str) -> list[PhasePlan]:
    """Phases (:func:`imcflow.compiler.partition.partition`) with copies and packed tiles, chosen
    by ``objective`` with the performance model."""
    if objective not in OBJECTIVES:
        raise CompileError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    phases = partition(qgraph, tilings, chip)
    fill = 1.0 / PLAN_BATCH if len(phases) > 1 else 0.0
    return [place_phase(qgraph, tilings, chip, objective, i, span.nodes, span.col_tiles, span.io_s, fill_weight=fill,
                        rts=span.row_tiles) for i, span in enumerate(phases)]
