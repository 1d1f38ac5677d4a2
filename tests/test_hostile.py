"""Hostile input against the real daemon, real mosquitto, real model: nothing crashes, deafens or loops it.

The fuzz test sends seeded random messages over every input channel -- JSON structure and field types,
raw bytes, v5 user properties, topic levels under request/#, Response Topics, JSON reply_to, correlation
data -- and then checks: every message answered exactly once (replies matched by correlation data;
those over the v5 Maximum Packet Size the daemon announces are discarded by the broker, unanswered), no
reply on a protected topic, no reconnect loop (one broker connection), the process alive, the watchdog
still pinging, and a good request still answered right. EDGEVERIFY_FUZZ_MESSAGES=20000 makes it a soak.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub  # noqa: E402
from daemon_process import DaemonProcess, PREFIX, as_clip  # noqa: E402

from edgeverify.app.protocol import encode_request  # noqa: E402
from edgeverify.mqtt.connection import max_packet_size  # noqa: E402
from edgeverify.topic_rules import string_problem  # noqa: E402

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")

FUZZ_MESSAGES = int(os.environ.get("EDGEVERIFY_FUZZ_MESSAGES", "600"))
DEV = "fuzz1"
BASE = f"{PREFIX}/{DEV}"
WATCHDOG_S = 10

# where the daemon must never publish a reply, whatever a request asks
PROTECTED = [f"{BASE}/request", f"{BASE}/request/identify", f"{BASE}/state", f"{BASE}/availability", f"{BASE}/event",
             f"{PREFIX}/other/request", f"{PREFIX}/other/request/verify_profile", f"{PREFIX}/request",
             f"{PREFIX}/request/identify", f"{PREFIX}/other/state", f"{PREFIX}/other/availability",
             "homeassistant/sensor/edgeverify_fuzz1/score/config", "homeassistant/status", "$SYS/broker/x",
             "$share/g/edgeverify/request", "zigbee2mqtt/front_door/set", "cmnd/plug/POWER"]
HOSTILE_STRINGS = ["", "\x00", "a\x01b", "\x1f", "x\x7f", "\x85", "\x9f", "\ufffe", "\uffff", "\U0001fffe", "\ufdd0",
                   "\ud800", "\udfff", "a\ud83d", "#", "+", "a/+/b", "a/#", "/", "//", "$SYS", "\u202e\u200b",
                   "\U0001f600" * 500, "\ufeff", "a\ufeffb", "x" * 70000, "../../etc/passwd", "%s%n", "null", "\\", '"', "\u0000/\u0000"]


def _valid_str(s: str) -> bool:
    return string_problem(s) is None and len(s.encode("utf-8", "surrogatepass")) < 60000


def _wav_header(channels: int, rate: int, bits: int, frames: int, data: bytes) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    size = (frames * block) & 0xFFFFFFFF
    return b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + \
        struct.pack("<I", size) + data


class Fuzzer:
    """Seeded generators, one per input channel; each returns (topic, payload, props-kwargs)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def text(self) -> str:
        r = self.r
        pick = r.random()
        if pick < 0.4:
            return r.choice(HOSTILE_STRINGS)
        if pick < 0.7:
            return "".join(chr(r.choice([r.randint(0, 0x7F), r.randint(0x80, 0xFFFF), r.randint(0x10000, 0x10FFFF)]))
                           for _ in range(r.randint(0, 40)))
        return r.choice(PROTECTED)

    def valid_text(self) -> str:
        for _ in range(20):
            s = self.text()
            if _valid_str(s):
                return s
        return "fallback"

    def value(self, depth: int = 0) -> Any:
        r = self.r
        kind = r.randrange(12)
        if kind == 0 and depth < 3:
            return {self.text(): self.value(depth + 1) for _ in range(r.randint(0, 4))}
        if kind == 1 and depth < 3:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return r.choice([None, True, False, 0, -1, 1.5, 1e308, -1e-308, float("nan"), float("inf"), 2 ** 70,
                         self.text(), self.text(), "AAAA", {"name": self.text(), "audio_b64": self.b64audio()}])

    def b64audio(self) -> str:
        r = self.r
        choice = r.randrange(6)
        if choice == 0:
            return base64.b64encode(os.urandom(r.randint(0, 3000))).decode()
        if choice == 1:  # a header promising far more than is there, odd formats
            hdr = _wav_header(r.choice([0, 1, 2, 255, 65535]), r.choice([0, 1, 8000, 16000, 2 ** 31]),
                              r.choice([8, 16, 24, 32, 0, 7]), r.choice([0, 10, 2 ** 28]), os.urandom(r.randint(0, 500)))
            return base64.b64encode(hdr).decode()
        if choice == 2:
            return base64.b64encode(b"fLaC" + os.urandom(r.randint(0, 400))).decode()
        if choice == 3:
            return base64.b64encode(b"OggS" + os.urandom(r.randint(0, 400))).decode()
        if choice == 4:
            return "=" * r.randint(0, 10) + "!!"
        return base64.b64encode(_wav_header(1, 16000, 16, 8000, np.zeros(8000, np.int16).tobytes())).decode()

    def nested(self) -> bytes:
        r = self.r
        n = r.choice([33, 100, 1000, 50000, 200000])
        opener = r.choice([b"[", b'{"a":', b'{"type": "verify", "first": '])
        closer = b"]" if opener == b"[" else b"}"
        body = opener * n + b"1" + closer * (n if r.random() < 0.5 else r.randint(0, n))
        return body

    def json_request(self) -> bytes:
        r = self.r
        kind = r.randrange(8)
        if kind == 0:
            return self.nested()
        if kind == 1:
            return r.choice([b"[]," * 100000, b"1" * 5000, b"[" + b"0," * 100000 + b"0]", b'"\\' * 5000,
                             b"\xef\xbb\xbf{}", '{"type": "identify"}'.encode("utf-16"), b"NaN", b"{" * 40,
                             b'{"a":"' + b"x" * 100000, b'{"type":"identify","request_id":"' + b"r" * 1_000_000 + b'"}'])
        obj: dict[str, Any] = {"type": r.choice(["verify", "verify_profile", "identify", "capture", self.text()])}
        for key in ("request_id", "requestor_id", "requestor_type", "analyzer_id", "analysis_id", "reply_to",
                    "profile", "threshold", "seconds", "first", "second"):
            if r.random() < 0.6:
                obj[key] = self.value()
        if r.random() < 0.5:
            obj["reply_to"] = self.text()
        if r.random() < 0.3:
            obj[self.text()] = self.value()
        return json.dumps(obj).encode()

    def message(self) -> tuple[str, bytes, dict[str, Any]]:
        r = self.r
        channel = r.randrange(6)
        kw: dict[str, Any] = {}
        if r.random() < 0.5:
            kw["response_topic"] = self.valid_text() if r.random() < 0.7 else r.choice(PROTECTED)
        if r.random() < 0.4:
            kw["user"] = [(self.valid_text()[:200], self.valid_text()[:2000]) for _ in range(r.choice([1, 3, 10, 200]))]
            if r.random() < 0.5:
                kw["user"].append((r.choice(["request_id", "profile", "name", "threshold", "reply_to"]), self.valid_text()))
        if channel == 0:  # raw bytes on every request topic
            topic = r.choice([f"{BASE}/request", f"{BASE}/request/identify", f"{BASE}/request/verify_profile"])
            return topic, os.urandom(r.choice([0, 1, 10, 1000, 100000])), kw
        if channel == 1:  # weird levels under request/#
            level = r.choice(["", "identify/extra", "request", "verify", "..", "\u00e9t\u00e9", "x" * 5000,
                              self.valid_text().replace("/", "_").replace("+", "p").replace("#", "h") or "z"])
            return f"{BASE}/request/{level}", r.choice([self.json_request(), os.urandom(64)]), kw
        if channel == 2:  # raw audio with hostile metadata
            try:
                data = base64.b64decode(self.b64audio())
            except ValueError:
                data = os.urandom(100)
            return f"{BASE}/request/{r.choice(['identify', 'verify_profile'])}", data, kw
        return f"{BASE}/request", self.json_request(), kw


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def fbroker() -> Any:
    with Broker() as b:
        yield b


MAX_PAYLOAD = 3_000_000  # DaemonProcess's limits.max_payload_bytes


def _packet_size(topic: str, payload: bytes, kw: dict[str, Any]) -> int:
    """The size of the PUBLISH on the wire (fixed header at most 5 bytes, packet id, properties)."""
    props = sum(3 + len(v.encode()) for v in [kw.get("response_topic")] if v is not None)
    props += 3 + len(kw.get("correlation") or b"") if "correlation" in kw else 0
    props += sum(5 + len(k.encode()) + len(v.encode()) for k, v in kw.get("user", []))
    return 5 + 2 + len(topic.encode()) + 2 + 4 + props + len(payload)


def _daemon_replies(spy: Hub, into: dict[bytes, list[tuple[str, dict]]], timeout: float) -> None:
    """Collect the daemon's replies (JSON content type) seen on any topic, keyed by correlation data."""
    try:
        while True:
            m = spy.wait(lambda m: getattr(m.properties, "ContentType", None) == "application/json", timeout)
            corr = getattr(m.properties, "CorrelationData", None)
            into.setdefault(corr, []).append((m.topic, json.loads(m.payload)))
            timeout = 0.5
    except TimeoutError:
        pass


def test_fuzz_every_input_channel(tmp_path: Path, fbroker: Broker, int8_model: Path, state_dir: Path,
                                  clips: dict) -> None:
    d = DaemonProcess(tmp_path, fbroker.port, int8_model, state_dir, DEV, watchdog_usec=WATCHDOG_S * 1_000_000,
                      limits={"queue_size": 4})
    spy = Hub(fbroker.port)
    fuzz = Hub(fbroker.port)
    try:
        spy.subscribe("#")
        f = Fuzzer(seed=int(os.environ.get("EDGEVERIFY_FUZZ_SEED", "10")))
        rss_before = _rss_mb(d.proc.pid)
        sent: dict[bytes, tuple[str, Any]] = {}
        dropped: dict[bytes, tuple[str, Any]] = {}  # over the Maximum Packet Size: the broker discards them
        max_packet = max_packet_size(MAX_PAYLOAD)
        offered: set[str] = set()
        replies: dict[bytes, list[tuple[str, dict]]] = {}
        for i in range(FUZZ_MESSAGES):
            topic, payload, kw = f.message()
            corr = b"fz%06d" % i + (os.urandom(f.r.choice([0, 8, 4000])) if f.r.random() < 0.3 else b"")
            kw["correlation"] = corr
            if "response_topic" in kw:
                offered.add(kw["response_topic"])
            offered.update(v for k, v in kw.get("user", []) if k == "reply_to")
            try:
                obj = json.loads(payload)
                if isinstance(obj, dict) and isinstance(obj.get("reply_to"), str):
                    offered.add(obj["reply_to"])
            except (ValueError, RecursionError):
                pass
            fuzz.publish(topic, payload, wait=(i % 25 == 24), **kw)
            size = _packet_size(topic, payload, kw)
            if abs(size - max_packet) < 64:
                continue  # too close to the limit to know which side the broker counts it on
            (sent if size < max_packet else dropped)[corr] = (topic, kw.get("response_topic"))
            if i % 100 == 99:
                _daemon_replies(spy, replies, 0.05)
        # two more: over the payload limit (answered payload_too_large), one over the packet size (never seen)
        for j in range(2):
            corr = b"fzbig%d" % j
            fuzz.publish(f"{BASE}/request", b"{" + b" " * 3_100_000 + b"}", correlation=corr)
            sent[corr] = (f"{BASE}/request", None)
        fuzz.publish(f"{BASE}/request", b"{" + b" " * (max_packet + 10) + b"}", correlation=b"fzhuge")
        dropped[b"fzhuge"] = (f"{BASE}/request", None)
        deadline = time.monotonic() + 180
        while not set(sent) <= set(replies) and time.monotonic() < deadline:
            _daemon_replies(spy, replies, 2.0)
        assert d.proc.poll() is None, d.log_path.read_text()[-5000:]
        missing = set(sent) - set(replies)
        (tmp_path / "broker.log").write_text(fbroker.log())  # kept for a post-mortem
        assert not missing, f"{len(missing)} unanswered, e.g. {sorted(missing)[:5]}"
        twice = {c: r for c, r in replies.items() if len(r) > 1}
        assert not twice, list(twice.items())[:3]
        stray = set(replies) - set(sent)
        assert not stray, sorted(stray)[:5]
        discarded = fbroker.log().count(f"Dropping too large outgoing PUBLISH for edgeverify-{DEV} ")
        assert discarded == len(dropped), (discarded, len(dropped))
        for [(topic, body)] in replies.values():
            assert topic not in PROTECTED, (topic, body)
            assert topic == f"{BASE}/response" or topic in offered, topic
        codes = {}
        for [(_, body)] in replies.values():
            code = "ok" if body["ok"] else body["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
        assert codes.get("bad_reply_topic", 0) > 0 and codes.get("bad_request", 0) > 0, codes
        rss_mb = _rss_mb(d.proc.pid)
        print(f"fuzzed {len(sent) + len(dropped)} messages ({len(dropped)} over the packet size, discarded by the "
              f"broker); answers by code: {codes}; daemon RSS {rss_before:.0f} -> {rss_mb:.0f} MB")
        assert rss_mb < 512, "over the unit's MemoryMax=512M"

        # still serving, right, on one connection, with the watchdog pinging
        a = clips["vctk-p225"]
        good = Hub(fbroker.port)
        try:
            reply = f"hub/good/{uuid.uuid4().hex}"
            good.subscribe(reply)
            good.publish(f"{BASE}/request", encode_request("identify", as_clip(a[6]), request_id="after"),
                         response_topic=reply, correlation=b"after")
            r = json.loads(good.wait(lambda m: m.topic == reply, 60).payload)
            assert r["ok"] and r["speaker"] == "alice" and r["request_id"] == "after", r
        finally:
            good.close()
        at = len(d.notify.messages)
        d.notify.wait_for("WATCHDOG=1", WATCHDOG_S, since=at)
        pings = [t for t, m in d.notify.messages if "WATCHDOG=1" in m.split("\n")]
        assert max(np.diff(pings)) < WATCHDOG_S, "a gap in the watchdog pings would have had systemd kill it"
        connects = fbroker.log().count(f"as edgeverify-{DEV} ")
        assert connects == 1, f"daemon (re)connected {connects} times: a disconnect loop"
    finally:
        fuzz.close()
        spy.close()
        assert d.stop() == 0, d.log_path.read_text()[-5000:]


def test_reply_topic_policy_and_allow_list(tmp_path: Path, fbroker: Broker, int8_model: Path, state_dir: Path,
                                           clips: dict) -> None:
    planted = Hub(fbroker.port)  # a retained request must not be run at every (re)subscription
    planted.client.publish(f"{PREFIX}/pol1/request", encode_request("identify", as_clip(clips["vctk-p226"][2])),
                           qos=1, retain=True, properties=_corr_props(b"retained")).wait_for_publish(10)
    planted.close()
    d = DaemonProcess(tmp_path, fbroker.port, int8_model, state_dir, "pol1", limits={"queue_size": 16},
                      reply_topics=["hub/answers/#"])
    spy = Hub(fbroker.port)
    try:
        spy.subscribe("#")
        a = clips["vctk-p226"]
        req = encode_request("verify_profile", as_clip(a[0]), profile="bob", request_id="p")
        cases = {b"own-request": f"{d.base}/request", b"ha": "homeassistant/switch/x/config", b"z2m": "zigbee2mqtt/door/set",
                 b"other-ns": "somewhere/else", b"allowed": "hub/answers/kitchen"}
        for corr, topic in cases.items():
            spy.publish(f"{d.base}/request", req, response_topic=topic, correlation=corr)
        # MQTT 3.1.1 style: JSON reply_to
        spy.publish(f"{d.base}/request", encode_request("identify", as_clip(a[1]), reply_to=f"{PREFIX}/x/availability"),
                    correlation=b"json-reply-to")
        # over 65,535 bytes: refused, never cut down to a (different) valid topic
        spy.publish(f"{d.base}/request", encode_request("identify", as_clip(a[1]), reply_to="hub/answers/" + "x" * 70_000),
                    correlation=b"too-long")
        got: dict[bytes, list[tuple[str, dict]]] = {}
        deadline = time.monotonic() + 60
        while len(got) < len(cases) + 2 and time.monotonic() < deadline:
            _daemon_replies(spy, got, 2.0)
        for corr, topic in cases.items():
            [(where, body)] = got[corr]
            if corr == b"allowed":
                assert where == topic and body["ok"] and body["same_speaker"] is True, body
            else:
                assert where == f"{d.base}/response" and body["error"]["code"] == "bad_reply_topic", (where, body)
                assert body["request_id"] == "p"
        [(where, body)] = got[b"json-reply-to"]
        assert where == f"{d.base}/response" and body["error"]["code"] == "bad_reply_topic", body
        [(where, body)] = got[b"too-long"]
        assert where == f"{d.base}/response" and body["error"]["code"] == "bad_reply_topic", body
        assert b"retained" not in got
    finally:
        spy.close()
        assert d.stop() == 0
    assert "refused" in d.log_path.read_text()


def _corr_props(corr: bytes) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = corr
    return props


DRIVER = '''
import runpy, sys
import edgeverify.mqtt.requests as mr

class InjectedFault(BaseException):
    """Not an Exception: escapes every handler, as a paho bug or interpreter fault would."""

original = mr.MqttRequests.receive
def receive(self, msg):
    if msg.topic.endswith("/request/die"):
        raise InjectedFault("network thread killed by the test")
    return original(self, msg)
mr.MqttRequests.receive = receive
sys.argv = ["edgeverify"] + sys.argv[1:]
runpy.run_module("edgeverify", run_name="__main__")
'''


def test_dead_network_thread_stops_watchdog(tmp_path: Path, fbroker: Broker, int8_model: Path, state_dir: Path) -> None:
    """Fault injection: paho's network thread dies -> no more WATCHDOG=1, logged, exit 1 (systemd restarts)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    d = DaemonProcess(tmp_path, fbroker.port, int8_model, state_dir, "die1", watchdog_usec=3_000_000,
                      argv=[sys.executable, str(driver)])
    hub = Hub(fbroker.port)
    try:
        d.notify.wait_for("WATCHDOG=1", 5)
        hub.publish(f"{d.base}/request/die", b"x")
        assert d.proc.wait(30) == 1
        msgs = [m for _, m in d.notify.messages]
        dead = max(i for i, m in enumerate(msgs) if "network thread has died" in m)
        assert not any("WATCHDOG=1" in m.split("\n") for m in msgs[dead:]), msgs[dead:]
        assert "MQTT network thread has died: watchdog pings stopped" in d.log_path.read_text()
    finally:
        hub.close()
        d.stop()
