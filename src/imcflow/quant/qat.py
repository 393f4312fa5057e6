"""Quantisation-aware training (QAT) whose forward pass IS the chip's arithmetic.

Usage (the training code, :mod:`imcflow.train`)::

    from imcflow.pipeline import prepare_qat          # torch module -> QatNet (frontend + this module)
    net = prepare_qat(float_model, (3, 32, 32), "jssc2022", calib=x_batch, input_scale=1 / 255)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = F.cross_entropy(net(x), y); loss.backward(); opt.step()   # chip arithmetic, STE gradients
    qgraph = export_qgraph(net)                       # integers for the compiler / reference executor
    net.set_mode("int"); logits = net(x)              # exported integers, bit_true: equals run_qgraph

Here :func:`prepare_qat` takes a *normalized float Graph* (the quantiser does not import the
frontend); :func:`imcflow.pipeline.prepare_qat` takes a ``torch.nn.Module``.

Design:

- **Batch norm is folded before QAT** (the frontend's normalisation folds it into conv weights and
  biases); QAT then fine-tunes the folded weights and biases. This keeps training arithmetic and
  export identical (no BN statistics to refold), at the price of training without BN, which is
  fine for the fine-tuning QAT is used for.
  Consequence: the folded weights are a plain (BN-free) parametrisation, so SGD steps must be
  small. On the trained cifar10-cnn11 one plain gradient step at lr 0.01 drops even the *float*
  accuracy from 82 % to 75 % (at lr 0.001: no loss); use SGD learning rates around 1e-3 or below
  (or Adam) for QAT fine-tuning.
- **Weights**: symmetric signed ``w_bits`` per output channel, max-based scale
  ``s_w = max|w[c]| / (2**(w_bits-1) - 1)`` recomputed every step (not learned, no gradient),
  ``w_int = clamp(round(w / s_w))`` with a straight-through (STE) rounding gradient.
- **Activations**: one learnable step size per scale group (LSQ: Esser et al., ICLR 2020, with its
  gradient scale ``1/sqrt(numel * max_int)``), initialised from a PTQ calibration
  (:mod:`imcflow.quant.calibrate`); ``y_int = clamp(round(v / s))`` with STE. The input scale
  (fixed, e.g. 1/255) and the 16-b logit scale are not learned.
- **MVM**: :func:`imcflow.cima.bpbs_conv2d_ste` / ``bpbs_linear_ste`` on the integer tensors: BPBS
  with the ADC rounding and clipping at the full scale the compiler uses
  (:func:`imcflow.quant.calibrate.full_scale_for`), straight-through gradients; the accumulator
  times ``full_scale / 2**adc_bits`` times ``s_x s_w[c]``, plus the bias, is requantised to the
  next tensor's integers. Pooling and adds follow the integer rules of :mod:`imcflow.ir.qgraph`.
  All rounding is round half up, as on the chip.
- **ADC in training** (:meth:`QatNet.set_adc`): ``"bit_true"`` by default; ``"ideal"`` (exact
  counts, several times faster on a CPU) is a documented switch for early epochs only.
- **Modes** (:meth:`QatNet.set_mode`): ``"qat"`` (default, above), ``"float"`` (the float network
  with the current weights, no quantisation) and ``"int"`` (export, then run the exported QGraph
  with :func:`imcflow.quant.fast_exec.run_qgraph_fast` in bit_true mode: exactly what
  :func:`imcflow.quant.reference.run_qgraph` computes). ``"qat"`` differs from ``"int"`` only by
  the requant multipliers' 16-b rounding (rarely one output step).

Every mode returns real-valued outputs (``y_int * scale``) so the same loss works in each.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from imcflow import cima
from imcflow.config.chip import ChipConfig
from imcflow.config.presets import get_preset
from imcflow.errors import QuantError
from imcflow.ir.graph import Graph, Op
from imcflow.ir.graph_exec import run_node
from imcflow.ir.qgraph import QGraph
from imcflow.quant.calibrate import (QuantSpec, Ranges, adc_full_scales, build_qgraph, collect_ranges, full_scale_for,
                                     layer_w_bits, tensor_specs)
from imcflow.quant.fast_exec import bilinear_sum, run_qgraph_fast
from imcflow.quant.plan import float_node, plan_graph, pool_stride, scale_groups
from imcflow.quant.reference import dequantize_output, quantize_input
from imcflow.quant.requant import out_range

MODES = ("qat", "float", "int")
MOVES_INTEGERS = (Op.MAXPOOL, Op.FLATTEN, Op.CONCAT, Op.UPSAMPLE, Op.DEPTH_TO_SPACE)
"""Ops that select, replicate or move their input integers without arithmetic: in QAT they are the
float ops of :func:`imcflow.ir.graph_exec.run_node` (gradients flow to the values they keep)."""


def round_ste(v: torch.Tensor) -> torch.Tensor:
    """``floor(v + 1/2)`` forward, identity gradient."""
    return v + (torch.floor(v + 0.5) - v).detach()


def floor_ste(v: torch.Tensor) -> torch.Tensor:
    """``floor(v)`` forward, identity gradient."""
    return v + (torch.floor(v) - v).detach()


def grad_scale(s: torch.Tensor, g: float) -> torch.Tensor:
    """``s`` forward, gradient times ``g`` (LSQ's step-size gradient scale)."""
    return (s - s * g).detach() + s * g


def _key(name: str) -> str:
    return name.replace(".", "_")


def weight_scale_torch(w: torch.Tensor, w_bits: int) -> torch.Tensor:
    """Max-based per-output-channel weight scales (detached; zero channels borrow the smallest
    positive scale), like :func:`imcflow.quant.calibrate.weight_scales`."""
    qmax = (1 << (w_bits - 1)) - 1
    s = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1) / qmax
    pos = s[s > 0]
    fill = pos.min() if pos.numel() else torch.ones((), dtype=s.dtype, device=s.device)
    return torch.where(s > 0, s, fill)


def quantize_weight_ste(w: torch.Tensor, s_w: torch.Tensor, w_bits: int) -> torch.Tensor:
    """``clamp(round(w / s_w[c]))`` with STE (float tensor of integers)."""
    qmax = (1 << (w_bits - 1)) - 1
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.clamp(round_ste(w / s_w.view(shape)), -qmax - 1, qmax)


class QatNet(nn.Module):
    """A normalized Graph run with the chip's arithmetic (see module doc). Build with :func:`prepare_qat`."""

    def __init__(self, graph: Graph, chip: ChipConfig, spec: QuantSpec, ranges: Ranges,
                 full_scales: dict[str, int] | None = None):
        super().__init__()
        self.graph, self.chip, self.spec, self.ranges = graph, chip, spec, ranges

        self.plan = plan_graph(graph)
        self.specs = tensor_specs(self.plan, ranges, spec)
        self.groups = scale_groups(self.plan)
        self.mode = "qat"
        self.adc = "bit_true"
        self.weight = nn.ParameterDict()
        self.w_bits = {s.name: layer_w_bits(s.node, spec) for s in self.plan.steps if s.node.op in (Op.CONV, Op.LINEAR)}
        self.bias = nn.ParameterDict()
        for s in self.plan.steps:
            if s.node.op in (Op.CONV, Op.LINEAR):
                w = s.node.params["weight"]
                b = s.node.bias if s.node.bias is not None else np.zeros(w.shape[0], np.float32)
                self.weight[_key(s.name)] = nn.Parameter(torch.from_numpy(w.copy()))
                self.bias[_key(s.name)] = nn.Parameter(torch.from_numpy(b.copy()))
                kh, kw = (w.shape[2], w.shape[3]) if w.ndim == 4 else (1, 1)
                fs = (full_scales or {}).get(s.name) or full_scale_for(w.shape[1], kh, kw, chip)
                self.register_buffer(f"adc_fs_{_key(s.name)}", torch.tensor(int(fs)))  # in state_dict
        fixed = {self.groups[graph.input_name], self.groups[self.plan.output]}
        self.scale = nn.ParameterDict()
        self._fixed: set[str] = set()
        for rep in sorted(set(self.groups.values())):
            s0 = self.specs[rep].scale
            if rep in fixed:
                self._fixed.add(rep)  # a buffer, so that state_dict() holds every scale
                self.register_buffer(f"fixed_scale_{_key(rep)}", torch.tensor(float(s0), dtype=torch.float64))
            else:
                self.scale[_key(rep)] = nn.Parameter(torch.tensor(float(s0)))
        self._numel = {t: int(np.prod(q.shape)) for t, q in self.specs.items()}
        self._int_qgraph: QGraph | None = None

    # --- modes and parameters ------------------------------------------------------------
    def set_mode(self, mode: str) -> "QatNet":
        """``"qat"``, ``"float"`` or ``"int"`` (int exports the current parameters once)."""
        if mode not in MODES:
            raise QuantError(f"QAT mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self._int_qgraph = export_qgraph(self) if mode == "int" else None
        return self

    def set_adc(self, adc: str) -> "QatNet":
        """ADC model of the ``"qat"`` forward: ``"bit_true"`` (default: the chip's ADC rounding and
        clipping) or ``"ideal"`` (exact column counts: one integer convolution per layer instead of
        one per input bit-plane and row tile, several times faster; for early QAT epochs, to be
        followed by ``"bit_true"`` epochs so the network adapts to the real ADC)."""
        if adc not in ("bit_true", "ideal"):
            raise QuantError(f"QAT adc {adc!r}: choose 'bit_true' or 'ideal'")
        self.adc = adc
        return self

    def weight_parameters(self) -> list[nn.Parameter]:
        """Conv/linear weights (the ones weight decay applies to)."""
        return list(self.weight.values())

    def other_parameters(self) -> list[nn.Parameter]:
        """Biases and activation step sizes."""
        return list(self.bias.values()) + list(self.scale.values())

    def tensor_scale(self, tensor: str) -> torch.Tensor:
        """Current scale of a QGraph tensor (learned step size of its group, or fixed)."""
        rep = self.groups[tensor]
        if rep in self._fixed:
            return getattr(self, f"fixed_scale_{_key(rep)}").to(torch.float32)
        s = self.scale[_key(rep)].abs().clamp_min(1e-8)
        q = self.specs[tensor]
        return grad_scale(s, 1.0 / float(np.sqrt(self._numel[tensor] * q.max_int)))

    @property
    def full_scales(self) -> dict[str, int]:
        """ADC full scale, in rows, of every MVM layer (held as buffers, so in the state_dict)."""
        return {name: int(getattr(self, f"adc_fs_{_key(name)}")) for name in self.w_bits}

    def fixed_scale(self, tensor: str) -> float:
        """The exact (float64) scale of a tensor whose scale is not learned (input, logits)."""
        return float(getattr(self, f"fixed_scale_{_key(self.groups[tensor])}"))

    def weight_int(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer weights with STE, per-channel scales) of MVM layer ``name``."""
        w = self.weight[_key(name)]
        bits = self.w_bits[name]
        s_w = weight_scale_torch(w, bits)
        return quantize_weight_ste(w, s_w, bits), s_w

    # --- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return self._forward_float(x)
        if self.mode == "int":
            qg = self._int_qgraph
            y = run_qgraph_fast(qg, quantize_input(qg, x.detach().cpu().numpy()), "bit_true", self.chip)
            return torch.from_numpy(dequantize_output(qg, y)).to(device=x.device, dtype=torch.float32)
        return self._forward_qat(x)

    def _forward_float(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.graph.input_name: x.to(torch.float32)}
        for n in self.graph.nodes:
            w = self.weight[_key(n.name)] if n.op in (Op.CONV, Op.LINEAR) else None
            b = self.bias[_key(n.name)] if w is not None else None
            values[n.name] = float_node(n, [values[i] for i in n.inputs], w, b)
        return values[self.graph.output]

    def _quantize(self, v: torch.Tensor, tensor: str, lo=None, hi=None) -> torch.Tensor:
        """Real ``v`` -> integers (float tensor, STE) of ``tensor``'s spec, clamped to ``[lo, hi]``."""
        s = self.tensor_scale(tensor)
        spec = self.specs[tensor]
        q_lo, q_hi = out_range(dataclasses.replace(spec, scale=float(s.detach())), lo, hi)
        return torch.clamp(round_ste(v / s), q_lo, q_hi)

    def _forward_qat(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.graph.input_name
        vals = {inp: self._quantize(x.to(torch.float32), inp)}
        for step in self.plan.steps:
            vals[step.name] = self._step(step, [vals[i] for i in step.inputs])
        return vals[self.plan.output] * self.tensor_scale(self.plan.output)

    def _step(self, step, xs: list[torch.Tensor]) -> torch.Tensor:
        node, x = step.node, xs[0]
        op = node.op
        if op in (Op.CONV, Op.LINEAR):
            lo, hi = step.act_range
            return self._quantize(step.activate(self._mvm_real(step, x)), step.name, lo, hi)
        if op is Op.ADD:
            lo, hi = step.act_range
            v = xs[0] * self.tensor_scale(step.inputs[0]) + xs[1] * self.tensor_scale(step.inputs[1])
            return self._quantize(step.activate(v), step.name, lo, hi)
        if op is Op.UPSAMPLE and node.attrs.get("mode", "nearest") == "bilinear":
            sh, sw = node.attrs["scale"]   # integer weights over D = 4 sh sw, round half up (STE)
            return floor_ste((bilinear_sum(x, (sh, sw)) + 2 * sh * sw) / (4 * sh * sw))
        if op in MOVES_INTEGERS:  # the same integers, selected, replicated or moved: the float op itself
            return run_node(node, xs)
        if op is Op.AVGPOOL:
            k = node.attrs["kernel"]
            total = torch.nn.functional.avg_pool2d(x, k, pool_stride(node), node.attrs.get("padding", (0, 0)),
                                                   divisor_override=1)
            count = k[0] * k[1]
            return floor_ste((total + count // 2) / count)
        if op is Op.GLOBAL_AVGPOOL:
            count = x.shape[2] * x.shape[3]
            return floor_ste((x.sum(dim=(2, 3), keepdim=True) + count // 2) / count)
        raise QuantError(f"{node.describe()}: op not supported by QAT")  # pragma: no cover

    def _mvm_real(self, step, x_int: torch.Tensor) -> torch.Tensor:
        """Real pre-activation of an MVM layer computed the chip's way (BPBS + ADC, STE)."""
        node = step.node
        x_spec = self.specs[step.inputs[0]]
        w_int, s_w = self.weight_int(step.name)
        conv = node.op is Op.CONV
        kh, kw = (w_int.shape[2], w_int.shape[3]) if conv else (1, 1)
        fs = self.full_scales[step.name]
        kwargs = dict(x_bits=x_spec.bits, w_bits=self.w_bits[step.name], x_signed=x_spec.signed, full_scale=fs,
                      adc_bits=self.chip.adc.bits, array_rows=self.chip.array.rows, out_dtype=torch.float32)
        if conv:
            kwargs.update(stride=tuple(node.attrs.get("stride", (1, 1))), padding=tuple(node.attrs.get("padding", (0, 0))),
                          dilation=tuple(node.attrs.get("dilation", (1, 1))))
        if self.chip.adc.lossless or self.adc == "ideal":  # exact counts: the integer product itself
            f = torch.nn.functional
            acc = (f.conv2d(x_int, w_int, stride=kwargs.get("stride", 1), padding=kwargs.get("padding", 0),
                            dilation=kwargs.get("dilation", 1))
                   if conv else f.linear(x_int, w_int))
        else:
            ste = cima.bpbs_conv2d_ste if conv else cima.bpbs_linear_ste
            acc = ste(x_int, w_int, **kwargs) * (fs / 2.0 ** self.chip.adc.bits)
        shape = (1, -1) + (1,) * (acc.dim() - 2)
        s_x = self.tensor_scale(step.inputs[0])
        return acc * (s_x * s_w.view(shape)) + self.bias[_key(step.name)].view(shape)


def prepare_qat(graph: Graph, chip: str | ChipConfig = "jssc2022", w_bits: int = 4, a_bits: int = 4,
                first_in_bits: int = 8, calib: np.ndarray | None = None, input_scale: float | None = None,
                out_bits: int = 16, percentile: float = 99.99, seed: int = 0,
                adc_full_scale: str = "rows") -> QatNet:
    """A :class:`QatNet` for normalized ``graph``; its activation step sizes start from a PTQ
    calibration on ``calib`` (N, *input shape) float inputs (give a batch of real training data;
    None uses 64 seeded uniform [0, 1) inputs, adequate only for pixel/255 image models).
    ``adc_full_scale="calibrated"`` picks each layer's ADC full scale from the PTQ network's
    column counts on ``calib`` (:mod:`imcflow.quant.adc_range`) instead of the row count."""
    chip = get_preset(chip)
    spec = QuantSpec(w_bits=w_bits, a_bits=a_bits, in_bits=first_in_bits, out_bits=out_bits,
                     input_scale=input_scale, percentile=percentile, w_clip="max",  # QAT: max-based weights
                     adc_full_scale=adc_full_scale)
    spec.check(chip)
    if calib is None:
        calib = np.random.default_rng(seed).random((64, *graph.input_shape)).astype(np.float32)
    calib = np.asarray(calib, dtype=np.float32)
    if calib.ndim != len(graph.input_shape) + 1 or tuple(calib.shape[1:]) != tuple(graph.input_shape):
        raise QuantError(f"calibration inputs have shape {calib.shape}; graph {graph.name!r} expects "
                         f"(N, {', '.join(map(str, graph.input_shape))})")
    plan = plan_graph(graph)
    ranges = collect_ranges(plan, calib, spec)
    full_scales = None
    if adc_full_scale == "calibrated":  # from the PTQ network's integer activations on ``calib``
        full_scales = adc_full_scales(build_qgraph(plan, ranges, chip, spec), calib, chip, spec)
    return QatNet(graph, chip, spec, ranges, full_scales)


def _np(t: torch.Tensor) -> np.ndarray:
    """A detached tensor on any device as a numpy array."""
    return t.detach().cpu().numpy()


def export_qgraph(net: QatNet) -> QGraph:
    """The QGraph of ``net``'s current parameters: the integer weights its forward uses, its
    learned scales, and the requant derived from them (see :mod:`imcflow.quant.calibrate`)."""
    with torch.no_grad():
        weights = {}
        for s in net.plan.steps:
            if s.node.op in (Op.CONV, Op.LINEAR):
                w_int, s_w = net.weight_int(s.name)
                weights[s.name] = (_np(net.weight[_key(s.name)]).copy(), _np(net.bias[_key(s.name)]).copy(),
                                   _np(s_w).astype(np.float64), _np(w_int).astype(np.int8))
        scales = {t: net.fixed_scale(t) if net.groups[t] in net._fixed else float(net.tensor_scale(t))
                  for t in net.specs}
    return build_qgraph(net.plan, net.ranges, net.chip, net.spec, weights=weights, scales=scales,
                        meta={"trained": "qat"}, full_scales=net.full_scales)
