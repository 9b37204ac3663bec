"""A location gateway's /metrics and /healthz (``dispatch gateway --metrics-http``).

Each test runs ``python -m dispatch gateway`` as a process on the session's real broker
(and its real Redis, or a port where none listens), sends it locations over MQTT as
phones do, and scrapes it as Prometheus and a load tester would: the counters follow
the traffic (and agree with what reached the broker), Redis down shows as positions
held back, and /healthz says 503 until the broker is connected.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families
from servers import mqtt_client, terminate

from dispatch.cli import main as cli_main
from dispatch.localservers import free_port

# 清河坊, in the service area of config/default.toml.
LAT, LON = 30.2420, 120.1690

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class GatewayUnderTest:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as resp:
            return resp.status, await resp.read()

    async def health(self) -> tuple[int, dict[str, Any]]:
        status, body = await self.get("/healthz")
        parsed: dict[str, Any] = orjson.loads(body)
        return status, parsed

    async def scrape(self) -> Samples:
        status, body = await self.get("/metrics")
        assert status == 200, body
        samples: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@asynccontextmanager
async def gateway(
    tmp_path: Path, mqtt_url: str, redis_url: str, topic_root: str
) -> AsyncIterator[GatewayUnderTest]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["DISPATCH_GATEWAY_ENABLED"] = "true"
    log_path = tmp_path / f"gateway-{port}.log"
    argv = [
        "-m", "dispatch", "gateway",
        "--mqtt", mqtt_url,
        "--redis", redis_url,
        "--topic-root", topic_root,
        "--instance", "metrics",
        "--metrics-http", f"127.0.0.1:{port}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    gw = GatewayUnderTest(proc, port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:  # serving /healthz (whatever it says yet)
            assert proc.returncode is None, gw.log()
            try:
                await gw.health()
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, f"no /healthz:\n{gw.log()}"
                await asyncio.sleep(0.1)
        yield gw
    finally:
        await terminate(proc)
    assert proc.returncode == 0, gw.log()


async def until(check: Callable[[], Awaitable[Any]], what: str, within_s: float = 15) -> Any:
    deadline = time.monotonic() + within_s
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return result


async def healthy(gw: GatewayUnderTest) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status, body = await gw.health()
        return body if status == 200 else None

    body: dict[str, Any] = await until(check, "/healthz 200")
    return body


def location(vid: str, i: int) -> bytes:
    return orjson.dumps({"lat": LAT + i * 1e-4, "lon": LON, "accuracy_m": 5})


async def collect(client: aiomqtt.Client, into: list[aiomqtt.Message]) -> None:
    async for message in client.messages:
        into.append(message)


async def test_counters_follow_real_traffic(
    tmp_path: Path, mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    vids = [f"vm{i}" for i in range(30)]
    async with (
        gateway(tmp_path, mqtt_url, redis_url, topic_root) as gw,
        mqtt_client(mqtt_url) as watcher,
        mqtt_client(mqtt_url) as phone,
    ):
        health = await healthy(gw)
        assert health["broker"] is True, health
        assert health["redis"] is True, health
        before = await gw.scrape()
        assert value(before, "dispatch_gateway_locations_received_total") == 0
        # The process's own figures, as prometheus-client gives them.
        assert value(before, "process_cpu_seconds_total") > 0
        assert value(before, "process_resident_memory_bytes") > 0

        moves_topic = f"{topic_root}/internal/moves"
        await watcher.subscribe(moves_topic, qos=1)
        await watcher.subscribe(f"{topic_root}/rejected", qos=1)
        seen: list[aiomqtt.Message] = []
        reader = asyncio.create_task(collect(watcher, seen))
        try:
            # Every volunteer twice (the gateway keeps the newest of each), then two bad ones.
            for rnd in range(2):
                for i, vid in enumerate(vids):
                    await phone.publish(
                        f"{topic_root}/volunteers/{vid}/location", location(vid, i + rnd)
                    )
            await phone.publish(
                f"{topic_root}/volunteers/vbad/location", orjson.dumps({"lat": 123.0, "lon": LON})
            )
            await phone.publish(f"{topic_root}/volunteers/vbad/location", b"not json")

            def moved() -> set[str]:
                return {
                    m[0]
                    for msg in seen
                    if msg.topic.value == moves_topic
                    for m in orjson.loads(bytes(msg.payload))  # type: ignore[arg-type]
                }

            async def all_there() -> bool:
                rejected = [m for m in seen if m.topic.value.endswith("/rejected")]
                return moved() == set(vids) and len(rejected) == 2

            await until(all_there, "every volunteer's move and both rejections")
            batches = [orjson.loads(bytes(m.payload)) for m in seen if m.topic.value == moves_topic]  # type: ignore[arg-type]
            published_moves = sum(len(b) for b in batches)

            async def agreed() -> Samples | None:
                s = await gw.scrape()
                ok = value(s, "dispatch_gateway_batches_published_total") == len(batches)
                return s if ok else None

            after: Samples = await until(agreed, "the batch counter to match the batches seen")
        finally:
            reader.cancel()

        assert value(after, "dispatch_gateway_locations_received_total") == 2 * len(vids) + 2
        assert value(after, "dispatch_gateway_locations_rejected_total", reason="out_of_range") == 1
        assert value(after, "dispatch_gateway_locations_rejected_total", reason="not_json") == 1
        assert value(after, "dispatch_gateway_moves_published_total") == published_moves
        assert len(vids) <= published_moves <= 2 * len(vids)
        # One observation per batch, of its size and of how long its oldest move waited.
        assert value(after, "dispatch_gateway_batch_moves_count") == len(batches)
        assert value(after, "dispatch_gateway_batch_moves_sum") == published_moves
        assert value(after, "dispatch_gateway_receipt_to_publish_seconds_count") == len(batches)
        waited = value(after, "dispatch_gateway_receipt_to_publish_seconds_sum")
        assert 0 < waited < len(batches) * 5
        # Stored in Redis before each batch went out: at least one timed write, none failed.
        assert value(after, "dispatch_gateway_redis_write_seconds_count") >= 1
        assert value(after, "dispatch_gateway_redis_failures_total") == 0
        assert value(after, "dispatch_gateway_unsaved_positions") == 0
        assert value(after, "dispatch_gateway_publish_failures_total", topic="moves") == 0
        client = aredis.Redis.from_url(redis_url)
        try:
            assert await client.exists(*(f"{topic_root}:pos:{v}" for v in vids)) == len(vids)
        finally:
            await client.aclose()
        # /healthz says what it did too.
        status, health = await gw.health()
        assert status == 200
        assert health["received"] == 2 * len(vids) + 2
        assert health["batches"] == len(batches)


async def test_redis_down_holds_positions_back_and_batches_still_go(
    tmp_path: Path, mqtt_url: str, topic_root: str
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    vids = [f"vr{i}" for i in range(12)]
    async with (
        gateway(tmp_path, mqtt_url, nowhere, topic_root) as gw,
        mqtt_client(mqtt_url) as watcher,
        mqtt_client(mqtt_url) as phone,
    ):
        health = await healthy(gw)  # the broker is what it needs
        assert health == {**health, "broker": True, "redis": False}, health
        await watcher.subscribe(f"{topic_root}/internal/moves", qos=1)
        for i, vid in enumerate(vids):
            await phone.publish(f"{topic_root}/volunteers/{vid}/location", location(vid, i))

        async def held_back() -> Samples | None:
            s = await gw.scrape()
            return s if value(s, "dispatch_gateway_unsaved_positions") == len(vids) else None

        s: Samples = await until(held_back, "every position held back")
        assert value(s, "dispatch_gateway_redis_failures_total") >= 1
        assert value(s, "dispatch_gateway_redis_write_seconds_count") == 0
        # The engine gets its moves all the same.
        assert value(s, "dispatch_gateway_moves_published_total") == len(vids)
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                assert len(orjson.loads(bytes(message.payload))) >= 1  # type: ignore[arg-type]
                break
        status, health = await gw.health()
        assert (status, health["redis"], health["unsaved_positions"]) == (200, False, len(vids))


async def test_healthz_is_503_without_the_broker(
    tmp_path: Path, redis_url: str, topic_root: str
) -> None:
    nowhere = f"mqtt://127.0.0.1:{free_port()}"  # no broker there
    async with gateway(tmp_path, nowhere, redis_url, topic_root) as gw:
        await asyncio.sleep(0.5)  # it has tried by now
        status, health = await gw.health()
        assert status == 503, health
        assert health["broker"] is False
        assert health["redis"] is True
        assert value(await gw.scrape(), "process_cpu_seconds_total") > 0


@pytest.mark.parametrize(
    ("argv", "env", "why"),
    [
        (["--metrics-http", "9109"], {}, "'gateway.metrics_http': got '9109'"),
        (["--metrics-http", "127.0.0.1:70000"], {}, "HOST:PORT to serve /metrics"),
        (["--metrics-http", "127.0.0.1:0"], {}, "a port from 1 to 65535"),
        ([], {"DISPATCH_GATEWAY_METRICS_HTTP": "localhost"}, "gateway.metrics_http"),
    ],
)
def test_a_bad_metrics_address_is_a_clear_error(
    argv: list[str],
    env: dict[str, str],
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith("DISPATCH_"):
            monkeypatch.delenv(name)
    for name, v in env.items():
        monkeypatch.setenv(name, v)
    assert cli_main(["gateway", *argv]) == 2
    err = capsys.readouterr().err
    assert why in err, err
    assert "configuration error" in err


async def test_a_taken_metrics_port_is_a_clear_error(
    tmp_path: Path, mqtt_url: str, redis_url: str
) -> None:
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatch", "gateway", "--mqtt", mqtt_url, "--redis",
            redis_url, "--metrics-http", f"127.0.0.1:{port}",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        taken.close()
    assert proc.returncode == 1, out
    assert f"cannot listen on 127.0.0.1:{port}" in out.decode(), out
