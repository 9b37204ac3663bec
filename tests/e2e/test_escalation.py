"""End to end: escalation to the control room, with short timers set through the
environment of a fresh engine process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from e2e_harness import Engine, Field, offset, parse_ts, uid

# Far apart, inside the district.
D1 = (30.2591, 120.1698)
D2 = (30.3050, 120.2700)
D3 = (30.3600, 120.2200)
D4 = (30.2150, 120.1550)

SHORT = {
    "DISPATCH_POLICY_WAVE_TIMEOUT_S": "1",
    "DISPATCH_POLICY_ALERT_EXPIRY_S": "3",
    "DISPATCH_POLICY_MAX_WAVES": "2",
    "DISPATCH_POLICY_MAX_WAVE_SIZE": "6",
}


@pytest.fixture
def short(engine_factory: Callable[..., Engine], mqtt_url: str) -> Iterator[tuple[Engine, Field]]:
    engine = engine_factory(env=SHORT)
    field = Field(mqtt_url, engine.topic_root)  # observing before the engine starts
    try:
        engine.start()
        yield engine, field
        assert engine.stop() == 0, engine.log_tail()
    finally:
        field.close()


def test_nobody_eligible_in_reach_escalates_at_once(short: tuple[Engine, Field]) -> None:
    engine, field = short
    field.status(uid("noskill"), lat=D1[0] + 0.001, lon=D1[1], skills=["patrol"])
    field.status(uid("far"), lat=offset(*D1, 3500, 90)[0], lon=offset(*D1, 3500, 90)[1],
                 skills=["first_aid"])  # fmt: skip
    off = uid("off")
    field.status(off, lat=D1[0], lon=D1[1] + 0.001, skills=["first_aid"])
    field.status(off, "off_duty")
    field.sync()
    iid = uid("esc-none")
    t0 = time.time()
    field.report({"id": iid, "kind": "medical", "lat": D1[0], "lon": D1[1]})
    state = field.wait_state(iid, "escalated", timeout=2.0)
    assert time.time() - t0 < 2.0
    reason = state.get("escalation_reason")
    assert isinstance(reason, str), state
    assert reason, state
    assert "first_aid" in reason
    field.sync()
    assert field.alerts(incident_id=iid) == []
    detail = engine.incident(iid)
    assert detail["state"] == "escalated"
    assert any(e["type"] == "escalated" for e in detail["events"])
    assert engine.metric("dispatch_escalations_total") >= 1


def test_escalates_after_the_last_wave_when_nobody_answers(short: tuple[Engine, Field]) -> None:
    engine, field = short
    vids = [uid(f"w{i}") for i in range(8)]
    for i, vid in enumerate(vids):
        # By bike, 60-480 m: everyone within the 180 s target, so only silence escalates.
        lat, lon = offset(*D2, 60.0 * (i + 1), 45.0 * i)
        field.status(vid, lat=lat, lon=lon, skills=["first_aid"], mode="bike")
    field.sync()
    iid = uid("esc-waves")
    reported = time.time()
    field.report({"id": iid, "kind": "medical", "lat": D2[0], "lon": D2[1]})
    wave1 = [field.wait_alert(vid, iid) for vid in vids[:6]]
    assert {a["wave"] for a in wave1} == {1}
    # The wave timeout (1 s) passes with no answer: the next two are alerted in wave 2.
    wave2 = [field.wait_alert(vid, iid, timeout=4.0) for vid in vids[6:]]
    assert {a["wave"] for a in wave2} == {2}
    # After the last wave (max 2) goes unanswered: escalated, with a reason.
    state = field.wait_state(iid, "escalated", timeout=5.0)
    escalated_after = time.time() - reported
    states = [m.json["state"] for m in field.states(iid)]
    assert states[0] == "alerting"
    assert states.index("escalated") == len(states) - 1, states
    assert state["escalation_reason"], state
    assert "2 waves" in state["escalation_reason"]
    assert escalated_after >= 1.9, escalated_after
    detail = engine.incident(iid)
    ev = {e["type"]: e for e in detail["events"]}
    first_alert = min(parse_ts(e["at"]) for e in detail["events"] if e["type"] == "alerted")
    assert parse_ts(ev["escalated"]["at"]) - first_alert == pytest.approx(2.0, abs=0.5)
    # The alerts expire (3 s): every alerted volunteer is stood down, each once.
    for vid in vids:
        down = field.wait_assignment(vid, iid, "stand_down", timeout=6.0)
        assert "expired" in down["reason"], down
    # An accept after expiry gets a stand-down, never a go.
    field.reply(vids[0], wave1[0]["alert_id"], "accept")
    field.sync()
    actions = [a["action"] for a in field.assignments(vids[0], iid)]
    assert actions == ["stand_down", "stand_down"], actions
    assert len(field.alerts(incident_id=iid)) == 8


def test_too_far_to_be_in_time_alerts_anyway_and_escalates(short: tuple[Engine, Field]) -> None:
    _, field = short
    vid = uid("slow")
    # By e-bike 2500 m: about 591 s, far beyond the 180 s target but still of use (600 s)
    lat, lon = offset(*D3, 2500, 200)
    field.status(vid, lat=lat, lon=lon, skills=["first_aid"], mode="ebike")
    walker = uid("walker")  # on foot that far (1806 s): of no use, not alerted
    lat, lon = offset(*D3, 2500, 100)
    field.status(walker, lat=lat, lon=lon, skills=["first_aid"], mode="walk")
    field.sync()
    iid = uid("esc-late")
    field.report({"id": iid, "kind": "medical", "lat": D3[0], "lon": D3[1]})
    alert = field.wait_alert(vid, iid)
    assert alert["eta_s"] == pytest.approx(2500 * 1.3 / 5.5, abs=1.0)
    state = field.wait_state(iid, "escalated")
    assert "180" in state["escalation_reason"], state
    # The late responder may still take it.
    field.reply(vid, alert["alert_id"], "accept")
    assert field.wait_assignment(vid, iid)["action"] == "go"
    state = field.wait_state(iid, lambda b: b["responders"] != [])
    assert state["responders"][0]["volunteer_id"] == vid
    assert state["state"] == "assigned"  # an escalated incident is still worked on
    field.sync()
    assert field.alerts(walker) == []


def test_a_volunteer_who_stops_reporting_is_not_alerted(
    engine_factory: Callable[..., Engine], mqtt_url: str
) -> None:
    engine = engine_factory(env={"DISPATCH_VOLUNTEERS_LOCATION_TTL_S": "1"})
    field = Field(mqtt_url, engine.topic_root)
    try:
        engine.start()
        quiet, chatty = uid("quiet"), uid("chatty")
        # (both near enough to be in time: 55 m and 111 m on foot)
        field.status(quiet, lat=D4[0] + 0.0005, lon=D4[1], skills=["first_aid"])
        field.status(chatty, lat=D4[0] + 0.001, lon=D4[1], skills=["first_aid"])
        # Let the 1 s time-to-live pass for ``quiet`` while ``chatty`` keeps reporting.
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            field.location(chatty, D4[0] + 0.001, D4[1])
            time.sleep(0.2)
        field.sync()
        iid = uid("ttl")
        field.report({"id": iid, "kind": "medical", "lat": D4[0], "lon": D4[1]})
        field.wait_alert(chatty, iid)
        field.wait_state(iid, "alerting")
        field.sync()
        assert field.alerts(quiet) == [], "a volunteer silent beyond the TTL must not be alerted"
        assert engine.stop() == 0
    finally:
        field.close()
