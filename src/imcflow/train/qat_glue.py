"""The QAT phase's network: the float model turned into the quantiser's :class:`imcflow.quant.qat.QatNet`.

The QatNet's forward pass is the chip's arithmetic (BN folded into the convolutions, 4-b per-channel
weights, 4-b activations with learned step sizes, 8-b unsigned pixels into the first layer, BPBS
MVMs with the ADC's rounding and clipping at the compiler's full scale; straight-through gradients).
Its activation step sizes start from a calibration on a fixed, seeded batch of training images, so a
resumed QAT run rebuilds exactly the same network before loading its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from imcflow.models import input_shape

CALIB_IMAGES = 256


def calibration_batch(train_x: torch.Tensor, seed: int, n: int = CALIB_IMAGES) -> np.ndarray:
    """``n`` training images (a seeded choice), as float32 pixel/255 NCHW: the QAT calibration batch."""
    idx = np.sort(np.random.default_rng(seed + 12345).permutation(len(train_x))[:n])
    return train_x[torch.from_numpy(idx)].numpy().astype(np.float32) / 255.0


def to_qat(model: nn.Module | Path, cfg, calib: np.ndarray) -> nn.Module:
    """The QAT network of float ``model`` (a module, or an ONNX file) for ``cfg`` (chip preset, bits),
    calibrated on ``calib``."""
    from imcflow.pipeline import prepare_qat  # frontend (fold BN) + quant.qat

    if isinstance(model, nn.Module):
        model, shape = model.eval(), input_shape(cfg.model)
    else:
        shape = None  # from the file
    return prepare_qat(model, shape, cfg.chip, w_bits=cfg.w_bits, a_bits=cfg.x_bits,
                       first_in_bits=cfg.first_x_bits, calib=calib, input_scale=1 / 255, seed=cfg.seed,
                       adc_full_scale=cfg.adc_full_scale)


def save_qgraph(net: nn.Module, path: Path) -> None:
    """Export ``net``'s integers (:func:`imcflow.quant.qat.export_qgraph`) to ``path``, atomically."""
    from imcflow.quant.qat import export_qgraph

    tmp = path.with_name(path.name + ".tmp")
    export_qgraph(net).save(str(tmp))
    tmp.replace(path)


def int_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy of ``net``'s exported integers run bit-true (what the chip computes)."""
    net.set_mode("int")
    try:
        correct = 0
        with torch.no_grad():  # not inference_mode (see loop.evaluate)
            for i in range(0, len(labels), batch_size):
                logits = net(images[i:i + batch_size].float() / 255.0)
                correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    finally:
        net.set_mode("qat")
    return correct / max(1, len(labels))
