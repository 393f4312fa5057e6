"""Design-space sweeps: one network compiled and simulated on a grid of chip configurations
and mappings.

Each point of the grid is the base chip with one value per varied field (``section.field``, as
``--set`` takes them), and optionally a mapping setting: ``objective`` (what the compiler
optimises: throughput, latency or energy) or ``batch`` (images per weight-phase pass). The network is re-quantised for the point when the chip changes what the
quantiser sees (ADC, bits), re-compiled (the mapping adapts: copies, phases, routes) and simulated
event by event, so every figure comes from the same flow as ``imcflow run``. A point whose chip
cannot hold the network keeps its place in the result with the compiler's reason, so a table or
plot never drops it silently.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from imcflow.config import ChipConfig, apply_overrides
from imcflow.errors import CompileError, ConfigError, QuantError

FIGURES: tuple[tuple[str, str], ...] = (
    ("throughput_img_s", "img/s"),
    ("latency_s", "latency s"),
    ("energy_per_img_j", "J/img"),
    ("img_per_s_per_w", "img/s/W"),
    ("power_w", "W"),
    ("tops", "TOPS"),
    ("utilization", "array util"),
)
"""Report fields a sweep records for every point, with their column titles."""


@dataclass(frozen=True)
class SweepAxis:
    """One varied chip field and its values (text, as ``--set`` takes them)."""

    field: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class SweepPoint:
    """One configuration: its settings, its figures (``FIGURES`` keys) or why it did not run."""

    settings: dict[str, str]
    figures: dict[str, float] = field(default_factory=dict)
    phases: int = 0
    error: str = ""
    wall_s: float = 0.0


def parse_axis(text: str) -> SweepAxis:
    """``section.field=v1,v2,...`` -> SweepAxis; ConfigError naming the problem otherwise."""
    if "=" not in text:
        raise ConfigError(f"--vary {text!r}: expected section.field=v1,v2,... e.g. adc.rate_hz=10e6,20e6,40e6")
    name, values = text.split("=", 1)
    vals = tuple(v.strip() for v in values.split(",") if v.strip())
    if not name.strip() or not vals:
        raise ConfigError(f"--vary {text!r}: give a field and at least one value, e.g. io.in_bits_per_cycle=32,64")
    return SweepAxis(name.strip(), vals)


MAPPING_FIELDS = ("objective", "batch")
"""Sweep axes that set the compiler's mapping rather than a chip field."""


def _mapping(settings: dict[str, str]) -> dict:
    """The compiler arguments of a point's mapping axes, checked (ConfigError naming the value)."""
    from imcflow.compiler.placement import OBJECTIVES
    out: dict = {}
    if "objective" in settings:
        if settings["objective"] not in OBJECTIVES:
            raise ConfigError(f"--vary objective={settings['objective']}: choose from {', '.join(OBJECTIVES)}")
        out["objective"] = settings["objective"]
    if "batch" in settings:
        try:
            out["batch"] = int(settings["batch"])
        except ValueError:
            out["batch"] = 0
        if out["batch"] < 1:
            raise ConfigError(f"--vary batch={settings['batch']}: give whole numbers >= 1")
    return out


def grid(base: ChipConfig, axes: list[SweepAxis]) -> list[tuple[dict[str, str], ChipConfig]]:
    """Every combination of the axes' values (first axis slowest) with its chip. All chips and
    mapping settings are checked before anything runs, so a bad field or value fails at once
    (ConfigError)."""
    names = [a.field for a in axes]
    if len(set(names)) != len(names):
        raise ConfigError(f"--vary names a field twice ({', '.join(names)}); give each field once")
    out = []
    for combo in itertools.product(*(a.values for a in axes)):
        settings = dict(zip(names, combo))
        _mapping(settings)
        chip_sets = [f"{k}={v}" for k, v in settings.items() if k not in MAPPING_FIELDS]
        try:
            chip = apply_overrides(base, chip_sets)
        except ConfigError as exc:
            raise ConfigError(f"--vary {', '.join(chip_sets)}: {str(exc).replace('--set ', '')}") from None
        out.append((settings, chip))
    return out


def sweep(model: str, base: ChipConfig, axes: list[SweepAxis], objective: str = "throughput",
          images: int | None = None, progress: Callable[[str], None] | None = None,
          data: str | None = None, limit: int = 500) -> list[SweepPoint]:
    """Compile and simulate ``model`` at every point of the grid of ``axes`` around ``base``.
    With ``data`` (a CIFAR-10 folder) each point also gets its bit-true accuracy through the
    simulator on ``limit`` seeded test images (a float model is calibrated on training images)."""
    from imcflow.report.flow import calibrated_on_cifar10, compile_program, evaluate_accuracy, load_qgraph, \
        simulate_report
    points = []
    for settings, chip in grid(base, axes):
        label = ", ".join(f"{k}={v}" for k, v in settings.items())
        if progress:
            progress(f"sweep: {label}")
        t0 = time.perf_counter()
        mapping = {"objective": objective, **_mapping(settings)}
        try:
            q, _ = load_qgraph(model, chip)
            if data is not None:
                q = calibrated_on_cifar10(q, model, chip, data)
            prog = compile_program(q, chip, **mapping)
        except (CompileError, QuantError) as exc:
            points.append(SweepPoint(settings, error=str(exc), wall_s=time.perf_counter() - t0))
            continue
        r = simulate_report(prog, images=images)
        figs = {k: float(getattr(r, k)) for k, _ in FIGURES}
        if data is not None:
            figs["accuracy"] = evaluate_accuracy(model, chip, data, "bit_true", limit=limit, prog=prog,
                                                 qgraph=q)["accuracy"]
        points.append(SweepPoint(settings, figs, len(prog.phases), wall_s=time.perf_counter() - t0))
    return points


def table_rows(points: list[SweepPoint]) -> list[list[str]]:
    """Header plus one row per point: settings, figures, phases, and throughput and efficiency as
    ratios to the first point that ran (the baseline)."""
    if not points:
        return []
    names = list(points[0].settings)
    base = next((p for p in points if not p.error), None)
    acc = base is not None and "accuracy" in base.figures
    head = names + [t for _, t in FIGURES] + ["phases", "img/s x", "img/s/W x"] + (["accuracy"] if acc else [])
    rows = [head]
    n_err = 0
    for p in points:
        cells = [p.settings[n] for n in names]
        if p.error:
            n_err += 1
            rows.append(cells + [f"does not run [{n_err}]"] + ["-"] * (len(head) - len(cells) - 1))
            continue
        f = p.figures
        cells += [f"{f['throughput_img_s']:,.1f}", f"{f['latency_s']:.3g}", f"{f['energy_per_img_j']:.3g}",
                  f"{f['img_per_s_per_w']:,.0f}", f"{f['power_w']:.3g}", f"{f['tops']:.3g}",
                  f"{100 * f['utilization']:.1f} %", str(p.phases)]
        for key in ("throughput_img_s", "img_per_s_per_w"):
            cells.append(f"{f[key] / base.figures[key]:.3f}" if base and base.figures[key] else "-")
        if acc:
            cells.append(f"{100 * f['accuracy']:.2f} %")
        rows.append(cells)
    return rows


def error_notes(points: list[SweepPoint]) -> list[str]:
    """``[k] settings: reason`` for each point that did not run, numbered as in :func:`table_rows`."""
    bad = [p for p in points if p.error]
    return [f"[{k}] {', '.join(f'{n}={v}' for n, v in p.settings.items())}: {p.error}"
            for k, p in enumerate(bad, 1)]


def plot(points: list[SweepPoint], path: str, title: str) -> None:
    """Throughput and efficiency per point (bars, labelled with the settings) as an image file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [p for p in points if not p.error]
    if not ok:
        raise ConfigError("no point of the sweep ran, so there is nothing to plot; see the table for why")
    labels = ["\n".join(p.settings.values()) for p in ok]
    xlabel = " / ".join(ok[0].settings)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.4 * len(ok) + 2), 4))
    for ax, key, unit in ((axes[0], "throughput_img_s", "img/s"), (axes[1], "img_per_s_per_w", "img/s/W")):
        ax.bar(range(len(ok)), [p.figures[key] for p in ok], color="#4477aa")
        ax.set_xticks(range(len(ok)), labels, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
