"""QGraph: a quantised network, as integers, exactly as the chip computes it.

Conventions (the contract between quantiser, reference executor, compiler and simulator):

- Tensors are NCHW (batch first; shapes stored without the batch). A tensor's real value is
  ``int * scale`` (no zero points): activations after ReLU are unsigned, weights are signed
  two's complement, per output channel scale.
- Every weight layer is an MVM (:class:`QOp.CONV` or :class:`QOp.LINEAR`). Its logical matrix has
  rows in the order of ``weight.reshape(c_out, -1)`` (input channel major, then kernel row, then
  kernel column) and ``c_out * w_bits`` physical columns. A dilated conv (``dilation`` d) has the
  same rows: only its window's taps lie d pixels apart (receptive field ``(k - 1) * d + 1``).
- Row tiles: a layer deeper than one array is split by input channels with :func:`row_tiles`;
  each tile is one MVM through its own ADCs (``adc_full_scale_rows`` for every tile of the layer),
  and the SIMD adds the tiles' accumulators digitally. Column tiling does not change results.
- The MVM accumulator ``acc`` of :func:`imcflow.cima.mvm` estimates ``x @ w`` as ``acc * acc_scale``
  with ``acc_scale = 1`` (ideal) or ``full_scale / 2**adc_bits`` (bit_true, analog).
- Requantisation in the SIMD (:class:`Requant`), in integers, round half up::

      v = acc * acc_scale                          # exact rational: num / 2**den_shift
      y = clamp(floor((v * multiplier + bias) / 2**shift + 1/2), out_min, out_max)

  computed as ``(acc*num*multiplier + (bias << den_shift) + (1 << (shift+den_shift-1))) >> (shift+den_shift)``
  with arithmetic shifts; ReLU is ``out_min = 0``. See :meth:`Requant.apply`. Another activation
  (SiLU, GELU, LeakyReLU, ...) replaces the rounding by a table of thresholds on the fixed-point
  pre-activation ``u = acc*num*multiplier + (bias << den_shift)``: ``y = codes[#(thresholds <= u)]``
  (:class:`ActTable`; thresholds at ``shift``, scaled by ``2**den_shift``; :mod:`imcflow.quant.act_table`).
- Average pooling: ``y = floor((sum + count // 2) / count)`` (round half up), count = kernel area.
- Residual add: ``y = clamp((a*mult_a + b*mult_b + 2**(shift-1)) >> shift, out_min, out_max)`` with
  ``out_min, out_max`` the integer range of the node's ``out`` spec (a fused ReLU makes it unsigned);
  with a fused SiLU, GELU, ... (``add_table``) ``y = codes[#(thresholds <= a*mult_a + b*mult_b)]``.
- Concat needs inputs of equal scale, bits and signedness (the quantiser ensures it).
- Nearest upsampling (``upsample`` = (sh, sw)): ``y[c, i, j] = x[c, i // sh, j // sw]``, the same
  integers (same spec), output ``(C, H*sh, W*sw)``.
- Bilinear upsampling (``upsample_mode`` = "bilinear"; PyTorch's ``F.interpolate(x, scale_factor=(sh,
  sw), mode='bilinear', align_corners=False)``): per axis of factor s, output index y reads source
  position ``max(0, (y + 1/2) / s - 1/2)``, taps ``i0 = floor`` of it and ``i1 = min(i0 + 1, n - 1)``,
  weights ``w1 = 2s * (position - i0)`` and ``w0 = 2s - w1``: integers over ``2s``
  (:func:`bilinear_taps`). The 2-D weights ``w_row * w_col`` are integers over ``D = (2 sh)(2 sw)``
  and sum to D; the SIMD computes ``y = floor((sum_k w_k * x_k + D // 2) / D)`` (round half up, like
  average pooling). Same spec as the input (a convex combination stays in range), output
  ``(C, H*sh, W*sw)``.
- Depth to space (``depth_to_space`` = r, PyTorch's PixelShuffle): ``y[c, i, j] =
  x[c*r*r + (i % r)*r + j % r, i // r, j // r]``, the same integers, output ``(C / r^2, H*r, W*r)``.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imcflow.errors import QuantError
from imcflow.ir.serialize import decode, encode, load_json_object, read_json_file


class QOp(str, enum.Enum):
    """Operations of a QGraph."""

    CONV = "conv"
    LINEAR = "linear"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GLOBAL_AVGPOOL = "global_avgpool"
    ADD = "add"
    FLATTEN = "flatten"
    CONCAT = "concat"
    UPSAMPLE = "upsample"
    DEPTH_TO_SPACE = "depth_to_space"


MVM_OPS = (QOp.CONV, QOp.LINEAR)


@dataclass(frozen=True)
class QTensor:
    """Spec of an integer activation tensor: real value = int * scale."""

    shape: tuple[int, ...]
    """Shape without batch: (C, H, W) for feature maps, (C,) after flatten."""
    bits: int
    signed: bool
    scale: float

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


@dataclass(frozen=True, eq=False)
class ActTable:
    """An activation other than ReLU/clamp (SiLU, GELU, LeakyReLU, ...) applied exactly by the SIMD:
    ``y = codes[#(thresholds <= u)]`` on the fixed-point pre-activation ``u`` of a requant or an
    add (in units of ``2**-shift`` output steps; :mod:`imcflow.quant.act_table` derives it)."""

    activation: str
    """The function's name (``imcflow.ir.activations``), for the record."""
    alpha: float | None
    """Its parameter (LeakyReLU's slope, ELU's alpha), for the record; None if it has none."""
    thresholds: np.ndarray
    """int64 (m,) strictly ascending."""
    codes: np.ndarray
    """int64 (m + 1,) output integers."""

    @property
    def search_ops(self) -> int:
        """SIMD lane operations of the binary search over the thresholds, per output value [A]."""
        return max(1, math.ceil(math.log2(len(self.codes))))

    def scaled(self, extra_shift: int) -> np.ndarray:
        """The thresholds at a binary point ``extra_shift`` bits finer (those beyond any reachable
        ``u``, |u| < 2**62, are clipped there)."""
        bound = 1 << (62 - extra_shift)
        return np.clip(self.thresholds.astype(np.int64), -bound, bound) << extra_shift

    def apply(self, u: np.ndarray, extra_shift: int = 0) -> np.ndarray:
        """``codes[#(thresholds <= u)]`` for int64 ``u`` at the thresholds' binary point + ``extra_shift``."""
        return self.codes[np.searchsorted(self.scaled(extra_shift), u, side="right")]

    def verify(self, where: str, out_min: int, out_max: int) -> None:
        """QuantError naming ``where`` unless the table is well formed and inside ``[out_min, out_max]``."""
        t, c = self.thresholds, self.codes
        if t.ndim != 1 or c.shape != (len(t) + 1,):
            raise QuantError(f"{where}: {self.activation} table has {c.shape} codes for {t.shape} thresholds; "
                             f"it needs one code more than thresholds")
        if len(t) > 1 and not np.all(np.diff(t) > 0):
            raise QuantError(f"{where}: {self.activation} table thresholds must be strictly ascending")
        if c.min() < out_min or c.max() > out_max:
            raise QuantError(f"{where}: {self.activation} table codes [{c.min()}, {c.max()}] leave the output "
                             f"range [{out_min}, {out_max}]")


@dataclass(frozen=True, eq=False)
class Requant:
    """Per-output-channel integer requantisation done by the near-memory SIMD (see module doc)."""

    multiplier: np.ndarray
    """int64 (C,): multiplier per output channel."""
    bias: np.ndarray
    """int64 (C,): bias per output channel, in units of 2**-shift output steps."""
    shift: int
    """Right shift >= 1 applied after multiply and bias."""
    out_min: int
    out_max: int
    table: ActTable | None = None
    """A fused activation other than ReLU/clamp, applied by table to ``u = acc * multiplier + bias``
    instead of rounding and clamping; None for ReLU, clamp or none."""

    @property
    def has_table(self) -> bool:
        return self.table is not None

    @property
    def lane_ops(self) -> int:
        """SIMD lane operations per output value: multiply-add and round/clamp (2), plus, with a
        table, its binary search [A]."""
        return 2 + (self.table.search_ops if self.has_table else 0)

    def apply(self, acc: np.ndarray, acc_scale_num: int = 1, acc_scale_shift: int = 0,
              channel_axis: int = 1) -> np.ndarray:
        """Requantise int64 ``acc`` (channels on ``channel_axis``), whose real value in
        x@w units is ``acc * acc_scale_num / 2**acc_scale_shift``. Returns int64."""
        shape = [1] * acc.ndim
        shape[channel_axis] = -1
        m = self.multiplier.astype(np.int64).reshape(shape)
        b = self.bias.astype(np.int64).reshape(shape)
        total_shift = self.shift + acc_scale_shift
        u = acc.astype(np.int64) * (acc_scale_num * m) + (b << acc_scale_shift)
        if self.has_table:
            return self.table.apply(u, acc_scale_shift)
        return np.clip((u + (1 << (total_shift - 1))) >> total_shift, self.out_min, self.out_max)


@dataclass(frozen=True, eq=False)
class QNode:
    """One operation of a QGraph. Fields unused by an op keep their defaults."""

    name: str
    op: QOp
    inputs: tuple[str, ...]
    out: QTensor
    # MVM layers (CONV, LINEAR)
    weight: np.ndarray | None = None
    """int8, (C_out, C_in, kh, kw) for CONV or (C_out, C_in) for LINEAR."""
    w_bits: int = 0
    w_scale: np.ndarray | None = None
    """float64 (C_out,): real weight = int * w_scale[c]."""
    adc_full_scale_rows: int = 0
    """ADC full scale, in rows, for every row tile of this layer (one of chip.adc.full_scales_rows)."""
    requant: Requant | None = None
    # CONV and pooling geometry
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    """Symmetric zero padding (top/bottom, left/right); max pooling pads with -inf."""
    pad_end: tuple[int, int] = (0, 0)
    """MAXPOOL only: more -inf padding at the bottom and right (``ceil_mode``, or an asymmetric pad)."""
    dilation: tuple[int, int] = (1, 1)
    """CONV only: distance between a window's taps. The rows stay ``C_in * kh * kw``; the input
    line buffer gathers taps ``dilation`` pixels apart (receptive field :func:`receptive_field`)."""
    upsample: tuple[int, int] = (1, 1)
    """UPSAMPLE only: factors (sh, sw) >= 1; nearest: output pixel (i, j) copies input pixel
    (i // sh, j // sw)."""
    upsample_mode: str = "nearest"
    """UPSAMPLE only: "nearest" (replication) or "bilinear" (``align_corners=False`` interpolation,
    integer weights over ``4 sh sw``, round half up; see the module docstring)."""
    depth_to_space: int = 1
    """DEPTH_TO_SPACE only: block size r >= 1; output pixel (i, j) of channel c copies input channel
    ``c*r*r + (i % r)*r + j % r`` at pixel (i // r, j // r)."""
    # ADD
    add_multipliers: tuple[int, ...] = ()
    add_shift: int = 0
    add_table: ActTable | None = None
    """ADD only: a fused activation other than ReLU/clamp, applied to ``v = a*mult_a + b*mult_b``
    (``2**-add_shift`` output steps) instead of rounding and clamping."""

    @property
    def is_mvm(self) -> bool:
        return self.op in MVM_OPS

    @property
    def rows(self) -> int:
        """Rows of the logical matrix: C_in * kh * kw."""
        assert self.weight is not None
        return int(np.prod(self.weight.shape[1:]))

    @property
    def span(self) -> tuple[int, int]:
        """Input rows and columns one output pixel's window spans (the dilated kernel)."""
        return receptive_field(self.kernel, self.dilation)

    @property
    def c_out(self) -> int:
        assert self.weight is not None
        return int(self.weight.shape[0])


@dataclass(frozen=True, eq=False)
class QGraph:
    """A quantised network: a topologically ordered tuple of QNodes over one input."""

    name: str
    input_name: str
    input: QTensor
    nodes: tuple[QNode, ...]
    output: str
    meta: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> QNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def spec(self, tensor: str) -> QTensor:
        """The QTensor of the graph input or of a node's output."""
        return self.input if tensor == self.input_name else self.node(tensor).out

    def mvm_nodes(self) -> list[QNode]:
        return [n for n in self.nodes if n.is_mvm]

    def verify(self) -> None:
        """Check invariants; raise QuantError naming the node and the problem."""
        seen = {self.input_name}
        for n in self.nodes:
            for i in n.inputs:
                if i not in seen:
                    raise QuantError(f"node {n.name!r} ({n.op.value}): input {i!r} is not produced before it")
            if n.name in seen:
                raise QuantError(f"node {n.name!r}: duplicate name")
            _verify_op_fields(n)
            if n.is_mvm:
                _verify_mvm(n, self.spec(n.inputs[0]))
            else:
                _verify_other(n, [self.spec(i) for i in n.inputs])
            seen.add(n.name)
        if self.output not in seen:
            raise QuantError(f"graph output {self.output!r} is not produced by any node")

    # --- JSON -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(_encode(self), indent=1)

    @staticmethod
    def from_json(text: str, where: str = "QGraph JSON") -> "QGraph":
        """Decode :meth:`to_json` text; QuantError naming ``where`` if it is not a QGraph."""
        return load_json_object(text, "QGraph", QuantError, where,
                                "give a file written by QGraph.save or 'imcflow' itself", _decode)

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write(self.to_json())

    @staticmethod
    def load(path: str) -> "QGraph":
        """Read a QGraph saved by :meth:`save`; QuantError if the file holds none."""
        text = read_json_file(path, QuantError, "give a .qgraph.json written by QGraph.save")
        return QGraph.from_json(text, str(path))

    def __str__(self) -> str:
        lines = [f"QGraph {self.name}: input {self.input_name} {self.input.shape} "
                 f"{self.input.bits}b{'s' if self.input.signed else 'u'}"]
        for n in self.nodes:
            extra = ""
            if n.is_mvm:
                extra = (f" w{n.w_bits}b rows={n.rows} c_out={n.c_out} fs={n.adc_full_scale_rows}")
            lines.append(f"  {n.name:<16} {n.op.value:<15} <- {','.join(n.inputs):<24} "
                         f"out {n.out.shape} {n.out.bits}b{'s' if n.out.signed else 'u'}{extra}")
        return "\n".join(lines)


def _verify_mvm(n: QNode, x: QTensor) -> None:
    if n.weight is None or n.requant is None or n.w_scale is None:
        raise QuantError(f"layer {n.name!r} ({n.op.value}): missing weight, w_scale or requant")
    lo, hi = -(1 << (n.w_bits - 1)), (1 << (n.w_bits - 1)) - 1
    if n.weight.size and (n.weight.min() < lo or n.weight.max() > hi):
        raise QuantError(f"layer {n.name!r}: weights outside {n.w_bits}-b signed range [{lo}, {hi}]")
    if n.adc_full_scale_rows <= 0:
        raise QuantError(f"layer {n.name!r}: adc_full_scale_rows must be > 0")
    c_in = n.weight.shape[1]
    if x.shape[0] != c_in:
        raise QuantError(f"layer {n.name!r}: weight expects {c_in} input channels, input has {x.shape[0]}")
    rq = n.requant
    if rq.multiplier.shape != (n.c_out,) or rq.bias.shape != (n.c_out,):
        raise QuantError(f"layer {n.name!r}: requant multiplier {rq.multiplier.shape} and bias {rq.bias.shape} "
                         f"must have one entry per output channel ({n.c_out},)")
    if rq.shift < 1:
        raise QuantError(f"layer {n.name!r}: requant shift {rq.shift} must be >= 1")
    if not n.out.min_int <= rq.out_min <= rq.out_max <= n.out.max_int:
        raise QuantError(f"layer {n.name!r}: requant clamp [{rq.out_min}, {rq.out_max}] must lie inside the "
                         f"output's {n.out.bits}-b range [{n.out.min_int}, {n.out.max_int}]")
    if rq.has_table:
        rq.table.verify(f"layer {n.name!r}", rq.out_min, rq.out_max)


_SAME_SPEC = (QOp.MAXPOOL, QOp.AVGPOOL, QOp.GLOBAL_AVGPOOL, QOp.FLATTEN, QOp.CONCAT, QOp.UPSAMPLE,
              QOp.DEPTH_TO_SPACE)


def _verify_op_fields(n: QNode) -> None:
    """Only the owner op of each :data:`_OP_FIELDS` field sets it."""
    for key, (owner, default) in _OP_FIELDS.items():
        value = getattr(n, key)
        if (tuple(value) if isinstance(default, tuple) else value) != default and n.op is not owner:
            raise QuantError(f"node {n.name!r} ({n.op.value}): {key} {value} is for {owner.value} nodes only")


def _verify_other(n: QNode, ins: list[QTensor]) -> None:
    arity = 2 if n.op is QOp.ADD else (len(ins) if n.op is QOp.CONCAT else 1)
    if n.op is QOp.MAXPOOL and min(n.pad_end) < 0:
        raise QuantError(f"maxpool {n.name!r}: pad_end {tuple(n.pad_end)} must be >= 0")
    if len(ins) != arity or not ins:
        raise QuantError(f"node {n.name!r} ({n.op.value}): takes {arity} input(s), got {len(ins)}")
    if n.op in (QOp.UPSAMPLE, QOp.DEPTH_TO_SPACE):
        _verify_move_shape(n, ins[0])
    if n.op is QOp.ADD:
        if len(n.add_multipliers) != 2 or n.add_shift < 1:
            raise QuantError(f"add {n.name!r}: needs two add_multipliers and add_shift >= 1, got "
                             f"{n.add_multipliers} and {n.add_shift}")
        if ins[0].shape != ins[1].shape:
            raise QuantError(f"add {n.name!r}: input shapes {ins[0].shape} and {ins[1].shape} differ")
        if n.add_table is not None:
            n.add_table.verify(f"add {n.name!r}", n.out.min_int, n.out.max_int)
    elif n.op in _SAME_SPEC:
        for x in ins:  # these ops move integers without rescaling them
            if (x.bits, x.signed, x.scale) != (n.out.bits, n.out.signed, n.out.scale):
                raise QuantError(f"node {n.name!r} ({n.op.value}): its inputs and output need the same bits, "
                                 f"signedness and scale; input has ({x.bits}, {x.signed}, {x.scale}), output "
                                 f"({n.out.bits}, {n.out.signed}, {n.out.scale})")


_OP_FIELDS = {"pad_end": (QOp.MAXPOOL, (0, 0)), "upsample": (QOp.UPSAMPLE, (1, 1)),
              "upsample_mode": (QOp.UPSAMPLE, "nearest"),
              "depth_to_space": (QOp.DEPTH_TO_SPACE, 1), "add_table": (QOp.ADD, None)}
"""QNode fields that only one op may set: field -> (that op, the default every other node keeps)."""


def _verify_move_shape(n: QNode, x: QTensor) -> None:
    """An UPSAMPLE's or DEPTH_TO_SPACE's factor fits its input, and its output shape is what it makes."""
    if n.op is QOp.UPSAMPLE:
        if n.upsample_mode not in UPSAMPLE_MODES:
            raise QuantError(f"upsample {n.name!r}: upsample_mode {n.upsample_mode!r} is not one of "
                             f"{UPSAMPLE_MODES}; re-quantise the graph")
        (sh, sw), what = n.upsample, f"factors {tuple(n.upsample)}"
        ok = min(sh, sw) >= 1 and len(x.shape) == 3
        want = (x.shape[0], x.shape[1] * sh, x.shape[2] * sw) if ok else ()
    else:
        r, what = n.depth_to_space, f"block {n.depth_to_space}"
        ok = r >= 1 and len(x.shape) == 3 and x.shape[0] % (r * r) == 0
        want = (x.shape[0] // (r * r), x.shape[1] * r, x.shape[2] * r) if ok else ()
    if not ok:
        raise QuantError(f"{n.op.value} {n.name!r}: {what} must be >= 1 and fit the input, a (C, H, W) map "
                         f"(C a multiple of r*r for depth to space), got shape {x.shape}")
    if tuple(n.out.shape) != want:
        raise QuantError(f"{n.op.value} {n.name!r}: output shape {n.out.shape} but {x.shape} with {what} "
                         f"gives {want}; re-quantise the graph")


UPSAMPLE_MODES = ("nearest", "bilinear")
"""Values of :attr:`QNode.upsample_mode`."""


def bilinear_taps(size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (``align_corners=False``) upsampling of an axis of ``size`` pixels by an integer
    ``factor`` s: per output index y, the taps ``i0, i1`` and integer weights ``w0, w1`` (over 2s,
    ``w0 + w1 = 2s``) of ``x[y'] = (w0 x[i0] + w1 x[i1]) / 2s``. The source position times 2s is
    ``2y + 1 - s``, clamped below at 0; ``i1`` is clamped to ``size - 1``."""
    num = np.maximum(2 * np.arange(size * factor, dtype=np.int64) + 1 - factor, 0)
    i0 = num // (2 * factor)
    w1 = num - 2 * factor * i0
    return i0, np.minimum(i0 + 1, size - 1), 2 * factor - w1, w1


def receptive_field(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Extent ``(k - 1) * d + 1`` per axis of a ``kernel`` window whose taps are ``dilation`` apart."""
    return tuple((int(k) - 1) * int(d) + 1 for k, d in zip(kernel, dilation))


def input_rows(node: QNode, y0: int, y1: int, h_in: int) -> tuple[int, int]:
    """Input rows [lo, hi] (inclusive) that output rows ``y0 .. y1`` of a CONV, pooling, UPSAMPLE or
    DEPTH_TO_SPACE ``node`` read: a nearest upsample's row y copies input row ``y // sh``, a bilinear
    one's reads rows ``floor(max(0, (y + 1/2) / sh - 1/2))`` and the next (at most ``h_in - 1``), a
    depth-to-space's row y input row ``y // r``; a window op's rows span its (dilated) receptive
    fields, clipped to the ``h_in`` input rows."""
    if node.op is QOp.UPSAMPLE:
        sh = node.upsample[0]
        if node.upsample_mode == "bilinear":   # floor((2y + 1 - sh) / 2sh), in integers
            return max(0, (2 * y0 + 1 - sh) // (2 * sh)), min(h_in - 1, (2 * y1 + 1 - sh) // (2 * sh) + 1)
        return y0 // sh, y1 // sh
    if node.op is QOp.DEPTH_TO_SPACE:
        return y0 // node.depth_to_space, y1 // node.depth_to_space
    lo = y0 * node.stride[0] - node.padding[0]
    return max(0, lo), min(h_in - 1, y1 * node.stride[0] - node.padding[0] + node.span[0] - 1)


def window_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, pad_end: int = 0) -> int:
    """Output length of a sliding window along one axis (``padding`` on both sides, ``pad_end`` more
    at the end)."""
    return (size + 2 * padding + pad_end - (kernel - 1) * dilation - 1) // stride + 1


def ceil_pad_end(size: int, kernel: int, stride: int, padding: int) -> int:
    """Extra end padding that gives a pooling window PyTorch's / ONNX's ``ceil_mode`` output length:
    ceil((size + 2 padding - kernel) / stride) + 1 windows, less one if the last would start in the
    end padding."""
    out = -(-(size + 2 * padding - kernel) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return max(0, (out - 1) * stride + kernel - size - 2 * padding)


def row_tiles(c_in: int, kh: int, kw: int, array_rows: int) -> list[tuple[int, int]]:
    """Split a layer's input channels into near-equal contiguous groups [c0, c1) whose
    rows (group size x kh x kw) each fit in ``array_rows``. One group per row tile.

    Shared by the reference executor, training, compiler and simulator, so that every one of them
    sends the same rows through the same ADCs.
    """
    per_channel = kh * kw
    if per_channel > array_rows:
        raise QuantError(f"a {kh}x{kw} kernel needs {per_channel} rows per input channel, "
                         f"more than the array's {array_rows} rows")
    max_ch = array_rows // per_channel
    n = math.ceil(c_in / max_ch)
    base, extra = divmod(c_in, n)
    bounds, c0 = [], 0
    for t in range(n):
        c1 = c0 + base + (1 if t < extra else 0)
        bounds.append((c0, c1))
        c0 = c1
    return bounds


def simd_lane_ops(qgraph: QGraph, name: str) -> int:
    """SIMD lane operations per image of the SIMD-only node ``name``: pooling one per window
    element, global average pooling one per input element, a residual add two per output (plus an
    activation table's search), a
    nearest upsample one per output element (the output buffer writes each value sh*sw times), a
    bilinear upsample five per output element (4 multiply-adds and a rounding shift; model assumption
    [A]), a depth-to-space one per output element (each value written once in its new place); the
    compiler's cost model and the simulator both count with this."""
    node = qgraph.node(name)
    out = math.prod(node.out.shape)
    if node.op in (QOp.MAXPOOL, QOp.AVGPOOL):
        return out * node.kernel[0] * node.kernel[1]
    if node.op == QOp.GLOBAL_AVGPOOL:
        return math.prod(qgraph.spec(node.inputs[0]).shape)
    if node.op == QOp.ADD:
        return (2 + (node.add_table.search_ops if node.add_table is not None else 0)) * out
    if node.op is QOp.UPSAMPLE and node.upsample_mode == "bilinear":
        return 5 * out
    if node.op in (QOp.UPSAMPLE, QOp.DEPTH_TO_SPACE):
        return out
    return 0


def pick_full_scale(rows_used: int, full_scales_rows: tuple[int, ...]) -> int:
    """Default ADC full scale for a tile using ``rows_used`` rows: the smallest programmable full
    scale that is >= rows_used (so a column cannot clip), or the largest if none is."""
    fitting = [fs for fs in full_scales_rows if fs >= rows_used]
    return min(fitting) if fitting else max(full_scales_rows)


# --- JSON encoding of numpy arrays, enums and nested dataclasses ---------------------------

_encode = encode

_TYPES = {"QTensor": QTensor, "ActTable": ActTable, "Requant": Requant, "QNode": QNode, "QGraph": QGraph}


def _decode(obj: Any) -> Any:
    return decode(obj, _TYPES, {"op": QOp}, keep_lists=("meta",))


def graphs_equal(a: QGraph, b: QGraph) -> bool:
    """Structural equality, arrays compared exactly (used by round-trip tests)."""
    return a.to_json() == b.to_json()
