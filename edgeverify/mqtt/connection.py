"""The paho connection: connect/reconnect, availability (retained, expiring, last will), publish, subscribe.

A small Communicator: publish(), subscribe() and stop() are all the rest of the MQTT adapter uses; nobody
else touches the paho client. Subscriptions are registered once and re-made on every (re)connect, each
with its own callback (or the default one, for the request topics that a shared subscription also
delivers). Manual acknowledgement: delivery.AckLedger sends a QoS 1/2 ack only once the answer is out.

The paho network thread never runs the model and never raises: callbacks are wrapped by their owners.
`liveness_problem()` says when that thread is dead or stuck (the daemon stops the watchdog pings then).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..app.counters import Counters
from ..store.config import Config
from ..topic_rules import topic_problem
from .delivery import AckLedger
from .guard import guard_publish, tolerate_bom
from .topics import printable

log = logging.getLogger(__name__)
paho_log = logging.getLogger("edgeverify.paho")

MessageCallback = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]

# A PUBLISH is its payload plus the topic (at most 64 KiB) and its properties (user properties,
# correlation data, response topic): what we accept of those on top of limits.max_payload_bytes.
PACKET_ALLOWANCE = 1024 * 1024
MQTT_MAX_PACKET = 268_435_455  # the protocol's own limit (a 4-byte remaining length)


def max_packet_size(max_payload_bytes: int) -> int:
    """The v5 Maximum Packet Size announced in CONNECT: the broker discards, for us, any message bigger
    than this (MQTT 5 3.1.2.25; mosquitto logs "Dropping too large outgoing PUBLISH") -- also one
    queued in our persistent session, so a message we could not hold is never delivered, now or later."""
    return min(MQTT_MAX_PACKET, max_payload_bytes + PACKET_ALLOWANCE)


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


class MqttConnection:
    def __init__(self, config: Config, availability_topic: str, counters: Counters) -> None:
        self.config = config
        self.availability_topic = availability_topic
        self.counters = counters
        self.connected = threading.Event()
        self.acks = AckLedger(self._send_ack)
        self._subscriptions: list[list[tuple[str, Any, Optional[MessageCallback]]]] = []
        self._on_connected: list[Callable[[], None]] = []
        self._default: Optional[MessageCallback] = None
        self._client: Optional[mqtt.Client] = None  # None once stopping: nothing new is published
        self._paho: Optional[mqtt.Client] = None  # kept until disconnected: late acks still go out
        self._net_thread: Optional[threading.Thread] = None
        self._net_beat = time.monotonic()  # last sign of life of the network loop (any packet in/out)
        self._net_error: Optional[str] = None  # last socket error paho reported (the cause of a drop)
        self._conn_state = ""
        self._failures_logged: set[str] = set()  # failure states already logged since the last good connection
        self._online_at = 0.0
        self._stopping = False
        self._session_present = False
        self._suback_pending: set[int] = set()  # SUBACKs still awaited for this connection
        self.max_packet_size = max_packet_size(config.limits.max_payload_bytes)  # fixed at start()

    # -- what the rest of the adapter uses --------------------------------------------------------

    def subscribe(self, subscriptions: list[tuple[str, Any]], callback: Optional[MessageCallback] = None) -> None:
        """Subscribe (topic filter, SubscribeOptions) pairs now and at every reconnect, as one SUBSCRIBE.
        `callback` gets their messages; None: the default callback (set_default_callback)."""
        self._subscriptions.append([(topic, opts, callback) for topic, opts in subscriptions])

    def set_default_callback(self, callback: MessageCallback) -> None:
        """Messages no subscribe() callback claims (the request topics, also under $share)."""
        self._default = callback

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Called (network thread) after every successful (re)connect, once subscribed and online."""
        self._on_connected.append(callback)

    def guarded(self, handle: Callable[[Any, list], None]) -> MessageCallback:
        """A paho callback for handle(msg, acks) that never raises on the network thread and always
        acknowledges (manual acks: an unacknowledged message would be redelivered at every reconnect and
        block the receive window) -- unless `handle` took the acks over (emptied the list) for its reply."""

        def callback(client: Any, userdata: Any, msg: Any) -> None:
            acks = [(msg.mid, msg.qos)]
            try:
                handle(msg, acks)
            except Exception:
                log.exception("dropping a message on an admin/HA topic that could not be handled")
                self.counters.add("errors")
            finally:
                if acks:
                    self.acks.ack_now(acks)

        return callback

    def publish(self, topic: str, payload: bytes, retain: bool = False,
                properties: Optional[Properties] = None) -> Optional[int]:
        """Publish at mqtt.qos; the message id to wait for (None: nothing to wait for). Never raises."""
        c = self._client
        if c is None:
            log.warning("not connected: dropping message for %s", printable(topic))
            return None
        problem = topic_problem(topic)
        if problem is not None:  # the policy should have caught it; a malformed packet would loop us
            log.error("not publishing to invalid topic %s: %s", printable(topic), problem)
            return None
        try:
            info = c.publish(topic, payload, qos=self.config.mqtt.qos, retain=retain, properties=properties)
        except Exception as exc:
            log.error("publish to %s failed: %s", printable(topic), exc)
            return None
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("publish to %s queued while offline (rc=%s)", printable(topic), info.rc)
        return info.mid

    def publish_online(self) -> None:
        """Retained `online` that expires (v5 Message Expiry, 2 x keepalive) unless refreshed: a broker that
        restarts from its database after a crash (no will sent) cannot keep claiming a daemon that is gone.
        The worker loop refreshes it (refresh_online), so a hung worker stops claiming too."""
        c = self._client
        if c is None:
            return
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = 2 * self.config.mqtt.keepalive
        c.publish(self.availability_topic, "online", qos=1, retain=True, properties=props)
        self._online_at = time.monotonic()

    def refresh_online(self) -> None:
        if self._client is not None and self.connected.is_set() and \
                time.monotonic() - self._online_at >= self.config.mqtt.keepalive / 2:
            try:
                self.publish_online()
            except Exception:
                log.exception("could not refresh availability")

    # -- life cycle --------------------------------------------------------------------------------

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
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_default_message
        c.on_publish = self._on_publish
        for group in self._subscriptions:
            for topic, _, callback in group:
                if callback is not None:
                    c.message_callback_add(topic, callback)
        self._wrap_reconnect(c)
        tolerate_bom()  # one message paho cannot decode must not become a disconnect loop (guard.py)
        guard_publish(c, self._dropped)
        self._client = self._paho = c
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        self.max_packet_size = max_packet_size(self.config.limits.max_payload_bytes)
        props.MaximumPacketSize = self.max_packet_size
        log.info("connecting to mqtt%s://%s:%d as %s (session expiry %d s, maximum packet %d bytes)",
                 "s" if m.tls else "", m.host, m.port, self.config.client_id, m.session_expiry_s,
                 self.max_packet_size)
        c.connect_async(m.host, m.port, keepalive=m.keepalive, clean_start=m.session_expiry_s == 0, properties=props)
        c.loop_start()
        self._net_thread = getattr(c, "_thread", None)  # paho's network thread: watched by liveness_problem()

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

    # -- paho callbacks (network thread) -----------------------------------------------------------

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

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        self._net_beat = time.monotonic()
        if level == mqtt.MQTT_LOG_ERR:
            if buf.startswith("Caught exception"):
                paho_log.error("%s", buf)
            else:
                self._net_error = buf
        paho_log.debug("%s", buf)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        """Subscribe; `online`, `connected` (and so READY=1) wait for the SUBACKs (_on_subscribe): a client
        that sends a request as soon as it sees `online` must not find the request topic not yet subscribed
        (the broker drops what no subscription matches)."""
        try:
            if reason.is_failure:
                self._set_conn_state(f"connection refused by the broker: {reason}", logging.ERROR)
                return
            self._session_present = bool(getattr(flags, "session_present", False))
            pending = set()
            for group in self._subscriptions:
                rc, mid = client.subscribe([(topic, opts) for topic, opts, _ in group])
                if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                    pending.add(mid)
            self._suback_pending = pending
            if not pending:
                self._go_online()
        except Exception:
            log.exception("mqtt on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        try:
            if mid not in self._suback_pending:
                return
            refused = [r for r in (reasons or []) if getattr(r, "is_failure", False)]
            if refused:  # e.g. an ACL: serve what was granted, and say what was not
                log.error("the broker refused %d of our subscriptions: %s", len(refused),
                          ", ".join(str(r) for r in refused))
            self._suback_pending.discard(mid)
            if not self._suback_pending:
                self._go_online()
        except Exception:
            log.exception("mqtt on_subscribe failed")

    def _go_online(self) -> None:
        """Once subscribed: retained `online`, `connected` set, the on_connected callbacks."""
        self.publish_online()
        self.connected.set()
        for callback in self._on_connected:
            callback()
        self._net_error = None
        session = "resumed" if self._session_present else "new"
        first = ", ".join(t for t, _, _ in self._subscriptions[0]) if self._subscriptions else "nothing"
        self._set_conn_state(f"connected ({session} session); requests on {first}", logging.INFO)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        try:
            if self._stopping or reason.value == 0:
                return
            cause = f" ({self._net_error})" if self._net_error else ""
            self._set_conn_state(f"disconnected: {reason}{cause}; reconnecting with backoff")
        except Exception:
            log.exception("mqtt on_disconnect failed")

    def _on_default_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._default is not None:
            self._default(client, userdata, msg)
        else:
            self.acks.ack_now([(msg.mid, msg.qos)])

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        try:
            self.acks.published(mid)
        except Exception:
            log.exception("mqtt on_publish failed")

    def _dropped(self, topic: str, exc: BaseException) -> None:
        self.counters.add("errors")

    def _send_ack(self, mid: int, qos: int) -> None:
        c = self._paho
        if c is not None:
            c.ack(mid, qos)  # queued while offline is dropped: the broker redelivers, the cache answers
