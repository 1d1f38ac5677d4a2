"""Protocol parsing (every malformed request is a RequestError, never a crash) and the MQTT service in-process."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub, free_port  # noqa: E402

from edgeverify.store.config import parse_config  # noqa: E402
from edgeverify.errors import RequestError  # noqa: E402
from edgeverify.app.protocol import (  # noqa: E402
    Response,
    encode_request,
    error_response,
    parse_raw_request,
    parse_request,
    salvage_meta,
)

B64 = base64.b64encode(b"RIFF....").decode()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "'type' must be one of"),
        (b'{"type": "Verify"}', "'type' must be one of"),
        (b'{"type": "verify"}', "'first' must be an object"),
        (b'{"type": "verify", "first": "a.wav"}', "'first' must be an object"),
        (b'{"type": "verify", "first": {"name": "a.wav"}}', "'first.audio_b64' is missing"),
        (b'{"type": "verify", "first": {"audio_b64": "abc$"}}', "'first.audio_b64' is not valid base64"),
        (('{"type": "verify", "first": {"audio_b64": "%s"}}' % B64).encode(), "'second' must be an object"),
        (b'{"type": "identify", "threshold": "high", "first": {"audio_b64": "AAAA"}}', "'threshold' must be a number"),
        (b'{"type": "identify", "threshold": 5, "first": {"audio_b64": "AAAA"}}', "'threshold' must be a number in -1..1"),
        (b'{"type": "identify", "request_id": {"x": 1}, "first": {"audio_b64": "AAAA"}}', "'request_id' must be a string"),
        (b'{"type": "verify_profile", "first": {"audio_b64": "AAAA"}}', "'profile' is required"),
        (b'{"type": "identify", "target_far": 0.9, "first": {"audio_b64": "AAAA"}}', "'target_far' must be a number in"),
        (b'{"type": "identify", "target_far": "x", "first": {"audio_b64": "AAAA"}}', "'target_far' must be a number"),
        (b'{"type": "identify", "target_far": 0.01, "threshold": 0.4, "first": {"audio_b64": "AAAA"}}',
         "either 'threshold' or 'target_far'"),
        (b'{"type": "capture", "seconds": 0}', "'seconds' must be a number in 0.5..60"),
    ],
)
def test_bad_requests(payload: bytes, message: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(payload)
    assert message in err.value.message
    salvage_meta(payload, {})  # the error reply's metadata never raises either


def test_good_request_round_trip() -> None:
    raw = encode_request("verify", ("a.wav", b"AAA"), ("b.flac", b"BBB"), request_id=7, requestor_id="hub",
                         requestor_type="hub", analyzer_id="pi", analysis_id="x", reply_to="r/t", threshold=0.5)
    req = parse_request(raw)
    assert (req.first.name, req.first.data, req.second.name, req.second.data) == ("a.wav", b"AAA", "b.flac", b"BBB")
    assert req.request_id == "7" and req.reply_to == "r/t" and req.threshold == 0.5
    assert req.meta() == {"type": "verify", "request_id": "7", "requestor_id": "hub", "requestor_type": "hub",
                          "analyzer_id": "pi", "analysis_id": "x", "first_file": "a.wav", "second_file": "b.flac"}


def test_raw_request_and_salvage() -> None:
    req = parse_raw_request("identify", b"RIFF", {"request_id": "q", "name": "door.wav", "threshold": "0.4"})
    assert req.first.name == "door.wav" and req.threshold == 0.4 and req.request_id == "q"
    assert parse_raw_request("identify", b"RIFF", {"target_far": "0.01"}).target_far == 0.01
    with pytest.raises(RequestError, match="user property 'profile'"):
        parse_raw_request("verify_profile", b"RIFF", {})
    with pytest.raises(RequestError, match="raw audio requests"):
        parse_raw_request("verify", b"RIFF", {})
    meta = salvage_meta(b'{"type": "verify", "request_id": "z", "first": {"name": "a.wav"}, "reply_to": "x/y"}', {})
    assert meta["request_id"] == "z" and meta["first_file"] == "a.wav" and meta["reply_to"] == "x/y"


def test_response_shape() -> None:
    ok = Response(ok=True, meta={"type": "verify", "request_id": "1", "reply_to": "x"}, result={"score": 0.5}).to_dict("dev")
    assert ok["analyzer_id"] == "dev" and "reply_to" not in ok and ok["timestamp"].endswith("Z")
    uuid.UUID(ok["analysis_id"])
    err = error_response({"analysis_id": "keep"}, "busy", "try later").to_dict("dev")
    assert err["ok"] is False and err["error"] == {"code": "busy", "message": "try later"} and err["analysis_id"] == "keep"


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
def test_service_connects_when_broker_appears_later(tmp_path: Path, int8_verifier: Any, speech_dir: Path,
                                                    mqtt_adapter: Any) -> None:
    """Broker down at start-up: paho keeps retrying with backoff; requests work once it is up."""
    from edgeverify.app.decisions import DecisionService
    from edgeverify.store.profiles import ProfileStore

    broker = Broker()
    config = parse_config({"device_id": "late", "state_dir": str(tmp_path),
                           "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 1, "reconnect_max_s": 1,
                                    "discovery_prefix": None}})
    service, run = mqtt_adapter(config, DecisionService(int8_verifier, ProfileStore(tmp_path)))
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(stop,), daemon=True)
    service.start()
    worker.start()
    try:
        assert not service.connected.wait(1.0)
        broker.start()
        assert service.connected.wait(5.0), "did not reconnect within 5 s"
        hub = Hub(broker.port)
        try:
            hub.subscribe("homeassistant/#")
            hub.subscribe("edgeverify/late/response")
            hub.subscribe("edgeverify/late/availability")
            # "online" is published after the subscriptions (same connection, in order): once the hub has
            # it, the broker has the request subscription and the request below cannot slip past it
            hub.wait(lambda m: m.topic == "edgeverify/late/availability" and m.payload == b"online", 10)
            clip = sorted((speech_dir / "dev" / "vctk-p225").glob("*.wav"))[0]
            hub.publish("edgeverify/late/request", encode_request("identify", (clip.name, clip.read_bytes()), request_id="L"))
            m = hub.wait(lambda m: m.topic == "edgeverify/late/response", 10)
            r = json.loads(m.payload)
            assert r["ok"] and r["request_id"] == "L" and r["speaker"] is None and "scores" not in r  # no profiles
            time.sleep(0.3)
            assert not any(m.topic.startswith("homeassistant/") for m in list(hub.messages.queue))  # discovery off
        finally:
            hub.close()
    finally:
        stop.set()
        worker.join(3)
        service.stop()
        broker.stop()


def test_free_port_helper() -> None:
    assert 1024 < free_port() < 65536


def test_maximum_packet_size_follows_the_payload_limit(caplog: pytest.LogCaptureFixture) -> None:
    """CONNECT announces max_payload_bytes + the topic/properties allowance; a reload may lower the limit
    (checked by us at once) but a higher one waits for a restart (the broker keeps the announced size)."""
    import logging

    from edgeverify.app.counters import Counters
    from edgeverify.app.sinks import DecisionSinks
    from edgeverify.app.worker import ModelWorker
    from edgeverify.mqtt.connection import PACKET_ALLOWANCE, MqttConnection, max_packet_size
    from edgeverify.mqtt.requests import MqttRequests

    config = parse_config({"device_id": "mps", "limits": {"max_payload_bytes": 1_000_000}})
    conn = MqttConnection(config, "edgeverify/mps/availability", Counters())
    assert conn.max_packet_size == 1_000_000 + PACKET_ALLOWANCE
    assert max_packet_size(256_000_000) == 256_000_000 + PACKET_ALLOWANCE <= 268_435_455
    requests = MqttRequests(config, conn, None, ModelWorker(2), Counters(), DecisionSinks(), "edgeverify/mps")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        requests.set_max_payload_bytes(500_000)
        assert requests.max_payload_bytes == 500_000 and not caplog.records
        requests.set_max_payload_bytes(5_000_000)
    assert "until a restart" in caplog.text
