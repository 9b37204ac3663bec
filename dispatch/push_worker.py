"""A push worker: takes the Web Push of alerts off the engine's core.

``dispatch pusher`` (docs/deployment.md, "Push workers"), with ``[push] separate = true``
in the engine's config. Encrypting and posting one push costs about as much loop time as
a dispatch decision (benchmarks/bench_push.py); at the design load with every
volunteer's browser registered that is 800 pushes a second, which the engine's one core
cannot add to dispatching (benchmarks/RESULTS.md). N pushers share the engine's alerts
as they leave for the phones, through a shared subscription (``$share/<group>/<root>/
volunteers/+/alert``: the broker hands each alert to one of them), and push each one as
the engine would have (`dispatch.push.Pusher`: the same queue, workers, keys from Redis,
subscriptions, metrics). The engine then only publishes.

An alert reaches a pusher as soon as the broker has it, after the engine stored and
published it; a pusher that dies loses the pushes it held (the alerts went out over
MQTT anyway), and the broker gives its share to the others. Its figures (`PushMetrics`:
the engine's ``dispatch_push_*`` and the process's) and `health` are served on ``[push]
metrics_http`` (``--metrics-http``) as /metrics and /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from dispatch.bus import Bus, cancel_all
from dispatch.codec import Codec
from dispatch.config import Config
from dispatch.metrics import PushMetrics
from dispatch.push import Pusher
from dispatch.store import Store
from dispatch.wire import read_alert

__all__ = ["PushWorker"]

log = logging.getLogger(__name__)

_STATS_S = 60.0  # how often a pusher logs what it did


class PushWorker:
    """One pusher: a shared subscription to the engine's alerts in, Web Pushes out."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        metrics: PushMetrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.codec = Codec(root=config.topic_root)
        self.store = store if store is not None else Store.from_config(config)
        self.metrics = metrics or PushMetrics()
        self.pusher = Pusher(config, self.store, self.codec, self.metrics, clock)
        self.filter = f"$share/{config.push_group}/{self.codec.topic('volunteers', '+', 'alert')}"
        instance = config.instance or f"{random.getrandbits(32):08x}"
        self.bus = Bus(
            config.mqtt_url,
            client_id=f"dispatch-pusher-{config.topic_root}-{instance}"[:64],
            # QoS 1: an alert the broker handed over is not lost on the way here.
            subscriptions=[(self.filter, 1)],
            keepalive=config.mqtt_keepalive_s,
        )
        self.received = 0  # alerts taken from the broker
        self.unreadable = 0  # of those, not alerts as the engine writes them

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while connected to the broker with the push keys loaded."""
        broker = self.bus.ready.is_set()
        keys = self.pusher.keys is not None
        return broker and keys, {
            "broker": broker,
            "keys": keys,
            "received": self.received,
            "queued": self.pusher.queue.qsize(),
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self.bus.run(self.on_alert), name="mqtt"),
                tg.create_task(self.pusher.run(), name="push"),
                tg.create_task(self._stats_forever(), name="stats"),
            ]
            await stop.wait()
            await cancel_all(tasks)
        self._log_stats()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store.close(), 2)
        log.info("stopped")

    async def on_alert(self, topic: str, payload: bytes) -> None:
        """One alert, queued to be pushed; never raises for a bad one."""
        self.received += 1
        try:
            alert = read_alert(self.codec, topic, payload, self.clock())
        except ValueError as exc:
            self.unreadable += 1
            log.warning("not pushed: %s", exc)
            return
        self.pusher.alert(alert)

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(_STATS_S)
            self._log_stats()

    def _log_stats(self) -> None:
        log.info(
            "received %d alerts (%d unreadable), %d waiting to be pushed",
            self.received,
            self.unreadable,
            self.pusher.queue.qsize(),
        )
