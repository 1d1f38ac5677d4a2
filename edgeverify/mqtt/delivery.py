"""At-least-once bookkeeping for MQTT requests: which reply acknowledges which request, and a reply cache.

The broker redelivers a QoS 1/2 request until we acknowledge it (persistent session), so a request is
acknowledged only once its reply's publish has completed (PUBACK from the broker). A redelivered request
(same topic, payload, properties, correlation data) is answered from a small cache instead of being
computed again, so a requester never gets two different answers to one request. No MQTT client here.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

Ack = tuple[int, int]  # (message id, qos) of a received request

CACHE_ENTRIES = 256
CACHE_TTL_S = 300.0
_REMEMBERED_MIDS = 256


def request_key(topic: str, payload: bytes, user: Sequence[tuple[str, str]], response_topic: Optional[str],
                correlation: Optional[bytes]) -> bytes:
    """Identity of a request message: equal for a redelivery, different for any other request."""
    h = hashlib.sha256()

    def part(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)

    def text(s: Optional[str]) -> bytes:
        return b"\xff" if s is None else s.encode("utf-8", "surrogatepass")

    part(text(topic))
    part(bytes(payload))
    for k, v in sorted(user):
        part(text(k))
        part(text(v))
    part(text(response_topic))
    part(b"\xff" if correlation is None else b"\x00" + bytes(correlation))
    return h.digest()


@dataclass(frozen=True)
class CachedReply:
    topic: str
    payload: bytes
    correlation: Optional[bytes]


class ReplyCache:
    """Bounded (entries and age) LRU map request_key -> the reply that was published for it; thread-safe."""

    def __init__(self, entries: int = CACHE_ENTRIES, ttl_s: float = CACHE_TTL_S) -> None:
        self.entries, self.ttl_s = entries, ttl_s
        self._items: OrderedDict[bytes, tuple[float, CachedReply]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Optional[CachedReply]:
        now = time.monotonic()
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if now - item[0] > self.ttl_s:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: bytes, reply: CachedReply) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), reply)
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class AckLedger:
    """Sends a request's ack when the publish of its reply completes (`published(mid)`, from on_publish).

    Completion may be reported before the publisher registers the acks (the network thread is fast), so
    recently completed publish ids are remembered for a while.
    """

    def __init__(self, send_ack: Callable[[int, int], None]) -> None:
        self._send = send_ack
        self._waiting: dict[int, list[Ack]] = {}
        self._done: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()

    def ack_now(self, acks: Iterable[Ack]) -> None:
        for mid, qos in dict.fromkeys(acks):  # de-duplicated, in order
            if qos > 0:
                self._send(mid, qos)

    def after_publish(self, publish_mid: Optional[int], acks: list[Ack]) -> None:
        """Ack `acks` once publish `publish_mid` completes (at once when there is nothing to wait for)."""
        acks = [a for a in acks if a[1] > 0]  # QoS 0 requests have nothing to acknowledge
        if not acks:
            return
        if publish_mid is None:
            self.ack_now(acks)
            return
        with self._lock:
            done = publish_mid in self._done
            if done:
                del self._done[publish_mid]
            else:
                self._waiting.setdefault(publish_mid, []).extend(acks)
        if done:
            self.ack_now(acks)

    def published(self, publish_mid: int) -> None:
        with self._lock:
            acks = self._waiting.pop(publish_mid, None)
            if acks is None:
                self._done[publish_mid] = None
                while len(self._done) > _REMEMBERED_MIDS:
                    self._done.popitem(last=False)
        if acks:
            self.ack_now(acks)

    @property
    def waiting(self) -> int:
        return sum(len(v) for v in self._waiting.values())
