"""The float Graph IR: construction, shape inference, verify(), printing and JSON round trip."""

import dataclasses

import numpy as np
import pytest

from imcflow.errors import ModelError
from imcflow.ir.graph import Graph, Node, Op, graphs_equal, infer_shape


def _conv(name="c1", src="x", c_in=3, c_out=4, k=3, stride=1, pad=1, out=(4, 8, 8), bias=True):
    rng = np.random.default_rng(0)
    params = {"weight": rng.standard_normal((c_out, c_in, k, k))}
    if bias:
        params["bias"] = rng.standard_normal(c_out)
    return Node(name, Op.CONV, (src,), {"kernel": (k, k), "stride": (stride, stride), "padding": (pad, pad)},
                params, out)


def small_graph():
    rng = np.random.default_rng(1)
    nodes = (
        _conv(),
        Node("bn", Op.BATCHNORM, ("c1",), {"eps": 1e-5},
             {"gamma": rng.random(4) + 0.5, "beta": rng.random(4), "mean": rng.random(4), "var": rng.random(4) + 0.5},
             (4, 8, 8)),
        Node("r6", Op.CLAMP, ("bn",), {"min": 0.0, "max": 6.0}, {}, (4, 8, 8)),
        _conv("c2", "r6", 4, 4, 1, 1, 0, (4, 8, 8), bias=False),
        Node("add", Op.ADD, ("c2", "r6"), {}, {}, (4, 8, 8)),
        Node("cat", Op.CONCAT, ("add", "r6"), {"axis": 0}, {}, (8, 8, 8)),
        Node("mp", Op.MAXPOOL, ("cat",), {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}, {}, (8, 4, 4)),
        Node("ap", Op.AVGPOOL, ("mp",), {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1)}, {}, (8, 4, 4)),
        Node("gap", Op.GLOBAL_AVGPOOL, ("ap",), {}, {}, (8, 1, 1)),
        Node("flat", Op.FLATTEN, ("gap",), {}, {}, (8,)),
        Node("fc", Op.LINEAR, ("flat",), {}, {"weight": rng.standard_normal((10, 8)), "bias": np.zeros(10)}, (10,)),
        Node("relu", Op.RELU, ("fc",), {}, {}, (10,)),
    )
    return Graph("small", "x", (3, 8, 8), nodes, "relu")


def test_verify_and_canonical_forms():
    g = small_graph()
    g.verify()
    assert g.node("c1").params["weight"].dtype == np.float32
    assert g.shape("x") == (3, 8, 8) and g.shape("cat") == (8, 8, 8)
    assert [n.name for n in g.consumers("r6")] == ["c2", "add", "cat"]
    assert [n.name for n in g.weight_nodes()] == ["c1", "c2", "fc"]
    assert not g.is_normalized()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.name = "other"


def test_json_round_trip(tmp_path):
    g = small_graph()
    path = tmp_path / "g.json"
    g.save(str(path))
    h = Graph.load(str(path))
    h.verify()
    assert graphs_equal(g, h)
    assert h.node("c1").attrs["kernel"] == (3, 3) and isinstance(h.node("c1").attrs["stride"], tuple)
    np.testing.assert_array_equal(h.node("fc").params["weight"], g.node("fc").params["weight"])
    assert h.node("c2").bias is None
    assert h.nodes[0].op is Op.CONV and isinstance(h.nodes, tuple)


def test_str_lists_every_node():
    text = str(small_graph())
    assert text.splitlines()[0] == "Graph small: input x (3, 8, 8)"
    for name in ("c1", "bn", "r6", "cat", "gap", "fc"):
        assert f"  {name} " in text
    assert "weight(4, 3, 3, 3)" in text and "min=0.0 max=6.0" in text


@pytest.mark.parametrize("k,stride,pad,hw,out", [(3, 1, 1, 8, 8), (3, 2, 1, 8, 4), (7, 2, 3, 224, 112),
                                                 (1, 2, 0, 7, 4), (5, 1, 0, 5, 1)])
def test_conv_shape_formula(k, stride, pad, hw, out):
    n = _conv(c_in=2, c_out=5, k=k, stride=stride, pad=pad, out=())
    assert infer_shape(n, [(2, hw, hw)]) == (5, out, out)


def _replace(g, which, **changes):
    return dataclasses.replace(g, nodes=tuple(dataclasses.replace(n, **changes) if n.name == which else n
                                              for n in g.nodes))


@pytest.mark.parametrize("mutate,words", [
    (lambda g: _replace(g, "c2", name="c1"), ["duplicate", "c1"]),
    (lambda g: _replace(g, "add", inputs=("c2", "nowhere")), ["'nowhere'", "add"]),
    (lambda g: _replace(g, "cat", out_shape=(9, 8, 8)), ["cat", "(9, 8, 8)", "(8, 8, 8)"]),
    (lambda g: _replace(g, "c1", params={"weight": np.full((4, 3, 3, 3), np.nan)}), ["c1", "NaN"]),
    (lambda g: _replace(g, "c2", params={"weight": np.ones((4, 5, 1, 1))}), ["c2", "5 input channels"]),
    (lambda g: _replace(g, "add", inputs=("c2", "x")), ["add", "equal"]),
    (lambda g: _replace(g, "fc", inputs=("gap",)), ["fc", "flat (F,)"]),
    (lambda g: _replace(g, "r6", attrs={"min": 6.0, "max": 0.0}), ["r6", "clamp"]),
    (lambda g: dataclasses.replace(g, output="missing"), ["missing"]),
    (lambda g: dataclasses.replace(g, nodes=()), ["no operations"]),
    (lambda g: dataclasses.replace(g, input_shape=(3, 0, 8)), ["shape"]),
])
def test_verify_names_the_problem(mutate, words):
    with pytest.raises(ModelError) as info:
        mutate(small_graph()).verify()
    for w in words:
        assert w in str(info.value)


def test_pool_window_too_large():
    n = Node("mp", Op.MAXPOOL, ("x",), {"kernel": (5, 5), "stride": (1, 1), "padding": (0, 0)}, {}, ())
    with pytest.raises(ModelError, match="does not fit"):
        infer_shape(n, [(3, 4, 4)])
