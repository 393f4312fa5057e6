"""The training loop: float pre-training, then quantisation-aware training (QAT), resumable.

Recipe (chosen for few epochs on a CPU): SGD with Nesterov momentum 0.9, weight decay 5e-4 on
conv/linear weights, label smoothing 0.1, batch 256, a one-cycle learning rate per batch in the float
phase and a cosine decay in the QAT phase; augmentation (``augment``) is a random crop of the zero-padded
image (4 px for 32 x 32) and a horizontal flip, done on uint8 tensors in memory (:mod:`imcflow.train.augment`). With ``swa``
the float phase is stochastic weight averaging instead: a constant rate, and the mean of the
per-epoch weights (batch norms re-estimated) as its result.

After every epoch the loop writes ``<out>/last.ckpt`` atomically (model, optimiser, scheduler, phase,
epoch, RNG states, best accuracy, history) and, when the test accuracy improved, ``best-<phase>.pt``
(a bare state_dict). Started again with the same ``out_dir`` it continues from ``last.ckpt``; a
resumed run draws the same random numbers as an uninterrupted one. ``resume_from`` starts a new
``out_dir`` from a checkpoint or a bare float state_dict (then only the QAT phase runs).

The data are CIFAR-10 or a user's four .npy files (:mod:`imcflow.data.npy`), told apart by the folder's
contents; images must fit the network's input shape and labels its outputs. A checkpoint records the
data it trained on (format, shapes, a digest, the augmentation): a resume on other data is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from imcflow.data import load_image_split
from imcflow.data.npy import is_npy_dataset
from imcflow.models import get_model, input_shape
from imcflow.quant.calibrate import ADC_FULL_SCALES
from imcflow.train.augment import AUGMENTS, augment, cutout
from imcflow.train.checkpoint import (FORMAT, TrainError, float_weights, is_full_checkpoint, load_checkpoint,
                                     save_atomic)
from imcflow.train.distill import Teachers, distill_loss

PHASES = ("float", "qat")
LAST = "last.ckpt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in every checkpoint)."""

    data_root: str
    """CIFAR-10 folder or archive (see :func:`imcflow.data.load_cifar10`), or a folder of the four .npy
    files of a user's dataset (see :mod:`imcflow.data.npy`)."""
    out_dir: str
    """Run folder: last.ckpt, best-float.pt, float.pt, best-qat.pt, qat.pt."""
    model: str = "cifar10-cnn11"
    epochs_float: int = 30
    epochs_qat: int = 0
    qat_ideal_epochs: int = 0
    """The first this-many QAT epochs use the ideal ADC (exact column counts: several times faster
    on a CPU); the remaining ``epochs_qat - qat_ideal_epochs`` epochs model the chip's ADC."""
    batch_size: int = 256
    lr_float: float = 0.1
    """Peak learning rate of the float phase's one-cycle schedule."""
    lr_qat: float = 0.001
    """Start of the QAT phase's cosine decay."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: str = "crop-flip"
    """Training-image augmentation, one of :data:`imcflow.train.augment.AUGMENTS`: "crop-flip" (random
    crop and horizontal flip), "crop" (no flip: for digits and text, which a mirror changes) or "none"."""
    cutout_px: int = 0
    """Side of the Cutout square (DeVries and Taylor, 2017) applied after crop and flip in every
    phase; 0 = off."""
    seed: int = 0
    limit_train: int | None = None
    """Train on this many images (a fixed random subset), for smoke tests."""
    limit_test: int | None = None
    """Evaluate on this many test images (a fixed random subset), for smoke tests."""
    cache_dir: str | None = None
    resume_from: str | None = None
    init_from: str | None = None
    """Float phase: start from these weights (a state_dict or checkpoint) instead of a random init,
    with a fresh schedule (a warm restart that continues an earlier float run)."""
    device: str = "cpu"
    swa: bool = False
    """Float phase: stochastic weight averaging (Izmailov et al., 2018): every epoch runs at the
    constant learning rate ``lr_float``, and the phase's result (``float.pt``, and the QAT phase's
    start) is the mean of the weights after each epoch, with batch-norm statistics re-estimated on
    the training images. Meant to continue trained weights (``init_from``)."""
    bf16: bool = False
    """Float phase only: bfloat16 autocast (2x faster on CPUs with AVX512-BF16); evaluation stays float32."""
    chip: str = "jssc2022"
    """QAT phase: chip preset whose ADC the forward pass models."""
    adc_full_scale: str = "calibrated"
    """QAT phase: each layer's ADC full scale (kept through export and compilation): "calibrated",
    the smallest that clips at most 1e-4 of the conversions on the calibration images (far finer
    codes for layers whose column counts stay well below their rows), or "rows" (never clips)."""
    w_bits: int = 4
    x_bits: int = 4
    first_x_bits: int = 8
    distill_from: tuple[str, ...] = ()
    """Teachers for knowledge distillation (:mod:`imcflow.train.distill`): float weights of the same
    model; empty = plain cross-entropy training."""
    distill_weight: float = 0.5
    """Share of the distillation term in the loss (the rest is cross-entropy with the labels)."""
    distill_temp: float = 4.0
    """Softmax temperature of the distillation term."""
    eval_int: bool = True
    """After the last QAT epoch, also measure the exported integers run bit-true (``best_acc["qat_int"]``)."""

    def epochs(self, phase: str) -> int:
        """Epoch count of ``phase``."""
        return self.epochs_float if phase == "float" else self.epochs_qat


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did."""

    phase: str
    epoch: int
    """Epochs of this phase completed, 1-based."""
    epochs: int
    loss: float
    train_acc: float
    test_acc: float
    images_per_s: float
    lr: float
    """Learning rate at the end of the epoch."""
    seconds: float
    adc: str = ""
    """QAT epochs: the ADC model of the forward pass ("ideal" or "bit_true")."""


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: every epoch's record and the best test accuracy of each phase."""

    history: tuple[EpochRecord, ...]
    best_acc: dict = field(default_factory=dict)
    out_dir: str = ""


@dataclass(frozen=True)
class _Data:
    train_x: torch.Tensor  # uint8 N, C, H, W
    train_y: torch.Tensor  # int64 N
    test_x: torch.Tensor
    test_y: torch.Tensor
    identity: dict  # what a checkpoint records to refuse a resume on other data (see _load_data)


def train(cfg: TrainConfig, on_epoch: Callable[[EpochRecord], None] | None = None,
          on_batch: Callable[[str, int, int, int, float], None] | None = None) -> TrainResult:
    """Run (or continue) the float phase and then the QAT phase of ``cfg``.

    ``on_epoch(record)`` is called after each epoch; ``on_batch(phase, epoch, step, steps, loss)`` after
    each batch. Raises TrainError on inconsistent options or checkpoints, DataError on bad data.
    """
    _check_config(cfg)
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    ckpt = _starting_checkpoint(cfg)
    data = _load_data(cfg, *_model_io(cfg))
    if ckpt is not None:
        _check_same_data(ckpt, data, cfg)
    history = [EpochRecord(**r) for r in ckpt["history"]] if ckpt else []
    best = dict(ckpt["best_acc"]) if ckpt else {}
    float_state = ckpt.get("float_model") if ckpt else None
    if float_state is not None:
        _check_float_done(cfg, history)
    for phase in PHASES:
        if phase == "float" and float_state is not None:
            continue  # float phase already complete (or given as weights)
        if cfg.epochs(phase) == 0:
            continue
        if phase == "qat" and float_state is None and not is_onnx_model(cfg.model):
            raise TrainError("QAT starts from float weights: give --epochs-float > 0, or --resume-from a float "
                             "checkpoint or state_dict")
        resume = ckpt if ckpt and ckpt["phase"] == phase else None
        state = _run_phase(phase, cfg, data, resume, float_state, history, best, on_epoch, on_batch)
        if phase == "float":
            float_state = state
    return TrainResult(history=tuple(history), best_acc=best, out_dir=cfg.out_dir)


def _check_config(cfg: TrainConfig) -> None:
    for name in ("epochs_float", "epochs_qat", "batch_size"):
        value = getattr(cfg, name)
        if value < (1 if name == "batch_size" else 0):
            raise TrainError(f"--{name.replace('_', '-')} = {value}: must be {'>= 1' if name == 'batch_size' else '>= 0'}")
    if cfg.adc_full_scale not in ADC_FULL_SCALES:
        raise TrainError(f"--adc-full-scale {cfg.adc_full_scale!r}: choose one of {', '.join(ADC_FULL_SCALES)}")
    if cfg.augment not in AUGMENTS:
        raise TrainError(f"--augment {cfg.augment!r}: choose one of {', '.join(AUGMENTS)}")
    if not 0 <= cfg.cutout_px <= 32:
        raise TrainError(f"--cutout {cfg.cutout_px}: must be from 0 (off) to 32 pixels")
    if not 0 <= cfg.qat_ideal_epochs <= cfg.epochs_qat:
        raise TrainError(f"--qat-ideal-epochs = {cfg.qat_ideal_epochs}: must be from 0 to --epochs-qat "
                         f"({cfg.epochs_qat}), so that the last QAT epochs see the chip's ADC")
    for name in ("limit_train", "limit_test"):
        value = getattr(cfg, name)
        if value is not None and value < 2:
            raise TrainError(f"--{name.replace('_', '-')} = {value}: needs at least 2 images")
    if cfg.distill_from and not (0.0 <= cfg.distill_weight <= 1.0 and cfg.distill_temp > 0.0):
        raise TrainError(f"--distill-weight {cfg.distill_weight} / --distill-temp {cfg.distill_temp}: the weight must "
                         f"be in [0, 1] and the temperature > 0")
    if cfg.device not in ("cpu", "cuda") or (cfg.device == "cuda" and not torch.cuda.is_available()):
        raise TrainError(f"--device {cfg.device}: use cpu, or cuda on a machine with a CUDA GPU")
    if is_onnx_model(cfg.model):
        _check_onnx_model(cfg)


def is_onnx_model(model: str) -> bool:
    """Whether ``model`` names an ONNX file (a user's float network: QAT only) rather than a zoo model."""
    return str(model).lower().endswith(".onnx")


def _check_onnx_model(cfg: TrainConfig) -> None:
    """An ONNX network is trained by QAT alone, from the float weights in the file."""
    if not Path(cfg.model).is_file():
        raise TrainError(f"ONNX model {cfg.model} not found: give the path of a float network "
                         f"(e.g. saved with torch.onnx.export), taking pixel / 255 inputs")
    if cfg.epochs_float or not cfg.epochs_qat:
        raise TrainError(f"{cfg.model}: an ONNX network's float weights are taken as trained and only its QAT runs "
                         f"here: pass --epochs-float 0 and --epochs-qat N (N >= 1)")
    for flag, given in (("--resume-from", cfg.resume_from), ("--init-from", cfg.init_from),
                        ("--distill-from", cfg.distill_from), ("--swa", cfg.swa)):
        if given:
            raise TrainError(f"{flag} applies to zoo models; an ONNX network's QAT starts from the weights in "
                             f"{cfg.model} (rerun with the same --out to resume an interrupted run)")


# ---------------------------------------------------------------- data

def _model_io(cfg: TrainConfig) -> tuple[tuple[int, int, int], int]:
    """(input shape C, H, W; number of outputs) of the network to train."""
    if is_onnx_model(cfg.model):
        from imcflow.frontend import load_graph

        graph = load_graph(cfg.model)
        shape, out = tuple(graph.input_shape), graph.shape(graph.output)
        if len(shape) != 3 or len(out) != 1:
            raise TrainError(f"{cfg.model} maps {shape} inputs to {out} outputs; imcflow train trains image "
                             f"classifiers: (C, H, W) pixel / 255 inputs, (classes,) logits")
        return shape, int(out[0])
    model = get_model(cfg.model).eval()
    shape = input_shape(cfg.model)
    with torch.no_grad():
        return shape, int(model(torch.zeros((1,) + shape)).shape[-1])


def _load_data(cfg: TrainConfig, shape: tuple[int, int, int], classes: int) -> _Data:
    """The training and test images (uint8 NCHW) for a network of input ``shape`` and ``classes`` outputs."""
    train_x, train_y, _ = load_image_split(cfg.data_root, "train", shape, classes, cfg.cache_dir, cfg.model)
    test_x, test_y, _ = load_image_split(cfg.data_root, "test", shape, classes, cfg.cache_dir, cfg.model)
    train_x, train_y = _subset(train_x, train_y, cfg.limit_train, cfg.seed)
    test_x, test_y = _subset(test_x, test_y, cfg.limit_test, cfg.seed + 1)
    identity = {"format": "npy" if is_npy_dataset(cfg.data_root) else "cifar10", "augment": cfg.augment,
                "train": train_x.shape, "test": test_x.shape, "sha1": _digest(train_x, train_y, test_x, test_y)}
    return _Data(*(torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)), identity=identity)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a))
    return h.hexdigest()


def _subset(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or limit >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[idx], y[idx]


def to_model_input(images: torch.Tensor, device: str) -> torch.Tensor:
    """uint8 NCHW pixels -> float32 in [0, 1] (pixel / 255, the network's input convention), channels-last."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- checkpoints

def _starting_checkpoint(cfg: TrainConfig) -> dict | None:
    last = Path(cfg.out_dir) / LAST
    if last.is_file():
        ckpt = load_checkpoint(last)
        if not is_full_checkpoint(ckpt):
            raise TrainError(f"{last} is not a training checkpoint; delete it or choose another --out")
        return ckpt
    if cfg.resume_from is None:
        return None
    ckpt = load_checkpoint(Path(cfg.resume_from))
    if is_full_checkpoint(ckpt):
        return ckpt
    # A bare state_dict: float weights, the float phase counts as done.
    state = ckpt.get("model", ckpt)
    return {"format": FORMAT, "phase": "float", "float_model": state, "history": [], "best_acc": {}}


def _checkpoint(cfg, phase, epoch, steps, model, opt, sched, gen, float_state, history, best, data, swa=None) -> dict:
    return {
        "format": FORMAT, "config": asdict(cfg), "phase": phase, "epoch": epoch, "data": data.identity,
        "schedule": {"epochs": cfg.epochs(phase), "steps_per_epoch": steps, "batch_size": cfg.batch_size,
                     **({"ideal_epochs": cfg.qat_ideal_epochs} if phase == "qat" else {}),
                     **({"swa": True} if phase == "float" and cfg.swa else {})},
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "generator": gen.get_state()},
        "float_model": float_state, "swa": swa, "history": [asdict(r) for r in history], "best_acc": dict(best),
        "threads": torch.get_num_threads(),
    }


def _check_float_done(cfg: TrainConfig, history: list[EpochRecord]) -> None:
    """A finished float phase is not run again: refuse a different --epochs-float rather than ignore it."""
    done = sum(1 for r in history if r.phase == "float")
    if cfg.epochs_float not in (0, done):
        raise TrainError(f"the float phase of this checkpoint is already done ({done} epochs, or given as weights); "
                         f"pass --epochs-float {done} (or 0) to go on with QAT, or start a new --out")


def _check_same_data(ckpt: dict, data: _Data, cfg: TrainConfig) -> None:
    """A checkpoint goes on only with the data (and augmentation) it was made with; older ones recorded none."""
    have = ckpt.get("data")
    if have is None or have == data.identity:
        return
    diff = ", ".join(f"{k} {have.get(k)} -> {v}" for k, v in data.identity.items() if have.get(k) != v)
    raise TrainError(f"the checkpoint of {cfg.out_dir if cfg.resume_from is None else cfg.resume_from} was trained on "
                     f"other data than {cfg.data_root} gives ({diff}): rerun with its --data, --augment, --limit-train "
                     f"and --limit-test, or use a new --out (to fine-tune its float weights on these data, pass its "
                     f"float.pt to --resume-from)")


def _check_resume(resume: dict, cfg: TrainConfig, phase: str, steps: int) -> None:
    want = {"epochs": cfg.epochs(phase), "steps_per_epoch": steps, "batch_size": cfg.batch_size}
    have = dict(resume["schedule"])
    if phase == "qat":
        want["ideal_epochs"] = cfg.qat_ideal_epochs
        have.setdefault("ideal_epochs", 0)
    if phase == "float" and (cfg.swa or have.get("swa")):
        want["swa"] = cfg.swa
        have.setdefault("swa", False)
    if have != want:
        raise TrainError(f"checkpoint in {cfg.out_dir} was made for {phase} phase {have}, this run asks {want}: "
                         f"rerun with the same --epochs-{phase}, --batch-size and --limit-train"
                         f"{' and --qat-ideal-epochs' if phase == 'qat' else ' (and --swa)'}, or a new --out")


# ---------------------------------------------------------------- one phase

def _run_phase(phase, cfg, data, resume, float_state, history, best, on_epoch, on_batch) -> dict:
    torch.manual_seed(cfg.seed)  # initial weights; a resumed run restores its RNG state below
    init = float_state
    if phase == "float" and resume is None and cfg.init_from is not None:
        init = float_weights(Path(cfg.init_from), "--init-from")
    model = _build_model(phase, cfg, init, data).to(cfg.device)
    if phase == "float":
        model = model.to(memory_format=torch.channels_last)
    n = len(data.train_y)
    steps = max(1, n // cfg.batch_size)
    opt = _optimizer(model, cfg, phase)
    sched = _scheduler(opt, cfg, phase, steps)
    gen = torch.Generator().manual_seed(cfg.seed * 2 + PHASES.index(phase))
    start = 0
    swa = None  # stochastic weight averaging: {"mean": parameters' running mean, "count": epochs averaged}
    teachers = Teachers(cfg.model, tuple(cfg.distill_from), cfg.device, cfg.bf16) if cfg.distill_from else None
    if resume is not None:
        _check_resume(resume, cfg, phase, steps)
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"]["torch"])
        gen.set_state(resume["rng"]["generator"])
        start = resume["epoch"]
        swa = resume.get("swa")
    out = Path(cfg.out_dir)
    if phase == "qat" and resume is None:  # the calibrated starting point = post-training quantisation
        best["qat_init"] = evaluate(model, data.test_x, data.test_y, cfg.device)
    for epoch in range(start, cfg.epochs(phase)):
        if phase == "qat":
            model.set_adc("ideal" if epoch < cfg.qat_ideal_epochs else "bit_true")
        rec = _epoch(phase, epoch, cfg, model, opt, sched, gen, data, steps, on_batch, teachers)
        history.append(rec)
        if phase == "float" and cfg.swa:
            swa = average_parameters(swa, model)
        key = "qat_ideal" if rec.adc == "ideal" else phase   # best-qat.pt: the best epoch with the chip's ADC
        if rec.test_acc > best.get(key, -1.0):
            best[key] = rec.test_acc
            if key == phase:
                _save_weights(phase, model, out, f"best-{phase}")
        done = epoch + 1 == cfg.epochs(phase)
        if done and swa is not None:  # the phase's result is the averaged network
            best["float_swa"] = _load_swa(model, swa, data, cfg)
        final_state = _cpu_state(model)
        if done:
            _save_weights(phase, model, out, phase)
            if phase == "qat" and cfg.eval_int:
                from imcflow.train.qat_glue import int_accuracy

                best["qat_int"] = int_accuracy(model, data.test_x, data.test_y)
        fs = final_state if (phase == "float" and done) else float_state
        save_atomic(_checkpoint(cfg, phase, epoch + 1, steps, model, opt, sched, gen, fs, history, best, data, swa),
                    out / LAST)
        if on_epoch:
            on_epoch(rec)
    return _cpu_state(model)


def average_parameters(swa: dict | None, model: nn.Module) -> dict:
    """``swa`` (``{"mean": {name: tensor}, "count": n}`` or None) with ``model``'s current parameters
    added to the running mean: ``mean += (p - mean) / (n + 1)``, on the CPU in float32."""
    count = swa["count"] if swa else 0
    mean = {}
    for name, p in model.named_parameters():
        value = p.detach().to("cpu", torch.float32)
        mean[name] = value.clone() if swa is None else swa["mean"][name] + (value - swa["mean"][name]) / (count + 1)
    return {"mean": mean, "count": count + 1}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, images: torch.Tensor, device: str, seed: int, batch_size: int = 500,
                        mode: str = "crop-flip") -> None:
    """Re-estimate every batch norm's running mean and variance of ``model`` as plain averages over
    ``images`` (uint8 NCHW training images, augmented by ``mode`` as in training, seeded); the
    averaged weights of SWA need statistics of their own."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(images), batch_size):
        model(to_model_input(augment(images[i:i + batch_size], mode, gen), device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def _load_swa(model: nn.Module, swa: dict, data: _Data, cfg: TrainConfig) -> float:
    """Put the SWA mean into ``model``, re-estimate its batch norms, and return its test accuracy."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(swa["mean"][name].to(p.device))
    recompute_batchnorm(model, data.train_x, cfg.device, cfg.seed + 7, mode=cfg.augment)
    return evaluate(model, data.test_x, data.test_y, cfg.device)


def _save_weights(phase: str, model: nn.Module, out: Path, stem: str) -> None:
    """``<stem>.pt`` (state_dict); for QAT also ``<stem>.qgraph.json`` (the exported integers)."""
    save_atomic(_cpu_state(model), out / f"{stem}.pt")
    if phase == "qat":
        from imcflow.train.qat_glue import save_qgraph

        save_qgraph(model, out / f"{stem}.qgraph.json")


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def _build_model(phase: str, cfg: TrainConfig, float_state: dict | None, data: _Data) -> nn.Module:
    from imcflow.train.qat_glue import calibration_batch, to_qat  # QAT modules of imcflow.quant

    if is_onnx_model(cfg.model):  # QAT only (checked): the file holds the float weights
        return to_qat(Path(cfg.model), cfg, calibration_batch(data.train_x, cfg.seed))
    model = get_model(cfg.model)
    if float_state is not None:
        try:
            model.load_state_dict(float_state)
        except RuntimeError as exc:
            raise TrainError(f"float weights do not match {cfg.model}: {str(exc).splitlines()[0]}") from exc
    if phase == "float":
        return model
    return to_qat(model, cfg, calibration_batch(data.train_x, cfg.seed))


def _optimizer(model: nn.Module, cfg: TrainConfig, phase: str) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    lr = cfg.lr_float if phase == "float" else cfg.lr_qat
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)


def _scheduler(opt, cfg: TrainConfig, phase: str, steps: int):
    total = max(1, cfg.epochs(phase) * steps)
    if phase == "float" and (total < 4 or cfg.swa):  # SWA, or too short for a warm-up and a decay: constant rate
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if phase == "float":  # warm-up over 25 % of the steps (at least 2), then cosine decay
        pct = min(0.5, max(0.25, 2.0 / total))
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr_float, total_steps=total, pct_start=pct,
                                                   div_factor=10.0, final_div_factor=100.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=cfg.lr_qat * 0.01)


def _epoch(phase, epoch, cfg, model, opt, sched, gen, data, steps, on_batch, teachers=None) -> EpochRecord:
    model.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(data.train_y), generator=gen)
    bs = min(cfg.batch_size, len(perm))
    loss_sum, correct, seen = 0.0, 0, 0
    autocast = torch.autocast(cfg.device, dtype=torch.bfloat16) if (cfg.bf16 and phase == "float") \
        else contextlib.nullcontext()
    for step in range(steps):
        idx = perm[step * bs:(step + 1) * bs]
        x = to_model_input(cutout(augment(data.train_x[idx], cfg.augment, gen), cfg.cutout_px, gen), cfg.device)
        y = data.train_y[idx].to(cfg.device)
        soft = teachers.probs(x, cfg.distill_temp) if teachers is not None else None
        with autocast:
            logits = model(x)
            if soft is None:
                loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            else:
                loss = distill_loss(logits, y, soft, cfg.distill_weight, cfg.distill_temp, cfg.label_smoothing)
        if not math.isfinite(loss.item()):
            raise TrainError(f"{phase} epoch {epoch + 1} step {step + 1}: loss is {loss.item()}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if on_batch:
            on_batch(phase, epoch + 1, step + 1, steps, loss.item())
    train_s = time.perf_counter() - t0
    # bf16 runs evaluate in bf16 too (half the time) except after the phase's last epoch (float32)
    last = epoch + 1 == cfg.epochs(phase)
    test_acc = evaluate(model, data.test_x, data.test_y, cfg.device, bf16=cfg.bf16 and phase == "float" and not last)
    return EpochRecord(phase=phase, epoch=epoch + 1, epochs=cfg.epochs(phase), loss=loss_sum / seen,
                       train_acc=correct / seen, test_acc=test_acc, images_per_s=seen / train_s,
                       lr=sched.get_last_lr()[0], seconds=time.perf_counter() - t0,
                       adc=getattr(model, "adc", "") if phase == "qat" else "")


@torch.no_grad()  # not inference_mode: worker threads of cima.conv do not inherit it
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str = "cpu",
             batch_size: int = 500, bf16: bool = False) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on uint8 NCHW ``images``, in float32 (or bf16 autocast)."""
    model.eval()
    correct = 0
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for i in range(0, len(labels), batch_size):
        with autocast:
            logits = model(to_model_input(images[i:i + batch_size], device))
        correct += int((logits.argmax(1).cpu() == labels[i:i + batch_size]).sum())
    return correct / max(1, len(labels))
