"""Typed errors. Every error a user can cause derives from :class:`ImcflowError`.

The CLI catches ``ImcflowError``, prints its message on one line and exits with status 2.
Messages name the problem (which layer, op, field or limit) and the fix.
"""


class ImcflowError(Exception):
    """Base class of every error imcflow raises on bad input."""


class ConfigError(ImcflowError, ValueError):
    """A chip configuration field is invalid, unknown, or a preset name is unknown."""


class CimaError(ImcflowError, ValueError):
    """An MVM request breaks a limit of the compute-in-memory array (bits, values, size)."""


class ModelError(ImcflowError, ValueError):
    """A network cannot be imported: unsupported op, bad weights, dynamic shapes, bad file."""


class QuantError(ImcflowError, ValueError):
    """A network cannot be quantised or a quantised graph is inconsistent."""


class CompileError(ImcflowError, ValueError):
    """A quantised network cannot be mapped onto the chip."""


class SimError(ImcflowError, ValueError):
    """A program cannot be simulated (bad inputs, inconsistent program)."""


class DataError(ImcflowError, ValueError):
    """A dataset path holds no recognised dataset, or inputs have the wrong shape."""
