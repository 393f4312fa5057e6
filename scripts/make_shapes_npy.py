"""A procedurally generated dataset in imcflow's .npy format, and a float network for it, to try
``imcflow train NET.onnx --data DIR`` without downloading anything.

``python scripts/make_shapes_npy.py OUT`` writes ``OUT/{train,test}_{x,y}.npy``: 16 x 16 grayscale
uint8 images (N, H, W, 1) of one of 4 shapes (horizontal bar, vertical bar, square outline, cross) at a
random place and brightness over noise; and ``OUT/shapes.onnx``: a small CNN trained in float for a few
epochs on them (pixel / 255 inputs), the starting point of the QAT.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIDE, CLASSES = 16, 4


def shapes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 60, (n, SIDE, SIDE)).astype(np.int64)
    for i, cls in enumerate(y):
        r, c, v = rng.integers(2, 8), rng.integers(2, 8), rng.integers(120, 196)
        patch = np.zeros((7, 7), bool)
        if cls == 0:
            patch[3, :] = True
        elif cls == 1:
            patch[:, 3] = True
        elif cls == 2:
            patch[[0, -1], :] = patch[:, [0, -1]] = True
        else:
            patch[3, :] = patch[:, 3] = True
        x[i, r:r + 7, c:c + 7] += patch * v
    return np.clip(x, 0, 255).astype(np.uint8)[..., None], y


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 2000), ("test", 500)):
        x, y = shapes(n, rng)
        np.save(out / f"{split}_x.npy", x)
        np.save(out / f"{split}_y.npy", y)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, CLASSES))
    x = torch.from_numpy(np.load(out / "train_x.npy")).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(np.load(out / "train_y.npy"))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(5):
        for i in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    net.eval()
    tx = torch.from_numpy(np.load(out / "test_x.npy")).permute(0, 3, 1, 2).float() / 255
    acc = (net(tx).argmax(1).numpy() == np.load(out / "test_y.npy")).mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, x[:1], str(out / "shapes.onnx"), dynamo=False)
    print(f"wrote {out}: 2000 train, 500 test 16x16 grayscale images, 4 classes; shapes.onnx float test acc "
          f"{100 * acc:.2f} %")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
