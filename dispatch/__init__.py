"""Dispatch engine: alerts the nearest community volunteers to an incident, in waves, over MQTT."""

__all__: list[str] = []
