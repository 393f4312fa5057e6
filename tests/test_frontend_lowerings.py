"""Lowerings the importers do for common constructs the chip has no direct op for: grouped and
depthwise convolutions become the equivalent dense, block-diagonal conv (MobileNet-style blocks then
import, quantise, compile and simulate bit-true like any dense network), and a mean over the
spatial dims becomes global average pooling."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imcflow.config import TINY
from imcflow.errors import ModelError
from imcflow.frontend import load_graph, run_graph
from imcflow.frontend.normalize import dense_grouped_weight
from imcflow.ir.graph import Op


@pytest.mark.parametrize("c_in,c_out,groups", [(4, 6, 1), (4, 6, 2), (8, 8, 8), (6, 12, 3)])
def test_dense_weight_computes_the_grouped_conv(c_in, c_out, groups):
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(2, c_in, 7, 7, generator=g)
    w = torch.randn(c_out, c_in // groups, 3, 3, generator=g)
    dense = torch.from_numpy(dense_grouped_weight(w.numpy(), groups, "test"))
    assert dense.shape == (c_out, c_in, 3, 3)
    assert int((dense != 0).sum()) == int((w != 0).sum())  # only the groups' own weights are non-zero
    torch.testing.assert_close(F.conv2d(x, dense, padding=1), F.conv2d(x, w, padding=1, groups=groups),
                               rtol=1e-5, atol=1e-5)


def test_groups_that_do_not_divide_are_refused_by_name():
    with pytest.raises(ModelError, match=r"layer7: 6 output channels do not split into 4 groups.*divides"):
        dense_grouped_weight(np.ones((6, 1, 3, 3), np.float32), 4, "layer7")


class MobileBlock(nn.Module):
    """conv, depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU, global pool, classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = F.relu6(self.bn1(self.dw(x)))
        x = torch.relu(self.bn2(self.pw(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _to_onnx(model: nn.Module, args: tuple, path, **kw) -> None:
    """``torch.onnx.export`` (the TorchScript exporter) without its warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, **kw)


def _both_imports(model: nn.Module, x: torch.Tensor, path, **kw) -> tuple:
    """``model`` imported by the PyTorch importer and, exported to ``path``, by the ONNX importer."""
    _to_onnx(model, (x[:1],), path, **kw)
    return load_graph(model, tuple(x.shape[1:])), load_graph(path)


def _randomise_bn(bns, gamma: bool = False) -> None:
    for bn in bns:
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        if gamma:
            bn.weight.data.uniform_(-1.5, 1.5)


def _block():
    torch.manual_seed(0)
    m = MobileBlock()
    _randomise_bn((m.bn1, m.bn2))
    return m.eval()


def test_torch_and_onnx_imports_match_pytorch(tmp_path):
    m = _block()
    x = torch.randn(3, 3, 16, 16)
    want = m(x).detach().numpy()
    for graph in _both_imports(m, x, tmp_path / "mobile.onnx", input_names=["x"], output_names=["y"]):
        dw = [n for n in graph.nodes if n.op is Op.CONV and n.attrs.get("groups") == 8]
        assert len(dw) == 1 and dw[0].params["weight"].shape == (8, 8, 3, 3)
        np.testing.assert_allclose(run_graph(graph, x.numpy()), want, rtol=1e-4, atol=1e-5)


def _assert_simulates_bit_true(model, shape: tuple[int, ...] | None, seed: int) -> None:
    """Compile the post-training-quantised ``model`` for TINY; the simulator equals the integer reference."""
    from imcflow.compiler.pipeline import compile_qgraph
    from imcflow.pipeline import load_qgraph
    from imcflow.quant.reference import run_qgraph
    from imcflow.sim.functional import run_program
    q = load_qgraph(model, TINY, trained=False, input_shape=shape)
    prog = compile_qgraph(q, TINY)
    x = np.random.default_rng(seed).integers(q.input.min_int, q.input.max_int + 1, size=(4, *q.input.shape))
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, TINY)), mode


def test_depthwise_network_simulates_bit_true():
    _assert_simulates_bit_true(_block(), (3, 16, 16), 0)


class SpatialMean(nn.Module):
    """Global average pooling written as a mean over the spatial dims, as many user nets do."""

    def __init__(self, keepdim: bool, method: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.keepdim, self.method = keepdim, method

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.mean((2, 3), keepdim=self.keepdim) if self.method else torch.mean(x, dim=[-2, -1], keepdim=self.keepdim)
        return self.fc(x.flatten(1) if self.keepdim else x)


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("method", [False, True])
@pytest.mark.parametrize("opset", [13, 18])
def test_spatial_mean_imports_as_global_average_pool(tmp_path, keepdim, method, opset):
    torch.manual_seed(0)
    m = SpatialMean(keepdim, method).eval()
    x = torch.randn(2, 3, 6, 6)
    want = m(x).detach().numpy()
    path = tmp_path / "mean.onnx"
    _to_onnx(m, (x[:1],), str(path), opset_version=opset)
    graphs = [load_graph(path)] + ([load_graph(m, (3, 6, 6))] if opset == 13 else [])
    for graph in graphs:
        assert Op.GLOBAL_AVGPOOL in [n.op for n in graph.nodes]
        np.testing.assert_allclose(run_graph(graph, x.numpy()), want, rtol=1e-5, atol=1e-6)


class ChannelMean(nn.Module):
    def forward(self, x):
        return x.mean(1)


def test_mean_over_channels_is_refused_by_name(tmp_path):
    with pytest.raises(ModelError, match=r"mean over dims \[1\].*spatial dims \(2, 3\)"):
        load_graph(ChannelMean(), (3, 4, 4))
    path = tmp_path / "cmean.onnx"
    _to_onnx(ChannelMean(), (torch.randn(1, 3, 4, 4),), str(path))
    with pytest.raises(ModelError, match=r"ReduceMean over axes \[1\].*spatial axes \(2, 3\)"):
        load_graph(path)


class GlobalMax(nn.Module):
    """Global max pooling in the forms user nets write it."""

    def __init__(self, form: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.form = form
        self.pool = nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.form == "module":
            x = self.pool(x).flatten(1)
        elif self.form == "function":
            x = F.adaptive_max_pool2d(x, (1, 1)).flatten(1)
        elif self.form == "method":
            x = x.amax((2, 3))
        else:
            x = torch.amax(x, dim=[-2, -1], keepdim=True).flatten(1)
        return self.fc(x)


@pytest.mark.parametrize("form", ["module", "function", "method", "torch_keepdim"])
@pytest.mark.parametrize("opset", [13, 18])
def test_global_max_pool_imports_as_whole_map_max_pool(tmp_path, form, opset):
    torch.manual_seed(1)
    m = GlobalMax(form).eval()
    x = torch.randn(2, 3, 6, 6)
    want = m(x).detach().numpy()
    path = tmp_path / "gmax.onnx"
    _to_onnx(m, (x[:1],), str(path), opset_version=opset)
    for graph in [load_graph(path)] + ([load_graph(m, (3, 6, 6))] if opset == 13 else []):
        pools = [n for n in graph.nodes if n.op is Op.MAXPOOL]
        assert len(pools) == 1 and pools[0].attrs["kernel"] == (6, 6) and pools[0].out_shape == (8, 1, 1)
        np.testing.assert_allclose(run_graph(graph, x.numpy()), want, rtol=1e-5, atol=1e-6)


def test_global_max_pool_network_simulates_bit_true():
    torch.manual_seed(2)
    _assert_simulates_bit_true(GlobalMax("method").eval(), (3, 8, 8), 1)


class WithSoftmax(nn.Module):
    def __init__(self, where: str, log: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.fc2 = nn.Linear(5, 5)
        self.where, self.log = where, log

    def forward(self, x):
        x = self.conv(x)
        if self.where == "channels":
            x = torch.softmax(x, dim=1)
        x = self.fc(torch.relu(x).mean((2, 3)))
        if self.where == "middle":
            return self.fc2(F.softmax(x, dim=1))
        return F.log_softmax(x, dim=1) if self.log else x.softmax(-1)


@pytest.mark.parametrize("log", [False, True])
def test_final_softmax_is_left_to_the_host_and_said(tmp_path, log):
    torch.manual_seed(3)
    m = WithSoftmax("end", log).eval()
    x = torch.randn(4, 3, 6, 6)
    logits = m.fc(torch.relu(m.conv(x)).mean((2, 3))).detach().numpy()
    path = tmp_path / "soft.onnx"
    op = "LogSoftmax" if log else "Softmax"
    for graph in _both_imports(m, x, path):
        np.testing.assert_allclose(run_graph(graph, x.numpy()), logits, rtol=1e-5, atol=1e-6)
        assert "not a chip op" in graph.meta["host_output"]
    from imcflow.pipeline import describe_source, load_qgraph
    assert f"final {op}" in describe_source(load_qgraph(str(path), TINY))


def test_run_report_says_the_softmax_is_left_to_the_host(tmp_path, capsys):
    from imcflow.cli import main
    path = tmp_path / "soft.onnx"
    _to_onnx(WithSoftmax("end").eval(), (torch.randn(1, 3, 6, 6),), path)
    assert main(["run", str(path), "--chip", "tiny", "--images", "2"]) == 0
    assert "QGraph: trained float weights, post-training quantised (synthetic calibration); the network's final " \
           "Softmax" in capsys.readouterr().out
    assert main(["compile", str(path), "--chip", "tiny"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("weights: trained float weights, "
                                                                          "post-training quantised")


class Squeezed(nn.Module):
    """Global pooling then the classifier on ``x.squeeze(...)``: as a flatten, or refused by name."""

    def __init__(self, form: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.form = form

    def forward(self, x):
        x = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)
        if self.form == "steps":
            x = x.squeeze(-1).squeeze(-1)
        elif self.form == "no dims":
            x = torch.squeeze(x)
        elif self.form == "dim 1":
            x = x.squeeze(1)
        elif self.form == "part-way":
            x = x.squeeze(3)
        return self.fc(x)


def test_squeeze_to_n_c_is_a_flatten_and_simulates_bit_true(tmp_path):
    torch.manual_seed(5)
    m = Squeezed("steps").eval()
    x = torch.randn(4, 3, 6, 6)
    for graph in _both_imports(m, x, tmp_path / "sq.onnx"):
        np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    _assert_simulates_bit_true(m, (3, 6, 6), 5)
    assert load_graph(Squeezed("no dims").eval(), (3, 6, 6)).output  # fx: the non-batch axes of size 1


@pytest.mark.parametrize("form,match", [("dim 1", r"squeeze of axes \[1\] of a \(8, 1, 1\) tensor"),
                                        ("part-way", r"squeezed only to \(1, 8, 1\)")])
def test_other_squeezes_are_refused_by_name(tmp_path, form, match):
    m = Squeezed(form).eval()
    with pytest.raises(ModelError, match=match):
        load_graph(m, (3, 6, 6))
    path = tmp_path / "sq.onnx"
    _to_onnx(Squeezed("no dims").eval(), (torch.randn(1, 3, 6, 6),), str(path))
    with pytest.raises(ModelError, match="Squeeze without axes.*removes the batch axis"):
        load_graph(path)


class WithSigmoid(nn.Module):
    """A multi-label style head: a final sigmoid, as a module, a function or a method (or mid-network)."""

    def __init__(self, form: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.fc2 = nn.Linear(5, 5)
        self.sig = nn.Sigmoid()
        self.form = form

    def logits(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    def forward(self, x):
        x = self.logits(x)
        if self.form == "middle":
            return self.fc2(torch.sigmoid(x))
        return {"module": self.sig, "function": torch.sigmoid, "method": lambda t: t.sigmoid()}[self.form](x)


@pytest.mark.parametrize("form", ["module", "function", "method"])
def test_final_sigmoid_is_left_to_the_host(tmp_path, form):
    torch.manual_seed(4)
    m = WithSigmoid(form).eval()
    x = torch.randn(4, 3, 6, 6)
    for graph in _both_imports(m, x, tmp_path / "sig.onnx"):
        np.testing.assert_allclose(run_graph(graph, x.numpy()), m.logits(x).detach().numpy(), rtol=1e-5, atol=1e-6)
        assert "final" in graph.meta["host_output"] and "igmoid" in graph.meta["host_output"]


def test_sigmoid_in_the_middle_is_an_activation(tmp_path):
    m = WithSigmoid("middle").eval()
    x = torch.randn(1, 3, 6, 6)
    for graph in _both_imports(m, x, tmp_path / "sig.onnx"):
        assert [n.attrs["fn"] for n in graph.nodes if n.op is Op.ACTIVATION] == ["sigmoid"]
        assert "host_output" not in graph.meta
        np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where,match", [("middle", "feeds"), ("channels", "over")])
def test_softmax_elsewhere_is_refused_by_name(tmp_path, where, match):
    m = WithSoftmax(where).eval()
    with pytest.raises(ModelError, match=match):
        load_graph(m, (3, 6, 6))
    path = tmp_path / "soft.onnx"
    _to_onnx(m, (torch.randn(1, 3, 6, 6),), str(path))
    with pytest.raises(ModelError, match=match):
        load_graph(path)


class PreActBlock(nn.Module):
    """A pre-activation residual block (BN -> ReLU -> conv, twice, plus the raw skip), a batch norm
    on the input and a BatchNorm1d after pooling: none of them follows its own conv/linear layer."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_out, self.bn_vec = nn.BatchNorm2d(8), nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(self.bn_in(x))
        y = self.conv1(torch.relu(self.bn1(x)))
        x = x + self.conv2(torch.relu(self.bn2(y)))
        return self.fc(self.bn_vec(F.adaptive_avg_pool2d(torch.relu(self.bn_out(x)), 1).flatten(1)))


def _preact():
    torch.manual_seed(4)
    m = PreActBlock()
    _randomise_bn((m.bn_in, m.bn1, m.bn2, m.bn_out, m.bn_vec), gamma=True)
    return m.eval()


def test_unfoldable_batchnorm_becomes_a_diagonal_layer(tmp_path):
    from imcflow.frontend.normalize import normalize
    m = _preact()
    x = torch.randn(3, 3, 8, 8)
    want = m(x).detach().numpy()
    for graph in _both_imports(m, x, tmp_path / "preact.onnx"):
        norm = normalize(graph)
        lowered = [n for n in norm.nodes if n.attrs.get("lowered_from") == "batchnorm"]
        assert [n.op for n in lowered] == [Op.CONV] * 3 + [Op.LINEAR]  # bn2 folds into conv1
        for n in lowered:
            w = n.params["weight"].reshape(n.params["weight"].shape[:2])
            assert np.array_equal(w, np.diag(np.diag(w)))
        np.testing.assert_allclose(run_graph(norm, x.numpy()), want, rtol=1e-4, atol=1e-5)


def test_preactivation_network_simulates_bit_true():
    _assert_simulates_bit_true(_preact(), (3, 8, 8), 2)


def test_inspect_names_lowered_batchnorms(tmp_path, capsys):
    from imcflow.cli import main
    path = tmp_path / "preact.onnx"
    _to_onnx(_preact(), (torch.randn(1, 3, 8, 8),), str(path))
    assert main(["inspect", str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("batch norm or per-channel constant arithmetic with no conv/linear layer to fold into: "
                           "/bn_in/BatchNormalization, ")
    assert "so the chip needs" in last


class Written(nn.Module):
    """One small net, its flatten and ReLU written in the ways user code writes them."""

    def __init__(self, form: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 5)
        self.form = form

    def forward(self, x):
        x = self.conv(x)
        x = {"clamp_method": lambda t: t.clamp(min=0), "clamp_fn": lambda t: torch.clamp(t, 0, 6),
             "clip": lambda t: torch.clip(t, min=0.0)}.get(self.form, torch.relu)(x)
        x = F.max_pool2d(x, 2)
        if self.form == "shape0":
            return self.fc(x.view(x.shape[0], -1))
        if self.form == "size_index":
            return self.fc(x.reshape(x.size()[0], -1))
        if self.form == "size_dim1":
            return self.fc(x.view(x.size(1), -1))
        if self.form == "shape1":
            return self.fc(x.view(x.shape[1], -1))
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("form", ["shape0", "size_index", "clamp_method", "clamp_fn", "clip", "size0"])
def test_common_spellings_import(form):
    torch.manual_seed(5)
    m = Written(form).eval()
    x = torch.randn(2, 3, 6, 6)
    graph = load_graph(m, (3, 6, 6))
    np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["size_dim1", "shape1"])
def test_flatten_by_a_non_batch_size_is_refused(form):
    with pytest.raises(ModelError, match=r"only reshape to \(N, -1\)"):
        load_graph(Written(form).eval(), (3, 6, 6))


def test_default_exporter_with_a_fixed_batch_imports(tmp_path):
    """``torch.onnx.export``'s default (dynamo) exporter bakes the example batch into flattens:
    ``Reshape(x, [2, -1])`` for a batch-2 example. With the graph input's batch fixed at 2 that is
    the flatten, and the network imports and computes the same."""
    torch.manual_seed(6)
    m = Written("size0").eval()
    x = torch.randn(2, 3, 6, 6)
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=True, verbose=False)
    import onnx
    reshapes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Reshape"]
    assert reshapes, "the exporter no longer writes a Reshape: this test lost its subject"
    graph = load_graph(path)
    np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


class Normalised(nn.Module):
    """Input normalisation inside the network, written four ways, then a small conv net."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        if self.form == "mean_std":
            x = (x - self.mean) / self.std
        elif self.form == "scale":  # pixels in 0..255 scaled in the network
            x = x / 255.0
        elif self.form == "methods":
            x = x.sub(self.mean).mul(2.0)
        elif self.form == "reverse":
            x = 1.0 - x
        x = torch.relu(self.conv(x) * 0.5)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("form,lowered", [("mean_std", 1), ("scale", 0), ("methods", 1), ("reverse", 1)])
def test_per_channel_constant_arithmetic_imports_exactly(tmp_path, form, lowered):
    """``(x - mean) / std`` and the like become one diagonal layer; a pure scale before a conv (and
    one after it) folds into the conv's weights; both importers compute the PyTorch outputs."""
    from imcflow.frontend.normalize import normalize
    torch.manual_seed(5)
    m = Normalised(form).eval()
    x = torch.rand(3, 3, 8, 8) * (255.0 if form == "scale" else 1.0)
    want = m(x).detach().numpy()
    for graph in _both_imports(m, x, tmp_path / f"{form}.onnx"):
        norm = normalize(graph)
        diag = [n for n in norm.nodes if n.attrs.get("lowered_from") == "batchnorm"]
        assert len(diag) == lowered and len([n for n in norm.nodes if n.op is Op.CONV]) == 1 + lowered
        for n in diag:
            w = n.params["weight"].reshape(3, 3)
            assert np.array_equal(w, np.diag(np.diag(w))) and "source_op" in n.attrs
        np.testing.assert_allclose(run_graph(norm, x.numpy()), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", ["mean_std", "scale"])
def test_normalised_input_network_simulates_bit_true(form):
    _assert_simulates_bit_true(Normalised(form).eval(), (3, 8, 8), 3)


class BadArith(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.register_buffer("pixels", torch.rand(1, 1, 8, 8))
        self.register_buffer("zeros", torch.zeros(1, 4, 1, 1))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if self.form == "per_pixel":
            y = y - self.pixels
        elif self.form == "product":
            y = y * y
        elif self.form == "reciprocal":
            y = 1.0 / y
        elif self.form == "zero":
            y = y / self.zeros
        return y.mean((2, 3))


@pytest.mark.parametrize("form,match", [("per_pixel", "varies over the pixels.*one value per channel"),
                                        ("product", "of two activations.*only by weights"),
                                        ("reciprocal", "divides a constant by an activation"),
                                        ("zero", "divides by zero")])
def test_unsupported_arithmetic_is_refused_by_name(tmp_path, form, match):
    m = BadArith(form).eval()
    with pytest.raises(ModelError, match=match):
        load_graph(m, (3, 8, 8))
    path = tmp_path / f"{form}.onnx"
    _to_onnx(m, (torch.rand(1, 3, 8, 8),), path)
    with pytest.raises(ModelError, match="Reciprocal.*unsupported op" if form == "reciprocal" else match):
        load_graph(path)


def test_inspect_names_lowered_arithmetic(tmp_path, capsys):
    from imcflow.cli import main
    path = tmp_path / "norm.onnx"
    _to_onnx(Normalised("mean_std").eval(), (torch.rand(1, 3, 8, 8),), path)
    assert main(["inspect", str(path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "to fold into: /Sub (Sub);" in last and "so the chip needs 3 arrays" in last
    assert "the one on the input also turns the 8-b input into 4-b activations" in last


class OptionA(nn.Module):
    """A CIFAR ResNet stage change with the parameter-free "option A" shortcut (He et al. 2016):
    subsample by 2 and pad the channels with zeros, written as such networks usually write it."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.c1, self.b1 = nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * c)
        self.c2, self.b2 = nn.Conv2d(2 * c, 2 * c, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * c)
        self.fc = nn.Linear(2 * c, 10)
        self.pad = c // 2

    def forward(self, x):
        x = self.stem(x)
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        out = F.relu(out + short)
        out = F.avg_pool2d(out, out.size()[3])
        return self.fc(out.view(out.size(0), -1))


def _option_a():
    torch.manual_seed(8)
    m = OptionA()
    _randomise_bn((m.stem[1], m.b1, m.b2), gamma=True)
    return m.eval()


def _normalised_imports(m: nn.Module, x: torch.Tensor, path, dynamo: bool) -> list:
    """``m`` imported from PyTorch and from an ONNX file of either exporter, normalised."""
    from imcflow.frontend.normalize import normalize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x if dynamo else x[:1],), str(path), dynamo=dynamo, verbose=False)
    return [normalize(load_graph(m, tuple(x.shape[1:]))), normalize(load_graph(path))]


@pytest.mark.parametrize("dynamo", [False, True])
def test_option_a_shortcut_is_one_strided_selection_layer(tmp_path, dynamo):
    """x[:, :, ::2, ::2] then F.pad of the channels: one 1x1 stride-2 layer with a 0/1 weight, from
    PyTorch and from both ONNX exporters' files (Slice + Pad; the TorchScript one computes the pads
    with ConstantOfShape, Transpose and Slice on constants), computing the PyTorch outputs."""
    m = _option_a()
    x = torch.rand(2, 3, 8, 8)
    for norm in _normalised_imports(m, x, tmp_path / "option_a.onnx", dynamo):
        moves = [n for n in norm.nodes if n.attrs.get("lowered_from") in ("slice", "pad")]
        assert len(moves) == 1 and moves[0].attrs["stride"] == (2, 2)
        w = moves[0].params["weight"][:, :, 0, 0]
        assert w.shape == (8, 4) and np.array_equal(w, np.eye(8, 4, -2))
        np.testing.assert_allclose(run_graph(norm, x.numpy()), m(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_option_a_resnet_simulates_bit_true():
    _assert_simulates_bit_true(_option_a(), (3, 8, 8), 5)


class Moves(nn.Module):
    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y = {"crop": lambda: y[:, :, 1:, 1:], "offset": lambda: y[:, :, 1::2, 1::2], "int": lambda: y[:, 0],
             "spatial_pad": lambda: F.pad(y, (0, 1, 0, 1)), "reflect": lambda: F.pad(y, (0, 0, 0, 0, 1, 1), "reflect"),
             "channels": lambda: y[:, 1:3], "batch": lambda: y[:1]}[self.form]()
        return torch.relu(y)


@pytest.mark.parametrize("form,match", [
    ("crop", "slicing axis 2 .* only subsampling from index 0"),
    ("offset", "slicing axis 2 .* only subsampling from index 0"),
    ("int", "integer index or None changes the rank"),
    ("spatial_pad", "asymmetric spatial padding .* pad equally on both sides"),
    ("reflect", "reflect padding"),
    ("batch", "slices the batch axis")])
def test_unsupported_slices_and_pads_are_refused_by_name(form, match):
    with pytest.raises(ModelError, match=match):
        load_graph(Moves(form).eval(), (3, 8, 8))


def test_channel_slice_is_a_selection_layer():
    from imcflow.frontend.normalize import normalize
    torch.manual_seed(9)
    m = Moves("channels").eval()
    x = torch.rand(2, 3, 8, 8)
    norm = normalize(load_graph(m, (3, 8, 8)))
    sel = [n for n in norm.nodes if n.attrs.get("lowered_from") == "slice"]
    assert len(sel) == 1 and np.array_equal(sel[0].params["weight"][:, :, 0, 0], np.eye(4)[1:3])
    np.testing.assert_allclose(run_graph(norm, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,start,end,step", [
    (7, 0, 2**62, 2), (7, 1, -1, 1), (7, -3, 100, 1), (7, -1, -2**62, -1), (7, 5, 1, -2), (7, 10, -10, -3),
    (7, -100, 3, 1), (8, 0, 8, 3), (5, 4, 4, 1)])
def test_slice_indices_follow_onnxruntime(size, start, end, step):
    """The importer's reading of ONNX Slice bounds (clamping, negative steps) against onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from imcflow.frontend.onnx_import import slice_indices

    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v])
              for n, v in (("starts", start), ("ends", end), ("axes", 0), ("steps", step))]
    graph = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], "s",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": np.arange(size, dtype=np.float32)})[0].astype(int).tolist()
    assert slice_indices(size, start, end, step) == want


def test_onnx_slice_of_the_batch_and_asymmetric_pad_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])  # a dynamic batch
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1], [1.0] * 6)
    for op, extra, match in [
            ("Slice", [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                       (("starts", 0), ("ends", 1), ("axes", 0))], "slices the batch axis"),
            ("Pad", [helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 0, 0, 0, 0, 1, 1])],
             "asymmetric spatial padding")]:
        names = [t.name for t in extra]
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node(op, ["c", *names], ["y"])]
        graph = helper.make_graph(nodes, "g", [x], [y], [w, *extra])
        path = tmp_path / f"{op}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        with pytest.raises(ModelError, match=match):
            load_graph(path)


class AdaptiveTo(nn.Module):
    def __init__(self, size, kind: str = "avg"):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = (nn.AdaptiveAvgPool2d if kind == "avg" else nn.AdaptiveMaxPool2d)(size)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


@pytest.mark.parametrize("size,kind,window", [(2, "avg", (4, 4)), ((4, None), "max", (2, 1)), ((8, 8), "avg", None)])
def test_adaptive_pooling_with_equal_windows_is_a_fixed_pool(size, kind, window):
    torch.manual_seed(10)
    m = AdaptiveTo(size, kind).eval()
    x = torch.rand(2, 3, 8, 8)
    graph = load_graph(m, (3, 8, 8))
    pools = [n for n in graph.nodes if n.op in (Op.AVGPOOL, Op.MAXPOOL)]
    assert [tuple(n.attrs["kernel"]) for n in pools] == ([window] if window else [])
    np.testing.assert_allclose(run_graph(graph, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adaptive_pooling_with_unequal_windows_is_refused():
    with pytest.raises(ModelError, match=r"adaptive average pooling of a \(8, 8\) map to \(3, 3\).*divides the map"):
        load_graph(AdaptiveTo(3).eval(), (3, 8, 8))


class ExplicitPad(nn.Module):
    """Zero padding as its own module before an unpadded conv, and before a pool."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=0)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 10)

    def forward(self, x):
        y = torch.relu(self.conv(self.pad(x)))
        y = F.max_pool2d(F.pad(torch.relu(self.conv2(y)), (1, 1, 1, 1)), 2)
        return self.fc(y.flatten(1))


def test_explicit_zero_padding_moves_into_the_conv(tmp_path):
    """nn.ZeroPad2d(1) + an unpadded conv is that conv with padding 1 (ONNX: Pad + Conv); a pad before
    a pool stays a 1x1 layer with padding 1. Both compute the PyTorch outputs."""
    from imcflow.frontend.normalize import normalize
    torch.manual_seed(11)
    m = ExplicitPad().eval()
    x = torch.rand(2, 3, 8, 8)
    for graph in _both_imports(m, x, tmp_path / "pad.onnx"):
        norm = normalize(graph)
        convs = [n for n in norm.nodes if n.op is Op.CONV]
        assert [tuple(n.attrs["padding"]) for n in convs] == [(1, 1), (1, 1), (1, 1)]
        assert [n.attrs.get("lowered_from") for n in convs] == [None, None, "pad"]
        np.testing.assert_allclose(run_graph(norm, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_explicit_padding_network_simulates_bit_true():
    _assert_simulates_bit_true(ExplicitPad().eval(), (3, 8, 8), 6)


class Halves(nn.Module):
    """Channel splits written three ways, the parts recombined by an add and a concat."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        a, b = torch.chunk(y, 2, dim=1)
        c, d = y.split([2, 6], 1)
        e = torch.relu(self.conv2(c))  # a selection that alone feeds a conv moves into it
        return self.fc(torch.cat([a + b, e, d[:, :2]], 1).mean((2, 3)))


@pytest.mark.parametrize("dynamo", [False, True])
def test_channel_splits_are_selection_layers(tmp_path, dynamo):
    torch.manual_seed(12)
    m = Halves().eval()
    x = torch.rand(2, 3, 8, 8)
    for norm in _normalised_imports(m, x, tmp_path / "halves.onnx", dynamo):
        conv2 = [n for n in norm.nodes if n.op is Op.CONV and n.params["weight"].shape[2:] == (3, 3)
                 and n.params["weight"].shape[0] == 4]
        assert len(conv2) == 1 and conv2[0].params["weight"].shape[1] == 8  # the selection moved into it
        np.testing.assert_allclose(run_graph(norm, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_channel_split_network_simulates_bit_true():
    _assert_simulates_bit_true(Halves().eval(), (3, 8, 8), 7)


@pytest.mark.parametrize("act", [nn.SELU(), nn.CELU(), nn.PReLU()])
def test_other_activations_are_refused_with_the_fix(tmp_path, act):
    m = nn.Sequential(nn.Conv2d(3, 4, 3), act, nn.Flatten()).eval()
    path = tmp_path / "act.onnx"
    _to_onnx(m, (torch.rand(1, 3, 6, 6),), path)
    for source in (lambda: load_graph(m, (3, 6, 6)), lambda: load_graph(path)):
        with pytest.raises(ModelError, match=r"activation is not a chip op: .* ReLU, clamps .* SiLU.* retrain"):
            source()


def test_inspect_counts_the_arrays_after_moving_pads_into_convs(tmp_path, capsys):
    from imcflow.cli import main
    path = tmp_path / "pad.onnx"
    _to_onnx(ExplicitPad().eval(), (torch.rand(1, 3, 8, 8),), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "5 weight layers need 5 arrays" in out[-2]
    assert out[-1] == ("slicing/padding imported as 2 1x1 layer(s) with 0/1 weights; after fusing and moving them "
                       "into the convs that read them, 1 remains (/Pad), so the chip needs 4 arrays in all")


def _keras_style(path, tail: str = "flatten") -> None:
    """A channels-last ONNX network as tf2onnx writes Keras models: NHWC input transposed to NCHW,
    a conv, and a transpose back to NHWC before the flatten of a dense layer (or, with ``tail``
    other than "flatten", before a second conv: not a Keras flatten)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    arrays = {"w": rng.normal(size=(4, 3, 3, 3)), "b": rng.normal(size=4), "f": rng.normal(size=(256, 10)) / 16,
              "fb": rng.normal(size=10), "w2": rng.normal(size=(4, 8, 3, 3))}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    inits.append(numpy_helper.from_array(np.array([-1, 256], np.int64), "shape"))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1])]
    if tail == "flatten":
        nodes += [helper.make_node("Reshape", ["rt", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "f"], ["m"]),
                  helper.make_node("Add", ["m", "fb"], ["y"])]
    else:
        nodes += [helper.make_node("Conv", ["rt", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "keras", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_channels_last_onnx_imports_as_nchw(tmp_path):
    """The leading NHWC-to-NCHW transpose is the input layout (reports say so); the transpose back
    before the flatten is absorbed into the dense layer's weight, so the outputs equal
    onnxruntime's on the NHWC images; the network then simulates bit-true."""
    import onnxruntime as ort
    path = tmp_path / "keras.onnx"
    _keras_style(path)
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    graph = load_graph(path)
    assert graph.input_shape == (3, 8, 8) and "the ONNX input is NHWC (1, 8, 8, 3)" in graph.meta["input_layout"]
    np.testing.assert_allclose(run_graph(graph, x.transpose(0, 3, 1, 2)), want, rtol=1e-4, atol=1e-4)
    _assert_simulates_bit_true(path, None, 8)


def test_inspect_says_how_the_input_layout_was_read(tmp_path, capsys):
    from imcflow.cli import main
    path = tmp_path / "keras.onnx"
    _keras_style(path)
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("keras: input (3, 8, 8)")
    assert lines[1].startswith("note: the ONNX input is NHWC (1, 8, 8, 3); its transpose 'xt' to NCHW")


def test_other_transposes_of_activations_are_refused(tmp_path):
    path = tmp_path / "keras_conv.onnx"
    _keras_style(path, tail="conv")
    with pytest.raises(ModelError, match="is a map transposed to NHWC; a transpose to NHWC is taken only before a "
                                         "flatten and a fully connected layer"):
        load_graph(path)


class ShapeWindow(nn.Module):
    """Global pooling written with the map's own sizes, as keyword-spotting DS-CNNs write it."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv = nn.Conv2d(1, 4, (3, 2), padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        window = {"shape": lambda: y.shape[2:], "size": lambda: y.size()[-2:],
                  "batch": lambda: y.shape[:2], "empty": lambda: y.shape[4:]}[self.form]()
        return self.fc(F.avg_pool2d(y, window).flatten(1))


@pytest.mark.parametrize("form", ["shape", "size"])
def test_pooling_window_from_the_maps_sizes(form):
    """F.avg_pool2d(y, y.shape[2:]) on a non-square map is a global average pool."""
    torch.manual_seed(3)
    m = ShapeWindow(form).eval()
    x = torch.rand(2, 1, 7, 5)
    g = load_graph(m, (1, 7, 5))
    np.testing.assert_allclose(run_graph(g, x.numpy()), m(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form,match", [("batch", r"x.shape\[:2\]"), ("empty", r"x.shape\[4:\]")])
def test_pooling_window_from_the_batch_is_refused(form, match):
    with pytest.raises(ModelError, match=match):
        load_graph(ShapeWindow(form).eval(), (1, 7, 5))
