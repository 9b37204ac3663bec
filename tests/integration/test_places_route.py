"""GET /api/places (the control room's address search and the map's names), GET /api/map
and the volunteer page's control-room number, against a real Mosquitto and Redis.

The route is bounded like every other: a query of at most 64 characters without control
characters, at most 20 answers, a search budget per client (429 past it), the read
token when one is configured; and what it answers is data, never markup.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest_asyncio

from tests.integration.test_web import READ_TOKEN, TOKEN, XIAOYING, Engine, _start, report

DEMO = "shangcheng_places_demo.csv"


@pytest_asyncio.fixture
async def engine(mqtt_url: str, redis_url: str, topic_root: str) -> AsyncIterator[Engine]:
    async for e in _start(
        mqtt_url,
        redis_url,
        topic_root,
        **{"area.gazetteer": DEMO, "control_room.phone": "0571-8700 0000"},
    ):
        yield e


async def _places(engine: Engine, query: str, **params: Any) -> tuple[int, Any]:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return await engine.get(f"/api/places?q={quote(query)}{extra}")


async def test_the_map_gets_every_place_and_a_search_finds_by_name(engine: Engine) -> None:
    status, body = await engine.get("/api/places")
    assert status == 200
    names = {p["name"] for p in body["places"]}
    assert {"河坊街", "杭州东站"} <= names
    east = next(p for p in body["places"] if p["name"] == "杭州东站")
    assert east["name_en"] == "Hangzhou East Railway Station"
    assert east["rank"] == 1
    status, body = await _places(engine, "东站")
    assert status == 200
    assert [(p["name"], p["source"]) for p in body["places"]] == [("杭州东站", "gazetteer")]
    status, body = await _places(engine, "hefang")  # the English name too
    assert [p["name"] for p in body["places"]] == ["河坊街"]
    status, body = await _places(engine, "医院", limit=2)
    assert len(body["places"]) == 2


async def test_addresses_of_earlier_reports_are_found_too(engine: Engine) -> None:
    # An open incident (from the engine's own memory) ...
    status, _ = await engine.post("/api/incidents", report("pl-1", address="小营巷 40 号 3 单元"))
    assert status == 201
    status, body = await _places(engine, "小营巷 40")
    places = body["places"]
    assert {"name": "小营巷 40 号 3 单元", "lat": XIAOYING[0], "lon": XIAOYING[1],
            "source": "incident"} in places  # fmt: skip
    # ... and an ended one (from Redis), each address once, the gazetteer's place first.
    status, _ = await engine.post("/api/incidents/pl-1/resolve", {"by": "t"})
    assert status == 200
    lat, lon = 30.2430, 120.1690
    for iid in ("pl-2", "pl-3"):
        await engine.post("/api/incidents", report(iid, lat=lat, lon=lon, address="河坊街 8 号"))
    status, body = await _places(engine, "河坊街")
    assert status == 200
    assert [(p["name"], p["source"]) for p in body["places"]] == [
        ("河坊街", "gazetteer"), ("河坊街 8 号", "incident")]  # fmt: skip
    status, body = await _places(engine, "小营巷 40")
    assert [p["name"] for p in body["places"]] == ["小营巷 40 号 3 单元"]


async def test_hostile_queries_get_a_clear_400(engine: Engine) -> None:
    for bad, message in (
        ("x" * 65, "at most 64 characters"),
        ("a\x00b", "without control characters"),
        ("a\nb", "without control characters"),
    ):
        status, body = await _places(engine, bad)
        assert status == 400, (bad, body)
        assert message in body["error"]
    for limit in ("0", "21", "-1", "x", "1e3"):
        status, body = await _places(engine, "站", limit=limit)
        assert status == 400, (limit, body)
        assert "'limit' must be a whole number from 1 to 20" in body["error"]
    # Markup is data: it is found (or not) as text, and answered as JSON.
    await engine.post("/api/incidents", report("pl-x", address="<img src=x onerror=alert(1)>"))
    status, body = await _places(engine, "<img")
    assert status == 200
    assert body["places"][0]["name"] == "<img src=x onerror=alert(1)>"
    # Nothing but an empty list for an empty or blank query.
    for blank in ("", "   "):
        assert (await _places(engine, blank))[1] == {"places": []}


async def test_a_flood_of_searches_gets_429_with_retry_after(engine: Engine) -> None:
    async def one() -> tuple[int, str | None]:
        async with engine.http.get(engine.base + "/api/places?q=%E7%AB%99") as r:
            await r.read()
            return r.status, r.headers.get("Retry-After")

    results = await asyncio.gather(*(one() for _ in range(60)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) >= 10  # a burst of twice the rate goes through
    assert 429 in statuses
    assert all(after and int(after) >= 1 for s, after in results if s == 429)


async def test_the_map_settings_and_the_phone(engine: Engine) -> None:
    status, body = await engine.get("/api/map")
    assert status == 200
    assert body == {"tile_url": None, "tile_attribution": None, "tile_max_zoom": 18}
    status, body = await engine.get("/api/volunteer-app")
    assert body["control_room_phone"] == "0571-8700 0000"


async def test_with_a_read_token_places_and_map_need_it(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async for engine in _start(
        mqtt_url, redis_url, topic_root, **{"http.read_token": READ_TOKEN, "area.gazetteer": DEMO}
    ):
        for path in ("/api/places", "/api/places?q=%E7%AB%99", "/api/map"):
            status, body = await engine.get(path)
            assert status == 401, (path, body)
            status, body = await engine.get(path, headers={"Authorization": "Bearer nope"})
            assert status == 403, (path, body)
            for token in (READ_TOKEN, TOKEN):
                headers = {"Authorization": f"Bearer {token}"}
                status, body = await engine.get(path, headers=headers)
                assert status == 200, (path, body)


async def test_without_a_gazetteer_only_earlier_addresses_are_found(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async for engine in _start(mqtt_url, redis_url, topic_root):
        assert (await engine.get("/api/places"))[1] == {"places": []}
        await engine.post("/api/incidents", report("pl-n", address="望江门外 钱塘江边步道"))
        status, body = await _places(engine, "望江门")
        assert status == 200
        assert [p["source"] for p in body["places"]] == ["incident"]
        assert (await engine.get("/api/volunteer-app"))[1]["control_room_phone"] is None
