"""Depth to space (PixelShuffle / ONNX DepthToSpace): (C*r*r, H, W) -> (C, H*r, W*r) with
out[c, y, x] = in[c*r*r + (y % r)*r + x % r, y // r, x // r], and the transposed convolution whose
kernel equals its stride (U-Net's ConvTranspose2d(k=2, s=2)) imported exactly as a 1x1 conv to
C_out*r*r channels followed by it. Both importers take them, every integer path moves the same
integers, the compiled program equals the reference executor, and the timing model makes output
row y wait for input row y // r only.

Model assumption [A]: the SIMD/output buffer writes each value once in its new place (no array
work): one SIMD lane operation per output element. The op mixes channels, so one task computes all
of its channels (like CONCAT), never a channel group."""

import json
import math
import os
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from onnx_testing import ort_run, random_inputs, to_onnx  # noqa: E402
from quant_testnets import (assert_qat_export_matches, assert_reference_is_exact_and_tracks_float, images,  # noqa: E402
                            strip_key)

from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import ModelError, QuantError  # noqa: E402
from imcflow.frontend import load_graph, run_graph  # noqa: E402
from imcflow.frontend.normalize import normalize  # noqa: E402
from imcflow.ir.graph import Graph, Op  # noqa: E402
from imcflow.ir.program import InstrKind, Program  # noqa: E402
from imcflow.ir.qgraph import QGraph, QOp, input_rows, simd_lane_ops  # noqa: E402
from imcflow.pipeline import load_qgraph, prepare_qat  # noqa: E402
from imcflow.quant.fast_exec import run_qgraph_fast  # noqa: E402
from imcflow.quant.qat import export_qgraph  # noqa: E402
from imcflow.quant.reference import run_qgraph  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402
from imcflow.perf.model import simd_ops_of  # noqa: E402
from imcflow.sim.lower import _Lowerer, lower  # noqa: E402
from imcflow.sim.report import simulate_timing  # noqa: E402

SHAPE = (3, 8, 8)


class Espcn(nn.Module):
    """ESPCN-like super resolution (Shi et al. 2016): convs to 3*r*r channels, then PixelShuffle(r)."""

    def __init__(self, r: int = 2, functional: bool = False):
        super().__init__()
        self.r, self.functional = r, functional
        self.c1 = nn.Conv2d(3, 12, 5, padding=2)
        self.c2 = nn.Conv2d(12, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 3 * r * r, 3, padding=1)
        self.ps = nn.PixelShuffle(r)

    def forward(self, x):
        y = self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return F.pixel_shuffle(y, self.r) if self.functional else self.ps(y)


class UNet(nn.Module):
    """A small U-Net: conv, pool, conv, ConvTranspose2d(k=2, s=2) up (then a ReLU if ``act``),
    concatenated with the skip, conv, 1x1 head."""

    def __init__(self, act: bool = False):
        super().__init__()
        self.act = act
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.c3 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(self.pool(a)))
        u = torch.relu(self.up(b)) if self.act else self.up(b)
        return self.head(torch.relu(self.c3(torch.cat([u, a], 1))))


def _espcn(r=2, functional=False):
    torch.manual_seed(0)
    return Espcn(r, functional).eval()


def _unet(act=False):
    torch.manual_seed(0)
    return UNet(act).eval()





def _d2s_node(q: QGraph):
    (node,) = [n for n in q.nodes if n.op is QOp.DEPTH_TO_SPACE]
    return node


def _blocks(g: Graph) -> list[int]:
    return [int(n.attrs["block"]) for n in g.nodes if n.op is Op.DEPTH_TO_SPACE]


# --- (a) importers -------------------------------------------------------------------------------

@pytest.mark.parametrize("r,functional", [(2, False), (3, False), (2, True)])
def test_torch_import_of_pixel_shuffle_matches_pytorch(r, functional):
    m = _espcn(r, functional)
    g = load_graph(m, SHAPE)
    assert _blocks(g) == [r] and g.shape(g.output) == (3, 8 * r, 8 * r)
    x = torch.rand(3, *SHAPE)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_torch_import_of_conv_transpose_matches_pytorch():
    m = _unet()
    g = load_graph(m, SHAPE)
    assert _blocks(g) == [2] and g.shape("up") == (32, 4, 4) and g.shape(g.output) == (4, 8, 8)
    x = torch.rand(3, *SHAPE)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_relu_after_conv_transpose_moves_before_the_depth_to_space_and_fuses():
    """conv -> depth to space -> ReLU becomes conv -> ReLU -> depth to space (exact), so the ReLU fuses
    into the conv's requant; the compiled network equals the reference."""
    m = _unet(act=True)
    g = normalize(load_graph(m, SHAPE))
    d2s = [n for n in g.nodes if n.op is Op.DEPTH_TO_SPACE][0]
    assert g.node(d2s.inputs[0]).op is Op.RELU and g.node(g.node(d2s.inputs[0]).inputs[0]).op is Op.CONV
    x = torch.rand(3, *SHAPE)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE)
    conv = q.node(_d2s_node(q).inputs[0])
    assert conv.op is QOp.CONV and not q.spec(conv.name).signed   # the ReLU is the conv's requant clamp
    xi = random_inputs(q, 2, 3)
    assert np.array_equal(run_program(compile_qgraph(q, TINY), xi, "bit_true"), run_qgraph(q, xi, "bit_true", TINY))


@pytest.mark.parametrize("k", [2, 3])
def test_conv_transpose_lowering_is_exact_with_and_without_bias(k):
    torch.manual_seed(k)
    for bias in (True, False):
        m = nn.Sequential(nn.ConvTranspose2d(5, 3, k, stride=k, bias=bias)).eval()   # a leaf module: traceable
        g = load_graph(m, (5, 4, 3))
        x = torch.randn(2, 5, 4, 3)
        np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("net", ["espcn2", "espcn3", "unet"])
def test_onnx_import_from_both_exporters_matches_onnxruntime(tmp_path, net, dynamo):
    m = _unet() if net == "unet" else _espcn(int(net[-1]))
    path = tmp_path / f"{net}_{dynamo}.onnx"
    to_onnx(m, path, dynamo, SHAPE)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("ConvTranspose" if net == "unet" else "DepthToSpace") in ops   # what the exporters emit
    g = load_graph(path)
    assert _blocks(g) == [2 if net == "unet" else int(net[-1])]
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    want = ort_run(path, x)
    np.testing.assert_allclose(run_graph(g, x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(want, m(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def _d2s_model(mode="CRD", r=2, c=2, hw=(3, 4)):
    """x (1, c*r*r, H, W) -> one DepthToSpace node."""
    node = helper.make_node("DepthToSpace", ["x"], ["y"], name="d2s", blocksize=r, mode=mode)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c * r * r, *hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("mode,r", [("CRD", 2), ("CRD", 3), ("DCR", 2), ("DCR", 3)])
def test_onnx_depth_to_space_modes_match_onnxruntime(mode, r):
    model = _d2s_model(mode, r)
    x = np.random.default_rng(r).standard_normal((1, 2 * r * r, 3, 4)).astype(np.float32)
    g = load_graph(model)
    assert _blocks(g) == [r]
    np.testing.assert_array_equal(run_graph(g, x), ort_run(model, x))


def _conv_transpose_model(k=2, s=2, bias=True, **attrs):
    """x (1, 4, 3, 3) -> one ConvTranspose node (weight (4, 3, k, k))."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, k, k)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"))
    node = helper.make_node("ConvTranspose", ["x", "w", "b"] if bias else ["x", "w"], ["y"], name="ct",
                            kernel_shape=[k, k], strides=[s, s], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("k,bias,pads", [(2, True, dict(pads=[0, 0, 0, 0])), (3, False, {}),
                                         (2, True, dict(auto_pad="SAME_UPPER")), (2, False, dict(auto_pad="SAME_LOWER"))])
def test_onnx_conv_transpose_matches_onnxruntime(k, bias, pads):
    model = _conv_transpose_model(k, k, bias, **pads)
    x = np.random.default_rng(k).standard_normal((1, 4, 3, 3)).astype(np.float32)
    g = load_graph(model)
    assert _blocks(g) == [k]
    np.testing.assert_allclose(run_graph(g, x), ort_run(model, x), rtol=1e-5, atol=1e-5)


# --- refusals, by name ---------------------------------------------------------------------------

@pytest.mark.parametrize("layer, why", [
    (nn.ConvTranspose2d(4, 3, 3, stride=2), r"kernel \(3, 3\) with stride \(2, 2\)"),
    (nn.ConvTranspose2d(4, 3, 2, stride=2, padding=1), r"padding \(1, 1\)"),
    (nn.ConvTranspose2d(4, 3, 2, stride=2, output_padding=1), r"output_padding \(1, 1\)"),
    (nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2), "groups=2"),
    (nn.ConvTranspose2d(4, 3, (1, 2), stride=(1, 2)), r"non-square kernel \(1, 2\)"),
])
def test_torch_conv_transpose_refusals_name_the_node_and_the_fix(layer, why):
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), layer)
    with pytest.raises(ModelError, match=f"node '_1' \\(ConvTranspose2d\\): {why}.*kernel equals its stride"):
        load_graph(m, (3, 8, 8))


@pytest.mark.parametrize("attrs, why", [
    (dict(k=3, s=2), r"kernel \(3, 3\) with stride \(2, 2\)"),
    (dict(pads=[1, 1, 1, 1]), r"padding \(1, 1, 1, 1\)"),
    (dict(output_padding=[1, 1]), r"output_padding \(1, 1\)"),
    (dict(dilations=[2, 2]), r"dilation \(2, 2\)"),
    (dict(group=2, bias=False), "groups=2"),
    (dict(output_shape=[7, 7]), r"output_shape \[7, 7\]"),
])
def test_onnx_conv_transpose_refusals(attrs, why):
    with pytest.raises(ModelError, match=f"node 'ct' \\(ConvTranspose\\): {why}.*kernel equals its stride"):
        load_graph(_conv_transpose_model(**attrs))


def test_onnx_depth_to_space_refusals():
    with pytest.raises(ModelError, match="node 'd2s' \\(DepthToSpace\\): mode 'XYZ'; use mode 'CRD'"):
        load_graph(_d2s_model("XYZ"))
    bad = _d2s_model()
    bad.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 6   # 6 channels, block 2
    with pytest.raises(ModelError, match=r"node 'd2s' \(DepthToSpace\): blocksize 2 on a tensor of shape \(6, 3, 4\)"):
        load_graph(bad)


def test_graph_verify_refuses_a_block_that_does_not_divide_the_channels():
    g = load_graph(_espcn(), SHAPE)
    obj = json.loads(g.to_json())
    for n in obj["nodes"]:
        if n["op"] == "depth_to_space":
            n["attrs"]["block"] = 5
    with pytest.raises(ModelError, match=r"'ps' \(depth_to_space\): block 5 must be >= 1 and its square divide"):
        Graph.from_json(json.dumps(obj)).verify()


# --- (b) spine: simulator == reference executor, every integer path the same ---------------------

@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
@pytest.mark.parametrize("net", ["espcn3", "unet"])
def test_compiled_network_equals_reference(chip, net):
    m = _unet() if net == "unet" else _espcn(3)
    q = load_qgraph(m, chip, trained=False, input_shape=SHAPE, calib=images(32, SHAPE))
    d2s = _d2s_node(q)
    assert d2s.depth_to_space == (2 if net == "unet" else 3) and q.spec(d2s.inputs[0]).scale == d2s.out.scale
    prog = compile_qgraph(q, chip)
    assert any(i.op is InstrKind.DEPTH_TO_SPACE for ph in prog.phases for c in ph.cores for t in c.tasks
               for i in t.instrs)
    x = random_inputs(q, 3, 0)
    for mode in ("ideal", "bit_true"):
        want = run_qgraph(q, x, mode, chip)
        assert want.shape == (3, *q.spec(q.output).shape) and len(np.unique(want[0, 0])) > 8  # a map that varies
        assert np.array_equal(run_program(prog, x, mode), want), mode


@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
@pytest.mark.parametrize("net", ["espcn2", "unet"])
def test_fast_executor_equals_reference(mode, net):
    m = _unet() if net == "unet" else _espcn(2, functional=True)
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE)
    x = random_inputs(q, 3, 1)
    assert np.array_equal(run_qgraph_fast(q, x, mode, TINY, seed=2), run_qgraph(q, x, mode, TINY, seed=2))


@pytest.mark.parametrize("net", ["espcn3", "unet"])
def test_reference_equals_an_independent_integer_executor_and_tracks_float(net):
    m = _unet() if net == "unet" else _espcn(3)
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE, calib=images(64, SHAPE))
    assert_reference_is_exact_and_tracks_float(m, q, SHAPE, TINY)


# --- (c) compiler, timing and energy ----------------------------------------------------------------

def test_depth_to_space_rows_wait_for_input_row_y_div_r():
    q = load_qgraph(_espcn(3), TINY, trained=False, input_shape=SHAPE)
    d2s = _d2s_node(q)
    assert input_rows(d2s, 0, 0, 8) == (0, 0) and input_rows(d2s, 5, 5, 8) == (1, 1)
    assert input_rows(d2s, 3, 8, 8) == (1, 2) and input_rows(d2s, 23, 23, 8) == (7, 7)
    prog = compile_qgraph(q, TINY)
    low = _Lowerer(prog, 1, 24, None)
    _, h_in, _, r_in = low.geom(d2s.inputs[0])
    _, h_out, _, r_out = low.geom(d2s.name)
    assert (h_in, h_out) == (8, 24)
    for k in range((h_out - 1) // r_out + 1):
        y0, y1 = k * r_out, min(h_out, (k + 1) * r_out) - 1
        assert low.in_rows(d2s, d2s.inputs[0], k) == ((y0 // 3) // r_in, (y1 // 3) // r_in)
    if r_out == r_in == 1:  # one row per chunk: output rows 6, 7 and 8 all read input row 2 only
        assert low.in_rows(d2s, d2s.inputs[0], 6) == low.in_rows(d2s, d2s.inputs[0], 8) == (2, 2)


def test_timing_runs_and_counts_one_lane_op_per_output_element():
    q = load_qgraph(_unet(), TINY, trained=False, input_shape=SHAPE)
    d2s = _d2s_node(q)
    assert simd_lane_ops(q, d2s.name) == math.prod(d2s.out.shape) == 8 * 8 * 8
    prog = compile_qgraph(q, TINY)
    instrs = [i for ph in prog.phases for c in ph.cores for t in c.tasks for i in t.instrs
              if i.layer == d2s.name and i.op is InstrKind.DEPTH_TO_SPACE]
    assert len(instrs) == 1 and (instrs[0].oc_lo, instrs[0].oc_hi) == (0, 8)   # one task, all channels
    assert simd_ops_of(instrs[0], q) == 8 * 8 * 8   # cost model
    assert lower(prog, 2).counts[d2s.name].simd_ops == pytest.approx(2 * 8 * 8 * 8)  # simulator, 2 images
    assert simulate_timing(prog, images=2).throughput_img_s > 0


# --- (d) QAT -------------------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["espcn2", "unet"])
def test_qat_trains_through_depth_to_space_and_matches_the_integer_export(net):
    m = _unet() if net == "unet" else _espcn(2)
    qnet = prepare_qat(m, SHAPE, TINY, calib=images(16, SHAPE), input_scale=1 / 255)
    x = torch.from_numpy(images(4, SHAPE, seed=2))
    loss = F.cross_entropy(qnet(x).mean((2, 3)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    grads = {k: p.grad for k, p in qnet.named_parameters() if k.startswith("weight.")}
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    qg = export_qgraph(qnet)
    assert _d2s_node(qg).depth_to_space == 2
    assert_qat_export_matches(qnet, qg, SHAPE, TINY)


# --- (e) IR: JSON round trips keep the factor; old files load ------------------------------------

def test_json_round_trips_keep_the_factor_and_old_files_load():
    q = load_qgraph(_espcn(3), TINY, trained=False, input_shape=SHAPE)
    name = _d2s_node(q).name
    assert QGraph.from_json(q.to_json()).node(name).depth_to_space == 3
    prog = compile_qgraph(q, TINY)
    again = Program.from_json(prog.to_json())
    assert again.qgraph.node(name).depth_to_space == 3 and again.to_json() == prog.to_json()
    g = load_graph(_espcn(3), SHAPE)
    assert Graph.from_json(g.to_json()).node(name).attrs["block"] == 3
    # a file written before depth to space existed has no 'depth_to_space' field: every node defaults to 1
    old = QGraph.from_json(json.dumps(strip_key(json.loads(q.to_json()), "depth_to_space")))
    assert all(n.depth_to_space == 1 for n in old.nodes)
    with pytest.raises(QuantError, match=f"depth_to_space '{name}': output shape"):
        old.verify()   # and the node, now without its block, is caught
