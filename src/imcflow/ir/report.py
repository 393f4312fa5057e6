"""Report: the figures of merit of one compiled network simulated on one chip.

Produced by :func:`imcflow.sim.report.make_report` from a timing run and an energy account;
printed by :mod:`imcflow.report.tables`; saved with ``--json``. Every quantity carries its unit in
its name. Per-image quantities are averages over the simulated batch in steady state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from imcflow.errors import SimError
from imcflow.ir.serialize import decode, encode, load_json_object


@dataclass(frozen=True)
class CoreReport:
    """Where one core's time and energy went over the simulated run."""

    core: int
    """Core index (row-major in the grid)."""
    busy_s: float
    """Array evaluating bit-planes (compute)."""
    wait_input_s: float
    """Idle because the next operation's input had not arrived (upstream, OCN or off-chip)."""
    wait_output_s: float
    """Idle because the consumer's buffer was full (back-pressure)."""
    load_s: float
    """Array being written with weights (state swapping)."""
    idle_s: float
    """Holding no work at all (unused core, pipeline fill or drain)."""
    utilization: float
    """busy_s over the run time, times the fraction of the array's cells the busy tiles use."""
    energy_j: float
    """Dynamic energy of the events on this core over the run (array, SIMD, buffers, control)."""


@dataclass(frozen=True)
class LayerReport:
    """One MVM layer (or SIMD-only op) of the network."""

    name: str
    op: str
    tiles: int
    """Tile placements (row tiles x column tiles x copies)."""
    cores: tuple[int, ...]
    macs_per_img: int
    """Multiply-accumulates per image (logical, whatever the tiling)."""
    array_busy_s_per_img: float
    """Array time summed over the layer's tiles, per image."""
    energy_per_img_j: float
    """Dynamic energy of this layer's events, per image."""


@dataclass(frozen=True)
class PhaseReport:
    """One weight phase of the run (a one-phase program has one): its time and what kept it busy."""

    index: int
    nodes: tuple[str, ...]
    """QGraph nodes computed in the phase, in graph order."""
    cores: int
    """Cores holding tiles of the phase."""
    time_s: float
    """Run time the phase adds for the whole simulated batch: from the end of the previous
    phase's last operation to the end of this phase's last one (its loads overlap the previous
    phase where cores are free)."""
    array_share: float
    """Array busy time summed over the phase's cores, over cores x time_s (1 = every array always
    evaluating)."""
    io_in_share: float
    """Off-chip input port busy time over time_s."""
    io_out_share: float
    """Off-chip output port busy time over time_s."""
    load_share: float
    """Weight bus busy time (this phase's loads) over time_s."""
    spill: str = ""
    """Layers of which the phase holds only a group of row tiles (partial-sum spill), e.g.
    ``fc0 rt[3:7) of 14, psums in+out``: 'in' when it reads the earlier groups' accumulators back
    from off-chip memory, 'out' when it writes its own there (not the last group); '' if none."""


@dataclass(frozen=True)
class Report:
    """Figures of merit of a network on a chip (see module doc)."""

    network: str
    chip: str
    batch: int
    """Images simulated for timing."""
    throughput_img_s: float
    """Steady-state images per second."""
    latency_s: float
    """Time from an image's first input bit entering the chip to its last output bit leaving,
    in steady state (mean over the batch)."""
    energy_per_img_j: float
    """Total energy (dynamic + static over the run) divided by images."""
    power_w: float
    """energy_per_img_j x throughput_img_s."""
    img_per_s_per_w: float
    """Images per joule (= throughput / power)."""
    tops: float
    """Achieved tera-operations per second (1 MAC = 2 ops) at the measured throughput."""
    tops_per_w: float
    """Achieved tera-operations per joule."""
    utilization: float
    """Mean array utilisation: used cell-bit-plane evaluations over all cores' capacity."""
    run_time_s: float
    """Simulated time of the whole batch, weight loading included."""
    macs_per_img: int
    energy_breakdown_j_per_img: dict[str, float] = field(default_factory=dict)
    """Energy per image by event kind (column_eval, simd, buffer, ocn, weight_write, offchip,
    control, static)."""
    cores: tuple[CoreReport, ...] = ()
    layers: tuple[LayerReport, ...] = ()
    phases: tuple[PhaseReport, ...] = ()
    features: dict[str, Any] = field(default_factory=dict)
    """Switchable modelling features in force (e.g. zero bit-plane skipping) and their effect."""
    accuracy: float | None = None
    """Top-1 accuracy on --data, when measured."""
    notes: tuple[str, ...] = ()

    def verify(self) -> None:
        """Raise :class:`SimError` if a figure is negative, not finite or inconsistent."""
        for name in ("throughput_img_s", "latency_s", "energy_per_img_j", "power_w", "img_per_s_per_w",
                     "tops", "tops_per_w", "utilization", "run_time_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise SimError(f"Report.{name} = {v!r}: must be finite and >= 0")
        if self.utilization > 1 + 1e-9:
            raise SimError(f"Report.utilization = {self.utilization}: cannot exceed 1")
        if self.batch < 1:
            raise SimError(f"Report.batch = {self.batch}: must be >= 1")
        if self.energy_per_img_j > 0 and self.throughput_img_s > 0:
            if not math.isclose(self.power_w, self.energy_per_img_j * self.throughput_img_s, rel_tol=1e-6):
                raise SimError("Report.power_w differs from energy_per_img_j x throughput_img_s")
        if self.accuracy is not None and not 0 <= self.accuracy <= 1:
            raise SimError(f"Report.accuracy = {self.accuracy}: must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return encode(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @staticmethod
    def from_json(text: str, where: str = "Report JSON") -> "Report":
        """Decode :meth:`to_json` text; SimError naming ``where`` if it is not a Report."""
        return load_json_object(text, "Report", SimError, where, "give a file written by 'imcflow run --json'",
                                lambda obj: decode(obj, _TYPES, {}, keep_lists=("meta",)))

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write(self.to_json())


_TYPES = {"Report": Report, "CoreReport": CoreReport, "LayerReport": LayerReport, "PhaseReport": PhaseReport}
