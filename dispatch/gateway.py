"""A location gateway: takes the volunteers' locations off the engine's core.

``dispatch gateway`` (docs/deployment.md, "Location gateways"). N of them share the
location topic through a shared subscription (``$share/<group>/<root>/volunteers/+/
location``: the broker hands each location to one of them). Each location is validated
with the engine's own codec; a bad one is answered on ``<root>/rejected`` with the very
payload the engine would send. The newest position of each volunteer is kept, and every
``[gateway] flush_s`` (or as soon as ``max_moves`` volunteers moved) the gateway writes
them to Redis (`Store.save_positions`: the keys and format the engine writes, so a
restarted engine reads them) and then publishes them to the engine as one batch of
moves on ``<root>/internal/moves`` (QoS 1; the format is in dispatch/moves.py).

The gateway connects with MQTT 3.1.1, as the engine's inbound connection does: paho
builds an MQTT 5 properties object for every message received under MQTT 5 (about
20 µs, as much as the rest of a location's handling). Mosquitto accepts ``$share/``
filters from 3.1.1 clients.

While Redis is down, batches still reach the engine (its index stays current) and the
positions are kept, newest first, and written once Redis answers. A gateway that dies
loses what it held (at most one ``flush_s`` of QoS 0 locations); the broker gives its
share to the others.

Its figures (`GatewayMetrics`) and `health` are served on ``[gateway] metrics_http``
(``--metrics-http``) as /metrics and /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from dispatch.bus import Bus, cancel_all
from dispatch.codec import Codec
from dispatch.config import Config
from dispatch.effects import SavePosition
from dispatch.engine import mask_numbers
from dispatch.errors import BackendUnavailable, BadMessage
from dispatch.metrics import GatewayMetrics
from dispatch.model import LocationUpdate
from dispatch.moves import Move, encode_moves, split
from dispatch.service import moves_topic, retained_error
from dispatch.store import Store
from dispatch.wire import Publish
from geo.area import ServiceArea

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

_STATS_S = 60.0  # how often a gateway logs what it did
_PING_S = 1.0  # /healthz waits this long for Redis before saying it does not answer


class Gateway:
    """One location gateway: a shared subscription in, Redis and batches of moves out."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        area: ServiceArea | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        area = area or ServiceArea.from_geojson(
            config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
        )
        # The engine's codec, configured as the engine's: the same checks, the same
        # rejections.
        self.codec = Codec(
            root=config.topic_root,
            max_payload_bytes=config.max_payload_bytes,
            in_area=area.contains,
            area_name=area.name,
            future_tolerance_s=config.future_tolerance_s,
        )
        self.store = store if store is not None else Store.from_config(config)
        self.topic = moves_topic(self.codec)
        self.filter = (
            f"$share/{config.gateway_group}/{self.codec.topic('volunteers', '+', 'location')}"
        )
        instance = config.instance or f"{random.getrandbits(32):08x}"
        self.bus = Bus(
            config.mqtt_url,
            client_id=f"dispatch-gateway-{config.topic_root}-{instance}"[:64],
            subscriptions=[(self.filter, 0)],
            protocol=4,
            keepalive=config.mqtt_keepalive_s,
            on_retained=self.on_retained,
        )
        self.max_moves = config.gateway_max_moves
        self.flush_s = config.gateway_flush_s
        self._pending: dict[str, Move] = {}  # newest move per volunteer, since the last batch
        self._unsaved: dict[str, Move] = {}  # moves sent while Redis was down
        self._full = asyncio.Event()  # max_moves volunteers waiting: send now
        # What it did, for the log and the tests.
        self.received = 0
        self.rejected = 0
        self.batches = 0
        self.moves = 0
        self.metrics = metrics or GatewayMetrics()
        self._watch(self.metrics)

    def _watch(self, metrics: GatewayMetrics) -> None:
        """The counts kept per location, read by the metrics when scraped."""
        metrics.count(
            "dispatch_gateway_locations_received",
            "Locations received from volunteers (accepted or rejected)",
            lambda: self.received,
        )
        metrics.count(
            "dispatch_gateway_locations_shed",
            "Locations dropped unread because more than 5,000 were waiting (the gateway "
            "was behind; newer ones from the same volunteers follow)",
            lambda: self.bus.shed,
        )
        metrics.count(
            "dispatch_gateway_moves_published",
            "Moves (one volunteer's newest position each) published to the engine",
            lambda: self.moves,
        )
        metrics.count(
            "dispatch_gateway_batches_published",
            "Batches of moves published to the engine on <root>/internal/moves",
            lambda: self.batches,
        )
        metrics.unsaved.set_function(lambda: len(self._unsaved))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while connected to the broker; whether Redis answers is said, not
        required (batches reach the engine without it, positions wait)."""
        try:
            redis = await asyncio.wait_for(self.store.ping(), _PING_S)
        except TimeoutError:
            redis = False
        broker = self.bus.ready.is_set()
        return broker, {
            "broker": broker,
            "redis": redis,
            "unsaved_positions": len(self._unsaved),
            "received": self.received,
            "batches": self.batches,
        }

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then send what is held and stop."""
        async with asyncio.TaskGroup() as tg:
            tasks = [
                # The bus's prioritised reader (nothing is urgent here): up to 256 packets
                # per wake of the loop from buffered reads, and locations shed while more
                # than 5,000 wait (a gateway far behind; the next ones replace them).
                tg.create_task(
                    self.bus.run(
                        self.on_location,
                        handle_batch=self.on_locations,
                        urgent=_nothing_urgent,
                        sheddable=_all_sheddable,
                    ),
                    name="mqtt",
                ),
                tg.create_task(self._flush_forever(), name="batches"),
                tg.create_task(self._stats_forever(), name="stats"),
            ]
            await stop.wait()
            await cancel_all(tasks)
        self._log_stats()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.close(), 2)
        log.info("stopped")

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.flush_s)
            self._full.clear()
            await self.flush()

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(_STATS_S)
            self._log_stats()

    def _log_stats(self) -> None:
        log.info(
            "received %d locations (%d rejected, %d shed while behind), sent %d moves in %d "
            "batches",
            self.received,
            self.rejected,
            self.bus.shed,
            self.moves,
            self.batches,
        )

    # ------------------------------------------------------------------ inbound

    async def on_location(self, topic: str, payload: bytes) -> None:
        """One location; never raises for bad input."""
        self._take(topic, payload, self.clock())

    async def on_locations(self, batch: list[tuple[str, bytes]]) -> None:
        now = self.clock()
        for topic, payload in batch:
            self._take(topic, payload, now)

    def _take(self, topic: str, payload: bytes, now: float) -> None:
        self.received += 1
        try:
            msg = self.codec.decode(topic, payload, now)
        except BadMessage as err:
            self.reject(err, now)
            return
        if not isinstance(msg, LocationUpdate):  # pragma: no cover - only locations come
            return
        vid = msg.volunteer_id
        # The newest per volunteer; re-inserted so that the batch is in arrival order.
        self._pending.pop(vid, None)
        self._pending[vid] = (vid, msg.lat, msg.lon, msg.accuracy_m, now)
        if len(self._pending) >= self.max_moves:
            self._full.set()

    async def on_retained(self, topic: str, payload: bytes) -> None:
        """A retained location: refused as the engine refuses one (`Service.on_retained`)."""
        if payload:
            self.reject(retained_error(topic, payload), self.clock())

    def reject(self, err: BadMessage, now: float) -> None:
        """Answer a bad location on ``rejected``, with the payload the engine would send."""
        self.rejected += 1
        self.metrics.rejected.labels(reason=err.code).inc()
        log.info("rejected message on %s: %s (%s)", err.topic, err.code, mask_numbers(err.reason))
        answer = Publish(self.codec.topic("rejected"), self.codec.rejected_payload(err, now), 1)
        self._send(answer, "rejected")

    # ------------------------------------------------------------------ outbound

    async def flush(self) -> None:
        """Store the moves held, then hand them to the engine, in batches of ``max_moves``.

        Stored first, so that an engine restarted after it applied a batch finds its
        positions in Redis. Redis down: the batch goes to the engine all the same, and
        the positions wait (newer ones replacing them) for the next flush.
        """
        if not self._pending and not self._unsaved:
            return
        moves, self._pending = self._pending, {}
        unsaved = {**self._unsaved, **moves}
        metrics = self.metrics
        started = time.perf_counter()
        try:
            await self.store.save_positions(
                SavePosition(vid, lat, lon, t) for vid, lat, lon, _, t in unsaved.values()
            )
            metrics.redis_write.observe(time.perf_counter() - started)
            self._unsaved = {}
        except BackendUnavailable as exc:
            metrics.redis_failures.inc()
            if not self._unsaved:
                log.warning("positions not stored (%s); the engine still gets them", exc)
            self._unsaved = unsaved
        for chunk in split(list(moves.values()), self.max_moves):
            if self._send(Publish(self.topic, encode_moves(chunk), 1), "moves"):
                self.batches += 1
                self.moves += len(chunk)
                metrics.batch_moves.observe(len(chunk))
                # In arrival order: the first move waited longest.
                metrics.held.observe(max(0.0, self.clock() - chunk[0][4]))

    def _send(self, message: Publish, what: str) -> bool:
        try:
            self.bus.send(message)
        except BackendUnavailable as exc:
            # Not connected: the locations are replaced by the next ones in seconds.
            self.metrics.publish_failures.labels(topic=what).inc()
            log.warning("publish to %s failed: %s", message.topic, exc)
            return False
        return True


def _nothing_urgent(_topic: str) -> bool:
    return False


def _all_sheddable(_topic: str) -> bool:
    return True
