"""Home Assistant over MQTT: discovery, decision events and states, diagnostics, the enroll entities.

* discovery (device-based, with the 0.1 migration) on connect, and again -- with the states -- whenever HA
  announces itself on `<discovery_prefix>/status` = `online` (as Zigbee2MQTT does);
* a decision sink (app.sinks): every decision (MQTT request, microphone, Wyoming) -> event entity +
  per-kind retained state;
* retained diagnostics (requests, errors, last latency, profiles), at most every DIAG_INTERVAL_S;
* HA's enroll text/number/button, which start a microphone enrollment through the admin API (admin_api)
  and follow it as its AdminListener.
Topics and payloads come from ha_discovery (pure functions); this class only publishes them through the
connection's public publish()/subscribe().
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Optional

from paho.mqtt.subscribeoptions import SubscribeOptions

from . import ha_discovery as had
from ..app.admin import AdminRequest
from ..app.counters import Counters
from ..app.decisions import DecisionService
from ..errors import EdgeVerifyError, RequestError
from ..store.config import Config
from ..store.profiles import check_name
from .admin_api import MqttAdmin
from .connection import MqttConnection

log = logging.getLogger(__name__)

DIAG_INTERVAL_S = 10.0  # diagnostics are retained state, not a stream: a request storm publishes one per 10 s
BIRTH_MIN_INTERVAL_S = 2.0  # a flood of "online" on <prefix>/status re-announces at most this often
DEFAULT_UTTERANCES = 3


class HomeAssistantLink:
    def __init__(self, config: Config, connection: MqttConnection, topics: had.Topics, admin: MqttAdmin,
                 service: DecisionService, counters: Counters, model_name: str) -> None:
        self.config = config
        self.connection = connection
        self.topics = topics
        self.admin = admin
        self.service = service
        self.counters = counters
        self.model_name = model_name
        self._states: dict[str, bytes] = {}  # topic -> last retained state payload (re-published on HA birth)
        self._lock = threading.Lock()
        self._diag_sent: Optional[dict[str, Any]] = None
        self._diag_at = 0.0
        self._announced_at = -BIRTH_MIN_INTERVAL_S
        self.enroll_state: dict[str, Any] = {"name": "", "utterances": DEFAULT_UTTERANCES, "status": "idle", "message": ""}
        t, qos = topics, config.mqtt.qos
        # retained commands are never replayed at (re)subscription: an old enroll would run on every reconnect
        commands = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        connection.subscribe([(topic, commands) for topic in (t.ha_enroll_name, t.ha_enroll_utterances, t.ha_enroll_press)],
                             connection.guarded(self._on_enroll_command))
        if t.ha_status:
            connection.subscribe([(t.ha_status, SubscribeOptions(qos=qos))], connection.guarded(self._on_ha_status))
        connection.on_connected(lambda: self.announce(migrate=True))
        admin.add_listener(self)

    @property
    def _enroll_entities(self) -> bool:
        return self.config.admin.enabled and self.config.microphone.enabled

    def announce(self, migrate: bool = False) -> None:
        """Discovery (plus the 0.1 migration on connect), then every state HA should see at once."""
        t = self.topics
        payload = had.device_discovery(t, self.model_name, self._enroll_entities, self.config.admin.max_clips)
        for topic, data, retain in had.discovery_messages(t, payload, migrate):
            self.connection.publish(topic, data, retain=retain)
        with self._lock:
            states = list(self._states.items())
        for topic, data in states:
            self.connection.publish(topic, data, retain=True)
        if self._enroll_entities:
            self._publish_enroll_state()
        self.publish_diagnostics(force=True)

    def _on_ha_status(self, msg: Any, acks: list) -> None:
        now = time.monotonic()
        if bytes(msg.payload[:16]).strip().lower() == b"online" and now - self._announced_at >= BIRTH_MIN_INTERVAL_S:
            self._announced_at = now
            log.info("Home Assistant is online: re-publishing discovery and states")
            self.connection.publish_online()
            self.announce()

    # -- decisions and diagnostics (DecisionSink) ---------------------------------------------------

    def publish_decision(self, body: dict[str, Any], source: str) -> None:
        """Event entity + per-kind state + last-decision state for one decision (thread-safe)."""
        if not body.get("ok", True):
            return  # an error is not a decision; it is counted in the diagnostics
        t = self.topics
        kind, state = had.kind_state(body, source)
        self.connection.publish(t.event, json.dumps(had.event_payload(body, source)).encode())
        states = {t.kind_state(kind): json.dumps(state).encode(), t.state: json.dumps(had.last_state(body, source)).encode()}
        with self._lock:
            self._states.update(states)
        for topic, data in states.items():
            self.connection.publish(topic, data, retain=True)

    def publish_diagnostics(self, force: bool = False) -> None:
        """From the worker loop: when something changed, at most every DIAG_INTERVAL_S (or now if force)."""
        now = time.monotonic()
        if not force and now - self._diag_at < DIAG_INTERVAL_S:
            return
        try:
            profiles = len(self.service.store.list())
        except Exception:  # an unreadable directory
            profiles = 0
        c = self.counters
        doc = had.diagnostics(c.handled, c.errors, c.decisions, c.last_latency_ms, profiles)
        if not force and doc == self._diag_sent:
            return
        self._diag_sent, self._diag_at = doc, now
        self.connection.publish(self.topics.diagnostics, json.dumps(doc).encode(), retain=True)

    # -- HA's enroll entities ----------------------------------------------------------------------

    def _on_enroll_command(self, msg: Any, acks: list) -> None:
        """Network thread: the enroll name / utterances / button entities."""
        t = self.topics
        if not self._enroll_entities:
            log.warning("ignoring %s: admin.enabled and microphone.enabled are needed for enrolling from HA", msg.topic)
            return
        text = bytes(msg.payload[:200]).decode("utf-8", "replace").strip()
        max_clips = self.config.admin.max_clips
        if msg.topic == t.ha_enroll_name:
            try:
                self.enroll_state["name"] = check_name(text) if text else ""
                self._set_status("idle", "")
            except EdgeVerifyError as exc:
                self._set_status("invalid name", exc.message)
        elif msg.topic == t.ha_enroll_utterances:
            try:
                n = int(float(text))
            except (ValueError, OverflowError):  # "nan", "x"; "inf", "1e999"
                n = 0
            if 1 <= n <= max_clips:
                self.enroll_state["utterances"] = n
                self._publish_enroll_state()
            else:
                self._set_status("invalid utterances", f"must be 1-{max_clips}, got {text!r}")
        elif msg.topic == t.ha_enroll_press:
            name = self.enroll_state["name"]
            req = AdminRequest(type="enroll", name=name or None, utterances=int(self.enroll_state["utterances"]),
                               requestor_id="homeassistant", requestor_type="home_assistant")
            if not name:
                self._set_status("failed", "set the enroll name first")
                self.admin.failed(req, RequestError("no name to enroll"))
                return
            self.admin.enroll_from_microphone(req)

    # AdminListener: follow enrollments (from HA's button or an admin request) on the enroll state entity

    def enroll_progress(self, status: str, message: str, name: Optional[str]) -> None:
        self._set_status(status, message, name=name)

    def enroll_answered(self, body: dict[str, Any]) -> None:
        if not self._enroll_entities:
            return
        if body.get("ok"):
            self._set_status("enrolled", f"{body.get('name')} enrolled", name=body.get("name"), result=body)
        else:
            self._set_status("failed", body["error"]["message"], name=body.get("name"), result=body)

    def profiles_changed(self) -> None:
        self.publish_diagnostics(force=True)

    def _set_status(self, status: str, message: str, **extra: Any) -> None:
        self.enroll_state.update(status=status, message=message)
        result = extra.pop("result", None)
        self.enroll_state["last_result"] = None if result is None else {
            k: result.get(k) for k in ("ok", "name", "clips", "profile", "error", "timestamp")
        }
        if extra.get("name"):
            self.enroll_state["last_name"] = extra["name"]
        self._publish_enroll_state()

    def _publish_enroll_state(self) -> None:
        if self._enroll_entities:
            self.connection.publish(self.topics.ha_enroll_state, json.dumps(self.enroll_state).encode(), retain=True)
