"""The roster: volunteers, their last positions, and the index of those free to be alerted.

Mechanics only; the decisions (whom to alert, who is committed) are the workflow's
(dispatch/dispatcher.py), which tells the roster what became of a volunteer.

Invariant: a volunteer is in the index only while available, with a fresh position, not
committed to an incident and not holding an unanswered alert (one call at a time per
phone). `refresh` restores it after any of those changes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dispatch.model import Duty, Mode
from geo.distance import LocalProjection
from geo.index import PartitionedIndex

__all__ = ["Roster", "Volunteer"]

# Held volunteers really removed from the index per tick (each removal some 30 µs): at
# least this many, more while a backlog builds (a quarter of it, capped so that one tick
# never holds the engine for more than about 15 ms). 64 a tick alone would fall behind
# the design load's 600 holds/s when alerts go unanswered.
_COMPACT_PER_TICK = 64
_COMPACT_MAX_PER_TICK = 512
# A move shorter than the position's accuracy leaves the index as it is (see refresh),
# up to this: a position as coarse as a cell tower's (hundreds of metres) still moves.
_MAX_STILL_M = 25.0


@dataclass(slots=True)
class Volunteer:
    id: str
    duty: Duty | None = None  # None: only a location was ever heard from them
    skills: frozenset[str] = frozenset()
    mode: Mode = Mode.WALK
    lat: float | None = None
    lon: float | None = None
    seen_at: float | None = None  # when the position was last reported
    accuracy_m: float | None = None  # of that position, as the phone reported it
    engaged: str | None = None  # the incident this volunteer is committed to
    # Protocol 1.1: the phone sends delivery receipts; the volunteer's alert budget (at
    # most so many in 24 h) and quiet hours (minutes of the local day, start and end).
    receipts: bool = False
    max_alerts_per_day: int | None = None
    quiet_hours: tuple[int, int] | None = None
    alerted_at: deque[float] = field(default_factory=deque)  # alerts in the last 24 h
    resting_until: float | None = None  # over budget or in quiet hours until then
    offline_since: float | None = None
    alert_id: str | None = None  # the one alert awaiting this volunteer's answer


class Roster:
    """Every volunteer heard from, and who could be alerted now. Not thread-safe; one owner."""

    def __init__(self, projection: LocalProjection, location_ttl_s: float) -> None:
        self.location_ttl_s = location_ttl_s
        self.index = PartitionedIndex(projection, (m.value for m in Mode))
        self.volunteers: dict[str, Volunteer] = {}
        # Volunteers with a position, oldest report first: forgetting the stale is O(1) each.
        self._positions: OrderedDict[str, float] = OrderedDict()

    @property
    def available(self) -> int:
        """Volunteers who could be alerted right now."""
        return len(self.index)

    def get(self, volunteer_id: str) -> Volunteer | None:
        return self.volunteers.get(volunteer_id)

    def ensure(self, volunteer_id: str) -> Volunteer:
        """The volunteer, added (knowing nothing of them yet) if never heard from."""
        volunteer = self.volunteers.get(volunteer_id)
        if volunteer is None:
            volunteer = self.volunteers[volunteer_id] = Volunteer(volunteer_id)
        return volunteer

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Restore the volunteers inside this block: the index is bulk loaded at its end
        (`PartitionedIndex.loading`), in a tenth of the time of one put at a time."""
        with self.index.loading():
            yield

    # ------------------------------------------------------------------ positions

    def set_position(self, volunteer: Volunteer, lat: float, lon: float, now: float) -> None:
        volunteer.lat, volunteer.lon, volunteer.seen_at = lat, lon, now
        self._positions[volunteer.id] = now
        self._positions.move_to_end(volunteer.id)

    def restore_position(self, volunteer: Volunteer, lat: float, lon: float, at: float) -> None:
        """A stored position, after a restart (restored in the store's order)."""
        volunteer.lat, volunteer.lon, volunteer.seen_at = lat, lon, at
        self._positions[volunteer.id] = at

    def forget_position(self, volunteer: Volunteer) -> None:
        volunteer.lat = volunteer.lon = volunteer.seen_at = volunteer.accuracy_m = None
        self._positions.pop(volunteer.id, None)
        self.index.remove(volunteer.id)

    def next_stale(self) -> float | None:
        """When the oldest position goes stale, if any is kept."""
        if not self._positions:
            return None
        return next(iter(self._positions.values())) + self.location_ttl_s

    def tidy(self, now: float) -> None:
        """Forget the positions gone stale at ``now``; take a few held volunteers out of
        the index's trees (off the hot path)."""
        self.index.compact(max(_COMPACT_PER_TICK, min(self.index.held // 4, _COMPACT_MAX_PER_TICK)))
        while self._positions:
            vid, seen = next(iter(self._positions.items()))
            if seen + self.location_ttl_s > now:
                break
            self.forget_position(self.volunteers[vid])

    # ------------------------------------------------------------------ availability

    def refresh(self, volunteer: Volunteer) -> None:
        """In the index if and only if the volunteer could be alerted now."""
        if (
            volunteer.duty is Duty.AVAILABLE
            and volunteer.lat is not None
            and volunteer.lon is not None
            and volunteer.engaged is None
            and volunteer.alert_id is None
            and volunteer.resting_until is None
        ):
            # A move within the position's accuracy is noise: the index keeps the volunteer
            # where it has them (a move costs 30-60 µs, most of a location's handling),
            # while the volunteer's own position and time are refreshed (set_position).
            accuracy = volunteer.accuracy_m
            self.index.put(
                volunteer.id,
                volunteer.lat,
                volunteer.lon,
                volunteer.skills,
                volunteer.mode.value,
                within_m=None if accuracy is None else min(accuracy, _MAX_STILL_M),
            )
        else:
            self.index.remove(volunteer.id)

    def hold(self, volunteer: Volunteer, alert_id: str) -> None:
        """The volunteer owes an answer to ``alert_id``: out of the index (O(1), see
        PartitionedIndex.hold) until they answer or the alert is off."""
        volunteer.alert_id = alert_id
        self.index.hold(volunteer.id)

    def withdraw(self, volunteer_id: str) -> None:
        """Out of the index, whatever the volunteer's state says (committed here or
        perhaps elsewhere) until they next report."""
        self.index.remove(volunteer_id)

    def free(self, volunteer_id: str, alert_id: str | None = None) -> None:
        """The volunteer no longer owes an answer (to ``alert_id``) nor a commitment."""
        volunteer = self.volunteers.get(volunteer_id)
        if volunteer is None:
            return
        if alert_id is None or volunteer.alert_id == alert_id:
            volunteer.alert_id = None
        self.refresh(volunteer)

    def disengage(self, volunteer_id: str, incident_id: str, *, rejoin: bool = True) -> None:
        """The volunteer is no longer committed to ``incident_id`` (if they were): back in
        the index if they can be alerted (``rejoin``), else out of it until they report."""
        volunteer = self.volunteers.get(volunteer_id)
        if volunteer is None or volunteer.engaged != incident_id:
            return
        volunteer.engaged = None
        if rejoin:
            self.refresh(volunteer)
        else:
            self.index.remove(volunteer_id)
