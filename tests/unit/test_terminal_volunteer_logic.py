"""The terminal volunteer's logic (``simulators.terminal_volunteer.Volunteer``): no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from geo.distance import haversine_m
from simulators.terminal_volunteer import Out, Volunteer

NOW = 1_800_000_000.0
SPOT = (30.2591, 120.1698)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _alert(alert_id: str, iid: str, expires_in: float = 90.0) -> dict[str, object]:
    return {
        "alert_id": alert_id,
        "incident_id": iid,
        "kind": "medical",
        "priority": 1,
        "lat": SPOT[0],
        "lon": SPOT[1],
        "address": "小营巷 12 号",
        "distance_m": 250.0,
        "eta_s": 81.0,
        "expires_at": _iso(NOW + expires_in),
    }


def _volunteer(**kw: object) -> Volunteer:
    v = Volunteer("v1", 30.2570, 120.1690, **kw)  # type: ignore[arg-type]
    v.start()
    return v


def test_start_goes_available_with_position_mode_and_skills() -> None:
    v = Volunteer("v1", 30.25, 120.17, mode="bike", skills=("first_aid", "patrol"))
    assert v.start() == [
        Out(
            "status",
            {
                "status": "available",
                "skills": ["first_aid", "patrol"],
                "mode": "bike",
                "lat": 30.25,
                "lon": 120.17,
            },
        )
    ]


def test_an_alert_is_printed_and_accept_answers_the_newest() -> None:
    v = _volunteer()
    lines = v.on_alert(_alert("al-1", "inc-1"), NOW)
    assert "ALERT incident inc-1" in lines[0]
    assert "250 m" in lines[0]
    assert "81 s" in lines[0]
    assert "小营巷 12 号" in lines[0]
    assert "answer within 90 s" in lines[0]
    v.on_alert(_alert("al-2", "inc-2"), NOW + 1)
    outs, said = v.command("a", NOW + 2)
    assert outs == [Out("reply", {"alert_id": "al-2", "answer": "accept"})]
    assert "inc-2" in said[0]
    outs, _ = v.command("d al-1", NOW + 3)  # by id prefix
    assert outs == [Out("reply", {"alert_id": "al-1", "answer": "decline"})]
    assert v.command("a", NOW + 4) == ([], ["no alert to answer"])


def test_stale_and_expired_alerts_are_never_answered() -> None:
    v = _volunteer()
    assert "stale" in v.on_alert(_alert("old", "inc-1", expires_in=-1), NOW)[0]
    v.on_alert(_alert("al-1", "inc-1", expires_in=10), NOW)
    assert v.command("a", NOW + 11)[0] == []


def test_go_then_walk_there_then_stand_down() -> None:
    v = _volunteer(walk=True, speed_mps=10.0)
    v.on_alert(_alert("al-1", "inc-1"), NOW)
    v.command("a", NOW)
    lines = v.on_assignment({"incident_id": "inc-1", "action": "go", "reason": "confirmed"}, NOW)
    assert "GO to incident inc-1" in lines[0]
    assert "小营巷 12 号" in lines[0]
    before = haversine_m(v.lat, v.lon, *SPOT)
    outs, said = v.tick(5.0, NOW + 5)
    after = haversine_m(v.lat, v.lon, *SPOT)
    assert abs((before - after) - 50.0) < 0.5  # 10 m/s for 5 s, straight toward it
    assert outs[0].leaf == "location"
    assert outs[0].qos == 0
    assert said[0].startswith("walking")
    assert v.command("h", NOW)[0] == [Out("arrived", {"incident_id": "inc-1"})]
    lines = v.on_assignment(
        {"incident_id": "inc-1", "action": "stand_down", "reason": "incident resolved"}, NOW
    )
    assert lines == ["STAND DOWN incident inc-1: incident resolved"]
    assert v.job is None
    assert v.command("h", NOW)[0] == []


def test_off_duty_sends_nothing_and_commands_explain_themselves() -> None:
    v = _volunteer()
    assert v.command("off", NOW)[0] == [Out("status", {"status": "off_duty"})]
    assert v.tick(5.0, NOW) == ([], [])
    assert "usage: m walk|bike|ebike" in v.command("m car", NOW)[1][0]
    assert "usage: p LAT LON" in v.command("p north", NOW)[1][0]
    assert "latitude must be" in v.command("p 91 120", NOW)[1][0]
    assert "unknown command" in v.command("fly", NOW)[1][0]
    outs, _ = v.command("on", NOW)
    assert outs[0].body["status"] == "available"
