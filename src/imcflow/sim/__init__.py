"""The simulator: a compiled Program run functionally (bit-exact integers) and in time (events).

- :func:`imcflow.sim.functional.run_program`: outputs of a Program on a batch of inputs in
  ideal, bit_true or analog mode, following its tiles, streams and phases; equal to
  :func:`imcflow.quant.reference.run_qgraph` in ideal and bit_true mode (the spine test).
- :func:`imcflow.sim.report.simulate_timing` and :func:`imcflow.sim.report.make_report`:
  event-level timing (:mod:`imcflow.sim.lower` lowers the Program to operations,
  :mod:`imcflow.sim.timing` schedules them) and energy (:mod:`imcflow.sim.energy`), as a
  :class:`imcflow.ir.report.Report`.
"""
