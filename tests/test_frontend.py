"""Importers (torch.fx, ONNX), normalisation and the float executor, checked against PyTorch and onnxruntime."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from imcflow.errors import ModelError
from imcflow.frontend import load_graph, normalize, run_graph
from imcflow.frontend.onnx_import import from_onnx
from imcflow.frontend.torch_fx import from_torch
from imcflow.ir.graph import NORMALIZED_OPS, Graph, Op, graphs_equal
from imcflow.models import get_model, input_shape

TINY = ["mlp-tiny", "cnn-tiny", "resnet-tiny"]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def randomised(name, seed=0):
    """Zoo model with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    m = get_model(name)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def export(model, shape, path, keep_bn=False):
    x = torch.randn(2, *shape)
    kwargs = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False) if keep_bn else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}}, **kwargs)
    return path


def ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


def same_structure(a: Graph, b: Graph, rtol=1e-5, atol=1e-6):
    """Same ops, inputs (by position), shapes and params within tolerance; names may differ."""
    assert a.input_shape == b.input_shape
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    pos_a = {n.name: i for i, n in enumerate(a.nodes)} | {a.input_name: -1}
    pos_b = {n.name: i for i, n in enumerate(b.nodes)} | {b.input_name: -1}
    for na, nb in zip(a.nodes, b.nodes):
        assert na.out_shape == nb.out_shape, na.name
        assert [pos_a[i] for i in na.inputs] == [pos_b[i] for i in nb.inputs], na.name
        assert sorted(na.params) == sorted(nb.params), na.name
        for k in na.params:
            np.testing.assert_allclose(na.params[k], nb.params[k], rtol=rtol, atol=atol, err_msg=na.name)
        for k in ("kernel", "stride", "padding", "min", "max"):
            assert na.attrs.get(k) == nb.attrs.get(k), (na.name, k)
    assert pos_a[a.output] == pos_b[b.output]


@pytest.mark.parametrize("name", TINY)
def test_torch_import_matches_pytorch(name):
    model, shape = randomised(name), input_shape(name)
    g = from_torch(model, shape, name=name)
    g.verify()
    x = torch.randn(4, *shape)
    ref = model(x).detach().numpy()
    assert rel_err(run_graph(g, x), ref) <= 1e-5
    assert rel_err(run_graph(g, x.numpy()[0]), ref[0]) <= 1e-5  # one sample, no batch
    n = normalize(g)
    assert n.is_normalized() and set(n.ops()) <= NORMALIZED_OPS
    assert rel_err(run_graph(n, x), ref) <= 1e-5
    assert graphs_equal(Graph.from_json(n.to_json()), n)


def test_resnet_tiny_structure():
    g = load_graph("resnet-tiny")
    ops = g.ops()
    assert Op.ADD in ops and Op.CONCAT in ops and Op.GLOBAL_AVGPOOL in ops and Op.BATCHNORM in ops
    n = normalize(g)
    assert Op.BATCHNORM not in n.ops()
    assert len(n.weight_nodes()) == len(g.weight_nodes()) == 6
    add = next(x for x in n.nodes if x.op is Op.ADD)
    assert len(n.consumers(add.inputs[1])) >= 2  # the shortcut is read by the block and the add


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_zoo_import(name):
    model = randomised(name)
    g = load_graph(model, (3, 64, 64))  # small image keeps the test fast; structure is the same
    x = torch.randn(1, 3, 64, 64)
    ref = model(x).detach().numpy()
    assert rel_err(run_graph(g, x), ref) <= 1e-5
    assert rel_err(run_graph(normalize(g), x), ref) <= 1e-4  # folding reorders float rounding over 50 layers
    weights = sum(n.params["weight"].size + (n.bias.size if n.bias is not None else 0) for n in g.weight_nodes())
    bn = sum(n.params["gamma"].size * 2 for n in g.nodes if n.op is Op.BATCHNORM)
    assert weights + bn == sum(p.numel() for p in model.parameters())


def test_resnet50_parameter_count():
    assert sum(p.numel() for p in get_model("resnet50").parameters()) == 25_557_032
    assert sum(p.numel() for p in get_model("resnet18").parameters()) == 11_689_512


@pytest.mark.parametrize("name", TINY)
def test_onnx_export_imports_to_same_graph(name, tmp_path):
    model, shape = randomised(name, seed=3), input_shape(name)
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    want = normalize(from_torch(model, shape))
    # eval-mode export folds batch norm itself: compare with the normalized torch import
    folded = export(model, shape, tmp_path / "folded.onnx")
    g = from_onnx(folded)
    same_structure(normalize(g), want, rtol=1e-4, atol=1e-5)
    assert rel_err(run_graph(g, x), ort_run(folded, x)) <= 1e-5
    # a PRESERVE export keeps BatchNormalization nodes: same graph as the raw torch import
    kept = export(model, shape, tmp_path / "kept.onnx", keep_bn=True)
    h = load_graph(kept)
    same_structure(h, from_torch(model, shape))
    assert rel_err(run_graph(h, x), ort_run(kept, x)) <= 1e-5
    assert rel_err(run_graph(h, x), model(torch.from_numpy(x)).detach().numpy()) <= 1e-5


class Zoo(nn.Module):
    """Every supported torch construct in one network."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding="same")
        self.bn = nn.BatchNorm2d(8)
        self.r6 = nn.ReLU6()
        self.ht = nn.Hardtanh(-0.5, 2.0)
        self.c2 = nn.Conv2d(8, 8, 5, stride=2, padding=2, bias=False)
        self.ap = nn.AvgPool2d(3, stride=1, padding=1)
        self.mp = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.id = nn.Identity()
        self.fc = nn.Linear(16 * 2 * 2, 12)
        self.bn1 = nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = self.r6(self.bn(self.c1(x)))
        y = torch.nn.functional.relu(self.c2(self.ht(x)))
        y = torch.add(self.ap(y), y)
        z = torch.cat([y, self.id(y)], dim=1)
        z = self.mp(self.drop(z))
        z = z.view(z.size(0), -1)
        return self.fc2(torch.relu(self.bn1(self.fc(z))))


def test_torch_supported_constructs(tmp_path):
    model = Zoo()
    model.bn.running_var.uniform_(0.5, 2)
    model.bn1.running_mean.uniform_(-1, 1)
    model.eval()
    g = from_torch(model, (3, 8, 8))
    assert g.node("r6").op is Op.CLAMP and g.node("r6").attrs == {"min": 0.0, "max": 6.0}
    assert g.node("ht").attrs == {"min": -0.5, "max": 2.0}
    assert g.node("c1").attrs["padding"] == (1, 1)
    x = torch.randn(3, 3, 8, 8)
    ref = model(x).detach().numpy()
    assert rel_err(run_graph(g, x), ref) <= 1e-5
    n = normalize(g)
    assert Op.BATCHNORM not in n.ops()
    assert rel_err(run_graph(n, x), ref) <= 1e-5
    path = export(model, (3, 8, 8), tmp_path / "zoo.onnx")
    assert rel_err(run_graph(from_onnx(path), x), ort_run(path, x.numpy())) <= 1e-5


def _onnx_model(nodes, inits, in_shape, out_shape, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_onnx_matmul_add_clip_and_reshape(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((48, 6)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32),
             "shape": np.array([0, -1], np.int64), "lo": np.array(0, np.float32), "hi": np.array(1.5, np.float32)}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"], name="reshape"),
             helper.make_node("MatMul", ["f", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Clip", ["a", "lo", "hi"], ["y"], name="clip")]
    model = _onnx_model(nodes, inits, ["N", 3, 4, 4], ["N", 6])
    path = tmp_path / "mm.onnx"
    onnx.save(model, str(path))
    g = from_onnx(path)
    assert g.ops() == [Op.FLATTEN, Op.LINEAR, Op.CLAMP]
    np.testing.assert_array_equal(g.node("mm").params["bias"], inits["b"])
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    assert rel_err(run_graph(g, x), ort_run(path, x)) <= 1e-5


def _qcdq_model(act_qdq: bool):
    """Conv with an int8 per-channel weight, then Gemm with a 4-b weight given as float -> Q -> Clip -> DQ."""
    rng = np.random.default_rng(5)
    w1 = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w2 = rng.standard_normal((10, 4)).astype(np.float32)
    inits = {"w1q": w1, "w1s": np.array([0.01, 0.02, 0.03, 0.04], np.float32), "w1z": np.zeros(4, np.int8),
             "w2": w2, "w2s": np.array(0.25, np.float32), "w2z": np.array(0, np.int8),
             "lo": np.array(-8, np.int8), "hi": np.array(7, np.int8),
             "as": np.array(0.05, np.float32), "az": np.array(0, np.uint8),
             "alo": np.array(0, np.uint8), "ahi": np.array(15, np.uint8)}
    nodes = [helper.make_node("DequantizeLinear", ["w1q", "w1s", "w1z"], ["w1"], axis=0),
             helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    act = "r"
    if act_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["r", "as", "az"], ["rq"]),
                  helper.make_node("Clip", ["rq", "alo", "ahi"], ["rqc"]),
                  helper.make_node("DequantizeLinear", ["rqc", "as", "az"], ["rd"])]
        act = "rd"
    nodes += [helper.make_node("GlobalAveragePool", [act], ["p"], name="gap"),
              helper.make_node("Flatten", ["p"], ["f"], name="flat"),
              helper.make_node("QuantizeLinear", ["w2", "w2s", "w2z"], ["w2q"]),
              helper.make_node("Clip", ["w2q", "lo", "hi"], ["w2c"]),
              helper.make_node("DequantizeLinear", ["w2c", "w2s", "w2z"], ["w2d"]),
              helper.make_node("Gemm", ["f", "w2d"], ["y"], name="fc", transB=1)]
    return _onnx_model(nodes, inits, ["N", 3, 6, 6], ["N", 10]), inits


def test_onnx_qcdq_weights_fold_to_float(tmp_path):
    model, inits = _qcdq_model(act_qdq=False)
    path = tmp_path / "qcdq.onnx"
    onnx.save(model, str(path))
    g = from_onnx(path)
    conv, fc = g.node("conv"), g.node("fc")
    assert conv.attrs["w_bits"] == 8 and fc.attrs["w_bits"] == 4
    np.testing.assert_array_equal(conv.params["weight"], inits["w1q"] * inits["w1s"].reshape(4, 1, 1, 1))
    q = np.clip(np.rint(inits["w2"] / 0.25), -8, 7)
    np.testing.assert_array_equal(fc.params["weight"], (q * 0.25).astype(np.float32))
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert rel_err(run_graph(g, x), ort_run(path, x)) <= 1e-5


def test_onnx_activation_qdq_recorded_and_dropped(tmp_path):
    model, _ = _qcdq_model(act_qdq=True)
    g = from_onnx(model)
    assert g.ops() == [Op.CONV, Op.RELU, Op.GLOBAL_AVGPOOL, Op.FLATTEN, Op.LINEAR]
    relu = g.node("relu")
    assert relu.attrs["act_scale"] == pytest.approx(0.05) and relu.attrs["act_bits"] == 4
    assert g.node("gap").inputs == ("relu",)
    assert normalize(g).node("relu").attrs["act_scale"] == pytest.approx(0.05)


def test_load_graph_dispatch(tmp_path):
    assert load_graph("cnn-tiny").input_shape == (3, 8, 8)
    assert load_graph("resnet-tiny", (3, 16, 16)).node("pool").out_shape == (8, 1, 1)
    with pytest.raises(ModelError, match="'fc' .*256 inputs but the input has 1024"):
        load_graph("cnn-tiny", (3, 16, 16))  # its classifier is sized for 8x8 inputs
    path = export(get_model("mlp-tiny").eval(), (1, 8, 8), tmp_path / "m.onnx")
    assert load_graph(path).ops() == load_graph(str(path)).ops() == [Op.FLATTEN, Op.LINEAR, Op.RELU, Op.LINEAR]
    assert load_graph(onnx.load(str(path))).output == load_graph(path, (1, 8, 8)).output
    with pytest.raises(ModelError, match=r"takes inputs of shape \(1, 8, 8\), not \(1, 16, 16\)"):
        load_graph(path, (1, 16, 16))
    with pytest.raises(ModelError, match="cannot import a list"):
        load_graph([1, 2])


def test_normalize_removes_identities():
    from imcflow.ir.graph import Node
    rng = np.random.default_rng(0)
    nodes = (Node("mp1", Op.MAXPOOL, ("x",), {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0)}, {}, (2, 4, 4)),
             Node("c", Op.CONV, ("mp1",), {"kernel": (4, 4), "stride": (1, 1), "padding": (0, 0)},
                  {"weight": rng.standard_normal((3, 2, 4, 4))}, (3, 1, 1)),
             Node("cl", Op.CLAMP, ("c",), {"min": 0.0, "max": float("inf")}, {}, (3, 1, 1)),
             Node("r", Op.RELU, ("cl",), {}, {}, (3, 1, 1)),
             Node("gap", Op.GLOBAL_AVGPOOL, ("r",), {}, {}, (3, 1, 1)),
             Node("cat", Op.CONCAT, ("gap",), {"axis": 0}, {}, (3, 1, 1)),
             Node("f", Op.FLATTEN, ("cat",), {}, {}, (3,)),
             Node("f2", Op.FLATTEN, ("f",), {}, {}, (3,)))
    g = Graph("ids", "x", (2, 4, 4), nodes, "f2")
    n = normalize(g)
    assert [(x.name, x.op) for x in n.nodes] == [("c", Op.CONV), ("cl", Op.RELU), ("f", Op.FLATTEN)]
    assert n.node("c").inputs == ("x",) and n.output == "f"
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(n, x), run_graph(g, x))


class Functional(nn.Module):
    """Pooling written with torch.nn.functional instead of modules."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(self.c(x), 2)
        x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)


def test_torch_functional_pooling():
    model = Functional().eval()
    g = from_torch(model, (3, 8, 8))
    assert g.ops() == [Op.CONV, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.FLATTEN]
    assert g.nodes[2].attrs == {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1)}
    x = torch.randn(2, 3, 8, 8)
    assert rel_err(run_graph(g, x), model(x).detach().numpy()) <= 1e-5
