"""The compiler as one readable list of passes: tiling -> partition -> placement -> routing -> codegen
-> batch -> verify.

``compile_qgraph(qgraph, chip)`` returns a verified :class:`imcflow.ir.program.Program`.
"""

from __future__ import annotations

import dataclasses

from imcflow.compiler.codegen import emit_phase
from imcflow.compiler.partition import PLAN_BATCH, port_streams
from imcflow.compiler.placement import (OBJECTIVES, PhasePlan, fewer_copies, localised, phase_work_of, place,
                                       place_phase, split_plan)
from imcflow.compiler.routing import phase_streams, route_phase
from imcflow.compiler.tiling import LayerTiling, tile_graph
from imcflow.config.chip import ChipConfig
from imcflow.errors import CompileError, ImcflowError
from imcflow.ir.program import Phase, Program
from imcflow.ir.qgraph import QGraph
from imcflow.perf.model import ProgramEstimate, combine, estimate_phase, phase_work

LOAD_FRACTION = 0.05
"""Default ceiling on the share of time (throughput: weight loading plus pipeline fill, both paid
once per batch) or energy (energy objective: weight loading) spent on per-batch overhead in a
multi-phase program; the batch is the smallest one that keeps the overhead below it.
At 5 % a larger batch could gain at most ~5 % throughput, while latency and the off-chip memory
holding the batch's activations grow in proportion to the batch."""
MAX_BATCH = 4096
"""Largest batch the compiler picks by itself."""


def compile_qgraph(qgraph: QGraph, chip: ChipConfig, objective: str = "throughput", batch: int | None = None,
                   load_fraction: float = LOAD_FRACTION) -> Program:
    """Map ``qgraph`` onto ``chip``, optimising ``objective`` (throughput, latency or energy).

    ``batch`` fixes the images per phase pass; by default the compiler chooses it (see
    :func:`choose_batch`). Raises CompileError naming the layer and the limit when the network
    cannot be mapped."""
    if objective not in OBJECTIVES:
        raise CompileError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if batch is not None and batch < 1:
        raise CompileError(f"batch = {batch}: must be >= 1")
    try:
        qgraph.verify()
    except ImcflowError as exc:
        raise CompileError(f"the QGraph is inconsistent: {exc}") from None
    tilings = tile_graph(qgraph, chip)
    plans = place(qgraph, tilings, chip, objective)
    notes: list[str] = []
    phases = _route_all(qgraph, tilings, chip, plans, objective, notes)
    program = Program(name=qgraph.name, qgraph=qgraph, chip=chip, phases=phases, batch=1, batch_reason="",
                      objective=objective)
    estimates = [estimate_phase(phase_work(program, ph), chip) for ph in phases]
    chosen, reason = choose_batch(estimates, chip, objective, batch, load_fraction)
    final = combine(estimates, chosen, chip)
    program = Program(name=qgraph.name, qgraph=qgraph, chip=chip, phases=phases, batch=chosen,
                      batch_reason=reason, objective=objective, predicted=final.as_dict(), mapping_notes=tuple(notes))
    program.verify()
    return program


def _needed_later(qgraph: QGraph, plans: list[PhasePlan], index: int) -> set[str]:
    later = {qgraph.output}
    for plan in plans[index + 1:]:
        for name in plan.nodes:
            later.update(qgraph.node(name).inputs)
    return later


def _route_all(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, plans: list[PhasePlan],
               objective: str, notes: list[str]) -> tuple[Phase, ...]:
    """Route and emit every phase. A phase that cannot be routed is first re-packed for locality
    (same copies, fewer streams), then re-placed with fewer copies (the layer with the most output
    pieces keeps about three quarters, step by step), each again with its locality re-packing,
    until every layer has one copy; then with fewer streams from the input port; then it is cut
    into two phases (each placed afresh). What was given up is appended to ``notes``."""
    phases: list[Phase] = []
    while len(phases) < len(plans):
        i = len(phases)
        plan: PhasePlan | None = dataclasses.replace(plans[i], index=i)
        later = _needed_later(qgraph, plans, i)
        emitted = None
        while plan is not None and emitted is None:
            emitted = _try_route(qgraph, tilings, chip, plan, later)
            if emitted is None:
                local = localised(qgraph, tilings, chip, plan, objective)
                emitted = None if local is None else _try_route(qgraph, tilings, chip, local, later)
            if emitted is None:
                last = plan
                plan = fewer_copies(qgraph, tilings, chip, plan, objective)
        if emitted is None:  # one copy each: last, fewer streams from the input port
            splits = tuple(sorted({port_streams(chip), 1}, reverse=True))
            emitted = _try_route(qgraph, tilings, chip, last, later, splits)
        if emitted is None:
            notes.append(f"phase {i} ({len(last.nodes)} nodes) did not route even with one copy per layer; "
                         f"cut into two phases")
            plans = plans[:i] + _split(qgraph, tilings, chip, last, objective) + plans[i + 1:]
        else:
            notes.extend(_copies_note(i, plans[i].copies, emitted))
            phases.append(emitted)
    return tuple(phases)


def _copies_note(index: int, planned: dict[str, int], phase: Phase) -> list[str]:
    """A note when phase ``index`` was routed with fewer copies than its balanced plan gave."""
    routed = {c.layer: c.n_copies for c in phase.copies}
    cut = {layer: (n, routed.get(layer, n)) for layer, n in planned.items() if routed.get(layer, n) < n}
    if not cut:
        return []
    which = ", ".join(f"{layer} x{a} -> x{b}" for layer, (a, b) in cut.items())
    return [f"phase {index}: the balanced copies did not route on the on-chip network; routed with fewer ({which})"]


def _try_route(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, plan: PhasePlan,
               later: set[str], port_splits: tuple[int, ...] = (0,)) -> Phase | None:
    """The phase routed and emitted, or None. ``port_splits``: the limits on the streams each
    input-port piece is cut into, tried in turn (0: as many as a track's share of the stage needs;
    fewer streams route more easily but each carries more)."""
    work, _ = phase_work_of(qgraph, plan.nodes, plan.placed, tilings, plan.col_tiles, plan.copies)
    array_s = max(max(estimate_phase(work, chip).core_array_s.values(), default=0.0), plan.floor_s)
    merge_bits = array_s * chip.clock.digital_hz * chip.ocn.track_bits
    for split in port_splits:
        specs = phase_streams(qgraph, plan, tilings, later, chip, merge_bits, split)
        try:
            perm, routes = route_phase(plan, qgraph, chip, specs)
        except CompileError:
            continue
        return emit_phase(plan, qgraph, tilings, chip, specs, perm, routes)
    return None


def _split(qgraph: QGraph, tilings: dict[str, LayerTiling], chip: ChipConfig, plan: PhasePlan,
           objective: str) -> list[PhasePlan]:
    halves = split_plan(plan)
    if halves is None:
        raise CompileError(f"phase {plan.index} (layer {plan.nodes}): even one column tile cannot be routed on the "
                           f"{chip.grid_rows}x{chip.grid_cols} mesh with {chip.ocn.tracks_per_channel} tracks per "
                           f"channel (ocn.tracks_per_channel); raise it or use a larger grid")
    # each half keeps the phase's I/O floor and fill weight (its own I/O is at least as large, as
    # the cut tensor leaves and returns through the ports)
    return [place_phase(qgraph, tilings, chip, objective, plan.index, nodes, cts, plan.floor_s,
                        fill_weight=plan.fill_weight or 1.0 / PLAN_BATCH, rts=plan.row_tiles) for nodes, cts in halves]


def choose_batch(estimates, chip: ChipConfig, objective: str, batch: int | None,
                 load_fraction: float = LOAD_FRACTION) -> tuple[int, str]:
    """The batch per phase pass and the reason for it.

    - given by the user: used as is;
    - one phase: weights load once and stay resident, so the batch does not change steady-state
      figures; 1;
    - latency: 1 (every image waits for its whole batch to pass each phase);
    - throughput: the smallest batch whose per-batch overhead (weight loading plus the pipeline
      fill of every phase, both paid once per pass) takes at most ``load_fraction`` of the time;
    - energy: the smallest batch whose weight loading takes at most ``load_fraction`` of the energy.
    """
    if batch is not None:
        return batch, f"batch {batch} set by the user"
    if len(estimates) == 1:
        return 1, ("one phase: the weights are loaded once and stay resident, so the batch does not change "
                   "steady-state throughput; images stream through continuously")
    if objective == "latency":
        return 1, "latency objective: batch 1, so no image waits for others at any phase"
    load = sum(p.load_time_s for p in estimates)
    if objective == "energy":
        load_e = sum(p.load_energy_j for p in estimates)
        run_e = sum(p.energy_j for p in estimates)
        b = _smallest(lambda n: load_e / n <= load_fraction * (run_e + load_e / n))
        share = (load_e / b) / (run_e + load_e / b) if load_e else 0.0
        return b, (f"energy objective: smallest batch whose weight loading ({load_e * 1e6:.1f} uJ per pass over "
                   f"{len(estimates)} phases) is at most {load_fraction:.0%} of the energy per image: "
                   f"{share:.1%} at batch {b}")
    fill = sum(p.latency_s for p in estimates)

    def overhead(n: int) -> float:
        return (load + fill) / n / combine(estimates, n, chip).time_per_image_s

    b = _smallest(lambda n: overhead(n) <= load_fraction)
    est: ProgramEstimate = combine(estimates, b, chip)
    run = sum(p.stage_time_s for p in estimates)
    return b, (f"throughput objective: smallest batch whose per-batch overhead (weight loading {load * 1e3:.3f} ms "
               f"+ pipeline fill {fill * 1e3:.3f} ms per pass over {len(estimates)} phases, vs {run * 1e6:.1f} us "
               f"of stage time per image) is at most {load_fraction:.0%} of the time: {overhead(b):.1%} at batch {b} "
               f"(loading alone {est.load_fraction:.1%}), {est.throughput_img_s:.1f} img/s")


def _smallest(ok) -> int:
    """Smallest n in 1..MAX_BATCH with ok(n) (ok is monotone), else MAX_BATCH."""
    if ok(1):
        return 1
    lo, hi = 1, MAX_BATCH
    if not ok(hi):
        return MAX_BATCH
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


__all__ = ["compile_qgraph", "choose_batch", "LOAD_FRACTION", "MAX_BATCH"]
