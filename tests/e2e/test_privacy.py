"""Privacy: volunteers' positions are never logged, never retained, never kept as a history.

PROTOCOL.md: "Locations are never retained, never logged and never kept as a history:
the engine keeps only each volunteer's last position, and forgets it when the volunteer
goes off duty or stops reporting." Each promise is checked from the outside: the engine's
log at level debug, every key of its Redis database, its HTTP API and the broker's
retained messages.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from e2e_harness import OUTSIDE, WAIT, XIAOYING, Engine, Field, MqttClient, offset, running, uid

# Any latitude or longitude near Hangzhou with a fraction (30.2591, 30.1, "120.17"; log
# times are written 05:30:25,123, which this does not match).
COORDINATE = re.compile(r"(?<![\d.])(?:29|30|31|119|120|121)\.\d")


def eventually(check: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def redis_dump(url: str) -> dict[str, str]:
    """Every key of the engine's Redis database and its value, as text."""
    out: dict[str, str] = {}
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            if kind == "string":
                value: Any = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "stream":
                value = client.xrange(key)
            else:
                value = kind
            out[key.decode()] = repr(value)
    return out


def coordinates_in(text: str, values: Iterator[float] | list[float]) -> list[str]:
    """The given coordinates (to 4 decimals, the precision that places a person) in text."""
    return [f"{v:.4f}" for v in values if f"{v:.4f}"[:-1] in text]


@pytest.fixture
def private_engine(engine_factory: Callable[..., Engine]) -> Iterator[Engine]:
    """An engine logging at debug, forgetting silent volunteers after 1.5 s."""
    engine = engine_factory(
        env={"DISPATCH_LOG_LEVEL": "debug", "DISPATCH_VOLUNTEERS_LOCATION_TTL_S": "1.5"}
    )
    with running(engine):
        yield engine


@pytest.fixture
def phones(private_engine: Engine, mqtt_url: str) -> Iterator[Field]:
    f = Field(mqtt_url, private_engine.topic_root)
    try:
        yield f
    finally:
        f.close()


def test_no_coordinates_in_the_engine_log_at_debug(private_engine: Engine, phones: Field) -> None:
    lat, lon = XIAOYING
    a = uid("pa")
    b = uid("pb")
    a_pos = offset(lat, lon, 250, 10)
    b_pos = offset(lat, lon, 700, 200)
    phones.status(a, lat=a_pos[0], lon=a_pos[1], skills=["first_aid"], mode="walk")
    phones.status(b, lat=b_pos[0], lon=b_pos[1], skills=["first_aid"], mode="bike")
    phones.location(uid("nostatus"), *offset(lat, lon, 300, 90))  # kept, nobody available
    iid = uid("priv")
    phones.report({"id": iid, "kind": "medical", "lat": lat, "lon": lon, "address": "小营巷"})
    alert = phones.wait_alert(a, iid)
    phones.reply(a, alert["alert_id"], "accept")
    phones.wait_assignment(a, iid, "go")
    for metres in (150, 60, 10):  # walks in; the last one is inside the arrival radius
        phones.location(a, *offset(lat, lon, metres, 10), accuracy_m=5)
    phones.wait_state(iid, "on_scene")
    # Bad input echoing coordinates: out of the area, out of range, wrong type, NaN.
    phones.report({"kind": "fall", "lat": OUTSIDE[0], "lon": OUTSIDE[1]})
    phones.phone.publish(phones.t("volunteers", b, "location"), {"lat": 95.2591, "lon": 120.1698})
    phones.phone.publish(phones.t("volunteers", b, "location"), {"lat": "30.2591", "lon": 120.17})
    phones.phone.publish(phones.t("volunteers", b, "location"), b'{"lat": NaN, "lon": 120.1698}')
    phones.status(b, "off_duty")
    phones.sync()
    assert private_engine.get("/api/incidents/" + iid).status == 200
    private_engine.post(f"/api/incidents/{iid}/resolve", token=private_engine.token)
    phones.wait_state(iid, "resolved")
    phones.sync()

    log = private_engine.log_path.read_text(errors="replace")
    assert a in log, "the log should name volunteers by id (it did not log the scenario)"
    found = sorted({m.group(0) for m in COORDINATE.finditer(log)})
    lines = [line for line in log.splitlines() if COORDINATE.search(line)][:10]
    assert found == [], "coordinates in the engine log:\n" + "\n".join(lines)


def test_a_position_is_forgotten_off_duty_and_when_silent(
    private_engine: Engine, phones: Field
) -> None:
    lat, lon = XIAOYING
    going, silent = uid("off"), uid("quiet")
    going_pos, silent_pos = offset(lat, lon, 400, 45), offset(lat, lon, 500, 135)
    phones.status(going, lat=going_pos[0], lon=going_pos[1], skills=["first_aid"])
    phones.status(silent, lat=silent_pos[0], lon=silent_pos[1], skills=["first_aid"])
    phones.sync()

    def listed() -> set[str]:
        result = private_engine.get("/api/volunteers")
        assert result.status == 200
        return {v["id"] for v in result.json["volunteers"]}

    def positions() -> dict[str, str]:
        return {k: v for k, v in redis_dump(private_engine.redis_url).items() if ":pos:" in k}

    # Both are known, with a position in Redis (written in batches, every 0.1 s).
    assert listed() == {going, silent}
    eventually(
        lambda: {k.rsplit(":", 1)[1] for k in positions()} == {going, silent},
        what="both positions in Redis",
    )

    # Off duty: forgotten at once, in memory and in Redis.
    phones.status(going, "off_duty")
    phones.sync()
    assert going not in listed()
    eventually(lambda: not [k for k in positions() if k.endswith(going)], what="pos: deleted")

    # Silent past location_ttl_s (1.5 s here): forgotten by the engine and by Redis.
    eventually(lambda: silent not in listed(), 5.0, f"{silent} to drop off /api/volunteers")
    eventually(lambda: not positions(), 5.0, "the last pos: key to expire")
    assert private_engine.get("/api/volunteers").json["available"] == 0
    # Nothing anywhere in Redis still holds either volunteer's coordinates.
    everything = "\n".join(redis_dump(private_engine.redis_url).values())
    assert coordinates_in(everything, [*going_pos, *silent_pos]) == []

    # A silent volunteer is not alerted, however close.
    iid = uid("noone")
    phones.report({"id": iid, "kind": "medical", "lat": silent_pos[0], "lon": silent_pos[1]})
    phones.wait_state(iid, "escalated")
    assert phones.alerts(silent) == []
    private_engine.post(f"/api/incidents/{iid}/cancel", token=private_engine.token)


def test_no_history_of_positions_in_redis(private_engine: Engine, phones: Field) -> None:
    lat, lon = XIAOYING
    vid = uid("walker")
    path = [offset(lat, lon, 900 - 100 * i, 300) for i in range(6)]
    phones.status(vid, lat=path[0][0], lon=path[0][1], skills=["first_aid"])
    for p in path[1:]:
        phones.location(vid, *p)
    phones.sync()

    def stored() -> str:
        return "\n".join(redis_dump(private_engine.redis_url).values())

    eventually(lambda: coordinates_in(stored(), list(path[-1])), what="the last position kept")
    earlier = [c for p in path[:-1] for c in p]
    assert coordinates_in(stored(), earlier) == [], "an earlier position is still stored"
    phones.status(vid, "off_duty")


def test_locations_are_never_retained(private_engine: Engine, phones: Field, mqtt_url: str) -> None:
    lat, lon = XIAOYING
    vid = uid("ret")
    phones.status(vid, lat=lat + 0.002, lon=lon, skills=["first_aid"])
    phones.location(vid, lat + 0.001, lon)
    iid = uid("ret")
    phones.report({"id": iid, "kind": "medical", "lat": lat, "lon": lon})
    alert = phones.wait_alert(vid, iid)
    phones.reply(vid, alert["alert_id"], "accept")
    phones.wait_assignment(vid, iid, "go")
    phones.sync()
    # A fresh subscriber to every volunteer topic gets nothing retained: neither the
    # locations the phone sent nor anything the engine published to volunteers.
    fresh = MqttClient(mqtt_url, name="fresh")
    try:
        late = fresh.subscribe(phones.t("volunteers", "#"))
        marker = uid("m")
        phones.phone.publish(phones.t("volunteers", marker, "location"), b"marker", qos=1)
        late.wait_for(lambda m: m.payload == b"marker", what="(marker)")
        retained = [m.topic for m in late.all() if m.retain]
        assert retained == [], f"retained messages on volunteer topics: {retained}"
    finally:
        fresh.close()
    # Only incident states are retained: the receipts.
    fresh = MqttClient(mqtt_url, name="fresh-all")
    try:
        late = fresh.subscribe(phones.t("#"))
        marker_topic = phones.t("volunteers", uid("m2"), "location")
        phones.phone.publish(marker_topic, b"marker", qos=1)
        late.wait_for(lambda m: m.topic == marker_topic, what="(marker)")
        retained = {m.topic for m in late.all() if m.retain}
        assert retained == {phones.t("incidents", iid, "state")}
    finally:
        fresh.close()
    private_engine.post(f"/api/incidents/{iid}/cancel", token=private_engine.token)
