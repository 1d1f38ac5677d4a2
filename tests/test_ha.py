"""Home Assistant side and admin requests, end to end: `python -m edgeverify run` as a subprocess, a real
mosquitto, real recordings. What HA would receive is checked on the wire (discovery, migration order,
re-announce on HA's birth message, event entity payloads, per-kind state, diagnostics); the opt-in
tests/ha/run_ha_check.sh checks the same against a real Home Assistant Core.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import Broker, Hub  # noqa: E402
from daemon_process import DaemonProcess, PREFIX, as_clip, ask  # noqa: E402

from edgeverify.mqtt.ha_discovery import EVENT_TYPES, NO_MATCH  # noqa: E402
from edgeverify.app.protocol import encode_request  # noqa: E402

LEGACY = [f"homeassistant/{c}/edgeverify_ha1/{k}/config" for c, k in
          (("binary_sensor", "match"), ("sensor", "speaker"), ("sensor", "score"))]
DEVICE_CONFIG = "homeassistant/device/edgeverify_ha1/config"


def _drain(hub: Hub, seconds: float) -> list[Any]:
    """Every message the hub gets within `seconds` (in arrival order)."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            out.append(hub.messages.get(timeout=0.1))
        except Exception:
            continue
    return out


def _admin(hub: Hub, base: str, doc: dict, timeout: float = 20) -> dict:
    return ask(hub, f"{base}/admin/request", json.dumps(doc).encode(), timeout=timeout)


@pytest.fixture(scope="module")
def ha_state(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Path:
    """A copy of the alice/bob profiles: the admin tests enroll and forget in it."""
    root = tmp_path_factory.mktemp("ha-state")
    shutil.copytree(state_dir / "profiles", root / "profiles")
    return root


@pytest.fixture(scope="module")
def ha_daemon(tmp_path_factory: pytest.TempPathFactory, broker: Broker, int8_model: Path, ha_state: Path) -> Any:
    """Starts like an upgrade from 0.1: the old per-entity configs are retained on the broker; a watcher
    records everything from the first connect on."""
    old = Hub(broker.port)
    for topic in LEGACY:
        old.client.publish(topic, json.dumps({"name": "x", "unique_id": topic, "state_topic": "s"}), qos=1, retain=True).wait_for_publish(3)
    old.close()
    watcher = Hub(broker.port)
    watcher.subscribe("homeassistant/#")
    watcher.subscribe(f"{PREFIX}/ha1/#")
    d = DaemonProcess(tmp_path_factory.mktemp("ha"), broker.port, int8_model, ha_state, "ha1",
                      extra={"admin": {"enabled": True, "max_clips": 5},
                             # the event shapes below come from MQTT requests, so this hub trusts its requesters
                             "homeassistant": {"trust_mqtt_requests": True}})
    d.startup = _drain(watcher, 3.0)  # type: ignore[attr-defined]
    watcher.close()
    yield d
    d.stop()


def test_device_based_discovery_and_migration(ha_daemon: DaemonProcess, broker: Broker) -> None:
    seen = [(m.topic, bytes(m.payload), m.retain) for m in ha_daemon.startup if m.topic.startswith("homeassistant/")]
    live = [(t, p) for t, p, retain in seen if not retain]  # what the daemon sent after connecting
    # HA's documented order: migrate every old topic, then the device config, then clear the old topics
    migrate = [i for i, (t, p) in enumerate(live) if t in LEGACY and p and json.loads(p) == {"migrate_discovery": True}]
    config = [i for i, (t, p) in enumerate(live) if t == DEVICE_CONFIG]
    cleared = [i for i, (t, p) in enumerate(live) if t in LEGACY and p == b""]
    assert len(migrate) == 3 and len(config) == 1 and len(cleared) == 3, live
    assert max(migrate) < config[0] < min(cleared)
    doc = json.loads(live[config[0]][1])
    assert {"dev", "o", "cmps"} <= set(doc) and doc["dev"]["ids"] == ["edgeverify_ha1"]
    assert doc["o"]["name"] == "edgeverify" and doc["o"]["sw"] and doc["o"]["url"].startswith("https://")
    assert "object_id" not in json.dumps(doc)  # deprecated by HA (removed in 2026.4)
    assert doc["availability"] == [{"topic": f"{ha_daemon.base}/availability", "payload_available": "online",
                                     "payload_not_available": "offline"}]
    cmps = doc["cmps"]
    for c in cmps.values():
        if len(c) > 1:  # platform-only entries are removals
            assert c["unique_id"].startswith("edgeverify_ha1_") and c["default_entity_id"].startswith(f"{c['p']}.edgeverify_ha1_")
    # 0.1's unique_ids survive, so HA keeps the entity ids
    assert {c.get("unique_id") for c in cmps.values()} >= {f"edgeverify_ha1_{k}" for k in ("match", "speaker", "score")}
    assert cmps["last_speaker"]["default_entity_id"] == "sensor.edgeverify_ha1_speaker"
    assert cmps["event"]["default_entity_id"] == "event.edgeverify_ha1_speaker"  # = what HA < 2025.10 derives
    assert cmps["event"]["p"] == "event" and cmps["event"]["event_types"] == list(EVENT_TYPES) + [
        "identified_alice", "identified_bob"]
    assert cmps["event"]["state_topic"] == f"{ha_daemon.base}/event"
    assert "state_class" not in cmps["last_score"]
    assert cmps["verify_match"]["device_class"] == "occupancy"
    assert {cmps[k]["entity_category"] for k in ("requests", "errors", "latency", "profiles")} == {"diagnostic"}
    assert cmps["enroll"] == {"p": "button"}  # admin on but no microphone: the enroll entities are removed
    late = Hub(broker.port)  # the old retained configs are gone, the device config is retained
    try:
        late.subscribe("homeassistant/#")
        got = {m.topic: bytes(m.payload) for m in _drain(late, 1.0)}
        assert DEVICE_CONFIG in got and not set(LEGACY) & set(got)
    finally:
        late.close()


def test_events_and_per_kind_state(ha_daemon: DaemonProcess, broker: Broker, hub: Hub, clips: dict[str, list[Path]]) -> None:
    base, a, stranger = ha_daemon.base, clips["vctk-p225"], clips["ls-533"]
    hub.subscribe(f"{base}/event")
    steps = [
        (encode_request("identify", as_clip(stranger[1]), request_id="e1"), "unknown_speaker"),
        (encode_request("identify", as_clip(a[7]), request_id="e2"), "identified"),
        (encode_request("verify_profile", as_clip(a[6]), profile="alice", request_id="e3"), "verified"),
        (encode_request("verify_profile", as_clip(a[6]), profile="bob", request_id="e4"), "rejected"),
    ]
    for payload, expected in steps:
        r = ask(hub, f"{base}/request", payload)
        assert r["ok"], r
        ev = json.loads(hub.wait(lambda m: m.topic == f"{base}/event" and json.loads(m.payload)["request_id"] == r["request_id"], 10).payload)
        assert ev["event_type"] == expected and ev["source"] == "mqtt" and ev["score"] == r["score"], ev
        if expected == "identified":  # then the per-person type, for automations without templates
            ev = json.loads(hub.wait(lambda m: m.topic == f"{base}/event", 5).payload)
            assert ev["event_type"] == "identified_alice" and ev["request_id"] == r["request_id"], ev
    assert ev["profile"] == "bob" and ev["kind"] == "verify"
    late = Hub(broker.port)  # retained per-kind states: verify did not overwrite identify
    try:
        late.subscribe(f"{base}/state/#")
        late.subscribe(f"{base}/state")
        got = {m.topic: json.loads(m.payload) for m in _drain(late, 1.0)}
    finally:
        late.close()
    ident, ver, last = got[f"{base}/state/identify"], got[f"{base}/state/verify"], got[f"{base}/state"]
    assert ident["speaker"] == "alice" and ident["identified"] is True and ident["request_id"] == "e2"
    assert ver["match"] is False and ver["profile"] == "bob" and ver["request_id"] == "e4"
    assert last["event_type"] == "rejected" and last["speaker"] == NO_MATCH and last["speaker"] != "unknown"


def test_ha_birth_reannounces(ha_daemon: DaemonProcess, hub: Hub) -> None:
    hub.subscribe("homeassistant/device/#")
    _drain(hub, 0.5)  # the retained config
    hub.subscribe(f"{ha_daemon.base}/state/#")
    _drain(hub, 0.5)
    hub.publish("homeassistant/status", b"online")
    got = {m.topic: m for m in _drain(hub, 2.0)}
    assert DEVICE_CONFIG in got and not got[DEVICE_CONFIG].retain  # sent again, live
    assert f"{ha_daemon.base}/state/identify" in got  # states re-published for HA
    assert not any(t in LEGACY for t in got)  # no second migration on a birth message


def test_admin_enroll_list_forget(ha_daemon: DaemonProcess, hub: Hub, clips: dict[str, list[Path]]) -> None:
    base, c = ha_daemon.base, clips["ls-533"]
    r = _admin(hub, base, {"type": "list", "requestor_id": "hub-9"})
    assert r["ok"] and [p["name"] for p in r["profiles"]] == ["alice", "bob"], r
    clip = lambda p: {"name": p.name, "audio_b64": __import__("base64").b64encode(p.read_bytes()).decode()}  # noqa: E731
    silence = {"name": "quiet.wav", "audio_b64": __import__("base64").b64encode(_silence_wav()).decode()}
    r = _admin(hub, base, {"type": "enroll", "name": "carol", "request_id": "a1",
                           "clips": [clip(c[0]), silence, clip(c[1])]})
    assert r["ok"] is False and r["error"]["code"] in ("no_speech", "too_short") and r["request_id"] == "a1", r
    assert [x["ok"] for x in r["clips"]] == [True, False, True] and r["clips"][1]["name"] == "quiet.wav"
    r = _admin(hub, base, {"type": "enroll", "name": "carol", "clips": [clip(p) for p in c[:3]]})
    assert r["ok"] and r["profile"]["clips"] == 3 and all(x["ok"] for x in r["clips"]), r
    r = ask(hub, f"{base}/request", encode_request("identify", as_clip(c[4])))
    assert r["speaker"] == "carol", r
    r = _admin(hub, base, {"type": "enroll", "name": "carol", "clips": [clip(c[0])]})
    assert r["ok"] is False and r["error"]["code"] == "profile_error" and "already exists" in r["error"]["message"]
    r = _admin(hub, base, {"type": "forget", "name": "carol"})
    assert r["ok"] and r["forgotten"] == "carol"
    r = _admin(hub, base, {"type": "forget", "name": "carol"})
    assert r["ok"] is False and r["error"]["code"] == "unknown_profile"
    r = _admin(hub, base, {"type": "enroll", "name": "../x", "clips": [clip(c[0])]})
    assert r["ok"] is False and r["error"]["code"] == "profile_error"
    r = _admin(hub, base, {"type": "enroll", "name": "dave", "utterances": 2})
    assert r["ok"] is False and "microphone" in r["error"]["message"]
    r = _admin(hub, base, {"type": "x" * 20000, "request_id": "a8"})  # a hostile type is quoted cut short
    assert r["ok"] is False and r["error"]["code"] == "bad_request" and len(r["error"]["message"]) < 200, r
    # the default answer topic (no response topic, no reply_to) is the admin one, not <base>/response
    hub.subscribe(f"{base}/admin/response")
    hub.publish(f"{base}/admin/request", b'{"type": "list", "request_id": "a9"}')
    r = json.loads(hub.wait(lambda m: m.topic == f"{base}/admin/response", 10).payload)
    assert r["ok"] and r["request_id"] == "a9"
    hub.subscribe(f"{base}/diagnostics")
    diag = json.loads(hub.wait(lambda m: m.topic == f"{base}/diagnostics", 5).payload)
    assert diag["profiles"] == 2 and diag["requests"] >= 6 and diag["errors"] >= 2 and diag["last_latency_ms"] > 0, diag
    log = ha_daemon.log_path.read_text()
    assert "admin enroll carol from 3 clip(s)" in log and "admin forget carol" in log


def test_admin_disabled_is_refused(daemon: DaemonProcess, hub: Hub) -> None:
    r = _admin(hub, daemon.base, {"type": "forget", "name": "alice", "requestor_id": "mallory"})
    assert r["ok"] is False and r["error"]["code"] == "admin_disabled", r
    assert "admin.enabled" in r["error"]["message"]
    r = _admin(hub, daemon.base, {"type": "list"})
    assert r["ok"] is False and r["error"]["code"] == "admin_disabled"
    assert "admin request refused (admin.enabled is false): forget from requestor_id='mallory'" in daemon.log_path.read_text()


def _silence_wav() -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(32000, dtype=np.float32), 16000, format="WAV")
    return buf.getvalue()


def test_enroll_from_ha_with_the_microphone(tmp_path: Path, broker: Broker, int8_model: Path, ha_state: Path,
                                            hub: Hub, clips: dict[str, list[Path]]) -> None:
    """HA's text + number + button: the person speaks into the device's (virtual) microphone, then is identified."""
    import virtual_mic

    reason = virtual_mic.available()
    if reason:
        pytest.skip(f"virtual microphone unavailable: {reason}")
    state = tmp_path / "state"
    shutil.copytree(ha_state / "profiles", state / "profiles")
    with virtual_mic.VirtualMic(16000) as vm:
        mic = {"enabled": True, "device": "pulse", "mode": "identify", "max_utterance_s": 8.0}
        d = DaemonProcess(tmp_path, broker.port, int8_model, state, "mic2",
                          extra={"microphone": mic, "admin": {"enabled": True}}, env_extra=vm.env)
        try:
            base = d.base
            hub.subscribe("homeassistant/device/edgeverify_mic2/config")
            doc = json.loads(hub.wait(lambda m: m.topic.endswith("edgeverify_mic2/config"), 5).payload)
            assert {doc["cmps"][k]["p"] for k in ("enroll_name", "enroll_utterances", "enroll")} == {"text", "number", "button"}
            hub.subscribe(f"{base}/admin/ha/state")
            hub.subscribe(f"{base}/event")
            # hostile values on HA's command topics: a status that says why, never a dead handler
            name_t, count_t = doc["cmps"]["enroll_name"]["command_topic"], doc["cmps"]["enroll_utterances"]["command_topic"]
            for topic, bad, status in ((count_t, b"inf", "invalid utterances"), (count_t, b"1e999", "invalid utterances"),
                                       (count_t, b"nan", "invalid utterances"), (count_t, b"\xff\xfe", "invalid utterances"),
                                       (name_t, b"../../etc", "invalid name"), (name_t, b"\x00" * 5000, "invalid name")):
                hub.publish(topic, bad)
                st = json.loads(hub.wait(lambda m: m.topic == f"{base}/admin/ha/state"
                                         and json.loads(m.payload)["status"] == status, 5).payload)
                hub.publish(name_t, b"")  # back to idle, so that the next wait sees a fresh status
                hub.wait(lambda m: m.topic == f"{base}/admin/ha/state" and json.loads(m.payload)["status"] == "idle", 5)
            hub.publish(name_t, b"erin")
            hub.publish(count_t, b"2")
            hub.wait(lambda m: m.topic == f"{base}/admin/ha/state" and json.loads(m.payload)["utterances"] == 2, 5)
            hub.publish(doc["cmps"]["enroll"]["command_topic"], b"PRESS")
            hub.wait(lambda m: m.topic == f"{base}/admin/ha/state" and json.loads(m.payload)["status"] == "recording", 5)
            erin = clips["ls-533"]
            for p in erin[:2]:
                vm.play(p)
                time.sleep(0.8)
            st = json.loads(hub.wait(lambda m: m.topic == f"{base}/admin/ha/state"
                                     and json.loads(m.payload)["status"] in ("enrolled", "failed"), 30).payload)
            assert st["status"] == "enrolled" and st["last_result"]["profile"]["clips"] == 2, st
            time.sleep(1.0)
            vm.play(erin[5])  # 8 s: the cutter may split it at a pause; a 1 s piece alone can miss
            ev = json.loads(hub.wait(lambda m: m.topic == f"{base}/event"
                                     and json.loads(m.payload)["event_type"] == "identified", 20).payload)
            assert ev["speaker"] == "erin" and ev["source"] == "microphone", json.dumps(ev)
            assert "admin enroll erin from 2 microphone utterance(s)" in d.log_path.read_text()
        finally:
            assert d.stop() == 0, d.log_path.read_text()


def _client(port: int, user: str) -> Hub:
    """A Hub logged in as `user` (password = user name)."""
    return Hub(port, username=user)


def test_readme_acl_limits_admin(tmp_path: Path, int8_model: Path, ha_state: Path, clips: dict[str, list[Path]]) -> None:
    """The mosquitto ACL of docs/security.md, verbatim: only Home Assistant's user may send admin requests."""
    import subprocess

    readme = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    acl = readme.split("```\n# /etc/mosquitto/acl\n", 1)[1].split("```", 1)[0]
    (tmp_path / "acl").write_text(acl)
    pw = tmp_path / "passwd"
    for user in ("edgeverify-kitchen-pi", "homeassistant", "alice-phone"):
        subprocess.run(["mosquitto_passwd", "-b", *([] if pw.exists() else ["-c"]), str(pw), user, user],
                       check=True, capture_output=True)
    b = Broker()
    conf = b.dir / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                    + f"password_file {pw}\nacl_file {tmp_path / 'acl'}\n"
)  # Broker() runs mosquitto as root when we are root (reads the 0700 tmp dir)
    with b:
        d = DaemonProcess(tmp_path, b.port, int8_model, ha_state, "kitchen-pi", extra={"admin": {"enabled": True}},
                          topic_prefix="edgeverify", username="edgeverify-kitchen-pi", password="edgeverify-kitchen-pi")
        phone, ha = _client(b.port, "alice-phone"), _client(b.port, "homeassistant")
        try:
            for h, user in ((phone, "alice-phone"), (ha, "homeassistant")):
                h.subscribe(f"replies/{user}/#")
            admin = b'{"type": "list", "request_id": "acl"}'
            phone.publish("edgeverify/kitchen-pi/admin/request", admin, response_topic="replies/alice-phone/a", correlation=b"1")
            ha.publish("edgeverify/kitchen-pi/admin/request", admin, response_topic="replies/homeassistant/a", correlation=b"2")
            r = json.loads(ha.wait(lambda m: m.topic == "replies/homeassistant/a", 10).payload)
            assert r["ok"] and [p["name"] for p in r["profiles"]] == ["alice", "bob"], r
            phone.publish("edgeverify/kitchen-pi/request", encode_request("identify", as_clip(clips["vctk-p225"][5])),
                          response_topic="replies/alice-phone/i", correlation=b"3")
            r = json.loads(phone.wait(lambda m: m.topic == "replies/alice-phone/i", 10).payload)
            assert r["ok"] and r["speaker"] == "alice", r
            with pytest.raises(TimeoutError):  # the broker dropped the ordinary user's admin request
                phone.wait(lambda m: m.topic == "replies/alice-phone/a", 1.0)
            assert d.log_path.read_text().count("admin list") == 1  # only Home Assistant's arrived
        finally:
            phone.close()
            ha.close()
            assert d.stop() == 0


def test_admin_and_ha_messages_are_acknowledged(daemon: DaemonProcess, hub: Hub, clips: dict[str, list[Path]]) -> None:
    """Manual acks: every message on the admin/HA topics is acknowledged, answered or not. Unacknowledged
    QoS 1 messages fill the broker's in-flight window (mosquitto: 20) and the device would go deaf."""
    base = daemon.base
    for i in range(30):
        hub.publish(f"{base}/admin/ha/enroll_name", f"name{i}".encode())  # ignored: admin disabled
        hub.publish("homeassistant/status", b"online" if i % 10 == 0 else b"offline")
    for i in range(15):
        hub.publish(f"{base}/admin/request", b'{"type": "list"}' if i % 2 else b"[[[[not json")
    r = ask(hub, f"{base}/request", encode_request("identify", as_clip(clips["vctk-p225"][5])), timeout=30)
    assert r["ok"] and r["speaker"] == "alice", r
    assert daemon.proc.poll() is None
