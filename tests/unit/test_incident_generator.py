"""The incident generator's pure parts: the kind mix, the density model, Poisson arrivals,
report bodies and the replay file parser (simulators/incidents.py); no broker needed."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from dispatch.config import load_config
from dispatch.model import Kind
from geo.area import ServiceArea
from geo.distance import haversine_m
from simulators.incidents import (
    KIND_MIX,
    OLD_TOWN,
    DensityModel,
    arrival_times,
    load_replay,
    make_report,
    sample_kind,
)


@pytest.fixture(scope="module")
def area() -> ServiceArea:
    config = load_config()
    return ServiceArea.from_geojson(
        config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
    )


@pytest.fixture(scope="module")
def density(area: ServiceArea) -> DensityModel:
    return DensityModel(area)


def test_mix_names_protocol_kinds_and_sums_to_one() -> None:
    assert set(KIND_MIX) <= {k.value for k in Kind}
    assert math.isclose(sum(KIND_MIX.values()), 1.0)
    # Falls and medical emergencies of elderly residents are the bulk; fire is rare.
    ranked = sorted(KIND_MIX, key=KIND_MIX.__getitem__, reverse=True)
    assert ranked[:2] == ["fall", "medical"]
    assert KIND_MIX["fire"] == min(KIND_MIX.values())


def test_sampled_kinds_follow_the_mix() -> None:
    rng = random.Random(7)
    n = 20_000
    counts = Counter(sample_kind(rng) for _ in range(n))
    for kind, share in KIND_MIX.items():
        # 5 standard deviations of a binomial share: never flaky with a fixed seed anyway.
        assert abs(counts[kind] / n - share) < 5 * math.sqrt(share * (1 - share) / n)


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    rng = random.Random(3)
    times = list(zip(range(5000), arrival_times(120.0, rng), strict=False))
    offsets = [t for _, t in times]
    assert offsets == sorted(offsets)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(30.0, rel=0.05)  # 120/h = one per 30 s
    # Exponential: the standard deviation equals the mean.
    assert statistics.pstdev(gaps) == pytest.approx(30.0, rel=0.08)


def test_arrivals_are_deterministic_given_a_seed() -> None:
    a = [t for _, t in zip(range(50), arrival_times(60.0, random.Random(9)), strict=False)]
    b = [t for _, t in zip(range(50), arrival_times(60.0, random.Random(9)), strict=False)]
    assert a == b


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_arrivals_refuse_a_bad_rate(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_per_hour"):
        next(arrival_times(rate, random.Random(0)))


def test_sampled_locations_lie_inside_the_area(area: ServiceArea, density: DensityModel) -> None:
    rng = random.Random(11)
    for _ in range(2000):
        lat, lon = density.sample(rng)
        assert area.contains(lat, lon)


def test_locations_are_denser_near_the_old_town(density: DensityModel) -> None:
    rng = random.Random(5)
    points = [density.sample(rng) for _ in range(4000)]
    near = sum(1 for p in points if haversine_m(*p, *OLD_TOWN) <= 2000)
    far = sum(1 for p in points if 6000 <= haversine_m(*p, *OLD_TOWN) <= 8000)
    # Rings of 12.6 km^2 (0-2 km) and 88 km^2 (6-8 km): per km^2 the old town is denser.
    assert near / (math.pi * 2**2) > 2 * far / (math.pi * (8**2 - 6**2))
    assert density.is_dense(*OLD_TOWN)
    assert density.relative_density(*OLD_TOWN) == pytest.approx(1.0)


def test_make_report_is_a_valid_protocol_report(density: DensityModel) -> None:
    rng = random.Random(1)
    report = make_report(rng, "sim-00001", density, now=1795687200.0)
    assert report["id"] == "sim-00001"
    assert report["kind"] in KIND_MIX
    assert report["reported_at"] == "2026-11-26T10:00:00.000Z"
    assert density.area.contains(report["lat"], report["lon"])
    again = make_report(random.Random(1), "sim-00001", density, now=1795687200.0)
    assert again == report  # deterministic given the seed


def test_replay_parses_offsets_and_bodies() -> None:
    lines = [
        '{"id": "r1", "kind": "fall", "lat": 30.2591, "lon": 120.1698, "at_s": 0}',
        "",
        "# a comment",
        '{"id": "r2", "kind": "fire", "lat": 30.26, "lon": 120.17, "at_s": 12.5}',
        '{"id": "r3", "kind": "medical", "lat": 30.26, "lon": 120.17}',
    ]
    reports = load_replay(lines)
    assert [r.at_s for r in reports] == [0.0, 12.5, 12.5]
    assert reports[0].body == {"id": "r1", "kind": "fall", "lat": 30.2591, "lon": 120.1698}
    assert all("at_s" not in r.body for r in reports)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "replay:2: not JSON"),
        ("[1, 2]", "replay:2: a report must be a JSON object"),
        ('{"kind": "fall", "at_s": "soon"}', "replay:2: 'at_s' must be a number"),
        ('{"kind": "fall", "at_s": 1}', "replay:2: 'at_s' 1 goes back in time"),
    ],
)
def test_replay_names_the_bad_line(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_replay(['{"kind": "fall", "lat": 30.26, "lon": 120.17, "at_s": 5}', line])
