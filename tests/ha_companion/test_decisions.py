"""The companion integration's decision parsing and correlation (plain Python: runs without Home Assistant).

custom_components/edgeverify/decisions.py imports nothing from HA, so it is loaded here by path (the
package's __init__ needs HA). test_companion.py checks the same behaviour end to end in a real HA.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeverify.mqtt.ha_discovery import event_payload

PATH = Path(__file__).resolve().parents[2] / "custom_components" / "edgeverify" / "decisions.py"
_spec = importlib.util.spec_from_file_location("edgeverify_ha_decisions", PATH)
assert _spec is not None and _spec.loader is not None
dec = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = dec  # dataclasses look their module up
_spec.loader.exec_module(dec)

NOW, WALL = 1000.0, 1_700_000_000.0


def sha(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).casefold().encode()).hexdigest()


def event(speaker: Any = "alice", text: Any = "turn on the lights", at: Any = WALL, **extra: Any) -> bytes:
    """What a device publishes on <base>/event for a Wyoming decision (built by the device's own code)."""
    body = {"ok": True, "type": "identify", "speaker": speaker, "score": 0.7 if speaker else 0.2, "threshold": 0.45,
            "same_speaker": bool(speaker), "scores": {"alice": 0.7, "bob": 0.3}}
    if text is not None:
        body["utterance"] = {"transcript_sha256": sha(text), "at": at}
    body.update(extra)
    return json.dumps(event_payload(body, "wyoming")).encode()


def store_with(*payloads: bytes, received: float = NOW, window: float = 15.0) -> Any:
    s = dec.DecisionStore(window)
    for p in payloads:
        d, why = dec.parse_event(p, "kitchen", received)
        assert d is not None, why
        s.add(d)
    return s


def test_hash_is_the_device_contract() -> None:
    assert dec.transcript_hash("  Turn ON\tthe  lights\n") == sha("turn on the lights")
    assert dec.transcript_hash("Straße") == hashlib.sha256("strasse".encode()).hexdigest()  # casefold, not lower


def test_a_matching_fresh_decision_names_the_voice_once() -> None:
    s = store_with(event())
    m = s.match("Turn on the  LIGHTS", NOW + 1, WALL + 1)
    assert m.reason == "recognised" and m.decision.speaker == "alice" and m.decision.source == "wyoming"
    assert s.match("turn on the lights", NOW + 1, WALL + 1).reason == "no_decision"  # consumed


@pytest.mark.parametrize("case,payload,now,wall,reason", [
    ("other words", event(text="open the door"), NOW, WALL, "no_decision"),
    ("no utterance: time alone is not enough", event(text=None), NOW, WALL, "no_decision"),
    ("arrived longer ago than the window", event(), NOW + 16, WALL, "no_decision"),
    ("utterance older than the window (queued message)", event(at=WALL - 16), NOW, WALL, "no_decision"),
    ("utterance from the future", event(at=WALL + 10), NOW, WALL, "no_decision"),
    ("stranger", event(speaker=None), NOW, WALL, "unknown_voice"),
    ("below threshold", event(score=0.3), NOW, WALL, "unknown_voice"),
    ("device error", event(ok=False, error={"code": "audio_error"}), NOW, WALL, "unknown_voice"),
    ("rejected by the gate", event(rejected=True), NOW, WALL, "unknown_voice"),
])
def test_no_voice_without_a_fresh_confident_hash_match(case: str, payload: bytes, now: float, wall: float, reason: str) -> None:
    assert store_with(payload).match("turn on the lights", now, wall).reason == reason, case


def test_disagreeing_devices_name_nobody_agreeing_ones_do() -> None:
    assert store_with(event("alice"), event("bob")).match("turn on the lights", NOW, WALL).reason == "ambiguous"
    assert store_with(event("alice"), event(None)).match("turn on the lights", NOW, WALL).reason == "ambiguous"
    assert store_with(event("alice"), event("alice")).match("turn on the lights", NOW, WALL).decision.speaker == "alice"


def test_the_store_is_bounded() -> None:
    s = dec.DecisionStore(15.0, max_decisions=8)
    for i in range(100):
        d, _ = dec.parse_event(event(text=f"words {i}"), "kitchen", NOW)
        s.add(d)
    assert len(s._recent) == 8
    assert s.match("words 99", NOW, WALL).reason == "recognised" and s.match("words 0", NOW, WALL).reason == "no_decision"


def test_names_come_from_speaker_and_scores_only_when_valid() -> None:
    d, _ = dec.parse_event(event(scores={"bob": 0.3, "../x": 0.1, "a" * 65: 0.1, "carol": "x", "dave.2": 0.0}), "k", NOW)
    assert d.voices == ("alice", "bob", "carol", "dave.2")


HOSTILE = [
    b"", b"x" * (dec.MAX_PAYLOAD + 1), b"\xff\xfe", b"[" * 100000, b"{" * 100000, b"null", b"[]", b"7", b'"s"',
    b'{"event_type": "identified"}', b'{"event_type": "identified", "speaker": 5}',
    b'{"event_type": "identified", "speaker": ".."}', b'{"event_type": ["identified"], "speaker": "alice"}',
    b'{"event_type": "verified", "profile": {"a": 1}}', b'{"event_type": "boom", "speaker": "alice"}',
]


@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_are_refused_with_a_reason(payload: bytes) -> None:
    d, why = dec.parse_event(payload, "kitchen", NOW)
    assert d is None and why


def test_hostile_field_values_never_make_a_voice() -> None:
    cases = [
        {"utterance": {"transcript_sha256": sha("turn on the lights").upper(), "at": WALL}},
        {"utterance": {"transcript_sha256": sha("turn on the lights"), "at": "now"}},
        {"utterance": {"transcript_sha256": sha("turn on the lights"), "at": True}},
        {"utterance": [sha("turn on the lights"), WALL]},
        {"utterance": {"transcript_sha256": sha("turn on the lights"), "at": float("inf")}},
    ]
    for extra in cases:
        d, why = dec.parse_event(event(**extra), "kitchen", NOW)
        assert d is not None, why
        s = dec.DecisionStore(15.0)
        s.add(d)
        assert s.match("turn on the lights", NOW, WALL).decision is None, extra
    d, _ = dec.parse_event(b'{"event_type": "identified", "speaker": "alice", "score": NaN, "threshold": Infinity}', "k", NOW)
    assert d.score is None and d.threshold is None and d.confident  # unusable numbers are dropped, not compared


def test_random_garbage_never_raises() -> None:
    rng = random.Random(18)
    atoms: list[Any] = [None, True, 0, -1, 1e308, "identified", "verified", "alice", "", [], {}, "x" * 300]
    keys = ["event_type", "speaker", "profile", "score", "threshold", "utterance", "transcript_sha256", "at",
            "scores", "ok", "error", "rejected", "source"]

    def value(depth: int) -> Any:
        r = rng.random()
        if depth > 3 or r < 0.5:
            return rng.choice(atoms)
        if r < 0.75:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(keys): value(depth + 1) for _ in range(rng.randrange(6))}

    s = dec.DecisionStore(15.0)
    for _ in range(3000):
        body = {rng.choice(keys): value(0) for _ in range(rng.randrange(8))}
        raw = json.dumps(body).encode() if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        d, _ = dec.parse_event(raw, "kitchen", NOW)
        if d is not None:
            s.add(d)
    s.match("identified", NOW, WALL)
