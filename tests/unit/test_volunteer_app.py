"""The volunteer app's routes and configuration, and its page's promises about the wire.

The routes only read the configuration, so an in-process app on aiohttp's test server is
enough (no broker, no Redis: the service is built, never run). The page itself is
exercised in a real browser by tests/e2e/test_volunteer_page.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from dispatch.config import load_config
from dispatch.errors import ConfigError
from dispatch.service import Service
from dispatch.web import STATIC_DIR, make_app

VENDOR = STATIC_DIR / "vendor"


async def _client(**overrides: object) -> TestClient:  # type: ignore[type-arg]
    config = load_config(
        overrides={"engine.redis": "redis://127.0.0.1:1/0", "engine.topic_root": "t", **overrides}
    )
    client: TestClient = TestClient(TestServer(make_app(Service(config))))  # type: ignore[type-arg]
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    c = await _client()
    try:
        yield c
    finally:
        await c.close()


async def test_the_page_and_its_files_are_served(client: TestClient) -> None:  # type: ignore[type-arg]
    page = await client.get("/volunteer")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = await page.text()
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        # Everything the page loads comes from the engine: there is no internet.
        assert src.startswith(("/static/", "data:")) or src == "/volunteer.webmanifest", src
        if not src.startswith("data:"):
            r = await client.get(src)
            assert r.status == 200, src
    lib = await client.get("/static/vendor/mqtt.min.js")
    assert lib.status == 200
    assert len(await lib.read()) > 100_000


async def test_the_app_config_defaults_to_the_page_host(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.get("/api/volunteer-app")
    assert r.status == 200
    body = await r.json()
    assert body == {
        "mqtt_ws_url": None,
        "mqtt_ws_port": 9001,
        "mqtt_protocol": 5,
        "topic_root": "t",
        "open_broker": False,
        "arrival_radius_m": 30.0,
        "skills": ["first_aid", "mediation", "patrol"],
        "control_room_phone": None,  # [control_room] phone: no call button
    }


async def test_the_app_config_follows_the_configuration() -> None:
    c = await _client(
        **{
            "volunteer_app.mqtt_ws_url": "wss://dispatch.example.org/mqtt",
            "volunteer_app.open_broker": True,
            "engine.mqtt_protocol": 3,
        }
    )
    try:
        body = await (await c.get("/api/volunteer-app")).json()
    finally:
        await c.close()
    assert body["mqtt_ws_url"] == "wss://dispatch.example.org/mqtt"
    assert body["open_broker"] is True
    assert body["mqtt_protocol"] == 3


def test_config_keys_are_checked_and_read_from_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"volunteer_app\.mqtt_ws_url.*ws:// or wss://"):
        load_config(overrides={"volunteer_app.mqtt_ws_url": "http://x:9001"})
    with pytest.raises(ConfigError, match=r"volunteer_app\.mqtt_ws_port"):
        load_config(overrides={"volunteer_app.mqtt_ws_port": 0})
    config = load_config(
        env={
            "DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT": "8083",
            "DISPATCH_VOLUNTEER_APP_OPEN_BROKER": "true",
        }
    )
    assert config.volunteer_ws_port == 8083
    assert config.volunteer_open_broker is True


def test_the_page_never_retains_and_uses_the_protocol_qos() -> None:
    js = (STATIC_DIR / "volunteer.js").read_text(encoding="utf-8")
    assert "retain: true" not in js
    # status, reply and arrived at QoS 1; location at QoS 0 (PROTOCOL.md).
    for leaf, qos in (("status", 1), ("reply", 1), ("arrived", 1), ("location", 0)):
        calls = re.findall(rf'publish\("{leaf}", [^;]*?, (\d)\)', js)
        assert calls, f"no publish of {leaf}"
        assert set(calls) == {str(qos)}, (leaf, calls)


def test_the_vendored_library_is_recorded() -> None:
    versions = (VENDOR / "VERSIONS").read_text(encoding="utf-8")
    assert re.search(r"mqtt \(MQTT\.js\) \d+\.\d+\.\d+", versions)
    assert (VENDOR / "mqtt.LICENSE.md").is_file()
    digest = hashlib.sha256((VENDOR / "mqtt.min.js").read_bytes()).hexdigest()
    assert f"sha256 {digest}  mqtt.min.js" in versions, "mqtt.min.js changed: run scripts/vendor-js"


def test_the_page_and_the_terminal_connect_with_the_volunteer_id_as_client_id() -> None:
    """The shipped broker ties each client id to its username (issue 18, item 6): the
    clients use exactly that id, so what they ask for is what the broker gives."""
    page = (STATIC_DIR / "volunteer.js").read_text(encoding="utf-8")
    assert re.search(r"clientId:\s*vid\s*,", page), "volunteer.js: clientId must be the id"
    import inspect

    from simulators import terminal_volunteer

    source = inspect.getsource(terminal_volunteer)
    assert re.search(r"identifier=self\.volunteer\.vid\s*,", source)


def test_the_page_sets_its_will_and_sends_receipts() -> None:
    """Protocol 1.1: a Last Will of "offline" on its own status topic (QoS 1, never
    retained), receipts announced in the status, and a receipt on every alert."""
    js = (STATIC_DIR / "volunteer.js").read_text(encoding="utf-8")
    assert "will: {" in js, "volunteer.js: no Last Will"
    body = js[js.index("will: {") :][:200]
    assert 'topic: topic("status")' in body
    assert 'JSON.stringify({ status: "offline" })' in body
    assert "qos: 1" in body
    assert "retain: false" in body
    assert "body.receipts = true" in js
    assert 'publish("reply", { alert_id: a.alert_id, answer: "received" }, 1)' in js


async def test_the_app_is_installable_manifest_icons_and_service_worker(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    r = await client.get("/volunteer.webmanifest")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/manifest+json")
    manifest = json.loads(await r.read())
    assert manifest["start_url"] == "/volunteer"
    assert manifest["display"] == "standalone"
    sizes = {i["sizes"] for i in manifest["icons"]}
    assert {"192x192", "512x512"} <= sizes
    assert any(i["purpose"] == "maskable" for i in manifest["icons"])
    for icon in manifest["icons"]:
        got = await client.get(icon["src"])
        assert got.status == 200, icon
        body = await got.read()
        assert body.startswith(b"\x89PNG"), icon
        width, height = struct.unpack(">II", body[16:24])
        assert f"{width}x{height}" == icon["sizes"], icon
    sw = await client.get("/volunteer-sw.js")
    assert sw.status == 200
    assert sw.headers["Content-Type"].startswith("text/javascript")
    assert sw.headers["Cache-Control"] == "no-cache"
    text = await sw.text()
    # Every file of the shell it keeps offline is served; no API route is among them.
    shell = re.search(r"const SHELL = \[(.*?)\];", text, re.S)
    assert shell is not None
    for path in re.findall(r'"([^"]+)"', shell.group(1)):
        assert not path.startswith("/api/"), path
        assert (await client.get(path)).status == 200, path


async def test_push_answers_before_its_keys_are_loaded(client: TestClient) -> None:  # type: ignore[type-arg]
    r = await client.get("/api/push")
    assert r.status == 200
    assert await r.json() == {"enabled": True, "public_key": None}
    reply = await client.post(
        "/api/alerts/a1/reply", json={"volunteer_id": "v1", "answer": "accept", "token": "x"}
    )
    assert reply.status == 503
    assert (await reply.json())["code"] == "push_unavailable"
    bad = await client.post("/api/alerts/a%2F1/reply", json={})
    assert bad.status in (400, 404)
