"""The HTTP layer (aiohttp): the control-room page, the JSON API, events, health, metrics.

Errors are JSON ``{"error": ...}`` with a 4xx status that says what to fix. Operator
actions need ``Authorization: Bearer <operator token>``; reading needs the read token
only when one is configured (the event stream also takes it as ``?access_token=``,
since a browser's EventSource cannot send headers). Nothing here decides anything: it
calls the service, and the pure ``dispatch.coverage`` for the map and the figures.
The page itself is static (``dispatch/static/``) and uses nothing but this API; every
route is described in docs/api.md.

With several instances (``[cluster] enabled``) every instance answers for every
incident: it reads incidents from Redis and has operator actions carried out by the
incident's owner (dispatch/cluster.py); a single engine reads its own core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from dispatch import coverage
from dispatch.archive import Archive
from dispatch.archiver import Archiver
from dispatch.codec import format_time, parse_time
from dispatch.dispatcher import BadMerge, Incident, UnknownIncident, UnknownVolunteer
from dispatch.errors import BackendUnavailable, BadMessage, InvalidTransition, OwnerUnavailable
from dispatch.lifecycle import State
from dispatch.metrics import Metrics
from dispatch.model import is_valid_id
from dispatch.push_routes import PushRoutes
from dispatch.record_routes import Records
from dispatch.service import Service
from dispatch.store import Store, StoredEvent
from geo.gazetteer import Gazetteer

__all__ = ["EventHub", "HeaderDeadline", "listen", "make_app"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_MAX_BODY = 64 * 1024
_FIGURES_LIMIT = 20_000  # incidents read for one request of figures
STATIC_DIR = Path(__file__).resolve().parent / "static"
# Coverage and figures are computed on request and kept this long: cheap, yet live.
_CACHE_S = 3.0
# "Today" for the figures is the operators' day: China Standard Time has no DST.
_LOCAL_TZ = timezone(timedelta(hours=8), "CST")
# The event hub's blocking read must return well within the Redis client's 5 s socket
# timeout, or the read would fail as a timeout.
_EVENTS_BLOCK_MS = 3_000
_KEEPALIVE_S = 3.0  # a comment line on every quiet event stream this often
# Everything the web layer reads from Redis goes through a store of its own with at
# most this many connections: readers wait for one of them, and can never take the
# connections dispatch needs (issue 18: 150 idle event streams stopped dispatch).
_READER_CONNECTIONS = 8
# A listener this many events behind the hub is dropped (a slow or stalled client): its
# browser reconnects with Last-Event-ID and catches up from the log.
_LISTENER_QUEUE = 2_000
_WRITE_TIMEOUT_S = 10.0  # one write to a listener that does not read ends its stream
# The most events replayed to a listener that comes back with Last-Event-ID. Further
# behind (Last-Event-ID: 0 asks for the whole log), it gets the newest ones and an
# ``event: reset`` first, saying that it should reload the list.
_REPLAY_MAX = 500
# Lists are paged: ?limit= (default, most) and ?offset=.
_PAGE_DEFAULT = 200
_PAGE_MAX = 1_000
# The address search (GET /api/places?q=): a query of at most this many characters, at
# most this many answers, each client this many searches a second (bursts of twice
# that; typing sends one every ~150 ms), over the gazetteer and the addresses of the
# incidents reported in the last _RECENT_S, at most _RECENT_MAX of them, read from
# Redis at most every _RECENT_REFRESH_S.
_PLACES_QUERY_MAX = 64
_PLACES_DEFAULT = 8
_PLACES_MAX = 20
_PLACES_PER_S = 10.0
_RECENT_S = 7 * 86_400
_RECENT_MAX = 500
_RECENT_REFRESH_S = 30.0


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _merge_args(body: dict[str, Any], kwargs: dict[str, Any]) -> str | None:
    """A merge's body, ``{"into": id, "other_kind": bool}``, into ``kwargs``; or what is
    wrong with it."""
    unknown = sorted(set(body) - {"into", "other_kind", "by"})
    if unknown:
        return f"field '{unknown[0][:40]}' is not known; a merge takes 'into', 'other_kind', 'by'"
    into = body.get("into")
    if not is_valid_id(into):
        return (
            "'into' is required: the id of the incident to merge into "
            "(1-64 characters of A-Z a-z 0-9 _ -)"
        )
    other_kind = body.get("other_kind", False)
    if not isinstance(other_kind, bool):
        return "'other_kind' must be true or false (true: merge incidents of different kinds)"
    kwargs["into"], kwargs["other_kind"] = into, other_kind
    return None


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    """``{"error": message}``; ``code``, where given, is a stable name for a page to
    translate (the message is English for people reading the API)."""
    body = {"error": message} if code is None else {"error": message, "code": code}
    return _json(body, status)


def make_app(service: Service, archive: Archive | None = None) -> web.Application:
    """The HTTP app of ``service``; reports from ``archive`` when there is one."""
    c = service.config
    hosts = _HostCheck(c.allowed_hosts)
    app = web.Application(
        client_max_size=_MAX_BODY, middlewares=[hosts.middleware, _errors_as_json]
    )
    reader = Store.from_url(
        c.redis_url,
        prefix=f"{c.topic_root}:",
        timeout_s=c.redis_timeout_s,
        health_check_s=c.redis_health_check_s,
        max_connections=_READER_CONNECTIONS,
    )
    api = _Api(service, reader, EventHub(reader, c.max_event_listeners))
    app.cleanup_ctx.append(api.lifetime)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/incidents", api.list_incidents)
    app.router.add_post("/api/incidents", api.report)
    app.router.add_get("/api/incidents/{iid}", api.get_incident)
    app.router.add_patch("/api/incidents/{iid}", api.amend)
    for action in ("cancel", "resolve", "escalate", "assign", "merge"):
        app.router.add_post(f"/api/incidents/{{iid}}/{action}", api.action(action))
    app.router.add_get("/api/events", api.events)
    app.router.add_get("/api/area", api.area)
    app.router.add_get("/api/volunteers", api.volunteers)
    app.router.add_get("/api/coverage", api.coverage)
    app.router.add_get("/api/figures", api.figures)
    app.router.add_get("/api/places", api.places)
    app.router.add_get("/api/map", api.map_settings)
    # The record (dispatch/record_routes.py): reports over ended incidents, CAP export.
    records = Records(service, reader, archive, api.check_read)
    app.router.add_get("/api/report", records.report)
    app.router.add_get("/api/report/misses", records.misses)
    app.router.add_get("/report", records.page)
    app.router.add_get("/api/incidents/{iid}/cap", records.cap)
    # Web Push and the installable volunteer app (dispatch/push_routes.py).
    PushRoutes(service).add_to(app)
    app.router.add_get("/", api.index)
    app.router.add_get("/volunteer", api.volunteer_page)
    app.router.add_get("/api/volunteer-app", api.volunteer_app)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(exc.status, exc.reason or "error")
        raise
    except BackendUnavailable as exc:
        return _error(503, f"the engine cannot reach {exc}; try again shortly")


class _HostCheck:
    """The Host header must be an IP address or one of ``http.allowed_hosts``.

    A hostile web page can point a name of its own at 127.0.0.1 (DNS rebinding) and
    then read the engine's API from the victim's browser as "same origin"; the request
    still carries the hostile name in Host, and is refused here with 421.
    """

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = frozenset(allowed)

    def ok(self, host_header: str | None) -> bool:
        if not host_header:
            return True  # HTTP/1.0 without Host: no browser sends that
        host = host_header.strip().lower()
        if host.startswith("["):  # [v6]:port
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return host.rstrip(".") in self.allowed

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.ok(request.headers.get("Host")):
            host = request.headers.get("Host", "")[:100]
            return _error(
                421,
                f"this engine does not serve the host name {host!r}; use its address, or "
                "add the name to http.allowed_hosts (DISPATCH_HTTP_ALLOWED_HOSTS)",
            )
        return await handler(request)


class _Listener:
    """One event stream's place at the hub: a bounded queue, dropped when it overflows."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StoredEvent | None] = asyncio.Queue(_LISTENER_QUEUE)
        self.dropped = False


class EventHub:
    """One Redis reader for every event stream, however many are open.

    Each listener used to hold a blocking XREAD of its own, on the engine's own
    connection pool. The hub reads once (on the web layer's capped store) and hands
    every event to each listener's bounded queue without waiting; a listener too slow
    to keep up is dropped, never waited for. At most ``max_listeners`` at once.
    """

    def __init__(self, store: Store, max_listeners: int) -> None:
        self.store = store
        self.max_listeners = max_listeners
        self.listeners: set[_Listener] = set()
        self._task: asyncio.Task[None] | None = None

    async def join(self) -> _Listener | None:
        """A new listener receiving every event logged from now on; None when full."""
        if len(self.listeners) >= self.max_listeners:
            return None
        listener = _Listener()
        self.listeners.add(listener)
        if self._task is None or self._task.done():
            try:
                # Where the hub starts is read before the caller's own catch-up, so that
                # nothing falls between the two.
                start = await self.store.last_event_id()
            except BaseException:
                self.listeners.discard(listener)
                raise
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(start), name="event-hub")
        return listener

    def leave(self, listener: _Listener) -> None:
        self.listeners.discard(listener)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, last: str) -> None:
        try:
            while self.listeners:
                events = await self.store.events_after(last, count=500, block_ms=_EVENTS_BLOCK_MS)
                for event in events:
                    for listener in list(self.listeners):
                        try:
                            listener.queue.put_nowait(event)
                        except asyncio.QueueFull:
                            listener.dropped = True
                            self.listeners.discard(listener)
                    last = event.event_id
        except BackendUnavailable as exc:
            # Redis went away: end every stream; browsers reconnect with Last-Event-ID.
            log.info("event streams ended: %s", exc)
            for listener in list(self.listeners):
                listener.dropped = True
                with contextlib.suppress(asyncio.QueueFull):
                    listener.queue.put_nowait(None)
            self.listeners.clear()


class HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's protocol: a connection whose request headers are not complete
    within ``timeout_s`` of connecting is closed (slow-header clients hold no slot).

    Later requests on a kept-alive connection are bounded by aiohttp's keep-alive
    timeout, which closes a connection that is waiting for a request.
    """

    def __init__(self, inner: Any, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def listen(runner: web.AppRunner, host: str, port: int, header_timeout_s: float) -> Any:
    """Serve ``runner`` on host:port, every connection under a ``HeaderDeadline``.

    Instead of aiohttp's TCPSite, whose protocol factory cannot be wrapped; close the
    returned server before ``runner.cleanup()``.
    """
    server = runner.server
    assert server is not None, "call runner.setup() first"
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HeaderDeadline(server(), header_timeout_s), host, port, reuse_address=True
    )


class _Api:
    def __init__(self, service: Service, reader: Store, hub: EventHub) -> None:
        self.service = service
        self.reader = reader  # every read from Redis (see _READER_CONNECTIONS)
        self.hub = hub
        self.config = service.config
        self._coverage_lock = asyncio.Lock()
        # The heavier reads (pages of incidents, details, figures, replays) run at most
        # this many at a time. The loop they share with dispatch runs whatever is ready
        # in turn: eighteen pages being built at once put a report behind all of their
        # pieces (~100 ms); two at a time, behind at most two.
        self._heavy = asyncio.Semaphore(2)
        # ... and while they are all taken, each client (by address) gets so many a second:
        # a client that asks for the biggest pages without pause is told to slow down
        # (429) instead of keeping the loop busy. The control room asks for far fewer, and
        # nobody is refused while the heavy reads are not contended.
        self._budgets = _ClientBudgets(service.config.heavy_reads_per_s, service.clock)
        # (computed at, answer) by query; see _CACHE_S
        self._coverage: dict[str, tuple[float, dict[str, Any]]] = {}
        self._figures: dict[float, tuple[float, dict[str, Any]]] = {}
        # The address search: the gazetteer (checked when the config was loaded), the
        # addresses of recent reports (newest first: address, lat, lon) and when they
        # were read, and its own per-client budget.
        c = service.config
        self.gazetteer = Gazetteer.from_csv(c.area_gazetteer) if c.area_gazetteer else Gazetteer(())
        self._recent: list[tuple[str, float, float]] = []
        self._recent_at = -math.inf
        self._recent_lock = asyncio.Lock()
        self._search_budgets = _ClientBudgets(_PLACES_PER_S, service.clock)

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        yield
        await self.hub.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reader.close(), 2)

    # ---------------------------------------------------------------- auth

    def _check(
        self, request: web.Request, token: str, what: str, query_ok: bool = False
    ) -> web.Response | None:
        if not token:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if not header and query_ok and request.query.get("access_token"):
            scheme, given = "bearer", request.query["access_token"]
        if scheme.lower() != "bearer" or not given:
            return _error(401, f"{what} needs 'Authorization: Bearer <token>'", "token_missing")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _error(403, f"the token is not valid for {what}", "token_invalid")
        return None

    async def _too_many(self, request: web.Request) -> web.Response | None:
        """429 when the heavy reads are contended and this client has used up its share
        for now (see _ClientBudgets)."""
        wait_s = self._budgets.take(request.remote or "")
        if wait_s is None or not self._heavy.locked():
            return None
        # The answer itself waits (up to a second): a client that asks again at once, on
        # many connections, then costs a sleeping task each, not a loop of refusals.
        await asyncio.sleep(min(wait_s, 1.0))
        return web.json_response(
            {
                "error": f"too many large reads from this client (at most "
                f"{self._budgets.rate:g} a second); try again in {wait_s:.1f} s",
                "code": "too_many_requests",
            },
            status=429,
            headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
        )

    def _check_read(self, request: web.Request, query_ok: bool = False) -> web.Response | None:
        token = self.config.read_token
        if (
            token
            and self.config.operator_token
            and self._check(request, self.config.operator_token, "reading", query_ok) is None
        ):
            return None  # the operator may read too
        return self._check(request, token, "reading", query_ok)

    def check_read(self, request: web.Request, query_ok: bool) -> web.Response | None:
        """The read check, for the routes other modules serve (dispatch/record_routes.py)."""
        return self._check_read(request, query_ok)

    def _check_operator(self, request: web.Request) -> web.Response | None:
        if not self.config.operator_token:
            # Not the caller's fault and no token would help: say how to turn them on.
            return _error(
                403,
                "operator actions are disabled: no operator token is configured "
                "(set DISPATCH_HTTP_OPERATOR_TOKEN or [http] operator_token and restart)",
                "operator_disabled",
            )
        return self._check(request, self.config.operator_token, "operator actions")

    # ---------------------------------------------------------------- health

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        s = self.service
        checks = {
            "broker": s.bus.ready.is_set(),
            "redis": s.redis_ok,
            "restored": s.restored.is_set(),
        }
        return _json({"ready": s.ready, **checks}, 200 if s.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.service.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def area(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request)) is not None:
            return denied
        return _json(self.service.area.to_geojson())

    async def index(self, request: web.Request) -> web.StreamResponse:
        # The page holds no data: it is public, and asks for a token when the API does.
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    # ---------------------------------------------------------------- the volunteer app

    async def volunteer_page(self, request: web.Request) -> web.StreamResponse:
        # Public like "/": the page talks to the broker, which checks the volunteer.
        return web.FileResponse(
            STATIC_DIR / "volunteer.html", headers={"Cache-Control": "no-cache"}
        )

    async def volunteer_app(self, request: web.Request) -> web.Response:
        """Where the volunteer page finds the broker; public, it tells nothing secret."""
        c = self.config
        return _json(
            {
                "mqtt_ws_url": c.volunteer_ws_url or None,
                "mqtt_ws_port": c.volunteer_ws_port,
                "mqtt_protocol": c.mqtt_protocol,
                "topic_root": c.topic_root,
                "open_broker": c.volunteer_open_broker,
                "arrival_radius_m": c.policy.arrival_radius_m,
                "skills": sorted({s for k in c.kinds.values() for s in k.skills}),
                # [control_room] phone: the page's call button (none when not configured)
                "control_room_phone": c.control_room_phone or None,
            }
        )

    # ---------------------------------------------------------------- places and the base map

    async def map_settings(self, request: web.Request) -> web.Response:
        """The control room's base map ([map]): no tiles unless the deployment has some."""
        if (denied := self._check_read(request)) is not None:
            return denied
        c = self.config
        return _json(
            {
                "tile_url": c.map_tile_url or None,
                "tile_attribution": c.map_tile_attribution or None,
                "tile_max_zoom": c.map_tile_max_zoom,
            }
        )

    async def places(self, request: web.Request) -> web.Response:
        """``GET /api/places``: every gazetteer place (the map's names); ``?q=`` searches
        the gazetteer and the addresses of recent reports, best first (the report form)."""
        if (denied := self._check_read(request)) is not None:
            return denied
        wait_s = self._search_budgets.take(request.remote or "")
        if wait_s is not None:
            return web.json_response(
                {
                    "error": f"too many place searches from this client (at most "
                    f"{_PLACES_PER_S:g} a second); try again in {wait_s:.1f} s",
                    "code": "too_many_requests",
                },
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        query = request.query.get("q")
        if query is None:
            return _json({"places": [p.to_json() for p in self.gazetteer.places]})
        if len(query) > _PLACES_QUERY_MAX or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in query):
            return _error(
                400,
                f"'q' must be at most {_PLACES_QUERY_MAX} characters, without control characters",
            )
        try:
            limit = _int_param(request, "limit", _PLACES_DEFAULT, 1, _PLACES_MAX)
        except ValueError as exc:
            return _error(400, str(exc))
        found: list[dict[str, Any]] = [
            {**p.to_json(), "source": "gazetteer"} for p in self.gazetteer.search(query, limit)
        ]
        words = query.casefold().split()
        if words and len(found) < limit:
            names = {f["name"].casefold() for f in found}
            for address, lat, lon in await self._recent_addresses():
                folded = address.casefold()
                if folded in names or not all(w in folded for w in words):
                    continue
                names.add(folded)
                found.append({"name": address, "lat": lat, "lon": lon, "source": "incident"})
                if len(found) >= limit:
                    break
        return _json({"places": found})

    async def _recent_addresses(self) -> list[tuple[str, float, float]]:
        """Addresses of the open incidents and of those reported lately, newest first,
        each once; read from Redis at most every _RECENT_REFRESH_S."""
        now = self.service.clock()
        async with self._recent_lock:
            if now - self._recent_at >= _RECENT_REFRESH_S:
                async with self._heavy:
                    ids = await self.reader.reported_since(now - _RECENT_S, limit=20_000)
                    records = await self.reader.incidents(ids[-_RECENT_MAX:])
                self._recent = _addresses(
                    (r.get("reported_at", 0.0), r.get("address"), r.get("lat"), r.get("lon"))
                    for r in records
                )
                self._recent_at = now
            recent = self._recent
        # What this process holds is fresher (a report of a moment ago); with several
        # instances it holds nothing, and the addresses come from Redis alone.
        live = _addresses(
            (i.reported_at, i.address, i.lat, i.lon)
            for i in self.service.reads.held().values()
            if i.ended_at is None
        )
        return live + recent

    # ---------------------------------------------------------------- the map and figures

    async def volunteers(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request)) is not None:
            return denied
        core = self.service.core
        return _json(
            {
                "coarse_m": coverage.COARSE_M,
                "available": core.available,
                "volunteers": coverage.volunteer_view(core, now=self.service.clock()),
            }
        )

    async def coverage(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request) or await self._too_many(request)) is not None:
            return denied
        skill = request.query.get("skill", "")
        if skill and not is_valid_id(skill):
            return _error(400, "'skill' must be 1-64 characters of A-Z a-z 0-9 _ -")
        async with self._coverage_lock:  # one computation at a time, whoever asks
            now = self.service.clock()
            cached = self._coverage.get(skill)
            if cached is not None and now - cached[0] < _CACHE_S:
                return _json(cached[1])
            core = self.service.core
            # The snapshot is taken on the loop (cheap); the work runs in a thread on it
            # alone, so a request never holds the loop that dispatch runs on for long.
            fleet = coverage.coverage_fleet(core, (skill,) if skill else ())
            cells = await asyncio.to_thread(
                coverage.coverage_of, fleet, self.service.area.cells, core
            )
            reached = [c for c in cells if c.within_target]
            body = {
                "computed_at": format_time(now),
                "target_s": core.policy.target_s,
                "radius_m": core.policy.max_radius_m,
                "coarse_m": coverage.COARSE_M,
                "skill": skill or None,
                "available": core.available,
                "cells_within_target": len(reached),
                "cells_total": len(cells),
                "cells": [c.to_json() for c in cells],
            }
            if len(self._coverage) >= 16:  # any valid id may be asked for: keep it small
                self._coverage.clear()
            self._coverage[skill] = (now, body)
        return _json(body)

    async def figures(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request)) is not None:
            return denied
        now = self.service.clock()
        raw = request.query.get("since")
        if raw is None:
            local = datetime.fromtimestamp(now, _LOCAL_TZ)
            since = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        else:
            try:
                since = _parse_since(raw)
            except ValueError as exc:
                return _error(400, f"'since' must be an RFC 3339 time or Unix seconds: {exc}")
        cached = self._figures.get(since)
        if cached is not None and now - cached[0] < _CACHE_S:
            return _json(cached[1])
        if (busy := await self._too_many(request)) is not None:
            return busy
        async with self._heavy:
            return await self._figures_now(since, now)

    async def _figures_now(self, since: float, now: float) -> web.Response:
        core = self.service.core
        ids = await self.reader.reported_since(since, limit=_FIGURES_LIMIT)
        live = self.service.reads.held()
        stored = await self.reader.incidents([i for i in ids if i not in live])
        # Up to 20,000 records: read in a thread, off the loop dispatch runs on.
        incidents = [live[i] for i in ids if i in live] + await asyncio.to_thread(
            lambda: [Incident.from_record(r) for r in stored]
        )
        open_now = await self.service.reads.open_incidents()
        body = {
            "since": format_time(since),
            "computed_at": format_time(now),
            "target_s": core.policy.target_s,
            **coverage.figures(incidents, target_s=core.policy.target_s, now=now),
            "truncated": len(ids) >= _FIGURES_LIMIT,
            "open": len(open_now),
            "escalated": sum(1 for i in open_now if i.state is State.ESCALATED),
            "available_volunteers": core.available,
            # on duty but not alertable now: phone offline; over budget or quiet hours
            **{f"{k}_volunteers": n for k, n in core.duty_counts().items()},
        }
        self._figures = {since: (now, body)}  # one day at a time is all the page asks for
        return _json(body)

    # ---------------------------------------------------------------- incidents

    async def list_incidents(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request) or await self._too_many(request)) is not None:
            return denied
        async with self._heavy:
            return await self._list_incidents(request)

    async def _list_incidents(self, request: web.Request) -> web.Response:
        core = self.service.core
        try:
            limit = _int_param(request, "limit", _PAGE_DEFAULT, 1, _PAGE_MAX)
            offset = _int_param(request, "offset", 0, 0, 10_000_000)
        except ValueError as exc:
            return _error(400, str(exc))
        # Read before the incidents: a page that opens the event stream from this id
        # misses nothing that changed after its snapshot.
        last_event_id = await self.reader.last_event_id()
        state_filter = request.query.get("state")
        if state_filter is not None and state_filter not in {s.value for s in State}:
            allowed = ", ".join(s.value for s in State)
            return _error(400, f"unknown state '{state_filter}'; use one of {allowed}")
        since = request.query.get("since")
        more = False
        if since is not None:
            try:
                since_ts = _parse_since(since)
            except ValueError as exc:
                return _error(400, f"'since' must be an RFC 3339 time or Unix seconds: {exc}")
            # Oldest first, one page: the rest with offset=next_offset.
            ids = await self.reader.reported_page(since_ts, offset, limit + 1)
            more = len(ids) > limit
            records = await self.reader.incidents(ids[:limit])
            incidents = [Incident.from_record(r) for r in records]
        else:  # every instance's, not only ours
            incidents = await self.service.reads.open_incidents()
        if state_filter is not None:
            incidents = [i for i in incidents if i.state.value == state_filter]
        incidents.sort(key=lambda i: (i.priority, i.reported_at, i.id))
        if since is None:  # open incidents, most urgent first, one page
            more = len(incidents) > offset + limit
            incidents = incidents[offset : offset + limit]
        return _json(
            {
                "incidents": [_with_subdistrict(core.public_state(i), i) for i in incidents],
                "last_event_id": last_event_id,
                "server_time": format_time(self.service.clock()),
                "next_offset": offset + limit if more else None,
                # the page says so at once, instead of asking for a token that cannot work
                "operator_actions": bool(self.config.operator_token),
            }
        )

    async def get_incident(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request) or await self._too_many(request)) is not None:
            return denied
        async with self._heavy:
            return await self._get_incident(request)

    async def _get_incident(self, request: web.Request) -> web.Response:
        iid = request.match_info["iid"]
        with_events = request.query.get("events") not in ("0", "false")
        body = await self._incident_body(iid, with_events)
        if body is None:
            return _error(404, f"no incident with id '{iid}'")
        return _json(body)

    async def _incident_body(self, iid: str, with_events: bool) -> dict[str, Any] | None:
        """One incident as ``GET /api/incidents/{iid}`` shows it; None if unknown."""
        incident = self.service.reads.held().get(iid)
        if incident is None:
            record = await self.reader.incident(iid) if is_valid_id(iid) else None
            if record is None:
                return None
            incident = Incident.from_record(record)
        body = _with_subdistrict(self.service.core.public_state(incident), incident)
        body["address"] = incident.address
        body["description"] = incident.description
        body["times"] = {
            "reported_at": format_time(incident.reported_at),
            "received_at": format_time(incident.received_at),
            "first_alert_at": _t(incident.first_alert_at),
            "first_accept_at": _t(incident.first_accept_at),
            "first_arrival_at": _t(incident.first_arrival_at),
            "escalated_at": _t(incident.escalated_at),
            "ended_at": _t(incident.ended_at),
        }
        body["alerts"] = [
            {
                "alert_id": a.alert_id,
                "volunteer_id": a.volunteer_id,
                "wave": a.wave,
                "status": a.status.value,
                "sent_at": format_time(a.sent_at),
                "expires_at": format_time(a.expires_at),
                "answered_at": _t(a.answered_at),
                "distance_m": round(a.distance_m, 1),
                "eta_s": round(a.eta_s, 1),
            }
            for a in incident.alerts.values()
        ]
        if not with_events:
            return body  # the page's quick refetch after an event: no history scan
        events = await self.reader.incident_events(iid, limit=_PAGE_MAX)
        body["events"] = [
            {"id": e.event_id, "type": e.type, "at": format_time(e.at), **e.data} for e in events
        ]
        return body

    async def amend(self, request: web.Request) -> web.Response:
        """``PATCH /api/incidents/{iid}`` (protocol 1.1): change an open incident; the
        answer is the incident as ``GET`` shows it."""
        if (denied := self._check_operator(request)) is not None:
            return denied
        iid = request.match_info["iid"]
        try:
            changes, by = self.service.codec.decode_amendment_body(
                await request.read(), topic=f"PATCH /api/incidents/{iid}"
            )
        except BadMessage as err:
            status = 413 if err.code == "too_large" else 422 if err.code == "outside_area" else 400
            return _error(status, err.reason, err.code)
        by = "operator" if by is None else by
        if not by or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in by):
            return _error(
                400, "'by' must be the operator's name: non-empty, without control characters"
            )
        try:  # carried out by the incident's owner, wherever it runs
            await self.service.operators.operator("amend", iid, by=by[:64], changes=changes)
        except UnknownIncident:
            return _error(404, f"no open incident with id '{iid}'")
        except InvalidTransition as exc:
            return _error(
                409,
                f"incident '{iid}' is {exc.from_state}: an ended incident cannot be amended; "
                "report a new incident instead",
                "incident_ended",
            )
        except OwnerUnavailable as exc:
            return _error(503, str(exc))
        body = await self._incident_body(iid, with_events=True)
        if body is None:  # pragma: no cover - it was just amended
            return _error(404, f"no incident with id '{iid}'")
        return _json(body)

    async def report(self, request: web.Request) -> web.Response:
        if (denied := self._check_operator(request)) is not None:
            return denied
        now = self.service.clock()
        try:
            report = self.service.codec.decode_report_body(
                await request.read(), now, topic="POST /api/incidents"
            )
        except BadMessage as err:
            self.service.metrics.rejected.labels(reason=err.code).inc()
            status = 413 if err.code == "too_large" else 422 if err.code == "outside_area" else 400
            return _error(status, err.reason)
        # Several instances: through the work stream, as from MQTT.
        outcome, known_id = await self.service.intake.submit(report, await request.read(), now)
        incident_id = known_id or report.id
        if outcome.status == "conflict":
            return _error(
                409,
                f"incident id '{report.id}' was already reported with a different body; "
                "use a new id for a new incident",
            )
        if outcome.status == "pending":  # being stored by another engine right now
            return _json({"id": incident_id, "status": "pending"}, 202)
        return _json(outcome.state, 201 if outcome.status == "created" else 200)

    def action(self, name: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            if (denied := self._check_operator(request)) is not None:
                return denied
            iid = request.match_info["iid"]
            kwargs: dict[str, Any] = {}
            raw = await request.read()
            body: Any = {}
            if raw.strip():
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return _error(400, "the body must be a JSON object (or empty)")
                if not isinstance(body, dict):
                    return _error(400, "the body must be a JSON object (or empty)")
            if name == "assign":
                vid = body.get("volunteer_id")
                if not is_valid_id(vid):
                    return _error(
                        400, "'volunteer_id' is required: 1-64 characters of A-Z a-z 0-9 _ -"
                    )
                kwargs["volunteer_id"] = vid
            # duplicate reports (docs/protocol.md)
            if name == "merge" and (problem := _merge_args(body, kwargs)) is not None:
                return _error(400, problem)
            if name == "escalate" and isinstance(body.get("reason"), str):
                kwargs["reason"] = body["reason"][:500]  # free text: escaped when logged
            by = body.get("by") if isinstance(body.get("by"), str) else "operator"
            if not by or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in by):
                return _error(
                    400, "'by' must be the operator's name: non-empty, without control characters"
                )
            try:  # carried out by the incident's owner, wherever it runs
                state = await self.service.operators.operator(name, iid, by=by[:64], **kwargs)
            except UnknownIncident as exc:
                if name == "merge" and exc.args and exc.args[0] == kwargs["into"] != iid:
                    return _error(404, f"no incident with id '{kwargs['into']}' to merge into")
                return _error(404, f"no open incident with id '{iid}'")
            except UnknownVolunteer:
                return _error(404, f"no volunteer with id '{kwargs.get('volunteer_id')}' is known")
            except BadMerge as exc:
                status = 400 if exc.code == "merge_into_itself" else 409
                return _error(status, str(exc), exc.code)
            except InvalidTransition as exc:
                return _error(409, f"cannot {name} incident '{iid}': {exc}")
            except OwnerUnavailable as exc:
                return _error(503, str(exc))
            return _json(state)

        return handle

    # ---------------------------------------------------------------- events

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of the event log, resumable with Last-Event-ID.

        Live events come from the hub (one Redis reader for all listeners); a listener
        that comes back with Last-Event-ID first catches up from the log, at most
        ``_REPLAY_MAX`` events, then takes the hub's events after what it has sent.
        """
        if (denied := self._check_read(request, query_ok=True)) is not None:
            return denied
        given = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        if given is not None and not _is_stream_id(given):
            return _error(
                400, "Last-Event-ID must be an id this stream sent (like 1700000000000-0)"
            )
        if given is not None and (busy := await self._too_many(request)) is not None:
            return busy  # a replay is a heavy read
        listener = await self.hub.join()
        if listener is None:
            return web.json_response(
                {
                    "error": f"too many event streams are open (at most "
                    f"{self.hub.max_listeners}); try again shortly"
                },
                status=503,
                headers={"Retry-After": "5"},
            )
        try:
            return await self._stream(request, listener, given)
        finally:
            self.hub.leave(listener)

    async def _stream(
        self, request: web.Request, listener: _Listener, given: str | None
    ) -> web.StreamResponse:
        reader = self.reader
        try:
            last = given or await reader.last_event_id()
            backlog: list[StoredEvent] = []
            reset = False
            if given is not None:
                backlog = await reader.events_after(last, count=_REPLAY_MAX + 1)
                if len(backlog) > _REPLAY_MAX:  # too far behind: the newest only
                    reset = True
                    backlog = await reader.newest_events(_REPLAY_MAX)
        except BackendUnavailable as exc:
            return _error(503, f"the engine cannot reach {exc}; try again shortly")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        sent = _id_key(last)
        try:
            async with asyncio.timeout(_WRITE_TIMEOUT_S):
                await response.write(b"retry: 1000\n\n")
                if reset:
                    note = orjson.dumps(
                        {"reason": f"more than {_REPLAY_MAX} events were missed; reload the list"}
                    )
                    await response.write(b"event: reset\ndata: %s\n\n" % note)
            if backlog:
                # Encoded under the heavy-read bound, written outside it: a client that
                # does not read must not hold the bound while its writes wait.
                async with self._heavy:
                    chunks: list[bytes] = []
                    for n, e in enumerate(backlog, 1):
                        if _id_key(e.event_id) > sent:
                            chunks.append(_sse(e))
                            sent = _id_key(e.event_id)
                        if n % 50 == 0:
                            await asyncio.sleep(0)  # a long replay lets dispatch in between
                for start in range(0, len(chunks), 50):
                    async with asyncio.timeout(_WRITE_TIMEOUT_S):
                        await response.write(b"".join(chunks[start : start + 50]))
            while True:
                try:
                    event = await asyncio.wait_for(listener.queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    if listener.dropped:
                        break  # dropped while quiet (Redis away): reconnect
                    async with asyncio.timeout(_WRITE_TIMEOUT_S):
                        await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                sent = await self._send(response, event, sent)
                if listener.dropped and listener.queue.empty():
                    break  # it fell behind: the browser comes back with Last-Event-ID
        except (ConnectionResetError, TimeoutError):
            pass  # gone or not reading; it comes back with Last-Event-ID
        return response

    async def _send(
        self, response: web.StreamResponse, e: StoredEvent, sent: tuple[int, int]
    ) -> tuple[int, int]:
        key = _id_key(e.event_id)
        if key <= sent:
            return sent  # already sent in the catch-up
        async with asyncio.timeout(_WRITE_TIMEOUT_S):
            await response.write(_sse(e))
        return key


def _with_subdistrict(state: dict[str, Any], incident: Incident) -> dict[str, Any]:
    """The page's filter by subdistrict ([area] subdistricts) needs each incident's."""
    if incident.subdistrict:
        state["subdistrict"] = incident.subdistrict
    return state


def _addresses(rows: Any) -> list[tuple[str, float, float]]:
    """(reported_at, address, lat, lon) rows as (address, lat, lon), newest first, each
    address once; rows without an address or a place are left out."""
    out: list[tuple[str, float, float]] = []
    seen: set[str] = set()
    for _, address, lat, lon in sorted(rows, key=lambda r: -float(r[0] or 0)):
        if not isinstance(address, str) or not address.strip():
            continue
        if not isinstance(lat, int | float) or not isinstance(lon, int | float):
            continue
        key = address.strip().casefold()
        if key not in seen:
            seen.add(key)
            out.append((address.strip(), float(lat), float(lon)))
    return out


def _sse(e: StoredEvent) -> bytes:
    data = orjson.dumps(
        {"incident_id": e.incident_id, "type": e.type, "at": format_time(e.at), **e.data}
    )
    return b"id: %s\nevent: incident\ndata: %s\n\n" % (e.event_id.encode(), data)


def _id_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ValueError(f"'{name}' must be a whole number from {lo} to {hi}")
    return int(raw)


def _parse_since(raw: str) -> float:
    """A query's time: RFC 3339, or Unix seconds (a query parameter is always a string)."""
    try:
        number = float(raw)
    except ValueError:
        return parse_time(raw)
    return parse_time(number)


def _t(ts: float | None) -> str | None:
    return None if ts is None else format_time(ts)


def _is_stream_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


class _ClientBudgets:
    """A token bucket per client address: ``rate`` heavy reads a second, bursts of twice
    that. Buckets idle for a minute are forgotten, so addresses cannot pile up."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._swept = clock()

    def take(self, client: str) -> float | None:
        """None if ``client`` may go ahead (a token is taken), else seconds to wait."""
        now = self._clock()
        if now - self._swept > 60:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            self._swept = now
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0, now)
        return None


def archiver_app(archiver: Archiver, metrics: Metrics) -> web.Application:
    """What ``dispatch archive`` serves when it runs alone: ``/metrics`` (its counters and
    lag, as on the engine's /metrics) and ``/healthz`` (503 until its tables are up to
    date and its consumer group exists)."""

    async def health() -> tuple[bool, dict[str, Any]]:
        ready = archiver.ready.is_set()
        return ready, {"ready": ready, "archived": archiver.archived, "lag_s": archiver.lag_s()}

    return metrics_app(metrics.render, health)


def metrics_app(
    render: Callable[[], bytes], health: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
) -> web.Application:
    """What a process beside the engine (``dispatch archive``, ``dispatch gateway``) serves
    on its ``metrics_http``: ``/metrics`` (``render``) and ``/healthz``, whose JSON body is
    ``health``'s, with 200 when it says healthy and 503 otherwise."""

    async def metrics_route(request: web.Request) -> web.Response:
        return web.Response(
            body=render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def health_route(request: web.Request) -> web.Response:
        healthy, body = await health()
        return _json(body, 200 if healthy else 503)

    app = web.Application(client_max_size=1024)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/healthz", health_route)
    return app
