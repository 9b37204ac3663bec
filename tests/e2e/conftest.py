"""Fixtures for the end-to-end tests: the engine as a separate process, and the field.

- ``shared_engine`` (module scope): one engine with the default policy, its own Redis
  database and topic root, for tests that do not disturb each other (each uses its own
  volunteer and incident ids, in its own part of the district, and ends what it started).
- ``engine_factory``: fresh engines for tests that need their own configuration or a
  restart; every engine it made is killed at the end of the test whatever happened.
- On a failing test, the tail of every involved engine's log is printed.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import servers  # noqa: E402
from e2e_harness import TOKEN, Engine, Field, running, uid  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(node, f"rep_{when}", None) is not None and getattr(node, f"rep_{when}").failed
        for when in ("setup", "call")
    )


def _fresh_db(redis_server: str) -> str:
    url = f"{redis_server}/{servers.next_redis_db()}"
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()
    return url


@pytest.fixture(scope="module")
def shared_engine(
    mqtt_url: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One engine (default policy) for a whole module; SIGTERM must stop it with 0."""
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    engine = Engine(
        mqtt_url=mqtt_url,
        redis_url=_fresh_db(redis_server),
        topic_root=uid("e2e"),
        log_path=log,
        token=TOKEN,
    )
    with running(engine):
        yield engine


@pytest.fixture
def engine(shared_engine: Engine, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The module's engine, checked alive before the test; its log printed on failure."""
    assert shared_engine.proc is not None
    assert shared_engine.proc.poll() is None, (
        "the shared engine died earlier:\n" + shared_engine.log_tail()
    )
    yield shared_engine
    if _failed(request):
        print(f"\n----- engine log (tail) {shared_engine.log_path}\n{shared_engine.log_tail()}")


@pytest.fixture
def field(engine: Engine, mqtt_url: str) -> Iterator[Field]:
    """Phones and an observer under the shared engine's root. At the end, every incident
    the test created is cancelled and every volunteer it registered goes off duty, so the
    next test starts from a quiet engine."""
    f = Field(mqtt_url, engine.topic_root)
    try:
        yield f
    finally:
        try:
            if engine.proc is not None and engine.proc.poll() is None:
                for iid in sorted(f.incidents):
                    engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)
                f.off_duty_all()
        finally:
            f.close()


@pytest.fixture
def engine_factory(
    mqtt_url: str,
    redis_server: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Engine]]:
    """make(env=..., redis_url=..., topic_root=...) -> a new, not yet started Engine."""
    made: list[Engine] = []

    def make(
        env: dict[str, str] | None = None,
        redis_url: str | None = None,
        topic_root: str | None = None,
    ) -> Engine:
        engine = Engine(
            mqtt_url=mqtt_url,
            redis_url=redis_url or _fresh_db(redis_server),
            topic_root=topic_root or uid("e2e"),
            log_path=tmp_path / f"engine{len(made)}.log",
            env=env,
            token=TOKEN,
        )
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            engine.ensure_dead()
        if _failed(request):
            for engine in made:
                print(f"\n----- engine log (tail) {engine.log_path}\n{engine.log_tail()}")


# ------------------------------------------------------------------------- the browser

CHROMIUM = os.environ.get("DISPATCH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _playwright() -> Any:
    """The sync Playwright module, or skip (fail under CI) saying what to install."""
    missing = []
    sync_api: Any = None
    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError:
        missing.append("Playwright for Python (.venv/bin/pip install 'playwright>=1.40')")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        missing.append(
            f"chromium at {CHROMIUM} (apt-get install -y --no-install-recommends chromium)"
        )
    if missing:
        message = "browser tests need " + " and ".join(missing)
        if servers.in_ci():
            pytest.fail(message + " (CI=true: the browser tests are required)", pytrace=False)
        pytest.skip(message)
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _playwright()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
