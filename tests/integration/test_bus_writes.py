"""What the bus writes: everything published in one turn of the event loop leaves in one
system call (the engine used to make one per message, and three more per burst to have
the loop watch the socket), in order, whatever the kernel takes at a time (issue 16)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.client import MQTT_ERR_SUCCESS, MQTTMessage

from dispatch.bus import (
    Bus,
    _acknowledge_quickly,
    _BufferedSocket,
    _Expiry,
    _publish_quickly,
    _read_pubacks_ahead,
    _take_puback,
)
from dispatch.wire import Publish


class _CountingSocket:
    """A real socket that counts its ``send`` calls (a spy: everything else is its own)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.sends = 0

    def send(self, data: bytes | bytearray) -> int:
        self.sends += 1
        return int(self._sock.send(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@contextlib.asynccontextmanager
async def publishing_bus(mqtt_url: str, client_id: str) -> AsyncIterator[Bus]:
    """An MQTT 5 bus that subscribes to nothing, connected (``ready``), for publishing."""
    bus = Bus(mqtt_url, client_id=client_id, subscriptions=[], protocol=5)

    async def unused(_topic: str, _payload: bytes) -> None:  # pragma: no cover
        raise AssertionError("nothing is subscribed")

    task = asyncio.create_task(bus.run(unused))
    try:
        await asyncio.wait_for(bus.ready.wait(), 10)
        assert bus._client is not None
        yield bus
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_burst_of_publishes_leaves_in_order_in_a_few_writes(
    mqtt_url: str, topic_root: str
) -> None:
    count = 2000
    got: list[bytes] = []
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    async with publishing_bus(mqtt_url, f"writes-{topic_root}") as bus:
        assert bus._client is not None
        buffered = bus._client._client._sock
        assert isinstance(buffered, _BufferedSocket)
        spy = _CountingSocket(buffered._sock)
        buffered._sock = spy  # type: ignore[assignment]
        async with aiomqtt.Client(host, int(port)) as listener:
            await listener.subscribe(f"{topic_root}/#", qos=1)
            for i in range(count):  # one turn of the loop, as the engine's effects
                expiry = 60 if i % 2 else None  # with MQTT 5 properties and without
                bus.send(Publish(f"{topic_root}/n", b"%d" % i, qos=1, expiry_s=expiry))
            async with asyncio.timeout(20):
                async for message in listener.messages:
                    assert isinstance(message.payload, bytes)
                    got.append(message.payload)
                    if len(got) == count:
                        break
        assert got == [b"%d" % i for i in range(count)]
        # As many in flight as the broker said it takes (its CONNACK's Receive Maximum:
        # the shipped settings say 1,000), not paho's 20.
        window = bus._client._client._max_inflight_messages
        assert window == await _receive_maximum(host, int(port))
        # A write per window's worth (more if the kernel took one in parts), against one
        # per message before; the broker's PUBACKs came back on the same socket meanwhile.
        assert spy.sends <= 2 * (count // window + 1) + 4, (spy.sends, window)
        assert not buffered._out


async def _receive_maximum(host: str, port: int) -> int:
    """What the broker's CONNACK says it takes in flight from an MQTT 5 client."""
    said: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    client = aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5)
    paho = client._client
    on_connect = paho.on_connect

    def connected(*args: Any) -> None:
        said.set_result(getattr(args[4], "ReceiveMaximum", 65535))
        on_connect(*args)

    paho.on_connect = connected
    async with client:
        return await said


def _pair(send_buffer: int) -> tuple[socket.socket, socket.socket]:
    writer, reader = socket.socketpair()
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, send_buffer)
    writer.setblocking(False)
    reader.setblocking(False)
    return writer, reader


async def test_what_the_kernel_does_not_take_leaves_when_it_can_in_order() -> None:
    loop = asyncio.get_running_loop()
    writer, reader = _pair(4096)
    broken: list[Exception] = []
    buffered = _BufferedSocket(writer, loop, broken.append)
    chunks = [bytes([i % 251]) * 1000 for i in range(2000)]  # 2 MB, far over the buffers
    try:
        for chunk in chunks[:1000]:
            assert buffered.send(chunk) == len(chunk)
        buffered.flush()
        assert buffered._watching  # the rest waits for the socket to be writable
        for chunk in chunks[1000:]:  # written meanwhile: after what waits
            buffered.send(chunk)
        buffered.flush()  # behind what waits: nothing leaves ahead of it
        received = bytearray()
        async with asyncio.timeout(20):
            while len(received) < 2_000_000:
                received += await loop.sock_recv(reader, 65536)
        assert bytes(received) == b"".join(chunks)
        assert not buffered._out
        assert not buffered._watching
        assert broken == []
    finally:
        buffered.close()
        reader.close()


async def test_a_write_to_a_closed_connection_is_reported_as_broken() -> None:
    loop = asyncio.get_running_loop()
    writer, reader = _pair(4096)
    broken: list[Exception] = []
    told = asyncio.Event()

    def on_broken(exc: Exception) -> None:
        broken.append(exc)
        told.set()

    buffered = _BufferedSocket(writer, loop, on_broken)
    try:
        buffered.send(b"x" * 1_000_000)
        buffered.flush()
        assert buffered._watching
        reader.close()  # the peer goes while the rest waits
        await asyncio.wait_for(told.wait(), 10)
        assert isinstance(broken[0], BrokenPipeError | ConnectionResetError)
        buffered.send(b"y")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):  # the next one too
            buffered.flush()
    finally:
        buffered.close()


async def test_nothing_is_read_while_the_engine_waits_for_redis(
    mqtt_url: str, topic_root: str
) -> None:
    """`Bus.not_reading`: what arrives during a hold waits in the socket, then comes in
    order; holds nest, and a hold ends cleanly even when taken before the connection."""
    got: list[bytes] = []
    all_in = asyncio.Event()
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    bus = Bus(
        mqtt_url,
        client_id=f"hold-{topic_root}",
        subscriptions=[(f"{topic_root}/#", 1)],
        protocol=4,
    )

    async def handle(_topic: str, payload: bytes) -> None:
        got.append(payload)
        if len(got) == 100:
            all_in.set()

    early = bus.not_reading()
    early.__enter__()  # before the bus is connected: holds from its first read
    task = asyncio.create_task(bus.run(handle))
    try:
        await asyncio.wait_for(bus.ready.wait(), 10)
        async with aiomqtt.Client(host, int(port)) as sender:
            for i in range(50):
                await sender.publish(f"{topic_root}/n", b"%d" % i, qos=1)
            await asyncio.sleep(0.3)
            assert got == []
            with bus.not_reading():  # nested: still held when the first ends
                early.__exit__(None, None, None)
                for i in range(50, 100):
                    await sender.publish(f"{topic_root}/n", b"%d" % i, qos=1)
                await asyncio.sleep(0.3)
                assert got == []
            await asyncio.wait_for(all_in.wait(), 10)
        assert got == [b"%d" % i for i in range(100)]
        assert bus._reading_held == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_service_holds_the_reading_only_while_behind() -> None:
    """Holding costs two system calls a wait: only worth it behind a backlog."""
    from dispatch.config import load_config
    from dispatch.service import Service

    service = Service(load_config(env={}))
    bus = service.inbound_bus or service.bus
    with service._while_waiting():
        assert bus._reading_held == 0
    bus._behind = True
    with service._while_waiting():
        assert bus._reading_held == 1
    assert bus._reading_held == 0


async def test_every_puback_is_taken_and_a_reason_code_still_reaches_paho(
    mqtt_url: str, topic_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PUBACKs of success skip paho's decoding (`_acknowledge_quickly`); a burst larger
    than the broker's window still leaves whole, the messages held back (by paho, though
    `_publish_quickly` queued them) going out as acknowledgements come in; mosquitto's
    "no matching subscribers" (MQTT 5) reaches paho with its reason code, without
    decoding either."""
    from paho.mqtt import _packet

    decoded: list[int] = []
    decode_puback = _packet.decode_puback

    def counting(*args: Any) -> Any:
        result = decode_puback(*args)
        decoded.append(int(result.reason.value))
        return result

    monkeypatch.setattr(_packet, "decode_puback", counting)
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    async with publishing_bus(mqtt_url, f"pubacks-{topic_root}") as bus:
        assert bus._client is not None
        paho = bus._client._client
        reasons: list[int] = []
        on_publish = paho._do_on_publish

        def recording(mid: int, reason: Any, properties: Any) -> Any:
            reasons.append(int(reason.value))
            return on_publish(mid, reason, properties)

        monkeypatch.setattr(paho, "_do_on_publish", recording)
        window = paho._max_inflight_messages
        count = 2 * window + 100
        got = 0
        async with aiomqtt.Client(host, int(port)) as listener:
            await listener.subscribe(f"{topic_root}/acked", qos=1)
            for i in range(count):
                bus.send(Publish(f"{topic_root}/acked", b"%d" % i, qos=1, expiry_s=60))
            assert len(paho._out_messages) > paho._inflight_messages  # some held back
            async with asyncio.timeout(20):
                async for _message in listener.messages:
                    got += 1
                    if got == count:
                        break
            # Its PUBACK comes after every earlier one (in order, on one connection).
            await asyncio.wait_for(bus.publish(Publish(f"{topic_root}/acked", b"last", qos=1)), 10)
        assert got == count
        assert paho._inflight_messages == 0
        assert decoded == []  # every PUBACK said only "received": none decoded
        # What `Bus.send` queued itself (`_publish_quickly`) is acknowledged without
        # paho's callbacks (nobody waits for it); aiomqtt's publish still gets its own.
        assert reasons == [0]
        # Nobody subscribes here: mosquitto answers with reason code 0x10, which reaches
        # paho as it is, and aiomqtt's publish (which waits for the PUBACK) returns.
        await asyncio.wait_for(bus.publish(Publish(f"{topic_root}/nobody", b"x", qos=1)), 10)
        assert reasons[-1] == 0x10
        assert decoded == []
        assert not paho._out_messages


@pytest.mark.parametrize(
    ("v5", "packet", "reason", "by_paho"),
    [
        (True, b"\x00\x07", 0x00, False),  # success: the packet id alone
        (True, b"\x00\x07\x10", 0x10, False),  # no matching subscribers
        (True, b"\x00\x07\x00\x00", 0x00, False),  # success, empty properties
        (True, b"\x00\x07\x87", 0x87, True),  # not authorized: paho's own
        (True, b"\x00\x07\x10\x03\x1f\x00\x00", 0x10, True),  # with properties
        (False, b"\x00\x07", 0x00, False),  # MQTT 3.1.1
    ],
)
async def test_a_puback_is_decoded_by_paho_unless_it_says_only_received(
    v5: bool, packet: bytes, reason: int, by_paho: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paho.mqtt import _packet

    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    client = aiomqtt.Client("127.0.0.1", 1, protocol=version)  # never connected
    _acknowledge_quickly(client, v5=v5)
    paho = client._client
    decoded: list[bytes] = []
    decode_puback = _packet.decode_puback

    def counting(header: int, raw: bytes, protocol: Any) -> Any:
        decoded.append(bytes(raw))
        return decode_puback(header, raw, protocol)

    monkeypatch.setattr(_packet, "decode_puback", counting)
    taken: list[tuple[int, int]] = []
    monkeypatch.setattr(paho, "_do_on_publish", lambda mid, rc, _p: taken.append((mid, rc.value)))
    paho._out_messages[7] = MQTTMessage(7)  # paho's own publish, waiting for its PUBACK
    paho._in_packet = {"command": 0x40, "packet": bytearray(packet)}
    paho._handle_pubackcomp("PUBACK")
    assert taken == [(7, reason)]
    assert decoded == ([packet] if by_paho else [])


async def test_pubacks_read_ahead_are_taken_before_paho_reads_a_packet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At a packet boundary the whole plain PUBACKs already read ahead are taken at once
    (`_read_pubacks_ahead`); the first of a read, a PUBACK paho must decode, one split
    across reads and every other packet stay paho's, in order."""
    client = aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5)  # not connected
    _acknowledge_quickly(client, v5=True)
    paho = client._client
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    buffered = _BufferedSocket(ours, asyncio.get_running_loop(), lambda _exc: None)
    paho._sock = buffered
    _read_pubacks_ahead(paho, buffered, v5=True)
    taken: list[tuple[int, int]] = []
    monkeypatch.setattr(paho, "_do_on_publish", lambda mid, rc, _p: taken.append((mid, rc.value)))
    reads: list[int] = []
    decode = paho._handle_pubackcomp
    monkeypatch.setattr(paho, "_handle_pubackcomp", lambda cmd: reads.append(1) or decode(cmd))
    for mid in range(1, 8):
        paho._out_messages[mid] = MQTTMessage(mid)  # paho's own publish, waiting
    paho._last_bytes_received = 0.0
    try:
        broker.sendall(
            b"\x40\x02\x00\x01"  # read by paho: nothing was read ahead yet
            b"\x40\x02\x00\x02"  # taken ahead
            b"\x40\x03\x00\x03\x10"  # no matching subscribers: taken ahead
            b"\x40\x03\x00\x04\x87"  # not authorized: paho decodes it
            b"\x40\x02\x00\x05"  # taken ahead
            b"\x40\x02\x00"  # PUBACK 6, not whole yet
        )
        paho._packet_read()
        assert taken == [(1, 0)]
        assert len(reads) == 1
        paho._packet_read()
        assert taken == [(1, 0), (2, 0), (3, 0x10), (4, 0x87)]
        assert len(reads) == 2
        assert paho._last_bytes_received > 0.0  # paho's keepalive sees bytes coming in
        paho._packet_read()  # 5 taken ahead; paho starts on the part of 6 and waits
        assert taken[-1] == (5, 0)
        assert len(taken) == 5
        broker.sendall(b"\x06\x40\x02\x00\x07")
        paho._packet_read()  # 6 finished by paho, which read 7 ahead with it
        paho._packet_read()
        assert taken[5:] == [(6, 0), (7, 0)]
        assert len(reads) == 3
        assert not buffered.buffered
    finally:
        ours.close()
        broker.close()


@pytest.mark.parametrize("v5", [True, False])
async def test_a_message_queued_quickly_is_what_paho_would_queue(v5: bool) -> None:
    """`_publish_quickly` builds each QoS 1 PUBLISH itself: byte for byte paho's, with
    or without properties and retain, whatever the length of its remaining length; paho
    keeps the same record of it, a PUBACK takes it off, and one held back by the
    in-flight window is sent by paho itself when a PUBACK frees the window."""
    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    client = aiomqtt.Client("127.0.0.1", 1, protocol=version)  # never connected
    _acknowledge_quickly(client, v5=v5)
    paho = client._client
    ours, theirs = socket.socketpair()
    paho._sock = ours  # "connected": nothing is written, packets are only queued
    queued: list[tuple[int, bytes, int]] = []
    paho._packet_queue = lambda command, packet, mid, qos, info: (
        queued.append((command, bytes(packet), mid)) or MQTT_ERR_SUCCESS
    )
    expiry = _Expiry(60) if v5 else None
    cases = [
        ("dispatch/volunteers/v1/alert", b'{"alert_id":"a1"}', False, expiry),
        ("dispatch/incidents/inc-1/state", b"x" * 200, True, None),  # 2-byte length
        ("dispatch/\u6d4b\u8bd5/\u706b", b"y" * 20_000, False, expiry),  # 3 bytes; UTF-8
        ("dispatch/empty", b"", True, None),
    ]
    for topic, payload, retain, properties in cases:
        rc = _publish_quickly(paho, topic, payload, retain, properties, v5=v5)
        assert rc == MQTT_ERR_SUCCESS
        mine = queued.pop()
        message = paho._out_messages[mine[2]]
        assert (message.topic, message.payload, message.qos, message.retain) == (
            topic,
            payload,
            1,
            retain,
        )
        # paho's own packing of the same message, with the same packet id
        paho._send_publish(mine[2], topic.encode(), payload, 1, retain, False, None, properties)
        assert queued.pop() == mine
    assert paho._inflight_messages == len(cases)
    # Topics paho refuses are left to paho's publish, which says why.
    for bad in ("dispatch/+/x", "dispatch/#", ""):
        assert _publish_quickly(paho, bad, b"x", False, None, v5=v5) is None
    # A PUBACK takes a message off, without paho's callbacks.
    first = next(iter(paho._out_messages))
    assert _take_puback(paho, first.to_bytes(2, "big"), v5=v5)
    assert first not in paho._out_messages
    assert paho._inflight_messages == len(cases) - 1
    # The window full: held back, then sent by paho once a PUBACK frees it.
    paho._max_inflight_messages = paho._inflight_messages
    assert _publish_quickly(paho, "dispatch/held", b"later", False, expiry, v5=v5) == 0
    assert queued == []
    held = max(paho._out_messages)
    paho._send_publish(held, b"dispatch/held", b"later", 1, False, False, None, expiry)
    expected = queued.pop()
    assert _take_puback(paho, next(iter(paho._out_messages)).to_bytes(2, "big"), v5=v5)
    assert queued == [expected]
    assert paho._inflight_messages == paho._max_inflight_messages
    paho._sock = None
    ours.close()
    theirs.close()
