"""benchmarks/load_test.py says why a step is not ok, with the likely cause (issue 17)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from load_test import StepResult, verdict

ARGS = argparse.Namespace(max_loss=0, max_p99_ms=10.0, alert_timeout=5.0, max_location_loss=0.05)


def step(p50: float, p99: float, cpu: float | None, **kw: object) -> StepResult:
    fields: dict[str, object] = {
        "location_rate": 0.0,
        "incident_rate": 1.0,
        "duration_s": 10.0,
        "locations_sent": 0,
        "locations_sent_per_s": 0.0,
        "locations_ingested_per_s": 0.0,
        "publisher_max_behind_s": 0.0,
        "incidents": 10,
        "alerted": 10,
        "lost": 0,
        "lost_ids": [],
        "alerts_received": 10,
        "rejected": 0,
        "rejected_reasons": {},
        "latency_ms": {"p50": p50, "p99": p99, "p99.9": p99, "max": p99},
        "engine_decision_p99_le_ms": 1.0,
        "engine_cpu_percent": cpu,
        "engine_rss_mb": 100.0,
    }
    fields.update(kw)
    return StepResult(**fields)  # type: ignore[arg-type]


def test_a_40_ms_floor_from_an_idle_engine_names_nagle_and_the_fix() -> None:
    why = verdict(step(41.0, 46.0, 3.0), ARGS, 0.0)
    assert why[0] == "p99 46.0 ms is over --max-p99-ms 10"
    assert "set_tcp_nodelay true" in why[1]
    assert "docs/deployment.md" in why[1]


def test_a_saturated_engine_is_named_as_such_not_as_nagle() -> None:
    why = verdict(step(41.0, 400.0, 97.0), ARGS, 0.0)
    assert not any("nodelay" in w for w in why)
    assert "saturated" in why[1]


def test_a_good_step_has_no_reasons_and_lost_statuses_name_the_broker_queue() -> None:
    assert verdict(step(0.8, 2.0, 20.0), ARGS, 0.0) == []
    why = verdict(step(0.8, 2.0, 20.0, herd_sent=1000, herd_lost=10), ARGS, 0.0)
    assert len(why) == 1
    assert "max_queued_messages" in why[0]
