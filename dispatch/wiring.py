"""The composition root: builds the engine's objects and hands each its collaborators.

A single engine is a `Service` with the single-instance ports (dispatch/engine.py's
`Alone`). Several instances (``[cluster] enabled``) are the same service with a fenced
store and a `Cluster` plugged into its ports: a different set of collaborators, not
branches in the code that uses them. `serve` adds the HTTP port and, with ``[postgres]
url``, the archiver (dispatch/archiver.py) as a task of its own beside the engine;
`archive` runs the archiver alone (``dispatch archive``), `run_gateway` a location gateway
(``dispatch gateway``), `run_pusher` a push worker (``dispatch pusher``), each with its
/metrics on ``metrics_http``. The command line (dispatch/cli.py), the demo and the tests
start the engine through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from dispatch.archive import Archive
from dispatch.archiver import Archiver
from dispatch.cluster import Cluster, FencedStore
from dispatch.config import Config
from dispatch.gateway import Gateway
from dispatch.metrics import Metrics
from dispatch.push_worker import PushWorker
from dispatch.service import Service
from dispatch.store import Store
from dispatch.web import archiver_app, listen, make_app, metrics_app
from geo.area import ServiceArea

__all__ = ["archive", "build", "build_archiver", "run_gateway", "run_pusher", "serve"]

log = logging.getLogger("dispatch")


def build(
    config: Config, *, clock: Callable[[], float] = time.time, area: ServiceArea | None = None
) -> Service:
    """The engine ``config`` describes, not yet connected to anything."""
    if not config.cluster_enabled:
        return Service(config, clock=clock, area=area)
    store = FencedStore.from_config(config)
    service = Service(config, store=store, clock=clock, area=area)
    service.share(
        Cluster(
            service.engine,
            store,
            config,
            instance=service.instance,
            redeliver=service.on_message,
            ready=service.bus.ready,
        )
    )
    return service


def build_archiver(config: Config, metrics: Metrics | None = None) -> Archiver:
    """The archiver ``config`` describes (``[postgres] url`` set), on Redis connections
    of its own: it never waits for, or takes, the connections dispatch uses. ``metrics``:
    the engine's, when it runs beside the engine (its figures on ``/metrics``)."""
    return Archiver(
        Store.from_config(config),
        Archive(config.postgres_url, timeout_s=config.postgres_timeout_s),
        consumer=config.instance or "archiver",
        batch=config.postgres_batch,
        retry_s=config.postgres_retry_s,
        reclaim_idle_s=max(30.0, 10 * config.postgres_timeout_s),
        metrics=metrics,
    )


async def archive(config: Config, stop: asyncio.Event) -> None:
    """The archiver alone, until ``stop`` is set (``dispatch archive``); with ``[postgres]
    metrics_http``, its /metrics and /healthz on that port."""
    address = config.postgres_metrics_http
    metrics = Metrics() if address else None
    archiver = build_archiver(config, metrics)
    app = archiver_app(archiver, metrics) if metrics is not None else None
    try:
        async with _serving(app, address, config, "archive"):
            await archiver.run(stop)
    finally:
        await archiver.archive.close()
        await archiver.store.close()


@contextlib.asynccontextmanager
async def _serving(
    app: web.Application | None, address: str, config: Config, who: str
) -> AsyncIterator[None]:
    """``app`` (a `metrics_app`) served on ``address`` (HOST:PORT) while inside; nothing
    when ``app`` is None."""
    if app is None:
        yield
        return
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = address.rpartition(":")
    try:
        server = await listen(runner, host.strip("[]"), int(port), config.header_timeout_s)
    except OSError:
        await runner.cleanup()
        raise
    log.info("%s: metrics on http://%s/metrics", who, address)
    try:
        yield
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.cleanup(), 5)


async def run_gateway(config: Config, stop: asyncio.Event) -> None:
    """One location gateway, until ``stop`` is set (``dispatch gateway``); with ``[gateway]
    metrics_http``, its /metrics and /healthz on that port."""
    if not config.gateway_enabled:
        log.warning(
            "this config has [gateway] enabled = false: an engine started with it reads "
            "locations itself and ignores this gateway's batches (positions are still "
            "stored); set [gateway] enabled = true (DISPATCH_GATEWAY_ENABLED=true) for both"
        )
    await _beside(Gateway(config), "location gateway", config.gateway_metrics_http, config, stop)


async def run_pusher(config: Config, stop: asyncio.Event) -> None:
    """One push worker, until ``stop`` is set (``dispatch pusher``); with ``[push]
    metrics_http``, its /metrics and /healthz on that port."""
    if not config.push_separate:
        log.warning(
            "this config has [push] separate = false: an engine started with it pushes its "
            "alerts itself, and this pusher would push them a second time; set [push] "
            "separate = true (DISPATCH_PUSH_SEPARATE=true) for both"
        )
    await _beside(PushWorker(config), "push worker", config.push_metrics_http, config, stop)


async def _beside(
    worker: Gateway | PushWorker, what: str, address: str, config: Config, stop: asyncio.Event
) -> None:
    """A process beside the engine (a gateway, a pusher), until ``stop`` is set; with a
    metrics ``address``, its /metrics and /healthz there."""
    log.info(
        "%s on %s (MQTT %s, topic root '%s')",
        what,
        worker.filter,
        config.mqtt_url.split("@")[-1],
        config.topic_root,
    )
    app = metrics_app(worker.metrics.render, worker.health) if address else None
    async with _serving(app, address, config, what):
        await worker.run(stop)


async def serve(config: Config, stop: asyncio.Event) -> None:
    """The engine and its HTTP port (and the archiver), until ``stop`` is set."""
    service = build(config)
    archiver = build_archiver(config, service.metrics) if config.postgres_url else None
    runner = web.AppRunner(
        make_app(service, archiver.archive if archiver is not None else None),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2,
        # A kept-alive connection waiting for its next request this long is closed, as is
        # one that has not sent its first request's headers (web.HeaderDeadline).
        keepalive_timeout=config.header_timeout_s,
    )
    await runner.setup()
    server = await listen(runner, config.http_host, config.http_port, config.header_timeout_s)
    log.info(
        "serving http://%s:%s (MQTT %s, topic root '%s')",
        config.http_host,
        config.http_port,
        config.mqtt_url.split("@")[-1],
        config.topic_root,
    )
    if not config.operator_token:
        log.warning(
            "operator actions are off (the control room can only watch): no operator token "
            "is configured; set DISPATCH_HTTP_OPERATOR_TOKEN or [http] operator_token to "
            "turn them on"
        )
    archiving = (
        None if archiver is None else asyncio.create_task(archiver.run(stop), name="archiver")
    )
    try:
        await service.run(stop)
    finally:
        if archiving is not None and archiver is not None:
            # Whatever it was writing is not acknowledged yet: it is done again next time.
            archiving.cancel()
            # An archiver that failed has said why (logged); the engine still stops cleanly.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await archiving
            await archiver.archive.close()
            await archiver.store.close()
        server.close()
        # Open event streams are cut after the runner's 2 s grace; never hang on exit.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runner.cleanup(), 5)
