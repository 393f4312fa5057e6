"""perf: the shared analytic performance model (see :mod:`imcflow.perf.model`)."""

from imcflow.perf.model import (PhaseEstimate, PhaseWork, ProgramEstimate, StreamWork, TileWork, array_time_s, bus_bits,
                                combine, estimate_phase, estimate_program, load_time_s, phase_work,
                                slot_schedule)

__all__ = ["PhaseEstimate", "PhaseWork", "ProgramEstimate", "StreamWork", "TileWork", "array_time_s", "bus_bits", "combine",
           "estimate_phase", "estimate_program", "load_time_s", "phase_work", "slot_schedule"]
