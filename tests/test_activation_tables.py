"""Activations other than ReLU/clamp (SiLU, GELU, LeakyReLU, ...), fused into a layer's requantisation
(or a residual add) as a table of thresholds on the fixed-point pre-activation (imcflow.quant.act_table).

(a) the table equals its slow float64 definition for every integer pre-activation tried, for every
    supported function; the numpy and torch requant paths equal each other, with and without an
    ADC scale shift; (b) the spine: a network with such activations compiles, and the simulator
    equals the reference executor, which equals an independent executor and tracks float; the
    fast executor equals the reference in all modes; (c) JSON, refusals, SIMD cost, QAT export.

Model assumption [A]: the SIMD evaluates a table by binary search, ceil(log2(codes)) compare
steps per output value on top of the requant's multiply-add and round."""

import dataclasses
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from onnx_testing import random_inputs  # noqa: E402
from quant_testnets import _conv, assert_qat_export_matches, images, plain_int_exec  # noqa: E402

from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import QuantError  # noqa: E402
from imcflow.ir.activations import ACTIVATIONS  # noqa: E402
from imcflow.ir.graph import Graph, Node, Op  # noqa: E402
from imcflow.ir.graph_exec import run_graph  # noqa: E402
from imcflow.ir.program import InstrKind  # noqa: E402
from imcflow.ir.qgraph import ActTable, QGraph, QTensor, graphs_equal, simd_lane_ops  # noqa: E402
from imcflow.perf.model import simd_ops_of  # noqa: E402
from imcflow.quant.act_table import activation_table, table_reference  # noqa: E402
from imcflow.quant.calibrate import calibrate  # noqa: E402
from imcflow.quant.fast_exec import requant_torch, run_qgraph_fast  # noqa: E402
from imcflow.quant.qat import export_qgraph, prepare_qat  # noqa: E402
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph, run_qgraph_all  # noqa: E402
from imcflow.quant.requant import derive_requant  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402

SHAPE = (3, 8, 8)


# --- (a) the table -----------------------------------------------------------------------------------

def _dense(thresholds: np.ndarray, n: int = 40001) -> np.ndarray:
    span = int(max(abs(int(thresholds[0])), abs(int(thresholds[-1])))) * 3 // 2 + 50 if thresholds.size else 1000
    grid = np.linspace(-span, span, n).astype(np.int64)
    return np.unique(np.concatenate([grid, thresholds - 1, thresholds, thresholds + 1]))


@pytest.mark.parametrize("fn", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bits, scale, shift", [(4, 0.25, 12), (4, 0.07, 30), (8, 0.02, 20), (2, 0.5, 6),
                                                (4, 1.4e-5, 20)])
def test_table_equals_its_slow_definition(fn, bits, scale, shift):
    non_neg = ACTIVATIONS[fn].non_negative
    lo, hi = (0, (1 << bits) - 1) if non_neg else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    alpha = {"leaky_relu": 0.1, "elu": 0.7}.get(fn)
    t, c = activation_table(fn, alpha, shift, scale, lo, hi)
    assert np.all(np.diff(t) > 0) and c.shape == (len(t) + 1,)
    assert c.min() >= lo and c.max() <= hi and len(np.unique(c)) > 1
    u = _dense(t)
    assert np.array_equal(ActTable(fn, alpha, t, c).apply(u), table_reference(fn, alpha, u, shift, scale, lo, hi))


def test_non_monotonic_functions_keep_their_dip():
    """SiLU's minimum (-0.278) is one output step at scale 0.25: the table goes 0, -1, 0, 1, ..."""
    t, c = activation_table("silu", None, 10, 0.25, -8, 7)
    assert c[:3].tolist() == [0, -1, 0] and c[-1] == 7


def _table_requant(fn="silu", alpha=None, scale=0.2):
    out = QTensor(shape=(3,), bits=4, signed=True, scale=scale)
    return derive_requant("t", 0.05, np.array([0.01, 0.03, 0.02]), np.array([0.1, -0.2, 0.0]), out,
                          activation=(fn, alpha))


@pytest.mark.parametrize("num, den", [(1, 0), (36, 8), (1152, 8)])
def test_requant_apply_is_the_table_of_the_exact_pre_activation(num, den):
    rq = _table_requant("leaky_relu", 0.1)
    assert rq.has_table and rq.table.activation == "leaky_relu" and rq.table.alpha == 0.1
    acc = np.random.default_rng(0).integers(-3000, 3000, size=(64, 3))
    u = acc * (num * rq.multiplier) + (rq.bias << den)
    want = table_reference("leaky_relu", 0.1, u, rq.shift + den, 0.2, rq.out_min, rq.out_max)
    assert np.array_equal(rq.apply(acc, num, den), want)
    # the torch path (float64 while exact) equals it; and its int64 path for huge accumulators
    assert np.array_equal(requant_torch(rq, torch.from_numpy(acc), num, den).numpy(), want)
    huge = acc * (1 << 30)
    assert np.array_equal(requant_torch(rq, torch.from_numpy(huge), num, den).numpy(), rq.apply(huge, num, den))


@pytest.mark.parametrize("den", [0, 8])
def test_both_requant_paths_step_exactly_at_the_thresholds(den):
    """With multiplier 1 and bias 0 the pre-activation is the accumulator itself (shifted by ``den``),
    so the accumulators can sit on every threshold and either side of it."""
    rq = _table_requant("gelu")
    unit = dataclasses.replace(rq, multiplier=np.ones(3, dtype=np.int64), bias=np.zeros(3, dtype=np.int64))
    u = np.repeat(_dense(rq.table.thresholds, 2001)[:, None], 3, axis=1)
    want = table_reference("gelu", None, u, rq.shift, 0.2, rq.out_min, rq.out_max)
    assert np.array_equal(unit.apply(u << den, 1, den), want)
    assert np.array_equal(requant_torch(unit, torch.from_numpy(u << den), 1, den).numpy(), want)


def test_table_lane_ops_are_a_binary_search():
    rq = _table_requant()
    assert rq.lane_ops == 2 + math.ceil(math.log2(len(rq.table.codes)))
    plain = derive_requant("p", 0.05, np.array([0.01]), None, QTensor((1,), 4, True, 0.2))
    assert plain.lane_ops == 2 and not plain.has_table


# --- (b) a network with table activations ------------------------------------------------------------

def _act(name, src, fn, shape, alpha=None):
    attrs = {"fn": fn} if alpha is None else {"fn": fn, "alpha": alpha}
    return Node(name, Op.ACTIVATION, (src,), attrs, out_shape=shape)


def act_graph(seed: int = 0) -> Graph:
    """conv+SiLU -> conv+LeakyReLU(0.1) -> maxpool -> conv1x1+GELU -> conv1x1+sigmoid -> gap -> linear."""
    rng = np.random.default_rng(seed)
    nodes = [
        _conv("c1", "x", 3, 16, 3, rng), _act("a1", "c1", "silu", (16, 8, 8)),
        _conv("c2", "a1", 16, 16, 3, rng), _act("a2", "c2", "leaky_relu", (16, 8, 8), 0.1),
        Node("mp", Op.MAXPOOL, ("a2",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}, out_shape=(16, 4, 4)),
        _conv("c3", "mp", 16, 12, 1, rng, out_hw=(4, 4)), _act("a3", "c3", "gelu", (12, 4, 4)),
        _conv("c4", "a3", 12, 8, 1, rng, out_hw=(4, 4)), _act("a4", "c4", "sigmoid", (8, 4, 4)),
        Node("gap", Op.GLOBAL_AVGPOOL, ("a4",), out_shape=(8, 1, 1)),
        Node("flat", Op.FLATTEN, ("gap",), out_shape=(8,)),
        Node("fc", Op.LINEAR, ("flat",), params={"weight": rng.normal(0, 0.5, size=(10, 8)).astype(np.float32),
                                                 "bias": rng.normal(0, 0.1, size=10).astype(np.float32)},
             out_shape=(10,)),
    ]
    g = Graph(name="acts", input_name="x", input_shape=SHAPE, nodes=tuple(nodes), output="fc")
    g.verify()
    return g


def _qgraph(chip=TINY) -> QGraph:
    return calibrate(act_graph(), images(64, SHAPE), chip)


def test_activations_fuse_into_their_layers_as_tables():
    q = _qgraph()
    tables = {n.name: n.requant.table.activation for n in q.nodes if n.is_mvm and n.requant.has_table}
    assert tables == {"c1": "silu", "c2": "leaky_relu", "c3": "gelu", "c4": "sigmoid"}
    assert q.spec("c1").signed and not q.spec("c4").signed  # a sigmoid's output is never negative
    assert q.node("c2").requant.table.alpha == 0.1


@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_network_equals_reference(chip):
    q = _qgraph(chip)
    prog = compile_qgraph(q, chip)
    x = random_inputs(q, 3, 0)
    for mode in ("ideal", "bit_true"):
        want = run_qgraph(q, x, mode, chip)
        assert len(np.unique(want)) > 5
        assert np.array_equal(run_program(prog, x, mode), want), mode


@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_fast_executor_equals_reference(mode):
    q = _qgraph()
    x = random_inputs(q, 4, 1)
    assert np.array_equal(run_qgraph_fast(q, x, mode, TINY, seed=3), run_qgraph(q, x, mode, TINY, seed=3))


def test_reference_equals_an_independent_executor_and_tracks_float():
    q = _qgraph()
    x = np.random.default_rng(2).integers(q.input.min_int, q.input.max_int + 1, size=(3, *q.input.shape))
    assert np.array_equal(run_qgraph(q, x, "ideal", TINY), plain_int_exec(q, x))
    xf = images(16, SHAPE, seed=4)
    got = dequantize_output(q, run_qgraph(q, quantize_input(q, xf), "ideal", TINY))
    want = run_graph(act_graph(), xf)
    assert np.abs(got - want).max() / np.abs(want).max() < 0.25


def test_json_round_trip_keeps_the_tables():
    q = _qgraph()
    back = QGraph.from_json(q.to_json())
    assert graphs_equal(q, back)
    assert np.array_equal(back.node("c1").requant.table.codes, q.node("c1").requant.table.codes)
    x = random_inputs(q, 2, 5)
    assert np.array_equal(run_qgraph(back, x, "bit_true", TINY), run_qgraph(q, x, "bit_true", TINY))


def test_a_broken_table_is_refused_by_verify():
    obj = json.loads(_qgraph().to_json())
    for n in obj["nodes"]:
        if n["name"] == "c1":  # one code too few
            n["requant"]["table"]["codes"] = n["requant"]["table"]["thresholds"]
    with pytest.raises(QuantError, match="'c1'.*silu table"):
        QGraph.from_json(json.dumps(obj)).verify()


def test_requant_instructions_cost_the_search():
    q = _qgraph()
    prog = compile_qgraph(q, TINY)
    for ins in (i for ph in prog.phases for c in ph.cores for t in c.tasks for i in t.instrs
                if i.op is InstrKind.REQUANT):
        n = (ins.oc_hi - ins.oc_lo) * (ins.px_hi - ins.px_lo)
        want = 2 if ins.layer == "fc" else 2 + math.ceil(math.log2(len(q.node(ins.layer).requant.table.codes)))
        assert simd_ops_of(ins, q) == want * n


def _replace(g: Graph, nodes) -> Graph:
    return Graph(name=g.name, input_name=g.input_name, input_shape=g.input_shape, nodes=tuple(nodes), output=g.output)


def _add_graph(fn: str = "silu") -> Graph:
    """conv+ReLU -> conv -> add(conv, relu) -> ``fn`` -> gap -> flatten -> linear."""
    rng = np.random.default_rng(0)
    nodes = [_conv("c1", "x", 3, 8, 3, rng), Node("r1", Op.RELU, ("c1",), out_shape=(8, 8, 8)),
             _conv("c2", "r1", 8, 8, 3, rng), Node("add", Op.ADD, ("c2", "r1"), out_shape=(8, 8, 8)),
             _act("s", "add", fn, (8, 8, 8)), Node("gap", Op.GLOBAL_AVGPOOL, ("s",), out_shape=(8, 1, 1)),
             Node("flat", Op.FLATTEN, ("gap",), out_shape=(8,)),
             Node("fc", Op.LINEAR, ("flat",), params={"weight": rng.normal(0, 0.5, size=(10, 8)).astype(np.float32)},
                  out_shape=(10,))]
    g = Graph(name="addact", input_name="x", input_shape=SHAPE, nodes=tuple(nodes), output="fc")
    g.verify()
    return g


@pytest.mark.parametrize("fn", ["silu", "gelu", "tanh"])
def test_an_activation_after_an_add_is_a_table_on_the_sum(fn):
    q = calibrate(_add_graph(fn), images(32, SHAPE), TINY)
    add = q.node("add")
    assert add.add_table is not None and add.add_table.activation == fn and q.spec("add").signed
    x = random_inputs(q, 3, 2)
    vals = run_qgraph_all(q, x, "bit_true", TINY)
    v = vals["c2"] * add.add_multipliers[0] + vals["c1"] * add.add_multipliers[1]
    want = table_reference(fn, None, v, add.add_shift, add.out.scale, add.out.min_int, add.out.max_int)
    assert np.array_equal(vals["add"], want) and len(np.unique(want)) > 3
    assert np.array_equal(run_qgraph(q, x, "ideal", TINY), plain_int_exec(q, x))
    prog = compile_qgraph(q, TINY)
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, TINY)), mode
        assert np.array_equal(run_qgraph_fast(q, x, mode, TINY), run_qgraph(q, x, mode, TINY)), mode
    assert graphs_equal(q, QGraph.from_json(q.to_json()))
    assert simd_lane_ops(q, "add") == (2 + add.add_table.search_ops) * 8 * 8 * 8
    net = prepare_qat(_add_graph(fn), TINY, calib=images(16, SHAPE))
    assert_qat_export_matches(net, export_qgraph(net), SHAPE, TINY)


def test_an_activation_after_a_pool_is_refused_by_name():
    g = act_graph()
    nodes = [n for n in g.nodes if n.name != "a3"]
    nodes = [Node(n.name, n.op, ("mp",) if n.name == "c3" else n.inputs, n.attrs, n.params, n.out_shape)
             for n in nodes]
    i = [n.name for n in nodes].index("c3")
    pooled = _act("pa", "mp", "tanh", (16, 4, 4))
    nodes = nodes[:i] + [pooled] + [Node("c3", Op.CONV, ("pa",), nodes[i].attrs, nodes[i].params, nodes[i].out_shape)] \
        + nodes[i + 1:]
    nodes = [Node(n.name, n.op, ("c3",) if n.name == "c4" else n.inputs, n.attrs, n.params, n.out_shape) for n in nodes]
    with pytest.raises(QuantError, match=r"'pa' \(tanh\) follows 'mp', which is not a conv, linear or add"):
        calibrate(_replace(g, nodes), images(8, SHAPE), TINY)


def test_qat_trains_through_the_activation_and_exports_the_same_integers():
    torch.manual_seed(0)
    net = prepare_qat(act_graph(), TINY, calib=images(32, SHAPE))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    loss = net.set_mode("qat")(torch.from_numpy(images(8, SHAPE))).pow(2).mean()
    loss.backward()
    assert net.weight["c1"].grad is not None and net.weight["c1"].grad.abs().sum() > 0
    opt.step()
    qg = export_qgraph(net)
    assert qg.node("c3").requant.table.activation == "gelu"
    assert_qat_export_matches(net, qg, SHAPE, TINY)
