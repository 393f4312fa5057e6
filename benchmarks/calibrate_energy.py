"""Fit EnergyTable.control_cycle_j to the published CIFAR-10 efficiency (51.5 k img/s/W) and show
what the fitted table predicts for ResNet-50 (3.0 k img/s/W). Prints figures; edits nothing.

    python benchmarks/calibrate_energy.py [--skip-resnet]

Energy per image = sum of event counts x prices + control_cycle_j x active core cycles per image
(+ static_w x time per image). Every price but control_cycle_j is fixed (sources in
config/chip.py); control_cycle_j is solved so that the CIFAR-10 figure is met exactly.
"""

from __future__ import annotations

import argparse
import dataclasses

from imcflow.config import JSSC2022
from imcflow.report.flow import benchmark_reports
from imcflow.report.reproduce import PUBLISHED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    r = benchmark_reports("cifar10-cnn11", JSSC2022)["base"]
    e = r.energy_breakdown_j_per_img
    cycles = e["control"] / JSSC2022.energy.control_cycle_j if JSSC2022.energy.control_cycle_j else None
    other = sum(v for k, v in e.items() if k != "control")
    target = 1.0 / PUBLISHED["cifar10_img_s_w"]
    print(f"cifar10-cnn11: {r.throughput_img_s:,.0f} img/s; energy/img without control {other * 1e6:.2f} uJ; "
          f"target {target * 1e6:.2f} uJ")
    if cycles:
        fit = (target - other) / cycles
        print(f"active core cycles per image {cycles:,.0f} -> control_cycle_j = {fit * 1e12:.2f} pJ "
              f"({fit * JSSC2022.clock.digital_hz * 1e3:.2f} mW per clocked core)")
        chip = dataclasses.replace(JSSC2022, energy=dataclasses.replace(JSSC2022.energy, control_cycle_j=fit))
    else:
        chip = JSSC2022
    if not args.skip_resnet:
        rr = benchmark_reports("resnet50", chip)["base"]
        print(f"resnet50 with the fitted table: {rr.throughput_img_s:,.1f} img/s, {rr.img_per_s_per_w:,.0f} img/s/W "
              f"(published {PUBLISHED['resnet50_img_s']:.0f} img/s, {PUBLISHED['resnet50_img_s_w']:,.0f} img/s/W)")
        for k, v in rr.energy_breakdown_j_per_img.items():
            print(f"  {k:<14} {v * 1e6:10.2f} uJ/img")


if __name__ == "__main__":
    main()
