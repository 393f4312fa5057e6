"""Packing: weight tiles into the arrays of one phase (2-D rectangles, no overlap).

A tile goes where it costs least: the array and corner position that add the least array time
(tiles in disjoint rows and columns share bit-planes: block-diagonal copies cost nothing extra),
then the smallest resulting array time, then an already-used array (keeping empty arrays for
larger tiles), then the lowest corner. Positions tried are the corners formed by the array's
origin and the right/bottom edges of tiles already there.
"""

from __future__ import annotations

from dataclasses import dataclass

from imcflow.config.chip import ChipConfig
from imcflow.perf.model import TileWork, array_time_s


@dataclass(frozen=True)
class TileReq:
    """A tile to place: one (layer, copy, row tile, column tile)."""

    layer: str
    copy: int
    rt: int
    ct: int
    rows: int
    cols: int
    bitplanes: int
    """Bit-plane evaluations per image: output pixels of the copy x input bits."""


@dataclass(frozen=True)
class Placed:
    """A tile at (row r0, column c0) of logical array ``array``."""

    req: TileReq
    array: int
    r0: int
    c0: int

    def work(self) -> TileWork:
        q = self.req
        return TileWork(layer=q.layer, core=self.array, row_offset=self.r0, rows=q.rows, col_offset=self.c0,
                        cols=q.cols, bitplanes=q.bitplanes, weight_key=(q.layer, q.rt, q.ct))


def _free(placed: list[Placed], r0: int, c0: int, h: int, w: int) -> bool:
    for p in placed:
        if r0 < p.r0 + p.req.rows and p.r0 < r0 + h and c0 < p.c0 + p.req.cols and p.c0 < c0 + w:
            return False
    return True


def _spots(placed: list[Placed], h: int, w: int, chip: ChipConfig) -> list[tuple[int, int]]:
    rows = sorted({0} | {p.r0 + p.req.rows for p in placed})
    cols = sorted({0} | {p.c0 + p.req.cols for p in placed})
    out = []
    for r0 in rows:
        if r0 + h > chip.array.rows:
            continue
        for c0 in cols:
            if c0 + w <= chip.array.cols and _free(placed, r0, c0, h, w):
                out.append((r0, c0))
    return out


class Packer:
    """Mutable packing state of one phase (internal to the compiler).

    With a ``budget_s`` > 0 the packer packs for locality instead: among spots that keep the
    array's time within the budget it takes the array with the most *affinity* (tiles of the same
    layer copy count 2: their outputs leave as one stream; tiles of a layer in ``related`` (its
    producers and consumers) count 1: the stream between them stays inside the array; tiles of
    another copy of the same layer count -4: copies sharing an array take turns, which defeats
    them), then an already used array; only when no spot is within budget does it fall back to the least time."""

    def __init__(self, chip: ChipConfig, budget_s: float = 0.0, related: dict[str, set[str]] | None = None):
        self.chip = chip
        self.arrays: list[list[Placed]] = [[] for _ in range(chip.n_cores)]
        self.times = [0.0] * chip.n_cores
        self.budget_s = budget_s
        self.related = related or {}

    def _affinity(self, placed: list[Placed], req: TileReq) -> int:
        near = self.related.get(req.layer, set())
        score = 0
        for p in placed:
            if p.req.layer == req.layer:
                # the same copy: one output stream; another copy: they would take turns (no gain)
                score += 2 if p.req.copy == req.copy else -4
            elif p.req.layer in near:
                score += 1
        return score

    def place(self, req: TileReq) -> Placed | None:
        """Place ``req`` at its cheapest spot; None if no array has room."""
        best, best_key = None, None
        seen_empty = False
        for a, placed in enumerate(self.arrays):
            if not placed:
                if seen_empty:
                    continue  # every empty array is alike: try the first only
                seen_empty = True
            works = [p.work() for p in placed]
            affinity = self._affinity(placed, req) if self.budget_s > 0 else 0
            for r0, c0 in _spots(placed, req.rows, req.cols, self.chip):
                cand = Placed(req, a, r0, c0)
                t = array_time_s(works + [cand.work()], self.chip)
                if t <= self.budget_s * (1 + 1e-9):
                    key = (0, -affinity, 0 if placed else 1, round(t, 15), r0 + c0, a)
                else:
                    key = (1, round(t - self.times[a], 15), round(t, 15), 0 if placed else 1, r0 + c0, a)
                if best_key is None or key < best_key:
                    best, best_key = cand, key
        if best is not None:
            self.arrays[best.array].append(best)
            self.times[best.array] = array_time_s([p.work() for p in self.arrays[best.array]], self.chip)
        return best

    def place_all(self, reqs: list[TileReq]) -> bool:
        """Place every request in order; False (state partly changed) when one does not fit."""
        return all(self.place(r) is not None for r in reqs)

    def placed(self) -> list[Placed]:
        return [p for arr in self.arrays for p in arr]
