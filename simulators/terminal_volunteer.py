"""``dispatch volunteer``: one volunteer in a terminal, for field tests and demos.

It speaks the wire protocol (PROTOCOL.md) like a phone: on start it goes on duty with
its position, mode and skills, sends its location every few seconds, prints each alert
and assignment readably, and takes commands from stdin (``a`` accept, ``d`` decline,
``h`` I'm here, ``?`` for the rest). With ``--walk`` it moves toward the incident after a
``go`` at its mode's speed, so the engine sees it arrive from its location. On exit
(``q``, end of input, Ctrl-C, SIGTERM) it goes off duty.

Protocol 1.1: a ``go`` says whether it goes as the primary responder or as a backup; it
follows the incident's retained state while sent (where the broker lets it read it) to
learn role changes and whether the engine believed its arrival. The engine believes "I'm
here" only with a recent position within the arrival radius plus its accuracy, so ``h``
sends a location first, and warns (``h!`` sends anyway) when its own position is far.

Presence, receipts and the alert budget (protocol 1.1): it connects with a Last Will of
``{"status": "offline"}`` on its own status topic (QoS 1, not retained), which the broker
publishes if the process dies or its connection drops without a clean disconnect; its
status says ``"receipts": true`` and every alert is answered at once with
``{"alert_id": .., "answer": "received"}``; ``--max-alerts-per-day`` and ``--quiet-hours``
are sent with the status for the engine to respect.

``Volunteer`` is the logic (no I/O: commands and messages in, messages and lines out);
``run`` is the asyncio shell around it. Nothing in the engine imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import aiomqtt

from dispatch.model import is_valid_id
from geo.distance import haversine_m

__all__ = ["Volunteer", "add_arguments", "main"]

MODES = ("walk", "bike", "ebike")
# Default speeds by mode, m/s (config/default.toml [travel]); --speed overrides.
SPEEDS = {"walk": 1.8, "bike": 4.0, "ebike": 5.5}
XIAOYING = (30.2591, 120.1698)  # 小营巷, the old town
QUIT = ("q", "quit", "exit")
PRIORITY = {1: "life-threatening", 2: "urgent", 3: "routine"}
ARRIVAL_RADIUS_M = 30.0  # the engine's default (config/default.toml [policy])
MAX_SLACK_M = 100.0  # the engine counts a reported accuracy up to this
# The district's local time for quiet hours: China Standard Time (UTC+8, no DST).
LOCAL_OFFSET_S = 8 * 3600
QUIET_HOURS = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)").fullmatch
HELP = (
    "commands: a [ID] accept | d [ID] decline | h I'm here (h! even when far) | "
    "w! I can't go after all | on | off | "
    "m walk|bike|ebike | p LAT LON move there | s state | q quit (goes off duty)"
)
# The engine's stand-down reasons (dispatch/dispatcher.py), in plain words; first match.
REASONS = (
    ("withdrawn", "dispatch knows you cannot go and is finding someone else; thanks for saying"),
    ("faster", "a volunteer who will get there sooner is going in your place; thank you"),
    ("enough responders on scene", "others are on scene now; you can turn back, thank you"),
    ("on scene", "others are on scene now; you can turn back, thank you"),
    ("filled", "others are already on their way; thank you for answering"),
    ("expired", "the alert expired; others are taking care of it"),
    ("declined", "you declined this alert"),
    ("committed", "you are already helping at another incident"),
    ("merged", "another report of the same event is being handled; a new call comes if needed"),
    ("moved", "the incident's place changed; dispatch is finding people near it again"),
    ("resolved", "the incident has been dealt with; thank you"),
    ("cancelled", "the incident was cancelled; no need to go"),
)
BACKUP_NOTE = (
    "      you go as a BACKUP: another volunteer is on the way too; you may be stood down "
    "if they get there first or someone faster is going"
)


@dataclass(frozen=True, slots=True)
class Out:
    """One message to publish: the topic's last level under volunteers/<id>/."""

    leaf: str
    body: dict[str, Any]
    qos: int = 1


@dataclass
class Volunteer:
    """A volunteer's state and decisions; time is passed in, nothing is awaited here."""

    vid: str
    lat: float
    lon: float
    mode: str = "walk"
    skills: tuple[str, ...] = ("first_aid",)
    walk: bool = False
    speed_mps: float | None = None
    accuracy_m: float = 10.0  # what our (simulated) position fix claims, sent with it
    arrival_radius_m: float = ARRIVAL_RADIUS_M
    on_duty: bool = False
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert_id -> alert
    # The incident we were sent to (after go): incident_id, lat, lon, address, role,
    # here_sent, and verified (None until the state says; then the engine's belief).
    job: dict[str, Any] | None = None
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # incident -> alert
    # Protocol 1.1: receipts (always, as the shipped apps), the alert budget and quiet hours
    # ("HH:MM-HH:MM", the district's local time), sent with each status.
    receipts: bool = True
    max_alerts_per_day: int | None = None
    quiet_hours: str | None = None

    # ---- commands

    def start(self) -> list[Out]:
        self.on_duty = True
        return [self.status()]

    def status(self) -> Out:
        if not self.on_duty:
            return Out("status", {"status": "off_duty"})
        body: dict[str, Any] = {
            "status": "available",
            "skills": list(self.skills),
            "mode": self.mode,
            "lat": self.lat,
            "lon": self.lon,
        }
        if self.receipts:
            body["receipts"] = True
        if self.max_alerts_per_day is not None:
            body["max_alerts_per_day"] = self.max_alerts_per_day
        if self.quiet_hours is not None:
            body["quiet_hours"] = self.quiet_hours
        return Out("status", body)

    def will(self) -> Out:
        """The Last Will the broker publishes when we drop off without a clean goodbye."""
        return Out("status", {"status": "offline"})

    def quiet_now(self, now: float) -> bool:
        """Whether ``now`` falls inside our quiet hours (the district's local time)."""
        match = QUIET_HOURS(self.quiet_hours or "")
        if match is None:
            return False
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        minute = ((now + LOCAL_OFFSET_S) % 86_400) // 60
        return start <= minute < end if start < end else (minute >= start or minute < end)

    def location(self, now: float) -> Out:
        ts = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        return Out(
            "location",
            {
                "lat": self.lat,
                "lon": self.lon,
                "ts": ts.replace("+00:00", "Z"),
                "accuracy_m": self.accuracy_m,
            },
            qos=0,
        )

    def following(self) -> str | None:
        """The incident whose retained state to follow: the one we were sent to."""
        return None if self.job is None else str(self.job["incident_id"])

    def command(self, line: str, now: float) -> tuple[list[Out], list[str]]:
        """One line typed by the user: what to publish and what to print."""
        words = line.split()
        if not words:
            return [], []
        cmd, args = words[0].lower(), words[1:]
        if cmd in ("a", "accept", "d", "decline"):
            return self._answer("accept" if cmd.startswith("a") else "decline", args, now)
        if cmd in ("w", "withdraw", "w!", "withdraw!"):
            return self._withdraw(sure=cmd.endswith("!") or args[:1] in (["!"], ["-f"]))
        if cmd in ("h", "here", "arrived", "h!", "here!"):
            return self._here(force=cmd.endswith("!") or args[:1] in (["!"], ["-f"]), now=now)
        if cmd == "on":
            self.on_duty = True
            return [self.status()], ["on duty"]
        if cmd == "off":
            self.on_duty = False
            return [self.status()], ["off duty: no locations are sent, no alerts come"]
        if cmd in ("m", "mode"):
            if len(args) != 1 or args[0] not in MODES:
                return [], ["usage: m walk|bike|ebike"]
            self.mode = args[0]
            return ([self.status()] if self.on_duty else []), [f"mode {self.mode}"]
        if cmd in ("p", "pos", "position"):
            try:
                lat, lon = float(args[0]), float(args[1])
            except (IndexError, ValueError):
                return [], ["usage: p LAT LON (WGS84 degrees, e.g. p 30.2591 120.1698)"]
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                return [], ["latitude must be -90..90 and longitude -180..180"]
            self.lat, self.lon = lat, lon
            return ([self.location(now)] if self.on_duty else []), [f"at {lat:.5f},{lon:.5f}"]
        if cmd in ("s", "state"):
            return [], [self.describe(now)]
        if cmd in ("?", "help"):
            return [], [HELP]
        return [], [f"unknown command {cmd!r}; {HELP}"]

    def _here(self, force: bool, now: float) -> tuple[list[Out], list[str]]:
        """Say "I'm here", with our position first (the engine checks the arrival by it)."""
        if self.job is None:
            return [], ["no incident to arrive at (accept an alert first)"]
        iid = self.job["incident_id"]
        left = self._distance_left()
        slack = min(max(self.accuracy_m, 0.0), MAX_SLACK_M)
        if not force and left is not None and left > self.arrival_radius_m + slack:
            return [], [
                f"WARNING: by your position you are {_metres(left)} from incident {iid} "
                f"(accuracy {self.accuracy_m:.0f} m); dispatch would record the arrival as "
                "UNVERIFIED until a position near the scene confirms it",
                "      nothing sent; h! to send it anyway",
            ]
        self.job["here_sent"] = True
        where = "" if left is None else f" ({_metres(left)} from the scene by your position)"
        return (
            [self.location(now), Out("arrived", {"incident_id": iid})],
            [f"told dispatch: here at {iid}{where}"],
        )

    def _withdraw(self, sure: bool) -> tuple[list[Out], list[str]]:
        """ "I can't go after all" (this project's addition to the protocol): a reply with
        the alert's id; dispatch releases us at once and finds someone else."""
        if self.job is None or not self.job.get("alert_id"):
            return [], ["no incident to withdraw from (only after a go)"]
        iid = self.job["incident_id"]
        if self.job.get("here_sent"):
            return [], [f"you said you are at {iid}: a withdraw is for the way there"]
        if not sure:
            return [], [
                f"you are going to {iid}: dispatch will find someone else at once.",
                "      w! to say you cannot go after all",
            ]
        return (
            [Out("reply", {"alert_id": self.job["alert_id"], "answer": "withdraw"})],
            [f"told dispatch: cannot go to {iid} after all (waiting for its answer)"],
        )

    def _answer(self, answer: str, args: list[str], now: float) -> tuple[list[Out], list[str]]:
        live = {k: a for k, a in self.alerts.items() if a["expires"] > now}
        if args:
            live = {k: a for k, a in live.items() if k.startswith(args[0])}
        if not live:
            return [], ["no alert to answer" + (f" matching {args[0]!r}" if args else "")]
        alert_id, alert = max(live.items(), key=lambda item: item[1]["received"])
        del self.alerts[alert_id]
        if answer == "accept":
            self.accepted[alert["incident_id"]] = alert
        return (
            [Out("reply", {"alert_id": alert_id, "answer": answer})],
            [f"{answer} sent for incident {alert['incident_id']} (alert {alert_id})"],
        )

    # ---- messages from the engine

    def alert(self, body: Mapping[str, Any], now: float) -> tuple[list[Out], list[str]]:
        """An alert came: the receipt to send at once (before anyone decides), and lines."""
        lines = self.on_alert(body, now)
        alert_id = body.get("alert_id")
        if not self.receipts or not isinstance(alert_id, str) or alert_id not in self.alerts:
            return [], lines
        return [Out("reply", {"alert_id": alert_id, "answer": "received"})], lines

    def on_alert(self, body: Mapping[str, Any], now: float) -> list[str]:
        alert_id, iid = body.get("alert_id"), body.get("incident_id")
        if not isinstance(alert_id, str) or not isinstance(iid, str):
            return [f"ignored an alert without ids: {dict(body)}"]
        expires = _parse_time(body.get("expires_at"), default=now + 90)
        if expires <= now:
            return [f"ignored a stale alert for incident {iid}"]
        self.alerts[alert_id] = {**body, "expires": expires, "received": now}
        prio = body.get("priority")
        address = body.get("address") or "(no address)"
        return [
            f"ALERT incident {iid}: {body.get('kind')}, priority {prio} "
            f"({PRIORITY.get(prio, '?') if isinstance(prio, int) else '?'}), "
            f"{_metres(body.get('distance_m'))} away, ETA {_seconds(body.get('eta_s'))}, "
            f"answer within {expires - now:.0f} s; {address}",
            f"      a = accept, d = decline (alert {alert_id})",
        ]

    def on_assignment(self, body: Mapping[str, Any], now: float) -> list[str]:
        iid, action = body.get("incident_id"), body.get("action")
        reason = body.get("reason") or ""
        if not isinstance(iid, str):
            return [f"ignored an assignment without an incident id: {dict(body)}"]
        for alert_id in [k for k, a in self.alerts.items() if a["incident_id"] == iid]:
            del self.alerts[alert_id]
        role = body.get("role") if body.get("role") in ("primary", "backup") else None
        if action == "go" and self.job is not None and self.job["incident_id"] == iid:
            return self._go_again(body, role)
        if action == "go":
            alert = self.accepted.pop(iid, {})
            named = body.get("alert_id") or alert.get("alert_id")
            self.job = {
                "incident_id": iid,
                "alert_id": named if isinstance(named, str) else None,
                "lat": alert.get("lat"),
                "lon": alert.get("lon"),
                "address": alert.get("address"),
                "role": role or "primary",  # a 1.0 engine sends no role
                "here_sent": False,
                "verified": None,
            }
            where = self.job["address"] or "(no address)"
            left = self._distance_left()
            lines = [
                f"GO to incident {iid} as {self.job['role'].upper()} ({reason}): {where}"
                + (f", {_metres(left)} away" if left is not None else "")
            ]
            if self.job["role"] == "backup":
                lines.append(BACKUP_NOTE)
            lines.append(
                "      walking there by itself (--walk)" if self.walk else "      h = I'm here"
            )
            lines.append("      w! = I can't go after all")
            return lines
        if action == "stand_down":
            self.accepted.pop(iid, None)
            if self.job is not None and self.job["incident_id"] == iid:
                self.job = None
            told = _reason(reason)
            said = f"{told} ({reason})" if told else reason or "no reason given"
            return [f"STAND DOWN incident {iid}: {said}"]
        return [f"ignored an assignment with action {action!r}"]

    def _go_again(self, body: Mapping[str, Any], role: str | None) -> list[str]:
        """A later go for our job: a new role, or a new place (amended by the control room)."""
        job = self.job
        assert job is not None
        lines: list[str] = []
        if role is not None and role != job["role"]:
            lines += self._new_role(role)
        lat, lon = body.get("lat"), body.get("lon")
        if isinstance(lat, int | float) and isinstance(lon, int | float):
            job["lat"], job["lon"] = float(lat), float(lon)
            if isinstance(body.get("address"), str):
                job["address"] = body["address"]
            left = self._distance_left()
            lines.append(
                f"NEW PLACE for incident {job['incident_id']}: {job['address'] or '(no address)'}"
                + (f", {_metres(left)} away" if left is not None else "")
            )
        return lines

    def _new_role(self, role: str) -> list[str]:
        assert self.job is not None
        self.job["role"] = role
        if role == "primary":
            return ["you are now the PRIMARY responder for " + str(self.job["incident_id"])]
        return [f"you are now a BACKUP for {self.job['incident_id']}", BACKUP_NOTE]

    def on_state(self, body: Mapping[str, Any], now: float) -> list[str]:
        """The retained state of the incident we were sent to: role and arrival check."""
        job = self.job
        if job is None or body.get("id") != job["incident_id"]:
            return []
        lines: list[str] = []
        if job.get("lat") is None and isinstance(body.get("lat"), int | float):
            job["lat"], job["lon"] = body.get("lat"), body.get("lon")
        responders = body.get("responders")
        me = next(
            (
                r
                for r in (responders if isinstance(responders, list) else [])
                if isinstance(r, dict) and r.get("volunteer_id") == self.vid
            ),
            None,
        )
        if me is None:
            return lines
        if me.get("role") in ("primary", "backup") and me["role"] != job["role"]:
            lines += self._new_role(str(me["role"]))
        if me.get("arrived_at"):
            verified = me.get("verified") is not False  # a 1.0 engine believes every arrival
            if verified != job["verified"]:
                job["verified"] = verified
                if verified:
                    lines.append(f"dispatch CONFIRMED your arrival at {job['incident_id']}")
                else:
                    lines.append(
                        f"dispatch recorded your arrival at {job['incident_id']} as UNVERIFIED: "
                        "it has no recent position of yours near the scene; it is confirmed "
                        f"once a location within {self.arrival_radius_m:.0f} m (plus accuracy) "
                        "comes"
                    )
        return lines

    # ---- time passing

    def tick(self, dt: float, now: float) -> tuple[list[Out], list[str]]:
        """Every few seconds: walk on (with --walk) and send the location while on duty."""
        lines: list[str] = []
        if not self.on_duty:
            return [], lines
        left = self._distance_left()
        if self.walk and self.job is not None and left is not None and left > 1:
            step = min(left, (self.speed_mps or SPEEDS[self.mode]) * dt)
            f = step / left
            self.lat += (self.job["lat"] - self.lat) * f
            self.lon += (self.job["lon"] - self.lon) * f
            lines.append(f"walking: {_metres(left - step)} to go")
        return [self.location(now)], lines

    def _distance_left(self) -> float | None:
        job = self.job
        if job is None or not isinstance(job.get("lat"), int | float):
            return None
        if not isinstance(job.get("lon"), int | float):
            return None
        return haversine_m(self.lat, self.lon, float(job["lat"]), float(job["lon"]))

    def describe(self, now: float) -> str:
        duty = "on duty" if self.on_duty else "off duty"
        parts = [
            f"{self.vid}: {duty}, {self.mode}, skills {','.join(self.skills) or '-'}",
            f"at {self.lat:.5f},{self.lon:.5f}",
        ]
        live = [a for a in self.alerts.values() if a["expires"] > now]
        if live:
            parts.append(f"{len(live)} alert(s) waiting")
        if self.job is not None:
            job = self.job
            left = self._distance_left()
            parts.append(
                f"going to {job['incident_id']} as {job['role']}"
                + ("" if left is None else f", {_metres(left)} away")
            )
            if job["verified"] is not None:
                parts.append("arrival " + ("confirmed" if job["verified"] else "UNVERIFIED"))
            elif job["here_sent"]:
                parts.append("arrival sent")
        if self.max_alerts_per_day is not None:
            parts.append(f"at most {self.max_alerts_per_day} alerts a day")
        if self.quiet_hours is not None:
            quiet = " (resting now: no alerts)" if self.on_duty and self.quiet_now(now) else ""
            parts.append(f"quiet hours {self.quiet_hours}{quiet}")
        return "; ".join(parts)


def _parse_time(value: Any, default: float) -> float:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return default


def _reason(reason: str) -> str:
    """The engine's stand-down reason in plain words ('' when it needs none)."""
    low = reason.lower()
    return next((told for key, told in REASONS if key in low), "")


def _metres(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    return f"{value:.0f} m" if value < 1000 else f"{value / 1000:.1f} km"


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.0f} min"


# --------------------------------------------------------------------------- the CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``dispatch volunteer``."""
    parser.add_argument("--id", required=True, help="the volunteer id (1-64 of A-Z a-z 0-9 _ -)")
    parser.add_argument(
        "--mqtt", help="broker URL, mqtt://host:port (default: $DISPATCH_MQTT or 127.0.0.1:1883)"
    )
    parser.add_argument("--topic-root", help="default: $DISPATCH_TOPIC_ROOT or 'dispatch'")
    parser.add_argument(
        "--password",
        help="the broker password (default: $DISPATCH_VOLUNTEER_PASSWORD; the user name is "
        "the id). An open broker, like the demo's, needs none",
    )
    parser.add_argument("--mqtt-protocol", type=int, choices=[3, 5], default=5)
    parser.add_argument("--lat", type=float, default=XIAOYING[0], help="start latitude")
    parser.add_argument("--lon", type=float, default=XIAOYING[1], help="start longitude")
    parser.add_argument("--mode", choices=MODES, default="walk")
    parser.add_argument(
        "--skills", default="first_aid", help="comma-separated (default first_aid; '' for none)"
    )
    parser.add_argument(
        "--walk", action="store_true", help="after a go, move toward the incident by itself"
    )
    parser.add_argument("--speed", type=float, help="m/s for --walk (default by mode)")
    parser.add_argument(
        "--every", type=float, default=5.0, help="seconds between locations (default 5)"
    )
    parser.add_argument(
        "--accuracy",
        type=float,
        default=10.0,
        help="the accuracy in metres claimed for the position, sent as accuracy_m (default 10)",
    )
    parser.add_argument(
        "--arrival-radius",
        type=float,
        default=ARRIVAL_RADIUS_M,
        help="the engine's arrival radius in metres, for the far-away warning (default 30)",
    )
    parser.add_argument(
        "--max-alerts-per-day",
        type=int,
        metavar="N",
        help="the alert budget: the engine alerts us at most N times in 24 h (1-100)",
    )
    parser.add_argument(
        "--quiet-hours",
        metavar="HH:MM-HH:MM",
        help="no alerts between these times, the district's local time (e.g. 22:30-07:00)",
    )
    parser.add_argument(
        "--no-receipts",
        action="store_true",
        help="send no delivery receipts (like a protocol 1.0 client)",
    )


def main(args: argparse.Namespace, env: Mapping[str, str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    problem = _check(args)
    if problem:
        print(f"dispatch volunteer: {problem}", file=sys.stderr)
        return 2
    url = args.mqtt or env.get("DISPATCH_MQTT") or "mqtt://127.0.0.1:1883"
    root = (args.topic_root or env.get("DISPATCH_TOPIC_ROOT") or "dispatch").rstrip("/")
    password = args.password or env.get("DISPATCH_VOLUNTEER_PASSWORD") or None
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        print(f"dispatch volunteer: --mqtt must be mqtt://host:port, not {url!r}", file=sys.stderr)
        return 2
    skills = tuple(s for s in args.skills.split(",") if s)
    volunteer = Volunteer(
        args.id,
        args.lat,
        args.lon,
        mode=args.mode,
        skills=skills,
        walk=args.walk,
        speed_mps=args.speed,
        accuracy_m=args.accuracy,
        arrival_radius_m=args.arrival_radius,
        receipts=not args.no_receipts,
        max_alerts_per_day=args.max_alerts_per_day,
        quiet_hours=args.quiet_hours,
    )
    shell = _Shell(
        volunteer,
        host=parts.hostname,
        port=parts.port or 1883,
        username=unquote(parts.username) if parts.username else args.id,
        password=password or (unquote(parts.password) if parts.password else None),
        root=root,
        protocol=args.mqtt_protocol,
        every_s=args.every,
        out=out,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(shell.run())
    return shell.exit_code


def _check(args: argparse.Namespace) -> str:
    if not is_valid_id(args.id):
        return f"--id must be 1-64 characters of A-Z a-z 0-9 _ -, not {args.id!r}"
    if not (-90 <= args.lat <= 90 and -180 <= args.lon <= 180):
        return "--lat must be -90..90 and --lon -180..180"
    if not (math.isfinite(args.every) and args.every > 0):
        return "--every must be a number of seconds greater than 0"
    if args.speed is not None and not (math.isfinite(args.speed) and args.speed > 0):
        return "--speed must be greater than 0"
    if not (math.isfinite(args.accuracy) and 0 <= args.accuracy <= 10_000):
        return "--accuracy must be 0..10000 metres"
    if not (math.isfinite(args.arrival_radius) and args.arrival_radius > 0):
        return "--arrival-radius must be greater than 0"
    if args.max_alerts_per_day is not None and not 1 <= args.max_alerts_per_day <= 100:
        return "--max-alerts-per-day must be 1..100"
    if args.quiet_hours is not None:
        match = QUIET_HOURS(args.quiet_hours)
        if match is None or match[1] + match[2] == match[3] + match[4]:
            return (
                "--quiet-hours must be HH:MM-HH:MM (the district's local time, "
                f"e.g. 22:30-07:00) with a start and an end that differ, not {args.quiet_hours!r}"
            )
    bad = [s for s in args.skills.split(",") if s and not is_valid_id(s)]
    if bad:
        return f"--skills: not valid skill names: {', '.join(bad)}"
    return ""


@dataclass
class _Shell:
    volunteer: Volunteer
    host: str
    port: int
    username: str
    password: str | None
    root: str
    protocol: int
    every_s: float
    out: TextIO
    exit_code: int = 0
    followed: str | None = None  # the incident whose state we are subscribed to

    def say(self, *lines: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for line in lines:
            print(f"[{stamp}] {line}", file=self.out, flush=True)

    def topic(self, leaf: str) -> str:
        return f"{self.root}/volunteers/{self.volunteer.vid}/{leaf}"

    def state_topic(self, iid: str) -> str:
        return f"{self.root}/incidents/{iid}/state"

    async def follow(self, client: aiomqtt.Client) -> None:
        """Keep the state subscription on the incident we were sent to, and only that.

        A broker whose ACL keeps volunteers to their own topics refuses it (or delivers
        nothing): then no role changes or arrival checks are shown, which is fine.
        """
        want = self.volunteer.following()
        if want == self.followed:
            return
        old, self.followed = self.followed, want
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            if old is not None:
                await client.unsubscribe(self.state_topic(old), timeout=10)
            if want is not None:
                await client.subscribe(self.state_topic(want), 1, timeout=10)
        _cancel_not_swallowed()

    async def send(self, client: aiomqtt.Client, outs: list[Out]) -> None:
        for o in outs:
            # Never retained: a stale status or call must not outlive its moment.
            await client.publish(
                self.topic(o.leaf), json.dumps(o.body), qos=o.qos, retain=False, timeout=10
            )
            _cancel_not_swallowed()

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        reader = _stdin_reader(lines)
        v = self.volunteer
        first = True
        backoff = 0.5
        try:
            while not stop.is_set():
                try:
                    async with self._client() as client:
                        await client.subscribe(self.topic("alert"), 1, timeout=10)
                        await client.subscribe(self.topic("assignment"), 1, timeout=10)
                        self.followed = None  # a clean session: subscribe again
                        await self.follow(client)
                        outs = v.start() if first else [v.status()]
                        await self.send(client, outs)
                        if first:
                            self.say(
                                f"connected to {self.host}:{self.port} as {v.vid} "
                                f"(topic root '{self.root}')",
                                v.describe(time.time()),
                                HELP,
                            )
                        else:
                            self.say("reconnected")
                        first, backoff = False, 0.5
                        await self._session(client, lines, stop)
                        if v.on_duty:
                            v.on_duty = False
                            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                                await self.send(client, [v.status()])
                            self.say("off duty; bye")
                        return
                except aiomqtt.MqttCodeError as exc:
                    if exc.rc in (4, 5, 134, 135):
                        self.say(f"the broker refused {v.vid}: {exc} (check --id and --password)")
                        self.exit_code = 1
                        return
                    self.say(f"connection lost ({exc}); retrying")
                except aiomqtt.MqttError as exc:
                    if first:
                        self.say(f"cannot reach the broker at {self.host}:{self.port}: {exc}")
                    else:
                        self.say(f"connection lost ({exc}); retrying")
                if await self._offline(lines, stop, backoff):
                    self.exit_code = 1 if first else 0  # never connected: say so
                    return
                backoff = min(backoff * 2, 5.0)
        finally:
            reader()

    async def _offline(
        self, lines: asyncio.Queue[str | None], stop: asyncio.Event, seconds: float
    ) -> bool:
        """Wait before connecting again; True when the user quit (or stop) meanwhile."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                line = await asyncio.wait_for(lines.get(), min(left, 0.2))
            except TimeoutError:
                continue
            if line is None or line.strip().lower() in QUIT:
                return True
            if line.strip():
                self.say("not connected: nothing was sent; try again once connected")
        return True

    def _client(self) -> aiomqtt.Client:
        will = self.volunteer.will()
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            # The volunteer id, as the shipped broker enforces (use_username_as_clientid).
            identifier=self.volunteer.vid,
            protocol=(
                aiomqtt.ProtocolVersion.V5 if self.protocol == 5 else aiomqtt.ProtocolVersion.V311
            ),
            timeout=10,
            keepalive=20,
            # Presence (protocol 1.1): published by the broker if we drop off uncleanly.
            will=aiomqtt.Will(
                self.topic(will.leaf), json.dumps(will.body), qos=will.qos, retain=False
            ),
        )

    async def _session(
        self, client: aiomqtt.Client, lines: asyncio.Queue[str | None], stop: asyncio.Event
    ) -> None:
        """Until quit: messages, typed commands and the location ticks, in one loop each."""
        v = self.volunteer
        done = asyncio.Event()

        async def receive() -> None:
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    continue
                try:
                    body = json.loads(payload)
                except ValueError:
                    continue
                if not isinstance(body, dict):
                    continue
                now = time.time()
                if message.topic.value.endswith("/alert"):
                    receipt, said = v.alert(body, now)
                    await self.send(client, receipt)  # at once: the phone got it
                    self.say(*said)
                    print("\a", end="", file=self.out, flush=True)  # the terminal's bell
                elif message.topic.value.endswith("/assignment"):
                    self.say(*v.on_assignment(body, now))
                else:
                    self.say(*v.on_state(body, now))
                await self.follow(client)

        async def commands() -> None:
            while True:
                line = await lines.get()
                if line is None or line.strip().lower() in QUIT:
                    done.set()
                    return
                outs, said = v.command(line, time.time())
                self.say(*said)
                await self.send(client, outs)
                await self.follow(client)

        async def ticks() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(self.every_s)
                now = time.monotonic()
                outs, said = v.tick(now - last, time.time())
                last = now
                self.say(*said)
                await self.send(client, outs)

        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(receive(), name="volunteer-receive"),
                tg.create_task(commands(), name="volunteer-commands"),
                tg.create_task(ticks(), name="volunteer-ticks"),
            ]
            quit_wait = tg.create_task(done.wait(), name="volunteer-quit")
            stop_wait = tg.create_task(stop.wait(), name="volunteer-stop")
            await asyncio.wait([quit_wait, stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in [*tasks, quit_wait, stop_wait]:
                task.cancel()


def _cancel_not_swallowed() -> None:
    """Raise a cancel that an await of aiomqtt's swallowed.

    aiomqtt waits with ``asyncio.wait_for``, which in Python 3.11 drops a cancel that
    comes just as the awaited reply does (CPython gh-86296): the task would then carry
    on (e.g. back into ``client.messages``) and the exit would hang on it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _stdin_reader(lines: asyncio.Queue[str | None]) -> Callable[[], None]:
    """Feed stdin's lines into ``lines`` (None at its end); returns a function that stops it.

    A pipe or terminal is read without a thread (so exit never waits for a blocked read);
    a regular file, which the event loop cannot watch, is read at once.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0:
        lines.put_nowait(None)
        return lambda: None
    if not os.isatty(fd) and os.path.isfile(f"/proc/self/fd/{fd}"):
        for line in sys.stdin:
            lines.put_nowait(line)
        lines.put_nowait(None)
        return lambda: None
    buffer = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not chunk:
            if buffer:
                lines.put_nowait(buffer.decode(errors="replace"))
            lines.put_nowait(None)
            loop.remove_reader(fd)
            return
        buffer.extend(chunk)
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            lines.put_nowait(line.decode(errors="replace"))

    try:
        loop.add_reader(fd, readable)
    except OSError:  # /dev/null and the like cannot be watched: they hold no input
        lines.put_nowait(None)
        return lambda: None
    os.set_blocking(fd, False)

    def stop() -> None:
        loop.remove_reader(fd)
        os.set_blocking(fd, True)

    return stop
