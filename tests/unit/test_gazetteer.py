"""The gazetteer (geo/gazetteer.py) and its configuration keys: a bad file names the line
and what is wrong; the demo file is valid and inside the district; searching by words."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.config import CONFIG_DIR, load_config
from dispatch.errors import ConfigError
from geo.area import ServiceArea
from geo.gazetteer import MAX_PLACES, Gazetteer

DEMO = CONFIG_DIR / "shangcheng_places_demo.csv"


def test_the_demo_gazetteer_is_valid_and_inside_the_district() -> None:
    gazetteer = Gazetteer.from_csv(DEMO)
    assert len(gazetteer) >= 30
    area = ServiceArea.from_geojson(CONFIG_DIR / "shangcheng_boundary_wgs84.geojson")
    gazetteer.check(area.contains, source="demo", area="Shangcheng")  # raises if not
    names = {p.name for p in gazetteer.places}
    assert {"河坊街", "杭州东站", "小营巷"} <= names
    assert all(p.name_en for p in gazetteer.places)  # every demo place has an English name
    assert all(1 <= p.rank <= 9 for p in gazetteer.places)


def test_search_by_words_in_either_language_best_first() -> None:
    g = Gazetteer.parse(
        "name,name_en,lat,lon,rank\n"
        "# a comment line\n"
        "杭州东站,Hangzhou East Railway Station,30.291,120.2126,1\n"
        "杭州站（城站）,Hangzhou Railway Station,30.245,120.1795,1\n"
        "东站 公交枢纽,East Station Bus Hub,30.292,120.213,5\n"
        '"小营巷, 12 号",,30.2591,120.1698,\n'
    )
    assert [p.name for p in g.search("东站", 5)] == ["东站 公交枢纽", "杭州东站"]
    assert [p.name for p in g.search("railway east", 5)] == ["杭州东站"]
    assert [p.name for p in g.search("HANGZHOU", 1)] == ["杭州东站"]  # rank, then length
    assert [p.name for p in g.search("小营巷 12", 5)] == ["小营巷, 12 号"]
    assert [p.name for p in g.search("杭州东", 5)] == ["杭州东站"]  # no spaces needed
    assert g.search("小营巷", 5)[0].rank == 5  # no rank given: 5
    assert g.search("   ", 5) == []
    assert g.search("nowhere", 5) == []
    assert len(g.search("站", 2)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"empty; the first line must be the header name,lat,lon"),
        ("name,lon\n", r"line 1: the header has no 'lat' column"),
        ("name,lat,lon,height\n", r"line 1: unknown column 'height'"),
        ("name,lat,lat,lon\n", r"line 1: .*named twice|line 1: a column is named twice"),
        ("name,lat,lon\n河坊街,30.243\n", r"line 2: 2 values, but the header names 3 columns"),
        ("name,lat,lon\n河坊街,north,120.169\n", r"line 2: lat 'north' is not a number"),
        ("name,lat,lon\n河坊街,30.243,190\n", r"line 2: lon 190 is not from -180 to 180"),
        ("name,lat,lon\n河坊街,nan,120\n", r"line 2: lat nan is not from -90 to 90"),
        ("name,lat,lon\n,30.243,120.169\n", r"line 2: the name is empty"),
        (
            "name,lat,lon\n\n# c\n河坊街,30.2,120.1\n河坊街,30.2,120.1\n",
            r"line 5: '河坊街' is named already on line 4",
        ),
        (
            "name,lat,lon,rank\n河坊街,30.2,120.1,0\n",
            r"line 2: rank '0' is not a whole number from 1 to 9",
        ),
        ("name,lat,lon\n河\x07坊,30.2,120.1\n", r"line 2: the name must be at most 100 printable"),
        ("name,lat,lon\n" + "x" * 101 + ",30.2,120.1\n", r"line 2: the name must be at most 100"),
    ],
)
def test_a_bad_file_names_the_line_and_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Gazetteer.parse(text, source="places.csv")


def test_too_many_places_or_bytes_are_refused(tmp_path: Path) -> None:
    many = "name,lat,lon\n" + "".join(f"p{i},30.2,120.1\n" for i in range(MAX_PLACES + 1))
    with pytest.raises(ValueError, match=f"at most {MAX_PLACES} places"):
        Gazetteer.parse(many)
    big = tmp_path / "big.csv"
    big.write_bytes(b"name,lat,lon\n" + b"#" * (3 * 1024 * 1024))
    with pytest.raises(ValueError, match="larger than 2048 KiB"):
        Gazetteer.from_csv(big)
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"name,lat,lon\nok,30.2,120.1\n" + "caf\xe9,30.2,120.1\n".encode("latin-1"))
    with pytest.raises(ValueError, match="line 3: not UTF-8 text"):
        Gazetteer.from_csv(bad)


def test_the_config_key_loads_checks_and_names_the_line(tmp_path: Path) -> None:
    assert load_config().area_gazetteer is None  # none by default
    config = load_config(overrides={"area.gazetteer": "shangcheng_places_demo.csv"})
    assert config.area_gazetteer == DEMO
    outside = tmp_path / "places.csv"
    outside.write_text("name,lat,lon\n小营巷,30.2591,120.1698\n西溪湿地,30.27,120.06\n", "utf-8")
    with pytest.raises(ConfigError, match=r"area\.gazetteer.*line 3: '西溪湿地' .* lies outside"):
        load_config(overrides={"area.gazetteer": str(outside)})
    with pytest.raises(ConfigError, match=r"area\.gazetteer.*cannot read the gazetteer"):
        load_config(overrides={"area.gazetteer": str(tmp_path / "missing.csv")})
    # relative to the configuration file's folder
    (tmp_path / "mine.csv").write_text("name,lat,lon\n小营巷,30.2591,120.1698\n", "utf-8")
    (tmp_path / "c.toml").write_text('[area]\ngazetteer = "mine.csv"\n', "utf-8")
    assert load_config(tmp_path / "c.toml").area_gazetteer == tmp_path / "mine.csv"
    env = load_config(env={"DISPATCH_AREA_GAZETTEER": str(tmp_path / "mine.csv")})
    assert env.area_gazetteer == tmp_path / "mine.csv"


def test_the_phone_and_tile_keys_are_checked() -> None:
    assert load_config().control_room_phone == ""
    ok = load_config(env={"DISPATCH_CONTROL_ROOM_PHONE": " +86 571-8700 0000 "})
    assert ok.control_room_phone == "+86 571-8700 0000"
    for bad in ("call us", "0571;drop", "+", "1" * 40):
        with pytest.raises(ConfigError, match=r"control_room\.phone.*a telephone number"):
            load_config(overrides={"control_room.phone": bad})
    assert load_config().map_tile_url == ""
    url = "http://127.0.0.1:8081/tiles/{z}/{x}/{y}.png"
    assert load_config(overrides={"map.tile_url": url}).map_tile_url == url
    assert load_config(overrides={"map.tile_url": "/tiles/{z}/{x}/{y}.png"}).map_tile_url
    for bad in (
        "ftp://x/{z}/{x}/{y}",
        "http://x/tiles.png",
        "//evil/{z}/{x}/{y}",
        'http://x/{z}/{x}/{y}"',
    ):
        with pytest.raises(ConfigError, match=r"map\.tile_url"):
            load_config(overrides={"map.tile_url": bad})
    with pytest.raises(ConfigError, match=r"map\.tile_max_zoom.*from 1 to 22"):
        load_config(overrides={"map.tile_max_zoom": 30})
    with pytest.raises(ConfigError, match=r"map\.tile_attribution.*control characters"):
        load_config(overrides={"map.tile_attribution": "x\ny"})
