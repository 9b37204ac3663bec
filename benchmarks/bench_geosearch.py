"""The alternative design, measured in the same run: nearest volunteers by Redis GEOSEARCH.

The engine keeps every available volunteer in an in-process R-tree (geo.VolunteerIndex)
and asks it for the k nearest. The obvious alternative keeps them in a Redis GEO set
(GEOADD) and asks Redis (GEOSEARCH FROMLONLAT BYRADIUS ASC COUNT k). Both get the same
points (uniform over the service area) and the same queries, in one run, and the
answers are compared (the same k volunteers, allowing for Redis' 52-bit geohash
rounding at equal distances):

- one query at a time (what a decision waits for: the round trip is the cost);
- pipelined queries (what Redis can do when a batch of reports is taken at once);
- moves: one ``put`` against one GEOADD, and GEOADD pipelined 100 per round trip.

    .venv/bin/python benchmarks/bench_geosearch.py --start-server --volunteers 100000 \\
        --queries 5000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a fresh clone
    sys.path.insert(0, str(REPO))

from dispatch.config import load_config  # noqa: E402
from geo import VolunteerIndex  # noqa: E402
from geo.area import ServiceArea  # noqa: E402

KEY = "bench:geosearch:volunteers"


def pct(samples_ns: Sequence[int], q: float) -> float:
    ordered = sorted(samples_ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0  # µs


def timed(op: Callable[[int], object], count: int) -> dict[str, float]:
    samples = []
    clock = time.perf_counter_ns
    for i in range(count):
        t = clock()
        op(i)
        samples.append(clock() - t)
    return {"p50_us": round(pct(samples, 0.5), 1), "p99_us": round(pct(samples, 0.99), 1)}


def points(area: ServiceArea, n: int, rng: random.Random) -> list[tuple[float, float]]:
    min_lon, min_lat, max_lon, max_lat = area.bounds
    out: list[tuple[float, float]] = []
    while len(out) < n:
        lat, lon = rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon)
        if area.contains(lat, lon):
            out.append((lat, lon))
    return out


@contextlib.contextmanager
def redis_url(args: argparse.Namespace) -> Iterator[str]:
    if not args.start_server:
        yield args.redis
        return
    from dispatch.localservers import start_redis

    server, url = start_redis()
    try:
        yield url
    finally:
        server.stop()


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    config = load_config(args.config, env={})
    area = ServiceArea.from_geojson(
        config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
    )
    n, q, k, radius = args.volunteers, args.queries, args.k, args.radius_m
    pts = points(area, n, rng)
    queries = points(area, q, rng)
    moves = [
        (rng.randrange(n), rng.uniform(-1e-4, 1e-4), rng.uniform(-1e-4, 1e-4)) for _ in range(q)
    ]

    index = VolunteerIndex(area.projection)
    t = time.perf_counter()
    for i, (lat, lon) in enumerate(pts):
        index.put(f"v{i}", lat, lon)
    index_build = time.perf_counter() - t

    r = redis.Redis.from_url(url)
    r.delete(KEY)
    t = time.perf_counter()
    for start in range(0, n, 1000):
        flat: list[Any] = []
        for i in range(start, min(n, start + 1000)):
            flat += [pts[i][1], pts[i][0], f"v{i}"]
        r.execute_command("GEOADD", KEY, *flat)
    redis_build = time.perf_counter() - t

    def ours(i: int) -> list[str]:
        return [nb.volunteer_id for nb in index.nearest(*queries[i], k, radius_m=radius)]

    def theirs(i: int) -> list[str]:
        lat, lon = queries[i]
        found = r.execute_command(
            "GEOSEARCH",
            KEY,
            "FROMLONLAT",
            lon,
            lat,
            "BYRADIUS",
            radius,
            "m",
            "ASC",
            "COUNT",
            k,
            "WITHDIST",
        )
        return [m[0].decode() for m in found]

    # Agreement: the same k volunteers (as sets: equal distances may swap places).
    same = sum(1 for i in range(q) if set(ours(i)) == set(theirs(i)))
    rows: list[dict[str, Any]] = []
    rows.append({"what": "query, in process (geo.VolunteerIndex)", **timed(ours, q)})
    rows.append({"what": "query, Redis GEOSEARCH (one round trip)", **timed(theirs, q)})

    batch = 100
    t = time.perf_counter()
    for start in range(0, q, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(q, start + batch)):
            lat, lon = queries[i]
            pipe.execute_command(
                "GEOSEARCH",
                KEY,
                "FROMLONLAT",
                lon,
                lat,
                "BYRADIUS",
                radius,
                "m",
                "ASC",
                "COUNT",
                k,
            )
        pipe.execute()
    pipelined = (time.perf_counter() - t) / q * 1e6
    rows.append(
        {
            "what": f"query, Redis GEOSEARCH pipelined {batch}/round trip (mean)",
            "p50_us": round(pipelined, 1),
            "p99_us": None,
        }
    )

    def move_ours(i: int) -> None:
        j, dlat, dlon = moves[i]
        index.put(f"v{j}", pts[j][0] + dlat, pts[j][1] + dlon)

    def move_theirs(i: int) -> None:
        j, dlat, dlon = moves[i]
        r.execute_command("GEOADD", KEY, pts[j][1] + dlon, pts[j][0] + dlat, f"v{j}")

    rows.append({"what": "move, in process (put)", **timed(move_ours, q)})
    rows.append({"what": "move, Redis GEOADD (one round trip)", **timed(move_theirs, q)})
    t = time.perf_counter()
    for start in range(0, q, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(q, start + batch)):
            j, dlat, dlon = moves[i]
            pipe.execute_command("GEOADD", KEY, pts[j][1] + dlon, pts[j][0] + dlat, f"v{j}")
        pipe.execute()
    rows.append(
        {
            "what": f"move, Redis GEOADD pipelined {batch}/round trip (mean)",
            "p50_us": round((time.perf_counter() - t) / q * 1e6, 1),
            "p99_us": None,
        }
    )
    memory = r.memory_usage(KEY)
    r.delete(KEY)
    r.close()

    base_q, base_m = rows[0]["p50_us"], rows[3]["p50_us"]
    for row in rows:
        base = base_q if row["what"].startswith("query") else base_m
        row["ratio_p50"] = round(row["p50_us"] / base, 2) if base else None
    return {
        "volunteers": n,
        "queries": q,
        "k": k,
        "radius_m": radius,
        "build_s": {"index": round(index_build, 2), "redis_geoadd": round(redis_build, 2)},
        "redis_memory_bytes": memory,
        "same_k_volunteers": round(same / q, 4),
        "rows": rows,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['volunteers']:,} volunteers, k = {result['k']}, radius "
        f"{result['radius_m']:.0f} m, {result['queries']:,} queries; the same k volunteers "
        f"in {result['same_k_volunteers']:.1%} of queries",
        "",
        "| what | p50 µs | p99 µs | p50 / in-process |",
        "|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        p99 = "-" if row["p99_us"] is None else f"{row['p99_us']:.1f}"
        lines.append(f"| {row['what']} | {row['p50_us']:.1f} | {p99} | {row['ratio_p50']}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench_geosearch.py",
        description="Nearest-k volunteers: the in-process index against Redis GEOSEARCH, "
        "same points, same run. Prints a markdown table; --json writes the figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--redis", help="Redis URL (a key 'bench:geosearch:*' is written, then deleted)")
    p.add_argument("--start-server", action="store_true", help="use a throwaway redis-server")
    p.add_argument("--config", help="engine TOML config (its service area is used)")
    p.add_argument("--volunteers", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--radius-m", type=float, default=3000.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few seconds: 5,000 points, 500 queries")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.volunteers, args.queries = 5000, 500
    if not args.redis and not args.start_server:
        p.error("give --redis URL or --start-server")
    if args.volunteers < args.k or args.queries < 1:
        p.error("--volunteers must be at least --k, and --queries positive")
    with redis_url(args) as url:
        result = run(args, url)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
