"""End to end, one engine process for the module: alerts, assignment, arrival, receipts,
idempotency, bad input and the HTTP API, all through MQTT (paho) and HTTP (urllib).

Each test works in its own part of Shangcheng district with its own volunteer and
incident ids; the ``field`` fixture cancels its incidents and sends its volunteers off
duty afterwards, so the tests do not disturb each other.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from e2e_harness import (
    OUTSIDE,
    TOKEN,
    XIAOYING,
    Engine,
    Field,
    MqttClient,
    haversine_m,
    is_rfc3339_utc,
    offset,
    parse_ts,
    rfc3339,
    uid,
)

CIRCUITY = 1.3
SPEED = {"walk": 1.8, "bike": 4.0, "ebike": 5.5}
ALERT_FIELDS = {
    "alert_id",
    "incident_id",
    "kind",
    "priority",
    "lat",
    "lon",
    "address",
    "distance_m",
    "eta_s",
    "expires_at",
}
STATE_FIELDS = {
    "id",
    "state",
    "kind",
    "priority",
    "lat",
    "lon",
    "reported_at",
    "responders",
    "time_to_arrival_s",
    "within_target",
}

# One part of the district per test (pairwise 2-15 km apart, all inside the area).
C2 = (30.2150, 120.1550)
C3 = (30.3050, 120.2700)
C4 = (30.3600, 120.2200)
C5 = (30.2900, 120.2100)
C6 = (30.2450, 120.1550)
C7 = (30.3250, 120.2350)
C8 = (30.2750, 120.2050)


def eta(distance_m: float, mode: str = "walk") -> float:
    return distance_m * CIRCUITY / SPEED[mode]


def place(
    field: Field,
    center: tuple[float, float],
    vid: str,
    distance_m: float,
    bearing: float = 0.0,
    skills: list[str] | None = None,
    mode: str = "walk",
) -> tuple[float, float]:
    """An available volunteer ``distance_m`` from ``center``; returns its position."""
    lat, lon = offset(*center, distance_m, bearing)
    field.status(
        vid,
        "available",
        lat=lat,
        lon=lon,
        skills=["first_aid"] if skills is None else skills,
        mode=mode,
    )
    return lat, lon


def report(
    field: Field, center: tuple[float, float], iid: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "medical", "lat": center[0], "lon": center[1], **extra}
    if iid is not None:
        body["id"] = iid
    field.report(body)
    return body


def alerted_incident(
    field: Field, center: tuple[float, float], n: int, tag: str, **extra: Any
) -> tuple[str, list[str], dict[str, dict[str, Any]]]:
    """``n`` volunteers 100, 200, ... m from ``center``, an incident, and their alerts."""
    vids = [uid(f"{tag}v{i}") for i in range(n)]
    for i, vid in enumerate(vids):
        place(field, center, vid, 100.0 * (i + 1), bearing=45.0 * i)
    iid = uid(tag)
    report(field, center, iid, **extra)
    alerts = {vid: field.wait_alert(vid, iid) for vid in vids}
    return iid, vids, alerts


def assert_no_rejections(field: Field, start: int = 0) -> None:
    extra = [
        m.json for m in field.rejected.all()[start:] if "/sync-" not in m.json.get("topic", "")
    ]
    assert extra == [], f"unexpected rejections: {extra}"


# --------------------------------------------------------------------------- 1. alerts


def test_first_wave_alerts_the_fastest_eligible(engine: Engine, field: Field) -> None:
    lat0, lon0 = XIAOYING
    # vid -> (distance m, bearing, skills, mode)
    people: dict[str, tuple[float, float, list[str], str]] = {
        "t1-walk100": (100, 0, ["first_aid"], "walk"),
        "t1-walk200": (200, 90, ["first_aid", "patrol"], "walk"),
        "t1-walk300": (300, 180, ["first_aid"], "walk"),
        "t1-walk450": (450, 270, ["first_aid"], "walk"),
        "t1-walk700": (700, 45, ["first_aid"], "walk"),
        # farther than the 1000 m walker, but faster: eta 473 s against 722 s
        "t1-ebike2000": (2000, 135, ["first_aid"], "ebike"),
        # 722 s on foot: past the 600 s after which nobody makes a useful difference
        "t1-walk1000": (1000, 225, ["first_aid"], "walk"),
        "t1-noskill50": (50, 315, ["patrol"], "walk"),  # nearest, but without first_aid
        "t1-noskill150": (150, 10, [], "bike"),
        "t1-far3200": (3200, 0, ["first_aid"], "ebike"),  # beyond the 3 km alert radius
    }
    suffix = uid("")[1:]
    vids = {name: f"{name}{suffix}" for name in people}
    positions = {}
    for name, (dist, bearing, skills, mode) in people.items():
        positions[name] = place(field, XIAOYING, vids[name], dist, bearing, skills, mode)
    field.sync()
    assert_no_rejections(field)

    iid = uid("t1")
    sent_at = time.time()
    report(field, XIAOYING, iid, address="小营巷 12 号", description="elderly man fell")
    expected = ["t1-walk100", "t1-walk200", "t1-walk300", "t1-walk450", "t1-walk700"]
    expected.append("t1-ebike2000")
    alerts = {name: field.wait_alert(vids[name], iid) for name in expected}
    receipt = field.wait_state(iid, "alerting")
    late = MqttClient(field.mqtt_url, name="late")
    try:
        late_all = late.subscribe(f"{field.root}/#")
        field.sync(also=[late_all])
        retained = [m for m in late_all.all() if m.topic.endswith(f"/incidents/{iid}/state")]
        late_alerts = [m for m in late_all.all() if m.topic.endswith("/alert")]
    finally:
        late.close()

    # Exactly the six with the skill who could be of use got an alert, once each.
    all_alerts = field.alerts()
    by_vid = Counter(m.topic.split("/")[-2] for m in all_alerts)
    assert by_vid == Counter(vids[n] for n in expected), by_vid
    for name in set(people) - set(expected):
        assert field.alerts(vids[name]) == [], f"{name} must not be alerted"

    for name, alert in alerts.items():
        dist, _, _, mode = people[name]
        assert set(alert) >= ALERT_FIELDS, alert
        assert alert["incident_id"] == iid
        assert alert["kind"] == "medical"
        assert alert["priority"] == 1
        assert alert["lat"] == lat0
        assert alert["lon"] == lon0
        assert alert["address"] == "小营巷 12 号"
        mine = haversine_m(*positions[name], lat0, lon0)
        assert abs(mine - dist) < 0.01
        assert alert["distance_m"] == pytest.approx(mine, abs=1.0), name
        assert alert["eta_s"] == pytest.approx(eta(mine, mode), abs=1.0), name
        assert is_rfc3339_utc(alert["expires_at"]), alert["expires_at"]
        # default expiry 90 s after the alert went out
        assert parse_ts(alert["expires_at"]) == pytest.approx(sent_at + 90, abs=3)
    assert len({a["alert_id"] for a in alerts.values()}) == 6

    # The receipt: the retained state, for live and for late subscribers.
    assert set(receipt) >= STATE_FIELDS, receipt
    assert receipt["id"] == iid
    assert receipt["kind"] == "medical"
    assert receipt["priority"] == 1
    assert (receipt["lat"], receipt["lon"]) == (lat0, lon0)
    assert is_rfc3339_utc(receipt["reported_at"])
    assert parse_ts(receipt["reported_at"]) == pytest.approx(sent_at, abs=2)
    assert receipt["responders"] == []
    assert receipt["time_to_arrival_s"] is None
    assert receipt["within_target"] is None
    assert len(retained) == 1, retained
    assert retained[0].retain, "a late subscriber must get the state as a retained message"
    assert retained[0].json["state"] == "alerting"
    assert retained[0].json["id"] == iid
    assert late_alerts == [], "alerts must never be retained"
    assert_no_rejections(field)


# --------------------------------------------------------------------------- 2. accept


def test_accept_go_stand_down_and_late_accept(engine: Engine, mqtt_url: str) -> None:
    # The phones speak MQTT 3.1.1 here (an older app), the engine MQTT 5.
    field = Field(mqtt_url, engine.topic_root, protocol=mqtt.MQTTv311)
    try:
        iid, vids, alerts = alerted_incident(field, C2, 5, "t2")
        first, *backups, late = vids  # 100, 200, 300, 400, 500 m away
        field.reply(first, alerts[first]["alert_id"], "accept")
        go = field.wait_assignment(first, iid, "go")
        assert go["incident_id"] == iid
        assert go["action"] == "go"
        assert go["role"] == "primary"  # protocol 1.1
        assert isinstance(go["reason"], str)
        # Three more acceptors go as backups (the default: about a quarter never arrive).
        for vid in backups:
            field.reply(vid, alerts[vid]["alert_id"], "accept")
            assert field.wait_assignment(vid, iid, "go")["role"] == "backup"
        # Filled, and the last is the slowest of all: stood down.
        down = field.wait_assignment(late, iid, "stand_down")
        assert "filled" in down["reason"], down
        state = field.wait_state(iid, lambda b: len(b["responders"]) == 4)
        assert state["state"] == "assigned"
        assert [(r["volunteer_id"], r["role"]) for r in state["responders"]] == [
            (first, "primary"),
            *((vid, "backup") for vid in backups),
        ]
        responder = state["responders"][0]
        assert responder["eta_s"] == pytest.approx(alerts[first]["eta_s"], abs=0.2)
        assert is_rfc3339_utc(responder["accepted_at"])
        assert responder["arrived_at"] is None

        # The last was released: a late accept is answered with stand_down, not go.
        field.reply(late, alerts[late]["alert_id"], "accept")
        field.sync()
        answers = field.assignments(late, iid)
        assert [a["action"] for a in answers] == ["stand_down", "stand_down"], answers
        assert [a["action"] for a in field.assignments(first, iid)] == ["go"]
        # A retried accept from the assigned volunteer is confirmed again, never refused.
        field.reply(first, alerts[first]["alert_id"], "accept")
        field.sync()
        assert [a["action"] for a in field.assignments(first, iid)] == ["go", "go"], field.dump()
        assert_no_rejections(field)
        after = engine.incident(iid)
        assert after["state"] == "assigned"
        assert [r["volunteer_id"] for r in after["responders"]] == [first, *backups]
    finally:
        try:
            engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)
            field.off_duty_all()
        finally:
            field.close()


# --------------------------------------------------------------------------- 3. arrival


def test_arrival_by_location_within_radius(engine: Engine, field: Field) -> None:
    reported_at = time.time() - 5.0
    iid, vids, alerts = alerted_incident(field, C3, 2, "t3", reported_at=rfc3339(reported_at))
    vid = vids[0]
    field.reply(vid, alerts[vid]["alert_id"], "accept")
    field.wait_assignment(vid, iid, "go")
    field.wait_state(iid, "assigned")
    count_before = engine.metric("dispatch_time_to_arrival_seconds_count")

    # On the way: 100 m, then 40 m away: not there yet.
    field.location(vid, *offset(*C3, 100, 10))
    field.location(vid, *offset(*C3, 40, 10))
    field.sync()
    assert all(m.json["state"] == "assigned" for m in field.states(iid)[-1:])
    assert (
        field.all.all(lambda m: m.topic.endswith(f"{iid}/state") and b"on_scene" in m.payload) == []
    )

    before = time.time()
    field.location(vid, *offset(*C3, 20, 10), accuracy_m=8)
    state = field.wait_state(iid, "on_scene")
    after = time.time()
    tta = state["time_to_arrival_s"]
    assert tta is not None
    assert before - reported_at - 0.5 <= tta <= after - reported_at + 0.5, tta
    arrived_at = parse_ts(state["responders"][0]["arrived_at"])
    assert tta == pytest.approx(arrived_at - parse_ts(state["reported_at"]), abs=0.002)
    assert parse_ts(state["reported_at"]) == pytest.approx(reported_at, abs=0.001)
    assert state["within_target"] is True
    assert state["responders"][0]["volunteer_id"] == vid
    assert engine.metric("dispatch_time_to_arrival_seconds_count") == count_before + 1
    assert_no_rejections(field)


def test_arrival_by_arrived_message(engine: Engine, field: Field) -> None:
    reported_at = time.time() - 3.0  # as Unix seconds this time
    iid, vids, alerts = alerted_incident(field, C4, 2, "t3b", reported_at=reported_at)
    vid = vids[1]  # not the nearest: any alerted volunteer may take it
    field.reply(vid, alerts[vid]["alert_id"], "accept")
    field.wait_assignment(vid, iid, "go")
    field.wait_state(iid, "assigned")
    # The phone sends a fix with "I'm here": 35 m away, accurate to 10 m (30 m + 10 m).
    field.location(vid, *offset(*C4, 35, 10), accuracy_m=10)
    field.arrived(vid, iid)
    state = field.wait_state(iid, "on_scene")
    assert state["responders"][0]["volunteer_id"] == vid
    assert state["responders"][0]["arrived_at"] is not None
    assert state["responders"][0]["verified"] is True
    assert state["arrival_verified"] is True
    tta = state["time_to_arrival_s"]
    assert 3.0 <= tta <= time.time() - reported_at + 0.5
    assert state["within_target"] is True
    # "I am here" again is harmless.
    field.arrived(vid, iid)
    field.sync()
    assert_no_rejections(field)
    assert engine.incident(iid)["time_to_arrival_s"] == tta


def test_arrived_far_from_the_scene_is_unverified_until_a_position_confirms_it(
    engine: Engine, field: Field
) -> None:
    """'I'm here' pressed 430 m away is not believed: no time to arrival, no within target."""
    iid, vids, alerts = alerted_incident(field, C8, 1, "t3c")
    vid = vids[0]
    field.reply(vid, alerts[vid]["alert_id"], "accept")
    field.wait_assignment(vid, iid, "go")
    field.location(vid, *offset(*C8, 430, 10), accuracy_m=10)
    field.arrived(vid, iid)
    state = field.wait_state(iid, "on_scene")
    assert state["arrival_verified"] is False
    assert state["responders"][0]["verified"] is False
    assert state["time_to_arrival_s"] is None
    assert state["within_target"] is None
    events = [e["type"] for e in engine.incident(iid)["events"]]
    assert "arrived" in events
    # Walking up to the door confirms it, from then.
    field.location(vid, *offset(*C8, 10, 10))
    field.sync()
    confirmed = engine.incident(iid)
    assert confirmed["arrival_verified"] is True
    assert confirmed["time_to_arrival_s"] > 0
    assert "arrival_verified" in [e["type"] for e in confirmed["events"]]


# --------------------------------------------------------------------------- 4. idempotency


def test_duplicate_report_gets_the_receipt_again_and_conflict_is_rejected(
    engine: Engine, field: Field
) -> None:
    vids = [uid(f"t4v{i}") for i in range(10)]
    for i, vid in enumerate(vids):
        place(field, C5, vid, 80.0 * (i + 1), bearing=36.0 * i)
    iid = uid("t4")
    body = {
        "id": iid,
        "kind": "fall",
        "lat": C5[0],
        "lon": C5[1],
        "address": "望江路 1 号",
        "description": "fell on the stairs",
        "reported_at": rfc3339(time.time() - 1),
    }
    field.report(body)
    field.wait_state(iid, "alerting")
    field.sync()
    first_alerts = field.alerts(incident_id=iid)
    assert len(first_alerts) == 8  # one wave of eight; two more volunteers are free
    states_before = len(field.states(iid))
    alerts_before = len(field.alerts())
    dup_before = engine.metric("dispatch_incidents_total", kind="fall", outcome="duplicate")

    # The same report again (a retry), in another key order: the receipt again, and nothing new.
    field.report(dict(reversed(list(body.items()))))
    field.sync()
    states = field.states(iid)
    assert len(states) == states_before + 1, (
        "the retry must get the receipt again; duplicates counted: "
        f"{engine.metric('dispatch_incidents_total', kind='fall', outcome='duplicate')} "
        f"(before {dup_before})\n{field.dump()}"
    )
    assert states[-1].json["id"] == iid
    assert states[-1].json["state"] == "alerting"
    assert len(field.alerts()) == alerts_before, "a retry must not alert anyone"
    listed = engine.get("/api/incidents").json["incidents"]
    assert [i["id"] for i in listed].count(iid) == 1
    assert (
        engine.metric("dispatch_incidents_total", kind="fall", outcome="duplicate")
        == dup_before + 1
    )

    # The same id with a different body: rejected with conflict, the original unchanged.
    n = len(field.rejected.all())
    field.report({**body, "description": "someone else entirely", "lat": C5[0] + 0.001})
    rejection = field.wait_rejected(lambda b: b.get("code") == "conflict", start=n)
    assert rejection["id"] == iid
    assert rejection["topic"] == field.t("incidents", "report")
    assert rejection["reason"]
    assert is_rfc3339_utc(rejection["received_at"])
    field.sync()
    assert len(field.alerts()) == alerts_before
    assert len(field.states(iid)) == states_before + 1, "a conflict must not touch the state"
    stored = engine.incident(iid)
    assert stored["lat"] == C5[0]
    assert stored["description"] == "fell on the stairs"
    assert stored["kind"] == "fall"
    assert len(stored["alerts"]) == 8
    listed = engine.get("/api/incidents").json["incidents"]
    assert [i["id"] for i in listed].count(iid) == 1
    assert len(field.rejected.all()) == n + 2  # the conflict and the sync marker


# --------------------------------------------------------------------------- 5. bad input

NAN_REPORT = b'{"kind": "medical", "lat": NaN, "lon": 120.1550, "id": "nan-report"}'


def _bad_inputs(root: str, alerted: str, alert_id: str, stranger: str, iid: str) -> list[Any]:
    """(topic, payload, code, id) for every kind of bad input on every inbound topic."""
    lat, lon = C6
    rep = f"{root}/incidents/report"

    def vol(vid: str, what: str) -> str:
        return f"{root}/volunteers/{vid}/{what}"

    big = {"kind": "medical", "lat": lat, "lon": lon, "description": "x" * 17_000}
    ok_report = {"kind": "medical", "lat": lat, "lon": lon}
    return [
        # incidents/report
        (rep, b"this is not json", "not_json", None),
        (rep, b"", "not_json", None),
        (rep, b"[1, 2]", "not_object", None),
        (rep, {**ok_report, "id": "r-wt", "lat": "30.2"}, "wrong_type", "r-wt"),
        (rep, {**ok_report, "id": "r-wt2", "responders": True}, "wrong_type", "r-wt2"),
        (rep, {**ok_report, "id": "r-range", "lat": 91.0}, "out_of_range", "r-range"),
        (rep, {**ok_report, "id": "r-prio", "priority": 7}, "out_of_range", "r-prio"),
        (rep, {**ok_report, "id": "r-out", "lat": OUTSIDE[0], "lon": OUTSIDE[1]},
         "outside_area", "r-out"),
        (rep, NAN_REPORT, "not_finite", None),
        (rep, b'{"kind": "medical", "lat": 30.2, "lon": Infinity}', "not_finite", None),
        (rep, b'{"kind": "medical", "lat": 1e999, "lon": 120.2}', "not_finite", None),
        (rep, {**ok_report, "id": "r-kind", "kind": "flood"}, "unknown_kind", "r-kind"),
        (rep, {**ok_report, "id": "r-Fire", "kind": "Fire"}, "unknown_kind", "r-Fire"),
        (rep, {"id": "r-nokind", "lat": lat, "lon": lon}, "missing_field", "r-nokind"),
        (rep, {**ok_report, "id": "bad id!"}, "bad_id", "bad id!"),
        (rep, big, "too_large", None),
        (rep, {**ok_report, "id": "r-naive", "reported_at": "2026-11-26T10:00:00"},
         "bad_time", "r-naive"),
        (rep, {**ok_report, "id": "r-future", "reported_at": time.time() + 3600},
         "future_time", "r-future"),
        # volunteers/{vid}/status
        (vol(stranger, "status"), b"{not json", "not_json", None),
        (vol(stranger, "status"), {"status": "available", "skills": "first_aid",
                                   "lat": lat, "lon": lon}, "wrong_type", None),
        (vol(stranger, "status"), {"status": "available", "lat": -91.0, "lon": lon},
         "out_of_range", None),
        (vol(stranger, "status"), b'{"status": "available", "lat": NaN, "lon": 120.1}',
         "not_finite", None),
        (vol(stranger, "status"), {"status": "busy"}, "unknown_value", None),
        (vol(stranger, "status"), {"status": "available", "mode": "car"}, "unknown_value", None),
        (vol(stranger, "status"), {"status": "available", "lat": lat}, "missing_field", None),
        (vol(uid("never-seen"), "status"), {"status": "available"}, "missing_field", None),
        (vol(stranger, "status"), {"status": "available", "x": "y" * 17_000}, "too_large", None),
        (vol("bad.id", "status"), {"status": "off_duty"}, "bad_id", None),
        (vol("x" * 65, "status"), {"status": "off_duty"}, "bad_id", None),
        # volunteers/{vid}/location
        (vol(stranger, "location"), b"\xff\xfe not utf-8", "not_json", None),
        (vol(stranger, "location"), {"lat": True, "lon": lon}, "wrong_type", None),
        (vol(stranger, "location"), {"lat": lat, "lon": 181.0}, "out_of_range", None),
        (vol(stranger, "location"), b'{"lat": NaN, "lon": 120.1}', "not_finite", None),
        (vol(stranger, "location"), {"lat": lat}, "missing_field", None),
        (vol(stranger, "location"), {"lat": lat, "lon": lon, "accuracy_m": -1},
         "out_of_range", None),
        (vol(stranger, "location"), {"lat": lat, "lon": lon, "pad": "z" * 17_000},
         "too_large", None),
        (vol("bad id", "location"), {"lat": lat, "lon": lon}, "bad_id", None),
        # volunteers/{vid}/reply
        (vol(stranger, "reply"), b"nope", "not_json", None),
        (vol(stranger, "reply"), {"alert_id": 12, "answer": "accept"}, "wrong_type", None),
        (vol(stranger, "reply"), {"alert_id": alert_id, "answer": "maybe"},
         "unknown_value", alert_id),
        (vol(stranger, "reply"), b'{"alert_id": "a1", "answer": "accept", "n": NaN}',
         "not_finite", None),
        (vol(stranger, "reply"), {"alert_id": "a0000000000000000", "answer": "accept"},
         "unknown_alert", "a0000000000000000"),
        (vol(stranger, "reply"), {"alert_id": alert_id, "answer": "accept"},
         "not_alerted", alert_id),
        (vol(stranger, "reply"), {"alert_id": alert_id, "answer": "decline"},
         "not_alerted", alert_id),
        (vol(stranger, "reply"), {"alert_id": alert_id, "answer": "accept", "p": "q" * 17_000},
         "too_large", None),
        (vol("no/good", "reply").replace("no/good", "bad!id"),
         {"alert_id": alert_id, "answer": "accept"}, "bad_id", None),
        # volunteers/{vid}/arrived
        (vol(stranger, "arrived"), b"42", "not_object", None),
        (vol(stranger, "arrived"), {"incident_id": 42}, "wrong_type", None),
        (vol(stranger, "arrived"), {"incident_id": "not an id"}, "bad_id", "not an id"),
        (vol(stranger, "arrived"), {"incident_id": "no-such-incident"},
         "unknown_incident", "no-such-incident"),
        (vol(stranger, "arrived"), {"incident_id": iid}, "not_alerted", iid),
        (vol(alerted, "arrived"), {"incident_id": iid}, "not_alerted", iid),  # alerted only
        (vol(stranger, "arrived"), b'{"incident_id": "x", "n": -Infinity}', "not_finite", None),
        (vol(stranger, "arrived"), {"incident_id": iid, "p": "q" * 17_000}, "too_large", None),
    ]  # fmt: skip


def test_every_bad_input_is_rejected_once_and_the_engine_carries_on(
    engine: Engine, field: Field
) -> None:
    # An incident with two alerted volunteers, and a third who was never alerted.
    iid, vids, alerts = alerted_incident(field, C6, 2, "t5")
    stranger = uid("t5stranger")
    place(field, C6, stranger, 150, 200)
    field.sync()
    assert_no_rejections(field)
    before_state = engine.incident(iid)
    metrics_before = engine.metrics()

    cases = _bad_inputs(field.root, vids[0], alerts[vids[0]]["alert_id"], stranger, iid)
    start = len(field.rejected.all())
    for i, (topic, payload, code, rid) in enumerate(cases):
        n = len(field.rejected.all())
        qos = 0 if topic.endswith("/location") else 1
        field.phone.publish(topic, payload, qos=qos)
        got = field.rejected.wait_for(None, what=f"(case {i}: {code} on {topic})", start=n).json
        assert got.get("code") == code, (i, topic, payload[:80], got)
        assert got["topic"] == topic, (i, got)
        assert isinstance(got["reason"], str), (i, got)
        assert len(got["reason"]) > 10, (i, got)
        assert "id" in got, got
        assert got["id"] == rid, (i, got)
        assert is_rfc3339_utc(got["received_at"]), got
    field.sync()
    # Exactly one rejection per bad message (and one for the sync marker).
    assert len(field.rejected.all()) == start + len(cases) + 1

    metrics_after = engine.metrics()
    expected = Counter(code for _, _, code, _ in cases)
    expected["not_json"] += 1  # the sync marker
    for code, count in expected.items():
        key = ("dispatch_rejected_messages_total", frozenset({("reason", code)}))
        delta = metrics_after.get(key, 0.0) - metrics_before.get(key, 0.0)
        assert delta == count, f"rejected metric for {code}: +{delta}, expected +{count}"

    # Nothing already accepted was lost or changed.
    after_state = engine.incident(iid)
    for key in ("state", "lat", "lon", "kind", "responders", "version"):
        assert after_state[key] == before_state[key], key
    assert [a["status"] for a in after_state["alerts"]] == ["pending", "pending"]
    assert field.assignments(vids[0]) == []
    # A volunteer may be outside the area, though: that is no rejection.
    n = len(field.rejected.all())
    field.status(stranger, "available", lat=OUTSIDE[0], lon=OUTSIDE[1])
    field.status(stranger, "available", lat=C6[0] + 0.001, lon=C6[1])
    field.sync()
    assert len(field.rejected.all()) == n + 1

    # And the engine still dispatches, promptly.
    iid2 = uid("t5ok")
    t0 = time.monotonic()
    report(field, C6, iid2)
    alert = field.wait_alert(stranger, iid2, timeout=2.0)
    assert time.monotonic() - t0 < 2.0
    assert alert["incident_id"] == iid2
    field.wait_state(iid2, "alerting", timeout=2.0)
    field.incidents.add(iid2)


# --------------------------------------------------------------------------- 8. HTTP


def test_http_api(engine: Engine, field: Field) -> None:
    assert engine.get("/healthz").status == 200
    assert engine.get("/readyz").json["ready"] is True

    missing = engine.get("/api/incidents/no-such-incident")
    assert missing.status == 404
    assert missing.headers.get("Content-Type", "").startswith("application/json")
    assert "error" in missing.json
    assert engine.get("/api/incidents/not%20an%20id").status == 404

    vids = [uid(f"t8v{i}") for i in range(3)]
    for i, vid in enumerate(vids):
        place(field, C7, vid, 120.0 * (i + 1), 100.0 * i)
    field.sync()
    iid = uid("t8")
    field.incidents.add(iid)
    body = {"id": iid, "kind": "medical", "lat": C7[0], "lon": C7[1], "responders": 2}

    no_token = engine.post("/api/incidents", body)
    assert no_token.status == 401, no_token
    assert "error" in no_token.json
    wrong = engine.post("/api/incidents", body, token="not-the-token")
    assert wrong.status == 403, wrong
    assert "error" in wrong.json
    assert engine.get(f"/api/incidents/{iid}").status == 404, "a refused report creates nothing"

    created = engine.post("/api/incidents", body, token=TOKEN)
    assert created.status == 201, created
    assert created.json["id"] == iid
    assert created.json["state"] == "alerting"
    alerts = {vid: field.wait_alert(vid, iid) for vid in vids}  # 2 needed: everyone
    field.wait_state(iid, "alerting")
    again = engine.post("/api/incidents", body, token=TOKEN)
    assert again.status == 200, again
    assert again.json["id"] == iid
    bad = engine.post("/api/incidents", {**body, "id": uid("t8bad"), "kind": "flood"}, token=TOKEN)
    assert bad.status == 400
    assert "error" in bad.json
    n_rejected = len(field.rejected.all())
    conflict = engine.post("/api/incidents", {**body, "responders": 3}, token=TOKEN)
    assert conflict.status == 409
    assert "error" in conflict.json
    # (HTTP errors are answered in the response only: test_http_conflict_is_answered_...)

    first = vids[0]
    field.reply(first, alerts[first]["alert_id"], "accept")
    field.wait_assignment(first, iid, "go")
    field.wait_state(iid, "assigned")

    detail = engine.incident(iid)
    assert set(detail) >= STATE_FIELDS
    assert detail["state"] == "assigned"
    assert [r["volunteer_id"] for r in detail["responders"]] == [first]
    assert {a["volunteer_id"] for a in detail["alerts"]} == set(vids)
    assert {a["alert_id"] for a in detail["alerts"]} == {a["alert_id"] for a in alerts.values()}
    events = [e["type"] for e in detail["events"]]
    assert events[0] == "reported"
    assert events.count("alerted") == 3
    assert "assigned" in events

    listed = engine.get("/api/incidents?state=assigned").json["incidents"]
    assert iid in [i["id"] for i in listed]
    assert engine.get("/api/incidents?state=bogus").status == 400

    refused = engine.post(f"/api/incidents/{iid}/cancel")
    assert refused.status == 401
    assert "error" in refused.json
    assert engine.post(f"/api/incidents/{iid}/cancel", token="nope").status == 403
    assert engine.post("/api/incidents/no-such-incident/cancel", token=TOKEN).status == 404

    cancelled = engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)
    assert cancelled.status == 200, cancelled
    assert cancelled.json["state"] == "cancelled"
    for vid in vids:  # the assigned one and the two still alerted
        down = field.wait_assignment(vid, iid, "stand_down")
        assert "cancel" in down["reason"], down
    state = field.wait_state(iid, "cancelled")
    assert state["id"] == iid
    assert engine.incident(iid)["state"] == "cancelled"
    # Cancelling again is either refused (4xx JSON) or a no-op; never a second stand-down.
    twice = engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)
    if twice.status == 200:
        assert twice.json["state"] == "cancelled"
    else:
        assert 400 <= twice.status < 500
        assert "error" in twice.json
    field.sync()
    for vid in vids:
        assert [a["action"] for a in field.assignments(vid, iid)].count("stand_down") == 1
    assert iid not in [i["id"] for i in engine.get("/api/incidents").json["incidents"]]

    text = engine.get("/metrics").body.decode()
    assert 'dispatch_decision_latency_seconds_bucket{le="1.0"}' in text
    assert 'dispatch_time_to_arrival_seconds_bucket{le="180.0"}' in text
    m = engine.metrics()
    assert m[("dispatch_decision_latency_seconds_count", frozenset())] >= 1
    assert_no_rejections(field, start=n_rejected)


def test_http_conflict_is_answered_over_http_only(engine: Engine, field: Field) -> None:
    """HTTP callers get their errors in the response; `rejected` is for MQTT messages."""
    iid = uid("t8c")
    field.incidents.add(iid)
    body = {"id": iid, "kind": "other", "lat": C7[0] + 0.01, "lon": C7[1]}
    assert engine.post("/api/incidents", body, token=TOKEN).status == 201
    n = len(field.rejected.all())
    assert engine.post("/api/incidents", {**body, "priority": 1}, token=TOKEN).status == 409
    # a marker over MQTT proves the engine has handled everything sent before it
    marker = uid("t8m")
    field.phone.publish(f"{field.root}/incidents/report", b"not json " + marker.encode())
    field.wait_rejected(lambda b: b.get("code") == "not_json", start=n)
    assert not [m for m in field.rejected.all()[n:] if m.json.get("id") == iid]
    m = engine.metrics()
    assert m[("dispatch_rejected_messages_total", frozenset({("reason", "conflict")}))] >= 1
