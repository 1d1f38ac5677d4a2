"""What the verifier's VAD modes let through to the model, on a real recording and the real int8 model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeverify.core.audio import TARGET_RATE, Audio, read_audio
from edgeverify.errors import NoSpeechError, TooShortError
from edgeverify.core.verifier import Verifier

CLIP = "vctk-p226/p226_003.wav"


@pytest.fixture(scope="module")
def speech(speech_dir: Path) -> np.ndarray:
    path = speech_dir / "dev" / CLIP
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return read_audio(path).samples


def _verifier(int8_verifier: Verifier, mode: str) -> Verifier:
    return Verifier(int8_verifier.embedder, threshold=int8_verifier.threshold, vad_mode=mode)


def _audio(samples: np.ndarray, name: str = "clip") -> Audio:
    return Audio(samples.astype(np.float32), TARGET_RATE, 1, name)


def test_check_mode_embeds_the_whole_clip_and_trim_cuts_the_pause(int8_verifier: Verifier, speech: np.ndarray) -> None:
    half = speech.size // 2
    pause = np.zeros(3 * TARGET_RATE, np.float32)
    with_pause = np.concatenate([speech[:half], pause, speech[half:]])

    check = _verifier(int8_verifier, "check").speech(_audio(with_pause))
    np.testing.assert_array_equal(check, with_pause)  # default: the model sees everything

    trimmed = _verifier(int8_verifier, "trim").speech(_audio(with_pause))
    assert trimmed.size < with_pause.size - 2 * TARGET_RATE  # the 3 s pause is (mostly) gone
    assert trimmed.size >= speech.size * 0.6


def test_silence_noise_and_too_little_speech_are_refused_unless_vad_is_off(int8_verifier: Verifier, speech: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    noise = (0.02 * rng.standard_normal(3 * TARGET_RATE)).astype(np.float32)
    silence = np.zeros(3 * TARGET_RATE, np.float32)
    burst = np.concatenate([speech[: int(0.5 * TARGET_RATE)], silence])  # 0.5 s of speech in 3.5 s

    for mode in ("check", "trim"):
        verifier = _verifier(int8_verifier, mode)
        with pytest.raises(NoSpeechError, match="no speech"):
            verifier.embed(_audio(silence, "silence.wav"))
        with pytest.raises(NoSpeechError, match="noise.wav: no speech"):
            verifier.embed(_audio(noise, "noise.wav"))
        with pytest.raises(TooShortError, match=r"burst.wav: only 0\.\d+ s of speech"):
            verifier.embed(_audio(burst, "burst.wav"))

    off = _verifier(int8_verifier, "off")
    for clip in (noise, burst):
        assert off.embed(_audio(clip)).shape == (192,)
    with pytest.raises(TooShortError, match="of audio"):
        off.embed(_audio(speech[: TARGET_RATE // 2]))


def test_long_clip_is_cropped_from_the_first_speech(int8_verifier: Verifier, speech: np.ndarray) -> None:
    verifier = Verifier(int8_verifier.embedder, vad_mode="check", max_embed_s=2.0)
    lead = np.zeros(2 * TARGET_RATE, np.float32)
    seen = verifier.speech(_audio(np.concatenate([lead, speech])))
    assert seen.size == 2 * TARGET_RATE
    # starts at most the VAD pad (0.2 s) before the speech, not at the start of the 2 s of digital silence
    leading_zeros = int(np.argmax(seen != 0))
    assert leading_zeros <= 0.25 * TARGET_RATE


def test_unknown_mode_is_refused(int8_verifier: Verifier) -> None:
    with pytest.raises(ValueError, match="vad_mode"):
        Verifier(int8_verifier.embedder, vad_mode="on")
