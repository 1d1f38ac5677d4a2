"""The inbox: unrecognised utterances kept as embeddings (never audio), assigned to a person later.

Bounds with a clock of our own; the Wyoming path end to end with the stand-in STT, the real int8 model and
real recordings (the transcript stays in-process; assigning enrolls a voice that is then recognised); the
admin API on a real mosquitto against a real `edgeverify run`, with hostile ids and names.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgeverify.core.model_identity import ModelIdentity  # noqa: E402
from edgeverify.app.inbox import Inbox, InboxHandler, Unrecognised, parse_inbox_request  # noqa: E402
from edgeverify.store.config import InboxConfig  # noqa: E402


def voice(seed: int, nearest: str = "alice") -> Unrecognised:
    v = np.random.default_rng(seed).standard_normal(192).astype(np.float32)
    return Unrecognised(v / np.linalg.norm(v), 3.0, "16k", ModelIdentity("campp", "int8"), -1.5, nearest)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_bounded_by_count_and_age_oldest_first() -> None:
    clock = Clock()
    inbox = Inbox(InboxConfig(enabled=True, max_items=3, max_age_h=1.0), clock)
    ids = []
    for i in range(5):
        ids.append(inbox.offer(voice(i), "microphone"))
        clock.t += 60
    assert [e.id for e in inbox.entries()] == ids[2:]  # the two oldest dropped for the newer ones
    clock.t += 3600 - 3 * 60 + 1  # the first kept one is now just over an hour old
    assert [e.id for e in inbox.entries()] == ids[3:]
    clock.t += 3 * 60
    assert inbox.entries() == []
    # MQTT requests never feed it; off keeps nothing; switching it off on reload empties it
    assert inbox.offer(voice(9), "mqtt") is None
    assert inbox.offer(voice(10), "wyoming", "x" * 10_000) is not None
    assert len(inbox.entries()[0].transcript or "") == 300
    inbox.reconfigure(InboxConfig(enabled=False))
    assert inbox.entries() == [] and inbox.offer(voice(11), "microphone") is None


def test_forget_drops_entries_nearest_to_that_person() -> None:
    inbox = Inbox(InboxConfig(enabled=True))
    a, b = inbox.offer(voice(1, "alice"), "microphone"), inbox.offer(voice(2, "bob"), "microphone")
    inbox.tidy({"bob", "carol"})  # alice was forgotten
    assert [e.id for e in inbox.entries()] == [b] and a != b
    assert inbox.keep_nearest({"carol"}) == 1 and inbox.entries() == []


@pytest.mark.parametrize("doc, problem", [
    ({"type": "inbox_assign", "id": "1; rm -rf /", "name": "alice"}, "'id' must be"),
    ({"type": "inbox_assign", "id": True, "name": "alice"}, "'id' must be"),
    ({"type": "inbox_assign", "id": -3, "name": "alice"}, "'id' must be"),
    ({"type": "inbox_assign", "id": 10 ** 400, "name": "alice"}, "'id' must be"),
    ({"type": "inbox_assign", "id": 1.5, "name": "alice"}, "'id' must be"),
    ({"type": "inbox_assign", "id": 1, "name": "../../etc/passwd"}, "invalid profile name"),
    ({"type": "inbox_assign", "id": 1, "name": "é" * 5000}, "invalid profile name"),
    ({"type": "inbox_assign", "id": 1}, "'name' is required"),
    ({"type": "inbox_assign", "id": 1, "name": {"$ne": 1}}, "'name' must be a string"),
])
def test_hostile_requests_are_refused_with_a_short_reason(doc: dict, problem: str) -> None:
    from edgeverify.errors import EdgeVerifyError

    with pytest.raises(EdgeVerifyError) as err:
        parse_inbox_request(doc)
    assert problem in err.value.message and len(err.value.message) < 300


def test_only_unrecognised_room_utterances_feed_it(tmp_path: Path, int8_verifier: Any, speech_dir: Path) -> None:
    """Microphone in identify mode: a stranger is kept, alice is not; verify mode and MQTT requests never are."""
    from edgeverify.app.decisions import DecisionService
    from edgeverify.app.protocol import parse_request
    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore
    import base64

    d = speech_dir / "dev" / "vctk-p225"
    store = ProfileStore(tmp_path / "state")
    store.enroll("alice", [int8_verifier.embed(read_audio(d / f"p225_0{n}.wav")) for n in ("08", "11", "16")],
                 model=int8_verifier.model)
    service = DecisionService(int8_verifier, store, max_audio_seconds=30.0)
    inbox = Inbox(InboxConfig(enabled=True))
    service.attach_inbox(inbox)
    stranger_wav = sorted((speech_dir / "dev" / "ls-1688").glob("*.wav"))[0]
    stranger = read_audio(stranger_wav).samples
    alice = read_audio(d / "p225_022.wav").samples

    assert service.utterance(alice).result["speaker"] == "alice"
    assert inbox.entries() == []
    assert service.utterance(stranger).result["speaker"] is None
    [entry] = inbox.entries()
    assert entry.source == "microphone" and entry.transcript is None and entry.voice.nearest == "alice"
    assert entry.voice.embedding.shape == (int8_verifier.embed(read_audio(d / "p225_022.wav")).size,)
    # the entry holds the embedding and scalars only: nothing of the size of the audio
    held = [v for v in vars(entry.voice).values() if isinstance(v, np.ndarray)]
    assert sum(v.nbytes for v in held) < 4096 < stranger.nbytes
    service.mic_profile = "alice"  # microphone.mode verify:alice: a rejection is "not alice", not "unknown"
    assert service.utterance(stranger).result["same_speaker"] is False
    service.mic_profile = None
    clip = {"name": "s.wav", "audio_b64": base64.b64encode(stranger_wav.read_bytes()).decode()}
    answer = service.handle(parse_request({"type": "identify", "first": clip}))
    assert answer.ok and answer.result["speaker"] is None
    assert len(inbox.entries()) == 1  # neither the verify-mode rejection nor the MQTT request was kept


# -- the Wyoming path, in-process ------------------------------------------------------------------


def _floats_runs(text: str) -> int:
    """The longest run of numbers in a JSON text (an embedding would be a list of 192)."""
    runs = re.findall(r"\[(?:\s*-?[0-9.eE+-]+\s*,){15,}", text)
    return max((r.count(",") for r in runs), default=0)


def test_wyoming_stranger_lands_in_the_inbox_and_assigning_enrolls_them(
        tmp_path: Path, int8_verifier: Any, speech_dir: Path) -> None:
    pytest.importorskip("wyoming")
    from wyoming_helpers import ENROLL, pcm16, proxied, run, transcribe
    from wyoming_stt import TEXT

    from edgeverify.app.decisions import DecisionService
    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore

    store = ProfileStore(tmp_path / "state")
    for name, (spk, names) in ENROLL.items():
        store.enroll(name, [int8_verifier.embed(read_audio(speech_dir / "dev" / spk / f"{c}.wav")) for c in names],
                     names, model=int8_verifier.model)
    service = DecisionService(int8_verifier, store, max_audio_seconds=30.0)
    inbox = Inbox(InboxConfig(enabled=True))
    service.attach_inbox(inbox)
    handler = InboxHandler(service, inbox)
    stranger = sorted((speech_dir / "dev" / "ls-1688").glob("*.wav"))
    first, second = pcm16(stranger[0]), pcm16(stranger[1])

    async def talk(pcm: bytes) -> tuple[list, list]:
        async with proxied(service) as (proxy, _stt, decisions):
            events = await transcribe(proxy.port, pcm)
            for _ in range(200):  # published once the client has its answer
                if decisions:
                    break
                await asyncio.sleep(0.05)
            return events, decisions

    events, decisions = run(talk(first))
    assert events[-1].type == "transcript"
    body, source = decisions[0]
    assert source == "wyoming" and body["speaker"] is None
    entries = inbox.entries()
    assert len(entries) == 1
    entry = entries[0].to_dict()
    assert entry["source"] == "wyoming" and entry["transcript"] == " ".join(TEXT.split())
    assert entry["margin"] < 0 and entry["nearest"] in ENROLL
    assert set(entry) == {"id", "at", "time", "source", "transcript", "margin", "nearest", "speech_s"}
    # what the sink got: the transcript's digest, never the text nor the embedding
    shown = json.dumps(body, ensure_ascii=False)
    assert "Licht" not in shown and "unrecognised" not in shown and _floats_runs(shown) < 16
    assert isinstance(body, dict) and not getattr(body, "unrecognised", None)  # handed over, not kept

    # the second clip is not recognised before the assignment (else this test proves nothing)
    _, decisions = run(talk(second))
    assert decisions[0][0]["speaker"] is None and len(inbox.entries()) == 2
    inbox.discard(inbox.entries()[1].id)

    resp = handler.handle(parse_inbox_request({"type": "inbox_assign", "id": entry["id"], "name": "carol"}))
    assert resp.ok, resp.error_message
    assert resp.result["created"] is True and resp.result["profile"]["clips"] == 1
    assert inbox.entries() == []
    _, decisions = run(talk(second))
    assert decisions[0][0]["speaker"] == "carol"
    # a bob utterance from the inbox does not join carol: the enrollment consistency check still applies
    bob = read_audio(speech_dir / "dev" / "vctk-p226" / "p226_022.wav").samples
    store.forget("bob")
    _, unrecognised = service.decide_live(bob, "microphone")
    assert unrecognised is not None
    bad = inbox.offer(unrecognised, "microphone")
    refused = handler.handle(parse_inbox_request({"type": "inbox_assign", "id": bad, "name": "carol"}))
    assert not refused.ok and "match" in (refused.error_message or "")
    assert [e.id for e in inbox.entries()] == [bad]  # a refused entry stays to be assigned elsewhere
    # nothing but profiles was written
    files = sorted(p.relative_to(tmp_path / "state").as_posix() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert files == ["profiles/alice.json", "profiles/carol.json"]


# -- the admin API on a real broker, against a real daemon -----------------------------------------


def test_admin_inbox_round_trip_with_hostile_ids(tmp_path: Path, int8_verifier: Any, int8_model: Path,
                                                 speech_dir: Path) -> None:
    pytest.importorskip("wyoming")
    from broker import MOSQUITTO, Broker, Hub, free_port
    from daemon_process import DaemonProcess, ask
    from wyoming.client import AsyncTcpClient
    from wyoming_helpers import pcm16, read_until, stream
    from wyoming_stt import StandInStt

    from edgeverify.core.audio import read_audio
    from edgeverify.store.profiles import ProfileStore

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    d = speech_dir / "dev" / "vctk-p225"
    ProfileStore(tmp_path / "state").enroll(
        "alice", [int8_verifier.embed(read_audio(d / f"p225_0{n}.wav")) for n in ("08", "11", "16")], model=int8_verifier.model)
    stranger = sorted((speech_dir / "dev" / "ls-1688").glob("*.wav"))
    proxy_port, stt_port = free_port(), free_port()
    extra = {"wyoming": {"enabled": True, "uri": f"tcp://127.0.0.1:{proxy_port}", "stt_uri": f"tcp://127.0.0.1:{stt_port}"},
             "admin": {"enabled": True}, "inbox": {"enabled": True, "max_items": 5}}

    async def talk(wav: Path) -> None:
        stt = await StandInStt(port=stt_port).start()
        try:
            async with AsyncTcpClient("127.0.0.1", proxy_port) as client:
                await stream(client, pcm16(wav))
                events = await read_until(client, ("transcript", "error"))
                assert events[-1].type == "transcript", events[-1]
        finally:
            await stt.stop()

    with Broker() as broker:
        hub, spy = Hub(broker.port), Hub(broker.port)
        daemon = DaemonProcess(tmp_path, broker.port, int8_model, tmp_path / "state", "inbox1", extra=extra)
        try:
            spy.subscribe("#")
            base, admin = daemon.base, f"{daemon.base}/admin/request"

            def request(doc: Any) -> dict:
                raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                return ask(hub, admin, raw, timeout=30)

            asyncio.run(talk(stranger[0]))
            listed = request({"type": "inbox_list", "transaction": 7})
            for _ in range(50):  # the decision is handed over once the client has its transcript
                if listed["entries"]:
                    break
                listed = request({"type": "inbox_list", "transaction": 7})
            assert listed["ok"] and listed["status"] == "ok" and listed["transaction"] == 7
            [entry] = listed["entries"]
            assert entry["source"] == "wyoming" and "Licht" in entry["transcript"] and entry["nearest"] == "alice"
            hostile = [
                {"type": "inbox_assign", "id": "../../x", "name": "carol"},
                {"type": "inbox_assign", "id": 10 ** 30, "name": "carol"},
                {"type": "inbox_assign", "id": entry["id"], "name": "../../etc/passwd"},
                {"type": "inbox_assign", "id": entry["id"], "name": "x" * 20_000},
                {"type": "inbox_assign", "id": entry["id"] + 1000, "name": "carol"},
                {"type": "inbox_clear", "id": [1]},
                b'{"type": "inbox_assign", "id": 1e999, "name": "carol"}',
            ]
            for doc in hostile:
                answer = request(doc)
                assert not answer["ok"] and answer["status"] == "error", (doc, answer)
                assert len(json.dumps(answer)) < 1500, answer
            assert request({"type": "inbox_list"})["entries"] == [entry]  # still there after all that
            done = request({"type": "inbox_assign", "id": entry["id"], "name": "carol", "request_id": "as1"})
            assert done["ok"], done
            assert done["profile"]["name"] == "carol" and done["request_id"] == "as1"
            assert request({"type": "inbox_list"})["entries"] == []
            listed = request({"type": "list"})
            assert {p["name"] for p in listed["profiles"]} == {"alice", "carol"}

            hub.subscribe(f"{base}/event")
            asyncio.run(talk(stranger[1]))  # carol again: recognised now, so the inbox stays empty
            # the decision for the second clip names carol (retained speaker state / event)
            event = hub.wait(lambda m: m.topic == f"{base}/event" and b"carol" in m.payload, 30)
            assert json.loads(event.payload)["speaker"] == "carol"
            assert request({"type": "inbox_list"})["entries"] == []
            others = [sorted((speech_dir / "dev" / spk).glob("*.wav"))[0] for spk in ("ls-1246", "ls-1069")]

            def one_entry() -> dict:
                for _ in range(50):
                    entries = request({"type": "inbox_list"})["entries"]
                    if entries:
                        return entries[-1]
                raise AssertionError("no inbox entry")

            asyncio.run(talk(others[0]))
            nearest = one_entry()["nearest"]
            assert nearest in ("alice", "carol")
            assert request({"type": "forget", "name": nearest})["ok"]
            assert request({"type": "inbox_list"})["entries"] == []  # forgetting them dropped it
            asyncio.run(talk(others[1]))
            one_entry()
            cleared = request({"type": "inbox_clear"})
            assert cleared["ok"] and cleared["cleared"] == 1 and request({"type": "inbox_list"})["entries"] == []
        finally:
            rc = daemon.stop()
            hub.close()
        seen = []
        while not spy.messages.empty():
            seen.append(spy.messages.get())
        spy.close()
    log = daemon.log_path.read_text()
    assert rc == 0 and "Traceback" not in log, log  # every hostile request answered once, nothing crashed
    # every request answered exactly once (each `ask` has a reply topic of its own)
    replies = [m.topic for m in seen if m.topic.startswith("hub/replies/")]
    assert replies and len(replies) == len(set(replies)), sorted(t for t in replies if replies.count(t) > 1)
    # nothing published anywhere holds the transcript text or an embedding-sized list of numbers
    for m in seen:
        text = m.payload.decode("utf-8", "replace")
        if m.topic.endswith("/admin/request") or "/replies/" in m.topic or m.topic.startswith("hub/"):
            continue  # our own requests and the admin's private answers (inbox_list shows the transcript)
        assert "Licht" not in text and _floats_runs(text) < 16, (m.topic, text[:200])
    files = sorted(p.relative_to(tmp_path / "state").as_posix() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert files == sorted({"profiles/alice.json", "profiles/carol.json"} - {f"profiles/{nearest}.json"})


def test_assign_refuses_an_entry_that_cannot_join_the_profile(tmp_path: Path, int8_verifier: Any) -> None:
    """Another model's entry, another dimension, a clipped recording: an error answer, never a crash, and
    the entry stays."""
    from types import SimpleNamespace

    from edgeverify.store.profiles import ProfileStore

    model = int8_verifier.model
    store = ProfileStore(tmp_path / "state")
    store.enroll("alice", [voice(1).embedding, voice(1).embedding], model=model)
    inbox = Inbox(InboxConfig(enabled=True))
    handler = InboxHandler(SimpleNamespace(verifier=int8_verifier, store=store), inbox)
    wide = np.ones(256, dtype=np.float32) / 16.0
    cases = {
        inbox.offer(Unrecognised(wide, 3.0, "16k", model, -1.0, "alice"), "microphone"): "256",
        inbox.offer(Unrecognised(voice(2).embedding, 3.0, "16k", ModelIdentity("another-model", "int8"), -1.0, "alice"), "microphone"): "model",
        inbox.offer(Unrecognised(voice(3).embedding, 3.0, "16k", model, -1.0, "alice", "5.0% clipped"),
                    "microphone"): "clipped",
    }
    for entry_id, why in cases.items():
        resp = handler.handle(parse_inbox_request({"type": "inbox_assign", "id": entry_id, "name": "alice"}))
        assert not resp.ok and why in (resp.error_message or ""), resp.error_message
    assert len(inbox.entries()) == 3 and store.get("alice").clips == 2
    off = InboxHandler(SimpleNamespace(verifier=int8_verifier, store=store), Inbox(InboxConfig(enabled=False)))
    assert off.handle(parse_inbox_request({"type": "inbox_list"})).error_code == "inbox_disabled"
