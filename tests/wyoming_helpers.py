"""Shared by the Wyoming tests: the real int8 model with two enrolled profiles, real recordings as
16-bit PCM, a proxy in front of the stand-in STT (tests/wyoming_stt.py), and client-side helpers that
use the wyoming library's own AsyncTcpClient."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import pytest
import soundfile as sf
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wyoming_stt import StandInStt  # noqa: E402

from edgeverify.app.decisions import DecisionService  # noqa: E402
from edgeverify.store.config import WyomingConfig  # noqa: E402
from edgeverify.store.profiles import ProfileStore  # noqa: E402
from edgeverify.wyoming_stt.proxy import SpeakerIdProxy  # noqa: E402

ENROLL = {"alice": ("vctk-p225", ["p225_008", "p225_011", "p225_016"]), "bob": ("vctk-p226", ["p226_003", "p226_008", "p226_016"])}
PROBE = {"alice": ("vctk-p225", "p225_022"), "bob": ("vctk-p226", "p226_022")}
STRANGER = ("ls-1688", None)  # any clip of a third speaker, never enrolled (another corpus)
WAIT_S = 30.0


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 2 * WAIT_S))


def pcm16(path: Path) -> bytes:
    x, rate = sf.read(str(path), dtype="int16")
    assert rate == 16000 and x.ndim == 1
    return x.tobytes()


@pytest.fixture(scope="module")
def handler(int8_verifier, speech_dir: Path, tmp_path_factory) -> DecisionService:
    from edgeverify.core.audio import read_audio

    store = ProfileStore(tmp_path_factory.mktemp("wyoming-state"))
    for name, (spk, clips) in ENROLL.items():
        embs = [int8_verifier.embed(read_audio(speech_dir / "dev" / spk / f"{c}.wav")) for c in clips]
        store.enroll(name, embs, clips, model=int8_verifier.model)
    return DecisionService(int8_verifier, store, max_audio_seconds=30.0)


@pytest.fixture(scope="module")
def clips(speech_dir: Path) -> dict[str, bytes]:
    out = {name: pcm16(speech_dir / "dev" / spk / f"{clip}.wav") for name, (spk, clip) in PROBE.items()}
    stranger = sorted((speech_dir / "dev" / STRANGER[0]).glob("*.wav"))[0]
    out["stranger"] = pcm16(stranger)
    return out


@contextlib.asynccontextmanager
async def proxied(handler: DecisionService, mode: str = "ok", **options: Any) -> AsyncIterator[tuple]:
    stt = await StandInStt(mode).start()
    decisions: list[tuple[dict, str]] = []
    opts = {"stt_uri": stt.uri, **options}
    proxy = SpeakerIdProxy(handler, WyomingConfig(**opts), lambda body, source: decisions.append((body, source)))
    await proxy.start("tcp://127.0.0.1:0")
    try:
        yield proxy, stt, decisions
    finally:
        await proxy.close()
        await stt.stop()


async def read_until(client: AsyncTcpClient, types: tuple[str, ...]) -> list[Event]:
    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), WAIT_S)
        assert event is not None, f"connection closed; got {[e.type for e in events]}"
        events.append(event)
        if event.type in types:
            return events


async def stream(client: AsyncTcpClient, pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1,
                 start: Optional[Event] = None, frames: int = 1024, stop: bool = True) -> None:
    await client.write_event(start or Event(type="transcribe", data={"language": "de", "context": {"request_id": "req-1"}}))
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    step = frames * width * channels
    for i in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step]).event())
    if stop:
        await client.write_event(AudioStop().event())


async def transcribe(port: int, pcm: bytes, **kw: Any) -> list[Event]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await stream(client, pcm, **kw)
        return await read_until(client, ("transcript", "error"))


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(int(WAIT_S * 20)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


