"""Raw PCM chunks (any declared rate / sample width / channels) -> 16 kHz mono float32, as they arrive.

For streamed audio (the Wyoming proxy): each chunk is decoded and resampled when it comes in, so the
model can run the moment the stream stops -- no second pass over a stored recording. Resampling goes
block-wise through audio.resample with enough context on both sides of each block that the result
matches resampling the whole stream at once. Memory is bounded: at most max_seconds of 16 kHz output
is kept (the rest of a longer stream is dropped, `truncated` says so) plus a fraction of a second of
pending input.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .audio import MAX_CHANNELS, MAX_RATE, MIN_RATE, TARGET_RATE, resample
from ..errors import AudioError

WIDTHS = (1, 2, 3, 4)  # bytes per sample: u8, s16le, s24le, s32le (what Wyoming's AudioChunk can declare)
MAX_RATIO_TERM = 2000  # rate/16000 reduced to up/down: larger terms mean huge polyphase filters (rejected)
BLOCK_S = 0.25  # resample in blocks of about this much input


def check_format(rate: object, width: object, channels: object) -> tuple[int, int, int]:
    """The declared format as ints, or AudioError naming what is wrong (network input: never trusted)."""
    for what, v in (("rate", rate), ("width", width), ("channels", channels)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise AudioError(f"audio {what} must be an integer, got {v!r}"[:200])
    assert isinstance(rate, int) and isinstance(width, int) and isinstance(channels, int)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"unsupported sample rate {rate} Hz (allowed {MIN_RATE}..{MAX_RATE} Hz)")
    g = math.gcd(TARGET_RATE, rate)
    if max(TARGET_RATE // g, rate // g) > MAX_RATIO_TERM:
        raise AudioError(f"unsupported sample rate {rate} Hz (no small ratio to {TARGET_RATE} Hz)")
    if width not in WIDTHS:
        raise AudioError(f"unsupported sample width {width} bytes (allowed 1-4)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"unsupported channel count {channels}")
    return rate, width, channels


def pcm_to_mono(data: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian PCM frames -> mono float64 in [-1, 1] (u8 is offset binary, as in WAV)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 1:
        x = (raw.astype(np.float64) - 128.0) / 128.0
    elif width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64) / float(1 << 23)
    else:
        x = np.frombuffer(data, dtype="<i2" if width == 2 else "<i4").astype(np.float64) / float(2 ** (8 * width - 1))
    return x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


class _Resampler:
    """Block-wise resample of one format's stream; output equals resampling the whole input at once."""

    def __init__(self, rate: int) -> None:
        g = math.gcd(TARGET_RATE, rate)
        self.rate, self.up, self.down = rate, TARGET_RATE // g, rate // g
        # scipy's resample_poly filter reaches 10*max(up, down)/up input samples each side; doubled for margin,
        # rounded to whole `down` steps so every block starts on an output sample
        reach = 2 * math.ceil(10 * max(self.up, self.down) / self.up) + 16
        self.ctx = math.ceil(reach / self.down) * self.down
        self.block = max(self.down, int(BLOCK_S * rate) // self.down * self.down)
        self.pending = np.zeros(0, dtype=np.float64)  # input not yet output, after `left` samples of context
        self.left = 0

    def feed(self, x: np.ndarray) -> list[np.ndarray]:
        if self.up == self.down:
            return [x]
        self.pending = np.concatenate([self.pending, x]) if self.pending.size else x
        out: list[np.ndarray] = []
        while True:
            avail = self.pending.size - self.left - self.ctx
            if avail < self.block:
                return out
            n = avail // self.down * self.down
            y = resample(self.pending[: self.left + n + self.ctx], self.rate)
            out.append(y[self.left * self.up // self.down : (self.left + n) * self.up // self.down])
            cut = max(0, self.left + n - self.ctx)  # keep ctx samples as the next block's left context
            self.pending, self.left = self.pending[cut:], self.left + n - cut

    def flush(self) -> list[np.ndarray]:
        if self.up == self.down or self.pending.size <= self.left:
            return []
        y = resample(self.pending, self.rate)[self.left * self.up // self.down :]
        self.pending, self.left = np.zeros(0), 0
        return [y]

    @property
    def nbytes(self) -> int:
        return int(self.pending.nbytes)


class StreamConverter:
    """Accumulates one stream as 16 kHz mono float32, bounded to max_seconds of output."""

    def __init__(self, max_seconds: float) -> None:
        self.cap = max(1, int(max_seconds * TARGET_RATE))
        self._blocks: list[np.ndarray] = []
        self.samples = 0  # 16 kHz samples kept
        self.truncated = False
        self._format: Optional[tuple[int, int, int]] = None
        self._resampler: Optional[_Resampler] = None
        self._partial = b""  # bytes of an incomplete frame, completed by the next chunk

    def feed(self, data: bytes, rate: object, width: object, channels: object) -> None:
        """One chunk as declared; AudioError for a bad format. A format change mid-stream is allowed."""
        fmt = check_format(rate, width, channels)
        if fmt != self._format:
            self._finish_format()
            self._format, self._resampler = fmt, _Resampler(fmt[0])
        if self.truncated:
            return
        frame = fmt[1] * fmt[2]
        buf = self._partial + bytes(data) if self._partial else bytes(data)
        whole = len(buf) // frame * frame
        self._partial = buf[whole:]
        if whole:
            assert self._resampler is not None
            self._keep(self._resampler.feed(pcm_to_mono(buf[:whole], fmt[1], fmt[2])))

    def _finish_format(self) -> None:
        if self._resampler is not None:
            self._keep(self._resampler.flush())
        self._resampler, self._partial = None, b""

    def _keep(self, blocks: list[np.ndarray]) -> None:
        for y in blocks:
            room = self.cap - self.samples
            if y.size > room:
                y, self.truncated = y[:room], True
            if y.size:
                self._blocks.append(y.astype(np.float32))
                self.samples += y.size
            if self.truncated:
                self._resampler, self._partial = None, b""
                return

    def finish(self) -> np.ndarray:
        """All kept audio (flushing the resampler); the converter is empty afterwards."""
        self._finish_format()
        self._format = None
        out = np.concatenate(self._blocks) if self._blocks else np.zeros(0, dtype=np.float32)
        self.clear()
        return out

    def clear(self) -> None:
        self._blocks, self.samples, self._partial = [], 0, b""
        self._format = self._resampler = None

    @property
    def nbytes(self) -> int:
        """Memory held for this stream (kept output + pending input)."""
        held = sum(b.nbytes for b in self._blocks) + len(self._partial)
        return held + (self._resampler.nbytes if self._resampler is not None else 0)

    @property
    def seconds(self) -> float:
        return self.samples / TARGET_RATE
