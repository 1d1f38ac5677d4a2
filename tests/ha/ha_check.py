"""Opt-in check against a real Home Assistant Core (tests/ha/run_ha_check.sh runs it; not part of CI).

1. A private mosquitto; HA Core with its MQTT integration on it (config entry written to .storage) and
   mqtt_statestream, so what HA *shows* comes back over MQTT.
2. edgeverify 0.1's per-entity discovery is published (an upgrade); HA creates those three entities.
3. `python -m edgeverify run` starts (real int8 model, alice/bob enrolled from real recordings) and
   migrates to device-based discovery.
4. Identify/verify requests; each must fire HA's event entity with the right event_type.
5. Asserts: one edgeverify device in HA's device registry, its entities (event included) attached to
   it, 0.1's entity ids kept, "Last speaker" shows alice / the no-match value, and no WARNING/ERROR from
   homeassistant.components.mqtt in HA's log.
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
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(HERE))

from broker import Broker, Hub, free_port  # noqa: E402
from ha_config import write_config  # noqa: E402
from test_daemon import DaemonProcess, _ask  # noqa: E402

from edgeverify.ha_discovery import NO_MATCH  # noqa: E402
from edgeverify.protocol import encode_request  # noqa: E402

DEV = "hacheck"
SPEECH = Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", REPO.parent / "shared" / "data" / "speech")) / "dev"


def log(msg: str) -> None:
    print(f"[ha-check] {msg}", flush=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
    from edgeverify.audio import read_audio
    from edgeverify.profiles import ProfileStore
    from edgeverify.verifier import Verifier

    verifier = Verifier.load("int8")
    store = ProfileStore(state_dir)
    for name, spk in (("alice", "vctk-p225"), ("bob", "vctk-p226")):
        store.enroll(name, [verifier.embed(read_audio(p)) for p in sorted((SPEECH / spk).glob("*.wav"))[:3]])


def main() -> int:
    hass = os.environ.get("HA_PYTHON") or sys.exit("set HA_PYTHON to the python of a venv with homeassistant (run_ha_check.sh does)")
    work = Path(tempfile.mkdtemp(prefix="edgeverify-ha-"))
    log(f"work dir {work}")
    with Broker() as broker:
        http_port = free_port()
        write_config(work / "ha", broker.port, http_port)
        shown = Shown(broker.port)
        publish_legacy(broker.port)
        ha_log = open(work / "hass.out", "wb")
        ha = subprocess.Popen([hass, "-m", "homeassistant", "-c", str(work / "ha")],
                              stdout=ha_log, stderr=subprocess.STDOUT)
        daemon = None
        try:
            version = subprocess.run([hass, "-c", "import homeassistant.const as c; print(c.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
            log(f"Home Assistant Core {version} starting")
            wait_for("HA to show 0.1's entities", lambda: f"sensor.edgeverify_{DEV}_speaker" in shown.entities, 300)
            log(f"HA shows the 0.1 entities: {shown.of('sensor') + shown.of('binary_sensor')}")
            state_dir = work / "state"
            enroll_profiles(state_dir)
            model = str(REPO / "models" / "ecapa-int8.onnx")
            daemon = DaemonProcess(work, broker.port, Path(model), state_dir, DEV)
            wait_for("HA to show the event entity", lambda: shown.of("event"), 60)
            event = shown.of("event")[0]
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
                r = _ask(hub, f"{base}/request", payload, timeout=30)
                assert r["ok"], r
                seen = wait_for(f"HA's event entity to fire for {r['request_id']}",
                                lambda: shown.entities.get(event, {}).get("request_id") == r["request_id"] and shown.entities[event], 20)
                assert seen["event_type"] == expected, (expected, seen)
                fired.append((r["request_id"], seen["event_type"], seen.get("speaker"), seen.get("source")))
            log(f"event entity fired: {fired}")
            speaker = f"sensor.edgeverify_{DEV}_speaker"
            wait_for("Last speaker = alice", lambda: shown.entities.get(speaker, {}).get("state") == "alice", 10)
            log(f"{speaker} = {shown.entities[speaker]['state']!r} (after h2 it was {NO_MATCH!r}: "
                f"{any(e == speaker and k == 'state' and v == NO_MATCH for e, k, v in shown.history)})")
            assert any(e == speaker and k == "state" and v == NO_MATCH for e, k, v in shown.history)
            match = f"binary_sensor.edgeverify_{DEV}_match"
            log(f"{match} = {shown.entities.get(match, {}).get('state')!r}")
            hub.close()
        finally:
            if daemon is not None:
                daemon.stop()
            ha.send_signal(signal.SIGTERM)
            try:
                ha.wait(60)
            except subprocess.TimeoutExpired:
                ha.kill()
            ha_log.close()
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
        bad = [line for line in (work / "ha" / "home-assistant.log").read_text().splitlines()
               if (" WARNING " in line or " ERROR " in line) and "homeassistant.components.mqtt" in line]
        for line in bad:
            log(f"HA: {line}")
        assert not bad, f"{len(bad)} warning(s)/error(s) from HA's mqtt integration"
        log("OK: no warnings or errors from homeassistant.components.mqtt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
