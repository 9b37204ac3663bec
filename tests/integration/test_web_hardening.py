"""The HTTP layer under hostile use (issue 18): the engine in-process, real Mosquitto and Redis.

Each test shows one fix: event streams share one reader and are bounded, coverage gives
away nothing finer than the map, lists and replays are paged, the Host header is
checked, slow headers are cut off, and free text cannot forge a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import servers
from inprocess import engine_in_process

from dispatch.config import Config
from dispatch.coverage import coarsen
from geo.area import ServiceArea

TOKEN = "op-hardening"
XIAOYING = (30.2591, 120.1698)


def _base(config: Config) -> str:
    return f"http://127.0.0.1:{config.http_port}"


@contextlib.asynccontextmanager
async def _engine(
    mqtt_url: str, redis_url: str, topic_root: str, **overrides: Any
) -> AsyncIterator[tuple[Config, aiohttp.ClientSession]]:
    async with (
        engine_in_process(
            mqtt_url, redis_url, topic_root, **{"http.operator_token": TOKEN, **overrides}
        ) as config,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
    ):
        yield config, http


async def _get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, **kw) as r:
        text = await r.text()
        return r.status, orjson.loads(text) if r.content_type == "application/json" else text


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.post(url, data=orjson.dumps(body), headers=headers) as r:
        return r.status, await r.json()


async def _alert_latency(
    http: aiohttp.ClientSession, base: str, mqtt_url: str, root: str, vid: str
) -> float:
    """Seconds from an MQTT report to the alert of the (only) volunteer near it; the
    incident is cancelled afterwards, which frees the volunteer again."""
    lat, lon = XIAOYING
    async with servers.mqtt_client(mqtt_url) as phone:
        await phone.subscribe(f"{root}/volunteers/{vid}/alert", qos=1)
        iid = f"lat-{time.monotonic_ns()}"
        body = {"id": iid, "kind": "fire", "lat": lat, "lon": lon}
        started = time.monotonic()
        await phone.publish(f"{root}/incidents/report", orjson.dumps(body), qos=1)
        async with asyncio.timeout(10):
            async for message in phone.messages:
                if orjson.loads(message.payload).get("incident_id") == iid:
                    took = time.monotonic() - started
                    break
    assert (await _post(http, f"{base}/api/incidents/{iid}/cancel", {}))[0] == 200
    await _until_available(http, base, 1)
    return took


async def _volunteer(mqtt_url: str, root: str, vid: str, lat: float, lon: float, **kw: Any) -> None:
    async with servers.mqtt_client(mqtt_url) as phone:
        body = {"status": "available", "lat": lat, "lon": lon, **kw}
        await phone.publish(f"{root}/volunteers/{vid}/status", orjson.dumps(body), qos=1)


async def _until_available(http: aiohttp.ClientSession, base: str, n: int) -> None:
    async with asyncio.timeout(5):
        while True:
            if (await _get(http, base + "/api/volunteers"))[1]["available"] == n:
                return
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- item 1: event streams


async def test_many_idle_event_streams_neither_exhaust_redis_nor_stop_dispatch(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root) as (config, http):
        base = _base(config)
        lat, lon = XIAOYING
        await _volunteer(mqtt_url, topic_root, "v-sse", lat, lon)
        await _until_available(http, base, 1)
        before = await _alert_latency(http, base, mqtt_url, topic_root, "v-sse")
        sessions = [aiohttp.ClientSession() for _ in range(150)]
        try:
            opened = await asyncio.gather(
                *(s.get(base + "/api/events") for s in sessions), return_exceptions=True
            )
            statuses = [r.status for r in opened if isinstance(r, aiohttp.ClientResponse)]
            assert statuses.count(200) == config.max_event_listeners == 100
            assert statuses.count(503) == 50
            refused = next(
                r for r in opened if isinstance(r, aiohttp.ClientResponse) and r.status == 503
            )
            assert "too many event streams" in (await refused.json())["error"]
            await asyncio.sleep(1.0)
            # One reader for all of them: a handful of connections, not one each.
            client = aioredis.from_url(redis_url)
            try:
                connections = len(await client.client_list())
            finally:
                await client.aclose()
            assert connections < 30, f"{connections} Redis connections with 100 listeners"
            status, ready = await _get(http, base + "/readyz")
            assert status == 200, ready
            during = await _alert_latency(http, base, mqtt_url, topic_root, "v-sse")
            assert during < max(0.5, 10 * before), (before, during)
        finally:
            for r in opened:
                if isinstance(r, aiohttp.ClientResponse):
                    r.close()
            await asyncio.gather(*(s.close() for s in sessions))


async def _sse_lines(response: aiohttp.ClientResponse, until: Any, within: float = 5) -> list[str]:
    lines: list[str] = []
    async with asyncio.timeout(within):
        while not until(lines):
            line = await response.content.readline()
            if not line:
                break
            lines.append(line.decode().rstrip("\n"))
    return lines


async def test_a_replay_from_last_event_id_0_is_bounded(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root) as (config, http):
        client = aioredis.from_url(redis_url)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for i in range(1_500):
                    pipe.xadd(
                        f"{topic_root}:events",
                        {"incident_id": f"x{i}", "type": "reported", "at": "1.0", "data": "{}"},
                    )
                await pipe.execute()
        finally:
            await client.aclose()
        headers = {"Last-Event-ID": "0"}
        async with http.get(_base(config) + "/api/events", headers=headers) as r:
            assert r.status == 200
            lines = await _sse_lines(r, lambda ls: sum(x.startswith("id: ") for x in ls) >= 500)
            more = await _sse_lines(r, lambda ls: any(": keep-alive" in x for x in ls))
    assert "event: reset" in lines[:5], lines[:5]
    ids = [x for x in lines + more if x.startswith("data: ") and '"incident_id":"x' in x]
    assert len(ids) == 500
    assert '"incident_id":"x1000"' in ids[0]  # the newest 500 of 1,500


async def test_a_listener_that_resumes_misses_nothing_and_gets_nothing_twice(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root) as (config, http):
        base = _base(config)
        _, listing = await _get(http, base + "/api/incidents")
        start = listing["last_event_id"]
        lat, lon = XIAOYING
        for n in range(3):
            body = {"id": f"r{n}", "kind": "other", "lat": lat, "lon": lon}
            await _post(http, base + "/api/incidents", body)
        async with http.get(base + "/api/events", headers={"Last-Event-ID": start}) as r:
            lines = await _sse_lines(r, lambda ls: sum("r2" in x for x in ls) >= 1)
            body = {"id": "r3", "kind": "other", "lat": lat, "lon": lon}
            await _post(http, base + "/api/incidents", body)
            lines += await _sse_lines(r, lambda ls: sum('"r3"' in x for x in ls) >= 1)
    ids = [x for x in lines if x.startswith("id: ")]
    assert len(ids) == len(set(ids))
    reported = [x for x in lines if '"type":"reported"' in x]
    assert [next(f"r{n}" for n in range(4) if f'"r{n}"' in x) for x in reported] == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]


# ---------------------------------------------------------------- item 3: paging, the index


async def test_history_is_paged(mqtt_url: str, redis_url: str, topic_root: str) -> None:
    async with _engine(mqtt_url, redis_url, topic_root) as (config, http):
        base = _base(config)
        for n in range(5):
            body = {"id": f"p{n}", "kind": "other", "lat": XIAOYING[0], "lon": XIAOYING[1],
                    "reported_at": 1_700_000_000 + n}  # fmt: skip
            assert (await _post(http, base + "/api/incidents", body))[0] == 201
        seen: list[str] = []
        offset: int | None = 0
        while offset is not None:
            status, page = await _get(http, f"{base}/api/incidents?since=0&limit=2&offset={offset}")
            assert status == 200
            assert len(page["incidents"]) <= 2
            seen += [i["id"] for i in page["incidents"]]
            offset = page["next_offset"]
        assert seen == ["p0", "p1", "p2", "p3", "p4"]
        status, page = await _get(http, f"{base}/api/incidents?since=0")
        assert len(page["incidents"]) == 5
        assert page["next_offset"] is None
        for bad in ("limit=0", "limit=1001", "limit=x", "offset=-1"):
            status, body = await _get(http, f"{base}/api/incidents?since=0&{bad}")
            assert status == 400, bad
            assert "whole number" in body["error"]
        status, detail = await _get(http, f"{base}/api/incidents/p3")
        assert detail["events"][0]["type"] == "reported"
        assert all(e["id"] for e in detail["events"])


# ---------------------------------------------------------------- item 5: Host header


async def test_a_host_name_not_configured_gets_421(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with _engine(
        mqtt_url, redis_url, topic_root, **{"http.allowed_hosts": ["localhost", "ops.example"]}
    ) as (config, http):
        url = _base(config) + "/api/incidents"
        port = config.http_port
        status, body = await _get(http, url, headers={"Host": f"rebind.attacker.example:{port}"})
        assert status == 421
        assert "http.allowed_hosts" in body["error"]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "ops.example", f"[::1]:{port}"):
            status, _ = await _get(http, url, headers={"Host": host})
            assert status == 200, host


# ---------------------------------------------------------------- item 7: slow headers, logs


async def test_a_client_that_sends_its_headers_slowly_is_cut_off(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root, **{"http.header_timeout_s": 1.0}) as (
        config,
        _,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", config.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed_after = None
        for _ in range(12):  # one header line every 0.5 s, never the blank line
            await asyncio.sleep(0.5)
            try:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                closed_after = time.monotonic() - started
                break
            if reader.at_eof():
                closed_after = time.monotonic() - started
                break
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.01) == b"":
                    closed_after = time.monotonic() - started
                    break
        writer.close()
        assert closed_after is not None, "the connection stayed open for 6 s of slow headers"
        assert closed_after < 3.0
        # A normal client is not affected.
        reader, writer = await asyncio.open_connection("127.0.0.1", config.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(100), 5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_free_text_cannot_forge_a_log_line(
    mqtt_url: str, redis_url: str, topic_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dispatch")
    async with _engine(mqtt_url, redis_url, topic_root) as (config, http):
        base = _base(config)
        body = {"id": "log-1", "kind": "other", "lat": XIAOYING[0], "lon": XIAOYING[1]}
        assert (await _post(http, base + "/api/incidents", body))[0] == 201
        status, error = await _post(
            http, base + "/api/incidents/log-1/escalate", {"by": "mallory\nINFO forged"}
        )
        assert status == 400
        assert "control characters" in error["error"]
        forged = "x\nINFO dispatch.service: incident=log-2 event=resolved"
        status, _ = await _post(
            http, base + "/api/incidents/log-1/escalate", {"by": "li", "reason": forged}
        )
        assert status == 200
    lines = [r.getMessage() for r in caplog.records if "log-1" in r.getMessage()]
    assert any("escalat" in line for line in lines), lines
    assert not any("\n" in line for line in lines), lines


# ---------------------------------------------------------------- item 2: coverage


async def test_coverage_is_the_same_anywhere_within_a_map_square(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    """Coverage is computed from the map's coarse position: moving within the ~100 m
    square changes nothing, so nothing finer can be recovered from it (trilateration
    recovered the exact position before)."""
    async with _engine(mqtt_url, redis_url, topic_root) as (config, http):
        base = _base(config)
        area = ServiceArea.from_geojson(config.area_geojson, cell_size_m=config.cell_size_m)
        projection = area.projection
        clat, clon = coarsen(projection, *XIAOYING)
        cx, cy = projection.to_xy(clat, clon)
        answers = []
        for dx, dy in ((-35.0, -35.0), (35.0, 30.0)):  # two corners of one square
            lat, lon = projection.to_latlon(cx + dx, cy + dy)
            assert coarsen(projection, lat, lon) == (clat, clon)
            await _volunteer(mqtt_url, topic_root, "v-cov", lat, lon, skills=["rare_skill"])
            await _until_available(http, base, 1)
            await asyncio.sleep(3.1)  # past the cache
            status, body = await _get(http, base + "/api/coverage?skill=rare_skill")
            assert status == 200
            assert body["cells_within_target"] > 0
            answers.append([(c["cell"], c["eta_s"]) for c in body["cells"]])
        assert answers[0] == answers[1]
