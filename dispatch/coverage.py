"""What the control room sees of the district: live coverage, volunteers on the map, figures.

Pure and synchronous like the rest of the core: every function takes the dispatcher's
state (or incidents) and the values it needs, and returns plain values. The web shell
calls these on request and caches the answers for a few seconds.

- ``coverage``: for each grid cell, how fast the best available volunteer could reach
  its centre now, ranked as the engine ranks candidates (``policy.fastest``), within the
  alert radius, against the target. A cell nobody can reach within the radius has no
  ETA: there the engine would escalate at once. It is computed from positions coarsened
  exactly as the map shows them (``coarsen``), never from exact ones: the answer is a
  function of the coarse positions only, so no sequence of requests (a skill only one
  volunteer has, ETAs from many cell centres: trilateration) can place anyone more
  precisely than the map does (issue 18). In two steps: ``coverage_fleet`` takes what
  it needs from the core (cheap, on the event loop) and ``coverage_of`` does the work
  on that snapshot alone (so the shell can run it in a thread).
- ``volunteer_view``: volunteers on duty with a position, coarsened to the centre of a
  ~100 m square (PROTOCOL.md: the control room sees positions coarsened), exact only for
  those committed to an incident.
- ``figures``: counts, P50/P90 time to arrival and the share within target (the
  headline, ``dispatch.headline``), for the district and per grid cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dispatch.dispatcher import Dispatcher, Incident
from dispatch.headline import Outcome, headline, outcome, percentile
from dispatch.lifecycle import State
from dispatch.model import Duty
from dispatch.policy import fastest
from geo.area import Cell
from geo.distance import LocalProjection
from geo.index import PartitionedIndex

__all__ = [
    "COARSE_M",
    "CellCoverage",
    "coarsen",
    "coverage",
    "coverage_fleet",
    "coverage_of",
    "figures",
    "incident_outcome",
    "percentile",
    "volunteer_view",
]

COARSE_M = 100.0  # side of the squares positions are snapped to for the control room


@dataclass(frozen=True, slots=True)
class CellCoverage:
    """One grid cell: the best travel time of an available volunteer to its centre."""

    cell_id: str
    eta_s: float | None  # None: nobody available within the alert radius
    within_target: bool | None

    def to_json(self) -> dict[str, Any]:
        return {
            "cell": self.cell_id,
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "within_target": self.within_target,
        }


_DAY_S = 86_400.0  # the alert budget's window


def coverage(
    core: Dispatcher,
    cells: Sequence[Cell],
    *,
    skills: Iterable[str] = (),
) -> list[CellCoverage]:
    """Per cell, the best ETA among the available volunteers (with ``skills``) in reach.

    From coarsened positions (see the module docstring): a cell shown green is a cell
    where the engine would find someone within the target give or take the ~100 m of
    the map's squares.
    """
    return coverage_of(coverage_fleet(core, skills), cells, core)


def coverage_fleet(core: Dispatcher, skills: Iterable[str] = ()) -> list[tuple[str, float, float]]:
    """(mode, lat, lon) of every available volunteer with all of ``skills``: a snapshot."""
    wanted = frozenset(skills)
    index = core.index
    out: list[tuple[str, float, float]] = []
    for vid, v in core.volunteers.items():
        if vid not in index or not wanted <= v.skills:
            continue
        mode, position = index.part_of(vid), index.position(vid)
        if mode is not None and position is not None:
            out.append((mode, position[0], position[1]))
    return out


def coverage_of(
    fleet: Iterable[tuple[str, float, float]], cells: Sequence[Cell], core: Dispatcher
) -> list[CellCoverage]:
    """Coverage from a ``coverage_fleet`` snapshot; reads only the core's fixed settings.

    Each position is snapped to the centre of its ~100 m square first; volunteers in one
    square with one mode are one entry (a few thousand squares in a district, whatever
    the number of volunteers), then one k=1 search per cell as the engine ranks.
    """
    projection = core.area.projection
    squares = {(mode, *coarsen(projection, lat, lon)) for mode, lat, lon in fleet}
    index = PartitionedIndex(projection, core.index.parts)
    for n, (mode, lat, lon) in enumerate(sorted(squares)):
        index.put(str(n), lat, lon, (), mode)
    target = core.policy.target_s
    radius = core.policy.max_radius_m
    out: list[CellCoverage] = []
    for cell in cells:
        best = fastest(index, core.travel, cell.lat, cell.lon, 1, radius_m=radius)
        eta = best[0].eta_s if best else None
        out.append(CellCoverage(cell.id, eta, None if eta is None else eta <= target))
    return out


def coarsen(
    projection: LocalProjection, lat: float, lon: float, step_m: float = COARSE_M
) -> tuple[float, float]:
    """The centre of the ``step_m`` square (in the area's projection) holding the point."""
    x, y = projection.to_xy(lat, lon)
    cx = (math.floor(x / step_m) + 0.5) * step_m
    cy = (math.floor(y / step_m) + 0.5) * step_m
    clat, clon = projection.to_latlon(cx, cy)
    return round(clat, 6), round(clon, 6)


def volunteer_view(core: Dispatcher, now: float | None = None) -> list[dict[str, Any]]:
    """Volunteers on duty with a known position, for the map, sorted by id.

    ``status``: ``assigned`` (committed to ``incident_id``; exact position), ``alerted``
    (holding an unanswered alert for ``incident_id``) or ``available`` (could be
    alerted now); the last two at a coarse position only. With ``now``, a volunteer
    who set an alert budget also has ``max_alerts_per_day`` and ``alerts_24h`` (alerts
    sent in the 24 h before ``now``: what the budget counts).
    """
    projection = core.area.projection
    out: list[dict[str, Any]] = []
    for vid in sorted(core.volunteers):
        v = core.volunteers[vid]
        if v.lat is None or v.lon is None or v.duty is not Duty.AVAILABLE:
            continue
        incident_id: str | None
        if v.engaged is not None:
            status, incident_id, exact = "assigned", v.engaged, True
        elif v.alert_id is not None:
            alert = core.alerts.get(v.alert_id)
            status, incident_id, exact = "alerted", alert.incident_id if alert else None, False
        elif vid in core.index:
            status, incident_id, exact = "available", None, False
        else:
            continue
        lat, lon = (v.lat, v.lon) if exact else coarsen(projection, v.lat, v.lon)
        out.append(
            {
                "id": vid,
                "status": status,
                "incident_id": incident_id,
                "lat": lat,
                "lon": lon,
                "exact": exact,
                "mode": v.mode.value,
                "skills": sorted(v.skills),
            }
        )
        if now is not None and v.max_alerts_per_day is not None:
            out[-1]["max_alerts_per_day"] = v.max_alerts_per_day
            out[-1]["alerts_24h"] = sum(1 for at in v.alerted_at or () if at > now - _DAY_S)
    return out


def incident_outcome(incident: Incident, *, now: float, target_s: float) -> Outcome:
    """One incident against the target, by the one definition (dispatch.headline)."""
    return outcome(
        reported_at=incident.reported_at,
        verified_arrival_at=incident.first_verified_at,
        cancelled=incident.state is State.CANCELLED,
        now=now,
        target_s=target_s,
    )


def figures(incidents: Iterable[Incident], *, target_s: float, now: float) -> dict[str, Any]:
    """The figures for a set of incidents (e.g. today's), for the district and per cell.

    The share within target is the headline's (dispatch.headline): of every incident
    that needed a responder and is decided, unreached ones as misses; times are to the
    first verified arrival. ``by_cell`` lists only cells that had an incident.
    """
    total = 0
    states: dict[str, int] = {s.value: 0 for s in State}
    escalated_ever = unverified = 0
    outcomes: list[Outcome] = []
    cells: dict[str, list[Outcome]] = {}
    for incident in incidents:
        total += 1
        states[incident.state.value] += 1
        if incident.escalated_at is not None:
            escalated_ever += 1
        if incident.first_arrival_at is not None and incident.first_verified_at is None:
            unverified += 1
        o = incident_outcome(incident, now=now, target_s=target_s)
        outcomes.append(o)
        cells.setdefault(incident.cell_id, []).append(o)
    by_cell = {
        cell_id: {"incidents": len(group), **_compat(headline(group))}
        for cell_id, group in sorted(cells.items())
    }
    return {
        "incidents": total,
        "by_state": states,
        "escalated_ever": escalated_ever,
        "unverified_arrivals": unverified,
        **_compat(headline(outcomes)),
        "by_cell": by_cell,
    }


def _compat(figures: dict[str, Any]) -> dict[str, Any]:
    """The headline plus ``arrived`` (the name the page and clients used before)."""
    return {**figures, "arrived": figures["reached"]}
