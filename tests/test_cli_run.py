"""``imcflow run``: zoo names, .qgraph.json and .onnx models on user inputs, every mode, errors."""

import dataclasses

import numpy as np
import pytest
import torch

from imcflow.cli import main
from imcflow.config import JSSC2022
from imcflow.frontend import load_graph, normalize, run_graph
from imcflow.pipeline import load_qgraph
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph
from quant_testnets import images


@pytest.fixture()
def inputs(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, images(3, (3, 8, 8), seed=5))
    return p


def test_float_mode_equals_the_float_graph(inputs, tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--save-outputs", str(out), "--mode", "float"]) == 0
    torch.manual_seed(0)
    graph = normalize(load_graph("cnn-tiny"))
    assert np.allclose(np.load(out), run_graph(graph, np.load(inputs)), atol=1e-6)
    text = capsys.readouterr().out
    assert "cnn-tiny: 3 input(s) (3, 8, 8)" in text and "top-1 classes" in text
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--mode", "ideal", "--untrained"]) == 0
    assert "random-init weights (for performance studies only)" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["ideal", "bit_true", "analog"])
def test_quantised_modes_equal_the_reference(inputs, tmp_path, mode):
    out = tmp_path / "y.npy"
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--save-outputs", str(out), "--mode", mode,
                 "--chip", "tiny", "--seed", "3"]) == 0
    qg = load_qgraph("cnn-tiny", "tiny")
    want = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, np.load(inputs)), mode, "tiny", seed=3))
    assert np.array_equal(np.load(out), want)


def test_calibrated_adc_full_scale(inputs, tmp_path):
    calib = tmp_path / "c.npy"
    np.save(calib, images(16, (3, 8, 8), seed=2))
    out = tmp_path / "y.npy"
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--save-outputs", str(out), "--calib", str(calib),
                 "--adc-full-scale", "calibrated"]) == 0
    qg = load_qgraph("cnn-tiny", "jssc2022", calib=np.load(calib), adc_full_scale="calibrated")
    want = dequantize_output(qg, run_qgraph(qg, quantize_input(qg, np.load(inputs)), "bit_true", "jssc2022"))
    assert np.array_equal(np.load(out), want)


def test_qgraph_file_and_set_override(inputs, tmp_path):
    qg = load_qgraph("cnn-tiny", "jssc2022")
    path = tmp_path / "m.qgraph.json"
    qg.save(str(path))
    out = tmp_path / "y.npy"
    assert main(["run", str(path), "--inputs", str(inputs), "--save-outputs", str(out), "--mode", "bit_true",
                 "--set", "adc.bits=6"]) == 0
    x = quantize_input(qg, np.load(inputs))
    chip6 = dataclasses.replace(JSSC2022, adc=dataclasses.replace(JSSC2022.adc, bits=6))
    assert np.array_equal(np.load(out), dequantize_output(qg, run_qgraph(qg, x, "bit_true", chip6)))
    assert not np.array_equal(np.load(out), dequantize_output(qg, run_qgraph(qg, x, "bit_true", JSSC2022)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_model(inputs, tmp_path):
    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 64, 5)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    out = tmp_path / "y.npy"
    assert main(["run", str(path), "--inputs", str(inputs), "--save-outputs", str(out), "--mode", "float"]) == 0
    with torch.no_grad():
        want = module(torch.from_numpy(np.load(inputs))).numpy()
    assert np.allclose(np.load(out), want, atol=1e-5)
    assert main(["run", str(path), "--inputs", str(inputs), "--save-outputs", str(out), "--mode", "ideal"]) == 0
    assert np.load(out).shape == (3, 5)


def test_bad_shape_names_the_expected_shape(tmp_path, capsys):
    p = tmp_path / "bad.npy"
    np.save(p, np.zeros((2, 3, 9, 9), np.float32))
    assert main(["run", "cnn-tiny", "--inputs", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "(N, 3, 8, 8)" in err and "\n" not in err


def test_other_errors_exit_2(inputs, tmp_path, capsys):
    assert main(["run", "cnn-tiny", "--inputs", str(tmp_path / "missing.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    p = tmp_path / "text.npy"
    p.write_text("not numpy")
    assert main(["run", "cnn-tiny", "--inputs", str(p)]) == 2
    assert "readable" in capsys.readouterr().err
    assert main(["run", "no-such-model", "--inputs", str(inputs)]) == 2
    assert "unknown zoo model" in capsys.readouterr().err
    qg = tmp_path / "m.qgraph.json"
    load_qgraph("cnn-tiny", "jssc2022").save(str(qg))
    assert main(["run", str(qg), "--inputs", str(inputs), "--mode", "float"]) == 2
    assert "no float version" in capsys.readouterr().err
    assert main(["run", str(qg), "--inputs", str(inputs), "--chip", "tiny"]) == 2
    assert "full scale" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse rejects an unknown mode
        main(["run", "cnn-tiny", "--inputs", str(inputs), "--mode", "exact"])
    assert exc.value.code == 2


def test_timing_feature_switches(inputs, tmp_path, capsys):
    import json

    base, feat = tmp_path / "base.json", tmp_path / "feat.json"
    assert main(["run", "cnn-tiny", "--json", str(base), "--images", "4"]) == 0
    assert main(["run", "cnn-tiny", "--json", str(feat), "--images", "4",
                 "--skip-zero-bitplanes", "--unbounded-buffers"]) == 0
    b, f = json.loads(base.read_text()), json.loads(feat.read_text())
    assert b["features"]["skip_zero_bitplanes"] is False and b["features"]["unbounded_buffers"] is False
    assert f["features"]["skip_zero_bitplanes"] is True and f["features"]["unbounded_buffers"] is True
    assert f["throughput_img_s"] >= b["throughput_img_s"]   # fewer bit-planes, no back-pressure
    assert any("synthetic" in n for n in f["notes"])
    capsys.readouterr()
    # the switches change the timing report only: refused (exit 2) on an outputs-only run
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--unbounded-buffers"]) == 2
    assert "--json" in capsys.readouterr().err


def test_labels_give_top1_accuracy_of_the_outputs(inputs, tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--mode", "bit_true", "--chip", "tiny",
                 "--save-outputs", str(out)]) == 0
    y = np.load(out)
    labels = y.argmax(1).copy()
    labels[0] = (labels[0] + 1) % y.shape[1]  # one wrong of three
    lab = tmp_path / "l.npy"
    np.save(lab, labels)
    capsys.readouterr()
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--mode", "bit_true", "--chip", "tiny",
                 "--labels", str(lab)]) == 0
    assert "top-1 accuracy: 66.67 % (2 of 3)" in capsys.readouterr().out


@pytest.mark.parametrize("labels,words", [
    (np.array([0, 1]), ["shape (2,)", "expected (3,)"]),
    (np.array([0.0, 1.0, 2.0]), ["dtype float64", "integer"]),
    (np.array([0, 1, 99]), ["0 .. 99", "10 classes"]),
    (None, ["no such file"]),
])
def test_bad_labels_exit_2(inputs, tmp_path, capsys, labels, words):
    lab = tmp_path / "l.npy"
    if labels is not None:
        np.save(lab, labels)
    assert main(["run", "cnn-tiny", "--inputs", str(inputs), "--chip", "tiny", "--labels", str(lab)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


def test_labels_need_inputs(tmp_path, capsys):
    assert main(["run", "cnn-tiny", "--labels", str(tmp_path / "l.npy")]) == 2
    assert "--inputs" in capsys.readouterr().err
