"""Batches of moves from location gateways: their format (dispatch/moves.py) and how the
core applies them (`Dispatcher.moves`): as locations, without storing them."""

from __future__ import annotations

import random

import orjson
import pytest
from test_dispatcher import LAT, LON, T0, accept, alerts, make, on_duty, published, report, state_of

from dispatch.dispatcher import Dispatcher
from dispatch.effects import Effect, ForgetPosition, SavePosition
from dispatch.model import Duty, LocationUpdate, StatusUpdate
from dispatch.moves import MAX_BATCH_BYTES, MAX_MOVES, BadBatch, decode_moves, encode_moves, split
from geo.area import ServiceArea


@pytest.fixture(scope="module")
def area() -> ServiceArea:
    from test_dispatcher import CONFIG

    return ServiceArea.from_geojson(CONFIG.area_geojson)


def north(m: float) -> float:
    return LAT + m / 111_195


# --------------------------------------------------------------------------- format


def test_a_batch_round_trips() -> None:
    moves = [("v1", 30.25, 120.16, 8.0, T0), ("v-2", 30.26, 120.17, None, T0 + 0.5)]
    decoded = decode_moves(encode_moves(moves), now=T0 + 1, future_tolerance_s=30)
    assert decoded == [
        LocationUpdate("v1", 30.25, 120.16, ts=T0, accuracy_m=8.0),
        LocationUpdate("v-2", 30.26, 120.17, ts=T0 + 0.5, accuracy_m=None),
    ]


def test_the_largest_batch_fits_the_brokers_packet_limit() -> None:
    vid = "x" * 64
    worst = [
        (f"{vid[:-3]}{i:03d}", -89.12345678901234, -179.12345678901234, 1.2345678901234567e300, T0)
        for i in range(MAX_MOVES)
    ]
    payload = encode_moves(worst)
    assert len(payload) <= MAX_BATCH_BYTES
    assert len(decode_moves(payload, now=T0, future_tolerance_s=30)) == MAX_MOVES


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "not JSON"),
        (b'{"v1": [30.2, 120.1]}', "JSON array"),
        (b"[[1, 30.2, 120.1, null, 1800000000]]", "volunteer_id must be a string"),
        (b'[["v 1", 30.2, 120.1, null, 1800000000]]', "volunteer_id"),
        (b'[["v1", 91.0, 120.1, null, 1800000000]]', "lat"),
        (b'[["v1", 30.2, "120.1", null, 1800000000]]', "lon must be a finite number"),
        (b'[["v1", 30.2, 120.1, -1.0, 1800000000]]', "accuracy_m"),
        (b'[["v1", 30.2, 120.1, 5.0, -1800000000.5]]', "ts must be a finite number"),
        (b'[["v1", 30.2, 1e300, null, 1800000000.5]]', "lon must be a finite number"),
        (b'[["v1", 30.2, 120.1, true, 1800000000]]', "accuracy_m"),
        (b'[["v1", 30.2, 120.1, null]]', r"must be \[volunteer_id"),
        (b'[["v1", 30.2, 120.1, null, 1900000000]]', "future"),
        (b'[["v1", 30.2, 120.1, null, 1800000000], ["v1", 30.2, 120.1, null, 1800000000]]',
         "moves twice"),
    ],
)  # fmt: skip
def test_a_malformed_batch_is_refused_whole_with_a_reason(payload: bytes, why: str) -> None:
    with pytest.raises(BadBatch, match=why):
        decode_moves(payload, now=T0, future_tolerance_s=30)


def test_too_many_moves_or_bytes_are_refused() -> None:
    many = encode_moves([(f"v{i}", 30.2, 120.1, None, T0) for i in range(MAX_MOVES + 1)])
    with pytest.raises(BadBatch, match=f"at most {MAX_MOVES}"):
        decode_moves(many, now=T0, future_tolerance_s=30)
    with pytest.raises(BadBatch, match="bytes"):
        decode_moves(b" " * (MAX_BATCH_BYTES + 1), now=T0, future_tolerance_s=30)


def test_split_keeps_every_move_in_order() -> None:
    moves = [(f"v{i}", 30.2, 120.1, None, T0) for i in range(7)]
    parts = split(moves, 3)
    assert [len(p) for p in parts] == [3, 3, 1]
    assert [m for p in parts for m in p] == moves


# --------------------------------------------------------------------------- the core


def _no_saves(effects: list[Effect]) -> None:
    assert not [e for e in effects if isinstance(e, SavePosition)]


def test_moves_place_volunteers_in_the_index_without_storing_them(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "near", 3000)
    on_duty(d, "far", 2000)
    effects = d.moves(
        [
            LocationUpdate("near", north(120), LON, ts=T0 + 1, accuracy_m=5.0),
            LocationUpdate("far", north(600), LON, ts=T0 + 1, accuracy_m=5.0),
        ],
        T0 + 1.02,
    )
    _no_saves(effects)
    assert d.volunteers["near"].seen_at == T0 + 1  # timed when the gateway received it
    sent = alerts(report(d, id="inc-moves"))
    assert sent["near"]["distance_m"] == pytest.approx(120, abs=1)
    assert sent["far"]["distance_m"] == pytest.approx(600, abs=1)


def test_a_move_from_the_future_is_timed_now(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)
    d.moves([LocationUpdate("v0", north(150), LON, ts=T0 + 20)], T0 + 5)
    assert d.volunteers["v0"].seen_at == T0 + 5


def test_a_move_older_than_the_position_held_is_skipped(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 100)  # its status placed it at T0
    effects = d.moves([LocationUpdate("v0", north(2000), LON, ts=T0 - 0.01)], T0 + 0.02)
    assert effects == []
    assert d.volunteers["v0"].lat == pytest.approx(north(100))


def test_a_move_of_a_volunteer_off_duty_forgets_the_stored_position(area: ServiceArea) -> None:
    d = make(area)
    d.status(StatusUpdate("v0", Duty.OFF_DUTY), T0)
    effects = d.moves([LocationUpdate("v0", north(100), LON, ts=T0 + 1)], T0 + 1)
    assert effects == [ForgetPosition("v0")]
    assert d.volunteers["v0"].lat is None


def test_geofence_arrival_by_a_move(area: ServiceArea) -> None:
    d = make(area)
    on_duty(d, "v0", 200)
    sent = alerts(report(d, reported_at=T0 - 10))
    accept(d, "v0", sent["v0"]["alert_id"], T0 + 5)
    outside = d.moves([LocationUpdate("v0", north(40), LON, ts=T0 + 100)], T0 + 100)
    assert not published(outside, "/state")
    inside = d.moves([LocationUpdate("v0", north(20), LON, ts=T0 + 120)], T0 + 120)
    _no_saves(inside)
    state = state_of(inside)
    assert state["state"] == "on_scene"
    assert state["time_to_arrival_s"] == pytest.approx(130)
    assert state["arrival_verified"] is True


def _replay(area: ServiceArea, batched: bool, seed: int) -> tuple[Dispatcher, list[Effect]]:
    """The same day in two ways: each location alone, or the same ones as batches."""
    rng = random.Random(seed)
    d = make(area)
    for i in range(30):
        on_duty(d, f"v{i}", rng.uniform(50, 2500))
    effects: list[Effect] = []
    now = T0
    for step in range(6):
        locations = [
            LocationUpdate(f"v{rng.randrange(30)}", north(rng.uniform(0, 2500)), LON, ts=None)
            for _ in range(20)
        ]
        newest = {m.volunteer_id: m for m in locations}  # what a gateway keeps
        now += 1.0
        if batched:
            moves = [
                LocationUpdate(m.volunteer_id, m.lat, m.lon, ts=now, accuracy_m=m.accuracy_m)
                for m in newest.values()
            ]
            effects += d.moves(moves, now)
        else:
            for m in newest.values():
                effects += d.location(m, now)
        rep = report(d, id=f"inc{step}")
        effects += rep
        for vid, alert in sorted(alerts(rep).items())[:1]:
            effects += accept(d, vid, alert["alert_id"], now)
    return d, effects


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_decide_what_single_locations_decide(area: ServiceArea, seed: int) -> None:
    one, by_one = _replay(area, batched=False, seed=seed)
    many, by_batch = _replay(area, batched=True, seed=seed)
    assert alerts(by_one).keys() == alerts(by_batch).keys()
    keep = ("/state", "/alert", "/assignment")
    for suffix in keep:
        a = [
            (t, {k: v for k, v in p.items() if k != "alert_id"})
            for t, p in published(by_one, suffix)
        ]
        b = [
            (t, {k: v for k, v in p.items() if k != "alert_id"})
            for t, p in published(by_batch, suffix)
        ]
        assert orjson.dumps(a) == orjson.dumps(b)
    assert {v: (x.lat, x.lon) for v, x in one.volunteers.items()} == {
        v: (x.lat, x.lon) for v, x in many.volunteers.items()
    }
