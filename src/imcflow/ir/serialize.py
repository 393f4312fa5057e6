"""JSON encoding shared by the IR types: numpy arrays as base64, enums by value, dataclasses by name.

One copy for every IR module (:mod:`imcflow.ir.graph`, :mod:`imcflow.ir.qgraph`, ...). Each module
passes its own table of dataclass names and of enum-valued fields to :func:`decode`.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
from typing import Any, Callable

import numpy as np


def encode(obj: Any) -> Any:
    """``obj`` as plain JSON-able values (arrays keep dtype and shape exactly)."""
    if isinstance(obj, np.ndarray):
        return {"__nd__": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode(),
                "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj):
        return {"__dc__": type(obj).__name__,
                **{f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def decode(obj: Any, types: dict[str, type], enums: dict[str, type[enum.Enum]],
           keep_lists: tuple[str, ...] = ("meta",)) -> Any:
    """Inverse of :func:`encode`. ``types`` maps dataclass names to classes; ``enums`` maps a field
    name to the enum its value belongs to. List-valued fields become tuples (nested lists too,
    one level), except fields named in ``keep_lists``."""
    if isinstance(obj, dict) and "__nd__" in obj:
        return np.frombuffer(base64.b64decode(obj["__nd__"]), dtype=obj["dtype"]).reshape(obj["shape"]).copy()
    if isinstance(obj, dict) and "__dc__" in obj:
        cls = types[obj["__dc__"]]
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in obj:
                continue
            v = decode(obj[f.name], types, enums, keep_lists)
            if f.name in enums:
                v = enums[f.name](v)
            elif isinstance(v, list) and f.name not in keep_lists:
                v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            kwargs[f.name] = v
        return cls(**kwargs)
    if isinstance(obj, list):
        return [decode(v, types, enums, keep_lists) for v in obj]
    if isinstance(obj, dict):
        return {k: decode(v, types, enums, keep_lists) for k, v in obj.items()}
    return obj


def load_json_object(text: str, kind: str, error: type[Exception], where: str, fix: str,
                     decoder: Callable[[dict], Any]) -> Any:
    """Decode the JSON text of one IR value of dataclass ``kind`` with ``decoder``; anything else
    (invalid JSON, another kind, a malformed body) raises ``error`` naming ``where`` and ``fix``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(obj, dict) or obj.get("__dc__") != kind:
        raise error(f"{where}: holds no {kind}; {fix}")
    try:
        return decoder(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise error(f"{where}: malformed {kind} ({type(exc).__name__}: {exc}); {fix}") from None


def read_json_file(path: str, error: type[Exception], fix: str) -> str:
    """The text of the JSON file ``path``; ``error`` naming the file and ``fix`` if it is binary."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError:
        raise error(f"{path}: not a text (JSON) file; {fix}") from None
