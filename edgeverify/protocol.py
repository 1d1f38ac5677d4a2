"""Request/response messages of the MQTT API and their JSON form; no MQTT client code here.

Two request forms:
  * JSON on <prefix>/<device>/request: {"type": ..., "request_id": ..., "first": {"name", "audio_b64"}, ...}
  * raw WAV/FLAC bytes on <prefix>/<device>/request/<type> (identify, or verify_profile with a "profile"
    user property), the metadata as MQTT v5 user properties (request_id, requestor_id, ..., name, profile,
    threshold).
Responses echo the metadata the old Flask service echoed (file names, requestor id/type, request id,
analyzer id, analysis id) so existing consumers keep working.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from .errors import RequestError

REQUEST_TYPES = ("verify", "verify_profile", "identify", "capture")
RAW_TYPES = ("identify", "verify_profile")  # types accepted as a raw audio payload on request/<type>
META_FIELDS = ("request_id", "requestor_id", "requestor_type", "analyzer_id", "analysis_id")

# error codes that are not EdgeVerifyError classes (decided by the transport, not the core)
BUSY = "busy"
TOO_LARGE = "payload_too_large"
INTERNAL = "internal_error"


@dataclass(frozen=True)
class Clip:
    name: str
    data: bytes


@dataclass
class Request:
    type: str
    request_id: Optional[str] = None
    requestor_id: Optional[str] = None
    requestor_type: Optional[str] = None
    analyzer_id: Optional[str] = None
    analysis_id: Optional[str] = None
    reply_to: Optional[str] = None
    first: Optional[Clip] = None
    second: Optional[Clip] = None
    profile: Optional[str] = None
    threshold: Optional[float] = None  # raw cosine threshold (old clients)
    target_far: Optional[float] = None  # calibrated operating point (scoring.py)
    seconds: Optional[float] = None  # capture: fixed length; None = the next utterance

    def meta(self) -> dict[str, Any]:
        return {
            "type": self.type,
            **{k: getattr(self, k) for k in META_FIELDS},
            "first_file": self.first.name if self.first else None,
            "second_file": self.second.name if self.second else None,
        }


def _opt_str(obj: Mapping[str, Any], key: str) -> Optional[str]:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise RequestError(f"'{key}' must be a string")
    return str(v)


def _opt_float(obj: Mapping[str, Any], key: str, lo: float, hi: float) -> Optional[float]:
    v = obj.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RequestError(f"'{key}' must be a number") from None
    if isinstance(v, bool) or not lo <= f <= hi:
        raise RequestError(f"'{key}' must be a number in {lo:g}..{hi:g}")
    return f


def _target_far(obj: Mapping[str, Any], threshold: Optional[float]) -> Optional[float]:
    from .scoring import FAR_MAX, FAR_MIN

    far = _opt_float(obj, "target_far", FAR_MIN, FAR_MAX)
    if far is not None and threshold is not None:
        raise RequestError("give either 'threshold' or 'target_far', not both")
    return far


def _clip(obj: Mapping[str, Any], key: str) -> Clip:
    c = obj.get(key)
    if not isinstance(c, Mapping):
        raise RequestError(f"'{key}' must be an object {{\"name\": ..., \"audio_b64\": ...}}")
    b64 = c.get("audio_b64")
    if not isinstance(b64, str) or not b64:
        raise RequestError(f"'{key}.audio_b64' is missing (base64 of a WAV or FLAC file)")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"'{key}.audio_b64' is not valid base64") from None
    name = c.get("name")
    return Clip(name=str(name) if name is not None else f"{key}.wav", data=data)


def parse_request(payload: bytes) -> Request:
    """A JSON request; RequestError for anything malformed (never another exception)."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("payload is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RequestError("payload must be a JSON object")
    kind = obj.get("type")
    if kind not in REQUEST_TYPES:
        raise RequestError(f"'type' must be one of {', '.join(REQUEST_TYPES)}, got {kind!r}")
    req = Request(type=kind, **{k: _opt_str(obj, k) for k in META_FIELDS + ("reply_to", "profile")})
    req.threshold = _opt_float(obj, "threshold", -1.0, 1.0)
    req.target_far = _target_far(obj, req.threshold)
    req.seconds = _opt_float(obj, "seconds", 0.5, 60.0)
    if kind in ("verify", "verify_profile", "identify"):
        req.first = _clip(obj, "first")
    if kind == "verify":
        req.second = _clip(obj, "second")
    if kind == "verify_profile" and not req.profile:
        raise RequestError("'profile' is required for verify_profile")
    return req


def parse_raw_request(kind: str, payload: bytes, props: Mapping[str, str]) -> Request:
    """Raw audio bytes on request/<kind>; metadata from v5 user properties."""
    if kind not in RAW_TYPES:
        raise RequestError(f"raw audio requests go to request/identify or request/verify_profile, not {kind!r}")
    req = Request(type=kind, **{k: _opt_str(props, k) for k in META_FIELDS + ("reply_to", "profile")})
    req.threshold = _opt_float(props, "threshold", -1.0, 1.0)
    req.target_far = _target_far(props, req.threshold)
    req.first = Clip(name=props.get("name") or "audio", data=bytes(payload))
    if kind == "verify_profile" and not req.profile:
        raise RequestError("user property 'profile' is required for verify_profile")
    return req


def salvage_meta(payload: bytes, props: Mapping[str, str], kind: Optional[str] = None) -> dict[str, Any]:
    """Best-effort metadata of a request that failed to parse, so the error reply can still be matched."""
    src: Mapping[str, Any] = props
    if kind is None:
        try:
            obj = json.loads(payload)
            src = obj if isinstance(obj, dict) else {}
        except (UnicodeDecodeError, ValueError):
            src = {}
    meta: dict[str, Any] = {"type": kind or src.get("type")}
    for k in META_FIELDS + ("reply_to",):
        v = src.get(k)
        meta[k] = str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
    for key, out in (("first", "first_file"), ("second", "second_file")):
        clip = src.get(key)
        meta[out] = str(clip["name"]) if isinstance(clip, dict) and isinstance(clip.get("name"), str) else None
    if kind is not None:
        meta["first_file"] = props.get("name")
    if not isinstance(meta["type"], str):
        meta["type"] = None
    return meta


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Response:
    ok: bool
    meta: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    elapsed_ms: Optional[float] = None

    def to_dict(self, device_id: str) -> dict[str, Any]:
        d: dict[str, Any] = {"ok": self.ok}
        d.update({k: v for k, v in self.meta.items() if k != "reply_to"})
        d["analyzer_id"] = d.get("analyzer_id") or device_id
        d["analysis_id"] = d.get("analysis_id") or str(uuid.uuid4())
        d.update(self.result)
        if not self.ok:
            d["error"] = {"code": self.error_code or "error", "message": self.error_message or ""}
        d["timestamp"] = now_iso()
        if self.elapsed_ms is not None:
            d["elapsed_ms"] = round(self.elapsed_ms, 1)
        return d

    def to_json(self, device_id: str) -> bytes:
        return json.dumps(self.to_dict(device_id)).encode("utf-8")


def error_response(meta: dict[str, Any], code: str, message: str, elapsed_ms: Optional[float] = None) -> Response:
    return Response(ok=False, meta=meta, error_code=code, error_message=message, elapsed_ms=elapsed_ms)


def encode_request(
    kind: str,
    first: Optional[tuple[str, bytes]] = None,
    second: Optional[tuple[str, bytes]] = None,
    **fields: Any,
) -> bytes:
    """Client side (tests, hub scripts): build a JSON request."""
    obj: dict[str, Any] = {"type": kind, **{k: v for k, v in fields.items() if v is not None}}
    for key, clip in (("first", first), ("second", second)):
        if clip is not None:
            obj[key] = {"name": clip[0], "audio_b64": base64.b64encode(clip[1]).decode("ascii")}
    return json.dumps(obj).encode("utf-8")
