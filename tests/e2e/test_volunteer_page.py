"""The volunteer page (/volunteer) in a real headless Chromium at a phone's size.

The page speaks MQTT over WebSockets to the test broker's websockets listener, exactly as
a phone would; the engine runs as a process (``python -m dispatch run``) and learns the
broker's websockets port from ``DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT``. Positions come
from Chromium's emulated geolocation, set by the test. We observe the wire with paho-mqtt
(``Field``) and the engine through its HTTP API.

Screenshots of every screen go to test-output/volunteer-*.png, and with
DISPATCH_UPDATE_SCREENSHOTS=1 also to docs/volunteer-*.png (the pictures of the docs and
the README; not on every run, so that a test run leaves the tree clean).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import servers
from e2e_harness import Engine, Field, haversine_m, http, offset, running, uid
from servers import free_port, next_redis_db, wait_for_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
OUTPUT = REPO / "test-output"
PHONE = {"width": 390, "height": 844}
# 小营巷, in the old town; the volunteers stand a few hundred metres away.
INCIDENT = (30.2591, 120.1698)


@pytest.fixture
def ws_engine(engine_factory: Callable[..., Engine], mqtt_ws_port: int | None) -> Iterator[Engine]:
    if mqtt_ws_port is None:
        servers.skip_or_fail(
            "the test broker has no websockets listener (mosquitto built without it)"
        )
    engine = engine_factory(
        env={
            "DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT": str(mqtt_ws_port),
            "DISPATCH_VOLUNTEER_APP_OPEN_BROKER": "true",
        }
    )
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def field(ws_engine: Engine, mqtt_url: str) -> Iterator[Field]:
    f = Field(mqtt_url, ws_engine.topic_root)
    try:
        yield f
    finally:
        f.close()


class Phone:
    """One volunteer's phone: a browser context with location granted, and its errors."""

    def __init__(
        self, browser: Any, base: str, at: tuple[float, float], locale: str = "zh-CN"
    ) -> None:
        self.context = browser.new_context(
            viewport=PHONE,
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
            locale=locale,
            geolocation={"latitude": at[0], "longitude": at[1], "accuracy": 8},
            permissions=["geolocation"],
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.goto(base + "/volunteer")
        self.screen("signin")

    def screen(self, name: str, timeout: float = 5_000) -> None:
        self.page.wait_for_selector(f"body[data-screen={name}]", timeout=timeout)

    def sign_in(self, vid: str, password: str = "") -> None:
        self.page.fill("#vid", vid)
        self.page.fill("#password", password)
        self.page.click("#signin")
        self.screen("home", timeout=10_000)
        self.page.wait_for_selector("#conn[data-state=online]", timeout=5_000)

    def on_duty(self) -> None:
        self.page.click("#duty")
        self.page.wait_for_selector("#duty-card[data-duty=on]", timeout=5_000)

    def move(self, at: tuple[float, float]) -> None:
        self.context.set_geolocation({"latitude": at[0], "longitude": at[1], "accuracy": 5})

    def shot(self, name: str) -> None:
        self.page.wait_for_timeout(300)  # let transitions settle
        OUTPUT.mkdir(exist_ok=True)
        path = OUTPUT / f"volunteer-{name}.png"
        self.page.screenshot(path=str(path))
        if os.environ.get("DISPATCH_UPDATE_SCREENSHOTS") == "1":
            (DOCS / path.name).write_bytes(path.read_bytes())

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def phones(browser: Any, ws_engine: Engine) -> Iterator[Callable[..., Phone]]:
    made: list[Phone] = []

    def make(at: tuple[float, float], locale: str = "zh-CN") -> Phone:
        phone = Phone(browser, ws_engine.base, at, locale)
        made.append(phone)
        return phone

    try:
        yield make
    finally:
        for phone in made:
            phone.close()


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def _volunteer(engine: Engine, vid: str) -> dict[str, Any] | None:
    body = engine.get("/api/volunteers").json
    return next((v for v in body["volunteers"] if v["id"] == vid), None)


def test_volunteer_signs_in_is_alerted_goes_arrives_and_the_backup_stands_down(
    ws_engine: Engine, field: Field, phones: Callable[..., Phone]
) -> None:
    engine = ws_engine
    a_at = offset(*INCIDENT, 250, 200)  # about 3.5 minutes' walk
    b_at = offset(*INCIDENT, 420, 20)
    # Readable ids for the screenshots; each test has an engine (and topic root) of its own.
    vid_a, vid_b = "zhang-wei", "li-na"

    a = phones(a_at)
    assert a.page.locator("#demo-note").is_visible()  # open broker: any id works
    a.shot("signin")
    a.page.fill("#vid", "张三 bad id")
    a.page.click("#signin")
    assert a.page.locator("#signin-error").is_visible()  # the id is checked before connecting
    assert a.page.locator("body[data-screen=signin]").count() == 1
    a.sign_in(vid_a)
    assert a.page.locator("#offline-banner").is_hidden()
    a.shot("off-duty")

    # On duty: the first status carries the position; locations follow every few seconds.
    a.on_duty()
    status = field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid_a, "status"), what="the page's status"
    )
    assert not status.retain
    assert status.qos == 1
    body = status.json
    assert body["status"] == "available"
    assert body["mode"] == "walk"
    assert body["skills"] == ["first_aid"]
    # Protocol 1.1: receipts always; no limits set: the highest budget, no quiet hours.
    assert body["receipts"] is True
    assert body["max_alerts_per_day"] == 100
    assert body["quiet_hours"] is None
    assert haversine_m(body["lat"], body["lon"], *a_at) < 1
    _wait(lambda: _volunteer(engine, vid_a) is not None, 5, "the engine to list the volunteer")
    seen = _volunteer(engine, vid_a)
    assert seen is not None
    assert seen["status"] == "available"
    assert haversine_m(seen["lat"], seen["lon"], *a_at) < 150  # coarsened for the map
    location = field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid_a, "location"),
        timeout=8,
        what="a periodic location",
    )
    assert location.qos == 0
    assert not location.retain
    assert haversine_m(location.json["lat"], location.json["lon"], *a_at) < 1
    # Choosing a mode tells the engine at once.
    a.page.click("#modes button[data-mode=bike]")
    field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid_a, "status") and m.json["mode"] == "bike",
        what="the new mode",
    )
    a.shot("on-duty")

    b = phones(b_at, locale="en-US")
    assert "Sign in" in b.page.locator("#signin").inner_text()  # English from the locale
    b.sign_in(vid_b)
    b.on_duty()
    _wait(lambda: _volunteer(engine, vid_b) is not None, 5, "the second volunteer")

    # An incident nearby: both phones ring within 2 s.
    iid = uid("inc")
    started = time.monotonic()
    field.report(
        {"id": iid, "kind": "medical", "lat": INCIDENT[0], "lon": INCIDENT[1],
         "address": "小营巷 12 号 3 单元", "description": "老人跌倒", "responders": 1}
    )  # fmt: skip
    a.page.wait_for_selector("#alert:not([hidden])", timeout=2_000)
    assert time.monotonic() - started < 2.0
    b.page.wait_for_selector("#alert:not([hidden])", timeout=2_000)
    alert = field.wait_alert(vid_a, iid)
    card = a.page.locator("#alert").inner_text()
    assert "急症" in card
    assert "危及生命" in card
    assert "小营巷 12 号" in card
    assert f"{round(alert['distance_m'])} 米" in card
    assert a.page.locator("#a-desc").inner_text() == "老人跌倒"  # what the caller said
    count = a.page.locator("#a-count").inner_text()
    minutes, _, seconds = count.partition(":")
    assert 60 < int(minutes) * 60 + int(seconds) <= 90  # counting down to expires_at
    assert "Medical" in b.page.locator("#a-kind").inner_text()
    a.shot("alert")

    # A accepts: go as the primary responder, and the guidance view. (B's browser asks for
    # the compass as iOS does: on the tap that accepts.)
    b.page.evaluate(
        "DeviceOrientationEvent.requestPermission ="
        " async () => { window.asked = true; return 'granted'; }"
    )
    a.page.click("#accept")
    reply = field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid_a, "reply") and m.json["answer"] == "accept",
        what="the page's reply",
    )
    assert reply.json == {"alert_id": alert["alert_id"], "answer": "accept"}
    assert reply.qos == 1
    assert not reply.retain
    assert field.wait_assignment(vid_a, iid, "go")["role"] == "primary"
    a.screen("guide")
    guide = a.page.locator("#s-guide").inner_text()
    assert "小营巷 12 号 3 单元" in guide
    assert a.page.locator("#g-desc").inner_text() == "老人跌倒"
    assert a.page.locator("#g-role").get_attribute("data-role") == "primary"
    assert "主要响应者" in a.page.locator("#g-role").inner_text()
    shown = a.page.locator("#g-dist").inner_text()
    assert shown == "250 米", shown
    geo = a.page.locator("#nav-geo").get_attribute("href") or ""
    assert geo.startswith(f"geo:{INCIDENT[0]},{INCIDENT[1]}")
    amap = a.page.locator("#nav-amap").get_attribute("href") or ""
    assert amap.startswith("amapuri://route/plan/?dlat=30.2591&dlon=120.1698")
    assert "dev=1" in amap
    # A chose the bike: the routes are for riding.
    assert "&t=3" in amap
    assert "rideType" not in amap
    baidu = a.page.locator("#nav-baidu").get_attribute("href") or ""
    assert "mode=riding" in baidu
    assert a.page.locator("#nav-mode").inner_text() == "按自行车路线"
    # No heading yet: north up, as before. Then the phone gives its heading: the arrow turns.
    assert "箭头以正北为上" in a.page.locator("#g-heading-note").inner_text()
    a.page.evaluate(
        "window.dispatchEvent(new DeviceOrientationEvent('deviceorientationabsolute',"
        " {alpha: 90, beta: 0, gamma: 0, absolute: true}))"
    )
    assert a.page.locator("#g-heading-note").inner_text() == "箭头已按手机朝向校正。"
    assert a.page.locator("#compass-rose").get_attribute("transform") == "rotate(-270)"
    a.shot("guide")

    # B accepts too and goes as a backup (protocol 1.1), told so plainly.
    b.page.click("#accept")
    assert b.page.evaluate("window.asked") is True
    assert field.wait_assignment(vid_b, iid, "go")["role"] == "backup"
    b.screen("guide")
    b.page.wait_for_selector("#g-role[data-role=backup]", timeout=2_000)
    backup_text = b.page.locator("#g-role").inner_text()
    assert "BACKUP" in backup_text
    assert "stood down" in backup_text
    b.shot("guide-backup")

    # A walks onto the incident: the engine detects arrival from the location alone.
    a.move(offset(*INCIDENT, 8, 90))
    _wait(
        lambda: engine.incident(iid)["state"] == "on_scene",
        10,
        "the incident to be on_scene from the location",
    )
    state = engine.incident(iid)
    roles = {r["volunteer_id"]: r["role"] for r in state["responders"]}
    assert roles == {vid_a: "primary", vid_b: "backup"}
    assert state["responders"][0]["arrived_at"]
    assert state["responders"][0]["verified"] is True
    assert state["arrival_verified"] is True
    assert field.all.all(lambda m: m.topic == field.t("volunteers", vid_a, "arrived")) == []
    a.page.wait_for_selector("#arrived-box:not([hidden])", timeout=5_000)
    assert a.page.locator("#here").is_disabled()
    # The engine's own word, from the incident's state: the arrival is verified.
    a.page.wait_for_selector("#arrival-check[data-verified=yes]", timeout=5_000)
    assert "已核实" in a.page.locator("#arrival-check").inner_text()
    a.shot("arrived")

    # Enough on scene: the backup is stood down and sees a calm message.
    field.wait_assignment(vid_b, iid, "stand_down")
    b.screen("stood")
    assert b.page.locator("#alert").is_hidden()
    assert "Others are on scene now" in b.page.locator("#stood-reason").inner_text()
    assert b.page.locator("#stood-title").inner_text() == "You are not needed"  # never there
    b.shot("stood-down")
    b.page.click("#stood-ok")
    b.screen("home")

    # Resolved by the control room: a calm thank-you.
    assert engine.post(f"/api/incidents/{iid}/resolve", {}, token=engine.token).status == 200
    a.screen("stood")
    # After arriving and helping: thanks, never "you are not needed".
    assert a.page.locator("#stood-title").inner_text() == "谢谢你！"
    assert a.page.locator("#s-stood").get_attribute("data-thanks") == "true"
    assert "已处理完毕" in a.page.locator("#stood-reason").inner_text()
    a.shot("thanks")
    a.page.click("#stood-ok")

    # Off duty: the status says so and no location is sent any more.
    a.page.click("#duty")
    field.all.wait_for(
        lambda m: (
            m.topic == field.t("volunteers", vid_a, "status") and m.json["status"] == "off_duty"
        ),
        what="off_duty",
    )
    a.page.wait_for_timeout(300)
    n = len(field.all.all(lambda m: m.topic == field.t("volunteers", vid_a, "location")))
    a.page.wait_for_timeout(6_000)
    after = len(field.all.all(lambda m: m.topic == field.t("volunteers", vid_a, "location")))
    assert after == n, "locations were sent off duty"
    _wait(lambda: _volunteer(engine, vid_a) is None, 5, "the engine to forget the volunteer")
    assert a.errors == [], a.errors
    assert b.errors == [], b.errors


def test_i_am_here_button_and_decline(
    ws_engine: Engine, field: Field, phones: Callable[..., Phone]
) -> None:
    vid = "wang-fang"
    phone = phones(offset(*INCIDENT, 600, 300), locale="en-US")
    phone.sign_in(vid)
    phone.on_duty()
    _wait(lambda: _volunteer(ws_engine, vid) is not None, 5, "the volunteer")

    # Declined: the reply goes out and the card closes; no stand-down screen is shown.
    first = uid("inc")
    field.report({"id": first, "kind": "fall", "lat": INCIDENT[0], "lon": INCIDENT[1]})
    phone.page.wait_for_selector("#alert:not([hidden])", timeout=2_000)
    alert = field.wait_alert(vid, first)
    phone.page.click("#decline")
    reply = field.all.wait_for(
        lambda m: m.topic == field.t("volunteers", vid, "reply") and m.json["answer"] != "received"
    )
    assert reply.json == {"alert_id": alert["alert_id"], "answer": "decline"}
    phone.screen("home")
    assert phone.page.locator("#alert").is_hidden()
    ws_engine.post(f"/api/incidents/{first}/cancel", {}, token=ws_engine.token)

    # Accepted, then "I'm here" far from the spot: the page warns first, saying how far.
    second = uid("inc")
    field.report({"id": second, "kind": "fire", "lat": INCIDENT[0], "lon": INCIDENT[1]})
    phone.page.wait_for_selector("#alert:not([hidden])", timeout=2_000)
    phone.page.click("#accept")
    phone.screen("guide")
    phone.page.click("#here")
    phone.page.wait_for_selector("#far:not([hidden])", timeout=8_000)
    far = phone.page.locator("#far").inner_text()
    away = round(haversine_m(*offset(*INCIDENT, 600, 300), *INCIDENT))
    shown = int(phone.page.locator("#far").get_attribute("data-distance") or "0")
    assert abs(shown - away) <= 1, (shown, away)
    assert f"about {shown} m from the incident" in far, far
    assert "UNVERIFIED" in far
    phone.shot("far-warning")
    arrived_topic = field.t("volunteers", vid, "arrived")
    # Not yet: nothing is sent.
    phone.page.click("#far-cancel")
    assert phone.page.locator("#far").is_hidden()
    phone.page.wait_for_timeout(500)
    assert field.all.all(lambda m: m.topic == arrived_topic) == []
    assert phone.page.locator("#here").is_enabled()
    # Send anyway: a fresh location (with its accuracy) goes right before "arrived".
    phone.page.click("#here")
    phone.page.wait_for_selector("#far:not([hidden])", timeout=8_000)
    phone.page.click("#far-send")
    arrived = field.all.wait_for(lambda m: m.topic == arrived_topic)
    assert arrived.json == {"incident_id": second}
    assert arrived.qos == 1
    assert not arrived.retain
    mine = field.all.all(
        lambda m: m.topic in (arrived_topic, field.t("volunteers", vid, "location"))
    )
    before = mine[next(i for i, m in enumerate(mine) if m is arrived) - 1]
    assert before.topic.endswith("/location"), [m.topic for m in mine]
    assert before.json["accuracy_m"] == 8
    # The engine records it as unverified: on scene, but no time to arrival yet.
    _wait(lambda: ws_engine.incident(second)["state"] == "on_scene", 5, "on_scene")
    state = ws_engine.incident(second)
    assert state["responders"][0]["verified"] is False
    assert state["time_to_arrival_s"] is None
    phone.page.wait_for_selector("#arrived-box:not([hidden])")
    phone.page.wait_for_selector("#arrival-check[data-verified=no]", timeout=5_000)
    assert "Unverified" in phone.page.locator("#arrival-check").inner_text()
    phone.shot("unverified")
    # Walking up to the spot confirms it.
    phone.move(offset(*INCIDENT, 6, 45))
    phone.page.wait_for_selector("#arrival-check[data-verified=yes]", timeout=10_000)
    assert "Confirmed" in phone.page.locator("#arrival-check").inner_text()
    state = ws_engine.incident(second)
    assert state["responders"][0]["verified"] is True
    assert state["time_to_arrival_s"] is not None
    ws_engine.post(f"/api/incidents/{second}/cancel", {}, token=ws_engine.token)
    phone.screen("stood")
    # They were there: thanks, even for a cancelled incident.
    assert phone.page.locator("#stood-title").inner_text() == "Thank you!"
    assert "closed this incident" in phone.page.locator("#stood-reason").inner_text()
    phone.page.click("#stood-ok")

    # Every stand-down reason of protocol 1.1 in friendly words (sent here by the test,
    # as the engine would to a responder whom a faster one replaced).
    third = uid("inc")
    assignment = field.t("volunteers", vid, "assignment")
    field.phone.publish(
        assignment, {"incident_id": third, "action": "go", "reason": "confirmed", "role": "backup"}
    )
    phone.screen("guide")
    phone.page.wait_for_selector("#g-role[data-role=backup]")
    field.phone.publish(
        assignment,
        {"incident_id": third, "action": "stand_down", "reason": "a faster responder is going"},
    )
    phone.screen("stood")
    assert "sooner is going in your place" in phone.page.locator("#stood-reason").inner_text()
    assert phone.errors == [], phone.errors


def test_offline_is_shown_and_the_page_reconnects_by_itself(
    ws_engine: Engine, field: Field, phones: Callable[..., Phone]
) -> None:
    vid = "chen-jie"
    phone = phones(offset(*INCIDENT, 300, 100))
    phone.sign_in(vid)
    phone.on_duty()
    statuses = field.all.wait_count(
        1, lambda m: m.topic == field.t("volunteers", vid, "status"), what="status"
    )
    assert statuses
    phone.context.set_offline(True)
    phone.page.wait_for_selector("#conn:not([data-state=online])", timeout=5_000)
    phone.shot("offline")
    phone.context.set_offline(False)
    phone.page.wait_for_selector("#conn[data-state=online]", timeout=10_000)
    assert phone.page.locator("#offline-banner").is_hidden()
    # Back online while on duty, the page tells the engine again that it is available.
    field.all.wait_count(
        2,
        lambda m: (
            m.topic == field.t("volunteers", vid, "status") and m.json["status"] == "available"
        ),
        what="status again",
    )
    # A reload in the same tab signs in again by itself (off duty until asked).
    phone.page.reload()
    phone.screen("home", timeout=10_000)
    phone.page.wait_for_selector("#conn[data-state=online]", timeout=5_000)
    assert phone.page.locator("#duty-card").get_attribute("data-duty") == "off"
    assert phone.errors == [], phone.errors


def _district_hhmm(ts: float) -> str:
    """The district's local time (UTC+8) of ``ts`` as HH:MM."""
    local = time.gmtime(ts + 8 * 3600)
    return f"{local.tm_hour:02d}:{local.tm_min:02d}"


def _figures(engine: Engine, key: str, want: int, timeout: float = 10.0) -> None:
    _wait(
        lambda: engine.get("/api/figures", token=engine.token).json.get(key) == want,
        timeout,
        f"/api/figures {key} to be {want}",
    )


def test_receipts_limits_and_the_last_will(
    ws_engine: Engine, field: Field, phones: Callable[..., Phone]
) -> None:
    engine = ws_engine
    vid_a, vid_b = "zhao-lei", "sun-li"
    a = phones(offset(*INCIDENT, 300, 60))
    a.sign_in(vid_a)
    # A allows one alert a day, set before going on duty; remembered across a reload.
    a.page.select_option("#budget", "1")
    a.page.reload()
    a.screen("home", timeout=10_000)
    assert a.page.locator("#budget").input_value() == "1"
    assert a.page.locator("#quiet-times").is_hidden()
    a.page.wait_for_selector("#conn[data-state=online]", timeout=5_000)
    a.on_duty()
    status_a = field.all.wait_for(
        lambda m: (
            m.topic == field.t("volunteers", vid_a, "status") and m.json["status"] == "available"
        ),
        what="A's status",
    )
    assert status_a.json["receipts"] is True
    assert status_a.json["max_alerts_per_day"] == 1
    assert status_a.json["quiet_hours"] is None
    assert a.page.locator("#duty-rest").is_hidden()

    # B is in quiet hours right now (district time), set on duty: it goes with the status,
    # and the page says B is resting.
    b = phones(offset(*INCIDENT, 350, 200), locale="en-US")
    b.sign_in(vid_b)
    b.on_duty()
    quiet = (_district_hhmm(time.time() - 3600), _district_hhmm(time.time() + 3600))
    b.page.check("#quiet-on")
    b.page.fill("#quiet-from", quiet[0])
    b.page.fill("#quiet-to", quiet[1])
    b.page.dispatch_event("#quiet-to", "change")
    want = f"{quiet[0]}-{quiet[1]}"
    status_b = field.all.wait_for(
        lambda m: (
            m.topic == field.t("volunteers", vid_b, "status") and m.json["quiet_hours"] == want
        ),
        what="B's quiet hours",
    )
    assert status_b.json["receipts"] is True
    b.page.wait_for_selector("#duty-card[data-resting=quiet]", timeout=2_000)
    rest = b.page.locator("#duty-rest").inner_text()
    assert rest == f"Resting: quiet hours, no calls before {quiet[1]}.", rest
    b.shot("resting")
    _figures(engine, "resting_volunteers", 1)

    # An incident near both: A rings and sends the receipt at once, before anyone taps;
    # B, resting, is not alerted.
    first = uid("inc")
    field.report({"id": first, "kind": "medical", "lat": INCIDENT[0], "lon": INCIDENT[1]})
    a.page.wait_for_selector("#alert:not([hidden])", timeout=2_000)
    alert = field.wait_alert(vid_a, first)
    reply_a = field.t("volunteers", vid_a, "reply")
    receipt = field.all.wait_for(lambda m: m.topic == reply_a, timeout=2, what="the receipt")
    assert receipt.json == {"alert_id": alert["alert_id"], "answer": "received"}
    assert receipt.qos == 1
    assert not receipt.retain
    alert_msg = field.all.all(lambda m: m.topic == field.t("volunteers", vid_a, "alert"))[0]
    assert receipt.received - alert_msg.received < 1.0, "the receipt came late"
    _wait(
        lambda: any(e["type"] == "received" for e in engine.incident(first)["events"]),
        5,
        "the engine's 'received' event",
    )
    assert engine.incident(first)["alerts"][0]["status"] == "pending"  # not an answer
    assert field.alerts(vid_b, first) == []
    # The engine's delivery histogram saw it.
    assert engine.metric("dispatch_alert_delivery_seconds_count") >= 1
    a.page.click("#decline")
    field.all.wait_for(
        lambda m: m.topic == reply_a and m.json["answer"] == "decline", what="A's decline"
    )
    engine.post(f"/api/incidents/{first}/cancel", {}, token=engine.token)

    # A has had its one alert: the page says it rests, and so does the engine; the next
    # incident alerts nobody.
    a.page.wait_for_selector("#duty-card[data-resting=budget]", timeout=2_000)
    assert "24 小时内已收到 1 次呼叫" in a.page.locator("#duty-rest").inner_text()
    a.shot("resting-budget")
    _figures(engine, "resting_volunteers", 2)
    second = uid("inc")
    field.report({"id": second, "kind": "fall", "lat": INCIDENT[0], "lon": INCIDENT[1]})
    time.sleep(2)
    assert field.alerts(vid_a, second) == []
    assert field.alerts(vid_b, second) == []
    assert a.page.locator("#alert").is_hidden()
    engine.post(f"/api/incidents/{second}/cancel", {}, token=engine.token)

    # The browser gone: the broker publishes A's Last Will. The page may still have got
    # its goodbye out on the way (pagehide: off duty); then the will changes nothing
    # (the engine ignores the will of a volunteer not on duty). Else the engine counts A
    # on duty but unreachable. Either way A is no longer alerted or resting.
    status_a = field.t("volunteers", vid_a, "status")
    a.context.close()
    will = field.all.wait_for(
        lambda m: m.topic == status_a and m.json["status"] == "offline",
        timeout=10,
        what="A's Last Will",
    )
    assert will.qos == 1
    assert not will.retain
    said = [m.json["status"] for m in field.all.all(lambda m: m.topic == status_a)]
    goodbye = "off_duty" in said[said.index("available") + 1 :] if "available" in said else False
    _figures(engine, "offline_volunteers", 0 if goodbye else 1)
    _figures(engine, "resting_volunteers", 1)  # B only
    assert a.errors == [], a.errors
    assert b.errors == [], b.errors


# ------------------------------------------------------------------ with broker accounts


@pytest.fixture
def locked_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A mosquitto with accounts and the project's ACL (config/mosquitto/acl): the engine
    as ``engine``, volunteer ``v-li`` with password ``pw-li``. Yields (mqtt URL, ws port)."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not (Path(mosquitto).is_file() and shutil.which("mosquitto_passwd")):
        servers.skip_or_fail(
            "needs mosquitto and mosquitto_passwd (Debian: apt-get install mosquitto)"
        )
    passwords = tmp_path / "passwords"
    for i, (user, password) in enumerate((("engine", "pw-engine"), ("v-li", "pw-li"))):
        flags = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *flags, "-b", str(passwords), user, password], check=True
        )
    acl = tmp_path / "acl"
    acl.write_text(
        (REPO / "config" / "mosquitto" / "acl").read_text() + "\nuser engine\ntopic readwrite #\n"
    )
    port, ws_port = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwords}",
        f"acl_file {acl}",
        f"listener {port} 127.0.0.1",
        f"listener {ws_port} 127.0.0.1",
        "protocol websockets",
        "log_dest stderr",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    with (tmp_path / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port)
        wait_for_port("127.0.0.1", ws_port)
        yield f"mqtt://engine:pw-engine@127.0.0.1:{port}", ws_port
    finally:
        proc.terminate()
        proc.wait(10)


def test_sign_in_with_a_broker_account_under_the_acl(
    browser: Any,
    locked_broker: tuple[str, int],
    redis_server: str,
    tmp_path: Path,
) -> None:
    mqtt_url, ws_port = locked_broker
    redis_url = f"{redis_server}/{next_redis_db()}"
    with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
        client.flushdb()
    engine = Engine(
        mqtt_url=mqtt_url,
        redis_url=redis_url,
        topic_root="dispatch",  # the ACL's patterns name the default root
        log_path=tmp_path / "engine.log",
        env={"DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT": str(ws_port)},
    )
    with running(engine):
        phone = Phone(browser, engine.base, offset(*INCIDENT, 200, 0), locale="en-US")
        try:
            assert phone.page.locator("#demo-note").is_hidden()  # accounts are checked
            phone.page.fill("#vid", "v-li")
            phone.page.fill("#password", "wrong")
            phone.page.click("#signin")
            error = phone.page.locator("#signin-error")
            error.wait_for(state="visible", timeout=10_000)
            assert "Wrong id or password" in error.inner_text()
            phone.sign_in("v-li", "pw-li")
            phone.on_duty()
            _wait(lambda: _volunteer(engine, "v-li") is not None, 5, "the volunteer")
            # The ACL lets the volunteer read its own alerts and assignments only.
            iid = uid("acl")
            result = engine.post(
                "/api/incidents",
                {"id": iid, "kind": "medical", "lat": INCIDENT[0], "lon": INCIDENT[1]},
                token=engine.token,
            )
            assert result.status == 201, result.body
            phone.page.wait_for_selector("#alert:not([hidden])", timeout=2_000)
            phone.page.click("#accept")
            phone.screen("guide")
            phone.move(offset(*INCIDENT, 5, 0))
            _wait(lambda: engine.incident(iid)["state"] == "on_scene", 10, "on_scene")
            phone.page.wait_for_selector("#arrived-box:not([hidden])", timeout=5_000)
            assert phone.errors == [], phone.errors
            engine.post(f"/api/incidents/{iid}/cancel", {}, token=engine.token)
        finally:
            phone.close()


def test_sign_in_says_when_the_broker_cannot_be_reached(
    engine_factory: Callable[..., Engine], browser: Any
) -> None:
    closed = free_port()  # nothing listens there
    engine = engine_factory(env={"DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT": str(closed)})
    engine.start()
    phone = Phone(browser, engine.base, INCIDENT, locale="en-US")
    try:
        phone.page.fill("#vid", "zhao-lei")
        phone.page.click("#signin")
        error = phone.page.locator("#signin-error")
        error.wait_for(state="visible", timeout=15_000)
        assert f"Cannot reach the message broker: ws://127.0.0.1:{closed}/mqtt" in (
            error.inner_text()
        )
        assert phone.page.locator("body[data-screen=signin]").count() == 1
        assert phone.page.locator("#signin").is_enabled()  # may try again
    finally:
        phone.close()
        engine.stop()


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_i_cannot_go_after_all(
    ws_engine: Engine, field: Field, phones: Callable[..., Phone], locale: str
) -> None:
    """The withdraw (this project's addition to the protocol): asked once more, sent with
    the alert id, answered with a stand-down ("withdrawn"), and someone else is sought;
    a moved incident (amended in the control room) shows its new place first."""
    vid, other = uid("wd"), uid("wd-other")
    zh = locale == "zh-CN"
    phone = phones(offset(*INCIDENT, 300, 0), locale=locale)
    phone.sign_in(vid)
    phone.on_duty()
    _wait(lambda: _volunteer(ws_engine, vid) is not None, 5, "the volunteer")
    iid = uid("inc")
    field.report({"id": iid, "kind": "medical", "lat": INCIDENT[0], "lon": INCIDENT[1],
                  "address": "小营巷 12 号"})  # fmt: skip
    phone.page.wait_for_selector("#alert:not([hidden])", timeout=3_000)
    alert = field.wait_alert(vid, iid)
    assert phone.page.locator("#a-call").is_hidden()  # no [control_room] phone: no button
    phone.page.click("#accept")
    phone.screen("guide")
    assert phone.page.locator("#g-call").is_hidden()
    # The control room moves the incident: the page follows the new place.
    moved = offset(*INCIDENT, -200, 0)
    result = ws_engine_patch(ws_engine, iid, {"lat": moved[0], "lon": moved[1],
                                              "address": "小营巷 40 号"})  # fmt: skip
    assert result == 200
    phone.page.wait_for_function(
        "document.getElementById('g-address').textContent.includes('小营巷 40 号')", timeout=3_000
    )
    assert phone.page.locator("#withdraw").inner_text() == (
        "我无法前往了" if zh else "I can't go after all"
    )
    # A volunteer who is free for the replacement.
    field.status(other, lat=INCIDENT[0], lon=INCIDENT[1] + 0.001, skills=["first_aid"],
                 mode="walk")  # fmt: skip
    field.sync()
    # Asked once more; "keep going" sends nothing.
    reply_topic = field.t("volunteers", vid, "reply")
    phone.page.click("#withdraw")
    phone.page.wait_for_selector("#wd:not([hidden])")
    assert ("确定无法前往" if zh else "Can't go after all") in phone.page.locator(
        "#wd"
    ).inner_text()
    phone.shot(f"withdraw-{'zh' if zh else 'en'}")
    phone.page.click("#wd-cancel")
    phone.page.wait_for_timeout(300)
    assert [m.json["answer"] for m in field.all.all(lambda m: m.topic == reply_topic)] == [
        "received", "accept"]  # fmt: skip
    phone.page.click("#withdraw")
    phone.page.click("#wd-send")
    sent = field.all.wait_for(lambda m: m.topic == reply_topic and m.json["answer"] == "withdraw")
    assert sent.json == {"alert_id": alert["alert_id"], "answer": "withdraw"}
    phone.screen("stood")
    assert phone.page.locator("#stood-title").inner_text() == (
        "已告知调度中心" if zh else "The control room knows"
    )
    assert ("另找志愿者" if zh else "Someone else") in phone.page.locator(
        "#stood-reason"
    ).inner_text()
    # The engine released us and alerted the other volunteer in our place.
    field.wait_alert(other, iid)
    state = ws_engine.incident(iid)
    assert state["responders"][0]["released"] is True
    assert phone.errors == [], phone.errors
    ws_engine.post(f"/api/incidents/{iid}/cancel", {}, token=ws_engine.token)


def ws_engine_patch(engine: Engine, iid: str, body: dict[str, Any]) -> int:
    return http("PATCH", f"{engine.base}/api/incidents/{iid}", body, token=engine.token).status


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_button_calls_the_control_room(
    engine_factory: Callable[..., Engine],
    mqtt_ws_port: int | None,
    mqtt_url: str,
    browser: Any,
    locale: str,
) -> None:
    """Issue 17: with [control_room] phone the alert, the guidance and the withdraw screens
    carry a tel: link to the control room; a withdraw nobody answers points to it."""
    if mqtt_ws_port is None:
        servers.skip_or_fail("the test broker has no websockets listener")
    zh = locale == "zh-CN"
    engine = engine_factory(
        env={
            "DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT": str(mqtt_ws_port),
            "DISPATCH_VOLUNTEER_APP_OPEN_BROKER": "true",
            "DISPATCH_CONTROL_ROOM_PHONE": "0571-8700 0000",
        }
    )
    engine.start()
    field = Field(mqtt_url, engine.topic_root)
    phone = Phone(browser, engine.base, offset(*INCIDENT, 300, 0), locale)
    try:
        vid = uid("call")
        phone.sign_in(vid)
        phone.on_duty()
        _wait(lambda: _volunteer(engine, vid) is not None, 5, "the volunteer")
        label = "致电调度中心" if zh else "Call the control room"
        iid = uid("inc")
        field.report({"id": iid, "kind": "cardiac_arrest", "lat": INCIDENT[0],
                      "lon": INCIDENT[1], "address": "小营巷 12 号"})  # fmt: skip
        phone.page.wait_for_selector("#alert:not([hidden])", timeout=3_000)
        call = phone.page.locator("#a-call")
        call.wait_for(state="visible")
        assert call.get_attribute("href") == "tel:057187000000"
        assert call.inner_text().strip().endswith(label)
        phone.shot(f"call-alert-{'zh' if zh else 'en'}")
        phone.page.click("#accept")
        phone.screen("guide")
        guide = phone.page.locator("#g-call")
        assert guide.is_visible()
        assert guide.get_attribute("href") == "tel:057187000000"
        assert "urgent" not in (guide.get_attribute("class") or "")
        phone.page.click("#withdraw")
        phone.page.wait_for_selector("#wd:not([hidden])")
        assert phone.page.locator("#wd-call").is_visible()
        assert phone.page.locator("#wd-call").get_attribute("href") == "tel:057187000000"
        phone.page.click("#wd-cancel")
        # Nobody answers the withdraw (the engine is down): after 10 s the page says to
        # call, and the call button stands out.
        engine.stop()
        phone.page.click("#withdraw")
        phone.page.click("#wd-send")
        phone.page.wait_for_selector("#g-call.urgent", timeout=15_000)
        toast = phone.page.locator("#toast").inner_text()
        assert ("请打电话告知调度中心" if zh else "call the control room") in toast, toast
        assert phone.page.locator("#g-call").is_visible()
        phone.shot(f"call-noreply-{'zh' if zh else 'en'}")
        assert phone.errors == [], phone.errors
    finally:
        phone.close()
        field.close()
        engine.stop()
