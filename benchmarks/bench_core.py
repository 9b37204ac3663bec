"""Micro-benchmark of the pure core: one dispatch decision, and one location update.

A decision is everything the dispatcher does for a new report: the grid cell, the
fastest-k search over the volunteer index, the wave, the alerts and the state message,
serialised. It is measured with N volunteers on duty in and around the district, in
one process, with no I/O: the figure to compare with the 200 µs target at 100k.

    .venv/bin/python benchmarks/bench_core.py --sizes 10000,100000 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dispatch.codec import Codec
from dispatch.config import load_config
from dispatch.dispatcher import Dispatcher
from dispatch.effects import SendAlert
from dispatch.model import Duty, Kind, LocationUpdate, Mode, Report, StatusUpdate
from geo.area import ServiceArea

MODES = (Mode.WALK, Mode.WALK, Mode.WALK, Mode.BIKE, Mode.EBIKE)


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def build(area: ServiceArea, n: int, rng: random.Random) -> Dispatcher:
    config = load_config(env={})
    core = Dispatcher(
        area=area,
        codec=Codec(root="dispatch", in_area=area.contains),
        policy=config.policy,
        travel=config.travel,
        kinds=config.kinds,
        rng=random.Random(1),
    )
    min_lon, min_lat, max_lon, max_lat = area.bounds
    for i in range(n):
        skills = ("first_aid",) if rng.random() < 0.6 else ()
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        core.status(StatusUpdate(f"v{i}", Duty.AVAILABLE, skills, rng.choice(MODES), lat, lon), 0.0)
        if n >= 100_000 and i % 100_000 == 0 and i:
            print(f"  {i:,} volunteers on duty", file=sys.stderr)
    return core


def bench(area: ServiceArea, n: int, decisions: int, moves: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    print(f"{n:,} volunteers: building", file=sys.stderr)
    core = build(area, n, rng)
    inside = []
    min_lon, min_lat, max_lon, max_lat = area.bounds
    while len(inside) < decisions:
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        if area.contains(lat, lon):
            inside.append((lat, lon))
    gc.collect()
    gc.disable()
    decision_us: list[float] = []
    alerts = 0
    for j, (lat, lon) in enumerate(inside):
        report = Report(Kind.MEDICAL, lat, lon, id=f"b{j}")
        t0 = time.perf_counter()
        effects = core.report(report, 1.0)
        decision_us.append((time.perf_counter() - t0) * 1e6)
        alerts += sum(1 for e in effects if isinstance(e, SendAlert))
        # Cancel so the alerted volunteers are free again and the index stays at n.
        core.cancel(f"b{j}", 1.0)
    move_us: list[float] = []
    for _ in range(moves):
        vid = f"v{rng.randrange(n)}"
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        t0 = time.perf_counter()
        core.location(LocationUpdate(vid, lat, lon), 2.0)
        move_us.append((time.perf_counter() - t0) * 1e6)
    gc.enable()
    return {
        "volunteers": n,
        "decisions": decisions,
        "alerts_per_decision": alerts / decisions,
        "decision_p50_us": statistics.median(decision_us),
        "decision_p99_us": _percentile(decision_us, 0.99),
        "location_p50_us": statistics.median(move_us),
        "location_p99_us": _percentile(move_us, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="volunteer counts, comma-separated")
    parser.add_argument("--decisions", type=int, default=2000, help="reports per size")
    parser.add_argument("--moves", type=int, default=20000, help="location updates per size")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.decisions, args.moves = [2000], 200, 2000
    config = load_config(env={})
    area = ServiceArea.from_geojson(config.area_geojson)
    rows = [bench(area, n, args.decisions, args.moves, args.seed) for n in sizes]
    print(f"\nmachine: {platform.machine()}, Python {platform.python_version()}")
    print("| volunteers | decision p50 | decision p99 | alerts/decision ", end="")
    print("| location p50 | location p99 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['volunteers']:,} | {r['decision_p50_us']:.0f} µs "
            f"| {r['decision_p99_us']:.0f} µs "
            f"| {r['alerts_per_decision']:.1f} | {r['location_p50_us']:.1f} µs "
            f"| {r['location_p99_us']:.1f} µs |"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": rows}, indent=2))


if __name__ == "__main__":
    main()
