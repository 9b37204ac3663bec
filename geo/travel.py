"""The travel-time model: straight-line metres to seconds by street circuity and mode speed."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DEFAULT_SPEEDS_MPS", "TravelModel"]

# Walking about 1.8 m/s in dense areas (DESIGN.md); bike and e-bike are urban averages
# including stops. Read-only so that no caller can change every model's defaults.
DEFAULT_SPEEDS_MPS: Mapping[str, float] = MappingProxyType({"walk": 1.8, "bike": 4.0, "ebike": 5.5})


def _default_speeds() -> Mapping[str, float]:
    return DEFAULT_SPEEDS_MPS


@dataclass(frozen=True, slots=True)
class TravelModel:
    """Estimated time of arrival from a great-circle distance and a travel mode."""

    circuity: float = 1.3  # street distance / straight-line distance
    speeds_mps: Mapping[str, float] = field(default_factory=_default_speeds)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.circuity) and self.circuity >= 1.0):
            raise ValueError(
                f"circuity must be a finite number >= 1 (street / straight-line), "
                f"got {self.circuity!r}"
            )
        if not self.speeds_mps:
            raise ValueError("speeds_mps must name at least one mode, got an empty mapping")
        for mode, speed in self.speeds_mps.items():
            if not (math.isfinite(speed) and speed > 0.0):
                raise ValueError(
                    f"speeds_mps[{mode!r}] must be a finite speed > 0 m/s, got {speed!r}"
                )
        # Freeze a private copy: the model is shared and must not change under its users.
        object.__setattr__(self, "speeds_mps", MappingProxyType(dict(self.speeds_mps)))

    def speed_mps(self, mode: str) -> float:
        """The speed of ``mode`` in metres a second; an unknown mode is a ValueError."""
        try:
            return self.speeds_mps[mode]
        except KeyError:
            allowed = ", ".join(sorted(self.speeds_mps))
            raise ValueError(f"unknown travel mode {mode!r}; allowed: {allowed}") from None

    def eta_s(self, distance_m: float, mode: str) -> float:
        """Seconds to cover ``distance_m`` of straight line through the streets in ``mode``."""
        return distance_m * self.circuity / self.speed_mps(mode)

    @property
    def fastest_speed_mps(self) -> float:
        """The highest speed of any mode: bounds how far anyone can get in a given time."""
        return max(self.speeds_mps.values())

    def reach_m(self, seconds: float, mode: str) -> float:
        """Straight-line metres coverable in ``seconds`` in ``mode`` (the inverse of ``eta_s``)."""
        return seconds * self.speed_mps(mode) / self.circuity
