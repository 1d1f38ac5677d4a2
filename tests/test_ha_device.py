"""Home Assistant device hygiene and the trust rule, end to end: `edgeverify run` subprocesses, a real
mosquitto, real recordings. Which sources set HA state; the service status HA shows after a clean stop,
a restart from HA's button and a crash; health; the admin API's transaction/status; the log-level select.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import Broker, Hub  # noqa: E402
from daemon_process import DaemonProcess, as_clip, ask  # noqa: E402

from edgeverify.app.protocol import encode_request  # noqa: E402

RESTART_EXIT_CODE = 75  # what systemd/edgeverify.service restarts on (RestartForceExitStatus=)


def _retained(port: int, *topics: str, seconds: float = 1.0) -> dict[str, bytes]:
    """What a client connecting now is handed for `topics` (retained messages)."""
    late = Hub(port)
    try:
        for t in topics:
            late.subscribe(t)
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                m = late.messages.get(timeout=0.1)
            except Exception:
                continue
            got[m.topic] = bytes(m.payload)
        return got
    finally:
        late.close()


def test_mqtt_requests_answer_their_requester_only(daemon: DaemonProcess, broker: Broker, hub: Hub,
                                                   clips: dict[str, list[Path]]) -> None:
    """Two clips of the requester's own voice turned HA's retained "Speaker match" on; a replayed recording of
    alice made "Last speaker" say alice. Now the requester gets its answer and HA's state does not move."""
    base, a = daemon.base, clips["vctk-p225"]
    watcher = Hub(broker.port)
    try:
        watcher.subscribe(f"{base}/event")
        watcher.subscribe(f"{base}/state/#")
        r = ask(hub, f"{base}/request", encode_request("verify", as_clip(a[2]), as_clip(a[3]), request_id="m1"))
        assert r["ok"] and r["same_speaker"] is True, r
        r = ask(hub, f"{base}/request", encode_request("identify", as_clip(a[7]), request_id="m2"))
        assert r["ok"] and r["speaker"] == "alice", r
        with pytest.raises(TimeoutError):
            m = watcher.wait(lambda m: not m.retain, 1.5)
            raise AssertionError(f"{m.topic} published for an MQTT request: {m.payload[:200]!r}")
    finally:
        watcher.close()
    kept = _retained(broker.port, f"{base}/state", f"{base}/state/#")
    assert all(json.loads(p).get("source") != "mqtt" for p in kept.values()), kept


@pytest.fixture
def admin_daemon(tmp_path: Path, broker: Broker, int8_model: Path, state_dir: Path) -> Any:
    def start() -> DaemonProcess:
        return DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "hyg1", extra={"admin": {"enabled": True}})
    return start


def test_status_after_restart_clean_stop_and_crash(admin_daemon: Any, broker: Broker, hub: Hub) -> None:
    d = admin_daemon()
    base = d.base
    topics = (f"{base}/status", f"{base}/availability")
    try:
        assert _retained(broker.port, *topics) == {topics[0]: b"running", topics[1]: b"online"}
        hub.publish(f"{base}/admin/ha/restart", b"PRESS")  # HA's restart button
        assert d.proc.wait(20) == RESTART_EXIT_CODE
        assert _retained(broker.port, *topics) == {topics[0]: b"restarting", topics[1]: b"offline"}
        assert "restart requested from Home Assistant" in d.log_path.read_text()
    finally:
        d.stop()
    d = admin_daemon()  # what systemd does on exit 75
    assert _retained(broker.port, *topics) == {topics[0]: b"running", topics[1]: b"online"}
    assert d.stop() == 0  # SIGTERM: a clean stop
    assert _retained(broker.port, *topics) == {topics[0]: b"stopped", topics[1]: b"offline"}
    d = admin_daemon()
    d.kill()  # a crash: only the last will speaks
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = _retained(broker.port, *topics, seconds=0.5)
        if got.get(topics[1]) == b"offline":
            break
    assert got == {topics[0]: b"running", topics[1]: b"offline"}  # HA: status unavailable, not "stopped"


def test_health_transaction_and_log_level(admin_daemon: Any, broker: Broker, hub: Hub) -> None:
    d = admin_daemon()
    base = d.base
    try:
        health = json.loads(_retained(broker.port, f"{base}/health")[f"{base}/health"])
        assert 30 < health["rss_mb"] < 1000 and health["uptime_s"] >= 0 and "cpu_temp_c" in health, health
        assert health["latency_ms"]["window"] == 0 and health["decisions_per_hour"] == 0
        # HA's mqtt.publish: no v5 correlation data, so the transaction field is how an answer is matched
        hub.subscribe(f"{base}/admin/response")
        hub.publish(f"{base}/admin/request", json.dumps({"type": "list", "transaction": "ha-1"}).encode())
        r = json.loads(hub.wait(lambda m: m.topic == f"{base}/admin/response", 10).payload)
        assert r["transaction"] == "ha-1" and r["status"] == "ok" and r["ok"] is True and r["profiles"], r
        hub.publish(f"{base}/admin/request", b'{"type": "forget", "name": "nobody", "transaction": 99}')
        r = json.loads(hub.wait(lambda m: m.topic == f"{base}/admin/response", 10).payload)
        assert r["transaction"] == 99 and r["status"] == "error" and r["error"]["code"] == "unknown_profile", r
        hub.subscribe(f"{base}/admin/ha/log_level/state")
        assert hub.wait(lambda m: m.topic.endswith("log_level/state"), 5).payload == b"info"
        hub.publish(f"{base}/admin/ha/log_level", b"debug")
        assert hub.wait(lambda m: m.topic.endswith("log_level/state"), 5).payload == b"debug"
        hub.publish(f"{base}/admin/request", b'{"type": "list"}')
        deadline = time.monotonic() + 5
        while "DEBUG" not in d.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = d.log_path.read_text()
        assert "log level set to debug from Home Assistant" in log and " DEBUG " in log
    finally:
        d.stop()


def test_event_types_follow_profiles_on_disk_and_forget(tmp_path: Path, broker: Broker, int8_model: Path,
                                                        state_dir: Path, hub: Hub) -> None:
    """A profile copied into the state directory (restored from a backup, enrolled with the CLI) gets its
    event type in HA without a restart; one forgotten over the admin API loses it."""
    import shutil

    state = tmp_path / "state"
    shutil.copytree(state_dir / "profiles", state / "profiles")
    d = DaemonProcess(tmp_path, broker.port, int8_model, state, "hyg2", extra={"admin": {"enabled": True}})
    config = "homeassistant/device/edgeverify_hyg2/config"
    types = lambda m: json.loads(m.payload)["cmps"]["event"]["event_types"]  # noqa: E731
    try:
        hub.subscribe(config)
        assert types(hub.wait(lambda m: m.topic == config, 5))[4:] == ["identified_alice", "identified_bob"]
        doc = json.loads((state / "profiles" / "alice.json").read_text())
        doc["name"] = "carol"
        (state / "profiles" / "carol.json").write_text(json.dumps(doc))
        got = types(hub.wait(lambda m: m.topic == config and "identified_carol" in types(m), 10))
        assert sorted(got[4:]) == ["identified_alice", "identified_bob", "identified_carol"]
        r = ask(hub, f"{d.base}/admin/request", b'{"type": "forget", "name": "bob"}')
        assert r["ok"] and r["status"] == "ok", r
        got = types(hub.wait(lambda m: m.topic == config and "identified_bob" not in types(m), 10))
        assert sorted(got[4:]) == ["identified_alice", "identified_carol"]
    finally:
        d.stop()
