"""The core's messages on the wire, byte for byte (PROTOCOL.md, "Out of the engine")."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from dispatch.codec import Codec
from dispatch.effects import (
    Action,
    AssignmentReason,
    EventType,
    LogEvent,
    Role,
    SendAlert,
    SendAssignment,
    StateChanged,
)
from dispatch.wire import Publish, Wire, read_alert

WIRE = Wire(Codec(root="dispatch"))


def test_an_alert_is_rounded_in_the_protocols_order_and_expires() -> None:
    alert = SendAlert(
        incident_id="i1",
        volunteer_id="v1",
        alert_id="a1",
        kind="medical",
        priority=1,
        lat=30.215,
        lon=120.155,
        address="小营巷 12 号",
        distance_m=100.04,
        eta_s=72.25,
        expires_at=1_800_000_090.0,
        description="fell",
        wave=1,
        skills=("first_aid",),
        expiry_s=90,
    )
    assert WIRE.message(alert) == Publish(
        "dispatch/volunteers/v1/alert",
        b'{"alert_id":"a1","incident_id":"i1","kind":"medical","priority":1,"lat":30.215,'
        b'"lon":120.155,"address":"\xe5\xb0\x8f\xe8\x90\xa5\xe5\xb7\xb7 12 \xe5\x8f\xb7",'
        b'"distance_m":100.0,"eta_s":72.2,"expires_at":"2027-01-15T08:01:30.000Z",'
        b'"description":"fell","wave":1,"skills":["first_aid"]}',
        qos=1,
        retain=False,
        expiry_s=90,
    )


def test_an_assignment_carries_its_role_only_with_go() -> None:
    go = SendAssignment("i1", "v1", "a1", Action.GO, AssignmentReason.CONFIRMED, Role.PRIMARY, 90)
    assert WIRE.message(go) == Publish(
        "dispatch/volunteers/v1/assignment",
        b'{"incident_id":"i1","action":"go","reason":"confirmed","alert_id":"a1","role":"primary"}',
        qos=1,
        expiry_s=90,
    )
    down = SendAssignment("i1", "v2", "a2", Action.STAND_DOWN, AssignmentReason.FILLED, None, 90)
    assert WIRE.message(down).payload == (
        b'{"incident_id":"i1","action":"stand_down","reason":"filled by others","alert_id":"a2"}'
    )


def test_states_are_retained_and_cleared_with_an_empty_message() -> None:
    state = StateChanged("i1", {"id": "i1", "state": "open"})
    assert WIRE.message(state) == Publish(
        "dispatch/incidents/i1/state", b'{"id":"i1","state":"open"}', qos=1, retain=True
    )
    cleared = StateChanged("i1", cleared=True)
    assert WIRE.message(cleared) == Publish("dispatch/incidents/i1/state", b"", retain=True)
    with pytest.raises(ValueError, match="either a state or cleared"):
        StateChanged("i1")


def test_reasons_are_the_wires_words() -> None:
    assert AssignmentReason.ended("cancelled") is AssignmentReason.INCIDENT_CANCELLED
    assert AssignmentReason.ENOUGH_ON_SCENE == "enough responders on scene"
    with pytest.raises(ValueError, match="is not a valid"):
        AssignmentReason.ended("open")


def test_an_event_type_is_checked() -> None:
    assert LogEvent("i1", "reported", 1.0).type is EventType.REPORTED  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a valid"):
        LogEvent("i1", "reportd", 1.0)  # type: ignore[arg-type]


# ------------------------------------------------------------ read_alert (push workers)

ALERT = SendAlert(
    incident_id="i1",
    volunteer_id="v-7",
    alert_id="a1",
    kind="medical",
    priority=1,
    lat=30.215,
    lon=120.155,
    address="小营巷 12 号",
    distance_m=100.04,
    eta_s=72.25,
    expires_at=1_800_000_090.5,
    description="fell",
    wave=2,
    skills=("first_aid", "aed"),
    expiry_s=90,
)


def test_an_alert_read_back_from_the_wire_is_the_alert_pushed() -> None:
    """A push worker pushes what the engine published: read back, the alert is the one
    the engine made (distance and ETA as rounded on the wire; what is left of it)."""
    message = WIRE.message(ALERT)
    read = read_alert(WIRE.codec, message.topic, message.payload, now=1_800_000_060.0)
    assert read == replace(ALERT, distance_m=100.0, eta_s=72.2, expiry_s=30)
    # So the push a worker builds from it is the engine's own, byte for byte.
    assert WIRE.message(read).payload == message.payload


@pytest.mark.parametrize(
    ("topic", "payload", "says"),
    [
        ("dispatch/volunteers/v1/assignment", b"{}", "not an alert topic"),
        ("other/volunteers/v1/alert", b"{}", "not an alert topic"),
        ("dispatch/volunteers//alert", b"{}", "not an alert topic"),
        ("dispatch/volunteers/a/b/alert", b"{}", "not one volunteer"),
        ("dispatch/volunteers/v1/alert", b"not json", "not JSON"),
        ("dispatch/volunteers/v1/alert", b'{"alert_id": "a1"}', "no field"),
        ("dispatch/volunteers/v1/alert", b"[1]", "wrong kind"),
    ],
)
def test_what_is_not_an_engine_alert_is_refused_with_why(
    topic: str, payload: bytes, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        read_alert(WIRE.codec, topic, payload, now=0.0)


def test_an_alert_with_a_field_of_the_wrong_kind_is_refused() -> None:
    body = orjson.loads(WIRE.message(ALERT).payload)
    body["alert_id"] = 7
    with pytest.raises(ValueError, match="wrong kind"):
        read_alert(WIRE.codec, "dispatch/volunteers/v1/alert", orjson.dumps(body), now=0.0)
