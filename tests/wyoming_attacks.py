"""Attacks on the Wyoming proxy from an admitted LAN client, each returning the figures it measured.

    .venv/bin/python tests/wyoming_attacks.py [--json] [backlog slots long_stream pipelined ...]

Used by tests/test_wyoming_attacks.py (which asserts bounds on the figures) and runnable on its own to
print them. Every client is the wyoming library's own AsyncTcpClient; the STT is the stand-in of
tests/wyoming_stt.py; the proxy runs in this process with the real model, so RSS is this process's.

  backlog      one client queues N utterances of S seconds back to back (the embedding backlog), then
               a legitimate client asks for one transcript; then the attacker leaves
  slots        4 clients hold every slot by pinging; a legitimate client tries every second
  long_stream  one utterance of 600 s of audio: how much reaches the STT
  pipelined    the next `transcribe` sent before the transcript of a stranger's utterance arrives
  dribble      a client keeps one utterance going with a little audio every 0.2 s
  busy         a client that connects to a full server and starts streaming at once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

SPEECH = Path(os.environ.get("EDGEVERIFY_SPEECH_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"))
STRANGER_DIR = "ls-1688"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_proxy(handler: Any, on_decision: Callable[[dict, str], None], **options: Any) -> Any:
    """A SpeakerIdProxy configured by `options` (wyoming config fields). Settings an older proxy does
    not know are left out, so that the same attack measures the code before a fix too."""
    from edgeverify.wyoming_stt import proxy as mod

    if hasattr(mod, "ProxyOptions"):  # before the config section was read directly
        known = {f.name for f in dataclasses.fields(mod.ProxyOptions)}
        return mod.SpeakerIdProxy(handler, mod.ProxyOptions(**{k: v for k, v in options.items() if k in known}), on_decision)
    from edgeverify.store.config import WyomingConfig

    return mod.SpeakerIdProxy(handler, WyomingConfig(**options), on_decision)


@contextlib.asynccontextmanager
async def proxied(handler: Any, mode: str = "ok", record: bool = False, **options: Any) -> AsyncIterator[tuple]:
    from wyoming_stt import StandInStt

    stt = await StandInStt(mode, record=record).start()
    decisions: list[tuple[dict, str]] = []
    proxy = make_proxy(handler, lambda body, source: decisions.append((body, source)), stt_uri=stt.uri, **options)
    await proxy.start("tcp://127.0.0.1:0")
    try:
        yield proxy, stt, decisions
    finally:
        await proxy.close()
        await stt.stop()


async def send_utterance(client: Any, pcm: bytes, name: Optional[str] = None, stop: bool = True,
                         chunk_bytes: int = 32000) -> None:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop

    await client.write_event(Transcribe(name=name, language="en").event())
    await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
    for i in range(0, len(pcm), chunk_bytes):
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + chunk_bytes]).event())
    if stop:
        await client.write_event(AudioStop().event())


async def answer(client: Any, timeout: float = 60.0) -> Any:
    """The next transcript or error event (others skipped); None when the connection closes."""
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        if event is None or event.type in ("transcript", "error"):
            return event


async def legit_transcript(port: int, pcm: bytes, timeout: float = 60.0) -> tuple[str, float]:
    """(outcome, seconds from audio-stop to the answer): outcome transcript / error:<code> / closed / reset."""
    from wyoming.audio import AudioStop
    from wyoming.client import AsyncTcpClient

    try:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await send_utterance(client, pcm, stop=False)
            sent = time.perf_counter()
            await client.write_event(AudioStop().event())
            event = await answer(client, timeout)
            took = time.perf_counter() - sent
    except (ConnectionError, OSError) as exc:
        return f"reset ({type(exc).__name__})", 0.0
    if event is None:
        return "closed", took
    return ("transcript" if event.type == "transcript" else f"error:{event.data.get('code')}"), took


class RssSampler:
    """Peak RSS of this process while an attack runs (sampled every 20 ms on the loop)."""

    def __init__(self) -> None:
        self.before = rss_mb()
        self.peak = self.before
        self._task: Optional[asyncio.Task] = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            await asyncio.sleep(0.02)

    def __enter__(self) -> "RssSampler":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss_mb())


# -- the attacks -----------------------------------------------------------------------------------------

async def backlog(handler: Any, speech: bytes, legit: bytes, n: int = 100, seconds: float = 60.0,
                  options: Optional[dict] = None, connections: int = 1) -> dict[str, Any]:
    """`connections` connections queue n utterances of `seconds` each (in all) without waiting; a
    legitimate client then asks for one transcript; the attacker disconnects; do decisions go on being
    made for it?"""
    from wyoming.client import AsyncTcpClient

    reps = int(np.ceil(seconds * 32000 / len(speech)))
    utter = (speech * reps)[: int(seconds * 32000)]
    out: dict[str, Any] = {"utterances": n, "seconds_each": seconds, "connections": connections,
                           "sent_mb": round(n * len(utter) / 1e6, 1)}
    async with proxied(handler, **(options or {})) as (proxy, stt, decisions):
        # one utterance of the attacker's size alone: the model's own (transient) working memory for it,
        # which any single client may cause; what the backlog adds is its peak above this one
        await legit_transcript(proxy.port, legit)
        with RssSampler() as single:
            await legit_transcript(proxy.port, utter)
        out["rss_peak_one_utterance_mb"] = round(single.peak, 1)
        base = proxy.decisions
        with RssSampler() as rss:
            attackers = [AsyncTcpClient("127.0.0.1", proxy.port) for _ in range(connections)]
            for attacker in attackers:
                await attacker.connect()
            started = time.perf_counter()

            async def flood(attacker: Any, count: int) -> None:
                try:
                    for _ in range(count):
                        await send_utterance(attacker, utter)
                except (ConnectionError, OSError) as exc:
                    out["attacker_cut_off"] = type(exc).__name__

            await asyncio.gather(*(flood(a, n // connections) for a in attackers))
            out["send_s"] = round(time.perf_counter() - started, 2)
            outcome, took = await legit_transcript(proxy.port, legit, timeout=300)
            out["legit"], out["legit_latency_s"] = outcome, round(took, 2)
            # what the attackers got back so far
            got: dict[str, int] = {}
            for attacker in attackers:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
                    while True:
                        event = await asyncio.wait_for(attacker.read_event(), 0.5)
                        if event is None:
                            got["closed"] = got.get("closed", 0) + 1
                            break
                        key = event.type if event.type != "error" else f"error:{event.data.get('code')}"
                        got[key] = got.get(key, 0) + 1
            out["attacker_got"] = got
            decided = proxy.decisions
            for attacker in attackers:
                with contextlib.suppress(Exception):
                    await attacker.disconnect()
            await asyncio.sleep(3.0)
            out["decisions_3s_after_attacker_left"] = proxy.decisions - decided
        out["decisions_for_attacker"] = proxy.decisions - base - 1
        out["jobs_dropped"] = getattr(getattr(proxy, "work", None), "dropped", None)
        out["rss_before_mb"], out["rss_peak_mb"] = round(rss.before, 1), round(rss.peak, 1)
        out["rss_growth_mb"] = round(rss.peak - rss.before, 1)
        out["rss_peak_above_one_utterance_mb"] = round(rss.peak - single.peak, 1)
    return out


async def slots(handler: Any, legit: bytes, holders: int = 4, duration: float = 12.0,
                options: Optional[dict] = None) -> dict[str, Any]:
    """`holders` clients take every slot and ping every 0.5 s; a legitimate client tries once a second."""
    from wyoming.client import AsyncTcpClient
    from wyoming.ping import Ping

    options = {"max_clients": holders, **(options or {})}
    out: dict[str, Any] = {"holders": holders, "duration_s": duration}
    async with proxied(handler, **options) as (proxy, stt, decisions):
        stop = asyncio.Event()
        held_for: list[float] = []

        async def hold() -> None:
            started = time.perf_counter()
            try:
                async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                    while not stop.is_set():
                        await client.write_event(Ping(text="x").event())
                        event = await asyncio.wait_for(client.read_event(), 5)
                        if event is None or event.type == "error":
                            break
                        await asyncio.sleep(0.5)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
            held_for.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(hold()) for _ in range(holders)]
        await asyncio.sleep(0.5)
        outcomes: list[str] = []
        first_served: Optional[float] = None
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < duration:
            outcome, _ = await legit_transcript(proxy.port, legit, timeout=10)
            outcomes.append(outcome)
            if outcome == "transcript" and first_served is None:
                first_served = time.perf_counter() - t0
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        out["legit_attempts"] = len(outcomes)
        out["legit_answered"] = outcomes.count("transcript")
        out["legit_busy_errors"] = sum(o == "error:busy" for o in outcomes)
        out["legit_resets_or_closed"] = sum(o.startswith(("reset", "closed")) for o in outcomes)
        out["legit_first_served_s"] = None if first_served is None else round(first_served, 1)
        out["holder_longest_s"] = round(max(held_for), 1)
        out["outcomes"] = outcomes
    return out


async def dribble(handler: Any, duration: float = 15.0, options: Optional[dict] = None) -> dict[str, Any]:
    """One client keeps its utterance alive with 10 ms of audio every 0.2 s (each event is progress, so an
    idle timeout never fires): how long does it keep its slot, and what is it told?"""
    from wyoming.audio import AudioChunk
    from wyoming.client import AsyncTcpClient

    out: dict[str, Any] = {"tried_s": duration}
    async with proxied(handler, **(options or {})) as (proxy, stt, decisions):
        started = time.perf_counter()
        got: Optional[str] = None
        try:
            async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                await send_utterance(client, b"", stop=False)
                reply = asyncio.ensure_future(client.read_event())
                while time.perf_counter() - started < duration and not reply.done():
                    await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(320)).event())
                    await asyncio.sleep(0.2)
                if reply.done():
                    event = reply.result()
                    got = "closed" if event is None else f"{event.type}:{event.data.get('code')}"
                else:
                    reply.cancel()
        except (ConnectionError, OSError) as exc:
            got = f"reset ({type(exc).__name__})"
        out["held_s"] = round(time.perf_counter() - started, 1)
        out["told"] = got
    return out


async def busy(handler: Any, legit: bytes, options: Optional[dict] = None) -> dict[str, Any]:
    """A full server (max_clients held by one pinging client): what a client that streams at once sees."""
    from wyoming.client import AsyncTcpClient
    from wyoming.ping import Ping

    out: dict[str, Any] = {}
    async with proxied(handler, **{"max_clients": 1, **(options or {})}) as (proxy, stt, decisions):
        async with AsyncTcpClient("127.0.0.1", proxy.port) as holder:
            await holder.write_event(Ping(text="x").event())
            await holder.read_event()
            outcomes = [(await legit_transcript(proxy.port, legit, timeout=10))[0] for _ in range(5)]
    out["outcomes"] = outcomes
    out["busy_errors"] = sum(o == "error:busy" for o in outcomes)
    out["resets_or_closed"] = sum(o.startswith(("reset", "closed")) for o in outcomes)
    return out


async def long_stream(handler: Any, seconds: float = 600.0, options: Optional[dict] = None) -> dict[str, Any]:
    """One utterance of `seconds` of (quiet noise) audio: how much the STT receives, what the client gets."""
    from wyoming.client import AsyncTcpClient

    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(seconds * 16000)) * 300).astype("<i2").tobytes()
    out: dict[str, Any] = {"sent_s": seconds, "sent_mb": round(len(pcm) / 1e6, 1)}
    async with proxied(handler, record=True, **(options or {})) as (proxy, stt, decisions):
        with RssSampler() as rss:
            try:
                async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
                    await send_utterance(client, pcm)
                    event = await answer(client, 120)
                    out["reply"] = None if event is None else (
                        event.type if event.type != "error" else f"error:{event.data.get('code')}")
            except (ConnectionError, OSError) as exc:
                out["reply"] = f"reset ({type(exc).__name__})"
        await asyncio.sleep(0.5)
        out["stt_received_s"] = round(stt.received / 32000, 1)
        out["rss_growth_mb"] = round(rss.peak - rss.before, 1)
    return out


async def pipelined(handler: Any, stranger: bytes, alice: bytes, options: Optional[dict] = None) -> dict[str, Any]:
    """reject_unknown + tagging: a stranger's utterance, then at once alice's, on one connection, while the
    STT takes 0.5 s per transcript: what text does each get?"""
    from wyoming.asr import Transcript
    from wyoming.client import AsyncTcpClient

    options = {"reject_unknown": True, "tag_transcript": "{speaker}: {text}", **(options or {})}
    out: dict[str, Any] = {}
    async with proxied(handler, **options) as (proxy, stt, decisions):
        async with AsyncTcpClient("127.0.0.1", proxy.port) as client:
            await send_utterance(client, stranger, name="delay:0.5")
            await send_utterance(client, alice, name="delay:0.5")
            texts = []
            for _ in range(2):
                event = await answer(client, 30)
                texts.append(None if event is None else (
                    Transcript.from_event(event).text if event.type == "transcript" else f"error:{event.data.get('code')}"))
        out["first_text"], out["second_text"] = texts
        out["decisions"] = [(b.get("speaker"), b.get("rejected"), b.get("utterance")) for b, _ in decisions]
    return out


# -- standalone ------------------------------------------------------------------------------------------

def load_handler(model: str = "int8") -> Any:
    from edgeverify.core.audio import read_audio
    from edgeverify.core.verifier import Verifier
    from edgeverify.app.decisions import DecisionService
    from edgeverify.store.profiles import ProfileStore

    verifier = Verifier.load(model)
    verifier.warm_up()
    store = ProfileStore(tempfile.mkdtemp(prefix="wyoming-attacks-"))
    for name, spk, clips in (("alice", "vctk-p225", ("p225_008", "p225_011", "p225_016")),
                             ("bob", "vctk-p226", ("p226_003", "p226_008", "p226_016"))):
        store.enroll(name, [verifier.embed(read_audio(SPEECH / "dev" / spk / f"{c}.wav")) for c in clips], model=verifier.model)
    return DecisionService(verifier, store, max_audio_seconds=60.0)


def pcm16(path: Path) -> bytes:
    x, rate = sf.read(str(path), dtype="int16")
    assert rate == 16000 and x.ndim == 1
    return x.tobytes()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("attacks", nargs="*", default=["backlog", "slots", "busy", "long_stream", "pipelined"])
    ap.add_argument("--n", type=int, default=100, help="backlog: utterances")
    ap.add_argument("--seconds", type=float, default=60.0, help="backlog: seconds of audio each")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    handler = load_handler()
    alice = pcm16(SPEECH / "dev" / "vctk-p225" / "p225_022.wav")
    stranger = pcm16(sorted((SPEECH / "dev" / STRANGER_DIR).glob("*.wav"))[0])
    runs = {
        "backlog": lambda: backlog(handler, alice, alice, n=args.n, seconds=args.seconds),
        "backlog_under_cap": lambda: backlog(handler, alice, alice, n=args.n, seconds=20.0),
        "backlog_3_connections": lambda: backlog(handler, alice, alice, n=99, seconds=20.0, connections=3),
        "slots": lambda: slots(handler, alice, options={"idle_timeout_s": 3.0}),
        "busy": lambda: busy(handler, alice),
        "dribble": lambda: dribble(handler, options={"max_session_s": 5.0}),
        "long_stream": lambda: long_stream(handler),
        "pipelined": lambda: pipelined(handler, stranger, alice),
    }
    results = {}
    for name in args.attacks:
        results[name] = asyncio.run(runs[name]())
        if not args.json:
            print(name, json.dumps(results[name], ensure_ascii=False), flush=True)
    if args.json:
        print(json.dumps({"results": results, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
