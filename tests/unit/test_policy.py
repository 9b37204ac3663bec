"""The dispatch policy: wave sizes and ranking by travel time."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.policy import Policy, Rank, Strategy, fastest, wave_size
from geo.distance import LocalProjection, haversine_m
from geo.index import PartitionedIndex
from geo.travel import TravelModel

LAT, LON = 30.2591, 120.1698
MODES = ("walk", "bike", "ebike")


def _binomial_at_least(n: int, k: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(
    ("rate", "confidence", "needed", "expected"),
    [
        (0.35, 0.9, 1, 6),  # 1 - 0.65**6 = 0.925; 0.65**5 leaves 0.884
        (0.5, 0.9, 1, 4),
        (0.9, 0.9, 1, 1),
        (0.35, 0.5, 1, 2),
        (0.35, 0.9, 0, 0),
    ],
)
def test_wave_size_from_acceptance_rate(
    rate: float, confidence: float, needed: int, expected: int
) -> None:
    policy = Policy(acceptance_rate=rate, wave_confidence=confidence)
    assert wave_size(policy, needed) == expected


@given(
    rate=st.floats(0.05, 0.95),
    confidence=st.floats(0.05, 0.95),
    needed=st.integers(1, 4),
)
def test_wave_size_is_the_smallest_that_is_confident_enough(
    rate: float, confidence: float, needed: int
) -> None:
    policy = Policy(acceptance_rate=rate, wave_confidence=confidence, max_wave_size=100)
    n = wave_size(policy, needed)
    assert n >= needed
    if n < 100:
        assert _binomial_at_least(n, needed, rate) >= confidence - 1e-12
    if n > needed:  # one fewer would not do (within rounding)
        assert _binomial_at_least(n - 1, needed, rate) < confidence - 1e-12


def test_wave_size_is_capped_and_naive_is_one() -> None:
    assert wave_size(Policy(acceptance_rate=0.05, max_wave_size=8), 1) == 8
    assert wave_size(Policy(strategy=Strategy.NAIVE), 3) == 1


def test_naive_waits_for_the_alert_to_expire() -> None:
    assert Policy(strategy=Strategy.NAIVE, alert_expiry_s=90).reply_wait_s == 90
    assert Policy(wave_timeout_s=20).reply_wait_s == 20


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="acceptance_rate"):
        Policy(acceptance_rate=1.5)
    with pytest.raises(ValueError, match="target_s"):
        Policy(target_s=0)


def test_ebike_farther_away_beats_a_walker_nearby() -> None:
    index = PartitionedIndex(LocalProjection(LAT, LON), MODES)
    index.put("walker", LAT + 0.0072, LON, (), "walk")  # ~800 m
    index.put("ebiker", LAT + 0.0135, LON, (), "ebike")  # ~1.5 km
    travel = TravelModel()
    ranked = fastest(index, travel, LAT, LON, 2, radius_m=3000)
    assert [c.volunteer_id for c in ranked] == ["ebiker", "walker"]
    assert ranked[1].eta_s == pytest.approx(ranked[1].distance_m * 1.3 / 1.8)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    k=st.integers(1, 12),
    rank=st.sampled_from([Rank.ETA, Rank.DISTANCE]),
)
def test_fastest_equals_brute_force_with_mixed_modes(seed: int, k: int, rank: Rank) -> None:
    # Slower modes are asked only within what beats the k-th found so far: exact all the same.
    rng = random.Random(seed)
    index = PartitionedIndex(LocalProjection(LAT, LON), MODES)
    modes: dict[str, str] = {}
    skills_of: dict[str, list[str]] = {}
    travel = TravelModel()
    for i in range(rng.randint(0, 300)):
        vid = f"v{i}"
        lat, lon = LAT + rng.uniform(-0.03, 0.03), LON + rng.uniform(-0.03, 0.03)
        skills = ["first_aid"] if rng.random() < 0.4 else []
        modes[vid] = rng.choice(MODES)
        skills_of[vid] = skills
        index.put(vid, lat, lon, skills, modes[vid])
    # a few change mode or leave, as volunteers do
    for vid in rng.sample(sorted(modes), min(len(modes), 20)):
        if rng.random() < 0.5:
            index.remove(vid)
            del modes[vid]
        else:
            modes[vid] = rng.choice(MODES)
            pos = index.position(vid)
            assert pos is not None
            index.put(vid, *pos, skills_of[vid], modes[vid])
    assert len(index) == len(modes)
    got = fastest(index, travel, LAT, LON, k, skills=["first_aid"], radius_m=2500, rank=rank)
    brute = []
    for vid in modes:
        if "first_aid" not in skills_of[vid]:
            continue
        pos = index.position(vid)
        assert pos is not None
        d = haversine_m(LAT, LON, *pos)
        if d <= 2500:
            brute.append((travel.eta_s(d, modes[vid]) if rank is Rank.ETA else d, vid))
    brute.sort()
    assert [c.volunteer_id for c in got] == [vid for _, vid in brute[:k]]
