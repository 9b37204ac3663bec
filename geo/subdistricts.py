"""A deployment's own subdistrict (街道) areas: which one a place lies in.

No public boundaries of the district's subdistricts exist (config/PROVENANCE.md), so none
ship with the project: a deployment that has them (from its civil-affairs office, say)
names a GeoJSON FeatureCollection of Polygon/MultiPolygon features with a name property
in ``[area] subdistricts``. Each incident then gets the name of the subdistrict its
place lies in, when it is reported; a place in none of them (a gap, or outside) gets "".
Where two areas overlap, the first in the file wins, so the answer never depends on
anything but the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape

__all__ = ["MAX_SUBDISTRICTS", "Subdistricts"]

MAX_SUBDISTRICTS = 500
_MAX_NAME = 100


class Subdistricts:
    """Named areas; ``at(lat, lon)`` is the name of the first that contains the place."""

    __slots__ = ("_areas", "_tree")

    def __init__(self, areas: list[tuple[str, Polygon | MultiPolygon]]) -> None:
        if not areas:
            raise ValueError("no subdistrict areas")
        self._areas = areas
        for _, polygon in areas:
            shapely.prepare(polygon)
        self._tree = shapely.STRtree([p for _, p in areas])

    @classmethod
    def from_geojson(cls, path: str | Path, *, name_property: str = "name") -> Subdistricts:
        source = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{source}: cannot read the subdistricts file: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{source}: not JSON: {exc}") from None
        return cls.from_geojson_object(data, source=source, name_property=name_property)

    @classmethod
    def from_geojson_object(
        cls, data: Any, *, source: str = "subdistricts", name_property: str = "name"
    ) -> Subdistricts:
        if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
            raise ValueError(f"{source}: must be a GeoJSON FeatureCollection of subdistricts")
        features = data.get("features")
        if not isinstance(features, list) or not features:
            raise ValueError(f"{source}: the FeatureCollection has no features")
        if len(features) > MAX_SUBDISTRICTS:
            raise ValueError(
                f"{source}: at most {MAX_SUBDISTRICTS} subdistricts, not {len(features)}"
            )
        areas: list[tuple[str, Polygon | MultiPolygon]] = []
        seen: set[str] = set()
        for n, feature in enumerate(features):
            where = f"{source}: feature {n}"
            if not isinstance(feature, dict):
                raise ValueError(f"{where} is not an object")
            properties = feature.get("properties") or {}
            name = properties.get(name_property) if isinstance(properties, dict) else None
            if not isinstance(name, str) or not name.strip():
                raise ValueError(
                    f"{where} has no '{name_property}' property (the subdistrict's name)"
                )
            name = name.strip()
            if len(name) > _MAX_NAME or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
                raise ValueError(
                    f"{where}: the name must be at most {_MAX_NAME} printable characters"
                )
            if name in seen:
                raise ValueError(f"{where}: the name {name!r} is used twice")
            geometry = feature.get("geometry")
            if not isinstance(geometry, dict) or geometry.get("type") not in (
                "Polygon",
                "MultiPolygon",
            ):
                raise ValueError(
                    f"{where} ({name}): the geometry must be a Polygon or MultiPolygon"
                )
            try:
                polygon = shape(geometry)
            except (ValueError, TypeError, KeyError, IndexError, shapely.errors.ShapelyError) as e:
                raise ValueError(f"{where} ({name}): bad geometry: {e}") from None
            if polygon.is_empty:
                raise ValueError(f"{where} ({name}): the polygon is empty")
            if not polygon.is_valid:
                polygon = shapely.make_valid(polygon)
                if not isinstance(polygon, Polygon | MultiPolygon):
                    raise ValueError(
                        f"{where} ({name}): the polygon is invalid and cannot be repaired"
                    )
            min_lon, min_lat, max_lon, max_lat = polygon.bounds
            if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
                raise ValueError(f"{where} ({name}): coordinates must be WGS84 longitude, latitude")
            seen.add(name)
            areas.append((name, polygon))
        return cls(areas)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._areas)

    def at(self, lat: float, lon: float) -> str:
        """The name of the subdistrict containing the place; "" for none."""
        hits = self._tree.query(shapely.Point(lon, lat), predicate="intersects")
        if len(hits) == 0:
            return ""
        return self._areas[int(min(hits))][0]

    def to_features(self) -> list[dict[str, Any]]:
        """GeoJSON features (``kind``: ``subdistrict``) for maps."""
        return [
            {
                "type": "Feature",
                "properties": {"kind": "subdistrict", "name": name},
                "geometry": mapping(polygon),
            }
            for name, polygon in self._areas
        ]
