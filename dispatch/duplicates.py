"""Recent reports by kind and place: what a new report is compared with to guess that it
is a duplicate of one already being handled (issue 15; the rules: docs/protocol.md).

Mechanics only, like dispatch/roster.py: the dispatcher decides (open, same kind, near
enough, soon enough) among the few incidents this hands it. Reports are kept in cells of
a grid at least ``radius_m`` wide, so every report within ``radius_m`` of a point lies in
the point's cell or one of its eight neighbours: finding them costs the reports in those
nine cells, not all recent ones. Bounded: at most ``max_kept`` reports in all (the
oldest go first) and ``max_per_cell`` in one cell; a report is forgotten ``keep_s`` after
it arrived. Forgetting early only ever misses a guess.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import deque
from contextlib import suppress

from dispatch.model import Kind

__all__ = ["RecentReports"]

_DEG_LAT_M = 111_195.0  # metres per degree of latitude (the mean Earth radius)

Cell = tuple[str, int, int]  # the kind's value (an Enum member hashes in Python: slow)


class RecentReports:
    """Incident ids by kind and grid cell, for the last ``keep_s`` seconds."""

    def __init__(
        self,
        *,
        radius_m: float,
        max_abs_lat: float,
        keep_s: float,
        max_kept: int = 4096,
        max_per_cell: int = 64,
    ) -> None:
        self.keep_s, self.max_kept, self.max_per_cell = keep_s, max_kept, max_per_cell
        # Cells at least radius_m wide everywhere up to max_abs_lat (a degree of
        # longitude narrows towards the poles).
        self._step_lat = radius_m / _DEG_LAT_M
        self._step_lon = self._step_lat / max(0.01, math.cos(math.radians(min(89.0, max_abs_lat))))
        self._cells: dict[Cell, deque[str]] = {}
        self._order: deque[tuple[float, Cell, str]] = deque()  # by arrival, oldest first

    def __len__(self) -> int:
        return len(self._order)

    def _cell(self, kind: Kind, lat: float, lon: float) -> Cell:
        return kind.value, math.floor(lat / self._step_lat), math.floor(lon / self._step_lon)

    def near(self, kind: Kind, lat: float, lon: float) -> list[str]:
        """The ids of recent reports of ``kind`` in the point's cell and its neighbours: a
        superset of those within ``radius_m`` (the caller measures)."""
        k, i, j = self._cell(kind, lat, lon)
        cells = self._cells
        out: list[str] = []
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ids = cells.get((k, i + di, j + dj))
                if ids:
                    out.extend(ids)
        return out

    def add(self, kind: Kind, lat: float, lon: float, incident_id: str, at: float) -> None:
        """Keep a report that arrived at ``at`` (restored ones may come in any order)."""
        cell = self._cell(kind, lat, lon)
        ids = self._cells.setdefault(cell, deque())
        if len(ids) >= self.max_per_cell:
            ids.popleft()  # its entry in _order goes when it is due
        ids.append(incident_id)
        entry = (at, cell, incident_id)
        if self._order and at < self._order[-1][0]:
            insort(self._order, entry)
        else:
            self._order.append(entry)
        self.prune(at)

    def prune(self, now: float) -> None:
        """Forget the reports that arrived more than ``keep_s`` before ``now``, and the
        oldest beyond ``max_kept``. Amortised O(1) per report."""
        order = self._order
        while order and (order[0][0] < now - self.keep_s or len(order) > self.max_kept):
            _, cell, incident_id = order.popleft()
            ids = self._cells.get(cell)
            if ids is None:
                continue
            if ids and ids[0] == incident_id:
                ids.popleft()
            else:  # dropped already (a full cell), or restored out of order
                with suppress(ValueError):
                    ids.remove(incident_id)
            if not ids:
                del self._cells[cell]
