"""80-dim log-mel filterbank features, numerically equal to SpeechBrain's ``Fbank(n_mels=80)`` front end.

The embedding network was trained on exactly these features, so every detail matters for parity:
periodic Hamming window of 25 ms, 10 ms hop, centred frames with zero padding, power spectrum, HTK-mel
triangles whose both slopes use the *left* band width, 10*log10 with a floor of 1e-10 and an 80 dB dynamic
range per utterance, then per-utterance mean normalisation (``InputNormalization(sentence, std_norm=False)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np

from ..errors import ModelError


@dataclass(frozen=True)
class FbankConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    amin: float = 1e-10
    top_db: float = 80.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


DEFAULT_FBANK = FbankConfig()


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(config: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
    """(n_fft//2+1, n_mels) matrix of triangular filters."""
    mel = np.linspace(_hz_to_mel(np.float64(config.f_min)), _hz_to_mel(np.float64(config.f_max)), config.n_mels + 2)
    hz = _mel_to_hz(mel)
    band = (hz[1:] - hz[:-1])[:-1]
    central = hz[1:-1]
    freqs = np.linspace(0.0, config.sample_rate // 2, config.n_fft // 2 + 1)
    slope = (freqs[None, :] - central[:, None]) / band[:, None]
    matrix = np.maximum(0.0, np.minimum(slope + 1.0, 1.0 - slope))
    return matrix.T.copy()


@lru_cache(maxsize=4)
def _window(win_length: int, n_fft: int) -> np.ndarray:
    n = np.arange(win_length)
    window = 0.54 - 0.46 * np.cos(2.0 * np.pi * n / win_length)  # periodic Hamming, as torch.hamming_window
    if win_length < n_fft:  # torch.stft centres a shorter window inside n_fft
        left = (n_fft - win_length) // 2
        window = np.pad(window, (left, n_fft - win_length - left))
    return window


def log_mel(samples: np.ndarray, config: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
    """(frames, n_mels) float32 log-mel energies in dB with the utterance's 80 dB floor applied."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    pad = config.n_fft // 2
    x = np.pad(x, (pad, pad))
    n_frames = 1 + (x.size - config.n_fft) // config.hop_length
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, config.n_fft), strides=(x.strides[0] * config.hop_length, x.strides[0])
    )
    spectrum = np.fft.rfft(frames * _window(config.win_length, config.n_fft), n=config.n_fft)
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ mel_filterbank(config)
    db = 10.0 * np.log10(np.maximum(mel, config.amin))
    db = np.maximum(db, db.max() - config.top_db)
    return db.astype(np.float32)


def normalized_features(samples: np.ndarray, config: FbankConfig = DEFAULT_FBANK) -> np.ndarray:
    """The network's input: log-mel minus its per-utterance mean, (frames, n_mels) float32."""
    feats = log_mel(samples, config)
    return feats - feats.mean(axis=0, keepdims=True)


FrontEnd = Callable[[np.ndarray], np.ndarray]
# The "type" a model's "features" metadata names (model_build stamps it) -> its input features.
FBANK_SPEECHBRAIN = "fbank"  # ECAPA-TDNN: SpeechBrain Fbank, dB, 80 dB floor (this module)
FBANK_KALDI = "kaldi_fbank"  # CAM++: Kaldi fbank, natural log (core/fbank.py)


def _kaldi(samples: np.ndarray) -> np.ndarray:
    from .fbank import kaldi_fbank

    return kaldi_fbank(samples)


def front_end(metadata: Mapping[str, str]) -> FrontEnd:
    """The feature function a model was trained with, from its "features" metadata. A model built
    before the metadata named a type gets SpeechBrain's fbank (ECAPA, the only model then)."""
    raw = metadata.get("features")
    try:
        kind = json.loads(raw).get("type", FBANK_SPEECHBRAIN) if raw else FBANK_SPEECHBRAIN
    except (ValueError, AttributeError) as exc:
        raise ModelError(f"model metadata 'features' is not a JSON object: {raw!r}") from exc
    if kind == FBANK_SPEECHBRAIN:
        return normalized_features
    if kind == FBANK_KALDI:
        return _kaldi
    raise ModelError(f"model needs front end {kind!r}, which this edgeverify does not have")
