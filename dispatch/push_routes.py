"""The HTTP routes of Web Push and the installable volunteer app.

- ``GET /api/push``: whether the engine pushes alerts, and its VAPID public key (the
  ``applicationServerKey`` the page subscribes with); public, it tells nothing secret.
- ``POST /api/alerts/{alert_id}/reply``: the service worker answering an alert from its
  notification (it cannot hold the page's MQTT connection). Authorized by the reply
  token the alert's push carried (dispatch/push.py); the answer is then published on
  the volunteer's own ``reply`` topic, so it takes exactly the path of an answer sent
  over MQTT, whichever engine instance owns the incident.
- ``GET /volunteer-sw.js`` and ``GET /volunteer.webmanifest``: the service worker (at
  the root, so that its scope can cover ``/volunteer``) and the web app manifest.

Mounted by dispatch/web.py; every route is described in docs/api.md.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

import orjson
from aiohttp import web

from dispatch.codec import dumps
from dispatch.errors import BackendUnavailable, BadMessage
from dispatch.model import is_valid_id
from dispatch.service import Service
from dispatch.wire import Publish

__all__ = ["PushRoutes"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_BODY_MAX = 4096
_PUBLISH_TIMEOUT_S = 5.0
# Answers already passed on, so that a replayed request does not publish again; the
# engine ignores a repeated answer anyway, this only keeps a flood off the broker.
_SEEN_MAX = 10_000


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str, code: str) -> web.Response:
    return _json({"error": message, "code": code}, status)


class PushRoutes:
    def __init__(self, service: Service) -> None:
        self.service = service
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/api/push", self.info)
        app.router.add_post("/api/alerts/{alert_id}/reply", self.reply)
        app.router.add_get("/volunteer-sw.js", self.service_worker)
        app.router.add_get("/volunteer.webmanifest", self.manifest)

    async def info(self, request: web.Request) -> web.Response:
        pusher = self.service.pusher
        keys = None if pusher is None else pusher.keys
        return _json(
            {
                "enabled": pusher is not None,
                "public_key": None if keys is None else keys.public_key,
            }
        )

    async def reply(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        if not is_valid_id(alert_id):
            return _error(400, "the alert id in the path must be 1-64 of A-Z a-z 0-9 _ -", "bad_id")
        pusher = self.service.pusher
        if pusher is None or pusher.keys is None:
            return _error(
                503,
                "web push is off ([push] enabled = false) or not started yet; answer in the "
                "page instead",
                "push_unavailable",
            )
        if request.content_length is not None and request.content_length > _BODY_MAX:
            return _error(413, f"the body must be at most {_BODY_MAX} bytes", "too_large")
        body = await request.content.read(_BODY_MAX + 1)
        try:
            vid, answer, token = self.service.codec.decode_push_reply(body, request.path)
        except BadMessage as err:
            return _error(400, err.reason, err.code)
        if not pusher.keys.check(vid, alert_id, token):
            return _error(
                403,
                "the token is not this alert's reply token for this volunteer (it comes "
                "with the alert's push)",
                "token_invalid",
            )
        seen = (vid, alert_id, answer.value)
        if seen not in self._seen:
            message = Publish(
                self.service.codec.topic("volunteers", vid, "reply"),
                dumps({"alert_id": alert_id, "answer": answer.value}),
                qos=1,
            )
            try:
                async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                    await self.service.bus.publish(message)
            except (BackendUnavailable, TimeoutError):
                return _error(
                    503, "the broker is unreachable; try again in a moment", "broker_unavailable"
                )
            self._seen[seen] = None
            if len(self._seen) > _SEEN_MAX:
                self._seen.popitem(last=False)
        return _json({"alert_id": alert_id, "answer": answer.value, "sent": True}, 202)

    async def service_worker(self, request: web.Request) -> web.StreamResponse:
        # Never cached by HTTP: the browser checks for a new worker at every visit.
        return web.FileResponse(
            STATIC_DIR / "volunteer-sw.js",
            headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript"},
        )

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC_DIR / "volunteer.webmanifest",
            headers={"Cache-Control": "no-cache", "Content-Type": "application/manifest+json"},
        )
