"""The MQTT bus: the only module that speaks MQTT (through aiomqtt).

It keeps one connection up (reconnecting with capped back-off, resubscribing each
time), hands every inbound message to a callback, and publishes effects. TCP_NODELAY is
set on the socket: with Nagle's algorithm a QoS 1 exchange takes 40 ms instead of 0.4.

Inbound messages that carry the retain flag go to ``on_retained``, never to the handler.
A broker sends a stored retained message to every new subscription, so one retained
report would otherwise be dispatched again at every connect of the engine (issue 18).
Under MQTT 3.1.1 (the engine's inbound connection) a retained publish reaches an
existing subscription as an ordinary message (the flag is cleared, MQTT 3.1.1
3.3.1.3): it is handled once, live, and its stored copy is refused from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.client import (
    MQTT_ERR_SUCCESS,
    PUBLISH,
    MQTTMessage,
    MQTTMessageInfo,
    mqtt_ms_queued,
    mqtt_ms_wait_for_puback,
)
from paho.mqtt.client import time_func as paho_clock
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from dispatch.errors import BackendUnavailable
from dispatch.wire import Publish

__all__ = ["Bus", "cancel_all"]


log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]
BatchHandler = Callable[[list[tuple[str, bytes]]], Awaitable[None]]
_Numbered = tuple[int, str, bytes]  # (arrival number, topic, payload)

# The most messages handed over at once. It bounds how long the service's lock is held
# for a run of locations (some 60 µs each): a report waits for at most one run (about
# 2 ms), while the per-message overhead is still shared by 32.
_MAX_BATCH = 32
# The most messages moved from the client's queue into the bus's own per turn (about
# 0.2 µs each), and the most the bus's backlog holds before it stops taking more (the
# client's queue, bounded too, then fills, then the socket, then the broker's queue).
_TAKE_PER_TURN = 4096
_MAX_BACKLOG = 100_000
# Urgent messages keep their place in the arrival order until more than this many others
# wait ahead of them: one batch. Then they jump the queue. In order when the engine keeps
# up: a status and then a report nearby, sent by a test or a field drill one after the
# other, are handled in that order. A message takes 60 µs to 1 ms: 128 accepts waiting
# (each claims, then stands the others down) held reports back 100-150 ms after a herd.
_IN_ORDER = _MAX_BATCH
# Packets read from the socket per wake of the event loop (see _drive_socket). Enough to
# keep up with a herd (10,000 statuses/s at a wake every 2-6 ms), few enough that a
# wake stays short: 256 took 13-19 ms under a herd, and a report's Redis round trips
# each waited for one such turn of the loop (benchmarks/RESULTS.md).
_READS_PER_WAKE = 64
# Past this many messages waiting, sheddable ones (locations: QoS 0, replaced by the
# next in seconds) are dropped as they arrive instead of queued: some 0.5 s of work.
# When the engine falls behind, the broker used to drop them (and reports with them);
# now the engine reads everything, finds the reports, and sheds stale locations itself.
_SHED_AT = 5000
# The most messages read ahead into the client's queue (bounded at 100,000 by
# max_queued_incoming_messages, over which aiomqtt drops them): reading pauses there.
_READ_AHEAD = 20_000


class Bus:
    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        protocol: int = 5,
        keepalive: int = 15,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_retained: Handler | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        # Percent-escapes in the URL's credentials (a password with "@" or "/") are decoded.
        self.username = None if parts.username is None else unquote(parts.username)
        self.password = None if parts.password is None else unquote(parts.password)
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.protocol = protocol
        self.keepalive = keepalive
        self.on_connect = on_connect
        # Retained inbound messages (see run): handed here instead of to the handler.
        self.on_retained = on_retained
        self.ready = asyncio.Event()  # connected and subscribed
        self._client: aiomqtt.Client | None = None
        self._expiry_properties: dict[int, _Expiry] = {}
        self._arrived = 0  # inbound messages numbered in arrival order (urgent first)
        self.shed = 0  # sheddable messages dropped while the engine was behind
        self._resume_reading: Callable[[], None] = _nothing  # see _drive_socket
        self._reading_held = 0  # not_reading() calls under way
        # More than one batch waits in the bus (`run` with ``urgent``): see `behind`.
        self._behind = False
        self._apply_hold: Callable[[], None] = _nothing  # see _drive_socket
        self._shed_logged = 0.0  # time.monotonic() of the last warning about it

    def _make_client(self) -> aiomqtt.Client:
        v5 = self.protocol == 5
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A fresh session each time: whatever was queued while we were away is
            # re-sent by reporters (who retry until they see their receipt).
            clean_session=None if v5 else True,
            keepalive=self.keepalive,
            # The CONNACK wait. aiomqtt ignores a connection closed before the CONNACK (a
            # load balancer with no broker behind it), and a hung link never answers: either
            # holds the reconnect loop this long, so keep it short (a CONNACK takes ms).
            timeout=min(3.0, float(self.keepalive)),
            max_queued_incoming_messages=100_000,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        if v5:
            _follow_receive_maximum(client)
        _acknowledge_quickly(client, v5=v5)
        return client

    async def run(
        self,
        handle: Handler,
        *,
        handle_batch: BatchHandler | None = None,
        urgent: Callable[[str], bool] | None = None,
        sheddable: Callable[[str], bool] | None = None,
    ) -> None:
        """Stay connected and feed every inbound message to ``handle``, until cancelled.

        With ``handle_batch``, whatever else is already waiting in the client's queue is
        handed over with the message, in arrival order (up to ``_MAX_BATCH``): one await
        for a burst of locations instead of one each.

        With ``urgent`` (a test of the topic), the messages it picks wait behind at most
        ``_IN_ORDER`` others: past that they are handed over ahead of the backlog, in
        their own arrival order. An incident report then never waits behind a herd of
        statuses (100,000 phones re-sending theirs after a broker restart take the
        engine 10-20 s). The others keep their arrival order among themselves. Messages
        ``sheddable`` picks are dropped (and counted in ``shed``) while more than
        ``_SHED_AT`` wait.
        """
        if urgent is not None and handle_batch is not None:
            await self._run_prioritised(handle_batch, urgent, sheddable or _never)
            return
        backoff = 0.2
        while True:
            try:
                async with self._make_client() as client:
                    self._drive_socket(client)
                    await self._subscribe(client)
                    backoff = 0.2
                    # aiomqtt 2.x has no public "get without waiting"; its queue is this.
                    queue: asyncio.Queue[aiomqtt.Message] = client._queue
                    messages = aiter(client.messages)
                    while True:
                        if queue.empty():  # wait for a message, or for the connection to drop
                            message = await anext(messages)
                        else:
                            # Already queued: taken at once. aiomqtt's iterator makes a task
                            # and an asyncio.wait for every message (9 % of the engine's time
                            # at 20,000 locations/s); this yields to the loop once instead. A
                            # dropped connection is noticed once the queue is drained.
                            await asyncio.sleep(0)
                            message = queue.get_nowait()
                        self._resume_reading()
                        if message.retain and self.on_retained is not None:
                            await self.on_retained(message.topic.value, _payload(message))
                            continue
                        if handle_batch is None:
                            await handle(message.topic.value, _payload(message))
                            continue
                        batch = [(message.topic.value, _payload(message))]
                        retained: list[aiomqtt.Message] = []
                        while len(batch) < _MAX_BATCH and not queue.empty():
                            more = queue.get_nowait()
                            if more.retain and self.on_retained is not None:
                                retained.append(more)
                            else:
                                batch.append((more.topic.value, _payload(more)))
                        await handle_batch(batch)
                        for r in retained:
                            await self.on_retained(r.topic.value, _payload(r))  # type: ignore[misc]
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                self._client = None
                log.warning("MQTT connection lost (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                # Capped low so the engine is back within a second of the broker.
                backoff = min(backoff * 2, 1.0)

    async def _run_prioritised(
        self,
        handle_batch: BatchHandler,
        urgent: Callable[[str], bool],
        sheddable: Callable[[str], bool],
    ) -> None:
        """`run` with urgent messages first: everything waiting in the client's queue is
        moved (up to ``_TAKE_PER_TURN`` a turn) into two queues of the bus's own, each
        message numbered in arrival order, and each turn hands over up to ``_MAX_BATCH``
        of them: in arrival order while the backlog is short, urgent ones first when not."""
        backoff = 0.2
        while True:
            try:
                async with self._make_client() as client:
                    self._drive_socket(client)
                    await self._subscribe(client)
                    backoff = 0.2
                    # aiomqtt 2.x has no public "get without waiting"; its queue is this.
                    queue: asyncio.Queue[aiomqtt.Message] = client._queue
                    messages = aiter(client.messages)
                    first: deque[_Numbered] = deque()
                    backlog: deque[_Numbered] = deque()
                    self._arrived = 0
                    while True:
                        if not first and not backlog:
                            # Nothing waiting: wait for a message, or for the link to drop.
                            await self._sort(
                                await anext(messages), first, backlog, urgent, sheddable
                            )
                        else:
                            # See run: one yield to the loop instead of a task per message.
                            # A dropped connection is noticed once everything is handled.
                            await asyncio.sleep(0)
                        taken = 0
                        while (
                            taken < _TAKE_PER_TURN
                            and len(backlog) < _MAX_BACKLOG
                            and not queue.empty()
                        ):
                            await self._sort(queue.get_nowait(), first, backlog, urgent, sheddable)
                            taken += 1
                        self._resume_reading()
                        jump = self._behind = len(backlog) > _IN_ORDER
                        batch: list[tuple[str, bytes]] = []
                        while len(batch) < _MAX_BATCH and (first or backlog):
                            if first and (jump or not backlog or first[0][0] < backlog[0][0]):
                                batch.append(first.popleft()[1:])
                            else:
                                batch.append(backlog.popleft()[1:])
                        if batch:
                            await handle_batch(batch)
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                self._client = None
                log.warning("MQTT connection lost (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _sort(
        self,
        message: aiomqtt.Message,
        first: deque[_Numbered],
        backlog: deque[_Numbered],
        urgent: Callable[[str], bool],
        sheddable: Callable[[str], bool],
    ) -> None:
        topic = message.topic.value
        if message.retain and self.on_retained is not None:
            await self.on_retained(topic, _payload(message))
            return
        if len(backlog) > _SHED_AT and sheddable(topic):
            self.shed += 1
            now = time.monotonic()
            if now - self._shed_logged >= 10.0:
                self._shed_logged = now
                log.warning(
                    "behind by %d messages: dropping locations as they arrive (%d so far)",
                    len(backlog),
                    self.shed,
                )
            return
        self._arrived += 1
        (first if urgent(topic) else backlog).append((self._arrived, topic, _payload(message)))

    def _drive_socket(self, client: aiomqtt.Client) -> None:
        """Read up to ``_READS_PER_WAKE`` packets each time the socket is readable, and
        write what a turn of the event loop publishes in one system call.

        aiomqtt's reader reads one packet per wake of the event loop (paho's
        ``loop_read`` reads one unless QoS 2 or outgoing messages are pending). Under a
        burst the rest then waits in the socket and in the broker's queue for this
        client, where nothing can reorder it and where the broker drops what is over
        ``max_queued_messages``, incident reports included: a herd of 100,000 statuses
        lost two thirds of them, and 40 % of the reports sent meanwhile (measured,
        benchmarks/RESULTS.md). Read on while each read brings a message, so that a
        backlog waits here, where reports are taken first (`_run_prioritised`). Reading
        pauses while ``_READ_AHEAD`` messages wait in the client's queue (over its bound
        aiomqtt drops them) and resumes once the bus has taken half of them.

        Writes: see `_BufferedSocket`. A connection that is not plain TCP (TLS,
        websockets) keeps aiomqtt's own reader and writer.
        """
        self._resume_reading = _nothing
        self._apply_hold = _nothing
        paho = client._client
        queue = client._queue
        sock = paho.socket()
        if type(sock) is not socket.socket:  # not plain TCP (TLS, websockets), or none
            return
        loop = asyncio.get_running_loop()

        def broken(exc: Exception) -> None:  # as aiomqtt's own reader and writer
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)

        buffered = _BufferedSocket(sock, loop, broken)
        fd = sock.fileno()
        paused = False  # far enough ahead (_READ_AHEAD)
        watching = True  # the loop calls `read` when the socket is readable
        write_soon = False

        def read() -> None:
            nonlocal paused, watching
            if self._reading_held and self.ready.is_set():
                apply_hold()  # stop watching; called again once the hold ends
                return
            try:
                for _ in range(_READS_PER_WAKE):
                    before = queue.qsize()
                    paho.loop_read()
                    if queue.qsize() >= _READ_AHEAD:
                        break
                    if queue.qsize() == before and not buffered.buffered:
                        break  # nothing more waiting (or not a message: next wake)
                if queue.qsize() >= _READ_AHEAD:
                    # Far enough ahead: the rest waits in the socket and the broker
                    # (aiomqtt would drop what is over its queue's bound) until `resume`.
                    loop.remove_reader(fd)
                    paused, watching = True, False
                elif buffered.buffered:
                    # Bytes read ahead are not seen by the loop's readiness test.
                    loop.call_soon(read)
            except Exception as exc:
                broken(exc)

        def resume() -> None:
            nonlocal paused
            if paused and queue.qsize() < _READ_AHEAD // 2:
                paused = False
                apply_hold()

        def apply_hold() -> None:
            # Watch the socket unless far enough ahead or held (`Bus.not_reading`; not
            # before the broker's answers to connecting and subscribing are read).
            nonlocal watching
            if paho.socket() is None:  # closed: aiomqtt stopped the watch
                watching = False
                return
            want = not paused and not (self._reading_held and self.ready.is_set())
            if want and not watching:
                loop.add_reader(fd, read)
                loop.call_soon(read)  # bytes read ahead, which the loop does not see
            elif watching and not want:
                loop.remove_reader(fd)
            watching = want

        def write() -> None:
            nonlocal write_soon
            write_soon = False
            try:
                paho.loop_write()  # every packet waiting, into the socket's buffer
                buffered.flush()
            except Exception as exc:
                broken(exc)

        def packets_waiting(_client: Any, _userdata: Any, _sock: Any) -> None:
            # Called by paho for each packet it queues while none was waiting; the loop
            # runs `write` once, after whatever else this turn publishes.
            nonlocal write_soon
            if not write_soon:
                write_soon = True
                loop.call_soon(write)

        loop.remove_reader(fd)
        loop.remove_writer(fd)
        paho._sock = buffered
        _read_pubacks_ahead(paho, buffered, v5=self.protocol == 5)
        paho.on_socket_register_write = packets_waiting
        paho.on_socket_unregister_write = None  # nothing registered: see packets_waiting
        loop.add_reader(fd, read)
        write()  # anything already waiting; and paho notes that nothing is registered
        self._resume_reading = resume
        self._apply_hold = apply_hold

    @property
    def behind(self) -> bool:
        """More than a batch waits to be handled: urgent messages jump the backlog."""
        return self._behind

    @contextlib.contextmanager
    def not_reading(self) -> Iterator[None]:
        """Read nothing from the broker meanwhile: for a short wait the reader of a
        backlog would lengthen.

        Under a herd each turn of the event loop read up to 64 packets (2-5 ms), and a
        Redis round trip of the engine's took one or two such turns where Redis needs
        0.1 ms: a report's two took 10-40 ms. What arrives meanwhile waits in the socket.
        Plain TCP only (see _drive_socket); elsewhere it changes nothing.
        """
        self._reading_held += 1
        self._apply_hold()
        try:
            yield
        finally:
            self._reading_held -= 1
            self._apply_hold()

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        for topic, qos in self.subscriptions:
            await client.subscribe(topic, qos, timeout=10)
        self._client = client
        log.info("connected to MQTT broker %s:%s as %s", self.host, self.port, self.client_id)
        if self.on_connect is not None:
            await self.on_connect()
        self.ready.set()
        self._apply_hold()  # a hold taken before the connection was made

    def _properties(self, message: Publish) -> Properties | None:
        if message.expiry_s is None or self.protocol != 5:
            return None
        # Building one costs about 20 µs (a few per alert); paho only reads them (packs them
        # when sending), so one per expiry is shared.
        properties = self._expiry_properties.get(message.expiry_s)
        if properties is None:
            properties = self._expiry_properties[message.expiry_s] = _Expiry(message.expiry_s)
        return properties

    def send(self, message: Publish) -> None:
        """Hand a message to the client for the broker, without waiting for its PUBACK.

        The client writes what it is handed in order, so what the service stored first
        still leaves first. Waiting for each acknowledgement (aiomqtt's ``publish`` does)
        would add a broker round trip to every event handled under the service's lock.
        """
        client = self._client
        if client is None:
            raise BackendUnavailable("mqtt", "not connected to the broker")
        # aiomqtt has no publish that does not wait: its paho client is this.
        paho = client._client
        properties = self._properties(message)
        rc = None
        if message.qos == 1:  # alerts, assignments, states: nearly every message sent
            rc = _publish_quickly(
                paho,
                message.topic,
                message.payload,
                message.retain,
                properties,
                v5=self.protocol == 5,
            )
        if rc is None:
            rc = paho.publish(
                message.topic, message.payload, message.qos, message.retain, properties
            ).rc
        if rc != MQTT_ERR_SUCCESS:
            raise BackendUnavailable("mqtt", f"publish to {message.topic} failed (rc {rc})")

    async def publish(self, message: Publish) -> None:
        client = self._client
        if client is None:
            raise BackendUnavailable("mqtt", "not connected to the broker")
        try:
            await client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=self._properties(message),
                timeout=10,
            )
        except aiomqtt.MqttError as exc:
            raise BackendUnavailable("mqtt", f"publish to {message.topic} failed: {exc}") from exc


def _follow_receive_maximum(client: aiomqtt.Client) -> None:
    """Keep as many QoS 1 messages in flight as the broker takes (MQTT 5 Receive Maximum).

    paho keeps at most 20 unacknowledged whatever the broker says, and holds the rest
    until PUBACKs come back: a wave's alerts, receipts and states behind a burst of
    reports waited for round trips, and left a few at a time. The broker's CONNACK says
    how many it takes (mosquitto: its ``max_inflight_messages``; 65,535 when absent,
    MQTT 5 3.2.2.3.3); more would be a protocol error.
    """
    paho = client._client
    on_connect = paho.on_connect  # aiomqtt's
    assert on_connect is not None

    def connected(*args: Any) -> None:  # (client, userdata, flags, reason code, properties)
        properties = args[4] if len(args) > 4 else None
        # paho's setter refuses once connected; at the CONNACK nothing is in flight yet
        # (a clean session), and the window only ever holds a positive number.
        paho._max_inflight_messages = max(1, getattr(properties, "ReceiveMaximum", 65535))
        on_connect(*args)

    paho.on_connect = connected


# A PUBACK with nothing but its packet id (MQTT 3.1.1, and MQTT 5 success without
# properties, 3.4.2.1) says what these say; paho only passes them on, so they are shared.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
# The reason codes without properties that are shared likewise (MQTT 5): success, and "no
# matching subscribers", mosquitto's answer to a message nobody subscribes to (a state
# nobody watches, an assignment for a phone that is away; in benchmarks/load_test.py,
# which watches only alerts, every assignment and state: over half the PUBACKs).
_PUBACK_REASONS = {
    0x00: _PUBACK_SUCCESS,
    0x10: ReasonCode(PacketTypes.PUBACK, identifier=0x10),
}


def _acknowledge_quickly(client: aiomqtt.Client, *, v5: bool) -> None:
    """Handle each PUBACK of ours in a few microseconds instead of 16 (or far more).

    The engine publishes a QoS 1 message for every alert, assignment and state: some
    2,000 a second at the design load, each acknowledged. paho decodes every PUBACK into
    a fresh reason code and properties (some 8 µs), and then walks every message still
    unacknowledged to send any it held back for the in-flight window: quadratic when
    a burst is in flight (2,000 unacknowledged took 0.2 ms for each PUBACK), and never
    useful here, since `_follow_receive_maximum` opens the window as far as the broker
    takes. Both only when there is nothing else to do: a PUBACK carrying properties or
    a reason code other than success or "no matching subscribers", or messages that
    were held back, go through paho's own code.
    """
    paho = client._client
    decode_and_handle = paho._handle_pubackcomp
    send_held_back = paho._update_inflight

    def handle_pubackcomp(cmd: Literal["PUBACK", "PUBCOMP"]) -> Any:
        if cmd != "PUBACK" or not _take_puback(paho, paho._in_packet["packet"], v5=v5):
            return decode_and_handle(cmd)
        return MQTT_ERR_SUCCESS

    def update_inflight() -> Any:
        # Every message waiting for its PUBACK counts in flight: none is held back.
        if len(paho._out_messages) <= paho._inflight_messages:
            return MQTT_ERR_SUCCESS
        return send_held_back()

    paho._handle_pubackcomp = handle_pubackcomp  # type: ignore[method-assign]
    paho._update_inflight = update_inflight  # type: ignore[method-assign]


def _take_puback(paho: Any, body: bytes | bytearray, *, v5: bool) -> bool:
    """A PUBACK's ``body`` (its packet id, and with MQTT 5 perhaps a reason code and
    properties) handled as paho's own handler would, if it is one of the plain kinds
    (success, or "no matching subscribers", without properties); False for any other,
    which paho must decode."""
    size = len(body)
    reason: ReasonCode | None = None
    if size == 2:
        reason = _PUBACK_SUCCESS
    elif v5 and (size == 3 or (size == 4 and body[3] == 0)):  # no properties
        reason = _PUBACK_REASONS.get(body[2])
    if reason is None:
        return False
    mid = (body[0] << 8) | body[1]
    with paho._out_message_mutex:
        message = paho._out_messages.get(mid)
        if message is None:
            pass  # not ours (paho ignores it too)
        elif type(message.info) is _Sent:  # nobody waits for it: paho's accounting only
            del paho._out_messages[mid]
            paho._inflight_messages -= 1
            if len(paho._out_messages) > paho._inflight_messages:
                paho._update_inflight()  # send what the in-flight window held back
        else:
            paho._do_on_publish(mid, reason, _NO_PROPERTIES)
    return True


class _Sent(MQTTMessageInfo):
    """What paho keeps of a message `_publish_quickly` queued. Nobody waits for it, so
    it has no ``threading.Condition`` (paho makes one per message: a fifth of its
    publish); paho's own code may still mark it published."""

    __slots__ = ()

    def __init__(self, mid: int) -> None:  # unlike MQTTMessageInfo's: no Condition
        self.mid = mid
        self._published = False
        self.rc = MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        self._published = True


def _publish_quickly(
    paho: Any,
    topic: str,
    payload: bytes,
    retain: bool,
    properties: Properties | None,
    *,
    v5: bool,
) -> MQTTErrorCode | None:
    """A QoS 1 PUBLISH queued as paho's ``publish`` queues it, in a third of the time
    (about 2,000 a second at the design load); None if it is not one this handles (a
    topic paho would refuse, no connection, a full queue): paho's own ``publish`` then
    does, and says what is wrong.

    paho validates and logs each message, makes a lock and a condition for whoever
    might wait for it, and packs it field by field. Here the topic is checked as paho
    checks it, the packet is built in one go, and paho keeps the same record of it
    (``_out_messages``, the in-flight count, its packet queue), so that its own code
    (held back by the in-flight window, acknowledged with properties, written) treats
    it as one of its own. ``properties``: MQTT 5 only.
    """
    encoded = topic.encode()
    if not encoded or len(encoded) > 65535 or b"+" in encoded or b"#" in encoded:
        return None
    if paho._sock is None or len(payload) > 268_435_455:
        return None
    with paho._out_message_mutex:
        limit = paho._max_queued_messages
        if limit > 0 and len(paho._out_messages) >= limit:
            return None
        mid = paho._mid_generate()
        if mid in paho._out_messages:
            return None
        message = MQTTMessage.__new__(MQTTMessage)  # its __init__ makes a MQTTMessageInfo
        message.timestamp = paho_clock()
        message.dup = False
        message.mid = mid
        message.topic = encoded  # bytes, as paho stores it
        message.payload = payload
        message.qos = 1
        message.retain = retain
        message.info = _Sent(mid)
        message.properties = properties
        paho._out_messages[mid] = message
        window = paho._max_inflight_messages
        if window and paho._inflight_messages >= window:
            message.state = mqtt_ms_queued  # sent by paho when a PUBACK frees the window
            return MQTT_ERR_SUCCESS
        paho._inflight_messages += 1
        message.state = mqtt_ms_wait_for_puback
        if not v5:
            packed = b""
        elif properties is None:
            packed = b"\x00"  # no properties: their length, 0
        else:
            packed = properties.pack()  # type: ignore[no-untyped-call]
        command = PUBLISH | 0x02 | retain  # QoS 1
        length = 4 + len(encoded) + len(packed) + len(payload)
        packet = b"".join(
            (
                bytes((command,)),
                VariableByteIntegers.encode(length),  # type: ignore[no-untyped-call]
                len(encoded).to_bytes(2, "big"),
                encoded,
                mid.to_bytes(2, "big"),
                packed,
                payload,
            )
        )
        # As paho's own: the packet type alone (it tells a QoS 0 PUBLISH when written).
        return paho._packet_queue(PUBLISH, packet, mid, 1, message.info)  # type: ignore[no-any-return]


def _read_pubacks_ahead(paho: Any, buffered: _BufferedSocket, *, v5: bool) -> None:
    """Take the PUBACKs already read ahead in ``buffered`` before paho reads a packet.

    paho reads every packet in three or four ``recv`` calls and a dozen steps of its
    own, a PUBACK too (about 2,000 a second at the design load, nine in ten of the
    engine's incoming packets). At a packet boundary, the whole plain PUBACKs at the
    head of what was read ahead are handled here, four to six bytes each, with paho's
    own bookkeeping (`_take_puback`, and the time bytes were last received, which its
    keepalive reads); anything else, and a PUBACK not yet wholly read, is left to paho.
    """
    read_packet = paho._packet_read

    def take(body: bytes) -> bool:
        return _take_puback(paho, body, v5=v5)

    def packet_read() -> Any:
        if paho._in_packet["command"] == 0 and buffered.take_pubacks(take):
            with paho._msgtime_mutex:
                paho._last_bytes_received = paho_clock()
        return read_packet()

    paho._packet_read = packet_read


class _Expiry(Properties):
    """A PUBLISH's message expiry interval, packed once.

    paho packs a message's properties each time it sends one, walking every property
    name MQTT 5 has (some 8 µs, a few percent of the engine's time at the design load);
    these never change once made.
    """

    _packed: bytes

    def __init__(self, seconds: int) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.MessageExpiryInterval = seconds
        # Properties takes only property names as attributes: this one is set around it.
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        return self._packed


class _BufferedSocket:
    """A socket whose small reads are served from one large one, and whose small writes
    leave together.

    paho reads each packet with three or four ``recv`` calls (its type, each byte of its
    length, its body): a system call each, 12 % of the engine's time under a herd. This
    takes up to 64 KiB at a time and hands paho the pieces.

    paho writes each packet with a ``send`` of its own, and aiomqtt has the loop watch
    the socket for each burst (a wake-up through the loop's self-pipe, two ``epoll_ctl``):
    for a report's alerts, receipt and state, some 15 system calls, 11 % of the engine's
    time at the design load (py-spy). Here ``send`` only appends to a buffer, which
    `flush` hands to the kernel in one call once paho has written everything waiting;
    what the kernel does not take yet leaves when the socket is writable, in order
    before anything written after it.

    Everything else is the socket's own.
    """

    __slots__ = ("_broken", "_buf", "_loop", "_out", "_pos", "_sock", "_watching")

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        broken: Callable[[Exception], None],
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._broken = broken  # told when a write finds the connection broken
        self._buf = b""
        self._pos = 0
        self._out = bytearray()
        self._watching = False  # waiting for the socket to be writable

    @property
    def buffered(self) -> int:
        """Bytes read ahead and not yet handed over."""
        return len(self._buf) - self._pos

    def recv(self, size: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = self._sock.recv(max(size, 65536))  # BlockingIOError when none waits
            pos = 0
            self._buf = buf
            if not buf:  # closed by the peer
                self._pos = 0
                return b""
        end = min(pos + size, len(buf))
        self._pos = end
        return buf[pos:end]

    def take_pubacks(self, take: Callable[[bytes], bool]) -> int:
        """Hand ``take`` the body of each whole PUBACK at the head of what was read
        ahead (its remaining length in one byte, 2-4), while it takes them; how many."""
        buf, pos = self._buf, self._pos
        end = len(buf)
        taken = 0
        while pos + 4 <= end and buf[pos] == 0x40 and 2 <= buf[pos + 1] <= 4:
            stop = pos + 2 + buf[pos + 1]
            if stop > end or not take(buf[pos + 2 : stop]):
                break
            pos = stop
            taken += 1
        self._pos = pos
        return taken

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self._out += data
        return len(data)

    def flush(self) -> None:
        """Hand what was written to the kernel; what it does not take yet waits for the
        socket to be writable. Raises OSError when the connection is broken."""
        if not self._out or self._watching:
            return  # nothing to write, or behind what is waiting already
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            sent = 0
        del self._out[:sent]
        if self._out:
            self._watching = True
            self._loop.add_writer(self._sock.fileno(), self._writable)

    def _writable(self) -> None:
        self._watching = False
        self._loop.remove_writer(self._sock.fileno())
        try:
            self.flush()
        except OSError as exc:
            self._broken(exc)

    def close(self) -> None:
        # paho closes right after writing its DISCONNECT: let it leave if it can.
        if self._watching:
            self._watching = False
            self._loop.remove_writer(self._sock.fileno())
        if self._out:
            with contextlib.suppress(OSError):
                self._sock.send(self._out)
            self._out.clear()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one is done.

    Python 3.11's asyncio.wait_for (inside aiomqtt) can swallow a cancellation that races
    with its own completion: whatever is still running is cancelled again, each second.
    """
    for task in tasks:
        task.cancel()
    while pending := [t for t in tasks if not t.done()]:
        await asyncio.wait(pending, timeout=1.0)
        for task in pending:
            task.cancel()


def _nothing() -> None:
    pass


def _never(_topic: str) -> bool:
    return False


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()
