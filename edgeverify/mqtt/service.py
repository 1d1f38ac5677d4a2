"""MQTT transport: subscriptions, a bounded request queue, one worker, replies, availability, HA discovery.

The paho network thread never runs the model and never raises: it checks the size, answers redeliveries
from the reply cache, and enqueues (or answers "busy" / "payload_too_large" at once, so nothing is
dropped silently). One worker loop -- run in the caller's thread -- parses (once, bounded), calls the
handler and publishes the reply; it also wakes every `tick_s` so the caller can ping the systemd
watchdog, which therefore stops when the loop hangs (and, via `liveness_problem`, when the network
thread is dead or stuck).

Delivery is at-least-once: a persistent session (clean start off, `mqtt.session_expiry_s`) keeps our
subscriptions and unacknowledged requests on the broker across restarts, and a QoS 1/2 request is
acknowledged (manual ack) only when its reply has been published (delivery.AckLedger). Every topic a
reply goes to passes topics.ReplyPolicy first.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..core.audio import TARGET_RATE
from ..store.config import Config
from .delivery import Ack, AckLedger, CachedReply, ReplyCache, request_key
from ..errors import EdgeVerifyError, RequestError
from .guard import guard_publish, tolerate_bom
from .homeassistant import HomeAssistantLink
from ..app.protocol import (
    BAD_REPLY_TOPIC,
    BUSY,
    INTERNAL,
    TOO_LARGE,
    Request,
    Response,
    error_response,
    load_json,
    parse_raw_request,
    parse_request,
    salvage_meta,
)
from .topics import ReplyPolicy, printable, topic_problem

log = logging.getLogger(__name__)
paho_log = logging.getLogger("edgeverify.paho")

MAX_USER_PROPERTIES = 64  # more are ignored (metadata needs ~10)
NOT_CACHED = (BUSY, INTERNAL)  # transient answers: a retry must be computed again
CACHE_MAX_BYTES = 64 * 1024  # bigger replies (huge correlation data) are not kept: 256 x this at most


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
    acks: list[Ack] = field(default_factory=list)  # (mid, qos) to acknowledge once answered
    received: float = 0.0  # time.monotonic() at arrival
    key: Optional[bytes] = None  # delivery.request_key


def _user_pairs(props: Any) -> list[tuple[str, str]]:
    pairs = getattr(props, "UserProperty", None) or []
    return [(str(k), str(v)) for k, v in list(pairs)[:MAX_USER_PROPERTIES]]


def _user_props(props: Any) -> dict[str, str]:
    return dict(_user_pairs(props))


def _message_topic(msg: mqtt.MQTTMessage) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:  # a broker should never forward this; do not die on it
        return bytes(getattr(msg, "_topic", b"")).decode("utf-8", "replace")


def describe_connect_error(exc: BaseException) -> str:
    """A one-line cause for a failed connection attempt (what an operator needs to fix it)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listening on that host/port?)"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


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
        self.reply_policy = ReplyPolicy(m.topic_prefix, self.response_topic, m.discovery_prefix, tuple(m.reply_topics),
                                        own_replies=(f"{self.base}/admin/response",))
        self.connected = threading.Event()
        self.handled = 0
        self.errors = 0
        self.expired = 0  # requests whose v5 Message Expiry passed while queued (dropped, acked)
        self.duplicates = 0  # redeliveries answered from the cache / merged with the request in hand
        self.refused_replies = 0  # reply topics refused by the policy (answered on the default topic)
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=config.limits.queue_size)
        self._client: Optional[mqtt.Client] = None  # None once stopping: nothing new is published
        self._paho: Optional[mqtt.Client] = None  # kept until disconnected: late acks still go out
        self._net_thread: Optional[threading.Thread] = None
        self._net_beat = time.monotonic()  # last sign of life of the network loop (any packet in/out)
        self._net_error: Optional[str] = None  # last socket error paho reported (the cause of a drop)
        self._conn_state = ""
        self._failures_logged: set[str] = set()  # failure states already logged since the last good connection
        self._online_at = 0.0
        self._stopping = False
        self._lock = threading.Lock()
        self._in_hand: dict[bytes, _Job] = {}  # request_key -> queued or running job
        self.cache = ReplyCache()
        self.acks = AckLedger(self._send_ack)
        self.ha = HomeAssistantLink(self)  # HA discovery/states/events/diagnostics + admin requests

    # -- connection ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the network thread."""
        m = self.config.mqtt
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        c.suppress_exceptions = True  # belt and braces: our callbacks already catch everything
        c.on_log = self._on_log
        if m.username:
            c.username_pw_set(m.username, m.secret())
        if m.tls or m.ca_file or m.certfile:
            c.tls_set(ca_certs=m.ca_file, certfile=m.certfile, keyfile=m.keyfile)
        c.will_set(self.availability_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=max(1, int(m.reconnect_min_s)), max_delay=max(1, int(m.reconnect_max_s)))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self._wrap_reconnect(c)
        tolerate_bom()  # one message paho cannot decode must not become a disconnect loop (mqtt_guard.py)
        guard_publish(c, self._dropped)
        self._client = self._paho = c
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        log.info("connecting to mqtt%s://%s:%d as %s (session expiry %d s)", "s" if m.tls else "", m.host, m.port,
                 self.config.client_id, m.session_expiry_s)
        c.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=m.session_expiry_s == 0, properties=props)
        c.loop_start()
        self._net_thread = getattr(c, "_thread", None)  # paho's network thread: watched by liveness_problem()

    def _wrap_reconnect(self, c: mqtt.Client) -> None:
        """paho swallows the exception of a failed connect attempt; keep its cause for the log."""
        original = c.reconnect

        def reconnect() -> Any:
            try:
                return original()
            except Exception as exc:
                self._set_conn_state(f"cannot connect to {self.config.mqtt.host}:{self.config.mqtt.port}: "
                                     f"{describe_connect_error(exc)}")
                raise

        c.reconnect = reconnect  # type: ignore[method-assign]

    def _set_conn_state(self, text: str, level: int = logging.WARNING) -> None:
        """Log a connection state once per change, not once per retry.

        A failing broker often alternates between causes (a TLS alert, then an EOF on the next try); each
        distinct failure is logged once until a connection succeeds, so the journal does not flip-flop.
        """
        if text == self._conn_state:
            return
        self._conn_state = text
        if level >= logging.WARNING:
            if text in self._failures_logged:
                return
            if len(self._failures_logged) < 64:  # bounded: causes that embed varying text cannot grow it
                self._failures_logged.add(text)
        else:
            self._failures_logged.clear()
        log.log(level, "mqtt: %s", text)

    def stop(self, timeout: float = 3.0) -> None:
        """Publish the retained "offline" and disconnect cleanly (so the broker does not send the will)."""
        self._stopping = True
        c, self._client = self._client, None
        if c is None:
            return
        if self.connected.is_set():
            try:  # the broker answers in order: the replies' PUBACKs (and so our acks) come first
                c.publish(self.availability_topic, "offline", qos=1, retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline: %s", exc)
            deadline = time.monotonic() + timeout
            while self.acks.waiting and time.monotonic() < deadline:
                time.sleep(0.02)
        c.disconnect()
        c.loop_stop()
        self._paho = None
        self.connected.clear()

    @property
    def network_dead(self) -> bool:
        t = self._net_thread
        return t is not None and not t.is_alive() and not self._stopping

    def liveness_problem(self) -> Optional[str]:
        """None while the network loop is alive and making progress, else what is wrong (for the watchdog)."""
        if self.network_dead:
            return "the MQTT network thread has died"
        stale = 2 * self.config.mqtt.keepalive + 10  # paho pings every keepalive s when idle
        age = time.monotonic() - self._net_beat
        if self.connected.is_set() and age > stale:
            return f"no MQTT network activity for {age:.0f} s while connected"
        return None

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        self._net_beat = time.monotonic()
        if level == mqtt.MQTT_LOG_ERR:
            if buf.startswith("Caught exception"):
                paho_log.error("%s", buf)
            else:
                self._net_error = buf
        paho_log.debug("%s", buf)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                self._set_conn_state(f"connection refused by the broker: {reason}", logging.ERROR)
                return
            # retained requests are never replayed at (re)subscription: one would be re-run on every reconnect
            opts = SubscribeOptions(qos=self.config.mqtt.qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            subs = [(f"{self.request_topic}/#", opts)] + ([(self.shared_topic, opts)] if self.shared_topic else [])
            client.subscribe(subs)
            self._publish_online(client)
            self.connected.set()
            self.ha.on_connect(client)
            self._net_error = None
            session = "resumed" if getattr(flags, "session_present", False) else "new"
            self._set_conn_state(f"connected ({session} session); requests on {', '.join(t for t, _ in subs)}",
                                 logging.INFO)
        except Exception:
            log.exception("mqtt on_connect failed")

    def _publish_online(self, client: mqtt.Client) -> None:
        """Retained `online` that expires (v5 Message Expiry, 2 x keepalive) unless refreshed: a broker that
        restarts from its database after a crash (no will sent) cannot keep claiming a daemon that is gone.
        The worker refreshes it (run()), so a hung worker stops claiming too."""
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = 2 * self.config.mqtt.keepalive
        client.publish(self.availability_topic, "online", qos=1, retain=True, properties=props)
        self._online_at = time.monotonic()

    def _refresh_online(self) -> None:
        c = self._client
        if c is not None and self.connected.is_set() and time.monotonic() - self._online_at >= self.config.mqtt.keepalive / 2:
            try:
                self._publish_online(c)
            except Exception:
                log.exception("could not refresh availability")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        try:
            if self._stopping or reason.value == 0:
                return
            cause = f" ({self._net_error})" if self._net_error else ""
            self._set_conn_state(f"disconnected: {reason}{cause}; reconnecting with backoff")
        except Exception:
            log.exception("mqtt on_disconnect failed")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        try:
            self.acks.published(mid)
        except Exception:
            log.exception("mqtt on_publish failed")

    def _dropped(self, topic: str, exc: BaseException) -> None:
        self.errors += 1

    def _send_ack(self, mid: int, qos: int) -> None:
        c = self._paho
        if c is not None:
            c.ack(mid, qos)  # queued while offline is dropped: the broker redelivers, the cache answers

    # -- network thread: enqueue only --------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._receive(msg)
        except Exception:  # never on paho's thread; ack so one poison message cannot block the session
            log.exception("dropping a message on %s that could not be handled", printable(_message_topic(msg)))
            self.errors += 1
            try:
                self.acks.ack_now([(msg.mid, msg.qos)])
            except Exception:
                log.exception("could not acknowledge message %s", msg.mid)

    def _receive(self, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        job = _Job(topic=_message_topic(msg), payload=msg.payload, properties=props, acks=[(msg.mid, msg.qos)],
                   received=time.monotonic())
        limit = self.config.limits.max_payload_bytes
        if len(msg.payload) > limit:
            self._reject(job, TOO_LARGE, f"payload is {len(msg.payload)} bytes, over the {limit} byte limit")
            return
        corr = getattr(props, "CorrelationData", None)
        job.key = request_key(job.topic, job.payload, _user_pairs(props), getattr(props, "ResponseTopic", None), corr)
        # a repeat is the same request only if the broker says so (dup) or the requester identified it
        identified = bool(msg.dup) or corr is not None or b'"request_id"' in job.payload[:65536] or any(
            k == "request_id" for k, _ in _user_pairs(props))
        with self._lock:
            cached = self.cache.get(job.key) if identified else None
            running = self._in_hand.get(job.key) if identified and cached is None else None
            if running is not None:
                running.acks.extend(job.acks)  # acknowledged with the one answer
            elif cached is None:
                self._in_hand[job.key] = job
        if running is not None:
            self.duplicates += 1
            log.info("repeat of a request in hand on %s: answered once", printable(job.topic))
            return
        if cached is not None:
            self.duplicates += 1
            log.info("repeat of an answered request on %s: same reply re-sent to %s", printable(job.topic),
                     printable(cached.topic))
            self._send(cached.topic, cached.payload, cached.correlation, job.acks)
            return
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._forget(job)
            self._reject(job, BUSY, f"{self._queue.maxsize} requests already queued; retry later")

    def _forget(self, job: _Job) -> None:
        if job.key is not None:
            with self._lock:
                if self._in_hand.get(job.key) is job:
                    del self._in_hand[job.key]

    def _reject(self, job: _Job, code: str, message: str) -> None:
        """An immediate error answer (network thread, or shutdown); never raises."""
        try:
            log.warning("rejecting request on %s: %s", printable(job.topic), message)
            self.errors += 1
            kind = self._raw_kind(job.topic)
            meta = salvage_meta(job.payload if code != TOO_LARGE else None, _user_props(job.properties), kind)
            self._reply(job, error_response(meta, code, message), meta.get("reply_to"))
        except Exception:
            log.exception("could not reject request on %s", printable(job.topic))
            self.acks.ack_now(job.acks)

    def submit_utterance(self, samples: np.ndarray) -> bool:
        """From the microphone thread; False (utterance dropped, logged) when the worker is behind."""
        try:
            self._queue.put_nowait(_Job(samples=samples, received=time.monotonic()))
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
                try:
                    self._process(job)
                except Exception:  # a bug must not kill the worker (and with it the watchdog pings)
                    log.exception("request on %s failed", printable(job.topic))
                finally:
                    self._forget(job)
            self._refresh_online()
            try:
                self.ha.publish_diagnostics()
            except Exception:
                log.exception("could not publish diagnostics")
            on_tick()
        self._drain()

    def _drain(self) -> None:
        """Queued but not started at shutdown: with a persistent session they stay unacknowledged, so the
        broker redelivers them to the next start; without one, tell the requestors at once."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            self._forget(job)
            if job.task is not None:
                job.task.abort("service is shutting down; retry later")
            elif job.samples is None and self.config.mqtt.session_expiry_s == 0:
                self._reject(job, BUSY, "service is shutting down; retry later")

    @staticmethod
    def _raw_kind(topic: str) -> Optional[str]:
        """None for JSON requests (…/request), else the <type> of …/request/<type>."""
        parts = topic.split("/")
        return parts[-1] if len(parts) >= 2 and parts[-2] == "request" else None

    def _expired(self, job: _Job) -> bool:
        expiry = getattr(job.properties, "MessageExpiryInterval", None)
        if not isinstance(expiry, int) or time.monotonic() - job.received <= expiry:
            return False
        self.expired += 1
        log.warning("request on %s expired while queued (Message Expiry %d s): dropped", printable(job.topic), expiry)
        self.acks.ack_now(job.acks)
        return True

    def _process(self, job: _Job) -> None:
        started = time.perf_counter()
        if job.task is not None:
            try:
                job.task.run()
            except Exception:  # a bug must not kill the worker
                log.exception("admin task failed")
            return
        if job.samples is not None:
            queued_ms = 1000 * (time.monotonic() - job.received)
            try:
                resp = self.handler.utterance(job.samples)
            except Exception:  # a bug must not kill the worker (and with it the watchdog pings)
                log.exception("microphone utterance failed")
                return
            if resp is not None:
                resp.elapsed_ms = 1000 * (time.perf_counter() - started)
                body = resp.to_dict(self.config.device_id)
                self.publish_decision(body, "microphone")
                # where the time between the cut and the event goes (tests/mic_latency.py reads this)
                log.debug("microphone decision: %.2f s utterance, %.1f ms queued, %.1f ms to decide",
                          job.samples.size / TARGET_RATE, queued_ms, resp.elapsed_ms)
            return
        if self._expired(job):
            return
        props = _user_props(job.properties)
        kind = self._raw_kind(job.topic)
        meta: dict[str, Any] = {}
        parsed: Any = None  # the one parse of a JSON payload, reused for the error reply's metadata
        try:
            if kind is None:
                parsed = load_json(job.payload)
                if not isinstance(parsed, dict):
                    raise RequestError("payload must be a JSON object")
                req = parse_request(parsed)
            else:
                req = parse_raw_request(kind, job.payload, props)
            meta = req.meta()
            meta["reply_to"] = req.reply_to
            refusal = self._reply_refusal(job, req.reply_to)
            if refusal is not None:
                resp = error_response(meta, BAD_REPLY_TOPIC, f"reply topic refused: {refusal}")
            else:
                resp = self.handler.handle(req)
        except EdgeVerifyError as exc:
            meta = meta or salvage_meta(parsed, props, kind)
            resp = error_response(meta, exc.code, exc.message)
        except Exception as exc:
            log.exception("request on %s failed", printable(job.topic))
            meta = meta or salvage_meta(parsed, props, kind)
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

    def _reply_refusal(self, job: _Job, reply_to: Optional[str]) -> Optional[str]:
        requested = getattr(job.properties, "ResponseTopic", None)
        if requested is None:
            requested = reply_to
        return None if requested is None else self.reply_policy.refusal(requested)

    def _reply_topic(self, job: _Job, reply_to: Optional[str]) -> str:
        """The v5 Response Topic, else JSON/user-property reply_to, else <base>/response -- if the policy
        allows it; a refused topic is logged and the default topic used (the request is still answered)."""
        requested = getattr(job.properties, "ResponseTopic", None)
        if requested is None:
            requested = reply_to
        if requested is None:
            return self.response_topic
        refusal = self.reply_policy.refusal(requested)
        if refusal is None:
            return requested
        self.refused_replies += 1
        log.warning("reply topic %s refused (%s); answering on %s", printable(requested), refusal, self.response_topic)
        return self.response_topic

    def _reply(self, job: _Job, resp: Response, reply_to: Optional[str]) -> dict[str, Any]:
        """Publish the answer (correlation data copied), cache it, and acknowledge the request once sent."""
        body = resp.to_dict(self.config.device_id)
        topic = self._reply_topic(job, reply_to)
        corr = getattr(job.properties, "CorrelationData", None)
        payload = json.dumps(body).encode()  # ensure_ascii: lone surrogates from hostile input are escaped
        with self._lock:  # cache before the ack can go out, so a redelivery finds the answer
            size = len(payload) + len(corr or b"")
            if job.key is not None and body.get("error", {}).get("code") not in NOT_CACHED and size <= CACHE_MAX_BYTES:
                self.cache.put(job.key, CachedReply(topic, payload, corr))
            if job.key is not None and self._in_hand.get(job.key) is job:
                del self._in_hand[job.key]
            acks = list(job.acks)
        self._send(topic, payload, corr, acks)
        log.info(
            "%s %s -> %s (%s, %s ms)",
            printable(body.get("type"), 40),
            printable(body.get("request_id"), 80),
            printable(topic),
            "ok" if resp.ok else printable(body["error"]["code"], 40),
            body.get("elapsed_ms"),
        )
        return body

    def _send(self, topic: str, payload: bytes, corr: Optional[bytes], acks: list[Ack]) -> None:
        out = Properties(PacketTypes.PUBLISH)
        out.ContentType = "application/json"
        if corr is not None:
            out.CorrelationData = corr
        self.acks.after_publish(self._publish(topic, payload, out), acks)

    def _publish(self, topic: str, payload: bytes, props: Optional[Properties] = None, retain: bool = False) -> Optional[int]:
        """Publish; the message id to wait for (None: nothing to wait for). Never raises."""
        c = self._client
        if c is None:
            log.warning("not connected: dropping message for %s", printable(topic))
            return None
        problem = topic_problem(topic)
        if problem is not None:  # the policy should have caught it; a malformed packet would loop us
            log.error("not publishing to invalid topic %s: %s", printable(topic), problem)
            return None
        try:
            info = c.publish(topic, payload, qos=self.config.mqtt.qos, retain=retain, properties=props)
        except Exception as exc:
            log.error("publish to %s failed: %s", printable(topic), exc)
            return None
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s queued while offline (rc=%s)", printable(topic), info.rc)
        return info.mid

    def publish_event(self, body: dict[str, Any]) -> None:
        self._publish(self.event_topic, json.dumps(body).encode())
