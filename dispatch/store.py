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
- ``events``: the append-only event log (a stream, capped), replayed by the control room;
  the consumer group ``archive`` reads it into PostgreSQL (dispatch/archiver.py)
- ``evi:{id}``: the ids of one incident's events in ``events`` (a list, capped), so that
  an incident's history is read without scanning the log; written with each event
- ``push:keys``: the Web Push keys (VAPID private key, reply-token secret), made once by
  whichever instance starts first; ``push:{vid}`` (hash endpoint -> subscription JSON)
  and ``pushat:{vid}`` (zset endpoint -> when given): a volunteer's browsers, bounded,
  forgotten after ``PUSH_KEEP_S`` without a renewal (dispatch/push.py)

Several instances (``[cluster] enabled``, dispatch/cluster.py) add, through
`ClusterStore`:

- ``work``: the stream of admitted reports, read by the consumer group ``engines``
- ``owner:{id}``: the fencing token of the instance that owns an open incident, with a
  lease; ``alert:{id}``: the incident an alert belongs to, whoever owns it
- ``once:{hash}``: who answers a message every instance received; ``cleared:{id}``:
  who cleared an ended incident's retained state
- ``commands:{instance}``: operator actions forwarded to an instance; ``reply:{random}``:
  where it answers

Every key name and every Lua script of the engine is in this module, and it is the
only module that speaks Redis: every Redis error becomes ``BackendUnavailable`` here,
at the boundary (dispatch/errors.py).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, Self, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError, WatchError

from dispatch.config import Config
from dispatch.effects import (
    Effect,
    EventType,
    ForgetPosition,
    LogEvent,
    Release,
    SaveIncident,
    SavePosition,
    SaveVolunteer,
)
from dispatch.errors import BackendUnavailable
from dispatch.roster import StoredProfile, StoredVolunteer, StoredVolunteers

__all__ = [
    "INCIDENT_EVENTS_MAX",
    "PUSH_KEEP_S",
    "Admission",
    "ClusterStore",
    "Fence",
    "Store",
    "StoredEvent",
    "StoredVolunteer",
    "StoredVolunteers",
    "WorkEntry",
]

Admission = Literal["new", "same", "conflict", "pending"]


def _admission(result: Any) -> Admission:
    """`_ADMIT`'s answer for one report."""
    answer = result.decode() if isinstance(result, bytes) else str(result)
    assert answer in ("new", "same", "conflict", "pending"), answer
    return answer  # type: ignore[return-value]


# A browser's push subscription not renewed (the page sends it at every sign-in) for
# this long is forgotten: a phone given away must stop receiving alerts some day.
PUSH_KEEP_S = 90 * 86_400

# Idempotent admission of a report that carries an id. The admitter holds a short lease
# until the incident is stored: a copy arriving meanwhile (at another engine) is
# "pending" and dropped, since the reporter retries until it sees the receipt. A lease
# that ran out without a stored incident means the admitter died: the next copy is new.
# With a fourth key (several instances), a new report is also added to that work
# stream, in the same step: ARGV[4..7] are the payload, the time received, the id and
# the stream's cap.
_ADMIT = """
local cur = redis.call('GET', KEYS[1])
local verdict
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  verdict = 'new'
elseif cur ~= ARGV[1] then
  return 'conflict'
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  return 'same'
elseif redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then
  verdict = 'new'
else
  return 'pending'
end
if KEYS[4] then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*',
             'id', ARGV[6], 'payload', ARGV[4], 'at', ARGV[5])
end
return verdict
"""

# Commit a volunteer to an incident unless committed to another one. Claiming again for
# the same incident succeeds (replays after a restart are harmless). With a second key
# (several instances), only while that owner key holds our token ARGV[2]: -1 otherwise.
_CLAIM = """
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# Delete a key only while it holds ARGV[1]: a claim's release (a stale release must not
# free a volunteer committed since), an owner giving up its lease.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The last positions of many volunteers in one command: KEYS are their ``pos:`` keys,
# ARGV[1] the time-to-live in ms, ARGV[i + 1] KEYS[i]'s "lat,lon,at" ("" forgets it).
# One command instead of a pipeline of SETs: redis-py builds and parses each command in
# Python, which held the event loop for several ms per flush of 500 (see save_positions).
# A position older than the one stored is not written: with location gateways
# (dispatch/gateway.py) the engine (statuses) and the gateways (locations) write the same
# keys, and a write may land after a newer one.
_POSITIONS = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  local value = ARGV[i + 1]
  if value == '' then
    redis.call('DEL', key)
  else
    local old = redis.call('GET', key)
    local older = false
    if old then
      local was = tonumber(string.match(old, ',([^,]*)$'))
      local now = tonumber(string.match(value, ',([^,]*)$'))
      older = was ~= nil and now ~= nil and now < was
    end
    if not older then redis.call('SET', key, value, 'PX', ttl) end
  end
end
return #KEYS
"""

# Many volunteers read back in one command, at a restart. ARGV: the ``vol:`` and ``pos:``
# key prefixes, a SCAN cursor, how many volunteers at least (unless the scan ends). The
# script scans for the ``vol:`` keys itself (so that no key travels twice, nor is
# encoded by redis-py: 1.4 µs each) and answers, in columns: the next cursor, the
# volunteers' ids, the number of each one's profile in this answer, their positions
# ("lat,lon,at", false where absent), and each distinct profile's duty, skills, mode
# and settings, flat (nil and "" read alike). It reads keys it was not given, which a
# single Redis allows (not a Redis Cluster; the store has never supported one).
_VOLUNTEERS = """
local vol, pos, cursor, want = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local head = #vol + 1
local ids, shape_of, positions, shapes = {}, {}, {}, {}
local numbered, count = {}, 0
repeat
  local found = redis.call('SCAN', cursor, 'MATCH', vol .. '*', 'COUNT', want)
  cursor = found[1]
  local keys = found[2]
  if #keys > 0 then
    local pos_keys = {}
    for i, key in ipairs(keys) do
      local id = string.sub(key, head)
      local f = redis.call('HMGET', key, 'duty', 'skills', 'mode', 'settings')
      local d, s, m, t = f[1] or '', f[2] or '', f[3] or '', f[4] or ''
      local by_s = numbered[d] or {}
      numbered[d] = by_s
      local by_m = by_s[s] or {}
      by_s[s] = by_m
      local by_t = by_m[m] or {}
      by_m[m] = by_t
      local n = by_t[t]
      if not n then
        n = count
        count = count + 1
        by_t[t] = n
        shapes[#shapes + 1] = d
        shapes[#shapes + 1] = s
        shapes[#shapes + 1] = m
        shapes[#shapes + 1] = t
      end
      ids[#ids + 1] = id
      shape_of[#shape_of + 1] = n
      pos_keys[i] = pos .. id
    end
    for _, p in ipairs(redis.call('MGET', unpack(pos_keys))) do
      positions[#positions + 1] = p
    end
  end
until cursor == '0' or #ids >= want
return {cursor, ids, shape_of, positions, shapes}
"""

# Keep a push subscription, and only the newest ARGV[4] of the volunteer's. KEYS: the
# hash (endpoint -> JSON), the zset (endpoint -> time); ARGV: endpoint, JSON, time, most,
# time-to-live (s).
_PUSH_ADD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    redis.call('HDEL', KEYS[1], old)
    redis.call('ZREM', KEYS[2], old)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return over
"""

# The push subscriptions of each volunteer given (KEYS: their push: hashes), in order:
# one command and one reply for a wave (a pipeline of HVALS packs and parses one each).
_PUSH_OF = """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('HVALS', key) end
return found
"""

# Renew an owner's lease, only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Adopt an incident nobody owns (its owner died, or let its lease run out).
_ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_GROUP = "engines"  # the consumer group of the work stream
_WORK_MAX = 100_000  # the work stream's cap (acknowledged entries are deleted at once)

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _redis_errors(
    method: Callable[_P, Awaitable[_T]],
) -> Callable[_P, Awaitable[_T]]:
    """Turn any Redis error out of ``method`` into ``BackendUnavailable``."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc

    return wrapper


# The incidents' history and records (`Store._record_call`), as a function of where its
# keys and arguments start (K and A: how many come before them), so that `_ADMIT_RECORD`
# can put a report's admission in front. The events are logged in order, each also in
# its incident's index (capped, with the history's TTL), then each incident's record is
# saved and filed as open or ended (an ended one expires with its history). KEYS: the
# log, incidents:all, :open, :ended, the indexes of the incidents with events (each
# once), one incident key per record. ARGV: the log's cap, an index's cap, the history
# TTL, then the events and records as one JSON array ``[events, records]``: per event
# ``[index (1-based, among the indexes), incident_id, type, at, data]``, per record
# ``[id, JSON, reported_at, "1" if open or "", ended_at]``, every value but the index a
# string stored as given. Returns the events' ids, in order. One call for what were a
# dozen commands a report, and one argument for what were some fifty: the engine packed
# each argument in Python (some 60 µs a report, 30 µs now), the JSON is packed in C.
_RECORD_FUNCTION = """
local function record(K, A)
  local batch = cjson.decode(ARGV[A + 4])
  local events, records = batch[1], batch[2]
  local ids = {}
  local indexes = 0
  for i, e in ipairs(events) do
    local id = redis.call('XADD', KEYS[K + 1], 'MAXLEN', '~', ARGV[A + 1], '*',
      'incident_id', e[2], 'type', e[3], 'at', e[4], 'data', e[5])
    redis.call('RPUSH', KEYS[K + 4 + e[1]], id)
    if e[1] > indexes then indexes = e[1] end
    ids[i] = id
  end
  for j = 1, indexes do
    redis.call('LTRIM', KEYS[K + 4 + j], -tonumber(ARGV[A + 2]), -1)
    redis.call('EXPIRE', KEYS[K + 4 + j], ARGV[A + 3])
  end
  local k = K + 4 + indexes
  for _, r in ipairs(records) do
    k = k + 1
    local id, reported = r[1], r[3]
    redis.call('SET', KEYS[k], r[2])
    redis.call('ZADD', KEYS[K + 2], reported, id)
    if r[4] == '1' then
      redis.call('ZADD', KEYS[K + 3], reported, id)
    else
      redis.call('ZREM', KEYS[K + 3], id)
      redis.call('ZADD', KEYS[K + 4], r[5], id)
      redis.call('EXPIRE', KEYS[k], ARGV[A + 3])
    end
  end
  return ids
end
"""
_RECORD = _RECORD_FUNCTION + "return record(0, 0)\n"

# A report's admission and, when it is new, its decision recorded, in one step: the
# engine decides first and stores the decision with the admission (`Store.record_reports`),
# a round trip less than admitting before deciding. KEYS: ``idem:``, ``inc:`` and
# ``admitting:`` of the report's id, then `record`'s. ARGV: the fingerprint, the
# idempotency TTL (s), the lease (ms), a token, then `record`'s. A new report's
# ``admitting:`` key holds the token for the lease: a retry whose first answer was lost
# finds its own write there and is told "new" again, without writing twice (another
# copy of the report finds the incident stored: "same"). Answers as `_ADMIT` does.
_ADMIT_RECORD = (
    _RECORD_FUNCTION
    + """
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur ~= ARGV[1] then return 'conflict' end
  local lease = redis.call('GET', KEYS[3])
  if lease == ARGV[4] then return 'new' end
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'same' end
  if lease then return 'pending' end
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
record(3, 4)
return 'new'
"""
)

# Claims, and what taking the claimants on decided, in one step (`Store.claim_and_apply`):
# each claim as `_CLAIM` makes it, then, only if every one was won, the releases (as
# `_DELETE_IF`) and `record`'s events and records. KEYS: the n ``claim:`` keys, the m
# released ``claim:`` keys, then `record`'s (if any). ARGV: n, m, the n claims' incident
# ids, the m releases' incident ids, then `record`'s. Returns 1 or 0 per claim.
_CLAIM_APPLY = (
    _RECORD_FUNCTION
    + """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local won, all = {}, true
for i = 1, n do
  local cur = redis.call('GET', KEYS[i])
  if (not cur) or cur == ARGV[2 + i] then
    redis.call('SET', KEYS[i], ARGV[2 + i])
    won[i] = 1
  else
    won[i] = 0
    all = false
  end
end
if all then
  for j = 1, m do
    if redis.call('GET', KEYS[n + j]) == ARGV[2 + n + j] then redis.call('DEL', KEYS[n + j]) end
  end
  if #KEYS > n + m then record(n + m, 2 + n + m) end
end
return won
"""
)

# The most events kept in one incident's index (its history shows the newest ones).
INCIDENT_EVENTS_MAX = 1000


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str  # the stream id, usable as Last-Event-ID
    incident_id: str
    type: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkEntry:
    """A report admitted into the work stream (several instances)."""

    entry_id: str
    incident_id: str
    payload: bytes
    at: float  # when the admitting instance received it


@dataclass(frozen=True, slots=True)
class Fence:
    """An owner's decision, inside the write's transaction, from the current owner tokens.

    ``take``: incidents to own from now on, with their new tokens; ``refuse``: incidents
    whose writes are dropped from the batch (someone else owns them now).
    """

    take: Mapping[str, str]
    refuse: frozenset[str]


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
        self._delete_if = client.register_script(_DELETE_IF)
        self._positions = client.register_script(_POSITIONS)
        self._record = client.register_script(_RECORD)
        self._admit_record = client.register_script(_ADMIT_RECORD)
        self._claim_apply = client.register_script(_CLAIM_APPLY)
        self._push_add = client.register_script(_PUSH_ADD)
        self._push_of = client.register_script(_PUSH_OF)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 5.0,
        health_check_s: int = 10,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> Self:
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

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The store the engine configured by ``config`` uses (nothing connects yet)."""
        return cls.from_url(
            config.redis_url,
            prefix=f"{config.topic_root}:",
            location_ttl_s=config.location_ttl_s,
            idempotency_ttl_s=config.idempotency_ttl_s,
            event_log_max=config.event_log_max,
            timeout_s=config.redis_timeout_s,
            health_check_s=config.redis_health_check_s,
        )

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
                keys=self._admission_keys(incident_id),
                args=[fingerprint, self.idempotency_ttl_s, self.admission_lease_ms],
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return _admission(result)

    def _admission_keys(self, incident_id: str) -> list[str]:
        """The keys `_ADMIT` takes for one report (the work stream's comes after them)."""
        return [
            self._k("idem", incident_id),
            self._k("inc", incident_id),
            self._k("admitting", incident_id),
        ]

    async def admit_all(self, reports: Sequence[tuple[str, str]]) -> list[Admission]:
        """`admit` for each ``(incident_id, fingerprint)``, in order, in one round trip
        (an id given twice: the second is "pending", the first being stored)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for incident_id, fingerprint in reports:
                    _queue_script(
                        pipe,
                        self._admit,
                        self._admission_keys(incident_id),
                        [fingerprint, self.idempotency_ttl_s, self.admission_lease_ms],
                    )
                results = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [_admission(r) for r in results]

    async def record_reports(
        self, decisions: Sequence[tuple[str | None, str, Sequence[Effect]]], token: str
    ) -> list[Admission]:
        """Each report's admission and, where it is new, its decision's events and records,
        in one step per report (`_ADMIT_RECORD`) and one round trip in all.

        ``decisions``: ``(id, fingerprint, effects)`` per report, in order, the effects
        being the events and records its decision made. A report without an id is new
        (only recorded). Nothing of a report that is not new is written: the caller
        takes its decision back (`Dispatcher.retract`). ``token``: made once per decision
        (`new_token`) and given again with each retry of it, so that a retry whose first
        answer was lost is told "new" again.
        """
        unguarded: list[Effect] = []
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for report_id, fingerprint, effects in decisions:
            batch = list(effects)
            for effect in batch:
                if not isinstance(effect, LogEvent | SaveIncident):
                    raise TypeError(f"a report's decision stores only events and records: {effect}")
            if report_id is None:
                unguarded += batch
                continue
            call = self._record_call(batch)
            if call is None:
                raise ValueError(f"the decision of report {report_id!r} records nothing")
            keys, args = call
            calls.append(
                (
                    self._admit_record,
                    [*self._admission_keys(report_id), *keys],
                    [
                        fingerprint,
                        self.idempotency_ttl_s,
                        self.admission_lease_ms,
                        token,
                        *args,
                    ],
                )
            )
        if unguarded:
            call = self._record_call(unguarded)
            if call is not None:
                calls.append((self._record, *call))
        try:
            if len(calls) == 1:
                script, keys, args = calls[0]
                results = [await script(keys=keys, args=args)]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for script, keys, args in calls:
                        _queue_script(pipe, script, keys, args)
                    results = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        verdicts = iter(results)
        return [
            "new" if report_id is None else _admission(next(verdicts))
            for report_id, _, _ in decisions
        ]

    @staticmethod
    def new_token() -> str:
        """A token for `record_reports`."""
        return secrets.token_hex(8)

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

    @_redis_errors
    async def open_incident_ids(self) -> list[str]:
        return [i.decode() for i in await self.redis.zrange(self._k("incidents", "open"), 0, -1)]

    @_redis_errors
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

    @_redis_errors
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

    async def claims(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """`claim` for each ``(volunteer_id, incident_id)``, in order, in one round trip."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for volunteer_id, incident_id in pairs:
                    _queue_script(
                        pipe, self._claim, [self._k("claim", volunteer_id)], [incident_id]
                    )
                return [bool(won) for won in await pipe.execute()]
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc

    def claims_with_writes(self) -> bool:
        """Whether `claim_and_apply` may be used: not where each claim and write is
        fenced by its incident's owner (several instances, `FencedStore`)."""
        return True

    async def claim_and_apply(
        self,
        before: Sequence[Effect],
        pairs: Sequence[tuple[str, str]],
        if_won: Sequence[Effect],
    ) -> list[bool]:
        """``before`` stored, then each claim ``(volunteer_id, incident_id)`` tried, and
        ``if_won`` (what taking the claimants on decided: events, records and releases)
        stored only if every claim was won; in one transaction and one round trip
        (`_CLAIM_APPLY`). Whether each claim was won, in order."""
        releases = [e for e in if_won if isinstance(e, Release)]
        recorded: list[Effect] = [e for e in if_won if not isinstance(e, Release)]
        for effect in recorded:
            if not isinstance(effect, LogEvent | SaveIncident):
                raise TypeError(f"only events, records and releases wait for claims: {effect}")
        call = self._record_call(recorded)
        keys = [self._k("claim", v) for v, _ in pairs] + [
            self._k("claim", r.volunteer_id) for r in releases
        ]
        args: list[Any] = [
            len(pairs),
            len(releases),
            *(i for _, i in pairs),
            *(r.incident_id for r in releases),
        ]
        if call is not None:
            keys += call[0]
            args += call[1]
        try:
            if not before:
                won = await self._claim_apply(keys=keys, args=args)
            else:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await self._queue(pipe, before)
                    _queue_script(pipe, self._claim_apply, keys, args)
                    won = (await pipe.execute())[-1]
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return [bool(w) for w in won]

    @_redis_errors
    async def claimed_by(self, volunteer_id: str) -> str | None:
        raw = await self.redis.get(self._k("claim", volunteer_id))
        return None if raw is None else raw.decode()

    # ---------------------------------------------------------------- volunteers

    async def volunteers(self, chunk: int = 2000) -> StoredVolunteers:
        """Every volunteer on record, with the last position where it has not expired."""
        out = StoredVolunteers()
        async for part in self.volunteer_chunks(chunk):
            out.extend(part)
        return out

    async def volunteer_chunks(self, chunk: int = 2000) -> AsyncGenerator[StoredVolunteers, None]:
        """`volunteers` about ``chunk`` at a time, as read: a restart rebuilds each while
        Redis reads the next (a million volunteers take Redis some 10 s).

        One script call per chunk (``_VOLUNTEERS``) on a connection of its own, the next
        call sent before a chunk is handed over: a call made through the client would
        only go out when the caller's work on the chunk let the event loop run, and
        Redis would wait for it. The few distinct profiles (duty, skills, mode,
        settings) are decoded once each, not once per volunteer.
        """
        profiles: dict[tuple[bytes, bytes, bytes, bytes], StoredProfile] = {}
        vol, pos = self._k("vol", ""), self._k("pos", "")
        pool = self.redis.connection_pool
        try:
            conn = await pool.get_connection()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        in_flight = False
        try:
            await conn.send_command("EVAL", _VOLUNTEERS, 0, vol, pos, b"0", chunk)
            in_flight = True
            while in_flight:
                answer = await conn.read_response()
                in_flight = answer[0] != b"0"
                if in_flight:
                    await conn.send_command("EVAL", _VOLUNTEERS, 0, vol, pos, answer[0], chunk)
                yield _decode_volunteers(answer, profiles)
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        finally:
            if in_flight:  # an error, or the caller stopped: an answer would be left unread
                await conn.disconnect()
            await pool.release(conn)

    # ---------------------------------------------------------------- effects

    def has_work(self, effect: Effect) -> bool:
        return isinstance(
            effect,
            SaveIncident | LogEvent | SaveVolunteer | SavePosition | ForgetPosition | Release,
        )

    async def apply(self, effects: Iterable[Effect]) -> list[str]:
        """Carry out the persistence effects in one round trip; returns the new event ids."""
        batch = list(effects)
        if all(isinstance(e, LogEvent | SaveIncident) for e in batch):
            # Only history and records (a report's, most answers'): one script call,
            # atomic by itself, without a transaction around it.
            call = self._record_call(batch)
            if call is None:
                return []
            try:
                ids = await self._record(keys=call[0], args=call[1])
            except RedisError as exc:
                raise BackendUnavailable("redis", str(exc)) from exc
            return [eid.decode() for eid in ids]
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                logged_at = await self._queue(pipe, batch)
                if logged_at is None:
                    return []
                results = await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return _event_ids(results, logged_at)

    async def save_positions(
        self, positions: Iterable[SavePosition | ForgetPosition], chunk: int = 1000
    ) -> None:
        """Write (or forget) the last position of each volunteer, one script call per chunk;
        a position older than the one stored is left out (see _POSITIONS).

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

    async def _queue(self, pipe: Any, effects: Iterable[Effect]) -> int | None:
        """Queue the persistence effects on ``pipe``: None if nothing, else where the
        call recording the history and the records is (its reply: the events' ids, in
        order), -1 if there is none.

        Apart from apply() so that ``ClusterStore.apply_fenced`` can queue them in a
        transaction of its own (fenced with WATCH on the incidents' owner keys).
        """
        batch = list(effects)
        queued = len(pipe)
        for effect in batch:
            if isinstance(effect, SavePosition):
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
                        "settings": orjson.dumps(dict(effect.settings)),
                    },
                )
            elif isinstance(effect, ForgetPosition):
                pipe.delete(self._k("pos", effect.volunteer_id))
            elif isinstance(effect, Release):
                _queue_script(
                    pipe,
                    self._delete_if,
                    [self._k("claim", effect.volunteer_id)],
                    [effect.incident_id],
                )
        call = self._record_call(batch)
        if call is None:
            return None if len(pipe) == queued else -1
        logged_at = len(pipe)
        _queue_script(pipe, self._record, *call)
        return logged_at

    def _record_call(self, effects: list[Effect]) -> tuple[list[str], list[Any]] | None:
        """The keys and arguments of the `_RECORD` call for the events and incident
        records among ``effects`` (the last record of each incident counts), or None if
        there are none."""
        events = [e for e in effects if isinstance(e, LogEvent)]
        latest = {e.incident_id: e for e in effects if isinstance(e, SaveIncident)}
        if not events and not latest:
            return None
        keys = [
            self._k("events"),
            self._k("incidents", "all"),
            self._k("incidents", "open"),
            self._k("incidents", "ended"),
        ]
        index_of: dict[str, int] = {}  # incident id: its index's place among the keys
        logged = []
        for event in events:
            at = index_of.get(event.incident_id)
            if at is None:
                at = index_of[event.incident_id] = len(index_of) + 1
                keys.append(self._k("evi", event.incident_id))
            data = orjson.dumps(dict(event.data)).decode()
            logged.append((at, event.incident_id, event.type, repr(event.at), data))
        saved = []
        for save in latest.values():
            keys.append(self._k("inc", save.incident_id))
            saved.append(
                (
                    save.incident_id,
                    orjson.dumps(dict(save.record)).decode(),
                    repr(save.reported_at),
                    "1" if save.open else "",
                    repr(save.ended_at or 0.0),
                )
            )
        args = [
            self.event_log_max,
            INCIDENT_EVENTS_MAX,
            self.history_ttl_s,
            orjson.dumps((logged, saved)),
        ]
        return keys, args

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

    @_redis_errors
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

    # ---------------------------------------------------------------- event log readers

    # Readers of the event log that must see every event once, and survive their own
    # restarts (the archive, dispatch/archiver.py), read it through a consumer group:
    # Redis keeps each group's last delivered id and its entries delivered but not yet
    # acknowledged, so nothing is skipped and nothing needs a bookmark of our own.

    @_redis_errors
    async def ensure_event_group(self, group: str, start: str = "0") -> None:
        """Create the consumer group ``group`` on the event log, from ``start`` ("0": from
        the oldest event still in the log); nothing if it exists."""
        try:
            await self.redis.xgroup_create(self._k("events"), group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @_redis_errors
    async def read_event_group(
        self, group: str, consumer: str, count: int, block_ms: int | None, pending: bool = False
    ) -> list[StoredEvent | str]:
        """The next events for ``consumer`` of ``group``, oldest first.

        ``pending``: instead of new events, those already delivered to this consumer and
        not acknowledged (what it was doing when it stopped). An entry the capped log has
        dropped meanwhile comes back as its bare id, to be acknowledged. [] if none.
        """
        start = "0" if pending else ">"
        try:
            reply = await self.redis.xreadgroup(
                group, consumer, {self._k("events"): start}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_event_group(group)  # the log was deleted (FLUSHDB): again
            return []
        return [
            _event(eid, fields) if fields else eid.decode()
            for _stream, entries in reply or []
            for eid, fields in entries
        ]

    @_redis_errors
    async def claim_event_group(
        self, group: str, consumer: str, idle_ms: int, count: int
    ) -> list[StoredEvent | str]:
        """Events another consumer of ``group`` took and left unacknowledged for ``idle_ms``
        (it died), now ``consumer``'s; dropped entries as bare ids, as above."""
        reply = await self.redis.xautoclaim(
            self._k("events"), group, consumer, idle_ms, start_id="0-0", count=count
        )
        out: list[StoredEvent | str] = [
            _event(eid, fields) if fields else eid.decode()
            for eid, fields in (reply[1] if len(reply) > 1 else [])
        ]
        # (Redis 7 takes entries the log has dropped off the pending list itself.)
        return out

    @_redis_errors
    async def ack_events(self, group: str, event_ids: Sequence[str]) -> int:
        """Acknowledge events of ``group``: done with, never delivered again."""
        if not event_ids:
            return 0
        return int(await self.redis.xack(self._k("events"), group, *event_ids))

    @_redis_errors
    async def event_group_lag(self, group: str) -> int | None:
        """Events in the log not yet delivered to ``group`` (Redis 7), None if unknown."""
        try:
            groups = await self.redis.xinfo_groups(self._k("events"))
        except ResponseError:
            return None
        for info in groups:
            name = info.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == group:
                lag = info.get("lag")
                return None if lag is None else int(lag)
        return None

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

    # ---------------------------------------------------------------- Web Push

    @_redis_errors
    async def push_keys(self, new: bytes) -> bytes:
        """The stored Web Push keys; ``new`` is stored first if there are none yet (the
        first instance to start makes them; every other one reads the same)."""
        key = self._k("push", "keys")
        await self.redis.set(key, new, nx=True)
        stored = await self.redis.get(key)
        assert stored is not None, "push keys vanished right after SET NX"
        return bytes(stored)

    @_redis_errors
    async def add_push_subscription(
        self, volunteer_id: str, endpoint: str, record: bytes, at: float, most: int
    ) -> int:
        """Keep a subscription, replacing the volunteer's oldest beyond ``most``; how many
        were replaced."""
        return int(
            await self._push_add(
                keys=[self._k("push", volunteer_id), self._k("pushat", volunteer_id)],
                args=[endpoint, record, at, most, PUSH_KEEP_S],
            )
        )

    @_redis_errors
    async def drop_push_subscription(self, volunteer_id: str, endpoint: str) -> bool:
        """Forget one subscription; True if it was there."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k("push", volunteer_id), endpoint)
            pipe.zrem(self._k("pushat", volunteer_id), endpoint)
            removed, _ = await pipe.execute()
        return bool(removed)

    @_redis_errors
    async def push_subscribers(self) -> set[str]:
        """The volunteers with a subscription kept (their ``pushat:`` keys, scanned)."""
        head = self._k("pushat", "")
        found: set[str] = set()
        async for key in self.redis.scan_iter(match=f"{head}*", count=1000):
            found.add(key.decode()[len(head) :])
        return found

    @_redis_errors
    async def push_subscriptions_of(self, volunteer_ids: Sequence[str]) -> list[list[bytes]]:
        """The subscriptions of each volunteer, in order, in one round trip."""
        if not volunteer_ids:
            return []
        found = await self._push_of(keys=[self._k("push", v) for v in volunteer_ids])
        return [[bytes(v) for v in values] for values in found]


def _event_ids(results: list[Any], logged_at: int | None) -> list[str]:
    """The ids of the events a pipeline logged (`Store._queue`), in order."""
    if logged_at is None or logged_at < 0:
        return []
    return [eid.decode() for eid in results[logged_at]]


def _queue_script(pipe: Any, script: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` by its body (EVAL; Redis runs its cached copy).

    Queued as a script object, redis-py would first ask Redis whether the scripts exist
    (SCRIPT EXISTS) at every execute: a second round trip for each pipeline, a
    report's and a claim's included. The body is a few hundred bytes on the loopback.
    """
    pipe.eval(script.script, len(keys), *keys, *args)


def _settings(raw: bytes | None) -> Mapping[str, Any]:
    """A volunteer's settings as stored (a JSON object); empty if absent or unreadable."""
    try:
        settings = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return settings if isinstance(settings, dict) else {}


def _decode_volunteers(
    answer: list[Any], profiles: dict[tuple[bytes, bytes, bytes, bytes], StoredProfile]
) -> StoredVolunteers:
    """One ``_VOLUNTEERS`` answer; ``profiles``: those decoded so far, by their fields."""
    _cursor, ids, shape_of, positions, shapes = answer
    out = StoredVolunteers()
    for i in range(0, len(shapes), 4):
        key = (shapes[i], shapes[i + 1], shapes[i + 2], shapes[i + 3])
        profile = profiles.get(key)
        if profile is None:
            duty, skills, mode, settings = key
            profile = profiles[key] = StoredProfile(
                duty.decode() or None,
                _skills(skills.decode()),
                mode.decode() or "walk",
                _settings(settings),
            )
        out.profiles.append(profile)
    out.ids = list(map(bytes.decode, ids))
    out.profile_of = shape_of
    out.positions = list(map(_position, positions))
    return out


def _position(raw: bytes | None) -> tuple[float, float, float] | None:
    """A stored position, "lat,lon,at" (None where absent)."""
    if raw is None:
        return None
    lat, lon, at = raw.split(b",")
    return float(lat), float(lon), float(at)


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


def _incident_of(effect: Effect) -> str | None:
    """The incident whose stored state a persistence effect changes, if any."""
    if isinstance(effect, SaveIncident | LogEvent | Release):
        return effect.incident_id
    return None


def _entries(raw: Iterable[tuple[bytes, Mapping[bytes, bytes] | None]]) -> list[WorkEntry]:
    # A reclaimed entry deleted meanwhile comes back without fields: nothing to do.
    return [
        WorkEntry(entry_id.decode(), f[b"id"].decode(), f[b"payload"], float(f[b"at"]))
        for entry_id, f in raw
        if f
    ]


class ClusterStore(Store):
    """The store, plus what several instances share: the work stream, owners, leases,
    forwarded operator actions, and the fenced writes (see dispatch/cluster.py)."""

    def __init__(self, client: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._renew = client.register_script(_RENEW)
        self._adopt = client.register_script(_ADOPT)

    # ------------------------------------------------------------------ fenced writes

    async def claim_as_owner(self, volunteer_id: str, incident_id: str, token: str) -> bool | None:
        """`Store.claim`, only while ``token`` owns the incident; None if it does not."""
        try:
            result = await self._claim(
                keys=[self._k("claim", volunteer_id), self._k("owner", incident_id)],
                args=[incident_id, token],
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return None if int(result) == -1 else bool(result)

    async def apply_fenced(
        self,
        effects: Iterable[Effect],
        fence: Callable[[dict[str, str | None]], Fence],
        lease_ms: int,
    ) -> tuple[list[str], dict[str, str]]:
        """`Store.apply`, checked against the owners of the incidents it touches.

        The owner keys are WATCHed and read; ``fence`` decides, from their tokens, which
        incidents to take and whose writes to refuse; the rest is written in one
        transaction, with the new owner keys (``lease_ms``) and, for every alert logged,
        its ``alert:{id}`` key (so that the other instances can tell "someone else's
        alert" from "nobody's alert"). Looks again if an owner key changed meanwhile.
        Returns the new event ids and the incidents taken, with their tokens.
        """
        batch = list(effects)
        touched = sorted({i for e in batch if (i := _incident_of(e)) is not None})
        if not touched:
            return await Store.apply(self, batch), {}  # not a subclass's fenced one
        owner_keys = [self._k("owner", i) for i in touched]
        while True:
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(*owner_keys)
                    current = await pipe.mget(owner_keys)
                    decided = fence(
                        {
                            iid: None if raw is None else raw.decode()
                            for iid, raw in zip(touched, current, strict=True)
                        }
                    )
                    if decided.refuse:
                        batch = [e for e in batch if _incident_of(e) not in decided.refuse]
                    pipe.multi()
                    for iid, token in decided.take.items():
                        pipe.set(self._k("owner", iid), token, px=lease_ms)
                    for e in batch:
                        if isinstance(e, LogEvent) and e.type is EventType.ALERTED:
                            pipe.set(
                                self._k("alert", str(e.data.get("alert_id", ""))),
                                e.incident_id,
                                ex=self.idempotency_ttl_s,
                            )
                    logged_at = await self._queue(pipe, batch)
                    if logged_at is None and not decided.take:
                        return [], {}
                    results = await pipe.execute()
                return _event_ids(results, logged_at), dict(decided.take)
            except WatchError:
                continue  # an owner key changed meanwhile: look again
            except RedisError as exc:
                raise BackendUnavailable("redis", str(exc)) from exc

    # ------------------------------------------------------------------ owners and leases

    @_redis_errors
    async def owner(self, incident_id: str) -> str | None:
        """The token of the instance that owns the incident, if any."""
        raw = await self.redis.get(self._k("owner", incident_id))
        return None if raw is None else str(raw.decode())

    @_redis_errors
    async def owners(self, incident_ids: Sequence[str]) -> list[str | None]:
        raws = await self.redis.mget([self._k("owner", i) for i in incident_ids])
        return [None if raw is None else raw.decode() for raw in raws]

    @_redis_errors
    async def has_owner(self, incident_id: str) -> bool:
        return bool(await self.redis.exists(self._k("owner", incident_id)))

    @_redis_errors
    async def take_ownership(self, incident_id: str, token: str, lease_ms: int) -> bool:
        """Own an open incident nobody owns; False if it has an owner or no record."""
        keys = [self._k("owner", incident_id), self._k("inc", incident_id)]
        return bool(await self._adopt(keys=keys, args=[token, lease_ms]))

    @_redis_errors
    async def give_up(self, incident_id: str, token: str) -> bool:
        """Delete the owner key if ``token`` still holds it."""
        return bool(await self._delete_if(keys=[self._k("owner", incident_id)], args=[token]))

    @_redis_errors
    async def renew_leases(
        self, leases: Sequence[tuple[str, str, bool]], lease_ms: int
    ) -> list[bool]:
        """For each (incident, token, give_up): renew the lease, or give it up, if still
        ours; in one round trip. True where it was ours."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for iid, token, give_up in leases:
                key = [self._k("owner", iid)]
                if give_up:
                    await self._delete_if(keys=key, args=[token], client=pipe)
                else:
                    await self._renew(keys=key, args=[token, lease_ms], client=pipe)
            results = await pipe.execute()
        return [bool(r) for r in results]

    # ------------------------------------------------------------------ who knows what

    @_redis_errors
    async def incident_exists(self, incident_id: str) -> bool:
        return bool(await self.redis.exists(self._k("inc", incident_id)))

    @_redis_errors
    async def alert_incident(self, alert_id: str) -> str | None:
        """The incident an alert was sent for, by whichever instance sent it."""
        raw = await self.redis.get(self._k("alert", alert_id))
        return None if raw is None else str(raw.decode())

    @_redis_errors
    async def once(self, digest: str, keep_ms: int) -> bool:
        """True for the first caller with this digest within ``keep_ms``."""
        return bool(await self.redis.set(self._k("once", digest), b"1", nx=True, px=keep_ms))

    @_redis_errors
    async def ended_between(self, start: float, end: float) -> list[str]:
        ids = await self.redis.zrangebyscore(self._k("incidents", "ended"), start, end)
        return [i.decode() for i in ids]

    @_redis_errors
    async def mark_cleared(self, incident_id: str, keep_s: int) -> bool:
        """True for the first to clear the incident's retained state."""
        key = self._k("cleared", incident_id)
        return bool(await self.redis.set(key, b"1", nx=True, ex=keep_s))

    # ------------------------------------------------------------------ the work stream

    async def admit_work(
        self, incident_id: str, fingerprint: str, payload: bytes, now: float
    ) -> Admission:
        """`Store.admit`, and when new, the report added to the work stream in one step."""
        try:
            result = await self._admit(
                keys=[*self._admission_keys(incident_id), self._k("work")],
                args=[
                    fingerprint,
                    self.idempotency_ttl_s,
                    self.admission_lease_ms,
                    payload,
                    repr(now),
                    incident_id,
                    _WORK_MAX,
                ],
            )
        except RedisError as exc:
            raise BackendUnavailable("redis", str(exc)) from exc
        return _admission(result)

    @_redis_errors
    async def add_work(self, incident_id: str, payload: bytes, now: float) -> None:
        """A report (already given its id) into the work stream."""
        await self.redis.xadd(
            self._k("work"),
            {"id": incident_id, "payload": payload, "at": repr(now)},
            maxlen=_WORK_MAX,
            approximate=True,
        )

    @_redis_errors
    async def ensure_work_group(self) -> None:
        try:
            await self.redis.xgroup_create(self._k("work"), _GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @_redis_errors
    async def take_work(self, consumer: str, count: int, block_ms: int) -> list[WorkEntry]:
        """New work for ``consumer``, waiting up to ``block_ms``; [] if none."""
        try:
            reply = await self.redis.xreadgroup(
                _GROUP, consumer, {self._k("work"): ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_work_group()  # the stream was deleted (FLUSHDB): again
            return []
        return [e for _stream, entries in reply or [] for e in _entries(entries)]

    @_redis_errors
    async def reclaim_work(self, consumer: str, idle_ms: int, count: int) -> list[WorkEntry]:
        """Work another consumer took and has left unfinished for ``idle_ms``."""
        reply = await self.redis.xautoclaim(
            self._k("work"), _GROUP, consumer, idle_ms, start_id="0-0", count=count
        )
        return _entries(reply[1] if len(reply) > 1 else [])

    @_redis_errors
    async def finish_work(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._k("work"), _GROUP, entry_id)
            pipe.xdel(self._k("work"), entry_id)
            await pipe.execute()

    # ------------------------------------------------------------------ forwarded actions

    def new_reply_address(self) -> str:
        """Where an instance answers one forwarded action (a fresh key)."""
        return self._k("reply", secrets.token_hex(8))

    @_redis_errors
    async def forward(self, instance: str, command: bytes, keep_ms: int) -> None:
        """Append to ``instance``'s command list (gone ``keep_ms`` after the last one)."""
        queue = self._k("commands", instance)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(queue, command)
            pipe.pexpire(queue, keep_ms)
            await pipe.execute()

    @_redis_errors
    async def withdraw(self, instance: str, command: bytes) -> bool:
        """Take a command back from ``instance``'s list; False if it was taken already."""
        return bool(await self.redis.lrem(self._k("commands", instance), 1, command))

    @_redis_errors
    async def next_command(self, instance: str, timeout_s: float) -> bytes | None:
        got = await self.redis.blpop([self._k("commands", instance)], timeout=timeout_s)
        return None if got is None else bytes(got[1])

    @_redis_errors
    async def answer(self, address: str, body: bytes, keep_ms: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(address, body)
            pipe.pexpire(address, keep_ms)
            await pipe.execute()

    @_redis_errors
    async def wait_answer(self, address: str, timeout_s: float) -> bytes | None:
        got = await self.redis.blpop([address], timeout=timeout_s)
        return None if got is None else bytes(got[1])
