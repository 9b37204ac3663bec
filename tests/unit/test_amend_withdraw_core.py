"""Protocol 1.1 amendments and this project's "I can't go after all", in the pure core."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from dispatch.codec import Codec
from dispatch.dispatcher import UnknownIncident
from dispatch.effects import LogEvent, Reject, Release
from dispatch.errors import BadMessage, InvalidTransition
from dispatch.model import Amendment, Answer, Kind, Reply
from geo.area import ServiceArea
from tests.unit.test_dispatcher import (
    LAT,
    LON,
    T0,
    accept,
    alerts,
    area,
    assignments,
    make,
    on_duty,
    report,
    state_of,
)

__all__ = ["area"]  # the fixture, shared

SOUTH_300M = -300 / 111_195


def events(effects: list[Any], kind: str) -> list[LogEvent]:
    return [e for e in effects if isinstance(e, LogEvent) and e.type == kind]


def test_moving_stands_down_unanswered_alerts_and_searches_from_the_new_place(
    area: ServiceArea,
) -> None:
    d = make(area, max_wave_size=3)
    for i in range(3):  # near the first place
        on_duty(d, f"near{i}", 100 * (i + 1))
    for i in range(3):  # near the new place, 300 m south
        on_duty(d, f"new{i}", -300 - 50 * (i + 1))
    sent = alerts(report(d, address="小营巷 12 号"))
    assert set(sent) == {"near0", "near1", "near2"}
    # near0 declines at the old place before the move
    d.reply(Reply("near0", sent["near0"]["alert_id"], Answer.DECLINE), T0 + 5)
    moved = d.amend(
        "inc1", Amendment(lat=LAT + SOUTH_300M, lon=LON, address="小营巷 40 号"), T0 + 20, by="li"
    )
    out = assignments(moved)
    for vid in ("near1", "near2"):  # unanswered: stood down, the call is off
        assert out[vid]["action"] == "stand_down"
        assert out[vid]["reason"] == "incident moved"
    # the search starts again from the new place, its nearest first
    assert set(alerts(moved)) == {"new0", "new1", "new2"}
    assert alerts(moved)["new0"]["lat"] == pytest.approx(LAT + SOUTH_300M)
    assert alerts(moved)["new0"]["address"] == "小营巷 40 号"
    state = state_of(moved)
    assert state["lat"] == pytest.approx(LAT + SOUTH_300M)
    assert state["address"] == "小营巷 40 号"
    (amended,) = events(moved, "amended")
    assert amended.data["by"] == "li"
    assert amended.data["changes"]["address"] == "小营巷 40 号"
    assert amended.data["previous"]["address"] == "小营巷 12 号"
    # after the new wave goes unanswered, those stood down by the move and the one who
    # declined the old place may be asked about the new one: nobody is left out for it
    for vid in ("new0", "new1", "new2"):
        alert_id = alerts(moved)[vid]["alert_id"]
        d.reply(Reply(vid, alert_id, Answer.DECLINE), T0 + 25)
    incident = d.incidents["inc1"]
    asked_after = {a.volunteer_id for a in incident.alerts.values() if a.sent_at > T0 + 20}
    assert {"near0", "near1", "near2"} <= asked_after
    # a late accept of an alert of the old place is told why it is off
    late = accept(d, "near1", sent["near1"]["alert_id"], T0 + 30)
    assert assignments(late)["near1"]["reason"] == "incident moved"


def test_moving_sends_confirmed_responders_to_the_new_place(area: ServiceArea) -> None:
    d = make(area, overdue_factor=1.5, overdue_grace_s=30, stall_after_s=0)
    on_duty(d, "v0", 100)
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 10)
    moved = d.amend("inc1", Amendment(lat=LAT + SOUTH_300M, lon=LON, address="new"), T0 + 20)
    go = assignments(moved)["v0"]
    assert go == {
        "incident_id": "inc1",
        "action": "go",
        "reason": "location updated",
        "alert_id": sent["v0"]["alert_id"],
        "role": "primary",
        "lat": pytest.approx(LAT + SOUTH_300M),
        "lon": LON,
        "address": "new",
    }
    assert alerts(moved) == {}  # nobody else is needed: v0 is still going
    responder = d.incidents["inc1"].responders[0]
    assert responder.distance_m == pytest.approx(400, abs=2)
    # the old overdue time (for 100 m) is moot; the new one counts from the move
    old_due = T0 + 10 + sent["v0"]["eta_s"] * 1.5 + 30 + 40 + 0.1
    assert not events(d.tick(old_due), "overdue")
    new_due = T0 + 20 + responder.eta_s * 1.5 + 30 + 40 + 0.1
    assert events(d.tick(new_due), "overdue")


def test_kind_change_brings_its_defaults_and_new_skills_apply_from_now_on(
    area: ServiceArea,
) -> None:
    d = make(area, max_wave_size=2)
    on_duty(d, "patrol", 100, skills=("patrol",))
    on_duty(d, "medic", 150, skills=("first_aid",))
    on_duty(d, "medic2", 200, skills=("first_aid",))
    sent = alerts(report(d, kind=Kind.FALL))  # fall: priority 2, first_aid
    assert set(sent) == {"medic", "medic2"}
    effects = d.amend("inc1", Amendment(kind=Kind.SECURITY), T0 + 5)
    state = state_of(effects)
    assert state["kind"] == "security"
    assert state["priority"] == 2
    assert state["skills"] == ["patrol"]
    # the alerts out stay; the next search looks for patrol only
    assert alerts(effects) == {}
    for vid in ("medic", "medic2"):
        d.reply(Reply(vid, sent[vid]["alert_id"], Answer.DECLINE), T0 + 6)
    assert {a.volunteer_id for a in d.incidents["inc1"].alerts.values()} >= {"patrol"}
    # given fields win over the new kind's defaults
    effects = d.amend("inc1", Amendment(kind=Kind.CARDIAC_ARREST, priority=3), T0 + 7)
    assert state_of(effects)["priority"] == 3
    assert state_of(effects)["skills"] == ["first_aid"]


def test_more_responders_wanted_brings_a_search_and_fewer_stand_down_spares(
    area: ServiceArea,
) -> None:
    d = make(area, max_wave_size=1)
    for i in range(4):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    more = d.amend("inc1", Amendment(responders=2), T0 + 10)
    assert state_of(more)["responders_needed"] == 2
    assert set(alerts(more)) == {"v1"}
    # unchanged values change nothing: no event, no messages
    assert d.amend("inc1", Amendment(responders=2), T0 + 11) == []


def test_ended_or_unknown_incident_cannot_be_amended(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    report(d)
    d.resolve("inc1", T0 + 5)
    with pytest.raises(InvalidTransition):
        d.amend("inc1", Amendment(address="x"), T0 + 6)
    with pytest.raises(UnknownIncident):
        d.amend("nope", Amendment(address="x"), T0 + 6)
    assert d.incidents["inc1"].address == ""


def test_amendment_body_is_checked_field_by_field(area: ServiceArea) -> None:
    codec = Codec(in_area=area.contains)
    changes, by = codec.decode_amendment_body(b'{"priority": 1, "skills": [], "by": "li"}')
    assert changes == Amendment(priority=1, skills=())
    assert by == "li"
    for body, words in [
        (b"", "empty"),
        (b"{}", "nothing to change"),
        (b'{"id": "x"}', "'id'"),
        (b'{"lat": 30.26}', "'lon'"),
        (b'{"lat": 10, "lon": 10}', "outside"),
        (b'{"kind": "flood"}', "kind"),
        (b'{"responders": 0}', "responders"),
        (b'{"address": null}', "address"),
        (b"[]", "object"),
    ]:
        with pytest.raises(BadMessage) as err:
            codec.decode_amendment_body(body)
        assert words in err.value.reason


def test_withdraw_releases_at_once_and_brings_a_replacement(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1)
    for i in range(3):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    alert_id = sent["v0"]["alert_id"]
    accept(d, "v0", alert_id, T0 + 5)
    effects = d.reply(Reply("v0", alert_id, Answer.WITHDRAW), T0 + 30)
    out = assignments(effects)
    assert out["v0"]["action"] == "stand_down"
    assert out["v0"]["reason"] == "withdrawn"
    assert any(isinstance(e, Release) and e.volunteer_id == "v0" for e in effects)
    (withdrawn,) = events(effects, "withdrawn")
    assert withdrawn.data["volunteer_id"] == "v0"
    assert set(alerts(effects)) == {"v1"}  # a replacement, as for an overdue responder
    state = state_of(effects)
    assert state["responders"][0]["released"] is True
    assert d.incidents["inc1"].still_needed == 1
    # a retry gets the same answer and changes nothing
    again = d.reply(Reply("v0", alert_id, Answer.WITHDRAW), T0 + 31)
    assert assignments(again)["v0"]["reason"] == "withdrawn"
    assert alerts(again) == {}
    assert not events(again, "withdrawn")


def test_withdraw_that_does_not_fit_is_rejected(area: ServiceArea) -> None:
    d = make(area, max_wave_size=2)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 200)
    sent = alerts(report(d))
    for vid, alert_id, code in [
        ("v0", sent["v0"]["alert_id"], "not_accepted"),  # pending, not accepted
        ("v1", sent["v0"]["alert_id"], "not_alerted"),  # someone else's alert
        ("v0", "a0000000000000000", "unknown_alert"),
    ]:
        (rejected,) = d.reply(Reply(vid, alert_id, Answer.WITHDRAW), T0 + 3)
        assert isinstance(rejected, Reject)
        assert rejected.error.code == code
    rejected = d.reply(Reply("v0", sent["v0"]["alert_id"], Answer.WITHDRAW), T0 + 3)[0]
    assert isinstance(rejected, Reject)
    assert "decline" in rejected.error.reason
    assert d.incidents["inc1"].alerts[sent["v0"]["alert_id"]].status == "pending"


def test_a_moved_incident_restores_with_its_new_overdue_time(area: ServiceArea) -> None:
    d = make(area, overdue_factor=1.5, overdue_grace_s=30, stall_after_s=0)
    on_duty(d, "v0", 100)
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 10)
    d.amend("inc1", Amendment(lat=LAT + SOUTH_300M, lon=LON), T0 + 20)
    record = orjson.loads(orjson.dumps(d.incidents["inc1"].to_record()))
    fresh = make(area, overdue_factor=1.5, overdue_grace_s=30, stall_after_s=0)
    on_duty(fresh, "v0", 100)
    fresh.restore_incident(record)
    restored = fresh.incidents["inc1"]
    assert restored.moved_at == T0 + 20
    responder = restored.responders[0]
    assert responder.rerouted_at == T0 + 20
    new_due = T0 + 20 + responder.eta_s * 1.5 + 30 + 40
    assert not events(fresh.tick(new_due - 1), "overdue")
    assert events(fresh.tick(new_due + 0.1), "overdue")


def test_a_new_need_searches_again_but_a_new_description_does_not(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1, max_waves=1, wave_timeout_s=20)
    on_duty(d, "v0", 100)
    sent = alerts(report(d))
    d.reply(Reply("v0", sent["v0"]["alert_id"], Answer.DECLINE), T0 + 2)  # escalated
    d.tick(T0 + 30)  # the wave's time is over: no wave is waiting
    assert d.incidents["inc1"].next_wave_at is None
    on_duty(d, "patrol", 120, skills=("patrol",))
    quiet = d.amend("inc1", Amendment(description="two people hurt"), T0 + 40)
    assert alerts(quiet) == {}
    assert events(quiet, "amended")
    search = d.amend("inc1", Amendment(skills=("patrol",)), T0 + 41)
    assert set(alerts(search)) == {"patrol"}
