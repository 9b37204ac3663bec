"""The stations baseline: no volunteers, a vehicle from the nearest of fixed stations.

This is how help came before the volunteer scheme: a call goes to a station (police
post, community service or ambulance point), which sends a crew by vehicle through
city traffic. ASSUMPTIONS, stated plainly (each one a ``Scenario`` field):

- One station per subdistrict. Shangcheng has 14 jiedao (街道); their boundaries are
  not bundled, so 14 stations are placed by k-means over the grid cells weighted by
  where people live (``DensityModel``): small, dense subdistricts in the old town and
  large ones to the east, as the jiedao are. Each station sits at the grid cell nearest
  its cluster's centre. The placement is fixed (not drawn from the seed).
- Dispatch and turnout (taking the call, passing it on, the crew getting into the
  vehicle): uniform between 60 and 150 s. Chinese emergency services publish call-to-
  dispatch targets of about one minute and a crew turnout of one to two minutes.
- Driving at 15 km/h door to door with a street circuity of 1.4. Published peak-hour
  road speeds for Hangzhou are in the 20-30 km/h range on main roads, lower in the old
  town's lanes, and the last stretch (parking, finding the entrance and the flat) is
  slow; 15-20 km/h door to door is the range we consider plausible, and 15 km/h is the
  value that reproduces the seed's 8 minutes (18 km/h gives about 7).
- Unlimited crews: a station is never busy. This favours the baseline.

With these figures the mean time to arrival over Shangcheng comes out near 8 minutes,
which is the seed's figure for the old way of working (docs/planning.md shows the run).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from geo.area import ServiceArea
from geo.distance import haversine_m
from simulators.incidents import DensityModel
from simulators.scenario import (
    Outcome,
    RunResult,
    Scenario,
    incident_schedule,
    stream,
)

__all__ = ["place_stations", "run_stations"]

_ITERATIONS = 100


def place_stations(area: ServiceArea, k: int = 14) -> list[tuple[float, float]]:
    """``k`` station positions (lat, lon): density-weighted k-means over the grid cells."""
    density = DensityModel(area)
    cells = area.cells
    k = min(k, len(cells))
    xy = [area.projection.to_xy(c.lat, c.lon) for c in cells]
    weights = density.weights
    # k-means++ seeding from a fixed stream: the same stations on every run.
    rng = random.Random("stations/kmeans")
    centres = [xy[rng.choices(range(len(xy)), weights=weights)[0]]]
    while len(centres) < k:
        d2 = [w * min(_d2(p, c) for c in centres) for p, w in zip(xy, weights, strict=True)]
        centres.append(xy[rng.choices(range(len(xy)), weights=d2)[0]])
    for _ in range(_ITERATIONS):
        sums = [[0.0, 0.0, 0.0] for _ in centres]
        for p, w in zip(xy, weights, strict=True):
            j = min(range(len(centres)), key=lambda i: _d2(p, centres[i]))
            sums[j][0] += w * p[0]
            sums[j][1] += w * p[1]
            sums[j][2] += w
        moved = [
            (sx / sw, sy / sw) if sw > 0 else c
            for (sx, sy, sw), c in zip(sums, centres, strict=True)
        ]
        if moved == centres:
            break
        centres = moved
    out = []
    for c in centres:
        nearest = min(range(len(cells)), key=lambda i: _d2(xy[i], c))
        out.append((cells[nearest].lat, cells[nearest].lon))
    return out


def _d2(a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2


def run_stations(
    scenario: Scenario,
    area: ServiceArea,
    *,
    progress: Callable[[float], None] | None = None,
    stations: Sequence[tuple[float, float]] | None = None,
) -> RunResult:
    """The scenario's incidents, each answered by a vehicle from the nearest station."""
    stations = list(stations) if stations is not None else place_stations(area, scenario.stations)
    rng = stream(scenario.seed, "stations")
    speed_mps = scenario.vehicle_speed_kmh / 3.6
    plan = incident_schedule(scenario, area)
    outcomes = []
    for n, planned in enumerate(plan):
        if progress is not None and n % 100 == 0:
            progress(planned.at_s / scenario.duration_s)
        distance = min(haversine_m(planned.lat, planned.lon, lat, lon) for lat, lon in stations)
        delay = rng.uniform(scenario.station_delay_min_s, scenario.station_delay_max_s)
        factor = rng.lognormvariate(0.0, scenario.speed_spread)
        drive = distance * scenario.vehicle_circuity / (speed_mps * factor)
        outcomes.append(
            Outcome(
                id=planned.id,
                kind=planned.kind,
                cell=area.cell_at(planned.lat, planned.lon).id,
                lat=planned.lat,
                lon=planned.lon,
                time_to_arrival_s=delay + drive,
                escalated=False,
                alerts=0,
                accepted=True,
                first_eta_s=None,
                first_accept_s=None,
            )
        )
    if progress is not None:
        progress(1.0)
    return RunResult(
        scenario=scenario,
        outcomes=tuple(outcomes),
        alerts=0,
        wave_size=0,
        max_open_alerts=0,
        extra={"stations": [[round(lat, 6), round(lon, 6)] for lat, lon in stations]},
    )
