"""Dataset loaders. ``load_cifar10(root, split)`` reads CIFAR-10 (pickle batches or image folders), cached;
``load_image_split(root, split, shape, classes)`` reads CIFAR-10 or a user's four ``.npy`` files
(:mod:`imcflow.data.npy`) for a network, as uint8 NCHW images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imcflow.data.cifar10 import CLASSES, default_cache_dir, load_cifar10
from imcflow.data.npy import FILES as NPY_FILES
from imcflow.data.npy import is_npy_dataset, load_npy
from imcflow.errors import DataError

__all__ = ["CIFAR10_SHAPE", "CLASSES", "default_cache_dir", "load_cifar10", "load_image_split"]

CIFAR10_SHAPE = (3, 32, 32)


def load_image_split(root: str | os.PathLike, split: str, shape: tuple[int, ...], classes: int,
                     cache_dir: str | os.PathLike | None = None, network: str = "the network"
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """``split`` ("train" or "test") of the images in ``root`` for ``network`` of input ``shape``
    (C, H, W) and ``classes`` outputs: uint8 images (N, C, H, W), int64 labels (N,) and the data
    set's name ("CIFAR-10", or "<folder> (.npy)"). ``root`` holding any of the four ``.npy`` files is
    read as a user's dataset, else as CIFAR-10, which a network of another input shape or fewer
    outputs is refused (DataError naming the ``.npy`` format)."""
    if is_npy_dataset(root):
        return (*load_npy(root, split, tuple(shape), classes), f"{Path(root).name} (.npy)")
    if tuple(shape) != CIFAR10_SHAPE or classes < len(CLASSES):
        raise DataError(f"{root} is read as CIFAR-10 ({CIFAR10_SHAPE} images, {len(CLASSES)} classes), but "
                        f"{network} takes {tuple(shape)} inputs and gives {classes} outputs: give a network for "
                        f"CIFAR-10, or a folder with {', '.join(NPY_FILES)} for this network")
    x, y = load_cifar10(root, split, cache_dir)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y.astype(np.int64), "CIFAR-10"
