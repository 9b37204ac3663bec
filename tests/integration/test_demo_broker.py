"""The demo's throwaway Mosquitto (dispatch/localservers.py) is locked to this machine and
refuses oversized packets (issue 18, item 7)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import servers

from dispatch import localservers


@pytest.fixture(scope="module")
def demo_broker() -> Iterator[tuple[str, int | None]]:
    if localservers.find_binary("mosquitto") is None:
        servers.skip_or_fail("no mosquitto binary: the demo broker tests need one")
    server, url, ws_port = localservers.start_mosquitto()
    try:
        yield url, ws_port
    finally:
        server.stop()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp, tcp6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, _, hex_port = fields[1].partition(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # LISTEN
                    found.add(address)
    return found


def test_both_listeners_bind_loopback_only(demo_broker: tuple[str, int | None]) -> None:
    url, ws_port = demo_broker
    if ws_port is None:
        servers.skip_or_fail("this mosquitto has no websockets support")
    _, port = servers.parse_mqtt_url(url)
    loopback_v4 = "0100007F"  # 127.0.0.1, as /proc/net/tcp writes it
    assert _listening_addresses(port) == {loopback_v4}
    assert _listening_addresses(ws_port) == {loopback_v4}, "websockets bound beyond loopback"


async def test_an_oversized_packet_is_refused(
    demo_broker: tuple[str, int | None], topic_root: str
) -> None:
    url, _ = demo_broker
    topic = f"{topic_root}/big"
    async with servers.mqtt_client(url) as sub:
        await sub.subscribe(topic, qos=1)
        with contextlib.suppress(aiomqtt.MqttError):
            async with servers.mqtt_client(url) as pub:
                await pub.publish(topic, b"x" * 70_000, qos=1, timeout=3)
        async with servers.mqtt_client(url) as pub:
            await pub.publish(topic, b"small", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(sub.messages))
    assert message.payload == b"small"  # the 70 KB one never came through
