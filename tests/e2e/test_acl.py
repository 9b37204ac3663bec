"""Access control: the SHIPPED Mosquitto configuration, accounts kept by ``dispatch accounts``.

A broker is started from config/mosquitto/mosquitto.conf itself, with only its ports,
paths and log destination rewritten for a throwaway run, and with the shipped ACL file
(copied byte for byte next to the password file, because ``dispatch accounts`` adds the
role accounts' blocks to it). Phones are paho-mqtt clients; the engine is the real
process, logged in as its own account.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import servers
from e2e_harness import (
    REPO,
    TOKEN,
    XIAOYING,
    Engine,
    GatewayProcess,
    MqttClient,
    Subscription,
    running,
    uid,
)
from paho.mqtt.enums import CallbackAPIVersion

from dispatch import localservers
from dispatch.accounts import hash_password, verify_password

SHIPPED = REPO / "config" / "mosquitto"
ROOT = "dispatch"  # the shipped ACL's topic root
PASSWORD = "correct-horse-battery"
REFUSED = "Not authorized"  # CONNACK 0x87 (MQTT 5) or 5 (3.1.1)
QUIET = 0.5  # how long "nothing arrives" is watched for, after a sync that did arrive


def render_config(
    shipped: str, *, port: int, ws_port: int, workdir: Path, engine_port: int = 0
) -> str:
    """The shipped mosquitto.conf with test ports, temporary paths and stderr logging.

    Every other line is kept as it is: a directive the test cannot place fails loudly.
    """
    out = []
    for line in shipped.splitlines():
        words = line.split()
        key = words[0] if words and not line.startswith("#") else ""
        if key == "listener":
            new_port = {"1883": port, "9001": ws_port, "1884": engine_port}.get(words[1])
            assert new_port is not None, f"unexpected listener in the shipped config: {line}"
            line = f"listener {new_port} 127.0.0.1"
        elif key == "password_file":
            line = f"password_file {workdir / 'passwords'}"
        elif key == "acl_file":
            line = f"acl_file {workdir / 'acl'}"
        elif key == "persistence_location":
            line = f"persistence_location {workdir}/"
        elif key == "log_dest":
            line = "log_dest stderr"
        elif key and any(w.startswith("/") for w in words[1:]):
            raise AssertionError(f"the test does not know where to put: {line}")
        out.append(line)
    if os.geteuid() == 0:
        out.append("user root")  # as localservers: keep the parent-death signal (CI is root)
    return "\n".join(out) + "\n"


@dataclass
class SecureBroker:
    server: localservers.ManagedServer
    port: int
    ws_port: int
    workdir: Path
    engine_port: int  # the engine's own listener (no client id tied to the username)

    @property
    def passwords(self) -> Path:
        return self.workdir / "passwords"

    @property
    def acl(self) -> Path:
        return self.workdir / "acl"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "mosquitto.pid"

    def url(self, user: str | None = None, password: str = PASSWORD, engine: bool = False) -> str:
        auth = "" if user is None else f"{user}:{password}@"
        return f"mqtt://{auth}127.0.0.1:{self.engine_port if engine else self.port}"

    def accounts(
        self, *args: str, password: str | None = PASSWORD
    ) -> subprocess.CompletedProcess[str]:
        """``dispatch accounts ...`` as an operator would run it (password on stdin)."""
        argv = [sys.executable, "-m", "dispatch", "accounts", *args]
        argv += ["--file", str(self.passwords), "--acl", str(self.acl)]
        if password is not None:
            argv.append("--password-stdin")
        return subprocess.run(
            argv,
            input=(password or "") + "\n",
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
            check=False,
        )

    def add(self, account: str, role: str = "volunteer") -> None:
        done = self.accounts("add", account, "--role", role, "--reload", str(self.pid_file))
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    binary = localservers.find_binary("mosquitto")
    if binary is None:
        servers.skip_or_fail("no mosquitto binary: the ACL tests need a real Mosquitto")
    workdir = tmp_path_factory.mktemp("mosquitto")
    shutil.copyfile(SHIPPED / "acl", workdir / "acl")
    (workdir / "passwords").touch(mode=0o600)
    port, ws_port = localservers.free_port(), localservers.free_port()
    engine_port = localservers.free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        render_config(
            (SHIPPED / "mosquitto.conf").read_text(),
            port=port,
            ws_port=ws_port,
            workdir=workdir,
            engine_port=engine_port,
        )
    )
    server = localservers._spawn("mosquitto", [binary, "-c", str(conf)], workdir)
    server.ports["tcp"] = port
    try:
        up = localservers._wait_ready(
            server,
            lambda: (
                localservers._both_open(port, ws_port)()
                and localservers.port_open("127.0.0.1", engine_port)
            ),
        )
        assert up, f"the shipped configuration did not start:\n{server.log_tail()}"
        secure = SecureBroker(server, port, ws_port, workdir, engine_port)
        secure.pid_file.write_text(f"{server.proc.pid}\n")
        yield secure
    finally:
        server.stop()


def connect_code(url: str, protocol: int = mqtt.MQTTv5, ws_port: int | None = None) -> str:
    """The broker's answer to a CONNECT ("Success", "Not authorized", ...); over
    websockets (the volunteer web page's way in) when ``ws_port`` is given."""
    host, port = localservers.parse_mqtt_url(url)
    parts = url.split("//", 1)[1].split("@")
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"acl-{uuid.uuid4().hex[:8]}",
        protocol=protocol,
        transport="tcp" if ws_port is None else "websockets",
    )
    port = port if ws_port is None else ws_port
    if len(parts) == 2:
        user, _, password = parts[0].partition(":")
        client.username_pw_set(user, password)
    answer: list[str] = []
    done = threading.Event()

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        answer.append(str(reason))
        done.set()

    def on_disconnect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        answer.append(f"disconnected: {reason}")
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(5), "no CONNACK from the broker"
        return answer[0]
    finally:
        client.disconnect()
        client.loop_stop()


def publish_code(client: MqttClient, topic: str, payload: bytes) -> str:
    """Publish at QoS 1 and return the PUBACK's reason (MQTT 5 says "Not authorized")."""
    codes: dict[int, str] = {}
    done = threading.Condition()

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with done:
            codes[mid] = str(reason)
            done.notify_all()

    client.client.on_publish = on_publish
    info = client.client.publish(topic, payload, qos=1)
    with done:
        assert done.wait_for(lambda: info.mid in codes, 5), f"no PUBACK for {topic}"
    return codes[info.mid]


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def sync(sender: MqttClient, receiver: Subscription, topic: str) -> None:
    """Publish a marker the receiver may see and wait for it: earlier traffic is through."""
    marker = uuid.uuid4().hex.encode()
    sender.publish(topic, marker)
    receiver.wait_for(lambda m: m.payload == marker, what="(sync marker)")
    time.sleep(QUIET)


# --------------------------------------------------------------------------- the CLI


def test_accounts_cli_writes_what_mosquitto_reads(broker: SecureBroker, tmp_path: Path) -> None:
    assert broker.accounts("add", "cli-alice").returncode == 0
    line = next(x for x in broker.passwords.read_text().splitlines() if x.startswith("cli-alice:"))
    assert line.split(":", 1)[1].startswith("$7$")
    assert verify_password(PASSWORD, line.split(":", 1)[1])
    assert not verify_password(PASSWORD + "x", line.split(":", 1)[1])
    assert stat.S_IMODE(broker.passwords.stat().st_mode) & 0o007 == 0
    # Our checker agrees with mosquitto_passwd's own hashes (same format both ways).
    tool = localservers.find_binary("mosquitto_passwd")
    if tool is not None:
        other = tmp_path / "pw"
        subprocess.run([tool, "-c", "-b", str(other), "bob", PASSWORD], check=True)
        assert verify_password(PASSWORD, other.read_text().strip().split(":", 1)[1])

    dup = broker.accounts("add", "cli-alice")
    assert dup.returncode == 1
    assert "already exists" in dup.stderr
    bad = broker.accounts("add", "no/slash")
    assert bad.returncode == 1
    assert "A-Z a-z 0-9 _ -" in bad.stderr
    unknown = broker.accounts("disable", "nobody-here", password=None)
    assert unknown.returncode == 1
    assert "unknown account 'nobody-here'" in unknown.stderr
    short = broker.accounts("add", "cli-bob", password="short")
    assert short.returncode == 1
    assert "too short" in short.stderr
    # A role account gets its ACL block; removing it takes the block away again.
    assert broker.accounts("add", "cli-rep", "--role", "reporter").returncode == 0
    assert "user cli-rep" in broker.acl.read_text()
    listing = broker.accounts("list", password=None).stdout
    assert "cli-alice\tvolunteer\tenabled" in listing
    assert "cli-rep\treporter\tenabled" in listing
    assert broker.accounts("remove", "cli-rep", password=None).returncode == 0
    assert "cli-rep" not in broker.acl.read_text()
    assert "cli-rep" not in broker.passwords.read_text()
    # The shipped rules themselves are untouched by the edits.
    assert broker.acl.read_text().startswith((SHIPPED / "acl").read_text())


def test_hash_format_matches_mosquitto_passwd() -> None:
    # A line written by mosquitto_passwd 2.0.11 (`-b pw alice s3cret`), and ours for the
    # same salt and count: the same bytes.
    theirs = (
        "$7$101$dzqDlaepQUhMdthT$VGX9k7YeNkuz77snzRsOY1RUZwj8u3vsYWclvnPHqr0kEggA4sfImh6znWjG"
        "vb9VnRCYt8EVr/36ZOpR5hSNyw=="
    )
    assert verify_password("s3cret", theirs)
    assert not verify_password("s3cret ", theirs)
    salt = base64.b64decode(theirs.split("$")[3])
    assert hash_password("s3cret", iterations=101, salt=salt) == theirs


def test_no_password_on_the_command_line(broker: SecureBroker) -> None:
    done = broker.accounts("add", "argv-v", "--password", "in-plain-sight", password=None)
    assert done.returncode == 2  # argparse: no such option
    assert "argv-v" not in broker.passwords.read_text()
    nowhere = broker.workdir / "missing" / "passwords"
    argv = [sys.executable, "-m", "dispatch", "accounts", "add", "v1", "--password-stdin"]
    argv += ["--file", str(nowhere), "--acl", str(broker.acl)]
    done = subprocess.run(argv, input=PASSWORD, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert f"no folder {nowhere.parent}" in done.stderr


# --------------------------------------------------------------------------- logging in


def test_anonymous_and_wrong_password_are_refused(broker: SecureBroker) -> None:
    broker.add("login-v")
    assert connect_code(broker.url("login-v")) == "Success"
    assert connect_code(broker.url()) == REFUSED
    assert connect_code(broker.url(), protocol=mqtt.MQTTv311) == REFUSED
    assert connect_code(broker.url("login-v", "wrong-password")) == REFUSED
    assert connect_code(broker.url("nobody", PASSWORD)) == REFUSED
    # The websockets listener (the volunteer web page) asks the same.
    assert connect_code(broker.url("login-v"), ws_port=broker.ws_port) == "Success"
    assert connect_code(broker.url(), ws_port=broker.ws_port) == REFUSED
    assert connect_code(broker.url("login-v", "wrong-password"), ws_port=broker.ws_port) == (
        REFUSED
    )


def test_a_disabled_volunteer_is_refused_and_can_be_enabled(broker: SecureBroker) -> None:
    broker.add("dis-v")
    assert connect_code(broker.url("dis-v")) == "Success"
    online = MqttClient(broker.url("dis-v"), name="online")
    try:
        done = broker.accounts("disable", "dis-v", "--reload", str(broker.pid_file), password=None)
        assert done.returncode == 0, done.stderr
        assert "#disabled dis-v:$7$" in broker.passwords.read_text()
        # The broker re-reads its files on SIGHUP, in its own time.
        assert eventually(lambda: connect_code(broker.url("dis-v")) == REFUSED)
        # A volunteer connected at that moment is cut off by the reload, too.
        assert eventually(lambda: not online.client.is_connected())
    finally:
        online.close()
    done = broker.accounts("enable", "dis-v", "--reload", str(broker.pid_file), password=None)
    assert done.returncode == 0, done.stderr
    # The same password again.
    assert eventually(lambda: connect_code(broker.url("dis-v")) == "Success")


# --------------------------------------------------------------------------- topics


def test_volunteer_b_neither_hears_nor_moves_volunteer_a(broker: SecureBroker) -> None:
    accounts = (("acl-a", "volunteer"), ("acl-b", "volunteer"), ("acl-b3", "volunteer"))
    for account, role in (*accounts, ("acl-eng", "engine")):
        broker.add(account, role)
    engine = MqttClient(broker.url("acl-eng"), name="engine")
    a = MqttClient(broker.url("acl-a"), name="a")
    b = MqttClient(broker.url("acl-b"), name="b")
    # B's MQTT 3.1.1 self is an account of its own: one connection per account.
    b311 = MqttClient(broker.url("acl-b3"), protocol=mqtt.MQTTv311, name="b311")
    try:
        everything = engine.subscribe(f"{ROOT}/#")
        a_alerts = a.subscribe(f"{ROOT}/volunteers/acl-a/alert")
        # B asks for everyone's alerts and assignments, and for everything.
        b_subs = [
            b.subscribe(f"{ROOT}/volunteers/+/alert"),
            b.subscribe(f"{ROOT}/volunteers/+/assignment"),
            b311.subscribe(f"{ROOT}/#"),
        ]
        for kind in ("alert", "assignment"):
            engine.publish(f"{ROOT}/volunteers/acl-a/{kind}", b'{"for": "a"}')
        engine.publish(f"{ROOT}/volunteers/acl-b/alert", b'{"for": "b"}')
        engine.publish(f"{ROOT}/incidents/acl-i/state", b'{"for": "reporters"}')
        a_alerts.wait_for(lambda m: m.payload == b'{"for": "a"}')
        b_subs[0].wait_for(lambda m: m.payload == b'{"for": "b"}')  # B's own does arrive
        time.sleep(QUIET)
        for sub in b_subs:
            leaked = [m for m in sub.all() if "acl-a/" in m.topic or "incidents" in m.topic]
            assert leaked == [], f"B received A's messages: {leaked}"

        # B tries to move A, answer for A and arrive for A: refused (MQTT 5 says so).
        for kind in ("location", "status", "reply", "arrived", "push"):
            topic = f"{ROOT}/volunteers/acl-a/{kind}"
            assert publish_code(b, topic, b'{"lat": 30.25, "lon": 120.16}') == "Not authorized"
            b311.publish(topic, b'{"lat": 30.25, "lon": 120.16}')  # 3.1.1: silently dropped
        # B may not report incidents nor write anything the engine publishes.
        for topic in (f"{ROOT}/incidents/report", f"{ROOT}/incidents/x/state", f"{ROOT}/rejected"):
            assert publish_code(b, topic, b"{}") == "Not authorized"
        # B's own push subscription (this project's addition) is allowed.
        assert publish_code(b, f"{ROOT}/volunteers/acl-b/push", b"{}") == "Success"
        # What B may do goes through, and lets us know the rest has been handled.
        sync(b, everything, f"{ROOT}/volunteers/acl-b/location")
        forged = [m for m in everything.all() if m.topic.startswith(f"{ROOT}/volunteers/acl-a/")]
        assert [m.topic for m in forged] == [
            f"{ROOT}/volunteers/acl-a/alert",
            f"{ROOT}/volunteers/acl-a/assignment",
        ], "a message B sent for A reached the engine's subscription"
        from_b = [m for m in everything.all() if m.topic.startswith(f"{ROOT}/incidents/")]
        assert [m.payload for m in from_b] == [b'{"for": "reporters"}'], "B wrote an incident"
    finally:
        for client in (b311, b, a, engine):
            client.close()


def test_role_accounts_keep_to_their_role(broker: SecureBroker) -> None:
    broker.add("rep-1", "reporter")
    broker.add("ops-1", "operator")
    broker.add("role-eng", "engine")
    engine = MqttClient(broker.url("role-eng"), name="engine")
    reporter = MqttClient(broker.url("rep-1"), name="reporter")
    operator = MqttClient(broker.url("ops-1"), name="operator")
    try:
        everything = engine.subscribe(f"{ROOT}/#")
        states = reporter.subscribe(f"{ROOT}/incidents/+/state")
        alerts = reporter.subscribe(f"{ROOT}/volunteers/#")
        seen_by_ops = operator.subscribe(f"{ROOT}/#")
        # A reporter reports and follows states, but is no volunteer, even under its own
        # name (the volunteer patterns apply to every username; its block denies them).
        assert publish_code(reporter, f"{ROOT}/incidents/report", b"{}") == "Success"
        for topic in ("volunteers/rep-1/status", "volunteers/rep-1/location", "rejected"):
            assert publish_code(reporter, f"{ROOT}/{topic}", b"{}") == "Not authorized"
        assert publish_code(operator, f"{ROOT}/volunteers/ops-1/status", b"{}") == "Not authorized"
        engine.publish(f"{ROOT}/volunteers/rep-1/alert", b"alert")
        engine.publish(f"{ROOT}/incidents/i-1/state", b"state")
        engine.publish(f"{ROOT}/rejected", b"rejected")
        states.wait_for(lambda m: m.payload == b"state")
        seen_by_ops.wait_for(lambda m: m.payload == b"rejected")
        sync(reporter, everything, f"{ROOT}/incidents/report")
        assert alerts.all() == []
        assert {m.topic for m in seen_by_ops.all()} == {
            f"{ROOT}/incidents/i-1/state",
            f"{ROOT}/rejected",
        }, "the operator reads incident states and rejections, nothing of volunteers"
        assert [m.topic for m in everything.all() if "rep-1" in m.topic] == [
            f"{ROOT}/volunteers/rep-1/alert"
        ]
    finally:
        for client in (operator, reporter, engine):
            client.close()
        engine.client.publish(f"{ROOT}/incidents/i-1/state", b"", retain=True)


# --------------------------------------------------------------------------- the engine


def test_the_engine_works_end_to_end_through_its_own_account(
    broker: SecureBroker, redis_url: str, tmp_path: Path
) -> None:
    broker.add("engine", "engine")
    broker.add("rep-e2e", "reporter")
    broker.add("vol-a", "volunteer")
    broker.add("vol-b", "volunteer")
    engine = Engine(
        mqtt_url=broker.url("engine", engine=True),
        redis_url=redis_url,
        topic_root=ROOT,
        log_path=tmp_path / "engine.log",
        token=TOKEN,
    )
    iid = uid("acl")
    with running(engine):
        a = MqttClient(broker.url("vol-a"), name="vol-a")
        b = MqttClient(broker.url("vol-b"), name="vol-b")
        reporter = MqttClient(broker.url("rep-e2e"), name="reporter")
        try:
            a_inbox = a.subscribe(f"{ROOT}/volunteers/vol-a/#")
            b_inbox = b.subscribe(f"{ROOT}/volunteers/+/alert")
            receipts = reporter.subscribe(f"{ROOT}/incidents/+/state")
            lat, lon = XIAOYING
            a.publish(
                f"{ROOT}/volunteers/vol-a/status",
                {"status": "available", "skills": ["first_aid"], "lat": lat + 0.001, "lon": lon},
            )
            reporter.publish(
                f"{ROOT}/incidents/report", {"id": iid, "kind": "medical", "lat": lat, "lon": lon}
            )
            receipts.wait_for(lambda m: m.topic == f"{ROOT}/incidents/{iid}/state")
            alert = a_inbox.wait_for(lambda m: m.topic.endswith("/alert")).json
            assert alert["incident_id"] == iid
            a.publish(
                f"{ROOT}/volunteers/vol-a/reply",
                {"alert_id": alert["alert_id"], "answer": "accept"},
            )
            go = a_inbox.wait_for(lambda m: m.topic.endswith("/assignment")).json
            assert (go["incident_id"], go["action"]) == (iid, "go")
            # B tries to arrive in A's name: the broker drops it.
            assert (
                publish_code(
                    b, f"{ROOT}/volunteers/vol-a/arrived", b'{"incident_id": "%s"}' % iid.encode()
                )
                == "Not authorized"
            )
            assert b_inbox.all() == [], "B received A's alert"
            state = engine.incident(iid)
            assert [r["volunteer_id"] for r in state["responders"]] == ["vol-a"]
            assert state["responders"][0]["arrived_at"] is None
            # The engine never logs its password (the harness's own start line aside).
            logged = [x for x in engine.log_path.read_text().splitlines() if x[:5] != "====="]
            assert not [x for x in logged if PASSWORD in x]
        finally:
            for client in (reporter, b, a):
                client.close()
            engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)


def test_only_gateways_publish_moves_and_a_gateway_works_through_its_account(
    broker: SecureBroker, redis_url: str, tmp_path: Path
) -> None:
    """Location gateways (docs/security.md): batches of moves on dispatch/internal/moves
    come from gateway accounts only; the engine applies them, and drops (and counts) a
    malformed one without answering it."""
    broker.add("engine-gw", "engine")
    broker.add("gw-acct", "gateway")
    broker.add("vol-gw", "volunteer")
    broker.add("rep-gw", "reporter")
    broker.add("ops-gw", "operator")
    engine = Engine(
        mqtt_url=broker.url("engine-gw", engine=True),
        redis_url=redis_url,
        topic_root=ROOT,
        log_path=tmp_path / "engine.log",
        env={"DISPATCH_GATEWAY_ENABLED": "true"},
        token=TOKEN,
    )
    gateway = GatewayProcess(
        engine, "acl", tmp_path / "gateway.log", mqtt_url=broker.url("gw-acct", engine=True)
    )
    moves = f"{ROOT}/internal/moves"
    iid = uid("aclgw")
    with running(engine):
        gateway.start()
        vol = MqttClient(broker.url("vol-gw"), name="vol-gw")
        rep = MqttClient(broker.url("rep-gw"), name="rep-gw")
        ops = MqttClient(broker.url("ops-gw"), name="ops-gw")
        gw = MqttClient(broker.url("gw-acct", engine=True), name="gw-acct")
        watcher = MqttClient(broker.url("engine-gw", engine=True), name="watcher")
        try:
            gateway.wait_connected()
            batches = watcher.subscribe(moves)
            rejected = watcher.subscribe(f"{ROOT}/rejected")
            inbox = vol.subscribe(f"{ROOT}/volunteers/vol-gw/#")
            lat, lon = XIAOYING
            vol.publish(
                f"{ROOT}/volunteers/vol-gw/status",
                {"status": "available", "skills": ["first_aid"], "lat": lat + 0.01, "lon": lon},
            )
            # A status and a location travel different paths with gateways on
            # (docs/deployment.md): a status handled after the move would put its own
            # position back, so the status goes first.
            assert eventually(lambda: engine.metric("dispatch_available_volunteers") == 1)
            # The location reaches the engine through the gateway's account.
            vol.publish(
                f"{ROOT}/volunteers/vol-gw/location", {"lat": lat + 0.0005, "lon": lon}, qos=0
            )
            batches.wait_for(lambda m: b"vol-gw" in m.payload, what="(the gateway's batch)")

            # A report may overtake a batch the engine has received but not yet applied
            # (reports first): wait until the map shows the gateway's position.
            def moved() -> bool:
                view = engine.get("/api/volunteers", token=TOKEN).json["volunteers"]
                return any(v["id"] == "vol-gw" and abs(v["lat"] - lat) < 0.003 for v in view)

            assert eventually(moved)
            rep.publish(
                f"{ROOT}/incidents/report", {"id": iid, "kind": "medical", "lat": lat, "lon": lon}
            )
            alert = inbox.wait_for(lambda m: m.topic.endswith("/alert")).json
            assert alert["distance_m"] < 100, alert  # the gateway's position, not the status's

            # Nobody else may hand the engine moves: a forged batch would place anyone.
            forged = b'[["vol-gw", 30.2591, 120.1698, null, 1.0]]'
            for client in (vol, rep, ops):
                assert publish_code(client, moves, forged) == "Not authorized"
            # A gateway account may not act as a volunteer either.
            assert publish_code(gw, f"{ROOT}/volunteers/gw-acct/status", b"{}") == (
                "Not authorized"
            )
            # What a gateway account sends is decoded all the same: malformed is dropped,
            # counted, never answered.
            before = engine.metric("dispatch_move_batches_total", outcome="malformed")
            assert publish_code(gw, moves, b'[["vol-gw", 91.5, 120.0, null, 1.0]]') == "Success"
            assert eventually(
                lambda: (
                    engine.metric("dispatch_move_batches_total", outcome="malformed") == before + 1
                )
            )
            time.sleep(QUIET)
            assert [m for m in rejected.all() if b"internal" in m.payload] == []
        finally:
            for client in (watcher, gw, ops, rep, vol):
                client.close()
            engine.post(f"/api/incidents/{iid}/cancel", token=TOKEN)
            assert gateway.stop() == 0
            gateway.ensure_dead()


# --------------------------------------------------------------------------- client ids


def _paho(url: str, client_id: str) -> mqtt.Client:
    """A connected paho client with exactly this client id (the harness picks its own)."""
    host, port = localservers.parse_mqtt_url(url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    user, _, password = url.split("//", 1)[1].split("@")[0].partition(":")
    client.username_pw_set(user, password)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: (
        connected.set() if not reason.is_failure else None
    )
    client.connect(host, port, keepalive=10)
    client.loop_start()
    assert connected.wait(5), f"{user} could not connect"
    return client


def test_no_account_can_take_over_another_clients_id(broker: SecureBroker) -> None:
    """Issue 18, item 6: a client id is tied to the username on the phones' listeners, so
    another account connecting with the same id does not push the first off the broker."""
    for account in ("cid-victim", "cid-attacker"):
        broker.add(account, "volunteer")
    broker.add("cid-engine", "engine")
    victim = _paho(broker.url("cid-victim"), "phone-of-victim")
    engine = _paho(broker.url("cid-engine", engine=True), "dispatch-engine-cid-test")
    attackers = []
    try:
        for stolen in ("phone-of-victim", "cid-victim", "dispatch-engine-cid-test"):
            attackers.append(_paho(broker.url("cid-attacker"), stolen))
        time.sleep(1.0)
        assert victim.is_connected(), "another account took over the victim's client id"
        assert engine.is_connected(), "a volunteer account took over the engine's client id"
    finally:
        for client in (*attackers, victim, engine):
            client.disconnect()
            client.loop_stop()


def test_account_names_cannot_take_the_engines_client_id_prefix(broker: SecureBroker) -> None:
    done = broker.accounts("add", "dispatch-engine-x", "--role", "volunteer", password=PASSWORD)
    assert done.returncode == 1
    assert "dispatch-" in done.stderr


def test_a_pusher_account_reads_the_alerts_and_nothing_else(broker: SecureBroker) -> None:
    """Push workers (docs/security.md): a pusher account reads every alert through the
    pushers' shared subscription, and nothing else of volunteers or incidents; it may
    publish nothing."""
    broker.add("push-acct", "pusher")
    broker.add("push-eng", "engine")
    engine = MqttClient(broker.url("push-eng"), name="engine")
    pusher = MqttClient(broker.url("push-acct", engine=True), name="dispatch-pusher-t")
    try:
        alerts = pusher.subscribe(f"$share/pushers/{ROOT}/volunteers/+/alert")
        others = pusher.subscribe(f"{ROOT}/volunteers/+/location")
        states = pusher.subscribe(f"{ROOT}/incidents/+/state")
        engine.publish(f"{ROOT}/volunteers/vol-x/location", b"location")
        engine.publish(f"{ROOT}/incidents/i-p/state", b"state")
        engine.publish(f"{ROOT}/volunteers/vol-x/alert", b"alert")
        alerts.wait_for(lambda m: m.payload == b"alert", what="(the alert)")
        time.sleep(QUIET)
        assert others.all() == []
        assert states.all() == []
        for topic in (
            "incidents/report",
            "volunteers/vol-x/status",
            "volunteers/push-acct/status",
            "internal/moves",
            "rejected",
            "volunteers/vol-x/alert",
        ):
            assert publish_code(pusher, f"{ROOT}/{topic}", b"{}") == "Not authorized", topic
    finally:
        for client in (pusher, engine):
            client.close()
        engine.client.publish(f"{ROOT}/incidents/i-p/state", b"", retain=True)
