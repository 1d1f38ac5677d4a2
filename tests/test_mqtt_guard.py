"""paho shims (edgeverify/mqtt/guard.py): a PUBLISH paho cannot decode is dropped and acknowledged, not the
connection; U+FEFF in v5 string properties is accepted (mosquitto forwards it; paho 2.x refused it)."""

from __future__ import annotations

import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub  # noqa: E402

from edgeverify.mqtt.guard import guard_publish, tolerate_bom  # noqa: E402


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def test_undecodable_publish_is_acknowledged_and_dropped() -> None:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    dropped: list[str] = []
    assert guard_publish(c, lambda topic, exc: dropped.append(topic))
    props = b"\x26" + _s(b"k") + _s(b"\xff\xfe")  # a user property that is not UTF-8
    body = _s(b"ev/d/request") + (7).to_bytes(2, "big") + bytes([len(props)]) + props + b"payload"
    c._in_packet = {"command": 0x32, "packet": body}  # PUBLISH, QoS 1
    before = len(c._out_packet)
    assert c._handle_publish() == mqtt.MQTT_ERR_SUCCESS
    assert dropped == ["ev/d/request"]
    pubacks = [p for p in list(c._out_packet)[before:] if p["command"] == 0x40]
    assert pubacks and pubacks[-1]["mid"] == 7  # acknowledged: the broker will not resend it
    c._in_packet = {"command": 0x32, "packet": b"\x00"}  # not even a header: still a protocol error
    with pytest.raises(Exception):  # noqa: B017 -- whatever paho raises; the point is that it is not guarded away
        c._handle_publish()


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
def test_bom_in_user_property_is_delivered() -> None:
    assert tolerate_bom()
    with Broker() as b:
        spy, sender = Hub(b.port), Hub(b.port)
        try:
            spy.subscribe("t/#")
            sender.publish("t/x", b"p", user={"k": "a\ufeffb"}, response_topic="r/\ufeff")
            m = spy.wait(lambda m: m.topic == "t/x", 10)
            assert m.properties.UserProperty == [("k", "a\ufeffb")] and m.properties.ResponseTopic == "r/\ufeff"
            assert spy.client.is_connected()
        finally:
            spy.close()
            sender.close()
