"""The HTTP API with the engine in-process against a real Mosquitto and Redis.

Every endpoint, its bad input, the operator token (missing: 401, wrong: 403), the read
token, and the event stream's resume with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import servers

from dispatch.config import Config, load_config
from dispatch.wiring import serve
from geo.distance import haversine_m

TOKEN = "op-secret-web"
READ_TOKEN = "read-secret-web"
XIAOYING = (30.2591, 120.1698)  # 小营巷, inside Shangcheng
OUTSIDE = (30.10, 120.00)


@dataclass
class Engine:
    base: str
    config: Config
    http: aiohttp.ClientSession
    mqtt_url: str

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.get(self.base + path, **kw) as r:
            return r.status, await _body(r)

    async def post(
        self, path: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
        async with self.http.post(self.base + path, data=data, headers=headers) as r:
            return r.status, await _body(r)

    async def publish(self, topic: str, payload: Any) -> None:
        async with servers.mqtt_client(self.mqtt_url) as client:
            await client.publish(f"{self.config.topic_root}/{topic}", orjson.dumps(payload), qos=1)

    async def until(self, path: str, check: Any, within: float = 5.0) -> Any:
        deadline = time.monotonic() + within
        while True:
            status, body = await self.get(path)
            if status == 200 and check(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {path} never matched; last: {status} {body}")
            await asyncio.sleep(0.05)


async def _body(r: aiohttp.ClientResponse) -> Any:
    text = await r.text()
    if r.content_type == "application/json":
        return json.loads(text)
    return text


async def _start(
    mqtt_url: str, redis_url: str, topic_root: str, **extra: Any
) -> AsyncIterator[Engine]:
    port = servers.free_port()
    config = load_config(
        overrides={
            "engine.mqtt": mqtt_url,
            "engine.redis": redis_url,
            "engine.http": f"127.0.0.1:{port}",
            "engine.topic_root": topic_root,
            "http.operator_token": TOKEN,
            **extra,
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop), name="engine")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        engine = Engine(f"http://127.0.0.1:{port}", config, http, mqtt_url)
        deadline = time.monotonic() + 15
        while True:
            assert not task.done(), f"the engine stopped: {task}"
            try:
                status, _ = await engine.get("/readyz")
                if status == 200:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "/readyz never answered 200"
            await asyncio.sleep(0.05)
        try:
            yield engine
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


@pytest_asyncio.fixture
async def engine(mqtt_url: str, redis_url: str, topic_root: str) -> AsyncIterator[Engine]:
    async for e in _start(mqtt_url, redis_url, topic_root):
        yield e


def report(iid: str, **kw: Any) -> dict[str, Any]:
    lat, lon = XIAOYING
    return {"id": iid, "kind": "medical", "lat": lat, "lon": lon, "address": "小营巷 12 号", **kw}


# ------------------------------------------------------------------------- page, health


async def test_the_page_and_its_static_files(engine: Engine) -> None:
    async with engine.http.get(engine.base + "/") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        page = await r.text()
    assert "/static/app.js" in page
    assert "/static/style.css" in page
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        async with engine.http.get(engine.base + path) as r:
            assert r.status == 200, path
            assert kind in r.content_type, (path, r.content_type)
    status, _ = await engine.get("/static/nothing.js")
    assert status == 404
    status, _ = await engine.get("/static/../web.py")
    assert status in (403, 404)


async def test_health_readiness_and_metrics(engine: Engine) -> None:
    assert await engine.get("/healthz") == (200, {"status": "alive"})
    status, body = await engine.get("/readyz")
    assert status == 200
    assert body["ready"] is True
    status, text = await engine.get("/metrics")
    assert status == 200
    assert "dispatch_available_volunteers" in text
    assert "dispatch_time_to_arrival_seconds" in text


async def test_area_is_geojson_with_outline_and_cells(engine: Engine) -> None:
    status, body = await engine.get("/api/area")
    assert status == 200
    assert body["type"] == "FeatureCollection"
    kinds = [f["properties"]["kind"] for f in body["features"]]
    assert kinds[0] == "outline"
    assert 400 < kinds.count("cell") < 800


# ------------------------------------------------------------------------- incidents


async def test_report_list_get_and_their_errors(engine: Engine) -> None:
    assert (await engine.post("/api/incidents", report("w-1"), token=None))[0] == 401
    assert (await engine.post("/api/incidents", report("w-1"), token="nope"))[0] == 403
    status, state = await engine.post("/api/incidents", report("w-1"))
    assert status == 201, state
    assert state["id"] == "w-1"
    assert state["kind"] == "medical"
    assert state["cell"]
    assert (await engine.post("/api/incidents", report("w-1")))[0] == 200  # identical resend
    status, body = await engine.post("/api/incidents", report("w-1", priority=3))
    assert status == 409
    assert "different body" in body["error"]
    status, body = await engine.post("/api/incidents", raw=b"{not json")
    assert status == 400
    assert body["error"]
    lat, lon = OUTSIDE
    status, body = await engine.post("/api/incidents", {"kind": "fire", "lat": lat, "lon": lon})
    assert status == 422
    assert "outside" in body["error"]
    status, body = await engine.post(
        "/api/incidents", {"kind": "flood", "lat": 30.26, "lon": 120.17}
    )
    assert status == 400
    assert "kind" in body["error"]

    status, listing = await engine.get("/api/incidents")
    assert status == 200
    assert [i["id"] for i in listing["incidents"]] == ["w-1"]
    assert listing["last_event_id"]
    assert listing["server_time"].endswith("Z")
    state_now = listing["incidents"][0]["state"]
    status, filtered = await engine.get(f"/api/incidents?state={state_now}")
    assert [i["id"] for i in filtered["incidents"]] == ["w-1"]
    status, filtered = await engine.get("/api/incidents?state=resolved")
    assert status == 200
    assert filtered["incidents"] == []
    status, body = await engine.get("/api/incidents?state=burning")
    assert status == 400
    assert "unknown state" in body["error"]
    status, body = await engine.get("/api/incidents?since=yesterday")
    assert status == 400
    assert "since" in body["error"]

    status, one = await engine.get("/api/incidents/w-1")
    assert status == 200
    assert one["address"] == "小营巷 12 号"
    assert one["times"]["reported_at"]
    assert isinstance(one["alerts"], list)
    assert [e["type"] for e in one["events"]][:1] == ["reported"]
    status, quick = await engine.get("/api/incidents/w-1?events=0")
    assert status == 200
    assert "events" not in quick
    assert quick["version"] == one["version"]
    status, body = await engine.get("/api/incidents/nope")
    assert status == 404
    assert "nope" in body["error"]
    status, body = await engine.get("/api/incidents/bad%20id!")
    assert status == 404


async def test_urgent_first_and_history_since(engine: Engine) -> None:
    await engine.post("/api/incidents", report("w-low", kind="other"))
    await engine.post("/api/incidents", report("w-old", kind="fall"))
    await engine.post("/api/incidents", report("w-p1", kind="cardiac_arrest"))
    status, listing = await engine.get("/api/incidents")
    assert [i["id"] for i in listing["incidents"]] == ["w-p1", "w-old", "w-low"]
    assert (await engine.post("/api/incidents/w-low/resolve", {"by": "张三"}))[0] == 200
    status, listing = await engine.get("/api/incidents")
    assert "w-low" not in [i["id"] for i in listing["incidents"]]
    status, hist = await engine.get(f"/api/incidents?since={time.time() - 3600:.0f}")
    closed = {i["id"]: i for i in hist["incidents"] if i["state"] == "resolved"}
    assert closed["w-low"]["end_reason"] == "resolved by 张三"
    status, hist = await engine.get("/api/incidents?since=2999-01-01T00:00:00Z")
    assert status == 200
    assert hist["incidents"] == []


async def test_operator_actions_and_their_errors(engine: Engine) -> None:
    # Someone to alert, so that the incident is not escalated by the engine at once.
    await engine.publish(
        "volunteers/v-act/status",
        {"status": "available", "skills": ["first_aid"], "mode": "walk",
         "lat": XIAOYING[0], "lon": XIAOYING[1] + 0.001},
    )  # fmt: skip
    await engine.until("/api/volunteers", lambda b: b["available"] == 1)
    status, state = await engine.post("/api/incidents", report("w-act"))
    assert state["state"] == "alerting"
    for action in ("cancel", "resolve", "escalate", "assign"):
        body = {"volunteer_id": "v1"}
        assert (await engine.post(f"/api/incidents/w-act/{action}", body, token=None))[0] == 401
        assert (await engine.post(f"/api/incidents/w-act/{action}", body, token="bad"))[0] == 403
        status, err = await engine.post(f"/api/incidents/unknown/{action}", body)
        assert status == 404, (action, err)
    status, body = await engine.post("/api/incidents/w-act/assign", raw=b"[1, 2")
    assert status == 400
    assert "JSON object" in body["error"]
    status, body = await engine.post("/api/incidents/w-act/assign", raw=b"[1, 2]")
    assert status == 400
    assert "JSON object" in body["error"]
    status, body = await engine.post("/api/incidents/w-act/assign", {"volunteer_id": "a b"})
    assert status == 400
    assert "volunteer_id" in body["error"]
    status, body = await engine.post("/api/incidents/w-act/assign", {})
    assert status == 400
    assert "volunteer_id" in body["error"]
    status, body = await engine.post("/api/incidents/w-act/assign", {"volunteer_id": "ghost"})
    assert status == 404
    assert "ghost" in body["error"]

    status, state = await engine.post(
        "/api/incidents/w-act/escalate", {"by": "李四", "reason": "caller unreachable"}
    )
    assert status == 200
    assert state["state"] == "escalated"
    assert state["escalation_reason"] == "caller unreachable"
    status, state = await engine.post("/api/incidents/w-act/cancel", {"by": "李四"})
    assert status == 200
    assert state["state"] == "cancelled"
    status, body = await engine.post("/api/incidents/w-act/resolve", {"by": "李四"})
    assert status == 409
    assert "cannot resolve" in body["error"]
    status, one = await engine.get("/api/incidents/w-act")
    by = [
        (e["type"], e.get("by")) for e in one["events"] if e["type"] in ("escalated", "cancelled")
    ]
    assert by == [("escalated", "李四"), ("cancelled", "李四")]


async def test_operator_actions_disabled_without_a_token(
    mqtt_url: str, redis_url: str, topic_root: str
) -> None:
    async for engine in _start(mqtt_url, redis_url, topic_root, **{"http.operator_token": ""}):
        status, body = await engine.post("/api/incidents", report("w-x"))
        assert status == 403
        assert "no operator token" in body["error"]


async def test_read_token_protects_reading(mqtt_url: str, redis_url: str, topic_root: str) -> None:
    async for engine in _start(mqtt_url, redis_url, topic_root, **{"http.read_token": READ_TOKEN}):
        for path in ("/api/incidents", "/api/area", "/api/volunteers", "/api/coverage",
                     "/api/figures", "/api/events"):  # fmt: skip
            assert (await engine.get(path))[0] == 401, path
            bad = {"Authorization": "Bearer wrong"}
            assert (await engine.get(path, headers=bad))[0] == 403, path
        for token in (READ_TOKEN, TOKEN):
            status, _ = await engine.get(
                "/api/incidents", headers={"Authorization": f"Bearer {token}"}
            )
            assert status == 200
        # The page and health stay open; the stream takes the token in the query too.
        assert (await engine.get("/"))[0] == 200
        assert (await engine.get("/healthz"))[0] == 200
        async with engine.http.get(engine.base + f"/api/events?access_token={READ_TOKEN}") as r:
            assert r.status == 200
            assert r.content_type == "text/event-stream"


# ------------------------------------------------------------------------- map, figures


async def test_volunteers_are_coarse_unless_assigned(engine: Engine) -> None:
    status, body = await engine.get("/api/volunteers")
    assert status == 200
    assert body["volunteers"] == []
    assert body["available"] == 0
    exact = (30.26013, 120.17021)
    await engine.publish(
        "volunteers/v-web/status",
        {"status": "available", "skills": ["first_aid"], "mode": "walk",
         "lat": exact[0], "lon": exact[1]},
    )  # fmt: skip
    body = await engine.until("/api/volunteers", lambda b: len(b["volunteers"]) == 1)
    [v] = body["volunteers"]
    assert v["id"] == "v-web"
    assert v["status"] == "available"
    assert v["exact"] is False
    assert (v["lat"], v["lon"]) != exact
    assert haversine_m(v["lat"], v["lon"], *exact) < 75  # within half a 100 m square's diagonal

    # The report alerts v-web; the operator assigns by hand: exact from then on.
    await engine.post("/api/incidents", report("w-vol", lat=30.2602, lon=120.1700))
    status, _state = await engine.post(
        "/api/incidents/w-vol/assign", {"volunteer_id": "v-web", "by": "王五"}
    )
    assert status == 200
    body = await engine.until(
        "/api/volunteers", lambda b: b["volunteers"][0]["status"] == "assigned"
    )
    [v] = body["volunteers"]
    assert v["exact"] is True
    assert (v["lat"], v["lon"]) == exact
    assert v["incident_id"] == "w-vol"
    status, one = await engine.get("/api/incidents/w-vol")
    assert [r["volunteer_id"] for r in one["responders"]] == ["v-web"]
    assigned = [e for e in one["events"] if e["type"] == "assigned"]
    assert assigned
    assert assigned[0]["by"] == "王五"


async def test_coverage_follows_the_available_volunteers(engine: Engine) -> None:
    status, body = await engine.get("/api/coverage")
    assert status == 200
    assert body["target_s"] == 180
    assert body["cells_total"] == len(body["cells"]) > 400
    assert all(c["eta_s"] is None for c in body["cells"])
    assert body["cells_within_target"] == 0
    await engine.publish(
        "volunteers/v-cov/status",
        {"status": "available", "skills": ["patrol"], "mode": "ebike",
         "lat": XIAOYING[0], "lon": XIAOYING[1]},
    )  # fmt: skip
    await engine.until("/api/volunteers", lambda b: b["available"] == 1)
    await asyncio.sleep(3.1)  # past the cache
    status, body = await engine.get("/api/coverage")
    reached = [c for c in body["cells"] if c["within_target"]]
    assert 0 < len(reached) == body["cells_within_target"] < body["cells_total"]
    assert min(c["eta_s"] for c in reached) < 60
    # No first-aider anywhere: the first-aid layer is all out of reach.
    status, body = await engine.get("/api/coverage?skill=first_aid")
    assert status == 200
    assert body["skill"] == "first_aid"
    assert body["cells_within_target"] == 0
    status, body = await engine.get("/api/coverage?skill=a%20b")
    assert status == 400
    assert "skill" in body["error"]


async def test_figures(engine: Engine) -> None:
    await engine.post("/api/incidents", report("w-f1"))
    await engine.post("/api/incidents", report("w-f2", kind="fire"))
    await engine.post("/api/incidents/w-f2/cancel", {"by": "x"})
    status, f = await engine.get(f"/api/figures?since={time.time() - 60:.0f}")
    assert status == 200
    assert f["incidents"] == 2
    assert f["open"] == 1
    assert f["escalated"] == 1
    assert f["by_state"]["cancelled"] == 1
    assert f["escalated_ever"] == 2
    assert f["p50_time_to_arrival_s"] is None
    assert f["within_target_share"] is None
    assert f["available_volunteers"] == 0
    assert f["target_s"] == 180
    assert sum(c["incidents"] for c in f["by_cell"].values()) == 2
    status, today = await engine.get("/api/figures")
    assert status == 200
    assert today["since"].endswith("Z")
    status, body = await engine.get("/api/figures?since=soon")
    assert status == 400
    assert "since" in body["error"]


async def test_figures_headline_counts_every_incident_that_needed_a_responder(
    engine: Engine,
) -> None:
    """The headline share: a verified arrival in time over every decided incident that
    needed a responder; a miss counts, a cancelled one does not, an open one still
    within the target waits (dispatch/headline.py)."""
    since = time.time() - 1000
    lat, lon = XIAOYING
    await engine.publish(
        "volunteers/hv1/status",
        {"status": "available", "skills": ["first_aid"], "lat": lat + 0.0005, "lon": lon},
    )
    await engine.until("/api/figures", lambda f: f["available_volunteers"] == 1)
    await engine.post("/api/incidents", report("h-ok"))
    detail = await engine.until("/api/incidents/h-ok", lambda b: b["alerts"])
    alert_id = detail["alerts"][0]["alert_id"]
    await engine.publish("volunteers/hv1/reply", {"alert_id": alert_id, "answer": "accept"})
    await engine.until("/api/incidents/h-ok", lambda b: b["state"] == "assigned")
    await engine.publish("volunteers/hv1/location", {"lat": lat + 0.0001, "lon": lon})
    ok = await engine.until("/api/incidents/h-ok", lambda b: b["state"] == "on_scene")
    # Nobody free for these: one long past its target (a miss), one just reported
    # (undecided), one cancelled (not needed).
    await engine.post("/api/incidents", report("h-miss", reported_at=time.time() - 400))
    await engine.post("/api/incidents", report("h-fresh"))
    await engine.post("/api/incidents", report("h-gone"))
    await engine.post("/api/incidents/h-gone/cancel", {"by": "x"})
    await asyncio.sleep(3.1)  # the figures are cached for 3 s
    status, f = await engine.get(f"/api/figures?since={since:.0f}")
    assert status == 200
    assert (f["needed"], f["decided"], f["within_target"], f["reached"]) == (3, 2, 1, 1)
    assert f["within_target_share"] == 0.5
    assert f["p50_time_to_arrival_s"] == pytest.approx(ok["time_to_arrival_s"], abs=0.1)
    assert f["unverified_arrivals"] == 0


# ------------------------------------------------------------------------- events


async def _read_events(
    engine: Engine, headers: dict[str, str], want: int, path: str = "/api/events"
) -> list[tuple[str, dict[str, Any]]]:
    """Read the stream until ``want`` events came (or 5 s passed); returns (id, data)."""
    out: list[tuple[str, dict[str, Any]]] = []
    async with engine.http.get(engine.base + path, headers=headers) as r:
        assert r.status == 200
        assert r.content_type == "text/event-stream"
        event: dict[str, str] = {}

        async def read() -> None:
            nonlocal event
            while len(out) < want:
                raw = await r.content.readline()
                if not raw:
                    return
                line = raw.decode().rstrip("\n")
                if not line:
                    if "id" in event:
                        assert event.get("event") == "incident"
                        out.append((event["id"], json.loads(event["data"])))
                    event = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    event[key] = value.removeprefix(" ")

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(read(), 5.0)
    return out


async def test_events_resume_after_last_event_id(engine: Engine) -> None:
    await engine.post("/api/incidents", report("w-ev"))
    await engine.post("/api/incidents/w-ev/escalate", {"by": "op"})
    await engine.post("/api/incidents/w-ev/resolve", {"by": "op"})
    _status, one = await engine.get("/api/incidents/w-ev")
    ids = [e["id"] for e in one["events"]]
    assert len(ids) >= 4
    after = ids[1]
    got = await _read_events(engine, {"Last-Event-ID": after}, want=len(ids) - 2 + 1)
    # Exactly the events after that id, in order, and nothing more has happened.
    assert [i for i, _ in got] == ids[2:]
    assert [d["type"] for _, d in got] == [e["type"] for e in one["events"][2:]]
    assert all(d["incident_id"] == "w-ev" for _, d in got)
    # The query parameter does the same (the page's first connection).
    got = await _read_events(engine, {}, want=2, path=f"/api/events?last_event_id={ids[-2]}")
    assert [i for i, _ in got] == ids[-1:]


async def test_events_stream_live_changes_and_reject_bad_ids(engine: Engine) -> None:
    status, body = await engine.get("/api/events", headers={"Last-Event-ID": "yesterday"})
    assert status == 400
    assert "Last-Event-ID" in body["error"]

    async def later() -> None:
        await asyncio.sleep(0.3)
        await engine.post("/api/incidents", report("w-live"))

    task = asyncio.create_task(later())
    got = await _read_events(engine, {}, want=1)
    await task
    assert got
    assert got[0][1]["incident_id"] == "w-live"
    assert got[0][1]["type"] == "reported"


@pytest.mark.timeout(60)
async def test_the_stream_outlives_quiet_periods(engine: Engine) -> None:
    """A listener keeps its stream through more than one Redis socket timeout (5 s)."""
    async with engine.http.get(engine.base + "/api/events") as r:
        assert r.status == 200
        started = time.monotonic()
        seen_keepalive = False
        while time.monotonic() - started < 7:
            line = await asyncio.wait_for(r.content.readline(), 6)
            assert line, "the stream ended"
            seen_keepalive = seen_keepalive or line.startswith(b": keep-alive")
        assert seen_keepalive
        await engine.post("/api/incidents", report("w-quiet"))
        while True:
            line = await asyncio.wait_for(r.content.readline(), 6)
            if line.startswith(b"data:"):
                assert json.loads(line[5:])["incident_id"] == "w-quiet"
                break
