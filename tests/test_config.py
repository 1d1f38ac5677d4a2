"""Config validation: every bad value is a ConfigError naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeverify.store.config import DEFAULT_STATE_DIR, config_path, load_config, parse_config
from edgeverify.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("EDGEVERIFY_CONFIG", raising=False)


def test_defaults() -> None:
    c = parse_config(None)
    assert c.mqtt.port == 1883 and c.mqtt.qos == 1 and c.mqtt.topic_prefix == "edgeverify"
    assert c.mqtt.discovery_prefix == "homeassistant" and c.mqtt.shared_group is None
    assert c.threshold is None and c.model == "int8" and c.state_dir == DEFAULT_STATE_DIR
    assert c.target_far is None and c.score == "calibrated"
    assert c.microphone.enabled is False and c.microphone.sample_rate == 16000
    assert c.client_id == f"edgeverify-{c.device_id}"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mqtt": {"port": "abc"}}, "mqtt.port: must be an integer 1-65535, got 'abc'"),
        ({"mqtt": {"port": 70000}}, "mqtt.port: must be an integer 1-65535, got 70000"),
        ({"target_far": 0.9}, "target_far: must be"),
        ({"target_far": 0.01, "threshold": 0.4}, "target_far: cannot be combined with threshold"),
        ({"score": "asnorm"}, "score: must be one of calibrated, cosine"),
        ({"score": "cosine", "target_far": 0.01}, "target_far: needs score: calibrated"),
        ({"mqtt": {"prot": 1883}}, "mqtt.prot: unknown key"),
        ({"mqtt": {"qos": 3}}, "mqtt.qos: must be an integer 0-2"),
        ({"mqtt": {"topic_prefix": "a/#"}}, "mqtt.topic_prefix: must be a topic without + # or NUL"),
        ({"mqtt": {"shared_group": "a/b"}}, "mqtt.shared_group"),
        ({"mqtt": {"tls": "yes"}}, "mqtt.tls: must be true or false, got 'yes'"),
        ({"mqtt": {"ca_file": "/nonexistent.pem"}}, "mqtt.ca_file: must be an existing CA certificate file"),
        ({"mqtt": {"password_file": "/nonexistent"}}, "mqtt.password_file: must be a readable file"),
        ({"mqtt": "localhost"}, "mqtt: must be a mapping"),
        ({"devic_id": "x"}, "devic_id: unknown key"),
        ({"device_id": "kitchen/pi"}, "device_id: must be 1-64 characters"),
        ({"threshold": 2}, "threshold: must be a number -1-1, got 2"),
        ({"threshold": True}, "threshold: must be a number"),
        ({"model": "int4"}, "model: must be int8, fp32 or a path to an .onnx file"),
        ({"threads": 0}, "threads: must be auto or an integer 1-64"),
        ({"threads": "many"}, "threads: must be auto or an integer 1-64"),
        ({"vad_mode": "on"}, "vad_mode: must be one of check, trim, off, got 'on'"),
        ({"limits": {"queue_size": 0}}, "limits.queue_size: must be an integer 1-1000, got 0"),
        ({"limits": {"max_payload_bytes": 1.5}}, "limits.max_payload_bytes: must be an integer"),
        ({"microphone": {"sample_rate": 44100}}, "microphone.sample_rate: must be 16000 or 8000, got 44100"),
        ({"microphone": {"mode": "verify:"}}, "microphone.mode: must be 'identify' or 'verify:<profile>'"),
        ({"microphone": {"mode": "enroll"}}, "microphone.mode"),
        ({"microphone": {"enabled": 1}}, "microphone.enabled: must be true or false, got 1"),
        ({"microphone": {"min_utterance_s": 5, "max_utterance_s": 2}}, "microphone.min_utterance_s: must be <= max_utterance_s"),
        ({"microphone": {"vad": {"margin_db": 3, "release_db": 6}}}, "microphone.vad: vad needs 0 < release_db <= margin_db"),
        ({"microphone": {"vad": {"frame_ms": 10}}}, "microphone.vad.frame_ms: unknown key"),
        ({"log_level": "verbose"}, "log_level: must be debug, info, warning or error"),
        ([1, 2], "config: must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in err.value.message


def test_valid_full_config(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    c = parse_config({
        "device_id": "kitchen-pi",
        "threshold": 0.42,
        "mqtt": {"host": "hub", "port": 8883, "username": "ev", "password_file": str(pw), "topic_prefix": "/home/ev/",
                 "shared_group": "verifiers", "discovery_prefix": None},
        "microphone": {"enabled": True, "device": 2, "sample_rate": 8000, "mode": "verify:alice", "vad": {"margin_db": 12}},
    })
    assert c.mqtt.secret() == "s3cret"
    assert c.mqtt.topic_prefix == "home/ev" and c.mqtt.discovery_prefix is None
    assert c.microphone.verify_profile == "alice" and c.microphone.vad.margin_db == 12.0
    assert c.threshold == 0.42


def test_state_directory_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edgeverify-unit:/other")
    assert parse_config({"state_dir": "/srv/x"}).state_dir == "/var/lib/edgeverify-unit"


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path() == "/etc/edgeverify/config.yaml"
    monkeypatch.setenv("EDGEVERIFY_CONFIG", "/env.yaml")
    assert config_path() == "/env.yaml"
    assert config_path("/flag.yaml") == "/flag.yaml"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    assert load_config(str(tmp_path / "missing.yaml"), missing_ok=True).mqtt.port == 1883
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ column \d+ invalid YAML"):
        load_config(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("mqtt:\n  port: abc\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: mqtt.port: must be an integer 1-65535, got 'abc'"):
        load_config(str(wrong))


def test_example_config_is_valid() -> None:
    c = load_config(str(REPO / "config.example.yaml"))
    assert c.mqtt.qos == 1


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeverify.__main__ import main

    good = tmp_path / "c.yaml"
    good.write_text("device_id: t1\nmqtt:\n  password: hunter2\n")
    assert main(["check-config", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert '"device_id": "t1"' in out and "hunter2" not in out
    bad = tmp_path / "b.yaml"
    bad.write_text("mqtt:\n  port: 0\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "mqtt.port: must be an integer 1-65535, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mqtt, message",
    [
        ({"reply_topics": "hub/#"}, "mqtt.reply_topics: must be a list"),
        ({"reply_topics": ["ok/#", "bad/#/x"]}, "mqtt.reply_topics[1]: must be an MQTT topic filter"),
        ({"reply_topics": ["a\u0001"]}, "mqtt.reply_topics[0]"),
        ({"session_expiry_s": -1}, "mqtt.session_expiry_s"),
        ({"session_expiry_s": 2**32}, "mqtt.session_expiry_s"),
        ({"client_id": "dev\u0000"}, "mqtt.client_id"),
        ({"discovery_prefix": "$SYS"}, "mqtt.discovery_prefix"),
        ({"topic_prefix": "ev\ufffe"}, "mqtt.topic_prefix"),
    ],
)
def test_mqtt_security_keys_are_checked(mqtt: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"mqtt": mqtt})
    assert message in err.value.message


def test_mqtt_delivery_defaults() -> None:
    m = parse_config({}).mqtt
    assert m.session_expiry_s == 3600 and m.reply_topics == [] and m.certfile is None and m.keyfile is None
    m = parse_config({"mqtt": {"session_expiry_s": 0, "reply_topics": ["hub/answers/#", "+/replies"]}}).mqtt
    assert m.session_expiry_s == 0 and m.reply_topics == ["hub/answers/#", "+/replies"]


def test_threads_auto_is_the_default_and_follows_the_usable_cpus() -> None:
    """auto = half the CPUs this process may run on (systemd CPUAffinity=, taskset), 1-4."""
    import subprocess
    import sys

    assert parse_config({}).threads == "auto" and parse_config({"threads": "auto"}).threads == "auto"
    assert parse_config({"threads": 3}).threads == 3
    code = ("import os; from edgeverify.core.embedder import resolve_threads as r; cpus = sorted(os.sched_getaffinity(0)); "
            "os.sched_setaffinity(0, cpus[:1]); one = r('auto'); os.sched_setaffinity(0, cpus); "
            "print(one, r('auto'), r(3), len(cpus))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    one, full, three, cpus = (int(v) for v in out)
    assert (one, three) == (1, 3)
    assert full == max(1, min(4, cpus // 2))


def test_bad_thread_counts_are_model_errors() -> None:
    from edgeverify.core.embedder import resolve_threads
    from edgeverify.errors import ModelError

    for bad in (0, -2, "two", True, 1.5):
        with pytest.raises(ModelError, match="threads"):
            resolve_threads(bad)
