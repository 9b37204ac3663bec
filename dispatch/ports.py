"""The ports where the shell meets a mode that shares the work among several instances.

A single engine (`dispatch.engine.Alone`) and several instances (`dispatch.cluster.Cluster`)
implement the same four ports, so the shell has no "if cluster" branches: the
composition root (dispatch/wiring.py) hands it one set of collaborators or the other.

- `Intake`: where a report goes (straight to the engine, or into the shared work stream)
- `Ownership`: which incidents this instance acts for, and what it alone answers
- `IncidentReads`: where the HTTP API reads incidents (this core, or Redis for all)
- `Operators`: who carries out an operator action (this core, or the incident's owner)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dispatch.dispatcher import Incident
from dispatch.effects import Outbound
from dispatch.errors import BadMessage
from dispatch.model import Report

__all__ = [
    "IncidentReads",
    "Intake",
    "Operators",
    "Ownership",
    "Peers",
    "ReportOutcome",
]


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """What became of a report, and its incident's public state where there is one."""

    status: Literal["created", "duplicate", "conflict", "pending"]
    state: dict[str, Any] | None = None


class Intake(Protocol):
    async def admit(self, report: Report, payload: bytes, now: float) -> None:
        """A report received over MQTT (its payload as received)."""

    async def submit(
        self, report: Report, payload: bytes, now: float
    ) -> tuple[ReportOutcome, str | None]:
        """A report received over HTTP: its outcome and its incident's id (if known)."""


class Ownership(Protocol):
    # Whether a run of volunteers' messages may go through the core in one hold of the
    # lock (False: every message on its own, so that `begin` sees each one).
    batches: bool

    def begin(self, topic: str, payload: bytes) -> None:
        """Called for every inbound message, before anything else is done with it."""

    def keep(self, outbound: list[Outbound]) -> list[Outbound]:
        """The messages this instance may still send (for incidents it still owns)."""

    async def should_reject(self, err: BadMessage) -> bool:
        """Whether this instance answers ``err`` on the rejected topic."""

    async def confirmed(self, incident_ids: Sequence[str]) -> list[str]:
        """Those of ``incident_ids`` this instance (still) acts for."""

    def to_restore(self, records: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
        """Which stored open or recent incidents a start reloads into this instance."""

    async def run(self) -> None:
        """Whatever runs beside the engine for this mode; returns at once if nothing."""


class IncidentReads(Protocol):
    def held(self) -> Mapping[str, Incident]:
        """Incidents the HTTP API reads from this process instead of Redis (fresher, no
        decoding); empty when every instance must show the same, as read from Redis."""

    async def open_incidents(self) -> list[Incident]:
        """Every open incident the HTTP API shows."""

    async def incident(self, incident_id: str) -> Incident | None:
        """One incident, open or ended, as the HTTP API shows it; None if unknown."""


class Operators(Protocol):
    async def operator(
        self, action: str, incident_id: str, by: str, **kwargs: Any
    ) -> dict[str, Any]:
        """cancel, resolve, escalate, assign, amend (``changes``: an Amendment) or merge
        (``into``, ``other_kind``); the incident's public state.

        Raises UnknownIncident, UnknownVolunteer, InvalidTransition or BadMerge for the
        caller to map (and, with several instances, OwnerUnavailable).
        """


class Peers(Intake, Ownership, IncidentReads, Operators, Protocol):
    """All four ports at once: how other instances share the work (dispatch/cluster.py)."""
