"""The roster: volunteers, their last positions, and the index of those free to be alerted.

Mechanics only; the decisions (whom to alert, who is committed) are the workflow's
(dispatch/dispatcher.py), which tells the roster what became of a volunteer.

Invariant: a volunteer is in the index only while available, with a fresh position, not
committed to an incident and not holding an unanswered alert (one call at a time per
phone). `refresh` restores it after any of those changes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from dispatch.model import Duty, Mode
from geo.distance import LocalProjection
from geo.index import PartitionedIndex

__all__ = ["Roster", "StoredProfile", "StoredVolunteer", "StoredVolunteers", "Volunteer"]

# Held volunteers really removed from the index per tick (each removal some 30 µs): at
# least this many, more while a backlog builds (a quarter of it, capped so that one tick
# never holds the engine for more than about 15 ms). 64 a tick alone would fall behind
# the design load's 600 holds/s when alerts go unanswered.
_COMPACT_PER_TICK = 64
_COMPACT_MAX_PER_TICK = 512
# A move shorter than the position's accuracy leaves the index as it is (see refresh),
# up to this: a position as coarse as a cell tower's (hundreds of metres) still moves.
_MAX_STILL_M = 25.0
# The index's part of each mode (Mode.value, a property: slower, a million times over).
_PART = {m: m.value for m in Mode}


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
    # Alerts in the last 24 h, kept while the volunteer has a budget (None until the
    # first: an empty deque is 600 bytes, and a restart makes a million volunteers).
    alerted_at: deque[float] | None = None
    resting_until: float | None = None  # over budget or in quiet hours until then
    offline_since: float | None = None
    alert_id: str | None = None  # the one alert awaiting this volunteer's answer


@dataclass(frozen=True, slots=True)
class StoredVolunteer:
    """One volunteer as stored (dispatch/store.py), read back after a restart."""

    volunteer_id: str
    duty: str | None
    skills: tuple[str, ...]
    mode: str
    position: tuple[float, float, float] | None  # lat, lon, at
    settings: Mapping[str, Any] = field(default_factory=dict)  # protocol 1.1


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """What volunteers have in common as stored: duty, skills, mode and settings.

    A handful of distinct values among a million volunteers: each is decoded once.
    """

    duty: str | None
    skills: tuple[str, ...]
    mode: str
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StoredVolunteers:
    """Every volunteer as stored, in columns: a restart reads up to a million, and an
    object per volunteer (then decoding it) cost more than restoring it. Volunteer i is
    ``ids[i]``, with ``profiles[profile_of[i]]`` and ``positions[i]`` (lat, lon, at)."""

    ids: list[str] = field(default_factory=list)
    profile_of: list[int] = field(default_factory=list)
    positions: list[tuple[float, float, float] | None] = field(default_factory=list)
    profiles: list[StoredProfile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, other: StoredVolunteers) -> None:
        """Append ``other``'s volunteers (their profiles numbered anew)."""
        at: dict[int, int] = {}
        for k, profile in enumerate(other.profiles):
            if profile not in self.profiles:
                self.profiles.append(profile)
            at[k] = self.profiles.index(profile)
        self.ids += other.ids
        self.profile_of += map(at.__getitem__, other.profile_of)
        self.positions += other.positions

    def __iter__(self) -> Iterator[StoredVolunteer]:
        """One object per volunteer (for tests and tools; a restart uses the columns)."""
        for vid, k, position in zip(self.ids, self.profile_of, self.positions, strict=True):
            p = self.profiles[k]
            yield StoredVolunteer(vid, p.duty, p.skills, p.mode, position, p.settings)


class Roster:
    """Every volunteer heard from, and who could be alerted now. Not thread-safe; one owner."""

    def __init__(self, projection: LocalProjection, location_ttl_s: float) -> None:
        self.location_ttl_s = location_ttl_s
        self.index = PartitionedIndex(projection, (m.value for m in Mode))
        self.volunteers: dict[str, Volunteer] = {}
        # When each volunteer with a position was last seen, at the latest: a heap of
        # (seen_at, id), soonest stale first. A report does not touch it (5,000 moves a
        # second, each a few cache misses in an ordered dict of 100,000): an entry found
        # due is checked against the volunteer's own seen_at, and put back at that time
        # if they reported since. Entries of volunteers forgotten meanwhile are dropped.
        self._stale: list[tuple[float, str]] = []
        self._left_behind: set[str] = set()  # forgotten, their entry still in _stale
        self._stale_unordered = False  # restored unordered; heapified when first needed

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
        if volunteer.seen_at is None and self._needs_entry(volunteer.id):
            heapq.heappush(self._stale, (now, volunteer.id))
        volunteer.lat, volunteer.lon, volunteer.seen_at = lat, lon, now

    def _needs_entry(self, volunteer_id: str) -> bool:
        """Whether the first position of a volunteer without one needs an entry in
        `_stale`: not if a forget left theirs behind (it will find them seen)."""
        if volunteer_id in self._left_behind:
            self._left_behind.discard(volunteer_id)
            return False
        return True

    def add_restored(self, volunteer: Volunteer) -> None:
        """A volunteer rebuilt after a restart and not known yet, its position (if any)
        already set: added, and to the index as `refresh` would (restored in bulk, so
        only what a restored volunteer can be is checked: never engaged nor alerted)."""
        self.volunteers[volunteer.id] = volunteer
        lat, lon, at = volunteer.lat, volunteer.lon, volunteer.seen_at
        if lat is None or lon is None or at is None:
            return
        self._stale.append((at, volunteer.id))
        self._stale_unordered = True
        if volunteer.duty is Duty.AVAILABLE and volunteer.resting_until is None:
            self.index.put(volunteer.id, lat, lon, volunteer.skills, _PART[volunteer.mode])

    def restore_position(self, volunteer: Volunteer, lat: float, lon: float, at: float) -> None:
        """A stored position, after a restart."""
        if volunteer.seen_at is None and self._needs_entry(volunteer.id):
            self._stale.append((at, volunteer.id))
            self._stale_unordered = True
        volunteer.lat, volunteer.lon, volunteer.seen_at = lat, lon, at

    def forget_position(self, volunteer: Volunteer) -> None:
        if volunteer.seen_at is not None:
            self._left_behind.add(volunteer.id)  # its entry in _stale is dropped when due
        volunteer.lat = volunteer.lon = volunteer.seen_at = volunteer.accuracy_m = None
        self.index.remove(volunteer.id)

    def next_stale(self) -> float | None:
        """When the oldest position may go stale (no later), if any is kept."""
        stale = self._stale_heap()
        return stale[0][0] + self.location_ttl_s if stale else None

    def _stale_heap(self) -> list[tuple[float, str]]:
        if self._stale_unordered:
            heapq.heapify(self._stale)
            self._stale_unordered = False
        return self._stale

    def tidy(self, now: float) -> None:
        """Forget the positions gone stale at ``now``; take a few held volunteers out of
        the index's trees (off the hot path)."""
        self.index.compact(max(_COMPACT_PER_TICK, min(self.index.held // 4, _COMPACT_MAX_PER_TICK)))
        stale, ttl = self._stale_heap(), self.location_ttl_s
        while stale and stale[0][0] + ttl <= now:
            _, vid = heapq.heappop(stale)
            volunteer = self.volunteers[vid]
            seen = volunteer.seen_at
            if seen is None:  # forgotten meanwhile (off duty): the entry was left behind
                self._left_behind.discard(vid)
            elif seen + ttl > now:  # reported since: due again from that report
                heapq.heappush(stale, (seen, vid))
            else:
                self.forget_position(volunteer)
                self._left_behind.discard(vid)  # this entry was it

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
                _PART[volunteer.mode],  # not .value: an enum property, slower than a dict
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
