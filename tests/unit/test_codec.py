"""The codec: every valid message decodes, every bad one is a BadMessage with the right code."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dispatch.codec import Codec, dumps, fingerprint, format_time, loads, parse_time
from dispatch.errors import BadMessage, ConfigError, Reason
from dispatch.model import (
    Answer,
    Arrived,
    Duty,
    Kind,
    LocationUpdate,
    Mode,
    Reply,
    Report,
    StatusUpdate,
)

NOW = parse_time("2026-11-26T10:00:30Z")


def in_box(lat: float, lon: float) -> bool:
    """A rectangle around Shangcheng district: enough to exercise outside_area."""
    return 30.0 <= lat <= 30.4 and 120.0 <= lon <= 120.4


@pytest.fixture
def codec() -> Codec:
    return Codec(in_area=in_box, area_name="Shangcheng district")


def enc(obj: Any) -> bytes:
    return orjson.dumps(obj)


REPORT = "dispatch/incidents/report"
STATUS = "dispatch/volunteers/v-1/status"
LOCATION = "dispatch/volunteers/v-1/location"
REPLY = "dispatch/volunteers/v-1/reply"
ARRIVED = "dispatch/volunteers/v-1/arrived"

FULL_REPORT = {
    "id": "zy-20261126-0042",
    "kind": "medical",
    "priority": 1,
    "lat": 30.2591,
    "lon": 120.1698,
    "address": "小营巷 12 号",
    "description": "elderly man fell, conscious",
    "responders": 1,
    "skills": ["first_aid"],
    "reported_at": "2026-11-26T10:00:00Z",
}


# ------------------------------------------------------------------ valid messages

VALID: list[tuple[str, str, dict[str, Any], object]] = [
    (
        "full report from the protocol page",
        REPORT,
        FULL_REPORT,
        Report(
            kind=Kind.MEDICAL,
            lat=30.2591,
            lon=120.1698,
            id="zy-20261126-0042",
            priority=1,
            responders=1,
            skills=("first_aid",),
            reported_at=NOW - 30,
            address="小营巷 12 号",
            description="elderly man fell, conscious",
        ),
    ),
    (
        "minimal report: defaults are not filled in",
        REPORT,
        {"kind": "fire", "lat": 30.25, "lon": 120.17},
        Report(kind=Kind.FIRE, lat=30.25, lon=120.17),
    ),
    (
        "report with integer coordinates, 2.0 priority, numeric time, extra field, nulls",
        REPORT,
        {
            "kind": "other",
            "lat": 30.25,
            "lon": 120.2,
            "priority": 2.0,
            "reported_at": NOW + 29,
            "source": "sensor-7",
            "id": None,
            "address": None,
        },
        Report(kind=Kind.OTHER, lat=30.25, lon=120.2, priority=2, reported_at=NOW + 29),
    ),
    (
        "report with empty skills (none required, unlike absent)",
        REPORT,
        {"kind": "security", "lat": 30.2, "lon": 120.2, "skills": []},
        Report(kind=Kind.SECURITY, lat=30.2, lon=120.2, skills=()),
    ),
    (
        "first status with everything",
        STATUS,
        {
            "status": "available",
            "skills": ["first_aid", "cpr"],
            "mode": "ebike",
            "lat": 30.2,
            "lon": 120.2,
        },
        StatusUpdate("v-1", Duty.AVAILABLE, ("first_aid", "cpr"), Mode.EBIKE, 30.2, 120.2),
    ),
    (
        "status off duty alone",
        STATUS,
        {"status": "off_duty"},
        StatusUpdate("v-1", Duty.OFF_DUTY),
    ),
    (
        "status position may lie outside the area",
        STATUS,
        {"status": "available", "lat": -33.9, "lon": 151.2},
        StatusUpdate("v-1", Duty.AVAILABLE, lat=-33.9, lon=151.2),
    ),
    (
        "location with everything",
        LOCATION,
        {"lat": 30.26, "lon": 120.17, "ts": "2026-11-26T18:00:00.250+08:00", "accuracy_m": 8},
        LocationUpdate("v-1", 30.26, 120.17, NOW - 29.75, 8.0),
    ),
    (
        "location outside the area, at the edges of the globe",
        LOCATION,
        {"lat": -90, "lon": 180},
        LocationUpdate("v-1", -90.0, 180.0),
    ),
    (
        "location with zero accuracy and numeric ts",
        LOCATION,
        {"lat": 0, "lon": 0, "ts": 1795687200, "accuracy_m": 0},
        LocationUpdate("v-1", 0.0, 0.0, 1795687200.0, 0.0),
    ),
    (
        "reply accept",
        REPLY,
        {"alert_id": "a_17", "answer": "accept"},
        Reply("v-1", "a_17", Answer.ACCEPT),
    ),
    (
        "reply decline",
        REPLY,
        {"alert_id": "a_17", "answer": "decline", "note": "on a train"},
        Reply("v-1", "a_17", Answer.DECLINE),
    ),
    ("arrived", ARRIVED, {"incident_id": "zy-1"}, Arrived("v-1", "zy-1")),
]


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [pytest.param(t, p, e, id=name) for name, t, p, e in VALID],
)
def test_valid_messages_decode(
    codec: Codec, topic: str, payload: dict[str, Any], expected: object
) -> None:
    got = codec.decode(topic, enc(payload), NOW)
    if isinstance(got, Report):
        assert got.fingerprint  # always set by the codec
        got = _without_fingerprint(got)
    assert got == expected
    assert type(got) is type(expected)


def _without_fingerprint(report: Report) -> Report:
    fields = {name: getattr(report, name) for name in Report.__dataclass_fields__}
    fields["fingerprint"] = ""
    return Report(**fields)


def test_decoded_values_have_exact_types(codec: Codec) -> None:
    got = codec.decode(REPORT, enc({"kind": "fall", "lat": 30, "lon": 120.2, "priority": 2.0}), NOW)
    assert isinstance(got, Report)
    assert type(got.lat) is float
    assert type(got.priority) is int
    assert got.kind is Kind.FALL
    loc = codec.decode(LOCATION, enc({"lat": -0.0, "lon": 5}), NOW)
    assert isinstance(loc, LocationUpdate)
    assert type(loc.lon) is float
    assert math.copysign(1.0, loc.lat) == 1.0  # -0.0 normalised


def test_the_topic_is_authoritative_for_the_volunteer_id(codec: Codec) -> None:
    got = codec.decode(ARRIVED, enc({"incident_id": "i1", "volunteer_id": "someone-else"}), NOW)
    assert got == Arrived("v-1", "i1")


def test_other_topic_roots() -> None:
    codec = Codec(root="test/abc-1/dispatch")
    assert codec.topic("incidents", "i1", "state") == "test/abc-1/dispatch/incidents/i1/state"
    got = codec.decode("test/abc-1/dispatch/volunteers/v9/arrived", b'{"incident_id":"i"}', NOW)
    assert got == Arrived("v9", "i")
    with pytest.raises(BadMessage) as info:
        codec.decode("dispatch/volunteers/v9/arrived", b'{"incident_id":"i"}', NOW)
    assert info.value.code == Reason.UNKNOWN_TOPIC


def test_subscriptions() -> None:
    assert Codec(root="r").subscriptions() == [
        ("r/incidents/report", 1),
        ("r/volunteers/+/status", 1),
        ("r/volunteers/+/location", 0),
        ("r/volunteers/+/reply", 1),
        ("r/volunteers/+/arrived", 1),
    ]


@pytest.mark.parametrize("root", ["", "/dispatch", "dispatch/", "a//b", "a/+/b", "#", "$SYS"])
def test_bad_root_is_a_config_error(root: str) -> None:
    with pytest.raises(ConfigError, match="topic_root"):
        Codec(root=root)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_payload_bytes": 0}, "max_payload_bytes"),
        ({"max_payload_bytes": True}, "max_payload_bytes"),
        ({"future_tolerance_s": -1}, "future_tolerance_s"),
        ({"future_tolerance_s": math.inf}, "future_tolerance_s"),
    ],
)
def test_bad_limits_are_config_errors(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Codec(**kwargs)


# ------------------------------------------------------------------ rejections

BIG = b'{"kind": "fire", "lat": 30.2, "lon": 120.2, "description": "' + b"x" * 17000 + b'"}'
NO_POS = {"lat": 30.2, "lon": 120.2}
R = Reason


def fire(**fields: Any) -> bytes:
    """A valid fire report with some fields replaced."""
    return enc({"kind": "fire", **NO_POS, **fields})


def ok_status(**fields: Any) -> bytes:
    return enc({"status": "available", **fields})


def pos(**fields: Any) -> bytes:
    return enc({**NO_POS, **fields})


# (name, topic, payload bytes, code, text the reason must contain: usually the field's name)
REJECTED: list[tuple[str, str, bytes, Reason, str]] = [
    # topics
    ("unknown root", "other/incidents/report", b"{}", R.UNKNOWN_TOPIC, "other/incidents"),
    ("outbound topic", "dispatch/volunteers/v1/alert", b"{}", R.UNKNOWN_TOPIC, "alert"),
    ("too deep", "dispatch/volunteers/v1/location/x", pos(), R.UNKNOWN_TOPIC, "topic"),
    ("root alone", "dispatch", b"{}", R.UNKNOWN_TOPIC, "topic"),
    ("empty vid", "dispatch/volunteers//location", pos(), R.BAD_ID, "volunteer id"),
    ("vid with space", "dispatch/volunteers/a b/status", b"{}", R.BAD_ID, "volunteer id"),
    ("vid too long", f"dispatch/volunteers/{'v' * 65}/status", b"{}", R.BAD_ID, "volunteer"),
    ("vid wildcard", "dispatch/volunteers/+/reply", b"{}", R.BAD_ID, "volunteer id"),
    # bytes
    ("too large, checked before parsing", REPORT, BIG, R.TOO_LARGE, "16384"),
    ("garbage too large", LOCATION, b"\xff" * 16385, R.TOO_LARGE, "16385 bytes"),
    ("empty payload", LOCATION, b"", R.NOT_JSON, "empty"),
    ("not JSON", LOCATION, b"lat=30", R.NOT_JSON, "JSON"),
    ("truncated JSON", LOCATION, b'{"lat": 30', R.NOT_JSON, "JSON"),
    ("not UTF-8", LOCATION, b'{"lat": "\xff"}', R.NOT_JSON, "JSON"),
    ("BOM", LOCATION, b"\xef\xbb\xbf{}", R.NOT_JSON, "JSON"),
    ("NaN literal", LOCATION, b'{"lat": NaN, "lon": 1}', R.NOT_FINITE, "NaN"),
    ("Infinity literal", LOCATION, b'{"lat": Infinity, "lon": 1}', R.NOT_FINITE, "Infinity"),
    ("-Infinity literal", LOCATION, b'{"lat": -Infinity, "lon": 1}', R.NOT_FINITE, "Inf"),
    ("overflowing number", LOCATION, b'{"lat": 1e999, "lon": 1}', R.NOT_FINITE, "finite"),
    ("array", LOCATION, b"[30.2, 120.2]", R.NOT_OBJECT, "array"),
    ("string", REPORT, b'"fire"', R.NOT_OBJECT, "string"),
    ("null", REPLY, b"null", R.NOT_OBJECT, "null"),
    ("number", ARRIVED, b"1", R.NOT_OBJECT, "number"),
    ("bool", STATUS, b"true", R.NOT_OBJECT, "true/false"),
    # report fields
    ("report no kind", REPORT, pos(), R.MISSING_FIELD, "'kind'"),
    ("report no lat", REPORT, enc({"kind": "fire", "lon": 120.2}), R.MISSING_FIELD, "'lat'"),
    ("report no lon", REPORT, enc({"kind": "fire", "lat": 30.2}), R.MISSING_FIELD, "'lon'"),
    ("kind unknown", REPORT, fire(kind="flood"), R.UNKNOWN_KIND, "'kind'"),
    ("kind wrong case", REPORT, fire(kind="Fire"), R.UNKNOWN_KIND, '"cardiac_arrest", "medical"'),
    ("kind not a string", REPORT, fire(kind=3), R.WRONG_TYPE, "'kind'"),
    ("lat string", REPORT, fire(lat="30.2"), R.WRONG_TYPE, "'lat' must be a number"),
    ("lat bool", REPORT, fire(lat=True), R.WRONG_TYPE, "'lat' must be a number"),
    ("lat null", REPORT, fire(lat=None), R.WRONG_TYPE, "'lat' must be a number"),
    ("lat 91", REPORT, fire(lat=91), R.OUT_OF_RANGE, "'lat' must be a number between -90 and 90"),
    ("lon -180.5", REPORT, fire(lon=-180.5), R.OUT_OF_RANGE, "'lon'"),
    ("outside area", REPORT, fire(lat=31.23, lon=121.47), R.OUTSIDE_AREA, "Shangcheng district"),
    ("id with space", REPORT, fire(id="zy 1"), R.BAD_ID, "'id'"),
    ("id empty", REPORT, fire(id=""), R.BAD_ID, "'id'"),
    ("id too long", REPORT, fire(id="x" * 65), R.BAD_ID, "'id'"),
    ("id number", REPORT, fire(id=42), R.WRONG_TYPE, "'id'"),
    ("priority 0", REPORT, fire(priority=0), R.OUT_OF_RANGE, "'priority' must be an integer"),
    ("priority 4", REPORT, fire(priority=4), R.OUT_OF_RANGE, "from 1 to 3, got 4"),
    ("priority 1.5", REPORT, fire(priority=1.5), R.WRONG_TYPE, "'priority'"),
    ("priority string", REPORT, fire(priority="1"), R.WRONG_TYPE, "'priority'"),
    ("priority bool", REPORT, fire(priority=True), R.WRONG_TYPE, "'priority'"),
    ("responders 0", REPORT, fire(responders=0), R.OUT_OF_RANGE, "'responders'"),
    ("responders 11", REPORT, fire(responders=11), R.OUT_OF_RANGE, "from 1 to 10, got 11"),
    ("skills string", REPORT, fire(skills="first_aid"), R.WRONG_TYPE, "'skills' must be a list"),
    ("skills entry number", REPORT, fire(skills=["a", 1]), R.WRONG_TYPE, "'skills[1]'"),
    ("skills entry empty", REPORT, fire(skills=[""]), R.OUT_OF_RANGE, "'skills[0]'"),
    ("skills entry long", REPORT, fire(skills=["s" * 65]), R.OUT_OF_RANGE, "'skills[0]'"),
    ("too many skills", REPORT, fire(skills=["s"] * 21), R.OUT_OF_RANGE, "got 21 entries"),
    ("skill with NUL", REPORT, fire(skills=["first\0aid"]), R.UNKNOWN_VALUE, "control characters"),
    ("skill with newline", STATUS, ok_status(skills=["a\nb"]), R.UNKNOWN_VALUE, "'skills[0]'"),
    ("skill with C1", STATUS, ok_status(skills=["a\x85"]), R.UNKNOWN_VALUE, "'skills[0]'"),
    ("time garbage", REPORT, fire(reported_at="yesterday"), R.BAD_TIME, "'reported_at'"),
    ("time naive", REPORT, fire(reported_at="2026-11-26T10:00:00"), R.BAD_TIME, "time zone"),
    ("time no date", REPORT, fire(reported_at="2026-02-30T10:00:00Z"), R.BAD_TIME, "calendar"),
    ("time bool", REPORT, fire(reported_at=True), R.BAD_TIME, "'reported_at'"),
    ("time in ms", REPORT, fire(reported_at=1795687200000), R.BAD_TIME, "milliseconds"),
    ("time negative", REPORT, fire(reported_at=-1), R.BAD_TIME, "1970"),
    (
        "time in the future",
        REPORT,
        fire(reported_at="2026-11-26T10:01:01Z"),
        R.FUTURE_TIME,
        "'reported_at' is 31 s in the future",
    ),
    ("address number", REPORT, fire(address=12), R.WRONG_TYPE, "'address'"),
    (
        "address too long",
        REPORT,
        fire(address="街" * 501),
        R.OUT_OF_RANGE,
        "'address' must be a string of at most 500 characters, got 501",
    ),
    ("description long", REPORT, fire(description="x" * 2001), R.OUT_OF_RANGE, "'description'"),
    # status
    ("status missing", STATUS, enc({"mode": "walk"}), R.MISSING_FIELD, "'status'"),
    (
        "status unknown",
        STATUS,
        enc({"status": "busy"}),
        R.UNKNOWN_VALUE,
        '\'status\' must be one of "available", "off_duty", "offline", got "busy"',
    ),
    ("status not string", STATUS, enc({"status": 1}), R.WRONG_TYPE, "'status'"),
    ("mode unknown", STATUS, ok_status(mode="car"), R.UNKNOWN_VALUE, "'mode'"),
    ("lat without lon", STATUS, ok_status(lat=30.2), R.MISSING_FIELD, "'lon'"),
    ("lon without lat", STATUS, ok_status(lon=120.2), R.MISSING_FIELD, "'lat'"),
    ("status lat 100", STATUS, ok_status(lat=100, lon=1), R.OUT_OF_RANGE, "'lat'"),
    ("status skills dict", STATUS, ok_status(skills={"a": 1}), R.WRONG_TYPE, "'skills'"),
    # location
    ("location no lat", LOCATION, enc({"lon": 120.2}), R.MISSING_FIELD, "'lat'"),
    ("location no lon", LOCATION, enc({"lat": 30.2}), R.MISSING_FIELD, "'lon'"),
    ("location lat string", LOCATION, pos(lat="30.2"), R.WRONG_TYPE, "'lat'"),
    ("location lon list", LOCATION, pos(lon=[1]), R.WRONG_TYPE, "'lon'"),
    ("location lon 181", LOCATION, pos(lon=181), R.OUT_OF_RANGE, "'lon'"),
    (
        "negative accuracy",
        LOCATION,
        pos(accuracy_m=-1),
        R.OUT_OF_RANGE,
        "'accuracy_m' must be a number >= 0, got -1",
    ),
    ("accuracy string", LOCATION, pos(accuracy_m="5"), R.WRONG_TYPE, "'accuracy_m'"),
    ("location bad ts", LOCATION, pos(ts="10:00"), R.BAD_TIME, "'ts'"),
    ("location future ts", LOCATION, pos(ts=NOW + 3600), R.FUTURE_TIME, "'ts'"),
    # reply
    ("no alert_id", REPLY, enc({"answer": "accept"}), R.MISSING_FIELD, "'alert_id'"),
    ("bad alert_id", REPLY, enc({"alert_id": "a/1", "answer": "accept"}), R.BAD_ID, "'alert_id'"),
    ("alert_id number", REPLY, enc({"alert_id": 7, "answer": "no"}), R.WRONG_TYPE, "'alert_id'"),
    ("no answer", REPLY, enc({"alert_id": "a1"}), R.MISSING_FIELD, "'answer'"),
    (
        "unknown answer",
        REPLY,
        enc({"alert_id": "a1", "answer": "yes"}),
        R.UNKNOWN_VALUE,
        '\'answer\' must be one of "accept", "decline"',
    ),
    ("answer bool", REPLY, enc({"alert_id": "a1", "answer": True}), R.WRONG_TYPE, "'answer'"),
    # arrived
    ("no incident_id", ARRIVED, b"{}", R.MISSING_FIELD, "'incident_id'"),
    ("bad incident_id", ARRIVED, enc({"incident_id": "i#1"}), R.BAD_ID, "'incident_id'"),
    ("null incident_id", ARRIVED, enc({"incident_id": None}), R.WRONG_TYPE, "'incident_id'"),
]


@pytest.mark.parametrize(
    ("topic", "payload", "code", "says"),
    [pytest.param(t, p, c, s, id=name) for name, t, p, c, s in REJECTED],
)
def test_rejections(codec: Codec, topic: str, payload: bytes, code: Reason, says: str) -> None:
    with pytest.raises(BadMessage) as info:
        codec.decode(topic, payload, NOW)
    err = info.value
    assert err.code == code
    assert says in err.reason
    assert err.topic == topic
    assert code.value in str(err)


def test_every_codec_reason_is_covered() -> None:
    # The codes the core raises (unknown_alert, ...) are tested with the core.
    core = {Reason.UNKNOWN_ALERT, Reason.NOT_ALERTED, Reason.CONFLICT, Reason.UNKNOWN_INCIDENT}
    core.add(Reason.NOT_ACCEPTED)  # a withdraw of an alert not accepted (the core)
    core.add(Reason.RETAINED)  # raised by the bus (see tests/integration/test_retained.py)
    assert {code for *_, code, _ in REJECTED} == set(Reason) - core


def test_future_tolerance_is_a_boundary(codec: Codec) -> None:
    ok = codec.decode(REPORT, enc({**NO_POS, "kind": "fire", "reported_at": NOW + 30}), NOW)
    assert isinstance(ok, Report)
    strict = Codec(future_tolerance_s=0)
    with pytest.raises(BadMessage) as info:
        strict.decode(REPORT, enc({**NO_POS, "kind": "fire", "reported_at": NOW + 1}), NOW)
    assert info.value.code == Reason.FUTURE_TIME


def test_without_an_area_every_valid_position_is_accepted() -> None:
    got = Codec().decode(REPORT, enc({"kind": "fire", "lat": -33.9, "lon": 151.2}), NOW)
    assert isinstance(got, Report)


def test_size_limit_is_configurable() -> None:
    codec = Codec(max_payload_bytes=32)
    payload = enc({"lat": 30.2, "lon": 120.2, "accuracy_m": 5})
    assert len(payload) > 32
    with pytest.raises(BadMessage) as info:
        codec.decode(LOCATION, payload, NOW)
    assert info.value.code == Reason.TOO_LARGE
    assert "at most 32" in info.value.reason


def test_reasons_stay_short_for_huge_values(codec: Codec) -> None:
    with pytest.raises(BadMessage) as info:
        codec.decode(LOCATION, enc({"lat": "9" * 5000, "lon": 1}), NOW)
    assert len(info.value.reason) < 200


# ------------------------------------------------------------------ correlation ids


@pytest.mark.parametrize(
    ("topic", "payload", "expected_id"),
    [
        (REPORT, {"id": "zy-1", "kind": "flood", "lat": 30.2, "lon": 120.2}, "zy-1"),
        (REPORT, {"id": "bad id!", "kind": "fire", "lat": 30.2, "lon": 120.2}, "bad id!"),
        (REPORT, {"id": "x" * 65, "kind": "fire", "lat": 30.2, "lon": 120.2}, None),
        (REPORT, {"id": 42, "kind": "fire", "lat": 30.2, "lon": 120.2}, None),
        (REPORT, {"kind": "fire", "lat": 99, "lon": 120.2}, None),
        (REPLY, {"alert_id": "a-9", "answer": "maybe"}, "a-9"),
        (ARRIVED, {"incident_id": "i 9"}, "i 9"),
        (STATUS, {"status": "sleeping"}, None),
        (LOCATION, {"lat": 91, "lon": 0}, None),
    ],
)
def test_rejection_carries_the_senders_id(
    codec: Codec, topic: str, payload: dict[str, Any], expected_id: str | None
) -> None:
    with pytest.raises(BadMessage) as info:
        codec.decode(topic, enc(payload), NOW)
    assert info.value.id == expected_id


def test_rejected_payload(codec: Codec) -> None:
    with pytest.raises(BadMessage) as info:
        codec.decode(REPORT, enc({"id": "zy-1", "kind": "flood", "lat": 30.2, "lon": 120.2}), NOW)
    body = orjson.loads(codec.rejected_payload(info.value, NOW + 0.5))
    assert body == {
        "topic": REPORT,
        "reason": info.value.reason,
        "received_at": "2026-11-26T10:00:30.500Z",
        "id": "zy-1",
        "code": "unknown_kind",
    }


def test_rejected_payload_without_id_has_null(codec: Codec) -> None:
    with pytest.raises(BadMessage) as info:
        codec.decode(LOCATION, b"nope", NOW)
    body = orjson.loads(codec.rejected_payload(info.value, NOW))
    assert set(body) == {"topic", "reason", "received_at", "id", "code"}
    assert body["id"] is None


def test_rejected_payload_survives_a_topic_that_is_not_utf8(codec: Codec) -> None:
    err = BadMessage("dispatch/\ud800", "bad", Reason.UNKNOWN_TOPIC)
    body = orjson.loads(codec.rejected_payload(err, NOW))
    assert body["topic"].startswith("dispatch/")


# ------------------------------------------------------------------ HTTP entry points


def test_decode_report_object(codec: Codec) -> None:
    got = codec.decode_report_object(FULL_REPORT, NOW)
    assert got == codec.decode(REPORT, enc(FULL_REPORT), NOW)
    with pytest.raises(BadMessage) as info:
        codec.decode_report_object({"id": "r1", "kind": "fire", "lat": float("nan"), "lon": 1}, NOW)
    assert info.value.code == Reason.NOT_FINITE
    assert info.value.topic == "<http>"
    assert info.value.id == "r1"
    with pytest.raises(BadMessage) as info:
        codec.decode_report_object([1, 2], NOW, topic="POST /api/incidents")
    assert info.value.code == Reason.NOT_OBJECT
    assert info.value.topic == "POST /api/incidents"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (float("inf"), Reason.NOT_FINITE),
        (10**400, Reason.OUT_OF_RANGE),
        (object(), Reason.WRONG_TYPE),
    ],
)
def test_decode_report_object_with_python_values(codec: Codec, value: object, code: Reason) -> None:
    with pytest.raises(BadMessage) as info:
        codec.decode_report_object({"kind": "fire", "lat": 30.2, "lon": value}, NOW)
    assert info.value.code == code
    assert "'lon'" in info.value.reason


def test_decode_report_body(codec: Codec) -> None:
    assert codec.decode_report_body(enc(FULL_REPORT), NOW) == codec.decode_report_object(
        FULL_REPORT, NOW
    )
    with pytest.raises(BadMessage) as info:
        codec.decode_report_body(b"{", NOW)
    assert info.value.code == Reason.NOT_JSON
    with pytest.raises(BadMessage) as info:
        codec.decode_report_body(BIG, NOW)
    assert info.value.code == Reason.TOO_LARGE


def test_dumps_and_loads() -> None:
    assert loads(dumps({"kind": Kind.FIRE, "r": Report(Kind.FALL, 1.0, 2.0)})) == {
        "kind": "fire",
        "r": {
            "kind": "fall",
            "lat": 1.0,
            "lon": 2.0,
            "id": None,
            "priority": None,
            "responders": None,
            "skills": None,
            "reported_at": None,
            "address": "",
            "description": "",
            "fingerprint": "",
        },
    }


# ------------------------------------------------------------------ fingerprints


def _fp(codec: Codec, payload: bytes) -> str:
    got = codec.decode(REPORT, payload, NOW)
    assert isinstance(got, Report)
    return got.fingerprint


def test_fingerprint_ignores_key_order_and_whitespace(codec: Codec) -> None:
    a = enc(FULL_REPORT)
    b = orjson.dumps(dict(reversed(list(FULL_REPORT.items()))), option=orjson.OPT_INDENT_2)
    assert a != b
    assert _fp(codec, a) == _fp(codec, b)


@pytest.mark.parametrize(
    "variant",
    [
        {"lat": 30, "lon": 120.2},  # vs 30.0
        {"priority": 2},  # vs 2.0
        {"reported_at": "2026-11-26T18:00:00.000+08:00"},  # vs the same instant in Z
        {"skills": ["b", "a", "a"]},  # vs ["a", "b"]: skills are a set
        {"address": ""},  # vs no address
        {"extra": "ignored"},  # unknown fields are ignored
        {"description": None},  # null is absent
    ],
)
def test_fingerprint_compares_meaning(codec: Codec, variant: dict[str, Any]) -> None:
    base = {
        "id": "r1",
        "kind": "fall",
        "lat": 30.0,
        "lon": 120.2,
        "priority": 2.0,
        "reported_at": "2026-11-26T10:00:00Z",
        "skills": ["a", "b"],
    }
    assert _fp(codec, enc(base)) == _fp(codec, enc({**base, **variant}))


@pytest.mark.parametrize(
    "variant",
    [
        {"lat": 30.2592},
        {"kind": "medical"},
        {"priority": 3},
        {"responders": 1},  # the default, but as sent it is a different body
        {"skills": []},  # none required vs the kind's default
        {"reported_at": "2026-11-26T10:00:00.001Z"},
        {"address": "小营巷 12 号"},
        {"id": "r2"},
    ],
)
def test_fingerprint_differs_when_a_value_does(codec: Codec, variant: dict[str, Any]) -> None:
    base = {"id": "r1", "kind": "fall", "lat": 30.2591, "lon": 120.2}
    assert _fp(codec, enc(base)) != _fp(codec, enc({**base, **variant}))


def test_fingerprint_function_matches_the_decoded_one(codec: Codec) -> None:
    got = codec.decode(REPORT, enc(FULL_REPORT), NOW)
    assert isinstance(got, Report)
    assert fingerprint(got) == got.fingerprint
    assert len(got.fingerprint) == 32


# ------------------------------------------------------------------ times


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T10:00:00Z", 1795687200.0),
        ("2026-11-26T10:00:00.123Z", 1795687200.123),
        ("2026-11-26t10:00:00z", 1795687200.0),
        ("2026-11-26 10:00:00Z", 1795687200.0),
        ("2026-11-26T18:00:00+08:00", 1795687200.0),
        ("2026-11-26T18:00:00+0800", 1795687200.0),
        ("2026-11-26T18:00:00+08", 1795687200.0),
        ("2026-11-26T05:30:00-04:30", 1795687200.0),
        ("2026-11-26T10:00:00.123456789Z", 1795687200.123456789),
        ("2016-12-31T23:59:60Z", 1483228800.0),  # a leap second rolls over
        ("1970-01-01T00:00:00Z", 0.0),
        ("9999-12-31T23:59:59.999Z", 253402300799.999),
        (1795687200, 1795687200.0),
        (1795687200.5, 1795687200.5),
    ],
)
def test_parse_time(text: object, expected: float) -> None:
    got = parse_time(text)
    assert type(got) is float
    assert got == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("2026-11-26T10:00:00", "time zone"),
        ("2026-11-26", "RFC 3339"),
        ("26/11/2026 10:00", "RFC 3339"),
        ("2026-13-01T00:00:00Z", "calendar"),
        ("2026-11-26T24:00:00Z", "time of day"),
        ("2026-11-26T10:60:00Z", "time of day"),
        ("2026-11-26T10:00:61Z", "second"),
        ("2026-11-26T10:00:00+25:00", "offset"),
        ("２０２６-11-26T10:00:00Z", "RFC 3339"),  # full-width digits
        ("1969-12-31T23:59:59Z", "1970"),
        ("", "RFC 3339"),
        (True, "RFC 3339"),
        (None, "RFC 3339"),
        ([1], "RFC 3339"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (-0.5, "1970"),
        (10**30, "9999"),
        (1795687200123, "milliseconds"),
    ],
)
def test_parse_time_rejects(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_time(value)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1795687200.123, "2026-11-26T10:00:00.123Z"),
        (1795687200.9996, "2026-11-26T10:00:01.000Z"),  # rounds to the nearest ms
        (253402300799.999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_time(ts: float, text: str) -> None:
    assert format_time(ts) == text


@pytest.mark.parametrize("ts", [-1.0, float("nan"), float("inf"), 253402300800.0, True])
def test_format_time_rejects(ts: float) -> None:
    with pytest.raises(ValueError, match=r"time|seconds"):
        format_time(ts)


@given(st.floats(min_value=0, max_value=253402300799.999))
def test_time_round_trip(ts: float) -> None:
    text = format_time(ts)
    back = parse_time(text)
    assert abs(back - ts) <= 0.0006
    assert format_time(back) == text  # formatting is a fixed point


@given(st.integers(min_value=0, max_value=253402300799999))
def test_millisecond_times_round_trip_exactly(ms: int) -> None:
    ts = ms / 1000
    assert parse_time(format_time(ts)) == ts


# ------------------------------------------------------------------ properties

ANY_CODEC = Codec(in_area=in_box)
ROOTS = ["dispatch/incidents/report"] + [
    f"dispatch/volunteers/{v}/{leaf}"
    for v in ("v1", "", "a b", "+")
    for leaf in ("status", "location", "reply", "arrived")
]
topics = st.one_of(st.sampled_from(ROOTS), st.text(max_size=80))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=70),
    st.sampled_from(
        [
            "fire",
            "medical",
            "available",
            "off_duty",
            "walk",
            "accept",
            "decline",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:00:00",
            "a1",
        ]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = [
    "id",
    "kind",
    "lat",
    "lon",
    "priority",
    "responders",
    "skills",
    "reported_at",
    "address",
    "description",
    "status",
    "mode",
    "ts",
    "accuracy_m",
    "alert_id",
    "answer",
    "incident_id",
]
near_valid_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10)


def _decodes_or_rejects(topic: str, payload: bytes) -> None:
    err: BadMessage | None = None
    try:
        got = ANY_CODEC.decode(topic, payload, NOW)
    except BadMessage as exc:
        err = exc
    if err is None:
        assert isinstance(got, Report | StatusUpdate | LocationUpdate | Reply | Arrived)
        return
    assert err.code in set(Reason)
    assert err.reason
    assert err.id is None or (isinstance(err.id, str) and len(err.id) <= 64)
    orjson.loads(ANY_CODEC.rejected_payload(err, NOW))  # always publishable


@given(topic=topics, payload=st.binary(max_size=200))
def test_any_bytes_on_any_topic_decode_or_raise_bad_message(topic: str, payload: bytes) -> None:
    _decodes_or_rejects(topic, payload)


@given(topic=st.sampled_from(ROOTS), obj=near_valid_objects)
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_object_decodes_or_raises_bad_message(topic: str, obj: dict[str, Any]) -> None:
    _decodes_or_rejects(topic, enc(obj))


@given(topic=st.sampled_from(ROOTS), value=json_values)
def test_any_json_value_decodes_or_raises_bad_message(topic: str, value: object) -> None:
    _decodes_or_rejects(topic, enc(value))


ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
lats = st.floats(min_value=30.15, max_value=30.35)
lons = st.floats(min_value=120.10, max_value=120.25)
# Skills are text without control characters (C0, DEL, C1): those are refused.
skill_lists = st.lists(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=64),
    max_size=20,
)
texts = st.text(max_size=100)


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": draw(st.sampled_from(list(Kind))).value,
        "lat": draw(lats),
        "lon": draw(lons),
    }
    optional = {
        "id": ids,
        "priority": st.integers(1, 3),
        "responders": st.integers(1, 10),
        "skills": skill_lists,
        "reported_at": st.floats(min_value=0, max_value=NOW + 30).map(format_time),
        "address": texts,
        "description": texts,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    return body


@given(reports())
def test_valid_reports_round_trip(body: dict[str, Any]) -> None:
    got = ANY_CODEC.decode(REPORT, enc(body), NOW)
    assert isinstance(got, Report)
    assert got.kind == body["kind"]
    assert (got.lat, got.lon) == (body["lat"], body["lon"])
    assert got.id == body.get("id")
    assert got.priority == body.get("priority")
    assert got.responders == body.get("responders")
    assert got.skills == (None if "skills" not in body else tuple(body["skills"]))
    if "reported_at" in body:
        assert got.reported_at is not None
        assert format_time(got.reported_at) == body["reported_at"]
    assert got.address == body.get("address", "")
    assert got.description == body.get("description", "")
    # The decoded report carries everything needed to send it again.
    again = ANY_CODEC.decode(REPORT, dumps(_as_sent(got)), NOW)
    assert again == got


def _as_sent(report: Report) -> dict[str, Any]:
    body = {n: getattr(report, n) for n in Report.__dataclass_fields__ if n != "fingerprint"}
    if report.reported_at is not None:
        body["reported_at"] = format_time(report.reported_at)
    return {k: v for k, v in body.items() if v is not None}


@given(reports(), st.randoms(use_true_random=False))
def test_fingerprint_ignores_key_order(body: dict[str, Any], rnd: Any) -> None:
    items = list(body.items())
    rnd.shuffle(items)
    a = ANY_CODEC.decode(REPORT, enc(body), NOW)
    b = ANY_CODEC.decode(REPORT, enc(dict(items)), NOW)
    assert isinstance(a, Report)
    assert isinstance(b, Report)
    assert a.fingerprint == b.fingerprint


@given(
    reports(),
    st.sampled_from(
        ["kind", "lat", "lon", "id", "priority", "responders", "address", "description"]
    ),
    st.data(),
)
def test_fingerprint_changes_with_a_value(
    body: dict[str, Any], name: str, data: st.DataObject
) -> None:
    strategies = {
        "kind": st.sampled_from(list(Kind)).map(str),
        "lat": lats,
        "lon": lons,
        "id": ids,
        "priority": st.integers(1, 3),
        "responders": st.integers(1, 10),
        "address": st.text(min_size=1, max_size=50),
        "description": st.text(min_size=1, max_size=50),
    }
    value = data.draw(strategies[name])
    assume(body.get(name) != value)
    a = ANY_CODEC.decode(REPORT, enc(body), NOW)
    b = ANY_CODEC.decode(REPORT, enc({**body, name: value}), NOW)
    assert isinstance(a, Report)
    assert isinstance(b, Report)
    assert a.fingerprint != b.fingerprint


@given(
    vid=ids,
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    ts=st.none() | st.floats(0, NOW + 30),
    acc=st.none() | st.floats(0, 1e6),
)
def test_valid_locations_round_trip(
    vid: str, lat: float, lon: float, ts: float | None, acc: float | None
) -> None:
    body: dict[str, Any] = {"lat": lat, "lon": lon}
    if ts is not None:
        body["ts"] = ts
    if acc is not None:
        body["accuracy_m"] = acc
    got = ANY_CODEC.decode(f"dispatch/volunteers/{vid}/location", enc(body), NOW)
    assert got == LocationUpdate(vid, lat, lon, ts, acc)
