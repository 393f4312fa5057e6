"""The zoo network cifar10-cnn11: topology, weight count within the chip, fx tracing, trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from imcflow.config import get_preset
from imcflow.errors import ModelError
from imcflow.models import get_model, input_shape
from imcflow.models.cnn11 import WEIGHTS_FILE, cnn11, load_trained


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_topology_and_shapes() -> None:
    model = get_model("cifar10-cnn11")
    assert input_shape("cifar10-cnn11") == (3, 32, 32)
    convs = _convs(model)
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (3, 32, 3), (32, 64, 3), (64, 128, 3)] + [(128, 128, 3)] * 5 + [(128, 128, 1)] * 2
    assert all(c.bias is None for c in convs)
    weight_layers = convs + [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(weight_layers) == 11
    assert sum(m.weight.numel() for m in weight_layers) == 864_352
    out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_fits_the_chip_at_4_bits() -> None:
    chip = get_preset("jssc2022")
    model = cnn11()
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    capacity = chip.n_cores * chip.array.rows * (chip.array.cols // 4)
    assert capacity == 1_179_648 and n_weights <= capacity
    # every 3x3 layer's rows (kh * kw * C_in) fit one array: no row tiles needed
    assert all(c.in_channels * c.kernel_size[0] * c.kernel_size[1] <= chip.array.rows for c in _convs(model))


def test_fx_traces_to_plain_ops() -> None:
    gm = torch.fx.symbolic_trace(cnn11())
    kinds = {type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"}
    assert kinds == {"Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "AdaptiveAvgPool2d", "Flatten", "Linear"}
    x = torch.rand(3, 3, 32, 32)
    model = cnn11().eval()
    gm = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, n_weights", [("cifar10-cnn11-res", 864_352), ("cifar10-cnn11-r16", 864_352),
                                             ("cifar10-cnn11-r16c64", 883_648), ("cifar10-cnn11-r16w", 994_240)])
def test_residual_variants(name: str, n_weights: int) -> None:
    chip = get_preset("jssc2022")
    model = get_model(name).eval()
    weight_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weight_layers) == 11
    assert sum(m.weight.numel() for m in weight_layers) == n_weights <= chip.n_cores * chip.array.rows * 64
    gm = torch.fx.symbolic_trace(model)
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 3  # three basic-block shortcuts
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


def test_residual_block_adds_its_input() -> None:
    """A "b" layer adds the input of the "a" layer before it: with the b conv zeroed and its BN an
    identity, the block's output is relu(relu(a(x)) * 0 + x) = relu(x) = x for x >= 0."""
    from imcflow.models.cnn11 import ResCnn11
    rows = (("c1", 4, 4, 3, None, "a"), ("c2", 4, 4, 3, "gap", "b"))
    model = ResCnn11(rows, num_classes=4).eval()
    torch.nn.init.zeros_(model.convs["c2"][0].weight)
    with torch.no_grad():
        model.fc.weight.copy_(torch.eye(4))
        model.fc.bias.zero_()
    x = torch.rand(1, 4, 5, 5)
    torch.testing.assert_close(model(x), x.mean((2, 3)), rtol=0, atol=1e-6)


def test_load_trained_errors_and_roundtrip(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_trained(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ModelError, match="does not match"):
        load_trained(bad)
    torch.manual_seed(0)
    model = cnn11()
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict(), "epoch": 1}, good)  # a full checkpoint also loads
    loaded = load_trained(good)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.skipif(not WEIGHTS_FILE.is_file(), reason="trained weights not shipped yet")
def test_shipped_weights_load() -> None:
    model = load_trained()
    assert not model.training
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def _random_bn(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_widen_outputs_keeps_the_function(noise: float) -> None:
    from imcflow.models.cnn11 import cnn11_c64, widen_outputs
    torch.manual_seed(0)
    narrow = _random_bn(cnn11(), 1)
    state = widen_outputs(narrow.state_dict(), "c1", "c2", 64, noise=noise, seed=3)
    wide = cnn11_c64().eval()
    wide.load_state_dict(state)  # shapes match the c64 topology
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), rtol=1e-5, atol=1e-5)
    w = state["c2.0.weight"]
    assert torch.equal(state["c1.0.weight"][32:], state["c1.0.weight"][:32])
    assert torch.equal(w[:, :32] == w[:, 32:], torch.ones_like(w[:, :32], dtype=torch.bool)) == (noise == 0)
    assert torch.equal(narrow.state_dict()["c2.0.weight"], narrow.c2[0].weight.data)  # the input is not changed


def test_widen_outputs_fresh_keeps_the_function_with_distinct_new_channels() -> None:
    from imcflow.models.cnn11 import cnn11_c64, widen_outputs
    torch.manual_seed(0)
    narrow = _random_bn(cnn11(), 1)
    state = widen_outputs(narrow.state_dict(), "c1", "c2", 64, seed=3, fresh=True)
    wide = cnn11_c64().eval()
    wide.load_state_dict(state)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), rtol=1e-5, atol=1e-5)
    new = state["c1.0.weight"][32:].flatten(1)
    old = state["c1.0.weight"][:32].flatten(1)
    assert torch.equal(state["c1.0.weight"][:32], narrow.c1[0].weight.data)
    cos = torch.nn.functional.cosine_similarity(new[:, None], old[None], dim=-1)
    assert cos.abs().max() < 0.9  # no new filter is a copy of an old one
    assert torch.count_nonzero(state["c2.0.weight"][:, 32:]) == 0
    assert torch.equal(state["c1.1.running_var"][32:], torch.ones(32))


def test_widen_outputs_refuses_by_name() -> None:
    from imcflow.models.cnn11 import widen_outputs
    state = cnn11().state_dict()
    with pytest.raises(ModelError, match="from 32 to 16"):
        widen_outputs(state, "c1", "c2", 16)
    with pytest.raises(ModelError, match="no 'c11.0.weight'"):
        widen_outputs(state, "c11", "c2", 64)


@pytest.mark.parametrize("name, c1", [("cifar10-cnn11-c64", 64), ("cifar10-cnn11-np3c64", 64), ("cifar10-cnn11", 32)])
def test_a_variant_is_not_given_the_shipped_weights(name: str, c1: int) -> None:
    """``load_trained`` holds cnn11's weights only: a variant built by the same module is its own
    topology (random init), not the shipped network under the variant's name."""
    from imcflow.pipeline import load_float_graph
    graph = load_float_graph(name)
    assert graph.weight_nodes()[0].weight.shape[0] == c1
