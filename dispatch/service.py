"""The service: the asyncio shell that runs the engine.

It connects to the broker and to Redis, rebuilds the engine's state from Redis at
start, decodes what arrives over MQTT and hands it to the engine (dispatch/engine.py),
fires the timers, flushes positions every 25 ms and keeps the heap out of the garbage
collector's way. The engine stores before it publishes and handles one event at a time
under its lock.

What differs with several instances (dispatch/cluster.py) comes in through the ports of
dispatch/ports.py, set by the composition root (dispatch/wiring.py): this module has no
cluster branches.

While Redis is down the engine retries the write it was doing instead of moving on. The
service reports itself not ready meanwhile, and messages wait in the MQTT client's
bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, TypeVar

import orjson

from dispatch.bus import Bus, cancel_all
from dispatch.codec import Codec
from dispatch.config import Config
from dispatch.dispatcher import Dispatcher
from dispatch.engine import Alone, Engine, mask_numbers
from dispatch.errors import BackendUnavailable, BadMessage, Reason
from dispatch.metrics import Metrics
from dispatch.model import Arrived, LocationUpdate, Reply, Report, StatusUpdate, is_valid_id
from dispatch.moves import BadBatch, decode_moves
from dispatch.ports import IncidentReads, Intake, Operators, Ownership, Peers, ReportOutcome
from dispatch.push import Pusher
from dispatch.store import Store
from geo.area import ServiceArea
from geo.subdistricts import Subdistricts

__all__ = ["ReportOutcome", "Service", "moves_topic", "retained_error"]

log = logging.getLogger(__name__)

_POSITION_FLUSH_S = 0.025  # small pieces: formatting 500 positions holds the loop 1-2 ms
_T = TypeVar("_T")

_TIMER_RESOLUTION_S = 0.1
# A volunteer's own messages: handled together when they come in a run (`on_messages`).
_VOLUNTEER_SUFFIXES = ("/location", "/status", "/reply", "/arrived")
_MOVES_PER_HOLD = 64  # moves from gateways applied per hold of the engine's lock
_FREEZE_S = 0.1  # how often the heap is collected and frozen (see _freeze_heap)
_THAW_S = 600.0  # how often everything frozen is collected once more (see _freeze_heap)


class Service:
    """The engine and its I/O for one instance: buses, Redis, timers, positions."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        area: ServiceArea | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.area = area or ServiceArea.from_geojson(
            config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
        )
        if config.area_subdistricts is not None and self.area.subdistricts is None:
            self.area.set_subdistricts(
                Subdistricts.from_geojson(
                    config.area_subdistricts, name_property=config.subdistrict_name
                )
            )
        self.codec = Codec(
            root=config.topic_root,
            max_payload_bytes=config.max_payload_bytes,
            in_area=self.area.contains,
            area_name=self.area.name,
            future_tolerance_s=config.future_tolerance_s,
        )
        self.metrics = Metrics()
        self._report_topic = self.codec.topic("incidents", "report")
        self.core = self._new_core()
        # Counted when scraped: walking the incidents on every change was 2-3 % of the
        # engine's time at the design load (the ended ones are kept for a day).
        self.metrics.open_incidents.set_function(lambda: len(self.core.open_incidents()))
        self.metrics.available_volunteers.set_function(lambda: self.core.available)
        self.store = store if store is not None else Store.from_config(config)
        instance = config.instance or f"{random.getrandbits(32):08x}"
        # Everything comes in on one connection, so that each volunteer's messages are
        # handled in the order sent (a location, then the status that relies on it);
        # reports go ahead of a backlog of anything else (see urgent). A connection of their
        # own for reports was tried in an earlier attempt: the location ingest at the
        # design load fell from 3,400-3,800/s to 2,400/s (two receive loops on one core).
        # With MQTT 5, that connection is a second one, in
        # MQTT 3.1.1: paho builds an MQTT 5 Properties object for every message received
        # (about 20 µs: half the engine's time at 5,000 locations/s), and MQTT 5 is needed
        # only for what the engine publishes (message expiry), on the main connection.
        subscriptions = self.codec.subscriptions()
        # Location gateways (dispatch/gateway.py): locations come in batches of moves from
        # them, on a topic only gateways may publish on (the broker's ACL).
        self._moves_topic = moves_topic(self.codec)
        if config.gateway_enabled:
            location = self.codec.topic("volunteers", "+", "location")
            subscriptions = [s for s in subscriptions if s[0] != location]
            subscriptions.append((self._moves_topic, 1))
        # Web Push (dispatch/push.py): subscriptions come in on volunteers/+/push.
        self.pusher: Pusher | None = None
        if config.push_enabled:
            self.pusher = Pusher(config, self.store, self.codec, self.metrics, clock)
            subscriptions.append(self.codec.push_filter())
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
        self.instance = instance
        self.engine = Engine(self.core, self.store, self.bus, self.codec, self.metrics, clock)
        if self.pusher is not None and not config.push_separate:
            self.engine.on_alert = self.pusher.alert
        self.engine.while_waiting = self._while_waiting
        # The ports (dispatch/ports.py): a single engine's until `share` is called.
        alone = Alone(self.engine)
        self.intake: Intake = alone
        self.ownership: Ownership = alone
        self.reads: IncidentReads = alone
        self.operators: Operators = alone
        self.restored = asyncio.Event()
        self._frozen_at = 0.0  # time.monotonic() of the last gc.freeze (see _freeze_heap)
        # Moves from location gateways waiting to be applied, the newest per volunteer
        # (see _on_moves and _apply_moves_forever).
        self._moves: dict[str, LocationUpdate] = {}
        self._moves_waiting = asyncio.Event()
        self._thawed_at = time.monotonic()  # and of the last full collection

    def share(self, peers: Peers) -> None:
        """Work with other instances: ``peers`` implements every port (dispatch/cluster.py)."""
        self.intake = self.ownership = self.reads = self.operators = peers
        self.engine.share(peers)

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
    def redis_ok(self) -> bool:
        return self.engine.redis_ok

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
                        self.bus.run(
                            self.on_message,
                            handle_batch=self.on_messages,
                            urgent=self.urgent,
                            sheddable=_is_location,
                        ),
                        name="mqtt",
                    ),
                    tg.create_task(self._timers(), name="timers"),
                    tg.create_task(self._flush_positions_forever(), name="positions"),
                    tg.create_task(self._apply_moves_forever(), name="moves"),
                    tg.create_task(self.ownership.run(), name="cluster"),
                ]
                if self.pusher is not None:
                    pushing = not self.config.push_separate  # else pushers do (push_worker.py)
                    tasks.append(
                        tg.create_task(
                            # Alone, every subscription comes through this pusher.
                            self.pusher.run(push=pushing, track=not self.config.cluster_enabled),
                            name="push",
                        )
                    )
                if self.inbound_bus is not None:
                    tasks.append(
                        tg.create_task(
                            self.inbound_bus.run(
                                self.on_message,
                                handle_batch=self.on_messages,
                                urgent=self.urgent,
                                sheddable=_is_location,
                            ),
                            name="mqtt-inbound",
                        )
                    )
            await stopping
            restore.cancel()
            tasks.append(restore)
            await cancel_all(tasks)
        with contextlib.suppress(BackendUnavailable, TimeoutError):
            await asyncio.wait_for(self.engine.flush_positions(), 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.close(), 2)
        log.info("stopped")

    async def _watch_redis(self) -> None:
        while True:
            ok = await self.store.ping()
            if ok != self.engine.redis_ok:
                log.log(
                    logging.INFO if ok else logging.WARNING,
                    "Redis %s",
                    "up" if ok else "unreachable",
                )
                if not ok:
                    self.metrics.backend_errors.labels(backend="redis").inc()
            self.engine.redis_ok = ok
            await asyncio.sleep(1.0 if ok else 0.5)

    async def _restore(self) -> None:
        """Rebuild the core from Redis: volunteers first, then incidents and their timers."""
        delay = 0.2
        # A restart makes hundreds of thousands of long-lived objects at once: with the
        # collector on, its full passes over the growing heap took half of the rebuild
        # (1.2 s of 2.4 s at 100,000 volunteers). Off until everything is back, then
        # frozen (see _freeze_heap): what was restored is live, not garbage.
        gc.disable()
        try:
            await self._restore_state(delay)
        finally:
            gc.freeze()
            gc.enable()
            self._frozen_at = time.monotonic()
        self.restored.set()

    async def _restore_state(self, delay: float) -> None:
        # Volunteers first, each chunk rebuilt as it is read; a read that fails half way
        # is retried from the start (volunteers restored twice come to the same).
        volunteers = await self._until_read(
            lambda: self.engine.restore_volunteers(self.store.volunteer_chunks()), delay
        )

        async def read_incidents() -> tuple[list[str], list[dict[str, Any]]]:
            open_ids = await self.store.open_incident_ids()
            ended_ids = await self.store.ended_since(self.clock() - self.config.state_retention_s)
            return open_ids, await self.store.incidents(open_ids + ended_ids)

        open_ids, records = await self._until_read(read_incidents, delay)
        # Several instances: incidents come back by adoption, each to one owner (cluster.py).
        await self.engine.restore(self.ownership.to_restore(records))
        log.info(
            "restored %d volunteers (%d available) and %d incidents (%d open)",
            volunteers,
            self.core.available,
            len(records),
            len(open_ids),
        )

    async def _until_read(self, read: Callable[[], Awaitable[_T]], delay: float) -> _T:
        """``read()``, again (after ``delay``, doubling up to 5 s) until Redis answers."""
        while True:
            try:
                return await read()
            except (BackendUnavailable, OSError) as exc:
                log.warning("cannot read state from Redis yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _republish_states(self) -> None:
        """After every (re)connect: the broker may have lost its retained messages."""
        incidents = [i for i in self.core.incidents.values() if not i.ended]
        # Only what we still own (with several instances, we may have been paused).
        owned = set(await self.ownership.confirmed([i.id for i in incidents]))
        for incident in incidents:
            if incident.id in owned:
                await self.bus.publish(self.engine.state_message(incident))

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
            await self.engine.tick(self.clock())
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
                await self.engine.flush_positions()
                delay = _POSITION_FLUSH_S
            except BackendUnavailable as exc:
                log.warning("positions not stored (%s); retrying", exc)
                # Backing off: every 25 ms would be 40 warnings a second while Redis is down.
                delay = min(max(delay * 2, 0.1), 1.0)

    def _while_waiting(self) -> contextlib.AbstractContextManager[None]:
        """Around each Redis call the engine waits on: while behind (a herd), the
        connection that brings the backlog reads nothing, since reading it filled the
        turns of the loop that the answer waited for (`Bus.not_reading`). Not while the
        engine keeps up: holding the reading costs two system calls, for nothing there."""
        bus = self.inbound_bus or self.bus
        return bus.not_reading() if bus.behind else contextlib.nullcontext()

    # ------------------------------------------------------------------ inbound

    def urgent(self, topic: str) -> bool:
        """Handled ahead of everything else waiting (`Bus.run`): incident reports, and
        the location gateways' batches of moves.

        What a client can rely on: a volunteer's own messages (status, location, reply,
        arrived) are handled in the order sent, and so are reports among themselves.
        Reports keep their place among the others too while the engine keeps up; behind
        a backlog of more than a hundred or so (a herd of statuses after a broker
        restart), a report overtakes it (a herd must not delay dispatch, issue 16).

        A batch only joins the moves waiting (`_on_moves`: some µs per move, where the
        newest move per volunteer replaces an older one), so it goes first as well and is
        never shed: behind a herd, shed batches left the index without any new position
        for 16 s (RESULTS.md).
        """
        return topic == self._report_topic or topic == self._moves_topic

    async def on_message(self, topic: str, payload: bytes) -> None:
        """One MQTT message, start to finish. Never raises for bad input."""
        now = self.clock()
        if topic == self._moves_topic and self.config.gateway_enabled:
            await self._on_moves(payload, now)
            return
        self.ownership.begin(topic, payload)  # what "only one instance answers" keys on
        if self.pusher is not None and self.codec.push_volunteer(topic) is not None:
            await self._on_push(topic, payload, now)
            return
        try:
            msg = self.codec.decode(topic, payload, now)
        except BadMessage as err:
            await self.engine.reject(err, now)
            return
        self.metrics.messages.labels(type=type(msg).__name__).inc()
        if isinstance(msg, Report):
            await self.intake.admit(msg, payload, now)
            return
        await self.engine.handle([msg], now)

    async def _on_moves(self, payload: bytes, now: float) -> None:
        """A batch of moves from a location gateway: added to the moves waiting (see
        `_apply_moves_forever`), or, if it is not what a gateway sends, dropped and counted
        (never answered on ``rejected``: only gateways may publish there, so a malformed
        batch is a bug or a breach)."""
        try:
            moves = decode_moves(
                payload, now=now, future_tolerance_s=self.config.future_tolerance_s
            )
        except BadBatch as exc:
            self.metrics.move_batches.labels(outcome="malformed").inc()
            # The reason may echo a coordinate: numbers masked, as for rejections.
            log.warning("malformed batch of moves dropped: %s", mask_numbers(str(exc)))
            return
        self.metrics.move_batches.labels(outcome="accepted").inc()
        waiting = self._moves
        for move in moves:
            held = waiting.pop(move.volunteer_id, None)
            if held is not None and (held.ts or 0.0) > (move.ts or 0.0):
                move = held  # two gateways, a batch overtaken by an older one
            waiting[move.volunteer_id] = move  # re-inserted: in arrival order
        if waiting:
            self._moves_waiting.set()

    async def _apply_moves_forever(self) -> None:
        """Apply the moves waiting, ``_MOVES_PER_HOLD`` per hold of the engine's lock.

        Apart from the inbound loop, so that a report is never queued behind batches of
        moves: it waits for one hold at most (some 64 x 60 µs). While the engine is
        behind, a volunteer's move still waiting is replaced by a newer one (the
        location path's shedding: the work is bounded by the volunteers who moved, not
        by the locations sent).
        """
        while True:
            await self._moves_waiting.wait()
            self._moves_waiting.clear()
            while self._moves:
                waiting = self._moves
                chunk = [waiting.pop(vid) for vid in list(islice(waiting, _MOVES_PER_HOLD))]
                self.metrics.messages.labels(type="LocationUpdate").inc(len(chunk))
                await self.engine.moves(chunk, self.clock())
                # A move's time is the gateway's receipt (its clock against ours: the
                # same clock on one machine).
                oldest = min((m.ts for m in chunk if m.ts is not None), default=None)
                if oldest is not None:
                    self.metrics.location_to_index.observe(max(0.0, self.clock() - oldest))
                await asyncio.sleep(0)  # whatever else is ready (a report) goes next

    async def _on_push(self, topic: str, payload: bytes, now: float) -> None:
        """A page's push subscription (dispatch/push.py); never raises for bad input."""
        assert self.pusher is not None
        try:
            await self.pusher.subscribe(topic, payload)
        except BadMessage as err:
            self.metrics.push_subscriptions.labels(outcome="rejected").inc()
            await self.engine.reject(err, now)
        except BackendUnavailable as exc:  # the page sends it again at its next sign-in
            log.warning("push subscription on %s not stored: %s", topic, exc)

    async def on_retained(self, topic: str, payload: bytes) -> None:
        """A message with the retain flag: refused with a reason, never acted on.

        Acting on it would act again at every connect (the broker replays it to each new
        subscription): a retained report became a new incident at every restart. The
        stored copy is left alone: clearing it would echo back as an empty message.
        """
        if payload:  # an empty retained message is a clear, not a message
            await self.engine.reject(retained_error(topic, payload), self.clock())

    async def on_messages(self, batch: list[tuple[str, bytes]]) -> None:
        """Messages in arrival order, as the bus took them from its queue.

        A run of volunteers' messages (locations, statuses, replies, arrivals) goes
        through the core under one hold of the lock, still one message at a time and in
        order, and its writes go to Redis in one round trip (positions are coalesced
        anyway; the claims of several accepts in another) before anything it decided is
        published. A run of reports likewise (`Engine.reports`), batches of moves among
        them included (`_on_urgent`). Everything else, and
        everything in a cluster, goes one at a time through ``on_message``.
        """
        start = 0
        while start < len(batch):
            end = start
            if self.ownership.batches:
                while end < len(batch) and batch[end][0].endswith(_VOLUNTEER_SUFFIXES):
                    end += 1
                if end > start:
                    await self._on_run(batch[start:end])
                    start = end
                    continue
                while end < len(batch) and self.urgent(batch[end][0]):
                    end += 1
                if end - start > 1:
                    await self._on_urgent(batch[start:end])
                    start = end
                    continue
            await self.on_message(*batch[start])
            start += 1

    async def _on_urgent(self, run: list[tuple[str, bytes]]) -> None:
        """A run of reports and gateways' batches of moves (what jumps a backlog comes
        interleaved): the batches first, then the reports as one run.

        A batch only joins the moves waiting, which reach the index under the lock after
        the reports, as before. One report at a time, each held the lock for two Redis
        round trips and waited for the moves applied in between: behind a herd, a run of
        12 reports took 170 ms, and every report read meanwhile waited for it
        (benchmarks/RESULTS.md).
        """
        reports = []
        for topic, payload in run:
            if topic == self._report_topic:
                reports.append((topic, payload))
            else:
                await self.on_message(topic, payload)
        if len(reports) > 1:
            await self._on_reports(reports)
        elif reports:
            await self.on_message(*reports[0])

    async def _on_reports(self, run: list[tuple[str, bytes]]) -> None:
        now = self.clock()
        reports, bad = self._decode_run(run, now, (Report,))
        if reports:
            await self.engine.reports(reports, now)
        for error in bad:
            await self.engine.reject(error, now)

    async def _on_run(self, run: list[tuple[str, bytes]]) -> None:
        now = self.clock()
        messages, bad = self._decode_run(run, now, (LocationUpdate, StatusUpdate, Reply, Arrived))
        await self.engine.handle(messages, now)
        for error in bad:
            await self.engine.reject(error, now)

    def _decode_run(
        self, run: list[tuple[str, bytes]], now: float, kinds: tuple[type, ...]
    ) -> tuple[list[Any], list[BadMessage]]:
        """A run's messages decoded (each one of ``kinds``) and counted by type, and the
        bad ones apart, to be rejected after the run."""
        messages: list[Any] = []
        bad: list[BadMessage] = []
        for topic, payload in run:
            try:
                msg = self.codec.decode(topic, payload, now)
            except BadMessage as err:
                bad.append(err)
                continue
            if not isinstance(msg, kinds):
                raise TypeError(f"unexpected message {msg!r} on {topic}")  # pragma: no cover
            messages.append(msg)
        for kind, count in Counter(type(m).__name__ for m in messages).items():
            self.metrics.messages.labels(type=kind).inc(count)
        return messages, bad

    async def report(self, report: Report, now: float, *, via_mqtt: bool = True) -> ReportOutcome:
        """Admit, store, then announce an incident (`Engine.report`)."""
        return await self.engine.report(report, now, via_mqtt=via_mqtt)

    async def operator(
        self, action: str, incident_id: str, by: str, **kwargs: Any
    ) -> dict[str, Any]:
        """cancel, resolve, escalate, assign, amend or merge on this instance's core
        (`Engine.act`)."""
        return await self.engine.act(action, incident_id, by, **kwargs)


def _is_location(topic: str) -> bool:
    """Locations: replaced by the next in seconds; shed when far behind (Bus.run). Not
    the gateways' batches (see `Service.urgent`)."""
    return topic.endswith("/location")


def moves_topic(codec: Codec) -> str:
    """Where location gateways publish their batches of moves (dispatch/moves.py)."""
    return codec.topic("internal", "moves")


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
