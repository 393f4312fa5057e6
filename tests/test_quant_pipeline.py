"""imcflow.pipeline: model name / file / module -> QGraph, in the documented order of sources."""

import numpy as np
import pytest
import torch

from imcflow import pipeline
from imcflow.errors import QuantError
from imcflow.ir.qgraph import QGraph, graphs_equal
from imcflow.models import cnn11, get_model
from imcflow.pipeline import load_qgraph, prepare_qat, run_model
from imcflow.quant.qat import QatNet, export_qgraph
from quant_testnets import images


def test_zoo_random_init_is_marked_for_performance_only():
    qg = load_qgraph("cnn-tiny", "jssc2022", trained=False)
    assert qg.meta["trained"] is False and "performance" in qg.meta["note"]
    assert qg.input.bits == 8 and qg.input.scale == 1 / 255 and not qg.input.signed
    assert graphs_equal(qg, load_qgraph("cnn-tiny", "jssc2022", trained=False))  # seeded: reproducible


def test_qgraph_object_and_file(tmp_path):
    qg = load_qgraph("mlp-tiny", "tiny")
    path = tmp_path / "a.qgraph.json"
    qg.save(str(path))
    assert graphs_equal(load_qgraph(str(path), "tiny"), qg)
    assert load_qgraph(qg, "tiny") is qg


def test_shipped_qat_export_is_preferred(tmp_path, monkeypatch):
    qg = load_qgraph("cnn-tiny", "jssc2022", trained=False)
    shipped = tmp_path / "cnn-tiny.qgraph.json"
    marked = QGraph(name="shipped", input_name=qg.input_name, input=qg.input, nodes=qg.nodes, output=qg.output,
                    meta={"trained": "qat"})
    marked.save(str(shipped))
    monkeypatch.setattr(pipeline, "shipped_qgraph_path", lambda name: shipped)
    got = load_qgraph("cnn-tiny", "jssc2022")
    assert got.meta["trained"] == "qat" and got.name == "cnn-tiny"  # the shipped file, named after the zoo entry
    assert load_qgraph("cnn-tiny", "jssc2022", trained=False).name == "cnn-tiny"
    # trained for jssc2022's ADC full scales: on the tiny chip the float weights are re-quantised
    other = load_qgraph("cnn-tiny", "tiny")
    assert other.name == "cnn-tiny" and "does not fit chip 'tiny'" in other.meta["note"]


def test_shipped_float_weights_are_used(tmp_path, monkeypatch):
    torch.manual_seed(5)
    model = get_model("cifar10-cnn11")
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    monkeypatch.setattr(cnn11, "WEIGHTS_FILE", weights)
    monkeypatch.setattr(pipeline, "shipped_qgraph_path", lambda name: tmp_path / "none.qgraph.json")
    calib = images(4, (3, 32, 32))
    qg = load_qgraph("cifar10-cnn11", "jssc2022", calib=calib)
    assert qg.meta["trained"] is True and qg.meta["calibration_data"] == "given"
    direct = load_qgraph(model.eval(), "jssc2022", calib=calib, input_shape=(3, 32, 32))
    assert np.array_equal(qg.node(qg.mvm_nodes()[0].name).weight, direct.mvm_nodes()[0].weight)


def test_prepare_qat_from_name_and_module_agree():
    torch.manual_seed(0)
    a = prepare_qat("cnn-tiny", chip="tiny", calib=images(4))
    torch.manual_seed(0)
    module = get_model("cnn-tiny").eval()
    b = prepare_qat(module, (3, 8, 8), chip="tiny", calib=images(4), input_scale=1 / 255)
    assert isinstance(a, QatNet)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    qa, qb = export_qgraph(a), export_qgraph(b)
    assert [n.name for n in qa.nodes] == [n.name for n in qb.nodes]
    for na, nb in zip(qa.mvm_nodes(), qb.mvm_nodes()):
        assert np.array_equal(na.weight, nb.weight)
        assert np.array_equal(na.requant.multiplier, nb.requant.multiplier) and na.requant.shift == nb.requant.shift


def test_run_model_modes_agree_roughly():
    x = images(8)
    f = run_model("cnn-tiny", x, "float")
    q = run_model("cnn-tiny", x, "ideal", calib=x)
    assert f.shape == q.shape
    assert np.corrcoef(f.ravel(), q.ravel())[0, 1] > 0.8
    with pytest.raises(QuantError, match="mode"):
        run_model("cnn-tiny", x, "fp8")
