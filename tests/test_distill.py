"""Knowledge distillation: the loss against a per-sample reference, the teacher ensemble, and a run."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from imcflow.cli import main
from imcflow.models import get_model
from imcflow.train import TrainConfig, TrainError, train
from imcflow.train.distill import Teachers, distill_loss
from imcflow.train.export import command_from_config, export_run


def _reference_loss(logits, labels, teacher, weight, temp, smoothing) -> float:
    """The same loss, one sample at a time in Python floats."""
    total = 0.0
    n, k = logits.shape
    for i in range(n):
        z = [float(v) for v in logits[i]]
        m = max(z)
        log_z = m + math.log(sum(math.exp(v - m) for v in z))
        logp = [v - log_z for v in z]
        ce = -(1 - smoothing) * logp[int(labels[i])] - smoothing / k * sum(logp)
        zt = [v / temp for v in z]
        mt = max(zt)
        log_zt = mt + math.log(sum(math.exp(v - mt) for v in zt))
        kl = sum(float(p) * (math.log(float(p)) - (v - log_zt)) for p, v in zip(teacher[i], zt))
        total += (1 - weight) * ce + weight * temp * temp * kl
    return total / n


def test_distill_loss_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 10, generator=g) * 3
    labels = torch.randint(0, 10, (7,), generator=g)
    teacher = torch.softmax(torch.randn(7, 10, generator=g), dim=1)
    for weight, temp, smoothing in ((0.5, 4.0, 0.1), (1.0, 1.0, 0.0), (0.3, 2.5, 0.0)):
        fast = float(distill_loss(logits, labels, teacher, weight, temp, smoothing))
        assert fast == pytest.approx(_reference_loss(logits, labels, teacher, weight, temp, smoothing), rel=1e-5)


def test_distill_loss_limits() -> None:
    logits = torch.randn(5, 10)
    labels = torch.randint(0, 10, (5,))
    ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.equal(distill_loss(logits, labels, torch.full((5, 10), 0.1), 0.0, 4.0, 0.1), ce)
    own = torch.softmax(logits / 3.0, dim=1)  # a teacher that agrees with the student adds nothing
    assert float(distill_loss(logits, labels, own, 0.4, 3.0, 0.1)) == pytest.approx(0.6 * float(ce), abs=1e-6)


def _save_random(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(get_model("cifar10-cnn11").state_dict(), path)


def test_teachers_average_their_probabilities(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    _save_random(a, 1)
    _save_random(b, 2)
    x = torch.rand(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    pa = Teachers("cifar10-cnn11", (str(a),)).probs(x, 2.0)
    pb = Teachers("cifar10-cnn11", (str(b),)).probs(x, 2.0)
    both = Teachers("cifar10-cnn11", (str(a), str(b))).probs(x, 2.0)
    assert torch.allclose(both, (pa + pb) / 2, atol=1e-6)
    assert torch.allclose(both.sum(1), torch.ones(3), atol=1e-5)


def test_bad_teacher_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="no such file"):
        Teachers("cifar10-cnn11", (str(tmp_path / "missing.pt"),))
    wrong = tmp_path / "wrong.pt"
    torch.save({"w": torch.zeros(2)}, wrong)
    with pytest.raises(TrainError, match="wrong.pt: not a cifar10-cnn11"):
        Teachers("cifar10-cnn11", (str(wrong),))


def test_a_teacher_of_another_topology(tmp_path: Path) -> None:
    """``ZOO_NAME=PATH`` loads a teacher of another zoo topology: a cnn11 teacher and its function-preserving
    widening (a cifar10-cnn11-c64 state) give the same probabilities to a c64 student's batch."""
    from imcflow.models.cnn11 import widen_outputs
    narrow = tmp_path / "narrow.pt"
    _save_random(narrow, 4)
    wide = tmp_path / "wide.pt"
    torch.save(widen_outputs(torch.load(narrow, weights_only=True), "c1", "c2", 64), wide)
    x = torch.rand(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    p_other = Teachers("cifar10-cnn11-c64", (f"cifar10-cnn11={narrow}",)).probs(x, 2.0)
    p_own = Teachers("cifar10-cnn11-c64", (str(wide),)).probs(x, 2.0)
    assert torch.allclose(p_other, p_own, atol=1e-5)
    with pytest.raises(TrainError, match="'nosuchnet' is not a zoo model"):
        Teachers("cifar10-cnn11-c64", (f"nosuchnet={narrow}",))
    with pytest.raises(TrainError, match="a teacher must see the student's images"):
        Teachers("cifar10-cnn11-c64", (f"resnet18={narrow}",))
    with pytest.raises(TrainError, match="not a cifar10-cnn11-c64 float state_dict"):
        Teachers("cifar10-cnn11-c64", (str(narrow),))


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 32)
        data = (rng.integers(0, 64, (32, 3072)) + labels[:, None] * 19).astype(np.uint8)
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels.tolist()}))
    return root


def test_distilled_run_records_its_teachers(tiny_cifar: Path, tmp_path: Path) -> None:
    teacher = tmp_path / "t.pt"
    _save_random(teacher, 3)
    base = dict(data_root=str(tiny_cifar), out_dir=str(tmp_path / "run"), epochs_float=1, batch_size=32,
                limit_train=64, cache_dir=str(tmp_path / "cache"), lr_float=0.05)
    plain = train(TrainConfig(**(base | {"out_dir": str(tmp_path / "plain")})))
    kd = train(TrainConfig(**base, distill_from=(str(teacher),), distill_weight=0.7, distill_temp=2.0))
    assert kd.history[0].loss != pytest.approx(plain.history[0].loss)  # the teacher changed the loss
    record = export_run(tmp_path / "run", tmp_path / "w")
    assert f"--distill-from {teacher} --distill-weight 0.7 --distill-temp 2.0" in record["command"]
    cfg = TrainConfig(data_root="d", out_dir="o")
    assert "--distill" not in command_from_config(cfg.__dict__)


def test_cli_refuses_bad_distill_weight(tiny_cifar: Path, tmp_path: Path, capsys) -> None:
    teacher = tmp_path / "t.pt"
    _save_random(teacher, 3)
    code = main(["train", "cifar10-cnn11", "--data", str(tiny_cifar), "--out", str(tmp_path / "r"),
                 "--epochs-float", "1", "--distill-from", str(teacher), "--distill-weight", "1.5"])
    assert code == 2
    assert "--distill-weight 1.5" in capsys.readouterr().err
