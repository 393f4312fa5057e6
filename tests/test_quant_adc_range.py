"""Calibrated ADC full scales: counts are the array's, the choice clips at most the allowed share."""

import numpy as np
import pytest
import torch

from imcflow.config import JSSC2022, TINY
from imcflow.ir.qgraph import QOp
from imcflow.quant.adc_range import column_counts, pick_calibrated_full_scale
from imcflow.quant.calibrate import QuantSpec, calibrate
from imcflow.quant.qat import export_qgraph, prepare_qat
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph, run_qgraph_all
from quant_testnets import every_op_graph, images


def test_column_counts_are_and_counts_of_bits():
    qg = calibrate(every_op_graph(), images(8), TINY, QuantSpec(input_scale=1 / 255))
    fc = qg.node("fc")
    x = np.random.default_rng(0).integers(0, 16, size=(3, fc.weight.shape[1]))
    ks = list(column_counts(fc, torch.from_numpy(x), 4, TINY.array.rows))
    assert len(ks) == 4  # one row tile (24 rows), four input bit-planes
    w = fc.weight.astype(np.int64)
    for i, k in enumerate(ks):
        for j in range(fc.w_bits):
            want = ((x >> i) & 1) @ (((w >> j) & 1).T)  # rows where input bit i and weight bit j are 1
            assert np.array_equal(k[:, j::fc.w_bits, 0, 0].numpy().astype(np.int64), want)


@pytest.mark.parametrize("chip", [TINY, JSSC2022], ids=lambda c: c.name)
def test_calibrated_full_scales_clip_rarely_and_stay_close(chip):
    g, x = every_op_graph(), images(16)
    rows = calibrate(g, x, chip, QuantSpec(input_scale=1 / 255))
    cal = calibrate(g, x, chip, QuantSpec(input_scale=1 / 255, adc_full_scale="calibrated", adc_clip_fraction=0.0))
    assert cal.meta["adc_full_scale"] == "calibrated"
    for a, b in zip(rows.mvm_nodes(), cal.mvm_nodes()):
        assert b.adc_full_scale_rows in chip.adc.full_scales_rows and b.adc_full_scale_rows <= a.adc_full_scale_rows
    # with clip_fraction 0, no conversion of the calibration inputs clips at the chosen full scale
    ints = run_qgraph_all(cal, quantize_input(cal, x[:8]), "ideal", chip)
    levels = 1 << chip.adc.bits
    for n in cal.mvm_nodes():
        for k in column_counts(n, torch.from_numpy(ints[n.inputs[0]]), cal.spec(n.inputs[0]).bits, chip.array.rows):
            assert not bool((k * 2 * levels >= n.adc_full_scale_rows * (2 * levels - 1)).any()), n.name
    # a finer ADC step tracks the ideal arithmetic at least as well as the row-count full scale
    xi = quantize_input(cal, x)
    ideal = dequantize_output(cal, run_qgraph(cal, xi, "ideal", chip))
    err_cal = np.abs(dequantize_output(cal, run_qgraph(cal, xi, "bit_true", chip)) - ideal).mean()
    err_rows = np.abs(dequantize_output(rows, run_qgraph(rows, xi, "bit_true", chip)) - ideal).mean()
    assert err_cal <= err_rows


def test_sparse_inputs_get_a_smaller_full_scale():
    qg = calibrate(every_op_graph(), images(8), JSSC2022, QuantSpec(input_scale=1 / 255))
    c2 = qg.node("c2")
    assert c2.op is QOp.CONV and c2.adc_full_scale_rows == 144
    x = np.zeros((2, *qg.spec("c1").shape), dtype=np.int64)
    x[:, :, ::4, ::4] = 1  # one input in sixteen, bit 0 only
    assert pick_calibrated_full_scale(c2, torch.from_numpy(x), 4, JSSC2022, 0.0) == 36


def test_qat_uses_and_exports_calibrated_full_scales():
    g, x = every_op_graph(), images(16)
    net = prepare_qat(g, JSSC2022, calib=x, input_scale=1 / 255, adc_full_scale="calibrated")
    ptq = calibrate(g, x, JSSC2022, QuantSpec(input_scale=1 / 255, adc_full_scale="calibrated"))
    assert net.full_scales == {n.name: n.adc_full_scale_rows for n in ptq.mvm_nodes()}
    assert "adc_fs_c1" in net.state_dict()
    qg = export_qgraph(net)
    assert {n.name: n.adc_full_scale_rows for n in qg.mvm_nodes()} == net.full_scales
    got = net.set_mode("int")(torch.from_numpy(x[:4])).numpy()
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, x[:4]), "bit_true", JSSC2022))
    assert np.array_equal(got, ref.astype(np.float32))
