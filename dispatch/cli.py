"""The command line: ``dispatch run`` starts the engine (``python -m dispatch`` is the same);
``dispatch archive`` runs the archive writer alone (docs/reports.md); ``dispatch gateway`` runs
a location gateway and ``dispatch pusher`` a push worker (docs/deployment.md).

It parses arguments and loads the configuration; the objects are built by the
composition root, dispatch/wiring.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from dispatch.config import Config, load_config
from dispatch.errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("dispatch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatch",
        description="Real-time dispatch of community volunteer responders over MQTT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the engine",
        description="Run the engine. Every flag defaults from --config, then the environment "
        "(DISPATCH_MQTT, DISPATCH_REDIS, DISPATCH_HTTP, DISPATCH_TOPIC_ROOT, "
        "DISPATCH_POSTGRES_URL, DISPATCH_CONFIG).",
    )
    run.add_argument("--mqtt", help="broker URL, e.g. mqtt://127.0.0.1:1883")
    run.add_argument("--redis", help="Redis URL, e.g. redis://127.0.0.1:6379/0")
    run.add_argument("--http", help="HOST:PORT for the control room and API, e.g. 127.0.0.1:8080")
    run.add_argument("--topic-root", help="first level of every MQTT topic (default: dispatch)")
    run.add_argument("--config", help="a TOML file (see config/default.toml)")
    run.add_argument("--instance", help="this engine's name, unique among engines sharing a broker")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--postgres",
        help="archive ended incidents to this PostgreSQL and report from it, e.g. "
        "postgresql://dispatch@127.0.0.1:5432/dispatch (default: no archive)",
    )
    archive = sub.add_parser(
        "archive",
        help="write ended incidents from the engine's Redis event log to PostgreSQL",
        description="Run the archive writer alone (as `dispatch run --postgres` does inside "
        "the engine): it reads the event log through a Redis consumer group and writes "
        "every ended incident to PostgreSQL, creating or upgrading its tables first. "
        "Several may run at once. See docs/reports.md.",
    )
    archive.add_argument("--redis", help="the engine's Redis URL, e.g. redis://127.0.0.1:6379/0")
    archive.add_argument("--postgres", help="PostgreSQL URL (required here, or its config key)")
    archive.add_argument("--topic-root", help="the engine's topic root (its Redis key prefix)")
    archive.add_argument("--config", help="a TOML file (see config/default.toml)")
    archive.add_argument("--instance", help="this writer's name among several (consumer name)")
    archive.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    archive.add_argument(
        "--metrics-http",
        help="HOST:PORT to serve this writer's /metrics and /healthz, e.g. 127.0.0.1:9108",
    )
    gateway = sub.add_parser(
        "gateway",
        help="run a location gateway (with [gateway] enabled = true in the engine's config)",
        description="Run one location gateway: it shares the volunteers' locations with the "
        "other gateways (an MQTT shared subscription), validates them as the engine does, "
        "stores them in Redis and hands the engine batches of moves. Run one or more beside "
        "an engine whose config has [gateway] enabled = true; use the engine's config file. "
        "See docs/deployment.md.",
    )
    _beside_the_engine(gateway, "gateway", "[gateway] metrics_http", 9109)
    pusher = sub.add_parser(
        "pusher",
        help="run a push worker (with [push] separate = true in the engine's config)",
        description="Run one push worker: it shares the engine's alerts with the other "
        "pushers (an MQTT shared subscription) and sends each, encrypted, to the push "
        "services of the volunteer's browsers, as the engine does with [push] separate = "
        "false. Run one or more beside an engine whose config has [push] separate = true; "
        "use the engine's config file. See docs/deployment.md.",
    )
    _beside_the_engine(pusher, "pusher", "[push] metrics_http", 9111)
    demo = sub.add_parser(
        "demo",
        help="run the engine with simulated volunteers and incidents on throwaway servers",
        description="Start a throwaway broker and Redis (unless --mqtt/--redis name running "
        "ones), the engine, a simulated volunteer fleet and a stream of incidents, all on "
        "127.0.0.1; Ctrl-C stops everything it started. See docs/demo.md.",
    )
    from simulators.demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo)
    volunteer = sub.add_parser(
        "volunteer",
        help="be one volunteer in the terminal: see alerts, accept, decline, arrive",
        description="A volunteer in the terminal for field tests and demos: goes on duty "
        "with its position, prints alerts and assignments, takes a/d/h (accept, decline, "
        "I'm here) and more from stdin; goes off duty on exit. See docs/volunteer.md.",
    )
    from simulators.terminal_volunteer import add_arguments as add_volunteer_arguments

    add_volunteer_arguments(volunteer)
    simulate = sub.add_parser(
        "simulate",
        help="offline scenario runner: the engine's core on a simulated clock, no servers",
        description="Play a scenario of volunteers and incidents against the engine's own "
        "dispatch core on a simulated clock and report time to arrival, escalations and "
        "alert load; --compare adds the naive policy and the stations baseline. See "
        "docs/planning.md.",
    )
    from simulators.simulate import add_arguments as add_simulate_arguments

    add_simulate_arguments(simulate)
    accounts = sub.add_parser(
        "accounts",
        help="add, disable, enable, remove or list broker accounts (Mosquitto password file)",
        description="Keep the Mosquitto password file and ACL of config/mosquitto/ "
        "(see docs/security.md). Passwords are asked for, or read with --password-stdin.",
    )
    from dispatch.accounts import add_arguments as add_accounts_arguments

    add_accounts_arguments(accounts)
    return parser


def _beside_the_engine(
    parser: argparse.ArgumentParser, who: str, metrics_key: str, port: int
) -> None:
    """The flags of a process that runs beside the engine on its config (a gateway, a
    pusher): the engine's broker, Redis and root, and its own name and /metrics."""
    parser.add_argument("--mqtt", help=f"broker URL, e.g. mqtt://{who}:secret@127.0.0.1:1884")
    parser.add_argument("--redis", help="the engine's Redis URL, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--topic-root", help="the engine's topic root (default: dispatch)")
    parser.add_argument("--config", help="a TOML file (the engine's; see config/default.toml)")
    parser.add_argument("--instance", help=f"this {who}'s name, unique among {who}s")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--metrics-http",
        help=f"HOST:PORT to serve this {who}'s /metrics and /healthz, e.g. 127.0.0.1:{port} "
        f"(default: {metrics_key}; not served when empty)",
    )


def load(args: argparse.Namespace, env: dict[str, str]) -> Config:
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("mqtt", "engine.mqtt"),
        ("redis", "engine.redis"),
        ("http", "engine.http"),
        ("topic_root", "engine.topic_root"),
        ("instance", "engine.instance"),
        ("log_level", "engine.log_level"),
        ("postgres", "postgres.url"),
        # The writer's, the gateway's or the pusher's own /metrics, whichever this runs.
        (
            "metrics_http",
            {"gateway": "gateway.metrics_http", "pusher": "push.metrics_http"}.get(
                args.command, "postgres.metrics_http"
            ),
        ),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config or env.get("DISPATCH_CONFIG"), env=env, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    if args.command == "demo":
        from simulators.demo import main as demo_main

        return demo_main(args, env)
    if args.command == "volunteer":
        from simulators.terminal_volunteer import main as volunteer_main

        return volunteer_main(args, env)
    if args.command == "simulate":
        from simulators.simulate import main as simulate_main

        return simulate_main(args, env)
    if args.command == "accounts":
        from dispatch.accounts import main as accounts_main

        return accounts_main(args)
    try:
        config = load(args, env)
    except ConfigError as exc:
        print(f"dispatch: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return _run(config, address=f"{config.http_host}:{config.http_port}")
    if args.command == "gateway":
        return _run(config, address=config.gateway_metrics_http, gateway=True)
    if args.command == "pusher":
        if not config.push_enabled:
            print(
                "dispatch pusher: this config has [push] enabled = false: nothing to push "
                "(set it to true, DISPATCH_PUSH_ENABLED=true, with [push] separate = true)",
                file=sys.stderr,
            )
            return 2
        return _run(config, address=config.push_metrics_http, pusher=True)
    if args.command == "archive":
        if not config.postgres_url:
            print(
                "dispatch archive: no PostgreSQL: give --postgres URL (or postgres.url, "
                "DISPATCH_POSTGRES_URL)",
                file=sys.stderr,
            )
            return 2
        return _run(config, address=config.postgres_metrics_http, archive_only=True)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _run(
    config: Config,
    *,
    address: str,
    archive_only: bool = False,
    gateway: bool = False,
    pusher: bool = False,
) -> int:
    """Run a command until SIGTERM or SIGINT; ``address``: the HOST:PORT it listens on."""

    async def start() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        from dispatch.wiring import archive, run_gateway, run_pusher, serve

        if gateway:
            await run_gateway(config, stop)
        elif pusher:
            await run_pusher(config, stop)
        else:
            await (archive if archive_only else serve)(config, stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(start())
    except OSError as exc:  # the HTTP port is taken, most often
        print(f"dispatch: cannot listen on {address}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
