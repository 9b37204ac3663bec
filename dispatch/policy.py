"""The dispatch policy: whom to alert, how many at once, and when to give up and escalate.

Pure functions of their arguments. The dispatcher asks them questions; they never
change anything.

- Candidates are ranked by estimated time of arrival (street distance over the
  volunteer's speed), not by straight-line distance: an e-bike 1.5 km away beats a
  walker 800 m away. Ties break on the volunteer id, so every run decides the same.
- Waves are sized from the expected acceptance rate: the smallest wave in which at
  least the needed number of accepts has the configured probability. Volunteers accept
  only about a third of alerts, so alerting one at a time wastes the minutes that count.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable
from dataclasses import dataclass
from enum import StrEnum

from geo.index import PartitionedIndex
from geo.travel import TravelModel

__all__ = ["Candidate", "Policy", "Strategy", "fastest", "wave_size"]


class Strategy(StrEnum):
    WAVES = "waves"  # waves sized from the acceptance rate, decliners replaced at once
    NAIVE = "naive"  # one volunteer at a time, the next only after a reply or expiry (a baseline)


@dataclass(frozen=True, slots=True)
class Policy:
    strategy: Strategy = Strategy.WAVES
    target_s: float = 180.0  # report to first responder on scene
    max_radius_m: float = 3000.0  # nobody farther than this is alerted
    alert_expiry_s: float = 90.0
    wave_timeout_s: float = 20.0  # silence this long after a wave brings the next one
    acceptance_rate: float = 0.35  # expected share of alerts accepted
    wave_confidence: float = 0.9  # wanted probability that a wave brings enough accepts
    max_wave_size: int = 8
    max_waves: int = 3  # after the last wave goes unanswered, escalate
    arrival_radius_m: float = 30.0
    # About a quarter of confirmed volunteers never get there. Extra acceptors from the
    # waves already sent may be kept as backups (no extra alerts are sent for them) ...
    backup_responders: int = 0
    # ... and a responder not on scene by accept + ETA x factor + grace is overdue: the
    # incident is treated as short of a responder and a new wave goes out.
    overdue_factor: float = 1.5
    overdue_grace_s: float = 30.0
    # Sooner than that, from their locations: a responder who, this long after accepting,
    # has come less than 20 m closer (GPS noise) or less than a quarter of the way their
    # mode should have brought them counts as overdue too. 0 turns the check off.
    stall_after_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("target_s", "max_radius_m", "alert_expiry_s", "wave_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Policy.{name} must be greater than 0, got {getattr(self, name)}")
        for name in ("acceptance_rate", "wave_confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(
                    f"Policy.{name} must be between 0 and 1, got {getattr(self, name)}"
                )
        if self.max_wave_size < 1 or self.max_waves < 1:
            raise ValueError("Policy.max_wave_size and Policy.max_waves must be at least 1")
        if not 0 <= self.backup_responders <= 10:
            raise ValueError(
                f"Policy.backup_responders must be 0..10, got {self.backup_responders}"
            )
        if not self.stall_after_s >= 0:
            raise ValueError(f"Policy.stall_after_s must be at least 0, got {self.stall_after_s}")
        if not self.overdue_factor >= 1 or not self.overdue_grace_s >= 0:
            raise ValueError(
                "Policy.overdue_factor must be at least 1 and Policy.overdue_grace_s at least 0, "
                f"got {self.overdue_factor} and {self.overdue_grace_s}"
            )

    def overdue_after_s(self, eta_s: float) -> float:
        """How long after accepting a responder may take before counting as overdue."""
        return eta_s * self.overdue_factor + self.overdue_grace_s

    @property
    def reply_wait_s(self) -> float:
        """How long a wave waits for replies before the next one goes out."""
        # The naive baseline waits for an answer (or the alert's expiry) before moving on.
        if self.strategy is Strategy.NAIVE:
            return self.alert_expiry_s
        return self.wave_timeout_s


@dataclass(frozen=True, slots=True)
class Candidate:
    volunteer_id: str
    distance_m: float  # great-circle
    eta_s: float


def wave_size(policy: Policy, needed: int) -> int:
    """How many to alert so that ``needed`` accepts come with ``wave_confidence`` (binomial)."""
    if needed <= 0:
        return 0
    if policy.strategy is Strategy.NAIVE:
        return 1
    p = policy.acceptance_rate
    for n in range(needed, policy.max_wave_size + 1):
        if _at_least(n, needed, p) >= policy.wave_confidence - 1e-12:
            return n
    return max(needed, policy.max_wave_size)


def _at_least(n: int, k: int, p: float) -> float:
    """P(at least k of n accept), each independently with probability p (binomial)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


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
) -> list[Candidate]:
    """The ``k`` volunteers with the shortest estimated arrival, best first.

    The index is partitioned by travel mode: within a mode the fastest are the nearest,
    so the k fastest overall are among the k nearest of each mode. Exact, and three
    small queries instead of one ever-widening one.
    """
    if k <= 0:
        return []
    skills = tuple(skills)
    ranked = [
        Candidate(n.volunteer_id, n.distance_m, travel.eta_s(n.distance_m, mode))
        for mode in index.parts
        for n in index.nearest(mode, lat, lon, k, skills=skills, radius_m=radius_m, exclude=exclude)
    ]
    ranked.sort(key=lambda c: (c.eta_s, c.volunteer_id))
    return ranked[:k]
