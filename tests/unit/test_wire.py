"""The core's messages on the wire, byte for byte (PROTOCOL.md, "Out of the engine")."""

from __future__ import annotations

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
from dispatch.wire import Publish, Wire

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
