"""What the service has done, for the status line and Home Assistant's diagnostics (thread-safe)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Counters:
    handled: int = 0  # requests answered (MQTT and admin)
    errors: int = 0  # error answers, refused or undecodable messages
    expired: int = 0  # requests whose v5 Message Expiry passed while queued (dropped, acked)
    duplicates: int = 0  # redeliveries answered from the cache / merged with the request in hand
    refused_replies: int = 0  # reply topics refused by the policy (answered on the default topic)
    decisions: int = 0  # decisions published to the sinks (every source)
    last_latency_ms: Optional[float] = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        """Count one more `name` (an int field above)."""
        if name.startswith("_") or not isinstance(getattr(self, name), int):
            raise AttributeError(f"no counter {name!r}")
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def answered(self, ok: bool) -> None:
        """One request answered (an error answer is counted as an error too)."""
        with self._lock:
            self.handled += 1
            if not ok:
                self.errors += 1

    def latency(self, elapsed_ms: Optional[float]) -> None:
        if elapsed_ms is not None:
            with self._lock:
                self.last_latency_ms = float(elapsed_ms)

    def decided(self, elapsed_ms: Optional[float]) -> None:
        with self._lock:
            self.decisions += 1
            if elapsed_ms is not None:
                self.last_latency_ms = float(elapsed_ms)
