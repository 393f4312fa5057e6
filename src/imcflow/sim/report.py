"""Timing and energy of a Program: lower it, run the event engine, count energy, make a Report.

Steady state: a one-phase program keeps its weights resident, so its throughput is measured from
the completion interval of the second half of the simulated images (pipeline filled) and the one-
time initial weight load is left out of the per-image energy. A program of several phases runs a
batch per phase in turn; its throughput is images / run time (loads and pipeline fill included)
and its per-image energy includes the loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imcflow.config.chip import ChipConfig
from imcflow.errors import SimError
from imcflow.ir.program import IN_PORT, OUT_PORT, Program, StreamKind
from imcflow.ir.report import CoreReport, LayerReport, PhaseReport, Report
from imcflow.sim.energy import EventCounts, dynamic_energy_j
from imcflow.sim.functional import FunctionalStats
from imcflow.sim.lower import Lowered, lower
from imcflow.sim.timing import CoreTimeline, OpKind, Schedule, core_timelines, run


@dataclass(frozen=True)
class Features:
    """Switchable modelling mechanisms (each documented in docs/calibration.md)."""

    skip_zero_bitplanes: bool = False
    """Skip evaluating an input bit-plane whose bits are all 0 over a tile's rows (it adds no
    charge to any column; the controller sees it in the input buffer). Needs measured activity
    (a functional run's :class:`FunctionalStats`); saves time and column energy."""
    unbounded_buffers: bool = False
    """Ignore the input-buffer capacity (no back-pressure), as the compiler's analytic model does.
    Off by default: with 16 KiB per core, residual skip paths (whose data must wait for the main
    path's latency) throttle ResNet-style networks."""


@dataclass
class TimingResult:
    """What one timing simulation produced."""

    lowered: Lowered
    schedule: Schedule
    timelines: list[CoreTimeline]
    images: int
    throughput_img_s: float
    latency_s: float
    run_time_s: float
    period_s: float
    """Steady-state time per image (1 / throughput)."""
    active_core_s: float = 0.0
    """Sum over phases of (cores used x time the phase runs): clocked core time, whole run."""
    notes: list[str] = field(default_factory=list)


def default_images(prog: Program) -> int:
    """Images to simulate: the program's batch for several phases (loads are amortised over it),
    else 16 (the pipeline fills within a few images; the second half gives the steady interval)."""
    return prog.batch if len(prog.phases) > 1 else 16


def simulate_timing(prog: Program, images: int | None = None, features: Features = Features(),
                    stats: FunctionalStats | None = None, max_chunks: int = 16) -> TimingResult:
    """Lower ``prog`` for ``images`` images and run the event engine."""
    images = default_images(prog) if images is None else images
    scale = None
    if features.skip_zero_bitplanes:
        if stats is None:
            raise SimError("feature skip_zero_bitplanes needs measured activity: run the program functionally "
                           "with stats=FunctionalStats() first")
        scale = _plane_fractions(prog, stats)
    low = lower(prog, images, max_chunks=max_chunks, bitplane_scale=scale,
                bounded_buffers=not features.unbounded_buffers)
    sched = run(low.ops)
    done = [max(sched.finish_s[o] for o in low.image_done[b]) for b in range(images)]
    start = [min(sched.start_s[o] for o in low.image_start[b]) if low.image_start[b] else 0.0 for b in range(images)]
    if len(prog.phases) == 1 and images >= 4:
        k0 = images // 2 - 1
        period = (done[-1] - done[k0]) / (images - 1 - k0)
        lat = [done[b] - start[b] for b in range(k0, images)]
    else:
        period = sched.makespan_s / images
        lat = [done[b] - start[b] for b in range(images)]
    if period <= 0:
        raise SimError(f"program {prog.name!r}: simulated time per image is {period} s")
    if len(prog.phases) == 1:  # steady state: the clocked cores for one period per image
        active = len(_used_cores(prog.phases[0])) * period * images
    else:
        active = _active_core_s(prog, low, sched)
    tl = core_timelines(low.ops, sched, prog.chip.n_cores)
    return TimingResult(low, sched, tl, images, 1.0 / period, sum(lat) / len(lat), sched.makespan_s, period,
                        active, list(low.notes))


def _used_cores(phase) -> set[int]:
    return {cp.core for cp in phase.cores if cp.tasks or cp.loads}


def _active_core_s(prog: Program, low: Lowered, sched: Schedule) -> float:
    """Sum over cores of the union over phases of [first op, last op] of the core's work in the
    phase: the time each core is clocked with a live program."""
    spans: dict[int, list[tuple[float, float]]] = {}
    first: dict[tuple[int, int], float] = {}
    last: dict[tuple[int, int], float] = {}
    for op in low.ops:
        if op.core < 0:
            continue
        k = (op.core, op.phase)
        first[k] = min(first.get(k, float("inf")), sched.start_s[op.id])
        last[k] = max(last.get(k, 0.0), sched.finish_s[op.id])
    for (core, _), t0 in first.items():
        spans.setdefault(core, []).append((t0, last[(core, _)]))
    total = 0.0
    for ivs in spans.values():
        end = -1.0
        for a, b in sorted(ivs):
            if b > end:
                total += b - max(a, end)
                end = b
    return total


def _plane_fractions(prog: Program, stats: FunctionalStats) -> dict[int, float]:
    """Measured fraction of input bit-planes with a 1, per tile id of ``prog``."""
    out = {}
    for ph in prog.phases:
        for t in ph.tiles:
            vec = stats.mvm_vectors.get(t.tile_id, 0)
            if vec:
                x_bits = prog.qgraph.spec(prog.qgraph.node(t.layer).inputs[0]).bits
                out[t.tile_id] = stats.nonzero_planes[t.tile_id] / (vec * x_bits)
    return out


def make_report(prog: Program, tr: TimingResult, accuracy: float | None = None,
                features: Features = Features()) -> Report:
    """The Report of a timing run (energy from its event counts and ``chip.energy``)."""
    chip: ChipConfig = prog.chip
    low, n = tr.lowered, tr.images
    one_phase = len(prog.phases) == 1
    per_img = 1.0 / n
    total = EventCounts()
    for c in low.counts.values():
        total = total + c
    if not one_phase:
        total = total + low.load_counts
    cyc_per_s = chip.clock.digital_hz
    total = total + EventCounts(control_cycles=tr.active_core_s * cyc_per_s)
    dyn = dynamic_energy_j(total.scaled(per_img), chip.energy)
    dyn["static"] = chip.energy.static_w * tr.period_s
    e_img = sum(dyn.values())
    macs_img = round(low.macs * per_img)
    thr = tr.throughput_img_s
    util = low.cell_bitplanes * per_img * thr * chip.bitplane_s / (chip.n_cores * chip.array.rows * chip.array.cols)
    cores = []
    for t in tr.timelines:
        cc = low.core_counts.get(t.core, EventCounts())
        e_core = sum(dynamic_energy_j(cc, chip.energy).values())
        cores.append(CoreReport(core=t.core, busy_s=t.busy_s, wait_input_s=t.wait_input_s,
                                wait_output_s=t.wait_output_s, load_s=t.load_s, idle_s=t.idle_s,
                                utilization=_core_util(prog, low, tr, t.core), energy_j=e_core))
    layers = []
    for node in prog.qgraph.nodes:
        cnt = low.counts.get(node.name)
        if cnt is None:
            continue
        macs = 0
        if node.is_mvm:
            macs = node.rows * node.c_out * (node.out.shape[1] * node.out.shape[2] if len(node.out.shape) == 3 else 1)
        layers.append(LayerReport(name=node.name, op=node.op.value, tiles=len(low.layer_tiles.get(node.name, ())),
                                  cores=tuple(sorted(low.layer_cores.get(node.name, ()))), macs_per_img=macs,
                                  array_busy_s_per_img=low.layer_array_s.get(node.name, 0.0) * per_img,
                                  energy_per_img_j=sum(dynamic_energy_j(cnt.scaled(per_img), chip.energy).values())))
    power = e_img * thr
    notes = list(tr.notes) + [f"compiler: {note}" for note in prog.mapping_notes]
    if prog.predicted.get("throughput_img_s"):
        notes.append(f"compiler's analytic model predicted {prog.predicted['throughput_img_s']:,.1f} img/s; "
                     f"event simulation gives {thr:,.1f} img/s")
    r = Report(network=prog.qgraph.name or prog.name, chip=chip.name, batch=n, throughput_img_s=thr,
               latency_s=tr.latency_s, energy_per_img_j=e_img, power_w=power,
               img_per_s_per_w=1.0 / e_img if e_img else 0.0, tops=2 * macs_img * thr / 1e12,
               tops_per_w=2 * macs_img / e_img / 1e12 if e_img else 0.0, utilization=min(1.0, util),
               run_time_s=tr.run_time_s, macs_per_img=macs_img, energy_breakdown_j_per_img=dyn,
               cores=tuple(cores), layers=tuple(layers), phases=phase_reports(prog, tr),
               features={"skip_zero_bitplanes": features.skip_zero_bitplanes,
                         "unbounded_buffers": features.unbounded_buffers, "phases": len(prog.phases),
                         "program_batch": prog.batch,
                         "model_throughput_img_s": float(prog.predicted.get("throughput_img_s", 0.0))},
               accuracy=accuracy, notes=tuple(notes))
    r.verify()
    return r


_SHARE_KINDS = {OpKind.COMPUTE: "array", OpKind.IO_IN: "io_in", OpKind.IO_OUT: "io_out", OpKind.LOAD: "load"}


def phase_reports(prog: Program, tr: TimingResult) -> tuple[PhaseReport, ...]:
    """Per phase: the run time it adds and the busy shares of its arrays, ports and weight bus.

    A phase whose shares are all well below 1 is bound by latency or back-pressure (data waiting
    in a chain of cores, or a full input buffer), not by a resource."""
    sched, ops = tr.schedule, tr.lowered.ops
    end = [0.0] * len(prog.phases)
    busy = [dict.fromkeys(_SHARE_KINDS.values(), 0.0) for _ in prog.phases]
    for op in ops:
        end[op.phase] = max(end[op.phase], sched.finish_s[op.id])
        kind = _SHARE_KINDS.get(op.kind)
        if kind:
            busy[op.phase][kind] += op.duration_s
    out, prev = [], 0.0
    for ph, t_end, b in zip(prog.phases, end, busy):
        time_s = max(0.0, t_end - prev)
        prev = max(prev, t_end)
        n = len(_used_cores(ph))
        out.append(PhaseReport(index=ph.index, nodes=tuple(ph.nodes), cores=n, time_s=time_s,
                               array_share=_share(b["array"], max(1, n) * time_s),
                               io_in_share=_share(b["io_in"], time_s), io_out_share=_share(b["io_out"], time_s),
                               load_share=_share(b["load"], time_s), spill=_spill_label(ph)))
    return tuple(out)


def _spill_label(phase) -> str:
    """:attr:`PhaseReport.spill` of one phase."""
    parts = []
    for c in phase.copies:
        if c.copy != 0 or c.rt_hi <= 0:
            continue
        acc = [s for s in phase.streams if s.kind == StreamKind.ACC and s.tensor == c.layer]
        ways = [w for w, on in (("in", any(s.src == IN_PORT for s in acc)),
                                ("out", any(OUT_PORT in s.dsts for s in acc))) if on]
        if ways:
            parts.append(f"{c.layer} rt[{c.rt_lo}:{c.rt_hi}), psums {'+'.join(ways)}")
    return "; ".join(parts)


def _share(busy_s: float, capacity_s: float) -> float:
    return min(1.0, busy_s / capacity_s) if capacity_s > 0 else 0.0


def _core_util(prog: Program, low: Lowered, tr: TimingResult, core: int) -> float:
    """Used cell-bit-plane evaluations of ``core`` over its capacity during the run."""
    if tr.run_time_s <= 0:
        return 0.0
    chip = prog.chip
    cap = chip.array.rows * chip.array.cols * tr.run_time_s / chip.bitplane_s
    return min(1.0, low.core_cell_bitplanes.get(core, 0.0) / cap)
