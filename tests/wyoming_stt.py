"""A stand-in Wyoming speech-to-text service made with the wyoming library's own server classes.

It answers `describe` with an Info, and each transcribe/audio stream per `mode`:
  ok      a Transcript with a fixed text (non-ASCII included)
  error   a Wyoming Error event
  close   closes the connection after the second audio chunk (a crash mid-stream)
  hang    never answers
It records what it received (the audio bytes, so tests can check they arrive unchanged) and when
connections end (so tests can check the proxy closes them).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Optional

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncTcpServer

TEXT = "Schalte das Licht im Büro ein – 灯を消して ✓ \"quoted\"\n"
ERROR_TEXT = "model exploded (stand-in)"


def stand_in_info() -> Info:
    attribution = Attribution(name="stand-in", url="https://example.invalid")
    model = AsrModel(
        name="stand-in-model", attribution=attribution, installed=True, description="fixed text",
        version="1.0", languages=["de", "en", "ja"],
    )
    program = AsrProgram(
        name="stand-in-stt", attribution=attribution, installed=True, description="test STT",
        version="1.0", models=[model],
    )
    return Info(asr=[program])


class StandInStt:
    def __init__(self, mode: str = "ok", delay_s: float = 0.0, port: int = 0, record: bool = True) -> None:
        self.mode = mode
        self.record = record
        self.port = port
        self.delay_s = delay_s
        self.server: Optional[AsyncTcpServer] = None
        self.audio = bytearray()
        self.received = 0  # audio bytes received (also when not recording them)
        self.transcribes = 0
        self.connections = 0
        self.closed = 0

    @property
    def uri(self) -> str:
        assert self.server is not None and self.server._server is not None
        return f"tcp://127.0.0.1:{self.server._server.sockets[0].getsockname()[1]}"

    @property
    def audio_sha(self) -> str:
        return hashlib.sha256(self.audio).hexdigest()

    async def start(self) -> "StandInStt":
        self.server = AsyncTcpServer("127.0.0.1", self.port)
        await self.server.start(lambda r, w: _Handler(self, r, w))
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


class _Handler(AsyncEventHandler):
    def __init__(self, stt: StandInStt, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.stt = stt
        self.chunks = 0
        self.delay_s = stt.delay_s
        stt.connections += 1

    async def handle_event(self, event: Event) -> bool:
        stt = self.stt
        if Describe.is_type(event.type):
            await self.write_event(stand_in_info().event())
        elif Transcribe.is_type(event.type):
            stt.transcribes += 1
            name = Transcribe.from_event(event).name or ""
            self.delay_s = float(name[6:]) if name.startswith("delay:") else stt.delay_s  # per request (bench)
        elif AudioChunk.is_type(event.type):
            self.chunks += 1
            stt.received += len(event.payload or b"")
            if stt.record:
                stt.audio += AudioChunk.from_event(event).audio
            if stt.mode == "close" and self.chunks >= 2:
                self.writer.close()  # older library versions do not close on False themselves
                return False
        elif AudioStop.is_type(event.type):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if stt.mode == "ok":
                event = Transcript(text=TEXT).event()
                event.data["language"] = "de"  # a field only newer library versions model
                await self.write_event(event)
            elif stt.mode == "error":
                await self.write_event(Error(text=ERROR_TEXT, code="stand-in-error").event())
        return True

    async def disconnect(self) -> None:
        self.stt.closed += 1
