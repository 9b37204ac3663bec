"""Prometheus metrics: every name in one place, prefixed ``dispatch_``, in base units.

A ``Metrics`` object owns its own registry (no global state), so two engines in one
process (tests) never mix their figures. Most figures follow from the event log: the
service feeds each LogEvent to ``observe_event``. A location gateway (dispatch/gateway.py)
has figures of its own, `GatewayMetrics`, served by ``dispatch gateway --metrics-http``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from dispatch.effects import EventType

__all__ = ["GatewayMetrics", "Metrics"]

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
        self.location_to_index = Histogram(
            "dispatch_location_to_index_seconds",
            "From a location gateway's receipt of a location to its move in the index (one "
            "observation per chunk applied: its oldest move, so the longest any waited)",
            buckets=_DISPATCH_BUCKETS,
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
        self.push_sent, self.push_latency, self.push_subscriptions = _push_metrics(r)
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


def _push_metrics(r: CollectorRegistry) -> tuple[Counter, Histogram, Counter]:
    """Web Push's figures (dispatch/push.py), the engine's and a push worker's: each push
    to one browser, by outcome (sent, failed, gone: the browser withdrew it, dropped: the
    queue was full, expired: the alert expired while queued), how long push services took
    to answer, and the subscriptions taken."""
    sent = Counter(
        "dispatch_push_total", "Web Pushes of alerts, by outcome", ["outcome"], registry=r
    )
    latency = Histogram(
        "dispatch_push_latency_seconds",
        "From a push's request to the push service's answer (or failure)",
        buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
        registry=r,
    )
    subscriptions = Counter(
        "dispatch_push_subscriptions_total",
        "Push subscriptions received from volunteer pages, by outcome (kept, rejected)",
        ["outcome"],
        registry=r,
    )
    return sent, latency, subscriptions


class PushMetrics:
    """A push worker's figures (dispatch/push_worker.py): the engine's push metrics, on a
    registry of its own with the process's (CPU, memory, open files, collections)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.push_sent, self.push_latency, self.push_subscriptions = _push_metrics(self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# A batch holds at most [gateway] max_moves (350 at most) moves.
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 150, 200, 250, 300, 350)
# Redis answers in well under a millisecond when healthy; its timeout is seconds.
_REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# A batch waits at most [gateway] flush_s (25 ms by default) plus the Redis write.
_HOLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    """A location gateway's figures, on a registry of its own with the process's (CPU,
    memory, open files, garbage collections): what a gateway costs is half the point.

    Counts taken per location are read from the gateway when scraped (`count`), so that
    a location costs no more than it did; what is observed per batch or per rejection is
    observed as it happens.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self._counts = _Counts()
        r.register(self._counts)
        self.rejected = Counter(
            "dispatch_gateway_locations_rejected_total",
            "Locations refused and answered on <root>/rejected, by reason code "
            "(the engine's codes: malformed, out_of_range, outside_area, ...)",
            ["reason"],
            registry=r,
        )
        self.batch_moves = Histogram(
            "dispatch_gateway_batch_moves",
            "Moves (one volunteer's newest position each) per batch published to the engine",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.held = Histogram(
            "dispatch_gateway_receipt_to_publish_seconds",
            "From the receipt of the oldest location in a batch to the batch's publish "
            "(one observation per batch: the longest any of its moves waited)",
            buckets=_HOLD_BUCKETS,
            registry=r,
        )
        self.redis_write = Histogram(
            "dispatch_gateway_redis_write_seconds",
            "Time to store one flush's positions in Redis (writes that succeeded)",
            buckets=_REDIS_BUCKETS,
            registry=r,
        )
        self.redis_failures = Counter(
            "dispatch_gateway_redis_failures_total",
            "Writes of positions to Redis that failed (the positions are kept and written "
            "with the next flush; the engine gets its batches all the same)",
            registry=r,
        )
        self.publish_failures = Counter(
            "dispatch_gateway_publish_failures_total",
            "Messages not published because the broker was not connected, by topic "
            "(moves, rejected)",
            ["topic"],
            registry=r,
        )
        self.unsaved = Gauge(
            "dispatch_gateway_unsaved_positions",
            "Positions held back while Redis is down, waiting to be stored (0: all stored)",
            registry=r,
        )

    def count(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A counter ``read`` when scraped (``name`` without its ``_total``)."""
        self._counts.add(name, help_text, read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Counts(Collector):
    """Counters whose values live elsewhere, read at each scrape."""

    def __init__(self) -> None:
        self._counters: list[tuple[str, str, Callable[[], float]]] = []

    def add(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._counters.append((name, help_text, read))

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text, read in self._counters:
            yield CounterMetricFamily(name, help_text, value=read())
