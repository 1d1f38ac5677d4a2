"""The Wyoming proxy under attack from the network: each attack of tests/wyoming_attacks.py run against
the real proxy (real model) with the wyoming library's own client and the stand-in STT, with bounds on
what it measured. Each of these failed before its fix (figures in the commit messages)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("wyoming")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wyoming_attacks as attacks  # noqa: E402
from wyoming_stt import TEXT  # noqa: E402
from wyoming_helpers import clips, handler  # noqa: E402,F401  (module fixtures: the real model, two profiles)

pytestmark = pytest.mark.slow


def run(coro: Any, timeout: float = 120.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- admission ---------------------------------------------------------------------------------------------

def test_a_client_outside_the_allow_list_is_closed_unread_and_logged_once(handler, clips, caplog) -> None:
    """Loopback is not in this allow-list: each connection is cut before a byte is read (no event back, no
    session, no STT connection), and the address is logged once, not once per attempt."""
    async def main() -> None:
        async with attacks.proxied(handler, allow=["192.0.2.0/24"]) as (proxy, stt, decisions):
            outcomes = [(await attacks.legit_transcript(proxy.port, clips["alice"], timeout=10))[0] for _ in range(5)]
            assert all(o.startswith(("reset", "closed")) for o in outcomes), outcomes
            assert proxy.active_sessions == 0 and stt.connections == 0 and not decisions
            assert proxy.admission.refused == 5
        async with attacks.proxied(handler) as (proxy, stt, decisions):  # the default: loopback admitted
            outcome, _ = await attacks.legit_transcript(proxy.port, clips["alice"])
            assert outcome == "transcript" and decisions

    with caplog.at_level(logging.WARNING, logger="edgeverify.wyoming_stt"):
        run(main())
    refusals = [r for r in caplog.records if "not in wyoming.allow" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]


def test_a_full_server_answers_busy_not_a_reset(handler, clips) -> None:
    """A client that connects to a full server and streams at once reads a Wyoming `busy` error."""
    figures = run(attacks.busy(handler, clips["alice"]))
    assert figures["busy_errors"] == len(figures["outcomes"]), figures


# -- queued work -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds,code", [(20.0, "error:busy"), (60.0, "error:audio-too-long")],
                         ids=["20s-under-the-audio-cap", "60s-over-it"])
def test_an_embedding_backlog_is_refused_bounded_and_dropped_with_its_client(handler, clips, seconds: float,
                                                                             code: str) -> None:
    """100 utterances back to back on one connection (20 s each: 64 MB in ~2 s; 60 s: 192 MB): the client is
    told `busy` for what it queues beyond its share (or `audio-too-long` past max_audio_s), memory stays at
    what one utterance costs, another client's transcript is not held behind the backlog, and the queued
    jobs go when the attacker does (a running one may finish)."""
    f = run(attacks.backlog(handler, clips["alice"], clips["alice"], n=100, seconds=seconds), timeout=300)
    assert f["attacker_got"].get(code, 0) >= 1, f
    assert f["rss_peak_above_one_utterance_mb"] < 50, f
    assert f["legit"] == "transcript" and f["legit_latency_s"] < 5.0, f
    assert f["decisions_3s_after_attacker_left"] <= 1, f


# -- connection slots --------------------------------------------------------------------------------------

def test_pinging_does_not_hold_a_slot(handler, clips) -> None:
    """4 clients take every slot and ping twice a second; pings are not utterance work, so they are
    disconnected after idle_timeout_s; a client trying once a second meanwhile reads `busy` (never a
    reset) and is served once they are gone."""
    f = run(attacks.slots(handler, clips["alice"], holders=4, duration=8.0, options={"idle_timeout_s": 2.0}))
    assert f["legit_resets_or_closed"] == 0 and f["legit_answered"] >= 3, f
    assert f["legit_first_served_s"] is not None and f["legit_first_served_s"] < 5.0, f
    assert f["holder_longest_s"] < 4.0, f


def test_a_session_ends_after_max_session_s_whatever_it_sends(handler) -> None:
    """Audio every 0.2 s is progress (no idle timeout) but the session still ends, with an error saying so."""
    f = run(attacks.dribble(handler, duration=10.0, options={"max_session_s": 3.0}))
    assert f["told"] == "error:session-limit" and f["held_s"] < 5.0, f


# -- audio caps --------------------------------------------------------------------------------------------

def test_a_600_s_stream_is_cut_at_max_audio_s(handler) -> None:
    """600 s (19.2 MB) in one utterance: the STT gets max_audio_s of it, the client an `audio-too-long` error."""
    f = run(attacks.long_stream(handler, seconds=600.0, options={"max_audio_s": 30.0}))
    assert f["reply"] == "error:audio-too-long" and f["stt_received_s"] <= 31.0, f


@pytest.mark.parametrize("rate,width,channels", [(48000, 4, 2), (123456789, 2, 1)], ids=["wide-format", "bogus-format"])
def test_the_audio_cap_counts_bytes_whatever_the_declared_format(handler, rate: int, width: int, channels: int) -> None:
    """A format that makes each byte worth little time (or a bogus one, counted as 16 kHz s16 mono) still
    meets a byte cap: max_audio_s x 192 kB (48 kHz stereo s16)."""
    from wyoming.audio import AudioChunk, AudioStart
    from wyoming.client import AsyncTcpClient

    async def main() -> None:
        async with attacks.proxied(handler, record=True, max_audio_s=2.0) as (proxy, stt, _):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
                for _ in range(40):  # 40 x 64 kB = 2.6 MB
                    await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=bytes(65536)).event())
                event = await attacks.answer(client, 10)
            assert event is not None and event.data.get("code") == "audio-too-long"
            assert stt.received <= 2 * 192000 + 65536

    run(main())


# -- pipelining ----------------------------------------------------------------------------------------------

def test_a_pipelined_transcribe_cannot_take_the_previous_utterances_decision(handler, clips) -> None:
    """reject_unknown + tagging; a stranger's utterance, then at once alice's, while the STT takes 0.5 s per
    transcript: the stranger's transcript is still rejected and alice's still tagged, and each decision
    handed to Home Assistant carries the digest of its own returned text."""
    import hashlib

    f = run(attacks.pipelined(handler, clips["stranger"], clips["alice"]))
    assert f["first_text"] == "" and f["second_text"] == f"alice: {TEXT}", f
    (s1, r1, u1), (s2, r2, u2) = f["decisions"]
    assert (s1, r1, s2, r2) == (None, True, "alice", False)
    digest = lambda t: hashlib.sha256(" ".join(t.split()).casefold().encode()).hexdigest()  # noqa: E731
    assert u1["transcript_sha256"] == digest("") and u2["transcript_sha256"] == digest(f["second_text"])
    assert u1["at"] <= u2["at"]


def test_several_flooding_connections_cannot_lock_another_client_out(handler, clips) -> None:
    """Three connections fill the identification queue together; a fourth client's utterance takes the
    place of one of theirs instead of being refused, and its transcript comes back."""
    f = run(attacks.backlog(handler, clips["alice"], clips["alice"], n=99, seconds=20.0, connections=3), timeout=300)
    assert f["legit"] == "transcript" and f["legit_latency_s"] < 5.0, f
    assert f["rss_peak_above_one_utterance_mb"] < 50, f


def test_waiting_for_a_slow_stt_is_not_idling(handler, clips) -> None:
    """idle_timeout_s 1 s, an STT that takes 2.5 s: the client waiting quietly for its transcript gets it."""
    from wyoming.client import AsyncTcpClient

    async def main() -> None:
        async with attacks.proxied(handler, idle_timeout_s=1.0) as (proxy, stt, decisions):
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await attacks.send_utterance(client, clips["alice"], name="delay:2.5")
                event = await attacks.answer(client, 10)
            assert event is not None and event.type == "transcript", event
            assert decisions and decisions[-1][0]["speaker"] == "alice"

    run(main())
