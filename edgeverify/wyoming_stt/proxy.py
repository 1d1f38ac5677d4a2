"""Wyoming adapter: a speech-to-text proxy for Home Assistant Assist that also says who spoke.

Home Assistant (or any Wyoming client) connects here as to a speech-to-text service. Each connection
gets its own connection to the real STT service (`stt_uri`); transcribe / audio-start / audio-chunk /
audio-stop go through unchanged, and the STT's answer comes back unchanged (byte-identical text)
unless tagging or rejection of unknown speakers is configured. Meanwhile every audio chunk is turned
into 16 kHz mono float as it arrives (audio_stream.StreamConverter, bounded); at audio-stop the
embedding runs in a worker thread *while* the STT is still transcribing, so the transcript is held
back at most for the rest of the embedding time. The decision (same shape as an MQTT identify
response) goes to `on_decision(body, source)`.

Also answers the identity events proposed in OHF-Voice/wyoming PR #50: `identify` + audio ->
`identified` {name, confidence} or `not-identified`. `enroll` / `delete` are refused (enrollment is
an admin action: `edgeverify enroll`, or the MQTT admin requests).

Everything read from either socket is untrusted: header lines, data and payload lengths are bounded
before anything is buffered, types are checked, and a bad event becomes a Wyoming `error` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import numpy as np

from ..core.audio import TARGET_RATE
from ..core.audio_stream import StreamConverter
from ..errors import AudioError, ConfigError, EdgeVerifyError, ProfileError, WyomingError
from ..app.decisions import DecisionService as RequestHandler
from ..app.protocol import Response, error_response

try:  # optional extra: pip install 'edgeverify[wyoming]'
    from wyoming.event import Event, async_write_event
except ImportError:  # pragma: no cover - checked in SpeakerIdProxy.__init__
    Event = None  # type: ignore[assignment,misc]
    async_write_event = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024  # one JSON header line
MAX_DATA_BYTES = 256 * 1024  # the "data" block after the header (transcripts, info, context)
MAX_PAYLOAD_BYTES = 1024 * 1024  # one binary payload (an audio chunk: ~32 s of 16 kHz s16 mono)
IDLE_TIMEOUT_S = 120.0  # a client silent this long is disconnected (frees its slot)
CONNECT_TIMEOUT_S = 5.0
MAX_HELD_EVENTS = 4096  # streamed transcript events held back until the decision (reject_unknown)
SOURCE = "wyoming"

AUDIO_EVENTS = ("audio-start", "audio-chunk", "audio-stop")


# -- wire format (bounded) ---------------------------------------------------------------------------

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


# -- the proxy ---------------------------------------------------------------------------------------

@dataclass
class ProxyOptions:
    stt_uri: str = "tcp://127.0.0.1:10300"
    reject_unknown: bool = False
    tag_transcript: Optional[str] = None
    max_clients: int = 4
    stt_timeout_s: float = 60.0
    device_id: str = "edgeverify"

    @classmethod
    def from_config(cls, wyoming: Any, device_id: str) -> "ProxyOptions":
        return cls(
            stt_uri=wyoming.stt_uri,
            reject_unknown=wyoming.reject_unknown,
            tag_transcript=wyoming.tag_transcript,
            max_clients=wyoming.max_clients,
            stt_timeout_s=wyoming.stt_timeout_s,
            device_id=device_id,
        )


DecisionCallback = Callable[[dict, str], None]


class SpeakerIdProxy:
    """Serves Wyoming clients; one model shared with the rest of the process through `handler`."""

    def __init__(self, handler: RequestHandler, options: ProxyOptions, on_decision: Optional[DecisionCallback] = None):
        if Event is None:
            raise ConfigError("the Wyoming proxy needs the wyoming package: pip install 'edgeverify[wyoming]'")
        self.handler = handler
        self.options = options
        self.on_decision = on_decision
        self.sessions: set["_Session"] = set()
        self.decisions = 0
        self.last_timing: dict[str, float] = {}
        # one embedding at a time: bounded CPU and memory however many satellites talk at once
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wyoming-embed")
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
            self._server = await asyncio.start_server(self._client, u.hostname, u.port, limit=MAX_LINE_BYTES)
        log.info("wyoming proxy on %s -> speech-to-text %s", uri, self.options.stt_uri)

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
        self._executor.shutdown(wait=False)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.options.max_clients:
            log.warning("wyoming: %d clients connected; refusing another", len(self.sessions))
            try:
                await async_write_event(error_event("too many clients; retry later", "busy"), writer)
            except (ConnectionError, OSError):
                pass
            writer.close()
            return
        session = _Session(self, reader, writer)
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
        try:
            if error is not None:
                raise error
            result = self.handler.decide_samples(samples, SOURCE)
            resp = Response(ok=True, meta=meta, result=result)
        except (AudioError, ProfileError) as exc:
            resp = error_response(meta, exc.code, exc.message)
            resp.result = {"speaker": None, "same_speaker": False, "duration_s": round(samples.size / TARGET_RATE, 2)}
        except Exception as exc:  # a bug must not leave the client waiting for its transcript
            log.exception("wyoming: identification failed")
            resp = error_response(meta, "internal_error", f"internal error: {type(exc).__name__}")
            resp.result = {"speaker": None, "same_speaker": False}
        resp.elapsed_ms = 1000 * (time.perf_counter() - started)
        body = resp.to_dict(self.options.device_id)
        identified = bool(body.get("speaker"))
        body["event"] = "identified" if identified else "not-identified"
        if self.options.reject_unknown:
            body["rejected"] = not identified
        self.decisions += 1
        log.info(
            "wyoming: %s (score %s, %.1f s of audio, %.0f ms)",
            body.get("speaker") or "unknown speaker" + (f" [{body['error']['code']}]" if "error" in body else ""),
            body.get("score"),
            samples.size / TARGET_RATE,
            resp.elapsed_ms,
        )
        if self.on_decision is not None:
            try:
                self.on_decision(body, SOURCE)
            except Exception:
                log.exception("wyoming: publishing the decision failed")
        return body

    def transcript_text(self, text: str, decision: Optional[dict]) -> str:
        """The text the client gets: unchanged, emptied (rejected) or tagged."""
        if decision is None:
            return text
        if decision.get("rejected"):
            return ""
        fmt = self.options.tag_transcript
        if not fmt:
            return text
        score = decision.get("score")
        return fmt.format(text=text, speaker=decision.get("speaker") or "unknown", score=score if score is not None else float("nan"))


class _Utterance:
    """One transcribe (or identify) stream: the audio being converted and the pending decision."""

    def __init__(self, max_seconds: float, request_id: Optional[str], identify_only: bool = False) -> None:
        self.converter = StreamConverter(max_seconds)
        self.request_id = request_id
        self.identify_only = identify_only
        self.error: Optional[EdgeVerifyError] = None  # audio we cannot use (bad format): decided as unknown
        self.decision: Optional[asyncio.Future] = None  # set at audio-stop
        self.t_stop = 0.0
        self.embed_ms = 0.0

    def feed(self, event: "Event") -> None:
        if self.error is not None:
            return
        d = event.data
        try:
            self.converter.feed(event.payload or b"", d.get("rate"), d.get("width"), d.get("channels"))
        except AudioError as exc:
            self.error = exc
            self.converter.clear()


class _Downstream:
    """The connection to the real STT service, with a task relaying its events to the client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.task: Optional[asyncio.Task] = None
        self.alive = True

    def close(self) -> None:
        self.alive = False
        self.writer.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class _Session:
    """One client connection."""

    def __init__(self, proxy: SpeakerIdProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.opts = proxy.options
        self.reader, self.writer = reader, writer
        self.down: Optional[_Downstream] = None
        self.utt: Optional[_Utterance] = None
        self.waiting: Optional[str] = None  # "transcript" / "info" while the STT owes us an answer
        self._timer: Optional[asyncio.TimerHandle] = None
        self._held: list[Event] = []
        self.failed = False  # the STT failed during this utterance: drop its remaining audio
        self.peer = writer.get_extra_info("peername")

    @property
    def buffer_bytes(self) -> int:
        return (self.utt.converter.nbytes if self.utt is not None else 0) + sum(
            len(e.payload or b"") + 64 for e in self._held
        )

    async def send(self, event: "Event") -> None:
        """To the client. Each event is written in one go (no await between its parts), so the relay task
        and the client loop never interleave bytes."""
        await async_write_event(event, self.writer)

    async def run(self) -> None:
        try:
            while True:
                try:
                    event = await asyncio.wait_for(read_event(self.reader), IDLE_TIMEOUT_S)
                except asyncio.TimeoutError:
                    log.info("wyoming: client %s idle for %.0f s; disconnecting", self.peer, IDLE_TIMEOUT_S)
                    break
                except WyomingError as exc:
                    log.warning("wyoming: bad event from %s: %s", self.peer, exc.message)
                    await self.send(error_event(exc.message, "bad-event"))
                    break  # the byte stream cannot be resynchronised
                if event is None:
                    break
                await self.handle(event)
        except (ConnectionError, OSError) as exc:
            log.info("wyoming: client %s gone: %s", self.peer, exc)
        except Exception:  # a bug must not take the server down; this client is told and dropped
            log.exception("wyoming: session with %s failed", self.peer)
            with contextlib.suppress(ConnectionError, OSError):
                await self.send(error_event("internal error", "internal-error"))
        finally:
            self.release()

    def release(self) -> None:
        """Client gone: drop buffers and the STT connection; a running embedding's result is discarded."""
        self._cancel_timer()
        self.utt, self._held = None, []
        if self.down is not None:
            self.down.close()
            self.down = None
        self.writer.close()

    # -- client -> proxy -----------------------------------------------------------------------------

    async def handle(self, event: "Event") -> None:
        t = event.type
        if t == "describe":
            self.failed = False
            await self._forward(event, expect="info")
        elif t == "transcribe":
            self.failed = False
            self._new_utterance(event, identify_only=False)
            await self._forward(event)
        elif t in AUDIO_EVENTS:
            await self._audio(event)
        elif t == "identify":
            self.failed = False
            self._new_utterance(event, identify_only=True)
        elif t in ("enroll", "delete"):
            await self.send(
                error_event(f"{t} over Wyoming is not offered: use `edgeverify enroll` / `forget`", "not-supported")
            )
        elif t == "ping":
            await self.send(Event(type="pong", data={k: v for k, v in event.data.items() if k == "text"}))
        else:
            await self.send(error_event(f"unsupported event type {t!r}", "unsupported-event"))

    def _new_utterance(self, event: "Event", identify_only: bool) -> None:
        context = event.data.get("context")
        rid = context.get("request_id") if isinstance(context, dict) else None
        rid = rid if isinstance(rid, str) and len(rid) <= 200 else None
        self.utt = _Utterance(self.proxy.handler.max_audio_seconds, rid, identify_only)
        self._held = []

    async def _audio(self, event: "Event") -> None:
        if self.failed:  # the rest of an utterance whose STT failed (the client was told once)
            return
        if event.type == "audio-start" and (self.utt is None or self.utt.decision is not None):
            self._new_utterance(event, identify_only=False)  # audio without transcribe: still proxied
        utt = self.utt
        if utt is None:  # stray audio after the utterance ended (or after an STT failure): dropped
            return
        if event.type == "audio-chunk":
            utt.feed(event)
        if not utt.identify_only:
            if not await self._forward(event, expect="transcript" if event.type == "audio-stop" else None):
                return
        if event.type == "audio-stop":
            self._decide(utt)
            if utt.identify_only:
                await self._send_identity(utt)

    def _decide(self, utt: _Utterance) -> None:
        """Start the embedding now, concurrently with the STT's work on the same audio."""
        utt.t_stop = time.perf_counter()
        samples = utt.converter.finish()
        loop = asyncio.get_running_loop()

        def work() -> dict:
            started = time.perf_counter()
            body = self.proxy.decide(samples, utt.error, utt.request_id)
            utt.embed_ms = 1000 * (time.perf_counter() - started)
            return body

        utt.decision = loop.run_in_executor(self.proxy._executor, work)

    async def _send_identity(self, utt: _Utterance) -> None:
        """PR #50 reply to `identify`: identified {name, confidence} or not-identified."""
        assert utt.decision is not None
        body = await utt.decision
        if self.utt is utt:
            self.utt = None
        if body.get("speaker"):
            await self.send(Event(type="identified", data={"name": body["speaker"], "confidence": body.get("score")}))
        else:
            await self.send(Event(type="not-identified", data={}))

    async def _forward(self, event: "Event", expect: Optional[str] = None) -> bool:
        """To the STT (connecting first if needed); False (client told) when the STT cannot be reached."""
        if self.down is None or not self.down.alive:
            try:
                reader, writer = await open_uri(self.opts.stt_uri)
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("wyoming: speech-to-text %s unreachable: %s", self.opts.stt_uri, exc)
                await self._stt_failed(f"speech-to-text service {self.opts.stt_uri} unreachable", "stt-unavailable")
                return False
            self.down = _Downstream(reader, writer)
            self.down.task = asyncio.create_task(self._relay(self.down))
        try:
            await async_write_event(event, self.down.writer)
        except (ConnectionError, OSError):
            await self._stt_failed("speech-to-text service closed the connection", "stt-closed")
            return False
        if expect is not None:
            self.waiting = expect
            self._cancel_timer()
            self._timer = asyncio.get_running_loop().call_later(self.opts.stt_timeout_s, self._on_timeout)
        return True

    async def _stt_failed(self, text: str, code: str) -> None:
        """Tell the client once, drop the STT connection and the utterance (a new transcribe reconnects)."""
        self._cancel_timer()
        self.waiting, self.utt, self._held, self.failed = None, None, [], True
        if self.down is not None:
            self.down.close()
            self.down = None
        try:
            await self.send(error_event(text, code))
        except (ConnectionError, OSError):
            pass

    def _on_timeout(self) -> None:
        what = self.waiting or "answer"
        log.warning("wyoming: no %s from %s within %.0f s", what, self.opts.stt_uri, self.opts.stt_timeout_s)
        asyncio.ensure_future(self._stt_failed(f"speech-to-text service sent no {what} in time", "stt-timeout"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- STT -> client -------------------------------------------------------------------------------

    async def _relay(self, down: _Downstream) -> None:
        reason, code = "speech-to-text service closed the connection", "stt-closed"
        try:
            while True:
                event = await read_event(down.reader)
                if event is None:
                    break
                await self._from_stt(event)
        except asyncio.CancelledError:
            return
        except WyomingError as exc:
            reason, code = f"speech-to-text service sent a bad event: {exc.message}", "stt-bad-event"
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("wyoming: relaying from %s failed", self.opts.stt_uri)
            reason, code = "internal error relaying the speech-to-text answer", "internal-error"
        if self.down is down:  # still ours: the STT went away on its own
            if self.waiting is not None or (self.utt is not None and not self.utt.identify_only):
                await self._stt_failed(reason, code)
            else:
                self.down = None
                down.close()

    async def _from_stt(self, event: "Event") -> None:
        t = event.type
        if t == "transcript":
            await self._transcript(event)
        elif t == "error":
            self._cancel_timer()
            self.waiting, self.utt, self._held = None, None, []
            await self.send(event)
        elif t == "info":
            if self.waiting == "info":
                self._cancel_timer()
                self.waiting = None
            await self.send(_proxied_info(event))
        elif t in ("transcript-start", "transcript-chunk", "transcript-stop") and self.opts.reject_unknown:
            # a streamed transcript may only reach the client once we know the speaker may talk
            if len(self._held) >= MAX_HELD_EVENTS:
                raise WyomingError(f"more than {MAX_HELD_EVENTS} streamed transcript events")
            self._held.append(event)
        else:
            await self.send(event)

    async def _transcript(self, event: "Event") -> None:
        text = event.data.get("text")
        if not isinstance(text, str):
            raise WyomingError("transcript without text")
        received = time.perf_counter()
        self._cancel_timer()  # the STT answered; waiting for our own decision is not its timeout
        utt = self.utt
        decision: Optional[dict] = None
        if utt is not None and utt.decision is not None:
            decision = await utt.decision  # usually done already: the STT takes longer than the embedding
        if self.utt is utt:
            self.utt = None
        self._cancel_timer()
        self.waiting = None
        rejected = bool(decision and decision.get("rejected"))
        for held in self._held:
            if not (rejected and held.type == "transcript-chunk"):
                await self.send(held)
        self._held = []
        data = dict(event.data)
        data["text"] = self.proxy.transcript_text(text, decision)
        await self.send(Event(type="transcript", data=data, payload=event.payload))
        if utt is not None and utt.decision is not None:
            sent = time.perf_counter()
            self.proxy.last_timing = {
                "audio_s": round(float(decision.get("duration_s") or 0.0), 2) if decision else 0.0,
                "embed_ms": round(utt.embed_ms, 1),
                "stt_ms": round(1000 * (received - utt.t_stop), 1),
                "added_ms": round(1000 * (sent - received), 1),
            }
            log.info("wyoming: timing %s", self.proxy.last_timing)


def _proxied_info(event: "Event") -> "Event":
    """The STT's own info (models, languages untouched), its programs described as proxied."""
    data = dict(event.data)
    asr = data.get("asr")
    if isinstance(asr, list):
        programs = []
        for p in asr:
            if isinstance(p, dict):
                p = dict(p)
                desc = p.get("description") if isinstance(p.get("description"), str) else p.get("name")
                p["description"] = f"{desc or 'speech-to-text'} (via edgeverify speaker ID)"
            programs.append(p)
        data["asr"] = programs
    return Event(type=event.type, data=data, payload=event.payload)


# -- running it ----------------------------------------------------------------------------------------

class ProxyThread:
    """The proxy's event loop in its own thread, for the daemon (whose main thread runs the MQTT worker)."""

    def __init__(self, proxy: SpeakerIdProxy, uri: str) -> None:
        self.proxy, self.uri = proxy, uri
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="wyoming", daemon=True)
        self._started = threading.Event()
        self._error: Optional[BaseException] = None

    def start(self, timeout: float = 10.0) -> None:
        """Returns once listening; WyomingError when the address cannot be bound."""
        self._thread.start()
        self._started.wait(timeout)
        if self._error is not None:
            raise WyomingError(f"wyoming.uri {self.uri}: cannot listen: {self._error}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.proxy.start(self.uri))
        except (OSError, ValueError) as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.proxy.close())
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)


async def serve(proxy: SpeakerIdProxy, uri: str, stop: Optional[asyncio.Event] = None) -> None:
    """Standalone (`edgeverify wyoming`): serve until `stop` is set (or forever)."""
    await proxy.start(uri)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        await proxy.close()
