"""Export VGG-11 at 224 x 224 (ImageNet shape, random weights) to ONNX, for the partial-sum spill
measurement in docs/usage.md: ``python benchmarks/vgg11_224.py OUT.onnx [--gap]``.

Plain ``nn.Sequential``: 8 convolutions (64, 128, 256, 256, 512, 512, 512, 512; 3x3, ReLU) with
max pools, then Linear(25088, 4096), ReLU, Linear(4096, 4096), ReLU, Linear(4096, 1000). With
``--gap`` the classifier is global average pooling then Linear(512, 4096) ... (the variant that
fits without spilling)."""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn


def vgg11(gap: bool = False) -> nn.Sequential:
    """VGG-11 (configuration A) with random weights (seed 0)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c = 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 4096)] if gap else \
        [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096)]
    layers += head + [nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000)]
    return nn.Sequential(*layers).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="ONNX file to write")
    ap.add_argument("--gap", action="store_true", help="global average pooling before a 512-input classifier")
    args = ap.parse_args()
    with warnings.catch_warnings():  # the legacy exporter is fast on a 133 M-parameter network; it warns
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(vgg11(args.gap), (torch.zeros(1, 3, 224, 224),), args.out, dynamo=False, opset_version=17)


if __name__ == "__main__":
    main()
