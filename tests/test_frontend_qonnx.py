"""QONNX (brevitas) ``Quant`` nodes in the ONNX importer: weight folding, activation annotation, bad models."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from imcflow.cli import main
from imcflow.errors import ModelError
from imcflow.frontend import run_graph
from imcflow.frontend.onnx_import import from_onnx
from imcflow.ir.graph import Op

QDOM = "qonnx.custom_op.general"


def _model(nodes, inits, in_shape=("N", 2, 5, 5), out_shape=("N", 4), domain=QDOM):
    graph = helper.make_graph(nodes, "qonnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    domains = dict.fromkeys([QDOM, domain])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             + [helper.make_opsetid(d, 1) for d in domains])


def _quant(inputs, out, name, signed=1, narrow=0, mode="ROUND", domain=QDOM, op="Quant"):
    return helper.make_node(op, inputs, [out], name=name, domain=domain, signed=signed, narrow=narrow,
                            rounding_mode=mode)


def f32(v):
    return np.asarray(v, np.float32)


# --- an independent numpy statement of the QONNX semantics --------------------------------------

ROUND = {"ROUND": np.round, "ROUND_TO_ZERO": lambda v: np.sign(v) * np.floor(np.abs(v)),
         "CEIL": np.ceil, "FLOOR": np.floor}


def np_quant(x, scale, zp, bits, signed, narrow, mode):
    lo = -(2 ** (bits - 1)) + narrow if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1 - narrow
    q = np.clip(ROUND[mode](np.float64(x) / np.float64(scale) + np.float64(zp)), lo, hi)
    return ((q - np.float64(zp)) * np.float64(scale)).astype(np.float32)


def np_conv_pad1(x, w):
    n, _, h, wd = x.shape
    xp = np.pad(np.float64(x), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], np.float64(w[:, :, i, j]))
    return out


def _good_model(w2_mode="ROUND_TO_ZERO"):
    """conv (4-b narrow per-channel Quant weight) -> Quant(act, 6 b) -> relu -> flatten -> gemm (3-b Quant weight)."""
    rng = np.random.default_rng(7)
    inits = {"w1": f32(rng.standard_normal((3, 2, 3, 3))), "w1s": f32([[[[0.1]]], [[[0.2]]], [[[0.15]]]]),
             "w1z": f32(0), "w1b": f32(4),
             "as": f32(0.125), "az": f32(0), "ab": f32(6),
             "w2": f32(rng.standard_normal((4, 75)) * 0.3), "w2s": f32(0.125), "w2z": f32(0), "w2b": f32(3),
             "b2": f32(rng.standard_normal(4)), "shape": np.array([0, -1], np.int64)}
    nodes = [_quant(["w1", "w1s", "w1z", "w1b"], "w1q", "qw1", signed=1, narrow=1),
             helper.make_node("Conv", ["x", "w1q"], ["c"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             _quant(["c", "as", "az", "ab"], "cq", "qact", signed=0),
             helper.make_node("Relu", ["cq"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             _quant(["w2", "w2s", "w2z", "w2b"], "w2q", "qw2", mode=w2_mode),
             helper.make_node("Gemm", ["f", "w2q", "b2"], ["y"], name="fc", transB=1)]
    return _model(nodes, inits), inits


@pytest.mark.parametrize("mode", list(ROUND))
def test_quant_weights_fold_exactly(mode):
    model, inits = _good_model(w2_mode=mode)
    g = from_onnx(model)
    assert g.ops() == [Op.CONV, Op.RELU, Op.FLATTEN, Op.LINEAR]
    conv, fc = g.node("conv"), g.node("fc")
    assert conv.attrs["w_bits"] == 4 and fc.attrs["w_bits"] == 3
    w1 = np_quant(inits["w1"], inits["w1s"], 0, 4, 1, 1, "ROUND")
    w2 = np_quant(inits["w2"], 0.125, 0, 3, 1, 0, mode)
    np.testing.assert_array_equal(conv.params["weight"], w1)
    np.testing.assert_array_equal(fc.params["weight"], w2)
    assert conv.params["weight"].dtype == np.float32
    # narrow signed 4 b: integers in -7..7, at least one weight saturated at the bounds
    q1 = np.rint(conv.params["weight"] / inits["w1s"])
    assert q1.min() == -7 and q1.max() == 7
    q2 = np.rint(fc.params["weight"] / 0.125)
    assert q2.min() >= -4 and q2.max() <= 3 and len(np.unique(q2)) > 3


def test_activation_quant_recorded_and_run_graph_matches_numpy(tmp_path):
    model, inits = _good_model()
    path = tmp_path / "qonnx.onnx"
    onnx.save(model, str(path))
    g = from_onnx(path)
    conv = g.node("conv")
    assert conv.attrs["act_scale"] == pytest.approx(0.125) and conv.attrs["act_bits"] == 6
    assert g.node("relu").inputs == ("conv",)
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 5)).astype(np.float32)
    w1 = np_quant(inits["w1"], inits["w1s"], 0, 4, 1, 1, "ROUND")
    w2 = np_quant(inits["w2"], 0.125, 0, 3, 1, 0, "ROUND_TO_ZERO")
    ref = np.maximum(np_conv_pad1(x, w1), 0).reshape(2, -1) @ np.float64(w2).T + inits["b2"]
    out = run_graph(g, x)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_round_is_half_to_even_and_unsigned_narrow_range():
    inits = {"w": f32([[0.5, 1.5, 2.5, -0.5, -1.5, 20.0, -3.0]]), "s": f32(1), "z": f32(0), "b": f32(4)}
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             _quant(["w", "s", "z", "b"], "wq", "qw", signed=0, narrow=1, domain="onnx.brevitas"),
             helper.make_node("Gemm", ["f", "wq"], ["y"], name="fc", transB=1)]
    g = from_onnx(_model(nodes, inits, in_shape=("N", 7), out_shape=("N", 1), domain="onnx.brevitas"))
    # unsigned narrow 4 b: 0..14; negatives clip to 0; ties to even
    np.testing.assert_array_equal(g.node("fc").params["weight"], f32([[0, 2, 2, 0, 0, 14, 0]]))
    assert g.node("fc").attrs["w_bits"] == 4


def test_quant_on_graph_input_goes_to_meta():
    inits = {"s": f32(0.5), "z": f32(0), "b": f32(8), "w": f32(np.eye(4, 7))}
    nodes = [_quant(["x", "s", "z", "b"], "xq", "qin", domain="finn.custom_op.general"),
             helper.make_node("Gemm", ["xq", "w"], ["y"], name="fc", transB=1)]
    g = from_onnx(_model(nodes, inits, in_shape=("N", 7), domain="finn.custom_op.general"))
    assert g.meta["input_scale"] == 0.5 and g.meta["input_bits"] == 8


# --- bad models ---------------------------------------------------------------------------------

def _bad(act_inits=None, act_inputs=("c", "as", "az", "ab"), op="Quant"):
    model, inits = _good_model()
    inits = {**inits, **(act_inits or {})}
    nodes = list(model.graph.node)
    nodes[2] = _quant(list(act_inputs), "cq", "qact", signed=0, op=op)
    if op == "BipolarQuant":
        nodes[2] = helper.make_node(op, list(act_inputs), ["cq"], name="qact", domain=QDOM)
    return _model(nodes, inits)


BAD = {
    "per_channel_scale": (lambda: _bad({"as": f32([[[0.1]], [[0.2]], [[0.3]]])}),
                          ["'qact'", "Quant", "per-channel activation scale", "per tensor"]),
    "zero_point": (lambda: _bad({"az": f32(3)}), ["'qact'", "Quant", "zero point [3.0]", "symmetric"]),
    "runtime_scale": (lambda: _bad(act_inputs=("c", "x", "az", "ab")),
                      ["'qact'", "Quant", "scale (input 1) is computed at run time", "constant scale"]),
    "nine_bits": (lambda: _bad({"ab": f32(9)}), ["'qact'", "Quant", "bit width 9 is outside 1..8", "1..8 bits"]),
    "fractional_bits": (lambda: _bad({"ab": f32(4.5)}), ["'qact'", "bit width [4.5] is not one integer"]),
    "bipolar": (lambda: _bad(act_inputs=("c", "as"), op="BipolarQuant"),
                ["'qact'", "BipolarQuant", "bipolar", "Quant node"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_qonnx_models(case, tmp_path, capsys):
    build, words = BAD[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(build(), str(path))
    with pytest.raises(ModelError) as info:
        from_onnx(path)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imcflow: error: ") and err.count("\n") == 1, err


def test_quant_in_unknown_domain_is_rejected():
    model, inits = _good_model()
    nodes = list(model.graph.node)
    nodes[2] = _quant(["c", "as", "az", "ab"], "cq", "qact", domain="my.domain")
    with pytest.raises(ModelError, match=r"'qact' \(Quant\): unsupported op.*Quant \(domains qonnx.custom_op"):
        from_onnx(_model(nodes, inits, domain="my.domain"))
