"""The load-testing scripts run against real servers: a short smoke run, not a timed test.

The figures belong in benchmarks/RESULTS.md; here only that the scripts work end to end
and that what they report is sane (a tiny load is fully alerted, nothing lost).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import servers

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(args: list[str], timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_load_test_against_an_engine_it_starts(
    mqtt_url: str, redis_url: str, topic_root: str, tmp_path: Path
) -> None:
    out = tmp_path / "load.json"
    done = _run(
        [
            str(BENCHMARKS / "load_test.py"),
            "--start-engine",
            "--mqtt",
            mqtt_url,
            "--redis",
            redis_url,
            "--topic-root",
            topic_root,
            "--volunteers",
            "300",
            "--location-rate",
            "200",
            "--incident-rate",
            "5",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            # Not a timed test: the shared CI machine decides the latency.
            "--max-p99-ms",
            "5000",
            "--max-location-loss",
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| locations/s offered |" in done.stdout
    report = json.loads(out.read_text())
    assert report["registration_s"] > 0
    (step,) = report["steps"]
    assert step["incidents"] == 10
    assert step["alerted"] == 10
    assert step["lost"] == 0
    assert step["rejected"] == 0
    assert step["alerts_received"] >= 10
    latency = step["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 5000
    # The engine took in (nearly) every location sent at this trickle.
    assert step["locations_sent"] > 0
    assert step["locations_ingested_per_s"] > 0.5 * step["location_rate"]
    assert step["engine_cpu_percent"] is not None
    assert step["engine_rss_mb"] > 10
    # Where the slowest waited, from the engine's own times: the median of each leg is
    # within the slowest report's latency (one clock; the engine's times are in ms).
    waited = step["slowest_waited"]
    assert set(waited) == {"to_engine", "to_phone"}
    slowest = max(ms for ms, _at in step["slowest"])
    assert all(-2 <= ms <= slowest + 2 for ms in waited.values()), (waited, slowest)
    assert sum(waited.values()) > 0
    assert "slowest reports (median)" in done.stderr


def test_load_test_ramp_reports_a_saturation_point_and_plots(
    mqtt_url: str, redis_url: str, topic_root: str, tmp_path: Path
) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        servers.skip_or_fail("the plots need matplotlib (.venv/bin/pip install matplotlib)")
    out, png = tmp_path / "ramp.json", tmp_path / "ramp.png"
    done = _run(
        [
            str(BENCHMARKS / "load_test.py"),
            "--start-engine",
            "--mqtt",
            mqtt_url,
            "--redis",
            redis_url,
            "--topic-root",
            topic_root,
            "--volunteers",
            "200",
            "--location-rate",
            "50",
            "--incident-rate",
            "2",
            "--duration",
            "1.5",
            "--warmup",
            "0.2",
            "--ramp",
            "--ramp-factors",
            "1,2",
            "--max-p99-ms",
            "5000",
            "--max-location-loss",
            "0.5",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [s["incident_rate"] for s in report["steps"]] == [2, 4]
    assert report["saturation"] == {"location_rate": 100, "incident_rate": 4}
    assert "saturation: held up to 100 locations/s" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_test_explains_bad_options() -> None:
    done = _run([str(BENCHMARKS / "load_test.py"), "--start-engine", "--mqtt", "mqtt://x"])
    assert done.returncode == 2
    assert "--start-engine needs --mqtt and --redis" in done.stderr


def test_geosearch_comparison_runs(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "geo.json"
    done = _run(
        [
            str(BENCHMARKS / "bench_geosearch.py"),
            "--redis",
            redis_url,
            "--quick",
            "--json",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| query, Redis GEOSEARCH (one round trip) |" in done.stdout
    result = json.loads(out.read_text())
    # Both designs find the same volunteers (ties at equal distance aside).
    assert result["same_k_volunteers"] > 0.95
    by_what = {row["what"]: row for row in result["rows"]}
    assert by_what["query, in process (geo.VolunteerIndex)"]["ratio_p50"] == 1.0
    assert all(row["p50_us"] > 0 for row in result["rows"])


def test_load_test_herd_counts_the_statuses_and_the_reports(
    mqtt_url: str, redis_url: str, topic_root: str, tmp_path: Path
) -> None:
    out = tmp_path / "herd.json"
    done = _run(
        [
            str(BENCHMARKS / "load_test.py"),
            "--start-engine",
            "--mqtt",
            mqtt_url,
            "--redis",
            redis_url,
            "--topic-root",
            topic_root,
            "--volunteers",
            "300",
            "--location-rate",
            "100",
            "--incident-rate",
            "5",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--herd",
            "300",
            "--herd-within",
            "1",
            "--location-accuracy",
            "15",
            "--max-p99-ms",
            "5000",
            "--max-location-loss",
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (step,) = json.loads(out.read_text())["steps"]
    assert step["herd_sent"] == 300
    assert step["herd_lost"] == 0
    assert step["lost"] == 0
    assert step["why"] == []


@pytest.mark.parametrize("pushers", [0, 1])
def test_load_test_pushes_every_alert_to_its_volunteers_browser(
    mqtt_url: str, redis_url: str, topic_root: str, tmp_path: Path, pushers: int
) -> None:
    """--push: half the volunteers have a Web Push subscription; each alert to one of them
    is pushed, encrypted, to the stand-in push service, and timed from its MQTT alert.
    --pushers 1: by a `dispatch pusher` process, and the engine pushes none itself."""
    out = tmp_path / "push.json"
    done = _run(
        [
            str(BENCHMARKS / "load_test.py"),
            "--start-engine",
            "--mqtt",
            mqtt_url,
            "--redis",
            redis_url,
            "--topic-root",
            topic_root,
            "--volunteers",
            "300",
            "--location-rate",
            "50",
            "--incident-rate",
            "5",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--push",
            "0.5",
            "--pushers",
            str(pushers),
            "--max-p99-ms",
            "5000",
            "--max-location-loss",
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (step,) = json.loads(out.read_text())["steps"]
    assert step["lost"] == 0
    # Some alerts went to the subscribed half: each of those, and only those, was pushed.
    assert 0 < step["push_due"] < step["alerts_received"]
    assert step["push_received"] == step["push_due"]
    # The engine's own count: every push, or none when a pusher made them.
    assert step["push_outcomes"]["sent"] == (0 if pushers else step["push_due"])
    assert step["pushers"] == pushers
    assert (step["pushers_cpu_percent"] is not None) == bool(pushers)
    delays = step["alert_to_push_ms"]
    # (a push may beat its alert through the broker: below zero, by a little)
    assert -1000 < delays["p50"] <= delays["p99"] <= delays["max"] < 5000
    assert "web push:" in done.stderr


def test_restart_benchmark_times_ready_and_the_first_alert(
    mqtt_url: str, redis_url: str, topic_root: str, tmp_path: Path
) -> None:
    out = tmp_path / "restart.json"
    done = _run(
        [
            str(BENCHMARKS / "restart.py"),
            "--mqtt",
            mqtt_url,
            "--redis",
            redis_url,
            "--topic-root",
            topic_root,
            "--volunteers",
            "500",
            "--json",
            str(out),
        ]
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["volunteers"] == 500
    assert 0 < result["after_kill9_ready_s"] < 60
    assert result["first_alert_ms"] is not None
