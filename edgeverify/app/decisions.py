"""The decision service every source calls: MQTT requests, microphone utterances, Wyoming, admin.

It turns a request (or live samples) into calls on the core -- read the audio, embed, score against the
profiles, decide -- and answers with a protocol.Response or a result dict. It knows no transport: the
adapters (mqtt, microphone, wyoming_stt) call it, and the daemon (or a CLI command) builds it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Protocol

import numpy as np

from ..core.audio import TARGET_RATE, Audio, audio_from_array, read_audio
from ..core.scoring import band_for_rate
from ..core.verifier import Verifier
from ..errors import AudioError, ProfileError, RequestError
from ..store.profiles import ProfileStore, check_clipping
from .inbox import Inbox, Unrecognised
from .protocol import Clip, Request, Response

log = logging.getLogger(__name__)


class Microphone(Protocol):
    """What the service needs of a live microphone (microphone.listener.MicrophoneListener is one)."""

    def capture_once(self, seconds: Optional[float] = None) -> np.ndarray: ...

    def capture_utterances(self, count: int, timeout: float) -> list[np.ndarray]: ...


class DecisionService:
    def __init__(
        self,
        verifier: Verifier,
        store: ProfileStore,
        max_audio_seconds: float = 60.0,
        mic_profile: Optional[str] = None,
        mic_rate: int = TARGET_RATE,
        identify_scores: bool = False,
    ) -> None:
        self.verifier = verifier
        self.store = store
        self.max_audio_seconds = max_audio_seconds
        self.microphone: Optional[Microphone] = None  # attach_microphone(): capture requests, enrolling by voice
        self.mic_profile = mic_profile  # microphone.mode verify:<profile> (parsed once, by the config); None: identify
        self.mic_rate = mic_rate  # the microphone's capture rate: 8 kHz captures are scored as telephone band
        # an identify answer (and so every event) lists each enrolled name's score only when the admin asks
        # (mqtt.identify_scores): otherwise any requester, or anyone reading events, learns who is enrolled
        self.identify_scores = identify_scores
        self.inbox: Optional[Inbox] = None  # attach_inbox(): unrecognised live utterances are kept there

    def attach_inbox(self, inbox: Optional[Inbox]) -> None:
        """The inbox that unrecognised microphone (and, through the Wyoming adapter, Wyoming) utterances feed."""
        self.inbox = inbox

    def attach_microphone(self, microphone: Optional[Microphone]) -> None:
        """The running microphone (None when it stopped): `capture` requests and enrolling by voice use it."""
        self.microphone = microphone

    def reconfigure(self, verifier: Optional[Verifier] = None, max_audio_seconds: Optional[float] = None,
                    mic_profile: Optional[str] = None, identify_scores: Optional[bool] = None) -> None:
        """A reload: a new model (None: keep), the audio limit, the microphone's identify/verify mode and
        whether identify answers list every profile's score (None: keep)."""
        if identify_scores is not None:
            self.identify_scores = identify_scores
        if verifier is not None:
            self.verifier = verifier
        if max_audio_seconds is not None:
            self.max_audio_seconds = max_audio_seconds
        self.mic_profile = mic_profile

    def _audio(self, clip: Clip) -> Audio:
        return read_audio(clip.data, name=clip.name, max_seconds=self.max_audio_seconds)

    def _model_fields(self) -> dict:
        """Which model decided, as the CLI's `verify --json` says it: {"model": "campp", "precision": "int8"}."""
        return {"model": self.verifier.model.name, "precision": self.verifier.model.precision}

    def _result(self, test: tuple, profile: Optional[str], threshold: Optional[float],
                target_far: Optional[float] = None) -> dict[str, Any]:
        """verify the prepared clip against `profile`, or identify among all profiles when profile is None."""
        sides = self.store.sides(self.verifier.scorer, self.verifier.model)
        if profile is not None:
            if profile not in sides:
                self.store.get(profile)  # UnknownProfileError -> error reply
            d = self.verifier.decide_sides(test, sides[profile], threshold, target_far)
            return {"profile": profile, **d.fields()}
        best, d, scores = self.verifier.identify(test, sides, threshold, target_far)
        result: dict[str, Any] = {"speaker": best}
        if d is None:  # no profiles: nobody can be named
            limit = self.verifier.threshold if threshold is None else threshold
            result.update({"same_speaker": False, "score": None, "threshold": limit})
        else:
            result.update(d.fields())
            result["same_speaker"] = best is not None
        # the decision and the best candidate's score (`score`) only; its name only when it is accepted
        if self.identify_scores:
            result["scores"] = {k: round(v, 6) for k, v in sorted(scores.items(), key=lambda kv: -kv[1])[:10]}
        skipped = self.verifier.other_model(sides)  # enrolled with another model: never scored
        if skipped:
            result["skipped_profiles"] = {"count": len(skipped), "reason": "enrolled with another model: re-enroll"}
        return result

    def handle(self, req: Request) -> Response:
        meta = req.meta()
        result: dict[str, Any]
        if req.target_far is not None and self.verifier.scorer is None:
            raise RequestError("'target_far' needs calibrated scoring (this device uses score: cosine)")
        if req.type == "verify":
            assert req.first is not None and req.second is not None
            d = self.verifier.verify(self._audio(req.first), self._audio(req.second), req.threshold, req.target_far)
            result = d.fields()
        elif req.type in ("verify_profile", "identify"):
            assert req.first is not None
            if req.profile is not None:
                self.store.get(req.profile)  # unknown profile: fail before spending time on the model
            test = self.verifier.prepare(self._audio(req.first))
            result = self._result(test, req.profile if req.type == "verify_profile" else None, req.threshold,
                                  req.target_far)
        elif req.type == "capture":  # blocking: the MQTT adapter records off the worker (capture_samples)
            return self.decide_capture(req, self.capture_samples(req))
        else:  # parse_request only lets known types through
            raise RequestError(f"unknown request type {req.type!r}")
        result.update(self._model_fields())
        return Response(ok=True, meta=meta, result=result)

    def capture_samples(self, req: Request) -> np.ndarray:
        """Record for a `capture` request: blocks until the utterance (or req.seconds) is in, so callers
        run it off the model worker. RequestError without a microphone, MicrophoneError on a failure."""
        microphone = self.microphone
        if microphone is None:
            raise RequestError("capture needs the microphone (microphone.enabled: true)")
        if req.profile is not None:
            self.store.get(req.profile)  # unknown profile: fail before recording anyone
        return microphone.capture_once(req.seconds)

    def decide_capture(self, req: Request, samples: np.ndarray) -> Response:
        """The decision on recorded capture samples (the model part: on the worker)."""
        if req.target_far is not None and self.verifier.scorer is None:
            raise RequestError("'target_far' needs calibrated scoring (this device uses score: cosine)")
        audio = audio_from_array(samples, TARGET_RATE, name="microphone", max_seconds=self.max_audio_seconds)
        result = self._result(self.verifier.prepare(audio), req.profile, req.threshold, req.target_far)
        result.update(self._model_fields())
        return Response(ok=True, meta=req.meta(), result=result)

    def utterance(self, samples: np.ndarray) -> Optional[Response]:
        """A microphone utterance: identify or verify per microphone.mode; None when not speech enough."""
        meta: dict[str, Any] = {"type": "microphone", "first_file": "microphone"}
        try:
            result, unrecognised = self.decide_live(samples, "microphone", self.mic_profile, source_rate=self.mic_rate)
        except AudioError as exc:
            log.info("microphone utterance skipped: %s", exc.message)
            return None
        except ProfileError as exc:
            log.warning("microphone decision impossible: %s", exc.message)
            return None
        if unrecognised is not None and self.inbox is not None:
            self.inbox.offer(unrecognised, "microphone")
        return Response(ok=True, meta=meta, result=result)

    def decide_samples(self, samples: np.ndarray, name: str, profile: Optional[str] = None,
                       source_rate: int = TARGET_RATE) -> dict[str, Any]:
        """Identify (or verify against `profile`) 16 kHz mono samples from a live source: microphone, Wyoming.

        `source_rate` is the rate the source captured at (it picks the 16 kHz or telephone-band cohort).
        Raises AudioError (too short, no speech) or ProfileError; the result has duration_s and model.
        """
        return self.decide_live(samples, name, profile, source_rate)[0]

    def decide_live(self, samples: np.ndarray, name: str, profile: Optional[str] = None,
                    source_rate: int = TARGET_RATE) -> tuple[dict[str, Any], Optional[Unrecognised]]:
        """decide_samples, and what the inbox keeps when nobody was recognised: the embedding (never the
        samples) with its margin and nearest profile. None when recognised, verifying against one profile,
        or the inbox is off. The caller offers it (with a transcript, if it has one)."""
        audio = audio_from_array(samples, TARGET_RATE, name=name, max_seconds=self.max_audio_seconds)
        audio = dataclasses.replace(audio, source_rate=int(source_rate))
        embedding, speech_s = self.verifier.embed_with_speech(audio)
        test = (embedding, self.verifier.side(embedding, speech_s, audio.source_rate))
        result = self._result(test, profile, None)
        result["duration_s"] = round(audio.duration_s, 2)
        result.update(self._model_fields())
        unrecognised = None
        if profile is None and result.get("speaker") is None and self.inbox is not None and self.inbox.enabled:
            unrecognised = self._unrecognised(test, speech_s, audio, result)
        return result, unrecognised

    def _unrecognised(self, test: tuple, speech_s: float, audio: Audio, result: dict[str, Any]) -> Unrecognised:
        """The inbox's view of a rejected identification: the nearest profile by the key identify ranks by
        (llr when calibrated, else cosine) and the best score's margin to the threshold it was held to."""
        nearest, margin = None, None
        model = self.verifier.model
        sides = {n: side for n, side in self.store.sides(self.verifier.scorer, model).items()
                 if side.model is None or side.model.same_model(model)}  # another model's: never scored
        if sides:
            decisions = {n: self.verifier.decide_sides(test, side) for n, side in sides.items()}
            nearest = max(decisions, key=lambda n: decisions[n].score if decisions[n].llr is None else decisions[n].llr)
            best = result.get("llr", result.get("score"))
            if best is not None and result.get("threshold") is not None:
                margin = float(best) - float(result["threshold"])
        problem = None
        try:
            check_clipping(audio.samples, "the utterance")
        except AudioError as exc:
            problem = exc.message
        return Unrecognised(np.asarray(test[0], dtype=np.float32).copy(), float(speech_s),
                            band_for_rate(audio.source_rate), self.verifier.model, margin, nearest, problem)
