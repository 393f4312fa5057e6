"""Training checkpoints: one dict, written atomically (temporary file, then ``os.replace``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from imcflow.errors import ImcflowError

FORMAT = "imcflow-train-checkpoint/1"


class TrainError(ImcflowError, ValueError):
    """Training cannot start or resume: bad checkpoint, inconsistent options, missing QAT support."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` so that a reader never sees half a file, even after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by the training loop; TrainError if it is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a bad file
        raise TrainError(f"{path} is not a readable checkpoint ({exc}); delete it or pass another --resume-from") from exc
    if not isinstance(ckpt, dict):
        raise TrainError(f"{path} holds a {type(ckpt).__name__}, not a training checkpoint or state_dict")
    return ckpt


def is_full_checkpoint(ckpt: dict) -> bool:
    """True for a checkpoint of the training loop, False for a bare ``state_dict``."""
    return ckpt.get("format") == FORMAT


def float_weights(path: Path, option: str) -> dict:
    """The float state_dict in ``path``: a bare state_dict, or a checkpoint's float weights (its
    finished float phase, or the float phase it holds); TrainError naming ``option`` if there are none."""
    ckpt = load_checkpoint(path)
    if not is_full_checkpoint(ckpt):
        return ckpt.get("model", ckpt)
    state = ckpt.get("float_model") or (ckpt["model"] if ckpt["phase"] == "float" else None)
    if state is None:
        raise TrainError(f"{option} {path}: the checkpoint holds no float weights")
    return state
