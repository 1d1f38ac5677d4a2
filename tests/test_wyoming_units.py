"""Parts of the Wyoming proxy that need no model: the streaming PCM converter, the bounded event
reader, and the `wyoming:` config section."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from edgeverify.core.audio import audio_from_array
from edgeverify.core.audio_stream import StreamConverter, check_format, pcm_to_mono
from edgeverify.store.config import parse_config
from edgeverify.errors import AudioError, ConfigError


def _pcm(x: np.ndarray, width: int) -> tuple[bytes, np.ndarray]:
    """Float (frames, channels) -> little-endian PCM bytes, and the exact float values they encode."""
    if width == 1:
        q = np.round(x * 127 + 128).astype(np.uint8)
        return q.tobytes(), (q.astype(np.float64) - 128) / 128
    if width == 3:
        v = np.round(x * (2**23 - 1)).astype("<i4")
        return v.view(np.uint8).reshape(*v.shape, 4)[..., :3].tobytes(), v / 2**23
    dtype = "<i2" if width == 2 else "<i4"
    q = np.round(x * (2 ** (8 * width - 1) - 1)).astype(dtype)
    return q.tobytes(), q / 2 ** (8 * width - 1)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("width,channels", [(2, 1), (1, 2), (3, 1), (4, 3)])
def test_streamed_chunks_match_converting_the_whole_clip(rate: int, width: int, channels: int) -> None:
    rng = np.random.default_rng(rate + width)
    x = np.clip(0.3 * rng.standard_normal((int(rate * 1.3), channels)), -1, 1)
    data, exact = _pcm(x, width)
    conv = StreamConverter(max_seconds=60)
    pos = 0
    while pos < len(data):  # odd chunk sizes: frames split across chunks
        n = int(rng.integers(1, 6000))
        conv.feed(data[pos : pos + n], rate, width, channels)
        pos += n
    if rate != 16000:
        assert conv.samples > 0  # converted while streaming, not only at the end
    whole = audio_from_array(exact.mean(axis=1), rate).samples
    got = conv.finish()
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=1e-5)
    assert conv.nbytes == 0 and conv.samples == 0


def test_buffer_is_bounded_and_says_truncated() -> None:
    conv = StreamConverter(max_seconds=2.0)
    chunk = np.zeros(4800, dtype="<i2").tobytes()  # 0.1 s at 48 kHz
    for _ in range(100):  # 10 s
        conv.feed(chunk, 48000, 2, 1)
        assert conv.nbytes <= 2 * 16000 * 4 + 48000 * 8
    assert conv.truncated and conv.samples == 32000 and conv.finish().size == 32000


def test_format_change_mid_stream_is_converted_piecewise() -> None:
    conv = StreamConverter(max_seconds=10)
    conv.feed(np.zeros(16000, "<i2").tobytes(), 16000, 2, 1)
    conv.feed(np.zeros(8000, "<i2").tobytes(), 8000, 2, 1)
    assert conv.finish().size == 32000


@pytest.mark.parametrize(
    "rate,width,channels,what",
    [(0, 2, 1, "rate"), (10**9, 2, 1, "rate"), (16001, 2, 1, "ratio"), ("16000", 2, 1, "integer"),
     (16000.0, 2, 1, "integer"), (True, 2, 1, "integer"), (16000, 0, 1, "width"), (16000, 5, 1, "width"),
     (16000, 2, 0, "channel"), (16000, 2, 10**6, "channel"), (16000, None, 1, "integer")],
)
def test_bad_declared_formats_are_audio_errors(rate, width, channels, what: str) -> None:
    with pytest.raises(AudioError) as err:
        check_format(rate, width, channels)
    assert what in err.value.message


def test_pcm_decoding_of_each_width() -> None:
    assert pcm_to_mono(bytes([0, 128, 255]), 1, 1).tolist() == [-1.0, 0.0, 127 / 128]
    assert pcm_to_mono(np.array([-32768, 16384], "<i2").tobytes(), 2, 1).tolist() == [-1.0, 0.5]
    assert pcm_to_mono(bytes([0, 0, 0x80, 0xFF, 0xFF, 0x7F]), 3, 1).tolist() == [-1.0, (2**23 - 1) / 2**23]
    assert pcm_to_mono(np.array([2**30, 0], "<i4").tobytes(), 4, 2).tolist() == [0.25]


# -- bounded wire format ----------------------------------------------------------------------------------

def _read(data: bytes):
    pytest.importorskip("wyoming")
    from edgeverify.wyoming_stt.proxy import MAX_LINE_BYTES, read_event

    async def main():
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_event(reader)

    return asyncio.run(main())


def test_reader_accepts_what_the_library_writes() -> None:
    pytest.importorskip("wyoming")
    from wyoming.audio import AudioChunk
    from wyoming.event import write_event

    buf = io.BytesIO()
    write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\x01\x02" * 10).event(), buf)
    event = _read(buf.getvalue())
    assert event.type == "audio-chunk" and event.payload == b"\x01\x02" * 10 and event.data["rate"] == 16000
    assert _read(b"") is None


@pytest.mark.parametrize(
    "data",
    [b'{"type": "a", "payload_length": 2000000}\n', b'{"type": "a", "data_length": 300000}\n',
     b'{"type": "a", "data_length": 1.5}\n', b'{"type": "a", "payload_length": true}\n', b'"a"\n',
     b'{"type": ""}\n', b'{"type": "a", "data_length": 3}\n\xff\xfe\n', b'{"type": "a"', b"x" * 70000 + b"\n",
     b"[" * 60000 + b"\n", b'{"type": "a", "data_length": 30000}\n' + b"[" * 30000],
)
def test_reader_refuses_oversized_or_malformed_events(data: bytes) -> None:
    from edgeverify.errors import WyomingError

    with pytest.raises(WyomingError):
        _read(data)


# -- config ------------------------------------------------------------------------------------------------

def test_wyoming_config_defaults_and_values() -> None:
    c = parse_config(None).wyoming
    assert not c.enabled and c.uri == "tcp://127.0.0.1:10310" and c.tag_transcript is None
    assert c.allow == ["127.0.0.0/8", "::1/128"] and c.identify_confidence is False
    assert (c.max_audio_s, c.idle_timeout_s, c.max_session_s, c.max_queued, c.max_queued_per_client) == (30, 30, 300, 4, 2)
    c = parse_config({"wyoming": {"allow": ["192.168.1.20", "10.0.0.0/24", "fd00::1/64", "::ffff:10.1.1.1"]}}).wyoming
    assert c.allow == ["192.168.1.20/32", "10.0.0.0/24", "fd00::/64", "::ffff:a01:101/128"]
    c = parse_config({"wyoming": {"enabled": True, "uri": "unix:///run/ev.sock", "stt_uri": "tcp://stt:10300",
                                  "reject_unknown": True, "tag_transcript": "[{speaker} {score:.2f}] {text}",
                                  "max_clients": 2, "stt_timeout_s": 30}}).wyoming
    assert c.enabled and c.reject_unknown and c.max_clients == 2 and c.stt_timeout_s == 30.0
    assert c.tag_transcript.format(speaker="a", score=0.5, text="t") == "[a 0.50] t"
    assert parse_config({"wyoming": {"tag_transcript": "off"}}).wyoming.tag_transcript is None


@pytest.mark.parametrize(
    "section,key",
    [({"uri": "http://x:1"}, "wyoming.uri"), ({"stt_uri": "tcp://host"}, "wyoming.stt_uri"),
     ({"tag_transcript": "{speaker}"}, "wyoming.tag_transcript"), ({"tag_transcript": "{text.__class__}"}, "wyoming.tag_transcript"),
     ({"enabled": "yes"}, "wyoming.enabled"), ({"max_clients": 0}, "wyoming.max_clients"),
     ({"stt_timout_s": 3}, "wyoming.stt_timout_s"), ({"reject_unknown": 1}, "wyoming.reject_unknown"),
     ({"allow": "10.0.0.0/8"}, "wyoming.allow"), ({"allow": ["10.0.0.300"]}, "wyoming.allow"),
     ({"allow": ["lan"]}, "wyoming.allow"), ({"allow": [5]}, "wyoming.allow"),
     ({"identify_confidence": "yes"}, "wyoming.identify_confidence"), ({"max_audio_s": 0}, "wyoming.max_audio_s"),
     ({"idle_timeout_s": 0.5}, "wyoming.idle_timeout_s"), ({"max_session_s": 1}, "wyoming.max_session_s"),
     ({"max_queued": 0}, "wyoming.max_queued"), ({"max_queued_per_client": 100}, "wyoming.max_queued_per_client")],
)
def test_wyoming_config_errors_name_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"wyoming": section})
    assert err.value.message.startswith(key + ":"), err.value.message


def test_wyoming_package_is_imported_only_when_used() -> None:
    """The daemon and the CLI start without the optional wyoming package; enabling the proxy without it
    is a ConfigError naming the extra."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['wyoming'] = None\n"  # as if not installed: any import of it fails
        "import edgeverify.__main__ as m, edgeverify.daemon, edgeverify.store.config\n"
        "m.build_parser()\n"
        "from edgeverify.errors import ConfigError\n"
        "from edgeverify.wyoming_stt.proxy import SpeakerIdProxy\n"
        "from edgeverify.store.config import WyomingConfig\n"
        "try:\n"
        "    SpeakerIdProxy(None, WyomingConfig())\n"
        "except ConfigError as e:\n"
        "    print(e.message)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "edgeverify[wyoming]" in out.stdout


def test_allow_list_admits_only_its_addresses() -> None:
    pytest.importorskip("wyoming")
    from edgeverify.wyoming_stt.admission import Admission

    a = Admission(["127.0.0.0/8", "::1/128", "192.168.1.20/32"])
    for peer, ok in [(("127.0.0.1", 5), True), (("127.9.9.9", 5), True), (("::1", 5, 0, 0), True),
                     (("192.168.1.20", 5), True), (("192.168.1.21", 5), False), (("10.0.0.1", 5), False),
                     (("::ffff:192.168.1.20", 5, 0, 0), True), (("::ffff:192.168.1.99", 5, 0, 0), False),
                     (("fe80::1%eth0", 5, 0, 2), False), (("not-an-address", 5), False), ("", True)]:
        assert a.admits(peer) is ok, peer
    assert not Admission([]).admits(("127.0.0.1", 5))


def test_embed_queue_bounds_turns_eviction_and_drop() -> None:
    """The Wyoming embedding queue: per-connection and total bounds, connections in turn, a connection with
    fewer jobs takes the newest place of the one with the most, a dropped connection's jobs never run."""
    import threading

    from edgeverify.wyoming_stt.work import EmbedQueue, QueueFull

    async def main() -> None:
        q = EmbedQueue(max_total=4, max_per_owner=2)
        gate, ran = threading.Event(), []

        def job(tag: str):
            def f() -> str:
                gate.wait(5)
                ran.append(tag)
                return tag
            return f

        x = q.submit("X", job("x"))  # runs first, holds the worker until the gate opens
        while q._running is None:
            await asyncio.sleep(0.01)
        a1, a2 = q.submit("A", job("a1")), q.submit("A", job("a2"))
        with pytest.raises(QueueFull):
            q.submit("A", job("a3"))  # A's share is 2
        b1 = q.submit("B", job("b1"))  # total 4: X running, a1, a2, b1
        c1 = q.submit("C", job("c1"))  # full: A holds the most (2 > C's 1 with this job): a2 makes room
        assert a2.done() and isinstance(a2.exception(), QueueFull) and q.evicted == 1
        with pytest.raises(QueueFull):
            q.submit("D", job("d1"))  # nobody holds more than D would: refused
        assert q.drop("B") == 1 and b1.cancelled()
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(x, a1, c1), 10) == ["x", "a1", "c1"]
        assert ran == ["x", "a1", "c1"] and q.pending() == 0
        # turns: A queues two, then B one: B's runs between A's
        gate.clear()
        y = q.submit("Y", job("y"))
        while q._running is None:
            await asyncio.sleep(0.01)
        futs = [q.submit("A", job("a4")), q.submit("A", job("a5")), q.submit("B", job("b2"))]
        gate.set()
        await asyncio.wait_for(asyncio.gather(y, *futs), 10)
        assert ran[-4:] == ["y", "a4", "b2", "a5"]
        q.close()

    asyncio.run(main())
