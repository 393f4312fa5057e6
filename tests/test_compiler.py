"""Compiler: tiling, placement, routing, codegen on random small networks and chips."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imcflow.cli import main as cli_main
from imcflow.compiler import compile_qgraph
from imcflow.config.chip import AdcConfig, ArrayConfig, ChipConfig
from imcflow.config.presets import JSSC2022, TINY
from imcflow.errors import CompileError, ConfigError
from imcflow.ir.program import InstrKind, Program
from imcflow.ir.qgraph import row_tiles
from imcflow.perf.model import estimate_program

from qgraph_factory import chain_qgraph, random_qgraph

CNN11 = [("conv", 32, 3), ("conv", 64, 3), ("maxpool",), ("conv", 128, 3), ("conv", 128, 3), ("maxpool",),
         ("conv", 128, 3), ("conv", 128, 3), ("maxpool",), ("conv", 128, 3), ("conv", 128, 3), ("conv", 128, 1),
         ("conv", 128, 1), ("gap",), ("linear", 10)]


def small_chip(grid_rows: int, grid_cols: int, rows: int, cols: int) -> ChipConfig:
    return dataclasses.replace(TINY, name="small", grid_rows=grid_rows, grid_cols=grid_cols,
                               array=ArrayConfig(rows=rows, cols=cols), adc=AdcConfig(full_scales_rows=(rows, 9)))


def check_weights_covered(prog: Program) -> None:
    """Every weight of every layer lands in exactly one tile per copy, with the right values' place."""
    for node in prog.qgraph.mvm_nodes():
        w = node.weight.reshape(node.c_out, -1) if node.weight.ndim == 2 else node.weight
        c_out, c_in = node.weight.shape[:2]
        kh, kw = (node.weight.shape[2], node.weight.shape[3]) if node.weight.ndim == 4 else (1, 1)
        for phase in prog.phases:
            for copy in {c.copy for c in phase.copies if c.layer == node.name}:
                seen = np.zeros((c_out, c_in), dtype=int)
                for t in phase.tiles:
                    if t.layer == node.name and t.copy == copy:
                        seen[t.oc_lo:t.oc_hi, t.ch_lo:t.ch_hi] += 1
                lo = next(c.oc_lo for c in phase.copies if c.layer == node.name)
                hi = next(c.oc_hi for c in phase.copies if c.layer == node.name)
                assert (seen[lo:hi] == 1).all(), node.name
                assert (seen[:lo] == 0).all() and (seen[hi:] == 0).all()
        del w


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), grid=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       rows=st.sampled_from([36, 72, 144]), cols=st.sampled_from([16, 32, 64]),
       objective=st.sampled_from(["throughput", "latency", "energy"]))
def test_random_networks_compile_verify_and_round_trip(seed, grid, rows, cols, objective):
    chip = small_chip(grid[0], grid[1], rows, cols)
    g = random_qgraph(seed, chip, n_conv=3, in_shape=(3, 6, 6), max_channels=12, head="gap")
    for node in g.mvm_nodes():  # the documented limit: one column tile's row tiles sit in one phase
        kh, kw = (node.weight.shape[2], node.weight.shape[3]) if node.weight.ndim == 4 else (1, 1)
        assume(len(row_tiles(node.weight.shape[1], kh, kw, rows)) <= chip.n_cores)
    prog = compile_qgraph(g, chip, objective=objective)
    prog.verify()
    check_weights_covered(prog)
    again = Program.from_json(prog.to_json())
    assert again == prog
    assert again.to_json() == prog.to_json()
    est = estimate_program(prog)
    assert est.throughput_img_s > 0
    # every row tile used by MVMs is the reference executor's split
    for phase in prog.phases:
        for t in phase.tiles:
            node = g.node(t.layer)
            kh, kw = (node.weight.shape[2], node.weight.shape[3]) if node.weight.ndim == 4 else (1, 1)
            assert row_tiles(node.weight.shape[1], kh, kw, chip.array.rows)[t.row_tile] == (t.ch_lo, t.ch_hi)


def test_cnn11_like_compiles_in_one_phase_with_copies():
    g = chain_qgraph(JSSC2022, CNN11, (3, 32, 32))
    prog = compile_qgraph(g, JSSC2022)
    assert len(prog.phases) == 1
    copies = {c.layer: c.n_copies for c in prog.phases[0].copies}
    assert copies["c0"] >= 2 and copies["c1"] >= 2  # the 32x32 front end is copied
    # the model: 32x32 layers copied -> well under the 409.6 us one copy of the 8-b first layer takes
    assert prog.predicted["stage_time_s"] < 130e-6
    check_weights_covered(prog)
    # small layers share arrays with others: fewer arrays used than tiles
    assert len({t.core for t in prog.phases[0].tiles}) <= JSSC2022.n_cores < len(prog.phases[0].tiles)


def test_multi_phase_batch_is_chosen_with_a_reason():
    chip = small_chip(2, 2, 72, 32)
    g = chain_qgraph(chip, [("conv", 16, 3), ("conv", 16, 3), ("conv", 16, 3), ("conv", 16, 3), ("gap",),
                            ("linear", 10)], (8, 6, 6))
    prog = compile_qgraph(g, chip)
    assert len(prog.phases) > 1
    assert prog.batch >= 1 and "batch" in prog.batch_reason
    assert prog.predicted["load_fraction"] <= 0.10 + 1e-9
    assert compile_qgraph(g, chip, objective="latency").batch == 1
    assert compile_qgraph(g, chip, batch=7).batch == 7


def test_kernel_too_deep_for_array_is_a_compile_error():
    chip = small_chip(2, 2, 8, 32)
    g = random_qgraph(1, TINY, n_conv=1, allow_add=False, allow_pool=False)
    g3 = chain_qgraph(TINY, [("conv", 4, 3), ("gap",), ("linear", 10)], (3, 6, 6))
    with pytest.raises(CompileError, match="c0.*9 rows per input channel"):
        compile_qgraph(g3, chip)
    del g


def test_layer_wider_than_chip_is_a_compile_error():
    chip = small_chip(1, 2, 72, 32)
    g = chain_qgraph(chip, [("conv", 4, 3), ("flatten",), ("linear", 10)], (40, 4, 4))
    with pytest.raises(CompileError, match="c0.*row tile.*do not fit the 2 arrays"):
        compile_qgraph(g, chip)


def test_zero_grid_is_a_config_error():
    with pytest.raises(ConfigError):
        dataclasses.replace(TINY, grid_rows=0)


def test_program_instructions_are_consistent():
    g = random_qgraph(5, TINY, head="gap")
    prog = compile_qgraph(g, TINY)
    for phase in prog.phases:
        mvms = [i for cp in phase.cores for t in cp.tasks for i in t.instrs if i.op == InstrKind.MVM]
        assert len(mvms) == len(phase.tiles)
        loads = [i for cp in phase.cores for i in cp.loads]
        assert sorted(i.tile for i in loads) == sorted(t.tile_id for t in phase.tiles)


def test_verify_catches_overlap_and_capacity():
    g = chain_qgraph(JSSC2022, CNN11, (3, 32, 32))
    prog = compile_qgraph(g, JSSC2022)
    ph = prog.phases[0]
    t0, t1 = ph.tiles[0], ph.tiles[1]
    bad_tile = dataclasses.replace(t1, core=t0.core, row_offset=t0.row_offset, col_offset=t0.col_offset)
    bad = dataclasses.replace(prog, phases=(dataclasses.replace(ph, tiles=(t0, bad_tile) + ph.tiles[2:]),))
    with pytest.raises(CompileError):
        bad.verify()
    narrow = dataclasses.replace(JSSC2022, ocn=dataclasses.replace(JSSC2022.ocn, tracks_per_channel=1))
    with pytest.raises(CompileError):
        dataclasses.replace(prog, chip=narrow).verify()


def test_cli_compile_and_show(tmp_path, capsys):
    g = random_qgraph(2, TINY, head="gap")
    qpath = tmp_path / "net.qgraph.json"
    g.save(str(qpath))
    out = tmp_path / "prog.json"
    assert cli_main(["compile", str(qpath), "--chip", "tiny", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "phase 0" in text and "predicted throughput_img_s" in text
    assert Program.load(str(out)) == compile_qgraph(g, TINY)
    assert cli_main(["show", str(out)]) == 0
    assert "Program random2" in capsys.readouterr().out


def test_cli_compile_error_exits_2(tmp_path):
    g = chain_qgraph(TINY, [("conv", 4, 3), ("gap",), ("linear", 10)], (3, 6, 6))
    qpath = tmp_path / "net.qgraph.json"
    g.save(str(qpath))
    r = subprocess.run([sys.executable, "-m", "imcflow", "compile", str(qpath), "--chip", "tiny",
                        "--set", "array.rows=8"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("imcflow: error:") and "9 rows per input channel" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
