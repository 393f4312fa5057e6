"""Program: a QGraph mapped onto a chip: tiles, placement, routes, per-core instructions, phases.

The compiler (:mod:`imcflow.compiler`) writes a Program; the simulator executes it standalone: the
Program carries the :class:`~imcflow.ir.qgraph.QGraph` (weights, requantisation) and the
:class:`~imcflow.config.chip.ChipConfig` it was compiled for.

Semantics (the contract between compiler and simulator)
=======================================================

Changes since the first version (all backward compatible: every older Program keeps its meaning):

- *Weight broadcast* (``chip.weight_load.broadcast_copies``, default True): tiles of one phase that
  hold the same weights (same ``layer``, ``row_tile``, ``oc_lo``, ``oc_hi``: copies of a layer)
  are loaded by ONE transfer over the weight bus, written into all their arrays at once. Bus time
  therefore counts each distinct weight block once; every array still writes its own tiles at
  ``array_write_bits_per_cycle``. With False, every tile is its own bus transfer (as before).
- A stream may carry several column tiles of one layer copy at once (``oc_lo..oc_hi`` spanning
  them); its source SENDs it after the REQUANT of its last column tile.
- The destinations of a stream of activations are only the cores that need its pixels: an MVM
  copy receives the pieces that overlap the input rows of its output pixels' receptive fields.
- *Partial-sum spill*: a phase may hold only a group of row tiles ``[rt_lo, rt_hi)`` of a layer
  (:class:`LayerCopy`), when a column tile's row tiles do not fit the chip at once. The groups of
  one column tile run in consecutive phases, in row-tile order. A non-final group's accumulator
  (the sum of the partial sums of row tiles ``0 .. rt_hi-1``, exact integers) leaves the chip by an
  ``ACC`` stream to :data:`OUT_PORT`; the next group's phase reads it back by an ``ACC`` stream
  from :data:`IN_PORT` and its ACCUMULATE adds it to its own row tiles' sums; only the last group
  REQUANTs. Older Programs have every row tile in one phase (``rt_lo = rt_hi = 0`` means all).

Cores and switches
    Core ``i`` sits at grid position ``(i // chip.grid_cols, i % chip.grid_cols)`` and owns the
    switch at that position. Neighbouring switches (same row, adjacent columns, or same column,
    adjacent rows) are joined by a *channel* of ``chip.ocn.tracks_per_channel`` tracks. A stream
    occupies one track on every channel its route uses (in either direction: a channel's capacity
    counts streams in both directions together); a track carries ``ocn.track_bits`` bits per
    digital cycle and each switch hop costs ``ocn.hop_cycles``. Two off-chip ports exist:
    :data:`IN_PORT` (activations from off-chip memory) attaches to every switch of the grid's west
    edge (grid column 0) and :data:`OUT_PORT` (activations to off-chip memory) to every switch of
    the east edge (column ``grid_cols - 1``). A route enters from the input port with an edge
    ``(IN_PORT, s)`` (s on the west edge) and leaves to the output port with an edge
    ``(s, OUT_PORT)`` (s on the east edge). Port edges are not track-limited; the ports' bandwidth
    is ``chip.io.in_bits_per_cycle`` / ``out_bits_per_cycle``, shared by all streams through a port.

Phases and batch
    A Program is a sequence of :class:`Phase`. A phase first loads its tiles' weights (every
    :class:`TileSlot` of the phase; weights come over the ``weight_load.bus_bits`` bus, copies of
    one weight block once when ``weight_load.broadcast_copies``, and each array is written
    ``weight_load.array_write_bits_per_cycle`` bits per cycle), then streams
    ``Program.batch`` images through its tasks, then the next phase starts. Activations that a
    later phase (or the user) needs leave through :data:`OUT_PORT` and come back through
    :data:`IN_PORT` (off-chip memory holds them between phases). A network that fits runs in one
    phase whose weights stay resident: every image of every batch uses them.

Tiles (weights in arrays)
    An MVM layer (``QOp.CONV``/``QOp.LINEAR``) with weight ``W`` of shape (c_out, c_in, kh, kw) is a
    logical matrix with rows in ``W.reshape(c_out, -1)`` order. Its *row tiles* are exactly
    :func:`imcflow.ir.qgraph.row_tiles` ``(c_in, kh, kw, chip.array.rows)`` (input-channel groups
    ``[ch_lo, ch_hi)``; ``row_tile`` is the index into that list); its *column tiles* are groups of
    output channels ``[oc_lo, oc_hi)`` of at most ``chip.array.cols // w_bits`` channels. A
    :class:`TileSlot` puts the block ``W[oc_lo:oc_hi, ch_lo:ch_hi].reshape(oc_hi-oc_lo, -1).T``
    (``rows`` x ``oc_hi-oc_lo``) into the array of core ``core``: logical row ``i`` at array row
    ``row_offset + i``; output channel ``oc_lo + j``, weight bit ``b`` (LSB first, two's
    complement) at array column ``col_offset + j*w_bits + b``. Within a phase no two tiles on one
    core overlap (cells are distinct).

Copies (data parallelism)
    A layer may have ``n_copies`` copies in a phase (:class:`LayerCopy`). Each copy holds every
    (row tile, column tile) of the part of the layer the phase computes, and computes the output
    pixels ``[px_lo, px_hi)`` (row-major index ``y*W_out + x`` over the output map; a LINEAR layer
    has one pixel). Copies' pixel ranges are disjoint, contiguous and cover every output pixel.

Concurrency in one array
    Two tiles on one core may be evaluated in the same bit-plane (simultaneously) only when their
    row ranges *and* their column ranges are disjoint (e.g. block-diagonal copies). Otherwise they
    take turns. ``TileSlot.slot`` is the compiler's static schedule: tiles with the same slot on one
    core never conflict, slots take turns; the performance model charges a core
    ``sum over slots of max over its tiles of (pixels x x_bits x chip.bitplane_s)`` per image.

Tasks and instructions
    ``CoreProgram.loads`` are the LOAD instructions run at the start of the phase (one per tile of
    this core). ``CoreProgram.tasks`` are independent per-image threads: the core runs every task
    once per image of the batch, images in order within a task; tasks run concurrently and share
    the core's array (see above) and SIMD. A task's instructions run in order; RECV blocks until
    the stream's data for that image has arrived. Functional meaning (all integers, bit-true):

    ``LOAD tile``: write tile ``tile``'s weights into the array (see Tiles). With
        ``weight_load.broadcast_copies``, the LOADs of tiles holding the same weights (copies) on
        different cores share one bus transfer.
    ``RECV stream``: the piece of tensor carried by stream ``stream`` is now in this core's buffer.
    ``MVM``: for layer ``layer``, copy ``copy``, row tile ``row_tile`` (input channels
        ``[ch_lo, ch_hi)``), output channels ``[oc_lo, oc_hi)`` and output pixels ``[px_lo, px_hi)``:
        build each pixel's receptive field from the layer's input tensor (padding, stride of the
        QNode), restricted to the row tile's channels, and compute the row tile's accumulator as the
        reference executor does (``imcflow.cima.mvm`` with ``x_bits``, ``w_bits``,
        ``adc_full_scale_rows``). The result is the partial sum (layer, row_tile, oc range, px range).
        Needs the input tensor's channels ``[ch_lo, ch_hi)`` at every pixel of the receptive fields.
    ``ACCUMULATE``: add the partial sums of row tiles ``r0 .. r0+n_parts-1`` of (layer, oc range,
        px range) in the SIMD, ``r0 = max(0, row_tile)`` (the other row tiles' sums arrive by RECV
        of PSUM streams); when ``r0 > 0`` also add the spilled accumulator of row tiles
        ``0 .. r0-1`` (received by an ACC stream from IN_PORT). The result is the accumulator of
        (layer, oc range, px range). A layer with one row tile has no ACCUMULATE: its only partial
        sum is the accumulator.
    ``REQUANT``: apply the layer's :class:`~imcflow.ir.qgraph.Requant` to the accumulator of
        (layer, oc range, px range): the result is that piece of the layer's output tensor.
    ``MAXPOOL``/``AVGPOOL``/``GLOBAL_AVGPOOL``/``ADD``/``FLATTEN``/``CONCAT``/``UPSAMPLE``/``DEPTH_TO_SPACE``: compute output
        channels ``[oc_lo, oc_hi)`` (all pixels; ``px_lo, px_hi`` span the whole output map) of QGraph
        node ``layer`` from the same channels of its input tensors, which this core holds (received
        or produced here). Pooling, UPSAMPLE and ADD work channel by channel, so a node may be split over
        several cores by channel groups (one task each); FLATTEN, CONCAT and DEPTH_TO_SPACE
        (:data:`CHANNEL_MIXING`) always cover all channels (and then need every channel of their inputs).
    ``SEND stream``: send the piece named by stream ``stream`` (it must be held by this core).

Streams
    A :class:`Stream` carries, once per image, a piece of one tensor: ``tensor`` (a QGraph node
    name or the graph input), channels ``[oc_lo, oc_hi)`` and pixels ``[px_lo, px_hi)`` (``ACT``:
    activations after REQUANT or a SIMD op; ``PSUM``: integer accumulators of row tile
    ``row_tile`` of layer ``tensor``, sent to the core that ACCUMULATEs; ``ACC``: the running
    accumulator of layer ``tensor``, the sum over row tiles ``0 .. row_tile-1``, spilled from the
    accumulating core to OUT_PORT, or read back from IN_PORT by the core that accumulates the next
    row-tile group; ``bits`` = channels x pixels x the partial-sum width the compiler chose,
    enough bits for the layer's worst-case sum). ``src`` is a core or
    :data:`IN_PORT`; ``dsts`` are cores and/or :data:`OUT_PORT`. A core that produces a piece
    needs no stream to use it itself. A :class:`Route` is a tree of directed edges between
    neighbouring switches (plus port edges, see above) rooted at the source (its core's switch, or
    IN_PORT) and reaching every destination (a core's switch, or OUT_PORT); forks are allowed.

Everything is a frozen dataclass; :meth:`Program.to_json`/:meth:`Program.from_json` round-trip to
an equal Program and :meth:`Program.verify` checks the invariants above.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from imcflow.config import chip as chip_mod
from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError
from imcflow.ir.qgraph import QGraph, QOp, graphs_equal, row_tiles
from imcflow.ir.serialize import decode, encode, load_json_object, read_json_file

IN_PORT = -1
"""Endpoint id of the off-chip input port (attached to every west-edge switch)."""
OUT_PORT = -2
"""Endpoint id of the off-chip output port (attached to every east-edge switch)."""

SIMD_OPS = (QOp.MAXPOOL, QOp.AVGPOOL, QOp.GLOBAL_AVGPOOL, QOp.ADD, QOp.FLATTEN, QOp.CONCAT, QOp.UPSAMPLE,
            QOp.DEPTH_TO_SPACE)

CHANNEL_MIXING = (QOp.FLATTEN, QOp.CONCAT, QOp.DEPTH_TO_SPACE)
"""SIMD ops whose output channels read other input channels (a depth-to-space output channel reads
r*r input channels): one task computes all channels from every channel of the inputs."""


class InstrKind(str, enum.Enum):
    """Instruction opcodes (see the module docstring for their meaning)."""

    LOAD = "load"
    RECV = "recv"
    MVM = "mvm"
    ACCUMULATE = "accumulate"
    REQUANT = "requant"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    ADD = "add"
    FLATTEN = "flatten"
    CONCAT = "concat"
    UPSAMPLE = "upsample"
    DEPTH_TO_SPACE = "depth_to_space"
    SEND = "send"


class StreamKind(str, enum.Enum):
    """What a stream carries."""

    ACT = "act"
    """Integer activations (a piece of a node's output or of the graph input)."""
    PSUM = "psum"
    """Integer partial sums of one row tile, to the core that accumulates them."""
    ACC = "acc"
    """A spilled running accumulator (sum of row tiles ``0 .. row_tile-1``), to or from off-chip memory."""


@dataclass(frozen=True)
class TileSlot:
    """One weight tile in one array (see "Tiles" in the module docstring)."""

    tile_id: int
    """Unique within the phase; LOAD and MVM instructions name it."""
    layer: str
    copy: int
    row_tile: int
    ch_lo: int
    ch_hi: int
    oc_lo: int
    oc_hi: int
    core: int
    row_offset: int
    col_offset: int
    rows: int
    """Array rows used: (ch_hi - ch_lo) * kh * kw."""
    cols: int
    """Array columns used: (oc_hi - oc_lo) * w_bits."""
    slot: int = 0
    """Static time slot on this core: equal slots never conflict and run simultaneously."""

    @property
    def weight_bits(self) -> int:
        """Bits written into the array when this tile is loaded."""
        return self.rows * self.cols


@dataclass(frozen=True)
class LayerCopy:
    """One copy of a layer (or of its part computed in this phase): which output pixels it makes."""

    layer: str
    copy: int
    n_copies: int
    px_lo: int
    px_hi: int
    oc_lo: int
    oc_hi: int
    """Output channels of the layer computed in this phase (all copies compute the same range)."""
    rt_lo: int = 0
    rt_hi: int = 0
    """Row tiles ``[rt_lo, rt_hi)`` held in this phase (a partial-sum spill group when not all of
    them); ``rt_hi = 0``: every row tile (Programs written before partial-sum spill)."""

    def row_group(self, n_row_tiles: int) -> tuple[int, int]:
        """Row tiles ``[lo, hi)`` held in this phase, for a layer of ``n_row_tiles`` row tiles."""
        return (self.rt_lo, self.rt_hi) if self.rt_hi > 0 else (0, n_row_tiles)


@dataclass(frozen=True)
class Instr:
    """One instruction. Fields unused by an opcode keep their defaults."""

    op: InstrKind
    layer: str = ""
    """QGraph node name (MVM, ACCUMULATE, REQUANT, SIMD ops) or the tile's layer (LOAD)."""
    tile: int = -1
    """TileSlot.tile_id (LOAD, MVM)."""
    copy: int = 0
    row_tile: int = -1
    ch_lo: int = 0
    ch_hi: int = 0
    oc_lo: int = 0
    oc_hi: int = 0
    px_lo: int = 0
    px_hi: int = 0
    x_bits: int = 0
    x_signed: bool = False
    w_bits: int = 0
    adc_full_scale_rows: int = 0
    n_parts: int = 0
    """ACCUMULATE: number of row tiles summed (from ``row_tile``, or 0 when it is -1)."""
    stream: int = -1
    """Stream id (SEND, RECV)."""

    def __str__(self) -> str:
        op = self.op
        if op == InstrKind.LOAD:
            return f"LOAD tile{self.tile} ({self.layer})"
        if op in (InstrKind.SEND, InstrKind.RECV):
            return f"{op.name} s{self.stream}"
        rng = f"oc[{self.oc_lo}:{self.oc_hi}] px[{self.px_lo}:{self.px_hi}]"
        if op == InstrKind.MVM:
            return (f"MVM {self.layer}#{self.copy} rt{self.row_tile} ch[{self.ch_lo}:{self.ch_hi}] {rng} "
                    f"x{self.x_bits}{'s' if self.x_signed else 'u'} w{self.w_bits} fs{self.adc_full_scale_rows} "
                    f"tile{self.tile}")
        if op == InstrKind.ACCUMULATE:
            first = max(0, self.row_tile)
            carried = f" from rt{first} + spilled sum of rt[0:{first}]" if first > 0 else ""
            return f"ACCUMULATE {self.layer}#{self.copy} {self.n_parts} parts{carried} {rng}"
        if op == InstrKind.REQUANT:
            return f"REQUANT {self.layer}#{self.copy} {rng}"
        return f"{op.name} {self.layer} oc[{self.oc_lo}:{self.oc_hi}]"


@dataclass(frozen=True)
class Task:
    """A per-image thread of one core: the work of one node (copy) on this core."""

    name: str
    instrs: tuple[Instr, ...]


@dataclass(frozen=True)
class CoreProgram:
    """What one core does in one phase."""

    core: int
    loads: tuple[Instr, ...]
    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Stream:
    """A per-image transfer of a tensor piece from one endpoint to one or more (see module doc)."""

    stream_id: int
    kind: StreamKind
    tensor: str
    src: int
    dsts: tuple[int, ...]
    oc_lo: int
    oc_hi: int
    px_lo: int
    px_hi: int
    bits: int
    """Bits per image."""
    row_tile: int = -1
    """PSUM: the row tile whose partial sums this stream carries; ACC: the number of row tiles
    summed in the accumulator it carries."""
    copy: int = 0
    """PSUM and ACC: the layer copy."""

    @property
    def core_key(self) -> object:
        """What the stream's data is in a core's memory: a tensor, a row tile's partial sums, or a
        layer's accumulator (the simulator's functional store and its timing both key by it)."""
        if self.kind == StreamKind.PSUM:
            return ("psum", self.tensor, self.row_tile)
        return ("acc", self.tensor) if self.kind == StreamKind.ACC else self.tensor

    @property
    def offchip_key(self) -> object:
        """What the stream's data is in off-chip memory: a tensor, or a spilled accumulator by the
        number of row tiles it sums."""
        return ("acc", self.tensor, self.row_tile) if self.kind == StreamKind.ACC else self.tensor


@dataclass(frozen=True)
class Route:
    """The tree of one stream: directed edges (from, to) between adjacent switches (named by their
    core ids), plus ``(IN_PORT, west-edge switch)`` and ``(east-edge switch, OUT_PORT)`` port edges."""

    stream_id: int
    edges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Phase:
    """Weights resident together, and the work done with them on a batch of images."""

    index: int
    nodes: tuple[str, ...]
    """QGraph nodes (wholly or partly) computed in this phase, in graph order."""
    copies: tuple[LayerCopy, ...]
    tiles: tuple[TileSlot, ...]
    cores: tuple[CoreProgram, ...]
    streams: tuple[Stream, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True, eq=False)
class Program:
    """A compiled network: the QGraph, the chip, and the phases that run it."""

    name: str
    qgraph: QGraph
    chip: ChipConfig
    phases: tuple[Phase, ...]
    batch: int
    """Images streamed through each phase before the next phase's weights are loaded."""
    batch_reason: str
    objective: str
    """Objective the compiler optimised: throughput, latency or energy."""
    predicted: dict[str, float] = field(default_factory=dict)
    """Performance-model figures at compile time (see :mod:`imcflow.perf.model`), e.g.
    ``throughput_img_s``, ``latency_s``, ``stage_time_s``."""
    mapping_notes: tuple[str, ...] = ()
    """What the compiler gave up to route the phases (copies cut, a phase split), in words."""

    # --- equality and JSON ------------------------------------------------------------------
    def _fields_without_graph(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "qgraph")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Program):
            return NotImplemented
        return self._fields_without_graph() == other._fields_without_graph() and graphs_equal(self.qgraph, other.qgraph)

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> str:
        """JSON text; the QGraph and ChipConfig are embedded."""
        return json.dumps(encode(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str, where: str = "Program JSON") -> "Program":
        """Decode :meth:`to_json` text; CompileError naming ``where`` if it is not a Program."""
        return load_json_object(text, "Program", CompileError, where,
                                "give a file written by 'imcflow compile -o'", _decode_program)

    def save(self, path: str) -> None:
        """Write :meth:`to_json` to ``path``."""
        with open(path, "w") as fh:
            fh.write(self.to_json())

    @staticmethod
    def load(path: str) -> "Program":
        """Read a Program saved by :meth:`save`; CompileError if the file holds none."""
        text = read_json_file(path, CompileError, "give a Program written by 'imcflow compile -o'")
        return Program.from_json(text, str(path))

    # --- queries --------------------------------------------------------------------------------
    def core_xy(self, core: int) -> tuple[int, int]:
        """(row, col) of a core's switch on the grid."""
        return divmod(core, self.chip.grid_cols)

    def verify(self) -> None:
        """Check the invariants of the module docstring; raise CompileError naming the problem."""
        for phase in self.phases:
            _verify_phase(self, phase)
        if self.batch < 1:
            raise CompileError(f"program {self.name!r}: batch = {self.batch}, must be >= 1")
        _verify_coverage(self)

    def __str__(self) -> str:
        return summary(self)


# --- decoding ---------------------------------------------------------------------------------

_CHIP_TYPES = {c.__name__: c for c in vars(chip_mod).values()
               if isinstance(c, type) and dataclasses.is_dataclass(c)}
_PROG_TYPES = {c.__name__: c for c in (TileSlot, LayerCopy, Instr, Task, CoreProgram, Stream, Route, Phase)}
_ENUMS = {"op": InstrKind, "kind": StreamKind}


def _decode_program(obj: dict[str, Any]) -> Program:
    qgraph = QGraph.from_json(json.dumps(obj["qgraph"]))
    chip = decode(obj["chip"], _CHIP_TYPES, {})
    phases = tuple(decode(p, _PROG_TYPES, _ENUMS) for p in obj["phases"])
    return Program(name=obj["name"], qgraph=qgraph, chip=chip, phases=phases, batch=int(obj["batch"]),
                   batch_reason=obj["batch_reason"], objective=obj["objective"],
                   predicted=dict(obj.get("predicted", {})), mapping_notes=tuple(obj.get("mapping_notes", ())))


# --- verification -----------------------------------------------------------------------------

def port_edge_ok(chip: ChipConfig, a: int, b: int) -> bool:
    """Whether (a, b) is a valid port edge: IN_PORT -> west-edge switch or east-edge switch -> OUT_PORT."""
    if a == IN_PORT:
        return 0 <= b < chip.n_cores and b % chip.grid_cols == 0
    if b == OUT_PORT:
        return 0 <= a < chip.n_cores and a % chip.grid_cols == chip.grid_cols - 1
    return False


def _fail(phase: Phase, msg: str) -> None:
    raise CompileError(f"phase {phase.index}: {msg}")


def _verify_tiles(prog: Program, phase: Phase) -> None:
    chip, arr = prog.chip, prog.chip.array
    by_core: dict[int, list[TileSlot]] = defaultdict(list)
    ids = set()
    for t in phase.tiles:
        if t.tile_id in ids:
            _fail(phase, f"duplicate tile id {t.tile_id}")
        ids.add(t.tile_id)
        if not 0 <= t.core < chip.n_cores:
            _fail(phase, f"tile {t.tile_id} ({t.layer}) on core {t.core}: chip has {chip.n_cores} cores")
        node = prog.qgraph.node(t.layer)
        _, c_in, kh, kw = _wshape(node)
        tiles = row_tiles(c_in, kh, kw, arr.rows)
        if not 0 <= t.row_tile < len(tiles) or tiles[t.row_tile] != (t.ch_lo, t.ch_hi):
            _fail(phase, f"tile {t.tile_id} ({t.layer}): row tile {t.row_tile} ch[{t.ch_lo}:{t.ch_hi}] "
                         f"is not one of row_tiles {tiles}")
        if t.rows != (t.ch_hi - t.ch_lo) * kh * kw or t.cols != (t.oc_hi - t.oc_lo) * node.w_bits:
            _fail(phase, f"tile {t.tile_id} ({t.layer}): rows/cols {t.rows}x{t.cols} do not match its ranges")
        if not 0 <= t.oc_lo < t.oc_hi <= node.c_out:
            _fail(phase, f"tile {t.tile_id} ({t.layer}): oc[{t.oc_lo}:{t.oc_hi}] outside 0..{node.c_out}")
        if t.row_offset < 0 or t.col_offset < 0 or t.row_offset + t.rows > arr.rows \
                or t.col_offset + t.cols > arr.cols:
            _fail(phase, f"tile {t.tile_id} ({t.layer}) at rows {t.row_offset}+{t.rows}, cols "
                         f"{t.col_offset}+{t.cols} does not fit the {arr.rows}x{arr.cols} array of core {t.core}")
        by_core[t.core].append(t)
    for core, ts in by_core.items():
        for i, a in enumerate(ts):
            for b in ts[i + 1:]:
                rows_meet = _overlap(a.row_offset, a.rows, b.row_offset, b.rows)
                cols_meet = _overlap(a.col_offset, a.cols, b.col_offset, b.cols)
                if rows_meet and cols_meet:
                    _fail(phase, f"core {core}: tiles {a.tile_id} ({a.layer}) and {b.tile_id} ({b.layer}) overlap")
                if (rows_meet or cols_meet) and a.slot == b.slot:
                    _fail(phase, f"core {core}: tiles {a.tile_id} and {b.tile_id} share rows or columns "
                                 f"but have the same slot {a.slot}")


def _overlap(a0: int, an: int, b0: int, bn: int) -> bool:
    return a0 < b0 + bn and b0 < a0 + an


def _wshape(node) -> tuple[int, int, int, int]:
    w = node.weight
    if w.ndim == 4:
        return tuple(int(v) for v in w.shape)  # type: ignore[return-value]
    return int(w.shape[0]), int(w.shape[1]), 1, 1


def _verify_routes(prog: Program, phase: Phase) -> None:
    chip = prog.chip
    routes = {r.stream_id: r for r in phase.routes}
    usage: Counter = Counter()
    for s in phase.streams:
        if s.stream_id not in routes:
            _fail(phase, f"stream {s.stream_id} ({s.tensor}) has no route")
        root = s.src
        parent: dict[int, int] = {}
        for a, b in routes[s.stream_id].edges:
            if a in (IN_PORT, OUT_PORT) or b in (IN_PORT, OUT_PORT):
                if not port_edge_ok(chip, a, b):
                    _fail(phase, f"route of stream {s.stream_id}: {a}->{b} is not a port edge "
                                 f"(IN_PORT to a west-edge switch, or an east-edge switch to OUT_PORT)")
            else:
                if not (0 <= a < chip.n_cores and 0 <= b < chip.n_cores):
                    _fail(phase, f"route of stream {s.stream_id}: switch {a} or {b} does not exist")
                (ra, ca), (rb, cb) = divmod(a, chip.grid_cols), divmod(b, chip.grid_cols)
                if abs(ra - rb) + abs(ca - cb) != 1:
                    _fail(phase, f"route of stream {s.stream_id}: switches {a} and {b} are not neighbours")
                usage[(min(a, b), max(a, b))] += 1
            if b in parent or b == root:
                _fail(phase, f"route of stream {s.stream_id}: {b} entered twice (not a tree)")
            parent[b] = a
        for node in parent:  # every edge hangs from the root
            seen = 0
            while node != root:
                if node not in parent or seen > chip.n_cores + 2:
                    _fail(phase, f"route of stream {s.stream_id}: {node} is not connected to its source {root}")
                node, seen = parent[node], seen + 1
        for d in s.dsts:
            if d != root and d not in parent:
                _fail(phase, f"route of stream {s.stream_id} ({s.tensor}) does not reach endpoint {d}")
    for (a, b), n in usage.items():
        if n > chip.ocn.tracks_per_channel:
            _fail(phase, f"channel between switches {a} and {b} carries {n} streams; it has "
                         f"{chip.ocn.tracks_per_channel} tracks (ocn.tracks_per_channel)")


def _verify_dataflow(prog: Program, phase: Phase) -> None:
    """Every RECV has a stream whose destination is this core and whose source SENDs it."""
    streams = {s.stream_id: s for s in phase.streams}
    tiles = {t.tile_id: t for t in phase.tiles}
    senders: dict[int, int] = {}
    receivers: dict[int, set[int]] = defaultdict(set)
    for cp in phase.cores:
        for ld in cp.loads:
            if ld.tile not in tiles or tiles[ld.tile].core != cp.core:
                _fail(phase, f"core {cp.core}: LOAD of tile {ld.tile}, which is not placed on this core")
        for task in cp.tasks:
            for ins in task.instrs:
                if ins.op == InstrKind.MVM and (ins.tile not in tiles or tiles[ins.tile].core != cp.core):
                    _fail(phase, f"core {cp.core}: MVM on tile {ins.tile}, which is not placed on this core")
                if ins.op in (InstrKind.SEND, InstrKind.RECV) and ins.stream not in streams:
                    _fail(phase, f"core {cp.core}: {ins.op.name} of unknown stream {ins.stream}")
                if ins.op == InstrKind.SEND:
                    senders[ins.stream] = cp.core
                if ins.op == InstrKind.RECV:
                    receivers[ins.stream].add(cp.core)
    for s in phase.streams:
        if s.kind == StreamKind.ACC and not ((s.src >= 0 and s.dsts == (OUT_PORT,))
                                             or (s.src == IN_PORT and len(s.dsts) == 1 and s.dsts[0] >= 0)):
            _fail(phase, f"stream {s.stream_id} ({s.tensor}): a spilled accumulator goes from one core to OUT_PORT "
                         f"or from IN_PORT to one core, not {s.src} -> {s.dsts}")
        if s.src != IN_PORT and senders.get(s.stream_id) != s.src:
            _fail(phase, f"stream {s.stream_id} ({s.tensor}): source core {s.src} never SENDs it")
        core_dsts = {d for d in s.dsts if d >= 0}
        if receivers.get(s.stream_id, set()) != core_dsts:
            _fail(phase, f"stream {s.stream_id} ({s.tensor}): RECV on cores {sorted(receivers.get(s.stream_id, ()))}"
                         f" but destinations are {sorted(core_dsts)}")


def _verify_phase(prog: Program, phase: Phase) -> None:
    _verify_tiles(prog, phase)
    _verify_routes(prog, phase)
    _verify_dataflow(prog, phase)


def _verify_coverage(prog: Program) -> None:
    """Every weight of every MVM layer lands in exactly one tile per copy; every node is computed."""
    computed: set[str] = set()
    for phase in prog.phases:
        computed.update(phase.nodes)
    for node in prog.qgraph.nodes:
        if node.name not in computed:
            raise CompileError(f"node {node.name!r} ({node.op.value}) is computed in no phase")
    for node in prog.qgraph.mvm_nodes():
        c_out, c_in, kh, kw = _wshape(node)
        n_rt = len(row_tiles(c_in, kh, kw, prog.chip.array.rows))
        covered = [0] * c_out
        next_rt = [0] * c_out   # row-tile groups of a column tile come in order, in consecutive phases
        for phase in prog.phases:
            copies = [c for c in phase.copies if c.layer == node.name]
            if not copies:
                continue
            oc_range = (copies[0].oc_lo, copies[0].oc_hi)
            rt_lo, rt_hi = copies[0].row_group(n_rt)
            for c in copies:
                cells = Counter()
                for t in phase.tiles:
                    if t.layer == node.name and t.copy == c.copy:
                        for oc in range(t.oc_lo, t.oc_hi):
                            cells[(t.row_tile, oc)] += 1
                want = {(r, oc) for r in range(rt_lo, rt_hi) for oc in range(*oc_range)}
                if c.row_group(n_rt) != (rt_lo, rt_hi) or set(cells) != want or any(v != 1 for v in cells.values()):
                    raise CompileError(f"phase {phase.index}: layer {node.name!r} copy {c.copy} does not hold "
                                       f"each (row tile, output channel) of rt[{rt_lo}:{rt_hi}] "
                                       f"oc[{oc_range[0]}:{oc_range[1]}] exactly once")
            for oc in range(*oc_range):
                if next_rt[oc] != rt_lo or not 0 <= rt_lo < rt_hi <= n_rt:
                    raise CompileError(f"phase {phase.index}: layer {node.name!r} holds row tiles [{rt_lo}:{rt_hi}) "
                                       f"of output channel {oc}, but the earlier phases summed row tiles "
                                       f"[0:{next_rt[oc]}) of its {n_rt}")
                next_rt[oc] = rt_hi
                covered[oc] += rt_hi == n_rt
            px = sorted((c.px_lo, c.px_hi) for c in copies)
            n_px = _pixels(node)
            if px[0][0] != 0 or px[-1][1] != n_px or any(a[1] != b[0] for a, b in zip(px, px[1:])):
                raise CompileError(f"phase {phase.index}: copies of layer {node.name!r} do not split its "
                                   f"{n_px} output pixels into contiguous disjoint ranges: {px}")
        if any(v != 1 for v in covered):
            raise CompileError(f"layer {node.name!r}: output channels are not computed exactly once over the phases")


def _pixels(node) -> int:
    """Output pixels of an MVM node (1 for LINEAR)."""
    return int(node.out.shape[1] * node.out.shape[2]) if node.op == QOp.CONV and len(node.out.shape) == 3 else 1


# --- printing ---------------------------------------------------------------------------------

def summary(prog: Program) -> str:
    """A readable summary: per phase, layers on cores with copies, routes, utilisation, prediction."""
    chip = prog.chip
    lines = [f"Program {prog.name}: {len(prog.phases)} phase(s) on {chip.name} "
             f"({chip.grid_rows}x{chip.grid_cols} cores, {chip.array.rows}x{chip.array.cols} arrays), "
             f"objective {prog.objective}, batch {prog.batch}",
             f"  batch: {prog.batch_reason}"]
    for k, v in prog.predicted.items():
        lines.append(f"  predicted {k} = {v:.6g}")
    lines += [f"  mapping: {note}" for note in prog.mapping_notes]
    for ph in prog.phases:
        used = sum(t.weight_bits for t in ph.tiles)
        total = chip.n_cores * chip.array.rows * chip.array.cols
        lines.append(f"phase {ph.index}: {len(ph.tiles)} tiles, {len(ph.streams)} streams, "
                     f"array utilisation {100.0 * used / total:.1f}% of cells")
        for name in ph.nodes:
            copies = [c for c in ph.copies if c.layer == name]
            cores = sorted({t.core for t in ph.tiles if t.layer == name})
            if copies:
                c0 = copies[0]
                lines.append(f"  {name:<18} x{len(copies)} copies oc[{c0.oc_lo}:{c0.oc_hi}] "
                             f"tiles {sum(1 for t in ph.tiles if t.layer == name):>3} on cores {cores}"
                             f"{_spill_note(prog, ph, name)}")
            else:
                hosts = sorted({cp.core for cp in ph.cores for t in cp.tasks
                                if t.name == name or t.name.startswith(name + "[")})
                lines.append(f"  {name:<18} SIMD on core(s) {hosts}")
        routes = {r.stream_id: r for r in ph.routes}
        for s in ph.streams:
            hops = len(routes[s.stream_id].edges) if s.stream_id in routes else -1
            lines.append(f"    s{s.stream_id:<3} {s.kind.value:<4} {s.tensor:<16} {_ep(s.src)} -> "
                         f"{','.join(_ep(d) for d in s.dsts)}  {s.bits} b/img, {hops} links")
    return "\n".join(lines)


def _spill_note(prog: Program, phase: Phase, layer: str) -> str:
    """What a phase holding only a row-tile group of ``layer`` does with its partial sums ('' if none)."""
    copy = next(c for c in phase.copies if c.layer == layer)
    if copy.rt_hi <= 0:
        return ""
    node = prog.qgraph.node(layer)
    _, c_in, kh, kw = _wshape(node)
    n_rt = len(row_tiles(c_in, kh, kw, prog.chip.array.rows))
    lo, hi = copy.row_group(n_rt)
    if (lo, hi) == (0, n_rt):
        return ""
    acc_bits = sum(s.bits for s in phase.streams if s.kind == StreamKind.ACC and s.tensor == layer and OUT_PORT in s.dsts)
    reads = f"adds the spilled sum of rt[0:{lo}] from IN, " if lo > 0 else ""
    tail = f"spills partial sums of rt[0:{hi}] to OUT ({acc_bits} b/img)" if hi < n_rt else "requantises"
    return f"  row tiles [{lo}:{hi}) of {n_rt}: {reads}{tail}"


def _ep(e: int) -> str:
    return {IN_PORT: "IN", OUT_PORT: "OUT"}.get(e, f"c{e}")
