"""Energy-based voice activity detection: trim silence from clips and cut utterances from a stream.

Why our own: the embedding model only needs silence and long pauses removed, a neural VAD
would cost more CPU on a Pi than the embedding itself, and the same frame-by-frame detector
must serve both the batch path (files) and the microphone daemon.

How: per frame (10 ms), log energy in dBFS is compared with an adaptive noise floor (a
minimum follower: falls fast, rises slowly) and with an absolute floor (very quiet input is
never speech). Onset when energy > floor + margin_db, release with hysteresis, then a
hangover. Batch post-processing drops too-short bursts, merges short gaps and pads segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = [
    "VadConfig",
    "EnergyVad",
    "frame_energies_db",
    "frame_decisions",
    "speech_segments",
    "trim_silence",
    "keep_segments",
    "VAD_MODES",
    "DEFAULT_VAD_MODE",
    "UtteranceCutter",
]

_EPS = 1e-12
# How the verifier uses the VAD before embedding (see verifier.py): check (default), trim, off.
VAD_MODES = ("check", "trim", "off")
DEFAULT_VAD_MODE = "check"


@dataclass(frozen=True)
class VadConfig:
    """VAD parameters (times in ms, levels in dB / dBFS of the frame RMS)."""

    frame_ms: float = 10.0
    margin_db: float = 9.0  # onset: energy above noise floor by this much
    release_db: float = 6.0  # stay active while energy above floor by this much (hysteresis)
    abs_floor_db: float = -60.0  # frames quieter than this are never speech
    floor_rise_db_per_s: float = 6.0  # noise floor follower: slow rise ...
    floor_fall: float = 0.5  # ... fast fall (fraction of the distance closed per frame)
    floor_percentile: float = 10.0  # batch: initial floor = this percentile of the clip's frame energies
    init_floor_db: float = -50.0  # streaming: initial floor before any audio was seen
    hangover_ms: float = 150.0  # keep deciding "speech" this long after energy drops
    min_speech_ms: float = 100.0  # bursts with less active (above-threshold) time are dropped
    min_gap_ms: float = 300.0  # pauses shorter than this are bridged
    pad_ms: float = 50.0  # context kept around each segment
    keep_all_fraction: float = 0.9  # trim_silence returns the input untouched if VAD keeps >= this

    def __post_init__(self) -> None:
        if not 5.0 <= self.frame_ms <= 50.0:
            raise ConfigError(f"vad frame_ms must be within 5..50, got {self.frame_ms}")
        if self.release_db > self.margin_db or self.margin_db <= 0:
            raise ConfigError("vad needs 0 < release_db <= margin_db")
        if not 0.0 < self.floor_fall <= 1.0:
            raise ConfigError("vad floor_fall must be in (0, 1]")
        if not 0.0 <= self.floor_percentile <= 100.0:
            raise ConfigError("vad floor_percentile must be in 0..100")
        for f in ("hangover_ms", "min_speech_ms", "min_gap_ms", "pad_ms", "floor_rise_db_per_s"):
            if getattr(self, f) < 0:
                raise ConfigError(f"vad {f} must be >= 0")

    def frame_len(self, sample_rate: int) -> int:
        return max(1, int(round(sample_rate * self.frame_ms / 1000.0)))

    def frames(self, ms: float) -> int:
        return int(math.ceil(ms / self.frame_ms - 1e-9))


def frame_energies_db(frames: np.ndarray) -> np.ndarray:
    """Log energy (dBFS of RMS) of each row of a (n_frames, frame_len) array, DC removed."""
    x = np.asarray(frames, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return 10.0 * np.log10(np.mean(x * x, axis=1) + _EPS)


class EnergyVad:
    """Frame-by-frame detector; the single implementation behind batch and streaming use."""

    def __init__(self, sample_rate: int = 16000, config: VadConfig = VadConfig(), initial_floor_db: float | None = None):
        if sample_rate < 4000:
            raise ConfigError(f"vad sample rate {sample_rate} Hz is too low")
        self.sample_rate = int(sample_rate)
        self.config = config
        self.frame_len = config.frame_len(self.sample_rate)
        self._initial_floor = config.init_floor_db if initial_floor_db is None else float(initial_floor_db)
        self._floor_min = config.abs_floor_db - config.margin_db
        self._rise = config.floor_rise_db_per_s * config.frame_ms / 1000.0
        self._hang_frames = config.frames(config.hangover_ms)
        self.reset()

    def reset(self) -> None:
        self.floor_db = max(self._initial_floor, self._floor_min)
        self.active = False  # above-threshold state (with hysteresis), before hangover
        self.last_energy_db = -120.0
        self._hang = 0

    def process_energy(self, e: float) -> bool:
        """Advance by one frame of known log energy; returns the speech decision (with hangover)."""
        c = self.config
        self.last_energy_db = e
        above = e - self.floor_db
        if e < c.abs_floor_db:
            self.active = False
        elif self.active:
            self.active = above > c.release_db
        else:
            self.active = above > c.margin_db
        # noise floor: fast fall towards quieter frames, slow rise otherwise
        if e < self.floor_db:
            self.floor_db += c.floor_fall * (e - self.floor_db)
        else:
            self.floor_db = min(self.floor_db + self._rise, e)
        self.floor_db = max(self.floor_db, self._floor_min)
        if self.active:
            self._hang = self._hang_frames
            return True
        if self._hang > 0:
            self._hang -= 1
            return True
        return False

    def process_frame(self, frame: np.ndarray) -> bool:
        """One frame of frame_len samples -> speech decision."""
        frame = np.asarray(frame)
        if frame.shape != (self.frame_len,):
            raise ValueError(f"expected a frame of {self.frame_len} samples, got shape {frame.shape}")
        return self.process_energy(float(frame_energies_db(frame[None, :])[0]))


def _as_frames(samples: np.ndarray, frame_len: int) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32).ravel()
    n = x.size // frame_len
    return x[: n * frame_len].reshape(n, frame_len)


def frame_decisions(
    samples: np.ndarray, sample_rate: int = 16000, config: VadConfig = VadConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (decision with hangover, raw above-threshold) booleans for a whole clip.

    The noise floor starts at a low percentile of the clip's own frame energies, so a clip
    that starts mid-word is not taken as the noise reference (that would eat its first word).
    """
    vad = EnergyVad(sample_rate, config)
    energies = frame_energies_db(_as_frames(samples, vad.frame_len))
    if energies.size:
        vad = EnergyVad(sample_rate, config, initial_floor_db=float(np.percentile(energies, config.floor_percentile)))
    decisions = np.zeros(energies.size, dtype=bool)
    raw = np.zeros(energies.size, dtype=bool)
    for i, e in enumerate(energies.tolist()):
        decisions[i] = vad.process_energy(e)
        raw[i] = vad.active
    return decisions, raw


def speech_segments(
    samples: np.ndarray, sample_rate: int = 16000, config: VadConfig = VadConfig()
) -> list[tuple[int, int]]:
    """Speech regions as [(start, end)) sample indices, after min-length, gap-merge and padding."""
    decisions, raw = frame_decisions(samples, sample_rate, config)
    flen = config.frame_len(sample_rate)
    n_total = np.asarray(samples).shape[0]
    # runs of True in decisions
    d = np.r_[False, decisions, False].astype(np.int8)
    starts = np.flatnonzero(np.diff(d) == 1)
    ends = np.flatnonzero(np.diff(d) == -1)
    min_gap = config.frames(config.min_gap_ms)
    merged: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        if merged and s - merged[-1][1] < min_gap:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    min_active = config.frames(config.min_speech_ms)
    pad = int(round(config.pad_ms / 1000.0 * sample_rate))
    out: list[tuple[int, int]] = []
    for s, e in merged:
        if int(raw[s:e].sum()) < min_active:
            continue
        a = max(0, s * flen - pad)
        b = min(n_total, e * flen + pad)
        if e == decisions.size:  # speech runs into the ragged tail: keep it
            b = n_total
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def trim_silence(samples: np.ndarray, sample_rate: int = 16000, config: VadConfig = VadConfig()) -> np.ndarray:
    """Concatenated speech; the input unchanged if nearly all of it is speech; empty if none."""
    x = np.asarray(samples, dtype=np.float32)
    return keep_segments(x, speech_segments(x, sample_rate, config), config)


def keep_segments(samples: np.ndarray, segments: list[tuple[int, int]], config: VadConfig = VadConfig()) -> np.ndarray:
    """The segments concatenated; the input unchanged if they cover >= keep_all_fraction; empty if none."""
    if not segments:
        return np.zeros(0, dtype=np.float32)
    if sum(e - s for s, e in segments) >= config.keep_all_fraction * samples.shape[0]:
        return samples
    return np.concatenate([samples[s:e] for s, e in segments])


class UtteranceCutter:
    """Cuts a continuous sample stream into utterances, with pre-roll, in bounded memory.

    Feed float32 blocks of any size with push(); it returns the utterances finished by that
    block (each a float32 copy at the input rate). An utterance ends after the VAD's hangover
    plus min_gap_ms of non-speech, or is emitted forcibly at max_utterance_s. Utterances with
    less than min_utterance_s of speech frames are dropped. Memory is preallocated: one frame,
    a pre-roll ring and one utterance buffer.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        config: VadConfig = VadConfig(),
        pre_roll_s: float = 0.3,
        min_utterance_s: float = 1.0,
        max_utterance_s: float = 10.0,
    ):
        if max_utterance_s <= 0 or min_utterance_s < 0 or min_utterance_s > max_utterance_s or pre_roll_s < 0:
            raise ConfigError("utterance cutter needs 0 <= min_utterance_s <= max_utterance_s and pre_roll_s >= 0")
        self.sample_rate = int(sample_rate)
        self.config = config
        self.vad = EnergyVad(self.sample_rate, config)
        self.frame_len = self.vad.frame_len
        fl = self.frame_len
        self._pre_frames = int(math.ceil(pre_roll_s * self.sample_rate / fl))
        self._max_len = max(fl, int(max_utterance_s * self.sample_rate) // fl * fl)
        self._min_speech_frames = int(math.ceil(min_utterance_s * self.sample_rate / fl))
        self._end_frames = max(1, config.frames(config.min_gap_ms))
        self._pad = int(round(config.pad_ms / 1000.0 * self.sample_rate))
        self._frame = np.zeros(fl, dtype=np.float32)
        self._frame_fill = 0
        self._ring = np.zeros(max(1, self._pre_frames) * fl, dtype=np.float32)
        self._ring_pos = 0  # next write position (frame-aligned)
        self._ring_fill = 0
        self._utt = np.zeros(self._max_len, dtype=np.float32)
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self._in_utt = False
        self._utt_len = 0
        self._speech_frames = 0
        self._silent_run = 0
        self._last_speech_end = 0  # sample index in _utt just after the last speech frame

    def reset(self) -> None:
        """Forget everything (stream restarted)."""
        self.vad.reset()
        self._frame_fill = 0
        self._ring_pos = self._ring_fill = 0
        self._reset_utterance()

    @property
    def in_utterance(self) -> bool:
        return self._in_utt

    def push(self, block: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(block, dtype=np.float32).ravel()
        out: list[np.ndarray] = []
        fl, i, n = self.frame_len, 0, x.size
        while i < n:
            take = min(fl - self._frame_fill, n - i)
            self._frame[self._frame_fill : self._frame_fill + take] = x[i : i + take]
            self._frame_fill += take
            i += take
            if self._frame_fill == fl:
                self._frame_fill = 0
                done = self._on_frame(self._frame)
                if done is not None:
                    out.append(done)
        return out

    def flush(self) -> list[np.ndarray]:
        """End of stream: emit the utterance in progress if it has enough speech."""
        out = []
        if self._in_utt:
            done = self._finish(self._utt_len)
            if done is not None:
                out.append(done)
        self._frame_fill = 0
        return out

    def _on_frame(self, frame: np.ndarray) -> np.ndarray | None:
        fl = self.frame_len
        speech = self.vad.process_frame(frame)
        done = None
        if not self._in_utt and speech:
            self._in_utt = True
            self._copy_pre_roll()
        if self._in_utt:
            self._utt[self._utt_len : self._utt_len + fl] = frame
            self._utt_len += fl
            if speech:
                self._speech_frames += 1
                self._silent_run = 0
                self._last_speech_end = self._utt_len
            else:
                self._silent_run += 1
            if self._silent_run >= self._end_frames:
                done = self._finish(min(self._utt_len, self._last_speech_end + self._pad))
            elif self._utt_len >= self._max_len:
                done = self._finish(self._utt_len)
                if speech:  # speech goes on: continue straight into a new utterance, no pre-roll
                    self._in_utt = True
        self._ring_write(frame)
        return done

    def _finish(self, length: int) -> np.ndarray | None:
        enough = self._speech_frames >= self._min_speech_frames
        seg = self._utt[:length].copy() if enough and length > 0 else None
        self._reset_utterance()
        return seg

    def _ring_write(self, frame: np.ndarray) -> None:
        if self._pre_frames == 0:
            return
        fl = self.frame_len
        self._ring[self._ring_pos : self._ring_pos + fl] = frame
        self._ring_pos = (self._ring_pos + fl) % self._ring.size
        self._ring_fill = min(self._ring_fill + fl, self._ring.size)

    def _copy_pre_roll(self) -> None:
        n = min(self._ring_fill, self._max_len - self.frame_len)
        if n <= 0:
            return
        start = (self._ring_pos - n) % self._ring.size
        first = min(n, self._ring.size - start)
        self._utt[:first] = self._ring[start : start + first]
        self._utt[first:n] = self._ring[: n - first]
        self._utt_len = n
