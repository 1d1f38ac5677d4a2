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


@pytest.fixture
def link(tmp_path: Path) -> Any:
    """The MQTT adapter on a FakeWire, its worker running, two synthetic profiles in the store."""
    config = parse_config({"device_id": "hal", "state_dir": str(tmp_path),
                           "admin": {"enabled": True, "max_clips": 25}, "microphone": {"enabled": True}})
    store = ProfileStore(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("alice", "bob"):
        centre = rng.standard_normal(192)
        store.enroll(name, [centre + 0.1 * rng.standard_normal(192) for _ in range(3)])
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
