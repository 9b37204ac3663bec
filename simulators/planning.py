"""The planning runs behind docs/planning.md: ``python -m simulators.planning --out docs``.

Sweeps the number of volunteers on the Shangcheng outline at 35 % acceptance and
1.8 m/s walkers for the engine's defaults (phones report their location every 10 s,
so the stall check and the geofence run; overdue responders replaced; no backups),
with one and two backup responders, with two responders per incident, without
location reports (overdue by the clock only) and with naive dispatch; tunes backups,
the stall check, the report interval and the overdue time at one fleet size; compares
waves with naive at equal alert load; and runs the stations baseline, all on the same
incidents (the seed fixes them). Every run has the simulator's human model on
(turnout, silent alerts, unreachable phones, last leg, intake: printed first, with the
stations baseline's calibration; docs/planning-assumptions.md gives the sources).
Prints the tables as Markdown and writes
``planning-*.png`` into ``--out``. Takes about 15 minutes on a busy 2-core machine;
``--parts`` runs a subset.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dispatch.config import Config, load_config
from geo.area import ServiceArea
from simulators.scenario import Scenario, load_area, run_scenario
from simulators.summary import summarize

__all__ = ["GOAL", "Variant", "crossing", "main"]

GOAL = 0.9  # of incidents with someone on scene within the target
COUNTS = (1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000, 48000)
# Overdue detection off: a grace longer than any run.
OFF = 1e9


@dataclass(frozen=True)
class Variant:
    """One line of the sweep: a scenario, engine policy overrides, the counts to run."""

    label: str
    scenario: Scenario
    overrides: Mapping[str, Any] = field(default_factory=dict)
    counts: Sequence[int] = COUNTS
    colour: str = "#333333"
    style: str = "-"


def crossing(points: Sequence[tuple[int, float]], goal: float = GOAL) -> float | None:
    """The fleet size at which the share first reaches ``goal``, log-linearly interpolated.

    None when no point reaches it; the first count when the first point already does.
    """
    for i, (n, share) in enumerate(points):
        if share >= goal:
            if i == 0:
                return float(n)
            n0, s0 = points[i - 1]
            frac = (goal - s0) / (share - s0)
            return math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0)))
    return None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _sec(x: float | None) -> str:
    return "none" if x is None else f"{x:.0f}"


def _row(label: str, s: Mapping[str, Any]) -> str:
    return (
        f"| {label} | {_pct(s['within_target_share'])} | {_sec(s['p50_s'])} | "
        f"{_sec(s['p90_s'])} | {_sec(s['mean_s'])} | {_pct(s['reached_share'])} | "
        f"{_pct(s['escalated_share'])} | {s['alerts_per_incident']} | "
        f"{s['alerts_per_volunteer_per_day'] or '-'} | {s['responders_per_incident'] or '-'} | "
        f"{_pct(s['overdue_share'])} | {_sec(s['mean_time_to_overdue_s'])} | "
        f"{s['released_per_incident'] if s['released_per_incident'] is not None else '-'} |"
    )


_HEAD = (
    "| run | within 180 s | P50 s | P90 s | mean s (reached) | reached | escalated | "
    "alerts/incident | alerts/volunteer/day | responders/incident | overdue | "
    "to overdue s | stood down/incident |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


class _Runner:
    """Runs scenarios with engine policy overrides, one configuration per override set."""

    def __init__(self, area: ServiceArea) -> None:
        self.area = area
        self._configs: dict[tuple[tuple[str, Any], ...], Config] = {}

    def config(self, overrides: Mapping[str, Any]) -> Config:
        key = tuple(sorted(overrides.items()))
        if key not in self._configs:
            self._configs[key] = load_config(overrides=dict(overrides))
        return self._configs[key]

    def summary(
        self, scenario: Scenario, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        config = self.config(overrides or {})
        return summarize(run_scenario(scenario, area=self.area, config=config))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.planning")
    parser.add_argument("--out", default="docs", help="folder for planning-*.png")
    parser.add_argument("--hours", type=float, default=72.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--compare-at", type=int, default=16000, help="N for the load and stations comparisons"
    )
    parser.add_argument("--tune-at", type=int, default=16000, help="N for the policy tuning")
    parser.add_argument(
        "--parts",
        default="sweep,tune,load,compare",
        help="which of sweep,tune,load,compare to run",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    area = load_area(load_config())
    runner = _Runner(area)
    base = Scenario(hours=args.hours, seed=args.seed, acceptance=0.35, walk_speed_mps=1.8)
    parts = set(args.parts.split(","))
    _assumptions(base, runner)
    if "sweep" in parts:
        _sweep(_variants(base), runner, out, args.hours)
    if "tune" in parts:
        _tune(base, runner, args.tune_at)
    if "load" in parts:
        _load(base, runner, args.compare_at, out)
    if "compare" in parts:
        _compare(base, runner, area, args.compare_at, out)
    return 0


def _assumptions(base: Scenario, runner: _Runner) -> None:
    """The human model every run below has, and what the stations baseline was fitted to."""
    print("## assumptions\n")
    print("| human model | value |\n|---|---|")
    for key, value in base.assumptions().items():
        print(f"| `{key}` | {value:g} |")
    stations = runner.summary(replace(base, baseline="stations"))
    calibration = stations["stations_calibration"]
    chosen = ", ".join(f"`{k}` = {v:g}" for k, v in calibration["chosen"].items())
    print(
        f"\nStations baseline: {chosen} were chosen (not sourced) to reproduce the seed's "
        f"{calibration['target_mean_s'] / 60:g} minutes; this run's mean is "
        f"{stations['mean_s'] / 60:.1f} min. Mean minutes as they vary:\n"
    )
    sens = calibration["sensitivity"]
    print(
        "| station delay | "
        + " | ".join(f"{v:g} km/h" for v in sens["vehicle_speeds_kmh"])
        + " |\n|---|"
        + "---|" * len(sens["vehicle_speeds_kmh"])
    )
    lo, hi = base.station_delay_min_s, base.station_delay_max_s
    for shift, row in zip(sens["delay_shifts_s"], sens["mean_s"], strict=True):
        cells = " | ".join(f"{m / 60:.1f}" for m in row)
        print(f"| {max(0.0, lo + shift):g}-{max(0.0, hi + shift):g} s | {cells} |")
    print()
    sys.stdout.flush()


def _variants(base: Scenario) -> list[Variant]:
    """How many volunteers: the engine's defaults and the ways past the no-show problem."""
    few = (1000, 4000, 16000, 32000)
    silent = replace(base, location_interval_s=0.0)
    return [
        Variant("(a) defaults: location every 10 s, no backups", base, colour="#1b7837"),
        Variant(
            "(b) backup_responders = 1",
            base,
            {"policy.backup_responders": 1},
            colour="#2166ac",
        ),
        Variant("(c) 2 responders per incident", replace(base, responders=2), colour="#762a83"),
        Variant(
            "backup_responders = 2",
            base,
            {"policy.backup_responders": 2},
            counts=(1000, 4000, 8000, 12000, 16000, 24000),
            colour="#67a9cf",
            style="-.",
        ),
        Variant(
            "no location reports, no backups",
            silent,
            counts=(1000, 4000, 16000, 32000, 48000),
            colour="#999999",
            style="--",
        ),
        Variant(
            "no location reports, backup_responders = 1",
            silent,
            {"policy.backup_responders": 1},
            counts=(4000, 8000, 16000, 24000, 32000),
            colour="#92c5de",
            style="--",
        ),
        Variant("naive, defaults", replace(base, policy="naive"), counts=few, colour="#e08214"),
        Variant(
            "upper bound: every confirmed volunteer arrives",
            replace(base, arrive_share=1.0),
            counts=(1000, 4000, 8000, 12000, 16000, 32000),
            colour="#000000",
            style=":",
        ),
    ]


def _sweep(variants: list[Variant], runner: _Runner, out: Path, hours: float) -> None:
    from simulators.plots import plot_sweep

    print("## sweep\n")
    print(_HEAD)
    series: dict[str, list[tuple[int, float]]] = {}
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for v in variants:
        for n in v.counts:
            s = runner.summary(replace(v.scenario, volunteers=n), v.overrides)
            series.setdefault(v.label, []).append((n, s["within_target_share"]))
            rows.setdefault(v.label, []).append((n, s))
            print(_row(f"{v.label}, N={n}", s))
            sys.stdout.flush()
            if s["within_target_share"] >= GOAL + 0.04:
                break  # well past the goal: larger fleets only cost time
    print(f"\n## where {GOAL:.0%} within 180 s is reached\n")
    print(
        "| variant | N at 90 % (interpolated) | alerts/incident | alerts/volunteer/day at that N"
        " | responders/incident | overdue |\n|---|---|---|---|---|---|"
    )
    for v in variants:
        n90 = crossing(series[v.label])
        last = rows[v.label][-1][1]
        per_day = last["incidents"] / (hours / 24.0)
        load = "-" if n90 is None else f"{last['alerts_per_incident'] * per_day / n90:.2f}"
        where = "not reached" if n90 is None else f"{n90:,.0f}"
        print(
            f"| {v.label} | {where} | {last['alerts_per_incident']} | {load} | "
            f"{last['responders_per_incident'] or '-'} | {_pct(last['overdue_share'])} |"
        )
    plot_sweep(
        series,
        out / "planning-sweep.png",
        title=f"Shangcheng, 35 % acceptance, 1.8 m/s walkers, 8 incidents/h, {hours:g} h a point",
        colours={v.label: v.colour for v in variants},
        styles={v.label: v.style for v in variants},
    )


def _tune(base: Scenario, runner: _Runner, n: int) -> None:
    """Backups, the stall check, the report interval and the overdue time, at one N."""
    print(f"\n## tuning at N={n}\n")
    print(_HEAD)
    # (label, location interval, stall_after_s, overdue factor, grace, half-way share)
    settings = [
        ("defaults (location 10 s, stall 60 s, overdue 1.5 x ETA + 30 s)", 10, 60, 1.5, 30, 0),
        ("stall 30 s", 10, 30, 1.5, 30, 0),
        ("stall 90 s", 10, 90, 1.5, 30, 0),
        ("location every 30 s", 30, 60, 1.5, 30, 0),
        ("stall check off (stall_after_s = 0)", 10, 0, 1.5, 30, 0),
        ("no location reports", 0, 60, 1.5, 30, 0),
        ("no location reports, overdue 1.25 x ETA + 15 s", 0, 60, 1.25, 15, 0),
        ("half the no-shows stop half-way", 10, 60, 1.5, 30, 0.5),
        ("overdue off entirely (grace 1e9, stall 0)", 10, 0, 1.5, OFF, 0),
    ]
    grid = [(b, *x) for b in (0, 1) for x in settings]
    grid += [(2, *settings[0]), (2, *settings[5])]
    for backups, label, interval, stall, factor, grace, halfway in grid:
        overrides = {
            "policy.backup_responders": backups,
            "policy.stall_after_s": float(stall),
            "policy.overdue_factor": factor,
            "policy.overdue_grace_s": float(grace),
        }
        scenario = replace(
            base, volunteers=n, location_interval_s=float(interval), halfway_share=halfway
        )
        s = runner.summary(scenario, overrides)
        print(_row(f"backups {backups}, {label}", s))
        sys.stdout.flush()


def _load(base: Scenario, runner: _Runner, n: int, out: Path) -> None:
    """Waves against naive at equal alert load: smaller waves cost fewer alerts."""
    print(f"\n## alert load at N={n}\n")
    print(_HEAD)
    load_points = []
    for size in (1, 2, 3, 4, 6):
        for timeout in (20.0, 45.0):  # the engine's default, and past most replies
            overrides = {"policy.max_wave_size": size, "policy.wave_timeout_s": timeout}
            summary = runner.summary(replace(base, volunteers=n), overrides)
            load_points.append((f"waves ≤{size}, timeout {timeout:g} s", summary))
            print(_row(f"waves, max wave {size}, wave timeout {timeout:g} s", summary))
            sys.stdout.flush()
    naive = runner.summary(replace(base, volunteers=n, policy="naive"))
    print(_row("naive", naive))
    backup = runner.summary(replace(base, volunteers=n), {"policy.backup_responders": 1})
    print(_row("waves (default waves), backup_responders = 1", backup))
    _plot_load(load_points, naive, backup, out / "planning-alert-load.png", n)


def _compare(base: Scenario, runner: _Runner, area: ServiceArea, n: int, out: Path) -> None:
    """Then and now: stations against volunteers on the same incidents."""
    from simulators.plots import plot_cells, plot_times

    print(f"\n## stations against volunteers (N={n})\n")
    print(_HEAD)
    runs: dict[str, tuple[Scenario, Mapping[str, Any]]] = {
        "waves": (replace(base, volunteers=n), {}),
        "waves, 1 backup": (replace(base, volunteers=n), {"policy.backup_responders": 1}),
        "waves, no location reports": (replace(base, volunteers=n, location_interval_s=0.0), {}),
        "naive": (replace(base, volunteers=n, policy="naive"), {}),
        "stations": (replace(base, baseline="stations"), {}),
    }
    results = {
        label: run_scenario(s, config=runner.config(o), area=area) for label, (s, o) in runs.items()
    }
    summaries = {label: summarize(r) for label, r in results.items()}
    for label, summary in summaries.items():
        print(_row(label, summary))
    plot_times(
        {label: [o.time_to_arrival_s for o in r.outcomes] for label, r in results.items()},
        out / "planning-times.png",
        colours={"waves, 1 backup": "#2166ac", "waves, no location reports": "#999999"},
        styles={"waves, no location reports": "--"},
    )
    titles = {
        "waves": (
            f"{n} volunteers, waves (defaults, location every 10 s), 35 % acceptance",
            "waves",
        ),
        "waves, 1 backup": (f"{n} volunteers, waves with backup_responders = 1", "backup"),
        "stations": (
            f"stations baseline ({base.stations} stations, {base.vehicle_speed_kmh:g} km/h)",
            "stations",
        ),
    }
    for label, (title, name) in titles.items():
        plot_cells(
            area,
            summaries[label]["cells"],
            out / f"planning-cells-{name}.png",
            title=title,
            stations=summaries[label].get("stations", ()),
        )


def _plot_load(
    points: list[tuple[str, dict[str, Any]]],
    naive: dict[str, Any],
    backup: dict[str, Any],
    path: Path,
    n: int,
) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for timeout, marker in (("20", "o"), ("45", "s")):
        chosen = [(lbl, s) for lbl, s in points if f"timeout {timeout} s" in lbl]
        ax.plot(
            [s["alerts_per_incident"] for _, s in chosen],
            [s["within_target_share"] for _, s in chosen],
            marker=marker,
            color="#1b7837",
            linestyle="-" if timeout == "20" else ":",
            label=f"waves, max wave 1-6, wave timeout {timeout} s",
        )
        for lbl, s in chosen:
            ax.annotate(
                lbl.split(",")[0].replace("waves ", ""),
                (s["alerts_per_incident"], s["within_target_share"]),
                textcoords="offset points",
                xytext=(4, -10 if timeout == "45" else 4),
                fontsize=7,
            )
    ax.plot(
        [naive["alerts_per_incident"]],
        [naive["within_target_share"]],
        marker="D",
        markersize=9,
        color="#e08214",
        linestyle="none",
        label="naive (one at a time)",
    )
    ax.plot(
        [backup["alerts_per_incident"]],
        [backup["within_target_share"]],
        marker="*",
        markersize=13,
        color="#2166ac",
        linestyle="none",
        label="default waves (≤6, 20 s) with backup_responders = 1",
    )
    ax.set_xlabel("alerts per incident (alert load)")
    ax.set_ylabel("share of incidents reached within 180 s")
    ax.set_title(
        f"Waves against naive at equal alert load ({n} volunteers, 35 % acceptance, "
        "location every 10 s)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
