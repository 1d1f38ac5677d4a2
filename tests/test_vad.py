"""Energy VAD: synthetic signals with known speech positions, streaming == batch, real speech kept."""

from __future__ import annotations

import numpy as np
import pytest

from edgeverify.core.audio import read_audio
from edgeverify.errors import ConfigError
from edgeverify.core.vad import (
    EnergyVad,
    UtteranceCutter,
    VadConfig,
    frame_decisions,
    frame_energies_db,
    speech_segments,
    trim_silence,
)

BURSTS = [(0.5, 1.3), (2.0, 2.6), (3.4, 4.5)]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("noise", [0.0, 0.003, 0.02])
def test_bursts_found(synth, rate, noise):
    x = synth(5.0, rate, bursts=BURSTS, noise=noise, seed=3)
    segs = [(s / rate, e / rate) for s, e in speech_segments(x, rate)]
    assert len(segs) == len(BURSTS), segs
    cfg = VadConfig()
    for (s, e), (bs, be) in zip(segs, BURSTS):
        # starts within a frame or two of the onset (minus padding), ends within hangover+pad
        assert bs - cfg.pad_ms / 1000 - 0.03 <= s <= bs + 0.03
        assert be <= e <= be + (cfg.hangover_ms + cfg.pad_ms) / 1000 + 0.03


def test_short_gap_merged_and_click_dropped(synth):
    rate = 16000
    x = synth(3.0, rate, bursts=[(0.5, 1.0), (1.15, 1.6)], noise=0.002, seed=1)
    click = np.zeros_like(x)
    click[int(2.5 * rate) : int(2.5 * rate) + 80] = 0.5  # 5 ms click: not speech
    segs = speech_segments(x + click, rate)
    assert len(segs) == 1
    s, e = segs[0]
    assert s / rate < 0.5 and 1.6 < e / rate < 2.0


def test_silence_and_quiet_are_not_speech(synth):
    assert speech_segments(np.zeros(16000, np.float32)) == []
    assert trim_silence(np.zeros(16000, np.float32)).size == 0
    quiet = synth(2.0, 16000, level=0.0005, bursts=[(0.5, 1.0)], noise=1e-5)  # ~ -70 dBFS "speech"
    assert speech_segments(quiet) == []


@pytest.mark.parametrize("rate", [8000, 16000])
def test_noise_only_nearly_no_speech(rate):
    x = (0.02 * np.random.default_rng(7).standard_normal(rate * 4)).astype(np.float32)
    kept = sum(e - s for s, e in speech_segments(x, rate))
    assert kept < 0.05 * x.size


def test_noise_level_change_adapts():
    """Louder steady noise after a while is absorbed by the rising floor (within a few seconds)."""
    rng = np.random.default_rng(2)
    x = np.r_[0.002 * rng.standard_normal(16000 * 2), 0.02 * rng.standard_normal(16000 * 6)].astype(np.float32)
    kept = [(s / 16000, e / 16000) for s, e in speech_segments(x, 16000)]
    assert all(e < 6.0 for _, e in kept), kept


def test_speech_at_clip_start_not_eaten(synth):
    """A clip cut mid-word (no leading silence) keeps its first sample."""
    x = synth(3.0, 16000, bursts=[(0.0, 1.2), (1.8, 2.5)], noise=0.003)
    segs = speech_segments(x, 16000)
    assert segs[0][0] == 0


def test_trim_silence_behaviour(synth):
    x = synth(5.0, 16000, bursts=BURSTS, noise=0.003)
    y = trim_silence(x, 16000)
    speech = sum(e - s for s, e in BURSTS) * 16000
    assert speech <= y.size <= speech + 3 * 0.3 * 16000
    full = synth(2.0, 16000, noise=0.003)  # all speech: returned unchanged (same object content)
    np.testing.assert_array_equal(trim_silence(full, 16000), full)


def test_streaming_equals_batch(synth):
    rate = 8000
    x = synth(5.0, rate, bursts=BURSTS, noise=0.01, seed=5)
    cfg = VadConfig()
    batch, _ = frame_decisions(x, rate, cfg)
    flen = cfg.frame_len(rate)
    energies = frame_energies_db(x[: x.size // flen * flen].reshape(-1, flen))
    vad = EnergyVad(rate, cfg, initial_floor_db=float(np.percentile(energies, cfg.floor_percentile)))
    stream = [vad.process_frame(x[i * flen : (i + 1) * flen]) for i in range(batch.size)]
    np.testing.assert_array_equal(np.array(stream), batch)
    assert batch.any() and not batch.all()


def _expected_utterance_starts(cut: UtteranceCutter, x: np.ndarray, block: int) -> list[np.ndarray]:
    out = []
    for i in range(0, x.size, block):
        out += cut.push(x[i : i + block])
    return out + cut.flush()


@pytest.mark.parametrize("rate", [8000, 16000])
def test_cutter_emits_utterances_with_pre_roll(synth, rate):
    bursts = [(1.0, 2.5), (4.0, 5.5), (7.0, 7.3)]  # the last one is too short
    x = synth(8.0, rate, bursts=bursts, noise=0.003, seed=9)
    cut = UtteranceCutter(rate, pre_roll_s=0.3, min_utterance_s=0.8, max_utterance_s=10.0)
    utts = _expected_utterance_starts(cut, x, block=333)
    assert len(utts) == 2
    cfg = VadConfig()
    for u, (bs, be) in zip(utts, bursts):
        assert u.dtype == np.float32
        # pre-roll + burst + at most hangover + pad (+ frame rounding)
        expect = be - bs + 0.3
        assert expect - 0.03 <= u.size / rate <= expect + (cfg.hangover_ms + cfg.pad_ms) / 1000 + 0.03
        # the pre-roll really is the audio before the onset: it matches the input there
        start = int(round((bs - 0.3) * rate))
        idx = np.flatnonzero(np.abs(x - u[0]) < 1e-9)
        assert any(abs(i - start) <= cfg.frame_len(rate) for i in idx)


def test_cutter_forced_at_max_length(synth):
    rate = 16000
    x = synth(7.0, rate, bursts=[(0.5, 5.5)], noise=0.003)
    cut = UtteranceCutter(rate, pre_roll_s=0.2, min_utterance_s=0.5, max_utterance_s=2.0)
    utts = _expected_utterance_starts(cut, x, block=1600)
    assert [round(u.size / rate, 2) for u in utts] [:2] == [2.0, 2.0]
    assert len(utts) == 3
    assert 5.2 <= sum(u.size for u in utts) / rate <= 5.2 + 0.25


def test_cutter_silence_and_flush():
    cut = UtteranceCutter(16000)
    assert cut.push(np.zeros(16000 * 3, np.float32)) == [] and cut.flush() == []
    with pytest.raises(ConfigError):
        UtteranceCutter(16000, min_utterance_s=5, max_utterance_s=2)
    with pytest.raises(ConfigError):
        VadConfig(frame_ms=1)


def _speech_files(speech_dir, subset: str, n: int):
    files = sorted((speech_dir / subset).glob("*/*.wav"))
    if not files:
        pytest.skip(f"no {subset} recordings")
    return files[:: max(1, len(files) // n)][:n]


@pytest.mark.parametrize("subset", ["dev", "native8k"])
def test_real_speech_kept(speech_dir, subset):
    for path in _speech_files(speech_dir, subset, 6):
        a = read_audio(path)
        kept = sum(e - s for s, e in speech_segments(a.samples, 16000))
        assert kept >= 0.5 * a.samples.size, (path.name, kept / a.samples.size)


def test_real_speech_median_retained(speech_dir):
    fractions = []
    for path in _speech_files(speech_dir, "dev", 12):
        x = read_audio(path).samples
        fractions.append(trim_silence(x).size / x.size)
    assert np.median(fractions) >= 0.6, fractions


def test_real_speech_cut_mid_utterance_keeps_start(speech_dir):
    """Cut each clip at a loud frame inside its first speech: the VAD must keep the new first sample."""
    for path in _speech_files(speech_dir, "dev", 8):
        x = read_audio(path).samples
        s0, e0 = speech_segments(x)[0]
        region = x[s0 : min(e0, s0 + 16000)]
        frames = region[: region.size // 160 * 160].reshape(-1, 160)
        loud = s0 + int(np.argmax(frame_energies_db(frames))) * 160
        segs = speech_segments(x[loud:])
        assert segs and segs[0][0] == 0, (path.name, segs[:1])


def test_real_8k_native_rate(speech_dir):
    import soundfile as sf

    for path in _speech_files(speech_dir, "native8k", 3):
        x, rate = sf.read(str(path), dtype="float32")
        assert rate == 8000
        assert sum(e - s for s, e in speech_segments(x, rate)) >= 0.5 * x.size
