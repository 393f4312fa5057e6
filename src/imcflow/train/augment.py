"""Batched data augmentation on uint8 NCHW tensors: random crop with zero padding, horizontal flip.

Done in torch on whole batches (no PIL per image): an index gather picks each image's crop window.
``augment(images, mode, generator)`` applies one of :data:`AUGMENTS`: "crop-flip" (CIFAR-10's), "crop"
(no mirroring: for digits, text and signs, which a flip changes) or "none".
"""

from __future__ import annotations

import torch

AUGMENTS: tuple[str, ...] = ("crop-flip", "crop", "none")


def crop_pad(h: int, w: int) -> int:
    """Zero padding of the random crop: 1/8 of the shorter side (4 px for CIFAR-10's 32 x 32), at least 1."""
    return max(1, round(min(h, w) / 8))


def augment(images: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """``images`` (uint8 N, C, H, W) augmented by ``mode`` (one of :data:`AUGMENTS`); "none" draws nothing."""
    if mode == "none":
        return images
    return random_crop_flip(images, crop_pad(*images.shape[2:]), generator, flip=mode == "crop-flip")


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Each image of ``images`` (uint8 N, C, H, W) shifted by a random crop of its ``pad``-px zero-padded
    copy, then (``flip``) mirrored left-right with probability 1/2. Draws from ``generator`` only."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    rows = dy[:, None] + torch.arange(h)[None, :]                          # (n, h)
    cols = torch.arange(w)[None, :].expand(n, w)
    cols = torch.where(mirror[:, None], cols.flip(1), cols) + dx[:, None]    # (n, w), mirrored when flipped
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(c)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip_reference(images: torch.Tensor, pad: int, generator: torch.Generator,
                               flip: bool = True) -> torch.Tensor:
    """Slow per-image version of :func:`random_crop_flip` (same draws, same result): the spec."""
    n, _, h, w = images.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5 if flip else [False] * n
    out = torch.empty_like(images)
    for i in range(n):
        canvas = torch.zeros(images.shape[1], h + 2 * pad, w + 2 * pad, dtype=images.dtype)
        canvas[:, pad:pad + h, pad:pad + w] = images[i]
        crop = canvas[:, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = crop.flip(2) if mirror[i] else crop
    return out


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries and Taylor, 2017): each image of ``images`` (uint8 N, C, H, W) with a
    ``size`` x ``size`` square set to 0, centred on a uniformly drawn pixel (clipped at the borders).
    Draws from ``generator`` only; ``size`` 0 returns ``images`` unchanged."""
    if size <= 0:
        return images
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + size)[:, None])               # (n, h)
    in_x = (xs >= x0[:, None]) & (xs < (x0 + size)[:, None])               # (n, w)
    keep = ~(in_y[:, :, None] & in_x[:, None, :])                          # (n, h, w)
    return images * keep[:, None].to(images.dtype)


def cutout_reference(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Slow per-image version of :func:`cutout` (same draws, same result)."""
    if size <= 0:
        return images
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    out = images.clone()
    for i in range(n):
        y0, x0 = int(cy[i]) - size // 2, int(cx[i]) - size // 2
        out[i, :, max(0, y0):max(0, y0 + size), max(0, x0):max(0, x0 + size)] = 0
    return out
