"""Several engine instances on one broker and one Redis, sharing the work (``[cluster]``).

Off by default: a single engine never uses this module. With ``[cluster] enabled``:

- Every instance subscribes to every topic, so each keeps the whole volunteer index.
- A report is admitted by exactly one instance: for a report with an id, the same Lua
  admission as a single engine (``new``/``same``/``conflict``/``pending``) that, when
  new, also adds it to the work stream ``work``, atomically; a report without an id
  reaches every instance as the same bytes, so the first to ``SET NX`` a hash of them
  (kept ``_ONCE_MS``) assigns the id and adds it. An identical id-less report sent
  again within that time is taken for the same one (send an id to be safe).
- The consumer group ``engines`` hands each work entry to one instance, which creates
  the incident and so becomes its **owner**: ``owner:{id}`` holds that instance's
  fencing token (instance name and a random part) with a lease of ``lease_s``,
  renewed every third of it. Replies, arrivals, timers and operator actions for an
  incident are acted on only by its owner; the others do not know it and stay silent.
- Every write for an incident is fenced: the persistence effects run in a transaction
  that WATCHes the owner keys and checks the tokens (``FencedStore.apply``), and a
  volunteer is claimed by a Lua script that checks the token in the same step
  (``ClusterStore.claim_as_owner``). An instance that was paused (SIGSTOP, a long GC,
  a VM migration) past its lease finds its token gone when it wakes: its writes and
  claims are refused, it forgets those incidents and publishes nothing for them.
- An instance that died leaves entries pending in the group and incidents whose lease
  runs out. Every second each instance takes entries idle for ``reclaim_idle_s``
  (XAUTOCLAIM), and adopts open incidents with no owner: it takes the lease, reloads
  the incident from Redis (as after a restart) and carries on with its timers.
- Rejections that every instance would send (bad bytes, unknown alert or incident ids)
  are sent once: by the instance that wins a ``SET NX`` on a hash of the message, and
  only when no instance knows the alert (``alert:{id}``) or incident.
- The HTTP API of every instance answers for every incident: it reads incidents from
  Redis, sends a report through the work stream, and hands an operator action on
  another instance's incident to that instance's command list and waits
  (``_FORWARD_S``) for the answer on a reply key; an open incident with no owner is
  adopted first. The owner acts under its fencing token, as on its own.

Known limits, written down in docs/reliability.md: a volunteer's pending alert is known
to its owner only, so two instances may alert one volunteer at the same time (the claims
still let only one commit them). Replies and arrivals for others' incidents are parked
30 s, so that the instance that adopts an incident answers those sent while its owner was
dying.

This module speaks to the shell only through public seams: the engine
(dispatch/engine.py) and the cluster part of the store (``ClusterStore``, where every
key and script is); `Cluster` implements the ports of dispatch/ports.py, and the
composition root (dispatch/wiring.py) plugs it in.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from dispatch.config import Config
from dispatch.dispatcher import BadMerge, Incident, UnknownIncident, UnknownVolunteer
from dispatch.effects import Effect, EventType, LogEvent, Outbound
from dispatch.engine import Engine
from dispatch.errors import BackendUnavailable, BadMessage, InvalidTransition, OwnerUnavailable
from dispatch.lifecycle import ENDED, State, advance
from dispatch.model import Amendment, Report, is_valid_id
from dispatch.ports import ReportOutcome
from dispatch.store import Admission, ClusterStore, Fence, WorkEntry

__all__ = ["Cluster", "FencedStore", "current_message"]

log = logging.getLogger(__name__)

_ONCE_MS = 10_000  # how long a "sent once" decision (a rejection, an id-less report) holds
_LOST_KEEP_S = 60.0

# The message being handled (topic, payload): what "once" decisions key on, and what is
# parked for an incident whose owner is gone.
current_message: contextvars.ContextVar[tuple[str, bytes] | None] = contextvars.ContextVar(
    "current_message", default=None
)
_PARK_S = 30.0  # how long a message for an orphaned incident waits for its adopter
_PARK_MAX = 10_000
_CLEAR_EVERY_S = 5.0
# The HTTP API of any instance serves every incident (see Cluster.operator, .submit).
_FORWARD_S = 3.0  # how long an operator action waits for the incident's owner to answer
_CREATED_WAIT_S = 5.0  # how long POST /api/incidents waits for the incident to be stored
_OWNER_CHECK_S = 0.25  # while waiting, how often to check the owner still holds its lease
_COMMANDS_KEEP_MS = 60_000  # a dead instance's command list is gone after this
_ACTION_TARGET = {
    "cancel": State.CANCELLED,
    "resolve": State.RESOLVED,
    "escalate": State.ESCALATED,
    "assign": State.ASSIGNED,
    "amend": State.OPEN,  # not a move: an ended incident cannot be amended (409)
    "merge": State.CANCELLED,  # duplicate reports: of an open incident only
}


def message_key(topic: str, payload: bytes) -> bytes:
    return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=16).digest()


class FencedStore(ClusterStore):
    """The store, with every incident write and claim checked against its owner's token."""

    cluster: Cluster | None = None  # set by Cluster; None: behaves as Store

    async def claim(self, volunteer_id: str, incident_id: str) -> bool:
        cluster = self.cluster
        if cluster is None:
            return await super().claim(volunteer_id, incident_id)
        token = cluster.tokens.get(incident_id)
        if token is None:
            return False
        result = await self.claim_as_owner(volunteer_id, incident_id, token)
        if result is None:
            cluster.lose(incident_id, "claim refused")
            return False
        return result

    def claims_with_writes(self) -> bool:
        return self.cluster is None  # else each claim checks its owner (`claim`)

    async def claims(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Each claim fenced as `claim` fences it (one at a time: each checks its owner)."""
        if self.cluster is None:
            return await super().claims(pairs)
        return [await self.claim(volunteer_id, incident_id) for volunteer_id, incident_id in pairs]

    async def apply(self, effects: Iterable[Effect]) -> list[str]:
        cluster = self.cluster
        if cluster is None:
            return await super().apply(effects)
        batch = list(effects)
        creating = {
            e.incident_id for e in batch if isinstance(e, LogEvent) and e.type is EventType.REPORTED
        }
        event_ids, taken = await self.apply_fenced(
            batch, lambda owners: cluster.fence(owners, creating), cluster.lease_ms
        )
        cluster.tokens.update(taken)
        return event_ids


class Cluster:
    """This instance's part in the cluster: its work, its incidents, its leases.

    Implements the ports of dispatch/ports.py (``Peers``) for the shell.
    """

    batches = False  # every message on its own: `begin` must see each one

    def __init__(
        self,
        engine: Engine,
        store: FencedStore,
        config: Config,
        *,
        instance: str,
        redeliver: Callable[[str, bytes], Awaitable[None]],
        ready: asyncio.Event,
    ) -> None:
        self.engine = engine
        self.config = config
        self.instance = instance
        self.store = store
        self.store.cluster = self
        # Hands a parked message to the shell again, as if it had just arrived.
        self.redeliver = redeliver
        self.ready = ready  # set while the broker is reachable: work is taken only then
        self.lease_ms = max(100, int(config.cluster_lease_s * 1000))
        self.reclaim_idle_ms = max(100, int(config.cluster_reclaim_idle_s * 1000))
        self.block_ms = max(10, int(min(1.0, config.redis_timeout_s / 2) * 1000))
        self.tokens: dict[str, str] = {}  # incident id -> our fencing token
        # Incidents that ended here: the lease is given up (nothing can change them any
        # more, and nobody adopts an ended incident), but late answers are still ours.
        self.retired: set[str] = set()
        self.lost: dict[str, float] = {}  # incidents we lost lately -> when
        # Replies and arrivals for other instances' incidents, lately (see _park).
        self.parked: dict[str, list[tuple[float, str, bytes]]] = {}

    # ------------------------------------------------------------------ tokens

    def new_token(self) -> str:
        return f"{self.instance}:{secrets.token_hex(6)}"

    def fence(self, owners: Mapping[str, str | None], creating: set[str]) -> Fence:
        """What a write may do, given the current owner tokens of the incidents it touches."""
        take: dict[str, str] = {}
        lost: list[str] = []
        for iid, held in owners.items():
            mine = self.tokens.get(iid)
            if held is None and iid in creating:
                take[iid] = self.new_token()
            elif held is None and iid in self.retired:
                pass  # ended here: nobody adopts it, late answers are ours
            elif held is None or held != mine:
                lost.append(iid)
        for iid in lost:
            self.lose(iid, "write refused")
        return Fence(take, frozenset(lost))

    def lose(self, incident_id: str, why: str) -> None:
        """Someone else owns it now: forget it here and publish nothing more for it."""
        self.tokens.pop(incident_id, None)
        self.lost[incident_id] = time.monotonic()
        if incident_id in self.engine.core.incidents:
            log.warning("incident=%s lost ownership (%s); forgetting it here", incident_id, why)
        self.engine.forget(incident_id)

    def keep(self, outbound: list[Outbound]) -> list[Outbound]:
        """The messages that do not belong to an incident lost during this batch."""
        if not self.lost:
            return outbound
        return [e for e in outbound if e.incident_id not in self.lost]

    def begin(self, topic: str, payload: bytes) -> None:
        """Called for every inbound message, before anything else is done with it."""
        current_message.set((topic, payload))

    def to_restore(self, records: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        """None: incidents come back by adoption, each to one owner."""
        return []

    async def once(self, what: tuple[str, bytes] | None) -> bool:
        """True for exactly one instance per message (the first to ask)."""
        if what is None:
            return True
        try:
            return await self.store.once(message_key(*what).hex(), _ONCE_MS)
        except BackendUnavailable:
            return True  # Redis is away: rather twice than never

    async def should_reject(self, err: BadMessage) -> bool:
        """Whether this instance reports ``err``: only if no instance knows the id, once."""
        message = current_message.get()
        try:
            if err.code == "unknown_alert" and err.id:
                owner_of = await self.store.alert_incident(err.id)
                if owner_of is not None:  # another instance's alert: its owner answers
                    self._park(owner_of, message)
                    return False
            incident = err.id if err.code == "unknown_incident" else None
            if incident and await self.store.incident_exists(incident):
                self._park(incident, message)
                return False
        except BackendUnavailable:
            pass
        return await self.once(message)

    def _park(self, incident_id: str, message: tuple[str, bytes] | None) -> None:
        """Keep a reply or arrival for someone else's incident a while: should its owner
        have died before it was handled, whoever adopts the incident handles it then."""
        if message is None:
            return
        if sum(len(v) for v in self.parked.values()) >= _PARK_MAX:
            oldest = min(self.parked, key=lambda i: self.parked[i][0][0])
            del self.parked[oldest]
        self.parked.setdefault(incident_id, []).append((time.monotonic(), *message))

    # ------------------------------------------------------------------ admission

    async def admit(self, report: Report, payload: bytes, now: float) -> None:
        """Admit a report from MQTT into the work stream (exactly one instance does)."""
        engine = self.engine
        if report.id is None:
            if not await self.once(current_message.get()):
                return
            incident_id = engine.core.new_incident_id(now)
            await engine.retrying(lambda: self.store.add_work(incident_id, payload, now))
            return
        rid = report.id
        answer: Admission = await engine.retrying(
            lambda: self.store.admit_work(rid, report.fingerprint, payload, now)
        )
        if answer == "conflict":
            engine.metrics.incidents.labels(kind=report.kind.value, outcome="conflict").inc()
            await engine.reject(engine.conflict(rid), now)
        elif answer == "same":
            engine.metrics.incidents.labels(kind=report.kind.value, outcome="duplicate").inc()
            # Its owner sends the receipt again; with no owner (ended and forgotten, or
            # an owner that just died), one instance sends it from the stored record.
            # Another owner's incident is left alone: an older state from here could
            # overtake its newer one.
            if rid in self.tokens or (
                not await self._has_owner(rid) and await self.once(current_message.get())
            ):
                await engine.receipt(rid)

    async def _has_owner(self, incident_id: str) -> bool:
        try:
            return await self.store.has_owner(incident_id)
        except BackendUnavailable:
            return True  # cannot tell: stay silent, the reporter sends it again

    # ------------------------------------------------------------------ the HTTP API
    #
    # Any instance answers for every incident: reads come from Redis (every record is
    # there, stored before it is announced), a report goes through the work stream like
    # one from MQTT, and an operator action is carried out by the incident's owner, which
    # takes it from its command list and answers on a reply key.

    def held(self) -> Mapping[str, Incident]:
        """None: every instance reads every incident from Redis, so that all show the same."""
        return {}

    async def open_records(self) -> list[dict[str, Any]]:
        """Every open incident's record, whoever owns it."""
        ids = await self.store.open_incident_ids()
        return await self.store.incidents(ids)

    async def open_incidents(self) -> list[Incident]:
        return [Incident.from_record(r) for r in await self.open_records()]

    async def incident(self, incident_id: str) -> Incident | None:
        """From Redis, so that every instance shows the same."""
        record = await self.store.incident(incident_id)
        return None if record is None else Incident.from_record(record)

    async def submit(self, report: Report, payload: bytes, now: float) -> tuple[ReportOutcome, str]:
        """A report from HTTP: admitted into the work stream, then its stored state.

        Returns the outcome and the incident id ("pending" if no instance has stored it
        within ``_CREATED_WAIT_S``: it will be, and its receipt published as usual).
        """
        engine = self.engine
        counter = engine.metrics.incidents
        if report.id is None:
            incident_id = engine.core.new_incident_id(now)
            await engine.retrying(lambda: self.store.add_work(incident_id, payload, now))
        else:
            rid = incident_id = report.id
            answer: Admission = await engine.retrying(
                lambda: self.store.admit_work(rid, report.fingerprint, payload, now)
            )
            if answer == "conflict":
                counter.labels(kind=report.kind.value, outcome="conflict").inc()
                engine.metrics.rejected.labels(reason="conflict").inc()
                return ReportOutcome("conflict"), rid
            if answer != "new":
                counter.labels(kind=report.kind.value, outcome="duplicate").inc()
                if answer == "pending":
                    return ReportOutcome("pending"), rid
                if rid in self.tokens:  # ours: the receipt is published again, as alone
                    return ReportOutcome("duplicate", await engine.receipt(rid)), rid
                record = await self.store.incident(rid)
                if record is None:  # pragma: no cover - "same" means it is stored
                    return ReportOutcome("pending"), rid
                return ReportOutcome("duplicate", self._public(record)), rid
        deadline = time.monotonic() + _CREATED_WAIT_S
        while (record := await self.store.incident(incident_id)) is None:
            if time.monotonic() >= deadline:
                return ReportOutcome("pending"), incident_id
            await asyncio.sleep(0.02)
        return ReportOutcome("created", self._public(record)), incident_id

    def _public(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.engine.core.public_state(Incident.from_record(record))

    def _acts_here(self, incident_id: str) -> bool:
        """Whether this instance carries out actions on the incident itself."""
        return incident_id in self.tokens or (
            incident_id in self.retired and incident_id in self.engine.core.incidents
        )

    async def operator(
        self, action: str, incident_id: str, by: str, **kwargs: Any
    ) -> dict[str, Any]:
        """``Engine.act`` for any incident: here if ours, else by its owner.

        Raises what ``Engine.act`` raises (the owner's answer, rebuilt), and
        OwnerUnavailable if the owner does not answer within ``_FORWARD_S``. An open
        incident nobody owns (its owner died) is adopted here first, then acted on.
        """
        target = _ACTION_TARGET.get(action)
        if target is None:
            raise ValueError(f"unknown operator action {action!r}")
        if not is_valid_id(incident_id):
            raise UnknownIncident(incident_id)
        deadline = time.monotonic() + _FORWARD_S
        while True:
            if self._acts_here(incident_id):
                return await self.engine.act(action, incident_id, by, **kwargs)
            owner = await self.store.owner(incident_id)
            if owner is not None:
                answer = await self._forward(owner, deadline, action, incident_id, by, kwargs)
                if answer is not None:  # None: that instance no longer owns it
                    return _unpack(answer, incident_id, kwargs)
            else:
                record = await self.store.incident(incident_id)
                if record is None:
                    raise UnknownIncident(incident_id)
                state = State(record["state"])
                if state in ENDED:  # nobody owns an ended incident; answer as its owner
                    if action == "amend":
                        raise InvalidTransition(incident_id, state, state)
                    if action == "merge":
                        into = record.get("merged_into")
                        raise BadMerge(
                            "already_merged" if into else "incident_ended",
                            f"incident '{incident_id}' was already merged into '{into}'"
                            if into
                            else f"incident '{incident_id}' is {state.value} already: only "
                            "an open incident can be merged",
                        )
                    if action == "assign":
                        raise InvalidTransition(incident_id, state, target)
                    advance(incident_id, state, target)  # only "again" is allowed
                    return self._public(record)
                if await self.adopt(incident_id):
                    continue
            if time.monotonic() >= deadline:
                instance = "?" if owner is None else owner.rpartition(":")[0]
                raise OwnerUnavailable(
                    incident_id,
                    instance,
                    maybe_done=False,
                    lease_s=self.lease_ms / 1000,
                    waited_s=_FORWARD_S,
                )
            await asyncio.sleep(0.05)  # ownership is moving: look again

    async def _forward(
        self,
        owner_token: str,
        deadline: float,
        action: str,
        incident_id: str,
        by: str,
        kwargs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Hand the action to the owner's command list and wait for its answer.

        None: the action was not carried out, as that instance no longer owns the incident.
        """
        instance = owner_token.rpartition(":")[0]
        reply_to = self.store.new_reply_address()
        remaining = max(0.0, deadline - time.monotonic())
        if isinstance(kwargs.get("changes"), Amendment):  # JSON-ready; decoded again there
            kwargs = {**kwargs, "changes": kwargs["changes"].fields()}
        command = orjson.dumps(
            {
                "action": action,
                "incident_id": incident_id,
                "by": by,
                "kwargs": kwargs,
                "reply": reply_to,
                # The owner drops a command it takes after this (wall clock, our clock).
                "expires": self.engine.clock() + remaining,
            }
        )
        await self.store.forward(instance, command, _COMMANDS_KEEP_MS)
        while (remaining := deadline - time.monotonic()) > 0:
            wait_s = max(0.01, min(remaining, _OWNER_CHECK_S, self.block_ms / 1000))
            got = await self.store.wait_answer(reply_to, wait_s)
            if got is not None:
                answer: dict[str, Any] = orjson.loads(got)
                return None if answer.get("moved") else answer
            # Its lease ran out meanwhile (the owner died): withdraw the command, unless
            # already taken, and route the action again (to the adopter, or adopt).
            held = await self.store.owner(incident_id)
            if held != owner_token and await self.store.withdraw(instance, command):
                return None
        # Not answered in time. Still in the list: never taken, so never carried out.
        taken = not await self.store.withdraw(instance, command)
        raise OwnerUnavailable(
            incident_id,
            instance,
            maybe_done=taken,
            lease_s=self.lease_ms / 1000,
            waited_s=_FORWARD_S,
        )

    async def serve_commands(self) -> None:
        """Carry out the operator actions other instances forward to us, in order."""
        while True:
            try:
                got = await self.store.next_command(self.instance, self.block_ms / 1000)
            except BackendUnavailable as exc:
                log.debug("command list not readable (%s)", exc)
                await asyncio.sleep(0.2)
                continue
            if got is not None:
                await self._serve(got)

    async def _serve(self, raw: bytes) -> None:
        try:
            command = orjson.loads(raw)
            action, iid, by = command["action"], command["incident_id"], command["by"]
            reply_to, expires = command["reply"], float(command["expires"])
            given = command["kwargs"]
            kwargs = {
                k: given[k] for k in ("volunteer_id", "reason", "into", "other_kind") if k in given
            }
            if "changes" in given:  # an amendment: checked again, as from any sender
                kwargs["changes"] = self.engine.core.codec.decode_amendment_object(given["changes"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, BadMessage) as exc:
            log.warning("dropped a malformed forwarded command (%s)", exc)
            return
        if self.engine.clock() > expires:
            log.info("incident=%s forwarded %s dropped: its sender gave up", iid, action)
            return
        answer: dict[str, Any]
        if not self._acts_here(iid):
            answer = {"moved": True}  # the sender looks up the owner again
        else:
            try:
                answer = {"state": await self.engine.act(action, iid, by, **kwargs)}
            except UnknownIncident as exc:
                # Taken over by another instance while acting: the sender asks it instead.
                answer = (
                    {"moved": True}
                    if not self._acts_here(iid)
                    else {"error": "unknown_incident", "id": str(exc.args[0]) if exc.args else iid}
                )
            except BadMerge as exc:
                answer = {"error": "bad_merge", "code": exc.code, "message": str(exc)}
            except UnknownVolunteer:
                answer = {"error": "unknown_volunteer"}
            except InvalidTransition as exc:
                answer = {"error": "invalid_transition", "from": exc.from_state, "to": exc.to_state}
        try:
            await self.store.answer(reply_to, orjson.dumps(answer), int(_FORWARD_S * 1000) + 5_000)
        except BackendUnavailable as exc:  # its sender answers 503 "may still be carried out"
            log.warning("incident=%s answer to a forwarded %s lost (%s)", iid, action, exc)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Take work, reclaim a dead instance's work, renew leases and adopt: until cancelled."""
        await self._ensure_group()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._consume(), name="cluster-consume")
            tg.create_task(self._maintain(), name="cluster-maintain")
            tg.create_task(self.serve_commands(), name="cluster-commands")

    async def _ensure_group(self) -> None:
        while True:
            try:
                await self.store.ensure_work_group()
                return
            except BackendUnavailable as exc:
                log.warning("cannot create the work group yet (%s); retrying", exc)
                await asyncio.sleep(0.5)

    async def _consume(self) -> None:
        while True:
            await self.ready.wait()
            try:
                entries = await self.store.take_work(self.instance, 16, self.block_ms)
            except BackendUnavailable as exc:
                log.debug("work stream not readable (%s)", exc)
                await asyncio.sleep(0.2)
                continue
            for entry in entries:
                await self._handle(entry)

    async def _maintain(self) -> None:
        period = self.lease_ms / 3000.0
        reclaim_every = 1.0
        last_reclaim = last_clear = 0.0
        while True:
            started = time.monotonic()
            try:
                await self.heartbeat()
                if started - last_reclaim >= reclaim_every:
                    last_reclaim = started
                    await self._reclaim()
                await self._adopt_orphans()
                if started - last_clear >= _CLEAR_EVERY_S:
                    last_clear = started
                    await self._clear_expired_states()
            except BackendUnavailable as exc:
                log.warning("cluster upkeep failed (%s); retrying", exc)
            for iid, at in list(self.lost.items()):
                if started - at > _LOST_KEEP_S:
                    del self.lost[iid]
            for iid, parked in list(self.parked.items()):
                fresh = [m for m in parked if started - m[0] < _PARK_S]
                if fresh:
                    self.parked[iid] = fresh
                else:
                    del self.parked[iid]
            await asyncio.sleep(
                max(0.05, min(period, reclaim_every) - (time.monotonic() - started))
            )

    async def heartbeat(self) -> None:
        """Renew every lease we hold; forget what we lost; give up what has ended."""
        core = self.engine.core
        self.retired.intersection_update(core.incidents)
        tokens = dict(self.tokens)
        if not tokens:
            return
        gone = {i for i in tokens if i not in core.incidents or core.incidents[i].ended}
        results = await self.store.renew_leases(
            [(iid, token, iid in gone) for iid, token in tokens.items()], self.lease_ms
        )
        for (iid, token), ok in zip(tokens.items(), results, strict=True):
            if iid in gone:
                if self.tokens.get(iid) == token:
                    del self.tokens[iid]
                    if iid in core.incidents:
                        self.retired.add(iid)
            elif not ok and self.tokens.get(iid) == token:
                self.lose(iid, "lease expired")

    async def confirmed(self, incident_ids: Sequence[str]) -> list[str]:
        """Those of ``incident_ids`` we still own (leases renewed now); [] if Redis is away."""
        try:
            await self.heartbeat()
        except BackendUnavailable:
            return []
        return [i for i in incident_ids if i in self.tokens]

    async def _reclaim(self) -> None:
        entries = await self.store.reclaim_work(self.instance, self.reclaim_idle_ms, 64)
        for entry in entries:
            log.info("reclaimed work entry %s", entry.entry_id)
            await self._handle(entry)

    async def _handle(self, entry: WorkEntry) -> None:
        engine = self.engine
        incident_id = entry.incident_id
        topic = engine.codec.topic("incidents", "report")
        try:
            report = engine.codec.decode(topic, entry.payload, entry.at)
        except BadMessage as err:  # admitted by an instance with other settings
            log.warning("work entry %s not decodable here: %s", entry.entry_id, err)
            await self._done(entry)
            return
        assert isinstance(report, Report)
        exists = await engine.retrying(lambda: self.store.incident_exists(incident_id))
        if not exists:
            created = await engine.create(report, incident_id)
            if created and incident_id in self.tokens:
                engine.metrics.incidents.labels(kind=report.kind.value, outcome="created").inc()
        await self._done(entry)

    async def _done(self, entry: WorkEntry) -> None:
        await self.engine.retrying(lambda: self.store.finish_work(entry.entry_id))

    async def _clear_expired_states(self) -> None:
        """Clear the retained state of incidents that ended ``state_retention_s`` ago.

        Their owner does it with a timer; this covers an owner that has died since (ended
        incidents are not adopted). Clearing twice is harmless; one instance does it.
        """
        engine = self.engine
        now = engine.clock()
        retention = self.config.state_retention_s
        ids = await self.store.ended_between(now - retention - 3600, now - retention)
        for iid in ids:
            if iid in engine.core.incidents:
                continue  # ours: our own timer clears it
            if await self.store.mark_cleared(iid, int(retention) + 7200):
                await engine.clear_state(iid)

    async def _adopt_orphans(self) -> None:
        """Take over open incidents whose owner's lease ran out."""
        open_ids = await self.store.open_incident_ids()
        candidates = [i for i in open_ids if i not in self.tokens]
        if not candidates:
            return
        held = await self.store.owners(candidates)
        for iid, owner in zip(candidates, held, strict=True):
            if owner is None:
                await self.adopt(iid)

    async def adopt(self, iid: str) -> bool:
        """Take over one open incident nobody owns; False if it has an owner (or no record)."""
        token = self.new_token()
        if not await self.store.take_ownership(iid, token, self.lease_ms):
            return False
        record = await self.store.incident(iid)
        if record is None:
            await self.store.give_up(iid, token)
            return False

        def take() -> None:  # under the engine's lock, before the incident is restored
            self.tokens[iid] = token
            self.lost.pop(iid, None)

        await self.engine.adopt(iid, record, take)
        log.warning("incident=%s adopted (its owner's lease ran out)", iid)
        # What reached us for it while its owner was gone (an accept, an arrival):
        # handled now, in order. One its owner did handle is answered again, which
        # the protocol allows (an accept gets its "go" again).
        for _, topic, payload in self.parked.pop(iid, []):
            await self.redeliver(topic, payload)
        return True


def _unpack(answer: dict[str, Any], incident_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The owner's answer to a forwarded action: its state, or its error raised again."""
    error = answer.get("error")
    if error == "unknown_incident":
        raise UnknownIncident(str(answer.get("id", incident_id)))
    if error == "bad_merge":
        raise BadMerge(str(answer["code"]), str(answer["message"]))
    if error == "unknown_volunteer":
        raise UnknownVolunteer(kwargs.get("volunteer_id"))
    if error == "invalid_transition":
        raise InvalidTransition(incident_id, str(answer["from"]), str(answer["to"]))
    state: dict[str, Any] = answer["state"]
    return state
