"""End to end with location gateways (issue 16, docs/deployment.md "Location gateways").

The engine runs with ``[gateway] enabled = true`` and two ``dispatch gateway`` processes
beside it, all on a real broker and a real Redis, driven only through MQTT and HTTP:
locations reach the engine's index through either gateway (the nearest volunteer is
alerted), a location within the arrival radius is a geofence arrival, a bad location is
rejected once (not once per gateway), a restarted engine reads the positions the
gateways stored, and when one gateway is killed the other carries the locations alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from e2e_harness import Engine, Field, GatewayProcess, Message, offset, uid

GATEWAY_ENV = {"DISPATCH_GATEWAY_ENABLED": "true"}
# 清河坊, in the district, away from the other e2e modules' places.
CENTER = (30.2420, 120.1690)


@pytest.fixture
def gateways(
    engine_factory: Callable[..., Engine], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Engine, list[GatewayProcess]]]:
    """An engine with [gateway] enabled and two gateways, all started and connected."""
    engine = engine_factory(env=dict(GATEWAY_ENV))
    made = [GatewayProcess(engine, f"gw{i}", tmp_path / f"gateway{i}.log") for i in range(2)]
    try:
        engine.start()
        for g in made:
            g.start()
        for g in made:
            g.wait_connected()
        yield engine, made
    finally:
        for g in made:
            g.ensure_dead()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for g in made:
                print(f"\n----- gateway log {g.log_path}\n{g.log()[-4000:]}")


@pytest.fixture
def gw_field(gateways: tuple[Engine, list[GatewayProcess]], mqtt_url: str) -> Iterator[Field]:
    engine, _ = gateways
    f = Field(mqtt_url, engine.topic_root)
    try:
        yield f
    finally:
        f.close()


def _moves_with(field: Field, vid: str) -> Callable[[Message], bool]:
    topic = field.t("internal", "moves")

    def pred(m: Message) -> bool:
        return m.topic == topic and any(move[0] == vid for move in m.json)

    return pred


def _arrived(field: Field, vid: str, lat: float, lon: float, timeout: float = 5.0) -> None:
    """Wait until a batch of moves carried this position of ``vid`` to the engine."""
    topic = field.t("internal", "moves")

    def pred(m: Message) -> bool:
        return m.topic == topic and any(
            move[0] == vid and move[1] == lat and move[2] == lon for move in m.json
        )

    field.all.wait_for(pred, timeout, f"(a batch of moves with {vid} at its new position)")


def _applied(engine: Engine, vid: str, lat: float, lon: float) -> None:
    """Wait until the engine has applied the move: a batch on the broker may still wait in
    the engine while a report overtakes it (reports first). The map's positions are
    coarse (100 m squares), enough to tell the moves here from the statuses."""

    deadline = time.monotonic() + 5
    while True:
        view = engine.get("/api/volunteers", token=engine.token).json["volunteers"]
        if any(
            v["id"] == vid and abs(v["lat"] - lat) < 0.002 and abs(v["lon"] - lon) < 0.002
            for v in view
        ):
            return
        assert time.monotonic() < deadline, f"the engine never applied {vid}'s move"
        time.sleep(0.05)


def _stored_position(engine: Engine, vid: str) -> tuple[float, float, float] | None:
    with redis.Redis.from_url(engine.redis_url, socket_timeout=5) as client:
        raw = client.get(f"{engine.topic_root}:pos:{vid}")
    if raw is None:
        return None
    lat, lon, at = (float(x) for x in raw.decode().split(","))
    return lat, lon, at


def test_locations_through_two_gateways_reach_the_index(
    gateways: tuple[Engine, list[GatewayProcess]], gw_field: Field
) -> None:
    engine, (g0, g1) = gateways
    field = gw_field
    near, far = uid("gwnear"), uid("gwfar")
    # Both start 3 km away (their statuses carry that); then near moves to 150 m and far
    # to 700 m, by locations only: only the gateways can have told the engine.
    for i, vid in enumerate((near, far)):
        field.status(vid, "available", lat=offset(*CENTER, 3000, 90 * i)[0],
                     lon=offset(*CENTER, 3000, 90 * i)[1], skills=["first_aid"])  # fmt: skip
    field.sync()
    near_pos = offset(*CENTER, 150, 30)
    far_pos = offset(*CENTER, 700, 200)
    field.location(near, *near_pos, accuracy_m=5)
    field.location(far, *far_pos, accuracy_m=5)
    # And a crowd of others, so that both gateways get a share.
    crowd = [uid("gwcrowd") for _ in range(40)]
    for i, vid in enumerate(crowd):
        field.location(vid, *offset(*CENTER, 5000, i * 9))
    _arrived(field, near, *near_pos)
    _arrived(field, far, *far_pos)
    _applied(engine, near, *near_pos)
    _applied(engine, far, *far_pos)
    # The batches are compact arrays of [id, lat, lon, accuracy, t], one move per volunteer.
    batches = field.all.all(lambda m: m.topic == field.t("internal", "moves"))
    for m in batches:
        ids = [move[0] for move in m.json]
        assert len(ids) == len(set(ids))
        assert all(len(move) == 5 for move in m.json)

    iid = uid("gwinc")
    field.report({"id": iid, "kind": "medical", "lat": CENTER[0], "lon": CENTER[1]})
    # Both are in the first wave, each at the distance only a gateway's move gave.
    alert = field.wait_alert(near, iid)
    assert alert["distance_m"] == pytest.approx(150, abs=1)
    assert field.wait_alert(far, iid)["distance_m"] == pytest.approx(700, abs=1)

    # Stored by the gateways, in the engine's own format.
    stored = _stored_position(engine, near)
    assert stored is not None
    assert stored[:2] == pytest.approx(near_pos)
    assert abs(stored[2] - time.time()) < 60
    assert engine.metric("dispatch_move_batches_total", outcome="accepted") >= 1
    assert engine.metric("dispatch_move_batches_total", outcome="malformed") == 0
    # Each chunk applied timed from its gateway's receipt: a light load takes a flush
    # (25 ms) and a turn or two; 5 s is the histogram's last edge before +Inf.
    # One scrape: the crowd's last chunks may still be applied between two.
    scraped = engine.metrics()
    applied = scraped.get(("dispatch_location_to_index_seconds_count", frozenset()), 0.0)
    assert applied >= 1
    within = scraped.get(
        ("dispatch_location_to_index_seconds_bucket", frozenset({("le", "5.0")})), 0.0
    )
    assert within == applied
    total_s = scraped.get(("dispatch_location_to_index_seconds_sum", frozenset()), 0.0)
    assert 0 < total_s / applied < 5

    # Both gateways carried a share (the shared subscription), none twice.
    assert g0.stop() == 0
    assert g1.stop() == 0
    r0, r1 = g0.received(), g1.received()
    assert r0 > 0, (r0, r1)
    assert r1 > 0, (r0, r1)
    assert r0 + r1 == 42, (r0, r1)
    engine.post(f"/api/incidents/{iid}/cancel", token=engine.token)


def test_geofence_arrival_and_one_rejection_via_gateways(
    gateways: tuple[Engine, list[GatewayProcess]], gw_field: Field
) -> None:
    engine, _ = gateways
    field = gw_field
    vid = uid("gwarr")
    start = offset(*CENTER, 300, 120)
    field.status(vid, "available", lat=start[0], lon=start[1], skills=["first_aid"])
    field.sync()
    iid = uid("gwinc")
    field.report({"id": iid, "kind": "medical", "lat": CENTER[0], "lon": CENTER[1]})
    alert = field.wait_alert(vid, iid)
    field.reply(vid, alert["alert_id"], "accept")
    field.wait_assignment(vid, iid, "go")
    field.wait_state(iid, "assigned")
    # 100 m away: on the way, not there.
    field.location(vid, *offset(*CENTER, 100, 120), accuracy_m=5)
    _arrived(field, vid, *offset(*CENTER, 100, 120))
    field.sync()
    assert (
        field.all.all(
            lambda m: m.topic == field.t("incidents", iid, "state") and b"on_scene" in m.payload
        )
        == []
    )
    # 10 m away: a geofence arrival, verified.
    field.location(vid, *offset(*CENTER, 10, 120), accuracy_m=5)
    state = field.wait_state(iid, "on_scene")
    assert state["responders"][0]["volunteer_id"] == vid
    assert state["responders"][0]["arrived_at"] is not None
    assert state["arrival_verified"] is True

    # A bad location: rejected once, by whichever gateway got it, as the engine would.
    before = len(field.rejected.all())
    bad_topic = field.t("volunteers", vid, "location")
    field.phone.publish(bad_topic, {"lat": 123.0, "lon": CENTER[1]}, qos=0)
    rejection = field.wait_rejected(lambda b: b["topic"] == bad_topic, start=before)
    assert rejection["code"] == "out_of_range", rejection
    assert "lat" in rejection["reason"]
    assert set(rejection) == {"topic", "code", "reason", "received_at", "id"}, rejection
    time.sleep(0.5)  # a second gateway answering would have done so by now
    field.sync()
    assert len(field.rejected.all(lambda m: m.json.get("topic") == bad_topic)) == 1
    engine.post(f"/api/incidents/{iid}/cancel", token=engine.token)


def test_restart_reads_gateway_positions_and_one_gateway_killed(
    gateways: tuple[Engine, list[GatewayProcess]], gw_field: Field
) -> None:
    engine, (g0, g1) = gateways
    field = gw_field
    near, far = uid("gwrnear"), uid("gwrfar")
    # near's status says 2.5 km; far's 600 m. Then near moves (by location) to 120 m.
    a, b = offset(*CENTER, 2500, 0), offset(*CENTER, 600, 180)
    field.status(near, "available", lat=a[0], lon=a[1], skills=["first_aid"])
    field.status(far, "available", lat=b[0], lon=b[1], skills=["first_aid"])
    field.sync()
    near_pos = offset(*CENTER, 120, 45)
    field.location(near, *near_pos, accuracy_m=5)
    _arrived(field, near, *near_pos)
    deadline = time.monotonic() + 5
    while (stored := _stored_position(engine, near)) is None or stored[:2] != pytest.approx(
        near_pos
    ):
        assert time.monotonic() < deadline, f"position not stored: {stored}"
        time.sleep(0.05)

    # The engine dies and comes back: only Redis can tell it where near is now.
    engine.kill9()
    engine.start()
    iid = uid("gwinc")
    field.report({"id": iid, "kind": "medical", "lat": CENTER[0], "lon": CENTER[1]})
    assert field.wait_alert(near, iid)["distance_m"] == pytest.approx(120, abs=1)
    engine.post(f"/api/incidents/{iid}/cancel", token=engine.token)
    field.wait_state(iid, "cancelled")

    # One gateway is killed: the other takes every location from then on.
    g0.kill9()
    time.sleep(0.3)  # the broker notices the closed connection
    movers = [uid("gwk") for _ in range(20)]
    for vid in movers:
        field.status(vid, "available", lat=a[0], lon=a[1], skills=["first_aid"])
    field.sync()
    for i, vid in enumerate(movers):
        field.location(vid, *offset(*CENTER, 4000 + 10 * i, 270))
    for i, vid in enumerate(movers):
        _arrived(field, vid, *offset(*CENTER, 4000 + 10 * i, 270))
    # far moves next to the scene: the next incident goes to far, through gateway 1 alone.
    far_pos = offset(*CENTER, 80, 300)
    field.location(far, *far_pos, accuracy_m=5)
    _arrived(field, far, *far_pos)
    _applied(engine, far, *far_pos)
    iid2 = uid("gwinc")
    field.report({"id": iid2, "kind": "medical", "lat": CENTER[0], "lon": CENTER[1]})
    assert field.wait_alert(far, iid2)["distance_m"] == pytest.approx(80, abs=1)
    assert g1.stop() == 0
    assert g1.received() >= 21  # every location sent after the kill
    engine.post(f"/api/incidents/{iid2}/cancel", token=engine.token)
