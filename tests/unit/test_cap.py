"""The CAP export validates against the official CAP 1.2 schema (tests/data/cap/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from archive_data import some_incidents
from lxml import etree

from dispatch.cap import CAP_NS, CATEGORY, to_cap
from dispatch.dispatcher import Incident
from dispatch.lifecycle import State
from dispatch.model import Kind

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "cap" / "CAP-v1.2.xsd"
NS = {"cap": CAP_NS}


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


def _cap(incident: Incident) -> bytes:
    return to_cap(
        incident,
        sender="dispatch.test",
        sender_name="上城区 Shangcheng district",
        radius_m=30.0,
        target_s=180.0,
        now=1_764_551_000.25,
    )


def test_every_kind_and_state_is_valid_cap(schema: etree.XMLSchema) -> None:
    incidents = some_incidents(60)
    open_one = some_incidents(1, seed=2)[0]
    open_one.state, open_one.ended_at, open_one.address = State.ALERTING, None, ""
    for incident in [*incidents, open_one]:
        doc = etree.fromstring(_cap(incident))
        schema.assertValid(doc)
    assert {i.kind for i in incidents} == set(Kind)  # every mapping was exercised


def test_the_alert_says_what_happened_where() -> None:
    incident = some_incidents(3)[2]
    incident.kind = Kind.CARDIAC_ARREST
    doc = etree.fromstring(_cap(incident))
    assert doc.findtext("cap:identifier", namespaces=NS) == incident.id
    assert doc.findtext("cap:sent", namespaces=NS) == "2025-12-01T09:03:20+08:00"
    info = doc.find("cap:info", NS)
    assert info is not None
    assert info.findtext("cap:category", namespaces=NS) == "Health"
    assert info.findtext("cap:severity", namespaces=NS) == "Extreme"
    assert info.findtext("cap:urgency", namespaces=NS) == "Past"  # it has ended
    circle = info.findtext("cap:area/cap:circle", namespaces=NS)
    assert circle == f"{incident.lat:.6f},{incident.lon:.6f} 0.030"
    # Markup in what a caller said stays text.
    assert info.findtext("cap:description", namespaces=NS) == incident.description


def test_categories_are_cap_categories() -> None:
    allowed = {"Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env"}
    allowed |= {"Transport", "Infra", "CBRNE", "Other"}
    assert set(CATEGORY) == set(Kind)
    assert set(CATEGORY.values()) <= allowed
