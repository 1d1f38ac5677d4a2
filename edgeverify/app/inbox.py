"""The inbox: recent utterances nobody was recognised in, kept so an admin can say who it was.

Learning from use without storing audio: an unrecognised utterance from a source that hears the room
(the device microphone in identify mode, an admitted Wyoming client -- never an MQTT request, whose
audio the requester chose: docs/security-trust-model.md) leaves its embedding here, with when, where
from, how far below the threshold it scored and against whom, and -- from Wyoming -- the transcript the
STT returned, so a person can tell who spoke ("19:02 'turn on the kitchen lights'"). Never the audio.

Kept in memory only (`inbox:` config): bounded by count (the oldest goes) and age, emptied on restart,
when the inbox is switched off, by inbox_clear, and entry by entry when assigned. An entry is nobody's
until assigned; forgetting a person drops the entries whose nearest profile was that person (they are
likely that person's voice and their margin was measured against a profile that no longer exists).

Admin requests (on the admin topic, JSON):
  {"type": "inbox_list"}                           -> entries: id, at, source, margin, nearest, transcript
  {"type": "inbox_assign", "id": 3, "name": "alice"} -> adds entry 3 to alice (a new or existing profile)
  {"type": "inbox_clear"} / {"type": "inbox_clear", "id": 3}
Assigning applies the checks enrollment applies (not clipped, enough speech -- the decision already
required it --, consistent with the profile's other clips, the same model).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..core.model_identity import ModelIdentity
from ..errors import AudioError, EdgeVerifyError, ProfileError, RequestError, UnknownProfileError
from ..store.config import MAX_CLIPS_LIMIT, InboxConfig
from ..store.profiles import RECOMMENDED_CLIPS, check_name
from .protocol import META_FIELDS, RequestMeta, Response, error_response, meta_fields, opt_str, typed_object

log = logging.getLogger(__name__)

INBOX_TYPES = ("inbox_list", "inbox_assign", "inbox_clear")
INBOX_SOURCES = frozenset({"microphone", "wyoming"})  # sources that hear the room (never "mqtt")
MAX_TRANSCRIPT_CHARS = 300  # a transcript is kept cut to this (a hostile STT may answer megabytes)
MAX_ENTRY_ID = 2 ** 53
MAX_PROFILE_CLIPS = MAX_CLIPS_LIMIT  # a profile grown by assignments stops here (its clips are scored one by one)


class InboxDisabledError(RequestError):
    code = "inbox_disabled"


class UnknownEntryError(RequestError):
    code = "unknown_entry"


@dataclass(frozen=True)
class Unrecognised:
    """What an unrecognised live decision leaves for the inbox: the embedding, never the samples."""

    embedding: np.ndarray  # L2-normalised, the model's dimension
    speech_s: float  # seconds of speech it came from (the calibration's quality term)
    band: str  # "16k" or "8k"
    model: ModelIdentity  # the model that embedded it: an entry only joins a profile of the same model
    margin: Optional[float]  # best llr (or cosine) minus its threshold; < 0; None without profiles
    nearest: Optional[str]  # the profile it came closest to; None without profiles
    problem: Optional[str] = None  # why it cannot be assigned (clipped), as enrollment would say


@dataclass(frozen=True)
class InboxEntry:
    id: int
    at: float  # Unix time
    source: str
    transcript: Optional[str]
    voice: Unrecognised

    def to_dict(self) -> dict[str, Any]:
        """What an admin is shown: never the embedding."""
        d: dict[str, Any] = {
            "id": self.id,
            "at": round(self.at, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "source": self.source,
            "transcript": self.transcript,
            "margin": None if self.voice.margin is None else round(self.voice.margin, 4),
            "nearest": self.voice.nearest,
            "speech_s": round(self.voice.speech_s, 2),
        }
        if self.voice.problem:
            d["problem"] = self.voice.problem
        return d


class Inbox:
    """The entries, thread-safe (the model worker and the Wyoming thread offer, admin work reads)."""

    def __init__(self, config: InboxConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, InboxEntry] = OrderedDict()  # oldest first
        self._next_id = 1

    @property
    def enabled(self) -> bool:
        return bool(self.config.enabled)

    def reconfigure(self, config: InboxConfig) -> None:
        """A reload: switched off empties it; smaller bounds apply at once."""
        with self._lock:
            self.config = config
            if not config.enabled:
                self._entries.clear()
            self._prune()

    def offer(self, voice: Unrecognised, source: str, transcript: Optional[str] = None) -> Optional[int]:
        """Keep an unrecognised utterance; its id, or None when the inbox is off or the source may not feed it."""
        if not self.enabled or source not in INBOX_SOURCES:
            return None
        if transcript is not None:
            transcript = " ".join(str(transcript).split())[:MAX_TRANSCRIPT_CHARS]
        with self._lock:
            entry = InboxEntry(self._next_id, self.clock(), source, transcript, voice)
            self._next_id += 1
            self._entries[entry.id] = entry
            self._prune()
        log.info("inbox: kept unrecognised utterance %d from %s (nearest %s, margin %s)", entry.id, source,
                 voice.nearest, None if voice.margin is None else f"{voice.margin:.2f}")
        return entry.id

    def _prune(self) -> None:
        oldest = self.clock() - 3600.0 * float(self.config.max_age_h)
        while self._entries:
            first = next(iter(self._entries.values()))
            if first.at >= oldest and len(self._entries) <= int(self.config.max_items):
                break
            self._entries.popitem(last=False)

    def tidy(self, names: set[str]) -> None:
        """Drop what has expired and what is nearest to a person no longer enrolled (the daemon's tick: an
        entry goes when it is due, not only at the next request)."""
        with self._lock:
            if not self._entries:
                return
            self._prune()
        self.keep_nearest(names)

    def entries(self) -> list[InboxEntry]:
        with self._lock:
            self._prune()
            return list(self._entries.values())

    def get(self, entry_id: int) -> InboxEntry:
        with self._lock:
            self._prune()
            entry = self._entries.get(entry_id)
        if entry is None:
            raise UnknownEntryError(f"no inbox entry {entry_id} (assigned, cleared or expired)")
        return entry

    def discard(self, entry_id: int) -> None:
        with self._lock:
            if self._entries.pop(entry_id, None) is None:
                raise UnknownEntryError(f"no inbox entry {entry_id} (assigned, cleared or expired)")

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            return n

    def keep_nearest(self, names: set[str]) -> int:
        """Drop the entries whose nearest profile is no longer enrolled: forgetting a person (admin request,
        `edgeverify forget`, a file removed) takes the entries nearest to them along."""
        with self._lock:
            gone = [i for i, e in self._entries.items() if e.voice.nearest is not None and e.voice.nearest not in names]
            for i in gone:
                del self._entries[i]
        return len(gone)


# -- admin requests ---------------------------------------------------------------------------------


@dataclass
class InboxRequest(RequestMeta):
    entry_id: Optional[int] = None
    name: Optional[str] = None

    def meta(self) -> dict[str, Any]:
        return {"type": self.type, **{k: getattr(self, k) for k in META_FIELDS}, "id": self.entry_id,
                "name": self.name}


def _entry_id(obj: dict[str, Any], required: bool) -> Optional[int]:
    v = obj.get("id")
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ENTRY_ID:
        shown = repr(v)[:40]
        raise RequestError(f"'id' must be an inbox entry id (a positive integer from inbox_list), got {shown}")
    return v


def parse_inbox_request(obj: Any) -> InboxRequest:
    """An inbox admin request (a JSON object already parsed with protocol.load_json); RequestError /
    ProfileError for anything malformed."""
    obj, kind = typed_object(obj, INBOX_TYPES, "inbox 'type'")
    req = InboxRequest(type=kind, **meta_fields(obj))
    if kind == "inbox_assign":
        req.entry_id = _entry_id(obj, True)
        name = opt_str(obj, "name")
        if not name:
            raise RequestError("'name' is required for inbox_assign")
        if len(name) > 64:  # check_name quotes the name: not a hostile kilobyte of it
            raise ProfileError(f"invalid profile name {name[:40]!r}... ({len(name)} characters): use 1-64 "
                               "characters of A-Z a-z 0-9 _ . -")
        req.name = check_name(name)
    elif kind == "inbox_clear":
        req.entry_id = _entry_id(obj, False)
    return req


def is_inbox_type(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("type") in INBOX_TYPES


class InboxHandler:
    """The inbox use cases with the daemon's own model and profiles (the decision service's)."""

    def __init__(self, service: Any, inbox: Inbox) -> None:
        self.service = service  # app.decisions.DecisionService: its verifier and store, as they are at each call
        self.inbox = inbox

    def handle(self, req: InboxRequest) -> Response:
        try:
            if not self.inbox.enabled:
                raise InboxDisabledError("the inbox is off on this device (inbox.enabled: false)")
            self.inbox.keep_nearest({p.name for p in self.service.store.list()})
            if req.type == "inbox_list":
                cfg = self.inbox.config
                result: dict[str, Any] = {"entries": [e.to_dict() for e in self.inbox.entries()],
                                          "max_items": cfg.max_items, "max_age_h": cfg.max_age_h}
            elif req.type == "inbox_clear":
                if req.entry_id is None:
                    result = {"cleared": self.inbox.clear()}
                else:
                    self.inbox.discard(req.entry_id)
                    result = {"cleared": 1, "id": req.entry_id}
            else:
                assert req.entry_id is not None and req.name is not None
                result = self.assign(req.entry_id, req.name)
            resp = Response(ok=True, meta=req.meta(), result=result)
        except EdgeVerifyError as exc:
            resp = error_response(req.meta(), exc.code, exc.message)
        outcome = "ok" if resp.ok else f"{resp.error_code}: {resp.error_message}"
        who = f"requestor_id={req.requestor_id!r} request_id={req.request_id!r}"
        log.info("admin %s%s%s (%s): %s", req.type, f" {req.entry_id}" if req.entry_id else "",
                 f" to {req.name}" if req.name else "", who, outcome)
        return resp

    def assign(self, entry_id: int, name: str) -> dict[str, Any]:
        """Add an entry's embedding to `name` (created when new) with enrollment's checks; the entry leaves."""
        check_name(name)
        entry = self.inbox.get(entry_id)
        voice = entry.voice
        verifier, store = self.service.verifier, self.service.store
        if voice.problem:
            raise AudioError(voice.problem)
        if not voice.model.same_model(verifier.model):
            raise ProfileError(f"inbox entry {entry_id} was embedded by model {voice.model.label}, "
                               f"the device now runs {verifier.model.label}")
        try:
            existing = store.get(name)
        except UnknownProfileError:
            existing = None
        rows: list[np.ndarray] = []
        seconds: list[float] = []
        bands = {voice.band}
        if existing is not None:
            if not existing.model.same_model(verifier.model):
                raise ProfileError(f"profile {name!r} was enrolled with model {existing.model.label}; "
                                   f"the entry is from {verifier.model.label}")
            if existing.embedding.shape != voice.embedding.shape:
                raise ProfileError(f"profile {name!r} holds {existing.embedding.size}-dimensional voiceprints; "
                                   f"the entry's has {voice.embedding.size}")
            if existing.clip_embeddings is not None:
                rows = list(existing.clip_embeddings)
            else:  # a profile from before clip embeddings were kept: its mean counts for its clips
                rows = [existing.embedding] * max(1, int(existing.clips))
            if len(rows) >= MAX_PROFILE_CLIPS:
                raise ProfileError(f"profile {name!r} already holds {len(rows)} clips (at most {MAX_PROFILE_CLIPS})")
            seconds = [float(existing.speech_s)] * len(rows)
            bands.add(existing.band)
        names = [f"clip {i + 1}" for i in range(len(rows))] + [f"inbox entry {entry_id}"]
        profile = store.enroll(
            name, rows + [voice.embedding], clip_names=names, replace=existing is not None, model=verifier.model,
            speech_s=seconds + [voice.speech_s], scorer=verifier.scorer, band="16k" if "16k" in bands else "8k",
        )  # ProfileError: inconsistent with the profile's clips -> error answer, the entry stays
        self.inbox.discard(entry_id)
        result: dict[str, Any] = {"assigned": entry_id, "created": existing is None,
                                  "profile": {"name": profile.name, "clips": profile.clips,
                                              "created": profile.created, "model": profile.model.label}}
        if profile.clips < RECOMMENDED_CLIPS:
            result["notes"] = [f"{RECOMMENDED_CLIPS} clips are recommended for a reliable profile"]
        return result
