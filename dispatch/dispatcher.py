"""The dispatcher: the pure, synchronous heart of the engine, where every decision is made.

It holds the open incidents (dispatch/records.py), the roster of volunteers
(dispatch/roster.py) and its timers (dispatch/timers.py), takes one event at a time with
the time it happened (``now``), and returns the effects for the shell to carry out (see
``dispatch.effects``). It never awaits, sleeps, reads a clock or touches the network,
so the live engine, the offline simulator and the benchmarks all run exactly this code.

Timers are kept inside: ``next_deadline()`` says when the core next wants to be woken,
``tick(now)`` fires whatever is due. A timer is checked when it fires rather than
cancelled when it becomes moot, which keeps restarts simple: after a crash the core
rebuilds its timers from the stored state, and overdue ones fire at once.

Invariants:
- a volunteer is in the index only while on duty, with a fresh position, not committed
  to an incident and not holding an unanswered alert (one call at a time per phone; the
  roster keeps this, told by the dispatcher what became of each volunteer);
- a volunteer is never alerted twice for the same incident;
- every change to an incident produces, in this order, SaveIncident, LogEvent and
  StateChanged, so the shell stores before it announces.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dispatch.codec import Codec
from dispatch.config import KindDefaults
from dispatch.duplicates import RecentReports
from dispatch.effects import (
    Action,
    AssignmentReason,
    Claim,
    Effect,
    Escalation,
    EventType,
    ForgetPosition,
    LogEvent,
    Reject,
    Release,
    Role,
    SaveIncident,
    SavePosition,
    SaveVolunteer,
    SendAlert,
    SendAssignment,
    StateChanged,
)
from dispatch.errors import BadMessage, InvalidTransition
from dispatch.lifecycle import State, advance
from dispatch.model import (
    Amendment,
    Answer,
    Arrived,
    Duty,
    Kind,
    LocationUpdate,
    Mode,
    Reply,
    Report,
    StatusUpdate,
)
from dispatch.policy import Candidate, Policy, Rank, Strategy, choose_wave, fastest
from dispatch.records import (
    OPEN_ALERT,
    Alert,
    AlertStatus,
    Incident,
    Responder,
    eta_known,
    public_state,
)
from dispatch.roster import Roster, StoredProfile, StoredVolunteers, Volunteer
from dispatch.timers import TimerKind, Timers
from geo.area import ServiceArea
from geo.distance import haversine_m
from geo.travel import TravelModel

__all__ = [
    "DUPLICATE_RADIUS_M",
    "DUPLICATE_WINDOW_S",
    "Alert",
    "AlertStatus",
    "BadMerge",
    "Dispatcher",
    "Incident",
    "Responder",
    "UnknownIncident",
    "UnknownVolunteer",
    "Volunteer",
]


class UnknownIncident(LookupError):
    """An operator named an incident the engine does not know."""


class UnknownVolunteer(LookupError):
    """An operator named a volunteer the engine does not know."""


class BadMerge(ValueError):
    """An operator's merge that cannot be carried out: ``code`` names the rule, the message
    says what to do instead (duplicate reports, docs/protocol.md)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Duplicate reports: a report of the same kind as an open incident reported at most this
# far away and this much later is probably the same event (issue 15). A guess for the
# operator: the second is dispatched as any other until a person merges it.
DUPLICATE_RADIUS_M = 100.0
DUPLICATE_WINDOW_S = 180.0
# At most this many ids in an incident's ``merged_from`` (each one an operator's action).
_MERGED_FROM_MAX = 100

# A later acceptor takes a place only when expected on scene at least this much sooner.
_FASTER_BY_S = 15.0
# "I'm here" is believed when the last position, at most this old, is within the
# arrival radius plus its reported accuracy (counted up to _MAX_ACCURACY_M).
_FIX_MAX_AGE_S = 60.0
_MAX_ACCURACY_M = 100.0


class Dispatcher:
    """Incidents, volunteers and the decisions between them. Not thread-safe; one owner."""

    def __init__(
        self,
        *,
        area: ServiceArea,
        codec: Codec,
        policy: Policy,
        travel: TravelModel,
        kinds: Mapping[Kind, KindDefaults],
        location_ttl_s: float = 300.0,
        state_retention_s: float = 3600.0,
        rng: random.Random | None = None,
    ) -> None:
        self.area = area
        self.codec = codec
        self.policy = policy
        self.travel = travel
        self.kinds = kinds
        self.location_ttl_s = location_ttl_s
        self.state_retention_s = state_retention_s
        self._rng = rng or random.Random()
        self.roster = Roster(area.projection, location_ttl_s)
        # The roster's own, named here too for those who read them (tests, the simulator).
        self.index = self.roster.index
        self.volunteers = self.roster.volunteers
        self.incidents: dict[str, Incident] = {}
        self.alerts: dict[str, Alert] = {}
        self.timers = Timers()
        # The reports to compare a new one with (kept twice the window: a report's
        # reported_at may lag its arrival).
        _, min_lat, _, max_lat = area.bounds
        self.recent = RecentReports(
            radius_m=DUPLICATE_RADIUS_M,
            max_abs_lat=max(abs(min_lat), abs(max_lat)),
            keep_s=2 * DUPLICATE_WINDOW_S,
        )

    # ------------------------------------------------------------------ queries

    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents.values() if not i.ended]

    @property
    def available(self) -> int:
        """Volunteers who could be alerted right now."""
        return self.roster.available

    def duty_counts(self) -> dict[str, int]:
        """Volunteers on duty who cannot be alerted now, by why (protocol 1.1): their
        phone is offline, or they are resting (over their alert budget, or in quiet
        hours). O(volunteers): for the control room's figures, not the hot path."""
        offline = resting = 0
        for v in self.volunteers.values():
            if v.duty is Duty.OFFLINE:
                offline += 1
            elif v.duty is Duty.AVAILABLE and v.resting_until is not None:
                resting += 1
        return {"offline": offline, "resting": resting}

    def public_state(self, incident: Incident) -> dict[str, Any]:
        """The retained ``incidents/{id}/state`` payload (PROTOCOL.md, plus extension fields)."""
        return public_state(incident, self.policy.target_s)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        due = [d for d in (self.timers.next_due(), self.roster.next_stale()) if d is not None]
        return min(due) if due else None

    def timers_due(self, now: float) -> bool:
        """Whether a timer is due at ``now``: else `tick` only tidies and decides nothing."""
        due = self.timers.next_due()
        return due is not None and due <= now

    def tick(self, now: float) -> list[Effect]:
        """Fire every timer due at ``now``, forget stale positions, tidy the index.

        Cheap when nothing is due: the shell may call it as often as it likes.
        """
        effects: list[Effect] = []
        self.roster.tidy(now)
        for timer in self.timers.pop_due(now):
            if timer.kind is TimerKind.REST:  # about a volunteer
                self._on_rest(timer.incident_id, now)
                continue
            incident = self.incidents.get(timer.incident_id)
            if incident is None:
                continue
            kind = timer.kind
            if kind is TimerKind.EXPIRE:
                self._on_alert_expired(incident, timer.alert_id, now, effects)
            elif kind is TimerKind.WAVE:
                self._on_wave_timeout(incident, now, effects)
            elif kind is TimerKind.CLEAR:
                self._on_clear(incident, effects)
            elif kind is TimerKind.OVERDUE:
                self._on_overdue(incident, timer.alert_id, now, effects, due=timer.due)
            elif kind is TimerKind.TARGET:
                self._on_target(incident, now, effects)
            elif kind is TimerKind.DELIVERY:
                self._on_delivery_timeout(incident, timer.alert_id, now, effects)
            elif kind is TimerKind.OFFLINE:
                self._on_offline_grace(incident, timer.alert_id, timer.due, now, effects)
        return effects

    # ------------------------------------------------------------------ reports

    def new_incident_id(self, now: float) -> str:
        day = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")
        return f"i{day}-{self._rng.getrandbits(48):012x}"

    def report(self, report: Report, now: float, incident_id: str | None = None) -> list[Effect]:
        """A new incident, already admitted by the store (idempotency is the shell's job)."""
        defaults = self.kinds[report.kind]
        incident = Incident(
            id=incident_id or report.id or self.new_incident_id(now),
            kind=report.kind,
            priority=report.priority if report.priority is not None else defaults.priority,
            lat=report.lat,
            lon=report.lon,
            responders_needed=report.responders or 1,
            skills=report.skills if report.skills is not None else defaults.skills,
            reported_at=report.reported_at if report.reported_at is not None else now,
            received_at=now,
            cell_id=self.area.cell_at(report.lat, report.lon).id,
            subdistrict=self.area.subdistrict_at(report.lat, report.lon),
            address=report.address,
            description=report.description,
            fingerprint=report.fingerprint,
        )
        self.incidents[incident.id] = incident
        effects: list[Effect] = []
        self._event(incident, EventType.REPORTED, now, effects, kind=incident.kind.value)
        self._suspect_duplicate(incident, now, effects)
        self.timers.at(incident.reported_at + self.policy.target_s, TimerKind.TARGET, incident.id)
        self._send_wave(incident, now, effects)
        self._changed(incident, effects)
        return effects

    def retract(self, incident_id: str, now: float) -> None:
        """Take back the decision `report` made for ``incident_id``, as if the report had
        never come: its incident, alerts and timers forgotten, its volunteers free again
        (their alert budgets as before). For a decision neither stored nor announced: the
        store found the report not new after all (`Store.record_reports`). Only right
        before anything else happened to the incident."""
        incident = self.incidents.pop(incident_id, None)
        if incident is None:
            return
        self.timers.drop(incident_id)
        for alert_id, alert in incident.alerts.items():
            self.alerts.pop(alert_id, None)
            volunteer = self.volunteers.get(alert.volunteer_id)
            if volunteer is None:
                continue
            if volunteer.alerted_at is not None and alert.sent_at in volunteer.alerted_at:
                volunteer.alerted_at.remove(alert.sent_at)
                if not volunteer.alerted_at:
                    volunteer.alerted_at = None
                volunteer.resting_until = _resting_until(volunteer, now)[0]
            self.roster.free(volunteer.id, alert_id)  # back in the index if they can be

    def _suspect_duplicate(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        """Link a new incident to the open one of the same kind reported at most
        DUPLICATE_RADIUS_M away and DUPLICATE_WINDOW_S apart, if any (the nearest; the
        earlier on a tie). Only a guess for the operator: the new incident is dispatched
        as usual (help is never held back on a guess). O(recent reports of that kind
        within about 200 m), bounded (dispatch/duplicates.py)."""
        self.recent.prune(now)
        best: tuple[float, float, str] | None = None
        for other_id in self.recent.near(incident.kind, incident.lat, incident.lon):
            other = self.incidents.get(other_id)
            if (
                other is None
                or other.ended
                or other.kind is not incident.kind  # amended since
                or other.likely_duplicate_of  # link to the first report, not to a copy
                or abs(incident.reported_at - other.reported_at) > DUPLICATE_WINDOW_S
            ):
                continue
            distance = haversine_m(incident.lat, incident.lon, other.lat, other.lon)
            if distance <= DUPLICATE_RADIUS_M:
                key = (distance, other.reported_at, other_id)
                if best is None or key < best:
                    best = key
        self.recent.add(incident.kind, incident.lat, incident.lon, incident.id, now)
        if best is None:
            return
        distance, reported_at, other_id = best
        incident.likely_duplicate_of = other_id
        self._event(
            incident,
            EventType.DUPLICATE_SUSPECTED,
            now,
            effects,
            of=other_id,
            distance_m=round(distance, 1),
            apart_s=round(incident.reported_at - reported_at, 1),
        )

    def _send_wave(self, incident: Incident, now: float, effects: list[Effect]) -> list[Candidate]:
        """Alert the next wave; escalate when nobody can be found or nobody can be in time."""
        incident.wave += 1
        book = self.policy.playbook
        chosen = self._alert_best(
            incident, now, effects, fixed=book.first_wave if incident.wave == 1 else book.next_wave
        )
        incident.next_wave_at = now + self.policy.reply_wait_s
        self.timers.at(incident.next_wave_at, TimerKind.WAVE, incident.id)
        if chosen:
            self._move(incident, State.ALERTING, now, effects, only_from=(State.OPEN,))
            # the best of this wave and of the alerts still awaiting an answer
            best = min([c.eta_s for c in chosen] + [a.eta_s for a in _pending(incident)])
            # Time already gone (call handling, earlier waves) and people's time to answer
            # and set off count too: the target is at risk when the best cannot make it.
            used = now - incident.reported_at + self.policy.setoff_s()
            if used + best > self.policy.target_s and not incident.confirmed:
                # A late responder is better than none, but a person must know now.
                self._escalate(
                    incident,
                    Escalation.TOO_SLOW,
                    {"best": round(best), "used": round(used), "target": self._target()},
                    now,
                    effects,
                )
        elif not incident.open_alerts() and not incident.confirmed:
            self._escalate(incident, *self._nobody_reason(incident), now, effects)
        return chosen

    def _nobody_reason(self, incident: Incident) -> tuple[Escalation, dict[str, Any]]:
        if self._alert_budget_left(incident) == 0:
            return Escalation.ALERT_BUDGET_SPENT, {"n": self.policy.max_alerts}
        skills = list(incident.skills)
        if self.policy.strategy is Strategy.WAVES:
            return Escalation.NOBODY_IN_TIME, {
                "skills": skills,
                "eta": round(self.policy.useful_eta_s),
                "radius": round(self.policy.max_radius_m),
            }
        return Escalation.NOBODY_IN_REACH, {"skills": skills, "radius": round(self.policy.radius_m)}

    def _target(self) -> int:
        return round(self.policy.target_s)

    def _alert_budget_left(self, incident: Incident) -> int | None:
        if not self.policy.max_alerts:
            return None
        since = incident.moved_at or 0.0  # a move starts the search (and its budget) again
        sent = sum(
            1 for a in incident.alerts.values() if a.assigned_by is None and a.sent_at >= since
        )
        return max(0, self.policy.max_alerts - sent)

    def _alert_best(
        self, incident: Incident, now: float, effects: list[Effect], fixed: int = 0
    ) -> list[Candidate]:
        """Alert the best volunteers not yet asked: as many as the policy says, or ``fixed``."""
        budget = self._alert_budget_left(incident)
        if budget == 0:
            return []
        # Everyone asked before, except those stood down unasked-for ("filled by others"),
        # who are welcome again when a responder turns out overdue. After the incident
        # moved, only those asked for the new place, and its responders (a withdrawn one
        # included): a "no" or a silence about the old place says nothing of the new one.
        since = incident.moved_at or 0.0
        already = {
            a.volunteer_id
            for a in incident.alerts.values()
            if a.sent_at >= since
            and (a.status is not AlertStatus.STOOD_DOWN or a.answered_at is not None)
        }
        already.update(r.volunteer_id for r in incident.responders)
        policy = self.policy
        looked_at = fixed or policy.wave_cap
        if budget is not None:
            looked_at = min(looked_at, budget)
        candidates = fastest(
            self.index,
            self.travel,
            incident.lat,
            incident.lon,
            looked_at,
            skills=incident.skills,
            radius_m=policy.radius_m,
            exclude=already,
            rank=policy.playbook.rank,
        )
        if policy.strategy is Strategy.WAVES:  # nobody who could make no useful difference
            candidates = [c for c in candidates if c.eta_s <= policy.useful_eta_s]
        pending = [a.eta_s for a in _pending(incident)]
        chosen = choose_wave(
            policy,
            candidates,
            needed=incident.still_needed,
            time_left_s=policy.target_s - (now - incident.reported_at),
            pending_etas=pending,
            budget=budget,
            fixed=fixed,
        )
        for candidate in chosen:
            self._alert(incident, candidate, now, effects)
        return chosen

    def _new_alert(
        self,
        incident: Incident,
        volunteer_id: str,
        wave: int,
        distance_m: float,
        eta_s: float,
        now: float,
        assigned_by: str | None = None,
    ) -> Alert:
        """A new alert of ``incident`` for a volunteer, valid for the policy's expiry; with
        ``assigned_by``, an operator's hand assignment, as good as accepted."""
        alert = Alert(
            alert_id=f"a{self._rng.getrandbits(64):016x}",
            incident_id=incident.id,
            volunteer_id=volunteer_id,
            wave=wave,
            sent_at=now,
            expires_at=now + self.policy.alert_expiry_s,
            distance_m=distance_m,
            eta_s=eta_s,
        )
        if assigned_by is not None:
            alert.status, alert.answered_at, alert.assigned_by = (
                AlertStatus.ACCEPTING,
                now,
                assigned_by,
            )
        incident.alerts[alert.alert_id] = alert
        self.alerts[alert.alert_id] = alert
        return alert

    def _alert(self, incident: Incident, c: Candidate, now: float, effects: list[Effect]) -> None:
        alert = self._new_alert(incident, c.volunteer_id, incident.wave, c.distance_m, c.eta_s, now)
        volunteer = self.volunteers[c.volunteer_id]
        self.roster.hold(volunteer, alert.alert_id)
        if volunteer.max_alerts_per_day is not None:
            if volunteer.alerted_at is None:
                volunteer.alerted_at = deque()
            volunteer.alerted_at.append(now)
            self._rest(volunteer, now)
        if volunteer.receipts:
            due = now + self.policy.delivery_timeout_s
            self.timers.at(due, TimerKind.DELIVERY, incident.id, alert.alert_id)
        if incident.first_alert_at is None:
            incident.first_alert_at = now
        self.timers.at(alert.expires_at, TimerKind.EXPIRE, incident.id, alert.alert_id)
        effects.append(
            SendAlert(
                incident_id=incident.id,
                volunteer_id=c.volunteer_id,
                alert_id=alert.alert_id,
                kind=incident.kind.value,
                priority=incident.priority,
                lat=incident.lat,
                lon=incident.lon,
                address=incident.address,
                distance_m=c.distance_m,
                eta_s=c.eta_s,
                expires_at=alert.expires_at,
                description=incident.description,
                wave=alert.wave,
                skills=incident.skills,
                expiry_s=self._expiry_s,
            )
        )
        self._event(
            incident,
            EventType.ALERTED,
            now,
            effects,
            volunteer_id=c.volunteer_id,
            alert_id=alert.alert_id,
            wave=alert.wave,
            eta_s=round(c.eta_s, 1),
            distance_m=round(c.distance_m, 1),
        )

    def _on_wave_timeout(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        if incident.ended or incident.next_wave_at is None or incident.next_wave_at > now:
            return  # moot: filled, ended, or a later wave was scheduled since
        incident.next_wave_at = None
        if incident.still_needed == 0:
            return
        book = self.policy.playbook
        if book.one_at_a_time and incident.open_alerts():
            # One at a time: a replacement is still awaiting its answer; wait for it.
            incident.next_wave_at = now + self.policy.reply_wait_s
            self.timers.at(incident.next_wave_at, TimerKind.WAVE, incident.id)
            return
        if book.next_wave_only_if_unaccepted and incident.responders:
            return  # someone accepted: this playbook sends no more waves
        if incident.wave >= self.policy.waves:
            if not incident.confirmed:
                why = (
                    Escalation.RESPONDERS_OVERDUE
                    if incident.responders
                    else (Escalation.NOBODY_ACCEPTED)
                )
                self._escalate(incident, why, {"n": incident.wave}, now, effects)
            self._changed(incident, effects)
            return
        self._send_wave(incident, now, effects)
        self._changed(incident, effects)

    def _on_alert_expired(
        self, incident: Incident, alert_id: str, now: float, effects: list[Effect]
    ) -> None:
        alert = incident.alerts.get(alert_id)
        if alert is None or alert.status is not AlertStatus.PENDING:
            return
        alert.status = AlertStatus.EXPIRED
        self._stand_down(alert, AssignmentReason.ALERT_EXPIRED, now, effects)
        self._event(
            incident,
            EventType.EXPIRED,
            now,
            effects,
            volunteer_id=alert.volunteer_id,
            alert_id=alert_id,
        )
        if self.policy.playbook.one_at_a_time and incident.still_needed and not incident.ended:
            self._replace(incident, now, effects)
        self._changed(incident, effects)

    def _on_overdue(
        self,
        incident: Incident,
        alert_id: str,
        now: float,
        effects: list[Effect],
        why: str = "late",
        due: float | None = None,
    ) -> None:
        """A confirmed responder should be there by now: look for another one meanwhile."""
        responder = next((r for r in incident.responders if r.alert_id == alert_id), None)
        if incident.ended or responder is None or not responder.on_the_way or responder.overdue:
            return
        rerouted = responder.rerouted_at
        if (  # the incident moved since: the timer set for the old place is moot
            due is not None
            and rerouted is not None
            and due < rerouted + self.policy.overdue_after_s(responder.eta_s)
        ):
            return
        if sum(1 for r in incident.responders if r.arrived_at is not None) >= (
            incident.responders_needed
        ):
            return  # enough are on scene already
        responder.overdue = True
        self._event(
            incident,
            EventType.OVERDUE,
            now,
            effects,
            volunteer_id=responder.volunteer_id,
            alert_id=alert_id,
            eta_s=round(responder.eta_s, 1),
            waited_s=round(now - responder.accepted_at, 1),
            why=why,
        )
        # The overdue volunteer stays assigned (they may still come); a backup steps up,
        # and if another is needed now, a wave goes out (escalation follows the usual rules).
        self._rank_roles(incident, effects)
        if (
            incident.still_needed
            and incident.next_wave_at is None
            and self.policy.playbook.chase_no_shows
        ):
            self._send_wave(incident, now, effects)
        self._changed(incident, effects)

    def _on_target(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        """The target time has passed: log a miss unless someone was verified on scene in time.

        Together with the ``arrived`` events this decides every incident that needed a
        responder, for the metrics (the headline: dispatch/headline.py).
        """
        if incident.state is State.CANCELLED:
            return
        tta = incident.time_to_arrival_s()
        if tta is not None and tta <= self.policy.target_s:
            return
        self._event(
            incident,
            EventType.TARGET_MISSED,
            now,
            effects,
            target_s=self.policy.target_s,
            claimed_arrival=incident.first_arrival_at is not None,
        )

    def _on_clear(self, incident: Incident, effects: list[Effect]) -> None:
        """An ended incident's retention is over: clear its retained state and forget it."""
        if not incident.ended:
            return
        effects.append(StateChanged(incident.id, cleared=True))
        del self.incidents[incident.id]
        for alert_id in incident.alerts:
            self.alerts.pop(alert_id, None)

    # ------------------------------------------------------------------ volunteers

    def status(self, msg: StatusUpdate, now: float) -> list[Effect]:
        volunteer = self.volunteers.get(msg.volunteer_id)
        has_position = msg.lat is not None and msg.lon is not None
        if (
            msg.status is Duty.AVAILABLE
            and not has_position
            and (volunteer is None or volunteer.lat is None)
        ):
            return [
                Reject(
                    BadMessage(
                        self.codec.topic("volunteers", msg.volunteer_id, "status"),
                        "the first 'available' status must carry 'lat' and 'lon' "
                        "(or send a location first)",
                        "missing_field",
                    )
                )
            ]
        if msg.status is Duty.OFFLINE and (
            volunteer is None or volunteer.duty is not Duty.AVAILABLE
        ):
            # The Last Will of a phone that was not on duty (or already offline): nothing
            # to change; they are not "on duty but unreachable".
            return []
        # What is stored already (None: nothing yet). A herd of phones re-sending their
        # status after a broker restart changes nothing stored: no write, so such a
        # run of statuses never waits for Redis (issue 16).
        stored = None if volunteer is None else _profile(volunteer)
        if volunteer is None:
            volunteer = self.roster.ensure(msg.volunteer_id)
        effects: list[Effect] = []
        volunteer.duty = msg.status
        if msg.skills is not None:
            volunteer.skills = frozenset(msg.skills)
        if msg.mode is not None:
            volunteer.mode = msg.mode
        if msg.receipts is not None:
            volunteer.receipts = msg.receipts
        if msg.max_alerts_per_day is not None:
            volunteer.max_alerts_per_day = msg.max_alerts_per_day
        if msg.quiet_hours is not None:
            volunteer.quiet_hours = msg.quiet_hours
        if "max_alerts_per_day" in msg.cleared:
            volunteer.max_alerts_per_day = None
            volunteer.alerted_at = None
        if "quiet_hours" in msg.cleared:
            volunteer.quiet_hours = None
        if _profile(volunteer) != stored:
            effects.append(
                SaveVolunteer(
                    volunteer.id,
                    volunteer.duty.value,
                    tuple(sorted(volunteer.skills)),
                    volunteer.mode.value,
                    _settings(volunteer),
                )
            )
        if msg.status is Duty.OFF_DUTY:
            if volunteer.lat is not None:
                effects.append(ForgetPosition(volunteer.id))
            self.roster.forget_position(volunteer)
            return effects
        if msg.status is Duty.OFFLINE:
            self._gone_offline(volunteer, now, effects)
            return effects
        volunteer.offline_since = None
        if msg.lat is not None and msg.lon is not None:
            self._set_position(volunteer, msg.lat, msg.lon, now, effects)
        self._rest(volunteer, now)
        self.roster.refresh(volunteer)
        return effects

    # ------------------------------------------------------------------ presence, budget

    def _gone_offline(self, volunteer: Volunteer, now: float, effects: list[Effect]) -> None:
        """The phone dropped off (its Last Will) or said so: not alerted from now on.

        A pending alert cannot be answered from there: the next best is alerted at once
        (the alert stays valid). A responder on the way has ``offline_grace_s`` to come
        back before counting as overdue.
        """
        if volunteer.offline_since is None:
            volunteer.offline_since = now
        self.roster.refresh(volunteer)
        alert = self.alerts.get(volunteer.alert_id or "")
        if alert is not None and alert.status is AlertStatus.PENDING:
            incident = self.incidents[alert.incident_id]
            self._event(incident, EventType.OFFLINE, now, effects,
                        volunteer_id=volunteer.id, alert_id=alert.alert_id)  # fmt: skip
            if incident.still_needed and not incident.ended:
                self._alert_best(incident, now, effects, fixed=1)
                self._changed(incident, effects)
        engaged = self.incidents.get(volunteer.engaged or "")
        if engaged is not None:
            responder = next(
                (r for r in engaged.responders if r.volunteer_id == volunteer.id), None
            )
            if responder is not None and responder.on_the_way:
                self._event(engaged, EventType.OFFLINE, now, effects,
                            volunteer_id=volunteer.id, alert_id=responder.alert_id)  # fmt: skip
                due = now + self.policy.offline_grace_s
                self.timers.at(due, TimerKind.OFFLINE, engaged.id, responder.alert_id)

    def _on_offline_grace(
        self, incident: Incident, alert_id: str, due: float, now: float, effects: list[Effect]
    ) -> None:
        responder = next((r for r in incident.responders if r.alert_id == alert_id), None)
        if responder is None:
            return
        volunteer = self.volunteers.get(responder.volunteer_id)
        gone_since = None if volunteer is None else volunteer.offline_since
        if gone_since is not None and gone_since <= due - self.policy.offline_grace_s:
            self._on_overdue(incident, alert_id, now, effects, why="offline")

    def _on_delivery_timeout(
        self, incident: Incident, alert_id: str, now: float, effects: list[Effect]
    ) -> None:
        """No receipt from a phone that always sends them: the alert did not get through."""
        alert = incident.alerts.get(alert_id)
        if alert is None or alert.status is not AlertStatus.PENDING or alert.received_at:
            return
        alert.undelivered = True
        self._event(incident, EventType.UNDELIVERED, now, effects,
                    volunteer_id=alert.volunteer_id, alert_id=alert_id)  # fmt: skip
        replace = self.policy.playbook.replace_undelivered  # the baselines follow their rules
        if replace and incident.still_needed and not incident.ended:
            self._alert_best(incident, now, effects, fixed=1)
        self._changed(incident, effects)

    def _rest(self, volunteer: Volunteer, now: float) -> None:
        """Over the alert budget or in quiet hours: out of the index until it ends (a REST
        timer then), and a REST timer for when the next quiet hours begin."""
        until, next_quiet = _resting_until(volunteer, now)
        if until != volunteer.resting_until:
            volunteer.resting_until = until
            self.roster.refresh(volunteer)
        for due in (until, next_quiet):
            if due is not None:
                self.timers.at(due, TimerKind.REST, volunteer.id)

    def _on_rest(self, volunteer_id: str, now: float) -> None:
        volunteer = self.volunteers.get(volunteer_id)
        if volunteer is not None:
            self._rest(volunteer, now)

    def location(self, msg: LocationUpdate, now: float) -> list[Effect]:
        effects: list[Effect] = []
        self._locate(msg, now, now, effects, stored=False)
        return effects

    def moves(self, moves: Sequence[LocationUpdate], now: float) -> list[Effect]:
        """A batch of locations a gateway validated and stored (dispatch/gateway.py).

        Each is handled as `location` handles one (the roster, the index, geofence
        arrivals, progress checks), with the position timed at its ``ts`` (when the
        gateway received it, no later than ``now``), but without a SavePosition: the
        gateway stored it. A move older than the position already held (a status that
        carried a newer one travelled the other path) is skipped. A move of a volunteer
        who is off duty forgets the position the gateway stored: positions are not kept
        off duty.
        """
        effects: list[Effect] = []
        for msg in moves:
            at = now if msg.ts is None else min(msg.ts, now)
            self._locate(msg, at, now, effects, stored=True)
        return effects

    def _locate(
        self, msg: LocationUpdate, at: float, now: float, effects: list[Effect], *, stored: bool
    ) -> None:
        volunteer = self.volunteers.get(msg.volunteer_id)
        if volunteer is None:  # kept, but makes nobody available
            volunteer = self.roster.ensure(msg.volunteer_id)
        if volunteer.duty is Duty.OFF_DUTY:
            if stored:
                effects.append(ForgetPosition(volunteer.id))
            return  # positions are not kept off duty
        if stored:
            if volunteer.seen_at is not None and at < volunteer.seen_at:
                return  # older than the position held
            self.roster.set_position(volunteer, msg.lat, msg.lon, at)
        else:
            self._set_position(volunteer, msg.lat, msg.lon, now, effects)
        volunteer.accuracy_m = msg.accuracy_m
        if volunteer.engaged is not None:
            incident = self.incidents.get(volunteer.engaged)
            if incident is not None and not incident.ended:
                distance = haversine_m(msg.lat, msg.lon, incident.lat, incident.lon)
                if distance <= self.policy.arrival_radius_m:
                    self._arrive(incident, volunteer.id, now, effects, "geofence", verified=True)
                elif self._near_scene(volunteer, incident, now):  # confirms an "I'm here"
                    responder = next(
                        (r for r in incident.responders if r.volunteer_id == volunteer.id), None
                    )
                    if responder is not None and responder.arrived_at is not None:
                        self._arrive(
                            incident, volunteer.id, now, effects, "position", verified=True
                        )
                else:
                    self._check_progress(incident, volunteer, distance, now, effects)
        else:
            self.roster.refresh(volunteer)

    def _check_progress(
        self,
        incident: Incident,
        volunteer: Volunteer,
        distance_m: float,
        now: float,
        effects: list[Effect],
    ) -> None:
        """A responder who is hardly moving toward the incident will not make it in time."""
        if not self.policy.stall_after_s:
            return
        responder = next((r for r in incident.responders if r.volunteer_id == volunteer.id), None)
        if responder is None or responder.overdue or not responder.on_the_way:
            return
        # People need time to get going (turnout): the clock starts when they should be off.
        start = responder.rerouted_at or responder.accepted_at
        moving = now - start - self.policy.turnout_s
        alert = incident.alerts.get(responder.alert_id)
        if moving < self.policy.stall_after_s or alert is None or not eta_known(alert):
            return
        expected_m = self.travel.reach_m(moving, volunteer.mode.value)
        from_m = alert.distance_m if responder.rerouted_at is None else responder.distance_m
        if from_m - distance_m < max(20.0, 0.25 * expected_m):
            self._on_overdue(incident, responder.alert_id, now, effects, why="no progress")

    def _set_position(
        self, volunteer: Volunteer, lat: float, lon: float, now: float, effects: list[Effect]
    ) -> None:
        self.roster.set_position(volunteer, lat, lon, now)
        effects.append(SavePosition(volunteer.id, lat, lon, now))

    # ------------------------------------------------------------------ replies

    def reply(self, msg: Reply, now: float) -> list[Effect]:
        topic = self.codec.topic("volunteers", msg.volunteer_id, "reply")
        alert = self.alerts.get(msg.alert_id)
        if alert is None:
            return [
                Reject(
                    BadMessage(
                        topic, f"unknown alert_id '{msg.alert_id}'", "unknown_alert", msg.alert_id
                    )
                )
            ]
        if alert.volunteer_id != msg.volunteer_id:
            return [
                Reject(
                    BadMessage(
                        topic,
                        f"alert '{msg.alert_id}' was not sent to volunteer '{msg.volunteer_id}'",
                        "not_alerted",
                        msg.alert_id,
                    )
                )
            ]
        incident = self.incidents[alert.incident_id]
        effects: list[Effect] = []
        if msg.answer is Answer.WITHDRAW:
            return self._withdraw(incident, alert, topic, now)
        if msg.answer is Answer.RECEIVED:
            # Not an answer yet: the phone has it. Kept with the alert and in the log (the
            # delivery latency); the incident's state does not change.
            if alert.received_at is None:
                alert.received_at = now
                self._event(
                    incident,
                    EventType.RECEIVED,
                    now,
                    effects,
                    volunteer_id=alert.volunteer_id,
                    alert_id=alert.alert_id,
                    latency_s=round(now - alert.sent_at, 3),
                )
            return effects
        if msg.answer is Answer.DECLINE:
            if alert.status is AlertStatus.PENDING:
                alert.status, alert.answered_at = AlertStatus.DECLINED, now
                self.roster.free(alert.volunteer_id, alert.alert_id)
                self._event(
                    incident,
                    EventType.DECLINED,
                    now,
                    effects,
                    volunteer_id=alert.volunteer_id,
                    alert_id=alert.alert_id,
                )
                if incident.still_needed and not incident.ended:
                    self._replace(incident, now, effects)
                self._changed(incident, effects)
            return effects
        return self._accept(incident, alert, now)

    def _withdraw(self, incident: Incident, alert: Alert, topic: str, now: float) -> list[Effect]:
        """ "I can't go after all" (this project's addition): a confirmed responder drops
        out. Treated at once as a no-show: released, and replaced as an overdue one is."""
        responder = next((r for r in incident.responders if r.alert_id == alert.alert_id), None)
        if alert.status is not AlertStatus.ACCEPTED or responder is None:
            status = "being confirmed" if alert.status is AlertStatus.ACCEPTING else alert.status
            return [
                Reject(
                    BadMessage(
                        topic,
                        f"alert '{alert.alert_id}' is {status}, not accepted: only a "
                        "confirmed responder can withdraw (to say no to an alert, decline it)",
                        "not_accepted",
                        alert.alert_id,
                    )
                )
            ]
        effects: list[Effect] = []
        if responder.released_at is not None or incident.ended:
            # A retry, or released already (ended, enough on scene): the same answer again.
            if responder.withdrawn:
                reason = AssignmentReason.WITHDRAWN
            elif incident.ended:
                reason = AssignmentReason.ended(incident.state.value)
            else:
                reason = AssignmentReason.NO_LONGER_NEEDED
            effects.append(self._assignment(alert, Action.STAND_DOWN, reason))
            return effects
        if responder.arrived_at is not None:
            return [
                Reject(
                    BadMessage(
                        topic,
                        f"volunteer '{alert.volunteer_id}' is already on scene at incident "
                        f"'{incident.id}': a withdraw is for a responder still on the way",
                        "not_accepted",
                        alert.alert_id,
                    )
                )
            ]
        responder.released_at, responder.withdrawn = now, True
        self._let_go(incident, responder, AssignmentReason.WITHDRAWN, effects)
        self._event(
            incident,
            EventType.WITHDRAWN,
            now,
            effects,
            volunteer_id=responder.volunteer_id,
            alert_id=alert.alert_id,
            waited_s=round(now - responder.accepted_at, 1),
        )
        # As for an overdue responder: a backup steps up, and if another is needed now,
        # a wave goes out (escalation follows the usual rules).
        self._rank_roles(incident, effects)
        if (
            incident.still_needed
            and incident.next_wave_at is None
            and self.policy.playbook.chase_no_shows
        ):
            self._send_wave(incident, now, effects)
        self._changed(incident, effects)
        return effects

    def _accept(self, incident: Incident, alert: Alert, now: float) -> list[Effect]:
        effects: list[Effect] = []
        status = alert.status
        if status is AlertStatus.ACCEPTED:
            responder = next((r for r in incident.responders if r.alert_id == alert.alert_id), None)
            if responder is not None and responder.released_at is not None:
                effects.append(
                    self._assignment(alert, Action.STAND_DOWN, AssignmentReason.NO_LONGER_NEEDED)
                )
                return effects
            role = responder.role if responder is not None else Role.PRIMARY
            effects.append(
                self._assignment(alert, Action.GO, AssignmentReason.CONFIRMED, role=role)
            )  # a retry
            return effects
        if status is AlertStatus.ACCEPTING:
            return effects  # the claim is on its way
        if incident.ended:
            reason = AssignmentReason.ended(incident.state.value)
        elif status is AlertStatus.EXPIRED or now >= alert.expires_at:
            reason = AssignmentReason.ALERT_EXPIRED
        elif status is AlertStatus.DECLINED:
            reason = AssignmentReason.DECLINED
        elif status is AlertStatus.STOOD_DOWN and alert.sent_at < (incident.moved_at or 0.0):
            reason = AssignmentReason.INCIDENT_MOVED
        elif status is AlertStatus.STOOD_DOWN or (
            incident.goers_open(self._goers(incident)) == 0
            and self._would_displace(incident, alert, now) is None
        ):
            reason = AssignmentReason.FILLED
        elif self.volunteers[alert.volunteer_id].engaged not in (None, incident.id):
            reason = AssignmentReason.COMMITTED_ELSEWHERE
        else:
            alert.status, alert.answered_at = AlertStatus.ACCEPTING, now
            effects.append(Claim(alert.volunteer_id, incident.id))
            return effects
        # Too late: the answer to an accept is always a go or a stand-down.
        if alert.status is AlertStatus.PENDING:
            alert.status = AlertStatus.STOOD_DOWN
            self.roster.free(alert.volunteer_id, alert.alert_id)
        effects.append(self._assignment(alert, Action.STAND_DOWN, reason))
        self._event(
            incident,
            EventType.LATE_ACCEPT,
            now,
            effects,
            volunteer_id=alert.volunteer_id,
            alert_id=alert.alert_id,
            reason=reason,
        )
        return effects

    def claim_result(
        self, volunteer_id: str, incident_id: str, ok: bool, now: float
    ) -> list[Effect]:
        """The store's answer to a Claim effect: take the acceptor on, or say no."""
        incident = self.incidents.get(incident_id)
        alert = None if incident is None else _accepting(incident, volunteer_id)
        effects: list[Effect] = []
        if incident is None or alert is None:
            if ok:  # nothing waits for this claim any more
                effects.append(Release(volunteer_id, incident_id))
            return effects
        volunteer = self.roster.ensure(volunteer_id)
        full = incident.goers_open(self._goers(incident)) == 0
        displaced = (
            self._would_displace(incident, alert, alert.answered_at or now) if full else None
        )
        if not ok or incident.ended or (full and displaced is None):
            self._claim_refused(incident, alert, volunteer, ok, now, effects)
            return effects
        responder = self._take_on(incident, alert, volunteer, now)
        if displaced is not None:  # the fastest acceptor wins
            self._release(incident, displaced, AssignmentReason.FASTER_RESPONDER, now, effects)
        self._rank_roles(incident, effects, new=volunteer_id)
        if incident.state is not State.ON_SCENE:
            self._move(incident, State.ASSIGNED, now, effects)
        self._send_go(incident, alert, responder, effects)
        self._event(
            incident,
            EventType.ASSIGNED,
            now,
            effects,
            volunteer_id=volunteer_id,
            alert_id=alert.alert_id,
            eta_s=round(alert.eta_s, 1),
            by=alert.assigned_by,
            role=responder.role,
        )
        if incident.still_needed == 0:
            incident.next_wave_at = None  # no more waves; spare accepts are welcome as backups
        if incident.goers_open(self._goers(incident)) == 0:
            self._call_off_useless(incident, now, effects)
        self._changed(incident, effects)
        return effects

    def _take_on(
        self, incident: Incident, alert: Alert, volunteer: Volunteer, now: float
    ) -> Responder:
        """The claimed acceptor becomes a responder: off the index, watched for arrival."""
        alert.status = AlertStatus.ACCEPTED
        volunteer.engaged = incident.id
        volunteer.alert_id = None
        self.roster.withdraw(volunteer.id)
        responder = Responder(
            volunteer.id, alert.eta_s, now, alert.alert_id, distance_m=alert.distance_m
        )
        incident.responders.append(responder)
        if eta_known(alert):
            due = now + self.policy.overdue_after_s(alert.eta_s)
            self.timers.at(due, TimerKind.OVERDUE, incident.id, alert.alert_id)
        if incident.first_accept_at is None:
            incident.first_accept_at = now
        return responder

    def _send_go(
        self, incident: Incident, alert: Alert, responder: Responder, effects: list[Effect]
    ) -> None:
        reason = (
            AssignmentReason.ASSIGNED_BY_OPERATOR
            if alert.assigned_by
            else AssignmentReason.CONFIRMED
        )
        if alert.sent_at < (incident.moved_at or 0.0):  # accepted for the old place
            effects.append(self._go_to(incident, alert, reason, responder.role))
        else:
            effects.append(self._assignment(alert, Action.GO, reason, role=responder.role))

    def _call_off_useless(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        """Filled: only alerts that could still bring someone sooner stay open."""
        useless = [
            other
            for other in _pending(incident)
            if self._would_displace(incident, other, max(now, other.sent_at + self.policy.reply_s))
            is None
        ]
        self._call_off(useless, AssignmentReason.FILLED, now, effects)

    def _claim_refused(
        self,
        incident: Incident,
        alert: Alert,
        volunteer: Volunteer,
        ok: bool,
        now: float,
        effects: list[Effect],
    ) -> None:
        """The accept cannot be confirmed: committed elsewhere, ended, or filled."""
        if not ok:
            reason = AssignmentReason.COMMITTED_ELSEWHERE
        elif incident.ended:
            reason = AssignmentReason.ended(incident.state.value)
        else:
            reason = AssignmentReason.FILLED
        if ok:
            effects.append(Release(volunteer.id, incident.id))
        alert.status = AlertStatus.STOOD_DOWN
        volunteer.alert_id = None
        if not ok:
            # Committed elsewhere (another engine instance): out of our index until
            # they tell us otherwise.
            self.roster.withdraw(volunteer.id)
        else:
            self.roster.refresh(volunteer)
        effects.append(self._assignment(alert, Action.STAND_DOWN, reason))
        self._event(
            incident,
            EventType.STOOD_DOWN,
            now,
            effects,
            volunteer_id=volunteer.id,
            alert_id=alert.alert_id,
            reason=reason,
        )
        if incident.still_needed and not incident.ended:
            self._replace(incident, now, effects)
        self._changed(incident, effects)

    def claim_lost(self, volunteer_id: str, incident_id: str, now: float) -> list[Effect]:
        """The store refused the claim of a volunteer this core took on ahead of its
        answer (`claim_result` with ok, stored only with the claim): committed to another
        incident after all. They are no responder, as `claim_result` without ok leaves
        it, and are out of this index until they report; what taking them on decided
        for the others stands (a responder displaced, alerts called off), and a
        replacement is sought. Only a second process committing volunteers in the same
        Redis makes a single engine's claim fail."""
        incident = self.incidents.get(incident_id)
        responder = None
        if incident is not None:
            responder = next(
                (r for r in incident.responders if r.volunteer_id == volunteer_id and r.on_the_way),
                None,
            )
        effects: list[Effect] = []
        if incident is None or responder is None:
            return effects
        incident.responders.remove(responder)
        incident.first_accept_at = min((r.accepted_at for r in incident.responders), default=None)
        volunteer = self.roster.ensure(volunteer_id)
        if volunteer.engaged == incident_id:
            volunteer.engaged = None
        self._rank_roles(incident, effects)
        self._claim_refused(
            incident, incident.alerts[responder.alert_id], volunteer, False, now, effects
        )
        return effects

    # ------------------------------------------------------------------ who goes

    def _goers(self, incident: Incident) -> int:
        return self.policy.goers(incident.responders_needed)

    def _goer_key(self, responder: Responder) -> float:
        """Smaller is better: expected time on scene (or distance, for distance playbooks)."""
        if self.policy.playbook.rank is Rank.DISTANCE:
            return responder.distance_m
        return responder.accepted_at + self.policy.turnout_s + responder.eta_s

    def _would_displace(
        self, incident: Incident, alert: Alert, accept_at: float
    ) -> Responder | None:
        """The responder on the way whom ``alert``'s volunteer, accepting at ``accept_at``,
        would replace (the fastest acceptor wins), or None."""
        if not self.policy.playbook.fastest_wins or alert.assigned_by is not None:
            return None
        # An operator's hand assignment is never displaced: they chose that person.
        going = [
            r
            for r in incident.responders
            if r.counted
            and r.arrived_at is None
            and incident.alerts[r.alert_id].assigned_by is None
        ]
        if not going:
            return None
        slowest = max(going, key=self._goer_key)
        if self.policy.playbook.rank is Rank.DISTANCE:
            better = alert.distance_m < slowest.distance_m
        else:
            expected = accept_at + self.policy.turnout_s + alert.eta_s
            better = expected < self._goer_key(slowest) - _FASTER_BY_S
        return slowest if better and eta_known(alert) else None

    def _rank_roles(
        self, incident: Incident, effects: list[Effect], new: str | None = None
    ) -> None:
        """The best ``responders_needed`` counted responders are primaries; the rest backups.

        A responder on the way whose role changes (other than ``new``, who is about to
        get their "go") is told with another "go" carrying the new role: phones see
        only their own topics.
        """
        counted = sorted(
            (r for r in incident.responders if r.counted),
            key=lambda r: (r.arrived_at is None, self._goer_key(r), r.volunteer_id),
        )
        roles = {r.volunteer_id: Role.PRIMARY if i < incident.responders_needed else Role.BACKUP
                 for i, r in enumerate(counted)}  # fmt: skip
        for r in incident.responders:
            role = roles.get(r.volunteer_id, Role.BACKUP if r.on_the_way else r.role)
            if role == r.role:
                continue
            r.role = role
            if r.counted and r.on_the_way and r.volunteer_id != new:
                reason = (
                    AssignmentReason.NOW_PRIMARY
                    if role is Role.PRIMARY
                    else AssignmentReason.NOW_BACKUP
                )
                effects.append(
                    self._assignment(incident.alerts[r.alert_id], Action.GO, reason, role=role)
                )

    def _release(
        self,
        incident: Incident,
        responder: Responder,
        reason: AssignmentReason,
        now: float,
        effects: list[Effect],
    ) -> None:
        """Stand a responder on the way down: their place is no longer needed."""
        responder.released_at = now
        self._let_go(incident, responder, reason, effects)
        self._event(
            incident,
            EventType.STOOD_DOWN,
            now,
            effects,
            volunteer_id=responder.volunteer_id,
            alert_id=responder.alert_id,
            reason=reason,
        )

    def _let_go(
        self,
        incident: Incident,
        responder: Responder,
        reason: AssignmentReason,
        effects: list[Effect],
    ) -> None:
        """Uncommit a responder from ``incident`` and tell them to stand down."""
        self.roster.disengage(responder.volunteer_id, incident.id)
        effects.append(Release(responder.volunteer_id, incident.id))
        effects.append(
            self._assignment(incident.alerts[responder.alert_id], Action.STAND_DOWN, reason)
        )

    def _call_off(
        self, alerts: Iterable[Alert], reason: AssignmentReason, now: float, effects: list[Effect]
    ) -> None:
        """Stand down the volunteers of these open alerts: the calls are off."""
        for alert in alerts:
            alert.status = AlertStatus.STOOD_DOWN
            self._stand_down(alert, reason, now, effects)

    def _replace(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        """Alert others in place of a volunteer who dropped out; escalate if nobody is left."""
        book = self.policy.playbook
        if (book.one_at_a_time or book.replace_when_all_answered) and incident.open_alerts():
            return
        if not book.replace:
            chosen: list[Candidate] = []
        else:
            chosen = self._alert_best(incident, now, effects, fixed=book.replace)
        if not chosen and not incident.open_alerts() and not incident.confirmed:
            why: tuple[Escalation, dict[str, Any]] = (Escalation.ALL_DECLINED, {})
            if self._alert_budget_left(incident) == 0:
                why = self._nobody_reason(incident)
            self._escalate(incident, *why, now, effects)

    # ------------------------------------------------------------------ arrival

    def arrived(self, msg: Arrived, now: float) -> list[Effect]:
        incident = self.incidents.get(msg.incident_id)
        topic = self.codec.topic("volunteers", msg.volunteer_id, "arrived")
        if incident is None:
            return [
                Reject(
                    BadMessage(
                        topic,
                        f"unknown incident_id '{msg.incident_id}'",
                        "unknown_incident",
                        msg.incident_id,
                    )
                )
            ]
        if not any(r.volunteer_id == msg.volunteer_id for r in incident.responders):
            return [
                Reject(
                    BadMessage(
                        topic,
                        f"volunteer '{msg.volunteer_id}' is not assigned to "
                        f"incident '{msg.incident_id}'",
                        "not_alerted",
                        msg.incident_id,
                    )
                )
            ]
        effects: list[Effect] = []
        if not incident.ended:
            volunteer = self.volunteers.get(msg.volunteer_id)
            verified = volunteer is not None and self._near_scene(volunteer, incident, now)
            self._arrive(incident, msg.volunteer_id, now, effects, how="button", verified=verified)
        return effects

    def _near_scene(self, volunteer: Volunteer, incident: Incident, now: float) -> bool:
        """A recent position within the arrival radius plus its reported accuracy."""
        if volunteer.lat is None or volunteer.lon is None or volunteer.seen_at is None:
            return False
        if now - volunteer.seen_at > _FIX_MAX_AGE_S:
            return False
        slack = min(volunteer.accuracy_m or 0.0, _MAX_ACCURACY_M)
        distance = haversine_m(volunteer.lat, volunteer.lon, incident.lat, incident.lon)
        return distance <= self.policy.arrival_radius_m + slack

    def _arrive(
        self,
        incident: Incident,
        volunteer_id: str,
        now: float,
        effects: list[Effect],
        how: str,
        verified: bool,
    ) -> None:
        """A responder is on scene (``verified``: a position near the scene confirms it).

        An "I'm here" with no position near the scene is recorded as unverified: the
        control room sees it, but the time to arrival waits until a position confirms
        it, and nobody else is stood down on its word.
        """
        responder = next(r for r in incident.responders if r.volunteer_id == volunteer_id)
        if responder.arrived_at is not None and (responder.verified or not verified):
            return
        first = incident.first_arrival_at is None
        if responder.arrived_at is None:
            responder.arrived_at = now
            if first:
                incident.first_arrival_at = now
                self._move(incident, State.ON_SCENE, now, effects)
        first_verified = False
        if verified:
            responder.verified_at = now
            first_verified = incident.first_verified_at is None
            if first_verified:
                incident.first_verified_at = now
        tta = now - incident.reported_at
        self._event(
            incident,
            EventType.ARRIVED if responder.arrived_at == now else EventType.ARRIVAL_VERIFIED,
            now,
            effects,
            volunteer_id=volunteer_id,
            how=how,
            first=first,
            verified=verified,
            first_verified=first_verified,
            time_to_arrival_s=round(tta, 3),
            within_target=tta <= self.policy.target_s if first_verified else None,
        )
        if sum(1 for r in incident.responders if r.verified) >= incident.responders_needed:
            self._release_the_rest(incident, now, effects)
        self._rank_roles(incident, effects)
        self._changed(incident, effects)

    def _release_the_rest(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        """Enough are on scene: backups and overdue responders still on the way may go."""
        incident.next_wave_at = None
        self._call_off(_pending(incident), AssignmentReason.FILLED, now, effects)
        for responder in incident.responders:
            if responder.on_the_way:
                self._release(incident, responder, AssignmentReason.ENOUGH_ON_SCENE, now, effects)

    # ------------------------------------------------------------------ operators

    def _get(self, incident_id: str) -> Incident:
        incident = self.incidents.get(incident_id)
        if incident is None:
            raise UnknownIncident(incident_id)
        return incident

    def cancel(self, incident_id: str, now: float, by: str = "operator") -> list[Effect]:
        return self._end(self._get(incident_id), State.CANCELLED, now, by)

    def resolve(self, incident_id: str, now: float, by: str = "operator") -> list[Effect]:
        return self._end(self._get(incident_id), State.RESOLVED, now, by)

    def escalate(
        self, incident_id: str, now: float, by: str = "operator", reason: str = ""
    ) -> list[Effect]:
        incident = self._get(incident_id)
        advance(incident.id, incident.state, State.ESCALATED)
        effects: list[Effect] = []
        self._escalate(incident, Escalation.OPERATOR, {"by": by}, now, effects, by=by, words=reason)
        self._changed(incident, effects)
        return effects

    def assign(
        self, incident_id: str, volunteer_id: str, now: float, by: str = "operator"
    ) -> list[Effect]:
        """Commit a volunteer by hand (the operator reached them another way)."""
        incident = self._get(incident_id)
        if incident.ended:
            raise InvalidTransition(incident.id, incident.state, State.ASSIGNED)
        volunteer = self.volunteers.get(volunteer_id)
        if volunteer is None:
            raise UnknownVolunteer(volunteer_id)
        if volunteer.engaged is not None:
            raise InvalidTransition(incident.id, incident.state, State.ASSIGNED)
        effects: list[Effect] = []
        if any(r.volunteer_id == volunteer_id for r in incident.responders):
            return effects
        if volunteer.alert_id is not None:
            other = self.alerts.get(volunteer.alert_id)
            if other is not None and other.incident_id == incident.id:
                if other.status is AlertStatus.PENDING:  # as good as an accept
                    other.status, other.answered_at, other.assigned_by = (
                        AlertStatus.ACCEPTING,
                        now,
                        by,
                    )
                    effects.append(Claim(volunteer_id, incident.id))
                return effects
            if other is not None and other.status is AlertStatus.PENDING:  # the other call is off
                self._call_off([other], AssignmentReason.ASSIGNED_ELSEWHERE, now, effects)
                self._changed(self.incidents[other.incident_id], effects)
        distance = (
            haversine_m(volunteer.lat, volunteer.lon, incident.lat, incident.lon)
            if volunteer.lat is not None and volunteer.lon is not None
            else 0.0
        )
        eta = self.travel.eta_s(distance, volunteer.mode.value)
        alert = self._new_alert(incident, volunteer_id, 0, distance, eta, now, assigned_by=by)
        volunteer.alert_id = alert.alert_id
        self.roster.withdraw(volunteer_id)
        effects.append(Claim(volunteer_id, incident.id))
        return effects

    def amend(
        self, incident_id: str, changes: Amendment, now: float, by: str = "operator"
    ) -> list[Effect]:
        """An operator's change to an open incident (protocol 1.1 amendment).

        A new place stands down the alerts still unanswered (``incident moved``), sends
        the confirmed responders there (``go``, ``location updated``, their role kept)
        and starts the search again from it, as for a fresh report. A new kind brings
        that kind's priority and skills unless the amendment gives them. More responders
        wanted bring a search for more; fewer make the slowest backups; new skills
        apply to every alert from now on. Raises UnknownIncident, and InvalidTransition
        (from and to the incident's state) for an ended incident.
        """
        incident = self._get(incident_id)
        if incident.ended:
            raise InvalidTransition(incident.id, incident.state, incident.state)
        wanted: dict[str, Any] = {}
        if changes.kind is not None:
            wanted["kind"] = changes.kind
            if changes.kind is not incident.kind:
                defaults = self.kinds[changes.kind]
                wanted.setdefault("priority", defaults.priority)
                wanted.setdefault("skills", defaults.skills)
        for name in ("priority", "skills", "address", "description"):
            value = getattr(changes, name)
            if value is not None:
                wanted[name] = value
        if changes.responders is not None:
            wanted["responders_needed"] = changes.responders
        if changes.lat is not None and changes.lon is not None:
            wanted["lat"], wanted["lon"] = changes.lat, changes.lon
        before = {k: getattr(incident, k) for k in wanted}
        changed = {k: v for k, v in wanted.items() if before[k] != v}
        effects: list[Effect] = []
        if not changed:
            return effects  # nothing differs: no event, no messages
        moved = "lat" in changed or "lon" in changed
        # First, as it may raise (outside the area: the codec's check, made again): a
        # refused amendment changes nothing.
        cell_id = self.area.cell_at(wanted["lat"], wanted["lon"]).id if moved else None
        for name, value in changed.items():
            setattr(incident, name, value)
        if cell_id is not None:
            incident.cell_id = cell_id
        self._event(
            incident,
            EventType.AMENDED,
            now,
            effects,
            by=by,
            changes={k: _plain(v) for k, v in changed.items()},
            previous={k: _plain(before[k]) for k in changed},
        )
        if moved:
            self._moved(incident, now, effects)
        elif "address" in changed:  # same place, better words: those going are told
            for responder in incident.responders:
                if responder.on_the_way:
                    alert = incident.alerts[responder.alert_id]
                    effects.append(
                        self._go_to(
                            incident, alert, AssignmentReason.LOCATION_UPDATED, responder.role
                        )
                    )
        if "responders_needed" in changed:
            self._rank_roles(incident, effects)
            if incident.goers_open(self._goers(incident)) == 0:  # fewer wanted: filled now
                useless = [
                    a
                    for a in _pending(incident)
                    if self._would_displace(incident, a, max(now, a.sent_at + self.policy.reply_s))
                    is None
                ]
                self._call_off(useless, AssignmentReason.FILLED, now, effects)
        needs = {"kind", "priority", "skills", "responders_needed"}  # what the search asks
        if (
            not moved
            and needs & changed.keys()
            and incident.still_needed
            and incident.next_wave_at is None
        ):
            self._send_wave(incident, now, effects)  # more wanted, or a new need: search now
        self._changed(incident, effects)
        return effects

    def merge(
        self,
        incident_id: str,
        into: str,
        now: float,
        by: str = "operator",
        *,
        other_kind: bool = False,
    ) -> list[Effect]:
        """An operator merges a duplicate report into the incident it reports too.

        The duplicate ends cancelled, with ``merged_into`` set (a 1.0 client sees it
        cancelled; a reporter following its state learns where to look instead). Its
        alerted volunteers and responders are stood down (``incident merged ...``); if
        the incident merged into still needs responders, a search runs at once, in
        which they, free and near, are first in line: alerted like anyone, they accept
        the other incident themselves. Nobody is sent anywhere without saying yes.

        Raises UnknownIncident (``incident_id`` or ``into``) and BadMerge: a merge into
        itself, of an ended (or already merged) incident, into an ended one (so no cycle
        can form: a merged incident is ended), or of another kind unless ``other_kind``
        (the operator's say-so).
        """
        incident = self._get(incident_id)
        if into == incident_id:
            raise BadMerge("merge_into_itself", f"incident '{into}' cannot be merged into itself")
        if incident.ended:
            if incident.merged_into:
                raise BadMerge(
                    "already_merged",
                    f"incident '{incident_id}' was already merged into '{incident.merged_into}'",
                )
            raise BadMerge(
                "incident_ended",
                f"incident '{incident_id}' is {incident.state.value} already: only an open "
                "incident can be merged",
            )
        target = self._get(into)
        if target.ended:
            where = f" (merged into '{target.merged_into}')" if target.merged_into else ""
            raise BadMerge(
                "target_ended",
                f"incident '{into}' is {target.state.value}{where}: merge into an open "
                "incident, or cancel this one",
            )
        if target.kind is not incident.kind and not other_kind:
            raise BadMerge(
                "other_kind",
                f"incident '{incident_id}' is a {incident.kind.value} and '{into}' a "
                f'{target.kind.value}: send "other_kind": true to merge them anyway',
            )
        effects = self._end(
            incident,
            State.CANCELLED,
            now,
            by,
            reason=AssignmentReason.MERGED,
            end_reason=f"merged into {into} by {by}",
            merged_into=into,
        )
        if len(target.merged_from) < _MERGED_FROM_MAX:
            target.merged_from.append(incident_id)
        if target.likely_duplicate_of == incident_id:  # the first merged into its copy
            target.likely_duplicate_of = ""
        self._event(target, EventType.MERGED, now, effects, by=by, merged=incident_id)
        # The duplicate's volunteers are free now, and the nearest: a search at once.
        searching = target.still_needed and not (
            self.policy.playbook.next_wave_only_if_unaccepted and target.responders
        )
        if searching and self._alert_best(target, now, effects):
            self._move(target, State.ALERTING, now, effects, only_from=(State.OPEN,))
        self._changed(target, effects)
        return effects

    def _moved(self, incident: Incident, now: float, effects: list[Effect]) -> None:
        """The incident is somewhere else now: new ETAs, new directions, a new search."""
        incident.moved_at = now
        self._call_off(_pending(incident), AssignmentReason.INCIDENT_MOVED, now, effects)
        for alert in incident.alerts.values():
            if alert.status is AlertStatus.ACCEPTING:  # its "go" will carry the new place
                alert.distance_m, alert.eta_s = self._reach(alert.volunteer_id, incident, alert)
        for responder in incident.responders:
            if responder.released_at is not None:
                continue
            alert = incident.alerts[responder.alert_id]
            if responder.on_the_way:
                distance, eta = self._reach(responder.volunteer_id, incident, alert)
                responder.distance_m, responder.eta_s = distance, eta
                responder.rerouted_at = now
                if eta_known(alert):
                    due = now + self.policy.overdue_after_s(eta)
                    self.timers.at(due, TimerKind.OVERDUE, incident.id, alert.alert_id)
            # On scene at the old place too: they are told where it is now.
            effects.append(
                self._go_to(incident, alert, AssignmentReason.LOCATION_UPDATED, responder.role)
            )
        incident.wave = 0  # the search starts again from the new place
        incident.next_wave_at = None
        if incident.still_needed:
            self._send_wave(incident, now, effects)

    def _reach(self, volunteer_id: str, incident: Incident, alert: Alert) -> tuple[float, float]:
        """(distance, ETA) from the volunteer's last position to the incident; the alert's
        own figures when the position is unknown (a hand assignment)."""
        volunteer = self.volunteers.get(volunteer_id)
        if volunteer is None or volunteer.lat is None or volunteer.lon is None:
            return alert.distance_m, alert.eta_s
        distance = haversine_m(volunteer.lat, volunteer.lon, incident.lat, incident.lon)
        return distance, self.travel.eta_s(distance, volunteer.mode.value)

    def _go_to(
        self, incident: Incident, alert: Alert, reason: AssignmentReason, role: Role
    ) -> SendAssignment:
        """A "go" that carries the incident's place (protocol 1.1, after a move)."""
        return SendAssignment(
            incident.id,
            alert.volunteer_id,
            alert.alert_id,
            Action.GO,
            reason,
            role,
            self._expiry_s,
            lat=incident.lat,
            lon=incident.lon,
            address=incident.address,
        )

    def _end(
        self,
        incident: Incident,
        state: State,
        now: float,
        by: str,
        *,
        reason: AssignmentReason | None = None,
        end_reason: str = "",
        merged_into: str = "",
    ) -> list[Effect]:
        advance(incident.id, incident.state, state)
        effects: list[Effect] = []
        if incident.ended:
            return effects
        self._move(incident, state, now, effects)
        incident.ended_at, incident.end_reason = now, end_reason or f"{state.value} by {by}"
        incident.next_wave_at = None
        if reason is None:
            reason = AssignmentReason.ended(state.value)
        self._call_off(incident.open_alerts(), reason, now, effects)
        for responder in incident.responders:
            if responder.released_at is None:  # else stood down already
                self._let_go(incident, responder, reason, effects)
        if merged_into:
            incident.merged_into = merged_into
            incident.likely_duplicate_of = ""  # decided: no longer a guess
            self._event(incident, EventType.MERGED, now, effects, by=by, into=merged_into)
        self._event(incident, EventType(state.value), now, effects, by=by)
        self.timers.at(now + self.state_retention_s, TimerKind.CLEAR, incident.id)
        self._changed(incident, effects)
        return effects

    # ------------------------------------------------------------------ restore

    def forget_incident(self, incident_id: str) -> None:
        """Drop an incident and its alerts from this core, with no effects (another engine
        instance owns it now). Its volunteers stay out of the index until they next report:
        the owner may have them alerted or committed."""
        incident = self.incidents.pop(incident_id, None)
        if incident is None:
            return
        for alert_id, alert in incident.alerts.items():
            self.alerts.pop(alert_id, None)
            volunteer = self.volunteers.get(alert.volunteer_id)
            if volunteer is not None and volunteer.alert_id == alert_id:
                volunteer.alert_id = None
        for responder in incident.responders:
            self.roster.disengage(responder.volunteer_id, incident_id, rejoin=False)

    def restore_volunteer(
        self,
        volunteer_id: str,
        *,
        duty: str | None,
        skills: Iterable[str],
        mode: str,
        position: tuple[float, float, float] | None,
        settings: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Rebuild one volunteer from the store after a restart (position: lat, lon, at)."""
        volunteer = self.roster.ensure(volunteer_id)
        volunteer.duty = Duty(duty) if duty else None
        volunteer.skills = frozenset(skills)
        volunteer.mode = Mode(mode)
        _apply_settings(volunteer, settings or {})
        if position is not None and volunteer.duty is not Duty.OFF_DUTY:
            lat, lon, at = position
            self.roster.restore_position(volunteer, lat, lon, at)
        if now is not None:
            self._rest(volunteer, now)
        self.roster.refresh(volunteer)

    def restore_volunteers(self, stored: StoredVolunteers, now: float | None = None) -> None:
        """`restore_volunteer` for each of ``stored`` in turn, to the same effect, in
        bulk (a restart brings back up to a million): each distinct profile is decoded
        once, and the volunteers not known yet are made whole and added in one step."""
        profiles = [_decode_profile(p) for p in stored.profiles]
        known = self.volunteers
        add = self.roster.add_restored
        for vid, k, position in zip(stored.ids, stored.profile_of, stored.positions, strict=True):
            if vid in known:  # given twice, or heard from already: one at a time
                p = stored.profiles[k]
                self.restore_volunteer(
                    vid,
                    duty=p.duty,
                    skills=p.skills,
                    mode=p.mode,
                    position=position,
                    settings=p.settings,
                    now=now,
                )
                continue
            duty, skills, mode, receipts, budget, quiet, located, settled = profiles[k]
            if position is not None and located:
                lat, lon, at = position
                volunteer = Volunteer(
                    vid, duty, skills, mode, lat, lon, at, None, None, receipts, budget, quiet
                )
            else:
                volunteer = Volunteer(
                    vid, duty, skills, mode, None, None, None, None, None, receipts, budget, quiet
                )
            add(volunteer)
            if now is not None and not settled:
                self._rest(volunteer, now)

    def restore_incident(self, record: Mapping[str, Any]) -> list[Effect]:
        """Rebuild one incident and its timers after a restart. Call after the volunteers.

        Returns the claims that were in flight when the engine stopped (they are
        idempotent, so asking again is safe).
        """
        incident = Incident.from_record(record)
        self.incidents[incident.id] = incident
        if not incident.ended:  # to compare new reports with (pruned by the next report)
            self.recent.add(
                incident.kind, incident.lat, incident.lon, incident.id, incident.received_at
            )
        effects: list[Effect] = []
        for alert in incident.alerts.values():
            self.alerts[alert.alert_id] = alert
            if alert.status in OPEN_ALERT:
                volunteer = self.roster.ensure(alert.volunteer_id)
                volunteer.alert_id = alert.alert_id
                self.roster.refresh(volunteer)
                if alert.status is AlertStatus.PENDING:
                    self.timers.at(alert.expires_at, TimerKind.EXPIRE, incident.id, alert.alert_id)
                else:
                    effects.append(Claim(alert.volunteer_id, incident.id))
        if incident.ended:
            self.timers.at(
                (incident.ended_at or incident.received_at) + self.state_retention_s,
                TimerKind.CLEAR,
                incident.id,
            )
            return effects
        for responder in incident.responders:
            if responder.released_at is not None:
                continue
            volunteer = self.roster.ensure(responder.volunteer_id)
            volunteer.engaged = incident.id
            self.roster.refresh(volunteer)
            sent = incident.alerts.get(responder.alert_id)
            if responder.on_the_way and not responder.overdue and sent and eta_known(sent):
                start = responder.rerouted_at or responder.accepted_at  # moved: from then
                due = start + self.policy.overdue_after_s(responder.eta_s)
                self.timers.at(due, TimerKind.OVERDUE, incident.id, responder.alert_id)
        if incident.next_wave_at is not None:
            self.timers.at(incident.next_wave_at, TimerKind.WAVE, incident.id)
        if incident.first_verified_at is None:  # a miss while stopped is logged at once
            self.timers.at(
                incident.reported_at + self.policy.target_s, TimerKind.TARGET, incident.id
            )
        return effects

    # ------------------------------------------------------------------ helpers

    @property
    def _expiry_s(self) -> int:
        """The MQTT 5 expiry of alerts and assignments: as long as an alert is valid."""
        return max(1, round(self.policy.alert_expiry_s))

    def _assignment(
        self, alert: Alert, action: Action, reason: AssignmentReason, role: Role | None = None
    ) -> SendAssignment:
        return SendAssignment(
            alert.incident_id,
            alert.volunteer_id,
            alert.alert_id,
            action,
            reason,
            role,
            self._expiry_s,
        )

    def _stand_down(
        self, alert: Alert, reason: AssignmentReason, now: float, effects: list[Effect]
    ) -> None:
        self.roster.free(alert.volunteer_id, alert.alert_id)
        effects.append(self._assignment(alert, Action.STAND_DOWN, reason))

    def _move(
        self,
        incident: Incident,
        state: State,
        now: float,
        effects: list[Effect],
        only_from: tuple[State, ...] | None = None,
    ) -> None:
        if incident.state == state or (only_from is not None and incident.state not in only_from):
            return
        previous = incident.state
        incident.state = advance(incident.id, incident.state, state)
        self._event(
            incident, EventType.STATE, now, effects, **{"from": previous.value, "to": state.value}
        )

    def _escalate(
        self,
        incident: Incident,
        why: Escalation,
        params: dict[str, Any],
        now: float,
        effects: list[Effect],
        by: str = "engine",
        words: str = "",
    ) -> None:
        """To a person, with why as a code and its figures (``words``: an operator's own)."""
        if incident.state is State.ESCALATED:
            return
        reason = words or why.words(params)
        incident.escalated_at = now
        incident.escalation_reason = reason
        incident.escalation_code = why.value
        incident.escalation_params = params
        self._move(incident, State.ESCALATED, now, effects)
        self._event(
            incident,
            EventType.ESCALATED,
            now,
            effects,
            reason=reason,
            by=by,
            code=why.value,
            params=params,
        )

    def _event(
        self,
        incident: Incident,
        event_type: EventType,
        now: float,
        effects: list[Effect],
        **data: Any,
    ) -> None:
        effects.append(LogEvent(incident.id, event_type, now, data))

    def _changed(self, incident: Incident, effects: list[Effect]) -> None:
        """Store, then announce: the retained state goes out only after SaveIncident."""
        incident.version += 1
        effects.append(
            SaveIncident(
                incident.id,
                incident.to_record(),
                open=not incident.ended,
                reported_at=incident.reported_at,
                ended_at=incident.ended_at,
            )
        )
        effects.append(StateChanged(incident.id, self.public_state(incident)))


def _plain(value: Any) -> Any:
    """A field's value as the event log keeps it (JSON-ready)."""
    if isinstance(value, tuple):
        return list(value)
    return value.value if isinstance(value, Kind) else value


def _pending(incident: Incident) -> list[Alert]:
    """The incident's alerts still awaiting an answer."""
    return [a for a in incident.alerts.values() if a.status is AlertStatus.PENDING]


# The district's local time, for quiet hours: China Standard Time (UTC+8, no DST).
_LOCAL_OFFSET_S = 8 * 3600
_DAY_S = 86_400.0


def _accepting(incident: Incident, volunteer_id: str) -> Alert | None:
    """The volunteer's alert of ``incident`` whose accept waits for its claim, if any."""
    return next(
        (
            a
            for a in incident.alerts.values()
            if a.volunteer_id == volunteer_id and a.status is AlertStatus.ACCEPTING
        ),
        None,
    )


def _resting_until(volunteer: Volunteer, now: float) -> tuple[float | None, float | None]:
    """(until when the volunteer must not be alerted, or None; when quiet hours begin next)."""
    until: float | None = None
    if volunteer.max_alerts_per_day is not None:
        recent = volunteer.alerted_at or deque()
        while recent and recent[0] <= now - _DAY_S:
            recent.popleft()
        if len(recent) >= volunteer.max_alerts_per_day:
            until = recent[len(recent) - volunteer.max_alerts_per_day] + _DAY_S
    next_quiet = None
    if volunteer.quiet_hours is not None:
        start, end = (m * 60.0 for m in volunteer.quiet_hours)
        t = (now + _LOCAL_OFFSET_S) % _DAY_S  # seconds into the local day
        inside = start <= t < end if start < end else (t >= start or t < end)
        if inside:
            quiet_end = now + (end - t) % _DAY_S
            until = quiet_end if until is None else max(until, quiet_end)
        else:
            next_quiet = now + (start - t) % _DAY_S
    return until, next_quiet


def _profile(volunteer: Volunteer) -> tuple[Any, ...]:
    """What `SaveVolunteer` stores of ``volunteer``, to tell whether a status changed it."""
    return (
        volunteer.duty,
        volunteer.skills,
        volunteer.mode,
        volunteer.receipts,
        volunteer.max_alerts_per_day,
        volunteer.quiet_hours,
    )


def _settings(volunteer: Volunteer) -> dict[str, Any]:
    """The protocol 1.1 settings to keep across a restart."""
    out: dict[str, Any] = {}
    if volunteer.receipts:
        out["receipts"] = True
    if volunteer.max_alerts_per_day is not None:
        out["max_alerts_per_day"] = volunteer.max_alerts_per_day
    if volunteer.quiet_hours is not None:
        out["quiet_hours"] = list(volunteer.quiet_hours)
    return out


def _decode_profile(
    p: StoredProfile,
) -> tuple[Duty | None, frozenset[str], Mode, bool, int | None, tuple[int, int] | None, bool, bool]:
    """A stored profile as `restore_volunteer` reads it: duty, skills, mode, the settings
    as `_apply_settings` sets them (receipts, alert budget, quiet hours); then whether a
    stored position is kept (not off duty) and whether the volunteer can never be
    resting just restored (neither budget nor quiet hours: `_resting_until`)."""
    settings = Volunteer("")
    _apply_settings(settings, p.settings)
    duty = Duty(p.duty) if p.duty else None
    return (
        duty,
        frozenset(p.skills),
        Mode(p.mode),
        settings.receipts,
        settings.max_alerts_per_day,
        settings.quiet_hours,
        duty is not Duty.OFF_DUTY,
        settings.max_alerts_per_day is None and settings.quiet_hours is None,
    )


def _apply_settings(volunteer: Volunteer, settings: Mapping[str, Any]) -> None:
    volunteer.receipts = bool(settings.get("receipts", False))
    budget = settings.get("max_alerts_per_day")
    volunteer.max_alerts_per_day = budget if isinstance(budget, int) else None
    quiet = settings.get("quiet_hours")
    volunteer.quiet_hours = (int(quiet[0]), int(quiet[1])) if quiet else None
