"""The service keeps its long-lived state out of the collector's way, but never for good."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

import dispatch.service
from dispatch.config import load_config
from dispatch.service import Service


class _Node:
    """Something that can be in a cycle and be watched through a weak reference."""

    other: _Node | None = None


@pytest.fixture
def service() -> Iterator[Service]:
    # Constructing the service connects to nothing; only run() does.
    yield Service(load_config(env={}))
    gc.unfreeze()


def _frozen_cycle() -> weakref.ref[_Node]:
    """A cycle alive at a freeze, then dropped: reference counting alone never frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.collect()
    gc.freeze()
    return weakref.ref(a)


def test_a_cycle_frozen_alive_is_collected_at_the_next_thaw(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    watched = _frozen_cycle()
    service._frozen_at = 0.0
    service._freeze_heap()  # a freeze, no thaw yet: the cycle stays
    assert watched() is not None
    monkeypatch.setattr(dispatch.service, "_THAW_S", 0.0)
    service._frozen_at = 0.0
    service._freeze_heap()
    assert watched() is None


def test_garbage_is_never_frozen(service: Service) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    watched = weakref.ref(a)
    del a, b
    service._frozen_at = 0.0
    service._freeze_heap()  # collects before it freezes
    assert watched() is None
