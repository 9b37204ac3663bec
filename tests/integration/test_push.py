"""Web Push of alerts (issue 14, "push to a closed page"), with no internet.

A stand-in push service (aiohttp on 127.0.0.1, in this test) receives what the engine
posts for a browser's subscription; the test decrypts it with that subscription's
private keys (http_ece, RFC 8291) and checks the alert and the VAPID authorization
(RFC 8292). The reply token the push carries then answers the alert over HTTP, and the
engine sends the volunteer (``go``) exactly as for an answer over MQTT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import http_ece
import orjson
import pytest
import redis.asyncio as aioredis
import servers
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from inprocess import engine_in_process
from py_vapid import Vapid02
from servers import free_port

from dispatch.store import PUSH_KEEP_S, Store

pytestmark = pytest.mark.integration

XIAOYING = (30.2591, 120.1698)
NEARBY = (30.2600, 120.1705)  # about 120 m away


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Browser:
    """One browser's push subscription: the keys a real browser would keep to itself."""

    endpoint: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self) -> dict[str, Any]:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": _b64(public), "auth": _b64(self.auth)},
        }

    def decrypt(self, body: bytes) -> Any:
        return orjson.loads(
            http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm")
        )


@dataclass
class Received:
    path: str
    headers: Any  # case-insensitive, as HTTP
    body: bytes


class PushService:
    """The stand-in: records every push; answers 201, or what ``answers`` says per path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self.answers: dict[str, int] = {}
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(request.path, request.headers.copy(), body))
        self.arrived.set()
        return web.Response(status=self.answers.get(request.path, 201))

    async def wait(self, count: int, within: float = 10.0) -> list[Received]:
        async with asyncio.timeout(within):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received


@contextlib.asynccontextmanager
async def push_service() -> AsyncIterator[PushService]:
    service = PushService()
    app = web.Application()
    app.router.add_post("/push/{name}", service.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", service.port).start()
    try:
        yield service
    finally:
        await runner.cleanup()


async def _wait_json(client: Any, topic: str, within: float = 10.0) -> Any:
    async with asyncio.timeout(within):
        async for message in client.messages:
            if str(message.topic) == topic:
                return orjson.loads(message.payload)
    raise AssertionError(f"nothing on {topic}")  # pragma: no cover


async def _until(read: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], what: str) -> None:
    for _ in range(100):
        if ok(await read()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


async def _post(url: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, data=orjson.dumps(body)) as r:
        return r.status, await r.json()


async def test_an_alert_is_pushed_encrypted_and_its_token_answers_it(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    vid = "v-push"
    async with (
        push_service() as pushes,
        engine_in_process(mqtt_url, redis_url, topic_root, **{"push.allow_loopback": True}) as c,
        servers.mqtt_client(mqtt_url) as phone,
    ):
        api = f"http://127.0.0.1:{c.http_port}"
        async with aiohttp.ClientSession() as http, http.get(f"{api}/api/push") as r:
            info = await r.json()
        assert info["enabled"] is True
        # The key may still be loading right after ready: ask until it is there.
        for _ in range(50):
            if info["public_key"]:
                break
            await asyncio.sleep(0.1)
            async with aiohttp.ClientSession() as http, http.get(f"{api}/api/push") as r:
                info = await r.json()
        public_key = info["public_key"]
        assert len(base64.urlsafe_b64decode(public_key + "==")) == 65

        browser = Browser(f"{pushes.base}/push/phone")
        gone = Browser(f"{pushes.base}/push/gone")
        pushes.answers["/push/gone"] = 410  # a browser that withdrew its subscription
        await phone.subscribe(f"{topic_root}/volunteers/{vid}/#", qos=1)
        for b in (browser, gone):
            await phone.publish(
                f"{topic_root}/volunteers/{vid}/push", orjson.dumps(b.subscription()), qos=1
            )
        await phone.publish(
            f"{topic_root}/volunteers/{vid}/status",
            orjson.dumps({"status": "available", "lat": NEARBY[0], "lon": NEARBY[1]}),
            qos=1,
        )
        stored = aioredis.from_url(redis_url)
        key = f"{topic_root}:push:{vid}"
        await _until(lambda: stored.hlen(key), lambda n: n == 2, "both subscriptions stored")
        await asyncio.sleep(0.3)  # the status too
        await phone.publish(
            f"{topic_root}/incidents/report",
            orjson.dumps({"kind": "fire", "lat": XIAOYING[0], "lon": XIAOYING[1]}),
            qos=1,
        )
        alert = await _wait_json(phone, f"{topic_root}/volunteers/{vid}/alert")
        received = await pushes.wait(2)
        by_path = {r.path: r for r in received}
        push = by_path["/push/phone"]

        # Encrypted for this browser alone (RFC 8291 aes128gcm), and it is the alert.
        assert push.headers["Content-Encoding"] == "aes128gcm"
        assert orjson.dumps(alert) not in push.body
        body = browser.decrypt(push.body)
        assert body["type"] == "alert"
        assert body["volunteer_id"] == vid
        for name, value in alert.items():
            assert body[name] == value, name
        assert body["reply_url"] == f"/api/alerts/{alert['alert_id']}/reply"
        with pytest.raises(Exception):  # noqa: B017, PT011 - another browser's keys fail
            gone.decrypt(push.body)

        # VAPID: signed by the key the page subscribed with, for this push service.
        auth = push.headers["Authorization"]
        assert auth.startswith("vapid t=")
        assert Vapid02.verify(auth)
        params = dict(p.split("=", 1) for p in auth.split(" ", 1)[1].split(","))
        assert params["k"] == public_key
        claims = orjson.loads(base64.urlsafe_b64decode(params["t"].split(".")[1] + "=="))
        assert claims["aud"] == pushes.base
        assert claims["sub"].startswith("mailto:")
        assert 0 < int(push.headers["TTL"]) <= 120
        assert push.headers["Urgency"] == "high"

        # The push service said 410 for the other browser: it is forgotten.
        await _until(lambda: stored.hexists(key, gone.endpoint), lambda x: not x, "410 forgets")
        assert await stored.hexists(key, browser.endpoint)

        # A wrong token is refused; the right one answers, as if over MQTT.
        url = f"{api}{body['reply_url']}"
        status, error = await _post(
            url, {"volunteer_id": vid, "answer": "accept", "token": "x" * 32}
        )
        assert (status, error["code"]) == (403, "token_invalid")
        status, error = await _post(
            url, {"volunteer_id": "someone-else", "answer": "accept", "token": body["reply_token"]}
        )
        assert status == 403
        status, error = await _post(url, {"volunteer_id": vid, "answer": "maybe", "token": "t"})
        assert status == 400
        assert "answer" in error["error"]
        status, answered = await _post(
            url, {"volunteer_id": vid, "answer": "accept", "token": body["reply_token"]}
        )
        assert status == 202, answered
        assignment = await _wait_json(phone, f"{topic_root}/volunteers/{vid}/assignment")
        assert assignment["action"] == "go"
        assert assignment["alert_id"] == alert["alert_id"]

        async with aiohttp.ClientSession() as http, http.get(f"{api}/metrics") as r:
            metrics = await r.text()
        assert 'dispatch_push_total{outcome="sent"} 1.0' in metrics
        assert 'dispatch_push_total{outcome="gone"} 1.0' in metrics
        await stored.aclose()


@pytest.mark.parametrize(
    ("subscription", "reason"),
    [
        ({"endpoint": "http://push.example.com/x", "keys": None}, "keys"),
        ({"endpoint": "ftp://push.example.com/x"}, "endpoint"),
        ({"endpoint": "https://push.example.com/" + "x" * 1100}, "endpoint"),
        (
            {"endpoint": "https://push.example.com/x", "keys": {"p256dh": "AAAA", "auth": "x"}},
            "p256dh",
        ),
    ],
)
async def test_a_bad_subscription_is_refused_with_a_reason(
    mqtt_url: str, redis_url: str, topic_root: str, subscription: Any, reason: str
) -> None:
    vid = "v-bad-push"
    async with (
        engine_in_process(mqtt_url, redis_url, topic_root) as _,
        servers.mqtt_client(mqtt_url) as phone,
    ):
        await phone.subscribe(f"{topic_root}/rejected", qos=1)
        await phone.publish(
            f"{topic_root}/volunteers/{vid}/push", orjson.dumps(subscription), qos=1
        )
        rejected = await _wait_json(phone, f"{topic_root}/rejected")
        assert rejected["topic"] == f"{topic_root}/volunteers/{vid}/push"
        assert reason in rejected["reason"]
        stored = aioredis.from_url(redis_url)
        assert await stored.hlen(f"{topic_root}:push:{vid}") == 0
        await stored.aclose()


async def test_an_http_endpoint_is_refused_unless_on_the_loopback_for_tests(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    browser = Browser("http://127.0.0.1:9/push/x")
    async with (
        engine_in_process(mqtt_url, redis_url, topic_root) as _,
        servers.mqtt_client(mqtt_url) as phone,
    ):
        await phone.subscribe(f"{topic_root}/rejected", qos=1)
        await phone.publish(
            f"{topic_root}/volunteers/v1/push", orjson.dumps(browser.subscription()), qos=1
        )
        rejected = await _wait_json(phone, f"{topic_root}/rejected")
        assert "https://" in rejected["reason"]


async def test_a_volunteer_keeps_only_the_newest_subscriptions(redis_url: str) -> None:
    store = Store.from_url(redis_url, prefix="push-bound:")
    try:
        for n in range(7):
            await store.add_push_subscription("v1", f"https://p.example/{n}", b"{}", n, 5)
        kept = await store.redis.zrange("push-bound:pushat:v1", 0, -1)
        assert [k.decode() for k in kept] == [f"https://p.example/{n}" for n in range(2, 7)]
        assert len((await store.push_subscriptions_of(["v1"]))[0]) == 5
        assert await store.drop_push_subscription("v1", "https://p.example/6")
        assert not await store.drop_push_subscription("v1", "https://p.example/6")
        assert len((await store.push_subscriptions_of(["v1"]))[0]) == 4
        assert 0 < await store.redis.ttl("push-bound:push:v1") <= PUSH_KEEP_S
    finally:
        await store.redis.delete("push-bound:push:v1", "push-bound:pushat:v1")
        await store.close()


async def test_a_hung_push_service_never_holds_up_dispatch(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    """The push service never answers (until the push's 6 s timeout): alerts still go out
    over MQTT at once, for a second incident too, while the one push worker is stuck."""
    hung = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await hung.wait()
        return web.Response(status=201)

    port = free_port()
    app = web.Application()
    app.router.add_post("/push/{name}", never)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    overrides = {"push.allow_loopback": True, "push.timeout_s": 6.0, "push.workers": 1}
    try:
        async with (
            engine_in_process(mqtt_url, redis_url, topic_root, **overrides) as c,
            servers.mqtt_client(mqtt_url) as phone,
        ):
            await phone.subscribe(f"{topic_root}/volunteers/+/alert", qos=1)

            async def volunteer(vid: str) -> None:
                browser = Browser(f"http://127.0.0.1:{port}/push/{vid}")
                await phone.publish(
                    f"{topic_root}/volunteers/{vid}/push",
                    orjson.dumps(browser.subscription()),
                    qos=1,
                )
                await phone.publish(
                    f"{topic_root}/volunteers/{vid}/status",
                    orjson.dumps({"status": "available", "lat": NEARBY[0], "lon": NEARBY[1]}),
                    qos=1,
                )

            async def report(iid: str) -> str:
                await phone.publish(
                    f"{topic_root}/incidents/report",
                    orjson.dumps(
                        {"id": iid, "kind": "fire", "lat": XIAOYING[0], "lon": XIAOYING[1]}
                    ),
                    qos=1,
                )
                # Well within the push's timeout: a dispatch that waited would miss it.
                async with asyncio.timeout(4):
                    async for message in phone.messages:
                        return str(message.topic).split("/")[-2]
                raise AssertionError("no alert")  # pragma: no cover

            await volunteer("v-a")
            await asyncio.sleep(0.3)
            assert await report("hung-0") == "v-a"  # its push now hangs the only worker
            await volunteer("v-b")
            await asyncio.sleep(0.3)
            assert await report("hung-1") == "v-b"
            api = f"http://127.0.0.1:{c.http_port}/metrics"

            async def metrics() -> str:
                async with aiohttp.ClientSession() as http, http.get(api) as r:
                    return await r.text()

            text = await metrics()
            assert 'dispatch_push_total{outcome="sent"}' not in text
            for _ in range(150):  # both pushes time out, one after the other
                if 'dispatch_push_total{outcome="failed"} 2.0' in text:
                    break
                await asyncio.sleep(0.1)
                text = await metrics()
            assert 'dispatch_push_total{outcome="failed"} 2.0' in text
    finally:
        hung.set()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("endpoint", "kept"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc:def", True),
        ("https://updates.push.services.mozilla.com/wpush/v2/gAAA", True),
        ("https://web.push.apple.com/QGx", True),
        ("https://push.example.com/x", False),  # not a push service
        ("https://fcm.googleapis.com.evil.example/x", False),
        ("https://10.0.0.5/x", False),  # the operator's own network
        ("https://[::1]:8080/x", False),
        ("https://127.0.0.1/x", False),  # loopback only with allow_loopback
    ],
)
async def test_only_push_services_are_taken_as_endpoints(
    mqtt_url: str, redis_url: str, topic_root: str, endpoint: str, kept: bool
) -> None:
    vid = "v-where"
    async with (
        engine_in_process(mqtt_url, redis_url, topic_root) as _,
        servers.mqtt_client(mqtt_url) as phone,
    ):
        await phone.subscribe(f"{topic_root}/rejected", qos=1)
        await phone.publish(
            f"{topic_root}/volunteers/{vid}/push",
            orjson.dumps(Browser(endpoint).subscription()),
            qos=1,
        )
        stored = aioredis.from_url(redis_url)
        try:
            if kept:
                await _until(lambda: stored.hlen(f"{topic_root}:push:{vid}"), bool, "kept")
            else:
                rejected = await _wait_json(phone, f"{topic_root}/rejected")
                assert "endpoint" in rejected["reason"]
                assert await stored.hlen(f"{topic_root}:push:{vid}") == 0
        finally:
            await stored.aclose()


async def test_a_wave_s_subscriptions_are_looked_up_together_and_each_pushed(
    redis_url: str,
) -> None:
    """Alerts queued together (a wave) are looked up in one round trip: each subscribed
    volunteer gets theirs, one without a subscription gets nothing, a stale one none."""
    from dispatch.codec import Codec
    from dispatch.config import load_config
    from dispatch.effects import SendAlert
    from dispatch.metrics import Metrics
    from dispatch.push import Pusher

    prefix = f"push-wave-{os.getpid()}:"
    store = Store.from_url(redis_url, prefix=prefix)
    config = load_config(overrides={"push.allow_loopback": True})
    metrics = Metrics()
    pusher = Pusher(config, store, Codec(), metrics)
    now = pusher.clock()

    def alert(vid: str, expires_in: float) -> SendAlert:
        return SendAlert(
            "inc-w", vid, f"a-{vid}", "fire", 1, *XIAOYING, "", 100.0, 60.0,
            now + expires_in, "", 1, (), 60,
        )  # fmt: skip

    async with push_service() as pushes:
        browsers = {vid: Browser(f"{pushes.base}/push/{vid}") for vid in ("va", "vc", "vd")}
        for vid, browser in browsers.items():
            record = orjson.dumps(browser.subscription())
            await store.add_push_subscription(vid, browser.endpoint, record, now, 5)
        lookups = []
        looked_up = store.push_subscriptions_of

        async def counted(ids: Any) -> Any:
            lookups.append(list(ids))
            return await looked_up(ids)

        store.push_subscriptions_of = counted  # type: ignore[method-assign]
        # Queued before the workers start: they find the whole wave waiting.
        for vid, expires_in in (("va", 60), ("vb", 60), ("vc", 60), ("vd", -1)):
            pusher.alert(alert(vid, expires_in))
        worker = asyncio.create_task(pusher.run())
        try:
            received = await pushes.wait(2)
            await asyncio.wait_for(pusher.queue.join(), 10)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        assert sorted(r.path for r in received) == ["/push/va", "/push/vc"]
        for r in received:
            vid = r.path.rsplit("/", 1)[1]
            assert browsers[vid].decrypt(r.body)["alert_id"] == f"a-{vid}"
        # One trip for the wave (a worker takes all it finds); the stale one is not looked up.
        assert sorted(vid for trip in lookups for vid in trip) == ["va", "vb", "vc"]
        assert len(lookups) == 1, lookups
        assert metrics.push_sent.labels(outcome="expired")._value.get() == 1
    for vid in browsers:
        await store.redis.delete(f"{prefix}push:{vid}", f"{prefix}pushat:{vid}")
    await store.close()


async def test_a_single_engine_s_pusher_looks_up_only_volunteers_with_a_subscription(
    redis_url: str,
) -> None:
    """Every subscription passes through a single engine's pusher (``track``): it reads
    who had one at its start, adds whoever subscribes since, and makes no round trip for
    a wave of volunteers without one."""
    from dispatch.codec import Codec
    from dispatch.config import load_config
    from dispatch.effects import SendAlert
    from dispatch.metrics import Metrics
    from dispatch.push import Pusher

    prefix = f"push-track-{os.getpid()}:"
    store = Store.from_url(redis_url, prefix=prefix)
    config = load_config(overrides={"push.allow_loopback": True})
    pusher = Pusher(config, store, Codec(), Metrics())
    now = pusher.clock()

    def alert(vid: str) -> SendAlert:
        return SendAlert(
            "inc-t", vid, f"a-{vid}", "fire", 1, *XIAOYING, "", 100.0, 60.0,
            now + 60, "", 1, (), 60,
        )  # fmt: skip

    async with push_service() as pushes:
        before = Browser(f"{pushes.base}/push/va")  # kept before the pusher started
        await store.add_push_subscription(
            "va", before.endpoint, orjson.dumps(before.subscription()), now, 5
        )
        lookups: list[list[str]] = []
        looked_up = store.push_subscriptions_of

        async def counted(ids: Any) -> Any:
            lookups.append(list(ids))
            return await looked_up(ids)

        store.push_subscriptions_of = counted  # type: ignore[method-assign]
        worker = asyncio.create_task(pusher.run(track=True))
        try:

            async def kept_at_start() -> Any:
                return pusher._kept_at_start

            await _until(kept_at_start, lambda kept: kept is not None, "the start's subscribers")
            since = Browser(f"{pushes.base}/push/vb")  # subscribes through the pusher
            payload = orjson.dumps(since.subscription())
            await pusher.subscribe("dispatch/volunteers/vb/push", payload)
            for vid in ("va", "vb", "vc"):
                pusher.alert(alert(vid))
            received = await pushes.wait(2)
            await asyncio.wait_for(pusher.queue.join(), 10)
            assert sorted(r.path for r in received) == ["/push/va", "/push/vb"]
            assert sorted(vid for trip in lookups for vid in trip) == ["va", "vb"]
            lookups.clear()
            for vid in ("vc", "vd"):  # nobody subscribed: no round trip at all
                pusher.alert(alert(vid))
            await asyncio.wait_for(pusher.queue.join(), 10)
            assert lookups == []
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    for vid in ("va", "vb"):
        await store.redis.delete(f"{prefix}push:{vid}", f"{prefix}pushat:{vid}")
    await store.close()
