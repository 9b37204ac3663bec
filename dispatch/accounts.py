"""Broker accounts: the Mosquitto password file and the ACL user blocks, kept by the CLI.

``dispatch accounts add|disable|enable|remove|list`` (see dispatch/cli.py) edits the files
that config/mosquitto/mosquitto.conf names. Not part of the engine: the engine never
imports this module.

Password file: one ``username:$7$ITERATIONS$SALT$HASH`` line per account, Mosquitto 2's
PBKDF2-HMAC-SHA512 format (12-byte salt and 64-byte hash, both standard base64), the
same as ``mosquitto_passwd`` writes, so hashlib makes it and no binary is needed. A
disabled account's line is kept behind ``#disabled `` (Mosquitto skips comment lines),
so ``enable`` restores the same password.

ACL file: volunteers need nothing of their own (the shipped ``pattern`` lines cover
every username). Engine, reporter and operator accounts get a ``user`` block, written
between a marker comment and a blank line so it can be found and removed again.

Both files are replaced atomically (a temporary file in the same folder, then rename),
never readable by others, and changed under an exclusive lock. Mosquitto reads them
only at start and on SIGHUP: reload it afterwards (``--reload PIDFILE`` does that).

Errors::

    AccountError          a request that cannot be carried out: the message says why
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import getpass
import hashlib
import hmac
import os
import re
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_ACL_FILE",
    "DEFAULT_PASSWORD_FILE",
    "ITERATIONS",
    "ROLES",
    "Account",
    "AccountError",
    "Accounts",
    "acl_block",
    "add_arguments",
    "check_id",
    "hash_password",
    "main",
    "reload_broker",
    "verify_password",
]

DEFAULT_PASSWORD_FILE = Path("/etc/mosquitto/dispatch/passwords")
DEFAULT_ACL_FILE = Path("/etc/mosquitto/dispatch/acl")
ROLES = ("volunteer", "reporter", "operator", "engine", "gateway", "pusher")
# mosquitto_passwd 2.0 uses 101; more costs an attacker with a stolen file more. The
# broker reads the count from each line and verifies at every connect (~1 ms here).
ITERATIONS = 1000
SALT_BYTES = 12  # as mosquitto_passwd
MIN_PASSWORD = 8
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DISABLED = "#disabled "
_MARK = "# dispatch-account "  # + "<id> role=<role>" on the line before a user block


class AccountError(Exception):
    """A request that cannot be carried out; the message says what to fix."""


RESERVED_PREFIX = "dispatch-"


def check_id(account_id: str) -> str:
    """The id itself if it follows the protocol's id rule (it is the MQTT username)."""
    if not _ID.fullmatch(account_id):
        raise AccountError(
            f"bad account id {account_id!r}: use 1-64 characters of A-Z a-z 0-9 _ - "
            "(the protocol's volunteer id rule; it is the MQTT username)"
        )
    return account_id


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """Mosquitto's ``$7$`` PBKDF2-HMAC-SHA512 hash of ``password``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (as Mosquitto checks it)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[:2] != ["", "7"] or not parts[2].isdigit():
        return False
    salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(mine, digest)


def check_password(password: str) -> str:
    if "\n" in password or "\r" in password or "\0" in password:
        raise AccountError("the password must be one line without NUL characters")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    return password


def acl_block(account_id: str, role: str, root: str = "dispatch") -> list[str]:
    """The ACL lines of a role account (none for a volunteer: the patterns cover it)."""
    if role == "volunteer":
        return []
    if role == "engine":
        topics = [f"topic readwrite {root}/#"]
    elif role == "reporter":
        topics = [f"topic write {root}/incidents/report", f"topic read {root}/incidents/+/state"]
    elif role == "operator":
        # The control room: reports by phone, follows incidents and what was rejected.
        topics = [
            f"topic write {root}/incidents/report",
            f"topic read {root}/incidents/+/state",
            f"topic read {root}/rejected",
        ]
    elif role == "gateway":
        # A location gateway (dispatch/gateway.py): reads every location (through a shared
        # subscription), answers bad ones on rejected, and is the only role besides the
        # engine that may publish batches of moves, which the engine takes as validated.
        topics = [
            f"topic read {root}/volunteers/+/location",
            f"topic write {root}/internal/moves",
            f"topic write {root}/rejected",
        ]
    elif role == "pusher":
        # A push worker (dispatch/push_worker.py): reads every alert (through a shared
        # subscription) to push it to the volunteer's browsers; publishes nothing.
        topics = [f"topic read {root}/volunteers/+/alert"]
    else:
        raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    # The volunteer patterns apply to every username; a role account is no volunteer.
    deny = [] if role == "engine" else [f"topic deny {root}/volunteers/{account_id}/#"]
    return [f"{_MARK}{account_id} role={role}", f"user {account_id}", *deny, *topics]


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    role: str
    enabled: bool


@dataclass
class _Entry:
    id: str
    hash: str
    enabled: bool


class Accounts:
    """The password file and the ACL file of one broker, edited together."""

    def __init__(
        self,
        password_file: Path = DEFAULT_PASSWORD_FILE,
        acl_file: Path | None = DEFAULT_ACL_FILE,
        *,
        topic_root: str = "dispatch",
    ) -> None:
        self.password_file = Path(password_file)
        self.acl_file = None if acl_file is None else Path(acl_file)
        if not re.fullmatch(r"[^/+#\s]+", topic_root):
            raise AccountError(f"bad topic root {topic_root!r}: one topic level, no + # or /")
        self.topic_root = topic_root

    # ------------------------------------------------------------------ commands

    def add(self, account_id: str, password: str, role: str = "volunteer") -> None:
        check_id(account_id)
        if account_id.startswith(RESERVED_PREFIX):
            # On the phones' listeners a client id is the username (mosquitto.conf): an
            # account called dispatch-engine-... could push the engine off the broker.
            raise AccountError(
                f"bad account id {account_id!r}: ids starting with {RESERVED_PREFIX!r} are "
                "kept for the engine's own connections; choose another"
            )
        check_password(password)
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        with self._locked():
            lines, entries = self._read_passwords()
            if account_id in entries:
                state = "" if entries[account_id].enabled else " (disabled: use enable)"
                raise AccountError(f"account {account_id!r} already exists{state}")
            block = acl_block(account_id, role, self.topic_root)
            if block:
                self._edit_acl(account_id, block)
            lines.append(f"{account_id}:{hash_password(password)}")
            _write_atomic(self.password_file, lines)

    def set_enabled(self, account_id: str, enabled: bool) -> bool:
        """Disable or enable; False if it already was so."""
        check_id(account_id)
        with self._locked():
            lines, entries = self._read_passwords()
            entry = self._known(entries, account_id)
            if entry.enabled == enabled:
                return False
            line = f"{account_id}:{entry.hash}"
            old, new = (_DISABLED + line, line) if enabled else (line, _DISABLED + line)
            _write_atomic(self.password_file, [new if x == old else x for x in lines])
            return True

    def remove(self, account_id: str) -> None:
        check_id(account_id)
        with self._locked():
            lines, entries = self._read_passwords()
            self._known(entries, account_id)
            kept = [x for x in lines if getattr(_parse(x), "id", None) != account_id]
            if self.acl_file is not None and self.acl_file.exists():
                self._edit_acl(account_id, [])
            _write_atomic(self.password_file, kept)

    def accounts(self) -> list[Account]:
        _, entries = self._read_passwords()
        roles = self._roles()
        return [Account(e.id, roles.get(e.id, "volunteer"), e.enabled) for e in entries.values()]

    # ------------------------------------------------------------------ files

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        folder = self.password_file.parent
        if not folder.is_dir():
            raise AccountError(f"no folder {folder} for the password file: create it first")
        lock_path = folder / f".{self.password_file.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_passwords(self) -> tuple[list[str], dict[str, _Entry]]:
        try:
            text = self.password_file.read_text()
        except FileNotFoundError:
            return [], {}
        except OSError as exc:
            raise AccountError(f"cannot read {self.password_file}: {exc.strerror}") from exc
        lines = text.splitlines()
        entries: dict[str, _Entry] = {}
        for line in lines:
            entry = _parse(line)
            if entry is not None:
                entries[entry.id] = entry
        return lines, entries

    def _known(self, entries: dict[str, _Entry], account_id: str) -> _Entry:
        if account_id not in entries:
            raise AccountError(f"unknown account {account_id!r} in {self.password_file}")
        return entries[account_id]

    def _roles(self) -> dict[str, str]:
        if self.acl_file is None or not self.acl_file.exists():
            return {}
        roles = {}
        for line in self.acl_file.read_text().splitlines():
            if line.startswith(_MARK):
                account_id, _, role = line[len(_MARK) :].partition(" role=")
                roles[account_id] = role
        return roles

    def _edit_acl(self, account_id: str, block: list[str]) -> None:
        """Replace ``account_id``'s block (if any) with ``block`` ([] removes it)."""
        if self.acl_file is None:
            if block:
                raise AccountError("a role account needs the ACL file: give --acl")
            return
        try:
            lines = self.acl_file.read_text().splitlines()
        except FileNotFoundError:
            raise AccountError(
                f"no ACL file {self.acl_file}: install config/mosquitto/acl there first"
            ) from None
        out: list[str] = []
        skipping = False
        for line in lines:
            if line == f"{_MARK}{account_id}" or line.startswith(f"{_MARK}{account_id} "):
                skipping = True
            elif skipping and not line.strip():
                skipping = False
                continue
            if not skipping:
                out.append(line)
        if block:
            while out and not out[-1].strip():
                out.pop()
            out += ["", *block, ""]
        _write_atomic(self.acl_file, out)


def _parse(line: str) -> _Entry | None:
    enabled = not line.startswith(_DISABLED)
    body = line if enabled else line[len(_DISABLED) :]
    if body.startswith("#") or ":" not in body:
        return None
    account_id, _, encoded = body.partition(":")
    return _Entry(account_id, encoded, enabled)


def _write_atomic(path: Path, lines: list[str]) -> None:
    """Write via a temporary file and rename; keep the owner, never readable by others."""
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    mode = 0o600 if st is None else (st.st_mode & 0o770)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n" if lines else "")
            f.flush()
            os.fchmod(f.fileno(), mode)
            if st is not None and os.geteuid() == 0:
                # root editing the broker's files must leave them readable to the broker.
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reload_broker(pid_file: Path) -> int:
    """SIGHUP the broker whose pid is in ``pid_file`` (it re-reads passwords and ACLs)."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError) as exc:
        raise AccountError(f"cannot read a process id from {pid_file}: {exc}") from exc
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise AccountError(f"cannot signal mosquitto (pid {pid}): {exc.strerror}") from exc
    return pid


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dispatch accounts`` subcommands."""
    parser.add_argument(
        "action", choices=["add", "disable", "enable", "remove", "list"], help="what to do"
    )
    parser.add_argument("id", nargs="?", help="the account (for a volunteer: its volunteer id)")
    parser.add_argument(
        "--file",
        type=Path,
        default=DEFAULT_PASSWORD_FILE,
        help=f"Mosquitto password file (default {DEFAULT_PASSWORD_FILE})",
    )
    parser.add_argument(
        "--acl",
        type=Path,
        default=DEFAULT_ACL_FILE,
        help=f"Mosquitto ACL file, started from config/mosquitto/acl (default {DEFAULT_ACL_FILE})",
    )
    parser.add_argument(
        "--role", choices=ROLES, default="volunteer", help="for add (default volunteer)"
    )
    parser.add_argument(
        "--topic-root", default="dispatch", help="for a role account's ACL (default dispatch)"
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    secret.add_argument(
        "--generate", action="store_true", help="make a random password and print it once"
    )
    parser.add_argument(
        "--reload", metavar="PIDFILE", type=Path, help="SIGHUP the broker in PIDFILE afterwards"
    )


def _read_password(args: argparse.Namespace) -> str:
    if args.generate:
        return secrets.token_urlsafe(18)  # printed once the account exists
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise AccountError("no terminal to ask for a password: use --password-stdin or --generate")
    first = getpass.getpass(f"password for {args.id}: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def main(args: argparse.Namespace) -> int:
    """Run one ``dispatch accounts`` command; 0 on success, 1 with a message on error."""
    try:
        accounts = Accounts(args.file, args.acl, topic_root=args.topic_root)
        if args.action == "list":
            for account in accounts.accounts():
                state = "enabled" if account.enabled else "disabled"
                print(f"{account.id}\t{account.role}\t{state}")
            return 0
        if args.id is None:
            raise AccountError(f"accounts {args.action} needs an account id")
        check_id(args.id)
        if args.action == "add":
            password = _read_password(args)
            accounts.add(args.id, password, args.role)
            if args.generate:
                print(f"password for {args.id}: {password}")
            done = f"added {args.role} {args.id}"
        elif args.action == "remove":
            accounts.remove(args.id)
            done = f"removed {args.id}"
        else:
            enabled = args.action == "enable"
            changed = accounts.set_enabled(args.id, enabled)
            done = (
                f"{args.action}d {args.id}" if changed else f"{args.id} was already {args.action}d"
            )
        if args.reload is not None:
            pid = reload_broker(args.reload)
            print(f"{done}; mosquitto (pid {pid}) reloaded")
        else:
            print(f"{done}; reload mosquitto to apply (systemctl reload mosquitto, or SIGHUP)")
        return 0
    except AccountError as exc:
        print(f"dispatch accounts: {exc}", file=sys.stderr)
        return 1
