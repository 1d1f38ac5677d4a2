"""ha_discovery's pure builders: event types and per-kind state for every decision shape (no broker)."""

from __future__ import annotations

import json
import re

from edgeverify.mqtt.ha_discovery import NO_MATCH, Topics, device_discovery, discovery_messages, event_type, kind_state, last_state

T = Topics("ev/dev1", "homeassistant", "dev1")


def test_event_types_for_every_decision_shape() -> None:
    assert event_type({"type": "identify", "speaker": "alice", "same_speaker": True}) == "identified"
    assert event_type({"type": "identify", "speaker": None, "same_speaker": False}) == "unknown_speaker"
    assert event_type({"type": "microphone", "speaker": None, "scores": {}}) == "unknown_speaker"
    assert event_type({"type": "verify", "same_speaker": True}) == "verified"  # two clips, no profile
    assert event_type({"type": "verify_profile", "profile": "bob", "same_speaker": False}) == "rejected"
    assert event_type({"type": "microphone", "profile": "bob", "same_speaker": True}) == "verified"  # mode verify:bob
    assert event_type({"type": "capture", "profile": "bob", "same_speaker": True}) == "verified"


def test_per_kind_state_and_no_match_value() -> None:
    kind, st = kind_state({"type": "identify", "speaker": None, "score": 0.1, "llr": -3.2}, "wyoming")
    assert kind == "identify" and st["speaker"] == NO_MATCH != "unknown" and st["identified"] is False
    assert st["llr"] == -3.2 and st["source"] == "wyoming" and st["timestamp"]  # filled in when missing
    kind, st = kind_state({"type": "verify_profile", "profile": "bob", "same_speaker": True, "score": 0.8}, "mqtt")
    assert kind == "verify" and st["match"] is True and st["profile"] == "bob" and "speaker" not in st
    assert last_state({"type": "verify_profile", "profile": "bob", "same_speaker": True}, "mqtt")["speaker"] == "bob"


def test_discovery_off_and_admin_entities() -> None:
    assert discovery_messages(Topics("ev/dev1", None, "dev1"), {}, migrate=True) == []
    with_admin = device_discovery(T, "int8", admin_entities=True)["cmps"]
    assert with_admin["enroll"]["command_topic"] == "ev/dev1/admin/ha/enroll"
    assert all(t.startswith("ev/dev1/admin/") for c in with_admin.values() for k, t in c.items() if k == "command_topic")
    msgs = discovery_messages(T, device_discovery(T, "int8", False), migrate=False)
    assert [m[0] for m in msgs] == ["homeassistant/device/edgeverify_dev1/config"] and msgs[0][2] is True
    json.loads(msgs[0][1])


def test_person_event_types_are_stable_slugs() -> None:
    from edgeverify.mqtt.ha_discovery import person_event_type, person_slug

    assert person_event_type("alice") == "identified_alice" and person_slug("bob_2") == "bob_2"
    others = [person_slug(n) for n in ("Alice", "mary-ann", "mary_ann", "mary.ann", "Mary-Ann", "..", "-")]
    assert len(set(others)) == len(others)  # never two profiles on one event type
    assert all(re.fullmatch(r"[a-z0-9_]+", s) for s in others)  # safe in an event type and an automation
    assert person_slug("mary-ann") == person_slug("mary-ann")  # the same every time (automations keep working)
    assert person_slug("mary-ann").startswith("mary_ann_") and person_slug("..").startswith("x_")


def test_status_sensor_stays_available_after_a_clean_stop() -> None:
    """The status sensor's availability: online, or a clean `stopped`/`restarting` -- not a crash."""
    status = device_discovery(T, "int8", False)["cmps"]["status"]
    assert status["availability_mode"] == "any" and status["state_topic"] == "ev/dev1/status"
    template = status["availability"][1]["value_template"]  # rendered by a real HA in tests/ha/
    assert status["availability"][1]["topic"] == "ev/dev1/status" and "'stopped'" in template and "'restarting'" in template
    assert status["availability"][0]["topic"] == "ev/dev1/availability"
