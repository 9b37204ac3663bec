"""End to end, protocol 1.1 as an outside phone app would use it: written only against
PROTOCOL.md ("Additions in protocol 1.1"), with paho-mqtt (not the engine's library).

- Presence: a phone that sets the Last Will and drops off without a goodbye is not
  alerted; its next ``available`` brings it back; a confirmed responder whose will fires
  and who is not back within the grace is replaced.
- Delivery receipts: for a phone that says ``"receipts": true``, an alert with no
  ``received`` within the delivery timeout brings the next best volunteer at once, long
  before the wave timeout; one that acknowledges does not.
- Alert budget and quiet hours: never alerted past ``max_alerts_per_day`` or inside
  ``quiet_hours`` (the district's local time, UTC+8).

Timers are shortened through the environment so that "at once" and "after the wave
timeout" are seconds apart: delivery 2 s, offline grace 2 s, wave timeout 20 s, one
volunteer per wave.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from e2e_harness import WAIT, Engine, Field, offset, uid
from paho.mqtt.enums import CallbackAPIVersion
from servers import parse_mqtt_url

ENV = {
    "DISPATCH_POLICY_DELIVERY_TIMEOUT_S": "2",
    "DISPATCH_POLICY_OFFLINE_GRACE_S": "2",
    "DISPATCH_POLICY_WAVE_TIMEOUT_S": "20",
    "DISPATCH_POLICY_MAX_WAVE_SIZE": "1",
}
# Places far apart inside the district, one per test.
P1 = (30.2591, 120.1698)
P2 = (30.3050, 120.2700)
P3 = (30.2150, 120.1550)
P4 = (30.2800, 120.1900)
P5 = (30.3600, 120.2200)


@pytest.fixture
def field11(engine_factory: Callable[..., Engine], mqtt_url: str) -> Iterator[tuple[Engine, Field]]:
    engine = engine_factory(env=ENV)
    field = Field(mqtt_url, engine.topic_root)
    try:
        engine.start()
        yield engine, field
        assert engine.stop() == 0, engine.log_tail()
    finally:
        field.close()


class Phone:
    """One volunteer's app: its own connection with the Last Will PROTOCOL.md asks for."""

    def __init__(self, mqtt_url: str, root: str, vid: str) -> None:
        host, port = parse_mqtt_url(mqtt_url)
        self.vid = vid
        self.status_topic = f"{root}/volunteers/{vid}/status"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"phone-{vid}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        user = urllib.parse.urlsplit(mqtt_url)
        if user.username is not None:
            self.client.username_pw_set(user.username, user.password or "")
        self.client.will_set(self.status_topic, json.dumps({"status": "offline"}), qos=1)
        self.client.connect(host, port, keepalive=30, clean_start=True)
        self.client.loop_start()

    def send(self, body: dict[str, Any], topic: str | None = None) -> None:
        info = self.client.publish(topic or self.status_topic, json.dumps(body), qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def drop(self) -> None:
        """The phone vanishes (no DISCONNECT): the broker publishes the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _offline_count(engine: Engine) -> int:
    # A new 'since' each time: the figures are cached per 'since' for a few seconds.
    since = int(time.time()) - 3600 - int(uuid.uuid4().int % 1000)
    result = engine.get(f"/api/figures?since={since}")
    assert result.status == 200, result.body
    return int(result.json["offline_volunteers"])


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_phone_whose_will_fires_is_not_alerted_until_it_is_back(
    field11: tuple[Engine, Field], mqtt_url: str
) -> None:
    engine, field = field11
    near, far = uid("near"), uid("far")
    phone = Phone(mqtt_url, engine.topic_root, near)
    try:
        lat, lon = offset(*P1, 60, 0)
        phone.send({"status": "available", "lat": lat, "lon": lon, "skills": ["first_aid"]})
        field.status(far, lat=offset(*P1, 400, 180)[0], lon=offset(*P1, 400, 180)[1],
                     skills=["first_aid"])  # fmt: skip
        field.sync()
        before = _offline_count(engine)
        phone.drop()
        _until(lambda: _offline_count(engine) == before + 1, WAIT, "the will counted offline")

        first = uid("will")
        field.report({"id": first, "kind": "medical", "lat": P1[0], "lon": P1[1]})
        field.wait_alert(far, first)
        field.sync()
        assert field.alerts(near) == [], "an offline phone was alerted"
    finally:
        phone.client.loop_stop()

    # Back: a new connection and `available` make it alertable again at once.
    back = Phone(mqtt_url, engine.topic_root, near)
    try:
        lat, lon = offset(*P1, 60, 0)
        back.send({"status": "available", "lat": lat, "lon": lon, "skills": ["first_aid"]})
        _until(lambda: _offline_count(engine) == before, WAIT, "back from offline")
        second = uid("back")
        field.report({"id": second, "kind": "medical", "lat": P1[0], "lon": P1[1]})
        assert field.wait_alert(near, second)["incident_id"] == second
    finally:
        back.close()


def test_a_responder_who_drops_off_is_replaced_after_the_grace(
    field11: tuple[Engine, Field], mqtt_url: str
) -> None:
    engine, field = field11
    near, spare = uid("resp"), uid("spare")
    phone = Phone(mqtt_url, engine.topic_root, near)  # answers on its own connection
    try:
        lat, lon = offset(*P2, 80, 90)
        phone.send({"status": "available", "lat": lat, "lon": lon, "skills": ["first_aid"]})
        field.status(spare, lat=offset(*P2, 500, 270)[0], lon=offset(*P2, 500, 270)[1],
                     skills=["first_aid"])  # fmt: skip
        field.sync()
        iid = uid("drop")
        field.report({"id": iid, "kind": "medical", "lat": P2[0], "lon": P2[1]})
        alert = field.wait_alert(near, iid)
        phone.send(
            {"alert_id": alert["alert_id"], "answer": "accept"},
            topic=f"{engine.topic_root}/volunteers/{near}/reply",
        )
        go = field.wait_assignment(near, iid, "go")
        assert go["role"] == "primary", go
        dropped_at = time.time()
        phone.drop()
        # Not back within the 2 s grace: overdue, and the next best goes out.
        field.wait_alert(spare, iid, timeout=WAIT + 2)
        assert time.time() - dropped_at >= 2.0 - 0.3, "replaced before the grace was over"
        events = engine.incident(iid)["events"]
        overdue = [e for e in events if e["type"] == "overdue"]
        assert overdue, [e["type"] for e in events]
        assert overdue[0].get("why") == "offline", overdue[0]
    finally:
        phone.client.loop_stop()


def test_no_receipt_brings_the_next_volunteer_at_once_a_receipt_does_not(
    field11: tuple[Engine, Field], mqtt_url: str
) -> None:
    _, field = field11
    silent, acking, spare1, spare2 = uid("silent"), uid("acking"), uid("sp1"), uid("sp2")
    body = {"status": "available", "receipts": True, "skills": ["first_aid"]}
    for vid, place, spare in ((silent, P3, spare1), (acking, P4, spare2)):
        lat, lon = offset(*place, 50, 45)
        field.phone.publish(field.t("volunteers", vid, "status"), body | {"lat": lat, "lon": lon})
        field.volunteers.add(vid)
        field.status(spare, lat=offset(*place, 450, 225)[0], lon=offset(*place, 450, 225)[1],
                     skills=["first_aid"])  # fmt: skip
    field.sync()

    # The silent phone never says `received`: the spare is alerted after ~2 s, not 20 s.
    lost = uid("lost")
    t0 = time.time()
    field.report({"id": lost, "kind": "medical", "lat": P3[0], "lon": P3[1]})
    field.wait_alert(silent, lost)
    field.wait_alert(spare1, lost, timeout=WAIT + 2)
    took = time.time() - t0
    assert 1.5 <= took < 10, f"the next volunteer came {took:.1f} s after the report"

    # The acknowledging phone answers `received` at once: nobody else is alerted.
    heard = uid("heard")
    field.report({"id": heard, "kind": "medical", "lat": P4[0], "lon": P4[1]})
    alert = field.wait_alert(acking, heard)
    field.reply(acking, alert["alert_id"], "received")
    time.sleep(4)  # twice the delivery timeout
    field.sync()
    assert field.alerts(spare2, heard) == [], "alerted although the alert was delivered"
    assert [a.json["incident_id"] for a in field.alerts(acking)] == [heard]


def _local_hhmm(delta: timedelta) -> str:
    return (datetime.now(UTC) + timedelta(hours=8) + delta).strftime("%H:%M")


def test_alert_budget_and_quiet_hours_are_respected(
    field11: tuple[Engine, Field], mqtt_url: str
) -> None:
    engine, field = field11
    budget1, quiet, spare = uid("budget"), uid("quiet"), uid("spare")
    here = P5
    hour = timedelta(hours=1)
    quiet_now = f"{_local_hhmm(-hour)}-{_local_hhmm(hour)}"  # the local hour around now
    for vid, distance, extra in (
        (budget1, 40, {"max_alerts_per_day": 1}),
        (quiet, 20, {"quiet_hours": quiet_now}),
        (spare, 600, {}),
    ):
        lat, lon = offset(*here, distance, 90)
        field.phone.publish(
            field.t("volunteers", vid, "status"),
            {"status": "available", "lat": lat, "lon": lon, "skills": ["first_aid"], **extra},
        )
        field.volunteers.add(vid)
    field.sync()

    first = uid("b1")
    field.report({"id": first, "kind": "medical", "lat": here[0], "lon": here[1]})
    alert = field.wait_alert(budget1, first)  # the nearest not resting: 40 m
    field.reply(budget1, alert["alert_id"], "decline")
    assert engine.post(f"/api/incidents/{first}/cancel", {}, token=engine.token).status == 200

    second = uid("b2")
    field.report({"id": second, "kind": "medical", "lat": here[0], "lon": here[1]})
    field.wait_alert(spare, second)  # the budget of one is spent, quiet hours go on
    field.sync()
    assert [a.json["incident_id"] for a in field.alerts(budget1)] == [first]
    assert field.alerts(quiet) == [], "alerted inside quiet hours"
