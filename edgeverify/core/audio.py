"""Audio input: decode WAV/FLAC/Ogg (libsndfile, or our own FLAC decoder for what it refuses) from a
path or bytes into 16 kHz mono float32.

Everything that reaches the model goes through here, so this is where untrusted input is
bounded (bytes, seconds, sample rate, channels, decoded size) and turned into specific, one-line
errors. Decoding streams block by block (mono mix and resampling as blocks arrive), so the memory a
request holds does not grow with channels or sample rate.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from ..errors import AudioError, EmptyAudioError, TooLongError, UnreadableAudioError

__all__ = [
    "TARGET_RATE",
    "MIN_RATE",
    "MAX_RATE",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DECODED_BYTES",
    "MAX_CHANNELS",
    "Audio",
    "read_audio",
    "audio_from_array",
    "resample",
]

log = logging.getLogger(__name__)

TARGET_RATE = 16000
MIN_RATE = 4000
MAX_RATE = 192000
MAX_CHANNELS = 8
MAX_RATIO_TERM = 1000  # largest up or down of the resampler (filter of 20 x that many taps)
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_MAX_BYTES = 50_000_000
_BLOCK = 16384  # frames per decode step: one block (<= 512 KiB at 8 ch) is all the multichannel data held
DEFAULT_MAX_DECODED_BYTES = 64 << 20  # frames x channels x 4 bytes a request may decode (the work it costs)

# data-chunk sizes that writers use when the length is unknown (pipes, arecord, ffmpeg to stdout)
_UNKNOWN_DATA_SIZES = (0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000)


@dataclass(frozen=True, eq=False)
class Audio:
    """Decoded clip, always float32 mono at TARGET_RATE in [-1, 1]; remembers what it came from."""

    samples: np.ndarray
    source_rate: int
    source_channels: int
    name: str

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / TARGET_RATE


def _ratio(rate: int, target: int) -> tuple[int, int]:
    """(up, down) of the polyphase resampler, both terms at most MAX_RATIO_TERM.

    An exact ratio with a huge term (191 999 Hz -> 16 kHz is 16000/191999) would need a filter of
    20 x max(up, down) taps (3.8 M here, 240 MiB inside scipy); such odd rates are resampled with
    the nearest ratio whose terms fit (relative rate error < 1/MAX_RATIO_TERM, 5e-6 for 191 999 Hz),
    which no speaker model can hear. Every common rate (8k..192k, 11025, 22050, 44100, 88200) is exact.
    """
    f = Fraction(int(target), int(rate))
    if max(f.numerator, f.denominator) > MAX_RATIO_TERM:
        f = f.limit_denominator(MAX_RATIO_TERM) if f < 1 else 1 / (1 / f).limit_denominator(MAX_RATIO_TERM)
    return f.numerator, f.denominator


@lru_cache(maxsize=8)
def _polyphase(up: int, down: int) -> tuple[np.ndarray, int]:
    """Filter bank of scipy.signal.resample_poly's default design, split into ``up`` phases.

    Same filter as resample_poly: firwin(2 * half_len + 1, 1 / max(up, down), window=('kaiser', 5.0))
    * up with half_len = 10 * max(up, down) (windowed sinc, normalised to unit DC gain). Row r holds
    the taps of phase r reversed, so an output is one dot product with a contiguous input window.
    """
    m = max(up, down)
    half = 10 * m
    n = np.arange(-half, half + 1, dtype=np.float64)
    h = np.sinc(n / m) / m * np.kaiser(2 * half + 1, 5.0)
    h *= up / h.sum()
    k = -(-h.size // up)  # taps per phase
    bank = np.zeros(up * k)
    bank[: h.size] = h
    return np.ascontiguousarray(bank.reshape(k, up).T[:, ::-1]), half


class _Resampler:
    """Streaming polyphase resampler equal to scipy.signal.resample_poly(x, up, down) on the whole signal.

    Output i is sum_n h[i*down + half - n*up] * x[n] (zeros outside x), the same alignment as
    resample_poly's upfirdn + trim; input arrives block by block, so a long or high-rate clip never
    needs its whole source-rate signal in memory.
    """

    def __init__(self, rate: int, target: int = TARGET_RATE):
        self.up, self.down = _ratio(rate, target)
        self.identity = self.up == self.down
        if not self.identity:
            self.bank, self.half = _polyphase(self.up, self.down)
            self.taps = self.bank.shape[1]
            self.buf = np.zeros(self.taps - 1)  # buf[j] is input sample base + j
            self.base = 1 - self.taps
        self.n_in = 0
        self.i = 0  # next output index

    def n_out(self, n_in: int) -> int:
        return -(-n_in * self.up // self.down)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Feed float64 input; returns the outputs that no later input can change."""
        self.n_in += x.shape[0]
        if self.identity:
            return x
        self.buf = np.concatenate((self.buf, x))
        # output i is final once its newest input index (i*down + half) // up has arrived
        ready = max(self.i, -(-(self.n_in * self.up - self.half) // self.down))
        return self._run(ready)

    def flush(self) -> np.ndarray:
        """The outputs that depend on the (zero) samples after the end."""
        if self.identity:
            return np.zeros(0)
        end = self.n_out(self.n_in)
        if end > self.i:
            last = ((end - 1) * self.down + self.half) // self.up
            need = last - self.base + 1 - self.buf.shape[0]
            if need > 0:
                self.buf = np.concatenate((self.buf, np.zeros(need)))
        return self._run(end)

    def _run(self, end: int) -> np.ndarray:
        i0, count = self.i, end - self.i
        out = np.empty(max(count, 0))
        if count > 0:
            windows = np.lib.stride_tricks.sliding_window_view(self.buf, self.taps)
            for c in range(min(self.up, count)):
                p = (i0 + c) * self.down + self.half
                start = p // self.up - self.base - self.taps + 1
                m = -(-(count - c) // self.up)
                rows = windows[start : start + (m - 1) * self.down + 1 : self.down]
                out[c :: self.up] = rows @ self.bank[p % self.up]
            self.i = end
        # keep only the history the next output needs
        drop = (self.i * self.down + self.half) // self.up - self.taps + 1 - self.base
        if drop > 0:
            self.buf = self.buf[drop:]
            self.base += drop
        return out


def resample(x: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    """Polyphase resampling equal to scipy.signal.resample_poly (used for the reference embeddings)
    to ~1e-15, in numpy, so the runtime does not import scipy. Returns float64 (x itself when no
    resampling is needed)."""
    if rate == target:
        return x
    r = _Resampler(int(rate), int(target))
    if r.identity:
        return x
    head = r.push(np.asarray(x, dtype=np.float64))
    return np.concatenate((head, r.flush()))


def _check_riff(data: bytes, name: str) -> None:
    """Detect WAV/RF64 files whose data chunk claims more bytes than the file holds.

    libsndfile silently reads what is there, so a cut upload would otherwise pass as a
    shorter clip; for verification it is better to refuse it.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64", b"BW64") or data[8:12] != b"WAVE":
        return
    pos = 12
    ds64_data: int | None = None
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if cid == b"ds64" and pos + 8 + 16 <= len(data):
            (ds64_data,) = struct.unpack_from("<Q", data, pos + 16)
        if cid == b"data":
            declared = size
            if size == 0xFFFFFFFF and ds64_data is not None:
                declared = ds64_data
            elif size in _UNKNOWN_DATA_SIZES:
                return  # streaming writer: length unknown, read what is there
            available = len(data) - (pos + 8)
            if declared > available:
                raise UnreadableAudioError(
                    f"{name}: truncated WAV: data chunk declares {declared} bytes but only {available} present"
                )
            return
        pos += 8 + size + (size & 1)
    raise UnreadableAudioError(f"{name}: truncated or corrupt WAV: no complete data chunk")


def _limits_check(
    frames: float, rate: int, channels: int, name: str, max_seconds: float, max_decoded_bytes: int
) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{name}: unsupported sample rate {rate} Hz (allowed {MIN_RATE}..{MAX_RATE} Hz)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{name}: unsupported channel count {channels} (allowed 1..{MAX_CHANNELS})")
    if frames / rate > max_seconds:
        raise TooLongError(f"{name}: audio is {frames / rate:.1f} s, longer than the {max_seconds:g} s limit")
    _budget_check(frames * channels, name, max_decoded_bytes)


def _budget_check(samples: float, name: str, max_decoded_bytes: int) -> None:
    if samples * 4 > max_decoded_bytes:
        raise TooLongError(
            f"{name}: decoding needs {samples * 4 / 2**20:.0f} MiB of samples (frames x channels x 4 bytes),"
            f" over the {max_decoded_bytes / 2**20:.0f} MiB budget"
        )


def _default_budget(max_seconds: float) -> int:
    """64 MiB, or enough for max_seconds of 48 kHz stereo when a caller raises max_seconds (calibration)."""
    return max(DEFAULT_MAX_DECODED_BYTES, int(max_seconds * 48000 * 2 * 4))


class _Mixer:
    """Takes decoded blocks as they come: budget check, mono mix, sanitise, resample, append.

    Nothing multichannel or at the source rate is kept beyond one block, so the memory a request
    holds is the 16 kHz output (preallocated once, 3.8 MB for 60 s) plus one block's temporaries.
    """

    def __init__(self, rate: int, channels: int, frames: int | None, name: str, max_seconds: float, budget: int):
        self.rate, self.channels, self.name = rate, channels, name
        self.max_seconds, self.budget = max_seconds, budget
        self.cap = int(max_seconds * rate) + 1
        self.frames = 0
        self.res = _Resampler(rate)
        expect = min(frames, self.cap) if frames is not None else self.cap
        self.out = np.empty(self.res.n_out(expect) + 1, dtype=np.float32)
        self.n = 0

    def add(self, blk: np.ndarray) -> None:
        self.frames += blk.shape[0]
        if self.frames > self.cap:
            raise TooLongError(f"{self.name}: audio is longer than the {self.max_seconds:g} s limit")
        _budget_check(self.frames * self.channels, self.name, self.budget)
        mono = blk.mean(axis=1, dtype=np.float64) if blk.ndim == 2 else blk.astype(np.float64)
        if not np.all(np.isfinite(mono)):
            mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
        self._append(self.res.push(mono))

    def _append(self, y: np.ndarray) -> None:
        if self.n + y.shape[0] > self.out.shape[0]:  # header under-declared the length: grow once, to the cap
            grown = np.empty(max(self.res.n_out(self.cap) + 1, self.n + y.shape[0]), dtype=np.float32)
            grown[: self.n] = self.out[: self.n]
            self.out = grown
        self.out[self.n : self.n + y.shape[0]] = y
        self.n += y.shape[0]

    def finish(self) -> Audio:
        self._append(self.res.flush())
        if self.n == 0:
            raise EmptyAudioError(f"{self.name}: audio contains no samples")
        # no clipping after resampling: the polyphase filter may overshoot full scale slightly, and the
        # reference features were computed on the unclipped signal
        out = self.out[: self.n] if self.n > self.out.shape[0] // 2 else self.out[: self.n].copy()
        return Audio(samples=out, source_rate=self.rate, source_channels=self.channels, name=self.name)


def _decode(data: bytes, name: str, max_seconds: float, budget: int) -> Audio:
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, struct.error, EOFError) as exc:
        from . import flac

        if flac.is_flac(data):  # valid FLAC libsndfile does not support (12/20/32-bit samples, ...)
            return _decode_flac(data, name, max_seconds, budget)
        raise UnreadableAudioError(f"{name}: not a readable audio file ({_short(exc)})") from None
    with f:
        rate, channels = int(f.samplerate), int(f.channels)
        known = 0 <= f.frames < 2**62  # FLAC from streaming encoders reports SF_COUNT_MAX
        _limits_check(f.frames if known else 0, rate, channels, name, max_seconds, budget)
        mixer = _Mixer(rate, channels, int(f.frames) if known else None, name, max_seconds, budget)
        buf = np.empty((min(_BLOCK, mixer.cap), channels), dtype=np.float32)
        try:
            while True:
                blk = _read_block(f, buf)
                if blk.shape[0] == 0:
                    break
                mixer.add(blk)
        except (sf.LibsndfileError, RuntimeError, ValueError, struct.error) as exc:
            raise UnreadableAudioError(f"{name}: truncated or corrupt audio ({_short(exc)})") from None
        if known and mixer.frames < f.frames:
            raise UnreadableAudioError(
                f"{name}: truncated audio: header declares {f.frames} frames, only {mixer.frames} decoded"
            )
    return mixer.finish()


def _decode_flac(data: bytes, name: str, max_seconds: float, budget: int) -> Audio:
    from . import flac

    stream = flac.FlacStream(data, name)
    total = stream.total_frames
    budget //= 4  # pure numpy, ~50x slower than libsndfile: a quarter of the budget bounds the CPU time too
    _limits_check(total or 0, stream.rate, stream.channels, name, max_seconds, budget)
    mixer = _Mixer(stream.rate, stream.channels, total, name, max_seconds, budget)
    for blk in stream.blocks(max_frames=mixer.cap, max_work=budget // 4):
        mixer.add(blk)
    if total is not None and mixer.frames != total:
        raise UnreadableAudioError(f"{name}: truncated FLAC: header declares {total} frames, {mixer.frames} decoded")
    return mixer.finish()


def _read_block(f, out: np.ndarray) -> np.ndarray:
    """Read up to len(out) frames into out via sf_readf_float directly.

    SoundFile.read() calls tell()/seek() around every read, and libsndfile cannot seek in a
    FLAC stream whose STREAMINFO has no total sample count (streaming encoders), so the
    public API fails on exactly the files we must accept.
    """
    import soundfile as sf

    ptr = sf._ffi.cast("float*", out.__array_interface__["data"][0])
    n = sf._snd.sf_readf_float(f._file, ptr, out.shape[0])
    err = sf._snd.sf_error(f._file)
    if err:
        raise sf.LibsndfileError(err, "")
    return out[:n]


def _short(exc: BaseException) -> str:
    msg = str(exc).replace("\n", " ").strip()
    # libsndfile repeats the file object repr; keep the informative tail
    if "Error : " in msg:
        msg = msg.split("Error : ", 1)[1]
    elif ": " in msg and "<_io." in msg:
        msg = msg.rsplit(": ", 1)[1]
    return msg[:120] or type(exc).__name__


def read_audio(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_decoded_bytes: int | None = None,
) -> Audio:
    """Read a WAV/FLAC/Ogg (path or raw bytes) into a 16 kHz mono float32 :class:`Audio`.

    Raises UnreadableAudioError (missing, garbage, truncated), EmptyAudioError, TooLongError
    (over max_seconds, max_bytes or the decoded-size budget) or AudioError (sample rate /
    channels out of range). max_decoded_bytes (frames x channels x 4) defaults to 64 MiB.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
        if len(data) > max_bytes:
            raise TooLongError(f"{name}: payload is {len(data)} bytes, over the {max_bytes} byte limit")
    else:
        path = os.fspath(source)
        name = name or path
        try:
            size = os.path.getsize(path)
            if size > max_bytes:
                raise TooLongError(f"{name}: file is {size} bytes, over the {max_bytes} byte limit")
            with open(path, "rb") as fh:  # read(n) preallocates n bytes: ask for the size, not the limit
                data = fh.read(size + 1 if size > 0 else max_bytes + 1)
            if len(data) > max_bytes:
                raise TooLongError(f"{name}: file is over the {max_bytes} byte limit")
        except FileNotFoundError:
            raise UnreadableAudioError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise UnreadableAudioError(f"{name}: is a directory") from None
        except OSError as exc:
            raise UnreadableAudioError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    if len(data) == 0:
        raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    _check_riff(data, name)
    budget = _default_budget(max_seconds) if max_decoded_bytes is None else max_decoded_bytes
    audio = _decode(data, name, max_seconds, budget)
    log.debug("read %s: %d Hz x%d -> %.2f s", name, audio.source_rate, audio.source_channels, audio.duration_s)
    return audio


def audio_from_array(
    samples: np.ndarray,
    rate: int,
    name: str = "<array>",
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> Audio:
    """Same mono/resample/limits as read_audio for in-memory samples (microphone path).

    ``samples`` is (frames,) or (frames, channels); integer dtypes are scaled to [-1, 1].
    """
    x = np.asarray(samples)
    if x.ndim not in (1, 2):
        raise AudioError(f"{name}: samples must be 1-D or (frames, channels), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        offset = half if np.issubdtype(x.dtype, np.unsignedinteger) else 0.0
        x = (x.astype(np.float64) - offset) / half
    elif not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{name}: unsupported sample dtype {x.dtype}")
    channels = 1 if x.ndim == 1 else x.shape[1]
    budget = _default_budget(max_seconds)
    _limits_check(x.shape[0], int(rate), channels, name, max_seconds, budget)
    mixer = _Mixer(int(rate), channels, x.shape[0], name, max_seconds, budget)
    for i in range(0, max(x.shape[0], 1), _BLOCK):
        mixer.add(x[i : i + _BLOCK])
    return mixer.finish()
