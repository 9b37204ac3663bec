"""The wire: the core's outbound effects as MQTT messages (topics, JSON, QoS, retain, expiry).

The only place that knows what an alert, an assignment or an incident's state looks like
on the broker (PROTOCOL.md, "Out of the engine"); the JSON itself is written by the
codec's ``dumps``. Keys are written in the protocol's order and rounded as the protocol
shows them; outside clients depend on every byte, so change nothing here lightly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dispatch.codec import Codec, dumps, format_time
from dispatch.effects import Outbound, SendAlert, SendAssignment

__all__ = ["Publish", "Wire"]


@dataclass(frozen=True, slots=True)
class Publish:
    """A message as the bus sends it: the shell's form of the core's messages, and of
    what the shell sends on its own (rejections, the service worker's replies)."""

    topic: str  # the full topic, root included
    payload: bytes  # b"" with retain clears a retained message
    qos: int = 1
    retain: bool = False
    expiry_s: int | None = None  # MQTT 5 message expiry; stale calls must not reach a phone


class Wire:
    """Renders `Outbound` effects as `Publish` messages under the codec's topic root."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def message(self, effect: Outbound) -> Publish:
        if isinstance(effect, SendAlert):
            return self.alert(effect)
        if isinstance(effect, SendAssignment):
            return self.assignment(effect)
        if effect.cleared:
            return self.cleared(effect.incident_id)
        return self.state(effect.incident_id, effect.state)

    def alert(self, a: SendAlert) -> Publish:
        """``volunteers/{vid}/alert``: QoS 1, never retained, with an expiry."""
        payload = {
            "alert_id": a.alert_id,
            "incident_id": a.incident_id,
            "kind": a.kind,
            "priority": a.priority,
            "lat": a.lat,
            "lon": a.lon,
            "address": a.address,
            "distance_m": round(a.distance_m, 1),
            "eta_s": round(a.eta_s, 1),
            "expires_at": format_time(a.expires_at),
            # extensions
            "description": a.description,
            "wave": a.wave,
            "skills": list(a.skills),
        }
        return Publish(
            self.codec.topic("volunteers", a.volunteer_id, "alert"),
            dumps(payload),
            qos=1,
            expiry_s=a.expiry_s,
        )

    def assignment(self, a: SendAssignment) -> Publish:
        """``volunteers/{vid}/assignment``: QoS 1, never retained, with an expiry."""
        payload: dict[str, Any] = {
            "incident_id": a.incident_id,
            "action": a.action.value,
            "reason": a.reason.value,
            "alert_id": a.alert_id,
        }
        if a.role is not None:
            payload["role"] = a.role.value  # protocol 1.1: with every "go"
        if a.lat is not None:  # protocol 1.1: the new place of an amended incident
            payload["lat"], payload["lon"], payload["address"] = a.lat, a.lon, a.address or ""
        return Publish(
            self.codec.topic("volunteers", a.volunteer_id, "assignment"),
            dumps(payload),
            qos=1,
            expiry_s=a.expiry_s,
        )

    def state(self, incident_id: str, state: Mapping[str, Any]) -> Publish:
        """``incidents/{iid}/state``: the public state, QoS 1, retained."""
        return Publish(self.state_topic(incident_id), dumps(state), qos=1, retain=True)

    def cleared(self, incident_id: str) -> Publish:
        """The empty retained message that removes an ended incident's state."""
        return Publish(self.state_topic(incident_id), b"", qos=1, retain=True)

    def state_topic(self, incident_id: str) -> str:
        return self.codec.topic("incidents", incident_id, "state")
