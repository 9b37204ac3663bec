"""The attacks of tests/e2e/test_hostile_http.py, each in a process of its own.

    python hostile_client.py NAME BASE_URL OPTIONS_JSON

runs attack NAME against the engine at BASE_URL until its stdin closes, then prints its
figures as one JSON line. A process of its own, so that the attack takes no time from
the test's measuring of dispatch (Python threads would share one interpreter lock).
Nothing here imports the engine.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp


async def listeners(base: str, stop: asyncio.Event, n: int) -> dict[str, Any]:
    """``n`` event streams opened at once and held, never read."""
    sessions = [aiohttp.ClientSession() for _ in range(n)]
    try:
        opened = await asyncio.gather(
            *(s.get(base + "/api/events") for s in sessions), return_exceptions=True
        )
        codes = [r.status for r in opened if isinstance(r, aiohttp.ClientResponse)]
        await stop.wait()
        for r in opened:
            if isinstance(r, aiohttp.ClientResponse):
                r.close()
        return {"200": codes.count(200), "503": codes.count(503)}
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def slow(base: str, stop: asyncio.Event, slowloris: int, deaf: int) -> dict[str, Any]:
    """Headers a byte every 0.2 s, never finished; event streams that are never read."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    cut_off = 0

    async def one_slowloris() -> None:
        nonlocal cut_off
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return
        request = b"GET /api/incidents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
        try:
            for byte in request:
                if stop.is_set():
                    return
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        except OSError:  # reset or broken pipe: the engine cut it off
            cut_off += 1
        finally:
            writer.close()

    async def one_deaf() -> None:
        try:
            _, writer = await asyncio.open_connection(host, int(port), limit=1024)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: 0\r\n\r\n")
            await stop.wait()
            writer.close()
        except OSError:
            pass

    tasks = [asyncio.create_task(one_slowloris()) for _ in range(slowloris)]
    tasks += [asyncio.create_task(one_deaf()) for _ in range(deaf)]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"cut_off": cut_off}


async def pages(base: str, stop: asyncio.Event, first: str) -> dict[str, Any]:
    """The biggest pages of everything, three clients each, over and over."""
    paths = [
        "/api/incidents?since=0&limit=1000",
        f"/api/incidents/{first}",
        "/api/figures?since=0",
        "/api/coverage?skill=first_aid",
        "/api/coverage",
        "/api/events?last_event_id=0",
    ]
    done = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:

        async def hammer(path: str) -> None:
            nonlocal done
            while not stop.is_set():
                try:
                    async with s.get(base + path) as r:
                        if path.startswith("/api/events"):
                            await r.content.read(200_000)
                        else:
                            await r.read()
                    done += 1
                except (aiohttp.ClientError, TimeoutError):
                    pass

        await asyncio.gather(*(hammer(p) for p in paths for _ in range(3)))
    return {"requests": done}


async def coverage(base: str, stop: asyncio.Event, skill: str) -> dict[str, Any]:
    """The coverage map for one skill, asked for again and again (what trilateration needs)."""
    answers = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            async with s.get(f"{base}/api/coverage?skill={skill}") as r:
                await r.read()
                answers += r.status == 200
            await asyncio.sleep(0.1)
    return {"answers": answers}


async def places(base: str, stop: asyncio.Event) -> dict[str, Any]:
    """The address search (GET /api/places?q=), six clients without pause, with the
    longest queries it takes, queries it refuses, and whole lists of places."""
    queries = [
        "小营巷", "站 医院 杭州", "a" * 64, "小" * 64, "x" * 65, "%00", "hospital east",
        "<script>", "", "河坊街 88 号",
    ]  # fmt: skip
    counts: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:

        async def hammer(n: int) -> None:
            i = n
            while not stop.is_set():
                q = queries[i % len(queries)]
                i += 1
                path = "/api/places" if i % 7 == 0 else f"/api/places?q={q}&limit=20"
                try:
                    async with s.get(base + path) as r:
                        await r.read()
                        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["error"] = counts.get("error", 0) + 1

        await asyncio.gather(*(hammer(n) for n in range(6)))
    return counts


ATTACKS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "places": places,
    "listeners": listeners,
    "slow": slow,
    "pages": pages,
    "coverage": coverage,
}


async def main(name: str, base: str, options: dict[str, Any]) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The test closes our stdin to stop us.
    loop.run_in_executor(None, sys.stdin.read).add_done_callback(
        lambda _: loop.call_soon_threadsafe(stop.set)
    )
    return await ATTACKS[name](base, stop, **options)


if __name__ == "__main__":
    figures = asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    print(json.dumps(figures), flush=True)
