"""The admin API over MQTT: enroll / forget / list on `<p>/<d>/admin/request` (app.admin does the work).

A topic of its own, so a broker ACL can limit who may send them. Refusals (admin disabled, too large)
are answered at once on the network thread; the work runs on the app's single model worker. A
microphone enrollment records on a thread of its own (so the worker, and with it the systemd watchdog,
never waits for someone to speak), then enrolls on the worker; one at a time. Home Assistant's enroll
entities start the same microphone enrollment (enroll_from_microphone) and follow it (AdminListener).

Like Zigbee2MQTT's bridge API, every answer carries `status` ("ok" / "error", beside the existing `ok`)
and echoes the request's JSON `transaction` (a string or number), because Home Assistant's mqtt.publish
and most Node-RED flows cannot set MQTT v5 correlation data.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol

from paho.mqtt.subscribeoptions import SubscribeOptions

from ..app.admin import AdminHandler, AdminRequest, parse_admin_request
from ..app.inbox import InboxHandler, is_inbox_type, parse_inbox_request
from ..app.counters import Counters
from ..app.protocol import BUSY, TOO_LARGE, Response, error_response, load_json, salvage_meta
from ..app.worker import ModelWorker, TaskJob
from ..errors import EdgeVerifyError, RequestError
from ..store.config import Config
from .connection import MqttConnection
from .requests import Inbound, MqttRequests, user_props

log = logging.getLogger(__name__)

MAX_TRANSACTION_CHARS = 200  # a longer transaction string is echoed cut to this
MAX_TRANSACTION_NUMBER = 2 ** 53  # numbers beyond what JavaScript (Node-RED) holds exactly are not echoed


def transaction_of(obj: Any) -> Any:
    """The request's `transaction` to echo: a string (cut) or a number; None for anything else."""
    value = obj.get("transaction") if isinstance(obj, dict) else None
    if isinstance(value, str):
        return value[:MAX_TRANSACTION_CHARS]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= MAX_TRANSACTION_NUMBER:
        return value  # NaN, inf and 4000-digit integers are not echoed
    return None


class AdminListener(Protocol):
    """Who follows admin work (Home Assistant's enroll entities and diagnostics)."""

    def enroll_progress(self, status: str, message: str, name: Optional[str]) -> None: ...

    def enroll_answered(self, body: dict[str, Any]) -> None: ...

    def profiles_changed(self) -> None: ...


class MqttAdmin:
    def __init__(self, config: Config, connection: MqttConnection, requests: MqttRequests, admin: AdminHandler,
                 worker: ModelWorker, counters: Counters, request_topic: str, response_topic: str) -> None:
        self.config = config
        self.requests = requests
        self.admin = admin
        self.worker = worker
        self.counters = counters
        self.request_topic = request_topic
        self.response_topic = response_topic
        self._listeners: list[AdminListener] = []
        self._lock = threading.Lock()
        self._recording: Optional[threading.Thread] = None
        self._transactions: dict[int, Any] = {}  # id(job) -> its `transaction`, until answered
        self.inbox: Optional[InboxHandler] = None  # inbox_list / inbox_assign / inbox_clear (attach_inbox)
        # retained commands are never replayed at (re)subscription: an old enroll would run on every reconnect
        opts = SubscribeOptions(qos=config.mqtt.qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        connection.subscribe([(request_topic, opts)], connection.guarded(self._on_request))

    def add_listener(self, listener: AdminListener) -> None:
        self._listeners.append(listener)

    def attach_inbox(self, inbox: Optional[InboxHandler]) -> None:
        """Answer the inbox requests with this handler (None: they are refused as unknown types)."""
        self.inbox = inbox

    # -- network thread ----------------------------------------------------------------------------

    def _on_request(self, msg: Any, acks: list) -> None:
        """Answer refusals at once, queue the real work for the worker."""
        job = Inbound(topic=msg.topic, payload=msg.payload, properties=getattr(msg, "properties", None))
        job.acks, acks[:] = list(acks), []  # acknowledged once the answer is published
        limit = self.requests.max_payload_bytes
        parsed: Any = None
        if len(msg.payload) <= limit:
            try:
                parsed = load_json(msg.payload)
            except EdgeVerifyError:
                parsed = None
        meta = salvage_meta(parsed if isinstance(parsed, dict) else b"", user_props(job.properties))
        self._transactions[id(job)] = transaction_of(parsed)
        reply_to = meta.get("reply_to") or self.response_topic
        refusal: Optional[tuple[str, str]] = None
        try:
            self.admin.check_enabled(f"{meta.get('type')} from requestor_id={meta.get('requestor_id')!r}")
        except EdgeVerifyError as exc:
            refusal = (exc.code, exc.message)
        if refusal is None and len(msg.payload) > limit:
            refusal = (TOO_LARGE, f"payload is {len(msg.payload)} bytes, over the {limit} byte limit")
        if refusal is not None:
            self.counters.add("errors")
            self._reply(job, error_response(meta, *refusal), reply_to)
            return
        self._submit(job, lambda: self._run(job, meta), meta, reply_to)

    def _submit(self, job: Inbound, work: Callable[[], None], meta: dict[str, Any], reply_to: str) -> None:
        def abort(message: str) -> None:
            self._reply(job, error_response(meta, BUSY, message), reply_to)

        if not self.worker.submit(TaskJob(work, abort)):
            self.counters.add("errors")
            abort(f"{self.worker.capacity} requests already queued; retry later")

    # -- worker ------------------------------------------------------------------------------------

    def _run(self, job: Inbound, meta: dict[str, Any]) -> None:
        """Parse and carry out; microphone enrollments continue on a recording thread."""
        started = time.perf_counter()
        reply_to = meta.get("reply_to") or self.response_topic
        payload: Any = job.payload
        if self.inbox is not None:
            payload = self._run_inbox(job, meta, reply_to, started)
            if payload is None:
                return
        try:
            req = parse_admin_request(payload, self.config.admin.max_clips)
        except EdgeVerifyError as exc:
            log.info("admin request rejected: %s (requestor_id=%r)", exc.message, meta.get("requestor_id"))
            self._answer(job, error_response(meta, exc.code, exc.message), reply_to, started)
            return
        reply_to = req.reply_to or self.response_topic
        if req.type == "enroll" and req.utterances:
            self.enroll_from_microphone(req, job, reply_to)
            return
        resp = self.admin.handle(req)
        self._answer(job, resp, reply_to, started)
        if resp.ok and req.type != "list":
            self._changed()

    def _run_inbox(self, job: Inbound, meta: dict[str, Any], reply_to: str, started: float) -> Any:
        """Answer an inbox request (None); anything else is handed back for the admin parser: the object
        parsed from the payload (parsed once), or the payload itself when it is not JSON."""
        assert self.inbox is not None
        try:
            obj = load_json(job.payload)
        except EdgeVerifyError:
            return job.payload  # the admin parser says what is wrong
        if not isinstance(obj, dict):
            return job.payload
        if not is_inbox_type(obj):
            return obj
        try:
            req = parse_inbox_request(obj)
        except EdgeVerifyError as exc:
            log.info("admin inbox request rejected: %s", exc.message)
            self._answer(job, error_response(meta, exc.code, exc.message), reply_to, started)
            return None
        resp = self.inbox.handle(req)
        self._answer(job, resp, req.reply_to or reply_to, started)
        if resp.ok and req.type == "inbox_assign":
            self._changed()
        return None

    def enroll_from_microphone(self, req: AdminRequest, job: Optional[Inbound] = None,
                               reply_to: Optional[str] = None) -> None:
        """Record on a thread of its own, then enroll on the worker; one microphone enrollment at a time.
        The answer goes to `reply_to` (default: the admin response topic)."""
        job = job if job is not None else Inbound()
        reply_to = reply_to or self.response_topic
        with self._lock:
            busy = self._recording is not None and self._recording.is_alive()
            if not busy:
                self._recording = threading.Thread(
                    target=self._record, args=(job, req, reply_to), name="edgeverify-enroll", daemon=True
                )
        if busy:
            self._answer(job, self.admin.failed(req, RequestError("a microphone enrollment is already running")), reply_to)
            return
        self._progress("recording", f"say {req.utterances} sentence(s), {req.name}", req.name)
        assert self._recording is not None
        self._recording.start()

    def failed(self, req: AdminRequest, exc: EdgeVerifyError) -> None:
        """A request refused before it reached the worker (logged like any admin request)."""
        self.admin.failed(req, exc)

    def _record(self, job: Inbound, req: AdminRequest, reply_to: str) -> None:
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
        self._progress("enrolling", f"{len(utterances)} utterance(s) recorded", req.name)

        def work() -> None:
            self._answer(job, self.admin.enroll_samples(req, utterances), reply_to, started)
            self._changed()

        self._submit(job, work, req.meta(), reply_to)

    def _answer(self, job: Inbound, resp: Response, reply_to: str, started: Optional[float] = None) -> None:
        if started is not None:
            resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        self.counters.answered(resp.ok, "admin")
        body = self._reply(job, resp, reply_to)
        if body.get("type") == "enroll":
            for listener in self._listeners:
                listener.enroll_answered(body)

    def _reply(self, job: Inbound, resp: Response, reply_to: str) -> dict[str, Any]:
        """Every admin answer: `status` and the echoed `transaction` added, then published."""
        transaction = self._transactions.pop(id(job), None)
        resp.meta = {**resp.meta, "status": "ok" if resp.ok else "error"}
        if transaction is not None:
            resp.meta["transaction"] = transaction
        return self.requests.reply(job, resp, reply_to)

    def _progress(self, status: str, message: str, name: Optional[str]) -> None:
        for listener in self._listeners:
            listener.enroll_progress(status, message, name)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener.profiles_changed()
