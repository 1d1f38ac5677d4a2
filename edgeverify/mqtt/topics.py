"""Where the device may publish: the reply-topic policy, and log-safe quoting of hostile strings.

The topic-name rules themselves (validity, filter matching) are in edgeverify.topic_rules, shared with
the config parser. The reply policy decides where a *requester* may make the device publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from ..topic_rules import matches, topic_problem

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
