"""Request/response messages of the decision service and their JSON form (the MQTT API's, and what
Wyoming and the microphone answer with); no transport code here.

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
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import RequestError

REQUEST_TYPES = ("verify", "verify_profile", "identify", "capture")
RAW_TYPES = ("identify", "verify_profile")  # types accepted as a raw audio payload on request/<type>
META_FIELDS = ("request_id", "requestor_id", "requestor_type", "analyzer_id", "analysis_id")

# error codes that are not EdgeVerifyError classes (decided by the transport, not the core)
BUSY = "busy"
TOO_LARGE = "payload_too_large"
INTERNAL = "internal_error"
BAD_REPLY_TOPIC = "bad_reply_topic"
CAPTURE_DISABLED = "capture_disabled"  # mqtt.allow_capture is off: nobody may open the room microphone

MAX_JSON_DEPTH = 32  # a request is 3 levels deep; anything deeper is hostile (json recursion)
MAX_JSON_STRINGS = 10_000  # strings in one request (keys included); a request has ~20
MAX_JSON_STRUCTURE = 64 * 1024  # bytes outside strings; the audio lives inside strings
MAX_META_CHARS = 1024  # echoed metadata strings are cut to this


@dataclass(frozen=True)
class Clip:
    name: str
    data: bytes


@dataclass
class RequestMeta:
    """What every request carries besides its content: its type, the echoed metadata and the reply topic."""

    type: str
    request_id: Optional[str] = None
    requestor_id: Optional[str] = None
    requestor_type: Optional[str] = None
    analyzer_id: Optional[str] = None
    analysis_id: Optional[str] = None
    reply_to: Optional[str] = None


@dataclass
class Request(RequestMeta):
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


def opt_str(obj: Mapping[str, Any], key: str) -> Optional[str]:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise RequestError(f"'{key}' must be a string")
    return _cut(str(v))


def meta_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The echoed metadata (strings, cut) and reply_to (a string, never cut: a cut topic is another topic)."""
    fields: dict[str, Any] = {k: opt_str(obj, k) for k in META_FIELDS}
    reply_to = obj.get("reply_to")
    if reply_to is not None and not isinstance(reply_to, str):
        raise RequestError("'reply_to' must be a string (an MQTT topic)")
    fields["reply_to"] = reply_to
    return fields


def _shown(v: Any, limit: int = 80) -> str:
    """A hostile value quoted in an error message: repr, cut."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _cut(s: str) -> str:
    return s if len(s) <= MAX_META_CHARS else s[:MAX_META_CHARS]


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_TOKENS = re.compile(rb'[^"]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"]*)*')  # anchored: no quadratic retries
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def load_json(payload: bytes) -> Any:
    """json.loads bounded in nesting depth, string count and structure size, checked *before* parsing.

    A scan (regex + numpy, no recursion) measures the payload, so json's recursive parser never sees a
    nesting that could raise RecursionError, nor millions of tiny containers; RequestError otherwise.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    payload = bytes(payload)
    scanned = _JSON_TOKENS.match(payload)
    if scanned is None or scanned.end() != len(payload):  # an unterminated string
        raise RequestError("payload is not valid JSON")
    structure, strings = _JSON_STRING.subn(b"", payload)  # linear now: every string is terminated
    if strings > MAX_JSON_STRINGS:
        raise RequestError(f"payload has more than {MAX_JSON_STRINGS} JSON strings")
    if len(structure) > MAX_JSON_STRUCTURE:
        raise RequestError(f"payload has more than {MAX_JSON_STRUCTURE} bytes of JSON structure outside strings")
    b = np.frombuffer(structure, np.uint8)
    depth = np.cumsum(np.isin(b, _OPEN).astype(np.int32) - np.isin(b, _CLOSE).astype(np.int32))
    if depth.size and int(depth.max()) > MAX_JSON_DEPTH:
        raise RequestError(f"payload is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestError("payload is not valid JSON") from None


def opt_float(obj: Mapping[str, Any], key: str, lo: float, hi: float) -> Optional[float]:
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
    from ..core.scoring import FAR_MAX, FAR_MIN

    far = opt_float(obj, "target_far", FAR_MIN, FAR_MAX)
    if far is not None and threshold is not None:
        raise RequestError("give either 'threshold' or 'target_far', not both")
    return far


def parse_clip(obj: Mapping[str, Any], key: str) -> Clip:
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
    return Clip(name=_cut(str(name)) if name is not None else f"{key}.wav", data=data)


def typed_object(payload: Union[bytes, Mapping[str, Any]], types: Sequence[str], what: str = "'type'") -> tuple:
    """(object, its type) of a JSON request of one of ``types``; RequestError otherwise. Parses bytes with
    load_json (bounded), and quotes a bad type cut short: the payload is hostile until checked."""
    obj = payload if isinstance(payload, Mapping) else load_json(payload)
    if not isinstance(obj, dict):
        raise RequestError("payload must be a JSON object")
    kind = obj.get("type")
    if kind not in types:
        raise RequestError(f"{what} must be one of {', '.join(types)}, got {_shown(kind)}")
    return obj, kind


def parse_request(payload: Union[bytes, Mapping[str, Any]]) -> Request:
    """A JSON request (bytes, or the object load_json made of them, so that a caller parses only once);
    RequestError for anything malformed (never another exception)."""
    obj, kind = typed_object(payload, REQUEST_TYPES)
    req = Request(type=kind, **meta_fields(obj), profile=opt_str(obj, "profile"))
    req.threshold = opt_float(obj, "threshold", -1.0, 1.0)
    req.target_far = _target_far(obj, req.threshold)
    req.seconds = opt_float(obj, "seconds", 0.5, 60.0)
    if kind in ("verify", "verify_profile", "identify"):
        req.first = parse_clip(obj, "first")
    if kind == "verify":
        req.second = parse_clip(obj, "second")
    if kind == "verify_profile" and not req.profile:
        raise RequestError("'profile' is required for verify_profile")
    return req


def parse_raw_request(kind: str, payload: bytes, props: Mapping[str, str]) -> Request:
    """Raw audio bytes on request/<kind>; metadata from v5 user properties."""
    if kind not in RAW_TYPES:
        raise RequestError(f"raw audio requests go to request/identify or request/verify_profile, not {_shown(kind)}")
    req = Request(type=kind, **meta_fields(props), profile=opt_str(props, "profile"))
    req.threshold = opt_float(props, "threshold", -1.0, 1.0)
    req.target_far = _target_far(props, req.threshold)
    req.first = Clip(name=_cut(props.get("name") or "audio"), data=bytes(payload))
    if kind == "verify_profile" and not req.profile:
        raise RequestError("user property 'profile' is required for verify_profile")
    return req


def salvage_meta(
    payload: Union[bytes, Mapping[str, Any], None], props: Mapping[str, str], kind: Optional[str] = None
) -> dict[str, Any]:
    """Best-effort metadata of a request that failed to parse, so the error reply can still be matched.

    `payload` is the raw JSON bytes or, better, the object already parsed from them (never parsed twice);
    None or anything unparsable gives what the user properties hold. Never raises.
    """
    src: Mapping[str, Any] = props
    if kind is None:
        if isinstance(payload, (bytes, bytearray, str)):
            try:
                payload = load_json(payload)
            except RequestError:
                payload = None
        src = payload if isinstance(payload, Mapping) else {}
    meta: dict[str, Any] = {"type": kind or src.get("type")}
    for k in META_FIELDS:
        v = src.get(k)
        meta[k] = _cut(str(v)) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
    reply_to = src.get("reply_to")
    meta["reply_to"] = reply_to if isinstance(reply_to, str) else None  # a topic: never cut or coerced
    for key, out in (("first", "first_file"), ("second", "second_file")):
        clip = src.get(key)
        meta[out] = _cut(clip["name"]) if isinstance(clip, Mapping) and isinstance(clip.get("name"), str) else None
    if kind is not None:
        name = props.get("name")
        meta["first_file"] = _cut(name) if isinstance(name, str) else None
    if not isinstance(meta["type"], str):
        meta["type"] = None
    else:
        meta["type"] = _cut(meta["type"])
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
