"""Turn a trained float network into its QAT twin, using the quantiser's modules (imcflow.quant.qat)."""

from __future__ import annotations

from torch import nn

from imcflow.train.checkpoint import TrainError


def to_qat(model: nn.Module, cfg) -> nn.Module:
    """The QAT version of float ``model`` at ``cfg.w_bits``/``cfg.x_bits`` (first layer input ``cfg.first_x_bits``)."""
    try:
        from imcflow.quant import qat
    except ModuleNotFoundError as exc:
        raise TrainError("the QAT phase needs imcflow.quant.qat, which this installation lacks; "
                         "run with --epochs-qat 0") from exc
    raise TrainError(f"imcflow.quant.qat has no converter this trainer knows ({', '.join(dir(qat))}); "
                     "run with --epochs-qat 0")
