"""Pure spatial library: distances, the volunteer index, the service area and travel times."""

__all__: list[str] = []
