"""Profiles, environment and CLI overrides, and errors that name the bad key."""

import pytest

from edgefl import resources
from edgefl.runtime.config import ConfigError, load_config

PROFILES = sorted(p.stem for p in resources.folder("firmware_profiles").glob("*.toml"))


def test_every_shipped_profile_loads():
    assert {"pi3bplus", "pi4", "pi5", "pizero2w", "fog", "cloud"} <= set(PROFILES)
    for name in PROFILES:
        cfg = load_config(name, env={})
        assert cfg.board.name == name
        assert cfg.mqtt.max_packet_size <= cfg.mqtt.max_message_size


def test_precedence_defaults_profile_env_cli():
    assert load_config(env={}).mqtt.port == 1883
    assert load_config("pizero2w", env={}).mqtt.max_packet_size == 131072
    env = {"EDGEFL_MQTT__MAX_PACKET_SIZE": "65536", "EDGEFL_LOG__JSON": "false", "EDGEFL_NO_EXTENSIONS": "1"}
    cfg = load_config("pizero2w", env=env)
    assert cfg.mqtt.max_packet_size == 65536 and cfg.log.json is False
    cfg = load_config("pizero2w", env=env, overrides=["mqtt.max_packet_size=32768", "node.id=dev-9"])
    assert cfg.mqtt.max_packet_size == 32768 and cfg.node.id == "dev-9"


@pytest.mark.parametrize("kwargs, key, source, text", [
    (dict(overrides=["mqtt.prot=1"]), "mqtt.prot", "--set", "did you mean 'port'"),
    (dict(overrides=["mqt.port=1"]), "mqt.port", "--set", "did you mean 'mqtt'"),
    (dict(overrides=["mqtt.port=70000"]), "mqtt.port", "--set", "outside [1, 65535]"),
    (dict(overrides=["mqtt.port=abc"]), "mqtt.port", "--set", "expected an integer"),
    (dict(overrides=["node.role=toaster"]), "node.role", "--set", "not one of"),
    (dict(overrides=["log.json=yes"]), "log.json", "--set", "expected true or false"),
    (dict(overrides=["mqtt.port"]), "mqtt.port", "--set", "expected section.key=value"),
    (dict(env={"EDGEFL_MQTT__QOS": "2"}), "mqtt.qos", "EDGEFL_MQTT__QOS", "outside [0, 1]"),
    (dict(overrides=["fl.items=2000"]), "fl.items", "--set", "outside [1, 1024]"),
    (dict(overrides=["fl.hidden=[16, 0]"]), "fl.hidden[1]", "--set", "0 is outside [1, 65536]"),
    (dict(overrides=["fl.devices=dev-1"]), "fl.devices", "--set", "expected a list"),
])
def test_errors_name_key_and_source(kwargs, key, source, text):
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as exc:
        load_config(**kwargs)
    assert exc.value.key == key and exc.value.source == source
    assert str(exc.value).startswith(key) and text in str(exc.value)


def test_profile_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'x'\n")
    with pytest.raises(ConfigError, match=r"mqtt.port: expected an integer.*bad.toml"):
        load_config(bad, env={})
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    bad.write_text("mqtt = 3\n")
    with pytest.raises(ConfigError, match="expected a \\[section\\] table"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="no firmware profile 'pi9'"):
        load_config("pi9", env={})


def test_paths_expand(tmp_path):
    cfg = load_config(overrides=[f"node.data_dir={tmp_path}", "node.id=x"], env={})
    assert cfg.path(cfg.security.key_file) == tmp_path / "keys" / "x.key"


def test_a_profile_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[node]\nid = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, env={})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
def test_nan_and_infinity_fail_every_range_check(tmp_path, value):
    """``max_clock_skew_s = inf`` passed the range check (inf >= 1) and later crashed the verifier."""
    path = tmp_path / "p.toml"
    path.write_text(f"[security]\nmax_clock_skew_s = {value}\n")
    with pytest.raises(ConfigError, match="finite"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="finite"):
        load_config(overrides=[f"ml.lr={value}"], env={})
