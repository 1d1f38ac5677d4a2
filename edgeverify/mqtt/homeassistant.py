"""Home Assistant over MQTT: discovery, decision events and states, diagnostics, the enroll entities.

* discovery (device-based, with the 0.1 migration) on connect, and again -- with the states -- whenever HA
  announces itself on `<discovery_prefix>/status` = `online` (as Zigbee2MQTT does);
* a decision sink (app.sinks): a decision from a source that may say who is here (app.sinks.drives_presence:
  the microphone, admitted Wyoming clients; MQTT requests only with homeassistant.trust_mqtt_requests) ->
  event entity (generic type, then identified_<name>) + per-kind retained state; every decision feeds health;
* per-person event types kept in step with the profiles: discovery is re-sent when the set changes
  (admin enroll/forget, HA's enroll button, profiles changed on disk -- checked on every worker tick);
* health (<base>/health) and the service status (<base>/status: running / stopped / restarting);
* for admins (admin.enabled, on admin/ha/ topics): a restart button and a log-level select;
* retained diagnostics (requests handled from every source, errors, last latency, profiles), at most every
  DIAG_INTERVAL_S;
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
from ..app.admin import REENROLL_STATUS, AdminRequest, reenroll_status
from ..app.counters import Counters
from ..app.decisions import DecisionService
from ..app.health import Health
from ..app.model import check_profiles
from ..app.sinks import drives_presence
from ..errors import EdgeVerifyError, RequestError
from ..store.config import Config
from ..store.profiles import check_name
from .admin_api import MqttAdmin
from .connection import MqttConnection

log = logging.getLogger(__name__)

DIAG_INTERVAL_S = 10.0  # diagnostics are retained state, not a stream: a request storm publishes one per 10 s
HEALTH_INTERVAL_S = 60.0  # uptime, memory, latency: a minute apart is what a dashboard needs (Frigate's default)
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
        self.health = Health()
        self._health_at = -HEALTH_INTERVAL_S
        self._health_decisions = 0
        self._persons: Optional[tuple[str, ...]] = None  # the per-person event types' names last announced
        self._log_level_sent: Optional[str] = None
        self.restart_requested = False  # the restart button: the daemon stops and exits with RESTART_EXIT_CODE
        t, qos = topics, config.mqtt.qos
        # retained commands are never replayed at (re)subscription: an old enroll would run on every reconnect
        commands = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        connection.subscribe([(topic, commands) for topic in (t.ha_enroll_name, t.ha_enroll_utterances, t.ha_enroll_press)],
                             connection.guarded(self._on_enroll_command))
        if config.admin.enabled:
            connection.subscribe([(topic, commands) for topic in (t.ha_restart, t.ha_log_level)],
                                 connection.guarded(self._on_control))
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
        self.connection.publish(t.status, had.STATUS_RUNNING.encode(), retain=True)
        self._announce_discovery(self._person_names(), migrate)
        with self._lock:
            states = list(self._states.items())
        for topic, data in states:
            self.connection.publish(topic, data, retain=True)
        if self._enroll_entities:
            self._sync_reenroll()
            self._publish_enroll_state()
        if self.config.admin.enabled:
            self._publish_log_level()
        self.publish_diagnostics(force=True)
        self.publish_health(force=True)

    def _announce_discovery(self, persons: tuple[str, ...], migrate: bool = False) -> None:
        with self._lock:
            self._persons = persons
        payload = had.device_discovery(self.topics, self.model_name, self._enroll_entities, self.config.admin.max_clips,
                                       person_names=persons, admin_controls=self.config.admin.enabled,
                                       cpu_temperature=self.health.temperature_file is not None)
        for topic, data, retain in had.discovery_messages(self.topics, payload, migrate):
            self.connection.publish(topic, data, retain=retain)

    def _person_names(self) -> tuple[str, ...]:
        """The profiles that get their own event type: the oldest homeassistant.person_events of them (a new
        profile never pushes an older one's type out, so existing automations keep working)."""
        limit = self.config.homeassistant.person_events
        if limit <= 0:
            return ()
        try:
            profiles = self.service.store.list()
        except Exception:  # an unreadable directory: keep what HA has
            return self._persons or ()
        ordered = sorted(profiles, key=lambda p: (p.created, p.name))
        if len(ordered) > limit:
            log.debug("%d profiles: only the oldest %d get a per-person event type", len(ordered), limit)
        return tuple(p.name for p in ordered[:limit])

    def sync_persons(self) -> None:
        """Re-send discovery when the per-person event types changed (enroll, forget, profiles on disk)."""
        persons = self._person_names()
        with self._lock:
            same = persons == self._persons or self._persons is None  # None: not announced yet (connect does it)
        if not same and self.connection.connected.is_set():
            log.info("profiles changed: re-sending discovery with %d per-person event type(s)", len(persons))
            self._announce_discovery(persons)

    def publish_stopped(self) -> None:
        """Before a clean disconnect: `stopped` (or `restarting`), so HA tells it from a crash (last will only)."""
        status = had.STATUS_RESTARTING if self.restart_requested else had.STATUS_STOPPED
        self.connection.publish(self.topics.status, status.encode(), retain=True)

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
        event = had.event_payload(body, source)
        self.health.decided(body.get("elapsed_ms"), event["event_type"] in ("unknown_speaker", "rejected"))
        if not drives_presence(source, self.config.homeassistant.trust_mqtt_requests):
            return  # answered to its requester only (docs/security-trust-model.md)
        t = self.topics
        kind, state = had.kind_state(body, source)
        self.connection.publish(t.event, json.dumps(event).encode())
        speaker = body.get("speaker")
        with self._lock:
            persons = self._persons or ()
        if event["event_type"] == "identified" and speaker in persons:  # only a type HA was told about
            person = {**event, "event_type": had.person_event_type(speaker)}
            self.connection.publish(t.event, json.dumps(person).encode())
        states = {t.kind_state(kind): json.dumps(state).encode(), t.state: json.dumps(had.last_state(body, source)).encode()}
        with self._lock:
            self._states.update(states)
        for topic, data in states.items():
            self.connection.publish(topic, data, retain=True)

    def publish_diagnostics(self, force: bool = False) -> None:
        """From the worker loop: when something changed, at most every DIAG_INTERVAL_S (or now if force)."""
        now = time.monotonic()
        if not force:
            self.publish_health()
            self.sync_persons()  # profiles changed on disk (a reload, a copy) reach HA's event types too (a stat)
            if self.config.admin.enabled and self.connection.connected.is_set():
                self._publish_log_level(if_changed=True)  # a reload applies log_level from the config again
        if not force and now - self._diag_at < DIAG_INTERVAL_S:
            return
        try:
            profiles = len(self.service.store.list())
            verifier = self.service.verifier
            other = 0 if verifier is None else len(check_profiles(self.service.store, verifier.model).other_model)
        except Exception:  # an unreadable directory
            profiles, other = 0, 0
        c = self.counters
        doc = had.diagnostics(c.handled, c.errors, c.decisions, c.last_latency_ms, profiles, other,
                              c.requests_by_source())
        if not force and doc == self._diag_sent:
            return
        self._diag_sent, self._diag_at = doc, now
        self.connection.publish(self.topics.diagnostics, json.dumps(doc).encode(), retain=True)

    def publish_health(self, force: bool = False) -> None:
        """<base>/health (retained) every HEALTH_INTERVAL_S, after new decisions every DIAG_INTERVAL_S, or now
        if force (the latency sensors should not wait a minute for the first decisions)."""
        now = time.monotonic()
        age = now - self._health_at
        decided = self.health.decisions != self._health_decisions
        if not force and age < HEALTH_INTERVAL_S and not (decided and age >= DIAG_INTERVAL_S):
            return
        self._health_at, self._health_decisions = now, self.health.decisions
        doc = self.health.snapshot()
        self.connection.publish(self.topics.health, json.dumps(doc).encode(), retain=True)

    # -- admin controls: restart, log level ---------------------------------------------------------

    def _on_control(self, msg: Any, acks: list) -> None:
        """Network thread: HA's restart button and log-level select (admin/ha/ topics: the admin ACL)."""
        text = bytes(msg.payload[:32]).decode("utf-8", "replace").strip()
        if msg.topic == self.topics.ha_restart:
            if text != "PRESS":
                log.warning("ignoring restart command %r (expected PRESS)", text[:16])
                return
            log.warning("restart requested from Home Assistant: stopping after the request in hand")
            self.restart_requested = True
        elif msg.topic == self.topics.ha_log_level:
            level = text.lower()
            if level not in had.LOG_LEVELS:
                log.warning("ignoring log level %r (expected one of %s)", text[:16], ", ".join(had.LOG_LEVELS))
            else:
                logging.getLogger().setLevel(level.upper())
                log.warning("log level set to %s from Home Assistant (log_level in the config applies again on "
                            "reload or restart)", level)
            self._publish_log_level()

    def _publish_log_level(self, if_changed: bool = False) -> None:
        """The select's state; if_changed: only when it differs from the last one sent (a reload set it)."""
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        if if_changed and level == self._log_level_sent:
            return
        self._log_level_sent = level
        self.connection.publish(self.topics.ha_log_level_state, level.encode(), retain=True)

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
            done = "re-enrolled (voiceprint replaced)" if body.get("replaced") else "enrolled"
            self._set_status("enrolled", f"{body.get('name')} {done}", name=body.get("name"), result=body)
        else:
            self._set_status("failed", body["error"]["message"], name=body.get("name"), result=body)

    def profiles_changed(self) -> None:
        self.sync_persons()
        self.publish_diagnostics(force=True)
        if self._enroll_entities and self._sync_reenroll():
            self._publish_enroll_state()

    def _sync_reenroll(self) -> bool:
        """While profiles of another model wait to be enrolled again, HA's enroll status says "re-enroll"
        (with which ones) instead of idle; back to idle once every profile is scored. True if it changed."""
        notice = reenroll_status(self.service)
        status = self.enroll_state.get("status")
        if notice and status in ("idle", REENROLL_STATUS) and self.enroll_state.get("message") != notice:
            self.enroll_state.update(status=REENROLL_STATUS, message=notice)
            return True
        if not notice and status == REENROLL_STATUS:
            self.enroll_state.update(status="idle", message="")
            return True
        return False

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
