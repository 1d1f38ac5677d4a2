"""Config validation: every bad value is a ConfigError naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeverify.store import config_doc
from edgeverify.store.config import (DEFAULT_STATE_DIR, MAX_CLIPS_LIMIT, Config, config_path, load_config,
                                     operating_point_problem, parse_config, reload_plan)
from edgeverify.store.settings import Bool, Choice, Int, Num, declared_fields, find, section_of, walk
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
    assert c.threshold is None and c.state_dir == DEFAULT_STATE_DIR
    assert c.model_name == "auto" and c.precision == "int8" and c.model == "auto"  # auto: app.model.choose_model
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
        ({"score": "cosine", "target_far": 0.01}, "target_far: needs calibrated scores (score: calibrated)"),
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
        ({"model": "int4"}, "model: must be auto, ecapa, campp or a path to an .onnx file"),
        ({"model": 8}, "model: must be auto, ecapa, campp"),
        ({"precision": "int4"}, "precision: must be one of int8, fp32, got 'int4'"),
        ({"model": "fp32", "precision": "int8"}, "precision: contradicts model: fp32"),
        ({"device_id": "kitchen\n"}, "device_id: must be 1-64 characters"),
        ({"admin": {"max_clips": MAX_CLIPS_LIMIT + 1}}, f"admin.max_clips: must be an integer 1-{MAX_CLIPS_LIMIT}"),
        ({"threads": 0}, "threads: must be auto or an integer 1-64"),
        ({"threads": "many"}, "threads: must be auto or an integer 1-64"),
        ({"vad_mode": "on"}, "vad_mode: must be one of check, trim, off, got 'on'"),
        ({"limits": {"queue_size": 0}}, "limits.queue_size: must be an integer 1-1000, got 0"),
        ({"limits": {"max_payload_bytes": 1.5}}, "limits.max_payload_bytes: must be an integer"),
        ({"microphone": {"sample_rate": 44100}}, "microphone.sample_rate: must be 16000 or 8000, got 44100"),
        ({"microphone": {"mode": "verify:"}}, "microphone.mode: must be 'identify' or 'verify:<profile>'"),
        ({"microphone": {"mode": "enroll"}}, "microphone.mode"),
        ({"microphone": {"mode": "verify:bob\n"}}, "microphone.mode"),
        ({"microphone": {"mode": ["identify"]}}, "microphone.mode"),
        ({"microphone": {"enabled": 1}}, "microphone.enabled: must be true or false, got 1"),
        ({"microphone": {"min_utterance_s": 5, "max_utterance_s": 2}}, "microphone.min_utterance_s: must be <= max_utterance_s"),
        ({"microphone": {"vad": {"margin_db": 3, "release_db": 6}}}, "microphone.vad: vad needs 0 < release_db <= margin_db"),
        ({"microphone": {"vad": {"frame_ms": 10}}}, "microphone.vad.frame_ms: unknown key"),
        ({"log_level": "verbose"}, "log_level: must be debug, info, warning or error"),
        ([1, 2], "config: must be a mapping"),
        ({"threshold": 10**400}, "threshold: must be a number -1-1, got 1000000000"),  # not an OverflowError
        ({"threshold": float("nan")}, "threshold: must be a number -1-1, got nan"),
        ({"mqtt": {"host": ["x"] * 10_000}}, "characters)"),  # a huge value is cut in the message
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


# -- the declarations: one place for default, check, reload behaviour and doc --------------------------

def _nested(path: str, value: object) -> dict:
    """{"a": {"b": value}} for "a.b"."""
    keys = path.split(".")
    out: dict = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        out = {key: out}
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# the few range ends that another setting's rule also constrains, given the companion value that allows them
_COMPANIONS = {
    "mqtt.reconnect_min_s": {"mqtt": {"reconnect_max_s": 3600}},
    "mqtt.reconnect_max_s": {"mqtt": {"reconnect_min_s": 0.1}},
    "microphone.min_utterance_s": {"microphone": {"max_utterance_s": 60}},
    "microphone.max_utterance_s": {"microphone": {"min_utterance_s": 0.5}},
}
_ENTRIES = list(walk(Config))


def test_every_field_is_declared() -> None:
    """A field added without setting(...) would be invisible to the parser, the reload plan and the docs."""
    import dataclasses

    def undeclared(cls: type) -> set[str]:
        declared = {f.name for f in declared_fields(cls)}
        out = {f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if f.name not in declared}
        for f in declared_fields(cls):
            if section_of(f) is not None:
                out |= undeclared(section_of(f).cls)
        return out

    assert undeclared(Config) == {"Config.source"}
    assert len(_ENTRIES) > 50 and all(e.setting.doc.strip() for e in _ENTRIES)


@pytest.mark.parametrize("entry", [e for e in _ENTRIES if isinstance(e.setting.check, (Int, Num))],
                         ids=lambda e: e.path)
def test_declared_ranges_are_what_the_parser_enforces(entry) -> None:
    check = entry.setting.check
    step = 1 if isinstance(check, Int) else 0.001
    for bad in (check.lo - step, check.hi + step, "1", True):
        with pytest.raises(ConfigError) as err:
            parse_config(_nested(entry.path, bad))
        assert err.value.message.startswith(f"{entry.path}: must be"), err.value.message
    if not entry.path.startswith("microphone.vad."):  # the VAD's own rules (release <= margin, ...) narrow these
        for good in (check.lo, check.hi):
            c = parse_config(_merge(_COMPANIONS.get(entry.path, {}), _nested(entry.path, good)))
            assert entry.get(c) == good


@pytest.mark.parametrize("entry", [e for e in _ENTRIES if isinstance(e.setting.check, (Choice, Bool))],
                         ids=lambda e: e.path)
def test_declared_choices_are_what_the_parser_enforces(entry) -> None:
    check = entry.setting.check
    values = check.values if isinstance(check, Choice) else (True, False)
    for good in values:
        assert entry.get(parse_config(_nested(entry.path, good))) == good
    for bad in ("nonsense", 2.5, [], {}) + ((1,) if isinstance(check, Bool) else ()):
        with pytest.raises(ConfigError) as err:
            parse_config(_nested(entry.path, bad))
        assert err.value.message.startswith(f"{entry.path}: must be"), err.value.message


def test_unknown_keys_are_named_in_every_section() -> None:
    sections = {e.path.rsplit(".", 1)[0] for e in _ENTRIES if "." in e.path}
    for sec in sorted(sections) + [""]:
        with pytest.raises(ConfigError, match="unknown key") as err:
            parse_config(_nested(f"{sec}.bogus" if sec else "bogus", 1))
        assert err.value.message.startswith(f"{sec}.bogus: " if sec else "bogus: ")


def test_model_and_precision_keep_the_old_values_working() -> None:
    old = parse_config({"model": "fp32"})
    assert (old.model_name, old.precision, old.model) == ("ecapa", "fp32", "fp32")
    assert parse_config({"model": "int8", "precision": "int8"}).model == "int8"
    c = parse_config({"model": "ecapa", "precision": "fp32"})
    assert (c.model_name, c.precision, c.model) == ("ecapa", "fp32", "fp32")
    c = parse_config({"model": "campp"})
    assert (c.model_name, c.precision) == ("campp", "int8")
    c = parse_config({"model": "/opt/models/mine.onnx"})
    assert c.model_name == c.model == "/opt/models/mine.onnx"
    assert c.redacted()["model"] == "/opt/models/mine.onnx" and "model_name" not in c.redacted()


def test_redacted_is_keyed_like_the_file_and_hides_secrets() -> None:
    c = parse_config({"mqtt": {"password": 1234}, "model": "fp32"})
    assert c.mqtt.password == "1234" and c.mqtt.secret() == "1234"
    d = c.redacted()
    assert d["mqtt"]["password"] == "***" and d["model"] == "ecapa" and d["precision"] == "fp32"
    assert parse_config(d | {"mqtt": d["mqtt"] | {"password": None}}) == parse_config({"model": "fp32"})


def test_reload_plan_follows_the_declarations() -> None:
    old = parse_config({"mqtt": {"password": "a"}})
    new = parse_config({
        "log_level": "DEBUG", "vad_mode": "trim", "mqtt": {"port": 1884, "password": "b"},
        "limits": {"max_audio_seconds": 20, "queue_size": 2},
        "microphone": {"mode": "verify:bob", "pre_roll_s": 1, "vad": {"margin_db": 12}},
        "admin": {"max_clips": 20},
    })
    plan = reload_plan(old, new)
    assert plan.live == ("log_level", "limits.max_audio_seconds", "microphone.mode")
    assert plan.model == ("vad_mode",) and plan.reload_model
    assert plan.restart == ("mqtt.port", "mqtt.password", "limits.queue_size", "microphone.pre_roll_s",
                            "microphone.vad.margin_db", "admin.max_clips")
    run = plan.config  # new values where live, running values where a restart is needed
    assert (run.log_level, run.vad_mode, run.limits.max_audio_seconds) == ("debug", "trim", 20)
    assert run.microphone.mode == "verify:bob"
    assert (run.mqtt.port, run.mqtt.password, run.limits.queue_size, run.microphone.pre_roll_s) == (1883, "a", 8, 0.3)
    assert run.microphone.vad.margin_db == 9.0 and run.admin.max_clips == 10
    assert new.mqtt.port == 1884 and new.microphone.vad.margin_db == 12  # the new config is not modified
    same = reload_plan(old, parse_config({"mqtt": {"password": "a"}}))
    assert same.changed == () and not same.reload_model and same.config == old


def test_model_precision_change_reloads_the_model() -> None:
    plan = reload_plan(parse_config({"model": "int8"}), parse_config({"model": "fp32"}))
    assert plan.model == ("precision",) and plan.restart == ()
    plan = reload_plan(parse_config({}), parse_config({"model": "campp", "target_far": 0.01}))
    assert plan.model == ("model", "target_far")


def test_operating_point_rule_is_one_function() -> None:
    assert operating_point_problem(None, None) is None and operating_point_problem(0.4, None, "cosine") is None
    assert operating_point_problem(None, 0.01) is None
    assert operating_point_problem(0.4, 0.01, names=("--threshold", "--target-far")) == \
        "cannot be combined with --threshold (a raw cosine threshold)"
    for far in (0.9, 0.0, True, "0.01"):
        assert "must be a number in 0.0005..0.5" == operating_point_problem(None, far)
    assert "needs calibrated scores" in operating_point_problem(None, 0.01, "cosine")


def test_microphone_mode_profile() -> None:
    from edgeverify.store.config import mode_profile

    assert mode_profile("identify") is None and mode_profile("verify:bob") == "bob"
    assert parse_config({"microphone": {"mode": "verify:a.b"}}).microphone.verify_profile == "a.b"


def test_enroll_clip_limit_is_the_declared_one() -> None:
    assert MAX_CLIPS_LIMIT == 50 == find(Config, "admin.max_clips").setting.check.hi
    assert parse_config({"admin": {"max_clips": MAX_CLIPS_LIMIT}}).admin.max_clips == MAX_CLIPS_LIMIT


def test_example_config_holds_every_default() -> None:
    example = load_config(str(REPO / "config.example.yaml"))
    assert example.redacted() == parse_config(None).redacted()
    text = (REPO / "config.example.yaml").read_text()
    for e in _ENTRIES:
        assert f"{e.path.rsplit('.', 1)[-1]}:" in text, e.path


def test_reference_lists_every_setting() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    for e in _ENTRIES:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{e.path}` |")), None)
        assert row is not None, e.path
        assert {"live": "| live |", "model": "| reloads model |", "restart": "| restart |"}[e.setting.reload] in row


def test_generated_files_are_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_doc.stale() == [], "run: python -m edgeverify.store.config_doc --write"
    # and the check can fail: an example whose default differs from the declaration is stale
    edited = tmp_path / "config.example.yaml"
    edited.write_text(config_doc.render_example().replace("  port: 1883", "  port: 1884"))
    monkeypatch.setattr(config_doc, "REPO", tmp_path)
    monkeypatch.setattr(config_doc, "EXAMPLE_PATH", edited)
    monkeypatch.setattr(config_doc, "REFERENCE_PATH", tmp_path / "configuration.md")
    assert config_doc.stale() == ["config.example.yaml", "configuration.md"]
    assert config_doc.main(["--check"]) == 1


def test_check_config_prints_the_reference_and_example(capsys: pytest.CaptureFixture[str]) -> None:
    from edgeverify.__main__ import main

    assert main(["check-config", "--reference"]) == 0
    assert capsys.readouterr().out == config_doc.render_reference()
    assert main(["check-config", "--example"]) == 0
    assert capsys.readouterr().out == config_doc.render_example()
