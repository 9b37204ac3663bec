"""The offline runner against the live engine: the same scenario, the same figures.

The live run: the engine over a real broker and Redis, the simulated fleet (the very
volunteers the offline runner places: same generator, same stream) and the scenario's
incidents replayed over MQTT, for about 40 s of wall time. To fit a minute, people
answer ten times faster than in life (median 1.5 s instead of 15 s) and incidents come
at 0.8 per second in a 500 m disc around 小营巷; the offline scenario is given the same
figures. Incidents are never resolved in either run (the engine never resolves them
itself), so confirmed volunteers stay busy in both. Both run the engine's default
policy, overdue detection included (every volunteer arrives here, so it rarely fires;
the offline phones report their location every 10 s, the live fleet's every 2 s on
the way, and the stall check, 60 s after an accept, cannot fire within a 40 s run).

The offline human model is switched off here, explicitly (``NO_HUMAN_MODEL``: no
turnout, no silent alerts, no unreachable phones, no last leg, no intake): the live
fleet answers every alert it receives and sets off at the "go", and the incidents are
replayed straight to the engine, so the two runs compare the same world.

Compared: the share of incidents with a confirmed responder, alerts per incident, the
engine's ETA estimate of the first confirmed responder (median) and the time to the
first accept (median). Each tolerance is four standard errors of the difference of two
independent samples of this size, the standard error taken from the offline run's own
per-incident spread (the mean's s/sqrt(n); the median's 1.2533 s/sqrt(n), its normal
approximation), plus a small allowance for what only the live run has (MQTT and
scheduling delays of some milliseconds, the fleet's 50 ms tick).
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from datetime import datetime

import aiohttp
import pytest
from inprocess import engine_in_process

from dispatch.config import load_config
from simulators.fleet import Fleet, FleetModel, FleetParams, near_point
from simulators.incidents import IncidentStream, ScheduledReport
from simulators.run import run_scenario
from simulators.scenario import (
    NO_HUMAN_MODEL,
    ROOT,
    RunResult,
    Scenario,
    incident_schedule,
    load_area,
    stream,
)

pytestmark = pytest.mark.integration

XIAOYINGXIANG = (30.2591, 120.1698)
TIME_SCALE = 10.0  # the fleet lives ten times faster than the engine's clock
SECONDS = 40.0

SCENARIO = Scenario(
    volunteers=150,
    acceptance=0.35,
    hours=SECONDS / 3600.0,
    seed=11,
    rate_per_hour=0.8 * 3600.0,
    reply_median_s=15.0 / TIME_SCALE,
    reply_sigma=0.6,
    arrive_share=1.0,
    fleet_speeds=True,
    on_scene_s=1e6,
    unreached_resolve_s=1e6,
    near=XIAOYINGXIANG,
    spread_m=500.0,
    **NO_HUMAN_MODEL,
)


def _t(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


def _median_se(values: Sequence[float]) -> float:
    return 1.2533 * statistics.stdev(values) / math.sqrt(len(values))


def _mean_se(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values))


@pytest.mark.filterwarnings(
    "ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"
)
@pytest.mark.timeout(120)
async def test_offline_figures_agree_with_a_live_run(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    offline: RunResult = run_scenario(SCENARIO)
    plan = incident_schedule(SCENARIO, load_area(load_config()))
    assert len(plan) >= 20

    async with engine_in_process(mqtt_url, redis_url, topic_root) as config:
        area = load_area(config)
        params = FleetParams(
            acceptance=SCENARIO.acceptance,
            reply_median_s=15.0,
            reply_sigma=SCENARIO.reply_sigma,
            arrive_share=1.0,
            wander_mps=0.0,  # at home, as offline
            mean_on_duty_s=1e12,  # on duty throughout, as offline
        )
        fleet = Fleet(mqtt_url, topic_root, area, 0, time_scale=TIME_SCALE, params=params)
        # The very volunteers of the offline run: its generator and its random stream.
        fleet.model = FleetModel(
            area,
            SCENARIO.volunteers,
            stream(SCENARIO.seed, "population"),
            topic_root,
            params,
            place=near_point(area, *XIAOYINGXIANG, SCENARIO.spread_m),
        )
        ids = [f"{topic_root}-{p.id}" for p in plan]
        reports = [
            ScheduledReport(
                p.at_s, {"id": iid, "kind": p.kind, "lat": round(p.lat, 7), "lon": round(p.lon, 7)}
            )
            for p, iid in zip(plan, ids, strict=True)
        ]
        incidents = IncidentStream(mqtt_url, topic_root, area, replay=reports, id_prefix=topic_root)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            fleet_task = tg.create_task(fleet.run(stop), name="fleet")
            async with asyncio.timeout(15):
                await fleet.ready.wait()
            await asyncio.sleep(1.0)  # the engine has taken every status in
            stream_task = tg.create_task(incidents.run(stop), name="incidents")
            try:
                await asyncio.sleep(SECONDS + 5.0)  # the last incident's replies come in
            finally:
                stop.set()
            await asyncio.wait([fleet_task, stream_task], timeout=10)

        live = []
        async with aiohttp.ClientSession() as http:
            for iid in ids:
                url = f"http://127.0.0.1:{config.http_port}/api/incidents/{iid}?events=0"
                async with http.get(url) as response:
                    assert response.status == 200, iid
                    live.append(await response.json())

    assert ROOT  # the offline runner's own topic root is not the live one
    n = len(plan)
    # 1. Share with a confirmed responder.
    live_accepted = sum(bool(b["responders"]) for b in live) / n
    off_accepted = sum(o.accepted for o in offline.outcomes) / n
    p = (live_accepted + off_accepted) / 2
    tolerance = 4 * math.sqrt(2 * max(p * (1 - p), 1 / n) / n)
    assert abs(live_accepted - off_accepted) <= tolerance, (live_accepted, off_accepted)

    # 2. Alerts per incident.
    off_alerts = [float(o.alerts) for o in offline.outcomes]
    live_alerts = [float(len(b["alerts"])) for b in live]
    tolerance = 4 * math.sqrt(2) * _mean_se(off_alerts) + 0.5
    assert abs(statistics.fmean(live_alerts) - statistics.fmean(off_alerts)) <= tolerance, (
        statistics.fmean(live_alerts),
        statistics.fmean(off_alerts),
        tolerance,
    )

    # 3. The engine's ETA of its first confirmed responder.
    off_eta = [o.first_eta_s for o in offline.outcomes if o.first_eta_s is not None]
    live_eta = [b["responders"][0]["eta_s"] for b in live if b["responders"]]
    tolerance = 4 * math.sqrt(2) * _median_se(off_eta)
    assert abs(statistics.median(live_eta) - statistics.median(off_eta)) <= tolerance, (
        statistics.median(live_eta),
        statistics.median(off_eta),
        tolerance,
    )

    # 4. Time from report to the first accept, in the engine's seconds.
    off_accept = [o.first_accept_s for o in offline.outcomes if o.first_accept_s is not None]
    live_accept = []
    for b in live:
        first, reported = _t(b["times"]["first_accept_at"]), _t(b["times"]["reported_at"])
        if first is not None and reported is not None:
            live_accept.append(first - reported)
    tolerance = 4 * math.sqrt(2) * _median_se(off_accept) + 0.3
    assert abs(statistics.median(live_accept) - statistics.median(off_accept)) <= tolerance, (
        statistics.median(live_accept),
        statistics.median(off_accept),
        tolerance,
    )
