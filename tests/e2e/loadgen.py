"""Load for the fault, soak and cluster tests: reporters that retry, a fleet that accepts,
a resolver, and the checks that nothing was lost, duplicated or double-booked.

Like e2e_harness, nothing here imports the engine: it speaks MQTT (paho-mqtt, in its own
network thread, reconnecting and resubscribing on its own so that it survives a broker
restart), HTTP (urllib) and reads Redis directly only to check the engine's promises.

- Reporters send each report with its own ``id`` and, as PROTOCOL.md asks, send it
  again every ``resend_s`` until its retained ``incidents/{id}/state`` (the receipt)
  has been seen.
- The fleet answers every alert with ``accept`` (so several volunteers race for one
  incident and the claims are exercised), and sends a location every so often.
- The resolver resolves an incident over HTTP ``resolve_after_s`` after it is assigned,
  which frees its responder for the next one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import redis
from e2e_harness import TOKEN, http, offset
from paho.mqtt.enums import CallbackAPIVersion
from servers import parse_mqtt_url

CENTER = (30.2800, 120.2000)  # with 1.2 km around it inside the service area
ENDED = ("resolved", "cancelled")


class RobustClient:
    """A paho client that reconnects quickly and resubscribes after every (re)connect."""

    def __init__(
        self,
        url: str,
        filters: Iterable[str],
        on_message: Callable[[str, bytes, bool], None],
        name: str,
    ) -> None:
        host, port = parse_mqtt_url(url)
        self.filters = list(filters)
        self._handler = on_message
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"load-{name}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        # Reports and replies queued while the broker is away are sent on reconnect.
        self.client.max_queued_messages_set(100_000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=5)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise AssertionError(f"load client {name} could not connect to {url}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        for f in self.filters:
            client.subscribe(f, 1)
        self.connected.set()

    def _on_disconnect(self, *args: Any) -> None:
        self.connected.clear()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._handler(msg.topic, bytes(msg.payload), bool(msg.retain))

    def publish(self, topic: str, body: Any, qos: int = 1) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(topic, data, qos=qos)  # never waits: the broker may be away

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@dataclass
class LoadStats:
    sent: int = 0  # distinct reports
    resends: int = 0
    receipts: int = 0
    alerts: int = 0
    accepts: int = 0
    gos: int = 0
    resolved: int = 0
    locations: int = 0
    receipt_latency_s: list[float] = field(default_factory=list)


class Load:
    """Reporters, a fleet and a resolver under one topic root, in background threads.

    ``bases`` returns the HTTP base URLs of the engines that may be alive (the resolver
    tries each in turn).
    """

    def __init__(
        self,
        mqtt_url: str,
        root: str,
        bases: Callable[[], list[str]],
        *,
        volunteers: int = 30,
        rate: float = 2.0,
        resend_s: float = 2.0,
        resolve_after_s: float = 1.0,
        location_rate: float = 0.0,
        radius_m: float = 800.0,
        seed: int = 7,
        kind: str = "medical",
    ) -> None:
        self.root = root
        self.bases = bases
        self.rate = rate
        self.resend_s = resend_s
        self.resolve_after_s = resolve_after_s
        self.location_rate = location_rate
        self.radius_m = radius_m
        self.kind = kind
        self.rng = random.Random(seed)
        self.stats = LoadStats()
        self.lock = threading.Lock()
        self.sent: dict[str, dict[str, Any]] = {}  # id -> body
        self.first_sent: dict[str, float] = {}
        self.last_sent: dict[str, float] = {}
        self.receipts: dict[str, float] = {}  # id -> monotonic time of the first receipt
        self.states: dict[str, dict[str, Any]] = {}  # id -> latest public state seen
        self.alerts_by_incident: Counter[str] = Counter()
        self.gos: dict[str, list[str]] = defaultdict(list)  # incident -> volunteers told go
        self.rejected: list[dict[str, Any]] = []
        self._assigned_at: dict[str, float] = {}
        self._resolved: set[str] = set()
        self.stop_event = threading.Event()
        self.paused = threading.Event()  # set: no new reports (resends go on)
        self.volunteers = {
            f"lv{i:04d}-{uuid.uuid4().hex[:4]}": offset(
                *CENTER, self.rng.uniform(50, radius_m), self.rng.uniform(0, 360)
            )
            for i in range(volunteers)
        }
        self.client = RobustClient(
            mqtt_url,
            [
                f"{root}/incidents/+/state",
                f"{root}/volunteers/+/alert",
                f"{root}/volunteers/+/assignment",
                f"{root}/rejected",
            ],
            self._on_message,
            "load",
        )
        self._threads: list[threading.Thread] = []
        self.probe_volunteer = f"probe-{uuid.uuid4().hex[:6]}"

    # ---- lifecycle

    def start(self) -> Load:
        for vid, (lat, lon) in self.volunteers.items():
            self.client.publish(
                self.t("volunteers", vid, "status"),
                {"status": "available", "skills": ["first_aid"], "mode": "walk", "lat": lat,
                 "lon": lon},
            )  # fmt: skip
        # The probe's own volunteer: only it has the skill a probe report needs, so a
        # backlog of ordinary reports cannot keep it busy.
        lat, lon = CENTER
        self.client.publish(
            self.t("volunteers", self.probe_volunteer, "status"),
            {"status": "available", "skills": ["mediation"], "mode": "walk", "lat": lat,
             "lon": lon},
        )  # fmt: skip
        for target, name in (
            (self._report_loop, "reporter"),
            (self._resolve_loop, "resolver"),
            (self._location_loop, "locations"),
        ):
            thread = threading.Thread(target=target, name=f"load-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(10)
        self.client.close()

    def t(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # ---- inbound

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parts = topic.split("/")
        if not payload:
            return
        try:
            body = json.loads(payload)
        except ValueError:
            return
        now = time.monotonic()
        if parts[-1] == "state":
            iid = parts[-2]
            with self.lock:
                self.states[iid] = body
                if iid in self.sent and iid not in self.receipts:
                    self.receipts[iid] = now
                    self.stats.receipts += 1
                    self.stats.receipt_latency_s.append(now - self.first_sent[iid])
                if body.get("state") in ("assigned", "on_scene"):
                    self._assigned_at.setdefault(iid, now)
        elif parts[-1] == "alert" and not retained:
            vid = parts[-2]
            with self.lock:
                self.stats.alerts += 1
                self.alerts_by_incident[body["incident_id"]] += 1
                self.stats.accepts += 1
            self.client.publish(
                self.t("volunteers", vid, "reply"),
                {"alert_id": body["alert_id"], "answer": "accept"},
            )
        elif parts[-1] == "assignment" and body.get("action") == "go":
            with self.lock:
                self.stats.gos += 1
                self.gos[body["incident_id"]].append(parts[-2])
        elif parts[-1] == "rejected":
            with self.lock:
                self.rejected.append(body)

    # ---- loops

    def report_body(self, iid: str, kind: str) -> dict[str, Any]:
        lat, lon = offset(*CENTER, self.rng.uniform(0, self.radius_m), self.rng.uniform(0, 360))
        return {"id": iid, "kind": kind, "lat": round(lat, 6), "lon": round(lon, 6)}

    def send_report(self, iid: str | None = None, kind: str | None = None) -> str:
        iid = iid or f"ld-{uuid.uuid4().hex[:12]}"
        body = self.report_body(iid, kind or self.kind)
        now = time.monotonic()
        with self.lock:
            self.sent[iid] = body
            self.first_sent[iid] = self.last_sent[iid] = now
            self.stats.sent += 1
        self.client.publish(self.t("incidents", "report"), body)
        return iid

    def _report_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now >= next_at and not self.paused.is_set() and self.rate > 0:
                self.send_report()
                next_at += self.rng.expovariate(self.rate)
                next_at = max(next_at, now - 1.0)  # no burst to catch up after a pause
            with self.lock:
                due = [
                    i
                    for i, at in self.last_sent.items()
                    if i not in self.receipts and now - at >= self.resend_s
                ]
                for i in due:
                    self.last_sent[i] = now
                    self.stats.resends += 1
            for i in due:
                self.client.publish(self.t("incidents", "report"), self.sent[i])
            time.sleep(0.02)

    def _resolve_loop(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic()
            with self.lock:
                due = [
                    i
                    for i, at in self._assigned_at.items()
                    if i not in self._resolved and now - at >= self.resolve_after_s
                ]
            for iid in due:
                if self._http_end(iid, "resolve"):
                    with self.lock:
                        self._resolved.add(iid)
                        self.stats.resolved += 1
            time.sleep(0.1)

    def _http_end(self, iid: str, action: str) -> bool:
        for base in self.bases():
            with contextlib.suppress(OSError):
                result = http(
                    "POST", f"{base}/api/incidents/{iid}/{action}", token=TOKEN, timeout=3
                )
                # 409: already ended (by an earlier try whose answer we lost): fine.
                if result.status in (200, 409):
                    return True
        return False

    def _location_loop(self) -> None:
        if self.location_rate <= 0:
            return
        vids = list(self.volunteers)
        while not self.stop_event.is_set():
            vid = self.rng.choice(vids)
            lat, lon = self.volunteers[vid]
            lat, lon = offset(lat, lon, self.rng.uniform(0, 5), self.rng.uniform(0, 360))
            self.volunteers[vid] = (lat, lon)
            self.client.publish(
                self.t("volunteers", vid, "location"), {"lat": lat, "lon": lon}, qos=0
            )
            self.stats.locations += 1
            time.sleep(1.0 / self.location_rate)

    # ---- waiting and ending

    def wait_receipts(self, timeout: float) -> list[str]:
        """Wait until every report sent has its receipt; returns those still without one."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                missing = [i for i in self.sent if i not in self.receipts]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.1)

    def end_all(self, ids: Iterable[str]) -> None:
        """Resolve (or cancel) every incident given; retried until the engine takes it."""
        for iid in ids:
            with self.lock:
                if self.states.get(iid, {}).get("state") in ENDED:
                    continue  # already ended (perhaps by an instance that is gone now)
            deadline = time.monotonic() + 10
            while not self._http_end(iid, "resolve"):
                assert time.monotonic() < deadline, f"could not end {iid}"
                time.sleep(0.2)

    def probe(self, timeout: float = 10.0) -> tuple[str, float]:
        """A fresh report, resent until alerted; (id, seconds from now to its first alert)."""
        t0 = time.monotonic()
        # A dispute needs mediation, which only the probe volunteer has.
        iid = self.send_report(f"probe-{uuid.uuid4().hex[:10]}", "dispute")
        while time.monotonic() - t0 < timeout:
            with self.lock:
                if self.alerts_by_incident[iid]:
                    return iid, time.monotonic() - t0
            time.sleep(0.01)
        raise AssertionError(f"probe {iid} not alerted within {timeout}s")


# --------------------------------------------------------------------------- checks


@dataclass
class Audit:
    incidents: dict[str, dict[str, Any]]  # id -> record, from Redis
    events: list[tuple[str, dict[bytes, bytes]]]
    claims: dict[str, str]  # volunteer -> incident

    @property
    def reported(self) -> Counter[str]:
        return Counter(
            f[b"incident_id"].decode() for _, f in self.events if f[b"type"] == b"reported"
        )

    def double_bookings(self) -> list[str]:
        """Volunteers assigned to a second incident while the first had not ended.

        Walks the event log in order: an ``assigned`` commits a volunteer; a ``stood_down``
        of a responder (released on the way: enough on scene, or a faster one going)
        frees that one, the end of the incident (``resolved``/``cancelled``) every one.
        """
        committed: dict[str, str] = {}
        by_incident: dict[str, set[str]] = defaultdict(set)
        problems = []
        for eid, f in self.events:
            iid, kind = f[b"incident_id"].decode(), f[b"type"].decode()
            if kind == "assigned":
                vid = json.loads(f[b"data"])["volunteer_id"]
                other = committed.get(vid)
                if other is not None and other != iid:
                    problems.append(f"{vid}: assigned to {iid} at {eid} while committed to {other}")
                committed[vid] = iid
                by_incident[iid].add(vid)
            elif kind == "stood_down":
                vid = json.loads(f[b"data"])["volunteer_id"]
                if vid in by_incident[iid] and committed.get(vid) == iid:
                    by_incident[iid].discard(vid)
                    del committed[vid]
            elif kind in ENDED:
                for vid in by_incident.pop(iid, set()):
                    if committed.get(vid) == iid:
                        del committed[vid]
        return problems


def audit(redis_url: str, prefix: str) -> Audit:
    """Read what the engine stored under ``prefix`` (the topic root plus ':')."""
    with redis.Redis.from_url(redis_url, socket_timeout=10) as r:
        keys = [k.decode() for k in r.scan_iter(match=f"{prefix}inc:*", count=1000)]
        incidents = {}
        for key in keys:
            raw = r.get(key)
            if raw is not None:
                incidents[key.removeprefix(f"{prefix}inc:")] = json.loads(raw)
        events = [(eid.decode(), f) for eid, f in r.xrange(f"{prefix}events")]
        claims = {
            k.decode().removeprefix(f"{prefix}claim:"): (r.get(k) or b"").decode()
            for k in r.scan_iter(match=f"{prefix}claim:*", count=1000)
        }
    return Audit(incidents, events, claims)


def check_promises(load: Load, found: Audit, bases: list[str]) -> None:
    """Zero acknowledged incidents lost, zero duplicates, zero volunteers double-booked."""
    with load.lock:
        acknowledged = set(load.receipts)
        sent = set(load.sent)
    lost = sorted(acknowledged - set(found.incidents))
    assert not lost, f"{len(lost)} acknowledged incidents are not in Redis: {lost[:10]}"
    strangers = sorted(set(found.incidents) - sent)
    assert not strangers, f"incidents nobody reported (duplicates?): {strangers[:10]}"
    twice = {i: n for i, n in found.reported.items() if n != 1}
    assert not twice, f"incidents reported more or less than once in the event log: {twice}"
    missing_events = sorted(set(found.incidents) - set(found.reported))
    assert not missing_events, f"incidents with no 'reported' event: {missing_events[:10]}"
    for iid in sorted(acknowledged)[:: max(1, len(acknowledged) // 25)]:
        # Several instances: each serves the incidents it owns.
        results = [http("GET", f"{base}/api/incidents/{iid}") for base in bases]
        assert any(r.status == 200 for r in results), (iid, [r.status for r in results])
    problems = found.double_bookings()
    assert not problems, "volunteers committed to two incidents:\n" + "\n".join(problems[:20])
    for iid in load.gos:
        assert iid in found.incidents, f"'go' sent for {iid}, which is not stored"
    # Claims left in Redis must each point at an incident that has not ended.
    for vid, iid in found.claims.items():
        rec = found.incidents.get(iid)
        assert rec is not None, f"claim {vid} -> {iid}: no such incident"
        assert rec.get("state") not in ENDED, f"claim {vid} -> {iid} left after it ended"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
