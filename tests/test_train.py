"""Training: augmentation (fast == reference), a smoke run that is interrupted and resumes, export."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from imcflow.cli import main
from imcflow.errors import DataError
from imcflow.models.cnn11 import load_trained
from imcflow.train import TrainConfig, TrainError, train
from imcflow.train.augment import cutout, cutout_reference, random_crop_flip, random_crop_flip_reference
from imcflow.train.export import export_run


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory) -> Path:
    """Pickle-batch CIFAR-10 of 320 train and 64 test images whose class shows in the mean colour."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 64, (n, 3072)) + (labels[:, None] * 19)
        return {b"data": data.astype(np.uint8), b"labels": labels.tolist()}

    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch(64)))
    (root / "test_batch").write_bytes(pickle.dumps(batch(64)))
    return root


def _stopped_after_one_epoch_then_resumed(cfg: TrainConfig) -> list[tuple[str, int]]:
    """Run ``cfg``, interrupt it after its first epoch, run it again: the epochs the second run did."""
    with pytest.raises(_Stop):
        train(cfg, on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    seen: list[tuple[str, int]] = []
    train(cfg, on_epoch=lambda r: seen.append((r.phase, r.epoch)))
    return seen


def _cfg(data: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(data_root=str(data), out_dir=str(out), epochs_float=2, batch_size=32, limit_train=64,
                cache_dir=str(cache), lr_float=0.05)
    return TrainConfig(**(base | kw))


def test_cutout_fast_equals_reference() -> None:
    images = torch.randint(1, 256, (40, 3, 8, 8), dtype=torch.uint8)
    fast = cutout(images, 4, torch.Generator().manual_seed(3))
    assert torch.equal(fast, cutout_reference(images, 4, torch.Generator().manual_seed(3)))
    zeros = (fast == 0).all(dim=1).sum(dim=(1, 2))          # pixels cut per image
    assert zeros.max() == 16 and zeros.min() >= 4           # a full square inside, clipped ones at corners
    assert torch.equal(cutout(images, 0, torch.Generator()), images)


@pytest.mark.parametrize("shape,flip", [((9, 3, 8, 8), True), ((9, 1, 5, 11), True), ((9, 1, 5, 11), False)])
def test_augment_fast_equals_reference(shape, flip) -> None:
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    fast = random_crop_flip(images, 3, torch.Generator().manual_seed(5), flip=flip)
    slow = random_crop_flip_reference(images, 3, torch.Generator().manual_seed(5), flip=flip)
    assert torch.equal(fast, slow)
    assert fast.dtype == torch.uint8 and fast.shape == images.shape
    assert not torch.equal(fast, images)  # it does move pixels
    # zero shift and no flip leave an image unchanged: pad 0 means only flips happen
    flipped = random_crop_flip(images, 0, torch.Generator().manual_seed(1))
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(2)) for f, i in zip(flipped, images))
    assert torch.equal(random_crop_flip(images, 0, torch.Generator().manual_seed(1), flip=False), images)


def test_interrupted_run_resumes_where_it_stopped(fake_cifar: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    straight = train(_cfg(fake_cifar, tmp_path / "straight", cache))
    assert [(r.phase, r.epoch) for r in straight.history] == [("float", 1), ("float", 2)]

    def stop_after_first(rec) -> None:
        raise _Stop

    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        train(_cfg(fake_cifar, out, cache), on_epoch=stop_after_first)
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    assert ckpt["phase"] == "float" and ckpt["epoch"] == 1
    seen: list[int] = []
    resumed = train(_cfg(fake_cifar, out, cache), on_epoch=lambda r: seen.append(r.epoch))
    assert seen == [2]  # continued from epoch 1, not 0
    assert [r.epoch for r in resumed.history] == [1, 2]
    # same random draws as the uninterrupted run: identical weights
    a = torch.load(tmp_path / "straight" / "float.pt")
    b = torch.load(out / "float.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run started again does nothing
    assert len(train(_cfg(fake_cifar, out, cache), on_epoch=lambda r: seen.append(-1)).history) == 2
    assert seen == [2]


def test_resume_with_other_schedule_is_refused(fake_cifar: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    with pytest.raises(_Stop):
        train(_cfg(fake_cifar, out, cache), on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(TrainError, match="--epochs-float"):
        train(_cfg(fake_cifar, out, cache, epochs_float=3))


def test_qat_needs_float_weights(fake_cifar: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="QAT starts from float weights"):
        train(_cfg(fake_cifar, tmp_path / "q", tmp_path / "c", epochs_float=0, epochs_qat=1))
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), weights)
    with pytest.raises(TrainError, match="--epochs-float 0"):  # weights given: no float epochs to run
        train(_cfg(fake_cifar, tmp_path / "q", tmp_path / "c", epochs_float=3, resume_from=str(weights)))


def test_cli_smoke_train_resume_export(fake_cifar: Path, tmp_path: Path, capsys) -> None:
    out, weights = tmp_path / "run", tmp_path / "weights"
    args = ["train", "cifar10-cnn11", "--data", str(fake_cifar), "--out", str(out), "--epochs-float", "1",
            "--batch-size", "32", "--limit-train", "128", "--cache-dir", str(tmp_path / "cache"), "--threads", "2"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "float epoch 1/1" in first and "img/s" in first
    assert main(args + ["--export", "--weights-dir", str(weights)]) == 0
    assert "float epoch 1/1" not in capsys.readouterr().out  # nothing left to train
    record = json.loads((weights / "cifar10-cnn11.json").read_text())
    assert record["epochs_done"] == {"float": 1, "qat": 0} and record["seed"] == 0
    assert record["command"].startswith("imcflow train cifar10-cnn11 --data")
    assert "final float epoch" in record["float_weights"]
    model = load_trained(weights / "cifar10-cnn11.pt")
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    # the exported full checkpoint starts a new run folder (here: nothing left, both phases done)
    assert main(["train", "cifar10-cnn11", "--data", str(fake_cifar), "--out", str(tmp_path / "new"),
                 "--resume-from", str(weights / "cifar10-cnn11.ckpt"), "--epochs-float", "1", "--batch-size", "32",
                 "--limit-train", "128", "--cache-dir", str(tmp_path / "cache")]) == 0


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["train", "cifar10-cnn11", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CIFAR-10 train data" in err
    assert main(["train", "cifar10-cnn11", "--out", str(tmp_path / "o"), "--export-only"]) == 2
    assert "no last.ckpt" in capsys.readouterr().err


def test_qat_phase_small(fake_cifar: Path, tmp_path: Path) -> None:
    """One QAT epoch from float weights (the chip's BPBS + ADC arithmetic is slow on a CPU: 16 images)."""
    from imcflow.ir.qgraph import QGraph

    cache = tmp_path / "cache"
    small = dict(batch_size=16, limit_train=16, limit_test=16)
    train(_cfg(fake_cifar, tmp_path / "float", cache, epochs_float=1, **small))
    out = tmp_path / "qat"
    result = train(_cfg(fake_cifar, out, cache, epochs_float=0, epochs_qat=1, lr_qat=0.005,
                        resume_from=str(tmp_path / "float" / "float.pt"), **small))
    assert [(r.phase, r.epoch) for r in result.history] == [("qat", 1)]
    assert set(result.best_acc) == {"qat_init", "qat", "qat_int"}
    record = export_run(out, tmp_path / "w")
    assert "--resume-from" in record["command"] and "--lr-qat 0.005" in record["command"]
    assert record["resume_run"]["best_test_acc"].keys() == {"float"}
    assert "--resume-from" in record["float_weights"]
    qg = QGraph.load(str(out / "qat.qgraph.json"))
    qg.verify()
    assert [n.w_bits for n in qg.mvm_nodes()] == [4] * 11
    assert qg.spec(qg.mvm_nodes()[0].inputs[0]).bits == 8  # raw 8-b pixels into c1
    assert qg.spec(qg.mvm_nodes()[1].inputs[0]).bits == 4


def test_qat_phase_from_float_weights_resumes_and_exports(fake_cifar: Path, tmp_path: Path) -> None:
    from imcflow.ir.qgraph import QGraph

    cache = tmp_path / "cache"
    small = dict(batch_size=16, limit_train=32, limit_test=32)
    train(_cfg(fake_cifar, tmp_path / "float", cache, epochs_float=1, **small))
    weights = str(tmp_path / "float" / "float.pt")  # a bare state_dict: only QAT runs
    qat = dict(small, epochs_float=0, epochs_qat=2, resume_from=weights, lr_qat=0.005)

    straight = train(_cfg(fake_cifar, tmp_path / "straight", cache, **qat))
    assert [(r.phase, r.epoch) for r in straight.history] == [("qat", 1), ("qat", 2)]
    assert 0.0 <= straight.best_acc["qat_int"] <= 1.0

    out = tmp_path / "resumed"
    assert _stopped_after_one_epoch_then_resumed(_cfg(fake_cifar, out, cache, **qat)) == [("qat", 2)]
    a, b = torch.load(tmp_path / "straight" / "qat.pt"), torch.load(out / "qat.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    qg = QGraph.load(str(out / "qat.qgraph.json"))
    qg.verify()
    assert (out / "qat.qgraph.json").read_text() == (tmp_path / "straight" / "qat.qgraph.json").read_text()

    record = export_run(out, tmp_path / "w")
    assert record["epochs_done"] == {"float": 0, "qat": 2} and "final QAT epoch" in record["qat_qgraph"]
    assert "--resume-from" in record["command"] and len(record["resume_run"]["history"]) == 1
    assert (tmp_path / "w" / "cifar10-cnn11.qgraph.json").is_file()


def test_qat_ideal_epochs_then_chip_adc(fake_cifar: Path, tmp_path: Path) -> None:
    """--qat-ideal-epochs: the first QAT epochs use exact counts, the last the chip's ADC; recorded."""
    cache = tmp_path / "cache"
    small = dict(batch_size=16, limit_train=16, limit_test=16)
    train(_cfg(fake_cifar, tmp_path / "float", cache, epochs_float=1, **small))
    qat = dict(small, epochs_float=0, epochs_qat=2, qat_ideal_epochs=1, lr_qat=0.005,
               resume_from=str(tmp_path / "float" / "float.pt"))
    out = tmp_path / "qat"
    result = train(_cfg(fake_cifar, out, cache, **qat))
    assert [r.adc for r in result.history] == ["ideal", "bit_true"]
    assert {"qat_ideal", "qat", "qat_int"} <= set(result.best_acc)
    record = export_run(out, tmp_path / "w")
    assert "--qat-ideal-epochs 1" in record["command"] and "--adc-full-scale" not in record["command"]
    from imcflow.ir.qgraph import QGraph
    from imcflow.train.export import command_from_config
    fs = {n.name: n.adc_full_scale_rows for n in QGraph.load(str(out / "qat.qgraph.json")).mvm_nodes()}
    assert fs["c4.0"] < 1152  # calibrated ADC full scale (default): finer than the 1152 rows allow
    legacy = {k: v for k, v in record["config"].items() if k not in ("adc_full_scale", "qat_ideal_epochs")}
    assert "--adc-full-scale rows" in command_from_config(legacy)  # runs from before the option
    assert "--qat-ideal-epochs" not in command_from_config(legacy)
    assert "--cutout 8" in command_from_config(record["config"] | {"cutout_px": 8})
    assert "--cutout" not in record["command"]
    with pytest.raises(TrainError, match="--qat-ideal-epochs"):
        train(_cfg(fake_cifar, out, cache, **(qat | {"qat_ideal_epochs": 0})))  # resume with another split
    with pytest.raises(TrainError, match="--qat-ideal-epochs = 3"):
        train(_cfg(fake_cifar, tmp_path / "bad", cache, **(qat | {"qat_ideal_epochs": 3})))


def test_init_from_warm_restart(fake_cifar: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = train(_cfg(fake_cifar, tmp_path / "a", cache, epochs_float=2))
    init = str(tmp_path / "a" / "float.pt")
    out = tmp_path / "b"
    with pytest.raises(_Stop):  # interrupted warm restart: resumes its own run, not the init weights
        train(_cfg(fake_cifar, out, cache, init_from=init), on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    assert torch.load(out / "last.ckpt", weights_only=False)["float_model"] is None
    seen: list[int] = []
    result = train(_cfg(fake_cifar, out, cache, init_from=init), on_epoch=lambda r: seen.append(r.epoch))
    assert seen == [2] and len(result.history) == 2
    assert result.history[0].loss < cold.history[0].loss  # started from trained weights
    record = export_run(out, tmp_path / "w")
    assert "--init-from" in record["command"]
    assert len(record["init_run"]["history"]) == 2 and "--epochs-float 2" in record["init_run"]["command"]


def test_average_parameters_is_the_running_mean() -> None:
    from imcflow.train.loop import average_parameters

    net = torch.nn.Linear(3, 2)
    states, swa = [], None
    for k in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
        states.append({n: p.detach().clone() for n, p in net.named_parameters()})
        swa = average_parameters(swa, net)
    assert swa["count"] == 3
    for name in states[0]:
        assert torch.allclose(swa["mean"][name], sum(s[name] for s in states) / 3, atol=1e-6)


def test_recompute_batchnorm_gives_plain_averages() -> None:
    from imcflow.train.loop import recompute_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
    images = torch.randint(0, 256, (20, 3, 6, 6), dtype=torch.uint8)
    recompute_batchnorm(net, images, "cpu", seed=1, batch_size=10)
    assert not net.training and net[1].momentum == 0.1  # eval mode, momentum restored
    # the same crops: the running mean is the mean of the two batches' means
    from imcflow.train.augment import augment
    from imcflow.train.loop import to_model_input

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        means = [net[0](to_model_input(augment(images[i:i + 10], "crop-flip", gen), "cpu")).mean((0, 2, 3))
                 for i in (0, 10)]
    assert torch.allclose(net[1].running_mean, (means[0] + means[1]) / 2, atol=1e-5)


def test_swa_float_phase_averages_resumes_and_records(fake_cifar: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    train(_cfg(fake_cifar, tmp_path / "a", cache, epochs_float=2))
    init = str(tmp_path / "a" / "float.pt")
    cfg = dict(init_from=init, swa=True, epochs_float=3, lr_float=0.01)
    straight = train(_cfg(fake_cifar, tmp_path / "s", cache, **cfg))
    assert all(r.lr == pytest.approx(0.01) for r in straight.history)  # constant rate
    assert "float_swa" in straight.best_acc
    last = torch.load(tmp_path / "s" / "last.ckpt", weights_only=False)
    assert last["swa"]["count"] == 3
    final = torch.load(tmp_path / "s" / "float.pt")
    assert torch.equal(final["c1.0.weight"], last["swa"]["mean"]["c1.0.weight"])  # the mean is the result
    out = tmp_path / "r"
    with pytest.raises(_Stop):
        train(_cfg(fake_cifar, out, cache, **cfg), on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    resumed = train(_cfg(fake_cifar, out, cache, **cfg))
    assert resumed.best_acc["float_swa"] == straight.best_acc["float_swa"]
    b = torch.load(out / "float.pt")
    assert all(torch.equal(final[k], b[k]) for k in final)
    with pytest.raises(_Stop):
        train(_cfg(fake_cifar, tmp_path / "r2", cache, **cfg), on_epoch=lambda r: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(TrainError, match="--swa"):  # a checkpoint of an SWA run continues only as one
        train(_cfg(fake_cifar, tmp_path / "r2", cache, init_from=init, epochs_float=3, lr_float=0.01))
    record = export_run(out, tmp_path / "w")
    assert "--swa" in record["command"]


def test_source_run_reads_the_gpu_driver_summary(tmp_path: Path) -> None:
    from imcflow.train.export import _source_run

    (tmp_path / "summary.json").write_text(json.dumps({"device": {"gpu": "X"}, "runs": {
        "a": {"command": "imcflow train cifar10-cnn11 --device cuda --seed 10", "history": [{"epoch": 1}],
              "final_test_acc": 0.9}}}))
    run = _source_run(tmp_path / "a.float.pt")
    assert run["command"].endswith("--seed 10") and run["device"] == {"gpu": "X"} and run["history"] == [{"epoch": 1}]
    assert "unknown" in _source_run(tmp_path / "b.float.pt")["run"]


def _export_onnx(model, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), dynamo=False)


def _small_onnx(path: Path) -> Path:
    from torch import nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 10)).eval()
    _export_onnx(m, torch.rand(1, 3, 32, 32), path)
    return path


def test_qat_of_a_users_onnx_network_resumes(fake_cifar: Path, tmp_path: Path) -> None:
    """``imcflow train net.onnx --epochs-float 0 --epochs-qat N``: QAT from the file's float weights;
    interrupted, it resumes to the same integers; the result is a QGraph the other commands take."""
    from imcflow.ir.qgraph import QGraph

    onnx_path = _small_onnx(tmp_path / "user.onnx")
    cache = tmp_path / "cache"
    qat = dict(model=str(onnx_path), batch_size=16, limit_train=32, limit_test=32, epochs_float=0, epochs_qat=2,
               qat_ideal_epochs=1, lr_qat=0.005)
    straight = train(_cfg(fake_cifar, tmp_path / "straight", cache, **qat))
    assert [(r.phase, r.epoch, r.adc) for r in straight.history] == [("qat", 1, "ideal"), ("qat", 2, "bit_true")]
    out = tmp_path / "resumed"
    assert _stopped_after_one_epoch_then_resumed(_cfg(fake_cifar, out, cache, **qat)) == [("qat", 2)]
    assert (out / "qat.qgraph.json").read_text() == (tmp_path / "straight" / "qat.qgraph.json").read_text()
    qg = QGraph.load(str(out / "qat.qgraph.json"))
    qg.verify()
    assert [n.w_bits for n in qg.mvm_nodes()] == [4] * 3


@pytest.mark.parametrize("extra,words", [
    ({"epochs_float": 3}, "pass --epochs-float 0 and --epochs-qat N"),
    ({"epochs_qat": 0}, "pass --epochs-float 0 and --epochs-qat N"),
    ({"distill_from": ("t.pt",)}, "--distill-from applies to zoo models"),
    ({"init_from": "f.pt"}, "--init-from applies to zoo models")])
def test_onnx_training_options_are_checked(fake_cifar: Path, tmp_path: Path, extra, words) -> None:
    onnx_path = _small_onnx(tmp_path / "user.onnx")
    base = dict(model=str(onnx_path), epochs_float=0, epochs_qat=1)
    with pytest.raises(TrainError, match=words):
        train(_cfg(fake_cifar, tmp_path / "o", tmp_path / "c", **(base | extra)))


def test_onnx_training_refuses_other_input_shapes_and_export(fake_cifar: Path, tmp_path: Path, capsys) -> None:
    from torch import nn
    path = tmp_path / "mnist.onnx"
    _export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), torch.rand(1, 1, 28, 28), path)
    with pytest.raises(DataError, match=r"is read as CIFAR-10 .* takes \(1, 28, 28\) inputs and gives 10 outputs"):
        train(_cfg(fake_cifar, tmp_path / "o", tmp_path / "c", model=str(path), epochs_float=0, epochs_qat=1))
    assert main(["train", str(path), "--data", str(fake_cifar), "--out", str(tmp_path / "o"), "--export"]) == 2
    assert "an ONNX network's result is the run folder's qat.qgraph.json" in capsys.readouterr().err
