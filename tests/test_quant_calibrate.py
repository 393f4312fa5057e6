"""Post-training calibration: Graph -> QGraph specs, weights, full scales, fusion and errors."""

import dataclasses

import numpy as np
import pytest

from imcflow.config import JSSC2022, TINY
from imcflow.errors import QuantError
from imcflow.frontend import run_graph
from imcflow.ir.graph import Node, Op
from imcflow.ir.qgraph import QGraph, graphs_equal, pick_full_scale, row_tiles
from imcflow.quant.calibrate import QuantSpec, calibrate, quantize_weight, weight_scales
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
from quant_testnets import every_op_graph, images


@pytest.fixture(scope="module")
def graph():
    return every_op_graph()


@pytest.fixture(scope="module")
def qg(graph):
    return calibrate(graph, images(32), TINY, QuantSpec(input_scale=1 / 255))


def test_structure_fuses_activations(qg):
    assert [n.name for n in qg.nodes] == ["c1", "c2", "add", "mp", "c3", "cat", "ap", "gap", "flat", "fc"]
    assert qg.node("add").inputs == ("c2", "c1") and qg.node("cat").inputs == ("c3", "mp")
    assert qg.output == "fc"


def test_specs(qg):
    assert (qg.input.bits, qg.input.signed, qg.input.scale) == (8, False, 1 / 255)
    assert not qg.node("c1").out.signed and qg.node("c1").out.bits == 4      # ReLU
    assert qg.node("c2").out.signed                                         # feeds the add, no ReLU
    assert not qg.node("add").out.signed                                    # add + ReLU
    same = dataclasses.replace(qg.node("add").out, shape=qg.node("mp").out.shape)
    assert qg.node("mp").out == same                                        # pooling keeps its input's spec
    assert qg.node("c3").out.scale == qg.node("mp").out.scale == qg.node("cat").out.scale  # concat group
    out = qg.node("fc").out
    assert (out.bits, out.signed) == (16, True)
    rq = qg.node("c1").requant
    assert (rq.out_min, rq.out_max) == (0, 15)


def test_relu6_clamp_and_full_scales(qg):
    c3 = qg.node("c3")
    assert c3.requant.out_min == 0 and c3.requant.out_max <= 15
    assert c3.requant.out_max * c3.out.scale <= 6.0 + 1e-9
    for n in qg.mvm_nodes():
        kh, kw = (n.weight.shape[2:] if n.weight.ndim == 4 else (1, 1))
        rows = max(c1 - c0 for c0, c1 in row_tiles(n.weight.shape[1], kh, kw, TINY.array.rows)) * kh * kw
        assert n.adc_full_scale_rows == pick_full_scale(rows, TINY.adc.full_scales_rows)
    assert qg.node("c1").adc_full_scale_rows == 36 and qg.node("c2").adc_full_scale_rows == 72


def test_weights_are_symmetric_per_channel(graph, qg):
    w = graph.node("c1").params["weight"]
    s = weight_scales(w, 4)
    assert np.allclose(s, np.abs(w).reshape(w.shape[0], -1).max(1) / 7)
    q = qg.node("c1").weight  # default: max-based
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7
    assert np.array_equal(np.abs(q).reshape(q.shape[0], -1).max(1), np.full(q.shape[0], 7))
    assert np.array_equal(q, quantize_weight(w, s, 4))
    qmse = calibrate(graph, images(4), TINY, QuantSpec(w_clip="mse")).node("c1").weight
    assert np.array_equal(qmse, quantize_weight(w, weight_scales(w, 4, "mse"), 4))
    z = np.zeros((2, 3), np.float32)
    z[1] = [0.7, -0.1, 0.2]
    assert np.all(weight_scales(z, 4) > 0)


def test_json_round_trip(qg, tmp_path):
    p = tmp_path / "m.qgraph.json"
    qg.save(str(p))
    assert graphs_equal(QGraph.load(str(p)), qg)


def test_quantised_network_tracks_the_float_one(graph):
    x = images(64, seed=4)
    qg = calibrate(graph, x, JSSC2022, QuantSpec(input_scale=1 / 255, a_bits=8, w_bits=8))
    y = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, x), "ideal", JSSC2022))
    f = run_graph(graph, x)
    assert np.abs(y - f).mean() < 0.05 * np.abs(f).mean()
    assert (y.argmax(1) == f.argmax(1)).mean() > 0.9


def test_input_scale_from_calibration_and_signed_inputs(graph):
    x = images(8) - 0.5
    qg = calibrate(graph, x, TINY)
    assert qg.input.signed and qg.input.bits == 8
    assert np.isclose(qg.input.scale, np.abs(x).max() / 127)
    qg2 = calibrate(graph, images(8), TINY, QuantSpec(method="max"))
    assert not qg2.input.signed and np.isclose(qg2.input.scale, images(8).max() / 255)


def test_percentile_clips_tighter_than_max(graph):
    x = images(32)
    p = calibrate(graph, x, TINY, QuantSpec(percentile=99.0))
    m = calibrate(graph, x, TINY, QuantSpec(method="max"))
    assert p.node("c1").out.scale < m.node("c1").out.scale


def test_unfusable_relu_and_batchnorm_are_errors(graph):
    nodes = list(graph.nodes)
    i = [n.name for n in nodes].index("mp")
    nodes.insert(i + 1, Node("r_after_pool", Op.RELU, ("mp",), out_shape=nodes[i].out_shape))
    nodes[i + 2] = dataclasses.replace(nodes[i + 2], inputs=("r_after_pool",))
    bad = dataclasses.replace(graph, nodes=tuple(nodes))
    with pytest.raises(QuantError, match="r_after_pool"):
        calibrate(bad, images(2), TINY)
    bn = Node("bn", Op.BATCHNORM, ("x",), {"eps": 1e-5},
              {k: np.ones(3, np.float32) for k in ("gamma", "beta", "mean", "var")}, (3, 8, 8))
    with_bn = dataclasses.replace(graph, nodes=(bn,) + graph.nodes)
    with pytest.raises(QuantError, match="normalize"):
        calibrate(with_bn, images(2), TINY)


def test_bad_settings_are_errors(graph):
    with pytest.raises(QuantError, match="w_bits"):
        calibrate(graph, images(2), TINY, QuantSpec(w_bits=9))
    with pytest.raises(QuantError, match="method"):
        calibrate(graph, images(2), TINY, QuantSpec(method="kl"))
    with pytest.raises(QuantError, match="calibration inputs"):
        calibrate(graph, images(2)[:, :2], TINY)


def test_qcdq_annotations_are_honoured(graph):
    def with_attrs(n, **attrs):
        return dataclasses.replace(n, attrs={**n.attrs, **attrs})

    nodes = [with_attrs(n, act_scale=0.05, act_bits=4) if n.name == "r1" else
             with_attrs(n, w_bits=3) if n.name == "c3" else n for n in graph.nodes]
    g = dataclasses.replace(graph, nodes=tuple(nodes), meta={**graph.meta, "input_scale": 1 / 200, "input_bits": 8})
    qg = calibrate(g, images(8), TINY)
    assert qg.node("c1").out.scale == 0.05 and qg.input.scale == 1 / 200
    c3 = qg.node("c3")
    assert c3.w_bits == 3 and c3.weight.min() >= -4 and c3.weight.max() <= 3
    assert qg.node("c2").w_bits == 4


def test_mse_clipping_lowers_the_error():
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(8, 64)).astype(np.float32)  # heavy tails: clipping pays
    for clip, expect_smaller in (("max", False), ("mse", True)):
        s = weight_scales(w, 4, clip)
        err = ((quantize_weight(w, s, 4) * s[:, None] - w) ** 2).sum()
        if clip == "max":
            base = err
            assert np.allclose(s, np.abs(w).max(1) / 7)
        else:
            assert err < base and np.all(s <= np.abs(w).max(1) / 7 + 1e-12)


def test_mse_activation_ranges(graph):
    x = images(16)
    m = calibrate(graph, x, TINY, QuantSpec(method="mse", w_clip="mse"))
    mx = calibrate(graph, x, TINY, QuantSpec(method="max"))
    assert m.node("c1").out.scale <= mx.node("c1").out.scale
    with pytest.raises(QuantError, match="w_clip"):
        calibrate(graph, x, TINY, QuantSpec(w_clip="l1"))
