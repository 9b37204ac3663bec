"""Duplicate reports in the pure core: the link to the first report, and the merge."""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.dispatcher import DUPLICATE_WINDOW_S, BadMerge, Dispatcher, UnknownIncident
from dispatch.duplicates import RecentReports
from dispatch.effects import LogEvent, Release
from dispatch.headline import outcome
from dispatch.model import Answer, Kind, Reply, Report
from geo.area import ServiceArea
from geo.distance import haversine_m
from simulators.terminal_volunteer import Volunteer as TerminalVolunteer
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
    published,
    state_of,
)

__all__ = ["area"]  # the fixture, shared

NORTH_M = 1 / 111_195  # degrees of latitude per metre


def events(effects: list[Any], kind: str) -> list[LogEvent]:
    return [e for e in effects if isinstance(e, LogEvent) and e.type == kind]


def report_at(
    d: Dispatcher, iid: str, now: float, north_m: float = 0.0, kind: Kind = Kind.MEDICAL
) -> list[Any]:
    return d.report(Report(kind=kind, lat=LAT + north_m * NORTH_M, lon=LON, id=iid), now)


def states(effects: list[Any]) -> dict[str, dict[str, Any]]:
    """incident id -> its last state in ``effects``"""
    return {topic.split("/")[2]: p for topic, p in published(effects, "/state")}


def test_a_second_report_near_and_soon_is_linked_but_dispatched_as_usual(
    area: ServiceArea,
) -> None:
    d = make(area, max_wave_size=2)
    for i in range(4):
        on_duty(d, f"v{i}", 100 * (i + 1))
    first = report_at(d, "a", T0)
    assert state_of(first)["likely_duplicate_of"] is None
    assert not events(first, "duplicate_suspected")
    second = report_at(d, "b", T0 + 60, north_m=80)
    (suspected,) = events(second, "duplicate_suspected")
    assert suspected.incident_id == "b"
    assert suspected.data == {"of": "a", "distance_m": pytest.approx(80, abs=0.5), "apart_s": 60}
    state = state_of(second)
    assert state["likely_duplicate_of"] == "a"
    assert state["merged_into"] is None
    assert state["merged_from"] == []
    # help is never held back on a guess: the second is alerted like any report
    assert alerts(second)
    assert {a["incident_id"] for a in alerts(second).values()} == {"b"}
    # a third report near both links to the first report, not to its copy
    third = report_at(d, "c", T0 + 90, north_m=40)
    assert state_of(third)["likely_duplicate_of"] == "a"
    # the link is in the record and survives a restart
    b_record = d.incidents["b"].to_record()
    record = orjson.loads(orjson.dumps(b_record))
    assert record["likely_duplicate_of"] == "a"
    assert "merged_into" not in record  # records stay as they were without a merge
    fresh = make(area)
    fresh.restore_incident(d.incidents["a"].to_record())
    fresh.restore_incident(record)
    assert fresh.incidents["b"].likely_duplicate_of == "a"
    # and a new report after the restart is compared with the restored incidents
    assert state_of(report_at(fresh, "d", T0 + 100, north_m=-30))["likely_duplicate_of"] == "a"


@pytest.mark.parametrize(
    ("why", "north_m", "after_s", "kind"),
    [
        ("too far", 101, 10, Kind.MEDICAL),
        ("too late", 10, DUPLICATE_WINDOW_S + 1, Kind.MEDICAL),
        ("another kind", 10, 10, Kind.FIRE),
    ],
)
def test_reports_apart_in_place_time_or_kind_are_not_linked(
    area: ServiceArea, why: str, north_m: float, after_s: float, kind: Kind
) -> None:
    d = make(area)
    report_at(d, "a", T0)
    second = report_at(d, "b", T0 + after_s, north_m=north_m, kind=kind)
    assert state_of(second)["likely_duplicate_of"] is None, why
    assert not events(second, "duplicate_suspected"), why


def test_an_ended_incident_is_not_a_first_report(area: ServiceArea) -> None:
    d = make(area)
    report_at(d, "a", T0)
    d.cancel("a", T0 + 5)
    assert state_of(report_at(d, "b", T0 + 10, north_m=20))["likely_duplicate_of"] is None


def test_the_nearest_open_report_is_the_one_linked(area: ServiceArea) -> None:
    d = make(area)
    report_at(d, "far", T0, north_m=90)
    report_at(d, "near", T0 + 1, north_m=-150)  # 240 m from "far": not its duplicate
    second = report_at(d, "b", T0 + 20, north_m=-80)  # 170 m from far, 70 m from near
    assert state_of(second)["likely_duplicate_of"] == "near"


def test_merge_cancels_the_duplicate_and_offers_its_volunteers_to_the_first(
    area: ServiceArea,
) -> None:
    d = make(area, max_wave_size=1, max_waves=1)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 200)
    a_alerts = alerts(report_at(d, "a", T0))
    assert set(a_alerts) == {"v0"}
    b_alerts = alerts(report_at(d, "b", T0 + 30, north_m=50))
    assert set(b_alerts) == {"v1"}
    accept(d, "v1", b_alerts["v1"]["alert_id"], T0 + 35)  # on the way to b
    d.reply(Reply("v0", a_alerts["v0"]["alert_id"], Answer.DECLINE), T0 + 40)
    assert not d.incidents["a"].open_alerts()  # v1 is b's: nobody left for a
    merged = d.merge("b", "a", T0 + 50, by="li")
    # the duplicate: cancelled, merged into a, its responder released and told why
    out = assignments(merged)
    assert out["v1"]["action"] == "stand_down"
    assert out["v1"]["reason"] == "incident merged into another report of the same event"
    assert [e.volunteer_id for e in merged if isinstance(e, Release)] == ["v1"]
    after = states(merged)
    assert after["b"]["state"] == "cancelled"
    assert after["b"]["merged_into"] == "a"
    assert after["b"]["likely_duplicate_of"] is None  # decided, no longer a guess
    assert after["b"]["end_reason"] == "merged into a by li"
    (into,) = events([e for e in merged if getattr(e, "incident_id", "") == "b"], "merged")
    assert into.data == {"by": "li", "into": "a"}
    assert events(merged, "cancelled")[0].incident_id == "b"
    # the first: knows what was merged into it, and still needing someone, asks the
    # duplicate's volunteer (free again, and nearest) at once
    assert after["a"]["merged_from"] == ["b"]
    (from_b,) = [e for e in events(merged, "merged") if e.incident_id == "a"]
    assert from_b.data == {"by": "li", "merged": "b"}
    offered = alerts(merged)
    assert offered["v1"]["incident_id"] == "a"
    # the stand-down comes before the new alert
    kinds = [topic.rsplit("/", 1)[1] for topic, _ in published(merged, "")]
    assert kinds.index("assignment") < kinds.index("alert")
    # b misses no target: cancelled, out of the headline's denominator
    missed = events(d.tick(T0 + 400), "target_missed")
    assert [e.incident_id for e in missed] == ["a"]
    b = d.incidents["b"]
    assert not outcome(
        reported_at=b.reported_at,
        verified_arrival_at=None,
        cancelled=True,
        target_s=d.policy.target_s,
        now=T0 + 400,
    ).needed
    # the record keeps the link both ways
    assert d.incidents["b"].to_record()["merged_into"] == "a"
    assert d.incidents["a"].to_record()["merged_from"] == ["b"]


def test_merge_of_a_filled_first_only_stands_down(area: ServiceArea) -> None:
    d = make(area, max_wave_size=1)
    on_duty(d, "v0", 100)
    on_duty(d, "v1", 200)
    sent_a = alerts(report_at(d, "a", T0))
    accept(d, "v0", sent_a["v0"]["alert_id"], T0 + 5)
    sent_b = alerts(report_at(d, "b", T0 + 10, north_m=30))
    merged = d.merge("b", "a", T0 + 20)
    assert assignments(merged)["v1"]["action"] == "stand_down"
    assert not alerts(merged)  # a needs nobody more: v1 is simply free again
    assert "v1" in d.index
    assert sent_b["v1"]["incident_id"] == "b"


def test_bad_merges_say_what_is_wrong(area: ServiceArea) -> None:
    d = make(area)
    report_at(d, "a", T0)
    report_at(d, "b", T0 + 10, north_m=30)
    report_at(d, "f", T0 + 10, north_m=30, kind=Kind.FIRE)
    report_at(d, "c", T0 + 20, north_m=60)
    with pytest.raises(BadMerge, match="into itself") as err:
        d.merge("b", "b", T0 + 30)
    assert err.value.code == "merge_into_itself"
    with pytest.raises(UnknownIncident, match="nope"):
        d.merge("nope", "a", T0 + 30)
    with pytest.raises(UnknownIncident, match="nope"):
        d.merge("b", "nope", T0 + 30)
    with pytest.raises(BadMerge, match="other_kind") as err:
        d.merge("f", "a", T0 + 30)
    assert err.value.code == "other_kind"
    assert not d.incidents["f"].ended  # a refused merge changes nothing
    d.merge("b", "a", T0 + 30)
    with pytest.raises(BadMerge, match="already merged into 'a'") as err:
        d.merge("b", "c", T0 + 31)
    assert err.value.code == "already_merged"
    # into a merged (so ended) incident: no chains, no cycles
    with pytest.raises(BadMerge, match="merged into 'a'") as err:
        d.merge("c", "b", T0 + 32)
    assert err.value.code == "target_ended"
    with pytest.raises(BadMerge, match="merged"):
        d.merge("a", "b", T0 + 32)  # the first into its merged copy: a cycle, refused
    d.resolve("c", T0 + 33)
    with pytest.raises(BadMerge, match="resolved already") as err:
        d.merge("c", "a", T0 + 34)
    assert err.value.code == "incident_ended"
    # the operator's say-so merges another kind
    effects = d.merge("f", "a", T0 + 35, other_kind=True)
    assert states(effects)["f"]["merged_into"] == "a"
    assert d.incidents["a"].merged_from == ["b", "f"]


def test_the_first_merged_into_its_copy_loses_the_guess(area: ServiceArea) -> None:
    d = make(area)
    report_at(d, "a", T0)
    report_at(d, "b", T0 + 10, north_m=30)
    effects = d.merge("a", "b", T0 + 20)  # the operator keeps the second: allowed
    assert states(effects)["b"]["likely_duplicate_of"] is None
    assert states(effects)["b"]["merged_from"] == ["a"]


# ---------------------------------------------------------------- the recent reports


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-300, max_value=300), st.floats(min_value=-300, max_value=300)
        ),
        min_size=1,
        max_size=40,
    ),
    st.tuples(st.floats(min_value=-300, max_value=300), st.floats(min_value=-300, max_value=300)),
)
def test_near_finds_every_report_within_the_radius(
    points: list[tuple[float, float]], probe: tuple[float, float]
) -> None:
    """Against brute force: nothing within 100 m is ever missed, wherever the cell lines
    fall (points within a few hundred metres of 小营巷, in metres north and east)."""
    recent = RecentReports(radius_m=100.0, max_abs_lat=30.6, keep_s=360.0)
    east = 1 / (111_195 * math.cos(math.radians(LAT)))

    def place(north: float, east_m: float) -> tuple[float, float]:
        return LAT + north * NORTH_M, LON + east_m * east

    for n, (north, east_m) in enumerate(points):
        recent.add(Kind.FALL, *place(north, east_m), f"r{n}", T0)
    lat, lon = place(*probe)
    found = set(recent.near(Kind.FALL, lat, lon))
    within = {
        f"r{n}"
        for n, (north, east_m) in enumerate(points)
        if haversine_m(lat, lon, *place(north, east_m)) <= 100.0
    }
    assert within <= found
    assert not set(recent.near(Kind.MEDICAL, lat, lon))  # another kind: none


def test_recent_reports_are_bounded_and_forgotten_in_time() -> None:
    recent = RecentReports(
        radius_m=100.0, max_abs_lat=30.6, keep_s=360.0, max_kept=100, max_per_cell=8
    )
    for n in range(50):  # one place: the cell keeps its newest 8
        recent.add(Kind.FALL, LAT, LON, f"same{n}", T0 + n)
    assert list(recent.near(Kind.FALL, LAT, LON)) == [f"same{n}" for n in range(42, 50)]
    for n in range(500):  # spread out: at most 100 kept, the newest
        recent.add(Kind.FALL, LAT + n * 0.01, LON, f"far{n}", T0 + 100)
    assert len(recent) == 100
    assert list(recent.near(Kind.FALL, LAT + 499 * 0.01, LON)) == ["far499"]
    assert not list(recent.near(Kind.FALL, LAT, LON))
    recent.prune(T0 + 100 + 361)  # all arrived more than keep_s ago
    assert len(recent) == 0
    assert not list(recent.near(Kind.FALL, LAT + 499 * 0.01, LON))
    # restored out of order: kept in arrival order all the same
    recent.add(Kind.FALL, LAT, LON, "late", T0 + 1000)
    recent.add(Kind.FALL, LAT, LON, "early", T0 + 900)
    recent.prune(T0 + 900 + 361)
    assert list(recent.near(Kind.FALL, LAT, LON)) == ["late"]


def test_a_flood_of_reports_costs_the_neighbours_only(area: ServiceArea) -> None:
    """3,000 reports at one instant across the district, as the benchmark sends them:
    each is compared with the few near it, and at most max_kept are kept."""
    d = make(area)
    min_lon, min_lat, max_lon, max_lat = area.bounds
    rng = random.Random(3)
    n = 0
    while n < 3000:
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        if area.contains(lat, lon):
            d.report(Report(kind=Kind.MEDICAL, lat=lat, lon=lon, id=f"f{n}"), T0)
            n += 1
    assert len(d.recent) <= d.recent.max_kept
    probe = d.incidents["f2999"]
    assert len(list(d.recent.near(probe.kind, probe.lat, probe.lon))) < 20


def test_the_terminal_volunteer_says_what_a_merge_means() -> None:
    """The merge's stand-down reason, in the terminal volunteer's plain words."""
    v = TerminalVolunteer("tv-merge", LAT, LON)
    v.start()
    [line] = v.on_assignment(
        {
            "incident_id": "inc-2",
            "action": "stand_down",
            "reason": "incident merged into another report of the same event",
        },
        T0,
    )
    assert "another report of the same event is being handled" in line
    assert "cancelled" not in line.split("(")[0]
