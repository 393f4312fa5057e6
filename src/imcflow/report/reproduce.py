"""The paper's headline figures next to imcflow's, row by row (``imcflow reproduce``).

Each row is computed by its own function; a row whose pieces are missing (a module not built, no
trained weights, no data) says "not yet available" and why, instead of failing the whole table.
Published values: Jia et al., IEEE JSSC 57(1):198-211, 2022 (see shared/docs/chip.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from imcflow.config.chip import ChipConfig
from imcflow.errors import ImcflowError
from imcflow.ir.report import Report
from imcflow.report.tables import Row

# [P] published figures of the JSSC 2022 chip (shared/docs/chip.md, "Published results").
PUBLISHED = {
    "peak_tops_8b": 2.95,
    "peak_tops_per_w_8b": 30.0,
    "peak_tops_4b": 11.8,
    "cifar10_img_s": 7815.0,
    "cifar10_img_s_w": 51.5e3,
    "cifar10_accuracy_pct": 91.51,
    "resnet50_img_s": 581.0,
    "resnet50_img_s_w": 3.0e3,
    "resnet50_accuracy_pct": 73.33,
}

# [D] derived from them: chip power = img/s / (img/s/W).
DERIVED = {f"{k}_power_mw": 1e3 * PUBLISHED[f"{k}_img_s"] / PUBLISHED[f"{k}_img_s_w"] for k in ("cifar10", "resnet50")}


class NotAvailable(Exception):
    """A piece a row needs is missing (module not built yet, weights or data absent)."""


def need(module: str, attr: str) -> Any:
    """``module.attr``, or :class:`NotAvailable` naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise NotAvailable(f"{module} not built yet") from None
        raise
    if not hasattr(mod, attr):
        raise NotAvailable(f"{module}.{attr} not built yet")
    return getattr(mod, attr)


@dataclass
class Reproduction:
    """Rows of the table plus the reports behind them (for --json)."""

    rows: list[Row] = field(default_factory=list)
    reports: dict[str, Report] = field(default_factory=dict)

    def add(self, figure: str, key: str | None, unit: str, compute: Callable[[], float | None],
            note: str = "") -> None:
        published = PUBLISHED.get(key, DERIVED.get(key)) if key else None
        try:
            value = compute()
        except NotAvailable as exc:
            self.rows.append(Row(figure, published, None, unit, f"not yet available: {exc}"))
            return
        self.rows.append(Row(figure, published, value, unit, note))

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [{"figure": r.figure, "published": r.published, "imcflow": r.value, "unit": r.unit,
                          "ratio": r.ratio, "note": r.note} for r in self.rows],
                "reports": {k: v.to_dict() for k, v in self.reports.items()}}


def _peak_tops(chip: ChipConfig, bits: int) -> float:
    return float(need("imcflow.config.peak", "peak")(chip, bits).tops)


def _peak_tops_per_w(chip: ChipConfig, bits: int) -> float:
    return float(need("imcflow.config.peak", "peak")(chip, bits).tops_per_w)


def reproduce(chip: ChipConfig, data: str | None = None, batch: dict[str, int] | None = None,
              accuracy_limit: int | None = 1000,
              progress: Callable[[str], None] | None = None) -> Reproduction:
    """Compute every row of the reproduce table on ``chip``; ``data`` is a CIFAR-10 folder
    (accuracy row, on the first ``accuracy_limit`` test images, all if None), ``progress``
    receives one line per step (the CLI prints them to stderr)."""
    say = progress or (lambda _m: None)
    rep = Reproduction()
    rep.add("peak TOPS, 8-b", "peak_tops_8b", "TOPS", lambda: _peak_tops(chip, 8))
    rep.add("peak TOPS/W, 8-b (array+ADC)", "peak_tops_per_w_8b", "TOPS/W", lambda: _peak_tops_per_w(chip, 8),
            "column_eval_j fitted to this figure")
    rep.add("peak TOPS, 4-b", "peak_tops_4b", "TOPS", lambda: _peak_tops(chip, 4))
    batch = batch or {}
    for net, key, label in (("cifar10-cnn11", "cifar10", "CIFAR-10 CNN"), ("resnet50", "resnet50", "ResNet-50")):
        say(f"compiling and simulating {net} on {chip.name} ...")
        _benchmark_rows(rep, chip, net, key, label, batch.get(net), data)
    say("measuring CIFAR-10 accuracy ...")
    rep.add("CIFAR-10 accuracy, bit-true", "cifar10_accuracy_pct", "%",
            lambda: _cifar10_accuracy(chip, data, accuracy_limit),
            f"CIFAR-10 (JPEG q75 copy), {'all' if accuracy_limit is None else f'seeded sample of {accuracy_limit}'} test images")
    rep.rows.append(Row("ResNet-50 ImageNet accuracy", PUBLISHED["resnet50_accuracy_pct"], None, "%",
                        "cannot be measured here: no ImageNet data or trained 4-b ResNet-50 weights"))
    return rep


def _benchmark_rows(rep: Reproduction, chip: ChipConfig, net: str, key: str, label: str,
                    batch: int | None, data: str | None = None) -> None:
    results: dict[str, Report] = {}

    def run() -> Report:
        if "base" not in results:
            flow = need("imcflow.report.flow", "benchmark_reports")
            try:
                results.update(flow(net, chip, batch=batch, data=data))
            except ImcflowError as exc:
                raise NotAvailable(f"{type(exc).__name__}: {exc}") from None
        return results["base"]

    rep.add(f"{label} img/s", f"{key}_img_s", "img/s", lambda: run().throughput_img_s)
    if "base" in results:
        f = results["base"].features
        rep.rows[-1] = dataclasses.replace(rep.rows[-1], note=f"{f.get('phases')} phase(s), batch "
                                           f"{f.get('program_batch')}; analytic model {f.get('model_throughput_img_s', 0):,.0f} img/s")
    rep.add(f"{label} img/s/W", f"{key}_img_s_w", "img/s/W", lambda: run().img_per_s_per_w,
            "control_cycle_j fitted to this figure" if key == "cifar10" else "")
    rep.add(f"{label} chip power", f"{key}_power_mw", "mW",
            lambda: 1e3 * run().power_w,
            "published value derived: img/s / (img/s/W); energy per image = power x time per image")
    for name, r in results.items():
        if name == "base":
            continue
        what = ("named mechanism switched on (docs/calibration.md)" if "skipped" in name
                else "what-if: limit removed (docs/calibration.md)")
        rep.rows.append(Row(f"{label} img/s, {name}", PUBLISHED[f"{key}_img_s"], r.throughput_img_s, "img/s", what))
        rep.rows.append(Row(f"{label} img/s/W, {name}", PUBLISHED[f"{key}_img_s_w"], r.img_per_s_per_w,
                            "img/s/W", ""))
    if "base" in results:
        r = results["base"]
        busy = sum(l.array_busy_s_per_img for l in r.layers)
        if busy > 0:
            rep.rows.append(Row(f"{label} img/s bound: {chip.n_cores} arrays always busy", PUBLISHED[f"{key}_img_s"],
                                chip.n_cores / busy, "img/s", "this tiling, no loads, no pipeline gaps"))
        if key == "resnet50":
            rep.rows.append(Row(f"{label} img/s, zero bit-planes skipped", PUBLISHED[f"{key}_img_s"], None, "img/s",
                                "not measurable here: needs real ImageNet activations (docs/calibration.md)"))
    for name, r in results.items():
        rep.reports[f"{net}:{name}"] = r


def _cifar10_accuracy(chip: ChipConfig, data: str | None, limit: int | None) -> float:
    if not data:
        raise NotAvailable("pass --data ../shared/data/cifar10 to measure it")
    if not os.path.isdir(data):
        raise NotAvailable(f"--data {data}: no such folder")
    evaluate = need("imcflow.report.flow", "evaluate_accuracy")
    try:
        res = evaluate("cifar10-cnn11", chip, data, mode="bit_true", limit=limit)
    except ImcflowError as exc:
        raise NotAvailable(f"{type(exc).__name__}: {exc}") from None
    return 100.0 * res["accuracy"]
