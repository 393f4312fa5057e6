"""How much a widened cnn11 (``cifar10-cnn11-c64``) relies on its c1 channels: float test accuracy
with all 64 channels, with the first 32 only and with the last 32 only (the others silenced by
setting c2's weights on them to 0), and c2's mean |weight| on each half.

    python scripts/silence_channels.py WEIGHTS.pt [--images 10000] [--data ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse

import torch

from imcflow.data.cifar10 import load_cifar10
from imcflow.models.cnn11 import cnn11_c64


def accuracy(state: dict, x: torch.Tensor, y: torch.Tensor, silenced: slice | None) -> float:
    """Test accuracy of the c64 network ``state`` with c2's inputs ``silenced`` (None: none)."""
    s = dict(state)
    if silenced is not None:
        w = s["c2.0.weight"].clone()
        w[:, silenced] = 0
        s["c2.0.weight"] = w
    model = cnn11_c64()
    model.load_state_dict(s)
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--data", default="../shared/data/cifar10")
    args = ap.parse_args()
    state = torch.load(args.weights, weights_only=True, map_location="cpu")
    x, y = load_cifar10(args.data, "test")
    x = torch.from_numpy(x[:args.images].transpose(0, 3, 1, 2).copy()).float() / 255
    y = torch.from_numpy(y[:args.images].astype("int64"))
    for label, silenced in (("all 64 channels", None), ("channels 0-31 only", slice(32, 64)),
                            ("channels 32-63 only", slice(0, 32))):
        print(f"{label:20s} {100 * accuracy(state, x, y, silenced):6.2f} %")
    w2 = state["c2.0.weight"].abs()
    print(f"c2 mean |weight| on channels 0-31: {w2[:, :32].mean():.4f}, on 32-63: {w2[:, 32:].mean():.4f}")


if __name__ == "__main__":
    main()
