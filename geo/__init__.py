"""Pure spatial library: distances, the volunteer index, the service area and travel times."""

from geo.area import GRID_NOTE, Cell, OutsideArea, ServiceArea
from geo.distance import (
    EARTH_RADIUS_M,
    PROJECTION_MAX_RELATIVE_ERROR,
    LocalProjection,
    haversine_m,
)
from geo.gazetteer import Gazetteer, Place
from geo.index import Neighbour, VolunteerIndex, rtree_properties
from geo.subdistricts import Subdistricts
from geo.travel import DEFAULT_SPEEDS_MPS, TravelModel

__all__ = [
    "DEFAULT_SPEEDS_MPS",
    "EARTH_RADIUS_M",
    "GRID_NOTE",
    "PROJECTION_MAX_RELATIVE_ERROR",
    "Cell",
    "Gazetteer",
    "LocalProjection",
    "Neighbour",
    "OutsideArea",
    "Place",
    "ServiceArea",
    "Subdistricts",
    "TravelModel",
    "VolunteerIndex",
    "haversine_m",
    "rtree_properties",
]
