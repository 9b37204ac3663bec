"""The core's timers: one heap of what is due when, for which incident (and alert).

A timer is checked when it fires rather than cancelled when it becomes moot: whoever
handles it first looks whether it still matters. That keeps restarts simple: after a
crash the core rebuilds its timers from the stored state, and overdue ones fire at once.
Ties fire in the order they were set.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from enum import StrEnum
from typing import NamedTuple

__all__ = ["Timer", "TimerKind", "Timers"]


class TimerKind(StrEnum):
    WAVE = "wave"  # the wave's reply time is over: send the next one, or escalate
    EXPIRE = "expire"  # an alert's validity is over
    CLEAR = "clear"  # an ended incident's retention is over: clear its state, forget it
    OVERDUE = "overdue"  # a confirmed responder should be on scene by now
    TARGET = "target"  # the target time has passed since the report
    DELIVERY = "delivery"  # no receipt yet from a phone that always sends them?
    OFFLINE = "offline"  # a responder went offline: back within the grace?
    # About a volunteer, not an incident (its id in ``incident_id``): their alert budget
    # or quiet hours may have started or ended.
    REST = "rest"


class Timer(NamedTuple):
    due: float
    seq: int  # the order it was set in: breaks ties, and never compares the kinds
    kind: TimerKind
    incident_id: str
    alert_id: str  # "" when the timer is about the whole incident


class Timers:
    """A min-heap of timers. Not thread-safe; one owner."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, due: float, kind: TimerKind, incident_id: str, alert_id: str = "") -> None:
        self._seq += 1
        heapq.heappush(self._heap, Timer(due, self._seq, kind, incident_id, alert_id))

    def drop(self, incident_id: str) -> None:
        """Drop every timer of ``incident_id``: O(timers), for a decision taken back
        (`Dispatcher.retract`), whose id may come back as a new incident."""
        kept = [t for t in self._heap if t.incident_id != incident_id]
        if len(kept) != len(self._heap):
            heapq.heapify(kept)
            self._heap = kept

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None

    def pop_due(self, now: float) -> Iterator[Timer]:
        """Every timer due at ``now``, earliest first (including those set meanwhile)."""
        while self._heap and self._heap[0].due <= now:
            yield heapq.heappop(self._heap)
