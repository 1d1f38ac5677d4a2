"""The core: audio -> VAD speech check -> embedding -> score -> decision. No I/O beyond the model files.

Scoring (edgeverify/core/scoring.py): by default the cohort-centred cosine is turned into a calibrated
log-likelihood ratio and compared with an operating point (the EER point, or `target_far`). An explicit
numeric cosine `threshold` (argument, config or request) keeps the 0.1 behaviour: raw cosine >= threshold.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Dict, Optional, Union

import numpy as np

from . import model_store
from .audio import TARGET_RATE, Audio
from .embedder import Embedder
from ..errors import ConfigError, ModelError, NoSpeechError, ProfileModelMismatchError, TooShortError
from .model_identity import ModelIdentity, of_model_file
from .scoring import (DEFAULT_SCORE_MODE, FAR_MIN, SCORE_MODES, Scorer, Side, band_for_rate, check_target_far,
                      cohort_file, load_scorer)
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
    """score is always the raw cosine; threshold is on the llr unless operating_point == "threshold"."""

    same_speaker: bool
    score: float
    threshold: float
    llr: Optional[float] = None
    operating_point: str = "threshold"  # "eer", "far=0.01", or "threshold" (explicit cosine threshold)

    def fields(self) -> dict:
        """The response/JSON fields of a decision (shared by CLI, MQTT handler and eval)."""
        out = {"same_speaker": self.same_speaker, "score": round(self.score, 6), "threshold": round(self.threshold, 6),
               "operating_point": self.operating_point}
        if self.llr is not None:
            out["llr"] = round(self.llr, 4)
        return out


class Prepared(tuple):
    """One side of a trial, ready to score: a clip's or a profile's `embedding` and its cohort `side` (None
    in cosine mode) -- it unpacks as that pair, like the plain tuple it replaces -- plus the `model` the
    embedding came from (None: not known, e.g. a caller's own tuple) and, for a profile, its `name`."""

    model: Optional[ModelIdentity]
    name: Optional[str]

    def __new__(cls, embedding: np.ndarray, side: Optional[Side], model: Optional[ModelIdentity] = None,
                name: Optional[str] = None) -> "Prepared":
        self = super().__new__(cls, (embedding, side))
        self.model, self.name = model, name
        return self

    @property
    def embedding(self) -> np.ndarray:
        return self[0]

    @property
    def side(self) -> Optional[Side]:
        return self[1]

    def __repr__(self) -> str:
        return f"Prepared(model={self.model!r}, name={self.name!r}, side={'yes' if self[1] is not None else 'none'})"


def _model_of(p: tuple) -> Optional[ModelIdentity]:
    return p.model if isinstance(p, Prepared) else None


def mismatch_message(name: str, profile_model: ModelIdentity, model: ModelIdentity) -> str:
    """Why a profile is not scored, and what to do (the CLI, MQTT replies, logs and HA all say this)."""
    return (f"profile {name!r} was enrolled with the {profile_model.name} model and this device uses "
            f"{model.name}: re-enroll {name!r} (or set model: {profile_model.name})")


def _model_file(model: str, precision: Optional[str]):
    """The .onnx file of a model setting, with the model store of either generation: the two-model store
    (resolve_model(name, precision)) or the ECAPA-only one (resolve_model("int8" | "fp32" | path))."""
    if hasattr(model_store, "parse_model"):  # the two-model store (ecapa + campp)
        return model_store.resolve_model(model, precision)
    if model in ("ecapa", "int8", "fp32"):
        if model != "ecapa" and precision is not None and precision != model:
            raise ModelError(f"model {model!r} contradicts precision {precision!r}")
        return model_store.resolve_model(precision or ("int8" if model == "ecapa" else model))
    if model == "campp":
        raise ModelError("the campp model is not part of this build (use ecapa)")
    return model_store.resolve_model(model)


def _manifest_threshold(identity: ModelIdentity) -> float:
    """The model's EER cosine threshold from its manifest (for a model file without one in its metadata)."""
    precision = identity.precision if identity.precision in ("int8", "fp32") else "int8"
    try:
        manifest = model_store.load_manifest(identity.name)  # type: ignore[call-arg]  # two-model store
    except TypeError:  # the ECAPA-only store: one manifest
        manifest = model_store.load_manifest()
    except ModelError:  # a custom model file: ECAPA's manifest, as before
        manifest = model_store.load_manifest()  # type: ignore[call-arg]
    return float(manifest["default_threshold"][precision])


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
        scorer: Optional[Scorer] = None,
        score_mode: Optional[str] = None,  # None: calibrated when a scorer is given, else cosine
        target_far: Optional[float] = None,
        model: Optional[ModelIdentity] = None,
    ) -> None:
        self.embedder = embedder
        # what every embedding of this verifier is stamped with (profiles, trial sides); the embedder's file
        # when not given
        self.model = model or of_model_file(embedder.path, embedder.metadata,
                                            precision=model_name if model_name in ("int8", "fp32") else None)
        self.vad_config = vad_config or EMBEDDING_VAD
        # what answers call the model ("campp-int8"): the same whichever way it was chosen (a name, a
        # precision alone, a path, `model: auto`)
        self.model_name = self.model.key
        if vad_mode not in VAD_MODES:
            raise ValueError(f"vad_mode must be one of {', '.join(VAD_MODES)}, got {vad_mode!r}")
        self.vad_mode = vad_mode
        self.min_speech_s = min_speech_s
        self.max_embed_s = max_embed_s
        if score_mode is None:
            score_mode = DEFAULT_SCORE_MODE if scorer is not None else "cosine"
        if score_mode not in SCORE_MODES:
            raise ConfigError(f"score mode must be one of {', '.join(SCORE_MODES)}, got {score_mode!r}")
        if score_mode != "cosine" and scorer is None:
            raise ConfigError("calibrated scoring needs the cohort file (run `edgeverify model calibrate`)")
        self.scorer = scorer if score_mode != "cosine" else None
        self.score_mode = score_mode
        # an explicit cosine threshold (config/CLI) wins over the calibrated operating point, as in 0.1
        self.fixed_threshold = None if threshold is None else float(threshold)
        self.target_far = None
        if target_far is not None:
            self.target_far = self._check_far(target_far)
        if threshold is None:
            threshold = embedder.default_threshold
        if threshold is None or math.isnan(threshold):
            threshold = _manifest_threshold(self.model)
        self.threshold = float(threshold)

    @classmethod
    def load(
        cls,
        model: str = "int8",
        threads: Union[int, str] = 1,
        threshold: Optional[float] = None,
        vad_mode: str = DEFAULT_VAD_MODE,
        score_mode: str = DEFAULT_SCORE_MODE,
        target_far: Optional[float] = None,
        precision: Optional[str] = None,
    ) -> "Verifier":
        """`model`: a model name ("ecapa", "campp") with `precision` ("int8" default, "fp32"), a precision
        alone (the default model, as before there were two), or a path to an .onnx file."""
        started = time.perf_counter()
        embedder = Embedder(_model_file(model, precision), threads=threads)
        name = model if model in ("ecapa", "campp") else None
        if precision is None and model in ("int8", "fp32"):
            precision = model
        identity = of_model_file(embedder.path, embedder.metadata, name, precision)
        scorer = None
        if score_mode != "cosine":
            variant = identity.precision if identity.precision in ("int8", "fp32") else "int8"
            path = cohort_file(embedder.path, variant)
            if not path.is_file():
                raise ConfigError(f"cohort file {path} not found: run `edgeverify model calibrate`, or use cosine scoring")
            scorer = load_scorer(path, embedder.path, variant)
        log.info("loaded %s model %s (sha256 %s) in %.0f ms", identity.label, embedder.path, (identity.sha256 or "")[:12],
                 1000 * (time.perf_counter() - started))
        return cls(embedder, threshold=threshold, vad_mode=vad_mode, model_name=model, scorer=scorer,
                   score_mode=score_mode, target_far=target_far, model=identity)

    @property
    def operating_point(self) -> str:
        """What decides by default: "threshold=0.357" (cosine), "eer" or "far=0.01" (calibrated llr)."""
        if self.fixed_threshold is not None or self.scorer is None:
            return f"threshold={self.threshold:g}"
        return "eer" if self.target_far is None else f"far={self.target_far:g}"

    def _check_far(self, far: float) -> float:
        if self.scorer is None:
            raise ConfigError("target_far needs calibrated scoring (not --score cosine)")
        try:
            return check_target_far(far)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def speech(self, audio: Audio) -> np.ndarray:
        """The samples the model will see: checked for speech (per vad_mode), cropped to max_embed_s."""
        return self._speech(audio)[0]

    def _speech(self, audio: Audio) -> tuple[np.ndarray, float]:
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
        return samples[: int(self.max_embed_s * TARGET_RATE)], min(seconds, self.max_embed_s)

    def embed(self, audio: Audio) -> np.ndarray:
        return self.embedder.embed(self.speech(audio))

    def embed_with_speech(self, audio: Audio) -> tuple[np.ndarray, float]:
        """Embedding and the seconds of speech it came from (the calibration's quality term)."""
        samples, seconds = self._speech(audio)
        return self.embedder.embed(samples), seconds

    def side(self, embedding: np.ndarray, speech_s: float, source_rate: int = TARGET_RATE) -> Optional[Side]:
        """A trial side prepared for calibrated scoring (None in cosine mode)."""
        return None if self.scorer is None else self.scorer.side(embedding, speech_s, band_for_rate(source_rate))

    def prepare(self, audio: Audio) -> Prepared:
        e, seconds = self.embed_with_speech(audio)
        return Prepared(e, self.side(e, seconds, audio.source_rate), self.model)

    def scores_against(self, p: tuple) -> bool:
        """Whether a prepared side (a profile's) can be scored by this verifier: its model is this one's
        (by name; a side of unknown model is taken as this model's, as callers' own tuples are)."""
        other = _model_of(p)
        return other is None or other.same_model(self.model)

    def other_model(self, candidates: Dict[str, tuple]) -> Dict[str, ModelIdentity]:
        """The candidates that were enrolled with another model (never scored: identify skips them)."""
        return {n: m for n, c in candidates.items() if (m := _model_of(c)) is not None and not m.same_model(self.model)}

    def _check_models(self, *sides: tuple) -> None:
        for p in sides:
            if not self.scores_against(p):
                other = _model_of(p)
                assert other is not None
                name = p.name if isinstance(p, Prepared) and p.name else "this profile"
                raise ProfileModelMismatchError(mismatch_message(name, other, self.model))

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        return cosine(a, b)

    def decide(self, score: float, threshold: Optional[float] = None) -> Decision:
        """Plain cosine decision (explicit threshold, else the config's, else the model's EER threshold)."""
        if threshold is None:
            threshold = self.fixed_threshold
        limit = self.threshold if threshold is None else float(threshold)
        point = "threshold" if threshold is not None or self.scorer is not None else "eer"
        return Decision(same_speaker=bool(score >= limit), score=float(score), threshold=limit, operating_point=point)

    def decide_sides(
        self,
        a: Prepared,
        b: Prepared,
        threshold: Optional[float] = None,
        target_far: Optional[float] = None,
    ) -> Decision:
        """Decide one trial. Precedence: request threshold, request target_far, config threshold, config
        target_far, the EER point. Without a scorer (cosine mode) only thresholds apply.
        ProfileModelMismatchError when a side was embedded by another model (never a silent score)."""
        self._check_models(a, b)
        cos = cosine(a[0], b[0])
        if threshold is not None or self.scorer is None or a[1] is None or b[1] is None:
            if target_far is not None and threshold is None:
                self._check_far(target_far)
            return self.decide(cos, threshold)
        if target_far is None and self.fixed_threshold is not None:
            return self.decide(cos, self.fixed_threshold)
        far = self._check_far(target_far) if target_far is not None else self.target_far
        trial = self.scorer.score(a[1], b[1])
        limit = self.scorer.llr_threshold(trial.band, far)
        return Decision(same_speaker=bool(trial.llr >= limit), score=cos, threshold=limit, llr=trial.llr,
                        operating_point="eer" if far is None else f"far={far:g}")

    def identify(
        self,
        test: Prepared,
        candidates: Dict[str, Prepared],
        threshold: Optional[float] = None,
        target_far: Optional[float] = None,
    ) -> tuple[Optional[str], Optional[Decision], Dict[str, float]]:
        """Open-set identification: the best-scoring candidate if its decision accepts, else None.
        Returns (name or None, the best candidate's decision, every candidate's cosine). With a target_far
        (request or config) it is the open-set false-alarm rate: a stranger named as anyone.
        Candidates enrolled with another model are skipped (`other_model` names them)."""
        self._check_models(test)
        candidates = {n: c for n, c in candidates.items() if self.scores_against(c)}
        if not candidates:
            return None, None, {}
        far = target_far if target_far is not None else (self.target_far if self.fixed_threshold is None else None)
        per_profile = None
        if far is not None and threshold is None and self.scorer is not None:
            # target_far is the chance that a stranger is named as anyone: each of N profiles gets
            # 1 - (1 - F)^(1/N) (clamped to the calibrated range), else N profiles multiply it by ~N
            far = self._check_far(far)
            per_profile = max(FAR_MIN, 1.0 - (1.0 - far) ** (1.0 / len(candidates)))
        decisions = {name: self.decide_sides(test, c, threshold, per_profile) for name, c in candidates.items()}
        if per_profile is not None:
            decisions = {n: replace(d, operating_point=f"far={far:g}") for n, d in decisions.items()}
        best = max(decisions, key=lambda n: decisions[n].score if decisions[n].llr is None else decisions[n].llr)
        d = decisions[best]
        return (best if d.same_speaker else None), d, {n: x.score for n, x in decisions.items()}

    def verify(self, a: Audio, b: Audio, threshold: Optional[float] = None, target_far: Optional[float] = None) -> Decision:
        return self.decide_sides(self.prepare(a), self.prepare(b), threshold, target_far)

    def warm_up(self) -> None:
        """One inference on synthetic input so the first real request does not pay for allocations."""
        rng = np.random.default_rng(0)
        self.embedder.embed((0.05 * rng.standard_normal(2 * TARGET_RATE)).astype(np.float32))
