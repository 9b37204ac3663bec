"""``dispatch volunteer`` as a subprocess, driven through its stdin, against the engine."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

import pytest
from e2e_harness import ENGINE_DIR, TOKEN, Engine, Field, haversine_m, offset, uid

pytestmark = pytest.mark.e2e

SPOT = (30.2475, 120.1790)  # 南星街道, away from the other e2e tests' spots


class Terminal:
    """The terminal volunteer process; its stdout lines collected by a thread."""

    def __init__(self, engine: Engine, vid: str, at: tuple[float, float], *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        argv = [
            sys.executable, "-m", "dispatch", "volunteer", "--id", vid,
            "--mqtt", engine.mqtt_url, "--topic-root", engine.topic_root,
            "--lat", str(at[0]), "--lon", str(at[1]), "--every", "0.5", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, cwd=ENGINE_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        self.pump = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self.pump.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = 5.0) -> str:
        """The next printed line containing ``text`` (lines before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"no line with {text!r} within {timeout}s; printed:\n  "
                    + "\n  ".join(self.seen[-30:])
                ) from None
            self.seen.append(line)
            if text in line:
                return line

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def kill(self) -> None:
        """Kill it if still running, and close its pipes (no ResourceWarning)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.pump.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    try:
        yield made
    finally:
        for t in made:
            t.kill()


def _on_scene(engine: Engine, iid: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        state = engine.incident(iid)
        if state["state"] == "on_scene":
            return state
        assert time.monotonic() < deadline, f"{iid} not on_scene: {state['state']}"
        time.sleep(0.1)


def test_terminal_volunteer_declines_accepts_walks_there_and_leaves(
    engine: Engine, field: Field, terminals: list[Terminal]
) -> None:
    vid = uid("tv")
    start = offset(*SPOT, 300, 45)
    term = Terminal(engine, vid, start, "--walk", "--speed", "60", "--mode", "bike")
    terminals.append(term)
    term.expect("connected")
    status = field.all.wait_for(lambda m: m.topic == field.t("volunteers", vid, "status"))
    assert not status.retain
    body = status.json
    assert body["status"] == "available"
    assert body["mode"] == "bike"
    assert body["skills"] == ["first_aid"]
    assert haversine_m(body["lat"], body["lon"], *start) < 1
    field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid, "location"), what="a location"
    )

    # An alert is printed readably; "d" declines it.
    first = uid("ti")
    field.report({"id": first, "kind": "medical", "lat": SPOT[0], "lon": SPOT[1],
                  "address": "馒头山社区 7 幢"})  # fmt: skip
    line = term.expect("ALERT")
    assert first in line
    assert "medical" in line
    assert "馒头山社区 7 幢" in line
    assert "300 m" in line
    alert = field.wait_alert(vid, first)
    term.type("d")
    reply = field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid, "reply") and m.json["answer"] != "received"
    )
    assert reply.json == {"alert_id": alert["alert_id"], "answer": "decline"}
    engine.post(f"/api/incidents/{first}/cancel", {}, token=TOKEN)

    # The next one is accepted; after the go it walks there and the engine sees it arrive.
    second = uid("ti")
    field.report({"id": second, "kind": "fall", "lat": SPOT[0], "lon": SPOT[1]})
    term.expect(f"ALERT incident {second}")
    term.type("a")
    assert field.wait_assignment(vid, second, "go")["role"] == "primary"
    assert f"GO to incident {second} as PRIMARY" in term.expect("GO")
    term.expect("walking")
    state = _on_scene(engine, second, 10)
    assert [r["volunteer_id"] for r in state["responders"]] == [vid]  # type: ignore[attr-defined]
    assert field.all.all(lambda m: m.topic == field.t("volunteers", vid, "arrived")) == []
    # It follows the incident's state: the geofence arrival is a verified one.
    term.expect(f"dispatch CONFIRMED your arrival at {second}")
    engine.post(f"/api/incidents/{second}/resolve", {}, token=TOKEN)
    assert "resolved" in term.expect("STAND DOWN")

    # End of input: off duty, and a clean exit.
    term.close_stdin()
    assert term.proc.wait(10) == 0
    off = field.all.wait_for(
        lambda m: (
            m.topic == field.t("volunteers", vid, "status") and m.json["status"] == "off_duty"
        ),
        what="off_duty on exit",
    )
    assert not off.retain


def test_terminal_volunteer_says_here_and_rejects_bad_flags(
    engine: Engine, field: Field, terminals: list[Terminal]
) -> None:
    vid = uid("th")
    term = Terminal(engine, vid, offset(*SPOT, 500, 200))
    terminals.append(term)
    term.expect("connected")
    term.type("h")
    assert "no incident" in term.expect("no incident")
    iid = uid("ti")
    field.report({"id": iid, "kind": "fire", "lat": SPOT[0], "lon": SPOT[1]})
    term.expect(f"ALERT incident {iid}")
    term.type("accept")
    term.expect("GO")
    # 500 m away: "h" only warns, saying how far; nothing is sent.
    term.type("h")
    warning = term.expect("WARNING")
    assert "you are 500 m from incident" in warning
    assert "UNVERIFIED" in warning
    term.expect("h! to send it anyway")
    arrived_topic = field.t("volunteers", vid, "arrived")
    assert field.all.all(lambda m: m.topic == arrived_topic) == []
    # "h!" sends it anyway, with the position (and its accuracy) right before it.
    term.type("h!")
    arrived = field.all.wait_for(lambda m: m.topic == arrived_topic)
    assert arrived.json == {"incident_id": iid}
    assert arrived.qos == 1
    mine = field.all.all(
        lambda m: m.topic in (arrived_topic, field.t("volunteers", vid, "location"))
    )
    before = mine[next(i for i, m in enumerate(mine) if m is arrived) - 1]
    assert before.topic.endswith("/location")
    assert before.json["accuracy_m"] == 10.0
    state = _on_scene(engine, iid, 5)
    assert state["responders"][0]["verified"] is False  # type: ignore[index]
    assert "as UNVERIFIED" in term.expect("UNVERIFIED")
    # Moving onto the spot: the next location confirms it.
    term.type(f"p {SPOT[0]} {SPOT[1]}")
    term.expect(f"dispatch CONFIRMED your arrival at {iid}")
    term.type("s")
    assert "arrival confirmed" in term.expect("going to")
    engine.post(f"/api/incidents/{iid}/cancel", {}, token=TOKEN)
    assert "no need to go" in term.expect("STAND DOWN")
    term.type("q")
    assert term.proc.wait(10) == 0
    field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid, "status") and m.json["status"] == "off_duty"
    )

    bad = subprocess.run(
        [sys.executable, "-m", "dispatch", "volunteer", "--id", "not valid!"],
        cwd=ENGINE_DIR, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--id must be 1-64 characters" in bad.stderr


def _quiet_far_from_now() -> str:
    """A minute of quiet hours twelve hours from now (district time, UTC+8): never now."""
    local = time.gmtime(time.time() + 8 * 3600 + 12 * 3600)
    start = local.tm_hour * 60 + local.tm_min
    end = (start + 1) % 1440
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def _figures(engine: Engine, key: str, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = engine.get("/api/figures", token=TOKEN).json.get(key)
        if got == want:
            return
        assert time.monotonic() < deadline, f"/api/figures {key} is {got}, not {want}"
        time.sleep(0.5)


def test_terminal_volunteer_sends_receipts_keeps_its_budget_and_leaves_a_will(
    engine: Engine, field: Field, terminals: list[Terminal]
) -> None:
    vid = uid("tr")
    start = offset(*SPOT, 250, 300)
    quiet = _quiet_far_from_now()
    term = Terminal(engine, vid, start, "--max-alerts-per-day", "1", "--quiet-hours", quiet)
    terminals.append(term)
    term.expect("connected")
    status = field.all.wait_for(lambda m: m.topic == field.t("volunteers", vid, "status"))
    assert status.json["receipts"] is True
    assert status.json["max_alerts_per_day"] == 1
    assert status.json["quiet_hours"] == quiet

    # An alert: the receipt goes out at once, before anyone decides; the engine logs it.
    first = uid("ti")
    field.report({"id": first, "kind": "medical", "lat": SPOT[0], "lon": SPOT[1]})
    alert = field.wait_alert(vid, first)
    reply_topic = field.t("volunteers", vid, "reply")
    receipt = field.all.wait_for(lambda m: m.topic == reply_topic, what="the receipt")
    assert receipt.json == {"alert_id": alert["alert_id"], "answer": "received"}
    assert receipt.qos == 1
    assert not receipt.retain
    term.expect(f"ALERT incident {first}")
    deadline = time.monotonic() + 5
    while not any(e["type"] == "received" for e in engine.incident(first).get("events", [])):
        assert time.monotonic() < deadline, "no 'received' event in the incident's log"
        time.sleep(0.2)
    [received] = [e for e in engine.incident(first)["events"] if e["type"] == "received"]
    assert 0 <= received["latency_s"] < 5
    # Not an answer: the alert is still pending, and "d" declines it.
    term.type("d")
    field.all.wait_for(
        lambda m: m.topic == reply_topic and m.json["answer"] == "decline", what="decline"
    )
    engine.post(f"/api/incidents/{first}/cancel", {}, token=TOKEN)

    # One alert a day: the next incident, just as near, does not alert it; it rests.
    _figures(engine, "resting_volunteers", 1)
    second = uid("ti")
    field.report({"id": second, "kind": "fall", "lat": SPOT[0], "lon": SPOT[1]})
    time.sleep(2)
    assert field.alerts(vid, second) == []
    engine.post(f"/api/incidents/{second}/cancel", {}, token=TOKEN)

    # Killed (no clean disconnect): the broker publishes its Last Will, and the engine
    # counts it on duty but unreachable.
    term.proc.kill()
    term.proc.wait(5)
    will = field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid, "status") and m.json["status"] == "offline",
        timeout=10,
        what="the Last Will",
    )
    assert will.qos == 1
    assert not will.retain
    _figures(engine, "offline_volunteers", 1)
    field.status(vid, "off_duty")  # leave the shared engine as we found it
