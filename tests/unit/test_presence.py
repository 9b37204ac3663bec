"""Protocol 1.1 in the core: presence (offline), delivery receipts, alert budget, quiet hours."""

from __future__ import annotations

from typing import Any

import pytest
from test_dispatcher import CONFIG, LAT, LON, T0, accept, alerts, make, on_duty, report

from dispatch.codec import Codec
from dispatch.coverage import volunteer_view
from dispatch.dispatcher import Dispatcher
from dispatch.effects import Effect, LogEvent, SaveVolunteer
from dispatch.errors import BadMessage
from dispatch.model import Answer, Duty, Kind, LocationUpdate, Reply, Report, StatusUpdate
from geo.area import ServiceArea


@pytest.fixture(scope="module")
def area() -> ServiceArea:
    return ServiceArea.from_geojson(CONFIG.area_geojson)


def events(effects: list[Effect], kind: str) -> list[LogEvent]:
    return [e for e in effects if isinstance(e, LogEvent) and e.type == kind]


def status(d: Dispatcher, vid: str, duty: Duty, now: float = T0, **extra: Any) -> list[Effect]:
    return d.status(StatusUpdate(vid, duty, **extra), now)


def test_an_offline_volunteer_is_never_alerted_until_available_again(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 300)
    status(d, "v0", Duty.OFFLINE)
    assert "v0" not in d.index
    assert d.volunteers["v0"].lat is not None  # the position is kept (until its TTL)
    assert set(alerts(report(d))) == {"v1"}
    status(d, "v0", Duty.AVAILABLE)
    assert "v0" in d.index


def test_a_pending_alert_to_a_phone_gone_offline_brings_the_next_best(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 300)
    sent = alerts(report(d))
    assert set(sent) == {"v0"}
    effects = status(d, "v0", Duty.OFFLINE, T0 + 2)
    assert set(alerts(effects)) == {"v1"}
    assert [e.data["volunteer_id"] for e in events(effects, "offline")] == ["v0"]
    # the alert stays valid: an accept from the phone, back online, still counts
    status(d, "v0", Duty.AVAILABLE, T0 + 3)
    assert accept(d, "v0", sent["v0"]["alert_id"], T0 + 4)


def test_a_responder_offline_past_the_grace_is_overdue(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1, offline_grace_s=20)
    for i in range(3):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    status(d, "v0", Duty.OFFLINE, T0 + 10)
    late = d.tick(T0 + 30)
    assert [e.data["why"] for e in events(late, "overdue")] == ["offline"]
    assert set(alerts(late)) == {"v1"}  # a replacement goes out
    # back within the grace: nothing happens
    d2 = make(area, max_wave_size=1, offline_grace_s=20)
    for i in range(3):
        on_duty(d2, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d2))
    accept(d2, "v0", sent["v0"]["alert_id"], T0 + 5)
    status(d2, "v0", Duty.OFFLINE, T0 + 10)
    status(d2, "v0", Duty.AVAILABLE, T0 + 15)
    assert not events(d2.tick(T0 + 30), "overdue")


def test_no_receipt_in_time_from_a_phone_that_sends_them_brings_the_next_best(
    area: ServiceArea,
) -> None:
    d = make(area, max_wave_size=1, delivery_timeout_s=8)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 300)
    status(d, "v0", Duty.AVAILABLE, receipts=True)
    sent = alerts(report(d))
    assert set(sent) == {"v0"}
    assert alerts(d.tick(T0 + 7.9)) == {}
    effects = d.tick(T0 + 8)
    assert [e.data["volunteer_id"] for e in events(effects, "undelivered")] == ["v0"]
    assert set(alerts(effects)) == {"v1"}
    assert d.incidents["inc1"].alerts[sent["v0"]["alert_id"]].undelivered


def test_a_receipt_is_not_an_answer(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1, delivery_timeout_s=8)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 300)
    status(d, "v0", Duty.AVAILABLE, receipts=True)
    alert_id = alerts(report(d))["v0"]["alert_id"]
    received = d.reply(Reply("v0", alert_id, Answer.RECEIVED), T0 + 0.4)
    assert [e.data["latency_s"] for e in events(received, "received")] == [0.4]
    assert not [e for e in received if not isinstance(e, LogEvent)]  # nothing else changes
    assert d.tick(T0 + 8) == []  # delivered: no replacement
    assert accept(d, "v0", alert_id, T0 + 12)  # the answer may follow


def test_the_alert_budget_rests_a_volunteer_for_24_hours(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1)
    on_duty(d, "v0", 100)
    effects = status(d, "v0", Duty.AVAILABLE, max_alerts_per_day=1)
    assert [e.settings for e in effects if isinstance(e, SaveVolunteer)] == [
        {"max_alerts_per_day": 1}
    ]
    first = alerts(d.report(report_msg("a"), T0))
    assert set(first) == {"v0"}
    d.reply(Reply("v0", first["v0"]["alert_id"], Answer.DECLINE), T0 + 5)
    assert "v0" not in d.index  # resting: a second alert would break the budget
    assert alerts(d.report(report_msg("b"), T0 + 60)) == {}
    keep_reporting(d, "v0", 100, T0 + 86_390)
    d.tick(T0 + 86_400)
    assert "v0" in d.index  # 24 h after the alert


def test_quiet_hours_in_the_districts_local_time(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 300)
    # T0 is 16:00 in Hangzhou (08:00 UTC)
    status(d, "v0", Duty.AVAILABLE, quiet_hours=(15 * 60, 17 * 60))
    assert set(alerts(report(d))) == {"v1"}
    keep_reporting(d, "v0", 100, T0 + 3590)
    d.tick(T0 + 3600)  # 17:00: quiet hours over
    assert "v0" in d.index
    status(d, "v1", Duty.AVAILABLE, quiet_hours=(22 * 60 + 30, 7 * 60), now=T0 + 3600)
    d.tick(T0 + 6.5 * 3600)  # 22:30: v1's quiet hours begin
    assert "v1" not in d.index


def test_the_codec_reads_the_settings_and_refuses_bad_ones(area: ServiceArea) -> None:
    codec = Codec(root="dispatch", in_area=area.contains)
    body = (
        b'{"status":"available","lat":30.26,"lon":120.17,"receipts":true,'
        b'"max_alerts_per_day":5,"quiet_hours":"22:30-07:00"}'
    )
    msg = codec.decode("dispatch/volunteers/v9/status", body, T0)
    assert isinstance(msg, StatusUpdate)
    assert (msg.receipts, msg.max_alerts_per_day, msg.quiet_hours) == (True, 5, (1350, 420))
    offline = codec.decode("dispatch/volunteers/v9/status", b'{"status":"offline"}', T0)
    assert isinstance(offline, StatusUpdate)
    assert offline.status is Duty.OFFLINE
    for bad, says in (
        (b'{"status":"available","max_alerts_per_day":0}', "from 1 to 100"),
        (b'{"status":"available","max_alerts_per_day":"5"}', "from 1 to 100"),
        (b'{"status":"available","quiet_hours":"25:00-07:00"}', "HH:MM-HH:MM"),
        (b'{"status":"available","quiet_hours":"07:00-07:00"}', "differ"),
        (b'{"status":"available","receipts":"yes"}', "true or false"),
    ):
        with pytest.raises(BadMessage, match=says):
            codec.decode("dispatch/volunteers/v9/status", bad, T0)
    receipt = codec.decode(
        "dispatch/volunteers/v9/reply", b'{"alert_id":"a1","answer":"received"}', T0
    )
    assert isinstance(receipt, Reply)
    assert receipt.answer is Answer.RECEIVED


def keep_reporting(d: Dispatcher, vid: str, north_m: float, now: float) -> None:
    """A location now (positions go stale after 5 minutes without one)."""
    d.location(LocationUpdate(vid, LAT + north_m / 111_195, LON), now)


def report_msg(iid: str) -> Report:
    return Report(Kind.MEDICAL, LAT, LON, id=iid)


def test_the_will_of_an_off_duty_volunteer_keeps_them_off_duty(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    status(d, "v0", Duty.OFF_DUTY, T0 + 1)
    assert status(d, "v0", Duty.OFFLINE, T0 + 2) == []  # the page closed: its will
    assert d.duty_counts()["offline"] == 0
    assert d.volunteers["v0"].duty is Duty.OFF_DUTY


def test_a_budget_and_quiet_hours_sent_as_null_are_cleared(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    status(d, "v0", Duty.AVAILABLE, T0 + 1, quiet_hours=(0, 1439), max_alerts_per_day=1)
    assert "v0" not in d.index  # in quiet hours all day
    topic = d.codec.topic("volunteers", "v0", "status")
    kept = d.codec.decode(topic, b'{"status": "available"}', T0 + 2)
    d.status(kept, T0 + 2)  # left out: kept
    assert d.volunteers["v0"].quiet_hours == (0, 1439)
    cleared = d.codec.decode(
        topic, b'{"status": "available", "quiet_hours": null, "max_alerts_per_day": null}', T0 + 3
    )
    d.status(cleared, T0 + 3)
    assert d.volunteers["v0"].quiet_hours is None
    assert d.volunteers["v0"].max_alerts_per_day is None
    assert "v0" in d.index


def test_the_volunteer_view_counts_alerts_against_the_budget(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 300)
    status(d, "v0", Duty.AVAILABLE, max_alerts_per_day=3)
    assert set(alerts(report(d))) == {"v0"}
    view = {v["id"]: v for v in volunteer_view(d, now=T0 + 60)}
    assert view["v0"]["max_alerts_per_day"] == 3
    assert view["v0"]["alerts_24h"] == 1
    assert "alerts_24h" not in view["v1"]  # no budget: not counted
    later = {v["id"]: v for v in volunteer_view(d, now=T0 + 86_400 + 1)}
    assert later["v0"]["alerts_24h"] == 0  # out of the window
    assert "alerts_24h" not in volunteer_view(d)[0]  # without a time, no count
