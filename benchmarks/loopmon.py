"""Diagnostics for a load test: garbage-collector pauses and event-loop stalls, to a file.

Not part of the engine. To use it, make a copy of the engine (``cp -r dispatch geo config
pyproject.toml simulators /tmp/inst/``), put this file in it as ``dispatch/loopmon.py``,
add ``import dispatch.loopmon`` as the first line of its ``dispatch/__main__.py``, and run
``LOOPMON=/tmp/mon.log benchmarks/load_test.py --start-servers --engine-dir /tmp/inst ...``.

Lines written (times are ``time.time()``, durations ms):

- ``gc <t> gen<N> <ms>``: a collection of generation N that took over 0.5 ms
  (``gc.callbacks``), automatic or explicit;
- ``lag <t> <ms>``: a 1 ms ``asyncio.sleep`` that came back over 2 ms late, i.e. the loop
  was held that long by something else (the task costs ~2 % of a core);
- ``flush <t> <positions> <ms>``: one position flush, start to end (including the wait
  for Redis, so an upper bound on how long it held the loop), through the engine's
  ``on_positions_flushed`` hook.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

from dispatch import service as _service

_out = open(os.environ.get("LOOPMON", "loopmon.log"), "w", buffering=1)  # noqa: SIM115
_started = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    if took > 0.0005:
        _out.write(f"gc {time.time():.3f} gen{info['generation']} {took * 1e3:.2f}\n")


async def _lag() -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late = time.perf_counter() - start - 0.001
        if late > 0.002:
            _out.write(f"lag {time.time():.3f} {late * 1e3:.2f}\n")


_run = _service.Service.run


def _on_flush(count: int, took_s: float) -> None:
    _out.write(f"flush {time.time():.3f} {count} {took_s * 1e3:.2f}\n")


async def _monitored_run(self: _service.Service, stop: asyncio.Event) -> None:
    self.engine.on_positions_flushed = _on_flush  # the engine's public diagnostics hook
    task = asyncio.ensure_future(_lag())
    try:
        await _run(self, stop)
    finally:
        task.cancel()


gc.callbacks.append(_on_gc)
_service.Service.run = _monitored_run  # type: ignore[method-assign]
