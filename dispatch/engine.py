"""The engine: the core behind one lock, and the executor of the effects it returns.

Every public method takes the lock, feeds the core one event (or a run of them), and
carries out what the core decided: first everything to be stored (one Redis pipeline),
then every message (rendered for the broker by dispatch/wire.py); a claim's answer from
Redis goes back to the core.
Nothing is announced before it is stored, so the retained state message is a
reporter's proof that its incident is safe. The lock is held only across the few Redis
and broker round trips an event needs; positions are coalesced per volunteer and
written by `flush_positions`, off that path.

While Redis is down the engine retries the write it was doing (with capped back-off)
instead of moving on: the core must never get ahead of what is stored.

`Alone` is the single-instance implementation of the ports in dispatch/ports.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from dispatch.bus import Bus
from dispatch.codec import Codec
from dispatch.dispatcher import Dispatcher, Incident, UnknownIncident
from dispatch.effects import (
    Action,
    Claim,
    Effect,
    EventType,
    ForgetPosition,
    LogEvent,
    Outbound,
    Reject,
    Release,
    SavePosition,
    SendAlert,
    SendAssignment,
    StateChanged,
)
from dispatch.errors import BackendUnavailable, BadMessage
from dispatch.metrics import Metrics
from dispatch.model import Arrived, LocationUpdate, Reply, Report, StatusUpdate
from dispatch.ports import Ownership, ReportOutcome
from dispatch.store import Admission, Store, StoredVolunteers
from dispatch.wire import Publish, Wire

__all__ = ["Alone", "Engine", "Message", "mask_numbers"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A number with a fraction or an exponent (30.2591, 30,2591, 3025910e-5): a coordinate
# precise enough to place a person; masked in the reasons that are logged.
_NUMBER = re.compile(r"\d*[.,]\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+")

Message = LocationUpdate | StatusUpdate | Reply | Arrived


class Engine:
    """The core, its lock, and the carrying out of its effects (store, then publish)."""

    def __init__(
        self,
        core: Dispatcher,
        store: Store,
        bus: Bus,
        codec: Codec,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.store = store
        self.bus = bus
        self.codec = codec
        self.wire = Wire(codec)
        self.metrics = metrics
        self.clock = clock
        self.ownership: Ownership = Alone(self)
        self.redis_ok = False
        # Called after every flush of positions with (how many, seconds taken): a hook for
        # diagnostics (benchmarks/loopmon.py).
        self.on_positions_flushed: Callable[[int, float], None] | None = None
        # Called with every alert right after it was handed to the broker: Web Push
        # (dispatch/push.py) queues it there, without waiting; None: MQTT only.
        self.on_alert: Callable[[SendAlert], None] | None = None
        # Entered around every Redis call the engine waits on (`retrying`): the service
        # has the inbound bus read nothing meanwhile (`Bus.not_reading`).
        self.while_waiting: Callable[[], contextlib.AbstractContextManager[None]] = (
            contextlib.nullcontext
        )
        self._lock = asyncio.Lock()
        self._positions: dict[str, SavePosition | ForgetPosition] = {}

    def share(self, ownership: Ownership) -> None:
        """Act only for the incidents ``ownership`` says are this instance's."""
        self.ownership = ownership

    # ------------------------------------------------------------------ events

    async def report(self, report: Report, now: float, *, via_mqtt: bool = True) -> ReportOutcome:
        """Admit, store, then announce an incident (`_decide`).

        "pending": another engine is storing the same report; its receipt comes from there.
        A conflict is reported on ``rejected`` only for MQTT reports: an HTTP caller gets
        its answer in the response, like every other HTTP error.
        """
        async with self._lock:
            ((admission, incident_id),) = await self._decide([report], now)
            if admission == "new":
                incident = self.core.incidents[incident_id]
                return ReportOutcome("created", self.core.public_state(incident))
            if admission == "conflict":
                conflict = self.conflict(incident_id)
                if via_mqtt:
                    await self.reject(conflict, now)
                else:
                    self.metrics.rejected.labels(reason=conflict.code).inc()
                return ReportOutcome("conflict")
            if admission == "pending":  # another engine is storing it right now
                return ReportOutcome("pending")
            return ReportOutcome("duplicate", await self.receipt(incident_id))

    async def reports(self, reports: Sequence[Report], now: float) -> None:
        """A run of reports over MQTT, each as `report` handles it, under one hold of the
        lock: decided in order, stored (each with its admission) in one round trip, then
        announced.

        One at a time, each report held the lock for two round trips: behind a herd of
        statuses the reports then queued for one another (RESULTS.md).
        """
        async with self._lock:
            decided = await self._decide(reports, now)
            for admission, incident_id in decided:
                if admission == "same":
                    await self.receipt(incident_id)
                elif admission == "conflict":
                    await self.reject(self.conflict(incident_id), now)

    async def _decide(self, reports: Sequence[Report], now: float) -> list[tuple[Admission, str]]:
        """Each report decided, then stored with its admission, all in one round trip
        (`Store.record_reports`), then what was decided for the new ones carried out; for
        each report, its admission and incident id. Call under the lock.

        Deciding first saves a round trip a report (admitting, then storing: 2.5 points of
        the engine's CPU at 100 reports a second, RESULTS.md). A decision whose report
        turns out not to be new (sent before, or being stored by another engine) was
        neither stored nor announced, and is taken back (`Dispatcher.retract`). A later
        report of the run keeps its decision, made while the volunteers of the one taken
        back were alerted: it alerted others.

        A report whose id this core holds (a copy of one it dispatched), or that comes
        twice in the run, is admitted before deciding (`_admit_then_decide`): deciding it
        would replace the incident held.
        """
        ids = [r.id for r in reports if r.id is not None]
        if len(set(ids)) < len(ids) or any(i in self.core.incidents for i in ids):
            return await self._admit_then_decide(reports, now)
        decided: list[tuple[Report, str, list[Effect]]] = []
        for report in reports:
            effects = self.core.report(report, now)
            incident_id = next(e.incident_id for e in effects if isinstance(e, LogEvent))
            decided.append((report, incident_id, effects))
        admissions = await self.retrying(
            functools.partial(
                self.store.record_reports,
                [
                    (r.id, r.fingerprint, [e for e in effects if self.store.has_work(e)])
                    for r, _, effects in decided
                ],
                self.store.new_token(),
            )
        )
        carried: list[Effect] = []
        verdicts: list[tuple[Admission, str]] = []
        for (report, incident_id, effects), admission in zip(decided, admissions, strict=True):
            if admission == "new":
                carried += effects
            else:
                self.core.retract(incident_id, now)
            self._count(report, admission)
            verdicts.append((admission, incident_id))
        await self._execute(carried, now, decision_started=now, stored=True)
        return verdicts

    async def _admit_then_decide(
        self, reports: Sequence[Report], now: float
    ) -> list[tuple[Admission, str]]:
        """`_decide` the other way round: the reports admitted in one round trip, then
        the new ones decided and stored in another (an id given twice in the run: the
        second is "pending", the first being stored)."""
        with_id = [(r.id, r.fingerprint) for r in reports if r.id is not None]
        admissions = iter(
            await self.retrying(lambda: self.store.admit_all(with_id)) if with_id else ()
        )
        effects: list[Effect] = []
        verdicts: list[tuple[Admission, str]] = []
        for report in reports:
            admission: Admission = "new" if report.id is None else next(admissions)
            incident_id = report.id or ""
            if admission == "new":
                decision = self.core.report(report, now)
                incident_id = next(e.incident_id for e in decision if isinstance(e, LogEvent))
                effects += decision
            self._count(report, admission)
            verdicts.append((admission, incident_id))
        await self._execute(effects, now, decision_started=now)
        return verdicts

    def _count(self, report: Report, admission: Admission) -> None:
        outcome = {"new": "created", "conflict": "conflict"}.get(admission, "duplicate")
        self.metrics.incidents.labels(kind=report.kind.value, outcome=outcome).inc()

    def conflict(self, incident_id: str) -> BadMessage:
        """The rejection of a report whose id was reported before with another body."""
        return BadMessage(
            self.codec.topic("incidents", "report"),
            f"incident id '{incident_id}' was already reported with a different body; send "
            "a new id for a new incident, or the same body to get the receipt again",
            "conflict",
            incident_id,
        )

    async def create(self, report: Report, incident_id: str) -> bool:
        """Create the incident of an admitted report under the id it was given, unless
        this core has it already; True if created here."""
        async with self._lock:
            created = incident_id not in self.core.incidents
            if created:
                now = self.clock()
                effects = self.core.report(report, now, incident_id=incident_id)
                await self._execute(effects, now, decision_started=now)
        return created

    async def handle(self, messages: Sequence[Message], now: float) -> None:
        """Locations, statuses, replies and arrivals, in order, under one hold of the lock;
        what they decide is stored in one round trip (the claims of their accepts in
        another), then published.

        A volunteer's next message waits for the claim of their accept (it must see them
        taken on, or not): what was decided so far is carried out first.
        """
        async with self._lock:
            effects: list[Effect] = []
            claiming: set[str] = set()
            for msg in messages:
                if msg.volunteer_id in claiming:
                    await self._execute(effects, now)
                    effects, claiming = [], set()
                start = len(effects)
                if isinstance(msg, LocationUpdate):
                    effects += self.core.location(msg, now)
                elif isinstance(msg, StatusUpdate):
                    effects += self.core.status(msg, now)
                elif isinstance(msg, Reply):
                    effects += self.core.reply(msg, now)
                elif isinstance(msg, Arrived):
                    effects += self.core.arrived(msg, now)
                else:  # pragma: no cover - the codec returns nothing else
                    raise TypeError(f"unexpected message {msg!r}")
                claiming.update(e.volunteer_id for e in effects[start:] if isinstance(e, Claim))
            await self._execute(effects, now)

    async def moves(self, moves: Sequence[LocationUpdate], now: float) -> None:
        """A batch of moves from a location gateway (`Dispatcher.moves`), in one call
        under the lock; the gateway stored the positions."""
        async with self._lock:
            await self._execute(self.core.moves(moves, now), now)

    async def act(self, action: str, incident_id: str, by: str, **kwargs: Any) -> dict[str, Any]:
        """cancel, resolve, escalate, assign, amend or merge; returns the incident's public
        state.

        Raises UnknownIncident, UnknownVolunteer, InvalidTransition or BadMerge for the
        caller to map.
        """
        now = self.clock()
        async with self._lock:
            if action == "assign":
                effects = self.core.assign(incident_id, kwargs["volunteer_id"], now, by=by)
            elif action == "escalate":
                effects = self.core.escalate(
                    incident_id, now, by=by, reason=kwargs.get("reason", "")
                )
            elif action == "cancel":
                effects = self.core.cancel(incident_id, now, by=by)
            elif action == "resolve":
                effects = self.core.resolve(incident_id, now, by=by)
            elif action == "amend":  # protocol 1.1; kwargs["changes"]: an Amendment
                effects = self.core.amend(incident_id, kwargs["changes"], now, by=by)
            elif action == "merge":  # duplicate reports: kwargs["into"], ["other_kind"]
                effects = self.core.merge(
                    incident_id,
                    kwargs["into"],
                    now,
                    by=by,
                    other_kind=bool(kwargs.get("other_kind", False)),
                )
            else:
                raise ValueError(f"unknown operator action {action!r}")
            await self._execute(effects, now)
            incident = self.core.incidents.get(incident_id)
            if incident is None:  # another instance took it over meanwhile (fenced out)
                raise UnknownIncident(incident_id)
            return self.core.public_state(incident)

    async def tick(self, now: float) -> bool:
        """Fire the timers due at ``now``; True if they decided anything.

        With no timer due, the core only tidies (stale positions, the index's trees),
        which decides nothing to store or send: done at once, not in line for the lock.
        Every hand-off of the lock costs a turn of the loop, and behind a herd a turn
        takes 5-20 ms: the ten ticks a second queued between a report and the next one.
        """
        if not self.core.timers_due(now):
            self.core.tick(now)
            return False
        async with self._lock:
            effects = self.core.tick(now)
            if effects:
                await self._execute(effects)
        return bool(effects)

    async def restore_volunteers(self, chunks: AsyncGenerator[StoredVolunteers, None]) -> int:
        """Rebuild the volunteers from what was stored, each chunk as it is read (while
        Redis reads the next); how many. Call before `restore`.

        Into an empty core the index is bulk loaded once every volunteer is back
        (Roster.loading); after a read that failed half way, the retry puts them one at
        a time (restoring a volunteer twice comes to the same).
        """
        now = self.clock()
        count = 0
        empty = not self.core.volunteers
        with self.core.roster.loading() if empty else contextlib.nullcontext():
            async with contextlib.aclosing(chunks) as reading:
                async for chunk in reading:
                    self.core.restore_volunteers(chunk, now)
                    count += len(chunk)
        return count

    async def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Rebuild the incidents from what was stored, after the volunteers."""
        effects: list[Effect] = []
        for record in records:
            effects += self.core.restore_incident(record)
        async with self._lock:
            await self._execute(effects)

    async def adopt(
        self, incident_id: str, record: Mapping[str, Any], take: Callable[[], object]
    ) -> None:
        """Carry on with an incident another instance owned, from its stored record.

        Under the lock: any stale copy of it is forgotten, ``take()`` is called (to hold
        its ownership from then on), and it is restored as after a restart, its state
        published again.
        """
        async with self._lock:
            self.forget(incident_id)  # a stale copy from before we lost it
            take()
            effects = self.core.restore_incident(record)
            await self._execute(effects)
            incident = self.core.incidents.get(incident_id)
            if incident is not None:
                await self.publish([self.state_message(incident)])

    def forget(self, incident_id: str) -> None:
        """Drop an incident (and its alerts) from this core; no effects.

        Its volunteers stay out of this instance's index until they next report: whoever
        owns the incident now may have them alerted or committed. Synchronous, so that it
        can be called from inside a write (a fenced write that finds the incident taken).
        """
        self.core.forget_incident(incident_id)

    async def receipt(self, incident_id: str) -> dict[str, Any]:
        """Publish a stored incident's state again; its public state."""
        incident = self.core.incidents.get(incident_id)
        if incident is None:  # ended and forgotten: rebuild its public state from the record
            record = await self.retrying(lambda: self.store.incident(incident_id))
            assert record is not None, "admission said 'same' for an incident with no record"
            incident = Incident.from_record(record)
        message = self.state_message(incident)
        await self.publish([message])
        return self.core.public_state(incident)

    async def clear_state(self, incident_id: str) -> None:
        """Clear the retained state message of an incident that ended long ago."""
        await self.publish([self.wire.cleared(incident_id)])

    def state_message(self, incident: Incident) -> Publish:
        return self.wire.state(incident.id, self.core.public_state(incident))

    # ------------------------------------------------------------------ positions

    async def flush_positions(self) -> None:
        """Write the positions coalesced since the last flush, in one command."""
        if not self._positions:
            return
        started = time.perf_counter()
        batch, self._positions = self._positions, {}
        try:
            await self.store.save_positions(batch.values())
        except BackendUnavailable:
            # Keep what is newer: positions that came in meanwhile win.
            self._positions = {**batch, **self._positions}
            raise
        if self.on_positions_flushed is not None:
            self.on_positions_flushed(len(batch), time.perf_counter() - started)

    # ------------------------------------------------------------------ effects

    async def _execute(
        self,
        effects: list[Effect],
        now: float | None = None,
        decision_started: float | None = None,
        *,
        stored: bool = False,
    ) -> None:
        """Store, then publish; feed claim answers back to the core. Call under the lock.

        ``stored``: what ``effects`` store is stored already (`_decide`).

        Where the store allows it (a single engine), the claimants are taken on ahead of
        its answer and what that decided is stored with the claims, in one round trip
        (`Store.claim_and_apply`): a round trip an accept fewer. A claim refused after
        all (only a second process committing volunteers in the same Redis does that)
        is undone by the core (`Dispatcher.claim_lost`), and what it decided instead is
        carried out as well.
        """
        while effects:
            to_store, outbound, claims = await self._sort(effects, now)
            effects = []
            if claims and self.store.claims_with_writes():
                taken: list[Effect] = []
                for c in claims:
                    taken += self.core.claim_result(
                        c.volunteer_id, c.incident_id, True, self.clock()
                    )
                # A claimant refused whatever the store says (filled, ended) is released.
                pairs = [
                    (c.volunteer_id, c.incident_id)
                    for c in claims
                    if Release(c.volunteer_id, c.incident_id) not in taken
                ]
                taken_store, taken_out, _ = await self._sort(taken, now)
                won = await self.retrying(
                    functools.partial(
                        self.store.claim_and_apply, [] if stored else to_store, pairs, taken_store
                    )
                )
                lost = {pair for pair, ok in zip(pairs, won, strict=True) if not ok}
                if lost:
                    effects = [e for e in taken if not _takes_on(e, lost)]
                    for volunteer_id, incident_id in sorted(lost):
                        effects += self.core.claim_lost(volunteer_id, incident_id, self.clock())
                else:
                    to_store += taken_store
                    outbound += taken_out
                claims = []
            elif to_store and not stored:
                await self.retrying(functools.partial(self.store.apply, to_store))
            stored = False  # what the claims' answers decide is not
            for effect in to_store:
                if isinstance(effect, LogEvent):
                    self.metrics.observe_event(effect.type, effect.data)
                    self._log_event(effect)
            # Nothing for incidents another instance took over meanwhile.
            outbound = self.ownership.keep(outbound)
            if outbound:
                if decision_started is not None and any(isinstance(e, SendAlert) for e in outbound):
                    self.metrics.decision_latency.observe(self.clock() - decision_started)
                decision_started = None
                await self.publish([self.wire.message(e) for e in _last_states(outbound)])
                if self.on_alert is not None:
                    for e in outbound:
                        if isinstance(e, SendAlert):
                            self.on_alert(e)
            if claims:  # in one round trip: several accepts handled together claim together
                pairs = [(c.volunteer_id, c.incident_id) for c in claims]
                won = await self.retrying(functools.partial(self.store.claims, pairs))
                for claim, ok in zip(claims, won, strict=True):
                    effects += self.core.claim_result(
                        claim.volunteer_id, claim.incident_id, ok, self.clock()
                    )

    async def _sort(
        self, effects: list[Effect], now: float | None
    ) -> tuple[list[Effect], list[Outbound], list[Claim]]:
        """``effects`` as what to store, what to publish and what to claim; positions are
        kept for `flush_positions`, rejections published at once."""
        to_store: list[Effect] = []
        outbound: list[Outbound] = []
        claims: list[Claim] = []
        for effect in effects:
            if isinstance(effect, SendAlert | SendAssignment | StateChanged):
                outbound.append(effect)
            elif isinstance(effect, SavePosition | ForgetPosition):
                self._positions[effect.volunteer_id] = effect
            elif isinstance(effect, Claim):
                claims.append(effect)
            elif isinstance(effect, Reject):
                await self.reject(effect.error, now if now is not None else self.clock())
            else:
                to_store.append(effect)
        return to_store, outbound, claims

    async def publish(self, publishes: list[Publish]) -> None:
        """Hand messages to the broker, in order, without waiting for each (`Bus.send`)."""
        for p in publishes:
            try:
                self.bus.send(p)
            except BackendUnavailable as exc:
                # The broker is away. Retained states are re-sent on reconnect; an alert
                # that never left is covered by the next wave and the expiry timers.
                self.metrics.backend_errors.labels(backend="mqtt").inc()
                log.warning("publish to %s failed: %s", p.topic, exc)

    async def retrying(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """``operation()`` until Redis answers it (capped back-off); marks Redis down."""
        delay = 0.05
        while True:
            try:
                with self.while_waiting():
                    return await operation()
            except BackendUnavailable as exc:
                self.redis_ok = False
                self.metrics.backend_errors.labels(backend="redis").inc()
                log.warning("Redis write failed (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                # Capped low: once Redis is back, the service should be too (within 0.5 s).
                delay = min(delay * 2, 0.5)

    async def reject(self, err: BadMessage, now: float) -> None:
        """Count, log and publish a rejection (unless another instance answers it)."""
        if not await self.ownership.should_reject(err):
            return  # another instance answers it, or already did
        self.metrics.rejected.labels(reason=err.code).inc()
        # Reasons echo what was sent: numbers are masked so no coordinate reaches a log.
        reason = mask_numbers(err.reason)
        log.info("rejected message on %s: %s (%s)", err.topic, err.code, reason)
        await self.publish(
            [Publish(self.codec.topic("rejected"), self.codec.rejected_payload(err, now), qos=1)]
        )

    def _log_event(self, event: LogEvent) -> None:
        # One line per state change, ids only: never coordinates. Built only when it is
        # logged: a report's alerts and answers make many, and building them took 1-2 %
        # of the engine at the design load when nothing was logged (py-spy).
        if not log.isEnabledFor(logging.INFO):
            return
        data = event.data
        log.info(
            "incident=%s event=%s volunteer=%s %s",
            event.incident_id,
            event.type,
            data.get("volunteer_id", "-"),
            " ".join(f"{k}={v}" for k, v in _loggable(data.items())),
        )


class Alone:
    """The ports (dispatch/ports.py) of an engine that works alone: every incident is its own."""

    batches = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # Intake
    async def admit(self, report: Report, payload: bytes, now: float) -> None:
        await self.engine.report(report, now)

    async def submit(
        self, report: Report, payload: bytes, now: float
    ) -> tuple[ReportOutcome, str | None]:
        return await self.engine.report(report, now, via_mqtt=False), report.id

    # Ownership
    def begin(self, topic: str, payload: bytes) -> None:
        pass

    def keep(self, outbound: list[Outbound]) -> list[Outbound]:
        return outbound

    async def should_reject(self, err: BadMessage) -> bool:
        return True

    async def confirmed(self, incident_ids: Sequence[str]) -> list[str]:
        return list(incident_ids)

    def to_restore(self, records: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        return records

    async def run(self) -> None:
        return

    # IncidentReads
    def held(self) -> Mapping[str, Incident]:
        return self.engine.core.incidents

    async def open_incidents(self) -> list[Incident]:
        return self.engine.core.open_incidents()

    async def incident(self, incident_id: str) -> Incident | None:
        incident = self.engine.core.incidents.get(incident_id)
        if incident is None:
            record = await self.engine.store.incident(incident_id)
            incident = None if record is None else Incident.from_record(record)
        return incident

    # Operators
    async def operator(
        self, action: str, incident_id: str, by: str, **kwargs: Any
    ) -> dict[str, Any]:
        return await self.engine.act(action, incident_id, by, **kwargs)


def mask_numbers(text: str) -> str:
    """``text`` with every number that has a fraction or an exponent replaced by "#"."""
    return _NUMBER.sub("#", text)


def _takes_on(effect: Effect, lost: set[tuple[str, str]]) -> bool:
    """Whether ``effect`` is the "go" or the ``assigned`` event of a claimant whose claim
    was lost (`Engine._execute`): never sent, never logged."""
    if isinstance(effect, SendAssignment):
        return (effect.volunteer_id, effect.incident_id) in lost and effect.action is Action.GO
    if isinstance(effect, LogEvent) and effect.type is EventType.ASSIGNED:
        return (str(effect.data.get("volunteer_id")), effect.incident_id) in lost
    return False


def _last_states(outbound: list[Outbound]) -> list[Outbound]:
    """``outbound`` with only the last state change of each incident: within one batch
    only the last retained state matters (a clear included), and it keeps its place."""
    last = {e.incident_id: i for i, e in enumerate(outbound) if isinstance(e, StateChanged)}
    return [
        e
        for i, e in enumerate(outbound)
        if not isinstance(e, StateChanged) or last[e.incident_id] == i
    ]


def _loggable(items: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    # Free text (an operator's name, an escalation reason) is escaped: a newline in it
    # must not forge a log line of its own.
    return (
        (k, _one_line(v) if isinstance(v, str) else v)
        for k, v in items
        if k not in ("volunteer_id", "lat", "lon")
    )


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
