"""Stand-in Wyoming services for the satellite test, made with the wyoming library's own server classes,
all served from one background event loop:

- `Stt`: speech-to-text answering every stream with a fixed text (our proxy sits in front of it);
- `Tts`: text-to-speech answering with 0.1 s of silence (a satellite pipeline ends with TTS);
- `Satellite`: what a Wyoming satellite (wyoming-satellite on a Pi) is to Home Assistant: HA's wyoming
  integration connects to it; `speak()` asks HA for a pipeline run (RunPipeline asr -> tts) and streams
  a recording as AudioChunks, as a satellite streams its microphone; it records what HA sends back
  (the Transcript at stt-end, Synthesize, errors).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional

from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import (AsrModel, AsrProgram, Attribution, Describe, Info, Satellite as SatelliteInfo,
                          TtsProgram, TtsVoice)
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize

ATTRIBUTION = Attribution(name="edgeverify tests", url="https://example.invalid")
RATE, WIDTH, CHANNELS = 16000, 2, 1
CHUNK_BYTES = 2048  # 1024 samples, what wyoming-satellite sends


class Loop:
    """One asyncio loop in a thread for all stand-ins; `call` runs a coroutine on it from the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _Service:
    info: Info

    def __init__(self, loop: Loop, port: int) -> None:
        self.loop, self.port = loop, port
        self.server = AsyncTcpServer("127.0.0.1", port)
        loop.call(self.server.start(self._handler))

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> AsyncEventHandler:
        raise NotImplementedError

    def stop(self) -> None:
        self.loop.call(self.server.stop())


class Stt(_Service):
    def __init__(self, loop: Loop, port: int, text: str) -> None:
        self.text = text
        self.transcripts = 0
        model = AsrModel(name="stand-in", attribution=ATTRIBUTION, installed=True, description="fixed text",
                         version="1", languages=["en"])
        self.info = Info(asr=[AsrProgram(name="stand-in-stt", attribution=ATTRIBUTION, installed=True,
                                         description="stand-in STT", version="1", models=[model])])
        super().__init__(loop, port)

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> AsyncEventHandler:
        service = self

        class Handler(AsyncEventHandler):
            async def handle_event(self, event: Event) -> bool:
                if Describe.is_type(event.type):
                    await self.write_event(service.info.event())
                elif AudioStop.is_type(event.type):
                    service.transcripts += 1
                    await self.write_event(Transcript(text=service.text).event())
                return True

        return Handler(reader, writer)


class Tts(_Service):
    def __init__(self, loop: Loop, port: int) -> None:
        voice = TtsVoice(name="silence", attribution=ATTRIBUTION, installed=True, description="silence",
                         version="1", languages=["en"])
        self.info = Info(tts=[TtsProgram(name="stand-in-tts", attribution=ATTRIBUTION, installed=True,
                                         description="stand-in TTS", version="1", voices=[voice])])
        super().__init__(loop, port)

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> AsyncEventHandler:
        service = self

        class Handler(AsyncEventHandler):
            async def handle_event(self, event: Event) -> bool:
                if Describe.is_type(event.type):
                    await self.write_event(service.info.event())
                elif Synthesize.is_type(event.type):
                    rate = 22050  # what HA asks satellites' TTS in (no conversion needed)
                    await self.write_event(AudioStart(rate=rate, width=WIDTH, channels=CHANNELS).event())
                    await self.write_event(AudioChunk(rate=rate, width=WIDTH, channels=CHANNELS,
                                                      audio=bytes(rate // 10 * WIDTH)).event())
                    await self.write_event(AudioStop().event())
                    return False
                return True

        return Handler(reader, writer)


class Satellite(_Service):
    """HA's wyoming integration is the client; `speak` runs one pipeline from this side."""

    def __init__(self, loop: Loop, port: int) -> None:
        self.info = Info(satellite=SatelliteInfo(name="stand-in satellite", attribution=ATTRIBUTION, installed=True,
                                                 description="stand-in satellite", version="1"))
        self.handler: Optional[AsyncEventHandler] = None
        self.running = asyncio.Event()  # HA sent RunSatellite
        self.received: list[Event] = []
        super().__init__(loop, port)

    def _handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> AsyncEventHandler:
        service = self

        class Handler(AsyncEventHandler):
            async def handle_event(self, event: Event) -> bool:
                service.received.append(event)
                if Describe.is_type(event.type):
                    await self.write_event(service.info.event())
                elif Ping.is_type(event.type):
                    await self.write_event(Pong(text=Ping.from_event(event).text).event())
                elif RunSatellite.is_type(event.type):
                    service.handler = self
                    service.running.set()
                return True

        return Handler(reader, writer)

    def wait_running(self, timeout: float = 60) -> None:
        self.loop.call(asyncio.wait_for(self.running.wait(), timeout), timeout + 5)

    def speak(self, pcm: bytes, timeout: float = 60) -> tuple[Optional[str], list[str]]:
        """One satellite turn: RunPipeline (speech-to-text .. text-to-speech), the audio, AudioStop; returns
        (the transcript HA sent back at stt-end, the Error texts HA sent) once HA sent Synthesize or an error."""
        return self.loop.call(self._speak(pcm, timeout), timeout + 5)

    async def _speak(self, pcm: bytes, timeout: float) -> tuple[Optional[str], list[str]]:
        h = self.handler
        assert h is not None, "HA has not connected to the satellite"
        start = len(self.received)
        await h.write_event(RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS).event())
        await h.write_event(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
        for i in range(0, len(pcm), CHUNK_BYTES):
            await h.write_event(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS, audio=pcm[i:i + CHUNK_BYTES]).event())
            await asyncio.sleep(0.002)  # faster than real time, but in order and paced
        await h.write_event(AudioStop().event())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.received[start:]
            errors = [Error.from_event(e).text for e in new if Error.is_type(e.type)]
            if errors or any(Synthesize.is_type(e.type) for e in new):
                texts = [Transcript.from_event(e).text for e in new if Transcript.is_type(e.type)]
                return (texts[-1] if texts else None), errors
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no answer from HA's pipeline within {timeout:.0f} s: {[e.type for e in self.received[start:]]}")

