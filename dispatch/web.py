"""The HTTP layer (aiohttp): health, metrics, the JSON API and the event stream.

Errors are JSON ``{"error": ...}`` with a 4xx status that says what to fix. Operator
actions need ``Authorization: Bearer <operator token>``; reading needs the read token
only when one is configured. Nothing here decides anything: it calls the service.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from dispatch.codec import format_time, parse_time
from dispatch.dispatcher import Incident, UnknownIncident, UnknownVolunteer
from dispatch.errors import BackendUnavailable, BadMessage, InvalidTransition
from dispatch.lifecycle import State
from dispatch.model import is_valid_id
from dispatch.service import Service

__all__ = ["make_app"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_MAX_BODY = 64 * 1024


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def make_app(service: Service) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY, middlewares=[_errors_as_json])
    api = _Api(service)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/incidents", api.list_incidents)
    app.router.add_post("/api/incidents", api.report)
    app.router.add_get("/api/incidents/{iid}", api.get_incident)
    for action in ("cancel", "resolve", "escalate", "assign"):
        app.router.add_post(f"/api/incidents/{{iid}}/{action}", api.action(action))
    app.router.add_get("/api/events", api.events)
    app.router.add_get("/api/area", api.area)
    app.router.add_get("/", api.index)
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


class _Api:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.config = service.config

    # ---------------------------------------------------------------- auth

    def _check(self, request: web.Request, token: str, what: str) -> web.Response | None:
        if not token:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _error(401, f"{what} needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _error(403, f"the token is not valid for {what}")
        return None

    def _check_read(self, request: web.Request) -> web.Response | None:
        token = self.config.read_token
        if token and self._check(request, self.config.operator_token, "reading") is None:
            return None  # the operator may read too
        return self._check(request, token, "reading")

    def _check_operator(self, request: web.Request) -> web.Response | None:
        if not self.config.operator_token:
            return _error(403, "operator actions are disabled: no operator token is configured")
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
        return _json(self.service.area.to_geojson())

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=_INDEX_PAGE, content_type="text/html")

    # ---------------------------------------------------------------- incidents

    async def list_incidents(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request)) is not None:
            return denied
        core = self.service.core
        state_filter = request.query.get("state")
        if state_filter is not None and state_filter not in {s.value for s in State}:
            allowed = ", ".join(s.value for s in State)
            return _error(400, f"unknown state '{state_filter}'; use one of {allowed}")
        since = request.query.get("since")
        if since is not None:
            try:
                since_ts = parse_time(since)
            except ValueError as exc:
                return _error(400, f"'since' must be an RFC 3339 time or Unix seconds: {exc}")
            ids = await self.service.store.reported_since(since_ts)
            records = await self.service.store.incidents(ids)
            incidents = [Incident.from_record(r) for r in records]
        else:
            incidents = core.open_incidents()
        if state_filter is not None:
            incidents = [i for i in incidents if i.state.value == state_filter]
        incidents.sort(key=lambda i: (i.priority, i.reported_at))
        return _json({"incidents": [core.public_state(i) for i in incidents]})

    async def get_incident(self, request: web.Request) -> web.Response:
        if (denied := self._check_read(request)) is not None:
            return denied
        iid = request.match_info["iid"]
        incident = self.service.core.incidents.get(iid)
        if incident is None:
            record = await self.service.store.incident(iid) if is_valid_id(iid) else None
            if record is None:
                return _error(404, f"no incident with id '{iid}'")
            incident = Incident.from_record(record)
        body = self.service.core.public_state(incident)
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
        events = await self.service.store.incident_events(iid)
        body["events"] = [
            {"id": e.event_id, "type": e.type, "at": format_time(e.at), **e.data} for e in events
        ]
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
        outcome = await self.service.report(report, now)
        if outcome.status == "conflict":
            return _error(
                409,
                f"incident id '{report.id}' was already reported with a different body; "
                "use a new id for a new incident",
            )
        if outcome.status == "pending":  # being stored by another engine right now
            return _json({"id": report.id, "status": "pending"}, 202)
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
            if name == "escalate" and isinstance(body.get("reason"), str):
                kwargs["reason"] = body["reason"][:500]
            by = body.get("by") if isinstance(body.get("by"), str) else "operator"
            try:
                state = await self.service.operator(name, iid, by=by[:64], **kwargs)
            except UnknownIncident:
                return _error(404, f"no open incident with id '{iid}'")
            except UnknownVolunteer:
                return _error(404, f"no volunteer with id '{kwargs.get('volunteer_id')}' is known")
            except InvalidTransition as exc:
                return _error(409, f"cannot {name} incident '{iid}': {exc}")
            return _json(state)

        return handle

    # ---------------------------------------------------------------- events

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events from the Redis event log, resumable with Last-Event-ID."""
        if (denied := self._check_read(request)) is not None:
            return denied
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "$"
        if last != "$" and not _is_stream_id(last):
            return _error(
                400, "Last-Event-ID must be an id this stream sent (like 1700000000000-0)"
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        if last == "$":  # new listeners start from now, not from the beginning of time
            last = await self.service.store.last_event_id()
        try:
            while True:
                events = await self.service.store.events_after(last, count=500, block_ms=15_000)
                if not events:
                    await response.write(b": keep-alive\n\n")
                    continue
                for e in events:
                    data = orjson.dumps(
                        {
                            "incident_id": e.incident_id,
                            "type": e.type,
                            "at": format_time(e.at),
                            **e.data,
                        }
                    )
                    await response.write(
                        b"id: %s\nevent: incident\ndata: %s\n\n" % (e.event_id.encode(), data)
                    )
                    last = e.event_id
        except ConnectionResetError:
            pass  # the browser went away; it will come back with Last-Event-ID
        return response


def _t(ts: float | None) -> str | None:
    return None if ts is None else format_time(ts)


def _is_stream_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


_INDEX_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dispatch engine</title></head>
<body><h1>Dispatch engine</h1>
<p>The control-room page is on its way. The JSON API is live:
<a href="/api/incidents">/api/incidents</a>, <a href="/api/events">/api/events</a>,
<a href="/metrics">/metrics</a>, <a href="/readyz">/readyz</a>.</p></body></html>
"""
