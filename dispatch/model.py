"""Inbound messages as immutable values that refuse to hold anything the protocol forbids."""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

__all__ = [
    "ID_PATTERN",
    "MAX_ADDRESS_CHARS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_SKILLS",
    "MAX_SKILL_CHARS",
    "MAX_TIME",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "PUSH_ENDPOINT_MAX_CHARS",
    "RESPONDERS_MAX",
    "RESPONDERS_MIN",
    "Amendment",
    "Answer",
    "Arrived",
    "Duty",
    "Inbound",
    "Kind",
    "LocationUpdate",
    "Mode",
    "PushSubscription",
    "Reply",
    "Report",
    "StatusUpdate",
    "is_valid_id",
]

# Volunteer, incident and alert ids travel inside MQTT topics and Redis keys, so
# they are kept to characters that are safe in both (no "/", "+", "#", ":").
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_ID_MATCH = re.compile(ID_PATTERN).fullmatch  # fullmatch: "$" would let a trailing "\n" in

# Limits on free text and lists: a report is read by a person on a phone, and a
# cap keeps one sender from making every later step (storage, fan-out) heavy.
MAX_ADDRESS_CHARS = 500
MAX_DESCRIPTION_CHARS = 2000
MAX_SKILLS = 20
MAX_SKILL_CHARS = 64
PRIORITY_MIN, PRIORITY_MAX = 1, 3
RESPONDERS_MIN, RESPONDERS_MAX = 1, 10
# The last instant that an RFC 3339 time can name (9999-12-31T23:59:59.999Z):
# every accepted time can be formatted back.
MAX_TIME = 253402300799.999
_FLOAT_MAX = sys.float_info.max  # an upper bound that still refuses infinity


class Kind(StrEnum):
    """What happened; it selects the default priority and skills."""

    CARDIAC_ARREST = "cardiac_arrest"
    MEDICAL = "medical"
    FALL = "fall"
    FIRE = "fire"
    DISPUTE = "dispute"
    SECURITY = "security"
    LOST_PERSON = "lost_person"
    OTHER = "other"


class Mode(StrEnum):
    """How a volunteer travels; it selects the speed of the travel-time estimate."""

    WALK = "walk"
    BIKE = "bike"
    EBIKE = "ebike"


class Duty(StrEnum):
    """Whether a volunteer wants to be alerted."""

    AVAILABLE = "available"
    OFF_DUTY = "off_duty"
    # Protocol 1.1 presence: the phone dropped off (its MQTT Last Will) or said so. Not
    # alerted; the position is kept until it goes stale; "available" restores it.
    OFFLINE = "offline"


class Answer(StrEnum):
    """A volunteer's answer to an alert."""

    ACCEPT = "accept"
    DECLINE = "decline"
    # Protocol 1.1 delivery receipt: the phone has the alert; the person has not decided.
    RECEIVED = "received"
    # This project's addition (docs/protocol.md): "I can't go after all", after accepting.
    WITHDRAW = "withdraw"


def is_valid_id(s: object) -> bool:
    """Whether ``s`` is a string of 1-64 characters of ``A-Z a-z 0-9 _ -``."""
    return isinstance(s, str) and _ID_MATCH(s) is not None


# The checks below raise ValueError: a value that reaches a constructor has
# already passed the codec, so a failure here is a programming error, not a bad
# message (the codec turns bad input into BadMessage before constructing).


def _check_id(name: str, value: object) -> None:
    if not is_valid_id(value):
        raise ValueError(f"{name} must be 1-64 characters of A-Z a-z 0-9 _ -, got {value!r}")


def _check_number(name: str, value: object, lo: float, hi: float) -> None:
    if type(value) is float and lo <= value <= hi:  # the common case, kept cheap (hot path)
        return
    # bool is an int subclass, but True is not a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    # lo and hi are finite, so this also refuses NaN and infinities; no
    # math.isfinite(), which raises OverflowError for a huge int.
    if not lo <= value <= hi:
        rule = f">= {lo}" if hi == _FLOAT_MAX else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _check_skills(value: object) -> None:
    if not isinstance(value, tuple):
        raise ValueError(f"skills must be a tuple of strings, got {value!r}")
    if len(value) > MAX_SKILLS:
        raise ValueError(f"skills must have at most {MAX_SKILLS} entries, got {len(value)}")
    for skill in value:
        if not isinstance(skill, str) or not 1 <= len(skill) <= MAX_SKILL_CHARS:
            raise ValueError(
                f"each skill must be a string of 1-{MAX_SKILL_CHARS} characters, got {skill!r}"
            )


def _check_text(name: str, value: object, limit: int) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{name} must be a string of at most {limit} characters")


def _check_enum(name: str, value: object, enum: type[StrEnum]) -> None:
    # A plain str equal to a member is refused: the codec converts, so a plain
    # str here means a caller skipped it.
    if not isinstance(value, enum):
        raise ValueError(f"{name} must be a {enum.__name__}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Report:
    """An incident report as sent; optional fields left out stay None (the core fills defaults).

    ``fingerprint`` is the codec's digest of the fields as sent, used to tell
    an identical retry of an ``id`` from a conflicting one; it is empty for a
    report built in code rather than decoded.
    """

    kind: Kind
    lat: float
    lon: float
    id: str | None = None
    priority: int | None = None
    responders: int | None = None
    skills: tuple[str, ...] | None = None
    reported_at: float | None = None
    address: str = ""
    description: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        _check_enum("kind", self.kind, Kind)
        _check_number("lat", self.lat, -90.0, 90.0)
        _check_number("lon", self.lon, -180.0, 180.0)
        if self.id is not None:
            _check_id("id", self.id)
        if self.priority is not None:
            _check_int("priority", self.priority, PRIORITY_MIN, PRIORITY_MAX)
        if self.responders is not None:
            _check_int("responders", self.responders, RESPONDERS_MIN, RESPONDERS_MAX)
        if self.skills is not None:
            _check_skills(self.skills)
        if self.reported_at is not None:
            _check_number("reported_at", self.reported_at, 0.0, MAX_TIME)
        _check_text("address", self.address, MAX_ADDRESS_CHARS)
        _check_text("description", self.description, MAX_DESCRIPTION_CHARS)
        if not isinstance(self.fingerprint, str):
            raise ValueError(f"fingerprint must be a string, got {self.fingerprint!r}")


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A volunteer going on or off duty, optionally with skills, travel mode and position."""

    volunteer_id: str
    status: Duty
    skills: tuple[str, ...] | None = None
    mode: Mode | None = None
    lat: float | None = None
    lon: float | None = None
    # Protocol 1.1 (None: not said, the last value stands): the client always sends
    # delivery receipts; at most this many alerts in 24 h; no alerts between these
    # minutes of the district's local day (start, end; may wrap past midnight).
    receipts: bool | None = None
    max_alerts_per_day: int | None = None
    quiet_hours: tuple[int, int] | None = None
    # Settings sent as null: cleared (no budget, no quiet hours).
    cleared: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_id("volunteer_id", self.volunteer_id)
        _check_enum("status", self.status, Duty)
        if self.max_alerts_per_day is not None and not 1 <= self.max_alerts_per_day <= 100:
            raise ValueError("max_alerts_per_day must be 1..100")
        if self.quiet_hours is not None and not all(0 <= m < 1440 for m in self.quiet_hours):
            raise ValueError("quiet_hours must be two minutes of the day (0..1439)")
        if self.skills is not None:
            _check_skills(self.skills)
        if self.mode is not None:
            _check_enum("mode", self.mode, Mode)
        # Half a position is no position: both or neither.
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        if self.lat is not None:
            _check_number("lat", self.lat, -90.0, 90.0)
            _check_number("lon", self.lon, -180.0, 180.0)


@dataclass(frozen=True, slots=True)
class LocationUpdate:
    """A volunteer's current position; it may lie outside the service area."""

    volunteer_id: str
    lat: float
    lon: float
    ts: float | None = None
    accuracy_m: float | None = None

    def __post_init__(self) -> None:
        _check_id("volunteer_id", self.volunteer_id)
        _check_number("lat", self.lat, -90.0, 90.0)
        _check_number("lon", self.lon, -180.0, 180.0)
        if self.ts is not None:
            _check_number("ts", self.ts, 0.0, MAX_TIME)
        if self.accuracy_m is not None:
            _check_number("accuracy_m", self.accuracy_m, 0.0, _FLOAT_MAX)


@dataclass(frozen=True, slots=True)
class Reply:
    """A volunteer's answer to one alert."""

    volunteer_id: str
    alert_id: str
    answer: Answer

    def __post_init__(self) -> None:
        _check_id("volunteer_id", self.volunteer_id)
        _check_id("alert_id", self.alert_id)
        _check_enum("answer", self.answer, Answer)


@dataclass(frozen=True, slots=True)
class Arrived:
    """A volunteer saying "I am here" at an incident."""

    volunteer_id: str
    incident_id: str

    def __post_init__(self) -> None:
        _check_id("volunteer_id", self.volunteer_id)
        _check_id("incident_id", self.incident_id)


@dataclass(frozen=True, slots=True)
class Amendment:
    """An operator's change to an open incident (protocol 1.1, ``PATCH /api/incidents/{iid}``).

    A field left None is not changed; ``lat`` and ``lon`` come together (a new place).
    """

    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    kind: Kind | None = None
    priority: int | None = None
    responders: int | None = None
    skills: tuple[str, ...] | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("an amendment moves an incident with both lat and lon, or neither")
        if self.lat is not None:
            _check_number("lat", self.lat, -90.0, 90.0)
            _check_number("lon", self.lon, -180.0, 180.0)
        if self.kind is not None:
            _check_enum("kind", self.kind, Kind)
        if self.priority is not None:
            _check_int("priority", self.priority, PRIORITY_MIN, PRIORITY_MAX)
        if self.responders is not None:
            _check_int("responders", self.responders, RESPONDERS_MIN, RESPONDERS_MAX)
        if self.skills is not None:
            _check_skills(self.skills)
        if self.address is not None:
            _check_text("address", self.address, MAX_ADDRESS_CHARS)
        if self.description is not None:
            _check_text("description", self.description, MAX_DESCRIPTION_CHARS)

    def fields(self) -> dict[str, object]:
        """The fields given, JSON-ready (what another instance decodes again)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            name = f.name
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


# A push service's endpoint URL: browsers' are 100-500 characters.
PUSH_ENDPOINT_MAX_CHARS = 1024


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A browser's Web Push subscription for a volunteer (``volunteers/{vid}/push``, this
    project's addition): where to push and the keys to encrypt for (RFC 8291), raw bytes.
    With ``remove``, the endpoint is to be forgotten and the keys are empty."""

    volunteer_id: str
    endpoint: str
    p256dh: bytes = b""  # the browser's P-256 public key, uncompressed (65 bytes)
    auth: bytes = b""  # the browser's authentication secret (16 bytes)
    remove: bool = False

    def __post_init__(self) -> None:
        _check_id("volunteer_id", self.volunteer_id)
        if not 0 < len(self.endpoint) <= PUSH_ENDPOINT_MAX_CHARS:
            raise ValueError(f"endpoint must be 1-{PUSH_ENDPOINT_MAX_CHARS} characters")
        if not self.remove and (
            len(self.p256dh) != 65 or self.p256dh[0] != 4 or len(self.auth) != 16
        ):
            raise ValueError("p256dh must be 65 bytes (an uncompressed P-256 key), auth 16")


Inbound: TypeAlias = Report | StatusUpdate | LocationUpdate | Reply | Arrived
