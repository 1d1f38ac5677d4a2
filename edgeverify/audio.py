"""Audio input: decode WAV/FLAC (any libsndfile format) from a path or bytes into 16 kHz mono float32.

Everything that reaches the model goes through here, so this is where untrusted input is
bounded (bytes, seconds, sample rate, channels) and turned into specific, one-line errors.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import AudioError, EmptyAudioError, TooLongError, UnreadableAudioError

__all__ = [
    "TARGET_RATE",
    "MIN_RATE",
    "MAX_RATE",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_MAX_BYTES",
    "Audio",
    "read_audio",
    "audio_from_array",
    "resample",
]

log = logging.getLogger(__name__)

TARGET_RATE = 16000
MIN_RATE = 4000
MAX_RATE = 192000
MAX_CHANNELS = 32
DEFAULT_MAX_SECONDS = 60.0
DEFAULT_MAX_BYTES = 50_000_000
_BLOCK = 65536  # frames per decode step; bounded memory even for FLAC with unknown length

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


def resample(x: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    """Polyphase resampling (scipy resample_poly, as used for the reference embeddings)."""
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(int(target), int(rate))
    return resample_poly(x, target // g, rate // g)


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


def _limits_check(frames: float, rate: int, channels: int, name: str, max_seconds: float) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{name}: unsupported sample rate {rate} Hz (allowed {MIN_RATE}..{MAX_RATE} Hz)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{name}: unsupported channel count {channels}")
    if frames / rate > max_seconds:
        raise TooLongError(f"{name}: audio is {frames / rate:.1f} s, longer than the {max_seconds:g} s limit")


def _decode(data: bytes, name: str, max_seconds: float) -> tuple[np.ndarray, int, int]:
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, struct.error, EOFError) as exc:
        raise UnreadableAudioError(f"{name}: not a readable audio file ({_short(exc)})") from None
    with f:
        rate, channels = int(f.samplerate), int(f.channels)
        known = 0 <= f.frames < 2**62  # FLAC from streaming encoders reports SF_COUNT_MAX
        _limits_check(f.frames if known else 0, rate, channels, name, max_seconds)
        cap = int(max_seconds * rate) + 1
        blocks: list[np.ndarray] = []
        total = 0
        try:
            while True:
                blk = _read_block(f, channels)
                if blk.shape[0] == 0:
                    break
                blocks.append(blk)
                total += blk.shape[0]
                if total > cap:
                    raise TooLongError(f"{name}: audio is longer than the {max_seconds:g} s limit")
        except (sf.LibsndfileError, RuntimeError, ValueError, struct.error) as exc:
            raise UnreadableAudioError(f"{name}: truncated or corrupt audio ({_short(exc)})") from None
        if known and total < f.frames:
            raise UnreadableAudioError(
                f"{name}: truncated audio: header declares {f.frames} frames, only {total} decoded"
            )
    x = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return x, rate, channels


def _read_block(f, channels: int) -> np.ndarray:
    """Read up to _BLOCK frames via sf_readf_float directly.

    SoundFile.read() calls tell()/seek() around every read, and libsndfile cannot seek in a
    FLAC stream whose STREAMINFO has no total sample count (streaming encoders), so the
    public API fails on exactly the files we must accept.
    """
    import soundfile as sf

    out = np.empty((_BLOCK, channels), dtype=np.float32)
    ptr = sf._ffi.cast("float*", out.__array_interface__["data"][0])
    n = sf._snd.sf_readf_float(f._file, ptr, _BLOCK)
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


def _finish(x: np.ndarray, rate: int, channels: int, name: str) -> Audio:
    """Mono mix, sanitise, resample, float32 -- shared by the file and the array path."""
    mono = x.mean(axis=1, dtype=np.float64) if x.ndim == 2 else x.astype(np.float64)
    if mono.size == 0:
        raise EmptyAudioError(f"{name}: audio contains no samples")
    if not np.all(np.isfinite(mono)):
        mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    # no clipping after resampling: the polyphase filter may overshoot full scale slightly, and the
    # reference features were computed on the unclipped signal
    out = resample(mono, rate).astype(np.float32)
    if out.size == 0:
        raise EmptyAudioError(f"{name}: audio contains no samples")
    return Audio(samples=out, source_rate=rate, source_channels=channels, name=name)


def read_audio(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Audio:
    """Read a WAV/FLAC (path or raw bytes) into a 16 kHz mono float32 :class:`Audio`.

    Raises UnreadableAudioError (missing, garbage, truncated), EmptyAudioError, TooLongError
    (over max_seconds or max_bytes) or AudioError (sample rate / channels out of range).
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
            with open(path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise UnreadableAudioError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise UnreadableAudioError(f"{name}: is a directory") from None
        except OSError as exc:
            raise UnreadableAudioError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    if len(data) == 0:
        raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    _check_riff(data, name)
    x, rate, channels = _decode(data, name, max_seconds)
    audio = _finish(x, rate, channels, name)
    log.debug("read %s: %d Hz x%d -> %.2f s", name, rate, channels, audio.duration_s)
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
    _limits_check(x.shape[0], int(rate), channels, name, max_seconds)
    return _finish(x, int(rate), channels, name)
