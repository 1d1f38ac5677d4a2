"""Opt-in check against a real Home Assistant Core (tests/ha/run_ha_check.sh runs it; not part of CI).

1. A private mosquitto; HA Core with its MQTT integration on it (config entry written to .storage) and
   mqtt_statestream, so what HA *shows* comes back over MQTT.
2. edgeverify 0.1's per-entity discovery is published (an upgrade); HA creates those three entities.
3. `python -m edgeverify run` starts (real int8 model, alice/bob enrolled from real recordings) and
   migrates to device-based discovery.
4. Identify/verify requests; each must fire HA's event entity with the right event_type.
5. With the virtual microphone (tests/virtual_mic.py; skipped when unavailable): an HA automation plays the
   user -- sets the "Enroll name" text and "Enroll utterances" number and presses the button; erin speaks
   two sentences into the microphone; HA shows "Enrollment" = enrolled, and her next sentence fires the
   event entity (identified, erin, source microphone).
6. HA is restarted: on its birth message the device re-announces; HA shows the last speaker again.
7. Asserts: one edgeverify device in HA's device registry, its entities (event included) attached to
   it, 0.1's entity ids kept, "Last speaker" shows alice / the no-match value, and no WARNING/ERROR from
   homeassistant.components.mqtt in HA's log (both runs).
Exit code 0 = all good; prints what it saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(HERE))

from broker import Broker, Hub, free_port  # noqa: E402
from ha_config import wait_for, write_config  # noqa: E402
from daemon_process import DaemonProcess, ask  # noqa: E402

from edgeverify.mqtt.ha_discovery import NO_MATCH  # noqa: E402
from edgeverify.app.protocol import encode_request  # noqa: E402

DEV = "hacheck"
SPEECH = Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", REPO.parent / "shared" / "data" / "speech")) / "dev"


def log(msg: str) -> None:
    print(f"[ha-check] {msg}", flush=True)


class Shown:
    """Everything HA re-publishes through mqtt_statestream: {"<domain>.<object_id>": {"state": ..., attr: ...}}."""

    def __init__(self, port: int) -> None:
        self.hub = Hub(port)
        self.entities: dict[str, dict[str, Any]] = {}
        self.history: list[tuple[str, str, Any]] = []
        self.hub.client.on_message = self._on
        self.hub.subscribe("hastate/#")

    def _on(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        entity, key = f"{parts[1]}.{parts[2]}", parts[3]
        try:
            value = json.loads(msg.payload)
        except ValueError:
            value = msg.payload.decode("utf-8", "replace")
        self.entities.setdefault(entity, {})[key] = value
        self.history.append((entity, key, value))

    def of(self, domain: str) -> list[str]:
        return sorted(e for e in self.entities if e.startswith(domain + ".") and DEV in e)


def publish_legacy(port: int) -> None:
    """What edgeverify 0.1 published (per-entity discovery with object_id)."""
    hub = Hub(port)
    base = f"edgeverify/{DEV}"
    device = {"identifiers": [f"edgeverify_{DEV}"], "name": f"edgeverify {DEV}", "manufacturer": "edgeverify",
              "model": "ECAPA-TDNN speaker verification (int8)", "sw_version": "0.1.0"}
    common = {"state_topic": f"{base}/state", "availability_topic": f"{base}/availability",
              "payload_available": "online", "payload_not_available": "offline", "device": device}
    entities = {
        ("binary_sensor", "match"): {"name": "Speaker match", "value_template": "{{ 'ON' if value_json.same_speaker else 'OFF' }}"},
        ("sensor", "speaker"): {"name": "Last speaker", "value_template": "{{ value_json.speaker }}"},
        ("sensor", "score"): {"name": "Last score", "value_template": "{{ value_json.score }}", "state_class": "measurement"},
    }
    for (component, key), cfg in entities.items():
        doc = {**common, **cfg, "unique_id": f"edgeverify_{DEV}_{key}", "object_id": f"edgeverify_{DEV}_{key}"}
        hub.client.publish(f"homeassistant/{component}/edgeverify_{DEV}/{key}/config", json.dumps(doc), qos=1, retain=True).wait_for_publish(3)
    hub.client.publish(f"{base}/availability", "online", qos=1, retain=True).wait_for_publish(3)
    hub.close()


def enroll_profiles(state_dir: Path) -> None:
    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore
    from edgeverify.core.verifier import Verifier

    verifier = Verifier.load("int8")
    store = ProfileStore(state_dir)
    for name, spk in (("alice", "vctk-p225"), ("bob", "vctk-p226")):
        store.enroll(name, [verifier.embed(read_audio(p)) for p in sorted((SPEECH / spk).glob("*.wav"))[:3]], model=verifier.model)


def start_ha(hass: str, work: Path, name: str) -> tuple[subprocess.Popen, Any]:
    out = open(work / f"{name}.out", "wb")
    return subprocess.Popen([hass, "-m", "homeassistant", "-c", str(work / "ha")], stdout=out, stderr=subprocess.STDOUT), out


def stop_ha(ha: subprocess.Popen, out: Any) -> None:
    ha.send_signal(signal.SIGTERM)
    try:
        ha.wait(60)
    except subprocess.TimeoutExpired:
        ha.kill()
    out.close()


def mqtt_complaints(work: Path, skip_lines: int = 0) -> list[str]:
    """WARNING/ERROR lines of HA's mqtt integration in the current log, from line skip_lines on."""
    f = work / "ha" / "home-assistant.log"
    lines = f.read_text().splitlines()[skip_lines:] if f.exists() else []
    return [line for line in lines if (" WARNING " in line or " ERROR " in line) and "homeassistant.components.mqtt" in line]


def enroll_through_ha(shown: Shown, hub: Hub, vm: Any, base: str) -> None:
    """Step 5: the HA automation sets name + count and presses the button; erin speaks into the microphone."""
    enrollment = f"sensor.edgeverify_{DEV}_enrollment"
    wait_for("HA to show the enroll entities", lambda: shown.of("button") and shown.of("text") and enrollment in shown.entities, 30)
    log(f"enroll entities: {shown.of('text') + shown.of('number') + shown.of('button') + [enrollment]}")
    hub.client.publish("hacheck/enroll", b"erin", qos=1).wait_for_publish(3)
    wait_for("HA's enroll button to start a recording", lambda: shown.entities[enrollment].get("state") == "recording", 20)
    log(f"HA pressed the button; {enrollment} = recording")
    erin = sorted((SPEECH / "ls-533").glob("*.wav"))
    for p in erin[:2]:
        vm.play(p)
        time.sleep(0.8)
    state = wait_for("HA to show the enrollment result",
                     lambda: shown.entities[enrollment].get("state") in ("enrolled", "failed") and shown.entities[enrollment], 40)
    assert state["state"] == "enrolled", state
    log(f"{enrollment} = enrolled ({state.get('message')})")
    event = shown.of("event")[0]
    time.sleep(1.0)
    vm.play(erin[4])
    seen = wait_for("the event entity to fire for erin's next sentence",
                    lambda: shown.entities[event].get("source") == "microphone" and shown.entities[event], 20)
    assert seen["event_type"] in ("identified", "identified_erin") and seen["speaker"] == "erin", seen
    # her per-person type arrived with the discovery that HA's enroll button caused
    wait_for("identified_erin", lambda: any(e == event and k == "event_type" and v == "identified_erin"
                                            for e, k, v in shown.history), 10)
    log(f"event entity fired: {seen['event_type']} {seen['speaker']} (source {seen['source']})")


def main() -> int:
    hass = os.environ.get("HA_PYTHON") or sys.exit("set HA_PYTHON to the python of a venv with homeassistant (run_ha_check.sh does)")
    work = Path(tempfile.mkdtemp(prefix="edgeverify-ha-"))
    log(f"work dir {work}")
    with Broker() as broker:
        http_port = free_port()
        write_config(work / "ha", broker.port, http_port)
        shown = Shown(broker.port)
        publish_legacy(broker.port)
        ha, ha_log = start_ha(hass, work, "hass1")
        daemon, vm = None, None
        try:
            version = subprocess.run([hass, "-c", "import homeassistant.const as c; print(c.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
            log(f"Home Assistant Core {version} starting")
            wait_for("HA to show 0.1's entities", lambda: f"sensor.edgeverify_{DEV}_speaker" in shown.entities, 300)
            log(f"HA shows the 0.1 entities: {shown.of('sensor') + shown.of('binary_sensor')}")
            # what 0.1's payloads cost (HA >= 2025.10: one object_id deprecation warning per entity)
            before = mqtt_complaints(work)
            log(f"0.1's per-entity discovery drew {len(before)} warning(s) from HA's mqtt integration"
                + "".join(f"\n    {line[:220]}" for line in before[:3]))
            daemon_from = len((work / "ha" / "home-assistant.log").read_text().splitlines())
            state_dir = work / "state"
            enroll_profiles(state_dir)
            model = str(REPO / "models" / "ecapa-int8.onnx")
            import virtual_mic

            reason = virtual_mic.available()
            # the event shapes are driven by MQTT requests here, so this hub trusts its requesters
            extra: dict[str, Any] = {"admin": {"enabled": True}, "homeassistant": {"trust_mqtt_requests": True}}
            if reason:
                log(f"virtual microphone unavailable ({reason}): enrollment through HA is not checked")
            else:
                vm = virtual_mic.VirtualMic(16000).start()
                extra["microphone"] = {"enabled": True, "device": "pulse", "mode": "identify", "max_utterance_s": 8.0}
            daemon = DaemonProcess(work, broker.port, Path(model), state_dir, DEV, extra=extra,
                                   env_extra=vm.env if vm is not None else None)
            wait_for("HA to show the event entity", lambda: shown.of("event"), 60)
            event = shown.of("event")[0]
            # subscribed and available: an event sent before HA subscribed to its topic is lost (not retained)
            wait_for("the event entity to be available", lambda: shown.entities[event].get("state") not in (None, "unavailable"), 60)
            log(f"event entity {event}: {shown.entities[event]}")
            hub = Hub(broker.port)
            base = daemon.base
            alice, stranger = sorted((SPEECH / "vctk-p225").glob("*.wav")), sorted((SPEECH / "ls-533").glob("*.wav"))
            steps = [
                (encode_request("identify", ("a.wav", alice[6].read_bytes()), request_id="h1"), "identified"),
                (encode_request("identify", ("s.wav", stranger[2].read_bytes()), request_id="h2"), "unknown_speaker"),
                (encode_request("verify_profile", ("a.wav", alice[7].read_bytes()), profile="alice", request_id="h3"), "verified"),
                (encode_request("verify_profile", ("a.wav", alice[7].read_bytes()), profile="bob", request_id="h4"), "rejected"),
                (encode_request("identify", ("a.wav", alice[5].read_bytes()), request_id="h5"), "identified"),
            ]
            fired = []
            for payload, expected in steps:
                r = ask(hub, f"{base}/request", payload, timeout=30)
                assert r["ok"], r
                seen = wait_for(f"HA's event entity to fire for {r['request_id']}",
                                lambda: shown.entities.get(event, {}).get("request_id") == r["request_id"] and shown.entities[event], 20)
                assert seen["event_type"] in (expected, f"identified_{seen.get('speaker')}"), (expected, seen)
                if expected == "identified":  # then the per-person type, for automations without templates
                    wait_for(f"identified_{seen['speaker']} for {r['request_id']}", lambda: any(
                        e == event and k == "event_type" and v == f"identified_{seen['speaker']}" for e, k, v in shown.history), 10)
                fired.append((r["request_id"], expected, seen.get("speaker"), seen.get("source")))
            alice_events = sum(1 for e, k, v in shown.history if e == event and k == "event_type" and v == "identified_alice")
            assert alice_events >= 2, alice_events  # h1 and h5: an attribute trigger `to: identified_alice` fires twice
            log(f"event entity fired: {fired}; identified_alice shown {alice_events} times; per-person types offered: "
                f"{[t for t in shown.entities[event].get('event_types', []) if t.startswith('identified_')]}")
            memory, status = f"sensor.edgeverify_{DEV}_memory", f"sensor.edgeverify_{DEV}_service_status"
            wait_for("HA to show the health sensors", lambda: shown.entities.get(memory, {}).get("state") not in (None, "unknown", "unavailable"), 30)
            log(f"health: {memory} = {shown.entities[memory]['state']} MB, {status} = {shown.entities.get(status, {}).get('state')}, "
                f"p50 = {shown.entities.get(f'sensor.edgeverify_{DEV}_decision_latency_p50', {}).get('state')} ms")
            speaker = f"sensor.edgeverify_{DEV}_speaker"
            wait_for("Last speaker = alice", lambda: shown.entities.get(speaker, {}).get("state") == "alice", 10)
            log(f"{speaker} = {shown.entities[speaker]['state']!r} (after h2 it was {NO_MATCH!r}: "
                f"{any(e == speaker and k == 'state' and v == NO_MATCH for e, k, v in shown.history)})")
            assert any(e == speaker and k == "state" and v == NO_MATCH for e, k, v in shown.history)
            match = f"binary_sensor.edgeverify_{DEV}_match"
            log(f"{match} = {shown.entities.get(match, {}).get('state')!r}")
            if vm is not None:
                enroll_through_ha(shown, hub, vm, base)
            hub.close()
            p50 = f"sensor.edgeverify_{DEV}_decision_latency_p50"
            wait_for("HA to show the decision latency", lambda: shown.entities.get(p50, {}).get("state") not in (None, "unknown", "unavailable"), 20)
            log(f"{p50} = {shown.entities[p50]['state']} ms, {status} = {shown.entities[status]['state']}, "
                f"decisions per hour = {shown.entities.get(f'sensor.edgeverify_{DEV}_decisions_per_hour', {}).get('state')}")
            daemon.stop()  # a clean stop: HA shows "stopped" (a crash would leave it unavailable)
            wait_for("HA to show the service status stopped", lambda: shown.entities.get(status, {}).get("state") == "stopped", 20)
            wait_for("the other entities to go unavailable", lambda: shown.entities.get(memory, {}).get("state") == "unavailable", 20)
            log(f"after a clean stop: {status} = stopped, {memory} = unavailable")
            daemon = DaemonProcess(work, broker.port, Path(model), state_dir, DEV, extra=extra,
                                   env_extra=vm.env if vm is not None else None)
            wait_for("HA to show the service running again", lambda: shown.entities.get(status, {}).get("state") == "running", 20)
            daemon.kill()  # a crash: only the last will speaks
            wait_for("HA to show the crashed service unavailable", lambda: shown.entities.get(status, {}).get("state") == "unavailable", 20)
            log(f"after a crash (SIGKILL): {status} = unavailable (not stopped)")
            daemon = DaemonProcess(work, broker.port, Path(model), state_dir, DEV, extra=extra,
                                   env_extra=vm.env if vm is not None else None)
            wait_for("HA to show the service running again", lambda: shown.entities.get(status, {}).get("state") == "running", 20)
            stop_ha(ha, ha_log)
            first_run = mqtt_complaints(work, daemon_from)  # from the moment edgeverify runs
            (work / "ha" / "home-assistant.log").rename(work / "ha" / "home-assistant.log.run1")
            shown.entities.clear()
            ha, ha_log = start_ha(hass, work, "hass2")
            last = wait_for("HA (restarted) to show the last speaker again",
                            lambda: shown.entities.get(speaker, {}).get("state") not in (None, "unavailable", "unknown")
                            and shown.entities[speaker]["state"], 300)
            log(f"after an HA restart: {speaker} = {last!r}, event entity {shown.of('event')}")
            wait_for("the device to re-announce on HA's birth message",
                     lambda: "re-publishing discovery" in daemon.log_path.read_text(), 30)
            log("device re-announced on HA's birth message")
        finally:
            if daemon is not None:
                daemon.stop()
            if vm is not None:
                vm.stop()
            stop_ha(ha, ha_log)
            shown.hub.close()
        # HA writes its registries on shutdown
        devices = json.loads((work / "ha" / ".storage" / "core.device_registry").read_text())["data"]["devices"]
        ours = [d for d in devices if any(i[1] == f"edgeverify_{DEV}" for i in d["identifiers"])]
        assert len(ours) == 1, ours
        entities = json.loads((work / "ha" / ".storage" / "core.entity_registry").read_text())["data"]["entities"]
        mine = sorted(e["entity_id"] for e in entities if e.get("device_id") == ours[0]["id"])
        log(f"one device {ours[0]['name']!r} ({ours[0]['model']}) with {len(mine)} entities: {mine}")
        for kept in (f"sensor.edgeverify_{DEV}_speaker", f"sensor.edgeverify_{DEV}_score", f"binary_sensor.edgeverify_{DEV}_match"):
            assert kept in mine, kept
        assert any(e.startswith("event.") for e in mine)
        from edgeverify.mqtt.ha_discovery import Topics, device_discovery

        from edgeverify.app.health import cpu_temperature_zone

        cmps = device_discovery(Topics("x", "homeassistant", DEV), "int8", vm is not None, admin_controls=True,
                                cpu_temperature=cpu_temperature_zone() is not None)["cmps"]
        asked = sorted(c["default_entity_id"] for c in cmps.values() if "default_entity_id" in c)
        assert mine == asked, (mine, asked)  # HA < 2025.10 derives exactly the ids newer HA is asked for
        bad = first_run + mqtt_complaints(work)
        for line in bad:
            log(f"HA: {line}")
        assert not bad, f"{len(bad)} warning(s)/error(s) from HA's mqtt integration"
        log("OK: no warnings or errors from homeassistant.components.mqtt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
