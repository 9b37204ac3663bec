"""The archiver: copies every ended incident from Redis into PostgreSQL, apart from dispatch.

It reads the engine's event log (the stream ``events``) as the consumer group
``archive``. For each event that ends an incident (``resolved``, ``cancelled``) it reads
the incident's record and timeline from Redis and writes them to the archive
(dispatch/archive.py) in one transaction; only then are the events acknowledged.

- Never on the dispatch path: dispatch only appends to the log, as it always has; the
  archiver is a task (in the engine, ``--postgres``) or a process of its own (``dispatch
  archive``) on its own Redis connections.
- Nothing lost: an event is acknowledged only after its incident is committed. While
  PostgreSQL is down the archiver retries the same events every ``retry_s``; killed, it
  finds them again as its own pending entries (the group remembers them), and a dead
  consumer's entries are claimed by another after ``reclaim_idle_s``.
- Nothing twice: the archive is keyed by incident id (and event by stream id), so
  writing an incident again after a crash between commit and acknowledgement changes
  nothing.
- First start: the group starts at the oldest event still in the log, so incidents
  that ended before the archive existed are archived too, as long as Redis has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from dispatch.archive import Archive, events_of, migrate
from dispatch.errors import BackendUnavailable
from dispatch.metrics import Metrics
from dispatch.store import INCIDENT_EVENTS_MAX, Store, StoredEvent

__all__ = ["ENDING_EVENTS", "GROUP", "Archiver"]

log = logging.getLogger(__name__)

GROUP = "archive"  # the consumer group on the event log
ENDING_EVENTS = frozenset({"resolved", "cancelled"})
# A blocking read must return well within the Redis client's socket timeout (5 s).
_BLOCK_MS = 2_000


class Archiver:
    """One consumer of the group ``archive``; `run` until stopped or cancelled."""

    def __init__(
        self,
        store: Store,
        archive: Archive,
        *,
        consumer: str = "archiver",
        batch: int = 200,
        retry_s: float = 2.0,
        reclaim_idle_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.archive = archive
        self.consumer = consumer
        self.batch = batch
        self.retry_s = retry_s
        self.reclaim_idle_ms = max(1, int(reclaim_idle_s * 1000))
        self.clock = clock
        self.archived = 0  # incidents written (or found written) since the start
        self.ready = asyncio.Event()  # the schema is up to date and the group exists
        self._next_reclaim = 0.0
        self.wall = wall
        self.metrics = metrics
        # When the oldest event read but not yet committed was logged (None: none).
        self._holding_since: float | None = None
        if metrics is not None:
            metrics.archive_lag.set_function(self.lag_s)

    def lag_s(self) -> float:
        """How long ago the oldest event read and not yet committed was logged; 0 when
        caught up. It grows while PostgreSQL is down (the same events wait)."""
        since = self._holding_since
        return 0.0 if since is None else max(0.0, self.wall() - since)

    async def run(self, stop: asyncio.Event) -> None:
        """Archive until ``stop`` is set; PostgreSQL or Redis down: wait and retry."""
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await migrate(self.archive.url)
                    await self.store.ensure_event_group(GROUP)
                    self.ready.set()
                    log.info("archive: writing ended incidents to PostgreSQL")
                await self.step()
            except BackendUnavailable as exc:
                if self.metrics is not None:
                    self.metrics.archive_errors.labels(backend=exc.backend).inc()
                log.warning("archive: %s; trying again in %.1f s", exc, self.retry_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry_s)
            except Exception:
                # A bug (or a record PostgreSQL refuses): said loudly; dispatch goes on,
                # the events stay pending for a fixed version to archive.
                log.exception("archive: stopped by an unexpected error")
                raise

    async def step(self) -> int:
        """One round: this consumer's unacknowledged events first (a retry, or what it was
        doing when it was killed), then a dead consumer's, then new ones (waiting up to
        2 s). Returns how many events it handled."""
        entries = await self.store.read_event_group(
            GROUP, self.consumer, self.batch, None, pending=True
        )
        if not entries and self.clock() >= self._next_reclaim:
            self._next_reclaim = self.clock() + self.reclaim_idle_ms / 2000
            entries = await self.store.claim_event_group(
                GROUP, self.consumer, self.reclaim_idle_ms, self.batch
            )
        if not entries:
            entries = await self.store.read_event_group(GROUP, self.consumer, self.batch, _BLOCK_MS)
        await self._handle(entries)
        return len(entries)

    async def _handle(self, entries: Sequence[StoredEvent | str]) -> None:
        times = [e.at for e in entries if isinstance(e, StoredEvent)]
        if times:
            self._holding_since = min(times)
        ended: dict[str, None] = {}  # in order, once each
        for entry in entries:
            if isinstance(entry, StoredEvent) and entry.type in ENDING_EVENTS:
                ended[entry.incident_id] = None
        for incident_id in ended:
            await self._archive(incident_id)
        # Only now: everything these events ended is committed.
        await self.store.ack_events(
            GROUP, [e if isinstance(e, str) else e.event_id for e in entries]
        )
        self._holding_since = None

    async def _archive(self, incident_id: str) -> None:
        record = await self.store.incident(incident_id)
        if record is None:
            # Its record outlived its 30 days in Redis before the archive read it.
            log.warning("archive: incident %s ended but Redis no longer has it", incident_id)
            return
        events = await self.store.incident_events(incident_id, limit=INCIDENT_EVENTS_MAX)
        written = await self.archive.save(record, events_of(events))
        self.archived += 1
        if self.metrics is not None:
            self.metrics.archive_incidents.labels(outcome="written" if written else "already").inc()
        log.debug("archive: incident %s %s", incident_id, "written" if written else "already there")
