"""Dilated convolutions: the same k*k*C_in array rows as an undilated conv, with the input line
buffer gathering taps ``d`` pixels apart (receptive field ``(k - 1) * d + 1``). Both importers take
them, every arithmetic path honours them, the compiled program equals the reference executor, and
the timing model waits for the wider receptive field."""

import dataclasses
import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from quant_testnets import assert_qat_export_matches, images, plain_int_exec  # noqa: E402

from imcflow.cima import bpbs_conv2d  # noqa: E402
from imcflow.cima.conv import planes_conv2d  # noqa: E402
from imcflow.cima.reference import bpbs_conv2d_reference  # noqa: E402
from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.compiler.routing import needed_input_pixels  # noqa: E402
from imcflow.compiler.tiling import tile_graph  # noqa: E402
from imcflow.config import JSSC2022, TINY, AnalogConfig  # noqa: E402
from imcflow.errors import ModelError  # noqa: E402
from imcflow.frontend import load_graph, run_graph  # noqa: E402
from imcflow.frontend.normalize import normalize  # noqa: E402
from imcflow.ir.graph import Op  # noqa: E402
from imcflow.ir.program import Program  # noqa: E402
from imcflow.ir.qgraph import QGraph, receptive_field, window_out  # noqa: E402
from imcflow.pipeline import load_qgraph, prepare_qat  # noqa: E402
from imcflow.quant.adc_range import column_counts  # noqa: E402
from imcflow.quant.fast_exec import run_qgraph_fast  # noqa: E402
from imcflow.quant.qat import export_qgraph  # noqa: E402
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph  # noqa: E402
from imcflow.sim import kernels  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402
from imcflow.sim.lower import _Lowerer  # noqa: E402
from imcflow.sim.report import simulate_timing  # noqa: E402


class Dilated(nn.Module):
    """d=2 'same', rectangular d=(3, 1) 'same', strided d=2, then a classifier."""

    def __init__(self, d2=(2, 2), pad2=(2, 2)):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=pad2, dilation=d2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, stride=2, padding=3, dilation=3)
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.bn(self.c2(x)))
        x = torch.relu(self.c3(x))
        return self.fc(x.flatten(1))


SHAPE = (3, 12, 12)


def _net(**kw) -> nn.Module:
    torch.manual_seed(0)
    m = Dilated(**kw)
    m.bn.running_mean.uniform_(-0.3, 0.3)
    m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _to_onnx(model, x, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(path), dynamo=False, input_names=["x"], output_names=["y"])


def _inputs(q, n, seed):
    return np.random.default_rng(seed).integers(q.input.min_int, q.input.max_int + 1, size=(n, *q.input.shape))


# --- (a) importers -------------------------------------------------------------------------------

def test_shape_helpers():
    assert receptive_field((3, 3), (2, 3)) == (5, 7)
    assert receptive_field((1, 3)) == (1, 3)
    for h, k, s, p, d in [(12, 3, 1, 2, 2), (12, 3, 2, 3, 3), (7, 5, 2, 0, 1), (9, 2, 1, 1, 4)]:
        want = F.conv2d(torch.zeros(1, 1, h, h), torch.zeros(1, 1, k, k), stride=s, padding=p, dilation=d).shape[2]
        assert window_out(h, k, s, p, d) == want


def test_torch_and_onnx_imports_match_pytorch(tmp_path):
    m = _net(d2=(3, 1), pad2=(3, 1))
    x = torch.rand(3, *SHAPE)
    want = m(x).detach().numpy()
    _to_onnx(m, x, tmp_path / "dil.onnx")
    for graph in (load_graph(m, SHAPE), load_graph(tmp_path / "dil.onnx")):
        convs = [n for n in graph.nodes if n.op is Op.CONV]
        assert [tuple(n.attrs["dilation"]) for n in convs] == [(2, 2), (3, 1), (3, 3)]
        assert [tuple(n.attrs["stride"]) for n in convs] == [(1, 1), (1, 1), (2, 2)]
        assert graph.shape(convs[-1].name) == (8, 6, 6)
        np.testing.assert_allclose(run_graph(graph, x.numpy()), want, rtol=1e-4, atol=1e-5)


def test_quantised_import_tracks_the_float_model():
    m = _net()
    x = images(16, SHAPE, seed=4)
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE, calib=images(64, SHAPE))
    assert [n.dilation for n in q.mvm_nodes()] == [(2, 2), (2, 2), (3, 3), (1, 1)]
    got = dequantize_output(q, run_qgraph(q, quantize_input(q, x), "ideal", TINY))
    want = m(torch.from_numpy(x)).detach().numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 0.25, err
    # the same weights run undilated give something else: the quantised model really dilates
    q1 = QGraph(q.name, q.input_name, q.input, tuple(dataclasses.replace(n, dilation=(1, 1), padding=(1, 1))
                                                     if n.name in ("c1", "c2") else n for n in q.nodes),
                q.output, q.meta)
    other = dequantize_output(q1, run_qgraph(q1, quantize_input(q1, x), "ideal", TINY))
    assert np.abs(other - want).max() / np.abs(want).max() > 2 * err


def test_same_padding_and_one_tap_axes():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same", dilation=2), nn.Conv2d(4, 4, (1, 3), padding=(0, 3),
                                                                                 dilation=3)).eval()
    g = load_graph(m, (3, 8, 8))
    convs = [n for n in g.nodes if n.op is Op.CONV]
    assert tuple(convs[0].attrs["padding"]) == (2, 2) and tuple(convs[1].attrs["dilation"]) == (1, 3)
    x = torch.rand(2, 3, 8, 8)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_zero_pad_moves_into_a_dilated_conv():
    torch.manual_seed(0)
    m = nn.Sequential(nn.ReLU(), nn.ZeroPad2d(1), nn.Conv2d(3, 4, 3, padding=1, dilation=2)).eval()
    g = normalize(load_graph(m, (3, 8, 8)))
    convs = [n for n in g.nodes if n.op is Op.CONV]
    assert len(convs) == 1 and tuple(convs[0].attrs["padding"]) == (2, 2)
    assert tuple(convs[0].attrs["dilation"]) == (2, 2)
    x = torch.rand(2, 3, 8, 8)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def _onnx_conv(**attrs):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def test_onnx_auto_pad_same_with_dilation():
    model, w = _onnx_conv(auto_pad="SAME_UPPER", dilations=[2, 2])
    g = load_graph(model)
    conv = g.node("conv")
    assert tuple(conv.attrs["padding"]) == (2, 2) and tuple(conv.attrs["dilation"]) == (2, 2)
    x = np.random.default_rng(1).random((2, 3, 9, 9)).astype(np.float32)
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=2, dilation=2).numpy()
    np.testing.assert_allclose(run_graph(g, x), want, rtol=1e-4, atol=1e-5)


def test_dilated_pooling_is_still_refused():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, dilation=2))
    with pytest.raises(ModelError, match="dilated pooling"):
        load_graph(m, (3, 9, 9))


# --- IR: old files without a dilation still load ---------------------------------------------

def _strip_dilation(obj):
    if isinstance(obj, dict):
        return {k: _strip_dilation(v) for k, v in obj.items() if k != "dilation"}
    if isinstance(obj, list):
        return [_strip_dilation(v) for v in obj]
    return obj


def test_json_round_trip_and_old_files_without_dilation():
    q = load_qgraph(_net(), TINY, trained=False, input_shape=SHAPE)
    again = QGraph.from_json(q.to_json())
    assert [n.dilation for n in again.nodes] == [n.dilation for n in q.nodes]
    old = QGraph.from_json(json.dumps(_strip_dilation(json.loads(q.to_json()))))
    assert all(n.dilation == (1, 1) for n in old.nodes)
    prog = compile_qgraph(q, TINY)
    assert Program.from_json(prog.to_json()).qgraph.node("c1").dilation == (2, 2)
    old_prog = Program.from_json(json.dumps(_strip_dilation(json.loads(prog.to_json()))))
    assert old_prog.qgraph.node("c1").dilation == (1, 1)


# --- (b) spine: simulator == reference executor --------------------------------------------------

@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_dilated_network_equals_reference(chip):
    q = load_qgraph(_net(d2=(3, 1), pad2=(3, 1)), chip, trained=False, input_shape=SHAPE)
    prog = compile_qgraph(q, chip)
    assert any(c.n_copies > 1 for ph in prog.phases for c in ph.copies)  # pixel ranges split over cores
    x = _inputs(q, 3, 0)
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, chip)), mode


@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_fast_executor_equals_reference(mode):
    q = load_qgraph(_net(d2=(3, 1), pad2=(3, 1)), TINY, trained=False, input_shape=SHAPE)
    x = _inputs(q, 3, 1)
    assert np.array_equal(run_qgraph_fast(q, x, mode, TINY, seed=2), run_qgraph(q, x, mode, TINY, seed=2))


def test_reference_equals_an_independent_integer_conv():
    q = load_qgraph(_net(d2=(3, 1), pad2=(3, 1)), TINY, trained=False, input_shape=SHAPE)
    x = _inputs(q, 3, 2)
    assert np.array_equal(run_qgraph(q, x, "ideal", TINY), plain_int_exec(q, x))


def test_adc_range_counts_cover_the_dilated_output():
    q = load_qgraph(_net(), TINY, trained=False, input_shape=SHAPE)
    node = q.node("c1")
    counts = list(column_counts(node, torch.from_numpy(_inputs(q, 2, 0)), q.input.bits, TINY.array.rows))
    assert len(counts) == q.input.bits and counts[0].shape == (2, 8 * node.w_bits, 12, 12)


# --- (c) CIMA conv kernels: fast == reference, bit for bit ----------------------------------------

def _rand(g, shape, bits, signed):
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    return torch.randint(lo, hi, shape, generator=g).float()


LAYERS = [  # (N, C_in, H, W, C_out, kh, kw, stride, padding, dilation, array_rows, x_bits, w_bits)
    (2, 10, 9, 8, 4, 3, 3, 1, 2, 2, 36, 4, 4),           # 3 row tiles, 'same' d=2
    (1, 7, 11, 9, 3, 3, 3, 2, 1, 3, 27, 3, 2),           # strided d=3, 3 tiles
    (1, 5, 10, 7, 2, 3, 2, 1, (3, 1), (3, 2), 72, 8, 8),  # one tile, rectangular kernel and dilation
]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_cima_conv_equals_reference(layer, mode):
    n, c, h, w_, c_out, kh, kw, stride, padding, dilation, rows, xb, wb = layer
    g = torch.Generator().manual_seed(hash((layer, mode)) % 2**31)
    x, w = _rand(g, (n, c, h, w_), xb, False), _rand(g, (c_out, c, kh, kw), wb, True)
    kw_ = dict(x_bits=xb, w_bits=wb, x_signed=False, stride=stride, padding=padding, dilation=dilation,
               full_scale=min(rows, 18), mode=mode, adc_bits=8, array_rows=rows, seed=5, analog=AnalogConfig())
    got = bpbs_conv2d(x, w, **kw_)
    assert got.shape[2:] == F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape[2:]
    np.testing.assert_array_equal(got.numpy(), bpbs_conv2d_reference(x, w, **kw_))
    if mode != "analog":
        assert torch.equal(planes_conv2d(x, w, **{k: v for k, v in kw_.items() if k not in ("seed", "analog")}), got)
    if mode == "ideal":
        assert torch.equal(got, F.conv2d(x.double(), w.double(), stride=stride, padding=padding, dilation=dilation))


def test_tile_mvm_is_a_slice_of_the_dilated_layer():
    g = torch.Generator().manual_seed(7)
    x, w = _rand(g, (2, 4, 10, 9), 4, False), _rand(g, (3, 4, 3, 3), 4, True)
    geo = dict(kernel=(3, 3), stride=(1, 2), padding=(2, 3), dilation=(2, 3))
    whole = F.conv2d(x.double(), w.double(), stride=geo["stride"], padding=geo["padding"],
                     dilation=geo["dilation"]).reshape(2, 3, -1).numpy()
    for lo, hi in [(0, 5), (7, 23), (31, whole.shape[2])]:
        got = kernels.tile_mvm(x.numpy(), w.numpy(), px_lo=lo, px_hi=hi, x_bits=4, x_signed=False, w_bits=4,
                               full_scale=36, mode="ideal", chip=TINY, seed=0, **geo)
        np.testing.assert_array_equal(got, whole[:, :, lo:hi])
    need = kernels.needed_pixels(10, 9, (3, 3), (1, 1), (2, 2), 0, 1, (2, 2))
    assert list(need) == [0, 2, 18, 20]   # output pixel 0 reads taps at rows/cols 0 and 2 only


# --- (d) timing: the line buffer waits for the dilated receptive field ----------------------------

def _pair_programs():
    """One network compiled undilated (d=1, padding 1) and dilated (d=2, padding 2): same shapes."""
    progs = []
    for d in (1, 2):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=d, dilation=d),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, padding=d, dilation=d), nn.ReLU()).eval()
        progs.append(compile_qgraph(load_qgraph(m, TINY, trained=False, input_shape=(3, 16, 16)), TINY))
    return progs


def test_receptive_field_rows_and_latency():
    und, dil = _pair_programs()
    rows = []
    for prog in (und, dil):
        low = _Lowerer(prog, 1, 16, None)
        node = prog.qgraph.mvm_nodes()[1]   # the second conv, reading the first one's output (1 row per chunk)
        rows.append((low.in_rows(node, node.inputs[0], 0), low.in_rows(node, node.inputs[0], 7)))
    assert rows[0] == ((0, 1), (6, 8))
    assert rows[1] == ((0, 2), (5, 9))   # output row y reads input rows y-2, y, y+2
    lat = [simulate_timing(p, images=1).latency_s for p in (und, dil)]
    assert lat[1] > lat[0]
    assert [run_qgraph(p.qgraph, _inputs(p.qgraph, 1, 0), "bit_true", TINY).shape for p in (und, dil)] == \
        [(1, 8, 16, 16)] * 2


def test_routing_sends_the_dilated_rows():
    q = load_qgraph(_net(), JSSC2022, trained=False, input_shape=SHAPE)
    tl = tile_graph(q, JSSC2022)["c2"]
    # the first of 6 copies computes output rows 0-1, whose d=2 windows read input rows 0-3
    assert needed_input_pixels(q, tl, 0, 6) == (0, 4 * 12)
    assert needed_input_pixels(q, tl, 2, 6) == (2 * 12, 8 * 12)   # rows 4-5 read rows 2-7


# --- (e) QAT -------------------------------------------------------------------------------------

def test_qat_trains_a_dilated_conv_and_matches_the_integer_export():
    net = prepare_qat(_net(), SHAPE, TINY, calib=images(16, SHAPE), input_scale=1 / 255)
    x = torch.from_numpy(images(4, SHAPE, seed=2))
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0)
               for k, p in net.named_parameters() if k.startswith("weight."))
    qg = export_qgraph(net)
    assert [n.dilation for n in qg.mvm_nodes()][:3] == [(2, 2), (2, 2), (3, 3)]
    assert_qat_export_matches(net, qg, SHAPE, TINY)


def test_qat_ideal_adc_uses_the_dilated_exact_counts():
    net = prepare_qat(_net(), SHAPE, TINY, calib=images(16, SHAPE), input_scale=1 / 255)
    qg = export_qgraph(net)
    xs = images(4, SHAPE, seed=6)
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, xs), "ideal", TINY))
    with torch.no_grad():
        qat = net.set_adc("ideal")(torch.from_numpy(xs)).numpy()
    assert np.abs(qat - ref).max() <= 16 * qg.spec(qg.output).scale
