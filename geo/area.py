"""The service area: its outline, loaded from GeoJSON, and a generated grid of square cells.

The cells are a generated grid (regular squares in the area's local projection,
clipped to the outline), not official community or grid boundaries: no public
polygons of those exist for the demo district. Every deployment can load its
own outline through configuration.

Errors::

    ValueError            a GeoJSON file or geometry that cannot serve as an area
      OutsideArea         a point outside the service area (the sender's fault)
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape

from geo.distance import LocalProjection
from geo.subdistricts import Subdistricts

__all__ = ["GRID_NOTE", "Cell", "OutsideArea", "ServiceArea"]

GRID_NOTE = "generated grid, not official community boundaries"

# A clipped cell smaller than this share of a full cell is a sliver: it is merged
# into a neighbour rather than kept as a cell of its own.
_SLIVER_SHARE = 0.01


class OutsideArea(ValueError):
    """A point lies outside the service area."""

    def __init__(
        self, lat: float, lon: float, area_name: str, bounds: tuple[float, float, float, float]
    ) -> None:
        min_lon, min_lat, max_lon, max_lat = bounds
        super().__init__(
            f"point ({lat}, {lon}) is outside the service area {area_name!r} "
            f"(lat {min_lat:.3f}..{max_lat:.3f}, lon {min_lon:.3f}..{max_lon:.3f})"
        )
        self.lat = lat
        self.lon = lon
        self.area_name = area_name


@dataclass(frozen=True, slots=True)
class Cell:
    """One generated grid cell: its id, a representative point inside it, its polygon in lon/lat."""

    id: str
    lat: float
    lon: float
    polygon: Polygon | MultiPolygon


@dataclass(frozen=True, slots=True)
class _Slot:
    # What a grid square maps to: its cell and whether the square lies wholly inside
    # the area (then no polygon test is needed).
    cell: Cell
    full: bool


class ServiceArea:
    """A service area and its grid; build it with ``from_geojson`` or ``from_geometry``.

    Cells are numbered ``r<row>c<col>``, row 0 at the north edge of the bounding
    box and column 0 at its west edge.
    """

    __slots__ = (
        "_area_km2",
        "_bbox",
        "_cell_size_m",
        "_cells",
        "_cells_by_id",
        "_grid_x0",
        "_grid_y1",
        "_name",
        "_outline",
        "_projection",
        "_slots",
        "_subdistricts",
    )

    def __init__(
        self, outline: Polygon | MultiPolygon, *, name: str, cell_size_m: float = 500.0
    ) -> None:
        if not (math.isfinite(cell_size_m) and cell_size_m > 0.0):
            raise ValueError(f"cell_size_m must be a finite number > 0, got {cell_size_m!r}")
        if not isinstance(outline, Polygon | MultiPolygon) or outline.is_empty:
            raise ValueError(f"service area {name!r}: the outline must be a non-empty polygon")
        self._name = name
        self._cell_size_m = float(cell_size_m)
        self._outline = outline
        shapely.prepare(outline)
        self._bbox: tuple[float, float, float, float] = tuple(outline.bounds)
        centroid = outline.centroid
        self._projection = LocalProjection(centroid.y, centroid.x)
        projected = shapely.transform(outline, self._to_xy_array)
        self._area_km2 = float(projected.area) / 1e6
        min_lon, min_lat, max_lon, max_lat = self._bbox
        # x depends on lon only and y on lat only, so the bbox projects to the grid's bbox.
        self._grid_x0, y0 = self._projection.to_xy(min_lat, min_lon)
        x1, self._grid_y1 = self._projection.to_xy(max_lat, max_lon)
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._cells = self._build_grid(
            math.ceil((x1 - self._grid_x0) / cell_size_m),
            math.ceil((self._grid_y1 - y0) / cell_size_m),
        )
        self._cells_by_id = {c.id: c for c in self._cells}
        self._subdistricts: Subdistricts | None = None

    # -- construction --------------------------------------------------------

    @classmethod
    def from_geojson(
        cls, path: str | Path, *, cell_size_m: float = 500.0, name: str | None = None
    ) -> "ServiceArea":
        """Load an area from a GeoJSON FeatureCollection, Feature or bare (Multi)Polygon.

        All polygons in the file together form the area. The name defaults to the
        first feature's ``name`` property, else to the file's stem.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the service area file: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not GeoJSON, invalid JSON: {exc}") from exc
        return cls.from_geojson_object(
            data, source=str(path), default_name=path.stem, cell_size_m=cell_size_m, name=name
        )

    @classmethod
    def from_geojson_object(
        cls,
        data: Any,
        *,
        source: str,
        default_name: str | None = None,
        cell_size_m: float = 500.0,
        name: str | None = None,
    ) -> "ServiceArea":
        """Build an area from decoded GeoJSON (as ``from_geojson`` does after reading the file).

        ``source`` names where the data came from in error messages; the name is
        ``name``, else the first feature's ``name`` property, else ``default_name``,
        else ``source``.
        """
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise ValueError(f"{source}: not GeoJSON, expected an object with a 'type'")
        geometries, feature_name = _polygons_of(data, source)
        if not geometries:
            raise ValueError(f"{source}: no Polygon or MultiPolygon in this GeoJSON {data['type']}")
        try:
            parts = [shape(g) for g in geometries]
        except (ValueError, TypeError, KeyError, IndexError, shapely.errors.ShapelyError) as exc:
            raise ValueError(f"{source}: malformed polygon coordinates: {exc}") from exc
        outline = _as_area(shapely.union_all(parts) if len(parts) > 1 else parts[0], source)
        chosen = name or feature_name or default_name or source
        return cls(outline, name=chosen, cell_size_m=cell_size_m)

    @classmethod
    def from_geometry(
        cls, geometry: Any, *, name: str, cell_size_m: float = 500.0
    ) -> "ServiceArea":
        """Build an area from a shapely (Multi)Polygon or a GeoJSON geometry mapping, in lon/lat."""
        if isinstance(geometry, Mapping):
            try:
                geometry = shape(geometry)
            except (ValueError, TypeError, KeyError, IndexError, shapely.errors.ShapelyError) as e:
                raise ValueError(f"service area {name!r}: malformed geometry: {e}") from e
        return cls(_as_area(geometry, name), name=name, cell_size_m=cell_size_m)

    # -- public properties ---------------------------------------------------

    @property
    def name(self) -> str:
        """The area's name, as shown to people."""
        return self._name

    @property
    def projection(self) -> LocalProjection:
        """The local projection centred on the area's centroid."""
        return self._projection

    @property
    def cell_size_m(self) -> float:
        """The side of a grid cell in metres."""
        return self._cell_size_m

    @property
    def cells(self) -> tuple[Cell, ...]:
        """Every cell, in row-major order from the north-west."""
        return self._cells

    @property
    def outline(self) -> Polygon | MultiPolygon:
        """The area's outline in lon/lat."""
        return self._outline

    @property
    def area_km2(self) -> float:
        """The area in square kilometres (measured in the local projection)."""
        return self._area_km2

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(min_lon, min_lat, max_lon, max_lat)`` of the outline."""
        return self._bbox

    # -- queries ---------------------------------------------------------------

    def contains(self, lat: float, lon: float) -> bool:
        """True if the point lies inside the area or on its outline."""
        return self._find(lat, lon) is not None

    def cell_at(self, lat: float, lon: float) -> Cell:
        """The cell the point lies in; raises OutsideArea if it is outside the area."""
        cell = self._find(lat, lon)
        if cell is None:
            raise OutsideArea(lat, lon, self._name, self._bbox)
        return cell

    def _find(self, lat: float, lon: float) -> Cell | None:
        min_lon, min_lat, max_lon, max_lat = self._bbox
        # The bbox test settles most outside points without calling into GEOS.
        if not (min_lat <= lat <= max_lat and min_lon <= lon <= max_lon):
            return None
        x, y = self._projection.to_xy(lat, lon)
        fy = (self._grid_y1 - y) / self._cell_size_m
        fx = (x - self._grid_x0) / self._cell_size_m
        row = math.floor(fy)
        col = math.floor(fx)
        slot = self._slots.get((row, col))
        # Most points fall in a square wholly inside the area: no polygon test at all.
        if slot is not None and (slot.full or shapely.intersects_xy(slot.cell.polygon, lon, lat)):
            return slot.cell
        # Within rounding distance of a square's edge the point may belong to a neighbour.
        eps = 1e-7
        if eps < fx - col < 1.0 - eps and eps < fy - row < 1.0 - eps:
            return None
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                other = self._slots.get((row + dr, col + dc))
                if other is not None and shapely.intersects_xy(other.cell.polygon, lon, lat):
                    return other.cell
        return None

    def cell(self, cell_id: str) -> Cell:
        """The cell with this id; KeyError if there is none."""
        try:
            return self._cells_by_id[cell_id]
        except KeyError:
            raise KeyError(f"no cell {cell_id!r} in service area {self._name!r}") from None

    @property
    def subdistricts(self) -> Subdistricts | None:
        """The deployment's subdistrict areas (geo.subdistricts), if it configured any."""
        return self._subdistricts

    def set_subdistricts(self, subdistricts: Subdistricts | None) -> None:
        """Use these subdistrict areas from now on (set once, at start)."""
        self._subdistricts = subdistricts

    def subdistrict_at(self, lat: float, lon: float) -> str:
        """The name of the configured subdistrict the place lies in; "" for none."""
        return "" if self._subdistricts is None else self._subdistricts.at(lat, lon)

    def to_geojson(self) -> dict[str, Any]:
        """A FeatureCollection of the outline, every cell and the configured subdistricts
        (``kind``: ``outline``, ``cell``, ``subdistrict``), for maps and for the record."""
        features: list[dict[str, Any]] = [
            {
                "type": "Feature",
                "properties": {"kind": "outline", "name": self._name},
                "geometry": mapping(self._outline),
            }
        ]
        for c in self._cells:
            features.append(
                {
                    "type": "Feature",
                    "properties": {
                        "kind": "cell",
                        "id": c.id,
                        "generated": True,
                        "note": GRID_NOTE,
                        "lat": c.lat,
                        "lon": c.lon,
                    },
                    "geometry": mapping(c.polygon),
                }
            )
        if self._subdistricts is not None:
            features += self._subdistricts.to_features()
        return {"type": "FeatureCollection", "features": features}

    def __repr__(self) -> str:
        return (
            f"ServiceArea(name={self._name!r}, area_km2={self._area_km2:.1f}, "
            f"cell_size_m={self._cell_size_m}, cells={len(self._cells)})"
        )

    # -- the grid --------------------------------------------------------------

    def _to_xy_array(self, lonlat: Any) -> Any:
        # shapely.transform hands over an (n, 2) array of (lon, lat).
        p = self._projection
        out = lonlat.copy()
        out[:, 0] = (lonlat[:, 0] - p.lon0) * p.metres_per_degree_lon
        out[:, 1] = (lonlat[:, 1] - p.lat0) * p.metres_per_degree_lat
        return out

    def _build_grid(self, cols: int, rows: int) -> tuple[Cell, ...]:
        width = max(2, len(str(max(rows, cols) - 1)))
        size = self._cell_size_m
        # Grid lines computed once, so that neighbouring squares share exact coordinates.
        lons = [
            self._projection.to_latlon(self._grid_x0 + c * size, 0.0)[1] for c in range(cols + 1)
        ]
        lats = [
            self._projection.to_latlon(0.0, self._grid_y1 - r * size)[0] for r in range(rows + 1)
        ]
        keys = [(r, c) for r in range(rows) for c in range(cols)]
        squares = [box(lons[c], lats[r + 1], lons[c + 1], lats[r]) for r, c in keys]
        # Vectorised over all squares against the prepared outline.
        touching = shapely.intersects(self._outline, squares)
        inside = shapely.contains(self._outline, squares)
        kept: dict[tuple[int, int], tuple[Polygon | MultiPolygon, bool]] = {}
        slivers: list[tuple[tuple[int, int], Polygon | MultiPolygon]] = []
        for key, square, touches, full in zip(keys, squares, touching, inside, strict=True):
            if not touches:
                continue
            if full:
                kept[key] = (square, True)
                continue
            piece = _polygonal(shapely.intersection(square, self._outline))
            if piece is None:
                continue
            if piece.area < _SLIVER_SHARE * square.area:
                slivers.append((key, piece))
            else:
                kept[key] = (piece, False)
        # A sliver is merged into the neighbour it shares the longest edge with, so that
        # the cells still cover the whole area and cell_at never fails inside it.
        merged_into: dict[tuple[int, int], tuple[int, int]] = {}
        for key, piece in slivers:
            target = _best_neighbour(key, piece, kept)
            if target is None:
                kept[key] = (piece, False)  # an isolated scrap of the area: keep it
                continue
            polygon, _ = kept[target]
            union = _polygonal(shapely.union(polygon, piece))
            kept[target] = (union if union is not None else polygon, False)
            merged_into[key] = target
        by_key: dict[tuple[int, int], Cell] = {}
        for (r, c), (polygon, _) in sorted(kept.items()):
            shapely.prepare(polygon)
            point = polygon.centroid
            if not polygon.contains(point):
                point = polygon.point_on_surface()
            by_key[(r, c)] = Cell(f"r{r:0{width}d}c{c:0{width}d}", point.y, point.x, polygon)
        for key, (_, full) in kept.items():
            self._slots[key] = _Slot(by_key[key], full)
        for key, target in merged_into.items():
            self._slots[key] = _Slot(by_key[target], False)
        return tuple(by_key.values())


def _polygons_of(data: dict[str, Any], source: str) -> tuple[list[dict[str, Any]], str | None]:
    """The polygon geometries of a GeoJSON object, and the first feature name found."""
    kind = data["type"]
    features: list[Any]
    if kind == "FeatureCollection":
        features = data.get("features")  # type: ignore[assignment]
        if not isinstance(features, list):
            raise ValueError(f"{source}: FeatureCollection without a 'features' list")
    elif kind == "Feature":
        features = [data]
    elif kind in ("Polygon", "MultiPolygon"):
        return [data], None
    else:
        raise ValueError(
            f"{source}: GeoJSON type {kind!r} is not a FeatureCollection, Feature, "
            "Polygon or MultiPolygon"
        )
    geometries: list[dict[str, Any]] = []
    name: str | None = None
    for feature in features:
        if not isinstance(feature, dict):
            continue
        geometry = feature.get("geometry")
        if isinstance(geometry, dict) and geometry.get("type") in ("Polygon", "MultiPolygon"):
            geometries.append(geometry)
            properties = feature.get("properties")
            if name is None and isinstance(properties, dict):
                value = properties.get("name")
                name = value if isinstance(value, str) and value else None
    return geometries, name


def _as_area(geometry: Any, where: object) -> Polygon | MultiPolygon:
    """A valid, non-empty (Multi)Polygon, or ValueError saying what is wrong."""
    if not isinstance(geometry, Polygon | MultiPolygon):
        kind = getattr(geometry, "geom_type", type(geometry).__name__)
        raise ValueError(f"{where}: the service area must be a Polygon or MultiPolygon, not {kind}")
    if geometry.is_empty:
        raise ValueError(f"{where}: the service area polygon is empty")
    if not geometry.is_valid:
        # Self-touching rings are common in published outlines; repair rather than refuse.
        repaired = _polygonal(shapely.make_valid(geometry))
        if repaired is None:
            raise ValueError(f"{where}: the service area polygon is invalid and cannot be repaired")
        geometry = repaired
    return geometry


def _polygonal(geometry: Any) -> Polygon | MultiPolygon | None:
    """The polygonal part of a geometry (dropping points and lines), or None if there is none."""
    if isinstance(geometry, Polygon | MultiPolygon):
        return None if geometry.is_empty else geometry
    parts = [g for g in getattr(geometry, "geoms", ()) if isinstance(g, Polygon | MultiPolygon)]
    polygons: list[Polygon] = []
    for part in parts:
        polygons.extend(part.geoms if isinstance(part, MultiPolygon) else [part])
    polygons = [p for p in polygons if not p.is_empty]
    if not polygons:
        return None
    return polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)


def _best_neighbour(
    key: tuple[int, int],
    piece: Polygon | MultiPolygon,
    kept: Mapping[tuple[int, int], tuple[Polygon | MultiPolygon, bool]],
) -> tuple[int, int] | None:
    """The kept cell among the 8 around ``key`` sharing the longest border with ``piece``."""
    row, col = key
    best: tuple[float, tuple[int, int]] | None = None
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            other = (row + dr, col + dc)
            if other == key or other not in kept:
                continue
            shared = float(shapely.intersection(piece.boundary, kept[other][0].boundary).length)
            # Ties go to the lower (row, col) so the grid is the same on every run.
            if shared > 0.0 and (best is None or shared > best[0]):
                best = (shared, other)
    return None if best is None else best[1]
