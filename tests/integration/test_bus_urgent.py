"""Urgent messages (incident reports) on a real broker: in their place while the engine
keeps up, ahead of a backlog when it does not (issue 16, "reports first"); behind a
backlog, locations are shed but the location gateways' batches of moves never are."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt

import dispatch.bus
from dispatch.bus import Bus
from dispatch.config import load_config
from dispatch.service import Service, _is_location


async def _received_order(
    mqtt_url: str,
    topic_root: str,
    before: int,
    after: tuple[str, ...] = ("incidents/report",),
    service: Service | None = None,
    behind: list[bool] | None = None,
) -> list[str]:
    """``before`` statuses then the ``after`` topics, all waiting before the handler takes
    the first batch (it is held until they were sent); the topics in the order it got
    them. With ``service``, the bus runs with the service's own choice of what goes
    first and what is shed."""
    got: list[str] = []
    done = asyncio.Event()
    sent = asyncio.Event()
    report = f"{topic_root}/incidents/report"
    expected = before + len(after)

    async def handle_batch(batch: list[tuple[str, bytes]]) -> None:
        await sent.wait()  # a busy engine: everything else arrives meanwhile
        got.extend(topic for topic, _payload in batch)
        if behind is not None:
            behind.append(bus.behind)
        if len(got) >= expected:
            done.set()

    async def handle(topic: str, payload: bytes) -> None:  # pragma: no cover - unused
        raise AssertionError("handle_batch takes everything")

    bus = Bus(
        mqtt_url,
        client_id=f"urgent-{topic_root}",
        subscriptions=[(f"{topic_root}/#", 1)],
        protocol=4,
    )
    if service is None:
        run = bus.run(handle, handle_batch=handle_batch, urgent=lambda topic: topic == report)
    else:
        run = bus.run(
            handle, handle_batch=handle_batch, urgent=service.urgent, sheddable=_is_location
        )
    task = asyncio.create_task(run)
    try:
        await asyncio.wait_for(bus.ready.wait(), 10)
        host, port = mqtt_url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port)) as client:
            for i in range(before):
                await client.publish(f"{topic_root}/volunteers/v{i}/status", b"{}", qos=1)
            for topic in after:
                await client.publish(f"{topic_root}/{topic}", b"{}", qos=1)
            await asyncio.sleep(0.5)  # delivered to the bus's client
            sent.set()
            with contextlib.suppress(TimeoutError):  # what was shed never comes
                await asyncio.wait_for(done.wait(), 30 if service is None else 5)
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
    behind: list[bool] = []
    got = await _received_order(mqtt_url, topic_root, 3000, behind=behind)
    # Behind while more than a batch waited, and no longer once it was handled.
    assert behind[1] is True
    assert behind[-1] is False
    place = got.index(f"{topic_root}/incidents/report")
    # Behind the batch that was being handled when it arrived, not behind 3,000 statuses.
    assert place <= 32, place
    statuses = [t for t in got if t.endswith("/status")]
    assert statuses == [f"{topic_root}/volunteers/v{i}/status" for i in range(3000)]


async def test_behind_a_backlog_locations_are_shed_but_never_a_gateway_s_batch(
    mqtt_url: str, topic_root: str
) -> None:
    # Run as the engine does with gateways: a batch is only merged into the moves
    # waiting (cheap), so it goes first like a report, where a location is dropped.
    service = Service(
        load_config(env={"DISPATCH_TOPIC_ROOT": topic_root, "DISPATCH_GATEWAY_ENABLED": "true"})
    )
    backlog = dispatch.bus._SHED_AT + 500
    after = ("volunteers/v-late/location", "internal/moves", "incidents/report")
    got = await _received_order(mqtt_url, topic_root, backlog, after, service=service)
    assert f"{topic_root}/volunteers/v-late/location" not in got  # shed
    # Behind at most the batches handed over while they arrived, not 5,500 statuses.
    place = got.index(f"{topic_root}/internal/moves")
    assert place <= 64, place
    assert got[place + 1] == f"{topic_root}/incidents/report"
    statuses = [t for t in got if t.endswith("/status")]
    assert statuses == [f"{topic_root}/volunteers/v{i}/status" for i in range(backlog)]
