"""The offline scenario runner: the engine's own core on a simulated clock, no broker, no Redis.

``run_volunteers`` plays a scenario (volunteers, incidents, how people answer and travel)
against ``dispatch.dispatcher.Dispatcher`` itself, built with the engine's policy,
travel model and kind defaults: what it reports is what the engine would have decided.
The shell's part is played in-process: effects are read as the live shell reads them
(a ``Claim`` is answered at once, as Redis would, with the same "one incident per
volunteer" rule; a ``SendAlert`` or ``SendAssignment`` goes to the simulated phone
that it names), and the core's own timers are fired through ``next_deadline()`` / ``tick()``.
A day of a district runs in about a second.

The simulated world (ASSUMPTIONS, chosen from the design and the published studies of
volunteer responder schemes; every one is a ``Scenario`` field):

- ``volunteers`` are on duty throughout (think of N as "on duty at any time"), each at
  home where people live (``simulators.incidents.DensityModel``; the same generator as
  the live fleet, so the same seed places the same people), with the fleet's mode mix
  (walk 70 %, bike 20 %, e-bike 10 %) and skills (first aid 60 %, patrol 20 %,
  mediation 15 %; ``skills="all"`` gives everybody every skill). They stay at home
  until called; positions never go stale (phones report every few seconds).
- The human model (on by default; each a flag, echoed under ``"assumptions"`` in the
  JSON, sourced or stated as an assumption in docs/planning.md ("The human model");
  ``NO_HUMAN_MODEL`` turns it all off, as the live-vs-offline test does):
  ``intake_s`` (30 s): the call is handled before the report reaches the engine; the
  report's ``reported_at`` is the call's start, so every time counts from then (for
  the stations baseline too). ``unreachable_share`` (10 %): phones on duty that never
  receive an alert, a property of the person drawn once per run (``unreachable``).
  ``silent_share`` (40 %): of the alerts received and not accepted, the share never
  answered at all (the others are declined). ``turnout_s`` (lognormal, median 40 s,
  ``turnout_sigma`` 0.5): from the accept to setting off. ``last_leg_s`` (20 s): from
  the street point (the engine's geofence, the button) to the patient; time to arrival
  is at the patient, and the engine's own moment is kept beside it.
- Delivery receipts (protocol 1.1): ``receipts_share`` (100 %, the shipped page and
  terminal) of the volunteers' phones send them, drawn once per run
  (``behaviour/receipts``, apart from ``unreachable``), and their status says so. A
  reachable phone sends the receipt after a lognormal delay (median
  ``receipt_median_s`` 1 s, sigma 0.5); an unreachable one never does, so the engine
  marks the alert undelivered after its delivery timeout (8 s) and alerts the next best
  at once, where without receipts it waits for the wave timeout. An answer never goes
  out before the receipt.
- An alert received is answered after a lognormal delay (median 15 s), ``accept`` with
  probability ``acceptance`` (so per alert sent, ``acceptance × (1 −
  unreachable_share)``); a volunteer who is stood down before answering never answers
  (as the live fleet does).
- A confirmed volunteer gets ready (the turnout, counted from the accept; never set
  off before the engine's "go"), then travels the straight line × circuity
  (``geo.travel``) at the mode's speed (walkers ``walk_speed_mps``) with a personal
  ±15 % spread, and presses "arrived" at the street point. Only ``arrive_share`` (72 %)
  of them get there.
- Phones report where they are every ``location_interval_s`` while assigned (10 s by
  default, on the safe side: the volunteer app asks for a fix every 2 s on the way, but
  phones throttle pages in the background and fixes get lost; 0: no reports, the
  runner before), and the reports go to the engine's ``location()``, so its geofence
  arrival and its stall check ("no progress") run as they would live. A responder who
  will arrive moves along the straight line to the incident at the speed that takes
  the trip's time (line distance / trip time): the geofence often sees the arrival a
  few seconds before the button; whichever comes first counts, the other is not sent.
  A responder who will not arrive never sets off (the app is open, the person does
  not move), except ``halfway_share`` of them, who set off and stop half-way (no
  nearer than twice the arrival radius). Reports stop on arrival and on stand-down; a
  responder stood down on the way is back home after as long as they had walked (one
  report where they stopped, one at home).
- Incidents come as a Poisson stream (``rate_per_hour``) with the district's kind mix
  (``simulators.incidents.KIND_MIX``), placed by the same density model. The control
  room resolves an incident ``on_scene_s`` after the first arrival (the time on scene
  and the way home: responders are busy until then and available at home afterwards),
  or ``unreached_resolve_s`` after the report when no volunteer got there.

Randomness: independent streams are derived from ``seed`` by name (population,
incidents, engine, behaviour/unreachable), so two runs with the same seed are identical
and a run with more volunteers faces the very same incidents. How a person answers one
call and how that trip goes come from a stream of that person and that incident
(``reply/<vid>/<incident>``, ``trip/<vid>/<incident>``): under another policy, the same
person alerted for the same incident answers the same way, so that policies are
compared on the same behaviour (common random numbers) and not on luck. Nothing reads
a clock: simulated time starts at ``EPOCH``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dispatch.codec import Codec
from dispatch.config import Config, load_config
from dispatch.dispatcher import Dispatcher, Incident
from dispatch.effects import (
    Action,
    Claim,
    Effect,
    EventType,
    LogEvent,
    Release,
    SendAlert,
    SendAssignment,
)
from dispatch.model import (
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
from dispatch.policy import Policy, Strategy, wave_size
from geo.area import ServiceArea
from geo.distance import haversine_m
from geo.travel import TravelModel
from simulators.fleet import (
    DENSE_WALK_MPS,
    SKILL_SHARES,
    SPEEDS_MPS,
    FleetModel,
    FleetParams,
    near_point,
)
from simulators.incidents import KIND_MIX, DensityModel, arrival_times, sample_kind

__all__ = [
    "EPOCH",
    "HUMAN_MODEL",
    "NO_HUMAN_MODEL",
    "OPTION_NAMES",
    "PlannedIncident",
    "Scenario",
    "ScenarioError",
    "SimVolunteer",
    "incident_schedule",
    "load_area",
    "make_population",
    "qualified_on_duty",
    "receipts",
    "run_volunteers",
    "stream",
    "unreachable",
]

# Simulated time starts here (2026-11-26T00:00:00Z): incident ids carry the day.
EPOCH = 1795651200.0
ROOT = "sim"

# The command-line option that sets each Scenario field, for error messages.
OPTION_NAMES: Mapping[str, str] = {
    "volunteers": "--volunteers",
    "acceptance": "--acceptance",
    "hours": "--hours",
    "seed": "--seed",
    "policy": "--policy",
    "baseline": "--baseline",
    "rate_per_hour": "--rate",
    "walk_speed_mps": "--walk-speed",
    "bike_speed_mps": "--bike-speed",
    "ebike_speed_mps": "--ebike-speed",
    "speed_spread": "--speed-spread",
    "circuity": "--circuity",
    "reply_median_s": "--reply-delay",
    "reply_sigma": "--reply-sigma",
    "arrive_share": "--arrive-share",
    "on_scene_s": "--on-scene",
    "unreached_resolve_s": "--unreached-resolve",
    "responders": "--responders",
    "skills": "--skills",
    "target_s": "--target",
    "location_interval_s": "--location-interval",
    "halfway_share": "--halfway-share",
    "fleet_speeds": "--fleet-speeds",
    "near": "--near",
    "spread_m": "--spread",
    "stations": "--stations",
    "station_delay_min_s": "--station-delay-min",
    "station_delay_max_s": "--station-delay-max",
    "vehicle_speed_kmh": "--vehicle-speed",
    "vehicle_circuity": "--vehicle-circuity",
    "turnout_s": "--turnout",
    "turnout_sigma": "--turnout-sigma",
    "silent_share": "--silent-share",
    "unreachable_share": "--unreachable-share",
    "receipts_share": "--receipts-share",
    "daily_budget": "--daily-budget",
    "receipt_median_s": "--receipt-delay",
    "last_leg_s": "--last-leg",
    "intake_s": "--intake",
}

# The human model: the Scenario fields echoed under "assumptions" in the JSON, each
# sourced or stated as an assumption in docs/planning.md ("The human model").
HUMAN_MODEL = (
    "turnout_s",
    "turnout_sigma",
    "silent_share",
    "unreachable_share",
    "last_leg_s",
    "intake_s",
)

# Each of them set so that it has no effect: the world before the human model.
NO_HUMAN_MODEL: Mapping[str, float] = {
    "turnout_s": 0.0,
    "silent_share": 0.0,
    "unreachable_share": 0.0,
    "last_leg_s": 0.0,
    "intake_s": 0.0,
}


class ScenarioError(ValueError):
    """A scenario value that cannot be simulated; the message names the option to fix."""

    def __init__(self, name: str, value: object, rule: str) -> None:
        option = OPTION_NAMES.get(name, name)
        super().__init__(f"{option} must be {rule}, got {value!r}")
        self.name = name
        self.option = option


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run depends on besides the service area and the engine's configuration."""

    volunteers: int = 1000
    acceptance: float = 0.35
    hours: float = 24.0
    seed: int = 1
    policy: str = "waves"  # the engine's Strategy: "waves" or "naive"
    baseline: str | None = None  # "stations": no volunteers, vehicles from fixed stations
    rate_per_hour: float = 8.0
    walk_speed_mps: float = 1.8
    bike_speed_mps: float = 4.0
    ebike_speed_mps: float = 5.5
    speed_spread: float = 0.15  # sigma of the log of a person's speed factor
    circuity: float = 1.3
    reply_median_s: float = 15.0
    reply_sigma: float = 0.6
    arrive_share: float = 0.72
    on_scene_s: float = 900.0
    unreached_resolve_s: float = 1800.0
    responders: int = 1  # responders asked for per incident
    skills: str = "mix"  # "mix": the fleet's skill shares; "all": everybody has every skill
    target_s: float = 180.0
    location_interval_s: float = 10.0  # phones' location reports while assigned; 0: none
    halfway_share: float = 0.0  # of those who never arrive: set off and stop half-way
    fleet_speeds: bool = False  # walkers as the live fleet: 2.3 m/s, 1.8 in the old town
    near: tuple[float, float] | None = None  # volunteers and incidents around this point
    spread_m: float = 600.0  # ... within this radius
    # The stations baseline (simulators/stations.py says where the figures come from).
    stations: int = 14
    station_delay_min_s: float = 30.0  # after the intake: passing it on, crew turnout
    station_delay_max_s: float = 120.0
    vehicle_speed_kmh: float = 16.0  # to the street point; the last leg is on foot
    vehicle_circuity: float = 1.4
    # The human model (docs/planning.md ("The human model"): a source or "an assumption" each).
    turnout_s: float = 40.0  # median accept -> setting off, lognormal; 0: at once
    turnout_sigma: float = 0.5  # of its log: 90 % between 0.44 and 2.3 x the median
    silent_share: float = 0.4  # of the alerts not accepted: never answered at all
    unreachable_share: float = 0.1  # phones on duty that never receive an alert
    # Protocol 1.1: phones that send delivery receipts (the shipped apps all do) and how
    # long a receipt takes (median, lognormal with sigma RECEIPT_SIGMA).
    receipts_share: float = 1.0
    receipt_median_s: float = 1.0
    # Protocol 1.1: every volunteer's own alert budget (max_alerts_per_day); 0: none.
    daily_budget: int = 0
    last_leg_s: float = 20.0  # from the street point (geofence, button) to the patient
    intake_s: float = 30.0  # the call's start -> the report reaches the engine

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ScenarioError(name, value, "a number")
            if not math.isfinite(value):
                raise ScenarioError(name, value, "a finite number")
            return float(value)

        def integer(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ScenarioError(name, value, f"a whole number from {lo} to {hi}")

        integer("volunteers", 0, 1_000_000)
        integer("seed", -(2**63), 2**63 - 1)
        integer("responders", 1, 10)
        integer("stations", 1, 1000)
        integer("daily_budget", 0, 100)  # the protocol's 1-100; 0: no budget
        for name in (
            "acceptance",
            "arrive_share",
            "halfway_share",
            "silent_share",
            "unreachable_share",
            "receipts_share",
        ):
            if not 0.0 <= number(name) <= 1.0:
                raise ScenarioError(name, getattr(self, name), "a share between 0 and 1")
        for name in (
            "hours",
            "rate_per_hour",
            "walk_speed_mps",
            "bike_speed_mps",
            "ebike_speed_mps",
            "reply_median_s",
            "on_scene_s",
            "unreached_resolve_s",
            "target_s",
            "spread_m",
            "vehicle_speed_kmh",
        ):
            if not number(name) > 0.0:
                raise ScenarioError(name, getattr(self, name), "greater than 0")
        if self.hours > 24 * 366:
            raise ScenarioError("hours", self.hours, "at most a year (8784)")
        if self.rate_per_hour * self.hours > 2_000_000:
            raise ScenarioError(
                "rate_per_hour", self.rate_per_hour, "small enough for at most 2,000,000 incidents"
            )
        if not 0.0 < number("receipt_median_s") <= 60.0:
            raise ScenarioError(
                "receipt_median_s", self.receipt_median_s, "greater than 0 and at most 60 seconds"
            )
        for name in ("turnout_s", "last_leg_s", "intake_s"):
            if not 0.0 <= number(name) <= 3600.0:
                raise ScenarioError(name, getattr(self, name), "between 0 and 3600 seconds")
        for name in ("speed_spread", "reply_sigma", "turnout_sigma"):
            if not 0.0 <= number(name) <= 2.0:
                raise ScenarioError(name, getattr(self, name), "between 0 and 2")
        for name in ("circuity", "vehicle_circuity"):
            if not 1.0 <= number(name) <= 5.0:
                raise ScenarioError(name, getattr(self, name), "between 1 and 5 (street / line)")
        if not 0.0 <= number("location_interval_s") <= 3600.0:
            raise ScenarioError(
                "location_interval_s",
                self.location_interval_s,
                "between 0 (no location reports) and 3600 seconds",
            )
        lo, hi = number("station_delay_min_s"), number("station_delay_max_s")
        if not 0.0 <= lo <= hi:
            raise ScenarioError(
                "station_delay_min_s", lo, f"at least 0 and at most --station-delay-max ({hi})"
            )
        if self.policy not in {s.value for s in Strategy}:
            names = ", ".join(f"'{s.value}'" for s in Strategy)
            raise ScenarioError("policy", self.policy, f"one of {names}")
        if self.baseline not in (None, "stations"):
            raise ScenarioError("baseline", self.baseline, "'stations' (or left out)")
        if self.skills not in ("mix", "all"):
            raise ScenarioError("skills", self.skills, "'mix' or 'all'")
        if self.near is not None and (
            len(self.near) != 2 or not (-90 <= self.near[0] <= 90 and -180 <= self.near[1] <= 180)
        ):
            raise ScenarioError("near", self.near, "LAT,LON in degrees")

    @property
    def duration_s(self) -> float:
        return self.hours * 3600.0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["near"] = list(self.near) if self.near is not None else None
        return out

    def assumptions(self) -> dict[str, float]:
        """The human model of this run, as the JSON's ``"assumptions"`` echoes it."""
        return {name: float(getattr(self, name)) for name in HUMAN_MODEL}


def load_area(config: Config) -> ServiceArea:
    """The service area the engine would serve with ``config`` (Shangcheng by default)."""
    return ServiceArea.from_geojson(
        config.area_geojson, cell_size_m=config.cell_size_m, name=config.area_name
    )


def stream(seed: int, name: str) -> random.Random:
    """The independent random stream ``name`` of a run (a string seed hashes stably)."""
    return random.Random(f"scenario/{seed}/{name}")


def _placement(
    scenario: Scenario, area: ServiceArea, density: DensityModel
) -> Callable[[random.Random], tuple[float, float]]:
    if scenario.near is not None:
        return near_point(area, scenario.near[0], scenario.near[1], scenario.spread_m)
    return density.sample


# ----------------------------------------------------------------------------- population


@dataclass(slots=True)
class SimVolunteer:
    id: str
    lat: float
    lon: float
    mode: Mode
    skills: tuple[str, ...]
    speed_mps: float
    busy_with: str | None = None  # the incident this person is on
    call: tuple[str, str] | None = None  # (alert id, incident id) being considered
    will_arrive: bool = True
    generation: int = 0  # bumped whenever a pending reply or trip becomes moot
    at: tuple[float, float] | None = None  # where they are when not at home (None: home)
    leg: _Leg | None = None  # the trip under way, for the location reports
    trips: int = 0  # bumped at every set-off and stand-down: a pending walk home is moot
    accepted_at: float | None = None  # when they last accepted: getting ready starts then

    @property
    def position(self) -> tuple[float, float]:
        return self.at if self.at is not None else (self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class _Leg:
    """A straight walk from (lat0, lon0) at ``t0`` to (lat1, lon1), ``duration`` later."""

    lat0: float
    lon0: float
    lat1: float
    lon1: float
    t0: float
    duration: float

    def moving_s(self, now: float) -> float:
        return min(max(0.0, now - self.t0), self.duration)

    def at(self, now: float) -> tuple[float, float]:
        f = self.moving_s(now) / self.duration if self.duration > 0 else 1.0
        return self.lat0 + f * (self.lat1 - self.lat0), self.lon0 + f * (self.lon1 - self.lon0)


def make_population(scenario: Scenario, area: ServiceArea) -> list[SimVolunteer]:
    """The volunteers: placed, equipped and given speeds exactly as the live fleet would be.

    ``simulators.fleet.FleetModel`` draws who lives where, with which mode and skills and
    personal speed factor, from the ``population`` stream; the speed is then the
    scenario's speed for the mode times that factor (or the fleet's own speed with
    ``fleet_speeds``).
    """
    density = DensityModel(area)
    model = FleetModel(
        area,
        scenario.volunteers,
        stream(scenario.seed, "population"),
        ROOT,
        FleetParams(acceptance=scenario.acceptance, arrive_share=scenario.arrive_share),
        place=_placement(scenario, area, density),
        density=density,
    )
    speeds = {
        "walk": scenario.walk_speed_mps,
        "bike": scenario.bike_speed_mps,
        "ebike": scenario.ebike_speed_mps,
    }
    everything = tuple(SKILL_SHARES)
    people = []
    for v in model.volunteers.values():
        if scenario.fleet_speeds:
            speed = v.speed_mps
        else:
            base = SPEEDS_MPS[v.mode]
            if v.mode == "walk" and density.is_dense(v.lat, v.lon):
                base = DENSE_WALK_MPS
            factor = v.speed_mps / base  # the fleet's lognormal(0, 0.15) draw
            if scenario.speed_spread != 0.15:
                factor = math.exp(math.log(factor) * scenario.speed_spread / 0.15)
            speed = speeds[v.mode] * factor
        people.append(
            SimVolunteer(
                id=v.id,
                lat=v.lat,
                lon=v.lon,
                mode=Mode(v.mode),
                skills=everything if scenario.skills == "all" else v.skills,
                speed_mps=speed,
            )
        )
    return people


def unreachable(scenario: Scenario, ids: Sequence[str]) -> frozenset[str]:
    """The volunteers whose phones never receive an alert in this run.

    A property of the person (a phone that kills the app, no data, do-not-disturb), drawn
    once per run, one draw per volunteer in the population's order from the stream
    ``behaviour/unreachable``: the same people for every policy with the same seed, and
    raising the share only adds people to them.
    """
    rng = stream(scenario.seed, "behaviour/unreachable")
    return frozenset(vid for vid in ids if rng.random() < scenario.unreachable_share)


def receipts(scenario: Scenario, ids: Sequence[str]) -> frozenset[str]:
    """The volunteers whose phones send delivery receipts (``receipts_share`` of them).

    Drawn from a stream of its own (``behaviour/receipts``): which phones are unreachable
    does not change with the share that sends receipts, and the reverse.
    """
    rng = stream(scenario.seed, "behaviour/receipts")
    return frozenset(vid for vid in ids if rng.random() < scenario.receipts_share)


def qualified_on_duty(people: Iterable[SimVolunteer]) -> dict[str, Any]:
    """The fleet as planners count it: volunteers on duty in total and with each skill."""
    total = 0
    by_skill = dict.fromkeys(SKILL_SHARES, 0)
    for v in people:
        total += 1
        for skill in v.skills:
            by_skill[skill] = by_skill.get(skill, 0) + 1
    return {"total": total, "by_skill": by_skill}


# ----------------------------------------------------------------------------- incidents


@dataclass(frozen=True, slots=True)
class PlannedIncident:
    """One incident of the scenario: when (seconds after the start), what and where."""

    at_s: float
    id: str
    kind: str
    lat: float
    lon: float


def incident_schedule(scenario: Scenario, area: ServiceArea) -> list[PlannedIncident]:
    """The scenario's incidents, in time order; the same for every policy and fleet size."""
    rng = stream(scenario.seed, "incidents")
    place = _placement(scenario, area, DensityModel(area))
    out: list[PlannedIncident] = []
    for at in arrival_times(scenario.rate_per_hour, rng):
        if at >= scenario.duration_s:
            break
        kind = sample_kind(rng, KIND_MIX)
        lat, lon = place(rng)
        out.append(PlannedIncident(at, f"s{len(out) + 1:06d}", kind, lat, lon))
    return out


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one incident."""

    id: str
    kind: str
    cell: str
    lat: float
    lon: float
    time_to_arrival_s: float | None  # call to the first responder at the patient; None: nobody
    escalated: bool
    alerts: int
    accepted: bool
    first_eta_s: float | None  # the engine's estimate for its first confirmed responder
    first_accept_s: float | None  # report to first accept
    responders: int = 0  # volunteers confirmed (sent), backups and overdue ones included
    overdue: int = 0  # of them, marked overdue by the engine
    overdue_after_s: tuple[float, ...] = ()  # accept to overdue, for each one marked
    overdue_no_progress: int = 0  # of them, by the stall check (location), not by time
    released: int = 0  # stood down on the way: enough others on scene
    # Call to the engine's arrival moment (geofence or button, at the street point): the
    # figure the engine itself records; time_to_arrival_s adds the last leg to it.
    engine_arrival_s: float | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    scenario: Scenario
    outcomes: tuple[Outcome, ...]
    alerts: int  # alert messages the engine published
    wave_size: int  # the engine's first wave for one responder
    max_open_alerts: int  # most alerts one incident had open at once
    extra: Mapping[str, Any] = field(default_factory=dict)


_REPLY, _ARRIVE, _CLOSE, _REPORT = "reply", "arrive", "close", "report"
_RECEIPT = "receipt"
RECEIPT_SIGMA = 0.5  # of the log of a receipt's delay: 90 % within 0.44-2.3 x the median
_LOCATE, _HOME = "locate", "home"


class _Run:
    """One volunteer scenario against the real Dispatcher."""

    def __init__(
        self,
        scenario: Scenario,
        area: ServiceArea,
        config: Config,
        progress: Callable[[float], None] | None,
    ) -> None:
        self.s = scenario
        self.area = area
        self.progress = progress
        self.travel = TravelModel(
            circuity=scenario.circuity,
            speeds_mps={
                Mode.WALK.value: scenario.walk_speed_mps,
                Mode.BIKE.value: scenario.bike_speed_mps,
                Mode.EBIKE.value: scenario.ebike_speed_mps,
            },
        )
        policy = replace(
            config.policy, strategy=Strategy(scenario.policy), target_s=scenario.target_s
        )
        self.core = Dispatcher(
            area=area,
            codec=Codec(root=ROOT, in_area=area.contains, area_name=area.name),
            policy=policy,
            travel=self.travel,
            kinds=config.kinds,
            # Simulated phones never go quiet: their positions never go stale.
            location_ttl_s=math.inf,
            state_retention_s=config.state_retention_s,
            rng=stream(scenario.seed, "engine"),
        )
        # How a person answers a call, and how their trip goes, are drawn from a stream of
        # that person and that incident (``_call``): alerted for the same incident under
        # another policy, they answer the same way. Policies are then compared on the same
        # people doing the same things, not on luck (common random numbers).
        self.overdue: dict[str, list[tuple[float, str]]] = {}  # incident -> (waited, why)
        self.people = {v.id: v for v in make_population(scenario, area)}
        self.unreachable = unreachable(scenario, list(self.people))
        self.receipts = receipts(scenario, list(self.people))
        self.undelivered = 0  # alerts the engine marked undelivered (no receipt in time)
        self.plan = incident_schedule(scenario, area)
        self.incidents: dict[str, Incident] = {}
        self.claims: dict[str, str] = {}  # volunteer -> incident, as Redis keeps them
        self.events: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self.seq = 0
        self.alerts = 0
        self.alerts_by_day: Counter[tuple[str, int]] = Counter()  # (volunteer, day) -> alerts
        self.max_open = 0

    def at(self, t: float, kind: str, *args: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, args))

    def run(self) -> RunResult:
        for v in self.people.values():
            msg = StatusUpdate(
                v.id, Duty.AVAILABLE, v.skills, v.mode, v.lat, v.lon,
                receipts=True if v.id in self.receipts else None,
                max_alerts_per_day=self.s.daily_budget or None,
            )  # fmt: skip
            self.apply(self.core.status(msg, EPOCH), EPOCH)
        for planned in self.plan:
            # The call starts at at_s; the engine has the report intake_s later.
            self.at(EPOCH + planned.at_s + self.s.intake_s, _REPORT, planned)
        next_progress = 0.0
        while self.events:
            t = self.events[0][0]
            deadline = self.core.next_deadline()
            if deadline is not None and deadline <= t:
                self.apply(self.core.tick(deadline), deadline)
                continue
            _, _, kind, args = heapq.heappop(self.events)
            if self.progress is not None and t - EPOCH >= next_progress:
                self.progress(min(1.0, (t - EPOCH) / self.s.duration_s))
                next_progress += self.s.duration_s / 50
            getattr(self, f"_on_{kind}")(t, *args)
        # Whatever the core still has due (waves, expiries) after the last event.
        while (deadline := self.core.next_deadline()) is not None and deadline < math.inf:
            self.apply(self.core.tick(deadline), deadline)
        if self.progress is not None:
            self.progress(1.0)
        return RunResult(
            scenario=self.s,
            outcomes=tuple(self.outcome(i) for i in self.incidents.values()),
            alerts=self.alerts,
            wave_size=wave_size(self.core.policy, 1),
            max_open_alerts=self.max_open,
            extra={
                "policy": _policy_record(self.core.policy),
                "qualified_on_duty": qualified_on_duty(self.people.values()),
                "undelivered_alerts": self.undelivered,
                "alerts_per_volunteer_day": self.alert_load(),
            },
        )

    def days(self) -> int:
        """Days the run covers (a part-day counts as one; late alerts go to the last)."""
        return max(1, math.ceil(self.s.hours / 24))

    def alert_load(self) -> dict[str, float]:
        """Alerts one volunteer got in one day: mean, p95 and max over every volunteer on
        duty and every day (days without an alert count as 0), what a budget caps."""
        counts = sorted(self.alerts_by_day.values())
        slots = len(self.people) * self.days()
        if not slots:
            return {"mean": 0.0, "p95": 0.0, "max": 0.0}
        zeros = slots - len(counts)
        rank = max(1, math.ceil(0.95 * slots))  # nearest rank over the zeros and counts
        p95 = 0 if rank <= zeros else counts[rank - zeros - 1]
        return {
            "mean": round(sum(counts) / slots, 3),
            "p95": float(p95),
            "max": float(counts[-1] if counts else 0),
        }

    def outcome(self, i: Incident) -> Outcome:
        first = i.responders[0] if i.responders else None
        engine = i.time_to_arrival_s()  # from reported_at, the call's start
        return Outcome(
            id=i.id,
            kind=i.kind.value,
            cell=i.cell_id,
            lat=i.lat,
            lon=i.lon,
            time_to_arrival_s=engine + self.s.last_leg_s if engine is not None else None,
            escalated=i.escalated_at is not None,
            alerts=len(i.alerts),
            accepted=first is not None,
            first_eta_s=first.eta_s if first is not None else None,
            first_accept_s=(
                i.first_accept_at - i.reported_at if i.first_accept_at is not None else None
            ),
            responders=len(i.responders),
            overdue=sum(r.overdue for r in i.responders),
            overdue_after_s=tuple(w for w, _ in self.overdue.get(i.id, ())),
            overdue_no_progress=sum(why == "no progress" for _, why in self.overdue.get(i.id, ())),
            released=sum(r.released_at is not None for r in i.responders),
            engine_arrival_s=engine,
        )

    # -- effects, as the shell carries them out --------------------------------------

    def apply(self, effects: Iterable[Effect], now: float) -> None:
        todo: deque[Effect] = deque(effects)
        touched: set[str] = set()
        while todo:
            effect = todo.popleft()
            if isinstance(effect, Claim):
                # Redis's claim script: one incident per volunteer, idempotent.
                held = self.claims.get(effect.volunteer_id)
                ok = held is None or held == effect.incident_id
                if ok:
                    self.claims[effect.volunteer_id] = effect.incident_id
                todo.extend(
                    self.core.claim_result(effect.volunteer_id, effect.incident_id, ok, now)
                )
            elif isinstance(effect, Release):
                if self.claims.get(effect.volunteer_id) == effect.incident_id:
                    del self.claims[effect.volunteer_id]
            elif isinstance(effect, LogEvent):
                if effect.type is EventType.ARRIVED and effect.data.get("first"):
                    # By the button or the geofence: the control room closes it later.
                    self.at(now + self.s.on_scene_s, _CLOSE, effect.incident_id)
                elif effect.type is EventType.UNDELIVERED:
                    self.undelivered += 1
                elif effect.type is EventType.OVERDUE:
                    self.overdue.setdefault(effect.incident_id, []).append(
                        (float(effect.data["waited_s"]), str(effect.data.get("why", "late")))
                    )
            elif isinstance(effect, SendAlert):
                self.alerts += 1
                day = min(int((now - EPOCH) // 86400), self.days() - 1)
                self.alerts_by_day[effect.volunteer_id, day] += 1
                touched.add(effect.incident_id)
                self.on_alert(effect, now)
            elif isinstance(effect, SendAssignment):
                self.on_assignment(effect, now)
        for incident_id in sorted(touched):
            incident = self.incidents.get(incident_id)
            if incident is not None:
                self.max_open = max(self.max_open, len(incident.open_alerts()))

    # -- the phones ---------------------------------------------------------------------

    def on_alert(self, alert: SendAlert, now: float) -> None:
        vid = alert.volunteer_id
        if vid in self.unreachable:
            # The push never arrives: no receipt and no reply, ever. A phone that sends
            # receipts is then found out after the engine's delivery timeout.
            return
        v = self.people[vid]
        seen = 0.0  # when the phone has the alert: the receipt goes then
        if vid in self.receipts:
            rng = self._call(vid, alert.incident_id, _RECEIPT)
            seen = rng.lognormvariate(math.log(self.s.receipt_median_s), RECEIPT_SIGMA)
            self.at(now + seen, _RECEIPT, vid, alert.alert_id)
        v.generation += 1
        v.call = (alert.alert_id, alert.incident_id)
        rng = self._call(vid, alert.incident_id, "reply")
        delay = rng.lognormvariate(math.log(self.s.reply_median_s), self.s.reply_sigma)
        accept = rng.random() < self.s.acceptance
        v.will_arrive = rng.random() < self.s.arrive_share
        silent = rng.random() < self.s.silent_share
        if not accept and silent:
            return  # seen or not, never answered: only a stand-down puts the call away
        # Never before the receipt: the person answers what the phone has shown.
        self.at(now + max(delay, seen), _REPLY, vid, v.generation, alert.alert_id, accept)

    def on_assignment(self, msg: SendAssignment, now: float) -> None:
        vid = msg.volunteer_id
        v = self.people[vid]
        incident_id = msg.incident_id
        if msg.action is Action.GO:
            incident = self.incidents[incident_id]
            v.call, v.busy_with = None, incident_id
            v.generation += 1
            v.trips += 1
            lat, lon = v.position
            distance = haversine_m(lat, lon, incident.lat, incident.lon)
            trip = distance * self.s.circuity / v.speed_mps
            # Getting ready (shoes, keys, the door) starts at the accept; a "go" that comes
            # later than that finds them ready sooner, never before the "go".
            ready = v.accepted_at if v.accepted_at is not None else now
            rng = self._call(vid, incident_id, "trip")
            start = max(now, ready + self._turnout(rng))
            halfway = rng.random() < self.s.halfway_share
            if v.will_arrive:
                self.at(start + trip, _ARRIVE, vid, v.generation, incident_id)
                v.leg = _Leg(lat, lon, incident.lat, incident.lon, start, trip)
            elif halfway:
                # Half-way, but never inside twice the arrival radius: a short trip given
                # up "half-way" would otherwise end inside the geofence, an arrival.
                keep_off = 2 * self.core.policy.arrival_radius_m
                f = min(0.5, max(0.0, 1.0 - keep_off / distance)) if distance > 0 else 0.0
                stop = lat + f * (incident.lat - lat), lon + f * (incident.lon - lon)
                v.leg = _Leg(lat, lon, *stop, start, trip * f)
            else:
                v.leg = _Leg(lat, lon, lat, lon, now, 0.0)  # never sets off
            if self.s.location_interval_s:
                self.at(now + self.s.location_interval_s, _LOCATE, vid, v.generation)
            return
        # stand_down: the call is off (or, for a responder, the incident is over).
        if v.call is not None and v.call[1] == incident_id:
            v.call = None
            v.generation += 1
        if v.busy_with == incident_id:
            v.busy_with = None
            v.generation += 1
            self._stood_down(v, incident_id, now)

    def _call(self, vid: str, incident_id: str, part: str) -> random.Random:
        """The stream of one person's ``part`` ("reply", "trip") of one call."""
        return stream(self.s.seed, f"{part}/{vid}/{incident_id}")

    def _turnout(self, rng: random.Random) -> float:
        """Seconds from the accept to setting off (lognormal around ``turnout_s``)."""
        turnout = rng.lognormvariate(math.log(self.s.turnout_s or 1.0), self.s.turnout_sigma)
        return turnout if self.s.turnout_s else 0.0

    def _stood_down(self, v: SimVolunteer, incident_id: str, now: float) -> None:
        """A responder's part is over: on scene, they are home when the incident closes
        (``on_scene_s`` includes the way home); on the way, they walk back as long as
        they had walked, and are where they stopped until then."""
        leg, v.leg = v.leg, None
        v.trips += 1
        if leg is None or not self.s.location_interval_s:
            return  # no reports: the engine keeps the home position (the runner before)
        arrived = any(
            r.volunteer_id == v.id and r.arrived_at is not None
            for r in self.incidents[incident_id].responders
        )
        walked = 0.0 if arrived else leg.moving_s(now)
        v.at = leg.at(now) if walked > 0 else None
        self._report(v, now)
        if walked > 0:
            self.at(now + walked, _HOME, v.id, v.trips)

    def _report(self, v: SimVolunteer, now: float) -> None:
        lat, lon = v.leg.at(now) if v.leg is not None else v.position
        self.apply(self.core.location(LocationUpdate(v.id, lat, lon), now), now)

    # -- scheduled events -----------------------------------------------------------

    def _on_report(self, now: float, planned: PlannedIncident) -> None:
        report = Report(
            kind=Kind(planned.kind),
            lat=planned.lat,
            lon=planned.lon,
            id=planned.id,
            responders=self.s.responders if self.s.responders > 1 else None,
            reported_at=EPOCH + planned.at_s,  # the call's start, as a hotline would say
        )
        effects = self.core.report(report, now)
        self.incidents[planned.id] = self.core.incidents[planned.id]
        self.at(now + self.s.unreached_resolve_s, _CLOSE, planned.id)
        self.apply(effects, now)

    def _on_receipt(self, now: float, vid: str, alert_id: str) -> None:
        """The phone got the alert: its receipt (not an answer; the engine may have
        moved on, and then ignores it)."""
        self.apply(self.core.reply(Reply(vid, alert_id, Answer.RECEIVED), now), now)

    def _on_reply(self, now: float, vid: str, generation: int, alert_id: str, yes: bool) -> None:
        v = self.people[vid]
        if v.generation != generation:
            return  # stood down before answering: the phone has put the call away
        v.call = None
        if yes:
            v.accepted_at = now
        answer = Answer.ACCEPT if yes else Answer.DECLINE
        self.apply(self.core.reply(Reply(vid, alert_id, answer), now), now)

    def _on_arrive(self, now: float, vid: str, generation: int, incident_id: str) -> None:
        v = self.people[vid]
        if v.generation != generation or self._arrived(vid, incident_id):
            return  # moot, or the geofence saw the arrival already: no second one
        # The app sends a fix with "I'm here" (the engine believes it only near the scene).
        incident = self.incidents[incident_id]
        self.apply(self.core.location(LocationUpdate(vid, incident.lat, incident.lon), now), now)
        if not self._arrived(vid, incident_id):
            self.apply(self.core.arrived(Arrived(vid, incident_id), now), now)

    def _arrived(self, vid: str, incident_id: str) -> bool:
        return any(
            r.volunteer_id == vid and r.arrived_at is not None
            for r in self.incidents[incident_id].responders
        )

    def _on_locate(self, now: float, vid: str, generation: int) -> None:
        """The phone of a responder on the way reports where it is; the next in a while."""
        v = self.people[vid]
        if v.generation != generation or v.busy_with is None or self._arrived(vid, v.busy_with):
            return  # moot, or on scene (by the button): nothing more to tell
        self._report(v, now)
        if v.generation == generation and not self._arrived(vid, v.busy_with):
            self.at(now + self.s.location_interval_s, _LOCATE, vid, generation)

    def _on_home(self, now: float, vid: str, trips: int) -> None:
        v = self.people[vid]
        if v.trips != trips:
            return  # set off again meanwhile: the new trip starts where they were
        v.at = None
        self._report(v, now)

    def _on_close(self, now: float, incident_id: str) -> None:
        incident = self.incidents[incident_id]
        if incident.ended:
            return
        if incident.first_arrival_at is not None and now < (
            incident.first_arrival_at + self.s.on_scene_s
        ):
            return  # reached: it closes on_scene_s after the arrival instead
        self.apply(self.core.resolve(incident_id, now, by="simulation"), now)


def _policy_record(policy: Policy) -> dict[str, Any]:
    """The engine policy a run used, for the JSON (what the flags and config chose)."""
    keys = (
        "strategy",
        "target_s",
        "wave_timeout_s",
        "max_wave_size",
        "max_waves",
        "backup_responders",
        "max_alerts",
        "overdue_factor",
        "overdue_grace_s",
        "stall_after_s",
    )
    record: dict[str, Any] = {k: getattr(policy, k) for k in keys}
    record["strategy"] = policy.strategy.value
    return record


def run_volunteers(
    scenario: Scenario,
    *,
    area: ServiceArea | None = None,
    config: Config | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Play ``scenario`` with volunteers dispatched by the engine's core (see the module doc).

    ``simulators.run.run_scenario`` picks this or the stations baseline."""
    config = config or load_config()
    return _Run(scenario, area or load_area(config), config, progress).run()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (may be inf: nobody arrived)."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q * len(values)))
    return values[rank - 1]
