"""The chip as data: frozen dataclasses that read like a datasheet.

Every field carries its meaning, unit and a tag from ``shared/docs/chip.md``:
[P] published for the JSSC 2022 chip, [D] derived from published values, [A] an assumption.
Nothing else in imcflow hard-codes a chip number; it reads it from a :class:`ChipConfig`.
Variants are made with :func:`dataclasses.replace` or :func:`imcflow.config.options.apply_overrides`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from imcflow.errors import ConfigError


MAX_ADC_BITS = 16
"""Largest ADC resolution a config may ask for (codes and their BPBS sums stay exact)."""


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(
                f"{type(obj).__name__}.{name} = {value!r}: must be > 0")


def _non_negative(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value >= 0:
            raise ConfigError(
                f"{type(obj).__name__}.{name} = {value!r}: must be >= 0")


@dataclass(frozen=True)
class ArrayConfig:
    """One compute-in-memory array (CIMA) of 1-b charge-domain cells."""

    rows: int = 1152
    """[P] Rows (inputs) per array; 1152 = 3 x 3 x 128. A column sums over all of them."""
    cols: int = 256
    """[P] Columns per array; a B_w-bit weight occupies B_w adjacent columns."""
    max_bits: int = 8
    """[P] Largest weight or input precision in bits supported by BPBS compute (1..max_bits)."""

    def __post_init__(self) -> None:
        _positive(self, "rows", "cols", "max_bits")


@dataclass(frozen=True)
class AdcConfig:
    """The per-column SAR ADCs that digitise each column's charge."""

    bits: int = 8
    """[P] ADC resolution in bits; codes run 0 .. 2**bits - 1."""
    rate_hz: float = 20e6
    """[P] Conversion rate per ADC: one input bit-plane per 1/rate_hz (50 ns)."""
    full_scales_rows: tuple[int, ...] = (1152, 576, 288, 144, 72, 36)
    """[A] Programmable full scales, in rows: code = clip(round(k * 2**bits / full_scale), 0, 2**bits-1).
    The quantiser picks one per layer; the compiler and simulator use the same choice."""
    lossless: bool = False
    """[A] True models an ideal ADC (code = k exactly), as the ``ideal`` preset does."""

    def __post_init__(self) -> None:
        _positive(self, "bits", "rate_hz")
        if not 1 <= self.bits <= MAX_ADC_BITS:
            raise ConfigError(f"AdcConfig.bits = {self.bits!r}: must be 1 .. {MAX_ADC_BITS} (the integer datapath "
                              f"keeps codes exact up to {MAX_ADC_BITS} b)")
        if not self.full_scales_rows or any(fs <= 0 for fs in self.full_scales_rows):
            raise ConfigError(
                f"AdcConfig.full_scales_rows = {self.full_scales_rows!r}: needs one or more positive row counts")


@dataclass(frozen=True)
class AnalogConfig:
    """Non-idealities used by the ``analog`` simulation mode only (bit_true ignores them)."""

    column_gain_sigma: float = 0.007
    """[A] Relative std. dev. of a column's gain, from ~0.7 % unit-capacitor mismatch."""
    column_offset_sigma_lsb: float = 0.05
    """[A] Std. dev. of a column's fixed offset, in ADC LSB, left after the ADC's offset
    calibration. A fixed offset repeats on every conversion of its column, so a column whose offset
    passes half an LSB errs systematically; the published chip's outputs match bit-true simulation
    (chip.md), which rules out a sizeable fraction of such columns. 0.05 LSB leaves none in
    practice; uncalibrated, 0.25 LSB (4.6 % of columns past half an LSB) cut cifar10-cnn11 from
    83 % to 47 % on 200 test images (``imcflow eval ... --mode analog --limit 200 --set
    analog.column_gain_sigma=0 --set analog.adc_noise_rms_lsb=0``)."""
    adc_noise_rms_lsb: float = 0.25
    """[A] RMS noise added per conversion, in ADC LSB."""

    def __post_init__(self) -> None:
        _non_negative(self, "column_gain_sigma", "column_offset_sigma_lsb", "adc_noise_rms_lsb")


@dataclass(frozen=True)
class SimdConfig:
    """The near-memory SIMD unit of a core (BPBS shift-add, scale, bias, ReLU, pooling, adds)."""

    lanes: int = 64
    """[A] SIMD lanes per core; each serves cols/lanes columns within a bit-plane window."""
    accumulator_bits: int = 32
    """[A] Width of the SIMD accumulators in bits (chip.md: 24 b or more)."""
    cycles_per_op: int = 1
    """[A] Digital cycles for one lane operation (add, multiply, compare)."""

    def __post_init__(self) -> None:
        _positive(self, "lanes", "accumulator_bits", "cycles_per_op")


@dataclass(frozen=True)
class BufferConfig:
    """Per-core buffers."""

    input_bytes: int = 16 * 1024
    """[A] Input line buffer that turns a streamed feature map into kernel windows (a dilated conv's
    taps d pixels apart: the window spans (k - 1) * d + 1 rows)."""
    output_bytes: int = 4 * 1024
    """[A] Output buffer."""
    instruction_words: int = 1024
    """[A] Instruction memory per core, in instructions."""

    def __post_init__(self) -> None:
        _positive(self, "input_bytes", "output_bytes", "instruction_words")


@dataclass(frozen=True)
class OcnConfig:
    """The statically configured, circuit-switched on-chip network between cores."""

    tracks_per_channel: int = 4
    """[A] Tracks in each channel between neighbouring switches."""
    track_bits: int = 32
    """[A] Bits one track carries per digital cycle."""
    hop_cycles: int = 1
    """[A] Digital cycles per registered switch hop."""

    def __post_init__(self) -> None:
        _positive(self, "tracks_per_channel", "track_bits", "hop_cycles")


@dataclass(frozen=True)
class WeightLoadConfig:
    """The separate weight-loading path ("state swapping")."""

    bus_bits: int = 64
    """[A] Off-chip weight bus width, bits per digital cycle (12.8 Gb/s at 200 MHz)."""
    array_write_bits_per_cycle: int = 256
    """[A] Bits written into one array per digital cycle."""
    broadcast_copies: bool = True
    """[A] One bus word may be written into several arrays' write ports at once, so the copies of a
    layer (tiles holding the same weights: same layer, row tile and output channels) cost one bus
    transfer, not one per copy. The weight-loading network is separate from the OCN and
    configurable (chip.md), so fanning a bus word out to several arrays is assumed; False makes
    every copy's weights a separate transfer (load volume grows with the copies)."""

    def __post_init__(self) -> None:
        _positive(self, "bus_bits", "array_write_bits_per_cycle")


@dataclass(frozen=True)
class IoConfig:
    """Off-chip activation input and output."""

    in_bits_per_cycle: int = 32
    """[A] Activation input bandwidth, bits per digital cycle."""
    out_bits_per_cycle: int = 32
    """[A] Activation output bandwidth, bits per digital cycle."""

    def __post_init__(self) -> None:
        _positive(self, "in_bits_per_cycle", "out_bits_per_cycle")


@dataclass(frozen=True)
class ClockConfig:
    """Clocks at the measured operating point (0.8 V)."""

    digital_hz: float = 200e6
    """[P] Digital clock: 200 MHz at 0.8 V (500 MHz was the design target)."""

    def __post_init__(self) -> None:
        _positive(self, "digital_hz")


@dataclass(frozen=True)
class EnergyTable:
    """Energy per event, in joules, and static power, in watts (see docs/calibration.md).

    Two constants are fitted, each to one published figure: ``column_eval_j`` to the 30 TOPS/W
    peak at 8 b, and ``control_cycle_j`` to the CIFAR-10 energy per image (51.5 k img/s/W).
    The others are 16 nm estimates scaled from published 45 nm figures (M. Horowitz, "Computing's
    energy problem", ISSCC 2014, Fig. 1.1.9: 32-b add 0.1 pJ, 8-kB SRAM 64-b access 10 pJ, at
    45 nm / 0.9 V), multiplied by ~0.3 for 16 nm at 0.8 V (capacitance ~x0.4, V^2 ~x0.8).
    """

    column_eval_j: float = 1.2e-12
    """[A, fitted to 30 TOPS/W at 8 b] One column bit-plane evaluation: array charge sharing
    plus one 8-b SAR conversion. 30 TOPS/W = 66.7 fJ per 8-b MAC; an 8-b MVM on one array is
    1152 x 32 MACs over 8 x 256 conversions, so 1152*32*66.7e-15 / 2048 = 1.2 pJ."""
    row_drive_j: float = 0.0
    """[A] Driving one row for one bit-plane. Kept inside column_eval_j (the 30 TOPS/W fit
    includes the row drivers of a dense MVM), so 0 here to avoid counting it twice."""
    simd_op_j: float = 0.1e-12
    """[A, Horowitz 2014 scaled] One SIMD lane operation: a 24-32-b add/shift (0.1 pJ at 45 nm,
    ~0.03 pJ at 16 nm) plus operand register reads and the multiplier share of requantisation."""
    buffer_bit_j: float = 0.05e-12
    """[A, Horowitz 2014 scaled] Reading or writing one bit of a core buffer: 8-kB SRAM, 10 pJ per
    64-b access at 45 nm = 0.16 pJ/bit, x0.3 for 16 nm."""
    ocn_bit_hop_j: float = 0.1e-12
    """[A] Moving one bit across one switch hop: ~1 mm of wire between neighbouring cores at
    ~0.08 pJ/bit/mm (on-chip wires barely scale; Horowitz 2014 / Dally) plus the hop register."""
    weight_write_bit_j: float = 0.05e-12
    """[A, Horowitz 2014 scaled] Writing one weight bit into an array (like an SRAM write)."""
    offchip_bit_j: float = 0.0
    """[A] Moving one bit on or off the chip; 0 counts chip power only, as the paper's
    efficiency figures do (DRAM/IO energy is outside the chip)."""
    control_cycle_j: float = 43.9e-12
    """[A, fitted to CIFAR-10's 51.5 k img/s/W] Clock tree, instruction sequencing and idle
    digital logic of one core per digital cycle while the core holds a live program (clocked):
    43.9 pJ x 200 MHz = 8.8 mW per core. The one constant fitted to a benchmark (docs/calibration.md)."""
    static_w: float = 0.0
    """[A] Static (leakage) power of the whole chip. Not separable from control_cycle_j with the
    two published benchmark points (both use all 16 cores), so folded into it."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _non_negative(self, f.name)


@dataclass(frozen=True)
class ChipConfig:
    """The whole accelerator: a grid of identical cores joined by an on-chip network."""

    name: str = "jssc2022"
    """Preset name this configuration came from (informational)."""
    grid_rows: int = 4
    """[P] Core grid rows."""
    grid_cols: int = 4
    """[P] Core grid columns (4 x 4 = 16 cores)."""
    array: ArrayConfig = field(default_factory=ArrayConfig)
    adc: AdcConfig = field(default_factory=AdcConfig)
    analog: AnalogConfig = field(default_factory=AnalogConfig)
    simd: SimdConfig = field(default_factory=SimdConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    ocn: OcnConfig = field(default_factory=OcnConfig)
    weight_load: WeightLoadConfig = field(default_factory=WeightLoadConfig)
    io: IoConfig = field(default_factory=IoConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    energy: EnergyTable = field(default_factory=EnergyTable)

    def __post_init__(self) -> None:
        _positive(self, "grid_rows", "grid_cols")

    @property
    def n_cores(self) -> int:
        """Number of cores (one array each)."""
        return self.grid_rows * self.grid_cols

    @property
    def bitplane_s(self) -> float:
        """[D] Time of one input bit-plane evaluation: one ADC conversion (50 ns)."""
        return 1.0 / self.adc.rate_hz

    @property
    def cycles_per_bitplane(self) -> int:
        """[D] Digital cycles per bit-plane (10 at 200 MHz and 20 MS/s)."""
        return max(1, round(self.clock.digital_hz / self.adc.rate_hz))

    def check_bits(self, bits: int, what: str) -> None:
        """Raise :class:`ConfigError` unless ``1 <= bits <= array.max_bits``."""
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= self.array.max_bits:
            raise ConfigError(
                f"{what} = {bits!r}: must be an integer from 1 to {self.array.max_bits} (array.max_bits)")
