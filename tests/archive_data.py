"""Synthetic ended incidents for the archive and report tests, and how to log them.

Times are whole milliseconds, as the engine's clocks give them, so that the same
incident measured in Python (floats) and in PostgreSQL (microseconds) is the same.
"""

from __future__ import annotations

import random
from typing import Any

from dispatch.dispatcher import Alert, AlertStatus, Incident, Responder
from dispatch.effects import Effect, LogEvent, SaveIncident
from dispatch.lifecycle import State
from dispatch.model import Kind
from dispatch.store import Store

__all__ = ["BASE", "ended_incident", "log_ended", "some_incidents"]

BASE = 1_764_547_200.0  # 2025-12-01T00:00:00Z
_CELLS = ("r01c01", "r01c02", "r02c05", "r07c12")


def _ms(x: float) -> float:
    return round(x * 1000) / 1000


def ended_incident(i: int, rng: random.Random, base: float = BASE) -> Incident:
    reported = _ms(base + i * 1800 + rng.uniform(0, 1000))
    cancelled = rng.random() < 0.12
    kind = rng.choice(list(Kind))
    incident = Incident(
        id=f"arc-{i:05d}",
        kind=kind,
        priority=rng.choice((1, 2, 3)),
        lat=30.2591 + rng.uniform(-0.01, 0.01),
        lon=120.1698 + rng.uniform(-0.01, 0.01),
        responders_needed=1,
        skills=("first_aid",),
        reported_at=reported,
        received_at=_ms(reported + 0.2),
        cell_id=rng.choice(_CELLS),
        address=f"小营巷 {i} 号",
        description="elderly man fell & is <conscious>",
    )
    for w in range(rng.randint(0, 4)):
        alert = Alert(
            alert_id=f"{incident.id}-a{w}",
            incident_id=incident.id,
            volunteer_id=f"v{rng.randint(1, 50)}",
            wave=1 + w // 2,
            sent_at=_ms(reported + 1 + w),
            expires_at=_ms(reported + 91 + w),
            distance_m=rng.uniform(50, 2000),
            eta_s=rng.uniform(30, 600),
            status=rng.choice(list(AlertStatus)),
        )
        incident.alerts[alert.alert_id] = alert
    incident.first_alert_at = _ms(reported + 1) if incident.alerts else None
    roll = rng.random()
    if not cancelled and incident.alerts and roll < 0.75:
        arrival = _ms(reported + rng.choice((180.0, rng.uniform(40, 420))))
        alert = next(iter(incident.alerts.values()))
        verified = roll < 0.7
        incident.responders.append(
            Responder(
                volunteer_id=alert.volunteer_id,
                eta_s=alert.eta_s,
                accepted_at=_ms(reported + 10),
                alert_id=alert.alert_id,
                arrived_at=arrival,
                verified_at=arrival if verified else None,
                distance_m=alert.distance_m,
            )
        )
        incident.first_accept_at = _ms(reported + 10)
        incident.first_arrival_at = arrival
        incident.first_verified_at = arrival if verified else None
    if rng.random() < 0.25:
        incident.escalated_at = _ms(reported + 60)
        incident.escalation_reason = "nobody accepted"
    incident.state = State.CANCELLED if cancelled else State.RESOLVED
    incident.ended_at = _ms(reported + 1200)
    incident.end_reason = f"{incident.state.value} by operator"
    incident.version = 7
    return incident


def some_incidents(n: int, seed: int = 15, base: float = BASE) -> list[Incident]:
    rng = random.Random(seed)
    return [ended_incident(i, rng, base) for i in range(n)]


async def log_ended(store: Store, incident: Incident) -> None:
    """Store an ended incident and its events as the engine does (one MULTI)."""
    effects: list[Effect] = [
        SaveIncident(
            incident.id, incident.to_record(), open=True, reported_at=incident.reported_at
        ),
        LogEvent(incident.id, "reported", incident.reported_at, {"kind": incident.kind.value}),
    ]
    for alert in incident.alerts.values():
        effects.append(
            LogEvent(incident.id, "alerted", alert.sent_at, {"alert_id": alert.alert_id})
        )
    await store.apply(effects)
    assert incident.ended_at is not None
    end: list[Effect] = [
        SaveIncident(
            incident.id,
            incident.to_record(),
            open=False,
            reported_at=incident.reported_at,
            ended_at=incident.ended_at,
        ),
        LogEvent(incident.id, incident.state.value, incident.ended_at, {"by": "operator"}),
        LogEvent(
            incident.id,
            "state",
            incident.ended_at,
            {"from": "assigned", "to": incident.state.value},
        ),
    ]
    await store.apply(end)


def record_of(incident: Incident) -> dict[str, Any]:
    return incident.to_record()
