"""Web Push: each alert also goes to the volunteer's browsers, off the dispatch path.

The page registers its browser's push subscription on ``volunteers/{vid}/push`` (this
project's addition to the protocol, docs/protocol.md); the broker's ACL lets only that
volunteer publish there, so the subscription is theirs. Subscriptions are kept in Redis
(dispatch/store.py), a few per volunteer, and forgotten when the push service says the
browser is gone (404/410).

The engine hands every alert it published to `Pusher.alert`, which only puts it in a
bounded queue and returns: dispatch never waits for a push service. Workers (a few
tasks in the service's task group) take alerts from the queue, encrypt the alert for
each subscription (RFC 8291, by pywebpush and http_ece), sign a VAPID token (RFC 8292,
py-vapid) and post it with a timeout. A full queue drops the push (counted): the alert
went out over MQTT anyway.

The push carries the alert and a reply token, HMAC(secret, volunteer id, alert id), so
that the service worker, which cannot hold the MQTT connection, can answer the alert
over HTTP (``POST /api/alerts/{alert_id}/reply``, dispatch/push_routes.py). The secret
and the VAPID key are made at the first start and kept in Redis (or the key in a file,
``[push] vapid_key_file``), the same for every instance.

Errors: a bad subscription is a `BadMessage` (reported on ``rejected`` like any other);
a push service that fails or is slow is counted and logged, never raised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher

from dispatch.codec import Codec, format_time
from dispatch.config import Config
from dispatch.effects import SendAlert
from dispatch.errors import BackendUnavailable, BadMessage, ConfigError, Reason
from dispatch.metrics import Metrics, PushMetrics
from dispatch.model import PushSubscription
from dispatch.store import Store

__all__ = ["PushKeys", "Pusher", "make_keys"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# A push message's plaintext must stay well under the 4 KB push services take (RFC 8030
# 7.2 asks them to take at least 4096 bytes, encryption adds up to 103): the
# description is cut to fit.
_PAYLOAD_MAX = 3000
_DESCRIPTION_CUT = 600
# A VAPID token is valid 12 h (RFC 8292 allows at most 24 h) and signed anew when less
# than 11 h are left; only a few push services exist, the cache is bounded anyway.
_VAPID_VALID_S = 12 * 3600
_VAPID_RENEW_S = 11 * 3600
_VAPID_CACHE_MAX = 64
# Alerts whose subscriptions one Redis round trip looks up (a wave is 1-10 alerts).
_LOOKUPS_PER_TRIP = 32
_GONE = (404, 410)  # the subscription has expired or was withdrawn: forget it


class PushKeys:
    """The VAPID signing key and the secret of the reply tokens."""

    def __init__(self, vapid_pem: bytes, secret: bytes) -> None:
        allowed = "a PEM file with an EC private key on P-256 (openssl ecparam -name prime256v1)"
        try:
            key = serialization.load_pem_private_key(vapid_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("push.vapid_key_file", f"<unreadable key: {exc}>", allowed) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError("push.vapid_key_file", f"<{type(key).__name__}>", allowed)
        self.vapid = Vapid02(key)
        self.secret = secret
        raw = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        # What the page gives PushManager.subscribe as applicationServerKey.
        self.public_key = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def token(self, volunteer_id: str, alert_id: str) -> str:
        """The reply token of one alert to one volunteer (carried in its push)."""
        mac = hmac.new(self.secret, f"{volunteer_id}\n{alert_id}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:24]).decode()

    def check(self, volunteer_id: str, alert_id: str, token: str) -> bool:
        return hmac.compare_digest(self.token(volunteer_id, alert_id).encode(), token.encode())


def make_keys() -> bytes:
    """New keys as stored in Redis (JSON): a P-256 private key (PEM) and a secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return orjson.dumps({"vapid_pem": pem.decode(), "secret": secrets.token_hex(32)})


class Pusher:
    """Subscriptions in, alerts out to push services; see the module's docstring."""

    def __init__(
        self,
        config: Config,
        store: Store,
        codec: Codec,
        metrics: Metrics | PushMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.codec = codec
        self.metrics = metrics
        self.clock = clock
        self.keys: PushKeys | None = None  # loaded by `run`
        self.queue: asyncio.Queue[SendAlert] = asyncio.Queue(maxsize=config.push_queue)
        self._vapid_file = config.push_vapid_key_file
        # audience (push service origin) -> (expiry, VAPID headers); see vapid_headers
        self._signed: dict[str, tuple[float, dict[str, str]]] = {}
        # Who may have a subscription, where every subscription passes through this
        # pusher (`run` with ``track``): those kept when it started, and those it kept
        # since. An alert for anyone else is not looked up (a round trip a wave, a point
        # of the engine's CPU at the design load). None: every alert is looked up.
        self._kept_at_start: set[str] | None = None
        self._kept_since: set[str] = set()

    # ---------------------------------------------------------------- subscriptions

    async def subscribe(self, topic: str, payload: bytes) -> PushSubscription:
        """Keep (or forget) the subscription published on ``topic``; raises BadMessage
        for a bad one, BackendUnavailable when Redis is away."""
        sub = self.codec.decode_push(topic, payload)
        self._check_endpoint(topic, sub.endpoint)
        vid = sub.volunteer_id
        if sub.remove:
            await self.store.drop_push_subscription(vid, sub.endpoint)
            log.info("volunteer=%s push subscription removed", vid)
            return sub
        record = orjson.dumps(
            {
                "endpoint": sub.endpoint,
                "keys": {"p256dh": _b64(sub.p256dh), "auth": _b64(sub.auth)},
            }
        )
        replaced = await self.store.add_push_subscription(
            vid, sub.endpoint, record, self.clock(), self.config.push_max_per_volunteer
        )
        self._kept_since.add(vid)
        self.metrics.push_subscriptions.labels(outcome="kept").inc()
        log.info("volunteer=%s push subscription kept (replaced %d)", vid, max(replaced, 0))
        return sub

    def _check_endpoint(self, topic: str, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        host = (parts.hostname or "").rstrip(".")
        if self.config.push_allow_loopback and _is_loopback(host):
            return  # the tests' stand-in push service, http:// or https://
        if parts.scheme != "https":
            raise BadMessage(
                topic,
                "field 'endpoint' must be an https:// URL (a browser's push service); "
                "http:// is taken only on the loopback with [push] allow_loopback, for tests",
                Reason.OUT_OF_RANGE,
            )
        services = self.config.push_services
        if _is_address(host) or (
            services and not any(host == s or host.endswith("." + s) for s in services)
        ):
            raise BadMessage(
                topic,
                f"field 'endpoint' must be on a browser's push service "
                f"({', '.join(services) or 'a host name, not an address'}), got host "
                f"{host[:80]!r}; another service must be added to [push] services",
                Reason.OUT_OF_RANGE,
            )

    # ---------------------------------------------------------------- alerts

    def alert(self, alert: SendAlert) -> None:
        """Queue an alert to be pushed; never waits (called on the dispatch path)."""
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.metrics.push_sent.labels(outcome="dropped").inc()
            log.warning(
                "incident=%s volunteer=%s push dropped: the push queue is full (%d)",
                alert.incident_id,
                alert.volunteer_id,
                self.queue.maxsize,
            )

    def payload(self, alert: SendAlert, keys: PushKeys) -> bytes:
        """The push's plaintext: the alert as on the wire, plus how to answer it."""
        description = alert.description
        if len(description) > _DESCRIPTION_CUT:
            description = description[: _DESCRIPTION_CUT - 1] + "…"
        body = {
            "type": "alert",
            "volunteer_id": alert.volunteer_id,
            "alert_id": alert.alert_id,
            "incident_id": alert.incident_id,
            "kind": alert.kind,
            "priority": alert.priority,
            "lat": alert.lat,
            "lon": alert.lon,
            "address": alert.address,
            "distance_m": round(alert.distance_m, 1),
            "eta_s": round(alert.eta_s, 1),
            "expires_at": format_time(alert.expires_at),
            "description": description,
            "wave": alert.wave,
            "skills": list(alert.skills),
            "reply_url": f"/api/alerts/{alert.alert_id}/reply",
            "reply_token": keys.token(alert.volunteer_id, alert.alert_id),
        }
        data = orjson.dumps(body)
        if len(data) > _PAYLOAD_MAX:  # a long address in many-byte characters
            body["description"] = ""
            body["address"] = alert.address[:100]
            data = orjson.dumps(body)
        return data

    # ---------------------------------------------------------------- running

    async def load_keys(self) -> PushKeys:
        """The keys from ``[push] vapid_key_file`` or Redis (made there at first start)."""
        stored = orjson.loads(await self.store.push_keys(make_keys()))
        pem = stored["vapid_pem"].encode()
        if self._vapid_file:
            try:
                pem = await asyncio.to_thread(Path(self._vapid_file).read_bytes)
            except OSError as exc:
                raise ConfigError(
                    "push.vapid_key_file", self._vapid_file, f"a readable file ({exc})"
                ) from exc
        return PushKeys(pem, bytes.fromhex(stored["secret"]))

    async def run(self, *, push: bool = True, track: bool = False) -> None:
        """Load the keys, then push queued alerts until cancelled; with ``push`` false only
        load the keys (the reply tokens need them) and return: pushers push
        (``[push] separate``). ``track``: every subscription passes through `subscribe`
        (a single engine's pusher), so only the volunteers kept in Redis at the start
        and those kept since are looked up."""
        if self.keys is None:
            self.keys = await _until_read(self.load_keys, "push keys")
        if not push:
            log.info(
                "web push by `dispatch pusher` processes (VAPID public key %s)",
                self.keys.public_key,
            )
            return
        log.info("web push on (VAPID public key %s)", self.keys.public_key)
        if track and self._kept_at_start is None:
            # Read once; alerts queue meanwhile.
            self._kept_at_start = await _until_read(self.store.push_subscribers, "push subscribers")
        timeout = aiohttp.ClientTimeout(total=self.config.push_timeout_s)
        connector = aiohttp.TCPConnector(limit=self.config.push_workers * 2)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            asyncio.TaskGroup() as tg,
        ):
            for n in range(self.config.push_workers):
                tg.create_task(self._work(session, self.keys), name=f"push-{n}")

    def _may_have_subscription(self, volunteer_id: str) -> bool:
        start = self._kept_at_start
        return start is None or volunteer_id in start or volunteer_id in self._kept_since

    async def _work(self, session: aiohttp.ClientSession, keys: PushKeys) -> None:
        while True:
            alerts = [await self.queue.get()]
            # The alerts of a wave arrive together: their subscriptions are looked up in
            # one round trip (one per alert was most of Redis's traffic at 100 reports/s).
            while len(alerts) < _LOOKUPS_PER_TRIP and not self.queue.empty():
                alerts.append(self.queue.get_nowait())
            try:
                await self.deliver_all(session, keys, alerts)
            except Exception:  # a bug must not stop pushing for good: log it loudly
                log.exception(
                    "push failed for incidents %s",
                    ", ".join(sorted({a.incident_id for a in alerts})),
                )
            finally:
                for _ in alerts:
                    self.queue.task_done()

    async def deliver_all(
        self, session: aiohttp.ClientSession, keys: PushKeys, alerts: Sequence[SendAlert]
    ) -> None:
        """Push each alert to each of its volunteer's subscriptions, in order."""
        now = self.clock()
        fresh = []
        for alert in alerts:
            if alert.expires_at <= now:  # waited too long in the queue: a stale call must not ring
                self.metrics.push_sent.labels(outcome="expired").inc()
            elif self._may_have_subscription(alert.volunteer_id):
                fresh.append(alert)
        if not fresh:
            return
        try:
            found = await self.store.push_subscriptions_of([a.volunteer_id for a in fresh])
        except BackendUnavailable as exc:
            self.metrics.push_sent.labels(outcome="failed").inc(len(fresh))
            for alert in fresh:
                log.warning(
                    "incident=%s volunteer=%s push skipped: %s",
                    alert.incident_id,
                    alert.volunteer_id,
                    exc,
                )
            return
        for alert, records in zip(fresh, found, strict=True):
            if not records:
                continue
            if alert.expires_at <= self.clock():  # the sends before it took that long
                self.metrics.push_sent.labels(outcome="expired").inc()
                continue
            data = self.payload(alert, keys)
            for raw in records:
                await self._send(session, keys, alert, orjson.loads(raw), data)

    def vapid_headers(self, keys: PushKeys, audience: str) -> dict[str, str]:
        """The VAPID header for one push service, signed once and reused for an hour: a
        signature is a third of a push's work on the loop (benchmarks/bench_push.py)."""
        now = self.clock()
        cached = self._signed.get(audience)
        if cached is None or cached[0] - now < _VAPID_RENEW_S:
            exp = int(now) + _VAPID_VALID_S
            claims = {"aud": audience, "exp": exp, "sub": self.config.push_contact}
            cached = (float(exp), dict(keys.vapid.sign(claims)))
            if len(self._signed) >= _VAPID_CACHE_MAX:
                self._signed.clear()
            self._signed[audience] = cached
        return dict(cached[1])

    async def _send(
        self,
        session: aiohttp.ClientSession,
        keys: PushKeys,
        alert: SendAlert,
        sub: dict[str, Any],
        data: bytes,
    ) -> None:
        endpoint = sub["endpoint"]
        parts = urlsplit(endpoint)
        headers = self.vapid_headers(keys, f"{parts.scheme}://{parts.netloc}")
        # The push service keeps it only as long as the alert stands; "high" wakes a
        # sleeping phone (RFC 8030 5.3).
        headers["Urgency"] = "high"
        ttl = max(1, int(alert.expires_at - self.clock()))
        started = time.perf_counter()
        status: int | None = None
        try:
            async with asyncio.timeout(self.config.push_timeout_s):
                response = await WebPusher(sub, aiohttp_session=session).send_async(
                    data, headers, ttl=ttl, timeout=session.timeout
                )
            status = int(response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.metrics.push_sent.labels(outcome="failed").inc()
            log.warning(
                "incident=%s volunteer=%s push to %s failed: %s",
                alert.incident_id,
                alert.volunteer_id,
                parts.netloc,
                type(exc).__name__,
            )
            return
        finally:
            self.metrics.push_latency.observe(time.perf_counter() - started)
        if status < 300:
            self.metrics.push_sent.labels(outcome="sent").inc()
            return
        if status in _GONE:
            self.metrics.push_sent.labels(outcome="gone").inc()
            with contextlib.suppress(BackendUnavailable):
                await self.store.drop_push_subscription(alert.volunteer_id, endpoint)
            log.info(
                "volunteer=%s push subscription at %s is gone (%d): forgotten",
                alert.volunteer_id,
                parts.netloc,
                status,
            )
            return
        self.metrics.push_sent.labels(outcome="failed").inc()
        log.warning(
            "incident=%s volunteer=%s push to %s refused: HTTP %d",
            alert.incident_id,
            alert.volunteer_id,
            parts.netloc,
            status,
        )


async def _until_read(read: Callable[[], Awaitable[_T]], what: str) -> _T:
    """``read()``, retried with a capped back-off while Redis is away."""
    delay = 0.2
    while True:
        try:
            return await read()
        except BackendUnavailable as exc:
            log.warning("%s not readable from Redis yet (%s); retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
