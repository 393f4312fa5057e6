"""``cifar10-cnn11``: imcflow's 11-weight-layer CIFAR-10 CNN, sized for the 16 arrays at 4 b.

The paper (Jia et al., JSSC 2022) reports 91.51 % on CIFAR-10 with an "11-layer CNN" at 4-b weights and
activations and 7815 img/s, but does not publish the topology. This one is imcflow's own, chosen for
throughput on 16 cores and accuracy (reasoning in docs/cnn11.md):

=====  ==========================================  ===========  =================
layer  op                                          output       weights
=====  ==========================================  ===========  =================
c1     conv3x3 3->32, BN, ReLU                     32x32x32     864
c2     conv3x3 32->64, BN, ReLU, maxpool 2         16x16x64     18,432
c3     conv3x3 64->128, BN, ReLU                   16x16x128    73,728
c4     conv3x3 128->128, BN, ReLU, maxpool 2       8x8x128      147,456
c5     conv3x3 128->128, BN, ReLU                  8x8x128      147,456
c6     conv3x3 128->128, BN, ReLU, maxpool 2       4x4x128      147,456
c7     conv3x3 128->128, BN, ReLU                  4x4x128      147,456
c8     conv3x3 128->128, BN, ReLU                  4x4x128      147,456
c9     conv1x1 128->128, BN, ReLU                  4x4x128      16,384
c10    conv1x1 128->128, BN, ReLU, global avgpool  128          16,384
fc     linear 128->10 (with bias)                  10           1,280
=====  ==========================================  ===========  =================

864,352 weights in all, below the 16 x 1152 x 64 = 1,179,648 a 4-b chip holds. The input is the raw
pixel scaled to [0, 1] (pixel / 255) with no mean/std normalisation: the chip's first layer takes the
8-b unsigned pixel integers directly, and the BN after c1 absorbs any normalisation.

The module is plain ``nn.Sequential`` of standard layers so that ``torch.fx`` traces it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from imcflow.errors import ModelError

NAME = "cifar10-cnn11"
NUM_CLASSES = 10
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / f"{NAME}.pt"
RECORD_FILE = WEIGHTS_DIR / f"{NAME}.json"

# (name, in_ch, out_ch, kernel, pool after) for c1..c10; "gap" = global average pool. The 32-channel
# front end that sessions 1-8 shipped (zoo ``cifar10-cnn11-c32``); the design-study variants below
# are built from these rows.
LAYERS_C32: tuple[tuple[str, int, int, int, str | None], ...] = (
    ("c1", 3, 32, 3, None),
    ("c2", 32, 64, 3, "max"),
    ("c3", 64, 128, 3, None),
    ("c4", 128, 128, 3, "max"),
    ("c5", 128, 128, 3, None),
    ("c6", 128, 128, 3, "max"),
    ("c7", 128, 128, 3, None),
    ("c8", 128, 128, 3, None),
    ("c9", 128, 128, 1, None),
    ("c10", 128, 128, 1, "gap"),
)
LAYERS = LAYERS_C32
"""The rows of the shipped ``cifar10-cnn11``."""


# Design-study variants (docs/cnn11.md, "Seventh session"): the same ten convolutions and weights per
# layer, spread differently. "np3": no third max pool, so c5..c10 run at 8x8 (the chip's bottleneck is
# the 32x32 layers, so this costs no throughput); "np3c64": that, with c1 at 64 channels.
LAYERS_NP3: tuple[tuple[str, int, int, int, str | None], ...] = tuple(
    (n, i, o, k, None if n == "c6" else p) for n, i, o, k, p in LAYERS_C32)
LAYERS_NP3C64: tuple[tuple[str, int, int, int, str | None], ...] = tuple(
    (n, 64 if n == "c2" else i, 64 if n == "c1" else o, k, p) for n, i, o, k, p in LAYERS_NP3)
# "c64" (docs/cnn11.md, "Ninth session"): cnn11 with c1 at 64 channels, the 64-channel 32x32 front end of
# chip.md's feasibility sketch.
LAYERS_C64: tuple[tuple[str, int, int, int, str | None], ...] = tuple(
    (n, 64 if n == "c2" else i, 64 if n == "c1" else o, k, p) for n, i, o, k, p in LAYERS_C32)

# Residual design study (docs/cnn11.md, "Eighth session"): the same kinds of layers, with ResNet basic-block
# shortcuts (He et al. 2016). Rows as above plus a role: "a" opens a block, "b" closes it: a "b" layer's
# BN output adds the input of the "a" layer before it, then ReLU, then the pool. 11 weight layers each.
RES_LAYERS: tuple[tuple[str, int, int, int, str | None, str | None], ...] = (
    ("c1", 3, 32, 3, None, None),
    ("c2", 32, 64, 3, "max", None),
    ("c3", 64, 128, 3, None, None),
    ("c4", 128, 128, 3, "max", None),
    ("c5", 128, 128, 3, None, "a"),
    ("c6", 128, 128, 3, "max", "b"),
    ("c7", 128, 128, 3, None, "a"),
    ("c8", 128, 128, 3, None, "b"),
    ("c9", 128, 128, 1, None, "a"),
    ("c10", 128, 128, 1, "gap", "b"),
)
# More layers at 16x16: c3 and a block c4-c5 there, a block at 8x8 and a 1x1 block at 4x4; ``c1`` and
# ``c2`` set the widths at 32x32. "r16": 864,352 weights as cnn11; "r16c64": c1 at 64 channels;
# "r16w": c1 64 and c2 128 channels.
def res16_layers(c1: int = 32, c2: int = 64) -> tuple[tuple[str, int, int, int, str | None, str | None], ...]:
    """Rows for :class:`ResCnn11` with ``c1`` and ``c2`` channels at 32x32 and shortcuts at 16, 8 and 4."""
    return (("c1", 3, c1, 3, None, None), ("c2", c1, c2, 3, "max", None), ("c3", c2, 128, 3, None, None),
            ("c4", 128, 128, 3, None, "a"), ("c5", 128, 128, 3, "max", "b"),
            ("c6", 128, 128, 3, None, "a"), ("c7", 128, 128, 3, None, "b"), ("c8", 128, 128, 3, "max", None),
            ("c9", 128, 128, 1, None, "a"), ("c10", 128, 128, 1, "gap", "b"))


def _pool(pool: str | None) -> list[nn.Module]:
    if pool == "max":
        return [nn.MaxPool2d(2)]
    if pool == "gap":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return []


class ResCnn11(nn.Module):
    """A cnn11-style network with basic-block shortcuts, from rows like :data:`RES_LAYERS`."""

    def __init__(self, layers: tuple, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.roles = tuple(row[5] for row in layers)
        self.convs = nn.ModuleDict({n: nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False),
                                                     nn.BatchNorm2d(o)) for n, i, o, k, _, _ in layers})
        self.pools = nn.ModuleDict({n: nn.Sequential(*_pool(p)) for n, _, _, _, p, _ in layers})
        self.relu = nn.ReLU()
        self.fc = nn.Linear(layers[-1][2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        for (name, conv), role in zip(self.convs.items(), self.roles):
            if role == "a":
                skip = x
            y = conv(x)
            x = self.pools[name](self.relu(y + skip if role == "b" else y))
        return self.fc(x)


def cnn11_res(num_classes: int = NUM_CLASSES) -> ResCnn11:
    """Design study: cnn11's layers with shortcuts around c5-c6, c7-c8 and c9-c10."""
    return ResCnn11(RES_LAYERS, num_classes)


def cnn11_r16(num_classes: int = NUM_CLASSES) -> ResCnn11:
    """Design study: three layers at 16x16 and shortcuts at 16x16, 8x8 and 4x4 (:func:`res16_layers`)."""
    return ResCnn11(res16_layers(), num_classes)


def cnn11_r16c64(num_classes: int = NUM_CLASSES) -> ResCnn11:
    """Design study: :func:`cnn11_r16` with c1 at 64 channels."""
    return ResCnn11(res16_layers(64, 64), num_classes)


def cnn11_r16w(num_classes: int = NUM_CLASSES) -> ResCnn11:
    """Design study: :func:`cnn11_r16` with c1 at 64 and c2 at 128 channels."""
    return ResCnn11(res16_layers(64, 128), num_classes)


def _block(in_ch: int, out_ch: int, kernel: int, pool: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=False),
    ]
    return nn.Sequential(*layers, *_pool(pool))


def cnn11(num_classes: int = NUM_CLASSES, layers: tuple = LAYERS) -> nn.Sequential:
    """A fresh (untrained) ``cifar10-cnn11``: input (N, 3, 32, 32) in [0, 1], output (N, num_classes) logits.

    ``layers`` (rows like :data:`LAYERS`) builds a variant of the topology, for design studies
    (``benchmarks/cnn11_variants.py``)."""
    blocks = [(name, _block(i, o, k, p)) for name, i, o, k, p in layers]
    return nn.Sequential(OrderedDict(blocks + [("fc", nn.Linear(layers[-1][2], num_classes))]))


def cnn11_np3(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """Design study: cnn11 without the third max pool (c5..c10 at 8x8)."""
    return cnn11(num_classes, LAYERS_NP3)


def cnn11_np3c64(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """Design study: :func:`cnn11_np3` with c1 at 64 channels."""
    return cnn11(num_classes, LAYERS_NP3C64)


def cnn11_c32(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """cnn11 with the 32-channel c1 of sessions 1-8 (:data:`LAYERS_C32`)."""
    return cnn11(num_classes, LAYERS_C32)


def cnn11_c64(num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """Design study: cnn11 with c1 at 64 channels (:data:`LAYERS_C64`)."""
    return cnn11(num_classes, LAYERS_C64)


def widen_outputs(state: dict[str, torch.Tensor], layer: str, next_layer: str, width: int,
                  noise: float = 0.0, seed: int = 0, fresh: bool = False) -> dict[str, torch.Tensor]:
    """A copy of a cnn11-style ``state`` with ``layer``'s conv widened to ``width`` output channels,
    computing the same function (Net2WiderNet, Chen et al. 2016).

    Channel ``j`` of the wider layer copies channel ``j % old`` (conv weights and its BatchNorm's
    parameters and statistics); ``next_layer``'s conv reads each copy with its weight divided by the
    number of copies. ``noise`` > 0 adds +-e (e ~ N(0, noise x the weight's std)) to the first and
    last copies' weights, which keeps their sum, so that training can move the copies apart.
    ``layer`` must be followed by BatchNorm, ReLU (and pooling) only, as in :func:`cnn11`.

    ``fresh=True`` keeps the function another way: the new channels get their own random filters
    (Kaiming-normal, seeded; BatchNorm weight 1, bias 0, statistics 0 and 1) and ``next_layer``
    reads them with weight 0, so no two channels start alike (copies, even with ``noise``, can stay
    twins through training). ``noise`` is then unused.
    """
    conv, bn, nxt = f"{layer}.0.weight", f"{layer}.1.", f"{next_layer}.0.weight"
    for key in (conv, nxt, bn + "weight"):
        if key not in state:
            raise ModelError(f"cannot widen {layer!r}: the state has no {key!r} (is it a cnn11-style network?)")
    old = state[conv].shape[0]
    if width < old:
        raise ModelError(f"cannot widen {layer!r} from {old} to {width} channels: the width must not shrink")
    if fresh:
        return _widen_fresh(state, conv, bn, nxt, width, seed)
    src = torch.arange(width) % old
    copies = torch.bincount(src, minlength=old).to(state[nxt].dtype)
    out = dict(state)
    out[conv] = state[conv][src].clone()
    for name in ("weight", "bias", "running_mean", "running_var"):
        out[bn + name] = state[bn + name][src].clone()
    w_next = (state[nxt] / copies.view(1, -1, 1, 1))[:, src].clone()
    if noise > 0:
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(w_next.shape, generator=gen, dtype=w_next.dtype) * noise * float(state[nxt].std())
        for j in range(old, width):  # copy j of channel src[j]: +eps on it, -eps on the first copy
            w_next[:, j] += eps[:, j]
            w_next[:, src[j]] -= eps[:, j]
    out[nxt] = w_next
    return out


def _widen_fresh(state: dict[str, torch.Tensor], conv: str, bn: str, nxt: str, width: int,
                 seed: int) -> dict[str, torch.Tensor]:
    """:func:`widen_outputs` with new, randomly initialised channels that the next layer reads with weight 0."""
    old, cin, kh, kw = state[conv].shape
    gen = torch.Generator().manual_seed(seed)
    std = (2.0 / (cin * kh * kw)) ** 0.5  # Kaiming-normal, fan-in, for a ReLU
    new_w = torch.randn((width - old, cin, kh, kw), generator=gen, dtype=state[conv].dtype) * std
    fills = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
    out = dict(state)
    out[conv] = torch.cat([state[conv], new_w])
    for name, value in fills.items():
        out[bn + name] = torch.cat([state[bn + name], torch.full((width - old,), value, dtype=state[bn + name].dtype)])
    w_next = state[nxt]
    out[nxt] = torch.cat([w_next, w_next.new_zeros((w_next.shape[0], width - old) + tuple(w_next.shape[2:]))], dim=1)
    return out


def load_trained(weights: str | Path | None = None) -> nn.Sequential:
    """``cifar10-cnn11`` with the shipped trained weights (``models/weights/cifar10-cnn11.pt``), in eval mode.

    Raises ModelError if the weights file is absent or does not match the topology.
    """
    path = Path(weights) if weights is not None else WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"trained weights for {NAME} not found at {path}: train them with "
                         f"'imcflow train {NAME} --data ../shared/data/cifar10 --out runs/cnn11' (see docs/cnn11.md)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ModelError(f"{path} is not a readable torch state_dict ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a full training checkpoint
    model = cnn11()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not match the {NAME} topology: {str(exc).splitlines()[0]}") from exc
    return model.eval()


def trained_record() -> dict:
    """The JSON record shipped with the weights (command, epochs, seed, data, accuracies, date)."""
    if not RECORD_FILE.is_file():
        raise ModelError(f"no training record for {NAME} at {RECORD_FILE}; train the model first (docs/cnn11.md)")
    return json.loads(RECORD_FILE.read_text())
