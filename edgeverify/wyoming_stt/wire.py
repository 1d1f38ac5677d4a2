"""The Wyoming wire format, read defensively: header lines, data and payload lengths are bounded before
anything is buffered, types are checked, and anything malformed is a WyomingError (the session turns it
into a Wyoming `error` event). The wyoming library's own reader trusts the lengths and the JSON types."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional
from urllib.parse import urlparse

from ..errors import WyomingError

try:  # optional extra: pip install 'edgeverify[wyoming]'
    from wyoming.event import Event, async_write_event
except ImportError:  # pragma: no cover - checked in SpeakerIdProxy.__init__
    Event = None  # type: ignore[assignment,misc]
    async_write_event = None  # type: ignore[assignment]

MAX_LINE_BYTES = 64 * 1024  # one JSON header line
MAX_DATA_BYTES = 256 * 1024  # the "data" block after the header (transcripts, info, context)
MAX_PAYLOAD_BYTES = 1024 * 1024  # one binary payload (an audio chunk: ~32 s of 16 kHz s16 mono)
CONNECT_TIMEOUT_S = 5.0


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    v = header.get(key)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise WyomingError(f"bad {key} {str(v)[:40]!r}")
    if v > limit:
        raise WyomingError(f"{key} {v} is over the {limit} byte limit")
    return v


async def read_event(reader: asyncio.StreamReader) -> Optional["Event"]:
    """The next event, None at a clean end of stream; WyomingError for anything malformed or oversized.

    The wyoming library's own reader trusts data_length/payload_length and the JSON types; this one does not.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise WyomingError("stream ended inside an event header") from None
        return None
    except asyncio.LimitOverrunError:
        raise WyomingError(f"event header longer than {MAX_LINE_BYTES} bytes") from None
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[... nested too deep
        raise WyomingError("event header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str) or not header["type"]:
        raise WyomingError("event header must be an object with a string 'type'")
    data = header.get("data")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise WyomingError("event 'data' must be an object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise WyomingError("event data block must be a JSON object")
            data.update(extra)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise WyomingError("stream ended inside an event") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WyomingError("event data block is not JSON") from None
    return Event(type=header["type"][:64], data=data, payload=payload)


async def open_uri(uri: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to tcp://host:port or unix:///path (bounded line length, connect timeout)."""
    u = urlparse(uri)
    if u.scheme == "unix":
        conn = asyncio.open_unix_connection(u.path, limit=MAX_LINE_BYTES)
    else:
        conn = asyncio.open_connection(u.hostname, u.port, limit=MAX_LINE_BYTES)
    return await asyncio.wait_for(conn, CONNECT_TIMEOUT_S)


def error_event(text: str, code: str) -> "Event":
    return Event(type="error", data={"text": text, "code": code})
