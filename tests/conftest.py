"""Shared fixtures: where the real recordings live, and a tiny clip synthesiser/writer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _speech_dir() -> Path:
    return Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", REPO_ROOT.parent / "shared" / "data" / "speech"))


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """Root of the real-speech evaluation data (dev/, dev8k/, native8k/); skips if absent."""
    d = _speech_dir()
    if not (d / "dev").is_dir():
        pytest.skip(f"speech data not found at {d} (set EDGEVERIFY_SPEECH_DIR)")
    return d


def synth_signal(
    duration_s: float = 1.0,
    rate: int = 16000,
    bursts: list[tuple[float, float]] | None = None,
    freq: float = 220.0,
    level: float = 0.3,
    noise: float = 0.0,
    channels: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Harmonic tone bursts (voice-like: fundamental + harmonics, slow AM) over optional white noise.

    bursts: (start_s, end_s) of "speech"; None means one burst covering the whole clip.
    Returns float32 (frames,) or (frames, channels) with the same signal on every channel.
    """
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * rate))
    t = np.arange(n) / rate
    voice = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6) if freq * k < rate / 2)
    voice = voice * (0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)) * level / 1.5
    gate = np.zeros(n)
    for s, e in bursts if bursts is not None else [(0.0, duration_s)]:
        gate[int(s * rate) : int(e * rate)] = 1.0
    x = voice * gate + noise * rng.standard_normal(n)
    x = x.astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


@pytest.fixture
def synth() -> Callable[..., np.ndarray]:
    """The synth_signal function (see its docstring)."""
    return synth_signal


@pytest.fixture
def write_clip(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write_clip(samples, rate, name="clip.wav", **soundfile_kwargs) -> Path in tmp_path."""
    import soundfile as sf

    def _write(samples: np.ndarray, rate: int, name: str = "clip.wav", **kwargs) -> Path:
        path = tmp_path / name
        sf.write(str(path), samples, rate, **kwargs)
        return path

    return _write


def _model_file(variant: str, precision: Optional[str] = None) -> Path:
    """The built model (`variant`: a precision alone = the default model, or a model name with
    `precision`), or skip -- but fail when EDGEVERIFY_REQUIRE_MODEL=1 (tests/run.sh sets it: CI must never
    silently skip the model tests because the build step broke)."""
    from edgeverify.errors import ModelError
    from edgeverify.core.model_store import resolve_model

    try:
        return resolve_model(variant) if precision is None else resolve_model(variant, precision)
    except ModelError as exc:
        if os.environ.get("EDGEVERIFY_REQUIRE_MODEL") == "1":
            pytest.fail(f"{variant} {precision or ''} model required but missing: {exc.message}")
        pytest.skip(exc.message)


@pytest.fixture(scope="session")
def built_model() -> Callable[[str, str], Path]:
    """built_model(name, precision): that model's file whatever the default is, or skip/fail as above."""
    return _model_file


@pytest.fixture(scope="session")
def int8_model() -> Path:
    return _model_file("int8")


@pytest.fixture(scope="session")
def fp32_model() -> Path:
    return _model_file("fp32")


@pytest.fixture(scope="session")
def int8_verifier(int8_model: Path):
    """One loaded int8 Verifier with the product defaults (VAD on, calibrated threshold)."""
    from edgeverify.core.verifier import Verifier

    return Verifier.load(str(int8_model))


@pytest.fixture
def hub(broker):  # noqa: ANN001 -- `broker` is the requesting module's own (module-scoped) broker fixture
    """An MQTT client of the test module's broker (tests/broker.py Hub), closed after the test."""
    from broker import Hub  # tests/ is on sys.path for every module that has a broker fixture

    h = Hub(broker.port)
    yield h
    h.close()


@pytest.fixture
def mqtt_adapter():
    """Factory: mqtt_adapter(config, decision_service) -> (MqttService, run) wired as the daemon wires it,
    with run(stop_event) the model worker's loop (run it on a thread; it returns once stop_event is set)."""
    from edgeverify.app.counters import Counters
    from edgeverify.app.sinks import DecisionSinks
    from edgeverify.app.worker import ModelWorker
    from edgeverify.mqtt.service import MqttService

    def build(config, service):  # noqa: ANN001, ANN202
        counters = Counters()
        sinks = DecisionSinks(counters)
        worker = ModelWorker(config.limits.queue_size, config.limits.queue_per_requester)
        mqtt = MqttService(config, service, worker, counters, sinks)
        sinks.add(mqtt.ha)
        return mqtt, lambda stop: worker.run(stop.is_set, mqtt.tick, 0.1)

    return build


# -- an end-to-end daemon (tests/daemon_process.py) and what it needs; module-scoped: one per test module


@pytest.fixture(scope="module")
def broker():  # noqa: ANN201
    """A real mosquitto on loopback (tests/broker.py) for the module's tests."""
    from broker import Broker

    with Broker() as b:
        yield b


@pytest.fixture(scope="module")
def clips(speech_dir: Path) -> dict[str, list[Path]]:
    """Real recordings of three speakers (two are enrolled in state_dir)."""
    d = speech_dir / "dev"
    return {s: sorted((d / s).glob("*.wav")) for s in ("vctk-p225", "vctk-p226", "ls-533")}


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory, int8_verifier, clips: dict[str, list[Path]]) -> Path:  # noqa: ANN001
    """A profile directory with alice (vctk-p225) and bob (vctk-p226) enrolled from 3 clips each."""
    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore

    root = tmp_path_factory.mktemp("state")
    store = ProfileStore(root)
    for name, spk in (("alice", "vctk-p225"), ("bob", "vctk-p226")):
        store.enroll(name, [int8_verifier.embed(read_audio(p)) for p in clips[spk][:3]], model=int8_verifier.model)
    return root


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, broker, int8_model: Path, state_dir: Path):  # noqa: ANN001, ANN201
    """`edgeverify run` as device dev1 against the module's broker, with alice and bob enrolled."""
    from daemon_process import DaemonProcess

    d = DaemonProcess(tmp_path_factory.mktemp("daemon"), broker.port, int8_model, state_dir, "dev1")
    yield d
    d.stop()


