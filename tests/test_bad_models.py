"""Bad models: the API raises ModelError with a message naming the node/op, the reason and the fix;
``imcflow inspect`` on the same model exits 2 with one line on stderr."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
import torch
from torch import nn

from imcflow.cli import main
from imcflow.errors import ModelError
from imcflow.frontend import load_graph

RNG = np.random.default_rng(0)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, inits, inputs=(("x", [1, 3, 8, 8]),), outputs=(("y", None),), opset=17):
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv(inp="x", out="y", w="w", name="conv", **attrs):
    attrs.setdefault("pads", [1, 1, 1, 1])
    return helper.make_node("Conv", [inp, w], [out], name=name, **attrs)


def unsupported_op():
    return _model([_conv(out="c"), helper.make_node("Abs", ["c"], ["y"], name="gate")], {"w": _w(4, 3, 3, 3)})


def other_activation():
    return _model([_conv(out="c"), helper.make_node("Softsign", ["c"], ["y"], name="gate")], {"w": _w(4, 3, 3, 3)})


def dynamic_shape():
    return _model([_conv()], {"w": _w(4, 3, 3, 3)}, inputs=(("x", ["N", 3, "H", "W"]),))


def grouped_conv():
    return _model([_conv(group=2)], {"w": _w(3, 1, 3, 3)})


def dilated_pool():  # dilated convolutions import (tests/test_dilation.py); dilated pooling does not
    pool = helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[2, 2], dilations=[2, 2])
    return _model([_conv(out="c"), pool], {"w": _w(4, 3, 3, 3)})


def nan_weights():
    w = _w(4, 3, 3, 3)
    w[1, 0, 0, 0] = np.nan
    return _model([_conv()], {"w": w})


def inf_weights():
    return _model([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                   helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)],
                  {"w": np.full((10, 192), np.inf, np.float32)})


def channel_mismatch():
    return _model([_conv()], {"w": _w(4, 5, 3, 3)})


def add_shape_mismatch():
    return _model([_conv(out="a", name="conv_a"), _conv(out="b", w="w2", name="conv_b"),
                   helper.make_node("Add", ["a", "b"], ["y"], name="residual")],
                  {"w": _w(4, 3, 3, 3), "w2": _w(8, 3, 3, 3)})


def empty_graph():
    return _model([helper.make_node("Identity", ["x"], ["y"], name="noop")], {})


def two_inputs():
    return _model([helper.make_node("Add", ["x", "x2"], ["y"], name="sum")], {},
                  inputs=(("x", [1, 3, 8, 8]), ("x2", [1, 3, 8, 8])))


def two_outputs():
    return _model([_conv(out="y"), helper.make_node("Relu", ["y"], ["z"], name="relu")], {"w": _w(4, 3, 3, 3)},
                  outputs=(("y", None), ("z", None)))


def conv_on_flat_input():
    return _model([_conv()], {"w": _w(4, 3, 3, 3)}, inputs=(("x", [1, 48]),))


def asymmetric_pads():
    return _model([_conv(pads=[0, 0, 1, 1])], {"w": _w(4, 3, 3, 3)})


def reshape_not_flatten():
    return _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
                  {"s": np.array([1, 3, 64], np.int64)})


ONNX_CASES = {
    # builder: words the message must contain
    unsupported_op: ["'gate'", "Abs", "unsupported op", "supported ops are"],
    other_activation: ["'gate'", "Softsign", "not a chip op", "ReLU, clamps", "SiLU", "retrain"],
    dynamic_shape: ["'x'", "dynamic", "fixed"],
    grouped_conv: ["'conv'", "Conv", "3 output channels", "2 groups", "divides"],
    dilated_pool: ["'pool'", "MaxPool", "dilations", "dilation 1"],
    nan_weights: ["'conv'", "weight", "NaN", "fix the weights"],
    inf_weights: ["'fc'", "weight", "infinite"],
    channel_mismatch: ["'conv'", "5 input channels", "input has 3"],
    add_shape_mismatch: ["'residual'", "add", "(4, 8, 8)", "(8, 8, 8)", "equal"],
    empty_graph: ["no layers", "at least one layer"],
    two_inputs: ["2 graph inputs", "exactly one input"],
    two_outputs: ["2 outputs", "exactly one"],
    conv_on_flat_input: ["'conv'", "conv", "(48,)", "(C, H, W)"],
    asymmetric_pads: ["'conv'", "pads", "symmetric"],
    reshape_not_flatten: ["'reshape'", "Reshape", "(N, -1)"],
}


def _check(exc_info, words):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def _check_cli(path, capsys):
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imcflow: error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("build", list(ONNX_CASES), ids=lambda f: f.__name__)
def test_bad_onnx(build, tmp_path, capsys):
    path = tmp_path / f"{build.__name__}.onnx"
    onnx.save(build(), str(path))
    with pytest.raises(ModelError) as info:
        load_graph(path)
    _check(info, ONNX_CASES[build])
    _check_cli(path, capsys)


def test_not_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(ModelError) as info:
        load_graph(path)
    _check(info, ["notes.onnx", "not a readable ONNX model", "re-export"])
    _check_cli(path, capsys)


def test_truncated_onnx_file(tmp_path, capsys):
    good = tmp_path / "good.onnx"
    onnx.save(_model([_conv()], {"w": _w(4, 3, 3, 3)}), str(good))
    load_graph(good).verify()
    data = good.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as info:
        load_graph(path)
    _check(info, ["truncated.onnx", "truncated", "re-export"])
    _check_cli(path, capsys)


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nowhere.onnx"
    with pytest.raises(ModelError, match="no such ONNX file"):
        load_graph(path)
    _check_cli(path, capsys)


def test_unknown_zoo_name(capsys):
    with pytest.raises(ModelError) as info:
        load_graph("resnet-9000")
    _check(info, ["'resnet-9000'", "resnet50", ".onnx"])
    assert main(["inspect", "resnet-9000"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


class Softsign(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Softsign()

    def forward(self, x):
        return self.act(self.fc(x))


class Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class AddConstant(nn.Module):
    """A constant that matches no axis of the activation (3 values against 4 features)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("offset", torch.ones(3))

    def forward(self, x):
        return self.fc(x) + self.offset


@pytest.mark.parametrize("module,shape,words", [
    (Softsign(), (4,), ["'act'", "Softsign", "unsupported activation", "retrain or fine-tune the network"]),
    (Branchy(), (4,), ["cannot trace", "Branchy", "control flow"]),
    (AddConstant(), (4,), ["'add'", "does not broadcast", "one value per channel"]),
    (nn.Sequential(nn.Conv2d(3, 4, 3)), (12,), ["conv", "(12,)", "(C, H, W)"]),
], ids=["softsign", "control_flow", "add_constant", "conv_flat_input"])
def test_bad_torch_modules(module, shape, words):
    with pytest.raises(ModelError) as info:
        load_graph(module.eval(), shape)
    _check(info, words)


def test_torch_module_without_input_shape():
    with pytest.raises(ModelError, match="input shape"):
        load_graph(nn.Linear(3, 3))


def test_bad_w_bits_for_inspect(capsys):
    assert main(["inspect", "mlp-tiny", "--w-bits", "9"]) == 2
    err = capsys.readouterr().err
    assert "w_bits" in err and err.count("\n") == 1
