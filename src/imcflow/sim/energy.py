"""Energy accounting: counts of every event of a run times the chip's :class:`EnergyTable`,
plus static power over the run time (shared/docs/chip.md, "Energy").

Counts are gathered by the simulator from the ops it schedules (and, for rows driven, from the
real input bit statistics of a functional run when one is given). Nothing here knows a network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from imcflow.config.chip import ChipConfig, EnergyTable


@dataclass(frozen=True)
class EventCounts:
    """How many times each energy-bearing event happened."""

    column_evals: float = 0.0
    """Column bit-plane evaluations: one column's charge sharing plus one ADC conversion."""
    rows_driven: float = 0.0
    """Row drives: a row whose input bit is 1 in a bit-plane (zero bits are not driven)."""
    simd_ops: float = 0.0
    """SIMD lane operations (BPBS shift-add, partial-sum add, scale/bias/round, pooling, add)."""
    buffer_bits: float = 0.0
    """Bits written to or read from core input/output buffers."""
    ocn_bit_hops: float = 0.0
    """Bits times switch hops on the on-chip network."""
    weight_bits: float = 0.0
    """Weight bits written into arrays."""
    offchip_bits: float = 0.0
    """Activation and weight bits moved on or off the chip."""
    control_cycles: float = 0.0
    """Digital cycles during which a core is active (array, SIMD or loading)."""

    def __add__(self, other: "EventCounts") -> "EventCounts":
        return EventCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                              for f in dataclasses.fields(self)})

    def scaled(self, k: float) -> "EventCounts":
        """Every count times ``k`` (e.g. 1 / images)."""
        return EventCounts(**{f.name: getattr(self, f.name) * k for f in dataclasses.fields(self)})


# event-count field -> (energy-table field, breakdown key)
_PRICES = (
    ("column_evals", "column_eval_j", "column_eval"),
    ("rows_driven", "row_drive_j", "row_drive"),
    ("simd_ops", "simd_op_j", "simd"),
    ("buffer_bits", "buffer_bit_j", "buffer"),
    ("ocn_bit_hops", "ocn_bit_hop_j", "ocn"),
    ("weight_bits", "weight_write_bit_j", "weight_write"),
    ("offchip_bits", "offchip_bit_j", "offchip"),
    ("control_cycles", "control_cycle_j", "control"),
)


def dynamic_energy_j(counts: EventCounts, table: EnergyTable) -> dict[str, float]:
    """Dynamic energy by event kind, in joules."""
    return {key: getattr(counts, cnt) * getattr(table, price) for cnt, price, key in _PRICES}


def energy_breakdown_j(counts: EventCounts, table: EnergyTable, time_s: float) -> dict[str, float]:
    """Dynamic energy by kind plus ``static`` = static power x ``time_s``."""
    out = dynamic_energy_j(counts, table)
    out["static"] = table.static_w * time_s
    return out


def mvm_counts(chip: ChipConfig, rows: int, cols: int, x_bits: int, vectors: int = 1,
               row_density: float = 0.5) -> EventCounts:
    """Array events of ``vectors`` MVMs of a ``rows`` x ``cols`` (physical columns) tile with
    ``x_bits``-bit inputs; ``row_density`` is the fraction of input bits that are 1."""
    evals = float(vectors) * x_bits
    return EventCounts(column_evals=evals * cols, rows_driven=evals * rows * row_density)
