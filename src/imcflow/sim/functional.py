"""Functional execution of a Program: the integers the chip computes, following its tiles.

Phases run in order. In a phase every core's tasks are interpreted instruction by instruction
(a RECV blocks until its stream was sent), each task once for the whole batch (images are
independent, so this equals running it image by image). Each core has its own memory of tensor
pieces, partial sums and accumulators, with masks of what it holds: an MVM, ACCUMULATE, REQUANT,
SIMD op or SEND that needs data the core does not hold raises :class:`SimError` naming the
instruction, so a wrong program is caught, not silently computed from a global store.

A partial-sum spill (ACC streams) keeps the exact int64 accumulators in off-chip memory under
``("acc", layer, row tiles summed)``: integer addition is associative, so a layer whose row tiles
are summed over several phases gives the same integers as one summed on chip.

MVM tiles are computed vectorised over the batch (:func:`imcflow.sim.kernels.tile_mvm`, i.e.
:func:`imcflow.cima.conv.bpbs_conv2d` on the row tile's slice), so whole test sets run quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from imcflow.cima.common import Mode, parse_mode
from imcflow.config.chip import ChipConfig
from imcflow.errors import SimError
from imcflow.ir.program import CHANNEL_MIXING, IN_PORT, OUT_PORT, InstrKind, Phase, Program, StreamKind
from imcflow.ir.qgraph import QNode, QOp, QTensor, row_tiles
from imcflow.sim import kernels
from imcflow.sim.dataflow import Blocked as _Blocked, run_tasks


def _chw(spec: QTensor) -> tuple[int, int, int]:
    s = spec.shape
    return (s[0], s[1], s[2]) if len(s) == 3 else (s[0], 1, 1)


class _Store:
    """Dense pieces of tensors with a (C, H*W) mask of what is present."""

    def __init__(self) -> None:
        self.data: dict[object, np.ndarray] = {}
        self.mask: dict[object, np.ndarray] = {}

    def put(self, key: object, shape: tuple[int, ...], c: tuple[int, int], p: tuple[int, int],
            value: np.ndarray) -> None:
        """Store ``value`` as channels ``c``, pixels ``p`` of ``key``: activations (tensor names)
        as float32 (exact for integers below 2**24; activations have at most 8 bits), partial
        sums and accumulators (tuple keys) as int64."""
        dtype = np.int64 if isinstance(key, tuple) else np.float32
        if key not in self.data:
            if c == (0, shape[1]) and p == (0, shape[2]):
                self.data[key] = np.ascontiguousarray(value, dtype=dtype).reshape(shape)
                self.mask[key] = np.ones((shape[1], shape[2]), dtype=bool)
                return
            self.data[key] = np.zeros(shape, dtype=dtype)
            self.mask[key] = np.zeros((shape[1], shape[2]), dtype=bool)
        self.data[key][:, c[0]:c[1], p[0]:p[1]] = value
        self.mask[key][c[0]:c[1], p[0]:p[1]] = True

    def has(self, key: object, c: tuple[int, int], p: tuple[int, int] | np.ndarray) -> bool:
        if key not in self.mask:
            return False
        m = self.mask[key][c[0]:c[1]]
        m = m[:, p[0]:p[1]] if isinstance(p, tuple) else m[:, p]
        return bool(m.all())

    def get(self, key: object, c: tuple[int, int], p: tuple[int, int]) -> np.ndarray:
        return self.data[key][:, c[0]:c[1], p[0]:p[1]]


@dataclass
class FunctionalStats:
    """Activity measured by a functional run (for energy and the zero-bit-plane feature)."""

    images: int = 0
    mvm_vectors: dict[int, int] = field(default_factory=dict)
    """Per tile id: input vectors applied (images x pixels)."""
    nonzero_planes: dict[int, int] = field(default_factory=dict)
    """Per tile id: input bit-planes holding at least one 1 among the tile's rows, summed over vectors."""
    ones: dict[int, int] = field(default_factory=dict)
    """Per tile id: input bits equal to 1 over the tile's rows (rows driven), summed over vectors."""


@dataclass
class _Ctx:
    prog: Program
    chip: ChipConfig
    mode: str
    seed: int
    n: int
    offchip: _Store
    stats: FunctionalStats | None
    node_index: dict[str, int]
    cache: dict = field(default_factory=dict)
    """Results of column tiles computed together with another tile of the same row tile."""
    col_groups: dict = field(default_factory=dict)
    """(layer, row tile, ch range, px range) -> output-channel ranges of the phase's MVMs."""


def run_program(prog: Program, x_int: np.ndarray, mode: str = "bit_true", seed: int = 0,
                stats: FunctionalStats | None = None) -> np.ndarray:
    """Run ``prog`` on integer inputs (N, *input shape) and return the int64 outputs of the
    graph's output node, shaped like :func:`imcflow.quant.reference.run_qgraph`'s.

    ``mode``: ideal, bit_true or analog (analog draws one seeded mismatch per tile). ``stats``, if
    given, is filled with measured activity."""
    q = prog.qgraph
    mode = parse_mode(mode).value
    if prog.chip.adc.lossless:
        if mode == Mode.ANALOG.value:
            raise SimError(f"mode 'analog' needs a real ADC; chip {prog.chip.name!r} has adc.lossless=True")
        mode = Mode.IDEAL.value
    x = np.asarray(x_int)
    if x.ndim != len(q.input.shape) + 1 or tuple(x.shape[1:]) != tuple(q.input.shape):
        raise SimError(f"inputs have shape {x.shape}; program {prog.name!r} expects (N, {', '.join(map(str, q.input.shape))})")
    if not np.issubdtype(x.dtype, np.integer):
        raise SimError(f"inputs have dtype {x.dtype}: pass integers (quantise float inputs first)")
    if x.size and (x.min() < q.input.min_int or x.max() > q.input.max_int):
        raise SimError(f"inputs span [{x.min()}, {x.max()}], outside the {q.input.bits}-b input range "
                       f"[{q.input.min_int}, {q.input.max_int}]")
    n = x.shape[0]
    c, h, w = _chw(q.input)
    offchip = _Store()
    offchip.put(q.input_name, (n, c, h * w), (0, c), (0, h * w), x.reshape(n, c, h * w).astype(np.int64))
    ctx = _Ctx(prog, prog.chip, mode, seed, n, offchip, stats, {nd.name: i for i, nd in enumerate(q.nodes)})
    if stats is not None:
        stats.images += n
    for phase in prog.phases:
        _run_phase(ctx, phase)
    out = q.spec(q.output)
    oc, oh, ow = _chw(out)
    if not offchip.has(q.output, (0, oc), (0, oh * ow)):
        raise SimError(f"program {prog.name!r}: the graph output {q.output!r} never reached OUT_PORT in full")
    y = offchip.get(q.output, (0, oc), (0, oh * ow))
    return np.rint(y).astype(np.int64).reshape((n, *out.shape))


def _run_phase(ctx: _Ctx, phase: Phase) -> None:
    mem = {cp.core: _Store() for cp in phase.cores}
    ctx.cache.clear()
    ctx.col_groups = {}
    for cp in phase.cores:
        for task in cp.tasks:
            for ins in task.instrs:
                if ins.op == InstrKind.MVM:
                    key = (ins.layer, ins.row_tile, ins.ch_lo, ins.ch_hi, ins.px_lo, ins.px_hi)
                    ctx.col_groups.setdefault(key, []).append((ins.oc_lo, ins.oc_hi))
    loaded: dict[int, set[int]] = {cp.core: set() for cp in phase.cores}
    tiles = {t.tile_id: t for t in phase.tiles}
    streams = {s.stream_id: s for s in phase.streams}
    sent: dict[int, np.ndarray] = {}
    for s in phase.streams:  # the input port sends what off-chip memory holds
        if s.src == IN_PORT:
            try:
                sent[s.stream_id] = _read_piece(ctx, ctx.offchip, s, f"phase {phase.index} stream {s.stream_id} from IN_PORT")
            except _Blocked as exc:
                raise SimError(f"{exc} (off-chip memory)") from None
    for cp in phase.cores:
        for ins in cp.loads:
            if ins.op != InstrKind.LOAD or ins.tile not in tiles or tiles[ins.tile].core != cp.core:
                raise SimError(f"phase {phase.index} core {cp.core}: bad load instruction {ins}")
            loaded[cp.core].add(ins.tile)

    def execute(core: int, _where, ins) -> None:
        if ins.op == InstrKind.RECV and ins.stream not in sent:
            raise _Blocked(f"stream {ins.stream} never sent")
        _execute(ctx, phase, core, ins, mem[core], loaded[core], tiles, streams, sent)

    blocked = run_tasks(phase, execute)
    if blocked:
        raise SimError(f"phase {phase.index}: deadlock, tasks wait for data never produced: {'; '.join(blocked[:4])}")


def _shape(ctx: _Ctx, s) -> tuple[int, int, int]:
    node_or_in = ctx.prog.qgraph.spec(s.tensor)
    c, h, w = _chw(node_or_in)
    return (ctx.n, c, h * w)


def _read_piece(ctx: _Ctx, store: _Store, s, what: str) -> np.ndarray:
    key = s.offchip_key if store is ctx.offchip else s.core_key
    if not store.has(key, (s.oc_lo, s.oc_hi), (s.px_lo, s.px_hi)):
        raise _Blocked(f"{what}: the source does not hold {key} oc[{s.oc_lo}:{s.oc_hi}] px[{s.px_lo}:{s.px_hi}]")
    return store.get(key, (s.oc_lo, s.oc_hi), (s.px_lo, s.px_hi)).copy()


def _execute(ctx, phase, core, ins, mem: _Store, loaded, tiles, streams, sent) -> None:
    where = f"phase {phase.index} core {core}: {ins}"
    op = ins.op
    q = ctx.prog.qgraph
    if op == InstrKind.RECV:
        s = streams[ins.stream]
        if core not in s.dsts:
            raise SimError(f"{where}: core is not a destination of stream {s.stream_id}")
        mem.put(s.core_key, _shape(ctx, s), (s.oc_lo, s.oc_hi), (s.px_lo, s.px_hi), sent[s.stream_id])
    elif op == InstrKind.SEND:
        s = streams[ins.stream]
        if s.src != core:
            raise SimError(f"{where}: stream {s.stream_id} has source {s.src}, not this core")
        sent[s.stream_id] = _read_piece(ctx, mem, s, where)
        if OUT_PORT in s.dsts:
            if s.kind == StreamKind.PSUM:
                raise SimError(f"{where}: a row tile's partial sums may not leave the chip (stream {s.stream_id}); "
                               f"spill the accumulator (an ACC stream)")
            ctx.offchip.put(s.offchip_key, _shape(ctx, s), (s.oc_lo, s.oc_hi), (s.px_lo, s.px_hi), sent[s.stream_id])
    elif op == InstrKind.MVM:
        _mvm(ctx, where, core, ins, mem, loaded, tiles)
    elif op == InstrKind.ACCUMULATE:
        node = q.node(ins.layer)
        c, p = (ins.oc_lo, ins.oc_hi), (ins.px_lo, ins.px_hi)
        total = None
        first = max(0, ins.row_tile)
        if first > 0:  # the accumulator of row tiles 0 .. first-1, read back from off-chip memory
            if not mem.has(("acc", ins.layer), c, p):
                raise _Blocked(f"{where}: the spilled sum of row tiles 0..{first - 1} is not on this core")
            total = mem.get(("acc", ins.layer), c, p).copy()
        for rt in range(first, first + ins.n_parts):
            if not mem.has(("psum", ins.layer, rt), c, p):
                raise _Blocked(f"{where}: partial sums of row tile {rt} are not on this core")
            part = mem.get(("psum", ins.layer, rt), c, p)
            total = part.copy() if total is None else total + part
        oc, oh, ow = _chw(node.out)
        mem.put(("acc", ins.layer), (ctx.n, oc, oh * ow), c, p, total)
    elif op == InstrKind.REQUANT:
        node = q.node(ins.layer)
        c, p = (ins.oc_lo, ins.oc_hi), (ins.px_lo, ins.px_hi)
        key = ("acc", ins.layer) if _n_row_tiles(ctx, node) > 1 else ("psum", ins.layer, 0)
        if not mem.has(key, c, p):
            raise _Blocked(f"{where}: no accumulator for oc[{c[0]}:{c[1]}] px[{p[0]}:{p[1]}] on this core")
        num, shift = (1, 0) if ctx.mode == Mode.IDEAL.value else (node.adc_full_scale_rows, ctx.chip.adc.bits)
        rq = node.requant
        sub = replace(rq, multiplier=rq.multiplier[c[0]:c[1]], bias=rq.bias[c[0]:c[1]])
        y = sub.apply(mem.get(key, c, p), num, shift, channel_axis=1)
        oc, oh, ow = _chw(node.out)
        mem.put(ins.layer, (ctx.n, oc, oh * ow), c, p, y)
    elif op == InstrKind.LOAD:
        raise SimError(f"{where}: LOAD inside a task; loads belong in CoreProgram.loads")
    else:
        _simd(ctx, where, q.node(ins.layer), ins, mem)


def _n_row_tiles(ctx: _Ctx, node: QNode) -> int:
    w = node.weight
    kh, kw = (w.shape[2], w.shape[3]) if w.ndim == 4 else (1, 1)
    return len(row_tiles(w.shape[1], kh, kw, ctx.chip.array.rows))


def _full(ctx: _Ctx, mem: _Store, name: str, where: str, c: tuple[int, int] | None = None) -> np.ndarray:
    spec = ctx.prog.qgraph.spec(name)
    ch, h, w = _chw(spec)
    c = (0, ch) if c is None else c
    if not mem.has(name, c, (0, h * w)):
        raise _Blocked(f"{where}: needs {name!r} ch[{c[0]}:{c[1]}] (all pixels) on this core")
    return mem.get(name, c, (0, h * w)).astype(np.int64).reshape(ctx.n, c[1] - c[0], h, w)


def _channel_range(node: QNode, ins) -> tuple[int, int]:
    """Output channels a SIMD instruction computes (all for the ops that mix channels, or an unset range)."""
    oc = _chw(node.out)[0]
    if node.op in CHANNEL_MIXING or ins.oc_hi <= ins.oc_lo:
        return 0, oc
    return ins.oc_lo, ins.oc_hi


def _simd(ctx: _Ctx, where: str, node: QNode, ins_, mem: _Store) -> None:
    c = _channel_range(node, ins_)
    per_channel = node.op not in CHANNEL_MIXING
    ins = [_full(ctx, mem, i, where, c if per_channel else None) for i in node.inputs]
    x = ins[0]
    if node.op == QOp.MAXPOOL:
        y = kernels.maxpool(x, node.kernel, node.stride, node.padding, node.pad_end)
    elif node.op == QOp.AVGPOOL:
        y = kernels.avgpool(x, node.kernel, node.stride, node.padding)
    elif node.op == QOp.GLOBAL_AVGPOOL:
        y = kernels.global_avgpool(x)
    elif node.op == QOp.ADD:
        y = kernels.residual_add(ins[0], ins[1], node.add_multipliers, node.add_shift,
                                 node.out.min_int, node.out.max_int, node.add_table)
    elif node.op == QOp.FLATTEN:
        y = x.reshape(ctx.n, -1)
    elif node.op == QOp.CONCAT:
        y = np.concatenate(ins, axis=1)
    elif node.op == QOp.UPSAMPLE and node.upsample_mode == "bilinear":
        y = kernels.upsample_bilinear(x, node.upsample)
    elif node.op == QOp.UPSAMPLE:
        y = kernels.upsample_nearest(x, node.upsample)
    elif node.op == QOp.DEPTH_TO_SPACE:
        y = kernels.depth_to_space(x, node.depth_to_space)
    else:
        raise SimError(f"{where}: node {node.name!r} op {node.op.value} is not a SIMD op")
    oc, oh, ow = _chw(node.out)
    mem.put(node.name, (ctx.n, oc, oh * ow), c, (0, oh * ow), y.reshape(ctx.n, c[1] - c[0], oh * ow))


def _mvm(ctx: _Ctx, where: str, core: int, ins, mem: _Store, loaded: set[int], tiles) -> None:
    q = ctx.prog.qgraph
    t = tiles.get(ins.tile)
    if t is None or t.core != core or ins.tile not in loaded:
        raise SimError(f"{where}: tile {ins.tile} is not loaded on this core")
    if (t.layer, t.row_tile, t.ch_lo, t.ch_hi) != (ins.layer, ins.row_tile, ins.ch_lo, ins.ch_hi) \
            or not t.oc_lo <= ins.oc_lo < ins.oc_hi <= t.oc_hi:
        raise SimError(f"{where}: instruction does not match tile {t.tile_id} ({t.layer} rt{t.row_tile} "
                       f"ch[{t.ch_lo}:{t.ch_hi}] oc[{t.oc_lo}:{t.oc_hi}])")
    node = q.node(ins.layer)
    src = node.inputs[0]
    c_in, h, w = _chw(q.spec(src))
    conv = node.op == QOp.CONV
    kernel, stride, padding = (node.kernel, node.stride, node.padding) if conv else ((1, 1), (1, 1), (0, 0))
    dilation = tuple(node.dilation) if conv else (1, 1)
    need = kernels.needed_pixels(h, w, tuple(kernel), tuple(stride), tuple(padding), ins.px_lo, ins.px_hi, dilation)
    if not mem.has(src, (ins.ch_lo, ins.ch_hi), need):
        raise _Blocked(f"{where}: input {src!r} ch[{ins.ch_lo}:{ins.ch_hi}] is not on this core for the "
                       f"receptive fields of px[{ins.px_lo}:{ins.px_hi}]")
    x = mem.data[src][:, ins.ch_lo:ins.ch_hi].reshape(ctx.n, ins.ch_hi - ins.ch_lo, h, w)
    spec = q.spec(src)
    key = (ins.layer, ins.row_tile, ins.ch_lo, ins.ch_hi, ins.px_lo, ins.px_hi)
    cached = ctx.cache.pop(key + (ins.oc_lo, ins.oc_hi), None)
    if cached is not None:
        acc = cached
    else:
        # Column tiles of one row tile on other cores read the same input integers; in ideal and
        # bit_true modes each column's result depends only on its own weights, so compute them in
        # one call and hand each its columns when its own MVM runs (after its own input check).
        group = [(ins.oc_lo, ins.oc_hi)]
        if ctx.mode != Mode.ANALOG.value:
            group = sorted(ctx.col_groups.get(key, group))
        lo, hi = group[0][0], group[-1][1]
        if sum(b - a for a, b in group) != hi - lo:
            group, lo, hi = [(ins.oc_lo, ins.oc_hi)], ins.oc_lo, ins.oc_hi
        wt = node.weight.reshape(node.c_out, c_in, kernel[0], kernel[1])[lo:hi, ins.ch_lo:ins.ch_hi]
        seed = int(np.random.SeedSequence([ctx.seed, ctx.node_index[ins.layer], t.tile_id]).generate_state(1)[0]
                   % (1 << 31))
        full = kernels.tile_mvm(x, wt, kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                                px_lo=ins.px_lo, px_hi=ins.px_hi, x_bits=ins.x_bits or spec.bits, x_signed=spec.signed,
                                w_bits=node.w_bits, full_scale=node.adc_full_scale_rows, mode=ctx.mode, chip=ctx.chip,
                                seed=seed, dilation=dilation)
        for a, b in group:
            if (a, b) != (ins.oc_lo, ins.oc_hi):
                ctx.cache[key + (a, b)] = full[:, a - lo:b - lo]
        acc = full[:, ins.oc_lo - lo:ins.oc_hi - lo]
    oc, oh, ow = _chw(node.out)
    mem.put(("psum", ins.layer, ins.row_tile), (ctx.n, oc, oh * ow), (ins.oc_lo, ins.oc_hi),
            (ins.px_lo, ins.px_hi), acc)
    if ctx.stats is not None:
        _record(ctx.stats, t.tile_id, x, kernel, stride, padding, dilation, ins, spec)


def _record(stats: FunctionalStats, tile_id: int, x: np.ndarray, kernel, stride, padding, dilation, ins,
            spec) -> None:
    """Measured input activity of a tile: vectors, bit-planes with any 1, ones (rows driven)."""
    import torch
    import torch.nn.functional as F
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    bits = ins.x_bits or spec.bits
    xi = xt.to(torch.int32)
    nz = 0
    ones = 0
    for i in range(bits):
        plane = ((xi >> i) & 1).float()
        cols = F.unfold(plane, kernel, padding=padding, stride=stride, dilation=dilation)[:, :, ins.px_lo:ins.px_hi]
        s = cols.sum(1)  # (N, px)
        nz += int((s > 0).sum())
        ones += int(s.sum())
    vec = x.shape[0] * (ins.px_hi - ins.px_lo)
    stats.mvm_vectors[tile_id] = stats.mvm_vectors.get(tile_id, 0) + vec
    stats.nonzero_planes[tile_id] = stats.nonzero_planes.get(tile_id, 0) + nz
    stats.ones[tile_id] = stats.ones.get(tile_id, 0) + ones
