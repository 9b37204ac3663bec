"""Unit tests for geo.distance: haversine and the local projection's error bound."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.distance import (
    EARTH_RADIUS_M,
    PROJECTION_MAX_RELATIVE_ERROR,
    LocalProjection,
    haversine_m,
)

# Shangcheng district's bounding box and a projection centred on it.
MIN_LAT, MAX_LAT = 30.195, 30.396
MIN_LON, MAX_LON = 120.132, 120.291
DISTRICT = LocalProjection(30.2913, 120.2145)

lats = st.floats(MIN_LAT, MAX_LAT)
lons = st.floats(MIN_LON, MAX_LON)


def test_haversine_known_values() -> None:
    assert haversine_m(30.0, 120.0, 30.0, 120.0) == 0.0
    # One degree of latitude is R * pi / 180 on a sphere.
    assert haversine_m(30.0, 120.0, 31.0, 120.0) == pytest.approx(EARTH_RADIUS_M * math.pi / 180)
    # Half the equator.
    assert haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(EARTH_RADIUS_M * math.pi)
    # 0.031 deg of latitude and 0.0596 deg of longitude apart: a flat-earth estimate
    # gives hypot(3_447, 5_722) = 6_680 m.
    assert haversine_m(30.2910, 120.2126, 30.2600, 120.1530) == pytest.approx(6_680, rel=0.001)


@given(lats, lons, lats, lons)
def test_haversine_is_symmetric_bit_for_bit(la1: float, lo1: float, la2: float, lo2: float) -> None:
    assert haversine_m(la1, lo1, la2, lo2) == haversine_m(la2, lo2, la1, lo1)


@given(lats, lons)
def test_projection_round_trips(lat: float, lon: float) -> None:
    back = DISTRICT.to_latlon(*DISTRICT.to_xy(lat, lon))
    assert back == pytest.approx((lat, lon), abs=1e-12)


def test_projection_centre_is_origin() -> None:
    assert DISTRICT.to_xy(DISTRICT.lat0, DISTRICT.lon0) == (0.0, 0.0)


@pytest.mark.parametrize(("lat0", "lon0"), [(91.0, 0.0), (math.nan, 0.0), (0.0, 181.0)])
def test_projection_rejects_bad_centre(lat0: float, lon0: float) -> None:
    with pytest.raises(ValueError, match=r"lat0|lon0"):
        LocalProjection(lat0, lon0)


def test_projection_error_bound_over_the_district() -> None:
    """The bound documented in geo.distance, on random pairs up to 5 km apart."""
    rng = random.Random(20240601)
    worst = 0.0
    pairs = 0
    while pairs < 20_000:
        lat1, lon1 = rng.uniform(MIN_LAT, MAX_LAT), rng.uniform(MIN_LON, MAX_LON)
        r, a = rng.uniform(1.0, 5_000.0), rng.uniform(0.0, 2 * math.pi)
        x1, y1 = DISTRICT.to_xy(lat1, lon1)
        lat2, lon2 = DISTRICT.to_latlon(x1 + r * math.cos(a), y1 + r * math.sin(a))
        if not (MIN_LAT <= lat2 <= MAX_LAT and MIN_LON <= lon2 <= MAX_LON):
            continue
        true_m = haversine_m(lat1, lon1, lat2, lon2)
        if true_m > 5_000.0:
            continue
        x2, y2 = DISTRICT.to_xy(lat2, lon2)
        worst = max(worst, abs(math.hypot(x2 - x1, y2 - y1) - true_m) / true_m)
        pairs += 1
    assert worst <= PROJECTION_MAX_RELATIVE_ERROR
