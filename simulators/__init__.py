"""Simulated volunteers and incidents, live over MQTT and offline with a simulated clock."""

__all__: list[str] = []
