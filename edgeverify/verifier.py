"""The core: audio -> VAD speech check -> embedding -> cosine score -> decision. No I/O beyond the model."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .audio import TARGET_RATE, Audio
from .embedder import Embedder
from .errors import NoSpeechError, TooShortError
from .model_store import load_manifest, resolve_model
from .vad import DEFAULT_VAD_MODE, VAD_MODES, VadConfig, keep_segments, speech_segments

# What the VAD does before embedding:
#   check  the clip must hold at least min_speech_s of speech (else NoSpeechError / TooShortError), and
#          the model sees the whole clip: ECAPA's attentive pooling already down-weights silence, and
#          cutting pauses out measurably raised EER on the shared sets (README "VAD"). Default.
#   trim   as check, but only the speech segments (pauses > min_gap_ms removed) go to the model.
#   off    no VAD at all: any clip of at least min_speech_s is embedded as it is.
# Only removes what is clearly not speech: pauses longer than min_gap_ms, with generous padding.
EMBEDDING_VAD = VadConfig(min_gap_ms=600.0, pad_ms=200.0)

log = logging.getLogger(__name__)

MIN_SPEECH_S = 1.0
# Longer speech is cropped (not rejected): beyond ~20 s an ECAPA embedding no longer improves, and the
# cost grows linearly. Clips themselves are limited in audio.read_audio (max_seconds).
MAX_EMBED_S = 20.0


@dataclass(frozen=True)
class Decision:
    same_speaker: bool
    score: float
    threshold: float


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0


class Verifier:
    """Holds one loaded model; every request reuses it (never reloaded per request)."""

    def __init__(
        self,
        embedder: Embedder,
        threshold: Optional[float] = None,
        vad_mode: str = DEFAULT_VAD_MODE,
        model_name: str = "int8",
        min_speech_s: float = MIN_SPEECH_S,
        max_embed_s: float = MAX_EMBED_S,
        vad_config: Optional["VadConfig"] = None,
    ) -> None:
        self.embedder = embedder
        self.vad_config = vad_config or EMBEDDING_VAD
        self.model_name = model_name
        if vad_mode not in VAD_MODES:
            raise ValueError(f"vad_mode must be one of {', '.join(VAD_MODES)}, got {vad_mode!r}")
        self.vad_mode = vad_mode
        self.min_speech_s = min_speech_s
        self.max_embed_s = max_embed_s
        if threshold is None:
            threshold = embedder.default_threshold
        if threshold is None or math.isnan(threshold):
            threshold = float(load_manifest()["default_threshold"][model_name if model_name in ("int8", "fp32") else "int8"])
        self.threshold = float(threshold)

    @classmethod
    def load(
        cls,
        model: str = "int8",
        threads: int = 1,
        threshold: Optional[float] = None,
        vad_mode: str = DEFAULT_VAD_MODE,
    ) -> "Verifier":
        started = time.perf_counter()
        embedder = Embedder(resolve_model(model), threads=threads)
        log.info("loaded %s model %s in %.0f ms", model, embedder.path, 1000 * (time.perf_counter() - started))
        return cls(embedder, threshold=threshold, vad_mode=vad_mode, model_name=model)

    def speech(self, audio: Audio) -> np.ndarray:
        """The samples the model will see: checked for speech (per vad_mode), cropped to max_embed_s."""
        samples = audio.samples
        seconds = samples.size / TARGET_RATE
        what = "audio"
        if self.vad_mode != "off":
            segments = speech_segments(samples, TARGET_RATE, self.vad_config)
            if not segments:
                raise NoSpeechError(f"{audio.name}: no speech found (silence or noise only)")
            seconds, what = sum(end - start for start, end in segments) / TARGET_RATE, "speech"
            if self.vad_mode == "trim":
                samples = keep_segments(samples, segments, self.vad_config)
            elif samples.size > self.max_embed_s * TARGET_RATE:
                samples = samples[segments[0][0] :]  # a long clip is cropped from where speech starts
        if seconds < self.min_speech_s:
            raise TooShortError(
                f"{audio.name}: only {seconds:.2f} s of {what}; at least {self.min_speech_s:.1f} s is needed"
            )
        return samples[: int(self.max_embed_s * TARGET_RATE)]

    def embed(self, audio: Audio) -> np.ndarray:
        return self.embedder.embed(self.speech(audio))

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)

    def decide(self, score: float, threshold: Optional[float] = None) -> Decision:
        limit = self.threshold if threshold is None else float(threshold)
        return Decision(same_speaker=bool(score >= limit), score=float(score), threshold=limit)

    def verify(self, a: Audio, b: Audio, threshold: Optional[float] = None) -> Decision:
        return self.decide(self.score(self.embed(a), self.embed(b)), threshold)

    def warm_up(self) -> None:
        """One inference on synthetic input so the first real request does not pay for allocations."""
        rng = np.random.default_rng(0)
        self.embedder.embed((0.05 * rng.standard_normal(2 * TARGET_RATE)).astype(np.float32))
