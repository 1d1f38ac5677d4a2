"""MQTT transport: subscriptions, a bounded request queue, one worker, replies, availability, HA discovery.

The paho network thread never runs the model: it only checks the size and enqueues (or answers "busy"
/ "payload_too_large" at once, so nothing is dropped silently). One worker loop -- run in the caller's
thread -- parses, calls the handler and publishes the reply; it also wakes every `tick_s` so the caller
can ping the systemd watchdog, which therefore stops when the loop hangs.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import Config
from .errors import EdgeVerifyError
from .mqtt_ha import HomeAssistantLink
from .protocol import (
    BUSY,
    INTERNAL,
    TOO_LARGE,
    Request,
    Response,
    error_response,
    parse_raw_request,
    parse_request,
    salvage_meta,
)

log = logging.getLogger(__name__)


class Handler(Protocol):
    def handle(self, request: Request) -> Response: ...

    def utterance(self, samples: np.ndarray) -> Optional[Response]: ...


@dataclass
class _Job:
    topic: str = ""
    payload: bytes = b""
    properties: Any = None
    samples: Optional[np.ndarray] = None  # a microphone utterance instead of a request
    task: Any = None  # mqtt_ha._Task: admin work queued behind requests (run() on the worker)


def _user_props(props: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (getattr(props, "UserProperty", None) or [])}


def _valid_topic(t: Any) -> bool:
    return isinstance(t, str) and 0 < len(t) <= 1024 and not any(c in t for c in "#+\0")


class MqttService:
    def __init__(self, config: Config, handler: Handler, model_name: str = "int8") -> None:
        self.config = config
        self.handler = handler
        self.model_name = model_name
        m = config.mqtt
        self.base = f"{m.topic_prefix}/{config.device_id}"
        self.request_topic = f"{self.base}/request"
        self.response_topic = f"{self.base}/response"
        self.event_topic = f"{self.base}/event"
        self.state_topic = f"{self.base}/state"
        self.availability_topic = f"{self.base}/availability"
        self.shared_topic = f"$share/{m.shared_group}/{m.topic_prefix}/request/#" if m.shared_group else None
        self.connected = threading.Event()
        self.handled = 0
        self.errors = 0
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=config.limits.queue_size)
        self._client: Optional[mqtt.Client] = None
        self.ha = HomeAssistantLink(self)  # HA discovery/states/events/diagnostics + admin requests

    # -- connection ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the network thread."""
        m = self.config.mqtt
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=mqtt.MQTTv5,
        )
        c.enable_logger(logging.getLogger("edgeverify.paho"))
        if m.username:
            c.username_pw_set(m.username, m.secret())
        if m.tls or m.ca_file:
            c.tls_set(ca_certs=m.ca_file)
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_s)), max_delay=max(1, int(m.reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c
        log.info("connecting to mqtt://%s:%d as %s", m.host, m.port, self.config.client_id)
        c.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=True)
        c.loop_start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish the retained "offline" and disconnect cleanly (so the broker does not send the will)."""
        c, self._client = self._client, None
        if c is None:
            return
        if self.connected.is_set():
            try:
                c.publish(self.availability_topic, "offline", qos=1, retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline: %s", exc)
        c.disable_logger()  # paho 2.x logs a spurious "not connected" error from its loop after disconnect()
        c.disconnect()
        c.loop_stop()
        self.connected.clear()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt connection refused: %s", reason)
            return
        qos = self.config.mqtt.qos
        subs = [(f"{self.request_topic}/#", qos)] + ([(self.shared_topic, qos)] if self.shared_topic else [])
        client.subscribe(subs)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        self.connected.set()
        self.ha.on_connect(client)
        log.info("mqtt connected; requests on %s", ", ".join(t for t, _ in subs))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if reason.value != 0:
            log.warning("mqtt disconnected (%s); reconnecting with backoff", reason)

    # -- network thread: enqueue only --------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        job = _Job(topic=msg.topic, payload=msg.payload, properties=getattr(msg, "properties", None))
        limit = self.config.limits.max_payload_bytes
        if len(msg.payload) > limit:
            self._reject(job, TOO_LARGE, f"payload is {len(msg.payload)} bytes, over the {limit} byte limit")
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._reject(job, BUSY, f"{self._queue.maxsize} requests already queued; retry later")

    def _reject(self, job: _Job, code: str, message: str) -> None:
        log.warning("rejecting request on %s: %s", job.topic, message)
        self.errors += 1
        kind = self._raw_kind(job.topic)
        meta = salvage_meta(job.payload if code != TOO_LARGE else b"", _user_props(job.properties), kind)
        self._reply(job, error_response(meta, code, message), meta.get("reply_to"))

    def submit_utterance(self, samples: np.ndarray) -> bool:
        """From the microphone thread; False (utterance dropped, logged) when the worker is behind."""
        try:
            self._queue.put_nowait(_Job(samples=samples))
            return True
        except queue.Full:
            log.warning("request queue full: microphone utterance dropped")
            return False

    def submit_task(self, task: Any) -> bool:
        """Admin work for the worker (mqtt_ha); False when the queue is full."""
        try:
            self._queue.put_nowait(_Job(task=task))
            return True
        except queue.Full:
            return False

    def publish_decision(self, body: dict[str, Any], source: str) -> None:
        """One decision (a response body) from source = mqtt | microphone | wyoming: HA event entity
        (<base>/event with event_type), per-kind retained state and the last-decision state. Thread-safe."""
        self.ha.publish_decision(body, source)

    # -- worker ------------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool], on_tick: Callable[[], None], tick_s: float = 1.0) -> None:
        """Process jobs until should_stop(); the job in hand is always finished first."""
        while not should_stop():
            try:
                job: Optional[_Job] = self._queue.get(timeout=tick_s)
            except queue.Empty:
                job = None
            if job is not None:
                self._process(job)
            self.ha.publish_diagnostics()
            on_tick()
        self._drain()

    def _drain(self) -> None:
        """Queued but not started at shutdown: tell the requestors instead of letting them time out."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job.task is not None:
                job.task.abort("service is shutting down; retry later")
            elif job.samples is None:
                self._reject(job, BUSY, "service is shutting down; retry later")

    @staticmethod
    def _raw_kind(topic: str) -> Optional[str]:
        """None for JSON requests (…/request), else the <type> of …/request/<type>."""
        parts = topic.split("/")
        return parts[-1] if len(parts) >= 2 and parts[-2] == "request" else None

    def _process(self, job: _Job) -> None:
        started = time.perf_counter()
        if job.task is not None:
            try:
                job.task.run()
            except Exception:  # a bug must not kill the worker
                log.exception("admin task failed")
            return
        if job.samples is not None:
            try:
                resp = self.handler.utterance(job.samples)
            except Exception:  # a bug must not kill the worker (and with it the watchdog pings)
                log.exception("microphone utterance failed")
                return
            if resp is not None:
                resp.elapsed_ms = 1000 * (time.perf_counter() - started)
                body = resp.to_dict(self.config.device_id)
                self.publish_decision(body, "microphone")
            return
        props = _user_props(job.properties)
        kind = self._raw_kind(job.topic)
        meta: dict[str, Any] = {}
        try:
            req = parse_request(job.payload) if kind is None else parse_raw_request(kind, job.payload, props)
            meta = req.meta()
            meta["reply_to"] = req.reply_to
            resp = self.handler.handle(req)
        except EdgeVerifyError as exc:
            meta = meta or salvage_meta(job.payload, props, kind)
            resp = error_response(meta, exc.code, exc.message)
        except Exception as exc:
            log.exception("request on %s failed", job.topic)
            meta = meta or salvage_meta(job.payload, props, kind)
            resp = error_response(meta, INTERNAL, f"internal error: {type(exc).__name__}")
        resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        self.handled += 1
        if not resp.ok:
            self.errors += 1
        body = self._reply(job, resp, meta.get("reply_to"))
        self.ha.note_latency(resp.elapsed_ms)
        if resp.ok:
            self.publish_decision(body, "mqtt")

    # -- publishing --------------------------------------------------------------------------------

    def _reply(self, job: _Job, resp: Response, reply_to: Optional[str]) -> dict[str, Any]:
        """To the v5 Response Topic (correlation data copied), else JSON reply_to, else <base>/response."""
        body = resp.to_dict(self.config.device_id)
        topic = getattr(job.properties, "ResponseTopic", None)
        out = Properties(PacketTypes.PUBLISH)
        out.ContentType = "application/json"
        corr = getattr(job.properties, "CorrelationData", None)
        if corr is not None:
            out.CorrelationData = corr
        if not _valid_topic(topic):
            topic = reply_to if _valid_topic(reply_to) else self.response_topic
        self._publish(topic, json.dumps(body).encode(), out)
        log.info(
            "%s %s -> %s (%s, %s ms)",
            body.get("type"),
            body.get("request_id"),
            topic,
            "ok" if resp.ok else body["error"]["code"],
            body.get("elapsed_ms"),
        )
        return body

    def _publish(self, topic: str, payload: bytes, props: Optional[Properties] = None, retain: bool = False) -> None:
        c = self._client
        if c is None:
            log.warning("not connected: dropping message for %s", topic)
            return
        info = c.publish(topic, payload, qos=self.config.mqtt.qos, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s queued while offline (rc=%s)", topic, info.rc)

    def publish_event(self, body: dict[str, Any]) -> None:
        self._publish(self.event_topic, json.dumps(body).encode())
