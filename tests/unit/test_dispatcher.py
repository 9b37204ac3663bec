"""The dispatcher's decisions, driven event by event with a hand-moved clock."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from dispatch.codec import Codec
from dispatch.config import load_config
from dispatch.dispatcher import Dispatcher, UnknownIncident
from dispatch.effects import (
    Claim,
    Effect,
    EventType,
    LogEvent,
    Reject,
    Release,
    SaveIncident,
    SavePosition,
    SaveVolunteer,
    SendAlert,
    SendAssignment,
    StateChanged,
)
from dispatch.errors import InvalidTransition
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
from dispatch.policy import Policy, Strategy
from dispatch.roster import StoredProfile, StoredVolunteers
from dispatch.wire import Wire
from geo.area import ServiceArea

LAT, LON = 30.2591, 120.1698  # 小营巷
T0 = 1_800_000_000.0
CONFIG = load_config(env={})


@pytest.fixture(scope="module")
def area() -> ServiceArea:
    return ServiceArea.from_geojson(CONFIG.area_geojson)


def make(area: ServiceArea, **policy: Any) -> Dispatcher:
    """A dispatcher whose waves are at most 6 and keeps no backups unless a test says so:
    the mechanics below are easier to follow on small numbers."""
    policy.setdefault("max_wave_size", 6)
    policy.setdefault("backup_responders", 0)
    codec = Codec(root="dispatch", in_area=area.contains)
    return Dispatcher(
        area=area,
        codec=codec,
        policy=Policy(**policy),
        travel=CONFIG.travel,
        kinds=CONFIG.kinds,
        rng=random.Random(7),
    )


def on_duty(
    d: Dispatcher,
    vid: str,
    north_m: float,
    *,
    skills: Iterable[str] = ("first_aid",),
    mode: Mode = Mode.WALK,
) -> None:
    effects = d.status(
        StatusUpdate(vid, Duty.AVAILABLE, tuple(skills), mode, LAT + north_m / 111_195, LON), T0
    )
    assert not [e for e in effects if isinstance(e, Reject)]


WIRE = Wire(Codec(root="dispatch"))


def published(effects: list[Effect], suffix: str) -> list[tuple[str, dict[str, Any]]]:
    """The messages the shell would publish for ``effects`` (dispatch/wire.py), by topic."""
    messages = [
        WIRE.message(e) for e in effects if isinstance(e, SendAlert | SendAssignment | StateChanged)
    ]
    return [
        (m.topic, orjson.loads(m.payload))
        for m in messages
        if m.topic.endswith(suffix) and m.payload
    ]


def alerts(effects: list[Effect]) -> dict[str, dict[str, Any]]:
    """volunteer id -> alert payload"""
    return {topic.split("/")[2]: p for topic, p in published(effects, "/alert")}


def assignments(effects: list[Effect]) -> dict[str, dict[str, Any]]:
    return {topic.split("/")[2]: p for topic, p in published(effects, "/assignment")}


def state_of(effects: list[Effect]) -> dict[str, Any]:
    return published(effects, "/state")[-1][1]


def accept(d: Dispatcher, vid: str, alert_id: str, now: float) -> list[Effect]:
    effects = d.reply(Reply(vid, alert_id, Answer.ACCEPT), now)
    claims = [e for e in effects if isinstance(e, Claim)]
    for claim in claims:  # the store says yes, as a single engine's would
        effects += d.claim_result(claim.volunteer_id, claim.incident_id, True, now)
    return effects


def report(d: Dispatcher, **fields: Any) -> list[Effect]:
    fields.setdefault("kind", Kind.MEDICAL)
    fields.setdefault("lat", LAT)
    fields.setdefault("lon", LON)
    fields.setdefault("id", "inc1")
    return d.report(Report(**fields), T0)


def test_first_wave_alerts_the_nearest_eligible_sized_from_acceptance(area: ServiceArea) -> None:
    d = make(area)  # 35 % acceptance, 90 % confidence: 6 per wave
    for i in range(10):
        on_duty(d, f"v{i}", 100 * (i + 1))
    on_duty(d, "nofirstaid", 10, skills=())
    on_duty(d, "far", 3500)
    effects = report(d)
    sent = alerts(effects)
    assert sorted(sent) == [f"v{i}" for i in range(6)]
    assert sent["v0"]["distance_m"] == pytest.approx(100, abs=1)
    assert sent["v0"]["eta_s"] == pytest.approx(100 * 1.3 / 1.8, abs=1)
    assert sent["v0"]["incident_id"] == "inc1"
    assert sent["v0"]["expires_at"].endswith("Z")
    state = state_of(effects)
    assert state["state"] == "alerting"
    assert state["responders"] == []
    # stored before announced
    kinds = [type(e) for e in effects]
    assert kinds.index(SaveIncident) < max(i for i, k in enumerate(kinds) if k is StateChanged)
    # alerted volunteers are not alerted again for another incident while they owe an answer
    # (v8 and v9, 900 and 1000 m on foot, could make no useful difference: 650 s and more)
    other = d.report(Report(Kind.MEDICAL, LAT, LON, id="inc2"), T0 + 1)
    assert set(alerts(other)) == {"v6", "v7"}


def test_accept_confirms_and_stands_the_others_down(area: ServiceArea) -> None:
    d = make(area)
    for i in range(6):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    effects = accept(d, "v2", sent["v2"]["alert_id"], T0 + 10)
    out = assignments(effects)
    assert out["v2"]["action"] == "go"
    assert out["v2"]["role"] == "primary"
    # v0 and v1 are closer: their alerts stay open, they could still be there sooner
    assert {v for v, a in out.items() if a["action"] == "stand_down"} == {"v3", "v4", "v5"}
    assert out["v3"]["reason"] == "filled by others"
    state = state_of(effects)
    assert state["state"] == "assigned"
    assert [r["volunteer_id"] for r in state["responders"]] == ["v2"]
    assert state["responders"][0]["role"] == "primary"
    # the stood-down are free again; the responder is not
    assert "v3" in d.index
    assert "v2" not in d.index


def test_late_accept_of_a_filled_incident_is_stood_down(area: ServiceArea) -> None:
    d = make(area)
    for i in range(6):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    effects = accept(d, "v1", sent["v1"]["alert_id"], T0 + 6)
    assert not [e for e in effects if isinstance(e, Claim)]
    assert assignments(effects)["v1"] == {
        "incident_id": "inc1",
        "action": "stand_down",
        "reason": "filled by others",
        "alert_id": sent["v1"]["alert_id"],
    }


def test_two_responders_needed_waves_go_on_until_both(area: ServiceArea) -> None:
    d = make(area, max_wave_size=3)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d, responders=2))
    assert len(sent) == 3
    e1 = accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    assert state_of(e1)["state"] == "assigned"
    assert not [a for a in assignments(e1).values() if a["action"] == "stand_down"]
    e2 = accept(d, "v1", sent["v1"]["alert_id"], T0 + 6)
    assert assignments(e2)["v2"]["action"] == "stand_down"  # slower than both
    assert {r["role"] for r in state_of(e2)["responders"]} == {"primary"}


def test_decline_is_replaced_at_once(area: ServiceArea) -> None:
    d = make(area)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    effects = d.reply(Reply("v0", sent["v0"]["alert_id"], Answer.DECLINE), T0 + 3)
    assert set(alerts(effects)) == {"v6"}
    assert "v0" in d.index  # free for other incidents, never re-alerted for this one
    again = d.reply(Reply("v1", sent["v1"]["alert_id"], Answer.DECLINE), T0 + 4)
    assert set(alerts(again)) == {"v7"}


def test_wave_timeout_sends_the_next_wave_then_escalates(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1, max_waves=2, wave_timeout_s=20)
    for i in range(5):
        on_duty(d, f"v{i}", 100 * (i + 1))
    first = alerts(report(d))
    assert set(first) == {"v0"}
    assert d.next_deadline() == T0 + 20
    assert d.tick(T0 + 19.9) == []
    second = d.tick(T0 + 20)
    assert set(alerts(second)) == {"v1"}
    assert alerts(second)["v1"]["wave"] == 2
    third = d.tick(T0 + 40)
    assert alerts(third) == {}
    state = state_of(third)
    assert state["state"] == "escalated"
    assert "nobody accepted after 2 waves" in state["escalation_reason"]
    # The code and its figures, for the page to word in its own language.
    assert state["escalation_code"] == "nobody_accepted"
    assert state["escalation_params"] == {"n": 2}
    escalated = [e for e in third if isinstance(e, LogEvent) and e.type is EventType.ESCALATED]
    assert escalated[0].data["code"] == "nobody_accepted"
    assert escalated[0].data["params"] == {"n": 2}
    # a late accept still helps: escalated -> assigned
    effects = accept(d, "v0", first["v0"]["alert_id"], T0 + 41)
    assert state_of(effects)["state"] == "assigned"


def test_alert_expires_and_a_late_accept_is_refused(area: ServiceArea) -> None:
    d = make(area, alert_expiry_s=90, max_waves=1)
    on_duty(d, "v0", 100)
    sent = alerts(report(d))
    effects = d.tick(T0 + 90)
    assert assignments(effects)["v0"]["reason"] == "alert expired"
    assert "v0" in d.index
    late = accept(d, "v0", sent["v0"]["alert_id"], T0 + 95)
    assert assignments(late)["v0"]["action"] == "stand_down"
    assert assignments(late)["v0"]["reason"] == "alert expired"


def test_nobody_in_reach_escalates_at_once(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "far", 3500)
    on_duty(d, "noskill", 50, skills=())
    effects = report(d)
    assert alerts(effects) == {}
    state = state_of(effects)
    assert state["state"] == "escalated"
    assert "first_aid" in state["escalation_reason"]
    assert "3000 m" in state["escalation_reason"]


def test_too_far_for_the_target_alerts_and_escalates_together(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "slow", 1500, mode=Mode.EBIKE)  # 1500 * 1.3 / 5.5 = 355 s
    on_duty(d, "useless", 2500)  # 2500 * 1.3 / 1.8 = 1806 s on foot: not alerted
    effects = report(d)
    assert set(alerts(effects)) == {"slow"}
    assert state_of(effects)["state"] == "escalated"
    assert "more than the 180 s target" in state_of(effects)["escalation_reason"]


def test_arrival_by_geofence_measures_time_to_arrival(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 200)
    sent = alerts(report(d, reported_at=T0 - 10))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    outside = d.location(LocationUpdate("v0", LAT + 40 / 111_195, LON), T0 + 100)
    assert not published(outside, "/state")
    inside = d.location(LocationUpdate("v0", LAT + 20 / 111_195, LON), T0 + 120)
    state = state_of(inside)
    assert state["state"] == "on_scene"
    assert state["time_to_arrival_s"] == pytest.approx(130)
    assert state["within_target"] is True
    assert state["responders"][0]["arrived_at"].endswith("Z")


def test_arrived_button_and_who_may_press_it(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 200)
    on_duty(d, "v1", 300)
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    rejected = d.arrived(Arrived("v1", "inc1"), T0 + 50)
    assert isinstance(rejected[0], Reject)
    assert rejected[0].error.code == "not_alerted"
    unknown = d.arrived(Arrived("v0", "nope"), T0 + 50)
    assert isinstance(unknown[0], Reject)
    assert unknown[0].error.code == "unknown_incident"
    # pressed 200 m away (no position near the scene): on scene, but unverified
    effects = d.arrived(Arrived("v0", "inc1"), T0 + 150)
    state = state_of(effects)
    assert state["state"] == "on_scene"
    assert state["arrival_verified"] is False
    assert state["responders"][0]["verified"] is False
    assert state["time_to_arrival_s"] is None
    assert state["within_target"] is None
    assert d.arrived(Arrived("v0", "inc1"), T0 + 151) == []  # once is enough
    # the target passes with no verified arrival: a miss
    missed = [e for e in d.tick(T0 + 180) if isinstance(e, LogEvent)]
    assert [e.type for e in missed] == ["target_missed"]
    # a position near the scene confirms it later: the time counts from then
    confirmed = d.location(LocationUpdate("v0", LAT + 45 / 111_195, LON, accuracy_m=20), T0 + 200)
    state = state_of(confirmed)
    assert state["arrival_verified"] is True
    assert state["time_to_arrival_s"] == pytest.approx(200)
    assert state["within_target"] is False


def test_arrived_button_is_believed_near_the_scene(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 400)
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    # a fix 40 m away with 15 m accuracy: within 30 m + 15 m
    d.location(LocationUpdate("v0", LAT + 40 / 111_195, LON, accuracy_m=15), T0 + 100)
    state = state_of(d.arrived(Arrived("v0", "inc1"), T0 + 110))
    assert state["arrival_verified"] is True
    assert state["time_to_arrival_s"] == pytest.approx(110)
    assert state["within_target"] is True
    # an accuracy of kilometres does not stretch the radius past 100 m
    d2 = make(area)
    on_duty(d2, "v0", 400)
    sent = alerts(report(d2))
    accept(d2, "v0", sent["v0"]["alert_id"], T0 + 5)
    d2.location(LocationUpdate("v0", LAT + 300 / 111_195, LON, accuracy_m=5000), T0 + 100)
    assert state_of(d2.arrived(Arrived("v0", "inc1"), T0 + 110))["arrival_verified"] is False
    # nor does a fix older than a minute
    d3 = make(area)
    on_duty(d3, "v0", 400)
    sent = alerts(report(d3))
    accept(d3, "v0", sent["v0"]["alert_id"], T0 + 5)
    d3.location(LocationUpdate("v0", LAT + 40 / 111_195, LON), T0 + 20)
    assert state_of(d3.arrived(Arrived("v0", "inc1"), T0 + 90))["arrival_verified"] is False


def test_replies_that_do_not_fit_are_rejected(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 200)
    on_duty(d, "v1", 300)
    sent = alerts(report(d))
    unknown = d.reply(Reply("v0", "a0000", Answer.ACCEPT), T0 + 1)
    assert isinstance(unknown[0], Reject)
    assert unknown[0].error.code == "unknown_alert"
    assert unknown[0].error.id == "a0000"
    stolen = d.reply(Reply("v1", sent["v0"]["alert_id"], Answer.ACCEPT), T0 + 1)
    assert isinstance(stolen[0], Reject)
    assert stolen[0].error.code == "not_alerted"


def test_cancel_stands_everyone_down_and_releases_claims(area: ServiceArea) -> None:
    d = make(area)
    for i in range(6):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d, responders=2))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    effects = d.cancel("inc1", T0 + 30, by="op-li")
    out = assignments(effects)
    assert set(out) == set(sent)
    assert all(
        a["action"] == "stand_down" and a["reason"] == "incident cancelled" for a in out.values()
    )
    assert [e.volunteer_id for e in effects if isinstance(e, Release)] == ["v0"]
    assert state_of(effects)["state"] == "cancelled"
    assert any(
        isinstance(e, LogEvent) and e.type == "cancelled" and e.data["by"] == "op-li"
        for e in effects
    )
    assert all(f"v{i}" in d.index for i in range(6))
    with pytest.raises(InvalidTransition):
        d.resolve("inc1", T0 + 31)
    with pytest.raises(UnknownIncident):
        d.cancel("nope", T0)
    # the retained state is cleared after the retention time, and the incident forgotten
    clear = d.tick(T0 + 30 + 3600)
    assert any(isinstance(e, StateChanged) and e.cleared for e in clear)
    assert "inc1" not in d.incidents


def test_claim_refused_elsewhere_stands_down_and_replaces(area: ServiceArea) -> None:
    d = make(area)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    claim = d.reply(Reply("v0", sent["v0"]["alert_id"], Answer.ACCEPT), T0 + 2)
    assert claim == [Claim("v0", "inc1")]
    effects = d.claim_result("v0", "inc1", False, T0 + 2)
    assert assignments(effects)["v0"]["reason"] == "already committed to another incident"
    assert set(alerts(effects)) == {"v6"}


def test_operator_assigns_by_hand(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    on_duty(d, "v9", 2900, skills=())  # the operator may send anyone they trust
    sent = alerts(report(d))
    assert set(sent) == {"v0"}
    effects = d.assign("inc1", "v9", T0 + 3, by="op-wang")
    assert effects == [Claim("v9", "inc1")]
    effects = d.claim_result("v9", "inc1", True, T0 + 3)
    out = assignments(effects)
    assert out["v9"]["action"] == "go"
    assert out["v9"]["reason"] == "assigned by operator"
    assert out["v0"]["action"] == "stand_down"  # filled


def test_operator_assigning_an_alerted_volunteer_counts_as_their_accept(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 200)
    alerts(report(d))
    assert d.assign("inc1", "v1", T0 + 3) == [Claim("v1", "inc1")]
    out = assignments(d.claim_result("v1", "inc1", True, T0 + 3))
    assert out["v1"]["action"] == "go"
    assert out["v0"]["action"] == "stand_down"


def test_naive_policy_alerts_one_at_a_time(area: ServiceArea) -> None:
    d = make(area, strategy=Strategy.NAIVE, max_waves=10)
    for i in range(3):
        on_duty(d, f"v{i}", 100 * (i + 1))
    assert set(alerts(report(d))) == {"v0"}
    first_alert = next(iter(d.alerts))
    nxt = d.reply(Reply("v0", first_alert, Answer.DECLINE), T0 + 10)
    assert set(alerts(nxt)) == {"v1"}
    expired = d.tick(T0 + 10 + 90)
    assert set(alerts(expired)) == {"v2"}


def test_first_status_needs_a_position_and_off_duty_forgets_it(area: ServiceArea) -> None:
    d = make(area)
    effects = d.status(StatusUpdate("v0", Duty.AVAILABLE), T0)
    assert isinstance(effects[0], Reject)
    assert "lat" in effects[0].error.reason
    # a location first makes it possible, but a location alone makes nobody available
    d.location(LocationUpdate("v0", LAT, LON), T0)
    assert "v0" not in d.index
    d.status(StatusUpdate("v0", Duty.AVAILABLE, ("first_aid",)), T0 + 1)
    assert "v0" in d.index
    d.status(StatusUpdate("v0", Duty.OFF_DUTY), T0 + 2)
    assert "v0" not in d.index
    assert d.volunteers["v0"].lat is None


def test_a_status_that_changes_nothing_stored_writes_nothing(area: ServiceArea) -> None:
    """A herd (every phone re-sending its status after a broker restart) stores only the
    positions: a profile write for each would hold the engine for a Redis round trip per
    run of statuses, and reports waited behind them (issue 16)."""

    def saved(effects: list[Effect]) -> list[SaveVolunteer]:
        return [e for e in effects if isinstance(e, SaveVolunteer)]

    d = make(area)
    same = StatusUpdate("v0", Duty.AVAILABLE, ("first_aid",), Mode.BIKE, LAT, LON)
    assert saved(d.status(same, T0)) == [
        SaveVolunteer("v0", "available", ("first_aid",), "bike", {})
    ]
    again = d.status(same, T0 + 5)
    assert saved(again) == []
    assert [e.at for e in again if isinstance(e, SavePosition)] == [T0 + 5]
    assert "v0" in d.index
    # A change to any part of what is stored is written, and only that volunteer's.
    changes: list[tuple[dict[str, Any], SaveVolunteer]] = [
        ({"mode": Mode.WALK}, SaveVolunteer("v0", "available", ("first_aid",), "walk", {})),
        ({"skills": ("patrol",)}, SaveVolunteer("v0", "available", ("patrol",), "walk", {})),
        (
            {"max_alerts_per_day": 3},
            SaveVolunteer("v0", "available", ("patrol",), "walk", {"max_alerts_per_day": 3}),
        ),
        (
            {"cleared": frozenset({"max_alerts_per_day"})},
            SaveVolunteer("v0", "available", ("patrol",), "walk", {}),
        ),
        (
            {"receipts": True},
            SaveVolunteer("v0", "available", ("patrol",), "walk", {"receipts": True}),
        ),
    ]
    for change, want in changes:
        assert saved(d.status(StatusUpdate("v0", Duty.AVAILABLE, **change), T0 + 10)) == [want]
        assert saved(d.status(StatusUpdate("v0", Duty.AVAILABLE, **change), T0 + 11)) == []
    assert saved(d.status(StatusUpdate("v0", Duty.OFF_DUTY), T0 + 20))[0].duty == "off_duty"
    assert saved(d.status(StatusUpdate("v0", Duty.OFF_DUTY), T0 + 21)) == []

    # After a restart the stored profile is what a status is compared with.
    fresh = make(area)
    fresh.restore_volunteer(
        "v1", duty="available", skills=["first_aid"], mode="bike", position=(LAT, LON, T0)
    )
    assert (
        saved(fresh.status(StatusUpdate("v1", Duty.AVAILABLE, ("first_aid",), Mode.BIKE), T0)) == []
    )
    assert (
        len(saved(fresh.status(StatusUpdate("v1", Duty.AVAILABLE, ("first_aid",), Mode.EBIKE), T0)))
        == 1
    )
    # Heard from only through a location: nothing stored of the profile yet.
    fresh.location(LocationUpdate("v2", LAT, LON), T0)
    assert len(saved(fresh.status(StatusUpdate("v2", Duty.AVAILABLE), T0 + 1))) == 1


def test_stale_positions_are_forgotten(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 200)
    d.location(LocationUpdate("v1", LAT, LON), T0 + 200)
    assert d.next_deadline() == T0 + 300
    d.tick(T0 + 300)
    assert "v0" not in d.index
    assert d.volunteers["v0"].lat is None
    assert "v1" in d.index


def test_positions_go_stale_a_ttl_after_the_last_report_whatever_came_between(
    area: ServiceArea,
) -> None:
    """Reports, going off duty and back, in any order: a position is kept exactly while
    its last report is younger than the TTL (300 s), and the next deadline is never
    later than the next position going stale (the roster's lazy queue of reports)."""
    rng = random.Random(16)
    d = make(area)
    last: dict[str, float] = {}  # the model: when each volunteer's kept position was seen
    now = T0
    for _ in range(3000):
        now += rng.choice((0.0, 1.0, 7.0, 30.0, 120.0))
        vid = f"v{rng.randrange(6)}"
        lat = LAT + rng.uniform(-0.01, 0.01)
        roll = rng.random()
        if roll < 0.5:
            d.location(LocationUpdate(vid, lat, LON), now)
            if d.volunteers[vid].duty is not Duty.OFF_DUTY:  # kept unless off duty
                last[vid] = now
        elif roll < 0.65:
            d.status(StatusUpdate(vid, Duty.OFF_DUTY), now)
            last.pop(vid, None)
        else:
            d.status(StatusUpdate(vid, Duty.AVAILABLE, (), Mode.WALK, lat, LON), now)
            last[vid] = now
        for vid, seen in list(last.items()):
            if seen + 300 <= now:
                del last[vid]
        due = d.next_deadline()
        soonest = min(last.values(), default=None)
        assert soonest is None or (due is not None and due <= soonest + 300)
        d.tick(now)
        kept = {v.id: v.seen_at for v in d.volunteers.values() if v.lat is not None}
        assert kept == last


def test_restore_carries_on_where_it_stopped(area: ServiceArea) -> None:
    d = make(area, max_waves=2)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    record = d.incidents["inc1"].to_record()
    volunteers = [
        (v.id, v.duty, sorted(v.skills), v.mode, (v.lat, v.lon, v.seen_at))
        for v in d.volunteers.values()
    ]

    fresh = make(area, max_waves=2)
    for vid, duty, skills, mode, pos in volunteers:
        fresh.restore_volunteer(vid, duty=duty, skills=skills, mode=mode, position=pos)  # type: ignore[arg-type]
    assert fresh.restore_incident(orjson.loads(orjson.dumps(record))) == []
    assert "v0" not in fresh.index
    assert "v6" in fresh.index
    # an accept for an alert issued before the restart is honoured
    effects = accept(fresh, "v3", sent["v3"]["alert_id"], T0 + 30)
    assert assignments(effects)["v3"]["action"] == "go"
    # overdue timers fire at once
    assert fresh.next_deadline() is not None


def test_restoring_in_bulk_comes_to_the_same_as_one_at_a_time(area: ServiceArea) -> None:
    """A restart restores every volunteer in one call (columns, each distinct profile
    decoded once): the roster, the index, the positions and the timers must come out as
    restoring them one by one does, duplicates and settings included."""
    quiet = {"quiet_hours": [0, 1439]}  # quiet all day but a minute: resting, a REST timer
    profiles = [
        StoredProfile("available", ("first_aid",), "walk"),
        StoredProfile("off_duty", (), "bike"),  # its position is not restored
        StoredProfile(None, ("patrol", "first_aid"), "ebike"),  # only a location heard
        StoredProfile("offline", (), "walk", {"receipts": True}),
        StoredProfile("available", (), "bike", quiet),
        StoredProfile("available", ("patrol",), "walk", {"max_alerts_per_day": 3}),
    ]
    stored = StoredVolunteers()
    for i in range(60):
        stored.ids.append(f"v{i:02d}")
        stored.profile_of.append(i % len(profiles))
        position = (LAT + i * 1e-4, LON - i * 1e-4, T0 - 100 + (i * 7) % 50)
        stored.positions.append(None if i % 7 == 3 else position)
    stored.profiles = profiles
    # given twice (a SCAN may return a key twice): the second one counts
    stored.ids += ["v00", "v06"]
    stored.profile_of += [1, 4]
    stored.positions += [None, (LAT, LON, T0 - 5)]

    bulk, one_by_one = make(area), make(area)
    with bulk.roster.loading():
        bulk.restore_volunteers(stored, T0)
    with one_by_one.roster.loading():
        for v in stored:
            one_by_one.restore_volunteer(
                v.volunteer_id,
                duty=v.duty,
                skills=v.skills,
                mode=v.mode,
                position=v.position,
                settings=v.settings,
                now=T0,
            )

    def state(d: Dispatcher) -> list[Any]:
        return [
            (vid, repr(v), d.roster.index.position(vid), d.roster.index.part_of(vid))
            for vid, v in sorted(d.volunteers.items())
        ]

    assert state(bulk) == state(one_by_one)
    assert bulk.available == one_by_one.available == 15
    assert bulk.next_deadline() == one_by_one.next_deadline()
    assert [(t.due, t.kind, t.incident_id) for t in bulk.timers.pop_due(T0 + 1e6)] == [
        (t.due, t.kind, t.incident_id) for t in one_by_one.timers.pop_due(T0 + 1e6)
    ]
    nearest = bulk.roster.index.nearest("walk", LAT, LON, 5, skills=["first_aid"])
    assert nearest == one_by_one.roster.index.nearest("walk", LAT, LON, 5, skills=["first_aid"])
    assert nearest  # the bulk loaded trees answer

    # A read that failed half way is retried from the start, into the index as it is
    # (no bulk load: it has volunteers): the same outcome again.
    retried = make(area)
    half = StoredVolunteers(stored.ids[:30], stored.profile_of[:30], stored.positions[:30])
    half.profiles = profiles
    with retried.roster.loading():
        retried.restore_volunteers(half, T0)
    retried.restore_volunteers(stored, T0)
    assert state(retried) == state(one_by_one)
    assert retried.roster.index.nearest("walk", LAT, LON, 5, skills=["first_aid"]) == nearest


def test_restoring_in_bulk_refuses_what_one_at_a_time_refuses(area: ServiceArea) -> None:
    stored = StoredVolunteers(["v1"], [0], [None], [StoredProfile("available", (), "skate")])
    with pytest.raises(ValueError, match="skate"):
        make(area).restore_volunteers(stored, T0)


def test_out_of_area_report_is_the_codec_s_job_but_cell_is_recorded(area: ServiceArea) -> None:
    d = make(area)
    effects = report(d)
    assert state_of(effects)["cell"] == area.cell_at(LAT, LON).id


def test_naive_waits_for_a_pending_replacement_before_the_next(area: ServiceArea) -> None:
    d = make(area, strategy=Strategy.NAIVE, max_waves=10)
    for i in range(3):
        on_duty(d, f"v{i}", 100 * (i + 1))
    report(d)
    first_alert = next(iter(d.alerts))
    d.reply(Reply("v0", first_alert, Answer.DECLINE), T0 + 80)  # v1 alerted at T0 + 80
    # the wave timer (T0 + 90) must not add a second open alert while v1's is pending
    assert alerts(d.tick(T0 + 90)) == {}
    assert len(d.incidents["inc1"].open_alerts()) == 1
    assert set(alerts(d.tick(T0 + 80 + 90))) == {"v2"}  # v1's alert expired: next one


def test_overdue_responder_brings_a_new_wave_and_stays_assigned(area: ServiceArea) -> None:
    d = make(area, overdue_factor=1.5, overdue_grace_s=30)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 10)
    eta = sent["v0"]["eta_s"]
    due = T0 + 10 + eta * 1.5 + 30 + 40 + 0.1  # the alert's eta_s is rounded to 0.1 s
    assert alerts(d.tick(due - 1)) == {}  # not yet
    effects = d.tick(due)
    second = alerts(effects)
    # those stood down unasked are asked again (6 per wave); v0 is not
    assert set(second) == {"v1", "v2", "v3", "v4", "v5", "v6"}
    incident = d.incidents["inc1"]
    assert incident.responders[0].overdue
    assert incident.still_needed == 1
    state = state_of(effects)
    # the overdue volunteer stays assigned (they may still come); nobody new can make the
    # target any more (224 s are gone), so the control room is told at once
    assert state["state"] == "escalated"
    assert [r["volunteer_id"] for r in state["responders"]] == ["v0"]
    assert state["responders"][0]["overdue"] is True
    assert any(isinstance(e, LogEvent) and e.type == "overdue" for e in effects)
    # the overdue volunteer still counts when they do arrive
    effects = d.arrived(Arrived("v0", "inc1"), due + 5)
    assert state_of(effects)["state"] == "on_scene"


def test_overdue_with_nobody_else_escalates(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 300)
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 10)
    effects = d.tick(T0 + 10 + sent["v0"]["eta_s"] * 1.5 + 30 + 40 + 0.1)
    state = state_of(effects)
    assert state["state"] == "escalated"
    assert "no available volunteer" in state["escalation_reason"]


def test_on_scene_responder_is_never_overdue(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 10)
    d.arrived(Arrived("v0", "inc1"), T0 + 60)
    assert not [e for e in d.tick(T0 + 10_000) if isinstance(e, LogEvent) and e.type == "overdue"]
    assert not d.incidents["inc1"].responders[0].overdue


def test_backups_keep_spare_acceptors_without_extra_waves(area: ServiceArea) -> None:
    d = make(area, backup_responders=1)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    first = assignments(accept(d, "v1", sent["v1"]["alert_id"], T0 + 5))
    assert list(first) == ["v1"]  # nobody stood down
    assert first["v1"]["action"] == "go"
    assert alerts(d.tick(T0 + 20)) == {}  # no wave for a backup
    second = assignments(accept(d, "v3", sent["v3"]["alert_id"], T0 + 25))
    assert (second["v3"]["action"], second["v3"]["role"]) == ("go", "backup")
    # filled: only those who could still be there sooner than v3 stay alerted
    assert {v for v, a in second.items() if a["action"] == "stand_down"} == {"v4", "v5"}
    # the fastest acceptor wins: v0 (100 m) takes v3's place (400 m)
    third = assignments(accept(d, "v0", sent["v0"]["alert_id"], T0 + 26))
    assert (third["v0"]["action"], third["v0"]["role"]) == ("go", "primary")
    assert (third["v3"]["action"], third["v3"]["reason"]) == (
        "stand_down",
        "a faster responder is going",
    )
    roles = {r.volunteer_id: r.role for r in d.incidents["inc1"].responders if r.counted}
    assert roles == {"v0": "primary", "v1": "backup"}
    # filled by the two fastest: v2 is slower than both and goes home
    fourth = assignments(accept(d, "v2", sent["v2"]["alert_id"], T0 + 27))
    assert (fourth["v2"]["action"], fourth["v2"]["reason"]) == ("stand_down", "filled by others")
    # a backup covers an overdue responder: no new wave is needed
    v0_due = T0 + 26 + sent["v0"]["eta_s"] * 1.5 + 30 + 40 + 0.1
    overdue = d.tick(v0_due)
    assert alerts(overdue) == {}
    # the backup who steps up is told on their own topic (phones see no incident state)
    promoted = assignments(overdue)
    assert promoted == {
        "v1": {
            "incident_id": "inc1",
            "action": "go",
            "reason": "you are now the primary responder",
            "alert_id": sent["v1"]["alert_id"],
            "role": "primary",
        }
    }
    assert d.incidents["inc1"].still_needed == 0
    assert {r.volunteer_id: r.role for r in d.incidents["inc1"].responders if r.counted} == {
        "v1": "primary"
    }


def test_restore_rearms_overdue_timers(area: ServiceArea) -> None:
    d = make(area)
    for i in range(3):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 10)
    record = orjson.loads(orjson.dumps(d.incidents["inc1"].to_record()))
    fresh = make(area)
    for i in range(3):
        on_duty(fresh, f"v{i}", 100 * (i + 1))
    fresh.restore_incident(record)
    due = T0 + 10 + sent["v0"]["eta_s"] * 1.5 + 30 + 40 + 0.1
    effects = fresh.tick(due)
    assert any(isinstance(e, LogEvent) and e.type == "overdue" for e in effects)


def test_responder_making_no_progress_is_overdue_early(area: ServiceArea) -> None:
    d = make(area)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v3", sent["v3"]["alert_id"], T0 + 10)  # 400 m north, walking 1.8 m/s
    here = LAT + 400 / 111_195
    # too early to judge, however still they are
    early = d.location(LocationUpdate("v3", here, LON), T0 + 90)
    assert not [e for e in early if isinstance(e, LogEvent)]
    # 65 s after they should have set off (the 40 s turnout after accepting) they should
    # have come some 90 m; 10 m is not progress
    effects = d.location(LocationUpdate("v3", here - 10 / 111_195, LON), T0 + 115)
    overdue = [e for e in effects if isinstance(e, LogEvent) and e.type == "overdue"]
    assert [e.data["why"] for e in overdue] == ["no progress"]
    assert alerts(effects)  # a new wave for the missing responder


def test_responder_on_the_way_is_not_overdue(area: ServiceArea) -> None:
    d = make(area)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v3", sent["v3"]["alert_id"], T0 + 10)
    # 70 m closer after 65 s: slower than the model, but coming
    effects = d.location(LocationUpdate("v3", LAT + 330 / 111_195, LON), T0 + 115)
    assert not [e for e in effects if isinstance(e, LogEvent)]
    assert not d.incidents["inc1"].responders[0].overdue


def test_stall_check_can_be_turned_off(area: ServiceArea) -> None:
    d = make(area, stall_after_s=0)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v3", sent["v3"]["alert_id"], T0 + 10)
    d.location(LocationUpdate("v3", LAT + 400 / 111_195, LON), T0 + 100)
    assert not d.incidents["inc1"].responders[0].overdue


def test_first_arrival_releases_backups_still_on_the_way(area: ServiceArea) -> None:
    d = make(area, backup_responders=1)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v1", sent["v1"]["alert_id"], T0 + 5)
    accept(d, "v4", sent["v4"]["alert_id"], T0 + 6)
    # near the scene (40 m, accurate to 15 m): the button is believed
    d.location(LocationUpdate("v1", LAT + 40 / 111_195, LON, accuracy_m=15), T0 + 88)
    effects = d.arrived(Arrived("v1", "inc1"), T0 + 90)
    out = assignments(effects)
    assert (out["v4"]["action"], out["v4"]["reason"]) == (
        "stand_down",
        "enough responders on scene",
    )
    assert [e.volunteer_id for e in effects if isinstance(e, Release)] == ["v4"]
    assert "v4" in d.index  # free for the next call
    state = state_of(effects)
    assert state["state"] == "on_scene"
    assert [(r["volunteer_id"], r["released"]) for r in state["responders"]] == [
        ("v1", False),
        ("v4", True),
    ]
    # a released backup is neither overdue later nor released twice when it ends
    assert not [e for e in d.tick(T0 + 10_000) if isinstance(e, LogEvent) and e.type == "overdue"]
    ended = d.resolve("inc1", T0 + 10_001)
    assert [e.volunteer_id for e in ended if isinstance(e, Release)] == ["v1"]
    assert set(assignments(ended)) == {"v1"}


def test_hand_assigned_volunteer_of_unknown_position_is_never_overdue(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    d.tick(T0 + 400)  # v0's position is forgotten (stale after 300 s)
    assert d.volunteers["v0"].lat is None
    d.report(
        Report(id="inc1", kind=Kind.CARDIAC_ARREST, lat=LAT - 800 / 111_195, lon=LON), T0 + 400
    )
    d.assign("inc1", "v0", T0 + 401)
    d.claim_result("v0", "inc1", True, T0 + 401)
    later = d.tick(T0 + 401 + 3600)
    assert not [e for e in later if isinstance(e, LogEvent) and e.type == "overdue"]
    # nor by the stall check: the engine has nothing to measure them against
    moved = d.location(LocationUpdate("v0", LAT, LON), T0 + 500)
    assert not [e for e in moved if isinstance(e, LogEvent) and e.type == "overdue"]


def test_an_operators_escalation_keeps_their_words_and_says_who(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 50)
    report(d)
    state = state_of(d.escalate("inc1", T0 + 5, by="chen", reason="caller says two hurt"))
    assert state["escalation_reason"] == "caller says two hurt"
    assert state["escalation_code"] == "operator"
    assert state["escalation_params"] == {"by": "chen"}
    on_duty(d, "v1", 60)
    report(d, id="inc2")
    plain = state_of(d.escalate("inc2", T0 + 6, by="chen"))
    assert plain["escalation_reason"] == "escalated by chen"
    assert plain["escalation_code"] == "operator"
