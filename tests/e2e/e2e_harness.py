"""The outside view of the engine for the end-to-end tests.

Nothing here imports the engine: the engine runs as its own OS process, started the
way PROTOCOL.md says (``python -m dispatch run ...``), and is driven only through MQTT
(paho-mqtt 2.x, a different library from the engine's) and HTTP (urllib), as a phone, a
reporter and a control room would.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from servers import _parent_death_signal, free_port, parse_mqtt_url

REPO = Path(__file__).resolve().parents[2]
# The directory the engine is started in (``-m dispatch`` imports from there first);
# E2E_ENGINE_DIR runs another checkout of the engine against these tests.
ENGINE_DIR = Path(os.environ.get("E2E_ENGINE_DIR") or REPO)

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
WAIT = 5.0  # default patience for anything the engine should do "at once"
TOKEN = "op-secret-e2e"  # the operator token every test engine is started with

# 小营巷, Shangcheng district, Hangzhou: inside the service area.
XIAOYING = (30.2591, 120.1698)
OUTSIDE = (30.10, 120.00)
EARTH_RADIUS_M = 6_371_008.8


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: the engine gets SIGKILL if pytest dies (Linux), so none is left over."""
    return _parent_death_signal(signal.SIGKILL)


# --------------------------------------------------------------------------- geometry


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Our own great-circle distance (not the engine's), metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def offset(lat: float, lon: float, distance_m: float, bearing_deg: float) -> tuple[float, float]:
    """The point ``distance_m`` from (lat, lon) on the given bearing (great circle)."""
    d = distance_m / EARTH_RADIUS_M
    b = math.radians(bearing_deg)
    p1, l1 = math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(
        math.sin(b) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(p2), math.degrees(l2)


# --------------------------------------------------------------------------- times

_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def is_rfc3339_utc(value: object) -> bool:
    return isinstance(value, str) and _RFC3339_UTC.fullmatch(value) is not None


def parse_ts(value: str) -> float:
    assert is_rfc3339_utc(value), f"not an RFC 3339 UTC time: {value!r}"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- MQTT


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    received: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class Subscription:
    """Every message received on one topic filter, in order; thread-safe."""

    def __init__(self, topic_filter: str) -> None:
        self.filter = topic_filter
        self._messages: list[Message] = []
        self._cond = threading.Condition()

    def _add(self, message: Message) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def all(self, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        with self._cond:
            return [m for m in self._messages if pred is None or pred(m)]

    def wait_for(
        self,
        pred: Callable[[Message], bool] | None = None,
        timeout: float = WAIT,
        what: str = "",
        start: int = 0,
    ) -> Message:
        """The first message (already received or still to come) that matches ``pred``."""
        return self.wait_count(1, pred, timeout, what, start)[0]

    def wait_count(
        self,
        n: int,
        pred: Callable[[Message], bool] | None = None,
        timeout: float = WAIT,
        what: str = "",
        start: int = 0,
    ) -> list[Message]:
        """At least ``n`` matching messages (from index ``start``); returns the first ``n``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self._messages[start:] if pred is None or pred(m)]
                if len(found) >= n:
                    return found[:n]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n  ".join(
                        f"{m.topic} {m.payload[:300]!r}" for m in self._messages[-30:]
                    )
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {n} message(s) {what} on "
                        f"{self.filter} (got {len(found)}); last received:\n  {seen}"
                    )
                self._cond.wait(left)


def _topic_pred(
    topic: str, extra: Callable[[Any], bool] | None = None
) -> Callable[[Message], bool]:
    def pred(m: Message) -> bool:
        if m.topic != topic:
            return False
        if extra is None:
            return True
        try:
            body = m.json
        except ValueError:
            return False
        return bool(extra(body))

    return pred


class MqttClient:
    """A paho-mqtt 2.x client in its own network thread, one queue per subscription."""

    def __init__(self, url: str, *, protocol: int = mqtt.MQTTv5, name: str = "client") -> None:
        host, port = parse_mqtt_url(url)
        self.protocol = protocol
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"e2e-{name}-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        # mqtt://user:password@host:port logs in with those (percent-escapes decoded).
        user = urllib.parse.urlsplit(url)
        if user.username is not None:
            self.client.username_pw_set(
                urllib.parse.unquote(user.username), urllib.parse.unquote(user.password or "")
            )
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if protocol == mqtt.MQTTv5:
            self.client.connect(host, port, keepalive=30, clean_start=True)
        else:
            self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(WAIT):
            self.close()
            raise AssertionError(f"could not connect to the broker at {url}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
        event.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos)
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            # A shared subscription ($share/<group>/<filter>) matches as its filter does.
            topic_filter = sub.filter
            if topic_filter.startswith("$share/"):
                topic_filter = topic_filter.split("/", 2)[2]
            if mqtt.topic_matches_sub(topic_filter, msg.topic):
                sub._add(message)

    def subscribe(self, topic_filter: str, qos: int = 1) -> Subscription:
        sub = Subscription(topic_filter)
        with self._lock:
            self._subs.append(sub)
        result, mid = self.client.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic_filter}: {result}"
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
        assert event.wait(WAIT), f"no SUBACK for {topic_filter}"
        return sub

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        if isinstance(payload, str):
            data = payload.encode()
        elif isinstance(payload, bytes | bytearray):
            data = bytes(payload)
        else:
            data = json.dumps(payload).encode()
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"publish to {topic} was not acknowledged"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


class Field:
    """A phone, a reporter and an observer of everything under one topic root.

    ``observer`` is subscribed to ``<root>/#`` before anything is sent, so it sees every
    message the engine publishes, in the order the broker got them.
    """

    def __init__(self, mqtt_url: str, root: str, protocol: int = mqtt.MQTTv5) -> None:
        self.root = root
        self.mqtt_url = mqtt_url
        self.observer = MqttClient(mqtt_url, name="observer")
        self.all = self.observer.subscribe(f"{root}/#")
        # Its own connection: overlapping subscriptions on one would get every message twice.
        self.rejections = MqttClient(mqtt_url, name="rejections")
        self.rejected = self.rejections.subscribe(f"{root}/rejected")
        self.phone = MqttClient(mqtt_url, protocol=protocol, name="phone")
        self.volunteers: set[str] = set()
        self.incidents: set[str] = set()  # ids reported here (to clean up after a test)

    def close(self) -> None:
        self.phone.close()
        self.rejections.close()
        self.observer.close()

    def dump(self, last: int = 40) -> str:
        """The last messages the observer saw, for assertion messages."""
        lines = [
            f"{m.topic.removeprefix(self.root)} {m.payload[:160]!r}" for m in self.all.all()[-last:]
        ]
        return "observed:\n  " + "\n  ".join(lines)

    # ---- topics

    def t(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # ---- inbound

    def status(
        self,
        vid: str,
        status: str = "available",
        *,
        lat: float | None = None,
        lon: float | None = None,
        skills: list[str] | None = None,
        mode: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"status": status}
        if skills is not None:
            body["skills"] = skills
        if mode is not None:
            body["mode"] = mode
        if lat is not None:
            body["lat"], body["lon"] = lat, lon
        self.volunteers.add(vid)
        self.phone.publish(self.t("volunteers", vid, "status"), body)

    def location(self, vid: str, lat: float, lon: float, **extra: Any) -> None:
        self.phone.publish(
            self.t("volunteers", vid, "location"), {"lat": lat, "lon": lon, **extra}, qos=0
        )

    def reply(self, vid: str, alert_id: str, answer: str = "accept") -> None:
        self.phone.publish(
            self.t("volunteers", vid, "reply"), {"alert_id": alert_id, "answer": answer}
        )

    def arrived(self, vid: str, incident_id: str) -> None:
        self.phone.publish(self.t("volunteers", vid, "arrived"), {"incident_id": incident_id})

    def report(self, body: Mapping[str, Any] | bytes | str) -> None:
        if isinstance(body, Mapping) and isinstance(body.get("id"), str):
            self.incidents.add(body["id"])
        self.phone.publish(self.t("incidents", "report"), body)

    # ---- outbound, as seen by the observer

    def alerts(self, vid: str | None = None, incident_id: str | None = None) -> list[Message]:
        def pred(m: Message) -> bool:
            parts = m.topic.split("/")
            if parts[-1] != "alert" or parts[-3] != "volunteers":
                return False
            if vid is not None and parts[-2] != vid:
                return False
            return incident_id is None or m.json.get("incident_id") == incident_id

        return self.all.all(pred)

    def wait_alert(self, vid: str, incident_id: str, timeout: float = WAIT) -> dict[str, Any]:
        topic = self.t("volunteers", vid, "alert")
        m = self.all.wait_for(
            _topic_pred(topic, lambda b: b.get("incident_id") == incident_id),
            timeout,
            f"(alert for {incident_id})",
        )
        body: dict[str, Any] = m.json
        return body

    def assignments(self, vid: str, incident_id: str | None = None) -> list[dict[str, Any]]:
        topic = self.t("volunteers", vid, "assignment")
        return [
            m.json
            for m in self.all.all(
                _topic_pred(topic, lambda b: incident_id is None or b["incident_id"] == incident_id)
            )
        ]

    def wait_assignment(
        self, vid: str, incident_id: str, action: str | None = None, timeout: float = WAIT
    ) -> dict[str, Any]:
        topic = self.t("volunteers", vid, "assignment")
        m = self.all.wait_for(
            _topic_pred(
                topic,
                lambda b: (
                    b.get("incident_id") == incident_id
                    and (action is None or b.get("action") == action)
                ),
            ),
            timeout,
            f"(assignment {action or ''} for {incident_id})",
        )
        body: dict[str, Any] = m.json
        return body

    def states(self, incident_id: str) -> list[Message]:
        return self.all.all(_topic_pred(self.t("incidents", incident_id, "state")))

    def wait_state(
        self,
        incident_id: str,
        state: str | Callable[[dict[str, Any]], bool],
        timeout: float = WAIT,
    ) -> dict[str, Any]:
        def check(b: Any) -> bool:
            return b.get("state") == state if isinstance(state, str) else state(b)

        m = self.all.wait_for(
            _topic_pred(self.t("incidents", incident_id, "state"), check),
            timeout,
            f"(state {state if isinstance(state, str) else '...'} of {incident_id})",
        )
        body: dict[str, Any] = m.json
        return body

    def wait_rejected(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT, start: int = 0
    ) -> dict[str, Any]:
        """The first rejection matching ``pred`` among those after the first ``start``."""

        def match(m: Message) -> bool:
            try:
                return bool(pred(m.json))
            except (ValueError, KeyError, TypeError):
                return False

        body: dict[str, Any] = self.rejected.wait_for(match, timeout, "(rejection)", start).json
        return body

    def sync(self, timeout: float = WAIT, also: Sequence[Subscription] = ()) -> None:
        """Wait until the engine has handled everything sent before, and the observer has
        received everything it published for it.

        The engine handles inbound messages one by one in order, and publishes what each
        one causes before it takes the next; the broker keeps the order per client. So
        once the rejection of a marker sent now arrives, everything before it has too.
        """
        marker = uid("sync")
        topic = self.t("volunteers", marker, "status")
        self.phone.publish(topic, b"sync: not json")
        pred = _topic_pred(self.t("rejected"), lambda b: b.get("topic") == topic)
        # The observer's connection and every other subscription given: each must have
        # had everything the engine published before the marker's rejection.
        for sub in (self.rejected, self.all, *also):
            sub.wait_for(pred, timeout, "(sync marker)")

    def off_duty_all(self) -> None:
        for vid in sorted(self.volunteers):
            self.phone.publish(self.t("volunteers", vid, "status"), {"status": "off_duty"})


# --------------------------------------------------------------------------- HTTP


@dataclass
class HttpResult:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = WAIT,
) -> HttpResult:
    data = None
    all_headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpResult(err.code, dict(err.headers), err.read())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


# --------------------------------------------------------------------------- the engine


class Engine:
    """``python -m dispatch run`` as a child process, stdout and stderr in a log file."""

    def __init__(
        self,
        *,
        mqtt_url: str,
        redis_url: str,
        topic_root: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        token: str = TOKEN,
    ) -> None:
        self.mqtt_url = mqtt_url
        self.redis_url = redis_url
        self.topic_root = topic_root
        self.log_path = log_path
        self.token = token
        self.env = {
            "DISPATCH_HTTP_OPERATOR_TOKEN": token,
            "DISPATCH_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Engine:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        env.update(self.env)
        argv = [
            sys.executable, "-m", "dispatch", "run",
            "--mqtt", self.mqtt_url,
            "--redis", self.redis_url,
            "--http", f"127.0.0.1:{self.port}",
            "--topic-root", self.topic_root,
        ]  # fmt: skip
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                cwd=ENGINE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll GET /readyz until 200; returns the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + timeout
        last = ""
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"the engine exited with {code} before it was ready; log:\n{self.log_tail()}"
                )
            try:
                result = http("GET", self.base + "/readyz", timeout=1.0)
                if result.status == 200:
                    return time.monotonic() - started
                last = f"{result.status} {result.body[:200]!r}"
            except OSError as exc:
                last = str(exc)
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"/readyz not 200 after {timeout}s (last: {last}); log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM; the exit code (a kill after ``timeout`` gives an AssertionError)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    f"the engine did not stop within {timeout}s of SIGTERM; log:\n"
                    + self.log_tail()
                ) from None
        return proc.returncode

    def kill9(self) -> None:
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)

    def ensure_dead(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    # ---- HTTP

    def get(self, path: str, **kw: Any) -> HttpResult:
        return http("GET", self.base + path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> HttpResult:
        return http("POST", self.base + path, body, **kw)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        result = self.get("/metrics")
        assert result.status == 200
        return parse_metrics(result.body.decode())

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def incident(self, iid: str) -> dict[str, Any]:
        result = self.get(f"/api/incidents/{iid}")
        assert result.status == 200, (result.status, result.body)
        body: dict[str, Any] = result.json
        return body


class GatewayProcess:
    """``python -m dispatch gateway`` beside ``engine`` (its Redis and topic root) as a
    child process, its output in a log file."""

    def __init__(
        self, engine: Engine, name: str, log_path: Path, mqtt_url: str | None = None
    ) -> None:
        self.engine = engine
        self.mqtt_url = mqtt_url or engine.mqtt_url  # its own account's, if given
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        env["DISPATCH_GATEWAY_ENABLED"] = "true"
        env["DISPATCH_LOG_LEVEL"] = "info"
        argv = [
            sys.executable, "-m", "dispatch", "gateway",
            "--mqtt", self.mqtt_url,
            "--redis", self.engine.redis_url,
            "--topic-root", self.engine.topic_root,
            "--instance", self.name,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ENGINE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        return self

    def wait_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while "connected to MQTT broker" not in self.log():
            assert self.proc is not None
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, (
                f"gateway {self.name} never connected:\n{self.log()}"
            )
            time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def received(self) -> int:
        """Locations received, from the line the gateway logs when it stops."""
        found = re.findall(r"received (\d+) locations", self.log())
        assert found, f"gateway {self.name} logged no totals:\n{self.log()}"
        return int(found[-1])


@contextlib.contextmanager
def running(engine: Engine) -> Iterator[Engine]:
    """Start, yield, and SIGTERM the engine (asserting exit 0); kill it whatever happens."""
    try:
        engine.start()
        yield engine
        code = engine.stop()
        assert code == 0, f"engine exited {code} on SIGTERM; log:\n{engine.log_tail()}"
    finally:
        engine.ensure_dead()
