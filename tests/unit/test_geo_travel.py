"""Unit tests for geo.travel: the travel-time model's numbers and validation."""

import math

import pytest

from geo.travel import TravelModel


def test_defaults() -> None:
    model = TravelModel()
    assert model.circuity == 1.3
    assert dict(model.speeds_mps) == {"walk": 1.8, "bike": 4.0, "ebike": 5.5}
    assert model.fastest_speed_mps == 5.5


def test_eta_and_reach_are_inverse() -> None:
    model = TravelModel()
    # 500 m straight line, 650 m of streets, walked at 1.8 m/s.
    assert model.eta_s(500.0, "walk") == pytest.approx(650.0 / 1.8)
    assert model.eta_s(0.0, "bike") == 0.0
    for mode in ("walk", "bike", "ebike"):
        assert model.reach_m(model.eta_s(1234.5, mode), mode) == pytest.approx(1234.5)
    # In the 3-minute target an e-bike covers 180 * 5.5 / 1.3 m of straight line.
    assert model.reach_m(180.0, "ebike") == pytest.approx(761.5, abs=0.1)


def test_unknown_mode_names_allowed_modes() -> None:
    with pytest.raises(ValueError, match=r"'car'.*bike, ebike, walk"):
        TravelModel().eta_s(100.0, "car")
    with pytest.raises(ValueError, match="allowed"):
        TravelModel().reach_m(60.0, "scooter")


def test_custom_speeds_are_copied_and_read_only() -> None:
    speeds = {"walk": 1.5}
    model = TravelModel(circuity=1.0, speeds_mps=speeds)
    speeds["walk"] = 100.0
    assert model.speeds_mps["walk"] == 1.5
    with pytest.raises(TypeError):
        model.speeds_mps["walk"] = 2.0  # type: ignore[index]


@pytest.mark.parametrize("circuity", [0.9, 0.0, -1.0, math.nan, math.inf])
def test_rejects_bad_circuity(circuity: float) -> None:
    with pytest.raises(ValueError, match=rf"circuity.*{circuity}"):
        TravelModel(circuity=circuity)


@pytest.mark.parametrize("speed", [0.0, -1.0, math.nan, math.inf])
def test_rejects_bad_speed(speed: float) -> None:
    with pytest.raises(ValueError, match=rf"speeds_mps\['bike'\].*{speed}"):
        TravelModel(speeds_mps={"walk": 1.8, "bike": speed})


def test_rejects_no_modes() -> None:
    with pytest.raises(ValueError, match="speeds_mps"):
        TravelModel(speeds_mps={})
