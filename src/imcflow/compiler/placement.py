"""Placement: cut the network into phases, then search copies per layer with the performance model.

1. **Phases.** Walk the graph in order, adding each MVM layer one column tile (with all its row
   tiles, which must sit in one phase to be summed) at a time to the current phase while the
   phase's tiles still pack into the arrays; otherwise start a new phase. SIMD-only nodes join the
   phase current when they are reached (their inputs are complete by then). A column tile that
   does not fit an empty chip is a CompileError.
2. **Copies.** Per phase, a greedy search: start with one copy per layer; repeatedly give the layer
   that limits the objective (the slowest layer on the bottleneck core for throughput, the slowest
   layer for latency and energy) one or more extra copies (each copy computes a contiguous share of
   the output pixels) and re-pack; keep the change when the objective improves, stop when no
   limiting layer can be improved. Packing puts small copies block-diagonally and lets rarely-run
   layers borrow idle rows of busy arrays (see :mod:`imcflow.compiler.packing`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError
from imcflow.compiler.packing import Packer, Placed, TileReq
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

    def acc_array(self, layer: str, copy: int, ct: int) -> int:
        """Array that accumulates and requantises (layer, copy, column tile): where row tile 0 sits."""
        for p in self.placed:
            q = p.req
            if q.layer == layer and q.copy == copy and q.ct == ct and q.rt == 0:
                return p.array
        raise KeyError((layer, copy, ct))


def pixel_range(pixels: int, copy: int, n_copies: int) -> tuple[int, int]:
    """Contiguous share [lo, hi) of ``pixels`` output pixels computed by copy ``copy`` of ``n_copies``."""
    return copy * pixels // n_copies, (copy + 1) * pixels // n_copies


def _requests(tl: LayerTiling, cts: tuple[int, int], n_copies: int) -> list[TileReq]:
    out = []
    for k in range(n_copies):
        lo, hi = pixel_range(tl.pixels, k, n_copies)
        for ct in range(*cts):
            for rt in range(len(tl.row_tiles)):
                out.append(TileReq(tl.layer, k, rt, ct, tl.tile_rows(rt), tl.tile_cols(ct), (hi - lo) * tl.x_bits))
    return out


# --- phases -------------------------------------------------------------------------------------

def split_phases(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig) -> list[dict]:
    """Greedy phase partition. Returns per phase {"nodes": [...], "col_tiles": {layer: (a, b)}}."""
    phases: list[dict] = [{"nodes": [], "col_tiles": {}}]
    packer = Packer(chip)
    for node in qgraph.nodes:
        if not node.is_mvm:
            phases[-1]["nodes"].append(node.name)
            continue
        tl = tilings[node.name]
        for ct in range(len(tl.col_tiles)):
            reqs = _requests(tl, (ct, ct + 1), 1)
            if not _fits_more(packer, reqs):
                packer = Packer(chip)
                if not packer.place_all(reqs):
                    raise CompileError(
                        f"layer {node.name!r}: one column tile needs {len(tl.row_tiles)} row tile(s) of up to "
                        f"{max(tl.tile_rows(r) for r in range(len(tl.row_tiles)))} rows x {tl.tile_cols(ct)} columns "
                        f"summed in one phase, which do not fit the {chip.n_cores} arrays of "
                        f"{chip.array.rows}x{chip.array.cols}; use a chip with more cores or larger arrays")
                phases.append({"nodes": [], "col_tiles": {}})
            ph = phases[-1]
            if node.name not in ph["nodes"]:
                ph["nodes"].append(node.name)
                ph["col_tiles"][node.name] = (ct, ct + 1)
            else:
                ph["col_tiles"][node.name] = (ph["col_tiles"][node.name][0], ct + 1)
    if not phases[0]["nodes"] and len(phases) > 1:
        phases.pop(0)
    return phases


def _fits_more(packer: Packer, reqs: list[TileReq]) -> bool:
    saved = [list(a) for a in packer.arrays], list(packer.times)
    if packer.place_all(reqs):
        return True
    packer.arrays, packer.times = saved
    return False


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


CHANNEL_SEPARABLE = (QOp.MAXPOOL, QOp.AVGPOOL, QOp.GLOBAL_AVGPOOL, QOp.ADD)
"""SIMD ops computed channel by channel, which may be split over arrays by channel groups."""


def simd_hosts(qgraph: QGraph, nodes: tuple[str, ...], placed: tuple[Placed, ...],
               tilings: dict[str, LayerTiling], col_tiles: dict[str, tuple[int, int]]
               ) -> dict[str, tuple[tuple[int, int, int], ...]]:
    """Channel groups (array, oc_lo, oc_hi) of each SIMD-only node. A channel-separable node whose
    first input is made in this phase follows that input: one group per column tile of its layer
    (on the array accumulating copy 0 of it) or the groups of that SIMD node, so residual adds and
    pooling stay next to the data. Others run on one array: the first input's, else the array
    with the least work."""
    acc: dict[tuple[str, int], int] = {}
    load: dict[int, int] = defaultdict(int)
    for p in placed:
        load[p.array] += p.req.bitplanes
        if p.req.copy == 0 and p.req.rt == 0:
            acc[(p.req.layer, p.req.ct)] = p.array
    n_arrays = max([p.array for p in placed], default=0) + 1
    idle = min(range(n_arrays), key=lambda a: (load[a], a))
    hosts: dict[str, tuple[tuple[int, int, int], ...]] = {}
    for name in nodes:
        if name in tilings:
            continue
        node = qgraph.node(name)
        src = node.inputs[0]
        channels = node.out.shape[0]
        groups: tuple[tuple[int, int, int], ...]
        if src in col_tiles and col_tiles[src][0] == 0 and len(tilings[src].col_tiles) == col_tiles[src][1]:
            tl = tilings[src]
            groups = _merge_groups([(acc[(src, ct)], *tl.col_tiles[ct]) for ct in range(*col_tiles[src])])
        elif src in hosts:
            groups = hosts[src]
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
    for p in placed:
        q = p.req
        if q.rt != 0:
            continue
        tl = tilings[q.layer]
        lo, hi = pixel_range(tl.pixels, q.copy, copies[q.layer])
        oc_lo, oc_hi = tl.col_tiles[q.ct]
        n = (oc_hi - oc_lo) * (hi - lo)
        simd[p.array] += n * (len(tl.row_tiles) - 1) + 2 * n
    for name, groups in hosts.items():
        total, channels = node_simd_ops(qgraph, name), qgraph.node(name).out.shape[0]
        for a, lo, hi in groups:
            simd[a] += total * (hi - lo) // channels
        node_ops[name] = max(total * (hi - lo) // channels for _, lo, hi in groups)
    work = PhaseWork(tiles=tuple(p.work() for p in placed), simd_ops=dict(simd), simd_node_ops=node_ops)
    return work, hosts


# --- copy search ------------------------------------------------------------------------------

def _score(est: PhaseEstimate, objective: str, chip: ChipConfig) -> tuple[float, float]:
    if objective == "latency":
        return est.latency_s, est.stage_time_s
    if objective == "energy":
        return est.energy_j + chip.energy.static_w * est.stage_time_s, est.stage_time_s
    return est.stage_time_s, est.latency_s


class Search:
    """The greedy copy search of one phase (see module doc)."""

    def __init__(self, qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig,
                 nodes: tuple[str, ...], col_tiles: dict[str, tuple[int, int]], objective: str):
        self.qgraph, self.tilings, self.chip = qgraph, tilings, chip
        self.nodes, self.col_tiles, self.objective = nodes, col_tiles, objective
        self.evaluations = 0

    def pack(self, copies: dict[str, int]) -> tuple[Placed, ...] | None:
        reqs = [r for layer, cts in self.col_tiles.items()
                for r in _requests(self.tilings[layer], cts, copies[layer])]
        orders = (lambda r: (-r.bitplanes, -r.rows * r.cols, r.layer, r.copy, r.ct, r.rt),
                  lambda r: (-r.cols, -r.rows, -r.bitplanes, r.layer, r.copy, r.ct, r.rt))
        best, best_score = None, None
        for order in orders:
            self.evaluations += 1
            packer = Packer(self.chip)
            if packer.place_all(sorted(reqs, key=order)):
                placed = consecutive_column_tiles(packer.placed())
                score = self.score(placed, copies)[0]
                if best_score is None or score < best_score:
                    best, best_score = placed, score
        return best

    def score(self, placed: tuple[Placed, ...], copies: dict[str, int]):
        work, _ = phase_work_of(self.qgraph, self.nodes, placed, self.tilings, self.col_tiles, copies)
        est = estimate_phase(work, self.chip)
        return _score(est, self.objective, self.chip), est

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

    def run(self, initial: tuple[Placed, ...]) -> tuple[dict[str, int], tuple[Placed, ...]]:
        copies = {layer: 1 for layer in self.col_tiles}
        placed = self.pack(copies) or initial
        score, est = self.score(placed, copies)
        improved = True
        while improved and self.evaluations < MAX_EVALUATIONS:
            improved = False
            for layer in self.candidates(placed, est):
                tl = self.tilings[layer]
                n = copies[layer]
                for extra in range(1, n + 1):
                    if n + extra > tl.pixels or self.evaluations >= MAX_EVALUATIONS:
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


def place_phase(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, objective: str, index: int,
                nodes: tuple[str, ...], cts: dict[str, tuple[int, int]]) -> PhasePlan:
    """Copies and packing of one phase computing ``nodes`` (MVM layers: column tiles ``cts``)."""
    search = Search(qgraph, tilings, chip, nodes, cts, objective)
    packer = Packer(chip)
    reqs = [r for layer, c in cts.items() for r in _requests(tilings[layer], c, 1)]
    initial = tuple(packer.placed()) if packer.place_all(reqs) else None
    if initial is None and search.pack({layer: 1 for layer in cts}) is None:
        raise CompileError(f"phase {index}: its tiles do not pack into {chip.n_cores} arrays (internal: "
                           f"the phase split and the packer disagree)")
    copies, placed = search.run(initial or ())
    _, hosts = phase_work_of(qgraph, nodes, placed, tilings, cts, copies)
    return PhasePlan(index=index, nodes=nodes, col_tiles=cts, copies=copies, placed=placed, hosts=hosts)


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
    """Phases with copies and packed tiles, chosen by ``objective`` with the performance model."""
    if objective not in OBJECTIVES:
        raise CompileError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    return [place_phase(qgraph, tilings, chip, objective, i, tuple(ph["nodes"]), dict(ph["col_tiles"]))
            for i, ph in enumerate(split_phases(qgraph, tilings, chip))]
