"""How cifar10-cnn11's topology moves the chip's figures: variants compiled and simulated on jssc2022.

    python benchmarks/cnn11_variants.py              # cnn11 and variants of it
    python benchmarks/cnn11_variants.py --resnets    # also CIFAR ResNet-20 and -32 (He et al. 2016)

The paper does not publish its 11-layer CIFAR-10 network, so the CIFAR-10 img/s the simulator
gives depends on the topology imcflow assumes. This prints, for cnn11 and variants of it that keep
the same 16 arrays in one weight phase, the compiler's mapping (copies of the first layers, cell
use), the event simulation's img/s and img/s/W, and their ratios to the published 7,815 img/s and
51.5 k img/s/W and to cnn11. Weights are random (seed 0): timing and energy do not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from imcflow import pipeline
from imcflow.config.presets import JSSC2022
from imcflow.models import get_model
from imcflow.models.cnn11 import LAYERS, LAYERS_NP3, LAYERS_NP3C64, cnn11
from imcflow.report.flow import compile_program, simulate_report
from imcflow.report.reproduce import PUBLISHED


def _late_pool(layers):
    """The third max pool after c7 instead of c6 (c6 and c7 at 8x8, not 4x4)."""
    return tuple((n, i, o, k, {"c6": None, "c7": "max"}.get(n, p)) for n, i, o, k, p in layers)


def _wide_c1(layers, width: int = 64):
    """c1 with ``width`` output channels (and c2's input to match)."""
    return tuple((n, i if n != "c2" else width, o if n != "c1" else width, k, p) for n, i, o, k, p in layers)


VARIANTS = {
    "cnn11 (shipped)": LAYERS,
    "late pool (c7)": _late_pool(LAYERS),
    "c1 64 channels": _wide_c1(LAYERS),
    "late pool + c1 64 ch": _wide_c1(_late_pool(LAYERS)),
    "no third pool (np3)": LAYERS_NP3,
    "np3 + c1 64 ch": LAYERS_NP3C64,
}
# Residual variants (zoo names; docs/cnn11.md, "Eighth session"): built by the zoo, not from LAYERS rows.
RESIDUAL = ("cifar10-cnn11-res", "cifar10-cnn11-r16", "cifar10-cnn11-r16c64", "cifar10-cnn11-r16w")


class _Basic(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity or 1x1-conv shortcut, ReLU after the add."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.c2, self.b2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class CifarResNet(nn.Module):
    """He et al. 2016's CIFAR ResNet-(6n+2): 16/32/64 channels, n blocks per stage, global average pool."""

    def __init__(self, n: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for b in range(n):
                blocks.append(_Basic(c_in, c_out, 2 if stage and not b else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def measure(layers) -> dict:
    """Compile a random-weight network (cnn11 with ``layers``, or a module) for jssc2022 and simulate it."""
    torch.manual_seed(0)
    net = (cnn11(layers=layers) if isinstance(layers, tuple) else layers).eval()
    q = pipeline.load_qgraph(net, JSSC2022, input_shape=(3, 32, 32))
    prog = compile_program(q, JSSC2022)
    r = simulate_report(prog)
    copies = {c.layer: c.n_copies for ph in prog.phases for c in ph.copies if c.copy == 0}
    weights = sum(p.numel() for p in net.parameters() if p.dim() > 1)
    first = {k.removeprefix("convs."): v for k, v in copies.items()}  # ResCnn11 names its layers convs.*
    return {"img_s": r.throughput_img_s, "img_s_w": r.img_per_s_per_w, "phases": len(prog.phases),
            "copies": (f"c1 x{first['c1.0']}, c2 x{first.get('c2.0', 1)}" if "c1.0" in first
                       else f"at most x{max(copies.values())}"), "weights": weights}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resnets", action="store_true", help="also CIFAR ResNet-20 and ResNet-32")
    args = ap.parse_args()
    t0 = time.perf_counter()
    nets = dict(VARIANTS)
    for name in RESIDUAL:
        torch.manual_seed(0)
        nets[name.removeprefix("cifar10-cnn11-") + " (residual)"] = get_model(name)
    if args.resnets:
        nets |= {"ResNet-20 (CIFAR)": CifarResNet(3), "ResNet-32 (CIFAR)": CifarResNet(5)}
    rows = {name: measure(layers) for name, layers in nets.items()}
    base = rows["cnn11 (shipped)"]
    print(f"{'variant':22} {'weights':>9} {'ph':>2} {'copies':>12} {'img/s':>8} {'/7815':>6} {'/cnn11':>6} "
          f"{'img/s/W':>8} {'/51.5k':>6} {'/cnn11':>6}")
    for name, r in rows.items():
        print(f"{name:22} {r['weights']:9,} {r['phases']:2} {r['copies']:>12} {r['img_s']:8,.0f} "
              f"{r['img_s'] / PUBLISHED['cifar10_img_s']:6.3f} {r['img_s'] / base['img_s']:6.3f} "
              f"{r['img_s_w']:8,.0f} {r['img_s_w'] / PUBLISHED['cifar10_img_s_w']:6.3f} "
              f"{r['img_s_w'] / base['img_s_w']:6.3f}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
