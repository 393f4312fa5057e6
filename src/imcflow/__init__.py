"""imcflow: a software model of the programmable in-memory-computing accelerator of
Jia et al., IEEE JSSC 57(1), 2022: quantise, compile, simulate bit-true, and report."""

from imcflow.errors import ImcflowError

__version__ = "0.1.0"
__all__ = ["ImcflowError", "__version__"]
