"""What the service has done, for the status line and Home Assistant's diagnostics (thread-safe)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

# where a request comes from: an MQTT request, an admin request (MQTT admin topic), a live utterance
REQUEST_SOURCES = ("mqtt", "admin", "microphone", "wyoming")
LIVE_SOURCES = frozenset({"microphone", "wyoming"})  # their utterances are requests the device decides unasked


@dataclass
class Counters:
    handled: int = 0  # requests handled, every source: MQTT and admin requests answered, live utterances decided
    errors: int = 0  # error answers, refused or undecodable messages
    expired: int = 0  # requests whose v5 Message Expiry passed while queued (dropped, acked)
    duplicates: int = 0  # redeliveries answered from the cache / merged with the request in hand
    refused_replies: int = 0  # reply topics refused by the policy (answered on the default topic)
    decisions: int = 0  # decisions published to the sinks (every source)
    last_latency_ms: Optional[float] = None
    by_source: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REQUEST_SOURCES, 0))  # `handled`, split
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Count one more `name` (an int field above)."""
        if name.startswith("_") or not isinstance(getattr(self, name), int):
            raise AttributeError(f"no counter {name!r}")
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def answered(self, ok: bool, source: str = "mqtt") -> None:
        """One request answered (an error answer is counted as an error too); source: mqtt or admin."""
        with self._lock:
            self._handled(source)
            if not ok:
                self.errors += 1

    def latency(self, elapsed_ms: Optional[float]) -> None:
        if elapsed_ms is not None:
            with self._lock:
                self.last_latency_ms = float(elapsed_ms)

    def decided(self, elapsed_ms: Optional[float], source: Optional[str] = None) -> None:
        """One decision. A live utterance's (microphone, Wyoming) is also the request it answers; an MQTT
        request's decision was counted when it was answered."""
        with self._lock:
            self.decisions += 1
            if elapsed_ms is not None:
                self.last_latency_ms = float(elapsed_ms)
            if source in LIVE_SOURCES:
                self._handled(source)

    def _handled(self, source: str) -> None:
        self.handled += 1
        if source in self.by_source:
            self.by_source[source] += 1

    def requests_by_source(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_source)
