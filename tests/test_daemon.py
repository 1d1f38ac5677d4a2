"""End to end: `python -m edgeverify run` as a real subprocess, a real mosquitto, real recordings.

The test plays systemd (binds NOTIFY_SOCKET, waits for READY=1, sends SIGTERM) and the hub (paho v5
and 3.1.1 clients). Every wait is a few seconds at most.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub  # noqa: E402
from daemon_process import PREFIX, DaemonProcess, as_clip, ask  # noqa: E402

from edgeverify.app.protocol import encode_request  # noqa: E402
from edgeverify.core.model_store import DEFAULT_MODEL  # noqa: E402

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")


def test_verify_same_and_different_speaker(daemon: DaemonProcess, hub: Hub, clips: dict[str, list[Path]]) -> None:
    a, b = clips["vctk-p225"], clips["vctk-p226"]
    meta = dict(request_id="r-1", requestor_id="hub-7", requestor_type="hub", analysis_id="an-1")
    same = ask(hub, f"{daemon.base}/request", encode_request("verify", as_clip(a[3]), as_clip(a[4]), **meta))
    assert same["ok"] is True and same["same_speaker"] is True, same
    # calibrated default: the llr decides against the EER operating point; score stays the cosine
    assert same["operating_point"] == "eer" and same["llr"] >= same["threshold"] and -1 <= same["score"] <= 1
    for k, v in meta.items():
        assert same[k] == v
    assert same["first_file"] == a[3].name and same["second_file"] == a[4].name
    assert same["analyzer_id"] == "dev1" and same["type"] == "verify"
    assert same["timestamp"].endswith("Z") and same["elapsed_ms"] > 0
    # the model is named as `verify --json` names it, though this daemon was given the file's path
    assert (same["model"], same["precision"]) == (DEFAULT_MODEL, "int8"), same
    diff = ask(hub, f"{daemon.base}/request", encode_request("verify", as_clip(a[3]), as_clip(b[4]), request_id="r-2"))
    assert diff["ok"] is True and diff["same_speaker"] is False and diff["llr"] < diff["threshold"], diff
    strict = ask(hub, f"{daemon.base}/request", encode_request("verify", as_clip(a[3]), as_clip(a[4]), target_far=0.001))
    assert strict["operating_point"] == "far=0.001" and strict["threshold"] > same["threshold"], strict
    assert strict["llr"] == same["llr"]
    old = ask(hub, f"{daemon.base}/request", encode_request("verify", as_clip(a[3]), as_clip(b[4]), threshold=0.99))
    assert old["operating_point"] == "threshold" and old["threshold"] == 0.99 and "llr" not in old, old
    uuid.UUID(diff["analysis_id"])  # generated when absent
    assert diff["request_id"] == "r-2"


def test_profiles_identify_and_raw_audio(daemon: DaemonProcess, hub: Hub, clips: dict[str, list[Path]]) -> None:
    a, stranger = clips["vctk-p225"], clips["ls-533"]
    r = ask(hub, f"{daemon.base}/request", encode_request("verify_profile", as_clip(a[6]), profile="alice"))
    assert r["ok"] and r["same_speaker"] is True and r["profile"] == "alice", r.get("error")
    r = ask(hub, f"{daemon.base}/request", encode_request("verify_profile", as_clip(a[6]), profile="bob"))
    assert r["ok"] and r["same_speaker"] is False
    r = ask(hub, f"{daemon.base}/request", encode_request("identify", as_clip(a[7]), request_id="id-1"))
    assert r["ok"] and r["speaker"] == "alice" and "scores" not in r, r
    r = ask(hub, f"{daemon.base}/request", encode_request("identify", as_clip(stranger[2])))
    assert r["ok"] and r["speaker"] is None and r["same_speaker"] is False
    # raw WAV bytes, metadata as user properties
    r = ask(hub, f"{daemon.base}/request/identify", a[5].read_bytes(),
             user={"request_id": "raw-1", "requestor_id": "hub-7", "name": "door.wav"})
    assert r["ok"] and r["speaker"] == "alice" and r["request_id"] == "raw-1" and r["first_file"] == "door.wav", r
    r = ask(hub, f"{daemon.base}/request/verify_profile", a[5].read_bytes(), user={"profile": "bob"})
    assert r["ok"] and r["same_speaker"] is False and r["profile"] == "bob"


def test_mqtt311_client_with_reply_to(daemon: DaemonProcess, broker: Broker, clips: dict[str, list[Path]]) -> None:
    old = Hub(broker.port, v5=False)
    try:
        old.subscribe("legacy/answers")
        a = clips["vctk-p225"]
        old.publish(f"{daemon.base}/request",
                    encode_request("verify", as_clip(a[0]), as_clip(a[1]), request_id="v3", reply_to="legacy/answers"))
        r = json.loads(old.wait(lambda m: m.topic == "legacy/answers", 10).payload)
        assert r["ok"] and r["request_id"] == "v3" and r["same_speaker"] is True
        # no reply_to at all: the device's default response topic
        old.subscribe(f"{daemon.base}/response")
        old.publish(f"{daemon.base}/request", b"{oops", )
        r = json.loads(old.wait(lambda m: m.topic == f"{daemon.base}/response", 10).payload)
        assert r["ok"] is False and r["error"]["code"] == "bad_request"
    finally:
        old.close()


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV")
    return buf.getvalue()


@pytest.mark.parametrize(
    "payload, code, message",
    [
        (b"not json", "bad_request", "not valid JSON"),
        (b'{"type": "dance", "request_id": "e1"}', "bad_request", "'type' must be one of"),
        (b'{"type": "verify", "request_id": "e1", "first": {"name": "a.wav", "audio_b64": "%%%"}}', "bad_request", "not valid base64"),
        (b'{"type": "verify", "request_id": "e1", "first": {"name": "a.wav", "audio_b64": "AAAA"}}', "bad_request", "'second' must be an object"),
        (b'{"type": "verify_profile", "request_id": "e1", "first": {"audio_b64": "AAAA"}}', "bad_request", "'profile' is required"),
        (b'{"type": "capture", "request_id": "e1"}', "capture_disabled", "disabled on this device"),
    ],
)
def test_bad_requests_get_error_responses(daemon: DaemonProcess, hub: Hub, payload: bytes, code: str, message: str) -> None:
    r = ask(hub, f"{daemon.base}/request", payload)
    assert r["ok"] is False and r["error"]["code"] == code and message in r["error"]["message"], r
    if payload.startswith(b"{"):
        assert r["request_id"] == "e1"
    assert r["analyzer_id"] == "dev1"


def test_bad_audio_and_unknown_profile(daemon: DaemonProcess, hub: Hub, clips: dict[str, list[Path]]) -> None:
    a = clips["vctk-p225"]
    garbage = ("junk.wav", os.urandom(5000))
    r = ask(hub, f"{daemon.base}/request", encode_request("verify", garbage, as_clip(a[0]), request_id="g"))
    assert r["ok"] is False and r["error"]["code"] == "unreadable_audio" and "junk.wav" in r["error"]["message"], r
    assert r["first_file"] == "junk.wav" and r["second_file"] == a[0].name
    silence = ("quiet.wav", _wav(np.zeros(32000, dtype=np.float32)))
    r = ask(hub, f"{daemon.base}/request", encode_request("identify", silence))
    assert r["ok"] is False and r["error"]["code"] in ("no_speech", "too_short"), r
    r = ask(hub, f"{daemon.base}/request", encode_request("verify_profile", as_clip(a[0]), profile="carol"))
    assert r["ok"] is False and r["error"]["code"] == "unknown_profile", r
    r = ask(hub, f"{daemon.base}/request", encode_request("verify_profile", as_clip(a[0]), profile="../etc"))
    assert r["ok"] is False and r["error"]["code"] == "profile_error", r
    long = ("long.wav", _wav(np.zeros(16000 * 31, dtype=np.float32)))
    r = ask(hub, f"{daemon.base}/request", encode_request("identify", long))
    assert r["ok"] is False and r["error"]["code"] == "too_long", r


def test_oversized_payload(daemon: DaemonProcess, hub: Hub) -> None:
    big = json.dumps({"type": "identify", "request_id": "big", "first": {"audio_b64": "A" * 3_100_000}}).encode()
    r = ask(hub, f"{daemon.base}/request", big)
    assert r["ok"] is False and r["error"]["code"] == "payload_too_large", r


def test_busy_when_queue_full(daemon: DaemonProcess, hub: Hub, clips: dict[str, list[Path]]) -> None:
    """queue_size 1: a burst gets immediate "busy" replies for what does not fit -- every request answered."""
    a = clips["vctk-p225"]
    req = encode_request("verify", as_clip(a[0]), as_clip(a[1]))
    reply = f"hub/burst/{uuid.uuid4().hex}"
    hub.subscribe(reply)
    n = 6
    for i in range(n):
        hub.publish(f"{daemon.base}/request", req, response_topic=reply, correlation=bytes([i]))
    got = {}
    while len(got) < n:
        m = hub.wait(lambda m: m.topic == reply, 15)
        got[m.properties.CorrelationData] = json.loads(m.payload)
    codes = [r["error"]["code"] if not r["ok"] else "ok" for r in got.values()]
    assert "busy" in codes and "ok" in codes, codes
    assert set(codes) <= {"busy", "ok"}


def test_availability_discovery_and_state(daemon: DaemonProcess, hub: Hub) -> None:
    hub.subscribe(f"{daemon.base}/availability")
    assert hub.wait(lambda m: m.topic.endswith("/availability"), 5).payload == b"online"
    hub.subscribe("homeassistant/device/edgeverify_dev1/config")  # device-based discovery (tests/test_ha.py)
    doc = json.loads(hub.wait(lambda m: m.topic.startswith("homeassistant/"), 5).payload)
    assert doc["availability"][0]["topic"] == f"{daemon.base}/availability" and doc["dev"]["ids"] == ["edgeverify_dev1"]
    assert doc["cmps"]["last_speaker"]["state_topic"] == f"{daemon.base}/state/identify"
    hub.subscribe(f"{daemon.base}/state")  # the earlier tests' MQTT requests answered their requesters only
    with pytest.raises(TimeoutError):  # (docs/security-trust-model.md; the state's shape: test_ha.py)
        hub.wait(lambda m: m.topic.endswith("/state"), 1)


def test_sigterm_publishes_offline(tmp_path: Path, broker: Broker, int8_model: Path, state_dir: Path, hub: Hub) -> None:
    d = DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "dev-term", watchdog_usec=600_000)
    try:
        # WATCHDOG_USEC=0.6 s: pings at least every 0.2 s while idle
        first = d.notify.wait_for("WATCHDOG=1", 3)
        time.sleep(1.0)
        pings = [t for t, m in d.notify.messages[first:] if "WATCHDOG=1" in m.split("\n")]
        assert len(pings) >= 3 and max(np.diff(pings)) < 0.6, pings
        hub.subscribe(f"{d.base}/availability")
        assert hub.wait(lambda m: m.topic == f"{d.base}/availability", 5).payload == b"online"
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        d.notify.wait_for("STOPPING=1", 2)
        assert hub.wait(lambda m: m.topic == f"{d.base}/availability", 5).payload == b"offline"
    finally:
        d.stop()
    late = Hub(broker.port)  # retained for whoever connects later
    try:
        late.subscribe(f"{d.base}/availability")
        assert late.wait(None, 5).payload == b"offline"
    finally:
        late.close()


def test_ready_only_once_requests_can_arrive(tmp_path: Path, broker: Broker, int8_model: Path, state_dir: Path,
                                             hub: Hub, clips: dict[str, list[Path]]) -> None:
    """READY=1 and `online` mean subscribed: a request sent the moment systemd hears READY is answered, even
    when the daemon's SUBSCRIBE reaches the broker 2 s after its CONNECT (a fresh session: the broker keeps
    nothing for a topic nobody has subscribed yet)."""
    from slow_link import SlowLink

    link = SlowLink(broker.port, hold_s=2.0)
    d = DaemonProcess(tmp_path, link.port, int8_model, state_dir, f"dev-ready-{uuid.uuid4().hex[:6]}")
    try:
        ready_at = d.notify.messages[d.notify.wait_for("READY=1", 1)][0]
        assert ready_at - link.accepted[0] >= 1.9, "READY=1 came before the broker had the subscription"
        r = ask(hub, f"{d.base}/request", encode_request("identify", as_clip(clips["vctk-p225"][5])), timeout=20)
        assert r["ok"] and r["speaker"] == "alice", r
    finally:
        d.stop()
        link.close()


def test_sighup_reloads(tmp_path: Path, broker: Broker, int8_model: Path, state_dir: Path) -> None:
    d = DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "dev-hup")
    try:
        at = len(d.notify.messages)
        d.proc.send_signal(signal.SIGHUP)
        i = d.notify.wait_for("RELOADING=1", 3, since=at)
        d.notify.wait_for("READY=1", 5, since=i)
    finally:
        assert d.stop() == 0


def test_shared_group_spreads_requests(tmp_path: Path, broker: Broker, int8_model: Path, state_dir: Path,
                                       hub: Hub, clips: dict[str, list[Path]]) -> None:
    d1 = DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "pool1", shared_group="pool")
    d2 = DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "pool2", shared_group="pool")
    try:
        a = clips["vctk-p225"]
        handled = []
        for i in range(6):
            r = ask(hub, f"{PREFIX}/request", encode_request("identify", as_clip(a[i % 8]), request_id=f"s{i}"))
            assert r["ok"] and r["request_id"] == f"s{i}", r
            handled.append(r["analyzer_id"])
        assert set(handled) == {"pool1", "pool2"}, handled
    finally:
        d1.stop()
        d2.stop()


def test_microphone_events(tmp_path: Path, broker: Broker, int8_model: Path, state_dir: Path, hub: Hub,
                           clips: dict[str, list[Path]]) -> None:
    """Real capture path (PulseAudio null sink -> ALSA pulse -> PortAudio): alice speaks, an event names her."""
    import virtual_mic

    reason = virtual_mic.available()
    if reason:
        pytest.skip(f"virtual microphone unavailable: {reason}")
    with virtual_mic.VirtualMic(16000) as vm:
        mic = {"enabled": True, "device": "pulse", "mode": "identify", "max_utterance_s": 4.0}
        d = DaemonProcess(tmp_path, broker.port, int8_model, state_dir, "mic1", extra={"microphone": mic}, env_extra=vm.env,
                          allow_capture=True)
        try:
            hub.subscribe(f"{d.base}/event")
            hub.subscribe(f"{d.base}/state")
            vm.play(clips["vctk-p225"][5])  # 5.1 s, real time
            ev = json.loads(hub.wait(lambda m: m.topic == f"{d.base}/event", 10).payload)
            assert ev["ok"] and ev["type"] == "microphone" and ev["speaker"] == "alice", ev
            st = hub.wait(lambda m: m.topic == f"{d.base}/state" and json.loads(m.payload)["source"] == "microphone", 5)
            assert json.loads(st.payload)["speaker"] == "alice"
            # "capture now" over MQTT: the next utterance is verified against a profile and answered
            time.sleep(2.0)  # let the tail of alice's clip (after the forced 4 s cut) pass first
            reply, corr = f"hub/cap/{uuid.uuid4().hex}", b"cap"
            hub.subscribe(reply)
            hub.publish(f"{d.base}/request", encode_request("capture", profile="bob", request_id="c1"),
                        response_topic=reply, correlation=corr)
            time.sleep(0.3)
            vm.play(clips["vctk-p226"][5])
            r = json.loads(hub.wait(lambda m: m.topic == reply, 10).payload)
            assert r["ok"] and r["profile"] == "bob" and r["same_speaker"] is True and r["request_id"] == "c1", r
        finally:
            assert d.stop() == 0, d.log_path.read_text()
