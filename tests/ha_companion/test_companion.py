"""The companion integration in a real Home Assistant Core (opt-in: tests/ha_companion/run.sh).

One HA (from .venv-ha, made by setup_ha.sh) with its MQTT integration on a private mosquitto, the
integration from custom_components/edgeverify, persons Alice and Bob (with HA users) and Carol (without).
The test plays the devices: it publishes what an edgeverify device publishes (device-based discovery,
retained availability, decision events built with edgeverify.mqtt.ha_discovery, Wyoming decisions with
`utterance` per the device contract). It sets the integration up through HA's REST config/options flows
(as HA's UI does), asks Assist through `conversation.process` with no logged-in user (a satellite's
request has none), and reads what the wrapped agent -- HA's own, behind ours -- saw via a conversation
trigger. The tests run in order and share the one HA.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from harness import HA, HA_PYTHON, ha_version, wait_for, write_ha_config

if not HA_PYTHON.exists():
    pytest.skip("no Home Assistant venv (tests/ha_companion/setup_ha.sh makes .venv-ha; run.sh runs this test)",
                allow_module_level=True)

from broker import Broker, Hub, free_port  # noqa: E402

from edgeverify.mqtt.ha_discovery import Topics, device_discovery, discovery_messages, event_payload  # noqa: E402

AGENT = "conversation.edgeverify"
WINDOW_S = 5
HEARD_FOR_S = 10


def transcript_sha256(text: str) -> str:
    """The device contract, written out here on purpose (not imported from the integration)."""
    return hashlib.sha256(" ".join(text.split()).casefold().encode("utf-8")).hexdigest()


class Env:
    def __init__(self, broker: Broker, ha: HA, users: dict[str, str], work: Path) -> None:
        self.broker, self.ha, self.users, self.work = broker, ha, users, work
        self.hub = Hub(broker.port)
        self.hub.subscribe("hatest/answer")
        self.hub.subscribe("homeassistant/status")
        self.entry_id = ""

    # -- the device side --------------------------------------------------------------------------

    def announce(self, device: str, discovery: bool, voices: tuple[str, ...] = ()) -> None:
        """Availability and (optionally) HA discovery; `voices` adds per-person event types to the event
        entity (identified_<name>), as a device that offers them does."""
        t = Topics(f"edgeverify/{device}", "homeassistant", device)
        if discovery:
            config = device_discovery(t, "int8", False)
            config["cmps"]["event"]["event_types"] += [f"identified_{v}" for v in voices]
            for topic, payload, retain in discovery_messages(t, config, migrate=False):
                self.hub.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        self.hub.client.publish(t.availability, b"online", qos=1, retain=True).wait_for_publish(5)

    def decide(self, device: str, speaker: Optional[str], text: Optional[str] = None, at: Optional[float] = None,
               sha: Optional[str] = None, source: str = "wyoming", score: Optional[float] = None) -> None:
        """A decision event as the device publishes it (identify response + event fields [+ utterance])."""
        scores = {"alice": 0.31, "bob": 0.22, "dave": 0.12}
        if speaker:
            scores[speaker] = 0.71
        body: dict[str, Any] = {
            "ok": True, "type": "identify", "request_id": uuid.uuid4().hex[:8], "analyzer_id": device,
            "speaker": speaker, "same_speaker": bool(speaker), "score": score if score is not None else max(scores.values()),
            "threshold": 0.45, "scores": dict(sorted(scores.items(), key=lambda kv: -kv[1])),
            "event": "identified" if speaker else "not-identified",
        }
        if text is not None or sha is not None:
            body["utterance"] = {"transcript_sha256": sha or transcript_sha256(text or ""), "at": time.time() if at is None else at}
        self.raw(f"edgeverify/{device}/event", json.dumps(event_payload(body, source)).encode())

    def raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.hub.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    # -- HA's side --------------------------------------------------------------------------------

    def converse(self, text: str, agent: str = AGENT, meanwhile: Optional[Callable[[], None]] = None,
                 conversation_id: Optional[str] = None) -> str:
        """Assist with no logged-in user (an automation calls conversation.process); the spoken answer."""
        rid = uuid.uuid4().hex
        msg = {"id": rid, "text": text, "agent": agent, "conversation_id": conversation_id or uuid.uuid4().hex}
        self.hub.publish("hatest/converse", json.dumps(msg).encode())
        if meanwhile is not None:
            meanwhile()
        answer = self.hub.wait(lambda m: m.payload.startswith(f"{rid}|".encode()), timeout=30)
        return answer.payload.decode().split("|", 2)[2]

    def who(self, text: str = "who am i", **kw: Any) -> tuple[str, str]:
        """(user id, extra system prompt) that HA's own agent saw behind ours."""
        speech = self.converse(text, **kw)
        assert speech.startswith("user="), speech
        user, prompt = speech[len("user="):].split("|prompt=", 1)
        return user, prompt

    def start_ha(self) -> None:
        """Start HA and wait until its MQTT client has subscribed (its birth message comes after that; the
        REST API says RUNNING earlier, and a message published before the subscriptions is lost)."""
        self.ha.start()
        self.ha.wait_running()
        self.hub.wait(lambda m: m.topic == "homeassistant/status" and m.payload == b"online", timeout=60)

    def flow(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.ha.post(path, body)


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest) -> Any:
    # not pytest's tmp_path: other pytest runs of the same user rotate those away; kept when a test failed
    work = Path(tempfile.mkdtemp(prefix="edgeverify-ha-companion-"))
    with Broker() as broker:
        http_port = free_port()
        users = write_ha_config(work / "ha", broker.port, http_port)
        ha = HA(work / "ha", http_port, users.token)
        e = Env(broker, ha, users.ids, work)
        # what is on the broker before HA starts: two edgeverify devices (kitchen with HA discovery,
        # hall with availability only) and someone else's device
        e.announce("kitchen", discovery=True)
        e.announce("hall", discovery=False)
        e.raw("homeassistant/device/lamp1/config", json.dumps({
            "dev": {"ids": ["lamp1"], "name": "Lamp"}, "o": {"name": "zigbee2mqtt"},
            "cmps": {"t": {"p": "sensor", "unique_id": "lamp1_t", "state_topic": "z2m/lamp1"}}}).encode(), retain=True)
        e.raw("edgeverify/not a device/availability", b"online", retain=True)
        started = time.monotonic()
        try:
            e.start_ha()
            print(f"\nHome Assistant Core {ha_version()} running after {time.monotonic() - started:.1f} s ({work})")
            yield e
        finally:
            e.hub.close()
            ha.stop()
            if request.session.testsfailed:
                print(f"\nkept {work} (HA's config dir and log: ha/home-assistant.log)")
            else:
                shutil.rmtree(work, ignore_errors=True)


def test_01_discovered_and_config_flow(env: Env) -> None:
    # HA's MQTT integration offers the integration on its own (manifest `mqtt`: edgeverify/+/availability)
    offered = wait_for("HA to offer the discovered device",
                       lambda: [f for f in env.ha.ws({"type": "config_entries/flow/progress"}) if f["handler"] == "edgeverify"], 20)
    assert offered[0]["context"]["source"] == "mqtt", offered
    form = env.flow("/api/config/config_entries/flow", {"handler": "edgeverify", "show_advanced_options": False})
    assert form["type"] == "form" and form["step_id"] == "user", form
    fields = {f["name"]: f for f in form["data_schema"]}
    listed = {o["value"]: o["label"] for o in fields["devices"]["selector"]["select"]["options"]}
    assert set(listed) == {"edgeverify/kitchen", "edgeverify/hall"}, listed  # not the lamp, not "not a device"
    assert listed["edgeverify/kitchen"] == "edgeverify kitchen (edgeverify/kitchen)", listed
    settings = {"devices": ["edgeverify/kitchen", "edgeverify/hall"], "agent_id": "conversation.home_assistant",
                "unknown_voice": "pass_through", "window_s": WINDOW_S, "wait_s": 1.0, "heard_for_s": HEARD_FOR_S}
    bad = env.flow(f"/api/config/config_entries/flow/{form['flow_id']}",
                   {**settings, "devices": ["edgeverify/#", "edgeverify/kitchen"], "agent_id": "conversation.nope"})
    assert bad["type"] == "form" and bad["errors"] == {"devices": "invalid_device", "agent_id": "invalid_agent"}, bad
    with pytest.raises(urllib.error.HTTPError) as refused:  # HA's number selector refuses it before our check
        env.flow(f"/api/config/config_entries/flow/{form['flow_id']}", {**settings, "window_s": 1e300})
    assert refused.value.code == 400
    done = env.flow(f"/api/config/config_entries/flow/{form['flow_id']}", settings)
    assert done["type"] == "create_entry", done
    env.entry_id = done["result"]["entry_id"]
    wait_for("the voice agent entity", lambda: env.ha.state(AGENT), 20)
    assert not [f for f in env.ha.ws({"type": "config_entries/flow/progress"}) if f["handler"] == "edgeverify"]


def _options(env: Env, settings: dict[str, Any], voices: dict[str, str]) -> list[str]:
    form = env.flow("/api/config/config_entries/options/flow", {"handler": env.entry_id})
    assert form["step_id"] == "init", form
    step = env.flow(f"/api/config/config_entries/options/flow/{form['flow_id']}", settings)
    assert step["type"] == "form" and step["step_id"] == "voices", step
    names = [f["name"] for f in step["data_schema"]]
    done = env.flow(f"/api/config/config_entries/options/flow/{form['flow_id']}", voices)
    assert done["type"] == "create_entry", done
    time.sleep(1.0)  # the entry reloads
    wait_for("the voice agent after the reload", lambda: (env.ha.state(AGENT) or {}).get("state") != "unavailable", 20)
    return names


SETTINGS = {"devices": ["edgeverify/kitchen", "edgeverify/hall"], "agent_id": "conversation.home_assistant",
            "unknown_voice": "pass_through", "window_s": WINDOW_S, "wait_s": 1.0, "heard_for_s": HEARD_FOR_S}


def test_02_options_map_voices_to_persons(env: Env) -> None:
    # the devices' decisions name their voices (speaker, scores), and so may the event entity's
    # per-person event types: the mapping form lists them
    env.decide("kitchen", "alice", source="microphone")
    env.decide("hall", "dave", source="mqtt")
    env.announce("kitchen", discovery=True, voices=("erin",))
    time.sleep(0.5)
    names = _options(env, SETTINGS, {"alice": "person.alice", "bob": "person.bob",
                                     "new voice": "carol", "new voice person": "person.carol"})
    assert {"alice", "bob", "dave", "erin"} <= set(names) and "new voice" in names, names
    entry = [e for e in env.ha.get("/api/config/config_entries/entry") if e["entry_id"] == env.entry_id][0]
    assert entry["state"] == "loaded", entry
    for person in ("alice", "bob", "carol"):
        wait_for(f"binary_sensor.edgeverify_{person}_heard", lambda: env.ha.state(f"binary_sensor.edgeverify_{person}_heard"), 20)


def test_03_enrolled_voice_reaches_the_agent_as_its_person(env: Env) -> None:
    env.decide("kitchen", "alice", "Who am I")
    user, prompt = env.who("who  am i")  # HA's text differs in case and spacing only
    assert user == env.users["alice"], (user, env.users)
    assert "Alice" in prompt, prompt
    env.decide("hall", "bob", "who am i")
    assert env.who()[0] == env.users["bob"]


def test_04_no_user_for_stranger_stale_mismatch_unmapped_or_replay(env: Env) -> None:
    cases: list[tuple[str, Callable[[], None]]] = [
        ("stranger", lambda: env.decide("kitchen", None, "who am i")),
        ("hash of other words", lambda: env.decide("kitchen", "alice", "what time is it")),
        ("stale utterance time", lambda: env.decide("kitchen", "alice", "who am i", at=time.time() - 60)),
        ("future utterance time", lambda: env.decide("kitchen", "alice", "who am i", at=time.time() + 30)),
        ("enrolled, not mapped", lambda: env.decide("kitchen", "dave", "who am i")),
        ("below the device's threshold", lambda: env.decide("kitchen", "alice", "who am i", score=0.2)),
        ("no utterance (time alone)", lambda: env.decide("kitchen", "alice")),
        ("two devices disagree", lambda: (env.decide("kitchen", "alice", "who am i"), env.decide("hall", "bob", "who am i"))),
        ("not a configured device", lambda: env.raw("edgeverify/garage/event", json.dumps(event_payload(
            {"ok": True, "type": "identify", "speaker": "alice", "score": 0.7, "threshold": 0.4,
             "utterance": {"transcript_sha256": transcript_sha256("who am i"), "at": time.time()}}, "wyoming")).encode())),
    ]
    for name, publish in cases:
        publish()
        user, prompt = env.who()
        assert (user, prompt) == ("", ""), (name, user, prompt)
    # a decision attributes one request only
    env.decide("kitchen", "alice", "who am i")
    assert env.who()[0] == env.users["alice"]
    assert env.who()[0] == "", "the same decision attributed a second request"
    # older than the window (arrived WINDOW_S + 1 s before the request)
    env.decide("kitchen", "alice", "who am i")
    time.sleep(WINDOW_S + 1)
    assert env.who()[0] == ""


def test_05_decision_arriving_after_the_request_still_counts(env: Env) -> None:
    user, _ = env.who(meanwhile=lambda: (time.sleep(0.4), env.decide("hall", "bob", "who am i")))
    assert user == env.users["bob"]


def test_06_person_without_user_is_named_not_logged_in(env: Env) -> None:
    env.decide("kitchen", "carol", "who am i")
    user, prompt = env.who()
    assert user == "" and "Carol" in prompt, (user, prompt)


def test_07_follow_up_turn_withdraws_the_speaker(env: Env) -> None:
    cid = uuid.uuid4().hex
    env.decide("kitchen", "alice", "who am i")
    assert "Alice" in env.who(conversation_id=cid)[1]
    user, prompt = env.who(conversation_id=cid)  # next turn, nobody recognised
    assert user == "" and "not recognised" in prompt and "Alice" not in prompt, prompt


def test_08_hostile_payloads_change_nothing(env: Env) -> None:
    good = json.loads(json.dumps(event_payload({"ok": True, "type": "identify", "speaker": "alice", "score": 0.7,
                                                "threshold": 0.4}, "wyoming")))
    sha = transcript_sha256("who am i")
    hostile: list[bytes] = [
        b"x" * (1024 * 1024), b"\xff\xfe\x00", b"[" * 200000, b"null", b"[]", b'"identified"', b"{}",
        json.dumps({**good, "speaker": 123, "utterance": {"transcript_sha256": sha, "at": time.time()}}).encode(),
        json.dumps({**good, "speaker": "../../etc", "utterance": {"transcript_sha256": sha, "at": time.time()}}).encode(),
        json.dumps({**good, "speaker": "a" * 10000, "utterance": {"transcript_sha256": sha, "at": time.time()}}).encode(),
        json.dumps({**good, "utterance": {"transcript_sha256": sha.upper(), "at": time.time()}}).encode(),
        json.dumps({**good, "utterance": {"transcript_sha256": sha, "at": "now"}}).encode(),
        json.dumps({**good, "utterance": [sha, time.time()]}).encode(),
        json.dumps({**good, "source": {"x": 1}, "utterance": {"transcript_sha256": "0" * 64, "at": time.time()}}).encode(),
        json.dumps({**good, "event_type": ["identified"], "utterance": {"transcript_sha256": sha, "at": time.time()}}).encode(),
        json.dumps({**good, "score": "high", "threshold": None, "utterance": {"transcript_sha256": sha, "at": 1e999}}).encode(),
        json.dumps({**good, "scores": {f"n{i}": i for i in range(3000)}}).encode(),
        b'{"event_type": "identified", "speaker": "alice", "score": NaN, "utterance": {"transcript_sha256": "'
        + sha.encode() + b'", "at": Infinity}}',
    ]
    for payload in hostile:
        env.raw("edgeverify/hall/event", payload)  # hall: no HA entity reads its events, only the integration
    env.raw("edgeverify/hall/event", b"{" * 1000, retain=True)
    env.raw("edgeverify/hall/diagnostics", b"[" * 200000)
    assert env.who()[0] == ""
    assert env.ha.state(AGENT)["attributes"]["ignored_messages"] >= 11  # the ones that are no decision at all
    env.decide("hall", "alice", "who am i")
    assert env.who()[0] == env.users["alice"]
    entry = [e for e in env.ha.get("/api/config/config_entries/entry") if e["entry_id"] == env.entry_id][0]
    assert entry["state"] == "loaded", entry


def test_08b_a_device_that_does_not_answer_is_not_asked_after_every_stranger(env: Env) -> None:
    """The test's devices answer no admin requests: the companion asked for the inbox when they came online,
    the Voice inbox sensor says why it is unknown, and decisions that named nobody (each may have added to
    the device's inbox) do not make it ask again and again."""
    inbox = wait_for("the inbox sensor to say why", lambda: (s := env.ha.state("sensor.edgeverify_voice_inbox"))
                     and "did not answer" in s["attributes"]["devices"].get("kitchen", "") and s, 40)
    assert inbox["state"] == "unknown" and inbox["attributes"]["entries"] == [], inbox
    env.hub.subscribe("edgeverify/+/admin/request")
    for i in range(8):
        env.decide("kitchen", None, f"stranger number {i}")
    time.sleep(2.5)  # the companion waits 1 s to gather a burst before it asks
    asked = []
    while not env.hub.messages.empty():
        if (m := env.hub.messages.get()).topic.endswith("/admin/request"):
            asked.append((m.topic, m.payload))
    assert asked == [], asked


def test_09_heard_sensor_turns_on_and_off_by_itself(env: Env) -> None:
    sensor = "binary_sensor.edgeverify_bob_heard"
    before = env.ha.state(sensor)["attributes"].get("last_heard")
    env.decide("kitchen", "bob", source="microphone")  # any recognised decision counts, not only Assist
    on = wait_for("Bob heard = on", lambda: (s := env.ha.state(sensor)) and s["state"] == "on"
                  and s["attributes"].get("last_heard") != before and s, 10)
    assert on["attributes"]["voice"] == "bob" and on["attributes"]["device"] == "kitchen", on
    since = time.monotonic()
    off = wait_for("Bob heard = off", lambda: (s := env.ha.state(sensor)) and s["state"] == "off" and s, HEARD_FOR_S + 10)
    took = time.monotonic() - since
    assert HEARD_FOR_S - 2 <= took <= HEARD_FOR_S + 3, took
    assert off["attributes"]["last_heard"], off
    assert env.ha.state("binary_sensor.edgeverify_alice_heard")["attributes"]["person"] == "person.alice"


def test_10_logged_in_user_is_kept(env: Env) -> None:
    env.decide("kitchen", "alice", "who am i")
    r = env.ha.post("/api/conversation/process", {"text": "who am i", "agent_id": AGENT})
    speech = r["response"]["speech"]["plain"]["speech"]
    tester = [u for n, u in env.users.items() if n == "tester"][0]
    assert speech.startswith(f"user={tester}|"), speech


def test_10b_in_an_assist_pipeline(env: Env) -> None:
    """An Assist pipeline (run from HA's websocket API, as HA's Assist dialog does: so with the logged-in
    tester as its user) with this agent as its conversation agent: the text reaches HA's own agent behind
    ours through the pipeline's chat log, and the pipeline itself answers sentence triggers before any
    conversation agent is asked (what docs/home-assistant-companion.md says HA does)."""
    pipeline = env.ha.ws({"type": "assist_pipeline/pipeline/create", "name": "voice", "language": "en",
                          "conversation_engine": AGENT, "conversation_language": "en", "stt_engine": None,
                          "stt_language": None, "tts_engine": None, "tts_language": None, "tts_voice": None,
                          "wake_word_entity": None, "wake_word_id": None, "prefer_local_intents": False})
    def run(text: str) -> dict[str, Any]:
        events = env.ha.ws({"type": "assist_pipeline/run", "start_stage": "intent", "end_stage": "intent",
                            "input": {"text": text}, "pipeline": pipeline["id"]})
        assert [e["type"] for e in events if e["type"] in ("error",)] == [], events
        start = [e for e in events if e["type"] == "intent-start"][0]["data"]
        assert start["engine"] == AGENT, start
        return [e for e in events if e["type"] == "intent-end"][0]["data"]["intent_output"]
    last_activity = env.ha.state(AGENT)["state"]  # a conversation entity's state: when it last processed
    out = run("who am i")  # a sentence trigger: the pipeline answers it, no conversation agent is asked
    assert out["response"]["speech"]["plain"]["speech"].startswith(f"user={env.users['tester']}|prompt="), out
    time.sleep(0.5)
    assert env.ha.state(AGENT)["state"] == last_activity
    out = run("turn the moon purple")  # no trigger: HA's own agent, reached through ours, does not know it
    assert out["response"]["response_type"] == "error", out
    wait_for("the agent's last activity", lambda: env.ha.state(AGENT)["state"] != last_activity, 5)


def test_11_refuse_unknown_voices(env: Env) -> None:
    form = env.flow("/api/config/config_entries/options/flow", {"handler": env.entry_id})
    itself = env.flow(f"/api/config/config_entries/options/flow/{form['flow_id']}", {**SETTINGS, "agent_id": AGENT})
    assert itself["type"] == "form" and itself["errors"] == {"agent_id": "invalid_agent"}, itself  # not itself
    _options(env, {**SETTINGS, "unknown_voice": "refuse"},
             {"alice": "person.alice", "bob": "person.bob", "carol": "person.carol", "dave": "person.ghost"})
    env.decide("kitchen", None, "who am i")
    assert env.converse("who am i") == "Sorry, I don't know your voice."
    env.decide("kitchen", "dave", "who am i")  # mapped to a person HA no longer has
    assert env.converse("who am i") == "Sorry, I don't know your voice."
    env.decide("kitchen", "alice", "who am i")
    assert env.who()[0] == env.users["alice"]


def test_12_restart_keeps_setup_and_last_heard(env: Env) -> None:
    sensor = "binary_sensor.edgeverify_alice_heard"
    before = env.ha.state(sensor)["attributes"]["last_heard"]
    assert before
    env.ha.stop()
    env.start_ha()
    after = wait_for("Alice heard after the restart", lambda: (s := env.ha.state(sensor)) and s["state"] != "unavailable" and s, 30)
    assert after["attributes"]["last_heard"] == before, (before, after)
    env.decide("kitchen", "alice", "who am i")
    assert env.who()[0] == env.users["alice"]


def test_13_no_warnings_from_integrations(env: Env) -> None:
    """WARNING/ERROR lines from HA's integrations or ours (HA's own notices about a custom integration and
    about --skip-pip come from its loader and bootstrap, not from an integration)."""
    lines = env.ha.log_lines()
    bad = [line for line in lines if (" WARNING " in line or " ERROR " in line)
           and ("[homeassistant.components." in line or "[custom_components." in line)]
    others = [line for line in lines if (" WARNING " in line or " ERROR " in line) and line not in bad]
    for line in others:
        print(f"HA (not an integration): {line[:200]}")
    assert not bad, "\n".join(bad)
    assert any("custom_components.edgeverify" in line for line in lines), "the integration's debug log is missing"
