"""The incident lifecycle table."""

import pytest

from dispatch.errors import InvalidTransition
from dispatch.lifecycle import ENDED, OPEN_STATES, TRANSITIONS, State, advance, can_advance, mermaid

S = State

ALLOWED = [
    (S.OPEN, S.ALERTING),
    (S.OPEN, S.ESCALATED),
    (S.ALERTING, S.ASSIGNED),
    (S.ALERTING, S.ESCALATED),
    (S.ESCALATED, S.ASSIGNED),
    (S.ESCALATED, S.ALERTING),
    (S.ASSIGNED, S.ON_SCENE),
    (S.ON_SCENE, S.RESOLVED),
    (S.ALERTING, S.CANCELLED),
    (S.ASSIGNED, S.RESOLVED),
]

FORBIDDEN = [
    (S.RESOLVED, S.ALERTING),
    (S.CANCELLED, S.OPEN),
    (S.RESOLVED, S.CANCELLED),
    (S.ON_SCENE, S.ALERTING),
    (S.ASSIGNED, S.ALERTING),
    (S.ALERTING, S.OPEN),
    (S.ALERTING, S.ON_SCENE),
]


@pytest.mark.parametrize(("current", "new"), ALLOWED)
def test_allowed_moves(current: State, new: State) -> None:
    assert advance("i1", current, new) is new


@pytest.mark.parametrize(("current", "new"), FORBIDDEN)
def test_forbidden_moves_raise_with_both_states(current: State, new: State) -> None:
    assert not can_advance(current, new)
    with pytest.raises(InvalidTransition) as info:
        advance("i1", current, new)
    text = str(info.value)
    assert "i1" in text
    assert current.value in text
    assert new.value in text


def test_staying_put_is_not_a_move() -> None:
    for state in State:
        assert advance("i1", state, state) is state


def test_only_resolved_and_cancelled_end() -> None:
    assert set(ENDED) == {S.RESOLVED, S.CANCELLED}
    assert set(OPEN_STATES) == set(State) - ENDED
    # Every open state can reach an end, so nothing is stuck forever.
    for state in OPEN_STATES:
        assert TRANSITIONS[state] & ENDED


def test_mermaid_lists_every_move() -> None:
    text = mermaid()
    for source, targets in TRANSITIONS.items():
        for target in targets:
            assert f"{source} --> {target}" in text


def test_the_architecture_doc_shows_the_current_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text(
        encoding="utf-8"
    )
    assert mermaid() in doc
