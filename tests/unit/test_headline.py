"""The one definition of the headline figure (dispatch/headline.py)."""

from __future__ import annotations

import pytest

from dispatch.headline import Outcome, headline, outcome

T0 = 1_800_000_000.0


def judge(verified_after: float | None, *, cancelled: bool = False, age: float = 600.0) -> Outcome:
    """An incident reported ``age`` seconds ago, verified on scene ``verified_after`` s in."""
    return outcome(
        reported_at=T0,
        verified_arrival_at=None if verified_after is None else T0 + verified_after,
        cancelled=cancelled,
        now=T0 + age,
        target_s=180.0,
    )


def test_one_incident_against_the_target() -> None:
    assert judge(120.0) == Outcome(needed=True, decided=True, within=True, time_s=120.0)
    assert judge(180.0).within  # the target itself is in
    late = judge(181.0)
    assert (late.decided, late.within, late.time_s) == (True, False, 181.0)
    # nobody there, the target passed: a decided miss
    assert judge(None) == Outcome(needed=True, decided=True, within=False, time_s=None)
    # nobody there yet, still within the target: undecided
    assert judge(None, age=100.0).decided is False
    # cancelled: never needed, never decided, whatever happened
    gone = judge(90.0, cancelled=True)
    assert (gone.needed, gone.decided) == (False, False)


def test_the_share_counts_unreached_incidents_as_misses() -> None:
    outcomes = [judge(100.0), judge(150.0), judge(300.0), judge(None), judge(None, age=60.0)]
    outcomes.append(judge(50.0, cancelled=True))
    h = headline(outcomes)
    assert h["needed"] == 5
    assert h["decided"] == 4
    assert h["within_target"] == 2
    assert h["within_target_share"] == 0.5  # not 2 / 3 (of those reached)
    assert h["reached"] == 3
    assert h["p50_time_to_arrival_s"] == 150.0
    assert h["p90_time_to_arrival_s"] == pytest.approx(270.0)


def test_nothing_decided_has_no_share() -> None:
    h = headline([judge(None, age=10.0), judge(None, cancelled=True)])
    assert h["within_target_share"] is None
    assert h["p50_time_to_arrival_s"] is None
    assert (h["needed"], h["decided"], h["reached"]) == (1, 0, 0)
