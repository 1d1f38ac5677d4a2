"""MQTT topic strings: validity (MQTT v5 UTF-8 and topic rules), filter matching, and the reply-topic policy.

A topic the broker considers malformed makes it drop the connection, and paho re-sends the same publish
after every reconnect -- so every string the daemon publishes to (Response Topic, reply_to, config) is
checked here first. The reply policy decides where a *requester* may make the device publish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

MAX_TOPIC_BYTES = 65535  # a UTF-8 string in MQTT is length-prefixed with 16 bits

# MQTT v5 §1.5.4: no U+0000, no lone surrogates (not representable in UTF-8); control characters
# U+0001-U+001F, U+007F-U+009F and non-characters are refused by brokers (mosquitto) as well.
_NONCHARS = "".join(f"\\U{p:04x}fffe\\U{p:04x}ffff" for p in range(0x11))
_BAD_CHARS = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef{_NONCHARS}]")


def string_problem(s: object, max_bytes: int = MAX_TOPIC_BYTES) -> Optional[str]:
    """Why `s` is not a valid MQTT UTF-8 string (None when it is)."""
    if not isinstance(s, str):
        return f"not a string ({type(s).__name__})"
    m = _BAD_CHARS.search(s)
    if m is not None:
        return f"character U+{ord(m.group()):04X} at position {m.start()} is not allowed in MQTT"
    if len(s) > max_bytes // 4 and len(s.encode("utf-8")) > max_bytes:
        return f"longer than {max_bytes} bytes"
    return None


def topic_problem(topic: object) -> Optional[str]:
    """Why `topic` cannot be published to (None when it can): empty, bad UTF-8 rules, wildcards."""
    problem = string_problem(topic)
    if problem is not None:
        return problem
    assert isinstance(topic, str)
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcards + and # are not allowed in a topic name"
    return None


def filter_problem(pattern: object) -> Optional[str]:
    """Why `pattern` is not a valid topic filter (None when it is)."""
    problem = string_problem(pattern)
    if problem is not None:
        return problem
    assert isinstance(pattern, str)
    if not pattern:
        return "empty filter"
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching, including the rule that wildcards at the first level skip `$` topics."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


@dataclass(frozen=True)
class ReplyPolicy:
    """Where a request may direct its reply (v5 Response Topic or JSON/user-property `reply_to`).

    Refused always: invalid topics, `$` topics, the request/state/availability/event topics of any device
    under the topic prefix (and the shared request topics), their diagnostics and admin command topics, anything under the Home Assistant discovery
    prefix (and `homeassistant/`), and command-style topics (a `set` or `cmnd` level, as zigbee2mqtt,
    Tasmota and Home Assistant MQTT entities use). With `allow` non-empty, the topic must also match one of
    those filters. The device's own default response topic is always allowed.
    """

    topic_prefix: str
    default_topic: str
    discovery_prefix: Optional[str] = "homeassistant"
    allow: tuple[str, ...] = ()
    own_replies: tuple[str, ...] = ()  # further answer topics of this device (admin responses)

    def _denied(self) -> Iterable[str]:
        p = self.topic_prefix
        yield from (f"{p}/request", f"{p}/request/#", f"{p}/+/request", f"{p}/+/request/#")
        for leaf in ("state", "availability", "event", "diagnostics"):
            yield from (f"{p}/+/{leaf}", f"{p}/+/{leaf}/#")
        yield from (f"{p}/+/admin/request", f"{p}/+/admin/request/#", f"{p}/+/admin/ha/#")  # admin commands
        for prefix in {self.discovery_prefix, "homeassistant"} - {None}:
            yield f"{prefix}/#"

    def refusal(self, topic: object) -> Optional[str]:
        """Why a reply may not go to `topic` (None when it may)."""
        problem = topic_problem(topic)
        if problem is not None:
            return problem
        assert isinstance(topic, str)
        if topic == self.default_topic or topic in self.own_replies:
            return None
        if topic.startswith("$"):
            return "reserved $ topic"
        for pattern in self._denied():
            if matches(pattern, topic):
                return f"topic matches protected {pattern}"
        levels = topic.split("/")
        if "set" in levels or "cmnd" in levels:
            return "command topic (a 'set' or 'cmnd' level)"
        if self.allow and not any(matches(p, topic) for p in self.allow):
            return "not in mqtt.reply_topics"
        return None


def printable(s: object, limit: int = 200) -> str:
    """A hostile string made safe for a log line: repr-escaped and cut."""
    r = ascii(s)
    return r if len(r) <= limit else r[: limit - 3] + "..."
