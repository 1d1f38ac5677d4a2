"""The Wyoming server: admission of connections, the embedding worker, and the decisions.

Home Assistant (or any Wyoming client) connects here as to a speech-to-text service; each connection is
a session (session.py) with its own connection to the real STT. The embeddings of every session run on
one worker thread, so CPU and memory stay bounded however many satellites talk at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import numpy as np

from ..app.decisions import DecisionService
from ..app.protocol import Response, error_response
from ..core.audio import TARGET_RATE
from ..errors import AudioError, ConfigError, EdgeVerifyError, ProfileError
from .admission import Admission, GatedProtocol
from .session import Session
from .wire import MAX_LINE_BYTES, Event
from .work import EmbedQueue

log = logging.getLogger(__name__)

SOURCE = "wyoming"


DecisionCallback = Callable[[dict, str], None]


class DecisionBody(dict):
    """A decision's body, and beside it (an attribute: never serialised, lost on any copy) what the inbox
    keeps of an unrecognised utterance until its transcript is known."""

    __slots__ = ("unrecognised",)

    def __init__(self, body: dict, unrecognised: Any = None) -> None:
        super().__init__(body)
        self.unrecognised = unrecognised


def transcript_digest(text: str) -> str:
    """sha256 (hex) of the transcript with whitespace runs collapsed and case folded, so that Home
    Assistant's copy of the same text (trimmed, re-spaced) gives the same digest."""
    return hashlib.sha256(" ".join(text.split()).casefold().encode("utf-8")).hexdigest()


class SpeakerIdProxy:
    """Serves Wyoming clients; one model shared with the rest of the process through `handler`."""

    def __init__(self, handler: DecisionService, config: Any, on_decision: Optional[DecisionCallback] = None,
                 device_id: str = "edgeverify") -> None:
        """config: the `wyoming:` config section (store.config.WyomingConfig), read as it is."""
        if Event is None:
            raise ConfigError("the Wyoming proxy needs the wyoming package: pip install 'edgeverify[wyoming]'")
        self.handler = handler
        self.config = config
        self.device_id = device_id
        self.admission = Admission(config.allow)
        self.on_decision = on_decision
        self.sessions: set[Any] = set()
        self.decisions = 0
        self.last_timing: dict[str, float] = {}
        # one embedding at a time, a bounded queue: bounded CPU and memory however many clients talk at once
        self.work = EmbedQueue(config.max_queued, config.max_queued_per_client)
        self._server: Optional[asyncio.AbstractServer] = None

    # -- accounting (tests, status) ---------------------------------------------------------------

    @property
    def active_sessions(self) -> int:
        return len(self.sessions)

    @property
    def buffer_bytes(self) -> int:
        return sum(s.buffer_bytes for s in self.sessions)

    # -- server -------------------------------------------------------------------------------------

    async def start(self, uri: str) -> None:
        """Bind and serve in the running loop; OSError (port in use, bad path) propagates to the caller."""
        u = urlparse(uri)
        if u.scheme == "unix":
            self._server = await asyncio.start_unix_server(self._client, u.path, limit=MAX_LINE_BYTES)
        else:
            loop = asyncio.get_running_loop()

            def protocol() -> GatedProtocol:
                return GatedProtocol(asyncio.StreamReader(limit=MAX_LINE_BYTES), self._client, self.admission)

            self._server = await loop.create_server(protocol, u.hostname, u.port)
        log.info("wyoming proxy on %s (clients admitted: %s) -> speech-to-text %s", uri,
                 ", ".join(self.config.allow) if u.scheme != "unix" else "the socket file's permissions", self.config.stt_uri)

    @property
    def port(self) -> Optional[int]:
        """The bound TCP port (for uri tcp://host:0 in tests)."""
        if self._server is None or not self._server.sockets:
            return None
        name = self._server.sockets[0].getsockname()
        return name[1] if isinstance(name, tuple) else None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for s in list(self.sessions):
            s.writer.close()
            if s.down is not None:
                s.down.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                pass
        self.work.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.config.max_clients:
            log.warning("wyoming: %d clients connected; refusing another", len(self.sessions))
            await self.admission.refuse_busy(reader, writer, f"{len(self.sessions)} clients connected; retry later")
            return
        session = Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    # -- decisions (worker thread) -----------------------------------------------------------------

    def decide(self, samples: np.ndarray, error: Optional[EdgeVerifyError], request_id: Optional[str]) -> dict:
        """Identify the stream's speaker and publish the decision; runs in the embedding thread."""
        started = time.perf_counter()
        meta = {"type": "identify", "request_id": request_id, "first_file": SOURCE}
        unrecognised = None
        try:
            if error is not None:
                raise error
            result, unrecognised = self.handler.decide_live(samples, SOURCE)
            resp = Response(ok=True, meta=meta, result=result)
        except (AudioError, ProfileError) as exc:
            resp = error_response(meta, exc.code, exc.message)
            resp.result = {"speaker": None, "same_speaker": False, "duration_s": round(samples.size / TARGET_RATE, 2)}
        except Exception as exc:  # a bug must not leave the client waiting for its transcript
            log.exception("wyoming: identification failed")
            resp = error_response(meta, "internal_error", f"internal error: {type(exc).__name__}")
            resp.result = {"speaker": None, "same_speaker": False}
        resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        body = DecisionBody(resp.to_dict(self.device_id), unrecognised)
        identified = bool(body.get("speaker"))
        body["event"] = "identified" if identified else "not-identified"
        if self.config.reject_unknown:
            body["rejected"] = not identified
        self.decisions += 1
        log.info(
            "wyoming: %s (score %s, %.1f s of audio, %.0f ms)",
            body.get("speaker") or "unknown speaker" + (f" [{body['error']['code']}]" if "error" in body else ""),
            body.get("score"),
            samples.size / TARGET_RATE,
            resp.elapsed_ms,
        )
        return body

    def publish(self, body: dict, transcript: Optional[str], heard: Optional[str] = None) -> None:
        """Hand a decision to the sink (MQTT / Home Assistant, or stdout), once the client has its answer.

        `utterance` lets Home Assistant match the decision to the pipeline run whose transcript it saw:
        the digest of the text returned to the client and when; the text itself never leaves. An
        unrecognised utterance goes to the inbox (when on) in-process, with `heard`, the STT's text."""
        unrecognised = getattr(body, "unrecognised", None)
        inbox = self.handler.inbox
        if unrecognised is not None and inbox is not None:
            body.unrecognised = None  # type: ignore[attr-defined]
            inbox.offer(unrecognised, SOURCE, heard)
        body["utterance"] = None if transcript is None else {
            "transcript_sha256": transcript_digest(transcript), "at": round(time.time(), 3)}
        if self.on_decision is not None:
            try:
                self.on_decision(body, SOURCE)
            except Exception:
                log.exception("wyoming: publishing the decision failed")

    def transcript_text(self, text: str, decision: Optional[dict]) -> str:
        """The text the client gets: unchanged, emptied (rejected) or tagged."""
        if decision is None:
            return text
        if decision.get("rejected"):
            return ""
        fmt = self.config.tag_transcript
        if not fmt:
            return text
        score = decision.get("score")
        return fmt.format(text=text, speaker=decision.get("speaker") or "unknown", score=score if score is not None else float("nan"))
