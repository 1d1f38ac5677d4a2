"""One Wyoming client connection: events from the client go to the STT (and into the speaker's
embedding), the STT's answers come back, the transcript held until the speaker is known."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Optional, Protocol

import numpy as np

from ..app.decisions import DecisionService
from ..core.audio import TARGET_RATE
from ..core.audio_stream import StreamConverter, check_format
from ..errors import AudioError, EdgeVerifyError, WyomingError
from .wire import Event, async_write_event, error_event, open_uri, read_event
from .work import EmbedQueue, QueueFull


class SessionHost(Protocol):
    """What a session needs of the server that accepted it (server.SpeakerIdProxy): the session never
    imports the server, so the two modules stay one-way (server -> session)."""

    config: Any  # the wyoming config section
    handler: DecisionService
    work: EmbedQueue
    last_timing: dict[str, float]

    def decide(self, samples: np.ndarray, error: Optional[EdgeVerifyError], request_id: Optional[str]) -> dict: ...

    def publish(self, body: dict, transcript: Optional[str], heard: Optional[str] = None) -> None: ...

    def transcript_text(self, text: str, decision: Optional[dict]) -> str: ...

log = logging.getLogger(__name__)

MAX_AWAITING = 8  # utterances of one connection whose transcript is still to come
MAX_HELD_EVENTS = 4096  # streamed transcript events held back until the decision (reject_unknown)
AUDIO_EVENTS = ("audio-start", "audio-chunk", "audio-stop")
MAX_BYTES_PER_S = 48000 * 2 * 2  # byte cap per second of wyoming.max_audio_s: 48 kHz stereo s16
PROGRESS_EVENTS = AUDIO_EVENTS + ("transcribe", "identify", "describe")  # what keeps a connection from idling


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
        self.held: list["Event"] = []  # streamed transcript events held back until the decision (reject_unknown)
        self.audio_bytes = 0  # forwarded so far (the caps: wyoming.max_audio_s)
        self.audio_s = 0.0

    def count(self, event: "Event") -> None:
        """Add a chunk to what this utterance has sent: seconds by its declared format (by 16 kHz s16 mono
        when that is unusable) and bytes, so that neither a slow format nor a bogus one passes the cap."""
        n = len(event.payload or b"")
        self.audio_bytes += n
        d = event.data
        try:
            rate, width, channels = check_format(d.get("rate"), d.get("width"), d.get("channels"))
        except AudioError:
            rate, width, channels = TARGET_RATE, 2, 1
        self.audio_s += n / (rate * width * channels)

    def over(self, max_s: float) -> bool:
        return self.audio_s > max_s or self.audio_bytes > max_s * MAX_BYTES_PER_S

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


class Session:
    """One client connection."""

    def __init__(self, proxy: SessionHost, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.opts = proxy.config
        self.reader, self.writer = reader, writer
        self.down: Optional[_Downstream] = None
        self.utt: Optional[_Utterance] = None  # the utterance whose audio is streaming in
        # utterances whose audio-stop went to the STT, oldest first: each transcript answers the oldest, so a
        # `transcribe` pipelined before the previous transcript arrived cannot take its decision
        self.awaiting: collections.deque[_Utterance] = collections.deque()
        self.waiting: Optional[str] = None  # "transcript" / "info" while the STT owes us an answer
        self._timer: Optional[asyncio.TimerHandle] = None
        self.failed = False  # the STT failed during this utterance: drop its remaining audio
        self.peer = writer.get_extra_info("peername")

    @property
    def buffer_bytes(self) -> int:
        utts = list(self.awaiting) + ([self.utt] if self.utt is not None else [])
        return (self.utt.converter.nbytes if self.utt is not None else 0) + sum(
            len(e.payload or b"") + 64 for u in utts for e in u.held
        )

    async def send(self, event: "Event") -> None:
        """To the client. Each event is written in one go (no await between its parts), so the relay task
        and the client loop never interleave bytes."""
        await async_write_event(event, self.writer)

    async def run(self) -> None:
        """Serve the client until it leaves, sends garbage, idles, or its session is over.

        Idle means no utterance work (ping and refused events do not count) while the STT owes nothing;
        a session ends after max_session_s whatever it does: a slot cannot be held forever."""
        loop = asyncio.get_running_loop()
        idle_s, end_at = self.opts.idle_timeout_s, loop.time() + self.opts.max_session_s
        idle_at = loop.time() + idle_s
        reading: Optional[asyncio.Future] = None  # never cancelled mid-event: the stream stays in sync
        try:
            while True:
                now = loop.time()
                if now >= end_at:
                    log.info("wyoming: client %s reached the %.0f s session limit; disconnecting", self.peer, self.opts.max_session_s)
                    await self.send(error_event(f"session longer than {self.opts.max_session_s:.0f} s; reconnect", "session-limit"))
                    break
                if now >= idle_at:
                    if self.waiting is None:
                        log.info("wyoming: client %s idle for %.0f s; disconnecting", self.peer, idle_s)
                        await self.send(error_event(f"idle for {idle_s:.0f} s", "idle-timeout"))
                        break
                    idle_at = now + idle_s  # the STT owes an answer: its own timeout decides
                if reading is None:
                    reading = asyncio.ensure_future(read_event(self.reader))
                done, _ = await asyncio.wait({reading}, timeout=min(idle_at, end_at) - now)
                if not done:
                    continue
                try:
                    event = reading.result()
                except WyomingError as exc:
                    log.warning("wyoming: bad event from %s: %s", self.peer, exc.message)
                    await self.send(error_event(exc.message, "bad-event"))
                    break  # the byte stream cannot be resynchronised
                finally:
                    reading = None
                if event is None:
                    break
                if event.type in PROGRESS_EVENTS:
                    idle_at = loop.time() + idle_s
                await self.handle(event)
        except (ConnectionError, OSError) as exc:
            log.info("wyoming: client %s gone: %s", self.peer, exc)
        except Exception:  # a bug must not take the server down; this client is told and dropped
            log.exception("wyoming: session with %s failed", self.peer)
            with contextlib.suppress(ConnectionError, OSError):
                await self.send(error_event("internal error", "internal-error"))
        finally:
            if reading is not None:
                reading.cancel()
            self.release()

    def release(self) -> None:
        """Client gone: drop buffers and the STT connection; a running embedding's result is discarded."""
        self._cancel_timer()
        self.proxy.work.drop(self)  # queued embeddings of a client that left are not run
        self.utt = None
        self.awaiting.clear()
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
        self.utt = _Utterance(min(self.proxy.handler.max_audio_seconds, self.opts.max_audio_s), rid, identify_only)

    async def _audio(self, event: "Event") -> None:
        if self.failed:  # the rest of an utterance whose STT failed (the client was told once)
            return
        if event.type == "audio-start" and (self.utt is None or self.utt.decision is not None):
            self._new_utterance(event, identify_only=False)  # audio without transcribe: still proxied
        utt = self.utt
        if utt is None:  # stray audio after the utterance ended (or after an STT failure): dropped
            return
        if event.type == "audio-chunk":
            utt.count(event)
            if utt.over(self.opts.max_audio_s):  # cut: neither the STT nor we get more of it
                log.warning("wyoming: client %s sent over %.0f s of audio in one utterance; cut", self.peer, self.opts.max_audio_s)
                await self._stt_failed(f"utterance longer than {self.opts.max_audio_s:g} s of audio (wyoming.max_audio_s); cut",
                                       "audio-too-long")
                return
            utt.feed(event)
        if event.type == "audio-stop":
            if not utt.identify_only and len(self.awaiting) >= MAX_AWAITING:
                await self._stt_failed(f"{len(self.awaiting)} utterances are waiting for their transcript", "busy")
                return
            try:
                self._decide(utt)
            except QueueFull as exc:  # never queued: nothing held for it; the client is told, the STT dropped
                log.warning("wyoming: client %s: %s", self.peer, exc.message)
                await self._stt_failed(exc.message, "busy")
                return
        if not utt.identify_only:
            if not await self._forward(event, expect="transcript" if event.type == "audio-stop" else None):
                return
        if event.type == "audio-stop":
            if self.utt is utt:
                self.utt = None  # later audio without a new start is stray
            if utt.identify_only:
                await self._send_identity(utt)
            else:
                self.awaiting.append(utt)

    def _decide(self, utt: _Utterance) -> None:
        """Start the embedding now, concurrently with the STT's work on the same audio."""
        utt.t_stop = time.perf_counter()
        samples = utt.converter.finish()

        def work() -> dict:
            started = time.perf_counter()
            body = self.proxy.decide(samples, utt.error, utt.request_id)
            utt.embed_ms = 1000 * (time.perf_counter() - started)
            return body

        utt.decision = self.proxy.work.submit(self, work)  # QueueFull when over a bound

    async def _decision_of(self, utt: _Utterance) -> Optional[dict]:
        """The utterance's decision; None when there is none to act on: the queue made room for another
        connection's utterance (the client is told `busy`), or the job was dropped with its client."""
        assert utt.decision is not None
        try:
            return await utt.decision  # usually done already: the STT takes longer than the embedding
        except QueueFull as exc:
            await self.send(error_event(exc.message, "busy"))
            return None
        except asyncio.CancelledError:
            if _dropped(utt.decision):
                return None
            raise

    async def _send_identity(self, utt: _Utterance) -> None:
        """PR #50 reply to `identify`: identified {name, confidence} or not-identified."""
        body = await self._decision_of(utt)
        if body is None:
            return
        if self.utt is utt:
            self.utt = None
        self.proxy.publish(body, None)
        if body.get("speaker"):
            data = {"name": body["speaker"]}
            if self.opts.identify_confidence:  # off by default: a score would guide whoever tunes a spoof
                data["confidence"] = body.get("score")
            await self.send(Event(type="identified", data=data))
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
        if expect is not None and not (expect == "transcript" and self.awaiting):  # else: the oldest's timer runs
            self._arm_timer(expect)
        return True

    def _arm_timer(self, expect: str) -> None:
        self.waiting = expect
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(self.opts.stt_timeout_s, self._on_timeout)

    async def _stt_failed(self, text: str, code: str) -> None:
        """Tell the client once, drop the STT connection and the utterance (a new transcribe reconnects)."""
        self._cancel_timer()
        self.waiting, self.utt, self.failed = None, None, True
        self.awaiting.clear()
        self.proxy.work.drop(self)  # their transcripts will not come: nothing to hold them back for
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
            if self.waiting is not None or self.awaiting or (self.utt is not None and not self.utt.identify_only):
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
            self.waiting, self.utt = None, None
            self.awaiting.clear()
            self.proxy.work.drop(self)
            await self.send(event)
        elif t == "info":
            if self.waiting == "info":
                self._cancel_timer()
                self.waiting = None
                if self.awaiting:  # a describe between utterances: the oldest transcript's wait goes on
                    self._arm_timer("transcript")
            await self.send(_proxied_info(event))
        elif t in ("transcript-start", "transcript-chunk", "transcript-stop") and self.opts.reject_unknown:
            # a streamed transcript may only reach the client once we know the speaker may talk
            utt = self.awaiting[0] if self.awaiting else self.utt
            if utt is None:  # nobody's utterance: nobody cleared to hear it
                return
            if len(utt.held) >= MAX_HELD_EVENTS:
                raise WyomingError(f"more than {MAX_HELD_EVENTS} streamed transcript events")
            utt.held.append(event)
        else:
            await self.send(event)

    async def _transcript(self, event: "Event") -> None:
        text = event.data.get("text")
        if not isinstance(text, str):
            raise WyomingError("transcript without text")
        received = time.perf_counter()
        utt = self.awaiting.popleft() if self.awaiting else None
        self._cancel_timer()  # the STT answered; waiting for our own decision is not its timeout
        if self.awaiting:
            self._arm_timer("transcript")  # the next one's turn
        else:
            self.waiting = None
        if utt is None:  # a transcript for no utterance of ours: we cannot say who spoke it
            if self.opts.reject_unknown or self.opts.tag_transcript:
                log.warning("wyoming: dropped a transcript from %s that answers no utterance", self.opts.stt_uri)
                return
            await self.send(event)
            return
        decision = await self._decision_of(utt)
        if decision is None:  # no transcript without a decision
            return
        rejected = bool(decision.get("rejected"))
        data = dict(event.data)
        data["text"] = self.proxy.transcript_text(text, decision)
        self.proxy.publish(decision, data["text"], text)  # the returned text's digest, never the text (the
        # STT's own text stays in-process: the inbox keeps it with an unrecognised utterance)
        for held in utt.held:
            if not (rejected and held.type == "transcript-chunk"):
                await self.send(held)
        utt.held = []
        await self.send(Event(type="transcript", data=data, payload=event.payload))
        sent = time.perf_counter()
        self.proxy.last_timing = {
            "audio_s": round(float(decision.get("duration_s") or 0.0), 2),
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


def _dropped(decision: asyncio.Future) -> bool:
    """The awaited decision was dropped (the connection's work was cancelled), not this task."""
    task = asyncio.current_task()
    return decision.cancelled() and not (task is not None and task.cancelling())
