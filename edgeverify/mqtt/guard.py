"""Shims for the ways one hostile PUBLISH can break paho-mqtt's network loop (found by tests/test_hostile.py).

When paho cannot decode an incoming PUBLISH it drops the connection ("protocol error") without
acknowledging it; with a persistent session the broker redelivers the same message after every
reconnect -- a disconnect loop that deafens the daemon for good.

1. paho 2.x refuses U+FEFF in v5 string properties (user properties, Response Topic), reading MQTT-1.5.4-3
   backwards: the spec says U+FEFF must be *kept*, and mosquitto forwards it. `tolerate_bom()` makes paho's
   property reader accept it, so such a request is simply answered.
2. Anything else paho cannot decode (e.g. invalid UTF-8 from a broker that does not validate):
   `guard_publish()` acknowledges and drops that one message, logged, instead of the connection.

Both reach into paho internals (module function `properties.readUTF`, `Client._handle_publish`,
`Client._in_packet`); they check what they patch and do nothing when paho changes shape.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt

from .topics import printable

log = logging.getLogger(__name__)


def tolerate_bom() -> bool:
    """Let paho read U+FEFF in v5 string properties (process-wide, idempotent); False if not applicable."""
    try:
        import paho.mqtt.properties as props
        from paho.mqtt.exception import MalformedPacket
    except ImportError:
        return False
    original = getattr(props, "readUTF", None)
    if original is None or getattr(original, "edgeverify_bom", False):
        return original is not None

    def readUTF(buffer: Any, maxlen: int) -> tuple[str, int]:  # noqa: N802 (paho's name)
        try:
            return original(buffer, maxlen)
        except MalformedPacket as exc:
            if "FEFF" not in str(exc):
                raise
        length = props.readInt16(buffer)  # already checked against maxlen by the original
        text = bytes(buffer[2 : 2 + length]).decode("utf-8")
        if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            raise MalformedPacket("invalid character in UTF-8 string")
        return text, length + 2

    readUTF.edgeverify_bom = True  # type: ignore[attr-defined]
    props.readUTF = readUTF
    return True


def guard_publish(client: mqtt.Client, on_drop: Optional[Callable[[str, BaseException], None]] = None) -> bool:
    """Acknowledge and drop an incoming PUBLISH paho cannot decode, instead of dropping the connection."""
    handle = getattr(client, "_handle_publish", None)
    if handle is None or not hasattr(client, "_in_packet") or not hasattr(client, "_send_puback"):
        log.debug("paho internals changed: undecodable messages are not guarded")
        return False

    def _handle_publish() -> Any:
        try:
            return handle()
        except Exception as exc:
            packet = client._in_packet  # the fixed header's first byte and the rest of the PUBLISH
            command, body = packet.get("command", 0), bytes(packet.get("packet", b""))
            qos = (command & 0x06) >> 1
            tlen = int.from_bytes(body[:2], "big")
            if len(body) < 2 + tlen + (2 if qos else 0):
                raise  # not even a header: let paho treat it as the protocol error it is
            topic = body[2 : 2 + tlen].decode("utf-8", "replace")
            mid = int.from_bytes(body[2 + tlen : 4 + tlen], "big") if qos else 0
            log.warning("dropped an undecodable message on %s (%s: %s); acknowledged so it is not resent",
                        printable(topic), type(exc).__name__, exc)
            if on_drop is not None:
                on_drop(topic, exc)
            if qos == 1:
                client._send_puback(mid)
            elif qos == 2:
                client._send_pubrec(mid)
            return mqtt.MQTT_ERR_SUCCESS  # the connection goes on

    client._handle_publish = _handle_publish  # type: ignore[method-assign]
    return True
