"""Partial-sum spill: a layer whose row tiles do not fit the chip at once is summed over several
consecutive phases, its accumulators leaving through OUT_PORT and coming back through IN_PORT.

The spine still holds (outputs equal the integer reference exactly), the Program shows the spill,
timing and energy charge its off-chip bits, and what remains impossible is a clear CompileError."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from qgraph_factory import chain_qgraph, random_qgraph  # noqa: E402

from imcflow.compiler import compile_qgraph  # noqa: E402
from imcflow.compiler.tiling import psum_bits, tile_graph  # noqa: E402
from imcflow.config.chip import AdcConfig, ArrayConfig, ChipConfig  # noqa: E402
from imcflow.config.presets import TINY  # noqa: E402
from imcflow.errors import CompileError  # noqa: E402
from imcflow.ir.program import IN_PORT, OUT_PORT, InstrKind, Program, StreamKind  # noqa: E402
from imcflow.ir.qgraph import QGraph, Requant  # noqa: E402
from imcflow.perf.model import estimate_program  # noqa: E402
from imcflow.quant.reference import run_qgraph  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402
from imcflow.sim.lower import lower  # noqa: E402
from imcflow.sim.report import make_report, simulate_timing  # noqa: E402
from imcflow.sim.timing import OpKind, run  # noqa: E402


def chip_of(grid_rows: int, grid_cols: int, offchip_bit_j: float = 0.0) -> ChipConfig:
    """TINY's 72 x 32 arrays on another grid (so the row tiles, hence the integers, are TINY's)."""
    return dataclasses.replace(TINY, name=f"tiny{grid_rows}x{grid_cols}", grid_rows=grid_rows, grid_cols=grid_cols,
                               array=ArrayConfig(rows=72, cols=32), adc=AdcConfig(full_scales_rows=(72, 36, 18, 9)),
                               energy=dataclasses.replace(TINY.energy, offchip_bit_j=offchip_bit_j))


TWO = chip_of(1, 2)
"""Two arrays: a conv over 40 input channels (3x3: 360 rows, 5 row tiles) must spill."""
EIGHT = chip_of(2, 4)
"""Eight arrays: the same conv fits in one phase."""
CONV = [("conv", 4, 3), ("flatten",), ("linear", 10)]
DEEP_CONV = [("conv", 4, 3)]


def revealing(q: QGraph, layer: str) -> QGraph:
    """``q`` with ``layer`` requantised almost losslessly (x 1/2, signed 16 b, no bias or ReLU), so
    that any error in its accumulators shows in its outputs (random_qgraph's ReLU-and-shift
    requantisation maps most accumulators to 0 or 1)."""
    node = q.node(layer)
    c_out = node.out.shape[0]
    rq = Requant(multiplier=np.ones(c_out, dtype=np.int64), bias=np.zeros(c_out, dtype=np.int64), shift=1,
                 out_min=-(1 << 15), out_max=(1 << 15) - 1)
    new = dataclasses.replace(node, requant=rq, out=dataclasses.replace(node.out, bits=16, signed=True))
    out = dataclasses.replace(q, nodes=tuple(new if n.name == layer else n for n in q.nodes))
    out.verify()
    return out


def _inputs(q, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(q.input.min_int, q.input.max_int + 1, size=(n, *q.input.shape))


def _groups(prog: Program, layer: str) -> list[tuple[int, int, int]]:
    """(phase, first row tile, last row tile + 1) of copy 0 of ``layer``, in phase order."""
    n_rt = len(tile_graph(prog.qgraph, prog.chip)[layer].row_tiles)
    return [(ph.index, *c.row_group(n_rt)) for ph in prog.phases for c in ph.copies if c.layer == layer and c.copy == 0]


def _acc_streams(prog: Program):
    return [(ph.index, s) for ph in prog.phases for s in ph.streams if s.kind == StreamKind.ACC]


@pytest.mark.parametrize("case", ["conv", "conv_output", "dense"])
def test_spilled_layer_equals_the_reference_exactly(case):
    """(a) the spine: a conv (5 row tiles on 2 arrays; inside a network, and as the output with its
    accumulators nearly unrounded) and a dense layer (14 row tiles on TINY's 4)."""
    if case == "conv":
        q, chip, layer = chain_qgraph(TWO, CONV, (40, 4, 4)), TWO, "c0"
    elif case == "conv_output":
        q, chip, layer = revealing(chain_qgraph(TWO, DEEP_CONV, (40, 4, 4)), "c0"), TWO, "c0"
    else:
        q, chip, layer = random_qgraph(7, TINY), TINY, "fc0"
    prog = compile_qgraph(q, chip)
    assert len(_groups(prog, layer)) > 1, "the layer must be summed over several phases"
    x = _inputs(q, 4, seed=3)
    again = Program.from_json(prog.to_json())
    for mode in ("ideal", "bit_true"):
        want = run_qgraph(q, x, mode, chip)
        assert np.array_equal(run_program(prog, x, mode), want), mode
        assert np.array_equal(run_program(again, x, mode), want), mode


def test_program_shows_the_spill():
    """(b) phases hold consecutive row-tile groups; accumulators go to OUT_PORT and come back from
    IN_PORT at the worst-case width; only the last group requantises."""
    q = random_qgraph(7, TINY)
    prog = compile_qgraph(q, TINY)
    tl = tile_graph(q, TINY)["fc0"]
    n_rt = len(tl.row_tiles)
    width = psum_bits(tl, TINY)
    groups = _groups(prog, "fc0")
    assert len(prog.phases) > 1 and len(groups) > 1
    for (pa, _, a1), (pb, b0, b1) in zip(groups, groups[1:]):
        assert pb == pa + 1 and b0 == (a1 if a1 < n_rt else 0) and b0 < b1
    spilled_out, read_in = {}, {}
    for index, s in _acc_streams(prog):
        assert s.bits == (s.oc_hi - s.oc_lo) * (s.px_hi - s.px_lo) * width
        if s.src == IN_PORT:
            read_in[(s.oc_lo, s.copy, s.px_lo, s.row_tile)] = index
        else:
            assert s.dsts == (OUT_PORT,)
            spilled_out[(s.oc_lo, s.copy, s.px_lo, s.row_tile)] = index
    assert spilled_out and read_in
    for key, index in read_in.items():  # every accumulator read back was written by the phase before
        assert spilled_out.get(key, -1) == index - 1, key
    for ph in prog.phases:
        ops = [i for cp in ph.cores for t in cp.tasks for i in t.instrs if i.layer == "fc0"]
        copy = next((c for c in ph.copies if c.layer == "fc0"), None)
        if copy is None:
            continue
        lo, hi = copy.row_group(n_rt)
        assert any(i.op == InstrKind.REQUANT for i in ops) == (hi == n_rt), ph.index
        acc = [i for i in ops if i.op == InstrKind.ACCUMULATE]
        assert acc and all(max(0, i.row_tile) == lo and i.n_parts == hi - lo for i in acc), ph.index
    text = str(prog)
    assert "row tiles [0:" in text and "spills partial sums" in text and "adds the spilled sum" in text
    assert width == 21  # 14 row tiles x 255 (top ADC code) x 15 x 15 (4-b inputs, weights) < 2**20, + sign


def test_psum_width_covers_the_worst_case():
    """The spilled width holds the largest accumulator magnitude any mode can make."""
    q = random_qgraph(7, TINY)
    tl = tile_graph(q, TINY)["fc0"]
    levels = (1 << TINY.adc.bits) - 1   # bit_true: at most the top ADC code per column and bit-plane
    codes = sum(max(tl.tile_rows(r), levels) for r in range(len(tl.row_tiles)))   # ideal: exact row counts
    worst = codes * ((1 << tl.x_bits) - 1) * ((1 << tl.w_bits) - 1)
    assert worst < 1 << (psum_bits(tl, TINY) - 1) <= 2 * worst


def test_spill_costs_offchip_bits_in_timing_energy_and_model():
    """(c) the same conv on 2 arrays (spilling) and on 8 (one phase): the spill adds exactly its
    accumulators' bits, written once and read once, to the off-chip traffic of the timing run,
    to the off-chip energy and to the analytic model's port time; reads wait for the writes."""
    q = chain_qgraph(TWO, DEEP_CONV, (40, 4, 4))
    spill = compile_qgraph(q, chip_of(1, 2, offchip_bit_j=1e-12))
    fits = compile_qgraph(q, chip_of(2, 4, offchip_bit_j=1e-12))
    assert len(fits.phases) == 1 and len(spill.phases) > 1
    acc_bits = sum(s.bits for _, s in _acc_streams(spill))
    acc_out = sum(s.bits for _, s in _acc_streams(spill) if OUT_PORT in s.dsts)
    assert acc_bits == 2 * acc_out > 0
    images = 3
    per_img = {}
    for name, prog in (("spill", spill), ("fits", fits)):
        low = lower(prog, images)
        per_img[name] = low.counts["network"].offchip_bits / images
    assert per_img["spill"] == pytest.approx(per_img["fits"] + acc_bits)
    e, weights = {}, {}
    for name, prog in (("spill", spill), ("fits", fits)):
        tr = simulate_timing(prog, images)
        e[name] = make_report(prog, tr).energy_breakdown_j_per_img["offchip"]
        weights[name] = tr.lowered.load_counts.offchip_bits / images * 1e-12 if len(prog.phases) > 1 else 0.0
    # a several-phase program also reloads its weights each batch: they come over the bus, off-chip too
    assert e["spill"] - weights["spill"] == pytest.approx(e["fits"] + acc_bits * 1e-12)
    model_bits = sum((p.io_in_s * spill.chip.io.in_bits_per_cycle + p.io_out_s * spill.chip.io.out_bits_per_cycle)
                     * spill.chip.clock.digital_hz for p in estimate_program(spill).phases)
    assert model_bits == pytest.approx(per_img["spill"])
    low = lower(spill, 1)
    sched = run(low.ops)
    writes = [o for o in low.ops if o.kind == OpKind.IO_OUT and o.layer == "c0"]
    reads = [o for o in low.ops if o.kind == OpKind.IO_IN and o.layer == "c0"]
    assert writes and reads
    for r in reads:
        earlier = [w for w in writes if w.phase == r.phase - 1]
        assert earlier and sched.start_s[r.id] >= max(sched.finish_s[w.id] for w in earlier)
    assert "psums" in " ".join(p.spill for p in make_report(spill, simulate_timing(spill, images)).phases)


def test_partition_counts_the_spill_in_port_time():
    """The partition's port-time estimate of a spilling phase includes its accumulators."""
    from imcflow.compiler.partition import Partitioner
    q = chain_qgraph(TWO, DEEP_CONV, (40, 4, 4))
    part = Partitioner(q, tile_graph(q, TWO), TWO)
    spans = part.run()
    assert len(spans) > 1 and all(s.row_tiles["c0"] != (0, 5) for s in spans)
    tl = tile_graph(q, TWO)["c0"]
    acc = 4 * tl.pixels * psum_bits(tl, TWO)
    cyc = 1.0 / TWO.clock.digital_hz
    first = next(k for k, s in enumerate(part.segs) if s.layer == "c0")
    in_s, out_s = part.io_s(first, first + 1, *part.phase_content(first, first + 1))
    ch = tl.row_tiles[part.segs[first].rts[1] - 1][1]
    assert out_s == pytest.approx(acc / TWO.io.out_bits_per_cycle * cyc)
    assert in_s == pytest.approx(ch * 16 * 8 / min(TWO.io.in_bits_per_cycle, TWO.ocn.tracks_per_channel * 32) * cyc)


def test_accumulator_too_narrow_is_a_clear_error():
    """(d) what stays impossible: a spilled accumulator wider than the SIMD accumulator."""
    q = chain_qgraph(TWO, CONV, (40, 4, 4))
    narrow = dataclasses.replace(TWO, simd=dataclasses.replace(TWO.simd, accumulator_bits=12))
    with pytest.raises(CompileError) as info:
        compile_qgraph(q, narrow)
    msg = str(info.value)
    for words in ("layer 'c0'", "5 row tiles", "2 arrays of 72x32", "12 b (simd.accumulator_bits)",
                  "raise simd.accumulator_bits"):
        assert words in msg, (words, msg)
    assert f"needs {psum_bits(tile_graph(q, TWO)['c0'], TWO)} b" in msg
    compile_qgraph(q, EIGHT)   # on a chip where it fits, no spill and no accumulator limit

