"""One entry point for a planning run: the engine's core with volunteers, or the stations."""

from __future__ import annotations

from collections.abc import Callable

from dispatch.config import Config, load_config
from geo.area import ServiceArea
from simulators.scenario import RunResult, Scenario, load_area, run_volunteers
from simulators.stations import run_stations

__all__ = ["run_scenario"]


def run_scenario(
    scenario: Scenario,
    *,
    area: ServiceArea | None = None,
    config: Config | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Play ``scenario``: with volunteers, or with vehicles from stations (``baseline``)."""
    if scenario.baseline == "stations":
        # The stations baseline needs only the area: no engine, so no config.
        return run_stations(scenario, area or load_area(config or load_config()), progress=progress)
    return run_volunteers(scenario, area=area, config=config, progress=progress)
