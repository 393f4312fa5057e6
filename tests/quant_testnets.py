"""Small hand-built float Graphs for the quantiser's tests (no frontend needed), and an independent
plain-integer executor of a QGraph (torch conv on integers + the documented requant formula)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imcflow.ir.graph import Graph, Node, Op
from imcflow.ir.qgraph import QGraph, QOp
from imcflow.quant.act_table import table_reference


def _conv(name, src, c_in, c_out, k, rng, stride=1, out_hw=(8, 8)):
    w = rng.normal(0, 1 / np.sqrt(c_in * k * k), size=(c_out, c_in, k, k)).astype(np.float32)
    b = rng.normal(0, 0.1, size=c_out).astype(np.float32)
    return Node(name, Op.CONV, (src,), {"kernel": (k, k), "stride": (stride, stride), "padding": (k // 2, k // 2)},
                {"weight": w, "bias": b}, (c_out, *out_hw))


def every_op_graph(seed: int = 0, c1: int = 16) -> Graph:
    """x(3,8,8) -> conv+relu -> conv -> add+relu -> maxpool -> conv1x1+relu6 -> concat(with pool)
    -> avgpool -> gap -> flatten -> linear: every op the quantiser supports."""
    rng = np.random.default_rng(seed)
    nodes = [
        _conv("c1", "x", 3, c1, 3, rng), Node("r1", Op.RELU, ("c1",), out_shape=(c1, 8, 8)),
        _conv("c2", "r1", c1, c1, 3, rng),
        Node("add", Op.ADD, ("c2", "r1"), out_shape=(c1, 8, 8)), Node("r2", Op.RELU, ("add",), out_shape=(c1, 8, 8)),
        Node("mp", Op.MAXPOOL, ("r2",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}, out_shape=(c1, 4, 4)),
        _conv("c3", "mp", c1, 8, 1, rng, out_hw=(4, 4)),
        Node("r6", Op.CLAMP, ("c3",), {"min": 0.0, "max": 6.0}, out_shape=(8, 4, 4)),
        Node("cat", Op.CONCAT, ("r6", "mp"), {"axis": 0}, out_shape=(8 + c1, 4, 4)),
        Node("ap", Op.AVGPOOL, ("cat",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)},
             out_shape=(8 + c1, 2, 2)),
        Node("gap", Op.GLOBAL_AVGPOOL, ("ap",), out_shape=(8 + c1, 1, 1)),
        Node("flat", Op.FLATTEN, ("gap",), out_shape=(8 + c1,)),
        Node("fc", Op.LINEAR, ("flat",), params={
            "weight": rng.normal(0, 0.3, size=(10, 8 + c1)).astype(np.float32),
            "bias": rng.normal(0, 0.1, size=10).astype(np.float32)}, out_shape=(10,)),
    ]
    g = Graph(name="every_op", input_name="x", input_shape=(3, 8, 8), nodes=tuple(nodes), output="fc")
    g.verify()
    return g


def images(n: int, shape=(3, 8, 8), seed: int = 1) -> np.ndarray:
    """Random 'pixel / 255' images."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, *shape)) / 255.0).astype(np.float32)


def plain_int_exec(qg: QGraph, x: np.ndarray) -> np.ndarray:
    """Ideal-arithmetic executor written independently of imcflow.quant: float64 torch conv on
    integers (exact), then the requant formula of the QGraph docstring, in Python integers."""
    vals = {qg.input_name: torch.from_numpy(x.astype(np.float64))}
    for n in qg.nodes:
        a = vals[n.inputs[0]]
        if n.op in (QOp.CONV, QOp.LINEAR):
            w = torch.from_numpy(n.weight.astype(np.float64))
            acc = (F.conv2d(a, w, stride=n.stride, padding=n.padding, dilation=n.dilation) if n.op is QOp.CONV
                   else a @ w.T)
            acc = acc.to(torch.int64)
            shape = (1, -1) + (1,) * (acc.dim() - 2)
            m = torch.from_numpy(n.requant.multiplier).view(shape)
            b = torch.from_numpy(n.requant.bias).view(shape)
            s = n.requant.shift
            if n.requant.has_table:  # the table's defining formula in float64, not the table
                rq, t = n.requant, n.requant.table
                out = torch.from_numpy(table_reference(t.activation, t.alpha, (acc * m + b).numpy(), s,
                                                       n.out.scale, rq.out_min, rq.out_max)).to(torch.float64)
            else:
                y = torch.div(acc * m + b + (1 << (s - 1)), 1 << s, rounding_mode="floor")
                out = y.clamp(n.requant.out_min, n.requant.out_max).to(torch.float64)
        elif n.op is QOp.MAXPOOL:
            pe = n.pad_end  # more -inf padding at the end (ceil_mode)
            out = F.max_pool2d(F.pad(a, (0, pe[1], 0, pe[0]), value=float("-inf")), n.kernel, n.stride, n.padding)
        elif n.op in (QOp.AVGPOOL, QOp.GLOBAL_AVGPOOL):
            k = n.kernel if n.op is QOp.AVGPOOL else tuple(a.shape[2:])
            st = n.stride if n.op is QOp.AVGPOOL else k
            total = F.avg_pool2d(a, k, st, n.padding if n.op is QOp.AVGPOOL else 0, divisor_override=1)
            cnt = k[0] * k[1]
            out = torch.div(total + cnt // 2, cnt, rounding_mode="floor")
        elif n.op is QOp.ADD:
            b = vals[n.inputs[1]]
            v = a * n.add_multipliers[0] + b * n.add_multipliers[1]
            if n.add_table is not None:  # the table's defining formula, as above
                t = n.add_table
                out = torch.from_numpy(table_reference(t.activation, t.alpha, v.to(torch.int64).numpy(), n.add_shift,
                                                       n.out.scale, n.out.min_int, n.out.max_int)).to(torch.float64)
            else:
                v = v + (1 << (n.add_shift - 1))
                out = torch.div(v, 1 << n.add_shift, rounding_mode="floor").clamp(n.out.min_int, n.out.max_int)
        elif n.op is QOp.FLATTEN:
            out = a.reshape(a.shape[0], -1)
        elif n.op is QOp.CONCAT:
            out = torch.cat([vals[i] for i in n.inputs], 1)
        elif n.op is QOp.UPSAMPLE and n.upsample_mode == "bilinear":
            # PyTorch's float64 bilinear times D = 4 sh sw is an integer up to ~1e-12: snap it, then
            # round half up in integers (PyTorch's float error would break exact ties k + 1/2)
            d = 4 * n.upsample[0] * n.upsample[1]
            total = torch.round(F.interpolate(a, scale_factor=tuple(float(f) for f in n.upsample), mode="bilinear",
                                              align_corners=False) * d)
            out = torch.div(total + d // 2, d, rounding_mode="floor")
        elif n.op is QOp.UPSAMPLE:  # PyTorch's own nearest rule, independent of the executors
            out = F.interpolate(a, scale_factor=tuple(float(f) for f in n.upsample), mode="nearest")
        elif n.op is QOp.DEPTH_TO_SPACE:  # PyTorch's PixelShuffle
            out = F.pixel_shuffle(a, n.depth_to_space)
        else:
            raise AssertionError(f"plain_int_exec: op {n.op} not handled")
        vals[n.name] = out
    return vals[qg.output].numpy().astype(np.int64)


def assert_qat_export_matches(net, qg: QGraph, shape: tuple[int, ...], chip, seed: int = 5) -> None:
    """A QAT network's integer mode equals the bit-true reference executor on its exported QGraph
    ``qg`` exactly, and its training (fake-quantised) forward stays within 16 output steps of it."""
    from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
    xs = images(4, shape, seed=seed)
    ref = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, xs), "bit_true", chip))
    with torch.no_grad():
        got = net.set_mode("int")(torch.from_numpy(xs)).numpy()
        qat = net.set_mode("qat")(torch.from_numpy(xs)).numpy()
    assert np.array_equal(got, ref.astype(np.float32))
    assert np.abs(qat - ref).max() <= 16 * qg.spec(qg.output).scale


def strip_key(obj, key: str):
    """A JSON object (dicts and lists) without ``key`` anywhere: a file written before ``key`` existed."""
    if isinstance(obj, dict):
        return {k: strip_key(v, key) for k, v in obj.items() if k != key}
    if isinstance(obj, list):
        return [strip_key(v, key) for v in obj]
    return obj


def assert_reference_is_exact_and_tracks_float(model, qg: QGraph, shape: tuple[int, ...], chip) -> None:
    """The reference executor on ``qg`` equals :func:`plain_int_exec` on random integers, and its
    ideal-mode outputs stay within 25 % of the float ``model``'s largest output on images."""
    from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
    x = np.random.default_rng(2).integers(qg.input.min_int, qg.input.max_int + 1, size=(3, *qg.input.shape))
    assert np.array_equal(run_qgraph(qg, x, "ideal", chip), plain_int_exec(qg, x))
    xf = images(8, shape, seed=4)
    got = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, xf), "ideal", chip))
    want = model(torch.from_numpy(xf)).detach().numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 0.25
