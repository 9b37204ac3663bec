"""Fencing against a real Redis: two instances' stores (dispatch/cluster.py), no processes.

The instance that created an incident owns it; another instance's writes for it are
dropped; once the ownership has moved (a lease ran out and another instance adopted
it), the old owner's writes and claims are refused and it forgets the incident.

An operator action given to another instance (its HTTP API) is carried out by the
owner, through the owner's command list; one the owner does not take in time is
withdrawn (never carried out later); an open incident nobody owns is adopted first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from dispatch.cluster import Cluster, FencedStore, OwnerUnavailable
from dispatch.config import load_config
from dispatch.dispatcher import UnknownIncident
from dispatch.effects import LogEvent, SaveIncident
from dispatch.errors import InvalidTransition
from dispatch.service import Service
from dispatch.wiring import build


def _service(redis_url: str, name: str) -> Service:
    config = load_config(
        env={
            "DISPATCH_REDIS": redis_url,
            "DISPATCH_CLUSTER_ENABLED": "true",
            "DISPATCH_INSTANCE": name,
            "DISPATCH_TOPIC_ROOT": "fence",
        }
    )
    return build(config)


@pytest_asyncio.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[Service, Service]]:
    a, b = _service(redis_url, "a"), _service(redis_url, "b")
    yield a, b
    await a.store.close()
    await b.store.close()


def _created(iid: str, note: str) -> list[LogEvent | SaveIncident]:
    return [
        LogEvent(iid, "reported", 1.0, {"kind": "fire"}),
        SaveIncident(iid, {"id": iid, "note": note}, open=True, reported_at=1.0),
    ]


def _cluster(service: Service) -> Cluster:
    assert isinstance(service.operators, Cluster)
    assert isinstance(service.store, FencedStore)
    return service.operators


async def test_the_creator_owns_and_others_are_refused(
    pair: tuple[Service, Service], redis_url: str
) -> None:
    a, b = pair
    ca, cb = _cluster(a), _cluster(b)
    await a.store.apply(_created("i1", "from a"))
    assert "i1" in ca.tokens
    # b creates the same incident a moment later (a duplicate work entry): refused.
    await b.store.apply(_created("i1", "from b"))
    assert "i1" not in cb.tokens
    assert "i1" in cb.lost
    assert await a.store.incident("i1") == {"id": "i1", "note": "from a"}
    assert await a.store.claim("v1", "i1") is True
    assert await b.store.claim("v2", "i1") is False  # b holds no token for it
    assert await a.store.claimed_by("v2") is None


async def test_an_old_owner_cannot_write_or_claim_after_its_lease(
    pair: tuple[Service, Service], redis_url: str
) -> None:
    a, b = pair
    ca, cb = _cluster(a), _cluster(b)
    await a.store.apply(_created("i2", "v1"))
    assert await a.store.claim("v1", "i2") is True
    # a is paused; its lease runs out and b adopts the incident (as _adopt_orphans does).
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.delete("fence:owner:i2")
        token = cb.new_token()
        assert await cb.store.take_ownership("i2", token, 5000)
        cb.tokens["i2"] = token
        # a wakes up: its claim (even for the volunteer it committed itself) and its
        # writes are refused, and it forgets the incident.
        # The claims of a run (Engine._execute) are fenced the same way.
        assert await a.store.claims([("v1", "i2"), ("v8", "i2")]) == [False, False]
        assert await a.store.claim("v1", "i2") is False  # the plain script would say yes
        assert "i2" in ca.lost
        assert await a.store.claim("v9", "i2") is False
        assert "i2" not in ca.tokens
        await a.store.apply([SaveIncident("i2", {"id": "i2", "note": "stale"}, True, 1.0)])
        assert await a.store.incident("i2") == {"id": "i2", "note": "v1"}
        assert await r.get("fence:claim:v9") is None
        # the new owner carries on.
        assert await b.store.claim("v9", "i2") is True
        await b.store.apply([SaveIncident("i2", {"id": "i2", "note": "b"}, True, 1.0)])
        assert await b.store.incident("i2") == {"id": "i2", "note": "b"}
    finally:
        await r.aclose()


async def _reported(service: Service, iid: str) -> None:
    """An incident created by ``service``, as from its work stream (no broker needed)."""
    now = service.clock()
    body = orjson.dumps({"id": iid, "kind": "fire", "lat": 30.28, "lon": 120.2})
    report = service.codec.decode_report_body(body, now)
    assert await service.engine.create(report, iid)


async def test_an_action_at_another_instance_is_carried_out_by_the_owner(
    pair: tuple[Service, Service],
) -> None:
    a, b = pair
    ca, cb = _cluster(a), _cluster(b)
    await _reported(a, "f1")
    assert "f1" in ca.tokens
    serving = asyncio.create_task(ca.serve_commands())
    try:
        state = await cb.operator("cancel", "f1", by="desk")
        assert state["state"] == "cancelled"
        assert state["end_reason"] == "cancelled by desk"
        assert a.core.incidents["f1"].state.value == "cancelled"  # done by a ...
        assert "f1" not in b.core.incidents  # ... not by b
        record = await b.store.incident("f1")
        assert record is not None
        assert record["state"] == "cancelled"
        # The owner's refusals come back as the same errors.
        with pytest.raises(InvalidTransition, match="cancelled to resolved"):
            await cb.operator("resolve", "f1", by="desk")
        with pytest.raises(UnknownIncident):
            await cb.operator("cancel", "no-such", by="desk")
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_an_amendment_at_another_instance_is_carried_out_by_the_owner(
    pair: tuple[Service, Service],
) -> None:
    a, b = pair
    ca, cb = _cluster(a), _cluster(b)
    await _reported(a, "f3")
    serving = asyncio.create_task(ca.serve_commands())
    try:
        changes, _ = b.codec.decode_amendment_body(
            orjson.dumps({"lat": 30.27, "lon": 120.19, "kind": "medical", "address": "新地址"})
        )
        state = await cb.operator("amend", "f3", by="desk", changes=changes)
        assert (state["lat"], state["lon"], state["kind"]) == (30.27, 120.19, "medical")
        assert state["skills"] == ["first_aid"]  # the new kind's defaults
        incident = a.core.incidents["f3"]  # done by a, the owner
        assert (incident.address, incident.moved_at is not None) == ("新地址", True)
        assert "f3" not in b.core.incidents
        record = await b.store.incident("f3")
        assert record is not None
        assert record["address"] == "新地址"
        await cb.operator("resolve", "f3", by="desk")
        with pytest.raises(InvalidTransition):
            await cb.operator("amend", "f3", by="desk", changes=changes)
        assert a.core.incidents["f3"].address == "新地址"
    finally:
        # Now and then the command loop loses a cancellation that lands while its Redis
        # read is being closed (it logs "command list not readable" and reads again):
        # cancel until it is done.
        while not serving.done():
            serving.cancel()
            await asyncio.wait([serving], timeout=1)


async def test_an_action_the_owner_does_not_take_is_withdrawn(
    pair: tuple[Service, Service], redis_url: str
) -> None:
    a, b = pair
    cb = _cluster(b)
    await _reported(a, "f2")  # a holds the lease but serves no commands (hung)
    started = time.monotonic()
    with pytest.raises(OwnerUnavailable, match="was not carried out") as caught:
        await cb.operator("cancel", "f2", by="desk")
    assert 2.5 < time.monotonic() - started < 5.0
    assert caught.value.instance == "a"
    r = aioredis.Redis.from_url(redis_url)
    try:
        assert await r.llen("fence:commands:a") == 0  # withdrawn: a never sees it
    finally:
        await r.aclose()
    assert a.core.incidents["f2"].state.value != "cancelled"


async def test_an_orphan_is_adopted_then_acted_on(
    pair: tuple[Service, Service], redis_url: str
) -> None:
    a, b = pair
    cb = _cluster(b)
    await _reported(a, "f3")
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.delete("fence:owner:f3")  # a died and its lease ran out
    finally:
        await r.aclose()
    state = await cb.operator("resolve", "f3", by="desk")
    assert state["state"] == "resolved"
    assert b.core.incidents["f3"].state.value == "resolved"  # b adopted it and acted
    record = await b.store.incident("f3")
    assert record is not None
    assert record["state"] == "resolved"
