"""Bilinear upsampling (align_corners=False) by integer factors (sh, sw): PyTorch's F.interpolate(x,
scale_factor=(sh, sw), mode='bilinear', align_corners=False). On the chip (a SIMD op like average
pooling) the 2-D weights are integers over D = (2 sh)(2 sw) and y = floor((sum_k w_k x_k + D // 2) / D),
the input's scale kept. Both importers take it (PyTorch modules and functions, ONNX Resize 'linear'
with a half-pixel coordinate mode from both exporters), every integer path computes the same integers,
the compiled program equals the reference executor, and the timing model makes output row y wait for
input rows floor(max(0, (y + 1/2) / sh - 1/2)) and the next.

Model assumption [A]: 4 multiply-adds and one rounding per output element, 5 SIMD lane operations."""

import json
import math
import os
import sys
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from onnx_testing import ort_run, random_inputs, resize_model, to_onnx  # noqa: E402
from quant_testnets import (assert_qat_export_matches, assert_reference_is_exact_and_tracks_float, images,  # noqa: E402
                            plain_int_exec, strip_key)

from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import ModelError, QuantError  # noqa: E402
from imcflow.frontend import load_graph, run_graph  # noqa: E402
from imcflow.frontend.normalize import normalize  # noqa: E402
from imcflow.ir.graph import Graph, Op  # noqa: E402
from imcflow.ir.program import InstrKind, Program  # noqa: E402
from imcflow.ir.qgraph import QGraph, QOp, input_rows, simd_lane_ops  # noqa: E402
from imcflow.perf.model import simd_ops_of  # noqa: E402
from imcflow.pipeline import load_qgraph, prepare_qat  # noqa: E402
from imcflow.quant.fast_exec import run_qgraph_fast  # noqa: E402
from imcflow.quant.qat import export_qgraph  # noqa: E402
from imcflow.quant.reference import bilinear_int, run_qgraph  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402
from imcflow.sim.kernels import upsample_bilinear  # noqa: E402
from imcflow.sim.lower import _Lowerer, lower  # noqa: E402
from imcflow.sim.report import simulate_timing  # noqa: E402

SHAPE = (3, 16, 16)
FORMS = ("module", "module_false", "interp_scale", "interp_size")
FACTORS = ((2, 2), (3, 3), (4, 4), (2, 3))


class Fpn(nn.Module):
    """conv -> pool -> conv -> bilinear x2, added to a 1x1 lateral conv of the earlier map -> conv -> 1x1
    head (a dense-prediction map)."""

    def __init__(self, form: str = "module"):
        super().__init__()
        self.form = form
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False if form == "module_false" else None)
        self.lat = nn.Conv2d(8, 8, 1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(self.pool(a)))
        if self.form == "interp_scale":
            u = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.form == "interp_size":
            u = F.interpolate(b, size=(16, 16), mode="bilinear", align_corners=False)
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
        return self.c2(F.interpolate(torch.relu(self.c1(x)), scale_factor=(2, 3), mode="bilinear",
                                     align_corners=False))


def _net(form="module"):
    torch.manual_seed(0)
    return Fpn(form).eval()


def _rect():
    torch.manual_seed(1)
    return Rect().eval()


def _upsample_node(q: QGraph):
    (node,) = [n for n in q.nodes if n.op is QOp.UPSAMPLE]
    return node


def _float_upsamples(g: Graph) -> list:
    return [(tuple(n.attrs["scale"]), n.attrs.get("mode", "nearest")) for n in g.nodes if n.op is Op.UPSAMPLE]


# --- (a) the integer rule -------------------------------------------------------------------------

def _exact_bilinear(x: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """PyTorch's align_corners=False formula in exact rationals, rounded half up (one (H, W) map)."""
    def taps(n, s):
        out = []
        for y in range(n * s):
            pos = max(Fraction(0), Fraction(2 * y + 1, 2 * s) - Fraction(1, 2))
            i0 = math.floor(pos)
            out.append((i0, min(i0 + 1, n - 1), pos - i0))
        return out

    rows, cols = taps(x.shape[0], factor[0]), taps(x.shape[1], factor[1])
    y = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for i, (r0, r1, ly) in enumerate(rows):
        for j, (c0, c1, lx) in enumerate(cols):
            v = ((1 - ly) * ((1 - lx) * int(x[r0, c0]) + lx * int(x[r0, c1]))
                 + ly * ((1 - lx) * int(x[r1, c0]) + lx * int(x[r1, c1])))
            y[i, j] = math.floor(v + Fraction(1, 2))
    return y


@pytest.mark.parametrize("factor", FACTORS)
def test_integer_rule_is_pytorch_bilinear_rounded_half_up(factor):
    """The integer rule equals PyTorch's formula in exact rationals, rounded half up; PyTorch's float64
    result is that rational to 1e-9, and for power-of-two factors (dyadic weights: no float error)
    floor(v + 1/2) of it equals the rule exactly. For factor 3 PyTorch's float rounding turns some
    exact ties k + 1/2 into k + 0.4999..., so the rule is stated in integers."""
    rng = np.random.default_rng(sum(factor))
    x = rng.integers(-128, 128, size=(2, 3, 5, 4))
    want = bilinear_int(x, factor)
    assert want.shape == (2, 3, 5 * factor[0], 4 * factor[1])
    for n in range(2):
        for c in range(3):
            assert np.array_equal(want[n, c], _exact_bilinear(x[n, c], factor))
    v = F.interpolate(torch.from_numpy(x).double(), scale_factor=tuple(float(f) for f in factor),
                      mode="bilinear", align_corners=False).numpy()
    d = 4 * factor[0] * factor[1]
    assert np.abs(v * d - np.round(v * d)).max() < 1e-9   # an integer over D, up to float error
    if all(f & (f - 1) == 0 for f in factor):
        assert np.array_equal(np.floor(v + 0.5).astype(np.int64), want)
    assert np.array_equal(upsample_bilinear(x, factor), want)   # the simulator's kernel


# --- (b) importers --------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_torch_import_matches_pytorch(form):
    m = _net(form)
    g = load_graph(m, SHAPE)
    assert _float_upsamples(g) == [((2, 2), "bilinear")]
    x = torch.rand(3, *SHAPE)
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("form", ["module", "interp_size"])
def test_onnx_import_from_both_exporters_matches_onnxruntime(tmp_path, form, dynamo):
    m = _net(form)
    path = tmp_path / f"fpn_{form}_{dynamo}.onnx"
    to_onnx(m, path, dynamo, SHAPE)
    (rs,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Resize"]
    assert {a.name: a for a in rs.attribute}["mode"].s == b"linear"
    g = load_graph(path)
    assert _float_upsamples(g) == [((2, 2), "bilinear")]
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    want = ort_run(path, x)
    np.testing.assert_allclose(run_graph(g, x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(want, m(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_rectangular_factor_imports_from_torch_and_onnx(tmp_path):
    m = _rect()
    path = tmp_path / "rect.onnx"
    to_onnx(m, path, False, (3, 5, 4))
    x = torch.rand(2, 3, 5, 4)
    for g in (load_graph(m, (3, 5, 4)), load_graph(path)):
        assert _float_upsamples(g) == [((2, 3), "bilinear")] and g.shape(g.output) == (4, 10, 12)
        np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel"])
@pytest.mark.parametrize("factor,sizes,hw", [(2, False, (5, 6)), (3, False, (5, 6)), (4, True, (5, 6)),
                                             ((2, 3), False, (5, 6)), (3, True, (1, 1)), ((1, 2), False, (1, 4))])
def test_onnx_resize_linear_equals_onnxruntime_and_pytorch(ctm, factor, sizes, hw):
    """Both half-pixel modes are PyTorch's align_corners=False for integer factors (pytorch_half_pixel
    differs from half_pixel only for a 1-pixel output: a 1-pixel axis kept at factor 1, where both give 0)."""
    model = resize_model(ctm, None, factor, sizes=sizes, mode="linear", hw=hw)
    x = np.random.default_rng(5).standard_normal((1, 2, *hw)).astype(np.float32)
    want = ort_run(model, x)
    pair = factor if isinstance(factor, tuple) else (factor, factor)
    torch_y = F.interpolate(torch.from_numpy(x), scale_factor=tuple(float(f) for f in pair), mode="bilinear",
                            align_corners=False).numpy()
    np.testing.assert_allclose(want, torch_y, rtol=1e-5, atol=1e-5)
    g = load_graph(model)
    assert _float_upsamples(g) == [(pair, "bilinear")]
    np.testing.assert_allclose(run_graph(g, x), want, rtol=1e-5, atol=1e-5)


# --- refusals, by name ---------------------------------------------------------------------------

@pytest.mark.parametrize("up, why, fix", [
    (nn.UpsamplingBilinear2d(scale_factor=2), "mode='bilinear' with align_corners=True", "non-uniform weights"),
    (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), "align_corners=True", "non-uniform weights"),
    (nn.Upsample(scale_factor=1.5, mode="bilinear"), r"scale factors \(1.5, 1.5\) are not positive integers",
     "bilinear interpolation with align_corners=False only"),
    (nn.Upsample(scale_factor=2, mode="bicubic"), "mode='bicubic'", "bilinear interpolation with align_corners=False"),
])
def test_torch_refusals_name_the_node_and_the_fix(up, why, fix):
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), up)
    with pytest.raises(ModelError, match=f"node '_1' \\(Upsampl\\w+\\): .*{why}.*{fix}"):
        load_graph(m, (3, 8, 8))


def test_torch_functional_refusals():
    class Corners(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    class Antialias(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="bilinear", antialias=True)

    with pytest.raises(ModelError, match="node 'interpolate' .*align_corners=True.*non-uniform weights.*"
                                         r"nn.Upsample\(scale_factor=2, mode='bilinear', align_corners=False\)"):
        load_graph(Corners(), (3, 8, 8))
    with pytest.raises(ModelError, match="node 'interpolate' .*mode='bilinear' with antialias.*integer factors"):
        load_graph(Antialias(), (3, 8, 8))


@pytest.mark.parametrize("kwargs, why", [
    (dict(ctm="align_corners"), "coordinate_transformation_mode 'align_corners'.*non-uniform weights"),
    (dict(ctm="asymmetric"), "coordinate_transformation_mode 'asymmetric'.*half_pixel"),
    (dict(ctm="tf_half_pixel_for_nn"), "'tf_half_pixel_for_nn'.*half_pixel"),
    (dict(ctm="half_pixel", antialias=1), "antialias"),
    (dict(ctm="half_pixel", factor=1.5), r"scale factors \(1.5, 1.5\) are not positive integers"),
    (dict(opset=10), "opset <= 10 \\(asymmetric coordinates\\).*opset 11"),
    (dict(opset=9, op="Upsample"), "mode 'linear' of Upsample opset <= 10"),
])
def test_onnx_refusals(kwargs, why):
    kwargs = {"mode": "linear", **kwargs}
    with pytest.raises(ModelError, match=f"'rs' \\(\\w+\\): .*{why}"):
        load_graph(resize_model(**kwargs))
    with pytest.raises(ModelError, match="'rs' \\(Resize\\): mode 'cubic'.*bilinear interpolation"):
        load_graph(resize_model("half_pixel", mode="cubic"))


def test_graph_verify_refuses_an_unknown_mode():
    obj = json.loads(load_graph(_net(), SHAPE).to_json())
    for n in obj["nodes"]:
        if n["op"] == "upsample":
            n["attrs"]["mode"] = "bicubic"
    with pytest.raises(ModelError, match=r"'up' \(upsample\): mode 'bicubic' must be 'nearest' or 'bilinear'"):
        Graph.from_json(json.dumps(obj)).verify()


def test_an_activation_after_a_bilinear_upsample_is_not_moved_before_it():
    """ReLU commutes with nearest replication (normalize moves it before), not with interpolation."""
    class UpRelu(nn.Module):
        def __init__(self, mode):
            super().__init__()
            self.c1, self.mode = nn.Conv2d(3, 4, 3, padding=1), mode

        def forward(self, x):
            return torch.relu(F.interpolate(self.c1(x), scale_factor=2, mode=self.mode))

    for mode in ("nearest", "bilinear"):
        torch.manual_seed(2)
        m = UpRelu(mode).eval()
        g = normalize(load_graph(m, (3, 6, 6)))
        ops = [n.op for n in g.nodes]
        assert ops == ([Op.CONV, Op.RELU, Op.UPSAMPLE] if mode == "nearest" else [Op.CONV, Op.UPSAMPLE, Op.RELU])
        x = torch.randn(2, 3, 6, 6)
        np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# --- (c) spine: simulator == reference executor, every integer path the same ---------------------

@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_network_equals_reference(chip):
    q = load_qgraph(_net(), chip, trained=False, input_shape=SHAPE, calib=images(32, SHAPE))
    up = _upsample_node(q)
    assert (up.upsample, up.upsample_mode) == ((2, 2), "bilinear") and q.spec(up.inputs[0]).scale == up.out.scale
    prog = compile_qgraph(q, chip)
    assert any(i.op is InstrKind.UPSAMPLE for ph in prog.phases for c in ph.cores for t in c.tasks for i in t.instrs)
    x = random_inputs(q, 3, 0)
    for mode in ("ideal", "bit_true"):
        want = run_qgraph(q, x, mode, chip)
        assert want.shape == (3, 5, 16, 16) and len(np.unique(want[0, 0])) > 8  # a map that varies
        assert np.array_equal(run_program(prog, x, mode), want), mode


def test_rectangular_factor_compiles_and_equals_reference():
    q = load_qgraph(_rect(), TINY, trained=False, input_shape=(3, 5, 4))
    assert (_upsample_node(q).upsample, _upsample_node(q).upsample_mode) == ((2, 3), "bilinear")
    x = random_inputs(q, 2, 1)
    want = run_qgraph(q, x, "bit_true", TINY)
    assert want.shape == (2, 4, 10, 12)
    assert np.array_equal(run_program(compile_qgraph(q, TINY), x, "bit_true"), want)
    assert np.array_equal(run_qgraph(q, x, "ideal", TINY), plain_int_exec(q, x))


@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_fast_executor_equals_reference(mode):
    for m, shape in ((_net("interp_scale"), SHAPE), (_rect(), (3, 5, 4))):
        q = load_qgraph(m, TINY, trained=False, input_shape=shape)
        x = random_inputs(q, 3, 1)
        assert np.array_equal(run_qgraph_fast(q, x, mode, TINY, seed=2), run_qgraph(q, x, mode, TINY, seed=2))


def test_reference_equals_an_independent_integer_executor_and_tracks_float():
    m = _net()
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE, calib=images(64, SHAPE))
    assert_reference_is_exact_and_tracks_float(m, q, SHAPE, TINY)


# --- (d) compiler, timing and energy ----------------------------------------------------------------

def test_bilinear_rows_wait_for_their_two_input_rows():
    q = load_qgraph(_net(), TINY, trained=False, input_shape=SHAPE)
    up = _upsample_node(q)
    # output row y reads source position (y + 1/2) / 2 - 1/2 clamped at 0: rows floor of it and the next
    assert input_rows(up, 0, 0, 8) == (0, 0) and input_rows(up, 1, 1, 8) == (0, 1)
    assert input_rows(up, 2, 2, 8) == (0, 1) and input_rows(up, 3, 6, 8) == (1, 3)
    assert input_rows(up, 14, 14, 8) == (6, 7) and input_rows(up, 15, 15, 8) == (7, 7)
    prog = compile_qgraph(q, TINY)
    low = _Lowerer(prog, 1, 16, None)
    _, h_in, _, r_in = low.geom(up.inputs[0])
    _, h_out, _, r_out = low.geom(up.name)
    assert (h_in, h_out) == (8, 16)
    for k in range((h_out - 1) // r_out + 1):
        y0, y1 = k * r_out, min(h_out, (k + 1) * r_out) - 1
        lo, hi = max(0, (2 * y0 - 1) // 4), min(7, (2 * y1 - 1) // 4 + 1)
        assert low.in_rows(up, up.inputs[0], k) == (lo // r_in, hi // r_in)
    streams = [s for ph in prog.phases for s in ph.streams if s.tensor == up.inputs[0]]
    assert streams   # the receiving buffer holds the two rows each output row interpolates, plus one filling
    assert all(low.min_window(s) >= math.ceil(2 / r_in) + 2 for s in streams)


def test_timing_counts_five_lane_ops_per_output_element():
    q = load_qgraph(_net(), TINY, trained=False, input_shape=SHAPE)
    up = _upsample_node(q)
    n_out = math.prod(up.out.shape)
    assert n_out == 8 * 16 * 16 and simd_lane_ops(q, up.name) == 5 * n_out
    prog = compile_qgraph(q, TINY)
    instrs = [i for ph in prog.phases for c in ph.cores for t in c.tasks for i in t.instrs if i.layer == up.name]
    assert sum(simd_ops_of(i, q) for i in instrs if i.op is InstrKind.UPSAMPLE) == 5 * n_out  # cost model
    assert lower(prog, 2).counts[up.name].simd_ops == pytest.approx(2 * 5 * n_out)  # simulator, 2 images
    assert simulate_timing(prog, images=2).throughput_img_s > 0


# --- (e) QAT -------------------------------------------------------------------------------------

def test_qat_trains_through_the_upsample_and_matches_the_integer_export():
    net = prepare_qat(_net(), SHAPE, TINY, calib=images(16, SHAPE), input_scale=1 / 255)
    x = torch.from_numpy(images(4, SHAPE, seed=2))
    loss = F.cross_entropy(net(x).mean((2, 3)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = {k: p.grad for k, p in net.named_parameters() if k.startswith("weight.")}
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    qg = export_qgraph(net)
    assert (_upsample_node(qg).upsample, _upsample_node(qg).upsample_mode) == ((2, 2), "bilinear")
    assert_qat_export_matches(net, qg, SHAPE, TINY)


# --- (f) IR: JSON round trips keep the mode; old files load as nearest; verify ----------------------

def test_json_round_trips_keep_the_mode_and_old_files_mean_nearest():
    q = load_qgraph(_rect(), TINY, trained=False, input_shape=(3, 5, 4))
    name = _upsample_node(q).name
    assert QGraph.from_json(q.to_json()).node(name).upsample_mode == "bilinear"
    prog = compile_qgraph(q, TINY)
    again = Program.from_json(prog.to_json())
    assert again.qgraph.node(name).upsample_mode == "bilinear" and again.to_json() == prog.to_json()
    old = QGraph.from_json(json.dumps(strip_key(json.loads(q.to_json()), "upsample_mode")))
    old.verify()
    assert old.node(name).upsample_mode == "nearest"
    g = load_graph(_rect(), (3, 5, 4))
    assert Graph.from_json(g.to_json()).node(name).attrs["mode"] == "bilinear"
    obj = json.loads(g.to_json())
    for n in obj["nodes"]:
        n["attrs"].pop("mode", None)   # a file written before the mode existed
    old_g = Graph.from_json(json.dumps(obj))
    x = np.random.default_rng(0).random((1, 3, 5, 4), dtype=np.float32)
    nearest = F.interpolate(torch.relu(_rect().c1(torch.from_numpy(x))), scale_factor=(2, 3))
    np.testing.assert_allclose(run_graph(old_g, x), _rect().c2(nearest).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_qgraph_verify_keeps_the_mode_on_upsample_nodes():
    q = load_qgraph(_rect(), TINY, trained=False, input_shape=(3, 5, 4))
    obj = json.loads(q.to_json())
    conv = next(n for n in obj["nodes"] if n["op"] == "conv")
    conv["upsample_mode"] = "bilinear"
    with pytest.raises(QuantError, match=f"node '{conv['name']}' \\(conv\\): upsample_mode bilinear is for "
                                         "upsample nodes only"):
        QGraph.from_json(json.dumps(obj)).verify()
    obj = json.loads(q.to_json())
    up = next(n for n in obj["nodes"] if n["op"] == "upsample")
    up["upsample_mode"] = "bicubic"
    with pytest.raises(QuantError, match=f"upsample '{up['name']}': upsample_mode 'bicubic' is not one of"):
        QGraph.from_json(json.dumps(obj)).verify()
