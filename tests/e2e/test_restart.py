"""End to end: the engine killed with SIGKILL mid-incident and started again on the same
Redis and topic root carries on; SIGTERM stops it cleanly."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e_harness import Engine, Field, offset, parse_ts, uid

R1 = (30.2900, 120.2100)
R2 = (30.3250, 120.2350)
R3 = (30.2450, 120.1550)
R4 = (30.3600, 120.2200)


def test_kill9_mid_incident_then_restart_honours_earlier_alerts(
    engine_factory: Callable[..., Engine], mqtt_url: str
) -> None:
    env = {
        "DISPATCH_POLICY_WAVE_TIMEOUT_S": "60",
        "DISPATCH_POLICY_ALERT_EXPIRY_S": "60",
        "DISPATCH_POLICY_BACKUP_RESPONDERS": "0",  # the first accept fills it
    }
    first = engine_factory(env=env)
    field = Field(mqtt_url, first.topic_root)
    try:
        first.start()
        v1, v2 = uid("k1"), uid("k2")
        for i, vid in enumerate((v1, v2)):
            lat, lon = offset(*R1, 150.0 * (i + 1), 90.0 * i)
            field.status(vid, lat=lat, lon=lon, skills=["first_aid"])
        iid = uid("crash")
        body = {"id": iid, "kind": "medical", "lat": R1[0], "lon": R1[1]}
        field.report(body)
        a1 = field.wait_alert(v1, iid)
        field.wait_alert(v2, iid)
        field.wait_state(iid, "alerting")

        first.kill9()
        assert first.proc is not None
        assert first.proc.returncode == -signal.SIGKILL
        second = engine_factory(
            env=env, redis_url=first.redis_url, topic_root=first.topic_root
        ).start()
        states_before = len(field.states(iid))
        # A reporter that never saw its receipt sends the same report again: the receipt
        # again, no second incident, nobody alerted twice.
        field.report(body)
        field.sync()
        assert len(field.states(iid)) > states_before
        assert [i["id"] for i in second.get("/api/incidents").json["incidents"]] == [iid]
        assert len(field.alerts(incident_id=iid)) == 2

        # The accept for an alert sent before the crash is honoured.
        field.reply(v1, a1["alert_id"], "accept")
        go = field.wait_assignment(v1, iid)
        assert go["action"] == "go", go
        down = field.wait_assignment(v2, iid, "stand_down")
        assert "filled" in down["reason"]
        state = field.wait_state(iid, "assigned")
        assert [r["volunteer_id"] for r in state["responders"]] == [v1]

        # And it carries on to on_scene.
        field.location(v1, *offset(*R1, 10, 0))
        state = field.wait_state(iid, "on_scene")
        assert state["time_to_arrival_s"] is not None
        detail = second.incident(iid)
        types = [e["type"] for e in detail["events"]]
        assert types.count("reported") == 1
        assert types.count("alerted") == 2
        assert "assigned" in types
        assert "arrived" in types
        assert second.stop() == 0, second.log_tail()
    finally:
        field.close()


OVERDUE_ENV = {
    "DISPATCH_POLICY_ALERT_EXPIRY_S": "2",
    "DISPATCH_POLICY_WAVE_TIMEOUT_S": "2",
    "DISPATCH_POLICY_MAX_WAVES": "1",
}


def _crash_while_an_alert_expires(
    engine_factory: Callable[..., Engine], field: Field, center: tuple[float, float]
) -> tuple[Engine, str, str, dict[str, Any], float]:
    """An alert sent, the engine SIGKILLed, the alert's expiry passing while it is down,
    and a new engine on the same Redis and root. Returns (engine, vid, iid, alert, ready)."""
    first = engine_factory(env=OVERDUE_ENV, topic_root=field.root)
    first.start()
    vid = uid("exp")
    lat, lon = offset(*center, 100, 0)
    field.status(vid, lat=lat, lon=lon, skills=["first_aid"])
    iid = uid("overdue")
    field.report({"id": iid, "kind": "medical", "lat": center[0], "lon": center[1]})
    alert = field.wait_alert(vid, iid)
    first.kill9()
    assert field.assignments(vid, iid) == []
    # The scenario needs the engine down while the alert expires: wait for that.
    expires = parse_ts(alert["expires_at"])
    time.sleep(max(0.0, expires - time.time() + 0.3))
    second = engine_factory(env=OVERDUE_ENV, redis_url=first.redis_url, topic_root=field.root)
    second.start()
    return second, vid, iid, alert, time.time()


def test_overdue_timers_fire_at_once_after_a_restart(
    engine_factory: Callable[..., Engine], mqtt_url: str
) -> None:
    field = Field(mqtt_url, uid("e2e"))
    try:
        engine, vid, iid, alert, ready_at = _crash_while_an_alert_expires(engine_factory, field, R2)
        # The wave timeout that passed while the engine was down fires at once.
        state = field.wait_state(iid, "escalated", timeout=3.0)
        assert "1 waves" in state["escalation_reason"], state
        assert time.time() - ready_at < 3.0
        detail = engine.incident(iid)
        assert [a["status"] for a in detail["alerts"]] == ["expired"]
        assert "expired" in [e["type"] for e in detail["events"]]
        # Never alerted again; a late accept gets a stand-down, not a go.
        field.reply(vid, alert["alert_id"], "accept")
        down = field.wait_assignment(vid, iid, "stand_down")
        assert "expired" in down["reason"], down
        field.sync()
        assert "go" not in [a["action"] for a in field.assignments(vid, iid)]
        assert len(field.alerts(vid)) == 1
        assert engine.stop() == 0, engine.log_tail()
    finally:
        field.close()


def test_alert_that_expired_while_down_gets_its_stand_down_after_restart(
    engine_factory: Callable[..., Engine], mqtt_url: str
) -> None:
    field = Field(mqtt_url, uid("e2e"))
    try:
        _, vid, iid, _, _ = _crash_while_an_alert_expires(engine_factory, field, R4)
        field.wait_state(iid, "escalated", timeout=3.0)
        down = field.wait_assignment(vid, iid, "stand_down", timeout=3.0)
        assert "expired" in down["reason"], down
    finally:
        field.close()


def test_sigterm_stops_cleanly_and_state_survives(
    engine_factory: Callable[..., Engine], mqtt_url: str
) -> None:
    engine = engine_factory()
    field = Field(mqtt_url, engine.topic_root)
    try:
        engine.start()
        vid = uid("st")
        field.status(vid, lat=R3[0] + 0.001, lon=R3[1], skills=["first_aid"])
        iid = uid("term")
        field.report({"id": iid, "kind": "medical", "lat": R3[0], "lon": R3[1]})
        field.wait_alert(vid, iid)
        field.wait_state(iid, "alerting")

        t0 = time.monotonic()
        code = engine.stop()
        assert code == 0, engine.log_tail()
        assert time.monotonic() - t0 < 10.0
        assert "stopped" in engine.log_tail(5)
        with pytest.raises(ConnectionRefusedError):  # the HTTP port is closed
            socket.create_connection(("127.0.0.1", engine.port), 0.5).close()

        again = engine_factory(redis_url=engine.redis_url, topic_root=engine.topic_root).start()
        detail = again.incident(iid)
        assert detail["state"] == "alerting"
        assert [a["volunteer_id"] for a in detail["alerts"]] == [vid]
        assert again.stop() == 0
    finally:
        field.close()
