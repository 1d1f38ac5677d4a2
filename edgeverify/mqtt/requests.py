"""MQTT requests: receive (size check, de-dup, queue) on the network thread, answer on the model worker.

The network thread never runs the model and never raises: it checks the size, answers redeliveries from
the reply cache, and queues a RequestJob on the app's worker (or answers "busy" / "payload_too_large" at
once, so nothing is dropped silently). The worker parses (once, bounded), calls the decision service and
publishes the reply.

Delivery is at-least-once: a persistent session (clean start off, `mqtt.session_expiry_s`) keeps our
subscriptions and unacknowledged requests on the broker across restarts, and a QoS 1/2 request is
acknowledged (manual ack) only when its reply has been published (delivery.AckLedger). Every topic a
reply goes to passes topics.ReplyPolicy first.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..app.counters import Counters
from ..app.protocol import (
    BAD_REPLY_TOPIC,
    BUSY,
    CAPTURE_DISABLED,
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
from ..app.sinks import DecisionSinks
from ..app.worker import LOCAL, NETWORK, ModelWorker
from ..errors import EdgeVerifyError, RequestError
from ..store.config import Config
from .connection import PACKET_ALLOWANCE, MqttConnection
from .delivery import Ack, CachedReply, ReplyCache, request_key
from .topics import ReplyPolicy, printable

log = logging.getLogger(__name__)

MAX_USER_PROPERTIES = 64  # more are ignored (metadata needs ~10)
NOT_CACHED = (BUSY, INTERNAL)  # transient answers: a retry must be computed again
CACHE_MAX_BYTES = 64 * 1024  # bigger replies (huge correlation data) are not kept: 256 x this at most


class Handler(Protocol):
    """What answers a request (app.decisions.DecisionService)."""

    def handle(self, request: Request) -> Response: ...

    def capture_samples(self, request: Request) -> Any: ...

    def decide_capture(self, request: Request, samples: Any) -> Response: ...


def user_pairs(props: Any) -> list[tuple[str, str]]:
    """A message's v5 user properties (at most MAX_USER_PROPERTIES), as strings."""
    pairs = getattr(props, "UserProperty", None) or []
    return [(str(k), str(v)) for k, v in list(pairs)[:MAX_USER_PROPERTIES]]


def user_props(props: Any) -> dict[str, str]:
    return dict(user_pairs(props))


def message_topic(msg: mqtt.MQTTMessage) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:  # a broker should never forward this; do not die on it
        return bytes(getattr(msg, "_topic", b"")).decode("utf-8", "replace")


@dataclass
class Inbound:
    """A received message to answer: where it came from, its v5 properties and what to acknowledge."""

    topic: str = ""
    payload: bytes = b""
    properties: Any = None
    acks: list[Ack] = field(default_factory=list)  # (mid, qos) to acknowledge once answered
    received: float = 0.0  # time.monotonic() at arrival
    key: Optional[bytes] = None  # delivery.request_key (None: not de-duplicated)


_JSON_FIELD = {key: re.compile(rb'"' + key.encode() + rb'"\s*:\s*"((?:[^"\\]|\\.){1,512})"')
               for key in ("requestor_id", "reply_to")}


def _json_field(payload: bytes, key: str) -> Optional[str]:
    """A string field of a JSON request found without parsing it (the network thread must not parse
    megabytes): the first `"key": "value"` in its first 64 KiB (metadata comes before the audio in any
    sensible request; a linear scan of that much is cheap whatever it holds). Only used to pick a queue."""
    m = _JSON_FIELD[key].search(payload, 0, 65536)
    return None if m is None else m.group(1).decode("utf-8", "replace")


def requester_of(topic: str, payload: bytes, props: Any) -> str:
    """Whose turn a request takes in the worker's queue: the requestor_id it carries (v5 user property, or
    the JSON field), else its reply topic without the last level (requesters use one reply namespace and
    vary the last level), else "". Both are claims: see docs/security.md for what that cannot tell apart."""
    rid = user_props(props).get("requestor_id")
    if rid is None and MqttRequests._raw_kind(topic) is None:
        rid = _json_field(payload, "requestor_id")
    if rid:
        return "id:" + rid[:256]
    reply = getattr(props, "ResponseTopic", None)
    if reply is None and MqttRequests._raw_kind(topic) is None:
        reply = _json_field(payload, "reply_to")
    if reply is None:
        reply = user_props(props).get("reply_to")
    if reply:
        return "topic:" + reply.rsplit("/", 1)[0][:256]
    return ""


@dataclass
class RequestJob:
    """A request on <base>/request or <base>/request/<type>, for the model worker (network lane)."""

    requests: "MqttRequests"
    inbound: Inbound
    requester: str = ""
    lane: str = NETWORK

    def run(self) -> None:
        later = False
        try:
            later = self.requests.process(self.inbound)
        finally:
            if not later:  # a capture in progress stays in hand: a redelivery merges with it
                self.requests.forget(self.inbound)

    def abort(self, reason: str) -> None:
        """Shutdown: with a persistent session it stays unacknowledged and the broker redelivers it to the
        next start; without one, tell the requestor at once."""
        self.requests.forget(self.inbound)
        if self.requests.config.mqtt.session_expiry_s == 0:
            self.requests.reject(self.inbound, BUSY, reason)

    def refuse(self, reason: str) -> None:
        """Dropped from a full queue for another requester: "busy" now (a retry is welcome later)."""
        self.requests.forget(self.inbound)
        self.requests.reject(self.inbound, BUSY, reason)


@dataclass
class CaptureJob:
    """A capture's recorded samples, for the worker: the device's own microphone, so the local lane."""

    requests: "MqttRequests"
    inbound: Inbound
    request: Request
    meta: dict[str, Any]
    started: float
    samples: Any
    lane: str = LOCAL

    def run(self) -> None:
        try:
            self.requests.decide_capture(self.inbound, self.request, self.meta, self.started, self.samples)
        finally:
            self.requests.forget(self.inbound)

    def abort(self, reason: str) -> None:
        self.requests.forget(self.inbound)
        self.requests.reply(self.inbound, error_response(self.meta, BUSY, reason), self.meta.get("reply_to"))


class MqttRequests:
    def __init__(self, config: Config, connection: MqttConnection, handler: Handler, worker: ModelWorker,
                 counters: Counters, sinks: DecisionSinks, base: str) -> None:
        m = config.mqtt
        self.config = config
        self.connection = connection
        self.handler = handler
        self.worker = worker
        self.counters = counters
        self.sinks = sinks
        self.max_payload_bytes = config.limits.max_payload_bytes
        self.request_topic = f"{base}/request"
        self.response_topic = f"{base}/response"
        self.shared_topic = f"$share/{m.shared_group}/{m.topic_prefix}/request/#" if m.shared_group else None
        self.reply_policy = ReplyPolicy(m.topic_prefix, self.response_topic, m.discovery_prefix, tuple(m.reply_topics),
                                        own_replies=(f"{base}/admin/response",))
        self.cache = ReplyCache()
        self._lock = threading.Lock()
        self._in_hand: dict[bytes, Inbound] = {}  # request_key -> queued or running request
        self._capturing: Optional[threading.Thread] = None  # the one capture recording, if any
        self.allow_capture = m.allow_capture  # live on reload (MqttService.reconfigure)
        # retained requests are never replayed at (re)subscription: one would be re-run on every reconnect
        opts = SubscribeOptions(qos=m.qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        subs = [(f"{self.request_topic}/#", opts)] + ([(self.shared_topic, opts)] if self.shared_topic else [])
        connection.subscribe(subs)
        connection.set_default_callback(self._on_message)

    def set_max_payload_bytes(self, limit: int) -> None:
        """limits.max_payload_bytes on reload: a lower limit applies at once (checked here); a higher one
        only after a restart, because the broker goes on discarding packets over the Maximum Packet Size
        announced when we connected (a CONNECT property: it changes only with a new connection, and a
        reconnect just for this would drop in-flight acknowledgements)."""
        ceiling = self.connection.max_packet_size - PACKET_ALLOWANCE
        if limit > ceiling:
            log.warning("reload: limits.max_payload_bytes %d is over the %d announced to the broker at start-up; "
                        "larger requests are discarded by the broker until a restart", limit, ceiling)
        self.max_payload_bytes = limit

    # -- network thread: enqueue only --------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.receive(msg)
        except Exception:  # never on paho's thread; ack so one poison message cannot block the session
            log.exception("dropping a message on %s that could not be handled", printable(message_topic(msg)))
            self.counters.add("errors")
            try:
                self.connection.acks.ack_now([(msg.mid, msg.qos)])
            except Exception:
                log.exception("could not acknowledge message %s", msg.mid)

    def receive(self, msg: mqtt.MQTTMessage) -> None:
        """Network thread: refuse, answer from the cache, merge with the same request in hand, or queue."""
        props = getattr(msg, "properties", None)
        job = Inbound(topic=message_topic(msg), payload=msg.payload, properties=props, acks=[(msg.mid, msg.qos)],
                      received=time.monotonic())
        limit = self.max_payload_bytes
        if len(msg.payload) > limit:
            self.reject(job, TOO_LARGE, f"payload is {len(msg.payload)} bytes, over the {limit} byte limit")
            return
        corr = getattr(props, "CorrelationData", None)
        job.key = request_key(job.topic, job.payload, user_pairs(props), getattr(props, "ResponseTopic", None), corr)
        # a repeat is the same request only if the broker says so (dup) or the requester identified it
        identified = bool(msg.dup) or corr is not None or b'"request_id"' in job.payload[:65536] or any(
            k == "request_id" for k, _ in user_pairs(props))
        with self._lock:
            cached = self.cache.get(job.key) if identified else None
            running = self._in_hand.get(job.key) if identified and cached is None else None
            if running is not None:
                running.acks.extend(job.acks)  # acknowledged with the one answer
            elif cached is None:
                self._in_hand[job.key] = job
        if running is not None:
            self.counters.add("duplicates")
            log.info("repeat of a request in hand on %s: answered once", printable(job.topic))
            return
        if cached is not None:
            self.counters.add("duplicates")
            log.info("repeat of an answered request on %s: same reply re-sent to %s", printable(job.topic),
                     printable(cached.topic))
            self._send(cached.topic, cached.payload, cached.correlation, job.acks)
            return
        who = requester_of(job.topic, job.payload, props)
        if not self.worker.submit(RequestJob(self, job, who)):
            self.forget(job)
            self.reject(job, BUSY, f"{self.worker.queued(who)} request(s) of this requester and "
                                   f"{self.worker.queued()} in all already queued; retry later")

    def forget(self, job: Inbound) -> None:
        if job.key is not None:
            with self._lock:
                if self._in_hand.get(job.key) is job:
                    del self._in_hand[job.key]

    def reject(self, job: Inbound, code: str, message: str) -> None:
        """An immediate error answer (network thread, or shutdown); never raises."""
        try:
            log.warning("rejecting request on %s: %s", printable(job.topic), message)
            self.counters.add("errors")
            kind = self._raw_kind(job.topic)
            meta = salvage_meta(job.payload if code != TOO_LARGE else None, user_props(job.properties), kind)
            self.reply(job, error_response(meta, code, message), meta.get("reply_to"))
        except Exception:
            log.exception("could not reject request on %s", printable(job.topic))
            self.connection.acks.ack_now(job.acks)

    # -- worker ------------------------------------------------------------------------------------

    @staticmethod
    def _raw_kind(topic: str) -> Optional[str]:
        """None for JSON requests (…/request), else the <type> of …/request/<type>."""
        parts = topic.split("/")
        return parts[-1] if len(parts) >= 2 and parts[-2] == "request" else None

    def _expired(self, job: Inbound) -> bool:
        expiry = getattr(job.properties, "MessageExpiryInterval", None)
        if not isinstance(expiry, int) or time.monotonic() - job.received <= expiry:
            return False
        self.counters.add("expired")
        log.warning("request on %s expired while queued (Message Expiry %d s): dropped", printable(job.topic), expiry)
        self.connection.acks.ack_now(job.acks)
        return True

    def process(self, job: Inbound) -> bool:
        """Worker: parse once, decide, reply; a decision also goes to the sinks (Home Assistant).
        True when the answer comes later (a capture recording on its own thread)."""
        started = time.perf_counter()
        if self._expired(job):
            return False
        props = user_props(job.properties)
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
            elif req.type == "capture":
                resp = self._capture_refusal(meta)
                if resp is None:
                    self._start_capture(job, req, meta, started)
                    return True
            else:
                resp = self.handler.handle(req)
        except EdgeVerifyError as exc:
            meta = meta or salvage_meta(parsed, props, kind)
            resp = error_response(meta, exc.code, exc.message)
        except Exception as exc:
            log.exception("request on %s failed", printable(job.topic))
            meta = meta or salvage_meta(parsed, props, kind)
            resp = error_response(meta, INTERNAL, f"internal error: {type(exc).__name__}")
        self._finish(job, resp, meta, started)
        return False

    def _finish(self, job: Inbound, resp: Response, meta: dict[str, Any], started: float) -> None:
        resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        self.counters.answered(resp.ok)
        body = self.reply(job, resp, meta.get("reply_to"))
        self.counters.latency(resp.elapsed_ms)
        if resp.ok:
            self.sinks.publish_decision(body, "mqtt")

    # -- capture: the room microphone, recorded off the worker ---------------------------------------

    def _capture_refusal(self, meta: dict[str, Any]) -> Optional[Response]:
        if not self.allow_capture:
            log.warning("capture refused (mqtt.allow_capture is off) for requestor_id=%s",
                        printable(meta.get("requestor_id"), 80))
            return error_response(meta, CAPTURE_DISABLED, "capture (recording from the room microphone) is "
                                                          "disabled on this device (mqtt.allow_capture: false)")
        with self._lock:
            if self._capturing is not None and self._capturing.is_alive():
                return error_response(meta, BUSY, "a capture is already recording; retry later")
        return None

    def _start_capture(self, job: Inbound, req: Request, meta: dict[str, Any], started: float) -> None:
        """Record on a thread of its own (the worker, and with it the watchdog, never waits for someone to
        speak), then decide on the worker's local lane; one capture at a time."""
        log.info("capture: recording from the microphone for requestor_id=%s", printable(req.requestor_id, 80))
        thread = threading.Thread(target=self._record, args=(job, req, meta, started), name="edgeverify-capture",
                                  daemon=True)
        with self._lock:
            self._capturing = thread
        thread.start()

    def _record(self, job: Inbound, req: Request, meta: dict[str, Any], started: float) -> None:
        try:
            samples = self.handler.capture_samples(req)
        except EdgeVerifyError as exc:
            self._finish(job, error_response(meta, exc.code, exc.message), meta, started)
            return
        except Exception as exc:  # a bug must not go unanswered
            log.exception("capture failed")
            self._finish(job, error_response(meta, INTERNAL, f"internal error: {type(exc).__name__}"), meta, started)
            return
        decide = CaptureJob(self, job, req, meta, started, samples)
        if not self.worker.submit(decide):
            decide.abort("the device is busy; retry later")

    def decide_capture(self, job: Inbound, req: Request, meta: dict[str, Any], started: float,
                       samples: Any) -> None:
        """Worker: the decision on recorded samples, answered like any request."""
        try:
            resp = self.handler.decide_capture(req, samples)
        except EdgeVerifyError as exc:
            resp = error_response(meta, exc.code, exc.message)
        except Exception as exc:
            log.exception("capture decision failed")
            resp = error_response(meta, INTERNAL, f"internal error: {type(exc).__name__}")
        self._finish(job, resp, meta, started)

    # -- publishing --------------------------------------------------------------------------------

    def _reply_refusal(self, job: Inbound, reply_to: Optional[str]) -> Optional[str]:
        requested = getattr(job.properties, "ResponseTopic", None)
        if requested is None:
            requested = reply_to
        return None if requested is None else self.reply_policy.refusal(requested)

    def _reply_topic(self, job: Inbound, reply_to: Optional[str]) -> str:
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
        self.counters.add("refused_replies")
        log.warning("reply topic %s refused (%s); answering on %s", printable(requested), refusal, self.response_topic)
        return self.response_topic

    def reply(self, job: Inbound, resp: Response, reply_to: Optional[str]) -> dict[str, Any]:
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
        self.connection.acks.after_publish(self.connection.publish(topic, payload, properties=out), acks)
