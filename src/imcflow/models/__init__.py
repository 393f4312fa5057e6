"""The model zoo: network definitions as ``torch.nn.Module`` builders, by name.

``get_model(name)`` returns a fresh (untrained) module; ``ZOO`` lists every name with the module
that builds it. Trained weights shipped with the package live in ``models/weights/``.
"""

from __future__ import annotations

import importlib
from typing import Any

from imcflow.errors import ModelError

# name -> (module, builder function, input shape C,H,W)
ZOO: dict[str, tuple[str, str, tuple[int, int, int]]] = {
    "cifar10-cnn11": ("imcflow.models.cnn11", "cnn11", (3, 32, 32)),
    "cifar10-cnn11-np3": ("imcflow.models.cnn11", "cnn11_np3", (3, 32, 32)),
    "cifar10-cnn11-np3c64": ("imcflow.models.cnn11", "cnn11_np3c64", (3, 32, 32)),
    "cifar10-cnn11-c32": ("imcflow.models.cnn11", "cnn11_c32", (3, 32, 32)),
    "cifar10-cnn11-c64": ("imcflow.models.cnn11", "cnn11_c64", (3, 32, 32)),
    "cifar10-cnn11-res": ("imcflow.models.cnn11", "cnn11_res", (3, 32, 32)),
    "cifar10-cnn11-r16": ("imcflow.models.cnn11", "cnn11_r16", (3, 32, 32)),
    "cifar10-cnn11-r16c64": ("imcflow.models.cnn11", "cnn11_r16c64", (3, 32, 32)),
    "cifar10-cnn11-r16w": ("imcflow.models.cnn11", "cnn11_r16w", (3, 32, 32)),
    "resnet50": ("imcflow.models.resnet", "resnet50", (3, 224, 224)),
    "resnet18": ("imcflow.models.resnet", "resnet18", (3, 224, 224)),
    "mlp-tiny": ("imcflow.models.small", "mlp_tiny", (1, 8, 8)),
    "cnn-tiny": ("imcflow.models.small", "cnn_tiny", (3, 8, 8)),
    "resnet-tiny": ("imcflow.models.small", "resnet_tiny", (3, 8, 8)),
}


def get_model(name: str, **kwargs: Any):
    """A fresh ``torch.nn.Module`` for zoo model ``name``."""
    if name not in ZOO:
        raise ModelError(f"unknown zoo model {name!r}: choose one of {', '.join(sorted(ZOO))}, or give an .onnx file")
    module, fn, _ = ZOO[name]
    return getattr(importlib.import_module(module), fn)(**kwargs)


def input_shape(name: str) -> tuple[int, int, int]:
    """Input shape (C, H, W) of zoo model ``name``."""
    if name not in ZOO:
        raise ModelError(f"unknown zoo model {name!r}: choose one of {', '.join(sorted(ZOO))}")
    return ZOO[name][2]
