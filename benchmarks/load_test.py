"""End-to-end load test of a running engine, over its real broker and Redis.

It speaks only the public protocol (MQTT + HTTP), like any outside load tester:

1. registers N volunteers (``status available`` with a position spread over the
   service area, loaded with geo/area.py from the engine's configuration) and waits
   until the engine's ``dispatch_available_volunteers`` gauge has them all;
2. streams their locations at L/s (QoS 0) from separate processes, so that
   generating the load is not what limits it;
3. reports incidents at I/s (QoS 1, unique ids, kind ``medical`` at random points in
   the area) and measures, at the client, from the report's publish to the first
   ``<root>/volunteers/+/alert`` for that incident (p50, p99, p99.9, max); an incident
   with no alert within ``--alert-timeout`` is lost;
4. counts ``<root>/rejected`` messages, the location updates the engine ingested (its
   ``dispatch_messages_received_total{type="LocationUpdate"}`` before and after), and
   the engine's CPU and memory (psutil, when the engine's pid is known);
5. says where the 20 slowest reports waited, from the engine's own time of each
   (``received_at`` in ``GET /api/incidents/{id}``): until the engine took them up (the
   broker, the socket, the engine's queue), and from there to the phone (deciding,
   storing, publishing, the broker), medians in ms.

``--gateways N`` (with --start-engine or --start-servers) starts the engine with
``[gateway] enabled = true`` and N ``dispatch gateway`` processes beside it
(docs/deployment.md, "Location gateways"); the gateways' CPU (their sum, % of one
core) is reported apart from the engine's.

``--push F`` registers a Web Push subscription for that share of the volunteers (one
browser key for all; the engine encrypts every push as for a phone) pointing at a
stand-in push service this script runs on the loopback (an engine started here gets
``[push] allow_loopback``). It reports the pushes the service got against those due (one
per alert to a subscribed volunteer), each one's delay after its alert reached this
script over MQTT, and the engine's own count. ``--pushers N`` (with --start-engine or
--start-servers) starts N ``dispatch pusher`` processes and the engine with ``[push]
separate = true`` (docs/deployment.md, "Push workers"); their CPU is reported apart.

The pool must not drain: by default the first alerted volunteer of each incident
accepts (the incident is then filled and the other alerted volunteers are stood down,
back in the pool: an engine this script starts runs without backups, and alerts
volunteers however far within the alert radius, ``LOAD_POLICY``, so that every incident
measures the report-to-alert path even with few volunteers spread thin), so the pool
shrinks by one volunteer per incident (I x duration;
6,000 of 100,000 for a 60 s run at 100/s). ``--answer decline`` declines every alert
instead (which makes the engine send further waves: more load), ``--answer ignore``
leaves the alerts to expire (the alerted volunteers are held until then).

``--ramp`` raises the load in steps (each step multiplies L and I) until p99 latency
or loss crosses the thresholds, and reports the last step that held (the saturation
point). Examples (see benchmarks/RESULTS.md for figures)::

    # everything throwaway: mosquitto, Redis and the engine started here
    .venv/bin/python benchmarks/load_test.py --start-servers --volunteers 10000 \\
        --location-rate 1000 --incident-rate 20 --duration 20 --json out.json

    # against an engine already running (its pid for CPU and memory)
    .venv/bin/python benchmarks/load_test.py --mqtt mqtt://127.0.0.1:1883 \\
        --http http://127.0.0.1:8080 --engine-pid 1234 --volunteers 100000 ...
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
# The engine this script starts (when no --config is given): the first accept fills an
# incident, and nobody within the alert radius is too far to alert.
LOAD_POLICY = {
    "DISPATCH_POLICY_BACKUP_RESPONDERS": "0",
    "DISPATCH_POLICY_USEFUL_ETA_S": "100000",
}
if str(REPO) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(REPO))

from dispatch.config import load_config  # noqa: E402
from dispatch.localservers import free_port, parse_mqtt_url  # noqa: E402
from geo.area import ServiceArea  # noqa: E402

MODES = ("walk", "walk", "walk", "bike", "ebike")


# --------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def _nodelay(_client: Any, _userdata: Any, sock: Any) -> None:
    # Small QoS 1 messages both ways: Nagle's algorithm would add 40 ms to each.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def mqtt_client(url: str, name: str) -> mqtt.Client:
    host, port = parse_mqtt_url(url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"loadtest-{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    client.on_socket_open = _nodelay
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)  # unbounded: the pacing bounds it
    connected = threading.Event()
    client.on_connect = lambda *_a, **_k: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        raise SystemExit(f"load_test: cannot connect to the broker at {url}")
    return client


def homes(area: ServiceArea, n: int, seed: int) -> list[tuple[float, float]]:
    """N points uniform over the service area (the same for a given seed, in any process)."""
    rng = random.Random(seed)
    min_lon, min_lat, max_lon, max_lat = area.bounds
    out: list[tuple[float, float]] = []
    while len(out) < n:
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        if area.contains(lat, lon):
            out.append((lat, lon))
    return out


def http_get(base: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(base.rstrip("/") + path, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def where_waited(base: str, ids: Sequence[str], t: Tracker) -> dict[str, float] | None:
    """Where reports waited, from the engine's own time of each (``received_at`` of
    `GET /api/incidents/{id}`: when it took the report up, also the time its decision
    is stamped with) set beside when it was sent and when its first alert came: the
    median ms, over ``ids``, of the two legs (``to_engine``: the broker, the socket and
    the engine's queue; ``to_phone``: deciding, storing, publishing and the broker to
    the alerted phone). One machine, one clock. None if the engine does not say (a read
    token, an old engine)."""
    legs: dict[str, list[float]] = {"to_engine": [], "to_phone": []}
    for iid in ids:
        try:
            status, body = http_get(base, f"/api/incidents/{iid}?events=0")
            if status != 200:
                return None
            received = _unix(json.loads(body)["times"]["received_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        legs["to_engine"].append((received - t.sent_wall[iid]) * 1000)
        legs["to_phone"].append((t.first_alert_wall[iid] - received) * 1000)
    if not ids:
        return None
    return {leg: round(statistics.median(ms), 1) for leg, ms in legs.items()}


def _unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def histogram_bound(before: str, after: str, name: str, q: float) -> float | None:
    """The upper edge of the bucket holding quantile ``q`` of what was observed between
    two scrapes (Prometheus' own buckets: an upper bound, not an estimate)."""

    def buckets(text: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name + "_bucket":
                    edge = float(sample.labels["le"])
                    out[edge] = out.get(edge, 0.0) + sample.value
        return out

    b0, b1 = buckets(before), buckets(after)
    counts = sorted((edge, b1[edge] - b0.get(edge, 0.0)) for edge in b1)
    if not counts or counts[-1][1] <= 0:
        return None
    total = counts[-1][1]
    return next(edge for edge, n in counts if n >= q * total)


def scrape(base: str) -> str:
    status, body = http_get(base, "/metrics")
    if status != 200:
        raise SystemExit(f"load_test: GET {base}/metrics answered {status}")
    return body.decode()


# --------------------------------------------------------------------------- locations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


class RawPublisher:
    """A minimal MQTT 3.1.1 client that only publishes at QoS 0, its packets built here.

    Publishing at QoS 0 needs no state: CONNECT, then PUBLISH packets written many per
    system call, PINGREQ now and then, DISCONNECT. paho spends tens of microseconds of
    Python per message (the generator would be the bottleneck on a small machine); this
    about one.
    """

    def __init__(self, url: str, client_id: str, keepalive: int = 60) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 1883), timeout=10
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flags = 0x02  # clean session
        payload = _string(client_id.encode())
        if parts.username:
            flags |= 0x80
            payload += _string(unquote(parts.username).encode())
        if parts.password:
            flags |= 0x40
            payload += _string(unquote(parts.password).encode())
        header = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big")
        self.sock.sendall(b"\x10" + _varint(len(header) + len(payload)) + header + payload)
        connack = b""
        while len(connack) < 4:
            chunk = self.sock.recv(4 - len(connack))
            if not chunk:
                raise SystemExit(f"load_test: the broker at {url} closed the connection")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise SystemExit(f"load_test: the broker at {url} refused us (code {connack[3]})")
        self.keepalive = keepalive
        self.last_ping = time.monotonic()

    @staticmethod
    def packet(topic: bytes, payload: bytes, packet_id: int = 0) -> bytes:
        """A PUBLISH at QoS 0, or at QoS 1 with a ``packet_id`` (its PUBACK left to
        `drain`)."""
        if packet_id:
            body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + payload
            return b"\x32" + _varint(len(body)) + body
        body = len(topic).to_bytes(2, "big") + topic + payload
        return b"\x30" + _varint(len(body)) + body

    def drain(self) -> None:
        """Read and drop whatever the broker sends (PUBACKs), until the socket closes."""
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass

    def send(self, packets: list[bytes]) -> None:
        self.sock.sendall(b"".join(packets))
        if time.monotonic() - self.last_ping > self.keepalive / 2:
            self.sock.sendall(b"\xc0\x00")  # PINGREQ; the PINGRESP is left unread
            self.last_ping = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()


def _string(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def location_worker(
    url: str,
    root: str,
    vids: list[str],
    points: list[tuple[float, float]],
    rate: float,
    start_at: float,
    stop_at: float,
    out: Any,
    raw: bool = True,
    accuracy_m: float = 0.0,
) -> None:
    """Publish locations of random volunteers at ``rate``/s between two wall-clock times."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    body = _location_body(accuracy_m)
    if raw:
        _raw_locations(url, root, vids, points, rate, start_at, stop_at, out, body)
        return
    client = mqtt_client(url, "locations")
    rng = random.Random(os.getpid())
    n = len(vids)
    topics = [f"{root}/volunteers/{v}/location".encode() for v in vids]
    sent = 0
    late = 0.0
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    while True:
        now = time.time()
        if now >= stop_at:
            break
        due = int((now - t0) * rate)
        if due - sent > rate:  # more than a second behind: count it, do not burst
            late = max(late, (due - sent) / rate)
        while sent < due:
            i = rng.randrange(n)
            lat, lon = points[i]
            # Wander within about 20 m of home: enough to move the index entry.
            lat += rng.uniform(-0.0002, 0.0002)
            lon += rng.uniform(-0.0002, 0.0002)
            client.publish(topics[i].decode(), body(lat, lon), qos=0)
            sent += 1
        time.sleep(0.002)
    elapsed = time.time() - t0
    client.disconnect()
    client.loop_stop()
    out.put({"sent": sent, "elapsed_s": elapsed, "max_behind_s": late})


def _location_body(accuracy_m: float) -> Callable[[float, float], bytes]:
    """The location message; with ``accuracy_m`` (> 0) the accuracy phones report."""
    if accuracy_m > 0:
        tail = b',"accuracy_m":%g}' % accuracy_m
        return lambda lat, lon: b'{"lat":%.6f,"lon":%.6f' % (lat, lon) + tail
    return lambda lat, lon: b'{"lat":%.6f,"lon":%.6f}' % (lat, lon)


def _raw_locations(
    url: str,
    root: str,
    vids: list[str],
    points: list[tuple[float, float]],
    rate: float,
    start_at: float,
    stop_at: float,
    out: Any,
    body: Callable[[float, float], bytes],
) -> None:
    client = RawPublisher(url, f"loadtest-locations-{uuid.uuid4().hex[:8]}")
    rng = random.Random(os.getpid())
    n = len(vids)
    topics = [f"{root}/volunteers/{v}/location".encode() for v in vids]
    sent = 0
    late = 0.0
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    while True:
        now = time.time()
        if now >= stop_at:
            break
        due = int((now - t0) * rate)
        late = max(late, (due - sent) / rate)
        packets = []
        while sent < due:
            i = rng.randrange(n)
            lat, lon = points[i]
            # Wander within about 20 m of home: enough to move the index entry.
            lat += rng.uniform(-0.0002, 0.0002)
            lon += rng.uniform(-0.0002, 0.0002)
            packets.append(client.packet(topics[i], body(lat, lon)))
            sent += 1
        if packets:
            client.send(packets)
        time.sleep(0.002)
    elapsed = time.time() - t0
    client.close()
    out.put({"sent": sent, "elapsed_s": elapsed, "max_behind_s": late})


# --------------------------------------------------------------------------- measurer


@dataclass
class Tracker:
    """Reports sent and first alerts received (the paho thread writes, we read)."""

    sent: dict[str, float] = field(default_factory=dict)
    first_alert: dict[str, float] = field(default_factory=dict)
    # The same instants as Unix time, to set beside the engine's own (`where_waited`).
    sent_wall: dict[str, float] = field(default_factory=dict)
    first_alert_wall: dict[str, float] = field(default_factory=dict)
    alerts: int = 0
    # Unix times of each volunteer's alerts, in order (--push: a push is matched to one).
    alerts_of: dict[str, list[float]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Measurer:
    """Reports incidents and times the first alert of each, in this process."""

    def __init__(self, url: str, root: str, answer: str) -> None:
        self.root = root
        self.answer = answer
        self.t = Tracker()
        self.client = mqtt_client(url, "measurer")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a, **_k: subscribed.set()
        self.client.subscribe([(f"{root}/volunteers/+/alert", 1), (f"{root}/rejected", 1)])
        if not subscribed.wait(10):
            raise SystemExit("load_test: the broker did not confirm the subscriptions")

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if msg.topic.endswith("/alert"):
            try:
                body = json.loads(msg.payload)
                incident_id = body["incident_id"]
            except (ValueError, KeyError, TypeError):
                return
            vid = msg.topic.split("/")[-2]
            reply = None
            with self.t.lock:
                self.t.alerts += 1
                self.t.alerts_of.setdefault(vid, []).append(time.time())
                first = incident_id not in self.t.first_alert
                if first:
                    self.t.first_alert[incident_id] = now
                    self.t.first_alert_wall[incident_id] = time.time()
                if self.answer == "decline" or (
                    self.answer == "accept" and first and incident_id in self.t.sent
                ):
                    reply = "decline" if self.answer == "decline" else "accept"
            if reply is not None:
                payload = json.dumps({"alert_id": body.get("alert_id"), "answer": reply})
                self.client.publish(f"{self.root}/volunteers/{vid}/reply", payload, qos=1)
        elif msg.topic.endswith("/rejected"):
            with contextlib.suppress(ValueError), self.t.lock:
                self.t.rejected.append(json.loads(msg.payload))

    def report(self, incident_id: str, lat: float, lon: float) -> None:
        payload = json.dumps(
            {"id": incident_id, "kind": "medical", "lat": round(lat, 6), "lon": round(lon, 6)}
        )
        with self.t.lock:
            self.t.sent[incident_id] = time.perf_counter()
            self.t.sent_wall[incident_id] = time.time()
        self.client.publish(f"{self.root}/incidents/report", payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- engine


class EngineProcess:
    """``python -m dispatch run`` as a child process, the way operators start it."""

    def __init__(
        self,
        mqtt_url: str,
        redis_url: str,
        root: str,
        config: str | None,
        log_level: str,
        engine_dir: Path = REPO,
        gateways: int = 0,
        push: bool = False,
        pushers: int = 0,
    ) -> None:
        self.http = f"127.0.0.1:{free_port()}"
        # Kept open for the child's lifetime; closed (and deleted) in stop().
        self.log = tempfile.NamedTemporaryFile(prefix="loadtest-engine-", suffix=".log")  # noqa: SIM115
        argv = [
            sys.executable,
            "-m",
            "dispatch",
            "run",
            "--mqtt",
            mqtt_url,
            "--redis",
            redis_url,
            "--http",
            self.http,
            "--topic-root",
            root,
            "--log-level",
            log_level,
        ]
        if config:
            argv += ["--config", config]
        env = dict(os.environ)
        if not config:  # the same policy for a baseline checkout (--engine-dir)
            env.update(LOAD_POLICY)
        if gateways:
            env["DISPATCH_GATEWAY_ENABLED"] = "true"
        if push:  # the stand-in push service (--push) listens on the loopback
            env["DISPATCH_PUSH_ALLOW_LOOPBACK"] = "true"
        if pushers:  # the engine leaves its pushes to them
            env["DISPATCH_PUSH_SEPARATE"] = "true"
        # The location gateways (--gateways) and push workers (--pushers), each with a
        # log of its own.
        self.gateways: list[subprocess.Popen[bytes]] = []
        self.pushers: list[subprocess.Popen[bytes]] = []
        self.gateway_logs: list[Any] = []
        for command, count, started in (
            ("gateway", gateways, self.gateways),
            ("pusher", pushers, self.pushers),
        ):
            for i in range(count):
                log = tempfile.NamedTemporaryFile(prefix=f"loadtest-{command}{i}-", suffix=".log")  # noqa: SIM115
                self.gateway_logs.append(log)
                child_argv = [
                    sys.executable, "-m", "dispatch", command,
                    "--mqtt", mqtt_url,
                    "--redis", redis_url,
                    "--topic-root", root,
                    "--log-level", log_level,
                    "--instance", f"{command}{i}",
                ]  # fmt: skip
                if config:
                    child_argv += ["--config", config]
                started.append(
                    subprocess.Popen(
                        child_argv,
                        cwd=engine_dir,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                    )
                )
        self.proc = subprocess.Popen(
            # ``-m dispatch`` imports from the working directory first: --engine-dir runs
            # another checkout (a baseline) against the same harness.
            argv,
            cwd=engine_dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        for proc in [*self.gateways, *self.pushers, self.proc]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.gateways, *self.pushers, self.proc]:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.log.close()
        for log in self.gateway_logs:
            log.close()


def wait_ready(base: str, timeout: float, engine: EngineProcess | None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if engine is not None and engine.proc.poll() is not None:
            raise SystemExit(f"load_test: the engine exited; its log:\n{engine.log_tail()}")
        with contextlib.suppress(OSError):
            if http_get(base, "/readyz", 2)[0] == 200:
                return
        time.sleep(0.2)
    tail = engine.log_tail() if engine else ""
    raise SystemExit(f"load_test: {base}/readyz not 200 after {timeout:.0f} s\n{tail}")


class CpuMeter:
    """The engine's CPU seconds and resident memory, by pid (psutil, else /proc)."""

    def __init__(
        self, pid: int | None, gateway_pids: Sequence[int] = (), pusher_pids: Sequence[int] = ()
    ) -> None:
        self.proc: Any = None
        self.gateways: list[Any] = []
        self.pushers: list[Any] = []
        if pid is None:
            return
        try:
            import psutil
        except ImportError:
            print("load_test: psutil not installed: no engine CPU/RSS figures", file=sys.stderr)
            return
        self.proc = psutil.Process(pid)
        self.gateways = [psutil.Process(p) for p in gateway_pids]
        self.pushers = [psutil.Process(p) for p in pusher_pids]

    def gateways_cpu_s(self) -> float | None:
        """The location gateways' CPU seconds, summed; None without gateways."""
        return _cpu_s(self.gateways)

    def pushers_cpu_s(self) -> float | None:
        """The push workers' CPU seconds, summed; None without pushers."""
        return _cpu_s(self.pushers)

    def cpu_s(self) -> float | None:
        if self.proc is None:
            return None
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float | None:
        return None if self.proc is None else self.proc.memory_info().rss / 2**20


def _cpu_s(processes: Sequence[Any]) -> float | None:
    if not processes:
        return None
    return float(sum(t.user + t.system for t in (p.cpu_times() for p in processes)))


# --------------------------------------------------------------------------- the run


@dataclass
class StepResult:
    location_rate: float
    incident_rate: float
    duration_s: float
    locations_sent: int
    locations_sent_per_s: float
    locations_ingested_per_s: float | None
    publisher_max_behind_s: float
    incidents: int
    alerted: int
    lost: int
    lost_ids: list[str]
    alerts_received: int
    rejected: int
    rejected_reasons: dict[str, int]
    latency_ms: dict[str, float | None]
    engine_decision_p99_le_ms: float | None  # the engine's own view: receipt to first alert
    engine_cpu_percent: float | None
    engine_rss_mb: float | None
    gateways: int = 0  # location gateways beside the engine (--gateways)
    gateways_cpu_percent: float | None = None  # their CPU, summed, % of one core
    slowest: list[tuple[float, float]] = field(default_factory=list)  # (ms, sent at s)
    # Where the slowest reports waited (`where_waited`): median ms of the three legs.
    slowest_waited: dict[str, float] | None = None
    herd_sent: int = 0  # statuses re-sent by the herd (--herd) during the step
    herd_sent_s: float | None = None  # how long sending them took
    herd_lost: int | None = None  # of those, never counted by the engine
    # With gateways: from a gateway's receipt of a location to its move in the engine's
    # index (dispatch_location_to_index_seconds), p99 and max, bucket upper bounds.
    location_to_index_p99_le_ms: float | None = None
    location_to_index_max_le_ms: float | None = None
    # With --push: the alerts to volunteers with a push subscription (one push each is
    # due), the pushes the stand-in push service got, each one's delay after its alert
    # reached the load test over MQTT (p50, p99, max), and the engine's own count of its
    # pushes by outcome (dispatch_push_total).
    push_due: int | None = None
    push_received: int | None = None
    alert_to_push_ms: dict[str, float | None] | None = None
    push_outcomes: dict[str, int] | None = None
    pushers: int = 0  # push workers beside the engine (--pushers)
    pushers_cpu_percent: float | None = None  # their CPU, summed, % of one core
    ok: bool = True
    why: list[str] = field(default_factory=list)  # what failed, and the likely cause


def register(
    client: mqtt.Client,
    base: str,
    root: str,
    vids: Sequence[str],
    points: Sequence[tuple[float, float]],
    seed: int,
    window: int = 5000,
) -> None:
    """Send every volunteer's first status, at most ``window`` ahead of the engine.

    The broker queues a bounded number of QoS 1 messages per subscriber (and drops the
    rest), so the sender follows the engine's own count of status messages received.
    """
    bodies = status_bodies(points, seed)
    received0 = metric_sum(scrape(base), "dispatch_messages_received_total", type="StatusUpdate")
    for start in range(0, len(vids), window):
        infos = []
        for vid, body in zip(
            vids[start : start + window], bodies[start : start + window], strict=True
        ):
            topic = f"{root}/volunteers/{vid}/status"
            infos.append(client.publish(topic, body, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        # Let the engine come within half a window of what was sent before sending more.
        want = received0 + start + len(infos) - window // 2
        deadline = time.time() + 120
        while time.time() < deadline:
            got = metric_sum(scrape(base), "dispatch_messages_received_total", type="StatusUpdate")
            if got >= want:
                break
            time.sleep(0.1)


def status_bodies(points: Sequence[tuple[float, float]], seed: int) -> list[bytes]:
    """Every volunteer's status message (the same for a given seed: the herd re-sends it)."""
    rng = random.Random(seed + 1)
    out = []
    for lat, lon in points:
        skills = ["first_aid"] if rng.random() < 0.6 else []
        if rng.random() < 0.2:
            skills.append("patrol")
        body = {
            "status": "available",
            "skills": skills,
            "mode": rng.choice(MODES),
            "lat": round(lat, 6),
            "lon": round(lon, 6),
        }
        out.append(json.dumps(body).encode())
    return out


def herd_worker(
    url: str,
    root: str,
    vids: list[str],
    bodies: list[bytes],
    within_s: float,
    start_at: float,
    out: Any,
) -> None:
    """Every volunteer's status once more, at QoS 1, spread evenly over ``within_s``: the
    herd of phones re-sending their status after a broker restart."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    client = RawPublisher(url, f"loadtest-herd-{uuid.uuid4().hex[:8]}")
    reader = threading.Thread(target=client.drain, daemon=True)  # PUBACKs, unread
    reader.start()
    topics = [f"{root}/volunteers/{v}/status".encode() for v in vids]
    n = len(vids)
    sent = 0
    late = 0.0
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    while sent < n:
        due = min(n, int((time.time() - t0) / within_s * n) + 1)
        late = max(late, (due - sent) / n * within_s)
        packets = []
        while sent < due:
            packets.append(client.packet(topics[sent], bodies[sent], packet_id=sent % 65535 + 1))
            sent += 1
        client.send(packets)
        time.sleep(0.002)
    elapsed = time.time() - t0
    time.sleep(0.5)  # the last PUBACKs
    client.close()
    out.put({"herd_sent": sent, "herd_elapsed_s": elapsed, "herd_max_behind_s": late})


def push_service_worker(commands: Any, out: Any) -> None:
    """A stand-in browser push service on the loopback, in a process of its own: it
    answers 201 to every ``POST /push/<volunteer>`` and notes when each came. Commands:
    "collect" (the pushes since the last collect, as ``(volunteer, unix time)``), "stop".
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    got: list[tuple[str, float]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # the engine's client keeps its connections

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append((self.path.rsplit("/", 1)[-1], time.time()))  # atomic in CPython
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out.put(server.server_address[1])
    while (command := commands.get()) != "stop":
        if command == "collect":
            n = len(got)
            out.put(got[:n])
            del got[:n]
    server.shutdown()


class PushService:
    """`push_service_worker` started, asked and stopped from here."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._commands: Any = ctx.Queue()
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=push_service_worker, args=(self._commands, self._out), daemon=True
        )
        self._proc.start()
        self.port: int = self._out.get(timeout=30)

    def collect(self) -> list[tuple[str, float]]:
        self._commands.put("collect")
        pushes: list[tuple[str, float]] = self._out.get(timeout=30)
        return pushes

    def stop(self) -> None:
        self._commands.put("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


def register_push(
    client: mqtt.Client, base: str, root: str, vids: Sequence[str], port: int, window: int = 2000
) -> None:
    """A Web Push subscription for each volunteer (``volunteers/<id>/push``, QoS 1), the
    endpoint on the stand-in push service; waits until the engine has kept them all.

    One browser key for all: the engine encrypts each push for it as it would for a
    phone's (RFC 8291), so the work is the same.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    p256dh = b64url(
        public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    auth = b64url(os.urandom(16))
    kept0 = metric_sum(scrape(base), "dispatch_push_subscriptions_total", outcome="kept")
    for start in range(0, len(vids), window):
        infos = []
        for vid in vids[start : start + window]:
            body = {
                "endpoint": f"http://127.0.0.1:{port}/push/{vid}",
                "keys": {"p256dh": p256dh, "auth": auth},
            }
            infos.append(client.publish(f"{root}/volunteers/{vid}/push", json.dumps(body), qos=1))
        for info in infos:
            info.wait_for_publish(30)
    deadline = time.time() + 60 + len(vids) / 500
    kept = 0.0
    while time.time() < deadline:
        kept = metric_sum(scrape(base), "dispatch_push_subscriptions_total", outcome="kept") - kept0
        if kept >= len(vids):
            return
        time.sleep(0.2)
    raise SystemExit(
        f"load_test: the engine kept {kept:.0f} of {len(vids)} push subscriptions (is it "
        "configured with [push] enabled and allow_loopback? its log says why it refused)"
    )


def alert_to_push(
    pushes: Sequence[tuple[str, float]], alerts: Mapping[str, Sequence[float]]
) -> list[float]:
    """For each push, seconds from its volunteer's alert (as the load test's MQTT client
    got it) to the push (as the push service got it): the alert nearest in time, so a
    push that beat its alert through the broker counts below zero. Each alert's times
    are in order; a push with no alert of its volunteer within a minute is left out."""
    delays = []
    for vid, at in pushes:
        times = alerts.get(vid, ())
        i = bisect.bisect_left(times, at)
        near = [times[j] for j in (i - 1, i) if 0 <= j < len(times)]
        if near:
            alert_at = min(near, key=lambda t: abs(t - at))
            if abs(at - alert_at) <= 60.0:
                delays.append(at - alert_at)
    return delays


def wait_available(base: str, want: float, timeout: float) -> float:
    deadline = time.time() + timeout
    have = 0.0
    while time.time() < deadline:
        have = metric_sum(scrape(base), "dispatch_available_volunteers")
        if have >= want:
            return have
        time.sleep(0.5)
    raise SystemExit(
        f"load_test: the engine has {have:.0f} volunteers available, wanted {want:.0f}, "
        f"after {timeout:.0f} s (is it keeping up with the status messages?)"
    )


def run_step(
    args: argparse.Namespace,
    base: str,
    measurer: Measurer,
    meter: CpuMeter,
    vids: list[str],
    points: list[tuple[float, float]],
    area: ServiceArea,
    location_rate: float,
    incident_rate: float,
    run_id: str,
    step: int,
    push_service: PushService | None = None,
    subscribed: frozenset[str] = frozenset(),
) -> StepResult:
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    start_at = time.time() + 0.5
    window = args.warmup + args.duration
    stop_at = start_at + window + args.alert_timeout
    workers = []
    shares = max(1, args.location_publishers) if location_rate > 0 else 0
    for w in range(shares):
        part = slice(w, None, shares)
        proc = ctx.Process(
            target=location_worker,
            args=(
                args.mqtt,
                args.topic_root,
                vids[part],
                points[part],
                location_rate / shares,
                start_at,
                stop_at,
                results,
                args.location_client == "raw",
                args.location_accuracy,
            ),
            daemon=True,
        )
        proc.start()
        workers.append(proc)
    if args.herd:
        herd = ctx.Process(
            target=herd_worker,
            args=(
                args.mqtt,
                args.topic_root,
                vids[: args.herd],
                status_bodies(points[: args.herd], args.seed),
                args.herd_within,
                # A second into the measured window: incidents before, during and after.
                start_at + args.warmup + 1.0,
                results,
            ),
            daemon=True,
        )
        herd.start()
        workers.append(herd)
    time.sleep(max(0.0, start_at + args.warmup - time.time()))

    rng = random.Random(args.seed * 1000 + step)
    if push_service is not None:
        push_service.collect()  # what came before this step's reports is not theirs
    before = scrape(base)
    cpu0, t0 = meter.cpu_s(), time.time()
    gw_cpu0 = meter.gateways_cpu_s()
    push_cpu0 = meter.pushers_cpu_s()
    statuses0 = metric_sum(before, "dispatch_messages_received_total", type="StatusUpdate")
    ids: list[str] = []
    n = round(incident_rate * args.duration)
    for i in range(n):
        due = t0 + i / incident_rate
        time.sleep(max(0.0, due - time.time()))
        lat, lon = homes_one(area, rng)
        incident_id = f"lt-{run_id}-{step}-{i}"
        ids.append(incident_id)
        measurer.report(incident_id, lat, lon)
    time.sleep(max(0.0, t0 + args.duration - time.time()))
    t1 = time.time()
    cpu1 = meter.cpu_s()
    gw_cpu1 = meter.gateways_cpu_s()
    push_cpu1 = meter.pushers_cpu_s()
    after = scrape(base)
    rss = meter.rss_mb()
    # Late alerts still count (up to the timeout), the locations keep flowing meanwhile.
    deadline = time.time() + args.alert_timeout
    while time.time() < deadline:
        with measurer.t.lock:
            if all(i in measurer.t.first_alert for i in ids):
                break
        time.sleep(0.05)
    for proc in workers:
        proc.join(window + args.alert_timeout + 30)
    got = [results.get(timeout=5) for _ in workers]
    push = (
        None
        if push_service is None
        else push_figures(base, before, push_service, measurer, subscribed, t0)
    )
    sent = [g for g in got if "sent" in g]
    herd_sent = sum(g["herd_sent"] for g in got if "herd_sent" in g)
    herd_s = max((g["herd_elapsed_s"] for g in got if "herd_sent" in g), default=None)
    herd_received = None
    if args.herd:
        # Statuses the engine took in, until they stop coming (it may still be at them).
        herd_received, deadline = 0.0, time.time() + 60
        while time.time() < deadline:
            now_received = metric_sum(
                scrape(base), "dispatch_messages_received_total", type="StatusUpdate"
            )
            if now_received - statuses0 >= herd_sent or (
                now_received - statuses0 == herd_received and herd_received > 0
            ):
                herd_received = now_received - statuses0
                break
            herd_received = now_received - statuses0
            time.sleep(1.0)

    with measurer.t.lock:
        lat_ms = [
            (measurer.t.first_alert[i] - measurer.t.sent[i]) * 1000
            for i in ids
            if i in measurer.t.first_alert
            and measurer.t.first_alert[i] - measurer.t.sent[i] <= args.alert_timeout
        ]
        alerted = {i for i in ids if i in measurer.t.first_alert}
        # When the slowest ones were sent (seconds into the step): pauses show as clusters.
        first_sent = measurer.t.sent[ids[0]] if ids else 0.0
        slowest_ids = sorted(alerted, key=lambda i: measurer.t.first_alert[i] - measurer.t.sent[i])[
            -20:
        ]
        slowest = [
            (
                (measurer.t.first_alert[i] - measurer.t.sent[i]) * 1000,
                measurer.t.sent[i] - first_sent,
            )
            for i in slowest_ids
        ]
        slowest_waited = where_waited(base, slowest_ids, measurer.t)
        rejected = list(measurer.t.rejected)  # everything on <root>/rejected meanwhile
        measurer.t.rejected.clear()
        alerts = measurer.t.alerts
        measurer.t.alerts = 0
    lost = [i for i in ids if i not in alerted]
    reasons: dict[str, int] = {}
    for r in rejected:
        reason = str(r.get("reason", "?"))[:80]
        reasons[reason] = reasons.get(reason, 0) + 1
    elapsed = t1 - t0
    ingested = metric_sum(after, "dispatch_messages_received_total", type="LocationUpdate")
    ingested -= metric_sum(before, "dispatch_messages_received_total", type="LocationUpdate")
    total_sent = sum(s["sent"] for s in sent)
    sent_elapsed = max((s["elapsed_s"] for s in sent), default=0.0) or 1.0
    latency = {
        "p50": percentile(lat_ms, 0.50),
        "p99": percentile(lat_ms, 0.99),
        "p99.9": percentile(lat_ms, 0.999),
        "max": max(lat_ms) if lat_ms else None,
    }
    result = StepResult(
        location_rate=location_rate,
        incident_rate=incident_rate,
        duration_s=round(elapsed, 3),
        locations_sent=total_sent,
        locations_sent_per_s=round(total_sent / sent_elapsed, 1),
        locations_ingested_per_s=round(ingested / elapsed, 1),
        publisher_max_behind_s=round(max((s["max_behind_s"] for s in sent), default=0.0), 3),
        incidents=len(ids),
        alerted=len(alerted),
        lost=len(lost),
        lost_ids=lost[:20],
        alerts_received=alerts,
        rejected=len(rejected),
        rejected_reasons=reasons,
        latency_ms={k: None if v is None else round(v, 3) for k, v in latency.items()},
        engine_decision_p99_le_ms=_ms(
            histogram_bound(before, after, "dispatch_decision_latency_seconds", 0.99)
        ),
        engine_cpu_percent=(
            None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / elapsed * 100, 1)
        ),
        engine_rss_mb=None if rss is None else round(rss, 1),
        gateways=len(meter.gateways),
        gateways_cpu_percent=(
            None
            if gw_cpu0 is None or gw_cpu1 is None
            else round((gw_cpu1 - gw_cpu0) / elapsed * 100, 1)
        ),
        slowest=[(round(ms, 2), round(at, 3)) for ms, at in reversed(slowest)],
        slowest_waited=slowest_waited,
        herd_sent=herd_sent,
        herd_sent_s=None if herd_s is None else round(herd_s, 2),
        herd_lost=None if herd_received is None else max(0, herd_sent - round(herd_received)),
        location_to_index_p99_le_ms=_ms(
            histogram_bound(before, after, "dispatch_location_to_index_seconds", 0.99)
        ),
        location_to_index_max_le_ms=_ms(
            histogram_bound(before, after, "dispatch_location_to_index_seconds", 1.0)
        ),
        **(push or {}),
        pushers=len(meter.pushers),
        pushers_cpu_percent=(
            None
            if push_cpu0 is None or push_cpu1 is None
            else round((push_cpu1 - push_cpu0) / elapsed * 100, 1)
        ),
    )
    result.why = verdict(result, args, location_rate)
    result.ok = not result.why
    return result


def push_figures(
    base: str,
    before: str,
    push_service: PushService,
    measurer: Measurer,
    subscribed: frozenset[str],
    since: float,
) -> dict[str, Any]:
    """The step's pushes (`StepResult`'s push fields), once they stop coming: the engine
    pushes after it publishes, from a queue of its own, so the last come later."""
    pushes: list[tuple[str, float]] = []
    quiet_since, deadline = time.time(), time.time() + 30
    while time.time() < deadline and time.time() - quiet_since < 1.0:
        time.sleep(0.2)
        more = push_service.collect()
        if more:
            pushes += more
            quiet_since = time.time()
    after = scrape(base)
    with measurer.t.lock:
        alerts = {v: list(ts) for v, ts in measurer.t.alerts_of.items() if v in subscribed}
    due = sum(1 for ts in alerts.values() for t in ts if t >= since)
    delays_ms = [d * 1000 for d in alert_to_push(pushes, alerts)]
    outcomes = {
        o: round(
            metric_sum(after, "dispatch_push_total", outcome=o)
            - metric_sum(before, "dispatch_push_total", outcome=o)
        )
        for o in ("sent", "failed", "expired", "dropped", "gone")
    }
    return {
        "push_due": due,
        "push_received": len(pushes),
        "alert_to_push_ms": {
            "p50": _round(percentile(delays_ms, 0.50)),
            "p99": _round(percentile(delays_ms, 0.99)),
            "max": _round(max(delays_ms) if delays_ms else None),
        },
        "push_outcomes": outcomes,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def verdict(result: StepResult, args: argparse.Namespace, location_rate: float) -> list[str]:
    """What failed, each with its likely cause where the figures point to one."""
    why: list[str] = []
    p50, p99 = result.latency_ms["p50"], result.latency_ms["p99"]
    if result.lost > args.max_loss:
        why.append(f"{result.lost} incidents got no alert within {args.alert_timeout:g} s")
    if p99 is not None and p99 > args.max_p99_ms:
        why.append(f"p99 {p99:.1f} ms is over --max-p99-ms {args.max_p99_ms:g}")
        cpu = result.engine_cpu_percent
        # Nagle's algorithm with delayed acknowledgements: every QoS 1 exchange waits for
        # the peer's 40 ms ack timer. The signature is a floor near 40 ms at a low rate,
        # with an engine that is idle (MEASUREMENTS.md: p50 44 ms against 0.35 ms).
        if p50 is not None and 30.0 <= p50 <= 60.0 and (cpu is None or cpu < 50.0):
            why.append(
                f"p50 {p50:.0f} ms with an idle engine is the signature of Nagle's algorithm "
                "meeting delayed acknowledgements: the broker lacks `set_tcp_nodelay true` "
                "(mosquitto.conf; see docs/deployment.md for the settings the engine needs)"
            )
        elif cpu is not None and cpu >= 90.0:
            why.append(
                f"the engine used {cpu:.0f} % of a core: it is saturated, lower the load "
                "(or see benchmarks/RESULTS.md for what one core carries)"
            )
    if result.publisher_max_behind_s >= 1.0:
        why.append(
            f"the location publishers fell {result.publisher_max_behind_s:.1f} s behind: this "
            "machine cannot offer the load (add --location-publishers or lower the rate)"
        )
    ingested_share = (result.locations_ingested_per_s or 0.0) / max(location_rate, 1e-9)
    if location_rate and ingested_share < 1.0 - args.max_location_loss:
        why.append(
            f"the engine took in {ingested_share:.0%} of the locations offered "
            f"(--max-location-loss {args.max_location_loss:g})"
        )
    if result.herd_lost:
        why.append(
            f"{result.herd_lost:,} of the herd's {result.herd_sent:,} statuses never reached "
            "the engine: the broker dropped them (raise max_queued_messages for the engine's "
            "client, docs/deployment.md)"
        )
    return why


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def homes_one(area: ServiceArea, rng: random.Random) -> tuple[float, float]:
    min_lon, min_lat, max_lon, max_lat = area.bounds
    while True:
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        if area.contains(lat, lon):
            return lat, lon


def table(steps: Sequence[StepResult]) -> str:
    def f(v: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        "| locations/s offered | sent | ingested | incidents/s | incidents | lost | rejected "
        "| p50 ms | p99 ms | p99.9 ms | max ms | engine p99 ≤ ms | engine CPU % | RSS MB "
        "| gateways | gateways CPU % | ok |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in steps:
        lat = s.latency_ms
        lines.append(
            f"| {s.location_rate:,.0f} | {s.locations_sent_per_s:,.0f} "
            f"| {f(s.locations_ingested_per_s, '{:,.0f}')} | {s.incident_rate:g} "
            f"| {s.incidents} | {s.lost} | {s.rejected} | {f(lat['p50'], '{:.2f}')} "
            f"| {f(lat['p99'], '{:.2f}')} | {f(lat['p99.9'], '{:.2f}')} "
            f"| {f(lat['max'], '{:.2f}')} | {f(s.engine_decision_p99_le_ms, '{:g}')} "
            f"| {f(s.engine_cpu_percent)} | {f(s.engine_rss_mb)} "
            f"| {s.gateways} | {f(s.gateways_cpu_percent)} "
            f"| {'yes' if s.ok else 'NO'} |"
        )
    return "\n".join(lines)


def plot(steps: Sequence[StepResult], path: str, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        print(
            "load_test: matplotlib is not installed, no plot (pip install -e '.[sim]')",
            file=sys.stderr,
        )
        return
    xs = [s.location_rate for s in steps]
    fig, (ax, ingest) = plt.subplots(
        2, 1, figsize=(8, 6.5), dpi=110, sharex=True, height_ratios=(3, 1.3)
    )
    for key, style in (("p50", "o-"), ("p99", "s-"), ("max", "^:")):
        ys = [s.latency_ms[key] for s in steps]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], style, label=key)
    for s in steps:
        note = []
        if s.lost:
            note.append(f"{s.lost} lost")
        if not s.ok:
            note.append("over threshold")
        if note:
            ax.annotate(
                ", ".join(note),
                (s.location_rate, s.latency_ms["p99"] or s.latency_ms["max"] or 1.0),
                textcoords="offset points",
                xytext=(-70, 6),
                color="red",
                fontsize=8,
            )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylabel("report → first alert, ms (log)")
    ax.axhline(10, color="grey", linestyle="--", linewidth=0.8)
    ax.text(xs[0], 11, "10 ms target", color="grey", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(
        title + "\nincidents/s at each step: " + ", ".join(f"{s.incident_rate:g}" for s in steps),
        fontsize=9,
    )
    ingest.plot(xs, xs, ":", color="grey", label="offered")
    ingest.plot(
        xs, [s.locations_ingested_per_s or 0.0 for s in steps], "o-", label="ingested by the engine"
    )
    ingest.set_ylabel("locations/s")
    ingest.set_xlabel("location updates offered per second")
    ingest.grid(True, alpha=0.3)
    ingest.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_before"] = os.getloadavg()
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="load_test.py",
        description="End-to-end load test of the dispatch engine over MQTT and HTTP: "
        "report-to-first-alert latency, loss, rejected messages, location ingest, engine "
        "CPU and memory. Prints a markdown table; --json writes every figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = p.add_argument_group("where the engine is")
    where.add_argument("--mqtt", help="broker URL of a running engine, mqtt://HOST:PORT")
    where.add_argument("--redis", help="Redis URL (needed with --start-engine)")
    where.add_argument("--http", help="the engine's HTTP base URL, http://HOST:PORT")
    where.add_argument("--topic-root", default="dispatch", help="the engine's topic root")
    where.add_argument(
        "--config",
        help="the engine's TOML config (the service area is read "
        "from it; passed on with --start-engine)",
    )
    where.add_argument("--engine-pid", type=int, help="pid of a running engine (CPU, RSS)")
    where.add_argument(
        "--start-engine",
        action="store_true",
        help="start `python -m dispatch run` on --mqtt/--redis here",
    )
    where.add_argument(
        "--start-servers",
        action="store_true",
        help="start a throwaway mosquitto and Redis and the engine on them",
    )
    where.add_argument(
        "--engine-dir",
        default=str(REPO),
        help="the checkout whose engine --start-engine runs (e.g. a baseline to compare)",
    )
    where.add_argument(
        "--gateways",
        type=int,
        default=0,
        help="start this many location gateways beside the engine (needs --start-engine or "
        "--start-servers) and run the engine with [gateway] enabled; their CPU is reported "
        "apart from the engine's",
    )
    where.add_argument(
        "--engine-log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level of a started engine",
    )
    load = p.add_argument_group("the load")
    load.add_argument("--volunteers", type=int, default=1000, help="volunteers registered")
    load.add_argument("--location-rate", type=float, default=100.0, help="locations per second")
    load.add_argument("--incident-rate", type=float, default=5.0, help="incidents per second")
    load.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    load.add_argument("--warmup", type=float, default=2.0, help="locations only, before each step")
    load.add_argument(
        "--location-publishers",
        type=int,
        default=1,
        help="processes publishing locations (one offers 20,000/s with the raw client)",
    )
    load.add_argument(
        "--location-client",
        choices=["raw", "paho"],
        default="raw",
        help="how locations are published: packets built here (cheap) or paho-mqtt",
    )
    load.add_argument(
        "--answer",
        choices=["accept", "decline", "ignore"],
        default="accept",
        help="what alerted volunteers do (see the module docstring)",
    )
    load.add_argument(
        "--alert-timeout",
        type=float,
        default=5.0,
        help="an incident with no alert after this many seconds is lost",
    )
    load.add_argument(
        "--location-accuracy",
        type=float,
        default=0.0,
        help="accuracy_m sent with every location (0: none). The locations wander within "
        "about 20 m of each volunteer's home; the engine leaves a move shorter than the "
        "accuracy (up to 25 m) out of its index",
    )
    load.add_argument(
        "--herd",
        type=int,
        default=0,
        help="during each step, this many volunteers re-send their status at QoS 1 (a herd "
        "after a broker restart), spread over --herd-within seconds",
    )
    load.add_argument("--herd-within", type=float, default=10.0, help="seconds (see --herd)")
    load.add_argument(
        "--push",
        type=float,
        default=0.0,
        help="this share of the volunteers (0-1) registers a Web Push subscription; a "
        "stand-in push service on the loopback takes the pushes (an engine started here "
        "is given [push] allow_loopback) and the script times each push from its alert",
    )
    load.add_argument(
        "--pushers",
        type=int,
        default=0,
        help="with --push: start this many push workers (`dispatch pusher`) beside the "
        "engine, which then leaves its pushes to them ([push] separate); their CPU is "
        "reported apart from the engine's",
    )
    load.add_argument("--seed", type=int, default=1)
    ramp = p.add_argument_group("ramp")
    ramp.add_argument(
        "--ramp",
        action="store_true",
        help="raise the load step by step until it breaks a threshold",
    )
    ramp.add_argument(
        "--ramp-factors",
        default="0.25,0.5,1,2,4,8",
        help="multipliers of --location-rate and --incident-rate, in order",
    )
    ramp.add_argument(
        "--max-p99-ms",
        type=float,
        default=10.0,
        help="p99 threshold (without --ramp: the exit status is 1 if a threshold is broken)",
    )
    ramp.add_argument("--max-loss", type=int, default=0, help="incidents lost allowed")
    ramp.add_argument(
        "--max-location-loss",
        type=float,
        default=0.05,
        help="share of the offered locations the engine may fail to ingest",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", help="write every figure to this file")
    out.add_argument("--plot", help="latency against load, PNG (needs matplotlib)")
    args = p.parse_args(argv)
    if args.start_servers:
        args.start_engine = True
    elif args.start_engine and not (args.mqtt and args.redis):
        p.error("--start-engine needs --mqtt and --redis (or use --start-servers)")
    elif not args.start_engine and not (args.mqtt and args.http):
        p.error("give --mqtt and --http of a running engine, or --start-engine/--start-servers")
    if args.volunteers < 1 or args.incident_rate <= 0 or args.duration <= 0:
        p.error("--volunteers, --incident-rate and --duration must be positive")
    if args.location_rate < 0:
        p.error("--location-rate must not be negative")
    if not 0 <= args.gateways <= 16:
        p.error(f"--gateways must be between 0 and 16, not {args.gateways}")
    if args.gateways and not args.start_engine:
        p.error("--gateways needs --start-engine or --start-servers (it starts them)")
    if not 0 <= args.herd <= args.volunteers:
        p.error(f"--herd must be between 0 and --volunteers ({args.volunteers}), not {args.herd}")
    if not 0 <= args.pushers <= 16:
        p.error(f"--pushers must be between 0 and 16, not {args.pushers}")
    if args.pushers and not (args.start_engine and args.push):
        p.error("--pushers needs --push and --start-engine or --start-servers (it starts them)")
    if not 0.0 <= args.push <= 1.0:
        p.error(f"--push must be a share of the volunteers between 0 and 1, not {args.push}")
    if args.herd and not args.herd_within > 0:
        p.error(f"--herd-within must be a positive number of seconds, not {args.herd_within}")
    try:
        args.factors = [float(x) for x in args.ramp_factors.split(",")] if args.ramp else [1.0]
    except ValueError:
        p.error(f"--ramp-factors must be numbers separated by commas, not {args.ramp_factors!r}")
    return args


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """Servers and engine as asked; yields the engine's HTTP base URL and pid."""
    started: list[Any] = []
    engine: EngineProcess | None = None
    try:
        if args.start_servers:
            from dispatch.localservers import start_mosquitto, start_redis

            broker, args.mqtt, _ws = start_mosquitto(websockets=False)
            started.append(broker)
            redis, args.redis = start_redis()
            started.append(redis)
        if args.start_engine:
            engine = EngineProcess(
                args.mqtt,
                args.redis,
                args.topic_root,
                args.config,
                args.engine_log_level,
                Path(args.engine_dir),
                args.gateways,
                args.push > 0,
                args.pushers,
            )
            args.http = engine.url
            args.engine_pid = engine.proc.pid
            args.gateway_pids = [g.pid for g in engine.gateways]
            args.pusher_pids = [p.pid for p in engine.pushers]
            print(f"engine pid {engine.proc.pid} at {engine.url}", file=sys.stderr)
        wait_ready(args.http, 60, engine)
        yield args.http, args.engine_pid
    finally:
        if engine is not None:
            engine.stop()
        for server in reversed(started):
            server.stop()


def _terminate(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # stop what was started here on the way out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    config = load_config(args.config, env={})
    area = ServiceArea.from_geojson(
        config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
    )
    info = machine()
    run_id = uuid.uuid4().hex[:6]
    steps: list[StepResult] = []
    with environment(args) as (base, pid):
        meter = CpuMeter(pid, getattr(args, "gateway_pids", ()), getattr(args, "pusher_pids", ()))
        points = homes(area, args.volunteers, args.seed)
        vids = [f"lt{run_id}-{i}" for i in range(args.volunteers)]
        baseline = metric_sum(scrape(base), "dispatch_available_volunteers")
        t = time.time()
        reg = mqtt_client(args.mqtt, "register")
        register(reg, base, args.topic_root, vids, points, args.seed)
        reg.disconnect()
        reg.loop_stop()
        have = wait_available(base, baseline + args.volunteers, 120 + args.volunteers / 500)
        push_service, subscribed = None, frozenset[str]()
        if args.push:
            push_service = PushService()
            subscribed = frozenset(vids[: round(args.push * len(vids))])
            reg = mqtt_client(args.mqtt, "register-push")
            register_push(reg, base, args.topic_root, sorted(subscribed), push_service.port)
            reg.disconnect()
            reg.loop_stop()
        register_s = time.time() - t
        print(
            f"registered {args.volunteers:,} volunteers in {register_s:.1f} s "
            f"({have:,.0f} available)",
            file=sys.stderr,
        )
        measurer = Measurer(args.mqtt, args.topic_root, args.answer)
        try:
            for step, factor in enumerate(args.factors):
                result = run_step(
                    args,
                    base,
                    measurer,
                    meter,
                    vids,
                    points,
                    area,
                    args.location_rate * factor,
                    args.incident_rate * factor,
                    run_id,
                    step,
                    push_service,
                    subscribed,
                )
                steps.append(result)
                print(table([result]).splitlines()[-1], file=sys.stderr)
                if result.herd_sent:
                    print(
                        f"herd: {result.herd_sent:,} statuses sent in {result.herd_sent_s} s, "
                        f"{result.herd_lost} lost",
                        file=sys.stderr,
                    )
                if result.location_to_index_p99_le_ms is not None:
                    print(
                        "a location's move in the index after its gateway got it: p99 ≤ "
                        f"{result.location_to_index_p99_le_ms:g} ms, all ≤ "
                        f"{result.location_to_index_max_le_ms:g} ms",
                        file=sys.stderr,
                    )
                if result.push_received is not None and result.alert_to_push_ms:
                    d = result.alert_to_push_ms
                    print(
                        f"web push: {result.push_received:,} pushes of {result.push_due:,} "
                        f"due, each after its MQTT alert by p50 {d['p50']} ms, p99 {d['p99']} "
                        f"ms, max {d['max']} ms; the engine's count: {result.push_outcomes}"
                        + (
                            f"; {result.pushers} pushers at {result.pushers_cpu_percent} % CPU"
                            if result.pushers
                            else ""
                        ),
                        file=sys.stderr,
                    )
                if result.slowest_waited:
                    w = result.slowest_waited
                    print(
                        f"the {len(result.slowest)} slowest reports (median): "
                        f"{w['to_engine']} ms until the engine took them up (the broker, "
                        f"the socket, its queue), {w['to_phone']} ms from there to the "
                        "phone (deciding, storing, publishing, the broker)",
                        file=sys.stderr,
                    )
                for reason in result.why:
                    print(f"not ok: {reason}", file=sys.stderr)
                if args.ramp and not result.ok:
                    break
        finally:
            measurer.close()
            if push_service is not None:
                push_service.stop()
        rss_end = meter.rss_mb()
    saturation = None
    if args.ramp:
        held = [s for s in steps if s.ok]
        saturation = (
            {"location_rate": held[-1].location_rate, "incident_rate": held[-1].incident_rate}
            if held
            else None
        )
    print(table(steps))
    if args.ramp:
        broke = next((s for s in steps if not s.ok), None)
        print(
            "\nsaturation: "
            + (
                f"held up to {saturation['location_rate']:,.0f} locations/s and "
                f"{saturation['incident_rate']:g} incidents/s"
                if saturation
                else "not even the first step held"
            )
            + (
                f"; broke at {broke.location_rate:,.0f}/s and {broke.incident_rate:g}/s"
                if broke
                else "; no step broke the thresholds"
            )
        )
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("factors",)},
        "registration_s": round(register_s, 2),
        "engine_rss_mb_end": rss_end,
        "steps": [asdict(s) for s in steps],
        "saturation": saturation,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot(steps, args.plot, f"{args.volunteers:,} volunteers, one engine process")
    return 0 if all(s.ok for s in steps) or args.ramp else 1


if __name__ == "__main__":
    sys.exit(main())
