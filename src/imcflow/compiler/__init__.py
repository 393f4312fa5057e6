"""compiler: QGraph + ChipConfig -> Program (tiling, placement, routing, codegen); see pipeline.py."""

from imcflow.compiler.pipeline import compile_qgraph

__all__ = ["compile_qgraph"]
