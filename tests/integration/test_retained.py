"""Retained inbound messages are refused with a reason and never acted on (issue 18, item 4).

A broker replays a stored retained message to every new subscription: a retained report
used to become a new incident at every engine connect (1, then 2, then 3 after two
restarts), and a retained ``status`` put a volunteer back on duty at every restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import servers
from inprocess import engine_in_process

XIAOYING = (30.2591, 120.1698)


async def _incidents(port: int) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/api/incidents?since=0") as r,
    ):
        assert r.status == 200
        body = await r.json()
    incidents: list[dict[str, Any]] = body["incidents"]
    return incidents


async def _available(port: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/api/volunteers") as r,
    ):
        body = await r.json()
    available: int = body["available"]
    return available


async def _rejections(client: Any, want: int, within: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    async with asyncio.timeout(within + 1):
        async for message in client.messages:
            body = orjson.loads(message.payload)
            if body.get("code") == "retained":
                got.append(body)
            if len(got) >= want or time.monotonic() > deadline:
                break
    return got


async def test_a_retained_report_and_status_are_refused_at_every_connect(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    lat, lon = XIAOYING
    report = {"kind": "fire", "lat": lat, "lon": lon, "address": "小营巷 12 号"}  # no id
    async with servers.mqtt_client(mqtt_url) as reporter:
        await reporter.publish(
            f"{topic_root}/incidents/report", orjson.dumps(report), qos=1, retain=True
        )
        await reporter.publish(
            f"{topic_root}/volunteers/v-ret/status",
            orjson.dumps({"status": "available", "lat": lat, "lon": lon}),
            qos=1,
            retain=True,
        )
    async with servers.mqtt_client(mqtt_url) as watcher:
        await watcher.subscribe(f"{topic_root}/rejected", qos=1)
        for start in range(3):  # three connects of the engine: nothing each time
            async with engine_in_process(mqtt_url, redis_url, topic_root) as config:
                rejected = await _rejections(watcher, 2)
                assert sorted(r["topic"].split("/")[-1] for r in rejected) == [
                    "report",
                    "status",
                ], (start, rejected)
                assert all("retain" in r["reason"] for r in rejected)
                assert await _incidents(config.http_port) == [], f"start {start}"
                assert await _available(config.http_port) == 0, f"start {start}"


async def test_the_reason_carries_the_reports_id(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    lat, lon = XIAOYING
    report = {"id": "ret-1", "kind": "medical", "lat": lat, "lon": lon}
    async with servers.mqtt_client(mqtt_url) as reporter:
        await reporter.publish(
            f"{topic_root}/incidents/report", orjson.dumps(report), qos=1, retain=True
        )
    async with servers.mqtt_client(mqtt_url) as watcher:
        await watcher.subscribe(f"{topic_root}/rejected", qos=1)
        async with engine_in_process(mqtt_url, redis_url, topic_root) as config:
            (rejected,) = await _rejections(watcher, 1)
            assert rejected["id"] == "ret-1"
            assert await _incidents(config.http_port) == []
        # Cleared by its publisher (an empty retained message): nothing left to refuse.
        async with servers.mqtt_client(mqtt_url) as reporter:
            await reporter.publish(f"{topic_root}/incidents/report", b"", qos=1, retain=True)
