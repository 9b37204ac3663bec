"""Duplicate reports with the engine in-process against a real Mosquitto and Redis: two
reporters call in the same event over MQTT, the second is linked to the first, an
operator merges it over HTTP; what the volunteers, the reporters and the API see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import orjson
import psycopg
import pytest
import pytest_asyncio

from dispatch.archive import Archive, migrate
from dispatch.config import load_config
from dispatch.dispatcher import BadMerge, UnknownIncident
from dispatch.model import Kind, Report
from dispatch.report import from_incidents
from dispatch.report import row as report_row
from dispatch.service import Service
from geo.area import ServiceArea
from tests.archive_data import BASE
from tests.integration.test_amend_withdraw import on_duty, watching
from tests.integration.test_cluster_store import _cluster, _reported, pair
from tests.integration.test_web import XIAOYING, Engine, _start, report
from tests.unit.test_dispatcher import make

__all__ = ["pair"]  # the fixture, shared

NORTH_50M = (XIAOYING[0] + 50 / 111_195, XIAOYING[1])
AREA = ServiceArea.from_geojson(load_config(env={}).area_geojson)


@pytest_asyncio.fixture
async def engine(mqtt_url: str, redis_url: str, topic_root: str) -> AsyncIterator[Engine]:
    async for e in _start(mqtt_url, redis_url, topic_root):
        yield e


class Inbox:
    """Messages of one client, kept in order: taking one leaves the others to be taken
    (an alert and a state message may come in either order)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.kept: list[tuple[str, dict[str, Any]]] = []

    async def take(
        self, suffix: str, within: float = 5.0, where: Any = lambda body: True
    ) -> dict[str, Any]:
        """The first message on a topic ending in ``suffix`` (that ``where`` accepts);
        those before it on that topic are dropped."""
        async with asyncio.timeout(within):
            while True:
                self.kept = [
                    (topic, body)
                    for topic, body in self.kept
                    if not topic.endswith(suffix) or where(body)
                ]
                for i, (topic, body) in enumerate(self.kept):
                    if topic.endswith(suffix):
                        del self.kept[i]
                        return body
                message = await anext(self.client.messages)
                if isinstance(message.payload, bytes) and message.payload:
                    self.kept.append((str(message.topic), orjson.loads(message.payload)))


async def merge(engine: Engine, iid: str, body: Any, token: str | None = "default") -> Any:
    if token == "default":
        return await engine.post(f"/api/incidents/{iid}/merge", body)
    return await engine.post(f"/api/incidents/{iid}/merge", body, token=token)


async def test_a_duplicate_is_linked_merged_and_its_reporter_kept_informed(
    engine: Engine,
) -> None:
    await on_duty(engine, "dup-a", XIAOYING[0] + 0.0009, XIAOYING[1])  # 100 m north
    await engine.until("/api/volunteers", lambda b: b["available"] == 1)
    first = report("dup-1", responders=1)
    second = report("dup-2", responders=1, lat=NORTH_50M[0], lon=NORTH_50M[1])
    async with watching(
        engine,
        "volunteers/+/alert",
        "volunteers/+/assignment",
        "incidents/dup-1/state",
        "incidents/dup-2/state",
    ) as client:
        inbox = Inbox(client)
        next_on = inbox.take
        # two reporters over MQTT, as the protocol has them; each gets its receipt
        await engine.publish("incidents/report", first)
        assert (await next_on("dup-1/state"))["likely_duplicate_of"] is None
        alert_a = await next_on("/alert")
        assert alert_a["incident_id"] == "dup-1"
        # another volunteer comes on duty, between the two reports
        await on_duty(engine, "dup-b", XIAOYING[0] + 0.0018, XIAOYING[1])  # 200 m north
        await engine.until("/api/volunteers", lambda b: b["available"] == 1)
        await engine.publish("incidents/report", second)
        receipt = await next_on("dup-2/state")
        assert receipt["likely_duplicate_of"] == "dup-1"
        assert receipt["state"] not in ("cancelled", "resolved")
        # dispatched as usual: the other volunteer is alerted for the second report
        b_alert = await next_on("dup-b/alert")
        assert b_alert["incident_id"] == "dup-2"
        b_vid = "dup-b"
        await engine.publish(
            f"volunteers/{b_vid}/reply", {"alert_id": b_alert["alert_id"], "answer": "accept"}
        )
        assert (await next_on(f"{b_vid}/assignment"))["action"] == "go"
        # the first's volunteer declines: the first needs someone
        a_alert = alert_a
        await engine.publish(
            "volunteers/dup-a/reply", {"alert_id": a_alert["alert_id"], "answer": "decline"}
        )
        await engine.until(
            "/api/incidents/dup-1?events=0",
            lambda b: not [a for a in b["alerts"] if a["status"] == "pending"],
        )

        # the API shows the link
        status, b_body = await engine.get("/api/incidents/dup-2")
        assert status == 200
        assert b_body["likely_duplicate_of"] == "dup-1"
        suspected = [e for e in b_body["events"] if e["type"] == "duplicate_suspected"]
        assert suspected[0]["of"] == "dup-1"
        assert 45 <= suspected[0]["distance_m"] <= 55
        status, listing = await engine.get("/api/incidents")
        assert status == 200
        linked = {s["id"]: s["likely_duplicate_of"] for s in listing["incidents"]}
        assert linked == {"dup-1": None, "dup-2": "dup-1"}

        # bad merges: each says what is wrong, and changes nothing
        assert (await merge(engine, "dup-2", {"into": "dup-1"}, token=None))[0] == 401
        status, err = await merge(engine, "dup-2", {})
        assert status == 400
        assert "'into' is required" in err["error"]
        status, err = await merge(engine, "dup-2", {"into": "dup-1", "force": True})
        assert status == 400
        assert "'force' is not known" in err["error"]
        status, err = await merge(engine, "dup-2", {"into": "dup-1", "other_kind": "yes"})
        assert status == 400
        assert "'other_kind' must be true or false" in err["error"]
        status, err = await merge(engine, "dup-2", {"into": "dup-2"})
        assert status == 400
        assert err["code"] == "merge_into_itself"
        status, err = await merge(engine, "dup-2", {"into": "nobody"})
        assert status == 404
        assert "no incident with id 'nobody' to merge into" in err["error"]
        status, err = await merge(engine, "nobody", {"into": "dup-1"})
        assert status == 404
        assert "'nobody'" in err["error"]

        # the merge
        status, merged = await merge(engine, "dup-2", {"into": "dup-1", "by": "王五"})
        assert status == 200, merged
        assert merged["state"] == "cancelled"
        assert merged["merged_into"] == "dup-1"
        assert merged["end_reason"] == "merged into dup-1 by 王五"
        # its responder is stood down, then asked to go to the first (free, and nearest)
        down = await next_on(f"{b_vid}/assignment")
        assert down["action"] == "stand_down"
        assert down["incident_id"] == "dup-2"
        assert down["reason"] == "incident merged into another report of the same event"
        offer = await next_on(f"{b_vid}/alert")
        assert offer["incident_id"] == "dup-1"
        # the second reporter's receipt: its incident is cancelled (all a 1.0 client
        # needs) and names the one to follow from now on
        b_state = await next_on("dup-2/state", where=lambda b: b["state"] == "cancelled")
        assert b_state["state"] == "cancelled"
        assert b_state["merged_into"] == "dup-1"
        a_state = await next_on("dup-1/state", where=lambda b: b["merged_from"])
        assert a_state["merged_from"] == ["dup-2"]
        assert a_state["state"] not in ("cancelled", "resolved")

        # a retry of the second report gets its receipt again: the merged state
        await engine.publish("incidents/report", second)
        again = await next_on("dup-2/state", where=lambda b: b["version"] >= b_state["version"])
        assert again["merged_into"] == "dup-1"

    # a second merge is refused, and so is one into the merged incident
    status, err = await merge(engine, "dup-2", {"into": "dup-1"})
    assert status == 409
    assert err["code"] == "already_merged"
    assert "already merged into 'dup-1'" in err["error"]
    status, err = await merge(engine, "dup-1", {"into": "dup-2"})
    assert status == 409
    assert err["code"] == "target_ended"

    # the timelines keep it, and the retained state is there for a late subscriber
    status, a_body = await engine.get("/api/incidents/dup-1")
    assert [e["merged"] for e in a_body["events"] if e["type"] == "merged"] == ["dup-2"]
    status, b_body = await engine.get("/api/incidents/dup-2")
    assert [e["into"] for e in b_body["events"] if e["type"] == "merged"] == ["dup-1"]
    async with watching(engine, "incidents/dup-2/state") as late:
        retained = await Inbox(late).take("dup-2/state")
        assert retained["merged_into"] == "dup-1"


async def test_other_kinds_merge_only_when_the_operator_says_so(engine: Engine) -> None:
    status, _ = await engine.post("/api/incidents", report("kind-1"))
    assert status == 201
    status, fire = await engine.post(
        "/api/incidents", report("kind-2", kind="fire", lat=NORTH_50M[0], lon=NORTH_50M[1])
    )
    assert status == 201
    assert fire["likely_duplicate_of"] is None  # another kind: no guess
    status, err = await merge(engine, "kind-2", {"into": "kind-1"})
    assert status == 409
    assert err["code"] == "other_kind"
    assert '"other_kind": true' in err["error"]
    status, merged = await merge(engine, "kind-2", {"into": "kind-1", "other_kind": True})
    assert status == 200
    assert merged["merged_into"] == "kind-1"
    assert orjson.loads(orjson.dumps(merged))["state"] == "cancelled"


async def test_the_archive_keeps_the_link_and_counts_no_miss(postgres_url: str) -> None:
    """A merged report is archived with ``merged_into`` (column and record); cancelled,
    it is in no figure's denominator and never a miss. A schema archived before the
    column is filled from the records on upgrade."""
    archive = Archive(postgres_url)
    await migrate(postgres_url)
    d = make(AREA)
    t0 = BASE
    d.report(Report(kind=Kind.FALL, lat=XIAOYING[0], lon=XIAOYING[1], id="arch-a"), t0)
    d.report(Report(kind=Kind.FALL, lat=NORTH_50M[0], lon=NORTH_50M[1], id="arch-b"), t0 + 20)
    assert d.incidents["arch-b"].likely_duplicate_of == "arch-a"
    d.merge("arch-b", "arch-a", t0 + 30, by="王五")
    d.resolve("arch-a", t0 + 900)
    for iid in ("arch-a", "arch-b"):
        assert await archive.save(d.incidents[iid].to_record(), [])
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cur = await conn.execute("SELECT id, state, merged_into FROM incidents ORDER BY id")
        assert await cur.fetchall() == [
            ("arch-a", "resolved", None),
            ("arch-b", "cancelled", "arch-a"),
        ]
    record = await archive.record("arch-b")
    assert record is not None
    assert record["merged_into"] == "arch-a"
    assert record["end_reason"] == "merged into arch-a by 王五"
    a_record = await archive.record("arch-a")
    assert a_record is not None
    assert a_record["merged_from"] == ["arch-b"]
    # neither reached: only the first is a miss; the merged report needed nobody
    now = t0 + 3600
    misses, counts = await archive.misses(
        start=t0 - 60, end=t0 + 60, target_s=180.0, now=now, limit=10, offset=0
    )
    assert [m["id"] for m in misses] == ["arch-a"]
    assert sum(counts.values()) == 1
    groups, whole = await archive.report(
        start=t0 - 60, end=t0 + 60, by="kind", target_s=180.0, now=now
    )
    row = report_row(None, whole)
    assert row["within_target_share"] == 0.0
    python_rows, python_total = from_incidents(
        [d.incidents["arch-a"], d.incidents["arch-b"]], "kind", target_s=180.0, now=now
    )
    assert [report_row(g, c) for g, c in groups] == python_rows
    assert row == python_total
    await archive.close()


async def test_a_merge_at_another_instance_is_carried_out_by_the_owner(
    pair: tuple[Service, Service],
) -> None:
    """Two engine instances: a merge asked of the one that does not own the duplicate is
    forwarded to its owner; a refused merge comes back with its code; a merge of an ended
    incident nobody owns is refused as the owner would."""
    a, b = pair
    ca, cb = _cluster(a), _cluster(b)
    await _reported(a, "m1")
    await _reported(a, "m2")  # the same place and kind: a likely duplicate
    assert a.core.incidents["m2"].likely_duplicate_of == "m1"
    serving = asyncio.create_task(ca.serve_commands())
    try:
        with pytest.raises(BadMerge, match="into itself") as refused:
            await cb.operator("merge", "m2", by="desk", into="m2")
        assert refused.value.code == "merge_into_itself"
        with pytest.raises(UnknownIncident, match="nobody"):
            await cb.operator("merge", "m2", by="desk", into="nobody")
        state = await cb.operator("merge", "m2", by="desk", into="m1", other_kind=False)
        assert state["state"] == "cancelled"
        assert state["merged_into"] == "m1"
        assert a.core.incidents["m1"].merged_from == ["m2"]  # done by a, the owner
        assert "m2" not in b.core.incidents
        with pytest.raises(BadMerge, match="already merged") as refused:
            await cb.operator("merge", "m2", by="desk", into="m1")
        assert refused.value.code == "already_merged"
    finally:
        while not serving.done():  # as in test_cluster_store.py
            serving.cancel()
            await asyncio.wait([serving], timeout=1)
