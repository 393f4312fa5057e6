"""A user's image dataset as four NumPy files: ``train_x.npy``, ``train_y.npy``, ``test_x.npy``, ``test_y.npy``.

Images are uint8 pixels, (N, H, W, C) or (N, C, H, W), or (N, H, W) for one channel; labels are
integers (N,) in [0, classes). The layout is read off the network's input shape (C, H, W): the array
must match it as NCHW or as NHWC; when it matches both (C == H == W) the layout cannot be told and the
file is refused. The network sees pixel / 255, as for CIFAR-10.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imcflow.errors import DataError

FILES: tuple[str, ...] = ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy")


def is_npy_dataset(root: str | os.PathLike) -> bool:
    """Whether folder ``root`` holds any of the four files (then it is read as this format, and all must be there)."""
    root = Path(root)
    return root.is_dir() and any((root / name).is_file() for name in FILES)


def load_npy(root: str | os.PathLike, split: str, shape: tuple[int, int, int],
             classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``split`` ("train" or "test") of the dataset in ``root`` for a network taking (C, H, W) = ``shape``
    inputs and giving ``classes`` outputs: images uint8 (N, C, H, W), labels int64 (N,). DataError
    naming the file, the problem and the fix on anything else."""
    root = Path(root)
    missing = [name for name in FILES if not (root / name).is_file()]
    if missing:
        raise DataError(f"{root} holds some but not all of {', '.join(FILES)}: {', '.join(missing)} missing; "
                        f"save every split's images and labels with np.save")
    x_path, y_path = root / f"{split}_x.npy", root / f"{split}_y.npy"
    images, labels = _read(x_path), _read(y_path)
    images = _to_nchw(images, shape, x_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{y_path}: labels are {labels.dtype} {labels.shape}; give integer class indices of "
                        f"shape (N,), e.g. y.astype(np.int64)")
    if len(labels) != len(images):
        raise DataError(f"{y_path} holds {len(labels)} labels for the {len(images)} images of {x_path}: "
                        f"give one label per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{y_path}: labels span {labels.min()}..{labels.max()}, the network has {classes} outputs: "
                        f"labels must be class indices in [0, {classes}); renumber them or give a network "
                        f"with more outputs")
    return images, labels.astype(np.int64)


def _read(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:  # a pickled object array or not an .npy file at all
        raise DataError(f"{path} is not a plain NumPy array ({exc}); write it with np.save(path, array)") from exc


def _to_nchw(images: np.ndarray, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    c, h, w = shape
    if images.dtype != np.uint8:
        hint = (" (e.g. (x * 255).round().astype(np.uint8) for values in [0, 1])"
                if np.issubdtype(images.dtype, np.floating) else "")
        raise DataError(f"{path}: images are {images.dtype}; give uint8 pixels 0..255{hint}: the network sees "
                        f"pixel / 255")
    if images.ndim == 3 and c == 1:
        images = images[:, None]  # (N, H, W) grayscale
    nchw, nhwc = images.shape[1:] == (c, h, w), images.shape[1:] == (h, w, c)
    if nchw and nhwc and c != 1:  # c == 1 == h == w: both readings are the same pixels
        raise DataError(f"{path}: images {images.shape} fit the network's (C, H, W) = {shape} both as NCHW and as "
                        f"NHWC, so the layout is ambiguous; this format cannot tell them apart")
    if not (nchw or nhwc):
        raise DataError(f"{path}: images have shape {images.shape}; the network takes (C, H, W) = {shape} inputs, "
                        f"so give (N, {h}, {w}, {c}) or (N, {c}, {h}, {w}) uint8 arrays (or resize the images, or "
                        f"give a network for this size)")
    return np.ascontiguousarray(images if nchw else images.transpose(0, 3, 1, 2))
