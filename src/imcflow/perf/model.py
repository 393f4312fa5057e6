"""The shared analytic performance model: what a mapping costs, per image, in steady state.

Both the compiler (to choose a mapping) and the simulator (to check its event-driven timing) use
it, so they agree on what a mapping costs. It is deliberately simple and documented:

- **Array time** of a core, per image: its tiles are grouped into time *slots* (tiles in one slot
  have disjoint row ranges and disjoint column ranges, so one bit-plane evaluation serves them all,
  e.g. block-diagonal copies); slots take turns. Time = sum over slots of the slot's largest
  ``bitplanes`` (output pixels of the tile's copy x input bits) x ``chip.bitplane_s``.
  :func:`slot_schedule` is the greedy grouping the compiler emits in ``TileSlot.slot``.
- **SIMD time** of a core, per image: its SIMD lane operations / ``simd.lanes`` x
  ``simd.cycles_per_op`` digital cycles (partial-sum adds, requantisation, pooling, residual adds).
  The BPBS shift-add keeps pace with the ADCs by design (chip.md) and is not a bound.
  A core's array and SIMD work in parallel: core time = max(array time, SIMD time).
- **Stage time** of a phase = max over cores of core time, and over the additional bounds: each
  stream's bits / ``ocn.track_bits`` cycles (one track per stream), the input port's bits /
  ``io.in_bits_per_cycle`` and the output port's bits / ``io.out_bits_per_cycle``. Pipeline
  throughput of the phase = 1 / stage time.
- **Weight load time** of a phase = max(bus bits / ``weight_load.bus_bits``, largest per-core tile
  bits / ``weight_load.array_write_bits_per_cycle``) cycles (the bus is shared, arrays are written
  in parallel). Bus bits = the bits of every tile, except that with
  ``weight_load.broadcast_copies`` tiles holding the same weights (copies of one layer: same
  layer, row tile and output channels, :attr:`TileWork.weight_key`) cross the bus once and are
  written into all their arrays together. Loading is not overlapped with compute (conservative:
  the simulator may start loading a core once it has finished the previous phase).
- **Per-image time** of a program with batch B: one phase, weights resident:
  stage time; several phases: sum over phases of (load time / B + stage time + fill / B), where
  the fill (pipeline latency of the phase, below) is paid once per batch.
- **Latency** of one image through a phase = sum over its MVM layers of the layer's time (on each
  core, the layer's tiles in one slot run together and its slots take turns; the slowest core
  counts: :func:`layer_latency_s`; layers of one image run one after another) plus its SIMD-only
  nodes; program latency =
  sum over phases of (load time + latency) (batch 1; one-phase programs: weights already loaded).
- **Partial-sum spill**: a layer whose row tiles are summed over several phases sends its
  accumulators to off-chip memory as streams to ``OUT_PORT`` and reads them back from ``IN_PORT``,
  so they count in the ports' bits and in the off-chip energy like any other port stream.
- **Energy** per image = column evaluations x ``column_eval_j`` + SIMD ops x ``simd_op_j`` + OCN
  bits x hops x ``ocn_bit_hop_j`` + off-chip bits x ``offchip_bit_j`` + weight bits loaded / B x
  ``weight_write_bit_j`` (multi-phase only) + ``static_w`` x per-image time.

Not modelled: buffer capacities, instruction memory size, contention of streams inside a
switch beyond track counts.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from imcflow.config.chip import ChipConfig
from imcflow.ir.program import IN_PORT, OUT_PORT, InstrKind, Phase, Program
from imcflow.ir.qgraph import QGraph, simd_lane_ops


@dataclass(frozen=True)
class TileWork:
    """One weight tile's place and per-image work (everything the model needs from a TileSlot)."""

    layer: str
    core: int
    row_offset: int
    rows: int
    col_offset: int
    cols: int
    bitplanes: int
    """Bit-plane evaluations per image: output pixels of the tile's copy x input bits."""
    weight_key: tuple = ()
    """Identity of the weights held (e.g. (layer, row tile, oc_lo, oc_hi)): tiles with the same
    non-empty key hold the same weights (copies) and share one bus transfer when
    ``weight_load.broadcast_copies``; an empty key is unique."""

    @property
    def weight_bits(self) -> int:
        return self.rows * self.cols

    @property
    def column_evals(self) -> int:
        """Column bit-plane evaluations per image (each used column, every bit-plane)."""
        return self.cols * self.bitplanes


@dataclass(frozen=True)
class StreamWork:
    """One stream's per-image traffic."""

    bits: int
    links: int
    """Channels its route tree uses."""
    src: int
    dsts: tuple[int, ...]


@dataclass(frozen=True)
class PhaseWork:
    """Everything the model needs to cost one phase."""

    tiles: tuple[TileWork, ...]
    simd_ops: dict[int, int] = field(default_factory=dict)
    """Core -> SIMD lane operations per image."""
    simd_node_ops: dict[str, int] = field(default_factory=dict)
    """SIMD-only node -> lane operations per image (for latency)."""
    streams: tuple[StreamWork, ...] = ()


@dataclass(frozen=True)
class PhaseEstimate:
    """Model figures for one phase (seconds per image unless named otherwise)."""

    stage_time_s: float
    bottleneck: str
    """What sets the stage time: 'core N array', 'core N simd', 'stream', 'io in', 'io out'."""
    core_array_s: dict[int, float]
    core_simd_s: dict[int, float]
    stream_s: float
    io_in_s: float
    io_out_s: float
    load_time_s: float
    """Weight loading, once per phase pass."""
    latency_s: float
    """One image through the phase, weights already loaded."""
    energy_j: float
    """Per image, without weight loading."""
    load_energy_j: float
    """Per phase pass (divide by the batch)."""


@dataclass(frozen=True)
class ProgramEstimate:
    """Model figures for a whole program."""

    phases: tuple[PhaseEstimate, ...]
    batch: int
    time_per_image_s: float
    throughput_img_s: float
    latency_s: float
    energy_per_image_j: float
    load_fraction: float
    """Share of the total time spent loading weights (0 for one phase)."""

    def as_dict(self) -> dict[str, float]:
        """Flat figures for ``Program.predicted``."""
        return {"throughput_img_s": self.throughput_img_s, "time_per_image_s": self.time_per_image_s,
                "latency_s": self.latency_s, "energy_per_image_j": self.energy_per_image_j,
                "load_fraction": self.load_fraction,
                "stage_time_s": max(p.stage_time_s for p in self.phases),
                "load_time_s": sum(p.load_time_s for p in self.phases)}


def _disjoint(a: TileWork, b: TileWork) -> bool:
    rows = a.row_offset + a.rows <= b.row_offset or b.row_offset + b.rows <= a.row_offset
    cols = a.col_offset + a.cols <= b.col_offset or b.col_offset + b.cols <= a.col_offset
    return rows and cols


def slot_schedule(tiles: list[TileWork] | tuple[TileWork, ...]) -> list[int]:
    """Greedy slots for the tiles of ONE core: largest work first, each into the first slot whose
    tiles are all disjoint from it (rows and columns). Returns one slot index per tile (input order)."""
    order = sorted(range(len(tiles)), key=lambda i: (-tiles[i].bitplanes, i))
    slots: list[list[int]] = []
    result = [0] * len(tiles)
    for i in order:
        for s, members in enumerate(slots):
            if all(_disjoint(tiles[i], tiles[j]) for j in members):
                members.append(i)
                result[i] = s
                break
        else:
            slots.append([i])
            result[i] = len(slots) - 1
    return result


def array_time_s(tiles: list[TileWork] | tuple[TileWork, ...], chip: ChipConfig,
                 slots: list[int] | None = None) -> float:
    """Per-image array time of one core hosting ``tiles`` (see module doc)."""
    if not tiles:
        return 0.0
    slots = slot_schedule(tiles) if slots is None else slots
    longest: dict[int, int] = defaultdict(int)
    for t, s in zip(tiles, slots):
        longest[s] = max(longest[s], t.bitplanes)
    return sum(longest.values()) * chip.bitplane_s


def bus_bits(tiles: tuple[TileWork, ...] | list[TileWork], chip: ChipConfig) -> int:
    """Bits the weight bus carries to load ``tiles`` (copies once with ``broadcast_copies``)."""
    if not chip.weight_load.broadcast_copies:
        return sum(t.weight_bits for t in tiles)
    seen: set[tuple] = set()
    total = 0
    for t in tiles:
        if t.weight_key:
            if t.weight_key in seen:
                continue
            seen.add(t.weight_key)
        total += t.weight_bits
    return total


def layer_latency_s(by_core: dict[int, list[TileWork]], chip: ChipConfig) -> dict[str, float]:
    """Per layer: the time one image spends in it. On each core, the layer's tiles in one slot run
    together and its slots take turns (copies sharing an array add up); cores run in parallel."""
    out: dict[str, float] = defaultdict(float)
    for tiles in by_core.values():
        longest: dict[tuple[str, int], int] = defaultdict(int)
        for t, s in zip(tiles, slot_schedule(tiles)):
            longest[(t.layer, s)] = max(longest[(t.layer, s)], t.bitplanes)
        per_layer: dict[str, int] = defaultdict(int)
        for (layer, _), n in longest.items():
            per_layer[layer] += n
        for layer, n in per_layer.items():
            out[layer] = max(out[layer], n * chip.bitplane_s)
    return out


def load_time_s(tiles: tuple[TileWork, ...] | list[TileWork], chip: ChipConfig) -> float:
    """Weight load time of a phase holding ``tiles``."""
    if not tiles:
        return 0.0
    per_core: dict[int, int] = defaultdict(int)
    for t in tiles:
        per_core[t.core] += t.weight_bits
    cycles = max(bus_bits(tiles, chip) / chip.weight_load.bus_bits,
                 max(per_core.values()) / chip.weight_load.array_write_bits_per_cycle)
    return cycles / chip.clock.digital_hz


def simd_time_s(ops: int, chip: ChipConfig) -> float:
    """Time for ``ops`` SIMD lane operations on one core."""
    return ops / chip.simd.lanes * chip.simd.cycles_per_op / chip.clock.digital_hz


def estimate_phase(work: PhaseWork, chip: ChipConfig) -> PhaseEstimate:
    """Cost one phase (see module doc)."""
    by_core: dict[int, list[TileWork]] = defaultdict(list)
    for t in work.tiles:
        by_core[t.core].append(t)
    arr = {c: array_time_s(ts, chip) for c, ts in by_core.items()}
    simd = {c: simd_time_s(n, chip) for c, n in work.simd_ops.items()}
    cyc = 1.0 / chip.clock.digital_hz
    stream_s = max((s.bits / chip.ocn.track_bits * cyc for s in work.streams), default=0.0)
    io_in = sum(s.bits for s in work.streams if s.src == IN_PORT) / chip.io.in_bits_per_cycle * cyc
    io_out = sum(s.bits for s in work.streams if OUT_PORT in s.dsts) / chip.io.out_bits_per_cycle * cyc
    bounds = [(v, f"core {c} array") for c, v in arr.items()] + [(v, f"core {c} simd") for c, v in simd.items()]
    bounds += [(stream_s, "stream"), (io_in, "io in"), (io_out, "io out")]
    stage, what = max(bounds, key=lambda b: b[0])
    latency = sum(layer_latency_s(by_core, chip).values()) + sum(simd_time_s(n, chip)
                                                                 for n in work.simd_node_ops.values())
    e = chip.energy
    energy = (sum(t.column_evals for t in work.tiles) * e.column_eval_j
              + sum(work.simd_ops.values()) * e.simd_op_j
              + sum(s.bits * s.links for s in work.streams) * e.ocn_bit_hop_j
              + (sum(s.bits for s in work.streams if s.src == IN_PORT or OUT_PORT in s.dsts)) * e.offchip_bit_j)
    load_e = (sum(t.weight_bits for t in work.tiles) * e.weight_write_bit_j
              + bus_bits(work.tiles, chip) * e.offchip_bit_j)
    return PhaseEstimate(stage_time_s=stage, bottleneck=what, core_array_s=arr, core_simd_s=simd,
                         stream_s=stream_s, io_in_s=io_in, io_out_s=io_out,
                         load_time_s=load_time_s(work.tiles, chip), latency_s=latency,
                         energy_j=energy, load_energy_j=load_e)


def combine(phases: list[PhaseEstimate] | tuple[PhaseEstimate, ...], batch: int, chip: ChipConfig) -> ProgramEstimate:
    """Program figures from phase estimates at batch ``batch`` (see module doc)."""
    phases = tuple(phases)
    if len(phases) == 1:
        p = phases[0]
        t = p.stage_time_s
        return ProgramEstimate(phases=phases, batch=batch, time_per_image_s=t, throughput_img_s=1.0 / t if t else 0.0,
                               latency_s=p.latency_s, energy_per_image_j=p.energy_j + chip.energy.static_w * t,
                               load_fraction=0.0)
    load = sum(p.load_time_s for p in phases)
    run = sum(p.stage_time_s for p in phases)
    fill = sum(p.latency_s for p in phases)
    t = (load + fill) / batch + run
    energy = sum(p.energy_j + p.load_energy_j / batch for p in phases) + chip.energy.static_w * t
    return ProgramEstimate(phases=phases, batch=batch, time_per_image_s=t, throughput_img_s=1.0 / t if t else 0.0,
                           latency_s=load + fill, energy_per_image_j=energy, load_fraction=load / (batch * t))


# --- from a Program -------------------------------------------------------------------------

def _bitplanes(program: Program, phase: Phase) -> dict[int, int]:
    """tile_id -> bit-planes per image, from the MVM instructions."""
    out: dict[int, int] = defaultdict(int)
    for cp in phase.cores:
        for task in cp.tasks:
            for ins in task.instrs:
                if ins.op == InstrKind.MVM:
                    out[ins.tile] += (ins.px_hi - ins.px_lo) * ins.x_bits
    return out


def simd_ops_of(ins, qgraph: QGraph) -> int:
    """SIMD lane operations per image of one instruction (0 for non-SIMD instructions)."""
    n = (ins.oc_hi - ins.oc_lo) * (ins.px_hi - ins.px_lo)
    if ins.op == InstrKind.ACCUMULATE:
        return n * (ins.n_parts - 1 + (ins.row_tile > 0))   # plus a spilled sum read back
    if ins.op == InstrKind.REQUANT:
        return qgraph.node(ins.layer).requant.lane_ops * n
    if ins.op in (InstrKind.MAXPOOL, InstrKind.AVGPOOL, InstrKind.GLOBAL_AVGPOOL, InstrKind.ADD, InstrKind.UPSAMPLE,
                  InstrKind.DEPTH_TO_SPACE):
        channels = qgraph.node(ins.layer).out.shape[0]
        return node_simd_ops(qgraph, ins.layer) * (ins.oc_hi - ins.oc_lo) // channels
    return 0


def node_simd_ops(qgraph: QGraph, name: str) -> int:
    """Lane operations per image of a SIMD-only node (see :func:`imcflow.ir.qgraph.simd_lane_ops`)."""
    return simd_lane_ops(qgraph, name)


def phase_work(program: Program, phase: Phase) -> PhaseWork:
    """The model's view of one phase of a compiled Program."""
    bp = _bitplanes(program, phase)
    tiles = tuple(TileWork(layer=t.layer, core=t.core, row_offset=t.row_offset, rows=t.rows,
                           col_offset=t.col_offset, cols=t.cols, bitplanes=bp.get(t.tile_id, 0),
                           weight_key=(t.layer, t.row_tile, t.oc_lo, t.oc_hi))
                  for t in phase.tiles)
    simd: dict[int, int] = defaultdict(int)
    node_ops: dict[str, int] = {}
    for cp in phase.cores:
        for task in cp.tasks:
            for ins in task.instrs:
                n = simd_ops_of(ins, program.qgraph)
                simd[cp.core] += n
                if ins.op not in (InstrKind.ACCUMULATE, InstrKind.REQUANT) and n:
                    node_ops[ins.layer] = max(node_ops.get(ins.layer, 0), n)
    links = {r.stream_id: len(r.edges) for r in phase.routes}
    streams = tuple(StreamWork(bits=s.bits, links=links.get(s.stream_id, 0), src=s.src, dsts=s.dsts)
                    for s in phase.streams)
    return PhaseWork(tiles=tiles, simd_ops=dict(simd), simd_node_ops=node_ops, streams=streams)


def estimate_program(program: Program, batch: int | None = None) -> ProgramEstimate:
    """Model figures of a compiled Program (at its own batch unless ``batch`` is given)."""
    est = [estimate_phase(phase_work(program, ph), program.chip) for ph in program.phases]
    return combine(est, program.batch if batch is None else batch, program.chip)
