"""Effects: what the core asks the shell to do, as domain values.

The core never performs I/O; it returns a list of these. The shell carries them out in
two phases, so that nothing is announced before it is stored: first every persistence
effect of the batch (one Redis pipeline), then every message (`SendAlert`,
`SendAssignment`, `StateChanged`). ``Claim`` is a question whose answer the shell feeds
back as ``Dispatcher.claim_result``.

The core says *what* to tell whom; only the shell knows the wire: dispatch/wire.py turns
the messages into topics, JSON, QoS, retain flags and expiries (`Publish`, the
form the bus sends). Every effect about an incident carries its incident id, so nobody has to
read a topic or a payload to find it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from dispatch.errors import BadMessage

__all__ = [
    "Action",
    "AssignmentReason",
    "Claim",
    "Effect",
    "Escalation",
    "EventType",
    "ForgetPosition",
    "LogEvent",
    "Outbound",
    "Reject",
    "Release",
    "Role",
    "SaveIncident",
    "SavePosition",
    "SaveVolunteer",
    "SendAlert",
    "SendAssignment",
    "StateChanged",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class EventType(StrEnum):
    """The kinds of line in an incident's history (the values are stored and streamed)."""

    REPORTED = "reported"
    ALERTED = "alerted"
    DECLINED = "declined"
    EXPIRED = "expired"
    LATE_ACCEPT = "late_accept"  # an accept answered with a stand-down
    ASSIGNED = "assigned"
    STOOD_DOWN = "stood_down"
    ARRIVED = "arrived"
    ARRIVAL_VERIFIED = "arrival_verified"  # a position confirmed an earlier "I'm here"
    OVERDUE = "overdue"
    TARGET_MISSED = "target_missed"
    ESCALATED = "escalated"
    STATE = "state"  # the incident moved from one state to another
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    # Protocol 1.1: delivery receipts and presence.
    RECEIVED = "received"  # the phone has the alert (a delivery receipt)
    UNDELIVERED = "undelivered"  # no receipt in time from a phone that always sends them
    OFFLINE = "offline"  # a volunteer who owes an answer or is on the way went offline
    # Protocol 1.1 amendments, and this project's "I can't go after all".
    AMENDED = "amended"  # an operator changed the incident (PATCH)
    WITHDRAWN = "withdrawn"  # a confirmed responder said they cannot go after all
    # This project's duplicate reports (docs/protocol.md).
    DUPLICATE_SUSPECTED = "duplicate_suspected"  # a report like an open one, near and soon
    MERGED = "merged"  # an operator merged a duplicate into this incident (or this into one)


class Action(StrEnum):
    """What an assignment message tells a volunteer."""

    GO = "go"
    STAND_DOWN = "stand_down"


class Role(StrEnum):
    """A confirmed responder's place (protocol 1.1)."""

    PRIMARY = "primary"
    BACKUP = "backup"


class Escalation(StrEnum):
    """Why an incident went to a person: the code the record, the event and the state
    carry (``escalation_code``, with ``escalation_params``), which the page words in its
    own language; `words` is the engine's English (``escalation_reason``, and the log)."""

    TOO_SLOW = "too_slow"  # best, used, target: seconds
    NOBODY_IN_TIME = "nobody_in_time"  # skills, eta: seconds, radius: metres
    NOBODY_IN_REACH = "nobody_in_reach"  # skills, radius: metres
    ALERT_BUDGET_SPENT = "alert_budget_spent"  # n: alerts
    NOBODY_ACCEPTED = "nobody_accepted"  # n: waves
    RESPONDERS_OVERDUE = "responders_overdue"  # n: waves
    ALL_DECLINED = "all_declined"
    OPERATOR = "operator"  # by (an operator's own words replace these)

    def words(self, p: Mapping[str, Any]) -> str:
        skills = ", ".join(p.get("skills") or ()) or "no particular skills"
        match self:
            case Escalation.TOO_SLOW:
                return (
                    f"the fastest volunteer needs about {p['best']} s and {p['used']} s are "
                    f"gone or needed to set off: more than the {p['target']} s target"
                )
            case Escalation.NOBODY_IN_TIME:
                return (
                    f"no available volunteer with {skills} who could be there within "
                    f"{p['eta']} s ({p['radius']} m at most)"
                )
            case Escalation.NOBODY_IN_REACH:
                return f"no available volunteer with {skills} within {p['radius']} m"
            case Escalation.ALERT_BUDGET_SPENT:
                return f"the alert budget ({p['n']}) is spent and nobody accepted"
            case Escalation.NOBODY_ACCEPTED:
                return f"nobody accepted after {p['n']} waves"
            case Escalation.RESPONDERS_OVERDUE:
                return f"responders overdue, and nobody else accepted after {p['n']} waves"
            case Escalation.ALL_DECLINED:
                return "every alerted volunteer declined or timed out, and nobody else is in reach"
            case Escalation.OPERATOR:
                return f"escalated by {p['by']}"
        raise AssertionError(self)  # pragma: no cover - every member is matched above


class AssignmentReason(StrEnum):
    """Why a volunteer is sent or stood down: the values are the wire's exact words."""

    # with "go"
    CONFIRMED = "confirmed"
    ASSIGNED_BY_OPERATOR = "assigned by operator"
    NOW_PRIMARY = "you are now the primary responder"
    NOW_BACKUP = "a faster responder is going; you go on as a backup"
    LOCATION_UPDATED = "location updated"  # protocol 1.1: the incident moved
    # with "stand_down"
    FILLED = "filled by others"
    ALERT_EXPIRED = "alert expired"
    FASTER_RESPONDER = "a faster responder is going"
    ENOUGH_ON_SCENE = "enough responders on scene"
    DECLINED = "you declined this alert"
    COMMITTED_ELSEWHERE = "already committed to another incident"
    NO_LONGER_NEEDED = "no longer needed"
    ASSIGNED_ELSEWHERE = "assigned elsewhere by the control room"
    INCIDENT_CANCELLED = "incident cancelled"
    INCIDENT_RESOLVED = "incident resolved"
    INCIDENT_MOVED = "incident moved"  # protocol 1.1: the search starts again elsewhere
    WITHDRAWN = "withdrawn"  # the answer to the volunteer's own withdraw
    # This project's duplicate reports: the report was merged into another of the same
    # event (a 1.0 client sees it cancelled; its volunteers may be alerted for the other).
    MERGED = "incident merged into another report of the same event"

    @classmethod
    def ended(cls, state: str) -> AssignmentReason:
        """The stand-down reason for an incident that ended in ``state``."""
        return cls(f"incident {state}")


@dataclass(frozen=True, slots=True)
class SendAlert:
    """Ask a volunteer to respond (the ``alert`` message); never retained, it expires."""

    incident_id: str
    volunteer_id: str
    alert_id: str
    kind: str
    priority: int
    lat: float
    lon: float
    address: str
    distance_m: float
    eta_s: float
    expires_at: float  # Unix seconds
    description: str
    wave: int
    skills: tuple[str, ...]
    expiry_s: int  # MQTT 5 message expiry: a stale call must not reach a phone


@dataclass(frozen=True, slots=True)
class SendAssignment:
    """Send a volunteer (``go``, with their role) or stand them down, with the reason."""

    incident_id: str
    volunteer_id: str
    alert_id: str
    action: Action
    reason: AssignmentReason
    role: Role | None  # with every "go" (protocol 1.1); None with "stand_down"
    expiry_s: int
    # The incident's place, with a "go" sent after it moved (reason "location updated").
    lat: float | None = None
    lon: float | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The incident's public state changed (the retained ``state`` message), or, with
    ``cleared``, its retention is over and the retained message is to be removed."""

    incident_id: str
    state: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    cleared: bool = False

    def __post_init__(self) -> None:
        if self.cleared == bool(self.state):
            raise ValueError("a StateChanged carries either a state or cleared=True")


# What the shell sends out, each about one incident (see dispatch/wire.py).
Outbound = SendAlert | SendAssignment | StateChanged


@dataclass(frozen=True, slots=True)
class SaveIncident:
    incident_id: str
    record: Mapping[str, Any]  # the whole incident, JSON-ready (see Incident.to_record)
    open: bool
    reported_at: float
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One line of the incident's history (the Redis stream the control room replays)."""

    incident_id: str
    type: EventType  # a plain string naming a member is taken too (and checked)
    at: float
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if type(self.type) is not EventType:
            object.__setattr__(self, "type", EventType(self.type))


@dataclass(frozen=True, slots=True)
class SaveVolunteer:
    volunteer_id: str
    duty: str
    skills: tuple[str, ...]
    mode: str
    # Protocol 1.1 settings the volunteer gave (receipts, max_alerts_per_day,
    # quiet_hours as [start, end] minutes), kept across a restart.
    settings: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class SavePosition:
    """The volunteer's last position only; the store keeps it with a time-to-live."""

    volunteer_id: str
    lat: float
    lon: float
    at: float


@dataclass(frozen=True, slots=True)
class ForgetPosition:
    volunteer_id: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Commit a volunteer to an incident, atomically across engine instances."""

    volunteer_id: str
    incident_id: str


@dataclass(frozen=True, slots=True)
class Release:
    volunteer_id: str
    incident_id: str


@dataclass(frozen=True, slots=True)
class Reject:
    """A message the engine could not accept: counted, and reported on ``rejected``."""

    error: BadMessage


Effect = (
    SendAlert
    | SendAssignment
    | StateChanged
    | SaveIncident
    | LogEvent
    | SaveVolunteer
    | SavePosition
    | ForgetPosition
    | Claim
    | Release
    | Reject
)
