"""Live capture: PortAudio input stream -> bounded queue -> utterance cutter -> callback, all in memory.

The PortAudio callback runs on a real-time audio thread, so it only copies the block into a bounded
queue (never blocks, counts what it had to drop); a consumer thread does the VAD and hands finished
utterances (always float32 mono 16 kHz) to the caller. Nothing is written to disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from ..core.audio import TARGET_RATE, resample
from ..errors import ConfigError, MicrophoneError, NoSpeechError
from ..core.vad import UtteranceCutter, VadConfig

log = logging.getLogger(__name__)

SUPPORTED_RATES = (16000, 8000)
Device = Union[str, int, None]


def _sounddevice() -> Any:
    """Import sounddevice lazily; turn 'PortAudio missing' into a clear MicrophoneError."""
    try:
        import sounddevice  # noqa: PLC0415 -- loads libportaudio at import time
    except OSError as exc:  # raised by sounddevice when libportaudio cannot be loaded
        raise MicrophoneError(
            f"PortAudio library not found ({exc}); install it: apt-get install libportaudio2"
        ) from exc
    except ImportError as exc:
        raise MicrophoneError(f"python package 'sounddevice' is not installed ({exc}); pip install sounddevice") from exc
    return sounddevice


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    max_input_channels: int
    default_samplerate: float
    hostapi: str
    is_default: bool


def list_input_devices() -> list[InputDevice]:
    """Every PortAudio device that can record (max_input_channels > 0)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
    except Exception as exc:  # PortAudioError when PortAudio cannot initialise
        raise MicrophoneError(f"cannot list audio devices: {exc}") from exc
    try:
        default_in = int(sd.default.device[0])
    except Exception:
        default_in = -1
    out = []
    for i, d in enumerate(devices):
        if int(d["max_input_channels"]) <= 0:
            continue
        api = apis[d["hostapi"]]["name"] if 0 <= d["hostapi"] < len(apis) else "?"
        out.append(
            InputDevice(i, d["name"], int(d["max_input_channels"]), float(d["default_samplerate"]), api, i == default_in)
        )
    return out


def resolve_device(device: Device) -> int:
    """Index of the input device: None = system default, int (or digit string) = index, str = name substring.

    A name matches case-insensitively; an exact name wins over substrings; several substring matches
    are an error (say which), so a config never silently picks the wrong microphone.
    """
    inputs = list_input_devices()
    described = ", ".join(f"[{d.index}] {d.name}" for d in inputs) or "none"
    if isinstance(device, str) and device.strip().lstrip("-").isdigit():
        device = int(device.strip())
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "default")):
        for d in inputs:
            if d.is_default:
                return d.index
        if inputs:
            return inputs[0].index
        raise MicrophoneError("no audio input device found (is a microphone connected? user in group 'audio'?)")
    if isinstance(device, int):
        for d in inputs:
            if d.index == device:
                return d.index
        raise MicrophoneError(f"audio input device index {device} does not exist; input devices: {described}")
    want = device.strip().lower()
    exact = [d for d in inputs if d.name.lower() == want]
    if exact:
        return exact[0].index
    matches = [d for d in inputs if want in d.name.lower()]
    if len(matches) == 1:
        return matches[0].index
    if not matches:
        raise MicrophoneError(f"no audio input device matches {device!r}; input devices: {described}")
    names = ", ".join(f"[{d.index}] {d.name}" for d in matches)
    raise MicrophoneError(f"audio device name {device!r} is ambiguous ({names}); use a longer name or the index")


class _Waiter:
    """A caller of capture_*() waiting for the next N utterances or the next N samples."""

    def __init__(self, utterances: int = 0, samples: int = 0) -> None:
        self.want_utterances = utterances
        self.want_samples = samples
        self.utterances: list[np.ndarray] = []
        self.blocks: list[np.ndarray] = []
        self.have_samples = 0
        self.done = threading.Event()


class MicrophoneListener:
    """Continuous capture from one input device; calls on_utterance(samples16k) from a worker thread."""

    def __init__(
        self,
        device: Device,
        sample_rate: int = TARGET_RATE,
        on_utterance: Optional[Callable[[np.ndarray], None]] = None,
        vad_config: Optional[VadConfig] = None,
        pre_roll_s: float = 0.3,
        min_utterance_s: float = 1.0,
        max_utterance_s: float = 8.0,
        block_ms: int = 20,
        queue_s: float = 2.0,
    ) -> None:
        if int(sample_rate) not in SUPPORTED_RATES:
            raise ConfigError(f"microphone sample_rate must be one of {SUPPORTED_RATES}, got {sample_rate}")
        if not 5 <= int(block_ms) <= 500:
            raise ConfigError(f"microphone block_ms must be within 5..500, got {block_ms}")
        self.device = device
        self.sample_rate = int(sample_rate)
        self.on_utterance = on_utterance
        self.block_frames = self.sample_rate * int(block_ms) // 1000
        self._cutter = UtteranceCutter(
            self.sample_rate, vad_config or VadConfig(), pre_roll_s, min_utterance_s, max_utterance_s
        )
        self._queue: queue.Queue[Optional[np.ndarray]] = queue.Queue(
            maxsize=max(4, int(queue_s * 1000 / int(block_ms)))
        )
        self._stream: Any = None
        self._thread: Optional[threading.Thread] = None
        self._waiters: list[_Waiter] = []
        self._lock = threading.Lock()
        self._stop_flush = False
        self.device_index: Optional[int] = None
        self.device_name: Optional[str] = None
        # counters (read by health/status reporting)
        self.blocks = 0
        self.overflows = 0  # blocks dropped because the consumer fell behind
        self.input_overflows = 0  # PortAudio reported lost input (device-side overrun)
        self.utterances = 0
        self.stream_error: Optional[str] = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """Stream still delivering (False after a USB microphone was unplugged, for example)."""
        return self.running and self.stream_error is None and bool(self._stream is not None and self._stream.active)

    def start(self) -> "MicrophoneListener":
        if self.running:
            return self
        sd = _sounddevice()
        index = resolve_device(self.device)
        try:
            sd.check_input_settings(device=index, channels=1, dtype="float32", samplerate=self.sample_rate)
        except Exception as exc:
            raise MicrophoneError(
                f"input device [{index}] cannot record mono float32 at {self.sample_rate} Hz ({exc}); "
                "a raw 'hw:' device often supports only 44.1/48 kHz -- use 'default', 'pulse' or a 'plughw:' device"
            ) from exc
        self.device_index = index
        self.device_name = str(sd.query_devices(index)["name"])
        self._cutter.reset()
        self._drain()
        self.stream_error = None
        self._stop_flush = False
        try:
            self._stream = sd.InputStream(
                device=index,
                samplerate=self.sample_rate,
                channels=1,
                dtype="float32",
                blocksize=self.block_frames,
                callback=self._callback,
                finished_callback=self._finished,
            )
        except Exception as exc:
            raise MicrophoneError(f"cannot open input device [{index}] {self.device_name}: {exc}") from exc
        self._thread = threading.Thread(target=self._consume, name="edgeverify-mic", daemon=True)
        self._thread.start()
        try:
            self._stream.start()
        except Exception as exc:
            self._shutdown_thread()
            self._stream.close()
            self._stream = None
            raise MicrophoneError(f"cannot start input device [{index}] {self.device_name}: {exc}") from exc
        log.info("microphone [%d] %s: %d Hz, %d-frame blocks", index, self.device_name, self.sample_rate, self.block_frames)
        return self

    def stop(self, flush: bool = False) -> None:
        """Stop capturing; flush=True delivers an utterance still in progress."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception as exc:  # device already gone: nothing left to release
                log.debug("closing input stream: %s", exc)
        self._stop_flush = flush
        self._shutdown_thread()
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.done.set()
        if self.overflows or self.input_overflows:
            log.warning("microphone: %d blocks dropped (consumer behind), %d input overruns", self.overflows, self.input_overflows)

    def __enter__(self) -> "MicrophoneListener":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one-shot captures (while running, or on a temporary start) ------------------------------------

    def capture_utterances(self, count: int = 1, timeout: float = 10.0) -> list[np.ndarray]:
        """The next `count` utterances (16 kHz float32), diverted from on_utterance; enrollment uses this.

        Raises NoSpeechError when fewer than `count` were heard within `timeout` seconds.
        """
        if count < 1:
            raise ConfigError("capture count must be >= 1")
        w = _Waiter(utterances=count)
        self._wait(w, timeout)
        if len(w.utterances) < count:
            raise NoSpeechError(f"heard {len(w.utterances)} of {count} utterance(s) within {timeout:g} s")
        return w.utterances

    def capture_seconds(self, seconds: float, timeout: Optional[float] = None) -> np.ndarray:
        """The next `seconds` of raw audio (16 kHz float32), no VAD."""
        if seconds <= 0:
            raise ConfigError("capture seconds must be > 0")
        w = _Waiter(samples=int(round(seconds * self.sample_rate)))
        self._wait(w, timeout if timeout is not None else seconds + 5.0)
        if w.have_samples < w.want_samples:
            raise MicrophoneError(f"microphone delivered {w.have_samples / self.sample_rate:.2f} s of {seconds:g} s")
        return self._to_target(np.concatenate(w.blocks)[: w.want_samples])

    def capture_once(self, seconds: Optional[float] = None, timeout: float = 10.0) -> np.ndarray:
        """'Start a capture now': a fixed `seconds` of audio, or (seconds=None) the next utterance."""
        if seconds is not None:
            return self.capture_seconds(seconds, timeout=max(timeout, seconds + 1.0))
        return self.capture_utterances(1, timeout)[0]

    def _wait(self, w: _Waiter, timeout: float) -> None:
        temporary = not self.running
        if temporary:
            self.start()
        with self._lock:
            self._waiters.append(w)
        try:
            w.done.wait(timeout)
        finally:
            with self._lock:
                if w in self._waiters:
                    self._waiters.remove(w)
            if temporary:
                self.stop()
        if self.stream_error and not w.done.is_set():
            raise MicrophoneError(f"microphone stream failed: {self.stream_error}")

    # -- threads -----------------------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio thread: copy and enqueue, nothing else (no locks, no allocation beyond the copy)."""
        if status and status.input_overflow:
            self.input_overflows += 1
        try:
            self._queue.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.overflows += 1

    def _finished(self) -> None:
        if self._stream is not None:  # stopped by PortAudio, not by stop()
            self.stream_error = "input stream ended unexpectedly (device removed?)"
            log.error("microphone %s: %s", self.device_name, self.stream_error)
        self._queue_put_sentinel()

    def _queue_put_sentinel(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass  # consumer is busy; it polls the stream state via its timeout

    def _shutdown_thread(self) -> None:
        t, self._thread = self._thread, None
        if t is None:
            return
        self._queue_put_sentinel()
        t.join(timeout=5.0)
        if t.is_alive():
            log.error("microphone consumer thread did not stop within 5 s")

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _consume(self) -> None:
        me = threading.current_thread()
        while True:
            try:
                block = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._thread is not me:
                    break
                continue
            if block is None:
                if self._thread is not me or self.stream_error:
                    # process whatever was captured before the stop, then finish
                    self._drain_into_cutter()
                    break
                continue
            self._process(block)
        if self._stop_flush:
            for utt in self._cutter.flush():
                self._deliver(utt)

    def _drain_into_cutter(self) -> None:
        while True:
            try:
                block = self._queue.get_nowait()
            except queue.Empty:
                return
            if block is not None:
                self._process(block)

    def _process(self, block: np.ndarray) -> None:
        self.blocks += 1
        if self._waiters:
            with self._lock:
                for w in self._waiters:
                    if w.want_samples and not w.done.is_set():
                        w.blocks.append(block)
                        w.have_samples += block.size
                        if w.have_samples >= w.want_samples:
                            w.done.set()
        for utt in self._cutter.push(block):
            self._deliver(utt)

    def _deliver(self, utt: np.ndarray) -> None:
        self.utterances += 1
        samples = self._to_target(utt)
        with self._lock:
            for w in self._waiters:
                if w.want_utterances and not w.done.is_set():
                    w.utterances.append(samples)
                    if len(w.utterances) >= w.want_utterances:
                        w.done.set()
                    return
        log.debug("utterance: %.2f s", samples.size / TARGET_RATE)
        if self.on_utterance is None:
            return
        try:
            self.on_utterance(samples)
        except Exception:  # a failing handler must not kill the capture thread
            log.exception("on_utterance handler failed")

    def _to_target(self, x: np.ndarray) -> np.ndarray:
        if self.sample_rate != TARGET_RATE:
            x = resample(x, self.sample_rate, TARGET_RATE)
        return np.ascontiguousarray(x, dtype=np.float32)


def capture_once(
    device: Device = None,
    sample_rate: int = TARGET_RATE,
    seconds: Optional[float] = None,
    timeout: float = 10.0,
    vad_config: Optional[VadConfig] = None,
    min_utterance_s: float = 1.0,
    max_utterance_s: float = 8.0,
) -> np.ndarray:
    """Open the device, take `seconds` of audio (or the next utterance), close it. Returns 16 kHz float32."""
    listener = MicrophoneListener(
        device, sample_rate, None, vad_config, min_utterance_s=min_utterance_s, max_utterance_s=max_utterance_s
    )
    return listener.capture_once(seconds=seconds, timeout=timeout)

