"""The one place that knows JSON: inbound topic and bytes to messages, or BadMessage."""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson

from dispatch.errors import BadMessage, ConfigError, Reason
from dispatch.model import (
    MAX_ADDRESS_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_SKILL_CHARS,
    MAX_SKILLS,
    MAX_TIME,
    PRIORITY_MAX,
    PRIORITY_MIN,
    PUSH_ENDPOINT_MAX_CHARS,
    RESPONDERS_MAX,
    RESPONDERS_MIN,
    Amendment,
    Answer,
    Arrived,
    Duty,
    Inbound,
    Kind,
    LocationUpdate,
    Mode,
    PushSubscription,
    Reply,
    Report,
    StatusUpdate,
    is_valid_id,
)

__all__ = ["Codec", "dumps", "fingerprint", "format_time", "loads", "parse_time"]

# --------------------------------------------------------------------------- times

# Naive datetimes on purpose: format_time only needs calendar arithmetic, and a
# naive isoformat() has no offset for us to strip before appending "Z".
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_MS = round(MAX_TIME * 1000)

# RFC 3339 date-time, plus the ISO 8601 spellings clients actually send: a space
# for "T", lower-case "t"/"z", an offset without colon (+0800) or minutes (+08).
# [0-9], not \d: \d also matches other scripts' digits, which int() would accept.
_TIME_MATCH = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)?"
).fullmatch


def format_time(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds: ``"2026-11-26T10:00:00.123Z"``.

    Rounds to the nearest millisecond, so that a time parsed from this format
    formats back to the same string. Raises ValueError outside 1970..9999.
    """
    # isinstance, not a float() conversion: a str must not sneak through as a time.
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ValueError(f"expected Unix seconds, got {ts!r}")
    if isinstance(ts, float) and not math.isfinite(ts):
        raise ValueError(f"expected finite Unix seconds, got {ts!r}")
    ms = round(ts * 1000)
    if not 0 <= ms <= _MAX_MS:
        raise ValueError(f"time {ts!r} is outside 1970-01-01..9999-12-31")
    seconds, millis = divmod(ms, 1000)
    return f"{(_EPOCH_NAIVE + timedelta(seconds=seconds)).isoformat()}.{millis:03d}Z"


def parse_time(value: object) -> float:
    """An RFC 3339 string with ``Z`` or an offset, or Unix seconds, as float Unix seconds.

    A string without an offset is refused: its time zone would be a guess. Raises
    ValueError with a message that says what is wrong and what to send.
    """
    if type(value) is float and 0.0 <= value <= MAX_TIME:  # the common case first (hot path)
        return value
    if isinstance(value, str):
        ts = _parse_time_string(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number of seconds")
        ts = value  # range-checked below before float(): a huge int would overflow
    else:
        raise ValueError(
            f'expected an RFC 3339 time such as "2026-11-26T10:00:00Z" or Unix seconds, '
            f"got {_show(value)}"
        )
    if not 0 <= ts <= MAX_TIME:
        hint = ""
        # The commonest mistake: JavaScript's Date.now() is in milliseconds.
        if ts > MAX_TIME and ts / 1000 <= MAX_TIME:
            hint = " (it looks like milliseconds; send seconds)"
        raise ValueError(f"{_show(value)} is not between 1970-01-01 and 9999-12-31{hint}")
    return float(ts)


def _parse_time_string(text: str) -> float:
    m = _TIME_MATCH(text)
    if m is None:
        raise ValueError(f'{_show(text)} is not an RFC 3339 time such as "2026-11-26T10:00:00Z"')
    year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = m.groups()
    if zulu is None and sign is None:
        raise ValueError(
            f"{_show(text)} has no time zone; end it with Z (UTC) or an offset such as +08:00"
        )
    sec = int(second)
    # 60 is a leap second (RFC 3339 allows it); it rolls into the next minute.
    if sec > 60:
        raise ValueError(f"{_show(text)} has an invalid second {second}")
    offset = 0
    if sign is not None:
        oh, om = int(off_h), int(off_m or 0)
        if oh > 23 or om > 59:
            raise ValueError(f"{_show(text)} has an invalid UTC offset")
        offset = (oh * 60 + om) * 60 * (1 if sign == "+" else -1)
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise ValueError(f"{_show(text)} is not a valid calendar date") from None
    if int(hour) > 23 or int(minute) > 59:
        raise ValueError(f"{_show(text)} has an invalid time of day")
    whole = days * 86400 + int(hour) * 3600 + int(minute) * 60
    whole += sec - offset
    if whole < 0:
        raise ValueError(f"{_show(text)} is before 1970-01-01")
    # Build the float from its decimal digits, exactly as a JSON number with the
    # same digits would be parsed: the string and the number forms of one time
    # then give the very same float.
    return float(f"{whole}.{frac}") if frac else float(whole)


# --------------------------------------------------------------------------- JSON


def dumps(obj: Any) -> bytes:
    """Serialise to compact UTF-8 JSON; dataclasses and StrEnums are handled natively."""
    return orjson.dumps(obj)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises ValueError (orjson.JSONDecodeError) when it is not valid JSON."""
    return orjson.loads(data)


def fingerprint(report: Report) -> str:
    """The digest that says whether two reports with one id are "the same body".

    Only fields the sender gave count (None = left out), normalised to what they
    mean: numbers as floats (1 == 1.0), ``reported_at`` to whole milliseconds (a
    string and a number naming one instant agree), skills as a sorted set, and an
    empty address or description the same as none. The ``fingerprint`` field of
    ``report`` itself is ignored.
    """
    return _digest(
        report.kind,
        report.lat,
        report.lon,
        report.id,
        report.priority,
        report.responders,
        report.skills,
        report.reported_at,
        report.address,
        report.description,
    )


def _digest(
    kind: str,
    lat: float,
    lon: float,
    id: str | None,
    priority: int | None,
    responders: int | None,
    skills: tuple[str, ...] | None,
    reported_at: float | None,
    address: str,
    description: str,
) -> str:
    # + 0.0 turns -0.0 into 0.0, which orjson would otherwise write differently.
    fields: dict[str, object] = {"kind": str(kind), "lat": lat + 0.0, "lon": lon + 0.0}
    if id is not None:
        fields["id"] = id
    if priority is not None:
        fields["priority"] = priority
    if responders is not None:
        fields["responders"] = responders
    if skills is not None:
        fields["skills"] = sorted(set(skills))
    if reported_at is not None:
        fields["reported_at"] = round(reported_at * 1000)
    if address:
        fields["address"] = address
    if description:
        fields["description"] = description
    data = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --------------------------------------------------------------------------- validation


class _Reject(Exception):
    """Internal: one field is wrong. decode() adds the topic and id and raises BadMessage."""

    def __init__(self, code: Reason, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_MISSING: Any = object()
_SHOW_CHARS = 40
_FLOAT_MAX = sys.float_info.max
_COORD_LAT = "a number between -90 and 90"
_COORD_LON = "a number between -180 and 180"
_KINDS = {k.value: k for k in Kind}
_DUTIES = {d.value: d for d in Duty}
_MODES = {m.value: m for m in Mode}
_ANSWERS = {a.value: a for a in Answer}
_ID_RULE = "a string of 1-64 characters of A-Z a-z 0-9 _ -"


def _one_of(values: dict[str, Any]) -> str:
    return "one of " + ", ".join(f'"{v}"' for v in values)


_KIND_RULE = _one_of(_KINDS)
_DUTY_RULE = _one_of(_DUTIES)
_MODE_RULE = _one_of(_MODES)
_ANSWER_RULE = _one_of(_ANSWERS)
_JSON_TYPE = {dict: "object", list: "array", str: "string", int: "number", float: "number"}


def _show(value: object) -> str:
    """A value as the sender wrote it (JSON), cut short: reasons stay one readable line."""
    if isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:  # not a JSON value (an HTTP caller's object, a huge int)
            text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"


def _fail(code: Reason, name: str, rule: str, value: object) -> NoReturn:
    raise _Reject(code, f"field '{name}' must be {rule}, got {_show(value)}")


def _missing(name: str, rule: str) -> NoReturn:
    raise _Reject(Reason.MISSING_FIELD, f"field '{name}' is required: {rule}")


def _number(name: str, value: object, lo: float, hi: float, rule: str) -> float:
    if type(value) is float and lo <= value <= hi:  # the common case first (hot path)
        return value + 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(Reason.WRONG_TYPE, name, rule, value)
    # One chained comparison on the good path; NaN fails it too (every
    # comparison with NaN is false), and only then do we look closer.
    if not lo <= value <= hi:
        if isinstance(value, float) and not math.isfinite(value):
            _fail(Reason.NOT_FINITE, name, "a finite number, " + rule, value)
        _fail(Reason.OUT_OF_RANGE, name, rule, value)
    return float(value) + 0.0  # in range, so float() cannot overflow; + 0.0: no -0.0


def _integer(name: str, value: object, lo: int, hi: int) -> int:
    rule = f"an integer from {lo} to {hi}"
    if isinstance(value, bool):
        _fail(Reason.WRONG_TYPE, name, rule, value)
    if isinstance(value, float):
        # 2.0 is accepted as 2: JSON has one number type and some encoders
        # write every number with a decimal point.
        if not math.isfinite(value):
            _fail(Reason.NOT_FINITE, name, rule, value)
        if not value.is_integer():
            _fail(Reason.WRONG_TYPE, name, rule, value)
    elif not isinstance(value, int):
        _fail(Reason.WRONG_TYPE, name, rule, value)
    if not lo <= value <= hi:
        _fail(Reason.OUT_OF_RANGE, name, rule, value)
    return int(value)


def _ident(name: str, value: object) -> str:
    if not isinstance(value, str):
        _fail(Reason.WRONG_TYPE, name, _ID_RULE, value)
    if not is_valid_id(value):
        _fail(Reason.BAD_ID, name, _ID_RULE, value)
    return value


def _choice(name: str, value: object, table: dict[str, Any], rule: str, code: Reason) -> Any:
    if not isinstance(value, str):
        _fail(Reason.WRONG_TYPE, name, rule, value)
    member = table.get(value)
    if member is None:
        _fail(code, name, rule, value)
    return member


def _text(name: str, value: object, limit: int) -> str:
    if value is None:
        return ""
    rule = f"a string of at most {limit} characters"
    if not isinstance(value, str):
        _fail(Reason.WRONG_TYPE, name, rule, value)
    if len(value) > limit:
        raise _Reject(Reason.OUT_OF_RANGE, f"field '{name}' must be {rule}, got {len(value)}")
    return value


_QUIET_RULE = 'a string "HH:MM-HH:MM" of the district\'s local time, e.g. "22:30-07:00"'
_QUIET_MATCH = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)").fullmatch


def _quiet_hours(value: object) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` as minutes of the day (start, end); the two must differ."""
    match = _QUIET_MATCH(value) if isinstance(value, str) else None
    if match is None:
        _fail(Reason.WRONG_TYPE if not isinstance(value, str) else Reason.UNKNOWN_VALUE,
              "quiet_hours", _QUIET_RULE, value)  # fmt: skip
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        _fail(Reason.OUT_OF_RANGE, "quiet_hours", "a start and an end that differ", value)
    return start, end


def _skills(value: object) -> tuple[str, ...]:
    rule = f"a list of at most {MAX_SKILLS} strings of 1-{MAX_SKILL_CHARS} characters"
    if not isinstance(value, list | tuple):
        _fail(Reason.WRONG_TYPE, "skills", rule, value)
    if len(value) > MAX_SKILLS:
        raise _Reject(
            Reason.OUT_OF_RANGE, f"field 'skills' must be {rule}, got {len(value)} entries"
        )
    for i, skill in enumerate(value):
        if not isinstance(skill, str):
            _fail(Reason.WRONG_TYPE, f"skills[{i}]", f"a string of 1-{MAX_SKILL_CHARS}", skill)
        if not 1 <= len(skill) <= MAX_SKILL_CHARS:
            _fail(Reason.OUT_OF_RANGE, f"skills[{i}]", f"1-{MAX_SKILL_CHARS} characters", skill)
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in skill):
            _fail(Reason.UNKNOWN_VALUE, f"skills[{i}]", "text without control characters", skill)
    return tuple(value)


def _json_problem(exc: orjson.JSONDecodeError) -> _Reject:
    # orjson refuses NaN, Infinity and numbers that overflow a double as invalid
    # JSON; they get their own code so that a sender sees what to fix.
    msg, doc, pos = exc.msg, exc.doc, exc.pos
    if msg.startswith("number is infinity"):
        return _Reject(
            Reason.NOT_FINITE,
            f"payload has a number too large to be finite at character {pos}; send finite numbers",
        )
    if isinstance(doc, str) and isinstance(pos, int) and doc.startswith(("NaN", "Infinity"), pos):
        return _Reject(
            Reason.NOT_FINITE,
            f"payload has NaN or Infinity at character {pos}, which JSON does not allow; "
            "send finite numbers",
        )
    return _Reject(
        Reason.NOT_JSON, f"payload is not UTF-8 JSON ({msg} at character {pos}); send a JSON object"
    )


# Which field of each message is its correlation id on the rejected topic.
_AMEND_FIELDS = (
    "lat", "lon", "address", "kind", "priority", "responders", "skills", "description",
)  # fmt: skip
_AMEND_RULE = ", ".join(f"'{f}'" for f in _AMEND_FIELDS) + " (and 'by', the operator's name)"


def _not_null(name: str, value: object) -> object:
    """An amendment's text field may be "" (to clear it) but not null (say what to set)."""
    if value is None:
        _fail(Reason.WRONG_TYPE, name, 'a string ("" to clear it)', value)
    return value


_ID_FIELD = {"report": "id", "reply": "alert_id", "arrived": "incident_id"}
_VOLUNTEER_TOPICS = frozenset({"status", "location", "reply", "arrived"})


class Codec:
    """Decodes inbound messages for one topic root and encodes rejections.

    ``decode`` never raises anything but BadMessage, whatever the bytes and the
    topic: a message can be refused, but never stop the engine.
    """

    def __init__(
        self,
        *,
        root: str = "dispatch",
        max_payload_bytes: int = 16384,
        in_area: Callable[[float, float], bool] | None = None,
        area_name: str = "the service area",
        future_tolerance_s: float = 30.0,
    ) -> None:
        if (
            not isinstance(root, str)
            or not root
            or root.startswith("$")  # $SYS and friends belong to the broker
            or any(c in root for c in "+#\0")
            or "" in root.split("/")
        ):
            raise ConfigError(
                "topic_root",
                root,
                "non-empty topic levels separated by '/', without '+', '#' or a leading '$'",
            )
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int):
            raise ConfigError("max_payload_bytes", max_payload_bytes, "a positive integer")
        if max_payload_bytes < 1:
            raise ConfigError("max_payload_bytes", max_payload_bytes, "a positive integer")
        if not isinstance(future_tolerance_s, int | float) or not (
            0 <= future_tolerance_s < math.inf
        ):
            raise ConfigError("future_tolerance_s", future_tolerance_s, "a finite number >= 0")
        self.root = root
        self.max_payload_bytes = max_payload_bytes
        self.area_name = area_name
        self.future_tolerance_s = float(future_tolerance_s)
        self._in_area = in_area
        self._prefix = root + "/"
        self._report_rest = "incidents/report"

    def topic(self, *parts: str) -> str:
        """A topic under the root: ``topic("incidents", iid, "state")``."""
        return self._prefix + "/".join(parts)

    def subscriptions(self) -> list[tuple[str, int]]:
        """The topic filters the engine subscribes to, with their QoS per the protocol."""
        # Locations are QoS 0: a lost one is replaced by the next in seconds.
        return [
            (self.topic("incidents", "report"), 1),
            (self.topic("volunteers", "+", "status"), 1),
            (self.topic("volunteers", "+", "location"), 0),
            (self.topic("volunteers", "+", "reply"), 1),
            (self.topic("volunteers", "+", "arrived"), 1),
        ]

    # ----------------------------------------------------------------- decoding

    def decode(self, topic: str, payload: bytes, now: float) -> Inbound:
        """Validate one inbound MQTT message; raises BadMessage and nothing else."""
        what: str | None = None
        obj: Any = None
        try:
            what, vid = self._route(topic)
            # Size first: a huge payload is refused before any work is spent on it.
            if len(payload) > self.max_payload_bytes:
                raise _Reject(
                    Reason.TOO_LARGE,
                    f"payload is {len(payload)} bytes; at most {self.max_payload_bytes} allowed",
                )
            obj = _parse(payload)
            if what == "location":  # the hot path first
                return self._location(vid, obj, now)
            if what == "report":
                return self._report(obj, now)
            if what == "status":
                return self._status(vid, obj)
            if what == "reply":
                return self._reply(vid, obj)
            return self._arrived(vid, obj)
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code, _correlation_id(what, obj)) from None

    def decode_report_object(self, obj: object, now: float, topic: str = "<http>") -> Report:
        """Validate a report body already parsed from JSON (the HTTP API); raises BadMessage."""
        try:
            return self._report(obj, now)
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code, _correlation_id("report", obj)) from None

    def decode_report_body(self, body: bytes, now: float, topic: str = "<http>") -> Report:
        """Validate a raw report body (the HTTP API) with the same limits as MQTT."""
        obj: Any = None
        try:
            if len(body) > self.max_payload_bytes:
                raise _Reject(
                    Reason.TOO_LARGE,
                    f"body is {len(body)} bytes; at most {self.max_payload_bytes} allowed",
                )
            obj = _parse(body)
            return self._report(obj, now)
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code, _correlation_id("report", obj)) from None

    def decode_amendment_body(
        self, body: bytes, topic: str = "PATCH /api/incidents"
    ) -> tuple[Amendment, str | None]:
        """Validate a raw amendment body (protocol 1.1): the changes, and the ``by`` given
        (the operator's name, checked by the caller). Raises BadMessage."""
        obj: Any = None
        try:
            if len(body) > self.max_payload_bytes:
                raise _Reject(
                    Reason.TOO_LARGE,
                    f"body is {len(body)} bytes; at most {self.max_payload_bytes} allowed",
                )
            if not body.strip():
                raise _Reject(
                    Reason.MISSING_FIELD,
                    "the body is empty; send a JSON object with the fields to change, any of "
                    + _AMEND_RULE,
                )
            obj = _parse(body)
            by = obj.get("by") if isinstance(obj, dict) else None
            return self._amendment(obj), by if isinstance(by, str) else None
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code) from None

    def decode_amendment_object(self, obj: object, topic: str = "<forwarded>") -> Amendment:
        """Validate an amendment already parsed (``Amendment.fields()`` from another
        instance); raises BadMessage."""
        try:
            return self._amendment(obj)
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code) from None

    def _amendment(self, obj: object) -> Amendment:
        if not isinstance(obj, dict):
            raise _not_object(obj)
        unknown = sorted(k for k in obj if k not in _AMEND_FIELDS and k != "by")
        if unknown:
            raise _Reject(
                Reason.UNKNOWN_VALUE,
                f"field '{unknown[0][:40]}' cannot be amended; the fields are " + _AMEND_RULE,
            )
        given = {k: v for k, v in obj.items() if k in _AMEND_FIELDS}
        if not given:
            raise _Reject(
                Reason.MISSING_FIELD,
                "nothing to change: give at least one of " + _AMEND_RULE,
            )
        get = given.get
        lat = lon = None
        if "lat" in given or "lon" in given:
            # A new place is both coordinates: half of one is useless.
            if "lon" not in given:
                _missing("lon", _COORD_LON + " when 'lat' is given")
            if "lat" not in given:
                _missing("lat", _COORD_LAT + " when 'lon' is given")
            lat = _number("lat", get("lat"), -90.0, 90.0, _COORD_LAT)
            lon = _number("lon", get("lon"), -180.0, 180.0, _COORD_LON)
            if self._in_area is not None and not self._in_area(lat, lon):
                raise _Reject(
                    Reason.OUTSIDE_AREA,
                    f"the new place lat {lat}, lon {lon} is outside {self.area_name}; "
                    "only incidents inside it can be dispatched",
                )
        kind: Kind | None = None
        if "kind" in given:
            kind = _choice("kind", get("kind"), _KINDS, _KIND_RULE, Reason.UNKNOWN_KIND)
        priority = responders = None
        if "priority" in given:
            priority = _integer("priority", get("priority"), PRIORITY_MIN, PRIORITY_MAX)
        if "responders" in given:
            responders = _integer("responders", get("responders"), RESPONDERS_MIN, RESPONDERS_MAX)
        skills = None if "skills" not in given else _skills(get("skills"))
        address = description = None
        if "address" in given:
            address = _text("address", _not_null("address", get("address")), MAX_ADDRESS_CHARS)
        if "description" in given:
            description = _text(
                "description", _not_null("description", get("description")), MAX_DESCRIPTION_CHARS
            )
        return Amendment(lat, lon, address, kind, priority, responders, skills, description)

    def rejected_payload(self, err: BadMessage, received_at: float) -> bytes:
        """The body published on ``<root>/rejected`` for ``err``; ``code`` is our extension."""
        body = {
            "topic": err.topic,
            "reason": err.reason,
            "received_at": format_time(received_at),
            "id": err.id,
            "code": err.code,
        }
        try:
            return orjson.dumps(body)
        except TypeError:
            # A topic string with lone surrogates cannot be UTF-8; replace them
            # rather than lose the rejection.
            clean = {
                k: v.encode("utf-8", "replace").decode() if isinstance(v, str) else v
                for k, v in body.items()
            }
            return orjson.dumps(clean)

    # ----------------------------------------------------------------- Web Push (addition)

    def push_filter(self) -> tuple[str, int]:
        """The topic filter of push subscriptions (``volunteers/+/push``), QoS 1."""
        return self.topic("volunteers", "+", "push"), 1

    def push_volunteer(self, topic: str) -> str | None:
        """The volunteer id of a ``volunteers/{vid}/push`` topic; None for any other topic."""
        if not topic.startswith(self._prefix) or not topic.endswith("/push"):
            return None
        parts = topic[len(self._prefix) :].split("/")
        if len(parts) == 3 and parts[0] == "volunteers" and parts[2] == "push":
            return parts[1]
        return None

    def decode_push(self, topic: str, payload: bytes) -> PushSubscription:
        """A push subscription (or its removal) from ``volunteers/{vid}/push``; raises
        BadMessage. The endpoint's scheme is checked by the caller (dispatch/push.py)."""
        try:
            vid = self.push_volunteer(topic)
            if vid is None or not is_valid_id(vid):
                raise _Reject(
                    Reason.BAD_ID, f"volunteer id in the topic must be {_ID_RULE}, got {_show(vid)}"
                )
            if len(payload) > _PUSH_PAYLOAD_MAX:
                raise _Reject(
                    Reason.TOO_LARGE,
                    f"payload is {len(payload)} bytes; at most {_PUSH_PAYLOAD_MAX} allowed",
                )
            obj = _parse(payload)
            if not isinstance(obj, dict):
                raise _not_object(obj)
            endpoint = _endpoint(obj.get("endpoint", _MISSING))
            remove = obj.get("remove", False)
            if not isinstance(remove, bool):
                _fail(Reason.WRONG_TYPE, "remove", "true or false", remove)
            if remove:
                return PushSubscription(vid, endpoint, remove=True)
            keys = obj.get("keys", _MISSING)
            if keys is _MISSING:
                _missing("keys", _KEYS_RULE)
            if not isinstance(keys, dict):
                _fail(Reason.WRONG_TYPE, "keys", _KEYS_RULE, keys)
            p256dh = _b64url("keys.p256dh", keys.get("p256dh", _MISSING), 65, _P256DH_RULE)
            if p256dh[0] != 4:
                raise _Reject(Reason.OUT_OF_RANGE, f"field 'keys.p256dh' must be {_P256DH_RULE}")
            auth = _b64url("keys.auth", keys.get("auth", _MISSING), 16, _AUTH_RULE)
            return PushSubscription(vid, endpoint, p256dh, auth)
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code) from None

    def decode_push_reply(self, body: bytes, topic: str) -> tuple[str, Answer, str]:
        """The body of ``POST /api/alerts/{alert_id}/reply`` (a service worker answering
        from a notification): volunteer id, answer and the alert's reply token."""
        try:
            if len(body) > _PUSH_PAYLOAD_MAX:
                raise _Reject(
                    Reason.TOO_LARGE,
                    f"body is {len(body)} bytes; at most {_PUSH_PAYLOAD_MAX} allowed",
                )
            obj = _parse(body)
            if not isinstance(obj, dict):
                raise _not_object(obj)
            raw = obj.get("volunteer_id", _MISSING)
            if raw is _MISSING:
                _missing("volunteer_id", "the id of the volunteer answering")
            vid = _ident("volunteer_id", raw)
            raw = obj.get("answer", _MISSING)
            if raw is _MISSING:
                _missing("answer", _ANSWER_RULE)
            answer: Answer = _choice("answer", raw, _ANSWERS, _ANSWER_RULE, Reason.UNKNOWN_VALUE)
            raw = obj.get("token", _MISSING)
            if raw is _MISSING:
                _missing("token", "the reply_token the alert's push carried")
            if not isinstance(raw, str) or not 0 < len(raw) <= 128:
                _fail(Reason.WRONG_TYPE, "token", "the reply_token the alert's push carried", raw)
            return vid, answer, raw
        except _Reject as r:
            raise BadMessage(topic, r.reason, r.code) from None

    def _route(self, topic: str) -> tuple[str, str]:
        if isinstance(topic, str) and topic.startswith(self._prefix):
            rest = topic[len(self._prefix) :]
            if rest == self._report_rest:
                return "report", ""
            parts = rest.split("/")
            if len(parts) == 3 and parts[0] == "volunteers" and parts[2] in _VOLUNTEER_TOPICS:
                if not is_valid_id(parts[1]):
                    raise _Reject(
                        Reason.BAD_ID,
                        f"volunteer id in the topic must be {_ID_RULE}, got {_show(parts[1])}",
                    )
                return parts[2], parts[1]
        raise _Reject(
            Reason.UNKNOWN_TOPIC,
            f"topic {_show(topic)} is not one the engine accepts; publish to "
            f"{self._prefix}incidents/report or "
            f"{self._prefix}volunteers/<id>/status|location|reply|arrived",
        )

    def _report(self, obj: object, now: float) -> Report:
        if not isinstance(obj, dict):
            raise _not_object(obj)
        get = obj.get
        raw = get("id")
        iid = None if raw is None else _ident("id", raw)
        raw = get("kind", _MISSING)
        if raw is _MISSING:
            _missing("kind", _KIND_RULE)
        kind: Kind = _choice("kind", raw, _KINDS, _KIND_RULE, Reason.UNKNOWN_KIND)
        lat = self._required_number(obj, "lat", -90.0, 90.0, _COORD_LAT)
        lon = self._required_number(obj, "lon", -180.0, 180.0, _COORD_LON)
        raw = get("priority")
        priority = None if raw is None else _integer("priority", raw, PRIORITY_MIN, PRIORITY_MAX)
        raw = get("responders")
        responders = (
            None if raw is None else _integer("responders", raw, RESPONDERS_MIN, RESPONDERS_MAX)
        )
        raw = get("skills")
        skills = None if raw is None else _skills(raw)
        raw = get("reported_at")
        reported_at = None if raw is None else self._time("reported_at", raw, now)
        address = _text("address", get("address"), MAX_ADDRESS_CHARS)
        description = _text("description", get("description"), MAX_DESCRIPTION_CHARS)
        # Last: every field is known good, and the area test is the costliest check.
        if self._in_area is not None and not self._in_area(lat, lon):
            raise _Reject(
                Reason.OUTSIDE_AREA,
                f"incident at lat {lat}, lon {lon} is outside {self.area_name}; "
                "only incidents inside it can be dispatched",
            )
        digest = _digest(
            kind, lat, lon, iid, priority, responders, skills, reported_at, address, description
        )
        return Report(
            kind=kind,
            lat=lat,
            lon=lon,
            id=iid,
            priority=priority,
            responders=responders,
            skills=skills,
            reported_at=reported_at,
            address=address,
            description=description,
            fingerprint=digest,
        )

    def _status(self, vid: str, obj: object) -> StatusUpdate:
        if not isinstance(obj, dict):
            raise _not_object(obj)
        get = obj.get
        raw = get("status", _MISSING)
        if raw is _MISSING:
            _missing("status", _DUTY_RULE)
        status: Duty = _choice("status", raw, _DUTIES, _DUTY_RULE, Reason.UNKNOWN_VALUE)
        raw = get("skills")
        skills = None if raw is None else _skills(raw)
        raw = get("mode")
        mode: Mode | None = (
            None if raw is None else _choice("mode", raw, _MODES, _MODE_RULE, Reason.UNKNOWN_VALUE)
        )
        raw_lat, raw_lon = get("lat"), get("lon")
        lat = lon = None
        if raw_lat is not None or raw_lon is not None:
            # A position is both coordinates or none: half of one is useless.
            if raw_lon is None:
                _missing("lon", _COORD_LON + " when 'lat' is given")
            if raw_lat is None:
                _missing("lat", _COORD_LAT + " when 'lon' is given")
            lat = _number("lat", raw_lat, -90.0, 90.0, _COORD_LAT)
            lon = _number("lon", raw_lon, -180.0, 180.0, _COORD_LON)
        # Protocol 1.1 additions, each optional.
        raw = get("receipts")
        if raw is not None and not isinstance(raw, bool):
            _fail(Reason.WRONG_TYPE, "receipts", "true or false", raw)
        receipts = raw
        # A setting sent as null is cleared; one left out stays as it was.
        cleared = frozenset(
            k for k in ("max_alerts_per_day", "quiet_hours") if k in obj and obj[k] is None
        )
        raw = get("max_alerts_per_day")
        budget: int | None = None
        if raw is not None:
            if isinstance(raw, bool) or not isinstance(raw, int):
                _fail(Reason.WRONG_TYPE, "max_alerts_per_day", "a whole number from 1 to 100", raw)
            if not 1 <= raw <= 100:
                _fail(
                    Reason.OUT_OF_RANGE, "max_alerts_per_day", "a whole number from 1 to 100", raw
                )
            budget = raw
        raw = get("quiet_hours")
        quiet = None if raw is None else _quiet_hours(raw)
        return StatusUpdate(
            vid, status, skills, mode, lat, lon, receipts, budget, quiet, cleared=cleared
        )

    def _location(self, vid: str, obj: object, now: float) -> LocationUpdate:
        if not isinstance(obj, dict):
            raise _not_object(obj)
        lat = self._required_number(obj, "lat", -90.0, 90.0, _COORD_LAT)
        lon = self._required_number(obj, "lon", -180.0, 180.0, _COORD_LON)
        raw = obj.get("ts")
        ts = None if raw is None else self._time("ts", raw, now)
        raw = obj.get("accuracy_m")
        accuracy = (
            None if raw is None else _number("accuracy_m", raw, 0.0, _FLOAT_MAX, "a number >= 0")
        )
        return LocationUpdate(vid, lat, lon, ts, accuracy)

    def _reply(self, vid: str, obj: object) -> Reply:
        if not isinstance(obj, dict):
            raise _not_object(obj)
        raw = obj.get("alert_id", _MISSING)
        if raw is _MISSING:
            _missing("alert_id", "the alert_id of the alert being answered")
        alert_id = _ident("alert_id", raw)
        raw = obj.get("answer", _MISSING)
        if raw is _MISSING:
            _missing("answer", _ANSWER_RULE)
        answer: Answer = _choice("answer", raw, _ANSWERS, _ANSWER_RULE, Reason.UNKNOWN_VALUE)
        return Reply(vid, alert_id, answer)

    def _arrived(self, vid: str, obj: object) -> Arrived:
        if not isinstance(obj, dict):
            raise _not_object(obj)
        raw = obj.get("incident_id", _MISSING)
        if raw is _MISSING:
            _missing("incident_id", "the id of the incident arrived at")
        return Arrived(vid, _ident("incident_id", raw))

    @staticmethod
    def _required_number(obj: dict[str, Any], name: str, lo: float, hi: float, rule: str) -> float:
        raw = obj.get(name, _MISSING)
        if raw is _MISSING:
            _missing(name, rule)
        return _number(name, raw, lo, hi, rule)

    def _time(self, name: str, raw: object, now: float) -> float:
        try:
            ts = parse_time(raw)
        except ValueError as exc:
            raise _Reject(Reason.BAD_TIME, f"field '{name}': {exc}") from None
        ahead = ts - now
        if ahead > self.future_tolerance_s:
            raise _Reject(
                Reason.FUTURE_TIME,
                f"field '{name}' is {ahead:.0f} s in the future, at most "
                f"{self.future_tolerance_s:g} s allowed; check the sender's clock",
            )
        return ts


_PUSH_PAYLOAD_MAX = 4096  # a browser's subscription is about 400 bytes
_ENDPOINT_RULE = f"an https:// URL of at most {PUSH_ENDPOINT_MAX_CHARS} characters"
_KEYS_RULE = 'an object {"p256dh": ..., "auth": ...} (PushSubscription.toJSON())'
_P256DH_RULE = "base64url of an uncompressed P-256 public key (65 bytes, starting 0x04)"
_AUTH_RULE = "base64url of the 16-byte authentication secret"


def _endpoint(value: object) -> str:
    if value is _MISSING:
        _missing("endpoint", _ENDPOINT_RULE)
    if not isinstance(value, str):
        _fail(Reason.WRONG_TYPE, "endpoint", _ENDPOINT_RULE, value)
    if not 0 < len(value) <= PUSH_ENDPOINT_MAX_CHARS or not value.isprintable() or " " in value:
        _fail(Reason.OUT_OF_RANGE, "endpoint", _ENDPOINT_RULE, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        _fail(Reason.OUT_OF_RANGE, "endpoint", _ENDPOINT_RULE, value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username:
        _fail(Reason.OUT_OF_RANGE, "endpoint", _ENDPOINT_RULE, value)
    return value


def _b64url(name: str, value: object, size: int, rule: str) -> bytes:
    if value is _MISSING:
        _missing(name, rule)
    if not isinstance(value, str) or len(value) > 2 * size:
        _fail(Reason.WRONG_TYPE, name, rule, value)
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        _fail(Reason.OUT_OF_RANGE, name, rule, value)
    if len(raw) != size:
        raise _Reject(Reason.OUT_OF_RANGE, f"field '{name}' must be {rule}, got {len(raw)} bytes")
    return raw


def _parse(payload: bytes) -> Any:
    if not payload:
        raise _Reject(Reason.NOT_JSON, "payload is empty; send a JSON object")
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _json_problem(exc) from None


def _not_object(obj: object) -> _Reject:
    what = "true/false" if isinstance(obj, bool) else _JSON_TYPE.get(type(obj), "null")
    return _Reject(Reason.NOT_OBJECT, f"payload must be a JSON object {{...}}, got a JSON {what}")


def _correlation_id(what: str | None, obj: object) -> str | None:
    # Echo the sender's id even when it is malformed (so it can match the
    # rejection to its message), as long as it is a short string.
    field = _ID_FIELD.get(what) if what is not None else None
    if field is None or not isinstance(obj, dict):
        return None
    value = obj.get(field)
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None
