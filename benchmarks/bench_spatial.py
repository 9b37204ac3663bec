"""Micro-benchmark: nearest-k queries and moves of VolunteerIndex against bare alternatives.

Answers "how fast are a nearest-volunteer query and a location update at N
volunteers?" for geo.VolunteerIndex (exact great-circle k nearest, skill
trees, tuned R*-tree), a bare rtree with the library's default properties,
a shapely STRtree (static: a move means a rebuild) and a numpy brute force.

    .venv/bin/python benchmarks/bench_spatial.py --sizes 10000,100000 --json out.json
    .venv/bin/python benchmarks/bench_spatial.py --quick
"""

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version

import numpy as np
import shapely
from rtree import index as rtree_index

from geo import LocalProjection, VolunteerIndex

__all__ = ["main"]

CENTRE = (30.2913, 120.2145)  # Shangcheng district's centroid
HALF_BOX_M = 10_000.0  # points uniform in a 20 km box around it
K = 5
STEP_M = 100.0  # a move: up to 100 m in x and y, one location update's worth
SKILLS = ("first_aid", "aed", "nurse")
# Volunteers have 0-3 skills; a move touches one tree per skill plus the tree of all.
SKILL_COUNT_WEIGHTS = (0.4, 0.35, 0.2, 0.05)


@dataclass
class Row:
    size: int
    structure: str
    build_s: float
    query_p50_us: float
    query_p99_us: float
    move_p50_us: float
    move_p99_us: float
    note: str


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 / 1e3, p99 / 1e3


def timed(op: Callable[[int], object], count: int) -> tuple[float, float]:
    samples = []
    clock = time.perf_counter_ns
    for i in range(count):
        start = clock()
        op(i)
        samples.append(clock() - start)
    return percentiles(samples)


def run_size(
    n: int,
    queries: int,
    rng: random.Random,
    slacks: Sequence[float] = (50.0,),
    move_steps: Sequence[float] = (STEP_M,),
) -> list[Row]:
    proj = LocalProjection(*CENTRE)
    xs = [rng.uniform(-HALF_BOX_M, HALF_BOX_M) for _ in range(n)]
    ys = [rng.uniform(-HALF_BOX_M, HALF_BOX_M) for _ in range(n)]
    latlon = [proj.to_latlon(x, y) for x, y in zip(xs, ys, strict=True)]
    skills = [
        tuple(rng.sample(SKILLS, rng.choices(range(4), SKILL_COUNT_WEIGHTS)[0])) for _ in range(n)
    ]
    q_xy = [
        (rng.uniform(-HALF_BOX_M, HALF_BOX_M), rng.uniform(-HALF_BOX_M, HALF_BOX_M))
        for _ in range(queries)
    ]
    q_latlon = [proj.to_latlon(x, y) for x, y in q_xy]
    movers = [rng.randrange(n) for _ in range(queries)]
    steps = [(rng.uniform(-STEP_M, STEP_M), rng.uniform(-STEP_M, STEP_M)) for _ in range(queries)]
    rows: list[Row] = []

    # -- geo.VolunteerIndex, loaded one put at a time as the engine does ----------------
    for slack in slacks:
        progress(f"[{n}] VolunteerIndex (slack {slack:g} m): {n} puts ...")
        start = time.perf_counter()
        ours = VolunteerIndex(proj, slack_m=slack)
        for i in range(n):
            ours.put(f"v{i}", latlon[i][0], latlon[i][1], skills[i])
            if i and i % 200_000 == 0:
                progress(f"[{n}]   {i} puts, {time.perf_counter() - start:.0f} s")
        build = time.perf_counter() - start
        name = f"geo.VolunteerIndex, slack {slack:g} m"
        pos = list(zip(xs, ys, strict=True))
        for step_m in move_steps:
            # Each volunteer moves about its own start, as phones at home or at work do:
            # up to step_m in x and y from where they began.
            offsets = [
                (rng.uniform(-step_m, step_m), rng.uniform(-step_m, step_m)) for _ in range(queries)
            ]

            def move_ours(
                i: int,
                index: VolunteerIndex = ours,
                offsets: list[tuple[float, float]] = offsets,
                homes: list[tuple[float, float]] = pos,
            ) -> None:
                j = movers[i]
                x, y = homes[j][0] + offsets[i][0], homes[j][1] + offsets[i][1]
                index.put(f"v{j}", *proj.to_latlon(x, y), skills[j])

            m50, m99 = timed(move_ours, queries)
            q50, q99 = timed(lambda i, index=ours: index.nearest(*q_latlon[i], K), queries)
            q50s, q99s = timed(
                lambda i, index=ours: index.nearest(*q_latlon[i], K, skills=("aed",)), queries
            )
            rows.append(
                Row(
                    n,
                    name,
                    build,
                    q50,
                    q99,
                    m50,
                    m99,
                    f"exact haversine k=5; moves within {step_m:g} m of home; "
                    f"skills=aed: query p50 {q50s:.1f} µs, p99 {q99s:.1f} µs",
                )
            )

    # -- bare rtree, library defaults (bulk loaded) -----------------------------------
    progress(f"[{n}] rtree defaults: bulk load ...")
    start = time.perf_counter()
    bare = rtree_index.Index((i, (xs[i], ys[i], xs[i], ys[i]), None) for i in range(n))
    build = time.perf_counter() - start
    q50, q99 = timed(lambda i: list(bare.nearest(q_xy[i], K)), queries)
    pos = list(zip(xs, ys, strict=True))

    def move_bare(i: int) -> None:
        j = movers[i]
        x, y = pos[j][0] + steps[i][0], pos[j][1] + steps[i][1]
        bare.delete(j, pos[j])
        bare.insert(j, (x, y))
        pos[j] = (x, y)

    m50, m99 = timed(move_bare, queries)
    rows.append(
        Row(
            n,
            "rtree, default properties",
            build,
            q50,
            q99,
            m50,
            m99,
            "projected metres, ids only; move = delete + insert",
        )
    )

    # -- shapely STRtree: static -----------------------------------------------------
    progress(f"[{n}] shapely STRtree: build ...")
    points = shapely.points(np.array(xs), np.array(ys))
    start = time.perf_counter()
    strtree = shapely.STRtree(points)
    strtree.query(shapely.box(0, 0, 1, 1))  # the tree is built lazily on first use
    build = time.perf_counter() - start
    q_points = [shapely.Point(x, y) for x, y in q_xy]
    q50, q99 = timed(lambda i: strtree.query_nearest(q_points[i]), queries)
    rows.append(
        Row(
            n,
            "shapely STRtree",
            build,
            q50,
            q99,
            build * 1e6,
            build * 1e6,
            "k=1 only (query_nearest); static: a move = a full rebuild (build time)",
        )
    )

    # -- numpy brute force ---------------------------------------------------------------
    ax = np.array(xs)
    ay = np.array(ys)

    def query_numpy(i: int) -> object:
        qx, qy = q_xy[i]
        d2 = (ax - qx) ** 2 + (ay - qy) ** 2
        nearest = np.argpartition(d2, K)[:K]
        return nearest[np.argsort(d2[nearest])]

    q50, q99 = timed(query_numpy, queries)

    def move_numpy(i: int) -> None:
        j = movers[i]
        ax[j] += steps[i][0]
        ay[j] += steps[i][1]

    m50, m99 = timed(move_numpy, queries)
    rows.append(
        Row(
            n,
            "numpy brute force",
            0.0,
            q50,
            q99,
            m50,
            m99,
            "projected metres; a move is two array writes",
        )
    )
    return rows


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| N | structure | build | query p50 | query p99 | move p50 | move p99 | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.size:,} | {r.structure} | {r.build_s:.2f} s | {r.query_p50_us:.1f} µs "
            f"| {r.query_p99_us:.1f} µs | {_us(r.move_p50_us)} | {_us(r.move_p99_us)} | {r.note} |"
        )
    return "\n".join(lines)


def _us(value: float) -> str:
    return f"{value / 1e3:,.1f} ms" if value >= 10_000 else f"{value:.1f} µs"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="10000,100000",
        help="comma-separated volunteer counts (default: %(default)s)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=5000,
        help="queries and moves timed per structure (default: %(default)s)",
    )
    parser.add_argument(
        "--slacks",
        default="0,30",
        help="comma-separated half-sides (m) of the volunteers' loose boxes in "
        "geo.VolunteerIndex, one row each (default: %(default)s)",
    )
    parser.add_argument(
        "--move-steps",
        default=f"20,{STEP_M:g}",
        help="comma-separated reaches (m) of the moves, each about the volunteer's start: "
        "20 is GPS jitter at home (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds' smoke run (2,000 points, 300 queries)"
    )
    args = parser.parse_args(argv)
    sizes = [2_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    queries = 300 if args.quick else args.queries
    if queries < 1 or any(s <= K for s in sizes):
        parser.error(f"--queries must be >= 1 and every size > {K}")
    try:
        slacks = [float(v) for v in args.slacks.split(",") if v.strip()]
        move_steps = [float(v) for v in args.move_steps.split(",") if v.strip()]
    except ValueError:
        parser.error("--slacks and --move-steps take comma-separated numbers of metres")
    if not slacks or not move_steps or min(slacks + move_steps) < 0:
        parser.error("--slacks and --move-steps need at least one value each, none negative")
    rng = random.Random(args.seed)
    rows: list[Row] = []
    for n in sizes:
        rows.extend(run_size(n, queries, rng, slacks, move_steps))
    print(table(rows))
    if args.json:
        meta = {
            "python": platform.python_version(),
            "rtree": version("rtree"),
            "libspatialindex": rtree_index.__c_api_version__.decode(),
            "shapely": shapely.__version__,
            "numpy": np.__version__,
            "queries": queries,
            "k": K,
            "seed": args.seed,
            "slacks_m": slacks,
            "move_steps_m": move_steps,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
