"""The MQTT side of Home Assistant and of admin requests, beside MqttService (which owns the connection).

* discovery (device-based, with the 0.1 migration) on connect, and again -- with the states -- whenever HA
  announces itself on `<discovery_prefix>/status` = `online` (as Zigbee2MQTT does);
* every decision (MQTT request, microphone, Wyoming) -> event entity + per-kind retained state;
* retained diagnostics (requests, errors, last latency, profiles), at most every DIAG_INTERVAL_S;
* admin requests on `<p>/<d>/admin/request` and HA's enroll text/number/button, which run on the service's
  single worker (the model is used by one thread); microphone recording happens on a thread of its own so
  the worker (and with it the systemd watchdog) never waits for someone to speak.
Topics and payloads come from ha_discovery (pure functions); the requests themselves from admin.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from paho.mqtt.subscribeoptions import SubscribeOptions

from . import ha_discovery as had
from ..app.admin import AdminHandler, AdminRequest, parse_admin_request
from ..errors import EdgeVerifyError, RequestError
from ..store.profiles import check_name
from ..app.protocol import BUSY, TOO_LARGE, Response, error_response, salvage_meta

if TYPE_CHECKING:
    from .service import MqttService

log = logging.getLogger(__name__)

DIAG_INTERVAL_S = 10.0  # diagnostics are retained state, not a stream: a request storm publishes one per 10 s
BIRTH_MIN_INTERVAL_S = 2.0  # a flood of "online" on <prefix>/status re-announces at most this often
DEFAULT_UTTERANCES = 3


class _Task:
    """A job for the service's worker: run() there; abort() when it is dropped at shutdown."""

    def __init__(self, run: Callable[[], None], abort: Callable[[str], None]) -> None:
        self.run = run
        self.abort = abort


class HomeAssistantLink:
    def __init__(self, service: "MqttService") -> None:
        self.service = service
        cfg = service.config
        self.topics = had.Topics(service.base, cfg.mqtt.discovery_prefix, cfg.device_id)
        self.admin = AdminHandler(service.handler, cfg.admin)
        self.decisions = 0
        self.last_latency_ms: Optional[float] = None
        self._states: dict[str, bytes] = {}  # topic -> last retained state payload (re-published on HA birth)
        self._lock = threading.Lock()
        self._diag_sent: Optional[dict[str, Any]] = None
        self._diag_at = 0.0
        self._recording: Optional[threading.Thread] = None
        self._announced_at = -BIRTH_MIN_INTERVAL_S
        self.enroll_state: dict[str, Any] = {"name": "", "utterances": DEFAULT_UTTERANCES, "status": "idle", "message": ""}

    @property
    def _enroll_entities(self) -> bool:
        cfg = self.service.config
        return cfg.admin.enabled and cfg.microphone.enabled

    # -- connection ------------------------------------------------------------------------------

    def on_connect(self, client: Any) -> None:
        """Subscribe HA's status and the admin topics (each with its own callback), then announce."""
        t, qos = self.topics, self.service.config.mqtt.qos
        subs = [t.admin_request, t.ha_enroll_name, t.ha_enroll_utterances, t.ha_enroll_press]
        for topic in subs:
            client.message_callback_add(topic, self._guarded(self._on_admin_message))
        if t.ha_status:
            client.message_callback_add(t.ha_status, self._guarded(self._on_ha_status))
            subs.append(t.ha_status)
        # retained commands are never replayed at (re)subscription: an old enroll would run on every reconnect
        admin = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(topic, SubscribeOptions(qos=qos) if topic == t.ha_status else admin) for topic in subs])
        self.announce(migrate=True)

    def announce(self, migrate: bool = False) -> None:
        """Discovery (plus the 0.1 migration on connect), then every state HA should see at once."""
        t = self.topics
        payload = had.device_discovery(t, self.service.model_name, self._enroll_entities)
        for topic, data, retain in had.discovery_messages(t, payload, migrate):
            self.service._publish(topic, data, retain=retain)
        with self._lock:
            states = list(self._states.items())
        for topic, data in states:
            self.service._publish(topic, data, retain=True)
        if self._enroll_entities:
            self._publish_enroll_state()
        self.publish_diagnostics(force=True)

    def _guarded(self, handle: Callable[[Any, Any], None]) -> Callable[[Any, Any, Any], None]:
        """A paho callback that never raises on the network thread and always acknowledges (manual acks:
        an unacknowledged message would be redelivered at every reconnect and block the receive window)."""

        def callback(client: Any, userdata: Any, msg: Any) -> None:
            acks = [(msg.mid, msg.qos)]
            try:
                handle(client, msg, acks)
            except Exception:
                log.exception("dropping a message on an admin/HA topic that could not be handled")
                self.service.errors += 1
            finally:
                if acks:  # not handed on to a reply (which acknowledges once published)
                    self.service.acks.ack_now(acks)

        return callback

    def _on_ha_status(self, client: Any, msg: Any, acks: list) -> None:
        now = time.monotonic()
        if bytes(msg.payload[:16]).strip().lower() == b"online" and now - self._announced_at >= BIRTH_MIN_INTERVAL_S:
            self._announced_at = now
            log.info("Home Assistant is online: re-publishing discovery and states")
            self.service._publish_online(client)
            self.announce()

    # -- decisions and diagnostics ------------------------------------------------------------------

    def publish_decision(self, body: dict[str, Any], source: str) -> None:
        """Event entity + per-kind state + last-decision state for one decision (thread-safe)."""
        if not body.get("ok", True):
            return  # an error is not a decision; it is counted in the diagnostics
        t = self.topics
        kind, state = had.kind_state(body, source)
        self.service._publish(t.event, json.dumps(had.event_payload(body, source)).encode())
        states = {t.kind_state(kind): json.dumps(state).encode(), t.state: json.dumps(had.last_state(body, source)).encode()}
        with self._lock:
            self._states.update(states)
            self.decisions += 1
            if body.get("elapsed_ms") is not None:
                self.last_latency_ms = float(body["elapsed_ms"])
        for topic, data in states.items():
            self.service._publish(topic, data, retain=True)

    def note_latency(self, elapsed_ms: Optional[float]) -> None:
        if elapsed_ms is not None:
            with self._lock:
                self.last_latency_ms = float(elapsed_ms)

    def publish_diagnostics(self, force: bool = False) -> None:
        """From the worker loop: when something changed, at most every DIAG_INTERVAL_S (or now if force)."""
        now = time.monotonic()
        if not force and now - self._diag_at < DIAG_INTERVAL_S:
            return
        try:
            profiles = len(self.service.handler.store.list())
        except Exception:  # a handler without a store (tests) or an unreadable directory
            profiles = 0
        s = self.service
        doc = had.diagnostics(s.handled, s.errors, self.decisions, self.last_latency_ms, profiles)
        if not force and doc == self._diag_sent:
            return
        self._diag_sent, self._diag_at = doc, now
        s._publish(self.topics.diagnostics, json.dumps(doc).encode(), retain=True)

    # -- admin requests --------------------------------------------------------------------------

    def _on_admin_message(self, client: Any, msg: Any, acks: list) -> None:
        """Network thread: answer refusals at once, queue the real work for the worker."""
        from .service import _Job, _user_props

        t = self.topics
        job = _Job(topic=msg.topic, payload=msg.payload, properties=getattr(msg, "properties", None))
        if msg.topic == t.admin_request:
            job.acks, acks[:] = list(acks), []  # acknowledged once the answer is published
            limit = self.service.config.limits.max_payload_bytes
            meta = salvage_meta(b"" if len(msg.payload) > limit else msg.payload, _user_props(job.properties))
            reply_to = meta.get("reply_to") or t.admin_response
            refusal: Optional[tuple[str, str]] = None
            try:
                self.admin.check_enabled(f"{meta.get('type')} from requestor_id={meta.get('requestor_id')!r}")
            except EdgeVerifyError as exc:
                refusal = (exc.code, exc.message)
            if refusal is None and len(msg.payload) > limit:
                refusal = (TOO_LARGE, f"payload is {len(msg.payload)} bytes, over the {limit} byte limit")
            if refusal is not None:
                self.service.errors += 1
                self.service._reply(job, error_response(meta, *refusal), reply_to)
                return
            self._submit(job, lambda: self._run_admin(job, meta), meta, reply_to)
            return
        if not self._enroll_entities:
            log.warning("ignoring %s: admin.enabled and microphone.enabled are needed for enrolling from HA", msg.topic)
            return
        text = bytes(msg.payload[:200]).decode("utf-8", "replace").strip()
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
            if 1 <= n <= self.service.config.admin.max_clips:
                self.enroll_state["utterances"] = n
                self._publish_enroll_state()
            else:
                self._set_status("invalid utterances", f"must be 1-{self.service.config.admin.max_clips}, got {text!r}")
        elif msg.topic == t.ha_enroll_press:
            name = self.enroll_state["name"]
            req = AdminRequest(type="enroll", name=name or None, utterances=int(self.enroll_state["utterances"]),
                               requestor_id="homeassistant", requestor_type="home_assistant")
            if not name:
                self._set_status("failed", "set the enroll name first")
                self.admin.failed(req, RequestError("no name to enroll"))
                return
            self._record_then_enroll(_Job(), req, t.admin_response)

    def _submit(self, job: Any, run: Callable[[], None], meta: dict[str, Any], reply_to: str) -> None:
        def abort(message: str) -> None:
            self.service._reply(job, error_response(meta, BUSY, message), reply_to)

        if not self.service.submit_task(_Task(run, abort)):
            self.service.errors += 1
            abort(f"{self.service._queue.maxsize} requests already queued; retry later")

    def _run_admin(self, job: Any, meta: dict[str, Any]) -> None:
        """Worker: parse and carry out; microphone enrollments continue on a recording thread."""
        started = time.perf_counter()
        reply_to = meta.get("reply_to") or self.topics.admin_response
        try:
            req = parse_admin_request(job.payload, self.service.config.admin.max_clips)
        except EdgeVerifyError as exc:
            log.info("admin request rejected: %s (%s)", exc.message, meta.get("requestor_id"))
            self._answer(job, error_response(meta, exc.code, exc.message), reply_to, started)
            return
        reply_to = req.reply_to or self.topics.admin_response
        if req.type == "enroll" and req.utterances:
            self._record_then_enroll(job, req, reply_to)
            return
        resp = self.admin.handle(req)
        self._answer(job, resp, reply_to, started)
        if resp.ok and req.type != "list":
            self.publish_diagnostics(force=True)

    def _record_then_enroll(self, job: Any, req: AdminRequest, reply_to: str) -> None:
        """Record on a thread of its own, then enroll on the worker; one microphone enrollment at a time."""
        with self._lock:
            if self._recording is not None and self._recording.is_alive():
                busy = True
            else:
                busy = False
                self._recording = threading.Thread(
                    target=self._record, args=(job, req, reply_to), name="edgeverify-enroll", daemon=True
                )
        if busy:
            self._answer(job, self.admin.failed(req, RequestError("a microphone enrollment is already running")), reply_to)
            return
        self._set_status("recording", f"say {req.utterances} sentence(s), {req.name}", name=req.name)
        assert self._recording is not None
        self._recording.start()

    def _record(self, job: Any, req: AdminRequest, reply_to: str) -> None:
        started = time.perf_counter()
        try:
            utterances = self.admin.record(req)
        except EdgeVerifyError as exc:
            self._answer(job, self.admin.failed(req, exc), reply_to, started)
            return
        except Exception as exc:  # a bug must not go unanswered
            log.exception("microphone enrollment failed")
            self._answer(job, self.admin.failed(req, EdgeVerifyError(f"internal error: {type(exc).__name__}")), reply_to, started)
            return
        self._set_status("enrolling", f"{len(utterances)} utterance(s) recorded", name=req.name)

        def run() -> None:
            self._answer(job, self.admin.enroll_samples(req, utterances), reply_to, started)
            self.publish_diagnostics(force=True)

        self._submit(job, run, req.meta(), reply_to)

    def _answer(self, job: Any, resp: Response, reply_to: str, started: Optional[float] = None) -> None:
        if started is not None:
            resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        self.service.handled += 1
        if not resp.ok:
            self.service.errors += 1
        body = self.service._reply(job, resp, reply_to)
        if body.get("type") == "enroll" and self._enroll_entities:
            if resp.ok:
                self._set_status("enrolled", f"{body.get('name')} enrolled", name=body.get("name"), result=body)
            else:
                self._set_status("failed", body["error"]["message"], name=body.get("name"), result=body)

    # -- HA enroll entities' state ------------------------------------------------------------------

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
            self.service._publish(self.topics.ha_enroll_state, json.dumps(self.enroll_state).encode(), retain=True)
