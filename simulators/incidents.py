"""Simulated incident reports: a Poisson stream (or a replayed file) sent over MQTT.

The pure parts, testable without a broker: the kind mix (``KIND_MIX``), the population
density model that places incidents and volunteers (``DensityModel``), Poisson arrival
times (``arrival_times``), report bodies (``make_report``) and the replay file parser
(``load_replay``). ``IncidentStream`` is the asyncio shell: it publishes each report on
``<root>/incidents/report`` and, as PROTOCOL.md asks of every reporter, sends the same
report with the same ``id`` again until its retained ``incidents/{id}/state`` is seen.

Everything random takes a ``random.Random``: a seed gives the same kinds, places and
gaps on every run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from geo.area import ServiceArea
from geo.distance import haversine_m

__all__ = [
    "KIND_MIX",
    "OLD_TOWN",
    "DensityModel",
    "IncidentStream",
    "ScheduledReport",
    "arrival_times",
    "load_replay",
    "make_report",
    "read_replay_file",
    "sample_kind",
]

log = logging.getLogger(__name__)

# The mix of incident kinds, as shares of all reports. An ASSUMPTION for simulation, not
# official data: it follows the shape of what community volunteer schemes in ageing
# old-town districts report (falls and medical emergencies of elderly residents are
# the bulk of calls; neighbour disputes and security next; lost persons, often elderly
# people with dementia, are regular; fires are rare and mostly handled by the fire
# service). Tune it with the district's own call records when they are available.
KIND_MIX: Mapping[str, float] = {
    "fall": 0.30,
    "medical": 0.25,
    "cardiac_arrest": 0.03,
    "dispute": 0.15,
    "security": 0.10,
    "lost_person": 0.08,
    "other": 0.07,
    "fire": 0.02,
}

_DESCRIPTIONS: Mapping[str, str] = {
    "fall": "elderly resident fell at home, conscious",
    "medical": "resident feels unwell, dizzy and short of breath",
    "cardiac_arrest": "person collapsed, not breathing normally",
    "dispute": "neighbours arguing loudly in the stairwell",
    "security": "suspicious person trying door handles",
    "lost_person": "elderly man with dementia left home, not back",
    "other": "resident asks for help, situation unclear",
    "fire": "smoke from a kitchen window",
}

# The historic core of Shangcheng (小营巷 / 鼓楼, west of the district near the lake):
# the densest housing and the oldest residents.
OLD_TOWN = (30.2560, 120.1700)


def sample_kind(rng: random.Random, mix: Mapping[str, float] = KIND_MIX) -> str:
    """One kind drawn from ``mix`` (shares need not sum to 1)."""
    kinds = list(mix)
    return rng.choices(kinds, weights=[mix[k] for k in kinds])[0]


def arrival_times(
    rate_per_hour: float, rng: random.Random, start_s: float = 0.0
) -> Iterator[float]:
    """Offsets in seconds of a Poisson process of ``rate_per_hour`` arrivals, forever."""
    if not (math.isfinite(rate_per_hour) and rate_per_hour > 0):
        raise ValueError(f"rate_per_hour must be a finite number > 0, got {rate_per_hour!r}")
    rate_per_s = rate_per_hour / 3600.0
    t = start_s
    while True:
        t += rng.expovariate(rate_per_s)
        yield t


@dataclass(frozen=True, slots=True)
class DensityModel:
    """Where people live, as a weight per grid cell of the service area.

    An ASSUMPTION, stated plainly: no population grid of the district is bundled, so
    the weight of a cell falls off with its distance ``d`` from the old town,
    ``floor + exp(-d / scale_m)``, times the share of a full cell that lies inside the
    area (cells clipped by the outline hold fewer people). With the defaults the old
    town is about six times as dense as the district's eastern edge, which is roughly
    what the district's built-up pattern shows; replace ``weights`` with census counts
    per cell when there are any.
    """

    area: ServiceArea
    centre: tuple[float, float] = OLD_TOWN
    scale_m: float = 2500.0
    floor: float = 0.15
    weights: tuple[float, ...] = field(init=False)
    _cumulative: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        full = max(c.polygon.area for c in self.area.cells)
        weights = tuple(
            (self.floor + math.exp(-haversine_m(c.lat, c.lon, *self.centre) / self.scale_m))
            * (c.polygon.area / full)
            for c in self.area.cells
        )
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "_cumulative", tuple(itertools.accumulate(weights)))

    def relative_density(self, lat: float, lon: float) -> float:
        """Density at a point relative to the densest place: 1 at the old town, ~0.15 far out."""
        d = haversine_m(lat, lon, *self.centre)
        return (self.floor + math.exp(-d / self.scale_m)) / (self.floor + 1.0)

    def is_dense(self, lat: float, lon: float) -> bool:
        """Old-town density: narrow lanes, crowds, slower going on foot."""
        return self.relative_density(lat, lon) >= 0.5

    def sample(self, rng: random.Random) -> tuple[float, float]:
        """A point inside the area: a cell by weight, then a uniform point within it."""
        total = self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, rng.random() * total)
        cell = self.area.cells[min(index, len(self.area.cells) - 1)]
        min_lon, min_lat, max_lon, max_lat = cell.polygon.bounds
        for _ in range(1000):
            lat = rng.uniform(min_lat, max_lat)
            lon = rng.uniform(min_lon, max_lon)
            if self.area.contains(lat, lon):
                return lat, lon
        return cell.lat, cell.lon  # a sliver of a cell: its representative point is inside


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_report(
    rng: random.Random,
    incident_id: str,
    density: DensityModel,
    now: float,
    mix: Mapping[str, float] = KIND_MIX,
) -> dict[str, Any]:
    """One report body as a hotline would send it (priority and skills left to the engine)."""
    kind = sample_kind(rng, mix)
    lat, lon = density.sample(rng)
    return {
        "id": incident_id,
        "kind": kind,
        "lat": round(lat, 6),
        "lon": round(lon, 6),
        "address": f"simulated, cell near ({lat:.4f}, {lon:.4f})",
        "description": _DESCRIPTIONS.get(kind, ""),
        "reported_at": _iso(now),
    }


@dataclass(frozen=True, slots=True)
class ScheduledReport:
    """A report body and when to send it, in seconds after the replay starts."""

    at_s: float
    body: Mapping[str, Any]


def load_replay(lines: Iterable[str], source: str = "replay") -> list[ScheduledReport]:
    """Parse JSON lines: one report object per line, with an optional ``at_s`` offset.

    A line without ``at_s`` goes out right after the one before it. Blank lines and
    lines starting with ``#`` are skipped. ``at_s`` is removed from the body; a report
    without ``id`` is sent as it is (the engine assigns one) but cannot be retried, as
    there is no id to match the receipt with. Raises ValueError naming the line.
    """
    out: list[ScheduledReport] = []
    last = 0.0
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}:{number}: not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError(f"{source}:{number}: a report must be a JSON object")
        at = body.pop("at_s", None)
        if at is None:
            at = last
        elif isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise ValueError(f"{source}:{number}: 'at_s' must be a number of seconds, got {at!r}")
        elif at < last:
            raise ValueError(f"{source}:{number}: 'at_s' {at} goes back in time (before {last})")
        last = float(at)
        out.append(ScheduledReport(last, body))
    return out


@dataclass
class StreamStats:
    """What the stream has done so far."""

    sent: int = 0  # reports sent for the first time
    resent: int = 0  # the same report again, receipt not seen yet
    receipts: int = 0  # reports whose retained state was seen


class IncidentStream:
    """Report incidents over MQTT: a Poisson stream, or the reports of a replay file.

    ``states`` holds the latest retained state seen for each reported incident (the
    demo's figures come from there).
    """

    def __init__(
        self,
        url: str,
        root: str,
        area: ServiceArea,
        *,
        rate_per_hour: float = 120.0,
        seed: int = 0,
        limit: int | None = None,
        replay: Iterable[ScheduledReport] | None = None,
        id_prefix: str | None = None,
        receipt_timeout_s: float = 3.0,
        time_scale: float = 1.0,
        mqtt_protocol: int = 5,
        density: DensityModel | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.root = root
        self.rng = random.Random(seed)
        self.density = density or DensityModel(area)
        self.rate_per_hour = rate_per_hour
        self.limit = limit
        self.replay = list(replay) if replay is not None else None
        # Ids are idempotency keys kept for days: a new prefix per run keeps two runs
        # against the same Redis apart.
        self.id_prefix = id_prefix or f"sim{int(clock()):x}"
        self.receipt_timeout_s = receipt_timeout_s
        self.time_scale = time_scale
        self.mqtt_protocol = mqtt_protocol
        self.clock = clock
        self.stats = StreamStats()
        self.states: dict[str, dict[str, Any]] = {}
        self.reported_at: dict[str, float] = {}  # local clock when first sent
        self._pending: dict[str, tuple[bytes, float]] = {}  # id -> payload, resend at
        self._seq = 0

    @property
    def pending(self) -> int:
        """Reports sent whose receipt has not been seen yet."""
        return len(self._pending)

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"sim-incidents-{self.id_prefix}-{self.rng.getrandbits(24):06x}",
            protocol=(
                aiomqtt.ProtocolVersion.V5
                if self.mqtt_protocol == 5
                else aiomqtt.ProtocolVersion.V311
            ),
            timeout=10,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    def _schedule(self) -> Iterator[tuple[float, dict[str, Any] | None]]:
        """(offset in simulated seconds, body or None for "make one now")."""
        if self.replay is not None:
            for item in self.replay:
                yield item.at_s, dict(item.body)
            return
        for count, at in enumerate(arrival_times(self.rate_per_hour, self.rng)):
            if self.limit is not None and count >= self.limit:
                return
            yield at, None

    async def run(self, stop: asyncio.Event) -> None:
        """Send reports (and keep following their states) until ``stop`` is set."""
        schedule = self._schedule()
        started = time.monotonic()
        upcoming = next(schedule, None)
        while not stop.is_set():
            try:
                async with self._client() as client:
                    await client.subscribe(f"{self.root}/incidents/+/state", 1, timeout=10)
                    async with asyncio.TaskGroup() as tg:
                        receiver = tg.create_task(self._receive(client), name="incidents-receipts")
                        while not stop.is_set():
                            now_real = time.monotonic()
                            sim_elapsed = (now_real - started) * self.time_scale
                            while upcoming is not None and upcoming[0] <= sim_elapsed:
                                await self._send_new(client, upcoming[1])
                                upcoming = next(schedule, None)
                            await self._resend_due(client, now_real)
                            wait = 0.2
                            if upcoming is not None:
                                wait = min(wait, (upcoming[0] - sim_elapsed) / self.time_scale)
                            with contextlib.suppress(TimeoutError):  # the loop's sleep
                                await asyncio.wait_for(stop.wait(), max(wait, 0.005))
                        receiver.cancel()
                    return
            except* aiomqtt.MqttError as group:
                log.warning(
                    "incident stream: MQTT connection lost (%s); retrying", group.exceptions
                )
                # Everything not yet receipted is sent again after reconnecting.
                self._pending = {k: (p, 0.0) for k, (p, _) in self._pending.items()}
                await asyncio.sleep(0.5)

    async def _send_new(self, client: aiomqtt.Client, body: dict[str, Any] | None) -> None:
        self._seq += 1
        if body is None:
            body = make_report(
                self.rng, f"{self.id_prefix}-{self._seq:05d}", self.density, self.clock()
            )
        payload = json.dumps(body, ensure_ascii=False).encode()
        incident_id = body.get("id")
        await client.publish(f"{self.root}/incidents/report", payload, qos=1, timeout=10)
        self.stats.sent += 1
        if isinstance(incident_id, str):
            self.reported_at[incident_id] = self.clock()
            self._pending[incident_id] = (payload, time.monotonic() + self.receipt_timeout_s)
            log.debug("incident=%s reported", incident_id)

    async def _resend_due(self, client: aiomqtt.Client, now: float) -> None:
        for incident_id, (payload, due) in list(self._pending.items()):
            if due <= now:
                # The same report, byte for byte, with the same id (the receipt rule).
                await client.publish(f"{self.root}/incidents/report", payload, qos=1, timeout=10)
                self.stats.resent += 1
                self._pending[incident_id] = (payload, now + self.receipt_timeout_s)
                log.info("incident=%s no receipt yet; reported again", incident_id)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray) or not payload:
                continue  # a cleared retained state
            try:
                state = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(state, dict) or not isinstance(state.get("id"), str):
                continue
            incident_id = state["id"]
            if incident_id not in self.reported_at:
                continue  # someone else's incident (or an earlier run's)
            if self._pending.pop(incident_id, None) is not None:
                self.stats.receipts += 1
            self.states[incident_id] = state


def read_replay_file(path: str | Path) -> list[ScheduledReport]:
    """``load_replay`` of a file."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        return load_replay(f, source=str(path))
