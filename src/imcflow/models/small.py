"""Tiny networks (8x8 inputs) for fast tests of every stage of the flow."""

from __future__ import annotations

import torch
from torch import nn


class MlpTiny(nn.Module):
    """(1, 8, 8) -> flatten -> linear 64->32 -> ReLU -> linear 32->10."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(torch.flatten(x, 1))))


class CnnTiny(nn.Module):
    """(3, 8, 8): conv3x3 3->8 BN ReLU, conv3x3 8->16 BN ReLU, max pool 2, flatten, linear 256->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


class ResnetTiny(nn.Module):
    """(3, 8, 8): stem conv 3->8 BN ReLU; one basic residual block 8->8 (add + ReLU); two branches
    (1x1 conv 8->4 and 3x3 conv 8->4, each ReLU) concatenated along channels; global average
    pool; linear 8->10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.branch_a = nn.Conv2d(8, 4, 1)
        self.branch_b = nn.Conv2d(8, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem_bn(self.stem(x)))
        y = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(y)) + x)
        x = torch.cat([self.relu(self.branch_a(x)), self.relu(self.branch_b(x))], dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


def mlp_tiny() -> MlpTiny:
    """Two-layer perceptron on a (1, 8, 8) input, 10 classes."""
    return MlpTiny()


def cnn_tiny() -> CnnTiny:
    """Two convolutions, max pool and a classifier on a (3, 8, 8) input, 10 classes."""
    return CnnTiny()


def resnet_tiny() -> ResnetTiny:
    """A residual block and a channel concat on a (3, 8, 8) input, 10 classes."""
    return ResnetTiny()
