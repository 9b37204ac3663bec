"""The message dataclasses: immutable, and they refuse values the protocol forbids."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from dispatch.errors import (
    BackendUnavailable,
    BadMessage,
    ConfigError,
    DispatchError,
    InvalidTransition,
    Reason,
)
from dispatch.model import (
    ID_PATTERN,
    Answer,
    Arrived,
    Duty,
    Kind,
    LocationUpdate,
    Mode,
    Reply,
    Report,
    StatusUpdate,
    is_valid_id,
)


@pytest.mark.parametrize("value", ["a", "A-z_09", "x" * 64, "zy-20261126-0042"])
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value)


@pytest.mark.parametrize(
    "value", ["", "x" * 65, "a b", "a/b", "a+b", "a#b", "a:b", "小营", "a\n", None, 1, b"ab"]
)
def test_invalid_ids(value: object) -> None:
    assert not is_valid_id(value)


def test_id_pattern_is_the_protocols() -> None:
    assert ID_PATTERN == r"[A-Za-z0-9_-]{1,64}"


def test_enums_are_the_protocols_strings() -> None:
    assert [k.value for k in Kind] == [
        "cardiac_arrest",
        "medical",
        "fall",
        "fire",
        "dispute",
        "security",
        "lost_person",
        "other",
    ]
    assert [m.value for m in Mode] == ["walk", "bike", "ebike"]
    assert [d.value for d in Duty] == ["available", "off_duty", "offline"]  # 1.1: offline
    # 1.1: received; withdraw is this project's addition (docs/protocol.md)
    assert [a.value for a in Answer] == ["accept", "decline", "received", "withdraw"]
    assert str(Kind.FIRE) == "fire"


def test_report_defaults_are_not_filled_in() -> None:
    r = Report(Kind.MEDICAL, 30.2591, 120.1698)
    assert (r.id, r.priority, r.responders, r.skills, r.reported_at) == (None,) * 5
    assert (r.address, r.description, r.fingerprint) == ("", "", "")


def test_messages_are_frozen_and_slotted() -> None:
    r = Report(Kind.FIRE, 30.0, 120.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.lat = 31.0  # type: ignore[misc]
    assert not hasattr(r, "__dict__")
    loc = LocationUpdate("v1", 30.0, 120.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loc.lat = 1.0  # type: ignore[misc]
    assert hash(loc) == hash(LocationUpdate("v1", 30.0, 120.0))


REPORT_OK: dict[str, Any] = {"kind": Kind.FIRE, "lat": 30.2, "lon": 120.2}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"kind": "fire"}, "kind"),
        ({"lat": 90.5}, "lat"),
        ({"lat": math.nan}, "lat"),
        ({"lat": math.inf}, "lat"),
        ({"lat": True}, "lat"),
        ({"lat": "30"}, "lat"),
        ({"lon": -181.0}, "lon"),
        ({"id": "a b"}, "id"),
        ({"id": ""}, "id"),
        ({"priority": 0}, "priority"),
        ({"priority": 4}, "priority"),
        ({"priority": 2.0}, "priority"),
        ({"priority": True}, "priority"),
        ({"responders": 11}, "responders"),
        ({"skills": ["first_aid"]}, "skills"),
        ({"skills": ("",)}, "skill"),
        ({"skills": ("s" * 65,)}, "skill"),
        ({"skills": ("s",) * 21}, "skills"),
        ({"skills": (1,)}, "skill"),
        ({"reported_at": -1.0}, "reported_at"),
        ({"reported_at": math.nan}, "reported_at"),
        ({"address": "x" * 501}, "address"),
        ({"address": None}, "address"),
        ({"description": "x" * 2001}, "description"),
        ({"fingerprint": None}, "fingerprint"),
    ],
)
def test_report_rejects(change: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Report(**{**REPORT_OK, **change})


def test_report_accepts_the_limits() -> None:
    r = Report(
        Kind.CARDIAC_ARREST,
        -90,
        180,
        id="x" * 64,
        priority=3,
        responders=10,
        skills=("s" * 64,) * 20,
        reported_at=0.0,
        address="x" * 500,
        description="x" * 2000,
        fingerprint="abc",
    )
    assert r.responders == 10


def test_status_update() -> None:
    s = StatusUpdate("v1", Duty.AVAILABLE, ("first_aid",), Mode.BIKE, 30.2, 120.2)
    assert s.mode is Mode.BIKE
    assert StatusUpdate("v1", Duty.OFF_DUTY).lat is None


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"volunteer_id": "v 1"}, "volunteer_id"),
        ({"status": "available"}, "status"),
        ({"mode": "walk"}, "mode"),
        ({"lat": 30.2}, "together"),
        ({"lon": 120.2}, "together"),
        ({"lat": 91.0, "lon": 0.0}, "lat"),
        ({"skills": ("",)}, "skill"),
    ],
)
def test_status_update_rejects(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        StatusUpdate(**{"volunteer_id": "v1", "status": Duty.AVAILABLE, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"volunteer_id": ""}, "volunteer_id"),
        ({"lat": -90.1}, "lat"),
        ({"lon": math.nan}, "lon"),
        ({"ts": -5.0}, "ts"),
        ({"ts": math.inf}, "ts"),
        ({"accuracy_m": -0.1}, "accuracy_m"),
        ({"accuracy_m": math.inf}, "accuracy_m"),
    ],
)
def test_location_update_rejects(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        LocationUpdate(**{"volunteer_id": "v1", "lat": 30.2, "lon": 120.2, **kwargs})


def test_location_update_accepts_positions_anywhere() -> None:
    assert LocationUpdate("v1", -33.9, 151.2, 0.0, 0.0).accuracy_m == 0.0


def test_reply_and_arrived() -> None:
    assert Reply("v1", "a1", Answer.ACCEPT).answer is Answer.ACCEPT
    assert Arrived("v1", "i1").incident_id == "i1"
    with pytest.raises(ValueError, match="alert_id"):
        Reply("v1", "a/1", Answer.ACCEPT)
    with pytest.raises(ValueError, match="answer"):
        Reply("v1", "a1", "accept")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="incident_id"):
        Arrived("v1", "")
    with pytest.raises(ValueError, match="volunteer_id"):
        Arrived("v#1", "i1")


# ------------------------------------------------------------------ the error tree


def test_error_tree() -> None:
    for cls in (BadMessage, ConfigError, InvalidTransition, BackendUnavailable):
        assert issubclass(cls, DispatchError)
    assert issubclass(DispatchError, Exception)


def test_bad_message_attributes() -> None:
    err = BadMessage("dispatch/incidents/report", "field 'kind' ...", Reason.UNKNOWN_KIND, "zy-1")
    assert (err.topic, err.code, err.id) == ("dispatch/incidents/report", "unknown_kind", "zy-1")
    assert "dispatch/incidents/report" in str(err)
    assert BadMessage("t", "r", "not_json").id is None


def test_other_errors_say_what_happened() -> None:
    cfg = ConfigError("alerts.radius_m", -5, "a number > 0")
    assert (cfg.key, cfg.value, cfg.allowed) == ("alerts.radius_m", -5, "a number > 0")
    assert "alerts.radius_m" in str(cfg)
    assert "-5" in str(cfg)
    bug = InvalidTransition("zy-1", "resolved", "alerting")
    assert (bug.incident_id, bug.from_state, bug.to_state) == ("zy-1", "resolved", "alerting")
    assert "resolved" in str(bug)
    down = BackendUnavailable("redis", "connection refused")
    assert down.backend == "redis"
    assert "connection refused" in str(down)
    assert str(BackendUnavailable("mqtt")) == "mqtt unavailable"


def test_reason_codes_are_snake_case_and_closed() -> None:
    assert all(r.value == r.name.lower() for r in Reason)
    # with "retained" (a retained inbound message) and "not_accepted" (a withdraw)
    assert len(Reason) == 20


def test_huge_integers_are_refused_not_crashed_on() -> None:
    with pytest.raises(ValueError, match="lat"):
        Report(Kind.FIRE, 10**400, 120.0)
