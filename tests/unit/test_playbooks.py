"""The other systems' documented rules (dispatch/policy.py PLAYBOOKS), run by the same core,
and the alert budget that holds the engine's own policy to their alert load."""

from __future__ import annotations

import pytest
from test_dispatcher import (
    CONFIG,
    T0,
    accept,
    alerts,
    assignments,
    make,
    on_duty,
    report,
    state_of,
)

from dispatch.effects import LogEvent
from dispatch.model import Answer, Mode, Reply
from dispatch.policy import Strategy
from geo.area import ServiceArea


@pytest.fixture(scope="module")
def area() -> ServiceArea:
    return ServiceArea.from_geojson(CONFIG.area_geojson)


def decline(d, vid: str, alert_id: str, now: float):  # type: ignore[no-untyped-def]
    return d.reply(Reply(vid, alert_id, Answer.DECLINE), now)


def test_pulsepoint_alerts_everyone_within_400_m_by_distance_and_all_go(
    area: ServiceArea,
) -> None:
    d = make(area, strategy=Strategy.PULSEPOINT)
    for i, north in enumerate((100, 200, 300, 390)):
        on_duty(d, f"v{i}", north)
    on_duty(d, "far", 450)  # outside 400 m
    on_duty(d, "ebike", 700, mode=Mode.EBIKE)  # faster than a walker at 300 m, but far
    sent = alerts(report(d))
    assert set(sent) == {"v0", "v1", "v2", "v3"}
    # every acceptor goes; nobody is stood down for being slower
    for n, vid in enumerate(("v3", "v0", "v2")):
        out = assignments(accept(d, vid, sent[vid]["alert_id"], T0 + 10 + n))
        assert out[vid]["action"] == "go"
        assert not [v for v, a in out.items() if a["action"] == "stand_down"]
    assert alerts(d.tick(T0 + 60)) == {}  # one wave only


def test_goodsam_three_nearest_then_three_more_after_30_s_without_an_accept(
    area: ServiceArea,
) -> None:
    d = make(area, strategy=Strategy.GOODSAM)
    for i in range(9):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    assert set(sent) == {"v0", "v1", "v2"}
    assert alerts(decline(d, "v0", sent["v0"]["alert_id"], T0 + 5)) == {}  # no replacement
    assert alerts(d.tick(T0 + 29.9)) == {}
    second = alerts(d.tick(T0 + 30))
    assert set(second) == {"v3", "v4", "v5"}
    # someone accepted: no third wave
    accept(d, "v4", second["v4"]["alert_id"], T0 + 40)
    assert alerts(d.tick(T0 + 60)) == {}


def test_heartrunner_16_within_1800_m_and_the_first_3_acceptors_go(area: ServiceArea) -> None:
    d = make(area, strategy=Strategy.HEARTRUNNER)
    for i in range(20):
        on_duty(d, f"v{i}", 85 * (i + 1))  # up to 1700 m
    on_duty(d, "beyond", 1900, mode=Mode.EBIKE)
    sent = alerts(report(d))
    assert set(sent) == {f"v{i}" for i in range(16)}
    for n, vid in enumerate(("v9", "v12", "v15")):
        assert assignments(accept(d, vid, sent[vid]["alert_id"], T0 + 10 + n))[vid]["action"] == (
            "go"
        )
    # the first three are going: a closer acceptor after them is stood down
    late = assignments(accept(d, "v0", sent["v0"]["alert_id"], T0 + 20))
    assert (late["v0"]["action"], late["v0"]["reason"]) == ("stand_down", "filled by others")


def test_firstaed_nine_nearest_and_the_three_closest_acceptors_go(area: ServiceArea) -> None:
    d = make(area, strategy=Strategy.FIRSTAED)
    for i in range(12):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    assert set(sent) == {f"v{i}" for i in range(9)}
    for n, vid in enumerate(("v8", "v7", "v6")):
        accept(d, vid, sent[vid]["alert_id"], T0 + 10 + n)
    closer = assignments(accept(d, "v1", sent["v1"]["alert_id"], T0 + 20))
    assert closer["v1"]["action"] == "go"
    assert (closer["v8"]["action"], closer["v8"]["reason"]) == (
        "stand_down",
        "a faster responder is going",
    )


def test_mobile_retter_pairs_and_the_next_nearest_after_20_s(area: ServiceArea) -> None:
    d = make(area, strategy=Strategy.MOBILE_RETTER)
    for i in range(8):
        on_duty(d, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d))
    assert set(sent) == {"v0", "v1"}
    # one of the pair declines: the other is still awaited
    assert alerts(decline(d, "v0", sent["v0"]["alert_id"], T0 + 5)) == {}
    # 20 s without a reply: the next nearest
    assert set(alerts(d.tick(T0 + 20))) == {"v2"}
    d2 = make(area, strategy=Strategy.MOBILE_RETTER)
    for i in range(8):
        on_duty(d2, f"v{i}", 100 * (i + 1))
    sent = alerts(report(d2))
    decline(d2, "v0", sent["v0"]["alert_id"], T0 + 5)
    # both declined: the next pair at once
    assert set(alerts(decline(d2, "v1", sent["v1"]["alert_id"], T0 + 6))) == {"v2", "v3"}


def test_the_alert_budget_caps_the_engines_own_policy(area: ServiceArea) -> None:
    d = make(area, max_alerts=3, max_wave_size=8)
    for i in range(10):
        on_duty(d, f"v{i}", 50 * (i + 1))
    effects = report(d)
    sent = alerts(effects)
    assert set(sent) == {"v0", "v1", "v2"}  # the whole budget at once
    for n, vid in enumerate(sent):
        last = decline(d, vid, sent[vid]["alert_id"], T0 + 5 + n)
    assert alerts(last) == {}
    assert alerts(d.tick(T0 + 20)) == {}
    state = state_of(last)
    assert state["state"] == "escalated"
    assert "alert budget" in state["escalation_reason"]
    assert not [e for e in d.tick(T0 + 40) if isinstance(e, LogEvent) and e.type == "alerted"]


def test_the_baselines_do_not_replace_an_undelivered_alert(area: ServiceArea) -> None:
    """Delivery receipts are the engine's: a baseline keeps to its documented rules."""
    from dispatch.model import Duty, StatusUpdate

    for strategy, replaced in ((Strategy.WAVES, True), (Strategy.FIRSTAED, False)):
        d = make(area, strategy=strategy, max_wave_size=1, delivery_timeout_s=8)
        for i in range(12):
            on_duty(d, f"v{i}", 100 * (i + 1))
        d.status(StatusUpdate("v0", Duty.AVAILABLE, receipts=True), T0)
        report(d)
        assert bool(alerts(d.tick(T0 + 8))) is replaced, strategy
