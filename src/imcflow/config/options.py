"""``--set section.field=value`` overrides on a ChipConfig, applied with dataclasses.replace."""

from __future__ import annotations

import dataclasses
from typing import Any

from imcflow.config.chip import ChipConfig
from imcflow.errors import ConfigError


def _parse_value(text: str, current: Any, where: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(int(v) for v in text.split(",") if v.strip())
        if isinstance(current, str):
            return text
    except ValueError:
        pass
    raise ConfigError(f"--set {where}={text}: cannot read {text!r} as {type(current).__name__}")


def _replace_path(obj: Any, path: list[str], text: str, where: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head = path[0]
    if head not in names:
        raise ConfigError(
            f"--set {where}: {type(obj).__name__} has no field {head!r}; fields are {', '.join(names)}")
    current = getattr(obj, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"--set {where}: {head!r} is a section; name one of its fields, e.g. {head}.<field>")
        return dataclasses.replace(obj, **{head: _parse_value(text, current, where)})
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"--set {where}: {head!r} is a field, not a section")
    return dataclasses.replace(obj, **{head: _replace_path(current, path[1:], text, where)})


def apply_override(chip: ChipConfig, assignment: str) -> ChipConfig:
    """Apply one ``section.field=value`` (or top-level ``field=value``) override."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.field=value, e.g. adc.rate_hz=40e6")
    where, text = assignment.split("=", 1)
    where = where.strip()
    return _replace_path(chip, where.split("."), text.strip(), where)


def apply_overrides(chip: ChipConfig, assignments: list[str] | tuple[str, ...]) -> ChipConfig:
    """Apply several overrides in order; each result is validated by the dataclasses."""
    for a in assignments:
        chip = apply_override(chip, a)
    return chip


def describe(chip: ChipConfig) -> dict[str, Any]:
    """The configuration as a nested dict (for JSON output)."""
    return dataclasses.asdict(chip)

