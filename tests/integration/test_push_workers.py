"""Push workers (`dispatch pusher`, [push] separate): the engine only publishes its alerts;
pushers sharing them through the broker push each one, once, as the engine would have.

Real broker and Redis; the stand-in push service and browsers of test_push.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
import servers
from inprocess import engine_in_process
from test_push import NEARBY, XIAOYING, Browser, _until, push_service

from dispatch.cli import main as cli_main
from dispatch.config import Config, load_config
from dispatch.push_worker import PushWorker
from dispatch.wiring import run_pusher

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def pushers(config: Config, count: int) -> AsyncIterator[list[PushWorker]]:
    """``count`` push workers on the engine's config, connected, until the block ends."""
    workers = [PushWorker(config) for _ in range(count)]
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        for n, worker in enumerate(workers):
            tg.create_task(worker.run(stop), name=f"pusher-{n}")
        try:
            await _until(
                lambda: asyncio.gather(*(w.health() for w in workers)),
                lambda healths: all(ok for ok, _ in healths),
                "every pusher connected, with its keys",
            )
            yield workers
        finally:
            stop.set()


async def test_pushers_push_each_alert_once_and_the_engine_pushes_none(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    overrides: dict[str, Any] = {"push.allow_loopback": True, "push.separate": True}
    volunteers = [f"v-pw{i}" for i in range(4)]
    async with (
        push_service() as pushes,
        engine_in_process(mqtt_url, redis_url, topic_root, **overrides) as config,
        pushers(config, 2) as workers,
        servers.mqtt_client(mqtt_url) as phone,
    ):
        browsers = {vid: Browser(f"{pushes.base}/push/{vid}") for vid in volunteers[:3]}
        await phone.subscribe(f"{topic_root}/volunteers/+/alert", qos=1)
        for vid, browser in browsers.items():
            await phone.publish(
                f"{topic_root}/volunteers/{vid}/push",
                orjson.dumps(browser.subscription()),
                qos=1,
            )
        for i, vid in enumerate(volunteers):
            position = {"lat": NEARBY[0] + 0.0001 * i, "lon": NEARBY[1]}
            await phone.publish(
                f"{topic_root}/volunteers/{vid}/status",
                orjson.dumps({"status": "available", "skills": ["first_aid"], **position}),
                qos=1,
            )
        stored = aioredis.from_url(redis_url)
        for vid in browsers:
            key = f"{topic_root}:push:{vid}"
            await _until(lambda key=key: stored.hlen(key), lambda n: n == 1, "subscriptions")
        await stored.aclose()
        await asyncio.sleep(0.3)  # the statuses too
        await phone.publish(
            f"{topic_root}/incidents/report",
            orjson.dumps({"kind": "fire", "lat": XIAOYING[0], "lon": XIAOYING[1], "responders": 4}),
            qos=1,
        )
        alerts: dict[str, Any] = {}
        async with asyncio.timeout(10):
            async for message in phone.messages:
                alerts[str(message.topic).split("/")[-2]] = orjson.loads(message.payload)
                if len(alerts) == len(volunteers):
                    break
        subscribed = [vid for vid in alerts if vid in browsers]
        assert len(subscribed) == 3  # every volunteer was alerted: all four needed

        # One push per alert to a subscribed browser, not two: each alert reached one
        # pusher, and the engine pushed none itself.
        received = await pushes.wait(len(subscribed))
        await asyncio.sleep(0.5)
        assert sorted(r.path for r in pushes.received) == sorted(f"/push/{v}" for v in subscribed)
        assert sum(w.received for w in workers) == len(alerts)
        assert sum(w.unreadable for w in workers) == 0

        # Each push is the alert the engine published, encrypted for its browser.
        for push in received:
            vid = push.path.rsplit("/", 1)[-1]
            body = browsers[vid].decrypt(push.body)
            assert body["volunteer_id"] == vid
            for name, value in alerts[vid].items():
                assert body[name] == value, name
            assert body["reply_url"] == f"/api/alerts/{alerts[vid]['alert_id']}/reply"

        api = f"http://127.0.0.1:{config.http_port}"
        async with aiohttp.ClientSession() as http, http.get(f"{api}/metrics") as r:
            engine_metrics = await r.text()
        assert 'dispatch_push_total{outcome="sent"}' not in engine_metrics
        sent = [w.metrics.render().decode() for w in workers]
        assert sum(_sent(text) for text in sent) == len(subscribed)

        # The reply token a pusher's push carries answers the alert at the engine.
        vid = subscribed[0]
        token = browsers[vid].decrypt(next(p for p in received if p.path.endswith(f"/{vid}")).body)[
            "reply_token"
        ]
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{api}/api/alerts/{alerts[vid]['alert_id']}/reply",
                data=orjson.dumps({"volunteer_id": vid, "answer": "accept", "token": token}),
            ) as r,
        ):
            assert r.status == 202, await r.text()


def _pusher_config(mqtt_url: str, redis_url: str, topic_root: str, **push: Any) -> Config:
    """A pusher's config: the engine's servers and root, ``[push] separate``, and ``push``."""
    overrides = {f"push.{key}": value for key, value in push.items()}
    return load_config(
        overrides={
            "engine.mqtt": mqtt_url,
            "engine.redis": redis_url,
            "engine.topic_root": topic_root,
            "push.separate": True,
            **overrides,
        }
    )


def _value(read: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def value() -> Any:
        return read()

    return value


def _sent(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('dispatch_push_total{outcome="sent"}'):
            return float(line.split()[-1])
    return 0.0


async def test_a_pusher_leaves_what_is_not_an_alert_and_goes_on(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    """A forged or garbled alert (only the engine may publish there: a bug or a broker
    misconfigured) is logged and counted, never pushed, and the pusher keeps going."""
    config = _pusher_config(mqtt_url, redis_url, topic_root)
    async with pushers(config, 1) as (worker,), servers.mqtt_client(mqtt_url) as client:
        await client.publish(f"{topic_root}/volunteers/v1/alert", b"not json", qos=1)
        await client.publish(f"{topic_root}/volunteers/v1/alert", b'{"alert_id": 1}', qos=1)
        await _until(_value(lambda: worker.unreadable), lambda n: n == 2, "both refused")
        assert worker.received == 2
        assert worker.pusher.queue.qsize() == 0
        assert (await worker.health())[0]


@pytest.mark.parametrize(
    ("argv", "env", "why"),
    [
        ([], {"DISPATCH_PUSH_ENABLED": "false"}, "[push] enabled = false: nothing to push"),
        (["--metrics-http", "9111"], {}, "'push.metrics_http': got '9111'"),
        ([], {"DISPATCH_PUSH_METRICS_HTTP": "localhost"}, "push.metrics_http"),
    ],
)
def test_a_pusher_that_cannot_work_says_what_to_fix(
    argv: list[str],
    env: dict[str, str],
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith("DISPATCH_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli_main(["pusher", *argv]) == 2
    err = capsys.readouterr().err
    assert why in err, err


async def test_a_pusher_serves_its_health_and_metrics(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    port = servers.free_port()
    config = _pusher_config(mqtt_url, redis_url, topic_root, metrics_http=f"127.0.0.1:{port}")
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(run_pusher(config, stop), name="pusher")
        try:
            async with aiohttp.ClientSession() as http:

                async def health() -> tuple[int, Any]:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                            return r.status, await r.json()
                    return 0, None

                await _until(health, lambda answer: answer[0] == 200, "a healthy pusher")
                _, body = await health()
                assert body["broker"] is True
                assert body["keys"] is True
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
            assert "dispatch_push_total" in metrics
            assert "process_cpu_seconds_total" in metrics
        finally:
            stop.set()
