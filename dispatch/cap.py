"""An incident as an OASIS CAP 1.2 alert (``GET /api/incidents/{iid}/cap``). Pure.

The Common Alerting Protocol is how alerting systems and agencies exchange incidents.
One ``alert`` with one ``info`` block and one ``area`` (a circle around the scene, of the
arrival radius, and the grid cell as a geocode). What the engine knows and CAP has no
element for (state, responders, time to arrival) goes in ``parameter`` pairs.

Mapping (CAP 1.2, section 3.2.2):

- ``category``: cardiac_arrest, medical, fall: Health; fire: Fire; dispute, security:
  Security; lost_person: Rescue; other: Other.
- ``severity`` from the priority: 1 Severe, 2 Moderate, 3 Minor (Extreme for a cardiac
  arrest). ``urgency``: Immediate while open, Past once ended. ``certainty``: Observed
  (a person reported it). ``msgType``: Alert; ``status``: Actual.
- ``scope`` Restricted: the message carries an address and a description of a person,
  for emergency services only.
- Times carry the operators' offset (+08:00) and whole seconds, as the CAP schema's
  pattern requires.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime

from dispatch.dispatcher import Incident
from dispatch.lifecycle import ENDED
from dispatch.model import Kind
from dispatch.report import LOCAL_TZ

__all__ = ["CAP_NS", "CATEGORY", "CONTENT_TYPE", "to_cap"]

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
CONTENT_TYPE = "application/cap+xml"

CATEGORY = {
    Kind.CARDIAC_ARREST: "Health",
    Kind.MEDICAL: "Health",
    Kind.FALL: "Health",
    Kind.FIRE: "Fire",
    Kind.DISPUTE: "Security",
    Kind.SECURITY: "Security",
    Kind.LOST_PERSON: "Rescue",
    Kind.OTHER: "Other",
}
_EVENT = {
    Kind.CARDIAC_ARREST: "Cardiac arrest",
    Kind.MEDICAL: "Medical emergency",
    Kind.FALL: "Fall",
    Kind.FIRE: "Fire",
    Kind.DISPUTE: "Dispute",
    Kind.SECURITY: "Security incident",
    Kind.LOST_PERSON: "Lost person",
    Kind.OTHER: "Other incident",
}
_SEVERITY = {1: "Severe", 2: "Moderate", 3: "Minor"}


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, LOCAL_TZ).replace(microsecond=0).isoformat()


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _parameter(info: ET.Element, name: str, value: str) -> None:
    p = _sub(info, "parameter")
    _sub(p, "valueName", name)
    _sub(p, "value", value)


def to_cap(
    incident: Incident,
    *,
    sender: str,
    sender_name: str,
    radius_m: float,
    target_s: float,
    now: float,
) -> bytes:
    """The CAP 1.2 ``alert`` document of ``incident`` as UTF-8 XML, sent at ``now``."""
    ended = incident.state in ENDED
    alert = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(alert, "identifier", incident.id)
    _sub(alert, "sender", sender)
    _sub(alert, "sent", _time(now))
    _sub(alert, "status", "Actual")
    _sub(alert, "msgType", "Alert")
    _sub(alert, "source", "dispatch engine")
    _sub(alert, "scope", "Restricted")
    _sub(alert, "restriction", "emergency services only: carries an address and personal data")
    _sub(alert, "note", f"state {incident.state.value}")
    info = _sub(alert, "info")
    _sub(info, "language", "zh-CN")
    _sub(info, "category", CATEGORY[incident.kind])
    _sub(info, "event", _EVENT[incident.kind])
    _sub(info, "urgency", "Past" if ended else "Immediate")
    severity = "Extreme" if incident.kind is Kind.CARDIAC_ARREST else _SEVERITY[incident.priority]
    _sub(info, "severity", severity)
    _sub(info, "certainty", "Observed")
    code = _sub(info, "eventCode")
    _sub(code, "valueName", "dispatch:kind")
    _sub(code, "value", incident.kind.value)
    _sub(info, "onset", _time(incident.reported_at))
    _sub(info, "senderName", sender_name)
    place = incident.address or f"{incident.lat:.5f}, {incident.lon:.5f}"
    _sub(info, "headline", f"{_EVENT[incident.kind]}: {place}"[:160])
    if incident.description:
        _sub(info, "description", incident.description)
    _parameter(info, "dispatch:state", incident.state.value)
    _parameter(info, "dispatch:priority", str(incident.priority))
    _parameter(info, "dispatch:responders_needed", str(incident.responders_needed))
    _parameter(info, "dispatch:responders", str(len(incident.responders)))
    time_s = incident.time_to_arrival_s()
    if time_s is not None:
        _parameter(info, "dispatch:time_to_arrival_s", f"{time_s:.1f}")
        _parameter(info, "dispatch:within_target", "true" if time_s <= target_s else "false")
    area = _sub(info, "area")
    _sub(area, "areaDesc", place)
    # CAP: "lat,lon radius" in WGS84 degrees and kilometres.
    _sub(area, "circle", f"{incident.lat:.6f},{incident.lon:.6f} {radius_m / 1000:.3f}")
    if incident.cell_id:
        geocode = _sub(area, "geocode")
        _sub(geocode, "valueName", "dispatch:grid_cell")
        _sub(geocode, "value", incident.cell_id)
    body: bytes = ET.tostring(
        alert, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS
    )
    return body
