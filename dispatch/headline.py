"""The headline figure: how often someone is on scene within the target. One definition.

The control room's figures, ``/api/figures``, the metrics, the demo's summary and the
simulator all count it this way (DESIGN.md, "Record four times per incident"):

- Every incident that needed a responder counts: all but the cancelled ones (a false
  alarm or a duplicate). One that nobody reached is a miss, not left out.
- Only a *verified* first arrival counts: the geofence, or "I'm here" with a position
  near the scene. An unverified "I'm here" is shown as such and counts only once a
  position confirms it (from the moment it does).
- An incident is decided once a verified arrival came, or once the target has passed
  without one. Undecided incidents (still within the target, nobody there yet) are
  left out of the share until they are decided, so a live figure never counts as a
  miss an incident that may still make it.
- P50 and P90 are of the time to the first verified arrival, over the incidents that
  had one (``reached``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Outcome", "headline", "outcome", "percentile"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One incident against the target."""

    needed: bool  # needed a responder (not cancelled)
    decided: bool  # within, or known to have missed
    within: bool
    time_s: float | None  # report to the first verified arrival; None: none (yet)


def outcome(
    *,
    reported_at: float,
    verified_arrival_at: float | None,
    cancelled: bool,
    now: float,
    target_s: float,
) -> Outcome:
    """Judge one incident at ``now``."""
    time_s = None if verified_arrival_at is None else verified_arrival_at - reported_at
    within = time_s is not None and time_s <= target_s
    decided = not cancelled and (time_s is not None or now - reported_at > target_s)
    return Outcome(needed=not cancelled, decided=decided, within=within, time_s=time_s)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile of sorted values; None for none."""
    if not sorted_values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, got {q!r}")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def headline(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    """The figures for a set of incidents: ``within_target_share`` and the rest."""
    needed = decided = within = 0
    times: list[float] = []
    for o in outcomes:
        if not o.needed:
            continue
        needed += 1
        if o.decided:
            decided += 1
            within += o.within
        if o.time_s is not None:
            times.append(o.time_s)
    times.sort()
    p50, p90 = percentile(times, 0.5), percentile(times, 0.9)
    return {
        "needed": needed,
        "decided": decided,
        "within_target": within,
        "reached": len(times),
        "within_target_share": round(within / decided, 4) if decided else None,
        "p50_time_to_arrival_s": None if p50 is None else round(p50, 1),
        "p90_time_to_arrival_s": None if p90 is None else round(p90, 1),
    }
