"""1-D networks (keyword spotting / audio over (N, C, L) features, TC-ResNet style): both importers take
them as 2-D networks of height 1 (a Conv1d of kernel k is the Conv2d of kernel (1, k)), so they
quantise, compile and simulate like any other network; (N, C, L) inputs are accepted everywhere."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from imcflow.cli import main
from imcflow.compiler.pipeline import compile_qgraph
from imcflow.config import JSSC2022, TINY
from imcflow.errors import DataError, ModelError
from imcflow.frontend import load_graph, normalize, run_graph
from imcflow.ir.graph import Op
from imcflow.pipeline import check_inputs, load_qgraph, run_quantised
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
from imcflow.sim.functional import run_program

SHAPE = (10, 32)  # (C, L): 10 MFCC coefficients over 32 frames


class TCResNet(nn.Module):
    """Conv1d stem, one residual block (strided 3-tap convs, strided 1x1 shortcut), global pool, Linear."""

    def __init__(self, pool: str = "adaptive"):
        super().__init__()
        self.pool = pool
        self.stem = nn.Conv1d(10, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm1d(16)
        self.c1 = nn.Conv1d(16, 24, 9, stride=2, padding=4, bias=False)
        self.bn1 = nn.BatchNorm1d(24)
        self.c2 = nn.Conv1d(24, 24, 9, padding=4, bias=False)
        self.bn2 = nn.BatchNorm1d(24)
        self.short = nn.Sequential(nn.Conv1d(16, 24, 1, stride=2, bias=False), nn.BatchNorm1d(24))
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(24, 12)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.c1(x)))
        y = F.relu(self.bn2(self.c2(y)) + self.short(x))
        y = self.gap(y).flatten(1) if self.pool == "adaptive" else y.mean(-1)
        return self.fc(y)


def _net(pool: str = "adaptive") -> nn.Module:
    torch.manual_seed(0)
    m = TCResNet(pool)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm1d):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _features(n: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def _to_onnx(model: nn.Module, path, dynamo: bool, shape=SHAPE) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=dynamo, verbose=False)


def _graphs(m: nn.Module, tmp_path, shape=SHAPE):
    yield "torch", load_graph(m, shape)
    for dynamo in (False, True):
        path = tmp_path / f"net_{dynamo}.onnx"
        _to_onnx(m, path, dynamo, shape)
        yield f"onnx dynamo={dynamo}", load_graph(path)


def _out(graph, x: np.ndarray) -> np.ndarray:
    return run_graph(graph, x[:, :, None, :])


# --- importers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["adaptive", "mean"])
def test_torch_and_onnx_imports_equal_pytorch(pool, tmp_path):
    m = _net(pool)
    x = _features(4, seed=1)
    want = m(torch.from_numpy(x)).detach().numpy()
    for source, graph in _graphs(m, tmp_path):
        assert graph.input_shape == (10, 1, 32), source
        assert "(N, 10, 32)" in graph.meta["input_layout"], source
        convs = [n for n in graph.nodes if n.op is Op.CONV]
        assert [tuple(n.attrs["kernel"]) for n in convs] == [(1, 3), (1, 9), (1, 9), (1, 1)], source
        assert [tuple(n.attrs["stride"]) for n in convs] == [(1, 1), (1, 2), (1, 1), (1, 2)], source
        assert [tuple(n.attrs["padding"]) for n in convs] == [(0, 1), (0, 4), (0, 4), (0, 0)], source
        np.testing.assert_allclose(_out(graph, x), want, rtol=1e-4, atol=1e-5, err_msg=source)
        np.testing.assert_allclose(_out(normalize(graph), x), want, rtol=1e-4, atol=1e-5, err_msg=source)


class Ops1d(nn.Module):
    """The other 1-D constructs: dilated/grouped/'same' convs, 1-D pools, channel concat and slicing,
    zero padding, per-channel constants, max pooling to 1, squeeze(-1), BatchNorm1d after a flatten."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(6, 8, 3, padding="same", dilation=2)
        self.pad = nn.ConstantPad1d(1, 0.0)
        self.c2 = nn.Conv1d(8, 8, 3, groups=4)
        self.mp = nn.MaxPool1d(2)
        self.ap = nn.AvgPool1d(3, stride=1, padding=1)
        self.amp = nn.AdaptiveMaxPool1d(1)
        self.bn = nn.BatchNorm1d(12)
        self.fc = nn.Linear(12, 5)
        self.register_buffer("mean", torch.linspace(-0.5, 0.5, 6).reshape(6, 1))

    def forward(self, x):
        x = torch.relu(self.c1(x - self.mean))
        x = self.mp(torch.relu(self.c2(self.pad(x))))
        x = torch.cat([self.ap(x), F.pad(x, (0, 0, 2, 2))], dim=1)[:, 2:14]
        x = F.max_pool1d(x, 2) * 2.0
        return self.fc(self.bn(self.amp(x).squeeze(-1)))


def test_other_1d_ops_match_pytorch(tmp_path):
    torch.manual_seed(3)
    m = Ops1d().eval()
    m.bn.running_mean.uniform_(-0.2, 0.2)
    x = _features(3, seed=2, shape=(6, 20))
    want = m(torch.from_numpy(x)).detach().numpy()
    for source, graph in _graphs(m, tmp_path, (6, 20)):
        assert tuple(graph.node(graph.nodes[0].name).attrs.get("dilation", (1, 1))) in ((1, 2), (1, 1)), source
        np.testing.assert_allclose(_out(normalize(graph), x), want, rtol=1e-4, atol=1e-5, err_msg=source)
    conv = next(n for n in load_graph(m, (6, 20)).nodes if n.name == "c1")
    assert tuple(conv.attrs["dilation"]) == (1, 2) and tuple(conv.attrs["padding"]) == (0, 2)


class MorePools(nn.Module):
    """Zero padding before an unpadded conv, channel chunks, functional pools, amax(-1)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.ZeroPad1d(2), nn.Conv1d(4, 8, 5), nn.ReLU(), nn.AvgPool1d(2))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a, b = torch.chunk(self.c(x), 2, dim=1)
        return self.fc(F.max_pool1d(F.pad(a + b, (1, 1)), 2).amax(-1))


def test_more_1d_pooling_and_padding(tmp_path):
    torch.manual_seed(4)
    m = MorePools().eval()
    x = _features(3, seed=6, shape=(4, 12))
    want = m(torch.from_numpy(x)).detach().numpy()
    for source, graph in _graphs(m, tmp_path, (4, 12)):
        np.testing.assert_allclose(_out(normalize(graph), x), want, rtol=1e-4, atol=1e-5, err_msg=source)
    conv = next(n for n in normalize(load_graph(m, (4, 12))).nodes if n.op is Op.CONV)
    assert tuple(conv.attrs["padding"]) == (0, 2)  # the ZeroPad1d moved into the conv
    m.c[3] = nn.AdaptiveAvgPool1d(6)  # to a size that divides L: the fixed pool (TorchScript cannot export it)
    pool = next(n for n in load_graph(m, (4, 12)).nodes if n.op is Op.AVGPOOL)
    assert tuple(pool.attrs["kernel"]) == (1, 2)
    np.testing.assert_allclose(_out(load_graph(m, (4, 12)), x), want, rtol=1e-4, atol=1e-5)


def test_batchnorm1d_after_flatten_still_works():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.BatchNorm1d(4 * 36), nn.ReLU(), nn.Linear(144, 3)).eval()
    m[2].running_mean.uniform_(-0.2, 0.2)
    x = torch.rand(2, 3, 8, 8)
    g = load_graph(m, (3, 8, 8))
    assert g.input_shape == (3, 8, 8) and "input_layout" not in g.meta
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


# --- quantisation and the spine ---------------------------------------------------------------------

def test_quantises_and_tracks_the_float_model():
    m = _net()
    q = load_qgraph(m, TINY, trained=False, input_shape=SHAPE, calib=_features(64, seed=3))
    assert q.input.shape == (10, 1, 32)
    assert [n.kernel for n in q.mvm_nodes()][:4] == [(1, 3), (1, 9), (1, 9), (1, 1)]
    x = _features(16, seed=4)
    got = run_quantised(q, x, "ideal", TINY)  # (N, C, L) inputs taken as (N, C, 1, L)
    assert np.array_equal(got, dequantize_output(q, run_qgraph(q, quantize_input(q, x[:, :, None]), "ideal", TINY)))
    want = m(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 0.25


@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_1d_network_equals_reference(chip, tmp_path):
    path = tmp_path / "tc.onnx"
    _to_onnx(_net("mean"), path, dynamo=True)
    for model in (_net(), path):
        q = load_qgraph(model, chip, trained=False, input_shape=SHAPE if model is not path else None)
        prog = compile_qgraph(q, chip)
        x = np.random.default_rng(0).integers(q.input.min_int, q.input.max_int + 1, size=(3, *q.input.shape))
        for mode in ("ideal", "bit_true"):
            assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, chip)), (model, mode)


# --- CLI and inputs ---------------------------------------------------------------------------------

def test_cli_run_and_inspect_take_1d_inputs(tmp_path, capsys):
    m = _net()
    path, xs, ys = tmp_path / "kws.onnx", tmp_path / "x.npy", tmp_path / "y.npy"
    _to_onnx(m, path, dynamo=False)
    x = _features(3, seed=5)
    np.save(xs, x)
    assert main(["run", str(path), "--inputs", str(xs), "--save-outputs", str(ys), "--mode", "float"]) == 0
    np.testing.assert_allclose(np.load(ys), m(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert "3 input(s) (10, 1, 32)" in capsys.readouterr().out  # the map that holds them
    assert main(["run", str(path), "--inputs", str(xs), "--save-outputs", str(ys), "--chip", "tiny"]) == 0
    q = load_qgraph(str(path), "tiny")
    assert np.array_equal(np.load(ys), run_quantised(q, x, "bit_true", "tiny"))
    assert main(["inspect", str(path)]) == 0
    assert "1-D network: inputs (N, C, L) = (N, 10, 32)" in capsys.readouterr().out
    np.save(xs, x[:, :, :16])
    assert main(["run", str(path), "--inputs", str(xs)]) != 0
    assert "(3, 10, 16); the model expects (N, 10, 32) or (N, 10, 1, 32)" in capsys.readouterr().err


def test_inputs_of_either_shape():
    x = _features(2)
    assert check_inputs(x, (10, 1, 32)).shape == (2, 10, 1, 32)
    assert check_inputs(x[:, :, None], (10, 1, 32)).shape == (2, 10, 1, 32)
    with pytest.raises(DataError):
        check_inputs(x, (10, 2, 32))
    assert load_graph(_onnx_1d("Relu"), (4, 9)).input_shape == (4, 1, 9)


# --- refusals ---------------------------------------------------------------------------------------

class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 4, 3)

    def forward(self, x):
        return self.c(x).transpose(1, 2)


class ChannelMean(nn.Module):
    def forward(self, x):
        return x.mean(1)


@pytest.mark.parametrize("module,words", [
    (nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"), ["'c'", "Conv1d", "padding_mode='reflect'", "zero"]),
    (nn.AdaptiveAvgPool1d(4), ["AdaptiveAvgPool1d", "unequal windows", "AvgPool1d"]),
    (nn.Conv2d(4, 4, 3), ["Conv2d", "2-D conv/pooling window", "(4, 9)", "input_shape (C, L)"]),
    (nn.LSTM(9, 4), ["LSTM", "unsupported module", "Conv1d"]),
    (Transposed(), [".transpose()", "unsupported tensor method"]),
    (ChannelMean(), [".mean()", "dims [1]", "dim 2 (-1) of an (N, C, L)"]),
    (nn.Sequential(nn.ConstantPad1d(1, 0.5)), ["ConstantPad1d", "value 0.5", "zero padding"]),
    (nn.MaxPool1d(2, dilation=2), ["MaxPool1d", "dilated pooling"]),
], ids=["reflect", "adaptive-unequal", "conv2d-on-1d", "lstm", "transpose", "channel-mean", "pad-value",
        "dilated-pool"])
def test_unsupported_1d_torch_ops_are_refused_by_name(module, words):
    wrapped = nn.Sequential()
    wrapped.add_module("c", module)
    with pytest.raises(ModelError) as info:
        load_graph(wrapped.eval(), (4, 9))
    msg = str(info.value)
    assert msg.startswith("node ") and all(w in msg for w in words), msg


def _onnx_1d(op: str, weight_shape=None, **attrs):
    inputs = ["x"] + (["w"] if weight_shape else [])
    inits = [numpy_helper.from_array(np.ones(weight_shape, np.float32), "w")] if weight_shape else []
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], name="n1", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("model,words", [
    (_onnx_1d("ReduceMean", axes=[1]), ["'n1' (ReduceMean)", "axes [1]", "axis 2 (-1) of an (N, C, L)"]),
    (_onnx_1d("MaxPool", kernel_shape=[2], dilations=[2]), ["'n1' (MaxPool)", "dilations", "dilation 1"]),
    (_onnx_1d("Conv", (4, 4, 3), pads=[1, 0]), ["'n1' (Conv)", "not symmetric", "equal padding"]),
    (_onnx_1d("Transpose", perm=[0, 2, 1]), ["'n1' (Transpose)", "perm [0, 2, 1]"]),
    (_onnx_1d("Unsqueeze", axes=[1]), ["'n1' (Unsqueeze)", "axes [1]", "at axis 2"]),
], ids=["reduce-channels", "dilated-pool", "asymmetric-pads", "channels-last", "unsqueeze"])
def test_unsupported_1d_onnx_ops_are_refused_by_name(model, words):
    if model.graph.node[0].op_type == "Unsqueeze":  # axes as an attribute is opset < 13
        model.opset_import[0].version = 11
    with pytest.raises(ModelError) as info:
        load_graph(model)
    msg = str(info.value)
    assert all(w in msg for w in words), msg
