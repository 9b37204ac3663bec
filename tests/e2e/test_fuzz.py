"""Hostile input: 10,000 generated bad messages on every inbound topic, through a real
broker to a running engine, while a control room watches and real reports keep coming.

The unit property (tests/unit/test_codec.py) says any bytes decode or raise BadMessage,
and tests/e2e/test_engine.py walks 55 hand-written bad inputs one at a time. This test
is the volume version: hypothesis generates the messages (deterministically: a fixed
derandomized run), each one wrong in exactly one way that names the rejection code it
must get, plus replays that must be accepted without changing anything. Asserted:

- the engine never crashes (/healthz and /readyz stay 200, the process stays up);
- every message that must be rejected gets exactly one ``rejected`` message with its
  code and a non-empty reason; none that must be accepted does; the metric agrees;
- an incident accepted before the storm keeps its state and responder;
- reports sent during the storm reach their first alert about as fast as before it.

Every fuzz message goes out at QoS 1 (locations too, though the protocol sends them at
QoS 0) so that none is lost on the way and the counts are exact.
"""

from __future__ import annotations

import json
import pickle
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import TOKEN, Engine, Message, MqttClient, offset, running, uid
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from servers import parse_mqtt_url

N_MESSAGES = 10_000
PER_EXAMPLE = 50  # messages drawn per hypothesis example: 200 examples
RATE = 700.0  # fuzz messages per second: a hostile sender well above any real phone
N_LATENCY = 25  # valid reports timed before the storm, and again during it

PRECIOUS = (30.2150, 120.1550)  # the incident accepted before the storm (C2 of test_engine)
POOL = (30.3600, 120.2200)  # volunteers for the timed reports (C4), > 3 km from the rest
BASE = (30.3050, 120.2700)  # where the generated reports would be if they were valid (C3)
KINDS = ("cardiac_arrest", "medical", "fall", "fire", "dispute", "security", "lost_person", "other")
BAD_ID_CHARS = (" ", "!", ".", "é", "$", "%", "~", "火", "\\", ":", "'")
MAX_PAYLOAD = 16 * 1024
IDX = "IDX__"  # replaced by the message's number (5 digits) after drawing


@dataclass(frozen=True)
class Fuzz:
    label: str  # what is wrong with it, for the figures
    topic: str  # below the topic root
    payload: bytes
    code: str | None  # the rejection code it must get; None: must be accepted
    group: str  # "unique": its topic is its own; else the shared topic it is counted on


@dataclass(frozen=True)
class Context:
    precious_id: str
    precious_body: dict[str, Any]
    responder: str  # the volunteer who accepted the precious incident
    alert_id: str  # its alert


def _dump(obj: Any) -> bytes:
    # json.dumps writes NaN, Infinity and -Infinity for those floats: what we want here.
    return json.dumps(obj).encode()


SAFE_INTS = st.integers(-(2**53), 2**53)  # JSON parsers differ beyond 64-bit integers
WRONG_TYPES = st.one_of(
    st.text(max_size=12),
    st.booleans(),
    st.lists(SAFE_INTS, max_size=3),
    st.dictionaries(st.text(max_size=4), SAFE_INTS, max_size=2),
)
NOT_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
HUGE = st.floats(min_value=1e3, max_value=1e300)


def _bad_vid(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return f"fz{IDX}" + "x" * 64  # too long
    return f"fz{IDX}{draw(st.sampled_from(BAD_ID_CHARS))}{draw(st.text('abc', max_size=3))}"


@st.composite
def fuzz_message(draw: st.DrawFn, ctx: Context) -> Fuzz:
    """One bad (or replayed) message; IDX in it becomes its number, to make it unique."""
    vid = f"fz{IDX}"
    lat, lon = offset(*BASE, draw(st.floats(0, 300)), draw(st.floats(0, 359)))
    target = draw(
        st.sampled_from(["report"] * 4 + ["status"] * 2 + ["location"] * 2 + ["reply", "arrived"])
    )
    pad = "x" * draw(st.integers(MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD))

    def junk() -> bytes:
        return b"\xff" + draw(st.binary(max_size=40))

    def not_object() -> bytes:
        value = draw(st.one_of(SAFE_INTS, st.text(max_size=20), st.lists(SAFE_INTS, max_size=4)))
        return _dump(value)

    if target == "report":
        topic = "incidents/report"
        body: dict[str, Any] = {"id": vid, "kind": draw(st.sampled_from(KINDS)), "lat": lat}
        body["lon"] = lon
        what = draw(
            st.sampled_from(
                ["not_json", "truncated", "not_object", "too_large", "not_finite",
                 "out_of_range", "outside_area", "wrong_type", "unknown_kind",
                 "missing_field", "bad_id", "bad_time", "future_time", "conflict", "replay"]
            )
        )  # fmt: skip
        if what == "not_json":
            return Fuzz(what, topic, junk(), "not_json", topic)
        if what == "truncated":
            whole = _dump(body)
            return Fuzz(
                what, topic, whole[: draw(st.integers(0, len(whole) - 1))], "not_json", topic
            )
        if what == "not_object":
            return Fuzz(what, topic, not_object(), "not_object", topic)
        if what == "too_large":
            return Fuzz(what, topic, _dump({**body, "description": pad}), "too_large", topic)
        if what == "not_finite":
            body[draw(st.sampled_from(["lat", "lon"]))] = draw(NOT_FINITE)
            return Fuzz(what, topic, _dump(body), "not_finite", topic)
        if what == "out_of_range":
            field = draw(st.sampled_from(["lat", "lon", "priority", "responders"]))
            value = draw(HUGE)
            body[field] = value if field != "priority" else draw(st.integers(4, 10**6))
            if field == "responders":
                body[field] = draw(st.integers(11, 10**6))
            if draw(st.booleans()):
                body[field] = -body[field]
            return Fuzz(what, topic, _dump(body), "out_of_range", topic)
        if what == "outside_area":
            body["lat"] = draw(st.one_of(st.floats(20.0, 29.9), st.floats(30.6, 45.0)))
            body["lon"] = draw(st.floats(100.0, 130.0))
            return Fuzz(what, topic, _dump(body), "outside_area", topic)
        if what == "wrong_type":
            field = draw(st.sampled_from(["lat", "lon", "priority", "responders", "skills"]))
            value = draw(WRONG_TYPES)
            if field == "skills" and isinstance(value, list):
                value = {"first_aid": 1}
            body[field] = value
            return Fuzz(what, topic, _dump(body), "wrong_type", topic)
        if what == "unknown_kind":
            body["kind"] = draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in KINDS))
            return Fuzz(what, topic, _dump(body), "unknown_kind", topic)
        if what == "missing_field":
            del body[draw(st.sampled_from(["kind", "lat", "lon"]))]
            return Fuzz(what, topic, _dump(body), "missing_field", topic)
        if what == "bad_id":
            body["id"] = _bad_vid(draw)
            return Fuzz(what, topic, _dump(body), "bad_id", topic)
        if what == "bad_time":
            body["reported_at"] = draw(
                st.sampled_from(["2026-11-26T10:00:00", "yesterday", "2026-13-45T99:00:00Z", ""])
            )
            return Fuzz(what, topic, _dump(body), "bad_time", topic)
        if what == "future_time":
            body["reported_at"] = draw(st.floats(4e9, 2.5e11))  # years 2096..9892
            return Fuzz(what, topic, _dump(body), "future_time", topic)
        if what == "conflict":  # a replay of the precious report's id with another body
            changed = {**ctx.precious_body, "description": f"replayed {IDX}"}
            return Fuzz(what, topic, _dump(changed), "conflict", topic)
        # An identical replay: the receipt again, nothing else.
        return Fuzz(what, topic, _dump(ctx.precious_body), None, topic)

    if target == "status":
        what = draw(
            st.sampled_from(
                ["not_json", "not_object", "too_large", "not_finite", "out_of_range",
                 "wrong_type", "unknown_value", "missing_field", "bad_id"]
            )
        )  # fmt: skip
        body = {"status": "available", "skills": ["first_aid"], "lat": lat, "lon": lon}
        code = what
        if what == "not_json":
            payload = junk()
        elif what == "not_object":
            payload = not_object()
        elif what == "too_large":
            payload = _dump({**body, "pad": pad})
        elif what == "not_finite":
            body[draw(st.sampled_from(["lat", "lon"]))] = draw(NOT_FINITE)
            payload = _dump(body)
        elif what == "out_of_range":
            body[draw(st.sampled_from(["lat", "lon"]))] = draw(HUGE) * draw(
                st.sampled_from([1, -1])
            )
            payload = _dump(body)
        elif what == "wrong_type":
            field = draw(st.sampled_from(["lat", "lon", "skills"]))
            value = draw(WRONG_TYPES)
            body[field] = {"x": 1} if field == "skills" and isinstance(value, list) else value
            payload = _dump(body)
        elif what == "unknown_value":
            field = draw(st.sampled_from(["status", "mode"]))
            allowed = ("available", "off_duty") if field == "status" else ("walk", "bike", "ebike")
            body[field] = draw(st.text(min_size=1, max_size=12).filter(lambda v: v not in allowed))
            payload = _dump(body)
        elif what == "missing_field":  # a first "available" without a position
            del body[draw(st.sampled_from(["lat", "lon"]))]
            if draw(st.booleans()):
                body.pop("lat", None)
                body.pop("lon", None)
            payload = _dump(body)
        else:
            vid = _bad_vid(draw)
            payload = _dump({"status": "off_duty"})
        topic = f"volunteers/{vid}/status"
        return Fuzz(what, topic, payload, code, "unique")

    if target == "location":
        what = draw(
            st.sampled_from(
                ["not_json", "too_large", "not_finite", "out_of_range", "wrong_type",
                 "missing_field", "bad_id", "outside_area_ok", "responder_bad"]
            )
        )  # fmt: skip
        body = {"lat": lat, "lon": lon}
        code: str | None = what
        group = "unique"
        if what == "not_json":
            payload = junk()
        elif what == "too_large":
            payload = _dump({**body, "pad": pad})
        elif what == "not_finite":
            body[draw(st.sampled_from(["lat", "lon", "accuracy_m"]))] = draw(NOT_FINITE)
            payload = _dump(body)
        elif what == "out_of_range":
            field = draw(st.sampled_from(["lat", "lon", "accuracy_m"]))
            if field == "accuracy_m":
                body[field] = -draw(st.floats(0.001, 1e6))
            else:
                body[field] = draw(HUGE) * draw(st.sampled_from([1, -1]))
            payload = _dump(body)
        elif what == "wrong_type":
            body[draw(st.sampled_from(["lat", "lon"]))] = draw(WRONG_TYPES)
            payload = _dump(body)
        elif what == "missing_field":
            del body[draw(st.sampled_from(["lat", "lon"]))]
            payload = _dump(body)
        elif what == "bad_id":
            vid = _bad_vid(draw)
            payload = _dump(body)
        elif what == "outside_area_ok":  # volunteers may be anywhere: kept, not rejected
            payload = _dump({"lat": draw(st.floats(-89, 29.9)), "lon": draw(st.floats(-179, 179))})
            code = None
        else:  # the responder's own topic, garbage: rejected, and the responder is untouched
            vid, group, code = ctx.responder, f"volunteers/{ctx.responder}/location", "not_finite"
            payload = b'{"lat": NaN, "lon": 120.155}'
        topic = f"volunteers/{vid}/location"
        return Fuzz(what, topic, payload, code, group if group == "unique" else topic)

    if target == "reply":
        what = draw(
            st.sampled_from(
                ["not_json", "wrong_type", "unknown_value", "unknown_alert", "not_alerted",
                 "bad_id", "replay"]
            )
        )  # fmt: skip
        body = {"alert_id": ctx.alert_id, "answer": draw(st.sampled_from(["accept", "decline"]))}
        code = what
        group = "unique"
        if what == "not_json":
            payload = junk()
        elif what == "wrong_type":
            field = draw(st.sampled_from(["alert_id", "answer"]))
            value = draw(WRONG_TYPES)
            body[field] = value if not isinstance(value, str) else len(value)
            payload = _dump(body)
        elif what == "unknown_value":
            body["answer"] = draw(
                # not a valid answer (1.1's "received", this project's "withdraw")
                st.text(max_size=12).filter(
                    lambda a: a not in ("accept", "decline", "received", "withdraw")
                )
            )
            payload = _dump(body)
        elif what == "unknown_alert":
            body["alert_id"] = f"fzalert{IDX}{draw(st.text('0123456789abcdef', max_size=20))}"
            payload = _dump(body)
        elif what == "not_alerted":  # the responder's alert, answered by somebody else
            payload = _dump(body)
        elif what == "bad_id":
            vid = _bad_vid(draw)
            payload = _dump(body)
        else:  # the responder's answer again: a retry, confirmed or ignored, never changed
            vid, code = ctx.responder, None
            group = f"volunteers/{ctx.responder}/reply"
            payload = _dump(body)
        topic = f"volunteers/{vid}/reply"
        return Fuzz(what, topic, payload, code, group)

    what = draw(
        st.sampled_from(
            ["not_json", "not_object", "too_large", "wrong_type", "bad_id", "unknown_incident",
             "not_alerted"]
        )
    )  # fmt: skip
    body = {"incident_id": ctx.precious_id}
    code = what
    if what == "not_json":
        payload = junk()
    elif what == "not_object":
        payload = not_object()
    elif what == "too_large":
        payload = _dump({**body, "pad": pad})
    elif what == "wrong_type":
        value = draw(WRONG_TYPES)
        payload = _dump({"incident_id": value if not isinstance(value, str) else len(value)})
    elif what == "bad_id":
        payload = _dump({"incident_id": _bad_vid(draw)})
    elif what == "unknown_incident":
        payload = _dump({"incident_id": f"fzinc{IDX}"})
    else:  # somebody who was never alerted claims to be at the precious incident
        payload = _dump(body)
    return Fuzz(what, f"volunteers/{vid}/arrived", payload, code, "unique")


def generate(ctx: Context) -> list[Fuzz]:
    """N_MESSAGES messages from a derandomized hypothesis run: the same every time."""
    drawn: list[Fuzz] = []

    @settings(
        max_examples=N_MESSAGES // PER_EXAMPLE + 50,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(fuzz_message(ctx), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def draw_batch(batch: list[Fuzz]) -> None:
        drawn.extend(batch)

    draw_batch()
    assert len(drawn) >= N_MESSAGES, f"hypothesis gave only {len(drawn)} messages"
    out = []
    for i, m in enumerate(drawn[:N_MESSAGES]):
        n = f"{i:05d}"  # as long as IDX: a truncated payload stays as long as drawn
        out.append(
            Fuzz(m.label, m.topic.replace(IDX, n), m.payload.replace(IDX.encode(), n.encode()),
                 m.code, m.group)
        )  # fmt: skip
    return out


# --------------------------------------------------------------------------- the run


def _pctl(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


class Timer:
    """Valid reports near the pool, one at a time: report -> first alert, then cancel."""

    def __init__(self, engine: Engine, phone: MqttClient, alerts: Any, states: Any) -> None:
        self.engine, self.phone, self.alerts, self.states = engine, phone, alerts, states
        self.root = engine.topic_root

    def one(self, tag: str) -> float:
        iid = uid(tag)
        body = {"id": iid, "kind": "fire", "lat": POOL[0], "lon": POOL[1]}
        start = len(self.alerts.all())
        sent = time.monotonic()
        self.phone.publish(f"{self.root}/incidents/report", body)
        first: Message = self.alerts.wait_for(
            lambda m: m.json.get("incident_id") == iid, 10.0, f"(alert for {iid})", start
        )
        latency = first.received - sent
        result = self.engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)
        assert result.status == 200, result.body
        self.states.wait_for(
            lambda m: m.topic.endswith(f"/{iid}/state") and m.json.get("state") == "cancelled",
            10.0,
        )
        return latency


# The sender: publish every (topic, payload) of a pickle at QoS 1 at a steady rate, wait
# for every PUBACK, print "sent N". paho-mqtt, like the tests, not the engine's library.
STORM = """
import pickle, sys, time, uuid
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
path, host, port, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
messages = pickle.loads(open(path, "rb").read())
client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                     client_id="fuzz-" + uuid.uuid4().hex[:8], protocol=mqtt.MQTTv5)
client.connect(host, port, keepalive=30)
client.loop_start()
infos, started = [], time.monotonic()
for n, (topic, payload) in enumerate(messages):
    wait = started + n / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    infos.append(client.publish(topic, payload, qos=1))
for info in infos:
    info.wait_for_publish(30)
    assert info.is_published() and info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
client.disconnect()
client.loop_stop()
print("sent", len(infos))
"""


@pytest.mark.timeout(180)
def test_ten_thousand_hostile_messages(
    engine_factory: Callable[..., Engine],
    mqtt_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    engine = engine_factory()
    root = engine.topic_root
    with running(engine):
        phone = MqttClient(mqtt_url, name="phone")
        fuzzer = MqttClient(mqtt_url, name="fuzzer")
        watcher = MqttClient(mqtt_url, name="watcher")
        rejections = MqttClient(mqtt_url, name="rejections")
        try:
            rejected = rejections.subscribe(f"{root}/rejected")
            alerts = watcher.subscribe(f"{root}/volunteers/+/alert")
            assignments = watcher.subscribe(f"{root}/volunteers/+/assignment")
            states = watcher.subscribe(f"{root}/incidents/+/state")

            # Before: an accepted incident with its responder, and a pool of volunteers.
            responder = uid("hero")
            lat, lon = offset(*PRECIOUS, 150, 30)
            phone.publish(
                f"{root}/volunteers/{responder}/status",
                {"status": "available", "skills": ["first_aid"], "lat": lat, "lon": lon},
            )
            for k in range(10):
                plat, plon = offset(*POOL, 80 * (k + 1), 36 * k)
                phone.publish(
                    f"{root}/volunteers/{uid('pool')}/status",
                    {"status": "available", "lat": plat, "lon": plon},
                )
            precious_id = uid("precious")
            precious_body = {
                "id": precious_id, "kind": "medical", "lat": PRECIOUS[0], "lon": PRECIOUS[1]
            }  # fmt: skip
            phone.publish(f"{root}/incidents/report", precious_body)
            alert = alerts.wait_for(lambda m: m.json.get("incident_id") == precious_id).json
            phone.publish(
                f"{root}/volunteers/{responder}/reply",
                {"alert_id": alert["alert_id"], "answer": "accept"},
            )
            assignments.wait_for(lambda m: m.json.get("action") == "go")
            states.wait_for(lambda m: m.json.get("state") == "assigned")
            before = engine.incident(precious_id)
            assert rejected.all() == [], [m.json for m in rejected.all()]

            ctx = Context(precious_id, precious_body, responder, alert["alert_id"])
            t0 = time.monotonic()
            messages = generate(ctx)
            generated_s = time.monotonic() - t0
            assert len(messages) == N_MESSAGES
            assert len({m.topic for m in messages if m.group == "unique"}) == sum(
                m.group == "unique" for m in messages
            ), "unique topics are not unique"

            timer = Timer(engine, phone, alerts, states)
            baseline = [timer.one("calm") for _ in range(N_LATENCY)]
            metrics_before = engine.metrics()

            # The storm, at RATE messages per second, from a process of its own (so the
            # timing of valid reports here does not share an interpreter lock with it).
            batch = tmp_path / "storm.pickle"
            batch.write_bytes(pickle.dumps([(f"{root}/{m.topic}", m.payload) for m in messages]))
            host, port = parse_mqtt_url(mqtt_url)
            t_storm = time.monotonic()
            sender = subprocess.Popen(
                [sys.executable, "-c", STORM, str(batch), host, str(port), str(RATE)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                during: list[float] = []
                while sender.poll() is None and len(during) < 3 * N_LATENCY:
                    during.append(timer.one("storm"))
                    assert engine.get("/healthz").status == 200
                out, _ = sender.communicate(timeout=60)
            finally:
                if sender.poll() is None:
                    sender.kill()
                    sender.wait()
            assert sender.returncode == 0, out.decode(errors="replace")
            assert out.decode().strip() == f"sent {N_MESSAGES}", out
            storm_s = time.monotonic() - t_storm

            # Every rejection arrives (the engine works through them in order).
            expected = [m for m in messages if m.code is not None]
            rejected.wait_count(len(expected), timeout=60)
            drained_s = time.monotonic() - t_storm
            marker = f"{root}/volunteers/{uid('sync')}/status"
            fuzzer.publish(marker, b"sync")
            rejected.wait_for(lambda m: m.json.get("topic") == marker, timeout=30)
            got = [m.json for m in rejected.all() if m.json.get("topic") != marker]

            # The engine is alive and ready, and nothing of what it had is changed.
            assert engine.proc is not None
            assert engine.proc.poll() is None
            assert engine.get("/healthz").status == 200
            assert engine.get("/readyz").status == 200
            after = engine.incident(precious_id)
            for key in ("state", "kind", "lat", "lon", "priority", "responders", "version"):
                assert after.get(key) == before.get(key), key
            assert after["responders"][0]["volunteer_id"] == responder

            # Exactly one rejection per bad message, with its code and a reason.
            assert all(isinstance(r.get("reason"), str) and r["reason"] for r in got)
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for r in got:
                by_topic.setdefault(r["topic"].removeprefix(root + "/"), []).append(r)
            wrong = []
            for m in messages:
                if m.group != "unique":
                    continue
                seen = by_topic.get(m.topic, [])
                codes = [r["code"] for r in seen]
                want = [] if m.code is None else [m.code]
                if codes != want:
                    wrong.append((m.label, m.topic, m.payload[:100], codes, want))
            shared = {m.group for m in messages if m.group != "unique"}
            for topic in shared:
                want_codes = Counter(m.code for m in messages if m.group == topic and m.code)
                got_codes = Counter(r["code"] for r in by_topic.get(topic, []))
                if want_codes != got_codes:
                    wrong.append(("shared", topic, b"", got_codes, want_codes))
            assert not wrong, f"{len(wrong)} messages got the wrong rejections, e.g. {wrong[:8]}"
            assert len(got) == len(expected)
            conflicts = [r for r in got if r["code"] == "conflict"]
            assert all(r["id"] == precious_id for r in conflicts)

            metrics_after = engine.metrics()
            want_metric = Counter(m.code for m in expected)
            want_metric["not_json"] += 1  # the sync marker
            for code, count in want_metric.items():
                key = ("dispatch_rejected_messages_total", frozenset({("reason", code)}))
                delta = metrics_after.get(key, 0.0) - metrics_before.get(key, 0.0)
                assert delta == count, f"metric for {code}: +{delta}, expected +{count}"

            # Valid traffic: as fast during the storm as before it.
            p50_before, p50_during = statistics.median(baseline), statistics.median(during)
            figures = (
                f"fuzz: {N_MESSAGES} messages ({len(expected)} to reject, "
                f"{N_MESSAGES - len(expected)} replays/valid-but-odd) generated in "
                f"{generated_s:.1f} s, sent in {storm_s:.1f} s at <= {RATE:.0f}/s, all "
                f"rejections in by {drained_s:.1f} s; report->first alert p50 "
                f"{p50_before * 1000:.1f} ms before ({len(baseline)}), "
                f"{p50_during * 1000:.1f} ms during ({len(during)}), p90 "
                f"{_pctl(baseline, 0.9) * 1000:.1f} / {_pctl(during, 0.9) * 1000:.1f} ms; "
                f"codes {dict(sorted(Counter(m.code for m in expected).items()))}"
            )
            with capsys.disabled():
                print("\n" + figures)
            assert len(during) >= 5, figures
            assert p50_during < 3 * p50_before + 0.020, figures
        finally:
            for client in (rejections, watcher, fuzzer, phone):
                client.close()
