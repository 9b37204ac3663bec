"""The planning runs behind docs/planning.md: ``python -m simulators.planning --out docs``.

One command writes the whole page (``planning.md``) and its pictures (``planning-*.png``)
into ``--out``, with progress on stderr. Every run has the simulator's honest human
model (the ``Scenario`` defaults: intake, unreachable phones, silent alerts, turnout,
last leg) and the same incidents (the seed fixes them):

- the goal table: each other system's playbook (``dispatch.policy.PLAYBOOKS``) at
  ``--fleets`` volunteers on duty, and the engine's own policy held to that baseline's
  alerts per incident with an alert budget (rounded down, so ours never sends more);
  an upper bound (every alert it likes, ten backups);
- the frontier: share within the target against alerts per volunteer per day, ours at
  several budgets and each baseline;
- the fleet sweep: how many qualified volunteers on duty for a 3-minute mean and for
  90 % within 180 s, and where it falls short (a cell map);
- the levers at one fleet size: bikes, acceptance, turnout, backups;
- the stations baseline and its calibration.

Runs go to a ``ProcessPoolExecutor`` (``--jobs``, 2 by default); ``--jobs 1`` runs them
in this process. About 10 minutes on a busy 2-core machine with the defaults.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dispatch.config import env_name, load_config
from simulators.run import run_scenario
from simulators.scenario import OPTION_NAMES, Scenario, load_area
from simulators.summary import summarize

__all__ = [
    "BASELINES",
    "GOAL",
    "UPPER_BOUND",
    "Run",
    "crossing",
    "held_budget",
    "main",
    "summarize_run",
]

GOAL = 0.9  # of incidents with someone on scene within the target
MEAN_GOAL_S = 180.0  # "a 3-minute mean"
BASELINES = ("pulsepoint", "goodsam", "heartrunner", "firstaed", "mobile-retter")
FLEETS = (3000, 10000)
BUDGETS = (1, 2, 3, 4, 6, 9, 12, 16, 24)
SWEEP = (3000, 6000, 10000, 16000, 24000, 32000, 48000, 64000, 96000)
LEVERS_AT = 10000
# The cell map needs more incidents than cells (566): a longer run of the same fleet.
MAP_HOURS = 480.0
# Ours with every alert it likes and ten backups: near the ceiling that who is near
# enough sets, whatever the policy.
UPPER_BOUND: Mapping[str, Any] = {
    "policy.max_alerts": 100,
    "policy.backup_responders": 10,
    "policy.wave_confidence": 0.9999,
}
# Volunteers' own alert budgets compared (alerts a day each; 0: none).
DAILY_BUDGETS = (0, 3, 6)
# Engine keys that `dispatch simulate` has a flag for; others go by environment.
_FLAGS = {"policy.max_alerts": "--alert-budget", "policy.backup_responders": "--backup-responders"}


@dataclass(frozen=True)
class Run:
    """One simulator run: a scenario and the engine configuration keys it overrides."""

    scenario: Scenario
    overrides: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, scenario: Scenario, overrides: Mapping[str, Any] | None = None) -> Run:
        return cls(scenario, tuple(sorted((overrides or {}).items())))

    def command(self) -> str:
        """The ``dispatch simulate`` command line that makes this run on its own."""
        s, default = self.scenario, Scenario()
        env = [
            f"{env_name(*key.split('.', 1))}={value}"
            for key, value in self.overrides
            if key not in _FLAGS
        ]
        words = [*env, "dispatch simulate"]
        if s.baseline:
            words.append(f"--baseline {s.baseline}")
        else:
            words.append(f"--volunteers {s.volunteers}")
        words += [f"--hours {s.hours:g}", f"--seed {s.seed}", f"--acceptance {s.acceptance:g}"]
        if s.policy != default.policy:
            words.append(f"--policy {s.policy}")
        for f in fields(Scenario):
            if f.name in {"volunteers", "hours", "seed", "acceptance", "policy", "baseline"}:
                continue
            value = getattr(s, f.name)
            if value != getattr(default, f.name):
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                words.append(f"{OPTION_NAMES.get(f.name, f.name)} {shown}")
        words += [f"{_FLAGS[k]} {v}" for k, v in self.overrides if k in _FLAGS]
        return " ".join(words)


def summarize_run(run: Run) -> dict[str, Any]:
    """Play ``run`` and return its summary, with the sorted times to arrival (``times``).

    A top-level function so that a process pool can call it.
    """
    config = load_config(overrides=dict(run.overrides))
    result = run_scenario(run.scenario, area=load_area(config), config=config)
    summary = summarize(result)
    summary["times"] = [o.time_to_arrival_s for o in result.outcomes]
    return summary


def held_budget(alerts_per_incident: float) -> int:
    """The alert budget that holds ours to a baseline's load: its mean alerts per
    incident rounded down, at least 1, so that ours never sends more."""
    return max(1, math.floor(alerts_per_incident))


def crossing(
    points: Sequence[tuple[int, float | None]], goal: float = GOAL, *, below: bool = False
) -> float | None:
    """The fleet size at which a figure first reaches ``goal``, log-linearly interpolated.

    Rising figures (a share) reach it from below; ``below`` for falling ones (a mean
    time), which reach it from above. None when no point reaches it; the first count
    when the first point already does.
    """

    def reached(x: float | None) -> bool:
        return x is not None and (x <= goal if below else x >= goal)

    for i, (n, value) in enumerate(points):
        if reached(value):
            if i == 0:
                return float(n)
            n0, v0 = points[i - 1]
            if v0 is None or value is None or value == v0:
                return float(n)
            frac = (goal - v0) / (value - v0)
            return math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0)))
    return None


# ----------------------------------------------------------------------------- running


class _Pool:
    """Runs, each made once (a repeated run is looked up), in parallel; progress on stderr."""

    def __init__(self, jobs: int, log: Callable[[str], None]) -> None:
        self.jobs = jobs
        self.log = log
        self.executor = ProcessPoolExecutor(jobs) if jobs > 1 else None
        self.futures: dict[Run, Future[dict[str, Any]]] = {}
        self.done: dict[Run, dict[str, Any]] = {}
        self.started = time.monotonic()

    def submit(self, run: Run) -> None:
        if run in self.futures or run in self.done:
            return
        if self.executor is None:
            self.done[run] = summarize_run(run)
            self._report(run)
        else:
            self.futures[run] = self.executor.submit(summarize_run, run)

    def get(self, run: Run) -> dict[str, Any]:
        self.submit(run)
        if run not in self.done:
            self.done[run] = self.futures.pop(run).result()
            self._report(run)
        return self.done[run]

    def wait_all(self, then: Callable[[Run, dict[str, Any]], None] | None = None) -> None:
        """Wait for every run submitted; ``then`` is called as each finishes (and may submit)."""
        while self.futures:
            finished, _ = wait(list(self.futures.values()), return_when="FIRST_COMPLETED")
            for run in [r for r, f in self.futures.items() if f in finished]:
                self.get(run)
                if then is not None:
                    then(run, self.done[run])

    def _report(self, run: Run) -> None:
        s = self.done[run]
        self.log(
            f"[{len(self.done)} done, {len(self.futures)} running or queued, "
            f"{time.monotonic() - self.started:.0f} s] {run.command()}: "
            f"{_pct(s['within_target_share'])} within {s['target_s']:.0f} s"
        )

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


@dataclass(frozen=True)
class Plan:
    """Everything the page needs, as runs."""

    base: Scenario
    fleets: Sequence[int]
    budgets: Sequence[int]
    sweep: Sequence[int]
    levers_at: int
    map_hours: float = MAP_HOURS

    def map_run(self) -> Run:
        """Ours at ``levers_at`` for ``map_hours``: enough incidents per cell for a map."""
        return Run.of(replace(self.base, volunteers=self.levers_at, hours=self.map_hours))

    def ours(self, n: int, overrides: Mapping[str, Any] | None = None) -> Run:
        return Run.of(replace(self.base, volunteers=n), overrides)

    def baseline(self, name: str, n: int) -> Run:
        return Run.of(replace(self.base, volunteers=n, policy=name))

    def held(self, n: int, k: int) -> Run:
        return self.ours(n, {"policy.max_alerts": k})

    def upper(self, n: int) -> Run:
        return self.ours(n, UPPER_BOUND)

    def stations(self) -> Run:
        return Run.of(replace(self.base, baseline="stations"))

    def levers(self) -> list[tuple[str, str, Run]]:
        """(lever, setting, run) at ``levers_at``; the first is the defaults."""
        n, b = self.levers_at, self.base
        at = replace(b, volunteers=n)
        out = [("defaults", "as above", self.ours(n))]
        for speed, what in ((4.0, "bike"), (5.5, "e-bike")):
            out.append(
                (
                    "bikes",
                    f"every walker at {what} speed ({speed:g} m/s)",
                    Run.of(replace(at, walk_speed_mps=speed)),
                )
            )
        for acceptance in (0.25, 0.5):
            out.append(
                (
                    "acceptance",
                    f"{100 * acceptance:.0f} % (engine told so)",
                    Run.of(
                        replace(at, acceptance=acceptance),
                        {"policy.acceptance_rate": acceptance},
                    ),
                )
            )
        for turnout in (20.0, 60.0):
            out.append(
                (
                    "turnout",
                    f"median {turnout:g} s (engine told so)",
                    Run.of(replace(at, turnout_s=turnout), {"policy.turnout_s": turnout}),
                )
            )
        for backups in (0, 1):
            out.append(
                (
                    "backups",
                    f"{backups} backup responder{'s' if backups != 1 else ''}",
                    self.ours(n, {"policy.backup_responders": backups}),
                )
            )
        return out

    def receipts(self) -> list[tuple[int, str, Run, Run]]:
        """(fleet, policy, with receipts, without): what delivery receipts are worth."""
        out = []
        for n in self.fleets:
            for policy in ("waves", "naive"):
                at = replace(self.base, volunteers=n, policy=policy)
                out.append((n, policy, Run.of(at), Run.of(replace(at, receipts_share=0.0))))
        return out

    def daily_budgets(self) -> list[tuple[int, int, Run]]:
        """(fleet, alerts a day, run; 0: no budget): what volunteers' own budgets cost."""
        return [
            (n, k, Run.of(replace(self.base, volunteers=n, daily_budget=k)))
            for n in self.fleets
            for k in DAILY_BUDGETS
        ]

    def independent(self) -> list[Run]:
        """The runs that depend on no other run's result, biggest first (they take longest)."""
        runs = [self.map_run(), self.stations()]
        for n in self.fleets:
            runs += [self.baseline(name, n) for name in (*BASELINES, "naive")]
            runs += [self.ours(n), self.upper(n)]
            runs += [self.held(n, k) for k in self.budgets]
        runs += [self.ours(n) for n in self.sweep]
        runs += [run for _, _, run in self.levers()]
        runs += [run for *_, on, off in self.receipts() for run in (on, off)]
        runs += [run for *_, run in self.daily_budgets()]
        return sorted(dict.fromkeys(runs), key=lambda r: -r.scenario.volunteers * r.scenario.hours)


# ----------------------------------------------------------------------------- the page


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _sec(x: float | None) -> str:
    return "none" if x is None else f"{x:.0f} s"


def _pts(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{100 * (a - b):+.1f}"


def _code(text: str) -> str:
    return f"`{text}`"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.planning")
    parser.add_argument("--out", default="docs", help="folder for planning.md and planning-*.png")
    parser.add_argument("--hours", type=float, default=72.0, help="simulated hours of each run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--acceptance", type=float, default=0.35)
    parser.add_argument("--jobs", type=int, default=2, help="processes (1: in this one)")
    parser.add_argument("--fleets", default=",".join(map(str, FLEETS)), help="goal table N")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="frontier K")
    parser.add_argument("--sweep", default=",".join(map(str, SWEEP)), help="fleet sweep N")
    parser.add_argument("--levers-at", type=int, default=LEVERS_AT)
    parser.add_argument("--map-hours", type=float, default=MAP_HOURS, help="for the cell map")
    args = parser.parse_args(argv)

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        base=Scenario(hours=args.hours, seed=args.seed, acceptance=args.acceptance),
        fleets=ints(args.fleets),
        budgets=ints(args.budgets),
        sweep=ints(args.sweep),
        levers_at=args.levers_at,
        map_hours=args.map_hours,
    )
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    pool = _Pool(args.jobs, log)
    baselines = {plan.baseline(name, n): n for n in plan.fleets for name in BASELINES}

    def then(run: Run, summary: dict[str, Any]) -> None:
        # A baseline's alert load is known: ours held to it can start.
        if run in baselines:
            pool.submit(plan.held(baselines[run], held_budget(summary["alerts_per_incident"])))

    try:
        for run in plan.independent():
            pool.submit(run)
            if run in baselines and run in pool.done:
                then(run, pool.done[run])
        pool.wait_all(then)
        wall = time.monotonic() - started
        page = _page(plan, pool, out, argv_text(args), wall, args.jobs)
    finally:
        pool.close()
    (out / "planning.md").write_text(page, encoding="utf-8")
    log(f"wrote {out / 'planning.md'} and its pictures in {time.monotonic() - started:.0f} s")
    return 0


def argv_text(args: argparse.Namespace) -> str:
    """The command as given, defaults left out."""
    words = ["python -m simulators.planning", f"--out {args.out}"]
    defaults = {
        "hours": 72.0,
        "seed": 7,
        "acceptance": 0.35,
        "jobs": 2,
        "fleets": ",".join(map(str, FLEETS)),
        "budgets": ",".join(map(str, BUDGETS)),
        "sweep": ",".join(map(str, SWEEP)),
        "levers_at": LEVERS_AT,
        "map_hours": MAP_HOURS,
    }
    for key, default in defaults.items():
        value = getattr(args, key)
        if value != default:
            words.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(words)


def _page(plan: Plan, pool: _Pool, out: Path, command: str, wall_s: float, jobs: int) -> str:
    from simulators import plots

    get = pool.get
    area = load_area(load_config())
    b = plan.base
    parts: list[str] = []
    add = parts.append
    hours = f"{b.hours:g} simulated hours"

    # --- the figures the summary at the top needs --------------------------------------
    sweep = [(n, get(plan.ours(n))) for n in plan.sweep]
    n90 = crossing([(n, s["within_target_share"]) for n, s in sweep])
    n_mean = crossing([(n, s["mean_s"]) for n, s in sweep], MEAN_GOAL_S, below=True)
    best_n, best = max(sweep, key=lambda p: p[1]["within_target_share"] or 0.0)
    stations = get(plan.stations())
    goal_rows = _goal_rows(plan, pool)
    fixed_s = b.intake_s + b.reply_median_s + b.turnout_s + b.last_leg_s
    travel_s = b.target_s - fixed_s

    add(
        f"""# Planning: how many volunteers, where, with which policy, for "on scene within 3 min"?

Made with the offline scenario runner (`dispatch simulate`, `simulators/scenario.py`),
which plays simulated volunteers and incidents against the engine's own dispatch core
(`dispatch.dispatcher.Dispatcher` with the configured policy, travel model and index)
on a simulated clock, under the **honest human model** (below). Every figure and
picture on this page comes from one command,

    {command}

({wall_s / 60:.1f} minutes of wall time with {jobs} processes on a 2-core machine; progress
on stderr). It runs {len(pool.done)} scenarios of {hours} each (the cell map's
{plan.map_hours:g}; seed {b.seed},
{b.rate_per_hour:g} incidents an hour over the Shangcheng outline, acceptance
{100 * b.acceptance:.0f} %, walkers {b.walk_speed_mps:g} m/s); each table names the
`dispatch simulate` command that makes any one of its rows on its own. "Within 180 s"
is the one headline definition (`dispatch/headline.py`, `simulators.summary`): the
incidents whose first responder was **at the patient** within 180 s of the **call's
start**, over **every** incident (an unreached one is a miss).

## The answer, in short
"""
    )
    add(_short(plan, pool, sweep, n90, n_mean, (best_n, best), goal_rows, stations, fixed_s))
    add(_human_model_section(b, fixed_s, travel_s))
    add(_baselines_section())
    add(_goal_section(plan, pool, goal_rows))
    add(_frontier_section(plan, pool, out, plots))
    add(_fleet_section(plan, pool, sweep, n90, n_mean, best_n, best, out, area, plots, travel_s))
    add(_levers_section(plan, pool, out, plots))
    add(_receipts_section(plan, pool))
    add(_daily_budget_section(plan, pool))
    add(_stations_section(plan, pool, stations, out, area, plots))
    add(_limits_section(b))
    return "\n".join(parts).rstrip() + "\n"


@dataclass(frozen=True)
class _GoalRow:
    n: int
    name: str
    baseline: dict[str, Any]
    k: int
    ours: dict[str, Any]
    held: Run


def _goal_rows(plan: Plan, pool: _Pool) -> list[_GoalRow]:
    rows = []
    for n in plan.fleets:
        for name in BASELINES:
            base = pool.get(plan.baseline(name, n))
            k = held_budget(base["alerts_per_incident"])
            held = plan.held(n, k)
            rows.append(_GoalRow(n, name, base, k, pool.get(held), held))
    return rows


def _short(
    plan: Plan,
    pool: _Pool,
    sweep: Sequence[tuple[int, dict[str, Any]]],
    n90: float | None,
    n_mean: float | None,
    top: tuple[int, Mapping[str, Any]],
    goal_rows: Sequence[_GoalRow],
    stations: Mapping[str, Any],
    fixed_s: float,
) -> str:
    best_n, best = top
    travel_s = plan.base.target_s - fixed_s
    lines = []
    for n in plan.fleets:
        rows = [r for r in goal_rows if r.n == n]
        diffs = [
            100 * (r.ours["within_target_share"] - r.baseline["within_target_share"]) for r in rows
        ]
        met = sum(d >= 2.0 for d in diffs)
        upper = pool.get(plan.upper(n))["within_target_share"]
        worst = min(rows, key=_margin)
        lines.append(
            f"- **Against the other systems at {n:,} on duty**, ours held to each one's own "
            f"alert load is {min(diffs):+.1f} to {max(diffs):+.1f} points ahead; the goal "
            f"(+2 points over every baseline) is met against {met} of {len(rows)} "
            f"(closest: {worst.name}, {_pct(worst.baseline['within_target_share'])} against "
            f"{_pct(worst.ours['within_target_share'])}). The upper bound (every alert ours "
            f"likes, ten backups) is {_pct(upper)}."
        )
    mean_text = (
        f"takes about **{n_mean:,.0f}** qualified volunteers on duty"
        if n_mean is not None
        else f"is not reached in the sweep (mean {_sec(sweep[-1][1]['mean_s'])} at "
        f"{sweep[-1][0]:,})"
    )
    if n90 is not None:
        ninety = f"90 % within 180 s takes about **{n90:,.0f}** on duty"
    else:
        ninety = (
            f"90 % within 180 s is **never reached** in the sweep (up to {sweep[-1][0]:,} on "
            f"duty): it tops out at {_pct(best['within_target_share'])} at {best_n:,}"
        )
    lines.append(
        f"- **How many:** a mean of 3 minutes (of the incidents reached) {mean_text}; "
        f"{ninety}. The fixed overheads (intake, answer, turnout, last leg: {fixed_s:.0f} s "
        f"in the median) leave about {travel_s:.0f} s of travel, so only the volunteers "
        "within a few hundred metres count, and the incidents that need a skill few have "
        "(patrol, mediation) lag behind."
    )
    levers = [(lever, setting, pool.get(run)) for lever, setting, run in plan.levers()]
    base = levers[0][2]["within_target_share"]
    worth = "; ".join(
        f"{lever}, {setting}: {100 * (s['within_target_share'] - base):+.1f}"
        for lever, setting, s in levers[1:]
    )
    lines.append(
        f"- **Levers at {plan.levers_at:,} on duty** ({_pct(base)} with the defaults), in "
        f"points within 180 s: {worth}."
    )
    lines.append(
        f"- **Stations baseline** (no volunteers): mean {_sec(stations['mean_s'])} "
        f"({stations['mean_s'] / 60:.1f} min; must be 6-10 min), "
        f"{_pct(stations['within_target_share'])} within 180 s."
    )
    return "\n".join(lines) + "\n"


def _margin(row: _GoalRow) -> float:
    """Ours minus the baseline, within the target (a share)."""
    return float(row.ours["within_target_share"] - row.baseline["within_target_share"])


HUMAN_MODEL_TEXT = """
Each part is a `dispatch simulate` flag and a `Scenario` field (`simulators/scenario.py`),
echoed in the `--json` output under `"assumptions"` with the key named here. Where a
published figure exists it is cited; where it does not, the value is **an
assumption**, said so, and a flag away from being changed. `NO_HUMAN_MODEL` in
`simulators/scenario.py` (all of them 0) gives the simulator as it was before; the
live-vs-offline agreement test uses it, because the live fleet has none of this.

- **`intake_s`: call handling.** The reporter is on the phone before the engine has a
  report: the hotline operator answers, takes the address and the complaint and enters
  them. The report's `reported_at` is the call's start; the engine receives it
  `intake_s` later. Every time counts from the call's start, for the volunteers and for
  the stations baseline alike. Basis: NFPA 1710 sets alarm answering within 15 s (95 %
  of calls) and alarm processing within 64 s (90 %) for fire and EMS communication
  centres; 30 s for answering plus entering a report is **an assumption** on the quick
  side of that, for a hotline that only has to place the call on the map.
- **`unreachable_share`: phones that never ring.** The app killed by a battery saver
  (common on Android phones sold in China), no data, do-not-disturb. A property of the
  person, drawn once per run from its own stream (`behaviour/unreachable`): the same
  people for every policy with the same seed; a larger share only adds people. The
  engine alerts them (it cannot know) and they never reply. **An assumption**; the
  survey below puts "never saw the alert" at 24 % of alerted responders, which covers
  these phones and the silent alerts together.
- **`silent_share`: alerts never answered.** Of the alerts received and not accepted,
  this share gets no reply at all (the alert stays open until the engine stands it
  down); the others are declined after the usual reply delay (lognormal, median 15 s).
  Source: Haskins, Nehme, Dicker et al., *A binational survey of smartphone activated
  volunteer responders for out-of-hospital cardiac arrest* (GoodSAM responders in
  Victoria and New Zealand): of 1,985 alerted responders, 75.6 % saw the alert, 37.7 %
  accepted and 27.1 % arrived. The 24.4 % who never saw it are 39 % of the 62.3 % who
  did not accept. (The same survey's arrived / accepted = 72 % is `--arrive-share`.)
  Survey respondents are the more engaged responders, so the real share is likely
  higher. With the defaults, per alert *sent*: 31.5 % are accepted (acceptance × (1 −
  unreachable share), inside the published 17-47 %), 35.1 % declined, 33.4 % never
  answered.
- **`turnout_s`, `turnout_sigma`: getting going.** From the accept to setting off:
  shoes, keys, the door, the stairs. Lognormal: with median 40 s and sigma 0.5, 90 % of
  turnouts are between 18 and 91 s, the mean 45 s. Getting ready starts at the accept; a
  volunteer never sets off before the engine's "go". Phones report from home until
  then, so the engine's stall check sees a slow starter as not moving. Basis: NFPA 1710
  sets a turnout of 60 s for EMS calls for career crews on shift at a station; a
  volunteer at home has no gear but is not on shift either. Both are **assumptions**.
- **`last_leg_s`: from the street to the patient.** The engine's arrival (its geofence,
  30 m, or the "arrived" button) is at the street point; the patient is through a gate,
  up the stairs, behind a door. Time to arrival is measured at the patient: the engine's
  moment plus `last_leg_s`; the engine's own moment is reported beside it
  (`engine_arrival_*` in the JSON, "at the street point" in the report). The stations'
  crews get the same. Basis: for ambulance crews, published "vertical response" times
  are far longer: a median 2.1 min from the vehicle's stop to the patient in New York
  (Silverman et al., *Acad Emerg Med* 2007;14(9):772-8) and 1.6 min in Toronto
  (Morrison et al., *Prehosp Emerg Care* 2005;9(1):14-8). Those crews park and carry
  equipment; a volunteer's engine moment is already within 30 m, on foot. 20 s is **an
  assumption** on the optimistic side, and giving the stations the same 20 s favours
  them.
- **The rest of the world** (unchanged, `simulators/scenario.py` says more): an alert
  is answered after a lognormal delay (median 15 s); `--arrive-share` 72 % of those
  sent get there (the survey above); the trip is the straight line × 1.3 (circuity) at
  the mode's speed with a personal ±15 % spread; phones report their location every
  10 s on the way, so the engine's geofence and stall check run; the fleet's modes are
  walk 70 %, bike 20 %, e-bike 10 %, its skills first aid 60 %, patrol 20 %, mediation
  15 %; everyone on duty is at home until called.

**Qualified volunteers on duty.** The tables count the fleet as planners do: the
volunteers on duty in total and with each skill (`"qualified_on_duty"` in the JSON). A
first-aid incident (cardiac arrest, fall, injury) can only go to the first-aid share,
about 60 % of the fleet; fire, lost person and "other" take anybody.
"""


def _human_model_section(b: Scenario, fixed_s: float, travel_s: float) -> str:
    rows = [
        ("intake_s", "--intake", "call start to the report reaching the engine", "assumption"),
        ("unreachable_share", "--unreachable-share", "phones that never get it", "assumption"),
        ("silent_share", "--silent-share", "of alerts not accepted: no reply", "survey"),
        ("turnout_s", "--turnout", "accept to setting off (median)", "assumption"),
        ("turnout_sigma", "--turnout-sigma", "spread of the turnout's log", "assumption"),
        ("last_leg_s", "--last-leg", "street point to the patient", "assumption"),
    ]
    table = "\n".join(
        f"| `{key}` | {getattr(b, key):g} | `{flag}` | {what} | {basis} |"
        for key, flag, what, basis in rows
    )
    return (
        "\n## The human model (the simulator's defaults)\n\n"
        "| key | value | flag | what it is | basis |\n|---|---|---|---|---|\n"
        f"{table}\n"
        + HUMAN_MODEL_TEXT
        + f"""
**What is left for travel.** Of the 180 s, the median call spends {b.intake_s:g} s in
intake, {b.reply_median_s:g} s before the volunteer answers, {b.turnout_s:g} s getting
going and {b.last_leg_s:g} s on the last leg: {fixed_s:g} s, leaving about
{travel_s:g} s of travel. At {b.circuity:g} × the straight line that is
{travel_s * b.walk_speed_mps / b.circuity:.0f} m for a walker ({b.walk_speed_mps:g} m/s),
{travel_s * b.bike_speed_mps / b.circuity:.0f} m on a bike, and
{travel_s * b.ebike_speed_mps / b.circuity:.0f} m on an e-bike, before the spread of
each delay and the 28 % of acceptors who never arrive.
"""
    )


# (name, rule, source, how the playbook reads it)
BASELINE_SOURCES: Sequence[tuple[str, str, str, str]] = (
    (
        "pulsepoint",
        "PulsePoint Respond (US): every CPR-trained user within a quarter mile (400 m) is "
        'alerted at once ("CPR needed"); everyone who accepts goes.',
        "Metro Net Fire (metronetfire.org/pulsepoint.html): it 'notifies CPR-trained "
        "individuals of a cardiac incident occurring within a quarter mile of their current "
        "location'; pulsepoint.org/pulsepoint-respond (alerts 'users in the vicinity').",
        "By distance; one wave of everyone qualified within 400 m (up to 100); no further "
        "waves, no replacements; up to 10 acceptors go; no chasing of no-shows.",
    ),
    (
        "goodsam",
        "GoodSAM (UK, Australia, NZ): the 3 nearest responders; 3 more when nobody has "
        "accepted after 30 s; acceptors go.",
        "The 3 nearest: GoodSAM with London Ambulance Service (goodsamapp.wordpress.com, "
        "2015: 'the system will alert the three nearest off duty paramedics / "
        "responders'); Ambulance Victoria and NSW Ambulance FAQs ('up to three nearby "
        "responders'; 'one of the three closest ... within 500 metres in a city'). The "
        "next 3 after 30 s is the reading given in issue 12; no source found.",
        "By distance; waves of 3, 30 s apart, a later wave only while nobody has "
        "accepted, at most 3 waves; every acceptor goes (up to 10).",
    ),
    (
        "heartrunner",
        "Heartrunner (Sweden, Denmark's Hjerteløber): about 16 within 1.8 km at once; "
        "the first 3 acceptors go, the rest stand down.",
        "The 1.8 km: Andelius et al., *JACC* 2020;76(1):43-53 (Copenhagen, Heartrunner "
        "app): 'citizen responders located 1.8 km (1.1 miles) from the OHCA were "
        "dispatched'. About 16 alerted and the first 3 acceptors going are the reading "
        "given in issue 12; no source found.",
        "By distance; one wave of the 16 nearest within 1.8 km; the first 3 acceptors go.",
    ),
    (
        "firstaed",
        "FirstAED (Denmark, Langeland): the 9 nearest are alerted; the 3 closest of those "
        "who accept go (CPR, AED, coordinator).",
        "firstaed.com ('Smartphone is saving lives on Langeland'): 'locates the 9 ... "
        "geographically closest to the scene ... and sends them an alarm. The 3 persons "
        "who accept the alarm, and who are closest ... receive directions'; the same in "
        "*Scand J Trauma Resusc Emerg Med* 2015;23(Suppl 1):A4.",
        "By distance; one wave of the 9 nearest; 3 acceptors go, a later acceptor who "
        "will be there sooner taking the place of one who would be there later.",
    ),
    (
        "mobile-retter",
        "Mobile Retter (Germany): the 2 nearest; 20 s without a reply brings the next "
        "nearest; when both decline, the next pair.",
        "Two at once and the next pair when both decline: Kreis Unna's Mobile Retter "
        "(hawr-digital.de, 2017: 'es werden immer zwei Retter gleichzeitig alarmiert. "
        "Selbst wenn beide ablehnen, geht die Alarmierung sofort weiter'). The 20 s is "
        "the reading given in issue 12; no source found.",
        "By distance; the 2 nearest, one more after each 20 s of silence (at most 8 "
        "waves), the next 2 when all alerted have declined; up to 2 go.",
    ),
    (
        "naive",
        "One at a time (not a real system): the next volunteer only after an answer or the "
        "alert's expiry.",
        "The engine's old simplest strategy, kept as a reference.",
        "By ETA; one alert at a time.",
    ),
)


def _receipts_section(plan: Plan, pool: _Pool) -> str:
    lines = [
        """## What delivery receipts are worth

Protocol 1.1 lets a phone confirm at once that an alert arrived; the shipped page and
terminal volunteer do. The runner models it (`--receipts-share`, default 1.0; receipts
after a lognormal delay, median 1 s): of the unreachable phones, those that send
receipts are found out after the engine's delivery timeout (8 s) and the next best is
alerted at once, instead of after the wave timeout. Same incidents and people:
""",
        "| on duty | policy | within 180 s, receipts | without | difference "
        "| undelivered alerts | alerts per incident (with / without) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, policy, on, off in plan.receipts():
        a, b = pool.get(on), pool.get(off)
        lines.append(
            f"| {n:,} | {policy} | {_pct(a['within_target_share'])} | "
            f"{_pct(b['within_target_share'])} | "
            f"{_pts(a['within_target_share'], b['within_target_share'])} | "
            f"{a['undelivered_alerts']} | {a['alerts_per_incident']:.1f} / "
            f"{b['alerts_per_incident']:.1f} |"
        )
    lines.append(
        f"""
One row without receipts: {_code(plan.receipts()[0][3].command())}

Receipts are worth little within 180 s to the engine's own policy: its first wave
already alerts several volunteers at once, so one unreachable phone among them rarely
decides who gets there first. A policy that alerts one person at a time gains more.
Their worth is elsewhere too: the control room sees at once which phones cannot be
reached, and the delivery-latency figures show a broker or a network in trouble.
"""
    )
    return "\n".join(lines)


def _daily_budget_section(plan: Plan, pool: _Pool) -> str:
    lines = [
        """## What volunteers' own alert budgets cost

Protocol 1.1 lets a volunteer cap the alerts they get (`max_alerts_per_day`, 1-100 in any
24 h); the engine rests them past it. Without a cap the load falls unevenly: volunteers
near the busy blocks get many more calls than the mean. Every volunteer with the same
cap (`--daily-budget N`), same incidents and people; the load is the alerts one
volunteer got in one day, over every volunteer on duty and every day:
""",
        "| on duty | budget a day | within 180 s | difference | alerts per volunteer a day "
        "(mean / p95 / max) | alerts per incident |",
        "|---|---|---|---|---|---|",
    ]
    free: dict[int, Any] = {}
    for n, k, run in plan.daily_budgets():
        a = pool.get(run)
        if k == 0:
            free[n] = a["within_target_share"]
        load = a["alerts_per_volunteer_day"]
        lines.append(
            f"| {n:,} | {k or 'none'} | {_pct(a['within_target_share'])} | "
            f"{'' if k == 0 else _pts(a['within_target_share'], free.get(n))} | "
            f"{load['mean']:g} / {load['p95']:g} / {load['max']:g} | "
            f"{a['alerts_per_incident']:.1f} |"
        )
    capped = next(run for _, k, run in plan.daily_budgets() if k)
    lines.append(
        f"""
One row with a budget: {_code(capped.command())}

A budget protects the few who would otherwise be called many times a day, at a cost
in points that grows as the fleet thins: the busiest volunteers are the ones nearest
the most incidents. Recruiting where the load is highest (the cell map above) spreads
it better than asking the busiest to answer more.
"""
    )
    return "\n".join(lines)


def _baselines_section() -> str:
    lines = [
        "\n## The other systems' policies (the baselines)\n",
        "Each is a playbook of the engine's own core (`dispatch.policy.PLAYBOOKS`, "
        "`--policy NAME`): the same scenario, the same people answering the same way "
        "(common random numbers), the same human model; only who is alerted, when, and "
        "who goes differ. All of them rank by straight-line distance, as the systems "
        "document; ours ranks by estimated arrival. Shared by all: nobody beyond the "
        "engine's 3 km radius is alerted (ours also leaves out anyone more than 10 "
        "minutes away), and alerts expire after 90 s. The sources were found with a web "
        "search; where none was found the rule is the reading given in issue 12, said "
        "so.\n",
        "| `--policy` | the rule | source | read into the playbook as |\n|---|---|---|---|",
    ]
    for name, rule, source, reading in BASELINE_SOURCES:
        lines.append(f"| `{name}` | {rule} | {source} | {reading} |")
    lines.append(
        "\n**Ours** (`waves`, the default): by estimated arrival; each wave sized from "
        "the chance that a volunteer accepts *and* is on scene within the target "
        "(acceptance, show rate, answer, turnout, ETA against the time left) until "
        "someone very likely makes it (95 %); the fastest acceptor wins; up to 3 "
        "backups from the alerts already sent; no-shows noticed from the location "
        "reports; `--alert-budget K` caps the alerts of one incident and lets the first "
        "wave spend all of it.\n"
    )
    return "\n".join(lines)


def _goal_section(plan: Plan, pool: _Pool, rows: Sequence[_GoalRow]) -> str:
    b = plan.base
    base_cmd = f"dispatch simulate --volunteers N --hours {b.hours:g} --seed {b.seed}"
    lines = [
        "\n## The goal: ours against each baseline at the baseline's own alert load\n",
        f"Each baseline: `{base_cmd} --acceptance {b.acceptance:g} --policy NAME`. "
        "Ours: the same with `--alert-budget K` instead of `--policy`, where K is the "
        "baseline's mean alerts per incident **rounded down** (at least 1), so that ours "
        "never sends more (its mean is often well under K: it stops alerting once "
        "someone is very likely in time). Goal (issue 12): ours ≥ baseline + 2 points.\n",
        "| on duty | baseline | within 180 s | alerts/incident | mean | ours with "
        "`--alert-budget K` | within 180 s | alerts/incident | mean | difference | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = 100 * (r.ours["within_target_share"] - r.baseline["within_target_share"])
        lines.append(
            f"| {r.n:,} | {r.name} | {_pct(r.baseline['within_target_share'])} | "
            f"{r.baseline['alerts_per_incident']:.2f} | {_sec(r.baseline['mean_s'])} | "
            f"K = {r.k} | {_pct(r.ours['within_target_share'])} | "
            f"{r.ours['alerts_per_incident']:.2f} | {_sec(r.ours['mean_s'])} | "
            f"**{diff:+.1f}** | {'met' if diff >= 2.0 else 'not met'} |"
        )
    lines.append(
        "\nFor reference, on the same incidents (no alert budget for the first two):\n\n"
        "| on duty | run | within 180 s | alerts/incident | mean | reached | command |\n"
        "|---|---|---|---|---|---|---|"
    )
    for n in plan.fleets:
        for label, run in (
            ("ours, defaults (no budget)", plan.ours(n)),
            ("naive (one at a time)", plan.baseline("naive", n)),
            ("upper bound: ours, budget 100, 10 backups, confidence 0.9999", plan.upper(n)),
        ):
            s = pool.get(run)
            lines.append(
                f"| {n:,} | {label} | {_pct(s['within_target_share'])} | "
                f"{s['alerts_per_incident']:.2f} | {_sec(s['mean_s'])} | "
                f"{_pct(s['reached_share'])} | {_code(run.command())} |"
            )
    for n in plan.fleets:
        upper = pool.get(plan.upper(n))["within_target_share"]
        here = [r for r in rows if r.n == n]
        best = max(here, key=lambda r: r.baseline["within_target_share"])
        gap = 100 * (upper - best.baseline["within_target_share"])
        verdict = (
            "so the goal **cannot be met** against it: no policy can be 2 points above a "
            "baseline that is already within 2 points of the ceiling"
            if gap < 2.0
            else "so there is room above every baseline"
        )
        lines.append(
            f"\n**At {n:,} on duty** the upper bound (ours sending every alert it likes, "
            f"ten backups) reaches {_pct(upper)}: that is the ceiling set by who is near "
            f"enough, whatever the policy. The best baseline, {best.name}, is "
            f"{_pct(best.baseline['within_target_share'])}, {gap:.1f} points under it, "
            f"{verdict}."
        )
    lines.append(
        "\nThe upper bound's `DISPATCH_POLICY_WAVE_CONFIDENCE` is the engine's "
        "`[policy] wave_confidence` (a TOML given with `--config` does the same).\n"
    )
    return "\n".join(lines)


def _frontier_section(plan: Plan, pool: _Pool, out: Path, plots: Any) -> str:
    panels = []
    for n in plan.fleets:
        ours = [pool.get(plan.held(n, k)) for k in plan.budgets]
        ours += [
            pool.get(
                plan.held(n, held_budget(pool.get(plan.baseline(x, n))["alerts_per_incident"]))
            )
            for x in BASELINES
        ]
        ours.append(pool.get(plan.ours(n)))
        points = sorted(
            {(s["alerts_per_volunteer_per_day"], s["within_target_share"]) for s in ours}
        )
        others = {
            name: (
                pool.get(plan.baseline(name, n))["alerts_per_volunteer_per_day"],
                pool.get(plan.baseline(name, n))["within_target_share"],
            )
            for name in (*BASELINES, "naive")
        }
        default = pool.get(plan.ours(n))
        panels.append(
            (
                f"{n:,} on duty",
                points,
                others,
                (default["alerts_per_volunteer_per_day"], default["within_target_share"]),
            )
        )
    plots.plot_frontier(panels, out / "planning-frontier.png")
    b = plan.base
    budgets = ", ".join(map(str, plan.budgets))
    lines = [
        "\n## The frontier: share within 180 s against the alert load\n",
        "![frontier](planning-frontier.png)\n",
        f"One point per run: ours (`dispatch simulate --volunteers N --hours {b.hours:g} "
        f"--seed {b.seed} --alert-budget K`, K = {budgets} and each baseline's held "
        "budget; the open circle is the default, no budget) as a line, each baseline "
        "(`--policy NAME`) a labelled point. The x axis is what the volunteers feel: "
        "alerts per volunteer on duty per day. A baseline below ours at the same load "
        "is beaten at its own price.\n",
        "| on duty | K | within 180 s | alerts/incident | alerts/volunteer/day |",
        "|---|---|---|---|---|",
    ]
    for n in plan.fleets:
        for k in plan.budgets:
            s = pool.get(plan.held(n, k))
            lines.append(
                f"| {n:,} | {k} | {_pct(s['within_target_share'])} | "
                f"{s['alerts_per_incident']:.2f} | {s['alerts_per_volunteer_per_day']:.3f} |"
            )
    for n in plan.fleets:
        default = pool.get(plan.ours(n))
        k, top = max(
            ((k, pool.get(plan.held(n, k))) for k in plan.budgets),
            key=lambda p: (p[1]["within_target_share"], -p[0]),
        )
        lines.append(
            f"\nAt {n:,} on duty ours without a budget (the default) reaches "
            f"{_pct(default['within_target_share'])} at {default['alerts_per_incident']:.2f} "
            f"alerts per incident; with `--alert-budget {k}` {_pct(top['within_target_share'])} "
            f"at {top['alerts_per_incident']:.2f}. A budget is also the wave's cap (the "
            "first wave may spend it all), where the default caps a wave at "
            f"`max_wave_size` = {load_config().policy.max_wave_size}."
        )
    return "\n".join(lines) + "\n"


def _fleet_section(
    plan: Plan,
    pool: _Pool,
    sweep: Sequence[tuple[int, dict[str, Any]]],
    n90: float | None,
    n_mean: float | None,
    best_n: int,
    best: Mapping[str, Any],
    out: Path,
    area: Any,
    plots: Any,
    travel_s: float,
) -> str:
    b = plan.base
    plots.plot_fleet(
        [(n, s["within_target_share"], s["mean_s"]) for n, s in sweep],
        out / "planning-sweep.png",
        goal=GOAL,
        mean_goal_s=MEAN_GOAL_S,
        title=f"Ours (defaults), {100 * b.acceptance:.0f} % acceptance, honest human model, "
        f"{b.hours:g} h a point",
    )
    lines = [
        "\n## How many qualified volunteers on duty, and where\n",
        f"`dispatch simulate --volunteers N --hours {b.hours:g} --seed {b.seed} "
        f"--acceptance {b.acceptance:g}` (ours, the defaults: 3 backups, 95 % confidence):\n",
        "| on duty | first aid | patrol | mediation | within 180 s | mean (reached) | P50 | "
        "P90 | reached | escalated | alerts/incident | alerts/volunteer/day |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, s in sweep:
        fleet = s["qualified_on_duty"]
        lines.append(
            f"| {n:,} | " + " | ".join(f"{fleet['by_skill'].get(k, 0):,}" for k in _SKILLS) + " | "
            f"{_pct(s['within_target_share'])} | {_sec(s['mean_s'])} | {_sec(s['p50_s'])} | "
            f"{_sec(s['p90_s'])} | {_pct(s['reached_share'])} | {_pct(s['escalated_share'])} "
            f"| {s['alerts_per_incident']:.2f} | {s['alerts_per_volunteer_per_day']:.3f} |"
        )
    lines.append("\n![share and mean against volunteers on duty](planning-sweep.png)\n")
    kinds = sorted(sweep[-1][1]["kinds"])
    shown = [p for p in sweep if p[0] in (plan.levers_at, *(n for n, _ in sweep[-3:]))]
    lines.append(
        "Within 180 s by kind (the skill it needs; from the same runs):\n\n"
        "| kind | needs | "
        + " | ".join(f"{n:,} on duty" for n, _ in shown)
        + " |\n|---|---|"
        + "---|" * len(shown)
    )
    needs = {name: ", ".join(k.skills) or "anybody" for name, k in load_config().kinds.items()}
    for kind in kinds:
        lines.append(
            f"| {kind} | {needs.get(kind, '?')} | "
            + " | ".join(
                _pct(s["kinds"].get(kind, {}).get("within_target_share")) for _, s in shown
            )
            + " |"
        )
    lines.append("")
    if n_mean is not None:
        lines.append(
            f"- **A 3-minute mean** (of the incidents reached) takes about **{n_mean:,.0f}** "
            "qualified volunteers on duty (log-linear between the two sweep points around "
            "it)."
        )
    else:
        lines.append("- **A 3-minute mean** is not reached within the sweep.")
    if n90 is not None:
        first = next(n for n, s in sweep if s["within_target_share"] >= GOAL)
        incidents = sweep[-1][1]["incidents"]
        se = 100 * math.sqrt(GOAL * (1 - GOAL) / incidents)
        lines.append(
            f"- **90 % within 180 s** takes about **{n90:,.0f}** on duty (interpolated the "
            f"same way; the first sweep point at or above 90 % is {first:,}). Near the top "
            f"the curve is flat: with {incidents} incidents a run, a share near 90 % has a "
            f"standard error of about {se:.1f} points, as large as the gain from another "
            "half of the fleet, so read this as a range of sizes, not a number."
        )
    else:
        lines.append(
            f"- **90 % within 180 s is never reached** in the sweep: it tops out at "
            f"{_pct(best['within_target_share'])} at {best_n:,} on duty"
            + _per_doubling(sweep)
            + "."
        )
    lines.append(
        f"- **Why so many:** the fixed overheads (intake {b.intake_s:g} s, answer "
        f"{b.reply_median_s:g} s, turnout {b.turnout_s:g} s, last leg {b.last_leg_s:g} s in "
        f"the median) leave about {travel_s:.0f} s of travel, about "
        f"{travel_s * b.walk_speed_mps / b.circuity:.0f} m of straight line for a walker: "
        "within 180 s needs an accepting, arriving, qualified volunteer at home within a "
        "few hundred metres of the patient, and slow turnouts or answers (the lognormal "
        "tails) push even those past 180 s. The last points come slowly: more volunteers "
        "shorten the travel, not the overheads."
    )
    lines.append(
        "- **Volunteers on duty, not registered:** with people on duty a few hours a day, "
        "registrations must be several times higher.\n"
    )
    # Where: the cell map at the realistic fleet, over a longer run.
    at = plan.levers_at
    run = plan.map_run()
    here = pool.get(run)
    plots.plot_cells(
        area,
        here["cells"],
        out / "planning-cells-waves.png",
        title=f"{at:,} on duty, ours (defaults), {100 * b.acceptance:.0f} % acceptance, "
        f"{plan.map_hours:g} h",
    )
    cells = [c for c in here["cells"] if c["incidents"] >= 5]
    poor = [c for c in cells if (c["within_target_share"] or 0.0) < 0.5]
    good = [c for c in cells if (c["within_target_share"] or 0.0) >= 0.8]
    lines += [
        f"**Where it falls short at {at:,} on duty**: the same fleet over {plan.map_hours:g} "
        f"simulated hours ({here['incidents']:,} incidents, so that a 500 m cell has "
        f"several; {_pct(here['within_target_share'])} within 180 s; `{run.command()}`):\n",
        "![cells at the realistic fleet](planning-cells-waves.png)\n",
        f"Of the {len(cells)} cells with at least 5 incidents, {len(poor)} reach under half "
        f"within 180 s ({sum(c['incidents'] for c in poor):,} incidents, "
        f"{_incidents_per_cell(poor)} each) and {len(good)} reach 80 % or more "
        f"({sum(c['incidents'] for c in good):,} incidents, {_incidents_per_cell(good)} "
        "each). " + _density_note(poor, good),
    ]
    return "\n".join(lines) + "\n"


def _density_note(poor: Sequence[Mapping[str, Any]], good: Sequence[Mapping[str, Any]]) -> str:
    """Whether the cells that fall short are the thinly peopled ones, as the counts say."""
    if not poor or not good:
        return ""
    per_poor = sum(c["incidents"] for c in poor) / len(poor)
    per_good = sum(c["incidents"] for c in good) / len(good)
    if per_poor < 0.8 * per_good:
        return (
            "Volunteers live where people live (the same density model places homes and "
            "incidents), so fewer incidents in a cell also mean fewer volunteers near it: "
            "the shortfall is where people are few."
        )
    return (
        "The cells that fall short have about as many incidents as those that do well, so "
        "it is not density alone: the shape of the area (the edges, a river, a hill with "
        "nobody living on it) leaves some points far from every home."
    )


def _incidents_per_cell(cells: Sequence[Mapping[str, Any]]) -> str:
    return f"{sum(c['incidents'] for c in cells) / len(cells):.1f}" if cells else "-"


def _per_doubling(sweep: Sequence[tuple[int, dict[str, Any]]]) -> str:
    """ ", still rising N points per doubling of the fleet" from the last two sweep points."""
    if len(sweep) < 2:
        return ""
    (n0, s0), (n1, s1) = sweep[-2], sweep[-1]
    gain = 100 * (s1["within_target_share"] - s0["within_target_share"]) / math.log2(n1 / n0)
    return f", {gain:+.1f} points per doubling of the fleet between the last two sizes"


def _levers_section(plan: Plan, pool: _Pool, out: Path, plots: Any) -> str:
    levers = plan.levers()
    base = pool.get(levers[0][2])
    rows = []
    lines = [
        f"\n## What each lever is worth, at {plan.levers_at:,} on duty\n",
        "Points within 180 s against the defaults (ours, 3 backups, acceptance "
        f"{100 * plan.base.acceptance:.0f} %, turnout {plan.base.turnout_s:g} s, walkers "
        f"{plan.base.walk_speed_mps:g} m/s), one lever at a time, same incidents:\n",
        "| lever | setting | within 180 s | points | mean | alerts/incident | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for lever, setting, run in levers:
        s = pool.get(run)
        diff = _pts(s["within_target_share"], base["within_target_share"])
        if lever != "defaults":
            gain = s["within_target_share"] - base["within_target_share"]
            rows.append((f"{lever}: {setting}", 100 * gain))
        lines.append(
            f"| {lever} | {setting} | {_pct(s['within_target_share'])} | {diff} | "
            f"{_sec(s['mean_s'])} | {s['alerts_per_incident']:.2f} | {_code(run.command())} |"
        )
    plots.plot_levers(
        rows,
        out / "planning-levers.png",
        title=f"Points within 180 s against the defaults ({base['within_target_share']:.1%}), "
        f"{plan.levers_at:,} on duty",
    )
    lines += [
        "\n![levers](planning-levers.png)\n",
        "- **Bikes:** `Scenario` has no knob for the fleet's mode mix (walk 70 %, bike "
        "20 %, e-bike 10 %, fixed in `simulators/fleet.py`). The rows above give every "
        "walker a bike's (or an e-bike's) speed with `--walk-speed`, which the engine's "
        "travel model also uses, so ETAs and ranking follow: the fleet as if every walker "
        "rode; a partial shift (say, half the walkers) cannot be run without a mode-mix "
        "option in `Scenario`.",
        "- **Acceptance and turnout:** the people change and the engine is told "
        "(`policy.acceptance_rate`, `policy.turnout_s` set to match, as a district would "
        "once it has measured them).",
        "- **Backups:** `--backup-responders` (the default is 3).\n",
    ]
    return "\n".join(lines)


def _stations_section(
    plan: Plan, pool: _Pool, stations: Mapping[str, Any], out: Path, area: Any, plots: Any
) -> str:
    b = plan.base
    calibration = stations["stations_calibration"]
    chosen = ", ".join(f"`{k}` = {v:g}" for k, v in calibration["chosen"].items())
    fixed = ", ".join(f"`{k}` = {v:g}" for k, v in calibration["fixed_from_sources"].items())
    run = plan.stations()
    plots.plot_cells(
        area,
        stations["cells"],
        out / "planning-cells-stations.png",
        title=f"stations baseline ({b.stations} stations, {b.vehicle_speed_kmh:g} km/h)",
        stations=stations.get("stations", ()),
    )
    times = {"stations": stations["times"]}
    for n in plan.fleets:
        times[f"ours, {n:,} on duty"] = pool.get(plan.ours(n))["times"]
    plots.plot_times(
        times,
        out / "planning-times.png",
        colours={f"ours, {n:,} on duty": c for n, c in zip(plan.fleets, _GREENS, strict=False)},
    )
    lines = [
        "\n## The stations baseline (the old way: a crew by vehicle)\n",
        f"`{run.command()}`: no volunteers; a crew from the nearest of {b.stations} "
        "stations by vehicle, after the same intake and with the same last leg.\n",
        "| run | mean | P50 | P90 | within 180 s |\n|---|---|---|---|---|",
        f"| stations | **{_sec(stations['mean_s'])} ({stations['mean_s'] / 60:.1f} min)** | "
        f"{_sec(stations['p50_s'])} | {_sec(stations['p90_s'])} | "
        f"{_pct(stations['within_target_share'])} |",
    ]
    for n in plan.fleets:
        s = pool.get(plan.ours(n))
        lines.append(
            f"| ours, {n:,} on duty | {_sec(s['mean_s'])} | {_sec(s['p50_s'])} | "
            f"{_sec(s['p90_s'])} | {_pct(s['within_target_share'])} |"
        )
    verdict = "holds" if 360 <= stations["mean_s"] <= 600 else "DOES NOT hold"
    lines.append(
        f'\nThe seed\'s "about 8 minutes" must stay 6-10 min: {verdict}. {chosen} were '
        f"**chosen to reproduce it (not sourced)**; {fixed} are taken from sources or "
        "shared with the volunteers. The mean in minutes as the chosen ones vary, on the "
        "same incidents with the same draws:\n"
    )
    sens = calibration["sensitivity"]
    lines.append(
        "| station delay | "
        + " | ".join(f"{v:g} km/h" for v in sens["vehicle_speeds_kmh"])
        + " |\n|---|"
        + "---|" * len(sens["vehicle_speeds_kmh"])
    )
    lo, hi = b.station_delay_min_s, b.station_delay_max_s
    for shift, row in zip(sens["delay_shifts_s"], sens["mean_s"], strict=True):
        cells = " | ".join(f"{m / 60:.1f}" for m in row)
        lines.append(f"| {max(0.0, lo + shift):g}-{max(0.0, hi + shift):g} s | {cells} |")
    lines += [
        "\nSo the baseline's 8 minutes is a fitted figure: plausible inputs give anywhere "
        "from about 6 to 10.5 minutes.\n",
        "![time to arrival](planning-times.png)\n",
        "![stations cells](planning-cells-stations.png)\n",
    ]
    return "\n".join(lines)


_GREENS = ("#1b7837", "#5aae61", "#a6dba0")
_SKILLS = ("first_aid", "patrol", "mediation")


def _limits_section(b: Scenario) -> str:
    return f"""
## What this does not model

- Everyone on duty waits at home until called; nobody is out and about, and nobody
  is busy otherwise. "On duty" is the number available at any moment.
- One incident at a time per volunteer; {b.rate_per_hour:g} incidents an hour is light
  enough that few volunteers are busy.
- No mode-mix knob (see the levers). Travel is the straight line × {b.circuity:g}, not
  a street network; lifts, locked gates and floors are all in the {b.last_leg_s:g} s
  last leg.
- The other systems' playbooks are their published rules read into our core; their
  real implementations may differ in details no source gives (marked above).
"""


if __name__ == "__main__":
    raise SystemExit(main())
