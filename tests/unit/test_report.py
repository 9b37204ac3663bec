"""The report's query, groups and rows (dispatch/report.py): the headline's definitions."""

from __future__ import annotations

import pytest
from archive_data import BASE, some_incidents

from dispatch.coverage import incident_outcome
from dispatch.headline import headline
from dispatch.report import BadQuery, from_incidents, parse_query, to_csv

NOW = BASE + 90 * 86_400


def test_defaults_are_the_last_30_days_by_day() -> None:
    q = parse_query({}, NOW)
    assert (q.start, q.end, q.by, q.format) == (NOW - 30 * 86_400, NOW, "day", "json")


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"from": "yesterday"}, "'from' must be an RFC 3339 time"),
        ({"to": "2026-01-01T00:00:00"}, "'to' must be an RFC 3339 time"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "must be before"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "at most 3 years"),
        ({"by": "street"}, "'by' must be one of subdistrict, cell, day, kind"),
        ({"format": "xlsx"}, "'format' must be json or csv"),
        ({"form": "2026-01-01T00:00:00Z"}, "unknown parameter 'form'"),
    ],
)
def test_bad_queries_say_what_to_fix(query: dict[str, str], says: str) -> None:
    with pytest.raises(BadQuery, match=says):
        parse_query(query, NOW)


def test_the_whole_is_the_headline_of_every_incident() -> None:
    incidents = some_incidents(200)
    rows, total = from_incidents(incidents, "cell", target_s=180.0, now=NOW)
    h = headline(incident_outcome(i, now=NOW, target_s=180.0) for i in incidents)
    assert total["within_target_share"] == h["within_target_share"]
    assert total["p90_s"] == h["p90_time_to_arrival_s"]
    assert total["incidents"] == 200
    assert total["needed"] == sum(1 for i in incidents if i.state.value != "cancelled")
    assert sum(r["incidents"] for r in rows) == 200
    assert [r["group"] for r in rows] == sorted(r["group"] for r in rows)


def test_groups_by_local_day_and_kind() -> None:
    incidents = some_incidents(100)
    days, _ = from_incidents(incidents, "day", target_s=180.0, now=NOW)
    # 2025-12-01T00:00Z is 08:00 in Hangzhou; 100 incidents every 30 min: 3 local days.
    assert [d["group"] for d in days] == ["2025-12-01", "2025-12-02", "2025-12-03"]
    kinds, _ = from_incidents(incidents, "kind", target_s=180.0, now=NOW)
    assert {k["group"] for k in kinds} <= {i.kind.value for i in incidents}
    subdistricts, _ = from_incidents(incidents, "subdistrict", target_s=180.0, now=NOW)
    assert [s["group"] for s in subdistricts] == [None]


def test_csv_has_a_header_and_empty_cells_for_none() -> None:
    rows, total = from_incidents(some_incidents(5), "kind", target_s=180.0, now=NOW)
    text = to_csv([*rows, {**total, "group": "total"}])
    lines = text.splitlines()
    assert lines[0].startswith("group,incidents,needed,decided,within_target,reached,")
    assert lines[-1].startswith("total,5,")
    assert len(lines) == len(rows) + 2
