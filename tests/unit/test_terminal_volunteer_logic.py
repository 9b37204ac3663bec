"""The terminal volunteer's logic (``simulators.terminal_volunteer.Volunteer``): no I/O."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from geo.distance import haversine_m
from simulators.terminal_volunteer import Out, Volunteer, _check, add_arguments

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
                "receipts": True,  # protocol 1.1: every alert gets a receipt at once
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
    assert "GO to incident inc-1 as PRIMARY (confirmed)" in lines[0]
    assert "小营巷 12 号" in lines[0]
    before = haversine_m(v.lat, v.lon, *SPOT)
    outs, said = v.tick(5.0, NOW + 5)
    after = haversine_m(v.lat, v.lon, *SPOT)
    assert abs((before - after) - 50.0) < 0.5  # 10 m/s for 5 s, straight toward it
    assert outs[0].leaf == "location"
    assert outs[0].qos == 0
    assert said[0].startswith("walking")
    v.lat, v.lon = SPOT  # there
    outs, said = v.command("h", NOW)
    assert [o.leaf for o in outs] == ["location", "arrived"]  # our position first
    assert outs[0].body["accuracy_m"] == 10.0
    assert outs[1] == Out("arrived", {"incident_id": "inc-1"})
    assert "told dispatch: here at inc-1 (0 m from the scene" in said[0]
    lines = v.on_assignment(
        {"incident_id": "inc-1", "action": "stand_down", "reason": "incident resolved"}, NOW
    )
    assert lines == [
        "STAND DOWN incident inc-1: the incident has been dealt with; thank you (incident resolved)"
    ]
    assert v.job is None
    assert v.command("h", NOW)[0] == []


def _sent(v: Volunteer, role: str | None = "primary") -> None:
    v.on_alert(_alert("al-1", "inc-1"), NOW)
    v.command("a", NOW)
    body = {"incident_id": "inc-1", "action": "go", "reason": "confirmed"}
    if role is not None:
        body["role"] = role
    v.on_assignment(body, NOW)


def test_go_says_the_role_and_a_backup_is_told_plainly() -> None:
    v = _volunteer()
    v.on_alert(_alert("al-1", "inc-1"), NOW)
    v.command("a", NOW)
    lines = v.on_assignment(
        {"incident_id": "inc-1", "action": "go", "reason": "confirmed", "role": "backup"}, NOW
    )
    assert "GO to incident inc-1 as BACKUP" in lines[0]
    assert "BACKUP: another volunteer is on the way too" in lines[1]
    assert "may be stood down" in lines[1]
    assert v.following() == "inc-1"
    assert "as backup" in v.describe(NOW)
    # The state says we were promoted (the primary was overdue): said once.
    state = {"id": "inc-1", "responders": [{"volunteer_id": "v1", "role": "primary"}]}
    assert v.on_state(state, NOW) == ["you are now the PRIMARY responder for inc-1"]
    assert v.on_state(state, NOW) == []
    # A 1.0 engine sends no role: primary.
    w = _volunteer()
    _sent(w, role=None)
    assert w.job is not None
    assert w.job["role"] == "primary"


def test_stand_down_reasons_in_plain_words() -> None:
    v = _volunteer()
    _sent(v)
    lines = v.on_assignment(
        {"incident_id": "inc-1", "action": "stand_down", "reason": "a faster responder is going"},
        NOW,
    )
    assert lines == [
        "STAND DOWN incident inc-1: a volunteer who will get there sooner is going in your "
        "place; thank you (a faster responder is going)"
    ]
    assert v.following() is None
    _sent(v)
    [line] = v.on_assignment(
        {"incident_id": "inc-1", "action": "stand_down", "reason": "enough responders on scene"},
        NOW,
    )
    assert "others are on scene now" in line
    _sent(v)
    [line] = v.on_assignment(
        {"incident_id": "inc-1", "action": "stand_down", "reason": "something new"}, NOW
    )
    assert line == "STAND DOWN incident inc-1: something new"


def test_here_from_far_away_warns_and_h_bang_sends_anyway() -> None:
    v = _volunteer(accuracy_m=15.0)  # about 240 m from SPOT
    _sent(v)
    outs, said = v.command("h", NOW)
    assert outs == []
    assert "WARNING: by your position you are 24" in said[0]
    assert "UNVERIFIED" in said[0]
    assert "h! to send it anyway" in said[1]
    outs, said = v.command("h!", NOW + 1)
    assert [o.leaf for o in outs] == ["location", "arrived"]
    assert outs[0].body["accuracy_m"] == 15.0
    assert "arrival sent" in v.describe(NOW)
    # Within the radius plus the accuracy: no warning.
    v.lat, v.lon = 30.2591 + 40 / 111_195, 120.1698  # 40 m north: 30 + 15 covers it
    assert [o.leaf for o in v.command("h", NOW)[0]] == ["location", "arrived"]


def test_the_state_says_whether_the_arrival_was_believed() -> None:
    v = _volunteer()
    _sent(v)
    v.command("h!", NOW)
    me = {"volunteer_id": "v1", "role": "primary", "arrived_at": _iso(NOW), "verified": False}
    other = {"volunteer_id": "v2", "role": "backup", "arrived_at": None, "verified": False}
    state = {"id": "inc-1", "responders": [other, me]}
    [line] = v.on_state(state, NOW)
    assert "as UNVERIFIED" in line
    assert "arrival UNVERIFIED" in v.describe(NOW)
    assert v.on_state(state, NOW + 1) == []  # said once
    assert v.on_state({**state, "id": "inc-other"}, NOW) == []
    me["verified"] = True
    assert v.on_state(state, NOW + 2) == ["dispatch CONFIRMED your arrival at inc-1"]
    assert "arrival confirmed" in v.describe(NOW)
    # A 1.0 engine's state has no "verified": an arrival is an arrival.
    w = _volunteer()
    _sent(w)
    old = {"volunteer_id": "v1", "arrived_at": _iso(NOW)}
    assert w.on_state({"id": "inc-1", "responders": [old]}, NOW) == [
        "dispatch CONFIRMED your arrival at inc-1"
    ]


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


def test_an_alert_gets_a_receipt_at_once_and_only_a_live_one() -> None:
    v = _volunteer()
    outs, lines = v.alert(_alert("al-1", "inc-1"), NOW)
    assert outs == [Out("reply", {"alert_id": "al-1", "answer": "received"})]
    assert "ALERT incident inc-1" in lines[0]
    # Not an answer: the alert still waits for accept or decline.
    assert v.command("a", NOW + 1)[0] == [Out("reply", {"alert_id": "al-1", "answer": "accept"})]
    assert v.alert(_alert("old", "inc-2", expires_in=-1), NOW)[0] == []  # stale: nothing
    assert v.alert({"kind": "medical"}, NOW)[0] == []  # no ids: nothing
    quiet = _volunteer(receipts=False)  # --no-receipts: a 1.0 client
    assert "receipts" not in quiet.status().body
    assert quiet.alert(_alert("al-3", "inc-3"), NOW)[0] == []


def test_the_will_and_the_budget_and_quiet_hours_in_the_status() -> None:
    v = _volunteer(max_alerts_per_day=5, quiet_hours="22:30-07:00")
    assert v.will() == Out("status", {"status": "offline"}, qos=1)
    body = v.status().body
    assert body["receipts"] is True
    assert body["max_alerts_per_day"] == 5
    assert body["quiet_hours"] == "22:30-07:00"
    # Quiet hours are the district's local time (UTC+8): 23:00 there is 15:00 UTC.
    at_2300 = datetime(2027, 3, 1, 15, 0, tzinfo=UTC).timestamp()
    at_1200 = datetime(2027, 3, 1, 4, 0, tzinfo=UTC).timestamp()
    at_0659 = datetime(2027, 3, 1, 22, 59, tzinfo=UTC).timestamp()
    assert v.quiet_now(at_2300)
    assert v.quiet_now(at_0659)
    assert not v.quiet_now(at_1200)
    assert "quiet hours 22:30-07:00 (resting now: no alerts)" in v.describe(at_2300)
    assert "at most 5 alerts a day" in v.describe(at_1200)
    assert "resting" not in v.describe(at_1200)
    day = _volunteer(quiet_hours="09:00-17:00")
    assert day.quiet_now(at_1200)
    assert not day.quiet_now(at_2300)


def test_the_budget_and_quiet_hours_flags_are_checked() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def check(*argv: str) -> str:
        return _check(parser.parse_args(["--id", "v1", *argv]))

    assert check("--max-alerts-per-day", "5", "--quiet-hours", "22:30-07:00") == ""
    assert "1..100" in check("--max-alerts-per-day", "0")
    assert "1..100" in check("--max-alerts-per-day", "101")
    assert "HH:MM-HH:MM" in check("--quiet-hours", "22-7")
    assert "HH:MM-HH:MM" in check("--quiet-hours", "24:00-07:00")
    assert "differ" in check("--quiet-hours", "07:00-07:00")


def test_withdraw_after_a_go_asks_first_then_names_the_alert() -> None:
    v = _volunteer()
    assert v.command("w!", NOW)[0] == []  # nothing to withdraw from
    v.alert(_alert("a9", "i9"), NOW)
    v.command("a", NOW)
    said = v.on_assignment(
        {"incident_id": "i9", "action": "go", "reason": "confirmed", "alert_id": "a9",
         "role": "primary"},
        NOW,
    )  # fmt: skip
    assert any("w! = I can't go after all" in line for line in said)
    outs, said = v.command("w", NOW + 1)  # asked once more: nothing sent
    assert outs == []
    assert "w! to say you cannot go" in said[1]
    outs, _ = v.command("w!", NOW + 2)
    assert outs == [Out("reply", {"alert_id": "a9", "answer": "withdraw"})]
    said = v.on_assignment(
        {"incident_id": "i9", "action": "stand_down", "reason": "withdrawn", "alert_id": "a9"},
        NOW + 3,
    )
    assert "finding someone else" in said[0]
    assert v.job is None
