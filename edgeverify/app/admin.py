"""Admin requests -- enroll, forget, list profiles -- parsed and carried out; knows nothing of MQTT.

JSON on <prefix>/<device>/admin/request (a topic of its own so a broker ACL can limit who may send them):
  {"type": "enroll", "name": "alice", "clips": [{"name": "a1.wav", "audio_b64": "..."}, ...], "replace": false}
  {"type": "enroll", "name": "alice", "utterances": 3}      # record 3 utterances from the device microphone now
  {"type": "forget", "name": "alice"}
  {"type": "list"}
plus the usual request_id / requestor_id / requestor_type / reply_to. Answers carry the same per-clip
feedback as `edgeverify enroll` (enrollment.enroll). Every request is logged: who, what, result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..core.audio import TARGET_RATE, audio_from_array
from ..store.config import PROFILE_NAME_RE, AdminConfig
from ..store.enrollment import EnrollmentReport, enroll
from ..errors import AdminDisabledError, EdgeVerifyError, RequestError
from ..store.profiles import check_name
from .decisions import DecisionService
from .model import check_profiles
from .protocol import META_FIELDS, Clip, RequestMeta, Response, error_response, meta_fields, opt_str, parse_clip, typed_object

log = logging.getLogger(__name__)

ADMIN_TYPES = ("enroll", "forget", "list")
REENROLL_STATUS = "re-enroll"  # HA's enroll state while profiles of another model wait to be enrolled again


def shown(text: Optional[str], limit: int = 80) -> str:
    """A name as it may appear in a log line: a valid profile name as it is, anything else quoted with
    control characters and line breaks escaped (repr) and cut short -- a request can never forge or split
    a journal line."""
    if text is None:
        return "None"
    if PROFILE_NAME_RE.fullmatch(text):
        return text
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def reenroll_status(service: DecisionService) -> Optional[str]:
    """The message for Home Assistant's enroll status (status REENROLL_STATUS) while some profiles were
    enrolled with another model than the running one ("2 profile(s) not scored by campp: ...; re-enroll
    them"); None when every profile is scored."""
    if service.verifier is None:
        return None
    try:
        return check_profiles(service.store, service.verifier.model).problem
    except EdgeVerifyError:
        return None


@dataclass
class AdminRequest(RequestMeta):
    name: Optional[str] = None
    clips: list[Clip] = field(default_factory=list)
    utterances: Optional[int] = None  # enroll from the device microphone
    replace: bool = False

    def meta(self) -> dict[str, Any]:
        return {"type": self.type, **{k: getattr(self, k) for k in META_FIELDS}, "name": self.name}

    def describe(self) -> str:
        """What was asked, for the audit log line (never the audio)."""
        what = self.type + (f" {shown(self.name)}" if self.name else "")
        if self.type == "enroll":
            what += f" from {self.utterances} microphone utterance(s)" if self.utterances else f" from {len(self.clips)} clip(s)"
        who = f"requestor_id={self.requestor_id!r} requestor_type={self.requestor_type!r} request_id={self.request_id!r}"
        return f"{what} ({who})"


def parse_admin_request(payload: bytes, max_clips: int) -> AdminRequest:
    """RequestError for anything malformed (never another exception)."""
    obj, kind = typed_object(payload, ADMIN_TYPES, "admin 'type'")  # bounded parse, bad type quoted cut short
    req = AdminRequest(type=kind, **meta_fields(obj), name=opt_str(obj, "name"))
    if kind in ("enroll", "forget"):
        if not req.name:
            raise RequestError(f"'name' is required for {kind}")
        check_name(req.name)  # ProfileError -> profile_error reply
    if kind != "enroll":
        return req
    replace = obj.get("replace", False)
    if not isinstance(replace, bool):
        raise RequestError("'replace' must be true or false")
    req.replace = replace
    clips, utterances = obj.get("clips"), obj.get("utterances")
    if (clips is None) == (utterances is None):
        raise RequestError("enroll needs either 'clips' (a list of {name, audio_b64}) or 'utterances' (microphone)")
    if utterances is not None:
        if isinstance(utterances, bool) or not isinstance(utterances, int) or not 1 <= utterances <= max_clips:
            raise RequestError(f"'utterances' must be an integer 1-{max_clips}")
        req.utterances = utterances
        return req
    if not isinstance(clips, list) or not 1 <= len(clips) <= max_clips:
        raise RequestError(f"'clips' must be a list of 1-{max_clips} clips")
    req.clips = [parse_clip({"clip": c}, "clip") for c in clips]
    return req


class AdminHandler:
    """Carries out admin requests with the daemon's own model, store and microphone (the decision service's)."""

    def __init__(self, service: DecisionService, config: AdminConfig) -> None:
        self.service = service  # its verifier, store, microphone and max_audio_seconds, as they are at each call
        self.config = config

    def check_enabled(self, req_meta: str) -> None:
        if not self.config.enabled:
            log.warning("admin request refused (admin.enabled is false): %s", req_meta)
            raise AdminDisabledError("admin requests are disabled on this device (admin.enabled: false)")

    def handle(self, req: AdminRequest) -> Response:
        """enroll from clips, forget, list (the microphone part of an enroll is record() + enroll_samples())."""
        try:
            if req.type == "list":
                profiles = self.service.store.list()
                verifier = self.service.verifier  # None: a service without a model (tests of the adapters)
                model = None if verifier is None else verifier.model
                result: dict[str, Any] = {"model": None if model is None else model.to_dict(), "profiles": [
                    {"name": p.name, "clips": p.clips, "created": p.created, "model": p.model.to_dict(),
                     "scored": None if model is None else p.model.same_model(model)} for p in profiles
                ]}
                return self._done(req, Response(ok=True, meta=req.meta(), result=result))
            if req.type == "forget":
                assert req.name is not None
                self.service.store.forget(req.name)  # UnknownProfileError -> error reply
                return self._done(req, Response(ok=True, meta=req.meta(), result={"forgotten": req.name}))
            assert req.name is not None
            report = enroll(
                self.service.verifier, self.service.store, req.name, [c.data for c in req.clips],
                clip_names=[c.name for c in req.clips], replace=req.replace,
                max_seconds=self.service.max_audio_seconds,
            )
            return self._done(req, self._enroll_response(req, report))
        except EdgeVerifyError as exc:
            return self._done(req, error_response(req.meta(), exc.code, exc.message))

    def record(self, req: AdminRequest) -> list[np.ndarray]:
        """Blocking: the next req.utterances utterances from the running microphone (run it off the worker)."""
        mic = self.service.microphone
        if mic is None:
            raise RequestError("enrolling from the microphone needs microphone.enabled: true (and a working device)")
        n = int(req.utterances or 0)
        log.info("admin: recording %d utterance(s) for %s", n, shown(req.name))
        return mic.capture_utterances(n, timeout=n * self.config.utterance_timeout_s)

    def enroll_samples(self, req: AdminRequest, utterances: list[np.ndarray]) -> Response:
        assert req.name is not None
        try:
            audios = [
                audio_from_array(u, TARGET_RATE, name=f"utterance {i + 1}", max_seconds=self.service.max_audio_seconds)
                for i, u in enumerate(utterances)
            ]
            report = enroll(self.service.verifier, self.service.store, req.name, audios, replace=req.replace)
            return self._done(req, self._enroll_response(req, report))
        except EdgeVerifyError as exc:
            return self._done(req, error_response(req.meta(), exc.code, exc.message))

    def failed(self, req: AdminRequest, exc: EdgeVerifyError) -> Response:
        return self._done(req, error_response(req.meta(), exc.code, exc.message))

    def reenroll_status(self) -> Optional[str]:
        """See reenroll_status(service)."""
        return reenroll_status(self.service)

    @staticmethod
    def _enroll_response(req: AdminRequest, report: EnrollmentReport) -> Response:
        if report.error is None:
            return Response(ok=True, meta=req.meta(), result=report.to_dict())
        return Response(ok=False, meta=req.meta(), result=report.to_dict(),
                        error_code=report.error.code, error_message=report.error.message)

    @staticmethod
    def _done(req: AdminRequest, resp: Response) -> Response:
        outcome = "ok" if resp.ok else f"{resp.error_code}: {resp.error_message}"
        if resp.ok and req.type == "enroll" and (resp.result or {}).get("replaced"):
            outcome = "ok, replaced the existing voiceprint"
        log.info("admin %s: %s", req.describe(), outcome)
        return resp
