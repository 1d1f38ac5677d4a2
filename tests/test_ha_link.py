"""Home Assistant and the admin API in-process, against a connection with no broker behind it.

`FakeWire` is MqttConnection with only the transport replaced (publish/start/stop record or do nothing,
deliver() plays the broker): the real subscriptions, callbacks, acknowledgement ledger, worker, admin
use cases and HA link run. The end-to-end versions with mosquitto and a daemon are in test_ha.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgeverify.app.counters import Counters
from edgeverify.app.decisions import DecisionService
from edgeverify.app.sinks import DecisionSinks
from edgeverify.app.worker import ModelWorker
from edgeverify.mqtt.connection import MqttConnection
from edgeverify.mqtt.service import MqttService
from edgeverify.store.config import parse_config
from edgeverify.store.profiles import ProfileStore
from edgeverify.topic_rules import matches

BASE = "edgeverify/hal"


class FakeWire(MqttConnection):
    """The transport of MqttConnection replaced: what would go to the broker is kept in `sent`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, Any, bool]] = []
        self.acked: list[tuple[int, int]] = []
        self._mid = 0

    def start(self) -> None:  # "connected": subscribe callbacks are live, on_connected runs
        self.connected.set()
        for callback in self._on_connected:
            callback()

    def stop(self, timeout: float = 3.0) -> None:
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, retain: bool = False, properties: Any = None) -> Optional[int]:
        self._mid += 1
        self.sent.append((topic, json.loads(payload) if payload[:1] in (b"{", b"[") else payload, retain))
        self.acks.published(self._mid)  # the broker's PUBACK, at once
        return self._mid

    def publish_online(self) -> None:
        self.sent.append((self.availability_topic, b"online", True))

    def _send_ack(self, mid: int, qos: int) -> None:
        self.acked.append((mid, qos))

    def deliver(self, topic: str, payload: bytes, mid: int = 1, qos: int = 1) -> None:
        """An incoming PUBLISH, routed as paho routes it: a subscribe() callback, else the default one."""
        msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
        msg.payload, msg.qos = payload, qos
        for group in self._subscriptions:
            for pattern, _, callback in group:
                if callback is not None and matches(pattern, topic):
                    callback(None, None, msg)
                    return
        self._on_default_message(None, None, msg)

    def wait(self, pred: Callable[[tuple], bool], timeout: float = 10.0) -> tuple:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in list(self.sent):
                if pred(m):
                    return m
            time.sleep(0.01)
        raise AssertionError(f"nothing matching within {timeout} s; sent {[m[0] for m in self.sent]}")


def _enroll(store: ProfileStore, name: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(192)
    store.enroll(name, [centre + 0.1 * rng.standard_normal(192) for _ in range(3)])


@pytest.fixture
def link(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """The MQTT adapter on a FakeWire, its worker running, two synthetic profiles in the store.
    A test marked `@pytest.mark.parametrize("link", [{...}], indirect=True)` adds to the config."""
    extra = getattr(request, "param", {})
    config = parse_config({"device_id": "hal", "state_dir": str(tmp_path),
                           "admin": {"enabled": True, "max_clips": 25}, "microphone": {"enabled": True}, **extra})
    store = ProfileStore(tmp_path)
    for i, name in enumerate(("alice", "bob")):
        _enroll(store, name, i)
    counters = Counters()
    sinks = DecisionSinks(counters)
    worker = ModelWorker(config.limits.queue_size)
    service = DecisionService(None, store)  # type: ignore[arg-type] -- list/forget and HA never use the model
    adapter = MqttService(config, service, worker, counters, sinks, model_name="int8", connection=FakeWire)
    sinks.add(adapter.ha)
    wire = adapter.connection
    assert isinstance(wire, FakeWire)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop.is_set, adapter.tick, 0.05), daemon=True)
    thread.start()
    adapter.start()
    wire.adapter, wire.store = adapter, store  # type: ignore[attr-defined]  (for the tests below)
    yield wire, sinks, counters
    stop.set()
    thread.join(5)


def test_connect_announces_device_discovery_and_diagnostics(link: Any) -> None:
    wire, _, _ = link
    topic, doc, retain = wire.wait(lambda m: m[0] == "homeassistant/device/edgeverify_hal/config")
    assert retain and doc["dev"]["ids"] and any(c.get("p") == "event" for c in doc["cmps"].values()), doc
    _, diag, retain = wire.wait(lambda m: m[0] == f"{BASE}/diagnostics")
    assert retain and diag["profiles"] == 2 and diag["requests"] == 0


def test_admin_list_and_forget_answer_and_update_diagnostics(link: Any) -> None:
    wire, _, counters = link
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "list", "request_id": "l1"}).encode(), mid=7)
    _, body, _ = wire.wait(lambda m: m[0] == f"{BASE}/admin/response" and m[1].get("request_id") == "l1")
    assert body["ok"] and [p["name"] for p in body["profiles"]] == ["alice", "bob"], body
    assert (7, 1) in wire.acked  # acknowledged once answered
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "forget", "name": "bob", "request_id": "f1"}).encode())
    _, body, _ = wire.wait(lambda m: m[0] == f"{BASE}/admin/response" and m[1].get("request_id") == "f1")
    assert body["ok"] and body["forgotten"] == "bob"
    wire.wait(lambda m: m[0] == f"{BASE}/diagnostics" and m[1]["profiles"] == 1 and m[1]["requests"] == 2)
    assert counters.handled == 2 and counters.errors == 0


def test_ha_enroll_entities_check_what_they_are_sent(link: Any) -> None:
    wire, _, _ = link
    wire.deliver(f"{BASE}/admin/ha/enroll_name", "alice\n\x00x".encode())
    _, state, _ = wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/state" and m[1]["status"] == "invalid name")
    wire.deliver(f"{BASE}/admin/ha/enroll_utterances", b"1e999")
    wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/state" and m[1]["status"] == "invalid utterances")
    wire.deliver(f"{BASE}/admin/ha/enroll", b"PRESS")  # no name set: refused, not recorded
    _, state, _ = wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/state" and m[1]["status"] == "failed")
    assert "name" in state["message"]


def test_every_sources_decision_reaches_home_assistant(link: Any) -> None:
    wire, sinks, counters = link
    body = {"ok": True, "type": "identify", "speaker": "alice", "same_speaker": True, "score": 0.7,
            "threshold": 0.3, "elapsed_ms": 12.5, "request_id": "w1"}
    sinks.publish_decision(body, "wyoming")
    _, event, retain = wire.wait(lambda m: m[0] == f"{BASE}/event")
    assert not retain and event["source"] == "wyoming" and event["request_id"] == "w1"
    _, state, retain = wire.wait(lambda m: m[0] == f"{BASE}/state/identify")
    assert retain and state["speaker"] == "alice" and state["identified"] is True
    sinks.publish_decision({"ok": False, "type": "identify", "error": {"code": "x", "message": "y"}}, "mqtt")
    assert counters.decisions == 1 and counters.last_latency_ms == 12.5  # an error is not a decision


def test_enroll_utterances_entity_offers_what_the_device_accepts(link: Any) -> None:
    """HA's number entity had max=10 whatever admin.max_clips said (here 25): HA refused what the device takes."""
    wire, _, _ = link
    _, doc, _ = wire.wait(lambda m: m[0] == "homeassistant/device/edgeverify_hal/config")
    number = doc["cmps"]["enroll_utterances"]
    assert (number["min"], number["max"]) == (1, 25)
    wire.deliver(f"{BASE}/admin/ha/enroll_utterances", b"25")
    wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/state" and m[1]["utterances"] == 25)
    wire.deliver(f"{BASE}/admin/ha/enroll_utterances", b"26")
    _, state, _ = wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/state" and m[1]["status"] == "invalid utterances")
    assert "1-25" in state["message"]


# -- which sources may set HA state (docs/security-trust-model.md) -------------------------------------

ALICE = {"ok": True, "type": "identify", "speaker": "alice", "same_speaker": True, "score": 0.7, "threshold": 0.3,
         "elapsed_ms": 20.0, "request_id": "r1"}
MATCH = {"ok": True, "type": "verify", "same_speaker": True, "score": 0.9, "threshold": 0.3, "elapsed_ms": 30.0,
         "request_id": "v1"}


def _shared_state(wire: FakeWire) -> list[tuple]:
    return [m for m in wire.sent if m[0] == f"{BASE}/event" or m[0].startswith(f"{BASE}/state")]


def test_an_mqtt_request_answers_its_requester_only(link: Any) -> None:
    """Any MQTT client that may send requests made HA's retained Speaker match / Last speaker say alice."""
    wire, sinks, counters = link
    wire.wait(lambda m: m[0] == "homeassistant/device/edgeverify_hal/config")
    sinks.publish_decision(ALICE, "mqtt")
    sinks.publish_decision(MATCH, "mqtt")
    time.sleep(0.05)
    assert _shared_state(wire) == []  # no event, no retained state
    assert counters.decisions == 2 and wire.adapter.ha.health.snapshot()["decisions_per_hour"] == 2
    sinks.publish_decision(ALICE, "microphone")  # the room's own microphone does say who is here
    _, state, retain = wire.wait(lambda m: m[0] == f"{BASE}/state/identify")
    assert retain and state["speaker"] == "alice" and state["source"] == "microphone"
    sinks.publish_decision(MATCH, "wyoming")
    wire.wait(lambda m: m[0] == f"{BASE}/state/verify" and m[1]["match"] is True)


@pytest.mark.parametrize("link", [{"homeassistant": {"trust_mqtt_requests": True}}], indirect=True)
def test_trusted_mqtt_requests_drive_state(link: Any) -> None:
    wire, sinks, _ = link
    sinks.publish_decision(MATCH, "mqtt")
    _, state, _ = wire.wait(lambda m: m[0] == f"{BASE}/state/verify")
    assert state["match"] is True and state["source"] == "mqtt"


# -- per-person event types ----------------------------------------------------------------------------

def _event_types(wire: FakeWire, pred: Callable[[list], bool] = lambda t: True) -> list[str]:
    """The event types of the newest discovery config, once one satisfies pred."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        configs = [m[1] for m in wire.sent if m[0] == "homeassistant/device/edgeverify_hal/config"]
        if configs and pred(configs[-1]["cmps"]["event"]["event_types"]):
            return configs[-1]["cmps"]["event"]["event_types"]
        time.sleep(0.02)
    raise AssertionError(f"no discovery config as expected: {configs[-1:]}")


def test_per_person_event_types_follow_the_profiles(link: Any) -> None:
    wire, sinks, _ = link
    types = _event_types(wire)
    assert types[:4] == ["identified", "unknown_speaker", "verified", "rejected"]  # the generic ones stay
    assert types[4:] == ["identified_alice", "identified_bob"]
    sinks.publish_decision(ALICE, "microphone")
    events = [m[1]["event_type"] for m in wire.sent if m[0] == f"{BASE}/event"]
    assert events == ["identified", "identified_alice"]  # generic first (existing automations), then the person
    # forget over the admin API: discovery re-sent without bob
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "forget", "name": "bob"}).encode())
    assert _event_types(wire, lambda t: "identified_bob" not in t)[4:] == ["identified_alice"]
    # a profile that appears on disk (a copy, a reload) is picked up by the worker's tick
    _enroll(wire.store, "Mary-Ann", 5)
    types = _event_types(wire, lambda t: len(t) == 6)
    mary = [t for t in types if t.startswith("identified_mary_ann_")]
    assert len(mary) == 1 and len(mary[0]) == len("identified_mary_ann_") + 6 and "identified_alice" in types
    # the stranger and a name beyond the list get the generic event only
    wire.sent.clear()
    sinks.publish_decision({**ALICE, "speaker": None, "same_speaker": False}, "microphone")
    sinks.publish_decision({**ALICE, "speaker": "bob"}, "microphone")  # forgotten since
    assert [m[1]["event_type"] for m in wire.sent if m[0] == f"{BASE}/event"] == ["unknown_speaker", "identified"]


@pytest.mark.parametrize("link", [{"homeassistant": {"person_events": 1}}], indirect=True)
def test_per_person_event_types_are_bounded(link: Any) -> None:
    wire, _, _ = link
    assert _event_types(wire)[4:] == ["identified_alice"]  # the oldest; a new profile does not push it out


# -- admin controls, the admin API's transaction/status, health ------------------------------------------

def test_admin_api_echoes_transaction_and_status(link: Any) -> None:
    wire, _, _ = link
    resp = lambda rid: wire.wait(lambda m: m[0] == f"{BASE}/admin/response" and m[1].get("request_id") == rid)[1]  # noqa: E731
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "list", "request_id": "t1", "transaction": "ha-42"}).encode())
    body = resp("t1")
    assert body["status"] == "ok" and body["ok"] is True and body["transaction"] == "ha-42" and body["profiles"]
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "forget", "name": "zed", "request_id": "t2",
                                                       "transaction": 7}).encode())
    body = resp("t2")
    assert body["status"] == "error" and body["ok"] is False and body["transaction"] == 7 and body["error"]["code"]
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "nope", "request_id": "t3",
                                                       "transaction": "x" * 5000}).encode())
    body = resp("t3")
    assert body["status"] == "error" and len(body["transaction"]) == 200
    wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "list", "request_id": "t4",
                                                       "transaction": {"a": 1}}).encode())
    assert "transaction" not in resp("t4")  # only a string or a number is echoed
    for i, raw in enumerate((b"NaN", b"1e999", b"9" * 4000, b"true")):
        wire.deliver(f"{BASE}/admin/request", b'{"type": "list", "request_id": "n%d", "transaction": %s}' % (i, raw))
        body = resp(f"n{i}")
        assert "transaction" not in body and body["status"] in ("ok", "error"), body
    assert not wire.adapter.admin._transactions  # nothing kept once answered


def test_log_level_select_and_restart_button(link: Any) -> None:
    import logging

    wire, _, _ = link
    root = logging.getLogger()
    before = root.level
    try:
        _, doc, _ = wire.wait(lambda m: m[0] == "homeassistant/device/edgeverify_hal/config")
        assert doc["cmps"]["log_level"]["command_topic"].startswith(f"{BASE}/admin/")
        assert doc["cmps"]["restart"]["command_topic"].startswith(f"{BASE}/admin/")
        wire.deliver(f"{BASE}/admin/ha/log_level", b"DEBUG")
        wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/log_level/state" and m[1] == b"debug")
        assert root.getEffectiveLevel() == logging.DEBUG
        wire.deliver(f"{BASE}/admin/ha/log_level", b"verbose\x00")  # refused, the state says what it is
        assert root.getEffectiveLevel() == logging.DEBUG
        root.setLevel(logging.WARNING)  # what a reload does with log_level: warning
        wire.wait(lambda m: m[0] == f"{BASE}/admin/ha/log_level/state" and m[1] == b"warning")
    finally:
        root.setLevel(before)
    ha = wire.adapter.ha
    wire.deliver(f"{BASE}/admin/ha/restart", b"please")
    assert not ha.restart_requested
    wire.deliver(f"{BASE}/admin/ha/restart", b"PRESS")
    assert ha.restart_requested
    wire.adapter.stop()
    assert [m[1] for m in wire.sent if m[0] == f"{BASE}/status"] == [b"running", b"restarting"]


@pytest.mark.parametrize("link", [{"admin": {"enabled": False}}], indirect=True)
def test_no_admin_no_controls(link: Any) -> None:
    wire, _, _ = link
    _, doc, _ = wire.wait(lambda m: m[0] == "homeassistant/device/edgeverify_hal/config")
    assert doc["cmps"]["restart"] == {"p": "button"} and doc["cmps"]["log_level"] == {"p": "select"}
    wire.deliver(f"{BASE}/admin/ha/restart", b"PRESS")
    assert not wire.adapter.ha.restart_requested


def test_health_topic(link: Any) -> None:
    wire, sinks, _ = link
    for ms in (10.0, 20.0, 30.0, 40.0):
        sinks.publish_decision({**ALICE, "elapsed_ms": ms}, "microphone")
    sinks.publish_decision({**ALICE, "speaker": None, "same_speaker": False, "elapsed_ms": 100.0}, "wyoming")
    wire.adapter.ha.publish_health(force=True)
    _, doc, retain = wire.wait(lambda m: m[0] == f"{BASE}/health" and m[1]["decisions_per_hour"] == 5)
    assert retain and doc["rejects_per_hour"] == 1 and doc["latency_ms"] == {"p50": 30.0, "p95": 100.0, "window": 5}
    assert doc["rss_mb"] > 10 and doc["uptime_s"] >= 0 and doc["started"].endswith("+00:00")


def test_health_follows_new_decisions_without_waiting_a_minute(link: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeverify.mqtt.homeassistant as homeassistant

    wire, sinks, _ = link
    monkeypatch.setattr(homeassistant, "DIAG_INTERVAL_S", 0.2)  # 10 s in service
    wire.wait(lambda m: m[0] == f"{BASE}/health")  # the one sent on connect
    sinks.publish_decision(ALICE, "microphone")
    _, doc, _ = wire.wait(lambda m: m[0] == f"{BASE}/health" and m[1]["decisions_per_hour"] == 1, 5)
    assert doc["latency_ms"]["p50"] == 20.0
    count = sum(1 for m in wire.sent if m[0] == f"{BASE}/health")
    time.sleep(0.6)  # nothing new: no more health until HEALTH_INTERVAL_S
    assert sum(1 for m in wire.sent if m[0] == f"{BASE}/health") == count


def test_enroll_status_says_re_enroll_while_profiles_of_another_model_wait(link: Any) -> None:
    """Profiles enrolled with ECAPA under a device now running CAM++ are not scored; HA's Enrollment sensor
    says "re-enroll" (naming them) instead of idle, and goes back to idle once none is left."""
    from types import SimpleNamespace

    from edgeverify.core.model_identity import ModelIdentity

    wire, _, _ = link
    adapter = wire.adapter
    state_topic = f"{BASE}/admin/ha/state"
    running = ModelIdentity("campp", "int8", "0" * 64)
    adapter.ha.service.verifier = SimpleNamespace(model=running)  # what the running model is, nothing else
    adapter.ha.profiles_changed()
    _, body, _ = wire.wait(lambda m: m[0] == state_topic and m[1].get("status") == "re-enroll")
    assert "alice" in body["message"] and "bob" in body["message"] and "re-enroll" in body["message"]
    _, diag, _ = wire.wait(lambda m: m[0] == f"{BASE}/diagnostics" and m[1].get("profiles_other_model") == 2)
    for i, name in enumerate(("alice", "bob")):
        wire.deliver(f"{BASE}/admin/request", json.dumps({"type": "forget", "name": name, "request_id": f"r{i}"}).encode())
        wire.wait(lambda m, i=i: m[0] == f"{BASE}/admin/response" and m[1].get("request_id") == f"r{i}")
    wire.wait(lambda m: m[0] == state_topic and m[1].get("status") == "idle")
