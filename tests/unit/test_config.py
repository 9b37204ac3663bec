"""Configuration: defaults, the documented file, environment and flags, and clear errors."""

import tomllib
from pathlib import Path

import pytest

from dispatch.config import CONFIG_DIR, DEFAULTS, load_config
from dispatch.errors import ConfigError
from dispatch.model import Kind
from dispatch.policy import Strategy


def test_default_toml_documents_exactly_the_defaults() -> None:
    documented = tomllib.loads((CONFIG_DIR / "default.toml").read_text(encoding="utf-8"))
    assert documented == {section: dict(keys) for section, keys in DEFAULTS.items()}


def test_default_toml_comments_every_key() -> None:
    lines = (CONFIG_DIR / "default.toml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not line.startswith("["):
            key = line.split("=")[0].strip()
            if key in ("priority", "skills", "bike_mps", "ebike_mps"):
                continue  # documented by the comment of their table or group
            assert lines[i - 1].startswith("#"), f"key {key!r} has no comment above it"


def test_defaults_follow_the_protocol() -> None:
    config = load_config(env={})
    assert config.topic_root == "dispatch"
    assert config.http_host == "127.0.0.1"
    assert config.http_port == 8080
    assert config.policy.target_s == 180
    assert config.policy.max_radius_m == 3000
    assert config.policy.alert_expiry_s == 90
    assert config.policy.arrival_radius_m == 30
    assert config.location_ttl_s == 300
    assert config.state_retention_s == 3600
    assert config.max_payload_bytes == 16 * 1024
    assert config.kinds[Kind.DISPUTE].skills == ("mediation",)
    assert config.kinds[Kind.FALL].priority == 2
    assert config.area_geojson.exists()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "my.toml"
    path.write_text(
        '[engine]\ntopic_root = "hz"\nhttp = "0.0.0.0:9000"\n'
        '[policy]\ntarget_s = 120\nstrategy = "naive"\n'
        '[kinds.other]\nskills = ["patrol"]\n'
        "[http]\nopen_reads = true\n",
        encoding="utf-8",
    )
    config = load_config(
        path, env={"DISPATCH_HTTP": "127.0.0.1:9001", "DISPATCH_POLICY_MAX_WAVES": "5"}
    )
    assert config.topic_root == "hz"
    assert config.http_port == 9001
    assert config.policy.target_s == 120
    assert config.policy.max_waves == 5
    assert config.policy.strategy is Strategy.NAIVE
    assert config.kinds[Kind.OTHER].skills == ("patrol",)
    flagged = load_config(
        path, env={"DISPATCH_TOPIC_ROOT": "env"}, overrides={"engine.topic_root": "flag"}
    )
    assert flagged.topic_root == "flag"


@pytest.mark.parametrize(
    ("toml", "env", "key", "allowed"),
    [
        ("[policy]\nacceptance_rate = 1.5\n", {}, "policy.acceptance_rate", "between 0 and 1"),
        ("[policy]\ntarget_s = -3\n", {}, "policy.target_s", "greater than 0"),
        ('[engine]\nmqtt = "http://x"\n', {}, "engine.mqtt", "mqtt://"),
        ('[engine]\nhttp = "8080"\n', {}, "engine.http", "HOST:PORT"),
        ('[policy]\nstrategy = "random"\n', {}, "policy.strategy", "'waves'"),
        ("[policy]\nwave_timout_s = 20\n", {}, "policy.wave_timout_s", "wave_timeout_s"),
        ("[polcy]\n", {}, "polcy", "policy"),
        ("[kinds.earthquake]\npriority = 1\n", {}, "kinds.earthquake", "kind"),
        ("[kinds.fire]\npriority = 4\n", {}, "kinds.fire.priority", "from 1 to 3"),
        ("", {"DISPATCH_POLICY_MAX_WAVES": "many"}, "policy.max_waves", "whole number"),
        ("[travel]\ncircuity = 0.9\n", {}, "travel.circuity", "at least 1"),
    ],
)
def test_errors_name_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, toml: str, env: dict[str, str], key: str, allowed: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    text = str(info.value)
    assert key in text
    assert allowed in text


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing TOML file"):
        load_config(tmp_path / "nope.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[engine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(broken, env={})


# ---- the environment is as strict as the file (issue 18, item 8)


@pytest.mark.parametrize("raw", ["ture", "enabled", "2", "", "yes please"])
def test_an_unreadable_flag_in_the_environment_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"DISPATCH_CLUSTER_ENABLED": raw})
    assert "DISPATCH_CLUSTER_ENABLED" in str(info.value)
    assert "true or false" in str(info.value)


@pytest.mark.parametrize(
    ("name", "raw", "allowed"),
    [
        ("DISPATCH_POLICY_MAX_WAVES", "3.5", "whole number"),
        ("DISPATCH_POLICY_TARGET_S", "fast", "a number"),
        ("DISPATCH_VOLUNTEER_APP_MQTT_WS_PORT", "ws", "whole number"),
    ],
)
def test_an_unreadable_number_in_the_environment_names_the_variable(
    name: str, raw: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={name: raw})
    assert name in str(info.value)
    assert allowed in str(info.value)


def test_flags_in_the_environment_read_both_ways() -> None:
    for raw, want in (("true", True), ("1", True), ("ON", True), ("false", False), ("0", False)):
        config = load_config(env={"DISPATCH_VOLUNTEER_APP_OPEN_BROKER": raw})
        assert config.volunteer_open_broker is want, raw


def test_an_unknown_dispatch_variable_stops_start_up_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"DISPATCH_POLICY_WAVE_TIMOUT_S": "5"})
    assert "DISPATCH_POLICY_WAVE_TIMOUT_S" in str(info.value)
    assert "spelling" in str(info.value)


def test_an_unknown_secret_variable_is_named_but_its_value_is_not_shown() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"DISPATCH_HTTP_READ_TOKN": "s3cret-value"})
    assert "DISPATCH_HTTP_READ_TOKN" in str(info.value)
    assert "s3cret-value" not in str(info.value)


def test_the_projects_own_variables_and_other_prefixes_are_not_config() -> None:
    from dispatch.config import NOT_CONFIG_VARIABLES

    env = dict.fromkeys(NOT_CONFIG_VARIABLES, "x")
    env |= {"PATH": "/bin", "CI": "true", "DISPATCHER": "x", "MY_DISPATCH_X": "y"}
    load_config(env=env)  # none of them is an error


def test_every_dispatch_variable_the_repository_uses_is_a_key_or_allow_listed() -> None:
    """A variable the project reads must not stop the engine (grep the whole repository)."""
    import re

    from dispatch.config import KEYS, NOT_CONFIG_VARIABLES, env_name

    repo = Path(__file__).resolve().parents[2]
    keys = {env_name(k.section, k.name) for k in KEYS}
    used: set[str] = set()
    for folder in ("dispatch", "simulators", "benchmarks", "scripts", "tests", "docs", ".ci"):
        for path in (repo / folder).rglob("*"):
            if path == Path(__file__).resolve():
                continue  # this file names misspellings on purpose
            if path.is_file() and path.suffix in ("", ".py", ".md", ".sh", ".toml", ".js"):
                text = path.read_text(encoding="utf-8", errors="replace")
                used |= set(re.findall(r"(?<![A-Za-z0-9_])DISPATCH_[A-Z0-9_]*[A-Z0-9]", text))
    used.discard("DISPATCH_")
    stray = sorted(
        name
        for name in used - keys - NOT_CONFIG_VARIABLES
        if not name.startswith("DISPATCH_SECTION") and "<" not in name
    )
    assert stray == [], f"DISPATCH_* names used in the repository but unknown: {stray}"


# ---- safe defaults (issue 18, item 5)


@pytest.mark.parametrize("http", ["0.0.0.0:8080", "192.168.1.5:8080", "[::]:8080", "myhost:80"])
def test_a_non_loopback_bind_without_a_read_token_refuses_to_start(http: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"DISPATCH_HTTP": http})
    text = str(info.value)
    assert "http.read_token" in text
    assert "DISPATCH_HTTP_OPEN_READS" in text


@pytest.mark.parametrize(
    "env",
    [
        {"DISPATCH_HTTP": "0.0.0.0:8080", "DISPATCH_HTTP_READ_TOKEN": "r"},
        {"DISPATCH_HTTP": "0.0.0.0:8080", "DISPATCH_HTTP_OPEN_READS": "true"},
        {"DISPATCH_HTTP": "127.0.0.1:8080"},
        {"DISPATCH_HTTP": "[::1]:8080"},
        {"DISPATCH_HTTP": "localhost:8080"},
    ],
)
def test_a_token_an_explicit_choice_or_loopback_may_start(env: dict[str, str]) -> None:
    load_config(env=env)


def test_allowed_hosts_from_file_and_environment(tmp_path: Path) -> None:
    config = load_config(env={"DISPATCH_HTTP_ALLOWED_HOSTS": "localhost, Dispatch.Example.org"})
    assert config.allowed_hosts == ("localhost", "dispatch.example.org")
    path = tmp_path / "bad.toml"
    path.write_text('[http]\nallowed_hosts = ["evil/host"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"http\.allowed_hosts"):
        load_config(path, env={})


def test_policy_keys_are_the_policys_own_fields_with_its_own_rules() -> None:
    """Each [policy] key is declared once: its default and its bound are Policy's."""
    import dataclasses

    from dispatch.config import KEYS
    from dispatch.policy import Policy

    policy_keys = {k.name: k.default for k in KEYS if k.section == "policy"}
    fields = {f.name: f.default for f in dataclasses.fields(Policy)}
    assert policy_keys == {n: getattr(v, "value", v) for n, v in fields.items()}
    # the same rule refuses the same value, from the file and in the core alike
    with pytest.raises(ConfigError, match=r"policy\.max_waves.*a whole number from 1 to 20"):
        load_config(env={"DISPATCH_POLICY_MAX_WAVES": "25"})
    with pytest.raises(ValueError, match=r"Policy\.max_waves must be a whole number from 1 to 20"):
        Policy(max_waves=25)


def test_a_clients_heavy_read_budget_refills_at_its_rate() -> None:
    """dispatch/web.py's per-client budget: a burst, then one a 1/rate seconds."""
    from dispatch.web import _ClientBudgets

    now = [0.0]
    budgets = _ClientBudgets(5.0, lambda: now[0])
    assert [budgets.take("a") for _ in range(10)] == [None] * 10  # a burst of 2 x rate
    wait = budgets.take("a")
    assert wait == pytest.approx(0.2)
    assert budgets.take("b") is None  # another client is not held back
    now[0] += 0.2
    assert budgets.take("a") is None
    assert budgets.take("a") is not None
