"""Several engine instances on one broker and one Redis (``[cluster] enabled``).

- Three instances share the work: every report becomes one incident, handled by one
  instance (one ``reported`` and at most one ``alerting`` per incident in the event log,
  every alert published once), and each instance takes a share.
- A work entry left pending by an instance that died is taken by another within 10 s.
- One instance killed with SIGKILL mid-load: its incidents are adopted within 10 s, no
  acknowledged incident is lost, nobody is committed twice.
- An instance paused (SIGSTOP) past its lease and woken (SIGCONT) cannot commit: the
  other instance adopted its incident, answers the volunteer, and the woken one's claim
  is refused; the volunteer gets one ``go``, the log one ``assigned``.
- The HTTP API is one system: a report posted to one instance is listed and readable at
  the other, which also carries out operator actions on it through its owner (one
  ``cancelled`` event, one stand-down); an unknown id is a 404 at both; once the owner
  is dead, the other adopts the incident within the lease and acts on it itself.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from e2e_harness import Engine, Field, offset, uid
from loadgen import CENTER, Load, audit, check_promises, percentile
from servers import next_redis_db

pytestmark = pytest.mark.timeout(240)

LEASE_S = 5.0  # the defaults: what the 10 s promise is made with
CLUSTER_ENV = {
    "DISPATCH_CLUSTER_ENABLED": "true",
    "DISPATCH_CLUSTER_LEASE_S": str(LEASE_S),
    "DISPATCH_CLUSTER_RECLAIM_IDLE_S": "5",
    "DISPATCH_BACKENDS_MQTT_KEEPALIVE_S": "2",
    "DISPATCH_BACKENDS_REDIS_TIMEOUT_S": "2",
    "DISPATCH_POLICY_WAVE_TIMEOUT_S": "20",
}
TAKEOVER_BUDGET_S = 10.0


@pytest.fixture
def cluster(
    mqtt_url: str, redis_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., list[Engine]]]:
    """start(n, env=...) -> n started engines on one Redis database and topic root."""
    made: list[Engine] = []

    def start(n: int, env: dict[str, str] | None = None) -> list[Engine]:
        redis_url = f"{redis_server}/{next_redis_db()}"
        with redis.Redis.from_url(redis_url) as r:
            r.flushdb()
        root = uid("cl")
        for i in range(n):
            made.append(
                Engine(
                    mqtt_url=mqtt_url,
                    redis_url=redis_url,
                    topic_root=root,
                    log_path=tmp_path / f"e{i + 1}.log",
                    env={**CLUSTER_ENV, **(env or {}), "DISPATCH_INSTANCE": f"e{i + 1}"},
                )
            )
        for engine in made:
            engine.start()
        return list(made)

    yield start
    for engine in made:
        with contextlib.suppress(Exception):
            if engine.proc is not None and engine.proc.poll() is None:
                engine.proc.send_signal(signal.SIGCONT)
        engine.ensure_dead()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for engine in made:
            print(f"\n----- {engine.log_path.name} (tail)\n{engine.log_tail(60)}")


def created_by(engine: Engine) -> float:
    return sum(
        v
        for (name, labels), v in engine.metrics().items()
        if name == "dispatch_incidents_total" and ("outcome", "created") in labels
    )


def owners(redis_url: str, root: str, ids: list[str]) -> dict[str, str | None]:
    with redis.Redis.from_url(redis_url) as r:
        values = r.mget([f"{root}:owner:{i}" for i in ids]) if ids else []
    return {i: (v.decode().split(":")[0] if v else None) for i, v in zip(ids, values, strict=True)}


def settle(load: Load, engines: list[Engine]) -> None:
    load.paused.set()
    missing = load.wait_receipts(30)
    assert not missing, f"{len(missing)} reports never got a receipt: {missing[:10]}"
    load.stop()
    with load.lock:
        ids = sorted(load.sent)
    load.end_all(ids)


def test_three_instances_share_the_work_each_incident_once(
    cluster: Callable[..., list[Engine]], mqtt_url: str
) -> None:
    engines = cluster(3)
    root, redis_url = engines[0].topic_root, engines[0].redis_url
    bases = [e.base for e in engines]
    load = Load(mqtt_url, root, lambda: bases, rate=5.0, volunteers=40)
    try:
        load.start()
        time.sleep(10.0)
        settle(load, engines)
    finally:
        load.stop()
    found = audit(redis_url, f"{root}:")
    check_promises(load, found, bases)
    assert not found.claims, f"claims left after every incident ended: {found.claims}"
    shares = [created_by(e) for e in engines]
    print(f"\n[cluster x3] created per instance {shares}, reports {load.stats.sent}")
    assert sum(shares) == len(load.sent), (shares, len(load.sent))
    assert all(share > 0 for share in shares), f"an instance took no work: {shares}"
    alerting = Counter(
        f[b"incident_id"].decode()
        for _, f in found.events
        if f[b"type"] == b"state" and json.loads(f[b"data"]).get("to") == "alerting"
    )
    assert max(alerting.values()) == 1, [i for i, n in alerting.items() if n > 1]
    alerted = Counter(
        f[b"incident_id"].decode() for _, f in found.events if f[b"type"] == b"alerted"
    )
    with load.lock:
        published = dict(load.alerts_by_incident)
    twice = {i: (published.get(i), n) for i, n in alerted.items() if published.get(i) != n}
    assert not twice, f"alerts published != alerts logged (published, logged): {twice}"
    with load.lock:
        rejected = list(load.rejected)
    assert not rejected, f"rejections under valid load: {rejected[:5]}"

    # What every instance would reject is rejected once, by one of them: bad bytes, an
    # alert nobody sent, an arrival at another instance's incident by a stranger.
    field = Field(mqtt_url, root)
    try:
        vid = uid("rj")
        field.phone.publish(field.t("volunteers", vid, "status"), b"not json")
        field.reply(vid, "a-no-such-alert", "accept")
        field.arrived(vid, next(iter(published)))
        field.sync()
        time.sleep(1.0)  # a second copy would come from another instance, in its own time
        field.sync()
        topics = Counter(m.json["topic"] for m in field.rejected.all())
        for leaf in ("status", "reply", "arrived"):
            assert topics[field.t("volunteers", vid, leaf)] == 1, (leaf, topics)
    finally:
        field.close()


def test_pending_work_of_a_dead_instance_is_reclaimed(
    cluster: Callable[..., list[Engine]], mqtt_url: str
) -> None:
    """A report taken from the work stream by an instance that then died (here a
    consumer that never acknowledges) is handled by a live one within 10 s."""
    engines = cluster(2)
    root, redis_url = engines[0].topic_root, engines[0].redis_url
    field = Field(mqtt_url, root)
    try:
        iid = uid("orphan")
        body = {"id": iid, "kind": "fire", "lat": CENTER[0], "lon": CENTER[1]}
        with redis.Redis.from_url(redis_url) as r, r.pipeline(transaction=True) as pipe:
            # Added and delivered to "ghost" in one step, so no live instance sees it.
            pipe.xadd(
                f"{root}:work", {"id": iid, "payload": json.dumps(body), "at": repr(time.time())}
            )
            pipe.xreadgroup("engines", "ghost", {f"{root}:work": ">"}, count=1)
            _, delivered = pipe.execute()
        assert delivered, "the entry was not delivered to the ghost consumer"
        assert delivered[0][1][0][1][b"id"] == iid.encode(), delivered
        started = time.monotonic()
        field.wait_state(iid, lambda s: s.get("id") == iid, timeout=TAKEOVER_BUDGET_S)
        took = time.monotonic() - started
        print(f"\n[cluster] pending entry of a dead consumer handled after {took:.2f}s")
        assert took < TAKEOVER_BUDGET_S
        with redis.Redis.from_url(redis_url) as r:
            assert r.xpending(f"{root}:work", "engines")["pending"] == 0
    finally:
        field.close()


def test_kill9_one_instance_mid_load(cluster: Callable[..., list[Engine]], mqtt_url: str) -> None:
    engines = cluster(3)
    root, redis_url = engines[0].topic_root, engines[0].redis_url
    alive = list(engines)
    load = Load(
        mqtt_url, root, lambda: [e.base for e in alive], rate=5.0, volunteers=40,
        resolve_after_s=3.0,
    )  # fmt: skip
    try:
        load.start()
        time.sleep(5.0)
        victim = engines[1]
        with redis.Redis.from_url(redis_url) as r:
            open_ids = [i.decode() for i in r.zrange(f"{root}:incidents:open", 0, -1)]
        held = [i for i, o in owners(redis_url, root, open_ids).items() if o == "e2"]
        victim.kill9()
        killed = time.monotonic()
        alive.remove(victim)
        assert held, "the victim owned no open incident when it died: nothing to show"
        while True:
            now_owners = owners(redis_url, root, held)
            orphans = [i for i, o in now_owners.items() if o in (None, "e2")]
            with redis.Redis.from_url(redis_url) as r:
                still_open = {i.decode() for i in r.zrange(f"{root}:incidents:open", 0, -1)}
            orphans = [i for i in orphans if i in still_open]
            if not orphans:
                break
            assert time.monotonic() - killed < TAKEOVER_BUDGET_S, f"not adopted: {orphans}"
            time.sleep(0.1)
        adopted_after = time.monotonic() - killed
        time.sleep(3.0)
        settle(load, alive)
    finally:
        load.stop()
    found = audit(redis_url, f"{root}:")
    check_promises(load, found, [e.base for e in alive])
    s = load.stats
    print(
        f"\n[cluster kill -9] {len(held)} incidents of the dead instance adopted after "
        f"{adopted_after:.2f}s; reports {s.sent}, receipts {s.receipts}, receipt p99 "
        f"{percentile(s.receipt_latency_s, 0.99):.2f}s"
    )


def test_paused_instance_cannot_commit_after_its_lease(
    cluster: Callable[..., list[Engine]], mqtt_url: str
) -> None:
    engines = cluster(2)
    root, redis_url = engines[0].topic_root, engines[0].redis_url
    field = Field(mqtt_url, root)
    try:
        vid = uid("pv")
        field.status(vid, lat=CENTER[0], lon=CENTER[1], skills=["first_aid"])
        lat, lon = offset(*CENTER, 120, 45)
        iid = uid("paused")
        field.sync()
        field.report({"id": iid, "kind": "medical", "lat": lat, "lon": lon})
        alert = field.wait_alert(vid, iid)
        owner_name = owners(redis_url, root, [iid])[iid]
        assert owner_name in ("e1", "e2"), owner_name
        other_name = "e2" if owner_name == "e1" else "e1"
        owner = engines[int(owner_name[1]) - 1]
        assert owner.proc is not None

        owner.proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        # The accept reaches the paused owner's socket, and the other instance, which
        # does not own the incident yet: it keeps the accept for whoever adopts it.
        field.reply(vid, alert["alert_id"], "accept")
        while owners(redis_url, root, [iid])[iid] != other_name:
            assert time.monotonic() - paused < TAKEOVER_BUDGET_S, "not adopted in time"
            time.sleep(0.1)
        adopted_after = time.monotonic() - paused
        # The new owner answers that accept: it commits the volunteer.
        go = field.wait_assignment(vid, iid, "go")
        answered_after = time.monotonic() - paused
        assert go["action"] == "go"

        owner.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        while f"incident={iid} lost ownership" not in owner.log_path.read_text():
            assert time.monotonic() - woke < 10, "the woken instance never noticed:\n" + (
                owner.log_tail()
            )
            time.sleep(0.1)
        owner.wait_ready(15)
        time.sleep(1.0)
        field.sync()

        assignments = field.assignments(vid, iid)
        assert [a["action"] for a in assignments] == ["go"], assignments
        found = audit(redis_url, f"{root}:")
        assigned = [
            f
            for _, f in found.events
            if f[b"type"] == b"assigned" and f[b"incident_id"] == iid.encode()
        ]
        assert len(assigned) == 1, assigned
        assert found.claims.get(vid) == iid
        assert found.incidents[iid]["state"] == "assigned"
        assert not found.double_bookings()
        # The retained state is the new owner's, not a stale one from the woken instance.
        fresh = Field(mqtt_url, root)
        try:
            state = fresh.wait_state(iid, lambda s: True)
            assert state["state"] == "assigned", state
        finally:
            fresh.close()
        print(
            f"\n[cluster SIGSTOP] adopted after {adopted_after:.2f}s, the accept sent during "
            f"the pause answered after {answered_after:.2f}s; the woken owner refused"
        )
    finally:
        field.close()


def test_retained_state_of_a_dead_owners_ended_incident_is_cleared(
    cluster: Callable[..., list[Engine]], mqtt_url: str
) -> None:
    """Ended incidents are not adopted, but their retained state is still cleared once
    the retention time is over, by another instance."""
    engines = cluster(2, env={"DISPATCH_INCIDENTS_STATE_RETENTION_S": "3"})
    root, redis_url = engines[0].topic_root, engines[0].redis_url
    field = Field(mqtt_url, root)
    try:
        iid = uid("ended")
        field.report({"id": iid, "kind": "fire", "lat": CENTER[0], "lon": CENTER[1]})
        field.wait_state(iid, lambda s: s.get("id") == iid)
        owner_name = owners(redis_url, root, [iid])[iid]
        assert owner_name in ("e1", "e2"), owner_name
        owner = engines[int(owner_name[1]) - 1]
        result = owner.post(f"/api/incidents/{iid}/resolve", token=owner.token)
        assert result.status == 200, result.body
        field.wait_state(iid, "resolved")
        owner.kill9()
        ended = time.monotonic()
        topic = field.t("incidents", iid, "state")
        field.all.wait_for(
            lambda m: m.topic == topic and m.payload == b"", timeout=3 + 5 + 3, what="(cleared)"
        )
        print(
            f"\n[cluster] retained state of a dead owner's incident cleared after "
            f"{time.monotonic() - ended:.1f}s (retention 3 s)"
        )
        fresh = Field(mqtt_url, root)
        try:
            fresh.sync()
            assert fresh.states(iid) == [], "the retained state is still there"
        finally:
            fresh.close()
    finally:
        field.close()


def _events_of(redis_url: str, root: str, iid: str) -> list[str]:
    with redis.Redis.from_url(redis_url) as r:
        entries = r.xrange(f"{root}:events")
    return [f[b"type"].decode() for _, f in entries if f[b"incident_id"] == iid.encode()]


def _by_owner(engines: list[Engine], redis_url: str, root: str, iid: str) -> tuple[Engine, Engine]:
    """(the incident's owner, the other instance) of a pair."""
    name = owners(redis_url, root, [iid])[iid]
    assert name in ("e1", "e2"), f"incident {iid} has no owner: {name}"
    owner = engines[int(name[1]) - 1]
    return owner, engines[1] if owner is engines[0] else engines[0]


def test_http_api_is_one_system_across_instances(
    cluster: Callable[..., list[Engine]], mqtt_url: str
) -> None:
    engines = cluster(2)
    a, b = engines
    root, redis_url = a.topic_root, a.redis_url
    field = Field(mqtt_url, root)
    try:
        vid = uid("hv")
        field.status(vid, lat=CENTER[0], lon=CENTER[1], skills=["first_aid"])
        field.sync()
        lat, lon = offset(*CENTER, 150, 90)
        iid = uid("http")
        created = a.post(
            "/api/incidents",
            {"id": iid, "kind": "medical", "lat": lat, "lon": lon},
            token=a.token,
        )
        assert created.status == 201, created.body
        assert created.json["id"] == iid
        assert created.json["state"] in ("open", "alerting"), created.json
        alert = field.wait_alert(vid, iid)
        field.reply(vid, alert["alert_id"], "accept")
        field.wait_assignment(vid, iid, "go")
        field.wait_state(iid, "assigned")
        # Through the work stream: created (and counted) by exactly one instance.
        assert created_by(a) + created_by(b) == 1
        owner, other = _by_owner(engines, redis_url, root, iid)

        # Both instances list it and show the same thing (read from Redis).
        for engine in (a, b):
            listed = engine.get("/api/incidents")
            assert listed.status == 200, listed.body
            mine = [i for i in listed.json["incidents"] if i["id"] == iid]
            assert len(mine) == 1, listed.json
            assert mine[0]["state"] == "assigned", listed.json
            one = engine.get(f"/api/incidents/{iid}")
            assert one.status == 200, one.body
            assert one.json["state"] == "assigned", one.json
            assert [r["volunteer_id"] for r in one.json["responders"]] == [vid]
            assert "reported" in [e["type"] for e in one.json["events"]], one.json["events"]
            figures = engine.get("/api/figures")
            assert figures.status == 200, figures.body
            assert figures.json["open"] == 1, figures.json
        # A report posted without an id, through the other: readable at the owner's side.
        unnamed = other.post(
            "/api/incidents", {"kind": "fire", "lat": lat, "lon": lon}, token=other.token
        )
        assert unnamed.status == 201, unnamed.body
        assert owner.get(f"/api/incidents/{unnamed.json['id']}").status == 200

        # Cancelled through the instance that does not own it: carried out by the owner.
        cancelled = other.post(f"/api/incidents/{iid}/cancel", {"by": "desk-2"}, token=other.token)
        assert cancelled.status == 200, cancelled.body
        assert cancelled.json["state"] == "cancelled", cancelled.json
        assert cancelled.json["end_reason"] == "cancelled by desk-2", cancelled.json
        assert owners(redis_url, root, [iid])[iid] in (None, owner.env["DISPATCH_INSTANCE"])
        field.wait_state(iid, "cancelled")
        field.wait_assignment(vid, iid, "stand_down")
        # Again, at each, the same answers: cancel again is harmless, resolve is refused;
        # and the same once the owner has given up the ended incident's lease.
        for _ in range(2):
            again = [e.post(f"/api/incidents/{iid}/cancel", token=e.token) for e in engines]
            assert [r.status for r in again] == [200, 200], [r.body for r in again]
            assert again[0].json == again[1].json == cancelled.json
            refused = [e.post(f"/api/incidents/{iid}/resolve", token=e.token) for e in engines]
            assert [r.status for r in refused] == [409, 409], [r.body for r in refused]
            assert refused[0].json == refused[1].json, [r.json for r in refused]
            while owners(redis_url, root, [iid])[iid] is not None:
                time.sleep(0.05)
        field.sync()
        actions = [x["action"] for x in field.assignments(vid, iid)]
        assert actions == ["go", "stand_down"], actions
        assert _events_of(redis_url, root, iid).count("cancelled") == 1
        assert other.get(f"/api/incidents/{iid}").json["state"] == "cancelled"

        # An id nobody knows: 404 at both, for reading and for acting.
        for engine in (a, b):
            assert engine.get("/api/incidents/no-such-incident").status == 404
            gone = engine.post("/api/incidents/no-such-incident/resolve", token=engine.token)
            assert gone.status == 404, gone.body
            assert "no-such-incident" in gone.json["error"]
    finally:
        field.close()


def test_http_action_after_the_owner_died(
    cluster: Callable[..., list[Engine]], mqtt_url: str
) -> None:
    """The owner is killed: the other instance answers 503 (saying why) until the lease
    has run out, then adopts the incident and carries out the action itself."""
    engines = cluster(2)
    root, redis_url = engines[0].topic_root, engines[0].redis_url
    field = Field(mqtt_url, root)
    try:
        iid = uid("dead")
        field.report({"id": iid, "kind": "fire", "lat": CENTER[0], "lon": CENTER[1]})
        field.wait_state(iid, lambda s: s.get("id") == iid)
        owner, other = _by_owner(engines, redis_url, root, iid)
        owner.kill9()
        killed = time.monotonic()
        answers: list[int] = []
        while True:
            result = other.post(f"/api/incidents/{iid}/resolve", token=other.token)
            answers.append(result.status)
            if result.status == 200:
                break
            assert result.status == 503, result.body
            assert "try again" in result.json["error"], result.json
            assert time.monotonic() - killed < TAKEOVER_BUDGET_S, answers
        took = time.monotonic() - killed
        assert result.json["state"] == "resolved", result.json
        assert f"incident={iid} adopted" in other.log_path.read_text()
        field.wait_state(iid, "resolved")
        assert _events_of(redis_url, root, iid).count("resolved") == 1
        print(
            f"\n[cluster http] owner killed: resolved through the other after {took:.2f}s "
            f"(answers {answers})"
        )
    finally:
        field.close()
