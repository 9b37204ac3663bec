"""Unit tests for geo.index: the volunteer index equals a brute-force haversine ranking."""

import random
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.distance import LocalProjection, haversine_m
from geo.index import Neighbour, VolunteerIndex

MIN_LAT, MAX_LAT = 30.195, 30.396
MIN_LON, MAX_LON = 120.132, 120.291
PROJECTION = LocalProjection(30.2913, 120.2145)
SKILLS = ("first_aid", "aed", "nurse")

Position = tuple[float, float, frozenset[str]]


def brute_force(
    volunteers: Mapping[str, Position],
    lat: float,
    lon: float,
    k: int,
    *,
    skills: Iterable[str] = (),
    radius_m: float | None = None,
    exclude: Iterable[str] = (),
) -> list[Neighbour]:
    required = frozenset(skills)
    excluded = set(exclude)
    ranked = sorted(
        (haversine_m(lat, lon, vlat, vlon), vid)
        for vid, (vlat, vlon, vskills) in volunteers.items()
        if required <= vskills and vid not in excluded
    )
    if radius_m is not None:
        ranked = [(d, vid) for d, vid in ranked if d <= radius_m]
    return [Neighbour(vid, d) for d, vid in ranked[:k]]


# Coordinates drawn from a few fixed spots as well as anywhere, so that duplicates
# (exact ties) are common.
SPOTS = [(30.2591, 120.1698), (30.2913, 120.2145), (30.30, 120.25)]
coordinates = st.one_of(
    st.tuples(st.floats(MIN_LAT, MAX_LAT), st.floats(MIN_LON, MAX_LON)),
    st.sampled_from(SPOTS),
)
skill_sets = st.frozensets(st.sampled_from(SKILLS), max_size=3)
volunteer = st.tuples(coordinates, skill_sets)
# An operation: put (a new position for volunteer i) or remove volunteer i.
operation = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 59), volunteer),
    st.tuples(st.just("remove"), st.integers(0, 59), st.none()),
)
query = st.fixed_dictionaries(
    {
        "at": coordinates,
        "k": st.integers(0, 12),
        "skills": st.frozensets(st.sampled_from(SKILLS), max_size=2),
        "radius_m": st.one_of(st.none(), st.floats(0.0, 30_000.0)),
        "exclude": st.frozensets(st.integers(0, 59).map(lambda i: f"v{i:02d}"), max_size=5),
    }
)


def apply(
    index: VolunteerIndex, model: dict[str, Position], ops: Iterable[tuple[str, int, object]]
) -> None:
    for op, i, arg in ops:
        vid = f"v{i:02d}"
        if op == "put":
            assert isinstance(arg, tuple)
            (lat, lon), skills = arg
            index.put(vid, lat, lon, skills)
            model[vid] = (lat, lon, skills)
        else:
            assert index.remove(vid) == (vid in model)
            model.pop(vid, None)


@settings(max_examples=300, deadline=None)
@given(
    initial=st.lists(volunteer, max_size=60),
    ops=st.lists(operation, max_size=40),
    queries=st.lists(query, min_size=1, max_size=5),
)
def test_nearest_equals_brute_force(
    initial: list[tuple[tuple[float, float], frozenset[str]]],
    ops: list[tuple[str, int, object]],
    queries: list[dict[str, object]],
) -> None:
    index = VolunteerIndex(PROJECTION)
    model: dict[str, Position] = {}
    apply(index, model, [("put", i, v) for i, v in enumerate(initial)])
    apply(index, model, ops)
    assert len(index) == len(model)
    for q in queries:
        (lat, lon) = q["at"]  # type: ignore[misc]
        kwargs = {key: q[key] for key in ("skills", "radius_m", "exclude")}
        expected = brute_force(model, lat, lon, q["k"], **kwargs)  # type: ignore[arg-type]
        assert index.nearest(lat, lon, q["k"], **kwargs) == expected  # type: ignore[arg-type]
        # Fewer fetched at first (a radius expected to hold fewer than k): the same answer.
        assert index.nearest(lat, lon, q["k"], **kwargs, tight=True) == expected  # type: ignore[arg-type]


def test_nearest_equals_brute_force_on_a_large_fleet() -> None:
    """Thousands of points, so the R-tree has depth and every search path is taken."""
    rng = random.Random(7)
    index = VolunteerIndex(PROJECTION)
    model: dict[str, Position] = {}

    def random_point() -> tuple[float, float]:
        # Clustered around a few spots, at 20 km scale, and exact duplicates.
        kind = rng.random()
        if kind < 0.1:
            return rng.choice(SPOTS)
        if kind < 0.5:
            lat, lon = rng.choice(SPOTS)
            return lat + rng.gauss(0, 0.002), lon + rng.gauss(0, 0.002)
        return rng.uniform(30.20, 30.39), rng.uniform(120.11, 120.32)

    for i in range(3_000):
        skills = frozenset(
            s for s, p in zip(SKILLS, (0.3, 0.02, 0.1), strict=True) if rng.random() < p
        )
        lat, lon = random_point()
        index.put(f"v{i}", lat, lon, skills)
        model[f"v{i}"] = (lat, lon, skills)
    for step in range(400):
        vid = f"v{rng.randrange(3_000)}"
        if step % 5 == 0:
            index.remove(vid)
            model.pop(vid, None)
        else:
            lat, lon = random_point()
            skills = model[vid][2] if vid in model else frozenset()
            index.put(vid, lat, lon, skills)
            model[vid] = (lat, lon, skills)
        if step % 2:
            continue
        lat, lon = random_point()
        k = rng.choice([1, 5, 20])
        skills_q = rng.choice([(), ("first_aid",), ("aed",), ("aed", "nurse"), ("nurse",)])
        radius = rng.choice([None, 250.0, 2_000.0])
        exclude = {f"v{rng.randrange(3_000)}" for _ in range(30)}
        expected = brute_force(
            model, lat, lon, k, skills=skills_q, radius_m=radius, exclude=exclude
        )
        got = index.nearest(lat, lon, k, skills=skills_q, radius_m=radius, exclude=exclude)
        assert got == expected
        tight = index.nearest(
            lat, lon, k, skills=skills_q, radius_m=radius, exclude=exclude, tight=True
        )
        assert tight == expected
        # Radius exactly at a result's distance: that result is included (inclusive edge).
        if expected:
            edge = expected[-1].distance_m
            assert index.nearest(lat, lon, k, skills=skills_q, radius_m=edge) == brute_force(
                model, lat, lon, k, skills=skills_q, radius_m=edge
            )


def test_ties_break_by_volunteer_id() -> None:
    index = VolunteerIndex(PROJECTION)
    for vid in ("c", "a", "b", "d"):
        index.put(vid, 30.2591, 120.1698)
    index.put("near", 30.2592, 120.1698)
    got = index.nearest(30.2592, 120.1698, 3)
    assert [n.volunteer_id for n in got] == ["near", "a", "b"]
    assert got[1].distance_m == got[2].distance_m > 0.0


def test_put_remove_contains_len() -> None:
    index = VolunteerIndex(PROJECTION)
    assert len(index) == 0
    assert "a" not in index
    assert index.position("a") is None
    assert index.skills("a") == frozenset()
    index.put("a", 30.25, 120.17, ["aed", "first_aid"])
    index.put("b", 30.26, 120.18)
    assert len(index) == 2
    assert "a" in index
    assert 42 not in index
    assert index.position("a") == (30.25, 120.17)
    assert index.skills("a") == {"aed", "first_aid"}
    # A put of an existing id moves it and replaces its skills.
    index.put("a", 30.30, 120.20, ["nurse"])
    assert len(index) == 2
    assert index.position("a") == (30.30, 120.20)
    assert index.skills("a") == {"nurse"}
    assert index.nearest(30.30, 120.20, 5, skills=["aed"]) == []
    assert [n.volunteer_id for n in index.nearest(30.30, 120.20, 5, skills=["nurse"])] == ["a"]
    assert [n.volunteer_id for n in index.nearest(30.30, 120.20, 5)] == ["a", "b"]
    assert index.remove("a") is True
    assert index.remove("a") is False
    assert "a" not in index
    assert len(index) == 1
    assert index.nearest(30.30, 120.20, 5, skills=["nurse"]) == []
    # A freed slot is reused by the next volunteer without confusing the two.
    index.put("c", 30.31, 120.21, ["nurse"])
    assert [n.volunteer_id for n in index.nearest(30.30, 120.20, 5)] == ["c", "b"]
    assert index.nearest(30.30, 120.20, 5, exclude={"c"}) == [
        Neighbour("b", haversine_m(30.30, 120.20, 30.26, 120.18))
    ]


def test_put_same_position_and_skills_is_a_no_op() -> None:
    index = VolunteerIndex(PROJECTION)
    index.put("a", 30.25, 120.17, ["aed"])
    index.put("a", 30.25, 120.17, ["aed"])
    assert len(index) == 1
    assert index.nearest(30.25, 120.17, 2, skills=["aed"]) == [Neighbour("a", 0.0)]


@pytest.mark.parametrize(("lat", "lon"), [(91.0, 120.0), (30.0, 181.0), (float("nan"), 120.0)])
def test_put_rejects_invalid_positions(lat: float, lon: float) -> None:
    index = VolunteerIndex(PROJECTION)
    with pytest.raises(ValueError, match="'a'"):
        index.put("a", lat, lon)
    assert "a" not in index


def test_nearest_rejects_bad_arguments() -> None:
    index = VolunteerIndex(PROJECTION)
    with pytest.raises(ValueError, match="k must be"):
        index.nearest(30.25, 120.17, -1)
    with pytest.raises(ValueError, match="radius_m"):
        index.nearest(30.25, 120.17, 1, radius_m=-5.0)
    with pytest.raises(ValueError, match="position"):
        index.nearest(float("nan"), 120.17, 1)
    assert index.nearest(30.25, 120.17, 3) == []


def test_points_far_from_the_projection_centre_are_still_exact() -> None:
    """Volunteers far outside the district, where the projection is poor, rank correctly."""
    index = VolunteerIndex(PROJECTION)
    model: dict[str, Position] = {}
    rng = random.Random(3)
    for i in range(500):
        lat, lon = rng.uniform(20.0, 60.0), rng.uniform(100.0, 140.0)
        index.put(f"v{i}", lat, lon)
        model[f"v{i}"] = (lat, lon, frozenset())
    for _ in range(50):
        lat, lon = rng.uniform(20.0, 60.0), rng.uniform(100.0, 140.0)
        assert index.nearest(lat, lon, 4) == brute_force(model, lat, lon, 4)


def test_near_the_pole_the_index_falls_back_to_a_full_scan_and_stays_exact() -> None:
    index = VolunteerIndex(PROJECTION)
    model: dict[str, Position] = {}
    rng = random.Random(5)
    for i in range(300):
        lat, lon = rng.uniform(88.5, 90.0), rng.uniform(100.0, 140.0)
        index.put(f"v{i}", lat, lon)
        model[f"v{i}"] = (lat, lon, frozenset())
    for _ in range(30):
        lat, lon = rng.uniform(88.5, 90.0), rng.uniform(100.0, 140.0)
        assert index.nearest(lat, lon, 3) == brute_force(model, lat, lon, 3)


@pytest.mark.parametrize("slack_m", [0.0, 50.0, 3_000.0])
@settings(max_examples=120, deadline=None)
@given(
    initial=st.lists(volunteer, min_size=1, max_size=60),
    # Small moves (up to ~150 m): most stay near a volunteer's anchor, some leave it.
    jitters=st.lists(
        st.tuples(
            st.integers(0, 59), st.floats(-0.0015, 0.0015), st.floats(-0.0015, 0.0015), skill_sets
        ),
        max_size=80,
    ),
    queries=st.lists(query, min_size=1, max_size=5),
)
def test_anchored_points_stay_exact_under_small_moves(
    slack_m: float,
    initial: list[tuple[tuple[float, float], frozenset[str]]],
    jitters: list[tuple[int, float, float, frozenset[str]]],
    queries: list[dict[str, object]],
) -> None:
    """Moves near the anchor and away from it, skill changes with them: every answer
    still equals the brute force on the current positions, whatever the slack."""
    index = VolunteerIndex(PROJECTION, slack_m=slack_m)
    model: dict[str, Position] = {}
    apply(index, model, [("put", i, v) for i, v in enumerate(initial)])
    for i, dlat, dlon, skills in jitters:
        vid = f"v{i % len(initial):02d}"
        lat, lon, _ = model[vid]
        index.put(vid, lat + dlat, lon + dlon, skills)
        model[vid] = (lat + dlat, lon + dlon, skills)
    for q in queries:
        (lat, lon) = q["at"]  # type: ignore[misc]
        kwargs = {key: q[key] for key in ("skills", "radius_m", "exclude")}
        expected = brute_force(model, lat, lon, q["k"], **kwargs)  # type: ignore[arg-type]
        assert index.nearest(lat, lon, q["k"], **kwargs) == expected  # type: ignore[arg-type]
        # Fewer fetched at first (a radius expected to hold fewer than k): the same answer.
        assert index.nearest(lat, lon, q["k"], **kwargs, tight=True) == expected  # type: ignore[arg-type]


def tree_boxes(index: VolunteerIndex) -> list[tuple[float, ...]]:
    """What the tree of all volunteers holds (white box: the move's cost is what is tested)."""
    tree = index._all
    return sorted(tuple(item.bbox) for item in tree.intersection(tree.bounds, objects=True))


def test_a_move_near_the_anchor_leaves_the_trees_alone_and_a_longer_one_reanchors() -> None:
    index = VolunteerIndex(PROJECTION, slack_m=50.0)
    index.put("a", 30.2913, 120.2145, {"aed"})
    index.put("b", 30.30, 120.25)
    anchored = tree_boxes(index)
    index.put("a", 30.2915, 120.2146, {"aed"})  # ~24 m: within the 50 m slack
    assert tree_boxes(index) == anchored
    assert index.position("a") == (30.2915, 120.2146)
    near = index.nearest(30.2915, 120.2146, 1, skills={"aed"})
    assert near == [Neighbour("a", 0.0)]
    index.put("a", 30.2935, 120.2145, {"aed"})  # ~245 m north: out of it
    moved = tree_boxes(index)
    assert moved != anchored
    x, y = PROJECTION.to_xy(30.2935, 120.2145)
    assert (x, y, x, y) in moved


def test_a_negative_slack_is_refused() -> None:
    with pytest.raises(ValueError, match="slack_m must be >= 0"):
        VolunteerIndex(PROJECTION, slack_m=-1.0)
