"""Kaldi log-mel filterbank (``compute-fbank-feats`` defaults), the front end CAM++ was trained on.

Numerically equal to 3D-Speaker's inference recipe: the 16 kHz waveform scaled to the int16 range,
``torchaudio.compliance.kaldi.fbank(num_mel_bins=80, frame_length=25, frame_shift=10, dither=0)`` with
Kaldi's other defaults, then the per-utterance mean over frames subtracted. Written from Kaldi's
definitions (feature-window.cc, mel-computations.cc) in numpy, so no torch is needed at run time:

- frames of 400 samples every 160, only whole frames (``snip_edges``: no padding at the ends);
- per frame: DC offset removed, pre-emphasis 0.97 (the first sample against itself), Povey window
  (a symmetric Hann window to the power 0.85), zero-padded to 512 for the FFT;
- power spectrum, 80 triangular filters equally spaced on Kaldi's mel scale (1127 ln(1 + f/700))
  from 20 Hz to Nyquist, the Nyquist bin unused;
- natural log with float32 epsilon as the floor; no energy term.

Framing, windowing and the FFT run in float64: the reference runs them in float32, whose rounding noise
sits about 140 dB below a frame's peak and so decides band energies 60 dB and more below the frame's
strongest band (the empty 4-8 kHz bands of upsampled 8 kHz audio). There the reference carries noise up
to ~0.02 in the log, and this code is closer to the exact value (checked against torchaudio run in
float64: within 1e-4 everywhere). The mel product (non-negative terms) is a float32 matmul; the
result is float32.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import AudioError, TooShortError

__all__ = ["SAMPLE_RATE", "NUM_MEL_BINS", "FRAME_LENGTH", "FRAME_SHIFT", "kaldi_fbank", "log_fbank", "mel_banks"]

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512  # FRAME_LENGTH rounded up to a power of two, as Kaldi's round_to_power_of_two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
HIGH_FREQ = SAMPLE_RATE / 2  # Kaldi's high_freq=0 means Nyquist
INT16_SCALE = 32768.0
BLOCK_FRAMES = 24  # frames per step: the largest temporary, 24 x 257 complex spectra, is 99 KB
LOG_FLOOR = float(np.finfo(np.float32).eps)


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def mel_banks() -> np.ndarray:
    """(FFT_SIZE//2 + 1, NUM_MEL_BINS) matrix of Kaldi's triangular mel filters (last row zero), float64.

    Filter m rises from mel edge m to m+1 and falls to m+2, the edges equally spaced on the mel scale
    between LOW_FREQ and HIGH_FREQ; FFT bin k sits at k * SAMPLE_RATE / FFT_SIZE. The Nyquist bin gets no
    weight (Kaldi's filters span the first FFT_SIZE/2 bins). The weights are computed in float32, as
    Kaldi (BaseFloat) and torchaudio do: the float64 triangles differ by up to 1.4e-5, which moves a
    log energy by up to 2e-4. Every step is an IEEE float32 operation or a correctly rounded float64 log,
    so the weights are the same bits on every CPU.
    """
    f32 = np.float32
    low, high = float(_mel(LOW_FREQ)), float(_mel(HIGH_FREQ))
    delta = (high - low) / (NUM_MEL_BINS + 1)
    m = np.arange(NUM_MEL_BINS, dtype=f32)[:, None]
    left = f32(low) + m * f32(delta)
    centre = f32(low) + (m + 1) * f32(delta)
    right = f32(low) + (m + 2) * f32(delta)
    freqs = f32(SAMPLE_RATE / FFT_SIZE) * np.arange(FFT_SIZE // 2, dtype=f32)
    # each step rounded to float32 as torchaudio does, but the log taken in float64 and then rounded: numpy's
    # float32 log differs between x86 (AVX-512) and ARM by an ulp, which moved weights by 1.4e-5
    ratio = f32(1.0) + freqs / f32(700.0)
    bin_mel = (f32(1127.0) * np.log(ratio.astype(np.float64)).astype(f32))[None, :]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = np.maximum(f32(0.0), np.minimum(up, down))  # (NUM_MEL_BINS, FFT_SIZE // 2)
    out = np.zeros((FFT_SIZE // 2 + 1, NUM_MEL_BINS), dtype=np.float64)
    out[: FFT_SIZE // 2] = banks.T
    out.flags.writeable = False
    return out


@lru_cache(maxsize=1)
def _povey_window() -> np.ndarray:
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (FRAME_LENGTH - 1))
    window = hann**0.85
    window.flags.writeable = False
    return window


def log_fbank(wave: np.ndarray) -> np.ndarray:
    """(frames, 80) float32 Kaldi log-mel energies of a 16 kHz float waveform in [-1, 1], before mean removal.

    Frames are whole 400-sample windows every 160 samples (snip_edges: a tail that fits no frame is
    dropped). Raises TooShortError when the clip holds no whole frame and AudioError on non-finite samples.

    Frames go through in blocks of BLOCK_FRAMES so that every temporary stays under glibc's mmap
    threshold, which core/memory.py fixes at 128 KiB: whole-clip temporaries (5 MB for 3 s) were fresh
    mappings on every call, and their page faults tripled the time (3.5 ms instead of ~1 ms per 3 s clip).
    """
    x = np.asarray(wave)
    if x.ndim != 1:
        raise AudioError(f"fbank needs a mono waveform, got shape {x.shape}")
    if x.shape[0] < FRAME_LENGTH:
        raise TooShortError(f"audio too short for features: {x.shape[0]} samples, need at least {FRAME_LENGTH}")
    if not np.isfinite(x).all():
        raise AudioError("audio contains non-finite samples")
    count = 1 + (x.shape[0] - FRAME_LENGTH) // FRAME_SHIFT
    window, banks = _povey_window(), _mel_banks32()
    out = np.empty((count, NUM_MEL_BINS), dtype=np.float32)
    padded = np.zeros((BLOCK_FRAMES, FFT_SIZE), dtype=np.float64)  # columns past FRAME_LENGTH stay zero
    for first in range(0, count, BLOCK_FRAMES):
        n = min(BLOCK_FRAMES, count - first)
        start = first * FRAME_SHIFT
        segment = x[start : start + (n - 1) * FRAME_SHIFT + FRAME_LENGTH].astype(np.float64)
        segment *= INT16_SCALE
        frames = np.lib.stride_tricks.as_strided(
            segment, shape=(n, FRAME_LENGTH), strides=(segment.strides[0] * FRAME_SHIFT, segment.strides[0]),
            writeable=False,
        )
        centred = frames - frames.mean(axis=1, keepdims=True)  # DC offset removal
        body = padded[:n, :FRAME_LENGTH]
        np.multiply(centred[:, :-1], -PREEMPHASIS, out=body[:, 1:])  # pre-emphasis; the first sample
        body[:, 1:] += centred[:, 1:]  # against itself
        body[:, 0] = (1.0 - PREEMPHASIS) * centred[:, 0]
        body *= window
        spectrum = np.fft.rfft(padded[:n], axis=1)
        power = spectrum.real**2
        power += spectrum.imag**2
        # non-negative terms only: a float32 product loses nothing that the log could show (~1e-7 relative)
        np.matmul(power.astype(np.float32), banks, out=out[first : first + n])
    np.maximum(out, LOG_FLOOR, out=out)
    np.log(out, out=out)
    return out


@lru_cache(maxsize=1)
def _mel_banks32() -> np.ndarray:
    banks = mel_banks().astype(np.float32)
    banks.flags.writeable = False
    return banks


def kaldi_fbank(wave: np.ndarray) -> np.ndarray:
    """CAM++'s network input: Kaldi fbank minus its per-utterance mean, (frames, 80) float32.

    `wave` is float audio at 16 kHz in [-1, 1] (as core.audio decodes it); at least 400 samples.
    """
    feats = log_fbank(wave)
    feats -= feats.mean(axis=0, dtype=np.float64, keepdims=True).astype(np.float32)
    return feats
