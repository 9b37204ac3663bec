"""The HTTP routes of the record: ``GET /api/report``, ``GET /api/report/misses``, the report
page (``GET /report``) and ``GET /api/incidents/{iid}/cap``.

Mounted by dispatch/web.py, with its read check (the same token rules as every read).
The report comes from the PostgreSQL archive when the engine has one (``--postgres``);
without one it is computed from the records Redis still holds (30 days after they end),
with the same definitions (dispatch/report.py), and says so: ``"source": "redis",
"limited": true``. docs/reports.md defines every figure; docs/api.md lists the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from dispatch import cap, report
from dispatch.archive import Archive
from dispatch.codec import format_time
from dispatch.dispatcher import Incident
from dispatch.lifecycle import ENDED
from dispatch.model import is_valid_id
from dispatch.service import Service
from dispatch.store import Store

__all__ = ["Records"]

# (request, whether ?access_token= may carry the token) -> a refusal, or None
ReadCheck = Callable[[web.Request, bool], web.Response | None]

# Without an archive: the most incident ids read from Redis for one report, and the page.
_REDIS_IDS_MAX = 50_000
_PAGE = 1_000
# Reports waiting for their turn beyond the one being computed; more get 429.
_QUEUE_MAX = 8
_LIMITED_NOTE = (
    "no archive is configured (dispatch run --postgres URL): history is limited to the "
    "incidents Redis still holds, up to 30 days after they ended"
)
_STATIC = Path(__file__).resolve().parent / "static"
_NOT_SENDER = re.compile(r"[\s,<&]")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class Records:
    """The handlers; ``check_read`` answers a request that may not read (else None)."""

    def __init__(
        self, service: Service, reader: Store, archive: Archive | None, check_read: ReadCheck
    ) -> None:
        self.service = service
        self.reader = reader
        self.archive = archive
        self.check_read = check_read
        self._heavy = asyncio.Semaphore(1)  # one report at a time: they may be large
        self._queued = 0  # requests waiting for their turn

    def _busy(self) -> web.Response | None:
        """429 when too many reports already wait for their turn: a flood of them must
        not pile up tasks (and, without an archive, Redis reads) without end."""
        if self._queued < _QUEUE_MAX:
            return None
        return web.json_response(
            {
                "error": f"{_QUEUE_MAX} reports are already waiting to be computed, one at "
                "a time; try again shortly",
                "code": "too_many_requests",
            },
            status=429,
            headers={"Retry-After": "5"},
        )

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        self._queued += 1
        try:
            await self._heavy.acquire()
        finally:
            self._queued -= 1
        try:
            yield
        finally:
            self._heavy.release()

    # ------------------------------------------------------------------ the report

    async def page(self, request: web.Request) -> web.StreamResponse:
        # Public like "/": the page holds no data and asks for the read token when needed.
        return web.FileResponse(_STATIC / "report.html", headers={"Cache-Control": "no-cache"})

    async def report(self, request: web.Request) -> web.Response:
        # ?access_token= too: a CSV is downloaded by a link, which cannot send headers.
        if (denied := self.check_read(request, True)) is not None:
            return denied
        now = self.service.clock()
        try:
            q = report.parse_query(request.query, now)
        except report.BadQuery as exc:
            return _error(400, str(exc))
        target_s = self.service.config.policy.target_s
        body: dict[str, Any] = {
            "from": format_time(q.start),
            "to": format_time(q.end),
            "by": q.by,
            "target_s": target_s,
            "computed_at": format_time(now),
        }
        if (busy := self._busy()) is not None:
            return busy
        async with self._turn():
            if self.archive is not None:
                groups, whole = await self.archive.report(
                    start=q.start, end=q.end, by=q.by, target_s=target_s, now=now
                )
                rows = [report.row(g, c) for g, c in groups]
                total = report.row(None, whole)
                body.update(source="postgres", limited=False)
            else:
                incidents, truncated = await self._from_redis(q.start, q.end)
                rows, total = await asyncio.to_thread(
                    report.from_incidents, incidents, q.by, target_s=target_s, now=now
                )
                body.update(source="redis", limited=True, truncated=truncated)
                body["note"] = _LIMITED_NOTE
        if q.by == "subdistrict" and self.service.area.subdistricts is None:
            body["note"] = " ".join(filter(None, [body.get("note"), report.SUBDISTRICT_NOTE]))
        body["groups"] = rows
        body["total"] = total
        if q.format == "csv":
            name = f"report-{q.by}-{body['from'][:10]}-{body['to'][:10]}.csv"
            return web.Response(
                text=report.to_csv([*rows, {**total, "group": "total"}]),
                content_type="text/csv",
                charset="utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "X-Report-Source": body["source"],
                },
            )
        return _json(body)

    async def misses(self, request: web.Request) -> web.Response:
        """``GET /api/report/misses``: the incidents that missed the target, and why."""
        if (denied := self.check_read(request, True)) is not None:
            return denied
        now = self.service.clock()
        try:
            q = report.parse_misses_query(request.query, now)
        except report.BadQuery as exc:
            return _error(400, str(exc))
        target_s = self.service.config.policy.target_s
        body: dict[str, Any] = {
            "from": format_time(q.start),
            "to": format_time(q.end),
            "target_s": target_s,
            "computed_at": format_time(now),
        }
        if (busy := self._busy()) is not None:
            return busy
        async with self._turn():
            if self.archive is not None:
                page, counts = await self.archive.misses(
                    start=q.start,
                    end=q.end,
                    target_s=target_s,
                    now=now,
                    limit=q.limit,
                    offset=q.offset,
                )
                body.update(source="postgres", limited=False)
            else:
                incidents, truncated = await self._from_redis(q.start, q.end)
                every = await asyncio.to_thread(
                    report.misses_from_incidents, incidents, target_s=target_s, now=now
                )
                page = every[q.offset : q.offset + q.limit]
                counts = {}
                for m in every:
                    counts[m["reason"]] = counts.get(m["reason"], 0) + 1
                body.update(source="redis", limited=True, truncated=truncated, note=_LIMITED_NOTE)
        total = sum(counts.values())
        body["total"] = total
        body["by_reason"] = {r: counts.get(r, 0) for r in report.MISS_REASONS}
        body["offset"] = q.offset
        body["limit"] = q.limit
        body["next_offset"] = q.offset + len(page) if q.offset + len(page) < total else None
        body["misses"] = page
        return _json(body)

    async def _from_redis(self, start: float, end: float) -> tuple[list[Incident], bool]:
        """Ended incidents reported in [start, end) that Redis still holds; truncated?"""
        records: list[dict[str, Any]] = []
        offset = 0
        while offset < _REDIS_IDS_MAX:
            ids = await self.reader.reported_page(start, offset, _PAGE)
            offset += len(ids)
            page = await self.reader.incidents(ids)
            records += [r for r in page if r["reported_at"] < end]
            if len(ids) < _PAGE or any(r["reported_at"] >= end for r in page):
                return await asyncio.to_thread(_ended, records), False
        return await asyncio.to_thread(_ended, records), True

    # ------------------------------------------------------------------ CAP

    async def cap(self, request: web.Request) -> web.Response:
        if (denied := self.check_read(request, False)) is not None:
            return denied
        iid = request.match_info["iid"]
        if not is_valid_id(iid):
            return _error(404, f"no incident with id '{iid}'")
        s = self.service
        incident = s.reads.held().get(iid)
        if incident is None:
            record = await self.reader.incident(iid)
            if record is None and self.archive is not None:
                record = await self.archive.record(iid)
            if record is None:
                return _error(404, f"no incident with id '{iid}'")
            incident = Incident.from_record(record)
        c = s.config
        body = cap.to_cap(
            incident,
            sender=_NOT_SENDER.sub("-", f"dispatch.{c.topic_root}"),
            sender_name=c.area_name,
            radius_m=c.policy.arrival_radius_m,
            target_s=c.policy.target_s,
            now=s.clock(),
        )
        return web.Response(body=body, headers={"Content-Type": cap.CONTENT_TYPE})


def _ended(records: list[dict[str, Any]]) -> list[Incident]:
    incidents = [Incident.from_record(r) for r in records]
    return [i for i in incidents if i.state in ENDED]
