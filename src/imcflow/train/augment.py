"""Batched data augmentation on uint8 NCHW tensors: random crop with zero padding, horizontal flip.

Done in torch on whole batches (no PIL per image): an index gather picks each image's crop window.
"""

from __future__ import annotations

import torch


def random_crop_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``images`` (uint8 N, C, H, W) shifted by a random crop of its ``pad``-px zero-padded
    copy, then mirrored left-right with probability 1/2. Draws from ``generator`` only."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]                          # (n, h)
    cols = torch.arange(w)[None, :].expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]    # (n, w), mirrored when flipped
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(c)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip_reference(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Slow per-image version of :func:`random_crop_flip` (same draws, same result): the spec."""
    n, _, h, w = images.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i in range(n):
        canvas = torch.zeros(images.shape[1], h + 2 * pad, w + 2 * pad, dtype=images.dtype)
        canvas[:, pad:pad + h, pad:pad + w] = images[i]
        crop = canvas[:, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out[i] = crop.flip(2) if flip[i] else crop
    return out
