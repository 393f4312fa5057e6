"""Post-training quantisation: a normalized float Graph + calibration inputs -> QGraph.

Choices (all documented, all parameters of :class:`QuantSpec`):

- **Weights**: symmetric signed ``w_bits`` (default 4) integers with one scale per output channel,
  ``s_w[c] = max|w[c]| / (2**(w_bits-1) - 1)`` (``w_clip="max"``, default) or the clipped range
  with the least squared error (``w_clip="mse"``); QAT uses max-based scales too.
- **Activations**: one scale per tensor, ``a_bits`` (default 4). A tensor is unsigned when its
  producer guarantees it is non-negative (a fused ReLU, a clamp with min >= 0, an add of two
  unsigned tensors, pooling/flatten/concat of unsigned tensors) and signed otherwise. Its range
  ``r`` is a percentile (default 99.99) of ``|value|`` over the calibration batch, the maximum
  (``method="max"``) or the range with the least squared quantisation error (``method="mse"``);
  ``scale = r / max_int``.
- **First layer input**: ``in_bits`` (default 8) raw integers. With ``input_scale`` given (the zoo's
  image models take ``pixel / 255``, so ``input_scale = 1/255`` makes the integers the raw 8-b
  pixels), that scale is used; otherwise ``scale = max|calibration input| / max_int``. The input
  is unsigned if every calibration input is non-negative, else signed.
- **Output** (logits): ``out_bits`` (default 16) signed, range ``out_margin`` (2) x the calibration
  maximum, so that classification (arg-max) is exact in integers.
- **ADC full scale** per MVM layer: :func:`imcflow.ir.qgraph.pick_full_scale` of the rows of the
  layer's largest row tile (:func:`imcflow.ir.qgraph.row_tiles` over ``chip.array.rows``) among
  ``chip.adc.full_scales_rows``: the smallest full scale no column count can exceed (default,
  ``adc_full_scale="rows"``); or, with ``adc_full_scale="calibrated"``, the smallest one that
  clips at most ``adc_clip_fraction`` of the conversions on the calibration inputs
  (:mod:`imcflow.quant.adc_range`). The compiler and simulator reuse the stored
  ``adc_full_scale_rows``.
- **Requant** (:mod:`imcflow.quant.requant`): ``M[c] = s_x s_w[c] / s_out`` and ``b[c] / s_out`` as
  integers at a common shift, 16-b multipliers; ReLU -> ``out_min = 0``, clamp -> ``out_max``.
- Scale groups (:func:`imcflow.quant.plan.scale_groups`): pool, flatten and concat outputs share
  their inputs' spec; a concat's inputs all get one scale (the widest range among them).
- Already-quantised (QCDQ) ONNX models: the importer's annotations are honoured. A node's
  ``act_scale``/``act_bits`` fix its output tensor's scale and bits (the graph output keeps
  ``out_bits``), ``meta["input_scale"]``/``meta["input_bits"]`` the input's, and a weight layer's
  ``w_bits`` attr its weight bits (:func:`layer_w_bits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imcflow.config.chip import ChipConfig
from imcflow.config.presets import get_preset
from imcflow.errors import QuantError
from imcflow.ir.graph import Graph, Node, Op
from imcflow.ir.qgraph import QGraph, QNode, QOp, QTensor, pick_full_scale, row_tiles
from imcflow.quant.adc_range import calibrate_full_scales, with_full_scales
from imcflow.quant.plan import Plan, float_tensors, plan_graph, pool_stride, scale_groups
from imcflow.quant.reference import quantize_input
from imcflow.quant.requant import act_table, derive_add, derive_requant, round_half_up

METHODS = ("percentile", "max", "mse")
W_CLIPS = ("max", "mse")
ADC_FULL_SCALES = ("rows", "calibrated")
ADC_CALIB_SAMPLES = 32
"""Calibration inputs the ``calibrated`` ADC full-scale search runs (the first ones)."""
MSE_SAMPLES = 1 << 20
"""Values per tensor the ``mse`` range search looks at (a seeded subsample of larger tensors)."""
MSE_STEPS = 64
"""Candidate ranges of the ``mse`` search: ``max * k / MSE_STEPS`` for k = 1 .. MSE_STEPS."""

_QOP = {Op.CONV: QOp.CONV, Op.LINEAR: QOp.LINEAR, Op.MAXPOOL: QOp.MAXPOOL, Op.AVGPOOL: QOp.AVGPOOL,
        Op.GLOBAL_AVGPOOL: QOp.GLOBAL_AVGPOOL, Op.ADD: QOp.ADD, Op.FLATTEN: QOp.FLATTEN, Op.CONCAT: QOp.CONCAT,
        Op.UPSAMPLE: QOp.UPSAMPLE, Op.DEPTH_TO_SPACE: QOp.DEPTH_TO_SPACE}


@dataclass(frozen=True)
class QuantSpec:
    """Bit widths and calibration choices of a quantisation (see module doc)."""

    w_bits: int = 4
    a_bits: int = 4
    in_bits: int = 8
    out_bits: int = 16
    input_scale: float | None = None
    """Real value of one input step (1/255 for pixel/255 inputs); None: from calibration."""
    method: str = "percentile"
    """Activation range: ``percentile`` of |value|, ``max``, or ``mse`` (the range among
    ``MSE_STEPS`` fractions of the max that minimises the quantisation's mean squared error)."""
    percentile: float = 99.99
    out_margin: float = 2.0
    adc_full_scale: str = "rows"
    """``rows``: the smallest full scale no count can exceed (:func:`full_scale_for`, default);
    ``calibrated``: the smallest one that clips at most ``adc_clip_fraction`` of the conversions
    on the calibration inputs (:mod:`imcflow.quant.adc_range`)."""
    adc_clip_fraction: float = 1e-4
    w_clip: str = "max"
    """Weight scale per channel: ``max`` (max|w| / max_int, default) or ``mse`` (the clipped range
    among ``MSE_STEPS`` fractions of max|w| that minimises the channel's squared error). On the
    trained cifar10-cnn11 (2000 test images, benchmarks/quant_ptq.py) ``max`` gave 83.2 % and
    ``mse`` 81.6 % top-1 (float 84.0 %)."""

    def check(self, chip: ChipConfig) -> None:
        """QuantError for widths the chip cannot run or bad calibration settings."""
        for what in ("w_bits", "a_bits", "in_bits"):
            bits = getattr(self, what)
            if not isinstance(bits, int) or not 1 <= bits <= chip.array.max_bits:
                raise QuantError(f"{what} = {bits!r}: must be 1..{chip.array.max_bits} (chip array.max_bits)")
        if self.w_bits < 2:
            raise QuantError(f"w_bits = {self.w_bits}: signed weights need at least 2 bits")
        if not 2 <= self.out_bits <= 32:
            raise QuantError(f"out_bits = {self.out_bits}: must be 2..32")
        if self.method not in METHODS:
            raise QuantError(f"calibration method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.adc_full_scale not in ADC_FULL_SCALES:
            raise QuantError(f"adc_full_scale {self.adc_full_scale!r}: choose one of {', '.join(ADC_FULL_SCALES)}")
        if not 0 <= self.adc_clip_fraction < 1:
            raise QuantError(f"adc_clip_fraction = {self.adc_clip_fraction}: must be in [0, 1)")
        if self.w_clip not in W_CLIPS:
            raise QuantError(f"w_clip {self.w_clip!r}: choose one of {', '.join(W_CLIPS)}")
        if not 0 < self.percentile <= 100:
            raise QuantError(f"percentile = {self.percentile}: must be in (0, 100]")
        if self.input_scale is not None and not self.input_scale > 0:
            raise QuantError(f"input_scale = {self.input_scale}: must be > 0")


@dataclass(frozen=True)
class Ranges:
    """Calibrated real ranges: ``absmax[t]`` per QGraph tensor and whether the input goes negative."""

    absmax: dict[str, float]
    input_signed: bool


def max_int(bits: int, signed: bool) -> int:
    """Largest integer of a ``bits``-bit operand."""
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def mse_fraction(v: np.ndarray, levels_lo: int, levels_hi: int) -> np.ndarray:
    """Per row of ``v`` (float64 (R, M)), the fraction k/MSE_STEPS of the row's max|v| whose range,
    split into integer levels ``[levels_lo, levels_hi]``, quantises the row with least squared error."""
    peak = np.abs(v).max(axis=1, keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    best_err = np.full(v.shape[0], np.inf)
    best = np.ones(v.shape[0])
    for k in range(1, MSE_STEPS + 1):
        s = peak * (k / MSE_STEPS) / levels_hi
        err = ((np.clip(np.floor(v / s + 0.5), levels_lo, levels_hi) * s - v) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, k / MSE_STEPS, best)
    return best


def weight_scales(w: np.ndarray, w_bits: int, clip: str = "max") -> np.ndarray:
    """Symmetric per-output-channel scales (float64, > 0): ``max`` or ``mse`` clipping (see
    :class:`QuantSpec`); all-zero channels borrow the smallest other scale so they do not limit
    the requant shift."""
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    peak = np.abs(flat).max(axis=1)
    if clip == "mse":
        peak = peak * mse_fraction(flat, -max_int(w_bits, True) - 1, max_int(w_bits, True))
    s = peak / max_int(w_bits, True)
    positive = s[s > 0]
    return np.where(s > 0, s, positive.min() if positive.size else 1.0)


def quantize_weight(w: np.ndarray, s_w: np.ndarray, w_bits: int) -> np.ndarray:
    """Integer weights ``clip(round_half_up(w / s_w[c]))`` (int8)."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = round_half_up(w / s_w.reshape(shape))
    lim = max_int(w_bits, True)
    return np.clip(q, -lim - 1, lim).astype(np.int8)


def collect_ranges(plan: Plan, calib_x: np.ndarray, spec: QuantSpec) -> Ranges:
    """Run the float graph on the calibration batch and measure every QGraph tensor's range."""
    x = torch.as_tensor(np.asarray(calib_x, dtype=np.float32))
    values = float_tensors(plan.graph, x)
    absmax = {plan.graph.input_name: float(x.abs().max())}
    rng = np.random.default_rng(0)
    for s in plan.steps:
        raw = values[s.tensor].reshape(-1).numpy()
        v = np.abs(raw)
        if s.name == plan.output:
            absmax[s.name] = float(v.max()) * spec.out_margin
        elif spec.method == "mse":
            sample = raw if raw.size <= MSE_SAMPLES else rng.choice(raw, MSE_SAMPLES, replace=False)
            signed = bool((sample < 0).any())
            hi = max_int(spec.a_bits, signed)
            frac = mse_fraction(sample[None].astype(np.float64), -hi - 1 if signed else 0, hi)[0]
            absmax[s.name] = float(v.max()) * float(frac)
        elif spec.method == "max" or spec.percentile >= 100:
            absmax[s.name] = float(v.max())
        else:
            absmax[s.name] = float(np.percentile(v, spec.percentile))
    return Ranges(absmax=absmax, input_signed=bool((x < 0).any()))


def _signedness(plan: Plan, input_signed: bool) -> dict[str, bool]:
    signed = {plan.graph.input_name: input_signed}
    for s in plan.steps:
        lo, _ = s.act_range
        if s.node.op in (Op.CONV, Op.LINEAR):
            signed[s.name] = not (lo is not None and lo >= 0)
        elif s.node.op is Op.ADD:
            signed[s.name] = not ((lo is not None and lo >= 0) or not any(signed[i] for i in s.inputs))
        else:
            signed[s.name] = any(signed[i] for i in s.inputs)
    signed[plan.output] = True
    return signed


def layer_w_bits(node: Node, spec: QuantSpec) -> int:
    """Weight bits of a layer: its ``w_bits`` attr (QCDQ import) or ``spec.w_bits``."""
    bits = node.attrs.get("w_bits", spec.w_bits)
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QuantError(f"{node.describe()}: w_bits = {bits!r}: signed weights need 2..8 bits")
    return bits


def annotations(plan: Plan) -> dict[str, tuple[float, int | None]]:
    """(scale, bits) fixed by QCDQ annotations, per QGraph tensor (see module doc)."""
    out = {}
    meta = plan.graph.meta
    if meta.get("input_scale"):
        out[plan.graph.input_name] = (float(meta["input_scale"]), meta.get("input_bits"))
    for s in plan.steps:
        src = s.act if s.act is not None and "act_scale" in s.act.attrs else s.node
        if "act_scale" in src.attrs and s.name != plan.output:
            out[s.name] = (float(src.attrs["act_scale"]), src.attrs.get("act_bits"))
    return out


def tensor_specs(plan: Plan, ranges: Ranges, spec: QuantSpec,
                 scales: dict[str, float] | None = None) -> dict[str, QTensor]:
    """The QTensor of every QGraph tensor: bits, signedness and scale resolved over scale groups.
    ``scales`` optionally fixes the scale of a tensor's group (QAT export of learned scales)."""
    shapes = {plan.graph.input_name: plan.graph.input_shape}
    shapes.update({s.name: s.node.out_shape for s in plan.steps})
    signed = _signedness(plan, ranges.input_signed)
    bits = {t: spec.a_bits for t in shapes}
    bits[plan.graph.input_name] = spec.in_bits
    fixed_by_model = annotations(plan)
    for t, (_, b) in fixed_by_model.items():
        if b:
            bits[t] = int(b)
    bits[plan.output] = spec.out_bits
    groups = scale_groups(plan)
    members: dict[str, list[str]] = {}
    for t, g in groups.items():
        members.setdefault(g, []).append(t)
    specs = {}
    for group in members.values():
        g_signed = any(signed[t] for t in group)
        g_bits = max(bits[t] for t in group)
        r = max(ranges.absmax[t] for t in group)
        scale = (r if r > 0 else 1.0) / max_int(g_bits, g_signed)
        if plan.graph.input_name in group and spec.input_scale is not None:
            scale = spec.input_scale
        fixed = [fixed_by_model[t][0] for t in group if t in fixed_by_model]
        if fixed:
            scale = fixed[0]
        fixed = [scales[t] for t in group if scales and t in scales]
        if fixed:
            scale = fixed[0]
        for t in group:
            specs[t] = QTensor(shape=tuple(shapes[t]), bits=g_bits, signed=g_signed, scale=float(scale))
    return specs


def full_scale_for(c_in: int, kh: int, kw: int, chip: ChipConfig) -> int:
    """ADC full scale of a layer: pick_full_scale of its largest row tile's rows."""
    tiles = row_tiles(c_in, kh, kw, chip.array.rows)
    rows = max(c1 - c0 for c0, c1 in tiles) * kh * kw
    return pick_full_scale(rows, chip.adc.full_scales_rows)


def _mvm_node(step, specs, chip, spec: QuantSpec, full_scale, weight, bias, s_w, w_int=None) -> QNode:
    node = step.node
    x_spec, out = specs[step.inputs[0]], specs[step.name]
    if not 1 <= x_spec.bits <= chip.array.max_bits:
        raise QuantError(f"layer {node.name!r}: its input has {x_spec.bits} bits, more than the array's "
                         f"{chip.array.max_bits} (array.max_bits); lower the bits of the tensor feeding it")
    w = node.params["weight"] if weight is None else weight
    b = node.bias if bias is None else bias
    w_bits = layer_w_bits(node, spec)
    s_w = weight_scales(w, w_bits, spec.w_clip) if s_w is None else np.asarray(s_w, dtype=np.float64)
    w_int = quantize_weight(w, s_w, w_bits) if w_int is None else np.asarray(w_int).astype(np.int8)
    lo, hi = step.act_range
    requant = derive_requant(node.name, x_spec.scale, s_w, b, out, lo, hi, activation=step.act_fn)
    if node.op is Op.CONV:
        kh, kw = w.shape[2:]
        geo = dict(kernel=(int(kh), int(kw)), stride=tuple(node.attrs.get("stride", (1, 1))),
                   padding=tuple(node.attrs.get("padding", (0, 0))),
                   dilation=tuple(node.attrs.get("dilation", (1, 1))))
    else:
        kh = kw = 1
        geo = {}
    if not full_scale:
        try:
            full_scale = full_scale_for(w.shape[1], kh, kw, chip)
        except QuantError as exc:
            raise QuantError(f"layer {node.name!r}: {exc}; use a smaller kernel or an array with more rows "
                             f"(array.rows)") from None
    return QNode(name=node.name, op=_QOP[node.op], inputs=step.inputs, out=out, weight=w_int, w_bits=w_bits,
                 w_scale=s_w, adc_full_scale_rows=int(full_scale), requant=requant, **geo)


def _other_node(step, specs) -> QNode:
    node, out = step.node, specs[step.name]
    op = _QOP[node.op]
    if op is QOp.ADD:
        lo, hi = step.act_range
        mults, shift, out_min, out_max = derive_add(node.name, specs[step.inputs[0]].scale,
                                                    specs[step.inputs[1]].scale, out, lo, hi)
        table = None if step.act_fn is None else act_table(step.act_fn, shift, out.scale, out_min, out_max)
        return QNode(name=node.name, op=op, inputs=step.inputs, out=out, add_multipliers=mults, add_shift=shift,
                     add_table=table)
    if op in (QOp.MAXPOOL, QOp.AVGPOOL):
        return QNode(name=node.name, op=op, inputs=step.inputs, out=out, kernel=tuple(node.attrs["kernel"]),
                     stride=pool_stride(node), padding=tuple(node.attrs.get("padding", (0, 0))),
                     pad_end=tuple(node.attrs.get("pad_end", (0, 0))))
    if op is QOp.UPSAMPLE:
        return QNode(name=node.name, op=op, inputs=step.inputs, out=out, upsample=tuple(node.attrs["scale"]),
                     upsample_mode=node.attrs.get("mode", "nearest"))
    if op is QOp.DEPTH_TO_SPACE:
        return QNode(name=node.name, op=op, inputs=step.inputs, out=out, depth_to_space=int(node.attrs["block"]))
    return QNode(name=node.name, op=op, inputs=step.inputs, out=out)


def build_qgraph(plan: Plan, ranges: Ranges, chip: str | ChipConfig = "jssc2022", spec: QuantSpec = QuantSpec(),
                 weights: dict[str, tuple] | None = None, scales: dict[str, float] | None = None,
                 meta: dict | None = None, full_scales: dict[str, int] | None = None) -> QGraph:
    """The QGraph of ``plan`` with calibrated ``ranges``. For QAT export, ``weights`` overrides per
    MVM layer name ``(float weight, float bias or None, weight scales or None[, integer weights])``
    and ``scales`` fixes tensor scales (see :func:`tensor_specs`); ``full_scales`` gives layers'
    ADC full scales (default :func:`full_scale_for`)."""
    chip = get_preset(chip)
    spec.check(chip)
    specs = tensor_specs(plan, ranges, spec, scales)
    weights = weights or {}
    nodes = []
    for step in plan.steps:
        if step.node.op in (Op.CONV, Op.LINEAR):
            fs = (full_scales or {}).get(step.name)
            nodes.append(_mvm_node(step, specs, chip, spec, fs, *weights.get(step.name, (None, None, None))))
        else:
            nodes.append(_other_node(step, specs))
    info = {"source_graph": plan.graph.name, "chip": chip.name, "w_bits": spec.w_bits, "a_bits": spec.a_bits,
            "in_bits": spec.in_bits, "out_bits": spec.out_bits, "calibration": spec.method,
            "percentile": spec.percentile, "w_clip": spec.w_clip, "adc_full_scale": spec.adc_full_scale,
            **(meta or {})}
    qg = QGraph(name=plan.graph.name, input_name=plan.graph.input_name, input=specs[plan.graph.input_name],
                nodes=tuple(nodes), output=plan.output, meta=info)
    qg.verify()
    return qg


def calibrate(graph: Graph, calib_x: np.ndarray, chip: str | ChipConfig = "jssc2022",
              spec: QuantSpec = QuantSpec(), meta: dict | None = None) -> QGraph:
    """Post-training quantisation of normalized ``graph`` from the float calibration batch
    ``calib_x`` (N, *input shape) (see module doc for every choice)."""
    calib_x = np.asarray(calib_x, dtype=np.float32)
    if calib_x.ndim != len(graph.input_shape) + 1 or tuple(calib_x.shape[1:]) != tuple(graph.input_shape):
        raise QuantError(f"calibration inputs have shape {calib_x.shape}; graph {graph.name!r} expects "
                         f"(N, {', '.join(map(str, graph.input_shape))})")
    if calib_x.shape[0] == 0:
        raise QuantError("calibration needs at least one input")
    plan = plan_graph(graph)
    qg = build_qgraph(plan, collect_ranges(plan, calib_x, spec), chip, spec, meta=meta)
    if spec.adc_full_scale == "calibrated":
        qg = with_full_scales(qg, adc_full_scales(qg, calib_x, chip, spec))
    return qg


def adc_full_scales(qgraph: QGraph, calib_x: np.ndarray, chip: str | ChipConfig, spec: QuantSpec) -> dict[str, int]:
    """Calibrated ADC full scales (:mod:`imcflow.quant.adc_range`) of ``qgraph``'s MVM layers on the
    first ``ADC_CALIB_SAMPLES`` float calibration inputs."""
    x_int = quantize_input(qgraph, np.asarray(calib_x, dtype=np.float32)[:ADC_CALIB_SAMPLES])
    return calibrate_full_scales(qgraph, x_int, get_preset(chip), spec.adc_clip_fraction)
