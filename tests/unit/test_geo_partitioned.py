"""The index partitioned by travel mode, with cheap holds."""

import pytest

from geo.distance import LocalProjection
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
