"""Plots of a timing simulation: per-core timelines (a Gantt chart of the event schedule)."""

from __future__ import annotations

from collections import defaultdict

from imcflow.sim.report import TimingResult
from imcflow.sim.timing import OpKind


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Touching or overlapping intervals joined (fewer rectangles to draw)."""
    out: list[list[float]] = []
    for s, f in sorted(intervals):
        if out and s <= out[-1][1] + 1e-12:
            out[-1][1] = max(out[-1][1], f)
        else:
            out.append([s, f])
    return [(s, f) for s, f in out]


def timeline_rows(tr: TimingResult, n_cores: int, window_s: float | None = None) -> dict[str, dict[str, list]]:
    """Row name ('core 3', 'io in', 'io out', 'weight bus') -> label (layer, or 'load') -> merged
    (start, end) intervals in seconds, clipped to ``[0, window_s]``."""
    end = tr.schedule.makespan_s if window_s is None else window_s
    rows: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for op in tr.lowered.ops:
        s, f = tr.schedule.start_s[op.id], tr.schedule.finish_s[op.id]
        if f <= s or s >= end:
            continue
        f = min(f, end)
        if op.kind == OpKind.COMPUTE and 0 <= op.core < n_cores:
            rows[f"core {op.core}"][op.layer].append((s, f))
        elif op.kind == OpKind.LOAD:
            rows["weight bus"]["load"].append((s, f))
        elif op.kind == OpKind.IO_IN:
            rows["io in"]["transfer"].append((s, f))
        elif op.kind == OpKind.IO_OUT:
            rows["io out"]["transfer"].append((s, f))
    return {r: {k: _merged(v) for k, v in by.items()} for r, by in rows.items()}


def plot_timeline(tr: TimingResult, n_cores: int, path: str, title: str, window_s: float | None = None) -> None:
    """Write a per-core timeline of the simulated run (array busy, coloured by layer; weight bus;
    off-chip ports) as an image file; ``window_s`` shows only the first seconds of the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = timeline_rows(tr, n_cores, window_s)
    order = [f"core {c}" for c in range(n_cores) if f"core {c}" in rows] + \
            [r for r in ("weight bus", "io in", "io out") if r in rows]
    layers = sorted({k for r in order for k in rows[r] if r.startswith("core")})
    cmap = plt.get_cmap("tab20")
    color = {name: cmap(i % 20) for i, name in enumerate(layers)}
    color.update({"load": "0.55", "transfer": "0.35"})
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(order) + 1.8))
    for y, r in enumerate(order):
        for label, spans in rows[r].items():
            ax.broken_barh([(s * 1e6, (f - s) * 1e6) for s, f in spans], (y - 0.4, 0.8), color=color[label],
                           label=label)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (us)")
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if len(seen) <= 24:
        ax.legend(seen.values(), seen.keys(), fontsize=7, ncol=min(6, len(seen)), loc="upper center",
                  bbox_to_anchor=(0.5, -0.12 if len(order) > 6 else -0.25), frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
