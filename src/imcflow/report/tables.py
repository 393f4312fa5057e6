"""Plain-text tables: a Report as readable text, and the reproduce table (model vs. paper)."""

from __future__ import annotations

from dataclasses import dataclass

from imcflow.ir.report import Report


def format_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Columns padded to their widest cell; ``align`` is one 'l' or 'r' per column (default:
    first column left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """``value`` with an SI prefix, e.g. si(1.94e-5, 'J') -> '19.4 uJ'."""
    if value == 0:
        return f"0 {unit}".strip()
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"),
                           (1e-6, "u"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}".strip()
    return f"{value:.{digits}g} {unit}".strip()


def format_report(r: Report) -> str:
    """A report as text: headline figures, energy breakdown, per-core and per-layer tables."""
    head = [
        ["network", r.network], ["chip", r.chip], ["images simulated", str(r.batch)],
        ["throughput", f"{r.throughput_img_s:,.1f} img/s"], ["latency", si(r.latency_s, "s")],
        ["energy per image", si(r.energy_per_img_j, "J")], ["power", si(r.power_w, "W")],
        ["efficiency", f"{r.img_per_s_per_w:,.0f} img/s/W"],
        ["achieved", f"{r.tops:.3g} TOPS, {r.tops_per_w:.3g} TOPS/W"],
        ["array utilisation", f"{100 * r.utilization:.1f} %"],
        ["MACs per image", f"{r.macs_per_img:,}"],
    ]
    if r.accuracy is not None:
        head.append(["accuracy", f"{100 * r.accuracy:.2f} %"])
    for k, v in r.features.items():
        head.append([f"feature {k}", str(v)])
    parts = [format_table(["figure", "value"], head, "ll")]
    total = sum(r.energy_breakdown_j_per_img.values()) or 1.0
    parts.append(format_table(["energy per image", "J", "%"], [
        [k, si(v, "J"), f"{100 * v / total:.1f}"] for k, v in r.energy_breakdown_j_per_img.items()]))
    if r.cores:
        parts.append(format_table(
            ["core", "busy", "load", "wait in", "wait out", "idle", "util %", "energy"],
            [[str(c.core), si(c.busy_s, "s"), si(c.load_s, "s"), si(c.wait_input_s, "s"),
              si(c.wait_output_s, "s"), si(c.idle_s, "s"), f"{100 * c.utilization:.1f}", si(c.energy_j, "J")]
             for c in r.cores]))
    if r.layers:
        parts.append(format_table(
            ["layer", "op", "tiles", "cores", "MACs/img", "array s/img", "energy/img"],
            [[l.name, l.op, str(l.tiles), ",".join(map(str, l.cores)), f"{l.macs_per_img:,}",
              si(l.array_busy_s_per_img, "s"), si(l.energy_per_img_j, "J")] for l in r.layers]))
    if r.phases:
        parts.append(format_table(
            ["phase", "cores", "time/img", "array %", "in %", "out %", "load %", "nodes"],
            [[str(p.index), str(p.cores), si(p.time_s / r.batch, "s"), f"{100 * p.array_share:.0f}",
              f"{100 * p.io_in_share:.0f}", f"{100 * p.io_out_share:.0f}", f"{100 * p.load_share:.0f}",
              _node_span(p.nodes) + (f" [spill: {p.spill}]" if p.spill else "")] for p in r.phases]))
    parts.extend(r.notes)
    return "\n\n".join(parts)


def _node_span(nodes: tuple[str, ...]) -> str:
    """``first .. last (n)`` for a long list of node names."""
    return ", ".join(nodes) if len(nodes) <= 2 else f"{nodes[0]} .. {nodes[-1]} ({len(nodes)})"


@dataclass(frozen=True)
class Row:
    """One line of the reproduce table."""

    figure: str
    published: float | None
    value: float | None
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.published:
            return None
        return self.value / self.published


def format_rows(rows: list[Row]) -> str:
    """The reproduce table: figure, published, imcflow, ratio, note."""
    def num(v: float | None, unit: str) -> str:
        if v is None:
            return "-"
        if unit == "%":
            return f"{v:.2f} %"
        return f"{v:,.4g} {unit}" if abs(v) < 1000 else f"{v:,.0f} {unit}"

    body = [[r.figure, num(r.published, r.unit),
             num(r.value, r.unit),
             f"{r.ratio:.3f}" if r.ratio is not None else "-", r.note] for r in rows]
    return format_table(["figure", "published", "imcflow", "ratio", "note"], body, "lrrrl")
