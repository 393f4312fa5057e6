"""Quantisation: a normalized float Graph -> QGraph (integers as the chip computes them).

- :func:`calibrate` (:mod:`.calibrate`): post-training quantisation from calibration inputs.
- :func:`prepare_qat`, :func:`export_qgraph`, :class:`QatNet` (:mod:`.qat`): quantisation-aware
  training whose forward pass is the chip's arithmetic (``imcflow.pipeline.prepare_qat`` takes a
  torch module).
- :func:`run_qgraph` (:mod:`.reference`): the integer reference executor, the oracle of the whole
  stack; :func:`run_qgraph_fast` (:mod:`.fast_exec`) is equal to it and fast on batches.
- :func:`quantize_input` / :func:`dequantize_output`: float <-> integer at the graph's edges.
"""

from imcflow.quant.calibrate import QuantSpec, calibrate
from imcflow.quant.fast_exec import run_qgraph_fast
from imcflow.quant.qat import QatNet, export_qgraph, prepare_qat
from imcflow.quant.reference import dequantize_output, quantize_input, run_qgraph, run_qgraph_all

__all__ = ["QuantSpec", "calibrate", "run_qgraph_fast", "QatNet", "export_qgraph", "prepare_qat",
           "dequantize_output", "quantize_input", "run_qgraph", "run_qgraph_all"]
