"""Decisions from edgeverify devices, parsed with bounds, and their correlation with an utterance.

Plain Python (no Home Assistant import), so it can be checked on its own. A device publishes each
decision on `<base>/event` as JSON; a decision made by the device's Wyoming proxy also carries
`utterance` = {"transcript_sha256": sha256 of the transcript it returned to HA, normalised as
`" ".join(text.split()).casefold()`, "at": unix time}. The transcript itself never goes over MQTT, so
the only link between a conversation request and a decision is that hash: a request is attributed to
a voice when exactly one fresh, confident decision carries the hash of the request's text. Time alone
is never enough.

Everything on the broker is treated as hostile: payloads are size-capped before parsing, every field
is type- and range-checked, and the store holds a bounded number of decisions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

MAX_PAYLOAD = 64 * 1024  # an edgeverify event is < 2 KiB; anything far larger is not one
MAX_SCORES = 16  # names read from one decision's `scores` (the device sends its top 10)
MAX_DECISIONS = 256  # recent decisions kept (all devices together)
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # the device's profile-name rule
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the device's device_id rule
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
EVENT_TYPES = frozenset({"identified", "unknown_speaker", "verified", "rejected"})
SOURCES = frozenset({"microphone", "mqtt", "wyoming"})
CLOCK_SLACK_S = 2.0  # how far in the future a device's `at` may lie (clocks a little apart)


def normalise(text: str) -> str:
    """The device's normalisation of a transcript: whitespace runs to one space, case folded."""
    return " ".join(text.split()).casefold()


def transcript_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def _name(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and NAME_RE.match(value) and value not in (".", "..") else None


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class Decision:
    """One device decision as far as HA needs it."""

    device: str
    event_type: str
    speaker: Optional[str]  # the identified voice, or the profile a verification accepted
    score: Optional[float]
    threshold: Optional[float]
    source: Optional[str]
    transcript_sha256: Optional[str]
    at: Optional[float]  # device's unix time of the transcript (Wyoming decisions only)
    received: float  # HA's monotonic clock when it arrived
    voices: tuple[str, ...] = ()  # profile names the decision mentions (speaker, profile, scores' keys)

    @property
    def confident(self) -> bool:
        """A voice the device recognised at its operating point (score at or above its threshold)."""
        if self.event_type not in ("identified", "verified") or self.speaker is None:
            return False
        if self.score is not None and self.threshold is not None and self.score < self.threshold:
            return False
        return True


def parse_event(payload: Any, device: str, received: float) -> tuple[Optional[Decision], str]:
    """(decision, "") or (None, why not). Never raises, whatever the payload."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "replace")
    if not isinstance(payload, (bytes, bytearray)):
        return None, "payload is not bytes"
    if len(payload) > MAX_PAYLOAD:
        return None, f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})"
    try:
        body = json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"not JSON ({type(exc).__name__})"
    if not isinstance(body, dict):
        return None, "not a JSON object"
    event_type = body.get("event_type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        return None, "no known event_type"
    if body.get("ok") is False or body.get("error") not in (None, {}) or body.get("rejected") is True:
        event_type = "rejected" if body.get("rejected") is True else "unknown_speaker"
    speaker: Optional[str] = None
    if event_type == "identified":
        speaker = _name(body.get("speaker"))
        if speaker is None:
            return None, "identified without a valid speaker name"
    elif event_type == "verified":
        speaker = _name(body.get("profile")) or _name(body.get("speaker"))
        if speaker is None:
            return None, "verified without a valid profile name"
    source = body.get("source") if isinstance(body.get("source"), str) and body["source"] in SOURCES else None
    scores = body.get("scores")
    named = [speaker, *(list(scores)[:MAX_SCORES] if isinstance(scores, dict) else [])]
    voices = tuple(dict.fromkeys(n for n in map(_name, named) if n is not None))
    sha, at = None, None
    utt = body.get("utterance")
    if isinstance(utt, dict):
        h = utt.get("transcript_sha256")
        if isinstance(h, str) and SHA256_RE.match(h):
            sha = h
            at = _number(utt.get("at"))
    return Decision(
        device=device,
        event_type=event_type,
        speaker=speaker,
        score=_number(body.get("score")),
        threshold=_number(body.get("threshold")),
        source=source,
        transcript_sha256=sha,
        at=at,
        received=received,
        voices=voices,
    ), ""


@dataclass(frozen=True)
class Match:
    """What the correlation found for one request's text."""

    decision: Optional[Decision]  # the confident decision for a recognised voice, else None
    reason: str  # for the log and the agent's response data: recognised / unknown_voice / no_decision / ambiguous


class DecisionStore:
    """The recent decisions of the configured devices (bounded) and the correlation with a request."""

    def __init__(self, window_s: float, max_decisions: int = MAX_DECISIONS) -> None:
        self.window_s = window_s
        self._recent: deque[Decision] = deque(maxlen=max_decisions)

    def add(self, decision: Decision) -> None:
        self._recent.append(decision)

    def _fresh(self, d: Decision, now: float, now_wall: float) -> bool:
        if now - d.received > self.window_s:
            return False
        if d.at is None:
            return False
        age = now_wall - d.at  # queued or replayed messages arrive late with an old `at`
        return -CLOCK_SLACK_S <= age <= self.window_s

    def match(self, text: str, now: float, now_wall: float) -> Match:
        """The decision for this request's text, consumed so that it attributes at most one request.

        Matching hashes only (fresh, with an `at` within the window). Several fresh decisions for the
        same text (two satellites heard the same words) count as one when they agree on the voice;
        otherwise the request is `ambiguous` and nobody is assumed.
        """
        want = transcript_hash(text)
        hits = [d for d in self._recent if d.transcript_sha256 == want and self._fresh(d, now, now_wall)]
        if not hits:
            return Match(None, "no_decision")
        for d in hits:
            self._recent.remove(d)
        voices = {d.speaker if d.confident else None for d in hits}
        if len(voices) > 1:
            return Match(None, "ambiguous")
        best = max(hits, key=lambda d: d.received)
        return Match(best, "recognised") if best.confident else Match(None, "unknown_voice")

