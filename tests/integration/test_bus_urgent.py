"""Urgent messages (incident reports) on a real broker: in their place while the engine
keeps up, ahead of a backlog when it does not (issue 16, "reports first")."""

from __future__ import annotations

import asyncio

import aiomqtt

from dispatch.bus import Bus


async def _received_order(mqtt_url: str, topic_root: str, before: int) -> list[str]:
    """``before`` statuses then one report, all waiting before the handler takes the
    first batch (it is held until they were sent); the topics in the order it got them."""
    got: list[str] = []
    done = asyncio.Event()
    sent = asyncio.Event()
    report = f"{topic_root}/incidents/report"

    async def handle_batch(batch: list[tuple[str, bytes]]) -> None:
        await sent.wait()  # a busy engine: everything else arrives meanwhile
        got.extend(topic for topic, _payload in batch)
        if len(got) >= before + 1:
            done.set()

    async def handle(topic: str, payload: bytes) -> None:  # pragma: no cover - unused
        raise AssertionError("handle_batch takes everything")

    bus = Bus(
        mqtt_url,
        client_id=f"urgent-{topic_root}",
        subscriptions=[(f"{topic_root}/#", 1)],
        protocol=4,
    )
    task = asyncio.create_task(
        bus.run(handle, handle_batch=handle_batch, urgent=lambda topic: topic == report)
    )
    try:
        await asyncio.wait_for(bus.ready.wait(), 10)
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port)) as client:
            for i in range(before):
                await client.publish(f"{topic_root}/volunteers/v{i}/status", b"{}", qos=1)
            await client.publish(report, b"{}", qos=1)
            await asyncio.sleep(0.3)  # delivered to the bus's client
            sent.set()
            await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return got


async def test_a_report_keeps_its_place_behind_a_few_statuses(
    mqtt_url: str, topic_root: str
) -> None:
    got = await _received_order(mqtt_url, topic_root, 20)
    assert got[-1].endswith("/incidents/report")
    assert got[:-1] == [f"{topic_root}/volunteers/v{i}/status" for i in range(20)]


async def test_a_report_overtakes_a_backlog_of_statuses(mqtt_url: str, topic_root: str) -> None:
    got = await _received_order(mqtt_url, topic_root, 3000)
    place = got.index(f"{topic_root}/incidents/report")
    # Behind the batch that was being handled when it arrived, not behind 3,000 statuses.
    assert place <= 32, place
    statuses = [t for t in got if t.endswith("/status")]
    assert statuses == [f"{topic_root}/volunteers/v{i}/status" for i in range(3000)]
