"""Restart at scale: N volunteers in Redis, the engine killed with SIGKILL, then timed.

Fills Redis directly with N available volunteers (their ``vol:`` hashes and fresh
``pos:`` positions, as the engine stores them), starts the engine, kills it with
SIGKILL once ready, starts it again and measures:

- ready: from the new process's start to ``/readyz`` answering 200;
- first alert: from a report sent right after that to the first alert received.

```
.venv/bin/python benchmarks/restart.py --start-servers --volunteers 100000
.venv/bin/python benchmarks/restart.py --start-servers --volunteers 100000 --engine-dir /work/main
```

``--engine-dir`` runs another checkout's engine (a baseline) against the same harness.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import redis

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(REPO))

from benchmarks.load_test import (  # noqa: E402
    EngineProcess,
    Measurer,
    homes,
    http_get,
    machine,
)
from dispatch.config import load_config  # noqa: E402
from dispatch.localservers import start_mosquitto, start_redis  # noqa: E402
from geo.area import ServiceArea  # noqa: E402

MODES = ("walk", "bike", "ebike")


def fill(redis_url: str, root: str, points: Sequence[tuple[float, float]], seed: int) -> float:
    """Store one available volunteer per point (as the engine would); seconds taken."""
    started = time.perf_counter()
    r = redis.Redis.from_url(redis_url)
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for i, (lat, lon) in enumerate(points):
        vid = f"rv{seed}-{i:07d}"
        skills = ["first_aid"] if i % 5 < 3 else []
        if i % 5 == 0:
            skills.append("patrol")
        pipe.hset(
            f"{root}:vol:{vid}",
            mapping={
                "duty": "available",
                "skills": orjson.dumps(skills),
                "mode": MODES[i % 3],
                "settings": b"{}",
            },
        )
        pipe.set(f"{root}:pos:{vid}", f"{lat!r},{lon!r},{now!r}", px=3_600_000)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.close()
    return time.perf_counter() - started


def timed_start(
    args: argparse.Namespace, mqtt_url: str, redis_url: str
) -> tuple[EngineProcess, float]:
    engine = EngineProcess(
        mqtt_url, redis_url, args.topic_root, None, "warning", Path(args.engine_dir)
    )
    started = time.perf_counter()
    deadline = started + args.timeout
    while time.perf_counter() < deadline:
        if engine.proc.poll() is not None:
            raise SystemExit(f"restart: the engine exited; its log:\n{engine.log_tail()}")
        try:
            if http_get(engine.url, "/readyz", 2)[0] == 200:
                return engine, time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"restart: not ready after {args.timeout} s\n{engine.log_tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start-servers", action="store_true", help="throwaway Mosquitto and Redis")
    p.add_argument("--mqtt", help="broker URL (without --start-servers)")
    p.add_argument("--redis", help="Redis URL of an empty database (without --start-servers)")
    p.add_argument("--volunteers", type=int, default=100_000)
    p.add_argument("--topic-root", default="dispatch")
    p.add_argument("--engine-dir", default=str(REPO), help="the checkout whose engine runs")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed to get ready")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if args.volunteers < 1:
        p.error("--volunteers must be at least 1")
    if not args.start_servers and not (args.mqtt and args.redis):
        p.error("give --start-servers, or both --mqtt and --redis")
    started: list[object] = []
    engine: EngineProcess | None = None
    try:
        if args.start_servers:
            broker, args.mqtt, _ws = start_mosquitto(websockets=False)
            started.append(broker)
            server, args.redis = start_redis()
            started.append(server)
        config = load_config(None, {})
        area = ServiceArea.from_geojson(config.area_geojson, cell_size_m=config.cell_size_m)
        points = homes(area, args.volunteers, args.seed)
        filled_s = fill(args.redis, args.topic_root, points, args.seed)
        engine, cold_s = timed_start(args, args.mqtt, args.redis)
        os.kill(engine.proc.pid, signal.SIGKILL)
        engine.proc.wait(10)
        engine.log.close()
        engine, ready_s = timed_start(args, args.mqtt, args.redis)
        measurer = Measurer(args.mqtt, args.topic_root, "none")
        lat, lon = points[0]
        sent = time.perf_counter()
        measurer.report(f"restart-{os.getpid()}", lat, lon)
        first_alert_ms = None
        while time.perf_counter() - sent < 10:
            with measurer.t.lock:
                if measurer.t.first_alert:
                    first_alert_ms = (next(iter(measurer.t.first_alert.values())) - sent) * 1000
                    break
            time.sleep(0.001)
        measurer.close()
        result = {
            "volunteers": args.volunteers,
            "engine_dir": args.engine_dir,
            "fill_s": round(filled_s, 2),
            "cold_start_ready_s": round(cold_s, 3),
            "after_kill9_ready_s": round(ready_s, 3),
            "first_alert_ms": None if first_alert_ms is None else round(first_alert_ms, 1),
            "load_average": os.getloadavg(),
            "machine": machine(),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0 if first_alert_ms is not None else 1
    finally:
        if engine is not None:
            engine.stop()
        for s in reversed(started):
            s.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
