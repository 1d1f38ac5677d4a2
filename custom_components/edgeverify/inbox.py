"""The device's inbox as Home Assistant sees it: admin requests, their answers and the entries, with bounds.

Plain Python (no Home Assistant import), so it can be checked on its own. The device keeps recent
utterances it recognised nobody in (embeddings only, in its memory) and answers admin requests on
`<base>/admin/request`: `inbox_list`, `inbox_assign`, `inbox_clear`. HA's MQTT client cannot set MQTT v5
correlation data, so a request carries a JSON `transaction` of our own and the answer -- on the device's
`<base>/admin/response` -- echoes it (with `status` ok / error).

An answer may hold transcripts (`inbox_list`), so nothing here is logged or kept beyond the entries; a
label (what a select shows, and what HA's recorder stores as the select's state and in the service call
that picks it) never holds the transcript. Everything from the broker is hostile until checked: the
payload is size-capped before parsing, every field type- and range-checked, the lists bounded.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any, Optional

MAX_ANSWER = 256 * 1024  # an inbox_list of 200 entries with 300-character transcripts is ~100 KiB
MAX_ENTRIES = 200  # the device keeps at most 200 (inbox.max_items)
MAX_TRANSCRIPT = 300  # the device cuts transcripts to 300 characters
MAX_MESSAGE = 300  # a device error message shown to the user is cut to this
MAX_ENTRY_ID = 2 ** 53
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # the device's profile-name rule
SOURCES = {"wyoming": "Wyoming", "microphone": "microphone"}
REQUESTOR = {"requestor_id": "homeassistant", "requestor_type": "home_assistant"}


def new_transaction() -> str:
    """A transaction id nobody else on the broker can guess or collide with."""
    return "ha-" + secrets.token_hex(8)


def request(kind: str, transaction: str, **fields: Any) -> bytes:
    """An admin request: `kind` is inbox_list / inbox_assign / inbox_clear."""
    return json.dumps({"type": kind, "transaction": transaction, **REQUESTOR,
                       **{k: v for k, v in fields.items() if v is not None}}).encode()


@dataclass(frozen=True)
class Answer:
    """A device's answer to one of our requests."""

    ok: bool
    message: str  # the device's error message (cut), "" when ok
    body: dict[str, Any]


def answer_transaction(payload: Any) -> Optional[str]:
    """The transaction an admin answer echoes, if it is one of ours (cheap: called for every admin answer)."""
    body = _object(payload)
    value = body.get("transaction") if body is not None else None
    return value if isinstance(value, str) and value.startswith("ha-") and len(value) <= 40 else None


def _object(payload: Any) -> Optional[dict[str, Any]]:
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "replace")
    if not isinstance(payload, (bytes, bytearray)) or not payload or len(payload) > MAX_ANSWER:
        return None
    try:
        body = json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def parse_answer(payload: Any) -> Optional[Answer]:
    """The answer in an admin response payload; None when it is not a JSON object of bounded size."""
    body = _object(payload)
    if body is None:
        return None
    ok = body.get("status") == "ok" if "status" in body else body.get("ok") is True
    if ok:
        return Answer(True, "", body)
    err = body.get("error")
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(message, str) or not message.strip():
        code = err.get("code") if isinstance(err, dict) else None
        message = f"the device refused the request ({code})" if isinstance(code, str) else "the device refused the request"
    return Answer(False, _clean(message, MAX_MESSAGE), body)


def _clean(text: str, limit: int) -> str:
    """One line, printable, cut: a device (or whoever wrote on its topic) must not forge log or UI lines."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class Entry:
    """One unrecognised utterance on one device."""

    device: str  # the device's base topic
    id: int
    at: float  # Unix time the device heard it
    source: str  # wyoming | microphone
    transcript: Optional[str]  # what the speech-to-text heard (Wyoming only): never in a label
    margin: Optional[float]  # how far below the threshold the best score was (negative)
    nearest: Optional[str]  # the enrolled voice it came closest to
    speech_s: Optional[float]
    problem: Optional[str]  # why the device will refuse to assign it (a clipped recording)

    @property
    def key(self) -> str:
        return f"{self.device}#{self.id}"


def parse_entries(body: dict[str, Any], device: str) -> tuple[list[Entry], int]:
    """(entries, how many were dropped as malformed) from an inbox_list answer."""
    raw = body.get("entries")
    if not isinstance(raw, list):
        return [], 0
    entries: list[Entry] = []
    dropped = max(0, len(raw) - MAX_ENTRIES)
    seen: set[int] = set()
    for item in raw[:MAX_ENTRIES]:
        entry = _entry(item, device)
        if entry is None or entry.id in seen:
            dropped += 1
            continue
        seen.add(entry.id)
        entries.append(entry)
    return entries, dropped


def _entry(item: Any, device: str) -> Optional[Entry]:
    if not isinstance(item, dict):
        return None
    eid, at = item.get("id"), _number(item.get("at"))
    if isinstance(eid, bool) or not isinstance(eid, int) or not 1 <= eid <= MAX_ENTRY_ID or at is None or at < 0:
        return None
    source = item.get("source")
    if source not in SOURCES:
        return None
    transcript = item.get("transcript")
    transcript = _clean(transcript, MAX_TRANSCRIPT) if isinstance(transcript, str) and transcript.strip() else None
    margin = _number(item.get("margin"))
    nearest = item.get("nearest")
    nearest = nearest if isinstance(nearest, str) and NAME_RE.match(nearest) else None
    speech = _number(item.get("speech_s"))
    problem = item.get("problem")
    problem = _clean(problem, MAX_MESSAGE) if isinstance(problem, str) and problem.strip() else None
    return Entry(device, eid, at, source, transcript, None if margin is None else max(-1e6, min(1e6, margin)),
                 nearest, None if speech is None or speech < 0 else min(speech, 1e6), problem)


def label(entry: Entry, tz: tzinfo, now: datetime, device_name: Optional[str] = None) -> str:
    """What the utterance select shows: when, where from, how close, which entry -- never the words
    (a select's state and the call that picks it are recorded by HA), e.g.
    `19:02 Wyoming, margin -2.3 (nearest alice) #3`."""
    try:
        when = datetime.fromtimestamp(entry.at, timezone.utc).astimezone(tz)
    except (OverflowError, OSError, ValueError):
        when = None
    if when is None:
        clock = "?"
    elif when.date() == now.astimezone(tz).date():
        clock = when.strftime("%H:%M")
    else:
        clock = when.strftime("%d %b %H:%M")
    parts = [clock, SOURCES.get(entry.source, entry.source)]
    if device_name:
        parts.insert(0, device_name)
    text = " ".join(parts)
    if entry.margin is not None:
        text += f", margin {entry.margin:.1f}"
    if entry.nearest:
        text += f" (nearest {entry.nearest})"
    if entry.problem:
        text += " [cannot be assigned]"
    return f"{text} #{entry.id}"


def entry_details(entry: Entry, tz: tzinfo) -> dict[str, Any]:
    """An entry as HA shows it (service response, unrecorded attributes)."""
    try:
        when = datetime.fromtimestamp(entry.at, timezone.utc).astimezone(tz).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        when = None
    d: dict[str, Any] = {"device": entry.device.rsplit("/", 1)[-1], "id": entry.id, "time": when,
                         "source": entry.source, "transcript": entry.transcript,
                         "margin": None if entry.margin is None else round(entry.margin, 2),
                         "nearest": entry.nearest, "speech_s": entry.speech_s}
    if entry.problem:
        d["problem"] = entry.problem
    return d


def voice_for(person_entity: str, voices: dict[str, str], taken: set[str]) -> str:
    """The device voice (profile name) an utterance of this HA person goes to: the voice already mapped to
    the person, else one named after the person's entity id (person.carol -> carol; carol_2 when `carol`
    is a voice of someone else). ValueError when no valid name can be made."""
    for voice, person in voices.items():
        if person == person_entity:
            return voice
    base = person_entity.split(".", 1)[-1][:60]
    if not NAME_RE.match(base):
        raise ValueError(f"cannot make a voice name from {person_entity!r}: give a voice name")
    taken_folded = {t.casefold() for t in taken}
    name, n = base, 2
    while name.casefold() in taken_folded:
        name, n = f"{base}_{n}", n + 1
    return name
