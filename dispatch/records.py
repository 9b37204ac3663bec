"""The incident's records: its alerts and responders as the core keeps them, how each is
stored (``to_record``/``from_record``, JSON-ready) and the public view of an incident.

Plain data with no decisions in it: the workflow (dispatch/dispatcher.py) changes these,
the store keeps their records, and `public_state` is the retained ``state`` message's
body (PROTOCOL.md, plus extension fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dispatch.codec import format_time
from dispatch.effects import Role
from dispatch.lifecycle import ENDED, State
from dispatch.model import Kind

__all__ = [
    "OPEN_ALERT",
    "Alert",
    "AlertStatus",
    "Incident",
    "Responder",
    "eta_known",
    "public_state",
]


class AlertStatus(StrEnum):
    PENDING = "pending"  # sent, no answer yet
    ACCEPTING = "accepting"  # accepted; the claim is being committed
    ACCEPTED = "accepted"  # confirmed with "go"
    DECLINED = "declined"
    EXPIRED = "expired"
    STOOD_DOWN = "stood_down"  # released before or after an answer


OPEN_ALERT = frozenset({AlertStatus.PENDING, AlertStatus.ACCEPTING})


@dataclass(slots=True)
class Alert:
    alert_id: str
    incident_id: str
    volunteer_id: str
    wave: int  # 0 for an operator's hand assignment
    sent_at: float
    expires_at: float
    distance_m: float
    eta_s: float
    status: AlertStatus = AlertStatus.PENDING
    answered_at: float | None = None
    assigned_by: str | None = None
    received_at: float | None = None  # the phone's delivery receipt (protocol 1.1)
    undelivered: bool = False  # no receipt within the delivery timeout

    def to_record(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "incident_id": self.incident_id,
            "volunteer_id": self.volunteer_id,
            "wave": self.wave,
            "sent_at": self.sent_at,
            "expires_at": self.expires_at,
            "distance_m": self.distance_m,
            "eta_s": self.eta_s,
            "status": self.status.value,
            "answered_at": self.answered_at,
            "assigned_by": self.assigned_by,
            "received_at": self.received_at,
            "undelivered": self.undelivered,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Alert:
        return cls(**{**r, "status": AlertStatus(r["status"])})


@dataclass(slots=True)
class Responder:
    volunteer_id: str
    eta_s: float
    accepted_at: float
    alert_id: str
    arrived_at: float | None = None
    overdue: bool = False  # not on scene in time: no longer counted on
    released_at: float | None = None  # stood down on the way: enough others arrived
    role: Role = Role.PRIMARY  # protocol 1.1
    # When a position near the scene confirmed the arrival: at once for the geofence,
    # later (or never) for an "I'm here" pressed with no position near the scene.
    verified_at: float | None = None
    distance_m: float = 0.0  # from the scene when alerted (or when it moved)
    # Protocol 1.1: when the incident moved while they were on the way (their ETA,
    # distance and overdue time count from then on).
    rerouted_at: float | None = None
    withdrawn: bool = False  # they said "I can't go after all" (released at once)

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def counted(self) -> bool:
        """On scene, or on the way, not overdue and not released."""
        return self.arrived_at is not None or not (self.overdue or self.released_at)

    @property
    def on_the_way(self) -> bool:
        return self.arrived_at is None and self.released_at is None

    def to_record(self) -> dict[str, Any]:
        return {
            "volunteer_id": self.volunteer_id,
            "eta_s": self.eta_s,
            "accepted_at": self.accepted_at,
            "alert_id": self.alert_id,
            "arrived_at": self.arrived_at,
            "overdue": self.overdue,
            "released_at": self.released_at,
            "role": self.role,
            "verified_at": self.verified_at,
            "distance_m": self.distance_m,
            "rerouted_at": self.rerouted_at,
            "withdrawn": self.withdrawn,
        }


@dataclass(slots=True)
class Incident:
    id: str
    kind: Kind
    priority: int
    lat: float
    lon: float
    responders_needed: int
    skills: tuple[str, ...]
    reported_at: float
    received_at: float
    cell_id: str = ""
    subdistrict: str = ""  # the deployment's subdistrict (geo.subdistricts); "": none
    address: str = ""
    description: str = ""
    fingerprint: str = ""
    state: State = State.OPEN
    alerts: dict[str, Alert] = field(default_factory=dict)
    responders: list[Responder] = field(default_factory=list)
    wave: int = 0  # waves sent so far
    next_wave_at: float | None = None
    first_alert_at: float | None = None
    first_accept_at: float | None = None
    first_arrival_at: float | None = None  # claimed: the geofence or "I'm here"
    first_verified_at: float | None = None  # confirmed by a position near the scene
    escalated_at: float | None = None
    escalation_reason: str = ""  # the engine's English (or an operator's own words)
    escalation_code: str = ""  # an effects.Escalation; "" in records older than codes
    escalation_params: dict[str, Any] = field(default_factory=dict)  # its figures
    ended_at: float | None = None
    end_reason: str = ""
    version: int = 0
    # Protocol 1.1: when an operator last moved it; the search started again from there
    # (alerts sent before are of the old place).
    moved_at: float | None = None
    # This project's duplicate reports (docs/protocol.md): the open incident of the same
    # kind this one was reported close to, in place and time (a guess for the operator);
    # the incident it was merged into (then it is cancelled); those merged into it.
    likely_duplicate_of: str = ""
    merged_into: str = ""
    merged_from: list[str] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def confirmed(self) -> int:
        """Responders counted on: on scene, or on the way and not overdue."""
        return sum(1 for r in self.responders if r.counted)

    @property
    def still_needed(self) -> int:
        return max(0, self.responders_needed - self.confirmed)

    def open_alerts(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.status in OPEN_ALERT]

    def time_to_arrival_s(self) -> float | None:
        """Report to the first *verified* arrival: the headline's time (dispatch.headline)."""
        if self.first_verified_at is None:
            return None
        return self.first_verified_at - self.reported_at

    def goers_open(self, goers: int) -> int:
        """Accepts still welcome when ``goers`` responders (backups included) may go."""
        return max(0, goers - self.confirmed)

    def to_record(self) -> dict[str, Any]:
        """Everything needed to carry on after a restart, JSON-ready."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "priority": self.priority,
            "lat": self.lat,
            "lon": self.lon,
            "responders_needed": self.responders_needed,
            "skills": list(self.skills),
            "reported_at": self.reported_at,
            "received_at": self.received_at,
            "cell_id": self.cell_id,
            "address": self.address,
            "description": self.description,
            "fingerprint": self.fingerprint,
            "state": self.state.value,
            "alerts": [a.to_record() for a in self.alerts.values()],
            "responders": [r.to_record() for r in self.responders],
            "wave": self.wave,
            "next_wave_at": self.next_wave_at,
            "first_alert_at": self.first_alert_at,
            "first_accept_at": self.first_accept_at,
            "first_arrival_at": self.first_arrival_at,
            "first_verified_at": self.first_verified_at,
            "escalated_at": self.escalated_at,
            "escalation_reason": self.escalation_reason,
            **(
                {
                    "escalation_code": self.escalation_code,
                    "escalation_params": self.escalation_params,
                }
                if self.escalation_code
                else {}
            ),
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "version": self.version,
            "moved_at": self.moved_at,
            # Only with configured subdistricts: records stay as they were without.
            **({"subdistrict": self.subdistrict} if self.subdistrict else {}),
            # Only for duplicates and merges, likewise.
            **(
                {"likely_duplicate_of": self.likely_duplicate_of}
                if self.likely_duplicate_of
                else {}
            ),
            **({"merged_into": self.merged_into} if self.merged_into else {}),
            **({"merged_from": list(self.merged_from)} if self.merged_from else {}),
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Incident:
        fields = dict(r)
        fields["kind"] = Kind(r["kind"])
        fields["state"] = State(r["state"])
        fields["skills"] = tuple(r["skills"])
        fields["alerts"] = {a["alert_id"]: Alert.from_record(a) for a in r["alerts"]}
        fields["responders"] = [
            Responder(
                **{
                    **x,
                    "role": Role(x.get("role", Role.PRIMARY)),
                    "verified_at": x["verified_at"] if "verified_at" in x else x["arrived_at"],
                }
            )
            for x in r["responders"]
        ]
        fields["merged_from"] = list(r.get("merged_from", ()))
        if "escalation_params" in fields:  # its own copy, never the caller's
            fields["escalation_params"] = dict(fields["escalation_params"])
        if "first_verified_at" not in fields:  # stored before verified arrivals
            fields["first_verified_at"] = fields["first_arrival_at"]
        return cls(**fields)


def public_state(incident: Incident, target_s: float) -> dict[str, Any]:
    """The retained ``incidents/{id}/state`` payload (PROTOCOL.md, plus extension fields)."""
    tta = incident.time_to_arrival_s()
    return {
        "id": incident.id,
        "state": incident.state.value,
        "kind": incident.kind.value,
        "priority": incident.priority,
        "lat": incident.lat,
        "lon": incident.lon,
        "reported_at": format_time(incident.reported_at),
        "responders": [
            {
                "volunteer_id": r.volunteer_id,
                "eta_s": round(r.eta_s, 1),
                "accepted_at": format_time(r.accepted_at),
                "arrived_at": None if r.arrived_at is None else format_time(r.arrived_at),
                "role": r.role,  # protocol 1.1
                "overdue": r.overdue,  # extensions
                "released": r.released_at is not None,
                "verified": r.verified,
            }
            for r in incident.responders
        ],
        # The first verified arrival (an unverified "I'm here" does not count).
        "time_to_arrival_s": None if tta is None else round(tta, 3),
        "within_target": None if tta is None else tta <= target_s,
        # extensions
        "address": incident.address,
        "cell": incident.cell_id,
        "responders_needed": incident.responders_needed,
        "skills": list(incident.skills),
        "alerts_sent": len(incident.alerts),
        "arrival_verified": (
            None if incident.first_arrival_at is None else incident.first_verified_at is not None
        ),
        "escalation_reason": incident.escalation_reason or None,
        # what the page words in its own language (effects.Escalation), with its figures
        "escalation_code": incident.escalation_code or None,
        "escalation_params": incident.escalation_params if incident.escalation_code else None,
        "end_reason": incident.end_reason or None,
        # This project's duplicate reports (docs/protocol.md): a reporter whose incident
        # was merged follows the one in ``merged_into`` from then on.
        "likely_duplicate_of": incident.likely_duplicate_of or None,
        "merged_into": incident.merged_into or None,
        "merged_from": list(incident.merged_from),
        "version": incident.version,
    }


def eta_known(alert: Alert) -> bool:
    """False for a hand assignment of a volunteer whose position the engine does not know
    (distance and ETA 0): nothing to measure them against; the operator follows them."""
    return alert.wave > 0 or alert.distance_m > 0
