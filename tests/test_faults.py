"""Faults with a real persistent mosquitto and the real daemon: nothing lost, nothing answered twice differently.

Injected: daemon SIGKILL with requests queued, daemon SIGTERM with requests queued, requests published
while the daemon is down, broker restarts (persistence on) with the daemon running and with it dead,
and a request whose v5 Message Expiry passes while it waits in the queue. Every request is identified by
its correlation data; each must be answered, and repeats must carry the same result.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import MOSQUITTO, Broker, Hub  # noqa: E402
from daemon_process import DaemonProcess, as_clip  # noqa: E402

from edgeverify.app.protocol import encode_request  # noqa: E402

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")

ANSWER_S = 120  # generous: six helpers share two cores


@pytest.fixture(scope="module")
def pbroker() -> Any:
    with Broker(persistence=True) as b:
        yield b


class Ledger:
    """Requests sent (by correlation data) and every reply received for them."""

    def __init__(self, hub: Hub, reply_topic: str) -> None:
        self.hub, self.reply_topic = hub, reply_topic
        self.sent: dict[bytes, str] = {}
        self.replies: dict[bytes, list[dict]] = {}

    def send(self, topic: str, payload: bytes, tag: str, expiry: Optional[int] = None) -> bytes:
        corr = f"{tag}-{uuid.uuid4().hex[:8]}".encode()
        self.sent[corr] = tag
        self.hub.publish(topic, payload, response_topic=self.reply_topic, correlation=corr, expiry=expiry)
        return corr

    def collect(self, want: set[bytes], timeout: float = ANSWER_S) -> None:
        deadline = time.monotonic() + timeout
        while not want <= set(self.replies):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(self.sent[c] for c in want - set(self.replies))
                raise AssertionError(f"requests never answered: {missing}")
            self.drain(min(left, 2.0))

    def drain(self, timeout: float = 0.5) -> None:
        try:
            while True:
                m = self.hub.wait(lambda m: m.topic == self.reply_topic, timeout)
                corr = getattr(m.properties, "CorrelationData", None)
                self.replies.setdefault(corr, []).append(json.loads(m.payload))
                timeout = 0.2
        except TimeoutError:
            pass

    def check_consistent(self) -> int:
        """Every repeat of an answer carries the same result; returns how many repeats there were."""
        repeats = 0
        for corr, answers in self.replies.items():
            outcome = {json.dumps({k: a.get(k) for k in ("ok", "speaker", "score", "error", "request_id")},
                                  sort_keys=True) for a in answers}
            assert len(outcome) == 1, (self.sent.get(corr), answers)
            repeats += len(answers) - 1
        return repeats


def _session_hub(broker: Broker) -> Hub:
    hub = Hub(broker.port, client_id=f"hub-{uuid.uuid4().hex[:6]}", session_expiry=600)
    assert hub.connected()
    return hub


def test_daemon_killed_and_stopped_with_requests_queued(tmp_path: Path, pbroker: Broker, int8_model: Path,
                                                        state_dir: Path, clips: dict) -> None:
    """SIGKILL with 8 requests in hand, then SIGTERM with more queued and more sent while it is down."""
    hub = _session_hub(pbroker)
    reply = f"hub/faults/{uuid.uuid4().hex}"
    hub.subscribe(reply)
    ledger = Ledger(hub, reply)
    a = clips["vctk-p225"]
    d = DaemonProcess(tmp_path, pbroker.port, int8_model, state_dir, "kill1", limits={"queue_size": 16})
    try:
        topic = f"{d.base}/request"
        first = [ledger.send(topic, encode_request("identify", as_clip(a[i % 8]), request_id=f"k{i}"), f"k{i}")
                 for i in range(8)]
        ledger.collect({first[0]})  # the worker is busy with the rest
        d.kill()
        d = DaemonProcess(tmp_path, pbroker.port, int8_model, state_dir, "kill1", limits={"queue_size": 16})
        ledger.collect(set(first))
        second = [ledger.send(topic, encode_request("identify", as_clip(a[i]), request_id=f"t{i}"), f"t{i}")
                  for i in range(4)]
        ledger.collect({second[0]})
        assert d.stop() == 0
        down = [ledger.send(topic, encode_request("identify", as_clip(a[i]), request_id=f"d{i}"), f"d{i}")
                for i in range(4)]
        d = DaemonProcess(tmp_path, pbroker.port, int8_model, state_dir, "kill1", limits={"queue_size": 16})
        ledger.collect(set(first + second + down))
        ledger.drain(1.0)
        ledger.check_consistent()
        for corr in second + down:  # a clean stop acknowledges what it answered: no repeats at all
            assert len(ledger.replies[corr]) == 1, (ledger.sent[corr], ledger.replies[corr])
        for corr in first + second + down:
            assert all(r["ok"] and r["speaker"] == "alice" for r in ledger.replies[corr]), ledger.replies[corr]
    finally:
        d.stop()
        hub.close()


def test_broker_restarts_with_persistence(tmp_path: Path, pbroker: Broker, int8_model: Path, state_dir: Path,
                                          clips: dict) -> None:
    """Requests published right after a broker restart are answered once the daemon is back; with the
    daemon dead across a restart, subscribers never see it `online`."""
    d = DaemonProcess(tmp_path, pbroker.port, int8_model, state_dir, "brk1", limits={"queue_size": 16})
    hub = _session_hub(pbroker)
    try:
        reply = f"hub/brk/{uuid.uuid4().hex}"
        hub.subscribe(reply)
        ledger = Ledger(hub, reply)
        a = clips["vctk-p226"]
        topic = f"{d.base}/request"
        ledger.collect({ledger.send(topic, encode_request("identify", as_clip(a[0])), "warm")})
        pbroker.restart()  # SIGTERM: mosquitto saves sessions, subscriptions and retained messages
        assert hub.connected(20)
        sent = [ledger.send(topic, encode_request("identify", as_clip(a[i % 8]), request_id=f"b{i}"), f"b{i}")
                for i in range(6)]
        ledger.collect(set(sent))
        assert all(r["ok"] and r["speaker"] == "bob" for c in sent for r in ledger.replies[c])
        ledger.check_consistent()

        # the daemon dies while the broker is down: after the restart nobody may be told it is online
        pbroker.halt()
        d.kill()
        pbroker.start()
        watcher = Hub(pbroker.port)
        try:
            watcher.subscribe(f"{d.base}/availability")
            states = []
            try:
                while True:
                    states.append(watcher.wait(lambda m: m.topic.endswith("/availability"), 3).payload)
            except TimeoutError:
                pass
            assert states and states[-1] == b"offline" and b"online" not in states, states
            d = DaemonProcess(tmp_path, pbroker.port, int8_model, state_dir, "brk1", keepalive=5)
            assert watcher.wait(lambda m: m.topic.endswith("/availability"), 20).payload == b"online"
        finally:
            watcher.close()

        # the broker crashes (no clean save, no will sent; its last autosave holds the retained `online`) and
        # the daemon dies too: the retained `online` expires (2 x keepalive = 10 s) instead of lingering
        time.sleep(3)  # autosaves (every 1 s) with the daemon online
        pbroker.halt(kill=True)
        d.kill()
        time.sleep(11)
        pbroker.start()
        late = Hub(pbroker.port)
        try:
            late.subscribe(f"{d.base}/availability")
            with pytest.raises(TimeoutError):
                late.wait(lambda m: m.topic.endswith("/availability") and m.payload == b"online", 3)
        finally:
            late.close()
    finally:
        d.stop()
        hub.close()


def test_expired_requests_are_dropped_and_repeats_answered_once(tmp_path: Path, pbroker: Broker, int8_model: Path,
                                                                state_dir: Path, clips: dict) -> None:
    hub = _session_hub(pbroker)
    d = DaemonProcess(tmp_path, pbroker.port, int8_model, state_dir, "exp1", limits={"queue_size": 16})
    try:
        reply = f"hub/exp/{uuid.uuid4().hex}"
        hub.subscribe(reply)
        ledger = Ledger(hub, reply)
        a = clips["vctk-p225"]
        topic = f"{d.base}/request"
        # keep the worker busy for a while, then queue a request that expires after 1 s
        busy = [ledger.send(topic, encode_request("verify", as_clip(a[i]), as_clip(a[i + 1])), f"w{i}") for i in range(6)]
        stale = ledger.send(topic, encode_request("identify", as_clip(a[0]), request_id="stale"), "stale", expiry=1)
        ledger.collect(set(busy))
        ledger.drain(2.0)
        assert stale not in ledger.replies
        # the same request (same correlation data, same payload) sent twice: one computation, same answer
        payload = encode_request("identify", as_clip(a[2]), request_id="twice")
        corr = b"twice-1"
        for _ in range(2):
            hub.publish(topic, payload, response_topic=reply, correlation=corr)
        ledger.sent[corr] = "twice"
        ledger.collect({corr})
        ledger.drain(2.0)
        assert ledger.check_consistent() <= 1
        assert len({r["analysis_id"] for r in ledger.replies[corr]}) == 1  # the stored reply, not a new one
    finally:
        assert d.stop() == 0
        hub.close()
    log = d.log_path.read_text()
    assert "expired while queued" in log, log[-3000:]
