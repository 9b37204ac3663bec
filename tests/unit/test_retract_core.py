"""A report's decision taken back (`Dispatcher.retract`): the engine decides before the
store admits the report, and takes the decision back when the report was not new."""

from __future__ import annotations

import dataclasses
from typing import Any

from dispatch.dispatcher import Dispatcher
from dispatch.effects import SendAlert
from dispatch.model import Duty, Kind, Mode, Report, StatusUpdate
from geo.area import ServiceArea
from tests.unit.test_dispatcher import LAT, LON, T0, area, make

__all__ = ["area"]  # the fixture, shared

LATER = T0 + 30


def fleet(area: ServiceArea) -> Dispatcher:
    """Twelve volunteers north of the scene: some with an alert budget of one (an alert
    puts them to rest), some whose phones send delivery receipts (a delivery timer)."""
    d = make(area)
    for i in range(12):
        status = StatusUpdate(
            f"v{i}",
            Duty.AVAILABLE,
            ("first_aid",),
            Mode.WALK,
            LAT + 100 * (i + 1) / 111_195,
            LON,
            receipts=i % 3 == 0 or None,
            max_alerts_per_day=1 if i % 2 == 0 else None,
        )
        d.status(status, T0)
    return d


def volunteers(d: Dispatcher) -> dict[str, dict[str, Any]]:
    """Every volunteer's state (whether an alert awaits them, not its random id)."""
    return {
        vid: dataclasses.asdict(v) | {"alert_id": v.alert_id is not None}
        for vid, v in d.volunteers.items()
    }


def incident_timers(d: Dispatcher) -> list[Any]:
    """The timers about incidents (a REST timer, about a volunteer, only looks again
    whether they rest: one set for an alert taken back changes nothing)."""
    return [t for t in d.timers._heap if t.kind != "rest"]


def alerted(effects: list[Any]) -> list[tuple[str, float]]:
    return [(e.volunteer_id, round(e.eta_s, 3)) for e in effects if isinstance(e, SendAlert)]


def test_a_report_taken_back_leaves_no_trace(area: ServiceArea) -> None:
    taken_back, untouched = fleet(area), fleet(area)
    first = taken_back.report(Report(Kind.MEDICAL, LAT, LON, id="old-1"), LATER)
    assert len(alerted(first)) == 6
    # The budget of one put the even ones to rest, out of the index.
    resting = [v for v in taken_back.volunteers.values() if v.resting_until is not None]
    assert resting
    assert taken_back.available == untouched.available - 6

    taken_back.retract("old-1", LATER)

    assert taken_back.incidents == {}
    assert taken_back.alerts == {}
    assert volunteers(taken_back) == volunteers(untouched)
    assert taken_back.available == untouched.available == 12
    assert incident_timers(taken_back) == incident_timers(untouched) == []
    # The next report is decided as if the first had never come: the same six.
    again = Report(Kind.MEDICAL, LAT, LON, id="new-1")
    assert alerted(taken_back.report(again, LATER)) == alerted(untouched.report(again, LATER))
    assert volunteers(taken_back) == volunteers(untouched)


def test_a_taken_back_id_can_come_back_without_its_old_timers(area: ServiceArea) -> None:
    """The store said "pending" (another engine was storing it) and later "new" (that
    engine died): the incident is decided afresh, and no timer of the first decision
    fires for it."""
    d = fleet(area)
    report = Report(Kind.MEDICAL, LAT, LON, id="again-1")
    d.report(report, LATER)
    d.retract("again-1", LATER)
    assert incident_timers(d) == []
    d.report(report, LATER + 10)
    due = [t for t in d.timers._heap if t.incident_id == "again-1"]
    assert due
    assert min(t.due for t in due if t.kind == "wave") > LATER + 10


def test_taking_back_an_unknown_incident_changes_nothing(area: ServiceArea) -> None:
    d, untouched = fleet(area), fleet(area)
    d.retract("never-seen", LATER)
    assert volunteers(d) == volunteers(untouched)
    assert d.incidents == {}
