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

import orjson

from dispatch.codec import Codec, dumps, format_time, parse_time
from dispatch.effects import Outbound, SendAlert, SendAssignment

__all__ = ["Publish", "Wire", "read_alert"]


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


def read_alert(codec: Codec, topic: str, payload: bytes, now: float) -> SendAlert:
    """The alert a ``volunteers/{vid}/alert`` message (`Wire.alert`) carries, back as the
    `SendAlert` it was made from, for the push workers (dispatch/push_worker.py), which
    push what the engine published. The distance and ETA come back as rounded on the
    wire; ``expiry_s`` is what is left of the alert at ``now``. Raises ValueError saying
    what is wrong (only the engine may publish there, so it would be a bug or a forgery).
    """
    prefix, suffix = codec.topic("volunteers", ""), "/alert"
    volunteer_id = topic[len(prefix) : -len(suffix)]
    if not (topic.startswith(prefix) and topic.endswith(suffix)) or not volunteer_id:
        raise ValueError(f"not an alert topic ({prefix}<volunteer>{suffix}): {topic[:120]!r}")
    if "/" in volunteer_id:
        raise ValueError(f"not one volunteer's alert topic: {topic[:120]!r}")
    try:
        body = orjson.loads(payload)
        expires_at = parse_time(body["expires_at"])
        alert = SendAlert(
            incident_id=_text(body["incident_id"]),
            volunteer_id=volunteer_id,
            alert_id=_text(body["alert_id"]),
            kind=_text(body["kind"]),
            priority=int(body["priority"]),
            lat=float(body["lat"]),
            lon=float(body["lon"]),
            address=_text(body.get("address", "")),
            distance_m=float(body["distance_m"]),
            eta_s=float(body["eta_s"]),
            expires_at=expires_at,
            description=_text(body.get("description", "")),
            wave=int(body.get("wave", 1)),
            skills=tuple(_text(s) for s in body.get("skills", ())),
            expiry_s=max(0, int(expires_at - now)),
        )
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"alert is not JSON: {exc}") from None
    except KeyError as exc:
        raise ValueError(f"alert has no field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"alert has a field of the wrong kind: {exc}") from None
    return alert


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
