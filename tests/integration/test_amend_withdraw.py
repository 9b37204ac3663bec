"""Amending an incident (PATCH, protocol 1.1) and a responder's withdraw, with the engine
in-process against a real Mosquitto and Redis: what volunteers receive over MQTT, what
the API answers, and what the event log keeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import orjson
import pytest_asyncio
import servers

from tests.integration.test_web import TOKEN, XIAOYING, Engine, _start, report

SOUTH = (XIAOYING[0] - 0.0027, XIAOYING[1])  # 300 m south, inside the area


@pytest_asyncio.fixture
async def engine(mqtt_url: str, redis_url: str, topic_root: str) -> AsyncIterator[Engine]:
    async for e in _start(mqtt_url, redis_url, topic_root):
        yield e


async def patch(engine: Engine, iid: str, body: Any, token: str | None = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with engine.http.patch(f"{engine.base}/api/incidents/{iid}", data=data,
                                 headers=headers) as r:  # fmt: skip
        return r.status, await r.json()


@contextlib.asynccontextmanager
async def watching(engine: Engine, *filters: str) -> AsyncIterator[aiomqtt.Client]:
    async with servers.mqtt_client(engine.mqtt_url) as client:
        for f in filters:
            await client.subscribe(f"{engine.config.topic_root}/{f}", qos=1)
        yield client


async def next_on(client: aiomqtt.Client, suffix: str, within: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        async for message in client.messages:
            if str(message.topic).endswith(suffix) and message.payload:
                payload = message.payload
                assert isinstance(payload, bytes)
                body: dict[str, Any] = orjson.loads(payload)
                return body
    raise AssertionError("unreachable")


async def on_duty(engine: Engine, vid: str, lat: float, lon: float) -> None:
    await engine.publish(
        f"volunteers/{vid}/status",
        {"status": "available", "skills": ["first_aid"], "mode": "walk", "lat": lat, "lon": lon},
    )


async def test_patch_moves_the_incident_and_tells_everyone(engine: Engine) -> None:
    await on_duty(engine, "am-near", XIAOYING[0] + 0.0005, XIAOYING[1])
    await on_duty(engine, "am-far", XIAOYING[0] + 0.0012, XIAOYING[1])
    await on_duty(engine, "am-south", SOUTH[0] - 0.0004, SOUTH[1])
    await engine.until("/api/volunteers", lambda b: b["available"] == 3)
    async with watching(engine, "volunteers/+/alert", "volunteers/+/assignment") as vols:
        status, _ = await engine.post("/api/incidents", report("am-1", responders=1))
        assert status == 201
        alert = await next_on(vols, "am-near/alert")
        await engine.publish("volunteers/am-near/reply",
                             {"alert_id": alert["alert_id"], "answer": "accept"})  # fmt: skip
        go = await next_on(vols, "am-near/assignment")
        assert go["action"] == "go"

        # bad requests change nothing
        assert (await patch(engine, "am-1", {"address": "x"}, token=None))[0] == 401
        status, err = await patch(engine, "am-1", b"")
        assert status == 400
        assert "empty" in err["error"]
        status, err = await patch(engine, "am-1", {"priority": 9})
        assert status == 400
        assert "'priority'" in err["error"]
        assert "1 to 3" in err["error"]
        status, err = await patch(engine, "am-1", {"state": "resolved"})
        assert status == 400
        assert "'state' cannot be amended" in err["error"]
        status, err = await patch(engine, "am-1", {"lat": 30.1, "lon": 120.0})
        assert status == 422
        status, err = await patch(engine, "nobody", {"address": "x"})
        assert status == 404

        status, body = await patch(
            engine,
            "am-1",
            {"lat": SOUTH[0], "lon": SOUTH[1], "address": "小营巷 40 号", "responders": 2,
             "by": "李四"},
        )  # fmt: skip
        assert status == 200
        # the same shape as GET: the state, the alerts and the timeline
        assert body["lat"] == SOUTH[0]
        assert body["address"] == "小营巷 40 号"
        assert body["responders_needed"] == 2
        assert "alerts" in body
        amended = [e for e in body["events"] if e["type"] == "amended"]
        assert amended[0]["by"] == "李四"
        assert amended[0]["changes"]["address"] == "小营巷 40 号"
        # the responder on the way is sent to the new place, role kept
        update = await next_on(vols, "am-near/assignment")
        assert update["action"] == "go"
        assert update["reason"] == "location updated"
        assert (update["lat"], update["lon"]) == SOUTH
        assert update["address"] == "小营巷 40 号"
        assert update["role"] == "primary"
        # a second responder is sought from the new place: the nearest there first
        alert2 = await next_on(vols, "am-south/alert")
        assert (alert2["lat"], alert2["lon"]) == SOUTH

    # the retained state was republished with the new place
    async with watching(engine, "incidents/am-1/state") as states:
        state = await next_on(states, "am-1/state")
    assert (state["lat"], state["lon"]) == SOUTH

    status, _ = await engine.post("/api/incidents/am-1/resolve", {"by": "李四"})
    assert status == 200
    status, err = await patch(engine, "am-1", {"address": "y"})
    assert status == 409
    assert "ended" in err["error"]
    _, one = await engine.get("/api/incidents/am-1")
    assert one["address"] == "小营巷 40 号"
    # a reporter resending its report with the same id and another body: still a conflict
    status, err = await engine.post("/api/incidents", report("am-1", address="elsewhere"))
    assert status == 409


async def test_withdraw_releases_and_replaces(engine: Engine) -> None:
    await on_duty(engine, "wd-1", XIAOYING[0] + 0.0005, XIAOYING[1])
    await on_duty(engine, "wd-2", XIAOYING[0] + 0.0010, XIAOYING[1])
    await engine.until("/api/volunteers", lambda b: b["available"] == 2)
    root = engine.config.topic_root
    async with watching(engine, "volunteers/+/alert", "volunteers/+/assignment",
                        "rejected") as vols:  # fmt: skip
        await engine.post("/api/incidents", report("wd-i"))
        alert = await next_on(vols, "wd-1/alert")
        # not accepted yet: rejected with a reason
        await engine.publish("volunteers/wd-1/reply",
                             {"alert_id": alert["alert_id"], "answer": "withdraw"})  # fmt: skip
        rejected = await next_on(vols, "/rejected")
        assert rejected["code"] == "not_accepted"
        assert rejected["topic"] == f"{root}/volunteers/wd-1/reply"
        await engine.publish("volunteers/wd-1/reply",
                             {"alert_id": alert["alert_id"], "answer": "accept"})  # fmt: skip
        assert (await next_on(vols, "wd-1/assignment"))["action"] == "go"
        await engine.publish("volunteers/wd-1/reply",
                             {"alert_id": alert["alert_id"], "answer": "withdraw"})  # fmt: skip
        stand_down = await next_on(vols, "wd-1/assignment")
        assert stand_down == {"incident_id": "wd-i", "action": "stand_down",
                              "reason": "withdrawn", "alert_id": alert["alert_id"]}  # fmt: skip
        # the place is open again: wd-2 (alerted in the first wave, kept as a possible
        # backup) accepts and goes as the primary
        _, one = await engine.get("/api/incidents/wd-i")
        (other,) = [a for a in one["alerts"] if a["volunteer_id"] == "wd-2"]
        assert other["status"] == "pending"
        await engine.publish("volunteers/wd-2/reply",
                             {"alert_id": other["alert_id"], "answer": "accept"})  # fmt: skip
        go = await next_on(vols, "wd-2/assignment")
        assert go["action"] == "go"
        assert go["role"] == "primary"
    _, one = await engine.get("/api/incidents/wd-i")
    assert [(r["volunteer_id"], r["released"]) for r in one["responders"]] == [
        ("wd-1", True),
        ("wd-2", False),
    ]
    withdrawn = [e for e in one["events"] if e["type"] == "withdrawn"]
    assert withdrawn[0]["volunteer_id"] == "wd-1"
