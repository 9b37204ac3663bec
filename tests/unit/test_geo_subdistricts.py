"""A deployment's subdistrict areas (geo/subdistricts.py), the config keys that name them,
and the incident's subdistrict given when it is reported."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from dispatch.codec import Codec
from dispatch.config import load_config
from dispatch.dispatcher import Dispatcher
from dispatch.errors import ConfigError
from dispatch.model import Kind, Report
from dispatch.policy import Policy
from dispatch.records import Incident
from dispatch.report import group_key, miss_reason
from geo import ServiceArea, Subdistricts

XIAOYING = (30.2591, 120.1698)


def _box(name: str, west: float, south: float, east: float, north: float) -> dict[str, Any]:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "properties": {"name": name},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


def halves(split_lon: float = 120.18) -> dict[str, Any]:
    """Two test areas (not real subdistricts): west and east of a meridian."""
    return {
        "type": "FeatureCollection",
        "features": [
            _box("测试西片", 120.0, 30.0, split_lon, 30.5),
            _box("测试东片", split_lon, 30.0, 120.4, 30.5),
        ],
    }


def test_a_place_is_in_the_first_area_that_contains_it() -> None:
    s = Subdistricts.from_geojson_object(halves())
    assert s.names == ("测试西片", "测试东片")
    assert s.at(*XIAOYING) == "测试西片"
    assert s.at(30.27, 120.19) == "测试东片"
    assert s.at(30.27, 120.18) == "测试西片"  # on the shared edge: the first in the file
    assert s.at(31.5, 121.0) == ""  # in none
    assert [f["properties"] for f in s.to_features()] == [
        {"kind": "subdistrict", "name": "测试西片"},
        {"kind": "subdistrict", "name": "测试东片"},
    ]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"type": "Polygon", "coordinates": []}, "must be a GeoJSON FeatureCollection"),
        ({"type": "FeatureCollection", "features": []}, "has no features"),
        (
            {"type": "FeatureCollection", "features": [_box("", 120, 30, 121, 31)]},
            "has no 'name' property",
        ),
        (
            {"type": "FeatureCollection", "features": [_box("a\nb", 120, 30, 121, 31)]},
            "printable characters",
        ),
        (
            {
                "type": "FeatureCollection",
                "features": [_box("甲", 120, 30, 121, 31), _box("甲", 121, 30, 122, 31)],
            },
            "used twice",
        ),
        (
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"name": "甲"},
                        "geometry": {"type": "Point", "coordinates": [120, 30]},
                    }
                ],
            },
            "must be a Polygon or MultiPolygon",
        ),
        (
            {"type": "FeatureCollection", "features": [_box("甲", 13_000_000, 3e6, 13.1e6, 3.1e6)]},
            "WGS84",
        ),
    ],
)
def test_a_bad_file_says_what_to_fix(data: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Subdistricts.from_geojson_object(data)


def test_the_config_keys_check_the_file_at_start(tmp_path: Path) -> None:
    good = tmp_path / "areas.geojson"
    good.write_text(json.dumps(halves()), encoding="utf-8")
    config = load_config(overrides={"area.subdistricts": str(good)}, env={})
    assert config.area_subdistricts == good
    assert load_config(env={}).area_subdistricts is None
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps(halves()).replace('"name"', '"NAME"'), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'area\.subdistricts'.*has no 'name' property"):
        load_config(overrides={"area.subdistricts": str(bad)}, env={})
    # Another name property, as the deployment's file has it.
    config = load_config(
        overrides={"area.subdistricts": str(bad), "area.subdistrict_name": "NAME"}, env={}
    )
    assert config.subdistrict_name == "NAME"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(overrides={"area.subdistricts": str(tmp_path / "nope.geojson")}, env={})


def _dispatcher(area: ServiceArea) -> Dispatcher:
    config = load_config(env={})
    return Dispatcher(
        area=area,
        codec=Codec(root="dispatch", in_area=area.contains),
        policy=Policy(),
        travel=config.travel,
        kinds=config.kinds,
        rng=random.Random(7),
    )


def test_an_incident_gets_its_subdistrict_when_reported() -> None:
    config = load_config(env={})
    area = ServiceArea.from_geojson(config.area_geojson, cell_size_m=config.cell_size_m)
    d = _dispatcher(area)
    d.report(Report(kind=Kind.FALL, lat=XIAOYING[0], lon=XIAOYING[1], id="none"), 1000.0)
    before = d.incidents["none"]
    assert before.subdistrict == ""
    assert "subdistrict" not in before.to_record()  # records as they were without a file
    assert group_key("subdistrict", before) is None
    area.set_subdistricts(Subdistricts.from_geojson_object(halves()))
    d.report(Report(kind=Kind.FALL, lat=XIAOYING[0], lon=XIAOYING[1], id="west"), 1000.0)
    d.report(Report(kind=Kind.FALL, lat=30.27, lon=120.19, id="east"), 1000.0)
    west, east = d.incidents["west"], d.incidents["east"]
    assert (west.subdistrict, east.subdistrict) == ("测试西片", "测试东片")
    # Kept in the record (so in Redis and the archive), and grouped by.
    again = Incident.from_record(west.to_record())
    assert again.subdistrict == "测试西片"
    assert group_key("subdistrict", again) == "测试西片"
    assert miss_reason(again, target_s=180.0, now=1000.0 + 181) == "nobody_in_reach"
    kinds = [f["properties"]["kind"] for f in area.to_geojson()["features"]]
    assert kinds.count("subdistrict") == 2
