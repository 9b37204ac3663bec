"""A simulated volunteer fleet that speaks the real protocol over a real broker.

``FleetModel`` is the pure part: volunteers as data, advanced by ``step(now)`` and fed
the engine's alerts and assignments; it returns the messages to publish and never
waits. ``Fleet`` is the asyncio shell: one aiomqtt client for the whole fleet, which
publishes on each volunteer's topics and subscribes to ``<root>/volunteers/+/alert``
and ``<root>/volunteers/+/assignment``.

What a simulated volunteer does (the figures are assumptions for simulation, chosen
to match what the design and the published studies of volunteer responders say):

- lives where people live (``DensityModel``: denser toward the old town) and has skills
  drawn independently (60 % first_aid, 20 % patrol, 15 % mediation) and a mode (walk
  70 %, bike 20 %, e-bike 10 %). Walking responders hurry: 2.3 m/s median, 1.8 m/s in
  the dense old town; bike about 4 and e-bike about 5.5 m/s; each with ±15 % spread.
- goes on duty (``status available`` with a position), wanders slowly, reports a
  location every few seconds, and now and then goes off duty for a while.
- answers an alert after a lognormal delay (median 15 s) with ``accept`` at the
  acceptance rate, else ``decline``.
- on ``go`` travels in a straight line at speed / circuity (1.3), so that the arrival
  time matches the engine's street-distance estimate, reporting every 2 s. About 72 %
  of those who accept get there (``arrived`` within 20 m; the engine's 30 m location
  geofence would also catch them); the others stop partway.
- on ``stand_down`` goes back to wandering.

Protocol 1.1 (all off by default, so the planning simulator's population is unchanged;
``dispatch demo`` turns them on): a share of the phones say ``"receipts": true`` and
answer every alert with ``received`` at once; a share are unreachable (alerts never
arrive: no receipt, no answer, as a phone without signal); a share set an alert budget
(``max_alerts_per_day``) or quiet hours; and phones drop off now and then (``offline``,
what their Last Will would say; the fleet shares one connection, so it says it itself)
and come back a few minutes later.

All times here are simulated seconds; the shell runs the simulated clock ``time_scale``
times faster than real time. Given a seed the fleet is the same on every run (who is
where, who accepts); what happens then depends on the engine's timing too.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from geo.area import ServiceArea
from geo.distance import EARTH_RADIUS_M, haversine_m
from simulators.incidents import DensityModel

__all__ = [
    "MODE_MIX",
    "SKILL_SHARES",
    "Fleet",
    "FleetModel",
    "FleetParams",
    "FleetStats",
    "Outbound",
    "VolunteerState",
]

log = logging.getLogger(__name__)

# Each skill is held independently with this probability (a volunteer may have none).
SKILL_SHARES: Mapping[str, float] = {"first_aid": 0.60, "patrol": 0.20, "mediation": 0.15}
MODE_MIX: Mapping[str, float] = {"walk": 0.70, "bike": 0.20, "ebike": 0.10}
# Median speeds in m/s along the streets.
SPEEDS_MPS: Mapping[str, float] = {"walk": 2.3, "bike": 4.0, "ebike": 5.5}
DENSE_WALK_MPS = 1.8

_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
_PUBLISH_BATCH = 8


class VolunteerState(enum.Enum):
    OFF_DUTY = "off_duty"
    OFFLINE = "offline"  # on duty, but the phone dropped off (protocol 1.1 presence)
    IDLE = "idle"  # on duty, wandering, available
    DECIDING = "deciding"  # an alert is on the phone, the reply is not sent yet
    WAITING = "waiting"  # accepted, waiting for go or stand_down
    TRAVELLING = "travelling"
    STOPPED = "stopped"  # accepted and set off, but gave up partway
    ON_SCENE = "on_scene"


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to publish."""

    topic: str
    payload: bytes
    qos: int


@dataclass(frozen=True, slots=True)
class FleetParams:
    acceptance: float = 0.35
    reply_median_s: float = 15.0
    reply_sigma: float = 0.6  # of the log of the delay: p90 about 2.2 x the median
    arrive_share: float = 0.72
    arrival_radius_m: float = 20.0
    circuity: float = 1.3
    location_every_s: float = 5.0
    travel_location_every_s: float = 2.0
    wander_mps: float = 0.3
    mean_on_duty_s: float = 3600.0
    mean_off_duty_s: float = 600.0
    answer_wait_s: float = 30.0  # no go/stand_down this long after accepting: give up
    # Protocol 1.1 traits, each drawn once per volunteer (see the module's docstring).
    receipts_share: float = 0.0
    unreachable_share: float = 0.0
    budget_share: float = 0.0
    budget_per_day: int = 3
    quiet_share: float = 0.0
    quiet_hours: str = ""  # "HH:MM-HH:MM" (local time) for those with quiet hours
    dropout_mean_s: float = 0.0  # mean time on duty between phone drop-offs; 0: never
    offline_mean_s: float = 120.0  # how long a dropped phone stays away, on average

    def __post_init__(self) -> None:
        for name in (
            "acceptance",
            "arrive_share",
            "receipts_share",
            "unreachable_share",
            "budget_share",
            "quiet_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)!r}")
        if not self.reply_median_s > 0 or not self.circuity >= 1.0:
            raise ValueError("reply_median_s must be > 0 and circuity >= 1")
        if not 1 <= self.budget_per_day <= 100:
            raise ValueError(f"budget_per_day must be 1..100, got {self.budget_per_day!r}")
        if self.quiet_share > 0 and not self.quiet_hours:
            raise ValueError("quiet_share > 0 needs quiet_hours, 'HH:MM-HH:MM'")
        if self.dropout_mean_s < 0 or not self.offline_mean_s > 0:
            raise ValueError("dropout_mean_s must be >= 0 and offline_mean_s > 0")


@dataclass(frozen=True, slots=True)
class FleetStats:
    alerts_received: int
    accepts: int
    declines: int
    goes: int
    stand_downs: int
    arrivals: int
    gave_up: int
    on_duty: int
    by_state: Mapping[str, int]


@dataclass(slots=True)
class _Volunteer:
    id: str
    lat: float
    lon: float
    skills: tuple[str, ...]
    mode: str
    speed_mps: float
    state: VolunteerState = VolunteerState.IDLE
    heading: float = 0.0
    next_location_at: float = 0.0
    duty_change_at: float = math.inf
    # the alert in hand, and what comes of it
    alert_id: str | None = None
    incident_id: str | None = None
    target: tuple[float, float] | None = None
    reply_at: float = 0.0
    will_accept: bool = False
    will_arrive: bool = True
    stop_after_m: float = math.inf
    travelled_m: float = 0.0
    waiting_since: float = 0.0
    # protocol 1.1 traits
    receipts: bool = False
    unreachable: bool = False
    max_alerts: int | None = None
    quiet: bool = False
    dropout_at: float = math.inf


def _move(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (
        lat + north_m / _M_PER_DEG,
        lon + east_m / (_M_PER_DEG * math.cos(math.radians(lat))),
    )


def _pick(rng: random.Random, mix: Mapping[str, float]) -> str:
    keys = list(mix)
    return rng.choices(keys, weights=[mix[k] for k in keys])[0]


def near_point(
    area: ServiceArea, lat: float, lon: float, spread_m: float
) -> Callable[[random.Random], tuple[float, float]]:
    """A placement: uniform in a disc of ``spread_m`` around a point, inside the area."""

    def place(rng: random.Random) -> tuple[float, float]:
        for _ in range(1000):
            r = spread_m * math.sqrt(rng.random())
            a = rng.uniform(0.0, 2.0 * math.pi)
            p = _move(lat, lon, r * math.cos(a), r * math.sin(a))
            if area.contains(*p):
                return p
        return lat, lon

    return place


class FleetModel:
    """The volunteers and their behaviour; pure (give it ``now``, publish what it returns)."""

    def __init__(
        self,
        area: ServiceArea,
        n: int,
        rng: random.Random,
        root: str,
        params: FleetParams | None = None,
        *,
        place: Callable[[random.Random], tuple[float, float]] | None = None,
        density: DensityModel | None = None,
        id_prefix: str = "sim",
        now: float = 0.0,
    ) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.area = area
        self.rng = rng
        self.root = root
        self.p = params or FleetParams()
        self.density = density or DensityModel(area)
        place = place or self.density.sample
        self.volunteers: dict[str, _Volunteer] = {}
        width = max(4, len(str(n)))
        for i in range(n):
            lat, lon = place(rng)
            mode = _pick(rng, MODE_MIX)
            base = SPEEDS_MPS[mode]
            if mode == "walk" and self.density.is_dense(lat, lon):
                base = DENSE_WALK_MPS
            v = _Volunteer(
                id=f"{id_prefix}{i:0{width}d}",
                lat=lat,
                lon=lon,
                skills=tuple(s for s, share in SKILL_SHARES.items() if rng.random() < share),
                mode=mode,
                speed_mps=base * rng.lognormvariate(0.0, 0.15),
                heading=rng.uniform(0.0, 2.0 * math.pi),
                # Spread the first reports over one interval: no thundering herd.
                next_location_at=now + rng.uniform(0.0, self.p.location_every_s),
                duty_change_at=now + rng.expovariate(1.0 / self.p.mean_on_duty_s),
            )
            self.volunteers[v.id] = v
        self._draw_traits(now)
        self._last = now
        self.alerts_received = self.accepts = self.declines = self.goes = 0
        self.stand_downs = self.arrivals = self.gave_up = 0

    def _draw_traits(self, now: float) -> None:
        """Protocol 1.1 traits, from a stream of their own: with none asked for, the
        population (and every later draw) is exactly what it was without them."""
        p = self.p
        shares = (p.receipts_share, p.unreachable_share, p.budget_share, p.quiet_share)
        if not any(shares) and p.dropout_mean_s == 0:
            return
        rng = random.Random(self.rng.getrandbits(64))
        for v in self.volunteers.values():
            v.receipts = rng.random() < p.receipts_share
            v.unreachable = rng.random() < p.unreachable_share
            v.max_alerts = p.budget_per_day if rng.random() < p.budget_share else None
            v.quiet = rng.random() < p.quiet_share
            if p.dropout_mean_s > 0:
                v.dropout_at = now + rng.expovariate(1.0 / p.dropout_mean_s)

    # ------------------------------------------------------------------ helpers

    def _out(self, vid: str, leaf: str, body: Mapping[str, Any], qos: int = 1) -> Outbound:
        return Outbound(f"{self.root}/volunteers/{vid}/{leaf}", json.dumps(body).encode(), qos)

    def _status(self, v: _Volunteer) -> Outbound:
        if v.state is VolunteerState.OFF_DUTY:
            return self._out(v.id, "status", {"status": "off_duty"})
        if v.state is VolunteerState.OFFLINE:
            return self._out(v.id, "status", {"status": "offline"})
        body: dict[str, Any] = {
            "status": "available",
            "skills": list(v.skills),
            "mode": v.mode,
            "lat": round(v.lat, 6),
            "lon": round(v.lon, 6),
        }
        if v.receipts:
            body["receipts"] = True
        if v.max_alerts is not None:
            body["max_alerts_per_day"] = v.max_alerts
        if v.quiet:
            body["quiet_hours"] = self.p.quiet_hours
        return self._out(v.id, "status", body)

    def _location(self, v: _Volunteer) -> Outbound:
        body = {"lat": round(v.lat, 6), "lon": round(v.lon, 6), "accuracy_m": 10}
        return self._out(v.id, "location", body, qos=0)

    def _clear_call(self, v: _Volunteer) -> None:
        v.alert_id = v.incident_id = v.target = None
        v.will_accept, v.will_arrive = False, True
        v.stop_after_m, v.travelled_m = math.inf, 0.0

    @property
    def stats(self) -> FleetStats:
        by_state: dict[str, int] = {}
        for v in self.volunteers.values():
            by_state[v.state.value] = by_state.get(v.state.value, 0) + 1
        return FleetStats(
            alerts_received=self.alerts_received,
            accepts=self.accepts,
            declines=self.declines,
            goes=self.goes,
            stand_downs=self.stand_downs,
            arrivals=self.arrivals,
            gave_up=self.gave_up,
            on_duty=len(self.volunteers) - by_state.get(VolunteerState.OFF_DUTY.value, 0),
            by_state=by_state,
        )

    # ------------------------------------------------------------------ inbound

    def announce(self) -> list[Outbound]:
        """Every volunteer's current status: at start and after every reconnect."""
        return [self._status(v) for v in self.volunteers.values()]

    def leave(self) -> list[Outbound]:
        """Everyone on duty goes off duty (the fleet is going away)."""
        out = []
        for v in self.volunteers.values():
            if v.state is not VolunteerState.OFF_DUTY:
                v.state = VolunteerState.OFF_DUTY
                self._clear_call(v)
                out.append(self._status(v))
        return out

    def on_alert(self, vid: str, alert: Mapping[str, Any], now: float) -> list[Outbound]:
        v = self.volunteers.get(vid)
        alert_id, incident_id = alert.get("alert_id"), alert.get("incident_id")
        if v is None or not isinstance(alert_id, str) or not isinstance(incident_id, str):
            return []
        if v.unreachable or v.state is VolunteerState.OFFLINE:
            return []  # it never reaches the phone: no receipt, no answer
        self.alerts_received += 1
        out = (
            [self._out(vid, "reply", {"alert_id": alert_id, "answer": "received"})]
            if v.receipts
            else []
        )
        delay = self.rng.lognormvariate(math.log(self.p.reply_median_s), self.p.reply_sigma)
        if v.state is not VolunteerState.IDLE:
            # Busy (or off duty and the phone still rang): a quick no.
            self.declines += 1
            return [*out, self._out(vid, "reply", {"alert_id": alert_id, "answer": "decline"})]
        v.state = VolunteerState.DECIDING
        v.alert_id, v.incident_id = alert_id, incident_id
        lat, lon = alert.get("lat"), alert.get("lon")
        v.target = None
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            v.target = (float(lat), float(lon))
        v.reply_at = now + delay
        v.will_accept = v.target is not None and self.rng.random() < self.p.acceptance
        v.will_arrive = self.rng.random() < self.p.arrive_share
        return out

    def on_assignment(self, vid: str, msg: Mapping[str, Any], now: float) -> list[Outbound]:
        v = self.volunteers.get(vid)
        if v is None or msg.get("incident_id") != v.incident_id or v.incident_id is None:
            return []
        action = msg.get("action")
        if action == "go" and v.state is VolunteerState.WAITING and v.target is not None:
            self.goes += 1
            v.state = VolunteerState.TRAVELLING
            v.travelled_m = 0.0
            if not v.will_arrive:
                distance = haversine_m(v.lat, v.lon, *v.target)
                v.stop_after_m = distance * self.rng.uniform(0.2, 0.8)
            v.next_location_at = now  # report at once: the control room watches them move
            return []
        if action == "stand_down" and v.state is not VolunteerState.OFF_DUTY:
            self.stand_downs += 1
            v.state = VolunteerState.IDLE
            self._clear_call(v)
        return []

    # ------------------------------------------------------------------ time

    def step(self, now: float) -> list[Outbound]:
        """Advance everyone to ``now``; the messages that this produces."""
        dt = max(0.0, now - self._last)
        self._last = now
        out: list[Outbound] = []
        for v in self.volunteers.values():
            self._step_one(v, now, dt, out)
        return out

    def _step_one(self, v: _Volunteer, now: float, dt: float, out: list[Outbound]) -> None:
        state = v.state
        if state is VolunteerState.OFF_DUTY:
            if now >= v.duty_change_at:
                v.state = VolunteerState.IDLE
                v.duty_change_at = now + self.rng.expovariate(1.0 / self.p.mean_on_duty_s)
                v.next_location_at = now + self.p.location_every_s
                out.append(self._status(v))
            return
        if state is VolunteerState.OFFLINE:
            if now >= v.duty_change_at:  # the phone is back
                v.state = VolunteerState.IDLE
                v.duty_change_at = now + self.rng.expovariate(1.0 / self.p.mean_on_duty_s)
                v.dropout_at = now + self.rng.expovariate(1.0 / self.p.dropout_mean_s)
                v.next_location_at = now + self.p.location_every_s
                out.append(self._status(v))
            return
        if state is VolunteerState.IDLE:
            if now >= v.dropout_at:  # no signal, battery, app killed: the will says offline
                v.state = VolunteerState.OFFLINE
                v.duty_change_at = now + self.rng.expovariate(1.0 / self.p.offline_mean_s)
                out.append(self._status(v))
                return
            if now >= v.duty_change_at:
                v.state = VolunteerState.OFF_DUTY
                v.duty_change_at = now + self.rng.expovariate(1.0 / self.p.mean_off_duty_s)
                out.append(self._status(v))
                return
            self._wander(v, dt)
        elif state is VolunteerState.DECIDING:
            if now >= v.reply_at and v.alert_id is not None:
                answer = "accept" if v.will_accept else "decline"
                out.append(self._out(v.id, "reply", {"alert_id": v.alert_id, "answer": answer}))
                if v.will_accept:
                    self.accepts += 1
                    v.state, v.waiting_since = VolunteerState.WAITING, now
                else:
                    self.declines += 1
                    v.state = VolunteerState.IDLE
                    self._clear_call(v)
        elif state is VolunteerState.WAITING:
            if now - v.waiting_since > self.p.answer_wait_s:  # the answer never came
                v.state = VolunteerState.IDLE
                self._clear_call(v)
        elif state is VolunteerState.TRAVELLING:
            self._travel(v, now, dt, out)
            if v.state is not VolunteerState.TRAVELLING:
                return  # arrived (location already sent) or stopped
        interval = (
            self.p.travel_location_every_s
            if v.state is VolunteerState.TRAVELLING
            else self.p.location_every_s
        )
        if now >= v.next_location_at:
            out.append(self._location(v))
            v.next_location_at = now + interval

    def _wander(self, v: _Volunteer, dt: float) -> None:
        if dt <= 0.0:
            return
        v.heading += self.rng.gauss(0.0, 0.5 * math.sqrt(dt))
        step = self.p.wander_mps * dt
        lat, lon = _move(v.lat, v.lon, step * math.cos(v.heading), step * math.sin(v.heading))
        if self.area.contains(lat, lon):
            v.lat, v.lon = lat, lon
        else:
            v.heading += math.pi  # the district's edge: turn back

    def _travel(self, v: _Volunteer, now: float, dt: float, out: list[Outbound]) -> None:
        assert v.target is not None
        assert v.incident_id is not None
        remaining = haversine_m(v.lat, v.lon, *v.target)
        step = min(remaining, v.speed_mps / self.p.circuity * dt)
        if not v.will_arrive:
            step = min(step, max(0.0, v.stop_after_m - v.travelled_m))
        if remaining > 0.0 and step > 0.0:
            f = step / remaining
            v.lat += (v.target[0] - v.lat) * f
            v.lon += (v.target[1] - v.lon) * f
            v.travelled_m += step
        if v.will_arrive and haversine_m(v.lat, v.lon, *v.target) <= self.p.arrival_radius_m:
            v.state = VolunteerState.ON_SCENE
            self.arrivals += 1
            out.append(self._location(v))
            out.append(self._out(v.id, "arrived", {"incident_id": v.incident_id}))
            v.next_location_at = now + self.p.location_every_s
        elif not v.will_arrive and v.travelled_m >= v.stop_after_m:
            v.state = VolunteerState.STOPPED
            self.gave_up += 1
            out.append(self._location(v))
            v.next_location_at = now + self.p.location_every_s


class Fleet:
    """N simulated volunteers on one MQTT connection; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        url: str,
        root: str,
        area: ServiceArea,
        n: int,
        seed: int = 0,
        acceptance: float = 0.35,
        *,
        time_scale: float = 1.0,
        reply_median_s: float = 15.0,
        arrive_share: float = 0.72,
        circuity: float = 1.3,
        near: tuple[float, float] | None = None,
        spread_m: float = 600.0,
        id_prefix: str = "sim",
        mqtt_protocol: int = 5,
        tick_s: float = 0.5,
        params: FleetParams | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.username, self.password = parts.username, parts.password
        self.root = root
        self.time_scale = time_scale
        self.tick_s = tick_s
        self.mqtt_protocol = mqtt_protocol
        self.seed = seed
        self.ready = asyncio.Event()  # connected, subscribed, on duty
        rng = random.Random(seed)
        params = params or FleetParams(
            acceptance=acceptance,
            reply_median_s=reply_median_s,
            arrive_share=arrive_share,
            circuity=circuity,
        )
        place = near_point(area, near[0], near[1], spread_m) if near is not None else None
        self.model = FleetModel(area, n, rng, root, params, place=place, id_prefix=id_prefix)
        self._t0 = time.monotonic()

    # The counters, as the brief's callers read them.
    @property
    def alerts_received(self) -> int:
        return self.model.alerts_received

    @property
    def accepts(self) -> int:
        return self.model.accepts

    @property
    def arrivals(self) -> int:
        return self.model.arrivals

    @property
    def stats(self) -> FleetStats:
        return self.model.stats

    def _now(self) -> float:
        """Simulated seconds since the fleet was made."""
        return (time.monotonic() - self._t0) * self.time_scale

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=f"sim-fleet-{self.root}-{self.seed}-{random.getrandbits(24):06x}"[:64],
            protocol=(
                aiomqtt.ProtocolVersion.V5
                if self.mqtt_protocol == 5
                else aiomqtt.ProtocolVersion.V311
            ),
            timeout=10,
            keepalive=30,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # One client speaks for hundreds of phones: dozens of publishes in flight are normal.
        client.pending_calls_threshold = 200
        return client

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (again, after a loss), put everyone on duty and play until ``stop``."""
        backoff = 0.2
        while not stop.is_set():
            try:
                async with self._client() as client:
                    for leaf in ("alert", "assignment"):
                        await client.subscribe(f"{self.root}/volunteers/+/{leaf}", 1, timeout=10)
                    await self._publish(client, self.model.announce())
                    self.ready.set()
                    backoff = 0.2
                    async with asyncio.TaskGroup() as tg:
                        tasks = [
                            tg.create_task(self._receive(client), name="fleet-receive"),
                            tg.create_task(self._drive(client), name="fleet-drive"),
                        ]
                        await stop.wait()
                        for task in tasks:
                            task.cancel()
                    # Leaving: say so, rather than linger as "available" until the TTL.
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        async with asyncio.timeout(5):
                            await self._publish(client, self.model.leave())
                    return
            except* aiomqtt.MqttError as group:
                self.ready.clear()
                log.warning("fleet: MQTT connection lost (%s); retrying", group.exceptions[0])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _publish(self, client: aiomqtt.Client, messages: Sequence[Outbound]) -> None:
        # A few at a time: the client warns (and the broker's in-flight window fills)
        # when hundreds of QoS 1 publishes wait at once, as at start and at leaving.
        for i in range(0, len(messages), _PUBLISH_BATCH):
            await asyncio.gather(
                *(
                    client.publish(m.topic, m.payload, qos=m.qos, timeout=10)
                    for m in messages[i : i + _PUBLISH_BATCH]
                )
            )

    async def _drive(self, client: aiomqtt.Client) -> None:
        tick = max(self.tick_s / self.time_scale, 0.02)
        while True:
            await self._publish(client, self.model.step(self._now()))
            await asyncio.sleep(tick)

    async def _receive(self, client: aiomqtt.Client) -> None:
        prefix = f"{self.root}/volunteers/"
        async for message in client.messages:
            topic = message.topic.value
            if not topic.startswith(prefix):
                continue
            vid, _, leaf = topic[len(prefix) :].partition("/")
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            now = self._now()
            if leaf == "alert":
                out = self.model.on_alert(vid, body, now)
            elif leaf == "assignment":
                out = self.model.on_assignment(vid, body, now)
            else:
                continue
            await self._publish(client, out)
