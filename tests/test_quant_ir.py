"""QGraph.verify and QGraph.load reject inconsistent or foreign data with a QuantError naming it."""

import dataclasses

import numpy as np
import pytest

from imcflow.config import TINY
from imcflow.errors import QuantError
from imcflow.ir.qgraph import QGraph
from imcflow.quant.calibrate import QuantSpec, calibrate
from quant_testnets import every_op_graph, images


@pytest.fixture(scope="module")
def qg():
    return calibrate(every_op_graph(), images(8), TINY, QuantSpec(input_scale=1 / 255))


def _with(qg, name, **changes):
    nodes = tuple(dataclasses.replace(n, **changes) if n.name == name else n for n in qg.nodes)
    return dataclasses.replace(qg, nodes=nodes)


def test_verify_accepts_the_quantiser_output(qg):
    qg.verify()


def test_verify_checks_requant(qg):
    rq = qg.node("c1").requant
    with pytest.raises(QuantError, match="'c1'.*one entry per output channel"):
        _with(qg, "c1", requant=dataclasses.replace(rq, multiplier=rq.multiplier[:3])).verify()
    with pytest.raises(QuantError, match="'c1'.*shift"):
        _with(qg, "c1", requant=dataclasses.replace(rq, shift=0)).verify()
    with pytest.raises(QuantError, match="'c1'.*clamp"):
        _with(qg, "c1", requant=dataclasses.replace(rq, out_max=16)).verify()


def test_verify_checks_adds_and_spec_preserving_ops(qg):
    with pytest.raises(QuantError, match="add 'add'"):
        _with(qg, "add", add_multipliers=(3,)).verify()
    out = qg.node("mp").out
    with pytest.raises(QuantError, match="'mp' \\(maxpool\\).*same bits"):
        _with(qg, "mp", out=dataclasses.replace(out, scale=out.scale * 2)).verify()
    with pytest.raises(QuantError, match="'cat'"):
        _with(qg, "cat", out=dataclasses.replace(qg.node("cat").out, bits=8)).verify()


@pytest.mark.parametrize("content", [b"{not json", b"", b"\x93NUMPY\x01\x00", b'{"a": 1}',
                                     b'{"__dc__": "QGraph", "name": "x"}'])
def test_load_rejects_foreign_files(tmp_path, content):
    p = tmp_path / "bad.qgraph.json"
    p.write_bytes(content)
    with pytest.raises(QuantError, match="bad.qgraph.json"):
        QGraph.load(str(p))


def test_json_round_trip_keeps_every_array(qg, tmp_path):
    p = tmp_path / "g.qgraph.json"
    qg.save(str(p))
    back = QGraph.load(str(p))
    for a, b in zip(qg.mvm_nodes(), back.mvm_nodes()):
        assert np.array_equal(a.weight, b.weight) and a.weight.dtype == b.weight.dtype
        assert np.array_equal(a.requant.multiplier, b.requant.multiplier)
