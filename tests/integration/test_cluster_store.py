"""Fencing against a real Redis: two instances' stores (dispatch/cluster.py), no processes.

The instance that created an incident owns it; another instance's writes for it are
dropped; once the ownership has moved (a lease ran out and another instance adopted
it), the old owner's writes and claims are refused and it forgets the incident.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from dispatch.cluster import Cluster, FencedStore
from dispatch.config import load_config
from dispatch.effects import LogEvent, SaveIncident
from dispatch.service import Service


def _service(redis_url: str, name: str) -> Service:
    config = load_config(
        env={
            "DISPATCH_REDIS": redis_url,
            "DISPATCH_CLUSTER_ENABLED": "true",
            "DISPATCH_INSTANCE": name,
            "DISPATCH_TOPIC_ROOT": "fence",
        }
    )
    return Service(config)


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
    assert service.cluster is not None
    assert isinstance(service.store, FencedStore)
    return service.cluster


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
        assert await cb._adopt(keys=["fence:owner:i2", "fence:inc:i2"], args=[token, 5000])
        cb.tokens["i2"] = token
        # a wakes up: its claim (even for the volunteer it committed itself) and its
        # writes are refused, and it forgets the incident.
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
