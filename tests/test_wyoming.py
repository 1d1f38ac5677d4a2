"""The Wyoming proxy end to end: the wyoming library's AsyncTcpClient streams real recordings through
SpeakerIdProxy to a stand-in STT server made with the same library (tests/wyoming_stt.py).

Profiles are enrolled into a temporary ProfileStore from other clips of the same two speakers; the
real int8 model does the identification. Hostile input goes in over raw sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("wyoming")

from wyoming.asr import Transcript  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wyoming_stt import ERROR_TEXT, TEXT, stand_in_info  # noqa: E402
from wyoming_helpers import (  # noqa: E402,F401  (clips, handler: module fixtures)
    ENROLL, PROBE, STRANGER, WAIT_S, clips, handler, pcm16, proxied, read_until, run, stream, transcribe, wait_for,
)

from edgeverify.core.audio import resample  # noqa: E402
from edgeverify.core.model_store import DEFAULT_MODEL  # noqa: E402

pytestmark = pytest.mark.slow


# -- the happy path ------------------------------------------------------------------------------------

def test_transcript_unchanged_and_speaker_identified(handler, clips) -> None:
    async def main() -> None:
        async with proxied(handler) as (proxy, stt, decisions):
            for name in ("alice", "bob"):
                stt.audio.clear()
                events = await transcribe(proxy.port, clips[name])
                assert events[-1].type == "transcript", events[-1]
                text = Transcript.from_event(events[-1]).text
                assert text.encode("utf-8") == TEXT.encode("utf-8")  # byte-identical, non-ASCII included
                assert events[-1].data.get("language") == "de"
                assert bytes(stt.audio) == clips[name]  # the STT got exactly the client's audio
                body, source = decisions[-1]
                assert source == "wyoming"
                assert body["speaker"] == name and body["same_speaker"] is True
                assert body["event"] == "identified" and body["request_id"] == "req-1"
                assert body["score"] >= body["threshold"] and "scores" not in body
                assert (body["model"], body["precision"]) == (DEFAULT_MODEL, "int8")
                assert abs(body["duration_s"] - len(clips[name]) / 32000) < 0.05
                # Home Assistant matches the decision to its pipeline run by the returned text's digest
                # (whitespace collapsed, case folded); the text itself is never in the decision
                norm = " ".join(TEXT.split()).casefold().encode("utf-8")
                assert body["utterance"]["transcript_sha256"] == hashlib.sha256(norm).hexdigest()
                assert abs(body["utterance"]["at"] - time.time()) < 30
                assert "Licht" not in json.dumps(body, ensure_ascii=False)
            assert len(decisions) == 2 and proxy.decisions == 2
            timing = proxy.last_timing
            assert {"audio_s", "embed_ms", "stt_ms", "added_ms"} <= set(timing)

    run(main())


def test_other_rates_widths_and_channels_are_converted_as_they_stream(handler, clips) -> None:
    """48 kHz stereo s16 and 8 kHz u8: the STT gets the bytes as sent, we still find the speaker."""
    x = np.frombuffer(clips["bob"], dtype="<i2").astype(np.float64) / 32768
    up = resample(x, 16000, target=48000)
    stereo = (np.clip(np.stack([up, 0.5 * up], axis=1), -1, 1) * 32767).astype("<i2").tobytes()

    async def main() -> None:
        async with proxied(handler) as (proxy, stt, decisions):
            events = await transcribe(proxy.port, stereo, rate=48000, channels=2, frames=999)
            assert events[-1].type == "transcript" and bytes(stt.audio) == stereo
            assert decisions[-1][0]["speaker"] == "bob"

    run(main())


def test_reject_unknown_and_tagging(handler, clips) -> None:
    async def main() -> None:
        async with proxied(handler, reject_unknown=True, tag_transcript="{speaker}: {text}") as (proxy, stt, decisions):
            events = await transcribe(proxy.port, clips["stranger"])
            assert events[-1].type == "transcript" and Transcript.from_event(events[-1]).text == ""
            body = decisions[-1][0]
            assert body["speaker"] is None and body["rejected"] is True and body["event"] == "not-identified"

            events = await transcribe(proxy.port, clips["alice"])
            assert Transcript.from_event(events[-1]).text == f"alice: {TEXT}"
            assert decisions[-1][0]["rejected"] is False

            # too little audio to identify anyone: unknown, hence rejected, with the reason in the event
            events = await transcribe(proxy.port, clips["alice"][: 16000])
            assert Transcript.from_event(events[-1]).text == ""
            body = decisions[-1][0]
            assert body["rejected"] is True and body["ok"] is False and body["error"]["code"] == "too_short"

    run(main())


def test_describe_returns_the_stt_info(handler) -> None:
    async def main() -> None:
        async with proxied(handler) as (proxy, stt, _):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await client.write_event(Describe().event())
                events = await read_until(client, ("info",))
            got, want = Info.from_event(events[-1]), stand_in_info()
            assert [m.to_dict() for m in got.asr[0].models] == [m.to_dict() for m in want.asr[0].models]
            assert got.asr[0].name == want.asr[0].name and "via edgeverify" in (got.asr[0].description or "")

    run(main())


def test_identify_event_of_wyoming_pr50(handler, clips) -> None:
    """`identify` + audio answers identified/not-identified itself; the STT is not involved. The reply
    names the speaker but carries no score (no oracle for whoever tunes a spoof) unless configured."""
    async def main() -> None:
        async with proxied(handler, identify_confidence=True) as (proxy, stt, decisions):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await stream(client, clips["bob"], start=Event(type="identify", data={}))
                events = await read_until(client, ("identified", "not-identified", "error"))
                assert events[-1].data == {"name": "bob", "confidence": decisions[-1][0]["score"]}
        async with proxied(handler) as (proxy, stt, decisions):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await stream(client, clips["bob"], start=Event(type="identify", data={}))
                events = await read_until(client, ("identified", "not-identified", "error"))
                assert events[-1].type == "identified" and events[-1].data == {"name": "bob"}
                await stream(client, clips["stranger"], start=Event(type="identify", data={}))
                events = await read_until(client, ("identified", "not-identified", "error"))
                assert events[-1].type == "not-identified"
                await client.write_event(Event(type="enroll", data={"name": "mallory"}))
                events = await read_until(client, ("error",))
                assert events[-1].data["code"] == "not-supported"
            assert stt.connections == 0 and handler.store.list() and len(handler.store.list()) == 2

    run(main())


# -- failures on the STT side ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode,code", [("error", "stand-in-error"), ("close", "stt-closed"), ("hang", "stt-timeout")])
def test_stt_failures_reach_the_client_as_wyoming_errors(handler, clips, mode: str, code: str) -> None:
    async def main() -> None:
        async with proxied(handler, mode, stt_timeout_s=1.0) as (proxy, stt, _):
            events = await transcribe(proxy.port, clips["alice"])
            assert events[-1].type == "error" and events[-1].data["code"] == code
            if mode == "error":
                assert events[-1].data["text"] == ERROR_TEXT
            await wait_for(lambda: proxy.active_sessions == 0 and proxy.buffer_bytes == 0, "session end")

    run(main())


def test_unreachable_stt_is_one_error(handler, clips) -> None:
    async def main() -> None:
        async with proxied(handler) as (proxy, stt, decisions):
            port = int(stt.uri.rsplit(":", 1)[1])
            await stt.stop()
            await asyncio.sleep(0.1)
            proxy.config.stt_uri = f"tcp://127.0.0.1:{port}"
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await stream(client, clips["alice"])
                events = await read_until(client, ("error",))
                assert events[-1].data["code"] == "stt-unavailable"
                await client.write_event(Event(type="ping", data={"text": "x"}))
                events = await read_until(client, ("pong", "error"))
                assert events == [events[-1]] and events[-1].type == "pong"  # one error, not one per chunk
            assert not decisions

    run(main())


# -- resources and hostile input ----------------------------------------------------------------------------

def test_dropped_client_frees_buffers_and_the_stt_connection(handler, clips) -> None:
    async def main() -> None:
        async with proxied(handler) as (proxy, stt, decisions):
            client = AsyncTcpClient("127.0.0.1", proxy.port)
            await client.connect()
            await stream(client, clips["alice"], stop=False)
            await wait_for(lambda: proxy.buffer_bytes >= len(clips["alice"]), "audio buffered")
            assert proxy.active_sessions == 1 and stt.connections == 1
            await client.disconnect()
            await wait_for(lambda: proxy.active_sessions == 0, "session released")
            assert proxy.buffer_bytes == 0
            await wait_for(lambda: stt.closed == 1, "STT connection closed")
            assert not decisions

    run(main())


async def raw_exchange(port: int, data: bytes) -> list[dict]:
    """Send raw bytes, return the events sent back until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = []
    while True:
        line = await asyncio.wait_for(reader.readline(), WAIT_S)
        if not line:
            break
        header = json.loads(line)
        if header.get("data_length"):
            header.setdefault("data", {}).update(json.loads(await reader.readexactly(header["data_length"])))
        out.append(header)
    writer.close()
    return out


@pytest.mark.parametrize(
    "data",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"type": 5}\n',
        b'{"type": "audio-chunk", "payload_length": 999999999999}\n',
        b'{"type": "audio-chunk", "payload_length": "12"}\n',
        b'{"type": "transcribe", "data_length": -1}\n',
        b'{"type": "transcribe", "data_length": 4}\n[1]\n',
        b'{"type": "transcribe", "data": [1]}\n',
        b'{"type": "x"' + b" " * 70000 + b"}\n",
        b'{"type": "audio-chunk", "payload_length": 100}\n' + b"\x00" * 10,
    ],
    ids=["garbage", "array", "type-int", "huge-payload", "length-str", "negative", "data-not-object",
         "data-array", "long-line", "truncated"],
)
def test_hostile_bytes_get_an_error_and_a_closed_connection(handler, clips, data: bytes) -> None:
    async def main() -> None:
        async with proxied(handler) as (proxy, stt, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(data)
            await writer.drain()
            if data.endswith(b"\x00" * 10):
                writer.write_eof()
            line = await asyncio.wait_for(reader.readline(), WAIT_S)
            header = json.loads(line)
            assert header["type"] == "error", header
            await asyncio.wait_for(reader.read(), WAIT_S)  # the rest (data block), then EOF: a hang fails here
            writer.close()
            await wait_for(lambda: proxy.active_sessions == 0, "session released")
            # and the proxy still serves everyone else
            events = await transcribe(proxy.port, clips["bob"])
            assert events[-1].type == "transcript"

    run(main())


def test_bad_events_inside_a_good_stream(handler, clips) -> None:
    """Unknown types are answered with an error and the connection goes on; a bad audio format means
    no identification (unknown) but the transcript still comes through."""
    async def main() -> None:
        async with proxied(handler) as (proxy, stt, decisions):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await client.write_event(Event(type="run-shell", data={"cmd": "rm -rf /"}))
                events = await read_until(client, ("error",))
                assert events[-1].data["code"] == "unsupported-event"
                await stream(client, clips["alice"], rate=123456789)
                events = await read_until(client, ("transcript", "error"))
                assert events[-1].type == "transcript" and Transcript.from_event(events[-1]).text == TEXT
                body = decisions[-1][0]
                assert body["speaker"] is None and body["error"]["code"] == "bad_audio"
                assert "sample rate" in body["error"]["message"]

    run(main())


def test_too_many_clients_are_told_busy(handler) -> None:
    async def main() -> None:
        async with proxied(handler, max_clients=1) as (proxy, stt, _):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as first:
                await first.write_event(Event(type="ping", data={}))
                await read_until(first, ("pong",))
                async with AsyncTcpClient("127.0.0.1", proxy.port) as second:
                    events = await read_until(second, ("error",))
                    assert events[-1].data["code"] == "busy"

    run(main())
