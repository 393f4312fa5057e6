"""``imcflow eval`` on a user's own float network (an ONNX file): it is quantised post-training
with its ranges and ADC full scales calibrated on CIFAR-10 *training* images, and the report carries
its float accuracy (float Graph executor) beside the simulator's, on the same test images."""

import json
import pickle
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from imcflow.cli import main


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # red plane encodes the class: learnable
    return {b"data": data, b"labels": [int(v) for v in labels]}


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv("IMCFLOW_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cifar"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(20, i)))
    (root / "test_batch").write_bytes(pickle.dumps(_batch(40, 99)))
    return root


@pytest.mark.parametrize("norm,softmax", [(None, False), (("0.5,0.4,0.3", "0.25,0.2,0.3"), False), (None, True)])
def test_eval_onnx_model_calibrates_on_training_images(tmp_path, fake_cifar, capsys, norm, softmax):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10), *([nn.Softmax(dim=1)] if softmax else [])).eval()
    path = tmp_path / "user.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    out = tmp_path / "e.json"
    extra = ["--mean", norm[0], "--std", norm[1]] if norm else []
    assert main(["eval", str(path), "--data", str(fake_cifar), "--mode", "bit_true", "--json", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["images"] == 40 and res["calibration"].startswith("100 CIFAR-10 training images")  # all 100 of them
    # float accuracy: the same 40 test images through onnxruntime
    test = pickle.loads((fake_cifar / "test_batch").read_bytes())
    x = test[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    if norm:
        mean, std = (np.array([float(v) for v in t.split(",")], np.float32).reshape(1, 3, 1, 1) for t in norm)
        x = (x - mean) / std
        assert res["input_norm"] == {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = float((sess.run(None, {"x": x})[0].argmax(1) == np.asarray(test[b"labels"])).mean())
    assert res["accuracy_float"] == pytest.approx(want)
    assert res["float_executor"].startswith("imcflow.frontend.run_graph")
    assert 0.0 <= res["accuracy_bit_true"] <= 1.0 and "accuracy_ideal" in res
    assert "float executor" in printed and "calibrated on 100 CIFAR-10 training images" in printed
    assert ("note: the network's final Softmax" in printed) == softmax == ("final Softmax" in res.get("note", ""))


@pytest.mark.parametrize("argv,words", [
    (["--mean", "0.5"], ["--mean and --std go together"]),
    (["--mean", "0.5,0.5", "--std", "0.2"], ["2 mean value(s) but 1 std"]),
    (["--mean", "0.5", "--std", "-1"], ["must be finite and > 0"]),
    (["--mean", "x", "--std", "1"], ["--mean 'x'", "comma-separated"]),
])
def test_bad_normalisation_exits_2(fake_cifar, capsys, argv, words):
    assert main(["eval", "cifar10-cnn11", "--data", str(fake_cifar), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err


def _small_onnx(tmp_path):
    """A seeded 3x32x32 -> 10 float CNN exported to ONNX."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 10)).eval()
    path = tmp_path / "user.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False)
    return path


def test_run_with_data_calibrates_on_training_images(tmp_path, fake_cifar, capsys):
    path = _small_onnx(tmp_path)
    out = tmp_path / "r.json"
    assert main(["run", str(path), "--data", str(fake_cifar), "--images", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert any("post-training quantised on 100 CIFAR-10 training images" in n for n in report["notes"])
    assert 0.0 <= report["accuracy"] <= 1.0


def test_sweep_with_data_adds_accuracy_per_point(tmp_path, fake_cifar, capsys, monkeypatch):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    path = _small_onnx(tmp_path)
    out = tmp_path / "s.json"
    assert main(["sweep", str(path), "--vary", "adc.bits=6,8", "--data", str(fake_cifar), "--limit", "20",
                 "--images", "2", "--json", str(out)]) == 0
    assert "accuracy" in capsys.readouterr().out
    pts = json.loads(out.read_text())["points"]
    assert all(0.0 <= p["figures"]["accuracy"] <= 1.0 for p in pts)
