"""Streams and routing on the 2-D mesh on-chip network.

**Streams** (per phase, on logical arrays): every piece of a tensor goes from where it is made
(the array that requantises a layer copy's column tile, the SIMD host of a node, or the input port
for tensors made in earlier phases and the graph input) to every array that uses it (MVM tiles
whose row tile reads any of the piece's channels and whose copy's receptive fields touch the
piece's pixels, SIMD hosts) and to the output port when a later phase or the user needs it; one
stream forks to all of them. Column tiles of one layer copy on one array with the same
destinations travel as one merged stream (:func:`merge_streams`). Partial sums of the phase's
other row tiles go to the array holding its first row tile. A layer holding a group of its row
tiles (partial-sum spill) makes no activations in a non-final group's phase: its accumulators
leave by ACC streams to the output port; a later group's phase reads them back by ACC streams
from the input port. A tensor from the input port carries only the channels the phase's row
tiles and SIMD hosts read.

**Routing**: logical arrays are first assigned to cores (snake order along the grid in graph order,
so consecutive layers sit side by side, then pairwise swaps that shorten the streams' total
Manhattan length), then each stream, most destinations first, grows a route tree: from the tree
built so far, a cheapest path (Dijkstra) to the nearest destination not yet reached. Congestion is negotiated
(PathFinder): channels over their track count get growing penalties and all streams are re-routed
until every channel is within ``ocn.tracks_per_channel``. When that fails, the assignment of
arrays to cores is changed (seeded random permutations, improved by swaps) and routing starts
again; after ``ATTEMPTS`` assignments it is a CompileError (the pipeline then retries the phase
with fewer copies, i.e. fewer streams, step by step).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass

import numpy as np

from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError
from imcflow.compiler.placement import PhasePlan, pixel_range
from imcflow.compiler.tiling import LayerTiling, psum_bits
from imcflow.ir.program import CHANNEL_MIXING, IN_PORT, OUT_PORT, StreamKind
from imcflow.ir.qgraph import QGraph, QTensor, input_rows

ATTEMPTS = 8
"""Array-to-core assignments tried per phase before routing gives up."""
ROUTE_ITERATIONS = 12
"""Rip-up-and-reroute rounds of negotiated congestion per assignment."""


@dataclass(frozen=True)
class StreamSpec:
    """A stream between logical arrays (or ports); see :class:`imcflow.ir.program.Stream`."""

    kind: StreamKind
    tensor: str
    src: int
    dsts: tuple[int, ...]
    oc_lo: int
    oc_hi: int
    px_lo: int
    px_hi: int
    bits: int
    row_tile: int = -1
    copy: int = 0


def tensor_extent(spec: QTensor) -> tuple[int, int]:
    """(channels, pixels) of a tensor: pixels = H*W for feature maps, 1 for vectors."""
    channels = spec.shape[0]
    pixels = spec.shape[1] * spec.shape[2] if len(spec.shape) == 3 else 1
    return int(channels), int(pixels)


def _pieces(qgraph: QGraph, plan: PhasePlan, tilings: dict[str, LayerTiling], tensor: str) -> list[tuple]:
    """(src, oc_lo, oc_hi, px_lo, px_hi, made_here) pieces of ``tensor`` available in this phase."""
    spec = qgraph.spec(tensor)
    channels, pixels = tensor_extent(spec)
    if tensor in plan.col_tiles:
        tl = tilings[tensor]
        a, b = plan.col_tiles[tensor]
        if plan.row_tiles[tensor][1] < len(tl.row_tiles):
            return []   # a non-final row-tile group: its accumulators leave as ACC streams
        out = []
        if a > 0:
            out.append((IN_PORT, 0, tl.col_tiles[a][0], 0, pixels, False))
        for k in range(plan.copies[tensor]):
            lo, hi = pixel_range(tl.pixels, k, plan.copies[tensor])
            for ct in range(a, b):
                out.append((plan.acc_array(tensor, k, ct), *tl.col_tiles[ct], lo, hi, True))
        return out
    if tensor in plan.hosts:
        return [(a, lo, hi, 0, pixels, True) for a, lo, hi in plan.hosts[tensor]]
    return [(IN_PORT, *_channels_read(qgraph, plan, tilings, tensor, channels), 0, pixels, False)]


def _channels_read(qgraph: QGraph, plan: PhasePlan, tilings: dict[str, LayerTiling], tensor: str,
                   channels: int) -> tuple[int, int]:
    """Channels [lo, hi) of ``tensor`` that the phase reads: its MVM consumers' row tiles held here
    (fewer than all in a partial-sum spill group), all of them for SIMD consumers."""
    lo, hi = channels, 0
    for name in plan.nodes:
        if tensor not in qgraph.node(name).inputs:
            continue
        if name in plan.col_tiles:
            r0, r1 = plan.row_tiles[name]
            lo, hi = min(lo, tilings[name].row_tiles[r0][0]), max(hi, tilings[name].row_tiles[r1 - 1][1])
        else:
            lo, hi = 0, channels
    return (lo, hi) if lo < hi else (0, channels)


def needed_input_pixels(qgraph: QGraph, tl: LayerTiling, copy: int, n_copies: int) -> tuple[int, int]:
    """Input pixels [lo, hi) (row-major) that copy ``copy`` of layer ``tl`` reads: the input rows its
    output rows' receptive fields touch (a superset of the exact receptive fields, dilated windows
    included; everything for LINEAR layers and vector inputs; see
    :func:`imcflow.ir.qgraph.input_rows`)."""
    node = qgraph.node(tl.layer)
    spec = qgraph.spec(node.inputs[0])
    _, pixels = tensor_extent(spec)
    if len(spec.shape) != 3 or len(node.out.shape) != 3:
        return 0, pixels
    h_in, w_in = spec.shape[1], spec.shape[2]
    w_out = node.out.shape[2]
    lo, hi = pixel_range(tl.pixels, copy, n_copies)
    y0, y1 = lo // w_out, (hi - 1) // w_out
    r0, r1 = input_rows(node, y0, y1, h_in)
    return r0 * w_in, (r1 + 1) * w_in


def _split_port_pieces(pieces: list[tuple], bits: int, cap_bits: float, most: int) -> list[tuple]:
    """Pieces from the input port larger than ``cap_bits`` per image cut into equal channel groups
    of about ``cap_bits`` (one track each; at most ``most`` groups, 0: no limit), so that no single
    track limits the phase when the port is wider than a track. ``cap_bits`` 0: unchanged."""
    out = []
    for piece in pieces:
        src, oc_lo, oc_hi, px_lo, px_hi, made_here = piece
        total = (oc_hi - oc_lo) * (px_hi - px_lo) * bits
        n = min(oc_hi - oc_lo, most or total, math.ceil(total / cap_bits - 1e-9)) \
            if src == IN_PORT and cap_bits > 0 and most != 1 else 1
        for k in range(max(1, n)):
            lo, hi = oc_lo + k * (oc_hi - oc_lo) // n, oc_lo + (k + 1) * (oc_hi - oc_lo) // n
            out.append((src, lo, hi, px_lo, px_hi, made_here) if n > 1 else piece)
    return out


def merge_streams(streams: list[StreamSpec], cap_bits: float) -> list[StreamSpec]:
    """Join activation streams of one tensor from one source with the same pixels and destinations
    whose channel ranges touch (column tiles of one layer copy on one array) into one stream, as
    long as the joined stream carries at most ``cap_bits`` per image (one track's capacity over the
    phase's array time, so that merging never makes a stream the bottleneck). Fewer streams are
    easier to route."""
    out: list[StreamSpec] = []
    for s in streams:
        prev = out[-1] if out else None
        if (prev is not None and s.kind == StreamKind.ACT and prev.kind == StreamKind.ACT and prev.src >= 0
                and (prev.tensor, prev.src, prev.px_lo, prev.px_hi, prev.dsts)
                == (s.tensor, s.src, s.px_lo, s.px_hi, s.dsts)
                and prev.oc_hi == s.oc_lo and prev.bits + s.bits <= cap_bits):
            out[-1] = dataclasses.replace(prev, oc_hi=s.oc_hi, bits=prev.bits + s.bits)
        else:
            out.append(s)
    return out


def phase_streams(qgraph: QGraph, plan: PhasePlan, tilings: dict[str, LayerTiling],
                  needed_later: set[str], chip: ChipConfig, merge_bits: float = 0.0,
                  port_split: int = 0) -> list[StreamSpec]:
    """Every stream of one phase (activations, partial sums at ``simd.accumulator_bits``, spilled
    accumulators at :func:`~imcflow.compiler.tiling.psum_bits`, port traffic); activation pieces
    are joined by :func:`merge_streams` up to ``merge_bits`` per stream (0: not joined), and
    pieces from the input port are cut into streams of about ``merge_bits`` (at most
    ``port_split`` of them; 0: no limit)."""
    in_phase = set(plan.nodes)
    tensors = [t for t in [qgraph.input_name] + [n.name for n in qgraph.nodes]
               if t in in_phase or any(t in qgraph.node(m).inputs for m in plan.nodes)]
    streams: list[StreamSpec] = []
    for t in tensors:
        bits = qgraph.spec(t).bits
        for src, oc_lo, oc_hi, px_lo, px_hi, made_here in _split_port_pieces(
                _pieces(qgraph, plan, tilings, t), bits, merge_bits, port_split):
            dsts = set()
            for p in plan.placed:
                q = p.req
                if qgraph.node(q.layer).inputs[0] == t:
                    ch_lo, ch_hi = tilings[q.layer].row_tiles[q.rt]
                    need_lo, need_hi = needed_input_pixels(qgraph, tilings[q.layer], q.copy, plan.copies[q.layer])
                    if ch_lo < oc_hi and oc_lo < ch_hi and need_lo < px_hi and px_lo < need_hi:
                        dsts.add(p.array)
            for name, groups in plan.hosts.items():
                if t in qgraph.node(name).inputs:   # a channel-mixing op's host reads every input channel
                    mixing = qgraph.node(name).op in CHANNEL_MIXING
                    dsts.update(a for a, lo, hi in groups if mixing or (lo < oc_hi and oc_lo < hi))
            if made_here and t in needed_later:
                dsts.add(OUT_PORT)
            dsts.discard(src)
            if dsts:
                streams.append(StreamSpec(StreamKind.ACT, t, src, tuple(sorted(dsts, key=_ep_key)), oc_lo, oc_hi,
                                          px_lo, px_hi, (oc_hi - oc_lo) * (px_hi - px_lo) * bits))
    if merge_bits > 0:
        streams = merge_streams(streams, merge_bits)
    streams += _psum_streams(plan, tilings, chip.simd.accumulator_bits)
    streams += _spill_streams(plan, tilings, chip)
    return streams


def _spill_streams(plan: PhasePlan, tilings: dict[str, LayerTiling], chip: ChipConfig) -> list[StreamSpec]:
    """ACC streams of the phase's row-tile groups: the accumulator of the row tiles before the
    group from the input port, and (unless the group is the last) the accumulator after it to the
    output port, per layer copy and column tile, on the array accumulating it."""
    out = []
    for layer, (a, b) in plan.col_tiles.items():
        tl = tilings[layer]
        r0, r1 = plan.row_tiles[layer]
        width = psum_bits(tl, chip)
        for k in range(plan.copies[layer]):
            lo, hi = pixel_range(tl.pixels, k, plan.copies[layer])
            for ct in range(a, b):
                acc = plan.acc_array(layer, k, ct)
                oc_lo, oc_hi = tl.col_tiles[ct]
                bits = (oc_hi - oc_lo) * (hi - lo) * width
                if r0 > 0:
                    out.append(StreamSpec(StreamKind.ACC, layer, IN_PORT, (acc,), oc_lo, oc_hi, lo, hi, bits,
                                          row_tile=r0, copy=k))
                if r1 < len(tl.row_tiles):
                    out.append(StreamSpec(StreamKind.ACC, layer, acc, (OUT_PORT,), oc_lo, oc_hi, lo, hi, bits,
                                          row_tile=r1, copy=k))
    return out


def _psum_streams(plan: PhasePlan, tilings: dict[str, LayerTiling], acc_bits: int) -> list[StreamSpec]:
    out = []
    for p in plan.placed:
        q = p.req
        if q.rt == plan.row_tiles[q.layer][0]:
            continue
        acc = plan.acc_array(q.layer, q.copy, q.ct)
        if acc == p.array:
            continue
        tl = tilings[q.layer]
        oc_lo, oc_hi = tl.col_tiles[q.ct]
        lo, hi = pixel_range(tl.pixels, q.copy, plan.copies[q.layer])
        out.append(StreamSpec(StreamKind.PSUM, q.layer, p.array, (acc,), oc_lo, oc_hi, lo, hi,
                              (oc_hi - oc_lo) * (hi - lo) * acc_bits, row_tile=q.rt, copy=q.copy))
    return out


def _ep_key(e: int) -> tuple[int, int]:
    return (1, -e) if e < 0 else (0, e)


# --- routing ------------------------------------------------------------------------------------

def _neighbours(chip: ChipConfig, s: int) -> list[int]:
    """Switches (and the output port) reachable from switch or port ``s`` in one edge."""
    if s == IN_PORT:
        return [r * chip.grid_cols for r in range(chip.grid_rows)]
    if s == OUT_PORT:
        return []
    r, c = divmod(s, chip.grid_cols)
    out = []
    if r > 0:
        out.append(s - chip.grid_cols)
    if r < chip.grid_rows - 1:
        out.append(s + chip.grid_cols)
    if c > 0:
        out.append(s - 1)
    if c < chip.grid_cols - 1:
        out.append(s + 1)
    if c == chip.grid_cols - 1:
        out.append(OUT_PORT)
    return out


def _switch(perm: list[int], e: int) -> int:
    """Route-tree node of an endpoint: the core of a logical array, or the port itself."""
    return e if e < 0 else perm[e]


def _channel(a: int, b: int) -> tuple[int, int] | None:
    """The track-limited channel of edge (a, b); None for port edges."""
    return None if a < 0 or b < 0 else (min(a, b), max(a, b))


def _neighbour_table(chip: ChipConfig) -> dict[int, list[tuple[int, tuple[int, int] | None]]]:
    """(neighbour, :func:`_channel` of the edge to it) for every switch and port."""
    return {s: [(n, _channel(s, n)) for n in _neighbours(chip, s)] for s in [*range(chip.n_cores), IN_PORT, OUT_PORT]}


def _grow(chip: ChipConfig, tree: set[int], targets: set[int], cost,
          table: dict[int, list[tuple[int, tuple[int, int] | None]]] | None = None) -> list[tuple[int, int]]:
    """Cheapest path (edge costs from ``cost(channel)``, the channel None for a port edge) from any
    switch of ``tree`` to the nearest of ``targets`` through switches not yet in the tree (the mesh
    is connected, so one exists);
    ``table``: :func:`_neighbour_table` of ``chip``, if the caller has it."""
    table = table or _neighbour_table(chip)
    dist = {s: 0.0 for s in tree}
    prev: dict[int, int] = {}
    heap = [(0.0, s) for s in sorted(tree)]
    while heap:
        d, s = heapq.heappop(heap)
        if s in targets:
            path = []
            while s not in tree:
                path.append((prev[s], s))
                s = prev[s]
            return path[::-1]
        if d > dist.get(s, float("inf")):
            continue
        for n, channel in table[s]:
            if n in tree:
                continue
            nd = d + cost(channel)
            if nd < dist.get(n, float("inf")):
                dist[n], prev[n] = nd, s
                heapq.heappush(heap, (nd, n))
    raise AssertionError("mesh switches are always connected")


def route_streams(chip: ChipConfig, perm: list[int], streams: list[StreamSpec]) -> list[tuple] | None:
    """Route trees (edge tuples, in ``streams`` order) for one array-to-core assignment, or None.

    Negotiated congestion (PathFinder): every stream is routed on its cheapest tree, channels over
    their track count get a growing present-use penalty and a history cost, and all streams are
    ripped up and re-routed until no channel is over capacity or ``ROUTE_ITERATIONS`` pass."""
    cap = chip.ocn.tracks_per_channel
    order = sorted(range(len(streams)), key=lambda i: (-len(streams[i].dsts), -streams[i].bits, i))
    history: dict[tuple[int, int], float] = {}
    table = _neighbour_table(chip)
    for it in range(ROUTE_ITERATIONS):
        usage: dict[tuple[int, int], int] = {}
        penalty = 0.5 * 1.7 ** it

        def cost(key: tuple[int, int] | None) -> float:
            if key is None:
                return 1.0
            over = usage.get(key, 0) + 1 - cap
            return (1.0 + history.get(key, 0.0)) * (1.0 + (penalty * over if over > 0 else 0.0))

        routes: list[tuple] = [()] * len(streams)
        for i in order:
            s = streams[i]
            root = _switch(perm, s.src)
            tree, edges = {root}, []
            todo = {_switch(perm, d) for d in s.dsts} - {root}
            while todo:
                path = _grow(chip, tree, todo, cost, table)
                todo.discard(path[-1][1])
                for a, b in path:
                    edges.append((a, b))
                    tree.add(b)
                    key = _channel(a, b)
                    if key is not None:
                        usage[key] = usage.get(key, 0) + 1
                todo -= tree
            routes[i] = tuple(edges)
        over = {k: u - cap for k, u in usage.items() if u > cap}
        if not over:
            return routes
        for k, v in over.items():
            history[k] = history.get(k, 0.0) + 0.5 * v
    return None


def _distance(chip: ChipConfig, a: int, b: int) -> int:
    """Hops between route-tree nodes (ports count from their grid edge)."""
    if a == IN_PORT:
        return b % chip.grid_cols if b >= 0 else chip.grid_cols
    if b == OUT_PORT:
        return chip.grid_cols - 1 - a % chip.grid_cols
    (r0, c0), (r1, c1) = divmod(a, chip.grid_cols), divmod(b, chip.grid_cols)
    return abs(r0 - r1) + abs(c0 - c1)


def _wirelength(chip: ChipConfig, perm: list[int], streams: list[StreamSpec]) -> int:
    """Total Manhattan length of the streams' source-to-destination hops (the slow reference of
    :class:`Wirelength`)."""
    return sum(_distance(chip, _switch(perm, s.src), _switch(perm, d)) for s in streams for d in s.dsts)


class Wirelength:
    """:func:`_wirelength` of one stream set for any assignment, vectorised: a table of hops
    between route-tree nodes (cores, then the output and input ports at indices -2 and -1, the
    ports' endpoint ids) indexed by every (source, destination) pair at once."""

    def __init__(self, chip: ChipConfig, streams: list[StreamSpec]):
        nodes = list(range(chip.n_cores)) + [OUT_PORT, IN_PORT]
        assert nodes[-1] == IN_PORT and nodes[-2] == OUT_PORT
        self.hops = np.array([[_distance(chip, a, b) for b in nodes] for a in nodes], dtype=np.int64)
        self.src = np.array([s.src for s in streams for _ in s.dsts], dtype=np.int64)
        self.dst = np.array([d for s in streams for d in s.dsts], dtype=np.int64)

    def __call__(self, perm: list[int]) -> int:
        node = np.array(list(perm) + [OUT_PORT, IN_PORT], dtype=np.int64)   # endpoint -> route-tree node
        return int(self.hops[node[self.src], node[self.dst]].sum())


def improve_assignment(chip: ChipConfig, perm: list[int], streams: list[StreamSpec]) -> list[int]:
    """Hill-climb over pairwise swaps of cores, shortening the streams' total Manhattan length."""
    perm = list(perm)
    length = Wirelength(chip, streams)
    best = length(perm)
    improved = True
    while improved:
        improved = False
        for a in range(len(perm)):
            for b in range(a + 1, len(perm)):
                perm[a], perm[b] = perm[b], perm[a]
                w = length(perm)
                if w < best:
                    best, improved = w, True
                else:
                    perm[a], perm[b] = perm[b], perm[a]
    return perm


def snake_order(chip: ChipConfig) -> list[int]:
    """Cores in boustrophedon order (row 0 left to right, row 1 right to left, ...)."""
    out = []
    for r in range(chip.grid_rows):
        cols = range(chip.grid_cols) if r % 2 == 0 else range(chip.grid_cols - 1, -1, -1)
        out.extend(r * chip.grid_cols + c for c in cols)
    return out


def initial_assignment(plan: PhasePlan, qgraph: QGraph, chip: ChipConfig) -> list[int]:
    """perm[array] = core: arrays in order of the first node they serve, laid along the snake."""
    first: dict[int, int] = {}
    index = {n.name: i for i, n in enumerate(qgraph.nodes)}
    for p in plan.placed:
        first[p.array] = min(first.get(p.array, 1 << 30), index[p.req.layer])
    for name, groups in plan.hosts.items():
        for a, _, _ in groups:
            first[a] = min(first.get(a, 1 << 30), index[name])
    arrays = sorted(range(chip.n_cores), key=lambda a: (first.get(a, 1 << 30), a))
    snake = snake_order(chip)
    perm = [0] * chip.n_cores
    for pos, a in enumerate(arrays):
        perm[a] = snake[pos]
    return perm


def route_phase(plan: PhasePlan, qgraph: QGraph, chip: ChipConfig,
                streams: list[StreamSpec]) -> tuple[list[int], list[tuple]]:
    """An array-to-core assignment and a route per stream; CompileError when none is found."""
    perm = improve_assignment(chip, initial_assignment(plan, qgraph, chip), streams)
    rng = np.random.default_rng(plan.index)
    for attempt in range(ATTEMPTS):
        routes = route_streams(chip, perm, streams)
        if routes is not None:
            return perm, routes
        perm = improve_assignment(chip, [int(v) for v in rng.permutation(chip.n_cores)], streams)
    raise CompileError(
        f"phase {plan.index}: cannot route its {len(streams)} streams on the {chip.grid_rows}x{chip.grid_cols} "
        f"mesh with {chip.ocn.tracks_per_channel} tracks per channel (ocn.tracks_per_channel) after {ATTEMPTS} "
        f"core assignments; raise ocn.tracks_per_channel or use a larger grid")
