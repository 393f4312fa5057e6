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
from imcflow.ir.qgraph import QGraph
from imcflow.perf.model import PhaseEstimate, PhaseWork, estimate_phase, node_simd_ops

OBJECTIVES = ("throughput", "latency", "energy")
MAX_EVALUATIONS = 400
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
    hosts: dict[str, int]
    """SIMD-only node -> logical array whose SIMD computes it."""

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

def simd_hosts(qgraph: QGraph, nodes: tuple[str, ...], placed: tuple[Placed, ...],
               tilings: dict[str, LayerTiling], col_tiles: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Host array of each SIMD-only node: where its first input is produced in this phase (the
    accumulating array of that layer's copy 0, first column tile, or that node's host); else the
    array with the least work."""
    acc = {}
    load: dict[int, int] = defaultdict(int)
    for p in placed:
        load[p.array] += p.req.bitplanes
        if p.req.copy == 0 and p.req.rt == 0 and p.req.layer not in acc and p.req.ct == col_tiles[p.req.layer][0]:
            acc[p.req.layer] = p.array
    hosts: dict[str, int] = {}
    n_arrays = max([p.array for p in placed], default=0) + 1
    idle = min(range(n_arrays), key=lambda a: (load[a], a))
    for name in nodes:
        if name in tilings:
            continue
        src = qgraph.node(name).inputs[0]
        hosts[name] = acc.get(src, hosts.get(src, idle))
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
    for name, a in hosts.items():
        node_ops[name] = node_simd_ops(qgraph, name)
        simd[a] += node_ops[name]
    work = PhaseWork(tiles=tuple(p.work() for p in placed), simd_ops=dict(simd), simd_node_ops=node_ops)
    return work, hosts


# --- copy search ------------------------------------------------------------------------------

def _score(est: PhaseEstimate, objective: str, chip: ChipConfig) -> tuple[float, float]:
    if objective == "latency":
        return est.latency_s, est.stage_time_s
    if objective == "energy":
        return est.energy_j + chip.energy.static_w * est.stage_time_s, est.stage_time_s
    return est.stage_time_s, est.latency_s


class _Search:
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
                placed = tuple(packer.placed())
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


def place(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, objective: str) -> list[PhasePlan]:
    """Phases with copies and packed tiles, chosen by ``objective`` with the performance model."""
    if objective not in OBJECTIVES:
        raise CompileError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    plans = []
    for i, ph in enumerate(split_phases(qgraph, tilings, chip)):
        nodes, cts = tuple(ph["nodes"]), dict(ph["col_tiles"])
        search = _Search(qgraph, tilings, chip, nodes, cts, objective)
        packer = Packer(chip)
        reqs = [r for layer, c in cts.items() for r in _requests(tilings[layer], c, 1)]
        initial = tuple(packer.placed()) if packer.place_all(reqs) else None
        if initial is None and search.pack({layer: 1 for layer in cts}) is None:
            raise CompileError(f"phase {i}: its tiles do not pack into {chip.n_cores} arrays (internal: "
                               f"the phase split and the packer disagree)")
        copies, placed = search.run(initial or ())
        _, hosts = phase_work_of(qgraph, nodes, placed, tilings, cts, copies)
        plans.append(PhasePlan(index=i, nodes=nodes, col_tiles=cts, copies=copies, placed=placed, hosts=hosts))
    return plans
