"""The report page (/report) in a real headless Chromium, against the engine as a process
with a real PostgreSQL archive and Redis (and once without an archive).

History is made as the engine makes it: ended incidents written to Redis and its event
log the way the engine writes them (tests/archive_data.py), spread over the district's
real grid cells and the last two weeks; the engine's archive writer copies them to
PostgreSQL. The page is then checked in Chinese and in English: the figures equal the
API's, the map is coloured by the share achieved per cell, the chart has a point per
day, the misses are listed with their reasons and paged, the CSV link downloads, the
read token is asked for, and the print view hides the controls.

Screenshots go to test-output/report-*.png, and with DISPATCH_UPDATE_SCREENSHOTS=1 the
English one also to docs/report.png.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import servers
from archive_data import log_ended, some_incidents
from e2e_harness import http, uid
from test_page import OUTPUT, VIEWPORT, PageEngine

from dispatch.config import load_config
from dispatch.dispatcher import Incident
from dispatch.store import Store
from geo import ServiceArea

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
READ = "read-secret-report-page"
SHOT = {"width": 1600, "height": 1400}  # the figures, map, chart, table and first misses
N = 480  # one every 40 minutes over the last two weeks


_TIMES = (
    "reported_at",
    "received_at",
    "first_alert_at",
    "first_accept_at",
    "first_arrival_at",
    "first_verified_at",
    "escalated_at",
    "ended_at",
)


def _history(n: int) -> list[Incident]:
    """n ended incidents over the last 14 days, at random places in the district."""
    config = load_config()
    area = ServiceArea.from_geojson(config.area_geojson, cell_size_m=config.cell_size_m)
    now = time.time()
    incidents = some_incidents(n, seed=3, base=now - 14 * 86_400)
    rng = random.Random(5)
    west, south, east, north = area.bounds
    for i, incident in enumerate(incidents):
        # 40 minutes apart instead of 30, so that they end in the past.
        shift = round(i * 600.0, 3)
        for name in _TIMES:
            value = getattr(incident, name)
            if value is not None:
                setattr(incident, name, round(value + shift, 3))
        for r in incident.responders:
            r.accepted_at = round(r.accepted_at + shift, 3)
            r.arrived_at = None if r.arrived_at is None else round(r.arrived_at + shift, 3)
            r.verified_at = None if r.verified_at is None else round(r.verified_at + shift, 3)
        for a in incident.alerts.values():
            a.sent_at, a.expires_at = round(a.sent_at + shift, 3), round(a.expires_at + shift, 3)
        # The old town is busier and better served than the outskirts.
        while True:
            lat, lon = rng.uniform(south, north), rng.uniform(west, east)
            if area.contains(lat, lon):
                break
        incident.lat, incident.lon = lat, lon
        incident.cell_id = area.cell_at(lat, lon).id
    return [i for i in incidents if (i.ended_at or now) < now]


async def _seed(redis_url: str, topic_root: str, incidents: list[Incident]) -> None:
    store = Store.from_url(redis_url, prefix=f"{topic_root}:")
    try:
        for incident in incidents:
            await log_ended(store, incident)
    finally:
        await store.close()


def _engine(
    mqtt_url: str, redis_server: str, tmp_path: Path, postgres: str | None
) -> tuple[PageEngine, int]:
    url = f"{redis_server}/{servers.next_redis_db()}"
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()
    root = uid("report")
    incidents = _history(N)
    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _seed(url, root, incidents)).result()
    env = {"DISPATCH_HTTP_READ_TOKEN": READ}
    if postgres:
        env["DISPATCH_POSTGRES_URL"] = postgres
    e = PageEngine(mqtt_url, url, root, tmp_path / "engine.log", env=env)
    e.start()
    return e, len(incidents)


def _get(engine: PageEngine, path: str) -> Any:
    result = http("GET", engine.base + path, token=READ)
    assert result.status == 200, (path, result.status, result.body)
    return result.json


@pytest.fixture
def archived(
    mqtt_url: str, redis_server: str, tmp_path: Path, postgres_url: str
) -> Iterator[PageEngine]:
    e, n = _engine(mqtt_url, redis_server, tmp_path, postgres_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            # 503 until the engine's migrations have created the archive's tables.
            answer = http("GET", e.base + "/api/report?by=kind", token=READ)
            assert answer.status in (200, 503), (answer.status, answer.body)
            if answer.status == 200 and answer.json["total"]["incidents"] == n:
                break
            assert time.monotonic() < deadline, f"never all archived:\n{e.log_tail()}"
            time.sleep(0.3)
        yield e
    finally:
        e.stop()


@pytest.fixture
def redis_only(mqtt_url: str, redis_server: str, tmp_path: Path) -> Iterator[PageEngine]:
    e, _ = _engine(mqtt_url, redis_server, tmp_path, None)
    try:
        yield e
    finally:
        e.stop()


class ReportPage:
    def __init__(self, browser: Any, base: str, lang: str) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", accept_downloads=True)
        self.context.add_init_script(f"localStorage.setItem('dispatch.lang', '{lang}')")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.base = base

    def _console(self, message: Any) -> None:
        # The first read's 401 is how the page learns that it needs the token.
        if message.type == "error" and "status of 401" not in message.text:
            self.errors.append(message.text)

    def open(self, query: str = "", *, escape_first: bool = False) -> None:
        self.page.goto(f"{self.base}/report{query}")
        # The read token is asked for once, then kept for the session.
        self.page.wait_for_selector("#auth-dialog[open]", timeout=10_000)
        if escape_first:  # not given: the page says what it needs, and asks again
            self.page.keyboard.press("Escape")
            self.page.wait_for_function(
                "document.querySelector('#status').textContent.match(/读取令牌|Read token/)"
            )
            self.page.click("#controls button[type=submit]")
            self.page.wait_for_selector("#auth-dialog[open]", timeout=10_000)
        self.page.fill("#auth-token", READ)
        self.page.click("#auth-form button[type=submit]")
        self.loaded()

    def loaded(self) -> None:
        self.page.wait_for_function(
            "document.querySelector('#status').textContent.match(/更新|Updated/)", timeout=20_000
        )

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).inner_text()).strip()

    def shot(self, name: str, docs: str | None = None) -> None:
        OUTPUT.mkdir(exist_ok=True)
        path = OUTPUT / name
        self.page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, **SHOT})
        if docs and os.environ.get("DISPATCH_UPDATE_SCREENSHOTS") == "1":
            (DOCS / docs).write_bytes(path.read_bytes())

    def close(self) -> None:
        self.context.close()


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def _mmss(s: float | None) -> str:
    if s is None:
        return "–"
    s = round(s)
    return f"{s // 60}:{s % 60:02d}"


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_report_page_from_the_archive(browser: Any, archived: PageEngine, lang: str) -> None:
    p = ReportPage(browser, archived.base, lang)
    try:
        p.open("?by=cell")
        page = p.page
        # The period: the last 30 days by default, the API asked with the same bounds.
        frm, to = page.input_value("#from"), page.input_value("#to")
        today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))
        assert to == today
        query = f"from={frm}T00:00:00%2B08:00&by=cell"
        api = _get(archived, f"/api/report?{query}")
        assert api["source"] == "postgres"
        total = api["total"]
        assert total["incidents"] > 300
        # The summary and the table: the API's figures, as the page shows them.
        assert p.text("#s-incidents .v") == str(total["incidents"])
        assert p.text("#s-within .v") == _pct(total["within_target_share"])
        assert p.text("#s-p90 .v") == _mmss(total["p90_s"])
        rows = page.locator("#groups tr")
        assert rows.count() == len(api["groups"])
        first = api["groups"][0]
        row = page.locator(f"#groups tr[data-group='{first['group']}'] td")
        assert row.nth(0).inner_text() == str(first["incidents"])
        assert row.nth(2).inner_text() == _pct(first["within_target_share"])
        assert p.text("#total th") == ("合计" if lang == "zh" else "Total")
        # No note about Redis: the archive answers.
        assert page.locator("#note-limited").count() == 0
        # The map: every cell with decided incidents coloured by its share achieved.
        coloured = page.locator("#g-cells path[data-share]:not([data-share=''])")
        with_decided = [g for g in api["groups"] if g["within_target_share"] is not None]
        assert coloured.count() == len(with_decided)
        best = max(with_decided, key=lambda g: g["within_target_share"])
        path = page.locator(f"#g-cells path[data-cell='{best['group']}']")
        assert float(path.get_attribute("data-share")) == best["within_target_share"]
        assert path.get_attribute("fill") != "none"
        # The chart: a point of the share and of P90 per day with incidents.
        days = _get(archived, f"/api/report?from={frm}T00:00:00%2B08:00&by=day")["groups"]
        shares = [d for d in days if d["within_target_share"] is not None]
        assert page.locator("#chart circle.share").count() == len(shares)
        assert page.locator("#chart circle.p90").count() == len(
            [d for d in days if d["p90_s"] is not None]
        )
        # The misses: the first page, with reasons in this language; more on demand.
        misses = _get(archived, f"/api/report/misses?from={frm}T00:00:00%2B08:00&limit=500")
        assert misses["total"] > 100
        assert page.locator("#misses tr").count() == 100
        first_miss = misses["misses"][0]
        line = page.locator(f"#misses tr[data-id='{first_miss['id']}']")
        assert line.get_attribute("data-reason") == first_miss["reason"]
        reason_text = {
            "zh": {"late_arrival": "到场过晚", "nobody_accepted": "无人接受",
                   "nobody_in_reach": "附近无人可呼叫", "unverified_arrival": "到场未核实",
                   "no_show": "接受后未到场"},
            "en": {"late_arrival": "Late arrival", "nobody_accepted": "Nobody accepted",
                   "nobody_in_reach": "Nobody in reach",
                   "unverified_arrival": "Arrival not verified", "no_show": "Accepted, no show"},
        }[lang]  # fmt: skip
        assert reason_text[first_miss["reason"]] in line.inner_text()
        page.click("#misses-more")
        page.wait_for_function(
            f"document.querySelectorAll('#misses tr').length === {min(200, misses['total'])}"
        )
        # Group by kind: the kinds in this language.
        page.select_option("#by", "kind")
        page.wait_for_function("document.querySelector('#th-group').textContent.match(/类型|Kind/)")
        p.loaded()
        kinds = p.text("#groups")
        assert ("跌倒" in kinds) == (lang == "zh")
        assert ("Fall" in kinds) == (lang == "en")
        page.wait_for_timeout(300)
        p.shot(f"report-{lang}.png", docs="report.png" if lang == "en" else None)
        page.select_option("#by", "cell")
        p.loaded()
        # CSV: the link downloads the same groups (the token travels as ?access_token=).
        with page.expect_download() as download:
            page.click("#csv")
        csv = Path(download.value.path()).read_text("utf-8").splitlines()
        assert csv[0].startswith("group,incidents,")
        assert csv[-1].startswith(f"total,{total['incidents']},")
        # Presets: last 7 days.
        page.click("[data-preset='7d']")
        p.loaded()
        seven = _get(
            archived, f"/api/report?from={page.input_value('#from')}T00:00:00%2B08:00&by=cell"
        )
        assert p.text("#s-incidents .v") == str(seven["total"]["incidents"])
        assert seven["total"]["incidents"] < total["incidents"]
        # The print view: no controls, the period in the title.
        page.emulate_media(media="print")
        assert not page.locator("#controls").is_visible()
        assert page.locator("#print-period").is_visible()
        assert page.input_value("#from") in p.text("#print-period")
        page.emulate_media(media="screen")
        # A bad period is refused on the page, in its language.
        page.fill("#from", "2026-12-31")
        page.fill("#to", "2026-01-01")
        page.click("#controls button[type=submit]")
        expected = "开始日期须早于" if lang == "zh" else "start date must be on or before"
        page.wait_for_function(
            f"document.querySelector('#status').textContent.includes({expected!r})"
        )
        assert p.errors == [], p.errors
    finally:
        p.close()


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_without_an_archive_the_page_says_history_is_limited(
    browser: Any, redis_only: PageEngine, lang: str
) -> None:
    p = ReportPage(browser, redis_only.base, lang)
    try:
        p.open("?by=subdistrict", escape_first=True)
        note = p.text("#note-limited")
        if lang == "zh":
            assert "Redis" in note
            assert "30 天" in note
        else:
            assert "limited to what Redis keeps (30 days" in note
        # No subdistrict boundaries configured: one group, and the page says why.
        assert p.page.locator("#groups tr").count() == 1
        assert p.text("#groups th") == ("未划分街道" if lang == "zh" else "No subdistrict")
        assert p.page.locator("#note-subdistrict").is_visible()
        # The figures are still there (from Redis): the same as the API's.
        frm = p.page.input_value("#from")
        api = _get(redis_only, f"/api/report?from={frm}T00:00:00%2B08:00&by=subdistrict")
        assert (api["source"], api["limited"]) == ("redis", True)
        assert p.text("#s-incidents .v") == str(api["total"]["incidents"])
        assert p.errors == [], p.errors
    finally:
        p.close()
