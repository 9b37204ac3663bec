"""Effects: what the core asks the shell to do, as plain data.

The core never performs I/O; it returns a list of these. The shell carries them out in
two phases, so that nothing is announced before it is stored: first every persistence
effect of the batch (one Redis pipeline), then every publish. ``Claim`` is a question
whose answer the shell feeds back as ``Dispatcher.claim_result``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dispatch.errors import BadMessage

__all__ = [
    "Claim",
    "Effect",
    "ForgetPosition",
    "LogEvent",
    "Publish",
    "Reject",
    "Release",
    "SaveIncident",
    "SavePosition",
    "SaveVolunteer",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str  # the full topic, root included
    payload: bytes  # b"" with retain clears a retained message
    qos: int = 1
    retain: bool = False
    expiry_s: int | None = None  # MQTT 5 message expiry; stale calls must not reach a phone


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
    type: str  # reported, alerted, accepted, declined, expired, stood_down, assigned, ...
    at: float
    data: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class SaveVolunteer:
    volunteer_id: str
    duty: str
    skills: tuple[str, ...]
    mode: str


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
    Publish
    | SaveIncident
    | LogEvent
    | SaveVolunteer
    | SavePosition
    | ForgetPosition
    | Claim
    | Release
    | Reject
)
