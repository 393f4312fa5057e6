"""Knowledge distillation: train against the averaged soft predictions of frozen teacher networks.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (2015): the loss is

    (1 - w) * CE(student, labels)  +  w * T^2 * KL(p_teacher(T) || p_student(T))

where ``p(T)`` is the softmax of the logits divided by the temperature ``T`` and ``p_teacher`` is the
mean of the teachers' softened probabilities (an ensemble). The teachers see exactly the augmented
batch the student sees, and are evaluated in eval mode without gradients. Used in both training
phases: in QAT it pulls the chip-arithmetic network toward the float ensemble.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from imcflow.models import ZOO, get_model, input_shape
from imcflow.train.checkpoint import TrainError, float_weights


class Teachers:
    """Frozen float networks whose averaged softened probabilities guide training.

    Each of ``paths`` is a float state_dict of the student's zoo ``model``, or ``ZOO_NAME=PATH`` for a
    teacher of another zoo topology with the same input shape (for example a ``cifar10-cnn11-c32``
    teacher for a ``cifar10-cnn11-c64`` student)."""

    def __init__(self, model: str, paths: tuple[str, ...], device: str = "cpu", bf16: bool = False) -> None:
        if not paths:
            raise TrainError("distillation needs at least one teacher (--distill-from PATH ...)")
        self.nets = [_load_teacher(model, Path(p)).to(device).to(memory_format=torch.channels_last) for p in paths]
        self._autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    @torch.no_grad()
    def probs(self, x: torch.Tensor, temp: float) -> torch.Tensor:
        """Mean over the teachers of softmax(logits / temp) for model input ``x``: (N, classes) float32."""
        total = None
        for net in self.nets:
            with self._autocast():
                logits = net(x)
            p = torch.softmax(logits.float() / temp, dim=1)
            total = p if total is None else total + p
        return total / len(self.nets)


def teacher_spec(student: str, spec: str) -> tuple[str, Path]:
    """(zoo model, path) of a ``--distill-from`` entry: ``PATH`` (the student's topology) or ``ZOO_NAME=PATH``."""
    name, sep, rest = spec.partition("=")
    if not sep or Path(spec).is_file():
        return student, Path(spec)
    if name not in ZOO:
        raise TrainError(f"--distill-from {spec}: {name!r} is not a zoo model (choose one of {', '.join(sorted(ZOO))}); "
                         f"write ZOO_NAME=PATH, or PATH alone for a teacher of the student's own topology")
    if student in ZOO and input_shape(name) != input_shape(student):
        raise TrainError(f"--distill-from {spec}: {name} takes {input_shape(name)} inputs, the student {student} "
                         f"{input_shape(student)}; a teacher must see the student's images")
    return name, Path(rest)


def _load_teacher(student: str, spec: Path) -> nn.Module:
    model, path = teacher_spec(student, str(spec))
    if not path.is_file():
        raise TrainError(f"--distill-from {path}: no such file")
    state = float_weights(path, "--distill-from")
    net = get_model(model)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainError(f"--distill-from {path}: not a {model} float state_dict ({str(exc).splitlines()[0]})") from exc
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def distill_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_probs: torch.Tensor, weight: float,
                 temp: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - weight) * CE(logits, labels) + weight * temp^2 * KL(teacher_probs || softmax(logits / temp))``.

    The KL term is averaged over the batch; ``temp^2`` keeps its gradient scale independent of ``temp``.
    """
    logits = logits.float()
    ce = nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if weight == 0.0:
        return ce
    log_student = torch.log_softmax(logits / temp, dim=1)
    log_teacher = torch.log(teacher_probs.clamp_min(1e-12))
    kl = (teacher_probs * (log_teacher - log_student)).sum(dim=1).mean()
    return (1.0 - weight) * ce + weight * temp * temp * kl
