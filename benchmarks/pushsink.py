"""A stand-in Web Push service for load tests: accepts every push, counts it, and notes
when it came, in a thread of its own (the load test's own loop stays free).

The engine takes ``http://127.0.0.1`` endpoints only with ``[push] allow_loopback``
(tests and load tests; production endpoints are https:// on real push services). Each
volunteer's endpoint is ``http://127.0.0.1:<port>/push/<volunteer id>``; the sink
answers 201 as push services do, after ``delay_s`` (a push service's own latency).

    sink = PushSink(delay_s=0.05).start()
    ...  # register sink.subscription(vid) for each volunteer, run the load
    sink.received, sink.times  # pushes taken, and when (time.time())
    sink.stop()
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["PushSink"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class PushSink:
    """The push service every simulated browser subscribed with."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.port = 0
        self.received = 0
        self.bytes = 0
        self.times: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._up = threading.Event()
        # One browser key pair for all: the engine encrypts for each subscription anyway.
        key = ec.generate_private_key(ec.SECP256R1())
        self._p256dh = _b64(
            key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        self._auth = _b64(b"load-test-auth!!")

    def subscription(self, volunteer_id: str) -> dict[str, Any]:
        """What a browser would publish on ``volunteers/{vid}/push``."""
        return {
            "endpoint": f"http://127.0.0.1:{self.port}/push/{volunteer_id}",
            "keys": {"p256dh": self._p256dh, "auth": self._auth},
        }

    async def _push(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.received += 1
        self.bytes += len(body)
        self.times.append(time.time())
        return web.Response(status=201)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/push/{vid}", self._push)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        loop.run_until_complete(web.SockSite(runner, sock).start())
        self._runner = runner
        self._up.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def start(self) -> PushSink:
        self._thread = threading.Thread(target=self._serve, name="push-sink", daemon=True)
        self._thread.start()
        if not self._up.wait(10):
            raise RuntimeError("the push sink did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
