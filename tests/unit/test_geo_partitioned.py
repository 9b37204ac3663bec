"""The index partitioned by travel mode, with cheap holds."""

import random

import pytest

from geo.distance import LocalProjection, haversine_m
from geo.index import PartitionedIndex

LAT, LON = 30.2591, 120.1698


def make() -> PartitionedIndex:
    index = PartitionedIndex(LocalProjection(LAT, LON), ("walk", "bike"))
    for i in range(5):
        index.put(f"w{i}", LAT + i * 0.001, LON, ("first_aid",), "walk")
        index.put(f"b{i}", LAT - i * 0.001, LON, (), "bike")
    return index


def test_parts_are_disjoint_and_a_volunteer_can_change_part() -> None:
    index = make()
    assert len(index) == 10
    index.put("w0", LAT, LON, ("first_aid",), "bike")
    assert index.part_of("w0") == "bike"
    assert "w0" not in {n.volunteer_id for n in index.nearest("walk", LAT, LON, 10)}
    assert "w0" in {n.volunteer_id for n in index.nearest("bike", LAT, LON, 10)}
    assert len(index) == 10
    with pytest.raises(ValueError, match="unknown part"):
        index.put("x", LAT, LON, (), "rocket")


def test_held_volunteers_are_left_out_until_put_again() -> None:
    index = make()
    index.hold("w0")
    assert "w0" not in index
    assert len(index) == 9
    assert index.position("w0") is None
    assert [n.volunteer_id for n in index.nearest("walk", LAT, LON, 1)] == ["w1"]
    index.put("w0", LAT, LON, ("first_aid",), "walk")  # released where it was
    assert [n.volunteer_id for n in index.nearest("walk", LAT, LON, 1)] == ["w0"]


def test_compact_removes_the_longest_held_first() -> None:
    index = make()
    for vid in ("w0", "w1", "w2"):
        index.hold(vid)
    assert index.compact(2) == 2
    assert index.part_of("w0") is None
    assert len(index.parts["walk"]) == 3  # w0 and w1 really left the tree; w2 is held
    assert index.compact(10) == 1
    assert len(index.parts["walk"]) == 2
    assert len(index) == 7
    index.put("w1", LAT, LON, ("first_aid",), "walk")
    assert "w1" in index
    assert index.remove("w1")
    assert not index.remove("w1")


def test_held_counts_what_compact_has_still_to_remove() -> None:
    index = make()
    assert index.held == 0
    for vid in ("w0", "w1", "b0"):
        index.hold(vid)
    index.hold("nobody")  # not in the index: nothing to hold
    assert index.held == 3
    index.put("w1", LAT, LON, ("first_aid",), "walk")  # released
    assert index.held == 2
    assert index.compact(1) == 1
    assert index.held == 1
    assert index.compact(10) == 1
    assert index.held == 0
    assert len(index) == 8


def test_loading_in_bulk_answers_as_one_put_at_a_time() -> None:
    import random

    rng = random.Random(7)
    grown = PartitionedIndex(LocalProjection(LAT, LON), ("walk", "bike"))
    loaded = PartitionedIndex(LocalProjection(LAT, LON), ("walk", "bike"))
    calls = []
    for i in range(600):
        skills = tuple(s for s in ("aed", "first_aid") if rng.random() < 0.4)
        part = rng.choice(("walk", "bike"))
        calls.append(
            (f"v{i}", LAT + rng.uniform(-0.02, 0.02), LON + rng.uniform(-0.02, 0.02), skills, part)
        )
    for call in calls:
        grown.put(*call)
    grown.put("v1", LAT, LON, ("aed",), "walk")  # a volunteer put twice keeps the last
    assert grown.remove("v2")
    grown.hold("v3")
    with loaded.loading():
        for call in calls:
            loaded.put(*call)
        assert loaded.nearest("walk", LAT, LON, 3) == []  # nothing in the trees yet
        loaded.put("v1", LAT, LON, ("aed",), "walk")
        assert loaded.remove("v2")
        loaded.hold("v3")
    assert len(loaded) == len(grown) == 598
    for _ in range(50):
        lat, lon = LAT + rng.uniform(-0.02, 0.02), LON + rng.uniform(-0.02, 0.02)
        for part in ("walk", "bike"):
            for skills in ((), ("aed",), ("aed", "first_aid")):
                assert loaded.nearest(part, lat, lon, 5, skills=skills) == grown.nearest(
                    part, lat, lon, 5, skills=skills
                )
    # The trees work as usual afterwards: moves, removals and compaction.
    for index in (grown, loaded):
        index.put("v10", LAT, LON, ("aed",), "bike")
        index.remove("v11")
        assert index.compact(10) == 1
    assert loaded.nearest("bike", LAT, LON, 5) == grown.nearest("bike", LAT, LON, 5)


def test_loading_refuses_a_filled_index_and_a_bad_position() -> None:
    index = make()
    with pytest.raises(ValueError, match="empty index"), index.loading():
        pass
    fresh = PartitionedIndex(LocalProjection(LAT, LON), ("walk",))
    with pytest.raises(ValueError, match="invalid position"), fresh.loading():
        fresh.put("x", 91.0, LON, (), "walk")


def test_a_move_within_the_accuracy_leaves_the_index_as_it_is() -> None:
    index = make()
    metre = 1 / 111_195
    index.put("w0", LAT + 8 * metre, LON, ("first_aid",), "walk", within_m=10.0)
    assert index.position("w0") == (LAT, LON)  # 8 m within 10 m: not moved
    index.put("w0", LAT + 12 * metre, LON, ("first_aid",), "walk", within_m=10.0)
    assert index.position("w0") == (LAT + 12 * metre, LON)  # 12 m: moved
    # Measured from where the index has them, so small steps cannot drift away unseen.
    index.put("w0", LAT + 20 * metre, LON, ("first_aid",), "walk", within_m=10.0)
    index.put("w0", LAT + 21 * metre, LON, ("first_aid",), "walk", within_m=10.0)
    assert index.position("w0") == (LAT + 12 * metre, LON)
    index.put("w0", LAT + 23 * metre, LON, ("first_aid",), "walk", within_m=10.0)
    assert index.position("w0") == (LAT + 23 * metre, LON)
    index.put("w0", LAT + 24.5 * metre, LON, (), "walk", within_m=10.0)  # skills changed
    assert index.position("w0") == (LAT + 24.5 * metre, LON)
    assert [n.volunteer_id for n in index.nearest("walk", LAT, LON, 5, skills=("first_aid",))][
        -1
    ] != "w0"
    index.hold("w1")
    index.put("w1", LAT + 0.001 + metre, LON, ("first_aid",), "walk", within_m=10.0)
    assert "w1" in index  # released, though not moved
    assert index.position("w1") == (LAT + 0.001, LON)


def test_any_mix_of_moves_holds_and_part_changes_answers_as_brute_force() -> None:
    """The index keeps one entry per volunteer, shared with its part: whatever happens to
    a volunteer (moves near and far, new skills, another mode, holds, compaction, removal,
    a refused position), every part answers exactly as a brute-force ranking of what it
    was told."""
    rng = random.Random(16)
    index = PartitionedIndex(LocalProjection(LAT, LON), ("walk", "bike", "ebike"))
    kept: dict[str, tuple[float, float, frozenset[str], str]] = {}  # the model
    held: dict[str, None] = {}  # in the order held: compaction takes the oldest
    skill_sets = (frozenset(), frozenset({"first_aid"}), frozenset({"first_aid", "aed"}))
    for step in range(4000):
        vid = f"v{rng.randrange(40)}"
        roll = rng.random()
        if roll < 0.6:
            old = kept.get(vid)
            far = old is None or rng.random() < 0.3
            lat = LAT + rng.uniform(-0.02, 0.02) if far else old[0] + rng.uniform(-3e-4, 3e-4)
            lon = LON + rng.uniform(-0.02, 0.02) if far else old[1] + rng.uniform(-3e-4, 3e-4)
            skills = rng.choice(skill_sets) if rng.random() < 0.2 or old is None else old[2]
            part = rng.choice(("walk", "bike", "ebike")) if rng.random() < 0.1 else None
            part = part or (old[3] if old else "walk")
            within = rng.choice((None, 10.0))
            if rng.random() < 0.02:
                with pytest.raises(ValueError, match="invalid position"):
                    index.put(vid, 91.0, lon, skills, part, within_m=within)
                continue  # refused: nothing changed
            index.put(vid, lat, lon, skills, part, within_m=within)
            held.pop(vid, None)
            still = (
                within is not None
                and old is not None
                and old[2] == skills
                and old[3] == part
                and haversine_m(old[0], old[1], lat, lon) < within - 0.01
            )
            if not still:
                kept[vid] = (lat, lon, skills, part)
        elif roll < 0.75:
            index.hold(vid)
            if vid in kept and vid not in held:
                held[vid] = None
        elif roll < 0.85:
            assert index.remove(vid) == (vid in kept)
            kept.pop(vid, None)
            held.pop(vid, None)
        else:
            limit = rng.randrange(4)
            assert index.compact(limit) == min(limit, len(held))
            for gone in list(held)[:limit]:  # really out: a put adds them afresh
                del held[gone], kept[gone]
        if step % 20:
            continue
        assert len(index) == len(kept) - len(held)
        qlat, qlon = LAT + rng.uniform(-0.02, 0.02), LON + rng.uniform(-0.02, 0.02)
        for part in ("walk", "bike", "ebike"):
            for need in skill_sets:
                want = sorted(
                    (haversine_m(qlat, qlon, lat, lon), v)
                    for v, (lat, lon, skills, p) in kept.items()
                    if p == part and v not in held and need <= skills
                )[:5]
                got = index.nearest(part, qlat, qlon, 5, skills=need)
                assert [(n.distance_m, n.volunteer_id) for n in got] == want
