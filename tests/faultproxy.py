"""A TCP proxy on loopback that injects network faults between the engine and a backend.

Put it between the engine and the broker or Redis (point the engine at ``proxy.port``)
and switch its mode at any time, from any thread:

- ``pass``: forward both ways;
- ``delay``: forward both ways, each chunk ``delay_ms`` late (order kept);
- ``cut``: close every connection, and close new ones at once (a crashed peer, a
  firewall sending resets);
- ``hang``: keep every connection open, accept new ones, but forward nothing (a
  partition, a frozen peer): only keepalives and timeouts can notice this.

It runs its own asyncio loop in a daemon thread, so synchronous tests can use it.
Usage::

    with FaultProxy.running("127.0.0.1", redis_port) as proxy:
        ... engine --redis redis://127.0.0.1:{proxy.port} ...
        proxy.set_mode("hang")
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "delay", "cut", "hang"]
_CHUNK = 65536


class _Link:
    """One client connection and its upstream connection."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ):
        self.proxy = proxy
        self.client_reader, self.client_writer = reader, writer
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.proxy.target_host, self.proxy.target_port
            )
        except OSError:
            self.client_writer.close()
            return
        self.up_writer = up_writer
        self.tasks = [
            asyncio.create_task(self._pump(self.client_reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, self.client_writer)),
        ]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A bounded queue between reading and writing: while hung, reading stops once it
        # is full and TCP flow control holds the rest (memory stays bounded).
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

        async def read() -> None:
            while True:
                await self.proxy._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    await queue.put((0.0, b""))
                    return
                await queue.put((time.monotonic(), data))

        reading = asyncio.create_task(read())
        try:
            while True:
                at, data = await queue.get()
                if not data:
                    return
                delay = self.proxy.delay_ms / 1000.0
                if delay > 0:
                    await asyncio.sleep(max(0.0, at + delay - time.monotonic()))
                await self.proxy._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            reading.cancel()

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for w in (self.client_writer, getattr(self, "up_writer", None)):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self.proxy._links.discard(self)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "pass"
        self.delay_ms = 0.0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )

    @classmethod
    @contextlib.contextmanager
    def running(cls, target_host: str, target_port: int) -> Iterator[FaultProxy]:
        proxy = cls(target_host, target_port)
        proxy.start()
        try:
            yield proxy
        finally:
            proxy.close()

    @property
    def connections(self) -> int:
        return len(self._links)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        link = _Link(self, reader, writer)
        self._links.add(link)
        await link.run()

    def set_mode(self, mode: Mode, delay_ms: float = 0.0) -> None:
        """Switch mode now (thread-safe); returns once the switch has happened."""
        assert mode in ("pass", "delay", "cut", "hang"), mode

        async def switch() -> None:
            self.mode = mode
            self.delay_ms = delay_ms if mode == "delay" else 0.0
            if mode == "hang":
                self._flowing.clear()
            else:
                self._flowing.set()
            if mode == "cut":
                for link in list(self._links):
                    link.close()

        asyncio.run_coroutine_threadsafe(switch(), self._loop).result(5)

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self._loop.close()
