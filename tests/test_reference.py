"""The integer reference executor run_qgraph: ideal mode equals an independent plain-integer
executor; bit_true stays close to ideal; analog is deterministic per seed; bad inputs are typed errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imcflow.config import JSSC2022, TINY
from imcflow.errors import DataError, QuantError
from imcflow.quant.calibrate import QuantSpec, calibrate
from imcflow.quant.reference import (avgpool_int, dequantize_output, maxpool_int, quantize_input, run_node,
                                     run_qgraph, run_qgraph_all)
from qgraph_factory import random_qgraph
from quant_testnets import every_op_graph, images, plain_int_exec


@pytest.fixture(scope="module")
def qg_tiny():
    return calibrate(every_op_graph(), images(16), TINY, QuantSpec(input_scale=1 / 255))


@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=["tiny", "jssc2022"])
def test_ideal_equals_plain_integer_network(chip):
    qg = calibrate(every_op_graph(seed=2, c1=16), images(16), chip, QuantSpec(input_scale=1 / 255))
    x = quantize_input(qg, images(6, seed=7))
    assert np.array_equal(run_qgraph(qg, x, "ideal", chip), plain_int_exec(qg, x))


@pytest.mark.parametrize("seed", range(4))
def test_ideal_equals_plain_integer_on_random_qgraphs(seed):
    qg = random_qgraph(seed, TINY, n_conv=3, max_channels=12)
    x = np.random.default_rng(seed).integers(0, 256, size=(3, *qg.input.shape))
    assert np.array_equal(run_qgraph(qg, x, "ideal", TINY), plain_int_exec(qg, x))


def test_row_tiles_are_used_on_the_tiny_chip(qg_tiny):
    # c2 has 16 x 3 x 3 = 144 rows, two tiles of the tiny chip's 72-row array.
    assert qg_tiny.node("c2").rows > TINY.array.rows


def test_bit_true_differs_from_ideal_but_stays_close(qg_tiny):
    x = quantize_input(qg_tiny, images(32, seed=3))
    ideal = run_qgraph_all(qg_tiny, x, "ideal", TINY)
    bt = run_qgraph_all(qg_tiny, x, "bit_true", TINY)
    assert any(not np.array_equal(ideal[n.name], bt[n.name]) for n in qg_tiny.nodes)
    for index, n in enumerate(qg_tiny.nodes):
        if n.is_mvm and n.out.bits <= 8:  # one layer on ideal inputs: ADC rounding moves it by a step at most
            one = run_node(qg_tiny, n, [ideal[i] for i in n.inputs], "bit_true", TINY, 0, index)
            diff = np.abs(one - ideal[n.name])
            assert diff.max() <= 1 and diff.mean() < 0.2, n.name
    yi, yb = dequantize_output(qg_tiny, ideal["fc"]), dequantize_output(qg_tiny, bt["fc"])
    assert np.abs(yi - yb).mean() < 0.25 * np.abs(yi).mean()


def test_analog_is_deterministic_per_seed(qg_tiny):
    x = quantize_input(qg_tiny, images(4, seed=5))
    a0 = run_qgraph(qg_tiny, x, "analog", TINY, seed=0)
    assert np.array_equal(a0, run_qgraph(qg_tiny, x, "analog", TINY, seed=0))
    assert not np.array_equal(a0, run_qgraph(qg_tiny, x, "analog", TINY, seed=1))
    bt = run_qgraph(qg_tiny, x, "bit_true", TINY)
    assert np.abs(a0 - bt).mean() < 0.25 * np.abs(bt).mean()


def test_maxpool_and_avgpool_with_padding_match_torch():
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 8, size=(2, 3, 7, 7))
    t = torch.from_numpy(x.astype(np.float64))
    assert np.array_equal(maxpool_int(x, (3, 3), (2, 2), (1, 1)),
                          F.max_pool2d(t, 3, 2, 1).numpy().astype(np.int64))
    total = F.avg_pool2d(t, 3, 2, 1, divisor_override=1).numpy().astype(np.int64)
    assert np.array_equal(avgpool_int(x, (3, 3), (2, 2), (1, 1)), np.floor((total + 4) / 9).astype(np.int64))


def test_quantize_input_rounds_and_saturates(qg_tiny):
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    x[0, 0, 0, :3] = [0.5 / 255, 2.0, -1.0]
    q = quantize_input(qg_tiny, x)
    assert q[0, 0, 0, :3].tolist() == [1, 255, 0]
    assert np.array_equal(quantize_input(qg_tiny, images(2)), np.round(images(2) * 255).astype(np.int64))


def test_bad_inputs_are_typed_errors(qg_tiny):
    with pytest.raises(DataError, match=r"\(N, 3, 8, 8\)"):
        run_qgraph(qg_tiny, np.zeros((2, 3, 9, 8), dtype=np.int64))
    with pytest.raises(DataError, match="dtype"):
        run_qgraph(qg_tiny, np.zeros((2, 3, 8, 8), dtype=np.float32))
    with pytest.raises(DataError, match="outside"):
        run_qgraph(qg_tiny, np.full((1, 3, 8, 8), 256))
    with pytest.raises(QuantError, match="mode"):
        run_qgraph(qg_tiny, np.zeros((1, 3, 8, 8), dtype=np.int64), mode="exact")
    with pytest.raises(DataError, match="float inputs"):
        quantize_input(qg_tiny, np.zeros((3, 8, 8)))


def test_signed_inputs_and_signed_activations():
    x = images(8) - 0.5  # signed first-layer input: two's complement bit-planes
    qg = calibrate(every_op_graph(seed=3), x, TINY)
    assert qg.input.signed and qg.node("c2").out.signed
    xi = quantize_input(qg, x[:4])
    assert xi.min() < 0
    assert np.array_equal(run_qgraph(qg, xi, "ideal", TINY), plain_int_exec(qg, xi))
    bt = run_qgraph(qg, xi, "bit_true", TINY)
    assert np.abs(dequantize_output(qg, bt) - dequantize_output(qg, plain_int_exec(qg, xi))).mean() < 0.3
