"""A run of volunteers' messages handled together (Engine.handle): the accepts claim in
one round trip, and a volunteer's next message waits for their accept's claim."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from dispatch.codec import Codec
from dispatch.config import load_config
from dispatch.dispatcher import Dispatcher
from dispatch.effects import EventType, LogEvent
from dispatch.engine import Engine
from dispatch.errors import BackendUnavailable
from dispatch.metrics import Metrics
from dispatch.model import Answer, Arrived, Duty, Kind, Mode, Reply, Report, StatusUpdate
from dispatch.store import Store
from dispatch.wire import Publish
from geo.area import ServiceArea

SCENE = (30.2591, 120.1698)
T0 = 1_800_000_000.0


class Outbox:
    """The bus's side the engine uses (`send`), recording what it hands over."""

    def __init__(self) -> None:
        self.sent: list[Publish] = []

    def send(self, message: Publish) -> None:
        self.sent.append(message)


def make_engine(redis_url: str, prefix: str) -> tuple[Engine, Outbox, list[list[Any]]]:
    config = load_config(env={})
    area = ServiceArea.from_geojson(config.area_geojson)
    core = Dispatcher(
        area=area,
        codec=Codec(root="runs", in_area=area.contains),
        policy=config.policy,
        travel=config.travel,
        kinds=config.kinds,
        rng=random.Random(1),
    )
    store = Store.from_url(redis_url, prefix=prefix)
    outbox = Outbox()
    engine = Engine(core, store, outbox, Codec(root="runs"), Metrics(), clock=lambda: T0)  # type: ignore[arg-type]
    trips: list[list[Any]] = []
    claims = store.claims

    async def counted(pairs: Any) -> list[bool]:
        trips.append(list(pairs))
        return await claims(pairs)

    store.claims = counted  # type: ignore[method-assign]
    claim_and_apply = store.claim_and_apply

    async def counted_with_writes(before: Any, pairs: Any, if_won: Any) -> list[bool]:
        trips.append(list(pairs))
        return await claim_and_apply(before, pairs, if_won)

    store.claim_and_apply = counted_with_writes  # type: ignore[method-assign]
    return engine, outbox, trips


async def alerted(engine: Engine, volunteers: list[str], needed: int) -> dict[str, str]:
    """Volunteers on duty a few metres from the scene, a report; their alert ids."""
    for i, vid in enumerate(volunteers):
        lat, lon = SCENE[0] + 0.0002 * (i + 1), SCENE[1]
        status = StatusUpdate(vid, Duty.AVAILABLE, ("first_aid",), Mode.WALK, lat, lon)
        await engine.handle([status], T0)
    await engine.report(Report(Kind.MEDICAL, *SCENE, id="inc-runs", responders=needed), T0)
    alerts = list(engine.core.incidents["inc-runs"].alerts.values())
    return {a.volunteer_id: a.alert_id for a in alerts}


async def test_an_accept_then_i_m_here_in_one_run_is_taken_on_then_arrives(
    redis_url: str,
) -> None:
    engine, _, trips = make_engine(redis_url, "runs-a:")
    alert_ids = await alerted(engine, ["va"], 1)
    await engine.handle(
        [Reply("va", alert_ids["va"], Answer.ACCEPT), Arrived("va", "inc-runs")], T0 + 5
    )
    incident = engine.core.incidents["inc-runs"]
    (responder,) = incident.responders
    assert responder.volunteer_id == "va"
    assert responder.arrived_at is not None  # the arrival saw va taken on
    assert trips == [[("va", "inc-runs")]]
    await engine.store.close()


async def test_the_accepts_of_one_run_claim_in_one_round_trip(redis_url: str) -> None:
    engine, outbox, trips = make_engine(redis_url, "runs-b:")
    alert_ids = await alerted(engine, ["va", "vb", "vc"], 2)
    assert len(alert_ids) == 3
    replies = [Reply(v, alert_ids[v], Answer.ACCEPT) for v in ("va", "vb", "vc")]
    await engine.handle(replies, T0 + 5)
    assert trips == [[("va", "inc-runs"), ("vb", "inc-runs"), ("vc", "inc-runs")]]
    incident = engine.core.incidents["inc-runs"]
    taken = [r.volunteer_id for r in incident.responders]
    assert "va" in taken
    assert "vb" in taken
    goes = [p.topic for p in outbox.sent if p.topic.endswith("/assignment")]
    assert {t.split("/")[2] for t in goes} >= {"va", "vb"}
    # Each volunteer is committed to it in Redis, as one claim at a time would leave it.
    for vid in taken:
        assert await engine.store.claimed_by(vid) == "inc-runs"
    await engine.store.close()


async def test_a_run_of_reports_is_admitted_and_stored_in_one_round_trip_each(
    redis_url: str,
) -> None:
    engine, outbox, _ = make_engine(redis_url, "runs-r:")
    stored = Report(Kind.FALL, *SCENE, id="inc-old", fingerprint="fp-old")
    await engine.report(stored, T0)  # nobody on duty yet
    far = (SCENE[0] - 0.02, SCENE[1] + 0.02)  # 2.9 km away: neither a duplicate nor in reach
    for vid, (lat, lon) in {"r1": SCENE, "r2": far}.items():
        status = StatusUpdate(vid, Duty.AVAILABLE, ("first_aid",), Mode.WALK, lat + 0.0003, lon)
        await engine.handle([status], T0)
    trips: dict[str, int] = {"admit_all": 0, "apply": 0}
    for name in trips:
        original = getattr(engine.store, name)

        def counting(*args: Any, _name: str = name, _original: Any = original) -> Any:
            trips[_name] += 1
            return _original(*args)

        setattr(engine.store, name, counting)
    outbox.sent.clear()
    await engine.reports(
        [
            Report(Kind.MEDICAL, *SCENE, id="inc-a", fingerprint="fp-a"),
            Report(Kind.FIRE, *far, id="inc-b", fingerprint="fp-b"),
            Report(Kind.FIRE, *far, id="inc-b", fingerprint="fp-b"),  # sent twice
            Report(Kind.FALL, *SCENE, id="inc-old", fingerprint="fp-old"),  # a retry
            Report(Kind.FALL, *SCENE, id="inc-old", fingerprint="fp-other"),  # reused id
        ],
        T0 + 1,
    )
    assert trips == {"admit_all": 1, "apply": 1}
    assert {"inc-a", "inc-b", "inc-old"} <= set(engine.core.incidents)
    states = [p for p in outbox.sent if p.topic.endswith("/state")]
    assert sorted(p.topic.split("/")[-2] for p in states) == ["inc-a", "inc-b", "inc-old"]
    alerts = [orjson.loads(p.payload) for p in outbox.sent if p.topic.endswith("/alert")]
    alerted_vids = [p.topic.split("/")[-2] for p in outbox.sent if p.topic.endswith("/alert")]
    assert {(a["incident_id"], p) for a, p in zip(alerts, alerted_vids, strict=True)} == {
        ("inc-a", "r1"),
        ("inc-b", "r2"),
    }
    (rejected,) = [p for p in outbox.sent if p.topic.endswith("/rejected")]
    assert b"inc-old" in rejected.payload
    assert b"conflict" in rejected.payload
    assert await engine.store.incident("inc-b") is not None
    await engine.store.close()


def count_calls(store: Store, *names: str) -> dict[str, int]:
    """How often each of the store's ``names`` is called from now on."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(store, name)

        def counting(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        setattr(store, name, counting)
    return calls


def on_duty(engine: Engine, count: int) -> list[StatusUpdate]:
    return [
        StatusUpdate(
            f"d{i}",
            Duty.AVAILABLE,
            ("first_aid",),
            Mode.WALK,
            SCENE[0] + 0.0002 * (i + 1),
            SCENE[1],
        )
        for i in range(count)
    ]


async def test_new_reports_are_decided_then_admitted_and_stored_in_one_round_trip(
    redis_url: str,
) -> None:
    engine, outbox, _ = make_engine(redis_url, "runs-n:")
    await engine.handle(on_duty(engine, 12), T0)
    calls = count_calls(engine.store, "admit", "admit_all", "apply", "record_reports")
    far = (SCENE[0] - 0.02, SCENE[1] + 0.02)  # not a duplicate of the others
    await engine.reports(
        [
            Report(Kind.MEDICAL, *SCENE, id="n-1", fingerprint="fp-1"),
            Report(Kind.FIRE, *far, fingerprint="fp-2"),  # no id: always new
            Report(Kind.FALL, *SCENE, id="n-3", fingerprint="fp-3"),
        ],
        T0 + 1,
    )
    single = await engine.report(Report(Kind.FALL, *far, id="n-4", fingerprint="fp-4"), T0 + 2)
    assert single.status == "created"
    assert calls == {"admit": 0, "admit_all": 0, "apply": 0, "record_reports": 2}
    assert len(engine.core.incidents) == 4
    for incident_id, incident in engine.core.incidents.items():
        record = await engine.store.incident(incident_id)
        assert record is not None
        assert record["state"] == incident.state.value
        logged = await engine.store.incident_events(incident_id)
        assert [e.type for e in logged][:1] == ["reported"]
    # Stored with their admission: a copy is now a duplicate, another body a conflict.
    assert await engine.store.admit("n-1", "fp-1") == "same"
    assert await engine.store.admit("n-3", "fp-other") == "conflict"
    assert len([p for p in outbox.sent if p.topic.endswith("/alert")]) > 4
    await engine.store.close()


async def test_a_report_found_not_new_is_taken_back_before_anything_is_announced(
    redis_url: str,
) -> None:
    """A report this engine does not hold but the store has seen: stored long ago (ended
    and forgotten), under another id's body, or being stored by another engine. Decided
    at once, it is taken back unannounced, and its volunteers are free again."""
    before, _, _ = make_engine(redis_url, "runs-k:")  # another engine, or this one's past
    await before.report(Report(Kind.FALL, *SCENE, id="k-same", fingerprint="fp-s"), T0)
    await before.report(Report(Kind.FALL, *SCENE, id="k-other", fingerprint="fp-o"), T0)
    assert await before.store.admit("k-pending", "fp-p") == "new"  # being stored elsewhere
    stored = {i: await before.store.incident(i) for i in ("k-same", "k-other")}
    logged = {i: len(await before.store.incident_events(i)) for i in ("k-same", "k-other")}

    engine, outbox, _ = make_engine(redis_url, "runs-k:")
    await engine.handle(on_duty(engine, 60), T0)  # more than four waves
    assert engine.core.available == 60
    calls = count_calls(engine.store, "admit_all", "record_reports")
    outbox.sent.clear()
    await engine.reports(
        [
            Report(Kind.FALL, *SCENE, id="k-same", fingerprint="fp-s"),  # a copy: receipt
            Report(Kind.FALL, *SCENE, id="k-other", fingerprint="fp-x"),  # reused id: conflict
            Report(Kind.FALL, *SCENE, id="k-pending", fingerprint="fp-p"),  # dropped
            Report(Kind.MEDICAL, *SCENE, id="k-new", fingerprint="fp-n"),
        ],
        T0 + 60,
    )
    assert calls == {"admit_all": 0, "record_reports": 1}
    assert set(engine.core.incidents) == {"k-new"}
    new_alerts = engine.core.incidents["k-new"].alerts
    assert new_alerts
    assert engine.core.available == 60 - len(new_alerts)
    assert set(engine.core.alerts) == set(new_alerts)
    alerted_for = {
        orjson.loads(p.payload)["incident_id"] for p in outbox.sent if "/alert" in p.topic
    }
    assert alerted_for == {"k-new"}
    states = sorted(p.topic.split("/")[-2] for p in outbox.sent if p.topic.endswith("/state"))
    assert states == ["k-new", "k-same"]  # the copy's receipt, from its stored record
    (rejected,) = [orjson.loads(p.payload) for p in outbox.sent if p.topic.endswith("/rejected")]
    assert (rejected["id"], rejected["code"]) == ("k-other", "conflict")
    # Nothing of what was taken back reached Redis.
    for incident_id, record in stored.items():
        assert await engine.store.incident(incident_id) == record
        assert len(await engine.store.incident_events(incident_id)) == logged[incident_id]
    assert await engine.store.incident("k-pending") is None
    counted = {
        outcome: engine.metrics.incidents.labels(kind=kind, outcome=outcome)._value.get()
        for kind, outcome in (("fall", "duplicate"), ("fall", "conflict"), ("medical", "created"))
    }
    assert counted == {"duplicate": 2, "conflict": 1, "created": 1}
    await before.store.close()
    await engine.store.close()


async def test_a_decision_whose_answer_was_lost_is_stored_once_and_announced_once(
    redis_url: str,
) -> None:
    """Redis ran the script but the answer never came back (the connection dropped): the
    retry finds the report stored by itself and is told "new" again, not "same"."""
    engine, outbox, _ = make_engine(redis_url, "runs-l:")
    await engine.handle(on_duty(engine, 3), T0)
    record_reports = engine.store.record_reports
    lost: list[str] = []

    async def answer_lost_once(*args: Any) -> Any:
        verdicts = await record_reports(*args)
        if not lost:
            lost.append("lost")
            raise BackendUnavailable("redis", "Connection reset by peer")
        return verdicts

    engine.store.record_reports = answer_lost_once  # type: ignore[method-assign]
    outcome = await engine.report(Report(Kind.MEDICAL, *SCENE, id="l-1", fingerprint="fp"), T0)
    assert lost
    assert outcome.status == "created"
    incident = engine.core.incidents["l-1"]
    alerts = [p for p in outbox.sent if p.topic.endswith("/alert")]
    assert len(alerts) == len(incident.alerts) == 3
    events = await engine.store.incident_events("l-1")
    assert [e.type for e in events].count("reported") == 1
    assert len([e for e in events if e.type == "alerted"]) == 3
    await engine.store.close()


def sent_to(outbox: Outbox, volunteer_id: str, kind: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(p.payload)
        for p in outbox.sent
        if p.topic.endswith(f"/{volunteer_id}/{kind}") and p.payload
    ]


async def test_an_accept_is_claimed_and_taken_on_in_one_round_trip(redis_url: str) -> None:
    engine, outbox, _ = make_engine(redis_url, "runs-c:")
    alert_ids = await alerted(engine, ["va", "vb", "vc"], 1)
    calls = count_calls(engine.store, "claims", "apply", "claim_and_apply")
    await engine.handle([Reply("va", alert_ids["va"], Answer.ACCEPT)], T0 + 5)
    assert calls == {"claims": 0, "apply": 0, "claim_and_apply": 1}
    assert [a["action"] for a in sent_to(outbox, "va", "assignment")] == ["go"]
    assert await engine.store.claimed_by("va") == "inc-runs"
    logged = [
        (e.type, e.data.get("volunteer_id")) for e in await engine.store.incident_events("inc-runs")
    ]
    assert ("assigned", "va") in logged
    record = await engine.store.incident("inc-runs")
    assert record is not None
    assert [r["volunteer_id"] for r in record["responders"]] == ["va"]
    assert record["state"] == "assigned"
    await engine.store.close()


async def test_a_claim_refused_by_the_store_is_undone_before_anything_is_sent(
    redis_url: str,
) -> None:
    """Another process committed vb to another incident behind this engine's back: the
    core took vb on ahead of the store's answer, the store refused the claim and wrote
    nothing of it, and vb is stood down ("committed elsewhere") and replaced; va, whose
    accept came in the same run, is taken on."""
    engine, outbox, trips = make_engine(redis_url, "runs-x:")
    for i in range(8):  # some to replace vb with
        lat, lon = SCENE[0] + 0.0004 * (i + 1), SCENE[1] + 0.0004
        status = StatusUpdate(f"w{i}", Duty.AVAILABLE, ("first_aid",), Mode.WALK, lat, lon)
        await engine.handle([status], T0)
    alert_ids = await alerted(engine, ["va", "vb"], 2)
    assert {"va", "vb"} <= set(alert_ids)
    await engine.store.redis.set("runs-x:claim:vb", "inc-elsewhere")
    outbox.sent.clear()
    await engine.handle(
        [Reply("va", alert_ids["va"], Answer.ACCEPT), Reply("vb", alert_ids["vb"], Answer.ACCEPT)],
        T0 + 5,
    )
    assert trips == [[("va", "inc-runs"), ("vb", "inc-runs")]]
    assert [a["action"] for a in sent_to(outbox, "va", "assignment")] == ["go"]
    (stand_down,) = sent_to(outbox, "vb", "assignment")
    assert stand_down["action"] == "stand_down"
    assert "another incident" in stand_down["reason"]
    assert await engine.store.claimed_by("va") == "inc-runs"
    assert await engine.store.claimed_by("vb") == "inc-elsewhere"
    incident = engine.core.incidents["inc-runs"]
    assert [r.volunteer_id for r in incident.responders] == ["va"]
    assert engine.core.volunteers["vb"].engaged is None
    assert "vb" not in engine.core.index  # committed elsewhere: out until they report
    logged = [
        (e.type, e.data.get("volunteer_id")) for e in await engine.store.incident_events("inc-runs")
    ]
    assert ("assigned", "va") in logged
    assert ("assigned", "vb") not in logged
    assert ("stood_down", "vb") in logged
    record = await engine.store.incident("inc-runs")
    assert record is not None
    assert [r["volunteer_id"] for r in record["responders"]] == ["va"]
    # vb's place is sought again: a new wave went out to others.
    replacements = {p.topic.split("/")[-2] for p in outbox.sent if p.topic.endswith("/alert")}
    assert replacements
    assert replacements.isdisjoint({"va", "vb"})
    await engine.store.close()


async def test_the_service_hands_a_run_of_reports_over_together() -> None:
    from dispatch.service import Service

    service = Service(load_config(env={"DISPATCH_TOPIC_ROOT": "runs"}))
    handed: list[tuple[str, list[str | None]]] = []

    async def reports(run: list[Report], now: float) -> None:
        handed.append(("run", [r.id for r in run]))

    async def report(one: Report, now: float, **_: Any) -> Any:
        handed.append(("one", [one.id]))

    rejected: list[str] = []

    async def reject(error: Any, now: float) -> None:
        rejected.append(error.code)

    service.engine.reports = reports  # type: ignore[method-assign]
    service.engine.report = report  # type: ignore[method-assign]
    service.engine.reject = reject  # type: ignore[method-assign]

    def body(iid: str) -> bytes:
        return orjson.dumps({"id": iid, "kind": "fall", "lat": SCENE[0], "lon": SCENE[1]})

    topic = "runs/incidents/report"
    await service.on_messages(
        [(topic, body("i1")), (topic, b"{not json"), (topic, body("i2")), (topic, body("i3"))]
    )
    await service.on_messages([(topic, body("i4"))])
    assert handed == [("run", ["i1", "i2", "i3"]), ("one", ["i4"])]
    assert rejected == ["not_json"]


async def test_reports_interleaved_with_batches_of_moves_are_one_run() -> None:
    """Behind a backlog the reports and the gateways' batches jump it together, in
    arrival order: the batches are merged into the moves waiting and the reports still
    go to the engine as one run (two Redis round trips for all, not two each)."""
    from dispatch.moves import encode_moves
    from dispatch.service import Service

    service = Service(
        load_config(env={"DISPATCH_TOPIC_ROOT": "runs", "DISPATCH_GATEWAY_ENABLED": "true"})
    )
    handed: list[list[str | None]] = []

    async def reports(run: list[Report], now: float) -> None:
        assert set(service._moves) == {"m1", "m2"}  # merged before the run is handed over
        handed.append([r.id for r in run])

    service.engine.reports = reports  # type: ignore[method-assign]

    def body(iid: str) -> bytes:
        return orjson.dumps({"id": iid, "kind": "fall", "lat": SCENE[0], "lon": SCENE[1]})

    def moves(vid: str) -> bytes:
        return encode_moves([(vid, SCENE[0], SCENE[1], None, time.time())])

    report, batch = "runs/incidents/report", "runs/internal/moves"
    await service.on_messages(
        [
            (report, body("i1")),
            (batch, moves("m1")),
            (report, body("i2")),
            (batch, moves("m2")),
            (report, body("i3")),
        ]
    )
    assert handed == [["i1", "i2", "i3"]]


async def test_a_tick_with_no_timer_due_does_not_queue_for_the_lock(redis_url: str) -> None:
    """Behind a herd every hand-off of the lock costs a turn of the loop: a tick that
    only tidies must not take a place in line between two reports."""
    engine, _, _ = make_engine(redis_url, "runs-t:")
    await engine.handle([StatusUpdate("vt", Duty.AVAILABLE, ("first_aid",), Mode.WALK, *SCENE)], T0)
    stale = T0 + engine.core.roster.location_ttl_s + 1
    assert not engine.core.timers_due(stale)
    async with engine._lock:  # another event is waiting for Redis
        assert await asyncio.wait_for(engine.tick(stale), 1) is False
        assert engine.core.volunteers["vt"].lat is None  # its stale position is forgotten
    # A timer due: the tick decides something, so it waits its turn.
    await engine.report(Report(Kind.MEDICAL, *SCENE, id="inc-t"), T0)
    later = T0 + 3600
    assert engine.core.timers_due(later)
    async with engine._lock:
        waiting = asyncio.create_task(engine.tick(later))
        await asyncio.sleep(0.05)
        assert not waiting.done()
    assert await waiting is True
    await engine.store.close()


async def test_every_redis_wait_of_the_engine_is_announced(redis_url: str) -> None:
    """`Engine.while_waiting` is entered around each Redis call the engine waits on (the
    service holds the inbound bus's reading meanwhile), and left when it is answered."""
    engine, _, _ = make_engine(redis_url, "runs-w:")
    spans: list[str] = []

    @contextlib.contextmanager
    def waiting() -> Iterator[None]:
        spans.append("enter")
        yield
        spans.append("leave")

    engine.while_waiting = waiting
    await engine.report(Report(Kind.MEDICAL, *SCENE, id="inc-w"), T0)  # admitted and stored
    assert spans == ["enter", "leave"]
    await engine.report(Report(Kind.MEDICAL, *SCENE, id="inc-w"), T0)  # a copy: admitted first
    assert spans == ["enter", "leave"] * 2
    await engine.store.close()


async def test_an_event_line_is_built_only_when_it_is_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every event of a report's alerts and answers makes a log line: at WARNING nothing
    of it is built (1-2 % of the engine at the design load); at INFO it is written."""
    engine, _, _ = make_engine(redis_url, "lines:")
    built: list[str] = []

    class Noted:
        """A value in an event's data that notes when its line is built."""

        def __format__(self, spec: str) -> str:
            built.append(spec)
            return "noted"

    event = LogEvent("inc-lines", EventType.ESCALATED, T0, {"reason": Noted()})
    caplog.set_level(logging.WARNING, logger="dispatch")
    engine._log_event(event)
    assert built == []
    assert "inc-lines" not in caplog.text
    caplog.set_level(logging.INFO, logger="dispatch")
    engine._log_event(event)
    assert built == [""]
    assert "incident=inc-lines event=escalated volunteer=- reason=noted" in caplog.text
    await engine.store.close()
