"""The incident lifecycle: its states and the moves allowed between them, as one table.

Rules of this file:

- The table below is the whole lifecycle. Code elsewhere never compares states to
  decide whether a move is legal; it calls :func:`advance`, which raises
  :class:`~dispatch.errors.InvalidTransition` for a move the table does not allow.
- ``escalated`` is a state a person in the control room must look at, not an end:
  waves may still be out when the engine escalates (a late responder is better than
  none), so an accept can still move an escalated incident to ``assigned``.
- ``resolved`` and ``cancelled`` are the only ends; nothing leaves them.
- Moving to the state an incident is already in is not a move (and not an error):
  the lifecycle is idempotent so that replays after a restart are harmless.
"""

from __future__ import annotations

from enum import StrEnum

from dispatch.errors import InvalidTransition

__all__ = ["ENDED", "OPEN_STATES", "TRANSITIONS", "State", "advance", "can_advance", "mermaid"]


class State(StrEnum):
    OPEN = "open"  # stored, nobody alerted yet
    ALERTING = "alerting"  # alerts are out, nobody confirmed
    ASSIGNED = "assigned"  # at least one responder confirmed (waves go on until enough)
    ON_SCENE = "on_scene"  # the first responder has arrived
    RESOLVED = "resolved"
    ESCALATED = "escalated"  # a person must act: nobody could be found or accepted in time
    CANCELLED = "cancelled"


_S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    _S.OPEN: frozenset({_S.ALERTING, _S.ASSIGNED, _S.ESCALATED, _S.RESOLVED, _S.CANCELLED}),
    _S.ALERTING: frozenset({_S.ASSIGNED, _S.ESCALATED, _S.RESOLVED, _S.CANCELLED}),
    _S.ASSIGNED: frozenset({_S.ON_SCENE, _S.ESCALATED, _S.RESOLVED, _S.CANCELLED}),
    _S.ON_SCENE: frozenset({_S.ESCALATED, _S.RESOLVED, _S.CANCELLED}),
    # An escalated incident is still worked on: by late acceptors, by a hand assignment,
    # by a responder who gets there after all, or by a new wave when volunteers appear.
    _S.ESCALATED: frozenset({_S.ALERTING, _S.ASSIGNED, _S.ON_SCENE, _S.RESOLVED, _S.CANCELLED}),
    _S.RESOLVED: frozenset(),
    _S.CANCELLED: frozenset(),
}

ENDED: frozenset[State] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
OPEN_STATES: frozenset[State] = frozenset(State) - ENDED


def can_advance(current: State, new: State) -> bool:
    """Whether ``current -> new`` is allowed (staying put always is)."""
    return new == current or new in TRANSITIONS[current]


def advance(incident_id: str, current: State, new: State) -> State:
    """Return ``new`` if the table allows ``current -> new``, else raise InvalidTransition."""
    if not can_advance(current, new):
        raise InvalidTransition(incident_id, current, new)
    return new


def mermaid() -> str:
    """The table as a Mermaid state diagram, for the docs."""
    lines = ["stateDiagram-v2", f"    [*] --> {State.OPEN}"]
    for source, targets in TRANSITIONS.items():
        lines.extend(f"    {source} --> {target}" for target in sorted(targets))
    lines.extend(f"    {end} --> [*]" for end in sorted(ENDED))
    return "\n".join(lines)
