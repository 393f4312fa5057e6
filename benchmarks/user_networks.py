"""Networks users bring, written the ways they are usually written, through imcflow on jssc2022.

    python benchmarks/user_networks.py

For each network (random weights: timing and energy do not depend on them), in PyTorch and as an
ONNX file from the TorchScript exporter: whether it imports, how many layers and arrays the
normalised network needs, weight phases, and the event simulation's img/s and img/s/W at 32 x 32
(CIFAR-size) input (the 1-D keyword-spotting net: 40 MFCCs x 98 frames, inferences/s). A network the
chip cannot run prints the one-line error a user would see.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imcflow import pipeline
from imcflow.config.presets import JSSC2022
from imcflow.errors import ImcflowError
from imcflow.report.flow import compile_program, simulate_report


def _cbr(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Vgg(nn.Module):
    """VGG-style CIFAR net: conv-BN-ReLU stacks, max pools, a BatchNorm1d + dropout classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_cbr(3, 64), nn.MaxPool2d(2), *_cbr(64, 128), nn.MaxPool2d(2),
                                      *_cbr(128, 128), *_cbr(128, 128), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 16, 128), nn.BatchNorm1d(128), nn.ReLU(True),
                                        nn.Dropout(0.5), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class BlockA(nn.Module):
    """CIFAR ResNet basic block with the parameter-free option-A shortcut (subsample, zero channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.c2, self.b2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2 if stride != 1 else 0

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + short)


class ResNet20A(nn.Module):
    """He et al. 2016's CIFAR ResNet-20 with option-A shortcuts; the head pools with x.size()[3]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*_cbr(3, 16))
        blocks, c_in = [], 16
        for stage, c in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(BlockA(c_in, c, 2 if stage and not b else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = F.avg_pool2d(x, x.size()[3])
        return self.fc(x.view(x.size(0), -1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, ReLU6, linear 1x1 projection, residual add."""

    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                                  nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h),
                                  nn.ReLU6(inplace=True), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class MobileV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(*_cbr(3, 32, 2), InvertedResidual(32), InvertedResidual(32),
                                 nn.Conv2d(32, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                                 nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class DenseTiny(nn.Module):
    """DenseNet-style: pre-activation BN-ReLU-conv, features concatenated, a transition pool."""

    def __init__(self, growth: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(32 + k * growth), nn.ReLU(),
                                                  nn.Conv2d(32 + k * growth, growth, 3, padding=1)) for k in range(3))
        self.fc = nn.Linear(32 + 3 * growth, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(F.avg_pool2d(x, 2).mean((2, 3)))


class Normalised(nn.Module):
    """A plain CNN that normalises its own input ((x - mean) / std) and ends in a softmax."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1))
        self.body = nn.Sequential(*_cbr(3, 32), nn.MaxPool2d(2), *_cbr(32, 64), nn.MaxPool2d(2), *_cbr(64, 64),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


def _cba(c_in: int, c_out: int, k: int = 3, stride: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    """Conv-BN-activation, the detectors' basic block (default SiLU, as YOLOv5/v8)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         act if act is not None else nn.SiLU())


class YoloTiny(nn.Module):
    """YOLOv3-tiny's pattern at 64 x 64: conv-BN-LeakyReLU(0.1), max pools (the last one stride 1),
    a 1x1 route, nearest x2 upsampling concatenated with an earlier map, and a 1x1 detection head
    (3 anchors x (5 + 10 classes)) at 16 x 16. YOLOv3-tiny's stride-1 pool is 2x2 after
    ``ZeroPad2d((0, 1, 0, 1))``; zero padding before a max of LeakyReLU values (which can be
    negative) is refused by name, so this one is 3x3 with the max pool's own padding."""

    input_shape = (3, 64, 64)

    def __init__(self):
        super().__init__()
        leaky = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.b1 = nn.Sequential(_cba(3, 16, act=leaky()), nn.MaxPool2d(2), _cba(16, 32, act=leaky()), nn.MaxPool2d(2),
                                _cba(32, 64, act=leaky()))                                        # 16 x 16
        self.b2 = nn.Sequential(nn.MaxPool2d(2), _cba(64, 128, act=leaky()), nn.MaxPool2d(3, 1, 1), _cba(128, 64, 1, act=leaky()))                # 8 x 8
        self.lateral = _cba(64, 32, 1, act=leaky())
        self.head = nn.Sequential(_cba(32 + 64, 64, act=leaky()), nn.Conv2d(64, 45, 1))

    def forward(self, x):
        f16 = self.b1(x)
        up = F.interpolate(self.lateral(self.b2(f16)), scale_factor=2, mode="nearest")
        return self.head(torch.cat([up, f16], 1))


class C3(nn.Module):
    """YOLOv5's C3: two 1x1 branches, one through a residual bottleneck, concatenated, then 1x1."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2, self.cv3 = _cba(c, c // 2, 1), _cba(c, c // 2, 1), _cba(c, c, 1)
        self.m1, self.m2 = _cba(c // 2, c // 2, 1), _cba(c // 2, c // 2, 3)

    def forward(self, x):
        a = self.cv1(x)
        return self.cv3(torch.cat([a + self.m2(self.m1(a)), self.cv2(x)], 1))


class Sppf(nn.Module):
    """YOLOv5's SPPF: 1x1, three chained 5x5 stride-1 max pools, the four maps concatenated, 1x1."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = _cba(c, c // 2, 1), _cba(2 * c, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        a = self.cv1(x)
        b = self.pool(a)
        c = self.pool(b)
        return self.cv2(torch.cat([a, b, c, self.pool(c)], 1))


class YoloV5s(nn.Module):
    """YOLOv5-style backbone and head at 64 x 64, SiLU throughout: a 6x6 stride-2 stem, stride-2
    convs, C3 blocks, SPPF, and a 1x1 detection head (3 x (5 + 10)) at 8 x 8."""

    input_shape = (3, 64, 64)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 6, 2, 2, bias=False), nn.BatchNorm2d(16), nn.SiLU(),
                                 _cba(16, 32, 3, 2), C3(32), _cba(32, 64, 3, 2), C3(64), _cba(64, 128, 3, 2),
                                 C3(128), Sppf(128), nn.Conv2d(128, 45, 1))

    def forward(self, x):
        return self.net(x)


class GeluMlpMixerish(nn.Module):
    """GELU in a per-pixel MLP (1x1 convs, as ConvNeXt/MLP-Mixer channel MLPs), after a patchify stem."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 64, 4, 4), nn.BatchNorm2d(64), nn.Conv2d(64, 256, 1), nn.GELU(),
                                 nn.Conv2d(256, 64, 1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class TcBlock(nn.Module):
    """TC-ResNet residual block: two 9-tap temporal convs, a strided 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(c_in, c_out, 9, 2, 4, bias=False), nn.BatchNorm1d(c_out)
        self.c2, self.b2 = nn.Conv1d(c_out, c_out, 9, 1, 4, bias=False), nn.BatchNorm1d(c_out)
        self.short = nn.Sequential(nn.Conv1d(c_in, c_out, 1, 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU())

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class TcResNet8(nn.Module):
    """Choi et al. 2019's TC-ResNet8 for keyword spotting: 1-D convs over time, MFCCs as channels."""

    input_shape = (40, 98)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(40, 16, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(TcBlock(16, 24), TcBlock(24, 32), TcBlock(32, 48))
        self.fc = nn.Linear(48, 12)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool1d(self.blocks(self.stem(x)), 1).squeeze(-1))


class Fire(nn.Module):
    """SqueezeNet's fire module (Iandola et al. 2016): 1x1 squeeze, then 1x1 and 3x3 expands, concatenated."""

    def __init__(self, c_in: int, squeeze: int, expand: int):
        super().__init__()
        self.sq = nn.Conv2d(c_in, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.sq(x))
        return torch.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1's layers (Iandola et al. 2016) on 64 x 64 images, 10 classes: its max pools use
    ceil_mode=True (31 -> 15 -> 7 -> 3 here)."""

    input_shape = (3, 64, 64)

    def __init__(self, classes: int = 10):
        super().__init__()
        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), pool, Fire(64, 16, 64),
                                      Fire(128, 16, 64), pool, Fire(128, 32, 128), Fire(256, 32, 128), pool,
                                      Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle as users write it: group view, swap, view back."""
    b, c, h, w = x.size()
    return torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet V2 unit (Ma et al. 2018): stride 1 splits the channels and transforms one half;
    stride 2 transforms both (depthwise 3x3 strided); the halves are concatenated and shuffled."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        half = c_out // 2

        def dw(c):
            return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]
        self.stride = stride
        self.left = nn.Sequential(*dw(c_in), nn.Conv2d(c_in, half, 1, bias=False), nn.BatchNorm2d(half),
                                  nn.ReLU()) if stride > 1 else None
        branch_in = c_in if stride > 1 else half
        self.right = nn.Sequential(nn.Conv2d(branch_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                                   *dw(half), nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            return channel_shuffle(torch.cat((a, self.right(b)), 1), 2)
        return channel_shuffle(torch.cat((self.left(x), self.right(x)), 1), 2)


class ShuffleV2(nn.Module):
    """ShuffleNet V2 0.5x's stage widths (48, 96, 192) on CIFAR-sized images, one stride-2 and one
    stride-1 unit per stage."""

    def __init__(self):
        super().__init__()
        units, c = [], 24
        for width in (48, 96, 192):
            units += [ShuffleUnit(c, width, 2), ShuffleUnit(width, width, 1)]
            c = width
        self.net = nn.Sequential(*_cbr(3, 24), *units, nn.Conv2d(c, 256, 1, bias=False), nn.BatchNorm2d(256),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


class FpnSeg(nn.Module):
    """A small FPN-style segmentation network (Lin et al. 2017): a strided encoder, a top-down path of
    x2 upsampling (``mode`` 'nearest' or 'bilinear') added to 1x1 lateral projections, a per-pixel 1x1
    head (5 classes at 32 x 32)."""

    def __init__(self, classes: int = 5, mode: str = "nearest"):
        super().__init__()
        self.e1, self.e2, self.e3 = nn.Sequential(*_cbr(3, 32)), nn.Sequential(*_cbr(32, 64, 2)), \
            nn.Sequential(*_cbr(64, 128, 2))
        self.l1, self.l2, self.l3 = nn.Conv2d(32, 64, 1), nn.Conv2d(64, 64, 1), nn.Conv2d(128, 64, 1)
        self.up = nn.Upsample(scale_factor=2, mode=mode)   # bilinear: align_corners=False (the default)
        self.head = nn.Sequential(*_cbr(64, 64), nn.Conv2d(64, classes, 1))

    def forward(self, x):
        c1 = self.e1(x)
        c2 = self.e2(c1)
        p3 = self.l3(self.e3(c2))
        p2 = self.l2(c2) + self.up(p3)
        p1 = self.l1(c1) + self.up(p2)
        return self.head(p1)


class FpnSegBilinear(FpnSeg):
    """:class:`FpnSeg` with bilinear (``align_corners=False``) upsampling, as most FPN/DeepLab heads use."""

    def __init__(self, classes: int = 5):
        super().__init__(classes, mode="bilinear")


class Espcn(nn.Module):
    """ESPCN super-resolution (Shi et al. 2016) with ReLU for tanh: 5x5 and 3x3 convs at low
    resolution, then a conv to 3 * 3 * 3 channels and PixelShuffle(3): 32 x 32 in, 96 x 96 out."""

    def __init__(self, r: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(32, 3 * r * r, 3, padding=1), nn.PixelShuffle(r))

    def forward(self, x):
        return self.net(x)


class UNetTiny(nn.Module):
    """A two-level U-Net (Ronneberger et al. 2015): max-pool encoder, ConvTranspose2d(k=2, s=2)
    decoder with a concatenated skip, per-pixel 4-class head at 32 x 32."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.enc1, self.enc2 = nn.Sequential(*_cbr(3, 32), *_cbr(32, 32)), nn.Sequential(*_cbr(32, 64), *_cbr(64, 64))
        self.pool, self.up = nn.MaxPool2d(2), nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec = nn.Sequential(*_cbr(64, 32), nn.Conv2d(32, classes, 1))

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.dec(torch.cat([e1, F.relu(self.up(e2))], 1))


NETWORKS = {"VGG-style": Vgg, "ResNet-20, option A": ResNet20A, "MobileNetV2 blocks": MobileV2,
            "DenseNet-style": DenseTiny, "input normalisation + softmax": Normalised,
            "TC-ResNet8 (1-D, 40 x 98)": TcResNet8, "SqueezeNet 1.1 (64 x 64)": SqueezeNet11,
            "ShuffleNet V2 units": ShuffleV2, "FPN segmentation (upsampling)": FpnSeg,
            "FPN segmentation (bilinear)": FpnSegBilinear,
            "ESPCN x3 (PixelShuffle)": Espcn, "U-Net (ConvTranspose2d)": UNetTiny,
            "YOLOv3-tiny-style (LeakyReLU)": YoloTiny, "YOLOv5-style C3/SPPF (SiLU)": YoloV5s,
            "patchify + GELU channel MLP": GeluMlpMixerish}


def measure(source, shape: tuple[int, ...]) -> dict:
    """Import, compile and simulate ``source`` (a module or an ONNX path) on jssc2022."""
    try:
        q = pipeline.load_qgraph(source, JSSC2022, trained=False, input_shape=shape)
        prog = compile_program(q, JSSC2022)
        r = simulate_report(prog)
    except ImcflowError as exc:
        return {"error": str(exc)}
    return {"layers": len(q.mvm_nodes()), "arrays": len({t.core for ph in prog.phases for t in ph.tiles}),
            "phases": len(prog.phases), "img_s": r.throughput_img_s, "img_s_w": r.img_per_s_per_w}


def main() -> int:
    t0 = time.perf_counter()
    print(f"{'network':31} {'from':8} {'MVM layers':>10} {'cores':>5} {'phases':>6} {'img/s':>9} {'img/s/W':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in NETWORKS.items():
            torch.manual_seed(0)
            model = cls().eval()
            shape = getattr(cls, "input_shape", (3, 32, 32))
            path = Path(tmp) / "net.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, torch.rand(1, *shape), str(path), dynamo=False)
            for how, source in (("PyTorch", model), ("ONNX", path)):
                r = measure(source, shape)
                if "error" in r:
                    print(f"{name:31} {how:8} error: {r['error'][:150]}")
                else:
                    print(f"{name:31} {how:8} {r['layers']:10} {r['arrays']:5} {r['phases']:6} {r['img_s']:9,.0f} "
                          f"{r['img_s_w']:9,.0f}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
