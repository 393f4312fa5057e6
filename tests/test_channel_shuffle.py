"""ShuffleNet's channel shuffle (Zhang et al. 2018; Ma et al. 2018): ``x.view(N, g, C // g, H, W)``,
``transpose(1, 2)``, a view back. Both importers take it as a 1x1 layer with a 0/1 permutation
weight that normalisation contracts into the layers reading it; the compiled program equals the
reference executor; anything else of rank 5 is refused by name."""

import os
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))

from quant_testnets import images  # noqa: E402

from imcflow.compiler.pipeline import compile_qgraph  # noqa: E402
from imcflow.config import JSSC2022, TINY  # noqa: E402
from imcflow.errors import ModelError  # noqa: E402
from imcflow.frontend import load_graph, run_graph  # noqa: E402
from imcflow.frontend.normalize import channel_shuffle, normalize  # noqa: E402
from imcflow.pipeline import load_qgraph  # noqa: E402
from imcflow.quant.reference import run_qgraph  # noqa: E402
from imcflow.sim.functional import run_program  # noqa: E402


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's ``channel_shuffle``, as users write it."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def _cbr(c_in, c_out, k=1, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))


class Unit(nn.Module):
    """ShuffleNet V2 unit: stride 1 splits the channels, stride 2 runs two branches; then a shuffle."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        half = c_out // 2
        self.stride = stride
        if stride > 1:
            self.left = nn.Sequential(_cbr(c_in, c_in, 3, stride, c_in, relu=False), _cbr(c_in, half))
        self.right = nn.Sequential(_cbr(c_in if stride > 1 else half, half), _cbr(half, half, 3, stride, half, False),
                                   _cbr(half, half))

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.right(b)), 1)
        else:
            out = torch.cat((self.left(x), self.right(x)), 1)
        return shuffle(out, 2)


class ShuffleTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _cbr(3, 16, 3)
        self.units = nn.Sequential(Unit(16, 32, 2), Unit(32, 32, 1))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        y = self.units(self.stem(x))
        n, c, h, w = y.shape
        y = y.view(n, 4, c // 4, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)  # another spelling, 4 groups
        return self.fc(y.mean((2, 3)))


SHAPE = (3, 12, 12)


def _net() -> nn.Module:
    torch.manual_seed(0)
    m = ShuffleTiny()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("c, groups", [(8, 2), (12, 3), (12, 4), (6, 6), (6, 1)])
def test_permutation_is_torchs_shuffle(c, groups):
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)
    layer = channel_shuffle((c, 1, 1), groups, "t")
    want = shuffle(x, groups)
    if layer is None:
        assert torch.equal(want, x)
    else:
        got = F.conv2d(x, torch.from_numpy(layer[1]["weight"]))
        assert torch.equal(got, want) and layer[0]["lowered_from"] == "shuffle"


@pytest.mark.parametrize("dynamo", [False, True])
def test_both_importers_match_pytorch(tmp_path, dynamo):
    m = _net()
    x = torch.rand(2, *SHAPE)
    want = m(x).detach().numpy()
    path = tmp_path / "shuffle.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x[:1],), str(path), dynamo=dynamo)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0], want[:1], rtol=1e-4,
                               atol=1e-5)
    for graph in (load_graph(m, SHAPE), load_graph(path)):
        shuffles = [n for n in graph.nodes if n.attrs.get("lowered_from") == "shuffle"]
        assert len(shuffles) == 3
        np.testing.assert_allclose(run_graph(graph, x.numpy()), want, rtol=1e-4, atol=1e-5)
        norm = normalize(graph)
        assert len([n for n in norm.nodes if n.attrs.get("lowered_from") == "shuffle"]) < 3  # contracted away
        np.testing.assert_allclose(run_graph(norm, x.numpy()), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_compiled_network_equals_reference(chip):
    q = load_qgraph(_net(), chip, trained=False, input_shape=SHAPE, calib=images(32, SHAPE))
    prog = compile_qgraph(q, chip)
    x = np.random.default_rng(1).integers(q.input.min_int, q.input.max_int + 1, size=(3, *q.input.shape))
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_program(prog, x, mode), run_qgraph(q, x, mode, chip)), mode


class _Bad(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.c, self.how = nn.Conv2d(3, 8, 1), how

    def forward(self, x):
        y = self.c(x)
        n, c, h, w = y.shape
        if self.how == "other transpose":
            return y.view(n, 2, c // 2, h, w).transpose(1, 3).reshape(n, c, h, w)
        if self.how == "rank-5 view":
            return y.view(n, 2, c // 2, h * w, 1).reshape(n, c, h, w)
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c * h, w)


@pytest.mark.parametrize("how, match", [("other transpose", r"unsupported tensor method .transpose\(\): transpose/permute \(1, 3\)"),
                                        ("rank-5 view", "channel grouping of a channel shuffle"),
                                        ("bad view back", "view the .* back to")])
def test_other_rank_5_views_are_refused_by_name(how, match):
    with pytest.raises(ModelError, match=match):
        load_graph(_Bad(how), (3, 4, 4))
