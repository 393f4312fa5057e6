"""QAT: the forward pass is the chip's arithmetic; a training step runs on cifar10-cnn11; the
QAT network's integer mode equals the reference executor on the exported QGraph exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imcflow.config import IDEAL, TINY
from imcflow.errors import QuantError
from imcflow.frontend import run_graph
from imcflow.ir.qgraph import pick_full_scale
from imcflow.models import get_model
from imcflow.pipeline import prepare_qat
from imcflow.quant.qat import export_qgraph, floor_ste, prepare_qat as prepare_qat_graph, round_ste
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
from quant_testnets import every_op_graph, images


def test_ste_rounding():
    v = torch.tensor([-1.5, -0.5, 0.49, 0.5, 2.5], requires_grad=True)
    r = round_ste(v)
    assert r.tolist() == [-1.0, 0.0, 0.0, 1.0, 3.0]
    r.sum().backward()
    assert v.grad.tolist() == [1.0] * 5
    assert floor_ste(torch.tensor([-0.5, 1.9])).tolist() == [-1.0, 1.0]


@pytest.fixture(scope="module")
def cnn11_step():
    """cifar10-cnn11 as a QAT network after one optimizer step (forward + backward + step)."""
    torch.manual_seed(0)
    model = get_model("cifar10-cnn11").eval()
    net = prepare_qat(model, (3, 32, 32), "jssc2022", calib=images(8, (3, 32, 32)), input_scale=1 / 255)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.from_numpy(images(2, (3, 32, 32), seed=3))
    loss = F.cross_entropy(net(x), torch.tensor([1, 7]))
    loss.backward()
    grads = {k: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for k, p in net.named_parameters()}
    opt.step()
    return net, before, grads, float(loss.detach())


def test_qat_step_on_cnn11_updates_every_parameter(cnn11_step):
    net, before, grads, loss = cnn11_step
    assert np.isfinite(loss)
    assert all(grads.values()), [k for k, g in grads.items() if not g]
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    # every weight and bias moves; step sizes get gradients (LSQ scales them down, so a step may
    # be below float32 resolution)
    assert {k for k in before if k.startswith(("weight.", "bias."))} <= changed
    assert not any(k.startswith("fixed_scale") for k in changed)  # input and logit scales are fixed
    assert any(k.startswith("scale.") for k in changed)


def test_cnn11_integer_mode_equals_reference_bit_true(cnn11_step):
    net = cnn11_step[0]
    qg = export_qgraph(net)
    x = images(2, (3, 32, 32), seed=11)
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, x), "bit_true", "jssc2022"))
    net.set_mode("int")
    try:
        with torch.no_grad():
            got = net(torch.from_numpy(x)).numpy()
    finally:
        net.set_mode("qat")
    assert np.array_equal(got, ref.astype(np.float32))
    # the QAT forward (float requant) is within a few 16-b output steps of the integers
    with torch.no_grad():
        qat = net(torch.from_numpy(x)).numpy()
    assert np.abs(qat - ref).max() <= 32 * qg.spec(qg.output).scale


def test_exported_qgraph_uses_the_training_arithmetic(cnn11_step):
    net = cnn11_step[0]
    qg = export_qgraph(net)
    for n in qg.mvm_nodes():
        w_int, s_w = net.weight_int(n.name)
        assert np.array_equal(n.weight, w_int.detach().numpy().astype(np.int8))
        rows = n.weight.shape[1] * int(np.prod(n.weight.shape[2:]))
        if rows <= 1152:
            assert n.adc_full_scale_rows == pick_full_scale(rows, (1152, 576, 288, 144, 72, 36))
    assert (qg.input.bits, qg.input.scale) == (8, 1 / 255)
    assert qg.spec(qg.output).bits == 16


@pytest.mark.parametrize("chip", [TINY, IDEAL], ids=lambda c: c.name)
def test_every_op_qat_matches_reference(chip):
    net = prepare_qat_graph(every_op_graph(), chip, calib=images(16), input_scale=1 / 255)
    x = images(6, seed=2)
    qg = export_qgraph(net)
    mode = "ideal" if chip.adc.lossless else "bit_true"
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, x), mode, chip))
    got = net.set_mode("int")(torch.from_numpy(x)).numpy()
    assert np.array_equal(got, ref.astype(np.float32))
    qat = net.set_mode("qat")(torch.from_numpy(x)).detach().numpy()
    assert np.abs(qat - ref).max() <= 16 * qg.spec(qg.output).scale


def test_ideal_adc_switch_uses_exact_counts():
    net = prepare_qat_graph(every_op_graph(), TINY, calib=images(16), input_scale=1 / 255)
    x = images(4, seed=2)
    qg = export_qgraph(net)
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, x), "ideal", TINY))
    qat = net.set_adc("ideal")(torch.from_numpy(x)).detach().numpy()
    assert np.abs(qat - ref).max() <= 16 * qg.spec(qg.output).scale
    with pytest.raises(QuantError, match="adc"):
        net.set_adc("analog")


def test_state_dict_round_trip_reproduces_the_export():
    net = prepare_qat_graph(every_op_graph(), TINY, calib=images(16), input_scale=1 / 255)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.1)
    other = prepare_qat_graph(every_op_graph(), TINY, calib=images(4, seed=9), input_scale=1 / 255)
    other.load_state_dict(net.state_dict())
    assert export_qgraph(other).to_json() == export_qgraph(net).to_json()


def test_float_mode_is_the_float_graph():
    g = every_op_graph()
    net = prepare_qat_graph(g, TINY, calib=images(8))
    x = images(4, seed=6)
    got = net.set_mode("float")(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(got, run_graph(g, x), atol=1e-5)


def test_training_reduces_loss_on_a_tiny_task():
    torch.manual_seed(0)
    net = prepare_qat_graph(every_op_graph(), TINY, calib=images(32), input_scale=1 / 255)
    x = torch.from_numpy(images(8, seed=8))
    y = torch.arange(8) % 10
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_bad_settings():
    with pytest.raises(QuantError, match="a_bits"):
        prepare_qat_graph(every_op_graph(), TINY, a_bits=0)
    with pytest.raises(QuantError, match="calibration inputs"):
        prepare_qat_graph(every_op_graph(), TINY, calib=images(2, (3, 4, 4)))
    with pytest.raises(QuantError, match="mode"):
        prepare_qat_graph(every_op_graph(), TINY).set_mode("fp16")
