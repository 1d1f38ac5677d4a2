"""Where decisions go: every source (MQTT request, microphone, Wyoming) hands its decision to the sinks.

A sink is anything with publish_decision(body, source) -- Home Assistant's MQTT link, the CLI's printer.
The daemon adds them; sources only know DecisionSinks.

Who may set shared state (docs/security-trust-model.md, "Which sources may set which HA state"): only
the device's own microphone and the Wyoming proxy (whose clients are admitted by address) say who is in
the room. An MQTT request is a question from one requester about audio it sent: its answer goes to that
requester, and it drives shared presence state only where the operator says MQTT requesters are trusted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional, Protocol

from .counters import Counters

log = logging.getLogger(__name__)


PRESENCE_SOURCES = frozenset({"microphone", "wyoming"})  # sources that may say who is in the room


def drives_presence(source: str, trust_mqtt_requests: bool = False) -> bool:
    """May a decision from `source` set shared presence state (HA's event entity, last speaker, match)?"""
    return source in PRESENCE_SOURCES or (trust_mqtt_requests and source == "mqtt")


class DecisionSink(Protocol):
    def publish_decision(self, body: dict[str, Any], source: str) -> None:
        """One decision: a response body (`ok` true) from source = mqtt | microphone | wyoming."""


class DecisionSinks:
    """Fans a decision out to every sink (thread-safe); an error answer is not a decision and goes nowhere."""

    def __init__(self, counters: Optional[Counters] = None) -> None:
        self.counters = counters
        self._sinks: list[DecisionSink] = []
        self._lock = threading.Lock()

    def add(self, sink: DecisionSink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def publish_decision(self, body: dict[str, Any], source: str) -> None:
        if not body.get("ok", True):
            return
        if self.counters is not None:
            self.counters.decided(body.get("elapsed_ms"), source)
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            try:
                sink.publish_decision(body, source)
            except Exception:  # one broken sink must not cost the others (or the worker) the decision
                log.exception("decision sink %s failed", type(sink).__name__)
