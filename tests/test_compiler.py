"""Compiler: tiling, placement, routing, codegen on random small networks and chips."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imcflow.cli import main as cli_main
from imcflow.compiler import compile_qgraph
from imcflow.compiler.tiling import psum_bits, tile_graph
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


def _kernel(node) -> tuple[int, int]:
    return (node.weight.shape[2], node.weight.shape[3]) if node.weight.ndim == 4 else (1, 1)


def check_weights_covered(prog: Program) -> None:
    """Every weight of every layer lands in exactly one tile of each copy: over the phases, every
    (output channel, input channel) of the layer is held exactly once (each phase's copies all
    hold the same block: its output-channel range and its group of row tiles, all of them unless
    the layer spills partial sums), the phases of one output channel hold its row tiles in order,
    and tiles have the right size."""
    for node in prog.qgraph.mvm_nodes():
        c_out, c_in = node.weight.shape[:2]
        kh, kw = _kernel(node)
        n_rt = len(row_tiles(c_in, kh, kw, prog.chip.array.rows))
        per_phase = 0
        covered = np.zeros((c_out, c_in), dtype=int)
        for phase in prog.phases:
            copies = [c for c in phase.copies if c.layer == node.name]
            if not copies:
                continue
            lo, hi = copies[0].oc_lo, copies[0].oc_hi
            r0, r1 = copies[0].row_group(n_rt)
            ch_lo, ch_hi = row_tiles(c_in, kh, kw, prog.chip.array.rows)[r0][0], \
                row_tiles(c_in, kh, kw, prog.chip.array.rows)[r1 - 1][1]
            assert all((c.oc_lo, c.oc_hi, c.row_group(n_rt)) == (lo, hi, (r0, r1)) for c in copies), node.name
            assert sorted(c.copy for c in copies) == list(range(copies[0].n_copies)), node.name
            assert (covered[lo:hi, :ch_lo] == 1).all() and (covered[lo:hi, ch_lo:] == 0).all(), node.name
            per_phase += 1
            for copy in range(copies[0].n_copies):
                seen = np.zeros((c_out, c_in), dtype=int)
                for t in phase.tiles:
                    if t.layer == node.name and t.copy == copy:
                        assert t.rows == (t.ch_hi - t.ch_lo) * kh * kw and t.cols == (t.oc_hi - t.oc_lo) * node.w_bits
                        seen[t.oc_lo:t.oc_hi, t.ch_lo:t.ch_hi] += 1
                assert (seen[lo:hi, ch_lo:ch_hi] == 1).all(), (node.name, copy)
                assert seen.sum() == (hi - lo) * (ch_hi - ch_lo), (node.name, copy)
                if copy == 0:
                    covered += seen
        assert per_phase >= 1 and (covered == 1).all(), node.name


def oversized_layers(g, chip: ChipConfig) -> set[str]:
    """Layers with more row tiles than the chip has arrays whose worst-case sum does not fit the
    SIMD accumulator: the only ones the compiler may reject (their partial sums must be spilled
    between phases at psum_bits; every other network must compile)."""
    tilings = tile_graph(g, chip)
    return {n.name for n in g.mvm_nodes() if len(row_tiles(n.weight.shape[1], *_kernel(n), chip.array.rows)) > chip.n_cores
            and psum_bits(tilings[n.name], chip) > chip.simd.accumulator_bits}


def check_compiles_or_rejects_clearly(g, chip: ChipConfig, objective: str = "throughput") -> Program | None:
    """The compiled, verified, round-tripped Program; or None when the compiler rejects the network
    with a CompileError naming one of its :func:`oversized_layers` and the limit (never for another
    network, never another exception)."""
    big = oversized_layers(g, chip)
    try:
        prog = compile_qgraph(g, chip, objective=objective)
    except CompileError as exc:
        named = [name for name in big if f"layer {name!r}" in str(exc)]
        assert named and "simd.accumulator_bits" in str(exc) and f"{chip.n_cores} arrays" in str(exc), (big, str(exc))
        return None
    prog.verify()
    check_weights_covered(prog)
    again = Program.from_json(prog.to_json())
    assert again == prog
    assert again.to_json() == prog.to_json()
    assert estimate_program(prog).throughput_img_s > 0
    for phase in prog.phases:  # every row tile used by MVMs is the reference executor's split
        for t in phase.tiles:
            node = g.node(t.layer)
            assert row_tiles(node.weight.shape[1], *_kernel(node), chip.array.rows)[t.row_tile] == (t.ch_lo, t.ch_hi)
    return prog


# More examples locally: IMCFLOW_HYPOTHESIS_EXAMPLES=500 python -m pytest -q tests/test_compiler.py -k random
EXAMPLES = int(os.environ.get("IMCFLOW_HYPOTHESIS_EXAMPLES", "25"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), grid=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       rows=st.sampled_from([36, 72, 144]), cols=st.sampled_from([16, 32, 64]),
       objective=st.sampled_from(["throughput", "latency", "energy"]),
       head=st.sampled_from(["gap", "flatten"]), n_conv=st.integers(1, 4))
def test_random_networks_compile_verify_and_round_trip(seed, grid, rows, cols, objective, head, n_conv):
    chip = small_chip(grid[0], grid[1], rows, cols)
    g = random_qgraph(seed, chip, n_conv=n_conv, in_shape=(3, 6, 6), max_channels=12, head=head)
    prog = check_compiles_or_rejects_clearly(g, chip, objective)
    assert prog is not None or oversized_layers(g, chip)


@pytest.mark.parametrize("seed", range(12))
def test_random_networks_on_tiny(seed):
    """The simulator's networks (random_qgraph defaults on TINY), seeds 3 and 7 included."""
    g = random_qgraph(seed, TINY)
    prog = check_compiles_or_rejects_clearly(g, TINY)
    assert prog is not None or oversized_layers(g, TINY)


def test_seed7_fc_wider_than_tiny_spills_partial_sums():
    """fc0 needs 14 row tiles, TINY has 4 arrays: its row tiles are summed over several phases."""
    g = random_qgraph(7, TINY)
    prog = compile_qgraph(g, TINY)
    groups = [c.row_group(14) for ph in prog.phases for c in ph.copies if c.layer == "fc0" and c.copy == 0]
    assert len(groups) > 1 and groups[0][0] == 0 and groups[-1][1] == 14
    check_weights_covered(prog)
    narrow = dataclasses.replace(TINY, simd=dataclasses.replace(TINY.simd, accumulator_bits=16))
    with pytest.raises(CompileError, match=r"layer 'fc0': its 14 row tiles do not fit the 4 arrays of 72x32"
                                           r".*needs \d+ b.*simd.accumulator_bits"):
        compile_qgraph(g, narrow)


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


def test_layer_wider_than_chip_spills_or_names_the_accumulator_limit():
    chip = small_chip(1, 2, 72, 32)
    g = chain_qgraph(chip, [("conv", 4, 3), ("flatten",), ("linear", 10)], (40, 4, 4))
    check_weights_covered(compile_qgraph(g, chip))
    tiny_acc = dataclasses.replace(chip, simd=dataclasses.replace(chip.simd, accumulator_bits=8))
    with pytest.raises(CompileError, match="c0.*row tiles do not fit the 2 arrays.*simd.accumulator_bits"):
        compile_qgraph(g, tiny_acc)


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


def _softsign_onnx(path) -> None:
    """A conv followed by a Softsign (no chip mapping), as an ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Softsign", ["c"], ["y"], name="gate")], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _saved(tmp_path, g) -> str:
    path = tmp_path / "net.qgraph.json"
    g.save(str(path))
    return str(path)


@pytest.mark.parametrize("case", ["unsupported_op", "bits_beyond_array", "kernel_deeper_than_array",
                                  "layer_wider_than_chip", "zero_grid_rows", "zero_grid_cols"])
def test_impossible_networks_exit_2_naming_layer_and_limit(case, tmp_path, capsys):
    """Each kind of network the chip cannot run: exit 2, one line naming the layer/field and the limit."""
    small = chain_qgraph(TINY, [("conv", 4, 3), ("gap",), ("linear", 10)], (3, 6, 6))
    if case == "unsupported_op":
        _softsign_onnx(tmp_path / "bad.onnx")
        argv, words = [str(tmp_path / "bad.onnx"), "--chip", "tiny"], ["'gate'", "Softsign"]
    elif case == "bits_beyond_array":   # 8-b input pixels on a 4-b array
        argv, words = [_saved(tmp_path, small), "--chip", "tiny", "--set", "array.max_bits=4"], \
            ["layer 'c0'", "8", "array.max_bits"]
    elif case == "kernel_deeper_than_array":
        argv, words = [_saved(tmp_path, small), "--chip", "tiny", "--set", "array.rows=8"], \
            ["layer 'c0'", "9 rows per input channel", "8"]
    elif case == "layer_wider_than_chip":  # seed 7: fc0's 14 row tiles spill sums wider than 16 b
        argv, words = [_saved(tmp_path, random_qgraph(7, TINY)), "--chip", "tiny", "--set", "simd.accumulator_bits=16"], \
            ["layer 'fc0'", "14 row tiles", "4 arrays of 72x32", "simd.accumulator_bits"]
    else:
        field = case.removeprefix("zero_")
        argv, words = [_saved(tmp_path, small), "--chip", "tiny", "--set", f"{field}=0"], [field]
    assert cli_main(["compile", *argv, "-o", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imcflow: error:") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "p.json").exists()
