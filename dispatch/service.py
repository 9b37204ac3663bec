"""The service: the asyncio shell around the dispatcher.

It decodes what arrives (MQTT, HTTP), feeds the core one event at a time, and carries
out the effects the core returns: first everything to be stored (one Redis pipeline),
then everything to be published. Nothing is announced before it is stored, so the
retained state message is a reporter's proof that its incident is safe.

Every event is handled under one lock, in arrival order, so effects go out in the
order the core decided them. The core itself never waits; the lock is held only across
the few Redis and broker round trips an event needs. Positions are the exception: they
are coalesced per volunteer and written in one command every 25 ms, off the path.

While Redis is down the service retries the write it was doing (with capped back-off)
instead of moving on: the core must never get ahead of what is stored. It reports
itself not ready meanwhile, and messages wait in the MQTT client's bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from dispatch.bus import Bus
from dispatch.codec import Codec, dumps
from dispatch.config import Config
from dispatch.dispatcher import Dispatcher, Incident
from dispatch.effects import Claim, Effect, ForgetPosition, LogEvent, Publish, Reject, SavePosition
from dispatch.errors import BackendUnavailable, BadMessage, Reason
from dispatch.metrics import Metrics
from dispatch.model import Arrived, LocationUpdate, Reply, Report, StatusUpdate, is_valid_id
from dispatch.store import Store

if TYPE_CHECKING:
    from dispatch.cluster import Cluster
from geo.area import ServiceArea

__all__ = ["ReportOutcome", "Service"]

log = logging.getLogger(__name__)

_POSITION_FLUSH_S = 0.025  # small pieces: formatting 500 positions holds the loop 1-2 ms
# A number with a fraction or an exponent (30.2591, 30,2591, 3025910e-5): a coordinate
# precise enough to place a person; masked in the reasons that are logged.
_NUMBER = re.compile(r"\d*[.,]\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+")
_TIMER_RESOLUTION_S = 0.1
_FREEZE_S = 0.1  # how often the heap is collected and frozen (see _freeze_heap)
_THAW_S = 600.0  # how often everything frozen is collected once more (see _freeze_heap)


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What became of a report, and its incident's public state where there is one."""

    status: Literal["created", "duplicate", "conflict", "pending"]
    state: dict[str, Any] | None = None


class Service:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        area: ServiceArea | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.area = area or ServiceArea.from_geojson(
            config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
        )
        self.codec = Codec(
            root=config.topic_root,
            max_payload_bytes=config.max_payload_bytes,
            in_area=self.area.contains,
            area_name=self.area.name,
            future_tolerance_s=config.future_tolerance_s,
        )
        self.metrics = Metrics()
        self.core = self._new_core()
        # Several instances (dispatch/cluster.py): every incident write is fenced.
        store_type = Store
        if config.cluster_enabled:
            from dispatch.cluster import FencedStore

            store_type = FencedStore
        self.store = store_type.from_url(
            config.redis_url,
            prefix=f"{config.topic_root}:",
            location_ttl_s=config.location_ttl_s,
            idempotency_ttl_s=config.idempotency_ttl_s,
            event_log_max=config.event_log_max,
            timeout_s=config.redis_timeout_s,
            health_check_s=config.redis_health_check_s,
        )
        instance = config.instance or f"{random.getrandbits(32):08x}"
        # Everything comes in on one connection, so that each client's messages are handled
        # in the order it sent them (a location, then the status that relies on it; a
        # status, then a report nearby). With MQTT 5, that connection is a second one, in
        # MQTT 3.1.1: paho builds an MQTT 5 Properties object for every message received
        # (about 20 µs: half the engine's time at 5,000 locations/s), and MQTT 5 is needed
        # only for what the engine publishes (message expiry), on the main connection.
        subscriptions = self.codec.subscriptions()
        self.inbound_bus: Bus | None = None
        if config.mqtt_protocol == 5:
            self.inbound_bus = Bus(
                config.mqtt_url,
                client_id=f"dispatch-inbound-{config.topic_root}-{instance}"[:64],
                subscriptions=subscriptions,
                protocol=4,
                keepalive=config.mqtt_keepalive_s,
                on_retained=self.on_retained,
            )
            subscriptions = []
        self.bus = Bus(
            config.mqtt_url,
            client_id=f"dispatch-engine-{config.topic_root}-{instance}"[:64],
            subscriptions=subscriptions,
            protocol=config.mqtt_protocol,
            keepalive=config.mqtt_keepalive_s,
            on_connect=self._republish_states,
            on_retained=self.on_retained,
        )
        self._lock = asyncio.Lock()
        self.instance = instance
        self.cluster: Cluster | None = None
        if config.cluster_enabled:
            from dispatch.cluster import Cluster

            self.cluster = Cluster(self, instance)
        self._positions: dict[str, SavePosition | ForgetPosition] = {}
        self.restored = asyncio.Event()
        self.redis_ok = False
        self._frozen_at = 0.0  # time.monotonic() of the last gc.freeze (see _freeze_heap)
        self._thawed_at = time.monotonic()  # and of the last full collection
        self._gauges_stale = True  # see _update_gauges

    def _new_core(self) -> Dispatcher:
        c = self.config
        return Dispatcher(
            area=self.area,
            codec=self.codec,
            policy=c.policy,
            travel=c.travel,
            kinds=c.kinds,
            location_ttl_s=c.location_ttl_s,
            state_retention_s=c.state_retention_s,
            rng=random.Random(),
        )

    @property
    def ready(self) -> bool:
        """Connected to the broker and to Redis, subscribed, and state restored."""
        inbound = self.inbound_bus is None or self.inbound_bus.ready.is_set()
        return self.restored.is_set() and self.bus.ready.is_set() and inbound and self.redis_ok

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then stop cleanly."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._watch_redis(), name="redis-health")]
            restore = tg.create_task(self._restore(), name="restore")
            stopping = tg.create_task(stop.wait(), name="stop")
            await asyncio.wait([restore, stopping], return_when=asyncio.FIRST_COMPLETED)
            if restore.done():
                tasks += [
                    tg.create_task(
                        self.bus.run(self.on_message, handle_batch=self.on_messages), name="mqtt"
                    ),
                    tg.create_task(self._timers(), name="timers"),
                    tg.create_task(self._flush_positions_forever(), name="positions"),
                ]
                if self.inbound_bus is not None:
                    tasks.append(
                        tg.create_task(
                            self.inbound_bus.run(self.on_message, handle_batch=self.on_messages),
                            name="mqtt-inbound",
                        )
                    )
                if self.cluster is not None:
                    tasks.append(tg.create_task(self.cluster.run(), name="cluster"))
            await stopping
            restore.cancel()
            tasks.append(restore)
            for task in tasks:
                task.cancel()
            # Python 3.11's asyncio.wait_for (inside aiomqtt) can swallow a cancellation
            # that races with its own completion: cancel again until everything is done.
            while pending := [t for t in tasks if not t.done()]:
                await asyncio.wait(pending, timeout=1.0)
                for task in pending:
                    task.cancel()
        with contextlib.suppress(BackendUnavailable, TimeoutError):
            await asyncio.wait_for(self._flush_positions(), 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.close(), 2)
        log.info("stopped")

    async def _watch_redis(self) -> None:
        while True:
            ok = await self.store.ping()
            if ok != self.redis_ok:
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "Redis %s",
                    "up" if ok else "unreachable",
                )
                if not ok:
                    self.metrics.backend_errors.labels(backend="redis").inc()
            self.redis_ok = ok
            await asyncio.sleep(1.0 if ok else 0.5)

    async def _restore(self) -> None:
        """Rebuild the core from Redis: volunteers first, then incidents and their timers."""
        delay = 0.2
        while True:
            try:
                volunteers = await self.store.volunteers()
                open_ids = await self.store.open_incident_ids()
                ended_ids = await self.store.ended_since(
                    self.clock() - self.config.state_retention_s
                )
                records = await self.store.incidents(open_ids + ended_ids)
                break
            except (BackendUnavailable, OSError, ConnectionError) as exc:
                log.warning("cannot read state from Redis yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:  # redis raises its own ConnectionError subclasses here
                if "redis" not in type(exc).__module__:
                    raise
                log.warning("cannot read state from Redis yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        effects: list[Effect] = []
        for v in volunteers:
            self.core.restore_volunteer(
                v.volunteer_id, duty=v.duty, skills=v.skills, mode=v.mode, position=v.position
            )
        # Several instances: incidents come back by adoption, each to one owner (cluster.py).
        for record in records if self.cluster is None else []:
            effects += self.core.restore_incident(record)
        async with self._lock:
            await self._execute(effects)
        self._update_gauges()
        self._refresh_gauges()
        log.info(
            "restored %d volunteers (%d available) and %d incidents (%d open)",
            len(volunteers),
            self.core.available,
            len(records),
            len(open_ids),
        )
        self.restored.set()

    async def _republish_states(self) -> None:
        """After every (re)connect: the broker may have lost its retained messages."""
        incidents = [i for i in self.core.incidents.values() if not i.ended]
        if self.cluster is not None:  # only what we still own (we may have been paused)
            owned = set(await self.cluster.confirmed([i.id for i in incidents]))
            incidents = [i for i in incidents if i.id in owned]
        for incident in incidents:
            await self.bus.publish(self._state_message(incident))

    def _state_message(self, incident: Incident) -> Publish:
        return Publish(
            self.codec.topic("incidents", incident.id, "state"),
            dumps(self.core.public_state(incident)),
            qos=1,
            retain=True,
        )

    async def _timers(self) -> None:
        while True:
            # Timers fire only while the broker is reachable: most of what they decide
            # (stand-downs, next waves) must reach phones, and overdue ones fire at once
            # when it is back (after a restart too).
            await self.bus.ready.wait()
            deadline = self.core.next_deadline()
            now = self.clock()
            wait = _TIMER_RESOLUTION_S if deadline is None else deadline - now
            await asyncio.sleep(min(max(wait, 0.0), _TIMER_RESOLUTION_S))
            async with self._lock:
                effects = self.core.tick(self.clock())
                if effects:
                    await self._execute(effects)
            if effects:
                self._update_gauges()
            self._refresh_gauges()
            self._freeze_heap()

    def _freeze_heap(self) -> None:
        """Keep the long-lived state out of the cyclic garbage collector's full passes.

        A full collection walks every tracked object: with 100,000 volunteers that is a
        pause of 100-400 ms, every few seconds while incidents and locations come in (a
        location replaces a tracked tuple in the index), and it was the whole p99 of
        report-to-alert under load. Every ``_FREEZE_S``, collect (so no garbage is
        frozen) and freeze what is left: the collector's passes then walk only what came
        since. The collection walks what survived since the last freeze, so it is done
        often: every 2 s a pass held the loop 5-9 ms at the design load, every 0.1 s under
        1 ms (measured with benchmarks/loopmon.py). Frozen objects are
        still freed by reference counting; only cycles among them would stay. The core
        makes none that outlive a call (measured: its cyclic garbage is rtree's ctypes
        temporaries, made and dropped within one query), but the I/O libraries may (a
        task or an exception alive at a freeze, in a cycle when it dies): every
        ``_THAW_S`` everything is unfrozen and collected once, one full pass (100-400 ms
        at 100,000 volunteers) every 10 minutes, so such garbage never outlives that.
        """
        now = time.monotonic()
        if now - self._frozen_at < _FREEZE_S:
            return
        if now - self._thawed_at >= _THAW_S:
            gc.unfreeze()
            self._thawed_at = now
        gc.collect()
        gc.freeze()
        self._frozen_at = now

    async def _flush_positions_forever(self) -> None:
        delay = _POSITION_FLUSH_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self._flush_positions()
                delay = _POSITION_FLUSH_S
            except BackendUnavailable as exc:
                log.warning("positions not stored (%s); retrying", exc)
                # Backing off: every 25 ms would be 40 warnings a second while Redis is down.
                delay = min(max(delay * 2, 0.1), 1.0)

    async def _flush_positions(self) -> None:
        if not self._positions:
            return
        batch, self._positions = self._positions, {}
        try:
            await self.store.save_positions(batch.values())
        except BackendUnavailable:
            # Keep what is newer: positions that came in meanwhile win.
            self._positions = {**batch, **self._positions}
            raise

    # ------------------------------------------------------------------ inbound

    async def on_message(self, topic: str, payload: bytes) -> None:
        """One MQTT message, start to finish. Never raises for bad input."""
        now = self.clock()
        if self.cluster is not None:  # what "only one instance answers" decisions key on
            self.cluster.begin(topic, payload)
        try:
            msg = self.codec.decode(topic, payload, now)
        except BadMessage as err:
            await self._reject(err, now)
            return
        self.metrics.messages.labels(type=type(msg).__name__).inc()
        if isinstance(msg, Report):
            if self.cluster is not None:  # into the work stream, for one instance to take
                await self.cluster.admit(msg, payload, now)
                return
            await self.report(msg, now)
            return
        async with self._lock:
            if isinstance(msg, LocationUpdate):
                effects = self.core.location(msg, now)
            elif isinstance(msg, StatusUpdate):
                effects = self.core.status(msg, now)
            elif isinstance(msg, Reply):
                effects = self.core.reply(msg, now)
            elif isinstance(msg, Arrived):
                effects = self.core.arrived(msg, now)
            else:  # pragma: no cover - the codec returns nothing else
                raise TypeError(f"unexpected message {msg!r}")
            await self._execute(effects, now)
        if not isinstance(msg, LocationUpdate):
            self._update_gauges()

    async def on_retained(self, topic: str, payload: bytes) -> None:
        """A message with the retain flag: refused with a reason, never acted on.

        Acting on it would act again at every connect (the broker replays it to each new
        subscription): a retained report became a new incident at every restart. The
        stored copy is left alone: clearing it would echo back as an empty message.
        """
        if payload:  # an empty retained message is a clear, not a message
            await self._reject(retained_error(topic, payload), self.clock())

    async def on_messages(self, batch: list[tuple[str, bytes]]) -> None:
        """Messages in arrival order, as the bus took them from its queue.

        A run of locations and statuses goes through the core under one hold of the lock,
        still one message at a time and in order, and its writes go to Redis in one
        round trip (positions are coalesced anyway) before anything it decided (a
        geofence arrival) is published. Everything else, and everything in a cluster,
        goes one at a time through ``on_message``.
        """
        start = 0
        while start < len(batch):
            end = start
            while (
                end < len(batch)
                and self.cluster is None
                and batch[end][0].endswith(("/location", "/status"))
            ):
                end += 1
            if end > start:
                await self._on_run(batch[start:end])
                start = end
            else:
                await self.on_message(*batch[start])
                start += 1

    async def _on_run(self, run: list[tuple[str, bytes]]) -> None:
        now = self.clock()
        messages: list[LocationUpdate | StatusUpdate] = []
        bad: list[BadMessage] = []
        for topic, payload in run:
            try:
                msg = self.codec.decode(topic, payload, now)
            except BadMessage as err:
                bad.append(err)
                continue
            if not isinstance(msg, LocationUpdate | StatusUpdate):  # pragma: no cover
                raise TypeError(f"unexpected message {msg!r} on {topic}")
            messages.append(msg)
        statuses = sum(1 for m in messages if isinstance(m, StatusUpdate))
        if statuses:
            self.metrics.messages.labels(type="StatusUpdate").inc(statuses)
        if len(messages) > statuses:
            self.metrics.messages.labels(type="LocationUpdate").inc(len(messages) - statuses)
        async with self._lock:
            effects: list[Effect] = []
            for msg in messages:
                if isinstance(msg, LocationUpdate):
                    effects += self.core.location(msg, now)
                else:
                    effects += self.core.status(msg, now)
            await self._execute(effects, now)
        for error in bad:
            await self._reject(error, now)
        if statuses:
            self._update_gauges()

    async def report(self, report: Report, now: float, *, via_mqtt: bool = True) -> ReportOutcome:
        """Admit, store, then announce an incident.

        "pending": another engine is storing the same report; its receipt comes from there.
        A conflict is reported on ``rejected`` only for MQTT reports: an HTTP caller gets
        its answer in the response, like every other HTTP error.
        """
        async with self._lock:
            if report.id is not None:
                admission = await self._retrying(
                    lambda: self.store.admit(report.id or "", report.fingerprint)
                )
                if admission == "conflict":
                    self.metrics.incidents.labels(kind=report.kind.value, outcome="conflict").inc()
                    conflict = BadMessage(
                        self.codec.topic("incidents", "report"),
                        f"incident id '{report.id}' was already reported with a different "
                        "body; send a new id for a new incident, or the same body to get "
                        "the receipt again",
                        "conflict",
                        report.id,
                    )
                    if via_mqtt:
                        await self._reject(conflict, now)
                    else:
                        self.metrics.rejected.labels(reason=conflict.code).inc()
                    return ReportOutcome("conflict")
                if admission == "pending":  # another engine is storing it right now
                    self.metrics.incidents.labels(kind=report.kind.value, outcome="duplicate").inc()
                    return ReportOutcome("pending")
                if admission == "same":
                    self.metrics.incidents.labels(kind=report.kind.value, outcome="duplicate").inc()
                    return ReportOutcome("duplicate", await self._receipt_again(report.id))
            effects = self.core.report(report, now)
            self.metrics.incidents.labels(kind=report.kind.value, outcome="created").inc()
            await self._execute(effects, now, decision_started=now)
            incident_id = next(e.incident_id for e in effects if isinstance(e, LogEvent))
            incident = self.core.incidents[incident_id]
            state = self.core.public_state(incident)
        self._update_gauges()
        return ReportOutcome("created", state)

    async def _receipt_again(self, incident_id: str) -> dict[str, Any]:
        incident = self.core.incidents.get(incident_id)
        if incident is None:  # ended and forgotten: rebuild its public state from the record
            record = await self._retrying(lambda: self.store.incident(incident_id))
            assert record is not None, "admission said 'same' for an incident with no record"
            incident = Incident.from_record(record)
        message = self._state_message(incident)
        await self._publish([message])
        return self.core.public_state(incident)

    # ------------------------------------------------------------------ operators

    async def operator(
        self, action: str, incident_id: str, by: str, **kwargs: Any
    ) -> dict[str, Any]:
        """cancel, resolve, escalate or assign; returns the incident's public state.

        Raises UnknownIncident, UnknownVolunteer or InvalidTransition for the caller to map.
        """
        now = self.clock()
        async with self._lock:
            if action == "assign":
                effects = self.core.assign(incident_id, kwargs["volunteer_id"], now, by=by)
            elif action == "escalate":
                effects = self.core.escalate(
                    incident_id, now, by=by, reason=kwargs.get("reason", "")
                )
            elif action == "cancel":
                effects = self.core.cancel(incident_id, now, by=by)
            elif action == "resolve":
                effects = self.core.resolve(incident_id, now, by=by)
            else:
                raise ValueError(f"unknown operator action {action!r}")
            await self._execute(effects, now)
            state = self.core.public_state(self.core.incidents[incident_id])
        self._update_gauges()
        return state

    # ------------------------------------------------------------------ effects

    async def _execute(
        self, effects: list[Effect], now: float | None = None, decision_started: float | None = None
    ) -> None:
        """Store, then publish; feed claim answers back to the core. Call under the lock."""
        while effects:
            stored: list[Effect] = []
            publishes: list[Publish] = []
            claims: list[Claim] = []
            for effect in effects:
                if isinstance(effect, Publish):
                    publishes.append(effect)
                elif isinstance(effect, SavePosition | ForgetPosition):
                    self._positions[effect.volunteer_id] = effect
                elif isinstance(effect, Claim):
                    claims.append(effect)
                elif isinstance(effect, Reject):
                    await self._reject(effect.error, now if now is not None else self.clock())
                else:
                    stored.append(effect)
                    if isinstance(effect, LogEvent):
                        self.metrics.observe_event(effect.type, effect.data)
                        self._log_event(effect)
            if stored:
                await self._retrying(functools.partial(self.store.apply, stored))
            if self.cluster is not None:  # nothing for incidents another instance took over
                publishes = self.cluster.keep(publishes)
            if publishes:
                await self._publish(publishes, decision_started)
                decision_started = None
            effects = []
            for claim in claims:
                ok = await self._retrying(
                    functools.partial(self.store.claim, claim.volunteer_id, claim.incident_id)
                )
                effects += self.core.claim_result(
                    claim.volunteer_id, claim.incident_id, ok, self.clock()
                )

    async def _publish(
        self, publishes: list[Publish], decision_started: float | None = None
    ) -> None:
        # Only the last retained state per incident matters within one batch.
        last_retained = {p.topic: i for i, p in enumerate(publishes) if p.retain}
        batch = [p for i, p in enumerate(publishes) if not p.retain or last_retained[p.topic] == i]
        if decision_started is not None and any(p.topic.endswith("/alert") for p in batch):
            self.metrics.decision_latency.observe(self.clock() - decision_started)
        # Handed to the client in order, not awaited one PUBACK each (see Bus.send).
        for p in batch:
            try:
                self.bus.send(p)
            except BackendUnavailable as exc:
                # The broker is away. Retained states are re-sent on reconnect; an alert
                # that never left is covered by the next wave and the expiry timers.
                self.metrics.backend_errors.labels(backend="mqtt").inc()
                log.warning("publish to %s failed: %s", p.topic, exc)

    async def _retrying(self, operation: Callable[[], Any]) -> Any:
        delay = 0.05
        while True:
            try:
                return await operation()
            except BackendUnavailable as exc:
                self.redis_ok = False
                self.metrics.backend_errors.labels(backend="redis").inc()
                log.warning("Redis write failed (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                # Capped low: once Redis is back, the service should be too (within 0.5 s).
                delay = min(delay * 2, 0.5)

    async def _reject(self, err: BadMessage, now: float) -> None:
        if self.cluster is not None and not await self.cluster.should_reject(err):
            return  # another instance answers it, or already did
        self.metrics.rejected.labels(reason=err.code).inc()
        # Reasons echo what was sent: numbers are masked so no coordinate reaches a log.
        reason = _NUMBER.sub("#", err.reason)
        log.info("rejected message on %s: %s (%s)", err.topic, err.code, reason)
        await self._publish(
            [Publish(self.codec.topic("rejected"), self.codec.rejected_payload(err, now), qos=1)]
        )

    def _log_event(self, event: LogEvent) -> None:
        # One line per state change, ids only: never coordinates.
        data = event.data
        log.info(
            "incident=%s event=%s volunteer=%s %s",
            event.incident_id,
            event.type,
            data.get("volunteer_id", "-"),
            " ".join(f"{k}={v}" for k, v in _loggable(data.items())),
        )

    def _update_gauges(self) -> None:
        """Mark the gauges stale; the timer loop recomputes them (every 0.1 s at most).

        Counting the open incidents walks all of them (the ended ones are kept for a
        day): per event, that was 2.5 % of the engine's time at the design load.
        """
        self._gauges_stale = True

    def _refresh_gauges(self) -> None:
        if not self._gauges_stale:
            return
        self._gauges_stale = False
        self.metrics.open_incidents.set(sum(1 for i in self.core.incidents.values() if not i.ended))
        self.metrics.available_volunteers.set(self.core.available)


def retained_error(topic: str, payload: bytes) -> BadMessage:
    """The rejection of a retained inbound message, with its id where it carried one."""
    ident: str | None = None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        for field in ("id", "alert_id", "incident_id"):
            if is_valid_id(body.get(field)):
                ident = body[field]
                break
    return BadMessage(
        topic,
        "the message was published with the retain flag; the engine never acts on retained "
        "messages (the broker would replay them at every connect): publish it again "
        "without retain",
        Reason.RETAINED,
        ident,
    )


def _loggable(items: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    # Free text (an operator's name, an escalation reason) is escaped: a newline in it
    # must not forge a log line of its own.
    return (
        (k, _one_line(v) if isinstance(v, str) else v)
        for k, v in items
        if k not in ("volunteer_id", "lat", "lon")
    )


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
