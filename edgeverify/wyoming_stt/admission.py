"""Who may talk to the proxy: an allow-list of client addresses, checked when a connection is accepted,
before a byte of it is read; and what a client of a full server is told.

The Wyoming protocol has no authentication and Home Assistant's Wyoming client cannot send a secret, so
the address is all we can check (docs/security-trust-model.md says why there is no token).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any, Callable, Iterable, Optional

from .wire import async_write_event, error_event

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_S = 60.0  # a refused address is logged at most this often
REFUSAL_LOG_ADDRESSES = 1024  # addresses remembered for that (then forgotten at once: bounded memory)
BUSY_DRAIN_S = 5.0  # a client of a full server: read (and drop) what it already sent this long ...
BUSY_DRAIN_BYTES = 1 << 20  # ... or this much, so that it reads our error instead of a reset
MAX_BUSY_DRAINS = 16  # at most this many such clients at once; more are closed at once

Network = Any  # ipaddress.IPv4Network | ipaddress.IPv6Network


class Admission:
    """The allow-list and the once-per-address refusal log."""

    def __init__(self, allow: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.refused = 0
        self._logged: dict[str, float] = {}
        self.busy_drains = 0

    def admits(self, peer: Any) -> bool:
        """peer: the transport's peername (a tuple for TCP; '' or None for a Unix socket, whose access
        the socket file's permissions decide)."""
        if not isinstance(peer, tuple):
            return True
        try:
            addr = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket: ::ffff:192.168.1.20 is 192.168.1.20
        return any(addr in net for net in self.networks)

    def note_refused(self, peer: Any) -> None:
        self.refused += 1
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        now = time.monotonic()
        last = self._logged.get(host)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            return
        if len(self._logged) >= REFUSAL_LOG_ADDRESSES:
            self._logged.clear()
        self._logged[host] = now
        log.warning(
            "wyoming: refused a connection from %s: not in wyoming.allow (%s); further refusals of it are "
            "logged at most every %.0f s", host[:64], ", ".join(str(n) for n in self.networks) or "nothing",
            REFUSAL_LOG_INTERVAL_S,
        )

    async def refuse_busy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str) -> None:
        """Tell a client of a full server why, then close without a reset: closing a socket with unread
        data makes the kernel send RST, and the client would see "connection reset" instead of the error."""
        try:
            await async_write_event(error_event(text, "busy"), writer)
            if writer.can_write_eof():
                writer.write_eof()  # the error is all the client gets: its next read sees the end
            if self.busy_drains >= MAX_BUSY_DRAINS:
                return
            self.busy_drains += 1
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_drain(reader, BUSY_DRAIN_BYTES), BUSY_DRAIN_S)
            finally:
                self.busy_drains -= 1
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def _drain(reader: asyncio.StreamReader, limit: int) -> None:
    left = limit
    while left > 0:
        data = await reader.read(min(65536, left))
        if not data:
            return
        left -= len(data)


class GatedProtocol(asyncio.StreamReaderProtocol):
    """asyncio.start_server's protocol with the allow-list applied in connection_made: a refused client's
    connection is aborted before its first byte is read and before a session exists."""

    def __init__(self, reader: asyncio.StreamReader, callback: Callable, admission: Admission) -> None:
        super().__init__(reader, callback)
        self._admission = admission
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if not self._admission.admits(peer):
            self._refused = True
            self._admission.note_refused(peer)
            transport.abort()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool:
        return False if self._refused else super().eof_received()
