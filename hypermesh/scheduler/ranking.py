"""Every node's score for one instance shape, kept current between decisions.

Instances of one shape (same requests, same node constraints) get the same filter-and-score
over the nodes, and between two decisions only the rows in the matrix's `journal` changed
(usually the one row just bound). So rather than re-scoring 5,000 nodes per decision, a
`Ranking` scores them once (`scoring.fit` plus the cached static score, -inf where a filter
fails), then on each `sync` re-scores only the journal's new rows with `scoring.RowFit`, which
performs the same float operations in the same order and so yields the very same numbers. When
the node set, labels or resources change (or the journal has been restarted) it scores
everything again.

The implicit zone spread bonus differs per zone and per spread group and moves with every
placement, so it is not folded in: scores are kept zone-major (`ZoneLayout`, one contiguous
segment per zone value) and `best` adds each zone's bonus to that zone's segment before its
argmax. Ties go to the lowest row, exactly as one argmax over `score + bonus` of all rows would,
which keeps single and batched decisions identical to the plain vectorised computation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hypermesh.scheduler import scoring
from hypermesh.scheduler.matrix import BoolArray, FloatArray, NodeMatrix

__all__ = ["MAX_ZONES", "Ranking", "ZoneLayout"]

# Past this many zone values a per-zone loop costs more than it saves: callers score plainly.
MAX_ZONES = 32
# Re-scoring more rows than this one by one is slower than scoring all of them at once.
_REPLAY_LIMIT = 64

IndexArray = npt.NDArray[np.intp]


class ZoneLayout:
    """Node rows grouped by zone code (ascending rows within each zone), for one node set."""

    def __init__(self, matrix: NodeMatrix) -> None:
        zone_column = matrix.zone_column()
        self.version = matrix.static_version
        self.order: IndexArray = np.argsort(zone_column, kind="stable")
        self.position: IndexArray = np.empty(len(self.order), dtype=np.intp)
        self.position[self.order] = np.arange(len(self.order))
        ordered = zone_column[self.order]
        starts = np.flatnonzero(np.diff(ordered)) + 1
        bounds = [0, *starts.tolist(), len(ordered)]
        self.zones: list[tuple[int, int, int]] = [
            (int(ordered[a]), a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a
        ]


@dataclass(slots=True)
class Static:
    """What a ranking needs of the static filter and score (see `filters`, `scoring`)."""

    mask: BoolArray
    score: FloatArray
    # `score` where `mask` holds, -inf elsewhere.
    masked: FloatArray


class Ranking:
    """Masked scores of every node for `requests` under one set of node constraints."""

    def __init__(
        self,
        matrix: NodeMatrix,
        policy: scoring.Policy,
        requests: tuple[tuple[str, int], ...],
        static: Static,
        layout: ZoneLayout,
    ) -> None:
        self.matrix = matrix
        self.static = static
        self.layout = layout
        self.version = self._version()
        self.position = len(matrix.journal)
        self.row_fit = scoring.RowFit(matrix, requests, policy)
        fit = scoring.fit(matrix, requests, policy, slice(0, matrix.n))
        score = fit.score
        score += static.masked
        self.values: FloatArray = np.where(fit.feasible, score, -np.inf)[layout.order]

    def current(self) -> bool:
        """Whether `sync` can bring the scores up to date (else build a new ranking)."""
        if self.version != self._version():
            return False
        return len(self.matrix.journal) - self.position <= _REPLAY_LIMIT

    def sync(self) -> None:
        """Re-score the rows the journal lists since the last sync (`current()` must hold)."""
        journal = self.matrix.journal
        if self.position == len(journal):
            return
        rows = set(journal[self.position :])
        self.position = len(journal)
        row_fit = self.row_fit.score
        mask, static_score = self.static.mask, self.static.score
        position, values = self.layout.position, self.values
        for row in rows:
            fit = row_fit(row)
            value = -np.inf if fit is None or not mask[row] else fit + static_score.item(row)
            values[position[row]] = value

    def best(self, bonus: Mapping[int, float]) -> int | None:
        """The row with the highest score plus its zone's bonus (lowest row on ties), or None
        when no node passes."""
        found_value, found_row = -np.inf, -1
        values, order = self.values, self.layout.order
        for code, start, stop in self.layout.zones:
            segment = values[start:stop]
            extra = bonus.get(code) if bonus else None
            if extra:
                segment = segment + extra
            local = int(segment.argmax())
            value = segment.item(local)
            if value == -np.inf or value < found_value:
                continue
            row = order.item(start + local)
            if value > found_value or row < found_row:
                found_value, found_row = value, row
        return None if found_row < 0 else found_row

    def _version(self) -> tuple[int, int, int]:
        matrix = self.matrix
        return (matrix.static_version, len(matrix.resources), matrix.journal_epoch)
