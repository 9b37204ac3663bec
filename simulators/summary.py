"""The figures of a scenario run: the summary (JSON-ready) and the printed report.

Time to arrival is measured from the start of the call (the report's ``reported_at``;
the engine has it ``intake_s`` later) to the first responder at the patient (the
engine's arrival, by geofence or button at the street point, plus ``last_leg_s``). The
engine's own moment is reported beside it (``engine_arrival_*``).

The headline, ``within_target_share``, is one definition everywhere: the incidents
whose first responder was at the patient within the target, divided by EVERY incident
that needed a responder. An incident nobody reached counts in the denominator as a
miss; every simulated incident needs a responder (none is cancelled). For the
percentiles an unreached incident counts as later than any arrival (an infinite time:
a percentile that falls there is reported as None, printed "none"). The mean is over
the incidents that were reached, with the share reached beside it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from simulators.scenario import Outcome, RunResult, percentile

__all__ = ["format_report", "summarize", "within_target_share"]

# Cells with fewer incidents than this are left out of the "worst cells" table.
_MIN_CELL_INCIDENTS = 3


def _finite(x: float) -> float | None:
    return round(x, 1) if math.isfinite(x) else None


def _times(outcomes: Iterable[Outcome], engine: bool = False) -> list[float]:
    """Sorted times to arrival, inf for unreached: at the patient, or the engine's moment."""
    return sorted(
        (
            t
            if (t := o.engine_arrival_s if engine else o.time_to_arrival_s) is not None
            else math.inf
        )
        for o in outcomes
    )


def within_target_share(outcomes: Sequence[Outcome], target_s: float) -> float | None:
    """THE headline: first arrival at the patient within the target, over every incident.

    Every incident counts in the denominator, reached or not (an unreached one is a
    miss); None when there were no incidents at all.
    """
    hits = sum(
        o.time_to_arrival_s is not None and o.time_to_arrival_s <= target_s for o in outcomes
    )
    return _share(hits, len(outcomes))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarize(result: RunResult) -> dict[str, Any]:
    """The run's figures, JSON-ready (the keys ``dispatch simulate --json`` writes)."""
    s = result.scenario
    outcomes = result.outcomes
    n = len(outcomes)
    times = _times(outcomes)
    reached = [t for t in times if math.isfinite(t)]
    engine_times = _times(outcomes, engine=True)
    engine_reached = [t for t in engine_times if math.isfinite(t)]
    days = s.hours / 24.0
    etas = sorted(o.first_eta_s for o in outcomes if o.first_eta_s is not None)
    accepts = sorted(o.first_accept_s for o in outcomes if o.first_accept_s is not None)
    by_kind: dict[str, list[Outcome]] = {}
    by_cell: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind, []).append(o)
        by_cell.setdefault(o.cell, []).append(o)
    volunteers = 0 if s.baseline else s.volunteers
    return {
        "mode": f"baseline {s.baseline}" if s.baseline else f"volunteers, policy {s.policy}",
        "incidents": n,
        "p50_s": _finite(percentile(times, 0.5)) if n else None,
        "p90_s": _finite(percentile(times, 0.9)) if n else None,
        "mean_s": round(statistics.fmean(reached), 1) if reached else None,
        "within_target_share": within_target_share(outcomes, s.target_s),
        "target_s": s.target_s,
        "reached_share": _share(len(reached), n),
        # The engine's arrival moment (geofence or button at the street point, without
        # the last leg to the patient), from the call's start as well.
        "engine_arrival_p50_s": _finite(percentile(engine_times, 0.5)) if n else None,
        "engine_arrival_mean_s": (
            round(statistics.fmean(engine_reached), 1) if engine_reached else None
        ),
        "engine_within_target_share": _share(sum(t <= s.target_s for t in engine_reached), n),
        "assumptions": s.assumptions(),
        "accepted_share": _share(sum(o.accepted for o in outcomes), n),
        "escalated_share": _share(sum(o.escalated for o in outcomes), n),
        "alerts": result.alerts,
        "alerts_per_incident": round(result.alerts / n, 3) if n else None,
        "alerts_per_volunteer_per_day": (
            round(result.alerts / volunteers / days, 3) if volunteers else None
        ),
        "first_wave_size": result.wave_size,
        "max_open_alerts_per_incident": result.max_open_alerts,
        "median_first_eta_s": round(statistics.median(etas), 1) if etas else None,
        "median_time_to_accept_s": round(statistics.median(accepts), 1) if accepts else None,
        # People sent moving per incident (backups included) and how many the engine gave
        # up waiting for (overdue: a new wave went out for them).
        "responders_per_incident": (
            round(sum(o.responders for o in outcomes) / n, 3) if n and not s.baseline else None
        ),
        "overdue_share": _share(
            sum(o.overdue for o in outcomes), sum(o.responders for o in outcomes)
        ),
        # How long after accepting a responder was given up on, and how often the
        # engine's stall check (their location reports) did it rather than the clock.
        "mean_time_to_overdue_s": (
            round(statistics.fmean(waits), 1)
            if (waits := [w for o in outcomes for w in o.overdue_after_s])
            else None
        ),
        "overdue_by_location_share": _share(
            sum(o.overdue_no_progress for o in outcomes), sum(o.overdue for o in outcomes)
        ),
        # Stood down on the way once enough were on scene (backups, overdue ones).
        "released_per_incident": (
            round(sum(o.released for o in outcomes) / n, 3) if n and not s.baseline else None
        ),
        "kinds": {kind: _group(group, s.target_s) for kind, group in sorted(by_kind.items())},
        "cells": [
            {"cell": cell, **_group(group, s.target_s)} for cell, group in sorted(by_cell.items())
        ],
        "scenario": s.to_dict(),
        **dict(result.extra),
    }


def _group(group: Sequence[Outcome], target_s: float) -> dict[str, Any]:
    times = _times(group)
    return {
        "incidents": len(group),
        "within_target_share": within_target_share(group, target_s),
        "p50_s": _finite(percentile(times, 0.5)),
        "lat": round(statistics.fmean(o.lat for o in group), 5),
        "lon": round(statistics.fmean(o.lon for o in group), 5),
    }


def _human_model(a: Mapping[str, float], baseline: str | None) -> str:
    shared = f"intake {a['intake_s']:g} s, last leg {a['last_leg_s']:g} s"
    if baseline:
        return shared
    return (
        f"turnout {a['turnout_s']:g} s (median, sigma {a['turnout_sigma']:g}), "
        f"{a['silent_share']:.0%} of alerts not accepted never answered, "
        f"{a['unreachable_share']:.0%} of phones unreachable, {shared}"
    )


def _calibration_lines(c: Mapping[str, Any]) -> list[str]:
    chosen = c["chosen"]
    sens = c["sensitivity"]
    lines = [
        "",
        f"calibrated, not sourced: vehicle speed {chosen['vehicle_speed_kmh']:g} km/h and station "
        f"delay {chosen['station_delay_min_s']:g}-{chosen['station_delay_max_s']:g} s were "
        f"chosen to reproduce the seed's {c['target_mean_s'] / 60:g} min mean",
        "sensitivity: mean minutes, call to patient",
        f"{'station delay':<22}"
        + "".join(f"{f'{v:g} km/h':>12}" for v in sens["vehicle_speeds_kmh"]),
    ]
    lo, hi = chosen["station_delay_min_s"], chosen["station_delay_max_s"]
    for shift, row in zip(sens["delay_shifts_s"], sens["mean_s"], strict=True):
        label = f"{max(0.0, lo + shift):g}-{max(0.0, hi + shift):g} s ({shift:+g})"
        lines.append(
            f"{label:<22}" + "".join(f"{'-' if m is None else f'{m / 60:.1f}':>12}" for m in row)
        )
    return lines


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "none"
    return f"{x:.0f} s ({x / 60:.1f} min)"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _alert_load(summary: Mapping[str, Any]) -> str:
    load = summary.get("alerts_per_volunteer_day")
    if not load:
        return str(summary["alerts_per_volunteer_per_day"])
    budget = summary["scenario"].get("daily_budget") or 0
    cap = f"; budget {budget} a day each" if budget else "; no budget"
    return f"mean {load['mean']:g}, p95 {load['p95']:g}, max {load['max']:g}{cap}"


def _undelivered(summary: Mapping[str, Any]) -> str:
    n = summary.get("undelivered_alerts")
    if n is None:
        return "undelivered alerts not counted"
    alerts = summary.get("alerts") or 0
    share = f" ({n / alerts:.1%} of the alerts)" if alerts else ""
    return f"{n} alerts undelivered{share}, each replaced at once"


def format_report(summary: Mapping[str, Any], worst: int = 10) -> str:
    """The printed report: headline figures, alert load, kinds and the worst grid cells."""
    sc = summary["scenario"]
    lines = [
        f"scenario: {summary['mode']}, {sc['volunteers']} volunteers, "
        f"acceptance {sc['acceptance']:.0%}, walkers {sc['walk_speed_mps']} m/s, "
        f"{sc['rate_per_hour']} incidents/h for {sc['hours']} h, seed {sc['seed']}"
        if not sc["baseline"]
        else f"scenario: {summary['mode']}: {sc['stations']} stations, "
        f"{sc['vehicle_speed_kmh']} km/h, station delay {sc['station_delay_min_s']:.0f}-"
        f"{sc['station_delay_max_s']:.0f} s, {sc['rate_per_hour']} incidents/h for "
        f"{sc['hours']} h, seed {sc['seed']}",
        "human model               " + _human_model(summary["assumptions"], sc["baseline"]),
    ]
    fleet = summary.get("qualified_on_duty")
    if fleet is not None:
        skills = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fleet["by_skill"].items())
        lines.append(f"qualified on duty         {fleet['total']} in total; {skills}")
    lines += [
        f"incidents                 {summary['incidents']}",
        "(times from the call's start to the first responder at the patient)",
        f"time to arrival P50       {_fmt_s(summary['p50_s'])}",
        f"time to arrival P90       {_fmt_s(summary['p90_s'])}",
        f"mean (of those reached)   {_fmt_s(summary['mean_s'])}",
        f"within {summary['target_s']:.0f} s              {_pct(summary['within_target_share'])}"
        " of all incidents",
        f"reached at all            {_pct(summary['reached_share'])}",
        f"at the street point      P50 {_fmt_s(summary['engine_arrival_p50_s'])}, "
        f"mean {_fmt_s(summary['engine_arrival_mean_s'])}, within {summary['target_s']:.0f} s "
        f"{_pct(summary['engine_within_target_share'])}",
    ]
    calibration = summary.get("stations_calibration")
    if calibration is not None:
        lines += _calibration_lines(calibration)
    if not sc["baseline"]:
        lines += [
            f"accepted                  {_pct(summary['accepted_share'])}",
            f"escalated                 {_pct(summary['escalated_share'])}",
            f"alerts per incident       {summary['alerts_per_incident']}"
            f" (first wave {summary['first_wave_size']})",
            f"alerts per volunteer/day  {_alert_load(summary)}",
            f"median ETA of responder   {_fmt_s(summary['median_first_eta_s'])}",
            f"responders per incident   {summary['responders_per_incident']}"
            f" (overdue: {_pct(summary['overdue_share'])} of them)",
            f"time to overdue (mean)    {_fmt_s(summary['mean_time_to_overdue_s'])}"
            f" (by location: {_pct(summary['overdue_by_location_share'])})",
            f"stood down on the way     {summary['released_per_incident']} per incident",
            f"delivery receipts         from {sc.get('receipts_share', 0.0):.0%} of the phones; "
            f"{_undelivered(summary)}",
            "location reports          "
            + (
                f"every {sc['location_interval_s']:g} s"
                if sc["location_interval_s"]
                else "none (--location-interval 0)"
            ),
        ]
    lines.append("")
    lines.append(f"{'kind':<16}{'incidents':>10}{'within':>10}{'P50':>10}")
    for kind, g in summary["kinds"].items():
        p50 = "none" if g["p50_s"] is None else f"{g['p50_s']:.0f} s"
        lines.append(f"{kind:<16}{g['incidents']:>10}{_pct(g['within_target_share']):>10}{p50:>10}")
    cells = [c for c in summary["cells"] if c["incidents"] >= _MIN_CELL_INCIDENTS]
    cells.sort(key=lambda c: (c["within_target_share"], -c["incidents"], c["cell"]))
    lines.append("")
    lines.append(
        f"worst grid cells (of {len(summary['cells'])} with incidents; "
        f"at least {_MIN_CELL_INCIDENTS} incidents each)"
    )
    lines.append(f"{'cell':<10}{'lat,lon':>20}{'incidents':>10}{'within':>10}{'P50':>10}")
    for c in cells[:worst]:
        p50 = "none" if c["p50_s"] is None else f"{c['p50_s']:.0f} s"
        where = f"{c['lat']:.4f},{c['lon']:.4f}"
        lines.append(
            f"{c['cell']:<10}{where:>20}{c['incidents']:>10}"
            f"{_pct(c['within_target_share']):>10}{p50:>10}"
        )
    return "\n".join(lines)
