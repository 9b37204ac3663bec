"""Unit tests for geo.area: loading the district, points inside and out, the generated grid."""

import json
from pathlib import Path

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, box

from geo.area import GRID_NOTE, OutsideArea, ServiceArea

CONFIG = Path(__file__).resolve().parents[2] / "config"
WGS84 = CONFIG / "shangcheng_boundary_wgs84.geojson"
SIMPLIFIED = CONFIG / "shangcheng_boundary_simplified.geojson"
XIAOYINGXIANG = (30.2591, 120.1698)  # 小营巷, in the old town
QIANTANG_RIVER = (30.2100, 120.2200)  # on the river's south bank, in Binjiang


# Built once for the module: read-only, and hypothesis tests cannot take fixtures per example.
_AREA = ServiceArea.from_geojson(WGS84, name="Shangcheng district")


@pytest.fixture
def shangcheng() -> ServiceArea:
    return _AREA


def projected_km2(area: ServiceArea, geometry: object) -> float:
    p = area.projection

    def to_xy(lonlat):  # type: ignore[no-untyped-def]
        out = lonlat.copy()
        out[:, 0] = (lonlat[:, 0] - p.lon0) * p.metres_per_degree_lon
        out[:, 1] = (lonlat[:, 1] - p.lat0) * p.metres_per_degree_lat
        return out

    return float(shapely.transform(geometry, to_xy).area) / 1e6


def test_loads_shangcheng(shangcheng: ServiceArea) -> None:
    assert shangcheng.name == "Shangcheng district"
    assert shangcheng.area_km2 == pytest.approx(120.4, rel=0.02)
    min_lon, min_lat, max_lon, max_lat = shangcheng.bounds
    assert (min_lon, min_lat, max_lon, max_lat) == pytest.approx(
        (120.132, 30.195, 120.291, 30.396), abs=0.001
    )
    assert shangcheng.projection.lat0 == pytest.approx(30.29, abs=0.01)
    assert shangcheng.cell_size_m == 500.0


def test_name_defaults_to_the_feature_name() -> None:
    assert ServiceArea.from_geojson(WGS84).name == "上城区"


def test_simplified_outline_agrees() -> None:
    simplified = ServiceArea.from_geojson(SIMPLIFIED, cell_size_m=1_000.0)
    assert simplified.area_km2 == pytest.approx(119.9, rel=0.02)


def test_inside_and_outside(shangcheng: ServiceArea) -> None:
    assert shangcheng.contains(*XIAOYINGXIANG)
    assert not shangcheng.contains(*QIANTANG_RIVER)  # inside the bbox, outside the outline
    assert not shangcheng.contains(30.1, 120.0)  # outside the bbox


def test_outside_area_message(shangcheng: ServiceArea) -> None:
    with pytest.raises(OutsideArea) as caught:
        shangcheng.cell_at(30.1, 120.0)
    assert str(caught.value) == (
        "point (30.1, 120.0) is outside the service area 'Shangcheng district' "
        "(lat 30.195..30.396, lon 120.132..120.291)"
    )
    assert isinstance(caught.value, ValueError)
    with pytest.raises(OutsideArea, match="outside the service area"):
        shangcheng.cell_at(*QIANTANG_RIVER)


def test_cell_at_known_point(shangcheng: ServiceArea) -> None:
    cell = shangcheng.cell_at(*XIAOYINGXIANG)
    lat, lon = XIAOYINGXIANG
    assert cell.polygon.covers(Point(lon, lat))
    assert shangcheng.cell(cell.id) is cell
    assert cell.polygon.covers(Point(cell.lon, cell.lat))


@settings(max_examples=300, deadline=None)
@given(st.floats(30.195, 30.396), st.floats(120.132, 120.291))
def test_cell_at_agrees_with_contains(lat: float, lon: float) -> None:
    area = _AREA
    point = Point(lon, lat)
    assert area.contains(lat, lon) == area.outline.covers(point)
    if area.contains(lat, lon):
        assert area.cell_at(lat, lon).polygon.covers(point)
    else:
        with pytest.raises(OutsideArea):
            area.cell_at(lat, lon)


def test_cells_cover_the_area(shangcheng: ServiceArea) -> None:
    cells = shangcheng.cells
    total = sum(projected_km2(shangcheng, c.polygon) for c in cells)
    assert total == pytest.approx(shangcheng.area_km2, rel=1e-6)
    union = shapely.union_all([c.polygon for c in cells])
    assert shapely.symmetric_difference(union, shangcheng.outline).area < 1e-9
    full = (shangcheng.cell_size_m / 1_000.0) ** 2
    assert all(projected_km2(shangcheng, c.polygon) >= 0.01 * full for c in cells)
    # 120 km² of 0.25 km² squares, plus the partial ones along the edge.
    assert 480 < len(cells) < 700
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 6 and i[0] == "r" and i[3] == "c" for i in ids)


def test_cell_lookup_by_id(shangcheng: ServiceArea) -> None:
    first = shangcheng.cells[0]
    assert shangcheng.cell(first.id) is first
    with pytest.raises(KeyError, match="r99c99"):
        shangcheng.cell("r99c99")


def test_to_geojson_labels_the_grid_as_generated(shangcheng: ServiceArea) -> None:
    collection = json.loads(json.dumps(shangcheng.to_geojson()))
    assert collection["type"] == "FeatureCollection"
    outline, *cells = collection["features"]
    assert outline["properties"] == {"kind": "outline", "name": "Shangcheng district"}
    assert len(cells) == len(shangcheng.cells)
    for feature in cells:
        props = feature["properties"]
        assert props["kind"] == "cell"
        assert props["generated"] is True
        assert props["note"] == GRID_NOTE
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")


def test_from_geometry_accepts_shapely_and_mappings() -> None:
    square = box(120.0, 30.0, 120.01, 30.01)
    area = ServiceArea.from_geometry(square, name="square", cell_size_m=250.0)
    assert area.area_km2 == pytest.approx(0.962 * 1.112, rel=0.01)
    assert area.contains(30.005, 120.005)
    again = ServiceArea.from_geometry(shapely.geometry.mapping(square), name="square")
    assert again.area_km2 == pytest.approx(area.area_km2)
    with pytest.raises(ValueError, match="Polygon or MultiPolygon"):
        ServiceArea.from_geometry(Point(120.0, 30.0), name="point")
    with pytest.raises(ValueError, match="cell_size_m"):
        ServiceArea.from_geometry(square, name="square", cell_size_m=0.0)


def test_bare_polygon_and_feature_objects() -> None:
    polygon = shapely.geometry.mapping(box(120.0, 30.0, 120.01, 30.01))
    bare = ServiceArea.from_geojson_object(polygon, source="bare.geojson", default_name="bare")
    assert bare.name == "bare"
    feature = {"type": "Feature", "properties": {"name": "块"}, "geometry": polygon}
    assert ServiceArea.from_geojson_object(feature, source="feature.geojson").name == "块"
    assert ServiceArea.from_geojson_object(polygon, source="x", name="given").name == "given"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1, 2, 3], "not GeoJSON"),
        ({"type": "Point", "coordinates": [120, 30]}, "Point"),
        ({"type": "FeatureCollection", "features": []}, "no Polygon or MultiPolygon"),
        ({"type": "FeatureCollection"}, "features"),
        ({"type": "Polygon", "coordinates": [[[120, 30]]]}, "malformed"),
    ],
)
def test_bad_geojson_names_the_source_and_the_problem(data: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        ServiceArea.from_geojson_object(data, source="areas/bad.geojson")
    assert "areas/bad.geojson" in str(caught.value)


def test_a_file_that_is_not_json_names_the_path() -> None:
    path = CONFIG / "shangcheng_subdistricts_communities.csv"
    with pytest.raises(ValueError, match="not GeoJSON") as caught:
        ServiceArea.from_geojson(path)
    assert str(path) in str(caught.value)


def test_missing_file_names_the_path() -> None:
    path = CONFIG / "no_such_area.geojson"
    with pytest.raises(ValueError, match="cannot read") as caught:
        ServiceArea.from_geojson(path)
    assert str(path) in str(caught.value)
