"""The fast batch executor equals the reference executor bit for bit."""

import numpy as np
import pytest

from imcflow.config import IDEAL, JSSC2022, TINY
from imcflow.errors import QuantError
from imcflow.quant.calibrate import QuantSpec, calibrate
from imcflow.quant.fast_exec import run_qgraph_fast
from imcflow.quant.reference import quantize_input, run_qgraph
from qgraph_factory import random_qgraph
from quant_testnets import every_op_graph, images


@pytest.mark.parametrize("chip", [TINY, JSSC2022, IDEAL], ids=lambda c: c.name)
@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_fast_equals_reference_every_op(chip, mode):
    if chip is IDEAL and mode == "analog":
        pytest.skip("the ideal chip has a lossless ADC: analog mode is an error there")
    qg = calibrate(every_op_graph(seed=1), images(16), chip, QuantSpec(input_scale=1 / 255))
    x = quantize_input(qg, images(5, seed=9))
    assert np.array_equal(run_qgraph_fast(qg, x, mode, chip, seed=4), run_qgraph(qg, x, mode, chip, seed=4))


@pytest.mark.parametrize("seed", range(6))
def test_fast_equals_reference_random_qgraphs(seed):
    qg = random_qgraph(seed, TINY, n_conv=3, max_channels=20, head="gap" if seed % 2 else "flatten")
    x = np.random.default_rng(seed).integers(0, 256, size=(3, *qg.input.shape))
    for mode in ("ideal", "bit_true", "analog"):
        assert np.array_equal(run_qgraph_fast(qg, x, mode, TINY), run_qgraph(qg, x, mode, TINY)), mode


def test_chunks_do_not_change_ideal_and_bit_true():
    qg = calibrate(every_op_graph(), images(16), TINY, QuantSpec(input_scale=1 / 255))
    x = quantize_input(qg, images(7, seed=2))
    for mode in ("ideal", "bit_true"):
        assert np.array_equal(run_qgraph_fast(qg, x, mode, TINY, batch_size=2),
                              run_qgraph_fast(qg, x, mode, TINY, batch_size=64))


def test_bad_mode_is_an_error():
    qg = random_qgraph(0, TINY)
    with pytest.raises(QuantError, match="mode"):
        run_qgraph_fast(qg, np.zeros((1, *qg.input.shape), dtype=np.int64), "exact", TINY)
