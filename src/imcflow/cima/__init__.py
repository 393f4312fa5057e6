"""The chip's arithmetic: bit-parallel/bit-serial MVMs of one compute-in-memory array (CIMA).

- :func:`mvm`: one array, fast (``fast.py``); :func:`imcflow.cima.reference.mvm_reference` is the
  slow loop version it is tested against, bit for bit.
- :func:`bpbs_conv2d`, :func:`bpbs_linear`: whole layers, row tile by row tile, as the chip computes
  them; :func:`bpbs_conv2d_ste`, :func:`bpbs_linear_ste`: the same forward with a straight-through
  gradient for training. Their definition is
  :func:`imcflow.cima.reference.bpbs_conv2d_reference` (im2col + row tiles + mvm).
"""

from imcflow.cima.common import Mode, MvmResult
from imcflow.cima.conv import bpbs_conv2d, bpbs_conv2d_ste, bpbs_linear, bpbs_linear_ste
from imcflow.cima.fast import mvm

__all__ = ["Mode", "MvmResult", "mvm", "bpbs_conv2d", "bpbs_conv2d_ste", "bpbs_linear", "bpbs_linear_ste"]
