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
        '[kinds.other]\nskills = ["patrol"]\n',
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
