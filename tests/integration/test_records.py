"""``GET /api/report`` and ``GET /api/incidents/{iid}/cap`` on the engine in-process, against
a real Mosquitto, Redis and (with ``--postgres``) PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
from inprocess import engine_in_process
from lxml import etree

from dispatch.config import Config

TOKEN = "op-secret-records"
READ = "read-secret-records"
XIAOYING = {"lat": 30.2591, "lon": 120.1698, "address": "小营巷 12 号"}
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "cap" / "CAP-v1.2.xsd"


class Client:
    def __init__(self, config: Config, http: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{config.http_port}"
        self.http = http

    async def get(self, path: str, token: str | None = READ) -> tuple[int, str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(self.base + path, headers=headers) as r:
            text = await r.text()
            body = orjson.loads(text) if r.content_type == "application/json" else text
            return r.status, r.headers.get("Content-Type", ""), body

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.http.post(self.base + path, json=body, headers=headers) as r:
            return r.status, await r.json()


@contextlib.asynccontextmanager
async def _engine(
    mqtt_url: str, redis_url: str, topic_root: str, **overrides: Any
) -> AsyncIterator[Client]:
    async with (
        engine_in_process(
            mqtt_url,
            redis_url,
            topic_root,
            **{"http.operator_token": TOKEN, "http.read_token": READ, **overrides},
        ) as config,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
    ):
        yield Client(config, http)


async def _ended(client: Client, iid: str, kind: str, action: str) -> None:
    status, _ = await client.post("/api/incidents", {"id": iid, "kind": kind, **XIAOYING})
    assert status in (200, 201, 202), status
    status, body = await client.post(f"/api/incidents/{iid}/{action}", {"by": "王五"})
    assert status == 200, body


async def test_report_and_cap_without_an_archive(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root) as client:
        await _ended(client, "rec-1", "fall", "resolve")
        await _ended(client, "rec-2", "fire", "cancel")
        open_one = {"id": "rec-3", "kind": "fall", **XIAOYING}
        assert (await client.post("/api/incidents", open_one))[0] in (200, 201, 202)
        status, ctype, body = await client.get("/api/report?by=kind")
        assert status == 200, body
        assert (body["source"], body["limited"]) == ("redis", True)
        assert "history is limited" in body["note"]
        # Ended ones only: rec-3 is still open.
        assert {g["group"]: g["incidents"] for g in body["groups"]} == {"fall": 1, "fire": 1}
        total = body["total"]
        assert (total["incidents"], total["needed"], total["reached"]) == (2, 1, 0)
        assert total["within_target_share"] in (0.0, None)  # decided once 180 s have passed
        status, ctype, text = await client.get("/api/report?by=cell&format=csv")
        assert status == 200
        assert ctype.startswith("text/csv")
        assert text.splitlines()[0].startswith("group,incidents,needed,")
        assert text.splitlines()[-1].startswith("total,2,1,")
        # Bad parameters: 400, saying what to fix.
        status, _, body = await client.get("/api/report?by=street")
        assert status == 400
        assert "'by' must be one of" in body["error"]
        status, _, body = await client.get("/api/report?from=2026-13-01T00:00:00Z")
        assert status == 400
        assert "'from' must be an RFC 3339 time" in body["error"]
        status, _, body = await client.get("/api/report?by=subdistrict")
        assert status == 200
        assert "no subdistrict boundaries" in body["note"]
        # The read token, as every read.
        assert (await client.get("/api/report", token=None))[0] == 401
        assert (await client.get("/api/report", token="wrong"))[0] == 403
        # CAP.
        schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
        for iid in ("rec-1", "rec-2", "rec-3"):
            status, ctype, xml = await client.get(f"/api/incidents/{iid}/cap")
            assert status == 200, xml
            assert ctype.startswith("application/cap+xml")
            schema.assertValid(etree.fromstring(xml.encode()))
        assert (await client.get("/api/incidents/nobody/cap"))[0] == 404
        assert (await client.get("/api/incidents/rec-1/cap", token=None))[0] == 401


async def test_report_from_the_archive(
    mqtt_url: str, redis_url: str, topic_root: str, postgres_url: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root, **{"postgres.url": postgres_url}) as c:
        await _ended(c, "arc-1", "medical", "resolve")
        await _ended(c, "arc-2", "medical", "cancel")
        await _ended(c, "arc-3", "dispute", "resolve")
        deadline = time.monotonic() + 20
        while True:
            status, _, body = await c.get("/api/report?by=kind")
            if status == 200 and body["total"]["incidents"] == 3:
                break
            assert time.monotonic() < deadline, f"never archived: {status} {body}"
            await asyncio.sleep(0.2)
        assert (body["source"], body["limited"]) == ("postgres", False)
        assert {g["group"]: g["incidents"] for g in body["groups"]} == {"dispute": 1, "medical": 2}
        medical = next(g for g in body["groups"] if g["group"] == "medical")
        assert (medical["needed"], medical["reached"], medical["p50_s"]) == (1, 0, None)
        status, _ctype, text = await c.get("/api/report?by=day&format=csv")
        assert status == 200
        assert text.splitlines()[-1].startswith("total,3,2,")
        # The archive writer's figures on the engine's /metrics.
        status, _, metrics = await c.get("/metrics", token=None)
        assert 'dispatch_archive_incidents_total{outcome="written"} 3.0' in metrics
        assert "dispatch_archive_lag_seconds 0.0" in metrics


async def _missed(client: Client, iid: str, kind: str, ago_s: float) -> None:
    """An incident reported ``ago_s`` ago and resolved with nobody there: a miss once the
    target has passed since its report (no volunteer is on duty: nobody in reach)."""
    reported = time.time() - ago_s
    body = {"id": iid, "kind": kind, "reported_at": rfc3339(reported), **XIAOYING}
    status, answer = await client.post("/api/incidents", body)
    assert status in (200, 201, 202), answer
    status, answer = await client.post(f"/api/incidents/{iid}/resolve", {"by": "王五"})
    assert status == 200, answer


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


async def _misses_route(c: Client, source: str) -> None:
    # Three misses (600 s, 500 s, 400 s ago), one not decided yet (just reported).
    for n, ago in enumerate((600, 500, 400)):
        await _missed(c, f"miss-{n}", "fall", ago)
    await _missed(c, "miss-new", "medical", 5)
    deadline = time.monotonic() + 20
    while True:
        status, _, body = await c.get("/api/report/misses?limit=2")
        if status == 200 and body["total"] == 3:
            break
        assert time.monotonic() < deadline, f"never all there: {status} {body}"
        await asyncio.sleep(0.2)
    assert (body["source"], body["limited"]) == (source, source == "redis")
    if source == "redis":
        assert "history is limited" in body["note"]
    assert [m["id"] for m in body["misses"]] == ["miss-0", "miss-1"]  # oldest first
    assert body["by_reason"]["nobody_in_reach"] == 3
    assert sum(body["by_reason"].values()) == 3
    assert body["next_offset"] == 2
    first = body["misses"][0]
    assert first["reason"] == "nobody_in_reach"
    assert (first["kind"], first["address"]) == ("fall", "小营巷 12 号")
    assert first["cell"].startswith("r")
    assert first["time_to_arrival_s"] is None
    status, _, body = await c.get("/api/report/misses?limit=2&offset=2")
    assert status == 200
    assert [m["id"] for m in body["misses"]] == ["miss-2"]
    assert body["next_offset"] is None
    # Bounds and bad input: 400 saying what to fix.
    for query, words in [
        ("limit=0", "'limit' must be a whole number from 1 to 500"),
        ("limit=501", "'limit' must be a whole number from 1 to 500"),
        ("offset=-1", "'offset' must be a whole number"),
        ("limit=1e3", "'limit' must be a whole number"),
        ("by=cell", "unknown parameter 'by'"),
        ("from=2020-01-01T00:00:00Z", "at most 3 years"),
        ("from=yesterday", "'from' must be an RFC 3339 time"),
    ]:
        status, _, body = await c.get(f"/api/report/misses?{query}")
        assert status == 400, (query, body)
        assert words in body["error"], (query, body)
    # The read token, as every read; ?access_token= too (the page's links).
    assert (await c.get("/api/report/misses", token=None))[0] == 401
    assert (await c.get("/api/report/misses", token="wrong"))[0] == 403
    status, _, body = await c.get(f"/api/report/misses?access_token={READ}", token=None)
    assert (status, body["total"]) == (200, 3)
    # The page itself is public (it holds no data) and served by the engine.
    status, ctype, html = await c.get("/report", token=None)
    assert status == 200
    assert ctype.startswith("text/html")
    assert "/static/report.js" in html


async def test_misses_without_an_archive(mqtt_url: str, redis_url: str, topic_root: str) -> None:
    async with _engine(mqtt_url, redis_url, topic_root) as c:
        await _misses_route(c, "redis")


async def test_misses_from_the_archive(
    mqtt_url: str, redis_url: str, topic_root: str, postgres_url: str
) -> None:
    async with _engine(mqtt_url, redis_url, topic_root, **{"postgres.url": postgres_url}) as c:
        await _misses_route(c, "postgres")


def _halves(tmp_path: Path) -> str:
    """Two test areas (not real subdistricts), west and east of 120.18° E."""

    def box(name: str, west: float, east: float) -> dict[str, Any]:
        ring = [[west, 30.0], [east, 30.0], [east, 30.5], [west, 30.5], [west, 30.0]]
        geometry = {"type": "Polygon", "coordinates": [ring]}
        return {"type": "Feature", "properties": {"name": name}, "geometry": geometry}

    path = tmp_path / "areas.geojson"
    collection = {
        "type": "FeatureCollection",
        "features": [box("测试西片", 120.0, 120.18), box("测试东片", 120.18, 120.4)],
    }
    path.write_bytes(orjson.dumps(collection))
    return str(path)


async def _by_subdistrict(c: Client, source: str) -> None:
    east = {"lat": 30.27, "lon": 120.19, "address": "东片某处"}
    for iid, place in (("sd-w1", XIAOYING), ("sd-w2", XIAOYING), ("sd-e1", east)):
        body = {"id": iid, "kind": "fall", "reported_at": rfc3339(time.time() - 600), **place}
        assert (await c.post("/api/incidents", body))[0] in (200, 201, 202)
        assert (await c.post(f"/api/incidents/{iid}/resolve", {"by": "王五"}))[0] == 200
    deadline = time.monotonic() + 20
    while True:
        status, _, body = await c.get("/api/report?by=subdistrict")
        if status == 200 and body["total"]["incidents"] == 3:
            break
        assert time.monotonic() < deadline, f"never all there: {status} {body}"
        await asyncio.sleep(0.2)
    assert body["source"] == source
    assert {g["group"]: g["incidents"] for g in body["groups"]} == {"测试东片": 1, "测试西片": 2}
    assert "no subdistrict boundaries" not in body.get("note", "")
    status, _, misses = await c.get("/api/report/misses")
    assert {m["id"]: m["subdistrict"] for m in misses["misses"]} == {
        "sd-w1": "测试西片",
        "sd-w2": "测试西片",
        "sd-e1": "测试东片",
    }
    # The map has them (the report page draws them over the cells).
    status, _, area = await c.get("/api/area")
    names = [
        f["properties"]["name"]
        for f in area["features"]
        if f["properties"]["kind"] == "subdistrict"
    ]
    assert names == ["测试西片", "测试东片"]


async def test_subdistricts_without_an_archive(
    mqtt_url: str, redis_url: str, topic_root: str, tmp_path: Path
) -> None:
    areas = _halves(tmp_path)
    async with _engine(mqtt_url, redis_url, topic_root, **{"area.subdistricts": areas}) as c:
        await _by_subdistrict(c, "redis")


async def test_subdistricts_in_the_archive(
    mqtt_url: str, redis_url: str, topic_root: str, postgres_url: str, tmp_path: Path
) -> None:
    overrides = {"area.subdistricts": _halves(tmp_path), "postgres.url": postgres_url}
    async with _engine(mqtt_url, redis_url, topic_root, **overrides) as c:
        await _by_subdistrict(c, "postgres")
    # In the archive's own column too.
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT id, subdistrict FROM incidents WHERE id LIKE 'sd-%%' ORDER BY id"
        ).fetchall()
    assert rows == [("sd-e1", "测试东片"), ("sd-w1", "测试西片"), ("sd-w2", "测试西片")]


async def test_a_flood_of_reports_is_refused_beyond_the_queue(
    mqtt_url: str, redis_url: str, topic_root: str, postgres_url: str
) -> None:
    """Reports are computed one at a time; beyond 8 waiting, more get 429 at once."""
    async with _engine(mqtt_url, redis_url, topic_root, **{"postgres.url": postgres_url}) as c:
        deadline = time.monotonic() + 20
        while (await c.get("/api/report/misses"))[0] != 200:  # the tables exist
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        # The archive is busy: every report waits behind a lock held here.
        async with await psycopg.AsyncConnection.connect(postgres_url) as lock:
            await lock.execute("LOCK TABLE incidents IN ACCESS EXCLUSIVE MODE")
            asks = [asyncio.create_task(c.get("/api/report/misses")) for _ in range(12)]
            done, _ = await asyncio.wait(asks, timeout=2)
            refused = [t.result() for t in done]
            assert [r[0] for r in refused] == [429] * 3, refused
            assert "already waiting" in refused[0][2]["error"]
            await lock.rollback()  # the lock goes: the nine are answered
        answered = await asyncio.gather(*[t for t in asks if t not in done])
        assert [r[0] for r in answered] == [200] * 9
