"""Configuration: one typed, frozen object from defaults, a TOML file, the environment and flags.

Precedence, lowest first: the defaults below (``config/default.toml`` documents every key
and a test keeps the two equal), the ``--config`` file, environment variables, command-line
flags. The environment is passed in as a mapping; nothing here reads ``os.environ``.

Environment names: ``DISPATCH_<KEY>`` for the ``[engine]`` keys (``DISPATCH_MQTT``,
``DISPATCH_REDIS``, ``DISPATCH_HTTP``, ``DISPATCH_TOPIC_ROOT`` ...), and
``DISPATCH_<SECTION>_<KEY>`` for the others (``DISPATCH_POLICY_TARGET_S``,
``DISPATCH_HTTP_OPERATOR_TOKEN``). The ``[kinds.*]`` tables are set in the file only.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from dispatch.errors import ConfigError
from dispatch.model import Kind, Mode
from dispatch.policy import FIELD_RULES, Policy, Strategy, check_field
from geo.area import ServiceArea
from geo.gazetteer import Gazetteer
from geo.subdistricts import Subdistricts
from geo.travel import TravelModel

__all__ = [
    "CONFIG_DIR",
    "DEFAULTS",
    "NOT_CONFIG_VARIABLES",
    "Config",
    "KindDefaults",
    "is_loopback",
    "load_config",
]

# The repository's config/ folder: the default service area and the documented defaults.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@dataclass(frozen=True, slots=True)
class KindDefaults:
    priority: int
    skills: tuple[str, ...]


def _kind_table(pairs: dict[Kind, tuple[int, tuple[str, ...]]]) -> dict[str, dict[str, Any]]:
    return {str(k): {"priority": p, "skills": list(s)} for k, (p, s) in pairs.items()}


@dataclass(frozen=True, slots=True)
class Config:
    mqtt_url: str
    redis_url: str
    http_host: str
    http_port: int
    topic_root: str
    mqtt_protocol: int
    instance: str
    log_level: str
    area_geojson: Path
    area_name: str
    cell_size_m: float
    policy: Policy
    travel: TravelModel
    location_ttl_s: float
    state_retention_s: float
    idempotency_ttl_s: float
    max_payload_bytes: int
    future_tolerance_s: float
    event_log_max: int
    operator_token: str
    read_token: str
    # [http] hardening (docs/security.md): who may read, which Host names are served, how
    # many event streams at once, how long a client may take to send its headers.
    open_reads: bool = False
    allowed_hosts: tuple[str, ...] = ("localhost",)
    max_event_listeners: int = 100
    header_timeout_s: float = 10.0
    heavy_reads_per_s: float = 5.0
    # [backends]: how fast a dead or hung broker / Redis is noticed (docs/reliability.md).
    mqtt_keepalive_s: int = 15
    redis_timeout_s: float = 5.0
    redis_health_check_s: int = 10
    # [cluster]: several engine instances sharing the work (dispatch/cluster.py).
    cluster_enabled: bool = False
    cluster_lease_s: float = 5.0
    cluster_reclaim_idle_s: float = 5.0
    # [postgres]: the archive of ended incidents and the reports (docs/reports.md); no
    # URL: no archive, and reports answer from what Redis still holds.
    postgres_url: str = ""
    postgres_timeout_s: float = 5.0
    postgres_retry_s: float = 2.0
    postgres_batch: int = 200
    postgres_metrics_http: str = ""  # `dispatch archive` alone: where its /metrics is
    # [volunteer_app]: how the volunteer page (/volunteer) reaches the broker's websockets.
    volunteer_ws_url: str = ""
    volunteer_ws_port: int = 9001
    volunteer_open_broker: bool = False
    # [push]: Web Push of alerts to the volunteer page (dispatch/push.py, docs/volunteer.md).
    push_enabled: bool = True
    push_contact: str = "mailto:dispatch@example.org"
    push_vapid_key_file: str = ""
    push_allow_loopback: bool = False
    push_services: tuple[str, ...] = ()
    push_max_per_volunteer: int = 5
    push_queue: int = 1000
    push_workers: int = 4
    push_timeout_s: float = 5.0
    # separate: the engine leaves the pushing to `dispatch pusher` processes
    # (dispatch/push_worker.py), which share its alerts through this group.
    push_separate: bool = False
    push_group: str = "pushers"
    push_metrics_http: str = ""  # `dispatch pusher`: where its /metrics is ("": none)
    # [gateway]: location gateways (dispatch/gateway.py, docs/deployment.md). enabled: the
    # engine takes locations as batches of moves from gateways instead of reading them.
    gateway_enabled: bool = False
    gateway_group: str = "gateways"
    gateway_flush_s: float = 0.025
    gateway_max_moves: int = 250
    gateway_metrics_http: str = ""  # `dispatch gateway`: where its /metrics is ("": none)
    kinds: Mapping[Kind, KindDefaults] = field(default_factory=lambda: MappingProxyType({}))
    # [area] subdistricts: the deployment's own subdistrict areas (geo.subdistricts); None:
    # none, and reports by subdistrict say so. subdistrict_name: their name property.
    area_subdistricts: Path | None = None
    subdistrict_name: str = "name"
    # [area] gazetteer: named places to report by and to show on the map (geo.gazetteer);
    # None: none. Checked when the configuration is loaded.
    area_gazetteer: Path | None = None
    # [control_room] phone: the number the volunteer page's call button dials; "": no button.
    control_room_phone: str = ""
    # [map]: the deployment's own base map tiles for the control room (docs/control-room.md).
    map_tile_url: str = ""
    map_tile_attribution: str = ""
    map_tile_max_zoom: int = 18

    def kind_defaults(self, kind: Kind) -> KindDefaults:
        return self.kinds[kind]


# ---- checks: each returns the cleaned value or raises ValueError("allowed: ...")


def _subdistricts(area: Mapping[str, Any], base_dir: Path) -> Path | None:
    """The subdistricts file, checked now: a bad one stops start-up saying what is wrong."""
    if not area["subdistricts"]:
        return None
    path = Path(area["subdistricts"])
    if not path.is_absolute():
        path = base_dir / path
        if not path.exists():
            path = CONFIG_DIR / area["subdistricts"]
    try:
        Subdistricts.from_geojson(path, name_property=area["subdistrict_name"])
    except ValueError as exc:
        raise ConfigError(
            "area.subdistricts",
            area["subdistricts"],
            f"a GeoJSON FeatureCollection of Polygon/MultiPolygon features, each with a "
            f"'{area['subdistrict_name']}' property (area.subdistrict_name): {exc}",
        ) from None
    return path


def _config_path(name: str, base_dir: Path) -> Path:
    """A file named in the configuration: relative to the configuration file's folder,
    then to the project's config/ folder."""
    path = Path(name)
    if not path.is_absolute():
        path = base_dir / path
        if not path.exists():
            path = CONFIG_DIR / name
    return path


def _gazetteer(area: Mapping[str, Any], geojson: Path, base_dir: Path) -> Path | None:
    """The gazetteer file, checked now: a bad line stops start-up saying which and why."""
    if not area["gazetteer"]:
        return None
    path = _config_path(area["gazetteer"], base_dir)
    what = "a CSV file with the header name,lat,lon (optional columns name_en, rank)"
    try:
        gazetteer = Gazetteer.from_csv(path)
    except ValueError as exc:
        raise ConfigError("area.gazetteer", area["gazetteer"], f"{what}: {exc}") from None
    try:
        # Only the outline is wanted here: large cells keep the check cheap.
        outline = ServiceArea.from_geojson(geojson, cell_size_m=10_000.0)
    except ValueError:
        return path  # a bad outline is reported where the area is loaded
    try:
        gazetteer.check(outline.contains, source=str(path), area=area["name"])
    except ValueError as exc:
        raise ConfigError("area.gazetteer", area["gazetteer"], f"{what}: {exc}") from None
    return path


def _phone(value: Any) -> str:
    # Dialled from a tel: link: digits with an optional leading +, and the usual separators.
    if not isinstance(value, str) or (
        value and not re.fullmatch(r"\+?[0-9][0-9 ()\-]{1,30}", value.strip())
    ):
        raise ValueError(
            'a telephone number: digits, optionally a leading + and spaces, "-" or '
            '"()" between them (at most 32 characters), e.g. "0571-87000000"; "": none'
        )
    return value.strip()


def _tile_url(value: Any) -> str:
    if value == "":
        return ""
    # A path on the page's own server ("/tiles/{z}/{x}/{y}.png" behind the same proxy), or
    # a URL of a tile server of the deployment's own.
    local = isinstance(value, str) and value.startswith("/") and not value.startswith("//")
    if not local and (
        not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https")
    ):
        raise ValueError(
            "an http:// or https:// URL template (or a path starting with /) with {z}, {x} "
            'and {y}, e.g. "http://127.0.0.1:8081/tiles/{z}/{x}/{y}.png"; "": no base map'
        )
    if not all(f"{{{p}}}" in value for p in "zxy") or len(value) > 500:
        raise ValueError("a URL template of at most 500 characters naming {z}, {x} and {y}")
    if any(c in value for c in "\"'<> \t\n"):
        raise ValueError("a URL without quotes, spaces or angle brackets")
    return str(value)


def _short_text(limit: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"a string of at most {limit} characters")
        if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
            raise ValueError("a string without control characters")
        return value

    return check


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("a number greater than 0")
    if not math.isfinite(value):
        raise ValueError("a finite number")
    return float(value)


def _non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError("a number of at least 0")
    if not math.isfinite(value):
        raise ValueError("a finite number")
    return float(value)


def _factor(value: Any) -> float:
    if _positive(value) < 1:
        raise ValueError("a factor of at least 1")
    return float(value)


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return value

    return check


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError("a number strictly between 0 and 1")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _url(*schemes: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or urlsplit(value).scheme not in schemes:
            raise ValueError(f"a URL starting with {' or '.join(s + '://' for s in schemes)}")
        if urlsplit(value).hostname is None:
            raise ValueError("a URL with a host")
        return value

    return check


def _host_port(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("HOST:PORT, for example 127.0.0.1:8080")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("HOST:PORT with a port from 0 to 65535")
    return value


def _metrics_address(value: Any) -> str:
    """Where a process of its own serves /metrics and /healthz; "" for nowhere."""
    if value == "":
        return ""
    try:
        address = _host_port(value)
    except ValueError:
        raise ValueError(
            'HOST:PORT to serve /metrics and /healthz on, for example "127.0.0.1:9109", '
            'or "" for none (flag --metrics-http)'
        ) from None
    if address.rpartition(":")[2].lstrip("0") == "":
        raise ValueError("a port from 1 to 65535: Prometheus must know where to scrape")
    return address


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError("one of " + ", ".join(repr(a) for a in allowed))
        return str(value)

    return check


def _topic_root(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "+#\0")
        or value[0] == "/"
    ):
        raise ValueError("a non-empty MQTT topic prefix without '+', '#' or a leading '/'")
    return value.rstrip("/")


def _contact(value: Any) -> str:
    # The VAPID "sub" claim: push services contact the sender there (RFC 8292, 2.1).
    if not isinstance(value, str) or not re.fullmatch(r"mailto:[^\s@]+@[^\s@]+|https://\S+", value):
        raise ValueError("a 'mailto:' address or an 'https://' URL, e.g. mailto:ops@example.org")
    return value


def _skills(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ValueError("a list of non-empty strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key, declared once: its section and name (``[section] name`` in
    the file, ``env_name`` in the environment), its default, its check, and the Config
    attribute it fills (None: built from several keys in ``_build``)."""

    section: str
    name: str
    default: Any
    check: Callable[[Any], Any]
    field: str | None = None


def _policy(name: str) -> Key:
    """A [policy] key: its default and its rule are Policy's own (dispatch/policy.py)."""
    default = Policy.__dataclass_fields__[name].default
    if isinstance(default, Strategy):
        default = default.value
    return Key("policy", name, default, lambda v: check_field(name, v))


# The browsers' push services (host names; their subdomains too): a subscription may
# only make the engine post there, never to a host of the operator's own network.
PUSH_SERVICES = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Samsung Internet, Opera
    "push.services.mozilla.com",  # Firefox
    "push.apple.com",  # Safari, iOS home-screen apps
    "notify.windows.com",  # Edge on Windows
)

# Every key. config/default.toml documents each one, and a test keeps the two equal.
KEYS: tuple[Key, ...] = (
    Key("engine", "mqtt", "mqtt://127.0.0.1:1883", _url("mqtt", "tcp"), "mqtt_url"),
    Key(
        "engine", "redis", "redis://127.0.0.1:6379/0", _url("redis", "rediss", "unix"), "redis_url"
    ),
    Key("engine", "http", "127.0.0.1:8080", _host_port),
    Key("engine", "topic_root", "dispatch", _topic_root, "topic_root"),
    Key("engine", "mqtt_protocol", 5, lambda v: int(_choice("3", "5")(str(v))), "mqtt_protocol"),
    Key("engine", "instance", "", _text, "instance"),
    Key("engine", "log_level", "info", _choice("debug", "info", "warning", "error"), "log_level"),
    Key("area", "geojson", "shangcheng_boundary_wgs84.geojson", _text),
    Key("area", "name", "上城区 Shangcheng district", _text, "area_name"),
    Key("area", "cell_size_m", 500.0, _positive, "cell_size_m"),
    Key("area", "subdistricts", "", _text),
    Key("area", "subdistrict_name", "name", _text, "subdistrict_name"),
    Key("area", "gazetteer", "", _text),
    Key("control_room", "phone", "", _phone, "control_room_phone"),
    Key("map", "tile_url", "", _tile_url, "map_tile_url"),
    Key("map", "tile_attribution", "", _short_text(200), "map_tile_attribution"),
    Key("map", "tile_max_zoom", 18, _int_range(1, 22), "map_tile_max_zoom"),
    *(_policy(name) for name in FIELD_RULES),
    Key("travel", "circuity", 1.3, lambda v: _at_least_one(v)),
    Key("travel", "walk_mps", 1.8, _positive),
    Key("travel", "bike_mps", 4.0, _positive),
    Key("travel", "ebike_mps", 5.5, _positive),
    Key("volunteers", "location_ttl_s", 300.0, _positive, "location_ttl_s"),
    Key("incidents", "state_retention_s", 3600.0, _positive, "state_retention_s"),
    Key("incidents", "idempotency_ttl_s", 604800.0, _positive, "idempotency_ttl_s"),
    Key("incidents", "max_payload_bytes", 16384, _int_range(256, 1 << 20), "max_payload_bytes"),
    Key("incidents", "future_tolerance_s", 30.0, _positive, "future_tolerance_s"),
    Key("incidents", "event_log_max", 1_000_000, _int_range(1000, 1 << 31), "event_log_max"),
    Key("http", "operator_token", "", _text, "operator_token"),
    Key("http", "read_token", "", _text, "read_token"),
    Key("http", "open_reads", False, lambda v: _flag(v), "open_reads"),
    Key("http", "allowed_hosts", ["localhost"], lambda v: _host_names(v), "allowed_hosts"),
    Key("http", "max_event_listeners", 100, _int_range(1, 10_000), "max_event_listeners"),
    Key("http", "header_timeout_s", 10.0, _positive, "header_timeout_s"),
    Key("http", "heavy_reads_per_s", 5.0, _positive, "heavy_reads_per_s"),
    Key(
        "volunteer_app",
        "mqtt_ws_url",
        "",
        lambda v: v if v == "" else _url("ws", "wss")(v),
        "volunteer_ws_url",
    ),
    Key("volunteer_app", "mqtt_ws_port", 9001, _int_range(1, 65535), "volunteer_ws_port"),
    Key("volunteer_app", "open_broker", False, lambda v: _flag(v), "volunteer_open_broker"),
    Key("push", "enabled", True, lambda v: _flag(v), "push_enabled"),
    Key("push", "contact", "mailto:dispatch@example.org", lambda v: _contact(v), "push_contact"),
    Key("push", "vapid_key_file", "", _text, "push_vapid_key_file"),
    Key("push", "allow_loopback", False, lambda v: _flag(v), "push_allow_loopback"),
    Key("push", "services", list(PUSH_SERVICES), lambda v: _host_names(v), "push_services"),
    Key("push", "max_per_volunteer", 5, _int_range(1, 20), "push_max_per_volunteer"),
    Key("push", "queue", 1000, _int_range(1, 100_000), "push_queue"),
    Key("push", "workers", 4, _int_range(1, 64), "push_workers"),
    Key("push", "timeout_s", 5.0, _positive, "push_timeout_s"),
    Key("push", "separate", False, lambda v: _flag(v), "push_separate"),
    Key("push", "group", "pushers", lambda v: _share_group(v), "push_group"),
    Key("push", "metrics_http", "", lambda v: _metrics_address(v), "push_metrics_http"),
    Key("backends", "mqtt_keepalive_s", 15, _int_range(1, 3600), "mqtt_keepalive_s"),
    Key("backends", "redis_timeout_s", 5.0, _positive, "redis_timeout_s"),
    Key("backends", "redis_health_check_s", 10, _int_range(0, 3600), "redis_health_check_s"),
    Key("gateway", "enabled", False, lambda v: _flag(v), "gateway_enabled"),
    Key("gateway", "group", "gateways", lambda v: _share_group(v), "gateway_group"),
    Key("gateway", "flush_s", 0.025, lambda v: _float_range(0.001, 1.0)(v), "gateway_flush_s"),
    Key("gateway", "max_moves", 250, _int_range(1, 350), "gateway_max_moves"),
    Key("gateway", "metrics_http", "", lambda v: _metrics_address(v), "gateway_metrics_http"),
    Key("cluster", "enabled", False, lambda v: _flag(v), "cluster_enabled"),
    Key("cluster", "lease_s", 5.0, _positive, "cluster_lease_s"),
    Key("cluster", "reclaim_idle_s", 5.0, _positive, "cluster_reclaim_idle_s"),
    Key(
        "postgres",
        "url",
        "",
        lambda v: v if v == "" else _url("postgresql", "postgres")(v),
        "postgres_url",
    ),
    Key("postgres", "timeout_s", 5.0, _positive, "postgres_timeout_s"),
    Key("postgres", "retry_s", 2.0, _positive, "postgres_retry_s"),
    Key("postgres", "batch", 200, _int_range(1, 10_000), "postgres_batch"),
    Key("postgres", "metrics_http", "", lambda v: _metrics_address(v), "postgres_metrics_http"),
)

_KINDS = _kind_table(
    {
        Kind.CARDIAC_ARREST: (1, ("first_aid",)),
        Kind.MEDICAL: (1, ("first_aid",)),
        Kind.FIRE: (1, ()),
        Kind.FALL: (2, ("first_aid",)),
        Kind.LOST_PERSON: (2, ()),
        Kind.SECURITY: (2, ("patrol",)),
        Kind.DISPUTE: (3, ("mediation",)),
        Kind.OTHER: (3, ()),
    }
)


def _sections() -> dict[str, dict[str, Key]]:
    out: dict[str, dict[str, Key]] = {}
    for key in KEYS:
        out.setdefault(key.section, {})[key.name] = key
    return out


_BY_SECTION = _sections()

# Every key with its default, by section (the [kinds.*] tables too): what the file
# overrides. Sections become TOML tables.
DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        **{s: {k: key.default for k, key in keys.items()} for s, keys in _BY_SECTION.items()},
        "kinds": _KINDS,
    }
)


def _host_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(h, str) and _HOST_NAME.fullmatch(h) for h in value
    ):
        raise ValueError(
            "a list of host names (letters, digits, '-' and '.'), e.g. [\"localhost\"]"
        )
    return tuple(h.lower().rstrip(".") for h in value)


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9.])?")

# Variables with the DISPATCH_ prefix that are not configuration keys: read by the CLI,
# the tools and the tests themselves. Any other DISPATCH_* name must be a key
# (env_name), or start-up stops and names it: a misspelling never passes silently.
NOT_CONFIG_VARIABLES = frozenset(
    {
        "DISPATCH_CONFIG",  # the --config file (dispatch/cli.py, simulators/simulate.py)
        "DISPATCH_VOLUNTEER_PASSWORD",  # `dispatch volunteer` (simulators/terminal_volunteer.py)
        "DISPATCH_SETUP_FORCE",  # scripts/setup
        "DISPATCH_SOAK_SECONDS",  # tests/e2e/test_soak.py, .ci/run
        "DISPATCH_TEST_MQTT_URL",  # tests/conftest.py
        "DISPATCH_TEST_MQTT_WS_PORT",
        "DISPATCH_TEST_REDIS_URL",
        "DISPATCH_TEST_CHROMIUM",  # tests/e2e/conftest.py
        "DISPATCH_UPDATE_SCREENSHOTS",  # tests/e2e/test_volunteer_page.py
    }
)


def _share_group(value: Any) -> str:
    # An MQTT shared subscription's group name: no "/", "+" or "#" (MQTT 5, 4.8.2).
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("1-64 characters of A-Z a-z 0-9 _ -")
    return value


def _float_range(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ValueError(f"a number from {lo} to {hi}")
        return float(value)

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _at_least_one(value: Any) -> float:
    if _positive(value) < 1:
        raise ValueError("a number of at least 1 (streets are never shorter than a straight line)")
    return float(value)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce_env(name: str, raw: str, default: Any) -> Any:
    """Environment values are strings; read them as the type of the key's default.

    A value that cannot be read as that type is an error naming the variable (the file
    is held to the same standard by the checks, which see its typed values).
    """
    if isinstance(default, bool):
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ConfigError(name, raw, "true or false (also 1/0, yes/no, on/off)")
    if isinstance(default, int):
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(name, raw, "a whole number") from None
    if isinstance(default, float):
        try:
            return float(raw.strip())
        except ValueError:
            raise ConfigError(name, raw, "a number") from None
    if isinstance(default, list):  # comma-separated
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def is_loopback(host: str) -> bool:
    """Whether an HTTP bind address is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``."""
    if section == "engine":
        return f"DISPATCH_{key.upper()}"
    return f"DISPATCH_{section.upper()}_{key.upper()}"


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration; ``overrides`` maps ``"section.key"`` to a value (flags).

    Raises ConfigError naming the key, the bad value and what is allowed.
    """
    env = env or {}
    values: dict[str, dict[str, Any]] = {s: dict(keys) for s, keys in DEFAULTS.items()}
    values["kinds"] = {k: dict(v) for k, v in DEFAULTS["kinds"].items()}
    base_dir = CONFIG_DIR
    if path is not None:
        path = Path(path)
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", str(path), "an existing TOML file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", str(path), f"valid TOML ({exc})") from exc
        _merge_file(values, file_values)
        base_dir = path.resolve().parent
    known = {env_name(k.section, k.name): (k.section, k.name) for k in KEYS}
    for name in sorted(env):
        if not name.startswith("DISPATCH_"):
            continue
        if name not in known:
            if name in NOT_CONFIG_VARIABLES:
                continue
            # The value is not shown: a misspelt token or password must not reach a log.
            raise ConfigError(
                name,
                "(not shown)",
                "a known variable: DISPATCH_<KEY> for [engine] keys, DISPATCH_<SECTION>_<KEY> "
                "for the others (see config/default.toml); unset it or fix its spelling",
            )
        section, key = known[name]
        values[section][key] = _coerce_env(
            f"{name} ({section}.{key})", env[name], DEFAULTS[section][key]
        )
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if key not in _BY_SECTION.get(section, {}):
            raise ConfigError(dotted, value, "a known configuration key")
        values[section][key] = value
    return _build(values, base_dir)


def _merge_file(values: dict[str, dict[str, Any]], file_values: dict[str, Any]) -> None:
    for section, table in file_values.items():
        if section not in values:
            raise ConfigError(section, table, "one of the sections " + ", ".join(sorted(values)))
        if not isinstance(table, dict):
            raise ConfigError(section, table, "a table")
        if section == "kinds":
            for kind, kind_table in table.items():
                if kind not in values["kinds"]:
                    raise ConfigError(f"kinds.{kind}", kind_table, "a kind from the protocol")
                if not isinstance(kind_table, dict) or set(kind_table) - {"priority", "skills"}:
                    raise ConfigError(f"kinds.{kind}", kind_table, "a table of priority and skills")
                values["kinds"][kind].update(kind_table)
            continue
        for key, value in table.items():
            if key not in values[section]:
                known = ", ".join(sorted(values[section]))
                raise ConfigError(f"{section}.{key}", value, f"one of the keys {known}")
            values[section][key] = value


def _build(values: dict[str, dict[str, Any]], base_dir: Path) -> Config:
    clean: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        raw = values[key.section][key.name]
        try:
            clean.setdefault(key.section, {})[key.name] = key.check(raw)
        except ValueError as exc:
            raise ConfigError(f"{key.section}.{key.name}", raw, str(exc)) from None
    kinds: dict[Kind, KindDefaults] = {}
    for kind_name, table in values["kinds"].items():
        try:
            priority = _int_range(1, 3)(table["priority"])
        except ValueError as exc:
            raise ConfigError(f"kinds.{kind_name}.priority", table["priority"], str(exc)) from None
        try:
            skills = _skills(table["skills"])
        except ValueError as exc:
            raise ConfigError(f"kinds.{kind_name}.skills", table["skills"], str(exc)) from None
        kinds[Kind(kind_name)] = KindDefaults(priority, skills)
    engine, travel, http = clean["engine"], clean["travel"], clean["http"]
    host, _, port = engine["http"].rpartition(":")
    if not is_loopback(host.strip("[]")) and not http["read_token"] and not http["open_reads"]:
        raise ConfigError(
            "http.read_token",
            "",
            f"a read token when the engine listens on {engine['http']} (not only this "
            "machine): incidents, addresses and volunteers would be open to anyone who can "
            "reach the port. Set http.read_token (DISPATCH_HTTP_READ_TOKEN), or set "
            "http.open_reads = true (DISPATCH_HTTP_OPEN_READS=true) to open reads on purpose",
        )
    geojson = Path(clean["area"]["geojson"])
    if not geojson.is_absolute():
        geojson = base_dir / geojson
        if not geojson.exists():  # a file config may still name the bundled outline
            geojson = CONFIG_DIR / clean["area"]["geojson"]
    subdistricts = _subdistricts(clean["area"], base_dir)
    gazetteer = _gazetteer(clean["area"], geojson, base_dir)
    return Config(
        **{k.field: clean[k.section][k.name] for k in KEYS if k.field is not None},
        area_subdistricts=subdistricts,
        area_gazetteer=gazetteer,
        http_host=host.strip("[]"),
        http_port=int(port),
        area_geojson=geojson,
        policy=Policy(**clean["policy"]),
        travel=TravelModel(
            circuity=travel["circuity"],
            speeds_mps=MappingProxyType(
                {
                    Mode.WALK.value: travel["walk_mps"],
                    Mode.BIKE.value: travel["bike_mps"],
                    Mode.EBIKE.value: travel["ebike_mps"],
                }
            ),
        ),
        kinds=MappingProxyType(kinds),
    )
