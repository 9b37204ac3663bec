"""The offline scenario runner (simulators/scenario.py, stations.py, summary.py, simulate.py).

It must be deterministic, drive the engine's own core (not a copy of the policy), play
the naive baseline and the stations baseline as documented, refuse bad options with a
message naming the option, and write its JSON and pictures from the command line.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import dispatch.dispatcher
from dispatch.cli import main as cli_main
from dispatch.config import Config, load_config
from geo.area import ServiceArea
from simulators.run import run_scenario
from simulators.scenario import (
    NO_HUMAN_MODEL,
    Outcome,
    RunResult,
    Scenario,
    ScenarioError,
    incident_schedule,
    load_area,
    make_population,
    receipts,
    unreachable,
)
from simulators.stations import place_stations
from simulators.summary import format_report, summarize, within_target_share

CONFIG = load_config()
# A small but real run: the Shangcheng outline, a few hours, a few hundred volunteers.
SMALL = Scenario(volunteers=600, hours=6.0, rate_per_hour=12.0, seed=7)
# The same without the human model (turnout, silence, unreachable phones, last leg,
# intake all 0): for the tests of the engine's own mechanics, whose expected figures
# come from acceptance and arrive_share alone.
BARE = replace(SMALL, **NO_HUMAN_MODEL)
BARE_FLAGS = (
    "--turnout", "0", "--silent-share", "0", "--unreachable-share", "0",
    "--last-leg", "0", "--intake", "0",
)  # fmt: skip


@pytest.fixture(scope="module")
def area() -> ServiceArea:
    return load_area(CONFIG)


def _summary(scenario: Scenario, area: ServiceArea, config: Config = CONFIG) -> dict[str, object]:
    return summarize(run_scenario(scenario, area=area, config=config))


def test_same_seed_same_json_other_seed_differs(area: ServiceArea) -> None:
    first = json.dumps(_summary(SMALL, area), sort_keys=True)
    again = json.dumps(_summary(SMALL, area), sort_keys=True)
    other = json.dumps(_summary(replace(SMALL, seed=8), area), sort_keys=True)
    assert first == again
    assert first != other


def test_more_volunteers_face_the_same_incidents(area: ServiceArea) -> None:
    # Independent random streams: the incidents do not depend on the fleet or policy.
    assert incident_schedule(SMALL, area) == incident_schedule(
        replace(SMALL, volunteers=50, policy="naive"), area
    )


def test_the_headline_figures_are_sane(area: ServiceArea) -> None:
    s = _summary(SMALL, area)
    n = s["incidents"]
    assert isinstance(n, int)
    assert abs(n - 72) < 4 * math.sqrt(72)  # Poisson, 12/h for 6 h
    for key in ("p50_s", "mean_s", "within_target_share", "escalated_share"):
        assert s[key] is not None, key
    assert 0 < s["within_target_share"] < 1  # type: ignore[operator]
    # Nobody is reached who did not accept. Only 72 % of confirmed get there, but the
    # engine replaces an overdue responder, so more incidents than that are reached.
    assert s["reached_share"] <= s["accepted_share"]  # type: ignore[operator]
    assert 0.72 < s["reached_share"] <= 1  # type: ignore[operator]
    assert s["first_wave_size"] == 7  # 35 % acceptance, 95 % confidence: 1 - 0.65^7 > 0.95
    assert s["alerts_per_incident"] >= 6  # type: ignore[operator]
    assert len(s["cells"]) > 20  # type: ignore[arg-type]
    text = format_report(s)
    assert "within 180 s" in text
    assert "worst grid cells" in text


def test_alerts_come_from_the_engines_dispatcher(
    area: ServiceArea, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner imports no policy of its own: changing the core's changes the run."""
    before = _summary(SMALL, area)
    calls = []
    real = dispatch.dispatcher.Dispatcher._alert

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[1].volunteer_id)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(dispatch.dispatcher.Dispatcher, "_alert", spy)
    monkeypatch.setattr(
        dispatch.dispatcher, "choose_wave", lambda policy, candidates, **_: list(candidates[:1])
    )
    after = _summary(SMALL, area)
    assert len(calls) == after["alerts"]
    # Waves of one: replacements and later waves still come, but far fewer alerts.
    assert before["alerts_per_incident"] > 1.5 * after["alerts_per_incident"]  # type: ignore[operator]


def test_naive_alerts_one_volunteer_at_a_time_in_sequence(area: ServiceArea) -> None:
    result = run_scenario(replace(BARE, policy="naive"), area=area, config=CONFIG)
    assert result.wave_size == 1
    s = summarize(result)
    waves = _summary(BARE, area)
    assert s["alerts_per_incident"] < waves["alerts_per_incident"] / 2  # type: ignore[operator]
    # Replies come back before the next volunteer is called: at 35 % acceptance, about
    # 1 / 0.35 = 2.9 calls per incident.
    assert 1.5 < s["alerts_per_incident"] < 4.5  # type: ignore[operator]


def test_naive_never_has_two_alerts_open(area: ServiceArea) -> None:
    # Without delivery receipts: with them, an alert found undelivered stays valid (the
    # phone may yet get it) while the next one goes out at once, so two may be open.
    no_receipts = replace(SMALL, policy="naive", receipts_share=0.0)
    result = run_scenario(no_receipts, area=area, config=CONFIG)
    assert result.max_open_alerts == 1
    with_receipts = run_scenario(replace(no_receipts, receipts_share=1.0), area=area, config=CONFIG)
    assert with_receipts.extra["undelivered_alerts"] > 0
    assert with_receipts.max_open_alerts > 1


def test_a_daily_budget_caps_each_volunteer_and_the_load_is_reported(
    area: ServiceArea,
) -> None:
    # A busy corner: few volunteers, many calls, so some get many alerts a day.
    busy = replace(SMALL, volunteers=150, hours=24.0, rate_per_hour=12.0)
    free = run_scenario(busy, area=area, config=CONFIG).extra["alerts_per_volunteer_day"]
    assert free["max"] > 3
    assert free["p95"] <= free["max"]
    assert free["mean"] > 0
    capped = run_scenario(replace(busy, daily_budget=3), area=area, config=CONFIG)
    load = capped.extra["alerts_per_volunteer_day"]
    assert load["max"] <= 3  # the engine's own budget check, through the status message
    report = format_report(summarize(capped))
    assert "budget 3 a day each" in report
    with pytest.raises(ScenarioError, match="--daily-budget"):
        Scenario(daily_budget=101)


def test_stations_baseline(area: ServiceArea) -> None:
    stations = place_stations(area, 14)
    assert len(set(stations)) == 14
    assert all(area.contains(lat, lon) for lat, lon in stations)
    s = _summary(replace(SMALL, baseline="stations", hours=48.0), area)
    assert s["alerts"] == 0
    assert s["reached_share"] == 1.0
    # The documented calibration: about 8 minutes mean (between 5 and 11 to be robust).
    assert 300 < s["mean_s"] < 660  # type: ignore[operator]
    assert s["within_target_share"] < 0.15  # type: ignore[operator]
    # Slower vehicles, later arrivals.
    slow = _summary(replace(SMALL, baseline="stations", hours=48.0, vehicle_speed_kmh=9.0), area)
    assert slow["mean_s"] > s["mean_s"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("change", "option"),
    [
        ({"acceptance": 1.5}, "--acceptance"),
        ({"volunteers": -1}, "--volunteers"),
        ({"hours": 0}, "--hours"),
        ({"rate_per_hour": math.nan}, "--rate"),
        ({"walk_speed_mps": -2.0}, "--walk-speed"),
        ({"policy": "greedy"}, "--policy"),
        ({"baseline": "ambulances"}, "--baseline"),
        ({"responders": 0}, "--responders"),
        ({"station_delay_min_s": 200.0}, "--station-delay-min"),
        ({"location_interval_s": -1.0}, "--location-interval"),
        ({"halfway_share": 1.5}, "--halfway-share"),
    ],
)
def test_bad_values_name_the_option(change: dict[str, object], option: str) -> None:
    with pytest.raises(ScenarioError, match=f"^{option} must be"):
        Scenario(**change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--acceptance", "2"], "--acceptance must be a share between 0 and 1, got 2.0"),
        (["--volunteers", "ten"], "argument --volunteers: invalid int value: 'ten'"),
        (["--policy", "greedy"], "argument --policy: invalid choice: 'greedy'"),
        (["--hours", "-1"], "--hours must be greater than 0"),
        (["--sweep", "100,x"], "argument --sweep: expected volunteer counts"),
        (["--max-wave-size", "0"], "policy.max_wave_size"),
        (["--location-interval", "-5"], "--location-interval must be between 0"),
    ],
)
def test_cli_rejects_bad_options(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli_main(["simulate", "--quiet", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_end_to_end_with_json_and_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pictures"
    summary = tmp_path / "summary.json"
    code = cli_main(
        [
            "simulate",
            "--volunteers", "400",
            "--hours", "4",
            "--rate", "12",
            "--seed", "3",
            "--compare",
            "--json", str(summary),
            "--out", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "time to arrival P50" in captured.out
    assert "stations" in captured.out
    assert "100 %" in captured.err  # progress, on stderr
    data = json.loads(summary.read_text())
    for key in (
        "incidents",
        "p50_s",
        "p90_s",
        "mean_s",
        "within_target_share",
        "escalated_share",
        "alerts_per_incident",
    ):
        assert key in data, key
    assert set(data["compare"]) == {"waves", "naive", "stations"}
    assert data["compare"]["stations"]["alerts_per_incident"] == 0
    pictures = [Path(p) for p in data["pictures"]]
    assert {p.name for p in pictures} >= {"times.png", "cells.png", "cells-stations.png"}
    for p in pictures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 10_000


def test_cli_sweep(tmp_path: Path) -> None:
    out = io.StringIO()
    from simulators import simulate

    parser = __import__("argparse").ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(
        ["--sweep", "100,800", "--hours", "3", "--rate", "12", "--quiet",
         "--json", str(tmp_path / "s.json"), "--out", str(tmp_path)]
    )  # fmt: skip
    assert simulate.main(args, {}, out=out) == 0
    rows = json.loads((tmp_path / "s.json").read_text())["sweep"]
    assert [r["volunteers"] for r in rows] == [100, 800]
    # More volunteers nearby, sooner on scene.
    assert rows[1]["within_target_share"] > rows[0]["within_target_share"]
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def _simulate_json(tmp_path: Path, name: str, *flags: str) -> dict[str, object]:
    """One short ``dispatch simulate`` run (2,000 volunteers, 6 h) with ``flags``; its JSON."""
    from simulators import simulate

    parser = __import__("argparse").ArgumentParser()
    simulate.add_arguments(parser)
    target = tmp_path / f"{name}.json"
    args = parser.parse_args(
        ["--volunteers", "2000", "--hours", "6", "--rate", "12", "--seed", "7", "--quiet",
         "--json", str(target), *flags]
    )  # fmt: skip
    assert simulate.main(args, {}, out=io.StringIO()) == 0
    data: dict[str, object] = json.loads(target.read_text())
    return data


def test_overdue_and_backup_options_change_the_run_as_expected(tmp_path: Path) -> None:
    """--overdue-grace/-factor and --backup-responders reach the engine's policy and act.

    Without the human model: the figures below are about the ~28 % who never arrive (a
    turnout of its own makes some who will arrive look stalled at first). Overdue
    detection is measured without backups (on by default), which would hide it.
    """
    nb = ("--backup-responders", "0", *BARE_FLAGS)
    default = _simulate_json(tmp_path, "default", *nb)
    off = _simulate_json(tmp_path, "off", "--overdue-grace", "1e9", "--stall-after", "0", *nb)
    backup = _simulate_json(tmp_path, "backup", "--backup-responders", "1", *BARE_FLAGS)
    # The overdue time acts on its own when no location reports come in.
    clock = _simulate_json(tmp_path, "clock", "--location-interval", "0", *nb)
    late = _simulate_json(
        tmp_path, "late", "--location-interval", "0", "--overdue-factor", "3",
        "--overdue-grace", "120", *nb,
    )  # fmt: skip
    assert default["policy"] == {
        "strategy": "waves",
        "target_s": 180.0,
        "wave_timeout_s": 20.0,
        "max_wave_size": 8,
        "max_waves": 3,
        "backup_responders": 0,  # set by the test (the default is 2)
        "max_alerts": 0,
        "overdue_factor": 1.5,
        "overdue_grace_s": 30.0,
        "stall_after_s": 60.0,
    }
    assert off["policy"]["overdue_grace_s"] == 1e9  # type: ignore[index]
    assert off["policy"]["stall_after_s"] == 0.0  # type: ignore[index]
    assert backup["policy"]["backup_responders"] == 1  # type: ignore[index]
    assert late["policy"]["overdue_factor"] == 3.0  # type: ignore[index]
    assert default["incidents"] == off["incidents"] == backup["incidents"]  # same incidents
    # Overdue detection replaces the ~28 % who never arrive: without it, about that share
    # of incidents is never reached; with it, nearly all are, at the cost of more alerts.
    assert off["overdue_share"] == 0.0
    # (more than one a call even so: a faster acceptor takes a slower one's place)
    assert off["responders_per_incident"] < default["responders_per_incident"]  # type: ignore[operator]
    # (the policy allows for a 40 s turnout this world lacks, so some arrive before
    # they would have counted as overdue)
    assert 0.1 < default["overdue_share"] < 0.45  # type: ignore[operator]
    assert off["reached_share"] < 0.85 < 0.95 < default["reached_share"]  # type: ignore[operator]
    assert default["alerts_per_incident"] > off["alerts_per_incident"]  # type: ignore[operator]
    # Waiting longer before calling a responder overdue marks fewer of them so.
    assert late["overdue_share"] < clock["overdue_share"]  # type: ignore[operator]
    assert late["mean_time_to_overdue_s"] > clock["mean_time_to_overdue_s"]  # type: ignore[operator]
    # A backup from the waves already sent: more people moving, more incidents in time,
    # and fewer alerts than replacing overdue responders one wave at a time.
    assert backup["responders_per_incident"] > 1.8  # type: ignore[operator]
    # (by less than it was: the fastest acceptor now takes the place of a slow first one)
    assert backup["within_target_share"] > default["within_target_share"] + 0.01  # type: ignore[operator]
    assert backup["alerts_per_incident"] < default["alerts_per_incident"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backup-responders", "11"], "'policy.backup_responders'"),
        (["--overdue-factor", "0.5"], "a factor of at least 1 (set by --overdue-factor)"),
        (["--overdue-grace", "-1"], "a number of at least 0 (set by --overdue-grace)"),
        (["--stall-after", "-1"], "a number of at least 0 (set by --stall-after)"),
    ],
)
def test_bad_policy_options_name_the_option(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["simulate", "--quiet", *flags]) == 2
    assert message in capsys.readouterr().err


def test_same_seed_same_json_across_processes(tmp_path: Path) -> None:
    """No dependence on hash randomisation or anything else that differs between runs."""
    outputs = []
    for hash_seed in ("1", "2"):
        target = tmp_path / f"run{hash_seed}.json"
        subprocess.run(
            [
                sys.executable, "-m", "dispatch", "simulate", "--quiet",
                "--volunteers", "300", "--hours", "3", "--rate", "12", "--seed", "5",
                "--json", str(target),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            timeout=60,
        )  # fmt: skip
        outputs.append(target.read_text())
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["incidents"] > 0


# Denser than SMALL (8,000 on duty, 24 incidents an hour for 12 h): ETAs of a minute or
# two, where noticing a no-show at 60 s rather than at 1.5 x ETA + 30 s matters. Without
# the human model: the test is about the no-shows, not about slow starters.
DENSE = Scenario(volunteers=8000, hours=12.0, rate_per_hour=24.0, seed=7, **NO_HUMAN_MODEL)


def test_location_reports_make_stalled_responders_overdue_sooner(area: ServiceArea) -> None:
    """The engine's stall check, fed by the phones' reports, gives up on no-shows at 60 s."""
    # Without backups (on by default), which cover for no-shows and would hide the effect.
    # The world here has no turnout, so neither does the policy's expectation.
    no_backups = replace(CONFIG, policy=replace(CONFIG.policy, backup_responders=0, turnout_s=0.0))
    reports = _summary(DENSE, area, no_backups)
    silent = _summary(replace(DENSE, location_interval_s=0.0), area, no_backups)
    assert reports["incidents"] == silent["incidents"] > 200
    # Without reports only the clock acts (accept + 1.5 x ETA + 30 s); with them, a
    # responder who has not moved is overdue at the first report 60 s after accepting.
    assert silent["overdue_by_location_share"] == 0.0
    assert reports["overdue_by_location_share"] > 0.8  # type: ignore[operator]
    # (60 s after they should have set off: the policy expects a 40 s turnout)
    assert reports["mean_time_to_overdue_s"] <= 60 + DENSE.location_interval_s
    assert silent["mean_time_to_overdue_s"] > 120  # type: ignore[operator]
    # The no-shows are the same ~28 %, noticed sooner: more incidents reached in time.
    assert 0.15 < reports["overdue_share"] < 0.45  # type: ignore[operator]
    assert reports["within_target_share"] > silent["within_target_share"] + 0.05  # type: ignore[operator]
    assert reports["p90_s"] < silent["p90_s"]  # type: ignore[operator]


def test_location_reports_are_deterministic(area: ServiceArea) -> None:
    s = replace(SMALL, halfway_share=0.5)
    first = json.dumps(_summary(s, area), sort_keys=True)
    assert first == json.dumps(_summary(s, area), sort_keys=True)
    # Half-way quitters move, so the stall check catches fewer of them than stayers.
    stay = _summary(SMALL, area)
    assert json.loads(first)["overdue_by_location_share"] < stay["overdue_by_location_share"]


def test_arrivals_come_once_by_geofence_or_button(
    area: ServiceArea, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The geofence sees most arrivals; the button is never pressed after it; no reports
    are sent with --location-interval 0, and only a few per responder otherwise."""
    arrivals: list[tuple[str, bool]] = []
    locations: list[str] = []
    real_arrive = dispatch.dispatcher.Dispatcher._arrive
    real_location = dispatch.dispatcher.Dispatcher.location

    def arrive(self, incident, volunteer_id, now, effects, how, verified):  # type: ignore[no-untyped-def]
        responder = next(r for r in incident.responders if r.volunteer_id == volunteer_id)
        arrivals.append((how, responder.arrived_at is None))
        return real_arrive(self, incident, volunteer_id, now, effects, how, verified)

    def location(self, msg, now):  # type: ignore[no-untyped-def]
        locations.append(msg.volunteer_id)
        return real_location(self, msg, now)

    monkeypatch.setattr(dispatch.dispatcher.Dispatcher, "_arrive", arrive)
    monkeypatch.setattr(dispatch.dispatcher.Dispatcher, "location", location)
    s = _summary(SMALL, area)
    hows = [how for how, fresh in arrivals]
    assert all(fresh for _, fresh in arrivals), "an arrival was reported twice"
    # The phone sends a fix with "I'm here", so the geofence sees every arrival first.
    assert hows
    assert set(hows) == {"geofence"}
    # Reports only from responders on the way (and one when they are home again).
    responders = s["responders_per_incident"] * s["incidents"]  # type: ignore[operator]
    assert 0 < len(locations) < 60 * responders
    arrivals.clear()
    locations.clear()
    _summary(replace(SMALL, location_interval_s=0.0), area)
    # No reports on the way: only the one fix that comes with each "I'm here".
    assert arrivals
    assert len(locations) == len(arrivals)


def test_stall_check_off_leaves_only_the_clock(tmp_path: Path) -> None:
    """--stall-after 0 reaches the engine: reports still come, no one is overdue by them."""
    off = _simulate_json(tmp_path, "stall-off", "--stall-after", "0")
    on = _simulate_json(tmp_path, "stall-on")
    assert off["policy"]["stall_after_s"] == 0.0  # type: ignore[index]
    assert off["overdue_by_location_share"] == 0.0
    assert on["overdue_by_location_share"] > 0.8  # type: ignore[operator]
    assert off["mean_time_to_overdue_s"] > on["mean_time_to_overdue_s"]  # type: ignore[operator]


# ----------------------------------------------------------------------------- human model
# Each element of the human model, with the others off (BARE), against the run without it.

# Nobody is ever overdue: a slow start must not bring replacements that change the run.
NO_OVERDUE = load_config(overrides={"policy.overdue_grace_s": 1e9, "policy.stall_after_s": 0.0})


def _replies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(volunteer, answer) of every answer the engine's core receives from now on (a
    delivery receipt is not an answer)."""
    replies: list[tuple[str, str]] = []
    real = dispatch.dispatcher.Dispatcher.reply

    def spy(self, msg, now):  # type: ignore[no-untyped-def]
        if msg.answer.value != "received":
            replies.append((msg.volunteer_id, msg.answer.value))
        return real(self, msg, now)

    monkeypatch.setattr(dispatch.dispatcher.Dispatcher, "reply", spy)
    return replies


def _alerted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The volunteer of every alert the engine's core sends from now on."""
    alerted: list[str] = []
    real = dispatch.dispatcher.Dispatcher._alert

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        alerted.append(args[1].volunteer_id)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(dispatch.dispatcher.Dispatcher, "_alert", spy)
    return alerted


def test_turnout_delays_the_arrival_by_the_turnout(area: ServiceArea) -> None:
    """A fixed 40 s turnout: the same people accept, and each is at the patient 40 s later."""
    sure = replace(BARE, arrive_share=1.0)
    before = run_scenario(sure, area=area, config=NO_OVERDUE)
    after = run_scenario(
        replace(sure, turnout_s=40.0, turnout_sigma=0.0), area=area, config=NO_OVERDUE
    )
    pairs = [
        (a, b)
        for a, b in zip(before.outcomes, after.outcomes, strict=True)
        if a.time_to_arrival_s is not None and b.time_to_arrival_s is not None
    ]
    assert len(pairs) > 40
    shifts = sorted(b.time_to_arrival_s - a.time_to_arrival_s for a, b in pairs)  # type: ignore[operator]
    assert abs(shifts[len(shifts) // 2] - 40.0) < 0.5
    # Busy 40 s longer, a few later incidents find other people free: most shift exactly.
    assert sum(abs(x - 40.0) < 0.5 for x in shifts) >= 0.8 * len(shifts)
    # The accepts themselves come as before: the turnout is after the accept.
    same_accept = sum(a.first_accept_s == b.first_accept_s for a, b in pairs)
    assert same_accept >= 0.8 * len(pairs)
    # A lognormal turnout of median 40 s: a mean shift of about exp(0.5^2/2) x 40 = 45 s.
    spread = run_scenario(replace(sure, turnout_s=40.0), area=area, config=NO_OVERDUE)
    assert 35.0 < _mean_shift(before, spread) < 55.0


def _mean_shift(before: RunResult, after: RunResult) -> float:
    """The mean change of time to arrival over the incidents reached in both runs."""
    shifts = [
        b.time_to_arrival_s - a.time_to_arrival_s
        for a, b in zip(before.outcomes, after.outcomes, strict=True)
        if a.time_to_arrival_s is not None and b.time_to_arrival_s is not None
    ]
    return sum(shifts) / len(shifts)


def test_silent_alerts_never_produce_a_reply(
    area: ServiceArea, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = _replies(monkeypatch)
    alerted = _alerted(monkeypatch)
    # Nobody accepts and every alert not accepted is silent: not one reply.
    run_scenario(replace(BARE, acceptance=0.0, silent_share=1.0), area=area, config=CONFIG)
    assert alerted
    assert replies == []
    # Silence takes only from the alerts not accepted: everybody accepts, all reply.
    replies.clear()
    run_scenario(replace(BARE, acceptance=1.0, silent_share=1.0), area=area, config=CONFIG)
    assert replies
    assert {answer for _, answer in replies} == {"accept"}
    # Half of the declines go unsaid: about half the alerts get a reply (all declines).
    replies.clear()
    alerted.clear()
    run_scenario(replace(BARE, acceptance=0.0, silent_share=0.5), area=area, config=CONFIG)
    n = len(alerted)
    assert n > 200
    assert {answer for _, answer in replies} == {"decline"}
    # Stand-downs before the reply take a few more; four binomial sd below the half.
    assert 0.5 * n - 4 * math.sqrt(n / 4) - 0.1 * n < len(replies) < 0.5 * n + 4 * math.sqrt(n / 4)


def test_unreachable_phones_never_reply(area: ServiceArea, monkeypatch: pytest.MonkeyPatch) -> None:
    replies = _replies(monkeypatch)
    alerted = _alerted(monkeypatch)
    s = replace(BARE, unreachable_share=0.5)
    ids = [v.id for v in make_population(s, area)]
    away = unreachable(s, ids)
    assert 0.4 * len(ids) < len(away) < 0.6 * len(ids)
    run_scenario(s, area=area, config=CONFIG)
    assert set(alerted) & away  # the engine alerts them: it cannot know
    assert replies
    assert not {vid for vid, _ in replies} & away
    # A property of the person, drawn once per run: the same people for every policy
    # with this seed, and a larger share only adds people.
    assert unreachable(replace(s, policy="naive"), ids) == away
    assert unreachable(replace(s, unreachable_share=0.2), ids) < away
    assert unreachable(replace(s, seed=8), ids) != away
    assert unreachable(replace(s, unreachable_share=0.0), ids) == frozenset()


def test_intake_delays_volunteers_and_stations_alike(area: ServiceArea) -> None:
    """The engine has the report 30 s after the call started: every time is 30 s longer."""
    now = run_scenario(BARE, area=area, config=CONFIG)
    later = run_scenario(replace(BARE, intake_s=30.0), area=area, config=CONFIG)
    assert [o.alerts for o in now.outcomes] == [o.alerts for o in later.outcomes]
    pairs = list(zip(now.outcomes, later.outcomes, strict=True))
    reached = [(a, b) for a, b in pairs if a.time_to_arrival_s is not None]
    assert len(reached) > 40
    for a, b in reached:
        assert b.time_to_arrival_s == pytest.approx(a.time_to_arrival_s + 30.0, abs=1e-3)
        assert b.engine_arrival_s == pytest.approx(a.engine_arrival_s + 30.0, abs=1e-3)  # type: ignore[operator]
    for a, b in pairs:
        if a.first_accept_s is not None:
            assert b.first_accept_s == pytest.approx(a.first_accept_s + 30.0, abs=1e-3)
    stations = replace(BARE, baseline="stations")
    s0 = run_scenario(stations, area=area, config=CONFIG)
    s30 = run_scenario(replace(stations, intake_s=30.0), area=area, config=CONFIG)
    for a, b in zip(s0.outcomes, s30.outcomes, strict=True):
        assert b.time_to_arrival_s == pytest.approx(a.time_to_arrival_s + 30.0)  # type: ignore[operator]


def test_time_to_arrival_is_at_the_patient_the_engines_moment_beside_it(
    area: ServiceArea,
) -> None:
    for s in (SMALL, replace(SMALL, baseline="stations")):
        result = run_scenario(s, area=area, config=CONFIG)
        reached = [o for o in result.outcomes if o.time_to_arrival_s is not None]
        assert reached
        for o in reached:
            assert o.engine_arrival_s is not None
            assert o.time_to_arrival_s == pytest.approx(o.engine_arrival_s + s.last_leg_s)
        summary = summarize(result)
        assert summary["engine_arrival_mean_s"] == pytest.approx(
            summary["mean_s"] - s.last_leg_s, abs=0.1
        )
        assert summary["engine_within_target_share"] >= summary["within_target_share"]


def test_headline_counts_every_incident_unreached_ones_as_misses() -> None:
    def outcome(n: int, t: float | None) -> Outcome:
        return Outcome(
            id=f"i{n}", kind="fall", cell="c1", lat=30.25, lon=120.17,
            time_to_arrival_s=t, escalated=t is None, alerts=3, accepted=t is not None,
            first_eta_s=None, first_accept_s=None,
            engine_arrival_s=None if t is None else t - 20.0,
        )  # fmt: skip

    times = (100.0, 170.0, 190.0, None, None)  # 190 s at the patient is 170 s at the street
    result = RunResult(
        scenario=Scenario(), outcomes=tuple(outcome(n, t) for n, t in enumerate(times)),
        alerts=15, wave_size=6, max_open_alerts=3,
    )  # fmt: skip
    s = summarize(result)
    assert s["within_target_share"] == within_target_share(result.outcomes, 180.0) == 2 / 5
    assert s["engine_within_target_share"] == 3 / 5
    assert s["reached_share"] == 3 / 5
    assert s["mean_s"] == pytest.approx((100 + 170 + 190) / 3, abs=0.1)
    assert s["p50_s"] == 190.0
    assert s["p90_s"] is None  # falls among the unreached
    assert s["kinds"]["fall"]["within_target_share"] == 2 / 5
    assert within_target_share((), 180.0) is None


def test_json_and_report_carry_the_assumptions_and_the_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "run.json"
    args = ["simulate", "--quiet", "--volunteers", "400", "--hours", "2", "--rate", "12"]
    assert cli_main([*args, "--json", str(target)]) == 0
    text = capsys.readouterr().out
    data = json.loads(target.read_text())
    assert data["assumptions"] == {
        "turnout_s": 40.0,
        "turnout_sigma": 0.5,
        "silent_share": 0.4,
        "unreachable_share": 0.1,
        "last_leg_s": 20.0,
        "intake_s": 30.0,
    }
    fleet = data["qualified_on_duty"]
    assert fleet["total"] == 400
    assert set(fleet["by_skill"]) == {"first_aid", "patrol", "mediation"}
    assert 0.5 * 400 < fleet["by_skill"]["first_aid"] < 0.7 * 400  # the fleet's 60 %
    assert "qualified on duty         400 in total; first aid" in text
    assert "human model               turnout 40 s" in text
    for key in ("engine_arrival_p50_s", "engine_arrival_mean_s", "engine_within_target_share"):
        assert key in data, key
    flags = ["--turnout", "25", "--turnout-sigma", "0.3", "--silent-share", "0.2",
             "--unreachable-share", "0.05", "--last-leg", "45", "--intake", "60"]  # fmt: skip
    assert cli_main([*args, *flags, "--skills", "all", "--json", str(target)]) == 0
    data = json.loads(target.read_text())
    assert data["assumptions"] == {
        "turnout_s": 25.0,
        "turnout_sigma": 0.3,
        "silent_share": 0.2,
        "unreachable_share": 0.05,
        "last_leg_s": 45.0,
        "intake_s": 60.0,
    }
    assert data["qualified_on_duty"]["by_skill"] == dict.fromkeys(
        ("first_aid", "patrol", "mediation"), 400
    )


def test_stations_baseline_says_what_was_calibrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "stations.json"
    args = ["simulate", "--quiet", "--baseline", "stations", "--hours", "48", "--seed", "7"]
    assert cli_main([*args, "--json", str(target)]) == 0
    text = capsys.readouterr().out
    data = json.loads(target.read_text())
    calibration = data["stations_calibration"]
    assert calibration["target_mean_s"] == 480.0
    assert calibration["chosen"] == {
        "vehicle_speed_kmh": 16.0,
        "station_delay_min_s": 30.0,
        "station_delay_max_s": 120.0,
    }
    assert set(calibration["fixed_from_sources"]) >= {"intake_s", "last_leg_s"}
    assert abs(data["mean_s"] - 480.0) < 30.0  # the calibration holds on another seed
    sens = calibration["sensitivity"]
    table = sens["mean_s"]
    assert sens["vehicle_speeds_kmh"] == [12.0, 16.0, 20.0]
    assert table[1][1] == pytest.approx(data["mean_s"], abs=0.1)  # the run itself
    for row in table:
        assert row[0] > row[1] > row[2]  # faster vehicles, sooner
    for col in range(3):
        assert table[0][col] < table[1][col] < table[2][col]  # longer delay, later
        assert table[2][col] - table[0][col] == pytest.approx(60.0, abs=1.0)
    assert "calibrated, not sourced: vehicle speed 16 km/h" in text
    assert "sensitivity: mean minutes" in text
    assert data["assumptions"]["intake_s"] == 30.0
    assert "qualified_on_duty" not in data


def test_bad_human_model_values_name_the_option() -> None:
    for change, option in (
        ({"turnout_s": -1.0}, "--turnout"),
        ({"turnout_sigma": 3.0}, "--turnout-sigma"),
        ({"silent_share": 1.2}, "--silent-share"),
        ({"unreachable_share": -0.1}, "--unreachable-share"),
        ({"last_leg_s": math.inf}, "--last-leg"),
        ({"intake_s": 4000.0}, "--intake"),
    ):
        with pytest.raises(ScenarioError, match=f"^{option} must be"):
            Scenario(**change)  # type: ignore[arg-type]


# --- the planning page's arithmetic (simulators/planning.py) -----------------------------


def test_planning_holds_ours_under_a_baselines_alert_load() -> None:
    from simulators.planning import held_budget

    # Rounded down, so that ours never sends more; at least one alert.
    assert held_budget(9.21) == 9
    assert held_budget(30.99) == 30
    assert held_budget(3.0) == 3
    assert held_budget(0.4) == 1


def test_planning_crossing_interpolates_rising_and_falling_figures() -> None:
    from simulators.planning import crossing

    shares = [(1000, 0.5), (4000, 0.8), (16000, 1.0)]
    assert crossing(shares, 0.9) == pytest.approx(8000.0)  # half-way on a log scale
    assert crossing(shares, 0.4) == 1000.0
    assert crossing(shares[:2], 0.9) is None
    means = [(1000, 300.0), (4000, 200.0), (16000, 100.0)]
    assert crossing(means, 150.0, below=True) == pytest.approx(8000.0)
    assert crossing(means, 50.0, below=True) is None


def test_planning_names_the_simulate_command_of_each_run() -> None:
    from simulators.planning import UPPER_BOUND, Run

    run = Run.of(Scenario(volunteers=3000, hours=72, seed=7, walk_speed_mps=4.0), UPPER_BOUND)
    command = run.command()
    assert command.startswith("DISPATCH_POLICY_WAVE_CONFIDENCE=0.9999 dispatch simulate ")
    for words in ("--volunteers 3000", "--hours 72", "--seed 7", "--walk-speed 4"):
        assert words in command
    assert "--alert-budget 100" in command
    assert "--backup-responders 10" in command
    stations = Run.of(Scenario(baseline="stations", hours=24)).command()
    assert "--baseline stations" in stations
    assert "--volunteers" not in stations


def test_receipts_replace_the_unreachable_at_once(area: ServiceArea) -> None:
    """Phones that send receipts: an unreachable one is found out after the engine's
    delivery timeout and the next best alerted at once, instead of after the wave
    timeout; fewer incidents are reached late. The same people are unreachable either way."""
    s = replace(SMALL, policy="naive", unreachable_share=0.4, hours=12.0)
    ids = [v.id for v in make_population(s, area)]
    assert receipts(s, ids) == frozenset(ids)  # the default: the shipped apps all send them
    assert receipts(replace(s, receipts_share=0.0), ids) == frozenset()
    half = receipts(replace(s, receipts_share=0.5), ids)
    assert 0.4 * len(ids) < len(half) < 0.6 * len(ids)
    assert unreachable(replace(s, receipts_share=0.5), ids) == unreachable(s, ids)
    without = _summary(replace(s, receipts_share=0.0), area)
    with_ = _summary(s, area)
    assert without["undelivered_alerts"] == 0
    # Each undelivered alert is one to an unreachable phone.
    assert 0 < with_["undelivered_alerts"] <= with_["alerts"]  # type: ignore[operator]
    assert with_["within_target_share"] > without["within_target_share"]  # type: ignore[operator]
    assert with_["median_time_to_accept_s"] < without["median_time_to_accept_s"]  # type: ignore[operator]
    # Reachable phones are never taken for unreachable ones (receipts take about 1 s).
    reachable = _summary(replace(s, unreachable_share=0.0), area)
    assert reachable["undelivered_alerts"] == 0
    report = format_report(with_)
    assert f"from 100% of the phones; {with_['undelivered_alerts']} alerts undelivered" in report


def test_the_receipt_flags_reach_the_scenario(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    args = ["simulate", "--quiet", "--volunteers", "300", "--hours", "1", "--rate", "12"]
    flags = ["--receipts-share", "0.25", "--receipt-delay", "2"]
    assert cli_main([*args, *flags, "--json", str(target)]) == 0
    data = json.loads(target.read_text())
    assert data["scenario"]["receipts_share"] == 0.25
    assert data["scenario"]["receipt_median_s"] == 2.0
    assert isinstance(data["undelivered_alerts"], int)
    with pytest.raises(ScenarioError, match="--receipts-share"):
        Scenario(receipts_share=1.5)
    with pytest.raises(ScenarioError, match="--receipt-delay"):
        Scenario(receipt_median_s=0.0)
