"""read_audio / audio_from_array on every container and failure mode we promise to handle."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from edgeverify.core.audio import TARGET_RATE, Audio, audio_from_array, read_audio
from edgeverify.errors import (
    AudioError,
    EmptyAudioError,
    TooLongError,
    UnreadableAudioError,
)


def _sig(rate: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int = TARGET_RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)


def _bytes(x: np.ndarray, rate: int, format: str = "WAV", **kw) -> bytes:
    b = io.BytesIO()
    sf.write(b, x, rate, format=format, **kw)
    return b.getvalue()


@pytest.mark.parametrize("rate", [8000, 16000])
def test_wav16_rates(write_clip, rate):
    x = _sig(rate)
    a = read_audio(write_clip(x, rate, subtype="PCM_16"))
    assert isinstance(a, Audio)
    assert a.samples.dtype == np.float32 and a.samples.ndim == 1
    assert a.source_rate == rate and a.source_channels == 1
    assert a.samples.size == int(0.5 * TARGET_RATE)
    assert a.duration_s == pytest.approx(0.5)
    assert _peak_hz(a.samples) == pytest.approx(440, abs=3)
    if rate == TARGET_RATE:  # 16 kHz passes through untouched (bit-exact to 16-bit quantisation)
        np.testing.assert_allclose(a.samples, x, atol=1 / 32768)


def test_8k_matches_reference_resampler(write_clip):
    x = _sig(8000)
    path = write_clip(x, 8000, subtype="PCM_16")
    ref = resample_poly(sf.read(str(path), dtype="float32")[0].astype(np.float64), 2, 1)
    np.testing.assert_allclose(read_audio(path).samples, ref, atol=1e-6)


@pytest.mark.parametrize(
    "fmt,subtype,tol",
    [
        ("WAV", "PCM_U8", 1 / 100),
        ("WAV", "PCM_24", 1e-6),
        ("WAV", "PCM_32", 1e-6),
        ("WAV", "FLOAT", 1e-7),
        ("WAV", "DOUBLE", 1e-7),
        ("WAVEX", "PCM_16", 1 / 32768),
        ("RF64", "PCM_16", 1 / 32768),
        ("FLAC", "PCM_S8", 1 / 100),
        ("FLAC", "PCM_16", 1 / 32768),
        ("FLAC", "PCM_24", 1e-6),
    ],
)
def test_formats(write_clip, fmt, subtype, tol):
    x = _sig(TARGET_RATE)
    path = write_clip(x, TARGET_RATE, name=f"c.{fmt.lower()}", format=fmt, subtype=subtype)
    head = path.read_bytes()[:64]
    if fmt == "RF64":
        assert head[:4] == b"RF64"
    if fmt == "WAVEX":
        assert struct.unpack_from("<H", head, 20)[0] == 0xFFFE  # WAVE_FORMAT_EXTENSIBLE tag
    a = read_audio(path)
    np.testing.assert_allclose(a.samples, x, atol=tol)


def test_wave_format_extensible_multichannel(write_clip):
    x = _sig(TARGET_RATE)
    stereo4 = np.stack([x, x, x, np.zeros_like(x)], axis=1)
    a = read_audio(write_clip(stereo4, TARGET_RATE, subtype="PCM_16"))
    assert a.source_channels == 4
    np.testing.assert_allclose(a.samples, 0.75 * x, atol=1e-3)


def test_stereo_averaged(write_clip):
    x = _sig(TARGET_RATE)
    a = read_audio(write_clip(np.stack([x, np.zeros_like(x)], axis=1), TARGET_RATE))
    assert a.source_channels == 2
    np.testing.assert_allclose(a.samples, x / 2, atol=1e-3)


def test_44k1_resampled(write_clip):
    x = _sig(44100, seconds=1.0, freq=1000.0)
    a = read_audio(write_clip(x, 44100))
    assert a.source_rate == 44100 and a.samples.size == TARGET_RATE
    assert _peak_hz(a.samples) == pytest.approx(1000, abs=2)
    assert 0.45 < np.abs(a.samples[1000:-1000]).max() < 0.55


def test_bytes_equal_path(write_clip):
    x = _sig(TARGET_RATE)
    path = write_clip(x, TARGET_RATE)
    a, b = read_audio(path), read_audio(path.read_bytes(), name="up.wav")
    np.testing.assert_array_equal(a.samples, b.samples)
    assert b.name == "up.wav" and a.name == str(path)


def _zero_flac_total_samples(data: bytes) -> bytes:
    """Make a FLAC look like a streaming encoder's: STREAMINFO total-samples (36 bits) = 0."""
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block is STREAMINFO
    si = 8  # 4-byte marker + 4-byte block header
    # STREAMINFO bit layout: 16+16+24+24 bits, then rate 20, channels-1 3, bps-1 5, total 36
    # -> total samples = low 4 bits of byte 13 + bytes 14..17
    b = bytearray(data)
    assert (b[si + 13] & 0x0F) << 32 | int.from_bytes(b[si + 14 : si + 18], "big") > 0
    b[si + 13] &= 0xF0
    b[si + 14 : si + 18] = b"\0\0\0\0"
    return bytes(b)


def test_streaming_flac_without_total(write_clip):
    x = _sig(TARGET_RATE, seconds=1.0)
    data = _zero_flac_total_samples(_bytes(x, TARGET_RATE, format="FLAC", subtype="PCM_16"))
    assert sf.info(io.BytesIO(data)).frames > 2**40  # libsndfile reports "unknown" as SF_COUNT_MAX
    a = read_audio(data)
    np.testing.assert_allclose(a.samples, x, atol=1 / 32768)


def test_streaming_flac_too_long_is_bounded():
    x = np.zeros(TARGET_RATE * 3, np.float32)
    data = _zero_flac_total_samples(_bytes(x, TARGET_RATE, format="FLAC", subtype="PCM_16"))
    with pytest.raises(TooLongError, match="2 s limit"):
        read_audio(data, max_seconds=2)


def test_truncated_wav():
    data = _bytes(_sig(TARGET_RATE), TARGET_RATE, subtype="PCM_16")
    with pytest.raises(UnreadableAudioError, match="truncated"):
        read_audio(data[: len(data) - 1000])
    with pytest.raises(UnreadableAudioError):
        read_audio(data[:30])  # cut inside the fmt chunk


def test_truncated_rf64():
    data = _bytes(_sig(TARGET_RATE), TARGET_RATE, format="RF64", subtype="PCM_16")
    with pytest.raises(UnreadableAudioError, match="truncated"):
        read_audio(data[: len(data) - 1000])


def test_wav_with_unknown_length_placeholder():
    """arecord/ffmpeg writing to a pipe leave 0xFFFFFFFF in the data size: accepted."""
    x = _sig(TARGET_RATE)
    b = bytearray(_bytes(x, TARGET_RATE, subtype="PCM_16"))
    pos = b.index(b"data")
    b[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    a = read_audio(bytes(b))
    assert a.samples.size == x.size


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.05])
def test_truncated_flac(fraction):
    data = _bytes(_sig(TARGET_RATE, seconds=2.0), TARGET_RATE, format="FLAC", subtype="PCM_16")
    with pytest.raises(UnreadableAudioError):
        read_audio(data[: int(len(data) * fraction)])


@pytest.mark.parametrize(
    "payload",
    [b"\x00" * 1, b"not audio at all" * 50, bytes(range(256)) * 20, b"RIFF\xff\xff\xff\xffWAVEfmt ", b"fLaC\x00\x00"],
)
def test_garbage(payload):
    with pytest.raises(UnreadableAudioError) as exc:
        read_audio(payload)
    assert "\n" not in str(exc.value)


def test_random_garbage_never_crashes():
    rng = np.random.default_rng(1)
    good = _bytes(_sig(TARGET_RATE), TARGET_RATE, subtype="PCM_16")
    for _ in range(30):
        b = bytearray(good)
        for j in rng.integers(0, 100, size=8):
            b[int(j)] = int(rng.integers(0, 256))
        try:
            a = read_audio(bytes(b))
            assert a.samples.dtype == np.float32
        except AudioError:
            pass  # any of our specific errors is fine; anything else fails the test


def test_empty_file_and_empty_wav(tmp_path, write_clip):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(EmptyAudioError):
        read_audio(p)
    with pytest.raises(EmptyAudioError):
        read_audio(write_clip(np.zeros(0, np.float32), TARGET_RATE, name="zero.wav"))


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableAudioError, match="no such file"):
        read_audio(tmp_path / "nope.wav")


def test_too_long(write_clip):
    path = write_clip(np.zeros(TARGET_RATE * 3, np.float32), TARGET_RATE)
    with pytest.raises(TooLongError, match="2 s limit"):
        read_audio(path, max_seconds=2)
    assert read_audio(path, max_seconds=3.5).duration_s == pytest.approx(3.0)


def test_too_many_bytes(write_clip):
    path = write_clip(_sig(TARGET_RATE), TARGET_RATE)
    with pytest.raises(TooLongError, match="byte limit"):
        read_audio(path, max_bytes=1000)
    with pytest.raises(TooLongError, match="byte limit"):
        read_audio(path.read_bytes(), max_bytes=1000)


@pytest.mark.parametrize("rate", [2000, 384000])
def test_rate_out_of_range(write_clip, rate):
    with pytest.raises(AudioError, match="sample rate"):
        read_audio(write_clip(np.zeros(rate // 10, np.float32), rate))


def test_audio_from_array():
    x = _sig(8000)
    a = audio_from_array((x * 32767).astype(np.int16), 8000, name="mic")
    assert a.name == "mic" and a.source_rate == 8000 and a.samples.size == 8000
    assert _peak_hz(a.samples) == pytest.approx(440, abs=3)
    st = audio_from_array(np.stack([x, -x], axis=1), 8000)
    assert st.source_channels == 2 and np.abs(st.samples).max() < 1e-6
    with pytest.raises(EmptyAudioError):
        audio_from_array(np.zeros(0, np.float32), 16000)
    with pytest.raises(TooLongError):
        audio_from_array(np.zeros(16000 * 3, np.float32), 16000, max_seconds=2)
    with pytest.raises(AudioError):
        audio_from_array(np.zeros(100, np.float32), 1000)
    nan = audio_from_array(np.array([np.nan, 2.0, -3.0, 0.1], np.float32), 16000)
    # non-finite samples are sanitised; finite ones are kept as they are (no clipping: resampling may
    # overshoot full scale and the reference features are computed unclipped)
    assert np.all(np.isfinite(nan.samples)) and nan.samples[0] == 0.0 and nan.samples[2] == -3.0


def test_real_recordings(speech_dir):
    wav16 = sorted((speech_dir / "dev").glob("*/*.wav"))[0]
    a = read_audio(wav16)
    assert a.source_rate == 16000 and 0.5 < a.duration_s <= 15.0
    wav8 = sorted((speech_dir / "native8k").glob("*/*.wav"))[0]
    b = read_audio(wav8)
    assert b.source_rate == 8000 and b.samples.size == 2 * sf.info(str(wav8)).frames


# --- decode budget, caps, streaming memory (issue #10 item 5) -------------------------------------------------

from audio_memory_check import noise_ogg, patch_ogg_rate, silent_flac, speech, zero_flac_total  # noqa: E402
from flac_encoder import encode_flac  # noqa: E402

from edgeverify.core import audio as audio_mod  # noqa: E402
from edgeverify.core.flac import FlacStream  # noqa: E402


def _peak_alloc(fn) -> tuple[object, int]:
    """Result (or raised AudioError) and tracemalloc's peak of Python/numpy allocations while fn runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            out = fn()
        except AudioError as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bomb_refused_from_header():
    """92 KB-class FLAC bomb (8 ch 192 kHz of silence): refused before a single block is decoded."""
    data = silent_flac(8, 192000, 12)  # 18.4 M samples = 70 MiB as float32 > 64 MiB budget
    assert len(data) < 100_000
    out, peak = _peak_alloc(lambda: read_audio(data))
    assert isinstance(out, TooLongError) and "budget" in str(out)
    assert peak < len(data) + (1 << 20)


def test_bomb_with_unknown_length_stops_at_budget():
    data = zero_flac_total(silent_flac(8, 192000, 12))
    out, peak = _peak_alloc(lambda: read_audio(data))
    assert isinstance(out, TooLongError) and "budget" in str(out)
    assert peak < 16 << 20  # stopped while decoding; never held more than a block and the 16 kHz output


def test_multichannel_high_rate_decoded_with_bounded_memory():
    """8 ch 48 kHz 20 s: 30.7 MB as float32 (and twice that when blocks were concatenated): now per-block mono."""
    x = speech(20.0, 48000)
    data = _bytes(np.repeat(x[:, None], 8, axis=1), 48000, format="FLAC", subtype="PCM_16")
    out, peak = _peak_alloc(lambda: read_audio(data))
    assert isinstance(out, Audio) and out.duration_s == pytest.approx(20.0) and out.source_channels == 8
    assert peak < len(data) + (8 << 20)
    ref = read_audio(_bytes(x, 48000, format="FLAC", subtype="PCM_16"))
    np.testing.assert_allclose(out.samples, ref.samples, atol=1e-6)


def test_budget_parameter_and_channel_cap():
    data = _bytes(np.zeros((16000, 2), np.float32), 16000)
    with pytest.raises(TooLongError, match="budget"):
        read_audio(data, max_decoded_bytes=100_000)
    assert read_audio(data, max_decoded_bytes=128_000).duration_s == pytest.approx(1.0)
    with pytest.raises(AudioError, match="channel count 9"):
        read_audio(_bytes(np.zeros((1600, 9), np.float32), 16000))
    with pytest.raises(AudioError, match="channel count"):
        audio_from_array(np.zeros((1600, 9), np.float32), 16000)


def test_ogg_vorbis_opus_and_mp3():
    x = _sig(48000, seconds=1.0)
    for fmt, sub in (("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")):
        a = read_audio(_bytes(x, 48000, format=fmt, subtype=sub))
        assert a.source_rate == 48000 and a.duration_s == pytest.approx(1.0, abs=0.01)
        assert _peak_hz(a.samples) == pytest.approx(440, abs=3)
    with pytest.raises(AudioError, match="channel count 32"):
        read_audio(noise_ogg(32, 48000, 0.1))


def test_odd_rate_resampled_cheaply():
    """191,999 Hz: exact ratio 16000/191999 would need a 3.8 M-tap filter; the nearest small ratio is used."""
    data = patch_ogg_rate(noise_ogg(1, 192000, 1.0), 191999)
    out, peak = _peak_alloc(lambda: read_audio(data))
    assert isinstance(out, Audio) and out.source_rate == 191999
    assert out.duration_s == pytest.approx(1.0, abs=0.01)
    assert peak < 8 << 20
    assert max(audio_mod._ratio(191999, TARGET_RATE)) <= audio_mod.MAX_RATIO_TERM


# --- numpy resampler == scipy.signal.resample_poly (issue #13: no scipy at runtime) --------------------------


@pytest.mark.parametrize("rate", [4000, 8000, 11025, 12000, 22050, 32000, 37800, 44100, 48000, 96000, 191999])
def test_resampler_matches_resample_poly(rate):
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate // 3 + 7)
    up, down = audio_mod._ratio(rate, TARGET_RATE)
    ref = resample_poly(x, up, down)
    y = audio_mod.resample(x, rate)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-9)
    # streamed in uneven blocks: the same samples
    r = audio_mod._Resampler(rate)
    cuts = np.cumsum(rng.integers(1, 3000, size=200))
    parts = [r.push(p) for p in np.split(x, cuts[cuts < x.size])] + [r.flush()]
    np.testing.assert_allclose(np.concatenate(parts), ref, atol=1e-9)


def test_runtime_does_not_import_scipy():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "import edgeverify.core.audio, edgeverify.core.verifier, edgeverify.app.decisions, edgeverify.microphone.listener\n"
        "import edgeverify.daemon, edgeverify.mqtt.service, edgeverify.app.worker, edgeverify.cli.daemon, edgeverify.cli.verify\n"
        "from edgeverify.core.audio import audio_from_array, resample\n"
        "audio_from_array(np.zeros(8000, np.int16), 8000); resample(np.zeros(4410), 44100)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- own FLAC decoder for what libsndfile refuses (issue #10 item 8) ------------------------------------------


def _int_clip(bps: int, channels: int, seconds: float = 1.5) -> np.ndarray:
    x = speech(seconds).astype(np.float64)
    sig = np.stack([x, np.roll(x, 321)], axis=1)[:, :channels]
    top = 1 << (bps - 1)
    q = np.clip(np.round(sig * top), -top, top - 1).astype(np.int64)
    q[4096 : 2 * 4096] &= ~7  # a block with wasted bits
    q[2 * 4096 : 3 * 4096] = min(12, top - 1)  # a constant block
    return q


def _decoded_ints(data: bytes, bps: int) -> np.ndarray:
    y = np.concatenate(list(FlacStream(data, "t").blocks(10**9)))
    return np.round(y.astype(np.float64) * (1 << (bps - 1))).astype(np.int64)


@pytest.mark.parametrize("bps", [12, 20])
@pytest.mark.parametrize("channels", [1, 2])
def test_flac_12_and_20_bit(bps, channels):
    q = _int_clip(bps, channels)
    data = encode_flac(q, TARGET_RATE, bps, porder=3)
    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(data))  # why the own decoder exists
    np.testing.assert_array_equal(_decoded_ints(data, bps), q)
    a = read_audio(data, name="x.flac")
    assert a.source_rate == TARGET_RATE and a.source_channels == channels
    np.testing.assert_allclose(a.samples, q.mean(axis=1) / (1 << (bps - 1)), atol=1e-6)


@pytest.mark.parametrize("bps", [4, 8, 32])
def test_flac_other_depths_and_streaming_header(bps):
    q = _int_clip(bps, 2)
    np.testing.assert_array_equal(_decoded_ints(encode_flac(q, 22050, bps, total=False), bps), q)
    a = read_audio(encode_flac(q, 22050, bps, total=False))
    assert a.source_rate == 22050 and a.duration_s == pytest.approx(q.shape[0] / 22050, abs=1e-3)
    with pytest.raises(TooLongError):
        read_audio(encode_flac(q, 22050, bps, total=False), max_seconds=1.0)


@pytest.mark.parametrize("subtype,bps", [("PCM_16", 16), ("PCM_24", 24)])
def test_own_flac_decoder_bit_exact_with_libsndfile(subtype, bps):
    """libsndfile-written (libFLAC: LPC, all stereo modes) speech and our encoder's output, both ways."""
    x = speech(3.0)
    st = np.stack([x, 0.7 * np.roll(x, 1234)], axis=1)
    for data in (
        _bytes(st, TARGET_RATE, format="FLAC", subtype=subtype),
        encode_flac(np.round(st * (1 << (bps - 1))).astype(np.int64), TARGET_RATE, bps),
    ):
        ref = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
        own = np.concatenate(list(FlacStream(data, "t").blocks(10**9)))
        np.testing.assert_array_equal(own, ref)


def test_flac_work_budget_bounds_tiny_frames():
    """16-sample frames cost ~60x a sample each in Python: counted against the budget, not just samples."""
    q = (np.arange(20000) % 9 - 4).reshape(-1, 1)
    budget = 16 * 50_000  # own decoder: a quarter of it, 4 bytes a sample -> 50k sample-equivalents
    with pytest.raises(TooLongError, match="small frames or partitions"):
        read_audio(encode_flac(q, TARGET_RATE, 12, block=16, porder=0), max_decoded_bytes=budget)
    a = read_audio(encode_flac(q, TARGET_RATE, 12, block=4096, porder=0), max_decoded_bytes=budget)
    assert a.samples.size == q.shape[0]


def test_flac_fuzz_never_crashes():
    """Flipped bytes, truncations and garbage in a 12-bit FLAC: a result or one of our errors, never anything else."""
    rng = np.random.default_rng(7)
    good = encode_flac(_int_clip(12, 2, seconds=0.6), TARGET_RATE, 12, porder=2)
    cases = [good[:n] for n in rng.integers(4, len(good), size=25)]
    for _ in range(100):
        b = bytearray(good)
        for j in rng.integers(0, len(b), size=int(rng.integers(1, 6))):
            b[int(j)] = int(rng.integers(0, 256))
        cases.append(bytes(b))
    cases += [good[:42] + rng.bytes(2000), good[:42] + b"\xff\xf8" + rng.bytes(500), good[:42] + bytes(3000)]
    for data in cases:
        try:
            a = read_audio(data)
            assert a.samples.dtype == np.float32 and a.samples.size <= TARGET_RATE * 60
        except AudioError as exc:
            assert "\n" not in str(exc)
