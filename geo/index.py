"""An exact k-nearest index of moving volunteers, filtered by skills, on in-memory R-trees.

How a query stays exact although the R-tree searches in a projection:

1. Ask the tree for the ``n`` nearest anchors in the local projection (see
   "Anchors" below; with no slack an anchor is the point itself) and take them
   in the tree's order, that of their projected distance, computing great-circle
   distances and keeping the ``k`` best that pass the filters.
2. Let ``B`` be the k-th best great-circle distance so far (or ``radius_m``).
   Every point within ``B`` lies within ``B * f`` in the projection, where ``f``
   (just above 1) is derived per query from the latitudes the search can reach
   (see ``_reach_m``). A point whose anchor is projected farther than ``B * f``
   plus the slack is therefore farther than ``B``, and so is every later one:
   stop there.
3. If every returned anchor was taken without stopping, the unseen ones are at
   least as far as the farthest returned: if that is beyond the reach too, done;
   otherwise ask for twice as many and go on where step 1 left off.

Results are sorted by ``(distance_m, volunteer_id)``, so ties at equal
distances break deterministically and the result equals a brute-force
haversine ranking exactly.

Anchors: the trees hold each volunteer at their anchor, where they were last
inserted, and a move within ``slack_m`` of it rewrites the entry and leaves the
trees alone: a phone at home reporting GPS jitter, or someone walking a few tens of
metres, costs no delete and insert (some 30 µs per tree). Queries still rank by the
exact current positions; a point is within ``slack_m`` of its anchor, which is why
steps 2 and 3 add the slack. The price is a few more candidates per query. (Points
rather than boxes of that size in the trees: boxes overlap, and searching them cost
more than the extra candidates do.)
"""

import contextlib
import math
from bisect import insort
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NoReturn

import numpy as np
from rtree import index as rtree_index

from geo.distance import EARTH_RADIUS_M, LocalProjection

__all__ = ["Neighbour", "PartitionedIndex", "VolunteerIndex", "rtree_properties"]

# Relative and absolute slack on search reaches, far above the rounding error of
# the distance arithmetic (about 1e-15 relative), so that rounding never drops a point.
_REL_SLACK = 1e-9
_ABS_SLACK_M = 1e-6
# Beyond this latitude the reach bound degrades; such queries end up taking every point.
_MAX_REACH_LAT_RAD = math.radians(89.0)
# How far a volunteer may be from their anchor before the trees are updated (see
# "Anchors" above): most GPS jitter and short walks stay within it, while a
# query's extra candidates stay few (benchmarks/RESULTS.md, "Anchors").
DEFAULT_SLACK_M = 30.0


def rtree_properties() -> rtree_index.Property:
    """R-tree properties tuned for many small moves and k-nearest queries.

    The library defaults (R*-tree, capacity 100, fill factor 0.7) make a delete
    cost hundreds of microseconds with multi-millisecond tails, because an
    underfull node is dissolved and its entries reinserted. Small nodes with a
    low minimum fill make deletes cheap: capacity 16, fill factor 0.3. Of the
    split algorithms, R* builds the best tree when points arrive one by one (as
    here): queries about 18 µs at 100,000 points against 24 µs quadratic and
    55 µs linear, moves equally fast at the median (15 µs per tree), at the cost
    of a slower initial load and a longer move tail (p99 about 60 µs per tree
    against 37 µs quadratic); see benchmarks/RESULTS.md. Capacity x fill factor
    = 4.8 stays above 2, below which libspatialindex's bulk load never finishes.
    In memory: nothing to persist, the index is rebuilt from the store.
    """
    props = rtree_index.Property()
    props.storage = rtree_index.RT_Memory
    props.dimension = 2
    props.variant = rtree_index.RT_Star
    props.leaf_capacity = 16
    props.index_capacity = 16
    props.fill_factor = 0.3
    # Must stay below both capacities or libspatialindex refuses the properties.
    props.near_minimum_overlap_factor = 8
    return props


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A volunteer found by ``VolunteerIndex.nearest`` and its great-circle distance."""

    volunteer_id: str
    distance_m: float


@dataclass(slots=True)
class Entry:
    """One volunteer in a `VolunteerIndex`; read only outside this module."""

    # Mutable on purpose: a move rewrites the position in place. anchor is the point
    # inserted into the trees, which rtree needs again to delete.
    volunteer_id: str
    lat: float
    lon: float
    x: float
    y: float
    skills: frozenset[str]
    phi: float  # radians(lat) and its cosine, kept for the inlined haversine
    cos_phi: float
    anchor: tuple[float, float]
    slot: int  # the id in the trees
    part: str = ""  # the PartitionedIndex part holding it (one entry serves both)


@dataclass(slots=True)
class _SkillTree:
    tree: rtree_index.Index
    count: int = 0  # volunteers in the tree; the tree is dropped at 0


class VolunteerIndex:
    """Positions and skills of volunteers, answering exact k-nearest queries.

    One R-tree holds every volunteer and one more per skill holds the volunteers
    having it. A query needing skills searches the tree of its rarest required
    skill and post-filters the others. Why: a post-filter on the tree of all
    volunteers degrades without bound as a skill gets rare (an AED holder may be
    one volunteer in a hundred, and the search must then wade through a
    hundred times more points); a tree per combination of skills would multiply
    without bound. Volunteers have 0-3 skills, so a move touches 1-4 trees.

    R-trees need integer ids: each volunteer gets a slot number, and the slots
    of removed volunteers are reused so that they stay small and dense. A volunteer's
    entry is found by id in one lookup and holds its slot: a move (5,000 a second at
    the design load, each a cache miss or several among 100,000 volunteers) touches as
    few objects as it can.

    Not thread-safe; the engine uses it from one thread.
    """

    __slots__ = ("_all", "_by_skill", "_entries", "_entry_of", "_free", "_projection", "_slack")

    def __init__(self, projection: LocalProjection, *, slack_m: float = DEFAULT_SLACK_M) -> None:
        if not slack_m >= 0.0:
            raise ValueError(f"slack_m must be >= 0, got {slack_m}")
        self._projection = projection
        self._slack = slack_m
        self._entry_of: dict[str, Entry] = {}
        self._entries: list[Entry | None] = []  # by slot
        self._free: list[int] = []
        self._all = rtree_index.Index(properties=rtree_properties())
        self._by_skill: dict[str, _SkillTree] = {}

    @property
    def projection(self) -> LocalProjection:
        """The projection the trees search in."""
        return self._projection

    def __len__(self) -> int:
        return len(self._entry_of)

    def __contains__(self, volunteer_id: object) -> bool:
        return volunteer_id in self._entry_of

    def position(self, volunteer_id: str) -> tuple[float, float] | None:
        """The volunteer's last ``(lat, lon)``, or None if not in the index."""
        entry = self._entry_of.get(volunteer_id)
        return None if entry is None else (entry.lat, entry.lon)

    def skills(self, volunteer_id: str) -> frozenset[str]:
        """The volunteer's skills; empty if the volunteer is not in the index."""
        entry = self._entry_of.get(volunteer_id)
        return frozenset() if entry is None else entry.skills

    def put(self, volunteer_id: str, lat: float, lon: float, skills: Iterable[str] = ()) -> None:
        """Add a volunteer, or move one already present; either way its skills become ``skills``.

        The skills are replaced, not merged: a location update must pass the
        volunteer's skills again (passing none clears them).
        """
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also rejects NaN
            _refuse_position(volunteer_id, lat, lon)
        new_skills = frozenset(skills)
        entry = self._entry_of.get(volunteer_id)
        if entry is None:
            x, y = self._projection.to_xy(lat, lon)
            self._add(volunteer_id, lat, lon, x, y, new_skills)
        else:
            self.rewrite(entry, lat, lon, new_skills)

    def entry(self, volunteer_id: str) -> Entry | None:
        """The volunteer's entry, if in the index (`PartitionedIndex` keeps them)."""
        return self._entry_of.get(volunteer_id)

    def entries(self) -> Mapping[str, Entry]:
        """Every volunteer's entry by id (not to be changed by the caller)."""
        return self._entry_of

    def rewrite(self, entry: Entry, lat: float, lon: float, skills: frozenset[str]) -> None:
        """`put` of a volunteer present, given their entry and a valid position: the
        trees are touched only if they left their anchor's slack or their skills changed."""
        proj = self._projection
        x = (lon - proj.lon0) * proj.metres_per_degree_lon  # LocalProjection.to_xy, inlined
        y = (lat - proj.lat0) * proj.metres_per_degree_lat
        old_anchor = entry.anchor
        new_anchor = old_anchor
        old_skills = entry.skills
        ax, ay = old_anchor
        if (x - ax) ** 2 + (y - ay) ** 2 > self._slack**2:  # too far from it: re-anchor
            slot = entry.slot
            new_anchor = (x, y)
            self._all.delete(slot, old_anchor)
            self._all.insert(slot, new_anchor)
            for skill in old_skills & skills:
                tree = self._by_skill[skill].tree
                tree.delete(slot, old_anchor)
                tree.insert(slot, new_anchor)
            entry.anchor = new_anchor
        if old_skills is not skills and old_skills != skills:
            for skill in old_skills - skills:
                self._skill_remove(skill, entry.slot, old_anchor)
            for skill in skills - old_skills:
                self._skill_add(skill, entry.slot, new_anchor)
            entry.skills = skills
        entry.lat, entry.lon, entry.x, entry.y = lat, lon, x, y
        entry.phi = phi = math.radians(lat)
        entry.cos_phi = math.cos(phi)

    def remove(self, volunteer_id: str) -> bool:
        """Remove a volunteer; True if it was in the index."""
        entry = self._entry_of.pop(volunteer_id, None)
        if entry is None:
            return False
        slot = entry.slot
        self._all.delete(slot, entry.anchor)
        for skill in entry.skills:
            self._skill_remove(skill, slot, entry.anchor)
        self._entries[slot] = None
        self._free.append(slot)
        return True

    def load(self, items: Iterable[tuple[str, float, float, frozenset[str]]]) -> None:
        """Fill an empty index with ``(volunteer_id, lat, lon, skills)`` in one bulk load.

        A restart puts every volunteer back at once: one ``put`` at a time rebuilds the
        trees insert by insert (27 µs each, 2.7 s at 100,000 and 42 s at 1,000,000),
        while libspatialindex packs them from arrays in a fraction of that (0.16 s at
        100,000). The trees keep the tuned properties, so later moves and queries work
        as on a tree grown one put at a time. A volunteer given twice keeps the last.
        """
        latest = {vid: (lat, lon, skills) for vid, lat, lon, skills in items}
        rows = list(latest.values())
        self.load_columns(
            list(latest), [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        )

    def load_columns(
        self,
        ids: Sequence[str],
        lats_deg: Sequence[float],
        lons_deg: Sequence[float],
        skills: Sequence[frozenset[str]],
        *,
        part: str = "",
    ) -> None:
        """`load` from columns, one row per volunteer, each volunteer once; ``part``: the
        entries' (see `PartitionedIndex`)."""
        if self._entry_of:
            raise ValueError("load fills an empty index; this one has volunteers")
        n = len(ids)
        if not n:
            return
        # Column at a time (a restart loads a million): the same arithmetic as `put`,
        # element by element, so the entries are bit-for-bit those `put` makes.
        lats = np.array(lats_deg, dtype=np.float64)
        lons = np.array(lons_deg, dtype=np.float64)
        valid = (lats >= -90.0) & (lats <= 90.0) & (lons >= -180.0) & (lons <= 180.0)
        if not valid.all():  # also NaN
            bad = int(np.argmin(valid))
            raise ValueError(f"volunteer {ids[bad]!r}: invalid position ({lats[bad]}, {lons[bad]})")
        proj = self._projection
        xs = ((lons - proj.lon0) * proj.metres_per_degree_lon).tolist()
        ys = ((lats - proj.lat0) * proj.metres_per_degree_lat).tolist()
        phis = list(map(math.radians, lats.tolist()))
        self._entries = list(
            map(
                Entry, ids, lats.tolist(), lons.tolist(), xs, ys, skills, phis,
                map(math.cos, phis), zip(xs, ys, strict=True), range(n), repeat(part),
            )
        )  # fmt: skip
        self._entry_of = dict(zip(ids, self._entries, strict=True))  # type: ignore[arg-type]
        members: dict[str, list[int]] = {}
        for slot, held in enumerate(skills):
            for skill in held:
                members.setdefault(skill, []).append(slot)
        xy = np.column_stack((xs, ys))
        self._all = _bulk_tree(np.arange(n, dtype=np.int64), xy)
        for skill, slots in members.items():
            idx = np.array(slots, dtype=np.int64)
            self._by_skill[skill] = _SkillTree(_bulk_tree(idx, xy[idx]), len(slots))

    def nearest(
        self,
        lat: float,
        lon: float,
        k: int,
        *,
        skills: Iterable[str] = (),
        radius_m: float | None = None,
        exclude: Container[str] = (),
        tight: bool = False,
    ) -> list[Neighbour]:
        """The ``k`` volunteers nearest to ``(lat, lon)`` by great-circle distance.

        Only volunteers having all of ``skills``, within ``radius_m`` (if given,
        inclusive) and not in ``exclude`` count. Sorted by
        ``(distance_m, volunteer_id)``; exact, equal to a brute-force ranking.
        ``tight``: ``radius_m`` likely holds fewer than ``k``, so the radius, not spare
        candidates, proves the answer complete: fewer are fetched at first (the same
        answer, sooner).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if radius_m is not None and not radius_m >= 0.0:
            raise ValueError(f"radius_m must be >= 0 or None, got {radius_m}")
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(f"invalid query position ({lat}, {lon})")
        required = frozenset(skills)
        if k == 0:
            return []
        tree = self._tree_for(required)
        if tree is None:
            return []
        qx, qy = self._projection.to_xy(lat, lon)
        entries = self._entries
        slack = self._slack
        limit = math.inf if radius_m is None else radius_m
        # Haversine inlined with the query's terms hoisted: the same operations in the
        # same order as haversine_m, so the distances are bit-for-bit equal to it.
        phi = math.radians(lat)
        cos_phi = math.cos(phi)
        sin, asin, sqrt, radians = math.sin, math.asin, math.sqrt, math.radians
        diameter = 2.0 * EARTH_RADIUS_M

        best: list[tuple[float, str]] = []  # the k best so far, sorted
        ranked: set[int] = set()
        # A point whose anchor is projected farther than this (plus the slack) cannot
        # beat the k-th best: it is projected beyond the reach of the k-th best's distance.
        stop_at = math.inf if limit == math.inf else self._reach_m(lat, limit)
        n = k + 1 if tight else int((k + 1) * (1.0 + slack / 25.0))  # spares prove the k
        while True:
            slots = list(tree.nearest((qx, qy), n))
            done = len(slots) < n  # the tree holds no more points: everything is here
            anchor_sq = 0.0
            # In the tree's order: by projected distance of the anchors (as computed by
            # libspatialindex: equal to ours within a few ulps, far inside the reach's
            # slack), so the first anchor beyond reach ends the search.
            for slot in slots:
                e = entries[slot]
                assert e is not None  # the trees hold only slots in use
                ax, ay = e.anchor
                anchor_sq = (ax - qx) ** 2 + (ay - qy) ** 2
                if sqrt(anchor_sq) - slack > stop_at:
                    done = True  # this one and every later one (farther anchors) too far
                    break
                if slot in ranked:
                    continue
                ranked.add(slot)
                # The tree's own skill holds by construction; the others are checked here.
                if (required and not required <= e.skills) or e.volunteer_id in exclude:
                    continue
                if (e.x - qx) ** 2 + (e.y - qy) ** 2 > stop_at * stop_at:
                    continue  # projected beyond reach: cannot beat the k-th best (cheap test)
                h = (
                    sin((e.phi - phi) * 0.5) ** 2
                    + cos_phi * e.cos_phi * sin(radians(e.lon - lon) * 0.5) ** 2
                )
                d = diameter * asin(sqrt(min(1.0, h)))
                if d > limit or (len(best) == k and (d, e.volunteer_id) >= best[-1]):
                    continue
                insort(best, (d, e.volunteer_id))
                if len(best) > k:
                    best.pop()
                if len(best) == k:
                    stop_at = self._reach_m(lat, best[-1][0])
            if done:
                break
            # Unseen anchors are at least as far as the farthest returned: the last (the
            # tree's order).
            if slots and sqrt(anchor_sq) - slack > stop_at:
                break
            n *= 2
        found = best
        return [Neighbour(vid, d) for d, vid in found[:k]]

    def _reach_m(self, lat: float, distance_m: float) -> float:
        """A projected distance that every point within ``distance_m`` great-circle lies within.

        With dphi, dlam the differences in latitude and longitude of two points
        at great-circle angle t, and c the smallest cosine of their latitudes:
        hav(t) = hav(dphi) + cos(phi1) cos(phi2) hav(dlam) >= hav(dphi) + c^2 hav(dlam),
        and x^2/4 >= hav(x) >= x^2/4 (1 - x^2/12), so
        t^2 >= (1 - m^2/12) (dphi^2 + c^2 dlam^2) where m bounds |dphi| and |dlam|.
        The projection measures sqrt(dphi^2 + cos(lat0)^2 dlam^2) (times R), which
        is at most max(1, cos(lat0)/c) sqrt(dphi^2 + c^2 dlam^2).
        """
        angle = distance_m / EARTH_RADIUS_M
        far_lat = abs(math.radians(lat)) + angle
        if far_lat >= _MAX_REACH_LAT_RAD:
            return math.inf
        c = math.cos(far_lat)
        # |dlam| <= asin(sin(t) / cos(lat)) <= (pi/2) t / c
        m = 0.5 * math.pi * angle / c
        if m >= 1.0:
            return math.inf
        factor = max(1.0, math.cos(math.radians(self._projection.lat0)) / c)
        factor /= math.sqrt(1.0 - m * m / 12.0)
        return distance_m * factor * (1.0 + _REL_SLACK) + _ABS_SLACK_M

    def _tree_for(self, required: frozenset[str]) -> rtree_index.Index | None:
        """The smallest tree holding every candidate, or None if some skill has nobody."""
        if not required:
            return self._all
        best: _SkillTree | None = None
        for skill in required:
            candidate = self._by_skill.get(skill)
            if candidate is None:
                return None
            if best is None or candidate.count < best.count:
                best = candidate
        assert best is not None
        return best.tree

    def _add(
        self, volunteer_id: str, lat: float, lon: float, x: float, y: float, skills: frozenset[str]
    ) -> None:
        phi = math.radians(lat)
        xy = (x, y)
        slot = self._free.pop() if self._free else len(self._entries)
        entry = Entry(volunteer_id, lat, lon, x, y, skills, phi, math.cos(phi), xy, slot)
        if slot < len(self._entries):
            self._entries[slot] = entry
        else:
            self._entries.append(entry)
        self._entry_of[volunteer_id] = entry
        self._all.insert(slot, xy)
        for skill in skills:
            self._skill_add(skill, slot, xy)

    def _skill_add(self, skill: str, slot: int, xy: tuple[float, float]) -> None:
        skill_tree = self._by_skill.get(skill)
        if skill_tree is None:
            skill_tree = _SkillTree(rtree_index.Index(properties=rtree_properties()))
            self._by_skill[skill] = skill_tree
        skill_tree.tree.insert(slot, xy)
        skill_tree.count += 1

    def _skill_remove(self, skill: str, slot: int, xy: tuple[float, float]) -> None:
        skill_tree = self._by_skill[skill]
        skill_tree.tree.delete(slot, xy)
        skill_tree.count -= 1
        if skill_tree.count == 0:
            # Skills are free-form strings: drop empty trees so that they cannot pile up.
            del self._by_skill[skill]


def _refuse_position(volunteer_id: str, lat: float, lon: float) -> NoReturn:
    # The test stays inline where it is made: it is on the path of every move.
    raise ValueError(f"volunteer {volunteer_id!r}: invalid position ({lat}, {lon})")


def _bulk_tree(ids: np.ndarray[Any, Any], xy: np.ndarray[Any, Any]) -> rtree_index.Index:
    """An R-tree of the points ``xy`` (one row each) under ``ids``, bulk loaded."""
    return rtree_index.Index((ids, xy, xy), properties=rtree_properties())


class PartitionedIndex:
    """Volunteers split into disjoint parts (one per travel mode), each with its own index.

    Ranking by travel time over mixed speeds is then exact and cheap: within one part
    time grows with distance, so the k fastest overall are among the k nearest of each
    part. A move touches only the volunteer's own part.

    ``hold`` takes a volunteer out of every answer without touching the trees: it is
    O(1), where a delete costs tens of microseconds per tree. Alerting a wave holds its
    volunteers on the report's hot path; most are released unmoved a few seconds later,
    and a ``put`` that changes nothing is free.
    """

    def __init__(
        self, projection: LocalProjection, parts: Iterable[str], *, slack_m: float = DEFAULT_SLACK_M
    ) -> None:
        self.parts: dict[str, VolunteerIndex] = {
            p: VolunteerIndex(projection, slack_m=slack_m) for p in parts
        }
        # Each volunteer's entry in its part (the part's own, with ``part`` set): a move
        # finds it in one lookup and rewrites it without asking the part again.
        self._entries: dict[str, Entry] = {}
        # Inside `loading`: what the trees will be built from, (lat, lon, skills, part).
        self._rows: dict[str, tuple[float, float, frozenset[str], str]] | None = None
        self._held: dict[str, None] = {}  # insertion-ordered: the oldest hold first

    def __len__(self) -> int:
        return len(self._present()) - len(self._held)

    def __contains__(self, volunteer_id: object) -> bool:
        return volunteer_id in self._present() and volunteer_id not in self._held

    def _present(self) -> dict[str, Any]:
        """Every volunteer put and not removed (the rows noted while loading)."""
        return self._entries if self._rows is None else self._rows

    @property
    def held(self) -> int:
        """Volunteers held and not yet compacted out of the trees."""
        return len(self._held)

    def part_of(self, volunteer_id: str) -> str | None:
        entry = self._entries.get(volunteer_id)
        return None if entry is None or volunteer_id in self._held else entry.part

    def position(self, volunteer_id: str) -> tuple[float, float] | None:
        entry = self._entries.get(volunteer_id)
        return None if entry is None or volunteer_id in self._held else (entry.lat, entry.lon)

    def put(
        self,
        volunteer_id: str,
        lat: float,
        lon: float,
        skills: Iterable[str],
        part: str,
        *,
        within_m: float | None = None,
    ) -> None:
        """Add, move or release a volunteer (moving them to ``part`` if it changed).

        ``within_m``: a move shorter than this (the position's accuracy) leaves the
        volunteer where the index has them: the difference is noise, and a move costs
        some 30 µs per tree. Their skills and part are updated all the same.
        """
        if part not in self.parts:
            raise ValueError(f"unknown part {part!r}; expected one of {sorted(self.parts)}")
        new_skills = frozenset(skills)
        self._held.pop(volunteer_id, None)
        if self._rows is not None:  # loading: the trees are built when it ends
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also rejects NaN
                _refuse_position(volunteer_id, lat, lon)
            self._rows[volunteer_id] = (lat, lon, new_skills, part)
            return
        entry = self._entries.get(volunteer_id)
        if entry is not None and entry.part == part:
            if entry.skills is new_skills or entry.skills == new_skills:
                if entry.lat == lat and entry.lon == lon:
                    return  # a release unmoved, or the same position again: free
                if within_m and _shorter_than(entry.lat, entry.lon, lat, lon, within_m):
                    return
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also rejects NaN
                _refuse_position(volunteer_id, lat, lon)
            self.parts[part].rewrite(entry, lat, lon, new_skills)
            return
        index = self.parts[part]
        index.put(volunteer_id, lat, lon, new_skills)  # validates before anything changes
        if entry is not None:  # another travel mode: out of its old part
            self.parts[entry.part].remove(volunteer_id)
        entry = index.entry(volunteer_id)
        assert entry is not None  # just put
        entry.part = part
        self._entries[volunteer_id] = entry

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Fill an empty index in bulk: ``put`` and ``remove`` only note what they are
        asked, and every part's trees are bulk loaded once at the end (`VolunteerIndex.load`).

        Queries inside the block see none of it (the trees are still empty): call only
        what a restart does (put, remove, hold) until it ends.
        """
        if self._entries or self._rows is not None:
            raise ValueError("loading fills an empty index, once at a time")
        rows = self._rows = {}
        try:
            yield
        finally:
            self._rows = None
            columns: dict[str, tuple[list[Any], ...]] = {p: ([], [], [], []) for p in self.parts}
            for volunteer_id, (lat, lon, skills, part) in rows.items():
                ids, lats, lons, skill_sets = columns[part]
                ids.append(volunteer_id)
                lats.append(lat)
                lons.append(lon)
                skill_sets.append(skills)
            for part, (ids, lats, lons, skill_sets) in columns.items():
                index = self.parts[part]
                index.load_columns(ids, lats, lons, skill_sets, part=part)
                self._entries.update(index.entries())

    def hold(self, volunteer_id: str) -> None:
        """Leave the volunteer out of every answer until the next ``put`` or ``remove``."""
        if volunteer_id in self._present():
            self._held[volunteer_id] = None

    def compact(self, limit: int) -> int:
        """Really remove up to ``limit`` of the longest-held volunteers from the trees.

        Held entries still cost every query that meets them; a shell calls this when it
        has a moment, so that holds stay cheap on the hot path without piling up.
        """
        done = 0
        while self._held and done < limit:
            volunteer_id = next(iter(self._held))
            self.remove(volunteer_id)
            done += 1
        return done

    def remove(self, volunteer_id: str) -> bool:
        self._held.pop(volunteer_id, None)
        if self._rows is not None:
            return self._rows.pop(volunteer_id, None) is not None
        entry = self._entries.pop(volunteer_id, None)
        return entry is not None and self.parts[entry.part].remove(volunteer_id)

    def nearest(
        self,
        part: str,
        lat: float,
        lon: float,
        k: int,
        *,
        skills: Iterable[str] = (),
        radius_m: float | None = None,
        exclude: Container[str] = (),
        tight: bool = False,
    ) -> list[Neighbour]:
        """The k nearest in one part, leaving out held volunteers and ``exclude``."""
        index = self.parts[part]
        if not len(index):
            return []
        return index.nearest(
            lat,
            lon,
            k,
            skills=skills,
            radius_m=radius_m,
            exclude=_Both(self._held, exclude),
            tight=tight,
        )


# Metres per degree of latitude (and of longitude at the equator), for `_shorter_than`.
_M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0


def _shorter_than(lat1: float, lon1: float, lat2: float, lon2: float, metres: float) -> bool:
    """Whether two nearby points are less than ``metres`` apart (equirectangular: exact
    to well under a metre at the few tens of metres a position's accuracy spans)."""
    dy = (lat2 - lat1) * _M_PER_DEG
    dx = (lon2 - lon1) * _M_PER_DEG * math.cos(math.radians(lat1))
    return dx * dx + dy * dy < metres * metres


class _Both:
    """Membership in either of two containers, without building their union."""

    __slots__ = ("a", "b")

    def __init__(self, a: Container[str], b: Container[str]) -> None:
        self.a, self.b = a, b

    def __contains__(self, item: object) -> bool:
        return item in self.a or item in self.b
