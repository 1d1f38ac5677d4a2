"""CAM++'s numpy Kaldi fbank against the torch reference's features (../shared) and against its definition."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeverify.core.fbank import kaldi_fbank, log_fbank
from edgeverify.errors import AudioError, TooShortError


def _reference(speech_dir: Path, name: str):
    path = speech_dir.parent.parent / "models" / "campp-zh-en-common-advanced" / "reference" / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"reference {path} missing")
    return np.load(path)


def _read_as_reference(path: Path) -> np.ndarray:
    """The reference's input: int16 / 32768 as float32, resampled to 16 kHz with scipy's polyphase filter."""
    from scipy.signal import resample_poly

    pcm, rate = sf.read(str(path), dtype="int16")
    wave = pcm.astype(np.float32) / 32768
    return resample_poly(wave, 16000, rate) if rate != 16000 else wave


# The reference ran in float32; its rounding noise lies about 140 dB below a frame's peak, so band energies
# far below the frame's strongest band (the empty 4-8 kHz bands of upsampled 8 kHz audio) carry noise up to
# ~0.02 there (torchaudio itself run in float64 differs from the reference by as much). Those cells are held
# to a looser bound; every cell within 60 dB of its frame's strongest band must match to 1e-3.
_NOISE_FLOOR_NATS = 60 / (10 / math.log(10))  # 60 dB in natural log of power


@pytest.mark.parametrize("subset", ["dev", "dev8k", "native8k"])
def test_matches_the_torch_reference_features(speech_dir: Path, subset: str) -> None:
    ref = _reference(speech_dir, subset)
    wave = _read_as_reference(speech_dir / subset / str(ref["fbank_file"]))
    ours = kaldi_fbank(wave)
    assert ours.dtype == np.float32
    assert ours.shape == ref["fbank"].shape
    err = np.abs(ours - ref["fbank"])
    raw = log_fbank(wave)
    above_noise = raw.max(axis=1, keepdims=True) - raw < _NOISE_FLOOR_NATS
    assert above_noise.mean() > 0.75
    assert err[above_noise].max() <= 1e-3
    assert err.max() <= 0.05
    assert np.median(err) <= 1e-5
    if subset == "dev":  # full-band 16 kHz speech: no cell is near the float32 floor
        assert err.max() <= 1e-3


def _by_definition(wave: np.ndarray) -> np.ndarray:
    """Kaldi's fbank one frame at a time, straight from its definition, all float64 (slow, independent)."""
    x = wave.astype(np.float64) * 32768
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    low, high = mel(20.0), mel(8000.0)
    delta = (high - low) / 81
    banks = np.zeros((80, 257))
    for m in range(80):
        left, centre, right = low + m * delta, low + (m + 1) * delta, low + (m + 2) * delta
        for k in range(256):
            b = mel(k * 16000 / 512)
            if left < b < right:
                banks[m, k] = (b - left) / (centre - left) if b <= centre else (right - b) / (right - centre)
    window = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * n / 399)) ** 0.85 for n in range(400)])
    rows = []
    for start in range(0, len(x) - 400 + 1, 160):
        frame = x[start : start + 400].copy()
        frame -= frame.mean()
        emphasised = np.array([frame[n] - 0.97 * frame[max(n - 1, 0)] for n in range(400)])
        padded = np.zeros(512)
        padded[:400] = emphasised * window
        power = np.abs(np.fft.fft(padded)[:257]) ** 2
        rows.append(np.log(np.maximum(banks @ power, np.finfo(np.float32).eps)))
    feats = np.array(rows)
    return feats - feats.mean(axis=0)


def test_equals_the_definition_frame_by_frame() -> None:
    rng = np.random.default_rng(7)
    n = 16000 + 123  # a tail that fits no whole frame
    t = np.arange(n) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n) + 0.1  # with a DC offset
    wave = wave.astype(np.float32)
    ours = kaldi_fbank(wave)
    expected = _by_definition(wave)
    assert ours.shape == expected.shape == (1 + (n - 400) // 160, 80)
    # the float32 mel weights (as Kaldi and torchaudio compute them) differ from float64 ones by < 2e-4 in the log
    assert np.abs(ours - expected).max() < 3e-4


def test_gain_does_not_change_the_mean_normalised_features() -> None:
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(8000)).astype(np.float32)
    loud, quiet = kaldi_fbank(wave), kaldi_fbank(wave * np.float32(0.125))
    assert np.abs(loud - quiet).max() < 1e-4
    assert np.abs(log_fbank(wave) - log_fbank(wave * np.float32(0.125))).min() > 4.0  # the raw energies do move


def test_a_tone_lands_in_its_mel_band() -> None:
    t = np.arange(16000) / 16000
    for freq in (300.0, 1000.0, 3500.0, 6000.0):
        feats = log_fbank((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
        low, high = 1127 * math.log1p(20 / 700), 1127 * math.log1p(8000 / 700)
        centres = low + (np.arange(80) + 1) * (high - low) / 81
        expected = int(np.argmin(np.abs(centres - 1127 * math.log1p(freq / 700))))
        assert abs(int(np.bincount(feats.argmax(axis=1)).argmax()) - expected) <= 1


def test_frame_count_and_bad_input() -> None:
    assert kaldi_fbank(np.zeros(400, np.float32)).shape == (1, 80)
    assert kaldi_fbank(np.zeros(48000, np.float32)).shape == (298, 80)
    silent = log_fbank(np.zeros(1000, np.float32))
    assert np.allclose(silent, np.log(np.finfo(np.float32).eps))  # digital silence sits on the floor, no -inf
    with pytest.raises(TooShortError):
        kaldi_fbank(np.zeros(399, np.float32))
    with pytest.raises(AudioError):
        kaldi_fbank(np.full(1000, np.nan, np.float32))
    with pytest.raises(AudioError):
        kaldi_fbank(np.zeros((1000, 2), np.float32))
