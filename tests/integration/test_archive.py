"""The archive against a real Redis and a real PostgreSQL (dispatch/archive.py, archiver.py).

- The report's SQL gives the same figures as the headline computed in Python on the
  same incidents, for every grouping.
- Catch-up: PostgreSQL killed (kill -9) while the archiver writes, started again: every
  ended incident is there once, with every event once, and nothing is left pending.
- The archiver killed mid-way (its task cancelled between commit and acknowledgement;
  the process killed with SIGKILL): the next one finishes the work, nothing twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import psycopg
import pytest
import servers
from archive_data import BASE, log_ended, some_incidents

from dispatch import report
from dispatch.archive import Archive, migrate
from dispatch.archiver import GROUP, Archiver
from dispatch.errors import BackendUnavailable
from dispatch.localservers import free_port
from dispatch.metrics import Metrics
from dispatch.store import Store

NOW = BASE + 90 * 86_400
TARGET = 180.0


@contextlib.asynccontextmanager
async def _store(redis_url: str) -> AsyncIterator[Store]:
    store = Store.from_url(redis_url, prefix="arc:")
    try:
        yield store
    finally:
        await store.close()


async def _until(check: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        last = await check()
        if last is True:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: never; last {last!r}")
        await asyncio.sleep(0.1)


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _pending(store: Store) -> int:
    info = await store.redis.xpending("arc:events", GROUP)  # the test looks inside
    return int(info["pending"])


async def test_report_sql_equals_the_headline_in_python(postgres_url: str) -> None:
    incidents = some_incidents(300)
    archive = Archive(postgres_url)
    await migrate(postgres_url)
    await migrate(postgres_url)  # twice: nothing to do the second time
    for incident in incidents:
        assert await archive.save(incident.to_record(), [])
    assert not await archive.save(incidents[0].to_record(), [])  # same version: untouched
    start, end = BASE - 86_400, BASE + 400 * 1800
    # The boundary case: a verified arrival at exactly the target is within it.
    assert any(i.time_to_arrival_s() == TARGET for i in incidents)
    for by in report.BY:
        groups, whole = await archive.report(start=start, end=end, by=by, target_s=TARGET, now=NOW)
        sql_rows = [report.row(g, c) for g, c in groups]
        py_rows, py_total = report.from_incidents(incidents, by, target_s=TARGET, now=NOW)
        assert sql_rows == py_rows, by
        assert report.row(None, whole) == py_total
    # "Now" decides: an incident reported 100 s before now, not reached, is undecided.
    groups, whole = await archive.report(
        start=start, end=end, by="kind", target_s=TARGET, now=incidents[-1].reported_at + 100
    )
    _, py_total = report.from_incidents(
        incidents, "kind", target_s=TARGET, now=incidents[-1].reported_at + 100
    )
    assert report.row(None, whole) == py_total
    # Only the period asked for.
    _, whole = await archive.report(
        start=incidents[10].reported_at, end=incidents[20].reported_at, by="day",
        target_s=TARGET, now=NOW,
    )  # fmt: skip
    assert whole.incidents == 10
    await archive.close()


async def test_misses_sql_equals_python_with_every_reason(postgres_url: str) -> None:
    incidents = some_incidents(300, seed=16)
    # No-shows: someone accepted, nobody arrived (the generator has none of its own).
    for incident in incidents[::9]:
        if incident.first_accept_at is not None:
            incident.first_arrival_at = incident.first_verified_at = None
            incident.responders = [
                dataclasses.replace(r, arrived_at=None, verified_at=None)
                for r in incident.responders
            ]
    archive = Archive(postgres_url)
    await migrate(postgres_url)
    for incident in incidents:
        await archive.save(incident.to_record(), [])
    start, end = BASE - 86_400, BASE + 400 * 1800
    expected = report.misses_from_incidents(incidents, target_s=TARGET, now=NOW)
    reasons = collections.Counter(m["reason"] for m in expected)
    assert set(reasons) == set(report.MISS_REASONS), reasons
    got: list[dict[str, Any]] = []
    while True:  # paged, 37 at a time
        page, counts = await archive.misses(
            start=start, end=end, target_s=TARGET, now=NOW, limit=37, offset=len(got)
        )
        assert counts == dict(reasons)
        got += page
        if len(page) < 37:
            break
    assert got == expected
    # The reason follows the definitions: a miss is needed, decided and not within.
    by_id = {i.id: i for i in incidents}
    for m in got:
        i = by_id[m["id"]]
        assert i.state.value != "cancelled"
        assert i.time_to_arrival_s() is None or i.time_to_arrival_s() > TARGET  # type: ignore[operator]
    # "Now" decides: within the target's time, an unreached incident is not a miss yet.
    last = incidents[-1]
    soon = last.reported_at + 100
    page, _ = await archive.misses(
        start=last.reported_at, end=end, target_s=TARGET, now=soon, limit=10, offset=0
    )
    assert page == report.misses_from_incidents([last], target_s=TARGET, now=soon)
    if last.first_verified_at is None and last.state.value != "cancelled":
        assert page == []
    await archive.close()


async def test_catch_up_after_postgres_is_killed(redis_url: str) -> None:
    server = servers.start_postgres()
    try:
        url = server.url
        incidents = some_incidents(120, seed=3)
        async with _store(redis_url) as store, _store(redis_url) as writer:
            for incident in incidents[:40]:
                await log_ended(writer, incident)
            metrics = Metrics()
            archiver = Archiver(
                store, Archive(url, timeout_s=2), batch=7, retry_s=0.2, metrics=metrics
            )
            stop = asyncio.Event()
            task = asyncio.create_task(archiver.run(stop))
            await _until(
                lambda: _count(archiver.archive, ">=", 10), 20, "the first incidents archived"
            )
            port, workdir = server.ports["tcp"], server.workdir
            server.kill()  # kill -9, mid-way
            for incident in incidents[40:]:
                await log_ended(writer, incident)  # dispatch goes on meanwhile
            await asyncio.sleep(1.0)  # the archiver fails and retries for a while
            assert not task.done()
            # The metrics say so: failed rounds, and the lag of the events held.
            assert _sample(metrics, "dispatch_archive_errors_total", backend="postgres") >= 1
            lag = _sample(metrics, "dispatch_archive_lag_seconds")
            assert lag > 0
            await asyncio.sleep(0.3)
            assert _sample(metrics, "dispatch_archive_lag_seconds") > lag  # it grows
            server = servers.start_postgres(port=port, workdir=workdir)
            await _until(lambda: _count(archiver.archive, "==", len(incidents)), 30, "all archived")
            await _until(lambda: _zero(_pending(store)), 10, "nothing left pending")
            stop.set()
            await asyncio.wait_for(task, 10)
            # Each incident written once; caught up: no lag.
            written = _sample(metrics, "dispatch_archive_incidents_total", outcome="written")
            assert written == len(incidents)
            assert _sample(metrics, "dispatch_archive_lag_seconds") == 0
            await _check_once_each(archiver.archive, store, incidents)
            await archiver.archive.close()
    finally:
        server.stop()


async def test_archiver_cancelled_between_commit_and_ack(redis_url: str, postgres_url: str) -> None:
    """Killed after writing and before acknowledging: the events are done again, and
    the archive is unchanged by it."""
    incidents = some_incidents(30, seed=4)
    async with _store(redis_url) as store:
        for incident in incidents:
            await log_ended(store, incident)

        class DiesAfterCommit(Archive):  # a fault injected into our own seam
            saved = 0

            async def save(self, record: Any, events: Any) -> bool:
                written = await super().save(record, events)
                DiesAfterCommit.saved += 1
                if DiesAfterCommit.saved == 12:
                    raise asyncio.CancelledError  # as if killed right after the commit
                return written

        first = Archiver(store, DiesAfterCommit(postgres_url), consumer="a", batch=50)
        with pytest.raises(asyncio.CancelledError):
            await first.run(asyncio.Event())
        await first.archive.close()
        archive = Archive(postgres_url)
        assert len(await archive.incident_ids()) == 12
        assert await _pending(store) > 0  # delivered, not acknowledged
        # The same consumer comes back: its own pending events first.
        again = Archiver(store, archive, consumer="a", batch=50)
        stop = asyncio.Event()
        task = asyncio.create_task(again.run(stop))
        await _until(lambda: _count(archive, "==", 30), 20, "all archived")
        await _until(lambda: _zero(_pending(store)), 10, "nothing left pending")
        stop.set()
        await asyncio.wait_for(task, 10)
        await _check_once_each(archive, store, incidents)
        await archive.close()


async def test_a_dead_consumers_events_are_taken_over(redis_url: str, postgres_url: str) -> None:
    incidents = some_incidents(10, seed=5)
    async with _store(redis_url) as store:
        await store.ensure_event_group(GROUP)
        for incident in incidents:
            await log_ended(store, incident)
        taken = await store.read_event_group(GROUP, "dead", 1000, None)
        assert taken  # delivered to a consumer that never acknowledges them
        archive = Archive(postgres_url)
        other = Archiver(store, archive, consumer="other", reclaim_idle_s=0.2)
        stop = asyncio.Event()
        task = asyncio.create_task(other.run(stop))
        await _until(lambda: _count(archive, "==", 10), 20, "all archived by the other")
        await _until(lambda: _zero(_pending(store)), 10, "nothing left pending")
        stop.set()
        await asyncio.wait_for(task, 10)
        await _check_once_each(archive, store, incidents)
        await archive.close()


async def test_dispatch_archive_process_killed_with_sigkill(
    redis_url: str, postgres_url: str, tmp_path: Any
) -> None:
    """``dispatch archive`` as a process, SIGKILLed mid-way and started again (then with
    its own /metrics and /healthz, as a deployment watches it)."""
    incidents = some_incidents(300, seed=6)
    async with _store(redis_url) as store:
        for incident in incidents:
            await log_ended(store, incident)
        archive = Archive(postgres_url)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")},
            "DISPATCH_REDIS": redis_url,
            "DISPATCH_TOPIC_ROOT": "arc",
            "DISPATCH_POSTGRES_URL": postgres_url,
            "DISPATCH_POSTGRES_BATCH": "5",
        }
        argv = ["-m", "dispatch", "archive", "--instance", "p1"]
        log = (tmp_path / "archive.log").open("wb")

        async def start() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable, *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )

        proc = await start()
        try:
            await _until(lambda: _count(archive, ">=", 20), 30, "the process archiving")
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
            done = len(await archive.incident_ids())
            assert done < len(incidents), "killed too late to show anything"
            port = free_port()
            argv += ["--metrics-http", f"127.0.0.1:{port}"]
            proc = await start()
            await _until(lambda: _count(archive, "==", len(incidents)), 60, "all archived")
            await _until(lambda: _zero(_pending(store)), 10, "nothing left pending")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    health = await resp.json()
                    assert resp.status == 200, health
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
            assert health["ready"] is True, health
            assert health["lag_s"] == 0.0, health
            # The second process wrote at least what the first had not committed.
            assert health["archived"] >= len(incidents) - done, health
            written = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("dispatch_archive_incidents_total{")
            ]
            assert sum(written) == health["archived"], text
        finally:
            await servers.terminate(proc)
            log.close()
        assert proc.returncode == 0, (tmp_path / "archive.log").read_text()
        await _check_once_each(archive, store, incidents)
        await archive.close()


async def _count(archive: Archive, op: str, n: int) -> bool | int:
    try:
        have = len(await archive.incident_ids())
    except (BackendUnavailable, psycopg.errors.UndefinedTable):  # down; not migrated yet
        return -1
    return (have >= n if op == ">=" else have == n) or have


async def _zero(pending: Any) -> bool | int:
    n = await pending
    return n == 0 or int(n)


async def _check_once_each(archive: Archive, store: Store, incidents: list[Any]) -> None:
    """Every incident once, with every event of its timeline once, as Redis has it."""
    assert await archive.incident_ids() == [i.id for i in incidents]
    counts = await archive.counts()
    assert counts["incidents"] == len(incidents)
    assert counts["alerts"] == sum(len(i.alerts) for i in incidents)
    assert counts["responders"] == sum(len(i.responders) for i in incidents)
    for incident in incidents[:: max(1, len(incidents) // 10)]:
        in_redis = [e.event_id for e in await store.incident_events(incident.id)]
        assert await archive.events(incident.id) == in_redis
        record = await archive.record(incident.id)
        assert record == incident.to_record()
    assert counts["events"] == sum(3 + len(i.alerts) for i in incidents)
