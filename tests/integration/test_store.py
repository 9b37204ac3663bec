"""The Redis store against a real Redis: admission, atomic claims, persistence and the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import dispatch.store
from dispatch.effects import (
    ForgetPosition,
    LogEvent,
    Release,
    SaveIncident,
    SavePosition,
    SaveVolunteer,
)
from dispatch.store import Store


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_url, prefix="t:", location_ttl_s=300)
    yield s
    await s.close()


async def test_admission_is_idempotent_and_detects_conflicts(redis_url: str) -> None:
    store = Store.from_url(redis_url, prefix="t:", admission_lease_s=0.2)
    assert await store.admit("inc-1", "fp-a") == "new"
    # being stored by whoever admitted it: a copy now is dropped (the reporter retries)
    assert await store.admit("inc-1", "fp-a") == "pending"
    # admitted but never stored (the admitter died): once the lease is over, new again
    await asyncio.sleep(0.3)
    assert await store.admit("inc-1", "fp-a") == "new"
    await store.apply([SaveIncident("inc-1", {"id": "inc-1"}, open=True, reported_at=1.0)])
    assert await store.admit("inc-1", "fp-a") == "same"
    assert await store.admit("inc-1", "fp-b") == "conflict"
    assert await store.incident("inc-1") == {"id": "inc-1"}
    await store.close()


async def test_concurrent_admissions_create_one_incident(redis_url: str) -> None:
    stores = [Store.from_url(redis_url, prefix="t:") for _ in range(5)]
    try:
        answers = await asyncio.gather(*(s.admit("inc-x", "fp") for s in stores))
        assert sorted(answers) == ["new", "pending", "pending", "pending", "pending"]
    finally:
        for s in stores:
            await s.close()


async def test_a_volunteer_is_never_committed_twice_even_by_two_engines(redis_url: str) -> None:
    engines = [Store.from_url(redis_url, prefix="t:") for _ in range(2)]
    try:
        for round_ in range(50):
            vid = f"v{round_}"
            results = await asyncio.gather(
                engines[0].claim(vid, "inc-a"), engines[1].claim(vid, "inc-b")
            )
            assert sorted(results) == [False, True], results
            winner = "inc-a" if results[0] else "inc-b"
            assert await engines[0].claimed_by(vid) == winner
            # claiming again for the same incident is harmless (replays after restart)
            assert await engines[0].claim(vid, winner)
    finally:
        for s in engines:
            await s.close()


async def test_release_frees_only_its_own_claim(store: Store) -> None:
    assert await store.claim("v1", "inc-a")
    await store.apply([Release("v1", "inc-b")])  # a stale release from elsewhere
    assert await store.claimed_by("v1") == "inc-a"
    await store.apply([Release("v1", "inc-a")])
    assert await store.claimed_by("v1") is None
    assert await store.claim("v1", "inc-b")


async def test_volunteers_round_trip_and_positions_expire(redis_url: str) -> None:
    store = Store.from_url(redis_url, prefix="t:", location_ttl_s=0.3)
    try:
        await store.apply(
            [
                SaveVolunteer("v1", "available", ("first_aid", "patrol"), "bike"),
                SavePosition("v1", 30.25, 120.17, 1000.0),
                SaveVolunteer("v2", "off_duty", (), "walk"),
                SavePosition("v2", 30.26, 120.18, 1000.0),
                ForgetPosition("v2"),
            ]
        )
        got = {v.volunteer_id: v for v in await store.volunteers()}
        assert got["v1"].duty == "available"
        assert got["v1"].skills == ("first_aid", "patrol")
        assert got["v1"].mode == "bike"
        assert got["v1"].position == (30.25, 120.17, 1000.0)
        assert got["v2"].position is None
        await asyncio.sleep(0.5)
        assert {v.volunteer_id: v for v in await store.volunteers()}["v1"].position is None
    finally:
        await store.close()


async def test_incidents_open_then_ended_and_the_event_log(store: Store) -> None:
    ids = await store.apply(
        [
            SaveIncident("a", {"id": "a", "v": 1}, open=True, reported_at=10.0),
            LogEvent("a", "reported", 10.0, {"kind": "fall"}),
            SaveIncident("a", {"id": "a", "v": 2}, open=True, reported_at=10.0),
            SaveIncident("b", {"id": "b"}, open=True, reported_at=11.0),
            LogEvent("b", "reported", 11.0),
        ]
    )
    assert len(ids) == 2
    assert await store.incident("a") == {"id": "a", "v": 2}  # the last save wins
    assert await store.open_incident_ids() == ["a", "b"]
    await store.apply(
        [
            SaveIncident("a", {"id": "a", "v": 3}, open=False, reported_at=10.0, ended_at=20.0),
            LogEvent("a", "resolved", 20.0, {"by": "op"}),
        ]
    )
    assert await store.open_incident_ids() == ["b"]
    assert await store.ended_since(15.0) == ["a"]
    assert await store.reported_since(0) == ["a", "b"]
    events = await store.events_after("0")
    assert [(e.incident_id, e.type) for e in events] == [
        ("a", "reported"),
        ("b", "reported"),
        ("a", "resolved"),
    ]
    assert events[0].data == {"kind": "fall"}
    assert await store.events_after(events[1].event_id) == events[2:]
    assert [e.type for e in await store.incident_events("a")] == ["reported", "resolved"]
    assert await store.last_event_id() == events[-1].event_id


async def test_positions_are_saved_and_forgotten_in_chunks(redis_url: str) -> None:
    store = Store.from_url(redis_url, prefix="t:", location_ttl_s=0.3)
    try:
        await store.apply([SaveVolunteer(f"v{i}", "available", (), "walk") for i in range(5)])
        await store.save_positions([SavePosition("v4", 30.2, 120.1, 1.0)])
        # 5 effects in chunks of 2: three script calls
        await store.save_positions(
            [
                SavePosition("v0", 30.25, 120.17, 1000.5),
                SavePosition("v1", 30.26, 120.18, 1001.0),
                SavePosition("v2", 30.27, 120.19, 1002.0),
                SavePosition("v3", 30.28, 120.2, 1003.0),
                ForgetPosition("v4"),
            ],
            chunk=2,
        )
        got = {v.volunteer_id: v.position for v in await store.volunteers()}
        assert got == {
            "v0": (30.25, 120.17, 1000.5),
            "v1": (30.26, 120.18, 1001.0),
            "v2": (30.27, 120.19, 1002.0),
            "v3": (30.28, 120.2, 1003.0),
            "v4": None,
        }
        assert 0 < await store.redis.pttl("t:pos:v0") <= 300
        # An older position never replaces a newer one (a gateway's write landing after
        # the engine stored a status's newer position); a newer one does.
        await store.save_positions([SavePosition("v0", 30.3, 120.3, 1000.4)])
        await store.save_positions([SavePosition("v1", 30.3, 120.3, 1001.5)])
        got = {v.volunteer_id: v.position for v in await store.volunteers()}
        assert got["v0"] == (30.25, 120.17, 1000.5)
        assert got["v1"] == (30.3, 120.3, 1001.5)
        await store.save_positions([])  # nothing to write: no command
        await asyncio.sleep(0.5)
        assert all(v.position is None for v in await store.volunteers())
    finally:
        await store.close()


async def test_backend_down_is_reported_as_such() -> None:
    from dispatch.errors import BackendUnavailable

    dead = Store.from_url("redis://127.0.0.1:1/0")
    try:
        assert await dead.ping() is False
        with pytest.raises(BackendUnavailable):
            await dead.admit("x", "fp")
        with pytest.raises(BackendUnavailable):
            await dead.save_positions([SavePosition("v1", 30.25, 120.17, 1000.0)])
        with pytest.raises(BackendUnavailable):
            await dead.volunteers()
    finally:
        await dead.close()


# ---- issue 18: skills as a JSON list, the per-incident index, paging, a capped pool


async def test_skills_with_commas_survive_a_restart(store: Store) -> None:
    await store.apply([SaveVolunteer("v-c", "available", ("x,first_aid", "patrol"), "walk")])
    (got,) = await store.volunteers()
    assert got.skills == ("x,first_aid", "patrol")  # never a lone 'first_aid'


async def test_skills_stored_comma_joined_by_earlier_versions_still_read(store: Store) -> None:
    await store.redis.hset("t:vol:v-old", mapping={"duty": "available", "skills": "a,b"})
    (got,) = await store.volunteers()
    assert got.skills == ("a", "b")


async def test_volunteers_are_read_in_chunks_with_their_profiles(store: Store) -> None:
    """A restart reads the volunteers a chunk at a time, in columns: every volunteer
    once, each with its own profile and position, whatever chunk it came in."""
    modes = ("walk", "bike", "ebike")
    await store.apply(
        [
            SaveVolunteer(
                f"v{i:03d}",
                "available" if i % 4 else "off_duty",
                ("first_aid",) if i % 2 else (),
                modes[i % 3],
                {"max_alerts_per_day": 2} if i % 5 == 0 else {},
            )
            for i in range(200)
        ]
    )
    await store.save_positions(
        [SavePosition(f"v{i:03d}", 30.2, 120.1 + i / 1e4, 5.0 + i) for i in range(0, 200, 3)]
    )
    await store.redis.set("t:volunteers-not", "a key the scan must not take")
    chunks = [chunk async for chunk in store.volunteer_chunks(chunk=16)]
    assert len(chunks) > 3
    got = {v.volunteer_id: v for chunk in chunks for v in chunk}
    assert sorted(got) == [f"v{i:03d}" for i in range(200)]
    assert sum(len(c) for c in chunks) == 200  # each once
    for i in range(200):
        v = got[f"v{i:03d}"]
        assert v.duty == ("available" if i % 4 else "off_duty")
        assert v.skills == (("first_aid",) if i % 2 else ())
        assert v.mode == modes[i % 3]
        assert v.settings == ({"max_alerts_per_day": 2} if i % 5 == 0 else {})
        assert v.position == ((30.2, 120.1 + i / 1e4, 5.0 + i) if i % 3 == 0 else None)
    # each distinct profile is decoded once and shared: 3 of duty and skills (off duty
    # has none) x 3 modes x 2 settings
    assert len({id(p) for c in chunks for p in c.profiles}) == 18
    assert {v.volunteer_id for v in await store.volunteers()} == set(got)
    # a reader that stops half way leaves no answer behind for the store's next command
    reading = store.volunteer_chunks(chunk=16)
    first = await anext(reading)
    await reading.aclose()
    assert len(first) >= 16
    assert await store.redis.get("t:volunteers-not") == b"a key the scan must not take"
    assert len(await store.volunteers()) == 200


async def test_an_incidents_history_comes_from_its_index_not_a_scan_of_the_log(
    store: Store,
) -> None:
    ids = await store.apply([LogEvent("old-1", "reported", 1.0, {"kind": "fire"})])
    # 60,000 later events of other incidents: the old history scan saw only the newest
    # 50,000 entries and lost this incident's history.
    for start in range(0, 60_000, 5_000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for i in range(start, start + 5_000):
                pipe.xadd(
                    "t:events", {"incident_id": f"o{i}", "type": "x", "at": "1", "data": "{}"}
                )
            await pipe.execute()
    await store.apply([LogEvent("old-1", "resolved", 2.0, {"by": "op"})])
    history = await store.incident_events("old-1")
    assert [e.type for e in history] == ["reported", "resolved"]
    assert history[0].event_id == ids[0]
    assert history[0].data == {"kind": "fire"}
    assert [e.type for e in await store.incident_events("old-1", limit=1)] == ["resolved"]
    assert await store.incident_events("nobody") == []


async def test_a_batch_of_events_is_logged_in_order_with_each_incidents_index_capped(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One script call logs a whole batch (Store._queue): the ids come back in the order
    # of the effects, interleaved incidents included, and each index keeps its newest.
    monkeypatch.setattr(dispatch.store, "INCIDENT_EVENTS_MAX", 3)
    types = ["reported", "alerted", "declined", "expired", "assigned", "stood_down", "arrived"]
    batch = [LogEvent("x" if i % 3 else "y", types[i % 7], float(i), {"i": i}) for i in range(8)]
    ids = await store.apply(batch)
    logged = await store.events_after("0")
    assert [e.event_id for e in logged] == ids
    assert [(e.incident_id, e.type, e.at, e.data) for e in logged] == [
        (e.incident_id, e.type, e.at, dict(e.data)) for e in batch
    ]
    assert [e.data["i"] for e in await store.incident_events("x")] == [4, 5, 7]
    assert [e.data["i"] for e in await store.incident_events("y")] == [0, 3, 6]
    assert 0 < await store.redis.ttl("t:evi:x") <= store.history_ttl_s
    assert await store.apply([]) == []


async def test_events_and_records_are_stored_exactly_as_given(store: Store) -> None:
    # The batch reaches Redis as one JSON argument (Store._record_call): every string,
    # time and record comes back as given, whatever it holds.
    odd = 'quote " backslash \\ newline \n tab \t nul \x00 中文 emoji 🚑 \u2028 end'
    at = 1764931234.123456789  # every digit of a float's repr kept
    batch = [
        LogEvent("inc-a", "reported", at, {"address": odd, "lat": 30.123456789012345}),
        LogEvent("inc-b", "cancelled", at + 1, {"by": odd}),
        SaveIncident(
            "inc-a", {"id": "inc-a", "address": odd, "n": 2**60}, open=True, reported_at=at
        ),
        SaveIncident("inc-b", {"id": "inc-b"}, open=False, reported_at=at, ended_at=at + 1),
    ]
    await store.apply(batch)
    logged = await store.events_after("0")
    assert [(e.incident_id, e.type, e.at, e.data) for e in logged] == [
        ("inc-a", "reported", at, {"address": odd, "lat": 30.123456789012345}),
        ("inc-b", "cancelled", at + 1, {"by": odd}),
    ]
    assert await store.incident("inc-a") == {"id": "inc-a", "address": odd, "n": 2**60}
    assert await store.open_incident_ids() == ["inc-a"]
    assert await store.ended_since(0.0) == ["inc-b"]
    assert [e.type for e in await store.incident_events("inc-b")] == ["cancelled"]


async def test_reported_page_pages_through_history(store: Store) -> None:
    await store.apply(
        [SaveIncident(f"i{n:02}", {"id": f"i{n:02}"}, open=True, reported_at=n) for n in range(25)]
    )
    first = await store.reported_page(0, 0, 10)
    second = await store.reported_page(0, 10, 10)
    third = await store.reported_page(0, 20, 10)
    assert first + second + third == [f"i{n:02}" for n in range(25)]
    assert len(third) == 5


async def test_event_id_back_bounds_a_replay(store: Store) -> None:
    assert await store.event_id_back(3) == "0"
    ids = await store.apply([LogEvent("e", "reported", float(n)) for n in range(10)])
    back = await store.event_id_back(3)
    assert back == ids[6]  # the 3 newest come after it
    assert [e.event_id for e in await store.events_after(back)] == ids[7:]


async def test_a_capped_store_makes_callers_wait_instead_of_opening_more(redis_url: str) -> None:
    capped = Store.from_url(redis_url, prefix="t:", max_connections=2, timeout_s=1.0)
    try:
        blocked = [asyncio.create_task(capped.events_after("$", block_ms=500)) for _ in range(2)]
        await asyncio.sleep(0.1)
        pool = capped.redis.connection_pool
        assert len(pool._in_use_connections) == 2
        started = asyncio.get_running_loop().time()
        assert await capped.ping()  # waits for a connection to come back
        assert asyncio.get_running_loop().time() - started > 0.2
        await asyncio.gather(*blocked)
    finally:
        await capped.close()
