"""Training of zoo networks (float pre-training, then quantisation-aware training with the chip's ADC),
and QAT of a user's float network given as an ONNX file.

``train(TrainConfig(...))`` runs or resumes a run; see :mod:`imcflow.train.loop`.
"""

from imcflow.train.checkpoint import TrainError
from imcflow.train.loop import EpochRecord, TrainConfig, TrainResult, evaluate, train

__all__ = ["EpochRecord", "TrainConfig", "TrainError", "TrainResult", "evaluate", "train"]
