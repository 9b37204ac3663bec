"""``dispatch simulate``: the offline scenario runner on the command line.

Runs one scenario (``simulators.scenario``) with the engine's core on a simulated clock,
prints the report, and optionally writes the summary as JSON (``--json FILE``) and the
pictures (``--out DIR``). ``--compare`` plays the same incidents three ways (volunteers
with waves, volunteers with the naive policy, the stations baseline) and overlays them;
``--sweep N1,N2,..`` repeats the run for each number of volunteers. This module is an
entry point that wires the engine's core to its test tools; nothing in the engine
imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from dispatch.config import load_config
from dispatch.errors import ConfigError
from dispatch.policy import Strategy
from geo.area import ServiceArea
from simulators.run import run_scenario
from simulators.scenario import RunResult, Scenario, ScenarioError, load_area
from simulators.summary import format_report, summarize

__all__ = ["add_arguments", "main", "policy_overrides", "progress_printer", "scenario_from"]

_DEFAULT = Scenario()


def _coords(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in degrees, got {text!r}") from None
    return lat, lon


def _counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected volunteer counts separated by commas, e.g. 500,1000,2000; got {text!r}"
        ) from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"expected counts of at least 1, got {text!r}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's flags (``dispatch simulate --help``)."""
    d = _DEFAULT
    a = parser.add_argument
    a(
        "--volunteers",
        type=int,
        default=d.volunteers,
        metavar="N",
        help=f"volunteers on duty (default {d.volunteers})",
    )
    a(
        "--acceptance",
        type=float,
        default=d.acceptance,
        metavar="P",
        help=f"share of alerts accepted, 0..1 (default {d.acceptance})",
    )
    a(
        "--hours",
        type=float,
        default=d.hours,
        metavar="H",
        help=f"simulated hours (default {d.hours:g})",
    )
    a("--seed", type=int, default=d.seed, metavar="S", help=f"random seed (default {d.seed})")
    a(
        "--policy",
        choices=[s.value for s in Strategy],
        default=d.policy,
        help="the dispatch strategy: the engine's own (waves, the default), or a baseline: "
        "naive (one at a time) or the documented rules of pulsepoint, goodsam, heartrunner, "
        "firstaed, mobile-retter (docs/planning.md)",
    )
    a(
        "--baseline",
        choices=["stations"],
        help="no volunteers: vehicles from one station per subdistrict",
    )
    a(
        "--compare",
        action="store_true",
        help="run waves, naive and the stations baseline on the same incidents and overlay them",
    )
    a(
        "--sweep",
        type=_counts,
        metavar="N1,N2,..",
        help="repeat for each number of volunteers; the share within the target against N",
    )
    a(
        "--rate",
        type=float,
        default=d.rate_per_hour,
        metavar="PER_HOUR",
        help=f"incidents per hour over the area (default {d.rate_per_hour:g})",
    )
    a(
        "--walk-speed",
        type=float,
        default=d.walk_speed_mps,
        metavar="M_S",
        help=f"walking responders' speed in m/s (default {d.walk_speed_mps})",
    )
    a("--bike-speed", type=float, default=d.bike_speed_mps, metavar="M_S")
    a("--ebike-speed", type=float, default=d.ebike_speed_mps, metavar="M_S")
    a("--circuity", type=float, default=d.circuity, help="street / straight-line distance")
    a(
        "--reply-delay",
        type=float,
        default=d.reply_median_s,
        metavar="S",
        help=f"median seconds before a volunteer answers (default {d.reply_median_s:g})",
    )
    a(
        "--arrive-share",
        type=float,
        default=d.arrive_share,
        metavar="P",
        help=f"share of confirmed volunteers who get there (default {d.arrive_share})",
    )
    a(
        "--location-interval",
        type=float,
        default=d.location_interval_s,
        metavar="S",
        help="responders' phones report their location every S seconds while assigned, "
        f"so the engine's geofence and stall check run (default {d.location_interval_s:g}, "
        "on the safe side: the app asks for a fix every 2 s on the way; 0: no reports)",
    )
    a(
        "--halfway-share",
        type=float,
        default=d.halfway_share,
        metavar="P",
        help="of the confirmed volunteers who never arrive, the share who set off and stop "
        f"half-way; the others never set off (default {d.halfway_share:g})",
    )
    a(
        "--turnout",
        type=float,
        default=d.turnout_s,
        metavar="S",
        help="median seconds from accepting to setting off (lognormal; "
        f"default {d.turnout_s:g}; 0: at once)",
    )
    a(
        "--turnout-sigma",
        type=float,
        default=d.turnout_sigma,
        metavar="SIGMA",
        help=f"spread of the log of the turnout (default {d.turnout_sigma:g})",
    )
    a(
        "--silent-share",
        type=float,
        default=d.silent_share,
        metavar="P",
        help="of the alerts not accepted, the share never answered at all; the others are "
        f"declined after the reply delay (default {d.silent_share:g})",
    )
    a(
        "--unreachable-share",
        type=float,
        default=d.unreachable_share,
        metavar="P",
        help="share of the phones on duty that never receive an alert, the same people "
        f"all run long (default {d.unreachable_share:g})",
    )
    a(
        "--receipts-share",
        type=float,
        default=d.receipts_share,
        metavar="P",
        help="share of the volunteers whose phones send delivery receipts (protocol 1.1; "
        "the shipped page and terminal do): an unreachable one is found out after the "
        "engine's delivery timeout and the next best alerted at once "
        f"(default {d.receipts_share:g})",
    )
    a(
        "--daily-budget",
        type=int,
        default=d.daily_budget,
        metavar="N",
        help="every volunteer's own alert budget, at most N alerts in 24 h (protocol 1.1 "
        "max_alerts_per_day, 1-100; the engine rests them past it); 0: none (default)",
    )
    a(
        "--receipt-delay",
        type=float,
        default=d.receipt_median_s,
        metavar="S",
        help="median seconds from an alert to a reachable phone's receipt, lognormal "
        f"(default {d.receipt_median_s:g})",
    )
    a(
        "--last-leg",
        type=float,
        default=d.last_leg_s,
        metavar="S",
        help="seconds from the street point (the engine's geofence, the button) to the "
        f"patient: stairs, gates (default {d.last_leg_s:g}); for the stations too",
    )
    a(
        "--intake",
        type=float,
        default=d.intake_s,
        metavar="S",
        help="seconds of call handling before the report reaches the engine (default "
        f"{d.intake_s:g}); times count from the call's start, for the stations too",
    )
    a(
        "--stall-after",
        type=float,
        metavar="S",
        help="the engine's policy.stall_after_s: a responder hardly closer this long after "
        "accepting is overdue at once (config default 60; 0 turns the check off)",
    )
    a(
        "--responders",
        type=int,
        default=d.responders,
        metavar="K",
        help="responders each incident asks for (default 1)",
    )
    a(
        "--skills",
        choices=["mix", "all"],
        default=d.skills,
        help="'mix': the fleet's skill shares; 'all': everybody can take every kind",
    )
    a(
        "--on-scene",
        type=float,
        default=d.on_scene_s,
        metavar="S",
        help=f"seconds from first arrival to resolved (default {d.on_scene_s:g})",
    )
    a(
        "--target",
        type=float,
        default=d.target_s,
        metavar="S",
        help=f"the target time to arrival (default {d.target_s:g})",
    )
    a(
        "--near",
        type=_coords,
        metavar="LAT,LON",
        help="put volunteers and incidents within --spread metres of this point",
    )
    a("--spread", type=float, default=d.spread_m, metavar="M")
    a(
        "--stations",
        type=int,
        default=d.stations,
        metavar="K",
        help=f"stations for --baseline stations (default {d.stations}: one per subdistrict)",
    )
    a(
        "--vehicle-speed",
        type=float,
        default=d.vehicle_speed_kmh,
        metavar="KM_H",
        help="stations: vehicle speed to the street point "
        f"(default {d.vehicle_speed_kmh:g}; calibrated, see the report)",
    )
    a(
        "--station-delay-min",
        type=float,
        default=d.station_delay_min_s,
        metavar="S",
        help="stations: shortest delay from the intake to the vehicle leaving "
        f"(default {d.station_delay_min_s:g}; calibrated, see the report)",
    )
    a("--station-delay-max", type=float, default=d.station_delay_max_s, metavar="S")
    a(
        "--wave-timeout",
        type=float,
        metavar="S",
        help="the engine's policy.wave_timeout_s: silence this long brings the next wave",
    )
    a("--max-wave-size", type=int, metavar="K", help="the engine's policy.max_wave_size")
    a("--max-waves", type=int, metavar="K", help="the engine's policy.max_waves")
    a(
        "--backup-responders",
        type=int,
        metavar="K",
        help="the engine's policy.backup_responders: up to K extra acceptors of the waves "
        "already sent are kept as backups (config default 2)",
    )
    a(
        "--alert-budget",
        type=int,
        metavar="K",
        help="the engine's policy.max_alerts: at most K alerts for one incident (to compare "
        "policies at the same alert load; config default 0, no cap)",
    )
    a(
        "--overdue-factor",
        type=float,
        metavar="F",
        help="the engine's policy.overdue_factor: a responder not on scene by accept + "
        "ETA x F + grace is overdue and a new wave goes out (config default 1.5)",
    )
    a(
        "--overdue-grace",
        type=float,
        metavar="S",
        help="the engine's policy.overdue_grace_s, the grace above (config default 30; "
        "a huge value such as 1e9 turns overdue detection off)",
    )
    a("--config", help="the engine's TOML configuration (policy, area; see config/default.toml)")
    a("--json", metavar="FILE", help="write the summary as JSON")
    a("--out", metavar="DIR", help="write the pictures (PNG) into this folder")
    a("--quiet", action="store_true", help="no progress on stderr")


def scenario_from(args: argparse.Namespace) -> Scenario:
    """The Scenario the flags describe; ScenarioError names the flag to fix."""
    return Scenario(
        volunteers=args.volunteers,
        acceptance=args.acceptance,
        hours=args.hours,
        seed=args.seed,
        policy=args.policy,
        baseline=args.baseline,
        rate_per_hour=args.rate,
        walk_speed_mps=args.walk_speed,
        bike_speed_mps=args.bike_speed,
        ebike_speed_mps=args.ebike_speed,
        circuity=args.circuity,
        reply_median_s=args.reply_delay,
        arrive_share=args.arrive_share,
        location_interval_s=args.location_interval,
        halfway_share=args.halfway_share,
        turnout_s=args.turnout,
        turnout_sigma=args.turnout_sigma,
        silent_share=args.silent_share,
        unreachable_share=args.unreachable_share,
        receipts_share=args.receipts_share,
        daily_budget=args.daily_budget,
        receipt_median_s=args.receipt_delay,
        last_leg_s=args.last_leg,
        intake_s=args.intake,
        responders=args.responders,
        skills=args.skills,
        on_scene_s=args.on_scene,
        target_s=args.target,
        near=args.near,
        spread_m=args.spread,
        stations=args.stations,
        vehicle_speed_kmh=args.vehicle_speed,
        station_delay_min_s=args.station_delay_min,
        station_delay_max_s=args.station_delay_max,
    )


# Flags that override an engine policy key: (argparse dest, config key).
_POLICY_FLAGS = (
    ("wave_timeout", "policy.wave_timeout_s"),
    ("max_wave_size", "policy.max_wave_size"),
    ("max_waves", "policy.max_waves"),
    ("backup_responders", "policy.backup_responders"),
    ("alert_budget", "policy.max_alerts"),
    ("overdue_factor", "policy.overdue_factor"),
    ("overdue_grace", "policy.overdue_grace_s"),
    ("stall_after", "policy.stall_after_s"),
)


def policy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The engine policy keys that flags override (ConfigError names a bad one)."""
    return {
        key: getattr(args, flag) for flag, key in _POLICY_FLAGS if getattr(args, flag) is not None
    }


def _set_by(args: argparse.Namespace, key: str) -> str:
    """ " (set by --flag)" when a flag, not a config file, gave config ``key`` its value."""
    for flag, name in _POLICY_FLAGS:
        if name == key and getattr(args, flag) is not None:
            return f" (set by --{flag.replace('_', '-')})"
    return ""


def progress_printer(label: str, stream: TextIO) -> Callable[[float], None]:
    """A progress bar on a terminal; elsewhere a line at each quarter."""
    tty = stream.isatty()
    shown = [-1]

    def show(done: float) -> None:
        if tty:
            percent = int(done * 100)
            if percent != shown[0]:
                shown[0] = percent
                bar = "#" * (percent // 4)
                end = "\n" if done >= 1.0 else ""
                print(f"\r{label:<24} [{bar:<25}] {percent:3d} %", end=end, file=stream, flush=True)
        else:
            quarter = int(done * 4)
            if quarter != shown[0]:
                shown[0] = quarter
                print(f"{label}: {quarter * 25} %", file=stream, flush=True)

    return show


def main(
    args: argparse.Namespace,
    env: Mapping[str, str],
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run, print, write; the exit status (2 for a bad option, 1 for a file error)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_config(
            args.config or env.get("DISPATCH_CONFIG"), env=env, overrides=policy_overrides(args)
        )
        scenario = scenario_from(args)
        area = load_area(config)
    except ConfigError as exc:
        print(f"dispatch simulate: {exc}{_set_by(args, exc.key)}", file=err)
        return 2
    except ScenarioError as exc:
        print(f"dispatch simulate: {exc}", file=err)
        return 2
    except ValueError as exc:  # the area file
        print(f"dispatch simulate: {exc}", file=err)
        return 2
    if args.compare and args.baseline:
        print("dispatch simulate: --compare already includes --baseline stations", file=err)
        return 2
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            import simulators.plots  # noqa: F401  (fail now, not after the run)
        except OSError as exc:
            print(f"dispatch simulate: --out {out_dir}: {exc}", file=err)
            return 1
        except ImportError:
            print("dispatch simulate: --out needs matplotlib: pip install -e '.[sim]'", file=err)
            return 1

    def run(s: Scenario, label: str) -> RunResult:
        progress = None if args.quiet else progress_printer(label, err)
        return run_scenario(s, area=area, config=config, progress=progress)

    document: dict[str, Any]
    if args.sweep:
        document = _sweep(args, scenario, area, run, out, out_dir)
    else:
        document = _single(args, scenario, area, run, out, out_dir)
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            print(f"dispatch simulate: --json {args.json}: {exc}", file=err)
            return 1
        print(f"\nsummary written to {args.json}", file=out)
    return 0


def _single(
    args: argparse.Namespace,
    scenario: Scenario,
    area: ServiceArea,
    run: Callable[[Scenario, str], RunResult],
    out: TextIO,
    out_dir: Path | None,
) -> dict[str, Any]:
    variants = {_label(scenario): scenario}
    if args.compare:
        other = "naive" if scenario.policy == "waves" else "waves"
        variants[_label(replace(scenario, policy=other))] = replace(scenario, policy=other)
        variants["stations"] = replace(scenario, baseline="stations")
    results = {label: run(s, label) for label, s in variants.items()}
    summaries = {label: summarize(r) for label, r in results.items()}
    for i, summary in enumerate(summaries.values()):
        if i:
            print("\n" + "-" * 72, file=out)
        print(format_report(summary), file=out)
    first = next(iter(summaries.values()))
    document = dict(first)
    if args.compare:
        document["compare"] = {
            label: {k: v for k, v in s.items() if k not in ("cells", "scenario")}
            for label, s in summaries.items()
        }
    if out_dir is not None:
        from simulators.plots import plot_cells, plot_times

        times = {label: [o.time_to_arrival_s for o in r.outcomes] for label, r in results.items()}
        paths = [plot_times(times, out_dir / "times.png", target_s=scenario.target_s)]
        for label, summary in summaries.items():
            name = "cells.png" if label == next(iter(summaries)) else f"cells-{label}.png"
            paths.append(
                plot_cells(
                    area,
                    summary["cells"],
                    out_dir / name,
                    title=_title(label, summary),
                    stations=summary.get("stations", ()),
                    target_s=scenario.target_s,
                )
            )
        document["pictures"] = [str(p) for p in paths]
        print("\npictures: " + ", ".join(str(p) for p in paths), file=out)
    return document


def _sweep(
    args: argparse.Namespace,
    scenario: Scenario,
    area: ServiceArea,
    run: Callable[[Scenario, str], RunResult],
    out: TextIO,
    out_dir: Path | None,
) -> dict[str, Any]:
    policies = [scenario.policy]
    if args.compare:
        policies.append("naive" if scenario.policy == "waves" else "waves")
    rows: list[dict[str, Any]] = []
    series: dict[str, list[tuple[int, float]]] = {}
    print(
        f"{'policy':<8}{'volunteers':>11}{'within':>9}{'P50 s':>8}{'P90 s':>8}"
        f"{'reached':>9}{'alerts/inc':>11}{'alerts/vol/day':>15}",
        file=out,
    )
    for policy in policies:
        for n in args.sweep:
            s = replace(scenario, volunteers=n, policy=policy)
            summary = summarize(run(s, f"{policy} N={n}"))
            row = {"policy": policy, "volunteers": n}
            row.update(
                {k: v for k, v in summary.items() if k not in ("cells", "kinds", "scenario")}
            )
            rows.append(row)
            series.setdefault(policy, []).append((n, summary["within_target_share"] or 0.0))
            print(
                f"{policy:<8}{n:>11}{_p(summary['within_target_share']):>9}"
                f"{_n(summary['p50_s']):>8}{_n(summary['p90_s']):>8}"
                f"{_p(summary['reached_share']):>9}{summary['alerts_per_incident']:>11}"
                f"{summary['alerts_per_volunteer_per_day']:>15}",
                file=out,
            )
    document: dict[str, Any] = {"sweep": rows, "scenario": scenario.to_dict()}
    if out_dir is not None:
        from simulators.plots import plot_sweep

        path = plot_sweep(
            series,
            out_dir / "sweep.png",
            title=f"acceptance {scenario.acceptance:.0%}, walkers {scenario.walk_speed_mps} m/s, "
            f"{scenario.arrive_share:.0%} of confirmed arrive",
            target_s=scenario.target_s,
        )
        document["pictures"] = [str(path)]
        print(f"\npictures: {path}", file=out)
    return document


def _label(s: Scenario) -> str:
    return "stations" if s.baseline else s.policy


def _title(label: str, summary: Mapping[str, Any]) -> str:
    sc = summary["scenario"]
    if sc["baseline"]:
        return f"stations baseline ({sc['stations']} stations, {sc['vehicle_speed_kmh']:g} km/h)"
    return (
        f"{sc['volunteers']} volunteers, policy {label}, acceptance {sc['acceptance']:.0%}, "
        f"walkers {sc['walk_speed_mps']} m/s"
    )


def _p(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _n(x: float | None) -> str:
    return "none" if x is None else f"{x:.0f}"
