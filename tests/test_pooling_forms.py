"""Pooling as users write it beyond the plain window.

Max pooling with more windows at the end: PyTorch's and ONNX's ``ceil_mode``, ONNX ``SAME_UPPER``
and end-heavy pads (SqueezeNet, GoogLeNet, TF exports). The IR keeps them as ``pad_end``: -inf
padding at the bottom and right, so every integer path pools the same windows; both importers
match PyTorch / onnxruntime, and the compiled program equals the reference executor. Global sum
pooling (``x.sum((2, 3))``, ONNX ReduceSum) is the global average times the map's area."""

import os
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from quant_testnets import images, plain_int_exec  # noqa: E402

from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import ModelError  # noqa: E402
from imcflow.frontend import load_graph, run_graph  # noqa: E402
from imcflow.ir.graph import Op  # noqa: E402
from imcflow.ir.qgraph import QGraph, ceil_pad_end, window_out  # noqa: E402
from imcflow.pipeline import load_qgraph  # noqa: E402
from imcflow.quant.fast_exec import run_qgraph_fast  # noqa: E402
from imcflow.quant.reference import run_qgraph  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402
from imcflow.sim.report import simulate_timing  # noqa: E402


class Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, c_in: int, squeeze: int, expand: int):
        super().__init__()
        self.sq, self.e1 = nn.Conv2d(c_in, squeeze, 1), nn.Conv2d(squeeze, expand, 1)
        self.e3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.sq(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeTiny(nn.Module):
    """SqueezeNet 1.1's shape in small: ceil_mode max pools (3 and 2, stride 2) that add a window."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.f1, self.f2 = Fire(16, 8, 8), Fire(16, 8, 16)
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, ceil_mode=True)  # 10x10 -> 5x5 (floor mode: 4x4)
        x = nn.functional.max_pool2d(self.f1(x), 2, 2, ceil_mode=True)  # 5x5 -> 3x3 (floor mode: 2x2)
        x = F.relu(self.head(self.f2(x)))
        return x.mean((2, 3))


SHAPE = (3, 22, 22)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return SqueezeTiny().eval()


def test_ceil_pad_end_gives_pytorch_lengths():
    for size in range(1, 14):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                for p in range(0, k // 2 + 1):
                    if size + 2 * p < k:
                        continue
                    want = F.max_pool2d(torch.zeros(1, 1, size, 1), (k, 1), (s, 1), (p, 0), ceil_mode=True).shape[2]
                    assert window_out(size, k, s, p, pad_end=ceil_pad_end(size, k, s, p)) == want, (size, k, s, p)


def test_both_importers_match_pytorch_and_onnxruntime(tmp_path):
    m = _net()
    x = torch.rand(3, *SHAPE)
    want = m(x).detach().numpy()
    path = tmp_path / "sq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x[:1],), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}})
    ort_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(ort_out, want, rtol=1e-4, atol=1e-5)
    for graph in (load_graph(m, SHAPE), load_graph(path)):
        pools = [n for n in graph.nodes if n.op is Op.MAXPOOL]
        assert [tuple(n.attrs.get("pad_end", (0, 0))) for n in pools] == [(1, 1), (1, 1)]
        assert [graph.shape(n.name)[1:] for n in pools] == [(5, 5), (3, 3)]
        np.testing.assert_allclose(run_graph(graph, x.numpy()), want, rtol=1e-4, atol=1e-5)


def _onnx_pool(op: str, size: int, **attrs):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="pool", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("size, attrs, pad_end", [
    (8, dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), (1, 1)),  # TF 'SAME' pooling
    (7, dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), (0, 0)),  # symmetric there
    (7, dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]), (1, 1)),
    (7, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1), (0, 2)),
])
def test_onnx_max_pool_end_padding(size, attrs, pad_end):
    model = _onnx_pool("MaxPool", size, **attrs)
    g = load_graph(model)
    assert tuple(g.node("pool").attrs.get("pad_end", (0, 0))) == pad_end
    x = np.random.default_rng(0).standard_normal((2, 2, size, size)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(run_graph(g, x), want, rtol=1e-6)


def test_refusals_name_the_problem():
    with pytest.raises(ModelError, match="ceil_mode=True adds windows to an average pool"):
        load_graph(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(2, ceil_mode=True)), (3, 5, 5))
    g = load_graph(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(2, ceil_mode=True)), (3, 6, 6))  # no extra window
    assert "pad_end" not in next(n for n in g.nodes if n.op is Op.AVGPOOL).attrs
    with pytest.raises(ModelError, match="ceil_mode=1 adds windows to an average pool"):
        load_graph(_onnx_pool("AveragePool", 7, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1))
    with pytest.raises(ModelError, match="not symmetric"):
        load_graph(_onnx_pool("MaxPool", 7, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0]))


@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_network_equals_reference(chip):
    q = load_qgraph(_net(), chip, trained=False, input_shape=SHAPE, calib=images(32, SHAPE))
    assert [n.pad_end for n in q.nodes if n.op.value == "maxpool"] == [(1, 1), (1, 1)]
    assert [n.pad_end for n in QGraph.from_json(q.to_json()).nodes] == [n.pad_end for n in q.nodes]
    prog = compile_qgraph(q, chip)
    x = np.random.default_rng(1).integers(q.input.min_int, q.input.max_int + 1, size=(3, *q.input.shape))
    ref = run_qgraph(q, x, "ideal", chip)
    assert np.array_equal(ref, plain_int_exec(q, x))
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, chip)), mode
        assert np.array_equal(run_qgraph_fast(q, x, mode, chip), run_qgraph(q, x, mode, chip)), mode
    assert simulate_timing(prog, images=2).throughput_img_s > 0


def test_qat_pools_the_same_windows_as_the_integer_export():
    from imcflow.pipeline import prepare_qat
    from imcflow.quant.qat import export_qgraph
    from imcflow.quant.reference import dequantize_output, quantize_input
    net = prepare_qat(_net(), SHAPE, TINY, calib=images(16, SHAPE), input_scale=1 / 255)
    qg = export_qgraph(net)
    assert [n.pad_end for n in qg.nodes if n.op.value == "maxpool"] == [(1, 1), (1, 1)]
    xs = images(4, SHAPE, seed=5)
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, xs), "bit_true", TINY))
    with torch.no_grad():
        got = net.set_mode("int")(torch.from_numpy(xs)).numpy()
    assert np.array_equal(got, ref.astype(np.float32))
    loss = net.set_mode("qat")(torch.from_numpy(xs)).sum()
    loss.backward()  # the -inf end padding passes gradients to the pooled cells only
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


class SumPool(nn.Module):
    """Global sum pooling (``x.sum((2, 3))``), with and without keepdim, and ``torch.sum``."""

    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 4)

    def forward(self, x):
        y = F.relu(self.c(x))
        a = y.sum((2, 3))
        b = torch.sum(y, dim=(-2, -1), keepdim=True).flatten(1)
        return self.fc(a + 0.5 * b)


def test_global_sum_pooling_imports_as_a_scaled_average(tmp_path):
    torch.manual_seed(0)
    m = SumPool().eval()
    x = torch.rand(2, 3, 6, 6)
    path = tmp_path / "sum.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x[:1],), str(path), dynamo=False)
    for graph in (load_graph(m, (3, 6, 6)), load_graph(path)):
        assert sum(n.op is Op.GLOBAL_AVGPOOL for n in graph.nodes) == 2
        np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelError, match="sum over dims"):
        load_graph(_SumChannels(), (3, 4, 4))


class _SumChannels(nn.Module):
    def forward(self, x):
        return x.sum(1)
