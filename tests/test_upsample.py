"""Nearest-neighbour upsampling by integer factors (sh, sw): out[y, x] = in[y // sh, x // sw]. Both
importers take it (PyTorch modules and functions, ONNX Resize/Upsample from both exporters), every
integer path replicates the same integers, the compiled program equals the reference executor, and
the timing model makes output row y wait for input row y // sh only.

Model assumption [A]: the SIMD/output buffer writes each value sh*sw times (no array work): one
SIMD lane operation per output element."""

import json
import math
import os
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from onnx_testing import ort_run, random_inputs, resize_model, to_onnx  # noqa: E402
from quant_testnets import (assert_qat_export_matches, assert_reference_is_exact_and_tracks_float, images,  # noqa: E402
                            plain_int_exec, strip_key)

from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import ModelError, QuantError  # noqa: E402
from imcflow.frontend import load_graph, run_graph  # noqa: E402
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

SHAPE = (3, 16, 16)
FORMS = ("module", "nearest2d", "interp_scale", "interp_size", "interp_exact")


class Fpn(nn.Module):
    """conv -> pool -> conv -> upsample x2, added to a 1x1 lateral of the earlier map -> conv -> 1x1
    head (a dense-prediction map, so that every output pixel shows where the upsample put its values)."""

    def __init__(self, form: str = "module"):
        super().__init__()
        self.form = form
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.UpsamplingNearest2d(scale_factor=2) if form == "nearest2d" else nn.Upsample(scale_factor=2)
        self.lat = nn.Conv2d(8, 8, 1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(self.pool(a)))
        if self.form == "interp_scale":
            u = F.interpolate(b, scale_factor=2, mode="nearest")
        elif self.form == "interp_size":
            u = F.interpolate(b, size=(16, 16))
        elif self.form == "interp_exact":   # the same pixels for integer factors
            u = F.interpolate(b, scale_factor=(2.0, 2.0), mode="nearest-exact")
        else:
            u = self.up(b)
        y = torch.relu(self.c3(torch.relu(u + self.lat(a))))
        return self.head(y)


class Rect(nn.Module):
    """A rectangular factor (2, 3) between two convs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(F.interpolate(torch.relu(self.c1(x)), scale_factor=(2, 3), mode="nearest"))


def _net(form="module"):
    torch.manual_seed(0)
    return Fpn(form).eval()





def _upsample_node(q: QGraph):
    (node,) = [n for n in q.nodes if n.op is QOp.UPSAMPLE]
    return node


# --- (a) importers -------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_torch_import_matches_pytorch(form):
    m = _net(form)
    g = load_graph(m, SHAPE)
    ups = [n for n in g.nodes if n.op is Op.UPSAMPLE]
    assert [tuple(n.attrs["scale"]) for n in ups] == [(2, 2)] and g.shape(ups[0].name) == (8, 16, 16)
    x = torch.rand(3, *SHAPE)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("form", ["module", "interp_size"])
def test_onnx_import_from_both_exporters_matches_onnxruntime(tmp_path, form, dynamo):
    m = _net(form)
    path = tmp_path / f"fpn_{form}_{dynamo}.onnx"
    to_onnx(m, path, dynamo, SHAPE)
    assert any(n.op_type == "Resize" for n in onnx.load(str(path)).graph.node)  # what the exporters emit
    g = load_graph(path)
    assert [tuple(n.attrs["scale"]) for n in g.nodes if n.op is Op.UPSAMPLE] == [(2, 2)]
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    want = ort_run(path, x)
    np.testing.assert_allclose(run_graph(g, x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(want, m(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_rectangular_factor_imports_from_torch_and_onnx(tmp_path):
    torch.manual_seed(1)
    m = Rect().eval()
    path = tmp_path / "rect.onnx"
    to_onnx(m, path, False, (3, 5, 4))
    x = torch.rand(2, 3, 5, 4)
    for g in (load_graph(m, (3, 5, 4)), load_graph(path)):
        assert [tuple(n.attrs["scale"]) for n in g.nodes if n.op is Op.UPSAMPLE] == [(2, 3)]
        assert g.shape(g.output) == (4, 10, 12)
        np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


CTMS = ("half_pixel", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn", "align_corners",
        "half_pixel_symmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@pytest.mark.parametrize("ctm", CTMS)
def test_onnx_resize_modes_accepted_exactly_when_onnxruntime_replicates(ctm):
    """Each (coordinate_transformation_mode, nearest_mode) pair is imported iff onnxruntime's Resize
    is exact replication for integer factors; then the import equals onnxruntime."""
    x = np.random.default_rng(3).standard_normal((1, 2, 5, 6)).astype(np.float32)
    for nm in NEAREST:
        for factor, sizes in ((2, False), (3, False), (4, True)):
            model = resize_model(ctm, nm, factor, sizes=sizes)
            want = ort_run(model, x)
            exact = want.shape == (1, 2, 5 * factor, 6 * factor) and np.array_equal(
                want, x.repeat(factor, 2).repeat(factor, 3))
            if exact:
                np.testing.assert_array_equal(run_graph(load_graph(model), x), want)
            else:
                with pytest.raises(ModelError, match="'rs' \\(Resize\\).*does not replicate pixels exactly"):
                    load_graph(model)


@pytest.mark.parametrize("opset,op", [(10, "Resize"), (9, "Upsample"), (7, "Upsample")])
def test_old_onnx_resize_and_upsample(opset, op):
    model = resize_model(factor=3, opset=opset, op=op)
    x = np.random.default_rng(4).standard_normal((1, 2, 5, 6)).astype(np.float32)
    g = load_graph(model)
    assert [tuple(n.attrs["scale"]) for n in g.nodes] == [(3, 3)]
    np.testing.assert_array_equal(run_graph(g, x), ort_run(model, x))


# --- refusals, by name ---------------------------------------------------------------------------

@pytest.mark.parametrize("up, why", [
    (nn.Upsample(scale_factor=2, mode="bicubic"), "mode='bicubic'"),
    (nn.Upsample(scale_factor=1.5), r"scale factors \(1.5, 1.5\) are not positive integers"),
    (nn.Upsample(size=(12, 12)), r"output size \(12, 12\) is not an integer multiple of the 8x8 map"),
])
def test_torch_refusals_name_the_node_and_the_fix(up, why):
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), up)
    with pytest.raises(ModelError, match=f"node '_1' \\(Upsampl\\w+\\): .*{why}.*nearest-neighbour replication or bilinear"):
        load_graph(m, (3, 8, 8))


def test_torch_functional_refusals():
    class Bicubic(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)

    class Fraction(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.5)

    with pytest.raises(ModelError, match="node 'interpolate' .*mode='bicubic'.*integer factors"):
        load_graph(Bicubic(), (3, 8, 8))
    with pytest.raises(ModelError, match=r"node 'interpolate' .*\(2.5, 2.5\) are not positive integers"):
        load_graph(Fraction(), (3, 8, 8))


def test_onnx_refusals():
    with pytest.raises(ModelError, match="'rs' \\(Resize\\): mode 'linear' with coordinate_transformation_mode "
                                         "'asymmetric'.*nearest-neighbour replication or bilinear"):
        load_graph(resize_model("asymmetric", "floor", mode="linear"))
    with pytest.raises(ModelError, match=r"'rs' \(Resize\): scale factors \(1.5, 1.5\) are not positive integers"):
        load_graph(resize_model("asymmetric", "floor", factor=1.5))
    with pytest.raises(ModelError, match=r"'rs' \(Resize\): output size \(5, 6\) is not an integer multiple"):
        load_graph(resize_model("asymmetric", "floor", factor=0.5, sizes=True, hw=(10, 12)))
    batch = resize_model("asymmetric", "floor", sizes=True)
    batch.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([3, 2, 10, 12], np.int64), "sz"))
    with pytest.raises(ModelError, match=r"'rs' \(Resize\): sizes \[3, 2, 10, 12\]"):
        load_graph(batch)   # resizing the batch


def test_graph_verify_refuses_a_bad_factor():
    g = load_graph(_net(), SHAPE)
    obj = json.loads(g.to_json())
    for n in obj["nodes"]:
        if n["op"] == "upsample":
            n["attrs"]["scale"] = [0, 2]
    with pytest.raises(ModelError, match=r"'up' \(upsample\): scale \(0, 2\) must be positive integers"):
        Graph.from_json(json.dumps(obj)).verify()


# --- (b) spine: simulator == reference executor, every integer path the same ---------------------

@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_network_equals_reference(chip):
    q = load_qgraph(_net(), chip, trained=False, input_shape=SHAPE, calib=images(32, SHAPE))
    up = _upsample_node(q)
    assert up.upsample == (2, 2) and q.spec(up.inputs[0]).scale == up.out.scale
    prog = compile_qgraph(q, chip)
    assert any(i.op is InstrKind.UPSAMPLE for ph in prog.phases for c in ph.cores for t in c.tasks for i in t.instrs)
    x = random_inputs(q, 3, 0)
    for mode in ("ideal", "bit_true"):
        want = run_qgraph(q, x, mode, chip)
        assert want.shape == (3, 5, 16, 16) and len(np.unique(want[0, 0])) > 8  # a map that varies
        assert np.array_equal(run_program(prog, x, mode), want), mode


def test_rectangular_factor_compiles_and_equals_reference():
    torch.manual_seed(1)
    q = load_qgraph(Rect().eval(), TINY, trained=False, input_shape=(3, 5, 4))
    assert _upsample_node(q).upsample == (2, 3)
    x = random_inputs(q, 2, 1)
    want = run_qgraph(q, x, "bit_true", TINY)
    assert want.shape == (2, 4, 10, 12)
    assert np.array_equal(run_program(compile_qgraph(q, TINY), x, "bit_true"), want)
    assert np.array_equal(run_qgraph(q, x, "ideal", TINY), plain_int_exec(q, x))


@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_fast_executor_equals_reference(mode):
    q = load_qgraph(_net("interp_scale"), TINY, trained=False, input_shape=SHAPE)
    x = random_inputs(q, 3, 1)
    assert np.array_equal(run_qgraph_fast(q, x, mode, TINY, seed=2), run_qgraph(q, x, mode, TINY, seed=2))


def test_reference_equals_an_independent_integer_executor_and_tracks_float():
    m = _net()
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE, calib=images(64, SHAPE))
    assert_reference_is_exact_and_tracks_float(m, q, SHAPE, TINY)


# --- (c) compiler, timing and energy ----------------------------------------------------------------

def test_upsample_rows_wait_for_input_row_y_div_sh():
    q = load_qgraph(_net(), TINY, trained=False, input_shape=SHAPE)
    up = _upsample_node(q)
    assert input_rows(up, 0, 0, 8) == (0, 0) and input_rows(up, 5, 5, 8) == (2, 2)
    assert input_rows(up, 3, 6, 8) == (1, 3) and input_rows(up, 15, 15, 8) == (7, 7)
    prog = compile_qgraph(q, TINY)
    low = _Lowerer(prog, 1, 16, None)
    _, h_in, _, r_in = low.geom(up.inputs[0])
    _, h_out, _, r_out = low.geom(up.name)
    assert (h_in, h_out) == (8, 16)
    for k in range((h_out - 1) // r_out + 1):
        y0, y1 = k * r_out, min(h_out, (k + 1) * r_out) - 1
        assert low.in_rows(up, up.inputs[0], k) == ((y0 // 2) // r_in, (y1 // 2) // r_in)
    if r_out == r_in == 1:  # one row per chunk: output rows 4 and 5 both read input row 2 only
        assert low.in_rows(up, up.inputs[0], 4) == low.in_rows(up, up.inputs[0], 5) == (2, 2)


def test_timing_runs_and_counts_one_lane_op_per_output_element():
    q = load_qgraph(_net(), TINY, trained=False, input_shape=SHAPE)
    up = _upsample_node(q)
    assert simd_lane_ops(q, up.name) == math.prod(up.out.shape) == 8 * 16 * 16
    prog = compile_qgraph(q, TINY)
    instrs = [i for ph in prog.phases for c in ph.cores for t in c.tasks for i in t.instrs if i.layer == up.name]
    assert {i.op for i in instrs} >= {InstrKind.UPSAMPLE}
    assert sum(simd_ops_of(i, q) for i in instrs if i.op is InstrKind.UPSAMPLE) == 8 * 16 * 16  # cost model
    assert lower(prog, 2).counts[up.name].simd_ops == pytest.approx(2 * 8 * 16 * 16)  # simulator, 2 images
    rep = simulate_timing(prog, images=2)
    assert rep.throughput_img_s > 0


# --- (d) QAT -------------------------------------------------------------------------------------

def test_qat_trains_through_the_upsample_and_matches_the_integer_export():
    net = prepare_qat(_net(), SHAPE, TINY, calib=images(16, SHAPE), input_scale=1 / 255)
    x = torch.from_numpy(images(4, SHAPE, seed=2))
    loss = F.cross_entropy(net(x).mean((2, 3)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = {k: p.grad for k, p in net.named_parameters() if k.startswith("weight.")}
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    qg = export_qgraph(net)
    assert _upsample_node(qg).upsample == (2, 2)
    assert_qat_export_matches(net, qg, SHAPE, TINY)


# --- (e) IR: JSON round trips keep the factor; old files load ------------------------------------

def test_json_round_trips_keep_the_factor_and_old_files_load():
    torch.manual_seed(1)
    q = load_qgraph(Rect().eval(), TINY, trained=False, input_shape=(3, 5, 4))
    name = _upsample_node(q).name
    assert QGraph.from_json(q.to_json()).node(name).upsample == (2, 3)
    prog = compile_qgraph(q, TINY)
    again = Program.from_json(prog.to_json())
    assert again.qgraph.node(name).upsample == (2, 3) and again.to_json() == prog.to_json()
    g = load_graph(Rect().eval(), (3, 5, 4))
    assert Graph.from_json(g.to_json()).node(name).attrs["scale"] == (2, 3)
    # a file written before upsampling existed has no 'upsample' field: every node defaults to (1, 1)
    old = QGraph.from_json(json.dumps(strip_key(json.loads(q.to_json()), "upsample")))
    assert all(n.upsample == (1, 1) for n in old.nodes)
    with pytest.raises(QuantError, match=f"upsample '{name}': output shape"):
        old.verify()   # and the upsample node, now without its factor, is caught
