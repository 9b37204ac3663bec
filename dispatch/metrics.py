"""Prometheus metrics: every name in one place, prefixed ``dispatch_``, in base units.

A ``Metrics`` object owns its own registry (no global state), so two engines in one
process (tests) never mix their figures. Most figures follow from the event log: the
service feeds each LogEvent to ``observe_event``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dispatch.effects import EventType

__all__ = ["Metrics"]

# Buckets with an edge exactly at each target: 1 s for dispatch, 180 s for arrival.
_DISPATCH_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_ARRIVAL_BUCKETS = (30, 60, 90, 120, 150, 180, 240, 300, 420, 600, 900)
_ARRIVALS = frozenset({EventType.ARRIVED, EventType.ARRIVAL_VERIFIED})
_ENDINGS = frozenset({EventType.RESOLVED, EventType.CANCELLED})


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.incidents = Counter(
            "dispatch_incidents_total",
            "Incident reports by kind and outcome (created, duplicate, conflict)",
            ["kind", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "dispatch_rejected_messages_total",
            "Messages the engine could not accept, by reason",
            ["reason"],
            registry=r,
        )
        self.messages = Counter(
            "dispatch_messages_received_total", "Messages received, by type", ["type"], registry=r
        )
        self.move_batches = Counter(
            "dispatch_move_batches_total",
            "Batches of moves from location gateways, by outcome (accepted, malformed)",
            ["outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "dispatch_alerts_sent_total", "Alerts sent to volunteers, by wave", ["wave"], registry=r
        )
        self.escalations = Counter(
            "dispatch_escalations_total", "Incidents escalated to the control room", registry=r
        )
        self.incident_endings = Counter(
            "dispatch_incidents_ended_total", "Incidents ended, by how", ["how"], registry=r
        )
        self.decision_latency = Histogram(
            "dispatch_decision_latency_seconds",
            "From a report's receipt to its first alert published",
            buckets=_DISPATCH_BUCKETS,
            registry=r,
        )
        self.time_to_arrival = Histogram(
            "dispatch_time_to_arrival_seconds",
            "From reported_at to the first responder on scene",
            buckets=_ARRIVAL_BUCKETS,
            registry=r,
        )
        self.open_incidents = Gauge(
            "dispatch_open_incidents", "Incidents not yet resolved or cancelled", registry=r
        )
        self.available_volunteers = Gauge(
            "dispatch_available_volunteers", "Volunteers who could be alerted now", registry=r
        )
        # The headline (dispatch/headline.py): each incident that needed a responder is
        # decided once, at its first verified arrival within the target or when the
        # target passes without one.
        self.target_outcomes = Counter(
            "dispatch_target_outcomes_total",
            "Incidents decided against the target: within (a verified arrival in time) or missed",
            ["outcome"],
            registry=r,
        )
        # Protocol 1.1 delivery receipts: from an alert's publish to the phone's receipt,
        # and alerts a phone that always sends receipts never acknowledged in time.
        self.alert_delivery = Histogram(
            "dispatch_alert_delivery_seconds",
            "From an alert's publish to the phone's delivery receipt",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0),
            registry=r,
        )
        self.undelivered_alerts = Counter(
            "dispatch_alerts_undelivered_total",
            "Alerts with no delivery receipt within the delivery timeout",
            registry=r,
        )
        # Web Push (dispatch/push.py): each push to one browser, by outcome (sent, failed,
        # gone: the browser withdrew it, dropped: the queue was full, expired: the alert
        # expired while queued), and how long push services took to answer.
        self.push_sent = Counter(
            "dispatch_push_total", "Web Pushes of alerts, by outcome", ["outcome"], registry=r
        )
        self.push_latency = Histogram(
            "dispatch_push_latency_seconds",
            "From a push's request to the push service's answer (or failure)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.push_subscriptions = Counter(
            "dispatch_push_subscriptions_total",
            "Push subscriptions received from volunteer pages, by outcome (kept, rejected)",
            ["outcome"],
            registry=r,
        )
        self.backend_errors = Counter(
            "dispatch_backend_errors_total", "Broker or Redis failures", ["backend"], registry=r
        )
        # The archive writer beside the engine (dispatch/archiver.py, --postgres).
        self.archive_incidents = Counter(
            "dispatch_archive_incidents_total",
            "Ended incidents the archive writer committed: written, or already archived",
            ["outcome"],
            registry=r,
        )
        self.archive_errors = Counter(
            "dispatch_archive_errors_total",
            "Archive writer rounds that failed and will be retried, by backend",
            ["backend"],
            registry=r,
        )
        self.archive_lag = Gauge(
            "dispatch_archive_lag_seconds",
            "Age of the oldest logged event the archive writer has read but not yet "
            "committed (0: caught up)",
            registry=r,
        )

    def observe_event(self, kind: EventType, data: Mapping[str, Any]) -> None:
        if kind is EventType.ALERTED:
            self.alerts.labels(wave=str(data.get("wave", 0))).inc()
        elif kind is EventType.ESCALATED:
            self.escalations.inc()
        elif kind in _ARRIVALS and data.get("first_verified"):
            self.time_to_arrival.observe(float(data["time_to_arrival_s"]))
            if data.get("within_target"):
                self.target_outcomes.labels(outcome="within").inc()
        elif kind is EventType.TARGET_MISSED:
            self.target_outcomes.labels(outcome="missed").inc()
        elif kind is EventType.RECEIVED:
            self.alert_delivery.observe(float(data["latency_s"]))
        elif kind is EventType.UNDELIVERED:
            self.undelivered_alerts.inc()
        elif kind in _ENDINGS:
            self.incident_endings.labels(how=kind.value).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
