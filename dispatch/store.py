"""The Redis store: the engine's source of truth, and the only module that speaks Redis.

Keys, all under one prefix (default ``dispatch:``, the topic root):

- ``inc:{id}``: the incident's whole record (JSON); kept ``history_ttl_s`` after it ends
- ``incidents:open`` (zset by reported_at), ``incidents:ended`` (zset by ended_at),
  ``incidents:all`` (zset by reported_at): what to reload, and the history
- ``idem:{id}``: the fingerprint of a report sent with an id, for idempotency
- ``vol:{vid}``: duty, skills and mode (a hash); ``pos:{vid}``: the last position only,
  "lat,lon,at", with a time-to-live, so a volunteer who stops reporting is forgotten here
  too (never a history)
- ``claim:{vid}``: the incident a volunteer is committed to; only the Lua scripts below
  change it, so two engine processes can never both commit one volunteer
- ``events``: the append-only event log (a stream, capped), replayed by the control room
- ``evi:{id}``: the ids of one incident's events in ``events`` (a list, capped), so that
  an incident's history is read without scanning the log; written with each event

Redis errors become ``BackendUnavailable`` here, at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dispatch.effects import (
    Effect,
    ForgetPosition,
    LogEvent,
    Release,
    SaveIncident,
    SavePosition,
    SaveVolunteer,
)
from dispatch.errors import BackendUnavailable

__all__ = ["INCIDENT_EVENTS_MAX", "Admission", "Store", "StoredEvent", "StoredVolunteer"]

Admission = Literal["new", "same", "conflict", "pending"]

# Idempotent admission of a report that carries an id. The admitter holds a short lease
# until the incident is stored: a copy arriving meanwhile (at another engine) is
# "pending" and dropped, since the reporter retries until it sees the receipt. A lease
# that ran out without a stored incident means the admitter died: the next copy is new.
_ADMIT = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  return 'new'
end
if cur ~= ARGV[1] then return 'conflict' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'same' end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return 'new' end
return 'pending'
"""

# Commit a volunteer to an incident unless committed to another one. Claiming again for
# the same incident succeeds (replays after a restart are harmless).
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# Release only our own claim: a stale release must not free a volunteer committed since.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The last positions of many volunteers in one command: KEYS are their ``pos:`` keys,
# ARGV[1] the time-to-live in ms, ARGV[i + 1] KEYS[i]'s "lat,lon,at" ("" forgets it).
# One command instead of a pipeline of SETs: redis-py builds and parses each command in
# Python, which held the event loop for several ms per flush of 500 (see save_positions).
_POSITIONS = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  if value == '' then redis.call('DEL', key) else redis.call('SET', key, value, 'PX', ttl) end
end
return #KEYS
"""


# Append an event to the log and its id to the incident's index, in one step. Called in
# the same MULTI as the rest of an effect batch. KEYS: the log, the incident's index;
# ARGV: log cap, incident id, type, at, data, index cap, index time-to-live (s).
_LOG_EVENT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
  'incident_id', ARGV[2], 'type', ARGV[3], 'at', ARGV[4], 'data', ARGV[5])
redis.call('RPUSH', KEYS[2], id)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('EXPIRE', KEYS[2], ARGV[7])
return id
"""

# The most events kept in one incident's index (its history shows the newest ones).
INCIDENT_EVENTS_MAX = 1000


@dataclass(frozen=True, slots=True)
class StoredVolunteer:
    volunteer_id: str
    duty: str | None
    skills: tuple[str, ...]
    mode: str
    position: tuple[float, float, float] | None  # lat, lon, at


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str  # the stream id, usable as Last-Event-ID
    incident_id: str
    type: str
    at: float
    data: dict[str, Any]


class Store:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "dispatch:",
        location_ttl_s: float = 300.0,
        idempotency_ttl_s: float = 604_800.0,
        history_ttl_s: float = 30 * 86_400.0,
        event_log_max: int = 1_000_000,
        admission_lease_s: float = 5.0,
    ) -> None:
        # redis-py's annotations are unions of bytes, str and awaitables; decoded by hand here.
        self.redis: Any = client
        self.prefix = prefix
        self.location_ttl_ms = max(1, int(location_ttl_s * 1000))
        self.idempotency_ttl_s = max(1, int(idempotency_ttl_s))
        self.history_ttl_s = max(1, int(history_ttl_s))
        self.event_log_max = event_log_max
        self.admission_lease_ms = max(1, int(admission_lease_s * 1000))
        self._admit = client.register_script(_ADMIT)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._positions = client.register_script(_POSITIONS)
        self._log_event = client.register_script(_LOG_EVENT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 5.0,
        health_check_s: int = 10,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> Store:
        """A store on its own connection pool.

        ``max_connections`` caps the pool: a caller that wants one more waits (up to
        ``timeout_s``) instead of opening it. The web layer reads through a capped store
        of its own, so that readers can never take the connections dispatch needs.
        """
        # The timeouts turn a hung Redis (or network) into an error the service retries.
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "health_check_interval": health_check_s,
        }
        if max_connections is not None:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout_s, **options
            )
            return cls(aioredis.Redis.from_pool(pool), **kwargs)  # closes the pool with it
        client = aioredis.from_url(url, **options)
        return cls(client, **kwargs)

    async def close(self) -> None:
        await self.redis.aclose()

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except RedisError:
            return False

    # ---------------------------------------------------------------- incidents

    async def admit(self, incident_id: str, fingerprint: str) -> Admission:
        """Whether a report with this id is new, already stored, being stored, or a conflict."""
        try:
            result = await self._admit(
                keys=[
                    self._k("idem", incident_id),
                    self._k("inc", incident_id),
                    self._k("admitting", incident_id),
                ],
                args=[fingerprint, self.idempotency_ttl_s, self.admission_lease_ms],
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        answer = result.decode() if isinstance(result, bytes) else str(result)
        assert answer in ("new", "same", "conflict", "pending"), answer
        return answer  # type: ignore[return-value]

    async def incident(self, incident_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.get(self._k("inc", incident_id))
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return None if raw is None else orjson.loads(raw)

    async def incidents(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        try:
            raws = await self.redis.mget([self._k("inc", i) for i in ids])
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [orjson.loads(r) for r in raws if r is not None]

    async def open_incident_ids(self) -> list[str]:
        return [i.decode() for i in await self.redis.zrange(self._k("incidents", "open"), 0, -1)]

    async def ended_since(self, since: float) -> list[str]:
        ids = await self.redis.zrangebyscore(self._k("incidents", "ended"), since, "+inf")
        return [i.decode() for i in ids]

    async def reported_page(self, since: float, offset: int, limit: int) -> list[str]:
        """Ids of incidents reported at or after ``since``, oldest first, one page."""
        try:
            ids = await self.redis.zrangebyscore(
                self._k("incidents", "all"), since, "+inf", start=offset, num=limit
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [i.decode() for i in ids]

    async def reported_since(self, since: float, limit: int = 1000) -> list[str]:
        ids = await self.redis.zrangebyscore(
            self._k("incidents", "all"), since, "+inf", start=0, num=limit
        )
        return [i.decode() for i in ids]

    # ---------------------------------------------------------------- claims

    async def claim(self, volunteer_id: str, incident_id: str) -> bool:
        try:
            return bool(
                await self._claim(keys=[self._k("claim", volunteer_id)], args=[incident_id])
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc

    async def claimed_by(self, volunteer_id: str) -> str | None:
        raw = await self.redis.get(self._k("claim", volunteer_id))
        return None if raw is None else raw.decode()

    # ---------------------------------------------------------------- volunteers

    async def volunteers(self) -> list[StoredVolunteer]:
        """Every volunteer on record, with the last position where it has not expired."""
        out: list[StoredVolunteer] = []
        ids = [
            key.decode()[len(self._k("vol", "")) :]
            async for key in self.redis.scan_iter(match=self._k("vol", "*"), count=1000)
        ]
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            async with self.redis.pipeline(transaction=False) as pipe:
                for vid in chunk:
                    pipe.hgetall(self._k("vol", vid))
                pipe.mget([self._k("pos", vid) for vid in chunk])
                *hashes, positions = await pipe.execute()
            for vid, fields, pos in zip(chunk, hashes, positions, strict=True):
                f = {k.decode(): v.decode() for k, v in fields.items()}
                skills = _skills(f.get("skills", ""))
                position = None
                if pos is not None:
                    lat, lon, at = (float(x) for x in pos.decode().split(","))
                    position = (lat, lon, at)
                out.append(
                    StoredVolunteer(
                        vid,
                        f.get("duty") or None,
                        skills,
                        f.get("mode", "walk"),
                        position,
                    )
                )
        return out

    # ---------------------------------------------------------------- effects

    def has_work(self, effect: Effect) -> bool:
        return isinstance(
            effect,
            SaveIncident | LogEvent | SaveVolunteer | SavePosition | ForgetPosition | Release,
        )

    async def apply(self, effects: Iterable[Effect]) -> list[str]:
        """Carry out the persistence effects in one round trip; returns the new event ids."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                xadd_at = await self._queue(pipe, effects)
                if xadd_at is None:
                    return []
                results = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [results[i].decode() for i in xadd_at]

    async def save_positions(
        self, positions: Iterable[SavePosition | ForgetPosition], chunk: int = 1000
    ) -> None:
        """Write (or forget) the last position of each volunteer, one script call per chunk.

        At most one effect per volunteer (the service coalesces them), so their order does
        not matter. Each chunk is atomic; a failure leaves earlier chunks written, which
        is harmless since writing a newer position again is idempotent.
        """
        keys: list[str] = []
        values: list[str] = []
        try:
            for p in positions:
                keys.append(self._k("pos", p.volunteer_id))
                values.append(
                    f"{p.lat!r},{p.lon!r},{p.at!r}" if isinstance(p, SavePosition) else ""
                )
                if len(keys) >= chunk:
                    await self._positions(keys=keys, args=[self.location_ttl_ms, *values])
                    keys, values = [], []
            if keys:
                await self._positions(keys=keys, args=[self.location_ttl_ms, *values])
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc

    async def _queue(self, pipe: Any, effects: Iterable[Effect]) -> list[int] | None:
        """Queue the persistence effects on ``pipe``: where the XADDs are, None if nothing.

        Apart from apply() so that dispatch/cluster.py can queue them in a transaction of
        its own (fenced with WATCH on the incidents' owner keys).
        """
        latest: dict[str, SaveIncident] = {}
        count = 0
        xadd_at: list[int] = []
        for effect in effects:
            if isinstance(effect, SaveIncident):
                latest[effect.incident_id] = effect  # only the last state counts
                continue
            count += 1
            if isinstance(effect, LogEvent):
                xadd_at.append(len(pipe))
                await self._log_event(
                    keys=[self._k("events"), self._k("evi", effect.incident_id)],
                    args=[
                        self.event_log_max,
                        effect.incident_id,
                        effect.type,
                        repr(effect.at),
                        orjson.dumps(dict(effect.data)),
                        INCIDENT_EVENTS_MAX,
                        self.history_ttl_s,
                    ],
                    client=pipe,
                )
            elif isinstance(effect, SavePosition):
                pipe.set(
                    self._k("pos", effect.volunteer_id),
                    f"{effect.lat!r},{effect.lon!r},{effect.at!r}",
                    px=self.location_ttl_ms,
                )
            elif isinstance(effect, SaveVolunteer):
                pipe.hset(
                    self._k("vol", effect.volunteer_id),
                    mapping={
                        "duty": effect.duty,
                        # A JSON list: a skill may hold any character, a comma too.
                        "skills": orjson.dumps(list(effect.skills)),
                        "mode": effect.mode,
                    },
                )
            elif isinstance(effect, ForgetPosition):
                pipe.delete(self._k("pos", effect.volunteer_id))
            elif isinstance(effect, Release):
                await self._release(
                    keys=[self._k("claim", effect.volunteer_id)],
                    args=[effect.incident_id],
                    client=pipe,
                )
            else:
                count -= 1
        for save in latest.values():
            self._save_incident(pipe, save)
        if not count and not latest:
            return None
        return xadd_at

    def _save_incident(self, pipe: Any, save: SaveIncident) -> None:
        key = self._k("inc", save.incident_id)
        pipe.set(key, orjson.dumps(dict(save.record)))
        pipe.zadd(self._k("incidents", "all"), {save.incident_id: save.reported_at})
        if save.open:
            pipe.zadd(self._k("incidents", "open"), {save.incident_id: save.reported_at})
        else:
            pipe.zrem(self._k("incidents", "open"), save.incident_id)
            pipe.zadd(self._k("incidents", "ended"), {save.incident_id: save.ended_at or 0.0})
            pipe.expire(key, self.history_ttl_s)

    # ---------------------------------------------------------------- event log

    async def events_after(
        self, last_id: str = "0", count: int = 500, block_ms: int | None = None
    ) -> list[StoredEvent]:
        """Events after ``last_id`` (exclusive), oldest first; blocks up to ``block_ms`` if none."""
        try:
            reply = await self.redis.xread(
                {self._k("events"): last_id}, count=count, block=block_ms
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        out: list[StoredEvent] = []
        for _stream, entries in reply or []:
            for event_id, fields in entries:
                out.append(_event(event_id, fields))
        return out

    async def last_event_id(self) -> str:
        try:
            newest = await self.redis.xrevrange(self._k("events"), count=1)
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return newest[0][0].decode() if newest else "0"

    async def incident_events(self, incident_id: str, limit: int = 1000) -> list[StoredEvent]:
        """The incident's newest ``limit`` events, oldest first, from its index.

        One list read and one range read per event, all in one round trip: the cost
        follows the incident's own history, never the size of the log. Events the capped
        log has already dropped are left out.
        """
        try:
            ids = await self.redis.lrange(self._k("evi", incident_id), -max(1, limit), -1)
            if not ids:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for eid in ids:
                    pipe.xrange(self._k("events"), eid, eid, count=1)
                found = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [_event(eid, fields) for entries in found for eid, fields in entries]

    async def newest_events(self, count: int) -> list[StoredEvent]:
        """The ``count`` newest events of the log, oldest first."""
        try:
            entries = await self.redis.xrevrange(self._k("events"), count=count)
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [_event(eid, fields) for eid, fields in reversed(entries)]

    async def event_id_back(self, count: int) -> str:
        """The id just before the ``count`` newest events ("0" if the log is shorter).

        Where a replay of at most ``count`` events starts: XREVRANGE with a count reads
        only that many ids' worth of entries from the newest end.
        """
        try:
            entries = await self.redis.xrevrange(self._k("events"), count=count + 1)
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        if len(entries) <= count:
            return "0"
        return str(entries[-1][0].decode())


def _skills(raw: str) -> tuple[str, ...]:
    """Skills as stored: a JSON list, or the comma-joined form of earlier versions."""
    if raw.startswith("["):
        value = orjson.loads(raw)
        return tuple(s for s in value if isinstance(s, str) and s)
    return tuple(s for s in raw.split(",") if s)


def _event(event_id: bytes, fields: Mapping[bytes, bytes]) -> StoredEvent:
    return StoredEvent(
        event_id.decode(),
        fields[b"incident_id"].decode(),
        fields[b"type"].decode(),
        float(fields[b"at"]),
        orjson.loads(fields[b"data"]),
    )
