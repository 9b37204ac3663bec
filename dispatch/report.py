"""Reports over ended incidents (``GET /api/report``): the query, the groups, their figures.

Pure, like the core: the web shell parses the query here, gets per-group counts from
the archive's SQL (dispatch/archive.py) or, with no archive, computes them here from the
records Redis still holds, and both are shaped into rows by `row`, so the two answers
agree to the digit (a test computes both on the same incidents).

The figures are the headline's (dispatch/headline.py), per group:

- ``incidents``: ended incidents reported in the period (cancelled ones included);
- ``needed``, ``decided``, ``within_target``, ``reached``, ``within_target_share``,
  ``p50_s``, ``p90_s``: exactly `dispatch.headline.headline` over the group (cancelled
  ones do not count; unreached ones are misses; only verified arrivals count; the
  percentiles are of the time to the first verified arrival, over ``reached``);
- ``escalated_share``: of ``incidents``, those ever escalated to the control room;
- ``alerts_per_incident``: alerts sent (operators' hand assignments included) per
  incident.

Groups: ``cell`` (the generated grid), ``kind``, ``day`` (the operators' calendar day,
China Standard Time, as the live figures' "today") and ``subdistrict``. No public
subdistrict (街道) boundaries exist for the district (config/PROVENANCE.md): a deployment
configures its own (``[area] subdistricts``, geo.subdistricts) and each incident gets its
subdistrict when reported; until then every incident falls in the group ``null`` and the
answer says so in ``note`` (so do incidents outside every configured area).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from dispatch.codec import format_time, parse_time
from dispatch.coverage import incident_outcome
from dispatch.dispatcher import Incident
from dispatch.headline import Outcome, headline

__all__ = [
    "BY",
    "COLUMNS",
    "DEFAULT_PERIOD_S",
    "LOCAL_TZ",
    "MAX_PERIOD_S",
    "MISSES_MAX",
    "MISS_REASONS",
    "SUBDISTRICT_NOTE",
    "BadQuery",
    "Counts",
    "MissesQuery",
    "ReportQuery",
    "from_incidents",
    "group_key",
    "miss",
    "miss_reason",
    "misses_from_incidents",
    "parse_misses_query",
    "parse_query",
    "row",
    "to_csv",
]

BY = ("subdistrict", "cell", "day", "kind")
FORMATS = ("json", "csv")
# The operators' day (the live figures' "today"): China Standard Time has no DST.
LOCAL_TZ = timezone(timedelta(hours=8), "CST")
DEFAULT_PERIOD_S = 30 * 86_400.0  # no ``from``: the 30 days before ``to``
MAX_PERIOD_S = 3 * 366 * 86_400.0
COLUMNS = (
    "group",
    "incidents",
    "needed",
    "decided",
    "within_target",
    "reached",
    "within_target_share",
    "p50_s",
    "p90_s",
    "escalated_share",
    "alerts_per_incident",
)
SUBDISTRICT_NOTE = (
    "no subdistrict boundaries are configured for this service area (none are public for "
    "the district): every incident is in the group null; use by=cell for the grid"
)


class BadQuery(ValueError):
    """A report query that cannot be answered; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class ReportQuery:
    start: float  # reported at or after (Unix seconds)
    end: float  # reported before
    by: str
    format: str


def parse_query(query: Mapping[str, str], now: float) -> ReportQuery:
    """``from``, ``to`` (RFC 3339; default: the 30 days up to now), ``by``, ``format``."""
    unknown = sorted(set(query) - {"from", "to", "by", "format", "access_token"})
    if unknown:
        raise BadQuery(
            f"unknown parameter '{unknown[0]}'; use from, to (RFC 3339), by "
            f"({'|'.join(BY)}) and format (json|csv)"
        )
    start, end = _period(query, now)
    by = query.get("by", "day")
    if by not in BY:
        raise BadQuery(f"'by' must be one of {', '.join(BY)}; got '{by}'")
    fmt = query.get("format", "json")
    if fmt not in FORMATS:
        raise BadQuery(f"'format' must be json or csv; got '{fmt}'")
    return ReportQuery(start, end, by, fmt)


def _period(query: Mapping[str, str], now: float) -> tuple[float, float]:
    end = _time(query, "to", now)
    start = _time(query, "from", end - DEFAULT_PERIOD_S)
    if not start < end:
        raise BadQuery(f"'from' ({format_time(start)}) must be before 'to' ({format_time(end)})")
    if end - start > MAX_PERIOD_S:
        raise BadQuery("the period from 'from' to 'to' may be at most 3 years; ask in parts")
    return start, end


def _time(query: Mapping[str, str], name: str, default: float) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise BadQuery(
            f"'{name}' must be an RFC 3339 time with an offset, e.g. 2026-11-01T00:00:00+08:00 "
            f"(a '+' in a URL is written %2B): {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class Counts:
    """One group's counts, as the archive's SQL returns them (see `row`)."""

    incidents: int
    needed: int
    decided: int
    within_target: int
    reached: int
    p50_s: float | None  # linear-interpolated, as dispatch.headline.percentile
    p90_s: float | None
    escalated: int
    alerts: int


def row(group: str | None, counts: Counts) -> dict[str, Any]:
    """A report row; the rounding is the headline's (dispatch.headline.headline)."""
    n = counts.incidents
    return {
        "group": group,
        "incidents": n,
        "needed": counts.needed,
        "decided": counts.decided,
        "within_target": counts.within_target,
        "reached": counts.reached,
        "within_target_share": (
            round(counts.within_target / counts.decided, 4) if counts.decided else None
        ),
        "p50_s": None if counts.p50_s is None else round(counts.p50_s, 1),
        "p90_s": None if counts.p90_s is None else round(counts.p90_s, 1),
        "escalated_share": round(counts.escalated / n, 4) if n else None,
        "alerts_per_incident": round(counts.alerts / n, 2) if n else None,
    }


def group_key(by: str, incident: Incident) -> str | None:
    """The group of one incident (the archive's SQL groups the same way)."""
    if by == "cell":
        return incident.cell_id
    if by == "kind":
        return incident.kind.value
    if by == "day":
        return datetime.fromtimestamp(incident.reported_at, LOCAL_TZ).date().isoformat()
    return incident.subdistrict or None  # none configured: see SUBDISTRICT_NOTE


def from_incidents(
    incidents: Iterable[Incident], by: str, *, target_s: float, now: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows by group, the whole period's row), computed here by `dispatch.headline`."""
    groups: dict[str | None, list[Incident]] = {}
    every: list[Incident] = []
    for incident in incidents:
        groups.setdefault(group_key(by, incident), []).append(incident)
        every.append(incident)
    rows = [
        _python_row(g, members, target_s=target_s, now=now)
        for g, members in sorted(groups.items(), key=lambda kv: kv[0] or "")
    ]
    return rows, _python_row(None, every, target_s=target_s, now=now)


def _python_row(
    group: str | None, incidents: Sequence[Incident], *, target_s: float, now: float
) -> dict[str, Any]:
    outcomes: list[Outcome] = [incident_outcome(i, now=now, target_s=target_s) for i in incidents]
    h = headline(outcomes)
    out = row(
        group,
        Counts(
            incidents=len(incidents),
            needed=h["needed"],
            decided=h["decided"],
            within_target=h["within_target"],
            reached=h["reached"],
            p50_s=None,
            p90_s=None,
            escalated=sum(1 for i in incidents if i.escalated_at is not None),
            alerts=sum(len(i.alerts) for i in incidents),
        ),
    )
    # The headline's own share and percentiles, as it rounds them.
    out["within_target_share"] = h["within_target_share"]
    out["p50_s"] = h["p50_time_to_arrival_s"]
    out["p90_s"] = h["p90_time_to_arrival_s"]
    return out


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as CSV with a header line (``COLUMNS``); empty cells for none."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r[c] for c in COLUMNS])
    return out.getvalue()


# ---------------------------------------------------------------------- the misses

# Why an incident missed the target, first that applies (docs/reports.md). A miss is the
# headline's: needed, decided, and no verified arrival within the target.
MISS_REASONS = (
    "late_arrival",  # a verified arrival, after the target
    "unverified_arrival",  # someone said "I'm here", never confirmed by a position
    "no_show",  # someone accepted; nobody was (verified) on scene
    "nobody_accepted",  # alerts went out; nobody accepted
    "nobody_in_reach",  # no alert could be sent: nobody available within reach
)
MISSES_DEFAULT = 100
MISSES_MAX = 500


@dataclass(frozen=True, slots=True)
class MissesQuery:
    start: float
    end: float
    limit: int
    offset: int


def parse_misses_query(query: Mapping[str, str], now: float) -> MissesQuery:
    """``from``, ``to`` as for the report; ``limit`` (1..500, default 100), ``offset``."""
    unknown = sorted(set(query) - {"from", "to", "limit", "offset", "access_token"})
    if unknown:
        raise BadQuery(
            f"unknown parameter '{unknown[0]}'; use from, to (RFC 3339), limit "
            f"(1..{MISSES_MAX}) and offset"
        )
    start, end = _period(query, now)
    limit = _int(query, "limit", MISSES_DEFAULT, 1, MISSES_MAX)
    offset = _int(query, "offset", 0, 0, 10_000_000)
    return MissesQuery(start, end, limit, offset)


def _int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not lo <= int(raw) <= hi:
        raise BadQuery(f"'{name}' must be a whole number from {lo} to {hi}; got '{raw[:20]}'")
    return int(raw)


def miss_reason(incident: Incident, *, target_s: float, now: float) -> str | None:
    """Why ``incident`` missed the target (one of MISS_REASONS); None if it did not (it
    was cancelled, made it, or is not decided yet). The archive's SQL says the same."""
    o = incident_outcome(incident, now=now, target_s=target_s)
    if not o.decided or o.within:
        return None
    if o.time_s is not None:
        return "late_arrival"
    if incident.first_arrival_at is not None:
        return "unverified_arrival"
    if incident.first_accept_at is not None:
        return "no_show"
    if incident.first_alert_at is not None:
        return "nobody_accepted"
    return "nobody_in_reach"


def miss(
    *,
    iid: str,
    kind: str,
    priority: int,
    reported_at: float,
    cell: str,
    subdistrict: str | None,
    address: str,
    reason: str,
    time_s: float | None,
    escalated: bool,
) -> dict[str, Any]:
    """One line of ``GET /api/report/misses``, from either source."""
    return {
        "id": iid,
        "kind": kind,
        "priority": priority,
        "reported_at": format_time(reported_at),
        "cell": cell,
        "subdistrict": subdistrict or None,
        "address": address,
        "reason": reason,
        "time_to_arrival_s": None if time_s is None else round(time_s, 1),
        "escalated": escalated,
    }


def misses_from_incidents(
    incidents: Iterable[Incident], *, target_s: float, now: float
) -> list[dict[str, Any]]:
    """Every miss among ``incidents``, oldest report first (then by id), as the SQL."""
    out = []
    for i in sorted(incidents, key=lambda i: (i.reported_at, i.id)):
        reason = miss_reason(i, target_s=target_s, now=now)
        if reason is None:
            continue
        out.append(
            miss(
                iid=i.id,
                kind=i.kind.value,
                priority=i.priority,
                reported_at=i.reported_at,
                cell=i.cell_id,
                subdistrict=i.subdistrict,
                address=i.address,
                reason=reason,
                time_s=i.time_to_arrival_s(),
                escalated=i.escalated_at is not None,
            )
        )
    return out
