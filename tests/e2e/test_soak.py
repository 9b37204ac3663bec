"""Soak: the engine under moderate load for a while (DISPATCH_SOAK_SECONDS, default 60;
CI runs 600), sampled once a second.

Load: 500 volunteers, 50 location updates per second, 2 incidents per second (each
resent until its receipt), every alert accepted, every assigned incident resolved a
second later. The event log is capped low (1,000 entries) so that the cap is exercised.

Criteria, on the samples after the first third (warm-up):

- memory flat: the median RSS of the last third is within 10 % (and at most 8 MiB)
  of the median of the second third;
- open files flat: the median fd count of the last third is at most the second third's
  plus 2 (short-lived HTTP connections come and go);
- the event log stays within its cap (Redis trims approximately: cap + one node, 100);
- every incident accounted for: each report's id is stored exactly once, the engine
  counted exactly that many created, and each one has ended or is still open for a
  reason (escalated, or reported in the last 30 s and still being worked on);
- nobody committed to two incidents (what the log still holds, and the claims left).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from e2e_harness import Engine, uid
from loadgen import ENDED, Load, audit, percentile
from servers import next_redis_db

DURATION_S = float(os.environ.get("DISPATCH_SOAK_SECONDS", "60"))
EVENT_LOG_CAP = 1000
SAMPLE_EVERY_S = 1.0

pytestmark = pytest.mark.timeout(int(DURATION_S) + 240)


@pytest.fixture
def soak_engine(
    mqtt_url: str, redis_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Engine]:
    engine = Engine(
        mqtt_url=mqtt_url,
        redis_url=f"{redis_server}/{next_redis_db()}",
        topic_root=uid("soak"),
        log_path=tmp_path / "engine.log",
        env={
            "DISPATCH_INCIDENTS_EVENT_LOG_MAX": str(EVENT_LOG_CAP),
            # Logging every event at info would make the log file the biggest thing here.
            "DISPATCH_LOG_LEVEL": "warning",
        },
    )
    try:
        engine.start()
        yield engine
    finally:
        engine.ensure_dead()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n----- engine log (tail)\n{engine.log_tail(80)}")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _thirds(values: list[float]) -> tuple[list[float], list[float], list[float]]:
    n = len(values) // 3
    return values[:n], values[n : 2 * n], values[2 * n :]


def test_soak(soak_engine: Engine, mqtt_url: str) -> None:
    engine = soak_engine
    assert engine.proc is not None
    pid = engine.proc.pid
    load = Load(
        mqtt_url,
        engine.topic_root,
        lambda: [engine.base],
        volunteers=500,
        rate=2.0,
        location_rate=50.0,
        resolve_after_s=1.0,
        radius_m=1000.0,
    )
    rss: list[float] = []
    fds: list[float] = []
    xlen: list[int] = []
    samples_at: list[float] = []
    events_key = f"{engine.topic_root}:events"
    with redis.Redis.from_url(engine.redis_url, socket_timeout=5) as r:
        load.start()
        try:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < DURATION_S:
                assert engine.proc.poll() is None, "the engine died:\n" + engine.log_tail()
                rss.append(_rss_kib(pid) / 1024)
                fds.append(len(os.listdir(f"/proc/{pid}/fd")))
                xlen.append(int(r.xlen(events_key)))
                samples_at.append(elapsed)
                time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - started - elapsed)))
            load.paused.set()
            missing = load.wait_receipts(30)
        finally:
            load.stop()
        now = time.time()
        open_ids = {i.decode() for i in r.zrange(f"{engine.topic_root}:incidents:open", 0, -1)}
    assert not missing, f"{len(missing)} reports never got a receipt: {missing[:10]}"
    found = audit(engine.redis_url, f"{engine.topic_root}:")
    created = sum(
        v
        for (name, labels), v in engine.metrics().items()
        if name == "dispatch_incidents_total" and ("outcome", "created") in labels
    )
    s = load.stats
    _, mem2, mem3 = _thirds(rss)
    _, fd2, fd3 = _thirds(fds)
    m2, m3 = statistics.median(mem2), statistics.median(mem3)
    f2, f3 = statistics.median(fd2), statistics.median(fd3)
    print(
        f"\n[soak {DURATION_S:.0f}s] reports {s.sent}, receipts {s.receipts}, alerts {s.alerts}, "
        f"go {s.gos}, resolved {s.resolved}, locations {s.locations}; receipt p50 "
        f"{percentile(s.receipt_latency_s, 0.5) * 1000:.1f} ms p99 "
        f"{percentile(s.receipt_latency_s, 0.99) * 1000:.1f} ms\n"
        f"  RSS MiB: first {rss[0]:.1f}, 2nd-third median {m2:.1f}, last-third median {m3:.1f}, "
        f"max {max(rss):.1f}\n"
        f"  fds: 2nd-third median {f2:.0f}, last-third median {f3:.0f}, max {max(fds):.0f}\n"
        f"  XLEN: max {max(xlen)}, last {xlen[-1]} (cap {EVENT_LOG_CAP})"
    )

    # Memory flat after warm-up.
    assert m3 <= m2 * 1.10, f"RSS grew more than 10 %: {m2:.1f} -> {m3:.1f} MiB"
    assert m3 - m2 <= 8, f"RSS grew more than 8 MiB: {m2:.1f} -> {m3:.1f} MiB"
    # No growth in open files.
    assert f3 <= f2 + 2, f"open fds grew: {f2} -> {f3}"
    # The event log stays within its cap.
    assert max(xlen) <= EVENT_LOG_CAP + 100, f"event log grew to {max(xlen)}"

    # Every incident accounted for.
    with load.lock:
        sent = set(load.sent)
    assert set(found.incidents) == sent, (
        f"stored {len(found.incidents)}, reported {len(sent)}: "
        f"missing {sorted(sent - set(found.incidents))[:5]}, "
        f"unknown {sorted(set(found.incidents) - sent)[:5]}"
    )
    assert created == len(sent), f"engine counted {created} created, {len(sent)} reported"
    unaccounted = []
    for iid, rec in found.incidents.items():
        state = rec["state"]
        if state in ENDED:
            assert rec["end_reason"], (iid, rec)
            assert iid not in open_ids, f"{iid} ended but still in incidents:open"
        elif state == "escalated":
            assert rec["escalation_reason"], (iid, rec)
        elif now - rec["received_at"] > 30:
            unaccounted.append(f"{iid}: {state} for {now - rec['received_at']:.0f}s")
        if state not in ENDED:
            assert iid in open_ids, f"{iid} is {state} but not in incidents:open"
    assert not unaccounted, "incidents neither ended nor escalated:\n" + "\n".join(unaccounted)
    assert s.gos > DURATION_S, "too few assignments: the load did not exercise the engine"
    problems = found.double_bookings()
    assert not problems, "volunteers committed to two incidents:\n" + "\n".join(problems[:20])
    for vid, iid in found.claims.items():
        assert found.incidents[iid]["state"] not in ENDED, f"claim {vid} -> {iid} left over"
