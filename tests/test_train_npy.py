"""``imcflow train NET.onnx --data DIR`` on a user's dataset of four .npy files: QAT, resume, validation, augmentation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imcflow.cli import main
from imcflow.data.npy import load_npy
from imcflow.errors import DataError
from imcflow.train import TrainConfig, TrainError, train
from imcflow.train.augment import augment, crop_pad

SHAPE = (1, 8, 8)  # grayscale 8x8, 4 classes
CLASSES = 4


class _Stop(Exception):
    pass


def _write(root: Path, nhwc: bool = True, n_train: int = 64, n_test: int = 32, **override) -> Path:
    """A dataset whose class shows in the mean brightness."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, CLASSES, n)
        x = (rng.integers(0, 64, (n, 1, 8, 8)) + 60 * y[:, None, None, None]).astype(np.uint8)
        arrays[f"{split}_x"] = x.transpose(0, 2, 3, 1) if nhwc else x
        arrays[f"{split}_y"] = y
    arrays |= override
    for name, a in arrays.items():
        if a is not None:
            np.save(root / f"{name}.npy", a)
    return root


@pytest.fixture(scope="module")
def onnx_net(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, CLASSES)).eval()
    path = tmp_path_factory.mktemp("net") / "user.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.rand(1, *SHAPE), str(path), dynamo=False)
    return path


def _cfg(net: Path, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(data), out_dir=str(out), model=str(net), epochs_float=0, epochs_qat=2,
                qat_ideal_epochs=1, batch_size=16, limit_train=32, lr_qat=0.005, augment="crop")
    return TrainConfig(**(base | kw))


def test_qat_on_npy_data_runs_resumes_and_writes_the_qgraph(onnx_net: Path, tmp_path: Path) -> None:
    from imcflow.ir.qgraph import QGraph

    data = _write(tmp_path / "d")
    straight = train(_cfg(onnx_net, data, tmp_path / "straight"))
    assert [(r.phase, r.epoch, r.adc) for r in straight.history] == [("qat", 1, "ideal"), ("qat", 2, "bit_true")]
    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        train(_cfg(onnx_net, data, out), on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    seen = []
    train(_cfg(onnx_net, data, out), on_epoch=lambda r: seen.append((r.phase, r.epoch)))
    assert seen == [("qat", 2)]
    assert (out / "qat.qgraph.json").read_text() == (tmp_path / "straight" / "qat.qgraph.json").read_text()
    qg = QGraph.load(str(out / "qat.qgraph.json"))
    qg.verify()
    assert 0 <= straight.best_acc["qat_int"] <= 1


def test_resume_on_other_data_or_augment_is_refused(onnx_net: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "d")
    out = tmp_path / "o"
    with pytest.raises(_Stop):
        train(_cfg(onnx_net, data, out), on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    other = _write(tmp_path / "other", train_y=np.roll(np.load(data / "train_y.npy"), 1))
    with pytest.raises(TrainError, match="trained on other data .*sha1"):
        train(_cfg(onnx_net, other, out))
    with pytest.raises(TrainError, match="augment crop -> crop-flip"):
        train(_cfg(onnx_net, data, out, augment="crop-flip"))


def test_nhwc_nchw_and_hw_layouts_give_the_same_data(tmp_path: Path) -> None:
    a = load_npy(_write(tmp_path / "nhwc", nhwc=True), "train", SHAPE, CLASSES)
    b = load_npy(_write(tmp_path / "nchw", nhwc=False), "train", SHAPE, CLASSES)
    x = np.load(tmp_path / "nchw" / "train_x.npy")
    c = load_npy(_write(tmp_path / "hw", train_x=x[:, 0]), "train", SHAPE, CLASSES)
    assert a[0].shape == (64, 1, 8, 8) and a[0].dtype == np.uint8 and a[1].dtype == np.int64
    for other in (b, c):
        assert np.array_equal(a[0], other[0]) and np.array_equal(a[1], other[1])
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)  # non-square colour
    d = _write(tmp_path / "rgb", train_x=rgb, train_y=np.zeros(5, np.int64))
    assert np.array_equal(load_npy(d, "train", (3, 6, 7), 2)[0], rgb.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("override,shape,words", [
    ({"train_x": None}, SHAPE, r"train_x.npy missing"),
    ({"train_x": np.zeros((64, 8, 8, 1), np.float32)}, SHAPE, r"train_x.npy: images are float32; give uint8 .*astype"),
    ({"train_x": np.zeros((64, 9, 8, 1), np.uint8)}, SHAPE, r"train_x.npy: images have shape \(64, 9, 8, 1\); the "
                                                             r"network takes \(C, H, W\) = \(1, 8, 8\)"),
    ({"train_x": np.zeros((64, 3, 3, 3), np.uint8)}, (3, 3, 3), r"both as NCHW and as NHWC, so the layout is ambiguous"),
    ({"train_y": np.full(64, 4)}, SHAPE, r"train_y.npy: labels span 4..4, the network has 4 outputs"),
    ({"train_y": np.full(64, -1)}, SHAPE, r"labels must be class indices in \[0, 4\)"),
    ({"train_y": np.zeros(63, np.int64)}, SHAPE, r"train_y.npy holds 63 labels for the 64 images"),
    ({"train_y": np.zeros(64, np.float32)}, SHAPE, r"labels are float32 .*give integer class indices"),
    ({"train_y": np.array([None] * 64)}, SHAPE, r"train_y.npy is not a plain NumPy array")])
def test_bad_npy_data_is_refused(tmp_path: Path, override, shape, words) -> None:
    data = _write(tmp_path / "d", **override)
    with pytest.raises(DataError, match=words):
        load_npy(data, "train", shape, CLASSES)


def test_mismatches_are_refused_through_train_and_cli(onnx_net: Path, tmp_path: Path, capsys) -> None:
    wide = _write(tmp_path / "wide", train_x=np.zeros((64, 8, 9, 1), np.uint8))
    with pytest.raises(DataError, match=r"train_x.npy: images have shape \(64, 8, 9, 1\)"):
        train(_cfg(onnx_net, wide, tmp_path / "o"))
    labels = _write(tmp_path / "labels", test_y=np.arange(32) % 10)
    assert main(["train", str(onnx_net), "--data", str(labels), "--out", str(tmp_path / "o"),
                 "--epochs-float", "0", "--epochs-qat", "1"]) == 2
    assert "test_y.npy: labels span 0..9, the network has 4 outputs" in capsys.readouterr().err
    # a zoo model keeps its shape: cnn-tiny takes (3, 8, 8) colour images
    with pytest.raises(DataError, match=r"the network takes \(C, H, W\) = \(3, 8, 8\)"):
        train(_cfg("cnn-tiny", _write(tmp_path / "gray"), tmp_path / "z", epochs_float=1, epochs_qat=0,
                   qat_ideal_epochs=0))
    with pytest.raises(TrainError, match="--augment 'flip': choose one of crop-flip, crop, none"):
        train(_cfg(onnx_net, wide, tmp_path / "o", augment="flip"))


def test_augment_modes() -> None:
    images = torch.randint(1, 256, (64, 1, 8, 12), dtype=torch.uint8)
    assert crop_pad(32, 32) == 4 and crop_pad(8, 12) == 1 and crop_pad(28, 28) == 4
    assert augment(images, "none", torch.Generator().manual_seed(0)) is images
    # "crop" only shifts: each output row is a shifted copy of the input's, never mirrored
    pad = crop_pad(8, 12)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    for mode, mirrored in (("crop", False), ("crop-flip", True)):
        out = augment(images, mode, torch.Generator().manual_seed(0))
        flips = 0
        for o, p in zip(out, padded):
            shifts = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                      if torch.equal(o, p[:, dy:dy + 8, dx:dx + 12])]
            flips += not shifts
        assert (flips > 0) == mirrored


def test_eval_scores_a_network_on_npy_data(onnx_net: Path, tmp_path: Path, capsys) -> None:
    """`imcflow eval NET.onnx --data NPY_DIR`: calibrated on the folder's training images, scored on its
    test images through the simulator; the same network on other-shaped data is refused."""
    import json
    data = _write(tmp_path / "data")
    out = tmp_path / "e.json"
    assert main(["eval", str(onnx_net), "--data", str(data), "--mode", "bit_true", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 32 and res["subset"] == "all" and res["data"] == "data (.npy)"
    assert "64 data (.npy) training images" in res["calibration"]
    for key in ("accuracy", "accuracy_ideal", "accuracy_float"):
        assert 0.0 <= res[key] <= 1.0
    assert "32 data (.npy) test images" in capsys.readouterr().out
    rgb = _write(tmp_path / "rgb", train_x=np.zeros((64, 8, 8, 3), np.uint8), test_x=np.zeros((32, 8, 8, 3), np.uint8))
    assert main(["eval", str(onnx_net), "--data", str(rgb)]) == 2
    assert "the network takes (C, H, W) = (1, 8, 8)" in capsys.readouterr().err
