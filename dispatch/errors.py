"""The engine's exceptions: who is at fault decides which one is raised.

The tree (catch the narrowest one that tells you what to do)::

    DispatchError                 base of everything raised on purpose
    ├── BadMessage                the sender is at fault: drop it, count it, report it
    │                             on <root>/rejected, carry on
    ├── ConfigError               the operator is at fault: refuse to start, name the key
    ├── InvalidTransition         we are at fault (a bug): crash loudly in tests
    ├── BackendUnavailable        the broker, Redis or PostgreSQL is down: retry, degrade,
    │                             alert (dispatch/store.py turns every Redis error into it,
    │                             dispatch/archive.py every PostgreSQL connection error)
    └── OwnerUnavailable          several instances: the one owning an incident did not
                                  answer a forwarded operator action in time (HTTP 503)

`Reason` lists every code a `BadMessage` may carry; they are the values of the
``reason`` label of the rejection metric and of the ``code`` field on the
rejected topic, so the set is closed and changes only with docs/protocol.md.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BackendUnavailable",
    "BadMessage",
    "ConfigError",
    "DispatchError",
    "InvalidTransition",
    "OwnerUnavailable",
    "Reason",
]


class Reason(StrEnum):
    """Why a message was rejected: a short snake_case code, stable for metrics."""

    # Raised by the codec: the bytes or the fields are wrong.
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    NOT_FINITE = "not_finite"
    OUTSIDE_AREA = "outside_area"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_VALUE = "unknown_value"
    BAD_ID = "bad_id"
    BAD_TIME = "bad_time"
    FUTURE_TIME = "future_time"
    UNKNOWN_TOPIC = "unknown_topic"
    # Raised by the bus: a retained message (replayed by the broker at every subscribe).
    RETAINED = "retained"
    # Raised by the core: the message is well formed but does not fit the state.
    UNKNOWN_ALERT = "unknown_alert"
    NOT_ALERTED = "not_alerted"
    CONFLICT = "conflict"
    UNKNOWN_INCIDENT = "unknown_incident"
    NOT_ACCEPTED = "not_accepted"  # a withdraw for an alert that was not accepted


class DispatchError(Exception):
    """Base class of every error the engine raises on purpose."""


class BadMessage(DispatchError):
    """A message the engine could not accept; the sender is at fault.

    ``reason`` is a sentence the sender can act on (it names the field, what was
    received and what is allowed); ``code`` is a `Reason` value for metrics;
    ``id`` is the incident id of a report, the alert id of a reply or the
    incident id of an arrival when the message carried one, so that the sender
    can match the rejection to what it sent.
    """

    def __init__(self, topic: str, reason: str, code: str, id: str | None = None) -> None:
        super().__init__(f"{topic}: {reason} [{code}]")
        self.topic = topic
        self.reason = reason
        self.code = code
        self.id = id


class ConfigError(DispatchError):
    """A configuration value is not allowed; the message names key, value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"config {key!r}: got {value!r}, allowed: {allowed}")
        self.key = key
        self.value = value
        self.allowed = allowed


class InvalidTransition(DispatchError):
    """An incident was asked to make a move its lifecycle table forbids: a bug in the caller."""

    def __init__(self, incident_id: str, from_state: str, to_state: str) -> None:
        super().__init__(f"incident {incident_id}: no transition from {from_state} to {to_state}")
        self.incident_id = incident_id
        self.from_state = from_state
        self.to_state = to_state


class BackendUnavailable(DispatchError):
    """The MQTT broker, Redis or PostgreSQL cannot be reached; a retry may succeed.

    Raise it ``from`` the library's own exception so that the cause stays in the
    traceback while callers above the boundary only know this one type.
    """

    def __init__(self, backend: str, detail: str = "") -> None:
        super().__init__(f"{backend} unavailable: {detail}" if detail else f"{backend} unavailable")
        self.backend = backend
        self.detail = detail


class OwnerUnavailable(DispatchError):
    """The instance owning an incident did not answer a forwarded operator action in time.

    ``maybe_done``: the owner took the action and may still carry it out; otherwise it
    was withdrawn and never will be.
    """

    def __init__(
        self,
        incident_id: str,
        instance: str,
        *,
        maybe_done: bool,
        lease_s: float,
        waited_s: float,
    ) -> None:
        what = (
            "the action may still be carried out: read the incident before trying again"
            if maybe_done
            else "the action was not carried out"
        )
        super().__init__(
            f"incident '{incident_id}' is handled by engine instance '{instance}', which did "
            f"not answer within {waited_s:g} s; {what}. If that instance has stopped, "
            f"another takes its incidents over within {lease_s:g} s: try again then"
        )
        self.incident_id = incident_id
        self.instance = instance
        self.maybe_done = maybe_done
