"""Element-wise activations besides ReLU/clamp imported as the float IR's ``activation`` op, from
PyTorch (torch.fx) and ONNX (TorchScript export), checked against PyTorch and onnxruntime; and the
activations and products the importers still refuse by name."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from imcflow.errors import ModelError
from imcflow.frontend import load_graph
from imcflow.ir.graph import Op
from imcflow.ir.graph_exec import run_graph
from onnx_testing import ort_run

SHAPE = (3, 8, 8)


def _net(act: nn.Module, act2: nn.Module | None = None) -> nn.Module:
    """Conv -> BN -> act -> Conv -> act2 -> global pool -> Linear, eval mode, non-trivial BN statistics."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act, nn.Conv2d(8, 4, 3), act2 or act,
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    m[1].running_mean.uniform_(-0.5, 0.5)
    m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _activations(graph) -> list[tuple[str, float | None]]:
    return [(n.attrs["fn"], n.attrs.get("alpha")) for n in graph.nodes if n.op is Op.ACTIVATION]


def _export(m: nn.Module, path, opset: int = 17) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, *SHAPE),), str(path), dynamo=False, opset_version=opset)


def _check_both(m: nn.Module, tmp_path, expected: list, opset: int = 17) -> None:
    """The PyTorch import matches ``m`` and the ONNX import matches onnxruntime; both carry ``expected``
    activation nodes (fn, alpha) in order."""
    x = torch.randn(1, *SHAPE)
    graph = load_graph(m, SHAPE)
    assert _activations(graph) == expected
    np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    path = tmp_path / "act.onnx"
    _export(m, path, opset)
    graph = load_graph(path)
    assert _activations(graph) == expected
    np.testing.assert_allclose(run_graph(graph, x.numpy()), ort_run(path, x.numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act,fn,alpha", [
    (nn.SiLU(), "silu", None),
    (nn.SiLU(inplace=True), "silu", None),
    (nn.GELU(), "gelu", None),
    (nn.GELU(approximate="tanh"), "gelu_tanh", None),
    (nn.Hardswish(), "hardswish", None),
    (nn.Hardsigmoid(), "hardsigmoid", None),
    (nn.LeakyReLU(), "leaky_relu", 0.01),
    (nn.LeakyReLU(0.2, inplace=True), "leaky_relu", 0.2),
    (nn.ELU(), "elu", 1.0),
    (nn.ELU(alpha=0.5), "elu", 0.5),
    (nn.Mish(), "mish", None),
    (nn.Softplus(), "softplus", None),
    (nn.Tanh(), "tanh", None),
    (nn.Sigmoid(), "sigmoid", None),
], ids=lambda v: repr(v) if isinstance(v, nn.Module) else None)
def test_activation_modules_import(tmp_path, act, fn, alpha):
    _check_both(_net(act), tmp_path, [(fn, alpha)] * 2)


@pytest.mark.parametrize("act,fn", [(nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"),
                                    (nn.SiLU(), "silu"), (nn.Mish(), "mish")])
def test_opset_20_exports(tmp_path, act, fn):
    """Opset 20 has a Gelu op; below it the exporter writes GELU's Erf (or Tanh) decomposition (opset 17)."""
    _check_both(_net(act), tmp_path, [(fn, None)] * 2, opset=20)


class Functional(nn.Module):
    """The functional and method forms, with parameters given positionally and by keyword."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.leaky_relu(self.c1(x), 0.1)
        x = F.elu(x, alpha=0.7)
        x = F.gelu(self.c2(x), approximate="tanh")
        x = F.silu(x) + F.hardswish(x) + F.hardsigmoid(x) + F.mish(x) + F.softplus(x)
        y = self.c3(x)
        x = torch.tanh(y) + x.tanh() + torch.sigmoid(y) + x.sigmoid() + F.gelu(x)
        return self.fc(x.mean((2, 3)))


def test_functional_forms_import(tmp_path):
    expected = [("leaky_relu", 0.1), ("elu", 0.7), ("gelu_tanh", None), ("silu", None), ("hardswish", None),
                ("hardsigmoid", None), ("mish", None), ("softplus", None), ("tanh", None), ("tanh", None),
                ("sigmoid", None), ("sigmoid", None), ("gelu", None)]
    _check_both(Functional().eval(), tmp_path, expected)


class InPlace(nn.Module):
    """In-place function and method forms."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = F.leaky_relu(self.c1(x), 0.3, inplace=True)
        x = F.elu_(self.c2(x), 0.4)
        x = F.silu(x, inplace=True).tanh_()
        return self.fc(x.mean((2, 3)))


def test_inplace_forms_import(tmp_path):
    _check_both(InPlace().eval(), tmp_path, [("leaky_relu", 0.3), ("elu", 0.4), ("silu", None), ("tanh", None)])


class Swish(nn.Module):
    """``x * sigmoid(x)`` in the form ``form``; "shared": the sigmoid also feeds another layer."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3)
        self.sig = nn.Sigmoid()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.conv(x)
        if self.form == "x_first":
            x = x * torch.sigmoid(x)
        elif self.form == "sigmoid_first":
            x = torch.mul(self.sig(x), x)
        elif self.form == "method":
            x = x.mul(x.sigmoid())
        elif self.form == "shared":
            s = torch.sigmoid(x)
            x = x * s + s
        return self.fc(self.conv2(x).mean((2, 3)))


@pytest.mark.parametrize("form", ["x_first", "sigmoid_first", "method"])
def test_swish_pattern_is_one_silu(tmp_path, form):
    m = Swish(form).eval()
    _check_both(m, tmp_path, [("silu", None)])
    assert not any(n.op is Op.ACTIVATION and n.attrs["fn"] == "sigmoid" for n in load_graph(m, SHAPE).nodes)


def test_product_with_a_shared_sigmoid_is_refused_by_name(tmp_path):
    """The sigmoid feeds an add too: it is an activation of its own, and x * s a product of two tensors."""
    m = Swish("shared").eval()
    with pytest.raises(ModelError, match=r"node 'mul' \(mul\): mul of two activations.*only by weights"):
        load_graph(m, SHAPE)
    path = tmp_path / "shared.onnx"
    _export(m, path)
    with pytest.raises(ModelError, match=r"\(Mul\): Mul of two activations.*only by weights"):
        load_graph(path)


class Product(nn.Module):
    """A gating product of two different tensors: not a chip op."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return (self.a(x) * torch.sigmoid(self.b(x))).flatten(1)


def test_product_of_two_tensors_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"node 'mul' \(mul\): mul of two activations"):
        load_graph(Product().eval(), SHAPE)
    path = tmp_path / "gate.onnx"
    _export(Product().eval(), path)
    with pytest.raises(ModelError, match=r"Mul of two activations.*only by weights"):
        load_graph(path)


@pytest.mark.parametrize("act,words", [(nn.Softplus(beta=2), "beta=2"), (nn.Softplus(threshold=10), "threshold=10")])
def test_softplus_other_than_default_is_refused(act, words):
    with pytest.raises(ModelError, match=rf"\(Softplus\): Softplus with {words}.*default"):
        load_graph(_net(act), SHAPE)


@pytest.mark.parametrize("act,name", [(nn.Softsign(), "Softsign"), (nn.SELU(), "SELU"), (nn.PReLU(), "PReLU")])
def test_unsupported_activation_is_refused_by_name(act, name):
    with pytest.raises(ModelError) as info:
        load_graph(_net(act), SHAPE)
    text = str(info.value)
    assert f"a {name} activation is not a chip op" in text or f"an {name} activation is not a chip op" in text
    assert "SiLU" in text and "GELU" in text and "retrain" in text


def _onnx_act(node: onnx.NodeProto) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), node], "act",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_hardsigmoid_other_than_pytorch_is_refused():
    model = _onnx_act(helper.make_node("HardSigmoid", ["c"], ["y"], name="hs", alpha=0.2, beta=0.5))
    with pytest.raises(ModelError, match=r"node 'hs' \(HardSigmoid\): HardSigmoid with alpha=0.2, beta=0.5; .*1/6"):
        load_graph_model(model)


@pytest.mark.parametrize("node,fn,alpha", [
    (helper.make_node("LeakyRelu", ["c"], ["y"], name="a"), "leaky_relu", 0.01),
    (helper.make_node("Elu", ["c"], ["y"], name="a", alpha=0.3), "elu", 0.3),
    (helper.make_node("HardSigmoid", ["c"], ["y"], name="a", alpha=1 / 6), "hardsigmoid", None),
    (helper.make_node("Sigmoid", ["c"], ["y"], name="a"), "sigmoid", None),
])
def test_onnx_hand_built_activations(node, fn, alpha):
    """Default attributes, and a Sigmoid as the output of a map (not over classes): an activation."""
    model = _onnx_act(node)
    graph = load_graph_model(model)
    assert _activations(graph) == [(fn, alpha)]
    x = np.random.default_rng(1).standard_normal((1, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(run_graph(graph, x), ort_run(model, x), rtol=1e-5, atol=1e-6)


def test_onnx_lone_erf_is_refused_with_the_export_fix():
    model = _onnx_act(helper.make_node("Erf", ["c"], ["y"], name="erf"))
    with pytest.raises(ModelError, match=r"node 'erf' \(Erf\): .*GELU.*opset_version >= 20"):
        load_graph_model(model)


def test_onnx_softsign_is_refused_by_name(tmp_path):
    model = _onnx_act(helper.make_node("Softsign", ["c"], ["y"], name="ss"))
    with pytest.raises(ModelError, match=r"node 'ss' \(Softsign\): a Softsign activation is not a chip op"):
        load_graph_model(model)


def load_graph_model(model: onnx.ModelProto):
    from imcflow.frontend.onnx_import import from_onnx
    return from_onnx(model)


class Head(nn.Module):
    """A classifier whose last op is a sigmoid (left to the host) or one whose sigmoid feeds a layer."""

    def __init__(self, middle: bool):
        super().__init__()
        self.middle = middle
        self.conv, self.fc, self.fc2 = nn.Conv2d(3, 4, 3), nn.Linear(4, 5), nn.Linear(5, 5)

    def forward(self, x):
        x = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
        return self.fc2(torch.sigmoid(x)) if self.middle else torch.sigmoid(x)


def test_final_sigmoid_stays_a_host_op_and_a_middle_one_is_an_activation(tmp_path):
    head = Head(False).eval()
    x = torch.randn(1, *SHAPE)
    logits = head.fc(torch.relu(head.conv(x)).mean((2, 3))).detach().numpy()
    path = tmp_path / "final.onnx"
    _export(head, path)
    for graph in (load_graph(head, SHAPE), load_graph(path)):
        assert "host_output" in graph.meta and not _activations(graph)
        np.testing.assert_allclose(run_graph(graph, x.numpy()), logits, rtol=1e-5, atol=1e-6)
    middle = Head(True).eval()
    _check_both(middle, tmp_path, [("sigmoid", None)])
    assert "host_output" not in load_graph(middle, SHAPE).meta
