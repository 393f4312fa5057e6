"""The spine test: the simulator running a compiled Program gives exactly the reference executor's
outputs (ideal and bit_true), whatever mapping the compiler chose; and the timing model agrees
with the compiler's analytic model on single-phase programs."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from qgraph_factory import random_qgraph  # noqa: E402

from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import SimError  # noqa: E402
from imcflow.ir.program import Program  # noqa: E402
from imcflow.quant.fast_exec import run_qgraph_fast  # noqa: E402
from imcflow.quant.reference import run_qgraph  # noqa: E402
from imcflow.sim.functional import FunctionalStats, run_program  # noqa: E402
from imcflow.sim.report import Features, make_report, simulate_timing  # noqa: E402

compile_qgraph = pytest.importorskip("imcflow.compiler.pipeline").compile_qgraph


def _compile(q, chip):
    from imcflow.errors import CompileError
    try:
        return compile_qgraph(q, chip)
    except CompileError as exc:  # the spine covers every network the compiler accepts
        pytest.skip(f"compiler rejects this network: {exc}")


def _inputs(q, n, seed):
    return np.random.default_rng(seed).integers(q.input.min_int, q.input.max_int + 1, size=(n, *q.input.shape))


@pytest.mark.parametrize("seed", range(8))
def test_random_networks_on_tiny_equal_reference(seed):
    q = random_qgraph(seed, TINY)
    prog = _compile(q, TINY)
    x = _inputs(q, 3, seed)
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, TINY)), (seed, mode)


@pytest.mark.parametrize("seed", range(6))
def test_random_networks_with_activation_tables_equal_reference(seed):
    """Random step-function tables (not monotonic) in place of ReLU on about half the layers: the
    compiled program, the reference and the fast executor agree, also after a JSON round trip."""
    q = random_qgraph(seed, TINY, tables=True)
    assert any(n.requant.has_table for n in q.mvm_nodes())
    prog = Program.from_json(_compile(q, TINY).to_json())
    x = _inputs(q, 3, seed)
    for mode in ("ideal", "bit_true"):
        want = run_qgraph(q, x, mode, TINY)
        assert np.array_equal(run_program(prog, x, mode), want), (seed, mode)
        assert np.array_equal(run_qgraph_fast(q, x, mode, TINY), want), (seed, mode)


def test_program_round_trips_json_and_still_runs():
    q = random_qgraph(1, TINY)
    prog = Program.from_json(compile_qgraph(q, TINY).to_json())
    x = _inputs(q, 2, 0)
    assert np.array_equal(run_program(prog, x, "bit_true"), run_qgraph(q, x, "bit_true", TINY))


def test_broken_program_is_caught_not_computed():
    import dataclasses
    q = random_qgraph(0, TINY)
    prog = compile_qgraph(q, TINY)
    ph = prog.phases[0]
    # drop every RECV on one core: its MVMs have no input
    cores = list(ph.cores)
    cp = cores[0]
    tasks = tuple(dataclasses.replace(t, instrs=tuple(i for i in t.instrs if i.op.value != "recv")) for t in cp.tasks)
    cores[0] = dataclasses.replace(cp, tasks=tasks)
    bad = dataclasses.replace(prog, phases=(dataclasses.replace(ph, cores=tuple(cores)),) + prog.phases[1:])
    with pytest.raises(SimError):
        run_program(bad, _inputs(q, 2, 0), "bit_true")


def test_analog_mode_runs_and_stays_close():
    q = random_qgraph(2, TINY)
    prog = compile_qgraph(q, TINY)
    x = _inputs(q, 2, 1)
    a = run_program(prog, x, "analog", seed=3)
    assert a.shape == run_qgraph(q, x, "bit_true", TINY).shape
    assert np.array_equal(a, run_program(prog, x, "analog", seed=3))   # seeded


@pytest.mark.parametrize("seed", range(3))
def test_single_phase_timing_agrees_with_perf_model(seed):
    q = random_qgraph(seed, TINY)
    prog = compile_qgraph(q, TINY)
    if len(prog.phases) != 1:
        pytest.skip("multi-phase program")
    r = make_report(prog, simulate_timing(prog, images=8))
    assert r.throughput_img_s == pytest.approx(prog.predicted["throughput_img_s"], rel=0.05)


def test_zero_bitplane_skipping_never_slows_and_needs_stats():
    q = random_qgraph(0, TINY)
    prog = compile_qgraph(q, TINY)
    x = _inputs(q, 4, 0) // 4    # small inputs: high bit-planes all zero
    st = FunctionalStats()
    run_program(prog, x, "bit_true", stats=st)
    base = simulate_timing(prog, images=6)
    fast = simulate_timing(prog, images=6, features=Features(skip_zero_bitplanes=True), stats=st)
    assert fast.throughput_img_s >= base.throughput_img_s
    with pytest.raises(SimError, match="measured activity"):
        simulate_timing(prog, features=Features(skip_zero_bitplanes=True))


def _cnn11_qgraph():
    from imcflow.report.flow import load_qgraph
    return load_qgraph("cifar10-cnn11", JSSC2022)[0]


def test_cnn11_on_jssc2022_equals_reference():
    q = _cnn11_qgraph()
    prog = compile_qgraph(q, JSSC2022)
    x = _inputs(q, 2, 0)
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, JSSC2022)), mode


@pytest.mark.parametrize("name", ["mlp-tiny", "cnn-tiny", "resnet-tiny"])
def test_tiny_zoo_networks_equal_reference(name):
    from imcflow.pipeline import load_qgraph
    q = load_qgraph(name, TINY, trained=False)
    prog = _compile(q, TINY)
    x = _inputs(q, 3, 0)
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, TINY)), (name, mode)


def test_activity_stats_count_planes_and_ones():
    q = random_qgraph(0, TINY)
    prog = compile_qgraph(q, TINY)
    first = [t for t in prog.phases[0].tiles if t.layer == q.nodes[0].name]
    st = FunctionalStats()
    run_program(prog, np.zeros((2, *q.input.shape), dtype=np.int64), "bit_true", stats=st)
    assert all(st.nonzero_planes[t.tile_id] == 0 and st.ones[t.tile_id] == 0 for t in first)
    st = FunctionalStats()
    full = np.full((2, *q.input.shape), q.input.max_int, dtype=np.int64)
    run_program(prog, full, "bit_true", stats=st)
    for t in first:   # every pixel's window holds at least one all-ones input: every plane is evaluated
        assert st.nonzero_planes[t.tile_id] == st.mvm_vectors[t.tile_id] * q.input.bits
