"""The dispatch policy: whom to alert, how many at once, who goes, and when to escalate.

Pure functions and values. The dispatcher asks them questions; they never change anything.

- Candidates are ranked by estimated time of arrival (street distance over the
  volunteer's speed), not by straight-line distance: an e-bike 1.5 km away beats a
  walker 800 m away. Ties break on the volunteer id, so every run decides the same.
- The engine's own strategy (``waves``) sizes each wave from the chance that a
  volunteer accepts *and* is on scene within the target: acceptance, the share of
  acceptors who get there, the time to answer and to set off, and the volunteer's ETA
  against the time left. It alerts, best first, until someone very likely makes it in
  time (or the wave's cap, or the incident's alert budget, is reached).
- The fastest acceptor wins, not the first: a later acceptor who will be there sooner
  takes the place (or joins as a backup), and alerts that could still bring someone
  sooner stay open after the incident is filled.
- Nobody is alerted who could not make a useful difference (``useful_eta_s``, by
  default the 8 minutes professional responders take): the control room is told instead.

The other strategies are the published rules of the systems users compare us with
(``PLAYBOOKS``; docs/planning.md gives the sources), run on the same core so that the
simulator compares like with like.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from geo.index import PartitionedIndex
from geo.travel import TravelModel

__all__ = [
    "FIELD_RULES",
    "PLAYBOOKS",
    "Candidate",
    "Playbook",
    "Policy",
    "Rank",
    "Strategy",
    "check_field",
    "choose_wave",
    "fastest",
    "success_chance",
    "wave_size",
]


class Strategy(StrEnum):
    WAVES = "waves"  # the engine's own: waves sized from the chance of an arrival in time
    NAIVE = "naive"  # one volunteer at a time, the next only after a reply or expiry
    # The documented rules of other systems, as baselines (docs/planning.md).
    PULSEPOINT = "pulsepoint"
    GOODSAM = "goodsam"
    HEARTRUNNER = "heartrunner"
    FIRSTAED = "firstaed"
    MOBILE_RETTER = "mobile-retter"


class Rank(StrEnum):
    ETA = "eta"  # by estimated travel time (the engine's way)
    DISTANCE = "distance"  # by straight-line distance (what the other systems document)


@dataclass(frozen=True, slots=True)
class Playbook:
    """The rules of one strategy, as data the dispatcher follows."""

    rank: Rank = Rank.ETA
    first_wave: int = 0  # how many the first wave alerts; 0: sized from the chance of success
    next_wave: int = 0  # how many each later wave alerts; 0: sized
    radius_m: float | None = None  # alert only within this; None: the policy's max radius
    wave_timeout_s: float | None = None  # None: the policy's
    max_waves: int | None = None  # None: the policy's
    next_wave_only_if_unaccepted: bool = False  # later waves only while nobody has accepted
    # On a decline (or an expiry, for one-at-a-time): alert this many in its place at once,
    # 0 for none. ``replace_when_all_answered``: only once no alert is awaiting an answer.
    replace: int = 1
    replace_when_all_answered: bool = False
    goers: int | None = None  # acceptors who go in all; None: needed + policy backups
    fastest_wins: bool = True  # a later acceptor who will be there sooner takes the place
    chase_no_shows: bool = True  # an overdue responder brings a new wave
    # An alert a phone never acknowledged (protocol 1.1 receipts) brings the next best.
    replace_undelivered: bool = True
    one_at_a_time: bool = False  # the next alert only after an answer or expiry


# Sources and the reading of each rule: docs/planning.md ("The other systems' policies").
PLAYBOOKS: Mapping[Strategy, Playbook] = MappingProxyType(
    {
        Strategy.WAVES: Playbook(),
        Strategy.NAIVE: Playbook(first_wave=1, next_wave=1, fastest_wins=False, one_at_a_time=True),
        # Every qualified volunteer within 400 m at once; every acceptor goes.
        Strategy.PULSEPOINT: Playbook(
            rank=Rank.DISTANCE,
            first_wave=100,
            radius_m=400.0,
            max_waves=1,
            replace=0,
            goers=10,
            fastest_wins=False,
            chase_no_shows=False,
            replace_undelivered=False,
        ),
        # The 3 nearest; 3 more when nobody has accepted after 30 s; acceptors go.
        Strategy.GOODSAM: Playbook(
            rank=Rank.DISTANCE,
            first_wave=3,
            next_wave=3,
            wave_timeout_s=30.0,
            max_waves=3,
            next_wave_only_if_unaccepted=True,
            replace=0,
            goers=10,
            fastest_wins=False,
            chase_no_shows=False,
            replace_undelivered=False,
        ),
        # About 16 within 1.8 km at once; the first 3 acceptors go, the rest stand down.
        Strategy.HEARTRUNNER: Playbook(
            rank=Rank.DISTANCE,
            first_wave=16,
            radius_m=1800.0,
            max_waves=1,
            replace=0,
            goers=3,
            fastest_wins=False,
            chase_no_shows=False,
            replace_undelivered=False,
        ),
        # The 9 nearest; the 3 closest acceptors go.
        Strategy.FIRSTAED: Playbook(
            rank=Rank.DISTANCE,
            first_wave=9,
            max_waves=1,
            replace=0,
            goers=3,
            fastest_wins=True,
            chase_no_shows=False,
            replace_undelivered=False,
        ),
        # The 2 nearest; 20 s without a reply brings the next nearest; when both decline,
        # the next pair.
        Strategy.MOBILE_RETTER: Playbook(
            rank=Rank.DISTANCE,
            first_wave=2,
            next_wave=1,
            wave_timeout_s=20.0,
            max_waves=8,
            replace=2,
            replace_when_all_answered=True,
            goers=2,
            fastest_wins=False,
            chase_no_shows=False,
            replace_undelivered=False,
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Policy:
    strategy: Strategy = Strategy.WAVES
    target_s: float = 180.0  # report to first responder on scene
    max_radius_m: float = 3000.0  # nobody farther than this is alerted
    alert_expiry_s: float = 90.0
    wave_timeout_s: float = 20.0  # silence this long after a wave brings the next one
    acceptance_rate: float = 0.35  # expected share of alerts accepted
    wave_confidence: float = 0.95  # wanted probability that a wave brings someone in time
    max_wave_size: int = 8
    max_waves: int = 3  # after the last wave goes unanswered, escalate
    arrival_radius_m: float = 30.0
    # About a quarter of confirmed volunteers never get there: extra acceptors from the
    # waves already sent are kept as backups (no extra alerts are sent for them) ...
    backup_responders: int = 3
    # ... and a responder not on scene by accept + ETA x factor + grace is overdue: the
    # incident is treated as short of a responder and a new wave goes out.
    overdue_factor: float = 1.5
    overdue_grace_s: float = 30.0
    # Sooner than that, from their locations: a responder who, this long after accepting,
    # has come less than 20 m closer (GPS noise) or less than a quarter of the way their
    # mode should have brought them counts as overdue too. 0 turns the check off.
    stall_after_s: float = 60.0
    # What the wave sizing and "fastest wins" expect of people (docs/planning.md).
    show_rate: float = 0.72  # share of acceptors who get there
    reply_s: float = 15.0  # from alert to answer (median)
    turnout_s: float = 40.0  # from accept to setting off (median)
    # Past this ETA a volunteer makes no useful difference (professionals are there in
    # about 8 minutes): such volunteers are not alerted; the control room is told instead.
    useful_eta_s: float = 600.0
    # At most this many alerts for one incident (an alert budget; 0: no cap).
    max_alerts: int = 0
    # Protocol 1.1: a phone that always sends delivery receipts and has not acknowledged
    # an alert this long after it went out has not got it: the next best is alerted at
    # once. A responder who went offline and is not back this long after is overdue.
    delivery_timeout_s: float = 8.0
    offline_grace_s: float = 20.0

    def __post_init__(self) -> None:
        for name in FIELD_RULES:
            value = getattr(self, name)
            try:
                check_field(name, value)
            except ValueError as exc:
                raise ValueError(f"Policy.{name} must be {exc}, got {value!r}") from None

    @property
    def playbook(self) -> Playbook:
        return PLAYBOOKS[self.strategy]

    def overdue_after_s(self, eta_s: float) -> float:
        """How long after accepting a responder may take before counting as overdue."""
        return self.turnout_s + eta_s * self.overdue_factor + self.overdue_grace_s

    @property
    def reply_wait_s(self) -> float:
        """How long a wave waits for replies before the next one goes out."""
        # One at a time waits for an answer (or the alert's expiry) before moving on.
        if self.playbook.one_at_a_time:
            return self.alert_expiry_s
        return self.playbook.wave_timeout_s or self.wave_timeout_s

    @property
    def waves(self) -> int:
        return self.playbook.max_waves or self.max_waves

    @property
    def wave_cap(self) -> int:
        """The most one wave may alert: ``max_wave_size``, or the whole alert budget when
        there is one (spending it at once is what gives the best chance in time)."""
        return self.max_alerts or self.max_wave_size

    @property
    def radius_m(self) -> float:
        r = self.playbook.radius_m
        return self.max_radius_m if r is None else min(r, self.max_radius_m)

    def goers(self, needed: int) -> int:
        """How many acceptors of one incident go, backups included."""
        g = self.playbook.goers
        return needed + self.backup_responders if g is None else max(g, needed)

    def setoff_s(self) -> float:
        """Expected time from an alert to the volunteer setting off."""
        return self.reply_s + self.turnout_s


# Every Policy field's rule, checked once: by Policy itself and by the configuration
# (dispatch/config.py reads each [policy] key through ``check_field``).
FIELD_RULES: Mapping[str, tuple[str, float, float]] = MappingProxyType(
    {
        "strategy": ("strategy", 0, 0),
        "target_s": ("positive", 0, 0),
        "max_radius_m": ("positive", 0, 0),
        "alert_expiry_s": ("positive", 0, 0),
        "wave_timeout_s": ("positive", 0, 0),
        "acceptance_rate": ("share", 0, 0),
        "wave_confidence": ("share", 0, 0),
        "max_wave_size": ("whole", 1, 100),
        "max_waves": ("whole", 1, 20),
        "arrival_radius_m": ("positive", 0, 0),
        "backup_responders": ("whole", 0, 10),
        "overdue_factor": ("factor", 0, 0),
        "overdue_grace_s": ("non_negative", 0, 0),
        "stall_after_s": ("non_negative", 0, 0),
        "show_rate": ("share_or_all", 0, 0),
        "reply_s": ("non_negative", 0, 0),
        "turnout_s": ("non_negative", 0, 0),
        "useful_eta_s": ("positive", 0, 0),
        "max_alerts": ("whole", 0, 1000),
        "delivery_timeout_s": ("positive", 0, 0),
        "offline_grace_s": ("positive", 0, 0),
    }
)


def check_field(name: str, value: Any) -> Any:
    """``value`` made fit for Policy field ``name``, or ValueError saying what is allowed."""
    rule, lo, hi = FIELD_RULES[name]
    if rule == "strategy":
        try:
            return Strategy(value)
        except ValueError:
            raise ValueError("one of " + ", ".join(repr(s.value) for s in Strategy)) from None
    if rule == "whole":
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"a whole number from {int(lo)} to {int(hi)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("a finite number")
    allowed = {
        "positive": (value > 0, "a number greater than 0"),
        "non_negative": (value >= 0, "a number of at least 0"),
        "share": (0 < value < 1, "a number strictly between 0 and 1"),
        "share_or_all": (0 < value <= 1, "a number above 0 and at most 1"),
        "factor": (value >= 1, "a factor of at least 1"),
    }
    ok, text = allowed[rule]
    if not ok:
        raise ValueError(text)
    return float(value)


@dataclass(frozen=True, slots=True)
class Candidate:
    volunteer_id: str
    distance_m: float  # great-circle
    eta_s: float


def wave_size(policy: Policy, needed: int) -> int:
    """How many to alert so that ``needed`` accepts come with ``wave_confidence`` (binomial).

    Acceptance alone, whatever the ETAs: the size of a wave of close volunteers, and
    the lower bound ``choose_wave`` starts from.
    """
    if needed <= 0:
        return 0
    book = policy.playbook
    if book.one_at_a_time:
        return 1
    if book.first_wave:
        return max(book.first_wave, needed)
    p = policy.acceptance_rate
    for n in range(needed, policy.max_wave_size + 1):
        if _at_least(n, needed, p) >= policy.wave_confidence - 1e-12:
            return n
    return max(needed, policy.max_wave_size)


def _at_least(n: int, k: int, p: float) -> float:
    """P(at least k of n accept), each independently with probability p (binomial)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def success_chance(policy: Policy, eta_s: float, time_left_s: float) -> float:
    """P(an alerted volunteer accepts and is on scene within ``time_left_s``).

    Acceptance x the share who get there x the chance of being in time: people's
    answers, turnout and speed vary, so being in time is a smooth function of the
    slack (a logistic whose width grows with the trip).
    """
    slack = time_left_s - policy.setoff_s() - eta_s
    width = 10.0 + 0.15 * eta_s
    in_time = 1.0 / (1.0 + math.exp(max(-60.0, min(60.0, -slack / width))))
    return policy.acceptance_rate * policy.show_rate * in_time


def choose_wave(
    policy: Policy,
    candidates: Sequence[Candidate],
    *,
    needed: int,
    time_left_s: float,
    pending_etas: Sequence[float] = (),
    budget: int | None = None,
    fixed: int = 0,
) -> list[Candidate]:
    """The volunteers to alert now, best first, from ``candidates`` (ranked, best first).

    ``fixed`` (a playbook's wave size) takes that many. Otherwise the engine's own
    sizing takes candidates until the chance that nobody, of these and of the alerts
    still awaiting an answer, is on scene in time falls to ``1 - wave_confidence``:
    at least enough for the accepts still needed, at most ``max_wave_size``.
    """
    cap = len(candidates) if budget is None else min(len(candidates), budget)
    if cap <= 0 or needed <= 0:
        return []
    if fixed:
        if not policy.playbook.one_at_a_time:
            fixed = max(fixed, needed)
        return list(candidates[: min(cap, fixed)])
    cap = min(cap, policy.wave_cap)
    at_least = min(cap, max(0, needed - len(pending_etas)))
    miss = 1.0
    for eta in pending_etas:
        miss *= 1.0 - success_chance(policy, eta, time_left_s)
    chosen: list[Candidate] = []
    for c in candidates[:cap]:
        if len(chosen) >= at_least and miss <= 1.0 - policy.wave_confidence:
            break
        chosen.append(c)
        miss *= 1.0 - success_chance(policy, c.eta_s, time_left_s)
    return chosen


# A hair over 1: a volunteer exactly as fast as the k-th still counts (the id breaks the
# tie), whatever the rounding of reach_m against eta_s.
_TIES_IN = 1.0 + 1e-9


def fastest(
    index: PartitionedIndex,
    travel: TravelModel,
    lat: float,
    lon: float,
    k: int,
    *,
    skills: Iterable[str] = (),
    radius_m: float,
    exclude: Container[str] = (),
    rank: Rank = Rank.ETA,
) -> list[Candidate]:
    """The ``k`` best volunteers, best first: shortest estimated arrival (or distance).

    The index is partitioned by travel mode: within a mode the fastest are the nearest,
    so the k fastest overall are among the k nearest of each mode. The fastest mode is
    asked first, and once k are found, a slower mode only within the distance that
    still beats the k-th (a walker must be far nearer than an e-bike to rank): exact,
    and the later queries look in a small circle.
    """
    if k <= 0:
        return []
    skills = tuple(skills)
    by_eta = rank is not Rank.DISTANCE
    ranked: list[Candidate] = []
    for mode in sorted(index.parts, key=travel.speed_mps, reverse=True):
        limit, tight = radius_m, False
        if len(ranked) >= k:
            kth = ranked[k - 1]
            reach = travel.reach_m(kth.eta_s, mode) if by_eta else kth.distance_m
            limit, tight = min(radius_m, reach * _TIES_IN), True
        ranked += [
            Candidate(n.volunteer_id, n.distance_m, travel.eta_s(n.distance_m, mode))
            for n in index.nearest(
                mode, lat, lon, k, skills=skills, radius_m=limit, exclude=exclude, tight=tight
            )
        ]
        if by_eta:
            ranked.sort(key=lambda c: (c.eta_s, c.volunteer_id))
        else:
            ranked.sort(key=lambda c: (c.distance_m, c.volunteer_id))
        del ranked[k:]
    return ranked
