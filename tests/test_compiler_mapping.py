"""Compiler mapping quality: phase partition, balanced copies, SIMD hosts, streams, weight broadcast."""

from __future__ import annotations

import dataclasses

import pytest

from imcflow.compiler import compile_qgraph
from imcflow.compiler.partition import Partitioner, estimate_compute, ffd_fits
from imcflow.compiler.placement import choose_host_groups, fewer_copies, place
from imcflow.compiler.routing import StreamSpec, merge_streams, needed_input_pixels
from imcflow.compiler.tiling import tile_graph
from imcflow.config.presets import JSSC2022
from imcflow.ir.program import OUT_PORT, Program, StreamKind
from imcflow.perf.model import TileWork, bus_bits, estimate_program, load_time_s

from qgraph_factory import chain_qgraph, resnet_qgraph
from test_compiler import check_weights_covered, small_chip

STEM = [("conv", 64, 7, 2), ("conv", 32, 3), ("conv", 32, 1), ("gap",), ("linear", 10)]


def _work_s(prog: Program) -> float:
    """Array time per image of every tile of one copy of every layer (the work to spread)."""
    tl = tile_graph(prog.qgraph, prog.chip)
    return sum(t.pixels * t.x_bits * prog.chip.bitplane_s * len(t.row_tiles) * len(t.col_tiles) for t in tl.values())


def test_huge_layer_is_spread_over_all_cores():
    g = chain_qgraph(JSSC2022, STEM, (3, 64, 64))
    prog = compile_qgraph(g, JSSC2022)
    assert len(prog.phases) == 1
    copies = {c.layer: c.n_copies for c in prog.phases[0].copies}
    assert copies["c0"] >= JSSC2022.n_cores // 2
    # one copy of the stem alone takes 1024 px x 8 b x 50 ns = 410 us; spread, the stage nears work / 16
    assert prog.predicted["stage_time_s"] <= 1.5 * _work_s(prog) / JSSC2022.n_cores
    check_weights_covered(prog)


def test_partition_is_the_cheapest_and_every_phase_packs():
    chip = small_chip(2, 2, 144, 64)
    g = chain_qgraph(chip, [("conv", 16, 3), ("conv", 32, 3), ("conv", 32, 3), ("conv", 32, 3), ("conv", 16, 1),
                            ("gap",), ("linear", 10)], (8, 8, 8))
    tilings = tile_graph(g, chip)
    part = Partitioner(g, tilings, chip)
    phases = part.run()
    assert len(phases) > 1
    # contiguous: the segments of each phase follow the previous phase's, in graph order
    order = [(s.layer, ct) for s in part.segs for ct in range(*s.cts)]
    seen = [(layer, ct) for span in phases for layer, (a, b) in span.col_tiles.items() for ct in range(a, b)]
    assert seen == order
    for span in phases:
        assert part.packs(span.col_tiles, span.row_tiles)
    # the dynamic programme beats (or ties) cutting after every segment
    bounds, k = [], 0
    for span in phases:
        cts = span.col_tiles
        n = sum(1 for s in part.segs if s.layer in cts and cts[s.layer][0] <= s.cts[0] < cts[s.layer][1])
        bounds.append((k, k + n))
        k += n
    chosen = sum(part.cost(i, j) or part.fallback_cost(i, j) for i, j in bounds)
    singles = sum(part.cost(i, i + 1) or part.fallback_cost(i, i + 1) for i in range(len(part.segs)))
    assert chosen <= singles + 1e-12
    prog = compile_qgraph(g, chip)
    assert len(prog.phases) >= len(phases)
    prog.verify()


def test_network_that_fits_runs_as_one_resident_phase():
    g = chain_qgraph(JSSC2022, STEM, (3, 32, 32))
    phases = Partitioner(g, tile_graph(g, JSSC2022), JSSC2022).run()
    assert len(phases) == 1 and phases[0].io_s == 0.0


def test_compute_estimate_bisection():
    g = chain_qgraph(JSSC2022, STEM, (3, 64, 64))
    part = Partitioner(g, tile_graph(g, JSSC2022), JSSC2022)
    _, cts = part.phase_content(0, len(part.segs))
    items = part.items(cts)
    t, copies = estimate_compute(items, JSSC2022)
    assert ffd_fits(items, copies, t, JSSC2022)
    total = sum(it.t_s * len(it.areas) for it in items)
    assert total / JSSC2022.n_cores <= t <= total


def test_fewer_copies_steps_down_and_rebalances():
    g = chain_qgraph(JSSC2022, STEM, (3, 64, 64))
    tilings = tile_graph(g, JSSC2022)
    plan = place(g, tilings, JSSC2022, "throughput")[0]
    assert plan.copies["c0"] >= 4
    less = fewer_copies(g, tilings, JSSC2022, plan, "throughput")
    assert less is not None
    assert less.copies["c0"] <= (3 * plan.copies["c0"]) // 4 and less.copies["c0"] >= 1
    ones = dataclasses.replace(plan, copies={k: 1 for k in plan.copies})
    assert fewer_copies(g, tilings, JSSC2022, ones, "throughput") is None


def test_needed_input_pixels_are_the_receptive_rows():
    g = chain_qgraph(JSSC2022, [("conv", 8, 3), ("conv", 8, 3, 2), ("gap",), ("linear", 10)], (4, 8, 8))
    tl = tile_graph(g, JSSC2022)
    # c0: 3x3 pad 1 stride 1 on 8x8, copy 0 of 2 -> output rows 0..3 -> input rows 0..4
    assert needed_input_pixels(g, tl["c0"], 0, 2) == (0, 5 * 8)
    assert needed_input_pixels(g, tl["c0"], 1, 2) == (3 * 8, 64)
    # c1: stride 2 on 8x8 -> 4x4 output; copy 1 of 2 -> output rows 2..3 -> input rows 3..7
    assert needed_input_pixels(g, tl["c1"], 1, 2) == (3 * 8, 64)
    assert needed_input_pixels(g, tl["fc3"], 0, 1) == (0, 1)


def _spec(src, lo, hi, dsts=(OUT_PORT,), px=(0, 10)):
    return StreamSpec(StreamKind.ACT, "t", src, dsts, lo, hi, px[0], px[1], (hi - lo) * (px[1] - px[0]) * 4)


def test_merge_streams_joins_touching_pieces_up_to_the_cap():
    s = [_spec(3, 0, 64), _spec(3, 64, 128), _spec(3, 128, 192), _spec(4, 192, 256), _spec(3, 256, 320, dsts=(1,))]
    merged = merge_streams(s, cap_bits=1e9)
    assert [(m.src, m.oc_lo, m.oc_hi) for m in merged] == [(3, 0, 192), (4, 192, 256), (3, 256, 320)]
    assert merged[0].bits == 3 * s[0].bits
    capped = merge_streams(s, cap_bits=2 * s[0].bits)
    assert [(m.oc_lo, m.oc_hi) for m in capped][:2] == [(0, 128), (128, 192)]
    assert merge_streams([_spec(3, 0, 64, px=(0, 5)), _spec(3, 64, 128, px=(5, 10))], 1e9) == \
        [_spec(3, 0, 64, px=(0, 5)), _spec(3, 64, 128, px=(5, 10))]


def test_host_groups_keep_streams_per_array_under_the_cap():
    base = [(a, 64 * a, 64 * (a + 1)) for a in range(8)]
    pieces = base + [(8 + a, 64 * a, 64 * (a + 1)) for a in range(8)]  # a second copy elsewhere
    readers = [(a, 0, 512) for a in range(8, 16)]  # a 1x1 conv reading every channel on 8 arrays
    degree: dict[int, int] = {}
    groups = choose_host_groups(base, pieces, readers, degree, degree_cap=4)
    assert groups[0][1] == 0 and groups[-1][2] == 512
    assert all(a[2] == b[1] for a, b in zip(groups, groups[1:]))
    assert 1 < len(groups) < 8
    assert max(degree[h] for h, _, _ in groups) <= 4


def test_bus_bits_broadcast_counts_copies_once():
    chip = JSSC2022
    a = TileWork("l", 0, 0, 100, 0, 64, 10, weight_key=("l", 0, 0))
    b = dataclasses.replace(a, core=1)
    c = TileWork("m", 1, 100, 50, 0, 64, 10)
    assert bus_bits([a, b, c], chip) == a.weight_bits + c.weight_bits
    off = dataclasses.replace(chip, weight_load=dataclasses.replace(chip.weight_load, broadcast_copies=False))
    assert bus_bits([a, b, c], off) == 2 * a.weight_bits + c.weight_bits
    assert load_time_s([a, b, c], off) > load_time_s([a, b, c], chip)


def test_broadcast_switch_changes_only_the_load_time():
    chip = small_chip(2, 2, 144, 32)
    g = chain_qgraph(chip, [("conv", 16, 3), ("conv", 16, 3), ("conv", 16, 3), ("conv", 16, 3), ("gap",),
                            ("linear", 10)], (8, 12, 12))
    prog = compile_qgraph(g, chip, batch=8)
    assert len(prog.phases) > 1 and any(c.n_copies > 1 for ph in prog.phases for c in ph.copies)
    off = dataclasses.replace(chip, weight_load=dataclasses.replace(chip.weight_load, broadcast_copies=False))
    on_est, off_est = estimate_program(prog), estimate_program(dataclasses.replace(prog, chip=off))
    assert sum(p.load_time_s for p in off_est.phases) > sum(p.load_time_s for p in on_est.phases)
    assert [p.stage_time_s for p in off_est.phases] == [p.stage_time_s for p in on_est.phases]


def test_resnet50_maps_with_balanced_phases():
    """ResNet-50's topology (random weights): few phases, the stem spread, batch from the load share."""
    g = resnet_qgraph(JSSC2022)
    prog = compile_qgraph(g, JSSC2022)
    prog.verify()
    assert len(prog.phases) <= 30
    assert 16 <= prog.batch <= 128 and "5%" in prog.batch_reason
    assert prog.predicted["load_fraction"] <= 0.05 + 1e-9
    assert prog.predicted["throughput_img_s"] >= 190  # was 72 img/s with one copy of the stem
    stem = [c for c in prog.phases[0].copies if c.layer == "conv1"]
    assert len(stem) >= JSSC2022.n_cores // 2


@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_other_objectives_still_compile_multi_phase(objective):
    chip = small_chip(2, 2, 144, 64)
    g = chain_qgraph(chip, [("conv", 16, 3), ("conv", 32, 3), ("conv", 32, 3), ("gap",), ("linear", 10)], (8, 8, 8))
    prog = compile_qgraph(g, chip, objective=objective)
    prog.verify()
    assert Program.from_json(prog.to_json()) == prog


@pytest.mark.parametrize("grid", [(2, 2), (4, 4)])
def test_mini_resnet_programs_compute_the_reference(grid):
    """Residual adds on grouped SIMD hosts, merged and pixel-aware streams, copies and phases:
    the simulator's functional run of the Program equals the reference executor bit for bit."""
    np = pytest.importorskip("numpy")
    from imcflow.quant.reference import run_qgraph
    from imcflow.sim.functional import run_program
    chip = small_chip(grid[0], grid[1], 144, 64)
    g = resnet_qgraph(chip, blocks=(1, 2), width=8, in_shape=(3, 16, 16), classes=10)
    prog = compile_qgraph(g, chip)
    prog.verify()
    assert any(c.n_copies > 1 for ph in prog.phases for c in ph.copies)
    assert (len(prog.phases) > 1) == (grid == (2, 2))
    x = np.random.default_rng(0).integers(0, 256, size=(2, 3, 16, 16))
    assert np.array_equal(run_program(prog, x, "bit_true"), run_qgraph(g, x, "bit_true", chip))
