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
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from dispatch.errors import BackendUnavailable
from dispatch.wire import Publish

__all__ = ["Bus"]


log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]
BatchHandler = Callable[[list[tuple[str, bytes]]], Awaitable[None]]

# The most messages handed over at once. It bounds how long the service's lock is held
# for a run of locations (some 60 µs each): a report from the other connection waits for
# at most one run (about 2 ms), while the per-message overhead is still shared by 32.
_MAX_BATCH = 32


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
        self._expiry_properties: dict[int, Properties] = {}

    def _make_client(self) -> aiomqtt.Client:
        v5 = self.protocol == 5
        return aiomqtt.Client(
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

    async def run(self, handle: Handler, *, handle_batch: BatchHandler | None = None) -> None:
        """Stay connected and feed every inbound message to ``handle``, until cancelled.

        With ``handle_batch``, whatever else is already waiting in the client's queue is
        handed over with the message, in arrival order (up to ``_MAX_BATCH``): one await
        for a burst of locations instead of one each.
        """
        backoff = 0.2
        while True:
            try:
                async with self._make_client() as client:
                    for topic, qos in self.subscriptions:
                        await client.subscribe(topic, qos, timeout=10)
                    self._client = client
                    log.info(
                        "connected to MQTT broker %s:%s as %s", self.host, self.port, self.client_id
                    )
                    if self.on_connect is not None:
                        await self.on_connect()
                    self.ready.set()
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

    def _properties(self, message: Publish) -> Properties | None:
        if message.expiry_s is None or self.protocol != 5:
            return None
        # Building one costs about 20 µs (a few per alert); paho only reads them (packs them
        # when sending), so one per expiry is shared.
        properties = self._expiry_properties.get(message.expiry_s)
        if properties is None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = message.expiry_s
            self._expiry_properties[message.expiry_s] = properties
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
        info = client._client.publish(
            message.topic, message.payload, message.qos, message.retain, self._properties(message)
        )
        if info.rc != MQTT_ERR_SUCCESS:
            raise BackendUnavailable("mqtt", f"publish to {message.topic} failed (rc {info.rc})")

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


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()
