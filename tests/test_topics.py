"""MQTT topic rules, the reply-topic policy, the bounded JSON parse and the at-least-once bookkeeping."""

from __future__ import annotations

import json
import time

import pytest

from edgeverify.mqtt.delivery import AckLedger, CachedReply, ReplyCache, request_key
from edgeverify.errors import RequestError
from edgeverify.app.protocol import MAX_JSON_DEPTH, MAX_META_CHARS, Response, load_json, parse_request, salvage_meta
from edgeverify.mqtt.topics import ReplyPolicy
from edgeverify.topic_rules import filter_problem, matches, topic_problem


@pytest.mark.parametrize("topic", ["a\x00b", "a\x01", "\x1f", "x\x7f", "\x85", "\x9f", "\ufffe", "\uffff",
                                   "\U0010ffff", "\U0001fffe", "\ufdd0", "\ud800", "a\udfff", "", "a/+", "#",
                                   "x" * 65536, "\u00e9" * 40000, None, 7])
def test_invalid_topics(topic: object) -> None:
    assert topic_problem(topic) is not None


@pytest.mark.parametrize("topic", ["a", "a/b", "/", "a//b", "\u00e9t\u00e9/\U0001f600", "\u00a0", "$SYS/x",
                                   "x" * 65535, "\U0010fffd"])
def test_valid_topics(topic: str) -> None:
    assert topic_problem(topic) is None


def test_filters_and_matching() -> None:
    for good in ("#", "a/#", "+/b", "a/+/c", "+", "a/b"):
        assert filter_problem(good) is None
    for bad in ("a/#/b", "a#", "a/b+", "", "a\x00"):
        assert filter_problem(bad) is not None
    assert matches("a/#", "a") and matches("a/#", "a/b/c") and matches("+/b", "x/b") and not matches("+/b", "x/c")
    assert not matches("#", "$SYS/x") and not matches("+/x", "$SYS/x") and matches("$SYS/#", "$SYS/x")
    assert not matches("a/+", "a/b/c") and matches("a/+/+", "a/b/c") and not matches("a/b", "a")


def test_reply_policy_default_and_allow_list() -> None:
    p = ReplyPolicy("ev", "ev/me/response", "homeassistant")
    refused = ["ev/me/request", "ev/me/request/identify", "ev/other/request", "ev/request", "ev/request/x",
               "ev/other/state", "ev/me/availability", "ev/x/event", "homeassistant/sensor/a/config",
               "homeassistant/status", "$SYS/x", "$share/g/t", "zigbee2mqtt/front_door/set", "cmnd/plug/POWER",
               "a\x01", "a/#", "\ud800", ""]
    for t in refused:
        assert p.refusal(t) is not None, t
    for t in ("ev/me/response", "ev/me/response/x", "hub/answers", "ev/hub/answers", "settings/x"):
        assert p.refusal(t) is None, t
    narrow = ReplyPolicy("ev", "ev/me/response", None, ("hub/answers/#", "+/replies"))
    assert narrow.refusal("hub/answers/k") is None and narrow.refusal("x/replies") is None
    assert narrow.refusal("ev/me/response") is None  # the default always works
    assert "reply_topics" in narrow.refusal("somewhere/else")
    assert narrow.refusal("homeassistant/x") is not None  # HA's default prefix stays protected with discovery off
    assert ReplyPolicy("ev", "ev/me/response", "ha", ("#",)).refusal("ha/light/x/config") is not None


@pytest.mark.parametrize("payload", [b"[" * 100_000, b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
                                     b"[]," * 100_000, b'"a",' * 20_000, b'"\\' * 50_000, b'"' + b"a" * 10_000])
def test_bounded_json_refuses_hostile_structure(payload: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(RequestError):
        load_json(payload)
    with pytest.raises(RequestError):
        parse_request(payload)
    salvage_meta(payload, {})  # never raises
    assert time.perf_counter() - started < 30  # not quadratic (a generous bound; the point is "not hours")


def test_bounded_json_keeps_real_requests() -> None:
    nested = b'{"a":' * MAX_JSON_DEPTH + b"1" + b"}" * MAX_JSON_DEPTH
    assert load_json(nested)
    tricky = b'{"type": "identify", "request_id": "\\"[[[[{{{{", "first": {"name": "x\\\\", "audio_b64": "AAAA"}}'
    req = parse_request(tricky)
    assert req.request_id == '"[[[[{{{{' and req.first.name == "x\\"
    big = json.dumps({"type": "identify", "first": {"audio_b64": "A" * 4_000_000}}).encode()
    assert len(parse_request(big).first.data) == 3_000_000


def test_metadata_echo_is_safe() -> None:
    raw = json.dumps({"type": "identify", "request_id": "r" * 100_000, "requestor_id": "\ud800\x01",
                      "reply_to": 3.5, "first": {"name": "\udfff", "audio_b64": "AAAA"}}).encode()
    meta = salvage_meta(load_json(raw), {})
    assert len(meta["request_id"]) == MAX_META_CHARS and meta["reply_to"] is None  # a number is no topic
    body = json.dumps(Response(ok=False, meta=meta, error_code="x").to_dict("dev")).encode()  # as published; lone surrogates escaped, not fatal
    assert json.loads(body)["requestor_id"] == "\ud800\x01"
    long_topic = {"type": "capture", "reply_to": "x" * 70_000}
    assert parse_request(json.dumps(long_topic).encode()).reply_to == "x" * 70_000  # refused later, never cut
    assert salvage_meta(long_topic, {})["reply_to"] == "x" * 70_000
    with pytest.raises(RequestError, match="reply_to"):
        parse_request(raw.replace(b'"r' + b"r" * 99_999 + b'"', b'"1"'))


def test_request_key_and_reply_cache() -> None:
    k = request_key("t", b"p", [("a", "1")], "r", b"c")
    assert k == request_key("t", b"p", [("a", "1")], "r", b"c")
    assert len({k, request_key("t", b"p", [("a", "1")], "r", b"d"), request_key("t", b"p", [], "r", b"c"),
                request_key("t", b"p", [("a", "1")], None, b"c"), request_key("t", b"q", [("a", "1")], "r", b"c"),
                request_key("t\ud800", b"p", [("a", "1")], "r", b"c")}) == 6
    cache = ReplyCache(entries=2, ttl_s=60)
    for i in range(3):
        cache.put(bytes([i]), CachedReply("t", b"%d" % i, None))
    assert cache.get(b"\x00") is None and cache.get(b"\x02").payload == b"2" and len(cache) == 2
    old = ReplyCache(ttl_s=0.0)
    old.put(b"k", CachedReply("t", b"x", None))
    time.sleep(0.01)
    assert old.get(b"k") is None


def test_ack_ledger_acks_only_after_publish_completes() -> None:
    sent: list[tuple[int, int]] = []
    ledger = AckLedger(lambda mid, qos: sent.append((mid, qos)))
    ledger.after_publish(10, [(1, 1), (2, 1), (1, 1)])
    assert sent == [] and ledger.waiting == 3
    ledger.published(11)  # another publish
    assert sent == []
    ledger.published(10)
    assert sent == [(1, 1), (2, 1)]  # once each
    ledger.published(12)  # completion seen before the acks are registered (fast network thread)
    ledger.after_publish(12, [(3, 2)])
    ledger.after_publish(None, [(4, 1), (5, 0)])  # nothing published: ack at once; QoS 0 needs none
    assert sent[2:] == [(3, 2), (4, 1)]
