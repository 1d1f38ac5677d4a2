"""The companion's view of a device inbox: requests, answers, entries, labels (plain Python, no HA needed).

custom_components/edgeverify/inbox.py imports nothing from HA, so it is loaded here by path. The answers
are built with the device's own code (edgeverify.app.inbox), so a change on either side shows here;
test_satellite.py checks the whole path in a real HA against a real daemon.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeverify.app.inbox import InboxEntry, Unrecognised
from edgeverify.core.model_identity import ModelIdentity

PATH = Path(__file__).resolve().parents[2] / "custom_components" / "edgeverify" / "inbox.py"
_spec = importlib.util.spec_from_file_location("edgeverify_ha_inbox", PATH)
assert _spec is not None and _spec.loader is not None
inbox = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = inbox  # dataclasses look their module up
_spec.loader.exec_module(inbox)

AT = 1_764_874_920.0  # 2025-12-04 19:02:00 UTC (20:02 in TZ)
TZ = timezone(timedelta(hours=1))
NOW = datetime.fromtimestamp(AT + 600, TZ)
WORDS = "turn on the kitchen lights"


def device_entry(eid: int = 3, transcript: Any = WORDS, problem: Any = None, at: float = AT) -> dict[str, Any]:
    """An entry as the device lists it (its own to_dict)."""
    v = np.ones(4, np.float32) / 2
    voice = Unrecognised(v, 1.9, "16k", ModelIdentity("campp", "int8"), -2.31, "alice", problem)
    return InboxEntry(eid, at, "wyoming", transcript, voice).to_dict()


def answer(transaction: str = "ha-0011223344556677", **body: Any) -> bytes:
    return json.dumps({"ok": True, "status": "ok", "type": "inbox_list", "transaction": transaction, **body}).encode()


def test_a_request_carries_our_transaction_and_who_asks() -> None:
    t = inbox.new_transaction()
    assert t.startswith("ha-") and t != inbox.new_transaction()
    doc = json.loads(inbox.request("inbox_assign", t, id=3, name="carol", nothing=None))
    assert doc == {"type": "inbox_assign", "transaction": t, "requestor_id": "homeassistant",
                   "requestor_type": "home_assistant", "id": 3, "name": "carol"}


@pytest.mark.parametrize("payload, ours", [
    (answer(), "ha-0011223344556677"),
    (answer(transaction=7), None),  # another admin's numeric transaction
    (answer(transaction="node-red-1"), None),
    (answer(transaction="ha-" + "x" * 100), None),
    (b"not json", None),
    (b"[1, 2]", None),
    (b"", None),
    (b'{"transaction": "ha-1"' + b" " * inbox.MAX_ANSWER + b"}", None),  # over the size cap: never parsed
    ("[" * 100_000, None),
])
def test_only_our_answers_are_picked_up(payload: Any, ours: Any) -> None:
    assert inbox.answer_transaction(payload) == ours


def test_a_refusal_carries_the_devices_message_cleaned_and_cut() -> None:
    body = {"ok": False, "status": "error", "transaction": "ha-1",
            "error": {"code": "audio_error", "message": "the utterance is clipped\n2026-01-01 FAKE LOG LINE\x00" + "x" * 1000}}
    a = inbox.parse_answer(json.dumps(body).encode())
    assert a is not None and not a.ok
    assert a.message.startswith("the utterance is clipped 2026-01-01 FAKE LOG LINE") and "\n" not in a.message
    assert "\x00" not in a.message and len(a.message) <= inbox.MAX_MESSAGE
    bare = inbox.parse_answer(json.dumps({"status": "error", "error": {"code": "inbox_disabled"}}).encode())
    assert bare is not None and not bare.ok and "inbox_disabled" in bare.message
    nothing = inbox.parse_answer(json.dumps({"status": "error", "error": "boom"}).encode())
    assert nothing is not None and not nothing.ok and nothing.message == "the device refused the request"
    assert inbox.parse_answer(b"\xff\xfe") is None


def test_entries_from_the_devices_own_listing() -> None:
    body = json.loads(answer(entries=[device_entry(3), device_entry(4, None, "the utterance is clipped")]))
    entries, dropped = inbox.parse_entries(body, "edgeverify/kitchen")
    assert dropped == 0 and [e.id for e in entries] == [3, 4]
    first = entries[0]
    assert (first.device, first.source, first.transcript, first.nearest) == ("edgeverify/kitchen", "wyoming", WORDS, "alice")
    assert first.margin == pytest.approx(-2.31) and first.speech_s == pytest.approx(1.9) and first.problem is None
    assert entries[1].transcript is None and entries[1].problem == "the utterance is clipped"
    assert first.key == "edgeverify/kitchen#3"


@pytest.mark.parametrize("change", [
    {"id": True}, {"id": 0}, {"id": -1}, {"id": 2 ** 60}, {"id": "3"}, {"id": 3.0},
    {"at": float("nan")}, {"at": "yesterday"}, {"at": -5}, {"source": "mqtt"}, {"source": None},
])
def test_a_malformed_entry_is_dropped_and_counted(change: dict[str, Any]) -> None:
    bad = {**device_entry(9), **change}
    raw = json.loads(json.dumps({"entries": [device_entry(3), bad]}).replace("NaN", "NaN"))
    entries, dropped = inbox.parse_entries(raw, "edgeverify/kitchen")
    assert [e.id for e in entries] == [3] and dropped == 1


def test_hostile_fields_are_bounded() -> None:
    odd = {**device_entry(5), "transcript": "x" * 50_000 + "\n\x1b[2J", "nearest": "../../etc", "margin": 1e308 * 10,
           "speech_s": -3, "problem": 42}
    entries, dropped = inbox.parse_entries({"entries": [odd, device_entry(5)] + [device_entry(i) for i in range(6, 400)]},
                                           "edgeverify/kitchen")
    assert len(entries) <= inbox.MAX_ENTRIES and dropped >= 400 - 6 - inbox.MAX_ENTRIES + 1  # the duplicate id 5 too
    e = entries[0]
    assert len(e.transcript) <= inbox.MAX_TRANSCRIPT and "\x1b" not in e.transcript
    assert e.nearest is None and e.margin is None and e.speech_s is None and e.problem is None
    assert inbox.parse_entries({"entries": "all of them"}, "x") == ([], 0)


def test_a_label_says_when_and_how_close_never_the_words() -> None:
    entries, _ = inbox.parse_entries({"entries": [device_entry(3), device_entry(4, at=AT - 86400, problem="clipped")]},
                                     "edgeverify/kitchen")
    today, yesterday = (inbox.label(e, TZ, NOW) for e in entries)
    assert today == "20:02 Wyoming, margin -2.3 (nearest alice) #3", today
    assert yesterday.startswith("03 Dec 20:02 ") and yesterday.endswith("[cannot be assigned] #4"), yesterday
    assert inbox.label(entries[0], TZ, NOW, "kitchen").startswith("kitchen 20:02 ")
    for e in entries:
        assert "kitchen lights" not in inbox.label(e, TZ, NOW, "kitchen")
    details = inbox.entry_details(entries[0], TZ)
    assert details["transcript"] == WORDS and details["time"] == "2025-12-04T20:02:00+01:00" and details["device"] == "kitchen"


def test_the_voice_an_utterance_goes_to() -> None:
    voices = {"alice": "person.alice", "Carol": "person.someone_else"}
    assert inbox.voice_for("person.alice", voices, set(voices)) == "alice"  # mapped already
    assert inbox.voice_for("person.dave", voices, set(voices)) == "dave"  # a new voice after the person
    assert inbox.voice_for("person.carol", voices, set(voices)) == "carol_2"  # the device's names ignore case
    with pytest.raises(ValueError):
        inbox.voice_for("person.", voices, set(voices))


def test_fuzz_never_raises() -> None:
    rng = random.Random(18)
    pieces: list[Any] = [None, True, 0, -1, 2 ** 70, 1.5, float("inf"), "", "x" * 500, "ha-1", [], {}, [1], {"a": 1}]
    keys = ["id", "at", "source", "transcript", "margin", "nearest", "speech_s", "problem", "entries", "status",
            "error", "transaction", "message", "code"]
    for _ in range(2000):
        doc = {rng.choice(keys): rng.choice(pieces) for _ in range(rng.randrange(6))}
        if rng.random() < 0.5:
            doc["entries"] = [{rng.choice(keys): rng.choice(pieces) for _ in range(rng.randrange(8))}
                              for _ in range(rng.randrange(4))]
        if rng.random() < 0.3:
            doc["error"] = {rng.choice(keys): rng.choice(pieces) for _ in range(3)}
        raw = json.dumps(doc).encode()
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(len(raw) + 1)]
        inbox.answer_transaction(raw)
        a = inbox.parse_answer(raw)
        if a is not None:
            for e in inbox.parse_entries(a.body, "edgeverify/x")[0]:
                assert "#" in inbox.label(e, TZ, NOW)
                inbox.entry_details(e, TZ)
