"""Batches of moves: what a location gateway hands the engine (docs/deployment.md).

A gateway (dispatch/gateway.py) validates each volunteer's location with the engine's
own codec, stores it in Redis, and publishes the newest position of each volunteer it
received in the last ~25 ms as one message on ``<root>/internal/moves`` (QoS 1): a JSON
array of moves, each itself an array::

    [[volunteer_id, lat, lon, accuracy_m or null, t], ...]

``t`` is when the gateway received the location (Unix seconds, the time the position
is stored with, as the engine stores its own). At most one move per volunteer and at
most ``MAX_MOVES`` moves per batch; the payload stays under the broker's 64 KiB packet
limit (the longest move, a 64-character id and every number at full length, is under
170 bytes).

Only gateways may publish on that topic (the broker's ACL); still, the engine decodes a
batch with `decode_moves`, which refuses anything malformed as a whole (`BadBatch`):
the engine then drops the batch and counts it. A batch carries nothing a volunteer
sends that the codec did not check: ids, coordinates and accuracies are checked again
by `LocationUpdate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import orjson

from dispatch.model import LocationUpdate

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_MOVES",
    "BadBatch",
    "Move",
    "decode_moves",
    "encode_moves",
    "split",
]

# The most moves one batch may carry, and its most bytes (the shipped broker's
# max_packet_size is 65536; the topic and headers take the rest).
MAX_MOVES = 350
MAX_BATCH_BYTES = 64_000

Move = tuple[str, float, float, float | None, float]  # (volunteer id, lat, lon, accuracy, t)


class BadBatch(ValueError):
    """A batch of moves that is not what a gateway sends; the reason says what is wrong."""


def encode_moves(moves: Iterable[Move]) -> bytes:
    """One batch's payload (at most ``MAX_MOVES`` moves: the caller splits)."""
    return orjson.dumps([list(m) for m in moves])


def decode_moves(payload: bytes, *, now: float, future_tolerance_s: float) -> list[LocationUpdate]:
    """The moves of one batch, each a `LocationUpdate` whose ``ts`` is when it was received.

    Raises BadBatch for anything else: not a JSON array, too many moves or bytes, a move
    that is not ``[id, lat, lon, accuracy or null, t]`` with a valid id and numbers in
    range, a time further than ``future_tolerance_s`` ahead of ``now``, or a volunteer
    twice.
    """
    if len(payload) > MAX_BATCH_BYTES:
        raise BadBatch(f"batch is {len(payload)} bytes; at most {MAX_BATCH_BYTES} allowed")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadBatch(f"batch is not JSON: {exc}") from None
    if not isinstance(body, list):
        raise BadBatch("batch must be a JSON array of moves")
    if len(body) > MAX_MOVES:
        raise BadBatch(f"batch has {len(body)} moves; at most {MAX_MOVES} allowed")
    moves: list[LocationUpdate] = []
    seen: set[str] = set()
    latest = now + future_tolerance_s
    for i, move in enumerate(body):
        moves.append(_move(i, move, latest))
        if moves[-1].volunteer_id in seen:
            raise BadBatch(f"move {i}: volunteer {moves[-1].volunteer_id!r} moves twice")
        seen.add(moves[-1].volunteer_id)
    return moves


def _move(i: int, move: object, latest: float) -> LocationUpdate:
    if not isinstance(move, list) or len(move) != 5:
        raise BadBatch(f"move {i} must be [volunteer_id, lat, lon, accuracy_m or null, t]")
    vid, lat, lon, accuracy, t = move
    if not isinstance(vid, str):
        raise BadBatch(f"move {i}: volunteer_id must be a string")
    floats = type(lat) is float and type(lon) is float and type(t) is float
    if not (floats and (accuracy is None or type(accuracy) is float)):
        # Anything but floats (a gateway sends floats) is checked here; a float's range,
        # and so its being finite, by LocationUpdate below (5,000 moves a second).
        for name, value in (("lat", lat), ("lon", lon), ("t", t)):
            if not _number(value):
                raise BadBatch(f"move {i}: {name} must be a finite number")
        if accuracy is not None and not _number(accuracy):
            raise BadBatch(f"move {i}: accuracy_m must be a finite number or null")
    if t > latest:
        raise BadBatch(f"move {i}: t is in the future")
    try:
        return LocationUpdate(vid, lat, lon, ts=t, accuracy_m=accuracy)
    except (TypeError, ValueError) as exc:
        raise BadBatch(f"move {i}: {exc}") from None


def _number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # orjson never yields inf or nan; checked all the same
    return isinstance(value, int) and not isinstance(value, bool)


def split(moves: Sequence[Move], size: int = MAX_MOVES) -> list[Sequence[Move]]:
    """``moves`` in slices of at most ``size``."""
    return [moves[i : i + size] for i in range(0, len(moves), size)]
